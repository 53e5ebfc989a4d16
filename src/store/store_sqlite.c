/*
 * store_sqlite: the embedded blocklist in one SQLite file.
 *
 * Concurrency: a small pool of connections, each with its own prepared
 * statements, handed out under a mutex and condition variable; a thread
 * holds a connection for one call. The file is in WAL mode, so lookups
 * never wait for a writer. Writers of this process take turns (one at a
 * time) before they take a connection, so that writers stuck behind a
 * lock never hold the connections lookups need; SQLite's busy handler
 * covers other processes (spamtrapctl, an sqlite3 shell).
 *
 * Faults (docs/spamtrapd.8.md, FAULTS): every wait of a call -- for a
 * connection, for the write turn, for another process's lock -- ends at
 * one deadline, WAIT_MS after the call started waiting, so that Postfix
 * never hangs on the store. A call that ran out of time on a lock makes
 * the calls of its kind (reads, writes) fail at once for BACKOFF_MS; then
 * one call tries again and the first success ends it. Other failures
 * (disk full, a file made read-only or immutable, I/O errors) fail the
 * call at once and the next call tries afresh, so the store recovers by
 * itself when the fault goes. Opening refuses a file it could only read.
 * Purges delete in chunks, each its own write turn.
 *
 * Schema version 4 (PRAGMA user_version): one row per key, an index on
 * expires for purges, and the table netlens: how many network keys
 * ("ADDRESS/LEN") exist per (family, prefix length), kept by triggers on
 * blocklist, so that every writer (this daemon, spamtrapctl, another
 * process) maintains it (version 2; opening a version 1 file adds it,
 * one scan). Version 3 adds distinct_members, the sets of
 * store_distinct_add. Version 4 has the typed keys of core/key.h: opening
 * an older file rewrites the few keys that changed (see schema_typed_keys).
 * Version 5 adds kv_records and counters (store_kv, store_counter).
 * Version 6 adds the greylist's tables (store_greylist, see greylist_sql).
 * Version 7 adds hot_owner and hot_requests (see schema_hot_sql).
 * Opening an older file runs the missing steps.
 *
 * The buckets and the distinct sets a daemon uses live in memory and are
 * written behind (sqlite_hot.h): a thread of their own writes what
 * changed every SQLITE_HOT_FLUSH_MS, in one transaction, and at close.
 *
 * A lookup is one read transaction: the network lengths present, then one
 * point query per key in the caller's order, skipping network keys of a
 * length no entry has (a client address comes with 25 or more network
 * lengths, nearly all absent), stopping at the first live entry. Each
 * connection caches the lengths and re-reads them only when the file
 * changed (PRAGMA data_version, read in the same transaction; its own
 * writes are not counted there, so they drop the cache themselves).
 * Errors name the file.
 *
 * Before all that, the absent-key filter (sqlite_filter.h) answers most
 * lookups, those whose keys are not in the file, from memory: no
 * connection, no transaction, no lock. It answers only while the file is
 * in the very state it describes; trap hits report their keys to it.
 */
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <pwd.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "core/hash.h"
#include "core/key.h"
#include "log.h"
#include "store/sqlite_filter.h"
#include "store/sqlite_hot.h"
#include "store/store_backend.h"

#define POOL_SIZE 4
/*
 * The longest a call waits in all (connection, write turn, locks): far
 * below Postfix's smtpd_policy_service_timeout (100s) and
 * milter_command_timeout (30s), and far above a normal write by spamtrapctl.
 */
#define WAIT_MS 2000
/* Opening may wait longer: it is not on a request's path. */
#define OPEN_WAIT_MS 5000
/* After a lock wait ran out, calls of its kind fail at once for this long. */
#define BACKOFF_MS 1000
/* Expired entries deleted per write turn by a purge. */
#define PURGE_CHUNK 1000
#define STRINGIFY(x) #x
#define SQL_INT(x) STRINGIFY(x)
#define SCHEMA_VERSION 7
/* The log file's size kept after a checkpoint (bytes): a few checkpoints' worth of 4 KiB frames. */
#define WAL_SIZE_LIMIT (4 * 1024 * 1024)
/* SQLite's automatic checkpoint threshold (its default), in log frames (pages). */
#define WAL_CHECKPOINT_FRAMES 1000
/* While the greylist's cap holds, its rows are counted again this often (ms), or after this many answers. */
#define GREY_RECOUNT_MS 60000
#define GREY_RECOUNT_CALLS 1000
/* The most triplets kept under one hash (see schema_greylist_sql). */
#define GREY_BUCKET_MAX 8
/* Page cache per connection: the interior pages of a million-entry file (the default 2 MiB misses them). */
#define CACHE_KIB 8192
/* While a capped table is at its cap, its rows are counted again this often (ms). */
#define CAP_RECOUNT_MS 60000
/*
 * Rows a new row of a table at its cap deletes at most: one keeps it at
 * the cap; more bring it back under when another process went over.
 */
#define CAP_EVICT_MAX 16
/* The most members of one set held in memory: a bigger set is counted in the file. */
#define HOT_SET_MAX 4096
/* How long spamtrapctl waits for the daemon to take a reset or write its counts (ms). */
#define HOT_WAIT_MS 3000
/* Kinds of hot_requests rows. */
enum { HOT_REQ_SYNC = 0, HOT_REQ_COUNTER = 1, HOT_REQ_SET = 2, HOT_REQ_KV = 3 };

enum {
	ST_PROBE,
	ST_NETLENS,
	ST_DATA_VERSION,
	ST_BEGIN_READ,
	ST_RECORD,
	ST_GET,
	ST_PUT,
	ST_REMOVE,
	ST_PURGE,
	ST_FOREACH,
	ST_DS_DROP,
	ST_DS_COUNT,
	ST_DS_ADD,
	ST_DS_REFRESH,
	ST_DS_PURGE,
	ST_DS_PEEK,
	ST_DS_LIST,
	ST_DS_CLEAR,
	ST_KV_GET,
	ST_KV_PUT,
	ST_KV_DELETE,
	ST_KV_PURGE,
	ST_CTR_GET,
	ST_CTR_PUT,
	ST_CTR_SET,
	ST_CTR_PURGE,
	ST_CTR_DELETE,
	ST_CTR_ROWS,
	ST_CTR_EVICT,
	ST_DS_ROWS,
	ST_DS_OLDEST,
	ST_DS_FRESH,
	ST_DS_DELETE,
	ST_GREY_GET,
	ST_GREY_INSERT,
	ST_GREY_UPDATE,
	ST_GREY_DELETE,
	ST_GREY_PURGE,
	ST_GREY_COUNT,
	ST_GREY_FOREACH,
	ST_AWL_GET,
	ST_AWL_PUT,
	ST_AWL_DELETE,
	ST_AWL_PURGE,
	ST_AWL_FOREACH,
	ST_HOT_OWNER_SET,
	ST_HOT_OWNER_GET,
	ST_HOT_OWNER_DROP,
	ST_HOT_REQ_ADD,
	ST_HOT_REQ_LIST,
	ST_HOT_REQ_DONE,
	ST_HOT_REQ_GET,
	ST_HOT_REQ_CLEAN,
	ST_HOT_REQ_PENDING,
	ST_BEGIN,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_COUNT
};

/* Column order of every SELECT; row_to_entry() reads them by these positions. */
#define COLUMNS                                                                                              \
	"key, first_seen, last_seen, expires, hits, trap, sender, recipient, client, helo, queue_id, reason"

/* Version 1: the entries. */
static const char schema_v1_sql[] = "CREATE TABLE blocklist ("
                                    " key TEXT PRIMARY KEY NOT NULL,"
                                    " first_seen INTEGER NOT NULL,"
                                    " last_seen INTEGER NOT NULL,"
                                    " expires INTEGER NOT NULL,"
                                    " hits INTEGER NOT NULL DEFAULT 0,"
                                    " trap TEXT NOT NULL DEFAULT '',"
                                    " sender TEXT NOT NULL DEFAULT '',"
                                    " recipient TEXT NOT NULL DEFAULT '',"
                                    " client TEXT NOT NULL DEFAULT '',"
                                    " helo TEXT NOT NULL DEFAULT '',"
                                    " queue_id TEXT NOT NULL DEFAULT '',"
                                    " reason TEXT NOT NULL DEFAULT ''"
                                    ") WITHOUT ROWID;"
                                    "CREATE INDEX blocklist_expires ON blocklist (expires);";

/*
 * Version 2 adds netlens. A network key is one whose characters are all
 * hex digits, '.', ':' and '/' with a '/' among them; its family is 6 when
 * it has a ':', its length the number after the '/'. That takes in every
 * key store_net_key_len() accepts, with the same family and length, so a
 * lookup never skips a length that has an entry; odd keys it also takes
 * in ("1.2.3.4/5/6") only cost a wasted probe. An UPSERT (record) never
 * changes the key, so only INSERT, DELETE and a changed key count. The
 * backfill counts the rows of a version 1 file (none in a new one).
 */
/* The SQL put together from these macros reads best one clause a line. */
/* clang-format off */
#define NET_KEY(k) "(" k " GLOB '*/*' AND " k " NOT GLOB '*[^0-9A-Fa-f.:/]*')"
#define NET_FAMILY(k) "(CASE WHEN instr(" k ", ':') > 0 THEN 6 ELSE 4 END)"
#define NET_LEN(k) "CAST(substr(" k ", instr(" k ", '/') + 1) AS INTEGER)"
#define NET_COUNT_UP(k) \
	" INSERT INTO netlens VALUES (" NET_FAMILY(k) ", " NET_LEN(k) ", 1)" \
	" ON CONFLICT (family, len) DO UPDATE SET n = n + 1;"
#define NET_COUNT_DOWN(k) \
	" UPDATE netlens SET n = n - 1 WHERE family = " NET_FAMILY(k) " AND len = " NET_LEN(k) ";" \
	" DELETE FROM netlens WHERE family = " NET_FAMILY(k) " AND len = " NET_LEN(k) " AND n <= 0;"

static const char schema_v2_sql[] =
	"CREATE TABLE netlens (family INTEGER NOT NULL, len INTEGER NOT NULL, n INTEGER NOT NULL,"
	" PRIMARY KEY (family, len)) WITHOUT ROWID;"
	"CREATE TRIGGER netlens_insert AFTER INSERT ON blocklist"
	" WHEN " NET_KEY("new.key") " BEGIN" NET_COUNT_UP("new.key") " END;"
	"CREATE TRIGGER netlens_delete AFTER DELETE ON blocklist"
	" WHEN " NET_KEY("old.key") " BEGIN" NET_COUNT_DOWN("old.key") " END;"
	"CREATE TRIGGER netlens_rekey_old AFTER UPDATE OF key ON blocklist"
	" WHEN " NET_KEY("old.key") " BEGIN" NET_COUNT_DOWN("old.key") " END;"
	"CREATE TRIGGER netlens_rekey_new AFTER UPDATE OF key ON blocklist"
	" WHEN " NET_KEY("new.key") " BEGIN" NET_COUNT_UP("new.key") " END;"
	"INSERT INTO netlens SELECT " NET_FAMILY("key") ", " NET_LEN("key") ", count(*)"
	" FROM blocklist WHERE " NET_KEY("key") " GROUP BY 1, 2;"
	"PRAGMA user_version = 2;";
/* clang-format on */

/*
 * Version 3 adds the distinct sets (store_distinct_add): one row per live
 * member, the set's rows together under the primary key (so a call reads
 * only its own set), an index on expires for purges. Rows are dropped by
 * every call on their set and by every purge, so the table holds only
 * members of the last window.
 */
static const char schema_distinct_sql[] =
    "CREATE TABLE distinct_members (set_name TEXT NOT NULL, member TEXT NOT NULL, expires INTEGER NOT NULL,"
    " PRIMARY KEY (set_name, member)) WITHOUT ROWID;"
    "CREATE INDEX distinct_members_expires ON distinct_members (expires);";

/*
 * Version 4 adds the keyed records (store_kv) and the GCRA buckets
 * (store_counter), times in ms. IF NOT EXISTS: the step stands alone,
 * whatever steps run before it.
 */
static const char schema_kv_sql[] =
    "CREATE TABLE IF NOT EXISTS kv_records (ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
    " created INTEGER NOT NULL, updated INTEGER NOT NULL, expires INTEGER NOT NULL,"
    " PRIMARY KEY (ns, key)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS kv_records_expires ON kv_records (expires);"
    "CREATE TABLE IF NOT EXISTS counters (ns TEXT NOT NULL, key TEXT NOT NULL, tat INTEGER NOT NULL,"
    " PRIMARY KEY (ns, key)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS counters_tat ON counters (tat);";

/*
 * Version 6 adds the greylist (store_greylist): its triplets and its
 * auto-whitelisted clients, times in ms of this host's clock, each with an
 * index on expiry for the purge (which only the host with
 * greylist.maintenance runs). A row past expires_ms is never read as live.
 *
 * A triplet's key (up to GREYSTEP_KEY_MAX - 1 bytes, most of them the
 * sender's, which the client chooses) is stored once, in the row, and
 * found by its 64-bit FNV-1a hash (core/hash.h): a WITHOUT ROWID table or
 * an index on the key would store it twice, and a key longer than about
 * 1,000 bytes would spill into a 4 KB overflow page each time (measured:
 * 9.4 KB a row for the longest keys, 1.4 KB this way). Rows of one hash
 * form a bucket, read whole by one lookup: a new triplet whose bucket
 * holds GREY_BUCKET_MAX rows already is not recorded (it passes, as at
 * max_triplets), so that crafted collisions cost a lookup a few rows at
 * most. Client keys are short: a WITHOUT ROWID table.
 */
static const char schema_greylist_sql[] =
    "CREATE TABLE IF NOT EXISTS greylist_triplets (hash INTEGER NOT NULL, key TEXT NOT NULL,"
    " first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS greylist_triplets_hash ON greylist_triplets (hash);"
    "CREATE INDEX IF NOT EXISTS greylist_triplets_expires ON greylist_triplets (expires_ms);"
    "CREATE TABLE IF NOT EXISTS greylist_awl (key TEXT PRIMARY KEY NOT NULL,"
    " count INTEGER NOT NULL, last_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS greylist_awl_expires ON greylist_awl (expires_ms);";

/*
 * Version 7: the daemon whose memory holds buckets and sets written
 * behind (hot_owner: its pid), and what other processes ask of it
 * (hot_requests): spamtrapctl's resets (kind HOT_REQ_COUNTER, ns and key;
 * HOT_REQ_SET, the set in key; HOT_REQ_KV, a record written), which the
 * daemon's memory must forget,
 * and HOT_REQ_SYNC, write everything now (before relay show, rate show).
 * The daemon marks a row done in the transaction that did it.
 */
static const char schema_hot_sql[] =
    "CREATE TABLE IF NOT EXISTS hot_owner (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS hot_requests (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL,"
    " ns TEXT NOT NULL, key TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0);";

/*
 * The upgrade steps: schema_steps[v] brings a file of version v to
 * v + 1, and schema_create sets the version after each, so that every
 * step stands alone and a new one is one more entry.
 */
static int schema_typed_keys(sqlite3 *db, const char *path, char *err, size_t errlen);

/* A step is SQL, or a function for what SQL alone cannot do. */
typedef struct schema_step {
	const char *sql;
	int (*run)(sqlite3 *db, const char *path, char *err, size_t errlen);
} schema_step;

static const schema_step schema_steps[] = {{schema_v1_sql, NULL},       {schema_v2_sql, NULL},
                                           {schema_distinct_sql, NULL}, {NULL, schema_typed_keys},
                                           {schema_kv_sql, NULL},       {schema_greylist_sql, NULL},
                                           {schema_hot_sql, NULL}};
_Static_assert(sizeof(schema_steps) / sizeof(schema_steps[0]) == SCHEMA_VERSION,
               "one upgrade step per schema version");

/*
 * A hit on an expired (not yet purged) row starts a new listing, as it
 * would in Redis where the key is gone; a hit never shortens a longer
 * expiry someone set by hand.
 */
static const char record_sql[] =
    "INSERT INTO blocklist (" COLUMNS ") VALUES (?1, ?2, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    " ON CONFLICT (key) DO UPDATE SET"
    " first_seen = CASE WHEN expires <= excluded.last_seen THEN excluded.first_seen ELSE first_seen END,"
    " hits = CASE WHEN expires <= excluded.last_seen THEN 1 ELSE hits + 1 END,"
    " expires = CASE WHEN expires <= excluded.last_seen THEN excluded.expires"
    " ELSE max(expires, excluded.expires) END,"
    " last_seen = excluded.last_seen, trap = excluded.trap, sender = excluded.sender,"
    " recipient = excluded.recipient, client = excluded.client, helo = excluded.helo,"
    " queue_id = excluded.queue_id, reason = excluded.reason"
    /* new: the hit started the listing (a manual entry has hits 0 and an earlier first_seen) */
    " RETURNING hits = 1 AND first_seen = ?2";

/*
 * Replace every column of an entry. Not INSERT OR REPLACE: the row it
 * deletes would not fire the delete trigger (recursive_triggers is off),
 * so netlens would count the key twice.
 */
static const char put_sql[] =
    "INSERT INTO blocklist (" COLUMNS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    " ON CONFLICT (key) DO UPDATE SET first_seen = excluded.first_seen, last_seen = excluded.last_seen,"
    " expires = excluded.expires, hits = excluded.hits, trap = excluded.trap, sender = excluded.sender,"
    " recipient = excluded.recipient, client = excluded.client, helo = excluded.helo,"
    " queue_id = excluded.queue_id, reason = excluded.reason";

static const char *const fixed_sql[ST_COUNT] = {
    [ST_PROBE] = "SELECT " COLUMNS " FROM blocklist WHERE key = ?1 AND expires > ?2",
    [ST_NETLENS] = "SELECT family, len FROM netlens",
    [ST_DATA_VERSION] = "PRAGMA data_version",
    [ST_BEGIN_READ] = "BEGIN",
    [ST_RECORD] = record_sql,
    [ST_GET] = "SELECT " COLUMNS " FROM blocklist WHERE key = ?1",
    [ST_PUT] = put_sql,
    [ST_REMOVE] = "DELETE FROM blocklist WHERE key = ?1",
    [ST_PURGE] = "DELETE FROM blocklist WHERE key IN"
                 " (SELECT key FROM blocklist WHERE expires <= ?1 LIMIT " SQL_INT(PURGE_CHUNK) ")",
    [ST_FOREACH] = "SELECT " COLUMNS " FROM blocklist WHERE expires > ?1 ORDER BY key",
    [ST_DS_DROP] = "DELETE FROM distinct_members WHERE set_name = ?1 AND expires <= ?2",
    [ST_DS_COUNT] = "SELECT count(*), ifnull(max(member = ?2), 0) FROM distinct_members WHERE set_name = ?1",
    [ST_DS_ADD] = "INSERT INTO distinct_members (set_name, member, expires) VALUES (?1, ?2, ?3)"
                  " ON CONFLICT (set_name, member) DO UPDATE SET expires = max(expires, excluded.expires)",
    [ST_DS_REFRESH] =
        "UPDATE distinct_members SET expires = max(expires, ?3) WHERE set_name = ?1 AND member = ?2",
    [ST_DS_PEEK] = "SELECT count(*), ifnull(max(member = ?2), 0) FROM distinct_members"
                   " WHERE set_name = ?1 AND expires > ?3",
    [ST_DS_LIST] = "SELECT member, expires FROM distinct_members WHERE set_name = ?1 AND expires > ?2"
                   " ORDER BY expires DESC, member",
    [ST_DS_CLEAR] = "DELETE FROM distinct_members WHERE set_name = ?1",
    [ST_DS_PURGE] = "DELETE FROM distinct_members WHERE (set_name, member) IN (SELECT set_name, member"
                    " FROM distinct_members WHERE expires <= ?1 LIMIT " SQL_INT(PURGE_CHUNK) ")",
    [ST_KV_GET] = "SELECT value, expires FROM kv_records WHERE ns = ?1 AND key = ?2 AND expires > ?3",
    /* An expired row is a new record: it gets a new created time. */
    [ST_KV_PUT] =
        "INSERT INTO kv_records (ns, key, value, created, updated, expires) VALUES (?1, ?2, ?3, ?4, ?4, ?5)"
        " ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, updated = excluded.updated,"
        " created = CASE WHEN expires <= excluded.updated THEN excluded.created ELSE created END,"
        " expires = excluded.expires",
    [ST_KV_DELETE] = "DELETE FROM kv_records WHERE ns = ?1 AND key = ?2",
    [ST_KV_PURGE] = "DELETE FROM kv_records WHERE (ns, key) IN (SELECT ns, key"
                    " FROM kv_records WHERE expires <= ?1 LIMIT " SQL_INT(PURGE_CHUNK) ")",
    [ST_CTR_GET] = "SELECT tat FROM counters WHERE ns = ?1 AND key = ?2",
    [ST_CTR_PUT] = "INSERT INTO counters (ns, key, tat) VALUES (?1, ?2, ?3)"
                   " ON CONFLICT (ns, key) DO UPDATE SET tat = excluded.tat",
    /* The write behind's for a row the file has: an UPDATE seeks the row once, an UPSERT twice. */
    [ST_CTR_SET] = "UPDATE counters SET tat = ?3 WHERE ns = ?1 AND key = ?2",
    [ST_CTR_PURGE] = "DELETE FROM counters WHERE (ns, key) IN (SELECT ns, key"
                     " FROM counters WHERE tat <= ?1 LIMIT " SQL_INT(PURGE_CHUNK) ")",
    [ST_CTR_DELETE] = "DELETE FROM counters WHERE ns = ?1 AND key = ?2",
    [ST_CTR_ROWS] = "SELECT count(*) FROM counters",
    /* The earliest TAT: an expired bucket (as good as absent), else the one nearest to full again. */
    [ST_CTR_EVICT] = "SELECT ns, key FROM counters ORDER BY tat LIMIT 1",
    [ST_DS_ROWS] = "SELECT count(*) FROM distinct_members",
    [ST_DS_OLDEST] =
        "SELECT set_name, member FROM distinct_members WHERE expires <= ?1 ORDER BY expires LIMIT 1",
    [ST_DS_FRESH] = "SELECT count(*), ifnull(max(CASE WHEN member = ?2 THEN expires END), 0)"
                    " FROM distinct_members WHERE set_name = ?1 AND expires > ?3",
    [ST_DS_DELETE] = "DELETE FROM distinct_members WHERE set_name = ?1 AND member = ?2",
    [ST_GREY_GET] = "SELECT rowid, key, first_ms, last_ms, expires_ms FROM greylist_triplets WHERE hash = ?1"
                    " LIMIT " SQL_INT(GREY_BUCKET_MAX),
    [ST_GREY_INSERT] = "INSERT INTO greylist_triplets (hash, key, first_ms, last_ms, expires_ms)"
                       " VALUES (?1, ?2, ?3, ?4, ?5)",
    [ST_GREY_UPDATE] =
        "UPDATE greylist_triplets SET first_ms = ?2, last_ms = ?3, expires_ms = ?4 WHERE rowid = ?1",
    [ST_GREY_DELETE] = "DELETE FROM greylist_triplets WHERE hash = ?1 AND key = ?2",
    [ST_GREY_PURGE] = "DELETE FROM greylist_triplets WHERE rowid IN (SELECT rowid FROM greylist_triplets"
                      " WHERE expires_ms <= ?1 LIMIT " SQL_INT(PURGE_CHUNK) ")",
    [ST_GREY_COUNT] = "SELECT count(*) FROM greylist_triplets",
    [ST_GREY_FOREACH] = "SELECT key, first_ms, last_ms, expires_ms FROM greylist_triplets"
                        " WHERE expires_ms > ?1 ORDER BY key",
    [ST_AWL_GET] = "SELECT count, last_ms, expires_ms FROM greylist_awl WHERE key = ?1",
    [ST_AWL_PUT] = "INSERT INTO greylist_awl (key, count, last_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)"
                   " ON CONFLICT (key) DO UPDATE SET count = excluded.count, last_ms = excluded.last_ms,"
                   " expires_ms = excluded.expires_ms",
    [ST_AWL_DELETE] = "DELETE FROM greylist_awl WHERE key = ?1",
    [ST_AWL_PURGE] = "DELETE FROM greylist_awl WHERE key IN (SELECT key FROM greylist_awl"
                     " WHERE expires_ms <= ?1 LIMIT " SQL_INT(PURGE_CHUNK) ")",
    [ST_AWL_FOREACH] = "SELECT key, count, last_ms, expires_ms FROM greylist_awl WHERE expires_ms > ?1"
                       " ORDER BY key",
    [ST_HOT_OWNER_SET] = "INSERT INTO hot_owner (id, pid) VALUES (1, ?1)"
                         " ON CONFLICT (id) DO UPDATE SET pid = excluded.pid",
    [ST_HOT_OWNER_GET] = "SELECT pid FROM hot_owner WHERE id = 1",
    [ST_HOT_OWNER_DROP] = "DELETE FROM hot_owner WHERE id = 1 AND pid = ?1",
    [ST_HOT_REQ_ADD] = "INSERT INTO hot_requests (kind, ns, key) VALUES (?1, ?2, ?3)",
    [ST_HOT_REQ_LIST] = "SELECT id, kind, ns, key FROM hot_requests WHERE done = 0 ORDER BY id",
    [ST_HOT_REQ_DONE] = "UPDATE hot_requests SET done = 1 WHERE done = 0 AND id <= ?1",
    [ST_HOT_REQ_GET] = "SELECT done FROM hot_requests WHERE id = ?1",
    [ST_HOT_REQ_CLEAN] = "DELETE FROM hot_requests WHERE (done = 1 AND id <= ?1) OR id = ?2",
    [ST_HOT_REQ_PENDING] = "SELECT count(*) FROM hot_requests WHERE done = 0",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
};

/* Network prefix lengths present, one bit per length: IPv4 0..32, IPv6 0..128. */
typedef struct netmask {
	uint64_t v4;
	uint64_t v6[3];
} netmask;

typedef struct conn {
	sqlite3 *db;
	sqlite3_stmt *stmt[ST_COUNT];
	bool busy;
	bool mask_valid; /* mask is what netlens held at data_version */
	int data_version;
	netmask mask;
	int64_t deadline; /* this call's end of waiting, monotonic ms; 0: it has not waited yet */
	bool gave_up;     /* this call ran out of time waiting for a lock */
} conn;

/*
 * The rows of a capped table (relay.max_entries, ratelimit.max_buckets),
 * an estimate: counted at the first new row of a capped call, after a
 * purge, after a failed write and, while at the cap, again every
 * CAP_RECOUNT_MS (another process's rows are seen then); adjusted by this
 * process's inserts and deletes in between. -1: count at the next need.
 */
typedef struct row_cap {
	_Atomic int64_t rows;
	_Atomic int64_t counted_at; /* monotonic ms of the last count */
} row_cap;

/* Calls of one kind fail at once until `until` (monotonic ms, 0: never); then one tries (probing). */
typedef struct backoff {
	int64_t until;
	bool probing;
} backoff;

struct store_backend_impl {
	char *path;
	pthread_mutex_t lock;  /* guards conns[].busy, writing and backoff[] */
	pthread_cond_t freed;  /* a connection was released */
	pthread_cond_t turned; /* the write turn was released */
	bool writing;          /* a writer of this process has the turn */
	backoff backoff[2];    /* [0] reads, [1] writes */
	conn conns[POOL_SIZE];
	sqlite_filter *filter;           /* answers most misses without SQLite */
	_Atomic uint64_t filter_answers; /* lookups it answered alone: store_filter_answers */
	/*
	 * The greylist_triplets rows, an estimate for the max_triplets cap:
	 * counted at the first capped call and after each purge, adjusted by
	 * this process's inserts and deletes between them (another process's
	 * are not seen until the next count; while the cap holds, the rows
	 * are counted again after GREY_RECOUNT_MS or GREY_RECOUNT_CALLS capped
	 * answers, whichever comes first, so that a purge by another process
	 * lifts it). -1: not counted yet.
	 */
	_Atomic int64_t grey_rows;
	_Atomic int64_t grey_counted_at; /* monotonic ms of the last count */
	_Atomic uint64_t grey_capped;    /* capped answers since then */
	row_cap distinct_cap;            /* distinct_members, against relay.max_entries */
	row_cap counter_cap;             /* counters, against ratelimit.max_buckets */
	/* Buckets and sets written behind (sqlite_hot.h), by the thread flusher. */
	sqlite_hot *hot;
	pthread_mutex_t hot_lock; /* guards the fields below */
	pthread_cond_t hot_wake;  /* stopping */
	pthread_mutex_t flushing; /* one flush at a time, and no reset in the middle of one */
	pthread_t flusher;
	bool flusher_started, stopping;
	bool owner;                          /* hot_owner names this process (the flusher's) */
	struct store_backend_impl *hot_next; /* hot_registry */
	/*
	 * Another daemon writes behind on this file (several daemons sharing
	 * one file): from then on every count is made in the file, as before
	 * write-behind, so that the daemons count together.
	 */
	_Atomic bool hot_shared;
	int64_t cleaned_to;                /* hot_requests done up to here may go (the last flush's) */
	_Atomic uint64_t counter_max_rows; /* ratelimit.max_buckets, as the last charge said */
};

/* --- waiting ------------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * SQLite's busy handler: sleep in growing steps (as sqlite3_busy_timeout
 * does) while another process holds the lock, until the call's deadline.
 * The clock starts at the first wait, so a call that never waits never
 * reads it.
 */
static int busy_wait(void *arg, int count)
{
	static const int steps_ms[] = {1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100};
	const int nsteps = (int)(sizeof(steps_ms) / sizeof(steps_ms[0]));
	conn *c = arg;
	int64_t now = now_ms(), step = steps_ms[count < nsteps ? count : nsteps - 1];

	if (c->deadline == 0)
		c->deadline = now + WAIT_MS;
	if (now >= c->deadline) {
		c->gave_up = true;
		return 0;
	}
	if (step > c->deadline - now)
		step = c->deadline - now;
	nanosleep(&(struct timespec){.tv_sec = step / 1000, .tv_nsec = step % 1000 * 1000000}, NULL);
	return 1;
}

/* Condition variables wait by the monotonic clock, as the deadlines are kept. */
static void monotonic_cond_init(pthread_cond_t *cond)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(cond, &attr);
	pthread_condattr_destroy(&attr);
}

/* Wait on cond until *deadline (set now when 0); false once it has passed. Under s->lock. */
static bool wait_until(store_backend_impl *s, pthread_cond_t *cond, int64_t *deadline)
{
	if (*deadline == 0)
		*deadline = now_ms() + WAIT_MS;
	pthread_cond_timedwait(
	    cond, &s->lock,
	    &(struct timespec){.tv_sec = *deadline / 1000, .tv_nsec = *deadline % 1000 * 1000000});
	return now_ms() < *deadline;
}

/* --- setup --------------------------------------------------------------- */

/* Create a new file with mode 0640 (the WAL and shm files inherit it); an existing one is left alone. */
static int create_file(const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0640);

	if (fd < 0) {
		if (errno == EEXIST)
			return 0;
		snprintf(err, errlen, "sqlite %s: cannot create the database: %s", path, strerror(errno));
		return -1;
	}
	if (fchmod(fd, 0640) < 0) {
		snprintf(err, errlen, "sqlite %s: cannot set mode 0640: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

static int exec_sql(sqlite3 *db, const char *path, const char *sql, char *err, size_t errlen)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)
		return 0;
	snprintf(err, errlen, "sqlite %s: %s", path, msg ? msg : sqlite3_errmsg(db));
	sqlite3_free(msg);
	return -1;
}

static int query_int(sqlite3 *db, const char *sql, int *out)
{
	sqlite3_stmt *stmt = NULL;
	int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL);

	if (rc == SQLITE_OK) {
		rc = sqlite3_step(stmt);
		if (rc == SQLITE_ROW) {
			*out = sqlite3_column_int(stmt, 0);
			rc = SQLITE_OK;
		}
	}
	sqlite3_finalize(stmt);
	return rc;
}

static void done(sqlite3_stmt *stmt)
{
	sqlite3_reset(stmt);
	sqlite3_clear_bindings(stmt);
}

static int step_done(sqlite3_stmt *stmt)
{
	int rc = sqlite3_step(stmt);

	done(stmt);
	return rc == SQLITE_DONE ? 0 : -1;
}

/* --- version 4: typed keys ---------------------------------------------- */

/*
 * Version 4 has the typed keys of core/key.h; its tables are version 3's.
 * A file of 0.1.0 (version 2) or 3 keeps its keys but for the few that
 * key_migrate() changes: an entry that a sender spelled like another key
 * type wrote ("sasl:alice@d", with that same text as its recorded sender)
 * moves to that sender's key ("\"sasl:alice\"@d"), where it no longer
 * blocks the SASL user; SASL names are lowercased. The moves to sender
 * keys go first, longest key first (a quoted key is longer than the one
 * it quotes, so a key is vacated before one moves in), so that a SASL
 * entry lowercased onto a poisoned key is never taken along. Two entries
 * that meet under one key merge: the later expiry with its provenance,
 * the hits added up, the earlier first_seen.
 */
#define LATER(col) " " col " = CASE WHEN excluded.expires > expires THEN excluded." col " ELSE " col " END,"
static const char rekey_sql[] =
    "INSERT INTO blocklist (" COLUMNS ") SELECT ?2, first_seen, last_seen, expires, hits, trap, sender,"
    " recipient, client, helo, queue_id, reason FROM blocklist WHERE key = ?1"
    " ON CONFLICT (key) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen),"
    " hits = hits + excluded.hits," LATER("last_seen") LATER("trap") LATER("sender") LATER("recipient")
        LATER("client") LATER("helo") LATER("queue_id")
            LATER("reason") " expires = max(expires, excluded.expires)";
#undef LATER

/* One entry to move: its key now and the key it gets ("": drop it). */
typedef struct rekey {
	char *from, *to;
	bool first; /* not a SASL name lowercased: moves in the first pass */
} rekey;

typedef struct rekeys {
	rekey *v;
	size_t n, cap;
} rekeys;

static void rekeys_clear(rekeys *r)
{
	for (size_t i = 0; i < r->n; i++) {
		free(r->v[i].from);
		free(r->v[i].to);
	}
	free(r->v);
}

/* Note the move of one entry, if it moves; false when out of memory. */
static bool rekeys_add(rekeys *r, const char *key, const char *sender)
{
	char to[STORE_KEY_MAX];
	size_t len = key_migrate(key, sender, to, sizeof(to));
	rekey *k;

	if (len > 0 && strcmp(to, key) == 0)
		return true;
	if (r->n == r->cap) {
		size_t cap = r->cap ? 2 * r->cap : 64;
		rekey *v = realloc(r->v, cap * sizeof(*v));

		if (!v)
			return false;
		r->v = v, r->cap = cap;
	}
	k = &r->v[r->n];
	k->first = len == 0 || key_type_of(key) != KEY_TYPE_SASL || key_type_of(to) != KEY_TYPE_SASL;
	k->from = strdup(key);
	k->to = strdup(to);
	if (!k->from || !k->to) {
		free(k->from);
		free(k->to);
		return false;
	}
	r->n++;
	return true;
}

/* The entries that move: of the keys key_migrate() may change, those it does change. */
static int rekeys_find(sqlite3 *db, rekeys *r)
{
	static const char sql[] =
	    "SELECT key, sender FROM blocklist WHERE key GLOB 'sasl:*' OR key GLOB 'helo:*'"
	    " OR key GLOB '@*@*' OR key GLOB '*[\"\\]*@*'";
	sqlite3_stmt *stmt = NULL;
	int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL);

	while (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		const char *key = (const char *)sqlite3_column_text(stmt, 0);
		const char *sender = (const char *)sqlite3_column_text(stmt, 1);

		rc = SQLITE_OK;
		if (key && !rekeys_add(r, key, sender ? sender : ""))
			rc = SQLITE_NOMEM;
	}
	sqlite3_finalize(stmt);
	return rc == SQLITE_DONE ? 0 : -1;
}

/* The first pass before the second; in the first, longer keys first. */
static int cmp_rekey(const void *a, const void *b)
{
	const rekey *x = a, *y = b;
	size_t lx = strlen(x->from), ly = strlen(y->from);

	if (x->first != y->first)
		return x->first ? -1 : 1;
	return x->first ? (lx < ly) - (lx > ly) : strcmp(x->from, y->from);
}

static int rekey_one(sqlite3_stmt *move, sqlite3_stmt *drop, const rekey *k)
{
	if (k->to[0]) {
		sqlite3_bind_text(move, 1, k->from, -1, SQLITE_STATIC);
		sqlite3_bind_text(move, 2, k->to, -1, SQLITE_STATIC);
		if (step_done(move) < 0)
			return -1;
	}
	sqlite3_bind_text(drop, 1, k->from, -1, SQLITE_STATIC);
	return step_done(drop);
}

/* Inside the schema transaction: version 3 to 4. */
static int schema_typed_keys(sqlite3 *db, const char *path, char *err, size_t errlen)
{
	rekeys r = {0};
	sqlite3_stmt *move = NULL, *drop = NULL;
	int rc = -1;

	if (rekeys_find(db, &r) == 0 && sqlite3_prepare_v2(db, rekey_sql, -1, &move, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, "DELETE FROM blocklist WHERE key = ?1", -1, &drop, NULL) == SQLITE_OK) {
		rc = 0;
		if (r.n > 0)
			qsort(r.v, r.n, sizeof(*r.v), cmp_rekey);
		for (size_t i = 0; i < r.n && rc == 0; i++)
			rc = rekey_one(move, drop, &r.v[i]);
	}
	if (rc < 0)
		snprintf(err, errlen, "sqlite %s: upgrading to typed keys: %s", path, sqlite3_errmsg(db));
	sqlite3_finalize(move);
	sqlite3_finalize(drop);
	rekeys_clear(&r);
	return rc;
}

/* Create the schema in an empty file, or bring an older one up to SCHEMA_VERSION, step by step. */
static int schema_create(sqlite3 *db, const char *path, int version, char *err, size_t errlen)
{
	char set_version[40];

	for (int v = version; v < SCHEMA_VERSION; v++) {
		snprintf(set_version, sizeof(set_version), "PRAGMA user_version = %d;", v + 1);
		if ((schema_steps[v].sql ? exec_sql(db, path, schema_steps[v].sql, err, errlen)
		                         : schema_steps[v].run(db, path, err, errlen)) < 0 ||
		    exec_sql(db, path, set_version, err, errlen) < 0)
			return -1;
	}
	return 0;
}

static int schema_read(sqlite3 *db, const char *path, int *version, int *ntables, char *err, size_t errlen)
{
	if (query_int(db, "PRAGMA user_version", version) == SQLITE_OK &&
	    query_int(db, "SELECT count(*) FROM sqlite_master", ntables) == SQLITE_OK)
		return 0;
	snprintf(err, errlen, "sqlite %s: %s", path, sqlite3_errmsg(db));
	return -1;
}

/* Inside the write transaction: refuse a file that is not ours or too new, create or upgrade the rest. */
static int schema_update(sqlite3 *db, const char *path, char *err, size_t errlen)
{
	int version = 0, ntables = 0;

	if (schema_read(db, path, &version, &ntables, err, errlen) < 0)
		return -1;
	if (version == 0 && ntables > 0) {
		snprintf(err, errlen,
		         "sqlite %s: not a spamtrapd database (it has tables but no schema version)", path);
		return -1;
	} else if (version > SCHEMA_VERSION) {
		snprintf(err, errlen, "sqlite %s: schema version %d is newer than this spamtrapd knows (%d)",
		         path, version, SCHEMA_VERSION);
		return -1;
	}
	return version < SCHEMA_VERSION ? schema_create(db, path, version, err, errlen) : 0;
}

/*
 * Check the schema version, creating or upgrading the schema in one write
 * transaction when needed. A current file is only read, so that the store
 * opens while another process holds the write lock (lookups work then,
 * writes wait their turn or fail by store.on_error).
 */
static int schema_check(sqlite3 *db, const char *path, char *err, size_t errlen)
{
	int version = 0, ntables = 0;

	if (schema_read(db, path, &version, &ntables, err, errlen) < 0)
		return -1;
	if (version == SCHEMA_VERSION)
		return 0;
	if (exec_sql(db, path, "BEGIN IMMEDIATE", err, errlen) < 0)
		return -1;
	if (schema_update(db, path, err, errlen) < 0) {
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
		return -1;
	}
	return exec_sql(db, path, "COMMIT", err, errlen);
}

static void conn_close(conn *c)
{
	for (int i = 0; i < ST_COUNT; i++)
		sqlite3_finalize(c->stmt[i]);
	sqlite3_close(c->db);
	memset(c, 0, sizeof(*c));
}

static int conn_prepare(conn *c, const store_backend_impl *s, char *err, size_t errlen)
{
	for (int i = 0; i < ST_COUNT; i++) {
		if (sqlite3_prepare_v3(c->db, fixed_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &c->stmt[i],
		                       NULL) != SQLITE_OK) {
			snprintf(err, errlen, "sqlite %s: preparing statements: %s", s->path,
			         sqlite3_errmsg(c->db));
			return -1;
		}
	}
	return 0;
}

/* The user this process runs as, for messages about permissions. */
static void user_name(char *buf, size_t buflen)
{
	struct passwd pw, *found = NULL;
	char pwbuf[1024];

	if (getpwuid_r(geteuid(), &pw, pwbuf, sizeof(pwbuf), &found) == 0 && found)
		snprintf(buf, buflen, "user %s", found->pw_name);
	else
		snprintf(buf, buflen, "uid %u", (unsigned)geteuid());
}

/* The folder of path, for messages and checks. */
static void dir_of(const char *path, char *dir, size_t dirlen)
{
	const char *slash = strrchr(path, '/');

	if (!slash)
		snprintf(dir, dirlen, ".");
	else
		snprintf(dir, dirlen, "%.*s", slash == path ? 1 : (int)(slash - path), path);
}

/*
 * Why opening may have failed, appended to err when the file system shows
 * it: a file of the database (the file, -wal, -shm) this user cannot
 * write; the folder, when SQLite has to create -wal or -shm there (or the
 * file) and may not; or a full file system. SQLite's own message names
 * none of these ("disk I/O error", "unable to open database file").
 */
static void open_hint(const char *path, char *err, size_t errlen)
{
	static const char *const suffixes[] = {"", "-wal", "-shm"};
	size_t used = strlen(err);
	char file[4096], dir[4096], user[96];
	struct statvfs vfs;
	bool missing = false;

	user_name(user, sizeof(user));
	dir_of(path, dir, sizeof(dir));
	for (size_t i = 0; i < 3; i++) {
		snprintf(file, sizeof(file), "%s%s", path, suffixes[i]);
		if (access(file, F_OK) < 0) {
			missing = true;
		} else if (access(file, R_OK | W_OK) < 0) {
			snprintf(err + used, errlen - used, " (%s cannot write %s: %s)", user, file,
			         strerror(errno));
			return;
		}
	}
	if (missing && access(dir, W_OK | X_OK) < 0)
		snprintf(err + used, errlen - used, " (%s cannot create files in %s: %s)", user, dir,
		         strerror(errno));
	else if (statvfs(dir, &vfs) == 0 && vfs.f_bavail == 0)
		snprintf(err + used, errlen - used, " (the file system of %s is full)", dir);
}

/*
 * Instead of SQLite's automatic checkpoint (sqlite3_wal_autocheckpoint,
 * which this replaces): the filter's thread runs it when it can, so that
 * the thread that made the commit, a policy worker, never waits for the
 * disk; otherwise (spamtrapctl) the committing thread runs it, as SQLite would.
 */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
	const store_backend_impl *s = arg;

	if (frames >= WAL_CHECKPOINT_FRAMES && !(s->filter && sqlite_filter_checkpoint(s->filter)))
		sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
	return SQLITE_OK;
}

/*
 * No memory statistics: with them SQLite takes a process-wide mutex at
 * every allocation and free (a write behind's flush makes several a row),
 * and spamtrapd never reads them. Only before SQLite initialises (the
 * first open); later it is refused and changes nothing.
 */
static void sqlite_global_setup(void)
{
	(void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

static int conn_setup(conn *c, const store_backend_impl *s, bool first, char *err, size_t errlen)
{
	static pthread_once_t global_once = PTHREAD_ONCE_INIT;
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
	char pragmas[160];

	pthread_once(&global_once, sqlite_global_setup);
	if (sqlite3_open_v2(s->path, &c->db, flags, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "sqlite %s: cannot open: %s", s->path,
		         c->db ? sqlite3_errmsg(c->db) : "out of memory");
		return -1;
	}
	/* SQLite falls back to reading a file it may not write; a blocklist that cannot learn is a fault. */
	if (sqlite3_db_readonly(c->db, "main") == 1) {
		snprintf(err, errlen, "sqlite %s: cannot open the database for writing", s->path);
		return -1;
	}
	sqlite3_extended_result_codes(c->db, 1);
	sqlite3_busy_handler(c->db, busy_wait, c);
	sqlite3_wal_hook(c->db, wal_hook, (void *)s);
	c->deadline = now_ms() + OPEN_WAIT_MS;
	/*
	 * journal_size_limit: SQLite keeps the log file at its largest size after
	 * a checkpoint; a burst of writes (a flood of new greylist triplets)
	 * would leave that much disk taken for good. Truncated to this instead.
	 */
	snprintf(pragmas, sizeof(pragmas),
	         "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -%d; PRAGMA journal_size_limit = %d;",
	         CACHE_KIB, WAL_SIZE_LIMIT);
	if (exec_sql(c->db, s->path, pragmas, err, errlen) < 0)
		return -1;
	/* journal_mode is stored in the file; setting it once is enough, and the first connection does. */
	if (first && (exec_sql(c->db, s->path, "PRAGMA journal_mode = WAL", err, errlen) < 0 ||
	              schema_check(c->db, s->path, err, errlen) < 0))
		return -1;
	return conn_prepare(c, s, err, errlen);
}

static int conn_open(conn *c, const store_backend_impl *s, bool first, char *err, size_t errlen)
{
	if (conn_setup(c, s, first, err, errlen) == 0) {
		c->deadline = 0;
		c->gave_up = false;
		return 0;
	}
	if (c->gave_up)
		snprintf(err + strlen(err), errlen - strlen(err),
		         " (another process held a lock on it for %d ms)", OPEN_WAIT_MS);
	else
		open_hint(s->path, err, errlen);
	return -1;
}

static void hot_stop(store_backend_impl *s);

static void sqlite_free(store_backend_impl *s)
{
	if (!s)
		return;
	hot_stop(s);
	sqlite_hot_free(s->hot);
	pthread_mutex_destroy(&s->hot_lock);
	pthread_mutex_destroy(&s->flushing);
	pthread_cond_destroy(&s->hot_wake);
	sqlite_filter_free(s->filter);
	for (int i = 0; i < POOL_SIZE; i++)
		conn_close(&s->conns[i]);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->freed);
	pthread_cond_destroy(&s->turned);
	free(s->path);
	free(s);
}

static store_backend_impl *sqlite_open(const store_config *cfg, char *err, size_t errlen)
{
	store_backend_impl *s;

	if (!cfg->sqlite_path || !cfg->sqlite_path[0] || strcmp(cfg->sqlite_path, ":memory:") == 0) {
		snprintf(err, errlen, "sqlite: store.sqlite.path must name a file");
		return NULL;
	}
	if (!sqlite3_threadsafe()) {
		snprintf(err, errlen, "sqlite: the SQLite library was built without thread support");
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s || !(s->path = strdup(cfg->sqlite_path))) {
		free(s);
		snprintf(err, errlen, "sqlite: out of memory");
		return NULL;
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->hot_lock, NULL);
	pthread_mutex_init(&s->flushing, NULL);
	monotonic_cond_init(&s->hot_wake);
	atomic_init(&s->counter_max_rows, 0);
	atomic_init(&s->grey_rows, -1);
	atomic_init(&s->grey_counted_at, 0);
	atomic_init(&s->grey_capped, 0);
	atomic_init(&s->distinct_cap.rows, -1);
	atomic_init(&s->distinct_cap.counted_at, 0);
	atomic_init(&s->counter_cap.rows, -1);
	atomic_init(&s->counter_cap.counted_at, 0);
	monotonic_cond_init(&s->freed);
	monotonic_cond_init(&s->turned);
	if (create_file(s->path, err, errlen) < 0) {
		open_hint(s->path, err, errlen);
		goto fail;
	}
	for (int i = 0; i < POOL_SIZE; i++)
		if (conn_open(&s->conns[i], s, i == 0, err, errlen) < 0)
			goto fail;
	if (!(s->filter = sqlite_filter_new(s->path))) {
		snprintf(err, errlen, "sqlite: out of memory");
		goto fail;
	}
	return s;
fail:
	sqlite_free(s);
	return NULL;
}

/* --- the pool ------------------------------------------------------------ */

typedef enum { FOR_READ = 0, FOR_WRITE = 1 } use;

/* Under s->lock: may a call go ahead? When a back-off has run out, one call (the probe) goes. */
static bool backoff_admits(backoff *b)
{
	if (b->until == 0)
		return true;
	if (b->probing || now_ms() < b->until)
		return false;
	b->probing = true;
	return true;
}

/* Under s->lock: a call ran out of time waiting (back off), or it did not (any back-off ends). */
static void backoff_update(backoff *b, bool timed_out)
{
	if (timed_out)
		*b = (backoff){.until = now_ms() + BACKOFF_MS};
	else if (b->until)
		*b = (backoff){0};
}

static conn *free_conn(store_backend_impl *s)
{
	for (int i = 0; i < POOL_SIZE; i++)
		if (!s->conns[i].busy)
			return &s->conns[i];
	return NULL;
}

/* Under s->lock: a writer's turn first, then a connection; NULL when *deadline passes first. */
static conn *take(store_backend_impl *s, use u, int64_t *deadline)
{
	conn *c;

	while (u == FOR_WRITE && s->writing)
		if (!wait_until(s, &s->turned, deadline) && s->writing)
			return NULL;
	if (u == FOR_WRITE)
		s->writing = true;
	while (!(c = free_conn(s)))
		if (!wait_until(s, &s->freed, deadline) && !(c = free_conn(s)))
			break;
	if (!c && u == FOR_WRITE) {
		s->writing = false;
		pthread_cond_signal(&s->turned);
	}
	return c;
}

/*
 * A connection for one call (what names the call in errors), with the
 * write turn for a writer. NULL with the store error set while calls of
 * this kind back off, or when the wait ran out.
 */
static conn *acquire(store_backend_impl *s, use u, const char *what)
{
	int64_t deadline = 0;
	conn *c = NULL;
	bool admitted;

	pthread_mutex_lock(&s->lock);
	admitted = backoff_admits(&s->backoff[u]);
	if (admitted && (c = take(s, u, &deadline)) != NULL) {
		c->busy = true;
		c->deadline = deadline;
		c->gave_up = false;
	} else if (admitted) {
		backoff_update(&s->backoff[u], true);
	}
	pthread_mutex_unlock(&s->lock);
	if (!admitted)
		store_set_error(
		    "sqlite %s: %s: database is locked (not waiting: a wait ran out less than %d ms ago)",
		    s->path, what, BACKOFF_MS);
	else if (!c)
		store_set_error("sqlite %s: %s: gave up after %d ms waiting for %s", s->path, what, WAIT_MS,
		                u == FOR_WRITE ? "the write in progress" : "a free connection");
	return c;
}

static void release(store_backend_impl *s, conn *c, use u)
{
	pthread_mutex_lock(&s->lock);
	backoff_update(&s->backoff[u], c->gave_up);
	c->busy = false;
	pthread_cond_signal(&s->freed);
	if (u == FOR_WRITE) {
		s->writing = false;
		pthread_cond_signal(&s->turned);
	}
	pthread_mutex_unlock(&s->lock);
}

static store_status db_error(const store_backend_impl *s, const conn *c, const char *what)
{
	if (c->gave_up)
		return store_set_error("sqlite %s: %s: %s (gave up after %d ms)", s->path, what,
		                       sqlite3_errmsg(c->db), WAIT_MS);
	return store_set_error("sqlite %s: %s: %s", s->path, what, sqlite3_errmsg(c->db));
}

/* --- rows ---------------------------------------------------------------- */

static void column_copy(sqlite3_stmt *stmt, int col, char *dst, size_t cap)
{
	const char *text = (const char *)sqlite3_column_text(stmt, col);

	store_field_copy(dst, cap, text, text ? (size_t)sqlite3_column_bytes(stmt, col) : 0);
}

static void row_to_entry(sqlite3_stmt *stmt, store_entry *e)
{
	column_copy(stmt, 0, e->key, sizeof(e->key));
	e->first_seen = sqlite3_column_int64(stmt, 1);
	e->last_seen = sqlite3_column_int64(stmt, 2);
	e->expires = sqlite3_column_int64(stmt, 3);
	e->hits = (uint64_t)sqlite3_column_int64(stmt, 4);
	column_copy(stmt, 5, e->trap, sizeof(e->trap));
	column_copy(stmt, 6, e->sender, sizeof(e->sender));
	column_copy(stmt, 7, e->recipient, sizeof(e->recipient));
	column_copy(stmt, 8, e->client, sizeof(e->client));
	column_copy(stmt, 9, e->helo, sizeof(e->helo));
	column_copy(stmt, 10, e->queue_id, sizeof(e->queue_id));
	column_copy(stmt, 11, e->reason, sizeof(e->reason));
}

/* Bind s capped to what a store_entry field of cap bytes holds, so values round-trip unchanged. */
static void bind_field(sqlite3_stmt *stmt, int idx, const char *s, size_t cap)
{
	sqlite3_bind_text(stmt, idx, s ? s : "", (int)store_field_len(s ? s : "", cap), SQLITE_STATIC);
}

/*
 * PRAGMA data_version does not count a connection's own commits: every
 * write drops that connection's cached lengths (a write that failed may
 * still have committed part of its work elsewhere, so whatever the result).
 */
static void wrote(conn *c)
{
	c->mask_valid = false;
}

/* --- operations ---------------------------------------------------------- */

static void mask_add(netmask *m, sqlite3_int64 family, sqlite3_int64 len)
{
	if (family == 4 && len >= 0 && len <= 32)
		m->v4 |= UINT64_C(1) << len;
	else if (family == 6 && len >= 0 && len <= 128)
		m->v6[len / 64] |= UINT64_C(1) << (len % 64);
}

/* May an entry exist for this key, as far as the lengths present tell? */
static bool mask_may_have(const netmask *m, int16_t netlen)
{
	if (netlen < 0)
		return true;
	if (netlen < 256)
		return m->v4 >> netlen & 1;
	return m->v6[(netlen - 256) / 64] >> ((netlen - 256) % 64) & 1;
}

/* The network length of keys[i] (STORE_NETLEN): the caller's, or parsed. */
static int16_t key_netlen(const char *const *keys, const int16_t *netlens, size_t i)
{
	int family, len;

	if (netlens)
		return netlens[i];
	len = store_net_key_len(keys[i], &family);
	return len < 0 ? STORE_NETLEN_NONE : STORE_NETLEN(family, len);
}

static int read_netlens(conn *c)
{
	sqlite3_stmt *stmt = c->stmt[ST_NETLENS];
	int step;

	memset(&c->mask, 0, sizeof(c->mask));
	while ((step = sqlite3_step(stmt)) == SQLITE_ROW)
		mask_add(&c->mask, sqlite3_column_int64(stmt, 0), sqlite3_column_int64(stmt, 1));
	sqlite3_reset(stmt);
	return step == SQLITE_DONE ? 0 : -1;
}

/* Inside the read transaction (which this starts): the lengths present, re-read when the file changed. */
static int refresh_mask(conn *c)
{
	sqlite3_stmt *stmt = c->stmt[ST_DATA_VERSION];
	int version;

	if (sqlite3_step(stmt) != SQLITE_ROW) {
		sqlite3_reset(stmt);
		return -1;
	}
	version = sqlite3_column_int(stmt, 0);
	sqlite3_reset(stmt);
	if (c->mask_valid && version == c->data_version)
		return 0;
	c->mask_valid = false;
	if (read_netlens(c) < 0)
		return -1;
	c->data_version = version;
	c->mask_valid = true;
	return 0;
}

/* Probe keys in order, but those of skip (bit i: keys[i]); the first live entry wins. */
static store_status probe_keys(const store_backend_impl *s, conn *c, const char *const *keys,
                               const int16_t *netlens, size_t nkeys, uint64_t skip, int64_t now,
                               store_entry *found)
{
	sqlite3_stmt *stmt = c->stmt[ST_PROBE];
	store_status rc = STORE_NOTFOUND;

	sqlite3_bind_int64(stmt, 2, now);
	for (size_t i = 0; i < nkeys && rc == STORE_NOTFOUND; i++) {
		int step;

		if ((i < 64 && (skip >> i & 1)) || !mask_may_have(&c->mask, key_netlen(keys, netlens, i)))
			continue;
		sqlite3_bind_text(stmt, 1, keys[i], -1, SQLITE_STATIC);
		step = sqlite3_step(stmt);
		if (step == SQLITE_ROW) {
			row_to_entry(stmt, found);
			rc = STORE_OK;
		} else if (step != SQLITE_DONE) {
			rc = db_error(s, c, "lookup");
		}
		sqlite3_reset(stmt);
	}
	sqlite3_clear_bindings(stmt);
	return rc;
}

/* Inside the read transaction: the keys the filter found absent, when it reads the state the filter saw. */
static uint64_t filter_skip(const store_backend_impl *s, int nmaybe, uint64_t maybe,
                            const sqlite_filter_view *v)
{
	return nmaybe > 0 && sqlite_filter_unchanged(s->filter, v) ? ~maybe : 0;
}

/* Are all the lengths present in the state c read (c->mask) in built? */
static bool mask_within(const netmask *m, const store_netmask *built)
{
	uint64_t out = m->v4 & ~built->v4;

	for (int i = 0; i < 3; i++)
		out |= m->v6[i] & ~built->v6[i];
	return out == 0;
}

/* Inside the read transaction: the probes, unless the keys lack a length present (*stale then). */
static store_status probe_built(const store_backend_impl *s, conn *c, const char *const *keys,
                                const int16_t *netlens, size_t nkeys, const store_netmask *built,
                                uint64_t skip, int64_t now, store_entry *found, bool *stale)
{
	if (built && !mask_within(&c->mask, built)) {
		*stale = true;
		return STORE_NOTFOUND;
	}
	return probe_keys(s, c, keys, netlens, nkeys, skip, now, found);
}

/*
 * The filter first: when it knows that no key is in the file, that is the
 * answer. When it knows that only some may be, and the transaction reads
 * the state it answered for, only those are probed. built (NULL: every
 * length): the lengths the keys were built for; when the state read holds
 * another one, *stale and no answer.
 */
static store_status lookup_keys(store_backend_impl *s, const char *const *keys, const int16_t *netlens,
                                size_t nkeys, const store_netmask *built, int64_t now, store_entry *found,
                                bool *stale)
{
	sqlite_filter_view view;
	uint64_t maybe = 0;
	int nmaybe = sqlite_filter_check_built(s->filter, keys, netlens, nkeys, built, &maybe, &view);
	conn *c;
	store_status rc;

	if (nmaybe == 0) {
		atomic_fetch_add_explicit(&s->filter_answers, 1, memory_order_relaxed);
		return STORE_NOTFOUND;
	}
	c = acquire(s, FOR_READ, "lookup");
	if (!c)
		return STORE_ERROR;
	if (step_done(c->stmt[ST_BEGIN_READ]) < 0)
		rc = db_error(s, c, "lookup: begin");
	else if (refresh_mask(c) < 0)
		rc = db_error(s, c, "lookup: network lengths");
	else
		rc = probe_built(s, c, keys, netlens, nkeys, built, filter_skip(s, nmaybe, maybe, &view), now,
		                 found, stale);
	/* A read transaction: COMMIT only ends it. */
	if (!sqlite3_get_autocommit(c->db) && step_done(c->stmt[ST_COMMIT]) < 0) {
		if (rc != STORE_ERROR)
			rc = db_error(s, c, "lookup: end");
		step_done(c->stmt[ST_ROLLBACK]);
	}
	release(s, c, FOR_READ);
	return rc;
}

static store_status sqlite_lookup_netlens(store_backend_impl *s, const char *const *keys,
                                          const int16_t *netlens, size_t nkeys, int64_t now,
                                          store_entry *found)
{
	bool stale = false;

	return lookup_keys(s, keys, netlens, nkeys, NULL, now, found, &stale);
}

static store_status sqlite_lookup_built(store_backend_impl *s, const char *const *keys,
                                        const int16_t *netlens, size_t nkeys, const store_netmask *built,
                                        int64_t now, store_entry *found, bool *stale)
{
	return lookup_keys(s, keys, netlens, nkeys, built, now, found, stale);
}

static uint64_t sqlite_filter_answers(store_backend_impl *s)
{
	return atomic_load_explicit(&s->filter_answers, memory_order_relaxed);
}

static bool sqlite_netlens(store_backend_impl *s, store_netmask *out)
{
	return s->filter && sqlite_filter_lens(s->filter, out);
}

static store_status sqlite_lookup(store_backend_impl *s, const char *const *keys, size_t nkeys, int64_t now,
                                  store_entry *found)
{
	return sqlite_lookup_netlens(s, keys, NULL, nkeys, now, found);
}

static int record_one(conn *c, const char *key, const store_hit *hit, bool *created)
{
	int rc;

	sqlite3_stmt *stmt = c->stmt[ST_RECORD];

	sqlite3_bind_text(stmt, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, hit->now);
	sqlite3_bind_int64(stmt, 3, hit->now + hit->ttl);
	bind_field(stmt, 4, hit->trap, STORE_FIELD_CAP(trap));
	bind_field(stmt, 5, hit->sender, STORE_FIELD_CAP(sender));
	bind_field(stmt, 6, hit->recipient, STORE_FIELD_CAP(recipient));
	bind_field(stmt, 7, hit->client, STORE_FIELD_CAP(client));
	bind_field(stmt, 8, hit->helo, STORE_FIELD_CAP(helo));
	bind_field(stmt, 9, hit->queue_id, STORE_FIELD_CAP(queue_id));
	bind_field(stmt, 10, store_hit_reason(hit), STORE_FIELD_CAP(reason));
	if ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		*created = sqlite3_column_int(stmt, 0) != 0;
		rc = sqlite3_step(stmt);
	}
	done(stmt);
	return rc == SQLITE_DONE ? 0 : -1;
}

/*
 * One write turn and transaction around fn(c, ctx): BEGIN, fn, COMMIT, or
 * ROLLBACK when anything failed; "what" names it in error messages. The
 * absent-key filter hears of it: keys[] are the blocklist keys the
 * transaction may have created (none for sets, records and buckets, which
 * leave the filter valid).
 */
static store_status write_txn(store_backend_impl *s, const char *what, int (*fn)(conn *c, void *ctx),
                              void *ctx, const char *const *keys, size_t nkeys)
{
	conn *c = acquire(s, FOR_WRITE, what);
	store_status rc = STORE_OK;
	sqlite_filter_write fw;
	sqlite3_int64 changes;
	char step[64];

	if (!c)
		return STORE_ERROR;
	if (step_done(c->stmt[ST_BEGIN]) < 0) {
		snprintf(step, sizeof(step), "%s: begin", what);
		rc = db_error(s, c, step);
		goto out;
	}
	sqlite_filter_write_begin(s->filter, &fw);
	changes = sqlite3_total_changes64(c->db);
	if (fn(c, ctx) < 0)
		rc = db_error(s, c, what);
	if (rc == STORE_OK && step_done(c->stmt[ST_COMMIT]) < 0) {
		snprintf(step, sizeof(step), "%s: commit", what);
		rc = db_error(s, c, step);
	}
	if (rc != STORE_OK && !sqlite3_get_autocommit(c->db))
		step_done(c->stmt[ST_ROLLBACK]);
	/* Committed, and with rows changed: a commit that changed nothing writes nothing to the log. */
	sqlite_filter_write_end(s->filter, &fw, rc == STORE_OK && sqlite3_total_changes64(c->db) > changes,
	                        keys, nkeys);
out:
	wrote(c);
	release(s, c, FOR_WRITE);
	return rc;
}

typedef struct record_args {
	const char *const *keys;
	size_t nkeys;
	const store_hit *hit;
	bool *created;
} record_args;

static int record_all(conn *c, void *ctx)
{
	const record_args *a = ctx;
	bool scratch;

	for (size_t i = 0; i < a->nkeys; i++)
		if (record_one(c, a->keys[i], a->hit, a->created ? &a->created[i] : &scratch) < 0)
			return -1;
	return 0;
}

static store_status sqlite_record(store_backend_impl *s, const char *const *keys, size_t nkeys,
                                  const store_hit *hit, bool *created)
{
	record_args a = {keys, nkeys, hit, created};

	return write_txn(s, "record", record_all, &a, keys, nkeys);
}

/* --- capped tables -------------------------------------------------------- */

static int count_rows(conn *c, int stmt, int64_t *rows)
{
	sqlite3_stmt *count = c->stmt[stmt];
	int step = sqlite3_step(count);

	if (step == SQLITE_ROW)
		*rows = sqlite3_column_int64(count, 0);
	done(count);
	return step == SQLITE_ROW ? 0 : -1;
}

/*
 * Inside a write transaction that would add a row: the table's rows by
 * the estimate, counted (with statement stmt) when unknown, and again when
 * at the cap and the last count is older than CAP_RECOUNT_MS.
 */
static int cap_rows(row_cap *cap, conn *c, int stmt, uint64_t max, int64_t *rows)
{
	*rows = atomic_load(&cap->rows);
	if (*rows >= 0 &&
	    ((uint64_t)*rows < max || now_ms() - atomic_load(&cap->counted_at) < CAP_RECOUNT_MS))
		return 0;
	if (count_rows(c, stmt, rows) < 0)
		return -1;
	atomic_store(&cap->rows, *rows);
	atomic_store(&cap->counted_at, now_ms());
	return 0;
}

/*
 * Up to max rows that pick (a SELECT of two key columns, bound already,
 * or bound with now when now >= 0) names, one at a time, each deleted with
 * drop (the same two columns): the index walks of pick, no temporary
 * table. *deleted: how many went. Picked, copied, then deleted, so that no
 * row is deleted under a running SELECT.
 */
static int delete_picked(conn *c, int pick, int drop, int64_t now, int max, int64_t *deleted)
{
	sqlite3_stmt *sel = c->stmt[pick], *del = c->stmt[drop];
	char a[STORE_KEY_MAX], b[STORE_KEY_MAX];
	int step;

	*deleted = 0;
	for (int i = 0; i < max; i++) {
		if (now >= 0)
			sqlite3_bind_int64(sel, 1, now);
		step = sqlite3_step(sel);
		if (step == SQLITE_ROW) {
			snprintf(a, sizeof(a), "%s", (const char *)sqlite3_column_text(sel, 0));
			snprintf(b, sizeof(b), "%s", (const char *)sqlite3_column_text(sel, 1));
		}
		done(sel);
		if (step == SQLITE_DONE)
			return 0;
		if (step != SQLITE_ROW)
			return -1;
		sqlite3_bind_text(del, 1, a, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(del, 2, b, -1, SQLITE_TRANSIENT);
		if (step_done(del) < 0)
			return -1;
		*deleted += sqlite3_changes(c->db);
	}
	return 0;
}

/* The estimate after n rows came (n > 0) or went (n < 0); an unknown one stays unknown. */
static void cap_add(row_cap *cap, int64_t n)
{
	int64_t rows = atomic_load(&cap->rows);

	while (rows >= 0 && !atomic_compare_exchange_weak(&cap->rows, &rows, rows + n > 0 ? rows + n : 0))
		;
}

/* --- distinct sets ---------------------------------------------------------- */

typedef struct distinct_args {
	store_backend_impl *s;
	const char *set, *member;
	int64_t now, window;
	uint64_t limit, max_rows;
	uint64_t *count;
	bool *capped;
} distinct_args;

/*
 * Room for one more member under max_rows? At the cap the expired members
 * of every set go first (CAP_EVICT_MAX at most); live members are never dropped for a
 * new one: each is evidence against its account, and dropping them would
 * let a flood of new keys reopen a tripped account.
 */
static int distinct_room(const distinct_args *a, conn *c, bool *room)
{
	int64_t rows, gone;

	*room = true;
	if (a->max_rows == 0)
		return 0;
	if (cap_rows(&a->s->distinct_cap, c, ST_DS_ROWS, a->max_rows, &rows) < 0)
		return -1;
	if ((uint64_t)rows < a->max_rows)
		return 0;
	if (delete_picked(c, ST_DS_OLDEST, ST_DS_DELETE, a->now, CAP_EVICT_MAX, &gone) < 0)
		return -1;
	cap_add(&a->s->distinct_cap, -gone);
	*room = (uint64_t)(rows - gone) < a->max_rows;
	return 0;
}

/*
 * Inside the write transaction: drop the set's expired members, count the
 * live ones and see whether member is one, then add or refresh it unless
 * it is new and the set is full, or the table is (max_rows).
 */
static int distinct_all(conn *c, void *ctx)
{
	distinct_args *a = ctx;
	sqlite3_stmt *drop = c->stmt[ST_DS_DROP], *live = c->stmt[ST_DS_COUNT], *add = c->stmt[ST_DS_ADD];
	uint64_t n = 0;
	bool known = false, room;
	int step;

	sqlite3_bind_text(drop, 1, a->set, -1, SQLITE_STATIC);
	sqlite3_bind_int64(drop, 2, a->now);
	if (step_done(drop) < 0)
		return -1;
	cap_add(&a->s->distinct_cap, -(int64_t)sqlite3_changes(c->db));
	sqlite3_bind_text(live, 1, a->set, -1, SQLITE_STATIC);
	sqlite3_bind_text(live, 2, a->member, -1, SQLITE_STATIC);
	step = sqlite3_step(live);
	if (step == SQLITE_ROW) {
		n = (uint64_t)sqlite3_column_int64(live, 0);
		known = sqlite3_column_int(live, 1) != 0;
	}
	done(live);
	if (step != SQLITE_ROW)
		return -1;
	*a->count = known ? n : n + 1;
	if (!known && a->limit && n >= a->limit)
		return 0;
	if (!known) {
		if (distinct_room(a, c, &room) < 0)
			return -1;
		if (!room) {
			*a->count = n;
			*a->capped = true;
			return 0;
		}
	}
	sqlite3_bind_text(add, 1, a->set, -1, SQLITE_STATIC);
	sqlite3_bind_text(add, 2, a->member, -1, SQLITE_STATIC);
	sqlite3_bind_int64(add, 3, a->now + a->window);
	if (step_done(add) < 0)
		return -1;
	if (!known)
		cap_add(&a->s->distinct_cap, 1);
	return 0;
}

/*
 * A member seen again soon after its last refresh (its expiry within
 * STORE_DISTINCT_SLACK of the new one) needs no write: answered from a
 * read connection, no write turn, no commit. Most of the relay check's
 * adds are such (an account's usual networks); each write costs a WAL
 * commit. False: not so, or not known (the write path then decides).
 */
static bool distinct_fresh(store_backend_impl *s, const char *set, const char *member, int64_t now,
                           int64_t window, uint64_t *count)
{
	conn *c = acquire(s, FOR_READ, "distinct");
	sqlite3_stmt *stmt;
	bool fresh = false;

	if (!c)
		return false;
	stmt = c->stmt[ST_DS_FRESH];
	sqlite3_bind_text(stmt, 1, set, -1, SQLITE_STATIC);
	sqlite3_bind_text(stmt, 2, member, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 3, now);
	if (sqlite3_step(stmt) == SQLITE_ROW &&
	    sqlite3_column_int64(stmt, 1) >= now + window - STORE_DISTINCT_SLACK(window)) {
		*count = (uint64_t)sqlite3_column_int64(stmt, 0);
		fresh = true;
	}
	done(stmt);
	release(s, c, FOR_READ);
	return fresh;
}

static store_status distinct_add_file(store_backend_impl *s, const char *set, const char *member, int64_t now,
                                      int64_t window, uint64_t limit, uint64_t max_rows, uint64_t *count,
                                      bool *capped)
{
	distinct_args a = {s, set, member, now, window, limit, max_rows, count, capped};
	store_status rc;

	if (now == STORE_NOW_SERVER)
		a.now = now = (int64_t)time(NULL);
	*capped = false;
	if (distinct_fresh(s, set, member, now, window, count))
		return STORE_OK;
	rc = write_txn(s, "distinct", distinct_all, &a, NULL, 0);
	/* Rolled back: what the estimate was told did not happen. */
	if (rc != STORE_OK)
		atomic_store(&s->distinct_cap.rows, -1);
	return rc;
}

static store_status distinct_peek_file(store_backend_impl *s, const char *set, const char *member,
                                       int64_t now, uint64_t *count, bool *present)
{
	conn *c = acquire(s, FOR_READ, "distinct peek");
	sqlite3_stmt *stmt;
	store_status rc = STORE_OK;

	if (!c)
		return STORE_ERROR;
	if (now == STORE_NOW_SERVER)
		now = (int64_t)time(NULL);
	stmt = c->stmt[ST_DS_PEEK];
	sqlite3_bind_text(stmt, 1, set, -1, SQLITE_STATIC);
	sqlite3_bind_text(stmt, 2, member, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 3, now);
	if (sqlite3_step(stmt) == SQLITE_ROW) {
		*count = (uint64_t)sqlite3_column_int64(stmt, 0);
		*present = sqlite3_column_int(stmt, 1) != 0;
	} else {
		rc = db_error(s, c, "distinct peek");
	}
	done(stmt);
	release(s, c, FOR_READ);
	return rc;
}

static store_status distinct_list_file(store_backend_impl *s, const char *set, int64_t now,
                                       store_distinct_visit_fn fn, void *ctx)
{
	conn *c = acquire(s, FOR_READ, "distinct list");
	sqlite3_stmt *stmt;
	store_status rc = STORE_OK;
	int step;

	if (!c)
		return STORE_ERROR;
	stmt = c->stmt[ST_DS_LIST];
	sqlite3_bind_text(stmt, 1, set, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, now);
	while ((step = sqlite3_step(stmt)) == SQLITE_ROW)
		if (fn((const char *)sqlite3_column_text(stmt, 0), sqlite3_column_int64(stmt, 1), ctx) != 0)
			break;
	if (step != SQLITE_ROW && step != SQLITE_DONE)
		rc = db_error(s, c, "distinct list");
	done(stmt);
	release(s, c, FOR_READ);
	return rc;
}

/* Inside the write transaction: read the live record, then do the op. */
static int kv_step(conn *c, query *q)
{
	sqlite3_stmt *get = c->stmt[ST_KV_GET], *w;
	int64_t now = q->u.kv.now_ms;
	int step;

	sqlite3_bind_text(get, 1, q->u.kv.ns, -1, SQLITE_STATIC);
	sqlite3_bind_text(get, 2, q->u.kv.key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(get, 3, now);
	step = sqlite3_step(get);
	if (step == SQLITE_ROW) {
		const char *v = (const char *)sqlite3_column_text(get, 0);

		q->u.kv.found = true;
		store_field_copy(q->u.kv.old, sizeof(q->u.kv.old), v,
		                 store_field_len(v, sizeof(q->u.kv.old)));
		q->u.kv.expires_ms = sqlite3_column_int64(get, 1);
	}
	done(get);
	if (step != SQLITE_ROW && step != SQLITE_DONE)
		return -1;
	switch (q->u.kv.op) {
	case QUERY_KV_GET:
		return 0;
	case QUERY_KV_PUT_NEW:
		if (q->u.kv.found)
			return 0;
		/* fall through */
	case QUERY_KV_PUT:
		w = c->stmt[ST_KV_PUT];
		sqlite3_bind_text(w, 1, q->u.kv.ns, -1, SQLITE_STATIC);
		sqlite3_bind_text(w, 2, q->u.kv.key, -1, SQLITE_STATIC);
		sqlite3_bind_text(w, 3, q->u.kv.value, -1, SQLITE_STATIC);
		sqlite3_bind_int64(w, 4, now);
		sqlite3_bind_int64(w, 5, now + q->u.kv.ttl_ms);
		return step_done(w);
	case QUERY_KV_DELETE:
		w = c->stmt[ST_KV_DELETE];
		sqlite3_bind_text(w, 1, q->u.kv.ns, -1, SQLITE_STATIC);
		sqlite3_bind_text(w, 2, q->u.kv.key, -1, SQLITE_STATIC);
		return step_done(w);
	}
	return -1;
}

/* The bucket's row: *found and its TAT (0 without a row); -1 on a database error. */
static int counter_row(conn *c, const query *q, bool *found, int64_t *tat)
{
	sqlite3_stmt *get = c->stmt[ST_CTR_GET];
	int step;

	*tat = 0;
	sqlite3_bind_text(get, 1, q->u.counter.ns, -1, SQLITE_STATIC);
	sqlite3_bind_text(get, 2, q->u.counter.key, -1, SQLITE_STATIC);
	step = sqlite3_step(get);
	*found = step == SQLITE_ROW;
	if (step == SQLITE_ROW)
		*tat = sqlite3_column_int64(get, 0);
	done(get);
	return step == SQLITE_ROW || step == SQLITE_DONE ? 0 : -1;
}

/*
 * GCRA: the theoretical arrival time (TAT) of the next unit; cost units
 * are allowed while they leave the TAT at most burst emission intervals
 * ahead of now. *found: the bucket has a row (expired or not); *next:
 * its TAT once charged.
 */
static int counter_read(conn *c, query *q, bool *found, int64_t *next)
{
	int64_t tat;

	if (counter_row(c, q, found, &tat) < 0)
		return -1;
	sqlite_hot_gcra(q, *found, tat, next);
	return 0;
}

/*
 * Room for a new bucket under max_rows: at the cap the buckets with the
 * earliest TAT go, as many as take the table back under it (CAP_EVICT_MAX at
 * most). Expired ones come first and lose nothing; after them, the ones
 * nearest to full again lose the least. A tripped bucket's TAT is the
 * latest of its rule, so a flood of new keys must create max_rows newer
 * buckets within its remaining life to drop it.
 */
static int counter_room(store_backend_impl *s, conn *c, uint64_t max)
{
	int64_t rows, n, gone;

	if (max == 0)
		return 0;
	if (cap_rows(&s->counter_cap, c, ST_CTR_ROWS, max, &rows) < 0)
		return -1;
	if ((uint64_t)rows < max)
		return 0;
	n = rows - (int64_t)max + 1;
	if (delete_picked(c, ST_CTR_EVICT, ST_CTR_DELETE, -1, n < CAP_EVICT_MAX ? (int)n : CAP_EVICT_MAX,
	                  &gone) < 0)
		return -1;
	cap_add(&s->counter_cap, -gone);
	return 0;
}

typedef struct counter_args {
	store_backend_impl *s;
	query *q;
} counter_args;

/* Inside the write transaction: read the bucket, then charge it if allowed. */
static int counter_all(conn *c, void *ctx)
{
	counter_args *a = ctx;
	query *q = a->q;
	sqlite3_stmt *put = c->stmt[ST_CTR_PUT];
	int64_t next;
	bool found;

	if (counter_read(c, q, &found, &next) < 0)
		return -1;
	if (!q->u.counter.allowed || q->u.counter.cost == 0)
		return 0;
	if (!found && counter_room(a->s, c, q->u.counter.max_rows) < 0)
		return -1;
	sqlite3_bind_text(put, 1, q->u.counter.ns, -1, SQLITE_STATIC);
	sqlite3_bind_text(put, 2, q->u.counter.key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(put, 3, next);
	if (step_done(put) < 0)
		return -1;
	if (!found)
		cap_add(&a->s->counter_cap, 1);
	return 0;
}

/* A read (the relay check's trip marker, at every recipient): no write turn, no commit. */
static store_status kv_get_file(store_backend_impl *s, query *q)
{
	conn *c;
	store_status rc = STORE_OK;

	if (!(c = acquire(s, FOR_READ, "kv")))
		return STORE_ERROR;
	if (kv_step(c, q) < 0)
		rc = db_error(s, c, "kv");
	release(s, c, FOR_READ);
	return rc;
}

/* A peek (cost 0) only reads: a read connection, no write turn, no transaction to commit. */
static store_status counter_peek(store_backend_impl *s, query *q)
{
	conn *c = acquire(s, FOR_READ, "counter peek");
	store_status rc = STORE_OK;
	int64_t next;
	bool found;

	if (!c)
		return STORE_ERROR;
	if (counter_read(c, q, &found, &next) < 0)
		rc = db_error(s, c, "counter peek");
	release(s, c, FOR_READ);
	return rc;
}

static store_status counter_file(store_backend_impl *s, query *q)
{
	counter_args a = {s, q};
	store_status rc;

	if (q->u.counter.cost == 0)
		return counter_peek(s, q);
	rc = write_txn(s, "counter", counter_all, &a, NULL, 0);
	if (rc != STORE_OK)
		atomic_store(&s->counter_cap.rows, -1);
	return rc;
}

/* --- the greylist -------------------------------------------------------- */

static store_status run_write(store_backend_impl *s, conn *c, sqlite3_stmt *stmt, const char *what,
                              uint64_t *changes);
static store_status purge_chunks(store_backend_impl *s, int stmt, int64_t now, uint64_t *purged);

/* A client's record by key: 1 found (count, last, expires in v), 0 none, -1 error. */
static int awl_read(conn *c, const char *key, int64_t v[3])
{
	sqlite3_stmt *get = c->stmt[ST_AWL_GET];
	int step;

	sqlite3_bind_text(get, 1, key, -1, SQLITE_STATIC);
	step = sqlite3_step(get);
	if (step == SQLITE_ROW)
		for (int i = 0; i < 3; i++)
			v[i] = sqlite3_column_int64(get, i);
	done(get);
	return step == SQLITE_ROW ? 1 : step == SQLITE_DONE ? 0 : -1;
}

/* Create or replace a client's record. */
static int awl_write(conn *c, const char *key, int64_t count, int64_t last, int64_t expires)
{
	sqlite3_stmt *put = c->stmt[ST_AWL_PUT];

	sqlite3_bind_text(put, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(put, 2, count);
	sqlite3_bind_int64(put, 3, last);
	sqlite3_bind_int64(put, 4, expires);
	return step_done(put);
}

static sqlite3_int64 grey_hash(const char *key)
{
	return (sqlite3_int64)hash_fnv1a(HASH_FNV1A_INIT, key, strlen(key));
}

/* A triplet's row, whatever its expiry, and how full its hash's bucket is. */
typedef struct grey_row {
	bool found;
	sqlite3_int64 rowid;
	int64_t first_ms, last_ms, expires_ms;
	int bucket; /* rows under the key's hash (at most GREY_BUCKET_MAX are read) */
} grey_row;

/* Read the bucket of key's hash and find the key in it; -1 on error. */
static int grey_find(conn *c, const char *key, grey_row *r)
{
	sqlite3_stmt *get = c->stmt[ST_GREY_GET];
	int step;

	memset(r, 0, sizeof(*r));
	sqlite3_bind_int64(get, 1, grey_hash(key));
	while ((step = sqlite3_step(get)) == SQLITE_ROW) {
		const char *k = (const char *)sqlite3_column_text(get, 1);

		r->bucket++;
		if (r->found || !k || strcmp(k, key) != 0)
			continue;
		r->found = true;
		r->rowid = sqlite3_column_int64(get, 0);
		r->first_ms = sqlite3_column_int64(get, 2);
		r->last_ms = sqlite3_column_int64(get, 3);
		r->expires_ms = sqlite3_column_int64(get, 4);
	}
	done(get);
	return step == SQLITE_DONE ? 0 : -1;
}

/* Write the step's triplet: its row updated, or a new row. */
static int grey_write(conn *c, const char *key, const grey_row *r, const greystep_out *out)
{
	sqlite3_stmt *w = c->stmt[r->found ? ST_GREY_UPDATE : ST_GREY_INSERT];
	int i = 1;

	if (r->found) {
		sqlite3_bind_int64(w, i++, r->rowid);
	} else {
		sqlite3_bind_int64(w, i++, grey_hash(key));
		sqlite3_bind_text(w, i++, key, -1, SQLITE_STATIC);
	}
	sqlite3_bind_int64(w, i++, out->triplet.first_ms);
	sqlite3_bind_int64(w, i++, out->triplet.last_ms);
	sqlite3_bind_int64(w, i, out->triplet_expires_ms);
	return step_done(w);
}

static int grey_count(conn *c, int64_t *rows)
{
	sqlite3_stmt *count = c->stmt[ST_GREY_COUNT];
	int step = sqlite3_step(count);

	if (step == SQLITE_ROW)
		*rows = sqlite3_column_int64(count, 0);
	done(count);
	return step == SQLITE_ROW ? 0 : -1;
}

/*
 * Holds the table max triplets or more, by the estimate? Counted when it
 * was not yet, and again when it says full and the last count is old.
 */
static int grey_full(store_backend_impl *s, conn *c, uint64_t max, bool *full)
{
	int64_t rows = atomic_load(&s->grey_rows);

	*full = false;
	if (max == 0)
		return 0;
	if (rows < 0 ||
	    ((uint64_t)rows >= max && (atomic_load(&s->grey_capped) >= GREY_RECOUNT_CALLS ||
	                               now_ms() - atomic_load(&s->grey_counted_at) >= GREY_RECOUNT_MS))) {
		if (grey_count(c, &rows) < 0)
			return -1;
		atomic_store(&s->grey_rows, rows);
		atomic_store(&s->grey_counted_at, now_ms());
		atomic_store(&s->grey_capped, 0);
	}
	*full = (uint64_t)rows >= max;
	if (*full)
		atomic_fetch_add(&s->grey_capped, 1);
	return 0;
}

typedef struct grey_args {
	store_backend_impl *s;
	query *q;
	bool inserted; /* a triplet row was added */
} grey_args;

/* The answer of a triplet not recorded (max_triplets, a full bucket): it passes. */
static void grey_capped(query *q)
{
	memset(&q->u.grey.answer, 0, sizeof(q->u.grey.answer));
	q->u.grey.answer.result = GREYSTEP_PASS;
	q->u.grey.capped = true;
}

/* What greystep_run says, written back; a triplet that would add a row past a limit passes unrecorded. */
static int grey_apply(grey_args *a, conn *c, const grey_row *row)
{
	query *q = a->q;
	const greystep_out *out = &q->u.grey.answer;
	bool full = false;

	if (out->write_triplet && !row->found) {
		if (row->bucket < GREY_BUCKET_MAX && grey_full(a->s, c, q->u.grey.max_triplets, &full) < 0)
			return -1;
		if (row->bucket >= GREY_BUCKET_MAX || full) {
			grey_capped(q);
			return 0;
		}
	}
	if (out->write_triplet && grey_write(c, q->u.grey.triplet, row, out) < 0)
		return -1;
	if (out->write_triplet && !row->found) {
		a->inserted = true;
		if (atomic_load(&a->s->grey_rows) >= 0)
			atomic_fetch_add(&a->s->grey_rows, 1);
	}
	if (out->write_awl && q->u.grey.awl &&
	    awl_write(c, q->u.grey.awl, (int64_t)out->awl.count, out->awl.last_ms, out->awl_expires_ms) < 0)
		return -1;
	return 0;
}

/* Inside the write transaction: the rows live at now (an expired row reads as none), the step, its writes. */
static int grey_step(conn *c, void *ctx)
{
	grey_args *a = ctx;
	query *q = a->q;
	int64_t now = q->u.grey.now_ms, w[3];
	greystep_triplet trip = {.present = false};
	greystep_awl awl = {.present = false};
	grey_row row;
	int had_awl = 0;

	if (grey_find(c, q->u.grey.triplet, &row) < 0)
		return -1;
	if (row.found && row.expires_ms > now)
		trip = (greystep_triplet){.present = true, .first_ms = row.first_ms, .last_ms = row.last_ms};
	if (q->u.grey.awl && (had_awl = awl_read(c, q->u.grey.awl, w)) < 0)
		return -1;
	if (had_awl && w[2] > now)
		awl = (greystep_awl){.present = true, .count = (uint64_t)w[0], .last_ms = w[1]};
	greystep_run(&q->u.grey.params, &trip, q->u.grey.awl ? &awl : NULL, now, &q->u.grey.answer);
	return grey_apply(a, c, &row);
}

static store_status sqlite_greylist(store_backend_impl *s, query *q)
{
	grey_args a = {s, q, false};
	store_status rc = write_txn(s, "greylist", grey_step, &a, NULL, 0);

	/* Rolled back: the row counted is not there. */
	if (rc != STORE_OK && a.inserted && atomic_load(&s->grey_rows) > 0)
		atomic_fetch_sub(&s->grey_rows, 1);
	return rc;
}

static store_status sqlite_grey_get(store_backend_impl *s, store_grey_kind kind, const char *key,
                                    store_grey_record *out)
{
	conn *c = acquire(s, FOR_READ, "greylist get");
	grey_row row = {.found = false};
	int64_t v[3];
	int rc;

	if (!c)
		return STORE_ERROR;
	if (kind == STORE_GREY_TRIPLET) {
		rc = grey_find(c, key, &row);
		v[0] = row.first_ms, v[1] = row.last_ms, v[2] = row.expires_ms;
	} else {
		rc = awl_read(c, key, v);
		row.found = rc > 0;
	}
	if (rc < 0) {
		store_status err = db_error(s, c, "greylist get");

		release(s, c, FOR_READ);
		return err;
	}
	release(s, c, FOR_READ);
	if (!row.found)
		return STORE_NOTFOUND;
	out->kind = kind;
	snprintf(out->key, sizeof(out->key), "%s", key);
	if (kind == STORE_GREY_TRIPLET)
		out->first_ms = v[0];
	else
		out->count = (uint64_t)v[0];
	out->last_ms = v[1];
	out->expires_ms = v[2];
	return STORE_OK;
}

static store_status sqlite_grey_remove(store_backend_impl *s, store_grey_kind kind, const char *key)
{
	conn *c = acquire(s, FOR_WRITE, "greylist remove");
	int stmt = kind == STORE_GREY_TRIPLET ? ST_GREY_DELETE : ST_AWL_DELETE;
	uint64_t changes = 0;
	store_status rc;

	if (!c)
		return STORE_ERROR;
	if (kind == STORE_GREY_TRIPLET) {
		sqlite3_bind_int64(c->stmt[stmt], 1, grey_hash(key));
		sqlite3_bind_text(c->stmt[stmt], 2, key, -1, SQLITE_STATIC);
	} else {
		sqlite3_bind_text(c->stmt[stmt], 1, key, -1, SQLITE_STATIC);
	}
	rc = run_write(s, c, c->stmt[stmt], "greylist remove", &changes);
	if (rc == STORE_OK && changes && kind == STORE_GREY_TRIPLET && atomic_load(&s->grey_rows) > 0)
		atomic_fetch_sub(&s->grey_rows, 1);
	return rc == STORE_OK && changes == 0 ? STORE_NOTFOUND : rc;
}

static store_status sqlite_grey_awl_put(store_backend_impl *s, const store_grey_record *r)
{
	conn *c = acquire(s, FOR_WRITE, "greylist whitelist");
	store_status rc = STORE_OK;

	if (!c)
		return STORE_ERROR;
	if (awl_write(c, r->key, (int64_t)r->count, r->last_ms, r->expires_ms) < 0)
		rc = db_error(s, c, "greylist whitelist");
	wrote(c);
	release(s, c, FOR_WRITE);
	return rc;
}

/* The live rows of one table (ST_GREY_FOREACH, ST_AWL_FOREACH); 1 when the visitor stopped. */
static int grey_visit(conn *c, store_grey_kind kind, int64_t now_ms, store_grey_visit_fn fn, void *ctx,
                      store_grey_record *r)
{
	sqlite3_stmt *stmt = c->stmt[kind == STORE_GREY_TRIPLET ? ST_GREY_FOREACH : ST_AWL_FOREACH];
	int step, stop = 0;

	sqlite3_bind_int64(stmt, 1, now_ms);
	while (!stop && (step = sqlite3_step(stmt)) == SQLITE_ROW) {
		memset(r, 0, sizeof(*r));
		r->kind = kind;
		column_copy(stmt, 0, r->key, sizeof(r->key));
		if (kind == STORE_GREY_TRIPLET)
			r->first_ms = sqlite3_column_int64(stmt, 1);
		else
			r->count = (uint64_t)sqlite3_column_int64(stmt, 1);
		r->last_ms = sqlite3_column_int64(stmt, 2);
		r->expires_ms = sqlite3_column_int64(stmt, 3);
		stop = fn(r, ctx) != 0;
	}
	done(stmt);
	return stop ? 1 : step == SQLITE_DONE ? 0 : -1;
}

static store_status sqlite_grey_foreach(store_backend_impl *s, int64_t now_ms, store_grey_visit_fn fn,
                                        void *ctx)
{
	store_grey_record *r = malloc(sizeof(*r));
	store_status rc = STORE_OK;
	conn *c;
	int v;

	if (!r)
		return store_set_error("sqlite %s: greylist list: out of memory", s->path);
	if (!(c = acquire(s, FOR_READ, "greylist list"))) {
		free(r);
		return STORE_ERROR;
	}
	v = grey_visit(c, STORE_GREY_TRIPLET, now_ms, fn, ctx, r);
	if (v == 0)
		v = grey_visit(c, STORE_GREY_AWL, now_ms, fn, ctx, r);
	if (v < 0)
		rc = db_error(s, c, "greylist list");
	release(s, c, FOR_READ);
	free(r);
	return rc;
}

/* Expired triplets and clients in chunks, each its own write turn; then the triplets counted afresh. */
static store_status sqlite_grey_purge(store_backend_impl *s, int64_t now, uint64_t *purged)
{
	store_status rc = purge_chunks(s, ST_GREY_PURGE, now, purged);
	int64_t rows = 0;
	conn *c;

	if (rc == STORE_OK)
		rc = purge_chunks(s, ST_AWL_PURGE, now, purged);
	if (rc != STORE_OK || !(c = acquire(s, FOR_READ, "greylist purge")))
		return STORE_ERROR;
	if (grey_count(c, &rows) < 0)
		rc = db_error(s, c, "greylist purge: count");
	else
		atomic_store(&s->grey_rows, rows);
	atomic_store(&s->grey_counted_at, now_ms());
	atomic_store(&s->grey_capped, 0);
	release(s, c, FOR_READ);
	return rc;
}

static store_status sqlite_get(store_backend_impl *s, const char *key, store_entry *out)
{
	conn *c = acquire(s, FOR_READ, "get");
	sqlite3_stmt *stmt;
	store_status rc = STORE_NOTFOUND;
	int step;

	if (!c)
		return STORE_ERROR;
	stmt = c->stmt[ST_GET];
	sqlite3_bind_text(stmt, 1, key, -1, SQLITE_STATIC);
	step = sqlite3_step(stmt);
	if (step == SQLITE_ROW) {
		row_to_entry(stmt, out);
		rc = STORE_OK;
	} else if (step != SQLITE_DONE) {
		rc = db_error(s, c, "get");
	}
	done(stmt);
	release(s, c, FOR_READ);
	return rc;
}

/* Every column of e, for ST_PUT. */
static void bind_entry(sqlite3_stmt *stmt, const store_entry *e)
{
	bind_field(stmt, 1, e->key, sizeof(e->key));
	sqlite3_bind_int64(stmt, 2, e->first_seen);
	sqlite3_bind_int64(stmt, 3, e->last_seen);
	sqlite3_bind_int64(stmt, 4, e->expires);
	sqlite3_bind_int64(stmt, 5, (int64_t)e->hits);
	bind_field(stmt, 6, e->trap, sizeof(e->trap));
	bind_field(stmt, 7, e->sender, sizeof(e->sender));
	bind_field(stmt, 8, e->recipient, sizeof(e->recipient));
	bind_field(stmt, 9, e->client, sizeof(e->client));
	bind_field(stmt, 10, e->helo, sizeof(e->helo));
	bind_field(stmt, 11, e->queue_id, sizeof(e->queue_id));
	bind_field(stmt, 12, e->reason, sizeof(e->reason));
}

static store_status sqlite_put(store_backend_impl *s, const store_entry *e)
{
	conn *c = acquire(s, FOR_WRITE, "put");
	sqlite3_stmt *stmt;
	store_status rc = STORE_OK;

	if (!c)
		return STORE_ERROR;
	stmt = c->stmt[ST_PUT];
	bind_entry(stmt, e);
	if (step_done(stmt) < 0)
		rc = db_error(s, c, "put");
	wrote(c);
	release(s, c, FOR_WRITE);
	return rc;
}

/*
 * One write turn and transaction of up to STORE_PUT_BATCH entries, e
 * holding the first; *more is what next() said last (1: e holds the
 * first entry of the next batch, not written yet).
 */
static store_status put_batch(store_backend_impl *s, store_next_fn next, void *ctx, store_entry *e, int *more,
                              uint64_t *written)
{
	conn *c = acquire(s, FOR_WRITE, "import");
	store_status rc = STORE_OK;
	uint64_t n = 0;

	if (!c)
		return STORE_ERROR;
	if (step_done(c->stmt[ST_BEGIN]) < 0)
		rc = db_error(s, c, "import: begin");
	while (rc == STORE_OK && *more > 0 && n < STORE_PUT_BATCH) {
		bind_entry(c->stmt[ST_PUT], e);
		if (step_done(c->stmt[ST_PUT]) < 0) {
			rc = db_error(s, c, "import");
		} else {
			n++;
			*more = next(e, ctx);
		}
	}
	if (rc == STORE_OK && *more < 0)
		rc = STORE_ERROR;
	if (rc == STORE_OK && step_done(c->stmt[ST_COMMIT]) < 0)
		rc = db_error(s, c, "import: commit");
	if (rc != STORE_OK && !sqlite3_get_autocommit(c->db))
		step_done(c->stmt[ST_ROLLBACK]);
	*written += rc == STORE_OK ? n : 0;
	wrote(c);
	release(s, c, FOR_WRITE);
	return rc;
}

/* Large transactions: one write turn each, so that trap hits of a running daemon get theirs in between. */
static store_status sqlite_put_many(store_backend_impl *s, store_next_fn next, void *ctx, uint64_t *written)
{
	store_entry *e = malloc(sizeof(*e));
	store_status rc = STORE_OK;
	int more;

	if (!e)
		return store_set_error("sqlite %s: import: out of memory", s->path);
	more = next(e, ctx);
	while (rc == STORE_OK && more > 0)
		rc = put_batch(s, next, ctx, e, &more, written);
	free(e);
	return rc == STORE_OK && more < 0 ? STORE_ERROR : rc;
}

/* Run a write statement with its bindings set, in its own write turn; *changes gets the rows it touched. */
static store_status run_write(store_backend_impl *s, conn *c, sqlite3_stmt *stmt, const char *what,
                              uint64_t *changes)
{
	store_status rc = STORE_OK;

	if (step_done(stmt) < 0)
		rc = db_error(s, c, what);
	else
		*changes = (uint64_t)sqlite3_changes(c->db);
	wrote(c);
	release(s, c, FOR_WRITE);
	return rc;
}

static store_status sqlite_remove(store_backend_impl *s, const char *key)
{
	conn *c = acquire(s, FOR_WRITE, "remove");
	uint64_t changes = 0;
	store_status rc;

	if (!c)
		return STORE_ERROR;
	sqlite3_bind_text(c->stmt[ST_REMOVE], 1, key, -1, SQLITE_STATIC);
	rc = run_write(s, c, c->stmt[ST_REMOVE], "remove", &changes);
	if (rc == STORE_OK && changes == 0)
		rc = STORE_NOTFOUND;
	return rc;
}

/*
 * PURGE_CHUNK entries a write turn: a purge of a long downtime's entries
 * never holds up a trap hit (this process's or another's) for long.
 */
static store_status purge_chunks(store_backend_impl *s, int stmt, int64_t now, uint64_t *purged)
{
	uint64_t changes = PURGE_CHUNK;
	store_status rc = STORE_OK;

	while (rc == STORE_OK && changes == PURGE_CHUNK) {
		conn *c = acquire(s, FOR_WRITE, "purge");

		if (!c)
			return STORE_ERROR;
		changes = 0;
		sqlite3_bind_int64(c->stmt[stmt], 1, now);
		rc = run_write(s, c, c->stmt[stmt], "purge", &changes);
		*purged += changes;
	}
	return rc;
}

/*
 * The blocklist's expired entries (counted in *purged), then the distinct
 * sets' expired members, the expired records and the full buckets (a
 * bucket whose TAT is past is as good as absent).
 */
static store_status sqlite_purge(store_backend_impl *s, int64_t now, uint64_t *purged)
{
	uint64_t members = 0;
	store_status rc;

	*purged = 0;
	rc = purge_chunks(s, ST_PURGE, now, purged);
	if (rc == STORE_OK)
		rc = purge_chunks(s, ST_DS_PURGE, now, &members);
	/* Records and buckets keep ms. */
	if (rc == STORE_OK)
		rc = purge_chunks(s, ST_KV_PURGE, now * 1000, &members);
	if (rc == STORE_OK)
		rc = purge_chunks(s, ST_CTR_PURGE, now * 1000, &members);
	/* Counted afresh at the next new row of a capped call. */
	atomic_store(&s->distinct_cap.rows, -1);
	atomic_store(&s->counter_cap.rows, -1);
	return rc;
}

static store_status sqlite_foreach(store_backend_impl *s, int64_t now, store_visit_fn fn, void *ctx)
{
	store_entry *e = malloc(sizeof(*e));
	conn *c;
	sqlite3_stmt *stmt;
	store_status rc = STORE_OK;
	int step;

	if (!e)
		return store_set_error("sqlite %s: foreach: out of memory", s->path);
	c = acquire(s, FOR_READ, "foreach");
	if (!c) {
		free(e);
		return STORE_ERROR;
	}
	stmt = c->stmt[ST_FOREACH];
	sqlite3_bind_int64(stmt, 1, now);
	while ((step = sqlite3_step(stmt)) == SQLITE_ROW) {
		row_to_entry(stmt, e);
		if (fn(e, ctx) != 0)
			break;
	}
	if (step != SQLITE_ROW && step != SQLITE_DONE)
		rc = db_error(s, c, "foreach");
	done(stmt);
	release(s, c, FOR_READ);
	free(e);
	return rc;
}

/* --- written behind (sqlite_hot.h) ------------------------------------------ */

/*
 * The stores of this process that write behind. A reload that changes the
 * store's settings opens a new store on the same file before the old one
 * closes: for that time two memories hold the file's entries, a reset must
 * reach both, and the old one's close must not take hot_owner (the same
 * pid) from the new one.
 */
static pthread_mutex_t hot_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static store_backend_impl *hot_registry;

static void hot_register(store_backend_impl *s)
{
	pthread_mutex_lock(&hot_registry_lock);
	s->hot_next = hot_registry;
	hot_registry = s;
	pthread_mutex_unlock(&hot_registry_lock);
}

/* Out of the registry; true when another store of this process still writes behind on the file. */
static bool hot_unregister(store_backend_impl *s)
{
	bool shared = false;

	pthread_mutex_lock(&hot_registry_lock);
	for (store_backend_impl **p = &hot_registry; *p; p = &(*p)->hot_next)
		if (*p == s) {
			*p = s->hot_next;
			break;
		}
	for (store_backend_impl *r = hot_registry; r; r = r->hot_next)
		shared |= strcmp(r->path, s->path) == 0;
	pthread_mutex_unlock(&hot_registry_lock);
	return shared;
}

/* A reset: forgotten by every memory of this process holding the file's entries. */
static void hot_forget_all(store_backend_impl *s, sqlite_hot_kind kind, const char *ns, const char *key)
{
	pthread_mutex_lock(&hot_registry_lock);
	for (store_backend_impl *r = hot_registry; r; r = r->hot_next)
		if (r != s && strcmp(r->path, s->path) == 0)
			sqlite_hot_forget(r->hot, kind, ns, key);
	pthread_mutex_unlock(&hot_registry_lock);
	if (s->hot)
		sqlite_hot_forget(s->hot, kind, ns, key);
}

/* One bucket's TAT or member's expiry as w has it: 1 written, 0 no row to update (put it), -1 failed. */
static int hot_write_one(conn *c, int st, const sqlite_hot_write *w)
{
	sqlite3_stmt *stmt = c->stmt[st];

	sqlite3_bind_text(stmt, 1, w->kind == SQLITE_HOT_COUNTER ? w->ns : w->key, -1, SQLITE_STATIC);
	sqlite3_bind_text(stmt, 2, w->kind == SQLITE_HOT_COUNTER ? w->key : w->member, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 3, w->value);
	if (step_done(stmt) < 0)
		return -1;
	return sqlite3_changes(c->db) > 0;
}

/* Inside a write transaction: the buckets and members b owes the file. */
static int hot_write(store_backend_impl *s, conn *c, const sqlite_hot_batch *b)
{
	for (size_t i = 0; i < b->n; i++) {
		const sqlite_hot_write *w = &b->v[i];
		bool counter = w->kind == SQLITE_HOT_COUNTER;
		int rc;

		/* A row the file has (most: each flush rewrites the buckets charged since the last). */
		if (!w->fresh && (rc = hot_write_one(c, counter ? ST_CTR_SET : ST_DS_REFRESH, w)) != 0) {
			if (rc < 0)
				return -1;
			continue;
		}
		/*
		 * New, or gone from the file meanwhile (a purge): put. A new bucket
		 * makes room under ratelimit.max_buckets as a charge in the file did.
		 */
		if (counter && w->fresh && counter_room(s, c, atomic_load(&s->counter_max_rows)) < 0)
			return -1;
		if (hot_write_one(c, counter ? ST_CTR_PUT : ST_DS_ADD, w) < 0)
			return -1;
		if (w->fresh)
			cap_add(counter ? &s->counter_cap : &s->distinct_cap, 1);
	}
	return 0;
}

static sqlite_hot_kind hot_kind_of(int request)
{
	return request == HOT_REQ_SET  ? SQLITE_HOT_SET
	       : request == HOT_REQ_KV ? SQLITE_HOT_KV
	                               : SQLITE_HOT_COUNTER;
}

/* Drop a bucket (ns, key) or a set (kind HOT_REQ_SET, key) from the file; *changes: rows gone. */
static int hot_delete(store_backend_impl *s, conn *c, int kind, const char *ns, const char *key,
                      int64_t *changes)
{
	if (kind == HOT_REQ_KV)
		return 0; /* the record was written (and deleted) by the asking process */
	sqlite3_stmt *del = c->stmt[kind == HOT_REQ_SET ? ST_DS_CLEAR : ST_CTR_DELETE];

	sqlite3_bind_text(del, 1, kind == HOT_REQ_SET ? key : ns, -1, SQLITE_STATIC);
	if (kind != HOT_REQ_SET)
		sqlite3_bind_text(del, 2, key, -1, SQLITE_STATIC);
	if (step_done(del) < 0)
		return -1;
	*changes = sqlite3_changes(c->db);
	cap_add(kind == HOT_REQ_SET ? &s->distinct_cap : &s->counter_cap, -*changes);
	return 0;
}

/*
 * Inside the flush's transaction, after its writes: what other processes
 * asked (hot_requests). A reset drops the entry from memory and its rows
 * again, after the writes, so that nothing this flush wrote outlives it.
 */
static int hot_serve(store_backend_impl *s, conn *c, sqlite_hot_batch *served)
{
	sqlite3_stmt *list = c->stmt[ST_HOT_REQ_LIST], *mark = c->stmt[ST_HOT_REQ_DONE];
	sqlite3_stmt *clean = c->stmt[ST_HOT_REQ_CLEAN];
	int64_t last = 0, changes;
	int step;

	while ((step = sqlite3_step(list)) == SQLITE_ROW) {
		int kind = sqlite3_column_int(list, 1);
		const char *ns = (const char *)sqlite3_column_text(list, 2);
		const char *key = (const char *)sqlite3_column_text(list, 3);

		last = sqlite3_column_int64(list, 0);
		if (kind == HOT_REQ_SYNC || !ns || !key)
			continue;
		hot_forget_all(s, hot_kind_of(kind), ns, key);
		if (!sqlite_hot_batch_note(served, hot_kind_of(kind), ns, key) ||
		    hot_delete(s, c, kind, ns, key, &changes) < 0) {
			done(list);
			return -1;
		}
	}
	done(list);
	if (step != SQLITE_DONE)
		return -1;
	/* Rows of a spamtrapctl that stopped waiting: it deletes its own otherwise. */
	sqlite3_bind_int64(clean, 1, s->cleaned_to);
	sqlite3_bind_int64(clean, 2, -1);
	if (step_done(clean) < 0)
		return -1;
	if (last == 0)
		return 0;
	s->cleaned_to = last;
	sqlite3_bind_int64(mark, 1, last);
	return step_done(mark);
}

typedef struct flush_args {
	store_backend_impl *s;
	const sqlite_hot_batch *b;
	/*
	 * The resets served: forgotten again after the commit, since a load
	 * racing the transaction reads the file as it was before it.
	 */
	sqlite_hot_batch served;
} flush_args;

static int flush_all(conn *c, void *ctx)
{
	flush_args *a = ctx;

	if (!a->s->owner) {
		sqlite3_bind_int64(c->stmt[ST_HOT_OWNER_SET], 1, (sqlite3_int64)getpid());
		if (step_done(c->stmt[ST_HOT_OWNER_SET]) < 0)
			return -1;
	}
	return hot_write(a->s, c, a->b) < 0 ? -1 : hot_serve(a->s, c, &a->served);
}

/* Are there requests of other processes waiting? (A read: a flush with nothing to write costs no commit.) */
static bool hot_asked(store_backend_impl *s)
{
	conn *c = acquire(s, FOR_READ, "hot requests");
	int64_t n = 0;

	if (!c)
		return false;
	if (count_rows(c, ST_HOT_REQ_PENDING, &n) < 0)
		n = 0;
	release(s, c, FOR_READ);
	return n > 0;
}

static pid_t hot_other(conn *c);

/* Memory answers this store's counts: it writes behind, and no other daemon does on the file. */
static bool hot_on(store_backend_impl *s)
{
	return s->hot && !atomic_load(&s->hot_shared);
}

/* Another live daemon named in hot_owner: count in the file from now on (hot_shared). */
static void hot_check_peer(store_backend_impl *s)
{
	conn *c;
	pid_t other;

	if (atomic_load(&s->hot_shared) || !(c = acquire(s, FOR_READ, "write behind")))
		return;
	other = hot_other(c);
	release(s, c, FOR_READ);
	if (other == 0)
		return;
	atomic_store(&s->hot_shared, true);
	log_warning("store: sqlite %s: another spamtrapd (pid %ld) uses this file: relay and ratelimit count "
	            "in the file from now on, not in memory (slower; Redis shares counts between hosts)",
	            s->path, (long)other);
}

/* Write what the memory owes and serve the requests, in one transaction; under s->flushing. */
static store_status hot_flush_locked(store_backend_impl *s)
{
	sqlite_hot_batch b = {0};
	flush_args a = {s, &b, {0}};
	store_status rc = STORE_OK;
	struct timespec ts;

	hot_check_peer(s);
	/* The buckets' clock: the requests' (engine.c), in ms of the wall clock. */
	clock_gettime(CLOCK_REALTIME, &ts);
	if (sqlite_hot_take_at(s->hot, &b, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000) < 0)
		rc = store_set_error("sqlite %s: write behind: out of memory", s->path);
	if (b.n > 0 || !s->owner || hot_asked(s)) {
		if (write_txn(s, "write behind", flush_all, &a, NULL, 0) == STORE_OK) {
			s->owner = true;
			for (size_t i = 0; i < a.served.n; i++)
				hot_forget_all(s, a.served.v[i].kind, a.served.v[i].ns, a.served.v[i].key);
		} else {
			rc = STORE_ERROR;
			sqlite_hot_retake(s->hot, &b);
			/* Rolled back: what the estimates were told did not happen. */
			atomic_store(&s->distinct_cap.rows, -1);
			atomic_store(&s->counter_cap.rows, -1);
		}
	}
	/* Only now may the entries taken make room: a load reads the file as committed. */
	sqlite_hot_written(s->hot);
	sqlite_hot_batch_clear(&b);
	sqlite_hot_batch_clear(&a.served);
	return rc;
}

static store_status hot_flush(store_backend_impl *s)
{
	store_status rc;

	pthread_mutex_lock(&s->flushing);
	rc = hot_flush_locked(s);
	pthread_mutex_unlock(&s->flushing);
	return rc;
}

/* The write-behind's failures, said once a minute: what a crash can lose grows until a write works. */
#define HOT_ERROR_LOG_INTERVAL 60

static void *flusher_main(void *arg)
{
	store_backend_impl *s = arg;
	struct timespec at;
	log_ratelimit errors = {.interval = HOT_ERROR_LOG_INTERVAL};
	uint64_t suppressed, failed = 0;

	pthread_mutex_lock(&s->hot_lock);
	while (!s->stopping) {
		clock_gettime(CLOCK_MONOTONIC, &at);
		at.tv_nsec += (long)SQLITE_HOT_FLUSH_MS * 1000000L;
		at.tv_sec += at.tv_nsec / 1000000000L;
		at.tv_nsec %= 1000000000L;
		pthread_cond_timedwait(&s->hot_wake, &s->hot_lock, &at);
		if (s->stopping)
			break;
		pthread_mutex_unlock(&s->hot_lock);
		/* A failure is retried at the next tick; the calls that wrote are not told (counts only). */
		if (hot_flush(s) != STORE_OK) {
			failed++;
			if (log_ratelimit_pass(&errors, (int64_t)time(NULL), &suppressed))
				log_warning(
				    "store: relay and ratelimit counts not written to the file for %" PRIu64
				    " tick(s), held in memory and tried again every %d ms: %s",
				    failed, SQLITE_HOT_FLUSH_MS, store_last_error());
		} else if (failed > 0) {
			log_notice(
			    "store: relay and ratelimit counts written to the file again after %" PRIu64
			    " failed tick(s)",
			    failed);
			failed = 0;
		}
		pthread_mutex_lock(&s->hot_lock);
	}
	pthread_mutex_unlock(&s->hot_lock);
	return NULL;
}

/* The flusher runs from the first entry the memory holds (so that resets reach it too). */
static void hot_started(store_backend_impl *s)
{
	pthread_mutex_lock(&s->hot_lock);
	if (!s->flusher_started && !s->stopping)
		s->flusher_started = pthread_create(&s->flusher, NULL, flusher_main, s) == 0;
	pthread_mutex_unlock(&s->hot_lock);
}

/* At close: the last flush, and hot_owner no longer names this process. */
static void hot_stop(store_backend_impl *s)
{
	conn *c;

	if (!s->hot)
		return;
	pthread_mutex_lock(&s->hot_lock);
	s->stopping = true;
	pthread_cond_signal(&s->hot_wake);
	pthread_mutex_unlock(&s->hot_lock);
	if (s->flusher_started)
		pthread_join(s->flusher, NULL);
	(void)hot_flush(s);
	/* A reload's new store on this file holds hot_owner (this pid) now. */
	if (hot_unregister(s))
		return;
	if (s->owner && (c = acquire(s, FOR_WRITE, "write behind"))) {
		sqlite3_bind_int64(c->stmt[ST_HOT_OWNER_DROP], 1, (sqlite3_int64)getpid());
		(void)step_done(c->stmt[ST_HOT_OWNER_DROP]);
		release(s, c, FOR_WRITE);
	}
}

/* hot_owner names this process from the start: spamtrapctl asks it before the first flush. */
static store_status sqlite_write_behind(store_backend_impl *s)
{
	if (s->hot)
		return STORE_OK;
	if (!(s->hot = sqlite_hot_new(SQLITE_HOT_MAX_ENTRIES)))
		return store_set_error("sqlite %s: write behind: out of memory", s->path);
	hot_register(s);
	/* A file locked by another process now: the flusher tries again at each tick. */
	(void)hot_flush(s);
	hot_started(s);
	return STORE_OK;
}

/* A bucket into memory from the file: 1 loaded (or there already), 0 no room, -1 error. */
static int hot_load_counter(store_backend_impl *s, query *q)
{
	uint64_t gen = sqlite_hot_generation(s->hot);
	conn *c = acquire(s, FOR_READ, "counter");
	int64_t tat;
	bool found;

	if (!c)
		return -1;
	if (counter_row(c, q, &found, &tat) < 0) {
		db_error(s, c, "counter");
		release(s, c, FOR_READ);
		return -1;
	}
	release(s, c, FOR_READ);
	hot_started(s);
	return sqlite_hot_counter_load(s->hot, q->u.counter.ns, q->u.counter.key, found, tat, gen) ? 1 : 0;
}

static store_status sqlite_counter(store_backend_impl *s, query *q)
{
	for (int i = 0; hot_on(s) && i < 2; i++) {
		sqlite_hot_rc r = sqlite_hot_counter(s->hot, q);
		int loaded;

		if (r == SQLITE_HOT_DONE) {
			if (q->u.counter.cost > 0)
				atomic_store(&s->counter_max_rows, q->u.counter.max_rows);
			return STORE_OK;
		}
		if (r == SQLITE_HOT_FULL || (loaded = hot_load_counter(s, q)) == 0)
			break;
		if (loaded < 0)
			return STORE_ERROR;
	}
	return counter_file(s, q);
}

typedef struct set_load {
	sqlite_hot_member *m;
	size_t n, cap;
	bool over; /* more than HOT_SET_MAX */
} set_load;

static int set_load_one(const char *member, int64_t expires, void *ctx)
{
	set_load *l = ctx;

	if (l->n == HOT_SET_MAX) {
		l->over = true;
		return 1;
	}
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 16;
		sqlite_hot_member *m = realloc(l->m, cap * sizeof(*m));

		if (!m) {
			l->over = true;
			return 1;
		}
		l->m = m;
		l->cap = cap;
	}
	if (!(l->m[l->n].member = strdup(member))) {
		l->over = true;
		return 1;
	}
	l->m[l->n++].expires = expires;
	return 0;
}

/* A set into memory from the file: 1 loaded (or there already), 0 not kept, -1 error. */
static int hot_load_set(store_backend_impl *s, const char *set, int64_t now)
{
	uint64_t gen = sqlite_hot_generation(s->hot);
	set_load l = {0};
	int rc = 0;

	if (distinct_list_file(s, set, now, set_load_one, &l) != STORE_OK)
		rc = -1;
	else if (!l.over && sqlite_hot_set_load(s->hot, set, l.m, l.n, gen))
		rc = 1;
	for (size_t i = 0; i < l.n; i++)
		free((char *)l.m[i].member);
	free(l.m);
	if (rc > 0)
		hot_started(s);
	return rc;
}

/* Room in the table for one more member by the estimate (relay.max_entries), counted when unknown. */
static bool hot_room(store_backend_impl *s, uint64_t max_rows)
{
	int64_t rows;
	conn *c;

	if (max_rows == 0)
		return true;
	if ((rows = atomic_load(&s->distinct_cap.rows)) < 0) {
		if (!(c = acquire(s, FOR_READ, "distinct")))
			return false;
		if (count_rows(c, ST_DS_ROWS, &rows) < 0)
			rows = -1;
		release(s, c, FOR_READ);
		if (rows < 0)
			return false;
		atomic_store(&s->distinct_cap.rows, rows);
		atomic_store(&s->distinct_cap.counted_at, now_ms());
	}
	return (uint64_t)rows + sqlite_hot_pending_members(s->hot) < max_rows;
}

/*
 * The set in memory: 1 answered, 0 ask the file. A new member the memory
 * cannot take (the table near relay.max_entries, where the file's expired
 * rows must go first) goes to the file after the set was written and
 * forgotten, so that the file's answer is the whole truth.
 */
static int hot_distinct(store_backend_impl *s, sqlite_hot_distinct *a, uint64_t max_rows)
{
	for (int i = 0; i < 2; i++) {
		int loaded;

		if (!a->peek)
			a->room = hot_room(s, max_rows);
		switch (sqlite_hot_distinct_run(s->hot, a)) {
		case SQLITE_HOT_DONE:
			return 1;
		case SQLITE_HOT_FULL:
			pthread_mutex_lock(&s->flushing);
			if (hot_flush_locked(s) == STORE_OK)
				sqlite_hot_forget(s->hot, SQLITE_HOT_SET, NULL, a->set);
			pthread_mutex_unlock(&s->flushing);
			return 0;
		case SQLITE_HOT_MISS:
			break;
		}
		if ((loaded = hot_load_set(s, a->set, a->now)) <= 0)
			return loaded;
	}
	return 0;
}

static store_status sqlite_distinct_add(store_backend_impl *s, const char *set, const char *member,
                                        int64_t now, int64_t window, uint64_t limit, uint64_t max_rows,
                                        uint64_t *count, bool *capped)
{
	sqlite_hot_distinct a = {.set = set, .member = member, .window = window, .limit = limit};
	int r;

	a.now = now == STORE_NOW_SERVER ? (int64_t)time(NULL) : now;
	*capped = false;
	if (hot_on(s) && (r = hot_distinct(s, &a, max_rows)) != 0) {
		if (r < 0)
			return STORE_ERROR;
		*count = a.count;
		return STORE_OK;
	}
	return distinct_add_file(s, set, member, a.now, window, limit, max_rows, count, capped);
}

static store_status sqlite_distinct_peek(store_backend_impl *s, const char *set, const char *member,
                                         int64_t now, uint64_t *count, bool *present)
{
	sqlite_hot_distinct a = {.set = set, .member = member, .peek = true};
	int r;

	a.now = now == STORE_NOW_SERVER ? (int64_t)time(NULL) : now;
	if (hot_on(s) && (r = hot_distinct(s, &a, 0)) != 0) {
		if (r < 0)
			return STORE_ERROR;
		*count = a.count;
		*present = a.present;
		return STORE_OK;
	}
	return distinct_peek_file(s, set, member, a.now, count, present);
}

/* The pid of the daemon whose memory holds buckets and sets of this file, if it runs: 0 none. */
static pid_t hot_other(conn *c)
{
	sqlite3_stmt *get = c->stmt[ST_HOT_OWNER_GET];
	pid_t pid = 0;

	if (sqlite3_step(get) == SQLITE_ROW)
		pid = (pid_t)sqlite3_column_int64(get, 0);
	done(get);
	if (pid <= 0 || pid == getpid() || (kill(pid, 0) < 0 && errno == ESRCH))
		return 0;
	return pid;
}

/* Until the daemon did request id (or HOT_WAIT_MS passed: it does it at its next flush then). */
static void hot_wait(store_backend_impl *s, int64_t id)
{
	int64_t until = now_ms() + HOT_WAIT_MS;
	bool served = false;
	conn *c;

	while (!served && now_ms() < until) {
		struct timespec pause = {0, 10 * 1000000L};

		nanosleep(&pause, NULL);
		if (!(c = acquire(s, FOR_READ, "hot requests")))
			continue;
		sqlite3_bind_int64(c->stmt[ST_HOT_REQ_GET], 1, id);
		served = sqlite3_step(c->stmt[ST_HOT_REQ_GET]) != SQLITE_ROW ||
		         sqlite3_column_int(c->stmt[ST_HOT_REQ_GET], 0) != 0;
		done(c->stmt[ST_HOT_REQ_GET]);
		release(s, c, FOR_READ);
	}
	if (!served || !(c = acquire(s, FOR_WRITE, "hot requests")))
		return;
	sqlite3_bind_int64(c->stmt[ST_HOT_REQ_CLEAN], 1, 0);
	sqlite3_bind_int64(c->stmt[ST_HOT_REQ_CLEAN], 2, id);
	(void)step_done(c->stmt[ST_HOT_REQ_CLEAN]);
	release(s, c, FOR_WRITE);
}

typedef struct request_args {
	store_backend_impl *s;
	int kind;
	const char *ns, *key;
	int64_t changes; /* rows the reset dropped */
	int64_t id;      /* the request for the daemon, 0: none runs */
	query *q;        /* HOT_REQ_KV: the write */
} request_args;

static int request_all(conn *c, void *ctx)
{
	request_args *a = ctx;
	sqlite3_stmt *add = c->stmt[ST_HOT_REQ_ADD];

	if (a->kind == HOT_REQ_KV
	        ? kv_step(c, a->q) < 0
	        : a->kind != HOT_REQ_SYNC && hot_delete(a->s, c, a->kind, a->ns, a->key, &a->changes) < 0)
		return -1;
	if (hot_other(c) == 0)
		return 0;
	sqlite3_bind_int(add, 1, a->kind);
	sqlite3_bind_text(add, 2, a->ns, -1, SQLITE_STATIC);
	sqlite3_bind_text(add, 3, a->key, -1, SQLITE_STATIC);
	if (step_done(add) < 0)
		return -1;
	a->id = sqlite3_last_insert_rowid(c->db);
	return 0;
}

/*
 * A reset (kind HOT_REQ_COUNTER, HOT_REQ_SET) or a sync: this process's
 * memory first (written, the entry forgotten), then the file and, in the
 * same transaction, a request to the daemon holding the file's buckets
 * and sets in its memory, waited for.
 */
static store_status hot_request(store_backend_impl *s, request_args *a)
{
	request_args sync = {s, HOT_REQ_SYNC, "", "", 0, 0, NULL};
	store_status rc;

	/* Written first, so that the reset's answer (rows dropped or none) is the daemon's. */
	if ((a->kind == HOT_REQ_COUNTER || a->kind == HOT_REQ_SET) &&
	    (rc = hot_request(s, &sync)) != STORE_OK)
		return rc;
	/* A record is never written behind: forgotten after the write below. */
	if (s->hot && a->kind != HOT_REQ_KV) {
		pthread_mutex_lock(&s->flushing);
		rc = hot_flush_locked(s);
		if (a->kind != HOT_REQ_SYNC)
			hot_forget_all(s, hot_kind_of(a->kind), a->ns, a->key);
		pthread_mutex_unlock(&s->flushing);
		if (rc != STORE_OK)
			return rc;
	}
	rc = write_txn(s, "reset", request_all, a, NULL, 0);
	if (rc != STORE_OK) {
		atomic_store(&s->distinct_cap.rows, -1);
		atomic_store(&s->counter_cap.rows, -1);
		return rc;
	}
	/* Once more: a load racing the reset read the rows before they went. */
	if (s->hot && a->kind != HOT_REQ_SYNC)
		hot_forget_all(s, hot_kind_of(a->kind), a->ns, a->key);
	if (a->id)
		hot_wait(s, a->id);
	return STORE_OK;
}

static store_status sqlite_sync(store_backend_impl *s)
{
	request_args a = {s, HOT_REQ_SYNC, "", "", 0, 0, NULL};

	return hot_request(s, &a);
}

static store_status sqlite_distinct_list(store_backend_impl *s, const char *set, int64_t now,
                                         store_distinct_visit_fn fn, void *ctx)
{
	/* This process's memory first (another's: store_sync). */
	if (s->hot && hot_flush(s) != STORE_OK)
		return STORE_ERROR;
	return distinct_list_file(s, set, now, fn, ctx);
}

static store_status sqlite_distinct_clear(store_backend_impl *s, const char *set)
{
	request_args a = {s, HOT_REQ_SET, "", set, 0, 0, NULL};
	store_status rc = hot_request(s, &a);

	return rc == STORE_OK && a.changes == 0 ? STORE_NOTFOUND : rc;
}

static store_status sqlite_counter_delete(store_backend_impl *s, const char *ns, const char *key)
{
	request_args a = {s, HOT_REQ_COUNTER, ns, key, 0, 0, NULL};
	store_status rc = hot_request(s, &a);

	return rc == STORE_OK && a.changes == 0 ? STORE_NOTFOUND : rc;
}

/*
 * Records: a read from memory (loaded from the file once); a write to the
 * file, with a request that the daemon forget the record when another
 * process holds it (spamtrapctl relay reset drops trip markers).
 */
static store_status sqlite_kv(store_backend_impl *s, query *q)
{
	request_args a = {s, HOT_REQ_KV, q->u.kv.ns, q->u.kv.key, 0, 0, q};
	uint64_t gen;

	if (q->u.kv.op != QUERY_KV_GET)
		return hot_request(s, &a);
	if (!hot_on(s))
		return kv_get_file(s, q);
	if (sqlite_hot_kv_get(s->hot, q) == SQLITE_HOT_DONE)
		return STORE_OK;
	gen = sqlite_hot_generation(s->hot);
	if (kv_get_file(s, q) != STORE_OK)
		return STORE_ERROR;
	/* No room: answered from the file this time. */
	(void)sqlite_hot_kv_load(s->hot, q->u.kv.ns, q->u.kv.key, q->u.kv.found, q->u.kv.old,
	                         q->u.kv.expires_ms, gen);
	return STORE_OK;
}

/*
 * key_type_of() in SQL: lower() and substr() see ASCII as it does, and the
 * numbers are core/key.h's. INDEXED BY: the expires index of a WITHOUT
 * ROWID table holds the key, so no entry is read.
 */
_Static_assert(KEY_TYPE_NETWORK == 0 && KEY_TYPE_SENDER == 1 && KEY_TYPE_DOMAIN == 2 && KEY_TYPE_SASL == 3 &&
                   KEY_TYPE_HELO == 4,
               "count_types_sql numbers the key types as core/key.h");
static const char count_types_sql[] =
    "SELECT CASE WHEN lower(substr(key, 1, 5)) = 'sasl:' THEN 3"
    " WHEN lower(substr(key, 1, 5)) = 'helo:' THEN 4 WHEN substr(key, 1, 1) = '@' THEN 2"
    " WHEN instr(key, '@') > 0 THEN 1 ELSE 0 END AS t, count(*)"
    " FROM blocklist INDEXED BY blocklist_expires WHERE expires > ?1 GROUP BY t";

static store_status sqlite_count_types(store_backend_impl *s, int64_t now, uint64_t *counts)
{
	conn *c = acquire(s, FOR_READ, "count");
	sqlite3_stmt *stmt = NULL;
	store_status rc = STORE_OK;
	int step;

	if (!c)
		return STORE_ERROR;
	if (sqlite3_prepare_v2(c->db, count_types_sql, -1, &stmt, NULL) != SQLITE_OK) {
		rc = db_error(s, c, "count");
		release(s, c, FOR_READ);
		return rc;
	}
	sqlite3_bind_int64(stmt, 1, now);
	while ((step = sqlite3_step(stmt)) == SQLITE_ROW) {
		int t = sqlite3_column_int(stmt, 0);
		if (t >= 0 && t < STORE_KEY_TYPES)
			counts[t] = (uint64_t)sqlite3_column_int64(stmt, 1);
	}
	if (step != SQLITE_DONE)
		rc = db_error(s, c, "count");
	sqlite3_finalize(stmt);
	release(s, c, FOR_READ);
	return rc;
}

const store_ops store_sqlite_ops = {
    .name = "sqlite",
    .open = sqlite_open,
    .free = sqlite_free,
    .lookup = sqlite_lookup,
    .record = sqlite_record,
    .get = sqlite_get,
    .put = sqlite_put,
    .remove = sqlite_remove,
    .purge = sqlite_purge,
    .foreach = sqlite_foreach,
    .lookup_netlens = sqlite_lookup_netlens,
    .netlens = sqlite_netlens,
    .lookup_built = sqlite_lookup_built,
    .put_many = sqlite_put_many,
    .distinct_add = sqlite_distinct_add,
    .distinct_peek = sqlite_distinct_peek,
    .distinct_list = sqlite_distinct_list,
    .distinct_clear = sqlite_distinct_clear,
    .filter_answers = sqlite_filter_answers,
    .count_types = sqlite_count_types,
    .kv = sqlite_kv,
    .counter = sqlite_counter,
    .counter_delete = sqlite_counter_delete,
    .greylist = sqlite_greylist,
    .grey_get = sqlite_grey_get,
    .grey_remove = sqlite_grey_remove,
    .grey_awl_put = sqlite_grey_awl_put,
    .grey_foreach = sqlite_grey_foreach,
    .grey_purge = sqlite_grey_purge,
    .write_behind = sqlite_write_behind,
    .sync = sqlite_sync,
};
