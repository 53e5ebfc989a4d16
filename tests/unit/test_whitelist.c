/*
 * Unit tests for core/whitelist: client networks (IPv4 and IPv6), sender
 * addresses and domains with and without include_subdomains, the check
 * order, unknown clients and the null sender, and whitelist-file lines.
 * Each table row is its own named cmocka test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "core/whitelist.h"
#include "unit_table.h"

#define NONE WHITELIST_NONE
#define ADDRESS WHITELIST_SENDER_ADDRESS
#define DOMAIN WHITELIST_SENDER_DOMAIN
#define NETWORK WHITELIST_CLIENT_NETWORK

static whitelist *fixture_new(bool include_subdomains)
{
	whitelist *wl = whitelist_new(include_subdomains);
	char err[256];

	assert_non_null(wl);
	assert_int_equal(whitelist_add_domain(wl, "example.org", err, sizeof(err)), 0);
	assert_int_equal(whitelist_add_domain(wl, "@Partner.Example.COM.", err, sizeof(err)), 0);
	assert_int_equal(whitelist_add_domain(wl, "corp.example", err, sizeof(err)), 0);
	assert_int_equal(whitelist_add_address(wl, "<Boss@Corp.example>", err, sizeof(err)), 0);
	assert_int_equal(whitelist_add_address(wl, "friend@elsewhere.example", err, sizeof(err)), 0);
	assert_int_equal(whitelist_add_network(wl, "192.0.2.0/24", err, sizeof(err)), 0);
	assert_int_equal(whitelist_add_network(wl, "198.51.100.7", err, sizeof(err)), 0);
	assert_int_equal(whitelist_add_network(wl, "2001:db8:1::/48", err, sizeof(err)), 0);
	assert_int_equal(whitelist_add_network(wl, "2001:db8:ff::25", err, sizeof(err)), 0);
	return wl;
}

struct check_case {
	const char *name;
	const char *sender;
	const char *client;
	whitelist_match plain; /* include_subdomains false */
	whitelist_match sub;   /* include_subdomains true */
};

static struct check_case check_cases[] = {
    {"client ipv4 network", "x@spam.example", "192.0.2.55", NETWORK, NETWORK},
    {"client ipv4 host", "x@spam.example", "198.51.100.7", NETWORK, NETWORK},
    {"client ipv4 host neighbour", "x@spam.example", "198.51.100.8", NONE, NONE},
    {"client ipv4 outside", "x@spam.example", "192.0.3.1", NONE, NONE},
    {"client ipv4-mapped", "x@spam.example", "::ffff:192.0.2.1", NETWORK, NETWORK},
    {"client ipv6 network", "x@spam.example", "2001:db8:1:abcd::1", NETWORK, NETWORK},
    {"client ipv6 outside", "x@spam.example", "2001:db8:2::1", NONE, NONE},
    {"client ipv6 host", "x@spam.example", "2001:db8:ff::25", NETWORK, NETWORK},
    {"client ipv6 literal", "x@spam.example", "IPv6:2001:db8:1::9", NETWORK, NETWORK},
    {"client unknown", "x@spam.example", "unknown", NONE, NONE},
    {"client null", "x@spam.example", NULL, NONE, NONE},
    {"client garbage", "x@spam.example", "not-an-ip", NONE, NONE},
    {"network before address", "boss@corp.example", "192.0.2.1", NETWORK, NETWORK},
    {"address", "boss@corp.example", "203.0.113.1", ADDRESS, ADDRESS},
    {"address raw form", "<Boss@CORP.Example.>", "unknown", ADDRESS, ADDRESS},
    {"address before domain", "boss@corp.example", NULL, ADDRESS, ADDRESS},
    {"address without its domain", "friend@elsewhere.example", NULL, ADDRESS, ADDRESS},
    {"other address same domain", "other@elsewhere.example", NULL, NONE, NONE},
    {"domain", "anyone@example.org", NULL, DOMAIN, DOMAIN},
    {"domain case and dot", "<Anyone@EXAMPLE.org.>", NULL, DOMAIN, DOMAIN},
    {"domain listed with at", "x@partner.example.com", NULL, DOMAIN, DOMAIN},
    {"subdomain", "x@mail.example.org", NULL, NONE, DOMAIN},
    {"deep subdomain", "x@a.b.c.example.org", NULL, NONE, DOMAIN},
    {"subdomain of second domain", "x@eu.partner.example.com", NULL, NONE, DOMAIN},
    {"parent is not whitelisted", "x@example.com", NULL, NONE, NONE},
    {"suffix without dot", "x@notexample.org", NULL, NONE, NONE},
    {"whitelisted domain as prefix", "x@example.org.evil.example", NULL, NONE, NONE},
    {"top-level domain alone", "x@org", NULL, NONE, NONE},
    {"null sender", "", NULL, NONE, NONE},
    {"null sender brackets", "<>", NULL, NONE, NONE},
    {"unknown sender", NULL, NULL, NONE, NONE},
    {"null sender from network", "", "192.0.2.9", NETWORK, NETWORK},
    {"invalid sender", "<anyone@example.org", NULL, NONE, NONE},
    {"sender without domain", "postmaster", NULL, NONE, NONE},
};

static void test_check_case(void **state)
{
	const struct check_case *c = *state;
	whitelist *plain = fixture_new(false);
	whitelist *sub = fixture_new(true);

	assert_int_equal(whitelist_check(plain, c->sender, c->client), c->plain);
	assert_int_equal(whitelist_check(sub, c->sender, c->client), c->sub);
	/* The halves agree with the whole where the network does not hide the sender. */
	assert_int_equal(whitelist_check_client(plain, c->client), c->plain == NETWORK);
	if (c->plain != NETWORK)
		assert_int_equal(whitelist_check_sender(plain, c->sender), c->plain);
	if (c->sub != NETWORK)
		assert_int_equal(whitelist_check_sender(sub, c->sender), c->sub);
	whitelist_free(plain);
	whitelist_free(sub);
}

struct line_case {
	const char *name;
	const char *line;
	const char *err;             /* NULL: accepted; else a substring of the message */
	const char *sender, *client; /* accepted lines: a check that now matches */
	whitelist_match match;
};

static struct line_case line_cases[] = {
    {"address", "user@example.org", NULL, "user@example.org", NULL, ADDRESS},
    {"address with blanks", "  User@Example.ORG \r\n", NULL, "user@example.org", NULL, ADDRESS},
    {"domain", "example.net", NULL, "x@example.net", NULL, DOMAIN},
    {"domain with at", "@example.net", NULL, "x@example.net", NULL, DOMAIN},
    {"domain starting with digit", "123mail.example", NULL, "x@123mail.example", NULL, DOMAIN},
    {"ipv4 network", "192.0.2.0/24", NULL, NULL, "192.0.2.77", NETWORK},
    {"ipv4 host", "\t203.0.113.5 ", NULL, NULL, "203.0.113.5", NETWORK},
    {"ipv6 network", "2001:db8::/32", NULL, NULL, "2001:db8:5::1", NETWORK},
    {"ipv6 host", "::1", NULL, NULL, "::1", NETWORK},
    {"host bits", "192.0.2.1/24", "did you mean 192.0.2.0/24?", NULL, NULL, NONE},
    {"ipv6 host bits", "2001:db8::1/32", "host bits", NULL, NULL, NONE},
    {"prefix too long", "192.0.2.0/33", "out of range", NULL, NULL, NONE},
    {"short ipv4", "192.0.2", "not an IP address", NULL, NULL, NONE},
    {"bad ipv6", "2001:db8:::1", "not an IP address", NULL, NULL, NONE},
    {"domain with blank", "bad domain.example", "not a domain", NULL, NULL, NONE},
    {"bare at sign", "@", "not a domain", NULL, NULL, NONE},
    {"address without domain", "user@", "not an address", NULL, NULL, NONE},
    {"unbalanced address", "<user@example.org", "not an address", NULL, NULL, NONE},
    /* Stored forms no sender normalises to (found by fuzz_lists, fuzz_addr). */
    {"address with two trailing dots", "user@example.org..", "not an address", NULL, NULL, NONE},
    {"domain with two trailing dots", "example.org..", "not a domain", NULL, NULL, NONE},
    {"empty", "", "empty whitelist entry", NULL, NULL, NONE},
    {"blanks only", " \t", "empty whitelist entry", NULL, NULL, NONE},
};

static void test_line_case(void **state)
{
	const struct line_case *c = *state;
	whitelist *wl = whitelist_new(false);
	char err[256] = "";
	int rc = whitelist_add_line(wl, c->line, err, sizeof(err));

	if (c->err != NULL) {
		assert_int_equal(rc, -1);
		if (strstr(err, c->err) == NULL)
			fail_msg("error '%s' does not contain '%s'", err, c->err);
	} else {
		if (rc != 0)
			fail_msg("rejected: %s", err);
		assert_int_equal(whitelist_check(wl, c->sender, c->client), c->match);
		assert_int_equal(whitelist_check(wl, "x@elsewhere.example", "203.0.113.200"), NONE);
	}
	whitelist_free(wl);
}

static void test_empty_and_null(void **state)
{
	whitelist *wl = whitelist_new(true);

	(void)state;
	assert_non_null(wl);
	assert_int_equal(whitelist_check(wl, "a@example.org", "192.0.2.1"), NONE);
	assert_int_equal(whitelist_check(NULL, "a@example.org", "192.0.2.1"), NONE);
	whitelist_free(wl);
	whitelist_free(NULL);
}

/* decide.c needs both answers: a whitelisted network does not hide the sender's own match. */
static void test_both_halves(void **state)
{
	whitelist *wl = fixture_new(false);

	(void)state;
	assert_true(whitelist_check_client(wl, "192.0.2.1"));
	assert_int_equal(whitelist_check_sender(wl, "<boss@corp.example>"), ADDRESS);
	assert_int_equal(whitelist_check_sender(wl, "x@example.org"), DOMAIN);
	assert_int_equal(whitelist_check_sender(wl, "x@spam.example"), NONE);
	assert_int_equal(whitelist_check_sender(wl, ""), NONE);
	assert_int_equal(whitelist_check_sender(wl, NULL), NONE);
	assert_false(whitelist_check_client(wl, "unknown"));
	assert_false(whitelist_check_client(wl, NULL));
	assert_false(whitelist_check_client(NULL, "192.0.2.1"));
	assert_int_equal(whitelist_check_sender(NULL, "x@example.org"), NONE);
	whitelist_free(wl);
}

static void test_many_domains(void **state)
{
	whitelist *wl = whitelist_new(true);
	char name[64], err[128];

	(void)state;
	for (int i = 0; i < 20000; i++) {
		snprintf(name, sizeof(name), "customer%d.example", i);
		assert_int_equal(whitelist_add_domain(wl, name, err, sizeof(err)), 0);
	}
	for (int i = 0; i < 20000; i += 7) {
		snprintf(name, sizeof(name), "x@mx.customer%d.example", i);
		assert_int_equal(whitelist_check(wl, name, NULL), DOMAIN);
		snprintf(name, sizeof(name), "x@customer%d.example.net", i);
		assert_int_equal(whitelist_check(wl, name, NULL), NONE);
	}
	whitelist_free(wl);
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_empty_and_null),
	    cmocka_unit_test(test_many_domains),
	    cmocka_unit_test(test_both_halves),
	};

	RUN_TABLE("whitelist_check", check_cases, test_check_case, failed);
	RUN_TABLE("whitelist_add_line", line_cases, test_line_case, failed);
	failed += cmocka_run_group_tests_name("whitelist", tests, NULL, NULL);
	return failed;
}
