/*
 * dnsbl_site: one member of dnsbl.sites in postscreen's syntax
 * (postconf(5) postscreen_dnsbl_sites), pure:
 *
 *   name[=filter][*weight]
 *
 *   zen.spamhaus.org                      any valid answer, weight 1
 *   zen.spamhaus.org*3
 *   bl.example.org=127.0.0.[2..11;20]*3   each octet a number or [a;b..c]
 *   list.dnswl.org=127.0.[0..255].[1..3]*-2   a negative weight: a DNSWL
 *
 * and the names and answers around it: the query name of a client
 * (reversed IPv4 octets, IPv6 nibbles) and which answers may ever count.
 */
#ifndef SPAMTRAPD_DNSBL_SITE_H
#define SPAMTRAPD_DNSBL_SITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"

/*
 * A site's name, at most: an IPv6 client's 32 nibbles take 64 bytes
 * ("b.a.9.8....") before it, and a DNS name has 253 at most.
 */
#define DNSBL_SITE_NAME_MAX 189
/* Bounds of a weight, so that no sum of DNSPLAN_MAX_LOOKUPS sites overflows and a typo is caught. */
#define DNSBL_WEIGHT_MIN (-100)
#define DNSBL_WEIGHT_MAX 100

typedef struct dnsbl_site {
	char name[DNSBL_SITE_NAME_MAX + 1]; /* lower case, no trailing dot */
	bool filtered;                      /* else any valid answer matches */
	uint8_t octet[4][32];               /* filtered: the values each octet may take, as bitmaps */
	int weight;
} dnsbl_site;

/* Parse text into *out; false with a message naming what is wrong in err. */
bool dnsbl_site_parse(const char *text, dnsbl_site *out, char *err, size_t errlen);

/*
 * Whether an answer (host byte order: 127.0.0.2 is 0x7f000002) may count
 * at all: inside 127.0.0.0/8 and outside 127.255.255.0/24, where lists
 * answer a refused query (Spamhaus: 127.255.255.254 for a public
 * resolver). Anything else is an error of the list or of the resolver
 * path, never a listing: it would otherwise make the site refuse all mail.
 */
bool dnsbl_answer_valid(uint32_t answer);

/* Whether a valid answer lists the client for site s (its filter, if any). */
bool dnsbl_site_matches(const dnsbl_site *s, uint32_t answer);

/*
 * The name to look up for ip at site: "7.2.0.192.site", or for IPv6 the
 * 32 nibbles in reverse ("1.0.0.0....8.b.d.0.1.0.0.2.site"). Returns its
 * length, 0 when it does not fit outlen.
 */
size_t dnsbl_query_name(const addr_ip *ip, const char *site, char *out, size_t outlen);

#endif
