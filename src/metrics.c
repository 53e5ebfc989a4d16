/*
 * metrics: families with fixed label sets, relaxed atomic counters, and
 * the text exposition format 0.0.4 (see metrics.h). Errors: the
 * constructors write a message into the caller's buffer; counting never
 * fails; rendering fails only when out of memory.
 */
#include "metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct metrics_family {
	metrics_family *next;
	metrics_type type;
	char *name, *help;
	size_t nlabels;
	metrics_label labels[METRICS_MAX_LABELS]; /* names and values copied into strings */
	char **strings;
	size_t nstrings;
	size_t nseries;
	double buckets[METRICS_MAX_BUCKETS];
	size_t nbuckets;
	/* Counters and gauges: one cell a series. Histograms: nbuckets + 1 (+Inf) counts, then the sum's
	 * bits. */
	size_t cells_per_series;
	_Atomic uint64_t *cells;
};

struct metrics {
	metrics_family *first, *last;
};

metrics *metrics_new(void)
{
	return calloc(1, sizeof(metrics));
}

static void family_free(metrics_family *f)
{
	for (size_t i = 0; i < f->nstrings; i++)
		free(f->strings[i]);
	free(f->strings);
	for (size_t i = 0; i < f->nlabels; i++)
		free((void *)f->labels[i].values);
	free(f->cells);
	free(f);
}

void metrics_free(metrics *m)
{
	if (!m)
		return;
	for (metrics_family *f = m->first, *next; f; f = next) {
		next = f->next;
		family_free(f);
	}
	free(m);
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* for metrics, the same without ':' for labels (and no "__" prefix). */
static bool valid_name(const char *s, bool label)
{
	if (!s || !*s || (label && strncmp(s, "__", 2) == 0))
		return false;
	for (size_t i = 0; s[i]; i++) {
		char c = s[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
		          (!label && c == ':') || (i > 0 && c >= '0' && c <= '9');
		if (!ok)
			return false;
	}
	return true;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && strcmp(s + n - k, suffix) == 0;
}

static char *keep(metrics_family *f, const char *s)
{
	char *copy = strdup(s ? s : "");
	if (copy)
		f->strings[f->nstrings++] = copy;
	return copy;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

static int check_shape(metrics_type type, const char *name, const metrics_label *labels, size_t nlabels,
                       const double *buckets, size_t nbuckets, size_t *nseries, char *err, size_t errlen)
{
	if (!valid_name(name, false))
		return fail(err, errlen, "invalid metric name \"%s\"", name ? name : "");
	if (type == METRICS_COUNTER && !ends_with(name, "_total"))
		return fail(err, errlen, "%s: a counter's name ends in _total", name);
	if (nlabels > METRICS_MAX_LABELS)
		return fail(err, errlen, "%s: more than %d labels", name, METRICS_MAX_LABELS);
	*nseries = 1;
	for (size_t i = 0; i < nlabels; i++) {
		if (!valid_name(labels[i].name, true) ||
		    (type == METRICS_HISTOGRAM && strcmp(labels[i].name, "le") == 0))
			return fail(err, errlen, "%s: invalid label name \"%s\"", name,
			            labels[i].name ? labels[i].name : "");
		if (labels[i].nvalues == 0 || *nseries > METRICS_MAX_SERIES / labels[i].nvalues)
			return fail(err, errlen, "%s: label %s gives no series or too many", name,
			            labels[i].name);
		*nseries *= labels[i].nvalues;
	}
	if (type != METRICS_HISTOGRAM)
		return 0;
	if (nbuckets == 0 || nbuckets > METRICS_MAX_BUCKETS)
		return fail(err, errlen, "%s: 1 to %d buckets", name, METRICS_MAX_BUCKETS);
	for (size_t i = 0; i < nbuckets; i++)
		if (!isfinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1]))
			return fail(err, errlen, "%s: buckets must be finite and increasing", name);
	return 0;
}

static int copy_labels(metrics_family *f, const metrics_label *labels, size_t nlabels)
{
	for (size_t i = 0; i < nlabels; i++) {
		const char **values = calloc(labels[i].nvalues, sizeof(*values));
		if (!values)
			return -1;
		f->labels[i] = (metrics_label){.values = values, .nvalues = labels[i].nvalues};
		f->nlabels = i + 1;
		if (!(f->labels[i].name = keep(f, labels[i].name)))
			return -1;
		for (size_t j = 0; j < labels[i].nvalues; j++)
			if (!(values[j] = keep(f, labels[i].values[j])))
				return -1;
	}
	return 0;
}

metrics_family *metrics_family_new(metrics *m, metrics_type type, const char *name, const char *help,
                                   const metrics_label *labels, size_t nlabels, const double *buckets,
                                   size_t nbuckets, char *err, size_t errlen)
{
	size_t nseries = 0, nstrings = 2;
	if (check_shape(type, name, labels, nlabels, buckets, nbuckets, &nseries, err, errlen) < 0)
		return NULL;
	for (size_t i = 0; i < nlabels; i++)
		nstrings += 1 + labels[i].nvalues;
	metrics_family *f = calloc(1, sizeof(*f));
	if (!f || !(f->strings = calloc(nstrings, sizeof(char *))))
		goto oom;
	f->type = type;
	f->nseries = nseries;
	f->nbuckets = type == METRICS_HISTOGRAM ? nbuckets : 0;
	if (f->nbuckets)
		memcpy(f->buckets, buckets, nbuckets * sizeof(double));
	f->cells_per_series = type == METRICS_HISTOGRAM ? nbuckets + 2 : 1;
	if (!(f->name = keep(f, name)) || !(f->help = keep(f, help)) || copy_labels(f, labels, nlabels) < 0 ||
	    !(f->cells = calloc(nseries * f->cells_per_series, sizeof(*f->cells))))
		goto oom;
	if (m->last)
		m->last->next = f;
	else
		m->first = f;
	m->last = f;
	return f;
oom:
	if (f)
		family_free(f);
	fail(err, errlen, "out of memory");
	return NULL;
}

size_t metrics_series(const metrics_family *f, const size_t *idx)
{
	size_t s = 0;
	if (!f)
		return METRICS_NO_SERIES;
	for (size_t i = 0; i < f->nlabels; i++) {
		if (idx[i] >= f->labels[i].nvalues)
			return METRICS_NO_SERIES;
		s = s * f->labels[i].nvalues + idx[i];
	}
	return s;
}

static _Atomic uint64_t *cell(const metrics_family *f, metrics_type type, size_t series)
{
	if (!f || f->type != type || series >= f->nseries)
		return NULL;
	return &f->cells[series * f->cells_per_series];
}

void metrics_add(metrics_family *f, size_t series, uint64_t n)
{
	_Atomic uint64_t *c = cell(f, METRICS_COUNTER, series);
	if (c)
		atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

void metrics_set(metrics_family *f, size_t series, int64_t value)
{
	_Atomic uint64_t *c = cell(f, METRICS_GAUGE, series);
	if (c)
		atomic_store_explicit(c, (uint64_t)value, memory_order_relaxed);
}

static uint64_t double_bits(double d)
{
	uint64_t u;
	memcpy(&u, &d, sizeof(u));
	return u;
}

static double bits_double(uint64_t u)
{
	double d;
	memcpy(&d, &u, sizeof(d));
	return d;
}

/* Counts per bucket (not cumulative: the renderer sums them), the +Inf one last, then the sum. */
void metrics_observe(metrics_family *f, size_t series, double value)
{
	_Atomic uint64_t *c = cell(f, METRICS_HISTOGRAM, series);
	size_t b = 0;
	if (!c || isnan(value))
		return;
	while (b < f->nbuckets && value > f->buckets[b])
		b++;
	atomic_fetch_add_explicit(&c[b], 1, memory_order_relaxed);
	_Atomic uint64_t *sum = &c[f->nbuckets + 1];
	uint64_t old = atomic_load_explicit(sum, memory_order_relaxed);
	while (!atomic_compare_exchange_weak_explicit(sum, &old, double_bits(bits_double(old) + value),
	                                              memory_order_relaxed, memory_order_relaxed))
		;
}

int64_t metrics_value(const metrics_family *f, size_t series)
{
	if (!f || f->type == METRICS_HISTOGRAM || series >= f->nseries)
		return 0;
	return (int64_t)atomic_load_explicit(&f->cells[series], memory_order_relaxed);
}

/* The renderer's output: grows by doubling; a failed allocation sticks (failed) and is reported at the end.
 */
typedef struct out {
	char *buf;
	size_t len, cap;
	bool failed;
} out;

static void out_reserve(out *o, size_t more)
{
	if (o->failed || o->len + more + 1 <= o->cap)
		return;
	size_t cap = o->cap ? o->cap : 4096;
	while (cap < o->len + more + 1)
		cap *= 2;
	char *b = realloc(o->buf, cap);
	if (!b) {
		o->failed = true;
		return;
	}
	o->buf = b;
	o->cap = cap;
}

static void out_mem(out *o, const char *s, size_t n)
{
	out_reserve(o, n);
	if (o->failed)
		return;
	memcpy(o->buf + o->len, s, n);
	o->len += n;
	o->buf[o->len] = '\0';
}

static void out_str(out *o, const char *s)
{
	out_mem(o, s, strlen(s));
}

/* HELP text escapes backslash and newline; label values also the double quote. */
static void out_escaped(out *o, const char *s, bool quote)
{
	for (; *s; s++) {
		if (*s == '\\')
			out_str(o, "\\\\");
		else if (*s == '\n')
			out_str(o, "\\n");
		else if (quote && *s == '"')
			out_str(o, "\\\"");
		else
			out_mem(o, s, 1);
	}
}

/* The shortest of %.15g and %.17g that reads back the same; Go's ParseFloat spellings of infinities. */
static void out_double(out *o, double d)
{
	char b[40];
	if (isinf(d)) {
		out_str(o, d > 0 ? "+Inf" : "-Inf");
		return;
	}
	snprintf(b, sizeof(b), "%.15g", d);
	if (strtod(b, NULL) != d)
		snprintf(b, sizeof(b), "%.17g", d);
	out_str(o, b);
}

static void out_u64(out *o, uint64_t v)
{
	char b[24];
	snprintf(b, sizeof(b), "%llu", (unsigned long long)v);
	out_str(o, b);
}

/* name{a="x",b="y"[,le="..."]} for series s. */
static void out_series_name(out *o, const metrics_family *f, const char *suffix, size_t s, const char *le)
{
	size_t idx[METRICS_MAX_LABELS];
	out_str(o, f->name);
	out_str(o, suffix);
	if (f->nlabels == 0 && !le)
		return;
	for (size_t i = f->nlabels; i-- > 0;) {
		idx[i] = s % f->labels[i].nvalues;
		s /= f->labels[i].nvalues;
	}
	out_str(o, "{");
	for (size_t i = 0; i < f->nlabels; i++) {
		out_str(o, i ? "," : "");
		out_str(o, f->labels[i].name);
		out_str(o, "=\"");
		out_escaped(o, f->labels[i].values[idx[i]], true);
		out_str(o, "\"");
	}
	if (le) {
		out_str(o, f->nlabels ? ",le=\"" : "le=\"");
		out_str(o, le);
		out_str(o, "\"");
	}
	out_str(o, "}");
}

static void render_histogram_series(out *o, const metrics_family *f, size_t s)
{
	const _Atomic uint64_t *c = &f->cells[s * f->cells_per_series];
	uint64_t cumulative = 0;
	char le[40];
	for (size_t b = 0; b <= f->nbuckets; b++) {
		cumulative += atomic_load_explicit(&c[b], memory_order_relaxed);
		if (b < f->nbuckets) {
			out tmp = {0};
			out_double(&tmp, f->buckets[b]);
			snprintf(le, sizeof(le), "%s", tmp.buf ? tmp.buf : "0");
			free(tmp.buf);
		}
		out_series_name(o, f, "_bucket", s, b < f->nbuckets ? le : "+Inf");
		out_str(o, " ");
		out_u64(o, cumulative);
		out_str(o, "\n");
	}
	out_series_name(o, f, "_sum", s, NULL);
	out_str(o, " ");
	out_double(o, bits_double(atomic_load_explicit(&c[f->nbuckets + 1], memory_order_relaxed)));
	out_str(o, "\n");
	out_series_name(o, f, "_count", s, NULL);
	out_str(o, " ");
	out_u64(o, cumulative);
	out_str(o, "\n");
}

static const char *const type_names[] = {"counter", "gauge", "histogram"};

static void render_family(out *o, const metrics_family *f)
{
	out_str(o, "# HELP ");
	out_str(o, f->name);
	out_str(o, " ");
	out_escaped(o, f->help, false);
	out_str(o, "\n# TYPE ");
	out_str(o, f->name);
	out_str(o, " ");
	out_str(o, type_names[f->type]);
	out_str(o, "\n");
	for (size_t s = 0; s < f->nseries; s++) {
		if (f->type == METRICS_HISTOGRAM) {
			render_histogram_series(o, f, s);
			continue;
		}
		uint64_t v = atomic_load_explicit(&f->cells[s], memory_order_relaxed);
		char b[24];
		out_series_name(o, f, "", s, NULL);
		if (f->type == METRICS_GAUGE)
			snprintf(b, sizeof(b), " %lld\n", (long long)(int64_t)v);
		else
			snprintf(b, sizeof(b), " %llu\n", (unsigned long long)v);
		out_str(o, b);
	}
}

char *metrics_render(const metrics *m, size_t *len)
{
	out o = {0};
	out_reserve(&o, 0);
	if (o.buf)
		o.buf[0] = '\0';
	for (const metrics_family *f = m->first; f; f = f->next)
		render_family(&o, f);
	if (o.failed) {
		free(o.buf);
		return NULL;
	}
	*len = o.len;
	return o.buf;
}

/* A series' count: a counter's value, a histogram's observations (its buckets' sum). */
static uint64_t series_count(const metrics_family *f, size_t s)
{
	const _Atomic uint64_t *c = &f->cells[s * f->cells_per_series];
	uint64_t n = 0;

	if (f->type != METRICS_HISTOGRAM)
		return atomic_load_explicit(c, memory_order_relaxed);
	for (size_t b = 0; b <= f->nbuckets; b++)
		n += atomic_load_explicit(&c[b], memory_order_relaxed);
	return n;
}

size_t metrics_ncounts(const metrics *m)
{
	size_t n = 0;

	for (const metrics_family *f = m->first; f; f = f->next)
		if (f->type != METRICS_GAUGE)
			n += f->nseries;
	return n;
}

void metrics_counts(const metrics *m, uint64_t *values)
{
	size_t i = 0;

	for (const metrics_family *f = m->first; f; f = f->next)
		for (size_t s = 0; f->type != METRICS_GAUGE && s < f->nseries; s++)
			values[i++] = series_count(f, s);
}

char *metrics_render_counts(const metrics *m, const uint64_t *const *cols, size_t ncols, bool skip_zero,
                            size_t *len)
{
	out o = {0};
	size_t i = 0;

	out_reserve(&o, 0);
	if (o.buf)
		o.buf[0] = '\0';
	for (const metrics_family *f = m->first; f; f = f->next) {
		for (size_t s = 0; f->type != METRICS_GAUGE && s < f->nseries; s++, i++) {
			if (skip_zero && ncols > 0 && cols[0][i] == 0)
				continue;
			out_series_name(&o, f, f->type == METRICS_HISTOGRAM ? "_count" : "", s, NULL);
			for (size_t c = 0; c < ncols; c++) {
				out_str(&o, " ");
				out_u64(&o, cols[c][i]);
			}
			out_str(&o, "\n");
		}
	}
	if (o.failed) {
		free(o.buf);
		return NULL;
	}
	*len = o.len;
	return o.buf;
}
