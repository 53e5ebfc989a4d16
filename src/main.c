/*
 * spamtrapd: start-up, signals and shutdown.
 *
 * Threads: the main thread only waits for signals; a control thread
 * reloads the config and purges expired entries; the exporter's thread
 * keeps the exports files current; the policy workers and
 * libmilter's threads serve Postfix. Every signal is blocked before any
 * thread exists, and the main thread waits for HUP/USR1/TERM/INT with
 * sigwaitinfo. libmilter starts its own signal thread that treats SIGHUP
 * as "stop": Linux hands a process-directed signal to the main thread when
 * that thread is waiting for it, and the main thread never does anything
 * but wait (it passes the work to the control thread), so SIGHUP reloads.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "daemon.h"
#include "engine.h"
#include "exporter.h"
#include "log.h"
#include "milter/milter.h"
#include "policy/policy_server.h"
#include "core/checks/dnsbl.h"
#include "metrics/metrics_server.h"
#include "stats.h"

#define MAX_OVERRIDES 64

typedef struct options {
	const char *config_path;
	bool foreground;
	bool check_only;
	const char *overrides[MAX_OVERRIDES];
	size_t noverrides;
} options;

/*
 * The main thread hands signals to the control thread through a pipe: a
 * write() takes no lock, so the main thread is back in sigwaitinfo at once
 * (every moment it is not, a signal may go to libmilter's thread instead).
 */
enum { CONTROL_RELOAD = 'R', CONTROL_STOP = 'T', CONTROL_INTERRUPT = 'I' };

typedef struct control {
	const options *opt;
	engine *eng;
	bool metrics_on; /* a metrics listener runs (from start to stop: a reload does not change it) */
	int pipe[2];     /* [0] read by the control thread, [1] written by main */
} control;

static void usage(FILE *out)
{
	fprintf(out, "usage: spamtrapd [-c FILE] [-f] [-t] [-o KEY=VALUE]...\n"
	             "  -c FILE         configuration file (default " CONFIG_DEFAULT_PATH ")\n"
	             "  -f              stay in the foreground and log to stderr\n"
	             "  -t              check the configuration and exit (0: valid, 1: not)\n"
	             "  -o KEY=VALUE    override a setting, e.g. -o store.sqlite.path=/tmp/st.db\n"
	             "  -h, --help      print this help and exit\n"
	             "  -V, --version   print the version and exit\n");
}

static const struct option long_options[] = {
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

/* 0: go on, 1: exit with success (-h, -V), -1: exit with a usage error. */
static int parse_options(int argc, char **argv, options *opt)
{
	memset(opt, 0, sizeof(*opt));
	opt->config_path = CONFIG_DEFAULT_PATH;
	int c;
	while ((c = getopt_long(argc, argv, "c:fto:hV", long_options, NULL)) != -1) {
		switch (c) {
		case 'c':
			opt->config_path = optarg;
			break;
		case 'f':
			opt->foreground = true;
			break;
		case 't':
			opt->check_only = true;
			break;
		case 'o':
			if (opt->noverrides == MAX_OVERRIDES) {
				fprintf(stderr, "spamtrapd: more than %d -o options\n", MAX_OVERRIDES);
				return -1;
			}
			opt->overrides[opt->noverrides++] = optarg;
			break;
		case 'h':
			usage(stdout);
			return 1;
		case 'V':
			printf("spamtrapd %s\n", SPAMTRAPD_VERSION);
			return 1;
		default:
			usage(stderr);
			return -1;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return -1;
	}
	return 0;
}

static config *load_config(const options *opt)
{
	char err[8192];
	config *cfg = config_load(opt->config_path, opt->overrides, opt->noverrides, err, sizeof(err));
	if (!cfg)
		fprintf(stderr, "spamtrapd: %s\n", err);
	return cfg;
}

/* config.warnings (a file others may change...): logged at start and reload, printed by -t. */
static void log_config_warnings(const config *cfg)
{
	for (size_t i = 0; i < cfg->nwarnings; i++)
		log_warning("%s", cfg->warnings[i]);
}

static void open_log(const options *opt, const config *cfg)
{
	if (opt->foreground)
		log_open("spamtrapd", LOG_TARGET_STDERR, cfg->log.facility, cfg->log.level);
	else
		log_open("spamtrapd", cfg->log.target, cfg->log.facility, cfg->log.level);
}

static bool same_listeners(const config *a, const config *b)
{
	if (a->policy.nlisten != b->policy.nlisten)
		return false;
	for (size_t i = 0; i < a->policy.nlisten; i++)
		if (strcmp(a->policy.listen[i].address, b->policy.listen[i].address) != 0 ||
		    a->policy.listen[i].role != b->policy.listen[i].role)
			return false;
	const char *ma = a->milter.listen ? a->milter.listen : "";
	const char *mb = b->milter.listen ? b->milter.listen : "";
	const char *xa = a->metrics.listen ? a->metrics.listen : "";
	const char *xb = b->metrics.listen ? b->metrics.listen : "";
	return strcmp(ma, mb) == 0 && strcmp(xa, xb) == 0;
}

/* Only a change of target or facility reopens the log; the level is an atomic. */
static void apply_log_settings(const options *opt, const config *old, const config *cfg)
{
	if (old->log.target != cfg->log.target || old->log.facility != cfg->log.facility)
		open_log(opt, cfg);
	else
		log_set_level(cfg->log.level);
}

static void reload(control *ctl)
{
	char err[8192];
	config *cfg =
	    config_load(ctl->opt->config_path, ctl->opt->overrides, ctl->opt->noverrides, err, sizeof(err));
	if (!cfg) {
		log_error("reload failed, the previous configuration stays in force: %s", err);
		stats_reload(false);
		return;
	}
	engine_snapshot *old = engine_acquire(ctl->eng);
	if (!same_listeners(engine_config(old), cfg))
		log_warning("reload: listener changes (policy.listen, milter.listen, metrics.listen) take "
		            "effect after a restart");
	config_ref(cfg); /* engine_reload takes one reference; the log settings need the snapshot too */
	if (engine_reload(ctl->eng, cfg, err, sizeof(err)) < 0) {
		log_error("reload failed, the previous configuration stays in force: %s", err);
		stats_reload(false);
	} else {
		stats_reload(true);
		apply_log_settings(ctl->opt, engine_config(old), cfg);
		log_config_warnings(cfg);
		log_notice("configuration reloaded from %s", ctl->opt->config_path);
	}
	config_unref(cfg);
	engine_release(old);
}

static int64_t purge_interval(control *ctl)
{
	engine_snapshot *snap = engine_acquire(ctl->eng);
	int64_t interval = engine_config(snap)->purge_interval;
	engine_release(snap);
	return interval;
}

/*
 * Seconds to the next count of the blocklist's entries; 0 without a
 * metrics listener (no count). Whether the listener runs, not what the
 * config says now: a reload that drops metrics.listen leaves it serving
 * until a restart, and its gauge must not freeze.
 */
static int64_t entries_refresh(control *ctl)
{
	if (!ctl->metrics_on)
		return 0;
	engine_snapshot *snap = engine_acquire(ctl->eng);
	int64_t interval = engine_config(snap)->metrics.entries_refresh;
	engine_release(snap);
	return interval;
}

/* Milliseconds until t, for poll(); 0 when t has passed. */
static int ms_until(time_t t)
{
	time_t now = time(NULL);
	return t <= now ? 0 : (int)((t - now) * 1000);
}

/* Reloads, purges and the stop message happen here, never on the main thread. */
static void *control_main(void *arg)
{
	control *ctl = arg;
	/*
	 * A purge right at start: expired entries of a long downtime go, and
	 * the Redis store learns which network lengths exist (its lookups
	 * probe only those once a purge has run).
	 */
	time_t next_purge = time(NULL), next_count = time(NULL);
	for (;;) {
		struct pollfd pfd = {.fd = ctl->pipe[0], .events = POLLIN};
		int n =
		    poll(&pfd, 1, ms_until(next_count && next_count < next_purge ? next_count : next_purge));
		char cmd = 0;
		if (n > 0 && read(ctl->pipe[0], &cmd, 1) != 1)
			cmd = 0;
		if (cmd == CONTROL_STOP || cmd == CONTROL_INTERRUPT) {
			log_notice("%s received, stopping", cmd == CONTROL_STOP ? "SIGTERM" : "SIGINT");
			return NULL;
		}
		if (cmd == CONTROL_RELOAD) {
			reload(ctl);
			/* A shorter metrics.entries_refresh counts by its own bound, not the old one's. */
			int64_t refresh = entries_refresh(ctl);
			if (next_count && refresh > 0 && next_count > time(NULL) + refresh)
				next_count = time(NULL) + refresh;
		}
		if (time(NULL) >= next_purge) {
			engine_purge(ctl->eng);
			next_purge = time(NULL) + purge_interval(ctl);
		}
		/* After the purge: it drops what expired. Off the request path (spamtrapd_blocklist_entries).
		 */
		if (next_count && time(NULL) >= next_count) {
			int64_t refresh = entries_refresh(ctl);
			if (refresh > 0)
				engine_count_entries(ctl->eng);
			next_count = refresh > 0 ? time(NULL) + refresh : 0;
		}
	}
}

static void control_post(control *ctl, char cmd)
{
	/* A full pipe means reloads are already queued: dropping one is fine. */
	ssize_t ignored = write(ctl->pipe[1], &cmd, 1);
	(void)ignored;
}

static void wait_for_stop(control *ctl, const sigset_t *signals)
{
	for (;;) {
		siginfo_t info;
		int sig = sigwaitinfo(signals, &info);
		if (sig == SIGHUP || sig == SIGUSR1) {
			control_post(ctl, CONTROL_RELOAD);
		} else if (sig == SIGTERM || sig == SIGINT) {
			control_post(ctl, sig == SIGTERM ? CONTROL_STOP : CONTROL_INTERRUPT);
			return;
		}
		/* SIGURG from outside: dropped. sig < 0: EINTR (a debugger, a stop and continue) */
	}
}

static void log_startup(const config *cfg)
{
	log_notice("spamtrapd %s starting: mode=%s store=%s traps=%zu milter=%s policy listeners=%zu",
	           SPAMTRAPD_VERSION, cfg->decide.dry_run ? "dry-run" : "enforce",
	           cfg->store.backend == STORE_BACKEND_SQLITE ? cfg->store.sqlite_path : "redis",
	           trapset_count(cfg->decide.traps), cfg->milter.listen ? cfg->milter.listen : "off",
	           cfg->policy.nlisten);
	for (size_t i = 0; i < cfg->policy.nlisten; i++)
		log_info("policy listener %s role %s", cfg->policy.listen[i].address,
		         policy_role_name(cfg->policy.listen[i].role));
}

/* Before the policy server reads the limit to size its connections (policy_server_new). */
static void raise_open_files(void)
{
	unsigned long long before, after;
	char err[256];
	if (daemon_raise_open_files(&before, &after, err, sizeof(err)) < 0)
		log_warning("cannot raise the open files limit (now %llu): %s", before, err);
	else if (after > before)
		log_info("open files limit raised from %llu to %llu", before, after);
}

/* The metric families, with the DNS lists of the config at start-up as the values of their site label. */
static int start_stats(const config *cfg, char *err, size_t errlen)
{
	const dnsbl_conf *dc = cfg->pipeline.checks[CHECK_ID_DNSBL].conf;
	const char *sites[DNSBL_SITES_MAX];
	size_t n = 0;

	for (size_t i = 0; dc && i < dc->nsites; i++) {
		size_t j = 0;
		while (j < n && strcmp(sites[j], dc->site[i].name) != 0)
			j++;
		if (j == n)
			sites[n++] = dc->site[i].name;
	}
	return stats_init(sites, n, err, errlen);
}

/* Binds, drops privileges, opens the store, starts the exporter, the front ends and the metrics listener. */
static int start(config *cfg, engine **eng_out, exporter **exp_out, policy_server **policy_out,
                 metrics_server **metrics_out, bool *milter_on)
{
	char err[1024];
	const bool want_milter = cfg->milter.listen != NULL;
	const char *user = cfg->user;
	if (start_stats(cfg, err, sizeof(err)) < 0)
		goto fail;
	engine *eng = engine_new(config_ref(cfg), err, sizeof(err));
	if (!eng)
		goto fail;
	*eng_out = eng;
	*policy_out = policy_server_new(eng, cfg, err, sizeof(err));
	if (!*policy_out)
		goto fail;
	if (want_milter && milter_setup(eng, cfg, err, sizeof(err)) < 0)
		goto fail;
	if (cfg->metrics.listen &&
	    !(*metrics_out = metrics_server_new(cfg, stats_registry(), err, sizeof(err))))
		goto fail;
	if (daemon_drop_privileges(user, err, sizeof(err)) < 0 ||
	    engine_open_store(eng, err, sizeof(err)) < 0 ||
	    !(*exp_out = exporter_new(eng, err, sizeof(err))) ||
	    policy_server_start(*policy_out, err, sizeof(err)) < 0 ||
	    (*metrics_out && metrics_server_start(*metrics_out, err, sizeof(err)) < 0))
		goto fail;
	if (want_milter && milter_start(err, sizeof(err)) < 0)
		goto fail;
	*milter_on = want_milter;
	return 0;
fail:
	log_error("cannot start: %s", err);
	return -1;
}

static int run(const options *opt, const sigset_t *signals, engine *eng, bool metrics_on, int status_fd)
{
	control ctl = {.opt = opt, .eng = eng, .metrics_on = metrics_on};
	pthread_t control_thread;
	if (pipe2(ctl.pipe, O_CLOEXEC) < 0 ||
	    pthread_create(&control_thread, NULL, control_main, &ctl) != 0) {
		log_error("cannot start the control thread: %s", strerror(errno));
		return -1;
	}
	log_notice("ready");
	daemon_report_started(status_fd, true);
	wait_for_stop(&ctl, signals);
	pthread_join(control_thread, NULL);
	close(ctl.pipe[0]);
	close(ctl.pipe[1]);
	return 0;
}

/* SIGTERM: in-flight transactions finish inside the stop calls; then nothing is left to record. */
static void stop(engine *eng, exporter *exp, policy_server *policy, metrics_server *scrape, bool milter_on)
{
	metrics_server_free(scrape);
	if (policy)
		policy_server_stop(policy);
	bool milter_quiet = !milter_on || milter_stop();
	policy_server_free(policy);
	/* A milter callback still running may use the engine: leave it to exit(). */
	if (milter_quiet) {
		exporter_free(exp);
		engine_free(eng);
	}
}

/* Started as root with no "user" to switch to: said on stderr, and the start refused. */
static bool serves_as_root(const config *cfg, const char *config_path)
{
	if (geteuid() != 0 || cfg->user)
		return false;
	fprintf(stderr,
	        "spamtrapd: refusing to serve as root: set \"user\" in %s (e.g. \"spamtrapd\"); "
	        "spamtrapd binds its sockets as root and then switches to that user\n",
	        config_path);
	return true;
}

int main(int argc, char **argv)
{
	options opt;
	int rc = parse_options(argc, argv, &opt);
	if (rc != 0)
		return rc > 0 ? 0 : 1;
	/* Before anything else, so that an early SIGTERM waits for a clean stop. */
	sigset_t signals;
	daemon_block_signals(&signals);
	/*
	 * A file size limit (ulimit -f, LimitFSIZE=) must make a write fail
	 * (EFBIG: a store error, store.on_error), not kill the daemon: the
	 * policy workers block SIGXFSZ, but libmilter's and the purge's
	 * threads do not.
	 */
	signal(SIGXFSZ, SIG_IGN);
	config *cfg = load_config(&opt);
	if (!cfg)
		return 1;
	/* Before -t answers too: run as root, "valid" would promise a start that is refused. */
	if (serves_as_root(cfg, opt.config_path)) {
		config_unref(cfg);
		return 1;
	}
	if (opt.check_only) {
		for (size_t i = 0; i < cfg->nwarnings; i++)
			fprintf(stderr, "spamtrapd: warning: %s\n", cfg->warnings[i]);
		printf("spamtrapd: configuration %s is valid (%zu traps)\n", opt.config_path,
		       trapset_count(cfg->decide.traps));
		config_unref(cfg);
		return 0;
	}
	char err[1024];
	int status_fd = -1;
	if (!opt.foreground && daemon_detach(&status_fd, err, sizeof(err)) < 0) {
		fprintf(stderr, "spamtrapd: %s\n", err);
		config_unref(cfg);
		return 1;
	}
	open_log(&opt, cfg);
	log_startup(cfg);
	log_config_warnings(cfg);
	raise_open_files();

	engine *eng = NULL;
	exporter *exp = NULL;
	policy_server *policy = NULL;
	metrics_server *scrape = NULL;
	bool milter_on = false;
	rc = start(cfg, &eng, &exp, &policy, &scrape, &milter_on);
	config_unref(cfg);
	if (rc == 0)
		rc = run(&opt, &signals, eng, scrape != NULL, status_fd);
	daemon_report_started(status_fd, false); /* no-op once reported */
	stop(eng, exp, policy, scrape, milter_on);
	if (milter_on && milter_failed())
		rc = -1;
	log_notice("stopped%s", rc == 0 ? "" : " with errors");
	log_close();
	return rc == 0 ? 0 : 1;
}
