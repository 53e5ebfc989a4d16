/*
 * pipeline: one stage of one transaction through the checks, in order
 * (core/checks/checks.h), pure. The engine drives it in three steps:
 *
 *   pipeline_begin   the facts, the message state, the listener's checks;
 *   pipeline_needs   every check's queries, in run->q: the engine sends
 *                    them to the store in one call (store_run);
 *   pipeline_decide  each check decides from its answers, in order, until
 *                    one gives a verdict that is not "continue" or stops;
 *                    modes apply (a shadow verdict is logged as "would
 *                    have" and changes nothing; an off check never runs).
 *                    At a late check (check_def.late) it stops and returns
 *                    true with its queries, and those of the checks after
 *                    it up to the next late one (pipeline_needs asks only
 *                    the checks before the first late one), in
 *                    run->q[from..nq): the engine
 *                    runs those and calls pipeline_decide again, which
 *                    goes on from there.
 *
 * Then the engine writes the effects pipeline_effect_applies() selects,
 * tells the pipeline about failed writes (pipeline_store_failed), logs
 * run->verdicts[] and answers with run->final; run->msg is the message's
 * state after the stage.
 */
#ifndef SPAMTRAPD_PIPELINE_H
#define SPAMTRAPD_PIPELINE_H

#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/check.h"
#include "core/checks/checks.h"

typedef struct pipeline_check {
	const check_def *def;
	const void *conf;
	check_mode mode;
} pipeline_check;

/* The checks of a config snapshot, in checks_all[] order. */
typedef struct pipeline {
	pipeline_check checks[CHECK_COUNT];
	bool dry_run; /* the shadow modes come from the top-level mode: log lines say "dry-run" */
} pipeline;

#define PIPELINE_MAX_QUERIES (CHECK_COUNT * CHECK_MAX_NEEDS)

typedef struct pipeline_run {
	check_ctx ctx;
	unsigned enabled; /* CHECK_BIT()s the listener runs */
	query q[PIPELINE_MAX_QUERIES];
	size_t nq;
	size_t first[CHECK_COUNT], count[CHECK_COUNT];
	alignas(max_align_t) unsigned char scratch[CHECK_COUNT][CHECK_SCRATCH_MAX];
	int next;                     /* the check pipeline_decide goes on with */
	bool late_asked[CHECK_COUNT]; /* needs() ran with a late check's (the late one or one after it) */
	/* Out of pipeline_decide. */
	bool decided[CHECK_COUNT];
	check_verdict verdict[CHECK_COUNT]; /* of each check that decided, after its mode */
	check_effects effects[CHECK_COUNT];
	check_verdict final;
	int final_check; /* the check whose verdict is final, -1: none objected */
	check_msg msg;   /* the message's state after this stage */
} pipeline_run;

/* facts, txn and msg must outlive run. ctx.now_ms is now * 1000: a caller with a finer clock sets it after.
 */
void pipeline_begin(pipeline_run *run, check_stage stage, unsigned enabled, const decide_facts *facts,
                    const decide_txn *txn, const check_msg *msg, int64_t now);
/*
 * The DNS answers the stage's checks want (check_def.plan_dns), added to
 * plan; run is begun (pipeline_begin) and facts->dns is not used.
 */
void pipeline_plan_dns(const pipeline *p, pipeline_run *run, dnsplan *plan);
/* Fills run->q[0..nq); returns nq. */
size_t pipeline_needs(const pipeline *p, pipeline_run *run);
/*
 * Decide, from run->next on. true: a late check needs the answers to
 * run->q[*from..run->nq) first; run them and call again. false: done.
 */
bool pipeline_decide(const pipeline *p, pipeline_run *run, size_t *from);
/* Whether the store write j of check i's effects is to be made. */
bool pipeline_effect_applies(const pipeline *p, const pipeline_run *run, int i, size_t j);
/* Check i's writes failed: its verdict (and the final one, if it was that) as the check says then. */
void pipeline_store_failed(const pipeline *p, pipeline_run *run, int i);

/* "reject", "dry-run, would reject", "shadow, would reject": the action part of a log line. */
void pipeline_action_text(const pipeline *p, const check_verdict *v, char *out, size_t outlen);

#endif
