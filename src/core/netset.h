/*
 * netset: a set of IPv4 and IPv6 networks, asked "does any network contain
 * this address?". Owns its storage. Immutable once built, like strset.
 */
#ifndef SPAMTRAPD_NETSET_H
#define SPAMTRAPD_NETSET_H

#include <stdbool.h>
#include <stddef.h>

#include "core/addr.h"

typedef struct netset netset;

netset *netset_new(void);
void netset_free(netset *set);                    /* accepts NULL */
int netset_add(netset *set, const addr_net *net); /* 0, or -1 out of memory */
/* Parses "IP" or "IP/LEN" (addr_net_parse) and adds it; -1 with err on failure. */
int netset_add_text(netset *set, const char *text, char *err, size_t errlen);
bool netset_contains(const netset *set, const addr_ip *ip);
size_t netset_count(const netset *set);

#endif
