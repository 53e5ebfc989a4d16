/*
 * libFuzzer target for core/greynorm. Byte 0 picks the recipient
 * delimiters and a small output size; the rest, up to a NUL, is the sender.
 * Invariants checked beyond "no crash":
 *
 * - the key is NUL-terminated in its buffer, as long as the value
 *   returned, "" when 0 is returned; 0 only for a sender of GREYNORM_MAX
 *   bytes or more (never for a shorter one with a big enough buffer);
 * - it is never longer than the sender + 2 ("<>" for ""), and a fixed
 *   point: normalising the key gives the key;
 * - a smaller buffer gives the same key when it fits, 0 and "" otherwise
 *   (never a cut key);
 * - the sender in upper case has the same key (ASCII case never matters);
 * - the domain (after the last '@') ends the key unchanged but for case.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/greynorm.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const delimiter_sets[] = {"+", "", "-", "+-", "=", "#", "=+-#@", "_."};

/* greynorm_sender into a buffer of exactly outlen bytes (ASan sees any write past it). */
static size_t key_of(const char *sender, const char *delims, char *copy, size_t outlen)
{
	char *out = malloc(outlen);
	size_t len;

	CHECK(out != NULL);
	memset(out, 'x', outlen);
	len = greynorm_sender(sender, delims, out, outlen);
	if (outlen > 0) {
		CHECK_TERMINATED(out, outlen);
		CHECK(strlen(out) == len);
		strcpy(copy, out);
	} else {
		CHECK(len == 0);
		copy[0] = '\0';
	}
	free(out);
	return len;
}

static char ascii_upper(char c)
{
	return (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
}

static void check_domain_kept(const char *sender, const char *key, size_t len)
{
	const char *at = strrchr(sender, '@');
	size_t dlen;

	if (at == NULL)
		return;
	dlen = strlen(at);
	CHECK(len >= dlen);
	for (size_t i = 0; i < dlen; i++) {
		char c = at[i];

		CHECK(key[len - dlen + i] == ((c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c));
	}
}

static void check_sender(const char *sender, const char *delims, size_t smalllen)
{
	size_t slen = strlen(sender), len, len2;
	char key[GREYNORM_MAX + 2], again[GREYNORM_MAX + 2], small[GREYNORM_MAX + 2];
	char *upper;

	len = key_of(sender, delims, key, sizeof key);
	if (slen >= GREYNORM_MAX) {
		CHECK(len == 0);
		return;
	}
	CHECK(len > 0 && len <= slen + 2);
	CHECK(slen > 0 || strcmp(key, "<>") == 0);
	CHECK(key_of(key, delims, again, sizeof again) == len && strcmp(again, key) == 0);
	len2 = key_of(sender, delims, small, smalllen);
	if (len < smalllen)
		CHECK(len2 == len && strcmp(small, key) == 0);
	else
		CHECK(len2 == 0 && small[0] == '\0');
	upper = strdup(sender);
	CHECK(upper != NULL);
	for (size_t i = 0; i < slen; i++)
		upper[i] = ascii_upper(upper[i]);
	CHECK(key_of(upper, delims, again, sizeof again) == len && strcmp(again, key) == 0);
	free(upper);
	check_domain_kept(sender, key, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *delims;
	size_t smalllen;
	char *sender;

	if (size < 1)
		return 0;
	delims = delimiter_sets[data[0] % (sizeof delimiter_sets / sizeof delimiter_sets[0])];
	smalllen = data[0] / 8 * 3; /* 0 to 93 */
	sender = malloc(size);
	CHECK(sender != NULL);
	memcpy(sender, data + 1, size - 1);
	sender[size - 1] = '\0';
	check_sender(sender, delims, smalllen);
	free(sender);
	return 0;
}
