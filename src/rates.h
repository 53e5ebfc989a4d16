/*
 * rates: how much each count of a metrics registry (metrics_counts: the
 * counters and the histograms' _count) grew over the last minute and the
 * last hour, for `spamtrapctl stats` (GET /rates on the metrics
 * listener). Prometheus computes its own rates from /metrics; this is for
 * a person at a terminal, and stays out of /metrics (no per-window series).
 *
 * Bounded memory, fixed at rates_new: snapshots of every count each
 * RATES_MINUTE_STEP_MS in a ring that reaches a minute back, and each
 * RATES_HOUR_STEP_MS in one that reaches an hour back, so a window is
 * between its length and that plus one step (the text says how long).
 * Not thread-safe: the metrics listener's thread ticks and renders.
 */
#ifndef SPAMTRAPD_RATES_H
#define SPAMTRAPD_RATES_H

#include <stddef.h>
#include <stdint.h>

#include "metrics.h"

#define RATES_MINUTE_MS 60000
#define RATES_HOUR_MS 3600000
#define RATES_MINUTE_STEP_MS 10000
#define RATES_HOUR_STEP_MS 60000

typedef struct rates rates;

/* The first snapshot is taken now (a monotonic clock in ms). m must outlive it. NULL: out of memory. */
rates *rates_new(const metrics *m, int64_t now_ms);
void rates_free(rates *r); /* accepts NULL */

/* Take the snapshots due at now_ms (none before rates_next_ms). */
void rates_tick(rates *r, int64_t now_ms);
int64_t rates_next_ms(const rates *r);

/*
 * The text of GET /rates (docs/metrics.md): a header, then for every count
 * that is not 0, "NAME{LABELS} TOTAL MINUTE HOUR": its value now and how
 * much it grew over the minute and the hour windows, whose lengths in
 * seconds the header gives ("# window minute 62.0 hour 3620.5"; shorter
 * while the daemon is younger). malloc'd, NUL-terminated, its length in
 * *len; NULL when out of memory.
 */
char *rates_render(rates *r, int64_t now_ms, size_t *len);

#endif
