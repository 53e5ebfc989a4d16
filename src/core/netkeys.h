/*
 * netkeys: the full key list of a blocklist lookup (core/query.h): the
 * given keys with, at the query's client_at, the client's networks at
 * every length an entry may have: the host, IPv4 /31../8, IPv6 nibble
 * lengths /124../16, and the configured aggregation lengths, most
 * specific first. Only the lengths in a mask are built (the host and the
 * aggregation lengths always): the store knows which lengths it holds,
 * so a MAIL FROM looks up some 5 keys instead of 30. Pure.
 */
#ifndef SPAMTRAPD_NETKEYS_H
#define SPAMTRAPD_NETKEYS_H

#include <stddef.h>
#include <stdint.h>

#include "core/query.h"

/*
 * Network lengths as a bit set: bit LEN of v4 for an IPv4 /LEN, bit
 * LEN % 64 of v6[LEN / 64] for an IPv6 one.
 */
typedef struct netkeys_mask {
	uint64_t v4;
	uint64_t v6[3];
} netkeys_mask;

/* Every length: build every key. */
extern const netkeys_mask netkeys_every;

/* A key's network length as one number: NETKEYS_LEN(family, len); NETKEYS_NONE for other keys and hosts. */
#define NETKEYS_NONE (-1)
#define NETKEYS_LEN(family, len) ((int16_t)((family) == 6 ? 256 + (len) : (len)))

#define NETKEYS_MAX 48
#define NETKEYS_BUF 2048

typedef struct netkeys {
	const char *key[NETKEYS_MAX];
	int16_t
	    netlen[NETKEYS_MAX]; /* of each key: NETKEYS_LEN of a network "ADDRESS/LEN", else NETKEYS_NONE */
	size_t n;
	char buf[NETKEYS_BUF]; /* the network keys' text */
	size_t buflen;
} netkeys;

bool netkeys_mask_has(const netkeys_mask *m, int family, int len);
/* built with the query's host and aggregation lengths added. */
netkeys_mask netkeys_with_fixed(const netkeys_mask *built, const query *q);
/* q's keys, with the client's networks at the lengths of built (plus the fixed ones), into out. */
void netkeys_build(netkeys *out, const query *q, const netkeys_mask *built);

#endif
