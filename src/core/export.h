/*
 * export: the blocklist in the formats other programs read (SPEC.md
 * "exports"): Postfix access and cidr maps, an nftables script, an ipset
 * restore file, a PF table file and rbldnsd zone data. Entries in, text
 * out: no I/O and no clock (the caller passes now); writing the text to
 * a file atomically is the caller's job.
 *
 * The firewall formats (nft, ipset, pf) and rbldnsd hold client
 * addresses and networks only, merged so that no exported network holds
 * another: an address or network inside an exported network is dropped
 * and the network keeps the longer remaining time of the two (nftables
 * interval sets refuse overlapping elements). nft and ipset carry each
 * element's remaining time as a kernel timeout, so the firewall forgets
 * an entry by itself when it expires.
 */
#ifndef SPAMTRAPD_EXPORT_H
#define SPAMTRAPD_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
	EXPORT_POSTFIX, /* access(5) for an indexed map (postmap hash:) */
	EXPORT_CIDR,    /* cidr_table(5) */
	EXPORT_NFT,     /* nft -f: table inet NAME, sets v4 and v6 */
	EXPORT_IPSET,   /* ipset restore: NAME-v4 and NAME-v6 swapped in */
	EXPORT_PF,      /* pfctl -t NAME -T replace -f */
	EXPORT_RBLDNSD, /* rbldnsd combined dataset */
} export_format;

/* The kinds of entry, as --keys names them. */
enum {
	EXPORT_KEY_SENDER = 1,
	EXPORT_KEY_DOMAIN = 2,
	EXPORT_KEY_CLIENT = 4,
	EXPORT_KEY_SASL = 8,
	EXPORT_KEY_HELO = 16,
};

/*
 * The longest kernel timeout written, in seconds: ipset's maximum
 * (UINT_MAX / 2 ms), which every nft version takes too. A longer entry
 * gets this much and the next export extends it.
 */
#define EXPORT_TIMEOUT_MAX 2147483

/* The answers of the rbldnsd export (docs/firewall.md). */
#define EXPORT_RBL_TRAP "127.0.0.2"   /* blocklisted after mail to a spamtrap */
#define EXPORT_RBL_MANUAL "127.0.0.3" /* added by an administrator (spamtrapctl add) */

/* "nft" -> EXPORT_NFT; false for a name that is no format. */
bool export_format_parse(const char *name, export_format *out);
const char *export_format_name(export_format f);
/* What --keys selects when not given, and what the format can hold at all. */
unsigned export_keys_default(export_format f);
unsigned export_keys_allowed(export_format f);
/*
 * "sender,domain" into EXPORT_KEY_* bits ("all": sender, domain and
 * client); false with the reason in err for an unknown or empty list.
 */
bool export_keys_parse(const char *list, unsigned *keys, char *err, size_t errlen);

typedef struct export_options {
	export_format format;
	unsigned keys;       /* EXPORT_KEY_*, a subset of export_keys_allowed */
	int64_t now;         /* remaining times are counted from here */
	const char *action;  /* postfix, cidr: "REJECT 5.7.1 text" */
	const char *name;    /* nft table, ipset set prefix, pf table: NULL for "spamtrapd" */
	const char *zone_ns; /* rbldnsd $SOA and $NS: the zone's name server (a host name) */
	const char
	    *zone_mail; /* rbldnsd $SOA: the responsible mailbox, as a name ("hostmaster.example.org") */
} export_options;

/* What an export held and left out, for the caller's notes. */
typedef struct export_counts {
	size_t written;       /* entries (lines, elements) in the text */
	size_t merged;        /* client entries inside another exported network */
	size_t skipped_v6net; /* postfix: IPv6 networks, which a hash map cannot hold */
	size_t skipped_other; /* keys the format cannot express */
	size_t clamped;       /* timeouts cut to EXPORT_TIMEOUT_MAX */
} export_counts;

typedef struct export export;

/* NULL when out of memory. The strings of o are copied. */
export *export_new(const export_options *o);
void export_free(export *x); /* accepts NULL */

/*
 * One blocklist entry in force: its key (core/key.h), when it expires,
 * and whether a trap hit made it (else an administrator did). Kinds not
 * selected are left out quietly, keys the format cannot hold are
 * counted. false only when out of memory.
 */
bool export_add(export *x, const char *key, int64_t expires, bool trap);

/*
 * The whole text, NUL-terminated, which the caller frees; *len its
 * length. NULL when out of memory. Call once, after the last export_add.
 */
char *export_render(export *x, size_t *len);

const export_counts *export_get_counts(const export *x);

#endif
