/*
 * Unit tests for dns/dnsrun: a plan's answers as the checks see them,
 * with the resolver (dns/dns.h) faked here: queries are recorded and the
 * test answers them. What is proved: rcodes and network errors map to
 * statuses as dnsrun.h says (an error is never "not listed"), malformed A
 * records are a failure, queries that cannot start are failures at once,
 * the deadline cancels what is in flight and marks it timed out, a run
 * freed early cancels everything, and the SPF adapter hands the evaluator
 * records in spf.h's form (TXT joined, MX/PTR names as text). Also
 * dns_status_of, the mapping from libunbound's result (dns/dns.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "dns/dnsrun.h"
#include "unit_table.h"

/* ---- the fake resolver ---- */

#define FAKE_MAX 64

typedef struct fake_query {
	char name[256];
	int type;
	dns_cb cb;
	void *arg;
	bool live;
} fake_query;

static fake_query fq[FAKE_MAX];
static size_t nfq;
static unsigned refuse_after = FAKE_MAX; /* queries beyond this many fail to start */
static unsigned cancelled;

int dns_query(dns_resolver *r, const char *name, int type, dns_cb cb, void *arg, uint64_t *id)
{
	(void)r;
	if (nfq >= refuse_after || nfq >= FAKE_MAX)
		return -1;
	snprintf(fq[nfq].name, sizeof(fq[nfq].name), "%s", name);
	fq[nfq].type = type;
	fq[nfq].cb = cb;
	fq[nfq].arg = arg;
	fq[nfq].live = true;
	*id = nfq++;
	return 0;
}

void dns_cancel(dns_resolver *r, uint64_t id)
{
	(void)r;
	assert_true(id < nfq && fq[id].live);
	fq[id].live = false;
	cancelled++;
}

void dns_lock(dns_resolver *r)
{
	(void)r;
}

void dns_unlock(dns_resolver *r)
{
	(void)r;
}

bool dns_wait(dns_resolver *r, bool (*done)(void *arg), void *arg, int64_t deadline_ms)
{
	(void)r, (void)deadline_ms;
	return done(arg);
}

static void reset(void)
{
	nfq = 0;
	cancelled = 0;
	refuse_after = FAKE_MAX;
}

static void answer(size_t i, dns_status st, int rcode, const dns_rr *rr, size_t n)
{
	dns_answer a = {.status = st, .rcode = rcode, .rr = rr, .count = n};

	assert_true(i < nfq && fq[i].live);
	fq[i].live = false;
	fq[i].cb(fq[i].arg, &a);
}

static int done_calls;

static void on_done(void *arg)
{
	(void)arg;
	done_calls++;
}

/* ---- A lookups: one row per kind of answer ---- */

struct lookup_case {
	const char *name;
	dns_status st;
	int rcode;
	const char *rdata; /* records of 4 bytes each, or "bad" for a 3-byte record */
	size_t nrecords;
	dnsplan_status want;
	unsigned naddr;
	uint32_t addr0;
};

static struct lookup_case lookup_cases[] = {
    {"listed: 127.0.0.2", DNS_OK, 0, "\x7f\x00\x00\x02", 1, DNSPLAN_FOUND, 1, 0x7f000002},
    {"two records", DNS_OK, 0, "\x7f\x00\x00\x02\x7f\x00\x00\x0a", 2, DNSPLAN_FOUND, 2, 0x7f000002},
    {"NXDOMAIN: not listed", DNS_NXDOMAIN, 3, NULL, 0, DNSPLAN_NXDOMAIN, 0, 0},
    {"no data: not listed", DNS_NODATA, 0, NULL, 0, DNSPLAN_NODATA, 0, 0},
    {"SERVFAIL: a failure", DNS_TEMPFAIL, 2, NULL, 0, DNSPLAN_TEMPFAIL, 0, 0},
    {"REFUSED: a failure", DNS_TEMPFAIL, 5, NULL, 0, DNSPLAN_TEMPFAIL, 0, 0},
    {"no response: a failure", DNS_TEMPFAIL, -1, NULL, 0, DNSPLAN_TEMPFAIL, 0, 0},
    {"malformed A record: a failure, not an answer", DNS_OK, 0, "bad", 1, DNSPLAN_TEMPFAIL, 0, 0},
};

static void test_lookup(void **state)
{
	const struct lookup_case *c = *state;
	dns_rr rr[4];
	dnsplan plan;
	dnsrun *run;

	reset();
	done_calls = 0;
	dnsplan_init(&plan);
	assert_non_null(dnsplan_add(&plan, 5, 0, "2.0.0.127.bl.dnstest.example.net"));
	run = dnsrun_start(NULL, &plan, NULL, 0, on_done, NULL);
	assert_non_null(run);
	assert_false(dnsrun_finished(run));
	assert_int_equal(nfq, 1);
	assert_string_equal(fq[0].name, "2.0.0.127.bl.dnstest.example.net");
	assert_int_equal(fq[0].type, DNS_TYPE_A);
	for (size_t k = 0; k < c->nrecords; k++) {
		rr[k].data = (const unsigned char *)c->rdata + 4 * k;
		rr[k].len = strcmp(c->rdata, "bad") == 0 ? 3 : 4;
	}
	answer(0, c->st, c->rcode, rr, c->nrecords);
	assert_true(dnsrun_finished(run));
	assert_int_equal(done_calls, 1);
	assert_int_equal(plan.lookup[0].status, c->want);
	assert_int_equal(plan.lookup[0].naddr, c->naddr);
	if (c->naddr)
		assert_int_equal(plan.lookup[0].addr[0], c->addr0);
	dnsrun_free(run);
	assert_int_equal(cancelled, 0);
}

/* All lookups in parallel; the run ends when the last answers, whatever the order. */
static void test_parallel(void **state)
{
	dnsplan plan;
	dnsrun *run;

	(void)state;
	reset();
	done_calls = 0;
	dnsplan_init(&plan);
	dnsplan_add(&plan, 5, 0, "a.dnstest.example.net");
	dnsplan_add(&plan, 5, 1, "b.dnstest.example.net");
	dnsplan_add(&plan, 5, 2, "c.dnstest.example.net");
	run = dnsrun_start(NULL, &plan, NULL, 0, on_done, NULL);
	assert_int_equal(nfq, 3);
	answer(2, DNS_NXDOMAIN, 3, NULL, 0);
	answer(0, DNS_NODATA, 0, NULL, 0);
	assert_false(dnsrun_finished(run));
	assert_int_equal(done_calls, 0);
	answer(1, DNS_TEMPFAIL, 2, NULL, 0);
	assert_true(dnsrun_finished(run));
	assert_int_equal(done_calls, 1);
	assert_int_equal(plan.lookup[0].status, DNSPLAN_NODATA);
	assert_int_equal(plan.lookup[1].status, DNSPLAN_TEMPFAIL);
	assert_int_equal(plan.lookup[2].status, DNSPLAN_NXDOMAIN);
	dnsrun_free(run);
}

/* Over max_inflight: a query that cannot start is a failure at once, and the run may end in start. */
static void test_no_room(void **state)
{
	dnsplan plan;
	dnsrun *run;

	(void)state;
	reset();
	done_calls = 0;
	refuse_after = 0;
	dnsplan_init(&plan);
	dnsplan_add(&plan, 5, 0, "a.dnstest.example.net");
	run = dnsrun_start(NULL, &plan, NULL, 0, on_done, NULL);
	assert_true(dnsrun_finished(run));
	assert_int_equal(done_calls, 0); /* never from inside dnsrun_start */
	assert_int_equal(plan.lookup[0].status, DNSPLAN_TEMPFAIL);
	dnsrun_free(run);
}

/* The deadline: what is in flight is cancelled and timed out; what answered stays. */
static void test_expire(void **state)
{
	dnsplan plan;
	dnsrun *run;
	dns_rr rr = {(const unsigned char *)"\x7f\x00\x00\x02", 4};

	(void)state;
	reset();
	done_calls = 0;
	dnsplan_init(&plan);
	dnsplan_add(&plan, 5, 0, "a.dnstest.example.net");
	dnsplan_add(&plan, 5, 1, "slow.dnstest.example.net");
	run = dnsrun_start(NULL, &plan, NULL, 0, on_done, NULL);
	answer(0, DNS_OK, 0, &rr, 1);
	dnsrun_expire(run);
	assert_true(dnsrun_finished(run));
	assert_int_equal(done_calls, 0);
	assert_int_equal(cancelled, 1);
	assert_false(fq[1].live);
	assert_int_equal(plan.lookup[0].status, DNSPLAN_FOUND);
	assert_int_equal(plan.lookup[1].status, DNSPLAN_TIMEOUT);
	dnsrun_free(run);
	assert_int_equal(cancelled, 1);
}

/* A connection gone while it waited: everything in flight is cancelled, nothing is called. */
static void test_free_early(void **state)
{
	dnsplan plan;
	dnsrun *run;

	(void)state;
	reset();
	done_calls = 0;
	dnsplan_init(&plan);
	dnsplan_add(&plan, 5, 0, "a.dnstest.example.net");
	dnsplan_want_spf(&plan, "192.0.2.1", "user@spf.dnstest.example.net", "mx.example.net");
	run = dnsrun_start(NULL, &plan, NULL, 0, on_done, NULL);
	assert_int_equal(nfq, 2); /* the A lookup and SPF's first TXT query */
	dnsrun_free(run);
	assert_int_equal(cancelled, 2);
	assert_int_equal(done_calls, 0);
}

/* ---- SPF through the adapter ---- */

static dns_rr txt(const char *wire, size_t len)
{
	return (dns_rr){(const unsigned char *)wire, len};
}

/* A record "v=spf1 ip4:192.0.2.0/24 -all" in two character-strings; the client passes. */
static void test_spf_pass(void **state)
{
	static const char rec[] = "\x10v=spf1 ip4:192.0\x0c.2.0/24 -all";
	dns_rr rr = txt(rec, sizeof(rec) - 1);
	dnsplan plan;
	dnsrun *run;

	(void)state;
	reset();
	done_calls = 0;
	dnsplan_init(&plan);
	assert_true(dnsplan_want_spf(&plan, "192.0.2.1", "user@spf.dnstest.example.net", "mx.example.net"));
	run = dnsrun_start(NULL, &plan, "mx.local", 0, on_done, NULL);
	assert_int_equal(nfq, 1);
	assert_string_equal(fq[0].name, "spf.dnstest.example.net");
	assert_int_equal(fq[0].type, DNS_TYPE_TXT);
	answer(0, DNS_OK, 0, &rr, 1);
	assert_true(dnsrun_finished(run));
	assert_true(plan.spf.done);
	assert_int_equal(plan.spf.result, SPF_PASS);
	dnsrun_free(run);
}

/*
 * greylist.spf_key's probes (core/dnsplan.h): each its own check_host() of
 * the same identity from 192.0.2.1 and 2001:db8::1, in parallel with the
 * real one. A narrow record passes the client and neither probe; "+all"
 * passes all three.
 */
static void test_spf_probes(void **state)
{
	static const char narrow[] = "\x1fv=spf1 ip4:198.51.100.0/24 -all";
	static const char open[] = "\x0bv=spf1 +all";
	const char *recs[2] = {narrow, open};
	const size_t lens[2] = {sizeof(narrow) - 1, sizeof(open) - 1};

	(void)state;
	for (int k = 0; k < 2; k++) {
		dns_rr rr = txt(recs[k], lens[k]);
		dnsplan plan;
		dnsrun *run;

		reset();
		dnsplan_init(&plan);
		assert_true(dnsplan_want_spf(&plan, "198.51.100.7", "user@spf.dnstest.example.net",
		                             "mx.example.net"));
		assert_true(dnsplan_want_spf_probes(&plan));
		run = dnsrun_start(NULL, &plan, "mx.local", 0, on_done, NULL);
		assert_int_equal(nfq, 3); /* three evaluations at once, each its record's TXT */
		for (size_t i = 0; i < 3; i++) {
			assert_string_equal(fq[i].name, "spf.dnstest.example.net");
			answer(i, DNS_OK, 0, &rr, 1);
		}
		assert_true(dnsrun_finished(run));
		assert_true(plan.spf.done && plan.probe[0].done && plan.probe[1].done);
		assert_int_equal(plan.spf.result, SPF_PASS);
		assert_int_equal(plan.probe[0].result, k == 0 ? SPF_FAIL : SPF_PASS);
		assert_int_equal(plan.probe[1].result, k == 0 ? SPF_FAIL : SPF_PASS);
		dnsrun_free(run);
	}
}

/* SERVFAIL on the TXT query: temperror, never fail or none. */
static void test_spf_servfail(void **state)
{
	dnsplan plan;
	dnsrun *run;

	(void)state;
	reset();
	dnsplan_init(&plan);
	dnsplan_want_spf(&plan, "192.0.2.1", "user@spf.dnstest.example.net", "mx.example.net");
	run = dnsrun_start(NULL, &plan, NULL, 0, on_done, NULL);
	answer(0, DNS_TEMPFAIL, 2, NULL, 0);
	assert_true(dnsrun_finished(run));
	assert_true(plan.spf.done);
	assert_int_equal(plan.spf.result, SPF_TEMPERROR);
	dnsrun_free(run);
}

/* "v=spf1 mx -all": the MX answer's exchange is queried by name (A), and the client matches it. */
static void test_spf_mx(void **state)
{
	static const char rec[] = "\x0ev=spf1 mx -all";
	static const char mx[] = "\x00\x0a\x02mx\x07"
	                         "dnstest\x07"
	                         "example\x03net\x00";
	static const char a[] = "\xc0\x00\x02\x01";
	dns_rr r1 = txt(rec, sizeof(rec) - 1), r2 = txt(mx, sizeof(mx) - 1), r3 = txt(a, 4);
	dnsplan plan;
	dnsrun *run;

	(void)state;
	reset();
	dnsplan_init(&plan);
	dnsplan_want_spf(&plan, "192.0.2.1", "user@dnstest.example.net", "mx.example.net");
	run = dnsrun_start(NULL, &plan, NULL, 0, on_done, NULL);
	answer(0, DNS_OK, 0, &r1, 1);
	assert_int_equal(nfq, 2);
	assert_int_equal(fq[1].type, DNS_TYPE_MX);
	answer(1, DNS_OK, 0, &r2, 1);
	assert_int_equal(nfq, 3);
	assert_string_equal(fq[2].name, "mx.dnstest.example.net");
	assert_int_equal(fq[2].type, DNS_TYPE_A);
	answer(2, DNS_OK, 0, &r3, 1);
	assert_true(dnsrun_finished(run));
	assert_int_equal(plan.spf.result, SPF_PASS);
	dnsrun_free(run);
}

/* The deadline while only a fail's exp= is looked up: the fail stands (RFC 7208 6.2), no timeout. */
static void test_spf_deadline_during_exp(void **state)
{
	static const char rec[] = "\x27v=spf1 -all exp=why.dnstest.example.net";
	dns_rr rr = txt(rec, sizeof(rec) - 1);
	dnsplan plan;
	dnsrun *run;

	(void)state;
	reset();
	dnsplan_init(&plan);
	dnsplan_want_spf(&plan, "192.0.2.1", "user@spf.dnstest.example.net", "mx.example.net");
	run = dnsrun_start(NULL, &plan, NULL, 0, on_done, NULL);
	answer(0, DNS_OK, 0, &rr, 1);
	assert_int_equal(nfq, 2);
	assert_string_equal(fq[1].name, "why.dnstest.example.net");
	dnsrun_expire(run);
	assert_true(plan.spf.done);
	assert_int_equal(plan.spf.result, SPF_FAIL);
	assert_string_equal(plan.spf.explanation, "");
	assert_int_equal(cancelled, 1);
	dnsrun_free(run);
}

/* The deadline before the result: temperror, not done. */
static void test_spf_deadline(void **state)
{
	dnsplan plan;
	dnsrun *run;

	(void)state;
	reset();
	dnsplan_init(&plan);
	dnsplan_want_spf(&plan, "192.0.2.1", "user@spf.dnstest.example.net", "mx.example.net");
	run = dnsrun_start(NULL, &plan, NULL, 0, on_done, NULL);
	dnsrun_expire(run);
	assert_false(plan.spf.done);
	assert_int_equal(plan.spf.result, SPF_TEMPERROR);
	dnsrun_free(run);
}

/* ---- records in spf.h's form ---- */

struct rr_case {
	const char *name;
	enum spf_rrtype type;
	const char *rdata;
	size_t len;
	bool ok;
	const char *want;
	size_t wantlen;
};

static struct rr_case rr_cases[] = {
    {"TXT one string", SPF_RR_TXT,
     "\x03"
     "abc",
     4, true, "abc", 3},
    {"TXT strings joined", SPF_RR_TXT,
     "\x02"
     "ab\x01"
     "c",
     5, true, "abc", 3},
    {"TXT empty string", SPF_RR_TXT, "\x00", 1, true, "", 0},
    {"TXT length past the end", SPF_RR_TXT,
     "\x05"
     "ab",
     3, false, NULL, 0},
    {"MX exchange as text", SPF_RR_MX,
     "\x00\x0a\x02mx\x07"
     "example\x00",
     14, true, "mx.example", 10},
    {"null MX (RFC 7505): skipped", SPF_RR_MX, "\x00\x00\x00", 3, false, NULL, 0},
    {"MX too short", SPF_RR_MX, "\x00\x0a", 2, false, NULL, 0},
    {"PTR target", SPF_RR_PTR,
     "\x04mail\x07"
     "example\x03"
     "com\x00",
     18, true, "mail.example.com", 16},
    {"PTR compression pointer: malformed", SPF_RR_PTR, "\xc0\x0c", 2, false, NULL, 0},
    {"PTR without the root label", SPF_RR_PTR, "\x04mail", 5, false, NULL, 0},
    {"PTR label with a dot", SPF_RR_PTR,
     "\x03"
     "a.b\x00",
     5, false, NULL, 0},
    {"A four bytes", SPF_RR_A, "\xc0\x00\x02\x01", 4, true, "\xc0\x00\x02\x01", 4},
    {"A five bytes", SPF_RR_A, "\xc0\x00\x02\x01\x01", 5, false, NULL, 0},
    {"AAAA sixteen bytes", SPF_RR_AAAA, "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01", 16, true,
     "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01", 16},
    {"AAAA four bytes", SPF_RR_AAAA, "\xc0\x00\x02\x01", 4, false, NULL, 0},
};

static void test_rr(void **state)
{
	const struct rr_case *c = *state;
	unsigned char out[64];
	size_t outlen = 0;
	bool ok =
	    dnsrun_spf_record(c->type, (const unsigned char *)c->rdata, c->len, out, sizeof(out), &outlen);

	assert_int_equal(ok, c->ok);
	if (ok) {
		assert_int_equal(outlen, c->wantlen);
		assert_memory_equal(out, c->want, c->wantlen);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parallel),
	    cmocka_unit_test(test_no_room),
	    cmocka_unit_test(test_expire),
	    cmocka_unit_test(test_free_early),
	    cmocka_unit_test(test_spf_pass),
	    cmocka_unit_test(test_spf_probes),
	    cmocka_unit_test(test_spf_servfail),
	    cmocka_unit_test(test_spf_mx),
	    cmocka_unit_test(test_spf_deadline_during_exp),
	    cmocka_unit_test(test_spf_deadline),
	};
	int failed = cmocka_run_group_tests_name("dnsrun", tests, NULL, NULL);

	RUN_TABLE("dnsrun lookups", lookup_cases, test_lookup, failed);
	RUN_TABLE("dnsrun records", rr_cases, test_rr, failed);
	return failed ? 1 : 0;
}
