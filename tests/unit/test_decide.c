/*
 * Unit tests of the trap and blocklist checks against SPEC.md "Replies":
 * table-driven, one named row per situation, run for both front ends where
 * they differ. Each row runs the check through the pipeline
 * (core/pipeline.h) as the engine does, with the store's answer given by
 * the row; the network keys of a lookup are built by core/netkeys.h as the
 * store builds them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/checks/trap.h"
#include "core/decide.h"
#include "core/key.h"
#include "core/netkeys.h"
#include "core/pipeline.h"

#define BLOCKLIST_REJECT "550 5.7.1 Sender is blocklisted after mail to a spamtrap"

typedef struct fixture {
	decide_policy policy;
	trapset *traps;
	whitelist *wl;
} fixture;

/* ---- the checks through the pipeline, as the engine runs them ---- */

typedef enum { DECIDE_LOOKUP_MISS, DECIDE_LOOKUP_HIT, DECIDE_LOOKUP_ERROR } decide_lookup;
typedef enum {
	DECIDE_REASON_NONE,
	DECIDE_REASON_WHITELISTED,
	DECIDE_REASON_BLOCKLISTED,
	DECIDE_REASON_TRAP,
	DECIDE_REASON_STORE_ERROR,
	DECIDE_REASON_OTHER,
} decide_reason;

/* A check's verdict with what the rows compare. */
typedef struct decide_verdict {
	decide_action action, enforce_action;
	decide_reason reason;
	smtp_reply reply;
	char trap[TRAPSET_MATCH_MAX]; /* the trap hit, from the log detail */
	bool record;                  /* the effects record the transaction's keys */
	check_verdict v;
} decide_verdict;

static decide_reason reason_of(const char *r)
{
	static const char *const names[] = {"whitelisted", "blocklisted", "trap", "store-error"};

	if (!r)
		return DECIDE_REASON_NONE;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(r, names[i]) == 0)
			return (decide_reason)(i + 1);
	return DECIDE_REASON_OTHER;
}

/* The pipeline of policy p: every check enforcing, or shadow under dry-run. */
static void pipeline_of(const decide_policy *p, pipeline *out)
{
	memset(out, 0, sizeof(*out));
	out->dry_run = p->dry_run;
	/* The checks that read the decide_policy; those with a conf of their own are off here. */
	for (int i = 0; i < CHECK_COUNT; i++)
		out->checks[i] = (pipeline_check){.def = checks_all[i],
		                                  .conf = p,
		                                  .mode = checks_all[i]->conf_size ? CHECK_MODE_OFF
		                                          : p->dry_run             ? CHECK_MODE_SHADOW
		                                                                   : CHECK_MODE_ENFORCE};
}

static decide_verdict verdict_from(const pipeline_run *run, int check)
{
	decide_verdict d;
	const check_verdict *v = check >= 0 && run->decided[check] ? &run->verdict[check] : &run->final;
	const char *trap = strstr(v->detail, " trap=");

	memset(&d, 0, sizeof(d));
	d.v = *v;
	d.action = v->action;
	d.enforce_action = v->enforce_action;
	d.reason = reason_of(v->reason);
	d.reply = v->reply;
	if (trap)
		snprintf(d.trap, sizeof(d.trap), "%.*s", (int)strcspn(trap + 6, " "), trap + 6);
	if (check >= 0 && run->decided[check])
		for (size_t i = 0; i < run->effects[check].nq; i++)
			d.record |= run->effects[check].q[i].kind == QUERY_BLOCKLIST_RECORD;
	return d;
}

/* One stage of the listed checks, every lookup answered with lookup; the verdict of check. */
static decide_verdict run_check(const decide_policy *p, check_stage stage, unsigned checks, int check,
                                const decide_facts *facts, const decide_txn *txn, const check_msg *msg,
                                decide_lookup lookup)
{
	static pipeline_run run;
	pipeline pl;
	check_msg none = {0};

	pipeline_of(p, &pl);
	pipeline_begin(&run, stage, checks, facts, txn, msg ? msg : &none, 1000);
	pipeline_needs(&pl, &run);
	for (size_t i = 0; i < run.nq; i++) {
		run.q[i].status = lookup == DECIDE_LOOKUP_HIT     ? QUERY_OK
		                  : lookup == DECIDE_LOOKUP_ERROR ? QUERY_ERROR
		                                                  : QUERY_NOTFOUND;
		if (run.q[i].kind == QUERY_BLOCKLIST_LOOKUP && lookup == DECIDE_LOOKUP_HIT)
			snprintf(run.q[i].u.lookup.found.key, sizeof(run.q[i].u.lookup.found.key), "%s",
			         run.q[i].u.lookup.nkeys ? run.q[i].u.lookup.keys[0] : "-");
	}
	/* No check read here is late: one call decides. */
	assert_false(pipeline_decide(&pl, &run, &(size_t){0}));
	return verdict_from(&run, check);
}

/* The blocklist check at MAIL FROM (the milter's MAIL stage). */
static decide_verdict decide_sender(const decide_policy *p, const decide_txn *txn, decide_lookup lookup)
{
	decide_facts facts = {.front = DECIDE_FRONT_MILTER};

	return run_check(p, CHECK_STAGE_MAIL, CHECK_BIT(CHECK_ID_BLOCKLIST), CHECK_ID_BLOCKLIST, &facts, txn,
	                 NULL, lookup);
}

/* The trap check at RCPT TO. */
static decide_verdict decide_recipient(const decide_policy *p, const decide_txn *txn,
                                       const decide_facts *facts)
{
	return run_check(p, CHECK_STAGE_RCPT, CHECK_BIT(CHECK_ID_TRAPS), CHECK_ID_TRAPS, facts, txn, NULL,
	                 DECIDE_LOOKUP_MISS);
}

/* The lookup's full key list as the store builds it: the keys, the client's networks at the lengths of mask.
 */
typedef struct lookup_list {
	query q;
	netkeys k;
	netkeys_mask built;
} lookup_list;

static void lookup_of(const decide_policy *p, const decide_txn *txn, const netkeys_mask *present,
                      lookup_list *l)
{
	decide_lookup_query(p, txn, &l->q);
	l->built = present ? netkeys_with_fixed(present, &l->q) : netkeys_every;
	netkeys_build(&l->k, &l->q, &l->built);
}

static int setup(void **state)
{
	static fixture f;
	char err[256];
	memset(&f, 0, sizeof(f));
	f.traps = trapset_new("+");
	assert_int_equal(trapset_add_address(f.traps, "trap@example.com", err, sizeof(err)), 0);
	assert_int_equal(trapset_add_domain(f.traps, "trap.example.net", err, sizeof(err)), 0);
	assert_int_equal(trapset_add_pattern(f.traps, "^spam(master|trap)?@", err, sizeof(err)), 0);
	f.wl = whitelist_new(false);
	assert_int_equal(whitelist_add_domain(f.wl, "example.org", err, sizeof(err)), 0);
	assert_int_equal(whitelist_add_network(f.wl, "198.51.100.0/24", err, sizeof(err)), 0);
	assert_int_equal(whitelist_add_address(f.wl, "boss@partner.example", err, sizeof(err)), 0);
	f.policy.traps = f.traps;
	f.policy.whitelist = f.wl;
	f.policy.keys = DECIDE_KEY_SENDER | DECIDE_KEY_CLIENT_ADDRESS;
	f.policy.ttl = 86400;
	f.policy.ipv4_prefix = 32;
	f.policy.ipv6_prefix = 64;
	assert_true(smtp_reply_parse(BLOCKLIST_REJECT, &f.policy.reject, err, sizeof(err)));
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;
	trapset_free(f->traps);
	whitelist_free(f->wl);
	return 0;
}

/* ---- blocklist check at MAIL FROM ---- */

typedef struct sender_case {
	const char *name;
	bool dry_run, on_error_tempfail;
	const char *sender, *client;
	decide_lookup lookup;
	decide_action action, enforce_action;
	decide_reason reason;
	const char *code, *xcode;
} sender_case;

static const sender_case sender_cases[] = {
    {"blocklisted sender is rejected with blocklist.reject", false, false, "<spammer@bad.example>",
     "192.0.2.7", DECIDE_LOOKUP_HIT, DECIDE_REJECT, DECIDE_REJECT, DECIDE_REASON_BLOCKLISTED, "550", "5.7.1"},
    {"nothing known continues silently", false, false, "<a@good.example>", "192.0.2.8", DECIDE_LOOKUP_MISS,
     DECIDE_CONTINUE, DECIDE_CONTINUE, DECIDE_REASON_NONE, "", ""},
    {"store error with on_error accept continues", false, false, "<a@good.example>", "192.0.2.8",
     DECIDE_LOOKUP_ERROR, DECIDE_CONTINUE, DECIDE_CONTINUE, DECIDE_REASON_STORE_ERROR, "", ""},
    {"store error with on_error tempfail answers 450", false, true, "<a@good.example>", "192.0.2.8",
     DECIDE_LOOKUP_ERROR, DECIDE_TEMPFAIL, DECIDE_TEMPFAIL, DECIDE_REASON_STORE_ERROR, "450", "4.7.1"},
    /* SPEC "Checks" 3: a whitelisted sender can be forged; the client's own keys still count. */
    {"forged whitelisted domain from a listed client is rejected", false, false, "<ceo@example.org>",
     "192.0.2.9", DECIDE_LOOKUP_HIT, DECIDE_REJECT, DECIDE_REJECT, DECIDE_REASON_BLOCKLISTED, "550", "5.7.1"},
    {"forged whitelisted address from a listed client is rejected", false, false, "<boss@partner.example>",
     "192.0.2.9", DECIDE_LOOKUP_HIT, DECIDE_REJECT, DECIDE_REJECT, DECIDE_REASON_BLOCKLISTED, "550", "5.7.1"},
    {"whitelisted network is never rejected", false, false, "<x@bad.example>", "198.51.100.20",
     DECIDE_LOOKUP_HIT, DECIDE_CONTINUE, DECIDE_CONTINUE, DECIDE_REASON_WHITELISTED, "", ""},
    {"dry-run lets a blocklisted sender through", true, false, "<spammer@bad.example>", "192.0.2.7",
     DECIDE_LOOKUP_HIT, DECIDE_CONTINUE, DECIDE_REJECT, DECIDE_REASON_BLOCKLISTED, "550", "5.7.1"},
    {"dry-run does not tempfail on store errors", true, true, "<a@good.example>", "192.0.2.8",
     DECIDE_LOOKUP_ERROR, DECIDE_CONTINUE, DECIDE_TEMPFAIL, DECIDE_REASON_STORE_ERROR, "450", "4.7.1"},
};

static void test_sender_table(void **state)
{
	fixture *f = *state;
	for (size_t i = 0; i < sizeof(sender_cases) / sizeof(sender_cases[0]); i++) {
		const sender_case *c = &sender_cases[i];
		print_message("case: %s\n", c->name);
		decide_policy p = f->policy;
		p.dry_run = c->dry_run;
		p.on_error_tempfail = c->on_error_tempfail;
		decide_facts facts = {
		    .front = DECIDE_FRONT_MILTER, .sender = c->sender, .client_address = c->client};
		decide_txn txn;
		decide_prepare(&p, &facts, &txn);
		decide_verdict v = decide_sender(&p, &txn, c->lookup);
		assert_int_equal(v.action, c->action);
		assert_int_equal(v.enforce_action, c->enforce_action);
		assert_int_equal(v.reason, c->reason);
		assert_string_equal(v.reply.code, c->code);
		assert_string_equal(v.reply.xcode, c->xcode);
		if (c->reason == DECIDE_REASON_BLOCKLISTED)
			assert_string_equal(v.reply.text, "Sender is blocklisted after mail to a spamtrap");
	}
}

/* ---- trap check at RCPT TO ---- */

typedef struct rcpt_case {
	const char *name;
	decide_front front;
	trap_action action;
	on_mixed_policy on_mixed;
	bool dry_run;
	const char *sender, *recipient;
	decide_action expect, enforce;
	decide_reason reason;
	const char *code, *xcode, *trap;
	bool record;
} rcpt_case;

#define P DECIDE_FRONT_POLICY
#define M DECIDE_FRONT_MILTER
#define SPAMMER "<spammer@bad.example>"

static const rcpt_case rcpt_cases[] = {
    {"policy discard, deliver-others: 550 5.1.1 unknown user", P, TRAP_ACTION_DISCARD,
     ON_MIXED_DELIVER_OTHERS, false, SPAMMER, "<trap@example.com>", DECIDE_REJECT, DECIDE_REJECT,
     DECIDE_REASON_TRAP, "550", "5.1.1", "trap@example.com", true},
    {"policy discard, discard-all: DISCARD", P, TRAP_ACTION_DISCARD, ON_MIXED_DISCARD_ALL, false, SPAMMER,
     "<trap@example.com>", DECIDE_DISCARD, DECIDE_DISCARD, DECIDE_REASON_TRAP, "", "", "trap@example.com",
     true},
    {"milter discard: accept, drop the copy later", M, TRAP_ACTION_DISCARD, ON_MIXED_DELIVER_OTHERS, false,
     SPAMMER, "<trap@example.com>", DECIDE_DROP_COPY, DECIDE_DROP_COPY, DECIDE_REASON_TRAP, "", "",
     "trap@example.com", true},
    {"milter discard, discard-all: still drop at end of message", M, TRAP_ACTION_DISCARD,
     ON_MIXED_DISCARD_ALL, false, SPAMMER, "<trap@example.com>", DECIDE_DROP_COPY, DECIDE_DROP_COPY,
     DECIDE_REASON_TRAP, "", "", "trap@example.com", true},
    {"policy reject: 550 5.7.1", P, TRAP_ACTION_REJECT, ON_MIXED_DELIVER_OTHERS, false, SPAMMER,
     "<trap@example.com>", DECIDE_REJECT, DECIDE_REJECT, DECIDE_REASON_TRAP, "550", "5.7.1",
     "trap@example.com", true},
    {"milter reject: 550 5.7.1", M, TRAP_ACTION_REJECT, ON_MIXED_DELIVER_OTHERS, false, SPAMMER,
     "<trap@example.com>", DECIDE_REJECT, DECIDE_REJECT, DECIDE_REASON_TRAP, "550", "5.7.1",
     "trap@example.com", true},
    {"accept delivers but records", P, TRAP_ACTION_ACCEPT, ON_MIXED_DELIVER_OTHERS, false, SPAMMER,
     "<trap@example.com>", DECIDE_CONTINUE, DECIDE_CONTINUE, DECIDE_REASON_TRAP, "", "", "trap@example.com",
     true},
    {"dry-run continues but records", M, TRAP_ACTION_DISCARD, ON_MIXED_DELIVER_OTHERS, true, SPAMMER,
     "<trap@example.com>", DECIDE_CONTINUE, DECIDE_DROP_COPY, DECIDE_REASON_TRAP, "", "", "trap@example.com",
     true},
    {"dry-run policy reject continues", P, TRAP_ACTION_REJECT, ON_MIXED_DELIVER_OTHERS, true, SPAMMER,
     "trap@example.com", DECIDE_CONTINUE, DECIDE_REJECT, DECIDE_REASON_TRAP, "550", "5.7.1",
     "trap@example.com", true},
    {"ordinary recipient: nothing known", P, TRAP_ACTION_DISCARD, ON_MIXED_DELIVER_OTHERS, false, SPAMMER,
     "<user@example.com>", DECIDE_CONTINUE, DECIDE_CONTINUE, DECIDE_REASON_NONE, "", "", "", false},
    {"forged whitelisted sender hitting a trap: trap action, client recorded", P, TRAP_ACTION_DISCARD,
     ON_MIXED_DELIVER_OTHERS, false, "<news@example.org>", "<trap@example.com>", DECIDE_REJECT, DECIDE_REJECT,
     DECIDE_REASON_TRAP, "550", "5.1.1", "trap@example.com", true},
    {"bounce to a trap, null_sender ignore: trap action, nothing recorded", P, TRAP_ACTION_DISCARD,
     ON_MIXED_DELIVER_OTHERS, false, "<>", "<trap@example.com>", DECIDE_REJECT, DECIDE_REJECT,
     DECIDE_REASON_TRAP, "550", "5.1.1", "trap@example.com", false},
    {"milter bounce to a trap, null_sender ignore: copy dropped, nothing recorded", M, TRAP_ACTION_DISCARD,
     ON_MIXED_DELIVER_OTHERS, false, "", "<trap@example.com>", DECIDE_DROP_COPY, DECIDE_DROP_COPY,
     DECIDE_REASON_TRAP, "", "", "trap@example.com", false},
    {"extension and case are ignored", P, TRAP_ACTION_REJECT, ON_MIXED_DELIVER_OTHERS, false, SPAMMER,
     "<TRAP+News@Example.COM>", DECIDE_REJECT, DECIDE_REJECT, DECIDE_REASON_TRAP, "550", "5.7.1",
     "trap@example.com", true},
    {"whole trap domain", M, TRAP_ACTION_REJECT, ON_MIXED_DELIVER_OTHERS, false, SPAMMER,
     "<anyone@trap.example.net>", DECIDE_REJECT, DECIDE_REJECT, DECIDE_REASON_TRAP, "550", "5.7.1",
     "@trap.example.net", true},
    {"pattern trap", M, TRAP_ACTION_REJECT, ON_MIXED_DELIVER_OTHERS, false, SPAMMER, "<spammaster@x.example>",
     DECIDE_REJECT, DECIDE_REJECT, DECIDE_REASON_TRAP, "550", "5.7.1", "/^spam(master|trap)?@/", true},
};

static void test_recipient_table(void **state)
{
	fixture *f = *state;
	for (size_t i = 0; i < sizeof(rcpt_cases) / sizeof(rcpt_cases[0]); i++) {
		const rcpt_case *c = &rcpt_cases[i];
		print_message("case: %s\n", c->name);
		decide_policy p = f->policy;
		p.action = c->action;
		p.on_mixed = c->on_mixed;
		p.dry_run = c->dry_run;
		decide_facts facts = {.front = c->front,
		                      .sender = c->sender,
		                      .client_address = "192.0.2.7",
		                      .recipient = c->recipient};
		decide_txn txn;
		decide_prepare(&p, &facts, &txn);
		decide_verdict v = decide_recipient(&p, &txn, &facts);
		assert_int_equal(v.action, c->expect);
		assert_int_equal(v.enforce_action, c->enforce);
		assert_int_equal(v.reason, c->reason);
		assert_string_equal(v.reply.code, c->code);
		assert_string_equal(v.reply.xcode, c->xcode);
		assert_string_equal(v.trap, c->trap);
		assert_int_equal(v.record, c->record);
	}
}

/* ---- which keys a transaction has ---- */

#define LONG_NAME                                                                                            \
	"01234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567" \
	"89"                                                                                                 \
	"01234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567" \
	"89"                                                                                                 \
	"0123456789012345678901234567890123456789012345678901234567890123456789"

typedef struct keys_case {
	const char *name;
	unsigned keys, ipv4_prefix, ipv6_prefix;
	const char *sender, *client, *sasl, *helo;
	const char *record[DECIDE_MAX_RECORD]; /* NULL-terminated */
} keys_case;

static const keys_case keys_cases[] = {
    {"sender and client",
     DECIDE_KEY_SENDER | DECIDE_KEY_CLIENT_ADDRESS,
     32,
     64,
     "<A@Bad.Example>",
     "192.0.2.7",
     NULL,
     NULL,
     {"a@bad.example", "192.0.2.7"}},
    {"null sender records nothing (traps.null_sender ignore)",
     DECIDE_KEY_SENDER | DECIDE_KEY_CLIENT_ADDRESS | DECIDE_KEY_SASL_USERNAME | DECIDE_KEY_HELO_NAME,
     32,
     64,
     "<>",
     "192.0.2.7",
     "joe",
     "mx.bounce.example",
     {NULL}},
    {"null sender has no domain key",
     DECIDE_KEY_SENDER | DECIDE_KEY_SENDER_DOMAIN,
     32,
     64,
     "",
     "192.0.2.7",
     NULL,
     NULL,
     {NULL}},
    {"SASL client: no client address, sasl key when configured",
     DECIDE_KEY_SENDER | DECIDE_KEY_CLIENT_ADDRESS | DECIDE_KEY_SASL_USERNAME,
     32,
     64,
     "<a@b.example>",
     "192.0.2.7",
     "joe",
     NULL,
     {"a@b.example", "sasl:joe"}},
    {"SASL client without the sasl key",
     DECIDE_KEY_CLIENT_ADDRESS,
     32,
     64,
     "<a@b.example>",
     "192.0.2.7",
     "joe",
     NULL,
     {NULL}},
    {"IPv4 aggregated to /24",
     DECIDE_KEY_CLIENT_ADDRESS,
     24,
     64,
     "<a@b.example>",
     "192.0.2.77",
     NULL,
     NULL,
     {"192.0.2.0/24"}},
    {"IPv6 aggregated to /64",
     DECIDE_KEY_CLIENT_ADDRESS,
     32,
     64,
     "<a@b.example>",
     "2001:db8:1:2:3:4:5:6",
     NULL,
     NULL,
     {"2001:db8:1:2::/64"}},
    {"IPv6 at /128 is the host",
     DECIDE_KEY_CLIENT_ADDRESS,
     32,
     128,
     "<a@b.example>",
     "IPv6:2001:db8::7",
     NULL,
     NULL,
     {"2001:db8::7"}},
    {"loopback clients are never blocklisted",
     DECIDE_KEY_CLIENT_ADDRESS | DECIDE_KEY_SENDER,
     32,
     64,
     "<a@b.example>",
     "127.0.0.1",
     NULL,
     NULL,
     {"a@b.example"}},
    {"domain and helo keys, lowercased",
     DECIDE_KEY_SENDER_DOMAIN | DECIDE_KEY_HELO_NAME,
     32,
     64,
     "<a@B.Example>",
     "192.0.2.7",
     NULL,
     "MX.Bad.Example",
     {"@b.example", "helo:mx.bad.example"}},
    {"unknown client address",
     DECIDE_KEY_CLIENT_ADDRESS | DECIDE_KEY_SENDER,
     32,
     64,
     "<a@b.example>",
     "unknown",
     NULL,
     NULL,
     {"a@b.example"}},
    {"invalid sender is not a key",
     DECIDE_KEY_SENDER,
     32,
     64,
     "<a@b\x01.example>",
     "192.0.2.7",
     NULL,
     NULL,
     {NULL}},
};

static void test_keys_table(void **state)
{
	fixture *f = *state;
	for (size_t i = 0; i < sizeof(keys_cases) / sizeof(keys_cases[0]); i++) {
		const keys_case *c = &keys_cases[i];
		print_message("case: %s\n", c->name);
		decide_policy p = f->policy;
		p.keys = c->keys;
		p.ipv4_prefix = c->ipv4_prefix;
		p.ipv6_prefix = c->ipv6_prefix;
		decide_facts facts = {.front = DECIDE_FRONT_POLICY,
		                      .sender = c->sender,
		                      .client_address = c->client,
		                      .sasl_username = c->sasl,
		                      .helo = c->helo};
		decide_txn txn;
		decide_prepare(&p, &facts, &txn);
		size_t n = 0;
		while (n < DECIDE_MAX_RECORD && c->record[n])
			n++;
		assert_int_equal(txn.nrecord, n);
		for (size_t k = 0; k < n; k++)
			assert_string_equal(txn.record[k], c->record[k]);
	}
}

static bool has_lookup(const decide_txn *txn, const char *key)
{
	for (size_t i = 0; key && i < txn->nlookup; i++)
		if (strcmp(txn->lookup[i], key) == 0)
			return true;
	return false;
}

static bool has_key(const lookup_list *l, const char *key)
{
	for (size_t i = 0; i < l->k.n; i++)
		if (strcmp(l->k.key[i], key) == 0)
			return true;
	return false;
}

/* ---- a sender domain waits for client networks ---- */

typedef struct domain_case {
	const char *name;
	unsigned min_networks, keys, ipv4_prefix;
	const char *sender, *client;
	const char *domain_key, *domain_set, *domain_net; /* NULL: none */
} domain_case;

#define ALL_KEYS (DECIDE_KEY_SENDER | DECIDE_KEY_CLIENT_ADDRESS | DECIDE_KEY_SENDER_DOMAIN)

static const domain_case domain_cases[] = {
    {"IPv4 client counts by its /24", 3, ALL_KEYS, 32, "<x@GMail.com>", "192.0.2.77", "@gmail.com",
     "sender_domain:gmail.com", "192.0.2.0/24"},
    {"/24 whatever ipv4_prefix says", 3, ALL_KEYS, 28, "<x@gmail.com>", "192.0.2.77", "@gmail.com",
     "sender_domain:gmail.com", "192.0.2.0/24"},
    {"IPv6 client counts by its /32", 2, ALL_KEYS, 32, "<x@gmail.com>", "IPv6:2001:db8:1:2::5", "@gmail.com",
     "sender_domain:gmail.com", "2001:db8::/32"},
    {"IPv4-mapped IPv6 counts as IPv4", 3, ALL_KEYS, 32, "<x@gmail.com>", "::ffff:192.0.2.9", "@gmail.com",
     "sender_domain:gmail.com", "192.0.2.0/24"},
    {"loopback never counts", 3, ALL_KEYS, 32, "<x@gmail.com>", "127.0.0.1", "@gmail.com",
     "sender_domain:gmail.com", NULL},
    {"no client address never counts", 3, ALL_KEYS, 32, "<x@gmail.com>", "unknown", "@gmail.com",
     "sender_domain:gmail.com", NULL},
    {"min 1 lists at once", 1, ALL_KEYS, 32, "<x@gmail.com>", "192.0.2.77", NULL, NULL, NULL},
    {"min 0 (unset) lists at once", 0, ALL_KEYS, 32, "<x@gmail.com>", "192.0.2.77", NULL, NULL, NULL},
    {"no sender_domain key", 3, DECIDE_KEY_SENDER | DECIDE_KEY_CLIENT_ADDRESS, 32, "<x@gmail.com>",
     "192.0.2.77", NULL, NULL, NULL},
    {"null sender has no domain", 3, ALL_KEYS, 32, "<>", "192.0.2.77", NULL, NULL, NULL},
};

static void assert_str_or_null(const char *got, const char *want)
{
	if (!want) {
		assert_null(got);
	} else {
		assert_non_null(got);
		assert_string_equal(got, want);
	}
}

static bool has_record(const char *const *keys, size_t n, const char *key)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(keys[i], key) == 0)
			return true;
	return false;
}

static void test_domain_count_table(void **state)
{
	fixture *f = *state;
	for (size_t i = 0; i < sizeof(domain_cases) / sizeof(domain_cases[0]); i++) {
		const domain_case *c = &domain_cases[i];
		print_message("case: %s\n", c->name);
		decide_policy p = f->policy;
		p.keys = c->keys;
		p.ipv4_prefix = c->ipv4_prefix;
		p.domain_min_networks = c->min_networks;
		decide_facts facts = {
		    .front = DECIDE_FRONT_POLICY, .sender = c->sender, .client_address = c->client};
		decide_txn txn;
		decide_prepare(&p, &facts, &txn);
		assert_str_or_null(txn.domain_key, c->domain_key);
		assert_str_or_null(txn.domain_set, c->domain_set);
		assert_str_or_null(txn.domain_net, c->domain_net);
		assert_int_equal(decide_counts_domain(&txn), c->domain_net != NULL);
	}
}

/* The domain is recorded only when the networks counted reach the minimum; the other keys always. */
static void test_domain_record_keys(void **state)
{
	fixture *f = *state;
	decide_policy p = f->policy;
	p.keys = ALL_KEYS;
	p.domain_min_networks = 3;
	decide_facts facts = {
	    .front = DECIDE_FRONT_POLICY, .sender = "<x@gmail.com>", .client_address = "192.0.2.77"};
	decide_txn txn;
	const char *keys[DECIDE_MAX_RECORD];
	decide_prepare(&p, &facts, &txn);
	assert_int_equal(txn.nrecord, 3);
	for (uint64_t networks = 0; networks <= 4; networks++) {
		size_t n = decide_record_keys(&p, &txn, networks, keys);
		assert_int_equal(n, networks >= 3 ? 3 : 2);
		assert_true(has_record(keys, n, "x@gmail.com"));
		assert_true(has_record(keys, n, "192.0.2.77"));
		assert_int_equal(has_record(keys, n, "@gmail.com"), networks >= 3);
	}
	/* A trap verdict records (the engine counts first). */
	facts.recipient = "trap@example.com";
	assert_true(decide_recipient(&p, &txn, &facts).record);

	/* sender_domain alone: the hit records nothing until the count is reached. */
	p.keys = DECIDE_KEY_SENDER_DOMAIN;
	decide_prepare(&p, &facts, &txn);
	assert_true(decide_recipient(&p, &txn, &facts).record);
	assert_int_equal(decide_record_keys(&p, &txn, 2, keys), 0);
	assert_int_equal(decide_record_keys(&p, &txn, 3, keys), 1);
	assert_string_equal(keys[0], "@gmail.com");

	/* min 1: today's behaviour, the domain with the first hit, counted or not. */
	p.domain_min_networks = 1;
	facts.client_address = "127.0.0.1";
	decide_prepare(&p, &facts, &txn);
	assert_false(decide_counts_domain(&txn));
	assert_int_equal(decide_record_keys(&p, &txn, 0, keys), 1);
	assert_string_equal(keys[0], "@gmail.com");
}

/*
 * SPEC "Checks" 3, end to end through the core: which keys a transaction
 * with a whitelisted sender looks up, what a blocklist hit on them does at
 * MAIL FROM and what its trap hit does.
 */
typedef struct wl_case {
	const char *name;
	const char *sender, *client, *sasl;
	bool sender_verified, sasl_key; /* sasl_key: blocklist.keys has sasl_username */
	whitelist_match whole, sender_match;
	bool trusted;
	bool sender_keys; /* sender and @domain among the lookup keys */
	bool client_keys; /* the client's networks among the lookup keys */
	decide_action mail_action;
	decide_action trap_action;
	decide_reason trap_reason;
} wl_case;

static const wl_case wl_cases[] = {
    {"forged whitelisted domain: client checked, sender keys not", "<ceo@example.org>", "192.0.2.9", NULL,
     false, false, WHITELIST_NONE, WHITELIST_SENDER_DOMAIN, false, false, true, DECIDE_REJECT, DECIDE_REJECT,
     DECIDE_REASON_TRAP},
    {"forged whitelisted address: client checked, sender keys not", "<boss@partner.example>", "192.0.2.9",
     NULL, false, false, WHITELIST_NONE, WHITELIST_SENDER_ADDRESS, false, false, true, DECIDE_REJECT,
     DECIDE_REJECT, DECIDE_REASON_TRAP},
    /* The trap recipient still gets traps.action (its copy only): nothing to record. */
    {"authenticated whitelisted domain, no sasl key: nothing recorded", "<ceo@example.org>", "192.0.2.9",
     "ceo", false, false, WHITELIST_NONE, WHITELIST_SENDER_DOMAIN, true, false, false, DECIDE_REJECT,
     DECIDE_REJECT, DECIDE_REASON_TRAP},
    /* The account that verifies the sender cannot vouch for itself (a stolen password). */
    {"authenticated whitelisted domain, sasl key: the account is judged", "<ceo@example.org>", "192.0.2.9",
     "ceo", false, true, WHITELIST_NONE, WHITELIST_SENDER_DOMAIN, true, false, false, DECIDE_REJECT,
     DECIDE_REJECT, DECIDE_REASON_TRAP},
    {"verified whitelisted domain: nothing judged or recorded", "<ceo@example.org>", "192.0.2.9", NULL, true,
     true, WHITELIST_NONE, WHITELIST_SENDER_DOMAIN, true, false, false, DECIDE_CONTINUE, DECIDE_REJECT,
     DECIDE_REASON_TRAP},
    {"whitelisted network: whole transaction exempt", "<x@bad.example>", "198.51.100.20", "joe", false, true,
     WHITELIST_CLIENT_NETWORK, WHITELIST_NONE, false, true, true, DECIDE_CONTINUE, DECIDE_CONTINUE,
     DECIDE_REASON_WHITELISTED},
    {"authenticated, not whitelisted: nothing exempt", "<x@bad.example>", "192.0.2.9", "joe", false, true,
     WHITELIST_NONE, WHITELIST_NONE, false, true, true, DECIDE_REJECT, DECIDE_REJECT, DECIDE_REASON_TRAP},
    /* An account that makes no key could not be judged: it does not vouch either. */
    {"SASL name that makes no key does not verify", "<ceo@example.org>", "192.0.2.9", "caf\xe9", false, true,
     WHITELIST_NONE, WHITELIST_SENDER_DOMAIN, false, false, true, DECIDE_REJECT, DECIDE_REJECT,
     DECIDE_REASON_TRAP},
    {"empty SASL name does not verify", "<ceo@example.org>", "192.0.2.9", "", false, false, WHITELIST_NONE,
     WHITELIST_SENDER_DOMAIN, false, false, true, DECIDE_REJECT, DECIDE_REJECT, DECIDE_REASON_TRAP},
};

static void test_whitelist_scope(void **state)
{
	fixture *f = *state;
	for (size_t i = 0; i < sizeof(wl_cases) / sizeof(wl_cases[0]); i++) {
		const wl_case *c = &wl_cases[i];
		print_message("case: %s\n", c->name);
		decide_policy p = f->policy;
		p.keys = DECIDE_KEY_SENDER | DECIDE_KEY_CLIENT_ADDRESS | DECIDE_KEY_SENDER_DOMAIN |
		         (c->sasl_key ? DECIDE_KEY_SASL_USERNAME : 0);
		p.action = TRAP_ACTION_REJECT;
		decide_facts facts = {.front = DECIDE_FRONT_POLICY,
		                      .sender = c->sender,
		                      .client_address = c->client,
		                      .sasl_username = c->sasl,
		                      .sender_verified = c->sender_verified,
		                      .recipient = "<trap@example.com>"};
		decide_txn txn;
		decide_prepare(&p, &facts, &txn);
		assert_int_equal(txn.whitelisted, c->whole);
		assert_int_equal(txn.sender_whitelisted, c->sender_match);
		assert_int_equal(txn.sender_trusted, c->trusted);
		assert_int_equal(has_lookup(&txn, txn.sender), c->sender_keys);
		assert_int_equal(has_lookup(&txn, strchr(txn.sender, '@')), c->sender_keys);
		static lookup_list l;
		lookup_of(&p, &txn, NULL, &l);
		assert_int_equal(has_key(&l, c->client), c->client_keys);
		/* An account that makes a key is always judged unless its network is whitelisted. */
		char sasl_key[64];
		if (c->sasl && key_sasl(c->sasl, sasl_key, sizeof(sasl_key)) > 0) {
			assert_true(has_lookup(&txn, sasl_key));
			bool recorded = false;
			for (size_t k = 0; k < txn.nrecord; k++)
				recorded |= strcmp(txn.record[k], sasl_key) == 0;
			assert_int_equal(recorded, c->sasl_key);
		}
		for (size_t k = 0; k < txn.nrecord; k++) {
			if (!c->sender_keys) {
				assert_string_not_equal(txn.record[k], txn.sender);
				assert_true(txn.record[k][0] != '@');
			}
			if (c->trusted) /* only the account */
				assert_true(strncmp(txn.record[k], "sasl:", 5) == 0);
		}
		decide_verdict s = decide_sender(&p, &txn, DECIDE_LOOKUP_HIT);
		assert_int_equal(s.action, c->mail_action);
		if (c->whole)
			assert_int_equal(s.reason, DECIDE_REASON_WHITELISTED);
		else if (c->mail_action == DECIDE_REJECT)
			assert_int_equal(s.reason, DECIDE_REASON_BLOCKLISTED);
		decide_verdict v = decide_recipient(&p, &txn, &facts);
		assert_int_equal(v.action, c->trap_action);
		assert_int_equal(v.reason, c->trap_reason);
		assert_int_equal(v.record, c->trap_reason == DECIDE_REASON_TRAP && txn.nrecord > 0);
	}
}

/* traps.null_sender client: a bounce records the client, SASL and HELO keys, never an address key. */
static void test_null_sender_client(void **state)
{
	fixture *f = *state;
	decide_policy p = f->policy;
	p.keys =
	    DECIDE_KEY_SENDER | DECIDE_KEY_CLIENT_ADDRESS | DECIDE_KEY_SENDER_DOMAIN | DECIDE_KEY_HELO_NAME;
	p.action = TRAP_ACTION_REJECT;
	p.null_sender = NULL_SENDER_CLIENT;
	decide_facts facts = {.front = DECIDE_FRONT_MILTER,
	                      .sender = "<>",
	                      .client_address = "192.0.2.7",
	                      .helo = "mx.bounce.example",
	                      .recipient = "<trap@example.com>"};
	decide_txn txn;
	decide_prepare(&p, &facts, &txn);
	assert_int_equal(txn.nrecord, 2);
	assert_string_equal(txn.record[0], "192.0.2.7");
	assert_string_equal(txn.record[1], "helo:mx.bounce.example");
	decide_verdict v = decide_recipient(&p, &txn, &facts);
	assert_int_equal(v.action, DECIDE_REJECT);
	assert_true(v.record);

	/* The default, ignore: the same trap hit is still rejected, and records nothing. */
	p.null_sender = NULL_SENDER_IGNORE;
	decide_prepare(&p, &facts, &txn);
	assert_int_equal(txn.nrecord, 0);
	v = decide_recipient(&p, &txn, &facts);
	assert_int_equal(v.action, DECIDE_REJECT);
	assert_int_equal(v.reason, DECIDE_REASON_TRAP);
	assert_string_equal(v.trap, "trap@example.com");
	assert_false(v.record);
}

static void test_lookup_keys_cover_networks(void **state)
{
	fixture *f = *state;
	decide_policy p = f->policy;
	p.ipv4_prefix = 32;
	decide_facts facts = {.sender = "<a@b.example>",
	                      .client_address = "192.0.2.77",
	                      .sasl_username = "joe",
	                      .helo = "mx.b.example"};
	decide_txn txn;
	static lookup_list l;
	decide_prepare(&p, &facts, &txn);
	lookup_of(&p, &txn, NULL, &l);
	/* sender, sasl, 25 IPv4 lengths (/32../8), domain, helo */
	assert_int_equal(l.k.n, 29);
	assert_string_equal(l.k.key[0], "a@b.example");
	assert_string_equal(l.k.key[1], "sasl:joe");
	assert_string_equal(l.k.key[2], "192.0.2.77");
	assert_true(has_key(&l, "192.0.2.0/24"));
	assert_true(has_key(&l, "192.0.0.0/16"));
	assert_true(has_key(&l, "192.0.0.0/8"));
	assert_true(has_key(&l, "@b.example"));
	assert_true(has_key(&l, "helo:mx.b.example"));

	p.ipv6_prefix = 62; /* not a nibble boundary: still looked up, in order */
	facts.client_address = "2001:db8:1:2:3:4:5:6";
	decide_prepare(&p, &facts, &txn);
	lookup_of(&p, &txn, NULL, &l);
	assert_string_equal(l.k.key[2], "2001:db8:1:2:3:4:5:6");
	assert_true(has_key(&l, "2001:db8:1:2::/64"));
	assert_true(has_key(&l, "2001:db8:1::/60"));
	assert_true(has_key(&l, "2001:db8:1::/62"));
	assert_true(has_key(&l, "2001:db8::/32"));
	assert_true(l.k.n <= NETKEYS_MAX);
}

/*
 * Each lookup key's lookup_netlen is what its text says: a key with "/LEN"
 * is a network of that length, IPv6 when it has a ':'; others have none.
 */
static void assert_netlens_match(const lookup_list *l)
{
	for (size_t i = 0; i < l->k.n; i++) {
		const char *key = l->k.key[i], *slash = strchr(key, '/');
		int16_t want = NETKEYS_NONE;

		if (slash && !strchr(key, '@') && strncmp(key, "helo:", 5) != 0 &&
		    strncmp(key, "sasl:", 5) != 0)
			want = NETKEYS_LEN(strchr(key, ':') ? 6 : 4, atoi(slash + 1));
		if (l->k.netlen[i] != want)
			fail_msg("key %zu %s: network length %d, expected %d", i, key, l->k.netlen[i], want);
	}
}

/* The lengths of odd configured prefixes, an IPv4-mapped client, names with a '/' in them. */
static void test_lookup_netlens(void **state)
{
	static const struct {
		const char *client, *helo, *sasl;
		unsigned v4, v6;
	} cases[] = {
	    {"192.0.2.77", "mx/24.example", "joe/8", 24, 64},
	    {"192.0.2.77", NULL, NULL, 32, 64},
	    {"198.51.100.1", NULL, NULL, 7, 62},
	    {"2001:db8::5", "a", "b", 24, 62},
	    {"2001:db8::5", NULL, NULL, 24, 128},
	    {"::ffff:192.0.2.9", NULL, NULL, 26, 48},
	    {"127.0.0.1", "x", NULL, 24, 64},
	    {"unknown", NULL, NULL, 24, 64},
	};
	fixture *f = *state;
	decide_txn txn;
	static lookup_list l;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		decide_policy p = f->policy;
		decide_facts facts = {.sender = "<a/1@b.example>",
		                      .client_address = cases[i].client,
		                      .helo = cases[i].helo,
		                      .sasl_username = cases[i].sasl};
		p.ipv4_prefix = cases[i].v4;
		p.ipv6_prefix = cases[i].v6;
		decide_prepare(&p, &facts, &txn);
		lookup_of(&p, &txn, NULL, &l);
		assert_netlens_match(&l);
	}
	assert_int_equal(l.k.n, 2); /* sender, domain: no client keys for "unknown" */
}

static uint32_t xorshift(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

/* The network keys, written straight into the key buffer, are addr_net_format's text at every length. */
static void test_ipv4_keys_match_addr_format(void **state)
{
	fixture *f = *state;
	decide_policy p = f->policy;
	uint32_t x = 2463534242u; /* many addresses, reproducibly */
	for (int n = 0; n < 20000; n++) {
		xorshift(&x);
		char client[16];
		snprintf(client, sizeof(client), "%u.%u.%u.%u", x >> 24, (x >> 16) & 255, (x >> 8) & 255,
		         x & 255);
		decide_facts facts = {.client_address = client};
		decide_txn txn;
		static lookup_list l;
		decide_prepare(&p, &facts, &txn);
		lookup_of(&p, &txn, NULL, &l);
		if (x >> 24 == 127)
			continue; /* loopback: no keys */
		addr_ip ip;
		assert_true(addr_ip_parse(client, &ip));
		for (unsigned len = 32, i = 0; len >= 8; len--, i++) {
			addr_net net = addr_net_of(&ip, len);
			char want[ADDR_NET_STRLEN];
			addr_net_format(&net, want, sizeof(want));
			assert_string_equal(l.k.key[i], want);
		}
		assert_netlens_match(&l);
	}
}

/*
 * A random IPv6 client in full form: each group zero with probability
 * 3/8 (so runs of zero groups of every length and place), else of 1 to 4
 * hex digits. Not loopback, not IPv4-mapped (that client is IPv4).
 */
static void random_ipv6(uint32_t *x, char *out, size_t outlen)
{
	unsigned g[8];
	bool head_zero;
	do {
		for (int i = 0; i < 8; i++) {
			uint32_t r = xorshift(x);
			g[i] = (r & 7) < 3 ? 0 : (r >> 8) & (0xffffu >> (4 * ((r >> 4) & 3)));
		}
		head_zero = (g[0] | g[1] | g[2] | g[3] | g[4]) == 0;
	} while (head_zero && (g[5] == 0xffff || (g[5] == 0 && g[6] == 0 && g[7] == 1)));
	snprintf(out, outlen, "%x:%x:%x:%x:%x:%x:%x:%x", g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]);
}

static void test_ipv6_keys_match_addr_format(void **state)
{
	fixture *f = *state;
	decide_policy p = f->policy;
	uint32_t x = 88172645u;
	assert_int_equal(p.ipv6_prefix % 4, 0); /* a nibble length: no key of its own */
	for (int n = 0; n < 20000; n++) {
		char client[48];
		random_ipv6(&x, client, sizeof(client));
		decide_facts facts = {.client_address = client};
		decide_txn txn;
		static lookup_list l;
		decide_prepare(&p, &facts, &txn);
		lookup_of(&p, &txn, NULL, &l);
		addr_ip ip;
		assert_true(addr_ip_parse(client, &ip));
		assert_int_equal(ip.version, 6);
		assert_int_equal(l.k.n, 29); /* /128 to /16 */
		for (unsigned len = 128, i = 0; len >= 16; len -= 4, i++) {
			addr_net net = addr_net_of(&ip, len);
			char want[ADDR_NET_STRLEN];
			addr_net_format(&net, want, sizeof(want));
			if (strcmp(l.k.key[i], want) != 0)
				fail_msg("%s /%u: key %s, expected %s", client, len, l.k.key[i], want);
		}
		assert_netlens_match(&l);
	}
}

static bool netmask_has(const netkeys_mask *m, int16_t netlen)
{
	if (netlen < 256)
		return m->v4 >> netlen & 1;
	return m->v6[(netlen - 256) / 64] >> ((netlen - 256) % 64) & 1;
}

static uint64_t random64(uint32_t *x)
{
	uint64_t hi = xorshift(x);
	return hi << 32 | xorshift(x);
}

/*
 * The keys built for the lengths present are the keys of every length with
 * the network keys of other lengths left out (the configured one and the
 * host kept), the rest byte for byte and in order; every length present,
 * and none, are cases.
 */
static void check_lens_subset(const decide_policy *p, const decide_facts *facts, const netkeys_mask *present)
{
	decide_txn txn;
	static lookup_list full, lazy;
	size_t j = 0;

	decide_prepare(p, facts, &txn);
	lookup_of(p, &txn, NULL, &full);
	lookup_of(p, &txn, present, &lazy);
	for (size_t i = 0; i < full.k.n; i++) {
		int16_t nl = full.k.netlen[i];
		bool configured =
		    nl == NETKEYS_LEN(4, p->ipv4_prefix) || nl == NETKEYS_LEN(6, p->ipv6_prefix);
		if (nl != NETKEYS_NONE && !configured && !netmask_has(present, nl))
			continue;
		if (j >= lazy.k.n || strcmp(lazy.k.key[j], full.k.key[i]) != 0 || lazy.k.netlen[j] != nl)
			fail_msg("%s: key %zu (%s) missing or out of order", facts->client_address, i,
			         full.k.key[i]);
		j++;
	}
	assert_int_equal(lazy.k.n, j);
	for (int16_t nl = 0; nl < 256 + 129; nl++)
		if ((nl <= 32 || nl >= 256) && netmask_has(present, nl))
			assert_true(netmask_has(&lazy.built, nl));
	assert_true(netmask_has(&lazy.built, NETKEYS_LEN(4, p->ipv4_prefix)));
	assert_true(netmask_has(&lazy.built, NETKEYS_LEN(6, p->ipv6_prefix)));
	assert_netlens_match(&lazy);
}

static void test_lens_subset(void **state)
{
	static const netkeys_mask all = {UINT64_MAX, {UINT64_MAX, UINT64_MAX, UINT64_MAX}};
	fixture *f = *state;
	decide_policy p = f->policy;
	uint32_t x = 362436069u;
	p.keys |= DECIDE_KEY_SENDER_DOMAIN;
	for (int n = 0; n < 20000; n++) {
		char client[48];
		netkeys_mask present = {0, {0, 0, 0}};
		if (n % 2)
			random_ipv6(&x, client, sizeof(client));
		else
			snprintf(client, sizeof(client), "%u.%u.%u.%u", xorshift(&x) % 223 + 1,
			         xorshift(&x) % 256, xorshift(&x) % 256, xorshift(&x) % 256);
		p.ipv4_prefix = 8 + xorshift(&x) % 25;
		p.ipv6_prefix = 16 + xorshift(&x) % 113;
		if (n % 5 == 1) {
			present = all;
		} else if (n % 5 != 0) { /* n % 5 == 0: nothing stored */
			present.v4 = random64(&x) & random64(&x);
			for (int i = 0; i < 3; i++)
				present.v6[i] = random64(&x) & random64(&x);
		}
		decide_facts facts = {
		    .sender = "<a@b.example>", .client_address = client, .helo = "mx.example"};
		check_lens_subset(&p, &facts, &present);
	}
}

/* With every length present, and with NULL, the keys are the same, text and all. */
static void test_lens_all_identical(void **state)
{
	static const char *const clients[] = {"192.0.2.77", "2001:db8::5", "::ffff:192.0.2.9", "unknown"};
	fixture *f = *state;

	for (size_t i = 0; i < sizeof(clients) / sizeof(clients[0]); i++) {
		decide_facts facts = {.sender = "<a@b.example>", .client_address = clients[i], .helo = "mx"};
		decide_txn txn;
		static lookup_list full, lazy;
		decide_prepare(&f->policy, &facts, &txn);
		lookup_of(&f->policy, &txn, NULL, &full);
		lookup_of(&f->policy, &txn, &netkeys_every, &lazy);
		assert_int_equal(lazy.k.buflen, full.k.buflen);
		assert_memory_equal(lazy.k.buf, full.k.buf, full.k.buflen);
		assert_int_equal(lazy.k.n, full.k.n);
		for (size_t k = 0; k < full.k.n; k++)
			assert_string_equal(lazy.k.key[k], full.k.key[k]);
		assert_memory_equal(lazy.k.netlen, full.k.netlen, full.k.n * sizeof(int16_t));
		assert_memory_equal(&lazy.built, &netkeys_every, sizeof(netkeys_every));
	}
}

/* An IPv4 client with no length stored: the host and the configured network only. */
static void test_lens_none_present(void **state)
{
	fixture *f = *state;
	decide_policy p = f->policy;
	netkeys_mask none = {0, {0, 0, 0}};
	decide_facts facts = {.sender = "<a@b.example>", .client_address = "192.0.2.77"};
	decide_txn txn;
	static lookup_list l;

	p.ipv4_prefix = 24;
	decide_prepare(&p, &facts, &txn);
	lookup_of(&p, &txn, &none, &l);
	assert_int_equal(l.k.n, 4);
	assert_string_equal(l.k.key[0], "a@b.example");
	assert_string_equal(l.k.key[1], "192.0.2.77");
	assert_string_equal(l.k.key[2], "192.0.2.0/24");
	assert_string_equal(l.k.key[3], "@b.example");
	none.v4 = UINT64_C(1) << 16;
	lookup_of(&p, &txn, &none, &l);
	assert_int_equal(l.k.n, 5);
	assert_string_equal(l.k.key[3], "192.0.0.0/16");
}

static void test_end_of_message(void **state)
{
	fixture *f = *state;
	static const struct {
		const char *name;
		on_mixed_policy on_mixed;
		bool dry_run;
		size_t ntraps, nothers;
		decide_action expect;
	} cases[] = {
	    {"no traps", ON_MIXED_DELIVER_OTHERS, false, 0, 3, DECIDE_CONTINUE},
	    {"only traps: discard", ON_MIXED_DELIVER_OTHERS, false, 2, 0, DECIDE_DISCARD},
	    {"mixed, deliver-others: remove traps", ON_MIXED_DELIVER_OTHERS, false, 1, 2, DECIDE_DROP_COPY},
	    {"mixed, discard-all: discard", ON_MIXED_DISCARD_ALL, false, 1, 2, DECIDE_DISCARD},
	    {"dry-run never drops", ON_MIXED_DISCARD_ALL, true, 1, 0, DECIDE_CONTINUE},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		print_message("case: %s\n", cases[i].name);
		decide_policy p = f->policy;
		decide_facts facts = {.front = DECIDE_FRONT_MILTER};
		check_msg msg = {.ntraps = (unsigned)cases[i].ntraps, .nothers = (unsigned)cases[i].nothers};
		p.on_mixed = cases[i].on_mixed;
		p.dry_run = cases[i].dry_run;
		decide_verdict v =
		    run_check(&p, CHECK_STAGE_EOM, CHECKS_EVERY, -1, &facts, NULL, &msg, DECIDE_LOOKUP_MISS);
		assert_int_equal(v.action, cases[i].expect);
	}
}

static void test_store_failed(void **state)
{
	fixture *f = *state;
	decide_policy p = f->policy;
	decide_facts facts = {
	    .front = DECIDE_FRONT_MILTER, .sender = SPAMMER, .recipient = "<trap@example.com>"};
	decide_txn txn;
	decide_prepare(&p, &facts, &txn);
	decide_verdict hit = decide_recipient(&p, &txn, &facts);
	assert_int_equal(hit.action, DECIDE_DROP_COPY);

	check_verdict kept = hit.v;
	check_trap.store_failed(&p, &kept);
	assert_int_equal(kept.action, DECIDE_DROP_COPY); /* on_error accept: the trap copy is still dropped */
	assert_non_null(strstr(kept.detail, "blocklisted=none (store error)"));

	p.on_error_tempfail = true;
	check_verdict temp = hit.v;
	check_trap.store_failed(&p, &temp);
	assert_int_equal(temp.action, DECIDE_TEMPFAIL);
	assert_string_equal(temp.reply.code, "450");
	assert_non_null(strstr(temp.detail, "trap=trap@example.com"));
}

static void test_smtp_reply_parse(void **state)
{
	(void)state;
	static const struct {
		const char *name, *in;
		bool ok;
		const char *code, *xcode, *text;
	} cases[] = {
	    {"full reply", "550 5.7.1 Go away", true, "550", "5.7.1", "Go away"},
	    {"no enhanced code", "554 Go away now", true, "554", "", "Go away now"},
	    {"temporary", "451 4.3.0 Later", true, "451", "4.3.0", "Later"},
	    {"xcode class must match", "550 4.7.1 Mismatch", true, "550", "", "4.7.1 Mismatch"},
	    {"2xx is not a rejection", "250 2.0.0 Ok", false, NULL, NULL, NULL},
	    {"no text", "550 5.7.1", false, NULL, NULL, NULL},
	    {"garbage", "reject please", false, NULL, NULL, NULL},
	    {"control character", "550 5.7.1 a\r\nb", false, NULL, NULL, NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		print_message("case: %s\n", cases[i].name);
		smtp_reply r;
		char err[128] = "";
		assert_int_equal(smtp_reply_parse(cases[i].in, &r, err, sizeof(err)), cases[i].ok);
		if (!cases[i].ok) {
			assert_true(err[0] != '\0');
			continue;
		}
		assert_string_equal(r.code, cases[i].code);
		assert_string_equal(r.xcode, cases[i].xcode);
		assert_string_equal(r.text, cases[i].text);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_sender_table, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_recipient_table, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_keys_table, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_whitelist_scope, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_null_sender_client, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_lookup_keys_cover_networks, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_ipv4_keys_match_addr_format, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_ipv6_keys_match_addr_format, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_lookup_netlens, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_lens_subset, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_lens_all_identical, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_lens_none_present, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_end_of_message, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_store_failed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_domain_count_table, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_domain_record_keys, setup, teardown),
	    cmocka_unit_test(test_smtp_reply_parse),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
