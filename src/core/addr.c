/*
 * addr: envelope and client address normalisation (see addr.h).
 *
 * Envelope addresses: angle brackets and an RFC 5321 source route are
 * removed, the domain loses a trailing dot, everything is lowercased (ASCII
 * only; UTF-8 octets pass unchanged). Control characters, unbalanced
 * brackets or quotes and results of ADDR_MAX bytes or more are ADDR_INVALID.
 *
 * IP addresses: inet_pton does the parsing (no hand-written IPv6 parser);
 * arpa/inet.h is only a conversion header here, no socket is ever opened.
 * The text of a network is written here (addr_net_format), without
 * inet_ntop and snprintf: it is on the request path.
 * Pure: no I/O, no allocation, no globals.
 */
#include "core/addr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Far more than any real path; input beyond this is not worth scanning. */
#define ADDR_RAW_MAX (4 * ADDR_MAX)
/* Longest IP text we pass to inet_pton (INET6_ADDRSTRLEN is 46). */
#define ADDR_IP_TEXT_MAX 64

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static bool is_control(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

static char ascii_lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Trim blanks at both ends of [*s, *s + *len). */
static void trim_blanks(const char **s, size_t *len)
{
	while (*len > 0 && is_blank(**s)) {
		(*s)++;
		(*len)--;
	}
	while (*len > 0 && is_blank((*s)[*len - 1]))
		(*len)--;
}

/*
 * Strip one pair of angle brackets. Returns false when only one side is
 * present; brackets inside the path are caught by check_path().
 */
static bool strip_brackets(const char **s, size_t *len)
{
	bool open = *len > 0 && (*s)[0] == '<';
	bool close = *len > 0 && (*s)[*len - 1] == '>';

	if (open != close || (open && *len < 2))
		return false;
	if (open) {
		(*s)++;
		*len -= 2;
	}
	return true;
}

/*
 * Control characters, brackets outside a quoted string and an unterminated
 * quote make a path invalid. A backslash quotes the next octet inside a
 * quoted string (RFC 5321 quoted-pairSMTP).
 */
static bool check_path(const char *s, size_t len)
{
	bool quoted = false;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (is_control(c))
			return false;
		if (quoted && c == '\\' && i + 1 < len && !is_control((unsigned char)s[i + 1]))
			i++;
		else if (c == '"')
			quoted = !quoted;
		else if (!quoted && (c == '<' || c == '>'))
			return false;
	}
	return !quoted;
}

/*
 * RFC 5321 4.1.2: Path = "<" [ A-d-l ":" ] Mailbox ">", where A-d-l is
 * "@domain" elements separated by commas. The route is obsolete and
 * ignored by every MTA (RFC 5321 appendix C); drop it. A path starting
 * with '@' that has no ':' is left alone (it is no source route).
 */
static bool strip_source_route(const char **s, size_t *len)
{
	const char *colon;

	if (*len == 0 || (*s)[0] != '@')
		return false;
	colon = memchr(*s, ':', *len);
	if (colon == NULL)
		return false;
	*len -= (size_t)(colon + 1 - *s);
	*s = colon + 1;
	return true;
}

/* Lowercase copy, then drop a trailing dot from the domain part. */
static void copy_lower(const char *s, size_t len, char *out)
{
	const char *at;

	for (size_t i = 0; i < len; i++)
		out[i] = ascii_lower(s[i]);
	out[len] = '\0';
	at = strrchr(out, '@');
	if (at != NULL && len > 0 && out[len - 1] == '.' && out + len - 1 > at + 1)
		out[len - 1] = '\0';
}

addr_status addr_normalise(const char *in, size_t inlen, char *out, size_t outlen)
{
	if (out == NULL || outlen == 0)
		return ADDR_INVALID;
	out[0] = '\0';
	if (in == NULL || inlen == 0)
		return ADDR_NULL;
	if (inlen > ADDR_RAW_MAX)
		return ADDR_INVALID;
	trim_blanks(&in, &inlen);
	if (!strip_brackets(&in, &inlen) || !check_path(in, inlen))
		return ADDR_INVALID;
	trim_blanks(&in, &inlen); /* "< user@example.com >" */
	if (inlen == 0)
		return ADDR_NULL;
	if (strip_source_route(&in, &inlen) && inlen == 0)
		return ADDR_INVALID; /* "<@relay:>": a route to nobody */
	if (inlen >= ADDR_MAX || inlen >= outlen)
		return ADDR_INVALID;
	copy_lower(in, inlen, out);
	return ADDR_OK;
}

/* Does every quoted string in s end? A backslash quotes the next character in one (RFC 5321 quoted-pair). */
static bool quotes_balanced(const char *s)
{
	bool quoted = false;

	for (; *s; s++) {
		if (quoted && *s == '\\' && s[1] != '\0')
			s++;
		else if (*s == '"')
			quoted = !quoted;
	}
	return !quoted;
}

void addr_unquote(char *s)
{
	bool quoted = false;
	char *out = s;

	if (!strchr(s, '"') || !quotes_balanced(s))
		return;
	for (; *s; s++) {
		if (quoted && *s == '\\' && s[1] != '\0')
			*out++ = *++s;
		else if (*s == '"')
			quoted = !quoted;
		else
			*out++ = *s;
	}
	*out = '\0';
}

/*
 * Postfix split_addr() semantics: the extension starts at the first
 * delimiter character, but never at the very start of the local part, and
 * "owner-foo" / "foo-request" are not split when '-' is a delimiter
 * (mailing-list conventions Postfix preserves). Quoted local parts are
 * matched as written.
 */
static size_t extension_start(const char *local, size_t len, const char *delimiters)
{
	size_t pos = 0;

	if (len == 0 || local[0] == '"')
		return 0;
	if (strchr(delimiters, '-') != NULL) {
		if (len > 6 && strncmp(local, "owner-", 6) == 0)
			return 0;
		if (len > 8 && strncmp(local + len - 8, "-request", 8) == 0)
			return 0;
	}
	while (pos < len && strchr(delimiters, local[pos]) == NULL)
		pos++;
	return pos < len ? pos : 0;
}

bool addr_strip_extension(const char *addr, const char *delimiters, char *out, size_t outlen)
{
	const char *at;
	size_t addrlen, local, ext;

	if (out == NULL || outlen == 0)
		return false;
	out[0] = '\0';
	if (addr == NULL)
		return false;
	addrlen = strlen(addr);
	at = strrchr(addr, '@');
	local = at != NULL ? (size_t)(at - addr) : addrlen;
	ext = (delimiters != NULL && delimiters[0] != '\0') ? extension_start(addr, local, delimiters) : 0;
	if (addrlen - (ext > 0 ? local - ext : 0) >= outlen)
		return false; /* a truncated address could match something else */
	if (ext == 0) {
		memcpy(out, addr, addrlen + 1);
		return false;
	}
	memcpy(out, addr, ext);
	memcpy(out + ext, addr + local, addrlen - local + 1);
	return true;
}

const char *addr_domain(const char *addr)
{
	const char *at = addr != NULL ? strrchr(addr, '@') : NULL;

	return (at != NULL && at[1] != '\0') ? at + 1 : NULL;
}

bool addr_entry_normalise(const char *in, char *out, size_t outlen)
{
	char again[ADDR_MAX];

	if (in == NULL || addr_normalise(in, strlen(in), out, outlen) != ADDR_OK || out[0] == '@' ||
	    addr_domain(out) == NULL)
		return false;
	return addr_normalise(out, strlen(out), again, sizeof(again)) == ADDR_OK && strcmp(again, out) == 0;
}

static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Parse bare IP text into out, keeping IPv4-mapped IPv6 as IPv6. */
static bool ip_parse_raw(const char *s, size_t len, addr_ip *out)
{
	char text[ADDR_IP_TEXT_MAX];
	bool v6_only = false;

	memset(out, 0, sizeof(*out));
	if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
		s++;
		len -= 2;
	}
	if (len >= 5 && strncasecmp(s, "IPv6:", 5) == 0) {
		s += 5;
		len -= 5;
		v6_only = true;
	}
	if (len == 0 || len >= sizeof(text))
		return false;
	memcpy(text, s, len);
	text[len] = '\0';
	if (!v6_only && inet_pton(AF_INET, text, out->bytes) == 1) {
		out->version = 4;
		return true;
	}
	if (inet_pton(AF_INET6, text, out->bytes) == 1) {
		out->version = 6;
		return true;
	}
	memset(out, 0, sizeof(*out));
	return false;
}

static bool ip_is_v4mapped(const addr_ip *ip)
{
	return ip->version == 6 && memcmp(ip->bytes, v4mapped_prefix, sizeof(v4mapped_prefix)) == 0;
}

static void ip_unmap(addr_ip *ip)
{
	memmove(ip->bytes, ip->bytes + 12, 4);
	memset(ip->bytes + 4, 0, sizeof(ip->bytes) - 4);
	ip->version = 4;
}

bool addr_ip_parse(const char *s, addr_ip *out)
{
	if (s == NULL || out == NULL)
		return false;
	if (!ip_parse_raw(s, strlen(s), out))
		return false;
	if (ip_is_v4mapped(out))
		ip_unmap(out);
	return true;
}

static unsigned ip_bits(const addr_ip *ip)
{
	return ip->version == 4 ? 32 : 128;
}

/* Zero every bit of ip below the first prefix bits. */
static void ip_mask(addr_ip *ip, unsigned prefix)
{
	unsigned nbytes = ip_bits(ip) / 8;

	for (unsigned i = 0; i < sizeof(ip->bytes); i++) {
		if (i >= nbytes || i * 8 >= prefix)
			ip->bytes[i] = 0;
		else if (i * 8 + 8 > prefix)
			ip->bytes[i] &= (uint8_t)(0xff << (8 - (prefix - i * 8)));
	}
}

addr_net addr_net_of(const addr_ip *ip, unsigned prefix)
{
	addr_net net;

	memset(&net, 0, sizeof(net));
	net.ip = *ip;
	if (prefix > ip_bits(ip))
		prefix = ip_bits(ip);
	net.prefix = (uint8_t)prefix;
	ip_mask(&net.ip, prefix);
	return net;
}

bool addr_net_contains(const addr_net *net, const addr_ip *ip)
{
	addr_net masked;

	if (net == NULL || ip == NULL || net->ip.version != ip->version ||
	    (ip->version != 4 && ip->version != 6))
		return false;
	masked = addr_net_of(ip, net->prefix);
	return memcmp(masked.ip.bytes, net->ip.bytes, ip_bits(ip) / 8) == 0;
}

/* Parse the "LEN" of "IP/LEN": 1 to 3 decimal digits, nothing else. */
static bool parse_prefix(const char *s, unsigned *out)
{
	unsigned v = 0;
	size_t n = 0;

	for (; s[n] >= '0' && s[n] <= '9'; n++)
		v = v * 10 + (unsigned)(s[n] - '0');
	if (n == 0 || n > 3 || s[n] != '\0')
		return false;
	*out = v;
	return true;
}

/*
 * "::ffff:192.0.2.0/120" is the IPv4 network 192.0.2.0/24; a mapped
 * prefix shorter than /96 reaches outside the mapped range and stays IPv6.
 */
static void net_unmap(addr_net *net)
{
	if (ip_is_v4mapped(&net->ip) && net->prefix >= 96) {
		ip_unmap(&net->ip);
		net->prefix = (uint8_t)(net->prefix - 96);
	}
}

static bool net_check_host_bits(const addr_net *net, const char *s, char *err, size_t errlen)
{
	addr_net masked = addr_net_of(&net->ip, net->prefix);
	char want[ADDR_NET_STRLEN];

	if (memcmp(masked.ip.bytes, net->ip.bytes, sizeof(net->ip.bytes)) == 0)
		return true;
	addr_net_format(&masked, want, sizeof(want));
	snprintf(err, errlen, "'%.64s' has host bits set below the /%u prefix (did you mean %s?)", s,
	         (unsigned)net->prefix, want);
	return false;
}

bool addr_net_parse(const char *s, addr_net *out, char *err, size_t errlen)
{
	const char *slash;
	unsigned prefix;
	addr_net net;

	if (s == NULL || out == NULL)
		return false;
	slash = strchr(s, '/');
	memset(&net, 0, sizeof(net));
	if (!ip_parse_raw(s, slash != NULL ? (size_t)(slash - s) : strlen(s), &net.ip)) {
		snprintf(err, errlen, "'%.64s' is not an IP address or network", s);
		return false;
	}
	prefix = ip_bits(&net.ip);
	if (slash != NULL && !parse_prefix(slash + 1, &prefix)) {
		snprintf(err, errlen, "'%.64s' has a bad prefix length (expected a number after '/')", s);
		return false;
	}
	if (prefix > ip_bits(&net.ip)) {
		snprintf(err, errlen, "'%.64s': prefix length %u is out of range for IPv%u (0..%u)", s,
		         prefix, (unsigned)net.ip.version, ip_bits(&net.ip));
		return false;
	}
	net.prefix = (uint8_t)prefix;
	net_unmap(&net);
	if (!net_check_host_bits(&net, s, err, errlen))
		return false;
	*out = net;
	return true;
}

/* An octet or a prefix length (0 to 255) in decimal. */
static char *put_decimal(char *p, unsigned v)
{
	if (v >= 100)
		*p++ = (char)('0' + v / 100);
	if (v >= 10)
		*p++ = (char)('0' + v / 10 % 10);
	*p++ = (char)('0' + v % 10);
	return p;
}

static char *put_v4(char *p, const uint8_t *b)
{
	for (int i = 0; i < 4; i++) {
		if (i > 0)
			*p++ = '.';
		p = put_decimal(p, b[i]);
	}
	return p;
}

/* A 16-bit group in lowercase hex, without leading zeros (RFC 5952 4.1, 4.3). */
static char *put_group(char *p, unsigned v)
{
	static const char hex[] = "0123456789abcdef";
	int shift = 12;

	while (shift > 0 && v >> shift == 0)
		shift -= 4;
	for (; shift >= 0; shift -= 4)
		*p++ = hex[v >> shift & 15];
	return p;
}

/*
 * The longest run of two or more zero groups, the first of equal ones
 * (RFC 5952 4.2.2, 4.2.3): where it starts and how long it is (0: none).
 */
static void zero_run(const unsigned *w, int *start, int *len)
{
	int run = 0;

	*start = 0;
	*len = 0;
	for (int i = 0; i < 8; i++) {
		run = w[i] == 0 ? run + 1 : 0;
		if (run > *len) {
			*len = run;
			*start = i + 1 - run;
		}
	}
	if (*len < 2)
		*len = 0;
}

/*
 * RFC 5952 text: groups as put_group(), the zero run as "::". An address
 * whose first 96 bits are zero and 7th group is not, or one in
 * ::ffff:0:0/96, ends in dotted decimal ("::192.0.2.1", "::ffff:0.0.0.0")
 * as glibc's inet_ntop writes them, so that the keys stored before this
 * formatter replaced inet_ntop stay the same.
 */
static char *put_v6(char *p, const uint8_t *b)
{
	unsigned w[8];
	int start, len;

	for (int i = 0; i < 8; i++)
		w[i] = (unsigned)b[2 * i] << 8 | b[2 * i + 1];
	zero_run(w, &start, &len);
	for (int i = 0; i < 8; i++) {
		if (len > 0 && i >= start && i < start + len) {
			if (i == start)
				*p++ = ':';
			continue;
		}
		if (i > 0)
			*p++ = ':';
		if (i == 6 && start == 0 && (len == 6 || (len == 5 && w[5] == 0xffff)))
			return put_v4(p, b + 12);
		p = put_group(p, w[i]);
	}
	if (len > 0 && start + len == 8)
		*p++ = ':';
	return p;
}

/* The text of net at p (ADDR_NET_STRLEN bytes), NUL-terminated; its length. */
static size_t net_write(const addr_net *net, char *p)
{
	char *end;

	if (net->ip.version == 4)
		end = put_v4(p, net->ip.bytes);
	else if (net->ip.version == 6)
		end = put_v6(p, net->ip.bytes);
	else
		return (size_t)snprintf(p, ADDR_NET_STRLEN, "invalid");
	if (net->prefix < ip_bits(&net->ip)) {
		*end++ = '/';
		end = put_decimal(end, net->prefix);
	}
	*end = '\0';
	return (size_t)(end - p);
}

/*
 * Written by hand, not with inet_ntop and snprintf: a policy request
 * formats up to 30 network keys, and those took 108,000 instructions for
 * an IPv6 client.
 */
size_t addr_net_format(const addr_net *net, char *out, size_t outlen)
{
	char text[ADDR_NET_STRLEN];
	size_t len;

	if (outlen >= ADDR_NET_STRLEN)
		return net_write(net, out);
	len = net_write(net, text);
	if (outlen > 0) {
		size_t n = len < outlen ? len : outlen - 1;

		memcpy(out, text, n);
		out[n] = '\0';
	}
	return len;
}

/* "1" to "65535", decimal digits only: no sign, no blanks, no "0". */
static bool parse_port(const char *s, uint16_t *port)
{
	unsigned v = 0;
	size_t n = 0;

	for (; s[n] >= '0' && s[n] <= '9'; n++) {
		if (n == 5)
			return false;
		v = v * 10 + (unsigned)(s[n] - '0');
	}
	if (n == 0 || s[n] != '\0' || v == 0 || v > 65535)
		return false;
	*port = (uint16_t)v;
	return true;
}

/* The host part of "HOST:PORT" (len bytes at s) as an IP literal; false with the reason. */
static bool hostport_ip(const char *s, size_t len, addr_ip *ip, char *err, size_t errlen)
{
	char text[ADDR_IP_TEXT_MAX];
	bool v6 = len >= 2 && s[0] == '[' && s[len - 1] == ']';

	if (v6) {
		s++;
		len -= 2;
	}
	if (len == 0 || len >= sizeof(text)) {
		snprintf(err, errlen, "no IP address before the port");
		return false;
	}
	memcpy(text, s, len);
	text[len] = '\0';
	memset(ip, 0, sizeof(*ip));
	ip->version = v6 ? 6 : 4;
	if (inet_pton(v6 ? AF_INET6 : AF_INET, text, ip->bytes) == 1)
		return true;
	if (v6)
		snprintf(err, errlen, "'%s' is not an IPv6 address", text);
	else if (strchr(text, ':') != NULL || strchr(text, '[') != NULL)
		snprintf(err, errlen, "an IPv6 address goes in brackets, as [::1]:10666");
	else
		snprintf(err, errlen, "'%s' is not an IPv4 address (host names are not accepted)", text);
	return false;
}

bool addr_hostport_parse(const char *s, addr_ip *ip, uint16_t *port, char *err, size_t errlen)
{
	const char *colon = s != NULL ? strrchr(s, ':') : NULL;

	if (colon == NULL || strchr(colon, ']') != NULL) {
		snprintf(err, errlen, "no :PORT");
		return false;
	}
	if (!hostport_ip(s, (size_t)(colon - s), ip, err, errlen))
		return false;
	if (!parse_port(colon + 1, port)) {
		snprintf(err, errlen, "port must be 1 to 65535");
		return false;
	}
	return true;
}

bool addr_domain_normalise(const char *in, char *out, size_t outlen)
{
	size_t len;

	if (in[0] == '@')
		in++;
	len = strlen(in);
	if (len > 0 && in[len - 1] == '.')
		len--;
	if (len == 0 || len > ADDR_DOMAIN_MAX || len >= outlen || in[0] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c <= ' ' || c == 0x7f || strchr("@<>\",;\\", c) != NULL)
			return false;
		/* "example.org..": its last label is empty, and "x@example.org.." normalises to another
		 * domain. */
		if (c == '.' && i + 1 == len)
			return false;
		out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : (char)c;
	}
	out[len] = '\0';
	return true;
}
