/*
 * The greylist check through the pipeline, with the store's answers
 * written by the test: which triplet it asks for, when it does not ask at
 * all (SASL, whitelists, a trap, an earlier check's refusal), and what it
 * makes of each greystep result (the reply, the null sender at DATA, the
 * header once a message, shadow mode, store errors, the cap). The store's
 * side of the step is tests/unit/test_greystep.c and test_store.c.
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
#include "core/pipeline.h"

static char dir[] = "/tmp/spamtrapd-test-greylist.XXXXXX";

static config *load(const char *greylist, const char *extra, char *err, size_t errlen)
{
	return check_config_load(dir, "", "greylist", greylist, extra, err, errlen);
}

static config *cfg_of(const char *greylist, const char *extra)
{
	return check_config_must_load(dir, "", "greylist", greylist, extra);
}

/* What the test's store answers a greylist step with. */
typedef struct fake_answer {
	query_status status;
	greystep_result result;
	int64_t remaining_ms, waited_ms;
	bool capped;
} fake_answer;

typedef struct stage_out {
	check_verdict final;
	check_verdict grey; /* the greylist's own verdict, after its mode */
	bool grey_decided;
	check_msg msg;
	size_t asked; /* greylist steps asked */
	char triplet[GREYSTEP_KEY_MAX], awl[64];
	query step; /* the last one, as asked */
} stage_out;

static pipeline_run run;

static void answer(query *q, size_t n, const fake_answer *a, stage_out *out)
{
	for (size_t i = 0; i < n; i++) {
		if (q[i].kind != QUERY_GREYLIST) {
			q[i].status = QUERY_NOTFOUND;
			continue;
		}
		out->asked++;
		out->step = q[i];
		snprintf(out->triplet, sizeof(out->triplet), "%s", q[i].u.grey.triplet);
		snprintf(out->awl, sizeof(out->awl), "%s", q[i].u.grey.awl ? q[i].u.grey.awl : "(none)");
		q[i].status = a->status;
		q[i].u.grey.capped = a->capped;
		q[i].u.grey.answer = (greystep_out){
		    .result = a->result, .remaining_ms = a->remaining_ms, .waited_ms = a->waited_ms};
	}
}

static stage_out stage(const config *cfg, check_stage st, unsigned checks, const decide_facts *f,
                       const check_msg *msg, const fake_answer *a)
{
	static decide_txn txn;
	stage_out out;
	size_t from = 0;

	memset(&out, 0, sizeof(out));
	decide_prepare(&cfg->decide, f, &txn);
	pipeline_begin(&run, st, checks, f, &txn, msg, 1700000000);
	pipeline_needs(&cfg->pipeline, &run);
	answer(run.q, run.nq, a, &out);
	while (pipeline_decide(&cfg->pipeline, &run, &from))
		answer(run.q + from, run.nq - from, a, &out);
	out.final = run.final;
	out.grey_decided = run.decided[CHECK_ID_GREYLIST];
	if (out.grey_decided)
		out.grey = run.verdict[CHECK_ID_GREYLIST];
	out.msg = run.msg;
	return out;
}

static decide_facts facts(const char *client, const char *sender, const char *rcpt)
{
	return (decide_facts){.front = DECIDE_FRONT_POLICY,
	                      .client_address = client,
	                      .client_name = "unknown",
	                      .helo = "mx.sender.test",
	                      .sender = sender,
	                      .recipient = rcpt};
}

static const fake_answer NEW = {QUERY_OK, GREYSTEP_DEFER_NEW, 300000, 0, false};
static const fake_answer FIRST_PASS = {QUERY_OK, GREYSTEP_PASS_FIRST, 0, 301000, false};
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

static void test_new_triplet_is_deferred(void **state)
{
	config *cfg = cfg_of("", "");
	decide_facts f = facts("192.0.2.7", "User+Tag@Example.COM", "Bob@example.org");
	stage_out o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);

	(void)state;
	assert_int_equal(o.asked, 1);
	assert_string_equal(o.triplet, "192.0.2.0/24/user@example.com/bob@example.org");
	assert_string_equal(o.awl, "192.0.2.7");
	assert_int_equal(o.step.u.grey.params.delay_ms, 300000);
	assert_int_equal(o.step.u.grey.params.retry_window_ms, 2 * 86400 * 1000LL);
	assert_int_equal(o.step.u.grey.params.max_age_ms, 35 * 86400 * 1000LL);
	assert_int_equal(o.step.u.grey.params.awl_count, 5);
	assert_int_equal(o.step.u.grey.now_ms, 1700000000 * 1000LL);
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	assert_string_equal(o.final.reply.code, "450");
	assert_string_equal(o.final.reply.xcode, "4.2.0");
	assert_string_equal(o.final.reply.text, "Greylisted, try again in 300 seconds");
	assert_string_equal(o.final.check, "greylist");
	assert_non_null(strstr(o.final.detail, "result=new"));
	config_unref(cfg);
}

static void test_keys_by_prefix_and_awl_by(void **state)
{
	config *cfg = cfg_of("\"ipv6_prefix\": 48, \"awl_by\": \"network\", \"ipv4_prefix\": 16", "");
	decide_facts f = facts("2001:db8:1:2::9", "a@b.example", "c@d.example");
	stage_out o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);

	(void)state;
	assert_string_equal(o.triplet, "2001:db8:1::/48/a@b.example/c@d.example");
	assert_string_equal(o.awl, "2001:db8:1::/48");
	f = facts("::ffff:198.51.100.9", "a@b.example", "c@d.example");
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_string_equal(o.triplet, "198.51.0.0/16/a@b.example/c@d.example");
	config_unref(cfg);
}

static void test_reply_rounds_remaining_up(void **state)
{
	config *cfg = cfg_of("\"reply\": \"451 4.7.1 Wait %{remaining}s, please\"", "");
	decide_facts f = facts("192.0.2.7", "a@b.example", "c@d.example");
	fake_answer early = {QUERY_OK, GREYSTEP_DEFER_EARLY, 1, 0, false};
	stage_out o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &early);

	(void)state;
	assert_string_equal(o.final.reply.code, "451");
	assert_string_equal(o.final.reply.text, "Wait 1s, please");
	assert_non_null(strstr(o.final.detail, "result=early-retry"));
	config_unref(cfg);
}

/* Not asked at all: the triplet never starts for these. */
static void test_not_asked(void **state)
{
	config *cfg = cfg_of("\"clients\": [\"198.51.100.0/24\", \"mail.example.net\"], "
	                     "\"recipients\": [\"postmaster@\"]",
	                     "");
	decide_facts f;
	stage_out o;

	(void)state;
	f = facts("192.0.2.7", "a@b.example", "c@d.example");
	f.sasl_username = "alice";
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 0);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);

	f = facts("198.51.100.200", "a@b.example", "c@d.example");
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 0);
	assert_string_equal(o.grey.reason, "greylist whitelisted");
	assert_non_null(strstr(o.grey.detail, "greylist.clients"));

	/* A verified name matches; the same name unverified (Postfix's "unknown") does not. */
	f = facts("203.0.113.5", "a@b.example", "c@d.example");
	f.client_name = "out1.mail.example.net";
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 0);
	f.client_name = "unknown";
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 1);

	f = facts("203.0.113.5", "a@b.example", "postmaster@d.example");
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 0);
	assert_non_null(strstr(o.grey.detail, "recipient=greylist.recipients"));

	/* Loopback or no client address: no triplet to make. */
	f = facts("127.0.0.1", "a@b.example", "c@d.example");
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 0);
	f = facts(NULL, "a@b.example", "c@d.example");
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 0);
	config_unref(cfg);
}

/*
 * Recipients Postfix delivers but spamtrapd cannot read (its internal form
 * of <"user+<x"@d>, an extension past our caps, a recipient the policy
 * front end dropped at its cap) are greylisted like any other, never let
 * through: each raw spelling is its own triplet.
 */
static void test_unreadable_recipient_is_greylisted(void **state)
{
	config *cfg = cfg_of("", "");
	char longest[700];
	char first[GREYSTEP_KEY_MAX];
	decide_facts f = facts("192.0.2.7", "a@b.example", "user+<x@example.org");
	stage_out o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);

	(void)state;
	assert_int_equal(o.asked, 1);
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	assert_non_null(strstr(o.triplet, "192.0.2.0/24/a@b.example/<invalid:"));
	snprintf(first, sizeof(first), "%s", o.triplet);

	f.recipient = "user+\"@example.org";
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 1);
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	assert_string_not_equal(o.triplet, first);

	memset(longest, 'x', sizeof(longest) - 1);
	memcpy(longest, "user+", 5);
	snprintf(longest + sizeof(longest) - 13, 13, "@example.org");
	f.recipient = longest;
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 1);
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);

	f.recipient = NULL;
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 1);
	assert_string_equal(o.triplet, "192.0.2.0/24/a@b.example/<invalid>");
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	config_unref(cfg);
}

/* SPEC.md "Checks": a trap recipient is never greylisted, and its hit is recorded as usual. */
static void test_trap_recipient_is_not_greylisted(void **state)
{
	config *cfg = cfg_of("", "");
	decide_facts f = facts("192.0.2.7", "spammer@b.example", "trap@example.com");
	stage_out o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);

	(void)state;
	assert_int_equal(o.asked, 0);
	assert_string_equal(o.final.check, "traps");
	assert_true(o.msg.trap_hit);
	config_unref(cfg);
}

/* A recipient the whitelist lets through (a whitelisted network) is not greylisted either. */
static void test_whitelisted_network_is_not_greylisted(void **state)
{
	config *cfg = cfg_of("", "\"whitelist\": {\"networks\": [\"192.0.2.0/24\"]}");
	decide_facts f = facts("192.0.2.7", "a@b.example", "c@d.example");
	stage_out o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);

	(void)state;
	assert_int_equal(o.asked, 0);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	config_unref(cfg);
}

/* The null sender: deferred at DATA, so that a callout (RCPT TO, then QUIT) gets its answer. */
static void test_null_sender_at_data(void **state)
{
	config *cfg = cfg_of("", "");
	decide_facts f = facts("192.0.2.7", "", "c@d.example");
	fake_answer shorter = {QUERY_OK, GREYSTEP_DEFER_EARLY, 120000, 0, false};
	stage_out o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	check_msg after;

	(void)state;
	assert_int_equal(o.asked, 1);
	assert_string_equal(o.triplet, "192.0.2.0/24/<>/c@d.example");
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_true(o.msg.grey_defer_data);
	assert_int_equal(o.msg.grey_remaining, 300);
	/* A second recipient with less to wait keeps the longest. */
	after = o.msg;
	f.recipient = "e@d.example";
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &after, &shorter);
	assert_int_equal(o.msg.grey_remaining, 300);
	after = o.msg;
	f.recipient = NULL;
	o = stage(cfg, CHECK_STAGE_DATA, CHECKS_EVERY, &f, &after, &NEW);
	assert_int_equal(o.asked, 0);
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	assert_string_equal(o.final.reply.text, "Greylisted, try again in 300 seconds");
	/* Nothing deferred: DATA passes. */
	o = stage(cfg, CHECK_STAGE_DATA, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	config_unref(cfg);

	cfg = cfg_of("\"null_sender_at\": \"rcpt\"", "");
	f = facts("192.0.2.7", "", "c@d.example");
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	assert_false(o.msg.grey_defer_data);
	config_unref(cfg);
}

static void test_header_once_a_message(void **state)
{
	config *cfg = cfg_of("\"header\": true", "");
	decide_facts f = facts("192.0.2.7", "a@b.example", "c@d.example");
	stage_out o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &FIRST_PASS);
	check_msg after = o.msg;

	(void)state;
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_string_equal(o.final.header,
	                    "X-Greylist: delayed 301 seconds by spamtrapd; Tue, 14 Nov 2023 22:13:20 +0000");
	assert_true(after.grey_header_done);
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &after, &FIRST_PASS);
	assert_string_equal(o.final.header, "");
	config_unref(cfg);

	cfg = cfg_of("", ""); /* off by default */
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &FIRST_PASS);
	assert_string_equal(o.final.header, "");
	config_unref(cfg);
}

static void test_shadow_changes_nothing(void **state)
{
	config *cfg = cfg_of("\"mode\": \"shadow\", \"header\": true", "");
	decide_facts f = facts("192.0.2.7", "a@b.example", "c@d.example");
	stage_out o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);

	(void)state;
	assert_int_equal(o.asked, 1); /* shadow keeps the triplets, so that enforce starts warm */
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(o.grey.enforce_action, DECIDE_DEFER_IF_PERMIT);
	assert_int_equal(o.grey.mode, CHECK_MODE_SHADOW);
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &FIRST_PASS);
	assert_string_equal(o.final.header, "");
	config_unref(cfg);

	/* The default mode is off: nothing asked, nothing said. */
	{
		char err[4096];
		config *off = load("\"mode\": \"off\"", "", err, sizeof(err));

		assert_non_null(off);
		o = stage(off, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
		assert_int_equal(o.asked, 0);
		assert_false(o.grey_decided);
		config_unref(off);
	}
}

/* A store outage never delays mail unless asked to (greylist.on_error). */
static void test_store_error_and_cap(void **state)
{
	config *cfg = cfg_of("", "");
	decide_facts f = facts("192.0.2.7", "a@b.example", "c@d.example");
	fake_answer error = {QUERY_ERROR, GREYSTEP_DEFER_NEW, 0, 0, false};
	fake_answer capped = {QUERY_OK, GREYSTEP_PASS, 0, 0, true};
	stage_out o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &error);

	(void)state;
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_string_equal(o.grey.reason, "store-error");
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &capped);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_string_equal(o.grey.reason, "greylist full");
	config_unref(cfg);

	cfg = cfg_of("\"on_error\": \"tempfail\"", "");
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &error);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_string_equal(o.final.reply.code, "451");
	config_unref(cfg);
}

/* A sender the blocklist refuses at RCPT TO (a policy "full" listener) starts no triplet. */
static void test_refused_earlier_is_not_asked(void **state)
{
	config *cfg = cfg_of("", "");
	decide_facts f = facts("192.0.2.7", "a@b.example", "c@d.example");
	static decide_txn txn;
	size_t from = 0, asked = 0;

	(void)state;
	decide_prepare(&cfg->decide, &f, &txn);
	pipeline_begin(&run, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &txn, &NO_MSG, 1700000000);
	pipeline_needs(&cfg->pipeline, &run);
	for (size_t i = 0; i < run.nq; i++) {
		assert_int_not_equal(run.q[i].kind, QUERY_GREYLIST);
		run.q[i].status = QUERY_OK; /* the blocklist lookup: listed */
	}
	while (pipeline_decide(&cfg->pipeline, &run, &from))
		asked++;
	assert_int_equal(asked, 0);
	assert_int_equal(run.final.action, DECIDE_REJECT);
	assert_false(run.decided[CHECK_ID_GREYLIST]);
	config_unref(cfg);
}

static void test_config_errors(void **state)
{
	static const struct {
		const char *section, *want;
	} rows[] = {
	    {"\"reply\": \"550 5.7.1 No\"", "greylist.reply"},
	    {"\"reply\": \"450 4.2.0 in %{remainder}\"", "unknown placeholder"},
	    {"\"header_text\": \"no colon here\"", "greylist.header_text"},
	    {"\"header_text\": \"X-Grey: %{host}\"", "unknown placeholder"},
	    {"\"delay\": \"3d\", \"retry_window\": \"2d\"", "greylist.retry_window"},
	    {"\"clients\": [\"/(unclosed/\"]", "greylist.clients"},
	    {"\"client_files\": [\"/nonexistent/whitelist_clients\"]", "cannot open"},
	    {"\"awl_by\": \"domain\"", "greylist.awl_by"},
	};
	char err[4096];

	(void)state;
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		config *cfg = load(rows[i].section, "", err, sizeof(err));

		if (cfg != NULL)
			fail_msg("row %zu: loaded", i);
		if (strstr(err, rows[i].want) == NULL)
			fail_msg("row %zu: \"%s\" not in: %s", i, rows[i].want, err);
	}
}

/* postgrey's own whitelist files load from greylist.client_files and match. */
static void test_client_file(void **state)
{
	char section[512], path[300];
	config *cfg;
	decide_facts f = facts("192.0.2.7", "a@b.example", "c@d.example");
	stage_out o;
	FILE *fp;

	(void)state;
	snprintf(path, sizeof(path), "%s/whitelist_clients", dir);
	fp = fopen(path, "w");
	assert_non_null(fp);
	fputs("# a comment\n192.0.2\n/^mx[0-9]+\\.example\\.org$/\n", fp);
	fclose(fp);
	snprintf(section, sizeof(section), "\"client_files\": [\"%s\"]", path);
	cfg = cfg_of(section, "");
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 0);
	assert_non_null(strstr(o.grey.detail, "whitelist_clients:2"));
	f = facts("203.0.113.1", "a@b.example", "c@d.example");
	f.client_name = "mx12.example.org";
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 0);
	f.client_name = "mx12.example.org.evil.test";
	o = stage(cfg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &NO_MSG, &NEW);
	assert_int_equal(o.asked, 1);
	config_unref(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_new_triplet_is_deferred),
	    cmocka_unit_test(test_keys_by_prefix_and_awl_by),
	    cmocka_unit_test(test_reply_rounds_remaining_up),
	    cmocka_unit_test(test_not_asked),
	    cmocka_unit_test(test_unreadable_recipient_is_greylisted),
	    cmocka_unit_test(test_trap_recipient_is_not_greylisted),
	    cmocka_unit_test(test_whitelisted_network_is_not_greylisted),
	    cmocka_unit_test(test_null_sender_at_data),
	    cmocka_unit_test(test_header_once_a_message),
	    cmocka_unit_test(test_shadow_changes_nothing),
	    cmocka_unit_test(test_store_error_and_cap),
	    cmocka_unit_test(test_refused_earlier_is_not_asked),
	    cmocka_unit_test(test_config_errors),
	    cmocka_unit_test(test_client_file),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
