/*
 * text: trimming one line of a list (a trap file, a whitelist file, a
 * config list), shared so that every list treats surrounding white space
 * alike: ' ', '\t', '\n', '\v', '\f', '\r' (isspace() in the C locale, so
 * a CRLF file reads like an LF one). Pure; header-only.
 */
#ifndef SPAMTRAPD_TEXT_H
#define SPAMTRAPD_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static inline bool text_is_space(char c)
{
	return c == ' ' || (c >= '\t' && c <= '\r');
}

/* s without leading and trailing white space: returns where it starts, *len gets its length. */
static inline const char *text_trim(const char *s, size_t *len)
{
	size_t n;

	while (text_is_space(*s))
		s++;
	n = strlen(s);
	while (n > 0 && text_is_space(s[n - 1]))
		n--;
	*len = n;
	return s;
}

/* A trimmed copy of s that the caller frees; NULL when out of memory. */
static inline char *text_trim_dup(const char *s)
{
	size_t len;
	const char *start = text_trim(s, &len);

	return strndup(start, len);
}

#endif
