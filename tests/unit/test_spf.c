/*
 * Unit tests for src/spf: the record parser (spf_record), macro expansion
 * (spf_macro, with RFC 7208 7.4's examples), and the evaluator (spf) on
 * hostile input over a fake resolver: huge records, include chains and
 * loops, macro bombs, MX and PTR floods, cancellation and freeing from the
 * completion callback. The RFC 7208 suite itself is test_spf_suite.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spf/spf.h"
#include "spf/spf_macro.h"
#include "spf/spf_record.h"
#include "spf_fake_dns.h"
#include "unit_table.h"

/* ---- parser ---- */

struct parse_case {
	const char *name;
	const char *record;
	bool ok;
	size_t nterms;
	const char *redirect; /* expected redirect= value, NULL: none */
};

static struct parse_case parse_cases[] = {
    {"version only", "v=spf1", true, 0, NULL},
    {"version upper case", "V=SPF1 -ALL", true, 1, NULL},
    {"every mechanism",
     "v=spf1 all include:a.example.com a a:b.example.com/24 mx mx/24//64 ptr ptr:c.example.com "
     "ip4:192.0.2.0/24 "
     "ip6:2001:db8::/32 exists:%{i}.d.example.com",
     true, 11, NULL},
    {"qualifiers", "v=spf1 +a -mx ~ptr ?all", true, 4, NULL},
    {"redirect and exp", "v=spf1 redirect=_spf.example.com exp=why.example.com", true, 0, "_spf.example.com"},
    {"unknown modifier ignored", "v=spf1 moo.cow-2_x=%{d}.example.com -all", true, 1, NULL},
    {"runs of spaces", "v=spf1   a    -all  ", true, 2, NULL},
    {"domain-spec ends with a macro", "v=spf1 a:%{d}", true, 1, NULL},
    {"trailing dot", "v=spf1 a:mail.example.com.", true, 1, NULL},
    {"dash in toplabel", "v=spf1 a:foo.example.xn--zckzah", true, 1, NULL},
    {"v=spf10 is not version 1", "v=spf10 -all", false, 0, NULL},
    {"no space after the version", "v=spf1-all", false, 0, NULL},
    {"unknown mechanism", "v=spf1 moo -all", false, 0, NULL},
    {"all with an argument", "v=spf1 all:x.example.com", false, 0, NULL},
    {"include without a domain", "v=spf1 include", false, 0, NULL},
    {"empty domain-spec", "v=spf1 a:", false, 0, NULL},
    {"only a toplabel", "v=spf1 a:localhost", false, 0, NULL},
    {"numeric toplabel", "v=spf1 a:foo.example.123", false, 0, NULL},
    {"toplabel starts with a dash", "v=spf1 a:example.-com", false, 0, NULL},
    {"ip4 cidr 33", "v=spf1 ip4:192.0.2.0/33", false, 0, NULL},
    {"ip4 cidr leading zero", "v=spf1 ip4:192.0.2.0/024", false, 0, NULL},
    {"ip6 cidr 129", "v=spf1 ip6:2001:db8::/129", false, 0, NULL},
    {"ip4 address bad", "v=spf1 ip4:192.0.2", false, 0, NULL},
    {"ip4 given an ip6 address", "v=spf1 ip4:2001:db8::1", false, 0, NULL},
    {"a cidr 33", "v=spf1 a/33", false, 0, NULL},
    {"mx ip6 cidr 129", "v=spf1 mx//129", false, 0, NULL},
    {"redirect twice", "v=spf1 redirect=a.example.com redirect=b.example.com", false, 0, NULL},
    {"exp twice", "v=spf1 exp=a.example.com exp=b.example.com", false, 0, NULL},
    {"empty exp", "v=spf1 exp= -all", false, 0, NULL},
    {"bad macro in a modifier", "v=spf1 moo=%{x} -all", false, 0, NULL},
    {"bad modifier name", "v=spf1 1moo=x -all", false, 0, NULL},
    {"lone percent", "v=spf1 exists:foo%.example.com", false, 0, NULL},
    {"exp-only letter in a domain", "v=spf1 exists:%{c}.example.com", false, 0, NULL},
    {"control character", "v=spf1 a\n -all", false, 0, NULL},
};

static void test_parse(void **state)
{
	const struct parse_case *c = *state;
	struct spf_record rec;
	char err[160] = "";
	int rc = spf_record_parse(c->record, strlen(c->record), &rec, err, sizeof(err));
	if (!c->ok) {
		assert_int_equal(rc, -1);
		assert_true(err[0] != '\0');
		assert_null(rec.terms);
		return;
	}
	assert_int_equal(rc, 0);
	assert_int_equal(rec.nterms, c->nterms);
	if (c->redirect) {
		assert_non_null(rec.redirect);
		assert_int_equal(rec.redirect_len, strlen(c->redirect));
		assert_memory_equal(rec.redirect, c->redirect, rec.redirect_len);
	} else {
		assert_null(rec.redirect);
	}
	spf_record_clear(&rec);
}

/* The parsed fields of the terms, beyond their count. */
static void test_parse_fields(void **state)
{
	(void)state;
	const char *r = "v=spf1 -a:b.example.com/24//64 ~ip6:2001:db8::/48 ?mx ip4:192.0.2.128/25";
	struct spf_record rec;
	char err[160];
	assert_int_equal(spf_record_parse(r, strlen(r), &rec, err, sizeof(err)), 0);
	assert_int_equal(rec.nterms, 4);
	assert_int_equal(rec.terms[0].mech, SPF_MECH_A);
	assert_int_equal(rec.terms[0].qual, SPF_FAIL);
	assert_int_equal(rec.terms[0].cidr4, 24);
	assert_int_equal(rec.terms[0].cidr6, 64);
	assert_int_equal(rec.terms[0].spec_len, strlen("b.example.com"));
	assert_memory_equal(rec.terms[0].spec, "b.example.com", rec.terms[0].spec_len);
	assert_int_equal(rec.terms[1].mech, SPF_MECH_IP6);
	assert_int_equal(rec.terms[1].qual, SPF_SOFTFAIL);
	assert_int_equal(rec.terms[1].cidr6, 48);
	assert_int_equal(rec.terms[2].qual, SPF_NEUTRAL);
	assert_null(rec.terms[2].spec);
	assert_int_equal(rec.terms[2].cidr4, 32);
	assert_int_equal(rec.terms[3].qual, SPF_PASS);
	assert_int_equal(rec.terms[3].cidr4, 25);
	static const unsigned char net[4] = {192, 0, 2, 128};
	assert_memory_equal(rec.terms[3].net, net, 4);
	spf_record_clear(&rec);
}

/* ---- macros ---- */

struct macro_case {
	const char *name;
	const char *in;
	enum spf_macro_kind kind;
	bool v6;
	const char *out; /* NULL: a syntax error */
};

/* RFC 7208 7.4: sender strong-bad@email.example.com, client 192.0.2.3 / 2001:db8::cb01. */
static struct macro_case macro_cases[] = {
    {"s", "%{s}", SPF_MACRO_DOMAIN, false, "strong-bad@email.example.com"},
    {"o", "%{o}", SPF_MACRO_DOMAIN, false, "email.example.com"},
    {"d", "%{d}", SPF_MACRO_DOMAIN, false, "email.example.com"},
    {"d4", "%{d4}", SPF_MACRO_DOMAIN, false, "email.example.com"},
    {"d3", "%{d3}", SPF_MACRO_DOMAIN, false, "email.example.com"},
    {"d2", "%{d2}", SPF_MACRO_DOMAIN, false, "example.com"},
    {"d1", "%{d1}", SPF_MACRO_DOMAIN, false, "com"},
    {"dr", "%{dr}", SPF_MACRO_DOMAIN, false, "com.example.email"},
    {"d2r", "%{d2r}", SPF_MACRO_DOMAIN, false, "example.email"},
    {"l", "%{l}", SPF_MACRO_DOMAIN, false, "strong-bad"},
    {"l-", "%{l-}", SPF_MACRO_DOMAIN, false, "strong.bad"},
    {"lr", "%{lr}", SPF_MACRO_DOMAIN, false, "strong-bad"},
    {"lr-", "%{lr-}", SPF_MACRO_DOMAIN, false, "bad.strong"},
    {"l1r-", "%{l1r-}", SPF_MACRO_DOMAIN, false, "strong"},
    {"ir v d2", "%{ir}.%{v}._spf.%{d2}", SPF_MACRO_DOMAIN, false, "3.2.0.192.in-addr._spf.example.com"},
    {"lr- lp d2", "%{lr-}.lp._spf.%{d2}", SPF_MACRO_DOMAIN, false, "bad.strong.lp._spf.example.com"},
    {"lr- ir v d2", "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", SPF_MACRO_DOMAIN, false,
     "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"},
    {"ir v l1r-", "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", SPF_MACRO_DOMAIN, false,
     "3.2.0.192.in-addr.strong.lp._spf.example.com"},
    {"d2 trusted", "%{d2}.trusted-domains.example.net", SPF_MACRO_DOMAIN, false,
     "example.com.trusted-domains.example.net"},
    {"ipv6 ir v", "%{ir}.%{v}._spf.%{d2}", SPF_MACRO_DOMAIN, true,
     "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"},
    {"upper case letter is case-insensitive", "%{D2}", SPF_MACRO_DOMAIN, false, "example.com"},
    {"upper case letter url-escapes", "%{S}", SPF_MACRO_DOMAIN, false, "strong-bad%40email.example.com"},
    {"digits beyond the parts", "%{d99}", SPF_MACRO_DOMAIN, false, "email.example.com"},
    {"several delimiters", "%{s-.}", SPF_MACRO_DOMAIN, false, "strong.bad@email.example.com"},
    {"delimiters and digits", "%{s2r-.}", SPF_MACRO_DOMAIN, false, "bad@email.strong"},
    {"escapes", "a%%b%_c%-d", SPF_MACRO_EXPLAIN, false, "a%b c%20d"},
    {"explain c", "from %{c} %{r} at %{t}", SPF_MACRO_EXPLAIN, false,
     "from 192.0.2.3 mx.example.org at 1234"},
    {"explain c ipv6", "%{c}", SPF_MACRO_EXPLAIN, true, "2001:db8::cb01"},
    {"p default", "%{p}", SPF_MACRO_DOMAIN, false, "unknown"},
    {"unknown letter", "%{x}", SPF_MACRO_DOMAIN, false, NULL},
    {"zero digits", "%{d0}", SPF_MACRO_DOMAIN, false, NULL},
    {"c in a domain", "%{c}.example.com", SPF_MACRO_DOMAIN, false, NULL},
    {"unterminated", "%{d", SPF_MACRO_DOMAIN, false, NULL},
    {"percent at the end", "foo%", SPF_MACRO_DOMAIN, false, NULL},
    {"percent and a letter", "%d", SPF_MACRO_DOMAIN, false, NULL},
    {"space in a domain", "a b", SPF_MACRO_DOMAIN, false, NULL},
    {"bad transformer", "%{d2x}", SPF_MACRO_DOMAIN, false, NULL},
};

static void macro_vars_example(struct spf_macro_vars *v, bool v6, unsigned char *ip)
{
	static const unsigned char ip4[4] = {192, 0, 2, 3};
	if (v6)
		inet_pton(AF_INET6, "2001:db8::cb01", ip);
	else
		memcpy(ip, ip4, 4);
	*v = (struct spf_macro_vars){
	    .sender = "strong-bad@email.example.com",
	    .local = "strong-bad",
	    .domain_o = "email.example.com",
	    .domain = "email.example.com",
	    .family = v6 ? AF_INET6 : AF_INET,
	    .ip = ip,
	    .ptr = NULL,
	    .helo = "mx.example.net",
	    .receiver = "mx.example.org",
	    .now = 1234,
	};
}

static void test_macro(void **state)
{
	const struct macro_case *c = *state;
	struct spf_macro_vars v;
	unsigned char ip[16];
	char out[1024];
	macro_vars_example(&v, c->v6, ip);
	int rc = spf_macro_expand(c->in, strlen(c->in), c->kind, &v, out, sizeof(out));
	assert_int_equal(spf_macro_valid(c->in, strlen(c->in), c->kind), c->out != NULL);
	if (!c->out) {
		assert_int_equal(rc, -1);
		return;
	}
	assert_int_equal(rc, 0);
	assert_string_equal(out, c->out);
}

/* URL escaping of an attacker's local part (RFC 7208 7.3, the suite's example). */
static void test_macro_escape(void **state)
{
	(void)state;
	struct spf_macro_vars v;
	unsigned char ip[16];
	char out[256];
	macro_vars_example(&v, false, ip);
	v.local = "~jack&jill=up-a_b3.c";
	assert_int_equal(spf_macro_expand("%{L}", 4, SPF_MACRO_EXPLAIN, &v, out, sizeof(out)), 0);
	assert_string_equal(out, "~jack%26jill%3Dup-a_b3.c");
}

/*
 * RFC 7208 7.3: an expansion longer than 253 characters loses labels from
 * the left. Thousands of %{d} (a macro bomb) must come out the same way,
 * in bounded memory.
 */
static void test_macro_truncation(void **state)
{
	(void)state;
	struct spf_macro_vars v;
	unsigned char ip[16];
	char out[512];
	macro_vars_example(&v, false, ip);
	for (size_t copies = 14; copies <= 4000; copies *= 17) {
		size_t len = copies * 5 + strlen("end.example.net");
		char *in = malloc(len + 1);
		assert_non_null(in);
		for (size_t i = 0; i < copies; i++)
			memcpy(in + 5 * i, "%{d}.", 5);
		strcpy(in + 5 * copies, "end.example.net");
		assert_int_equal(spf_macro_expand(in, len, SPF_MACRO_DOMAIN, &v, out, sizeof(out)), 0);
		size_t n = strlen(out);
		assert_true(n <= 253);
		assert_true(n > 253 - 20);
		/* it starts at a label: a whole "email.example.com." or a part after a dot */
		assert_true(strncmp(out, "email.", 6) == 0 || strncmp(out, "example.", 8) == 0 ||
		            strncmp(out, "com.", 4) == 0);
		assert_string_equal(out + n - strlen(".email.example.com.end.example.net"),
		                    ".email.example.com.end.example.net");
		free(in);
	}
}

/* An explanation is cut to the buffer, never overflowing it. */
static void test_macro_explain_cut(void **state)
{
	(void)state;
	struct spf_macro_vars v;
	unsigned char ip[16];
	char out[300];
	char in[4001];
	macro_vars_example(&v, false, ip);
	for (size_t i = 0; i < 1000; i++)
		memcpy(in + 4 * i, "%{S}", 4);
	in[4000] = '\0';
	assert_int_equal(spf_macro_expand(in, 4000, SPF_MACRO_EXPLAIN, &v, out, sizeof(out)), 0);
	assert_int_equal(strlen(out), sizeof(out) - 1);
	assert_true(strncmp(out, "strong-bad%40email.example.com", 30) == 0);
}

/* ---- the evaluator over a fake resolver ---- */

struct run {
	json_t *zone;
	struct fake_dns dns;
	int calls;
	enum spf_result result;
	char reason[256];
	char explanation[600];
	unsigned lookups;
	bool free_in_callback;
	spf_eval *ev;
};

static void run_done(void *arg, const struct spf_outcome *out)
{
	struct run *r = arg;
	r->calls++;
	r->result = out->result;
	snprintf(r->reason, sizeof(r->reason), "%s", out->reason);
	snprintf(r->explanation, sizeof(r->explanation), "%s", out->explanation ? out->explanation : "");
	if (r->free_in_callback) {
		r->lookups = spf_dns_lookups(r->ev);
		spf_free(r->ev);
		r->ev = NULL;
	}
}

/* Evaluates sender from ip over zone (JSON text, or a built json_t when zone_json is NULL). */
static enum spf_result run_spf(struct run *r, const char *zone_json, const char *ip, const char *mailfrom,
                               bool deferred)
{
	json_error_t jerr;
	if (zone_json) {
		r->zone = json_loads(zone_json, 0, &jerr);
		if (!r->zone)
			fail_msg("zone: %s", jerr.text);
	}
	r->dns = (struct fake_dns){.zone = r->zone, .deferred = deferred};
	struct spf_resolver res = fake_dns_resolver(&r->dns);
	struct spf_request req = {.mailfrom = mailfrom, .helo = "helo.example.net", .now = 1};
	req.family = strchr(ip, ':') ? AF_INET6 : AF_INET;
	assert_int_equal(inet_pton(req.family, ip, req.ip), 1);
	r->ev = spf_new(&req, &res, run_done, r);
	assert_non_null(r->ev);
	spf_start(r->ev);
	fake_dns_run(&r->dns);
	assert_int_equal(r->calls, 1);
	if (r->ev) {
		r->lookups = spf_dns_lookups(r->ev);
		spf_free(r->ev);
	}
	fake_dns_free(&r->dns);
	json_decref(r->zone);
	return r->result;
}

static json_t *zone_add(json_t *zone, const char *name, const char *type, const char *value)
{
	json_t *node = json_object_get(zone, name);
	if (!node) {
		node = json_object();
		json_object_set_new(zone, name, node);
	}
	json_t *list = json_object_get(node, type);
	if (!list) {
		list = json_array();
		json_object_set_new(node, type, list);
	}
	json_array_append_new(list, json_string(value));
	return zone;
}

/* A 100 KB SPF record: refused with a permerror, never parsed. */
static void test_huge_record(void **state)
{
	(void)state;
	struct run r = {0};
	size_t n = 100000;
	char *txt = malloc(n + 1);
	assert_non_null(txt);
	memcpy(txt, "v=spf1", 6);
	for (size_t i = 6; i < n; i += 2)
		memcpy(txt + i, " a", 2);
	txt[n] = '\0';
	r.zone = zone_add(json_object(), "big.example.com", "TXT", txt);
	free(txt);
	assert_int_equal(run_spf(&r, NULL, "192.0.2.1", "x@big.example.com", false), SPF_PERMERROR);
	assert_int_equal(r.lookups, 0);
}

/* A record with the most terms a 4 KB record can hold: parsed, the 11th lookup stops it. */
static void test_many_terms(void **state)
{
	(void)state;
	struct run r = {0};
	char txt[SPF_MAX_RECORD + 1];
	size_t n = 6;
	memcpy(txt, "v=spf1", 6);
	while (n + 2 <= SPF_MAX_RECORD) {
		memcpy(txt + n, " a", 2);
		n += 2;
	}
	txt[n] = '\0';
	r.zone = zone_add(json_object(), "many.example.com", "TXT", txt);
	zone_add(r.zone, "many.example.com", "A", "198.51.100.1");
	assert_int_equal(run_spf(&r, NULL, "192.0.2.1", "x@many.example.com", false), SPF_PERMERROR);
	assert_int_equal(r.lookups, SPF_MAX_DNS_LOOKUPS + 1);
	assert_non_null(strstr(r.reason, "DNS lookups"));
}

/* include of itself and a redirect loop: the lookup limit ends both. */
static void test_loops(void **state)
{
	(void)state;
	static const char *const zones[] = {
	    "{\"loop.example.com\": {\"TXT\": [\"v=spf1 include:loop.example.com -all\"]}}",
	    "{\"loop.example.com\": {\"TXT\": [\"v=spf1 redirect=loop.example.com\"]}}",
	    "{\"loop.example.com\": {\"TXT\": [\"v=spf1 include:%{d} -all\"]}}",
	};
	for (size_t i = 0; i < NELEM(zones); i++)
		for (int deferred = 0; deferred < 2; deferred++) {
			struct run r = {0};
			assert_int_equal(run_spf(&r, zones[i], "192.0.2.1", "x@loop.example.com", deferred),
			                 SPF_PERMERROR);
			assert_int_equal(r.lookups, SPF_MAX_DNS_LOOKUPS + 1);
			assert_true(r.dns.submitted <= SPF_MAX_DNS_LOOKUPS + 1);
		}
}

/* A chain of 30 includes, each a different domain: stopped after 10 lookups. */
static void test_deep_include_chain(void **state)
{
	(void)state;
	struct run r = {0};
	json_t *zone = json_object();
	for (int i = 0; i < 30; i++) {
		char name[64], txt[128];
		snprintf(name, sizeof(name), "d%d.example.com", i);
		snprintf(txt, sizeof(txt), "v=spf1 include:d%d.example.com -all", i + 1);
		zone_add(zone, name, "TXT", txt);
	}
	r.zone = zone;
	assert_int_equal(run_spf(&r, NULL, "192.0.2.1", "x@d0.example.com", true), SPF_PERMERROR);
	assert_int_equal(r.lookups, SPF_MAX_DNS_LOOKUPS + 1);
	assert_int_equal(r.dns.submitted, SPF_MAX_DNS_LOOKUPS + 1);
}

/* More than 10 MX names: permerror (RFC 7208 4.6.4), before any address lookup. */
static void test_mx_flood(void **state)
{
	(void)state;
	struct run r = {0};
	r.zone = zone_add(json_object(), "mx.example.com", "TXT", "v=spf1 mx -all");
	for (int i = 0; i < 11; i++) {
		char name[64];
		snprintf(name, sizeof(name), "mx%d.example.com", i);
		zone_add(r.zone, "mx.example.com", "MX", name);
		zone_add(r.zone, name, "A", "192.0.2.1");
	}
	assert_int_equal(run_spf(&r, NULL, "192.0.2.1", "x@mx.example.com", false), SPF_PERMERROR);
	assert_int_equal(r.dns.submitted, 2); /* TXT and MX */
}

/* 20 PTR names: only the first 10 are validated, the rest ignored. */
static void test_ptr_flood(void **state)
{
	(void)state;
	struct run r = {0};
	r.zone = zone_add(json_object(), "ptr.example.com", "TXT", "v=spf1 ptr -all");
	for (int i = 0; i < 20; i++) {
		char name[64];
		snprintf(name, sizeof(name), "h%d.ptr.example.com", i);
		zone_add(r.zone, "1.2.0.192.in-addr.arpa", "PTR", name);
		/* only the 11th name would validate */
		zone_add(r.zone, name, "A", i == 10 ? "192.0.2.1" : "198.51.100.1");
	}
	assert_int_equal(run_spf(&r, NULL, "192.0.2.1", "x@ptr.example.com", false), SPF_FAIL);
	assert_int_equal(r.dns.submitted, 2 + SPF_MAX_PTR_NAMES); /* TXT, PTR, 10 A */
}

/* Three void lookups: permerror; two are allowed. */
static void test_void_lookups(void **state)
{
	(void)state;
	struct run r = {0};
	assert_int_equal(run_spf(&r,
	                         "{\"v.example.com\": {\"TXT\": [\"v=spf1 a:n1.example.com a:n2.example.com "
	                         "a:n3.example.com ?all\"]}}",
	                         "192.0.2.1", "x@v.example.com", false),
	                 SPF_PERMERROR);
	assert_non_null(strstr(r.reason, "void"));
	struct run r2 = {0};
	assert_int_equal(
	    run_spf(&r2,
	            "{\"v.example.com\": {\"TXT\": [\"v=spf1 a:n1.example.com a:n2.example.com ?all\"]}}",
	            "192.0.2.1", "x@v.example.com", false),
	    SPF_NEUTRAL);
}

/*
 * An exists: full of %{d} and %{l}: the name queried is cut to 253
 * characters, and an attacker's local part with control bytes is never
 * queried at all.
 */
static void test_macro_bomb_query(void **state)
{
	(void)state;
	struct run r = {0};
	char txt[SPF_MAX_RECORD];
	size_t n = (size_t)snprintf(txt, sizeof(txt), "v=spf1 exists:");
	while (n + 5 < 3000)
		n += (size_t)snprintf(txt + n, sizeof(txt) - n, "%%{d}");
	snprintf(txt + n, sizeof(txt) - n, ".bomb.example.com -all");
	r.zone = zone_add(json_object(), "b.example.com", "TXT", txt);
	assert_int_equal(run_spf(&r, NULL, "192.0.2.1", "x@b.example.com", false), SPF_FAIL);
	assert_int_equal(r.dns.submitted, 2);
	assert_true(r.dns.longest <= 253 && r.dns.longest > 200);

	struct run r2 = {0};
	assert_int_equal(run_spf(&r2,
	                         "{\"l.example.com\": {\"TXT\": [\"v=spf1 exists:%{l}.l.example.com -all\"]},"
	                         " \"\\u0001.l.example.com\": {\"A\": [\"127.0.0.2\"]}}",
	                         "192.0.2.1", "\001@l.example.com", false),
	                 SPF_FAIL);
	assert_int_equal(r2.dns.submitted, 1);
}

/* The completion callback may free the evaluation, in both answer modes. */
static void test_free_in_callback(void **state)
{
	(void)state;
	for (int deferred = 0; deferred < 2; deferred++) {
		struct run r = {.free_in_callback = true};
		assert_int_equal(run_spf(&r,
		                         "{\"f.example.com\": {\"TXT\": [\"v=spf1 ip4:192.0.2.0/24 -all\"]}}",
		                         "192.0.2.9", "x@f.example.com", deferred),
		                 SPF_PASS);
	}
}

/* Freeing with a query in flight cancels it; no callback ever comes. */
static void test_cancel(void **state)
{
	(void)state;
	struct run r = {0};
	json_error_t jerr;
	r.zone = json_loads("{\"c.example.com\": {\"TXT\": [\"v=spf1 -all\"]}}", 0, &jerr);
	r.dns = (struct fake_dns){.zone = r.zone, .deferred = true};
	struct spf_resolver res = fake_dns_resolver(&r.dns);
	struct spf_request req = {.family = AF_INET, .ip = {192, 0, 2, 1}, .mailfrom = "x@c.example.com"};
	spf_eval *ev = spf_new(&req, &res, run_done, &r);
	assert_non_null(ev);
	spf_start(ev);
	assert_int_equal(r.dns.submitted, 1);
	spf_free(ev);
	assert_int_equal(r.dns.cancelled, 1);
	fake_dns_run(&r.dns);
	assert_int_equal(r.calls, 0);
	fake_dns_free(&r.dns);
	json_decref(r.zone);
}

/* A resolver that refuses the query: temperror, not a hang. */
static int refuse_submit(void *ctx, const char *name, enum spf_rrtype type, spf_dns_cb cb, void *arg,
                         uint64_t *id)
{
	(void)ctx, (void)name, (void)type, (void)cb, (void)arg, (void)id;
	return -1;
}

static void test_submit_fails(void **state)
{
	(void)state;
	struct run r = {0};
	struct spf_resolver res = {.submit = refuse_submit};
	struct spf_request req = {.family = AF_INET, .ip = {192, 0, 2, 1}, .mailfrom = "x@c.example.com"};
	spf_eval *ev = spf_new(&req, &res, run_done, &r);
	spf_start(ev);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.result, SPF_TEMPERROR);
	spf_free(ev);
}

/* An IPv4-mapped IPv6 client is evaluated as IPv4 (RFC 7208 5). */
static void test_ipv4_mapped(void **state)
{
	(void)state;
	struct run r = {0};
	assert_int_equal(run_spf(&r, "{\"m.example.com\": {\"TXT\": [\"v=spf1 ip4:192.0.2.0/24 -all\"]}}",
	                         "::ffff:192.0.2.7", "x@m.example.com", false),
	                 SPF_PASS);
}

/* The HELO identity (RFC 7208 2.3): postmaster@helo, with helo_identity or a null sender. */
static void test_helo_identity(void **state)
{
	(void)state;
	const char *zone =
	    "{\"helo.example.net\": {\"TXT\": [\"v=spf1 exists:%{l}.%{o}.x.example.com -all\"]},"
	    " \"postmaster.helo.example.net.x.example.com\": {\"A\": [\"127.0.0.2\"]}}";
	struct run r = {0};
	assert_int_equal(run_spf(&r, zone, "192.0.2.1", "", false), SPF_PASS);
	json_error_t jerr;
	struct run r2 = {0};
	r2.zone = json_loads(zone, 0, &jerr);
	r2.dns = (struct fake_dns){.zone = r2.zone};
	struct spf_resolver res = fake_dns_resolver(&r2.dns);
	struct spf_request req = {.family = AF_INET,
	                          .ip = {192, 0, 2, 2},
	                          .mailfrom = "someone@elsewhere.example.org",
	                          .helo = "HELO.example.net.",
	                          .helo_identity = 1};
	spf_eval *ev = spf_new(&req, &res, run_done, &r2);
	spf_start(ev);
	assert_int_equal(r2.calls, 1);
	assert_int_equal(r2.result, SPF_PASS);
	spf_free(ev);
	json_decref(r2.zone);
}

/* exp= with macros, and no explanation from an included record. */
static void test_explanation(void **state)
{
	(void)state;
	struct run r = {0};
	assert_int_equal(
	    run_spf(&r,
	            "{\"e.example.com\": {\"TXT\": [\"v=spf1 include:i.example.com -all "
	            "exp=why.%{d}\"]},"
	            " \"why.e.example.com\": {\"TXT\": [\"%{l} from %{c} not allowed by %{o}\"]},"
	            " \"i.example.com\": {\"TXT\": [\"v=spf1 -all exp=other.example.com\"]},"
	            " \"other.example.com\": {\"TXT\": [\"wrong\"]}}",
	            "2001:db8::1", "Bob@e.example.com", true),
	    SPF_FAIL);
	assert_string_equal(r.explanation, "Bob from 2001:db8::1 not allowed by e.example.com");
}

int main(void)
{
	int failed = 0;
	RUN_TABLE("spf_record_parse", parse_cases, test_parse, failed);
	RUN_TABLE("spf_macro", macro_cases, test_macro, failed);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_fields),
	    cmocka_unit_test(test_macro_escape),
	    cmocka_unit_test(test_macro_truncation),
	    cmocka_unit_test(test_macro_explain_cut),
	    cmocka_unit_test(test_huge_record),
	    cmocka_unit_test(test_many_terms),
	    cmocka_unit_test(test_loops),
	    cmocka_unit_test(test_deep_include_chain),
	    cmocka_unit_test(test_mx_flood),
	    cmocka_unit_test(test_ptr_flood),
	    cmocka_unit_test(test_void_lookups),
	    cmocka_unit_test(test_macro_bomb_query),
	    cmocka_unit_test(test_free_in_callback),
	    cmocka_unit_test(test_cancel),
	    cmocka_unit_test(test_submit_fails),
	    cmocka_unit_test(test_ipv4_mapped),
	    cmocka_unit_test(test_helo_identity),
	    cmocka_unit_test(test_explanation),
	};
	failed += cmocka_run_group_tests_name("spf", tests, NULL, NULL);
	return failed ? 1 : 0;
}
