/*
 * Unit tests for metrics: the exposition text byte for byte (HELP/TYPE,
 * label order, escaping, histogram buckets cumulative with +Inf, _sum and
 * _count), invalid families refused, out-of-range series ignored, and
 * counting from several threads at once losing nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "unit_table.h"

static char err[256];

static void assert_render(const metrics *m, const char *want)
{
	size_t len = 0;
	char *text = metrics_render(m, &len);
	assert_non_null(text);
	assert_string_equal(text, want);
	assert_int_equal(len, strlen(want));
	free(text);
}

static void test_counter_with_labels(void **state)
{
	static const char *const checks[] = {"traps", "blocklist"};
	static const char *const modes[] = {"enforce", "shadow"};
	const metrics_label labels[] = {{"check", checks, 2}, {"mode", modes, 2}};
	metrics *m = metrics_new();
	metrics_family *f = metrics_family_new(m, METRICS_COUNTER, "x_decisions_total", "Decisions.", labels,
	                                       2, NULL, 0, err, sizeof(err));

	(void)state;
	assert_non_null(f);
	metrics_add(f, metrics_series(f, (size_t[]){1, 0}), 3);
	metrics_add(f, metrics_series(f, (size_t[]){0, 1}), 1);
	assert_int_equal(metrics_value(f, metrics_series(f, (size_t[]){1, 0})), 3);
	assert_render(m, "# HELP x_decisions_total Decisions.\n"
	                 "# TYPE x_decisions_total counter\n"
	                 "x_decisions_total{check=\"traps\",mode=\"enforce\"} 0\n"
	                 "x_decisions_total{check=\"traps\",mode=\"shadow\"} 1\n"
	                 "x_decisions_total{check=\"blocklist\",mode=\"enforce\"} 3\n"
	                 "x_decisions_total{check=\"blocklist\",mode=\"shadow\"} 0\n");
	metrics_free(m);
}

static void test_escaping(void **state)
{
	static const char *const values[] = {"a\"b\\c\nd"};
	const metrics_label label = {"v", values, 1};
	metrics *m = metrics_new();

	(void)state;
	assert_non_null(metrics_family_new(m, METRICS_GAUGE, "x_info", "Back\\slash\nand \"quotes\".", &label,
	                                   1, NULL, 0, err, sizeof(err)));
	assert_render(m, "# HELP x_info Back\\\\slash\\nand \"quotes\".\n"
	                 "# TYPE x_info gauge\n"
	                 "x_info{v=\"a\\\"b\\\\c\\nd\"} 0\n");
	metrics_free(m);
}

static void test_gauge_without_labels(void **state)
{
	metrics *m = metrics_new();
	metrics_family *g =
	    metrics_family_new(m, METRICS_GAUGE, "x_entries", "Entries.", NULL, 0, NULL, 0, err, sizeof(err));

	(void)state;
	metrics_set(g, 0, -5);
	assert_render(m, "# HELP x_entries Entries.\n# TYPE x_entries gauge\nx_entries -5\n");
	metrics_set(g, metrics_series(g, NULL), 7);
	assert_int_equal(metrics_value(g, 0), 7);
	metrics_free(m);
}

static void test_histogram(void **state)
{
	static const double buckets[] = {0.001, 0.01, 0.5};
	static const char *const ops[] = {"lookup"};
	const metrics_label label = {"operation", ops, 1};
	metrics *m = metrics_new();
	metrics_family *h = metrics_family_new(m, METRICS_HISTOGRAM, "x_seconds", "Latency.", &label, 1,
	                                       buckets, 3, err, sizeof(err));

	(void)state;
	assert_non_null(h);
	metrics_observe(h, 0, 0.001); /* a bound is inclusive (le) */
	metrics_observe(h, 0, 0.25);
	metrics_observe(h, 0, 2);
	assert_render(m, "# HELP x_seconds Latency.\n"
	                 "# TYPE x_seconds histogram\n"
	                 "x_seconds_bucket{operation=\"lookup\",le=\"0.001\"} 1\n"
	                 "x_seconds_bucket{operation=\"lookup\",le=\"0.01\"} 1\n"
	                 "x_seconds_bucket{operation=\"lookup\",le=\"0.5\"} 2\n"
	                 "x_seconds_bucket{operation=\"lookup\",le=\"+Inf\"} 3\n"
	                 "x_seconds_sum{operation=\"lookup\"} 2.251\n"
	                 "x_seconds_count{operation=\"lookup\"} 3\n");
	metrics_free(m);
}

struct bad_case {
	const char *name;
	metrics_type type;
	const char *metric, *label;
	size_t nvalues;
	double buckets[3];
	size_t nbuckets;
};

static struct bad_case bad_cases[] = {
    {"counter without _total", METRICS_COUNTER, "x_hits", "a", 1, {0}, 0},
    {"metric name with a dash", METRICS_GAUGE, "x-hits", "a", 1, {0}, 0},
    {"metric name starting with a digit", METRICS_GAUGE, "1x", "a", 1, {0}, 0},
    {"empty metric name", METRICS_GAUGE, "", "a", 1, {0}, 0},
    {"label with a colon", METRICS_GAUGE, "x", "a:b", 1, {0}, 0},
    {"reserved label", METRICS_GAUGE, "x", "__name", 1, {0}, 0},
    {"label without values", METRICS_GAUGE, "x", "a", 0, {0}, 0},
    {"too many series", METRICS_GAUGE, "x", "a", METRICS_MAX_SERIES + 1, {0}, 0},
    {"histogram label le", METRICS_HISTOGRAM, "x", "le", 1, {1}, 1},
    {"histogram without buckets", METRICS_HISTOGRAM, "x", "a", 1, {0}, 0},
    {"buckets not increasing", METRICS_HISTOGRAM, "x", "a", 1, {1, 1}, 2},
};

static void test_bad_case(void **state)
{
	const struct bad_case *c = *state;
	const char **values = calloc(c->nvalues + 1, sizeof(char *));
	for (size_t i = 0; i < c->nvalues; i++)
		values[i] = "v";
	const metrics_label label = {c->label, values, c->nvalues};
	metrics *m = metrics_new();

	err[0] = '\0';
	assert_null(metrics_family_new(m, c->type, c->metric, "h", &label, 1, c->buckets, c->nbuckets, err,
	                               sizeof(err)));
	assert_true(err[0] != '\0');
	assert_render(m, "");
	metrics_free(m);
	free(values);
}

static void test_out_of_range_ignored(void **state)
{
	static const char *const two[] = {"a", "b"};
	const metrics_label label = {"l", two, 2};
	metrics *m = metrics_new();
	metrics_family *f =
	    metrics_family_new(m, METRICS_COUNTER, "x_total", "X.", &label, 1, NULL, 0, err, sizeof(err));

	(void)state;
	assert_int_equal(metrics_series(f, (size_t[]){2}), METRICS_NO_SERIES);
	metrics_add(f, METRICS_NO_SERIES, 1);
	metrics_add(f, 2, 1);
	metrics_add(NULL, 0, 1);
	metrics_set(f, 0, 5);       /* not a gauge: ignored */
	metrics_observe(f, 0, 1.0); /* not a histogram: ignored */
	assert_render(m,
	              "# HELP x_total X.\n# TYPE x_total counter\nx_total{l=\"a\"} 0\nx_total{l=\"b\"} 0\n");
	metrics_free(m);
}

#define THREADS 4
#define PER_THREAD 100000

static void *count_many(void *arg)
{
	metrics_family *f = arg;
	for (int i = 0; i < PER_THREAD; i++)
		metrics_add(f, 0, 1);
	return NULL;
}

static void test_threads_lose_nothing(void **state)
{
	metrics *m = metrics_new();
	metrics_family *f =
	    metrics_family_new(m, METRICS_COUNTER, "x_total", "X.", NULL, 0, NULL, 0, err, sizeof(err));
	pthread_t t[THREADS];

	(void)state;
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, count_many, f), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(metrics_value(f, 0), THREADS * PER_THREAD);
	metrics_free(m);
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_counter_with_labels),  cmocka_unit_test(test_escaping),
	    cmocka_unit_test(test_gauge_without_labels), cmocka_unit_test(test_histogram),
	    cmocka_unit_test(test_out_of_range_ignored), cmocka_unit_test(test_threads_lose_nothing),
	};

	RUN_TABLE("bad families", bad_cases, test_bad_case, failed);
	failed += cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
	return failed ? 1 : 0;
}
