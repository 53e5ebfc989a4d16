/*
 * key: the blocklist's keys, one typed namespace. A key's type is a
 * function of its text alone (key_type_of), and every constructor here
 * makes only text of its own type, so no sender can be spelled as a SASL,
 * HELO, domain or network key (issue 11: a trap hit from the sender
 * "sasl:alice"@example.com must never block the SASL user alice@example.com).
 * The forms, shared with the stores and spamtrapctl(8):
 *
 *   sasl_username   sasl:NAME       NAME ASCII-lowercased; any UTF-8 text
 *                                   but control characters ("sasl:j doe")
 *   helo_name       helo:NAME       NAME ASCII-lowercased; printable ASCII,
 *                                   no blanks
 *   sender_domain   @example.com
 *   sender          user@example.com, "x y@example.com": Postfix's internal
 *                   form (quoting undone: what the policy protocol hands
 *                   over and milter.c makes of <"x y"@example.com>); when
 *                   that would read as another type, or its local part holds
 *                   '"' or '\', with the local part quoted (RFC 5321
 *                   Quoted-string): "sasl:alice"@example.com, "@x"@example.com
 *   client_address  everything else: 192.0.2.7, 192.0.2.0/24,
 *                   2001:db8::/64, as addr_net_format writes them
 *
 * Every form is valid UTF-8 without control characters, so that a key
 * prints as it is (spamtrapctl list) and can be typed back.
 * Pure: no I/O, no allocation, no globals.
 */
#ifndef SPAMTRAPD_KEY_H
#define SPAMTRAPD_KEY_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
	KEY_TYPE_NETWORK, /* client_address */
	KEY_TYPE_SENDER,
	KEY_TYPE_DOMAIN, /* sender_domain */
	KEY_TYPE_SASL,
	KEY_TYPE_HELO,
} key_type;

/* Longest SASL or HELO name that makes a key. */
#define KEY_NAME_MAX 255

/*
 * The type of a key, or of a KEY as a person types it: "sasl:" or
 * "helo:" first (in any case) is SASL or HELO, '@' first a sender domain,
 * an '@' anywhere else a sender, anything else a network.
 */
key_type key_type_of(const char *key);

/* The blocklist.keys name of a type: "sender", "client_address", ... */
const char *key_type_name(key_type t);

/*
 * The constructors write a NUL-terminated key into out and return its
 * length; they return 0 (out "" when outlen > 0) when the input makes no
 * key or the key does not fit in outlen bytes.
 *
 * key_sender: addr is a sender in the internal form as addr_normalise()
 * left it (lowercased, no brackets). A key only for local@domain, both
 * parts non-empty, valid UTF-8 without control characters, no '"' or '\'
 * in the domain. Postfix takes unqualified senders ("<8.0.0.0/8>",
 * "<sasl:alice>"): they make no key.
 */
size_t key_sender(const char *addr, char *out, size_t outlen);

/* "@domain" of a sender that key_sender() takes; 0 for every other. */
size_t key_domain(const char *addr, char *out, size_t outlen);

/*
 * SASL account names may hold blanks and UTF-8 ("J\xc3\xb6rg Doe");
 * control characters, invalid UTF-8 or more than KEY_NAME_MAX bytes make
 * no key. Names compare case-insensitively (ASCII): many SASL back ends
 * take a login in any case, and an entry must hold for every spelling.
 */
size_t key_sasl(const char *name, char *out, size_t outlen);

/* A HELO name makes a key when it is 1 to KEY_NAME_MAX printable ASCII characters, no blanks. */
size_t key_helo(const char *name, char *out, size_t outlen);

/*
 * The key that an entry written by spamtrapd 0.1.0 has now, from its key
 * and the sender it recorded ("" for an entry added by hand). 0.1.0 keyed
 * a sender by its text as it came, so the sender "sasl:alice@d" got the
 * key of the SASL user alice@d: an entry whose key is its recorded sender
 * and reads as another type, or holds quoting in its local part, was
 * keyed so and becomes that sender's key now (0: it makes none now, drop
 * the entry). 0.1.0 kept SASL names as given: they are lowercased. Any
 * other key comes back unchanged. A second run changes nothing (the new
 * key of such an entry is no longer its recorded sender). Returns the
 * length, as the constructors.
 */
size_t key_migrate(const char *key, const char *sender, char *out, size_t outlen);

#endif
