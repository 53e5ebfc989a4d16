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
#include <ftw.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "store/store.h"

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
} B;

static int64_t now_s(void)
{
	return (int64_t)time(NULL);
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
	snprintf(cmd, sizeof(cmd), "sqlite3 %s 'CREATE TABLE blocklist(key TEXT); PRAGMA user_version = 7;'",
	         B.path);
	if (system(cmd) != 0)
		fail_msg("sqlite3 command line tool missing");
	assert_null(store_open(&B.cfg, err, sizeof(err)));
	assert_non_null(strstr(err, "schema version 7"));
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

#define CASE(fn) cmocka_unit_test_setup(fn, case_setup)

static const struct CMUnitTest common_tests[] = {
    CASE(test_record_then_lookup),
    CASE(test_lookup_order),
    CASE(test_lookup_order_48_keys),
    CASE(test_miss),
    CASE(test_expiry),
    CASE(test_refresh),
    CASE(test_hit_after_expiry_starts_over),
    CASE(test_provenance_round_trip),
    CASE(test_put_get_remove),
    CASE(test_purge),
    CASE(test_foreach),
    CASE(test_concurrent),
    CASE(test_persistence),
    CASE(test_long_keys),
    CASE(test_bad_arguments),
};

static const struct CMUnitTest sqlite_tests[] = {
    CASE(test_sqlite_file),
    CASE(test_sqlite_not_ours),
};

static const struct CMUnitTest redis_tests[] = {
    CASE(test_redis_expires_by_itself), CASE(test_redis_db_and_prefix), CASE(test_redis_unreachable_at_open),
    CASE(test_redis_readonly_replica),  CASE(test_redis_password),      CASE(test_redis_script_flush),
    CASE(test_redis_hung_server),       CASE(test_redis_down_and_back),
};

int main(void)
{
	int failed = 0;

	failed +=
	    cmocka_run_group_tests_name("store sqlite", common_tests, suite_sqlite_setup, suite_teardown);
	failed += cmocka_run_group_tests_name("store sqlite only", sqlite_tests, suite_sqlite_setup,
	                                      suite_teardown);
	failed += cmocka_run_group_tests_name("store redis", common_tests, suite_redis_setup, suite_teardown);
	failed +=
	    cmocka_run_group_tests_name("store redis only", redis_tests, suite_redis_setup, suite_teardown);
	return failed ? 1 : 0;
}
