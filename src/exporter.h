/*
 * exporter: the files of "exports" (SPEC.md "exports"), kept current by a
 * thread of their own, never on the mail path.
 *
 * The thread wakes when something marks the blocklist dirty (the engine
 * after a write that listed a key anew, the Redis subscriber after
 * another host's), and writes each export at most once per its interval:
 * changes within an interval make one export. It also writes every
 * export at least hourly (remaining times, entries that expired) and,
 * with SQLite, when the database file changed under it (spamtrapctl
 * remove). One export at a time: it lists the blocklist through the
 * store (as spamtrapctl export), renders it (core/export.c) and replaces
 * the file atomically (atomicfile.c). A failure keeps the old file, is
 * logged (at most hourly per export) and retried an interval later.
 * Exports are read from the engine's config at each pass, so a reload
 * changes them.
 *
 * With Redis and exports, a second thread keeps a connection SUBSCRIBEd
 * to the store's change channel (store_watch): another host's new entry
 * or a spamtrapctl add or remove anywhere marks the exports dirty, and
 * so does each (re)connection, since an announcement may have been
 * missed while it was down (it reconnects with a growing pause).
 */
#ifndef SPAMTRAPD_EXPORTER_H
#define SPAMTRAPD_EXPORTER_H

#include <stddef.h>

#include "engine.h"

typedef struct exporter exporter;

/*
 * Start the thread (it writes every export at once) and register with the
 * engine for its changes. NULL with err when no thread could start.
 */
exporter *exporter_new(engine *eng, char *err, size_t errlen);
/* Something changed: export within the interval. Any thread; never blocks for long. */
void exporter_mark_dirty(exporter *x);
/* Stop and join the thread (an export running finishes first). Accepts NULL. */
void exporter_free(exporter *x);

#endif
