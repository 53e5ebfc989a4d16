/* hook: a bounded runner of admin programs (see hook.h). */
#include "hook.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "log.h"

/*
 * A hook's whole environment: nothing of the daemon's (its store
 * credentials, whatever the service manager set) is passed on.
 */
static char *hook_env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};

/* How often the runner looks at its children when nothing wakes it: the granularity of a timeout. */
#define HOOK_POLL_MS 20

typedef struct hook_job {
	char **argv; /* NULL-terminated, owned */
	int64_t timeout_ms;
} hook_job;

typedef struct hook_child {
	pid_t pid; /* 0: free slot */
	int64_t deadline_ms;
	char name[64]; /* argv[0], for the log */
} hook_child;

struct hook_runner {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	pthread_t thread;
	bool stopping;
	unsigned max_running;
	size_t queue_max, head, count;
	hook_job *queue; /* a ring of queue_max */
	hook_child *children;
	hook_stats stats;
	log_ratelimit drops;
};

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void job_free(hook_job *j)
{
	for (size_t i = 0; j->argv && j->argv[i]; i++)
		free(j->argv[i]);
	free(j->argv);
	j->argv = NULL;
}

/*
 * arg, or values[i] when arg is exactly "%{names[i]}": a value is always
 * an argument of its own, never part of one (a script given to sh -c),
 * so that no program ever parses it out of a larger text. NULL when too
 * long or out of memory.
 */
static char *expand(const char *arg, const char *const *names, const char *const *values)
{
	const char *out = arg;

	for (size_t i = 0; names && names[i] && arg[0] == '%' && arg[1] == '{'; i++)
		if (strncmp(arg + 2, names[i], strlen(names[i])) == 0 &&
		    strcmp(arg + 2 + strlen(names[i]), "}") == 0) {
			out = values[i] ? values[i] : "";
			break;
		}
	if (strnlen(out, HOOK_ARG_MAX) >= HOOK_ARG_MAX)
		return NULL;
	return strdup(out);
}

static void log_drop(hook_runner *h, const char *why, const char *name)
{
	uint64_t suppressed = 0;
	char safe[64];

	if (!log_ratelimit_pass(&h->drops, mono_ms() / 1000, &suppressed))
		return;
	log_warning("hook %s dropped: %s (%llu more dropped hooks not logged)",
	            log_safe(name, safe, sizeof(safe)), why, (unsigned long long)suppressed);
}

bool hook_run(hook_runner *h, char *const *argv, size_t argc, const char *const *names,
              const char *const *values, int64_t timeout_ms)
{
	hook_job j = {.timeout_ms = timeout_ms > 0 ? timeout_ms : 1};
	bool queued = false;

	if (!h || argc == 0 || argc > HOOK_ARGS_MAX)
		return false;
	if (!(j.argv = calloc(argc + 1, sizeof(*j.argv))))
		return false;
	/* The program is the admin's, as written: never a value. */
	for (size_t i = 0; i < argc; i++)
		if (!(j.argv[i] = i == 0 ? strdup(argv[0]) : expand(argv[i], names, values))) {
			pthread_mutex_lock(&h->lock);
			h->stats.dropped++;
			log_drop(h, "an argument too long after substitution", argv[0]);
			pthread_mutex_unlock(&h->lock);
			job_free(&j);
			return false;
		}
	pthread_mutex_lock(&h->lock);
	if (h->count < h->queue_max && !h->stopping) {
		h->queue[(h->head + h->count++) % h->queue_max] = j;
		h->stats.queued = h->count;
		queued = true;
		pthread_cond_signal(&h->wake);
	} else {
		h->stats.dropped++;
		log_drop(h, "too many hooks waiting", argv[0]);
	}
	pthread_mutex_unlock(&h->lock);
	if (!queued)
		job_free(&j);
	return queued;
}

/*
 * posix_spawn with /dev/null on 0, 1 and 2, every other descriptor
 * closed, default signals, its own group, and hook_env for environment.
 */
static pid_t spawn(char **argv)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	pid_t pid = 0;
	int rc;

	sigemptyset(&none);
	sigfillset(&all);
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	/* A group of its own: the timeout kills what the hook started too (a shell's sleep). */
	posix_spawnattr_setpgroup(&attr, 0);
	posix_spawnattr_setflags(&attr,
	                         POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
	rc = posix_spawn(&pid, argv[0], &fa, &attr, argv, hook_env);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (rc != 0) {
		char safe[64];

		log_warning("hook %s: cannot run: %s", log_safe(argv[0], safe, sizeof(safe)), strerror(rc));
		return -1;
	}
	return pid;
}

/* Start queued jobs while there is room. Called with the lock held; spawns without it. */
static void start_jobs(hook_runner *h)
{
	for (unsigned slot = 0; slot < h->max_running && h->count > 0; slot++) {
		hook_job j;
		pid_t pid;

		if (h->children[slot].pid != 0)
			continue;
		j = h->queue[h->head];
		h->head = (h->head + 1) % h->queue_max;
		h->count--;
		h->stats.queued = h->count;
		h->children[slot].pid = -1; /* taken while unlocked */
		pthread_mutex_unlock(&h->lock);
		pid = spawn(j.argv);
		pthread_mutex_lock(&h->lock);
		if (pid > 0) {
			h->children[slot].pid = pid;
			h->children[slot].deadline_ms = mono_ms() + j.timeout_ms;
			snprintf(h->children[slot].name, sizeof(h->children[slot].name), "%s", j.argv[0]);
			h->stats.started++;
			h->stats.running++;
		} else {
			h->children[slot].pid = 0;
			h->stats.failed++;
		}
		job_free(&j);
	}
}

/* Reap children that exited; kill and reap those past their deadline (or all, when stopping). */
static void reap(hook_runner *h)
{
	int64_t now = mono_ms();

	for (unsigned slot = 0; slot < h->max_running; slot++) {
		hook_child *c = &h->children[slot];
		int status;

		if (c->pid <= 0)
			continue;
		pid_t r = waitpid(c->pid, &status, WNOHANG);

		if (r == c->pid ||
		    (r < 0 && errno == ECHILD)) { /* ECHILD: reaped already (SIGCHLD ignored) */
			h->stats.finished++;
		} else if (h->stopping || now >= c->deadline_ms) {
			char safe[64];

			kill(-c->pid, SIGKILL);
			kill(c->pid, SIGKILL);
			while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
				;
			h->stats.killed++;
			if (!h->stopping)
				log_warning("hook %s killed: still running after its timeout",
				            log_safe(c->name, safe, sizeof(safe)));
		} else {
			continue;
		}
		c->pid = 0;
		h->stats.running--;
	}
}

static void *runner(void *arg)
{
	hook_runner *h = arg;

	pthread_mutex_lock(&h->lock);
	for (;;) {
		struct timespec until;

		reap(h);
		if (h->stopping)
			break;
		start_jobs(h);
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_nsec += HOOK_POLL_MS * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		/* Woken early by a new job; otherwise a look at the children every HOOK_POLL_MS. */
		if (h->stats.running == 0 && h->count == 0)
			pthread_cond_wait(&h->wake, &h->lock);
		else
			pthread_cond_timedwait(&h->wake, &h->lock, &until);
	}
	pthread_mutex_unlock(&h->lock);
	return NULL;
}

hook_runner *hook_runner_new(unsigned max_running, size_t queue_max)
{
	hook_runner *h = calloc(1, sizeof(*h));
	pthread_condattr_t ca;

	if (!h)
		return NULL;
	h->max_running = max_running ? max_running : 1;
	h->queue_max = queue_max ? queue_max : 1;
	h->queue = calloc(h->queue_max, sizeof(*h->queue));
	h->children = calloc(h->max_running, sizeof(*h->children));
	h->drops.interval = 60;
	h->drops.burst = 1;
	pthread_mutex_init(&h->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&h->wake, &ca);
	pthread_condattr_destroy(&ca);
	if (!h->queue || !h->children || pthread_create(&h->thread, NULL, runner, h) != 0) {
		pthread_mutex_destroy(&h->lock);
		pthread_cond_destroy(&h->wake);
		free(h->queue);
		free(h->children);
		free(h);
		return NULL;
	}
	return h;
}

void hook_runner_free(hook_runner *h)
{
	if (!h)
		return;
	pthread_mutex_lock(&h->lock);
	h->stopping = true;
	pthread_cond_signal(&h->wake);
	pthread_mutex_unlock(&h->lock);
	pthread_join(h->thread, NULL);
	for (size_t i = 0; i < h->count; i++)
		job_free(&h->queue[(h->head + i) % h->queue_max]);
	pthread_mutex_destroy(&h->lock);
	pthread_cond_destroy(&h->wake);
	free(h->queue);
	free(h->children);
	free(h);
}

void hook_runner_stats(hook_runner *h, hook_stats *out)
{
	pthread_mutex_lock(&h->lock);
	*out = h->stats;
	pthread_mutex_unlock(&h->lock);
}
