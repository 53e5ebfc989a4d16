/*
 * decide: the decision core. Facts of an SMTP transaction, the result of
 * the blocklist lookup and the current time go in; a verdict comes out:
 * what to answer, why, and which blocklist keys to record. No I/O, no
 * clock, no logging, no globals: both front ends (milter, policy) reach it
 * through engine.c, which does the store work and the logging around it.
 *
 * SPEC.md "Replies" is the table this module implements.
 */
#ifndef SPAMTRAPD_DECIDE_H
#define SPAMTRAPD_DECIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
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

/* The part of a config snapshot the core decides with. */
typedef struct decide_policy {
	bool dry_run;
	trap_action action;
	on_mixed_policy on_mixed;
	null_sender_policy null_sender;
	unsigned keys; /* DECIDE_KEY_* */
	int64_t ttl;   /* seconds a trap hit keeps a key blocklisted */
	unsigned ipv4_prefix, ipv6_prefix;
	/* blocklist.sender_domain_min_networks; 0 and 1: one hit lists the domain */
	unsigned domain_min_networks;
	smtp_reply reject;      /* blocklist.reject */
	bool on_error_tempfail; /* store.on_error */
	const trapset *traps;
	const whitelist *whitelist;
} decide_policy;

typedef enum { DECIDE_FRONT_POLICY, DECIDE_FRONT_MILTER } decide_front;

/* Facts of a transaction as the front end saw them; any may be NULL. */
typedef struct decide_facts {
	decide_front front;
	const char *client_address; /* "192.0.2.7", "2001:db8::1"; "unknown" ok */
	const char *helo;
	const char *sender;        /* raw envelope form: "<a@b>", "a@b", "<>", "" */
	const char *sasl_username; /* set only for authenticated clients */
	const char *recipient;
	const char *queue_id;
	/*
	 * A check proved the sender is not forged (SPF pass, once the spf
	 * check exists). An authenticated client verifies its sender too,
	 * without this. Only a verified whitelisted sender exempts the whole
	 * transaction (SPEC "Checks" item 3).
	 */
	bool sender_verified;
} decide_facts;

/* IPv4 networks /8../32 and IPv6 /16../128 in steps of 4, plus the rest. */
#define DECIDE_MAX_LOOKUP 48
#define DECIDE_MAX_RECORD 8
#define DECIDE_KEYBUF 4096

/*
 * Network lengths as a bit set: bit LEN of v4 for an IPv4 /LEN, bit LEN of
 * v6[] (LEN / 64, LEN % 64) for an IPv6 one. The store's lengths present
 * (store.h store_netmask has the same layout), and which of them a
 * decide_txn built.
 */
typedef struct decide_netmask {
	uint64_t v4;
	uint64_t v6[3];
} decide_netmask;

/* A lookup key's network length, as decide_txn.lookup_netlen holds it (store.h's STORE_NETLEN too). */
#define DECIDE_NETLEN_NONE (-1)
#define DECIDE_NETLEN(family, len) ((int16_t)((family) == 6 ? 256 + (len) : (len)))

/*
 * A transaction's keys, prepared once per MAIL FROM (milter) or per request
 * (policy), in the typed forms of core/key.h (user@example.com,
 * "sasl:x"@example.com, @example.com, 192.0.2.0/24, sasl:NAME, helo:NAME).
 * lookup[] holds every key a blocklist entry may match at MAIL FROM (the
 * client address at every network length an admin may have added), most
 * specific first; record[] the keys a trap hit in this transaction
 * blocklists under policy->keys, traps.null_sender, the SASL rule and the
 * whitelist (see whitelisted below).
 */
typedef struct decide_txn {
	char sender[ADDR_MAX]; /* normalised; "" for the null sender */
	bool null_sender;
	bool sender_invalid;
	/*
	 * whitelisted: what exempts the whole transaction (never looked up,
	 * never recorded, never rejected): a client network, or a whitelisted
	 * sender that is verified; WHITELIST_NONE otherwise. sender_whitelisted:
	 * the sender's own match, verified or not; an unverified one only
	 * keeps the sender-derived keys (sender, sender_domain) out of lookup[]
	 * and record[], since anyone can write that MAIL FROM.
	 */
	whitelist_match whitelisted;
	whitelist_match sender_whitelisted;
	size_t nlookup, nrecord;
	const char *lookup[DECIDE_MAX_LOOKUP];
	/*
	 * Of each lookup key written "ADDRESS/LEN" (a network), its family and
	 * length as DECIDE_NETLEN(4 or 6, LEN); DECIDE_NETLEN_NONE for every
	 * other key, the client's host address (written without "/LEN")
	 * among them. The store then need not parse the keys to find them.
	 */
	int16_t lookup_netlen[DECIDE_MAX_LOOKUP];
	/*
	 * The client network lengths lookup[] was built for: every length
	 * (all bits set) unless decide_prepare_lens was given fewer. A store
	 * that holds a length outside it must not answer "not found".
	 */
	decide_netmask built;
	const char *record[DECIDE_MAX_RECORD];
	/*
	 * A sender domain in record[] under domain_min_networks > 1: a trap hit
	 * lists it only once hits came from that many client networks. The hit
	 * counts domain_net, the client's /24 (IPv4) or /48 (IPv6) whatever
	 * blocklist.ipv4_prefix says, in the store set domain_set; NULL when
	 * the client never counts (loopback, no address). NULL domain_key: no
	 * domain waits for networks.
	 */
	const char *domain_key, *domain_set, *domain_net;
	char buf[DECIDE_KEYBUF]; /* the strings lookup[] and record[] point into */
	size_t buflen;
} decide_txn;

void decide_prepare(const decide_policy *policy, const decide_facts *facts, decide_txn *txn);

/*
 * decide_prepare with the client's network keys only at the lengths of
 * present (the store's lengths present, read by the caller) plus the host
 * and the configured prefix; NULL: every length, as decide_prepare. With
 * every bit set, lookup[] is byte for byte decide_prepare's.
 */
void decide_prepare_lens(const decide_policy *policy, const decide_facts *facts,
                         const decide_netmask *present, decide_txn *txn);

typedef enum {
	DECIDE_CONTINUE, /* milter SMFIS_CONTINUE, policy DUNNO */
	DECIDE_REJECT,   /* 5xx with reply */
	DECIDE_TEMPFAIL, /* 4xx with reply */
	DECIDE_DISCARD,  /* drop the whole message (policy DISCARD) */
	DECIDE_DROP_COPY /* milter: accept this recipient, remove it at end of message */
} decide_action;

typedef enum {
	DECIDE_REASON_NONE, /* nothing known: not logged */
	DECIDE_REASON_WHITELISTED,
	DECIDE_REASON_BLOCKLISTED,
	DECIDE_REASON_TRAP,
	DECIDE_REASON_STORE_ERROR,
} decide_reason;

typedef enum { DECIDE_LOOKUP_MISS, DECIDE_LOOKUP_HIT, DECIDE_LOOKUP_ERROR } decide_lookup;

typedef struct decide_verdict {
	decide_action action;
	decide_reason reason;
	/* What enforce mode does; differs from action only in dry-run. */
	decide_action enforce_action;
	smtp_reply reply;             /* for REJECT, TEMPFAIL, DISCARD (text only) */
	bool record;                  /* effect: blocklist txn->record[] until now + ttl */
	char trap[TRAPSET_MATCH_MAX]; /* the trap hit, for REASON_TRAP */
} decide_verdict;

/* MAIL FROM (and sender checks at RCPT): is any key of the transaction blocklisted? */
decide_verdict decide_sender(const decide_policy *policy, const decide_txn *txn, decide_lookup lookup);

/* RCPT TO: is the recipient a trap? */
decide_verdict decide_recipient(const decide_policy *policy, const decide_txn *txn,
                                const decide_facts *facts);

/* The prefix lengths of the client networks a sender domain is counted by, IPv4 and IPv6. */
#define DECIDE_DOMAIN_NET_V4 24
#define DECIDE_DOMAIN_NET_V6 48

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

/*
 * The effect of a trap verdict could not be stored. The trap copy is still
 * handled as decided, unless store.on_error is tempfail: then the recipient
 * gets a 4xx so that the sender retries and the hit can be recorded then.
 */
decide_verdict decide_store_failed(const decide_policy *policy, const decide_verdict *v);

/*
 * Milter end of message: ntraps recipients were accepted as DROP_COPY, nothers
 * are ordinary. DECIDE_DISCARD drops the message (only traps, or on_mixed
 * discard-all), DECIDE_DROP_COPY removes the trap recipients, DECIDE_CONTINUE
 * leaves the message alone.
 */
decide_action decide_end_of_message(const decide_policy *policy, size_t ntraps, size_t nothers);

const char *decide_action_name(decide_action a);
const char *decide_reason_name(decide_reason r);

#endif
