/* Unit tests of the log helpers that shape every decision line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

static void test_log_safe(void **state)
{
	(void)state;
	static const struct {
		const char *name, *in;
		size_t buflen;
		const char *out;
	} cases[] = {
	    {"NULL becomes a dash", NULL, 16, "-"},
	    {"plain text is kept", "a@b.example", 32, "a@b.example"},
	    {"control characters are replaced", "a\r\nb\tc\x7f", 32, "a??b?c?"},
	    {"UTF-8 is kept", "j\xc3\xb6rg@example.de", 32, "j\xc3\xb6rg@example.de"},
	    {"long values are capped", "0123456789", 5, "0123"},
	    {"3- and 4-byte UTF-8 is kept", "\xe2\x82\xac\xf0\x9f\x93\xa7@d", 32,
	     "\xe2\x82\xac\xf0\x9f\x93\xa7@d"},
	    {"a stray continuation byte is masked",
	     "a\x80"
	     "b",
	     32, "a?b"},
	    {"Latin-1 is masked", "j\xf6rg@d", 32, "j?rg@d"},
	    {"an overlong form is masked", "\xc0\xafx", 32, "??x"},
	    {"a surrogate is masked", "\xed\xa0\x80x", 32, "???x"},
	    {"above U+10FFFF is masked", "\xf4\x90\x80\x80x", 32, "????x"},
	    {"a C1 control is masked",
	     "a\xc2\x9b"
	     "b",
	     32, "a??b"},
	    {"U+00A0 is kept",
	     "a\xc2\xa0"
	     "b",
	     32,
	     "a\xc2\xa0"
	     "b"},
	    {"a truncated sequence at the end is masked", "ab\xe2\x82", 32, "ab??"},
	    {"a sequence that does not fit is dropped, not cut", "ab\xe2\x82\xac", 5, "ab"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		print_message("case: %s\n", cases[i].name);
		char buf[64];
		memset(buf, 'X', sizeof(buf));
		const char *out = log_safe(cases[i].in, buf, cases[i].buflen);
		assert_ptr_equal(out, buf);
		assert_string_equal(out, cases[i].out);
	}
}

static void test_log_safe_field(void **state)
{
	(void)state;
	char buf[64];
	assert_string_equal(log_safe_field("a@b> recipient=<ceo@x", buf, sizeof(buf)),
	                    "a@b??recipient??ceo@x");
	assert_string_equal(log_safe_field(NULL, buf, sizeof(buf)), "-");
	assert_string_equal(log_safe_field("x\ny", buf, sizeof(buf)), "x?y");
}

static void test_ratelimit(void **state)
{
	(void)state;
	log_ratelimit rl = {.interval = 10};
	uint64_t suppressed = 99;
	assert_true(log_ratelimit_pass(&rl, 1000, &suppressed));
	assert_int_equal(suppressed, 0);
	assert_false(log_ratelimit_pass(&rl, 1001, &suppressed));
	assert_false(log_ratelimit_pass(&rl, 1009, &suppressed));
	assert_true(log_ratelimit_pass(&rl, 1010, &suppressed));
	assert_int_equal(suppressed, 2);
}

/* burst lines per interval; the count of the others comes with the next line or a flush. */
static void test_ratelimit_burst(void **state)
{
	(void)state;
	log_ratelimit rl = {.interval = 1, .burst = 3};
	uint64_t suppressed = 99;
	for (int i = 0; i < 3; i++) {
		assert_true(log_ratelimit_pass(&rl, 500, &suppressed));
		assert_int_equal(suppressed, 0);
	}
	assert_false(log_ratelimit_pass(&rl, 500, &suppressed));
	assert_false(log_ratelimit_pass(&rl, 500, &suppressed));
	/* not before the interval is over */
	assert_false(log_ratelimit_flush(&rl, 500, &suppressed));
	assert_int_equal(suppressed, 0);
	/* the next interval: its first line carries the count */
	assert_true(log_ratelimit_pass(&rl, 501, &suppressed));
	assert_int_equal(suppressed, 2);
	assert_true(log_ratelimit_pass(&rl, 501, &suppressed));
	assert_int_equal(suppressed, 0);
}

static void test_ratelimit_flush(void **state)
{
	(void)state;
	log_ratelimit rl = {.interval = 1, .burst = 1};
	uint64_t suppressed = 99;
	assert_false(log_ratelimit_flush(&rl, 700, &suppressed)); /* nothing dropped yet */
	assert_true(log_ratelimit_pass(&rl, 700, &suppressed));
	assert_false(log_ratelimit_pass(&rl, 700, &suppressed));
	assert_false(log_ratelimit_pass(&rl, 700, &suppressed));
	assert_true(log_ratelimit_flush(&rl, 702, &suppressed)); /* the flood stopped: its summary */
	assert_int_equal(suppressed, 2);
	assert_false(log_ratelimit_flush(&rl, 703, &suppressed)); /* once */
	assert_true(log_ratelimit_pass(&rl, 703, &suppressed));
	assert_int_equal(suppressed, 0);
}

static void test_names(void **state)
{
	(void)state;
	assert_int_equal(log_level_from_name("debug"), LOG_DEBUG);
	assert_int_equal(log_level_from_name("ERR"), LOG_ERR);
	assert_int_equal(log_level_from_name("loud"), -1);
	assert_int_equal(log_facility_from_name("mail"), LOG_MAIL);
	assert_int_equal(log_facility_from_name("local7"), LOG_LOCAL7);
	assert_int_equal(log_facility_from_name("kern"), -1);
	assert_int_equal(log_level_from_name(NULL), -1);
}

/*
 * A stderr line names the process that wrote it: also in the child of a
 * fork (the daemon forks after it logged), though the parent's pid is
 * kept between lines.
 */
static void test_pid_after_fork(void **state)
{
	char path[] = "/tmp/test_log_pid_XXXXXX", text[1024] = "", want[64];
	int fd = mkstemp(path), saved = dup(STDERR_FILENO), status = 0;
	pid_t child;
	FILE *f;
	size_t n;

	(void)state;
	assert_true(fd >= 0 && saved >= 0);
	assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
	log_open("pidtest", LOG_TARGET_STDERR, LOG_MAIL, LOG_INFO);
	log_msg(LOG_INFO, "parent");
	child = fork();
	if (child == 0) {
		log_msg(LOG_INFO, "child");
		_exit(0);
	}
	assert_true(child > 0);
	assert_int_equal(waitpid(child, &status, 0), child);
	log_msg(LOG_INFO, "parent again");
	assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
	close(saved);
	close(fd);
	f = fopen(path, "r");
	assert_non_null(f);
	n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	unlink(path);
	snprintf(want, sizeof(want), "pidtest[%d]: info: child\n", (int)child);
	assert_non_null(strstr(text, want));
	snprintf(want, sizeof(want), "pidtest[%d]: info: parent again\n", (int)getpid());
	assert_non_null(strstr(text, want));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_log_safe),        cmocka_unit_test(test_log_safe_field),
	    cmocka_unit_test(test_ratelimit),       cmocka_unit_test(test_ratelimit_burst),
	    cmocka_unit_test(test_ratelimit_flush), cmocka_unit_test(test_names),
	    cmocka_unit_test(test_pid_after_fork),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
