/* trap: the spamtrap check (see trap.h). */
#include "core/checks/trap.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const smtp_reply REPLY_TEMPFAIL = {"450", "4.7.1", "Service temporarily unavailable, try again later"};
/* Policy front end with deliver-others: the trap looks like an unknown user. */
static const smtp_reply REPLY_TRAP_UNKNOWN = {"550", "5.1.1", "User unknown"};
static const smtp_reply REPLY_TRAP_REJECT = {"550", "5.7.1", "Recipient address rejected"};
/* Postfix logs the DISCARD text; the SMTP client never sees it. */
static const smtp_reply REPLY_TRAP_DISCARD = {"", "", "spamtrap hit"};

static check_verdict tempfail_if_asked(const decide_policy *policy, check_verdict v);

/* What needs() found, for decide(). */
typedef struct trap_scratch {
	bool is_trap;
	int listed; /* the answer that says whether the sender was listed before this hit; -1: none */
	int domain; /* the answer that counts the sender domain's networks; -1: none */
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
	size_t n = 0;

	s->listed = s->domain = -1;
	s->is_trap = trapset_match(policy->traps, ctx->facts->recipient, s->trap, sizeof(s->trap));
	if (!s->is_trap || exempt(txn) || txn->nrecord == 0)
		return 0;
	/*
	 * The first hit of a message that the blocklist did not judge at MAIL
	 * FROM (a policy listener asked at RCPT): was the sender listed
	 * already? Only then do its other recipients stay judged by the
	 * blocklist; a sender this very hit lists is not (traps.on_mixed).
	 */
	if (!ctx->msg->trap_hit && !ctx->msg->sender_checked && (txn->nlookup > 0 || txn->have_client)) {
		decide_lookup_query(policy, txn, &q[n]);
		s->listed = (int)n++;
	}
	/* A sender domain waits for hits from several networks: count this one's first. */
	if (decide_counts_domain(txn)) {
		memset(&q[n], 0, sizeof(q[n]));
		q[n].kind = QUERY_DISTINCT_ADD;
		q[n].u.distinct.key = txn->domain_set;
		q[n].u.distinct.member = txn->domain_net;
		q[n].u.distinct.now = ctx->now;
		q[n].u.distinct.window = policy->ttl;
		s->domain = (int)n++;
	}
	return n;
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

/* Append to v's detail, within its room. */
static void detail_add(check_verdict *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void detail_add(check_verdict *v, const char *fmt, ...)
{
	size_t used = strlen(v->detail);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(v->detail + used, sizeof(v->detail) - used, fmt, ap);
	va_end(ap);
}

/* " trap=T blocklisted=k1,k2": what the hit records, for the log line. */
static void hit_detail(check_verdict *v, const char *trap, const char *const *keys, size_t nkeys)
{
	detail_add(v, " trap=%s blocklisted=", trap);
	for (size_t i = 0; i < nkeys; i++)
		detail_add(v, "%s%s", i ? "," : "", keys[i]);
	if (nkeys == 0)
		detail_add(v, "-");
}

/*
 * The sender domain's count (" domain=@d networks=2/3"): how many distinct
 * networks hit traps with it, this one counted; 0 when this client does
 * not count (loopback, no address) or the count failed. *failed: it did.
 */
static uint64_t domain_count(const decide_policy *policy, const decide_txn *txn, const trap_scratch *s,
                             const query *answers, size_t nanswers, check_verdict *v, bool *failed)
{
	*failed = false;
	if (!txn->domain_key)
		return 0;
	if (s->domain < 0 || (size_t)s->domain >= nanswers) {
		detail_add(v, " domain=%s networks=not counted", txn->domain_key);
		return 0;
	}
	if (answers[s->domain].status != QUERY_OK) {
		detail_add(v, " domain=%s networks=? (store error)", txn->domain_key);
		*failed = true;
		return 0;
	}
	detail_add(v, " domain=%s networks=%llu/%u", txn->domain_key,
	           (unsigned long long)answers[s->domain].u.distinct.count, policy->domain_min_networks);
	return answers[s->domain].u.distinct.count;
}

static void record_effect(const check_ctx *ctx, const decide_policy *policy, const char *trap,
                          const char *const *keys, size_t nkeys, check_effects *eff)
{
	const decide_txn *txn = ctx->txn;
	query *q = &eff->q[eff->nq];

	memset(q, 0, sizeof(*q));
	q->kind = QUERY_BLOCKLIST_RECORD;
	for (size_t i = 0; i < nkeys && i < QUERY_RECORD_KEYS_MAX; i++)
		q->u.record.keys[q->u.record.nkeys++] = keys[i];
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
		hit_detail(&v, s->trap, NULL, 0);
		v.stop = true;
		return v;
	}
	v = action_verdict(policy, ctx->facts->front);
	v.stop = true; /* a trap recipient is never greylisted, deferred or rate limited */
	if (txn->nrecord == 0) {
		if (txn->null_sender) /* a bounce comes from an innocent server (traps.null_sender) */
			detail_add(&v, " trap=%s blocklisted=none (null sender)", s->trap);
		else
			hit_detail(&v, s->trap, NULL, 0);
		return v;
	}
	check_verdict counted = check_continue();
	bool count_failed;
	uint64_t networks = domain_count(policy, txn, s, answers, nanswers, &counted, &count_failed);
	const char *keys[DECIDE_MAX_RECORD];
	size_t nkeys = decide_record_keys(policy, txn, networks, keys);

	hit_detail(&v, s->trap, keys, nkeys);
	detail_add(&v, "%s", counted.detail);
	record_effect(ctx, policy, s->trap, keys, nkeys, eff);
	if (!ctx->msg->trap_hit) {
		eff->msg.trap_hit = true;
		/* A failed lookup counts as "not listed": a store failure never becomes a 5xx. */
		eff->msg.listed_before =
		    s->listed >= 0 && (size_t)s->listed < nanswers && answers[s->listed].status == QUERY_OK;
	}
	/* The other keys are still recorded; store.on_error decides what the recipient gets. */
	return count_failed ? tempfail_if_asked(policy, v) : v;
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
/* store.on_error tempfail: the sender retries, and the hit can be recorded then. */
static check_verdict tempfail_if_asked(const decide_policy *policy, check_verdict v)
{
	if (!policy->on_error_tempfail)
		return v;
	v.action = v.enforce_action = DECIDE_TEMPFAIL;
	v.reason = "store-error";
	v.reply = REPLY_TEMPFAIL;
	return v;
}

static check_verdict trap_store_failed(const void *conf, const check_verdict *v)
{
	check_verdict out = *v;
	char *keys = strstr(out.detail, " blocklisted=");

	if (keys) {
		/* Nothing was recorded: say so, and keep what follows the keys (the domain's count). */
		const char *rest = strstr(v->detail + (keys - out.detail), " domain=");
		snprintf(keys, sizeof(out.detail) - (size_t)(keys - out.detail),
		         " blocklisted=none (store error)%s", rest ? rest : "");
	}
	return tempfail_if_asked(conf, out);
}

const check_def check_trap = {
    .name = "traps",
    .stages = CHECK_STAGE_RCPT | CHECK_STAGE_EOM,
    .default_mode = CHECK_MODE_ENFORCE,
    .needs = trap_needs,
    .decide = trap_decide,
    .store_failed = trap_store_failed,
};
