/*
 * trap: the spamtrap check (SPEC.md "Checks" item 1). At RCPT TO a trap
 * recipient gets traps.action and its transaction's keys are recorded in
 * the blocklist (in shadow mode too: trying spamtrapd on live mail must
 * still learn); a trap recipient is never judged by a later check. At end
 * of message (milter) the trap copies are dropped, or the whole message
 * when only traps remain (traps.on_mixed). conf: a decide_policy.
 */
#ifndef SPAMTRAPD_CHECK_TRAP_H
#define SPAMTRAPD_CHECK_TRAP_H

#include "core/check.h"

extern const check_def check_trap;

#endif
