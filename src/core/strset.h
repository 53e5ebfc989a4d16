/*
 * strset: a set of byte strings (open addressing). Owns copies of what is
 * added. Used for trap addresses and domains, whitelisted addresses and
 * domains: 100,000 entries load in milliseconds and a lookup is one hash.
 * Not thread-safe for writes; concurrent readers of a set that no longer
 * changes are fine (config snapshots are immutable once built).
 */
#ifndef SPAMTRAPD_STRSET_H
#define SPAMTRAPD_STRSET_H

#include <stdbool.h>
#include <stddef.h>

typedef struct strset strset;

strset *strset_new(size_t expected);
void strset_free(strset *set); /* accepts NULL */
/* 0 on success (also when already present), -1 when out of memory. */
int strset_add(strset *set, const char *s, size_t len);
bool strset_contains(const strset *set, const char *s, size_t len);
size_t strset_count(const strset *set);

#endif
