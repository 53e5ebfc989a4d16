/*
 * Unit tests for dns/dns: what a libunbound result means (dns_status_of):
 * an error, a bogus answer and every rcode but NOERROR and NXDOMAIN are
 * temporary failures, never "not listed"; NOERROR without data is no
 * data. A resolver is made and freed without a query (no thread, no
 * network): forwarders and bounds are accepted as the config gives them.
 *
 * The answer cache against a small DNS server in a thread of the test
 * (fake_server: it counts the queries that reach it): a hit waits on the
 * ready list and is delivered without a query, by dns_deliver() or
 * dns_wait(); it expires at the TTL; a cancelled hit never calls back;
 * failures and answers too big for a slot are not kept.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
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
	size_t count;
	unsigned char first[4]; /* the first record's RDATA, when an A */
};

static void on_answer(void *arg, const dns_answer *ans)
{
	struct got *g = arg;

	g->done = true;
	g->status = ans->status;
	g->count = ans->count;
	if (ans->count > 0 && ans->rr[0].len == 4)
		memcpy(g->first, ans->rr[0].data, 4);
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

/* ---- the answer cache, against fake_server ---- */

/*
 * Answers by the first label of the name: "servfail" SERVFAIL, "nx"
 * NXDOMAIN, "short" one A with TTL 1, "many" 17 A records, "bigtxt" 2 TXT
 * records of 250 bytes, anything else one A 127.0.0.2 with TTL 300 (other
 * types: no data). Negative answers carry an SOA with a minimum of 60 s.
 */
typedef struct fake_server {
	int fd, port;
	atomic_bool stop;
	atomic_uint queries;
	pthread_t thread;
} fake_server;

static size_t put16(unsigned char *p, unsigned v)
{
	p[0] = (unsigned char)(v >> 8);
	p[1] = (unsigned char)v;
	return 2;
}

static size_t put32(unsigned char *p, unsigned v)
{
	put16(p, v >> 16);
	return 2 + put16(p + 2, v & 0xffff);
}

/* An RR owned by the question's name (pointer to offset 12). */
static size_t put_rr(unsigned char *p, unsigned type, unsigned ttl, const unsigned char *rdata, size_t len)
{
	size_t o = 0;

	o += put16(p + o, 0xc00c);
	o += put16(p + o, type);
	o += put16(p + o, 1);
	o += put32(p + o, ttl);
	o += put16(p + o, (unsigned)len);
	memcpy(p + o, rdata, len);
	return o + len;
}

static size_t fake_answer(const unsigned char *q, size_t qlen, unsigned char *out)
{
	static const unsigned char soa[] = {0, 0, 0,  0, 0, 1, 0,  0, 0, 60, 0,
	                                    0, 0, 60, 0, 0, 0, 60, 0, 0, 0,  60};
	static const unsigned char ip[] = {127, 0, 0, 2};
	unsigned char txt[251];
	char label[64] = "";
	size_t o = 12, qend = 12, an = 0, ns = 0;
	unsigned qtype, rcode = 0;

	if (qlen < 17)
		return 0;
	if (q[12] > 0 && q[12] < sizeof(label))
		memcpy(label, q + 13, q[12]), label[q[12]] = '\0';
	while (qend < qlen && q[qend] != 0)
		qend += (size_t)q[qend] + 1;
	if (qend + 5 > qlen)
		return 0;
	qtype = (unsigned)q[qend + 1] << 8 | q[qend + 2];
	memcpy(out, q, qend + 5); /* id, flags and the question */
	o = qend + 5;
	if (strcasecmp(label, "servfail") == 0) {
		rcode = 2;
	} else if (strcasecmp(label, "nx") == 0) {
		rcode = 3;
	} else if (qtype == DNS_TYPE_A && strcasecmp(label, "many") == 0) {
		for (unsigned char i = 0; i < 17; i++, an++)
			o += put_rr(out + o, DNS_TYPE_A, 300, (const unsigned char[]){127, 0, 0, i}, 4);
	} else if (qtype == DNS_TYPE_TXT && strcasecmp(label, "bigtxt") == 0) {
		memset(txt, 'x', sizeof(txt));
		txt[0] = 250;
		for (; an < 2; an++)
			o += put_rr(out + o, DNS_TYPE_TXT, 300, txt, sizeof(txt));
	} else if (qtype == DNS_TYPE_A) {
		o += put_rr(out + o, DNS_TYPE_A, strcasecmp(label, "short") == 0 ? 1 : 300, ip, sizeof(ip));
		an = 1;
	}
	if (an == 0 && rcode != 2) { /* the zone's SOA: the negative TTL */
		o += put16(out + o, 0xc00c);
		o += put16(out + o, 6);
		o += put16(out + o, 1);
		o += put32(out + o, 60);
		o += put16(out + o, sizeof(soa));
		memcpy(out + o, soa, sizeof(soa));
		o += sizeof(soa);
		ns = 1;
	}
	out[2] = 0x84 | (q[2] & 0x01); /* QR, AA, RD copied */
	out[3] = (unsigned char)(0x80 | rcode);
	put16(out + 6, (unsigned)an);
	put16(out + 8, (unsigned)ns);
	put16(out + 10, 1);
	out[o++] = 0; /* OPT: EDNS, so that the TXT answer needs no TCP */
	o += put16(out + o, 41);
	o += put16(out + o, 4096);
	o += put32(out + o, 0);
	o += put16(out + o, 0);
	return o;
}

static void *fake_serve(void *arg)
{
	fake_server *fs = arg;
	unsigned char q[512], out[2048];

	while (!atomic_load(&fs->stop)) {
		struct pollfd pfd = {.fd = fs->fd, .events = POLLIN};
		struct sockaddr_in from;
		socklen_t fromlen = sizeof(from);
		ssize_t n;
		size_t len;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		n = recvfrom(fs->fd, q, sizeof(q), 0, (struct sockaddr *)&from, &fromlen);
		if (n <= 0 || (len = fake_answer(q, (size_t)n, out)) == 0)
			continue;
		atomic_fetch_add(&fs->queries, 1);
		sendto(fs->fd, out, len, 0, (struct sockaddr *)&from, fromlen);
	}
	return NULL;
}

static dns_resolver *fake_start(fake_server *fs)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sin);
	static char fwd_text[64];
	static const char *const fwd[] = {fwd_text};
	dns_settings s = {.forwarders = fwd, .nforwarders = 1, .max_inflight = 10, .cache_mib = 1};
	char err[256] = "";
	dns_resolver *r;

	fs->fd = socket(AF_INET, SOCK_DGRAM, 0);
	assert_true(fs->fd >= 0);
	assert_int_equal(bind(fs->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(fs->fd, (struct sockaddr *)&sin, &len), 0);
	fs->port = ntohs(sin.sin_port);
	atomic_init(&fs->stop, false);
	atomic_init(&fs->queries, 0);
	assert_int_equal(pthread_create(&fs->thread, NULL, fake_serve, fs), 0);
	snprintf(fwd_text, sizeof(fwd_text), "127.0.0.1@%d", fs->port);
	r = dns_new(&s, err, sizeof(err));
	assert_non_null(r);
	return r;
}

static void fake_stop(fake_server *fs, dns_resolver *r)
{
	dns_free(r);
	atomic_store(&fs->stop, true);
	pthread_join(fs->thread, NULL);
	close(fs->fd);
}

/* A lookup that goes to the server (no hit): its answer. */
static struct got lookup_miss(dns_resolver *r, const char *name, int type)
{
	struct got g = {0};
	uint64_t id;

	assert_int_equal(dns_query(r, name, type, on_answer, &g, &id), 0);
	assert_false(dns_has_ready(r));
	assert_true(dns_wait(r, got_done, &g, dns_now_ms() + 10000));
	return g;
}

/* A lookup answered from the cache: waits on the ready list, delivered by dns_deliver. */
static struct got lookup_hit(dns_resolver *r, const char *name, int type)
{
	struct got g = {0};
	uint64_t id;

	assert_int_equal(dns_query(r, name, type, on_answer, &g, &id), 0);
	assert_true(dns_has_ready(r));
	assert_false(g.done); /* never from inside dns_query */
	dns_deliver(r);
	assert_true(g.done);
	assert_false(dns_has_ready(r));
	assert_int_equal(dns_inflight(r), 0);
	return g;
}

static void test_cache_hit(void **state)
{
	fake_server fs;
	dns_resolver *r = fake_start(&fs);
	struct got g;

	(void)state;
	g = lookup_miss(r, "a.dnstest.example.net", DNS_TYPE_A);
	assert_int_equal(g.status, DNS_OK);
	assert_int_equal(atomic_load(&fs.queries), 1);
	g = lookup_hit(r, "A.DnsTest.Example.NET", DNS_TYPE_A);
	assert_int_equal(g.status, DNS_OK);
	assert_int_equal(g.count, 1);
	assert_memory_equal(g.first, ((unsigned char[]){127, 0, 0, 2}), 4);
	assert_int_equal(atomic_load(&fs.queries), 1);
	/* The key is (name, type) exactly. */
	assert_int_equal(lookup_miss(r, "a.dnstest.example.net", DNS_TYPE_TXT).status, DNS_NODATA);
	assert_int_equal(lookup_miss(r, "a.dnstest.example.ne", DNS_TYPE_A).status, DNS_OK);
	assert_int_equal(lookup_miss(r, "b.dnstest.example.net", DNS_TYPE_A).status, DNS_OK);
	/* Negative answers are kept too (the SOA's TTL). */
	assert_int_equal(lookup_hit(r, "a.dnstest.example.net", DNS_TYPE_TXT).status, DNS_NODATA);
	assert_int_equal(lookup_miss(r, "nx.dnstest.example.net", DNS_TYPE_A).status, DNS_NXDOMAIN);
	assert_int_equal(lookup_hit(r, "nx.dnstest.example.net", DNS_TYPE_A).status, DNS_NXDOMAIN);
	assert_int_equal(atomic_load(&fs.queries), 5);
	fake_stop(&fs, r);
}

/* dns_wait delivers a hit at once, even with its deadline already passed. */
static void test_hit_in_dns_wait(void **state)
{
	fake_server fs;
	dns_resolver *r = fake_start(&fs);
	struct got g = {0};
	uint64_t id;

	(void)state;
	lookup_miss(r, "a.dnstest.example.net", DNS_TYPE_A);
	assert_int_equal(dns_query(r, "a.dnstest.example.net", DNS_TYPE_A, on_answer, &g, &id), 0);
	assert_true(dns_wait(r, got_done, &g, dns_now_ms()));
	assert_int_equal(g.status, DNS_OK);
	assert_int_equal(dns_inflight(r), 0);
	/* dns_process delivers them too. */
	g.done = false;
	assert_int_equal(dns_query(r, "a.dnstest.example.net", DNS_TYPE_A, on_answer, &g, &id), 0);
	assert_int_equal(dns_process(r), 0);
	assert_true(g.done);
	fake_stop(&fs, r);
}

static void test_hit_expires(void **state)
{
	fake_server fs;
	dns_resolver *r = fake_start(&fs);
	struct timespec pause = {.tv_sec = 2, .tv_nsec = 200000000};

	(void)state;
	lookup_miss(r, "short.dnstest.example.net", DNS_TYPE_A);
	lookup_hit(r, "short.dnstest.example.net", DNS_TYPE_A);
	nanosleep(&pause, NULL); /* past the TTL of 1 s */
	assert_int_equal(lookup_miss(r, "short.dnstest.example.net", DNS_TYPE_A).status, DNS_OK);
	assert_int_equal(atomic_load(&fs.queries), 2);
	fake_stop(&fs, r);
}

static void test_cancel_hit(void **state)
{
	fake_server fs;
	dns_resolver *r = fake_start(&fs);
	struct got g = {0}, left = {0};
	uint64_t id, id2;

	(void)state;
	lookup_miss(r, "a.dnstest.example.net", DNS_TYPE_A);
	assert_int_equal(dns_query(r, "a.dnstest.example.net", DNS_TYPE_A, on_answer, &g, &id), 0);
	assert_int_equal(dns_query(r, "a.dnstest.example.net", DNS_TYPE_A, on_answer, &left, &id2), 0);
	assert_int_equal(dns_inflight(r), 2);
	dns_cancel(r, id);
	assert_int_equal(dns_inflight(r), 1);
	dns_deliver(r);
	assert_false(g.done);
	assert_true(left.done);
	/* A hit still waiting when the resolver goes (a retired one) is freed without a callback. */
	left.done = false;
	assert_int_equal(dns_query(r, "a.dnstest.example.net", DNS_TYPE_A, on_answer, &left, &id2), 0);
	fake_stop(&fs, r);
	assert_false(left.done);
}

/*
 * The names of one busy load all stay cached: 130 names (a DNSBL load's
 * 64 clients on two sites, and two SPF records) share the table's slots
 * without evicting each other. In a direct-mapped table 20 of these
 * shared a slot and went to libunbound on every request.
 */
static void test_load_stays_cached(void **state)
{
	fake_server fs;
	dns_resolver *r = fake_start(&fs);
	char name[64];

	(void)state;
	for (int i = 0; i < 130; i++) {
		snprintf(name, sizeof(name), "%d.%d.10.bl%d.example.net", i / 2, i * 7 % 256, i % 2 + 1);
		assert_int_equal(lookup_miss(r, name, DNS_TYPE_A).status, DNS_OK);
	}
	for (int i = 0; i < 130; i++) {
		snprintf(name, sizeof(name), "%d.%d.10.bl%d.example.net", i / 2, i * 7 % 256, i % 2 + 1);
		assert_int_equal(lookup_hit(r, name, DNS_TYPE_A).status, DNS_OK);
	}
	assert_int_equal(atomic_load(&fs.queries), 130);
	fake_stop(&fs, r);
}

static void test_not_kept(void **state)
{
	fake_server fs;
	dns_resolver *r = fake_start(&fs);
	struct got g;

	(void)state;
	assert_int_equal(lookup_miss(r, "servfail.dnstest.example.net", DNS_TYPE_A).status, DNS_TEMPFAIL);
	assert_int_equal(lookup_miss(r, "servfail.dnstest.example.net", DNS_TYPE_A).status, DNS_TEMPFAIL);
	g = lookup_miss(r, "many.dnstest.example.net", DNS_TYPE_A); /* more records than a slot holds */
	assert_int_equal(g.status, DNS_OK);
	assert_int_equal(g.count, 17);
	assert_int_equal(lookup_miss(r, "many.dnstest.example.net", DNS_TYPE_A).count, 17);
	g = lookup_miss(r, "bigtxt.dnstest.example.net", DNS_TYPE_TXT); /* more bytes than a slot holds */
	assert_int_equal(g.status, DNS_OK);
	assert_int_equal(g.count, 2);
	assert_int_equal(lookup_miss(r, "bigtxt.dnstest.example.net", DNS_TYPE_TXT).count, 2);
	fake_stop(&fs, r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_new_free),
	                                   cmocka_unit_test(test_bad_forwarder),
	                                   cmocka_unit_test(test_dead_forwarder_and_no_room),
	                                   cmocka_unit_test(test_cache_hit),
	                                   cmocka_unit_test(test_hit_in_dns_wait),
	                                   cmocka_unit_test(test_hit_expires),
	                                   cmocka_unit_test(test_cancel_hit),
	                                   cmocka_unit_test(test_load_stays_cached),
	                                   cmocka_unit_test(test_not_kept)};
	int failed = cmocka_run_group_tests_name("dns", tests, NULL, NULL);

	RUN_TABLE("dns status", status_cases, test_status, failed);
	return failed ? 1 : 0;
}
