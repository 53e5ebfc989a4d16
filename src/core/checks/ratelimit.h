/*
 * ratelimit: rate limits per key (SPEC.md "Checks" item 5): each rule of
 * ratelimit.rules is a GCRA bucket per value of its key (the SASL
 * account, the envelope sender, the client's network, the recipient), in
 * the store (QUERY_COUNTER: both stores, the store's clock, so that
 * daemons on one Redis count together).
 *
 * needs() peeks every bucket that applies (cost 0, no write); decide()
 * refuses when one has no room, and otherwise charges them as effects
 * that apply only when the final verdict lets the recipient through
 * (CHECK_EFFECT_COUNT_ACCEPTED: in shadow mode too, so that shadow mode
 * says what enforce would do). A recipient that a later check refuses is
 * not charged; a trap recipient or a whitelisted transaction never gets
 * here (those checks stop the walk).
 *
 * unit "message" charges a message once, at its first accepted recipient
 * (check_msg.nothers: the policy front end keeps that bit in engine.c's
 * message table); unit "recipient" charges every accepted recipient.
 */
#ifndef SPAMTRAPD_CHECK_RATELIMIT_H
#define SPAMTRAPD_CHECK_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "core/check.h"
#include "core/decide.h"

/* Most rules: one store query each at a recipient (CHECK_MAX_NEEDS). */
#define RATELIMIT_RULES_MAX CHECK_MAX_NEEDS
/* A rule's name: [a-z0-9_-], 1 to 31 bytes; it names the rule's buckets in the store. */
#define RATELIMIT_NAME_MAX 32
/* The store namespace of every bucket; a bucket's key is "RULE:VALUE". */
#define RATELIMIT_NS "ratelimit"
/*
 * A sender rule counts the null sender per client network ("<>:NETWORK"):
 * one "<>" bucket for everyone would let a stranger fill it and have
 * every bounce refused.
 */
#define RATELIMIT_NULL_IPV4_PREFIX 24
#define RATELIMIT_NULL_IPV6_PREFIX 64

typedef enum {
	RATELIMIT_KEY_SASL_USERNAME,
	RATELIMIT_KEY_SENDER,
	RATELIMIT_KEY_CLIENT_ADDRESS,
	RATELIMIT_KEY_RECIPIENT
} ratelimit_key;
typedef enum { RATELIMIT_UNIT_MESSAGE, RATELIMIT_UNIT_RECIPIENT } ratelimit_unit;
typedef enum { RATELIMIT_ACTION_DEFER, RATELIMIT_ACTION_REJECT } ratelimit_action;
typedef enum { RATELIMIT_ON_ERROR_CONTINUE, RATELIMIT_ON_ERROR_TEMPFAIL } ratelimit_on_error;

/* One member of ratelimit.rules, as config.c parsed and checked it. */
typedef struct ratelimit_rule {
	char name[RATELIMIT_NAME_MAX];
	ratelimit_key key;
	ratelimit_unit unit;
	ratelimit_action action;
	uint64_t count;               /* "rate": count units ... */
	int64_t per;                  /* ... per this many seconds */
	uint64_t burst;               /* units that may go at once; default count */
	bool unauthenticated;         /* key sender: count senders of unauthenticated clients too */
	int ipv4_prefix, ipv6_prefix; /* key client_address: the client's network */
	smtp_reply reply;
} ratelimit_rule;

/* The ratelimit section of spamtrapd.json (docs/spamtrapd.json.5.md RATELIMIT). */
typedef struct ratelimit_conf {
	int on_error;        /* ratelimit_on_error */
	int64_t max_buckets; /* SQLite: the most buckets kept; 0: no cap */
	/* Not owned: the config's traps.recipient_delimiter ("" for none); cut from sender keys. */
	const char *recipient_delimiter;
	/* ratelimit.rules (config.c fills these: a list of objects has no check_key type). */
	ratelimit_rule rules[RATELIMIT_RULES_MAX];
	size_t nrules;
} ratelimit_conf;

/* The key names of ratelimit.rules[].key, unit and action, in the enums' order, NULL-terminated. */
extern const char *const ratelimit_key_names[];
extern const char *const ratelimit_unit_names[];
extern const char *const ratelimit_action_names[];

/* Whether name is a valid rule name ([a-z0-9_-], 1 to RATELIMIT_NAME_MAX - 1 bytes). */
bool ratelimit_name_ok(const char *name);

/* The GCRA parameters of a rule: ms per unit (at least 1), the burst. */
int64_t ratelimit_emission_ms(const ratelimit_rule *r);

/*
 * The bucket an administrator names as "RULE:VALUE" (spamtrapctl rate):
 * the rule of that name in conf, and VALUE made the check's way (a SASL
 * account in lower case, an address normalised, "<>" the null sender, a
 * client address turned into the rule's network). The bucket's key in
 * out (RATELIMIT_BUCKET_MAX bytes); NULL with a message in err.
 */
#define RATELIMIT_BUCKET_MAX 400
const ratelimit_rule *ratelimit_admin_bucket(const ratelimit_conf *conf, const char *spec, char *out,
                                             size_t outlen, char *err, size_t errlen);

extern const check_def check_ratelimit;

#endif
