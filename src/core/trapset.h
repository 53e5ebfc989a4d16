/*
 * trapset: the compiled set of spamtrap recipients: exact addresses (hash
 * set), whole domains (hash set) and PCRE2 patterns (case-insensitive, JIT
 * compiled when available). Built once per config snapshot, then read by
 * any number of threads. No I/O: config.c reads trap files and feeds lines.
 */
#ifndef SPAMTRAPD_TRAPSET_H
#define SPAMTRAPD_TRAPSET_H

#include <stdbool.h>
#include <stddef.h>

/* Longest description of a matched trap: an address, "@domain" or "/re/". */
#define TRAPSET_MATCH_MAX 600

typedef struct trapset trapset;

/* delimiters: Postfix recipient_delimiter characters ("" for none); copied. */
trapset *trapset_new(const char *delimiters);
void trapset_free(trapset *set); /* accepts NULL */

/* Each returns 0, or -1 with a message in err (bad address, bad regex). */
int trapset_add_address(trapset *set, const char *address, char *err, size_t errlen);
int trapset_add_domain(trapset *set, const char *domain, char *err, size_t errlen);
int trapset_add_pattern(trapset *set, const char *regex, char *err, size_t errlen);
/*
 * One line of a trap file: "user@example.com", "@example.com" (a domain) or
 * "/regex/". Surrounding blanks are ignored; the caller skips blank lines
 * and '#' comments.
 */
int trapset_add_line(trapset *set, const char *line, char *err, size_t errlen);

/*
 * Is this recipient a trap? rcpt is any envelope form (normalised here:
 * brackets, case, extension). On a match, the trap that matched is written
 * to matched (the trap address, "@domain", or "/regex/"), if matched is not
 * NULL.
 */
bool trapset_match(const trapset *set, const char *rcpt, char *matched, size_t matchedlen);

size_t trapset_count(const trapset *set);

#endif
