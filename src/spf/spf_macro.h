/*
 * spf_macro: RFC 7208 section 7 macro strings: syntax check and
 * expansion. Pure: the values of the macro letters come from the caller
 * (the %{p} name must have been validated already).
 */
#ifndef SPAMTRAPD_SPF_MACRO_H
#define SPAMTRAPD_SPF_MACRO_H

#include <stdbool.h>
#include <stddef.h>

struct spf_macro_vars {
	const char *sender;   /* s: local-part@domain */
	const char *local;    /* l */
	const char *domain_o; /* o: the sender's domain */
	const char *domain;   /* d: the current <domain> */
	int family;           /* AF_INET or AF_INET6 */
	const unsigned char *ip;
	const char *ptr;      /* p: validated name, or "unknown" */
	const char *helo;     /* h */
	const char *receiver; /* r */
	long long now;        /* t */
};

/* Which grammar: a domain-spec's macro-string, or an explain-string. */
enum spf_macro_kind { SPF_MACRO_DOMAIN, SPF_MACRO_EXPLAIN };

/* true when s[0..len) is a valid macro-string / explain-string. */
bool spf_macro_valid(const char *s, size_t len, enum spf_macro_kind kind);

/* true when the string uses %{p} (so the caller must validate first). */
bool spf_macro_uses_p(const char *s, size_t len);

/*
 * Expands s into out (NUL-terminated, outsz >= 256). SPF_MACRO_DOMAIN: the
 * result is a name for a DNS query, cut from the left label by label to at
 * most 253 characters (RFC 7208 7.3), whatever the length of the full
 * expansion. SPF_MACRO_EXPLAIN: the text, cut at outsz - 1. Returns 0, or
 * -1 on a syntax error (invalid strings are refused, never half-expanded).
 */
int spf_macro_expand(const char *s, size_t len, enum spf_macro_kind kind, const struct spf_macro_vars *v,
                     char *out, size_t outsz);

#endif
