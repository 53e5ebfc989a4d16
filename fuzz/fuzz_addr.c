/*
 * libFuzzer target for core/addr. Byte 0 picks a small output size and the
 * recipient delimiters, byte 1 a prefix length and, with byte 2 on, raw
 * address bytes; the rest is the text every parser gets: addr_normalise
 * (the bytes as they are, NULs included), addr_strip_extension,
 * addr_domain_normalise, addr_ip_parse, addr_net_parse,
 * addr_hostport_parse. Invariants checked beyond "no crash":
 *
 * - every output is NUL-terminated inside its buffer, "" when refused;
 * - a normalised address is lowercase ASCII without control characters;
 *   it is the same with a smaller buffer when it fits, with the input in
 *   angle brackets, and with the input in upper case;
 * - addr_entry_normalise accepts exactly the normalised addresses with a
 *   local part and a domain that normalise to themselves;
 * - a removed extension starts at the first delimiter of the local part
 *   and the rest of the address is kept byte for byte;
 * - a normalised domain D is what addr_domain() finds in "x@D" (so a trap
 *   or whitelisted domain matches mail to it) and normalises to itself;
 * - a parsed IP or network formats to the text inet_ntop writes (for a
 *   host) and re-parses to the same value, also in [brackets] and as
 *   "IPv6:..."; an IPv4-mapped network of /96 or longer comes back as IPv4;
 *   a cut addr_net_format keeps the start of the text and its full length;
 * - a network has no host bits and contains its own address;
 * - a parsed "HOST:PORT" formats and re-parses to the same address and port.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ERR_MAX 200

static const char *const delimiter_sets[] = {"", "+", "-", "+-", "=._", "\"@"};

static bool is_upper(char c)
{
	return c >= 'A' && c <= 'Z';
}

/* addr_normalise into a buffer of exactly outlen bytes (ASan sees any write past it). */
static addr_status normalise(const char *in, size_t inlen, char *copy, size_t outlen)
{
	char *out = malloc(outlen);
	addr_status st;

	CHECK(out != NULL);
	memset(out, 'x', outlen);
	st = addr_normalise(in, inlen, out, outlen);
	CHECK(st == ADDR_OK || st == ADDR_NULL || st == ADDR_INVALID);
	CHECK_TERMINATED(out, outlen);
	CHECK(st == ADDR_OK || out[0] == '\0');
	strcpy(copy, out);
	free(out);
	return st;
}

static void check_normal_form(const char *norm)
{
	size_t len = strlen(norm);

	CHECK(len > 0 && len < ADDR_MAX);
	for (size_t i = 0; i < len; i++)
		CHECK(!is_upper(norm[i]) && (unsigned char)norm[i] >= 0x20 && norm[i] != 0x7f);
}

/* "<" + trimmed input + ">" and the upper-case input normalise alike. */
static void check_equivalent_spellings(const char *in, size_t inlen, addr_status st, const char *norm)
{
	char *alt = malloc(inlen + 3), other[ADDR_MAX];
	size_t start = 0, end = inlen;

	CHECK(alt != NULL);
	for (size_t i = 0; i < inlen; i++)
		alt[i] = is_upper(in[i])                  ? in[i]
		         : (in[i] >= 'a' && in[i] <= 'z') ? (char)(in[i] - 32)
		                                          : in[i];
	CHECK(normalise(alt, inlen, other, ADDR_MAX) == st && strcmp(other, norm) == 0);
	while (start < end && (in[start] == ' ' || in[start] == '\t'))
		start++;
	while (end > start && (in[end - 1] == ' ' || in[end - 1] == '\t'))
		end--;
	if (st != ADDR_INVALID && end - start <= 2 * ADDR_MAX && (start == end || in[start] != '<')) {
		alt[0] = '<';
		memcpy(alt + 1, in + start, end - start);
		alt[end - start + 1] = '>';
		CHECK(normalise(alt, end - start + 2, other, ADDR_MAX) == st && strcmp(other, norm) == 0);
	}
	free(alt);
}

static void check_normalise(const char *in, size_t inlen, size_t smalllen)
{
	char norm[ADDR_MAX], small[ADDR_MAX];
	addr_status st = normalise(in, inlen, norm, ADDR_MAX), st2;
	size_t len = strlen(norm);

	if (st == ADDR_OK)
		check_normal_form(norm);
	/* The size check is on the text before a trailing dot is dropped: one byte of slack. */
	st2 = normalise(in, inlen, small, smalllen);
	if (st != ADDR_OK)
		CHECK(st2 == st);
	else if (len + 1 < smalllen)
		CHECK(st2 == ADDR_OK);
	else if (len >= smalllen)
		CHECK(st2 == ADDR_INVALID);
	CHECK(st2 != ADDR_OK || strcmp(small, norm) == 0);
	check_equivalent_spellings(in, inlen, st, norm);
}

/* addr_strip_extension into exactly outlen bytes; returns its result, out copied to copy. */
static bool strip(const char *addr, const char *delims, char *copy, size_t outlen)
{
	char *out = malloc(outlen);
	size_t alen = strlen(addr), olen;
	bool removed;

	CHECK(out != NULL);
	removed = addr_strip_extension(addr, delims, out, outlen);
	CHECK_TERMINATED(out, outlen);
	olen = strlen(out);
	if (removed) {
		const char *at = strrchr(addr, '@');
		size_t local = at != NULL ? (size_t)(at - addr) : alen;
		size_t ext = olen - (alen - local);

		CHECK(olen < alen && ext > 0 && ext < local);
		CHECK(memcmp(out, addr, ext) == 0 && strcmp(out + ext, addr + local) == 0);
		CHECK(strchr(delims, addr[ext]) != NULL && strcspn(addr, delims) == ext);
	} else {
		CHECK(strcmp(out, addr) == 0 || alen >= outlen);
	}
	strcpy(copy, out);
	free(out);
	return removed;
}

static void check_strip_extension(const char *addr, const char *delims, size_t smalllen)
{
	size_t len = strlen(addr) + 1;
	char *big = malloc(len), *small = malloc(smalllen);
	bool r1, r2;

	CHECK(big != NULL && small != NULL);
	r1 = strip(addr, delims, big, len);
	r2 = strip(addr, delims, small, smalllen);
	if (r1 && r2)
		CHECK(strcmp(big, small) == 0);
	free(big);
	free(small);
}

/* A list entry is a normalised address with a local part and a domain that normalises to itself. */
static void check_entry(const char *s)
{
	char out[ADDR_MAX], norm[ADDR_MAX], again[ADDR_MAX];
	bool ok = addr_entry_normalise(s, out, sizeof out);
	addr_status st = normalise(s, strlen(s), norm, sizeof norm);
	bool fixed = st == ADDR_OK && normalise(norm, strlen(norm), again, sizeof again) == ADDR_OK &&
	             strcmp(again, norm) == 0;

	CHECK_TERMINATED(out, sizeof out);
	CHECK(ok == (fixed && norm[0] != '@' && addr_domain(norm) != NULL));
	CHECK(!ok || strcmp(out, norm) == 0);
}

static void check_domain(const char *s)
{
	char out[ADDR_DOMAIN_MAX + 1], again[ADDR_DOMAIN_MAX + 1], addr[ADDR_DOMAIN_MAX + 3], norm[ADDR_MAX];
	size_t len;

	if (!addr_domain_normalise(s, out, sizeof out))
		return;
	len = strlen(out);
	CHECK(len > 0 && len <= ADDR_DOMAIN_MAX && out[0] != '.');
	for (size_t i = 0; i < len; i++)
		CHECK(!is_upper(out[i]) && (unsigned char)out[i] > ' ' &&
		      strchr("@<>\",;\\", out[i]) == NULL);
	snprintf(addr, sizeof addr, "x@%s", out);
	CHECK(normalise(addr, strlen(addr), norm, sizeof norm) == ADDR_OK);
	CHECK(addr_domain(norm) != NULL && strcmp(addr_domain(norm), out) == 0);
	CHECK(addr_domain_normalise(out, again, sizeof again) && strcmp(again, out) == 0);
}

static unsigned bits_of(const addr_ip *ip)
{
	return ip->version == 4 ? 32 : 128;
}

static bool ip_equal(const addr_ip *a, const addr_ip *b)
{
	return memcmp(a, b, sizeof *a) == 0;
}

static bool net_equal(const addr_net *a, const addr_net *b)
{
	return a->prefix == b->prefix && ip_equal(&a->ip, &b->ip);
}

static bool is_v4mapped(const addr_ip *ip)
{
	static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

	return ip->version == 6 && memcmp(ip->bytes, prefix, sizeof prefix) == 0;
}

/* The text of net, checked against a cut copy; returns its length. */
static size_t format(const addr_net *net, char *text, size_t cut)
{
	char small[ADDR_NET_STRLEN];
	size_t len = addr_net_format(net, text, ADDR_NET_STRLEN);

	CHECK(len < ADDR_NET_STRLEN && strlen(text) == len);
	memset(small, 'x', sizeof small);
	CHECK(addr_net_format(net, small, cut) == len);
	if (cut > 0) {
		size_t n = len < cut ? len : cut - 1;

		CHECK(memcmp(small, text, n) == 0 && small[n] == '\0');
	} else {
		CHECK(small[0] == 'x');
	}
	return len;
}

/* A host address formats as inet_ntop writes it and re-parses to itself in every spelling. */
static void check_ip_text(const addr_ip *ip)
{
	addr_net host = addr_net_of(ip, 128);
	char text[ADDR_NET_STRLEN], ntop[INET6_ADDRSTRLEN], spelled[ADDR_NET_STRLEN + 8];
	addr_ip back;

	format(&host, text, 1 + ip->bytes[0] % ADDR_NET_STRLEN);
	CHECK(inet_ntop(ip->version == 4 ? AF_INET : AF_INET6, ip->bytes, ntop, sizeof ntop) != NULL);
	CHECK(strcmp(text, ntop) == 0);
	CHECK(addr_ip_parse(text, &back) && ip_equal(&back, ip));
	snprintf(spelled, sizeof spelled, "[%s]", text);
	CHECK(addr_ip_parse(spelled, &back) && ip_equal(&back, ip));
	if (ip->version == 6) {
		snprintf(spelled, sizeof spelled, "IPv6:%s", text);
		CHECK(addr_ip_parse(spelled, &back) && ip_equal(&back, ip));
	}
}

static void check_ip(const char *s)
{
	addr_ip ip;

	if (!addr_ip_parse(s, &ip))
		return;
	CHECK(ip.version == 4 || ip.version == 6);
	CHECK(!is_v4mapped(&ip));
	if (ip.version == 4)
		for (size_t i = 4; i < sizeof ip.bytes; i++)
			CHECK(ip.bytes[i] == 0);
	check_ip_text(&ip);
}

/* net (host bits clear) formats and re-parses to want, whose text is a fixed point. */
static void check_net_round_trip(const addr_net *net, const addr_net *want, size_t cut)
{
	char text[ADDR_NET_STRLEN], err[ERR_MAX], again[ADDR_NET_STRLEN], third[ADDR_NET_STRLEN];
	addr_net back;

	format(net, text, cut);
	CHECK(addr_net_parse(text, &back, err, sizeof err));
	CHECK(net_equal(&back, want));
	format(&back, again, cut);
	CHECK(addr_net_parse(again, &back, err, sizeof err));
	CHECK(net_equal(&back, want));
	format(&back, third, cut);
	CHECK(strcmp(third, again) == 0);
}

static void check_net(const char *s, size_t cut)
{
	char err[ERR_MAX];
	addr_net net, host;
	addr_ip ip;

	memset(err, 0, sizeof err);
	if (!addr_net_parse(s, &net, err, sizeof err)) {
		CHECK(err[0] != '\0');
		CHECK_TERMINATED(err, sizeof err);
		CHECK(!addr_ip_parse(s, &ip) || strchr(s, '/') != NULL);
		return;
	}
	CHECK(net.ip.version == 4 || net.ip.version == 6);
	CHECK(net.prefix <= bits_of(&net.ip));
	host = addr_net_of(&net.ip, net.prefix);
	CHECK(net_equal(&host, &net));
	CHECK(addr_net_contains(&net, &net.ip));
	check_net_round_trip(&net, &net, cut);
	if (strchr(s, '/') == NULL)
		CHECK(addr_ip_parse(s, &ip) && ip_equal(&ip, &net.ip) && net.prefix == bits_of(&ip));
}

/* Any 16 bytes as an address of either family, masked to any prefix. */
static void check_raw_net(const uint8_t *raw, uint8_t version, unsigned prefix, size_t cut)
{
	addr_ip ip = {.version = version};
	addr_net net, want;

	memcpy(ip.bytes, raw, version == 4 ? 4 : 16);
	net = addr_net_of(&ip, prefix);
	CHECK(net.prefix == (prefix < bits_of(&ip) ? prefix : bits_of(&ip)));
	CHECK(addr_net_contains(&net, &ip));
	want = net;
	if (is_v4mapped(&net.ip) && net.prefix >= 96) {
		memset(&want, 0, sizeof want);
		want.ip.version = 4;
		memcpy(want.ip.bytes, net.ip.bytes + 12, 4);
		want.prefix = (uint8_t)(net.prefix - 96);
	}
	check_net_round_trip(&net, &want, cut);
	if (net.prefix == bits_of(&ip) && !is_v4mapped(&ip))
		check_ip_text(&ip);
}

static void check_hostport(const char *s)
{
	char err[ERR_MAX], text[ADDR_NET_STRLEN], spelled[ADDR_NET_STRLEN + 16];
	addr_ip ip, back;
	uint16_t port, port2;
	addr_net host;

	memset(err, 0, sizeof err);
	if (!addr_hostport_parse(s, &ip, &port, err, sizeof err)) {
		CHECK(err[0] != '\0');
		CHECK_TERMINATED(err, sizeof err);
		return;
	}
	CHECK(port >= 1 && (ip.version == 4 || ip.version == 6));
	host = addr_net_of(&ip, 128);
	addr_net_format(&host, text, sizeof text);
	snprintf(spelled, sizeof spelled, ip.version == 6 ? "[%s]:%u" : "%s:%u", text, (unsigned)port);
	CHECK(addr_hostport_parse(spelled, &back, &port2, err, sizeof err));
	CHECK(ip_equal(&back, &ip) && port2 == port);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text, norm[ADDR_MAX];
	size_t smalllen, cut;
	const char *delims;

	if (size < 3)
		return 0;
	smalllen = 1 + data[0] % 64;
	delims = delimiter_sets[data[0] / 64 % (sizeof delimiter_sets / sizeof delimiter_sets[0])];
	cut = data[1] % (ADDR_NET_STRLEN + 1);
	if (data[2] & 1 && size >= 19)
		check_raw_net(data + 3, data[2] & 2 ? 6 : 4, data[1] % 160, cut);
	data += 3;
	size -= 3;
	text = malloc(size + 1);
	CHECK(text != NULL);
	memcpy(text, data, size);
	text[size] = '\0';
	check_normalise(text, size, smalllen);
	check_strip_extension(text, delims, smalllen);
	if (normalise(text, size, norm, sizeof norm) == ADDR_OK)
		check_strip_extension(norm, delims, smalllen);
	check_entry(text);
	check_domain(text);
	check_ip(text);
	check_net(text, cut);
	check_hostport(text);
	free(text);
	return 0;
}
