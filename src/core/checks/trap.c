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

static void tempfail_if_asked(const decide_policy *policy, check_verdict *v);

/* What needs() found, for decide(). */
typedef struct trap_scratch {
	bool is_trap;
	int listed; /* the answer that says whether the sender was listed before this hit; -1: none */
	int domain; /* the answer that counts the sender domain's networks; -1: none */
	char trap[TRAPSET_MATCH_MAX];
} trap_scratch;

_Static_assert(sizeof(trap_scratch) <= CHECK_SCRATCH_MAX, "CHECK_SCRATCH_MAX too small for trap");

/*
 * A whitelisted network: the hit changes nothing. A trusted sender's hit
 * records its SASL account when blocklist.keys has it (a trap hit from an
 * account is how a stolen password shows, whatever MAIL FROM it writes),
 * and its trap copy gets traps.action, but never the whole message
 * (see one_copy_only).
 */
static bool exempt(const decide_txn *txn)
{
	return txn->whitelisted != WHITELIST_NONE;
}

/*
 * on_mixed discard-all drops a message that went to a trap, real
 * recipients' copies too. A trusted sender may put a trap in Cc: when a
 * stranger's message put it in the thread it replies to, so its message
 * only ever loses the trap copies.
 */
static bool one_copy_only(const decide_policy *policy, const decide_txn *txn)
{
	return policy->on_mixed == ON_MIXED_DELIVER_OTHERS || (txn && txn->sender_trusted);
}

static size_t trap_needs(const void *conf, const check_ctx *ctx, void *scratch, query *q)
{
	const decide_policy *policy = conf;
	trap_scratch *s = scratch;
	const decide_txn *txn = ctx->txn;

	size_t n = 0;

	s->is_trap = false;
	s->listed = s->domain = -1;
	if (ctx->stage != CHECK_STAGE_RCPT || !policy->traps || !ctx->facts->recipient)
		return 0;
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

static void action_verdict(const decide_policy *policy, const check_ctx *ctx, check_verdict *v)
{
	switch (policy->action) {
	case TRAP_ACTION_ACCEPT:
		check_verdict_set(v, DECIDE_CONTINUE, "trap", NULL);
		return;
	case TRAP_ACTION_REJECT:
		check_verdict_set(v, DECIDE_REJECT, "trap", &REPLY_TRAP_REJECT);
		return;
	case TRAP_ACTION_DISCARD:
		break;
	}
	if (ctx->facts->front == DECIDE_FRONT_MILTER)
		check_verdict_set(v, DECIDE_DROP_COPY, "trap", NULL);
	/* A policy server cannot drop one copy of a message (SPEC "Replies"). */
	else if (!one_copy_only(policy, ctx->txn))
		check_verdict_set(v, DECIDE_DISCARD, "trap", &REPLY_TRAP_DISCARD);
	else
		check_verdict_set(v, DECIDE_REJECT, "trap", &REPLY_TRAP_UNKNOWN);
}

/* " trap=T blocklisted=k1,k2": what the hit records, for the log line. */
static void hit_detail(check_verdict *v, const char *trap, const char *const *keys, size_t nkeys)
{
	check_detail_add(v, " trap=%s blocklisted=", trap);
	for (size_t i = 0; i < nkeys; i++)
		check_detail_add(v, "%s%s", i ? "," : "", keys[i]);
	if (nkeys == 0)
		check_detail_add(v, "-");
}

/*
 * The sender domain's count (" domain=@d networks=2/3", into out): how
 * many distinct networks hit traps with it, this one counted; 0 when this
 * client does not count (loopback, no address) or the count failed.
 * *failed: it did.
 */
static uint64_t domain_count(const decide_policy *policy, const decide_txn *txn, const trap_scratch *s,
                             const query *answers, size_t nanswers, char *out, size_t outlen, bool *failed)
{
	*failed = false;
	if (!txn->domain_key)
		return 0;
	if (s->domain < 0 || (size_t)s->domain >= nanswers) {
		snprintf(out, outlen, " domain=%s networks=not counted", txn->domain_key);
		return 0;
	}
	if (answers[s->domain].status != QUERY_OK) {
		snprintf(out, outlen, " domain=%s networks=? (store error)", txn->domain_key);
		*failed = true;
		return 0;
	}
	snprintf(out, outlen, " domain=%s networks=%llu/%u", txn->domain_key,
	         (unsigned long long)answers[s->domain].u.distinct.count, policy->domain_min_networks);
	return answers[s->domain].u.distinct.count;
}

static void record_effect(const check_ctx *ctx, const decide_policy *policy, const char *trap,
                          const char *const *keys, size_t nkeys, check_effects *eff)
{
	const decide_txn *txn = ctx->txn;
	query *q = &eff->q[eff->nq];

	if (eff->nq >= CHECK_MAX_EFFECTS)
		return;
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

static void decide_rcpt(const decide_policy *policy, const check_ctx *ctx, const trap_scratch *s,
                        const query *answers, size_t nanswers, check_verdict *v, check_effects *eff)
{
	const decide_txn *txn = ctx->txn;

	if (!s->is_trap)
		return;
	v->stop = true; /* a trap recipient is never greylisted, deferred or rate limited */
	if (exempt(txn)) {
		check_verdict_set(v, DECIDE_CONTINUE, "whitelisted", NULL);
		hit_detail(v, s->trap, NULL, 0);
		return;
	}
	action_verdict(policy, ctx, v);
	if (txn->nrecord == 0) {
		if (txn->null_sender) /* a bounce comes from an innocent server (traps.null_sender) */
			check_detail_add(v, " trap=%s blocklisted=none (null sender)", s->trap);
		else
			hit_detail(v, s->trap, NULL, 0);
		return;
	}
	char counted[QUERY_KEY_MAX + 64] = "";
	bool count_failed;
	uint64_t networks =
	    domain_count(policy, txn, s, answers, nanswers, counted, sizeof(counted), &count_failed);
	const char *keys[DECIDE_MAX_RECORD];
	size_t nkeys = decide_record_keys(policy, txn, networks, keys);

	hit_detail(v, s->trap, keys, nkeys);
	/* Why the sender is not among them: a forged MAIL FROM must not list a real user (docs/spf.md). */
	if (txn->sender_withheld)
		check_detail_add(v, " sender=unverified");
	check_detail_add(v, "%s", counted);
	record_effect(ctx, policy, s->trap, keys, nkeys, eff);
	if (!ctx->msg->trap_hit) {
		eff->msg.trap_hit = true;
		/* A failed lookup counts as "not listed": a store failure never becomes a 5xx. */
		eff->msg.listed_before =
		    s->listed >= 0 && (size_t)s->listed < nanswers && answers[s->listed].status == QUERY_OK;
	}
	/* The other keys are still recorded; store.on_error decides what the recipient gets. */
	if (count_failed)
		tempfail_if_asked(policy, v);
}

/* Milter end of message: drop the trap copies, or the message when only traps remain. */
static void decide_eom(const decide_policy *policy, const check_ctx *ctx, check_verdict *v)
{
	const check_msg *msg = ctx->msg;

	if (msg->ntraps == 0)
		return;
	if (msg->nothers == 0 || !one_copy_only(policy, ctx->txn))
		check_verdict_set(v, DECIDE_DISCARD, "end-of-message", NULL);
	else
		check_verdict_set(v, DECIDE_DROP_COPY, "end-of-message", NULL);
}

static void trap_decide(const void *conf, const check_ctx *ctx, void *scratch, const query *answers,
                        size_t nanswers, check_verdict *v, check_effects *eff)
{
	if (ctx->stage == CHECK_STAGE_EOM)
		decide_eom(conf, ctx, v);
	else
		decide_rcpt(conf, ctx, scratch, answers, nanswers, v, eff);
}

/*
 * store.on_error tempfail: the recipient gets a 4xx, so that the sender
 * retries and the hit can be recorded then. Otherwise the trap copy is
 * still handled as decided.
 */
static void tempfail_if_asked(const decide_policy *policy, check_verdict *v)
{
	if (!policy->on_error_tempfail)
		return;
	check_verdict_set(v, DECIDE_TEMPFAIL, "store-error", &REPLY_TEMPFAIL);
}

/* The hit could not be recorded: say so, keep what follows the keys (the domain's count). */
static void trap_store_failed(const void *conf, check_verdict *v)
{
	char *keys = strstr(v->detail, " blocklisted=");

	if (keys) {
		char rest[QUERY_KEY_MAX + 64] = "";
		const char *domain = strstr(keys, " domain=");

		if (domain)
			snprintf(rest, sizeof(rest), "%s", domain);
		snprintf(keys, sizeof(v->detail) - (size_t)(keys - v->detail),
		         " blocklisted=none (store error)%s", rest);
	}
	tempfail_if_asked(conf, v);
}

const check_def check_trap = {
    .name = "traps",
    .stages = CHECK_STAGE_RCPT | CHECK_STAGE_EOM,
    .default_mode = CHECK_MODE_ENFORCE,
    .needs = trap_needs,
    .decide = trap_decide,
    .store_failed = trap_store_failed,
};
