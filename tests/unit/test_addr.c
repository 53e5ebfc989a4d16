/*
 * Unit tests for core/addr: envelope normalisation, extensions, IP and
 * network parsing, listening addresses (HOST:PORT), containment and
 * canonical formatting. Each table row is
 * its own named cmocka test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"
#include "unit_table.h"

/* ---- addr_normalise ---- */

struct norm_case {
	const char *name;
	const char *in;
	addr_status status;
	const char *out; /* expected output when ADDR_OK */
};

static struct norm_case norm_cases[] = {
    {"plain", "user@example.com", ADDR_OK, "user@example.com"},
    {"brackets", "<user@example.com>", ADDR_OK, "user@example.com"},
    {"lowercase", "<User@Example.COM>", ADDR_OK, "user@example.com"},
    {"blanks around brackets", "  <user@example.com> ", ADDR_OK, "user@example.com"},
    {"trailing dot", "<user@example.com.>", ADDR_OK, "user@example.com"},
    {"trailing dot without brackets", "User@Example.Com.", ADDR_OK, "user@example.com"},
    {"only one trailing dot dropped", "user@example.com..", ADDR_OK, "user@example.com."},
    {"dot in local part kept", "first.last.@example.com", ADDR_OK, "first.last.@example.com"},
    {"source route one hop", "<@relay.example:user@example.com>", ADDR_OK, "user@example.com"},
    {"source route two hops", "<@relay1,@Relay2.example:User@Example.com>", ADDR_OK, "user@example.com"},
    {"source route without brackets", "@relay:user@example.com", ADDR_OK, "user@example.com"},
    {"source route to nobody", "<@relay:>", ADDR_INVALID, NULL},
    {"at sign first without route", "@example.com", ADDR_OK, "@example.com"},
    {"no domain", "<Postmaster>", ADDR_OK, "postmaster"},
    {"quoted local part", "<\"John Doe\"@Example.com>", ADDR_OK, "\"john doe\"@example.com"},
    {"quoted local part with brackets", "\"a<b>c\"@example.com", ADDR_OK, "\"a<b>c\"@example.com"},
    {"quoted local part with at sign", "\"a@b\"@Example.com", ADDR_OK, "\"a@b\"@example.com"},
    {"quoted escaped quote", "\"a\\\"b\"@example.com", ADDR_OK, "\"a\\\"b\"@example.com"},
    {"quoted local part with colon after route", "<@r:\"x:y\"@d.example>", ADDR_OK, "\"x:y\"@d.example"},
    {"utf8 passes unchanged", "<\xc3\x9cser@Ex\xc3\xa4mple.com>", ADDR_OK, "\xc3\x9cser@ex\xc3\xa4mple.com"},
    {"extension kept", "Trap+Tag@example.com", ADDR_OK, "trap+tag@example.com"},
    {"null sender brackets", "<>", ADDR_NULL, ""},
    {"null sender empty", "", ADDR_NULL, ""},
    {"null sender blanks", "   ", ADDR_NULL, ""},
    {"null sender blanks inside brackets", "< >", ADDR_NULL, ""},
    {"blanks inside brackets", "< user@example.com >", ADDR_OK, "user@example.com"},
    {"unterminated quote", "\"abc@example.com", ADDR_INVALID, NULL},
    {"open bracket only", "<user@example.com", ADDR_INVALID, NULL},
    {"close bracket only", "user@example.com>", ADDR_INVALID, NULL},
    {"double brackets", "<<user@example.com>>", ADDR_INVALID, NULL},
    {"lone open bracket", "<", ADDR_INVALID, NULL},
    {"lone close bracket", ">", ADDR_INVALID, NULL},
    {"bracket inside", "us<er@example.com", ADDR_INVALID, NULL},
    {"carriage return", "user\r@example.com", ADDR_INVALID, NULL},
    {"newline", "<user@example.com>\n", ADDR_INVALID, NULL},
    {"tab inside", "us\ter@example.com", ADDR_INVALID, NULL},
    {"delete character", "user\x7f@example.com", ADDR_INVALID, NULL},
    {"escape character", "\x1b[1muser@example.com", ADDR_INVALID, NULL},
};

static void test_norm_case(void **state)
{
	const struct norm_case *c = *state;
	char out[ADDR_MAX];

	memset(out, 'x', sizeof(out));
	assert_int_equal(addr_normalise(c->in, strlen(c->in), out, sizeof(out)), c->status);
	if (c->status == ADDR_INVALID)
		assert_string_equal(out, "");
	else
		assert_string_equal(out, c->out);
}

/* ---- normalisation limits: lengths that a table of literals cannot hold ---- */

static char *make_address(size_t local_len, const char *domain)
{
	char *s = malloc(local_len + strlen(domain) + 2);

	assert_non_null(s);
	memset(s, 'a', local_len);
	sprintf(s + local_len, "@%s", domain);
	return s;
}

static void test_norm_longest_accepted(void **state)
{
	char out[ADDR_MAX];
	char *s = make_address(ADDR_MAX - 1 - strlen("@example.com"), "example.com");

	(void)state;
	assert_int_equal(strlen(s), ADDR_MAX - 1);
	assert_int_equal(addr_normalise(s, strlen(s), out, sizeof(out)), ADDR_OK);
	assert_string_equal(out, s);
	free(s);
}

static void test_norm_overlong(void **state)
{
	char out[ADDR_MAX];
	char *s = make_address(ADDR_MAX - strlen("@example.com"), "example.com");

	(void)state;
	assert_int_equal(strlen(s), ADDR_MAX);
	assert_int_equal(addr_normalise(s, strlen(s), out, sizeof(out)), ADDR_INVALID);
	assert_string_equal(out, "");
	free(s);
}

static void test_norm_huge_input(void **state)
{
	char out[ADDR_MAX];
	char *s = make_address(100000, "example.com");

	(void)state;
	assert_int_equal(addr_normalise(s, strlen(s), out, sizeof(out)), ADDR_INVALID);
	free(s);
}

static void test_norm_long_route_short_result(void **state)
{
	char out[ADDR_MAX];
	char in[900];

	(void)state;
	/* The route is dropped, so a long route with a short mailbox is fine. */
	memset(in, 'r', sizeof(in));
	in[0] = '<';
	in[1] = '@';
	strcpy(in + 700, ":user@example.com>");
	assert_int_equal(addr_normalise(in, strlen(in), out, sizeof(out)), ADDR_OK);
	assert_string_equal(out, "user@example.com");
}

static void test_norm_small_output(void **state)
{
	char out[8];

	(void)state;
	assert_int_equal(addr_normalise("user@example.com", 16, out, sizeof(out)), ADDR_INVALID);
	assert_string_equal(out, "");
	assert_int_equal(addr_normalise("a@b.c", 5, out, sizeof(out)), ADDR_OK);
	assert_string_equal(out, "a@b.c");
}

static void test_norm_embedded_nul(void **state)
{
	char out[ADDR_MAX];
	static const char in[] = "user@exa\0mple.com";

	(void)state;
	assert_int_equal(addr_normalise(in, sizeof(in) - 1, out, sizeof(out)), ADDR_INVALID);
}

static void test_norm_respects_inlen(void **state)
{
	char out[ADDR_MAX];

	(void)state;
	assert_int_equal(addr_normalise("<user@example.com>garbage", 18, out, sizeof(out)), ADDR_OK);
	assert_string_equal(out, "user@example.com");
	assert_int_equal(addr_normalise(NULL, 0, out, sizeof(out)), ADDR_NULL);
}

/* ---- addr_strip_extension ---- */

struct ext_case {
	const char *name;
	const char *addr;
	const char *delimiters;
	bool removed;
	const char *out;
};

static struct ext_case ext_cases[] = {
    {"plus tag", "trap+tag@example.com", "+", true, "trap@example.com"},
    {"no extension", "trap@example.com", "+", false, "trap@example.com"},
    {"empty extension", "trap+@example.com", "+", true, "trap@example.com"},
    {"first of several", "a+b+c@example.com", "+", true, "a@example.com"},
    {"dash with multi-char set", "trap-tag@example.com", "+-", true, "trap@example.com"},
    {"plus with multi-char set", "trap+tag@example.com", "+-", true, "trap@example.com"},
    {"earliest delimiter wins plus first", "trap+a-b@example.com", "+-", true, "trap@example.com"},
    {"earliest delimiter wins dash first", "trap-a+b@example.com", "+-", true, "trap@example.com"},
    {"delimiter not in set", "trap-tag@example.com", "+", false, "trap-tag@example.com"},
    {"no delimiters", "trap+tag@example.com", "", false, "trap+tag@example.com"},
    {"null delimiters", "trap+tag@example.com", NULL, false, "trap+tag@example.com"},
    {"leading delimiter kept", "+tag@example.com", "+", false, "+tag@example.com"},
    {"delimiter in domain only", "trap@ex+ample.com", "+", false, "trap@ex+ample.com"},
    {"no domain", "trap+tag", "+", true, "trap"},
    {"owner- not split", "owner-list@example.com", "-", false, "owner-list@example.com"},
    {"owner- not split on plus either", "owner-list+x@example.com", "+-", false, "owner-list+x@example.com"},
    {"-request not split", "list-request@example.com", "-", false, "list-request@example.com"},
    {"owner- split without dash delimiter", "owner-list+x@example.com", "+", true, "owner-list@example.com"},
    {"quoted local part kept", "\"a+b\"@example.com", "+", false, "\"a+b\"@example.com"},
};

static void test_ext_case(void **state)
{
	const struct ext_case *c = *state;
	char out[ADDR_MAX];

	assert_int_equal(addr_strip_extension(c->addr, c->delimiters, out, sizeof(out)), c->removed);
	assert_string_equal(out, c->out);
}

static void test_ext_small_output(void **state)
{
	char out[5];

	(void)state;
	/* A truncated address could name a different mailbox: out is emptied. */
	assert_false(addr_strip_extension("trap@example.com", "+", out, sizeof(out)));
	assert_string_equal(out, "");
	assert_true(addr_strip_extension("a+bcdefgh@b", "+", out, sizeof(out)));
	assert_string_equal(out, "a@b");
}

/* ---- addr_domain ---- */

struct domain_case {
	const char *name;
	const char *addr;
	const char *domain; /* NULL: none */
};

static struct domain_case domain_cases[] = {
    {"simple", "user@example.com", "example.com"},
    {"no at sign", "postmaster", NULL},
    {"empty domain", "user@", NULL},
    {"quoted at sign", "\"a@b\"@example.com", "example.com"},
    {"null sender", "", NULL},
};

static void test_domain_case(void **state)
{
	const struct domain_case *c = *state;
	const char *d = addr_domain(c->addr);

	if (c->domain == NULL)
		assert_null(d);
	else
		assert_string_equal(d, c->domain);
}

/* ---- addr_domain_normalise and addr_entry_normalise: list entries ---- */

struct entry_case {
	const char *name;
	const char *in;
	const char *out; /* NULL: refused */
};

static struct entry_case domain_norm_cases[] = {
    {"plain", "example.org", "example.org"},
    {"at sign and case", "@Example.ORG", "example.org"},
    {"one trailing dot dropped", "example.org.", "example.org"},
    {"two trailing dots", "example.org..", NULL}, /* found by fuzz_addr */
    {"leading dot", ".example.org", NULL},
    {"only a dot", ".", NULL},
    {"blank", "bad domain.example", NULL},
    {"at sign inside", "a@b.example", NULL},
};

static void test_domain_norm_case(void **state)
{
	const struct entry_case *c = *state;
	char out[ADDR_DOMAIN_MAX + 1];
	bool ok = addr_domain_normalise(c->in, out, sizeof(out));

	assert_int_equal(ok, c->out != NULL);
	if (ok)
		assert_string_equal(out, c->out);
}

static struct entry_case entry_cases[] = {
    {"plain", "Trap@Example.COM", "trap@example.com"},
    {"brackets and one trailing dot", "<trap@example.com.>", "trap@example.com"},
    {"source route", "<@relay:trap@example.com>", "trap@example.com"},
    {"quoted local part", "\"a b\"@example.com", "\"a b\"@example.com"},
    {"no domain", "trap@", NULL},
    {"no local part", "@example.com", NULL},
    {"no at sign", "postmaster", NULL},
    /* Normal forms that normalise to something else: no envelope address could hit them (fuzz_lists). */
    {"two trailing dots", "trap@example.com..", NULL},
    {"blank before the dropped dot", "l@ .", NULL},
    {"blank after a source route", "<@relay: trap@example.com>", NULL},
};

static void test_entry_case(void **state)
{
	const struct entry_case *c = *state;
	char out[ADDR_MAX];
	bool ok = addr_entry_normalise(c->in, out, sizeof(out));

	assert_int_equal(ok, c->out != NULL);
	if (ok)
		assert_string_equal(out, c->out);
}

/* ---- addr_ip_parse ---- */

struct ip_case {
	const char *name;
	const char *in;
	bool ok;
	int version;
	const char *text; /* canonical form of the parsed address; NULL: not checked */
};

static struct ip_case ip_cases[] = {
    {"ipv4", "192.0.2.7", true, 4, "192.0.2.7"},
    {"ipv4 bracketed", "[192.0.2.7]", true, 4, "192.0.2.7"},
    {"ipv4 zero", "0.0.0.0", true, 4, "0.0.0.0"},
    {"ipv4 broadcast", "255.255.255.255", true, 4, "255.255.255.255"},
    {"ipv6", "2001:db8::1", true, 6, "2001:db8::1"},
    {"ipv6 uppercase", "2001:DB8::A", true, 6, "2001:db8::a"},
    {"ipv6 full form", "2001:0db8:0000:0000:0000:0000:0000:0001", true, 6, "2001:db8::1"},
    {"ipv6 loopback", "::1", true, 6, "::1"},
    {"ipv6 unspecified", "::", true, 6, "::"},
    {"ipv6 prefix", "IPv6:2001:db8::1", true, 6, "2001:db8::1"},
    {"ipv6 prefix lowercase", "ipv6:2001:db8::1", true, 6, "2001:db8::1"},
    {"ipv6 literal", "[IPv6:2001:db8::1]", true, 6, "2001:db8::1"},
    {"ipv6 bracketed", "[2001:db8::1]", true, 6, "2001:db8::1"},
    {"ipv4-mapped", "::ffff:192.0.2.1", true, 4, "192.0.2.1"},
    {"ipv4-mapped hex", "::ffff:c000:201", true, 4, "192.0.2.1"},
    {"ipv4-mapped literal", "[IPv6:::ffff:192.0.2.1]", true, 4, "192.0.2.1"},
    {"ipv4-compatible stays ipv6", "::c000:201", true, 6, NULL},
    {"ipv6 prefix with ipv4", "IPv6:192.0.2.1", false, 0, NULL},
    {"unknown", "unknown", false, 0, NULL},
    {"empty", "", false, 0, NULL},
    {"empty brackets", "[]", false, 0, NULL},
    {"three octets", "192.0.2", false, 0, NULL},
    {"octet too big", "192.0.2.256", false, 0, NULL},
    {"five octets", "192.0.2.1.5", false, 0, NULL},
    {"unbalanced bracket", "[192.0.2.7", false, 0, NULL},
    {"leading blank", " 192.0.2.7", false, 0, NULL},
    {"zone index", "fe80::1%eth0", false, 0, NULL},
    {"with prefix", "2001:db8::1/64", false, 0, NULL},
    {"two double colons", "2001::db8::1", false, 0, NULL},
    {"hostname", "mail.example.com", false, 0, NULL},
    {"overlong", "0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0001", false, 0,
     NULL},
};

static void test_ip_case(void **state)
{
	const struct ip_case *c = *state;
	addr_ip ip;
	addr_net host;
	char text[ADDR_NET_STRLEN];
	static const uint8_t zero[12];

	assert_int_equal(addr_ip_parse(c->in, &ip), c->ok);
	if (!c->ok)
		return;
	assert_int_equal(ip.version, c->version);
	if (ip.version == 4) /* unused bytes are zero, so structs compare and hash alike */
		assert_memory_equal(ip.bytes + 4, zero, sizeof(zero));
	if (c->text == NULL)
		return;
	host = addr_net_of(&ip, 128);
	addr_net_format(&host, text, sizeof(text));
	assert_string_equal(text, c->text);
}

static void test_ip_mapped_equals_ipv4(void **state)
{
	addr_ip a, b;

	(void)state;
	assert_true(addr_ip_parse("::ffff:198.51.100.9", &a));
	assert_true(addr_ip_parse("198.51.100.9", &b));
	assert_memory_equal(&a, &b, sizeof(a));
}

/* ---- addr_net_parse and addr_net_format ---- */

struct net_case {
	const char *name;
	const char *in;
	bool ok;
	const char *text; /* canonical form when ok, else a substring of the error */
};

static struct net_case net_cases[] = {
    {"ipv4 /24", "192.0.2.0/24", true, "192.0.2.0/24"},
    {"ipv4 /8", "10.0.0.0/8", true, "10.0.0.0/8"},
    {"ipv4 /0", "0.0.0.0/0", true, "0.0.0.0/0"},
    {"ipv4 /31", "192.0.2.6/31", true, "192.0.2.6/31"},
    {"ipv4 /25 odd", "192.0.2.128/25", true, "192.0.2.128/25"},
    {"ipv4 host bare", "192.0.2.7", true, "192.0.2.7"},
    {"ipv4 host /32", "192.0.2.7/32", true, "192.0.2.7"},
    {"ipv4 leading zero length", "192.0.2.0/024", true, "192.0.2.0/24"},
    {"ipv6 /32", "2001:db8::/32", true, "2001:db8::/32"},
    {"ipv6 long spelling", "2001:0DB8:0000:0000::/64", true, "2001:db8::/64"},
    {"ipv6 /0", "::/0", true, "::/0"},
    {"ipv6 /127", "2001:db8::2/127", true, "2001:db8::2/127"},
    {"ipv6 host bare", "2001:db8::1", true, "2001:db8::1"},
    {"ipv6 host /128", "2001:db8::1/128", true, "2001:db8::1"},
    {"ipv6 rfc5952 single zero field", "2001:db8:0:1:1:1:1:1", true, "2001:db8:0:1:1:1:1:1"},
    {"ipv6 rfc5952 first longest run", "2001:db8:0:0:1:0:0:1", true, "2001:db8::1:0:0:1"},
    {"ipv6 rfc5952 longest run wins", "2001:0:0:1:0:0:0:1", true, "2001:0:0:1::1"},
    {"ipv6 bracketed", "[2001:db8::]/48", true, "2001:db8::/48"},
    {"ipv6 prefix form", "IPv6:2001:db8::/48", true, "2001:db8::/48"},
    {"ipv4-mapped network", "::ffff:192.0.2.0/120", true, "192.0.2.0/24"},
    {"ipv4-mapped host", "::ffff:192.0.2.7", true, "192.0.2.7"},
    {"ipv4-mapped /96", "::ffff:0.0.0.0/96", true, "0.0.0.0/0"},
    {"ipv4 host bits", "192.0.2.1/24", false,
     "host bits set below the /24 prefix (did you mean 192.0.2.0/24?)"},
    {"ipv4 host bits /0", "10.0.0.0/0", false, "did you mean 0.0.0.0/0?"},
    {"ipv6 host bits", "2001:db8::1/64", false, "did you mean 2001:db8::/64?"},
    {"ipv6 host bits /127", "2001:db8::3/127", false, "did you mean 2001:db8::2/127?"},
    {"ipv4 length 33", "192.0.2.0/33", false, "prefix length 33 is out of range for IPv4 (0..32)"},
    {"ipv6 length 129", "2001:db8::/129", false, "prefix length 129 is out of range for IPv6 (0..128)"},
    {"empty length", "192.0.2.0/", false, "bad prefix length"},
    {"negative length", "192.0.2.0/-1", false, "bad prefix length"},
    {"blank in length", "192.0.2.0/ 24", false, "bad prefix length"},
    {"four digit length", "192.0.2.0/0024", false, "bad prefix length"},
    {"trailing garbage", "192.0.2.0/24x", false, "bad prefix length"},
    {"two slashes", "192.0.2.0/24/8", false, "bad prefix length"},
    {"hostname", "example.org", false, "is not an IP address or network"},
    {"empty", "", false, "is not an IP address or network"},
    {"length only", "/24", false, "is not an IP address or network"},
    {"bad address", "192.0.2.300/24", false, "is not an IP address or network"},
};

static void test_net_case(void **state)
{
	const struct net_case *c = *state;
	addr_net net;
	char err[256] = "";
	char text[ADDR_NET_STRLEN];

	assert_int_equal(addr_net_parse(c->in, &net, err, sizeof(err)), c->ok);
	if (!c->ok) {
		if (strstr(err, c->text) == NULL)
			fail_msg("error '%s' does not contain '%s'", err, c->text);
		return;
	}
	addr_net_format(&net, text, sizeof(text));
	assert_string_equal(text, c->text);
}

static void test_net_format_longest(void **state)
{
	addr_net net;
	char err[128];
	char text[ADDR_NET_STRLEN];

	(void)state;
	assert_true(addr_net_parse("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127", &net, err, sizeof(err)));
	addr_net_format(&net, text, sizeof(text));
	assert_string_equal(text, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127");
	assert_true(strlen(text) < ADDR_NET_STRLEN);
}

static uint32_t xorshift(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

/* What addr_net_format wrote before it had its own formatter: inet_ntop, and the length after '/'. */
static void reference_format(const addr_net *net, char *out, size_t outlen)
{
	char text[INET6_ADDRSTRLEN];
	unsigned bits = net->ip.version == 4 ? 32 : 128;

	assert_non_null(
	    inet_ntop(net->ip.version == 4 ? AF_INET : AF_INET6, net->ip.bytes, text, sizeof(text)));
	if (net->prefix < bits)
		snprintf(out, outlen, "%s/%u", text, (unsigned)net->prefix);
	else
		snprintf(out, outlen, "%s", text);
}

/*
 * Random IPv6 addresses: each group zero with probability 3/8, so zero
 * runs of every length and place, ties among them included; one in four
 * with the first 80 bits zero, so that ::ffff:0:0/96 and ::/96 (the
 * dotted forms) come up often.
 */
static void random_ipv6(uint32_t *x, addr_ip *ip)
{
	memset(ip, 0, sizeof(*ip));
	ip->version = 6;
	for (int i = 0; i < 8; i++) {
		uint32_t r = xorshift(x);
		unsigned g = (r & 7) < 3 ? 0 : (r >> 8) & (0xffffu >> (4 * ((r >> 4) & 3)));

		ip->bytes[2 * i] = (uint8_t)(g >> 8);
		ip->bytes[2 * i + 1] = (uint8_t)g;
	}
	if ((xorshift(x) & 3) == 0) {
		memset(ip->bytes, 0, 10);
		if (*x & 4)
			ip->bytes[10] = ip->bytes[11] = 0xff;
	}
}

/* Every prefix length of random networks gives the text inet_ntop gave, and its length. */
static void test_net_format_matches_inet_ntop(void **state)
{
	uint32_t x = 2463534242u;
	char got[ADDR_NET_STRLEN], want[ADDR_NET_STRLEN];

	(void)state;
	for (int n = 0; n < 20000; n++) {
		addr_ip ip = {.version = 4};

		if (n % 4 == 0)
			memcpy(ip.bytes, &(uint32_t){xorshift(&x)}, 4);
		else
			random_ipv6(&x, &ip);
		for (unsigned len = 0; len <= (ip.version == 4 ? 32u : 128u); len++) {
			addr_net net = addr_net_of(&ip, len);

			reference_format(&net, want, sizeof(want));
			assert_int_equal(addr_net_format(&net, got, sizeof(got)), strlen(want));
			if (strcmp(got, want) != 0)
				fail_msg("/%u: \"%s\", expected \"%s\"", len, got, want);
		}
	}
}

/* A short buffer gets the text cut as snprintf cuts it, and the whole length. */
static void test_net_format_small_output(void **state)
{
	addr_net net;
	char err[128], want[ADDR_NET_STRLEN], got[ADDR_NET_STRLEN];
	static const char *const nets[] = {"2001:db8:0:1::/64", "::1.2.3.0/120", "192.0.2.0/24",
	                                   "::192.0.2.1"};

	(void)state;
	for (size_t i = 0; i < sizeof(nets) / sizeof(nets[0]); i++) {
		size_t full = strlen(nets[i]); /* each written in its canonical form */

		assert_true(addr_net_parse(nets[i], &net, err, sizeof(err)));
		for (size_t outlen = 0; outlen <= full + 1; outlen++) {
			memset(got, 'x', sizeof(got));
			snprintf(want, outlen, "%s", nets[i]);
			assert_int_equal(addr_net_format(&net, got, outlen), full);
			if (outlen > 0)
				assert_string_equal(got, want);
			else
				assert_int_equal(got[0], 'x');
		}
	}
}

/* ---- containment ---- */

struct contains_case {
	const char *name;
	const char *net;
	const char *ip;
	bool inside;
};

static struct contains_case contains_cases[] = {
    {"ipv4 /24 inside", "192.0.2.0/24", "192.0.2.255", true},
    {"ipv4 /24 first", "192.0.2.0/24", "192.0.2.0", true},
    {"ipv4 /24 next net", "192.0.2.0/24", "192.0.3.0", false},
    {"ipv4 /24 previous net", "192.0.2.0/24", "192.0.1.255", false},
    {"ipv4 /0 everything", "0.0.0.0/0", "203.0.113.9", true},
    {"ipv4 /0 not ipv6", "0.0.0.0/0", "2001:db8::1", false},
    {"ipv4 /32 itself", "192.0.2.7", "192.0.2.7", true},
    {"ipv4 /32 neighbour", "192.0.2.7", "192.0.2.6", false},
    {"ipv4 /12 inside", "172.16.0.0/12", "172.31.255.255", true},
    {"ipv4 /12 outside", "172.16.0.0/12", "172.32.0.0", false},
    {"ipv4 mapped client", "10.0.0.0/8", "::ffff:10.1.2.3", true},
    {"ipv6 /0 everything", "::/0", "2001:db8::1", true},
    {"ipv6 /0 not ipv4", "::/0", "192.0.2.1", false},
    {"ipv6 /32 inside", "2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true},
    {"ipv6 /32 outside", "2001:db8::/32", "2001:db9::", false},
    {"ipv6 /64 inside", "2001:db8:1:2::/64", "2001:db8:1:2:abcd::1", true},
    {"ipv6 /64 outside", "2001:db8:1:2::/64", "2001:db8:1:3::1", false},
    {"ipv6 /128 itself", "2001:db8::1/128", "2001:db8::1", true},
    {"ipv6 /128 neighbour", "2001:db8::1/128", "2001:db8::2", false},
    {"ipv6 /127 pair", "2001:db8::2/127", "2001:db8::3", true},
    {"ipv6 literal client", "2001:db8::/32", "[IPv6:2001:db8::5]", true},
};

static void test_contains_case(void **state)
{
	const struct contains_case *c = *state;
	addr_net net;
	addr_ip ip;
	char err[128];

	assert_true(addr_net_parse(c->net, &net, err, sizeof(err)));
	assert_true(addr_ip_parse(c->ip, &ip));
	assert_int_equal(addr_net_contains(&net, &ip), c->inside);
}

/* Flip bit number `bit` (0 = most significant) of ip. */
static addr_ip flip_bit(addr_ip ip, unsigned bit)
{
	ip.bytes[bit / 8] ^= (uint8_t)(0x80 >> (bit % 8));
	return ip;
}

/* At every prefix length: the net of ip contains ip and every change below the prefix, nothing above. */
static void check_all_lengths(const char *text, unsigned bits)
{
	addr_ip ip;

	assert_true(addr_ip_parse(text, &ip));
	for (unsigned len = 0; len <= bits; len++) {
		addr_net net = addr_net_of(&ip, len);

		assert_int_equal(net.prefix, len);
		assert_true(addr_net_contains(&net, &ip));
		if (len > 0)
			assert_false(addr_net_contains(&net, (addr_ip[]){flip_bit(ip, len - 1)}));
		if (len < bits)
			assert_true(addr_net_contains(&net, (addr_ip[]){flip_bit(ip, len)}));
		if (len < bits)
			assert_true(addr_net_contains(&net, (addr_ip[]){flip_bit(ip, bits - 1)}));
	}
}

static void test_contains_every_ipv4_length(void **state)
{
	(void)state;
	check_all_lengths("203.0.113.77", 32);
	check_all_lengths("255.255.255.255", 32);
}

static void test_contains_every_ipv6_length(void **state)
{
	(void)state;
	check_all_lengths("2001:db8:1234:5678:9abc:def0:1357:9bdf", 128);
	check_all_lengths("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 128);
}

static void test_net_of_clamps_and_masks(void **state)
{
	addr_ip ip;
	addr_net net;
	char text[ADDR_NET_STRLEN];

	(void)state;
	assert_true(addr_ip_parse("192.0.2.77", &ip));
	net = addr_net_of(&ip, 64);
	assert_int_equal(net.prefix, 32);
	net = addr_net_of(&ip, 26);
	addr_net_format(&net, text, sizeof(text));
	assert_string_equal(text, "192.0.2.64/26");
	assert_true(addr_ip_parse("2001:db8:aaaa:bbbb:cccc::1", &ip));
	net = addr_net_of(&ip, 52);
	addr_net_format(&net, text, sizeof(text));
	assert_string_equal(text, "2001:db8:aaaa:b000::/52");
}

/* ---- addr_hostport_parse ---- */

struct hostport_case {
	const char *name;
	const char *in;
	bool ok;
	uint8_t version;
	const char *ip;  /* canonical text when ok */
	unsigned port;   /* when ok */
	const char *err; /* substring of the reason when not ok */
};

static struct hostport_case hostport_cases[] = {
    {"ipv4", "127.0.0.1:10666", true, 4, "127.0.0.1", 10666, NULL},
    {"ipv4 any", "0.0.0.0:1", true, 4, "0.0.0.0", 1, NULL},
    {"highest port", "192.0.2.1:65535", true, 4, "192.0.2.1", 65535, NULL},
    {"leading zeros in the port", "192.0.2.1:00080", true, 4, "192.0.2.1", 80, NULL},
    {"ipv6", "[::1]:10666", true, 6, "::1", 10666, NULL},
    {"ipv6 any", "[::]:10667", true, 6, "::", 10667, NULL},
    {"ipv6 long form", "[2001:0db8:0:0::1]:25", true, 6, "2001:db8::1", 25, NULL},
    {"ipv4-mapped stays ipv6", "[::ffff:127.0.0.1]:10666", true, 6, "::ffff:127.0.0.1", 10666, NULL},
    {"port 0", "127.0.0.1:0", false, 0, NULL, 0, "port must be 1 to 65535"},
    {"port 00000", "127.0.0.1:00000", false, 0, NULL, 0, "port must be 1 to 65535"},
    {"port over 65535", "[::1]:65536", false, 0, NULL, 0, "port must be 1 to 65535"},
    {"port of six digits", "127.0.0.1:100000", false, 0, NULL, 0, "port must be 1 to 65535"},
    {"signed port", "127.0.0.1:+80", false, 0, NULL, 0, "port must be 1 to 65535"},
    {"port with a blank", "127.0.0.1:80 ", false, 0, NULL, 0, "port must be 1 to 65535"},
    {"empty port", "127.0.0.1:", false, 0, NULL, 0, "port must be 1 to 65535"},
    {"no port", "127.0.0.1", false, 0, NULL, 0, "no :PORT"},
    {"ipv6 without port", "[::1]", false, 0, NULL, 0, "no :PORT"},
    {"ipv6 without brackets", "::1:10666", false, 0, NULL, 0, "goes in brackets"},
    {"host name", "localhost:10666", false, 0, NULL, 0, "host names are not accepted"},
    {"ipv4 in brackets", "[127.0.0.1]:10666", false, 0, NULL, 0, "is not an IPv6 address"},
    {"ipv6 prefix form", "[IPv6:::1]:10666", false, 0, NULL, 0, "is not an IPv6 address"},
    {"empty host", ":10666", false, 0, NULL, 0, "no IP address"},
    {"empty brackets", "[]:10666", false, 0, NULL, 0, "no IP address"},
    {"unbalanced bracket", "[::1:10666", false, 0, NULL, 0, "goes in brackets"},
    {"blank before", " 127.0.0.1:10666", false, 0, NULL, 0, "not an IPv4 address"},
    {"unix path", "unix:/run/x.sock", false, 0, NULL, 0, "not an IPv4 address"},
    {"empty", "", false, 0, NULL, 0, "no :PORT"},
    {"null", NULL, false, 0, NULL, 0, "no :PORT"},
};

static void test_hostport_case(void **state)
{
	const struct hostport_case *c = *state;
	char err[128] = "", text[ADDR_NET_STRLEN];
	addr_ip ip;
	addr_net host;
	uint16_t port = 0;
	bool ok = addr_hostport_parse(c->in, &ip, &port, err, sizeof(err));

	if (ok != c->ok)
		fail_msg("'%s': %s (%s)", c->in ? c->in : "(null)", ok ? "accepted" : "refused", err);
	if (!ok) {
		if (strstr(err, c->err) == NULL)
			fail_msg("'%s': reason \"%s\", expected \"%s\"", c->in ? c->in : "(null)", err,
			         c->err);
		return;
	}
	assert_int_equal(ip.version, c->version);
	assert_int_equal(port, c->port);
	host = addr_net_of(&ip, 128);
	addr_net_format(&host, text, sizeof(text));
	assert_string_equal(text, c->ip);
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest limits[] = {
	    cmocka_unit_test(test_norm_longest_accepted),
	    cmocka_unit_test(test_norm_overlong),
	    cmocka_unit_test(test_norm_huge_input),
	    cmocka_unit_test(test_norm_long_route_short_result),
	    cmocka_unit_test(test_norm_small_output),
	    cmocka_unit_test(test_norm_embedded_nul),
	    cmocka_unit_test(test_norm_respects_inlen),
	    cmocka_unit_test(test_ext_small_output),
	    cmocka_unit_test(test_ip_mapped_equals_ipv4),
	    cmocka_unit_test(test_net_format_longest),
	    cmocka_unit_test(test_net_format_matches_inet_ntop),
	    cmocka_unit_test(test_net_format_small_output),
	    cmocka_unit_test(test_contains_every_ipv4_length),
	    cmocka_unit_test(test_contains_every_ipv6_length),
	    cmocka_unit_test(test_net_of_clamps_and_masks),
	};

	RUN_TABLE("addr_normalise", norm_cases, test_norm_case, failed);
	RUN_TABLE("addr_strip_extension", ext_cases, test_ext_case, failed);
	RUN_TABLE("addr_domain", domain_cases, test_domain_case, failed);
	RUN_TABLE("addr_domain_normalise", domain_norm_cases, test_domain_norm_case, failed);
	RUN_TABLE("addr_entry_normalise", entry_cases, test_entry_case, failed);
	RUN_TABLE("addr_ip_parse", ip_cases, test_ip_case, failed);
	RUN_TABLE("addr_net_parse", net_cases, test_net_case, failed);
	RUN_TABLE("addr_net_contains", contains_cases, test_contains_case, failed);
	RUN_TABLE("addr_hostport_parse", hostport_cases, test_hostport_case, failed);
	failed += cmocka_run_group_tests_name("addr_limits", limits, NULL, NULL);
	return failed;
}
