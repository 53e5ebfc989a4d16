/* blocklist: the blocklist check (see blocklist.h). */
#include "core/checks/blocklist.h"

#include <stdio.h>
#include <string.h>

#include "core/checks/spf.h"

static const smtp_reply REPLY_TEMPFAIL = {"450", "4.7.1", "Service temporarily unavailable, try again later"};

typedef enum { SKIP_NONE, SKIP_CHECKED, SKIP_WHITELISTED, SKIP_SAME_MESSAGE, SKIP_NO_KEYS } skip_reason;

static skip_reason why_skip(const check_ctx *ctx)
{
	const decide_txn *txn = ctx->txn;

	if (ctx->stage == CHECK_STAGE_RCPT && ctx->msg->sender_checked)
		return SKIP_CHECKED; /* answered at MAIL FROM for this message */
	if (txn->whitelisted != WHITELIST_NONE)
		return SKIP_WHITELISTED;
	if (ctx->stage == CHECK_STAGE_RCPT && ctx->msg->trap_hit && !ctx->msg->listed_before)
		return SKIP_SAME_MESSAGE;
	if (txn->nlookup == 0 && !txn->have_client)
		return SKIP_NO_KEYS;
	return SKIP_NONE;
}

static size_t blocklist_needs(const void *conf, const check_ctx *ctx, void *scratch, query *q)
{
	(void)scratch;
	if (why_skip(ctx) != SKIP_NONE)
		return 0;
	decide_lookup_query(conf, ctx->txn, q);
	return 1;
}

static void skipped(skip_reason why, check_verdict *v)
{
	switch (why) {
	case SKIP_WHITELISTED:
		check_verdict_set(v, DECIDE_CONTINUE, "whitelisted", NULL);
		v->quiet = true;
		return;
	case SKIP_SAME_MESSAGE:
		check_verdict_set(
		    v, DECIDE_CONTINUE,
		    "sender hit a trap earlier in this message, its other recipients are not rejected", NULL);
		return;
	case SKIP_NONE:
	case SKIP_CHECKED:
	case SKIP_NO_KEYS:
		break;
	}
}

/* Nothing against a trusted sender's account: say why nothing else was judged (at debug level). */
static void trusted_pass(const check_ctx *ctx, check_verdict *v)
{
	if (!ctx->txn->sender_trusted)
		return;
	check_verdict_set(v, DECIDE_CONTINUE, "whitelisted", NULL);
	v->quiet = true;
}

static void blocklist_decide(const void *conf, const check_ctx *ctx, void *scratch, const query *answers,
                             size_t nanswers, check_verdict *v, check_effects *eff)
{
	const decide_policy *policy = conf;
	skip_reason why = why_skip(ctx);

	(void)scratch;
	if (ctx->stage == CHECK_STAGE_MAIL)
		eff->msg.sender_checked = true;
	if (why == SKIP_NO_KEYS)
		trusted_pass(ctx, v);
	if (why != SKIP_NONE || nanswers == 0) {
		skipped(why, v);
		return;
	}
	switch (answers[0].status) {
	case QUERY_OK:
		check_verdict_set(v, DECIDE_REJECT, "blocklisted", &policy->reject);
		check_detail_add(v, " key=%s trap=%s hits=%llu", answers[0].u.lookup.found.key,
		                 answers[0].u.lookup.found.trap[0] ? answers[0].u.lookup.found.trap : "-",
		                 (unsigned long long)answers[0].u.lookup.found.hits);
		return;
	case QUERY_ERROR:
		if (policy->on_error_tempfail)
			check_verdict_set(v, DECIDE_TEMPFAIL, "store-error", &REPLY_TEMPFAIL);
		else
			check_verdict_set(v, DECIDE_CONTINUE, "store-error", NULL);
		return;
	case QUERY_NOTFOUND:
		trusted_pass(ctx, v);
		return;
	case QUERY_PENDING:
		break;
	}
}

/* A whitelisted sender is verified by SPF before its MAIL FROM lookup leaves out its client (spf.h). */
static void blocklist_plan_dns(const void *conf, const check_ctx *ctx, dnsplan *plan)
{
	const decide_policy *policy = conf;

	if (why_skip(ctx) == SKIP_NONE || why_skip(ctx) == SKIP_NO_KEYS)
		spfcheck_plan_verify(ctx, policy->spf_timeout_ms, plan);
}

const check_def check_blocklist = {
    .name = "blocklist",
    .stages = CHECK_STAGE_MAIL | CHECK_STAGE_RCPT,
    .default_mode = CHECK_MODE_ENFORCE,
    .needs = blocklist_needs,
    .plan_dns = blocklist_plan_dns,
    .decide = blocklist_decide,
};
