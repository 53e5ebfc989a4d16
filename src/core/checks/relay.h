/*
 * relay: compromised accounts (SPEC.md "Checks", seed 001). A spammer with
 * a stolen password sends through the submission service from hundreds of
 * botnet addresses at once, each under any per-host limit. Per account
 * (the SASL login; a sender of relay.sender_domains when configured) the
 * check counts the distinct client networks (relay.ipv4_prefix /
 * ipv6_prefix) of accepted mail in a sliding window, and trips when a new
 * network would make the count exceed max_networks.
 *
 * The check is late (check_def.late): it is asked only once the traps,
 * the blocklist and the whitelist let the recipient through, and then
 * counts first and decides after: needs() peeks (is the network known?)
 * and adds the network with the limit in one atomic store operation, so
 * that parallel requests (workers, hosts on one Redis) cannot all pass on
 * one free slot. A recipient a later check refuses (ratelimit) has still
 * counted its network. A refused network is never added: once the window has passed over the
 * account's networks it sends again (no stuck state). block_account
 * additionally blocklists sasl:NAME (reason "relay") for block_ttl, which
 * stops the account at MAIL FROM on every host and front end.
 *
 * Loopback, RFC 1918, link-local and unique-local (fc00::/7) clients, and
 * relay.exempt_networks, are never counted: they are the site's own
 * webmail and internal hosts. CGNAT (100.64.0.0/10) is counted (see
 * private_networks in relay.c).
 */
#ifndef SPAMTRAPD_CHECK_RELAY_H
#define SPAMTRAPD_CHECK_RELAY_H

#include <stdbool.h>
#include <stdint.h>

#include "core/check.h"
#include "core/decide.h"
#include "core/netset.h"
#include "core/strset.h"

typedef enum {
	RELAY_ACTION_DEFER,
	RELAY_ACTION_REJECT,
	RELAY_ACTION_HOLD,
	RELAY_ACTION_DISCARD
} relay_action;
typedef enum { RELAY_ON_ERROR_CONTINUE, RELAY_ON_ERROR_TEMPFAIL } relay_on_error;

/* relay.keys as bits. */
enum { RELAY_KEY_SASL = 1u << 0, RELAY_KEY_SENDER = 1u << 1 };

/* The relay section of spamtrapd.json (docs/spamtrapd.json.5.md RELAY). */
typedef struct relay_conf {
	check_strlist keys;           /* "sasl_username", "sender" */
	check_strlist sender_domains; /* the domains whose senders "sender" keys on */
	int64_t window;               /* seconds */
	int64_t max_networks;
	int64_t max_entries; /* SQLite: the most (account, network) rows kept; 0: no cap */
	int ipv4_prefix, ipv6_prefix;
	check_strlist exempt_networks;
	int action;  /* relay_action */
	char *reply; /* NULL: the action's default */
	bool block_account;
	int64_t block_ttl;      /* seconds */
	check_strlist notify;   /* argv of the hook; null or []: none */
	int64_t notify_timeout; /* seconds; then the hook is killed */
	int on_error;           /* relay_on_error */
	/* Compiled: */
	unsigned key_bits;
	smtp_reply reply_parsed;
	netset *exempt;  /* owned: exempt_networks */
	strset *domains; /* owned: sender_domains, normalised */
} relay_conf;

/*
 * The trip markers (QUERY_KV namespaces, key: the account), live for a
 * window from the first trip: that trip blocks and notifies, the next
 * ones only refuse. Shadow mode keeps its own, so that turning enforce on
 * within a window still blocks and notifies.
 */
#define RELAY_TRIP_NS "relaytrip"
#define RELAY_TRIP_NS_SHADOW "relaytrip-shadow"

/* Networks shadow mode counts past max_networks (enforce adds none past it). */
#define RELAY_SHADOW_EXTRA 256

extern const check_def check_relay;

/* The store set of an account key ("sasl:alice" -> "relay:sasl:alice"); 0 when it does not fit. */
size_t relay_set_name(const char *account_key, char *out, size_t outlen);

#endif
