/*
 * greynorm: the greylist key of an envelope sender (see greynorm.h).
 *
 * The local part goes through, in this order: SRS (a raw SRS0/SRS1
 * address, or a key we made from one), BATV (postgrey's prvs= rule), the
 * extension cut, BATV once more, whole-word digit runs and hex runs. Each
 * step only removes or replaces bytes, in place, so no step can overflow
 * and the key is never longer than the sender. BATV runs again after the
 * cut because a cut can leave "prvs=a=b" behind, which would otherwise
 * change on a second normalisation. Bytes other than ASCII letters,
 * digits and '_' are never word characters (Perl's \w on a byte string).
 */
#include "core/greynorm.h"

#include <stdbool.h>
#include <string.h>

/* Longest SRS hash we accept (libsrs2 and postsrsd write 4 base64 characters). */
#define SRS_HASH_MAX 32
/* A hex run shorter than this is more likely a word or a counter. */
#define HEX_RUN_MIN 8

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool is_lower(char c)
{
	return c >= 'a' && c <= 'z';
}

static bool is_word(char c)
{
	return is_digit(c) || is_lower(c) || c == '_';
}

static bool is_hex_letter(char c)
{
	return c >= 'a' && c <= 'f';
}

static size_t span(const char *s, size_t len, bool (*in_class)(char))
{
	size_t n = 0;

	while (n < len && in_class(s[n]))
		n++;
	return n;
}

static size_t find(const char *s, size_t len, char c)
{
	const char *p = memchr(s, c, len);

	return p != NULL ? (size_t)(p - s) : len;
}

/* ---- SRS (draft-mengwong-sender-rewrite, libsrs2's format) ---- */

static bool is_srs_hash(char c)
{
	return is_digit(c) || is_lower(c) || c == '+' || c == '/';
}

static bool is_srs_time(char c)
{
	return is_lower(c) || (c >= '2' && c <= '7'); /* base32 */
}

static bool is_srs_sep(char c)
{
	return c == '=' || c == '+' || c == '-';
}

/* "HASH=" at s; returns the bytes it takes, 0 if it is not there. */
static size_t srs_hash(const char *s, size_t len)
{
	size_t n = span(s, len, is_srs_hash);

	return (n >= 1 && n <= SRS_HASH_MAX && n < len && s[n] == '=') ? n + 1 : 0;
}

/* "HASH=TT=DOMAIN=LOCAL" (the SRS0 fields): the domain and local part. */
static bool srs0_fields(const char *s, size_t len, size_t *dom, size_t *domlen, size_t *loc)
{
	size_t p = srs_hash(s, len);

	if (p == 0 || len - p < 3 || !is_srs_time(s[p]) || !is_srs_time(s[p + 1]) || s[p + 2] != '=')
		return false;
	p += 3;
	*dom = p;
	*domlen = find(s + p, len - p, '=');
	if (*domlen == 0 || p + *domlen + 1 >= len)
		return false; /* no domain, or nothing after it */
	*loc = p + *domlen + 1;
	return true;
}

/* srs0_fields at offset at of s, positions relative to s. */
static bool srs0_fields_at(const char *s, size_t len, size_t at, size_t *dom, size_t *domlen, size_t *loc)
{
	if (!srs0_fields(s + at, len - at, dom, domlen, loc))
		return false;
	*dom += at;
	*loc += at;
	return true;
}

/*
 * A raw SRS0 or SRS1 local part, or a key made from one ("srs=D=L", L may
 * be empty): where the original domain and local part are.
 */
static bool srs_parse(const char *s, size_t len, size_t *dom, size_t *domlen, size_t *loc)
{
	size_t p;

	if (len > 4 && memcmp(s, "srs=", 4) == 0) {
		*dom = 4;
		*domlen = find(s + 4, len - 4, '=');
		*loc = 4 + *domlen + 1;
		return *domlen > 0 && *loc <= len;
	}
	if (len < 6 || memcmp(s, "srs", 3) != 0 || !is_srs_sep(s[4]))
		return false;
	if (s[3] == '0')
		return srs0_fields_at(s, len, 5, dom, domlen, loc);
	if (s[3] != '1')
		return false;
	/* SRS1=HASH=FIRSTHOP=<sep>HASH=TT=DOMAIN=LOCAL: the SRS0 part after FIRSTHOP= */
	p = 5 + srs_hash(s + 5, len - 5);
	if (p == 5)
		return false;
	p += find(s + p, len - p, '=');
	if (p + 2 >= len || s[p - 1] == '=' || !is_srs_sep(s[p + 1]))
		return false;
	return srs0_fields_at(s, len, p + 2, dom, domlen, loc);
}

/* ---- BATV, extension, digits ---- */

/* postgrey's tag test: starts with ten of [0-9a-z]. */
static bool batv_tagish(const char *s, size_t len)
{
	size_t n = 0;

	while (n < len && n < 10 && (is_digit(s[n]) || is_lower(s[n])))
		n++;
	return n == 10;
}

/*
 * BATV "prvs=TAG=LOCAL" (or "prvs=LOCAL=TAG"): the local field, chosen as
 * postgrey chooses it. Perl's split drops trailing empty fields, so
 * "prvs=a=b==" has three fields too; exactly three are needed.
 */
static size_t batv_strip(char *s, size_t len)
{
	size_t end = len, f1, f1len, f2, f2len;
	const char *pick;
	size_t picklen;

	if (len < 5 || memcmp(s, "prvs=", 5) != 0)
		return len;
	while (end > 0 && s[end - 1] == '=')
		end--;
	if (end < 5)
		return len;
	f1 = 5;
	f1len = find(s + f1, end - f1, '=');
	if (f1 + f1len >= end)
		return len; /* two fields */
	f2 = f1 + f1len + 1;
	f2len = end - f2;
	if (find(s + f2, f2len, '=') != f2len)
		return len; /* four or more */
	pick = s + f2;
	picklen = f2len;
	if (batv_tagish(s + f2, f2len) && !batv_tagish(s + f1, f1len)) {
		pick = s + f1;
		picklen = f1len;
	}
	memmove(s, pick, picklen);
	return picklen;
}

/* The extension starts at the first delimiter ('#' excepted: it is our placeholder). */
static size_t extension_cut(const char *s, size_t len, const char *delimiters)
{
	if (delimiters == NULL)
		return len;
	for (size_t i = 0; i < len; i++)
		if (s[i] != '#' && s[i] != '\0' && strchr(delimiters, s[i]) != NULL)
			return i;
	return len;
}

static bool is_hex_word_char(char c)
{
	return is_digit(c) || is_hex_letter(c);
}

/*
 * The end of the hex run starting at the word at s: hex words joined by
 * single '-'. 0 unless it qualifies (HEX_RUN_MIN hex digits, a digit and a
 * letter among them). A run that does not qualify has no part that does,
 * so scanning words left to right finds every run.
 */
static size_t hex_run(const char *s, size_t len)
{
	size_t p = 0, hex = 0;
	bool digit = false, letter = false;

	for (;;) {
		size_t n = span(s + p, len - p, is_hex_word_char);

		if (n == 0 || (p + n < len && is_word(s[p + n])))
			break; /* not a whole hex word */
		for (size_t i = p; i < p + n; i++) {
			digit |= is_digit(s[i]);
			letter |= is_hex_letter(s[i]);
		}
		hex += n;
		p += n;
		if (p + 1 >= len || s[p] != '-' || !is_hex_word_char(s[p + 1]))
			break;
		p++;
	}
	while (p > 0 && s[p - 1] == '-')
		p--;
	return (hex >= HEX_RUN_MIN && digit && letter) ? p : 0;
}

/* Whole-word digit runs (postgrey's \b\d+\b) and hex runs become '#'. */
static size_t replace_numbers(char *s, size_t len)
{
	size_t r = 0, w = 0;

	while (r < len) {
		size_t n;

		if (!is_word(s[r])) {
			s[w++] = s[r++];
			continue;
		}
		n = hex_run(s + r, len - r);
		if (n > 0) {
			s[w++] = '#';
			r += n;
			continue;
		}
		n = span(s + r, len - r, is_word);
		if (span(s + r, n, is_digit) == n) {
			s[w++] = '#';
		} else {
			memmove(s + w, s + r, n);
			w += n;
		}
		r += n;
	}
	return w;
}

/* A local part that is not SRS, in place; returns its new length. */
static size_t local_normalise(char *s, size_t len, const char *delimiters)
{
	len = batv_strip(s, len);
	len = extension_cut(s, len, delimiters);
	len = batv_strip(s, len);
	return replace_numbers(s, len);
}

/* The local part in place: an SRS address becomes "srs=DOMAIN=LOCAL". */
static size_t local_key(char *s, size_t len, const char *delimiters)
{
	size_t dom, domlen, loc, orig;

	if (!srs_parse(s, len, &dom, &domlen, &loc))
		return local_normalise(s, len, delimiters);
	memmove(s + 4, s + dom, domlen);
	memcpy(s, "srs=", 4);
	s[4 + domlen] = '=';
	orig = loc <= len ? len - loc : 0;
	memmove(s + 5 + domlen, s + loc, orig);
	return 5 + domlen + local_normalise(s + 5 + domlen, orig, delimiters);
}

size_t greynorm_sender(const char *sender, const char *delimiters, char *out, size_t outlen)
{
	char key[GREYNORM_MAX];
	const char *at;
	size_t len, local, domain;

	if (out == NULL || outlen == 0)
		return 0;
	out[0] = '\0';
	if (sender == NULL || (len = strnlen(sender, GREYNORM_MAX)) >= GREYNORM_MAX)
		return 0;
	if (len == 0) {
		memcpy(key, "<>", 2);
		len = 2;
	} else {
		for (size_t i = 0; i < len; i++)
			key[i] = (sender[i] >= 'A' && sender[i] <= 'Z') ? (char)(sender[i] - 'A' + 'a')
			                                                : sender[i];
		at = strrchr(sender, '@');
		if (at != NULL) {
			domain = len - (size_t)(at - sender);
			local = local_key(key, len - domain, delimiters);
			memmove(key + local, key + (len - domain), domain);
			len = local + domain;
		}
	}
	if (len >= outlen)
		return 0;
	memcpy(out, key, len);
	out[len] = '\0';
	return len;
}
