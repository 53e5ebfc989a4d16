/*
 * spf_macro: RFC 7208 section 7 macro strings (see spf_macro.h).
 *
 * Expansion writes through a sink that bounds memory whatever the input:
 * a domain keeps only the tail it may need (the RFC cuts long names from
 * the left), an explanation keeps its head. A record of a few KB full of
 * %{d} would otherwise expand to hundreds of KB.
 */
#include "spf/spf_macro.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#define SPF_MACRO_TAIL 1024 /* bytes of a domain expansion kept before cutting */
#define SPF_MACRO_PARTS 128 /* parts of a value kept for a transformer */

struct sink {
	char *buf;
	size_t size; /* usable bytes, without the NUL */
	size_t len;
	bool tail; /* keep the tail (domain) or the head (explanation) */
	bool cut;  /* bytes were dropped */
};

static void sink_put(struct sink *k, char c)
{
	if (k->len == k->size) {
		k->cut = true;
		if (!k->tail)
			return;
		/* Drop the older half: only the last 253 characters matter. */
		size_t half = k->size / 2;
		memmove(k->buf, k->buf + half, k->size - half);
		k->len = k->size - half;
	}
	k->buf[k->len++] = c;
}

static void sink_puts(struct sink *k, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		sink_put(k, s[i]);
}

static bool is_letter(char c, enum spf_macro_kind kind)
{
	switch (c | 0x20) {
	case 's':
	case 'l':
	case 'o':
	case 'd':
	case 'i':
	case 'p':
	case 'h':
	case 'v':
		return true;
	case 'c':
	case 'r':
	case 't':
		return kind == SPF_MACRO_EXPLAIN;
	default:
		return false;
	}
}

static bool is_delim(char c)
{
	return c == '.' || c == '-' || c == '+' || c == ',' || c == '/' || c == '_' || c == '=';
}

/*
 * Parses the macro-expand "{...}" starting at s[*i] (just after '%').
 * Fills letter, digits (0: none), reverse and the delimiter set. Returns
 * false on a syntax error.
 */
struct macro {
	char letter;
	unsigned digits;
	bool reverse;
	char delims[8];
	size_t ndelims;
};

static bool parse_macro(const char *s, size_t len, size_t *i, enum spf_macro_kind kind, struct macro *m)
{
	size_t j = *i;
	memset(m, 0, sizeof(*m));
	if (j >= len || s[j] != '{')
		return false;
	j++;
	if (j >= len || !is_letter(s[j], kind))
		return false;
	m->letter = s[j++];
	bool have_digits = false;
	while (j < len && s[j] >= '0' && s[j] <= '9') {
		have_digits = true;
		if (m->digits < 1000)
			m->digits = m->digits * 10 + (unsigned)(s[j] - '0');
		j++;
	}
	if (have_digits && m->digits == 0)
		return false; /* RFC 7208 7.1: the digit value MUST be nonzero */
	if (j < len && (s[j] == 'r' || s[j] == 'R')) {
		m->reverse = true;
		j++;
	}
	while (j < len && is_delim(s[j])) {
		if (!memchr(m->delims, s[j], m->ndelims) && m->ndelims < sizeof(m->delims))
			m->delims[m->ndelims++] = s[j];
		j++;
	}
	if (j >= len || s[j] != '}')
		return false;
	*i = j + 1;
	return true;
}

/* Walks the string; with a sink and vars it expands, without it only checks. */
static bool walk(const char *s, size_t len, enum spf_macro_kind kind, const struct spf_macro_vars *v,
                 struct sink *k);

bool spf_macro_valid(const char *s, size_t len, enum spf_macro_kind kind)
{
	return walk(s, len, kind, NULL, NULL);
}

bool spf_macro_uses_p(const char *s, size_t len)
{
	for (size_t i = 0; i + 2 < len; i++) {
		if (s[i] == '%' && s[i + 1] == '%') {
			i++;
			continue;
		}
		if (s[i] == '%' && s[i + 1] == '{' && (s[i + 2] | 0x20) == 'p')
			return true;
	}
	return false;
}

static void ip_dotted(const struct spf_macro_vars *v, char *buf, size_t size)
{
	if (v->family == AF_INET) {
		snprintf(buf, size, "%u.%u.%u.%u", v->ip[0], v->ip[1], v->ip[2], v->ip[3]);
		return;
	}
	/* RFC 7208 7.3: IPv6 %{i} is the dot-separated nibbles. */
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;
	for (int b = 0; b < 16 && n + 4 < size; b++) {
		buf[n++] = hex[v->ip[b] >> 4];
		buf[n++] = '.';
		buf[n++] = hex[v->ip[b] & 15];
		buf[n++] = '.';
	}
	buf[n ? n - 1 : 0] = '\0';
}

/* The raw value of a macro letter, in buf (at least 512 bytes). */
static const char *letter_value(char letter, const struct spf_macro_vars *v, char *buf, size_t size)
{
	switch (letter | 0x20) {
	case 's':
		return v->sender;
	case 'l':
		return v->local;
	case 'o':
		return v->domain_o;
	case 'd':
		return v->domain;
	case 'p':
		return v->ptr ? v->ptr : "unknown";
	case 'h':
		return v->helo;
	case 'r':
		return v->receiver ? v->receiver : "unknown";
	case 'v':
		return v->family == AF_INET ? "in-addr" : "ip6";
	case 'i':
		ip_dotted(v, buf, size);
		return buf;
	case 'c':
		if (!inet_ntop(v->family, v->ip, buf, (socklen_t)size))
			buf[0] = '\0';
		return buf;
	case 't':
		snprintf(buf, size, "%lld", v->now);
		return buf;
	default:
		return "";
	}
}

/* RFC 3986 unreserved characters stay, the rest is %XX (RFC 7208 7.3). */
static void put_escaped(struct sink *k, const char *s, size_t n, bool escape)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		            c == '-' || c == '.' || c == '_' || c == '~';
		if (!escape || keep) {
			sink_put(k, (char)c);
		} else {
			char hex[4];
			snprintf(hex, sizeof(hex), "%%%02X", c);
			sink_puts(k, hex, 3);
		}
	}
}

/* Splits value on the delimiters, reverses, keeps the rightmost parts, joins with '.'. */
static void put_macro(struct sink *k, const struct macro *m, const struct spf_macro_vars *v)
{
	char buf[512];
	const char *val = letter_value(m->letter, v, buf, sizeof(buf));
	if (!val)
		val = "";
	size_t vlen = strnlen(val, 1024);
	const char *delims = m->ndelims ? m->delims : ".";
	size_t ndelims = m->ndelims ? m->ndelims : 1;
	struct {
		const char *p;
		size_t n;
	} parts[SPF_MACRO_PARTS];
	size_t nparts = 0, start = 0;
	for (size_t i = 0; i <= vlen; i++) {
		if (i < vlen && !memchr(delims, val[i], ndelims))
			continue;
		if (nparts == SPF_MACRO_PARTS) { /* more parts: fold the rest into the last */
			parts[nparts - 1].n = vlen - (size_t)(parts[nparts - 1].p - val);
			break;
		}
		parts[nparts].p = val + start;
		parts[nparts].n = i - start;
		nparts++;
		start = i + 1;
	}
	if (m->reverse)
		for (size_t a = 0, b = nparts - 1; a < b; a++, b--) {
			const char *tp = parts[a].p;
			size_t tn = parts[a].n;
			parts[a] = parts[b];
			parts[b].p = tp;
			parts[b].n = tn;
		}
	size_t first = (m->digits && m->digits < nparts) ? nparts - m->digits : 0;
	bool escape = m->letter >= 'A' && m->letter <= 'Z';
	for (size_t i = first; i < nparts; i++) {
		if (i > first)
			sink_put(k, '.');
		put_escaped(k, parts[i].p, parts[i].n, escape);
	}
}

static bool walk(const char *s, size_t len, enum spf_macro_kind kind, const struct spf_macro_vars *v,
                 struct sink *k)
{
	size_t i = 0;
	while (i < len) {
		unsigned char c = (unsigned char)s[i];
		if (c != '%') {
			/* macro-literal: visible ASCII; an explanation may hold spaces too */
			if (c < 0x21 && !(c == ' ' && kind == SPF_MACRO_EXPLAIN))
				return false;
			if (c > 0x7e)
				return false;
			if (k)
				sink_put(k, (char)c);
			i++;
			continue;
		}
		if (++i >= len)
			return false;
		char e = s[i];
		if (e == '%' || e == '_' || e == '-') {
			if (k)
				sink_puts(k, e == '%' ? "%" : e == '_' ? " " : "%20", e == '-' ? 3 : 1);
			i++;
			continue;
		}
		struct macro m;
		if (!parse_macro(s, len, &i, kind, &m))
			return false;
		if (k)
			put_macro(k, &m, v);
	}
	return true;
}

/* RFC 7208 7.3: drop labels from the left until the name fits in 253. */
static void cut_domain(char *out, size_t len, bool cut)
{
	size_t from = 0;
	while (len - from > 253 || (cut && from == 0)) {
		char *dot = memchr(out + from, '.', len - from);
		if (!dot) {
			from = len; /* no label boundary left: nothing usable */
			break;
		}
		from = (size_t)(dot - out) + 1;
		cut = false;
	}
	memmove(out, out + from, len - from);
	out[len - from] = '\0';
}

int spf_macro_expand(const char *s, size_t len, enum spf_macro_kind kind, const struct spf_macro_vars *v,
                     char *out, size_t outsz)
{
	char tail[SPF_MACRO_TAIL + 1];
	if (outsz < 256 || !walk(s, len, kind, NULL, NULL))
		return -1;
	struct sink k = {.buf = out, .size = outsz - 1, .tail = false};
	if (kind == SPF_MACRO_DOMAIN)
		k = (struct sink){.buf = tail, .size = SPF_MACRO_TAIL, .tail = true};
	walk(s, len, kind, v, &k);
	if (kind == SPF_MACRO_EXPLAIN) {
		out[k.len] = '\0';
		return 0;
	}
	tail[k.len] = '\0';
	cut_domain(tail, k.len, k.cut);
	snprintf(out, outsz, "%s", tail);
	return 0;
}
