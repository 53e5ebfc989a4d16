/*
 * The ratelimit check through the pipeline, with a fake store of bucket
 * room written by the test: which buckets each key kind asks for (and
 * when a rule does not apply), unit message against recipient, that only
 * recipients the final verdict accepts are charged (a later check's
 * refusal, the check's own refusal, a trap, a whitelisted network),
 * shadow mode, store errors and config errors. The GCRA arithmetic itself
 * (peek, burst, refusal, retry) is the store's: tests/unit/test_store.c.
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
#include "core/checks/ratelimit.h"
#include "core/pipeline.h"

static char dir[] = "/tmp/spamtrapd-test-ratelimit.XXXXXX";

static config *load(const char *section, const char *extra, char *err, size_t errlen)
{
	return check_config_load(dir, "", "ratelimit", section, extra, err, errlen);
}

static config *cfg_of(const char *section, const char *extra)
{
	return check_config_must_load(dir, "", "ratelimit", section, extra);
}

/* The fake store: room left per bucket (unknown buckets have DEFAULT_ROOM), charges made. */
#define DEFAULT_ROOM 5
#define FAKE_BUCKETS 16

typedef struct fake_store {
	char bucket[FAKE_BUCKETS][400];
	int room[FAKE_BUCKETS];
	int charged[FAKE_BUCKETS];
	size_t n;
	bool fail; /* every counter query answers QUERY_ERROR */
	/* Of the last stage: */
	char asked[CHECK_MAX_NEEDS * 2][400];
	size_t nasked;
	query last; /* the last peek as asked */
} fake_store;

static fake_store fs;

static size_t bucket_of(const char *name)
{
	for (size_t i = 0; i < fs.n; i++)
		if (strcmp(fs.bucket[i], name) == 0)
			return i;
	assert_true(fs.n < FAKE_BUCKETS);
	snprintf(fs.bucket[fs.n], sizeof(fs.bucket[fs.n]), "%s", name);
	fs.room[fs.n] = DEFAULT_ROOM;
	return fs.n++;
}

static void set_room(const char *name, int room)
{
	fs.room[bucket_of(name)] = room;
}

static int charged(const char *name)
{
	return fs.charged[bucket_of(name)];
}

/* Peeks answer the room; a greylist step (a later check) answers with *grey. */
static void answer(query *q, size_t n, greystep_result grey)
{
	for (size_t i = 0; i < n; i++) {
		if (q[i].kind == QUERY_GREYLIST) {
			q[i].status = QUERY_OK;
			q[i].u.grey.answer = (greystep_out){.result = grey, .remaining_ms = 300000};
			continue;
		}
		if (q[i].kind != QUERY_COUNTER) {
			q[i].status = QUERY_NOTFOUND;
			continue;
		}
		assert_int_equal(q[i].u.counter.cost, 0); /* needs() only reads */
		assert_string_equal(q[i].u.counter.ns, "ratelimit");
		snprintf(fs.asked[fs.nasked++], sizeof(fs.asked[0]), "%s", q[i].u.counter.key);
		fs.last = q[i];
		if (fs.fail) {
			q[i].status = QUERY_ERROR;
			continue;
		}
		q[i].status = QUERY_OK;
		q[i].u.counter.allowed = true;
		q[i].u.counter.remaining = (uint64_t)fs.room[bucket_of(q[i].u.counter.key)];
	}
}

static pipeline_run run;

/* The effects the engine would write: charges take room, as the store would. */
static void apply(const config *cfg)
{
	for (int i = 0; i < CHECK_COUNT; i++)
		for (size_t j = 0; j < run.effects[i].nq; j++) {
			const query *q = &run.effects[i].q[j];
			size_t b;

			if (q->kind != QUERY_COUNTER || !pipeline_effect_applies(&cfg->pipeline, &run, i, j))
				continue;
			assert_int_equal(q->u.counter.cost, 1);
			b = bucket_of(q->u.counter.key);
			if (fs.room[b] > 0) {
				fs.room[b]--;
				fs.charged[b]++;
			}
		}
}

typedef struct stage_out {
	check_verdict final;
	check_verdict rl; /* the ratelimit's own verdict, after its mode */
	bool rl_decided;
	check_msg msg; /* after the stage, nothers counted as the engine does */
} stage_out;

static stage_out rcpt_grey(const config *cfg, const decide_facts *f, const check_msg *msg,
                           greystep_result grey)
{
	static decide_txn txn;
	stage_out out;
	size_t from = 0;

	memset(&out, 0, sizeof(out));
	fs.nasked = 0;
	decide_prepare(&cfg->decide, f, &txn);
	pipeline_begin(&run, CHECK_STAGE_RCPT, CHECKS_EVERY, f, &txn, msg, 1700000000);
	pipeline_needs(&cfg->pipeline, &run);
	answer(run.q, run.nq, grey);
	while (pipeline_decide(&cfg->pipeline, &run, &from))
		answer(run.q + from, run.nq - from, grey);
	apply(cfg);
	out.final = run.final;
	out.rl_decided = run.decided[CHECK_ID_RATELIMIT];
	if (out.rl_decided)
		out.rl = run.verdict[CHECK_ID_RATELIMIT];
	out.msg = run.msg;
	if (run.final.action == DECIDE_CONTINUE)
		out.msg.nothers++;
	return out;
}

static stage_out rcpt(const config *cfg, const decide_facts *f, const check_msg *msg)
{
	return rcpt_grey(cfg, f, msg, GREYSTEP_PASS);
}

static decide_facts facts(const char *client, const char *sasl, const char *sender, const char *rcpt_to)
{
	return (decide_facts){.front = DECIDE_FRONT_POLICY,
	                      .client_address = client,
	                      .client_name = "unknown",
	                      .helo = "mx.sender.test",
	                      .sasl_username = sasl,
	                      .sender = sender,
	                      .recipient = rcpt_to};
}

static const check_msg NO_MSG;

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

static int reset(void **state)
{
	(void)state;
	memset(&fs, 0, sizeof(fs));
	return 0;
}

#define RULE(name, key, extra) "{\"name\": \"" name "\", \"key\": \"" key "\", \"rate\": \"3/1h\"" extra "}"

/* Each key kind: its bucket's name, and when the rule does not apply at all. */
static void test_bucket_per_key_kind(void **state)
{
	static const struct {
		const char *name, *rule, *client, *sasl, *sender, *rcpt, *want; /* want NULL: not asked */
	} rows[] = {
	    {"sasl, case folded", RULE("a", "sasl_username", ""), "192.0.2.7", "Alice", "x@y.test",
	     "b@c.test", "a:alice"},
	    {"sasl, unauthenticated", RULE("a", "sasl_username", ""), "192.0.2.7", NULL, "x@y.test",
	     "b@c.test", NULL},
	    {"sender, authenticated", RULE("s", "sender", ""), "192.0.2.7", "alice", "<X@Y.test>", "b@c.test",
	     "s:x@y.test"},
	    {"sender, unauthenticated: forgeable", RULE("s", "sender", ""), "192.0.2.7", NULL, "x@y.test",
	     "b@c.test", NULL},
	    {"sender, unauthenticated allowed", RULE("s", "sender", ", \"unauthenticated\": true"),
	     "192.0.2.7", NULL, "x@y.test", "b@c.test", "s:x@y.test"},
	    {"null sender under its own key, per client network",
	     RULE("s", "sender", ", \"unauthenticated\": true"), "192.0.2.7", NULL, "<>", "b@c.test",
	     "s:<>:192.0.2.0/24"},
	    {"null sender, IPv6 client", RULE("s", "sender", ", \"unauthenticated\": true"),
	     "2001:db8:1:2::9", NULL, "<>", "b@c.test", "s:<>:2001:db8:1:2::/64"},
	    {"null sender, no client", RULE("s", "sender", ", \"unauthenticated\": true"), "127.0.0.1", NULL,
	     "<>", "b@c.test", "s:<>"},
	    {"sender, +extension cut", RULE("s", "sender", ""), "192.0.2.7", "alice", "<Alice+News@Y.test>",
	     "b@c.test", "s:alice@y.test"},
	    {"client, /32", RULE("c", "client_address", ""), "192.0.2.7", NULL, "x@y.test", "b@c.test",
	     "c:192.0.2.7"},
	    {"client, /24", RULE("c", "client_address", ", \"ipv4_prefix\": 24"), "192.0.2.7", NULL,
	     "x@y.test", "b@c.test", "c:192.0.2.0/24"},
	    {"client, IPv4-mapped", RULE("c", "client_address", ", \"ipv4_prefix\": 24"), "::ffff:192.0.2.7",
	     NULL, "x@y.test", "b@c.test", "c:192.0.2.0/24"},
	    {"client, IPv6 /64", RULE("c", "client_address", ""), "2001:db8:1:2::9", NULL, "x@y.test",
	     "b@c.test", "c:2001:db8:1:2::/64"},
	    {"client, IPv6 /48", RULE("c", "client_address", ", \"ipv6_prefix\": 48"), "2001:db8:1:2::9",
	     NULL, "x@y.test", "b@c.test", "c:2001:db8:1::/48"},
	    {"client, none", RULE("c", "client_address", ""), "127.0.0.1", NULL, "x@y.test", "b@c.test",
	     NULL},
	    {"recipient, normalised", RULE("r", "recipient", ""), "192.0.2.7", NULL, "x@y.test",
	     "<Bob@Example.ORG>", "r:bob@example.org"},
	};
	char section[512];

	(void)state;
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		config *cfg;
		decide_facts f = facts(rows[i].client, rows[i].sasl, rows[i].sender, rows[i].rcpt);
		stage_out o;

		snprintf(section, sizeof(section), "\"rules\": [%s]", rows[i].rule);
		cfg = cfg_of(section, "");
		reset(NULL);
		o = rcpt(cfg, &f, &NO_MSG);
		if (rows[i].want == NULL) {
			if (fs.nasked != 0)
				fail_msg("%s: asked %s", rows[i].name, fs.asked[0]);
		} else {
			if (fs.nasked != 1 || strcmp(fs.asked[0], rows[i].want) != 0)
				fail_msg("%s: asked %zu, %s; want %s", rows[i].name, fs.nasked,
				         fs.nasked ? fs.asked[0] : "-", rows[i].want);
			if (charged(rows[i].want) != 1)
				fail_msg("%s: not charged", rows[i].name);
		}
		assert_int_equal(o.final.action, DECIDE_CONTINUE);
		config_unref(cfg);
	}
}

/* "100/1h": a unit every 36 s, a burst of 100 unless set. */
static void test_rate_and_burst(void **state)
{
	config *cfg = cfg_of("\"rules\": [{\"name\": \"a\", \"key\": \"recipient\", \"rate\": \"100/1h\"}, "
	                     "{\"name\": \"b\", \"key\": \"recipient\", \"rate\": \"10/1m\", \"burst\": 2}]",
	                     "");
	decide_facts f = facts("192.0.2.7", NULL, "x@y.test", "b@c.test");

	(void)state;
	rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(fs.nasked, 2);
	assert_int_equal(fs.last.u.counter.emission_ms, 6000);
	assert_int_equal(fs.last.u.counter.burst, 2);
	assert_int_equal(fs.last.u.counter.now_ms, 1700000000 * 1000LL);
	assert_int_equal(
	    ratelimit_emission_ms(
	        &((const ratelimit_conf *)cfg->pipeline.checks[CHECK_ID_RATELIMIT].conf)->rules[0]),
	    36000);
	assert_int_equal(
	    ((const ratelimit_conf *)cfg->pipeline.checks[CHECK_ID_RATELIMIT].conf)->rules[0].burst, 100);
	config_unref(cfg);
}

/* The typical rules of spamtrapd.json(5) RATELIMIT, as written there. */
static void test_documented_rules(void **state)
{
	config *cfg = cfg_of(
	    "\"rules\": [{\"name\": \"account\", \"key\": \"sasl_username\", \"rate\": \"100/1h\"},"
	    "{\"name\": \"client\", \"key\": \"client_address\", \"rate\": \"30/1m\", \"unit\": "
	    "\"recipient\", \"ipv4_prefix\": 24},"
	    "{\"name\": \"rcpt\", \"key\": \"recipient\", \"rate\": \"200/1h\", \"unit\": \"recipient\"}]",
	    "");
	const ratelimit_conf *rc = cfg->pipeline.checks[CHECK_ID_RATELIMIT].conf;
	decide_facts f = facts("192.0.2.7", "Alice", "alice@example.com", "bob@example.org");

	(void)state;
	assert_int_equal(rc->nrules, 3);
	/* an account's rule counts recipients unless told otherwise; the others messages */
	assert_int_equal(rc->rules[0].unit, RATELIMIT_UNIT_RECIPIENT);
	assert_int_equal(ratelimit_emission_ms(&rc->rules[0]), 36000);
	assert_int_equal(rc->rules[0].burst, 100);
	assert_int_equal(ratelimit_emission_ms(&rc->rules[1]), 2000);
	assert_int_equal(rc->rules[1].burst, 30);
	assert_int_equal(ratelimit_emission_ms(&rc->rules[2]), 18000);
	assert_int_equal(rc->rules[2].action, RATELIMIT_ACTION_DEFER);
	rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(fs.nasked, 3);
	assert_string_equal(fs.asked[0], "account:alice");
	assert_string_equal(fs.asked[1], "client:192.0.2.0/24");
	assert_string_equal(fs.asked[2], "rcpt:bob@example.org");
	config_unref(cfg);
}

/* A value too long for a bucket name is hashed whole, never cut: two long addresses never share a bucket. */
static void test_long_values_are_hashed(void **state)
{
	config *cfg = cfg_of("\"rules\": [" RULE("r", "recipient", "") "]", "");
	char a[500], b[500];
	decide_facts f;

	(void)state;
	memset(a, 'x', 450);
	snprintf(a + 450, sizeof(a) - 450, "1@example.org");
	memset(b, 'x', 450);
	snprintf(b + 450, sizeof(b) - 450, "2@example.org");
	f = facts("192.0.2.7", NULL, "s@example.com", a);
	rcpt(cfg, &f, &NO_MSG);
	f = facts("192.0.2.7", NULL, "s@example.com", b);
	rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(fs.n, 2);
	assert_memory_equal(fs.bucket[0], "r:<hash:", 8);
	assert_string_not_equal(fs.bucket[0], fs.bucket[1]);
	config_unref(cfg);
}

/* A full bucket defers (default) or rejects, with the rule's reply; nothing is charged then. */
static void test_full_bucket_refuses(void **state)
{
	config *cfg = cfg_of("\"rules\": [" RULE("acct", "sasl_username", "") ", " RULE(
	                         "rcpt", "recipient", ", \"action\": \"reject\"") "]",
	                     "");
	decide_facts f = facts("192.0.2.7", "alice", "alice@y.test", "b@c.test");
	stage_out o;

	(void)state;
	set_room("acct:alice", 0);
	o = rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_string_equal(o.final.reply.code, "450");
	assert_string_equal(o.final.reply.xcode, "4.7.1");
	assert_string_equal(o.final.reply.text, "Rate limit exceeded, try again later");
	assert_string_equal(o.final.check, "ratelimit");
	assert_string_equal(o.final.reason, "rate limited");
	assert_non_null(strstr(o.final.detail, "rule=acct bucket=acct:alice"));
	assert_int_equal(charged("rcpt:b@c.test"), 0); /* the other rule's room is not taken either */

	reset(NULL);
	set_room("rcpt:b@c.test", 0);
	o = rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(o.final.action, DECIDE_REJECT);
	assert_string_equal(o.final.reply.code, "550");
	assert_string_equal(o.final.reply.text, "Rate limit exceeded");
	assert_int_equal(charged("acct:alice"), 0);

	/* The exact edge: one unit of room passes and is charged, the next is refused. */
	reset(NULL);
	set_room("acct:alice", 1);
	o = rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(charged("acct:alice"), 1);
	o = rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	config_unref(cfg);
}

/* A quoted sender's blanks and '=' cannot write log fields of their own after "bucket=". */
static void test_bucket_in_log_cannot_fake_fields(void **state)
{
	config *cfg = cfg_of("\"rules\": [" RULE("s", "sender", ", \"unauthenticated\": true") "]", "");
	decide_facts f = facts("192.0.2.7", NULL, "<\"x client=10.0.0.1\"@example.com>", "b@c.test");
	stage_out o;

	(void)state;
	rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(fs.nasked, 1);
	set_room(fs.asked[0], 0);
	o = rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_null(strstr(o.final.detail, " client="));
	assert_null(strchr(strstr(o.final.detail, "bucket=") + 7, '='));
	config_unref(cfg);
}

/* unit message: charged once, at the first accepted recipient; unit recipient: every one. */
static void test_unit_message_and_recipient(void **state)
{
	config *cfg = cfg_of("\"rules\": [" RULE("msg", "sasl_username", ", \"unit\": \"message\"") ", " RULE(
	                         "each", "client_address", ", \"unit\": \"recipient\"") "]",
	                     "");
	decide_facts f = facts("192.0.2.7", "alice", "alice@y.test", "b@c.test");
	check_msg msg = NO_MSG;
	stage_out o;

	(void)state;
	for (int i = 0; i < 3; i++) {
		o = rcpt(cfg, &f, &msg);
		assert_int_equal(o.final.action, DECIDE_CONTINUE);
		msg = o.msg;
	}
	assert_int_equal(charged("msg:alice"), 1);
	assert_int_equal(charged("each:192.0.2.7"), 3);
	assert_int_equal(fs.nasked, 1); /* the last recipient peeked only the per-recipient rule */

	/* A message whose first recipient was refused is charged at its first accepted one. */
	reset(NULL);
	msg = NO_MSG;
	set_room("each:192.0.2.7", 0);
	o = rcpt(cfg, &f, &msg);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	msg = o.msg;
	assert_int_equal(msg.nothers, 0);
	set_room("each:192.0.2.7", 2);
	o = rcpt(cfg, &f, &msg);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(charged("msg:alice"), 1);
	config_unref(cfg);

	/* the default unit of an account's rule is the recipient: a message to many counts each */
	cfg = cfg_of("\"rules\": [" RULE("acct", "sasl_username", "") ", " RULE("snd", "sender", "") "]", "");
	reset(NULL);
	msg = NO_MSG;
	for (int i = 0; i < 3; i++) {
		o = rcpt(cfg, &f, &msg);
		assert_int_equal(o.final.action, DECIDE_CONTINUE);
		msg = o.msg;
	}
	assert_int_equal(charged("acct:alice"), 3);
	assert_int_equal(charged("snd:alice@y.test"), 1);
	config_unref(cfg);
}

/* A recipient the greylist (a later check) defers is not charged: only accepted mail counts. */
static void test_refused_later_is_not_charged(void **state)
{
	config *cfg =
	    cfg_of("\"rules\": [" RULE("r", "recipient", "") "]", "\"greylist\": {\"mode\": \"enforce\"}");
	decide_facts f = facts("192.0.2.7", NULL, "x@y.test", "b@c.test");
	stage_out o = rcpt_grey(cfg, &f, &NO_MSG, GREYSTEP_DEFER_NEW);

	(void)state;
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	assert_int_equal(fs.nasked, 1);
	assert_int_equal(charged("r:b@c.test"), 0);
	o = rcpt_grey(cfg, &f, &NO_MSG, GREYSTEP_PASS);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(charged("r:b@c.test"), 1);
	config_unref(cfg);
}

/*
 * A trap recipient and a whitelisted network never reach the check's
 * decide: never charged. (Its peeks are reads asked with every check's
 * before any decides; a late check would cost a round trip per recipient.)
 */
static void test_trap_and_whitelist_are_not_counted(void **state)
{
	config *cfg = cfg_of("\"rules\": [" RULE("c", "client_address", ", \"unit\": \"recipient\"") "]",
	                     "\"whitelist\": {\"networks\": [\"198.51.100.0/24\"]}");
	decide_facts f = facts("192.0.2.7", NULL, "x@y.test", "trap@example.com");
	stage_out o = rcpt(cfg, &f, &NO_MSG);

	(void)state;
	assert_false(o.rl_decided);
	assert_int_not_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(charged("c:192.0.2.7"), 0);
	f = facts("198.51.100.9", NULL, "x@y.test", "b@c.test");
	o = rcpt(cfg, &f, &NO_MSG);
	assert_false(o.rl_decided);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(charged("c:198.51.100.9"), 0);
	config_unref(cfg);
}

/* Shadow: "would defer" in the log, the recipient passes, and accepted mail is still counted. */
static void test_shadow_counts_and_would_defer(void **state)
{
	config *cfg = cfg_of("\"mode\": \"shadow\", \"rules\": [" RULE("r", "recipient", "") "]", "");
	decide_facts f = facts("192.0.2.7", NULL, "x@y.test", "b@c.test");
	stage_out o;
	char text[64];

	(void)state;
	o = rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(charged("r:b@c.test"), 1);
	set_room("r:b@c.test", 0);
	o = rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(o.rl.enforce_action, DECIDE_TEMPFAIL);
	pipeline_action_text(&cfg->pipeline, &o.rl, text, sizeof(text));
	assert_string_equal(text, "shadow, would tempfail");
	config_unref(cfg);
}

/* A store outage lets mail through by default (on_error continue), or defers it; never a 5xx. */
static void test_store_error(void **state)
{
	config *cfg = cfg_of("\"rules\": [" RULE("r", "recipient", ", \"action\": \"reject\"") "]", "");
	decide_facts f = facts("192.0.2.7", NULL, "x@y.test", "b@c.test");
	stage_out o;

	(void)state;
	fs.fail = true;
	o = rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_string_equal(o.rl.reason, "store-error");
	assert_int_equal(run.effects[CHECK_ID_RATELIMIT].nq, 0);
	config_unref(cfg);

	cfg = cfg_of("\"on_error\": \"tempfail\", \"rules\": [" RULE("r", "recipient", "") "]", "");
	o = rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_string_equal(o.final.reply.code, "451");
	config_unref(cfg);
}

/* Off by default: an upgrade changes nothing. */
static void test_off_by_default(void **state)
{
	config *cfg = cfg_of("\"mode\": \"off\", \"rules\": [" RULE("r", "recipient", "") "]", "");
	decide_facts f = facts("192.0.2.7", NULL, "x@y.test", "b@c.test");

	(void)state;
	rcpt(cfg, &f, &NO_MSG);
	assert_int_equal(fs.nasked, 0);
	config_unref(cfg);
	assert_int_equal(checks_all[CHECK_ID_RATELIMIT]->default_mode, CHECK_MODE_OFF);
}

static void test_config_errors(void **state)
{
	static const struct {
		const char *rules, *want;
	} rows[] = {
	    {"{}", "ratelimit.rules[0]: missing \"name\""},
	    {"{\"name\": \"a\", \"rate\": \"1/1h\"}", "ratelimit.rules[0]: missing \"key\""},
	    {"{\"name\": \"a\", \"key\": \"sender\"}", "ratelimit.rules[0]: missing \"rate\""},
	    {"{\"name\": \"A b\", \"key\": \"sender\", \"rate\": \"1/1h\"}", "ratelimit.rules[0].name"},
	    {"{\"name\": \"a\", \"key\": \"helo\", \"rate\": \"1/1h\"}",
	     "ratelimit.rules[0].key: expected one of"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"1 per hour\"}", "ratelimit.rules[0].rate"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"0/1h\"}", "ratelimit.rules[0].rate"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"1/8d\"}", "ratelimit.rules[0].rate"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"1/1h\", \"burst\": 0}",
	     "ratelimit.rules[0].burst"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"1/7d\", \"burst\": 100000}",
	     "ratelimit.rules[0].burst: too large"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"1/1h\", \"unit\": \"byte\"}",
	     "ratelimit.rules[0].unit"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"1/1h\", \"action\": \"hold\"}",
	     "ratelimit.rules[0].action"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"1/1h\", \"reply\": \"550 5.7.1 No\"}",
	     "ratelimit.rules[0].reply: action defer needs a 4xx reply"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"1/1h\", \"action\": \"reject\", \"reply\": "
	     "\"451 "
	     "Later\"}",
	     "ratelimit.rules[0].reply: action reject needs a 5xx reply"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"1/1h\", \"reply\": \"hello\"}",
	     "ratelimit.rules[0].reply"},
	    {"{\"name\": \"a\", \"key\": \"recipient\", \"rate\": \"1/1h\", \"unauthenticated\": true}",
	     "ratelimit.rules[0].unauthenticated: only a rule with key sender"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"1/1h\", \"ipv4_prefix\": 24}",
	     "ratelimit.rules[0]: ipv4_prefix and ipv6_prefix are for a rule with key client_address"},
	    {"{\"name\": \"a\", \"key\": \"client_address\", \"rate\": \"1/1h\", \"ipv4_prefix\": 4}",
	     "ratelimit.rules[0].ipv4_prefix"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"1/1h\", \"colour\": 1}",
	     "ratelimit.rules[0].colour: unknown key"},
	    {"{\"name\": \"a\", \"key\": \"sender\", \"rate\": \"1/1h\"}, {\"name\": \"a\", \"key\": "
	     "\"recipient\", "
	     "\"rate\": \"1/1h\"}",
	     "ratelimit.rules[1]: duplicate rule name \"a\""},
	    {"\"per-account\"", "ratelimit.rules[0]: expected an object"},
	    {RULE("a", "sender", "") "," RULE("b", "sender", "") "," RULE("c", "sender", "") "," RULE(
	         "d", "sender", "") "," RULE("e", "sender", ""),
	     "ratelimit.rules: at most 4 rules"},
	};
	char section[1024], err[4096];

	(void)state;
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		config *cfg;

		snprintf(section, sizeof(section), "\"rules\": [%s]", rows[i].rules);
		cfg = load(section, "", err, sizeof(err));
		if (cfg != NULL)
			fail_msg("row %zu: accepted %s", i, rows[i].rules);
		if (strstr(err, rows[i].want) == NULL)
			fail_msg("row %zu: %s\nwant: %s", i, err, rows[i].want);
	}
	snprintf(section, sizeof(section), "\"on_error\": \"later\"");
	assert_null(load(section, "", err, sizeof(err)));
	assert_non_null(strstr(err, "ratelimit.on_error"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_bucket_per_key_kind),
	    cmocka_unit_test_setup(test_rate_and_burst, reset),
	    cmocka_unit_test_setup(test_documented_rules, reset),
	    cmocka_unit_test_setup(test_long_values_are_hashed, reset),
	    cmocka_unit_test_setup(test_full_bucket_refuses, reset),
	    cmocka_unit_test_setup(test_bucket_in_log_cannot_fake_fields, reset),
	    cmocka_unit_test_setup(test_unit_message_and_recipient, reset),
	    cmocka_unit_test_setup(test_refused_later_is_not_charged, reset),
	    cmocka_unit_test_setup(test_trap_and_whitelist_are_not_counted, reset),
	    cmocka_unit_test_setup(test_shadow_counts_and_would_defer, reset),
	    cmocka_unit_test_setup(test_store_error, reset),
	    cmocka_unit_test_setup(test_off_by_default, reset),
	    cmocka_unit_test(test_config_errors),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
