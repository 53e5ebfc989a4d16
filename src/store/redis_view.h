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

/* Lookups answered from the view alone (counted by the caller with redis_view_answered). */
void redis_view_answered(redis_view *v);
uint64_t redis_view_answers(const redis_view *v);

#endif
