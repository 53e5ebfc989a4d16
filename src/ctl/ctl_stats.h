/*
 * ctl_stats: the figures of `spamtrapctl stats`, gathered from the store's
 * entries in force one at a time (store_foreach, on either backend) and
 * printed for a person: entries by key type; entries made and hit in the
 * last minute, hour and 24 hours; the trap addresses with the most hits
 * and the most-hit keys among the entries hit in the last 24 hours. Pure
 * apart from the FILE it prints to: bounded memory whatever the store
 * holds (at most CTL_STATS_MAX_TRAPS traps are told apart, the rest are
 * "(other traps)").
 */
#ifndef SPAMTRAPD_CTL_STATS_H
#define SPAMTRAPD_CTL_STATS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/key.h"
#include "store/store.h"

#define CTL_STATS_TOP 10
#define CTL_STATS_MAX_TRAPS 4096

typedef struct ctl_stats ctl_stats;

ctl_stats *ctl_stats_new(int64_t now); /* NULL when out of memory */
void ctl_stats_free(ctl_stats *s);     /* accepts NULL */
/* One entry in force. 0, or -1 out of memory (a store_visit_fn's answer). */
int ctl_stats_add(ctl_stats *s, const store_entry *e);
void ctl_stats_print(const ctl_stats *s, FILE *out);

/*
 * The daemon's counters from a scrape of its metrics listener (the
 * exposition text): every series that is not 0, histograms as their
 * count and sum only, in the order the daemon gives them.
 */
void ctl_stats_print_daemon(const char *exposition, FILE *out);

/*
 * The daemon's counters with their rates, from GET /rates (rates.h): for
 * every count not 0, its total, its increase over the last minute and
 * the last hour and that per second. Lines it cannot read are skipped;
 * false when the text is not a /rates answer at all (no window line).
 */
bool ctl_stats_print_rates(const char *text, FILE *out);

#endif
