/*
 * The hook runner with real processes: a hung hook is killed at its
 * timeout and reaped, a 5th concurrent hook waits in the queue, a full
 * queue drops (and logs once), the caller never waits for a hook, and
 * placeholders are substituted per argument with no shell in between.
 * Waits are for events (with a generous bound), never assertions on time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hook.h"
#include "log.h"

static char *const HUNG[] = {"/bin/sh", "-c", "sleep 30"};
#define HUNG_ARGC 3
#define LONG_MS 60000

static struct {
	unsigned warnings;
	char last[512];
} logged;

static void sink(int level, const char *msg, void *ctx)
{
	(void)ctx;
	(void)level;
	logged.warnings++;
	snprintf(logged.last, sizeof(logged.last), "%s", msg);
}

static hook_stats stats(hook_runner *h)
{
	hook_stats s;

	hook_runner_stats(h, &s);
	return s;
}

/* Wait (at most a minute: a bound, not a measure) until pred holds for the runner's stats. */
static hook_stats wait_for(hook_runner *h, bool (*pred)(const hook_stats *))
{
	for (int i = 0; i < 6000; i++) {
		hook_stats s = stats(h);

		if (pred(&s))
			return s;
		usleep(10000);
	}
	fail_msg("the hook runner never got there");
	return stats(h);
}

static bool one_killed(const hook_stats *s)
{
	return s->killed == 1 && s->running == 0;
}

static bool four_started(const hook_stats *s)
{
	return s->started == 4;
}

static bool one_started(const hook_stats *s)
{
	return s->started == 1;
}

static bool one_finished(const hook_stats *s)
{
	return s->finished == 1 && s->running == 0;
}

static int setup(void **state)
{
	(void)state;
	memset(&logged, 0, sizeof(logged));
	log_set_sink(sink, NULL);
	return 0;
}

static void test_timeout_kills_and_reaps(void **state)
{
	hook_runner *h = hook_runner_new(4, 8);
	hook_stats s;

	(void)state;
	assert_non_null(h);
	assert_true(hook_run(h, HUNG, HUNG_ARGC, NULL, NULL, 100));
	s = wait_for(h, one_killed);
	assert_int_equal(s.started, 1);
	assert_int_equal(s.finished, 0);
	assert_non_null(strstr(logged.last, "hook /bin/sh killed"));
	hook_runner_free(h);
}

/* Whether process pid is gone (or a zombie waiting for init). */
static bool gone(pid_t pid)
{
	char path[64], stat_line[256] = "";
	FILE *f;
	const char *paren;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (!(f = fopen(path, "r")))
		return true;
	if (!fgets(stat_line, sizeof(stat_line), f))
		stat_line[0] = '\0';
	fclose(f);
	paren = strrchr(stat_line, ')');
	return paren && paren[1] == ' ' && paren[2] == 'Z';
}

/* The timeout kills what the hook started too: a shell's child does not outlive it. */
static void test_timeout_kills_the_group(void **state)
{
	char dir[] = "/tmp/spamtrapd-test-hook.XXXXXX", script[1024], path[64], text[32] = "";
	hook_runner *h = hook_runner_new(4, 8);
	pid_t child = 0;
	FILE *f = NULL;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/pid", dir);
	snprintf(script, sizeof(script), "sleep 600 & echo $! > %s.tmp; mv %s.tmp %s; wait", path, path,
	         path);
	char *argv[] = {"/bin/sh", "-c", script};
	assert_true(hook_run(h, argv, 3, NULL, NULL, 300));
	for (int i = 0; i < 6000 && !(f = fopen(path, "r")); i++)
		usleep(10000);
	assert_non_null(f);
	assert_non_null(fgets(text, sizeof(text), f));
	fclose(f);
	child = (pid_t)atoi(text);
	assert_true(child > 0);
	wait_for(h, one_killed);
	for (int i = 0; i < 6000 && !gone(child); i++)
		usleep(10000);
	assert_true(gone(child));
	hook_runner_free(h);
	unlink(path);
	rmdir(dir);
}

/* The caller never waits: hook_run returns with the hooks still running, four at once, the 5th queued. */
static void test_fifth_is_queued_caller_never_waits(void **state)
{
	hook_runner *h = hook_runner_new(HOOK_MAX_RUNNING, 8);
	hook_stats s;

	(void)state;
	for (int i = 0; i < 5; i++)
		assert_true(hook_run(h, HUNG, HUNG_ARGC, NULL, NULL, LONG_MS));
	s = wait_for(h, four_started);
	assert_int_equal(s.running, 4);
	assert_int_equal(s.queued, 1);
	assert_int_equal(s.finished + s.killed, 0);
	/* still queued a moment later: only four run at once */
	usleep(100000);
	s = stats(h);
	assert_int_equal(s.started, 4);
	assert_int_equal(s.queued, 1);
	/* freeing kills and reaps the four, drops the fifth */
	hook_runner_free(h);
}

static void test_queue_overflow_is_dropped_and_logged_once(void **state)
{
	hook_runner *h = hook_runner_new(1, 2);
	hook_stats s;

	(void)state;
	assert_true(hook_run(h, HUNG, HUNG_ARGC, NULL, NULL, LONG_MS));
	wait_for(h, one_started);
	assert_true(hook_run(h, HUNG, HUNG_ARGC, NULL, NULL, LONG_MS));
	assert_true(hook_run(h, HUNG, HUNG_ARGC, NULL, NULL, LONG_MS));
	logged.warnings = 0;
	assert_false(hook_run(h, HUNG, HUNG_ARGC, NULL, NULL, LONG_MS));
	assert_false(hook_run(h, HUNG, HUNG_ARGC, NULL, NULL, LONG_MS));
	s = stats(h);
	assert_int_equal(s.dropped, 2);
	assert_int_equal(s.queued, 2);
	assert_int_equal(logged.warnings, 1); /* rate limited: one line for the flood */
	assert_non_null(strstr(logged.last, "dropped: too many hooks waiting"));
	hook_runner_free(h);
}

/* Values go into their argument as they are: no shell ever reads them. */
static void test_placeholders_no_shell(void **state)
{
	char dir[] = "/tmp/spamtrapd-test-hook.XXXXXX", out[300], pwned[300], script[700], got[512] = "";
	static const char *const names[] = {"account", "network", NULL};
	const char *values[] = {"sasl:$(touch PWNED)", "192.0.2.0/24; touch PWNED"};
	hook_runner *h = hook_runner_new(4, 8);
	struct stat st;
	FILE *f;
	size_t n;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(out, sizeof(out), "%s/out", dir);
	snprintf(pwned, sizeof(pwned), "%s/PWNED", dir);
	snprintf(script, sizeof(script), "cd %s && printf '[%%s]' \"$@\" > out.tmp && mv out.tmp out", dir);
	char *argv[] = {"/bin/sh",    "-c",         script,         "sh",
	                "%{account}", "%{network}", "x%{network}y", "%{unknown}"};
	assert_true(hook_run(h, argv, 8, names, values, LONG_MS));
	wait_for(h, one_finished);
	f = fopen(out, "r");
	assert_non_null(f);
	n = fread(got, 1, sizeof(got) - 1, f);
	got[n] = '\0';
	fclose(f);
	/* a value is a whole argument; inside a longer one a placeholder is left as written */
	assert_string_equal(got,
	                    "[sasl:$(touch PWNED)][192.0.2.0/24; touch PWNED][x%{network}y][%{unknown}]");
	assert_int_not_equal(stat(pwned, &st), 0);
	hook_runner_free(h);
	unlink(out);
	rmdir(dir);
}

/*
 * A hook gets PATH and nothing else of the daemon's environment (store
 * credentials, the service manager's variables), and argv[0] is never
 * substituted.
 */
static void test_minimal_environment(void **state)
{
	char dir[] = "/tmp/spamtrapd-test-hook.XXXXXX", out[300], script[700], got[512] = "";
	static const char *const names[] = {"account", NULL};
	const char *values[] = {"/bin/false"};
	hook_runner *h = hook_runner_new(4, 8);
	FILE *f;
	size_t n;

	(void)state;
	assert_non_null(mkdtemp(dir));
	setenv("SPAMTRAPD_TEST_SECRET", "redis-password", 1);
	snprintf(out, sizeof(out), "%s/out", dir);
	snprintf(script, sizeof(script), "cd %s && env | LC_ALL=C sort > out.tmp && mv out.tmp out", dir);
	char *argv[] = {"/bin/sh", "-c", script};
	assert_true(hook_run(h, argv, 3, NULL, NULL, LONG_MS));
	wait_for(h, one_finished);
	unsetenv("SPAMTRAPD_TEST_SECRET");
	f = fopen(out, "r");
	assert_non_null(f);
	n = fread(got, 1, sizeof(got) - 1, f);
	got[n] = '\0';
	fclose(f);
	/* sh adds PWD (and may add SHLVL, _) itself; nothing comes from the daemon */
	assert_non_null(strstr(got, "PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"));
	assert_null(strstr(got, "SPAMTRAPD_TEST_SECRET"));
	assert_null(strstr(got, "HOME="));
	unlink(out);
	/* argv[0] as written, even when it looks like a placeholder: nothing to run */
	char *bad[] = {"%{account}"};
	assert_true(hook_run(h, bad, 1, names, values, LONG_MS));
	for (int i = 0; i < 6000 && stats(h).failed == 0; i++)
		usleep(10000);
	assert_int_equal(stats(h).failed, 1);
	hook_runner_free(h);
	rmdir(dir);
}

static void test_cannot_spawn(void **state)
{
	hook_runner *h = hook_runner_new(1, 1);
	char *argv[] = {"/nonexistent/hook"};
	hook_stats s;

	(void)state;
	assert_true(hook_run(h, argv, 1, NULL, NULL, LONG_MS));
	for (int i = 0; i < 6000 && stats(h).failed == 0; i++)
		usleep(10000);
	s = stats(h);
	assert_int_equal(s.failed, 1);
	assert_int_equal(s.running, 0);
	hook_runner_free(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup(test_timeout_kills_and_reaps, setup),
	    cmocka_unit_test_setup(test_timeout_kills_the_group, setup),
	    cmocka_unit_test_setup(test_fifth_is_queued_caller_never_waits, setup),
	    cmocka_unit_test_setup(test_queue_overflow_is_dropped_and_logged_once, setup),
	    cmocka_unit_test_setup(test_placeholders_no_shell, setup),
	    cmocka_unit_test_setup(test_cannot_spawn, setup),
	    cmocka_unit_test_setup(test_minimal_environment, setup),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
