/*
 * store: the blocklist, behind one interface for every backend (SQLite
 * embedded, Redis shared). A store handle is safe to use from any number
 * of threads at once; backends keep their own connection pool.
 *
 * Errors: calls return STORE_ERROR and leave a message for the calling
 * thread in store_last_error(); the caller decides what to do (store.on_error)
 * and logs it. A store never logs by itself.
 *
 * Keys are the canonical strings of core/decide.h (user@example.com,
 * @example.com, 192.0.2.0/24, sasl:NAME, helo:NAME). Expired entries are
 * never returned by lookups, whether or not they were purged yet.
 */
#ifndef SPAMTRAPD_STORE_H
#define SPAMTRAPD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/netkeys.h"
#include "core/query.h"

#define STORE_KEY_MAX 600
#define STORE_FIELD_MAX 600

typedef enum { STORE_OK = 0, STORE_NOTFOUND = 1, STORE_ERROR = -1 } store_status;

typedef enum { STORE_BACKEND_SQLITE, STORE_BACKEND_REDIS } store_backend;

typedef struct store_config {
	store_backend backend;
	char *sqlite_path;
	char *redis_host;
	int redis_port;
	char *redis_socket; /* unix socket path; wins over host/port when set */
	int redis_db;
	char *redis_password;
	char *redis_prefix;
	int redis_connect_timeout_ms;
	int redis_command_timeout_ms;
	/* Sentinels ("host:port", "[v6]:port") to ask for the master's address;
	 * when there are any, host, port and socket are not used. */
	char **redis_sentinels;
	size_t redis_nsentinels;
	char *redis_sentinel_master; /* the master's name at the Sentinels */
	/*
	 * The local view of the blocklist's keys (docs/redis.md): lookups of
	 * keys it knows to be absent make no round trip. Off when false (a
	 * zeroed config: spamtrapctl, tests); it gives up above this many keys.
	 */
	bool redis_local_view;
	int64_t redis_local_view_keys;
} store_config;

/* One blocklist entry and where it came from. Times are Unix seconds. */
typedef struct store_entry {
	char key[STORE_KEY_MAX];
	int64_t first_seen;
	int64_t last_seen;
	int64_t expires;
	uint64_t hits;
	char trap[STORE_FIELD_MAX]; /* the trap hit last, "" for manual entries */
	char sender[STORE_FIELD_MAX];
	char recipient[STORE_FIELD_MAX];
	char client[64];
	char helo[256];
	char queue_id[64];
	char reason[STORE_FIELD_MAX]; /* "trap" or the text given to spamtrapctl add */
} store_entry;

/* Provenance of one trap hit, recorded with every key it blocklists (core/query.h). */
typedef query_hit store_hit;

typedef struct store store;

/* Opens (creating the schema if needed); NULL with a message in err. */
store *store_open(const store_config *cfg, char *err, size_t errlen);
void store_free(store *st); /* accepts NULL */
const char *store_backend_name(const store *st);

/*
 * This process is the daemon: the backend may keep the buckets
 * (store_counter) and distinct sets (store_distinct_add) it uses in
 * memory and write them to the database behind the calls. SQLite does
 * (store/sqlite_hot.h): every SQLITE_HOT_FLUSH_MS and at store_free; a
 * crash loses at most that much of counting, never a blocklist entry.
 * Several daemons on one SQLite file see each other and count in the
 * file again (relay.md, "Where the counts live"). Call it once, after
 * store_open and before the first query. Redis: nothing changes.
 */
store_status store_write_behind(store *st);
/*
 * Before an admin reads buckets or sets (spamtrapctl rate show, relay
 * show): have what any process holds back (the daemon's write-behind)
 * written to the database. Waits a few seconds at most for a running
 * daemon. store_distinct_clear and store_counter_delete reach that
 * daemon's memory by themselves.
 */
store_status store_sync(store *st);

/*
 * The store_run calls of one decision (the engine's stage) follow on
 * this thread, until store_decision_end: a backend may look for news from
 * other hosts once for them all rather than at each call (Redis: the
 * local view's socket, see docs/redis.md), so that one decision sees the
 * store as of its start. Writes of its own calls are seen at once, as
 * always. Without it (spamtrapctl, purges), every call looks.
 */
void store_decision_begin(store *st);
void store_decision_end(store *st);

/*
 * Run the queries of one stage of the checks (core/query.h), filling in
 * their answers: what the engine calls. Each query is atomic on its own;
 * identical lookups in one batch are answered once. Returns STORE_ERROR
 * when any query failed (its status says which), STORE_OK otherwise.
 */
store_status store_run(store *st, query *q, size_t nq, int64_t now);

/*
 * The lookups below are store_run's building blocks, public for the
 * store's own tests and benchmarks; the engine and the checks use
 * store_run, which builds the client's network keys itself.
 *
 * Is any of keys[] blocklisted at time now? On STORE_OK, *found (if not
 * NULL) is the entry of the first key in keys[] order that is. One round
 * trip for all keys.
 */
store_status store_lookup(store *st, const char *const *keys, size_t nkeys, int64_t now, store_entry *found);

/*
 * What store_net_key_len finds in a key (store_backend.h), as one number:
 * STORE_NETLEN(family, len) for a network "ADDRESS/LEN", STORE_NETLEN_NONE
 * for every other key; the numbers of core/netkeys.h.
 */
#define STORE_NETLEN_NONE NETKEYS_NONE
#define STORE_NETLEN(family, len) NETKEYS_LEN(family, len)

/*
 * store_lookup for keys whose network lengths the caller knows from
 * building them (netkeys_build): netlens[i] for keys[i], so that the
 * store need not parse the keys. A wrong length may hide an entry; builds
 * with assertions (no NDEBUG) check every one and fail the call.
 */
store_status store_lookup_netlens(store *st, const char *const *keys, const int16_t *netlens, size_t nkeys,
                                  int64_t now, store_entry *found);

/* Network lengths as a bit set (core/netkeys.h). */
typedef netkeys_mask store_netmask;

/*
 * The network lengths present among the stored keys, as far as the store
 * knows them without I/O: true with *out filled, false when it cannot tell
 * (not known yet, the file changed since, a backend that does not keep
 * them). A hint only: store_lookup_built checks it again.
 */
bool store_netlens(store *st, store_netmask *out);

/*
 * How many lookups since the store was opened the backend's absent-key
 * filter answered without asking the database (SQLite's filter, Redis's
 * local view; false for a backend without one). The daemon logs it at each purge (debug), which
 * is how tests see that the filter answers at all.
 */
bool store_filter_answers(store *st, uint64_t *answers);

/*
 * store_lookup_netlens for keys built only for the network lengths of
 * built (as store_netlens gave them, plus those the caller always builds).
 * When the state the lookup reads holds an entry at a length outside built,
 * it answers STORE_NOTFOUND with *stale set: the caller must build every
 * key and look up again (store_lookup_netlens). *stale is false otherwise.
 */
store_status store_lookup_built(store *st, const char *const *keys, const int16_t *netlens, size_t nkeys,
                                const store_netmask *built, int64_t now, store_entry *found, bool *stale);

/*
 * A trap hit: for each key, create the entry or refresh it (expires =
 * now + ttl, hits + 1, last_seen = now, provenance replaced; first_seen
 * kept). Atomic per key.
 */
store_status store_record(store *st, const char *const *keys, size_t nkeys, const store_hit *hit);
/*
 * store_record, and created[i] (the caller's, nkeys long) tells whether
 * keys[i] was a new listing: no entry in force before this hit (the
 * daemon logs a "block:" line for each). An entry added by hand and hit
 * within the second it was added may count as new.
 */
store_status store_record_created(store *st, const char *const *keys, size_t nkeys, const store_hit *hit,
                                  bool *created);

/*
 * Distinct members over a sliding window (the sender domain's client
 * networks, an account's networks): add member to set until now + window
 * (a member already there is refreshed, never shortened), after dropping
 * the members of set expired at now. limit (0: none) caps the set: a new
 * member that would make it hold more than limit live members is not
 * added. *count gets the live members counting this one, whether it was
 * added or not, so that *count > limit says it was refused. Atomic per
 * call, also between hosts sharing a Redis. Sets and members are strings
 * of 1 to STORE_KEY_MAX - 1 bytes in a namespace of their own (no set
 * is a blocklist key); expired members are purged with store_purge.
 */
store_status store_distinct_add(store *st, const char *set, const char *member, int64_t now, int64_t window,
                                uint64_t limit, uint64_t *count);
/*
 * now for store_distinct_add and store_distinct_peek: the store's own
 * clock. Redis's TIME, so that hosts whose clocks disagree still count one
 * window on a shared set (the relay check); SQLite, local to one host,
 * takes the host's time.
 */
#define STORE_NOW_SERVER 0
/*
 * SQLite does not rewrite a member whose expiry is already within this
 * many seconds of now + window (a 64th of the window, so a minute of an
 * hour): it may expire that much early, and a network an account keeps
 * using costs a read instead of a commit.
 */
#define STORE_DISTINCT_SLACK(window) ((window) / 64)
/*
 * The same with a cap on the rows of every set together (SQLite; 0: none;
 * Redis expires idle sets itself): at max_rows the expired members are
 * purged first, and while live ones still fill it a new member is not
 * added and *capped (NULL: not asked) says so; *count is then the set's
 * live members without it. Known members are refreshed whatever the cap.
 */
store_status store_distinct_add_capped(store *st, const char *set, const char *member, int64_t now,
                                       int64_t window, uint64_t limit, uint64_t max_rows, uint64_t *count,
                                       bool *capped);
/*
 * The same set, read only (the relay check's needs()): *count gets the
 * members live at now (not counting member unless it is one), *present
 * whether member is live. Changes nothing, drops nothing.
 */
store_status store_distinct_peek(store *st, const char *set, const char *member, int64_t now, uint64_t *count,
                                 bool *present);
/* One live member of a set and when it expires; non-zero stops the walk. */
typedef int (*store_distinct_visit_fn)(const char *member, int64_t expires, void *ctx);
/* The members of set live at now, with their expiry, latest first (spamtrapctl relay show). */
store_status store_distinct_list(store *st, const char *set, int64_t now, store_distinct_visit_fn fn,
                                 void *ctx);
/* Drop the whole set (spamtrapctl relay reset): STORE_OK, or STORE_NOTFOUND when it had no member. */
store_status store_distinct_clear(store *st, const char *set);

/*
 * A keyed record (a QUERY_KV query): run q->u.kv.op and fill in its
 * answer; STORE_OK whether or not a record was found (q->u.kv.found says).
 * Namespaces are QUERY_NS_MAX - 1 bytes at most of [a-z0-9_-], keys 1 to
 * STORE_KEY_MAX - 1 bytes, values text of at most QUERY_VALUE_MAX bytes.
 * Atomic per call. SQLite reads the time from q->u.kv.now_ms, Redis from
 * its own clock (TIME), so that hosts sharing a Redis agree on it.
 * Expired records are purged with store_purge (Redis expires them itself).
 */
store_status store_kv(store *st, query *q);
/* The longest ttl_ms of a record and the longest a bucket may take to empty: a century. */
#define STORE_TTL_MS_MAX ((int64_t)100 * 365 * 86400 * 1000)
#define STORE_COUNTER_UNITS_MAX 1000000000ull

/*
 * A GCRA bucket (a QUERY_COUNTER query): charge q->u.counter.cost units
 * when the bucket allows them, and fill in the answer. Atomic per call;
 * the time as store_kv. Idle buckets are purged with store_purge.
 */
store_status store_counter(store *st, query *q);
/* Drop the bucket ns + key (full again): STORE_OK, STORE_NOTFOUND when there was none, or STORE_ERROR. */
store_status store_counter_delete(store *st, const char *ns, const char *key);

/*
 * One greylisting attempt (a QUERY_GREYLIST query, core/greystep.h): read
 * the triplet and the client's auto-whitelist record, run greystep_run in
 * the store's clock and write what it says, atomically (SQLite: one
 * transaction with q->u.grey.now_ms; Redis: one script with TIME, which
 * also fills q->u.grey.now_ms). Fills q->u.grey.answer. Triplets and
 * auto-whitelist records live in namespaces of their own; expired ones are
 * dropped by store_greylist_purge (SQLite) or by Redis itself.
 */
store_status store_greylist(store *st, query *q);

/*
 * The greylist as an administrator sees it (spamtrapctl greylist). Times
 * are ms of the store's clock, as store_greylist keeps them: ask it with
 * store_greylist_time and pass it on, so that "live" and "remaining" mean
 * what the daemon's next attempt will see.
 */
typedef enum { STORE_GREY_TRIPLET, STORE_GREY_AWL } store_grey_kind;

/* One triplet (first and last attempt) or one auto-whitelist record (passes counted, last counted). */
typedef struct store_grey_record {
	store_grey_kind kind;
	char key[GREYSTEP_KEY_MAX];
	int64_t first_ms; /* triplets; 0 for auto-whitelist records */
	int64_t last_ms;
	int64_t expires_ms;
	uint64_t count; /* auto-whitelist records; 0 for triplets */
} store_grey_record;

/* The store's clock in ms: SQLite the wall clock of this host, Redis its TIME. */
store_status store_greylist_time(store *st, int64_t *now_ms);

/*
 * The triplet "NETWORK/SENDERKEY/RECIPIENT" (greystep_triplet_key) or
 * the client's auto-whitelist record (greystep_awl_key) live at now_ms,
 * copied into *out (the caller's); STORE_NOTFOUND when there is none.
 */
store_status store_greylist_get(store *st, const char *triplet, int64_t now_ms, store_grey_record *out);
store_status store_greylist_awl_get(store *st, const char *client, int64_t now_ms, store_grey_record *out);

/* Drop a triplet or an auto-whitelist record; STORE_NOTFOUND when there was none. */
store_status store_greylist_remove(store *st, const char *triplet);
store_status store_greylist_awl_remove(store *st, const char *client);

/*
 * Create or replace the client's auto-whitelist record: count passes,
 * last counted at now_ms, live until expires_ms (> now_ms). Redis keeps
 * it until expires_ms by its own clock.
 */
store_status store_greylist_awl_put(store *st, const char *client, uint64_t count, int64_t now_ms,
                                    int64_t expires_ms);

/*
 * Visit every triplet, then every auto-whitelist record, live at now_ms,
 * each kind in key order; a non-zero return from fn stops. *r is lent for
 * the call. Redis walks its keys with SCAN (never KEYS).
 */
typedef int (*store_grey_visit_fn)(const store_grey_record *r, void *ctx);
store_status store_greylist_foreach(store *st, int64_t now_ms, store_grey_visit_fn fn, void *ctx);

/*
 * SQLite: drop the triplets and auto-whitelist records expired at now_ms,
 * a thousand rows a write transaction (so that the daemon's
 * writers get their turns in between), and count the triplets again for
 * the max_triplets estimate; *purged (if not NULL) gets the rows
 * dropped. The daemon calls it only where greylist.maintenance is true.
 * Redis expires its records by itself: STORE_OK, nothing purged.
 */
store_status store_greylist_purge(store *st, int64_t now_ms, uint64_t *purged);

/*
 * Round trips the store's scripts took so far (Redis: EVALSHA and EVAL
 * sent and waited for, a pipelined batch counting one), so that tests can
 * see that store_run batches; 0 for a backend without round trips.
 */
uint64_t store_script_round_trips(store *st);

/*
 * Tests only: the Redis store's hot copies (docs/redis.md) keep time ms
 * further ahead of Redis's clock than measured, so that the edge of a
 * round trip's lag is certain; no effect on other backends.
 */
void store_hot_clock_skew(store *st, int64_t ms);

/* The entry for exactly this key, expired or not (spamtrapctl lookup). */
store_status store_get(store *st, const char *key, store_entry *out);
/* Create or replace an entry as given (spamtrapctl add). */
store_status store_put(store *st, const store_entry *e);
/*
 * Many entries, as store_put each (spamtrapctl import): next() fills *e
 * and returns 1, or returns 0 at the end (-1 stops the call with
 * STORE_ERROR). Written in large transactions where the backend has them
 * (SQLite: STORE_PUT_BATCH entries a transaction), so that a million
 * entries load in seconds; an error leaves the transactions before it
 * written. *written (if not NULL) gets the number of entries written.
 */
typedef int (*store_next_fn)(store_entry *e, void *ctx);
store_status store_put_many(store *st, store_next_fn next, void *ctx, uint64_t *written);
#define STORE_PUT_BATCH 50000

/* STORE_NOTFOUND when there was nothing to remove. */
store_status store_remove(store *st, const char *key);
/* Drop entries expired at now; *purged (if not NULL) gets their number. */
store_status store_purge(store *st, int64_t now, uint64_t *purged);

/* Visit every entry unexpired at now; a non-zero return from fn stops. */
typedef int (*store_visit_fn)(const store_entry *e, void *ctx);
store_status store_foreach(store *st, int64_t now, store_visit_fn fn, void *ctx);

/*
 * The entries in force at now by key type (core/key.h): counts[KEY_TYPE_*],
 * as key_type_of() types their keys. It walks every key, though not the
 * entries: SQLite reads only the expires index (which holds the key) and
 * groups in SQL; Redis SCANs the entries' names, and what Redis's own
 * expiry has not dropped is in force. For the daemon's background refresh
 * of the spamtrapd_blocklist_entries gauge, never per request.
 */
#define STORE_KEY_TYPES 5 /* KEY_TYPE_HELO + 1 */
store_status store_count_types(store *st, int64_t now, uint64_t counts[STORE_KEY_TYPES]);

/*
 * Changes made on other hosts (Redis): every write that lists a key anew
 * (the record script) and every spamtrapctl add or remove PUBLISHes on
 * the channel store.redis.prefix STORE_WATCH_CHANNEL. A watch is a
 * connection of its own SUBSCRIBEd to it, for the exporter.
 */
#define STORE_WATCH_CHANNEL "blocklist:changed"
typedef struct store_watch store_watch;
/* NULL with err for a backend without a channel (SQLite) or bad settings; connects at the first wait. */
store_watch *store_watch_open(const store_config *cfg, char *err, size_t errlen);
/*
 * Wait at most timeout_ms: 1 when a change was announced, or when the
 * watch (re)connected (a change may have gone unannounced meanwhile); 0
 * when nothing came, or at once when cancel_fd (-1: none) is readable: the
 * caller's wake-up (an eventfd or pipe it writes to stop), left unread; -1
 * with err when the connection failed or was lost (the next calls try
 * again after a growing pause, 100 ms to 5 s). Connecting is not cut
 * short: it takes at most store.redis.connect_timeout.
 */
int store_watch_wait(store_watch *w, int timeout_ms, int cancel_fd, char *err, size_t errlen);
void store_watch_free(store_watch *w); /* accepts NULL */

/* The message of the last STORE_ERROR on this thread. */
const char *store_last_error(void);

/* Deep copy and release of the strings of a store_config. */
int store_config_copy(store_config *dst, const store_config *src);
void store_config_clear(store_config *cfg);
bool store_config_equal(const store_config *a, const store_config *b);

/*
 * Split a Redis address "host:port" or "[ipv6]:port" (as in
 * store.redis.sentinels) into host (brackets removed) and port; false when
 * it is not one (empty or over-long host, blanks, a port not 1-65535).
 */
bool store_redis_addr_split(const char *spec, char *host, size_t hostlen, int *port);

#endif
