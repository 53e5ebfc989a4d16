/*
 * strset: a set of byte strings (see strset.h).
 *
 * Open addressing with linear probing in a power-of-two table that is kept
 * at most half full, so a lookup is one FNV-1a hash and a short probe run.
 * Each slot caches the string's hash so that growing never rehashes the
 * strings and most mismatches are settled without a memcmp. The set owns a
 * copy of every string. Errors: -1 from strset_add when out of memory (the
 * set is unchanged).
 */
#include "core/strset.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"

#define STRSET_MIN_SLOTS 16

typedef struct strset_slot {
	char *str; /* NULL: empty slot */
	size_t len;
	uint64_t hash;
} strset_slot;

struct strset {
	strset_slot *slots;
	size_t mask; /* number of slots - 1 */
	size_t count;
};

/* Smallest power of two >= 2 * n (load factor <= 0.5), or 0 on overflow. */
static size_t slots_for(size_t n)
{
	size_t slots = STRSET_MIN_SLOTS;

	while (slots / 2 < n) {
		if (slots > SIZE_MAX / 2 / sizeof(strset_slot))
			return 0;
		slots *= 2;
	}
	return slots;
}

/* The slot holding s, or the empty slot where it belongs. */
static strset_slot *find_slot(const strset *set, const char *s, size_t len, uint64_t hash)
{
	size_t i = (size_t)hash & set->mask;

	for (;;) {
		strset_slot *slot = &set->slots[i];

		if (slot->str == NULL)
			return slot;
		if (slot->hash == hash && slot->len == len && memcmp(slot->str, s, len) == 0)
			return slot;
		i = (i + 1) & set->mask;
	}
}

strset *strset_new(size_t expected)
{
	strset *set = calloc(1, sizeof(*set));
	size_t slots = slots_for(expected);

	if (set == NULL || slots == 0) {
		free(set);
		return NULL;
	}
	set->slots = calloc(slots, sizeof(strset_slot));
	if (set->slots == NULL) {
		free(set);
		return NULL;
	}
	set->mask = slots - 1;
	return set;
}

void strset_free(strset *set)
{
	if (set == NULL)
		return;
	for (size_t i = 0; i <= set->mask; i++)
		free(set->slots[i].str);
	free(set->slots);
	free(set);
}

/* Move every entry into a table twice the size. */
static int grow(strset *set)
{
	size_t oldslots = set->mask + 1;
	strset_slot *old = set->slots;
	strset_slot *fresh;

	if (oldslots > SIZE_MAX / 2 / sizeof(strset_slot))
		return -1;
	fresh = calloc(oldslots * 2, sizeof(strset_slot));
	if (fresh == NULL)
		return -1;
	set->slots = fresh;
	set->mask = oldslots * 2 - 1;
	for (size_t i = 0; i < oldslots; i++) {
		if (old[i].str != NULL)
			*find_slot(set, old[i].str, old[i].len, old[i].hash) = old[i];
	}
	free(old);
	return 0;
}

int strset_add(strset *set, const char *s, size_t len)
{
	uint64_t hash = hash_fnv1a(HASH_FNV1A_INIT, s, len);
	strset_slot *slot = find_slot(set, s, len, hash);
	char *copy;

	if (slot->str != NULL)
		return 0;
	if ((set->count + 1) * 2 > set->mask + 1) {
		if (grow(set) != 0)
			return -1;
		slot = find_slot(set, s, len, hash);
	}
	copy = malloc(len + 1);
	if (copy == NULL)
		return -1;
	memcpy(copy, s, len);
	copy[len] = '\0';
	slot->str = copy;
	slot->len = len;
	slot->hash = hash;
	set->count++;
	return 0;
}

bool strset_contains(const strset *set, const char *s, size_t len)
{
	if (set == NULL || s == NULL)
		return false;
	return find_slot(set, s, len, hash_fnv1a(HASH_FNV1A_INIT, s, len))->str != NULL;
}

size_t strset_count(const strset *set)
{
	return set != NULL ? set->count : 0;
}
