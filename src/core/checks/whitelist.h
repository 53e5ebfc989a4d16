/*
 * whitelist: SPEC.md "Checks" item 3. A whitelisted transaction (a
 * whitelisted client network, or a whitelisted sender that is verified)
 * skips every check after this one, but for a sender verified by its
 * client's SASL login: the checks on the account (relay, ratelimit) still
 * judge it, as the blocklist does. The trap and blocklist checks, which
 * come first, read the same facts (decide_txn.whitelisted, sender_trusted)
 * through the keys decide_prepare leaves them. conf: a decide_policy.
 */
#ifndef SPAMTRAPD_CHECK_WHITELIST_H
#define SPAMTRAPD_CHECK_WHITELIST_H

#include "core/check.h"

extern const check_def check_whitelist;

#endif
