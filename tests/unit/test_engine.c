/*
 * Unit tests of the engine (engine.h): engine_stage as both front ends
 * call it, over a real SQLite file in a temporary folder, with the log
 * lines read through log_set_sink. What the engine owns is tested here:
 * the order of the checks, the message's state between stages (the
 * milter's engine_msg, the policy protocol's instance table), modes and
 * effects; what each check decides is test_decide.c's.
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

#include "engine.h"
#include "log.h"
#include "stats.h"
#include "stats_scrape.h"

#define REJECT "550 5.7.1 Sender is blocklisted after mail to a spamtrap"

static char dir[] = "/tmp/spamtrapd-test-engine.XXXXXX";
static char lines[64][2048];
static size_t nlines;

static void sink(int level, const char *msg, void *ctx)
{
	(void)level, (void)ctx;
	if (nlines < sizeof(lines) / sizeof(lines[0]))
		snprintf(lines[nlines++], sizeof(lines[0]), "%s", msg);
}

/* How many captured lines hold needle; the capture restarts at each call of start(). */
static size_t logged(const char *needle)
{
	size_t n = 0;

	for (size_t i = 0; i < nlines; i++)
		n += strstr(lines[i], needle) != NULL;
	return n;
}

/*
 * An engine on a fresh database with the trap trap@example.com, the
 * members traps_extra in the traps section and the config's extra members.
 */
static engine *start2(const char *traps_extra, const char *extra)
{
	static unsigned seq;
	char path[256], err[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/c%u.json", dir, ++seq);
	f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f,
	        "{\"traps\": {\"addresses\": [\"trap@example.com\"]%s%s}, \"store\": {\"sqlite\": {\"path\": "
	        "\"%s/db%u.sqlite\"}}%s%s}\n",
	        traps_extra[0] ? ", " : "", traps_extra, dir, seq, extra[0] ? ", " : "", extra);
	fclose(f);
	config *cfg = config_load(path, NULL, 0, err, sizeof(err));
	if (!cfg)
		fail_msg("config: %s", err);
	engine *eng = engine_new(cfg, err, sizeof(err));
	assert_non_null(eng);
	assert_int_equal(engine_open_store(eng, err, sizeof(err)), 0);
	nlines = 0;
	return eng;
}

static engine *start(const char *extra)
{
	return start2("", extra);
}

static decide_facts facts(decide_front front, const char *client, const char *sender, const char *rcpt)
{
	return (decide_facts){.front = front,
	                      .client_address = client,
	                      .helo = "mx.sender.test",
	                      .sender = sender,
	                      .recipient = rcpt,
	                      .queue_id = "QID1"};
}

/* One policy request: the listener's checks, the message's state by instance, as policy_server.c does. */
static check_verdict policy(engine *eng, unsigned checks, check_stage stage, const char *instance,
                            const decide_facts *f)
{
	engine_snapshot *snap = engine_acquire(eng);
	engine_msg m;

	engine_msg_begin(&m, snap);
	engine_msg_recall(&m, instance);
	check_verdict v = engine_stage(&m, stage, checks, f);
	engine_msg_remember(&m, instance);
	engine_msg_end(&m);
	engine_release(snap);
	return v;
}

/* A milter transaction's messages: one engine_msg from MAIL FROM to the end, as milter.c keeps it. */
typedef struct milter_txn {
	engine_msg m;
	engine_snapshot *snap;
} milter_txn;

static check_verdict milter_mail(engine *eng, milter_txn *t, const decide_facts *f)
{
	t->snap = engine_acquire(eng);
	engine_msg_begin(&t->m, t->snap);
	return engine_stage(&t->m, CHECK_STAGE_MAIL, CHECKS_EVERY, f);
}

static void milter_end(milter_txn *t)
{
	engine_msg_end(&t->m);
	engine_release(t->snap);
}

static void stop(engine *eng)
{
	engine_free(eng);
}

/* ---- the policy protocol ---- */

/* A trap hit on the trap listener lists the sender; the sender listener then refuses it at MAIL FROM. */
static void test_policy_trap_then_blocklist(void **state)
{
	(void)state;
	engine *eng = start("");
	unsigned trap = policy_role_checks(POLICY_ROLE_TRAP), sender = policy_role_checks(POLICY_ROLE_SENDER);
	decide_facts hit = facts(DECIDE_FRONT_POLICY, "192.0.2.50", "spam@bad.test", "trap@example.com");
	decide_facts next = facts(DECIDE_FRONT_POLICY, "192.0.2.51", "spam@bad.test", NULL);

	check_verdict v = policy(eng, trap, CHECK_STAGE_RCPT, "i1", &hit);
	assert_int_equal(v.action, DECIDE_REJECT);
	assert_string_equal(v.reply.xcode, "5.1.1");
	assert_string_equal(v.check, "traps");
	assert_int_equal(logged("reject: trap trap=trap@example.com blocklisted=spam@bad.test,192.0.2.50"),
	                 1);

	/* The trap listener runs no blocklist: a listed sender passes it... */
	decide_facts other = facts(DECIDE_FRONT_POLICY, "192.0.2.51", "spam@bad.test", "user@example.net");
	assert_int_equal(policy(eng, trap, CHECK_STAGE_RCPT, "i2", &other).action, DECIDE_CONTINUE);
	/* ...the sender listener refuses it, at MAIL and at RCPT (smtpd_delay_reject). */
	v = policy(eng, sender, CHECK_STAGE_MAIL, "i2", &next);
	assert_int_equal(v.action, DECIDE_REJECT);
	assert_string_equal(v.reply.code, "550");
	assert_string_equal(v.check, "blocklist");
	assert_int_equal(policy(eng, sender, CHECK_STAGE_RCPT, "i2", &other).action, DECIDE_REJECT);
	stop(eng);
}

/*
 * One `full` listener: the other recipients of the message whose trap hit
 * just listed its sender are not refused (traps.on_mixed); a new message
 * (instance) is; a sender listed before the message began is refused for
 * every recipient (issue 11, item 2).
 */
static void test_policy_full_same_message(void **state)
{
	(void)state;
	engine *eng = start("");
	unsigned full = policy_role_checks(POLICY_ROLE_FULL);
	decide_facts t = facts(DECIDE_FRONT_POLICY, "192.0.2.60", "new@bad.test", "trap@example.com");
	decide_facts o = facts(DECIDE_FRONT_POLICY, "192.0.2.60", "new@bad.test", "user@example.net");

	assert_int_equal(policy(eng, full, CHECK_STAGE_RCPT, "m1", &t).action, DECIDE_REJECT);
	assert_int_equal(policy(eng, full, CHECK_STAGE_RCPT, "m1", &o).action, DECIDE_CONTINUE);
	assert_int_equal(logged("sender hit a trap earlier in this message"), 1);
	assert_int_equal(policy(eng, full, CHECK_STAGE_RCPT, "m2", &o).action, DECIDE_REJECT);

	/* Listed before: the trap first does not open the door to the others. */
	decide_facts t2 = facts(DECIDE_FRONT_POLICY, "192.0.2.60", "new@bad.test", "trap@example.com");
	assert_int_equal(policy(eng, full, CHECK_STAGE_RCPT, "m3", &t2).action, DECIDE_REJECT);
	assert_int_equal(policy(eng, full, CHECK_STAGE_RCPT, "m3", &o).action, DECIDE_REJECT);
	stop(eng);
}

/* ---- the milter ---- */

/* MAIL FROM judges the sender once; recipients count toward the end of message. */
static void test_milter_message(void **state)
{
	(void)state;
	engine *eng = start("");
	milter_txn t;
	decide_facts f = facts(DECIDE_FRONT_MILTER, "192.0.2.70", "s@bad.test", NULL);

	assert_int_equal(milter_mail(eng, &t, &f).action, DECIDE_CONTINUE);
	f.recipient = "alice@example.net";
	assert_int_equal(engine_stage(&t.m, CHECK_STAGE_RCPT, CHECKS_EVERY, &f).action, DECIDE_CONTINUE);
	f.recipient = "trap+x@example.com";
	assert_int_equal(engine_stage(&t.m, CHECK_STAGE_RCPT, CHECKS_EVERY, &f).action, DECIDE_DROP_COPY);
	/* The sender this message listed is not refused for the message's later recipients. */
	f.recipient = "bob@example.net";
	assert_int_equal(engine_stage(&t.m, CHECK_STAGE_RCPT, CHECKS_EVERY, &f).action, DECIDE_CONTINUE);
	f.recipient = NULL;
	check_verdict v = engine_stage(&t.m, CHECK_STAGE_EOM, CHECKS_EVERY, &f);
	assert_int_equal(v.action, DECIDE_DROP_COPY);
	assert_int_equal(logged("remove trap recipients at end of message: 1 trap recipient(s), 2 other(s)"),
	                 1);
	milter_end(&t);

	/* The next transaction is refused at MAIL FROM. */
	assert_int_equal(milter_mail(eng, &t, &f).action, DECIDE_REJECT);
	milter_end(&t);

	/* Only traps: the whole message is dropped. */
	decide_facts g = facts(DECIDE_FRONT_MILTER, "192.0.2.71", "s2@bad.test", NULL);
	assert_int_equal(milter_mail(eng, &t, &g).action, DECIDE_CONTINUE);
	g.recipient = "trap@example.com";
	assert_int_equal(engine_stage(&t.m, CHECK_STAGE_RCPT, CHECKS_EVERY, &g).action, DECIDE_DROP_COPY);
	g.recipient = NULL;
	assert_int_equal(engine_stage(&t.m, CHECK_STAGE_EOM, CHECKS_EVERY, &g).action, DECIDE_DISCARD);
	milter_end(&t);
	stop(eng);
}

/* ---- modes ---- */

static void test_traps_shadow(void **state)
{
	(void)state;
	engine *eng = start2("\"mode\": \"shadow\"", "");
	milter_txn t;
	decide_facts f = facts(DECIDE_FRONT_MILTER, "192.0.2.80", "sh@bad.test", NULL);

	assert_int_equal(milter_mail(eng, &t, &f).action, DECIDE_CONTINUE);
	f.recipient = "trap@example.com";
	check_verdict v = engine_stage(&t.m, CHECK_STAGE_RCPT, CHECKS_EVERY, &f);
	assert_int_equal(v.action, DECIDE_CONTINUE);
	assert_int_equal(logged("shadow, would drop-copy: trap trap=trap@example.com"), 1);
	f.recipient = NULL;
	assert_int_equal(engine_stage(&t.m, CHECK_STAGE_EOM, CHECKS_EVERY, &f).action, DECIDE_CONTINUE);
	milter_end(&t);
	/* A shadow trap still records: the blocklist (enforcing) refuses the next message. */
	assert_int_equal(milter_mail(eng, &t, &f).action, DECIDE_REJECT);
	milter_end(&t);
	stop(eng);
}

static void test_blocklist_shadow_and_off(void **state)
{
	(void)state;
	static const struct {
		const char *mode, *line;
	} cases[] = {
	    {"\"blocklist\": {\"mode\": \"shadow\"}", "shadow, would reject: blocklisted key=x@bad.test"},
	    {"\"blocklist\": {\"mode\": \"off\"}", NULL},
	    {"\"mode\": \"dry-run\"", "dry-run, would reject: blocklisted key=x@bad.test"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		engine *eng = start(cases[i].mode);
		unsigned full = policy_role_checks(POLICY_ROLE_FULL);
		decide_facts hit = facts(DECIDE_FRONT_POLICY, "192.0.2.90", "x@bad.test", "trap@example.com");
		decide_facts mail = facts(DECIDE_FRONT_POLICY, "192.0.2.91", "x@bad.test", NULL);

		print_message("case: %s\n", cases[i].mode);
		policy(eng, full, CHECK_STAGE_RCPT, "a", &hit); /* recorded in every mode */
		nlines = 0;
		check_verdict v = policy(eng, full, CHECK_STAGE_MAIL, "b", &mail);
		assert_int_equal(v.action, DECIDE_CONTINUE);
		/* What a shadow check would have done is in its log line; the verdict lets the mail through.
		 */
		if (cases[i].line) {
			assert_int_equal(logged(cases[i].line), 1);
		} else {
			assert_int_equal(nlines, 0); /* off: not even looked up */
		}
		stop(eng);
	}
}

/* ---- metrics ---- */

#define TRAP_REJECT "spamtrapd_decisions_total{check=\"traps\",action=\"reject\",mode=\"enforce\"}"
#define BL_REJECT "spamtrapd_decisions_total{check=\"blocklist\",action=\"reject\",mode=\"enforce\"}"
#define BL_SHADOW "spamtrapd_decisions_total{check=\"blocklist\",action=\"reject\",mode=\"shadow\"}"
#define HITS "spamtrapd_trap_hits_total{mode=\"enforce\"}"
#define SENDER_RECORDS "spamtrapd_blocklist_additions_total{key_type=\"sender\",reason=\"trap\"}"
#define QUERY_CALLS "spamtrapd_store_call_duration_seconds_count{backend=\"sqlite\",call=\"queries\"}"
#define WRITE_CALLS "spamtrapd_store_call_duration_seconds_count{backend=\"sqlite\",call=\"writes\"}"
#define CLIENT_RECORDS "spamtrapd_blocklist_additions_total{key_type=\"client_address\",reason=\"trap\"}"

/*
 * Every decision the engine logs is counted once, whichever front end
 * asked; a shadow verdict as what enforce would have done.
 */
static void test_metrics_counted(void **state)
{
	(void)state;
	engine *eng = start("");
	unsigned trap = policy_role_checks(POLICY_ROLE_TRAP), sender = policy_role_checks(POLICY_ROLE_SENDER);
	decide_facts hit = facts(DECIDE_FRONT_POLICY, "192.0.2.60", "m@bad.test", "trap@example.com");
	decide_facts next = facts(DECIDE_FRONT_POLICY, "192.0.2.61", "m@bad.test", NULL);
	long long trap0 = scraped(TRAP_REJECT), bl0 = scraped(BL_REJECT), shadow0 = scraped(BL_SHADOW),
	          hits0 = scraped(HITS), senders0 = scraped(SENDER_RECORDS),
	          clients0 = scraped(CLIENT_RECORDS), queries0 = scraped(QUERY_CALLS),
	          writes0 = scraped(WRITE_CALLS);

	assert_true(trap0 >= 0 && bl0 >= 0 && shadow0 >= 0 && hits0 >= 0 && senders0 >= 0 && clients0 >= 0);
	assert_int_equal(policy(eng, trap, CHECK_STAGE_RCPT, "m1", &hit).action, DECIDE_REJECT);
	assert_int_equal(policy(eng, sender, CHECK_STAGE_MAIL, "m2", &next).action, DECIDE_REJECT);
	milter_txn t;
	assert_int_equal(milter_mail(eng, &t, &next).action, DECIDE_REJECT);
	milter_end(&t);
	assert_int_equal(scraped(TRAP_REJECT), trap0 + 1);
	assert_int_equal(scraped(HITS), hits0 + 1);
	assert_int_equal(scraped(SENDER_RECORDS), senders0 + 1);
	assert_int_equal(scraped(CLIENT_RECORDS), clients0 + 1);
	assert_int_equal(scraped(BL_REJECT), bl0 + 2);
	assert_int_equal(scraped(BL_SHADOW), shadow0);
	/* The trap hit's lookup and record, the two blocklist lookups. */
	assert_int_equal(scraped(QUERY_CALLS), queries0 + 3);
	assert_int_equal(scraped(WRITE_CALLS), writes0 + 1);
	/* A second hit refreshes the entries: a hit, no new entry. */
	assert_int_equal(policy(eng, trap, CHECK_STAGE_RCPT, "m1b", &hit).action, DECIDE_REJECT);
	assert_int_equal(scraped(HITS), hits0 + 2);
	assert_int_equal(scraped(SENDER_RECORDS), senders0 + 1);
	assert_int_equal(scraped(CLIENT_RECORDS), clients0 + 1);
	stop(eng);

	eng = start("\"blocklist\": {\"mode\": \"shadow\"}");
	policy(eng, trap, CHECK_STAGE_RCPT, "m3", &hit);
	assert_int_equal(policy(eng, sender, CHECK_STAGE_MAIL, "m4", &next).action, DECIDE_CONTINUE);
	assert_int_equal(scraped(BL_SHADOW), shadow0 + 1);
	assert_int_equal(scraped(BL_REJECT), bl0 + 2);
	stop(eng);
}

/* A reload applies to the next message; a message in flight keeps the snapshot it began with. */
static void test_reload_keeps_message_snapshot(void **state)
{
	(void)state;
	engine *eng = start("");
	char path[256], err[4096];
	milter_txn t;
	decide_facts f = facts(DECIDE_FRONT_MILTER, "192.0.2.95", "r@bad.test", NULL);

	assert_int_equal(milter_mail(eng, &t, &f).action, DECIDE_CONTINUE);
	snprintf(path, sizeof(path), "%s/reload.json", dir);
	FILE *c = fopen(path, "w");
	assert_non_null(c);
	fprintf(c,
	        "{\"traps\": {\"addresses\": [\"other@example.com\"], \"mode\": \"off\"}, "
	        "\"store\": {\"sqlite\": {\"path\": \"%s/db1.sqlite\"}}}\n",
	        dir);
	fclose(c);
	config *cfg = config_load(path, NULL, 0, err, sizeof(err));
	assert_non_null(cfg);
	assert_int_equal(engine_reload(eng, cfg, err, sizeof(err)), 0);
	f.recipient = "trap@example.com"; /* a trap under the old config */
	assert_int_equal(engine_stage(&t.m, CHECK_STAGE_RCPT, CHECKS_EVERY, &f).action, DECIDE_DROP_COPY);
	milter_end(&t);
	decide_facts g = facts(DECIDE_FRONT_MILTER, "192.0.2.96", "r2@bad.test", NULL);
	assert_int_equal(milter_mail(eng, &t, &g).action, DECIDE_CONTINUE);
	g.recipient = "trap@example.com"; /* no trap under the new one */
	assert_int_equal(engine_stage(&t.m, CHECK_STAGE_RCPT, CHECKS_EVERY, &g).action, DECIDE_CONTINUE);
	milter_end(&t);
	stop(eng);
}

/* dry-run shadows every enforcing check but the whitelist, which only lets mail through. */
static void test_dry_run_keeps_whitelist(void **state)
{
	(void)state;
	engine *eng = start("\"mode\": \"dry-run\", \"blocklist\": {\"mode\": \"off\"}");
	engine_snapshot *snap = engine_acquire(eng);
	const pipeline *p = &engine_config(snap)->pipeline;

	assert_int_equal(p->checks[CHECK_ID_TRAPS].mode, CHECK_MODE_SHADOW);
	assert_int_equal(p->checks[CHECK_ID_BLOCKLIST].mode, CHECK_MODE_OFF);
	assert_int_equal(p->checks[CHECK_ID_WHITELIST].mode, CHECK_MODE_ENFORCE);
	engine_release(snap);
	stop(eng);
}

static int count_grey(const store_grey_record *r, void *ctx)
{
	(void)r;
	++*(size_t *)ctx;
	return 0;
}

/* An expired triplet, written in the store's past, and how many records the store still holds. */
static size_t expired_triplet_left_after_purge(const char *greylist)
{
	engine *eng = start(greylist);
	engine_snapshot *snap = engine_acquire(eng);
	query q = {.kind = QUERY_GREYLIST};
	size_t n = 0;

	q.u.grey.triplet = "192.0.2.0/24/a@b.example/c@d.example";
	q.u.grey.params =
	    (greystep_params){.delay_ms = 300000, .retry_window_ms = 3600000, .max_age_ms = 86400000};
	q.u.grey.now_ms = 1000; /* 1970: long expired */
	assert_int_equal(store_greylist(engine_store(snap), &q), STORE_OK);
	engine_purge(eng);
	assert_int_equal(store_greylist_foreach(engine_store(snap), 0, count_grey, &n), STORE_OK);
	engine_release(snap);
	stop(eng);
	return n;
}

/* greylist.maintenance: the host that says true purges the greylist; one that says false leaves it. */
static void test_greylist_purge_maintenance(void **state)
{
	(void)state;
	assert_int_equal(expired_triplet_left_after_purge("\"greylist\": {\"maintenance\": false}"), 1);
	assert_int_equal(expired_triplet_left_after_purge(""), 0);
	assert_int_equal(logged("purged 1 expired greylist records"), 1);
}

/* ---- the spf check's result through the engine (issue 15) ---- */

/*
 * One policy request as policy_server.c runs it with a resolver: the
 * plan, its SPF answer written by hand (result; -1: no answer by the
 * deadline), the stage. *asked: the plan wanted SPF.
 */
static check_verdict policy_spf(engine *eng, unsigned checks, check_stage stage, const char *instance,
                                const decide_facts *f, int result, bool *asked)
{
	engine_snapshot *snap = engine_acquire(eng);
	decide_facts g = *f;
	engine_msg m;
	dnsplan plan;

	engine_msg_begin(&m, snap);
	engine_msg_recall(&m, instance);
	*asked = false;
	if (engine_dns_plan(&m, stage, checks, f, &plan)) {
		*asked = plan.spf.wanted;
		if (result >= 0) {
			plan.spf.done = true;
			plan.spf.result = (enum spf_result)result;
		}
		/* a narrow record: the probes fail */
		for (int i = 0; i < DNSPLAN_SPF_PROBES; i++)
			if (plan.probe[i].wanted) {
				plan.probe[i].done = true;
				plan.probe[i].result = SPF_FAIL;
			}
		dnsplan_expire(&plan);
		g.dns = &plan;
	}
	check_verdict v = engine_stage(&m, stage, checks, &g);
	engine_msg_remember(&m, instance);
	engine_msg_end(&m);
	engine_release(snap);
	return v;
}

/* sender_requires spf-pass: the engine verifies the sender from the plan's answer before the trap records. */
static void test_policy_spf_sender_requires(void **state)
{
	(void)state;
	engine *eng = start("\"spf\": {\"mode\": \"enforce\", \"header\": false}, "
	                    "\"blocklist\": {\"sender_requires\": \"spf-pass\"}");
	unsigned trap = policy_role_checks(POLICY_ROLE_TRAP);
	decide_facts forged = facts(DECIDE_FRONT_POLICY, "192.0.2.50", "ceo@bank.test", "trap@example.com");
	decide_facts real = facts(DECIDE_FRONT_POLICY, "192.0.2.60", "spam@bad.test", "trap@example.com");
	bool asked;

	policy_spf(eng, trap, CHECK_STAGE_RCPT, "i1", &forged, SPF_FAIL, &asked);
	assert_true(asked);
	assert_int_equal(logged("trap=trap@example.com blocklisted=192.0.2.50 sender=unverified;"), 1);
	policy_spf(eng, trap, CHECK_STAGE_RCPT, "i2", &real, SPF_PASS, &asked);
	assert_true(asked);
	assert_int_equal(logged("trap=trap@example.com blocklisted=spam@bad.test,192.0.2.60;"), 1);
	/* no answer by the deadline: the client only */
	forged.client_address = "192.0.2.70";
	policy_spf(eng, trap, CHECK_STAGE_RCPT, "i3", &forged, -1, &asked);
	assert_int_equal(logged("trap=trap@example.com blocklisted=192.0.2.70 sender=unverified;"), 1);
	stop(eng);
}

/*
 * The policy sender listener runs the blocklist alone: it asks SPF itself
 * for a whitelisted sender, so a verified one is not refused for its
 * client's listed network (a forged one is).
 */
static void test_policy_spf_sender_listener(void **state)
{
	(void)state;
	engine *eng = start("\"spf\": {\"mode\": \"enforce\", \"header\": false}, "
	                    "\"whitelist\": {\"domains\": [\"bank.test\"]}");
	unsigned trap = policy_role_checks(POLICY_ROLE_TRAP), sender = policy_role_checks(POLICY_ROLE_SENDER);
	decide_facts hit = facts(DECIDE_FRONT_POLICY, "192.0.2.50", "spam@bad.test", "trap@example.com");
	decide_facts ceo = facts(DECIDE_FRONT_POLICY, "192.0.2.50", "ceo@bank.test", NULL);
	bool asked;

	policy_spf(eng, trap, CHECK_STAGE_RCPT, "i1", &hit, SPF_NONE, &asked);
	assert_false(asked); /* sender_requires any: nothing to ask */
	/* verified: its client's listed address is not looked up */
	check_verdict v = policy_spf(eng, sender, CHECK_STAGE_MAIL, "i2", &ceo, SPF_PASS, &asked);
	assert_true(asked);
	assert_int_equal(v.action, DECIDE_CONTINUE);
	/* forged: refused for the client */
	v = policy_spf(eng, sender, CHECK_STAGE_MAIL, "i3", &ceo, SPF_FAIL, &asked);
	assert_true(asked);
	assert_int_equal(v.action, DECIDE_REJECT);
	stop(eng);
}

/* Policy: Received-SPF is PREPENDed once a message, the message's other recipients get none. */
static void test_policy_spf_header_once(void **state)
{
	(void)state;
	engine *eng = start("\"spf\": {\"mode\": \"enforce\", \"receiver\": \"mx.example.com\"}");
	unsigned trap = policy_role_checks(POLICY_ROLE_TRAP);
	decide_facts f = facts(DECIDE_FRONT_POLICY, "192.0.2.50", "news@shop.test", "a@example.net");
	bool asked;

	check_verdict v = policy_spf(eng, trap, CHECK_STAGE_RCPT, "i1", &f, SPF_SOFTFAIL, &asked);
	assert_true(asked);
	assert_int_equal(v.action, DECIDE_CONTINUE);
	assert_non_null(strstr(v.header, "Received-SPF: softfail (mx.example.com: "));
	f.recipient = "b@example.net";
	v = policy_spf(eng, trap, CHECK_STAGE_RCPT, "i1", &f, SPF_SOFTFAIL, &asked);
	assert_false(asked); /* the message's result is kept by instance: once a message */
	assert_string_equal(v.header, "");
	/* another message gets its own */
	v = policy_spf(eng, trap, CHECK_STAGE_RCPT, "i2", &f, SPF_PASS, &asked);
	assert_true(asked);
	assert_non_null(strstr(v.header, "Received-SPF: pass "));
	stop(eng);
}

/* Milter: a whitelisted sender SPF verifies at MAIL FROM keeps it for its recipients; the header at the end.
 */
static void test_milter_spf_verified(void **state)
{
	(void)state;
	engine *eng =
	    start("\"spf\": {\"mode\": \"enforce\", \"receiver\": \"mx.example.com\"}, "
	          "\"greylist\": {\"mode\": \"enforce\"}, \"whitelist\": {\"domains\": [\"bank.test\"]}");
	decide_facts f = facts(DECIDE_FRONT_MILTER, "192.0.2.50", "ceo@bank.test", NULL);
	milter_txn t;
	dnsplan plan;

	t.snap = engine_acquire(eng);
	engine_msg_begin(&t.m, t.snap);
	assert_true(engine_dns_plan(&t.m, CHECK_STAGE_MAIL, CHECKS_EVERY, &f, &plan));
	assert_true(plan.spf.wanted);
	assert_true(plan.probe[0].wanted && plan.probe[1].wanted);
	plan.spf.done = plan.probe[0].done = plan.probe[1].done = true;
	plan.spf.result = SPF_PASS;
	plan.probe[0].result = plan.probe[1].result = SPF_FAIL;
	f.dns = &plan;
	assert_int_equal(engine_stage(&t.m, CHECK_STAGE_MAIL, CHECKS_EVERY, &f).action, DECIDE_CONTINUE);
	f.dns = NULL;
	f.recipient = "a@example.net";
	/* known: nothing more to ask; verified: the greylist after the whitelist does not run */
	assert_false(engine_dns_plan(&t.m, CHECK_STAGE_RCPT, CHECKS_EVERY, &f, &plan));
	check_verdict v = engine_stage(&t.m, CHECK_STAGE_RCPT, CHECKS_EVERY, &f);
	assert_int_equal(v.action, DECIDE_CONTINUE);
	assert_string_equal(v.header, "");
	f.recipient = NULL;
	v = engine_stage(&t.m, CHECK_STAGE_EOM, CHECKS_EVERY, &f);
	/* whitelisted mail gets no Received-SPF, as on the policy side where the whitelist stops the walk */
	assert_int_equal(v.action, DECIDE_CONTINUE);
	assert_string_equal(v.header, "");
	milter_end(&t);
	/* the same sender forged: greylisted */
	f = facts(DECIDE_FRONT_MILTER, "192.0.2.66", "ceo@bank.test", NULL);
	t.snap = engine_acquire(eng);
	engine_msg_begin(&t.m, t.snap);
	assert_true(engine_dns_plan(&t.m, CHECK_STAGE_MAIL, CHECKS_EVERY, &f, &plan));
	plan.spf.done = true;
	plan.spf.result = SPF_FAIL;
	f.dns = &plan;
	engine_stage(&t.m, CHECK_STAGE_MAIL, CHECKS_EVERY, &f);
	f.dns = NULL;
	f.recipient = "a@example.net";
	assert_int_equal(engine_stage(&t.m, CHECK_STAGE_RCPT, CHECKS_EVERY, &f).action,
	                 DECIDE_DEFER_IF_PERMIT);
	f.recipient = NULL;
	/* its header at end of message */
	assert_non_null(
	    strstr(engine_stage(&t.m, CHECK_STAGE_EOM, CHECKS_EVERY, &f).header, "Received-SPF: fail "));
	milter_end(&t);
	stop(eng);
}

static int setup(void **state)
{
	char err[256];

	(void)state;
	assert_non_null(mkdtemp(dir));
	log_set_sink(sink, NULL);
	assert_int_equal(stats_init(NULL, 0, err, sizeof(err)), 0);
	return 0;
}

static int teardown(void **state)
{
	char cmd[300];

	(void)state;
	log_set_sink(NULL, NULL);
	stats_free();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_policy_trap_then_blocklist),
	    cmocka_unit_test(test_policy_full_same_message),
	    cmocka_unit_test(test_milter_message),
	    cmocka_unit_test(test_traps_shadow),
	    cmocka_unit_test(test_blocklist_shadow_and_off),
	    cmocka_unit_test(test_reload_keeps_message_snapshot),
	    cmocka_unit_test(test_dry_run_keeps_whitelist),
	    cmocka_unit_test(test_greylist_purge_maintenance),
	    cmocka_unit_test(test_policy_spf_sender_requires),
	    cmocka_unit_test(test_policy_spf_sender_listener),
	    cmocka_unit_test(test_policy_spf_header_once),
	    cmocka_unit_test(test_milter_spf_verified),
	    cmocka_unit_test(test_metrics_counted),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
