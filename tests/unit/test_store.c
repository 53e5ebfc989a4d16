/*
 * Unit tests for store: one suite, run once against SQLite (a file in a
 * temporary folder) and once against Redis (a real redis-server started
 * here on a free loopback port, stopped by PID). Every case of
 * common_tests[] must behave the same on both; a few cases only make
 * sense for one backend. A missing redis-server fails the suite.
 *
 * Times: Redis expires keys by its own clock (EXPIREAT), so every case
 * uses times near time(NULL); lookups compare expires with the caller's
 * now, which lets expiry be tested without sleeping.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <ftw.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "core/hash.h"
#include "core/key.h"
#include "store/redis_view.h"
#include "store/store.h"
#include "store/store_backend.h"

/* argv[1] of this binary run as another process (clear_in_child). */
#define CHILD_CLEAR "--child-clear-set"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define TTL 3600
#define REDIS_TIMEOUT_MS 300

/* The backend under test and its resources; one suite run at a time. */
static struct {
	store_backend backend;
	char dir[64];
	pid_t redis_pid;
	int redis_port;
	int serial; /* makes each case's file or key prefix unique */
	char path[128];
	char prefix[32];
	store_config cfg;
	bool view; /* the common cases again with store.redis.local_view on */
} B;

static int64_t now_s(void)
{
	return (int64_t)time(NULL);
}

static int cmp_cstr(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --- redis-server -------------------------------------------------------- */

static int free_port(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
		port = ntohs(sa.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

static bool redis_ping(int port)
{
	struct timeval tv = {0, 200000};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
	redisReply *r = NULL;
	bool ok = false;

	if (c && !c->err) {
		redisSetTimeout(c, tv);
		r = redisCommand(c, "PING");
		ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
	}
	if (r)
		freeReplyObject(r);
	if (c)
		redisFree(c);
	return ok;
}

/* Start redis-server on B.redis_port; returns false (with a message) when it does not come up. */
static bool redis_start(void)
{
	char port[16], log[128];
	pid_t pid;

	snprintf(port, sizeof(port), "%d", B.redis_port);
	snprintf(log, sizeof(log), "%s/redis.log", B.dir);
	pid = fork();
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);

		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
		       "--appendonly", "no", "--dir", B.dir, (char *)NULL);
		fprintf(stderr, "cannot run redis-server: %s\n", strerror(errno));
		_exit(127);
	}
	if (pid < 0)
		return false;
	B.redis_pid = pid;
	for (int i = 0; i < 100; i++) {
		int status;

		if (waitpid(pid, &status, WNOHANG) == pid) {
			fprintf(stderr, "redis-server exited (status %d); is it installed? see %s\n", status,
			        log);
			B.redis_pid = 0;
			return false;
		}
		if (redis_ping(B.redis_port))
			return true;
		usleep(50000);
	}
	fprintf(stderr, "redis-server did not answer on port %d\n", B.redis_port);
	return false;
}

/*
 * One command to the test server, after AUTH when password is set: the
 * words of cmd, then extra (which may be empty) when not NULL. True unless
 * it failed.
 */
static bool redis_do_auth(const char *password, const char *cmd, const char *extra)
{
	struct timeval tv = {1, 0};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", B.redis_port, tv);
	char words[128], *save = NULL;
	const char *argv[8];
	int argc = 0;
	redisReply *r = NULL;
	bool ok = c && !c->err;

	if (ok && password) {
		r = redisCommand(c, "AUTH %s", password);
		ok = r && r->type != REDIS_REPLY_ERROR;
		if (r)
			freeReplyObject(r);
	}
	snprintf(words, sizeof(words), "%s", cmd);
	for (char *w = strtok_r(words, " ", &save); w && argc < 7; w = strtok_r(NULL, " ", &save))
		argv[argc++] = w;
	if (extra)
		argv[argc++] = extra;
	r = ok ? redisCommandArgv(c, argc, argv, NULL) : NULL;
	ok = r && r->type != REDIS_REPLY_ERROR;
	if (r)
		freeReplyObject(r);
	if (c)
		redisFree(c);
	return ok;
}

static bool redis_do(const char *cmd)
{
	return redis_do_auth(NULL, cmd, NULL);
}

static void redis_stop(void)
{
	if (B.redis_pid > 0) {
		kill(B.redis_pid, SIGCONT);
		kill(B.redis_pid, SIGTERM);
		waitpid(B.redis_pid, NULL, 0);
	}
	B.redis_pid = 0;
}

/* --- suites and fixtures ------------------------------------------------- */

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(path);
}

static int make_dir(void)
{
	snprintf(B.dir, sizeof(B.dir), "/tmp/test_store.XXXXXX");
	return mkdtemp(B.dir) ? 0 : -1;
}

static int suite_sqlite_setup(void **state)
{
	(void)state;
	memset(&B, 0, sizeof(B));
	B.backend = STORE_BACKEND_SQLITE;
	return make_dir();
}

static int suite_redis_setup(void **state)
{
	(void)state;
	memset(&B, 0, sizeof(B));
	B.backend = STORE_BACKEND_REDIS;
	if (make_dir() < 0)
		return -1;
	B.redis_port = free_port();
	return B.redis_port > 0 && redis_start() ? 0 : -1;
}

static int suite_redis_view_setup(void **state)
{
	int rc = suite_redis_setup(state);

	B.view = true;
	return rc;
}

static int suite_teardown(void **state)
{
	(void)state;
	redis_stop();
	nftw(B.dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	return 0;
}

/* A fresh, empty namespace for the next case: a new file or a new key prefix. */
static int case_setup(void **state)
{
	(void)state;
	B.serial++;
	snprintf(B.path, sizeof(B.path), "%s/case%d.db", B.dir, B.serial);
	snprintf(B.prefix, sizeof(B.prefix), "case%d:", B.serial);
	memset(&B.cfg, 0, sizeof(B.cfg));
	B.cfg.backend = B.backend;
	B.cfg.sqlite_path = B.path;
	B.cfg.redis_host = "127.0.0.1";
	B.cfg.redis_port = B.redis_port;
	B.cfg.redis_prefix = B.prefix;
	B.cfg.redis_connect_timeout_ms = REDIS_TIMEOUT_MS;
	B.cfg.redis_command_timeout_ms = REDIS_TIMEOUT_MS;
	B.cfg.redis_local_view = B.view;
	B.cfg.redis_local_view_keys = 100000;
	return 0;
}

static store *open_store(void)
{
	char err[512] = "";
	store *st = store_open(&B.cfg, err, sizeof(err));

	if (!st)
		fail_msg("store_open: %s", err);
	return st;
}

static store_hit hit_at(int64_t now, const char *trap)
{
	store_hit h = {.now = now,
	               .ttl = TTL,
	               .trap = trap,
	               .sender = "spammer@example.net",
	               .recipient = trap,
	               .client = "192.0.2.7",
	               .helo = "bad.example.net",
	               .queue_id = "4F9D2C1A2B",
	               .reason = NULL};
	return h;
}

static void record1(store *st, const char *key, const store_hit *h)
{
	const char *keys[] = {key};

	if (store_record(st, keys, 1, h) != STORE_OK)
		fail_msg("store_record %s: %s", key, store_last_error());
}

static store_status lookup1(store *st, const char *key, int64_t now, store_entry *e)
{
	const char *keys[] = {key};

	return store_lookup(st, keys, 1, now, e);
}

static store_entry entry_of(const char *key, int64_t first, int64_t expires, const char *reason)
{
	store_entry e;

	memset(&e, 0, sizeof(e));
	snprintf(e.key, sizeof(e.key), "%s", key);
	e.first_seen = e.last_seen = first;
	e.expires = expires;
	snprintf(e.reason, sizeof(e.reason), "%s", reason);
	return e;
}

/* The window of the distinct-set cases, seconds. */
#define WINDOW 100

static uint64_t distinct1(store *st, const char *set, const char *member, int64_t now, uint64_t limit)
{
	uint64_t n = 0;

	if (store_distinct_add(st, set, member, now, WINDOW, limit, &n) != STORE_OK)
		fail_msg("store_distinct_add %s %s: %s", set, member, store_last_error());
	return n;
}

/* --- cases for every backend --------------------------------------------- */

static void test_record_then_lookup(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	store_hit h = hit_at(t, "trap@example.com");
	const char *keys[] = {"spammer@example.net", "192.0.2.7"};
	store_entry e;

	(void)state;
	assert_int_equal(store_record(st, keys, 2, &h), STORE_OK);
	for (size_t i = 0; i < NELEM(keys); i++) {
		assert_int_equal(lookup1(st, keys[i], t + 1, &e), STORE_OK);
		assert_string_equal(e.key, keys[i]);
		assert_int_equal(e.hits, 1);
		assert_int_equal(e.first_seen, t);
		assert_int_equal(e.last_seen, t);
		assert_int_equal(e.expires, t + TTL);
		assert_string_equal(e.trap, "trap@example.com");
		assert_string_equal(e.reason, "trap");
	}
	assert_int_equal(lookup1(st, "spammer@example.net", t, NULL), STORE_OK); /* found may be NULL */
	store_free(st);
}

struct order_case {
	const char *name;
	const char *listed[3];
	const char *keys[5];
	const char *want; /* NULL: a miss */
};

static const struct order_case order_cases[] = {
    {"first listed key wins",
     {"a@example.com", "192.0.2.0/24"},
     {"a@example.com", "192.0.2.7", "192.0.2.0/24"},
     "a@example.com"},
    {"order of keys[], not of recording",
     {"192.0.2.0/24", "a@example.com"},
     {"192.0.2.7", "192.0.2.0/24", "a@example.com"},
     "192.0.2.0/24"},
    {"later key when earlier miss",
     {"@example.com"},
     {"a@example.com", "sasl:bob", "@example.com"},
     "@example.com"},
    {"none listed", {"b@example.com"}, {"a@example.com", "helo:x.example"}, NULL},
    {"duplicate keys",
     {"a@example.com"},
     {"c@example.com", "a@example.com", "a@example.com"},
     "a@example.com"},
};

static void test_lookup_order(void **state)
{
	int64_t t = now_s();

	(void)state;
	for (size_t c = 0; c < NELEM(order_cases); c++) {
		const struct order_case *oc = &order_cases[c];
		store *st;
		store_entry e;
		size_t nkeys = 0;

		case_setup(NULL);
		st = open_store();
		for (size_t i = 0; i < NELEM(oc->listed) && oc->listed[i]; i++) {
			store_hit h = hit_at(t, "trap@example.com");

			record1(st, oc->listed[i], &h);
		}
		while (nkeys < NELEM(oc->keys) && oc->keys[nkeys])
			nkeys++;
		if (oc->want) {
			if (store_lookup(st, oc->keys, nkeys, t + 1, &e) != STORE_OK)
				fail_msg("%s: no hit", oc->name);
			if (strcmp(e.key, oc->want) != 0)
				fail_msg("%s: got %s, want %s", oc->name, e.key, oc->want);
		} else if (store_lookup(st, oc->keys, nkeys, t + 1, &e) != STORE_NOTFOUND) {
			fail_msg("%s: unexpected hit %s", oc->name, e.key);
		}
		store_free(st);
	}
}

static void test_lookup_order_48_keys(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	char buf[48][32];
	const char *keys[49];
	store_entry e;
	store_hit h = hit_at(t, "trap@example.com");

	(void)state;
	for (int i = 0; i < 48; i++) {
		snprintf(buf[i], sizeof(buf[i]), "k%02d@example.com", i);
		keys[i] = buf[i];
	}
	record1(st, keys[47], &h);
	record1(st, keys[30], &h);
	assert_int_equal(store_lookup(st, keys, 48, t, &e), STORE_OK);
	assert_string_equal(e.key, keys[30]);
	keys[48] = "extra@example.com";
	assert_int_equal(store_lookup(st, keys, 49, t, &e), STORE_ERROR);
	assert_non_null(strstr(store_last_error(), "49 keys"));
	store_free(st);
}

static void test_miss(void **state)
{
	store *st = open_store();
	store_entry e;

	(void)state;
	assert_int_equal(lookup1(st, "nobody@example.com", now_s(), &e), STORE_NOTFOUND);
	assert_int_equal(store_lookup(st, NULL, 0, now_s(), &e), STORE_NOTFOUND);
	assert_int_equal(store_get(st, "nobody@example.com", &e), STORE_NOTFOUND);
	store_free(st);
}

static void test_expiry(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	store_hit h = hit_at(t, "trap@example.com");
	store_entry e;

	(void)state;
	record1(st, "a@example.com", &h);
	assert_int_equal(lookup1(st, "a@example.com", t + TTL - 1, &e), STORE_OK);
	assert_int_equal(lookup1(st, "a@example.com", t + TTL, &e), STORE_NOTFOUND);
	assert_int_equal(lookup1(st, "a@example.com", t + 10 * TTL, &e), STORE_NOTFOUND);
	/* Not purged yet: get still shows it, expired. */
	assert_int_equal(store_get(st, "a@example.com", &e), STORE_OK);
	assert_int_equal(e.expires, t + TTL);
	store_free(st);
}

static void test_refresh(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	store_hit h1 = hit_at(t, "trap1@example.com"), h2 = hit_at(t + 60, "trap2@example.com");
	store_entry e;

	(void)state;
	h2.client = "192.0.2.8";
	h2.queue_id = "5A5A5A5A5A";
	record1(st, "a@example.com", &h1);
	record1(st, "a@example.com", &h2);
	assert_int_equal(lookup1(st, "a@example.com", t + 61, &e), STORE_OK);
	assert_int_equal(e.hits, 2);
	assert_int_equal(e.first_seen, t);
	assert_int_equal(e.last_seen, t + 60);
	assert_int_equal(e.expires, t + 60 + TTL);
	assert_string_equal(e.trap, "trap2@example.com");
	assert_string_equal(e.client, "192.0.2.8");
	assert_string_equal(e.queue_id, "5A5A5A5A5A");
	/* A hit never shortens a longer expiry set by hand. */
	e = entry_of("b@example.com", t, t + 10 * TTL, "manual");
	e.hits = 5;
	assert_int_equal(store_put(st, &e), STORE_OK);
	record1(st, "b@example.com", &h2);
	assert_int_equal(store_get(st, "b@example.com", &e), STORE_OK);
	assert_int_equal(e.expires, t + 10 * TTL);
	assert_int_equal(e.hits, 6);
	store_free(st);
}

/* The new listings a hit makes: what the daemon's "block:" lines say. */
static void test_record_tells_new_listings(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	store_hit h = hit_at(t, "trap@example.com"), later = hit_at(t + 60, "trap@example.com");
	const char *keys[] = {"new@example.com", "192.0.2.0/24", "old@example.com", "gone@example.com",
	                      "manual@example.com"};
	bool created[NELEM(keys)];
	store_entry e = entry_of("gone@example.com", t - 2 * TTL, t - 10, "trap");

	(void)state;
	assert_int_equal(store_put(st, &e), STORE_OK); /* expired, not purged: a hit starts a new listing */
	e = entry_of("manual@example.com", t - 3600, t + TTL, "by hand");
	e.hits = 0;
	assert_int_equal(store_put(st, &e), STORE_OK); /* in force, though it never had a hit */
	record1(st, "old@example.com", &h);
	assert_int_equal(store_record_created(st, keys, NELEM(keys), &later, created), STORE_OK);
	assert_true(created[0]);
	assert_true(created[1]);
	assert_false(created[2]);
	assert_true(created[3]);
	assert_false(created[4]);
	assert_int_equal(store_record_created(st, keys, NELEM(keys), &later, created), STORE_OK);
	for (size_t i = 0; i < NELEM(keys); i++)
		assert_false(created[i]);
	store_free(st);
}

static void test_hit_after_expiry_starts_over(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	store_hit h = hit_at(t, "trap@example.com");
	store_entry e = entry_of("a@example.com", t - 2 * TTL, t - 10, "trap");

	(void)state;
	e.hits = 7;
	assert_int_equal(store_put(st, &e), STORE_OK);
	record1(st, "a@example.com", &h);
	assert_int_equal(lookup1(st, "a@example.com", t, &e), STORE_OK);
	assert_int_equal(e.hits, 1);
	assert_int_equal(e.first_seen, t);
	assert_int_equal(e.expires, t + TTL);
	store_free(st);
}

static void test_provenance_round_trip(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	char long_helo[400], want_helo[256];
	store_hit h = {.now = t,
	               .ttl = TTL,
	               .trap = "trap+tag@example.com",
	               .sender = "Ünïcode.sender@exämple.net",
	               .recipient = "trap+tag@example.com",
	               .client = "2001:db8::1",
	               .helo = long_helo,
	               .queue_id = "4F9D2C1A2B",
	               .reason = "by hand"};
	store_entry e;

	(void)state;
	memset(long_helo, 'h', sizeof(long_helo) - 1);
	long_helo[sizeof(long_helo) - 1] = '\0';
	memcpy(want_helo, long_helo, sizeof(want_helo) - 1); /* capped to the field */
	want_helo[sizeof(want_helo) - 1] = '\0';
	record1(st, "sasl:bob", &h);
	assert_int_equal(store_get(st, "sasl:bob", &e), STORE_OK);
	assert_string_equal(e.trap, h.trap);
	assert_string_equal(e.sender, h.sender);
	assert_string_equal(e.recipient, h.recipient);
	assert_string_equal(e.client, h.client);
	assert_string_equal(e.helo, want_helo);
	assert_string_equal(e.queue_id, h.queue_id);
	assert_string_equal(e.reason, "by hand");
	/* NULL provenance is stored as empty. */
	h = (store_hit){.now = t, .ttl = TTL};
	record1(st, "helo:x.example", &h);
	assert_int_equal(store_get(st, "helo:x.example", &e), STORE_OK);
	assert_string_equal(e.trap, "");
	assert_string_equal(e.client, "");
	assert_string_equal(e.reason, "trap");
	store_free(st);
}

static void test_put_get_remove(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	store_entry in = entry_of("192.0.2.0/24", t - 5, t + TTL, "listed by hand"), out;

	(void)state;
	in.hits = 3;
	in.last_seen = t - 1;
	snprintf(in.client, sizeof(in.client), "192.0.2.9");
	assert_int_equal(store_put(st, &in), STORE_OK);
	assert_int_equal(store_get(st, in.key, &out), STORE_OK);
	assert_string_equal(out.key, in.key);
	assert_int_equal(out.first_seen, in.first_seen);
	assert_int_equal(out.last_seen, in.last_seen);
	assert_int_equal(out.expires, in.expires);
	assert_int_equal(out.hits, 3);
	assert_string_equal(out.reason, "listed by hand");
	assert_string_equal(out.client, "192.0.2.9");
	assert_string_equal(out.trap, "");
	/* put replaces everything. */
	in = entry_of("192.0.2.0/24", t, t + 2 * TTL, "again");
	assert_int_equal(store_put(st, &in), STORE_OK);
	assert_int_equal(store_get(st, in.key, &out), STORE_OK);
	assert_int_equal(out.hits, 0);
	assert_string_equal(out.client, "");
	assert_int_equal(out.expires, t + 2 * TTL);
	assert_int_equal(store_remove(st, in.key), STORE_OK);
	assert_int_equal(store_get(st, in.key, &out), STORE_NOTFOUND);
	assert_int_equal(store_remove(st, in.key), STORE_NOTFOUND);
	store_free(st);
}

/* A store_put_many source: "pm<i>@example.com" for i < n; fails at fail_at; an empty key at bad_at. */
struct many_source {
	int64_t t;
	unsigned i, n, fail_at, bad_at;
};

static int many_next(store_entry *e, void *ctx)
{
	struct many_source *m = ctx;
	char key[64];

	if (m->i == m->fail_at)
		return -1;
	if (m->i == m->n)
		return 0;
	snprintf(key, sizeof(key), m->i == m->bad_at ? "" : "pm%u@example.com", m->i);
	*e = entry_of(key, m->t, m->t + TTL + m->i, "bulk");
	e->hits = m->i;
	m->i++;
	return 1;
}

static unsigned many_present(store *st, unsigned n)
{
	unsigned found = 0;
	store_entry e;
	char key[64];

	for (unsigned i = 0; i < n; i++) {
		snprintf(key, sizeof(key), "pm%u@example.com", i);
		found +=
		    store_get(st, key, &e) == STORE_OK && e.hits == i && e.expires == e.first_seen + TTL + i;
	}
	return found;
}

/* Bulk writes: every entry as given, across SQLite's batches; a failing source or a bad key stops it. */
static void test_put_many(void **state)
{
	store *st = open_store();
	/* More than one batch on SQLite; Redis writes each entry in a round trip, so fewer. */
	unsigned n = B.backend == STORE_BACKEND_SQLITE ? STORE_PUT_BATCH + 10 : 200;
	struct many_source m = {.t = now_s(), .n = n, .fail_at = UINT_MAX, .bad_at = UINT_MAX};
	uint64_t written = 0;
	store_entry e;

	(void)state;
	assert_int_equal(store_put_many(st, many_next, &m, &written), STORE_OK);
	assert_int_equal(written, n);
	assert_int_equal(many_present(st, n), n);
	assert_int_equal(lookup1(st, "pm7@example.com", m.t, &e), STORE_OK);
	assert_string_equal(e.key, "pm7@example.com");
	store_free(st);

	B.serial++; /* a fresh store for the failures */
	snprintf(B.path, sizeof(B.path), "%s/case%d.db", B.dir, B.serial);
	snprintf(B.prefix, sizeof(B.prefix), "case%d:", B.serial);
	st = open_store();
	m = (struct many_source){.t = now_s(), .n = 10, .fail_at = 5, .bad_at = UINT_MAX};
	assert_int_equal(store_put_many(st, many_next, &m, &written), STORE_ERROR);
	assert_int_equal(many_present(st, 10), written); /* what it says it wrote, and no more */
	m = (struct many_source){.t = now_s(), .n = 10, .fail_at = UINT_MAX, .bad_at = 3};
	assert_int_equal(store_put_many(st, many_next, &m, &written), STORE_ERROR);
	assert_non_null(strstr(store_last_error(), "empty blocklist key"));
	assert_int_equal(store_put_many(st, NULL, NULL, NULL), STORE_ERROR);
	store_free(st);
}

static void test_purge(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	const int64_t expires[] = {t + 100, t + 200, t + 300, t + 10000};
	const char *keys[] = {"a@example.com", "b@example.com", "c@example.com", "d@example.com"};
	uint64_t purged = 99;
	store_entry e;

	(void)state;
	for (size_t i = 0; i < NELEM(keys); i++) {
		e = entry_of(keys[i], t, expires[i], "test");
		assert_int_equal(store_put(st, &e), STORE_OK);
	}
	assert_int_equal(store_purge(st, t, &purged), STORE_OK);
	assert_int_equal(purged, 0);
	assert_int_equal(store_purge(st, t + 200, &purged), STORE_OK); /* expires <= now goes */
	assert_int_equal(purged, 2);
	assert_int_equal(store_get(st, "a@example.com", &e), STORE_NOTFOUND);
	assert_int_equal(store_get(st, "b@example.com", &e), STORE_NOTFOUND);
	assert_int_equal(store_get(st, "c@example.com", &e), STORE_OK);
	assert_int_equal(store_purge(st, t + 300, NULL), STORE_OK);
	assert_int_equal(store_get(st, "c@example.com", &e), STORE_NOTFOUND);
	assert_int_equal(store_get(st, "d@example.com", &e), STORE_OK);
	store_free(st);
}

struct visit_log {
	char keys[16][64];
	int n;
	int stop_after; /* 0: never */
};

static int visit(const store_entry *e, void *ctx)
{
	struct visit_log *v = ctx;

	if (v->n < 16)
		snprintf(v->keys[v->n], sizeof(v->keys[0]), "%.63s", e->key);
	v->n++;
	return v->stop_after && v->n >= v->stop_after;
}

static void test_foreach(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	const char *keys[] = {"sasl:bob",      "192.0.2.7",      "@example.com",
	                      "a@example.com", "helo:x.example", "z@x.y"};
	const char *want[] = {"192.0.2.7", "@example.com", "a@example.com", "helo:x.example", "sasl:bob"};
	struct visit_log v = {0};

	(void)state;
	assert_int_equal(store_foreach(st, t, visit, &v), STORE_OK); /* empty */
	assert_int_equal(v.n, 0);
	for (size_t i = 0; i < NELEM(keys); i++) {
		store_entry e = entry_of(keys[i], t, strcmp(keys[i], "z@x.y") ? t + TTL : t + 10, "test");

		assert_int_equal(store_put(st, &e), STORE_OK);
	}
	assert_int_equal(store_foreach(st, t + 10, visit, &v), STORE_OK); /* z@x.y expired at t + 10 */
	assert_int_equal(v.n, NELEM(want));
	for (size_t i = 0; i < NELEM(want); i++)
		assert_string_equal(v.keys[i], want[i]);
	memset(&v, 0, sizeof(v));
	v.stop_after = 2;
	assert_int_equal(store_foreach(st, t, visit, &v), STORE_OK);
	assert_int_equal(v.n, 2);
	store_free(st);
}

/* The counts by key type agree with key_type_of, leave out what expired, and follow a remove. */
static void test_count_types(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	const char *keys[] = {"sasl:bob",
	                      "sasl:j doe",
	                      "192.0.2.7",
	                      "192.0.2.0/24",
	                      "2001:db8::/64",
	                      "@example.com",
	                      "a@example.com",
	                      "\"sasl:alice\"@example.com",
	                      "\"@x\"@example.com",
	                      "helo:x.example",
	                      "1@2"};
	uint64_t counts[STORE_KEY_TYPES], want[STORE_KEY_TYPES] = {0};
	store_entry e;

	(void)state;
	assert_int_equal(store_count_types(st, t, counts), STORE_OK); /* empty */
	for (int k = 0; k < STORE_KEY_TYPES; k++)
		assert_int_equal(counts[k], 0);
	for (size_t i = 0; i < NELEM(keys); i++) {
		e = entry_of(keys[i], t, t + TTL, "test");
		assert_int_equal(store_put(st, &e), STORE_OK);
		want[key_type_of(keys[i])]++;
	}
	/* Expired by every clock (Redis drops it at once): not in force. */
	e = entry_of("gone@example.com", t - 100, t - 10, "test");
	assert_int_equal(store_put(st, &e), STORE_OK);
	assert_int_equal(store_count_types(st, t, counts), STORE_OK);
	for (int k = 0; k < STORE_KEY_TYPES; k++)
		assert_int_equal(counts[k], want[k]);
	assert_int_equal(counts[KEY_TYPE_SENDER], 4);
	assert_int_equal(counts[KEY_TYPE_SASL], 2);
	assert_int_equal(store_remove(st, "sasl:bob"), STORE_OK);
	assert_int_equal(store_count_types(st, t, counts), STORE_OK);
	assert_int_equal(counts[KEY_TYPE_SASL], 1);
	assert_int_equal(counts[KEY_TYPE_NETWORK], 3);
	store_free(st);
}

#define THREADS 8
#define ROUNDS 150

struct worker {
	store *st;
	int id;
	int64_t t;
	atomic_int *errors;
	char last_error[256];
};

static void *work(void *arg)
{
	struct worker *w = arg;
	char own[64];
	const char *keys[] = {"shared@example.com", own};
	store_hit h = hit_at(w->t, "trap@example.com");
	store_entry e;

	snprintf(own, sizeof(own), "worker%d@example.com", w->id);
	for (int i = 0; i < ROUNDS; i++) {
		store_status rc = store_record(w->st, keys, 2, &h);

		if (rc == STORE_OK)
			rc = store_lookup(w->st, keys, 2, w->t, &e);
		if (rc == STORE_OK && strcmp(e.key, "shared@example.com") != 0)
			rc = STORE_NOTFOUND;
		if (rc != STORE_OK) {
			atomic_fetch_add(w->errors, 1);
			snprintf(w->last_error, sizeof(w->last_error), "%d: %s", rc, store_last_error());
		}
	}
	return NULL;
}

static void test_concurrent(void **state)
{
	store *st = open_store();
	pthread_t th[THREADS];
	struct worker w[THREADS];
	atomic_int errors = 0;
	store_entry e;

	(void)state;
	for (int i = 0; i < THREADS; i++) {
		w[i] = (struct worker){.st = st, .id = i, .t = now_s(), .errors = &errors};
		assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < THREADS; i++)
		if (w[i].last_error[0])
			fail_msg("%d errors, e.g. %s", atomic_load(&errors), w[i].last_error);
	assert_int_equal(atomic_load(&errors), 0);
	assert_int_equal(store_get(st, "shared@example.com", &e), STORE_OK);
	assert_int_equal(e.hits, THREADS * ROUNDS);
	assert_int_equal(store_get(st, "worker3@example.com", &e), STORE_OK);
	assert_int_equal(e.hits, ROUNDS);
	store_free(st);
}

static void test_persistence(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	store_hit h = hit_at(t, "trap@example.com");
	store_entry e;

	(void)state;
	record1(st, "a@example.com", &h);
	store_free(st);
	st = open_store();
	assert_int_equal(lookup1(st, "a@example.com", t, &e), STORE_OK);
	assert_int_equal(e.hits, 1);
	store_free(st);
}

static void test_long_keys(void **state)
{
	store *st = open_store();
	char longest[STORE_KEY_MAX], too_long[STORE_KEY_MAX + 1];
	int64_t t = now_s();
	store_hit h = hit_at(t, "trap@example.com");
	const char *keys[] = {too_long};
	store_entry e;

	(void)state;
	memset(longest, 'a', sizeof(longest) - 1);
	memcpy(longest + sizeof(longest) - 13, "@example.com", 13);
	memset(too_long, 'b', sizeof(too_long) - 1);
	too_long[sizeof(too_long) - 1] = '\0';
	record1(st, longest, &h);
	assert_int_equal(lookup1(st, longest, t, &e), STORE_OK);
	assert_string_equal(e.key, longest);
	assert_int_equal(store_record(st, keys, 1, &h), STORE_ERROR);
	assert_non_null(strstr(store_last_error(), "longer than"));
	assert_int_equal(store_lookup(st, keys, 1, t, &e), STORE_ERROR);
	assert_int_equal(store_get(st, "", &e), STORE_ERROR);
	store_free(st);
}

static void test_bad_arguments(void **state)
{
	store *st = open_store();
	store_hit h = hit_at(now_s(), "trap@example.com");
	const char *keys[] = {"a@example.com", NULL};

	(void)state;
	h.ttl = 0;
	assert_int_equal(store_record(st, keys, 1, &h), STORE_ERROR);
	assert_non_null(strstr(store_last_error(), "ttl"));
	h.ttl = TTL;
	assert_int_equal(store_record(st, keys, 2, &h), STORE_ERROR);
	assert_int_equal(store_record(st, keys, 0, &h), STORE_OK);
	assert_int_equal(store_foreach(st, 0, NULL, NULL), STORE_ERROR);
	assert_string_equal(store_backend_name(st), B.backend == STORE_BACKEND_SQLITE ? "sqlite" : "redis");
	store_free(st);
	store_free(NULL);
}

/* --- network lengths: lookups skip lengths no entry has ------------------ */

#define CLIENT_KEYS 32

/*
 * The lookup keys of a client address as core/decide.c makes them: the
 * host, then the network at every length (IPv4 /31../8, IPv6 /124../16 in
 * steps of 4), most specific first. Returns how many.
 */
static size_t client_keys(const char *addr, char keys[][64])
{
	unsigned char b[16], m[16];
	bool v6 = strchr(addr, ':') != NULL;
	int bits = v6 ? 128 : 32, step = v6 ? 4 : 1, min = v6 ? 16 : 8;
	char text[INET6_ADDRSTRLEN];
	size_t n = 0;

	assert_int_equal(inet_pton(v6 ? AF_INET6 : AF_INET, addr, b), 1);
	for (int len = bits; len >= min && n < CLIENT_KEYS; len -= step) {
		for (int i = 0; i < bits / 8; i++) {
			int keep = len - 8 * i;

			m[i] = keep >= 8   ? b[i]
			       : keep <= 0 ? 0
			                   : (unsigned char)(b[i] & (0xff << (8 - keep)));
		}
		assert_non_null(inet_ntop(v6 ? AF_INET6 : AF_INET, m, text, sizeof(text)));
		if (len == bits)
			snprintf(keys[n++], 64, "%s", text);
		else
			snprintf(keys[n++], 64, "%s/%d", text, len);
	}
	return n;
}

/* A MAIL FROM lookup list: sender, the client's keys, sender domain, HELO. */
typedef struct lookup_list {
	char client[CLIENT_KEYS][64];
	const char *keys[CLIENT_KEYS + 3];
	size_t n;
} lookup_list;

static void lookup_list_of(lookup_list *l, const char *sender, const char *addr)
{
	size_t nclient = client_keys(addr, l->client);

	l->n = 0;
	l->keys[l->n++] = sender;
	for (size_t i = 0; i < nclient; i++)
		l->keys[l->n++] = l->client[i];
	l->keys[l->n++] = "@example.com";
	l->keys[l->n++] = "helo:mx.example.com";
}

/* The key the lookup finds for this sender and client, "" for none. */
static const char *found_for(store *st, const char *sender, const char *addr, int64_t now)
{
	static char key[STORE_KEY_MAX];
	lookup_list l;
	store_entry e;
	store_status rc;

	lookup_list_of(&l, sender, addr);
	rc = store_lookup(st, l.keys, l.n, now, &e);
	if (rc == STORE_ERROR)
		fail_msg("lookup for %s: %s", addr, store_last_error());
	snprintf(key, sizeof(key), "%s", rc == STORE_OK ? e.key : "");
	return key;
}

static void put_key(store *st, const char *key, int64_t t)
{
	store_entry e = entry_of(key, t, t + TTL, "listed by hand");

	if (store_put(st, &e) != STORE_OK)
		fail_msg("store_put %s: %s", key, store_last_error());
}

/*
 * A purge also (re)builds what the lookups filter with; Redis trusts its
 * netlens hash only after one (the daemon purges every
 * store.purge_interval). SQLite keeps its table by triggers from the start.
 */
static store *open_filtering(int64_t t)
{
	store *st = open_store();

	assert_int_equal(store_purge(st, t, NULL), STORE_OK);
	return st;
}

struct netlen_case {
	const char *name;
	const char *listed[4];
	const char *sender, *client;
	const char *want; /* "" for a miss */
};

static const struct netlen_case netlen_cases[] = {
    {"a /22 holds the client", {"192.0.0.0/22"}, "x@example.org", "192.0.3.77", "192.0.0.0/22"},
    {"a /22 elsewhere", {"192.0.4.0/22"}, "x@example.org", "192.0.3.77", ""},
    {"most specific network first",
     {"192.0.0.0/16", "192.0.0.0/22", "192.0.3.0/24"},
     "x@example.org",
     "192.0.3.77",
     "192.0.3.0/24"},
    {"sender before the networks",
     {"192.0.3.0/24", "a@example.com"},
     "a@example.com",
     "192.0.3.77",
     "a@example.com"},
    {"domain after networks that miss",
     {"198.51.100.0/24", "@example.com"},
     "x@example.org",
     "192.0.3.77",
     "@example.com"},
    {"the host itself", {"192.0.3.77", "192.0.0.0/16"}, "x@example.org", "192.0.3.77", "192.0.3.77"},
    {"IPv4 /8", {"10.0.0.0/8"}, "x@example.org", "10.1.2.3", "10.0.0.0/8"},
    {"IPv4 /31", {"10.1.2.2/31", "10.0.0.0/8"}, "x@example.org", "10.1.2.3", "10.1.2.2/31"},
    {"IPv6 /48", {"2001:db8:1::/48"}, "x@example.org", "2001:db8:1:2::5", "2001:db8:1::/48"},
    {"IPv6 /124 before /48",
     {"2001:db8:1::/48", "2001:db8:1:2::/124"},
     "x@example.org",
     "2001:db8:1:2::5",
     "2001:db8:1:2::/124"},
    {"IPv6 /16", {"2001::/16"}, "x@example.org", "2001:db8::1", "2001::/16"},
    {"IPv6 length of an IPv4 entry", {"192.0.0.0/24"}, "x@example.org", "2001:db8::1", ""},
    {"IPv4 client, IPv6 entry of its length", {"2001:d00::/24"}, "x@example.org", "192.0.3.77", ""},
};

/* Lengths the caller knows: the same answers as store_lookup; a wrong one fails the call (a caller bug). */
static void test_lookup_netlens(void **state)
{
	int64_t t = now_s();
	store *st = open_store();
	const char *keys[] = {"x@example.org", "192.0.2.7", "192.0.2.0/24", "2001:db8::/32", "@example.org"};
	int16_t lens[] = {STORE_NETLEN_NONE, STORE_NETLEN_NONE, STORE_NETLEN(4, 24), STORE_NETLEN(6, 32),
	                  STORE_NETLEN_NONE};
	store_entry e;

	(void)state;
	assert_int_equal(store_lookup_netlens(st, keys, lens, NELEM(keys), t, &e), STORE_NOTFOUND);
	put_key(st, "2001:db8::/32", t);
	assert_int_equal(store_lookup_netlens(st, keys, lens, NELEM(keys), t, &e), STORE_OK);
	assert_string_equal(e.key, "2001:db8::/32");
	put_key(st, "192.0.2.0/24", t);
	assert_int_equal(store_lookup_netlens(st, keys, lens, NELEM(keys), t, &e), STORE_OK);
	assert_string_equal(e.key, "192.0.2.0/24");
	assert_int_equal(store_lookup_netlens(st, keys, NULL, NELEM(keys), t, &e), STORE_ERROR);
	assert_int_equal(store_lookup_netlens(st, keys, lens, 0, t, &e), STORE_NOTFOUND);
#ifndef NDEBUG
	lens[2] = STORE_NETLEN(4, 25);
	assert_int_equal(store_lookup_netlens(st, keys, lens, NELEM(keys), t, &e), STORE_ERROR);
	assert_non_null(strstr(store_last_error(), "192.0.2.0/24"));
#endif
	store_free(st);
}

/*
 * Entries at network lengths are found for a client inside them, in
 * keys[] order, whatever else is stored; each case first looks up once
 * (so that whatever a backend caches is filled), then adds the entries
 * through the same handle and looks up again.
 */
static void test_netlen_lookups(void **state)
{
	int64_t t = now_s();

	(void)state;
	for (size_t c = 0; c < NELEM(netlen_cases); c++) {
		const struct netlen_case *nc = &netlen_cases[c];
		store *st;
		const char *got;

		case_setup(NULL);
		st = open_filtering(t);
		assert_string_equal(found_for(st, nc->sender, nc->client, t), "");
		for (size_t i = 0; i < NELEM(nc->listed) && nc->listed[i]; i++)
			put_key(st, nc->listed[i], t);
		got = found_for(st, nc->sender, nc->client, t + 1);
		if (strcmp(got, nc->want) != 0)
			fail_msg("%s: got \"%s\", want \"%s\"", nc->name, got, nc->want);
		store_free(st);
	}
}

/* An entry removed (or expired and purged) is no longer found; the length may come back. */
static void test_netlen_remove(void **state)
{
	int64_t t = now_s();
	store *st = open_filtering(t);
	uint64_t purged = 0;

	(void)state;
	put_key(st, "192.0.0.0/22", t);
	assert_string_equal(found_for(st, "x@example.org", "192.0.3.77", t), "192.0.0.0/22");
	assert_int_equal(store_remove(st, "192.0.0.0/22"), STORE_OK);
	assert_string_equal(found_for(st, "x@example.org", "192.0.3.77", t), "");
	put_key(st, "192.0.0.0/22", t);
	assert_string_equal(found_for(st, "x@example.org", "192.0.3.77", t), "192.0.0.0/22");
	/* Expired and purged, then listed again by a trap hit. */
	assert_int_equal(store_purge(st, t + TTL, &purged), STORE_OK);
	assert_int_equal(purged, 1);
	assert_string_equal(found_for(st, "x@example.org", "192.0.3.77", t + TTL), "");
	{
		store_hit h = hit_at(t + TTL, "trap@example.com");

		record1(st, "192.0.0.0/22", &h);
	}
	assert_string_equal(found_for(st, "x@example.org", "192.0.3.77", t + TTL), "192.0.0.0/22");
	store_free(st);
}

/*
 * A second handle on the same store (spamtrapctl next to the daemon,
 * another MX host on the same Redis) adds and removes entries at lengths
 * the first handle has not seen: its next lookup must see each change.
 */
static void test_netlen_other_handle(void **state)
{
	int64_t t = now_s();
	store *a = open_filtering(t), *b = open_store();
	const char *keys[] = {"192.0.3.0/24", "2001:db8:1::/48"};
	store_hit h = hit_at(t, "trap@example.com");

	(void)state;
	assert_string_equal(found_for(a, "x@example.org", "192.0.3.77", t), "");
	assert_string_equal(found_for(a, "x@example.org", "2001:db8:1:2::5", t), "");
	put_key(b, "192.0.0.0/22", t);
	assert_string_equal(found_for(a, "x@example.org", "192.0.3.77", t), "192.0.0.0/22");
	assert_int_equal(store_remove(b, "192.0.0.0/22"), STORE_OK);
	assert_string_equal(found_for(a, "x@example.org", "192.0.3.77", t), "");
	assert_int_equal(store_record(b, keys, NELEM(keys), &h), STORE_OK);
	assert_string_equal(found_for(a, "x@example.org", "192.0.3.77", t), "192.0.3.0/24");
	assert_string_equal(found_for(a, "x@example.org", "2001:db8:1:2::5", t), "2001:db8:1::/48");
	put_key(b, "192.0.3.64/26", t);
	assert_string_equal(found_for(a, "x@example.org", "192.0.3.77", t), "192.0.3.64/26");
	store_free(b);
	store_free(a);
}

struct netlen_worker {
	store *st;
	const lookup_list *list;
	int64_t t;
	const char *want; /* "" for a miss */
	int errors;
	char last_error[256];
};

static void *netlen_work(void *arg)
{
	struct netlen_worker *w = arg;
	store_entry e;

	for (int i = 0; i < 40; i++) {
		store_status rc = store_lookup(w->st, w->list->keys, w->list->n, w->t, &e);
		const char *got = rc == STORE_OK ? e.key : "";

		if (rc == STORE_ERROR || strcmp(got, w->want) != 0) {
			w->errors++;
			snprintf(w->last_error, sizeof(w->last_error), "status %d, got \"%.64s\": %.128s", rc,
			         got, rc == STORE_ERROR ? store_last_error() : "");
		}
	}
	return NULL;
}

/* THREADS threads look up l at once (more than a pool holds), each expecting want. */
static void netlen_workers(store *st, const lookup_list *l, int64_t t, const char *want)
{
	pthread_t th[THREADS];
	struct netlen_worker w[THREADS];

	for (int i = 0; i < THREADS; i++) {
		w[i] = (struct netlen_worker){.st = st, .list = l, .t = t, .want = want};
		assert_int_equal(pthread_create(&th[i], NULL, netlen_work, &w[i]), 0);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < THREADS; i++)
		if (w[i].errors)
			fail_msg("want \"%s\": %d wrong lookups in thread %d, e.g. %s", want, w[i].errors, i,
			         w[i].last_error);
}

/* Every pooled connection of the first handle sees what the second adds and removes. */
static void test_netlen_other_handle_pool(void **state)
{
	int64_t t = now_s();
	store *a = open_filtering(t), *b = open_store();
	lookup_list l;

	(void)state;
	lookup_list_of(&l, "x@example.org", "198.51.101.9");
	netlen_workers(a, &l, t, "");
	put_key(b, "198.51.100.0/23", t);
	netlen_workers(a, &l, t, "198.51.100.0/23");
	assert_int_equal(store_remove(b, "198.51.100.0/23"), STORE_OK);
	netlen_workers(a, &l, t, "");
	store_free(b);
	store_free(a);
}

/* --- keys built only for the lengths present (store_netlens) -------------- */

static bool mask_has(const store_netmask *m, int family, int len)
{
	return family == 4 ? m->v4 >> len & 1 : m->v6[len / 64] >> (len % 64) & 1;
}

/* store_lookup_built with the MAIL FROM keys of addr, its networks only at the lengths of built. */
static store_status lookup_built_for(store *st, const char *addr, const store_netmask *built, bool *stale,
                                     store_entry *e)
{
	lookup_list l;
	const char *keys[CLIENT_KEYS + 3];
	int16_t netlens[CLIENT_KEYS + 3];
	size_t n = 0;

	lookup_list_of(&l, "x@example.org", addr);
	for (size_t i = 0; i < l.n; i++) {
		int family, len = store_net_key_len(l.keys[i], &family);

		if (len >= 0 && !mask_has(built, family, len))
			continue;
		netlens[n] = len < 0 ? STORE_NETLEN_NONE : STORE_NETLEN(family, len);
		keys[n++] = l.keys[i];
	}
	return store_lookup_built(st, keys, netlens, n, built, now_s(), e, stale);
}

/* The filter is built in the background after the first lookup: its lengths, once it has them. */
static bool netlens_soon(store *st, store_netmask *m)
{
	for (int i = 0; i < 500; i++) {
		if (store_netlens(st, m))
			return true;
		found_for(st, "x@example.org", "192.0.3.77", now_s());
		usleep(10000);
	}
	return false;
}

/*
 * Keys built for too few lengths are never answered "not found" when an
 * entry has another length, also one another handle wrote after the
 * lengths were read: the caller is told to build them all (stale). A
 * backend that does not know its lengths always says so.
 */
static void test_lookup_built(void **state)
{
	int64_t t = now_s();
	store *a = open_filtering(t), *b;
	bool sqlite = strcmp(store_backend_name(a), "sqlite") == 0, stale = false;
	store_netmask built = {UINT64_C(1) << 32 | UINT64_C(1) << 24, {0, 0, 1}}, m;
	store_entry e;

	(void)state;
	put_key(a, "192.0.0.0/22", t);
	assert_int_equal(lookup_built_for(a, "192.0.3.77", &built, &stale, &e), STORE_NOTFOUND);
	assert_true(stale);
	built.v4 |= UINT64_C(1) << 22;
	assert_int_equal(lookup_built_for(a, "192.0.3.77", &built, &stale, &e),
	                 sqlite ? STORE_OK : STORE_NOTFOUND);
	assert_true(stale == !sqlite);
	if (!sqlite) {
		assert_false(store_netlens(a, &m));
		store_free(a);
		return;
	}
	assert_string_equal(e.key, "192.0.0.0/22");
	assert_true(netlens_soon(a, &m));
	assert_true(mask_has(&m, 4, 22));
	assert_false(mask_has(&m, 4, 16));
	m.v4 |= UINT64_C(1) << 32 | UINT64_C(1) << 24;
	m.v6[2] |= 1;
	assert_int_equal(lookup_built_for(a, "192.0.3.77", &m, &stale, &e), STORE_OK);
	assert_false(stale);
	assert_int_equal(lookup_built_for(a, "198.51.100.1", &m, &stale, &e), STORE_NOTFOUND);
	assert_false(stale);
	b = open_store();
	put_key(b, "198.51.0.0/16", t); /* a length the mask a read has not */
	assert_int_equal(lookup_built_for(a, "198.51.100.1", &m, &stale, &e), STORE_NOTFOUND);
	assert_true(stale);
	assert_true(!store_netlens(a, &built) || mask_has(&built, 4, 16));
	store_free(b);
	store_free(a);
}

/* --- SQLite only --------------------------------------------------------- */

static void test_sqlite_file(void **state)
{
	store *st = open_store();
	struct stat sb;
	char err[512] = "";
	store_config bad = B.cfg;

	(void)state;
	assert_int_equal(stat(B.path, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0640);
	store_free(st);
	bad.sqlite_path = "/nonexistent-dir/x/spamtrapd.db";
	assert_null(store_open(&bad, err, sizeof(err)));
	assert_non_null(strstr(err, "/nonexistent-dir/x/spamtrapd.db"));
	assert_non_null(strstr(err, "No such file or directory"));
	bad.sqlite_path = ":memory:";
	assert_null(store_open(&bad, err, sizeof(err)));
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void test_sqlite_not_ours(void **state)
{
	char err[512] = "";
	char cmd[512];

	(void)state;
	write_file(B.path, "this is not a database, just text that is long enough to look like a header");
	assert_null(store_open(&B.cfg, err, sizeof(err)));
	assert_non_null(strstr(err, B.path));
	unlink(B.path);
	/* A newer schema version is refused, not damaged. */
	snprintf(cmd, sizeof(cmd), "sqlite3 %s 'CREATE TABLE blocklist(key TEXT); PRAGMA user_version = 8;'",
	         B.path);
	if (system(cmd) != 0)
		fail_msg("sqlite3 command line tool missing");
	assert_null(store_open(&B.cfg, err, sizeof(err)));
	assert_non_null(strstr(err, "schema version 8"));
}

/* Run sql with the sqlite3 tool (another process) on the case's file; its output, lines joined by blanks. */
static void sqlite_cli(const char *sql, char *out, size_t outlen)
{
	char cmd[1024];
	FILE *p;
	size_t n = 0;
	int ch;

	snprintf(cmd, sizeof(cmd), "sqlite3 -cmd '.timeout 5000' %s \"%s\"", B.path, sql);
	p = popen(cmd, "r");
	if (!p)
		fail_msg("cannot run sqlite3: %s", strerror(errno));
	while ((ch = fgetc(p)) != EOF)
		if (n + 1 < outlen)
			out[n++] = ch == '\n' ? ' ' : (char)ch;
	while (n > 0 && out[n - 1] == ' ')
		n--;
	out[n] = '\0';
	if (pclose(p) != 0)
		fail_msg("sqlite3 failed: %s", sql);
}

#define NETLENS_SQL "SELECT family || '/' || len || '=' || n FROM netlens ORDER BY family, len"

static void assert_netlens(const char *want)
{
	char got[256];

	sqlite_cli(NETLENS_SQL, got, sizeof(got));
	assert_string_equal(got, want);
}

/* The triggers count network keys per length through every kind of write; other keys are not counted. */
static void test_sqlite_netlens_counts(void **state)
{
	int64_t t = now_s();
	store *st = open_store();
	store_hit h = hit_at(t, "trap@example.com");
	const char *keys[] = {"192.0.2.0/24",  "198.51.100.0/24", "192.0.0.0/16", "a@example.com",
	                      "2001:db8::/32", "192.0.2.7",       "sasl:a/b",     "helo:x/24"};

	(void)state;
	for (size_t i = 0; i < NELEM(keys); i++)
		put_key(st, keys[i], t);
	assert_netlens("4/16=1 4/24=2 6/32=1");
	put_key(st, "192.0.2.0/24", t);  /* replaced, not counted twice */
	record1(st, "192.0.2.0/24", &h); /* a hit on it */
	assert_netlens("4/16=1 4/24=2 6/32=1");
	assert_int_equal(store_remove(st, "192.0.2.0/24"), STORE_OK);
	assert_netlens("4/16=1 4/24=1 6/32=1");
	record1(st, "203.0.113.0/25", &h);
	assert_netlens("4/16=1 4/24=1 4/25=1 6/32=1");
	assert_int_equal(store_purge(st, t + TTL, NULL), STORE_OK);
	assert_netlens("");
	store_free(st);
}

/*
 * Another process writes the file: the next lookup sees it. And the
 * filter is in effect: a row whose length is not counted (written with
 * the trigger dropped) is not looked for until its length is.
 */
static void test_sqlite_netlens_other_process(void **state)
{
	int64_t t = now_s();
	store *st = open_filtering(t);
	char sql[512], out[64];

	(void)state;
	assert_string_equal(found_for(st, "x@example.org", "198.51.101.9", t), "");
	snprintf(
	    sql, sizeof(sql),
	    "INSERT INTO blocklist (key, first_seen, last_seen, expires) VALUES ('198.51.100.0/23', %lld, "
	    "%lld, %lld)",
	    (long long)t, (long long)t, (long long)(t + TTL));
	sqlite_cli(sql, out, sizeof(out));
	assert_string_equal(found_for(st, "x@example.org", "198.51.101.9", t), "198.51.100.0/23");
	sqlite_cli("DELETE FROM blocklist WHERE key = '198.51.100.0/23'", out, sizeof(out));
	assert_string_equal(found_for(st, "x@example.org", "198.51.101.9", t), "");
	snprintf(sql, sizeof(sql),
	         "DROP TRIGGER netlens_insert; INSERT INTO blocklist (key, first_seen, last_seen, expires) "
	         "VALUES ('203.0.113.0/26', %lld, %lld, %lld)",
	         (long long)t, (long long)t, (long long)(t + TTL));
	sqlite_cli(sql, out, sizeof(out));
	assert_string_equal(found_for(st, "x@example.org", "203.0.113.9", t), "");
	sqlite_cli("INSERT INTO netlens VALUES (4, 26, 1)", out, sizeof(out));
	assert_string_equal(found_for(st, "x@example.org", "203.0.113.9", t), "203.0.113.0/26");
	store_free(st);
}

/* A version 1 file (before netlens) is upgraded at open, counting the network keys it has. */
/*
 * A version 2 file (a blocklist of spamtrapd before distinct sets: the
 * current schema less distinct_members) gets the table on open, in one
 * step, keeping its entries; opening again changes nothing.
 */
static void test_sqlite_upgrade_v2(void **state)
{
	int64_t t = now_s();
	store_hit h = hit_at(t, "trap@example.com");
	char out[256];
	store *st = open_store();
	store_entry e;

	(void)state;
	record1(st, "old@example.com", &h);
	record1(st, "192.0.2.0/24", &h);
	store_free(st);
	sqlite_cli("DROP TABLE distinct_members; PRAGMA user_version = 2;", out, sizeof(out));
	sqlite_cli("SELECT name FROM sqlite_master WHERE name LIKE 'distinct%'", out, sizeof(out));
	assert_string_equal(out, "");
	st = open_store();
	assert_int_equal(lookup1(st, "old@example.com", t, &e), STORE_OK);
	assert_int_equal(lookup1(st, "192.0.2.0/24", t, &e), STORE_OK);
	assert_int_equal(distinct1(st, "sender_domain:example.com", "192.0.2.0/24", t, 0), 1);
	store_free(st);
	sqlite_cli("PRAGMA user_version", out, sizeof(out));
	assert_string_equal(out, "7");
	sqlite_cli("SELECT name FROM sqlite_master WHERE name LIKE 'distinct%' ORDER BY name", out,
	           sizeof(out));
	assert_string_equal(out, "distinct_members distinct_members_expires");
	assert_netlens("4/24=1");
	st = open_store();
	assert_int_equal(distinct1(st, "sender_domain:example.com", "198.51.100.0/24", t, 0), 2);
	store_free(st);
}

/* A purge drops the distinct sets' expired members too (in chunks), and only those. */
static void test_sqlite_distinct_purge(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	uint64_t purged = 0;
	char out[64], member[32];

	(void)state;
	for (int i = 0; i < 2500; i++) {
		snprintf(member, sizeof(member), "old%d", i);
		distinct1(st, "purge-me", member, t, 0);
	}
	distinct1(st, "keep-me", "young", t + WINDOW, 0);
	sqlite_cli("SELECT count(*) FROM distinct_members", out, sizeof(out));
	assert_string_equal(out, "2501");
	assert_int_equal(store_purge(st, t + WINDOW, &purged), STORE_OK);
	assert_int_equal(purged, 0); /* blocklist entries only */
	sqlite_cli("SELECT set_name || '/' || member FROM distinct_members", out, sizeof(out));
	assert_string_equal(out, "keep-me/young");
	store_free(st);
}

static void test_sqlite_upgrade_v1(void **state)
{
	int64_t t = now_s();
	char sql[1024], out[64];
	store *st;

	(void)state;
	snprintf(
	    sql, sizeof(sql),
	    "CREATE TABLE blocklist (key TEXT PRIMARY KEY NOT NULL, first_seen INTEGER NOT NULL,"
	    " last_seen INTEGER NOT NULL, expires INTEGER NOT NULL, hits INTEGER NOT NULL DEFAULT 0,"
	    " trap TEXT NOT NULL DEFAULT '', sender TEXT NOT NULL DEFAULT '', recipient TEXT NOT NULL"
	    " DEFAULT '', client TEXT NOT NULL DEFAULT '', helo TEXT NOT NULL DEFAULT '', queue_id TEXT NOT"
	    " NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '') WITHOUT ROWID;"
	    " CREATE INDEX blocklist_expires ON blocklist (expires);"
	    " INSERT INTO blocklist (key, first_seen, last_seen, expires) VALUES ('192.0.0.0/22', %lld, %lld,"
	    " %lld), ('2001:db8:1::/48', %lld, %lld, %lld), ('a@example.com', %lld, %lld, %lld);"
	    " PRAGMA user_version = 1;",
	    (long long)t, (long long)t, (long long)(t + TTL), (long long)t, (long long)t,
	    (long long)(t + TTL), (long long)t, (long long)t, (long long)(t + TTL));
	sqlite_cli(sql, out, sizeof(out));
	st = open_store();
	assert_string_equal(found_for(st, "x@example.org", "192.0.3.77", t), "192.0.0.0/22");
	assert_string_equal(found_for(st, "x@example.org", "2001:db8:1:2::5", t), "2001:db8:1::/48");
	assert_string_equal(found_for(st, "a@example.com", "192.0.3.77", t), "a@example.com");
	store_free(st);
	sqlite_cli("PRAGMA user_version", out, sizeof(out));
	assert_string_equal(out, "7");
	assert_netlens("4/22=1 6/48=1");
	st = open_store(); /* opening again changes nothing */
	store_free(st);
	assert_netlens("4/22=1 6/48=1");
}

/*
 * A blocklist of spamtrapd 0.1.0 (issue 11), the same rows in either
 * store: keys as 0.1.0 wrote them, with the sender each recorded ("" for
 * entries added by hand). 0.1.0 keyed the sender "sasl:alice@sink.test"
 * (from <"sasl:alice"@sink.test>) as the SASL user alice@sink.test.
 */
typedef struct old_row {
	const char *key, *sender;
	int64_t first_ago, expires_in;
	int hits;
} old_row;

static const old_row old_rows[] = {
    {"192.0.2.0/24", "x@bad.example", 60, TTL, 1},
    {"spammer@bad.example", "spammer@bad.example", 60, TTL, 3},
    {"sasl:alice@sink.test", "sasl:alice@sink.test", 60, TTL, 1},
    {"helo:mx@bad.example", "helo:mx@bad.example", 60, TTL, 1},
    {"@a@bad.example", "@a@bad.example", 60, TTL, 1},
    {"\"x\"@quoted.example", "\"x\"@quoted.example", 60, TTL, 1},
    {"sasl:Bob", "bob@corp.example", 500, 100, 2},
    {"sasl:bob", "", 10, TTL, 1},
    {"sasl:Carol@Corp.Example", "carol@corp.example", 60, TTL, 1},
    {"sasl:dave@corp.example", "", 60, TTL, 0},
    {"helo:mx.bad.example", "x@bad.example", 60, TTL, 1},
};

/* After the upgrade: every key in force, in order, with its hits. */
static const struct {
	const char *key;
	int hits;
} new_rows[] = {
    {"\"@a\"@bad.example", 1},
    {"\"\\\"x\\\"\"@quoted.example", 1},
    {"\"helo:mx\"@bad.example", 1},
    {"\"sasl:alice\"@sink.test", 1},
    {"192.0.2.0/24", 1},
    {"helo:mx.bad.example", 1},
    {"sasl:bob", 3},
    {"sasl:carol@corp.example", 1},
    {"sasl:dave@corp.example", 0},
    {"spammer@bad.example", 3},
};

static int collect_keys(const store_entry *e, void *ctx)
{
	char(*keys)[STORE_KEY_MAX] = ctx;
	size_t i = 0;

	while (keys[i][0] && i < 31)
		i++;
	snprintf(keys[i], STORE_KEY_MAX, "%s", e->key);
	return 0;
}

/* The upgraded store: the keys of new_rows[], the SASL user unblocked, the rest blocking as before. */
static void assert_upgraded(store *st, int64_t t)
{
	static char keys[32][STORE_KEY_MAX];
	const char *user[] = {"sasl:alice@sink.test", "198.51.100.5"};
	const char *spammer[] = {"\"sasl:alice\"@sink.test", "203.0.113.5"};
	store_entry e;
	size_t n = 0;

	memset(keys, 0, sizeof(keys));
	assert_int_equal(store_foreach(st, t, collect_keys, keys), STORE_OK);
	while (keys[n][0])
		n++;
	qsort(keys, n, STORE_KEY_MAX, (int (*)(const void *, const void *))strcmp);
	for (size_t i = 0; i < n; i++)
		print_message("after the upgrade: %s\n", keys[i]);
	assert_int_equal(n, NELEM(new_rows));
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(keys[i], new_rows[i].key);
		assert_int_equal(store_get(st, keys[i], &e), STORE_OK);
		assert_int_equal(e.hits, new_rows[i].hits);
	}
	/* The real SASL user alice@sink.test is no longer refused; the spammer's sender still is. */
	assert_int_equal(store_lookup(st, user, NELEM(user), t, &e), STORE_NOTFOUND);
	assert_int_equal(store_lookup(st, spammer, NELEM(spammer), t, &e), STORE_OK);
	assert_string_equal(e.key, "\"sasl:alice\"@sink.test");
	assert_string_equal(e.sender, "sasl:alice@sink.test");
	/* Merged: the later expiry with its provenance, the earlier first seen, the hits added up. */
	assert_int_equal(store_get(st, "sasl:bob", &e), STORE_OK);
	assert_int_equal(e.expires, t + TTL);
	assert_int_equal(e.first_seen, t - 500);
	assert_string_equal(e.sender, "");
	/* The other entries of 0.1.0 block as they did. */
	assert_string_equal(found_for(st, "x@example.org", "192.0.2.9", t), "192.0.2.0/24");
	assert_string_equal(found_for(st, "spammer@bad.example", "203.0.113.9", t), "spammer@bad.example");
	assert_int_equal(lookup1(st, "sasl:dave@corp.example", t, &e), STORE_OK);
	assert_int_equal(lookup1(st, "sasl:carol@corp.example", t, &e), STORE_OK);
	assert_int_equal(lookup1(st, "helo:mx.bad.example", t, &e), STORE_OK);
}

/* Run an SQL script with the sqlite3 tool on the case's file (from a file: rows hold quotes). */
static void sqlite_script(const char *fixture, const char *sql)
{
	char path[160], cmd[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/script.sql", B.dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(sql, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "sqlite3 -bail %s < %s && sqlite3 -bail %s < %s", B.path, fixture, B.path,
	         path);
	if (system(cmd) != 0)
		fail_msg("sqlite3 failed: %s", cmd);
}

/*
 * A file of spamtrapd 0.1.0 (its schema, tests/data/blocklist-0.1.0.sql)
 * opens as version 3 with its keys typed: the entry a sender spelled as
 * the SASL user's key wrote no longer blocks that user, SASL names are
 * lowercased (duplicates merged), and every other entry still blocks.
 */
static void test_sqlite_upgrade_0_1_0(void **state)
{
	int64_t t = now_s();
	char sql[4096], out[64];
	size_t n = 0;
	store *st;

	(void)state;
	for (size_t i = 0; i < NELEM(old_rows); i++) {
		const old_row *r = &old_rows[i];

		n += (size_t)snprintf(
		    sql + n, sizeof(sql) - n,
		    "INSERT INTO blocklist (key, sender, first_seen, last_seen, expires, hits)"
		    " VALUES ('%s', '%s', %lld, %lld, %lld, %d);\n",
		    r->key, r->sender, (long long)(t - r->first_ago), (long long)(t - r->first_ago),
		    (long long)(t + r->expires_in), r->hits);
	}
	assert_true(n < sizeof(sql));
	sqlite_script("../data/blocklist-0.1.0.sql", sql);
	st = open_store();
	assert_upgraded(st, t);
	store_free(st);
	sqlite_cli("PRAGMA user_version", out, sizeof(out));
	assert_string_equal(out, "7");
	assert_netlens("4/24=1");
	st = open_store(); /* opening again changes nothing */
	assert_upgraded(st, t);
	store_free(st);
}

/*
 * Another process holding a lock on the case's file: the sqlite3 tool runs
 * sql (with .bail on, so a failed lock is an exit, not a false "locked")
 * and keeps its transaction until locker_stop() closes its input.
 */
typedef struct locker {
	pid_t pid;
	FILE *in;
} locker;

static locker locker_start(const char *sql)
{
	int in[2], out[2];
	locker l;
	FILE *rd;
	char line[64] = "";

	if (pipe(in) < 0 || pipe(out) < 0)
		fail_msg("pipe: %s", strerror(errno));
	l.pid = fork();
	if (l.pid == 0) {
		dup2(in[0], STDIN_FILENO);
		dup2(out[1], STDOUT_FILENO);
		close(in[0]), close(in[1]), close(out[0]), close(out[1]);
		execlp("sqlite3", "sqlite3", "-batch", "-bail", B.path, (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	l.in = fdopen(in[1], "w");
	rd = fdopen(out[0], "r");
	assert_non_null(l.in);
	assert_non_null(rd);
	fprintf(l.in, "%s\nSELECT 'locked';\n", sql);
	fflush(l.in);
	if (!fgets(line, sizeof(line), rd) || strcmp(line, "locked\n") != 0)
		fail_msg("the sqlite3 tool did not take the lock (%s)", sql);
	fclose(rd);
	return l;
}

static void locker_stop(locker *l)
{
	int status = 0;

	fclose(l->in);
	assert_int_equal(waitpid(l->pid, &status, 0), l->pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static store_status record_timed(store *st, const char *key, double *secs)
{
	const char *keys[] = {key};
	store_hit h = hit_at(now_s(), "trap@example.com");
	double start = mono();
	store_status rc = store_record(st, keys, 1, &h);

	*secs = mono() - start;
	return rc;
}

/* Poll until a write works again, at most limit seconds. */
static bool writes_recover(store *st, double limit)
{
	double start = mono(), secs;

	while (mono() - start < limit) {
		if (record_timed(st, "again@example.com", &secs) == STORE_OK)
			return true;
		usleep(50000);
	}
	return false;
}

/*
 * Another process holds the write lock (an sqlite3 shell left in a
 * transaction): a write gives up within the store's wait (2 s), the next
 * ones fail at once while backing off, lookups go on meanwhile, and writes
 * work again, with no new handle, once the lock is gone.
 */
static void test_sqlite_locked_by_other_process(void **state)
{
	int64_t t = now_s();
	store *st = open_store();
	store_hit h = hit_at(t, "trap@example.com");
	locker l;
	double secs;

	(void)state;
	record1(st, "listed@example.com", &h);
	l = locker_start("BEGIN IMMEDIATE;");
	assert_int_equal(record_timed(st, "new@example.com", &secs), STORE_ERROR);
	assert_non_null(strstr(store_last_error(), "database is locked"));
	assert_non_null(strstr(store_last_error(), B.path));
	if (secs < 1.5 || secs > 3.0)
		fail_msg("a locked write gave up after %.3f s, not about 2 s", secs);
	assert_int_equal(record_timed(st, "new@example.com", &secs), STORE_ERROR);
	assert_non_null(strstr(store_last_error(), "not waiting"));
	assert_true(secs < 0.2);
	assert_int_equal(lookup1(st, "listed@example.com", t, NULL), STORE_OK);
	assert_int_equal(lookup1(st, "new@example.com", t, NULL), STORE_NOTFOUND);
	locker_stop(&l);
	if (!writes_recover(st, 3.0))
		fail_msg("writes did not work again after the lock went: %s", store_last_error());
	record1(st, "new@example.com", &h);
	assert_int_equal(lookup1(st, "new@example.com", t, NULL), STORE_OK);
	store_free(st);
}

#define LOCKED_WRITERS 8

struct locked_writer {
	store *st;
	int id;
	store_status rc;
	double secs;
};

static void *locked_write(void *arg)
{
	struct locked_writer *w = arg;
	char key[64];

	snprintf(key, sizeof(key), "writer%d@example.com", w->id);
	w->rc = record_timed(w->st, key, &w->secs);
	return NULL;
}

/*
 * More writers than the pool has connections, all stuck behind another
 * process's lock: each gives up within the one wait (not one wait after
 * another), and none holds a connection a lookup needs meanwhile.
 */
static void test_sqlite_locked_writers_bounded(void **state)
{
	int64_t t = now_s();
	store *st = open_store();
	store_hit h = hit_at(t, "trap@example.com");
	pthread_t th[LOCKED_WRITERS];
	struct locked_writer w[LOCKED_WRITERS];
	locker l;
	double start, worst = 0;

	(void)state;
	record1(st, "listed@example.com", &h);
	l = locker_start("BEGIN IMMEDIATE;");
	for (int i = 0; i < LOCKED_WRITERS; i++) {
		w[i] = (struct locked_writer){.st = st, .id = i};
		assert_int_equal(pthread_create(&th[i], NULL, locked_write, &w[i]), 0);
	}
	usleep(200000);
	for (int i = 0; i < 20; i++) {
		start = mono();
		assert_int_equal(lookup1(st, "listed@example.com", t, NULL), STORE_OK);
		if (mono() - start > worst)
			worst = mono() - start;
		usleep(20000);
	}
	if (worst > 0.2)
		fail_msg("a lookup waited %.3f s behind writers stuck on a lock", worst);
	for (int i = 0; i < LOCKED_WRITERS; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(w[i].rc, STORE_ERROR);
		if (w[i].secs > 3.0)
			fail_msg("writer %d waited %.3f s", i, w[i].secs);
	}
	locker_stop(&l);
	assert_true(writes_recover(st, 3.0));
	store_free(st);
}

/* A current file opens while another process holds the write lock: only reads are needed. */
static void test_sqlite_open_while_write_locked(void **state)
{
	int64_t t = now_s();
	store *st = open_store();
	store_hit h = hit_at(t, "trap@example.com");
	locker l;
	double start;

	(void)state;
	record1(st, "listed@example.com", &h);
	store_free(st);
	l = locker_start("BEGIN IMMEDIATE;");
	start = mono();
	st = open_store();
	assert_true(mono() - start < 1.0);
	assert_int_equal(lookup1(st, "listed@example.com", t, NULL), STORE_OK);
	locker_stop(&l);
	record1(st, "new@example.com", &h);
	store_free(st);
}

/* A purge deletes in chunks (one write turn each) and still gets every expired entry. */
static void test_sqlite_purge_in_chunks(void **state)
{
	int64_t t = now_s();
	store *st = open_store();
	store_entry e;
	uint64_t purged = 0;
	char sql[512], out[64];

	(void)state;
	snprintf(sql, sizeof(sql),
	         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)"
	         " INSERT INTO blocklist (key, first_seen, last_seen, expires)"
	         " SELECT 'old' || i || '@example.com', %lld, %lld, %lld FROM n",
	         (long long)(t - 10), (long long)(t - 10), (long long)(t - 1));
	sqlite_cli(sql, out, sizeof(out));
	put_key(st, "live@example.com", t);
	assert_int_equal(store_purge(st, t, &purged), STORE_OK);
	assert_int_equal(purged, 2500);
	assert_int_equal(store_get(st, "old1@example.com", &e), STORE_NOTFOUND);
	assert_int_equal(store_get(st, "old2500@example.com", &e), STORE_NOTFOUND);
	assert_int_equal(store_get(st, "live@example.com", &e), STORE_OK);
	store_free(st);
}

/* --- Redis only ---------------------------------------------------------- */

static void test_redis_expires_by_itself(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	store_hit h = hit_at(t - TTL + 1, "trap@example.com"); /* expires at t + 1 by Redis's clock */
	store_entry e;
	store_status rc = STORE_OK;

	(void)state;
	record1(st, "a@example.com", &h);
	for (int i = 0; i < 40 && rc == STORE_OK; i++) {
		usleep(100000);
		rc = store_get(st, "a@example.com", &e);
	}
	assert_int_equal(rc, STORE_NOTFOUND);
	store_free(st);
}

static void test_redis_db_and_prefix(void **state)
{
	store *st = open_store(), *other;
	int64_t t = now_s();
	store_hit h = hit_at(t, "trap@example.com");
	store_entry e;
	char err[256];

	(void)state;
	record1(st, "a@example.com", &h);
	B.cfg.redis_db = 2;
	other = open_store();
	assert_int_equal(store_get(other, "a@example.com", &e), STORE_NOTFOUND);
	store_free(other);
	B.cfg.redis_db = 0;
	B.cfg.redis_prefix = "other*[prefix]:";
	other = open_store();
	assert_int_equal(store_get(other, "a@example.com", &e), STORE_NOTFOUND);
	record1(other, "b@example.com", &h);
	store_free(other);
	B.cfg.redis_prefix = B.prefix;
	/* A refused setting fails at open, with the server's words. */
	B.cfg.redis_password = "wrong";
	assert_null(store_open(&B.cfg, err, sizeof(err)));
	assert_non_null(strstr(err, "AUTH"));
	B.cfg.redis_password = NULL;
	store_free(st);
}

static store_status lookup_timed(store *st, double *secs)
{
	double start = mono();
	store_status rc = lookup1(st, "a@example.com", now_s(), NULL);

	*secs = mono() - start;
	return rc;
}

/* Poll until the store answers again, at most limit seconds. */
static bool recovers(store *st, double limit)
{
	double start = mono(), secs;

	while (mono() - start < limit) {
		if (lookup_timed(st, &secs) != STORE_ERROR)
			return true;
		usleep(50000);
	}
	return false;
}

static void test_redis_down_and_back(void **state)
{
	store *st = open_store();
	store_hit h = hit_at(now_s(), "trap@example.com");
	double secs;
	store_status rc;

	(void)state;
	record1(st, "a@example.com", &h);
	redis_stop();
	/* Dead server: an error, within the timeouts, and at once while backing off. */
	for (int i = 0; i < 20; i++) {
		rc = lookup_timed(st, &secs);
		assert_int_equal(rc, STORE_ERROR);
		if (secs > 2.0 * REDIS_TIMEOUT_MS / 1000)
			fail_msg("lookup %d took %.3f s with Redis down", i, secs);
	}
	assert_non_null(strstr(store_last_error(), "redis 127.0.0.1:"));
	assert_true(redis_start());
	if (!recovers(st, 8.0))
		fail_msg("no recovery after restart: %s", store_last_error());
	/* The data went with the server (--save ""); the store works again. */
	record1(st, "a@example.com", &h);
	assert_int_equal(lookup_timed(st, &secs), STORE_OK);
	store_free(st);
}

static void test_redis_hung_server(void **state)
{
	store *st = open_store();
	store_hit h = hit_at(now_s(), "trap@example.com");
	double secs;

	(void)state;
	record1(st, "a@example.com", &h);
	kill(B.redis_pid, SIGSTOP);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(lookup_timed(st, &secs), STORE_ERROR);
		if (secs > 3.0 * REDIS_TIMEOUT_MS / 1000)
			fail_msg("lookup %d took %.3f s with Redis stopped", i, secs);
	}
	kill(B.redis_pid, SIGCONT);
	if (!recovers(st, 8.0))
		fail_msg("no recovery after SIGCONT: %s", store_last_error());
	store_free(st);
}

static void test_redis_password(void **state)
{
	int64_t t = now_s();
	store_hit h = hit_at(t, "trap@example.com");
	char err[256];
	store *st;

	(void)state;
	assert_true(redis_do("CONFIG SET requirepass s3cret"));
	assert_null(store_open(&B.cfg, err, sizeof(err)));
	assert_non_null(strstr(err, "NOAUTH"));
	B.cfg.redis_password = "s3cret";
	st = open_store();
	record1(st, "a@example.com", &h);
	assert_int_equal(lookup1(st, "a@example.com", t, NULL), STORE_OK);
	store_free(st);
	assert_true(redis_do_auth("s3cret", "CONFIG SET requirepass", ""));
	B.cfg.redis_password = NULL;
}

/* The server forgot the scripts (restart, SCRIPT FLUSH, failover): EVAL takes over from EVALSHA. */
static void test_redis_script_flush(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	store_hit h = hit_at(t, "trap@example.com");
	uint64_t purged = 9;
	store_entry e;

	(void)state;
	record1(st, "a@example.com", &h);
	assert_true(redis_do("SCRIPT FLUSH"));
	record1(st, "a@example.com", &h);
	assert_int_equal(store_get(st, "a@example.com", &e), STORE_OK);
	assert_int_equal(e.hits, 2);
	assert_true(redis_do("SCRIPT FLUSH"));
	assert_int_equal(store_purge(st, t + 2 * TTL, &purged), STORE_OK);
	assert_int_equal(purged, 1);
	store_free(st);
}

/* After a failover the old master is a replica: writes get READONLY until the connection is replaced. */
static void test_redis_readonly_replica(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	store_hit h = hit_at(t, "trap@example.com");
	const char *keys[] = {"b@example.com"};
	store_status rc = STORE_ERROR;
	double start;

	(void)state;
	record1(st, "a@example.com", &h);
	assert_true(redis_do("REPLICAOF 127.0.0.1 1")); /* a master that never answers */
	assert_int_equal(store_record(st, keys, 1, &h), STORE_ERROR);
	assert_non_null(strstr(store_last_error(), "READONLY"));
	assert_true(redis_do("REPLICAOF NO ONE"));
	start = mono();
	while (rc != STORE_OK && mono() - start < 8.0) {
		rc = store_record(st, keys, 1, &h);
		if (rc != STORE_OK)
			usleep(50000);
	}
	if (rc != STORE_OK)
		fail_msg("writes did not come back: %s", store_last_error());
	assert_int_equal(lookup1(st, "a@example.com", t, NULL), STORE_OK);
	store_free(st);
}

static void test_redis_unreachable_at_open(void **state)
{
	store *st;
	double secs;

	(void)state;
	B.cfg.redis_port = free_port();
	st = open_store(); /* the daemon must start and apply store.on_error */
	assert_int_equal(lookup_timed(st, &secs), STORE_ERROR);
	assert_true(secs < 1.0);
	store_free(st);
	B.cfg.redis_port = B.redis_port;
}

/* The fields of this case's netlens hash other than "gen", sorted, joined by blanks. */
static void redis_netlens(char *out, size_t outlen)
{
	struct timeval tv = {1, 0};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", B.redis_port, tv);
	redisReply *r = c && !c->err ? redisCommand(c, "HKEYS %snetlens", B.prefix) : NULL;
	const char *names[32];
	size_t n = 0, len = 0;

	assert_non_null(r);
	assert_int_equal(r->type, REDIS_REPLY_ARRAY);
	for (size_t i = 0; i < r->elements && n < NELEM(names); i++)
		if (strcmp(r->element[i]->str, "gen") != 0)
			names[n++] = r->element[i]->str;
	qsort(names, n, sizeof(names[0]), cmp_cstr);
	out[0] = '\0';
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(out + len, len < outlen ? outlen - len : 0, "%s%s", i ? " " : "",
		                        names[i]);
	freeReplyObject(r);
	redisFree(c);
}

static void assert_redis_netlens(const char *want)
{
	char got[256];

	redis_netlens(got, sizeof(got));
	assert_string_equal(got, want);
}

/* An entry written straight into Redis, around the store (and its netlens hash). */
static void redis_hset_around(const char *key, int64_t expires)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "HSET %sbl:%s expires %lld", B.prefix, key, (long long)expires);
	assert_true(redis_do(cmd));
}

/*
 * The netlens hash: writers add their lengths; lookups trust it only once
 * a purge has rebuilt it (so a server from before it, or one that lost
 * it, is probed in full); a purge also drops lengths whose keys are gone
 * and takes in keys written around the store.
 */
/* The answer of a command to the test's redis-server as text (an integer too), "" when there is none. */
static void redis_text(char *out, size_t outlen, const char *fmt, ...)
{
	struct timeval tv = {1, 0};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", B.redis_port, tv);
	redisReply *r = NULL;
	va_list ap;

	out[0] = '\0';
	va_start(ap, fmt);
	if (c && !c->err)
		r = redisvCommand(c, fmt, ap);
	va_end(ap);
	if (r && r->type == REDIS_REPLY_INTEGER)
		snprintf(out, outlen, "%lld", r->integer);
	else if (r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS))
		snprintf(out, outlen, "%s", r->str);
	if (r)
		freeReplyObject(r);
	if (c)
		redisFree(c);
}

/* docs/redis.md: a sorted set at PREFIX "ds:" SET, members scored by expiry, with Redis's own expiry. */
static void test_redis_distinct_layout(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	char key[128], out[64], want[32];
	long long pttl;

	(void)state;
	snprintf(key, sizeof(key), "%sds:sender_domain:example.com", B.prefix);
	distinct1(st, "sender_domain:example.com", "192.0.2.0/24", t, 0);
	distinct1(st, "sender_domain:example.com", "198.51.100.0/24", t + 1, 0);
	redis_text(out, sizeof(out), "ZCARD %s", key);
	assert_string_equal(out, "2");
	redis_text(out, sizeof(out), "ZSCORE %s %s", key, "192.0.2.0/24");
	snprintf(want, sizeof(want), "%lld", (long long)(t + WINDOW));
	assert_string_equal(out, want);
	redis_text(out, sizeof(out), "PTTL %s", key);
	pttl = atoll(out);
	assert_true(pttl > (WINDOW - 10) * 1000 && pttl <= WINDOW * 1000);
	/* A set whose members all expired is empty at the next call, whatever Redis has not deleted yet. */
	assert_int_equal(distinct1(st, "sender_domain:example.com", "203.0.113.0/24", t + 1 + WINDOW, 0), 1);
	redis_text(out, sizeof(out), "ZCARD %s", key);
	assert_string_equal(out, "1");
	store_free(st);
}

static void test_redis_netlens(void **state)
{
	int64_t t = now_s();
	store *st = open_store();
	store_hit h = hit_at(t, "trap@example.com");
	const char *keys[] = {"198.51.100.0/24", "2001:db8:1::/48", "a@example.com", "192.0.2.7"};
	char cmd[256];

	(void)state;
	assert_int_equal(store_record(st, keys, NELEM(keys), &h), STORE_OK);
	assert_redis_netlens("4/24 6/48");
	/* Not trusted yet: every key is probed. */
	redis_hset_around("203.0.113.0/25", t + TTL);
	assert_string_equal(found_for(st, "x@example.org", "203.0.113.9", t), "203.0.113.0/25");
	assert_int_equal(store_purge(st, t, NULL), STORE_OK);
	assert_redis_netlens("4/24 4/25 6/48 ok");
	assert_string_equal(found_for(st, "x@example.org", "203.0.113.9", t), "203.0.113.0/25");
	/* Trusted: a length no writer announced is skipped, until the next purge takes it in. */
	redis_hset_around("203.0.113.0/26", t + TTL);
	assert_string_equal(found_for(st, "x@example.org", "203.0.113.9", t), "203.0.113.0/25");
	assert_int_equal(store_purge(st, t, NULL), STORE_OK);
	assert_string_equal(found_for(st, "x@example.org", "203.0.113.9", t), "203.0.113.0/26");
	/* A key gone by itself (Redis expiry) leaves its length until the next purge. */
	snprintf(cmd, sizeof(cmd), "DEL %sbl:198.51.100.0/24", B.prefix);
	assert_true(redis_do(cmd));
	assert_redis_netlens("4/24 4/25 4/26 6/48 ok");
	assert_int_equal(store_purge(st, t, NULL), STORE_OK);
	assert_redis_netlens("4/25 4/26 6/48 ok");
	/* put and a second handle announce their lengths too. */
	put_key(st, "192.0.0.0/22", t);
	assert_redis_netlens("4/22 4/25 4/26 6/48 ok");
	assert_string_equal(found_for(st, "x@example.org", "192.0.3.77", t), "192.0.0.0/22");
	store_free(st);
}

/* --- distinct sets (store_distinct_add) ----------------------------------- */

/* Distinct members count once; sets are apart from each other and from the blocklist. */
static void test_distinct_counts(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	store_hit h = hit_at(t, "trap@example.com");
	store_entry e;

	(void)state;
	record1(st, "@example.com", &h);
	assert_int_equal(distinct1(st, "sender_domain:example.com", "192.0.2.0/24", t, 0), 1);
	assert_int_equal(distinct1(st, "sender_domain:example.com", "198.51.100.0/24", t, 0), 2);
	assert_int_equal(distinct1(st, "sender_domain:example.com", "192.0.2.0/24", t + 1, 0), 2);
	assert_int_equal(distinct1(st, "sender_domain:example.org", "192.0.2.0/24", t, 0), 1);
	assert_int_equal(distinct1(st, "sender_domain:example.com", "2001:db8:1::/48", t + 2, 0), 3);
	/* The blocklist is untouched, and its lookups (and the SQLite filter) still answer right. */
	assert_int_equal(lookup1(st, "@example.com", t, &e), STORE_OK);
	assert_int_equal(e.hits, 1);
	assert_int_equal(lookup1(st, "sender_domain:example.com", t, &e), STORE_NOTFOUND);
	assert_int_equal(lookup1(st, "192.0.2.0/24", t, &e), STORE_NOTFOUND);
	store_free(st);
	/* Kept across a reopen. */
	st = open_store();
	assert_int_equal(distinct1(st, "sender_domain:example.com", "203.0.113.0/24", t + 3, 0), 4);
	store_free(st);
}

/* The window slides: a member counts until now + window from its last addition, not a second longer. */
static void test_distinct_window(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	const char *set = "sender_domain:slide.example";

	(void)state;
	assert_int_equal(distinct1(st, set, "a", t, 0), 1);
	assert_int_equal(distinct1(st, set, "b", t + 10, 0), 2);
	assert_int_equal(distinct1(st, set, "c", t + WINDOW - 1, 0), 3);
	/* a expires at t + WINDOW exactly */
	assert_int_equal(distinct1(st, set, "c", t + WINDOW, 0), 2);
	/* a refresh extends: b again at t + WINDOW + 5 lives to t + 2 * WINDOW + 5 */
	assert_int_equal(distinct1(st, set, "b", t + WINDOW + 5, 0), 2);
	assert_int_equal(distinct1(st, set, "d", t + 2 * WINDOW, 0), 2);     /* c (t + 2W) gone, b, d */
	assert_int_equal(distinct1(st, set, "d", t + 2 * WINDOW + 5, 0), 1); /* b gone */
	/* an earlier time never shortens a member */
	assert_int_equal(distinct1(st, set, "d", t, 0), 1);
	assert_int_equal(distinct1(st, set, "e", t + 3 * WINDOW + 4, 0), 2);
	store_free(st);
}

/* limit: a new member beyond it is refused (count limit + 1) and not added; known ones refresh. */
static void test_distinct_limit(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	const char *set = "relay:sasl:alice";

	(void)state;
	assert_int_equal(distinct1(st, set, "n1", t, 2), 1);
	assert_int_equal(distinct1(st, set, "n2", t, 2), 2);
	assert_int_equal(distinct1(st, set, "n3", t + 1, 2), 3);
	assert_int_equal(distinct1(st, set, "n3", t + 2, 2), 3); /* still not added */
	assert_int_equal(distinct1(st, set, "n1", t + 3, 2), 2); /* known: refreshed, passes */
	/* n2 expires at t + WINDOW, n1 lives on to t + 3 + WINDOW: room for one */
	assert_int_equal(distinct1(st, set, "n3", t + WINDOW, 2), 2);
	assert_int_equal(distinct1(st, set, "n4", t + WINDOW, 2), 3);
	/* no limit: the same set grows */
	assert_int_equal(distinct1(st, set, "n4", t + WINDOW, 0), 3);
	store_free(st);
}

static void test_distinct_bad_arguments(void **state)
{
	store *st = open_store();
	char too_long[STORE_KEY_MAX + 1], longest[STORE_KEY_MAX];
	uint64_t n = 99;
	int64_t t = now_s();

	(void)state;
	memset(too_long, 'x', sizeof(too_long) - 1);
	too_long[sizeof(too_long) - 1] = '\0';
	memset(longest, 'y', sizeof(longest) - 1);
	longest[sizeof(longest) - 1] = '\0';
	assert_int_equal(store_distinct_add(st, "", "m", t, WINDOW, 0, &n), STORE_ERROR);
	assert_int_equal(store_distinct_add(st, NULL, "m", t, WINDOW, 0, &n), STORE_ERROR);
	assert_int_equal(store_distinct_add(st, "s", "", t, WINDOW, 0, &n), STORE_ERROR);
	assert_int_equal(store_distinct_add(st, too_long, "m", t, WINDOW, 0, &n), STORE_ERROR);
	assert_int_equal(store_distinct_add(st, "s", too_long, t, WINDOW, 0, &n), STORE_ERROR);
	assert_int_equal(store_distinct_add(st, "s", "m", t, 0, 0, &n), STORE_ERROR);
	assert_int_equal(store_distinct_add(st, "s", "m", INT64_MAX - 5, 10, 0, &n), STORE_ERROR);
	assert_int_equal(n, 99);
	assert_int_equal(store_distinct_add(st, longest, longest, t, WINDOW, 0, &n), STORE_OK);
	assert_int_equal(n, 1);
	assert_int_equal(store_distinct_add(st, "s", "m", t, WINDOW, 0, NULL), STORE_OK);
	store_free(st);
}

#define DISTINCT_THREADS 8
#define DISTINCT_ROUNDS 25

struct distinct_worker {
	store *st;
	int id;
	int64_t t;
	atomic_int *errors;
};

static void *distinct_work(void *arg)
{
	struct distinct_worker *w = arg;
	char member[32];
	uint64_t n;

	for (int r = 0; r < DISTINCT_ROUNDS; r++) {
		snprintf(member, sizeof(member), "w%d-%d", w->id, r);
		if (store_distinct_add(w->st, "shared", member, w->t, WINDOW, 0, &n) != STORE_OK || n == 0)
			atomic_fetch_add(w->errors, 1);
	}
	return NULL;
}

/* Two handles (two daemons on one store) adding at once: no member is lost or counted twice. */
static void test_distinct_concurrent(void **state)
{
	store *st[2] = {open_store(), open_store()};
	pthread_t th[DISTINCT_THREADS];
	struct distinct_worker w[DISTINCT_THREADS];
	atomic_int errors = 0;

	(void)state;
	for (int i = 0; i < DISTINCT_THREADS; i++) {
		w[i] = (struct distinct_worker){.st = st[i % 2], .id = i, .t = now_s(), .errors = &errors};
		assert_int_equal(pthread_create(&th[i], NULL, distinct_work, &w[i]), 0);
	}
	for (int i = 0; i < DISTINCT_THREADS; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(atomic_load(&errors), 0);
	assert_int_equal(distinct1(st[0], "shared", "w0-0", now_s(), 0), DISTINCT_THREADS * DISTINCT_ROUNDS);
	store_free(st[0]);
	store_free(st[1]);
}

/* The rows of old_rows[] written straight into Redis, as 0.1.0 left them (no "version" key). */
static void redis_write_old_rows(int64_t t)
{
	struct timeval tv = {1, 0};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", B.redis_port, tv);

	assert_true(c && !c->err);
	for (size_t i = 0; i < NELEM(old_rows); i++) {
		const old_row *r = &old_rows[i];
		char key[STORE_KEY_MAX + 64], first[24], expires[24], hits[24];
		const char *argv[] = {"HSET", key,   "expires", expires, "first",  first,
		                      "last", first, "hits",    hits,    "sender", r->sender};
		redisReply *rep;

		snprintf(key, sizeof(key), "%sbl:%s", B.prefix, r->key);
		snprintf(first, sizeof(first), "%lld", (long long)(t - r->first_ago));
		snprintf(expires, sizeof(expires), "%lld", (long long)(t + r->expires_in));
		snprintf(hits, sizeof(hits), "%d", r->hits);
		rep = redisCommandArgv(c, r->sender[0] ? (int)NELEM(argv) : (int)NELEM(argv) - 2, argv, NULL);
		assert_true(rep && rep->type == REDIS_REPLY_INTEGER);
		freeReplyObject(rep);
		rep = redisCommand(c, "EXPIREAT %s %s", key, expires);
		assert_true(rep && rep->type == REDIS_REPLY_INTEGER);
		freeReplyObject(rep);
	}
	redisFree(c);
}

static void redis_get_version(char *out, size_t outlen)
{
	struct timeval tv = {1, 0};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", B.redis_port, tv);
	redisReply *r = c && !c->err ? redisCommand(c, "GET %sversion", B.prefix) : NULL;

	assert_non_null(r);
	snprintf(out, outlen, "%s", r->type == REDIS_REPLY_STRING ? r->str : "(none)");
	freeReplyObject(r);
	redisFree(c);
}

/*
 * A Redis blocklist of 0.1.0 is upgraded at the first connection: the
 * same result as the SQLite upgrade, the layout version 2 noted, and
 * running it again (another host, the version key lost) changes nothing.
 */
static void test_redis_upgrade_0_1_0(void **state)
{
	int64_t t = now_s();
	char version[32], cmd[128];
	store *st;

	(void)state;
	redis_write_old_rows(t);
	st = open_store();
	assert_upgraded(st, t);
	store_free(st);
	redis_get_version(version, sizeof(version));
	assert_string_equal(version, "2");
	snprintf(cmd, sizeof(cmd), "DEL %sversion", B.prefix);
	assert_true(redis_do(cmd));
	st = open_store();
	assert_upgraded(st, t);
	store_free(st);
}

/* Redis down when the store opens: the upgrade runs at the first connection made later. */
static void test_redis_upgrade_when_back(void **state)
{
	int64_t t = now_s();
	const char *user[] = {"sasl:alice@sink.test"};
	store_entry e;
	store *st;

	(void)state;
	redis_stop();
	st = open_store();
	assert_true(redis_start());
	redis_write_old_rows(t);
	/* The first calls may still meet the back-off of the failed connection. */
	for (int i = 0; i < 100 && store_lookup(st, user, 1, t, &e) == STORE_ERROR; i++)
		usleep(50000);
	assert_int_equal(store_lookup(st, user, 1, t, &e), STORE_NOTFOUND);
	assert_upgraded(st, t);
	store_free(st);
}

/* --- keyed records (store_kv) and buckets (store_counter) ------------------ */

static int64_t now_ms_wall(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static query kv_query(query_kv_op op, const char *ns, const char *key, const char *value, int64_t now_ms,
                      int64_t ttl_ms)
{
	query q = {.kind = QUERY_KV};

	q.u.kv.op = op;
	q.u.kv.ns = ns;
	q.u.kv.key = key;
	q.u.kv.value = value;
	q.u.kv.now_ms = now_ms;
	q.u.kv.ttl_ms = ttl_ms;
	return q;
}

/* Runs one op through store_kv and answers found; the query (answer) in *out if not NULL. */
static bool kv1(store *st, query_kv_op op, const char *key, const char *value, int64_t now_ms, int64_t ttl_ms,
                query *out)
{
	query q = kv_query(op, "grey", key, value, now_ms, ttl_ms);

	if (store_kv(st, &q) != STORE_OK)
		fail_msg("store_kv %d %s: %s", (int)op, key, store_last_error());
	if (out)
		*out = q;
	return q.u.kv.found;
}

static query counter_query(const char *key, int64_t now_ms, int64_t emission_ms, uint64_t burst,
                           uint64_t cost)
{
	query q = {.kind = QUERY_COUNTER};

	q.u.counter.ns = "rate";
	q.u.counter.key = key;
	q.u.counter.now_ms = now_ms;
	q.u.counter.emission_ms = emission_ms;
	q.u.counter.burst = burst;
	q.u.counter.cost = cost;
	return q;
}

static query counter1(store *st, const char *key, int64_t now_ms, int64_t emission_ms, uint64_t burst,
                      uint64_t cost)
{
	query q = counter_query(key, now_ms, emission_ms, burst, cost);

	if (store_counter(st, &q) != STORE_OK)
		fail_msg("store_counter %s: %s", key, store_last_error());
	return q;
}

#define HOUR_MS ((int64_t)3600 * 1000)

/* get, put (answering what it replaced), put-if-absent (leaving a live record), delete. */
static void test_kv_ops(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	query q;

	(void)state;
	assert_false(kv1(st, QUERY_KV_GET, "192.0.2.1/a@x/b@y", NULL, t, 0, &q));
	assert_string_equal(q.u.kv.old, "");
	assert_false(kv1(st, QUERY_KV_PUT_NEW, "192.0.2.1/a@x/b@y", "first", t, HOUR_MS, NULL));
	assert_true(kv1(st, QUERY_KV_GET, "192.0.2.1/a@x/b@y", NULL, t, 0, &q));
	assert_string_equal(q.u.kv.old, "first");
	/* Redis's clock, not t: within a minute of it */
	assert_true(q.u.kv.expires_ms > t + HOUR_MS - 60000 && q.u.kv.expires_ms < t + HOUR_MS + 60000);
	assert_true(kv1(st, QUERY_KV_PUT_NEW, "192.0.2.1/a@x/b@y", "second", t, HOUR_MS, &q));
	assert_string_equal(q.u.kv.old, "first");
	assert_true(kv1(st, QUERY_KV_GET, "192.0.2.1/a@x/b@y", NULL, t, 0, &q));
	assert_string_equal(q.u.kv.old, "first"); /* put-if-absent left it */
	assert_true(kv1(st, QUERY_KV_PUT, "192.0.2.1/a@x/b@y", "third", t, HOUR_MS, &q));
	assert_string_equal(q.u.kv.old, "first");
	assert_true(kv1(st, QUERY_KV_GET, "192.0.2.1/a@x/b@y", NULL, t, 0, &q));
	assert_string_equal(q.u.kv.old, "third");
	/* another namespace, same key: another record */
	q = kv_query(QUERY_KV_GET, "relay", "192.0.2.1/a@x/b@y", NULL, t, 0);
	assert_int_equal(store_kv(st, &q), STORE_OK);
	assert_false(q.u.kv.found);
	assert_true(kv1(st, QUERY_KV_DELETE, "192.0.2.1/a@x/b@y", NULL, t, 0, &q));
	assert_string_equal(q.u.kv.old, "third");
	assert_false(kv1(st, QUERY_KV_GET, "192.0.2.1/a@x/b@y", NULL, t, 0, NULL));
	assert_false(kv1(st, QUERY_KV_DELETE, "192.0.2.1/a@x/b@y", NULL, t, 0, NULL));
	store_free(st);
}

/*
 * A record is gone at its expiry, and put-if-absent then writes. SQLite
 * reads the caller's time; Redis its own, so there the case waits (a
 * short ttl, polled with a bound: only "gone at last" is asserted).
 */
static void test_kv_expiry(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	query q;

	(void)state;
	if (B.backend == STORE_BACKEND_SQLITE) {
		kv1(st, QUERY_KV_PUT, "k", "v", t, 1000, NULL);
		assert_true(kv1(st, QUERY_KV_GET, "k", NULL, t + 999, 0, &q));
		assert_int_equal(q.u.kv.expires_ms, t + 1000);
		assert_false(kv1(st, QUERY_KV_GET, "k", NULL, t + 1000, 0, NULL));
		assert_false(kv1(st, QUERY_KV_PUT_NEW, "k", "w", t + 1000, 1000, NULL));
		assert_true(kv1(st, QUERY_KV_GET, "k", NULL, t + 1500, 0, &q));
		assert_string_equal(q.u.kv.old, "w");
	} else {
		int tries = 0;

		kv1(st, QUERY_KV_PUT, "k", "v", t, 30, NULL);
		while (kv1(st, QUERY_KV_GET, "k", NULL, t, 0, NULL) && ++tries < 500)
			usleep(10000);
		assert_true(tries < 500);
		assert_false(kv1(st, QUERY_KV_PUT_NEW, "k", "w", t, HOUR_MS, NULL));
		assert_true(kv1(st, QUERY_KV_GET, "k", NULL, t, 0, &q));
		assert_string_equal(q.u.kv.old, "w");
	}
	store_free(st);
}

static void test_kv_bad_arguments(void **state)
{
	store *st = open_store();
	char longest[QUERY_VALUE_MAX + 1], too_long[QUERY_VALUE_MAX + 2], longkey[STORE_KEY_MAX + 1];
	int64_t t = now_ms_wall();
	query q;

	(void)state;
	memset(longest, 'v', sizeof(longest) - 1);
	longest[sizeof(longest) - 1] = '\0';
	memset(too_long, 'v', sizeof(too_long) - 1);
	too_long[sizeof(too_long) - 1] = '\0';
	memset(longkey, 'k', sizeof(longkey) - 1);
	longkey[sizeof(longkey) - 1] = '\0';
	q = kv_query(QUERY_KV_PUT, "grey", "k", too_long, t, HOUR_MS);
	assert_int_equal(store_kv(st, &q), STORE_ERROR);
	q = kv_query(QUERY_KV_PUT, "grey", "k", NULL, t, HOUR_MS);
	assert_int_equal(store_kv(st, &q), STORE_ERROR);
	q = kv_query(QUERY_KV_PUT, "grey", "k", "v", t, 0);
	assert_int_equal(store_kv(st, &q), STORE_ERROR);
	q = kv_query(QUERY_KV_GET, "Grey:x", "k", NULL, t, 0); /* would reach into another key space */
	assert_int_equal(store_kv(st, &q), STORE_ERROR);
	q = kv_query(QUERY_KV_GET, "", "k", NULL, t, 0);
	assert_int_equal(store_kv(st, &q), STORE_ERROR);
	q = kv_query(QUERY_KV_GET, "grey", "", NULL, t, 0);
	assert_int_equal(store_kv(st, &q), STORE_ERROR);
	q = kv_query(QUERY_KV_GET, "grey", longkey, NULL, t, 0);
	assert_int_equal(store_kv(st, &q), STORE_ERROR);
	q = kv_query((query_kv_op)9, "grey", "k", NULL, t, 0);
	assert_int_equal(store_kv(st, &q), STORE_ERROR);
	assert_false(kv1(st, QUERY_KV_GET, "k", NULL, t, 0, NULL));
	kv1(st, QUERY_KV_PUT, "k", longest, t, HOUR_MS, NULL);
	assert_true(kv1(st, QUERY_KV_GET, "k", NULL, t, 0, &q));
	assert_string_equal(q.u.kv.old, longest);
	store_free(st);
}

/* A burst of burst units, then refusals with retry_after within one interval; a peek charges nothing. */
static void test_counter_burst_then_limit(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	query q;

	(void)state;
	/* An interval of an hour: no refill can happen while the case runs, whatever the clock. */
	for (uint64_t i = 0; i < 3; i++) {
		q = counter1(st, "10.0.0.1", t, HOUR_MS, 3, 1);
		assert_true(q.u.counter.allowed);
		assert_int_equal(q.u.counter.remaining, 2 - i);
	}
	q = counter1(st, "10.0.0.1", t, HOUR_MS, 3, 1);
	assert_false(q.u.counter.allowed);
	assert_true(q.u.counter.retry_after_ms > 0 && q.u.counter.retry_after_ms <= HOUR_MS);
	assert_int_equal(q.u.counter.remaining, 0);
	q = counter1(st, "10.0.0.1", t, HOUR_MS, 3, 0);
	assert_true(q.u.counter.allowed);
	assert_int_equal(q.u.counter.remaining, 0);
	/* another key has its own bucket; a cost of 2 takes two units */
	q = counter1(st, "10.0.0.2", t, HOUR_MS, 3, 0);
	assert_true(q.u.counter.allowed);
	assert_int_equal(q.u.counter.remaining, 3);
	q = counter1(st, "10.0.0.2", t, HOUR_MS, 3, 2);
	assert_true(q.u.counter.allowed);
	assert_int_equal(q.u.counter.remaining, 1);
	q = counter1(st, "10.0.0.2", t, HOUR_MS, 3, 2);
	assert_false(q.u.counter.allowed); /* refused: charges nothing */
	assert_int_equal(q.u.counter.remaining, 1);
	q = counter1(st, "10.0.0.2", t, HOUR_MS, 3, 1);
	assert_true(q.u.counter.allowed);
	/* more than the burst is never allowed */
	q = counter1(st, "10.0.0.3", t, HOUR_MS, 3, 4);
	assert_false(q.u.counter.allowed);
	store_free(st);
}

/*
 * Parallel recipients that all passed on the bucket's last unit (each
 * peek saw room) are all charged, as a debt: the bucket refuses until it
 * is paid back. Dropping the extra charges let a parallel burst past the
 * rate at every unit the bucket freed.
 */
static void test_counter_debt_is_paid_back(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	query q;

	(void)state;
	q = counter1(st, "debt", t, HOUR_MS, 1, 0);
	assert_int_equal(q.u.counter.remaining, 1);
	for (int i = 0; i < 3; i++) {
		q = counter_query("debt", t, HOUR_MS, 1, 1);
		q.u.counter.debt = true;
		if (store_counter(st, &q) != STORE_OK)
			fail_msg("store_counter: %s", store_last_error());
		assert_true(q.u.counter.allowed);
		assert_int_equal(q.u.counter.remaining, 0);
	}
	q = counter1(st, "debt", t, HOUR_MS, 1, 0);
	assert_int_equal(q.u.counter.remaining, 0);
	/* three hours charged: the next unit is two hours after the burst's one, not one */
	q = counter1(st, "debt", t, HOUR_MS, 1, 1);
	assert_false(q.u.counter.allowed);
	assert_int_equal(q.u.counter.remaining, 0);
	assert_true(q.u.counter.retry_after_ms > 2 * HOUR_MS - 60000);
	/* a peek is never a debt */
	q = counter_query("debt2", t, HOUR_MS, 1, 0);
	q.u.counter.debt = true;
	assert_int_equal(store_counter(st, &q), STORE_OK);
	assert_int_equal(q.u.counter.remaining, 1);
	store_free(st);
}

/* A bucket deleted (spamtrapctl rate reset) is full again; only that one; a second delete finds none. */
static void test_counter_delete(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	query q;

	(void)state;
	for (int i = 0; i < 3; i++) {
		counter1(st, "a:x", t, HOUR_MS, 3, 1);
		counter1(st, "a:y", t, HOUR_MS, 3, 1);
	}
	assert_int_equal(store_counter_delete(st, "rate", "a:x"), STORE_OK);
	q = counter1(st, "a:x", t, HOUR_MS, 3, 0);
	assert_int_equal(q.u.counter.remaining, 3);
	q = counter1(st, "a:y", t, HOUR_MS, 3, 0);
	assert_int_equal(q.u.counter.remaining, 0);
	assert_int_equal(store_counter_delete(st, "rate", "a:x"), STORE_NOTFOUND);
	assert_int_equal(store_counter_delete(st, "other", "a:y"), STORE_NOTFOUND);
	assert_int_equal(store_counter_delete(st, "Bad NS", "a:y"), STORE_ERROR);
	store_free(st);
}

/* The bucket refills at the rate: SQLite by the caller's time, Redis by waiting (bounded) for its clock. */
static void test_counter_refill(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	query q;

	(void)state;
	if (B.backend == STORE_BACKEND_SQLITE) {
		counter1(st, "k", t, 1000, 2, 2);
		q = counter1(st, "k", t + 400, 1000, 2, 1);
		assert_false(q.u.counter.allowed);
		assert_int_equal(q.u.counter.retry_after_ms, 600);
		q = counter1(st, "k", t + 1000, 1000, 2, 1);
		assert_true(q.u.counter.allowed);
		assert_int_equal(q.u.counter.remaining, 0);
		q = counter1(st, "k", t + 5000, 1000, 2, 0); /* full again, not beyond */
		assert_int_equal(q.u.counter.remaining, 2);
	} else {
		int tries = 0;

		counter1(st, "k", t, 50, 1, 1);
		while (!(q = counter1(st, "k", t, 50, 1, 1)).u.counter.allowed && ++tries < 500) {
			assert_true(q.u.counter.retry_after_ms > 0 && q.u.counter.retry_after_ms <= 50);
			usleep(10000);
		}
		assert_true(tries < 500);
	}
	store_free(st);
}

static void test_counter_bad_arguments(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	query q;

	(void)state;
	q = counter_query("k", t, 0, 3, 1);
	assert_int_equal(store_counter(st, &q), STORE_ERROR);
	q = counter_query("k", t, 1000, 0, 1);
	assert_int_equal(store_counter(st, &q), STORE_ERROR);
	q = counter_query("k", t, STORE_TTL_MS_MAX, 2, 1); /* would empty in two centuries */
	assert_int_equal(store_counter(st, &q), STORE_ERROR);
	q = counter_query("k", t, 1000, UINT64_MAX, UINT64_MAX);
	assert_int_equal(store_counter(st, &q), STORE_ERROR);
	q = counter_query("", t, 1000, 1, 1);
	assert_int_equal(store_counter(st, &q), STORE_ERROR);
	store_free(st);
}

#define KV_THREADS 8
#define KV_ROUNDS 20

struct kv_worker {
	store *st;
	int64_t t;
	atomic_int *created, *allowed, *errors;
};

static void *kv_work(void *arg)
{
	struct kv_worker *w = arg;
	char key[32];

	for (int r = 0; r < KV_ROUNDS; r++) {
		query k, c = counter_query("shared", w->t, HOUR_MS, KV_THREADS * KV_ROUNDS / 2, 1);

		snprintf(key, sizeof(key), "triplet-%d", r);
		k = kv_query(QUERY_KV_PUT_NEW, "grey", key, "x", w->t, HOUR_MS);
		if (store_kv(w->st, &k) != STORE_OK || store_counter(w->st, &c) != STORE_OK)
			atomic_fetch_add(w->errors, 1);
		if (!k.u.kv.found)
			atomic_fetch_add(w->created, 1);
		if (c.u.counter.allowed)
			atomic_fetch_add(w->allowed, 1);
	}
	return NULL;
}

/* Two handles at once: each record created exactly once, the bucket charged exactly up to its burst. */
static void test_kv_counter_concurrent(void **state)
{
	store *st[2] = {open_store(), open_store()};
	pthread_t th[KV_THREADS];
	struct kv_worker w[KV_THREADS];
	atomic_int created = 0, allowed = 0, errors = 0;

	(void)state;
	for (int i = 0; i < KV_THREADS; i++) {
		w[i] = (struct kv_worker){.st = st[i % 2],
		                          .t = now_ms_wall(),
		                          .created = &created,
		                          .allowed = &allowed,
		                          .errors = &errors};
		assert_int_equal(pthread_create(&th[i], NULL, kv_work, &w[i]), 0);
	}
	for (int i = 0; i < KV_THREADS; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(atomic_load(&errors), 0);
	assert_int_equal(atomic_load(&created), KV_ROUNDS);
	assert_int_equal(atomic_load(&allowed), KV_THREADS * KV_ROUNDS / 2);
	store_free(st[0]);
	store_free(st[1]);
}

/* store_run with every kind in one batch: each answered, one bad query failing alone. */
static void test_run_mixed_batch(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	store_hit h = hit_at(t / 1000, "trap@example.com");
	query q[6];

	(void)state;
	q[0] = kv_query(QUERY_KV_PUT_NEW, "grey", "k", "v", t, HOUR_MS);
	q[1] = counter_query("c", t, HOUR_MS, 2, 1);
	q[2] = kv_query(QUERY_KV_GET, "bad ns", "k", NULL, t, 0);
	q[3] = (query){.kind = QUERY_DISTINCT_ADD};
	q[3].u.distinct.key = "domnet:@example.com";
	q[3].u.distinct.member = "192.0.2.0/24";
	q[3].u.distinct.now = t / 1000;
	q[3].u.distinct.window = WINDOW;
	q[4] = (query){.kind = QUERY_BLOCKLIST_RECORD};
	q[4].u.record.keys[0] = "spammer@example.net";
	q[4].u.record.nkeys = 1;
	q[4].u.record.hit = h;
	q[5] = kv_query(QUERY_KV_GET, "grey", "k", NULL, t, 0);
	assert_int_equal(store_run(st, q, 6, t / 1000), STORE_ERROR);
	assert_int_equal(q[0].status, QUERY_OK);
	assert_false(q[0].u.kv.found);
	assert_int_equal(q[1].status, QUERY_OK);
	assert_true(q[1].u.counter.allowed);
	assert_int_equal(q[1].u.counter.remaining, 1);
	assert_int_equal(q[2].status, QUERY_ERROR);
	assert_int_equal(q[3].status, QUERY_OK);
	assert_int_equal(q[3].u.distinct.count, 1);
	assert_int_equal(q[4].status, QUERY_OK);
	assert_int_equal(q[5].status, QUERY_OK);
	assert_true(q[5].u.kv.found); /* in order: sees q[0] */
	assert_string_equal(q[5].u.kv.old, "v");
	store_free(st);
}

/*
 * docs/redis.md: records at PREFIX "kv:" NS ":" KEY, buckets at PREFIX
 * "ctr:" NS ":" KEY holding the TAT, both with Redis's own expiry, and
 * both on the server's clock: the caller's now_ms (here 1970 and ten
 * hours ahead) changes nothing.
 */
static void test_redis_kv_counter_layout(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	char key[128], out[64];
	long long pttl;
	query q;

	(void)state;
	kv1(st, QUERY_KV_PUT, "k", "v", 1, HOUR_MS, NULL);
	snprintf(key, sizeof(key), "%skv:grey:k", B.prefix);
	redis_text(out, sizeof(out), "GET %s", key);
	assert_string_equal(out, "v");
	redis_text(out, sizeof(out), "PTTL %s", key);
	pttl = atoll(out);
	assert_true(pttl > HOUR_MS - 60000 && pttl <= HOUR_MS);
	assert_true(kv1(st, QUERY_KV_GET, "k", NULL, 1, 0, &q));
	assert_true(q.u.kv.expires_ms > t);
	q = counter1(st, "c", 0, HOUR_MS, 1, 1);
	assert_true(q.u.counter.allowed);
	q = counter1(st, "c", t + 10 * HOUR_MS, HOUR_MS, 1, 1);
	assert_false(q.u.counter.allowed);
	snprintf(key, sizeof(key), "%sctr:rate:c", B.prefix);
	redis_text(out, sizeof(out), "GET %s", key);
	assert_true(atoll(out) > t && atoll(out) < t + HOUR_MS + 60000);
	/* Kept a minute past its TAT (HOT_KEEP_MS_TEXT): a bucket in use does not expire between charges. */
	redis_text(out, sizeof(out), "PTTL %s", key);
	pttl = atoll(out);
	assert_true(pttl > HOUR_MS && pttl <= HOUR_MS + 60000);
	store_free(st);
}

/*
 * A version 3 file (before records and buckets) gets both tables on open,
 * keeping its distinct sets; purge drops expired records and full buckets.
 */
static void test_sqlite_upgrade_v3(void **state)
{
	int64_t t = now_s();
	char out[256];
	store *st = open_store();
	uint64_t purged;

	(void)state;
	assert_int_equal(distinct1(st, "s", "m1", t, 0), 1);
	store_free(st);
	sqlite_cli("DROP TABLE kv_records; DROP TABLE counters; PRAGMA user_version = 3;", out, sizeof(out));
	st = open_store();
	assert_int_equal(distinct1(st, "s", "m2", t, 0), 2);
	kv1(st, QUERY_KV_PUT, "old", "v", t * 1000, 1000, NULL);
	kv1(st, QUERY_KV_PUT, "young", "v", t * 1000, HOUR_MS, NULL);
	counter1(st, "old", t * 1000, 1000, 1, 1);
	counter1(st, "young", t * 1000, HOUR_MS, 1, 1);
	store_free(st);
	sqlite_cli("PRAGMA user_version", out, sizeof(out));
	assert_string_equal(out, "7");
	sqlite_cli(
	    "SELECT name FROM sqlite_master WHERE name LIKE 'kv%' OR name LIKE 'counters%' ORDER BY name",
	    out, sizeof(out));
	assert_string_equal(out, "counters counters_tat kv_records kv_records_expires");
	st = open_store();
	assert_int_equal(store_purge(st, t + 2, &purged), STORE_OK);
	store_free(st);
	sqlite_cli("SELECT key FROM kv_records", out, sizeof(out));
	assert_string_equal(out, "young");
	sqlite_cli("SELECT key FROM counters", out, sizeof(out));
	assert_string_equal(out, "young");
}

/*
 * store_run hands its records and buckets to Redis in one pipelined round
 * trip, however many; a query that fails its checks stays out of it.
 * After SCRIPT FLUSH each one runs again with EVAL and still answers.
 */
static void test_redis_batch_one_round_trip(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	char keys[8][16], out[64];
	query q[9];
	uint64_t before;

	(void)state;
	for (int i = 0; i < 8; i++) {
		snprintf(keys[i], sizeof(keys[i]), "k%d", i);
		q[i] = i % 2 ? counter_query(keys[i], t, HOUR_MS, 5, 1)
		             : kv_query(QUERY_KV_PUT_NEW, "grey", keys[i], keys[i], t, HOUR_MS);
	}
	q[8] = counter_query("bad", t, 0, 5, 1);
	before = store_script_round_trips(st);
	assert_int_equal(store_run(st, q, 9, t / 1000), STORE_ERROR);
	assert_int_equal(store_script_round_trips(st) - before, 1);
	for (int i = 0; i < 8; i++) {
		assert_int_equal(q[i].status, QUERY_OK);
		if (i % 2)
			assert_int_equal(q[i].u.counter.remaining, 4);
		else
			assert_false(q[i].u.kv.found);
	}
	assert_int_equal(q[8].status, QUERY_ERROR);
	/* one query alone: one round trip too */
	before = store_script_round_trips(st);
	q[0] = kv_query(QUERY_KV_GET, "grey", "k0", NULL, t, 0);
	assert_int_equal(store_run(st, q, 1, t / 1000), STORE_OK);
	assert_int_equal(store_script_round_trips(st) - before, 1);
	assert_true(q[0].u.kv.found);
	redis_text(out, sizeof(out), "SCRIPT FLUSH");
	for (int i = 0; i < 4; i++)
		q[i] = i % 2 ? counter_query(keys[i], t, HOUR_MS, 5, 1)
		             : kv_query(QUERY_KV_GET, "grey", keys[i], NULL, t, 0);
	assert_int_equal(store_run(st, q, 4, t / 1000), STORE_OK);
	for (int i = 0; i < 4; i++)
		assert_int_equal(q[i].status, QUERY_OK);
	assert_true(q[0].u.kv.found);
	assert_string_equal(q[2].u.kv.old, "k2");
	assert_int_equal(q[1].u.counter.remaining, 3);
	assert_int_equal(q[3].u.counter.remaining, 3);
	store_free(st);
}

static query distinct_query(const char *set, const char *member, int64_t now, bool peek)
{
	query q = {.kind = QUERY_DISTINCT_ADD};

	q.u.distinct.key = set;
	q.u.distinct.member = member;
	q.u.distinct.now = now;
	q.u.distinct.window = WINDOW;
	q.u.distinct.limit = 2;
	q.u.distinct.peek = peek;
	return q;
}

/*
 * The relay and ratelimit queries of a recipient go to Redis together:
 * the peeks in one round trip, the add and the charge in another; each
 * answers as on its own, also after SCRIPT FLUSH (EVAL, one by one).
 */
static void test_redis_batch_distinct(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall(), now = t / 1000;
	char out[64];
	query q[3];
	uint64_t before;

	(void)state;
	distinct1(st, "relay:sasl:b", "n1", now, 2);
	q[0] = distinct_query("relay:sasl:b", "n2", now, true);
	q[1] = counter_query("acct:b", t, HOUR_MS, 5, 0);
	q[2] = distinct_query("relay:sasl:b", "n1", now, true);
	before = store_script_round_trips(st);
	assert_int_equal(store_run(st, q, 3, now), STORE_OK);
	assert_int_equal(store_script_round_trips(st) - before, 1);
	for (int i = 0; i < 3; i++)
		assert_int_equal(q[i].status, QUERY_OK);
	assert_int_equal(q[0].u.distinct.count, 1);
	assert_false(q[0].u.distinct.present);
	assert_int_equal(q[1].u.counter.remaining, 5);
	assert_true(q[2].u.distinct.present);
	q[0] = distinct_query("relay:sasl:b", "n2", now, false);
	q[1] = counter_query("acct:b", t, HOUR_MS, 5, 1);
	q[2] = distinct_query("relay:sasl:b", "n3", now, false); /* over the limit of 2: refused */
	before = store_script_round_trips(st);
	assert_int_equal(store_run(st, q, 3, now), STORE_OK);
	assert_int_equal(store_script_round_trips(st) - before, 1);
	assert_int_equal(q[0].u.distinct.count, 2);
	assert_true(q[1].u.counter.allowed);
	assert_int_equal(q[2].u.distinct.count, 3);
	redis_text(out, sizeof(out), "SCRIPT FLUSH");
	q[0] = distinct_query("relay:sasl:b", "n3", now, true);
	q[1] = counter_query("acct:b", t, HOUR_MS, 5, 0);
	assert_int_equal(store_run(st, q, 2, now), STORE_OK);
	assert_int_equal(q[0].status, QUERY_OK);
	assert_int_equal(q[0].u.distinct.count, 2);
	assert_false(q[0].u.distinct.present);
	assert_int_equal(q[1].u.counter.remaining, 4);
	store_free(st);
}

/* --- the greylist (store_greylist and its admin calls) -------------------- */

/*
 * Both backends run the same steps: SQLite on the times the case gives,
 * Redis on its own clock, so there the case sleeps instead (short delays:
 * under a second in all) and asserts only what a slow machine cannot
 * change (a step well before or well after the delay).
 */
#define G_DELAY 200
#define G_WINDOW 500

static query grey_query(const char *triplet, const char *awl, int64_t now_ms, uint64_t awl_count,
                        uint64_t max_triplets)
{
	query q = {.kind = QUERY_GREYLIST};

	q.u.grey.triplet = triplet;
	q.u.grey.awl = awl;
	q.u.grey.now_ms = now_ms;
	q.u.grey.params = (greystep_params){
	    .delay_ms = G_DELAY, .retry_window_ms = G_WINDOW, .max_age_ms = HOUR_MS, .awl_count = awl_count};
	q.u.grey.max_triplets = max_triplets;
	return q;
}

static query grey1(store *st, const char *triplet, const char *awl, int64_t now_ms, uint64_t awl_count,
                   uint64_t max_triplets)
{
	query q = grey_query(triplet, awl, now_ms, awl_count, max_triplets);

	if (store_greylist(st, &q) != STORE_OK)
		fail_msg("store_greylist %s: %s", triplet, store_last_error());
	return q;
}

#define assert_grey(q, want) assert_string_equal(greystep_result_name((q).u.grey.answer.result), (want))

/* The case's clock: SQLite's moves when told; Redis's by sleeping. */
static int64_t grey_wait(int64_t t, int64_t ms)
{
	if (B.backend == STORE_BACKEND_REDIS)
		usleep((useconds_t)ms * 1000);
	return t + ms;
}

/* postgrey's sequence: new, early, pass once past the delay, pass; the client counted once per period. */
static void test_greylist_sequence(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall(), first;
	store_grey_record r;
	query q;

	(void)state;
	q = grey1(st, "192.0.2.0/24/a@x/b@y", "192.0.2.7", t, 2, 0);
	assert_grey(q, "new");
	assert_true(q.u.grey.answer.remaining_ms > 0 && q.u.grey.answer.remaining_ms <= G_DELAY);
	assert_true(q.u.grey.now_ms > t - 60000 && q.u.grey.now_ms < t + 60000);
	first = q.u.grey.now_ms;
	assert_grey(grey1(st, "192.0.2.0/24/a@x/c@y", "192.0.2.7", t, 2, 0), "new");
	t = grey_wait(t, 2);
	q = grey1(st, "192.0.2.0/24/a@x/b@y", "192.0.2.7", t, 2, 0);
	/* early unless the store's clock (Redis: however slow this machine) says delay has passed */
	assert_grey(q, q.u.grey.now_ms - first >= G_DELAY ? "pass-first" : "early-retry");
	t = grey_wait(t, G_DELAY + 50);
	q = grey1(st, "192.0.2.0/24/a@x/b@y", "192.0.2.7", t, 2, 0);
	assert_grey(q, "pass-first");
	assert_true(q.u.grey.answer.waited_ms >= G_DELAY);
	assert_grey(grey1(st, "192.0.2.0/24/a@x/b@y", "192.0.2.7", t, 2, 0), "pass");
	assert_grey(grey1(st, "192.0.2.0/24/a@x/c@y", "192.0.2.7", t, 2, 0), "pass-first");
	assert_int_equal(store_greylist_awl_get(st, "192.0.2.7", t, &r), STORE_OK);
	assert_int_equal(r.count, 1); /* two passes within the period count once */
	/* a triplet retried only after retry_window starts over */
	assert_grey(grey1(st, "192.0.2.0/24/a@x/d@y", "192.0.2.7", t, 2, 0), "new");
	t = grey_wait(t, G_WINDOW + 50);
	assert_grey(grey1(st, "192.0.2.0/24/a@x/d@y", "192.0.2.7", t, 2, 0), "new");
	store_free(st);
}

/* A triplet past its expiry is new again, purged or not (Redis: its own expiry dropped it). */
static void test_greylist_expiry(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	store_grey_record r;
	query q = grey_query("192.0.2.0/24/a@x/b@y", NULL, t, 0, 0);

	(void)state;
	q.u.grey.params.retry_window_ms = 50; /* a pending triplet lives retry_window + 1 ms */
	assert_int_equal(store_greylist(st, &q), STORE_OK);
	assert_grey(q, "new");
	assert_int_equal(q.u.grey.answer.triplet_expires_ms, q.u.grey.now_ms + 51);
	assert_int_equal(store_greylist_get(st, "192.0.2.0/24/a@x/b@y", q.u.grey.now_ms, &r), STORE_OK);
	assert_int_equal(r.expires_ms, q.u.grey.now_ms + 51);
	t = grey_wait(t, 120);
	assert_int_equal(store_greylist_get(st, "192.0.2.0/24/a@x/b@y", t, &r), STORE_NOTFOUND);
	q.u.grey.now_ms = t;
	assert_int_equal(store_greylist(st, &q), STORE_OK);
	assert_grey(q, "new"); /* not an early retry of the expired one */
	assert_int_equal(q.u.grey.answer.triplet.first_ms, q.u.grey.now_ms);
	store_free(st);
}

/* spamtrapctl greylist whitelist: a client put in the auto-whitelist passes at once, until removed. */
static void test_greylist_awl_put(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall(), now;
	store_grey_record r;

	(void)state;
	assert_int_equal(store_greylist_time(st, &now), STORE_OK);
	assert_true(now > t - 60000 && now < t + 60000);
	assert_int_equal(store_greylist_awl_put(st, "192.0.2.7", 5, now, now + HOUR_MS), STORE_OK);
	assert_int_equal(store_greylist_awl_get(st, "192.0.2.7", now, &r), STORE_OK);
	assert_int_equal(r.count, 5);
	assert_int_equal(r.last_ms, now);
	assert_int_equal(r.expires_ms, now + HOUR_MS);
	assert_grey(grey1(st, "192.0.2.0/24/a@x/b@y", "192.0.2.7", now, 5, 0), "awl");
	assert_int_equal(store_greylist_get(st, "192.0.2.0/24/a@x/b@y", now, &r), STORE_NOTFOUND);
	/* another client of the same network is not whitelisted by address */
	assert_grey(grey1(st, "192.0.2.0/24/a@x/b@y", "192.0.2.8", now, 5, 0), "new");
	assert_int_equal(store_greylist_awl_remove(st, "192.0.2.7"), STORE_OK);
	assert_int_equal(store_greylist_awl_remove(st, "192.0.2.7"), STORE_NOTFOUND);
	assert_grey(grey1(st, "192.0.2.0/24/a@x/c@y", "192.0.2.7", now, 5, 0), "new");
	assert_int_equal(store_greylist_awl_put(st, "192.0.2.7", 5, now, now), STORE_ERROR);
	store_free(st);
}

typedef struct grey_seen {
	char text[2048];
} grey_seen;

static int grey_collect(const store_grey_record *r, void *ctx)
{
	grey_seen *s = ctx;
	size_t n = strlen(s->text);

	snprintf(s->text + n, sizeof(s->text) - n, "%s%c:%s:%llu", n ? " " : "",
	         r->kind == STORE_GREY_TRIPLET ? 't' : 'a', r->key, (unsigned long long)r->count);
	return 0;
}

/* list, get, remove: triplets then clients, each in key order, only live ones, both kinds apart. */
static void test_greylist_admin(void **state)
{
	store *st = open_store();
	int64_t now;
	store_grey_record r;
	grey_seen seen = {""};

	(void)state;
	assert_int_equal(store_greylist_time(st, &now), STORE_OK);
	grey1(st, "192.0.2.0/24/b@x/b@y", "192.0.2.7", now, 2, 0);
	grey1(st, "192.0.2.0/24/a@x/b@y", "192.0.2.7", now, 2, 0);
	assert_int_equal(store_greylist_awl_put(st, "198.51.100.1", 3, now, now + HOUR_MS), STORE_OK);
	assert_int_equal(store_greylist_awl_put(st, "192.0.2.0/24", 1, now, now + HOUR_MS), STORE_OK);
	/* a blocklist entry of the same name is another thing */
	record1(st, "192.0.2.7", &(store_hit){.now = now / 1000, .ttl = TTL, .trap = "t@example.com"});
	assert_int_equal(store_greylist_foreach(st, now, grey_collect, &seen), STORE_OK);
	assert_string_equal(seen.text, "t:192.0.2.0/24/a@x/b@y:0 t:192.0.2.0/24/b@x/b@y:0 a:192.0.2.0/24:1 "
	                               "a:198.51.100.1:3");
	assert_int_equal(store_greylist_get(st, "192.0.2.0/24/a@x/b@y", now, &r), STORE_OK);
	assert_int_equal(r.kind, STORE_GREY_TRIPLET);
	assert_string_equal(r.key, "192.0.2.0/24/a@x/b@y");
	assert_true(r.first_ms >= now && r.last_ms == r.first_ms &&
	            r.expires_ms == r.first_ms + G_WINDOW + 1);
	assert_int_equal(store_greylist_awl_get(st, "192.0.2.0/24/a@x/b@y", now, &r), STORE_NOTFOUND);
	assert_int_equal(store_greylist_remove(st, "192.0.2.0/24/a@x/b@y"), STORE_OK);
	assert_int_equal(store_greylist_remove(st, "192.0.2.0/24/a@x/b@y"), STORE_NOTFOUND);
	assert_int_equal(store_greylist_get(st, "192.0.2.0/24/a@x/b@y", now, &r), STORE_NOTFOUND);
	/* past their expiry, none is listed */
	seen.text[0] = '\0';
	assert_int_equal(store_greylist_foreach(st, now + 2 * HOUR_MS, grey_collect, &seen), STORE_OK);
	assert_string_equal(seen.text, "");
	assert_int_equal(lookup1(st, "192.0.2.7", now / 1000, NULL), STORE_OK);
	store_free(st);
}

struct grey_worker {
	store *st;
	atomic_int *errors;
};

static void *grey_work(void *arg)
{
	struct grey_worker *w = arg;
	char key[32];

	for (int r = 0; r < KV_ROUNDS; r++) {
		query q;

		snprintf(key, sizeof(key), "192.0.2.0/24/a@x/r%d@y", r);
		q = grey_query(key, "192.0.2.7", now_ms_wall(), 2, 0);
		q.u.grey.params.delay_ms = HOUR_MS; /* however slow the threads, no attempt passes */
		q.u.grey.params.retry_window_ms = 2 * HOUR_MS;
		if (store_greylist(w->st, &q) != STORE_OK || greystep_passes(q.u.grey.answer.result))
			atomic_fetch_add(w->errors, 1);
	}
	return NULL;
}

static int grey_count_one(const store_grey_record *r, void *ctx)
{
	(void)r;
	(*(int *)ctx)++;
	return 0;
}

/* Threads on two handles at once: every attempt answered and deferred, each triplet stored once. */
static void test_greylist_concurrent(void **state)
{
	store *st[2] = {open_store(), open_store()};
	pthread_t th[KV_THREADS];
	struct grey_worker w[KV_THREADS];
	atomic_int errors = 0;
	int64_t now;
	int n = 0;

	(void)state;
	for (int i = 0; i < KV_THREADS; i++) {
		w[i] = (struct grey_worker){.st = st[i % 2], .errors = &errors};
		assert_int_equal(pthread_create(&th[i], NULL, grey_work, &w[i]), 0);
	}
	for (int i = 0; i < KV_THREADS; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(atomic_load(&errors), 0);
	assert_int_equal(store_greylist_time(st[0], &now), STORE_OK);
	assert_int_equal(store_greylist_foreach(st[0], now, grey_count_one, &n), STORE_OK);
	assert_int_equal(n, KV_ROUNDS);
	store_free(st[0]);
	store_free(st[1]);
}

/*
 * The longest triplet greystep_triplet_key makes (a 512-byte sender and
 * a long recipient) is a triplet like any other, listed whole; one byte
 * more is refused.
 */
static void test_greylist_longest_key(void **state)
{
	store *st = open_store();
	char longest[GREYSTEP_KEY_MAX + 1];
	grey_seen seen = {""};
	store_grey_record r;
	int64_t now;
	query q;

	(void)state;
	memset(longest, 'a', sizeof(longest) - 1);
	longest[GREYSTEP_KEY_MAX - 1] = '\0';
	assert_int_equal(store_greylist_time(st, &now), STORE_OK);
	assert_grey(grey1(st, longest, NULL, now, 0, 0), "new");
	assert_int_equal(store_greylist_get(st, longest, now, &r), STORE_OK);
	assert_string_equal(r.key, longest);
	assert_int_equal(store_greylist_foreach(st, now, grey_collect, &seen), STORE_OK);
	assert_int_equal(strlen(seen.text), strlen("t::0") + GREYSTEP_KEY_MAX - 1);
	longest[GREYSTEP_KEY_MAX - 1] = 'a';
	longest[GREYSTEP_KEY_MAX] = '\0';
	q = grey_query(longest, NULL, now, 0, 0);
	assert_int_equal(store_greylist(st, &q), STORE_ERROR);
	store_free(st);
}

static void test_greylist_bad_arguments(void **state)
{
	store *st = open_store();
	char longkey[GREYSTEP_KEY_MAX + 1];
	query q;

	(void)state;
	memset(longkey, 'a', sizeof(longkey) - 1);
	longkey[sizeof(longkey) - 1] = '\0';
	q = grey_query(longkey, NULL, 1000, 0, 0);
	assert_int_equal(store_greylist(st, &q), STORE_ERROR);
	q = grey_query("", NULL, 1000, 0, 0);
	assert_int_equal(store_greylist(st, &q), STORE_ERROR);
	q = grey_query("k", "", 1000, 0, 0);
	assert_int_equal(store_greylist(st, &q), STORE_ERROR);
	q = grey_query("k", NULL, 1000, 0, 0);
	q.u.grey.params.max_age_ms = 0;
	assert_int_equal(store_greylist(st, &q), STORE_ERROR);
	q = grey_query("k", NULL, 1000, 0, 0);
	q.u.grey.params.delay_ms = -1;
	assert_int_equal(store_greylist(st, &q), STORE_ERROR);
	q = grey_query("k", NULL, -5, 0, 0);
	assert_int_equal(store_greylist(st, &q), STORE_ERROR);
	assert_int_equal(store_greylist_remove(st, longkey), STORE_ERROR);
	assert_int_equal(store_greylist_get(st, "k", 0, NULL), STORE_ERROR);
	assert_int_equal(store_greylist_foreach(st, 0, NULL, NULL), STORE_ERROR);
	store_free(st);
}

/* SQLite's edges on explicit times: exactly at delay, exactly at retry_window, exactly at expiry. */
static void test_sqlite_greylist_edges(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();

	(void)state;
	assert_grey(grey1(st, "k1", NULL, t, 0, 0), "new");
	assert_grey(grey1(st, "k1", NULL, t + G_DELAY - 1, 0, 0), "early-retry");
	assert_grey(grey1(st, "k1", NULL, t + G_DELAY, 0, 0), "pass-first");
	assert_grey(grey1(st, "k2", NULL, t, 0, 0), "new");
	assert_grey(grey1(st, "k2", NULL, t + G_WINDOW, 0, 0), "pass-first");
	assert_grey(grey1(st, "k3", NULL, t, 0, 0), "new");
	assert_grey(grey1(st, "k3", NULL, t + G_WINDOW + 1, 0, 0), "new"); /* expired at window + 1 */
	assert_grey(grey1(st, "k1", NULL, t + G_DELAY + HOUR_MS - 1, 0, 0), "pass");
	/* each pass keeps it max_age from then; one ms past that it is new */
	assert_grey(grey1(st, "k1", NULL, t + G_DELAY + 2 * HOUR_MS - 2, 0, 0), "pass");
	assert_grey(grey1(st, "k1", NULL, t + G_DELAY + 3 * HOUR_MS - 2, 0, 0), "new");
	store_free(st);
}

static int64_t sqlite_rows(const char *table)
{
	char sql[128], out[64];

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
	sqlite_cli(sql, out, sizeof(out));
	return atoll(out);
}

/* max_triplets: at the cap a new triplet passes unrecorded (capped); known ones work on. */
static void test_sqlite_greylist_cap(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	query q;

	(void)state;
	assert_grey(grey1(st, "k1", NULL, t, 0, 3), "new");
	assert_grey(grey1(st, "k2", NULL, t, 0, 3), "new");
	assert_grey(grey1(st, "k3", NULL, t, 0, 3), "new");
	q = grey1(st, "k4", NULL, t, 0, 3);
	assert_grey(q, "pass");
	assert_true(q.u.grey.capped);
	assert_false(q.u.grey.answer.write_triplet);
	assert_int_equal(sqlite_rows("greylist_triplets"), 3);
	q = grey1(st, "k1", NULL, t + 1, 0, 3);
	assert_grey(q, "early-retry");
	assert_false(q.u.grey.capped);
	assert_grey(grey1(st, "k1", NULL, t + G_DELAY, 0, 3), "pass-first");
	/* an expired row is reused, not added: allowed at the cap */
	q = grey1(st, "k2", NULL, t + G_WINDOW + 1, 0, 3);
	assert_grey(q, "new");
	assert_false(q.u.grey.capped);
	/* removing one makes room */
	assert_int_equal(store_greylist_remove(st, "k3"), STORE_OK);
	assert_grey(grey1(st, "k4", NULL, t, 0, 3), "new");
	assert_true(grey1(st, "k5", NULL, t, 0, 3).u.grey.capped);
	assert_int_equal(sqlite_rows("greylist_triplets"), 3);
	store_free(st);
}

/*
 * The cap's estimate sees this process's own writes only: a row another
 * handle (another process) removes is seen at the next count, which a
 * capped handle makes after GREY_RECOUNT_CALLS (1000) capped answers.
 */
static void test_sqlite_greylist_cap_recount(void **state)
{
	store *a = open_store(), *b = open_store();
	int64_t t = now_ms_wall();
	int calls = 0;

	(void)state;
	grey1(a, "k1", NULL, t, 0, 2);
	grey1(a, "k2", NULL, t, 0, 2);
	assert_true(grey1(a, "k3", NULL, t, 0, 2).u.grey.capped);
	assert_int_equal(store_greylist_remove(b, "k1"), STORE_OK);
	while (grey1(a, "k3", NULL, t, 0, 2).u.grey.capped && calls < 2000)
		calls++;
	assert_true(calls >= 900 && calls <= 1001);
	assert_int_equal(sqlite_rows("greylist_triplets"), 2);
	store_free(a);
	store_free(b);
}

/* n rows of other keys under the hash of key, live for an hour from t, written behind the store's back. */
static void grey_rows_at(const char *key, int n, int64_t t)
{
	char sql[512], out[64];

	snprintf(sql, sizeof(sql),
	         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d)"
	         " INSERT INTO greylist_triplets SELECT %lld, 'x' || i || '%s', %lld, %lld, %lld FROM n",
	         n, (long long)(int64_t)hash_fnv1a(HASH_FNV1A_INIT, key, strlen(key)), key, (long long)t,
	         (long long)t, (long long)(t + HOUR_MS));
	sqlite_cli(sql, out, sizeof(out));
}

/*
 * Triplets are found by their key's hash; a hash's bucket holds 8 rows at
 * most, so that crafted collisions cost a lookup 8 rows: a new triplet of
 * a full bucket passes unrecorded, the triplets in it work on.
 */
static void test_sqlite_greylist_bucket_full(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	query q;

	(void)state;
	assert_grey(grey1(st, "victim", NULL, t, 0, 0), "new");
	/* seven more beside victim under its hash, and eight under another's */
	grey_rows_at("victim", 7, t);
	grey_rows_at("other", 8, t);
	q = grey1(st, "other", NULL, t, 0, 0);
	assert_grey(q, "pass");
	assert_true(q.u.grey.capped);
	assert_int_equal(sqlite_rows("greylist_triplets"), 16);
	assert_int_equal(sqlite_rows("greylist_triplets WHERE key = 'other'"), 0);
	assert_grey(grey1(st, "victim", NULL, t + 1, 0, 0), "early-retry");
	assert_grey(grey1(st, "victim", NULL, t + G_DELAY, 0, 0), "pass-first");
	store_free(st);
}

/* The purge drops expired triplets and clients, keeps live ones, and counts the rows afresh for the cap. */
static void test_sqlite_greylist_purge(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	store_grey_record r;
	uint64_t purged = 0;

	(void)state;
	grey1(st, "old1", NULL, t, 0, 3);
	grey1(st, "old2", NULL, t, 0, 3);
	grey1(st, "young", NULL, t + G_WINDOW, 0, 3);
	assert_true(grey1(st, "more", NULL, t + G_WINDOW, 0, 3).u.grey.capped);
	assert_int_equal(store_greylist_awl_put(st, "192.0.2.1", 1, t, t + 10), STORE_OK);
	assert_int_equal(store_greylist_awl_put(st, "192.0.2.2", 1, t, t + HOUR_MS), STORE_OK);
	assert_int_equal(store_greylist_purge(st, t + G_WINDOW + 1, &purged), STORE_OK);
	assert_int_equal(purged, 3);
	assert_int_equal(sqlite_rows("greylist_triplets"), 1);
	assert_int_equal(sqlite_rows("greylist_awl"), 1);
	assert_int_equal(store_greylist_get(st, "young", t + G_WINDOW + 1, &r), STORE_OK);
	assert_int_equal(store_greylist_awl_get(st, "192.0.2.2", t + G_WINDOW + 1, &r), STORE_OK);
	/* the cap counts the rows left */
	assert_false(grey1(st, "more", NULL, t + G_WINDOW + 1, 0, 3).u.grey.capped);
	store_free(st);
}

/*
 * The hostile-input measurement (docs/security.md): 200,000 unique
 * triplets against a cap of 50,000. The table stays at the cap, nothing
 * is written once it is reached (the file and its WAL do not grow), and
 * the file is bounded; the figures are printed for the docs.
 */
#define FLOOD_TRIPLETS 200000
#define FLOOD_CAP 50000

/* The database's bytes on disk: the file and its WAL. */
static off_t sqlite_bytes(void)
{
	char wal[200];
	struct stat sb;
	off_t bytes = stat(B.path, &sb) == 0 ? sb.st_size : 0;

	snprintf(wal, sizeof(wal), "%s-wal", B.path);
	return bytes + (stat(wal, &sb) == 0 ? sb.st_size : 0);
}

static void test_sqlite_greylist_flood_bounded(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	uint64_t capped = 0;
	off_t at_cap = 0, at_end, closed;
	char key[128];
	double start = mono();

	(void)state;
	for (int i = 0; i < FLOOD_TRIPLETS; i++) {
		query q;

		if (i == FLOOD_CAP)
			at_cap = sqlite_bytes();
		snprintf(key, sizeof(key),
		         "203.0.113.0/24/spammer%06d@random%06d.example/user%06d@example.com", i, i, i);
		q = grey1(st, key, "203.0.113.9", t, 5, FLOOD_CAP);
		capped += q.u.grey.capped;
	}
	at_end = sqlite_bytes();
	store_free(st);
	closed = sqlite_bytes();
	assert_int_equal(sqlite_rows("greylist_triplets"), FLOOD_CAP);
	assert_int_equal(capped, FLOOD_TRIPLETS - FLOOD_CAP);
	assert_int_equal(at_end, at_cap);
	print_message(
	    "greylist flood: %d unique triplets, cap %d: %lld rows; %lld bytes on disk at the cap and "
	    "after the flood, %lld once closed (%.0f bytes a row); %.1f s\n",
	    FLOOD_TRIPLETS, FLOOD_CAP, (long long)sqlite_rows("greylist_triplets"), (long long)at_cap,
	    (long long)closed, (double)closed / FLOOD_CAP, mono() - start);
	/* keys of 70 bytes, stored twice (the table and its expiry index): well under 400 bytes a row */
	assert_true(closed < (off_t)FLOOD_CAP * 400);
}

/*
 * The same with the longest keys a client can make (GREYSTEP_KEY_MAX - 1
 * bytes, most of them its sender): stored once, they cost about their
 * length a row, not the overflow pages an index on them would take.
 */
static void test_sqlite_greylist_flood_longest_keys(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall();
	char key[GREYSTEP_KEY_MAX];
	off_t closed;

	(void)state;
	memset(key, 'a', sizeof(key) - 1);
	key[sizeof(key) - 1] = '\0';
	for (int i = 0; i < 4000; i++) {
		char head[32];
		int n = snprintf(head, sizeof(head), "203.0.113.0/24/%07d", i);

		memcpy(key, head, (size_t)n);
		grey1(st, key, NULL, t, 0, 2000);
	}
	store_free(st);
	closed = sqlite_bytes();
	assert_int_equal(sqlite_rows("greylist_triplets"), 2000);
	print_message("greylist flood, %d-byte keys: 2000 rows, %lld bytes (%.0f bytes a row)\n",
	              GREYSTEP_KEY_MAX - 1, (long long)closed, (double)closed / 2000);
	assert_true(closed < (off_t)2000 * 2 * GREYSTEP_KEY_MAX);
}

/* A version 5 file (before the greylist) gets its tables on open, keeping what it held. */
static void test_sqlite_upgrade_v5(void **state)
{
	int64_t t = now_ms_wall();
	char out[256];
	store *st = open_store();

	(void)state;
	kv1(st, QUERY_KV_PUT, "k", "v", t, HOUR_MS, NULL);
	store_free(st);
	sqlite_cli("DROP TABLE greylist_triplets; DROP TABLE greylist_awl; PRAGMA user_version = 5;", out,
	           sizeof(out));
	st = open_store();
	assert_grey(grey1(st, "k1", "192.0.2.7", t, 1, 0), "new");
	assert_true(kv1(st, QUERY_KV_GET, "k", NULL, t, 0, NULL));
	store_free(st);
	sqlite_cli("PRAGMA user_version", out, sizeof(out));
	assert_string_equal(out, "7");
	sqlite_cli("SELECT name FROM sqlite_master WHERE name LIKE 'greylist%' ORDER BY name", out,
	           sizeof(out));
	assert_string_equal(out,
	                    "greylist_awl greylist_awl_expires greylist_triplets greylist_triplets_expires "
	                    "greylist_triplets_hash");
}

/* Two daemons on one Redis share one greylist: the first attempt at A, the retry at B passes. */
static void test_redis_greylist_shared(void **state)
{
	store *a = open_store(), *b = open_store();
	int64_t t = now_ms_wall(), first;
	query q;

	(void)state;
	q = grey1(a, "192.0.2.0/24/a@x/b@y", "192.0.2.7", t, 1, 0);
	assert_grey(q, "new");
	first = q.u.grey.now_ms;
	q = grey1(b, "192.0.2.0/24/a@x/b@y", "192.0.2.7", t, 1, 0);
	assert_int_equal(greystep_passes(q.u.grey.answer.result), q.u.grey.now_ms - first >= G_DELAY);
	if (!greystep_passes(q.u.grey.answer.result)) {
		usleep((G_DELAY + 50) * 1000);
		q = grey1(b, "192.0.2.0/24/a@x/b@y", "192.0.2.7", t, 1, 0);
	}
	assert_grey(q, "pass-first");
	/* the client counted at B is auto-whitelisted at A */
	assert_grey(grey1(a, "192.0.2.0/24/z@x/b@y", "192.0.2.7", t, 1, 0), "awl");
	store_free(a);
	store_free(b);
}

/* A record in greylist_lua's layout, written behind the store's back; exp in the past: left, not expired. */
static void redis_grey_hash(const char *kind, int n, const char *f1, int64_t v1, int64_t last, int64_t exp,
                            int64_t now)
{
	char out[64];

	redis_text(out, sizeof(out), "HSET %sgrey:%s:k%d %s %lld last %lld exp %lld", B.prefix, kind, n, f1,
	           (long long)v1, (long long)last, (long long)exp);
	if (exp > now)
		redis_text(out, sizeof(out), "PEXPIREAT %sgrey:%s:k%d %lld", B.prefix, kind, n,
		           (long long)exp);
}

static uint64_t lcg_next(uint64_t *x)
{
	*x = *x * 6364136223846793005ull + 1442695040888963407ull;
	return *x >> 33;
}

/* An offset from now, in ms, picked among the edges that matter to the step. */
static int64_t grey_offset(uint64_t *x)
{
	static const int64_t edges[] = {-3 * G_WINDOW,
	                                -G_WINDOW - 1000,
	                                -G_WINDOW + 1000,
	                                -G_DELAY - 1000,
	                                -G_DELAY + 1000,
	                                -2 * HOUR_MS,
	                                -HOUR_MS - 1000,
	                                -HOUR_MS + 1000,
	                                0,
	                                1000,
	                                2 * G_DELAY};

	return edges[lcg_next(x) % NELEM(edges)];
}

static bool same_step(const greystep_out *a, const greystep_out *b)
{
	return a->result == b->result && a->remaining_ms == b->remaining_ms && a->waited_ms == b->waited_ms &&
	       a->write_triplet == b->write_triplet && a->triplet.present == b->triplet.present &&
	       a->triplet.first_ms == b->triplet.first_ms && a->triplet.last_ms == b->triplet.last_ms &&
	       a->triplet_expires_ms == b->triplet_expires_ms && a->write_awl == b->write_awl &&
	       a->awl.present == b->awl.present && a->awl.count == b->awl.count &&
	       a->awl.last_ms == b->awl.last_ms && a->awl_expires_ms == b->awl_expires_ms;
}

/*
 * greylist_lua mirrors greystep_run: random stored states (a triplet live,
 * stale or absent, first and last around the edges; a client's record
 * with counts around awl_count), one script call each, and the whole
 * answer compared with greystep_run on the same state at the time the
 * script read (the answer's now_ms).
 */
static void test_redis_greylist_matches_greystep(void **state)
{
	store *st = open_store();
	uint64_t x = 42;
	char trip[16], awlkey[16];

	(void)state;
	for (int i = 0; i < 300; i++) {
		int64_t now = now_ms_wall(), far = now + 10 * HOUR_MS;
		greystep_triplet t = {.present = false};
		greystep_awl a = {.present = false};
		uint64_t awl_count = lcg_next(&x) % 3 ? 3 : 0, pick = lcg_next(&x) % 3;
		bool with_awl = lcg_next(&x) % 4 != 0;
		greystep_out want;
		query q;

		if (pick > 0) { /* 1: live, 2: stale (past exp, not yet expired by Redis) */
			t = (greystep_triplet){.present = pick == 1, .first_ms = now + grey_offset(&x)};
			t.last_ms =
			    t.first_ms + (lcg_next(&x) % 2 ? G_DELAY : 0) + (int64_t)(lcg_next(&x) % 3) - 1;
			redis_grey_hash("t", i, "first", t.first_ms, t.last_ms, pick == 1 ? far : now - 1000,
			                now);
		}
		if (lcg_next(&x) % 2) {
			a = (greystep_awl){
			    .present = true, .count = lcg_next(&x) % 5, .last_ms = now + grey_offset(&x)};
			redis_grey_hash("a", i, "count", (int64_t)a.count, a.last_ms, far, now);
		}
		snprintf(trip, sizeof(trip), "k%d", i);
		snprintf(awlkey, sizeof(awlkey), "k%d", i);
		q = grey1(st, trip, with_awl ? awlkey : NULL, 0, awl_count, 0);
		/* the client record of a query without one is never read */
		if (!with_awl)
			a.present = false;
		greystep_run(&q.u.grey.params, &t, with_awl ? &a : NULL, q.u.grey.now_ms, &want);
		if (!same_step(&want, &q.u.grey.answer))
			fail_msg(
			    "state %d: redis said %s remaining %lld waited %lld triplet %d %lld %lld %lld "
			    "awl %d "
			    "%llu %lld %lld; greystep_run %s remaining %lld waited %lld triplet %d %lld %lld "
			    "%lld awl %d %llu %lld %lld",
			    i, greystep_result_name(q.u.grey.answer.result),
			    (long long)q.u.grey.answer.remaining_ms, (long long)q.u.grey.answer.waited_ms,
			    q.u.grey.answer.write_triplet, (long long)q.u.grey.answer.triplet.first_ms,
			    (long long)q.u.grey.answer.triplet.last_ms,
			    (long long)q.u.grey.answer.triplet_expires_ms, q.u.grey.answer.write_awl,
			    (unsigned long long)q.u.grey.answer.awl.count,
			    (long long)q.u.grey.answer.awl.last_ms, (long long)q.u.grey.answer.awl_expires_ms,
			    greystep_result_name(want.result), (long long)want.remaining_ms,
			    (long long)want.waited_ms, want.write_triplet, (long long)want.triplet.first_ms,
			    (long long)want.triplet.last_ms, (long long)want.triplet_expires_ms,
			    want.write_awl, (unsigned long long)want.awl.count, (long long)want.awl.last_ms,
			    (long long)want.awl_expires_ms);
	}
	store_free(st);
}

/*
 * docs/redis.md: PREFIX "grey:t:" KEY and PREFIX "grey:a:" KEY, hashes
 * with a native expiry at their exp; the step reads Redis's TIME, so a
 * caller's now_ms of 1970 or a day ahead changes nothing, and the answer
 * carries the server's time.
 */
static void test_redis_greylist_server_clock(void **state)
{
	store *st = open_store();
	int64_t t = now_ms_wall(), first;
	char key[128], out[64];
	query q;

	(void)state;
	q = grey1(st, "k", "192.0.2.7", 1, 1, 0);
	assert_grey(q, "new");
	assert_true(q.u.grey.now_ms > t - 60000 && q.u.grey.now_ms < t + 60000);
	first = q.u.grey.now_ms;
	q = grey1(st, "k", "192.0.2.7", t + 24 * HOUR_MS, 1, 0);
	/* a host a day ahead does not pass early: only Redis's own clock counts */
	assert_int_equal(greystep_passes(q.u.grey.answer.result), q.u.grey.now_ms - first >= G_DELAY);
	snprintf(key, sizeof(key), "%sgrey:t:k", B.prefix);
	redis_text(out, sizeof(out), "HGET %s exp", key);
	assert_int_equal(atoll(out), q.u.grey.answer.triplet_expires_ms);
	redis_text(out, sizeof(out), "PTTL %s", key);
	assert_true(atoll(out) <= G_WINDOW + 1 &&
	            (atoll(out) > 0 || atoll(out) == -2)); /* -2: expired since */
	usleep((G_DELAY + 50) * 1000);
	q = grey1(st, "k", "192.0.2.7", 1, 1, 0);
	assert_grey(q, "pass-first");
	snprintf(key, sizeof(key), "%sgrey:a:192.0.2.7", B.prefix);
	redis_text(out, sizeof(out), "HGET %s count", key);
	assert_string_equal(out, "1");
	redis_text(out, sizeof(out), "PTTL %s", key);
	assert_true(atoll(out) > HOUR_MS - 60000 && atoll(out) <= HOUR_MS);
	/* after SCRIPT FLUSH the step runs with EVAL */
	redis_text(out, sizeof(out), "SCRIPT FLUSH");
	assert_grey(grey1(st, "k", "192.0.2.7", 1, 1, 0), "awl");
	store_free(st);
}

#define CASE(fn) cmocka_unit_test_setup(fn, case_setup)

/* --- distinct sets read only: peek, list, clear (the relay check, spamtrapctl relay) --- */

static uint64_t peek1(store *st, const char *set, const char *member, int64_t now, bool *present)
{
	uint64_t n = 99;

	if (store_distinct_peek(st, set, member, now, &n, present) != STORE_OK)
		fail_msg("store_distinct_peek %s %s: %s", set, member, store_last_error());
	return n;
}

/* A peek answers the live count and whether the member is live; it adds, refreshes and drops nothing. */
static void test_distinct_peek(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	const char *set = "relay:sasl:peek";
	bool present = true;
	query q;

	(void)state;
	assert_int_equal(peek1(st, set, "n1", t, &present), 0);
	assert_false(present);
	assert_int_equal(peek1(st, set, "n1", t, &present), 0); /* the peek did not add it */
	assert_int_equal(distinct1(st, set, "n1", t, 0), 1);
	assert_int_equal(distinct1(st, set, "n2", t + 10, 0), 2);
	assert_int_equal(peek1(st, set, "n1", t + 10, &present), 2);
	assert_true(present);
	assert_int_equal(peek1(st, set, "n3", t + 10, &present), 2);
	assert_false(present);
	/* n1 expires at t + WINDOW: the peek sees it gone, and a peek later than that drops nothing */
	assert_int_equal(peek1(st, set, "n1", t + WINDOW, &present), 1);
	assert_false(present);
	assert_int_equal(peek1(st, set, "n1", t + WINDOW + 10, &present), 0);
	/* ... while an add at an earlier time still finds n2 live: the peek did not drop it, nor refresh n1
	 */
	assert_int_equal(distinct1(st, set, "n3", t + WINDOW + 9, 0), 2);
	/* The same through a query, as the relay check asks it. */
	memset(&q, 0, sizeof(q));
	q.kind = QUERY_DISTINCT_ADD;
	q.u.distinct = (__typeof__(q.u.distinct)){
	    .key = set, .member = "n2", .now = t + WINDOW + 9, .window = WINDOW, .limit = 1, .peek = true};
	store_run(st, &q, 1, t + WINDOW + 9);
	assert_int_equal(q.status, QUERY_OK);
	assert_int_equal(q.u.distinct.count, 2);
	assert_true(q.u.distinct.present);
	/* limit 1 is ignored by a peek: nothing refused, nothing added */
	q.u.distinct.member = "n9";
	store_run(st, &q, 1, t + WINDOW + 9);
	assert_int_equal(q.u.distinct.count, 2);
	assert_false(q.u.distinct.present);
	assert_int_equal(peek1(st, set, "n9", t + WINDOW + 9, &present), 2);
	assert_false(present);
	store_free(st);
}

typedef struct seen_members {
	char names[8][64];
	int64_t expires[8];
	size_t n;
} seen_members;

static int see_member(const char *member, int64_t expires, void *ctx)
{
	seen_members *m = ctx;

	if (m->n < 8) {
		snprintf(m->names[m->n], sizeof(m->names[0]), "%s", member);
		m->expires[m->n++] = expires;
	}
	return 0;
}

/* One add under a cap of rows (store_distinct_add_capped); *capped says whether it was held back. */
static uint64_t distinct_capped(store *st, const char *set, const char *member, int64_t now, uint64_t limit,
                                uint64_t max_rows, bool *capped)
{
	uint64_t n = 0;

	if (store_distinct_add_capped(st, set, member, now, WINDOW, limit, max_rows, &n, capped) != STORE_OK)
		fail_msg("store_distinct_add_capped %s %s: %s", set, member, store_last_error());
	return n;
}

/*
 * relay.max_entries (SQLite): at the cap expired members go first; while
 * live ones fill it a new member is held back, known ones refresh, and a
 * set at its limit stays refused. Redis has no cap (its sets expire).
 */
static void test_distinct_max_rows(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	bool sqlite = B.backend == STORE_BACKEND_SQLITE, capped;

	(void)state;
	distinct_capped(st, "relay:a", "n1", t, 2, 3, &capped);
	distinct_capped(st, "relay:a", "n2", t, 2, 3, &capped);
	distinct_capped(st, "relay:b", "n1", t - WINDOW + 10, 2, 3, &capped); /* lives to t + 10 */
	assert_false(capped);
	/* full of live rows: a new member is held back, a known one refreshes */
	assert_int_equal(distinct_capped(st, "relay:c", "n1", t + 1, 2, 3, &capped), sqlite ? 0 : 1);
	assert_int_equal(capped, sqlite);
	assert_int_equal(distinct_capped(st, "relay:a", "n1", t + 2, 2, 3, &capped), 2);
	assert_false(capped);
	/* the set at its limit is refused as always, whatever the cap */
	assert_int_equal(distinct_capped(st, "relay:a", "n3", t + 3, 2, 3, &capped), 3);
	assert_false(capped);
	/* relay:b's member has expired: it makes room */
	assert_int_equal(distinct_capped(st, "relay:c", "n1", t + 20, 2, 3, &capped), 1);
	assert_false(capped);
	if (sqlite)
		assert_int_equal(distinct_capped(st, "relay:d", "n1", t + 21, 2, 3, &capped), 0);
	assert_int_equal(capped, sqlite);
	/* no cap: the same add goes in */
	assert_int_equal(distinct_capped(st, "relay:d", "n1", t + 22, 2, 0, &capped), 1);
	assert_false(capped);
	store_free(st);
}

/* SQLite does not rewrite a member already within STORE_DISTINCT_SLACK of its new expiry (Redis does). */
static void test_distinct_fresh_member_not_rewritten(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	seen_members m = {.n = 0};

	(void)state;
	assert_int_equal(STORE_DISTINCT_SLACK(WINDOW), 1);
	distinct1(st, "relay:fresh", "n1", t, 0);
	distinct1(st, "relay:fresh", "n1", t + 1, 0);
	assert_int_equal(store_distinct_list(st, "relay:fresh", t, see_member, &m), STORE_OK);
	assert_int_equal(m.n, 1);
	assert_int_equal(m.expires[0], t + WINDOW + (B.backend == STORE_BACKEND_SQLITE ? 0 : 1));
	/* further than the slack: rewritten */
	distinct1(st, "relay:fresh", "n1", t + 3, 0);
	m.n = 0;
	assert_int_equal(store_distinct_list(st, "relay:fresh", t, see_member, &m), STORE_OK);
	assert_int_equal(m.expires[0], t + 3 + WINDOW);
	store_free(st);
}

/* A charge under a cap of buckets. */
static query counter_capped(store *st, const char *key, int64_t now_ms, uint64_t cost, uint64_t max_rows)
{
	query q = counter_query(key, now_ms, 1000, 5, cost);

	q.u.counter.max_rows = max_rows;
	if (store_counter(st, &q) != STORE_OK)
		fail_msg("store_counter %s: %s", key, store_last_error());
	return q;
}

/*
 * ratelimit.max_buckets (SQLite): a new bucket at the cap drops the one
 * with the earliest TAT; a tripped bucket (the latest TAT) survives a
 * flood of new keys. Redis keeps them all (each expires at its TAT).
 */
static void test_counter_max_rows(void **state)
{
	store *st = open_store();
	int64_t now = now_s() * 1000;
	bool sqlite = B.backend == STORE_BACKEND_SQLITE;
	query q;

	(void)state;
	for (int i = 0; i < 5; i++)
		assert_true(counter_capped(st, "tripped", now, 1, 3).u.counter.allowed);
	assert_false(counter_capped(st, "tripped", now, 1, 3).u.counter.allowed);
	counter_capped(st, "k1", now, 1, 3);      /* TAT now + 1 s */
	counter_capped(st, "k2", now + 10, 1, 3); /* TAT now + 1.01 s */
	counter_capped(st, "k3", now + 20, 1, 3); /* the table is full: k1 goes */
	q = counter_capped(st, "k1", now + 30, 0, 3);
	assert_int_equal(q.u.counter.remaining, sqlite ? 5 : 4);
	q = counter_capped(st, "k2", now + 30, 0, 3);
	assert_int_equal(q.u.counter.remaining, 4);
	/* a flood of new keys never drops the tripped bucket */
	for (int i = 0; i < 20; i++) {
		char key[16];

		snprintf(key, sizeof(key), "flood%d", i);
		assert_true(counter_capped(st, key, now + 40 + i, 1, 3).u.counter.allowed);
	}
	assert_false(counter_capped(st, "tripped", now + 100, 1, 3).u.counter.allowed);
	store_free(st);
}

/*
 * STORE_NOW_SERVER (a query's store_clock, the relay check): the store's
 * clock decides, not the caller's. On Redis that is TIME, so that hosts
 * with skewed clocks count one window on a shared set: a host whose clock
 * is a window ahead does not drop the others' members, nor one behind
 * keep them too long. The members expire a window after the server's now
 * (here the same machine's clock: a bound of a minute, not a measure).
 */
static void test_distinct_store_clock(void **state)
{
	store *st = open_store();
	const char *set = "relay:sasl:clock";
	seen_members m = {.n = 0};
	bool present;
	int64_t t;
	query q;

	(void)state;
	assert_int_equal(distinct1(st, set, "a", STORE_NOW_SERVER, 0), 1);
	assert_int_equal(distinct1(st, set, "b", STORE_NOW_SERVER, 2), 2);
	assert_int_equal(distinct1(st, set, "c", STORE_NOW_SERVER, 2), 3); /* the limit holds */
	assert_int_equal(peek1(st, set, "a", STORE_NOW_SERVER, &present), 2);
	assert_true(present);
	t = now_s();
	assert_int_equal(store_distinct_list(st, set, t, see_member, &m), STORE_OK);
	assert_int_equal(m.n, 2);
	for (size_t i = 0; i < m.n; i++)
		if (m.expires[i] < t + WINDOW - 60 || m.expires[i] > t + WINDOW + 60)
			fail_msg("%s expires at %lld, not about %lld", m.names[i], (long long)m.expires[i],
			         (long long)(t + WINDOW));
	/* A query with store_clock: the caller's now (a host a window ahead) is not used. */
	memset(&q, 0, sizeof(q));
	q.kind = QUERY_DISTINCT_ADD;
	q.u.distinct = (__typeof__(q.u.distinct)){.key = set,
	                                          .member = "d",
	                                          .now = t + 2 * WINDOW,
	                                          .window = WINDOW,
	                                          .limit = 3,
	                                          .store_clock = true};
	store_run(st, &q, 1, t + 2 * WINDOW);
	assert_int_equal(q.status, QUERY_OK);
	assert_int_equal(q.u.distinct.count, 3); /* a and b still live: not dropped by the skewed clock */
	q.u.distinct.peek = true;
	q.u.distinct.member = "a";
	q.u.distinct.now = t - 2 * WINDOW; /* a host a window behind */
	store_run(st, &q, 1, t - 2 * WINDOW);
	assert_int_equal(q.u.distinct.count, 3);
	assert_true(q.u.distinct.present);
	/*
	 * Batched (Redis: one pipeline), the relay check's peek then add: the
	 * peek reads before the add writes, and both take the store's clock.
	 */
	query two[2];

	memset(two, 0, sizeof(two));
	for (int i = 0; i < 2; i++) {
		two[i].kind = QUERY_DISTINCT_ADD;
		two[i].u.distinct = (__typeof__(two[i].u.distinct)){.key = set,
		                                                    .member = "e",
		                                                    .now = t + 2 * WINDOW,
		                                                    .window = WINDOW,
		                                                    .limit = 5,
		                                                    .store_clock = true};
	}
	two[0].u.distinct.peek = true;
	store_run(st, two, 2, t + 2 * WINDOW);
	assert_int_equal(two[0].status, QUERY_OK);
	assert_int_equal(two[1].status, QUERY_OK);
	assert_false(two[0].u.distinct.present);
	assert_int_equal(two[0].u.distinct.count, 3);
	assert_int_equal(two[1].u.distinct.count, 4);
	store_free(st);
}

/* list: the live members with their expiry, latest first; clear drops the set and only it. */
static void test_distinct_list_clear(void **state)
{
	store *st = open_store();
	int64_t t = now_s();
	const char *set = "relay:sasl:list";
	seen_members m = {.n = 0};
	bool present;

	(void)state;
	distinct1(st, set, "192.0.2.0/24", t, 0);
	distinct1(st, set, "198.51.100.0/24", t + 5, 0);
	distinct1(st, set, "old", t - WINDOW, 0);
	distinct1(st, "relay:sasl:other", "192.0.2.0/24", t, 0);
	assert_int_equal(store_distinct_list(st, set, t + 1, see_member, &m), STORE_OK);
	assert_int_equal(m.n, 2);
	assert_string_equal(m.names[0], "198.51.100.0/24");
	assert_int_equal(m.expires[0], t + 5 + WINDOW);
	assert_string_equal(m.names[1], "192.0.2.0/24");
	assert_int_equal(m.expires[1], t + WINDOW);
	assert_int_equal(store_distinct_clear(st, set), STORE_OK);
	m.n = 0;
	assert_int_equal(store_distinct_list(st, set, t + 1, see_member, &m), STORE_OK);
	assert_int_equal(m.n, 0);
	assert_int_equal(peek1(st, set, "192.0.2.0/24", t + 1, &present), 0);
	assert_int_equal(store_distinct_clear(st, set), STORE_NOTFOUND);
	assert_int_equal(peek1(st, "relay:sasl:other", "192.0.2.0/24", t + 1, &present), 1);
	assert_true(present);
	assert_int_equal(store_distinct_peek(st, "", "m", t, NULL, NULL), STORE_ERROR);
	assert_int_equal(store_distinct_clear(st, ""), STORE_ERROR);
	store_free(st);
}

/*
 * The hot copies' clock offset from one TIME: this host's ms clock read
 * before sending (sent_ms, truncated) and Redis's reply (truncated to
 * ms). Whatever the fractions, the copies' clock (this host's ms plus
 * the offset) must never be behind Redis's ms clock at any later
 * moment, or a bucket Redis charged a ms before looks fuller than it is
 * (a 2/1h bucket charged once: no room for the second unit); and it is
 * ahead by no more than the command's delay and the truncations.
 */
static void redis_clock_offset_never_behind(void **state)
{
	(void)state;
	for (int64_t sent_us = 0; sent_us < 2000; sent_us += 37)
		for (int64_t delay_us = 0; delay_us < 1500; delay_us += 251)
			for (int64_t skew_us = -3000; skew_us <= 3000; skew_us += 13) {
				int64_t skew = skew_us + 1000000; /* Redis's clock less this host's, > 0 */
				int64_t redis_us = sent_us + delay_us + skew; /* TIME's answer */
				int64_t off = store_redis_clock_offset(redis_us / 1000, sent_us / 1000);

				/* never behind: this host's ms + off >= Redis's ms, the same instant */
				if (off * 1000 < skew)
					fail_msg("sent %lld us, delay %lld us, skew %lld us: offset %lld ms",
					         (long long)sent_us, (long long)delay_us, (long long)skew,
					         (long long)off);
				assert_true(off * 1000 <= skew + delay_us + 2000);
			}
}

/* A wait for the change channel that `cancel` ends: 0 returned, and well before timeout_ms. */
static void assert_watch_cancelled(store_watch *w, int cancel, const char *what)
{
	char err[256];
	double t0 = mono();

	assert_int_equal(store_watch_wait(w, 20000, cancel, err, sizeof(err)), 0);
	if (mono() - t0 > 10.0)
		fail_msg("%s: the wait took %.3f s of its 20 s with the cancel readable", what, mono() - t0);
}

/*
 * store_watch_wait's cancel_fd (the exporter's stop): readable, it ends a
 * wait at once whatever the watch is doing (subscribed, backing off after a
 * lost connection, about to reconnect); left unread, it changes nothing.
 */
static void test_redis_watch_cancel(void **state)
{
	int cancel = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	const uint64_t one = 1;
	uint64_t drained;
	char err[256], publish[160];
	store_watch *w;
	int rc = 0;

	(void)state;
	assert_true(cancel >= 0);
	w = store_watch_open(&B.cfg, err, sizeof(err));
	assert_non_null(w);
	assert_int_equal(store_watch_wait(w, 5000, cancel, err, sizeof(err)), 1); /* connected */
	snprintf(publish, sizeof(publish), "PUBLISH %s%s x", B.prefix, STORE_WATCH_CHANNEL);
	assert_true(redis_do(publish));
	assert_int_equal(store_watch_wait(w, 5000, cancel, err, sizeof(err)), 1);

	assert_int_equal(write(cancel, &one, sizeof(one)), (ssize_t)sizeof(one));
	assert_watch_cancelled(w, cancel, "subscribed");
	assert_watch_cancelled(w, cancel, "subscribed, the cancel still unread");

	/* Lost: the waits back off (100 ms, then more), then connect again. */
	assert_int_equal(read(cancel, &drained, sizeof(drained)), (ssize_t)sizeof(drained));
	redis_stop();
	for (int i = 0; i < 50 && rc >= 0; i++)
		rc = store_watch_wait(w, 200, cancel, err, sizeof(err));
	assert_int_equal(rc, -1);
	assert_int_equal(write(cancel, &one, sizeof(one)), (ssize_t)sizeof(one));
	assert_watch_cancelled(w, cancel, "backing off");
	assert_true(redis_start());
	usleep(300 * 1000); /* past the back-off: the next wait would connect */
	assert_watch_cancelled(w, cancel, "about to reconnect");
	assert_int_equal(read(cancel, &drained, sizeof(drained)), (ssize_t)sizeof(drained));
	assert_int_equal(store_watch_wait(w, 5000, cancel, err, sizeof(err)), 1); /* connected again */
	store_watch_free(w);
	close(cancel);
}

static const struct CMUnitTest common_tests[] = {
    CASE(test_record_then_lookup),
    CASE(test_lookup_order),
    CASE(test_lookup_order_48_keys),
    CASE(test_miss),
    CASE(test_expiry),
    CASE(test_refresh),
    CASE(test_hit_after_expiry_starts_over),
    CASE(test_record_tells_new_listings),
    CASE(test_provenance_round_trip),
    CASE(test_put_get_remove),
    CASE(test_put_many),
    CASE(test_lookup_netlens),
    CASE(test_purge),
    CASE(test_foreach),
    CASE(test_count_types),
    CASE(test_concurrent),
    CASE(test_persistence),
    CASE(test_long_keys),
    CASE(test_bad_arguments),
    CASE(test_netlen_lookups),
    CASE(test_netlen_remove),
    CASE(test_netlen_other_handle),
    CASE(test_netlen_other_handle_pool),
    CASE(test_lookup_built),
    CASE(test_distinct_counts),
    CASE(test_distinct_window),
    CASE(test_distinct_limit),
    CASE(test_distinct_bad_arguments),
    CASE(test_distinct_concurrent),
    CASE(test_distinct_peek),
    CASE(test_distinct_list_clear),
    CASE(test_distinct_max_rows),
    CASE(test_distinct_fresh_member_not_rewritten),
    CASE(test_counter_max_rows),
    CASE(test_distinct_store_clock),
    CASE(test_kv_ops),
    CASE(test_kv_expiry),
    CASE(test_kv_bad_arguments),
    CASE(test_counter_burst_then_limit),
    CASE(test_counter_debt_is_paid_back),
    CASE(test_counter_delete),
    CASE(test_counter_refill),
    CASE(test_counter_bad_arguments),
    CASE(test_kv_counter_concurrent),
    CASE(test_run_mixed_batch),
    CASE(test_greylist_sequence),
    CASE(test_greylist_expiry),
    CASE(test_greylist_awl_put),
    CASE(test_greylist_admin),
    CASE(test_greylist_longest_key),
    CASE(test_greylist_concurrent),
    CASE(test_greylist_bad_arguments),
};

/*
 * The daemon's store (store_write_behind): relay sets, buckets and trip
 * markers answered from memory as the file answers them, written at
 * store_free (a restart keeps them), and a reset by another process (a
 * child here, spamtrapctl in life) reaches the daemon's memory.
 */
static void test_sqlite_write_behind(void **state)
{
	const char *set = "relay:sasl:wb";
	store *st = open_store();
	int64_t t = now_s(), tms = now_ms_wall();
	bool present = false;
	query q;
	pid_t pid;
	int status = -1;

	(void)state;
	assert_int_equal(store_write_behind(st), STORE_OK);
	assert_int_equal(distinct1(st, set, "n1", t, 2), 1);
	assert_int_equal(distinct1(st, set, "n2", t, 2), 2);
	assert_int_equal(distinct1(st, set, "n3", t, 2), 3); /* refused, not added */
	assert_int_equal(peek1(st, set, "n3", t, &present), 2);
	assert_false(present);
	assert_true(counter1(st, "account:wb", tms, 60000, 2, 1).u.counter.allowed);
	assert_true(counter1(st, "account:wb", tms, 60000, 2, 1).u.counter.allowed);
	assert_false(counter1(st, "account:wb", tms, 60000, 2, 1).u.counter.allowed);
	assert_false(kv1(st, QUERY_KV_PUT_NEW, "sasl:wb", "n3 networks=3", tms, HOUR_MS, NULL));
	assert_true(kv1(st, QUERY_KV_GET, "sasl:wb", NULL, tms, 0, &q));
	store_free(st);
	/* A restart: the file has it all. */
	st = open_store();
	assert_int_equal(peek1(st, set, "n1", t, &present), 2);
	assert_true(present);
	assert_int_equal(counter1(st, "account:wb", tms, 60000, 2, 0).u.counter.remaining, 0);
	store_free(st);
	/* The daemon again, its memory loaded; a reset in another process reaches it. */
	st = open_store();
	assert_int_equal(store_write_behind(st), STORE_OK);
	assert_int_equal(distinct1(st, set, "n4", t, 2), 3);
	assert_true(kv1(st, QUERY_KV_GET, "sasl:wb", NULL, tms, 0, &q));
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char err[256];
		store *ctl = store_open(&B.cfg, err, sizeof(err));
		query del = {.kind = QUERY_KV};

		del.u.kv.op = QUERY_KV_DELETE;
		del.u.kv.ns = "grey";
		del.u.kv.key = "sasl:wb";
		del.u.kv.now_ms = tms;
		_exit(ctl && store_distinct_clear(ctl, set) == STORE_OK &&
		              store_counter_delete(ctl, "rate", "account:wb") == STORE_OK &&
		              store_kv(ctl, &del) == STORE_OK
		          ? 0
		          : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_int_equal(distinct1(st, set, "n4", t, 2), 1);
	assert_int_equal(counter1(st, "account:wb", tms, 60000, 2, 0).u.counter.remaining, 2);
	assert_false(kv1(st, QUERY_KV_GET, "sasl:wb", NULL, tms, 0, &q));
	store_free(st);
}

/*
 * A bucket and a network the file no longer has (a purge dropped the
 * drained bucket and the expired member) while the daemon's memory still
 * holds them: charged and refreshed again there, the write behind's
 * UPDATE finds no row and puts one, so that a restart reads both.
 */
static void test_sqlite_write_behind_after_purge(void **state)
{
	const char *set = "relay:sasl:wbp";
	store *st = open_store();
	int64_t t = now_s(), tms = now_ms_wall();
	bool present = false;

	(void)state;
	assert_int_equal(store_write_behind(st), STORE_OK);
	assert_true(counter1(st, "account:wbp", tms, 60000, 2, 1).u.counter.allowed);
	assert_int_equal(distinct1(st, set, "n1", t, 2), 1);
	assert_int_equal(store_sync(st), STORE_OK); /* both rows in the file */
	/* purged as of 200 s on: the bucket has drained and the member expired by then */
	assert_int_equal(store_purge(st, t + 200, NULL), STORE_OK);
	assert_true(counter1(st, "account:wbp", tms, 60000, 2, 1).u.counter.allowed);
	assert_int_equal(distinct1(st, set, "n1", t + 50, 2), 1); /* later by more than the slack: written */
	store_free(st);
	st = open_store();
	assert_int_equal(counter1(st, "account:wbp", tms, 60000, 2, 0).u.counter.remaining, 0);
	assert_int_equal(peek1(st, set, "n1", t + 50, &present), 1);
	assert_true(present);
	store_free(st);
}

/*
 * A file of 0.3.0 (schema version 6) opens as version 7: its rows kept,
 * the daemon's tables (hot_owner, hot_requests) added, and a daemon
 * writing behind on it leaves no owner after a clean stop.
 */
static void test_sqlite_upgrade_6_to_7(void **state)
{
	const char *set = "relay:sasl:upgrade";
	store *st = open_store();
	int64_t t = now_s();
	bool present = false;
	char got[64];

	(void)state;
	assert_int_equal(distinct1(st, set, "n1", t, 5), 1);
	store_free(st);
	sqlite_cli("DROP TABLE hot_owner; DROP TABLE hot_requests; PRAGMA user_version = 6;", got,
	           sizeof(got));
	st = open_store();
	assert_int_equal(store_write_behind(st), STORE_OK);
	assert_int_equal(peek1(st, set, "n1", t, &present), 1);
	assert_true(present);
	assert_int_equal(distinct1(st, set, "n2", t, 5), 2);
	store_free(st);
	sqlite_cli("PRAGMA user_version", got, sizeof(got));
	assert_string_equal(got, "7");
	sqlite_cli("SELECT count(*) FROM hot_owner; SELECT count(*) FROM distinct_members", got, sizeof(got));
	assert_string_equal(got, "0 2");
}

static atomic_int hot_failed_lines, hot_recovered_lines;

static void hot_log_sink(int level, const char *msg, void *ctx)
{
	(void)level;
	(void)ctx;
	if (strstr(msg, "counts not written to the file"))
		atomic_fetch_add(&hot_failed_lines, 1);
	if (strstr(msg, "counts written to the file again"))
		atomic_fetch_add(&hot_recovered_lines, 1);
}

/* Until *n is above zero, at most limit seconds. */
static bool seen_within(atomic_int *n, double limit)
{
	double start = mono();

	while (atomic_load(n) == 0 && mono() - start < limit)
		usleep(20000);
	return atomic_load(n) > 0;
}

/*
 * The write-behind cannot write (another process holds the file's write
 * lock): the daemon says so, keeps the counts, and writes them once the
 * lock is gone, and says that too. Silent, a crash would lose far more
 * than the documented 200 ms without anyone knowing.
 */
static void test_sqlite_write_behind_failure_logged(void **state)
{
	const char *set = "relay:sasl:locked";
	store *st = open_store();
	int64_t t = now_s();
	bool present = false;
	locker l;

	(void)state;
	atomic_store(&hot_failed_lines, 0);
	atomic_store(&hot_recovered_lines, 0);
	log_set_sink(hot_log_sink, NULL);
	assert_int_equal(store_write_behind(st), STORE_OK);
	l = locker_start("BEGIN IMMEDIATE;");
	assert_int_equal(distinct1(st, set, "n1", t, 5), 1);
	assert_true(seen_within(&hot_failed_lines, 30));
	locker_stop(&l);
	assert_true(seen_within(&hot_recovered_lines, 30));
	log_set_sink(NULL, NULL);
	store_free(st);
	st = open_store();
	assert_int_equal(peek1(st, set, "n1", t, &present), 1);
	assert_true(present);
	store_free(st);
}

/*
 * Two daemons sharing one SQLite file (spamtrapd.json(5) allows it, e.g.
 * greylist.maintenance): each sees the other in hot_owner and counts in
 * the file, so that an account seen by both trips at max_networks as it
 * did before write-behind, not at twice that.
 */
static void test_sqlite_write_behind_two_daemons(void **state)
{
	const char *set = "relay:sasl:shared";
	store *st = open_store();
	int64_t t = now_s();
	bool present = false;
	int go[2], ready[2], status = -1;
	char c = 0;
	pid_t pid;
	uint64_t n = 0;
	double start;

	(void)state;
	assert_int_equal(store_write_behind(st), STORE_OK);
	assert_int_equal(distinct1(st, set, "n1", t, 3), 1);
	assert_int_equal(distinct1(st, set, "n2", t, 3), 2);
	assert_int_equal(store_sync(st), STORE_OK);
	assert_int_equal(pipe(go), 0);
	assert_int_equal(pipe(ready), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char err[256];
		store *other = store_open(&B.cfg, err, sizeof(err));
		uint64_t count = 0;
		bool capped = false, ok;

		ok = other && store_write_behind(other) == STORE_OK &&
		     store_distinct_add_capped(other, set, "n3", t, WINDOW, 3, 0, &count, &capped) ==
		         STORE_OK &&
		     count == 3;
		struct pollfd wait = {.fd = go[0], .events = POLLIN};

		/* Not forever: a parent that failed never says go. */
		if (write(ready[1], ok ? "y" : "n", 1) != 1 || poll(&wait, 1, 60000) != 1)
			ok = false;
		store_free(other);
		_exit(ok ? 0 : 1);
	}
	assert_int_equal(read(ready[0], &c, 1), 1);
	assert_int_equal(c, 'y');
	/* This daemon sees the other at its next write-behind tick: its answers come from the file. */
	for (start = mono(); mono() - start < 20 && n != 3; usleep(20000))
		n = peek1(st, set, "n9", t, &present);
	assert_int_equal(n, 3);
	assert_int_equal(distinct1(st, set, "n4", t, 3), 4); /* refused: n1 n2 here, n3 there */
	assert_int_equal(write(go[1], "x", 1), 1);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	store_free(st);
	close(go[0]), close(go[1]), close(ready[0]), close(ready[1]);
}

/* In a child (spamtrapctl in life): relay reset of set on the case's file. */
/*
 * A reset from another process (spamtrapctl's, reaching the daemon through
 * hot_requests): this binary run again, not a fork, since a child forked
 * from a process whose store threads run can find one of their locks
 * (SQLite's, malloc's) held forever.
 */
static void clear_in_child(const char *set)
{
	extern char **environ;
	char *argv[] = {(char *)"test_store", (char *)CHILD_CLEAR, B.path, (char *)set, NULL};
	pid_t pid;
	int status = -1;

	assert_int_equal(posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ), 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* The child's side of clear_in_child: exit 0 when the set was cleared. */
static int child_clear(char *path, const char *set)
{
	store_config cfg;
	char err[256];
	store *ctl;
	int rc;

	memset(&cfg, 0, sizeof(cfg));
	cfg.backend = STORE_BACKEND_SQLITE;
	cfg.sqlite_path = path;
	if (!(ctl = store_open(&cfg, err, sizeof(err)))) {
		fprintf(stderr, "test_store child: store_open: %s\n", err);
		return 1;
	}
	rc = store_distinct_clear(ctl, set) == STORE_OK ? 0 : 1;
	store_free(ctl);
	return rc;
}

/*
 * A reload that changes the store's settings opens a second store on the
 * file before the first closes: a reset reaches the memory of both, and
 * the old one's close leaves hot_owner to the new one (the same pid), so
 * that spamtrapctl's resets still reach the daemon afterwards.
 */
static void test_sqlite_write_behind_reload(void **state)
{
	const char *set = "relay:sasl:reload";
	store *old = open_store(), *st;
	int64_t t = now_s();
	bool present = true;
	char got[64], want[32];

	(void)state;
	assert_int_equal(store_write_behind(old), STORE_OK);
	assert_int_equal(distinct1(old, set, "n1", t, 5), 1);
	assert_int_equal(store_sync(old), STORE_OK);
	st = open_store();
	assert_int_equal(store_write_behind(st), STORE_OK);
	assert_int_equal(distinct1(st, set, "n2", t, 5), 2);
	/* Served by either store's flusher: both forget. */
	clear_in_child(set);
	assert_int_equal(distinct1(st, set, "n3", t, 5), 1);
	(void)peek1(old, set, "n1", t, &present);
	assert_false(present);
	store_free(old);
	snprintf(want, sizeof(want), "%d", (int)getpid());
	sqlite_cli("SELECT pid FROM hot_owner", got, sizeof(got));
	assert_string_equal(got, want);
	assert_int_equal(distinct1(st, set, "n4", t, 5), 2);
	clear_in_child(set);
	assert_int_equal(distinct1(st, set, "n5", t, 5), 1);
	store_free(st);
}

/* --- the Redis store's local view ---------------------------------------- */

/* The view alone (no I/O): it answers only when built, confirmed lately and not read meanwhile. */
static void test_redis_view_state(void **state)
{
	redis_view *v = redis_view_new(1000);
	const char *keys[] = {"listed@example.com", "other@example.com", "192.0.2.7"};
	redis_view_token t, t2;
	int64_t now = 1000000;
	char key[32];
	bool fits = true;

	(void)state;
	assert_non_null(v);
	assert_false(redis_view_enter(v, now, &t)); /* not built */
	redis_view_begin(v);
	assert_true(redis_view_add(v, keys[0], strlen(keys[0])));
	redis_view_confirm(v, now);
	assert_false(redis_view_enter(v, now, &t)); /* built, not ready */
	redis_view_ready(v);
	assert_true(redis_view_enter(v, now + 10, &t));
	assert_int_equal(redis_view_test(v, keys, 3) & 1, 1);
	assert_true(redis_view_still(v, &t));
	/* An invalidation read meanwhile: the answer does not hold, then the new key is there. */
	redis_view_reading(v);
	assert_false(redis_view_enter(v, now + 10, &t2));
	redis_view_add(v, keys[2], strlen(keys[2]));
	redis_view_read(v);
	assert_false(redis_view_still(v, &t));
	assert_true(redis_view_enter(v, now + 10, &t));
	assert_int_equal(redis_view_test(v, keys, 3) & 5, 5);
	/* Not confirmed for longer than the bound: no answer. */
	assert_true(redis_view_enter(v, now + REDIS_VIEW_STALE_MS, &t));
	assert_false(redis_view_enter(v, now + REDIS_VIEW_STALE_MS + 1, &t));
	redis_view_confirm(v, now + 1000);
	assert_true(redis_view_enter(v, now + 1000, &t));
	/* Disabled (a lost connection) between enter and still: the answer does not hold. */
	redis_view_disable(v);
	assert_false(redis_view_still(v, &t));
	assert_false(redis_view_enter(v, now + 1000, &t));
	/* A rebuild forgets every key. */
	redis_view_begin(v);
	redis_view_confirm(v, now + 1000);
	redis_view_ready(v);
	assert_int_equal(redis_view_keys(v), 0);
	/* Past its size it says so: the thread rebuilds or leaves it off. */
	for (int i = 0; i < 100000 && fits; i++) {
		snprintf(key, sizeof(key), "k%d@example.com", i);
		fits = redis_view_add(v, key, strlen(key));
	}
	assert_false(fits);
	assert_true(redis_view_keys(v) > redis_view_max_keys(v));
	redis_view_free(v);
}

static store *open_view_store(void)
{
	B.cfg.redis_local_view = true;
	B.cfg.redis_local_view_keys = 10000;
	return open_store();
}

static uint64_t view_answers(store *st)
{
	uint64_t n = 0;

	assert_true(store_filter_answers(st, &n));
	return n;
}

/* Lookups of a key that is not listed until the view answers one alone. */
static void wait_view(store *st)
{
	uint64_t before = view_answers(st);

	for (int i = 0; i < 1000; i++) {
		assert_int_equal(lookup1(st, "nobody@example.org", now_s(), NULL), STORE_NOTFOUND);
		if (view_answers(st) > before)
			return;
		usleep(10000);
	}
	fail_msg("the local view never answered");
}

/* Lookups of key until found, for at most 1 s: the view's bound on another writer's entry. */
static void found_within_bound(store *st, const char *key)
{
	double start = mono();
	store_status rc;

	while ((rc = lookup1(st, key, now_s(), NULL)) == STORE_NOTFOUND && mono() - start < 1.0)
		usleep(5000);
	if (rc != STORE_OK)
		fail_msg("%s: %s %.3f s after it was written elsewhere", key,
		         rc == STORE_NOTFOUND ? "not found" : store_last_error(), mono() - start);
}

/*
 * A key removed elsewhere (a FLUSHDB) is not found within the same bound:
 * an answer the view remembers lives until the invalidation reaches the
 * view's thread, which a lookup right after the write can overtake.
 */
static void gone_within_bound(store *st, const char *key)
{
	double start = mono();
	store_status rc;

	while ((rc = lookup1(st, key, now_s(), NULL)) == STORE_OK && mono() - start < 1.0)
		usleep(5000);
	if (rc != STORE_NOTFOUND)
		fail_msg("%s: %s %.3f s after it was removed elsewhere", key,
		         rc == STORE_OK ? "still found" : store_last_error(), mono() - start);
}

/*
 * Entries written by others (another store handle, a raw HSET around
 * spamtrapd) are found within the bound, while the view keeps answering
 * for the keys that are not listed.
 */
static void test_redis_view_other_writers(void **state)
{
	store *st = open_view_store(), *other;
	store_hit h = hit_at(now_s(), "trap@example.com");
	const char *keys[] = {"nobody@example.org", "@example.org", "192.0.2.0/24"};
	char key[64];

	(void)state;
	B.cfg.redis_local_view = false;
	other = open_store();
	wait_view(st);
	for (int i = 0; i < 5; i++) {
		snprintf(key, sizeof(key), "hit%d@example.net", i);
		assert_int_equal(lookup1(st, key, now_s(), NULL), STORE_NOTFOUND);
		record1(other, key, &h);
		found_within_bound(st, key);
		snprintf(key, sizeof(key), "raw%d@example.net", i);
		assert_int_equal(lookup1(st, key, now_s(), NULL), STORE_NOTFOUND);
		redis_hset_around(key, now_s() + 3600);
		found_within_bound(st, key);
	}
	/* A network written elsewhere: found through the lookup's other keys too. */
	record1(other, "192.0.2.0/24", &h);
	store_purge(other, now_s(), NULL); /* netlens trusted, and holding /24 */
	{
		store_entry e;
		double start = mono();

		while (store_lookup(st, keys, 3, now_s(), &e) != STORE_OK && mono() - start < 1.0)
			usleep(5000);
		assert_int_equal(store_lookup(st, keys, 3, now_s(), &e), STORE_OK);
		assert_string_equal(e.key, "192.0.2.0/24");
	}
	wait_view(st);
	store_free(other);
	store_free(st);
}

/*
 * The view's connection killed, the database flushed: lookups go to Redis
 * until it is rebuilt, and the rebuilt view hears of other writers again.
 */
static void test_redis_view_fallback(void **state)
{
	store *st = open_view_store();
	char key[64];

	(void)state;
	wait_view(st);
	for (int i = 0; i < 3; i++) {
		assert_true(redis_do("CLIENT KILL TYPE pubsub"));
		snprintf(key, sizeof(key), "killed%d@example.net", i);
		redis_hset_around(key, now_s() + 3600);
		found_within_bound(st, key);
		wait_view(st);
		assert_int_equal(lookup1(st, key, now_s(), NULL), STORE_OK);
		snprintf(key, sizeof(key), "rebuilt%d@example.net", i);
		assert_int_equal(lookup1(st, key, now_s(), NULL), STORE_NOTFOUND);
		redis_hset_around(key, now_s() + 3600);
		found_within_bound(st, key);
	}
	assert_true(redis_do("FLUSHDB"));
	gone_within_bound(st, key);
	redis_hset_around("flushed@example.net", now_s() + 3600);
	found_within_bound(st, "flushed@example.net");
	wait_view(st);
	redis_hset_around("after-flush@example.net", now_s() + 3600);
	found_within_bound(st, "after-flush@example.net");
	store_free(st);
}

/* The copies answer buckets (hot_run) once their tracking is on. */
static void wait_hot(store *st)
{
	for (int i = 0; i < 1000; i++) {
		uint64_t before = store_script_round_trips(st);
		query q = counter_query("acct:warm", now_ms_wall(), HOUR_MS, 5, 0);

		assert_int_equal(store_run(st, &q, 1, now_s()), STORE_OK);
		if (store_script_round_trips(st) == before)
			return;
		usleep(10000);
	}
	fail_msg("the hot copies never answered");
}

/* st writing behind, its local view built and its hot copies answering. */
static void hot_ready(store *st)
{
	assert_int_equal(store_write_behind(st), STORE_OK);
	wait_view(st);
	wait_hot(st);
}

/* The relay check's query of a set, timed by Redis (store_clock): the kind the hot copies hold. */
static query relay_query(const char *set, const char *member, bool peek)
{
	query q = distinct_query(set, member, 0, peek);

	q.u.distinct.store_clock = true;
	return q;
}

/* The scripts Redis has run (INFO commandstats: EVALSHA's calls). */
static long evalsha_calls(void)
{
	char out[8192];
	const char *at;

	redis_text(out, sizeof(out), "INFO commandstats");
	at = strstr(out, "cmdstat_evalsha:calls=");
	return at ? strtol(at + strlen("cmdstat_evalsha:calls="), NULL, 10) : 0;
}

/* store_run of a recipient's relay queries (peek and add of member) and a bucket's peek: its round trips. */
static uint64_t relay_trips(store *st, const char *member, query *q)
{
	uint64_t before = store_script_round_trips(st);

	q[0] = relay_query("relay:sasl:cold", member, true);
	q[1] = relay_query("relay:sasl:cold", member, false);
	q[2] = counter_query("acct:cold", now_ms_wall(), HOUR_MS, 5, 0);
	assert_int_equal(store_run(st, q, 3, now_s()), STORE_OK);
	for (int i = 0; i < 3; i++)
		assert_int_equal(q[i].status, QUERY_OK);
	return store_script_round_trips(st) - before;
}

/*
 * The hot copies' cold path (the daemon's store): an account's first
 * request reads its set and bucket and adds its new network in one round
 * trip; a known network read for a copy writes nothing, so that the copy
 * stays (the next request costs none); the limit is still Redis's.
 */
static void test_redis_hot_cold_path(void **state)
{
	store *st = open_view_store();
	query q[3];
	char out[64];
	long calls;
	double start;

	(void)state;
	hot_ready(st);
	calls = evalsha_calls();
	assert_int_equal(relay_trips(st, "n1", q), 1);
	assert_int_equal(evalsha_calls() - calls, 2); /* the set's read and add one script, the bucket's */
	assert_int_equal(q[0].u.distinct.count, 0);
	assert_false(q[0].u.distinct.present);
	assert_int_equal(q[1].u.distinct.count, 1);
	assert_int_equal(q[2].u.counter.remaining, 5);
	assert_int_equal(relay_trips(st, "n2", q), 1); /* its own add dropped the copy: read again */
	assert_int_equal(q[0].u.distinct.count, 1);
	assert_int_equal(q[1].u.distinct.count, 2);
	assert_int_equal(relay_trips(st, "n1", q), 1);
	assert_int_equal(q[0].u.distinct.count, 2);
	assert_true(q[0].u.distinct.present);
	assert_int_equal(q[1].u.distinct.count, 2);
	/*
	 * Known: read, not written, kept, so the next request costs none. The
	 * invalidation of n2's add may reach the view after the read above and
	 * drop that copy once; a read that wrote would drop it every time.
	 */
	start = mono();
	while (relay_trips(st, "n2", q) != 0)
		assert_true(mono() - start < 1.0);
	assert_true(q[0].u.distinct.present);
	assert_int_equal(relay_trips(st, "n3", q), 1); /* over the limit of 2: refused by Redis */
	assert_int_equal(q[0].u.distinct.count, 2);
	assert_int_equal(q[1].u.distinct.count, 3);
	redis_text(out, sizeof(out), "ZCARD %sds:relay:sasl:cold", B.prefix);
	assert_string_equal(out, "2");
	store_free(st);
}

/*
 * A bucket of 2 charged once in Redis (another host) and read into a copy
 * has room for one more at once: the copies' clock (this host's plus
 * Redis's offset) must not lag the time Redis charged it at. Buckets for
 * two seconds, each offset measured in that time (every 200 ms) taking
 * its turn.
 */
static void test_redis_hot_clock_not_behind(void **state)
{
	store *st = open_view_store(), *other;
	double start;
	char key[32];
	query q;

	(void)state;
	B.cfg.redis_local_view = false;
	other = open_store();
	hot_ready(st);
	start = mono();
	for (int i = 0; i < 20000 && mono() - start < 2.0; i++) {
		snprintf(key, sizeof(key), "two:%d", i);
		q = counter_query(key, now_ms_wall(), HOUR_MS, 2, 1); /* the other host's charge */
		assert_int_equal(store_run(other, &q, 1, now_s()), STORE_OK);
		assert_true(q.u.counter.allowed);
		q = counter_query(key, now_ms_wall(), HOUR_MS, 2, 0); /* read for the copy */
		assert_int_equal(store_run(st, &q, 1, now_s()), STORE_OK);
		assert_int_equal(q.u.counter.remaining, 1);
		q = counter_query(key, now_ms_wall(), HOUR_MS, 2, 0); /* the copy */
		assert_int_equal(store_run(st, &q, 1, now_s()), STORE_OK);
		if (q.u.counter.remaining != 1)
			fail_msg("bucket %d: room %d after one charge of two", i, (int)q.u.counter.remaining);
		usleep(1000);
	}
	store_free(other);
	store_free(st);
}

/* store_run of a recipient's peek and add of member in set: its round trips. */
static uint64_t pair_trips(store *st, const char *set, const char *member, query *q)
{
	uint64_t before = store_script_round_trips(st);

	q[0] = relay_query(set, member, true);
	q[1] = relay_query(set, member, false);
	assert_int_equal(store_run(st, q, 2, now_s()), STORE_OK);
	assert_int_equal(q[0].status, QUERY_OK);
	assert_int_equal(q[1].status, QUERY_OK);
	return store_script_round_trips(st) - before;
}

/*
 * The expiry edge's set: three networks live for 5 s more by Redis's
 * clock (the limit is 2), and its copy held after a known network's pair
 * (n2: read, not written; the copy refreshes it, n1 and n3 keep their 5 s).
 */
static void hold_edge_set(store *st, const char *name, query q[2])
{
	char out[64];
	double start;

	hot_ready(st);
	redis_text(out, sizeof(out), "EVAL %s 1 %sds:%s",
	           "local t = string.format('%d', tonumber(redis.call('TIME')[1]) + 5) "
	           "redis.call('ZADD', KEYS[1], t, 'n1', t, 'n2', t, 'n3') "
	           "redis.call('PEXPIRE', KEYS[1], 100000) return t",
	           B.prefix, name);
	assert_true(out[0] != '\0');
	usleep(100000); /* the ZADD's invalidation in, so that the copy read next stays */
	start = mono();
	while (pair_trips(st, name, "n2", q) != 0)
		assert_true(mono() - start < 1.0);
}

/*
 * A set's copy held, a network it has expired while Redis still counts
 * it (the copies' clock runs ahead of Redis's: up to a round trip + 1 ms,
 * here 6 s, made certain): the add goes to Redis, and the peek must be
 * answered with it, not by the copy. The set holds more than the limit
 * (shadow mode, a lowered max_networks): a known network that looked new
 * would trip the account.
 */
static void test_redis_hot_peek_at_expiry_edge(void **state)
{
	store *st = open_view_store();
	query q[2];

	(void)state;
	hold_edge_set(st, "relay:sasl:edge", q);
	assert_true(q[0].u.distinct.present);
	assert_int_equal(q[0].u.distinct.count, 3);
	store_hot_clock_skew(st, 6000);
	(void)pair_trips(st, "relay:sasl:edge", "n1", q);
	assert_true(q[0].u.distinct.present);
	assert_int_equal(q[0].u.distinct.count, 3);
	assert_int_equal(q[1].u.distinct.count, 3); /* refreshed in Redis, not refused */
	store_free(st);
}

/*
 * As above, but the pair's "loadadd" is not answered (NOSCRIPT: SCRIPT
 * FLUSH, or a restart the copies have not heard of yet): the peek must go
 * to Redis with its add, not fall back to the copy that has the known
 * network expired.
 */
static void test_redis_hot_peek_at_expiry_edge_unread(void **state)
{
	store *st = open_view_store();
	query q[2];
	char out[64];

	(void)state;
	hold_edge_set(st, "relay:sasl:edge2", q);
	store_hot_clock_skew(st, 6000);
	redis_text(out, sizeof(out), "SCRIPT FLUSH");
	(void)pair_trips(st, "relay:sasl:edge2", "n1", q);
	if (!q[0].u.distinct.present)
		fail_msg("a network Redis counts answered absent (count %llu) by the copy",
		         (unsigned long long)q[0].u.distinct.count);
	assert_int_equal(q[0].u.distinct.count, 3);
	assert_int_equal(q[1].u.distinct.count, 3);
	store_free(st);
}

/*
 * A known network about to expire in Redis is refreshed there at once,
 * not written behind: an add meanwhile (another host's, the account's
 * next new network) purges what has expired by Redis's clock, and a
 * refresh written behind never re-adds a member (the set may have been
 * reset), so the network, used within the window, would count as new.
 * Far from its expiry the copy answers (no round trip).
 */
static void test_redis_hot_refresh_near_expiry(void **state)
{
	store *st = open_view_store();
	long long t, score;
	query q[2];
	char out[64];
	double start;

	(void)state;
	hot_ready(st);
	/* n1 expires in Redis in 10 s, n2 in 90 s (the window is 100 s) */
	redis_text(out, sizeof(out), "EVAL %s 1 %sds:relay:sasl:near",
	           "local t = tonumber(redis.call('TIME')[1]) "
	           "redis.call('ZADD', KEYS[1], string.format('%d', t + 10), 'n1', string.format('%d', t + "
	           "90), 'n2') "
	           "redis.call('PEXPIRE', KEYS[1], 100000) return string.format('%d', t)",
	           B.prefix);
	t = strtoll(out, NULL, 10);
	assert_true(t > 0);
	usleep(100000); /* the ZADD's invalidation in, so that the copy read next stays */
	start = mono();
	while (pair_trips(st, "relay:sasl:near", "n2", q) != 0)
		assert_true(mono() - start < 1.0);
	assert_true(q[0].u.distinct.present);
	/* 1 (2 when the set's copy went meanwhile, its read first: the ZADD's late invalidation) */
	assert_true(pair_trips(st, "relay:sasl:near", "n1", q) >= 1);
	assert_true(q[0].u.distinct.present);
	assert_int_equal(q[1].u.distinct.count, 2);
	/* in Redis when the call returns, for a window from now */
	redis_text(out, sizeof(out), "ZSCORE %sds:relay:sasl:near n1", B.prefix);
	score = strtoll(out, NULL, 10);
	if (score < t + 100)
		fail_msg("n1 scored %lld, want %lld at least", score, t + 100);
	store_free(st);
}

/*
 * A known network's refresh owed (written behind) when the set's copy is
 * dropped by a write of the set (here this daemon's own add of the
 * account's next network; another host's does the same): the refresh is
 * still written. Lost, the network would expire in Redis at its old time
 * though used within the window, and count as new.
 */
static void test_redis_hot_refresh_owed_survives_invalidation(void **state)
{
	store *st = open_view_store();
	long long t, score = 0;
	query q[4];
	char out[64];
	double start;
	uint64_t before;

	(void)state;
	hot_ready(st);
	/* n1 expires in Redis in 60 s (the window is 100 s: written behind, not near its expiry) */
	redis_text(out, sizeof(out), "EVAL %s 1 %sds:relay:sasl:owed",
	           "local t = tonumber(redis.call('TIME')[1]) "
	           "redis.call('ZADD', KEYS[1], string.format('%d', t + 60), 'n1') "
	           "redis.call('PEXPIRE', KEYS[1], 100000) return string.format('%d', t)",
	           B.prefix);
	t = strtoll(out, NULL, 10);
	assert_true(t > 0);
	usleep(100000); /* the ZADD's invalidation in, so that the copy read next stays */
	/* the set's copy held, by peeks only (nothing owed yet; two: one alone is not batched) */
	start = mono();
	do {
		assert_true(mono() - start < 1.0);
		before = store_script_round_trips(st);
		q[0] = relay_query("relay:sasl:owed", "n1", true);
		q[1] = relay_query("relay:sasl:owed", "n9", true);
		assert_int_equal(store_run(st, q, 2, now_s()), STORE_OK);
	} while (store_script_round_trips(st) != before);
	/* n1 known (its refresh owed), then the new n3 added in Redis: the copy goes */
	q[0] = relay_query("relay:sasl:owed", "n1", true);
	q[1] = relay_query("relay:sasl:owed", "n1", false);
	q[2] = relay_query("relay:sasl:owed", "n3", true);
	q[3] = relay_query("relay:sasl:owed", "n3", false);
	assert_int_equal(store_run(st, q, 4, now_s()), STORE_OK);
	for (int i = 0; i < 4; i++)
		assert_int_equal(q[i].status, QUERY_OK);
	assert_true(q[0].u.distinct.present);
	assert_false(q[2].u.distinct.present);
	assert_int_equal(q[3].u.distinct.count, 2);
	/* the refresh still written behind (a tick every 200 ms) */
	start = mono();
	while (mono() - start < 5.0) {
		redis_text(out, sizeof(out), "ZSCORE %sds:relay:sasl:owed n1", B.prefix);
		if ((score = strtoll(out, NULL, 10)) >= t + 100)
			break;
		usleep(50000);
	}
	if (score < t + 100)
		fail_msg("n1 scored %lld, want %lld at least: its refresh was lost", score, t + 100);
	store_free(st);
}

/* More queries in one call than hot_run keeps on its stack (16): read once, then all from the copies. */
static void test_redis_hot_many_queries(void **state)
{
	store *st = open_view_store();
	char keys[40][16];
	query q[40];
	double start;
	uint64_t before;

	(void)state;
	hot_ready(st);
	for (int i = 0; i < 40; i++)
		snprintf(keys[i], sizeof(keys[i]), "many:%d", i);
	start = mono();
	do {
		assert_true(mono() - start < 1.0);
		before = store_script_round_trips(st);
		for (int i = 0; i < 40; i++)
			q[i] = counter_query(keys[i], now_ms_wall(), HOUR_MS, 1000, (uint64_t)(i % 2));
		assert_int_equal(store_run(st, q, 40, now_s()), STORE_OK);
		for (int i = 0; i < 40; i++) {
			assert_int_equal(q[i].status, QUERY_OK);
			assert_true(q[i].u.counter.allowed);
		}
	} while (store_script_round_trips(st) != before);
	store_free(st);
}

/*
 * A bucket Redis does not hold is empty whatever Redis's clock says: a
 * copy read from it lets the whole burst through on the request's time,
 * taken before the read's round trip and so behind Redis's (here by 2 s,
 * made certain: a message's recipients are charged on that time).
 */
static void test_redis_hot_empty_bucket_burst(void **state)
{
	store *st = open_view_store();
	int64_t at = now_ms_wall() - 2000;
	uint64_t before;
	char key[32];
	query q;
	int i;

	(void)state;
	hot_ready(st);
	/* a fresh bucket read for a copy until one is kept (a read overtaken by a tick's write is not) */
	for (i = 0; i < 100; i++) {
		snprintf(key, sizeof(key), "empty:%d", i);
		q = counter_query(key, at, HOUR_MS, 2, 0);
		assert_int_equal(store_run(st, &q, 1, now_s()), STORE_OK);
		assert_int_equal(q.u.counter.remaining, 2);
		before = store_script_round_trips(st);
		q = counter_query(key, at, HOUR_MS, 2, 0);
		assert_int_equal(store_run(st, &q, 1, now_s()), STORE_OK);
		if (store_script_round_trips(st) == before)
			break;
	}
	assert_true(i < 100);
	for (int unit = 0; unit < 2; unit++) {
		q = counter_query(key, at, HOUR_MS, 2, 1);
		assert_int_equal(store_run(st, &q, 1, now_s()), STORE_OK);
		if (!q.u.counter.allowed)
			fail_msg("unit %d of a burst of 2 refused by an empty bucket's copy", unit + 1);
	}
	q = counter_query(key, at, HOUR_MS, 2, 1);
	assert_int_equal(store_run(st, &q, 1, now_s()), STORE_OK);
	assert_false(q.u.counter.allowed);
	assert_int_equal(store_script_round_trips(st), before); /* all answered by the copy */
	store_free(st);
}

/* A bucket's peek through the copies (store_run, as the engine's ratelimit stage asks it). */
static void peek_bucket(store *st, const char *key)
{
	query q = counter_query(key, now_ms_wall(), HOUR_MS, 5, 0);

	assert_int_equal(store_run(st, &q, 1, now_s()), STORE_OK);
	assert_int_equal(q.status, QUERY_OK);
}

/*
 * One decision (store_decision_begin .. end: the engine's stage, three
 * store calls for a recipient with relay and a ratelimit rule) looks at
 * the local view's socket once, at its first call; the next decision
 * looks again, so that another host's write reaches it as before.
 */
static void test_redis_decision_polls_once(void **state)
{
	store *st = open_view_store();
	uint64_t polls;

	(void)state;
	hot_ready(st);
	polls = store_redis_view_polls();
	peek_bucket(st, "acct:dec");
	peek_bucket(st, "acct:dec");
	assert_true(store_redis_view_polls() - polls >= 2); /* outside a decision: each call looks */
	for (int i = 0; i < 3; i++) {
		store_decision_begin(st);
		peek_bucket(st, "acct:dec");
		polls = store_redis_view_polls();
		assert_true(polls > 0);
		peek_bucket(st, "acct:dec");
		peek_bucket(st, "acct:other");
		assert_int_equal(store_redis_view_polls(), polls);
		store_decision_end(st);
	}
	peek_bucket(st, "acct:dec");
	assert_true(store_redis_view_polls() > polls);
	store_free(st);
}

/* A bucket's peek at st until the copies answer it (no round trip): the copy is held. */
static void hold_bucket(store *st, const char *key, int64_t emission_ms)
{
	for (int i = 0; i < 1000; i++) {
		uint64_t before = store_script_round_trips(st);
		query q = counter_query(key, now_ms_wall(), emission_ms, 5, 0);

		assert_int_equal(store_run(st, &q, 1, now_s()), STORE_OK);
		if (store_script_round_trips(st) == before)
			return;
		usleep(10000);
	}
	fail_msg("the copies never held %s", key);
}

/*
 * Two daemons charge one bucket within a tick, each from its copy: alone,
 * each one's charge has drained by its write behind (its TAT is behind
 * Redis's now), together they have not (the second goes on top of the
 * first, a rate's interval ahead). Both must be written: a host that left
 * its drained charge out would have the other's start from an older TAT,
 * and hosts sharing a fast rule's bucket would each pass its whole rate,
 * never counted together. The charges are made 15 s in the past (the
 * query's clock) so that the test does not race the ticks.
 */
static void test_redis_hot_two_hosts_drained_charges_add_up(void **state)
{
	const int64_t emission = 10000;
	store *a = open_view_store(), *b = open_view_store();
	store *hosts[2] = {a, b};
	char out[64];
	double start;

	(void)state;
	for (int h = 0; h < 2; h++) {
		hot_ready(hosts[h]);
		hold_bucket(hosts[h], "shared", emission);
	}
	for (int h = 0; h < 2; h++) {
		uint64_t trips = store_script_round_trips(hosts[h]);
		query q = counter_query("shared", now_ms_wall() - 15000 + h, emission, 5, 1);

		assert_int_equal(store_run(hosts[h], &q, 1, now_s()), STORE_OK);
		assert_true(q.u.counter.allowed);
		assert_int_equal(store_script_round_trips(hosts[h]), trips); /* charged in the copy */
	}
	/* together a TAT about 5 s ahead of now: the next few seconds read a charge owed */
	start = mono();
	do {
		assert_true(mono() - start < 3.0);
		usleep(20000);
		redis_text(out, sizeof(out), "GET %sctr:rate:shared", B.prefix);
	} while (strtoll(out, NULL, 10) <= now_ms_wall());
	store_free(a);
	store_free(b);
}

/* How many times Redis has run cmd (INFO commandstats). */
static long command_calls(const char *cmd)
{
	char out[8192], field[64];
	const char *at;

	redis_text(out, sizeof(out), "INFO commandstats");
	snprintf(field, sizeof(field), "cmdstat_%s:calls=", cmd);
	at = strstr(out, field);
	return at ? strtol(at + strlen(field), NULL, 10) : 0;
}

/* A bucket's remaining as Redis has it (a store without copies: another host). */
static uint64_t redis_remaining(const char *key, int64_t emission_ms, uint64_t burst)
{
	query q = counter_query(key, now_ms_wall(), emission_ms, burst, 0);
	bool view = B.cfg.redis_local_view;
	store *other;

	B.cfg.redis_local_view = false;
	other = open_store();
	B.cfg.redis_local_view = view;
	assert_int_equal(store_run(other, &q, 1, now_s()), STORE_OK);
	store_free(other);
	return q.u.counter.remaining;
}

/* Charge key by cost in the copies (read into them first with a charge of nothing). */
static void hot_charge(store *st, const char *key, int64_t emission_ms, uint64_t burst, uint64_t cost)
{
	query q = counter_query(key, now_ms_wall(), emission_ms, burst, 0);
	uint64_t trips;

	assert_int_equal(store_run(st, &q, 1, now_s()), STORE_OK);
	trips = store_script_round_trips(st);
	q = counter_query(key, now_ms_wall(), emission_ms, burst, cost);
	assert_int_equal(store_run(st, &q, 1, now_s()), STORE_OK);
	assert_true(q.u.counter.allowed);
	assert_int_equal(store_script_round_trips(st), trips); /* answered by the copy */
}

static bool redis_has(const char *key)
{
	char out[64];

	redis_text(out, sizeof(out), "EXISTS %sctr:rate:%s", B.prefix, key);
	return strcmp(out, "1") == 0;
}

/*
 * A bucket far from its limit charged in two ticks in a row is written
 * once, both charges in one delta (within 1 s of the first). The second
 * charge comes a tick (>= 200 ms) after the first; a machine stalled so
 * long that it came near the 1 s is tried again with another bucket.
 */
static void test_redis_hot_far_bucket_waits(void **state)
{
	store *st = open_view_store();
	char key[32];
	int round = 0;

	(void)state;
	hot_ready(st);
	usleep(500000); /* wait_hot's own reads, written behind by now */
	for (;; round++) {
		long exec;
		double start, gap;

		assert_true(round < 5);
		snprintf(key, sizeof(key), "far%d", round);
		hot_charge(st, key, HOUR_MS, 100, 0); /* held in the copies, nothing owed */
		usleep(300000);
		exec = command_calls("exec");
		start = mono();
		hot_charge(st, key, HOUR_MS, 100, 1);
		usleep(300000); /* a tick or more */
		hot_charge(st, key, HOUR_MS, 100, 1);
		gap = mono() - start;
		while (!redis_has(key))
			assert_true(mono() - start < 3.0);
		if (gap > 0.6)
			continue;
		assert_int_equal(command_calls("exec") - exec, 1);
		assert_int_equal(redis_remaining(key, HOUR_MS, 100), 98);
		break;
	}
	store_free(st);
}

/*
 * A bucket near its limit (its TAT half its burst tolerance ahead, or
 * more, at a charge: half a burst of 2 left) is written at the next tick; one charged with it and far from
 * its limit waits, and is written later with its charge.
 */
static void test_redis_hot_near_bucket_at_once(void **state)
{
	store *st = open_view_store();
	double start;

	(void)state;
	hot_ready(st);
	hot_charge(st, "near", HOUR_MS, 2, 0);
	hot_charge(st, "roomy", HOUR_MS, 100, 0);
	usleep(300000);
	hot_charge(st, "near", HOUR_MS, 2, 1); /* half its burst left */
	hot_charge(st, "roomy", HOUR_MS, 100, 1);
	start = mono();
	while (!redis_has("near"))
		assert_true(mono() - start < 3.0);
	assert_false(redis_has("roomy"));
	assert_int_equal(redis_remaining("near", HOUR_MS, 2), 1);
	while (!redis_has("roomy"))
		assert_true(mono() - start < 3.0);
	assert_int_equal(redis_remaining("roomy", HOUR_MS, 100), 99);
	store_free(st);
}

static const struct CMUnitTest sqlite_tests[] = {
    CASE(test_sqlite_write_behind),
    CASE(test_sqlite_write_behind_reload),
    CASE(test_sqlite_write_behind_after_purge),
    CASE(test_sqlite_upgrade_6_to_7),
    CASE(test_sqlite_write_behind_failure_logged),
    CASE(test_sqlite_write_behind_two_daemons),
    CASE(test_sqlite_file),
    CASE(test_sqlite_not_ours),
    CASE(test_sqlite_netlens_counts),
    CASE(test_sqlite_netlens_other_process),
    CASE(test_sqlite_upgrade_v1),
    CASE(test_sqlite_upgrade_v2),
    CASE(test_sqlite_distinct_purge),
    CASE(test_sqlite_upgrade_0_1_0),
    CASE(test_sqlite_upgrade_v3),
    CASE(test_sqlite_locked_by_other_process),
    CASE(test_sqlite_locked_writers_bounded),
    CASE(test_sqlite_open_while_write_locked),
    CASE(test_sqlite_purge_in_chunks),
    CASE(test_sqlite_greylist_edges),
    CASE(test_sqlite_greylist_cap),
    CASE(test_sqlite_greylist_cap_recount),
    CASE(test_sqlite_greylist_bucket_full),
    CASE(test_sqlite_greylist_purge),
    CASE(test_sqlite_greylist_flood_bounded),
    CASE(test_sqlite_greylist_flood_longest_keys),
    CASE(test_sqlite_upgrade_v5),
};

static const struct CMUnitTest redis_tests[] = {
    cmocka_unit_test(redis_clock_offset_never_behind),
    CASE(test_redis_expires_by_itself),
    CASE(test_redis_db_and_prefix),
    CASE(test_redis_unreachable_at_open),
    CASE(test_redis_readonly_replica),
    CASE(test_redis_password),
    CASE(test_redis_script_flush),
    CASE(test_redis_hung_server),
    CASE(test_redis_down_and_back),
    CASE(test_redis_netlens),
    CASE(test_redis_distinct_layout),
    CASE(test_redis_upgrade_0_1_0),
    CASE(test_redis_upgrade_when_back),
    CASE(test_redis_kv_counter_layout),
    CASE(test_redis_batch_one_round_trip),
    CASE(test_redis_batch_distinct),
    CASE(test_redis_greylist_shared),
    CASE(test_redis_greylist_server_clock),
    CASE(test_redis_greylist_matches_greystep),
    CASE(test_redis_view_state),
    CASE(test_redis_view_other_writers),
    CASE(test_redis_view_fallback),
    CASE(test_redis_hot_cold_path),
    CASE(test_redis_hot_clock_not_behind),
    CASE(test_redis_hot_peek_at_expiry_edge),
    CASE(test_redis_hot_peek_at_expiry_edge_unread),
    CASE(test_redis_hot_empty_bucket_burst),
    CASE(test_redis_hot_refresh_near_expiry),
    CASE(test_redis_hot_refresh_owed_survives_invalidation),
    CASE(test_redis_hot_many_queries),
    CASE(test_redis_hot_far_bucket_waits),
    CASE(test_redis_hot_near_bucket_at_once),
    CASE(test_redis_watch_cancel),
    CASE(test_redis_decision_polls_once),
    CASE(test_redis_hot_two_hosts_drained_charges_add_up),
};

int main(int argc, char **argv)
{
	int failed = 0;

	if (argc == 4 && strcmp(argv[1], CHILD_CLEAR) == 0)
		return child_clear(argv[2], argv[3]);

	failed +=
	    cmocka_run_group_tests_name("store sqlite", common_tests, suite_sqlite_setup, suite_teardown);
	failed += cmocka_run_group_tests_name("store sqlite only", sqlite_tests, suite_sqlite_setup,
	                                      suite_teardown);
	failed += cmocka_run_group_tests_name("store redis", common_tests, suite_redis_setup, suite_teardown);
	failed +=
	    cmocka_run_group_tests_name("store redis only", redis_tests, suite_redis_setup, suite_teardown);
	failed += cmocka_run_group_tests_name("store redis with the local view", common_tests,
	                                      suite_redis_view_setup, suite_teardown);
	return failed ? 1 : 0;
}
