/*
 * The relay check through the pipeline, with a distinct set kept by the
 * test the way the stores keep it (a late check: a peek and the add with
 * its limit in needs(), the verdict from their answers): the exact threshold, the window
 * sliding, networks never counted (private, exempt), IPv6 /48 and
 * IPv4-mapped aggregation, which mail is keyed at all, shadow mode, store
 * errors, block_account and the notify hook. The stores' side of the peek
 * is tests/unit/test_store.c.
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
#include "core/checks/relay.h"
#include "core/pipeline.h"

static char dir[] = "/tmp/spamtrapd-test-relay.XXXXXX";

static config *load(const char *relay, const char *extra, char *err, size_t errlen)
{
	return check_config_load(dir, "", "relay", relay, extra, err, errlen);
}

static config *cfg_of(const char *relay, const char *extra)
{
	return check_config_must_load(dir, "", "relay", relay, extra);
}

/* --- a distinct set as the stores keep one ------------------------------- */

#define FAKE_MEMBERS 400

typedef struct fake_member {
	char set[QUERY_KEY_MAX], member[64];
	int64_t expires;
} fake_member;

static struct {
	fake_member m[FAKE_MEMBERS];
	size_t n;
	bool fail;         /* every query answers QUERY_ERROR */
	size_t peeks;      /* distinct peeks asked */
	size_t adds;       /* adds made (effects that applied) */
	size_t records;    /* blocklist records made */
	query last_record; /* the last one */
	char record_key[QUERY_KEY_MAX];
	/* the trip markers (QUERY_KV), by ns and key */
	struct {
		char ns[QUERY_NS_MAX], key[QUERY_KEY_MAX];
		int64_t expires_ms;
	} marker[8];
	size_t nmarkers;
	bool last_marker_new; /* the last PUT_NEW created its marker */
	size_t cap;           /* members of all sets together (the store's max_rows at work); 0: none */
} fake;

static bool marker_live(const char *ns, const char *key, int64_t now_ms)
{
	for (size_t i = 0; i < fake.nmarkers; i++)
		if (strcmp(fake.marker[i].ns, ns) == 0 && strcmp(fake.marker[i].key, key) == 0 &&
		    fake.marker[i].expires_ms > now_ms)
			return true;
	return false;
}

static void marker_put_new(query *q)
{
	assert_int_equal(q->u.kv.op, QUERY_KV_PUT_NEW);
	q->status = QUERY_OK;
	q->u.kv.found = marker_live(q->u.kv.ns, q->u.kv.key, q->u.kv.now_ms);
	fake.last_marker_new = !q->u.kv.found;
	if (q->u.kv.found)
		return;
	assert_true(fake.nmarkers < 8);
	snprintf(fake.marker[fake.nmarkers].ns, QUERY_NS_MAX, "%s", q->u.kv.ns);
	snprintf(fake.marker[fake.nmarkers].key, QUERY_KEY_MAX, "%s", q->u.kv.key);
	fake.marker[fake.nmarkers++].expires_ms = q->u.kv.now_ms + q->u.kv.ttl_ms;
}

static uint64_t live(const char *set, const char *member, int64_t now, bool *present)
{
	uint64_t n = 0;

	*present = false;
	for (size_t i = 0; i < fake.n; i++) {
		if (strcmp(fake.m[i].set, set) != 0 || fake.m[i].expires <= now)
			continue;
		n++;
		*present |= strcmp(fake.m[i].member, member) == 0;
	}
	return n;
}

/* The add as the stores make it: the live members counting this one (limit + 1: refused, not added). */
static uint64_t fake_add(query *q)
{
	bool present;
	uint64_t n = live(q->u.distinct.key, q->u.distinct.member, q->u.distinct.now, &present);

	for (size_t i = 0; i < fake.n; i++)
		if (strcmp(fake.m[i].set, q->u.distinct.key) == 0 &&
		    strcmp(fake.m[i].member, q->u.distinct.member) == 0) {
			if (fake.m[i].expires > q->u.distinct.now) {
				fake.m[i].expires = q->u.distinct.now + q->u.distinct.window;
				fake.adds++;
				return n;
			}
			if (q->u.distinct.limit && n >= q->u.distinct.limit)
				return n + 1;
			fake.m[i].expires = q->u.distinct.now + q->u.distinct.window;
			fake.adds++;
			return n + 1;
		}
	if (q->u.distinct.limit && n >= q->u.distinct.limit)
		return n + 1;
	/* The table full of live rows (the cap the add carries: relay.max_entries): held back. */
	if (fake.cap && q->u.distinct.max_rows == fake.cap && fake.n >= fake.cap) {
		q->u.distinct.capped = true;
		return n;
	}
	assert_true(fake.n < FAKE_MEMBERS);
	snprintf(fake.m[fake.n].set, sizeof(fake.m[0].set), "%s", q->u.distinct.key);
	snprintf(fake.m[fake.n].member, sizeof(fake.m[0].member), "%s", q->u.distinct.member);
	fake.m[fake.n++].expires = q->u.distinct.now + q->u.distinct.window;
	fake.adds++;
	return n + 1;
}

static void answer(query *q, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (q[i].kind == QUERY_GREYLIST) { /* a new triplet: deferred */
			q[i].status = QUERY_OK;
			q[i].u.grey.answer =
			    (greystep_out){.result = GREYSTEP_DEFER_NEW, .remaining_ms = 300000};
			continue;
		}
		if (q[i].kind == QUERY_KV && !fake.fail) {
			assert_int_equal(q[i].u.kv.op, QUERY_KV_GET);
			q[i].status = QUERY_OK;
			q[i].u.kv.found = marker_live(q[i].u.kv.ns, q[i].u.kv.key, q[i].u.kv.now_ms);
			continue;
		}
		if (q[i].kind != QUERY_DISTINCT_ADD) {
			q[i].status = QUERY_NOTFOUND;
			continue;
		}
		/* the add carries the limit: workers and hosts racing cannot go past it */
		assert_int_not_equal(q[i].u.distinct.limit, 0);
		/* the store's clock (Redis TIME) times the window: hosts' clocks may disagree */
		assert_true(q[i].u.distinct.store_clock);
		fake.peeks += q[i].u.distinct.peek;
		if (fake.fail) {
			q[i].status = QUERY_ERROR;
			continue;
		}
		q[i].status = QUERY_OK;
		q[i].u.distinct.capped = false;
		if (q[i].u.distinct.peek)
			q[i].u.distinct.count = live(q[i].u.distinct.key, q[i].u.distinct.member,
			                             q[i].u.distinct.now, &q[i].u.distinct.present);
		else
			q[i].u.distinct.count = fake_add(&q[i]);
	}
}

typedef struct stage_out {
	check_verdict final;
	check_verdict relay; /* the relay's own verdict, after its mode */
	bool relay_decided;
	char member[64], set[QUERY_KEY_MAX];
	/* the hook the engine would run */
	bool hook;
	int hook_gate;
	const check_strlist *hook_argv;
	const char *const *hook_names;
	char hook_values[CHECK_HOOK_VALUES][QUERY_KEY_MAX];
} stage_out;

static pipeline_run run;

/* The effects the engine would write, made on the fake. */
static void apply(const config *cfg)
{
	for (int i = 0; i < CHECK_COUNT; i++)
		for (size_t j = 0; j < run.effects[i].nq; j++) {
			query *q = &run.effects[i].q[j];

			if (!pipeline_effect_applies(&cfg->pipeline, &run, i, j))
				continue;
			/* the networks are counted by needs(), never as effects */
			assert_int_not_equal(q->kind, QUERY_DISTINCT_ADD);
			if (q->kind == QUERY_BLOCKLIST_RECORD) {
				fake.records++;
				fake.last_record = *q;
				snprintf(fake.record_key, sizeof(fake.record_key), "%s", q->u.record.keys[0]);
			} else if (q->kind == QUERY_KV) {
				marker_put_new(q);
			}
		}
}

static stage_out stage_at(const config *cfg, const decide_facts *f, int64_t now)
{
	static decide_txn txn;
	static const check_msg no_msg;
	stage_out out;
	size_t from = 0;

	memset(&out, 0, sizeof(out));
	decide_prepare(&cfg->decide, f, &txn);
	pipeline_begin(&run, CHECK_STAGE_RCPT, CHECKS_EVERY, f, &txn, &no_msg, now);
	pipeline_needs(&cfg->pipeline, &run);
	answer(run.q, run.nq);
	while (pipeline_decide(&cfg->pipeline, &run, &from))
		answer(run.q + from, run.nq - from);
	for (size_t i = 0; i < run.nq; i++)
		if (run.q[i].kind == QUERY_DISTINCT_ADD) {
			snprintf(out.member, sizeof(out.member), "%s", run.q[i].u.distinct.member);
			snprintf(out.set, sizeof(out.set), "%s", run.q[i].u.distinct.key);
		}
	out.final = run.final;
	out.relay_decided = run.decided[CHECK_ID_RELAY];
	if (out.relay_decided) {
		const check_effects *eff = &run.effects[CHECK_ID_RELAY];

		out.relay = run.verdict[CHECK_ID_RELAY];
		out.hook = eff->hook_argv != NULL;
		out.hook_gate = eff->hook_gate;
		out.hook_argv = eff->hook_argv;
		out.hook_names = eff->hook_names;
		for (size_t i = 0; out.hook && i < CHECK_HOOK_VALUES; i++)
			snprintf(out.hook_values[i], sizeof(out.hook_values[i]), "%s", eff->hook_values[i]);
	}
	apply(cfg);
	/* the engine runs a gated hook only when its marker write created the marker */
	if (out.hook && out.hook_gate >= 0) {
		const query *g = &run.effects[CHECK_ID_RELAY].q[out.hook_gate];

		out.hook = g->kind == QUERY_KV && g->status == QUERY_OK && !g->u.kv.found;
	}
	return out;
}

#define T0 1700000000

static stage_out stage(const config *cfg, const decide_facts *f)
{
	return stage_at(cfg, f, T0);
}

static decide_facts facts(const char *client, const char *sasl, const char *sender)
{
	return (decide_facts){.front = DECIDE_FRONT_POLICY,
	                      .client_address = client,
	                      .client_name = "unknown",
	                      .helo = "laptop",
	                      .sasl_username = sasl,
	                      .sender = sender,
	                      .recipient = "friend@example.org"};
}

/* The client address of network i: 198.18.i.7 (a /24 each). */
static const char *net(unsigned i)
{
	static char buf[8][32];
	static unsigned k;
	char *b = buf[k++ % 8];

	snprintf(b, 32, "198.18.%u.7", i);
	return b;
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
	memset(&fake, 0, sizeof(fake));
	return 0;
}

/* The 10th network passes, the 11th trips with the default reply, and is not added. */
static void test_exact_threshold(void **state)
{
	config *cfg = cfg_of("", "");
	decide_facts f;
	stage_out o;
	bool present;

	(void)state;
	for (unsigned i = 1; i <= 10; i++) {
		f = facts(net(i), "Alice", "alice@example.com");
		o = stage(cfg, &f);
		assert_int_equal(o.final.action, DECIDE_CONTINUE);
	}
	assert_string_equal(o.set, "relay:sasl:alice");
	assert_string_equal(o.member, "198.18.10.0/24");
	assert_int_equal(live("relay:sasl:alice", "", T0, &present), 10);
	f = facts(net(11), "alice", "alice@example.com");
	o = stage(cfg, &f);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_string_equal(o.final.check, "relay");
	assert_string_equal(o.final.reason, "relay");
	assert_string_equal(o.final.reply.code, "451");
	assert_string_equal(o.final.reply.xcode, "4.7.1");
	assert_string_equal(o.final.reply.text, "Too many client networks for this account, try again later");
	assert_non_null(strstr(o.final.detail, " account=sasl:alice network=198.18.11.0/24 networks=11 "
	                                       "max_networks=10 window=3600s"));
	/* not added: the count stays at 10, and the 11th trips again */
	assert_int_equal(live("relay:sasl:alice", "", T0, &present), 10);
	o = stage(cfg, &f);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	/* a known network refreshes and passes */
	f = facts("198.18.3.200", "alice", "alice@example.com");
	o = stage(cfg, &f);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_null(o.final.reason);
	/* another account is not affected */
	f = facts(net(11), "bob", "bob@example.com");
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_CONTINUE);
	/* no block_account, no notify by default */
	assert_int_equal(fake.records, 0);
	config_unref(cfg);
}

/*
 * A stolen password writes the site's own whitelisted domain in MAIL FROM:
 * the SASL login verifies that sender (the whitelist trusts it), and the
 * relay check still counts the account and trips on the 11th network.
 */
static void test_whitelisted_sender_still_counted(void **state)
{
	config *cfg = cfg_of("", "\"whitelist\": {\"domains\": [\"example.com\"]}");
	decide_facts f;

	(void)state;
	for (unsigned i = 1; i <= 10; i++) {
		f = facts(net(i), "carol", "carol@example.com");
		assert_int_equal(stage(cfg, &f).final.action, DECIDE_CONTINUE);
	}
	f = facts(net(11), "carol", "ceo@example.com");
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_TEMPFAIL);
	config_unref(cfg);
}

/* The window slides: networks leave it an hour after they were last seen, and the account sends again. */
static void test_window_slides(void **state)
{
	config *cfg = cfg_of("\"max_networks\": 3, \"window\": \"10m\"", "");
	decide_facts f;

	(void)state;
	for (unsigned i = 1; i <= 3; i++) {
		f = facts(net(i), "carol", NULL);
		assert_int_equal(stage_at(cfg, &f, T0 + i).final.action, DECIDE_CONTINUE);
	}
	f = facts(net(4), "carol", NULL);
	assert_int_equal(stage_at(cfg, &f, T0 + 10).final.action, DECIDE_TEMPFAIL);
	/* network 1 seen again at T0 + 300: it now lives until T0 + 900 */
	f = facts(net(1), "carol", NULL);
	assert_int_equal(stage_at(cfg, &f, T0 + 300).final.action, DECIDE_CONTINUE);
	/* at T0 + 602 network 2 (seen at T0 + 2) is gone: room for one */
	f = facts(net(4), "carol", NULL);
	assert_int_equal(stage_at(cfg, &f, T0 + 601).final.action, DECIDE_TEMPFAIL);
	assert_int_equal(stage_at(cfg, &f, T0 + 602).final.action, DECIDE_CONTINUE);
	f = facts(net(5), "carol", NULL);
	assert_int_equal(stage_at(cfg, &f, T0 + 602).final.action, DECIDE_TEMPFAIL);
	/* long after the window, no stuck state: a fresh start */
	assert_int_equal(stage_at(cfg, &f, T0 + 5000).final.action, DECIDE_CONTINUE);
	config_unref(cfg);
}

/* Private, loopback, link-local, unique-local and exempt_networks clients are never counted. */
static void test_exempt_never_counted(void **state)
{
	config *cfg =
	    cfg_of("\"max_networks\": 1, \"exempt_networks\": [\"203.0.113.0/24\", \"2001:db8:f::/48\"]", "");
	static const char *const never[] = {
	    "127.0.0.1",       "10.1.2.3",          "172.16.9.9",   "172.31.0.1",
	    "192.168.1.1",     "169.254.3.4",       "::1",          "fd00::1",
	    "fc12:3456::1",    "fe80::1",           "203.0.113.99", "2001:db8:f:1::1",
	    "::ffff:10.0.0.1", "::ffff:192.168.0.9"};
	decide_facts f;

	(void)state;
	f = facts("198.51.100.1", "dave", NULL);
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_CONTINUE);
	for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++) {
		f = facts(never[i], "dave", NULL);
		stage_out o = stage(cfg, &f);

		if (o.final.action != DECIDE_CONTINUE || o.member[0])
			fail_msg("%s was counted (%s)", never[i], o.member);
	}
	assert_int_equal(fake.peeks, 1);
	assert_int_equal(fake.adds, 1);
	/* just outside the private ranges: counted (and over the limit of 1) */
	f = facts("172.32.0.1", "dave", NULL);
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_TEMPFAIL);
	/* CGNAT is counted: a server that sees it sees a carrier's customers, each another one */
	f = facts("100.64.0.1", "dave", NULL);
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_TEMPFAIL);
	config_unref(cfg);
	/* ... unless the site exempts it (a VPN of its own on that range) */
	cfg = cfg_of("\"max_networks\": 1, \"exempt_networks\": [\"100.64.0.0/10\"]", "");
	f = facts("198.51.100.1", "dave2", NULL);
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_CONTINUE);
	f = facts("100.100.1.1", "dave2", NULL);
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_CONTINUE);
	config_unref(cfg);
}

/* IPv6 clients count by /48 (ipv6_prefix), IPv4-mapped ones as the IPv4 address they are. */
static void test_aggregation(void **state)
{
	config *cfg = cfg_of("\"max_networks\": 2", "");
	decide_facts f;

	(void)state;
	f = facts("2001:db8:1:2::9", "erin", NULL);
	assert_string_equal(stage(cfg, &f).member, "2001:db8:1::/48");
	f = facts("2001:db8:1:ffff:1:2:3:4", "erin", NULL);
	assert_string_equal(stage(cfg, &f).member, "2001:db8:1::/48");
	f = facts("::ffff:198.51.100.9", "erin", NULL);
	assert_string_equal(stage(cfg, &f).member, "198.51.100.0/24");
	f = facts("198.51.100.200", "erin", NULL);
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_CONTINUE); /* the same /24 */
	f = facts("2001:db8:2::1", "erin", NULL);
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_TEMPFAIL); /* a third network */
	config_unref(cfg);
	cfg = cfg_of("\"ipv4_prefix\": 16, \"ipv6_prefix\": 64", "");
	f = facts("2001:db8:1:2::9", "erin", NULL);
	assert_string_equal(stage(cfg, &f).member, "2001:db8:1:2::/64");
	f = facts("198.51.100.9", "erin", NULL);
	assert_string_equal(stage(cfg, &f).member, "198.51.0.0/16");
	config_unref(cfg);
}

/* Unauthenticated mail is never keyed, unless "sender" is listed and the sender is of sender_domains. */
static void test_keys(void **state)
{
	config *cfg = cfg_of("\"max_networks\": 1", "");
	char err[4096];
	decide_facts f;
	stage_out o;

	(void)state;
	f = facts("198.51.100.1", NULL, "alice@example.com");
	assert_string_equal(stage(cfg, &f).member, "");
	f = facts("198.51.100.1", "", "alice@example.com");
	assert_string_equal(stage(cfg, &f).member, "");
	assert_int_equal(fake.peeks, 0);
	config_unref(cfg);

	cfg = cfg_of("\"max_networks\": 1, \"keys\": [\"sasl_username\", \"sender\"], \"sender_domains\": "
	             "[\"Example.COM\"]",
	             "");
	f = facts("198.51.100.1", NULL, "<Frank@Example.com>");
	o = stage(cfg, &f);
	assert_string_equal(o.set, "relay:frank@example.com");
	f = facts("203.0.113.1", NULL, "frank@example.com");
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_TEMPFAIL);
	/* other domains, the null sender: never keyed */
	memset(&o, 0, sizeof(o));
	f = facts("203.0.113.1", NULL, "frank@example.net");
	assert_string_equal(stage(cfg, &f).set, "");
	f = facts("203.0.113.1", NULL, "<>");
	assert_string_equal(stage(cfg, &f).set, "");
	/* an authenticated client goes by its login first */
	f = facts("203.0.113.1", "frank", "frank@example.com");
	assert_string_equal(stage(cfg, &f).set, "relay:sasl:frank");
	config_unref(cfg);

	/* "sender" without sender_domains would key every forged sender: refused */
	assert_null(load("\"keys\": [\"sender\"]", "", err, sizeof(err)));
	assert_non_null(strstr(err, "relay.keys"));
	assert_non_null(strstr(err, "sender_domains"));
	assert_null(load("\"keys\": [\"helo\"]", "", err, sizeof(err)));
	assert_null(load("\"keys\": []", "", err, sizeof(err)));
	assert_null(load("\"exempt_networks\": [\"192.0.2.1/24\"]", "", err, sizeof(err)));
	assert_non_null(strstr(err, "relay.exempt_networks"));
	assert_null(load("\"action\": \"reject\", \"reply\": \"451 4.7.1 x\"", "", err, sizeof(err)));
	assert_null(load("\"reply\": \"550 5.7.1 x\"", "", err, sizeof(err)));
	assert_null(load("\"notify\": [\"logger\", \"%{account}\"]", "", err, sizeof(err)));
	assert_non_null(strstr(err, "absolute path"));
	assert_null(load("\"notify\": [\"/bin/echo\", \"%{acount}\"]", "", err, sizeof(err)));
	assert_non_null(strstr(err, "a placeholder is a whole argument"));
	/* the program is the admin's: never chosen by a value from mail */
	assert_null(load("\"notify\": [\"/usr/lib/hooks/%{account}\"]", "", err, sizeof(err)));
	assert_non_null(strstr(err, "holds a placeholder"));
	/* a value is an argument of its own: inside a script, a sender's local part would be code */
	assert_null(
	    load("\"notify\": [\"/bin/sh\", \"-c\", \"logger relay %{account}\"]", "", err, sizeof(err)));
	assert_non_null(strstr(err, "a placeholder is a whole argument"));
	assert_null(
	    load("\"notify\": [\"/usr/local/bin/alert\", \"--account=%{account}\"]", "", err, sizeof(err)));
	cfg = cfg_of("\"notify\": [\"/bin/sh\", \"-c\", \"logger relay \\\"$1\\\"\", \"sh\", \"%{account}\"]",
	             "");
	config_unref(cfg);
}

/* Off by default: an upgrade changes nothing. */
static void test_off_by_default(void **state)
{
	config *cfg = cfg_of("\"mode\": \"off\"", "");
	char err[4096];
	config *plain;
	decide_facts f = facts("198.51.100.1", "alice", NULL);

	(void)state;
	assert_false(stage(cfg, &f).relay_decided);
	config_unref(cfg);
	plain = load("\"max_networks\": 10", "", err, sizeof(err));
	assert_non_null(plain);
	config_unref(plain);
}

/* Shadow: counts past max_networks (how far an account went), refuses nothing, logs "would tempfail". */
static void test_shadow(void **state)
{
	config *cfg = cfg_of("\"mode\": \"shadow\", \"max_networks\": 2, \"block_account\": true", "");
	decide_facts f;
	stage_out o;
	char text[64], addr[32];
	bool present;

	(void)state;
	f = facts(net(1), "gina", NULL);
	stage(cfg, &f);
	f = facts(net(2), "gina", NULL);
	stage(cfg, &f);
	assert_int_equal(fake.adds, 2); /* shadow counts accepted mail too */
	f = facts(net(3), "gina", NULL);
	o = stage(cfg, &f);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_true(o.relay_decided);
	assert_int_equal(o.relay.enforce_action, DECIDE_TEMPFAIL);
	assert_string_equal(o.relay.reason, "relay");
	pipeline_action_text(&cfg->pipeline, &o.relay, text, sizeof(text));
	assert_string_equal(text, "shadow, would tempfail");
	assert_non_null(strstr(o.relay.detail, " networks=3 max_networks=2 "));
	assert_int_equal(fake.records, 0); /* the account is not blocked */
	assert_false(o.hook);
	/* the third network is counted, and the next ones: relay show says how far the account went */
	assert_int_equal(live("relay:sasl:gina", "", T0, &present), 3);
	f = facts(net(4), "gina", NULL);
	o = stage(cfg, &f);
	assert_non_null(strstr(o.relay.detail, " networks=4 max_networks=2 "));
	assert_int_equal(o.relay.enforce_action, DECIDE_TEMPFAIL);
	/* a network counted past the limit is known: it passes */
	f = facts(net(3), "gina", NULL);
	o = stage(cfg, &f);
	assert_null(o.relay.reason);
	/* ... up to max_networks + 256: a botnet cannot grow the set without end */
	for (unsigned i = 5; i <= 300; i++) {
		snprintf(addr, sizeof(addr), "%s", net(i % 256));
		if (i >= 256)
			snprintf(addr, sizeof(addr), "198.19.%u.1", i - 255);
		f = facts(addr, "gina", NULL);
		o = stage(cfg, &f);
		assert_int_equal(o.relay.enforce_action, DECIDE_TEMPFAIL);
		assert_int_equal(o.final.action, DECIDE_CONTINUE);
	}
	assert_int_equal(live("relay:sasl:gina", "", T0, &present), 2 + 256);
	config_unref(cfg);
	/* enforce on the same set: the networks counted pass, a new one trips */
	cfg = cfg_of("\"max_networks\": 2", "");
	f = facts(net(200), "gina", NULL);
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_CONTINUE);
	f = facts("198.20.0.1", "gina", NULL);
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_TEMPFAIL);
	assert_int_equal(live("relay:sasl:gina", "", T0, &present), 2 + 256);
	config_unref(cfg);
}

/*
 * relay.max_entries: the add carries it, and a new network the store holds
 * back (its table full of live rows) passes uncounted, in enforce and in
 * shadow, however many networks the account has; known ones go on.
 */
static void test_capped_passes_uncounted(void **state)
{
	config *cfg = cfg_of("\"max_networks\": 2, \"max_entries\": 3", "");
	decide_facts f;
	stage_out o;
	bool present;

	(void)state;
	f = facts(net(1), "hana", NULL);
	stage(cfg, &f);
	f = facts(net(1), "ivan", NULL);
	stage(cfg, &f);
	f = facts(net(2), "ivan", NULL);
	stage(cfg, &f);
	fake.cap = 3;
	f = facts(net(2), "hana", NULL);
	o = stage(cfg, &f);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_null(o.relay.reason);
	assert_int_equal(live("relay:sasl:hana", "", T0, &present), 1);
	/* ivan at his limit: a new network trips as always (the limit comes first) */
	f = facts(net(3), "ivan", NULL);
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_TEMPFAIL);
	config_unref(cfg);
	/* shadow counts past the limit; held back at the cap, a new network is no trip */
	cfg = cfg_of("\"mode\": \"shadow\", \"max_networks\": 1, \"max_entries\": 3", "");
	f = facts(net(4), "ivan", NULL);
	o = stage(cfg, &f);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_null(o.relay.reason);
	assert_int_equal(live("relay:sasl:ivan", "", T0, &present), 2);
	f = facts(net(2), "ivan", NULL);
	assert_null(stage(cfg, &f).relay.reason);
	config_unref(cfg);
}

/*
 * Counted when the relay check is reached: a recipient a check after it
 * refuses (the greylist here) has counted its network (the price of
 * counting before deciding, see test_parallel_new_networks); one that a
 * trap, the blocklist or the whitelist stops never reaches it.
 */
static void test_counted_when_reached(void **state)
{
	config *cfg = cfg_of("\"keys\": [\"sender\"], \"sender_domains\": [\"example.com\"]",
	                     "\"greylist\": {\"mode\": \"enforce\"}");
	decide_facts f = facts("198.51.100.1", NULL, "frank@example.com");
	stage_out o;

	(void)state;
	o = stage(cfg, &f);
	assert_int_equal(o.final.action, DECIDE_DEFER_IF_PERMIT);
	assert_string_equal(o.final.check, "greylist");
	assert_int_equal(fake.adds, 1);
	/* a trap recipient stops before the relay check: not even asked */
	f = facts("203.0.113.1", NULL, "frank@example.com");
	f.recipient = "trap@example.com";
	o = stage(cfg, &f);
	assert_false(o.relay_decided);
	assert_int_equal(fake.peeks, 1);
	assert_int_equal(fake.adds, 1);
	config_unref(cfg);
}

/*
 * Parallel requests from new networks for an account one network short
 * of its limit (two workers, or two hosts on one Redis): both are asked
 * before either decides. The store's add decides, atomically: exactly
 * one passes. (Deciding on a peek and adding afterwards let every one of
 * them pass.)
 */
static void test_parallel_new_networks(void **state)
{
	static pipeline_run other;
	config *cfg = cfg_of("\"max_networks\": 3", "");
	static decide_txn txn1, txn2;
	static const check_msg no_msg;
	decide_facts f1, f2;
	size_t from1 = 0, from2 = 0;
	bool asked1, asked2;

	(void)state;
	for (unsigned i = 1; i <= 2; i++) {
		f1 = facts(net(i), "mona", NULL);
		assert_int_equal(stage(cfg, &f1).final.action, DECIDE_CONTINUE);
	}
	f1 = facts(net(3), "mona", NULL);
	f2 = facts(net(4), "mona", NULL);
	decide_prepare(&cfg->decide, &f1, &txn1);
	decide_prepare(&cfg->decide, &f2, &txn2);
	pipeline_begin(&run, CHECK_STAGE_RCPT, CHECKS_EVERY, &f1, &txn1, &no_msg, T0);
	pipeline_begin(&other, CHECK_STAGE_RCPT, CHECKS_EVERY, &f2, &txn2, &no_msg, T0);
	/* both ask, then the store answers both, then both decide */
	answer(run.q, pipeline_needs(&cfg->pipeline, &run));
	answer(other.q, pipeline_needs(&cfg->pipeline, &other));
	asked1 = pipeline_decide(&cfg->pipeline, &run, &from1);
	asked2 = pipeline_decide(&cfg->pipeline, &other, &from2);
	if (asked1)
		answer(run.q + from1, run.nq - from1);
	if (asked2)
		answer(other.q + from2, other.nq - from2);
	while (asked1 && pipeline_decide(&cfg->pipeline, &run, &from1))
		answer(run.q + from1, run.nq - from1);
	while (asked2 && pipeline_decide(&cfg->pipeline, &other, &from2))
		answer(other.q + from2, other.nq - from2);
	assert_int_equal(run.final.action, DECIDE_CONTINUE);
	assert_int_equal(other.final.action, DECIDE_TEMPFAIL);
	config_unref(cfg);
}

static void test_store_errors(void **state)
{
	config *cfg = cfg_of("", "");
	decide_facts f = facts("198.51.100.1", "hank", NULL);
	stage_out o;

	(void)state;
	fake.fail = true;
	o = stage(cfg, &f);
	assert_int_equal(o.final.action, DECIDE_CONTINUE);
	assert_string_equal(o.relay.reason, "store-error");
	assert_non_null(strstr(o.relay.detail, "check=relay account=sasl:hank"));
	config_unref(cfg);
	cfg = cfg_of("\"on_error\": \"tempfail\"", "");
	o = stage(cfg, &f);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_string_equal(o.final.reply.code, "451");
	assert_int_equal(fake.adds, 0);
	config_unref(cfg);
}

/* Actions, block_account's blocklist entry and the notify hook. */
static void test_trip_effects(void **state)
{
	config *cfg = cfg_of("\"max_networks\": 1, \"action\": \"reject\", \"reply\": \"554 5.7.1 Account "
	                     "suspended\", \"block_account\": true, \"block_ttl\": \"2h\", \"notify\": "
	                     "[\"/usr/local/bin/relay-alert\", \"%{account}\", \"%{network}\", "
	                     "\"%{count}\", \"%{action}\"]",
	                     "");
	decide_facts f;
	stage_out o;

	(void)state;
	f = facts(net(1), "Ivan", "ivan@example.com");
	o = stage(cfg, &f);
	assert_false(o.hook);
	f = facts(net(2), "ivan", "ivan@example.com");
	o = stage(cfg, &f);
	assert_int_equal(o.final.action, DECIDE_REJECT);
	assert_string_equal(o.final.reply.text, "Account suspended");
	assert_int_equal(fake.records, 1);
	assert_string_equal(fake.record_key, "sasl:ivan");
	assert_string_equal(fake.last_record.u.record.hit.reason, "relay");
	assert_int_equal(fake.last_record.u.record.hit.ttl, 7200);
	assert_true(o.hook);
	assert_int_equal(o.hook_argv->n, 5);
	assert_string_equal(o.hook_argv->v[1], "%{account}");
	assert_string_equal(o.hook_names[0], "account");
	assert_string_equal(o.hook_values[0], "sasl:ivan");
	assert_string_equal(o.hook_values[1], "198.18.2.0/24");
	assert_string_equal(o.hook_values[2], "2");
	assert_string_equal(o.hook_values[3], "reject");
	config_unref(cfg);

	cfg = cfg_of("\"max_networks\": 1, \"action\": \"hold\"", "");
	f = facts(net(2), "ivan", NULL);
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_HOLD);
	config_unref(cfg);
	cfg = cfg_of("\"max_networks\": 1, \"action\": \"discard\"", "");
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_DISCARD);
	config_unref(cfg);
}

/*
 * A trip blocks and notifies once a window: a botnet retrying from new
 * networks is refused each time, without a blocklist write and a hook per
 * message; the log line says which trip it is. After the window, the next
 * trip blocks and notifies again.
 */
static void test_trip_once_a_window(void **state)
{
	config *cfg = cfg_of("\"max_networks\": 1, \"window\": \"10m\", \"block_account\": true, "
	                     "\"notify\": [\"/usr/local/bin/relay-alert\", \"%{account}\"]",
	                     "");
	decide_facts f;
	stage_out o;

	(void)state;
	f = facts(net(1), "kim", NULL);
	assert_int_equal(stage_at(cfg, &f, T0).final.action, DECIDE_CONTINUE);
	f = facts(net(2), "kim", NULL);
	o = stage_at(cfg, &f, T0 + 1);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_non_null(strstr(o.final.detail, " trip=first"));
	assert_true(o.hook);
	assert_int_equal(fake.records, 1);
	for (unsigned i = 3; i < 6; i++) {
		f = facts(net(i), "kim", NULL);
		o = stage_at(cfg, &f, T0 + i);
		assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
		assert_non_null(strstr(o.final.detail, " trip=repeat"));
		assert_false(o.hook);
	}
	assert_int_equal(fake.records, 1);
	/* another account trips on its own */
	f = facts(net(1), "lee", NULL);
	stage_at(cfg, &f, T0 + 10);
	f = facts(net(2), "lee", NULL);
	o = stage_at(cfg, &f, T0 + 10);
	assert_true(o.hook);
	assert_int_equal(fake.records, 2);
	/* a window after the first trip (and network 1 gone too): the next trip blocks and notifies again */
	f = facts(net(7), "kim", NULL);
	assert_int_equal(stage_at(cfg, &f, T0 + 700).final.action, DECIDE_CONTINUE);
	f = facts(net(8), "kim", NULL);
	o = stage_at(cfg, &f, T0 + 701);
	assert_non_null(strstr(o.final.detail, " trip=first"));
	assert_true(o.hook);
	assert_int_equal(fake.records, 3);
	config_unref(cfg);
}

/*
 * block_account blocklists a SASL login only: a sender-keyed account
 * (relay.sender_domains) trips on forged MAIL FROMs too, and a stranger
 * must not get a real user's address blocklisted.
 */
static void test_block_only_sasl(void **state)
{
	config *cfg = cfg_of("\"max_networks\": 1, \"block_account\": true, \"keys\": [\"sasl_username\", "
	                     "\"sender\"], \"sender_domains\": [\"example.com\"]",
	                     "");
	decide_facts f;

	(void)state;
	f = facts(net(1), NULL, "judy@example.com");
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_CONTINUE);
	f = facts(net(2), NULL, "judy@example.com");
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_TEMPFAIL);
	assert_int_equal(fake.records, 0);
	/* the login of the same user is blocked at its trip */
	f = facts(net(1), "judy", "judy@example.com");
	stage(cfg, &f);
	f = facts(net(2), "judy", "judy@example.com");
	assert_int_equal(stage(cfg, &f).final.action, DECIDE_TEMPFAIL);
	assert_int_equal(fake.records, 1);
	assert_string_equal(fake.record_key, "sasl:judy");
	config_unref(cfg);
}

/*
 * The account in the log line is one field: a SASL name or a sender's
 * quoted local part with blanks and '=' cannot write fields of its own
 * (docs/security.md "Log injection"), as the log's own fields.
 */
static void test_account_field_masked(void **state)
{
	config *cfg = cfg_of("\"max_networks\": 1, \"keys\": [\"sasl_username\", \"sender\"], "
	                     "\"sender_domains\": [\"example.com\"]",
	                     "");
	decide_facts f;
	stage_out o;

	(void)state;
	f = facts(net(1), "eve network=10.0.0.0/8 trip=first", NULL);
	stage(cfg, &f);
	f = facts(net(2), "eve network=10.0.0.0/8 trip=first", NULL);
	o = stage(cfg, &f);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_non_null(
	    strstr(o.final.detail, " account=sasl:eve?network?10.0.0.0/8?trip?first network=198.18.2.0/24 "));
	f = facts(net(1), NULL, "\"x max_networks=99\"@example.com");
	stage(cfg, &f);
	f = facts(net(2), NULL, "\"x max_networks=99\"@example.com");
	o = stage(cfg, &f);
	assert_int_equal(o.final.action, DECIDE_TEMPFAIL);
	assert_null(strstr(o.final.detail, " max_networks=99"));
	assert_non_null(strstr(o.final.detail, "?max_networks?99"));
	/* the store error line too */
	fake.fail = true;
	o = stage(cfg, &f);
	assert_null(strstr(o.relay.detail, " max_networks=99"));
	config_unref(cfg);
}

/*
 * The ratelimit (after the relay check) is asked with the relay check's
 * add, not before it with the blocklist: one store call for both, one
 * round trip to Redis.
 */
static void test_ratelimit_asked_with_relay(void **state)
{
	config *cfg = cfg_of("", "\"ratelimit\": {\"mode\": \"enforce\", \"rules\": [{\"name\": \"account\", "
	                         "\"key\": \"sasl_username\", \"rate\": \"100/1h\"}]}");
	decide_facts f = facts(net(1), "alice", "alice@example.com");
	static decide_txn txn;
	static const check_msg no_msg;
	size_t from = 0, first, counters = 0, adds = 0;

	(void)state;
	decide_prepare(&cfg->decide, &f, &txn);
	pipeline_begin(&run, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &txn, &no_msg, T0);
	first = pipeline_needs(&cfg->pipeline, &run);
	for (size_t i = 0; i < first; i++)
		assert_int_not_equal(run.q[i].kind, QUERY_COUNTER);
	answer(run.q, first);
	assert_true(pipeline_decide(&cfg->pipeline, &run, &from));
	for (size_t i = from; i < run.nq; i++) {
		counters += run.q[i].kind == QUERY_COUNTER;
		adds += run.q[i].kind == QUERY_DISTINCT_ADD;
	}
	assert_int_equal(counters, 1);
	assert_int_equal(adds, 2);
	answer(run.q + from, run.nq - from);
	assert_false(pipeline_decide(&cfg->pipeline, &run, &from));
	assert_true(run.decided[CHECK_ID_RATELIMIT]);
	assert_int_equal(run.final.action, DECIDE_CONTINUE);
	config_unref(cfg);
}

#define CASE(t) cmocka_unit_test_setup(t, reset)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    CASE(test_exact_threshold),
	    CASE(test_whitelisted_sender_still_counted),
	    CASE(test_window_slides),
	    CASE(test_exempt_never_counted),
	    CASE(test_aggregation),
	    CASE(test_keys),
	    CASE(test_off_by_default),
	    CASE(test_shadow),
	    CASE(test_counted_when_reached),
	    CASE(test_store_errors),
	    CASE(test_trip_effects),
	    CASE(test_block_only_sasl),
	    CASE(test_trip_once_a_window),
	    CASE(test_parallel_new_networks),
	    CASE(test_account_field_masked),
	    CASE(test_capped_passes_uncounted),
	    CASE(test_ratelimit_asked_with_relay),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
