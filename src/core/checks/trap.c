/* trap: the spamtrap check (see trap.h). */
#include "core/checks/trap.h"

#include <stdio.h>
#include <string.h>

static const smtp_reply REPLY_TEMPFAIL = {"450", "4.7.1", "Service temporarily unavailable, try again later"};
/* Policy front end with deliver-others: the trap looks like an unknown user. */
static const smtp_reply REPLY_TRAP_UNKNOWN = {"550", "5.1.1", "User unknown"};
static const smtp_reply REPLY_TRAP_REJECT = {"550", "5.7.1", "Recipient address rejected"};
/* Postfix logs the DISCARD text; the SMTP client never sees it. */
static const smtp_reply REPLY_TRAP_DISCARD = {"", "", "spamtrap hit"};

/* What needs() found, for decide(). */
typedef struct trap_scratch {
	bool is_trap;
	bool looked_up; /* answers[0] says whether the sender was listed before this hit */
	char trap[TRAPSET_MATCH_MAX];
} trap_scratch;

_Static_assert(sizeof(trap_scratch) <= CHECK_SCRATCH_MAX, "CHECK_SCRATCH_MAX too small for trap");

/* A whitelisted network, or a whitelisted sender that is verified: nothing is recorded. */
static bool exempt(const decide_txn *txn)
{
	return txn->whitelisted != WHITELIST_NONE;
}

static size_t trap_needs(const void *conf, const check_ctx *ctx, void *scratch, query *q)
{
	const decide_policy *policy = conf;
	trap_scratch *s = scratch;
	const decide_txn *txn = ctx->txn;

	if (ctx->stage != CHECK_STAGE_RCPT || !policy->traps || !ctx->facts->recipient)
		return 0;
	s->is_trap = trapset_match(policy->traps, ctx->facts->recipient, s->trap, sizeof(s->trap));
	/*
	 * The first hit of a message that the blocklist did not judge at MAIL
	 * FROM (a policy listener asked at RCPT): was the sender listed
	 * already? Only then do its other recipients stay judged by the
	 * blocklist; a sender this very hit lists is not (traps.on_mixed).
	 */
	if (!s->is_trap || exempt(txn) || txn->nrecord == 0 || ctx->msg->trap_hit || ctx->msg->sender_checked)
		return 0;
	if (txn->nlookup == 0 && !txn->have_client)
		return 0;
	decide_lookup_query(policy, txn, q);
	s->looked_up = true;
	return 1;
}

static check_verdict action_verdict(const decide_policy *policy, decide_front front)
{
	switch (policy->action) {
	case TRAP_ACTION_ACCEPT:
		return check_verdict_of(DECIDE_CONTINUE, "trap", NULL);
	case TRAP_ACTION_REJECT:
		return check_verdict_of(DECIDE_REJECT, "trap", &REPLY_TRAP_REJECT);
	case TRAP_ACTION_DISCARD:
		break;
	}
	if (front == DECIDE_FRONT_MILTER)
		return check_verdict_of(DECIDE_DROP_COPY, "trap", NULL);
	/* A policy server cannot drop one copy of a message (SPEC "Replies"). */
	if (policy->on_mixed == ON_MIXED_DISCARD_ALL)
		return check_verdict_of(DECIDE_DISCARD, "trap", &REPLY_TRAP_DISCARD);
	return check_verdict_of(DECIDE_REJECT, "trap", &REPLY_TRAP_UNKNOWN);
}

/* " trap=T blocklisted=k1,k2": what the hit records, for the log line. */
static void hit_detail(check_verdict *v, const char *trap, const decide_txn *txn)
{
	size_t used = (size_t)snprintf(v->detail, sizeof(v->detail), " trap=%s blocklisted=", trap);

	for (size_t i = 0; i < txn->nrecord && used < sizeof(v->detail); i++)
		used += (size_t)snprintf(v->detail + used, sizeof(v->detail) - used, "%s%s", i ? "," : "",
		                         txn->record[i]);
	if (txn->nrecord == 0 && used < sizeof(v->detail))
		snprintf(v->detail + used, sizeof(v->detail) - used, "-");
}

static void record_effect(const check_ctx *ctx, const decide_policy *policy, const char *trap,
                          check_effects *eff)
{
	const decide_txn *txn = ctx->txn;
	query *q = &eff->q[eff->nq];

	memset(q, 0, sizeof(*q));
	q->kind = QUERY_BLOCKLIST_RECORD;
	for (size_t i = 0; i < txn->nrecord && i < QUERY_RECORD_KEYS_MAX; i++)
		q->u.record.keys[q->u.record.nkeys++] = txn->record[i];
	q->u.record.hit = (query_hit){
	    .now = ctx->now,
	    .ttl = policy->ttl,
	    .trap = trap,
	    .sender = txn->null_sender ? "" : txn->sender,
	    .recipient = ctx->facts->recipient,
	    .client = ctx->facts->client_address,
	    .helo = ctx->facts->helo,
	    .queue_id = ctx->facts->queue_id,
	    .reason = "trap",
	};
	eff->when[eff->nq++] = CHECK_EFFECT_ALWAYS;
	eff->verdict_needs_writes = true;
}

static check_verdict decide_rcpt(const decide_policy *policy, const check_ctx *ctx, trap_scratch *s,
                                 const query *answers, size_t nanswers, check_effects *eff)
{
	const decide_txn *txn = ctx->txn;
	check_verdict v;

	if (!s->is_trap)
		return check_continue();
	if (exempt(txn)) {
		v = check_verdict_of(DECIDE_CONTINUE, "whitelisted", NULL);
		snprintf(v.detail, sizeof(v.detail), " trap=%s", s->trap);
		v.stop = true;
		return v;
	}
	v = action_verdict(policy, ctx->facts->front);
	v.stop = true; /* a trap recipient is never greylisted, deferred or rate limited */
	hit_detail(&v, s->trap, txn);
	if (txn->nrecord == 0)
		return v;
	record_effect(ctx, policy, s->trap, eff);
	if (!ctx->msg->trap_hit) {
		eff->msg.trap_hit = true;
		/* A failed lookup cannot show the sender was clean: keep judging the other recipients. */
		eff->msg.listed_before = s->looked_up && nanswers > 0 && answers[0].status != QUERY_NOTFOUND;
	}
	return v;
}

/* Milter end of message: drop the trap copies, or the message when only traps remain. */
static check_verdict decide_eom(const decide_policy *policy, const check_msg *msg)
{
	check_verdict v;

	if (msg->ntraps == 0)
		return check_continue();
	if (msg->nothers == 0 || policy->on_mixed == ON_MIXED_DISCARD_ALL)
		v = check_verdict_of(DECIDE_DISCARD, "end-of-message", NULL);
	else
		v = check_verdict_of(DECIDE_DROP_COPY, "end-of-message", NULL);
	return v;
}

static check_verdict trap_decide(const void *conf, const check_ctx *ctx, void *scratch, const query *answers,
                                 size_t nanswers, check_effects *eff)
{
	if (ctx->stage == CHECK_STAGE_EOM)
		return decide_eom(conf, ctx->msg);
	return decide_rcpt(conf, ctx, scratch, answers, nanswers, eff);
}

/*
 * The hit could not be recorded. The trap copy is still handled as
 * decided, unless store.on_error is tempfail: then the recipient gets a
 * 4xx so that the sender retries and the hit can be recorded then.
 */
static check_verdict trap_store_failed(const void *conf, const check_verdict *v)
{
	const decide_policy *policy = conf;
	check_verdict out = *v;

	snprintf(out.detail, sizeof(out.detail), "%s", v->detail);
	char *keys = strstr(out.detail, " blocklisted=");
	if (keys)
		snprintf(keys, sizeof(out.detail) - (size_t)(keys - out.detail),
		         " blocklisted=none (store error)");
	if (!policy->on_error_tempfail)
		return out;
	out.action = out.enforce_action = DECIDE_TEMPFAIL;
	out.reason = "store-error";
	out.reply = REPLY_TEMPFAIL;
	return out;
}

const check_def check_trap = {
    .name = "traps",
    .stages = CHECK_STAGE_RCPT | CHECK_STAGE_EOM,
    .needs = trap_needs,
    .decide = trap_decide,
    .store_failed = trap_store_failed,
};
