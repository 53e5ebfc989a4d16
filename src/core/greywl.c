/*
 * greywl: postgrey 1.37's whitelist_clients / whitelist_recipients.
 *
 * A line is classified in postgrey's order, so that a file means what it
 * meant to postgrey:
 *   clients:    /regex/, IPv4 (a.b.c.d[/n]), partial IPv4 (a.b.c, a.b),
 *               anything with two ':' (IPv6[/n]), else a host name;
 *   recipients: /regex/, user@domain, user@, @domain, domain.
 * Host names match client_name itself or on a label boundary below it
 * ("google.com" matches "mx.google.com", never "evilgoogle.com" nor
 * "google.com.evil.test"), regexes are caseless and unanchored as in Perl's
 * qr{...}i. Every entry keeps "SOURCE:LINE: ENTRY" so that a pass can say
 * which line let the client through.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "core/greywl.h"

#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"
#include "core/text.h"

/* Caps backtracking so that a pathological pattern cannot stall a worker (as trapset). */
#define GREYWL_MATCH_LIMIT 100000
#define GREYWL_DEPTH_LIMIT 10000
/* How much of an entry its label keeps: enough to recognise the line. */
#define GREYWL_LABEL_ENTRY_MAX 256
/* A host name in DNS has at most 253 characters without the trailing dot. */
#define GREYWL_HOST_MAX 253

typedef enum {
	ENTRY_HOST,         /* client: client_name is domain or ends in ".domain" */
	ENTRY_NET,          /* client: the address is inside net */
	ENTRY_REGEX,        /* either: code matches somewhere */
	ENTRY_RCPT_ADDRESS, /* user[+ext]@domain */
	ENTRY_RCPT_USER,    /* user[+ext]@anything */
	ENTRY_RCPT_AT,      /* anything@domain exactly (spamtrapd's reading of "@domain") */
	ENTRY_RCPT_DOMAIN,  /* anything ending in "@domain" or ".domain" */
} entry_kind;

typedef struct wl_entry {
	entry_kind kind;
	char *label;  /* "SOURCE:LINE: ENTRY" */
	char *user;   /* RCPT_ADDRESS, RCPT_USER */
	char *domain; /* HOST (lower case), RCPT_ADDRESS, RCPT_AT, RCPT_DOMAIN */
	addr_net net;
	pcre2_code *code;
} wl_entry;

typedef struct wl_list {
	wl_entry *v;
	size_t n, cap;
} wl_list;

struct greywl {
	wl_list clients, recipients;
	pcre2_match_context *mctx;
};

/* Where an entry came from, for messages and labels. */
typedef struct origin {
	const char *source;
	unsigned line; /* 0: a single entry, no line */
} origin;

greywl *greywl_new(void)
{
	greywl *wl = calloc(1, sizeof(*wl));

	if (wl == NULL)
		return NULL;
	wl->mctx = pcre2_match_context_create(NULL);
	if (wl->mctx == NULL) {
		free(wl);
		return NULL;
	}
	pcre2_set_match_limit(wl->mctx, GREYWL_MATCH_LIMIT);
	pcre2_set_depth_limit(wl->mctx, GREYWL_DEPTH_LIMIT);
	return wl;
}

static void entry_free(wl_entry *e)
{
	free(e->label);
	free(e->user);
	free(e->domain);
	pcre2_code_free(e->code);
}

static void list_free(wl_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		entry_free(&l->v[i]);
	free(l->v);
}

void greywl_free(greywl *wl)
{
	if (wl == NULL)
		return;
	list_free(&wl->clients);
	list_free(&wl->recipients);
	pcre2_match_context_free(wl->mctx);
	free(wl);
}

size_t greywl_client_count(const greywl *wl)
{
	return wl != NULL ? wl->clients.n : 0;
}

size_t greywl_recipient_count(const greywl *wl)
{
	return wl != NULL ? wl->recipients.n : 0;
}

/* Formats "SOURCE:LINE: message" (or "SOURCE: message") into err; always returns -1. */
static int fail(const origin *o, char *err, size_t errlen, const char *msg)
{
	if (err == NULL || errlen == 0)
		return -1;
	if (o->line > 0)
		snprintf(err, errlen, "%s:%u: %s", o->source, o->line, msg);
	else
		snprintf(err, errlen, "%s: %s", o->source, msg);
	return -1;
}

static char ascii_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static void lower_in_place(char *s)
{
	for (; *s != '\0'; s++)
		*s = ascii_lower(*s);
}

/* ASCII-caseless comparison of n bytes: Perl's /i on byte strings. */
static bool caseless_eq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (ascii_lower(a[i]) != ascii_lower(b[i]))
			return false;
	}
	return true;
}

static bool caseless_suffix(const char *s, size_t slen, const char *suffix, size_t suflen)
{
	return slen >= suflen && caseless_eq(s + slen - suflen, suffix, suflen);
}

static int list_push(wl_list *l, wl_entry *e)
{
	if (l->n == l->cap) {
		size_t cap = l->cap != 0 ? l->cap * 2 : 16;
		wl_entry *v = realloc(l->v, cap * sizeof(*v));

		if (v == NULL)
			return -1;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = *e;
	return 0;
}

static char *make_label(const origin *o, const char *entry)
{
	size_t len = strlen(o->source) + GREYWL_LABEL_ENTRY_MAX + 32;
	char *label = malloc(len);

	if (label == NULL)
		return NULL;
	if (o->line > 0)
		snprintf(label, len, "%s:%u: %.*s", o->source, o->line, GREYWL_LABEL_ENTRY_MAX, entry);
	else
		snprintf(label, len, "%s: %.*s", o->source, GREYWL_LABEL_ENTRY_MAX, entry);
	return label;
}

/* Takes over e's allocations whatever happens. */
static int add_entry(wl_list *l, wl_entry *e, const origin *o, const char *text, char *err, size_t errlen)
{
	e->label = make_label(o, text);
	if (e->label == NULL || list_push(l, e) != 0) {
		entry_free(e);
		return fail(o, err, errlen, "out of memory");
	}
	return 0;
}

/* postgrey's ^/(\S+)/$ (the caller has refused white space already). */
static bool is_regex(const char *s, size_t n)
{
	return n >= 3 && s[0] == '/' && s[n - 1] == '/';
}

static int add_regex(wl_list *l, const char *s, size_t n, const origin *o, char *err, size_t errlen)
{
	wl_entry e = {.kind = ENTRY_REGEX};
	int errcode;
	PCRE2_SIZE erroffset;
	PCRE2_UCHAR msg[256];
	char buf[512];

	/* Caseless and unanchored, as postgrey's qr{$1}i. */
	e.code = pcre2_compile((PCRE2_SPTR)(s + 1), n - 2, PCRE2_CASELESS, &errcode, &erroffset, NULL);
	if (e.code == NULL) {
		pcre2_get_error_message(errcode, msg, sizeof(msg));
		snprintf(buf, sizeof(buf), "bad regex %.*s at offset %zu: %s", (int)(n < 200 ? n : 200), s,
		         (size_t)erroffset, (const char *)msg);
		return fail(o, err, errlen, buf);
	}
	/* JIT is an optimisation only: without it PCRE2 interprets. */
	(void)pcre2_jit_compile(e.code, PCRE2_JIT_COMPLETE);
	return add_entry(l, &e, o, s, err, errlen);
}

/* Digits only, 1 to maxdigits of them, as a number. */
static bool parse_digits(const char *s, size_t n, size_t maxdigits, unsigned *out)
{
	unsigned v = 0;

	if (n == 0 || n > maxdigits)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	*out = v;
	return true;
}

/*
 * postgrey's IPv4 shapes: 2 to 4 groups of 1 to 3 digits, and with 4
 * groups an optional "/" and 1 or 2 digits. Returns the number of groups,
 * 0 when s has none of these shapes; *slash points at the '/' or is NULL.
 */
static int ipv4_shape(const char *s, size_t n, const char **slash)
{
	int groups = 0;
	size_t i = 0;
	unsigned ignored;

	*slash = NULL;
	for (;;) {
		size_t start = i;

		while (i < n && s[i] >= '0' && s[i] <= '9')
			i++;
		if (i == start || i - start > 3)
			return 0;
		groups++;
		if (i == n || s[i] != '.')
			break;
		i++;
		if (groups == 4)
			return 0;
	}
	if (i < n) {
		if (s[i] != '/' || groups != 4 || !parse_digits(s + i + 1, n - i - 1, 2, &ignored))
			return 0;
		*slash = s + i;
	}
	return groups >= 2 ? groups : 0;
}

static int add_net(wl_list *l, const addr_ip *ip, unsigned prefix, const char *s, const origin *o, char *err,
                   size_t errlen)
{
	/* Host bits below the prefix are cleared, not refused: NetAddr::IP accepts 192.0.2.1/24. */
	wl_entry e = {.kind = ENTRY_NET, .net = addr_net_of(ip, prefix)};

	return add_entry(l, &e, o, s, err, errlen);
}

static int add_ipv4(wl_list *l, const char *s, size_t n, int groups, const char *slash, const origin *o,
                    char *err, size_t errlen)
{
	char text[32], buf[300];
	size_t iplen = slash != NULL ? (size_t)(slash - s) : n;
	unsigned prefix = 32;
	addr_ip ip;

	/*
	 * A partial address covers what it leaves off: a.b.c is a.b.c.0/24 and
	 * a.b is a.b.0.0/16. postgrey 1.37 gives a.b a /24 too (its comment says
	 * /16): "192.168" there whitelists 192.168.0.0/24 only. See
	 * docs/greylist-whitelists.md.
	 */
	snprintf(text, sizeof(text), "%.*s%s", (int)iplen, s, groups == 4 ? "" : groups == 3 ? ".0" : ".0.0");
	if (groups == 3)
		prefix = 24;
	else if (groups == 2)
		prefix = 16;
	if (!addr_ip_parse(text, &ip) || ip.version != 4) {
		snprintf(buf, sizeof(buf), "'%.*s' is not an IPv4 address (each number must be 0 to 255)",
		         (int)n, s);
		return fail(o, err, errlen, buf);
	}
	if (slash != NULL) {
		(void)parse_digits(slash + 1, n - iplen - 1, 2, &prefix);
		if (prefix > 32) {
			snprintf(buf, sizeof(buf),
			         "'%.*s': prefix length %u is out of range for IPv4 (0..32)", (int)n, s,
			         prefix);
			return fail(o, err, errlen, buf);
		}
	}
	return add_net(l, &ip, prefix, s, o, err, errlen);
}

static int add_ipv6(wl_list *l, const char *s, size_t n, const origin *o, char *err, size_t errlen)
{
	const char *slash = memchr(s, '/', n);
	size_t iplen = slash != NULL ? (size_t)(slash - s) : n;
	char text[ADDR_NET_STRLEN], buf[300];
	unsigned prefix = 128;
	addr_ip ip;

	if (iplen >= sizeof(text))
		iplen = sizeof(text) - 1; /* then it does not parse */
	memcpy(text, s, iplen);
	text[iplen] = '\0';
	if (!addr_ip_parse(text, &ip) || memchr(text, ':', iplen) == NULL) {
		snprintf(buf, sizeof(buf), "'%.*s' is not an IPv6 address or network",
		         (int)(n < 200 ? n : 200), s);
		return fail(o, err, errlen, buf);
	}
	if (slash != NULL && (!parse_digits(slash + 1, n - iplen - 1, 3, &prefix) || prefix > 128)) {
		snprintf(buf, sizeof(buf), "'%.*s': bad prefix length (expected 0..128 after '/')",
		         (int)(n < 200 ? n : 200), s);
		return fail(o, err, errlen, buf);
	}
	if (ip.version == 4) {
		/* ::ffff:a.b.c.d became IPv4 (so does the client's address): its prefix counts from bit 96.
		 */
		if (prefix < 96) {
			snprintf(buf, sizeof(buf),
			         "'%.*s': an IPv4-mapped network needs a prefix of 96 or more",
			         (int)(n < 200 ? n : 200), s);
			return fail(o, err, errlen, buf);
		}
		prefix -= 96;
	}
	return add_net(l, &ip, prefix, s, o, err, errlen);
}

static bool host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
	       c == '_' || c == '.';
}

/*
 * A host name entry. postgrey takes any word here, but client_name is a
 * host name that Postfix checked (letters, digits, '-', '_', '.'), so a
 * word with other characters ("*.example.com", "1.2.3/24", "/re") could
 * never match: it is refused with its reason rather than kept dead.
 */
static int add_host(wl_list *l, const char *s, size_t n, const origin *o, char *err, size_t errlen)
{
	wl_entry e = {.kind = ENTRY_HOST};
	size_t len = n;
	char buf[400];

	/* "example.com." is the same name; client_name is compared without its trailing dot too. */
	if (len > 1 && s[len - 1] == '.')
		len--;
	for (size_t i = 0; i < len; i++) {
		if (!host_char(s[i])) {
			snprintf(buf, sizeof(buf),
			         "'%.*s' doesn't look like a host name, an IP address or a /regex/",
			         (int)(n < 200 ? n : 200), s);
			return fail(o, err, errlen, buf);
		}
	}
	if (len > GREYWL_HOST_MAX || s[0] == '.' || strstr(s, "..") != NULL) {
		snprintf(buf, sizeof(buf), "'%.*s' is not a valid host name (empty label or too long)",
		         (int)(n < 200 ? n : 200), s);
		return fail(o, err, errlen, buf);
	}
	e.domain = strndup(s, len);
	if (e.domain == NULL)
		return fail(o, err, errlen, "out of memory");
	lower_in_place(e.domain);
	return add_entry(l, &e, o, s, err, errlen);
}

static bool has_space(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (text_is_space(s[i]))
			return true;
	}
	return false;
}

static size_t count_char(const char *s, size_t n, char c)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		k += s[i] == c;
	return k;
}

/* s: one trimmed, non-empty entry of n bytes (NUL-terminated after n). */
static int client_entry(greywl *wl, const char *s, size_t n, const origin *o, char *err, size_t errlen)
{
	const char *slash;
	int groups;

	if (has_space(s, n))
		return fail(o, err, errlen,
		            is_regex(s, n) ? "a /regex/ cannot contain white space (write \\s)"
		                           : "doesn't look like a host name (it contains white space)");
	if (is_regex(s, n))
		return add_regex(&wl->clients, s, n, o, err, errlen);
	groups = ipv4_shape(s, n, &slash);
	if (groups > 0)
		return add_ipv4(&wl->clients, s, n, groups, slash, o, err, errlen);
	if (count_char(s, n, ':') >= 2)
		return add_ipv6(&wl->clients, s, n, o, err, errlen);
	return add_host(&wl->clients, s, n, o, err, errlen);
}

static int recipient_entry(greywl *wl, const char *s, size_t n, const origin *o, char *err, size_t errlen)
{
	wl_entry e = {.kind = ENTRY_RCPT_DOMAIN};
	const char *at;
	char buf[400];

	if (has_space(s, n))
		return fail(o, err, errlen,
		            is_regex(s, n) ? "a /regex/ cannot contain white space (write \\s)"
		                           : "doesn't look like an address (it contains white space)");
	if (is_regex(s, n))
		return add_regex(&wl->recipients, s, n, o, err, errlen);
	if (s[0] == '/') {
		snprintf(buf, sizeof(buf), "'%.*s' looks like a /regex/ without its closing '/'",
		         (int)(n < 200 ? n : 200), s);
		return fail(o, err, errlen, buf);
	}
	at = memchr(s, '@', n);
	if (at != NULL && at == s && n == 1)
		return fail(o, err, errlen, "'@' alone is no address");
	if (at == NULL) {
		e.domain = strndup(s, n);
	} else if (at == s) {
		e.kind = ENTRY_RCPT_AT;
		e.domain = strndup(at + 1, n - 1);
	} else {
		/* user@domain, or user@ for that user at any domain; the domain is the rest, '@' or not. */
		e.kind = at + 1 < s + n ? ENTRY_RCPT_ADDRESS : ENTRY_RCPT_USER;
		e.user = strndup(s, (size_t)(at - s));
		e.domain = strndup(at + 1, n - (size_t)(at - s) - 1);
		if (e.user == NULL) {
			entry_free(&e);
			return fail(o, err, errlen, "out of memory");
		}
	}
	if (e.domain == NULL) {
		entry_free(&e);
		return fail(o, err, errlen, "out of memory");
	}
	return add_entry(&wl->recipients, &e, o, s, err, errlen);
}

typedef int (*entry_fn)(greywl *wl, const char *s, size_t n, const origin *o, char *err, size_t errlen);

/* One raw line: comment cut ('#' anywhere, as postgrey's s/#.*$//), trimmed, blank skipped. */
static int add_line(greywl *wl, entry_fn fn, const char *line, size_t len, const origin *o, bool blank_ok,
                    char *err, size_t errlen)
{
	char *copy, *hash;
	const char *s;
	size_t n;
	int rc;

	if (memchr(line, '\0', len) != NULL)
		return fail(o, err, errlen, "contains a NUL byte");
	copy = strndup(line, len);
	if (copy == NULL)
		return fail(o, err, errlen, "out of memory");
	hash = strchr(copy, '#');
	if (hash != NULL)
		*hash = '\0';
	s = text_trim(copy, &n);
	if (n == 0)
		rc = blank_ok ? 0 : fail(o, err, errlen, "empty entry");
	else {
		((char *)s)[n] = '\0';
		rc = fn(wl, s, n, o, err, errlen);
	}
	free(copy);
	return rc;
}

static int load(greywl *wl, entry_fn fn, const char *text, size_t len, const char *source, char *err,
                size_t errlen)
{
	origin o = {.source = source != NULL ? source : "(whitelist)", .line = 0};
	size_t pos = 0;

	if (wl == NULL || (text == NULL && len > 0))
		return fail(&o, err, errlen, "no whitelist");
	while (pos < len) {
		const char *nl = memchr(text + pos, '\n', len - pos);
		size_t end = nl != NULL ? (size_t)(nl - text) : len;

		o.line++;
		if (add_line(wl, fn, text + pos, end - pos, &o, true, err, errlen) != 0)
			return -1;
		pos = end + 1;
	}
	return 0;
}

int greywl_load_clients(greywl *wl, const char *text, size_t len, const char *source, char *err,
                        size_t errlen)
{
	return load(wl, client_entry, text, len, source, err, errlen);
}

int greywl_load_recipients(greywl *wl, const char *text, size_t len, const char *source, char *err,
                           size_t errlen)
{
	return load(wl, recipient_entry, text, len, source, err, errlen);
}

static int add_one(greywl *wl, entry_fn fn, const char *entry, const char *source, char *err, size_t errlen)
{
	origin o = {.source = source != NULL ? source : "(whitelist)", .line = 0};

	if (wl == NULL || entry == NULL)
		return fail(&o, err, errlen, "empty entry");
	return add_line(wl, fn, entry, strlen(entry), &o, false, err, errlen);
}

int greywl_add_client(greywl *wl, const char *entry, const char *source, char *err, size_t errlen)
{
	return add_one(wl, client_entry, entry, source, err, errlen);
}

int greywl_add_recipient(greywl *wl, const char *entry, const char *source, char *err, size_t errlen)
{
	return add_one(wl, recipient_entry, entry, source, err, errlen);
}

/* ---- matching ---- */

static void report(const wl_entry *e, char *why, size_t whylen)
{
	if (why != NULL && whylen > 0)
		snprintf(why, whylen, "%s", e->label);
}

/*
 * A match-limit error, or no memory for match data, is no match: a
 * whitelist never errs towards passing. *md is made on the first regex a
 * lookup tries and freed by the caller.
 */
static bool regex_hit(const greywl *wl, const wl_entry *e, const char *subject, size_t len,
                      pcre2_match_data **md)
{
	if (*md == NULL)
		*md = pcre2_match_data_create(1, NULL);
	if (*md == NULL)
		return false;
	return pcre2_match(e->code, (PCRE2_SPTR)subject, len, 0, 0, *md, wl->mctx) >= 0;
}

/*
 * client_name in the form host entries are kept in: lower case, one
 * trailing dot dropped. false when there is no name to match: NULL, "",
 * Postfix's "unknown", an address literal, or something no resolver
 * returns (white space, control characters, over 253 characters).
 */
static bool client_name_normalise(const char *name, char *out, size_t outlen, size_t *outn)
{
	size_t n;

	if (name == NULL || name[0] == '\0' || name[0] == '[' || caseless_eq(name, "unknown", 8))
		return false;
	n = strlen(name);
	if (n > 1 && name[n - 1] == '.')
		n--;
	if (n > GREYWL_HOST_MAX || n >= outlen)
		return false;
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)name[i] <= ' ' || name[i] == 0x7f)
			return false;
		out[i] = ascii_lower(name[i]);
	}
	out[n] = '\0';
	*outn = n;
	return true;
}

/* name is the entry's domain or ends in "." + domain: a suffix on a label boundary only. */
static bool host_hit(const char *name, size_t n, const char *domain)
{
	size_t d = strlen(domain);

	if (n == d)
		return memcmp(name, domain, d) == 0;
	return n > d && name[n - d - 1] == '.' && memcmp(name + n - d, domain, d) == 0;
}

bool greywl_match_client(const greywl *wl, const char *client_address, const char *client_name, char *why,
                         size_t whylen)
{
	char name[GREYWL_HOST_MAX + 1];
	size_t namelen = 0;
	bool have_name, have_ip, hit = false;
	pcre2_match_data *md = NULL;
	addr_ip ip;

	if (wl == NULL)
		return false;
	have_name = client_name_normalise(client_name, name, sizeof(name), &namelen);
	have_ip = client_address != NULL && addr_ip_parse(client_address, &ip);
	for (size_t i = 0; i < wl->clients.n && !hit; i++) {
		const wl_entry *e = &wl->clients.v[i];

		if (e->kind == ENTRY_HOST)
			hit = have_name && host_hit(name, namelen, e->domain);
		else if (e->kind == ENTRY_NET)
			hit = have_ip && addr_net_contains(&e->net, &ip);
		else if (e->kind == ENTRY_REGEX)
			hit = have_name && regex_hit(wl, e, name, namelen, &md);
		if (hit)
			report(e, why, whylen);
	}
	pcre2_match_data_free(md);
	return hit;
}

/*
 * postgrey's ^user(?:\+[^@]+)?\@ : user, then optionally '+' and at least
 * one character that is not '@', then '@'. Returns what follows that '@',
 * or NULL. [^@] cannot pass an '@', so the first '@' after the user is the
 * only one the pattern can end on.
 */
static const char *after_user(const char *r, size_t rlen, const char *user)
{
	size_t u = strlen(user);
	const char *p;

	if (rlen <= u || !caseless_eq(r, user, u))
		return NULL;
	p = r + u;
	if (*p == '+') {
		const char *q = p + 1;

		while (*q != '\0' && *q != '@')
			q++;
		if (q == p + 1 || *q != '@')
			return NULL;
		p = q;
	}
	return *p == '@' ? p + 1 : NULL;
}

static bool recipient_hit(const greywl *wl, const wl_entry *e, const char *r, size_t rlen,
                          pcre2_match_data **md)
{
	const char *rest;
	size_t d = e->domain != NULL ? strlen(e->domain) : 0;

	switch (e->kind) {
	case ENTRY_REGEX:
		return regex_hit(wl, e, r, rlen, md);
	case ENTRY_RCPT_ADDRESS:
		rest = after_user(r, rlen, e->user);
		return rest != NULL && strlen(rest) == d && caseless_eq(rest, e->domain, d);
	case ENTRY_RCPT_USER:
		return after_user(r, rlen, e->user) != NULL;
	case ENTRY_RCPT_AT:
		return rlen > d && r[rlen - d - 1] == '@' && caseless_suffix(r, rlen, e->domain, d);
	case ENTRY_RCPT_DOMAIN:
		/* postgrey's (?:\@|\.)domain$: the domain or one below it. */
		return rlen > d && (r[rlen - d - 1] == '@' || r[rlen - d - 1] == '.') &&
		       caseless_suffix(r, rlen, e->domain, d);
	default:
		return false;
	}
}

bool greywl_match_recipient(const greywl *wl, const char *recipient, char *why, size_t whylen)
{
	pcre2_match_data *md = NULL;
	bool hit = false;
	size_t rlen;

	if (wl == NULL || recipient == NULL || recipient[0] == '\0')
		return false;
	rlen = strlen(recipient);
	for (size_t i = 0; i < wl->recipients.n && !hit; i++) {
		hit = recipient_hit(wl, &wl->recipients.v[i], recipient, rlen, &md);
		if (hit)
			report(&wl->recipients.v[i], why, whylen);
	}
	pcre2_match_data_free(md);
	return hit;
}
