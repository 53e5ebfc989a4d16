/*
 * Unit tests for store/sqlite_filter, on real SQLite files: the filter
 * answers only for the state of the file it was built or kept up for,
 * and never says "absent" for a key a committed write put in the file:
 * a write of another connection (another process, for SQLite: it does
 * not report itself) is seen at once, a write that reports itself keeps
 * the filter in use, and a commit of someone else that slips in between
 * a write's COMMIT and its report is not taken for the write's own. A
 * stress case runs writers of both kinds next to checking threads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store/sqlite_filter.h"
#include "store/store.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define READY_TIMEOUT_S 10.0

static struct {
	char dir[64];
	char path[128];
	int serial;
} T;

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(path);
}

static int suite_setup(void **state)
{
	(void)state;
	snprintf(T.dir, sizeof(T.dir), "/tmp/test_sqlite_filter.XXXXXX");
	return mkdtemp(T.dir) ? 0 : -1;
}

static int suite_teardown(void **state)
{
	(void)state;
	nftw(T.dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	return 0;
}

/* A new file with the store's schema, in WAL mode, as the daemon opens it. */
static int case_setup(void **state)
{
	store_config cfg = {.backend = STORE_BACKEND_SQLITE};
	char err[512] = "";
	store *st;

	(void)state;
	snprintf(T.path, sizeof(T.path), "%s/case%d.db", T.dir, ++T.serial);
	cfg.sqlite_path = T.path;
	st = store_open(&cfg, err, sizeof(err));
	if (!st)
		fail_msg("store_open: %s", err);
	store_free(st);
	return 0;
}

/* A connection of its own: "another process" unless it reports its writes. */
static sqlite3 *db_open(void)
{
	sqlite3 *db = NULL;

	if (sqlite3_open_v2(T.path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK)
		fail_msg("open %s: %s", T.path, db ? sqlite3_errmsg(db) : "out of memory");
	sqlite3_busy_timeout(db, 5000);
	return db;
}

static void exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
		fail_msg("%s: %s", sql, msg ? msg : "?");
}

static void insert(sqlite3 *db, const char *key)
{
	char sql[256];

	snprintf(
	    sql, sizeof(sql),
	    "INSERT INTO blocklist (key, first_seen, last_seen, expires) VALUES ('%s', 1, 1, 4000000000)",
	    key);
	exec(db, sql);
}

/* A write of this process: it reports itself to the filter. */
static void own_insert(sqlite_filter *f, sqlite3 *db, const char *key)
{
	sqlite_filter_write w;
	const char *keys[] = {key};

	exec(db, "BEGIN IMMEDIATE");
	sqlite_filter_write_begin(f, &w);
	insert(db, key);
	exec(db, "COMMIT");
	sqlite_filter_write_end(f, &w, true, keys, 1);
}

static int check1(sqlite_filter *f, const char *key)
{
	const char *keys[] = {key};
	sqlite_filter_view v;
	uint64_t maybe = 0;
	int n = sqlite_filter_check(f, keys, NULL, 1, &maybe, &v);

	if (n >= 0)
		assert_int_equal(n, (int)maybe);
	return n;
}

/* Until the filter answers for the file as it is (it builds in the background). */
static void wait_ready(sqlite_filter *f)
{
	double end = mono() + READY_TIMEOUT_S;

	while (check1(f, "nobody@nowhere.example") < 0) {
		if (mono() > end)
			fail_msg("the filter did not get ready within %.0f s", READY_TIMEOUT_S);
		usleep(5000);
	}
}

/*
 * A hand-made file whose key column compares case-insensitively (a
 * version 1 table with COLLATE NOCASE, which store_open upgrades): SQLite
 * finds "Spammer@Example.COM" for "spammer@example.com", so the filter,
 * which compares bytes, stays off.
 */
static void test_no_filter_for_nocase_keys(void **state)
{
	store_config cfg = {.backend = STORE_BACKEND_SQLITE};
	char err[512] = "";
	sqlite3 *db;
	sqlite_filter *f;
	store *st;

	(void)state;
	snprintf(T.path, sizeof(T.path), "%s/nocase-%d.db", T.dir, ++T.serial);
	assert_int_equal(sqlite3_open(T.path, &db), SQLITE_OK);
	exec(db, "CREATE TABLE blocklist (key TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, first_seen INTEGER "
	         "NOT NULL,"
	         " last_seen INTEGER NOT NULL, expires INTEGER NOT NULL, hits INTEGER NOT NULL DEFAULT 0,"
	         " trap TEXT NOT NULL DEFAULT '', sender TEXT NOT NULL DEFAULT '', recipient TEXT NOT NULL "
	         "DEFAULT '',"
	         " client TEXT NOT NULL DEFAULT '', helo TEXT NOT NULL DEFAULT '', queue_id TEXT NOT NULL "
	         "DEFAULT '',"
	         " reason TEXT NOT NULL DEFAULT '') WITHOUT ROWID;"
	         " CREATE INDEX blocklist_expires ON blocklist (expires); PRAGMA user_version = 1");
	sqlite3_close(db);
	cfg.sqlite_path = T.path;
	st = store_open(&cfg, err, sizeof(err));
	if (!st)
		fail_msg("store_open: %s", err);
	store_free(st);
	db = db_open();
	insert(db, "Spammer@Example.COM");
	f = sqlite_filter_new(T.path);
	for (int i = 0; i < 100; i++, usleep(5000))
		assert_int_equal(check1(f, "spammer@example.com"), -1);
	sqlite_filter_free(f);
	sqlite3_close(db);
}

/* The same when another program rebuilds the table that way under a running filter. */
static void test_schema_change_turns_it_off(void **state)
{
	sqlite3 *db = db_open();
	sqlite_filter *f = sqlite_filter_new(T.path);

	(void)state;
	wait_ready(f);
	assert_int_equal(check1(f, "spammer@example.com"), 0);
	exec(db, "BEGIN; DROP TABLE blocklist;"
	         " CREATE TABLE blocklist (key TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, first_seen INTEGER "
	         "NOT NULL,"
	         " last_seen INTEGER NOT NULL, expires INTEGER NOT NULL) WITHOUT ROWID;"
	         " INSERT INTO blocklist VALUES ('Spammer@Example.COM', 1, 1, 4000000000); COMMIT");
	for (int i = 0; i < 300; i++, usleep(10000)) /* 3 s: past the builder's gap, so it tries again */
		assert_int_equal(check1(f, "spammer@example.com"), -1);
	sqlite_filter_free(f);
	sqlite3_close(db);
}

/* Keys in the file when it is built are "may be there", others absent; several keys at once. */
static void test_built_from_the_file(void **state)
{
	sqlite3 *db = db_open();
	sqlite_filter *f;
	const char *keys[] = {"x@example.org", "a@example.com", "198.51.100.0/24", "b@example.com"};
	sqlite_filter_view v;
	uint64_t maybe = 0;

	(void)state;
	insert(db, "a@example.com");
	insert(db, "b@example.com");
	f = sqlite_filter_new(T.path);
	assert_non_null(f);
	assert_int_equal(check1(f, "a@example.com"), -1); /* not built yet: cannot tell */
	wait_ready(f);
	assert_int_equal(check1(f, "a@example.com"), 1);
	assert_int_equal(check1(f, "c@example.com"), 0);
	assert_int_equal(sqlite_filter_check(f, keys, NULL, NELEM(keys), &maybe, &v), 2);
	assert_int_equal(maybe, 0xa);
	assert_true(sqlite_filter_unchanged(f, &v));
	insert(db, "c@example.com");
	assert_false(sqlite_filter_unchanged(f, &v));
	sqlite_filter_free(f);
	sqlite3_close(db);
}

/* Another connection's insert: the very next check cannot tell; later, the rebuilt filter has it. */
static void test_other_writer_seen_at_once(void **state)
{
	sqlite3 *db = db_open();
	sqlite_filter *f = sqlite_filter_new(T.path);

	(void)state;
	wait_ready(f);
	assert_int_equal(check1(f, "new@example.com"), 0);
	insert(db, "new@example.com");
	assert_int_equal(check1(f, "new@example.com"), -1);
	wait_ready(f);
	assert_int_equal(check1(f, "new@example.com"), 1);
	/* A delete is a change too: the filter stays correct (a superset) and is rebuilt. */
	exec(db, "DELETE FROM blocklist WHERE key = 'new@example.com'");
	assert_int_equal(check1(f, "new@example.com"), -1);
	wait_ready(f);
	assert_int_equal(check1(f, "new@example.com"), 0);
	sqlite_filter_free(f);
	sqlite3_close(db);
}

/* Writes that report themselves keep the filter answering, with their keys in it. */
static void test_own_writes_keep_it_current(void **state)
{
	sqlite3 *db = db_open();
	sqlite_filter *f = sqlite_filter_new(T.path);
	sqlite_filter_write w;
	const char *keys[] = {"rolled@example.com"};

	(void)state;
	wait_ready(f);
	for (int i = 0; i < 20; i++) {
		char key[64];

		snprintf(key, sizeof(key), "own%d@example.com", i);
		own_insert(f, db, key);
		assert_int_equal(check1(f, key), 1);
		assert_int_equal(check1(f, "absent@example.com"), 0);
	}
	/* Rolled back: nothing committed, the filter still answers. */
	exec(db, "BEGIN IMMEDIATE");
	sqlite_filter_write_begin(f, &w);
	insert(db, "rolled@example.com");
	exec(db, "ROLLBACK");
	sqlite_filter_write_end(f, &w, false, keys, 1);
	assert_int_equal(check1(f, "absent@example.com"), 0);
	assert_int_equal(check1(f, "rolled@example.com"), 0);
	sqlite_filter_free(f);
	sqlite3_close(db);
}

/*
 * A write that commits nothing (a failed insert, ROLLBACK: a full disk),
 * then another connection commits once before the write reports: the
 * counter moved by one, but it was not this write's commit.
 */
static void test_rollback_then_other_commit(void **state)
{
	sqlite3 *db = db_open(), *other = db_open();
	sqlite_filter *f = sqlite_filter_new(T.path);
	sqlite_filter_write w;
	const char *keys[] = {"failed@example.com"};

	(void)state;
	wait_ready(f);
	exec(db, "BEGIN IMMEDIATE");
	sqlite_filter_write_begin(f, &w);
	assert_int_not_equal(
	    sqlite3_exec(db, "INSERT INTO blocklist (key) VALUES ('failed@example.com')", NULL, NULL, NULL),
	    SQLITE_OK); /* NOT NULL columns left out */
	exec(db, "ROLLBACK");
	insert(other, "theirs@example.com");
	sqlite_filter_write_end(f, &w, false, keys, 1);
	assert_int_equal(check1(f, "theirs@example.com"), -1);
	wait_ready(f);
	assert_int_equal(check1(f, "theirs@example.com"), 1);
	sqlite_filter_free(f);
	sqlite3_close(other);
	sqlite3_close(db);
}

/*
 * A file in UTF-16 (an administrator's sqlite3 shell can make one): SQLite
 * converts the text of keys, and a byte that is not UTF-8 does not come
 * back as it went in, so the filter stays off and every lookup asks SQLite.
 */
static void test_no_filter_for_utf16(void **state)
{
	store_config cfg = {.backend = STORE_BACKEND_SQLITE};
	char err[512] = "";
	sqlite3 *db;
	sqlite_filter *f;
	store *st;

	(void)state;
	snprintf(T.path, sizeof(T.path), "%s/utf16-%d.db", T.dir, ++T.serial);
	assert_int_equal(sqlite3_open(T.path, &db), SQLITE_OK);
	exec(db, "PRAGMA encoding = 'UTF-16le'; CREATE TABLE t (x); DROP TABLE t");
	sqlite3_close(db);
	cfg.sqlite_path = T.path;
	st = store_open(&cfg, err, sizeof(err));
	if (!st)
		fail_msg("store_open: %s", err);
	store_free(st);
	db = db_open();
	insert(db, "sp\xffm@example.com");
	f = sqlite_filter_new(T.path);
	for (int i = 0; i < 100; i++, usleep(5000))
		assert_int_equal(check1(f, "sp\xffm@example.com"), -1);
	sqlite_filter_free(f);
	sqlite3_close(db);
}

/* Someone else commits between a write's COMMIT and its report: not taken for the write's own. */
static void test_commit_between_is_not_ours(void **state)
{
	sqlite3 *db = db_open(), *other = db_open();
	sqlite_filter *f = sqlite_filter_new(T.path);
	sqlite_filter_write w;
	const char *keys[] = {"ours@example.com"};

	(void)state;
	wait_ready(f);
	exec(db, "BEGIN IMMEDIATE");
	sqlite_filter_write_begin(f, &w);
	insert(db, "ours@example.com");
	exec(db, "COMMIT");
	insert(other, "theirs@example.com");
	sqlite_filter_write_end(f, &w, true, keys, 1);
	assert_int_equal(check1(f, "theirs@example.com"), -1);
	wait_ready(f);
	assert_int_equal(check1(f, "theirs@example.com"), 1);
	assert_int_equal(check1(f, "ours@example.com"), 1);
	sqlite_filter_free(f);
	sqlite3_close(other);
	sqlite3_close(db);
}

/*
 * Network keys: a length no entry has is absent without a look at the
 * keys (as the store's netlens filter); a write that reports a network
 * key adds its length.
 */
static void test_network_lengths(void **state)
{
	sqlite3 *db = db_open();
	sqlite_filter *f;

	(void)state;
	insert(db, "192.0.2.0/24");
	f = sqlite_filter_new(T.path);
	wait_ready(f);
	assert_int_equal(check1(f, "192.0.2.0/24"), 1);
	assert_int_equal(check1(f, "192.0.2.0/25"), 0);
	assert_int_equal(check1(f, "2001:db8::/32"), 0);
	own_insert(f, db, "2001:db8::/32");
	assert_int_equal(check1(f, "2001:db8::/32"), 1);
	own_insert(f, db, "10.0.0.0/8");
	assert_int_equal(check1(f, "10.0.0.0/8"), 1);
	/* The caller's lengths in place of the parse: the same answers. */
	{
		const char *keys[] = {"192.0.2.0/24", "192.0.2.0/25", "2001:db8::/32", "2001:db8::/36",
		                      "192.0.2.7"};
		const int16_t lens[] = {STORE_NETLEN(4, 24), STORE_NETLEN(4, 25), STORE_NETLEN(6, 32),
		                        STORE_NETLEN(6, 36), STORE_NETLEN_NONE};
		sqlite_filter_view v;
		uint64_t maybe = 0;

		assert_int_equal(sqlite_filter_check(f, keys, lens, NELEM(keys), &maybe, &v), 2);
		assert_int_equal(maybe, 0x5);
	}
	sqlite_filter_free(f);
	sqlite3_close(db);
}

/* n keys k1@example.com ... in the file. */
static void preload(int n)
{
	sqlite3 *db = db_open();
	char sql[512];

	snprintf(sql, sizeof(sql),
	         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d)"
	         " INSERT INTO blocklist (key, first_seen, last_seen, expires)"
	         " SELECT 'k' || i || '@example.com', 1, 1, 4000000000 FROM n",
	         n);
	exec(db, sql);
	sqlite3_close(db);
}

/* Freed while it builds a large file, or before it ever started: no hang, no leak. */
static void test_free_while_building(void **state)
{
	sqlite_filter *f;

	(void)state;
	preload(50000);
	f = sqlite_filter_new(T.path);
	check1(f, "k1@example.com");
	sqlite_filter_free(f);
	sqlite_filter_free(sqlite_filter_new(T.path));
	sqlite_filter_free(NULL);
}

static off_t file_size(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0 ? sb.st_size : -1;
}

/* Checkpoints asked for run on the filter's thread: the log's pages reach the database file. */
static void test_checkpoint_on_its_thread(void **state)
{
	sqlite3 *db = db_open();
	sqlite_filter *f = sqlite_filter_new(T.path);
	off_t before;
	double end;

	(void)state;
	assert_false(sqlite_filter_checkpoint(f)); /* no thread yet: the caller checkpoints */
	wait_ready(f);
	exec(db, "PRAGMA wal_autocheckpoint = 0");
	exec(db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)"
	         " INSERT INTO blocklist (key, first_seen, last_seen, expires)"
	         " SELECT 'c' || i || '@example.com', 1, 1, 4000000000 FROM n");
	before = file_size(T.path);
	assert_true(sqlite_filter_checkpoint(f));
	for (end = mono() + READY_TIMEOUT_S; file_size(T.path) == before && mono() < end;)
		usleep(5000);
	assert_true(file_size(T.path) > before);
	sqlite_filter_free(f);
	sqlite3_close(db);
}

/*
 * Stress: one writer that reports itself and one that does not insert
 * numbered keys; after each COMMIT (and report) they publish the number.
 * Checkers read both numbers, then check those keys: a check that
 * answers must find both. Some checks must have been answered.
 */
struct stress {
	sqlite_filter *f;
	atomic_int own, other; /* the last key committed by each, -1: none yet */
	atomic_bool stop;
	atomic_long answered, wrong;
};

static void *own_writer(void *arg)
{
	struct stress *s = arg;
	sqlite3 *db = db_open();
	char key[64];

	for (int i = 0; !atomic_load(&s->stop); i++) {
		snprintf(key, sizeof(key), "own%d@example.com", i);
		own_insert(s->f, db, key);
		atomic_store(&s->own, i);
		usleep(200);
	}
	sqlite3_close(db);
	return NULL;
}

static void *other_writer(void *arg)
{
	struct stress *s = arg;
	sqlite3 *db = db_open();
	char key[64];

	for (int i = 0; !atomic_load(&s->stop); i++) {
		snprintf(key, sizeof(key), "other%d@example.com", i);
		insert(db, key);
		atomic_store(&s->other, i);
		usleep(i % 20 == 19 ? 1500000 : 20000); /* bursts, then long enough for a rebuild */
	}
	sqlite3_close(db);
	return NULL;
}

/* Key i of a writer, or one of its earlier keys when earlier is set (a random one). */
static void stress_key(char *buf, size_t len, const char *who, int i, bool earlier, unsigned *seed)
{
	snprintf(buf, len, "%s%d@example.com", who, earlier && i > 0 ? rand_r(seed) % i : i);
}

static void *checker(void *arg)
{
	struct stress *s = arg;
	char k[4][64];
	const char *keys[] = {k[0], k[1], k[2], k[3]};
	sqlite_filter_view v;
	unsigned seed = (unsigned)(uintptr_t)&seed;

	while (!atomic_load(&s->stop)) {
		int own = atomic_load(&s->own), other = atomic_load(&s->other);
		uint64_t maybe = 0, want = (own >= 0 ? 0x5 : 0) | (other >= 0 ? 0xa : 0);

		for (int i = 0; i < 4; i++)
			stress_key(k[i], sizeof(k[i]), i % 2 ? "other" : "own", i % 2 ? other : own, i >= 2,
			           &seed);
		if (sqlite_filter_check(s->f, keys, NULL, 4, &maybe, &v) < 0)
			continue;
		atomic_fetch_add(&s->answered, 1);
		if ((maybe & want) != want)
			atomic_fetch_add(&s->wrong, 1);
	}
	return NULL;
}

static void test_stress_never_absent_after_commit(void **state)
{
	struct stress s = {.own = -1, .other = -1};
	pthread_t th[4];
	void *(*fn[4])(void *) = {own_writer, other_writer, checker, checker};

	(void)state;
	preload(100000); /* so that builds take a while, and writes run during them */
	s.f = sqlite_filter_new(T.path);
	wait_ready(s.f);
	for (size_t i = 0; i < NELEM(th); i++)
		assert_int_equal(pthread_create(&th[i], NULL, fn[i], &s), 0);
	sleep(4);
	atomic_store(&s.stop, true);
	for (size_t i = 0; i < NELEM(th); i++)
		pthread_join(th[i], NULL);
	if (atomic_load(&s.wrong))
		fail_msg("%ld of %ld answered checks missed a committed key", atomic_load(&s.wrong),
		         atomic_load(&s.answered));
	if (atomic_load(&s.answered) < 1000)
		fail_msg("only %ld checks were answered by the filter", atomic_load(&s.answered));
	sqlite_filter_free(s.f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup(test_built_from_the_file, case_setup),
	    cmocka_unit_test_setup(test_other_writer_seen_at_once, case_setup),
	    cmocka_unit_test_setup(test_own_writes_keep_it_current, case_setup),
	    cmocka_unit_test_setup(test_commit_between_is_not_ours, case_setup),
	    cmocka_unit_test_setup(test_rollback_then_other_commit, case_setup),
	    cmocka_unit_test(test_no_filter_for_utf16),
	    cmocka_unit_test(test_no_filter_for_nocase_keys),
	    cmocka_unit_test_setup(test_schema_change_turns_it_off, case_setup),
	    cmocka_unit_test_setup(test_network_lengths, case_setup),
	    cmocka_unit_test_setup(test_free_while_building, case_setup),
	    cmocka_unit_test_setup(test_checkpoint_on_its_thread, case_setup),
	    cmocka_unit_test_setup(test_stress_never_absent_after_commit, case_setup),
	};

	return cmocka_run_group_tests_name("sqlite_filter", tests, suite_setup, suite_teardown);
}
