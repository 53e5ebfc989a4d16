/*
 * The spf check and the checks that use its result, through the pipeline
 * with the plan's SPF answers written by hand (no DNS), the way the engine
 * runs a stage: plan (pipeline_plan_dns), the front end answers, the
 * transaction prepared again with the sender verified by a pass
 * (spfcheck_verified), the checks decide, the message keeps the result.
 *
 * What an attacker tries: write a whitelisted domain or a real user's
 * address in MAIL FROM (the whitelist must not trust it, a trap hit must
 * not blocklist the victim), publish "+all" to choose its greylist key,
 * and put CR/LF or quotes in MAIL FROM and HELO to forge header fields.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "check_config.h"
#include "config.h"
#include "core/checks/greylist.h"
#include "core/checks/spf.h"
#include "core/dnsplan.h"
#include "core/pipeline.h"

static char dir[] = "/tmp/spamtrapd-test-spfcheck.XXXXXX";

static config *load(const char *json, char *err, size_t errlen)
{
	return check_config_load(dir, "", NULL, "", json, err, errlen);
}

static config *cfg_of(const char *json)
{
	return check_config_must_load(dir, "", NULL, "", json);
}

/* --- one stage as the engine runs it --------------------------------------- */

#define NOT_DONE (-1) /* an answer not there by the deadline */

/* How the test's "resolver" answers: the sender's check_host() and the two probes. */
typedef struct spf_answers {
	int result;   /* enum spf_result, or NOT_DONE */
	int probe[2]; /* the same for DNSPLAN_SPF_PROBE_V4, _V6 */
	const char *explanation;
} spf_answers;
static const char *answer_reason; /* the sender's check_host() reason in the next answers, NULL: none */

typedef struct stage_out {
	bool asked_spf, asked_probes;
	dnsplan plan; /* as asked, before the answers */
	check_verdict final;
	int final_check;
	bool decided[CHECK_COUNT];
	char record[QUERY_RECORD_KEYS_MAX][QUERY_KEY_MAX]; /* the keys a trap hit blocklisted */
	size_t nrecord;
	char triplet[GREYSTEP_KEY_MAX]; /* the greylist's triplet, "" when it asked none */
	char lookup[QUERY_LOOKUP_KEYS_MAX][QUERY_KEY_MAX];
	size_t nlookup;
	bool lookup_client; /* the blocklist lookup carries the client's networks */
} stage_out;

static pipeline_run run;
static bool grey_pass_first; /* the store answers a triplet's retry that passes (X-Greylist's moment) */

static void answer_store(query *q, size_t n, stage_out *out)
{
	for (size_t i = 0; i < n; i++) {
		switch (q[i].kind) {
		case QUERY_GREYLIST:
			snprintf(out->triplet, sizeof(out->triplet), "%s", q[i].u.grey.triplet);
			q[i].status = QUERY_OK;
			q[i].u.grey.answer =
			    grey_pass_first
			        ? (greystep_out){.result = GREYSTEP_PASS_FIRST, .waited_ms = 310000}
			        : (greystep_out){.result = GREYSTEP_DEFER_NEW, .remaining_ms = 300000};
			break;
		case QUERY_DISTINCT_ADD:
			q[i].status = QUERY_OK;
			q[i].u.distinct.count = 1;
			break;
		case QUERY_BLOCKLIST_LOOKUP:
			out->nlookup = q[i].u.lookup.nkeys;
			for (size_t k = 0; k < q[i].u.lookup.nkeys; k++)
				snprintf(out->lookup[k], sizeof(out->lookup[k]), "%s", q[i].u.lookup.keys[k]);
			out->lookup_client = q[i].u.lookup.client != NULL;
			q[i].status = QUERY_NOTFOUND;
			break;
		default:
			q[i].status = QUERY_NOTFOUND;
			break;
		}
	}
}

static void answer_spf(dnsplan_spf *s, int result, const char *explanation, const char *reason)
{
	if (!s->wanted || result == NOT_DONE)
		return;
	s->done = true;
	s->result = (enum spf_result)result;
	snprintf(s->explanation, sizeof(s->explanation), "%s", explanation ? explanation : "");
	snprintf(s->reason, sizeof(s->reason), "%s", reason ? reason : "");
}

static stage_out stage_msg(const config *cfg, check_stage st, decide_facts f, check_msg *msg,
                           const spf_answers *a)
{
	static decide_txn txn;
	static dnsplan plan;
	stage_out out;
	size_t from = 0;

	memset(&out, 0, sizeof(out));
	/* engine_dns_plan */
	f.dns = NULL;
	f.sender_verified = spfcheck_verified(NULL, msg);
	decide_prepare(&cfg->decide, &f, &txn);
	pipeline_begin(&run, st, CHECKS_EVERY, &f, &txn, msg, 1700000000);
	dnsplan_init(&plan);
	pipeline_plan_dns(&cfg->pipeline, &run, &plan);
	out.plan = plan;
	out.asked_spf = plan.spf.wanted;
	out.asked_probes = plan.probe[0].wanted && plan.probe[1].wanted;
	/* the front end answers */
	if (a) {
		answer_spf(&plan.spf, a->result, a->explanation, answer_reason);
		for (int i = 0; i < DNSPLAN_SPF_PROBES; i++)
			answer_spf(&plan.probe[i], a->probe[i], NULL, NULL);
	}
	dnsplan_expire(&plan);
	/* engine_stage */
	f.dns = dnsplan_empty(&plan) ? NULL : &plan;
	f.sender_verified = spfcheck_verified(f.dns, msg);
	decide_prepare(&cfg->decide, &f, &txn);
	pipeline_begin(&run, st, CHECKS_EVERY, &f, &txn, msg, 1700000000);
	pipeline_needs(&cfg->pipeline, &run);
	answer_store(run.q, run.nq, &out);
	while (pipeline_decide(&cfg->pipeline, &run, &from))
		answer_store(run.q + from, run.nq - from, &out);
	out.final = run.final;
	out.final_check = run.final_check;
	memcpy(out.decided, run.decided, sizeof(out.decided));
	for (int i = 0; i < CHECK_COUNT; i++)
		for (size_t j = 0; j < run.effects[i].nq; j++) {
			const query *q = &run.effects[i].q[j];

			if (!pipeline_effect_applies(&cfg->pipeline, &run, i, j) ||
			    q->kind != QUERY_BLOCKLIST_RECORD)
				continue;
			for (size_t k = 0; k < q->u.record.nkeys; k++)
				snprintf(out.record[out.nrecord++], QUERY_KEY_MAX, "%s", q->u.record.keys[k]);
		}
	*msg = run.msg;
	spfcheck_remember(f.dns, msg);
	spfcheck_header_sent(&run.final, msg);
	return out;
}

/* One RCPT TO of a new message. */
static stage_out rcpt(const config *cfg, decide_facts f, const spf_answers *a)
{
	check_msg msg;

	memset(&msg, 0, sizeof(msg));
	return stage_msg(cfg, CHECK_STAGE_RCPT, f, &msg, a);
}

static decide_facts facts(const char *client, const char *sender, const char *recipient)
{
	return (decide_facts){.front = DECIDE_FRONT_POLICY,
	                      .client_address = client,
	                      .client_name = "unknown",
	                      .helo = "mx.example.org",
	                      .sender = sender,
	                      .recipient = recipient};
}

static const spf_answers PASS_NARROW = {SPF_PASS, {SPF_FAIL, SPF_FAIL}, NULL};
static const spf_answers FAIL = {SPF_FAIL, {SPF_FAIL, SPF_FAIL}, NULL};

static bool recorded(const stage_out *o, const char *key)
{
	for (size_t i = 0; i < o->nrecord; i++)
		if (strcmp(o->record[i], key) == 0)
			return true;
	return false;
}

static int setup(void **state)
{
	(void)state;
	assert_non_null(mkdtemp(dir));
	return 0;
}

static int teardown(void **state)
{
	char cmd[300];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd);
}

/* --- the whitelist: verified senders ------------------------------------- */

#define WL_CONF                                                                                              \
	"\"spf\": {\"mode\": \"enforce\", \"header\": false}, \"greylist\": {\"mode\": \"enforce\"}, "       \
	"\"whitelist\": {\"domains\": [\"example.org\"]}"

/* A whitelisted sender SPF verifies skips everything below the whitelist (here the greylist). */
static void test_whitelist_verified_by_spf(void **state)
{
	config *cfg = cfg_of(WL_CONF);
	decide_facts f = facts("198.51.100.7", "ceo@example.org", "friend@example.net");
	check_msg msg;
	stage_out o;

	(void)state;
	memset(&msg, 0, sizeof(msg));
	/* Asked at MAIL FROM already: a verified sender's client networks are not looked up there. */
	o = stage_msg(cfg, CHECK_STAGE_MAIL, f, &msg, &PASS_NARROW);
	assert_true(o.asked_spf);
	assert_string_equal(o.plan.spf.client, "198.51.100.7");
	assert_string_equal(o.plan.spf.mailfrom, "ceo@example.org");
	assert_string_equal(o.plan.spf.helo, "mx.example.org");
	assert_int_equal(o.plan.timeout_ms, 3000);
	assert_false(o.lookup_client);
	assert_int_equal(msg.spf, SPF_PASS + 1);
	/* RCPT TO: known already, not asked again; the whitelist stops the walk before the greylist */
	o = stage_msg(cfg, CHECK_STAGE_RCPT, f, &msg, NULL);
	assert_false(o.asked_spf);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(o.final_check, CHECK_ID_WHITELIST);
	assert_false(o.decided[CHECK_ID_GREYLIST]);
	assert_string_equal(o.triplet, "");
	config_unref(cfg);
}

/* The same MAIL FROM forged (SPF fail, none, no answer): not verified, greylisted, its client judged. */
static void test_whitelist_forged_sender(void **state)
{
	config *cfg = cfg_of(WL_CONF);
	const spf_answers answers[] = {FAIL,
	                               {SPF_PASS, {SPF_PASS, SPF_PASS}, NULL}, /* the domain says +all */
	                               {SPF_PASS, {NOT_DONE, SPF_FAIL}, NULL}, /* not known to be narrow */
	                               {SPF_NONE, {NOT_DONE, NOT_DONE}, NULL},
	                               {SPF_SOFTFAIL, {NOT_DONE, NOT_DONE}, NULL},
	                               {NOT_DONE, {NOT_DONE, NOT_DONE}, NULL}};

	(void)state;
	for (size_t i = 0; i < sizeof(answers) / sizeof(answers[0]); i++) {
		decide_facts f = facts("203.0.113.9", "ceo@example.org", "friend@example.net");
		check_msg msg;
		stage_out o;

		memset(&msg, 0, sizeof(msg));
		o = stage_msg(cfg, CHECK_STAGE_MAIL, f, &msg, &answers[i]);
		assert_true(o.asked_spf);
		assert_true(o.lookup_client);
		o = stage_msg(cfg, CHECK_STAGE_RCPT, f, &msg, &answers[i]);
		assert_true(o.decided[CHECK_ID_GREYLIST]);
		assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
		/* a forged sender hitting a trap: its client is recorded, the whitelisted sender is not */
		f.recipient = "trap@example.com";
		memset(&msg, 0, sizeof(msg));
		o = stage_msg(cfg, CHECK_STAGE_RCPT, f, &msg, &answers[i]);
		assert_true(recorded(&o, "203.0.113.9/32") || recorded(&o, "203.0.113.9"));
		assert_false(recorded(&o, "ceo@example.org"));
	}
	config_unref(cfg);
}

/* The SASL fix of 2c5e7c0 stays: a login verifies the sender, the account checks still run. */
static void test_whitelist_sasl_still_walks(void **state)
{
	config *cfg = cfg_of(WL_CONF ", \"ratelimit\": {\"mode\": \"enforce\", \"rules\": [{\"name\": \"r\", "
	                             "\"key\": \"sasl_username\", \"rate\": \"100/1h\"}]}");
	decide_facts f = facts("203.0.113.9", "ceo@example.org", "friend@example.net");
	stage_out o;

	(void)state;
	f.sasl_username = "alice";
	o = rcpt(cfg, f, NULL);
	assert_false(o.asked_spf); /* a login needs no SPF */
	assert_true(o.decided[CHECK_ID_RATELIMIT]);
	config_unref(cfg);
}

/* spf off: a whitelisted sender is never asked about, never verified by SPF. */
static void test_whitelist_spf_off(void **state)
{
	config *cfg =
	    cfg_of("\"greylist\": {\"mode\": \"enforce\"}, \"whitelist\": {\"domains\": [\"example.org\"]}");
	decide_facts f = facts("198.51.100.7", "ceo@example.org", "friend@example.net");
	stage_out o;

	(void)state;
	o = rcpt(cfg, f, &PASS_NARROW);
	assert_false(o.asked_spf);
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	config_unref(cfg);
}

/* --- blocklist.sender_requires -------------------------------------------- */

#define REQ_CONF                                                                                             \
	"\"spf\": {\"mode\": \"enforce\", \"header\": false}, \"blocklist\": {\"sender_requires\": "         \
	"\"spf-pass\", "                                                                                     \
	"\"keys\": [\"sender\", \"client_address\", \"sasl_username\", \"sender_domain\"], "                 \
	"\"sender_domain_min_networks\": 1}"

static void test_sender_requires_spf_pass(void **state)
{
	config *cfg = cfg_of(REQ_CONF);
	decide_facts f = facts("203.0.113.9", "victim@bank.example", "trap@example.com");
	const int not_pass[] = {SPF_FAIL,      SPF_SOFTFAIL,  SPF_NEUTRAL, SPF_NONE,
	                        SPF_TEMPERROR, SPF_PERMERROR, NOT_DONE};
	spf_answers a = PASS_NARROW;
	const spf_answers open[] = {{SPF_PASS, {SPF_PASS, SPF_FAIL}, NULL},
	                            {SPF_PASS, {SPF_FAIL, SPF_PASS}, NULL},
	                            {SPF_PASS, {SPF_FAIL, NOT_DONE}, NULL},
	                            {SPF_PASS, {SPF_TEMPERROR, SPF_FAIL}, NULL}};
	stage_out o;

	(void)state;
	/* pass: the sender is the one to blame, with its domain and its client */
	o = rcpt(cfg, f, &a);
	assert_true(o.asked_spf);
	assert_null(strstr(o.final.detail, "unverified"));
	assert_true(recorded(&o, "victim@bank.example"));
	assert_true(recorded(&o, "@bank.example"));
	assert_true(recorded(&o, "203.0.113.9/32") || recorded(&o, "203.0.113.9"));
	/* anything else: the client only */
	for (size_t i = 0; i < sizeof(not_pass) / sizeof(not_pass[0]); i++) {
		a.result = not_pass[i];
		o = rcpt(cfg, f, &a);
		assert_true(o.asked_spf);
		assert_int_equal(o.nrecord, 1);
		assert_false(recorded(&o, "victim@bank.example"));
		assert_false(recorded(&o, "@bank.example"));
		assert_non_null(strstr(o.final.detail, " sender=unverified"));
	}
	/* a pass from a record that passes the probes too (+all), or not known not to: the client only */
	for (size_t i = 0; i < sizeof(open) / sizeof(open[0]); i++) {
		o = rcpt(cfg, f, &open[i]);
		assert_true(o.asked_probes);
		assert_int_equal(o.nrecord, 1);
		assert_false(recorded(&o, "victim@bank.example"));
	}
	/* an authenticated client: its sender is verified by the login, no SPF asked */
	f.sasl_username = "alice";
	a.result = SPF_FAIL;
	o = rcpt(cfg, f, &a);
	assert_false(o.asked_spf);
	assert_true(recorded(&o, "victim@bank.example"));
	assert_true(recorded(&o, "sasl:alice"));
	/* not a trap: nothing asked (the cost is paid on trap hits only) */
	f = facts("203.0.113.9", "victim@bank.example", "friend@example.net");
	assert_false(rcpt(cfg, f, &a).asked_spf);
	config_unref(cfg);
}

/* "any" (the default): today's behaviour, the sender listed whatever SPF says, and nothing asked. */
static void test_sender_requires_any(void **state)
{
	config *cfg = cfg_of("\"spf\": {\"mode\": \"enforce\", \"header\": false}");
	decide_facts f = facts("203.0.113.9", "victim@bank.example", "trap@example.com");
	stage_out o;

	(void)state;
	o = rcpt(cfg, f, &FAIL);
	assert_false(o.asked_spf);
	assert_true(recorded(&o, "victim@bank.example"));
	config_unref(cfg);
}

static void test_sender_requires_needs_spf(void **state)
{
	char err[4096];
	config *cfg = load("\"blocklist\": {\"sender_requires\": \"spf-pass\"}", err, sizeof(err));

	(void)state;
	assert_null(cfg);
	assert_non_null(strstr(err, "blocklist.sender_requires"));
	cfg = load("\"greylist\": {\"mode\": \"enforce\", \"spf_key\": true}", err, sizeof(err));
	assert_null(cfg);
	assert_non_null(strstr(err, "greylist.spf_key"));
	cfg = load("\"blocklist\": {\"sender_requires\": \"maybe\"}", err, sizeof(err));
	assert_null(cfg);
	cfg = load("\"spf\": {\"reply\": \"450 4.7.1 no\"}", err, sizeof(err));
	assert_null(cfg);
	assert_non_null(strstr(err, "spf.reply"));
	cfg = load("\"spf\": {\"reply\": \"550 5.7.23 %{sender}\"}", err, sizeof(err));
	assert_null(cfg);
	cfg = load("\"spf\": {\"receiver\": \"mx\\r\\nX-Evil: 1\"}", err, sizeof(err));
	assert_null(cfg);
	/* shadow is enough: the fact is evaluated, only the spf check's own verdict is shadowed */
	cfg = load("\"spf\": {\"mode\": \"shadow\"}, \"blocklist\": {\"sender_requires\": \"spf-pass\"}", err,
	           sizeof(err));
	assert_non_null(cfg);
	config_unref(cfg);
}

/* --- greylist.spf_key ------------------------------------------------------ */

#define GREY_CONF                                                                                            \
	"\"spf\": {\"mode\": \"enforce\", \"header\": false}, \"greylist\": {\"mode\": \"enforce\", "        \
	"\"spf_key\": "                                                                                      \
	"true}"

static void test_spf_key_narrow_record(void **state)
{
	config *cfg = cfg_of(GREY_CONF);
	decide_facts f = facts("198.51.100.7", "news@shop.example", "friend@example.net");
	check_msg msg;
	stage_out o;

	(void)state;
	memset(&msg, 0, sizeof(msg));
	o = stage_msg(cfg, CHECK_STAGE_RCPT, f, &msg, &PASS_NARROW);
	assert_true(o.asked_spf);
	assert_true(o.asked_probes);
	assert_string_equal(o.plan.probe[0].client, DNSPLAN_SPF_PROBE_V4);
	assert_string_equal(o.plan.probe[1].client, DNSPLAN_SPF_PROBE_V6);
	assert_string_equal(o.plan.probe[0].mailfrom, "news@shop.example");
	assert_string_equal(o.plan.probe[1].helo, "mx.example.org");
	assert_string_equal(o.triplet, "spf:shop.example/news@shop.example/friend@example.net");
	assert_int_equal(msg.spf_open, CHECK_SPF_NARROW);
	/* the next recipient of the message: known, nothing asked, the same key */
	f.recipient = "other@example.net";
	o = stage_msg(cfg, CHECK_STAGE_RCPT, f, &msg, NULL);
	assert_false(o.asked_spf);
	assert_string_equal(o.triplet, "spf:shop.example/news@shop.example/other@example.net");
	/* the retry from another address the domain authorises: the same triplet */
	f = facts("192.0.2.200", "news@shop.example", "friend@example.net");
	o = rcpt(cfg, f, &PASS_NARROW);
	assert_string_equal(o.triplet, "spf:shop.example/news@shop.example/friend@example.net");
	config_unref(cfg);
}

/* +all, ip4:0.0.0.0/0, ip6:::/0: a probe passes and the network stays the key; so does any doubt. */
static void test_spf_key_open_record(void **state)
{
	config *cfg = cfg_of(GREY_CONF);
	decide_facts f = facts("198.51.100.7", "x@spammer.example", "friend@example.net");
	const spf_answers network_key[] = {
	    {SPF_PASS, {SPF_PASS, SPF_PASS}, NULL},     /* +all */
	    {SPF_PASS, {SPF_PASS, SPF_FAIL}, NULL},     /* ip4:0.0.0.0/0 */
	    {SPF_PASS, {SPF_SOFTFAIL, SPF_PASS}, NULL}, /* ip6:::/0 */
	    {SPF_PASS, {NOT_DONE, SPF_FAIL}, NULL},     /* a probe with no answer */
	    {SPF_PASS, {SPF_TEMPERROR, SPF_FAIL}, NULL}, {SPF_PASS, {SPF_PERMERROR, SPF_FAIL}, NULL},
	    {SPF_FAIL, {SPF_FAIL, SPF_FAIL}, NULL},      {SPF_NONE, {SPF_NONE, SPF_NONE}, NULL},
	    {SPF_SOFTFAIL, {SPF_FAIL, SPF_FAIL}, NULL},  {NOT_DONE, {SPF_FAIL, SPF_FAIL}, NULL},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(network_key) / sizeof(network_key[0]); i++) {
		stage_out o = rcpt(cfg, f, &network_key[i]);

		assert_true(o.asked_probes);
		assert_string_equal(o.triplet, "198.51.100.0/24/x@spammer.example/friend@example.net");
	}
	config_unref(cfg);
}

/* spf_key off (the default): SPF is not asked for the greylist. */
static void test_spf_key_off(void **state)
{
	config *cfg = cfg_of(
	    "\"spf\": {\"mode\": \"enforce\", \"header\": false}, \"greylist\": {\"mode\": \"enforce\"}");
	decide_facts f = facts("198.51.100.7", "news@shop.example", "friend@example.net");
	stage_out o;

	(void)state;
	o = rcpt(cfg, f, &PASS_NARROW);
	assert_false(o.asked_spf);
	assert_string_equal(o.triplet, "198.51.100.0/24/news@shop.example/friend@example.net");
	config_unref(cfg);
}

/* --- reject_fail ----------------------------------------------------------- */

#define REJECT_CONF "\"spf\": {\"mode\": \"enforce\", \"header\": false, \"reject_fail\": true}"

static void test_reject_fail(void **state)
{
	config *cfg = cfg_of(REJECT_CONF);
	decide_facts f = facts("203.0.113.9", "victim@bank.example", "friend@example.net");
	spf_answers a = {SPF_FAIL, {NOT_DONE, NOT_DONE}, NULL};
	const int passes[] = {SPF_SOFTFAIL,  SPF_NEUTRAL,   SPF_NONE, SPF_PASS,
	                      SPF_TEMPERROR, SPF_PERMERROR, NOT_DONE};
	stage_out o;

	(void)state;
	o = rcpt(cfg, f, &a);
	assert_true(o.asked_spf);
	assert_int_equal(o.final.action, DECIDE_REJECT);
	assert_int_equal(o.final_check, CHECK_ID_SPF);
	assert_string_equal(o.final.reply.code, "550");
	assert_string_equal(o.final.reply.xcode, "5.7.23");
	assert_string_equal(
	    o.final.reply.text,
	    "SPF validation failed: the sender's domain does not authorise [203.0.113.9] to send "
	    "its mail");
	/* the domain's exp= text, with what could end the reply line made harmless */
	a.explanation = "Not our server\r\n250 OK";
	o = rcpt(cfg, f, &a);
	assert_string_equal(o.final.reply.text, "SPF validation failed: Not our server??250 OK");
	/* softfail, errors and no answer never refuse */
	for (size_t i = 0; i < sizeof(passes) / sizeof(passes[0]); i++) {
		a.result = passes[i];
		o = rcpt(cfg, f, &a);
		assert_int_equal(o.final.action, DECIDE_CONTINUE);
	}
	/*
	 * A forger quoting its local part (MAIL FROM:<"a\"b"@bank.example>,
	 * a"b@bank.example in Postfix's internal form) writes an address the
	 * other checks take for invalid; its domain still says who may send
	 * its mail, so it fails all the same.
	 */
	a.result = SPF_FAIL;
	f.sender = "a\"b@bank.example";
	o = rcpt(cfg, f, &a);
	assert_true(o.asked_spf);
	assert_string_equal(o.plan.spf.mailfrom, "a\"b@bank.example");
	assert_int_equal(o.final.action, DECIDE_REJECT);
	assert_int_equal(o.final_check, CHECK_ID_SPF);
	f.sender = "victim@bank.example";
	/* a DNS failure goes on with a line, rate limited while it lasts */
	a.result = NOT_DONE;
	o = rcpt(cfg, f, &a);
	assert_true(o.decided[CHECK_ID_SPF]);
	assert_string_equal(run.verdict[CHECK_ID_SPF].reason, "spf-error");
	assert_true(run.verdict[CHECK_ID_SPF].log_limited);
	/* an authenticated client is never refused for SPF, even if an answer said fail */
	f.sasl_username = "alice";
	a.result = SPF_FAIL;
	o = rcpt(cfg, f, &a);
	assert_false(o.asked_spf);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	/* a trap recipient is the trap's: recorded and discarded, never refused for SPF */
	f = facts("203.0.113.9", "victim@bank.example", "trap@example.com");
	o = rcpt(cfg, f, &a);
	assert_int_equal(o.final_check, CHECK_ID_TRAPS);
	assert_string_equal(o.final.reason, "trap");
	config_unref(cfg);
}

static void test_reject_fail_on_error_and_shadow(void **state)
{
	config *cfg = cfg_of("\"spf\": {\"mode\": \"enforce\", \"header\": false, \"reject_fail\": true, "
	                     "\"on_error\": \"tempfail\"}");
	decide_facts f = facts("203.0.113.9", "victim@bank.example", "friend@example.net");
	spf_answers a = {NOT_DONE, {NOT_DONE, NOT_DONE}, NULL};
	stage_out o;

	(void)state;
	o = rcpt(cfg, f, &a);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_string_equal(o.final.reply.code, "451");
	assert_string_equal(o.final.reply.xcode, "4.4.3");
	assert_non_null(strstr(o.final.detail, " spf=temperror reason=\"no answer by the deadline\""));
	a.result = SPF_TEMPERROR;
	assert_int_equal(rcpt(cfg, f, &a).final.action, DECIDE_TEMPFAIL);
	/*
	 * The reason names what the sender's record and MAIL FROM wrote
	 * (include:%{l}.attacker.example): a quote there must not close the
	 * field and append fields of the sender's choosing to the log line.
	 */
	answer_reason = "DNS failure in a of x\" action=accept sender=\\victim";
	o = rcpt(cfg, f, &a);
	assert_non_null(
	    strstr(o.final.detail, " reason=\"DNS failure in a of x? action=accept sender=?victim\""));
	answer_reason = NULL;
	a.result = SPF_PERMERROR; /* the domain's own mistake: no point retrying, never a 5xx */
	assert_int_equal(rcpt(cfg, f, &a).final.action, DECIDE_CONTINUE);
	config_unref(cfg);
	/* shadow: logged as "would reject", the mail goes on */
	cfg = cfg_of("\"spf\": {\"mode\": \"shadow\", \"reject_fail\": true}");
	o = rcpt(cfg, f, &FAIL);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_string_equal(o.final.header, "");
	config_unref(cfg);
}

/* --- the Received-SPF header ----------------------------------------------- */

static void test_header_text(void **state)
{
	char h[CHECK_HEADER_MAX], longer[400];

	(void)state;
	assert_true(spfcheck_header(SPF_PASS, "mx.example.net", "192.0.2.7", "user@example.org",
	                            "mail.example.org", h, sizeof(h)) > 0);
	assert_string_equal(
	    h, "Received-SPF: pass (mx.example.net: domain of the sender designates 192.0.2.7 as "
	       "permitted sender) client-ip=192.0.2.7; envelope-from=\"user@example.org\"; "
	       "helo=mail.example.org; receiver=mx.example.net; identity=mailfrom");
	/* not a dot-atom: a quoted-string; CR, LF and 8-bit bytes cannot end or forge a header line */
	spfcheck_header(SPF_FAIL, "mx.example.net", "2001:db8::5", "\"a b\\\"c\"@example.org",
	                "x\r\nX-Spam: no; \xc3\xa9", h, sizeof(h));
	assert_string_equal(h, "Received-SPF: fail (mx.example.net: domain of the sender does not designate "
	                       "2001:db8::5 as permitted sender) client-ip=2001:db8::5; "
	                       "envelope-from=\"\\\"a b\\\\\\\"c\\\"@example.org\"; "
	                       "helo=\"x??X-Spam: no; ??\"; receiver=mx.example.net; identity=mailfrom");
	assert_null(strpbrk(h, "\r\n"));
	/* a leading, trailing or double dot is no dot-atom */
	spfcheck_header(SPF_NONE, "mx", "192.0.2.7", "a..b@example.org", ".helo", h, sizeof(h));
	assert_non_null(strstr(h, " envelope-from=\"a..b@example.org\"; helo=\".helo\";"));
	/* the null sender: the HELO identity */
	spfcheck_header(SPF_NEUTRAL, "mx", "192.0.2.7", "", "mail.example.org", h, sizeof(h));
	assert_non_null(strstr(h, " envelope-from=\"\"; helo=mail.example.org; receiver=mx; identity=helo"));
	/* too long: left out, the line stays short; a client that is no address is "unknown" */
	memset(longer, 'a', sizeof(longer) - 1);
	longer[sizeof(longer) - 1] = '\0';
	spfcheck_header(SPF_SOFTFAIL, "mx", "1.2.3.4; evil=1", longer, longer, h, sizeof(h));
	assert_null(strstr(h, "envelope-from"));
	assert_null(strstr(h, "helo="));
	assert_non_null(strstr(h, "client-ip=unknown;"));
	assert_true(strlen(h) < 998);
	/* the longest values kept still fit the buffer and RFC 5322's line */
	memset(longer, '"', 148); /* quoted: 298 bytes, kept */
	longer[148] = '\0';
	assert_true(spfcheck_header(
	                SPF_PERMERROR, "a-sixty-four-character-receiver-name-for-the-longest-header.xx",
	                "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", longer, longer, h, sizeof(h)) > 0);
	assert_true(strlen(h) < 998);
	assert_non_null(strstr(h, "envelope-from=\""));
	assert_non_null(strstr(h, "helo=\""));
	/* no room: nothing */
	assert_int_equal(spfcheck_header(SPF_PASS, "mx", "192.0.2.7", "a@b", "h", h, 20), 0);
	assert_string_equal(h, "");
}

/* Policy: one PREPEND a message, at its first recipient; milter: at end of message. */
static void test_header_once_a_message(void **state)
{
	config *cfg = cfg_of("\"spf\": {\"mode\": \"enforce\", \"receiver\": \"mx.example.net\"}");
	decide_facts f = facts("198.51.100.7", "news@shop.example", "friend@example.net");
	check_msg msg;
	stage_out o;

	(void)state;
	memset(&msg, 0, sizeof(msg));
	o = stage_msg(cfg, CHECK_STAGE_RCPT, f, &msg, &PASS_NARROW);
	assert_true(o.asked_spf);
	assert_false(o.asked_probes);
	assert_string_equal(
	    o.final.header,
	    "Received-SPF: pass (mx.example.net: domain of the sender designates 198.51.100.7 as "
	    "permitted sender) client-ip=198.51.100.7; envelope-from=\"news@shop.example\"; "
	    "helo=mx.example.org; receiver=mx.example.net; identity=mailfrom");
	assert_true(msg.spf_header_done);
	f.recipient = "other@example.net";
	o = stage_msg(cfg, CHECK_STAGE_RCPT, f, &msg, NULL);
	assert_false(o.asked_spf);
	assert_string_equal(o.final.header, "");
	/* the milter: nothing at RCPT TO, the header at end of message */
	f = facts("198.51.100.7", "news@shop.example", "friend@example.net");
	f.front = DECIDE_FRONT_MILTER;
	memset(&msg, 0, sizeof(msg));
	o = stage_msg(cfg, CHECK_STAGE_RCPT, f, &msg, &FAIL);
	assert_string_equal(o.final.header, "");
	f.recipient = NULL;
	o = stage_msg(cfg, CHECK_STAGE_EOM, f, &msg, NULL);
	assert_false(o.asked_spf);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_non_null(strstr(o.final.header, "Received-SPF: fail (mx.example.net: "));
	/* an authenticated client gets none */
	f = facts("198.51.100.7", "news@shop.example", "friend@example.net");
	f.sasl_username = "alice";
	o = rcpt(cfg, f, &PASS_NARROW);
	assert_false(o.asked_spf);
	assert_string_equal(o.final.header, "");
	config_unref(cfg);
}

/* The greylist's X-Greylist replaces Received-SPF on one policy answer: the next recipient gets it. */
static void test_header_after_greylist_header(void **state)
{
	config *cfg = cfg_of("\"spf\": {\"mode\": \"enforce\", \"receiver\": \"mx.example.net\"}, "
	                     "\"greylist\": {\"mode\": \"enforce\", \"header\": true}");
	decide_facts f = facts("198.51.100.7", "news@shop.example", "friend@example.net");
	check_msg msg;
	stage_out o;

	(void)state;
	memset(&msg, 0, sizeof(msg));
	grey_pass_first = true;
	o = stage_msg(cfg, CHECK_STAGE_RCPT, f, &msg, &PASS_NARROW);
	assert_non_null(strstr(o.final.header, "X-Greylist: delayed 310 seconds"));
	assert_false(msg.spf_header_done);
	f.recipient = "other@example.net";
	o = stage_msg(cfg, CHECK_STAGE_RCPT, f, &msg, NULL);
	assert_non_null(strstr(o.final.header, "Received-SPF: pass (mx.example.net: "));
	assert_true(msg.spf_header_done);
	grey_pass_first = false;
	config_unref(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_whitelist_verified_by_spf),
	    cmocka_unit_test(test_whitelist_forged_sender),
	    cmocka_unit_test(test_whitelist_sasl_still_walks),
	    cmocka_unit_test(test_whitelist_spf_off),
	    cmocka_unit_test(test_sender_requires_spf_pass),
	    cmocka_unit_test(test_sender_requires_any),
	    cmocka_unit_test(test_sender_requires_needs_spf),
	    cmocka_unit_test(test_spf_key_narrow_record),
	    cmocka_unit_test(test_spf_key_open_record),
	    cmocka_unit_test(test_spf_key_off),
	    cmocka_unit_test(test_reject_fail),
	    cmocka_unit_test(test_reject_fail_on_error_and_shadow),
	    cmocka_unit_test(test_header_text),
	    cmocka_unit_test(test_header_once_a_message),
	    cmocka_unit_test(test_header_after_greylist_header),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
