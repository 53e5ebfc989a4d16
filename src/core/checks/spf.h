/*
 * spf: the SPF check (SPEC.md "dnsbl and spf", issue 15; docs/spf.md).
 * It is first a provider of one fact, the RFC 7208 result of the message's
 * MAIL FROM (HELO for <>) from its client, which other checks use:
 *
 *   whitelist           a whitelisted sender that passes (with a narrow
 *                       record, see spfcheck_verified) is verified
 *                       (decide_facts.sender_verified, decide_txn);
 *   blocklist           sender_requires "spf-pass": a trap hit lists the
 *                       sender's own keys only when it is so verified
 *                       (or SASL);
 *   greylist            spf_key: a passing domain whose record is narrow
 *                       (the probes of core/dnsplan.h fail) is the
 *                       triplet's client part instead of the network;
 *
 * and then a check with a verdict of its own: reject_fail (a 5xx on
 * "fail", never on softfail, an error or an authenticated client) and a
 * Received-SPF header.
 *
 * Its place in the order table (core/checks/checks.c) is for that verdict
 * only, after the checks SPEC.md orders and before the greylist (no
 * triplet is started for mail refused for failing SPF). The fact does not
 * wait for it: plan_dns runs for every check before any check decides
 * (core/pipeline.h), so the answer is there when the blocklist, the
 * whitelist and the trap check read it, whatever the position. Its mode
 * off asks no SPF at all, so the other checks then see none; shadow
 * evaluates it for them and only shadows the verdict and the header.
 *
 * It evaluates once a message (check_msg.spf) when some use wants it:
 * never for an authenticated client, a whitelisted network or loopback.
 */
#ifndef SPAMTRAPD_CHECK_SPF_H
#define SPAMTRAPD_CHECK_SPF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/check.h"
#include "core/decide.h"
#include "spf/spf.h"

typedef enum { SPFCHECK_ON_ERROR_CONTINUE, SPFCHECK_ON_ERROR_TEMPFAIL } spfcheck_on_error;

#define SPFCHECK_RECEIVER_MAX 64

/* The spf section of spamtrapd.json (docs/spamtrapd.json.5.md SPF). */
typedef struct spfcheck_conf {
	bool reject_fail;
	char *reply; /* "550 5.7.23 SPF validation failed: %{explanation}" */
	bool header;
	char *receiver;  /* the header's receiver=; NULL: this host's name */
	int on_error;    /* spfcheck_on_error: a temperror (or no answer) under reject_fail */
	int64_t timeout; /* seconds */
	/* Compiled: */
	smtp_reply reply_parsed;
	char receiver_name[SPFCHECK_RECEIVER_MAX + 1];
	/*
	 * Linked by the config after every section compiled: what the other
	 * checks want of SPF, so that it is asked only when something uses it.
	 */
	const decide_policy *policy; /* blocklist.sender_requires, the traps, the whitelist */
	bool grey_spf_key;           /* greylist.spf_key, the greylist not off */
} spfcheck_conf;

extern const check_def check_spf;

/*
 * Ask SPF (and the probes) for a whitelisted, unauthenticated sender not
 * verified yet, with that timeout: what the whitelist needs. The spf
 * check asks it, and the blocklist check too (decide_policy.spf_timeout_ms),
 * since only it runs on a policy `sender` listener and its MAIL FROM
 * lookup leaves a verified sender's client networks out.
 */
void spfcheck_plan_verify(const check_ctx *ctx, int64_t timeout_ms, struct dnsplan *plan);

/* No SPF result: not asked at this stage, nor known from an earlier one. */
#define SPFCHECK_UNKNOWN (-1)

/*
 * The message's SPF result: this stage's answer (ctx->dns), else what an
 * earlier stage left (ctx->msg->spf); an answer asked and not there by
 * the deadline is SPF_TEMPERROR; SPFCHECK_UNKNOWN when never asked.
 */
int spfcheck_result(const check_ctx *ctx);

/* CHECK_SPF_OPEN or _NARROW once both probes ended (this stage or before), else 0. */
int spfcheck_open(const check_ctx *ctx);

/*
 * What decide_facts.sender_verified is (dns: this stage's answers or
 * NULL): SPF passed for the sender and the record is narrow (the probes
 * ended without a pass). A record that passes for everyone ("+all") would
 * let anyone pose as a whitelisted sender or get a real user's address
 * blocklisted: it verifies no one.
 */
bool spfcheck_verified(const struct dnsplan *dns, const check_msg *msg);

/* What the message keeps of this stage's answers (a timeout is not kept: the next stage asks again). */
void spfcheck_remember(const struct dnsplan *dns, check_msg *msg);

#define SPFCHECK_HEADER_NAME "Received-SPF"

/*
 * After a stage: the message got its Received-SPF header if the final
 * verdict carries it (a later check's header, the greylist's, replaces it
 * on the same recipient, and a refused recipient carries none: the next
 * recipient then gets it).
 */
void spfcheck_header_sent(const check_verdict *final, check_msg *msg);

/*
 * The Received-SPF header (RFC 7208 9.1) into out: "Received-SPF: pass
 * (receiver: ...) client-ip=...; envelope-from=...; helo=...;
 * receiver=...; identity=mailfrom". envelope-from and helo are written by
 * the SMTP client: a dot-atom as it is, anything else a quoted-string
 * with '"' and '\' escaped, bytes outside printable ASCII (CR, LF, other
 * controls, 8-bit) as '?', and left out when that is longer than 300
 * bytes. The line stays under RFC 5322's 998 characters. Returns its length, 0 when
 * out is too small (then out is "").
 */
size_t spfcheck_header(enum spf_result r, const char *receiver, const char *client, const char *mailfrom,
                       const char *helo, char *out, size_t outlen);

#endif
