/*
 * trapset: the compiled set of spamtrap recipients (see trapset.h).
 *
 * A recipient is normalised (addr_normalise) and its extension removed with
 * the Postfix recipient_delimiter characters, then tried in this order:
 *   1. exact addresses: the full address, then the address without the
 *      extension ("trap+x@d" hits the trap "trap@d");
 *   2. domains: the recipient's domain exactly (no subdomains);
 *   3. patterns: each PCRE2 pattern (caseless) against the address without
 *      the extension, then against the full address when it had one.
 * Building reports errors into the caller's buffer; matching never fails
 * loudly: an unparsable recipient, or a pattern that hits the match limit,
 * is simply no trap (a missed trap costs a blocklist entry, a false one
 * could cost legitimate mail).
 *
 * Matching shares only read-only state (the sets, compiled patterns and a
 * match context with fixed limits, which PCRE2 allows threads to share);
 * match data is allocated per call.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "core/trapset.h"

#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"
#include "core/strset.h"
#include "core/text.h"

/* RFC 1035 2.3.4: a domain name is at most 255 octets. */
/* Caps backtracking so that a pathological pattern cannot stall a worker. */
#define TRAPSET_MATCH_LIMIT 100000
#define TRAPSET_DEPTH_LIMIT 10000

typedef struct trap_pattern {
	pcre2_code *code;
	char *text;
} trap_pattern;

struct trapset {
	char *delimiters;
	strset *addresses;
	strset *domains;
	trap_pattern *patterns;
	size_t npatterns, patterns_cap;
	pcre2_match_context *mctx;
};

trapset *trapset_new(const char *delimiters)
{
	trapset *set = calloc(1, sizeof(*set));

	if (set == NULL)
		return NULL;
	set->delimiters = strdup(delimiters != NULL ? delimiters : "");
	set->addresses = strset_new(64);
	set->domains = strset_new(16);
	set->mctx = pcre2_match_context_create(NULL);
	if (set->delimiters == NULL || set->addresses == NULL || set->domains == NULL || set->mctx == NULL) {
		trapset_free(set);
		return NULL;
	}
	pcre2_set_match_limit(set->mctx, TRAPSET_MATCH_LIMIT);
	pcre2_set_depth_limit(set->mctx, TRAPSET_DEPTH_LIMIT);
	return set;
}

void trapset_free(trapset *set)
{
	if (set == NULL)
		return;
	for (size_t i = 0; i < set->npatterns; i++) {
		pcre2_code_free(set->patterns[i].code);
		free(set->patterns[i].text);
	}
	free(set->patterns);
	pcre2_match_context_free(set->mctx);
	strset_free(set->addresses);
	strset_free(set->domains);
	free(set->delimiters);
	free(set);
}

int trapset_add_address(trapset *set, const char *address, char *err, size_t errlen)
{
	char norm[ADDR_MAX];

	if (!addr_entry_normalise(address, norm, sizeof(norm))) {
		snprintf(err, errlen, "'%.64s' is not a trap address (expected user@domain)", address);
		return -1;
	}
	if (strset_add(set->addresses, norm, strlen(norm)) != 0) {
		snprintf(err, errlen, "out of memory adding trap address %.64s", norm);
		return -1;
	}
	return 0;
}

int trapset_add_domain(trapset *set, const char *domain, char *err, size_t errlen)
{
	char norm[ADDR_DOMAIN_MAX + 1];

	if (!addr_domain_normalise(domain, norm, sizeof(norm))) {
		snprintf(err, errlen, "'%.64s' is not a trap domain (expected example.com)", domain);
		return -1;
	}
	if (strset_add(set->domains, norm, strlen(norm)) != 0) {
		snprintf(err, errlen, "out of memory adding trap domain %.64s", norm);
		return -1;
	}
	return 0;
}

static int patterns_reserve(trapset *set)
{
	size_t cap = set->patterns_cap ? set->patterns_cap * 2 : 8;
	trap_pattern *p;

	if (set->npatterns < set->patterns_cap)
		return 0;
	p = realloc(set->patterns, cap * sizeof(*p));
	if (p == NULL)
		return -1;
	set->patterns = p;
	set->patterns_cap = cap;
	return 0;
}

static pcre2_code *compile_pattern(const char *regex, char *err, size_t errlen)
{
	int errcode;
	PCRE2_SIZE erroffset;
	PCRE2_UCHAR msg[256];
	pcre2_code *code;

	code = pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED, PCRE2_CASELESS, &errcode, &erroffset,
	                     NULL);
	if (code == NULL) {
		pcre2_get_error_message(errcode, msg, sizeof(msg));
		snprintf(err, errlen, "bad trap pattern /%.200s/: %s at offset %zu", regex, (const char *)msg,
		         (size_t)erroffset);
		return NULL;
	}
	/* JIT is an optimisation only: without it (no JIT support, no executable memory) PCRE2 interprets. */
	(void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
	return code;
}

int trapset_add_pattern(trapset *set, const char *regex, char *err, size_t errlen)
{
	pcre2_code *code;
	char *text;

	if (regex[0] == '\0') {
		snprintf(err, errlen, "empty trap pattern: it would make every recipient a trap");
		return -1;
	}
	code = compile_pattern(regex, err, errlen);
	if (code == NULL)
		return -1;
	text = strdup(regex);
	if (text == NULL || patterns_reserve(set) != 0) {
		free(text);
		pcre2_code_free(code);
		snprintf(err, errlen, "out of memory adding trap pattern");
		return -1;
	}
	set->patterns[set->npatterns].code = code;
	set->patterns[set->npatterns].text = text;
	set->npatterns++;
	return 0;
}

/* Dispatch a trimmed, NUL-terminated trap file entry by its first character. */
static int add_entry(trapset *set, char *s, char *err, size_t errlen)
{
	size_t len = strlen(s);

	if (len == 0) {
		snprintf(err, errlen, "empty trap entry");
		return -1;
	}
	if (s[0] == '/') {
		if (len < 2 || s[len - 1] != '/') {
			snprintf(err, errlen, "'%.64s': a trap pattern is written /regex/", s);
			return -1;
		}
		s[len - 1] = '\0';
		return trapset_add_pattern(set, s + 1, err, errlen);
	}
	if (s[0] == '@')
		return trapset_add_domain(set, s, err, errlen);
	return trapset_add_address(set, s, err, errlen);
}

int trapset_add_line(trapset *set, const char *line, char *err, size_t errlen)
{
	char *copy = text_trim_dup(line);
	int rc;

	if (copy == NULL) {
		snprintf(err, errlen, "out of memory reading a trap entry");
		return -1;
	}
	rc = add_entry(set, copy, err, errlen);
	free(copy);
	return rc;
}

static bool report(const char *what, const char *prefix, const char *suffix, char *matched, size_t matchedlen)
{
	if (matched != NULL && matchedlen > 0)
		snprintf(matched, matchedlen, "%s%s%s", prefix, what, suffix);
	return true;
}

static bool pattern_hit(const trapset *set, const pcre2_code *code, const char *subject, pcre2_match_data *md)
{
	int rc = pcre2_match(code, (PCRE2_SPTR)subject, strlen(subject), 0, 0, md, set->mctx);

	/* rc == 0 means a match whose offsets did not fit; errors (< -1, e.g. the match limit) are no match.
	 */
	return rc >= 0;
}

/* full is NULL when the recipient had no extension. */
static bool match_patterns(const trapset *set, const char *base, const char *full, char *matched,
                           size_t matchedlen)
{
	pcre2_match_data *md;
	bool hit = false;

	if (set->npatterns == 0)
		return false;
	md = pcre2_match_data_create(1, NULL);
	if (md == NULL)
		return false;
	for (size_t i = 0; i < set->npatterns && !hit; i++) {
		const trap_pattern *p = &set->patterns[i];

		if (pattern_hit(set, p->code, base, md) ||
		    (full != NULL && pattern_hit(set, p->code, full, md)))
			hit = report(p->text, "/", "/", matched, matchedlen);
	}
	pcre2_match_data_free(md);
	return hit;
}

bool trapset_match(const trapset *set, const char *rcpt, char *matched, size_t matchedlen)
{
	char full[ADDR_MAX], base[ADDR_MAX];
	const char *domain;
	bool extended;

	if (set == NULL || rcpt == NULL)
		return false;
	if (addr_normalise(rcpt, strlen(rcpt), full, sizeof(full)) != ADDR_OK)
		return false;
	extended = addr_strip_extension(full, set->delimiters, base, sizeof(base));
	if (strset_contains(set->addresses, full, strlen(full)))
		return report(full, "", "", matched, matchedlen);
	if (extended && strset_contains(set->addresses, base, strlen(base)))
		return report(base, "", "", matched, matchedlen);
	domain = addr_domain(full);
	if (domain != NULL && strset_contains(set->domains, domain, strlen(domain)))
		return report(domain, "@", "", matched, matchedlen);
	return match_patterns(set, base, extended ? full : NULL, matched, matchedlen);
}

size_t trapset_count(const trapset *set)
{
	if (set == NULL)
		return 0;
	return strset_count(set->addresses) + strset_count(set->domains) + set->npatterns;
}
