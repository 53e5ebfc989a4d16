/*
 * sqlite_filter: the SQLite store's absent-key filter (sqlite_filter.h).
 *
 * What it holds: a keyfilter (Bloom filter) of every key in the file and
 * the network lengths of the table netlens, published together with the
 * WAL-index header of the state of the file they describe.
 *
 * Why it is never stale. In WAL mode every process that has the file
 * open maps its -shm file, whose first 96 bytes are the WAL-index
 * header, twice: each commit, by any process, rewrites it and increments
 * the commit counter in it (iChange), and every read transaction starts
 * from it (https://sqlite.org/walformat.html, 2.2; the layout is shared by
 * every SQLite since 3.7.0, which all write version 3007000 in it, checked
 * here). A check reads both copies and answers only when they are equal
 * to each other and, byte for byte, to the published header: then no
 * commit happened since the state the filter describes, so a key absent
 * from the filter is absent from the file. Anything else (no filter
 * yet, a write of another process, a header being written) and the
 * lookup asks SQLite. Keys are compared as bytes, as SQLite compares them
 * in a UTF-8 file whose key column is TEXT COLLATE BINARY, as spamtrapd
 * creates it; any other file (a UTF-16 one, a hand-made NOCASE column)
 * gets no filter. The mapping is SQLite's own (xShmMap of the
 * builder's connection, which stays open, so it stays mapped); no other
 * process can truncate the -shm file while this one has it open, and the
 * file cannot leave WAL mode while any connection is open.
 *
 * Keeping up. The builder thread reads every key in one read transaction
 * and publishes the filter with the header of that transaction's
 * snapshot (read before and after it started, and the same). A write of
 * this process reads the header once it holds the write lock (no other
 * commit can happen then) and again after a successful COMMIT; when the
 * counter moved by exactly one and the published header was the one
 * before, its keys go into the filter and the header after is published:
 * nobody else committed in between. (After a ROLLBACK that one commit may
 * be another process's, taken right after the lock was freed: only a
 * successful COMMIT counts.) Otherwise (another process wrote, or a write of
 * this process that does not report itself, such as a purge) the
 * published header stays behind, lookups go to SQLite, and the builder
 * is asked for a new filter: at most one build a second and, after a
 * build of t seconds, none for 9t, so that it costs at most a tenth of a
 * core. Writes during a build go into the new filter too.
 *
 * Checkpoints. SQLite copies the write-ahead log into the database once
 * it holds 1,000 pages, in the thread that made the commit, and waits for
 * the disk twice (5 to 20 ms each here): a policy worker stalled so, with
 * every connection it serves. The store hands that checkpoint to this
 * thread instead (PASSIVE: it never blocks a writer or a reader; it leaves
 * the WAL-index header alone).
 *
 * Publication is a sequence lock: checks never block, and one that a
 * publication overlapped answers "cannot tell". A filter that is
 * replaced is cleared and reused for the next build, never freed while
 * the store is open (a check may still be reading it; its sequence check
 * then fails); one too small for the next build is kept on a list freed
 * at the end (filters only grow, so that list stays short).
 */
#include "store/sqlite_filter.h"

#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "store/keyfilter.h"
#include "store/store_backend.h"

#define HDR_WORDS 12       /* one copy of the WAL-index header: 48 bytes */
#define HDR_ICHANGE 2      /* its commit counter */
#define HDR_ISINIT_BYTE 12 /* set once the header is valid */
#define WALINDEX_VERSION 3007000u
#define WALINDEX_REGION 32768 /* the size SQLite maps the -shm file in */
#define MIN_GAP_MS 1000       /* between the ends of two builds, at least */
#define GAP_PER_BUILD_MS 9    /* and 9 ms for each ms the last one took */
#define SCAN_STOP_CHECK 4096  /* rows between looks at the stop flag */
#define BUSY_MS 2000
/*
 * A build starts its read transaction under the filter's lock, which the
 * workers' trap hits and stale lookups take too: it must not wait there
 * for long (SQLite makes a reader wait only while a WAL is recovered or
 * restarted). A build that gives up is tried again after the gap.
 */
#define BUILD_BUSY_MS 50

typedef struct hdr {
	uint32_t w[HDR_WORDS];
} hdr;

/* One filter: keys, network lengths present (as store_sqlite's netmask), keys added. */
typedef struct farray {
	keyfilter *keys;
	_Atomic uint64_t v4, v6[3];
	atomic_size_t count;
	struct farray *retired_next;
} farray;

struct sqlite_filter {
	char *path;
	/* Published for checks; seq is odd while a publication runs (64 bits: it never wraps). */
	_Atomic uint64_t seq;
	_Atomic(farray *) active;
	_Atomic uint32_t current[HDR_WORDS];
	atomic_bool valid;
	_Atomic(const volatile uint32_t *) shm; /* the WAL-index header; NULL until mapped */
	atomic_int writing;                     /* writes between _begin and _end */
	atomic_bool requested;                  /* a build was asked for */
	atomic_bool started;
	atomic_bool stop;
	atomic_bool running;       /* the thread waits for work: it takes checkpoints */
	atomic_bool checkpointing; /* a checkpoint was asked for */

	pthread_mutex_t lock; /* publications, building and the fields below */
	pthread_cond_t wake;
	bool thread_running;
	pthread_t thread;
	farray *building; /* the filter being built: writes go into it too */
	hdr build_hdr;    /* the state it describes, once its snapshot started */
	bool build_hdr_set, build_dirty;

	/* The builder thread's own. */
	sqlite3 *db;
	sqlite3_stmt *netlens, *keys, *count;
	farray *spare, *retired;
};

/* --- filters ------------------------------------------------------------- */

static farray *farray_new(size_t nkeys)
{
	farray *a = calloc(1, sizeof(*a));

	if (a && !(a->keys = keyfilter_new(nkeys))) {
		free(a);
		a = NULL;
	}
	return a;
}

static void farray_free(farray *a)
{
	if (a)
		keyfilter_free(a->keys);
	free(a);
}

static void farray_clear(farray *a)
{
	keyfilter_clear(a->keys);
	atomic_store_explicit(&a->v4, 0, memory_order_relaxed);
	for (int i = 0; i < 3; i++)
		atomic_store_explicit(&a->v6[i], 0, memory_order_relaxed);
	atomic_store_explicit(&a->count, 0, memory_order_relaxed);
}

static void farray_add_len(farray *a, int64_t family, int64_t len)
{
	if (family == 4 && len >= 0 && len <= 32)
		atomic_fetch_or_explicit(&a->v4, UINT64_C(1) << len, memory_order_relaxed);
	else if (family == 6 && len >= 0 && len <= 128)
		atomic_fetch_or_explicit(&a->v6[len / 64], UINT64_C(1) << (len % 64), memory_order_relaxed);
}

static void farray_add_key(farray *a, const char *key, size_t len)
{
	if (keyfilter_add_hash(a->keys, keyfilter_hash(key, len)))
		atomic_fetch_add_explicit(&a->count, 1, memory_order_relaxed);
}

/* A key a write of this process may have inserted: as the insert trigger counts it in netlens, too. */
static void farray_add_written(farray *a, const char *key)
{
	int family, len = store_net_key_len(key, &family);

	if (len >= 0)
		farray_add_len(a, family, len);
	farray_add_key(a, key, strlen(key));
}

/* The network length of a key (STORE_NETLEN), from the caller when it knows it. */
static int16_t netlen_of(const char *key, const int16_t *netlens, size_t i)
{
	int family, len;

	if (netlens)
		return netlens[i];
	len = store_net_key_len(key, &family);
	return len < 0 ? STORE_NETLEN_NONE : STORE_NETLEN(family, len);
}

/* As store_sqlite's mask_may_have: may the file hold keys of this network length? */
static bool farray_len_may_have(const farray *a, int16_t netlen)
{
	uint64_t word;

	if (netlen >= 256)
		word = atomic_load_explicit(&a->v6[(netlen - 256) / 64], memory_order_relaxed) >>
		       (netlen - 256) % 64;
	else if (netlen >= 0)
		word = atomic_load_explicit(&a->v4, memory_order_relaxed) >> netlen;
	else
		word = 1;
	return word & 1;
}

static bool farray_full(const farray *a)
{
	return atomic_load_explicit(&a->count, memory_order_relaxed) > keyfilter_capacity(a->keys);
}

/* --- the WAL-index header ------------------------------------------------ */

static bool hdr_eq(const hdr *a, const hdr *b)
{
	return memcmp(a->w, b->w, sizeof(a->w)) == 0;
}

/*
 * Both copies, in the order SQLite's readers use (a writer writes the
 * second copy first): equal, of the version this code knows and valid,
 * or false.
 */
static bool shm_read(const volatile uint32_t *shm, hdr *h)
{
	hdr again;
	uint8_t isinit;

	for (int i = 0; i < HDR_WORDS; i++)
		h->w[i] = shm[i];
	atomic_thread_fence(memory_order_acquire);
	for (int i = 0; i < HDR_WORDS; i++)
		again.w[i] = shm[HDR_WORDS + i];
	memcpy(&isinit, (const unsigned char *)h->w + HDR_ISINIT_BYTE, 1);
	return hdr_eq(h, &again) && h->w[0] == WALINDEX_VERSION && isinit == 1;
}

static bool shm_now(const sqlite_filter *f, hdr *h)
{
	const volatile uint32_t *shm = atomic_load_explicit(&f->shm, memory_order_acquire);

	return shm && shm_read(shm, h);
}

/* --- publication --------------------------------------------------------- */

/* Under lock. */
static void publish(sqlite_filter *f, farray *a, const hdr *h)
{
	uint64_t s = atomic_load_explicit(&f->seq, memory_order_relaxed);

	atomic_store_explicit(&f->seq, s + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	atomic_store_explicit(&f->active, a, memory_order_relaxed);
	for (int i = 0; i < HDR_WORDS; i++)
		atomic_store_explicit(&f->current[i], h->w[i], memory_order_relaxed);
	atomic_store_explicit(&f->valid, true, memory_order_relaxed);
	atomic_store_explicit(&f->seq, s + 2, memory_order_release);
}

static void current_read(const sqlite_filter *f, hdr *h)
{
	for (int i = 0; i < HDR_WORDS; i++)
		h->w[i] = atomic_load_explicit(&f->current[i], memory_order_relaxed);
}

/* Under lock. A request already pending wakes nobody again (the builder may be waiting out its gap). */
static void request_locked(sqlite_filter *f)
{
	if (!atomic_exchange_explicit(&f->requested, true, memory_order_relaxed))
		pthread_cond_signal(&f->wake);
}

static void request(sqlite_filter *f)
{
	if (atomic_exchange_explicit(&f->requested, true, memory_order_relaxed))
		return;
	pthread_mutex_lock(&f->lock);
	pthread_cond_signal(&f->wake);
	pthread_mutex_unlock(&f->lock);
}

/* --- the builder --------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Does a one-row pragma (journal_mode, encoding) answer want? */
static bool pragma_is(sqlite3 *db, const char *sql, const char *want)
{
	sqlite3_stmt *stmt = NULL;
	bool is = false;

	if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW) {
		const unsigned char *value = sqlite3_column_text(stmt, 0);
		is = value && strcmp((const char *)value, want) == 0;
	}
	sqlite3_finalize(stmt);
	return is;
}

/* SQLite's own mapping of the WAL index, once a read transaction has opened it. */
static const volatile uint32_t *map_shm(sqlite3 *db)
{
	sqlite3_file *file = NULL;
	volatile void *p = NULL;
	hdr h;

	if (sqlite3_exec(db, "BEGIN; SELECT count(*) FROM netlens; COMMIT", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &file) != SQLITE_OK || !file ||
	    !file->pMethods || file->pMethods->iVersion < 2 || !file->pMethods->xShmMap)
		return NULL;
	if (file->pMethods->xShmMap(file, 0, WALINDEX_REGION, 0, &p) != SQLITE_OK || !p)
		return NULL;
	return shm_read(p, &h) ? p : NULL;
}

/*
 * Keys equal for SQLite only when their bytes are: the key column is TEXT
 * with the BINARY collation (a hand-made file could say NOCASE), and the
 * file is UTF-8 (SQLite converts the text of a UTF-16 file, and bytes that
 * are not UTF-8 change on the way).
 */
static bool keys_compare_as_bytes(sqlite3 *db)
{
	const char *type = NULL, *coll = NULL;

	if (!pragma_is(db, "PRAGMA encoding", "UTF-8") ||
	    sqlite3_table_column_metadata(db, "main", "blocklist", "key", &type, &coll, NULL, NULL, NULL) !=
	        SQLITE_OK)
		return false;
	return type && coll && strcasecmp(type, "TEXT") == 0 && strcasecmp(coll, "BINARY") == 0;
}

/* The builder's connection and the mapping; -1 leaves the filter off (lookups ask SQLite). */
static int builder_open(sqlite_filter *f)
{
	const volatile uint32_t *shm;

	if (sqlite3_open_v2(f->path, &f->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
		return -1;
	sqlite3_busy_timeout(f->db, BUSY_MS);
	if (!pragma_is(f->db, "PRAGMA journal_mode", "wal") || !keys_compare_as_bytes(f->db) ||
	    sqlite3_prepare_v2(f->db, "SELECT family, len FROM netlens", -1, &f->netlens, NULL) !=
	        SQLITE_OK ||
	    sqlite3_prepare_v2(f->db, "SELECT key FROM blocklist", -1, &f->keys, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(f->db, "SELECT count(*) FROM blocklist", -1, &f->count, NULL) != SQLITE_OK)
		return -1;
	shm = map_shm(f->db);
	if (!shm)
		return -1;
	sqlite3_busy_timeout(f->db, BUILD_BUSY_MS);
	atomic_store_explicit(&f->shm, shm, memory_order_release);
	return 0;
}

/* How many keys the file holds now (a read of the smallest index: 25 ms for a million). */
static size_t key_count(sqlite_filter *f)
{
	size_t n = 0;

	if (sqlite3_step(f->count) == SQLITE_ROW && sqlite3_column_int64(f->count, 0) > 0)
		n = (size_t)sqlite3_column_int64(f->count, 0);
	sqlite3_reset(f->count);
	return n;
}

/*
 * A cleared filter for the next build, with room for the file to double
 * (a bulk load, a burst of trap hits) before it fills: the spare one when
 * it is large enough.
 */
static farray *build_target(sqlite_filter *f)
{
	farray *t = f->spare;
	size_t want = key_count(f);

	want = 2 * want + 1024;
	f->spare = NULL;
	if (t && keyfilter_capacity(t->keys) >= want) {
		farray_clear(t);
		return t;
	}
	if (t) {
		t->retired_next = f->retired;
		f->retired = t;
	}
	return farray_new(want);
}

/*
 * Register t as the filter being built and start its read transaction,
 * holding lock so that no write of this process ends in between: the
 * header before and after the start is the snapshot's.
 */
static int build_start(sqlite_filter *f, farray *t)
{
	hdr a, b;
	int step, rc = -1;

	pthread_mutex_lock(&f->lock);
	f->building = t;
	f->build_hdr_set = f->build_dirty = false;
	if (shm_now(f, &a) && sqlite3_exec(f->db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK) {
		step = sqlite3_step(f->netlens);
		if ((step == SQLITE_ROW || step == SQLITE_DONE) && shm_now(f, &b) && hdr_eq(&a, &b)) {
			f->build_hdr = a;
			f->build_hdr_set = true;
			rc = step == SQLITE_ROW ? 1 : 0;
		}
	}
	pthread_mutex_unlock(&f->lock);
	return rc;
}

/* The rest of netlens (first row at hand when row is 1), then every key. */
static int scan(sqlite_filter *f, farray *t, int row)
{
	int step = row ? SQLITE_ROW : SQLITE_DONE;
	size_t rows = 0;

	for (; step == SQLITE_ROW; step = sqlite3_step(f->netlens))
		farray_add_len(t, sqlite3_column_int64(f->netlens, 0), sqlite3_column_int64(f->netlens, 1));
	sqlite3_reset(f->netlens);
	if (step != SQLITE_DONE)
		return -1;
	while ((step = sqlite3_step(f->keys)) == SQLITE_ROW) {
		const char *key = (const char *)sqlite3_column_text(f->keys, 0);

		if (key)
			keyfilter_add_hash(t->keys,
			                   keyfilter_hash(key, (size_t)sqlite3_column_bytes(f->keys, 0)));
		if (++rows % SCAN_STOP_CHECK == 0 && atomic_load_explicit(&f->stop, memory_order_relaxed))
			break;
	}
	sqlite3_reset(f->keys);
	/* Every row is a distinct key (the primary key); writes during the scan counted theirs. */
	atomic_fetch_add_explicit(&t->count, rows, memory_order_relaxed);
	return step == SQLITE_DONE ? 0 : -1;
}

/* Publish t unless a write the builder cannot account for came in between; t or the old filter is spare. */
static int build_finish(sqlite_filter *f, farray *t, bool ok)
{
	farray *old;

	pthread_mutex_lock(&f->lock);
	ok = ok && f->build_hdr_set && !f->build_dirty && !atomic_load(&f->stop);
	f->building = NULL;
	if (ok) {
		old = atomic_load_explicit(&f->active, memory_order_relaxed);
		publish(f, t, &f->build_hdr);
		t = old;
	}
	pthread_mutex_unlock(&f->lock);
	f->spare = t;
	return ok ? 0 : -1;
}

static int build(sqlite_filter *f)
{
	farray *t = build_target(f);
	int row, ok;

	if (!t)
		return -1;
	row = build_start(f, t);
	/* In the snapshot, whose schema may have changed since the last build (a rebuilt table). */
	ok = row >= 0 && keys_compare_as_bytes(f->db) && scan(f, t, row) == 0;
	sqlite3_reset(f->netlens);
	if (!sqlite3_get_autocommit(f->db))
		sqlite3_exec(f->db, "COMMIT", NULL, NULL, NULL);
	return build_finish(f, t, ok);
}

/* Under lock: is the published filter out of date, and not by a write of this process still running? */
static bool needs_build(sqlite_filter *f)
{
	farray *a = atomic_load_explicit(&f->active, memory_order_relaxed);
	hdr now, cur;

	if (!atomic_load(&f->valid) || farray_full(a))
		return true;
	if (atomic_load(&f->writing) > 0)
		return false; /* its end publishes, or asks again */
	current_read(f, &cur);
	return !shm_now(f, &now) || !hdr_eq(&now, &cur);
}

static void wait_until(sqlite_filter *f, int64_t when_ms)
{
	struct timespec ts = {.tv_sec = when_ms / 1000, .tv_nsec = when_ms % 1000 * 1000000};

	pthread_cond_timedwait(&f->wake, &f->lock, &ts);
}

/* Copy the write-ahead log into the database, as far as readers let it; never waits for a lock. */
static void checkpoint(sqlite_filter *f)
{
	pthread_mutex_unlock(&f->lock);
	sqlite3_wal_checkpoint_v2(f->db, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
	pthread_mutex_lock(&f->lock);
}

static void *builder_main(void *arg)
{
	sqlite_filter *f = arg;
	int64_t next = 0, start;

	if (builder_open(f) < 0)
		return NULL;
	pthread_mutex_lock(&f->lock);
	atomic_store(&f->running, true);
	while (!atomic_load(&f->stop)) {
		if (atomic_exchange(&f->checkpointing, false)) {
			checkpoint(f);
			continue;
		}
		if (!atomic_load(&f->requested)) {
			pthread_cond_wait(&f->wake, &f->lock);
			continue;
		}
		if (now_ms() < next) {
			wait_until(f, next); /* a checkpoint wakes it */
			continue;
		}
		atomic_store(&f->requested, false);
		if (!needs_build(f))
			continue;
		pthread_mutex_unlock(&f->lock);
		start = now_ms();
		if (build(f) < 0)
			atomic_store(&f->requested, true); /* again after the gap */
		next = now_ms() + (now_ms() - start) * GAP_PER_BUILD_MS;
		if (next < start + MIN_GAP_MS)
			next = start + MIN_GAP_MS;
		pthread_mutex_lock(&f->lock);
	}
	atomic_store(&f->running, false);
	pthread_mutex_unlock(&f->lock);
	return NULL;
}

/* The first check starts the builder, with every signal blocked (the daemon takes them elsewhere). */
static void start(sqlite_filter *f)
{
	sigset_t all, old;

	if (atomic_exchange(&f->started, true))
		return;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_mutex_lock(&f->lock);
	atomic_store(&f->requested, true);
	if (!atomic_load(&f->stop) && pthread_create(&f->thread, NULL, builder_main, f) == 0) {
		f->thread_running = true;
		pthread_setname_np(f->thread, "store-filter");
	}
	pthread_mutex_unlock(&f->lock);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* --- the interface ------------------------------------------------------- */

sqlite_filter *sqlite_filter_new(const char *path)
{
	sqlite_filter *f = calloc(1, sizeof(*f));
	pthread_condattr_t attr;

	if (!f || !(f->path = strdup(path))) {
		free(f);
		return NULL;
	}
	pthread_mutex_init(&f->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&f->wake, &attr);
	pthread_condattr_destroy(&attr);
	return f;
}

void sqlite_filter_free(sqlite_filter *f)
{
	bool running;

	if (!f)
		return;
	pthread_mutex_lock(&f->lock);
	atomic_store(&f->stop, true);
	pthread_cond_signal(&f->wake);
	running = f->thread_running;
	pthread_mutex_unlock(&f->lock);
	if (running)
		pthread_join(f->thread, NULL);
	sqlite3_finalize(f->netlens);
	sqlite3_finalize(f->keys);
	sqlite3_finalize(f->count);
	sqlite3_close(f->db);
	farray_free(atomic_load(&f->active));
	farray_free(f->spare);
	while (f->retired) {
		farray *next = f->retired->retired_next;
		farray_free(f->retired);
		f->retired = next;
	}
	pthread_cond_destroy(&f->wake);
	pthread_mutex_destroy(&f->lock);
	free(f->path);
	free(f);
}

/* The published header is not the file's: ask for a build unless a write of this process will settle it. */
static void stale(sqlite_filter *f)
{
	if (atomic_load_explicit(&f->writing, memory_order_relaxed) == 0)
		request(f);
}

/*
 * The published array when it describes the file now (*seq: the
 * publication it belongs to, to check again after reading it; *now: the
 * header); NULL when the filter cannot tell.
 */
static farray *current_array(sqlite_filter *f, uint64_t *seq, hdr *now)
{
	const volatile uint32_t *shm = atomic_load_explicit(&f->shm, memory_order_acquire);
	hdr cur;

	if (!shm) {
		if (!atomic_load_explicit(&f->started, memory_order_relaxed))
			start(f);
		return NULL;
	}
	*seq = atomic_load_explicit(&f->seq, memory_order_acquire);
	if ((*seq & 1) || !atomic_load_explicit(&f->valid, memory_order_relaxed))
		return NULL;
	current_read(f, &cur);
	if (!shm_read(shm, now) || !hdr_eq(now, &cur)) {
		stale(f);
		return NULL;
	}
	/*
	 * On a weakly ordered CPU this load may still see the NULL of before
	 * the first publication although valid and current looked new; the
	 * caller's seq re-check rejects such a view, but only after the reads.
	 * A stale non-NULL array is harmless: arrays are retired, never freed
	 * while the filter lives.
	 */
	return atomic_load_explicit(&f->active, memory_order_acquire);
}

static void farray_lens(const farray *a, store_netmask *out)
{
	out->v4 = atomic_load_explicit(&a->v4, memory_order_relaxed);
	for (int i = 0; i < 3; i++)
		out->v6[i] = atomic_load_explicit(&a->v6[i], memory_order_relaxed);
}

/* Are all the lengths of m in built? */
static bool lens_within(const store_netmask *m, const store_netmask *built)
{
	uint64_t out = m->v4 & ~built->v4;

	for (int i = 0; i < 3; i++)
		out |= m->v6[i] & ~built->v6[i];
	return out == 0;
}

static bool seq_unchanged(const sqlite_filter *f, uint64_t seq)
{
	atomic_thread_fence(memory_order_acquire);
	return atomic_load_explicit(&f->seq, memory_order_relaxed) == seq;
}

int sqlite_filter_check(sqlite_filter *f, const char *const *keys, const int16_t *netlens, size_t nkeys,
                        uint64_t *maybe, sqlite_filter_view *view)
{
	return sqlite_filter_check_built(f, keys, netlens, nkeys, NULL, maybe, view);
}

int sqlite_filter_check_built(sqlite_filter *f, const char *const *keys, const int16_t *netlens, size_t nkeys,
                              const store_netmask *built, uint64_t *maybe, sqlite_filter_view *view)
{
	uint64_t seq, bits = 0, tested = 0, hashes[64];
	hdr now;
	int n = 0;
	farray *a = current_array(f, &seq, &now);

	if (!a || nkeys > 64)
		return -1;
	if (built) {
		store_netmask present;

		farray_lens(a, &present);
		if (!lens_within(&present, built))
			return -1; /* SQLite then tells the caller its keys are too few */
	}
	/*
	 * Two passes: the blocks of every key of a length the file holds are
	 * asked for first, then tested. The filter is megabytes, so each test
	 * is a cache miss; this way the misses of a request's keys overlap.
	 */
	for (size_t i = 0; i < nkeys; i++)
		if (farray_len_may_have(a, netlen_of(keys[i], netlens, i))) {
			hashes[i] = keyfilter_hash(keys[i], strlen(keys[i]));
			keyfilter_prefetch_hash(a->keys, hashes[i]);
			tested |= UINT64_C(1) << i;
		}
	for (size_t i = 0; i < nkeys; i++)
		if ((tested >> i & 1) && keyfilter_may_have_hash(a->keys, hashes[i])) {
			bits |= UINT64_C(1) << i;
			n++;
		}
	if (!seq_unchanged(f, seq))
		return -1;
	if (farray_full(a))
		request(f);
	*maybe = bits;
	memcpy(view->hdr, now.w, sizeof(view->hdr));
	return n;
}

bool sqlite_filter_lens(sqlite_filter *f, store_netmask *out)
{
	uint64_t seq;
	hdr now;
	farray *a = current_array(f, &seq, &now);

	if (!a)
		return false;
	farray_lens(a, out);
	return seq_unchanged(f, seq);
}

bool sqlite_filter_checkpoint(sqlite_filter *f)
{
	if (!atomic_load_explicit(&f->running, memory_order_acquire))
		return false;
	if (!atomic_exchange(&f->checkpointing, true)) {
		pthread_mutex_lock(&f->lock);
		pthread_cond_signal(&f->wake);
		pthread_mutex_unlock(&f->lock);
	}
	return true;
}

bool sqlite_filter_unchanged(const sqlite_filter *f, const sqlite_filter_view *view)
{
	hdr now;

	return shm_now(f, &now) && memcmp(now.w, view->hdr, sizeof(view->hdr)) == 0;
}

void sqlite_filter_write_begin(sqlite_filter *f, sqlite_filter_write *w)
{
	hdr h;

	atomic_fetch_add(&f->writing, 1);
	w->known = shm_now(f, &h);
	memcpy(w->hdr, h.w, sizeof(w->hdr));
}

typedef enum { FOLLOWS, ADVANCED, BEHIND } follow;

/*
 * The write went from before to after (alone: it was the only commit in
 * between); x is the header of the state a filter describes. ADVANCED:
 * x was before, and becomes after. FOLLOWS: x is after already (its
 * snapshot started after the commit). BEHIND: x is out of date.
 */
static follow follow_write(hdr *x, const hdr *before, const hdr *after, bool alone)
{
	if (alone && hdr_eq(x, before)) {
		*x = *after;
		return ADVANCED;
	}
	return alone && hdr_eq(x, after) ? FOLLOWS : BEHIND;
}

void sqlite_filter_write_end(sqlite_filter *f, const sqlite_filter_write *w, bool committed,
                             const char *const *keys, size_t nkeys)
{
	hdr before, after, cur;
	bool known, alone;
	farray *a;

	memcpy(before.w, w->hdr, sizeof(before.w));
	known = w->known && shm_now(f, &after);
	/*
	 * The counter moved by one: our commit, if there was one (nobody else
	 * could commit before it, while we held the write lock); after a
	 * ROLLBACK the write lock was free and that one commit was someone
	 * else's.
	 */
	alone = committed && known && after.w[HDR_ICHANGE] == before.w[HDR_ICHANGE] + 1;
	pthread_mutex_lock(&f->lock);
	a = atomic_load_explicit(&f->active, memory_order_relaxed);
	for (size_t i = 0; i < nkeys && committed; i++) {
		if (a)
			farray_add_written(a, keys[i]);
		if (f->building)
			farray_add_written(f->building, keys[i]);
	}
	if (a && farray_full(a))
		request_locked(f);                /* a larger one, before lookups find it full */
	if (!known || !hdr_eq(&before, &after)) { /* something was committed */
		current_read(f, &cur);
		if (atomic_load(&f->valid)) {
			follow fw = follow_write(&cur, &before, &after, alone);
			if (fw == ADVANCED)
				publish(f, a, &cur);
			else if (fw == BEHIND)
				request_locked(f);
		}
		if (f->building && f->build_hdr_set &&
		    follow_write(&f->build_hdr, &before, &after, alone) == BEHIND)
			f->build_dirty = true;
	}
	atomic_fetch_sub(&f->writing, 1);
	pthread_mutex_unlock(&f->lock);
}
