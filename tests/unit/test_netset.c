/*
 * Unit tests for core/netset: IPv4 and IPv6 networks at every prefix
 * length, bad networks, duplicates, and a few thousand networks checked
 * against a brute-force scan with addr_net_contains. Each table row is its
 * own named cmocka test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/netset.h"
#include "unit_table.h"

/* The networks every lookup case runs against. */
static const char *const networks[] = {
    "192.0.2.0/24",    "198.51.100.7",  "10.0.0.0/8", "172.16.0.0/12",           "203.0.113.128/25",
    "2001:db8:1::/48", "2001:db8:2::5", "fd00::/8",   "2001:db8:ffff:ffff::/64", "::ffff:100.64.0.0/106",
};

struct lookup_case {
	const char *name;
	const char *ip;
	bool found;
};

static struct lookup_case lookup_cases[] = {
    {"ipv4 /24 inside", "192.0.2.200", true},
    {"ipv4 /24 outside", "192.0.3.1", false},
    {"ipv4 host", "198.51.100.7", true},
    {"ipv4 host neighbour", "198.51.100.8", false},
    {"ipv4 /8", "10.255.0.1", true},
    {"ipv4 /12 upper end", "172.31.255.255", true},
    {"ipv4 /12 just outside", "172.32.0.0", false},
    {"ipv4 /25 upper half", "203.0.113.200", true},
    {"ipv4 /25 lower half", "203.0.113.100", false},
    {"ipv4 mapped network added", "100.127.1.1", true},
    {"ipv4 mapped client", "::ffff:10.1.2.3", true},
    {"ipv4 literal client", "[192.0.2.1]", true},
    {"ipv6 /48 inside", "2001:db8:1:abcd::1", true},
    {"ipv6 /48 outside", "2001:db8:3::1", false},
    {"ipv6 host", "2001:db8:2::5", true},
    {"ipv6 host neighbour", "2001:db8:2::6", false},
    {"ipv6 /8", "fdff:1::1", true},
    {"ipv6 /64 inside", "2001:db8:ffff:ffff:1:2:3:4", true},
    {"ipv6 /64 outside", "2001:db8:ffff:fffe::1", false},
    {"ipv6 literal client", "IPv6:2001:db8:1::9", true},
    {"ipv6 address of ipv4 bytes", "c000:0200::", false},
    {"ipv4 address of ipv6 bytes", "32.1.13.184", false},
};

static netset *networks_new(void)
{
	netset *set = netset_new();
	char err[256];

	assert_non_null(set);
	for (size_t i = 0; i < NELEM(networks); i++) {
		if (netset_add_text(set, networks[i], err, sizeof(err)) != 0)
			fail_msg("%s: %s", networks[i], err);
	}
	return set;
}

static void test_lookup_case(void **state)
{
	const struct lookup_case *c = *state;
	netset *set = networks_new();
	addr_ip ip;

	assert_true(addr_ip_parse(c->ip, &ip));
	assert_int_equal(netset_contains(set, &ip), c->found);
	netset_free(set);
}

struct bad_case {
	const char *name;
	const char *text;
	const char *err; /* substring of the message */
};

static struct bad_case bad_cases[] = {
    {"ipv4 host bits", "192.0.2.1/24", "host bits"},
    {"ipv6 host bits", "2001:db8::1/32", "did you mean 2001:db8::/32?"},
    {"ipv4 too long", "192.0.2.0/40", "out of range"},
    {"ipv6 too long", "::/200", "out of range"},
    {"not an address", "localhost", "not an IP address"},
    {"empty", "", "not an IP address"},
    {"bad length", "10.0.0.0/x", "bad prefix length"},
};

static void test_bad_case(void **state)
{
	const struct bad_case *c = *state;
	netset *set = netset_new();
	char err[256] = "";

	assert_int_equal(netset_add_text(set, c->text, err, sizeof(err)), -1);
	if (strstr(err, c->err) == NULL)
		fail_msg("error '%s' does not contain '%s'", err, c->err);
	assert_int_equal(netset_count(set), 0);
	netset_free(set);
}

static void flip_bit(addr_ip *ip, unsigned bit)
{
	ip->bytes[bit / 8] ^= (uint8_t)(0x80 >> (bit % 8));
}

/* A set holding only the network of ip at len: ip is in, a change above len is out. */
static void check_length(const addr_ip *ip, unsigned len, unsigned bits)
{
	netset *set = netset_new();
	addr_net net = addr_net_of(ip, len);
	addr_ip other = *ip;

	assert_int_equal(netset_add(set, &net), 0);
	assert_true(netset_contains(set, ip));
	if (len > 0) {
		flip_bit(&other, len - 1);
		assert_false(netset_contains(set, &other));
		flip_bit(&other, len - 1);
	}
	if (len < bits) {
		flip_bit(&other, bits - 1);
		assert_true(netset_contains(set, &other));
	}
	netset_free(set);
}

static void test_every_ipv4_length(void **state)
{
	addr_ip ip;

	(void)state;
	assert_true(addr_ip_parse("203.0.113.77", &ip));
	for (unsigned len = 0; len <= 32; len++)
		check_length(&ip, len, 32);
}

static void test_every_ipv6_length(void **state)
{
	addr_ip ip;

	(void)state;
	assert_true(addr_ip_parse("2001:db8:1234:5678:9abc:def0:1357:9bdf", &ip));
	for (unsigned len = 0; len <= 128; len++)
		check_length(&ip, len, 128);
}

static void test_families_apart(void **state)
{
	netset *set = netset_new();
	addr_ip v4, v6;
	char err[128];

	(void)state;
	assert_true(addr_ip_parse("192.0.2.1", &v4));
	assert_true(addr_ip_parse("2001:db8::1", &v6));
	assert_int_equal(netset_add_text(set, "0.0.0.0/0", err, sizeof(err)), 0);
	assert_true(netset_contains(set, &v4));
	assert_false(netset_contains(set, &v6));
	netset_free(set);
	set = netset_new();
	assert_int_equal(netset_add_text(set, "::/0", err, sizeof(err)), 0);
	assert_false(netset_contains(set, &v4));
	assert_true(netset_contains(set, &v6));
	netset_free(set);
}

static void test_duplicates_and_empty(void **state)
{
	netset *set = netset_new();
	addr_ip ip;
	char err[128];

	(void)state;
	assert_true(addr_ip_parse("192.0.2.1", &ip));
	assert_false(netset_contains(set, &ip));
	assert_int_equal(netset_add_text(set, "192.0.2.0/24", err, sizeof(err)), 0);
	assert_int_equal(netset_add_text(set, "::ffff:192.0.2.0/120", err, sizeof(err)), 0);
	assert_int_equal(netset_count(set), 1);
	assert_false(netset_contains(NULL, &ip));
	assert_false(netset_contains(set, NULL));
	assert_int_equal(netset_count(NULL), 0);
	netset_free(set);
	netset_free(NULL);
}

static void test_host_bits_of_struct_cleared(void **state)
{
	netset *set = netset_new();
	addr_net net;
	addr_ip ip;

	(void)state;
	/* A caller's struct with host bits set still stores the network. */
	assert_true(addr_ip_parse("192.0.2.77", &ip));
	net.ip = ip;
	net.prefix = 24;
	assert_int_equal(netset_add(set, &net), 0);
	assert_true(addr_ip_parse("192.0.2.1", &ip));
	assert_true(netset_contains(set, &ip));
	netset_free(set);
}

/* xorshift64: a fixed sequence, so failures reproduce. */
static uint64_t next_random(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static addr_ip random_ip(uint64_t *seed, int version)
{
	addr_ip ip;
	uint64_t hi = next_random(seed), lo = next_random(seed);

	memset(&ip, 0, sizeof(ip));
	ip.version = (uint8_t)version;
	for (int i = 0; i < 8; i++) {
		ip.bytes[i] = (uint8_t)(hi >> (8 * i));
		ip.bytes[8 + i] = (uint8_t)(lo >> (8 * i));
	}
	if (version == 4)
		memset(ip.bytes + 4, 0, 12);
	/* One first byte per family, so that random addresses sometimes fall inside short networks. */
	ip.bytes[0] = version == 4 ? 10 : 0x20;
	return ip;
}

static unsigned random_length(uint64_t *seed, int version)
{
	return version == 4 ? 16 + (unsigned)(next_random(seed) % 17)
	                    : 16 + (unsigned)(next_random(seed) % 113);
}

/* 4,000 networks of mixed lengths against a brute-force scan, for random addresses. */
static void test_many_networks_match_scan(void **state)
{
	enum { NNETS = 4000, NPROBES = 20000 };
	addr_net *nets = calloc(NNETS, sizeof(*nets));
	netset *set = netset_new();
	uint64_t seed = 0x9e3779b97f4a7c15ULL;
	size_t hits = 0;

	(void)state;
	for (int i = 0; i < NNETS; i++) {
		int version = (i % 2) ? 6 : 4;
		unsigned len = random_length(&seed, version);
		addr_ip ip = random_ip(&seed, version);

		nets[i] = addr_net_of(&ip, len);
		assert_int_equal(netset_add(set, &nets[i]), 0);
	}
	for (int i = 0; i < NPROBES; i++) {
		addr_ip ip = random_ip(&seed, (i % 2) ? 6 : 4);
		bool scan = false;

		if (i % 4 == 0) /* an address inside a known network, to get hits of every length */
			ip = nets[next_random(&seed) % NNETS].ip;
		for (int j = 0; j < NNETS && !scan; j++)
			scan = addr_net_contains(&nets[j], &ip);
		assert_int_equal(netset_contains(set, &ip), scan);
		hits += scan;
	}
	assert_true(hits >= NPROBES / 4);
	assert_true(hits < NPROBES);
	netset_free(set);
	free(nets);
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_every_ipv4_length),
	    cmocka_unit_test(test_every_ipv6_length),
	    cmocka_unit_test(test_families_apart),
	    cmocka_unit_test(test_duplicates_and_empty),
	    cmocka_unit_test(test_host_bits_of_struct_cleared),
	    cmocka_unit_test(test_many_networks_match_scan),
	};

	RUN_TABLE("netset_contains", lookup_cases, test_lookup_case, failed);
	RUN_TABLE("netset_add_text errors", bad_cases, test_bad_case, failed);
	failed += cmocka_run_group_tests_name("netset", tests, NULL, NULL);
	return failed;
}
