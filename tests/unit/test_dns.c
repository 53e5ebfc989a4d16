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

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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

/* A loopback UDP port with nobody behind it (bound, then closed). */
static int dead_port(void)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	close(fd);
	return ntohs(sin.sin_port);
}

struct got {
	bool done;
	dns_status status;
};

static void on_answer(void *arg, const dns_answer *ans)
{
	struct got *g = arg;

	g->done = true;
	g->status = ans->status;
}

static bool got_done(void *arg)
{
	return ((struct got *)arg)->done;
}

static void test_dead_forwarder_and_no_room(void **state)
{
	char fwd_text[64];
	const char *const fwd[] = {fwd_text};
	dns_settings s = {.forwarders = fwd, .nforwarders = 1, .max_inflight = 1, .cache_mib = 1};
	char err[256] = "";
	struct got g = {0}, other = {0};
	uint64_t id, id2;
	dns_resolver *r;

	(void)state;
	snprintf(fwd_text, sizeof(fwd_text), "127.0.0.1@%d", dead_port());
	r = dns_new(&s, err, sizeof(err));
	assert_non_null(r);
	assert_int_equal(dns_query(r, "a.dnstest.example.net", DNS_TYPE_A, on_answer, &g, &id), 0);
	assert_int_equal(dns_inflight(r), 1);
	/* Over max_inflight: refused at once, no callback ever. */
	assert_int_equal(dns_query(r, "b.dnstest.example.net", DNS_TYPE_A, on_answer, &other, &id2), -1);
	/* The dead server: a temporary failure if libunbound gives up in time, else we do (a deadline). */
	if (dns_wait(r, got_done, &g, dns_now_ms() + 300))
		assert_int_equal(g.status, DNS_TEMPFAIL); /* never "no such name" */
	else
		dns_cancel(r, id);
	assert_false(other.done);
	assert_int_equal(dns_inflight(r), 0);
	/* Room again; a cancelled query never calls back. */
	assert_int_equal(dns_query(r, "b.dnstest.example.net", DNS_TYPE_A, on_answer, &other, &id2), 0);
	dns_cancel(r, id2);
	assert_int_equal(dns_inflight(r), 0);
	assert_false(dns_wait(r, got_done, &other, dns_now_ms() + 200));
	assert_false(other.done);
	dns_free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_new_free),
	                                   cmocka_unit_test(test_bad_forwarder),
	                                   cmocka_unit_test(test_dead_forwarder_and_no_room)};
	int failed = cmocka_run_group_tests_name("dns", tests, NULL, NULL);

	RUN_TABLE("dns status", status_cases, test_status, failed);
	return failed ? 1 : 0;
}
