/*
 * addr: envelope addresses and client IP addresses, normalised to the
 * canonical forms that trap matching, whitelists and blocklist keys use.
 * Pure: no I/O, no allocation, no globals.
 */
#ifndef SPAMTRAPD_ADDR_H
#define SPAMTRAPD_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RFC 5321 allows 64 + 1 + 255 octets; keep headroom for quoted local parts. */
#define ADDR_MAX 512
/* "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128" plus NUL */
#define ADDR_NET_STRLEN 64

typedef enum {
	ADDR_OK = 0,
	ADDR_NULL,    /* the null sender "<>" or "": out is "" */
	ADDR_INVALID, /* too long, control characters, unbalanced brackets */
} addr_status;

/*
 * Normalise an envelope address as Postfix hands it to a milter ("<a@b>") or
 * a policy server ("a@b"): strip angle brackets and an RFC 5321 source route
 * ("<@relay1,@relay2:user@example.com>"), drop a trailing dot from the
 * domain, lowercase everything. Writes a NUL-terminated string to out.
 */
addr_status addr_normalise(const char *in, size_t inlen, char *out, size_t outlen);

/*
 * Quoted strings without their quotes and backslashes, in place: Postfix's
 * internal form (tok822_internalize), which is what the policy protocol
 * hands over: "x y"@d is x y@d there, "sp\am"@d is spam@d. Without it,
 * <"spam"@d> on the milter would be another blocklist key than spam@d,
 * the same mailbox. An unbalanced quote is left alone: addr_normalise()
 * finds such an address invalid.
 */
void addr_unquote(char *s);

/*
 * Remove a recipient extension: with delimiters "+", "trap+tag@d" becomes
 * "trap@d" (Postfix recipient_delimiter: any one of the characters starts
 * the extension). Returns true when something was removed; out always gets
 * the result (a copy of addr when nothing was removed).
 */
bool addr_strip_extension(const char *addr, const char *delimiters, char *out, size_t outlen);

/* Longest domain name (RFC 1035). */
#define ADDR_DOMAIN_MAX 255

/*
 * "Example.ORG." or "@example.org" becomes "example.org" (ASCII lowercased,
 * one trailing dot dropped). Blanks, control characters, address
 * punctuation and an empty first or last label (".a", "a..") make it no
 * domain: returns false. out needs
 * ADDR_DOMAIN_MAX + 1 bytes.
 */
bool addr_domain_normalise(const char *in, char *out, size_t outlen);

/*
 * An address given as a trap or whitelist entry: addr_normalise, and it
 * must have a local part and a domain, and its normal form must normalise
 * to itself (" x@d ." or "x@d.." would be stored in a form that no
 * envelope address normalises to, so the entry could never hit). out needs
 * ADDR_MAX bytes; false when it is no such address.
 */
bool addr_entry_normalise(const char *in, char *out, size_t outlen);

/* The domain part of a normalised address (after the last '@'), or NULL. */
const char *addr_domain(const char *addr);

typedef struct addr_ip {
	uint8_t version;   /* 4 or 6 */
	uint8_t bytes[16]; /* IPv4 uses bytes[0..3] */
} addr_ip;

typedef struct addr_net {
	addr_ip ip;     /* host bits are zero */
	uint8_t prefix; /* 0..32 or 0..128 */
} addr_net;

/*
 * Parse a client address: dotted IPv4, IPv6, "IPv6:..." (as in XCLIENT and
 * address literals), optionally in [brackets]. An IPv4-mapped IPv6 address
 * (::ffff:192.0.2.1) becomes IPv4 so both spellings hit the same key.
 */
bool addr_ip_parse(const char *s, addr_ip *out);

/*
 * Parse "IP" (a host network) or "IP/LEN". Host bits set below the prefix
 * are an error (192.0.2.1/24 is almost always a typo), reported in err.
 */
bool addr_net_parse(const char *s, addr_net *out, char *err, size_t errlen);

/* The network of the given prefix length that contains ip. */
addr_net addr_net_of(const addr_ip *ip, unsigned prefix);

bool addr_net_contains(const addr_net *net, const addr_ip *ip);

/*
 * A listening address "IPV4:PORT" or "[IPV6]:PORT" ("127.0.0.1:10666",
 * "[::1]:10666"): an IP literal, never a host name; IPv6 only in brackets
 * (which colon would end it otherwise?); a port of 1 to 65535 in decimal
 * digits. An IPv4-mapped IPv6 address stays IPv6: it is what would be
 * bound. The one parser for policy.listen, in the config check and at
 * bind time. false with the reason in err ("port must be 1 to 65535").
 */
bool addr_hostport_parse(const char *s, addr_ip *ip, uint16_t *port, char *err, size_t errlen);

/*
 * Canonical text: a host network as the bare address ("192.0.2.7",
 * "2001:db8::1"), others as "192.0.2.0/24" (RFC 5952 form for IPv6; an
 * address whose first 96 bits are zero and 7th group is not, or one in
 * ::ffff:0:0/96, ends in dotted decimal, "::192.0.2.1", as glibc's
 * inet_ntop writes it). Returns the length of the text; as snprintf, a
 * smaller out (ADDR_NET_STRLEN bytes always suffice) gets it cut, and
 * the length it would have had. A network of no family is "invalid".
 */
size_t addr_net_format(const addr_net *net, char *out, size_t outlen);

#endif
