/*
 * decide: the decision core's shared part (see decide.h): SMTP replies and
 * the keys of a transaction. The checks themselves are in core/checks/.
 * Pure: every input is an argument, every output the return value or a
 * caller's buffer.
 */
#include "core/decide.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "core/key.h"

static bool is_xcode(const char *s, size_t len, char class)
{
	/* RFC 3463: class.subject.detail, class matching the reply code. */
	if (len < 5 || s[0] != class || s[1] != '.')
		return false;
	size_t i = 2, digits = 0, dots = 0;
	for (; i < len; i++) {
		if (isdigit((unsigned char)s[i])) {
			if (++digits > 3)
				return false;
		} else if (s[i] == '.' && digits > 0 && dots == 0) {
			dots++;
			digits = 0;
		} else {
			return false;
		}
	}
	return dots == 1 && digits > 0;
}

bool smtp_reply_parse(const char *s, smtp_reply *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (!s || strlen(s) < 4 || (s[0] != '4' && s[0] != '5') || !isdigit((unsigned char)s[1]) ||
	    !isdigit((unsigned char)s[2]) || s[3] != ' ') {
		snprintf(err, errlen, "expected \"4xx|5xx [x.y.z] text\", got \"%s\"", s ? s : "");
		return false;
	}
	memcpy(out->code, s, 3);
	const char *rest = s + 4;
	size_t toklen = strcspn(rest, " ");
	if (is_xcode(rest, toklen, s[0])) {
		memcpy(out->xcode, rest, toklen);
		rest += toklen;
		rest += strspn(rest, " ");
	}
	if (*rest == '\0') {
		snprintf(err, errlen, "reply \"%s\" has no text", s);
		return false;
	}
	if (strlen(rest) >= sizeof(out->text)) {
		snprintf(err, errlen, "reply text longer than %zu characters", sizeof(out->text) - 1);
		return false;
	}
	for (const char *p = rest; *p; p++) {
		if (iscntrl((unsigned char)*p)) {
			snprintf(err, errlen, "reply text contains a control character");
			return false;
		}
	}
	strcpy(out->text, rest);
	return true;
}

/*
 * A key of core/key.h made from in straight into txn->buf; NULL when in
 * makes no key or it does not fit. Every key but the client's networks
 * is made this way, so that no text of one type can stand for another.
 */
static const char *txn_key(decide_txn *txn, size_t (*make)(const char *, char *, size_t), const char *in)
{
	size_t room = sizeof(txn->buf) - txn->buflen;
	char *at = txn->buf + txn->buflen;
	size_t len = in ? make(in, at, room) : 0;

	if (len == 0)
		return NULL;
	txn->buflen += len + 1;
	return at;
}

/* A store set's name, prefix and name (no blocklist key), into txn->buf; NULL when it does not fit. */
static const char *txn_set_name(decide_txn *txn, const char *prefix, const char *name)
{
	size_t room = sizeof(txn->buf) - txn->buflen;
	char *at = txn->buf + txn->buflen;
	int n = snprintf(at, room, "%s%s", prefix, name);

	if (n < 0 || (size_t)n >= room)
		return NULL;
	txn->buflen += (size_t)n + 1;
	return at;
}

static void push_lookup(decide_txn *txn, const char *key)
{
	if (key && txn->nlookup < DECIDE_MAX_LOOKUP)
		txn->lookup[txn->nlookup++] = key;
}

static void push_record(decide_txn *txn, const char *key)
{
	if (key && txn->nrecord < DECIDE_MAX_RECORD)
		txn->record[txn->nrecord++] = key;
}

/* Loopback clients are the host itself (webmail, cron, a content filter's
 * reinjection): blocklisting them would stop all local mail. */
static bool is_loopback(const addr_ip *ip)
{
	static const uint8_t v6_loopback[16] = {[15] = 1};
	if (ip->version == 6)
		return memcmp(ip->bytes, v6_loopback, 16) == 0;
	return ip->bytes[0] == 127;
}

/* The client's network at the aggregation length, for record[]. NULL when it does not fit, as txn_key. */
static const char *net_key(decide_txn *txn, const addr_ip *ip, unsigned prefix)
{
	size_t room = sizeof(txn->buf) - txn->buflen;
	char *at = txn->buf + txn->buflen;
	addr_net net = addr_net_of(ip, prefix);
	size_t len = addr_net_format(&net, at, room);
	if (len >= room)
		return NULL;
	txn->buflen += len + 1;
	return at;
}

static void prepare_sender(const decide_facts *facts, decide_txn *txn)
{
	const char *raw = facts->sender;
	if (!raw) {
		txn->sender_invalid = true;
		return;
	}
	switch (addr_normalise(raw, strlen(raw), txn->sender, sizeof(txn->sender))) {
	case ADDR_OK:
		break;
	case ADDR_NULL:
		txn->null_sender = true;
		break;
	case ADDR_INVALID:
		txn->sender_invalid = true;
		txn->sender[0] = '\0';
		break;
	}
}

/* The keys of this transaction, built once and shared by both lists. */
typedef struct txn_keys {
	const char *sender, *domain, *sasl, *helo;
	const addr_ip *ip;
	bool authenticated;
	bool verified; /* facts->sender_verified: SPF passed for the sender */
} txn_keys;

/*
 * One forged sender must not list a whole domain (SPEC.md "Config"): the
 * domain key waits for hits from domain_min_networks client networks,
 * counted by /24 and /32 so that one spammer's neighbouring addresses
 * count once: an IPv6 /48 is what one customer gets, and one LIR's /32
 * holds 65536 of them. Loopback and address-less clients (k->ip NULL) never count.
 */
static void prepare_domain_count(const decide_policy *policy, decide_txn *txn, const txn_keys *k)
{
	if (policy->domain_min_networks <= 1 || !k->domain)
		return;
	txn->domain_key = k->domain;
	txn->domain_set = txn_set_name(txn, "sender_domain:", k->domain + 1);
	if (k->ip && txn->domain_set)
		txn->domain_net =
		    net_key(txn, k->ip, k->ip->version == 4 ? DECIDE_DOMAIN_NET_V4 : DECIDE_DOMAIN_NET_V6);
}

static void prepare_record(const decide_policy *policy, decide_txn *txn, const txn_keys *k)
{
	/*
	 * A bounce comes from the server that got a message with a forged
	 * sender, not from the spammer (backscatter): by default it records
	 * nothing, so that one forged message cannot block a large
	 * provider's outbound address.
	 */
	if (txn->null_sender && policy->null_sender == NULL_SENDER_IGNORE)
		return;
	/*
	 * blocklist.sender_requires spf-pass: anyone can write a real user's
	 * address in MAIL FROM to a trap; only a sender proven (SPF, or the
	 * client's login) is the one to blame, else only the client is.
	 */
	bool sender_keys =
	    policy->sender_requires != SENDER_REQUIRES_SPF_PASS || k->authenticated || k->verified;

	txn->sender_withheld = !sender_keys && ((policy->keys & DECIDE_KEY_SENDER && k->sender) ||
	                                        (policy->keys & DECIDE_KEY_SENDER_DOMAIN && k->domain));

	if ((policy->keys & DECIDE_KEY_SENDER) && sender_keys)
		push_record(txn, k->sender);
	/* An authenticated client is a shared submission host, not the spammer. */
	if ((policy->keys & DECIDE_KEY_CLIENT_ADDRESS) && k->ip && !k->authenticated) {
		unsigned prefix = k->ip->version == 4 ? policy->ipv4_prefix : policy->ipv6_prefix;
		push_record(txn, net_key(txn, k->ip, prefix));
	}
	if (policy->keys & DECIDE_KEY_SASL_USERNAME)
		push_record(txn, k->sasl);
	if ((policy->keys & DECIDE_KEY_SENDER_DOMAIN) && sender_keys) {
		push_record(txn, k->domain);
		prepare_domain_count(policy, txn, k);
	}
	if (policy->keys & DECIDE_KEY_HELO_NAME)
		push_record(txn, k->helo);
}

/*
 * SPEC "Checks" item 3: a whitelisted network exempts everything. A
 * whitelisted sender can be forged, so on its own it only exempts its own
 * keys; verified (facts->sender_verified, or the client authenticated
 * with a name that makes a key: an account that could not be judged must
 * not vouch for anything) it is trusted (see decide_txn.sender_trusted).
 */
static void prepare_whitelist(const decide_policy *policy, const decide_facts *facts, bool account_keyed,
                              decide_txn *txn)
{
	bool verified = facts->sender_verified || account_keyed;

	txn->whitelisted = WHITELIST_NONE;
	txn->sender_whitelisted = WHITELIST_NONE;
	txn->sender_trusted = false;
	if (!policy->whitelist)
		return;
	if (!txn->sender_invalid)
		txn->sender_whitelisted = whitelist_check_sender(policy->whitelist, txn->sender);
	if (whitelist_check_client(policy->whitelist, facts->client_address))
		txn->whitelisted = WHITELIST_CLIENT_NETWORK;
	else
		txn->sender_trusted = verified && txn->sender_whitelisted != WHITELIST_NONE;
}

void decide_prepare(const decide_policy *policy, const decide_facts *facts, decide_txn *txn)
{
	memset(txn, 0, offsetof(decide_txn, buf));
	txn->buflen = 0;
	prepare_sender(facts, txn);
	const char *sasl = txn_key(txn, key_sasl, facts->sasl_username);
	prepare_whitelist(policy, facts, sasl != NULL, txn);
	/* A whitelisted sender's own keys are never looked up nor recorded. */
	bool have_sender =
	    !txn->null_sender && !txn->sender_invalid && txn->sender_whitelisted == WHITELIST_NONE;

	/* A trusted sender's client may be a hotel's or a mobile network's: its networks are not judged. */
	txn->have_client = !txn->sender_trusted && facts->client_address &&
	                   addr_ip_parse(facts->client_address, &txn->client) && !is_loopback(&txn->client);

	/* Being authenticated does not depend on the name making a key. */
	txn_keys k = {.ip = txn->have_client ? &txn->client : NULL,
	              .authenticated = facts->sasl_username && *facts->sasl_username,
	              .verified = facts->sender_verified};
	if (have_sender) {
		k.sender = txn_key(txn, key_sender, txn->sender);
		k.domain = txn_key(txn, key_domain, txn->sender);
	}
	k.sasl = sasl;
	if (!txn->sender_trusted)
		k.helo = txn_key(txn, key_helo, facts->helo);

	push_lookup(txn, k.sender);
	push_lookup(txn, k.sasl);
	txn->client_at = txn->nlookup; /* the client's networks rank after the sender and the account */
	push_lookup(txn, k.domain);
	push_lookup(txn, k.helo);
	prepare_record(policy, txn, &k);
}

void decide_lookup_query(const decide_policy *policy, const decide_txn *txn, query *q)
{
	memset(q, 0, sizeof(*q));
	q->kind = QUERY_BLOCKLIST_LOOKUP;
	for (size_t i = 0; i < txn->nlookup && i < QUERY_LOOKUP_KEYS_MAX; i++)
		q->u.lookup.keys[q->u.lookup.nkeys++] = txn->lookup[i];
	q->u.lookup.client = txn->have_client ? &txn->client : NULL;
	q->u.lookup.client_at = txn->client_at;
	q->u.lookup.ipv4_prefix = policy->ipv4_prefix;
	q->u.lookup.ipv6_prefix = policy->ipv6_prefix;
}

/* Is key, one of record[], the domain that waits for networks? */
static bool waits_for_networks(const decide_txn *txn, const char *key)
{
	return txn->domain_key && key == txn->domain_key;
}

bool decide_counts_domain(const decide_txn *txn)
{
	for (size_t i = 0; i < txn->nrecord; i++)
		if (waits_for_networks(txn, txn->record[i]))
			return txn->domain_set && txn->domain_net;
	return false;
}

size_t decide_record_keys(const decide_policy *policy, const decide_txn *txn, uint64_t networks,
                          const char **keys)
{
	size_t n = 0;

	for (size_t i = 0; i < txn->nrecord && n < DECIDE_MAX_RECORD; i++)
		if (!waits_for_networks(txn, txn->record[i]) || networks >= policy->domain_min_networks)
			keys[n++] = txn->record[i];
	return n;
}

const char *decide_action_name(decide_action a)
{
	switch (a) {
	case DECIDE_CONTINUE:
		return "continue";
	case DECIDE_REJECT:
		return "reject";
	case DECIDE_TEMPFAIL:
		return "tempfail";
	case DECIDE_DISCARD:
		return "discard";
	case DECIDE_DROP_COPY:
		return "drop-copy";
	case DECIDE_DEFER_IF_PERMIT:
		return "defer";
	case DECIDE_HOLD:
		return "hold";
	}
	return "?";
}
