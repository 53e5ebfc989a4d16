/* dnsbl_site: postscreen's site syntax, query names and answers (see dnsbl_site.h). */
#include "core/dnsbl_site.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/text.h"

static void bit_set(uint8_t *map, unsigned v)
{
	map[v / 8] |= (uint8_t)(1u << (v % 8));
}

static bool bit_get(const uint8_t *map, unsigned v)
{
	return (map[v / 8] >> (v % 8)) & 1u;
}

/* A decimal number 0..255 at *p, advancing *p; false when there is none. */
static bool octet_number(const char **p, unsigned *out)
{
	unsigned v = 0;
	const char *s = *p;

	if (!isdigit((unsigned char)*s))
		return false;
	for (; isdigit((unsigned char)*s); s++) {
		v = v * 10 + (unsigned)(*s - '0');
		if (v > 255)
			return false;
	}
	*out = v;
	*p = s;
	return true;
}

/* "[2..11;20]" at *p into map, advancing *p past the ']'. */
static bool octet_pattern(const char **p, uint8_t *map)
{
	const char *s = *p + 1;

	for (;;) {
		unsigned lo, hi;

		if (!octet_number(&s, &lo))
			return false;
		hi = lo;
		if (s[0] == '.' && s[1] == '.') {
			s += 2;
			if (!octet_number(&s, &hi) || hi < lo)
				return false;
		}
		for (unsigned v = lo; v <= hi; v++)
			bit_set(map, v);
		if (*s == ']')
			break;
		if (*s++ != ';')
			return false;
	}
	*p = s + 1;
	return true;
}

/* The filter "d.d.d.d" of [text, end) into s->octet. */
static bool parse_filter(const char *text, const char *end, dnsbl_site *s, char *err, size_t errlen)
{
	const char *p = text;

	memset(s->octet, 0, sizeof(s->octet));
	for (int i = 0; i < 4; i++) {
		unsigned v;
		bool ok;

		if (i > 0 && (p >= end || *p++ != '.'))
			break;
		if (p < end && *p == '[')
			ok = octet_pattern(&p, s->octet[i]);
		else if ((ok = octet_number(&p, &v)))
			bit_set(s->octet[i], v);
		if (!ok || p > end)
			break;
		if (i == 3 && p == end) {
			for (unsigned x = 0; x < 256; x++)
				if (bit_get(s->octet[0], x) != (x == 127)) {
					snprintf(
					    err, errlen,
					    "filter \"%.*s\": the first octet must be 127 (lists answer in "
					    "127.0.0.0/8)",
					    (int)(end - text), text);
					return false;
				}
			s->filtered = true;
			return true;
		}
	}
	snprintf(err, errlen,
	         "bad filter \"%.*s\": expected four octets, each a number 0..255 or [a;b..c], "
	         "as 127.0.0.[2..11]",
	         (int)(end - text > 64 ? 64 : end - text), text);
	return false;
}

/* The name of [text, end) into s->name, lower case, one trailing dot dropped. */
static bool parse_name(const char *text, const char *end, dnsbl_site *s, char *err, size_t errlen)
{
	size_t n = (size_t)(end - text), label = 0;

	if (n > 0 && text[n - 1] == '.')
		n--;
	if (n == 0) {
		snprintf(err, errlen, "no site name");
		return false;
	}
	if (n > DNSBL_SITE_NAME_MAX) {
		snprintf(err, errlen, "site name too long (%zu bytes, at most %d)", n, DNSBL_SITE_NAME_MAX);
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)text[i];

		if (c == '.') {
			if (label == 0)
				break;
			label = 0;
		} else if (isalnum(c) || c == '-' || c == '_') {
			if (++label > 63)
				break;
		} else {
			snprintf(err, errlen, "site name \"%.*s\": character '%c' not allowed", (int)n, text,
			         isprint(c) ? c : '?');
			return false;
		}
		s->name[i] = (char)tolower(c);
		if (i + 1 == n) {
			s->name[n] = '\0';
			return true;
		}
	}
	snprintf(err, errlen, "site name \"%.*s\": empty label or a label over 63 bytes", (int)n, text);
	return false;
}

static bool parse_weight(const char *text, dnsbl_site *s, char *err, size_t errlen)
{
	char *end = NULL;
	long w = DNSBL_WEIGHT_MAX + 1L;

	if (isdigit((unsigned char)text[text[0] == '-' || text[0] == '+']) && strlen(text) < 8)
		w = strtol(text, &end, 10);
	if (w < DNSBL_WEIGHT_MIN || w > DNSBL_WEIGHT_MAX || end == NULL || *end != '\0') {
		snprintf(err, errlen, "weight \"%.16s\": expected an integer from %d to %d", text,
		         DNSBL_WEIGHT_MIN, DNSBL_WEIGHT_MAX);
		return false;
	}
	s->weight = (int)w;
	return true;
}

bool dnsbl_site_parse(const char *text, dnsbl_site *out, char *err, size_t errlen)
{
	const char *star = strrchr(text, '*'), *eq = strchr(text, '=');
	const char *end = text + strlen(text), *name_end;

	memset(out, 0, sizeof(*out));
	out->weight = 1;
	if (star != NULL && eq != NULL && star < eq)
		star = NULL; /* the '*' is not the weight's: the filter part will fail */
	name_end = eq ? eq : star ? star : end;
	if (!parse_name(text, name_end, out, err, errlen))
		return false;
	if (eq && !parse_filter(eq + 1, star ? star : end, out, err, errlen))
		return false;
	if (star && !parse_weight(star + 1, out, err, errlen))
		return false;
	return true;
}

bool dnsbl_answer_valid(uint32_t answer)
{
	return (answer >> 24) == 127 && (answer >> 8) != 0x7fffffu;
}

bool dnsbl_site_matches(const dnsbl_site *s, uint32_t answer)
{
	if (!dnsbl_answer_valid(answer))
		return false;
	if (!s->filtered)
		return true;
	for (int i = 0; i < 4; i++)
		if (!bit_get(s->octet[i], (answer >> (24 - 8 * i)) & 0xffu))
			return false;
	return true;
}

size_t dnsbl_query_name(const addr_ip *ip, const char *site, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	char rev[72];
	size_t n = 0, sl = strlen(site);

	/* By hand, not snprintf: this runs for every site of every request. */
	if (ip->version == 4) {
		for (int i = 3; i >= 0; i--) {
			n += text_put_u8(rev + n, ip->bytes[i]);
			rev[n++] = '.';
		}
	} else {
		for (int i = 15; i >= 0; i--) {
			rev[n++] = hex[ip->bytes[i] & 0xf];
			rev[n++] = '.';
			rev[n++] = hex[ip->bytes[i] >> 4];
			rev[n++] = '.';
		}
	}
	if (n + sl >= outlen || n + sl > 253) {
		if (outlen)
			out[0] = '\0';
		return 0;
	}
	memcpy(out, rev, n);
	memcpy(out + n, site, sl + 1);
	return n + sl;
}
