/*
 * redis_view: the Redis store's local view of which blocklist keys exist,
 * so that a lookup of keys that are not listed (most lookups) is answered
 * without a round trip. It is a keyfilter of every key under the prefix,
 * filled by a SCAN and kept current from the server's invalidation
 * messages (client tracking, see store_redis.c): it never answers
 * "absent" for a key written before the last confirmation it had.
 *
 * No I/O here: the view's thread in store_redis.c feeds it (the writer
 * side, one thread) and lookups ask it (the reader side, any thread).
 * A reader's answer holds only when redis_view_still() agrees afterwards:
 * the view was not disabled, rebuilt or fed meanwhile.
 */
#ifndef SPAMTRAPD_REDIS_VIEW_H
#define SPAMTRAPD_REDIS_VIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* A view older than this (since the last confirmation it had) answers nothing. */
#define REDIS_VIEW_STALE_MS 500

typedef struct redis_view redis_view;

/* For at most max_keys keys (its memory: 2 to 4 bytes a key); NULL when out of memory. */
redis_view *redis_view_new(size_t max_keys);
void redis_view_free(redis_view *v); /* accepts NULL */

/* --- the writer (one thread) --- */

/* Answer nothing until redis_view_ready. */
void redis_view_disable(redis_view *v);
/* Disable and forget every key: a rebuild starts. */
void redis_view_begin(redis_view *v);
/*
 * A key (without the prefix) that exists or may: from the SCAN, an
 * invalidation, or a write of this process. Any thread may add. False when
 * the view holds more keys than it was sized for: it must be rebuilt, or
 * stay disabled.
 */
bool redis_view_add(redis_view *v, const char *key, size_t len);
/* The same for a key of the rebuild's SCAN (between redis_view_begin and redis_view_ready). */
bool redis_view_add_scanned(redis_view *v, const char *key, size_t len);
/* Everything written before the server answered a PING sent at sent_ms (monotonic) has been added. */
void redis_view_confirm(redis_view *v, int64_t sent_ms);
/* The rebuild is done and confirmed: answer again. */
void redis_view_ready(redis_view *v);
/* Keys added since redis_view_begin (with their false positives), and the most it may hold. */
size_t redis_view_keys(const redis_view *v);
size_t redis_view_max_keys(const redis_view *v);

/*
 * The writer is about to read messages from the server (_reading) and
 * has added what they said (_read): a reader that overlaps it cannot
 * trust what it saw.
 */
void redis_view_reading(redis_view *v);
void redis_view_read(redis_view *v);

/* --- the readers --- */

typedef struct redis_view_token {
	uint64_t state, reads;
} redis_view_token;

/* May the view answer at now_ms (monotonic)? Fills *t for redis_view_still. */
bool redis_view_enter(redis_view *v, int64_t now_ms, redis_view_token *t);
/*
 * Which of keys[] (at most 64) may exist: bit i of the result for
 * keys[i]; 0 means none does.
 */
uint64_t redis_view_test(const redis_view *v, const char *const *keys, size_t nkeys);
/* The network lengths of the keys it holds (store_netlens): a lookup need not build the others. */
void redis_view_lens(const redis_view *v, store_netmask *out);
/* True when nothing changed since redis_view_enter: the answers of redis_view_test hold. */
bool redis_view_still(redis_view *v, const redis_view_token *t);

/*
 * What the view remembers of keys that may exist: the answers of earlier
 * round trips (a live entry, or none), so that a lookup of a listed key
 * (a blocked sender's next RCPT) need not ask again. An answer is
 * forgotten when its key is added (redis_view_add: an invalidation, or a
 * write of this process, before it is sent and again once it is done)
 * and with every rebuild or disable. It is remembered only when its key
 * was not added between redis_view_recall (which gives *gen, to be
 * called before the round trip is sent) and redis_view_remember: that
 * add may be the invalidation of a write after the trip's read. At most
 * REDIS_VIEW_ANSWERS, one per slot of its key's hash (a key of the same
 * slot replaces it); an entry too long for a slot is not kept.
 */
#define REDIS_VIEW_ANSWERS 65536
/* Slots whose index is the same modulo this share the gen that refuses an overtaken answer. */
#define REDIS_VIEW_ANSWER_GENS 4096

typedef enum { REDIS_VIEW_UNKNOWN, REDIS_VIEW_NONE, REDIS_VIEW_FOUND } redis_view_answer;

/*
 * The remembered answer for key under t (a found entry into *out), and
 * the gen of the key's group of slots for redis_view_remember; check
 * redis_view_still afterwards before using the answer.
 */
redis_view_answer redis_view_recall(redis_view *v, const redis_view_token *t, const char *key,
                                    store_entry *out, uint64_t *gen);
/* A round trip's answer for key (e NULL: no live entry); dropped when the key was added since gen. */
void redis_view_remember(redis_view *v, const redis_view_token *t, const char *key, const store_entry *e,
                         uint64_t gen);

/* Lookups answered from the view alone (counted by the caller with redis_view_answered). */
void redis_view_answered(redis_view *v);
uint64_t redis_view_answers(const redis_view *v);

#endif
