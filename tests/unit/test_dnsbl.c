/*
 * The dnsbl check: postscreen's site syntax (every form, and the errors),
 * the names it asks (reversed IPv4, IPv6 nibbles, IPv4-mapped as IPv4),
 * scoring through the pipeline with a fake resolver filling the stage's
 * dnsplan as the front end does (filters, weights, a DNSWL, thresholds),
 * answers that must never list (127.255.255.x, 8.8.8.8), failures and
 * on_error, who is never asked (whitelisted network, SASL client), and
 * the greylist's use of the score (apply "listed", allowlist).
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
#include "core/checks/dnsbl.h"
#include "core/dnsbl_site.h"
#include "core/pipeline.h"

static char dir[] = "/tmp/spamtrapd-test-dnsbl.XXXXXX";

static config *load(const char *dnsbl, const char *extra, char *err, size_t errlen)
{
	return check_config_load(dir, "\"whitelist\": {\"networks\": [\"198.51.100.0/24\"]}", "dnsbl", dnsbl,
	                         extra, err, errlen);
}

static config *cfg_of(const char *dnsbl, const char *extra)
{
	return check_config_must_load(dir, "\"whitelist\": {\"networks\": [\"198.51.100.0/24\"]}", "dnsbl",
	                              dnsbl, extra);
}

/* The config error of a dnsbl section that must not load. */
static const char *error_of(const char *dnsbl)
{
	static char err[4096];
	config *cfg = load(dnsbl, "", err, sizeof(err));

	if (cfg) {
		config_unref(cfg);
		fail_msg("loaded: %s", dnsbl);
	}
	return err;
}

/* --- the fake resolver: name -> answer ------------------------------------ */

typedef struct zone_rr {
	const char *name;
	dnsplan_status status;
	uint32_t addr[3];
	unsigned naddr;
} zone_rr;

static struct {
	zone_rr rr[16];
	size_t n;
	size_t asked; /* lookups the last stage planned */
	char names[DNSPLAN_MAX_LOOKUPS][DNSPLAN_NAME_MAX];
	int64_t timeout_ms;
	size_t greylist_queries;
} zone;

#define A(a, b, c, d) (((uint32_t)(a) << 24) | ((uint32_t)(b) << 16) | ((uint32_t)(c) << 8) | (uint32_t)(d))

static void rr(const char *name, dnsplan_status status, uint32_t a1, uint32_t a2)
{
	zone_rr *r = &zone.rr[zone.n++];

	*r = (zone_rr){.name = name, .status = status};
	if (a1)
		r->addr[r->naddr++] = a1;
	if (a2)
		r->addr[r->naddr++] = a2;
}

/* What the front end does: every lookup answered (NXDOMAIN when the zone has no record). */
static void resolve(dnsplan *plan)
{
	zone.asked = plan->nlookups;
	zone.timeout_ms = plan->timeout_ms;
	for (size_t i = 0; i < plan->nlookups; i++) {
		dnsplan_lookup *l = &plan->lookup[i];

		snprintf(zone.names[i], sizeof(zone.names[i]), "%s", l->name);
		l->status = DNSPLAN_NXDOMAIN;
		for (size_t j = 0; j < zone.n; j++)
			if (strcmp(zone.rr[j].name, l->name) == 0) {
				l->status = zone.rr[j].status;
				l->naddr = zone.rr[j].naddr;
				memcpy(l->addr, zone.rr[j].addr, sizeof(zone.rr[j].addr));
			}
	}
	dnsplan_expire(plan);
}

static void answer(query *q, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (q[i].kind == QUERY_GREYLIST) { /* a new triplet: deferred */
			zone.greylist_queries++;
			q[i].status = QUERY_OK;
			q[i].u.grey.answer =
			    (greystep_out){.result = GREYSTEP_DEFER_NEW, .remaining_ms = 300000};
			continue;
		}
		q[i].status = QUERY_NOTFOUND;
	}
}

typedef struct stage_out {
	check_verdict final;
	check_verdict dnsbl; /* the dnsbl's own verdict, after its mode */
	bool dnsbl_decided;
	check_verdict greylist;
	bool greylist_decided;
	check_msg msg;
} stage_out;

static pipeline_run run;
static dnsplan plan;

static stage_out stage(const config *cfg, decide_facts f)
{
	static decide_txn txn;
	static const check_msg no_msg;
	stage_out out;
	size_t from = 0;

	memset(&out, 0, sizeof(out));
	/* 1. the plan, as engine_dns_plan makes it */
	f.dns = NULL;
	decide_prepare(&cfg->decide, &f, &txn);
	pipeline_begin(&run, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &txn, &no_msg, 1700000000);
	dnsplan_init(&plan);
	pipeline_plan_dns(&cfg->pipeline, &run, &plan);
	resolve(&plan);
	/* 2. the stage with the answers, as engine_stage runs it */
	f.dns = dnsplan_empty(&plan) ? NULL : &plan;
	decide_prepare(&cfg->decide, &f, &txn);
	pipeline_begin(&run, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &txn, &no_msg, 1700000000);
	answer(run.q, pipeline_needs(&cfg->pipeline, &run));
	while (pipeline_decide(&cfg->pipeline, &run, &from))
		answer(run.q + from, run.nq - from);
	out.final = run.final;
	out.msg = run.msg;
	out.dnsbl_decided = run.decided[CHECK_ID_DNSBL];
	out.dnsbl = run.verdict[CHECK_ID_DNSBL];
	out.greylist_decided = run.decided[CHECK_ID_GREYLIST];
	out.greylist = run.verdict[CHECK_ID_GREYLIST];
	return out;
}

static decide_facts facts(const char *client)
{
	return (decide_facts){.front = DECIDE_FRONT_POLICY,
	                      .client_address = client,
	                      .client_name = "unknown",
	                      .helo = "mx.example.net",
	                      .sender = "someone@example.net",
	                      .recipient = "user@example.com"};
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

static int reset(void **state)
{
	(void)state;
	memset(&zone, 0, sizeof(zone));
	return 0;
}

/* --- the site syntax ------------------------------------------------------ */

static dnsbl_site parsed(const char *text)
{
	dnsbl_site s;
	char err[256];

	if (!dnsbl_site_parse(text, &s, err, sizeof(err)))
		fail_msg("%s: %s", text, err);
	return s;
}

static void parse_fails(const char *text, const char *why)
{
	dnsbl_site s;
	char err[256] = "";

	if (dnsbl_site_parse(text, &s, err, sizeof(err)))
		fail_msg("parsed: %s", text);
	if (!strstr(err, why))
		fail_msg("%s: \"%s\" does not say \"%s\"", text, err, why);
}

static void test_site_syntax(void **state)
{
	dnsbl_site s;

	(void)state;
	s = parsed("zen.spamhaus.org");
	assert_string_equal(s.name, "zen.spamhaus.org");
	assert_false(s.filtered);
	assert_int_equal(s.weight, 1);
	assert_true(dnsbl_site_matches(&s, A(127, 0, 0, 2)));
	assert_true(dnsbl_site_matches(&s, A(127, 0, 0, 11)));

	s = parsed("Zen.Spamhaus.ORG.*3");
	assert_string_equal(s.name, "zen.spamhaus.org");
	assert_int_equal(s.weight, 3);

	s = parsed("b.barracudacentral.org=127.0.0.2*2");
	assert_true(s.filtered);
	assert_int_equal(s.weight, 2);
	assert_true(dnsbl_site_matches(&s, A(127, 0, 0, 2)));
	assert_false(dnsbl_site_matches(&s, A(127, 0, 0, 3)));

	s = parsed("bl.example.org=127.0.0.[2..11;20]*3");
	assert_false(dnsbl_site_matches(&s, A(127, 0, 0, 1)));
	assert_true(dnsbl_site_matches(&s, A(127, 0, 0, 2)));
	assert_true(dnsbl_site_matches(&s, A(127, 0, 0, 11)));
	assert_false(dnsbl_site_matches(&s, A(127, 0, 0, 12)));
	assert_true(dnsbl_site_matches(&s, A(127, 0, 0, 20)));
	assert_false(dnsbl_site_matches(&s, A(127, 0, 1, 2)));

	s = parsed("list.dnswl.org=127.0.[0..255].[1..3]*-2");
	assert_int_equal(s.weight, -2);
	assert_true(dnsbl_site_matches(&s, A(127, 0, 15, 3)));
	assert_false(dnsbl_site_matches(&s, A(127, 0, 15, 0)));
	assert_false(dnsbl_site_matches(&s, A(127, 1, 15, 1)));

	s = parsed("bl.example.org=127.0.0.[2;4;6..7]");
	assert_int_equal(s.weight, 1);
	assert_true(dnsbl_site_matches(&s, A(127, 0, 0, 4)));
	assert_false(dnsbl_site_matches(&s, A(127, 0, 0, 5)));
	assert_true(dnsbl_site_matches(&s, A(127, 0, 0, 7)));

	s = parsed("bl.example.org*+100");
	assert_int_equal(s.weight, 100);
	s = parsed("bl.example.org*-100");
	assert_int_equal(s.weight, -100);
}

static void test_site_errors(void **state)
{
	char name[300];

	(void)state;
	parse_fails("", "no site name");
	parse_fails("=127.0.0.2", "no site name");
	parse_fails("*3", "no site name");
	parse_fails("bl example.org", "not allowed");
	parse_fails("bl.example.org,zen.spamhaus.org", "not allowed");
	parse_fails("bl..example.org", "empty label");
	parse_fails(".bl.example.org", "empty label");
	memset(name, 'a', sizeof(name));
	name[190] = '\0';
	parse_fails(name, "too long");
	name[63] = name[127] = '.';
	name[189] = '\0';
	parsed(name); /* 189: the longest */
	memset(name, 'a', 100);
	name[64] = '\0';
	parse_fails(name, "label over 63");
	parse_fails("bl.example.org=", "bad filter");
	parse_fails("bl.example.org=127.0.0", "bad filter");
	parse_fails("bl.example.org=127.0.0.2.1", "bad filter");
	parse_fails("bl.example.org=127.0.0.256", "bad filter");
	parse_fails("bl.example.org=127.0.0.[2..]", "bad filter");
	parse_fails("bl.example.org=127.0.0.[11..2]", "bad filter");
	parse_fails("bl.example.org=127.0.0.[2", "bad filter");
	parse_fails("bl.example.org=127.0.0.[]", "bad filter");
	parse_fails("bl.example.org=127.0.0.[2;]", "bad filter");
	parse_fails("bl.example.org=127.0.0.x", "bad filter");
	parse_fails("bl.example.org=126.0.0.2", "first octet must be 127");
	parse_fails("bl.example.org=[126..127].0.0.2", "first octet must be 127");
	parse_fails("bl.example.org*", "weight");
	parse_fails("bl.example.org*101", "weight");
	parse_fails("bl.example.org*-101", "weight");
	parse_fails("bl.example.org*3x", "weight");
	parse_fails("bl.example.org*99999999999999999999", "weight");
	parse_fails("bl.example.org=127.0.0.2*1*2", "bad filter");
}

static void test_answers_valid(void **state)
{
	(void)state;
	assert_true(dnsbl_answer_valid(A(127, 0, 0, 2)));
	assert_true(dnsbl_answer_valid(A(127, 255, 254, 255)));
	assert_false(dnsbl_answer_valid(A(127, 255, 255, 254)));
	assert_false(dnsbl_answer_valid(A(127, 255, 255, 0)));
	assert_false(dnsbl_answer_valid(A(8, 8, 8, 8)));
	assert_false(dnsbl_answer_valid(A(128, 0, 0, 2)));
	assert_false(dnsbl_answer_valid(A(126, 255, 255, 255)));
}

static void test_query_names(void **state)
{
	addr_ip ip;
	char out[DNSPLAN_NAME_MAX], site[200];

	(void)state;
	assert_true(addr_ip_parse("192.0.2.7", &ip));
	assert_int_equal(dnsbl_query_name(&ip, "zen.spamhaus.org", out, sizeof(out)), 26);
	assert_string_equal(out, "7.2.0.192.zen.spamhaus.org");
	assert_true(addr_ip_parse("0.10.99.255", &ip));
	assert_int_equal(dnsbl_query_name(&ip, "b.example", out, sizeof(out)), 21);
	assert_string_equal(out, "255.99.10.0.b.example");
	assert_true(addr_ip_parse("100.9.250.1", &ip));
	assert_int_equal(dnsbl_query_name(&ip, "b.example", out, 21), 0); /* no room for the terminator */
	assert_string_equal(out, "");
	assert_int_equal(dnsbl_query_name(&ip, "b.example", out, 22), 21);
	assert_string_equal(out, "1.250.9.100.b.example");
	assert_true(addr_ip_parse("2001:db8::1", &ip));
	dnsbl_query_name(&ip, "bl.example.org", out, sizeof(out));
	assert_string_equal(out,
	                    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example.org");
	assert_true(addr_ip_parse("2001:DB8:a0b:12f0::ff", &ip));
	dnsbl_query_name(&ip, "x.org", out, sizeof(out));
	assert_string_equal(out, "f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.f.2.1.b.0.a.0.8.b.d.0.1.0.0.2.x.org");
	/* The longest site name fits an IPv6 client's 64 bytes, one more would not. */
	memset(site, 'a', sizeof(site));
	site[63] = site[127] = '.';
	site[DNSBL_SITE_NAME_MAX] = '\0';
	assert_int_equal(dnsbl_query_name(&ip, site, out, sizeof(out)), 253);
	site[DNSBL_SITE_NAME_MAX] = 'a';
	site[DNSBL_SITE_NAME_MAX + 1] = '\0';
	assert_int_equal(dnsbl_query_name(&ip, site, out, sizeof(out)), 0);
}

/* --- the config ------------------------------------------------------------ */

static void test_config(void **state)
{
	config *cfg;
	const dnsbl_conf *c;
	char sites[2048] = "\"sites\": [";

	(void)state;
	cfg = cfg_of("", "");
	c = cfg->pipeline.checks[CHECK_ID_DNSBL].conf;
	assert_int_equal(c->threshold, 1);
	assert_int_equal(c->allowlist_threshold, 0);
	assert_int_equal(c->action, DNSBL_ACTION_REJECT);
	assert_int_equal(c->timeout, 3);
	assert_int_equal(c->on_error, DNSBL_ON_ERROR_CONTINUE);
	assert_string_equal(c->reply_parsed.code, "554");
	config_unref(cfg);
	/* off by default */
	{
		char err[512], path[300];
		FILE *f;

		snprintf(path, sizeof(path), "%s/default.json", dir);
		f = fopen(path, "w");
		assert_non_null(f);
		fprintf(f,
		        "{\"traps\": {\"addresses\": [\"t@example.com\"]}, \"store\": {\"sqlite\": "
		        "{\"path\": \"%s/db.sqlite\"}}}\n",
		        dir);
		fclose(f);
		cfg = config_load(path, NULL, 0, err, sizeof(err));
		assert_non_null(cfg);
		assert_int_equal(cfg->pipeline.checks[CHECK_ID_DNSBL].mode, CHECK_MODE_OFF);
		config_unref(cfg);
	}
	cfg = cfg_of("\"action\": \"defer\"", "");
	c = cfg->pipeline.checks[CHECK_ID_DNSBL].conf;
	assert_string_equal(c->reply_parsed.code, "450");
	config_unref(cfg);

	assert_non_null(
	    strstr(error_of("\"sites\": [\"bl.example.org=127.0.0.[2..\"]"), "dnsbl: sites[0]: "));
	assert_non_null(strstr(error_of("\"sites\": [\"bl.example.org*1000\"]"), "weight"));
	for (int i = 0; i < DNSBL_SITES_MAX + 1; i++)
		snprintf(sites + strlen(sites), sizeof(sites) - strlen(sites), "%s\"bl%d.example.org\"",
		         i ? ", " : "", i);
	strcat(sites, "]");
	assert_non_null(strstr(error_of(sites), "at most 16"));
	assert_non_null(strstr(error_of("\"reply\": \"450 4.7.1 no\""), "5xx"));
	assert_non_null(strstr(error_of("\"action\": \"defer\", \"reply\": \"554 5.7.1 no\""), "4xx"));
	assert_non_null(strstr(error_of("\"reply\": \"554 5.7.1 %{sender}\""), "placeholder"));
	assert_non_null(strstr(error_of("\"sites\": [\"bl.example.org\"], \"reply_map\": "
	                                "{\"other.example.org\": \"554 5.7.1 x\"}"),
	                       "not the name of a site"));
	assert_non_null(strstr(error_of("\"sites\": [\"bl.example.org\"], \"reply_map\": "
	                                "{\"bl.example.org\": 5}"),
	                       "expected a string"));
	assert_non_null(strstr(error_of("\"reply_map\": []"), "object"));
	assert_non_null(strstr(error_of("\"threshold\": 0"), "threshold"));
	assert_non_null(strstr(error_of("\"allowlist_threshold\": 1"), "allowlist_threshold"));
	assert_non_null(strstr(error_of("\"timeout\": \"0s\""), "timeout"));
	assert_non_null(strstr(error_of("\"action\": \"discard\""), "action"));
}

/* Whether cfg has a warning containing text. */
static bool warned(const config *cfg, const char *text)
{
	for (size_t i = 0; i < cfg->nwarnings; i++)
		if (strstr(cfg->warnings[i], text))
			return true;
	return false;
}

static void test_config_warnings(void **state)
{
	config *cfg;

	(void)state;
	cfg = cfg_of("", "");
	assert_true(warned(cfg, "dnsbl.sites is empty"));
	config_unref(cfg);
	cfg = cfg_of("\"sites\": [\"bl.example.org\"], \"action\": \"greylist\"", "");
	assert_true(warned(cfg, "greylist.mode is off"));
	config_unref(cfg);
	cfg = cfg_of("\"sites\": [\"bl.example.org\"]",
	             "\"greylist\": {\"mode\": \"enforce\", \"apply\": \"listed\"}");
	assert_true(warned(cfg, "dnsbl.action is reject"));
	config_unref(cfg);
	cfg = cfg_of("\"mode\": \"shadow\", \"sites\": [\"bl.example.org\"], \"action\": \"greylist\"",
	             "\"greylist\": {\"mode\": \"enforce\", \"apply\": \"listed\"}");
	assert_true(warned(cfg, "dnsbl.mode is shadow"));
	config_unref(cfg);
	/*
	 * An allow list without a filter counts the list's own error codes
	 * (dnswl.org's 127.0.0.255 for a resolver over its quota): every
	 * client allowlisted, the block lists cancelled.
	 */
	cfg = cfg_of("\"sites\": [\"zen.spamhaus.org*3\", \"list.dnswl.org*-2\"]", "");
	assert_true(warned(cfg, "dnsbl.sites[1]: list.dnswl.org has a negative weight and no filter"));
	config_unref(cfg);
	cfg = cfg_of("\"sites\": [\"zen.spamhaus.org*3\", \"list.dnswl.org=127.0.[0..255].[1..3]*-2\"]", "");
	assert_int_equal(cfg->nwarnings, 0);
	config_unref(cfg);
	/* the intended setup: no warning */
	cfg = cfg_of("\"sites\": [\"bl.example.org\"], \"action\": \"greylist\"",
	             "\"greylist\": {\"mode\": \"enforce\", \"apply\": \"listed\"}");
	assert_int_equal(cfg->nwarnings, 0);
	config_unref(cfg);
}

/* --- what is asked ---------------------------------------------------------- */

static void test_plan(void **state)
{
	config *cfg = cfg_of("\"sites\": [\"zen.spamhaus.org*3\", \"list.dnswl.org=127.0.[0..255].0*-1\", "
	                     "\"list.dnswl.org=127.0.[0..255].[1..3]*-3\", \"bl.example.org\"], "
	                     "\"timeout\": \"2s\"",
	                     "");
	decide_facts f = facts("192.0.2.7");

	(void)state;
	stage(cfg, f);
	/* one lookup per distinct name */
	assert_int_equal(zone.asked, 3);
	assert_string_equal(zone.names[0], "7.2.0.192.zen.spamhaus.org");
	assert_string_equal(zone.names[1], "7.2.0.192.list.dnswl.org");
	assert_string_equal(zone.names[2], "7.2.0.192.bl.example.org");
	assert_int_equal(zone.timeout_ms, 2000);

	stage(cfg, facts("::ffff:192.0.2.8"));
	assert_int_equal(zone.asked, 3);
	assert_string_equal(zone.names[0], "8.2.0.192.zen.spamhaus.org");

	stage(cfg, facts("2001:db8::1"));
	assert_string_equal(zone.names[2],
	                    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example.org");

	/* never asked: a whitelisted network, a SASL client, loopback, no address */
	stage(cfg, facts("198.51.100.9"));
	assert_int_equal(zone.asked, 0);
	f = facts("192.0.2.7");
	f.sasl_username = "alice";
	stage(cfg, f);
	assert_int_equal(zone.asked, 0);
	stage(cfg, facts("127.0.0.1"));
	assert_int_equal(zone.asked, 0);
	stage(cfg, facts("unknown"));
	assert_int_equal(zone.asked, 0);
	config_unref(cfg);

	/* off: nothing asked */
	cfg = cfg_of("\"mode\": \"off\", \"sites\": [\"zen.spamhaus.org\"]", "");
	stage(cfg, facts("192.0.2.7"));
	assert_int_equal(zone.asked, 0);
	config_unref(cfg);
}

/* --- scoring ----------------------------------------------------------------- */

static void test_listed_reply(void **state)
{
	config *cfg = cfg_of("\"sites\": [\"bl.example.org=127.0.0.[2..11]*2\", \"zen.spamhaus.org*3\", "
	                     "\"small.example.org\"], \"threshold\": 3",
	                     "");
	stage_out o;

	(void)state;
	rr("7.2.0.192.bl.example.org", DNSPLAN_FOUND, A(127, 0, 0, 2), 0);
	rr("7.2.0.192.small.example.org", DNSPLAN_FOUND, A(127, 0, 0, 2), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_REJECT);
	assert_string_equal(o.final.reason, "dnsbl listed");
	assert_string_equal(o.final.reply.code, "554");
	assert_string_equal(o.final.reply.xcode, "5.7.1");
	/* %{site}: the listing site of highest weight */
	assert_string_equal(o.final.reply.text,
	                    "Service unavailable; client [192.0.2.7] blocked using bl.example.org");
	assert_non_null(strstr(o.final.detail, "score=3"));
	assert_non_null(strstr(o.final.detail, "site=bl.example.org=127.0.0.2*2"));

	/* one short of the threshold: through */
	reset(NULL);
	rr("7.2.0.192.bl.example.org", DNSPLAN_FOUND, A(127, 0, 0, 2), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(o.msg.dnsbl, CHECK_DNSBL_CLEAN);
	assert_int_equal(o.msg.dnsbl_score, 2);

	/* the filter: an answer outside it does not count */
	reset(NULL);
	rr("7.2.0.192.bl.example.org", DNSPLAN_FOUND, A(127, 0, 0, 12), 0);
	rr("7.2.0.192.small.example.org", DNSPLAN_FOUND, A(127, 0, 0, 2), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(o.msg.dnsbl_score, 1);

	/* several matching records count their site once */
	reset(NULL);
	rr("7.2.0.192.bl.example.org", DNSPLAN_FOUND, A(127, 0, 0, 2), A(127, 0, 0, 4));
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.msg.dnsbl_score, 2);

	/* the highest weight names the site */
	reset(NULL);
	rr("7.2.0.192.bl.example.org", DNSPLAN_FOUND, A(127, 0, 0, 2), 0);
	rr("7.2.0.192.zen.spamhaus.org", DNSPLAN_FOUND, A(127, 0, 0, 4), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_REJECT);
	assert_non_null(strstr(o.final.reply.text, "blocked using zen.spamhaus.org"));
	assert_int_equal(o.msg.dnsbl_score, 5);
	config_unref(cfg);

	/* reply_map: the named site's own text (a DQS key stays out of the reply) */
	cfg = cfg_of(
	    "\"sites\": [\"KEY123.zen.dq.spamhaus.net=127.0.0.[2..11]\"], \"reply_map\": "
	    "{\"key123.zen.dq.spamhaus.net\": \"554 5.7.1 Client %{client} listed by zen.spamhaus.org\"}",
	    "");
	reset(NULL);
	rr("7.2.0.192.key123.zen.dq.spamhaus.net", DNSPLAN_FOUND, A(127, 0, 0, 3), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_REJECT);
	assert_string_equal(o.final.reply.text, "Client 192.0.2.7 listed by zen.spamhaus.org");
	config_unref(cfg);

	/* defer, with its 4xx default; an IPv6 client in the reply */
	cfg = cfg_of("\"sites\": [\"bl.example.org\"], \"action\": \"defer\"", "");
	reset(NULL);
	rr("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example.org", DNSPLAN_FOUND,
	   A(127, 0, 0, 2), 0);
	o = stage(cfg, facts("2001:db8::1"));
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_string_equal(o.final.reply.code, "450");
	assert_string_equal(o.final.reply.text,
	                    "Service unavailable; client [2001:db8::1] blocked using bl.example.org");
	config_unref(cfg);

	/* shadow: logged as would-reject, mail goes on */
	cfg = cfg_of("\"mode\": \"shadow\", \"sites\": [\"bl.example.org\"]", "");
	reset(NULL);
	rr("7.2.0.192.bl.example.org", DNSPLAN_FOUND, A(127, 0, 0, 2), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(o.dnsbl.enforce_action, DECIDE_REJECT);
	config_unref(cfg);
}

static void test_dnswl(void **state)
{
	config *cfg = cfg_of("\"sites\": [\"zen.spamhaus.org=127.0.0.[2..11]*3\", "
	                     "\"list.dnswl.org=127.0.[0..255].0*-2\", "
	                     "\"list.dnswl.org=127.0.[0..255].[1..3]*-4\"], \"threshold\": 1, "
	                     "\"allowlist_threshold\": -2",
	                     "");
	stage_out o;

	(void)state;
	/* a DNSWL's trust levels: one lookup, the matching entry's weight */
	rr("7.2.0.192.zen.spamhaus.org", DNSPLAN_FOUND, A(127, 0, 0, 2), 0);
	rr("7.2.0.192.list.dnswl.org", DNSPLAN_FOUND, A(127, 0, 15, 2), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(zone.asked, 2);
	assert_int_equal(o.msg.dnsbl_score, -1);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(o.msg.dnsbl, CHECK_DNSBL_CLEAN);
	/* the detail names each listing with its answer and weight, a negative one too */
	assert_non_null(strstr(o.dnsbl.detail, " site=zen.spamhaus.org=127.0.0.2*3"));
	assert_non_null(strstr(o.dnsbl.detail, " site=list.dnswl.org=127.0.15.2*-4"));

	reset(NULL);
	rr("7.2.0.192.list.dnswl.org", DNSPLAN_FOUND, A(127, 0, 15, 0), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.msg.dnsbl_score, -2);
	assert_int_equal(o.msg.dnsbl, CHECK_DNSBL_ALLOWLISTED);

	reset(NULL);
	rr("7.2.0.192.list.dnswl.org", DNSPLAN_FOUND, A(127, 0, 15, 0), A(127, 0, 15, 3));
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.msg.dnsbl_score, -6);
	assert_int_equal(o.msg.dnsbl, CHECK_DNSBL_ALLOWLISTED);
	config_unref(cfg);
}

/* An attacker-run or broken list, or a refusing one, must not make the site refuse mail. */
static void test_bad_answers_never_list(void **state)
{
	config *cfg = cfg_of("\"sites\": [\"zen.spamhaus.org\", "
	                     "\"wide.example.org=127.[0..255].[0..255].[0..255]\"]",
	                     "");
	stage_out o;

	(void)state;
	rr("7.2.0.192.zen.spamhaus.org", DNSPLAN_FOUND, A(127, 255, 255, 254), 0);
	rr("7.2.0.192.wide.example.org", DNSPLAN_FOUND, A(8, 8, 8, 8), A(127, 255, 255, 252));
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_true(o.dnsbl_decided);
	assert_string_equal(o.dnsbl.reason, "dnsbl-error");
	assert_false(o.dnsbl.quiet);
	assert_true(o.dnsbl.log_limited); /* it recurs at every recipient: the engine limits its lines */
	assert_non_null(strstr(o.dnsbl.detail, "bad_answer=zen.spamhaus.org:127.255.255.254(query-refused)"));
	assert_non_null(strstr(o.dnsbl.detail, "bad_answer=wide.example.org:8.8.8.8"));
	assert_int_equal(o.msg.dnsbl, CHECK_DNSBL_UNSCORED);

	/* with on_error tempfail the refusals count as failures: 4xx, never 5xx */
	config_unref(cfg);
	cfg = cfg_of("\"sites\": [\"zen.spamhaus.org\"], \"on_error\": \"tempfail\"", "");
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_string_equal(o.final.reply.code, "451");

	/* a good answer next to a bad one still lists */
	reset(NULL);
	rr("7.2.0.192.zen.spamhaus.org", DNSPLAN_FOUND, A(127, 255, 255, 254), A(127, 0, 0, 4));
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_REJECT);
	assert_non_null(strstr(o.final.detail, "bad_answer=zen.spamhaus.org:127.255.255.254"));
	config_unref(cfg);
}

static void test_failures(void **state)
{
	config *cfg = cfg_of("\"sites\": [\"a.example.org\", \"b.example.org\"]", "");
	stage_out o;

	(void)state;
	/* every site failed: on_error continue */
	rr("7.2.0.192.a.example.org", DNSPLAN_TIMEOUT, 0, 0);
	rr("7.2.0.192.b.example.org", DNSPLAN_TEMPFAIL, 0, 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_string_equal(o.dnsbl.reason, "dnsbl-error");
	assert_non_null(strstr(o.dnsbl.detail, "failed=a.example.org:timeout"));
	assert_non_null(strstr(o.dnsbl.detail, "failed=b.example.org:tempfail"));
	config_unref(cfg);

	assert_true(o.dnsbl.log_limited);
	cfg = cfg_of("\"sites\": [\"a.example.org\", \"b.example.org\"], \"on_error\": \"tempfail\"", "");
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_false(o.final.log_limited); /* each refusal is logged */
	assert_string_equal(o.final.reply.code, "451");

	/* one answered: the score of what answered, no on_error */
	reset(NULL);
	rr("7.2.0.192.a.example.org", DNSPLAN_PENDING, 0, 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(o.msg.dnsbl, CHECK_DNSBL_CLEAN);
	assert_non_null(strstr(o.dnsbl.detail, "failed=a.example.org:timeout"));
	reset(NULL);
	rr("7.2.0.192.a.example.org", DNSPLAN_TIMEOUT, 0, 0);
	rr("7.2.0.192.b.example.org", DNSPLAN_FOUND, A(127, 0, 0, 2), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_REJECT);

	/* no DNS at all at this stage (a front end that resolved nothing): on_error */
	{
		static decide_txn txn;
		static const check_msg no_msg;
		decide_facts f = facts("192.0.2.7");
		size_t from = 0;

		decide_prepare(&cfg->decide, &f, &txn);
		pipeline_begin(&run, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &txn, &no_msg, 1700000000);
		answer(run.q, pipeline_needs(&cfg->pipeline, &run));
		while (pipeline_decide(&cfg->pipeline, &run, &from))
			answer(run.q + from, run.nq - from);
		assert_int_equal(run.final.action, DECIDE_TEMPFAIL);
		assert_non_null(strstr(run.final.detail, "no-dns"));
	}
	config_unref(cfg);
}

/* --- with the greylist ------------------------------------------------------- */

#define GREY "\"greylist\": {\"mode\": \"enforce\"%s}"

static config *with_greylist(const char *dnsbl, const char *grey)
{
	char extra[512];

	snprintf(extra, sizeof(extra), GREY, grey);
	return cfg_of(dnsbl, extra);
}

static void test_greylist_apply_listed(void **state)
{
	config *cfg = with_greylist("\"sites\": [\"bl.example.org\"], \"action\": \"greylist\"",
	                            ", \"apply\": \"listed\"");
	stage_out o;

	(void)state;
	/* not listed: never greylisted, no triplet started */
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(zone.greylist_queries, 0);

	/* listed: greylisted, not rejected */
	rr("7.2.0.192.bl.example.org", DNSPLAN_FOUND, A(127, 0, 0, 2), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	assert_string_equal(o.final.check, "greylist");
	assert_int_equal(zone.greylist_queries, 1);
	assert_string_equal(o.dnsbl.reason, "dnsbl listed, to be greylisted");

	/* DNS failed: not listed, not greylisted */
	reset(NULL);
	rr("7.2.0.192.bl.example.org", DNSPLAN_TIMEOUT, 0, 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(zone.greylist_queries, 0);
	config_unref(cfg);

	/* apply all (the default): everyone */
	cfg = with_greylist("\"sites\": [\"bl.example.org\"], \"action\": \"greylist\"", "");
	reset(NULL);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	config_unref(cfg);

	/* a shadow dnsbl changes nothing: as if it were off */
	cfg = with_greylist("\"mode\": \"shadow\", \"sites\": [\"bl.example.org\"], \"action\": \"greylist\"",
	                    ", \"apply\": \"listed\"");
	reset(NULL);
	rr("7.2.0.192.bl.example.org", DNSPLAN_FOUND, A(127, 0, 0, 2), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(zone.greylist_queries, 0);
	assert_string_equal(o.dnsbl.reason, "dnsbl listed, to be greylisted");
	config_unref(cfg);

	/* apply listed with the dnsbl off: nobody is listed */
	cfg = with_greylist("\"mode\": \"off\", \"sites\": [\"bl.example.org\"]", ", \"apply\": \"listed\"");
	reset(NULL);
	rr("7.2.0.192.bl.example.org", DNSPLAN_FOUND, A(127, 0, 0, 2), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(zone.greylist_queries, 0);
	config_unref(cfg);
}

/* A listing left in the message's state by an earlier stage (the milter keeps it) is not this stage's. */
static void test_greylist_listing_is_the_stages_own(void **state)
{
	config *cfg =
	    with_greylist("\"mode\": \"off\", \"sites\": [\"bl.example.org\"]", ", \"apply\": \"listed\"");
	static decide_txn txn;
	check_msg msg = {.dnsbl = CHECK_DNSBL_LISTED, .dnsbl_score = 5};
	decide_facts f = facts("192.0.2.7");
	size_t from = 0;

	(void)state;
	decide_prepare(&cfg->decide, &f, &txn);
	pipeline_begin(&run, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &txn, &msg, 1700000000);
	answer(run.q, pipeline_needs(&cfg->pipeline, &run));
	while (pipeline_decide(&cfg->pipeline, &run, &from))
		answer(run.q + from, run.nq - from);
	assert_int_equal(run.final.action, DECIDE_CONTINUE);
	assert_int_equal(zone.greylist_queries, 0);
	config_unref(cfg);
}

static void test_greylist_allowlist(void **state)
{
	config *cfg =
	    with_greylist("\"sites\": [\"bl.example.org*2\", \"list.dnswl.org=127.0.[0..255].[1..3]*-5\"], "
	                  "\"threshold\": 2, \"allowlist_threshold\": -3",
	                  "");
	stage_out o;

	(void)state;
	rr("7.2.0.192.list.dnswl.org", DNSPLAN_FOUND, A(127, 0, 5, 1), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(zone.greylist_queries, 0);
	assert_true(o.greylist_decided);
	assert_string_equal(o.greylist.reason, "greylist skipped, dnsbl allowlisted");

	/* listed too: -5 + 2 = -3, at the allowlist threshold: still skipped */
	reset(NULL);
	rr("7.2.0.192.list.dnswl.org", DNSPLAN_FOUND, A(127, 0, 5, 1), 0);
	rr("7.2.0.192.bl.example.org", DNSPLAN_FOUND, A(127, 0, 0, 2), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_int_equal(zone.greylist_queries, 0);

	/* a DNSWL answer outside its filter: greylisted as anyone */
	reset(NULL);
	rr("7.2.0.192.list.dnswl.org", DNSPLAN_FOUND, A(127, 0, 5, 0), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	assert_int_equal(zone.greylist_queries, 1);
	config_unref(cfg);

	/* a shadow dnsbl's allowlisting spares nobody */
	cfg = with_greylist(
	    "\"mode\": \"shadow\", \"sites\": [\"list.dnswl.org*-5\"], \"allowlist_threshold\": -1", "");
	reset(NULL);
	rr("7.2.0.192.list.dnswl.org", DNSPLAN_FOUND, A(127, 0, 5, 1), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	assert_string_equal(o.dnsbl.reason, "dnsbl allowlisted");
	config_unref(cfg);

	/* allowlist_threshold 0 (the default): a negative score changes nothing */
	cfg = with_greylist("\"sites\": [\"list.dnswl.org*-5\"]", "");
	reset(NULL);
	rr("7.2.0.192.list.dnswl.org", DNSPLAN_FOUND, A(127, 0, 5, 1), 0);
	o = stage(cfg, facts("192.0.2.7"));
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	config_unref(cfg);
}

#define CASE(t) cmocka_unit_test_setup(t, reset)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    CASE(test_site_syntax),
	    CASE(test_site_errors),
	    CASE(test_answers_valid),
	    CASE(test_query_names),
	    CASE(test_config),
	    CASE(test_config_warnings),
	    CASE(test_plan),
	    CASE(test_listed_reply),
	    CASE(test_dnswl),
	    CASE(test_bad_answers_never_list),
	    CASE(test_failures),
	    CASE(test_greylist_apply_listed),
	    CASE(test_greylist_allowlist),
	    CASE(test_greylist_listing_is_the_stages_own),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
