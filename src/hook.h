/*
 * hook: run admin programs (relay.notify) without ever holding up mail.
 *
 * A hook is an argv, run directly (posix_spawn, no shell: nothing in an
 * argument is ever interpreted), with stdin, stdout and stderr on
 * /dev/null, every other descriptor closed, and an environment of
 * PATH=/usr/sbin:/usr/bin:/sbin:/bin alone (nothing of the daemon's). One thread of the runner's
 * own spawns, waits and reaps; hook_run only copies the job into a bounded
 * queue and returns, so a worker never waits for a hook. At most
 * max_running hooks run at once; the rest wait in the queue (at most
 * queue_max); past that a job is dropped and logged (rate limited). A hook
 * runs in a process group of its own: at its timeout the group is killed
 * (SIGKILL, with whatever the hook started) and the hook reaped.
 */
#ifndef SPAMTRAPD_HOOK_H
#define SPAMTRAPD_HOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct hook_runner hook_runner;

#define HOOK_MAX_RUNNING 4
#define HOOK_QUEUE_MAX 64
/* Most arguments, and bytes of one argument after substitution. */
#define HOOK_ARGS_MAX 32
#define HOOK_ARG_MAX 1024

/* The runner and its thread; NULL when out of memory or no thread could start. */
hook_runner *hook_runner_new(unsigned max_running, size_t queue_max);
/* Kill (SIGKILL) and reap the hooks still running, drop the queue, join the thread. Accepts NULL. */
void hook_runner_free(hook_runner *h);

/*
 * Queue argv[0..argc), each argument after argv[0] that is exactly
 * "%{names[i]}" replaced by values[i] (names NULL-terminated; NULL: none;
 * a placeholder inside a longer argument, or in argv[0], stays as it is),
 * to run for at most timeout_ms. Never blocks on a hook. false: dropped (queue full, too many
 * or too long arguments, out of memory), and logged.
 */
bool hook_run(hook_runner *h, char *const *argv, size_t argc, const char *const *names,
              const char *const *values, int64_t timeout_ms);

typedef struct hook_stats {
	uint64_t started;  /* spawned */
	uint64_t finished; /* exited by themselves (any status) */
	uint64_t killed;   /* killed at their timeout */
	uint64_t dropped;  /* never queued: the queue was full */
	uint64_t failed;   /* could not be spawned */
	unsigned running;
	size_t queued;
} hook_stats;

void hook_runner_stats(hook_runner *h, hook_stats *out);

#endif
