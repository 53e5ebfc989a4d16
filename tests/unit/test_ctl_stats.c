/*
 * Unit tests for ctl/ctl_stats (spamtrapctl stats): entries by type, new
 * and hit per window, traps summed over the entries hit in the last 24
 * hours, the most-hit keys in order, and bounded memory: beyond the trap
 * table's room, hits go to "(other traps)" and nothing is lost.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_stats.h"

#define NOW 1800000000

static store_entry entry(const char *key, int64_t first_ago, int64_t last_ago, uint64_t hits,
                         const char *trap)
{
	store_entry e;

	memset(&e, 0, sizeof(e));
	snprintf(e.key, sizeof(e.key), "%s", key);
	e.first_seen = NOW - first_ago;
	e.last_seen = NOW - last_ago;
	e.expires = NOW + 3600;
	e.hits = hits;
	snprintf(e.trap, sizeof(e.trap), "%s", trap);
	return e;
}

/* What ctl_stats_print writes, in a malloc'd string. */
static char *printed(const ctl_stats *s)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	ctl_stats_print(s, f);
	fclose(f);
	/* A copy: gcc -O2 takes a pointer into open_memstream's buffer for one into the local it wrote. */
	char *copy = strdup(buf);
	free(buf);
	assert_non_null(copy);
	return copy;
}

static void test_figures(void **state)
{
	ctl_stats *s = ctl_stats_new(NOW);
	const store_entry es[] = {
	    entry("spam@bad.test", 30, 10, 5, "trap@example.com"),
	    entry("192.0.2.7", 30, 10, 5, "trap@example.com"),
	    entry("@bad.test", 7200, 1800, 3, "other@example.com"),
	    entry("sasl:alice", 7200, 7200, 1, ""),
	    entry("old@bad.test", 200000, 100000, 50, "trap@example.com"), /* not hit in 24 h */
	    entry("manual@x.test", 10, 10, 0, ""),
	};

	(void)state;
	for (size_t i = 0; i < sizeof(es) / sizeof(es[0]); i++)
		assert_int_equal(ctl_stats_add(s, &es[i]), 0);
	char *text = printed(s);
	assert_non_null(strstr(text, "entries in force: 6\n"));
	assert_non_null(strstr(text, "  client_address   1\n"));
	assert_non_null(strstr(text, "  sender           3\n"));
	assert_non_null(strstr(text, "  sender_domain    1\n"));
	assert_non_null(strstr(text, "  sasl_username    1\n"));
	assert_non_null(strstr(text, "  minute                      3          3\n"));
	assert_non_null(strstr(text, "  hour                        3          4\n"));
	assert_non_null(strstr(text, "  24 hours                    5          5\n"));
	/* Traps: 10 for trap@ (the old entry is out), 3 for other@, in that order. */
	char *t1 = strstr(text, "          10  trap@example.com\n");
	char *t2 = strstr(text, "           3  other@example.com\n");
	assert_non_null(t1);
	assert_non_null(t2);
	assert_true(t1 < t2);
	/* Keys: by hits, the manual entry (no hits) and the old one left out. */
	char *k = strstr(text, "most-hit keys");
	assert_non_null(k);
	assert_non_null(
	    strstr(k, "           5  spam@bad.test\n           5  192.0.2.7\n           3  @bad.test\n"
	              "           1  sasl:alice\n"));
	assert_null(strstr(k, "old@bad.test"));
	assert_null(strstr(k, "manual@x.test"));
	free(text);
	ctl_stats_free(s);
}

static void test_top_is_bounded(void **state)
{
	ctl_stats *s = ctl_stats_new(NOW);
	char key[64];

	(void)state;
	for (unsigned i = 1; i <= 100; i++) {
		snprintf(key, sizeof(key), "k%u@bad.test", i);
		store_entry e = entry(key, 10, 10, i, "trap@example.com");
		assert_int_equal(ctl_stats_add(s, &e), 0);
	}
	char *text = printed(s), *k = strstr(text, "most-hit keys");
	assert_non_null(strstr(k, "         100  k100@bad.test\n"));
	assert_non_null(strstr(k, "          91  k91@bad.test\n"));
	assert_null(strstr(k, "k90@bad.test"));
	assert_non_null(strstr(text, "        5050  trap@example.com\n"));
	free(text);
	ctl_stats_free(s);
}

static void test_many_traps(void **state)
{
	ctl_stats *s = ctl_stats_new(NOW);
	char trap[64];
	const unsigned n = CTL_STATS_MAX_TRAPS * 2;

	(void)state;
	for (unsigned i = 0; i < n; i++) {
		snprintf(trap, sizeof(trap), "t%u@example.com", i);
		store_entry e = entry("x@bad.test", 10, 10, 1, trap);
		assert_int_equal(ctl_stats_add(s, &e), 0);
	}
	char *text = printed(s);
	/* Three quarters of the table are told apart; the rest are summed, none lost. */
	char other[64];
	snprintf(other, sizeof(other), "  %10u  (other traps)\n", n - CTL_STATS_MAX_TRAPS * 3 / 4);
	assert_non_null(strstr(text, other));
	free(text);
	ctl_stats_free(s);
}

static void test_daemon_counters(void **state)
{
	static const char scrape[] = "# HELP a_total A.\n# TYPE a_total counter\n"
	                             "a_total{x=\"1\"} 0\n"
	                             "a_total{x=\"2\"} 7\n"
	                             "b_seconds_bucket{le=\"0.1\"} 3\n"
	                             "b_seconds_sum 0.5\n"
	                             "b_seconds_count 3\n"
	                             "c_info{version=\"0.2.0\"} 1\n"
	                             "d_total 10\n"
	                             "e_total 0";
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	(void)state;
	assert_non_null(f);
	ctl_stats_print_daemon(scrape, f);
	ctl_stats_print_daemon("# HELP z_total Z.\nz_total 0\n", f);
	fclose(f);
	assert_string_equal(buf, "\ndaemon counters since it started (all others are 0):\n"
	                         "  a_total{x=\"2\"} 7\n"
	                         "  b_seconds_sum 0.5\n"
	                         "  b_seconds_count 3\n"
	                         "  c_info{version=\"0.2.0\"} 1\n"
	                         "  d_total 10\n"
	                         "\ndaemon counters since it started (all others are 0):\n"
	                         "  none\n");
	free(buf);
}

/* GET /rates: totals, increases and rates per second; zero totals and unreadable lines left out. */
static void test_daemon_rates(void **state)
{
	static const char text[] = "# spamtrapd counter increases: NAME{LABELS} TOTAL MINUTE HOUR\n"
	                           "# window minute 60.0 hour 3600.0\n"
	                           "a_total{x=\"a b\"} 7200 120 3600\n"
	                           "b_seconds_count 5 0 5\n"
	                           "z_total 0 0 0\n"
	                           "garbage\n"
	                           "c_total 1 x 2\n";
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	(void)state;
	assert_non_null(f);
	assert_true(ctl_stats_print_rates(text, f));
	assert_false(ctl_stats_print_rates("a_total 1\n", f)); /* not a /rates answer: prints nothing */
	assert_true(ctl_stats_print_rates("# window minute 12.0 hour 12.0\n", f));
	fclose(f);
	assert_string_equal(
	    buf, "\ndaemon counters: total since it started, and the increase and rate per second over\n"
	         "the last minute (60 s) and the last hour (3600 s); all others are 0:\n"
	         "         total     minute        /s       hour        /s  counter\n"
	         "          7200        120         2       3600         1  a_total{x=\"a b\"}\n"
	         "             5          0         0          5   0.00139  b_seconds_count\n"
	         "\ndaemon counters: total since it started, and the increase and rate per second over\n"
	         "the last minute (12 s) and the last hour (12 s, since it started); all others are 0:\n"
	         "         total     minute        /s       hour        /s  counter\n"
	         "  none\n");
	free(buf);
}

/*
 * What spamtrapctl prints comes from the store (keys and traps written by
 * strangers) and from whatever answers on metrics.listen (another
 * process may hold that port while spamtrapd is down): no terminal
 * control sequence may reach the admin's terminal.
 */
static void test_terminal_safe(void **state)
{
	static const char hostile[] = "a_total{x=\"\x1b]0;owned\x07\"} 1\n"
	                              "\x9b"
	                              "31mb_total 2\r\n";
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	ctl_stats *s = ctl_stats_new(NOW);

	(void)state;
	assert_non_null(f);
	assert_non_null(s);
	store_entry e = entry("\x1b[2Jx@example.com", 60, 10, 3, "trap\x1b]0;t\x07@example.com");
	ctl_stats_add(s, &e);
	ctl_stats_print(s, f);
	ctl_stats_print_daemon(hostile, f);
	assert_true(ctl_stats_print_rates("# window minute 60.0 hour 60.0\n"
	                                  "r_total{x=\"\x1b]0;owned\x07\"} 1 1 1\n",
	                                  f));
	fclose(f);
	for (size_t i = 0; i < len; i++)
		if (buf[i] != '\n')
			assert_true((unsigned char)buf[i] >= 0x20 && (unsigned char)buf[i] < 0x7f);
	assert_non_null(strstr(buf, "  a_total{x=\"?]0;owned?\"} 1\n"));
	assert_non_null(strstr(buf, "  r_total{x=\"?]0;owned?\"}\n"));
	free(buf);
	ctl_stats_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_figures),       cmocka_unit_test(test_top_is_bounded),
	    cmocka_unit_test(test_many_traps),    cmocka_unit_test(test_daemon_counters),
	    cmocka_unit_test(test_terminal_safe), cmocka_unit_test(test_daemon_rates),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
