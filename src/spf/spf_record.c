/*
 * spf_record: the RFC 7208 record grammar (see spf_record.h).
 *
 * Terms are separated by spaces only (0x20). Mechanism and modifier names
 * are case-insensitive. A domain-spec must be a valid macro-string that
 * ends with a macro or with "." toplabel (RFC 7208 7.1), so "a:example.-com"
 * and "a:localhost" are permerrors. Errors: -1 and a message.
 */
#include "spf/spf_record.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "spf/spf_macro.h"

static const char *const mech_names[] = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"};

const char *spf_mech_name(enum spf_mech m)
{
	return (unsigned)m < sizeof(mech_names) / sizeof(mech_names[0]) ? mech_names[m] : "?";
}

bool spf_record_is_spf1(const char *txt, size_t len)
{
	return len >= 6 && strncasecmp(txt, "v=spf1", 6) == 0 && (len == 6 || txt[6] == ' ');
}

static bool is_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum ) */
static bool is_toplabel(const char *s, size_t n)
{
	if (n == 0 || !is_alnum(s[0]) || !is_alnum(s[n - 1]))
		return false;
	bool alpha = false, dash = false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '-')
			dash = true;
		else if (is_alpha(s[i]))
			alpha = true;
		else if (!is_alnum(s[i]))
			return false;
	}
	return alpha || dash;
}

/* domain-end = ( "." toplabel [ "." ] ) / macro-expand */
static bool has_domain_end(const char *s, size_t n)
{
	if (n >= 1 && s[n - 1] == '}')
		return true; /* the macro-string check has made sure it is a macro */
	if (n >= 2 && s[n - 2] == '%' && (s[n - 1] == '%' || s[n - 1] == '_' || s[n - 1] == '-'))
		return n < 3 || s[n - 3] != '%';
	if (n >= 1 && s[n - 1] == '.')
		n--;
	size_t start = n;
	while (start > 0 && s[start - 1] != '.')
		start--;
	return start > 0 && is_toplabel(s + start, n - start);
}

static bool domain_spec_ok(const char *s, size_t n)
{
	return n > 0 && spf_macro_valid(s, n, SPF_MACRO_DOMAIN) && has_domain_end(s, n);
}

/* "/" ("0" / %x31-39 0*2DIGIT), at most max */
static bool parse_cidr(const char *s, size_t n, int max, int *out)
{
	if (n == 0 || n > 3 || (s[0] == '0' && n > 1))
		return false;
	int v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	if (v > max)
		return false;
	*out = v;
	return true;
}

/* Finds a trailing "/N" (ip4) or "//N" (ip6) in s[0..*n); shortens *n. */
static bool take_cidr(const char *s, size_t *n, bool v6, int max, int *out)
{
	size_t end = *n, i = end;
	while (i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9')
		i--;
	if (i == 0 || s[i - 1] != '/' || i == end)
		return true; /* none here */
	bool dbl = i >= 2 && s[i - 2] == '/';
	if (dbl != v6)
		return true; /* "//N" is the ip6 length; "/N" the ip4 one */
	if (!parse_cidr(s + i, end - i, max, out))
		return false;
	*n = i - 1 - (v6 ? 1 : 0);
	return true;
}

/* a / mx: [ ":" domain-spec ] [ ip4-cidr-length ] [ "//" ip6-cidr-length ] */
static int parse_dual(const char *arg, size_t n, struct spf_term *t)
{
	if (!take_cidr(arg, &n, true, 128, &t->cidr6) || !take_cidr(arg, &n, false, 32, &t->cidr4))
		return -1;
	if (n == 0)
		return 0;
	if (arg[0] != ':' || !domain_spec_ok(arg + 1, n - 1))
		return -1;
	t->spec = arg + 1;
	t->spec_len = n - 1;
	return 0;
}

static int parse_ip(const char *arg, size_t n, struct spf_term *t, bool v6)
{
	char buf[64];
	int *cidr = v6 ? &t->cidr6 : &t->cidr4;
	if (n == 0 || arg[0] != ':')
		return -1;
	arg++, n--;
	const char *slash = memchr(arg, '/', n);
	size_t alen = slash ? (size_t)(slash - arg) : n;
	if (slash && !parse_cidr(slash + 1, n - alen - 1, v6 ? 128 : 32, cidr))
		return -1;
	if (alen == 0 || alen >= sizeof(buf))
		return -1;
	memcpy(buf, arg, alen);
	buf[alen] = '\0';
	return inet_pton(v6 ? AF_INET6 : AF_INET, buf, t->net) == 1 ? 0 : -1;
}

/* ":" domain-spec */
static int parse_target(const char *arg, size_t alen, struct spf_term *t)
{
	if (alen < 2 || arg[0] != ':' || !domain_spec_ok(arg + 1, alen - 1))
		return -1;
	t->spec = arg + 1;
	t->spec_len = alen - 1;
	return 0;
}

static int parse_mech(const char *name, size_t nlen, const char *arg, size_t alen, struct spf_term *t)
{
	size_t i;
	for (i = 0; i < sizeof(mech_names) / sizeof(mech_names[0]); i++)
		if (strlen(mech_names[i]) == nlen && strncasecmp(name, mech_names[i], nlen) == 0)
			break;
	if (i == sizeof(mech_names) / sizeof(mech_names[0]))
		return -1;
	t->mech = (enum spf_mech)i;
	t->cidr4 = 32;
	t->cidr6 = 128;
	switch (t->mech) {
	case SPF_MECH_ALL:
		return alen == 0 ? 0 : -1;
	case SPF_MECH_A:
	case SPF_MECH_MX:
		return parse_dual(arg, alen, t);
	case SPF_MECH_IP4:
	case SPF_MECH_IP6:
		return parse_ip(arg, alen, t, t->mech == SPF_MECH_IP6);
	case SPF_MECH_PTR:
		if (alen == 0)
			return 0;
		return parse_target(arg, alen, t);
	case SPF_MECH_INCLUDE:
	case SPF_MECH_EXISTS:
		return parse_target(arg, alen, t);
	}
	return -1;
}

/* name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ) */
static bool is_modifier_name(const char *s, size_t n)
{
	if (n == 0 || !is_alpha(s[0]))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!is_alnum(s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '.')
			return false;
	return true;
}

static int parse_modifier(const char *term, size_t n, const char *eq, struct spf_record *rec, char *err,
                          size_t errlen)
{
	size_t nlen = (size_t)(eq - term);
	const char *val = eq + 1;
	size_t vlen = n - nlen - 1;
	bool redirect = nlen == 8 && strncasecmp(term, "redirect", 8) == 0;
	bool exp = nlen == 3 && strncasecmp(term, "exp", 3) == 0;
	if (!is_modifier_name(term, nlen)) {
		snprintf(err, errlen, "bad modifier name in \"%.*s\"", (int)(n > 64 ? 64 : n), term);
		return -1;
	}
	if (!(redirect || exp)) {
		if (spf_macro_valid(val, vlen, SPF_MACRO_DOMAIN))
			return 0; /* unknown modifiers are ignored (RFC 7208 6) */
		snprintf(err, errlen, "bad macro string in modifier %.*s", (int)(nlen > 64 ? 64 : nlen),
		         term);
		return -1;
	}
	if ((redirect && rec->redirect) || (exp && rec->exp)) {
		snprintf(err, errlen, "%s= given twice", redirect ? "redirect" : "exp");
		return -1;
	}
	if (!domain_spec_ok(val, vlen)) {
		snprintf(err, errlen, "bad domain in %s=", redirect ? "redirect" : "exp");
		return -1;
	}
	if (redirect) {
		rec->redirect = val;
		rec->redirect_len = vlen;
	} else {
		rec->exp = val;
		rec->exp_len = vlen;
	}
	return 0;
}

static int parse_term(const char *term, size_t n, struct spf_record *rec, char *err, size_t errlen)
{
	/* A modifier's name has no ':' or '/' before its '='. */
	size_t name_end = 0;
	while (name_end < n && term[name_end] != '=' && term[name_end] != ':' && term[name_end] != '/')
		name_end++;
	if (name_end < n && term[name_end] == '=')
		return parse_modifier(term, n, term + name_end, rec, err, errlen);
	struct spf_term *t = &rec->terms[rec->nterms];
	memset(t, 0, sizeof(*t));
	t->qual = SPF_PASS;
	size_t q = 0;
	if (n > 0 && strchr("+-~?", term[0])) {
		t->qual = term[0] == '+'   ? SPF_PASS
		          : term[0] == '-' ? SPF_FAIL
		          : term[0] == '~' ? SPF_SOFTFAIL
		                           : SPF_NEUTRAL;
		q = 1;
	}
	size_t nlen = q;
	while (nlen < n && term[nlen] != ':' && term[nlen] != '/')
		nlen++;
	if (parse_mech(term + q, nlen - q, term + nlen, n - nlen, t) < 0) {
		snprintf(err, errlen, "bad term \"%.*s\"", (int)(n > 64 ? 64 : n), term);
		return -1;
	}
	rec->nterms++;
	return 0;
}

int spf_record_parse(const char *txt, size_t len, struct spf_record *rec, char *err, size_t errlen)
{
	memset(rec, 0, sizeof(*rec));
	if (!spf_record_is_spf1(txt, len)) {
		snprintf(err, errlen, "not an SPF record");
		return -1;
	}
	size_t max = len / 2 + 1; /* a term takes at least a space and a character */
	rec->terms = calloc(max, sizeof(*rec->terms));
	if (!rec->terms) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	size_t i = 6;
	while (i < len) {
		if (txt[i] == ' ') {
			i++;
			continue;
		}
		size_t start = i;
		while (i < len && txt[i] != ' ')
			i++;
		if (parse_term(txt + start, i - start, rec, err, errlen) < 0) {
			spf_record_clear(rec);
			return -1;
		}
	}
	return 0;
}

void spf_record_clear(struct spf_record *rec)
{
	free(rec->terms);
	memset(rec, 0, sizeof(*rec));
}
