/*
 * spamtrapd: start-up, signals and shutdown.
 *
 * Threads: the main thread only waits for signals; a control thread
 * reloads the config and purges expired entries; the policy workers and
 * libmilter's threads serve Postfix. Every signal is blocked before any
 * thread exists, and the main thread waits for HUP/USR1/TERM/INT with
 * sigwaitinfo. libmilter starts its own signal thread that treats SIGHUP
 * as "stop": Linux hands a process-directed signal to the main thread when
 * that thread is waiting for it, and the main thread never does anything
 * but wait (it passes the work to the control thread), so SIGHUP reloads.
 */
#include <errno.h>
#include <getopt.h>
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
#include "log.h"
#include "milter/milter.h"
#include "policy/policy_server.h"

#define MAX_OVERRIDES 64

typedef struct options {
	const char *config_path;
	bool foreground;
	bool check_only;
	const char *overrides[MAX_OVERRIDES];
	size_t noverrides;
} options;

typedef struct control {
	const options *opt;
	engine *eng;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	bool reload_requested;
	bool stop_requested;
} control;

static void usage(FILE *out)
{
	fprintf(out, "usage: spamtrapd [-c FILE] [-f] [-t] [-o KEY=VALUE]...\n"
	             "  -c FILE       configuration file (default " CONFIG_DEFAULT_PATH ")\n"
	             "  -f            stay in the foreground and log to stderr\n"
	             "  -t            check the configuration and exit (0: valid, 1: not)\n"
	             "  -o KEY=VALUE  override a setting, e.g. -o store.sqlite.path=/tmp/st.db\n"
	             "  -V            print the version\n");
}

/* 0: go on, 1: exit with success (-h, -V), -1: exit with a usage error. */
static int parse_options(int argc, char **argv, options *opt)
{
	memset(opt, 0, sizeof(*opt));
	opt->config_path = CONFIG_DEFAULT_PATH;
	int c;
	while ((c = getopt(argc, argv, "c:fto:hV")) != -1) {
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
	return strcmp(ma, mb) == 0;
}

static void reload(control *ctl)
{
	char err[8192];
	config *cfg =
	    config_load(ctl->opt->config_path, ctl->opt->overrides, ctl->opt->noverrides, err, sizeof(err));
	if (!cfg) {
		log_error("reload failed, the previous configuration stays in force: %s", err);
		return;
	}
	engine_snapshot *old = engine_acquire(ctl->eng);
	if (!same_listeners(engine_config(old), cfg))
		log_warning(
		    "reload: listener changes (policy.listen, milter.listen) take effect after a restart");
	engine_release(old);
	open_log(ctl->opt, cfg);
	if (engine_reload(ctl->eng, cfg, err, sizeof(err)) < 0) {
		log_error("reload failed, the previous configuration stays in force: %s", err);
		return;
	}
	log_notice("configuration reloaded from %s", ctl->opt->config_path);
}

static int64_t purge_interval(control *ctl)
{
	engine_snapshot *snap = engine_acquire(ctl->eng);
	int64_t interval = engine_config(snap)->purge_interval;
	engine_release(snap);
	return interval;
}

/* Reloads and purges happen here, never on the signal-waiting main thread. */
static void *control_main(void *arg)
{
	control *ctl = arg;
	time_t next_purge = time(NULL) + purge_interval(ctl);
	pthread_mutex_lock(&ctl->lock);
	while (!ctl->stop_requested) {
		struct timespec until = {.tv_sec = next_purge};
		while (!ctl->stop_requested && !ctl->reload_requested && time(NULL) < next_purge)
			if (pthread_cond_timedwait(&ctl->wake, &ctl->lock, &until) == ETIMEDOUT)
				break;
		bool do_reload = ctl->reload_requested && !ctl->stop_requested;
		ctl->reload_requested = false;
		pthread_mutex_unlock(&ctl->lock);
		if (do_reload)
			reload(ctl);
		if (time(NULL) >= next_purge) {
			engine_purge(ctl->eng);
			next_purge = time(NULL) + purge_interval(ctl);
		}
		pthread_mutex_lock(&ctl->lock);
	}
	pthread_mutex_unlock(&ctl->lock);
	return NULL;
}

static void control_post(control *ctl, bool stop)
{
	pthread_mutex_lock(&ctl->lock);
	if (stop)
		ctl->stop_requested = true;
	else
		ctl->reload_requested = true;
	pthread_cond_signal(&ctl->wake);
	pthread_mutex_unlock(&ctl->lock);
}

static void wait_for_stop(control *ctl, const sigset_t *signals)
{
	for (;;) {
		siginfo_t info;
		int sig = sigwaitinfo(signals, &info);
		if (sig < 0)
			continue; /* EINTR from a debugger or a stopped/continued process */
		if (sig == SIGHUP || sig == SIGUSR1) {
			control_post(ctl, false);
			continue;
		}
		log_notice("%s received, stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
		control_post(ctl, true);
		return;
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

/* Binds, drops privileges, opens the store, starts the front ends. */
static int start(config *cfg, engine **eng_out, policy_server **policy_out, bool *milter_on)
{
	char err[1024];
	const bool want_milter = cfg->milter.listen != NULL;
	const char *user = cfg->user;
	engine *eng = engine_new(config_ref(cfg), err, sizeof(err));
	if (!eng)
		goto fail;
	*eng_out = eng;
	*policy_out = policy_server_new(eng, cfg, err, sizeof(err));
	if (!*policy_out)
		goto fail;
	if (want_milter && milter_setup(eng, cfg, err, sizeof(err)) < 0)
		goto fail;
	if (daemon_drop_privileges(user, err, sizeof(err)) < 0 ||
	    engine_open_store(eng, err, sizeof(err)) < 0 ||
	    policy_server_start(*policy_out, err, sizeof(err)) < 0)
		goto fail;
	if (want_milter && milter_start(err, sizeof(err)) < 0)
		goto fail;
	*milter_on = want_milter;
	return 0;
fail:
	log_error("cannot start: %s", err);
	return -1;
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
	config *cfg = load_config(&opt);
	if (!cfg)
		return 1;
	if (opt.check_only) {
		printf("spamtrapd: configuration %s is valid (%zu traps)\n", opt.config_path,
		       trapset_count(cfg->decide.traps));
		config_unref(cfg);
		return 0;
	}
	if (geteuid() == 0 && !cfg->user) {
		fprintf(stderr,
			"spamtrapd: refusing to serve as root: set \"user\" in %s (e.g. \"spamtrapd\"); "
			"spamtrapd binds its sockets as root and then switches to that user\n",
			opt.config_path);
		config_unref(cfg);
		return 1;
	}
	char err[1024];
	if (!opt.foreground && daemon_detach(err, sizeof(err)) < 0) {
		fprintf(stderr, "spamtrapd: %s\n", err);
		config_unref(cfg);
		return 1;
	}
	open_log(&opt, cfg);
	log_startup(cfg);

	engine *eng = NULL;
	policy_server *policy = NULL;
	bool milter_on = false;
	rc = start(cfg, &eng, &policy, &milter_on);
	config_unref(cfg);
	if (rc == 0) {
		control ctl = {.opt = &opt, .eng = eng};
		pthread_mutex_init(&ctl.lock, NULL);
		pthread_cond_init(&ctl.wake, NULL);
		pthread_t control_thread;
		if (pthread_create(&control_thread, NULL, control_main, &ctl) != 0) {
			log_error("cannot start the control thread");
			rc = -1;
		} else {
			log_notice("ready");
			wait_for_stop(&ctl, &signals);
			pthread_join(control_thread, NULL);
		}
	}
	/* In-flight transactions finish inside the stop calls; then nothing is left to record. */
	if (policy)
		policy_server_stop(policy);
	if (milter_on)
		milter_stop();
	policy_server_free(policy);
	engine_free(eng);
	log_notice("stopped");
	log_close();
	return rc == 0 ? 0 : 1;
}
