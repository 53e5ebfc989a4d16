/*
 * keyfilter: a Bloom filter of blocklist keys, split in blocks of one
 * cache line (512 bits, one bit set in each of its eight words per key),
 * so that a test costs one memory access. It answers "certainly absent"
 * or "may be present": never absent for a key that was added, present by
 * mistake for about one key in a thousand at 16 bits per key.
 *
 * Threads: adds and tests may run at once from any number of threads
 * (relaxed atomics: a test that runs next to an add may or may not see
 * it, and sees it once the add happened before it). keyfilter_clear must
 * not run next to anything whose answer is used.
 */
#ifndef SPAMTRAPD_KEYFILTER_H
#define SPAMTRAPD_KEYFILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct keyfilter keyfilter;

/* Sized for nkeys keys at 16 to 32 bits a key; NULL when out of memory. */
keyfilter *keyfilter_new(size_t nkeys);
void keyfilter_free(keyfilter *f); /* accepts NULL */

/* The hash keyfilter_add_hash and keyfilter_may_have_hash take: of the key's bytes. */
uint64_t keyfilter_hash(const char *key, size_t len);

/* Add a key; true when it set a bit (a key not seen before, as far as the filter can tell). */
bool keyfilter_add_hash(keyfilter *f, uint64_t h);
bool keyfilter_may_have_hash(const keyfilter *f, uint64_t h);
/*
 * Start loading the block of h into the cache: a caller with several keys
 * to test asks for all their blocks first, so that their cache misses
 * overlap instead of coming one after the other. No effect on any answer.
 */
void keyfilter_prefetch_hash(const keyfilter *f, uint64_t h);

/* Forget every key. */
void keyfilter_clear(keyfilter *f);

/* How many keys it holds before its false positives pass about 1%. */
size_t keyfilter_capacity(const keyfilter *f);
size_t keyfilter_bytes(const keyfilter *f);

#endif
