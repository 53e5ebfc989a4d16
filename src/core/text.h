/*
 * text: trimming one line of a list (a trap file, a whitelist file, a
 * config list), shared so that every list treats surrounding white space
 * alike: ' ', '\t', '\n', '\v', '\f', '\r' (isspace() in the C locale, so
 * a CRLF file reads like an LF one). Also the small formatting helpers of
 * hot paths that would otherwise call snprintf per request (a profile of
 * the DNS checks found snprintf's internals at ~16% of a worker's user
 * time). Pure; header-only.
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

/*
 * Copies src into dst of size bytes as snprintf(dst, size, "%s", src) does:
 * cut to size - 1 bytes and always terminated (nothing written when size
 * is 0). Returns the length written.
 */
static inline size_t text_copy(char *dst, size_t size, const char *src)
{
	size_t n;

	if (size == 0)
		return 0;
	n = strlen(src); /* not strnlen: GCC's -Wstringop-overread takes size for src's size */
	if (n > size - 1)
		n = size - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
	return n;
}

/* Writes v (0-255) in decimal at out, without a terminator; returns the 1-3 bytes written. */
static inline size_t text_put_u8(char *out, unsigned char v)
{
	size_t n = 0;

	if (v >= 100)
		out[n++] = (char)('0' + v / 100);
	if (v >= 10)
		out[n++] = (char)('0' + v / 10 % 10);
	out[n++] = (char)('0' + v % 10);
	return n;
}

#endif
