/*
 * Unit tests for dns/dns: what a libunbound result means (dns_status_of):
 * an error, a bogus answer and every rcode but NOERROR and NXDOMAIN are
 * temporary failures, never "not listed"; NOERROR without data is no
 * data. A resolver is made and freed without a query (no thread, no
 * network): forwarders and bounds are accepted as the config gives them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "dns/dns.h"
#include "unit_table.h"

struct status_case {
	const char *name;
	int err, rcode;
	bool havedata, bogus;
	dns_status want;
};

static struct status_case status_cases[] = {
    {"NOERROR with data", 0, 0, true, false, DNS_OK},
    {"NOERROR without data", 0, 0, false, false, DNS_NODATA},
    {"NXDOMAIN", 0, 3, false, false, DNS_NXDOMAIN},
    {"SERVFAIL", 0, 2, false, false, DNS_TEMPFAIL},
    {"REFUSED", 0, 5, false, false, DNS_TEMPFAIL},
    {"FORMERR", 0, 1, false, false, DNS_TEMPFAIL},
    {"NOTIMP", 0, 4, false, false, DNS_TEMPFAIL},
    {"SERVFAIL with data (never an answer)", 0, 2, true, false, DNS_TEMPFAIL},
    {"libunbound error", -2, 0, true, false, DNS_TEMPFAIL},
    {"bogus (DNSSEC)", 0, 0, true, true, DNS_TEMPFAIL},
};

static void test_status(void **state)
{
	const struct status_case *c = *state;

	assert_int_equal(dns_status_of(c->err, c->rcode, c->havedata, c->bogus), c->want);
}

static void test_new_free(void **state)
{
	const char *const fwd[] = {"127.0.0.1@5353", "::1@53", "192.0.2.53"};
	dns_settings s = {.forwarders = fwd, .nforwarders = 3, .max_inflight = 10, .cache_mib = 1};
	char err[256] = "";
	dns_resolver *r = dns_new(&s, err, sizeof(err));

	(void)state;
	assert_non_null(r);
	assert_true(dns_fd(r) >= 0);
	assert_int_equal(dns_inflight(r), 0);
	dns_free(r);
	dns_free(NULL);
}

static void test_bad_forwarder(void **state)
{
	const char *const fwd[] = {"not an address"};
	dns_settings s = {.forwarders = fwd, .nforwarders = 1, .max_inflight = 10, .cache_mib = 1};
	char err[256] = "";

	(void)state;
	assert_null(dns_new(&s, err, sizeof(err)));
	assert_non_null(strstr(err, "not an address"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_new_free),
	                                   cmocka_unit_test(test_bad_forwarder)};
	int failed = cmocka_run_group_tests_name("dns", tests, NULL, NULL);

	RUN_TABLE("dns status", status_cases, test_status, failed);
	return failed ? 1 : 0;
}
