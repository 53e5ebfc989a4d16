/*
 * engine: the one path from a front end to a decision (docs/architecture.md).
 * It holds the current config snapshot and store; for each SMTP stage it
 * runs the checks (core/pipeline.h), sends their queries to the store in
 * one call, applies their effects and logs one line for every decision
 * that is not "nothing known". Both front ends call only this.
 *
 * Snapshots: a transaction takes one with engine_acquire() and keeps it to
 * the end, so a reload never changes the rules under a message in flight.
 * engine_reload() swaps in a new config (and a new store when the store
 * settings changed); the old snapshot goes away with its last holder.
 */
#ifndef SPAMTRAPD_ENGINE_H
#define SPAMTRAPD_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "core/check.h"
#include "core/decide.h"
#include "store/store.h"

typedef struct engine engine;
typedef struct engine_snapshot engine_snapshot;

/*
 * Takes over the caller's reference to cfg. The store is not opened yet:
 * front ends bind their sockets (as root) with the engine in hand, then the
 * daemon drops privileges and calls engine_open_store, so that database
 * files belong to the user the daemon runs as. NULL + err on failure.
 */
engine *engine_new(config *cfg, char *err, size_t errlen);
/* 0, or -1 with err. Must succeed before any check is made. */
int engine_open_store(engine *eng, char *err, size_t errlen);
void engine_free(engine *eng); /* accepts NULL; all snapshots must be released */

/* Takes over cfg's reference. On failure the old config stays in force. */
int engine_reload(engine *eng, config *cfg, char *err, size_t errlen);

engine_snapshot *engine_acquire(engine *eng);
void engine_release(engine_snapshot *snap); /* accepts NULL */
const config *engine_config(const engine_snapshot *snap);
store *engine_store(const engine_snapshot *snap);

/*
 * A message in flight, the same for both front ends: the snapshot it is
 * judged under, the transaction's keys (prepared at MAIL FROM) and what
 * its checks remember between stages. The milter keeps one per connection
 * (MAIL FROM to end of message); the policy front end one per request,
 * with the message's state recalled and remembered by its "instance"
 * attribute. Fields are the engine's: front ends only pass it along.
 */
typedef struct engine_msg {
	engine_snapshot *snap; /* NULL outside a message */
	check_msg state;
	bool prepared; /* txn holds this transaction's keys */
	/*
	 * engine_dns_plan prepared txn for this stage with this
	 * sender_verified (0 or 1), for the engine_stage that follows; -1: not.
	 */
	signed char plan_verified;
	check_stage plan_stage;
	decide_txn txn; /* points into itself: never copied */
} engine_msg;

/*
 * An engine_msg outside any message, its key buffers (kilobytes, written
 * at the next MAIL FROM) left as they are: for a context made per
 * connection, where zeroing it whole cost a milter session 6,900
 * instructions (docs/performance.md, issue 18).
 */
void engine_msg_init(engine_msg *m);

/* Start a message under snap (one more reference, released by engine_msg_end). */
void engine_msg_begin(engine_msg *m, engine_snapshot *snap);
/* End it, if any: release the snapshot, forget the state. Idempotent. */
void engine_msg_end(engine_msg *m);

/*
 * Policy protocol: the state of the message whose recipients arrive as
 * separate requests, by its instance attribute (NULL or "": none kept). A
 * bounded table, best effort: a forgotten message is judged as if it were
 * new, which never lets a listed sender through.
 */
void engine_msg_recall(engine_msg *m, const char *instance);
void engine_msg_remember(const engine_msg *m, const char *instance);

/*
 * One stage of the message (CHECK_STAGE_MAIL, _RCPT or _EOM) through the
 * checks the listener runs (checks: CHECK_BIT()s; CHECKS_EVERY for the
 * milter), in SPEC.md's order: facts in, verdict out. Does the store
 * queries and writes, applies modes and effects, logs one line per
 * decision that is not "nothing known". At MAIL FROM (or at the first
 * stage the message meets) the transaction's keys are prepared from facts.
 */
check_verdict engine_stage(engine_msg *m, check_stage stage, unsigned checks, const decide_facts *facts);

/*
 * The DNS answers this stage's checks want (core/dnsplan.h), before
 * engine_stage(): fills plan and returns true when there is something to
 * resolve. The front end then resolves it (src/dns/) by plan->timeout_ms,
 * without blocking a policy worker, and calls engine_stage() with the same
 * m, stage and checks and facts->dns pointing to the answered plan. Also
 * prepares the transaction's keys (as engine_stage would).
 */
bool engine_dns_plan(engine_msg *m, check_stage stage, unsigned checks, const decide_facts *facts,
                     dnsplan *plan);

/* The milter could not keep a recipient it was told to drop (out of memory): it is not one. */
void engine_msg_forget_trap(engine_msg *m);

/*
 * fn(ctx) is called, on the thread that wrote, after a write listed a key
 * anew (query.u.record.created: the exporter's "dirty" signal), and after
 * a reload. It must not block. Set it before the front ends start; NULL: none.
 */
typedef void (*engine_change_fn)(void *ctx);
void engine_set_change_notify(engine *eng, engine_change_fn fn, void *ctx);

/* Remove expired entries now (called by the purge thread). */
void engine_purge(engine *eng);
/*
 * Count the blocklist's entries by key type for the metrics
 * (spamtrapd_blocklist_entries): a walk of the store's keys, on the
 * control thread. A failure keeps the last count (its timestamp says how
 * old) and is logged at debug level: mail logs the store's faults.
 */
void engine_count_entries(engine *eng);

#endif
