/*
 * key: the typed blocklist keys (see key.h). The one rule that keeps the
 * types apart: a sender, the only key whose text comes whole from the
 * client, is checked with key_type_of() and, when it would read as
 * another type, written with its local part quoted (RFC 5321 4.1.2,
 * Quoted-string), which no other type can start with. A local part that
 * holds '"' or '\\' is quoted too, so that a key starting with '"' is
 * always a quoted one: no two senders share a key, and spamtrapctl, which
 * undoes quoting as Postfix does, reads every key back to itself.
 * Pure: no I/O, no allocation, no globals.
 */
#include "core/key.h"

#include <stdint.h>
#include <string.h>

static char ascii_lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static bool prefix_ci(const char *s, const char *prefix)
{
	for (; *prefix; s++, prefix++)
		if (ascii_lower(*s) != *prefix)
			return false;
	return true;
}

key_type key_type_of(const char *key)
{
	if (prefix_ci(key, "sasl:"))
		return KEY_TYPE_SASL;
	if (prefix_ci(key, "helo:"))
		return KEY_TYPE_HELO;
	if (key[0] == '@')
		return KEY_TYPE_DOMAIN;
	return strchr(key, '@') ? KEY_TYPE_SENDER : KEY_TYPE_NETWORK;
}

const char *key_type_name(key_type t)
{
	switch (t) {
	case KEY_TYPE_NETWORK:
		return "client_address";
	case KEY_TYPE_SENDER:
		return "sender";
	case KEY_TYPE_DOMAIN:
		return "sender_domain";
	case KEY_TYPE_SASL:
		return "sasl_username";
	case KEY_TYPE_HELO:
		return "helo_name";
	}
	return "?";
}

/* The length of the UTF-8 sequence at p (RFC 3629: no overlong forms, no surrogates), 0 if invalid. */
static size_t utf8_len(const unsigned char *p)
{
	size_t n = *p >= 0xf0 ? 4 : *p >= 0xe0 ? 3 : 2;

	if (*p < 0xc2 || *p > 0xf4)
		return 0;
	for (size_t i = 1; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	if ((*p == 0xe0 && p[1] < 0xa0) || (*p == 0xed && p[1] > 0x9f) || (*p == 0xf0 && p[1] < 0x90) ||
	    (*p == 0xf4 && p[1] > 0x8f))
		return 0;
	return n;
}

/*
 * Valid UTF-8 without control characters: the text of every key, so that
 * it prints unchanged (spamtrapctl list) and a person can type it back.
 */
static bool plain_text(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	while (*p) {
		size_t n = *p < 0x80 ? 1 : utf8_len(p);

		if (n == 0 || *p < 0x20 || *p == 0x7f)
			return false;
		p += n;
	}
	return true;
}

/* prefix, then name ASCII-lowercased, into out; 0 when it does not fit. */
static size_t name_key(const char *prefix, const char *name, size_t len, char *out, size_t outlen)
{
	size_t plen = strlen(prefix);

	if (plen + len >= outlen) {
		if (outlen > 0)
			out[0] = '\0';
		return 0;
	}
	memcpy(out, prefix, plen);
	for (size_t i = 0; i < len; i++)
		out[plen + i] = ascii_lower(name[i]);
	out[plen + len] = '\0';
	return plen + len;
}

static size_t no_key(char *out, size_t outlen)
{
	if (outlen > 0)
		out[0] = '\0';
	return 0;
}

size_t key_sasl(const char *name, char *out, size_t outlen)
{
	size_t len = name ? strlen(name) : 0;

	if (len == 0 || len > KEY_NAME_MAX || !plain_text(name))
		return no_key(out, outlen);
	return name_key("sasl:", name, len, out, outlen);
}

size_t key_helo(const char *name, char *out, size_t outlen)
{
	size_t len = name ? strlen(name) : 0;

	if (len == 0 || len > KEY_NAME_MAX)
		return no_key(out, outlen);
	for (size_t i = 0; i < len; i++)
		if (name[i] <= ' ' || name[i] >= 0x7f)
			return no_key(out, outlen);
	return name_key("helo:", name, len, out, outlen);
}

/* The '@' that ends the local part of a sender key_sender takes, or NULL. */
static const char *sender_at(const char *addr)
{
	const char *at = addr ? strrchr(addr, '@') : NULL;

	if (!at || at == addr || at[1] == '\0' || strpbrk(at, "\"\\") || !plain_text(addr))
		return NULL;
	return at;
}

/*
 * Is the text of this sender no key as it stands: would it read as
 * another type, or does its local part hold what quoting uses?
 */
static bool needs_quotes(const char *addr, const char *at)
{
	if (key_type_of(addr) != KEY_TYPE_SENDER)
		return true; /* "sasl:x@d", "helo:x@d", "@x@d" */
	for (const char *p = addr; p < at; p++)
		if (*p == '"' || *p == '\\')
			return true;
	return false;
}

/* "\"" local "\"" at: '"' and '\\' escaped as RFC 5321 quoted-pairSMTP; 0 when it does not fit. */
static size_t quote_local(const char *addr, const char *at, char *out, size_t outlen)
{
	size_t n = 0, tail = strlen(at);

	if (outlen == 0)
		return 0;
	out[n++] = '"';
	for (const char *p = addr; p < at; p++) {
		if (n + 2 >= outlen)
			return no_key(out, outlen);
		if (*p == '"' || *p == '\\')
			out[n++] = '\\';
		out[n++] = *p;
	}
	if (n + 1 + tail >= outlen)
		return no_key(out, outlen);
	out[n++] = '"';
	memcpy(out + n, at, tail + 1);
	return n + tail;
}

size_t key_sender(const char *addr, char *out, size_t outlen)
{
	const char *at = sender_at(addr);
	size_t len;

	if (!at)
		return no_key(out, outlen);
	if (needs_quotes(addr, at))
		return quote_local(addr, at, out, outlen);
	len = strlen(addr);
	if (len >= outlen)
		return no_key(out, outlen);
	memcpy(out, addr, len + 1);
	return len;
}

size_t key_domain(const char *addr, char *out, size_t outlen)
{
	const char *at = sender_at(addr);
	size_t len;

	if (!at || (len = strlen(at)) >= outlen)
		return no_key(out, outlen);
	memcpy(out, at, len + 1);
	return len;
}

/* Does the local part of a sender hold what quoting uses? */
static bool local_has_quoting(const char *addr)
{
	const char *at = strrchr(addr, '@');

	return at && strcspn(addr, "\"\\") < (size_t)(at - addr);
}

size_t key_migrate(const char *key, const char *sender, char *out, size_t outlen)
{
	key_type t = key_type_of(key);
	size_t len = strlen(key);

	/*
	 * Keyed from its sender's text by 0.1.0: a sender that reads as
	 * another type ("sasl:alice@d", "@x@d"), or one whose quotes 0.1.0
	 * kept ("\"x\"@d" for <"\\"x\\""@d>). This version's key for that
	 * sender records a sender that differs from it: a second upgrade
	 * leaves it alone.
	 */
	if (sender && strcmp(key, sender) == 0 && (t != KEY_TYPE_SENDER || local_has_quoting(key)))
		return key_sender(key, out, outlen);
	if (len >= outlen)
		return no_key(out, outlen);
	if (t == KEY_TYPE_SASL)
		return name_key("sasl:", key + 5, len - 5, out, outlen);
	memcpy(out, key, len + 1);
	return len;
}
