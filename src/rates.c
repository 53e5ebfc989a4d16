/*
 * rates: two rings of snapshots (see rates.h). A window's increase is the
 * count now minus the count in the newest snapshot at least the window's
 * length old (or the oldest there is, while the daemon is younger).
 */
#include "rates.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { W_MINUTE, W_HOUR, NWINDOWS };

typedef struct ring {
	int64_t step_ms, window_ms;
	size_t cap, n, newest; /* slots, filled, index of the newest */
	int64_t *t_ms;         /* cap */
	uint64_t *values;      /* cap * ncounts */
} ring;

struct rates {
	const metrics *m;
	size_t ncounts;
	ring rings[NWINDOWS];
	uint64_t *now, *inc[NWINDOWS]; /* ncounts each: the render's columns */
};

static int ring_init(ring *g, int64_t window_ms, int64_t step_ms, size_t ncounts)
{
	/* window / step + 2: the newest snapshot is up to a step old, the one a window back one more. */
	g->step_ms = step_ms;
	g->window_ms = window_ms;
	g->cap = (size_t)(window_ms / step_ms) + 2;
	g->t_ms = calloc(g->cap, sizeof(*g->t_ms));
	g->values = calloc(g->cap * (ncounts ? ncounts : 1), sizeof(*g->values));
	return g->t_ms && g->values ? 0 : -1;
}

static void ring_push(ring *g, int64_t t_ms, const uint64_t *values, size_t ncounts)
{
	size_t at = g->n == 0 ? 0 : (g->newest + 1) % g->cap;

	g->t_ms[at] = t_ms;
	memcpy(&g->values[at * ncounts], values, ncounts * sizeof(*values));
	g->newest = at;
	if (g->n < g->cap)
		g->n++;
}

/* The newest snapshot taken at least window_ms before now_ms, else the oldest. */
static size_t ring_reference(const ring *g, int64_t now_ms)
{
	size_t at = g->newest;

	for (size_t k = 0; k < g->n; k++) {
		at = (g->newest + g->cap - k) % g->cap;
		if (g->t_ms[at] <= now_ms - g->window_ms)
			return at;
	}
	return at; /* the oldest */
}

rates *rates_new(const metrics *m, int64_t now_ms)
{
	static const int64_t window[NWINDOWS] = {RATES_MINUTE_MS, RATES_HOUR_MS};
	static const int64_t step[NWINDOWS] = {RATES_MINUTE_STEP_MS, RATES_HOUR_STEP_MS};
	rates *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->m = m;
	r->ncounts = metrics_ncounts(m);
	size_t cells = r->ncounts ? r->ncounts : 1;
	bool ok = (r->now = calloc(cells, sizeof(uint64_t))) != NULL;
	for (int w = 0; w < NWINDOWS; w++)
		ok = ok && (r->inc[w] = calloc(cells, sizeof(uint64_t))) != NULL &&
		     ring_init(&r->rings[w], window[w], step[w], r->ncounts) == 0;
	if (!ok) {
		rates_free(r);
		return NULL;
	}
	metrics_counts(m, r->now);
	for (int w = 0; w < NWINDOWS; w++)
		ring_push(&r->rings[w], now_ms, r->now, r->ncounts);
	return r;
}

void rates_free(rates *r)
{
	if (!r)
		return;
	for (int w = 0; w < NWINDOWS; w++) {
		free(r->rings[w].t_ms);
		free(r->rings[w].values);
		free(r->inc[w]);
	}
	free(r->now);
	free(r);
}

static bool due(const ring *g, int64_t now_ms)
{
	return now_ms - g->t_ms[g->newest] >= g->step_ms;
}

void rates_tick(rates *r, int64_t now_ms)
{
	bool read = false;

	for (int w = 0; w < NWINDOWS; w++) {
		if (!due(&r->rings[w], now_ms))
			continue;
		if (!read)
			metrics_counts(r->m, r->now);
		read = true;
		ring_push(&r->rings[w], now_ms, r->now, r->ncounts);
	}
}

int64_t rates_next_ms(const rates *r)
{
	int64_t next = INT64_MAX;

	for (int w = 0; w < NWINDOWS; w++) {
		const ring *g = &r->rings[w];
		if (g->t_ms[g->newest] + g->step_ms < next)
			next = g->t_ms[g->newest] + g->step_ms;
	}
	return next;
}

char *rates_render(rates *r, int64_t now_ms, size_t *len)
{
	double seconds[NWINDOWS];
	char head[256];
	size_t bodylen = 0;

	metrics_counts(r->m, r->now);
	for (int w = 0; w < NWINDOWS; w++) {
		const ring *g = &r->rings[w];
		size_t ref = ring_reference(g, now_ms);
		const uint64_t *then = &g->values[ref * r->ncounts];

		seconds[w] = (double)(now_ms - g->t_ms[ref]) / 1000.0;
		for (size_t i = 0; i < r->ncounts; i++)
			r->inc[w][i] = r->now[i] >= then[i] ? r->now[i] - then[i] : 0;
	}
	const uint64_t *cols[] = {r->now, r->inc[W_MINUTE], r->inc[W_HOUR]};
	char *body = metrics_render_counts(r->m, cols, 3, true, &bodylen);
	int n = snprintf(head, sizeof(head),
	                 "# spamtrapd counter increases: NAME{LABELS} TOTAL MINUTE HOUR\n"
	                 "# window minute %.1f hour %.1f\n",
	                 seconds[W_MINUTE], seconds[W_HOUR]);
	char *text = body ? malloc((size_t)n + bodylen + 1) : NULL;

	if (text) {
		memcpy(text, head, (size_t)n);
		memcpy(text + n, body, bodylen + 1);
		*len = (size_t)n + bodylen;
	}
	free(body);
	return text;
}
