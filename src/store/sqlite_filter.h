/*
 * sqlite_filter: the SQLite store's absent-key filter. Most lookups ask
 * for keys that are not in the blocklist; with this filter they are
 * answered in memory, with no SQLite transaction, no lock and no read of
 * the file. It never answers "absent" for a key that a committed write
 * of any process (this daemon, spamtrapctl, an sqlite3 shell) has put in
 * the file: see sqlite_filter.c for how that is guaranteed.
 *
 * The filter is built by a thread of its own, started by the first
 * lookup (spamtrapctl, which makes none, never builds one); until it is
 * ready, and whenever the file changed in a way the filter does not know,
 * sqlite_filter_check says so and the lookup asks SQLite as before. The
 * same thread runs the checkpoints of the write-ahead log, so that trap
 * hits do not wait for the disk.
 */
#ifndef SPAMTRAPD_SQLITE_FILTER_H
#define SPAMTRAPD_SQLITE_FILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

typedef struct sqlite_filter sqlite_filter;

/* The state of the file a check answered for (the WAL-index header then). */
typedef struct sqlite_filter_view {
	uint32_t hdr[12];
} sqlite_filter_view;

/* One write transaction of this process, from sqlite_filter_write_begin to _end. */
typedef struct sqlite_filter_write {
	uint32_t hdr[12];
	bool known; /* hdr is the header when the transaction took the write lock */
} sqlite_filter_write;

/* For the file at path (its schema in place, in WAL mode); NULL when out of memory. */
sqlite_filter *sqlite_filter_new(const char *path);
void sqlite_filter_free(sqlite_filter *f); /* accepts NULL; no call may be running */

/*
 * Which of keys[] (at most 64) may be in the file now: -1 when the filter
 * cannot tell (not built yet, or the file changed since), else the number
 * of keys that may be there, with bit i of *maybe set for each; 0 means
 * that none is. *view records the state it answered for. netlens: the
 * keys' network lengths (store.h STORE_NETLEN), or NULL to parse them.
 */
int sqlite_filter_check(sqlite_filter *f, const char *const *keys, const int16_t *netlens, size_t nkeys,
                        uint64_t *maybe, sqlite_filter_view *view);

/*
 * sqlite_filter_check for keys built only for the network lengths of built
 * (store.h store_lookup_built): -1 also when the file holds a length
 * outside built, so that SQLite answers (and tells the caller so).
 */
int sqlite_filter_check_built(sqlite_filter *f, const char *const *keys, const int16_t *netlens, size_t nkeys,
                              const store_netmask *built, uint64_t *maybe, sqlite_filter_view *view);

/*
 * The network lengths present in the file now, from the filter (no I/O):
 * false when it cannot tell (not built yet, the file changed since).
 */
bool sqlite_filter_lens(sqlite_filter *f, store_netmask *out);

/*
 * Inside a read transaction: is it reading the state *view describes? Then
 * the keys a check found absent are absent in it too.
 */
bool sqlite_filter_unchanged(const sqlite_filter *f, const sqlite_filter_view *view);

/*
 * A commit of this process has filled the write-ahead log: true when the
 * filter's thread will run the checkpoint (which copies the log into the
 * database and waits for the disk twice), false when there is no such
 * thread and the caller must, as SQLite's own automatic checkpoint would.
 * Either way the committing thread does not wait for the disk.
 */
bool sqlite_filter_checkpoint(sqlite_filter *f);

/*
 * A write transaction of this process: _begin once it holds SQLite's
 * write lock (after BEGIN IMMEDIATE), _end after its COMMIT or ROLLBACK,
 * whatever their result, with every key it may have inserted; committed
 * only when COMMIT succeeded after the transaction changed a row (after a
 * ROLLBACK, a failed statement or a failed COMMIT, and after a commit
 * that changed nothing and so wrote nothing, any change of the file since
 * _begin is someone else's).
 * Writes of this process must not overlap (they take turns before BEGIN).
 * A write that does not call them (an autocommit DELETE) is handled like
 * one of another process: correct, at the cost of a rebuild.
 */
void sqlite_filter_write_begin(sqlite_filter *f, sqlite_filter_write *w);
void sqlite_filter_write_end(sqlite_filter *f, const sqlite_filter_write *w, bool committed,
                             const char *const *keys, size_t nkeys);

#endif
