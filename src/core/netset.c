/*
 * netset: a set of IPv4 and IPv6 networks (see netset.h).
 *
 * Every network lives in one open-addressing hash table keyed by (version,
 * prefix, masked address). Each family also keeps the sorted list of
 * prefix lengths present, so netset_contains() masks the address once per
 * length present, longest first, and probes the table: at most 33 (IPv4)
 * or 129 (IPv6) lookups however many networks the set holds, never a scan.
 * Errors: -1 from the add functions (out of memory, or a bad network with
 * a message in err).
 */
#include "core/netset.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"

#define NETSET_MIN_SLOTS 16

typedef struct netset_slot {
	addr_net net; /* net.ip.version == 0: empty slot */
} netset_slot;

/* The prefix lengths present in one family, longest first. */
typedef struct netset_lengths {
	uint8_t len[129];
	size_t n;
} netset_lengths;

struct netset {
	netset_slot *slots;
	size_t mask; /* number of slots - 1 */
	size_t count;
	netset_lengths v4, v6;
};

static size_t net_bytes(const addr_net *net)
{
	return net->ip.version == 4 ? 4 : 16;
}

/* FNV-1a over the fields that identify a network. */
static uint64_t net_hash(const addr_net *net)
{
	uint64_t h = hash_fnv1a(HASH_FNV1A_INIT, &net->ip.version, 1);

	h = hash_fnv1a(h, &net->prefix, 1);
	return hash_fnv1a(h, net->ip.bytes, net_bytes(net));
}

static bool net_equal(const addr_net *a, const addr_net *b)
{
	return a->ip.version == b->ip.version && a->prefix == b->prefix &&
	       memcmp(a->ip.bytes, b->ip.bytes, net_bytes(a)) == 0;
}

/* The slot holding net, or the empty slot where it belongs. */
static netset_slot *find_slot(const netset *set, const addr_net *net)
{
	size_t i = (size_t)net_hash(net) & set->mask;

	for (;;) {
		netset_slot *slot = &set->slots[i];

		if (slot->net.ip.version == 0 || net_equal(&slot->net, net))
			return slot;
		i = (i + 1) & set->mask;
	}
}

netset *netset_new(void)
{
	netset *set = calloc(1, sizeof(*set));

	if (set == NULL)
		return NULL;
	set->slots = calloc(NETSET_MIN_SLOTS, sizeof(netset_slot));
	if (set->slots == NULL) {
		free(set);
		return NULL;
	}
	set->mask = NETSET_MIN_SLOTS - 1;
	return set;
}

void netset_free(netset *set)
{
	if (set == NULL)
		return;
	free(set->slots);
	free(set);
}

/* Double the table, keeping it at most half full. */
static int grow(netset *set)
{
	size_t oldslots = set->mask + 1;
	netset_slot *old = set->slots;
	netset_slot *fresh;

	if (oldslots > SIZE_MAX / 2 / sizeof(netset_slot))
		return -1;
	fresh = calloc(oldslots * 2, sizeof(netset_slot));
	if (fresh == NULL)
		return -1;
	set->slots = fresh;
	set->mask = oldslots * 2 - 1;
	for (size_t i = 0; i < oldslots; i++) {
		if (old[i].net.ip.version != 0)
			*find_slot(set, &old[i].net) = old[i];
	}
	free(old);
	return 0;
}

/* Insert len into the descending list unless it is there already. */
static void lengths_add(netset_lengths *l, uint8_t len)
{
	size_t i = 0;

	while (i < l->n && l->len[i] > len)
		i++;
	if (i < l->n && l->len[i] == len)
		return;
	memmove(&l->len[i + 1], &l->len[i], l->n - i);
	l->len[i] = len;
	l->n++;
}

int netset_add(netset *set, const addr_net *net)
{
	addr_net key;
	netset_slot *slot;

	if (set == NULL || net == NULL || (net->ip.version != 4 && net->ip.version != 6))
		return -1;
	key = addr_net_of(&net->ip, net->prefix); /* zero host bits and unused bytes */
	slot = find_slot(set, &key);
	if (slot->net.ip.version != 0)
		return 0;
	if ((set->count + 1) * 2 > set->mask + 1) {
		if (grow(set) != 0)
			return -1;
		slot = find_slot(set, &key);
	}
	slot->net = key;
	set->count++;
	lengths_add(key.ip.version == 4 ? &set->v4 : &set->v6, key.prefix);
	return 0;
}

int netset_add_text(netset *set, const char *text, char *err, size_t errlen)
{
	addr_net net;

	if (!addr_net_parse(text, &net, err, errlen))
		return -1;
	if (netset_add(set, &net) != 0) {
		snprintf(err, errlen, "out of memory adding network %.64s", text);
		return -1;
	}
	return 0;
}

bool netset_contains(const netset *set, const addr_ip *ip)
{
	const netset_lengths *l;

	if (set == NULL || ip == NULL || (ip->version != 4 && ip->version != 6))
		return false;
	l = ip->version == 4 ? &set->v4 : &set->v6;
	for (size_t i = 0; i < l->n; i++) {
		addr_net key = addr_net_of(ip, l->len[i]);

		if (find_slot(set, &key)->net.ip.version != 0)
			return true;
	}
	return false;
}

size_t netset_count(const netset *set)
{
	return set != NULL ? set->count : 0;
}
