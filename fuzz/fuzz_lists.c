/*
 * libFuzzer target for trap and whitelist files (core/trapset, core/whitelist
 * and the strset/netset they build on). Byte 0: bit 0 include_subdomains,
 * bits 1-2 the recipient delimiters, bits 3-5 the size of the "matched"
 * buffer. The rest is lines: "?SENDER<TAB>CLIENT" is a query, any other
 * line an entry that goes, as a line of a file (blank lines and '#'
 * comments skipped as config.c does), to both trapset_add_line and
 * whitelist_add_line.
 *
 * A simple model (lists scanned one by one, with addr.c's normalisation as
 * the documented canonical form) predicts whether each line is accepted
 * and what trapset_match (the trap reported) and whitelist_check answer for
 * every query; trapset_count must count the distinct entries. On top of
 * the model, every accepted entry must hit: an address as written and with
 * an extension, any address of a trap or whitelisted domain (and of a
 * subdomain with include_subdomains), every address of a whitelisted
 * network. Failures must leave a message in err.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"
#include "core/text.h"
#include "core/trapset.h"
#include "core/whitelist.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ENTRIES 48
#define MAX_PATTERNS 8
#define MAX_QUERIES 32
#define LINE_MAX_BYTES 4096 /* config.c's LIST_LINE_MAX */
#define ERR_LEN 160

static const char *const delimiter_sets[] = {"", "+", "+-", "-"};
static const size_t matched_lens[] = {TRAPSET_MATCH_MAX, 1, 2, 7, 16, 40, 100, 600};

typedef struct strlist {
	char *s[MAX_ENTRIES];
	size_t n;
} strlist;

typedef struct model {
	const char *delims;
	bool subdomains;
	size_t matchedlen;
	trapset *traps;
	whitelist *wl;
	strlist trap_addrs, trap_domains, patterns; /* normalised; pattern texts */
	strlist wl_addrs, wl_domains;
	addr_net nets[MAX_ENTRIES];
	size_t nnets;
} model;

static bool list_has(const strlist *l, const char *s)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->s[i], s) == 0)
			return true;
	return false;
}

/* Adds a copy unless present; counts distinct entries like the sets do. */
static void list_add(strlist *l, const char *s)
{
	if (list_has(l, s))
		return;
	CHECK(l->n < MAX_ENTRIES);
	l->s[l->n] = strdup(s);
	CHECK(l->s[l->n] != NULL);
	l->n++;
}

static void list_clear(strlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->s[i]);
	l->n = 0;
}

/* The normalised form of a trap or whitelist address (addr.h), or false when it is none. */
static bool model_address(const char *s, char *norm)
{
	char again[ADDR_MAX];

	return addr_normalise(s, strlen(s), norm, ADDR_MAX) == ADDR_OK && norm[0] != '@' &&
	       addr_domain(norm) != NULL &&
	       addr_normalise(norm, strlen(norm), again, sizeof again) == ADDR_OK && strcmp(again, norm) == 0;
}

static void check_err(int rc, const char *err)
{
	CHECK(rc == 0 || rc == -1);
	CHECK(rc == 0 || err[0] != '\0');
	CHECK_TERMINATED(err, ERR_LEN);
}

/* ---- adding one line ---- */

static void add_trap_line(model *m, const char *line, const char *t, size_t tlen)
{
	char err[ERR_LEN] = "", norm[ADDR_MAX];
	int rc = trapset_add_line(m->traps, line, err, sizeof err);

	check_err(rc, err);
	if (t[0] == '/') {
		if (tlen < 3 || t[tlen - 1] != '/')
			CHECK(rc == -1); /* "/", "//", "/x" */
		if (rc == 0) {
			char *re = strndup(t + 1, tlen - 2);

			CHECK(re != NULL);
			m->patterns.s[m->patterns.n++] = re; /* each pattern counts, even a repeated one */
		}
	} else if (t[0] == '@') {
		CHECK((rc == 0) == addr_domain_normalise(t, norm, ADDR_DOMAIN_MAX + 1));
		if (rc == 0)
			list_add(&m->trap_domains, norm);
	} else {
		CHECK((rc == 0) == model_address(t, norm));
		if (rc == 0)
			list_add(&m->trap_addrs, norm);
	}
	CHECK(trapset_count(m->traps) == m->trap_addrs.n + m->trap_domains.n + m->patterns.n);
}

/* whitelist.h: an address, "@domain" or a domain, or a network. */
static bool looks_like_network(const char *s)
{
	return strchr(s, ':') != NULL || strchr(s, '/') != NULL || strspn(s, "0123456789.") == strlen(s);
}

static void add_wl_line(model *m, const char *line, const char *t)
{
	char err[ERR_LEN] = "", norm[ADDR_MAX], neterr[ERR_LEN];
	int rc = whitelist_add_line(m->wl, line, err, sizeof err);
	addr_net net;

	check_err(rc, err);
	if (t[0] != '@' && strchr(t, '@') != NULL) {
		CHECK((rc == 0) == model_address(t, norm));
		if (rc == 0)
			list_add(&m->wl_addrs, norm);
	} else if (t[0] != '@' && looks_like_network(t)) {
		CHECK((rc == 0) == addr_net_parse(t, &net, neterr, sizeof neterr));
		if (rc == 0)
			m->nets[m->nnets++] = net;
	} else {
		CHECK((rc == 0) == addr_domain_normalise(t, norm, ADDR_DOMAIN_MAX + 1));
		if (rc == 0)
			list_add(&m->wl_domains, norm);
	}
}

/* ---- what the model expects of a query ---- */

/* The trap the model reports for rcpt ("" for none); false when only a pattern could tell. */
static bool expect_trap(const model *m, const char *rcpt, char *want)
{
	char full[ADDR_MAX], base[ADDR_MAX];
	const char *domain;
	bool extended;

	want[0] = '\0';
	if (addr_normalise(rcpt, strlen(rcpt), full, sizeof full) != ADDR_OK)
		return true;
	extended = addr_strip_extension(full, m->delims, base, sizeof base);
	domain = addr_domain(full);
	if (list_has(&m->trap_addrs, full))
		snprintf(want, TRAPSET_MATCH_MAX, "%s", full);
	else if (extended && list_has(&m->trap_addrs, base))
		snprintf(want, TRAPSET_MATCH_MAX, "%s", base);
	else if (domain != NULL && list_has(&m->trap_domains, domain))
		snprintf(want, TRAPSET_MATCH_MAX, "@%s", domain);
	else
		return m->patterns.n == 0;
	return true;
}

/* Runs trapset_match on rcpt and checks it against the model; returns whether it hit. */
static bool query_trap(const model *m, const char *rcpt)
{
	char want[TRAPSET_MATCH_MAX], shown[TRAPSET_MATCH_MAX];
	char *matched = malloc(m->matchedlen);
	bool known = expect_trap(m, rcpt, want), hit;

	CHECK(matched != NULL);
	hit = trapset_match(m->traps, rcpt, matched, m->matchedlen);
	if (hit)
		CHECK_TERMINATED(matched, m->matchedlen); /* written only on a match */
	if (known) {
		CHECK(hit == (want[0] != '\0'));
		if (hit)
			CHECK(strncmp(matched, want, m->matchedlen - 1) == 0);
	} else if (hit) {
		bool found = false;

		for (size_t i = 0; i < m->patterns.n && !found; i++) {
			snprintf(shown, sizeof shown, "/%s/", m->patterns.s[i]);
			found = strncmp(matched, shown, m->matchedlen - 1) == 0;
		}
		CHECK(found);
	}
	free(matched);
	return hit;
}

static bool domain_listed(const model *m, const char *domain)
{
	if (list_has(&m->wl_domains, domain))
		return true;
	for (const char *dot = strchr(domain, '.'); m->subdomains && dot != NULL; dot = strchr(dot + 1, '.'))
		if (dot[1] != '\0' && list_has(&m->wl_domains, dot + 1))
			return true;
	return false;
}

static whitelist_match expect_whitelist(const model *m, const char *sender, const char *client)
{
	char norm[ADDR_MAX];
	const char *domain;
	addr_ip ip;

	if (client != NULL && strcmp(client, "unknown") != 0 && addr_ip_parse(client, &ip))
		for (size_t i = 0; i < m->nnets; i++)
			if (addr_net_contains(&m->nets[i], &ip))
				return WHITELIST_CLIENT_NETWORK;
	if (sender == NULL || addr_normalise(sender, strlen(sender), norm, sizeof norm) != ADDR_OK)
		return WHITELIST_NONE;
	if (list_has(&m->wl_addrs, norm))
		return WHITELIST_SENDER_ADDRESS;
	domain = addr_domain(norm);
	return domain != NULL && domain_listed(m, domain) ? WHITELIST_SENDER_DOMAIN : WHITELIST_NONE;
}

static whitelist_match query_whitelist(const model *m, const char *sender, const char *client)
{
	whitelist_match got = whitelist_check(m->wl, sender, client);
	whitelist_match by_sender = whitelist_check_sender(m->wl, sender);

	CHECK(got == expect_whitelist(m, sender, client));
	/* The halves decide.c uses: the network first, else the sender's own match. */
	CHECK(whitelist_check_client(m->wl, client) == (got == WHITELIST_CLIENT_NETWORK));
	CHECK(got == WHITELIST_CLIENT_NETWORK || by_sender == got);
	CHECK(by_sender == expect_whitelist(m, sender, NULL));
	return got;
}

/* ---- every accepted entry must hit ---- */

/* "local+tag@domain" for a trap address with a plain local part; false when none applies. */
static bool tagged(const model *m, const char *norm, char *out, size_t outlen)
{
	const char *at = strrchr(norm, '@');
	size_t local = (size_t)(at - norm);

	if (m->delims[0] == '\0' || local == 0 || norm[0] == '"' || strcspn(norm, m->delims) < local ||
	    (strchr(m->delims, '-') != NULL && strncmp(norm, "owner-", 6) == 0))
		return false;
	return (size_t)snprintf(out, outlen, "%.*s%ctag%s", (int)local, norm, m->delims[0], at) < outlen;
}

static void check_trap_entries(const model *m)
{
	char q[ADDR_MAX + 16];

	for (size_t i = 0; i < m->trap_addrs.n; i++) {
		CHECK(query_trap(m, m->trap_addrs.s[i]));
		if (tagged(m, m->trap_addrs.s[i], q, ADDR_MAX))
			CHECK(query_trap(m, q));
	}
	for (size_t i = 0; i < m->trap_domains.n; i++) {
		snprintf(q, sizeof q, "Someone@%s", m->trap_domains.s[i]);
		CHECK(query_trap(m, q));
	}
}

/* The lowest and highest address of net. */
static void net_ends(const addr_net *net, char *low, char *high)
{
	addr_net host = addr_net_of(&net->ip, 128);
	unsigned bits = net->ip.version == 4 ? 32 : 128;

	addr_net_format(&host, low, ADDR_NET_STRLEN);
	for (unsigned b = net->prefix; b < bits; b++)
		host.ip.bytes[b / 8] |= (uint8_t)(0x80 >> (b % 8));
	addr_net_format(&host, high, ADDR_NET_STRLEN);
}

static void check_wl_entries(const model *m)
{
	char q[ADDR_MAX + 16], low[ADDR_NET_STRLEN], high[ADDR_NET_STRLEN];
	whitelist_match r;

	for (size_t i = 0; i < m->wl_addrs.n; i++)
		CHECK(query_whitelist(m, m->wl_addrs.s[i], NULL) == WHITELIST_SENDER_ADDRESS);
	for (size_t i = 0; i < m->wl_domains.n; i++) {
		snprintf(q, sizeof q, "someone@%s", m->wl_domains.s[i]);
		r = query_whitelist(m, q, "unknown");
		CHECK(r == WHITELIST_SENDER_DOMAIN || r == WHITELIST_SENDER_ADDRESS);
		snprintf(q, sizeof q, "someone@sub.%s", m->wl_domains.s[i]);
		r = query_whitelist(m, q, NULL);
		CHECK(!m->subdomains || r == WHITELIST_SENDER_DOMAIN || r == WHITELIST_SENDER_ADDRESS);
	}
	for (size_t i = 0; i < m->nnets; i++) {
		addr_ip ip;

		net_ends(&m->nets[i], low, high);
		CHECK(query_whitelist(m, NULL, low) == WHITELIST_CLIENT_NETWORK);
		r = query_whitelist(m, "<>", high);
		/* ::/80 ends in ::ffff:255.255.255.255, which a client address is as IPv4 (addr.h). */
		CHECK(r == WHITELIST_CLIENT_NETWORK ||
		      (addr_ip_parse(high, &ip) && ip.version != m->nets[i].ip.version));
	}
}

/* ---- the input ---- */

static void query_line(const model *m, char *q)
{
	char *tab = strchr(q, '\t');

	if (tab != NULL)
		*tab = '\0';
	query_trap(m, q);
	query_whitelist(m, q, tab != NULL ? tab + 1 : NULL);
}

/* One line of the input (NUL-terminated, no LF); queries are kept for later. */
static void take_line(model *m, char *line, char **queries, size_t *nqueries)
{
	size_t tlen;
	const char *t = text_trim(line, &tlen);
	char *entry;

	if (line[0] == '?') {
		if (*nqueries < MAX_QUERIES)
			queries[(*nqueries)++] = line + 1;
		return;
	}
	if (tlen == 0 || t[0] == '#' || m->trap_addrs.n + m->trap_domains.n + m->patterns.n >= MAX_ENTRIES ||
	    m->wl_addrs.n + m->wl_domains.n + m->nnets >= MAX_ENTRIES ||
	    (t[0] == '/' && m->patterns.n >= MAX_PATTERNS))
		return;
	entry = strndup(t, tlen);
	CHECK(entry != NULL);
	add_trap_line(m, line, entry, tlen);
	add_wl_line(m, line, entry);
	free(entry);
}

/* Feeds each line of text[0..n) (LF-separated; a line with a NUL byte or too long is refused as config.c
 * does). */
static void take_lines(model *m, char *text, size_t n, char **queries, size_t *nqueries)
{
	char *end = text + n;

	for (char *p = text; p <= end;) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);

		p[len] = '\0'; /* the LF, or the NUL after the text */
		if (memchr(p, '\0', len) == NULL && len <= LINE_MAX_BYTES)
			take_line(m, p, queries, nqueries);
		p += len + 1;
	}
}

static void model_free(model *m)
{
	trapset_free(m->traps);
	whitelist_free(m->wl);
	list_clear(&m->trap_addrs);
	list_clear(&m->trap_domains);
	list_clear(&m->patterns);
	list_clear(&m->wl_addrs);
	list_clear(&m->wl_domains);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	model m = {0};
	char *text, *queries[MAX_QUERIES];
	size_t nqueries = 0;

	if (size < 1)
		return 0;
	m.subdomains = data[0] & 1;
	m.delims = delimiter_sets[(data[0] >> 1) & 3];
	m.matchedlen = matched_lens[(data[0] >> 3) & 7];
	m.traps = trapset_new(m.delims);
	m.wl = whitelist_new(m.subdomains);
	text = malloc(size);
	CHECK(m.traps != NULL && m.wl != NULL && text != NULL);
	memcpy(text, data + 1, size - 1);
	text[size - 1] = '\0';
	take_lines(&m, text, size - 1, queries, &nqueries);
	for (size_t i = 0; i < nqueries; i++)
		query_line(&m, queries[i]);
	check_trap_entries(&m);
	check_wl_entries(&m);
	CHECK(!trapset_match(m.traps, NULL, NULL, 0) && whitelist_check(m.wl, NULL, NULL) == WHITELIST_NONE);
	model_free(&m);
	free(text);
	return 0;
}
