/*
 * hash: 64-bit FNV-1a (Fowler, Noll, Vo; draft-eastlake-fnv), the one
 * string hash of spamtrapd: one xor and one multiply per byte, a good
 * spread on short keys such as addresses, and incremental, so several
 * fields can be hashed one after another. Not keyed: use it for tables
 * filled from the config, or where a collision costs only a probe.
 * Pure, header-only.
 */
#ifndef SPAMTRAPD_HASH_H
#define SPAMTRAPD_HASH_H

#include <stddef.h>
#include <stdint.h>

/* The FNV-1a offset basis: where every hash starts. */
#define HASH_FNV1A_INIT UINT64_C(0xcbf29ce484222325)

/* h continued over len bytes at data: hash_fnv1a(HASH_FNV1A_INIT, s, n) hashes s. */
static inline uint64_t hash_fnv1a(uint64_t h, const void *data, size_t len)
{
	const unsigned char *p = data;

	for (size_t i = 0; i < len; i++)
		h = (h ^ p[i]) * UINT64_C(0x100000001b3);
	return h;
}

#endif
