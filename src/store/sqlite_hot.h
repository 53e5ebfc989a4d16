/*
 * sqlite_hot: the SQLite store's hot state in memory, written behind.
 *
 * The relay check adds an account's network and the ratelimit check
 * charges a bucket at nearly every accepted recipient; in SQLite each was
 * a write transaction (a WAL commit, the one write turn of the process).
 * Here the GCRA buckets (QUERY_COUNTER) and the distinct sets
 * (QUERY_DISTINCT_ADD) a daemon uses are answered and updated in memory,
 * under one mutex, and the store writes what changed to the file in one
 * transaction every SQLITE_HOT_FLUSH_MS (store_sqlite.c), and at close.
 * While one daemon writes the file (store_sqlite.c stops using this when
 * it sees another in hot_owner) the memory is the truth for what it
 * holds; a miss is read from the file once and kept.
 *
 * Bounded: at most max_entries buckets and sets, SQLITE_HOT_MAX_MEMBERS
 * members in all (about 50 MB at most with keys of usual length). A new
 * entry finds room by dropping one that has nothing left to write; when
 * every entry has (a flood of new keys between two flushes), or the
 * members are at their bound, the call answers SQLITE_HOT_FULL (or the
 * load keeps nothing) and the store runs it on the file as before.
 *
 * No I/O here: the store reads and writes the file, this module only
 * answers, and hands out what changed (sqlite_hot_take).
 *
 * The Redis store uses it too (sqlite_hot_new_shared), as copies of keys
 * other hosts write as well, dropped by Redis's invalidation messages
 * (store_redis.c): there a bucket owes its charges as a delta ("tat =
 * max(tat, from) + add", so that two hosts' charges add up), a bucket
 * invalidated while it owes some keeps them (its TAT is read again), a
 * set its refreshes (written only to a member the store still has), and a
 * new member of a set is always the store's to decide.
 */
#ifndef SPAMTRAPD_SQLITE_HOT_H
#define SPAMTRAPD_SQLITE_HOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/query.h"

/* How often the store writes what changed (ms): what a crash can lose at most, in counts. */
#define SQLITE_HOT_FLUSH_MS 200
/* The most buckets, sets and records held at once, and the most members of all sets together. */
#define SQLITE_HOT_MAX_ENTRIES 131072
#define SQLITE_HOT_MAX_MEMBERS 262144

typedef struct sqlite_hot sqlite_hot;

typedef enum {
	SQLITE_HOT_DONE = 1, /* answered from memory */
	SQLITE_HOT_MISS = 0, /* not held: load it (sqlite_hot_*_load) and ask again */
	SQLITE_HOT_FULL = -1 /* no room, or the set is at the table's cap: ask the file */
} sqlite_hot_rc;

typedef enum { SQLITE_HOT_COUNTER, SQLITE_HOT_SET, SQLITE_HOT_KV } sqlite_hot_kind;

sqlite_hot *sqlite_hot_new(size_t max_entries); /* NULL: out of memory */
/* For copies of a shared store (Redis): buckets owe deltas, new members are the store's (above). */
sqlite_hot *sqlite_hot_new_shared(size_t max_entries);
void sqlite_hot_free(sqlite_hot *h); /* accepts NULL */

/*
 * A change count of the forgotten entries: read it before reading an
 * entry from the file and pass it to the load, which keeps nothing when
 * that entry (or one that shares its slot of the count) was forgotten (a
 * reset) in between; shared, also after an invalidation of every entry,
 * and a bucket owing charges after a take.
 */
uint64_t sqlite_hot_generation(sqlite_hot *h);

/*
 * GCRA on a TAT (found: the bucket has one; tat: it), as the store keeps
 * buckets: fills q->u.counter's answer and *next, the TAT once charged
 * (the caller stores it when the answer is allowed and cost > 0).
 */
void sqlite_hot_gcra(query *q, bool found, int64_t tat, int64_t *next);

/* A QUERY_COUNTER query (checked by store.c), answered and charged in memory. */
sqlite_hot_rc sqlite_hot_counter(sqlite_hot *h, query *q);
/* The bucket as the file has it (found: a row with tat). false: no room (ask the file). */
bool sqlite_hot_counter_load(sqlite_hot *h, const char *ns, const char *key, bool found, int64_t tat,
                             uint64_t generation);

/* A distinct set's add or peek (store_distinct_add_capped, store_distinct_peek). */
typedef struct sqlite_hot_distinct {
	const char *set, *member;
	int64_t now, window; /* seconds */
	uint64_t limit;
	bool peek;
	/* The table may take one more member (relay.max_entries): else a new one goes to the file. */
	bool room;
	/* Answers: */
	uint64_t count;
	bool present; /* peek */
} sqlite_hot_distinct;

sqlite_hot_rc sqlite_hot_distinct_run(sqlite_hot *h, sqlite_hot_distinct *a);
/* One member live in the file. */
typedef struct sqlite_hot_member {
	const char *member;
	int64_t expires;
} sqlite_hot_member;
/* The set's live members as the file has them. false: no room. */
bool sqlite_hot_set_load(sqlite_hot *h, const char *set, const sqlite_hot_member *m, size_t n,
                         uint64_t generation);

/*
 * Keyed records (QUERY_KV: the relay check's trip markers, read at every
 * recipient, written at a trip) are only read from memory: every write
 * goes to the file, and the store forgets the record after it.
 */
sqlite_hot_rc sqlite_hot_kv_get(sqlite_hot *h, query *q);
/* The record as the file has it (found: live, with value and expires_ms). false: no room. */
bool sqlite_hot_kv_load(sqlite_hot *h, const char *ns, const char *key, bool found, const char *value,
                        int64_t expires_ms, uint64_t generation);

/* Drop a bucket or record (ns, key) or a set (ns NULL, key the set), written or not: a reset. */
void sqlite_hot_forget(sqlite_hot *h, sqlite_hot_kind kind, const char *ns, const char *key);
/*
 * Shared: someone wrote the key (an invalidation). As forget, except that
 * a bucket owing charges keeps them: its TAT is unknown (a MISS) until
 * loaded again, and the load adds what is owed. A set owing refreshes
 * keeps them too (a MISS until they are written and it is loaded again):
 * the store refreshes only a member it still has, so they hold after any
 * write, a reset's included.
 */
void sqlite_hot_invalidate(sqlite_hot *h, sqlite_hot_kind kind, const char *ns, const char *key);
/* Shared: every copy is in doubt (the invalidations were lost): invalidate everything. */
void sqlite_hot_invalidate_all(sqlite_hot *h);

/* Some entry owes a write (sqlite_hot_take would hand out something). */
bool sqlite_hot_owes(sqlite_hot *h);
/* Members added in memory and not handed out yet (for the table's cap). */
uint64_t sqlite_hot_pending_members(sqlite_hot *h);

/* One write the file is owed. */
typedef struct sqlite_hot_write {
	sqlite_hot_kind kind;
	char *ns, *key; /* counters; a set's name in key, ns NULL */
	char *member;   /* sets */
	int64_t value;  /* a bucket's TAT (ms; shared: the delta's from), a member's expiry (s) */
	int64_t add;    /* shared: a bucket's owed charge, tat = max(tat, value) + add (ms) */
	bool fresh;     /* no row in the file yet, as far as this process knows */
} sqlite_hot_write;

typedef struct sqlite_hot_batch {
	sqlite_hot_write *v;
	size_t n, cap;
} sqlite_hot_batch;

/*
 * Everything changed since the last take, appended to b (the caller's,
 * emptied with sqlite_hot_batch_clear); the entries count as written.
 * -1: out of memory (what fitted is in b, the rest stays owed).
 * Until sqlite_hot_written, the entries taken are not dropped for room:
 * the file does not have their values yet, and a load would read it old.
 */
int sqlite_hot_take(sqlite_hot *h, sqlite_hot_batch *b);
/*
 * sqlite_hot_take at now_ms (the buckets' clock), leaving out the buckets
 * (not shared) whose TAT is at or before it: empty, as the file's row (an
 * earlier TAT, or none) reads already. They stay in memory as they are.
 */
int sqlite_hot_take_at(sqlite_hot *h, sqlite_hot_batch *b, int64_t now_ms);
/*
 * Shared: sqlite_hot_take at now_ms (the buckets' clock) of what is due
 * only: a bucket with plenty of room (its copy's TAT less than half its
 * burst tolerance ahead of now_ms) keeps its charges, added up, until
 * wait_ms after the first of them; the rest is taken (take_due).
 */
int sqlite_hot_take_due(sqlite_hot *h, sqlite_hot_batch *b, int64_t now_ms, int64_t wait_ms);
/* The last take's transaction ended (committed, or rolled back and retaken). */
void sqlite_hot_written(sqlite_hot *h);
/* The writes of b failed: owe them again (entries forgotten since stay forgotten). */
void sqlite_hot_retake(sqlite_hot *h, const sqlite_hot_batch *b);
/* An entry (kind, ns, key) listed in b, to be forgotten later (store_sqlite's resets). false: out of memory.
 */
bool sqlite_hot_batch_note(sqlite_hot_batch *b, sqlite_hot_kind kind, const char *ns, const char *key);
/* Frees what b holds; b is empty and reusable after. */
void sqlite_hot_batch_clear(sqlite_hot_batch *b);

/* How many buckets and sets are held (tests). */
size_t sqlite_hot_entries(sqlite_hot *h);

#endif
