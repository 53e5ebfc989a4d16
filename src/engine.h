/*
 * engine: the one path from a front end to a decision. It holds the current
 * config snapshot and store, does the store lookups and writes a decision
 * needs, calls the pure core (core/decide.h), and logs one line for every
 * decision that is not "nothing known". Both front ends call only this.
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
 * decide_prepare with the network lengths the store holds, as far as it
 * can tell without I/O (store_netlens): the client's network keys are
 * built only at those lengths (at every length when it cannot tell).
 * engine_check_sender looks up again with every key when the store holds
 * more lengths by then.
 */
void engine_prepare(engine_snapshot *snap, const decide_facts *facts, decide_txn *txn);

/*
 * MAIL FROM (or a sender check at RCPT): looks up every key of txn; the
 * verdict says whether to reject. facts are those txn was prepared from
 * (a lookup prepares them again, with every key, when txn has too few). Logs blocklist hits and store errors.
 */
decide_verdict engine_check_sender(engine_snapshot *snap, const decide_facts *facts, const decide_txn *txn);

/*
 * RCPT TO: trap match; on a hit, records txn->record[] in the store (also
 * in dry-run) and logs the hit.
 */
decide_verdict engine_check_recipient(engine_snapshot *snap, const decide_facts *facts,
                                      const decide_txn *txn);

/*
 * engine_check_recipient, and, on a trap hit that records, whether any
 * lookup key of txn was blocklisted already, looked up before the hit is
 * recorded (a failed lookup counts as "no"). Costs a lookup on trap hits
 * only. The policy front end's "same message" exemption may cover only a
 * sender that this very message got blocklisted.
 */
decide_verdict engine_check_recipient_listed(engine_snapshot *snap, const decide_facts *facts,
                                             const decide_txn *txn, bool *listed_before);

/* Milter end of message, logged when it drops anything. */
decide_action engine_end_of_message(engine_snapshot *snap, const decide_facts *facts, size_t ntraps,
                                    size_t nothers);

/* Remove expired entries now (called by the purge thread). */
void engine_purge(engine *eng);

#endif
