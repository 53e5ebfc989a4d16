/*
 * decide: the vocabulary of the decision core, shared by every check
 * (core/check.h): a transaction's facts as a front end saw them, its keys
 * (prepared once per MAIL FROM), SMTP replies and the actions a verdict
 * can take, and the policy of the trap and blocklist checks. No I/O, no
 * clock, no logging, no globals.
 */
#ifndef SPAMTRAPD_DECIDE_H
#define SPAMTRAPD_DECIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/query.h"
#include "core/trapset.h"
#include "core/whitelist.h"

/* What a trap hit blocklists (SPEC blocklist.keys), as a bit mask. */
enum {
	DECIDE_KEY_SENDER = 1u << 0,
	DECIDE_KEY_CLIENT_ADDRESS = 1u << 1,
	DECIDE_KEY_SASL_USERNAME = 1u << 2,
	DECIDE_KEY_SENDER_DOMAIN = 1u << 3,
	DECIDE_KEY_HELO_NAME = 1u << 4,
};

typedef enum { TRAP_ACTION_DISCARD, TRAP_ACTION_REJECT, TRAP_ACTION_ACCEPT } trap_action;
typedef enum { ON_MIXED_DELIVER_OTHERS, ON_MIXED_DISCARD_ALL } on_mixed_policy;
/*
 * blocklist.sender_requires: what a trap hit needs before it blocklists
 * the sender-derived keys (sender, sender_domain): nothing, or a verified
 * sender (SPF pass or SASL; else only the client's keys are recorded).
 */
typedef enum { SENDER_REQUIRES_ANY, SENDER_REQUIRES_SPF_PASS } sender_requires_policy;
/* traps.null_sender: what a bounce (MAIL FROM:<>) to a trap records. */
typedef enum { NULL_SENDER_IGNORE, NULL_SENDER_CLIENT } null_sender_policy;

/* An SMTP reply split the way smfi_setreply wants it. */
typedef struct smtp_reply {
	char code[4];   /* "550" */
	char xcode[16]; /* "5.7.1", or "" */
	char text[512]; /* without code and xcode */
} smtp_reply;

/*
 * Parse "550 5.7.1 Some text" (xcode optional). The code must be 4xx or
 * 5xx; returns false with a message in err otherwise.
 */
bool smtp_reply_parse(const char *s, smtp_reply *out, char *err, size_t errlen);

/* The settings of the trap and blocklist checks (core/checks/), compiled from the config. */
typedef struct decide_policy {
	bool dry_run; /* top-level mode dry-run: every check is shadow */
	trap_action action;
	on_mixed_policy on_mixed;
	null_sender_policy null_sender;
	unsigned keys;       /* DECIDE_KEY_* */
	int sender_requires; /* sender_requires_policy */
	int64_t ttl;         /* seconds a trap hit keeps a key blocklisted */
	unsigned ipv4_prefix, ipv6_prefix;
	/* blocklist.sender_domain_min_networks; 0 and 1: one hit lists the domain */
	unsigned domain_min_networks;
	smtp_reply reject;      /* blocklist.reject */
	bool on_error_tempfail; /* store.on_error */
	/*
	 * spf.timeout in milliseconds while the spf check is on, else 0 (set
	 * by the config): the blocklist asks SPF itself for a whitelisted
	 * sender at MAIL FROM, on a policy `sender` listener too, where the
	 * spf check does not run (core/checks/spf.h).
	 */
	int64_t spf_timeout_ms;
	const trapset *traps;
	const whitelist *whitelist;
} decide_policy;

typedef enum { DECIDE_FRONT_POLICY, DECIDE_FRONT_MILTER } decide_front;

/* Facts of a transaction as the front end saw them; any may be NULL. */
typedef struct decide_facts {
	decide_front front;
	const char *client_address; /* "192.0.2.7", "2001:db8::1"; "unknown" ok */
	const char *helo;
	/* The client's verified host name (policy client_name, the milter's connect host name); "unknown" ok.
	 */
	const char *client_name;
	const char *sender;        /* raw envelope form: "<a@b>", "a@b", "<>", "" */
	const char *sasl_username; /* set only for authenticated clients */
	const char *recipient;
	const char *queue_id;
	/*
	 * A check proved the sender is not forged: SPF passes for it (the
	 * engine sets it from the spf check's answer, core/checks/spf.h). An
	 * authenticated client verifies its sender too, without this. A
	 * verified whitelisted sender exempts every key but the SASL
	 * account's (SPEC "Checks" item 3, decide_txn.sender_trusted); under
	 * blocklist.sender_requires spf-pass only a verified sender's own keys
	 * are recorded by a trap hit.
	 */
	bool sender_verified;
	/*
	 * The DNS answers of this stage (core/dnsplan.h), resolved by the
	 * front end before engine_stage(): NULL when the stage asked none.
	 */
	const struct dnsplan *dns;
} decide_facts;

#define DECIDE_MAX_LOOKUP 8
#define DECIDE_MAX_RECORD 8
#define DECIDE_KEYBUF 2048

/*
 * A transaction's keys, prepared once per MAIL FROM (milter) or per request
 * (policy), in the typed forms of core/key.h (user@example.com,
 * "sasl:x"@example.com, @example.com, 192.0.2.0/24, sasl:NAME, helo:NAME).
 * lookup[] holds every key other than the client's networks that a
 * blocklist entry may match at MAIL FROM, in precedence order; the
 * client's networks (client) go before lookup[client_at]: the store builds
 * those keys at the lengths it holds (store_run). record[] holds the keys
 * a trap hit in this transaction blocklists under policy->keys,
 * traps.null_sender, the SASL rule and the whitelist (see whitelisted
 * below).
 */
typedef struct decide_txn {
	char sender[ADDR_MAX]; /* normalised; "" for the null sender */
	bool null_sender;
	bool sender_invalid;
	/*
	 * whitelisted: WHITELIST_CLIENT_NETWORK when the client's network is
	 * whitelisted, which exempts the whole transaction (never looked up,
	 * never recorded, never rejected); WHITELIST_NONE otherwise.
	 * sender_whitelisted: the sender's own match, verified or not; an
	 * unverified one only keeps the sender-derived keys (sender,
	 * sender_domain) out of lookup[] and record[], since anyone can write
	 * that MAIL FROM. sender_trusted: the whitelisted sender is verified
	 * (SASL, facts->sender_verified): the client's networks and HELO are
	 * left out too and the checks after the whitelist are skipped, but
	 * the SASL account stays in both lists, so that a blocklisted account
	 * cannot vouch for itself by writing a whitelisted MAIL FROM.
	 */
	whitelist_match whitelisted;
	whitelist_match sender_whitelisted;
	bool sender_trusted;
	/* blocklist.sender_requires kept the sender's own keys out of record[]: it is not verified. */
	bool sender_withheld;
	bool have_client; /* client holds a usable (non-loopback) client address */
	addr_ip client;
	size_t nlookup, nrecord, client_at;
	const char *lookup[DECIDE_MAX_LOOKUP];
	const char *record[DECIDE_MAX_RECORD];
	/*
	 * A sender domain in record[] under domain_min_networks > 1: a trap hit
	 * lists it only once hits came from that many client networks. The hit
	 * counts domain_net, the client's /24 (IPv4) or /32 (IPv6) whatever
	 * blocklist.ipv4_prefix says, in the store set domain_set; NULL when
	 * the client never counts (loopback, no address). NULL domain_key: no
	 * domain waits for networks.
	 */
	const char *domain_key, *domain_set, *domain_net;
	char buf[DECIDE_KEYBUF]; /* the strings lookup[] and record[] point into */
	size_t buflen;
} decide_txn;

void decide_prepare(const decide_policy *policy, const decide_facts *facts, decide_txn *txn);

/* The blocklist lookup of every key of txn (its client's networks built by the store). */
void decide_lookup_query(const decide_policy *policy, const decide_txn *txn, query *q);

typedef enum {
	DECIDE_CONTINUE,  /* milter SMFIS_CONTINUE, policy DUNNO */
	DECIDE_REJECT,    /* 5xx with reply */
	DECIDE_TEMPFAIL,  /* 4xx with reply */
	DECIDE_DISCARD,   /* drop the whole message (policy DISCARD) */
	DECIDE_DROP_COPY, /* milter: accept this recipient, remove it at end of message */
	/*
	 * 4xx with reply, unless a later restriction rejects (greylisting):
	 * policy DEFER_IF_PERMIT with the reply's xcode and text (Postfix's
	 * access_map_defer_code gives the code); milter as DECIDE_TEMPFAIL.
	 */
	DECIDE_DEFER_IF_PERMIT,
	/*
	 * Accept, but keep the message in the hold queue for an admin
	 * (relay.action hold): policy HOLD with the reply's text; the milter
	 * quarantines it at end of message (smfi_quarantine).
	 */
	DECIDE_HOLD
} decide_action;

/* The prefix lengths of the client networks a sender domain is counted by, IPv4 and IPv6. */
#define DECIDE_DOMAIN_NET_V4 24
#define DECIDE_DOMAIN_NET_V6 32

/* Does a trap hit of txn, which records, count a network toward its sender domain first? */
bool decide_counts_domain(const decide_txn *txn);

/*
 * The keys a trap hit of txn blocklists, into keys[] (room for
 * DECIDE_MAX_RECORD): record[], less a domain that waits for networks
 * (txn->domain_key) while networks, the distinct client networks that hit
 * traps with it within the TTL (this hit's counted; 0 when not counted or
 * the count failed), is below policy->domain_min_networks. Returns the
 * number of keys.
 */
size_t decide_record_keys(const decide_policy *policy, const decide_txn *txn, uint64_t networks,
                          const char **keys);

const char *decide_action_name(decide_action a);

#endif
