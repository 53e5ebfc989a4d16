/*
 * checks: every check spamtrapd has, in the order SPEC.md "Checks" runs
 * them on each recipient. The first verdict that is not "continue" wins
 * and the checks after it do not run (core/pipeline.h).
 */
#ifndef SPAMTRAPD_CHECKS_H
#define SPAMTRAPD_CHECKS_H

#include <stddef.h>

#include "core/check.h"

/*
 * Indexes into checks_all[], also the bits of a listener's check set.
 * spf is not in SPEC.md's list: its place is that of its own verdict
 * (reject_fail) only; the SPF result other checks use is resolved before
 * any check decides (core/checks/spf.h).
 */
enum {
	CHECK_ID_TRAPS,
	CHECK_ID_BLOCKLIST,
	CHECK_ID_WHITELIST,
	CHECK_ID_RELAY,
	CHECK_ID_RATELIMIT,
	CHECK_ID_DNSBL,
	CHECK_ID_SPF,
	CHECK_ID_GREYLIST,
	CHECK_COUNT
};

#define CHECK_BIT(id) (1u << (id))
#define CHECKS_EVERY ((1u << CHECK_COUNT) - 1)

extern const check_def *const checks_all[CHECK_COUNT];

/* The index of the check named name (its config section), or -1. */
int checks_find(const char *name);

#endif
