/*
 * Unit tests for rates: the increases over the minute and the hour on a
 * clock the test drives (a count before the window is left out, the
 * window's length is said, a young daemon's window is its age), the
 * rings' bound (a day of ticks), histograms as their _count, zero counts
 * left out, and metrics_counts / metrics_render_counts themselves.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "rates.h"

static char err[256];

typedef struct fixture {
	metrics *m;
	metrics_family *hits, *idle, *gauge, *hist;
} fixture;

static void make(fixture *fx)
{
	static const char *const modes[] = {"enforce", "shadow"};
	const metrics_label mode[] = {{"mode", modes, 2}};
	const double buckets[] = {0.1, 1};

	fx->m = metrics_new();
	assert_non_null(fx->hits = metrics_family_new(fx->m, METRICS_COUNTER, "x_hits_total", "Hits.", mode,
	                                              1, NULL, 0, err, sizeof(err)));
	assert_non_null(fx->idle = metrics_family_new(fx->m, METRICS_COUNTER, "x_idle_total", "Never.", NULL,
	                                              0, NULL, 0, err, sizeof(err)));
	assert_non_null(fx->gauge = metrics_family_new(fx->m, METRICS_GAUGE, "x_entries", "A gauge.", NULL, 0,
	                                               NULL, 0, err, sizeof(err)));
	assert_non_null(fx->hist = metrics_family_new(fx->m, METRICS_HISTOGRAM, "x_seconds", "Time.", NULL, 0,
	                                              buckets, 2, err, sizeof(err)));
}

/* The text at now, checked against a header and lines given whole. */
static void assert_rates(rates *r, int64_t now_ms, const char *want)
{
	size_t len = 0;
	char *text = rates_render(r, now_ms, &len);

	assert_non_null(text);
	assert_string_equal(text, want);
	assert_int_equal(len, strlen(want));
	free(text);
}

#define HEAD "# spamtrapd counter increases: NAME{LABELS} TOTAL MINUTE HOUR\n"

static void test_counts_and_render_counts(void **state)
{
	fixture fx;
	uint64_t v[4], twice[4];
	size_t len;

	(void)state;
	make(&fx);
	assert_int_equal(metrics_ncounts(fx.m), 4); /* 2 + 1 counters, 1 histogram; no gauge */
	metrics_add(fx.hits, 1, 5);
	metrics_set(fx.gauge, 0, 99);
	metrics_observe(fx.hist, 0, 0.5);
	metrics_observe(fx.hist, 0, 7);
	metrics_counts(fx.m, v);
	assert_int_equal(v[0], 0);
	assert_int_equal(v[1], 5);
	assert_int_equal(v[2], 0);
	assert_int_equal(v[3], 2);
	for (int i = 0; i < 4; i++)
		twice[i] = 2 * v[i];
	const uint64_t *cols[] = {v, twice};
	char *text = metrics_render_counts(fx.m, cols, 2, true, &len);
	assert_string_equal(text, "x_hits_total{mode=\"shadow\"} 5 10\nx_seconds_count 2 4\n");
	free(text);
	text = metrics_render_counts(fx.m, cols, 1, false, &len);
	assert_string_equal(text, "x_hits_total{mode=\"enforce\"} 0\nx_hits_total{mode=\"shadow\"} 5\n"
	                          "x_idle_total 0\nx_seconds_count 2\n");
	free(text);
	metrics_free(fx.m);
}

static void test_windows(void **state)
{
	fixture fx;
	const int64_t t0 = 1000000; /* any monotonic origin */

	(void)state;
	make(&fx);
	metrics_add(fx.hits, 0, 3); /* before the first snapshot: in the total only */
	rates *r = rates_new(fx.m, t0);
	assert_non_null(r);
	assert_rates(r, t0 + 5000,
	             HEAD "# window minute 5.0 hour 5.0\nx_hits_total{mode=\"enforce\"} 3 0 0\n");
	metrics_add(fx.hits, 0, 100);
	for (int64_t t = t0; t <= t0 + 120000; t += 1000) { /* ticks more often than due: no harm */
		rates_tick(r, t);
		if (t == t0 + 115000)
			metrics_add(fx.hits, 0, 7);
	}
	/* The minute: from the snapshot at t0 + 60 s (after the 100, before the 7). */
	assert_rates(r, t0 + 121000,
	             HEAD "# window minute 61.0 hour 121.0\nx_hits_total{mode=\"enforce\"} 110 7 107\n");
	metrics_observe(fx.hist, 0, 0.01);
	assert_rates(r, t0 + 121000,
	             HEAD "# window minute 61.0 hour 121.0\nx_hits_total{mode=\"enforce\"} 110 7 107\n"
	                  "x_seconds_count 1 1 1\n");
	rates_free(r);
	metrics_free(fx.m);
}

/* A day of ticks every second: the hour window stays an hour (plus a step), memory stays as made. */
static void test_a_day_stays_bounded(void **state)
{
	fixture fx;
	const int64_t t0 = 0;
	int64_t t;

	(void)state;
	make(&fx);
	rates *r = rates_new(fx.m, t0);
	for (t = t0; t <= t0 + 86400000; t += 1000) {
		rates_tick(r, t);
		metrics_add(fx.hits, 1, 1); /* one a second */
	}
	assert_true(rates_next_ms(r) > t - 1000);
	assert_true(rates_next_ms(r) <= t - 1000 + RATES_MINUTE_STEP_MS);
	/* Ticked at t - 1000 last; a minute back is the snapshot at t - 61 s, an hour back at t - 3601 s. */
	char want[512];
	snprintf(want, sizeof(want),
	         HEAD "# window minute 61.0 hour 3601.0\nx_hits_total{mode=\"shadow\"} 86401 61 3601\n");
	assert_rates(r, t, want);
	rates_free(r);
	metrics_free(fx.m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_counts_and_render_counts),
	    cmocka_unit_test(test_windows),
	    cmocka_unit_test(test_a_day_stays_bounded),
	};

	return cmocka_run_group_tests_name("rates", tests, NULL, NULL) ? 1 : 0;
}
