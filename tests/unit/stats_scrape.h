/*
 * stats_scrape: one series' value in a render of the daemon's families,
 * for the unit tests that check what the request path counted. Include
 * after <cmocka.h>.
 */
#ifndef SPAMTRAPD_STATS_SCRAPE_H
#define SPAMTRAPD_STATS_SCRAPE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "stats.h"

/* The value of series (name and labels as rendered), -1 when absent. */
static long long scraped(const char *series)
{
	size_t len;
	char *text = metrics_render(stats_registry(), &len), *at;
	char needle[512];
	long long v = -1;

	assert_non_null(text);
	snprintf(needle, sizeof(needle), "\n%s ", series);
	if ((at = strstr(text, needle)))
		v = strtoll(at + strlen(needle), NULL, 10);
	free(text);
	return v;
}

#endif
