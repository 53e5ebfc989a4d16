/*
 * metrics: a registry of Prometheus families and their renderer to the
 * text exposition format 0.0.4 (prometheus.io/docs/instrumenting/
 * exposition_formats). Every family's label sets are fixed when it is
 * made: a label takes its values from a list given then, and a series is
 * an index into the cross product, so that counting is one relaxed
 * atomic add with no lookup, no lock and no allocation, and no value
 * from the network (a sender, an address, an account) can ever become a
 * label.
 *
 * Families are made at start-up, before any thread counts or renders;
 * after that the registry's shape never changes. Counting and rendering
 * may then run on any threads at once (a scrape sees each number at some
 * moment of its own; a histogram's count may be ahead of its buckets).
 */
#ifndef SPAMTRAPD_METRICS_H
#define SPAMTRAPD_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct metrics metrics;
typedef struct metrics_family metrics_family;

typedef enum { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM } metrics_type;

/* A label and every value it may take. */
typedef struct metrics_label {
	const char *name;
	const char *const *values;
	size_t nvalues;
} metrics_label;

#define METRICS_MAX_LABELS 4
#define METRICS_MAX_BUCKETS 32
#define METRICS_MAX_SERIES 4096

metrics *metrics_new(void);
void metrics_free(metrics *m); /* accepts NULL; frees its families */

/*
 * A new family, owned by m; NULL + err when a name is not a valid metric
 * or label name, a counter's name does not end in "_total", the label
 * set is too large, or the buckets (histograms only: upper bounds,
 * strictly increasing, +Inf implied) are not. Strings are copied.
 */
metrics_family *metrics_family_new(metrics *m, metrics_type type, const char *name, const char *help,
                                   const metrics_label *labels, size_t nlabels, const double *buckets,
                                   size_t nbuckets, char *err, size_t errlen);

/*
 * The series of label value indexes idx[0..nlabels) (in the order the
 * labels were given). An index out of range gives METRICS_NO_SERIES, which
 * the functions below ignore, as they ignore a NULL family.
 */
#define METRICS_NO_SERIES ((size_t)-1)
size_t metrics_series(const metrics_family *f, const size_t *idx);

void metrics_add(metrics_family *f, size_t series, uint64_t n);       /* counters */
void metrics_set(metrics_family *f, size_t series, int64_t value);    /* gauges */
void metrics_observe(metrics_family *f, size_t series, double value); /* histograms */

/* A counter's or gauge's value now (tests, spamtrapctl). */
int64_t metrics_value(const metrics_family *f, size_t series);

/*
 * The counts of a registry, for rates over time (rates.h): one per series
 * of a counter and one per series of a histogram (its _count), in the
 * order they render. metrics_counts writes their values now into values
 * (metrics_ncounts long).
 */
size_t metrics_ncounts(const metrics *m);
void metrics_counts(const metrics *m, uint64_t *values);

/*
 * One line per count: "NAME{LABELS}" (a histogram's NAME_count), then
 * cols[0][i] ... cols[ncols - 1][i], space-separated; the counts whose
 * first column is 0 are left out when skip_zero. malloc'd,
 * NUL-terminated, its length in *len; NULL when out of memory.
 */
char *metrics_render_counts(const metrics *m, const uint64_t *const *cols, size_t ncols, bool skip_zero,
                            size_t *len);

/*
 * The exposition text of every family, in the order they were made:
 * malloc'd, NUL-terminated, its length in *len; NULL when out of memory.
 */
char *metrics_render(const metrics *m, size_t *len);

#endif
