/* pipeline: one stage through the checks, in order (see pipeline.h). */
#include "core/pipeline.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

void pipeline_begin(pipeline_run *run, check_stage stage, unsigned enabled, const decide_facts *facts,
                    const decide_txn *txn, const check_msg *msg, int64_t now)
{
	run->ctx = (check_ctx){.stage = stage,
	                       .facts = facts,
	                       .txn = txn,
	                       .msg = msg,
	                       .now = now,
	                       .now_ms = now * 1000,
	                       .dns = facts->dns,
	                       .stage_msg = &run->msg};
	run->enabled = enabled;
	run->nq = 0;
	memset(run->count, 0, sizeof(run->count));
	memset(run->decided, 0, sizeof(run->decided));
	memset(run->late_asked, 0, sizeof(run->late_asked));
	run->next = 0;
	check_verdict_reset(&run->final);
	run->final_check = -1;
	run->msg = *msg;
	/* The dnsbl's score is the stage's own (check.h): none is left over from an earlier stage. */
	run->msg.dnsbl = CHECK_DNSBL_UNSCORED;
	run->msg.dnsbl_score = 0;
}

/* Whether check i runs at this stage for this listener. */
static bool runs(const pipeline *p, const pipeline_run *run, int i)
{
	const pipeline_check *c = &p->checks[i];

	return c->def && c->mode != CHECK_MODE_OFF && (run->enabled & CHECK_BIT(i)) &&
	       (c->def->stages & run->ctx.stage);
}

/* Check i's queries, appended to run->q. */
static void ask(const pipeline *p, pipeline_run *run, int i)
{
	run->first[i] = run->nq;
	run->count[i] = 0;
	run->ctx.mode = p->checks[i].mode;
	if (p->checks[i].def->needs)
		run->count[i] =
		    p->checks[i].def->needs(p->checks[i].conf, &run->ctx, run->scratch[i], run->q + run->nq);
	/* run->q has CHECK_MAX_NEEDS slots a check: a check asking more is a bug, never a query. */
	assert(run->count[i] <= CHECK_MAX_NEEDS);
	if (run->count[i] > CHECK_MAX_NEEDS)
		run->count[i] = CHECK_MAX_NEEDS;
	run->nq += run->count[i];
}

void pipeline_plan_dns(const pipeline *p, pipeline_run *run, dnsplan *plan)
{
	for (int i = 0; i < CHECK_COUNT; i++)
		if (runs(p, run, i) && p->checks[i].def->plan_dns) {
			run->ctx.mode = p->checks[i].mode;
			p->checks[i].def->plan_dns(p->checks[i].conf, &run->ctx, plan);
		}
}

/*
 * The checks before the first late one are asked up front; the ones after
 * it with the late check that comes before them (ask_late), so that a
 * late check's queries and those of the checks it is followed by go to
 * the store in one call (the relay check's add and the ratelimit's peek:
 * one round trip to Redis, not two).
 */
size_t pipeline_needs(const pipeline *p, pipeline_run *run)
{
	bool deferred = false;

	for (int i = 0; i < CHECK_COUNT; i++) {
		run->first[i] = run->nq;
		if (!runs(p, run, i))
			continue;
		deferred |= p->checks[i].def->late;
		if (!deferred)
			ask(p, run, i);
	}
	return run->nq;
}

/* Late check i's queries and those of the checks after it up to the next late one; how many. */
static size_t ask_late(const pipeline *p, pipeline_run *run, int i)
{
	size_t from = run->nq;

	run->late_asked[i] = true;
	ask(p, run, i);
	for (int j = i + 1; j < CHECK_COUNT; j++) {
		if (!runs(p, run, j) || run->late_asked[j])
			continue;
		if (p->checks[j].def->late)
			break;
		run->late_asked[j] = true;
		ask(p, run, j);
	}
	return run->nq - from;
}

/* A shadow check decides and logs, and changes nothing. */
static void apply_mode(const pipeline_check *c, check_verdict *v)
{
	v->check = c->def->name;
	v->mode = c->mode;
	v->enforce_action = v->action;
	if (c->mode == CHECK_MODE_SHADOW) {
		v->action = DECIDE_CONTINUE;
		v->stop = false;
		v->header[0] = '\0';
	}
}

bool pipeline_decide(const pipeline *p, pipeline_run *run, size_t *from)
{
	for (int i = run->next; i < CHECK_COUNT; i++) {
		const pipeline_check *c = &p->checks[i];
		check_effects *eff = &run->effects[i];
		check_verdict *v = &run->verdict[i];

		run->next = i;
		if (!runs(p, run, i))
			continue;
		if (c->def->late && !run->late_asked[i]) {
			*from = run->nq;
			if (ask_late(p, run, i) > 0)
				return true;
		}
		eff->nq = 0;
		eff->verdict_needs_writes = false;
		eff->hook_argv = NULL;
		eff->hook_gate = -1;
		eff->msg = run->msg; /* the state as the checks before this one left it */
		check_verdict_reset(v);
		run->ctx.mode = c->mode;
		c->def->decide(c->conf, &run->ctx, run->scratch[i], run->q + run->first[i], run->count[i], v,
		               eff);
		apply_mode(c, v);
		run->decided[i] = true;
		run->msg = eff->msg;
		if (v->action != DECIDE_CONTINUE || v->stop) {
			run->final = *v;
			run->final_check = i;
			run->next = CHECK_COUNT;
			return false;
		}
		/* A header rides on "continue": the last check that asks for one gives it. */
		if (v->header[0])
			memcpy(run->final.header, v->header, sizeof(v->header));
	}
	run->next = CHECK_COUNT;
	return false;
}

bool pipeline_effect_applies(const pipeline *p, const pipeline_run *run, int i, size_t j)
{
	const check_effects *eff = &run->effects[i];

	if (!run->decided[i] || j >= eff->nq)
		return false;
	switch (eff->when[j]) {
	case CHECK_EFFECT_ALWAYS:
		return true;
	case CHECK_EFFECT_ENFORCE:
		return p->checks[i].mode == CHECK_MODE_ENFORCE;
	case CHECK_EFFECT_ON_ACCEPT:
		return p->checks[i].mode == CHECK_MODE_ENFORCE && run->final.action == DECIDE_CONTINUE;
	case CHECK_EFFECT_COUNT_ACCEPTED:
		return run->final.action == DECIDE_CONTINUE;
	}
	return false;
}

void pipeline_store_failed(const pipeline *p, pipeline_run *run, int i)
{
	const pipeline_check *c = &p->checks[i];
	check_verdict *v = &run->verdict[i];

	if (!run->decided[i] || !c->def->store_failed || !run->effects[i].verdict_needs_writes)
		return;
	/* store_failed sees the verdict as the check gave it, before its mode. */
	v->action = v->enforce_action;
	c->def->store_failed(c->conf, v);
	apply_mode(c, v);
	if (run->final_check == i)
		run->final = *v;
}

void pipeline_action_text(const pipeline *p, const check_verdict *v, char *out, size_t outlen)
{
	if (v->mode == CHECK_MODE_SHADOW && v->enforce_action != DECIDE_CONTINUE)
		snprintf(out, outlen, "%s, would %s", p->dry_run ? "dry-run" : "shadow",
		         decide_action_name(v->enforce_action));
	else if (v->mode == CHECK_MODE_SHADOW)
		snprintf(out, outlen, "%s, %s", p->dry_run ? "dry-run" : "shadow",
		         decide_action_name(v->action));
	else
		snprintf(out, outlen, "%s", decide_action_name(v->action));
}
