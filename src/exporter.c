/*
 * exporter: the thread that keeps the "exports" files current (see
 * exporter.h). Scheduling is by a change generation: every mark bumps
 * it, and an export is due when the generation it last wrote is older
 * and its interval since the last attempt has passed, or when its last
 * good write is an hour old.
 */
#include "exporter.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "atomicfile.h"
#include "config.h"
#include "core/export.h"
#include "log.h"
#include "store/store.h"

/* Every export is written at least this often, changed or not. */
#define EXPORTER_REFRESH_MS ((int64_t)3600 * 1000)
/* A failing export is logged at most this often (the first failure and recovery always). */
#define EXPORTER_LOG_INTERVAL 3600

typedef struct export_state {
	uint64_t gen_done;   /* the generation the last good write covered */
	int64_t last_try_ms; /* monotonic; 0: never */
	int64_t last_ok_ms;
	bool failed;
	log_ratelimit failures;
} export_state;

struct exporter {
	engine *eng;
	pthread_t thread;
	pthread_t subscriber; /* other hosts' changes (Redis): marks dirty */
	pthread_mutex_t lock;
	pthread_cond_t wake;
	pthread_cond_t sub_wake; /* the subscriber's pause without a watch: cut short by a stop */
	int stopfd;              /* eventfd, readable once stopping: ends the watch's wait (poll) */
	bool stop;
	uint64_t gen; /* bumped by every change */
	/* The thread's own: */
	config *cfg; /* the config the states belong to (a reference) */
	export_state st[CONFIG_EXPORTS_MAX];
	char sqlite_stamp[128]; /* the SQLite files as last seen, "" before */
};

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void exporter_mark_dirty(exporter *x)
{
	pthread_mutex_lock(&x->lock);
	x->gen++;
	pthread_cond_signal(&x->wake);
	pthread_mutex_unlock(&x->lock);
}

static void on_engine_change(void *ctx)
{
	exporter_mark_dirty(ctx);
}

/*
 * SQLite: the database and its WAL as stat() sees them. Any commit by any
 * process (spamtrapctl remove, add, import) changes them; so do the
 * daemon's other writes, which only costs an export per interval.
 */
static void sqlite_stamp(const config *cfg, char *out, size_t outlen)
{
	char wal[4096];
	struct stat a = {0}, b = {0};

	snprintf(wal, sizeof(wal), "%s-wal", cfg->store.sqlite_path);
	if (stat(cfg->store.sqlite_path, &a) != 0)
		memset(&a, 0, sizeof(a));
	if (stat(wal, &b) != 0)
		memset(&b, 0, sizeof(b));
	snprintf(out, outlen, "%llu.%lld.%ld.%lld/%llu.%lld.%ld.%lld", (unsigned long long)a.st_ino,
	         (long long)a.st_mtim.tv_sec, a.st_mtim.tv_nsec, (long long)a.st_size,
	         (unsigned long long)b.st_ino, (long long)b.st_mtim.tv_sec, b.st_mtim.tv_nsec,
	         (long long)b.st_size);
}

static int add_entry(const store_entry *e, void *ctx)
{
	return export_add(ctx, e->key, e->expires, e->trap[0] != '\0') ? 0 : 1;
}

/* The rbldnsd zone's name server and mailbox: this host, unless its name is no domain. */
static void zone_names(char *ns, size_t nslen, char *mail, size_t maillen)
{
	char host[256] = "";

	if (gethostname(host, sizeof(host) - 1) != 0 || !strchr(host, '.'))
		snprintf(host, sizeof(host), "localhost");
	snprintf(ns, nslen, "%s", host);
	snprintf(mail, maillen, "hostmaster.%s", host);
}

/* One export, listed, rendered and written: 0, or -1 with the reason in err. */
static int export_write_one(engine_snapshot *snap, const config_export *ce, char *err, size_t errlen)
{
	const config *cfg = engine_config(snap);
	const smtp_reply *r = &cfg->decide.reject;
	char action[700], ns[256], mail[300];
	export_options o = {.format = ce->format,
	                    .keys = ce->keys,
	                    .now = time(NULL),
	                    .action = action,
	                    .zone_ns = ns,
	                    .zone_mail = mail};
	export *x;
	char *text = NULL;
	size_t len = 0;
	int rc = -1;

	snprintf(action, sizeof(action), "REJECT %s%s%s", r->xcode, r->xcode[0] ? " " : "", r->text);
	zone_names(ns, sizeof(ns), mail, sizeof(mail));
	if (!(x = export_new(&o))) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (store_foreach(engine_store(snap), o.now, add_entry, x) != STORE_OK)
		snprintf(err, errlen, "reading the blocklist: %s", store_last_error());
	else if (!(text = export_render(x, &len)))
		snprintf(err, errlen, "out of memory");
	else if (atomicfile_write(ce->path, text, len, 0644, err, errlen) == 0)
		rc = 0;
	if (rc == 0)
		log_debug("export: %s (%s) written, %zu entries", ce->path, export_format_name(ce->format),
		          export_get_counts(x)->written);
	free(text);
	export_free(x);
	return rc;
}

static bool export_due(const exporter *x, const config_export *ce, const export_state *s, int64_t now)
{
	if (s->last_try_ms == 0 || now >= s->last_ok_ms + EXPORTER_REFRESH_MS)
		return true;
	return (s->gen_done != x->gen || s->failed) && now >= s->last_try_ms + ce->interval * 1000;
}

/* When the next export falls due (monotonic ms), whatever happens meanwhile. */
static int64_t next_due(const exporter *x, const config *cfg, int64_t now)
{
	int64_t next = now + EXPORTER_REFRESH_MS;

	for (size_t i = 0; i < cfg->nexports; i++) {
		const export_state *s = &x->st[i];
		int64_t t = s->last_ok_ms + EXPORTER_REFRESH_MS;

		if (s->gen_done != x->gen || s->failed)
			t = s->last_try_ms + cfg->exports[i].interval * 1000;
		/* SQLite: look at the files again an interval on (changes by other processes). */
		if (cfg->store.backend == STORE_BACKEND_SQLITE && now + cfg->exports[i].interval * 1000 < t)
			t = now + cfg->exports[i].interval * 1000;
		if (t < next)
			next = t;
	}
	return next;
}

/* Logs a failure at most hourly per export, and the first success after one. */
static void note_result(export_state *s, const config_export *ce, int rc, const char *err)
{
	uint64_t suppressed = 0;

	if (rc == 0 && s->failed)
		log_notice("export: %s written again", ce->path);
	else if (rc < 0 && log_ratelimit_pass(&s->failures, time(NULL), &suppressed))
		log_error("export: %s not written, the old file stays (retried every %llds): %s%s", ce->path,
		          (long long)ce->interval, err, suppressed ? " (and failures not logged)" : "");
	s->failed = rc < 0;
}

/* A new config (start, reload): every export is due at once. */
static void take_config(exporter *x, const config *cfg)
{
	if (x->cfg == cfg)
		return;
	config_unref(x->cfg);
	x->cfg = config_ref((config *)cfg);
	for (size_t i = 0; i < CONFIG_EXPORTS_MAX; i++)
		x->st[i] = (export_state){
		    .failures = {.interval = EXPORTER_LOG_INTERVAL, .burst = 1},
		};
}

/* With the lock held: one due export written (the lock dropped meanwhile), or false when none was due. */
static bool run_one_due(exporter *x, engine_snapshot *snap, int64_t now)
{
	const config *cfg = engine_config(snap);
	char err[1024] = "";

	for (size_t i = 0; i < cfg->nexports; i++) {
		export_state *s = &x->st[i];
		uint64_t gen = x->gen;
		int rc;

		if (!export_due(x, &cfg->exports[i], s, now))
			continue;
		pthread_mutex_unlock(&x->lock);
		rc = export_write_one(snap, &cfg->exports[i], err, sizeof(err));
		pthread_mutex_lock(&x->lock);
		s->last_try_ms = mono_ms();
		note_result(s, &cfg->exports[i], rc, err);
		if (rc == 0) {
			s->gen_done = gen;
			s->last_ok_ms = s->last_try_ms;
		}
		return true;
	}
	return false;
}

/* CLOCK_MONOTONIC (the conditions' clock) ms from now, for pthread_cond_timedwait. */
static struct timespec deadline_in(int64_t ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	return ts;
}

static void wait_until(exporter *x, int64_t when_ms)
{
	int64_t wait = when_ms - mono_ms();
	struct timespec ts;

	if (wait <= 0)
		return;
	ts = deadline_in(wait);
	pthread_cond_timedwait(&x->wake, &x->lock, &ts);
}

/* A pause of ms, or less when a stop comes. */
static void pause_subscriber(exporter *x, int64_t ms)
{
	struct timespec ts = deadline_in(ms);

	pthread_mutex_lock(&x->lock);
	if (!x->stop)
		pthread_cond_timedwait(&x->sub_wake, &x->lock, &ts);
	pthread_mutex_unlock(&x->lock);
}

static bool stopping(exporter *x)
{
	bool stop;

	pthread_mutex_lock(&x->lock);
	stop = x->stop;
	pthread_mutex_unlock(&x->lock);
	return stop;
}

/* The watch the current config asks for: the same, a new one, or none (closed). */
static store_watch *watch_for(exporter *x, store_watch *w, store_config *have, log_ratelimit *fails)
{
	engine_snapshot *snap = engine_acquire(x->eng);
	const config *cfg = engine_config(snap);
	bool want = cfg->nexports > 0 && cfg->store.backend == STORE_BACKEND_REDIS;
	char err[512];
	uint64_t suppressed;

	if (w && (!want || !store_config_equal(have, &cfg->store))) {
		store_watch_free(w);
		store_config_clear(have);
		w = NULL;
	}
	if (want && !w) {
		if ((w = store_watch_open(&cfg->store, err, sizeof(err))) &&
		    store_config_copy(have, &cfg->store) < 0) {
			store_watch_free(w);
			w = NULL;
			snprintf(err, sizeof(err), "out of memory");
		}
		if (!w && log_ratelimit_pass(fails, time(NULL), &suppressed))
			log_error("export: cannot watch other hosts' changes: %s", err);
	}
	engine_release(snap);
	return w;
}

/*
 * With Redis and exports: one connection SUBSCRIBEd to the change channel;
 * every announcement, and every (re)connection, marks the exports dirty.
 * Waits a second at most, so that a reload is seen; a stop ends the wait
 * at once (stopfd), so that stopping the daemon does not wait for it.
 */
static void *subscriber_main(void *arg)
{
	exporter *x = arg;
	store_watch *w = NULL;
	store_config have = {0};
	log_ratelimit fails = {.interval = EXPORTER_LOG_INTERVAL, .burst = 1};
	bool lost = false, watching = false;

	while (!stopping(x)) {
		char err[512];
		uint64_t suppressed;
		int rc;

		if (!(w = watch_for(x, w, &have, &fails))) {
			pause_subscriber(x, 1000);
			continue;
		}
		rc = store_watch_wait(w, 1000, x->stopfd, err, sizeof(err));
		if (rc > 0)
			exporter_mark_dirty(x);
		if (rc > 0 && lost)
			log_notice("export: watching other hosts' changes again");
		else if (rc > 0 && !watching)
			log_info("export: watching other hosts' changes (Redis)");
		watching |= rc > 0;
		if (rc < 0 && !lost && log_ratelimit_pass(&fails, time(NULL), &suppressed))
			log_warning("export: %s; other hosts' new entries reach the exports when it is back",
			            err);
		if (rc != 0)
			lost = rc < 0;
	}
	store_watch_free(w);
	store_config_clear(&have);
	return NULL;
}

static void *exporter_main(void *arg)
{
	exporter *x = arg;

	pthread_mutex_lock(&x->lock);
	while (!x->stop) {
		engine_snapshot *snap = engine_acquire(x->eng);
		const config *cfg = engine_config(snap);
		char stamp[sizeof(x->sqlite_stamp)];
		int64_t now = mono_ms();

		take_config(x, cfg);
		if (cfg->nexports > 0 && cfg->store.backend == STORE_BACKEND_SQLITE) {
			sqlite_stamp(cfg, stamp, sizeof(stamp));
			if (x->sqlite_stamp[0] && strcmp(stamp, x->sqlite_stamp) != 0)
				x->gen++;
			memcpy(x->sqlite_stamp, stamp, sizeof(stamp));
		}
		if (!run_one_due(x, snap, now))
			wait_until(x, next_due(x, cfg, now));
		pthread_mutex_unlock(&x->lock);
		engine_release(snap);
		pthread_mutex_lock(&x->lock);
	}
	pthread_mutex_unlock(&x->lock);
	return NULL;
}

/* Stop and join the export thread. */
static void stop_main(exporter *x)
{
	const uint64_t one = 1;

	pthread_mutex_lock(&x->lock);
	x->stop = true;
	pthread_cond_signal(&x->wake);
	pthread_cond_signal(&x->sub_wake);
	pthread_mutex_unlock(&x->lock);
	if (write(x->stopfd, &one, sizeof(one)) < 0)
		log_debug("export: cannot wake the subscriber: %s", strerror(errno));
	pthread_join(x->thread, NULL);
}

static void destroy(exporter *x)
{
	close(x->stopfd);
	config_unref(x->cfg);
	pthread_cond_destroy(&x->wake);
	pthread_cond_destroy(&x->sub_wake);
	pthread_mutex_destroy(&x->lock);
	free(x);
}

exporter *exporter_new(engine *eng, char *err, size_t errlen)
{
	exporter *x = calloc(1, sizeof(*x));
	pthread_condattr_t ca;

	if (!x) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	x->eng = eng;
	x->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (x->stopfd < 0) {
		snprintf(err, errlen, "cannot make the exporter's wake-up: %s", strerror(errno));
		free(x);
		return NULL;
	}
	pthread_mutex_init(&x->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&x->wake, &ca);
	pthread_cond_init(&x->sub_wake, &ca);
	pthread_condattr_destroy(&ca);
	if ((errno = pthread_create(&x->thread, NULL, exporter_main, x)) != 0) {
		snprintf(err, errlen, "cannot start the exporter thread: %s", strerror(errno));
		destroy(x);
		return NULL;
	}
	if ((errno = pthread_create(&x->subscriber, NULL, subscriber_main, x)) != 0) {
		snprintf(err, errlen, "cannot start the exporter's subscriber thread: %s", strerror(errno));
		stop_main(x);
		destroy(x);
		return NULL;
	}
	engine_set_change_notify(eng, on_engine_change, x);
	return x;
}

void exporter_free(exporter *x)
{
	if (!x)
		return;
	engine_set_change_notify(x->eng, NULL, NULL);
	stop_main(x);
	pthread_join(x->subscriber, NULL);
	destroy(x);
}
