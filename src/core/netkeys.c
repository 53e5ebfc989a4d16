/* netkeys: a blocklist lookup's full key list (see netkeys.h). */
#include "core/netkeys.h"

#include <stdbool.h>

const netkeys_mask netkeys_every = {UINT64_MAX, {UINT64_MAX, UINT64_MAX, UINT64_MAX}};

static void push_key(netkeys *k, const char *key, int16_t netlen)
{
	if (key && k->n < NETKEYS_MAX) {
		k->netlen[k->n] = netlen;
		k->key[k->n++] = key;
	}
}

/*
 * The client's network of prefix len, written straight into k->buf (a
 * lookup may build 29 of these: no snprintf, no copy); the host itself has
 * no "/LEN".
 */
static void push_net(netkeys *k, const addr_ip *ip, int len)
{
	int max = ip->version == 4 ? 32 : 128;
	size_t room = sizeof(k->buf) - k->buflen;
	char *at = k->buf + k->buflen;
	addr_net net = addr_net_of(ip, (unsigned)len);
	size_t n = addr_net_format(&net, at, room);

	if (n >= room)
		return;
	k->buflen += n + 1;
	push_key(k, at, len == max ? NETKEYS_NONE : NETKEYS_LEN(ip->version, len));
}

bool netkeys_mask_has(const netkeys_mask *m, int family, int len)
{
	if (family == 4)
		return len >= 0 && len < 64 && (m->v4 >> len & 1);
	return len >= 0 && len < 192 && (m->v6[len / 64] >> (len % 64) & 1);
}

netkeys_mask netkeys_with_fixed(const netkeys_mask *built, const query *q)
{
	netkeys_mask m = *built;
	unsigned v4 = q->u.lookup.ipv4_prefix, v6 = q->u.lookup.ipv6_prefix;

	m.v4 |= UINT64_C(1) << 32 | UINT64_C(1) << (v4 % 64);
	m.v6[2] |= UINT64_C(1); /* /128 */
	m.v6[v6 / 64 % 3] |= UINT64_C(1) << (v6 % 64);
	return m;
}

/* The host first, then every length in built and the configured one, most specific first. */
static void push_client_nets(netkeys *k, const query *q, const netkeys_mask *built)
{
	const addr_ip *ip = q->u.lookup.client;
	int max = ip->version == 4 ? 32 : 128;
	int min = ip->version == 4 ? 8 : 16;
	int step = ip->version == 4 ? 1 : 4;
	int configured = (int)(ip->version == 4 ? q->u.lookup.ipv4_prefix : q->u.lookup.ipv6_prefix);
	bool configured_done = false;

	for (int len = max; len >= min; len -= step) {
		if (!configured_done && configured > len) {
			push_net(k, ip, configured);
			configured_done = true;
		}
		if (len == max || len == configured || netkeys_mask_has(built, ip->version, len))
			push_net(k, ip, len);
		configured_done |= configured == len;
	}
	if (!configured_done)
		push_net(k, ip, configured);
}

void netkeys_build(netkeys *out, const query *q, const netkeys_mask *built)
{
	out->n = 0;
	out->buflen = 0;
	for (size_t i = 0; i <= q->u.lookup.nkeys; i++) {
		if (i == q->u.lookup.client_at && q->u.lookup.client)
			push_client_nets(out, q, built);
		if (i < q->u.lookup.nkeys)
			push_key(out, q->u.lookup.keys[i], NETKEYS_NONE);
	}
}
