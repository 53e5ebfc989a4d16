/*
 * blocklist: the blocklist check (SPEC.md "Checks" item 2). At MAIL FROM
 * (and at RCPT TO when a policy listener asks only then, as Postfix does
 * with smtpd_delay_reject) every key of the transaction is looked up; a
 * listed one rejects with blocklist.reject. The other recipients of a
 * message whose trap hit just listed its sender are not rejected: the
 * blocklist applies from the next transaction on (traps.on_mixed).
 * conf: a decide_policy.
 */
#ifndef SPAMTRAPD_CHECK_BLOCKLIST_H
#define SPAMTRAPD_CHECK_BLOCKLIST_H

#include "core/check.h"

extern const check_def check_blocklist;

#endif
