/*
 * keyfilter: split-block Bloom filter (see keyfilter.h). A key's hash
 * picks one block of eight 64-bit words and one bit in each word. With
 * k keys a block, a test of an absent key finds all eight bits set with
 * probability about (1 - (63/64)^k)^8: 0.06% at 32 keys a block (16 bits
 * a key), 1% at 51 (10 bits a key), which is where capacity is counted.
 */
#include "store/keyfilter.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "core/hash.h"

#define WORDS 8 /* a block: 8 words of 64 bits, one cache line */
#define MIN_BLOCKS 16
#define BUILD_BITS_PER_KEY 16
#define CAPACITY_BITS_PER_KEY 10

struct keyfilter {
	size_t nblocks; /* a power of two */
	_Atomic uint64_t *words;
};

static size_t words_bytes(const keyfilter *f)
{
	return f->nblocks * WORDS * sizeof(uint64_t);
}

keyfilter *keyfilter_new(size_t nkeys)
{
	keyfilter *f = calloc(1, sizeof(*f));
	size_t want = nkeys / (WORDS * 64 / BUILD_BITS_PER_KEY) + 1;

	if (!f)
		return NULL;
	f->nblocks = MIN_BLOCKS;
	while (f->nblocks < want && f->nblocks < SIZE_MAX / (2 * WORDS * sizeof(uint64_t)))
		f->nblocks *= 2;
	/*
	 * From the kernel (page-aligned), not malloc: a filter freed by a
	 * reload goes back at once. Once malloc had freed one of megabytes, it
	 * kept the next in its heap, and each reload that replaced the store
	 * left the old filter's pages resident (4 MiB at Redis's default).
	 */
	void *p = mmap(NULL, words_bytes(f), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		free(f);
		return NULL;
	}
	f->words = p;
	keyfilter_clear(f);
	return f;
}

void keyfilter_free(keyfilter *f)
{
	if (!f)
		return;
	munmap((void *)f->words, words_bytes(f));
	free(f);
}

/* MurmurHash3's 64-bit finaliser: every input bit moves about half the output bits. */
static uint64_t mix(uint64_t h)
{
	h ^= h >> 33;
	h *= UINT64_C(0xff51afd7ed558ccd);
	h ^= h >> 33;
	h *= UINT64_C(0xc4ceb9fe1a85ec53);
	h ^= h >> 33;
	return h;
}

uint64_t keyfilter_hash(const char *key, size_t len)
{
	return mix(hash_fnv1a(HASH_FNV1A_INIT, key, len));
}

/* The block of h; its bits come from a second mix, independent of the block index. */
static _Atomic uint64_t *block_of(const keyfilter *f, uint64_t h)
{
	return f->words + (h & (f->nblocks - 1)) * WORDS;
}

static uint64_t bit_of(uint64_t g, int word)
{
	return UINT64_C(1) << (g >> (6 * word) & 63);
}

bool keyfilter_add_hash(keyfilter *f, uint64_t h)
{
	_Atomic uint64_t *b = block_of(f, h);
	uint64_t g = mix(h + UINT64_C(0x9e3779b97f4a7c15));
	bool added = false;

	for (int i = 0; i < WORDS; i++) {
		uint64_t bit = bit_of(g, i);

		if (!(atomic_load_explicit(&b[i], memory_order_relaxed) & bit)) {
			atomic_fetch_or_explicit(&b[i], bit, memory_order_relaxed);
			added = true;
		}
	}
	return added;
}

bool keyfilter_may_have_hash(const keyfilter *f, uint64_t h)
{
	_Atomic uint64_t *b = block_of(f, h);
	uint64_t g = mix(h + UINT64_C(0x9e3779b97f4a7c15));

	for (int i = 0; i < WORDS; i++)
		if (!(atomic_load_explicit(&b[i], memory_order_relaxed) & bit_of(g, i)))
			return false;
	return true;
}

void keyfilter_prefetch_hash(const keyfilter *f, uint64_t h)
{
	__builtin_prefetch((const void *)block_of(f, h));
}

void keyfilter_clear(keyfilter *f)
{
	for (size_t i = 0; i < f->nblocks * WORDS; i++)
		atomic_store_explicit(&f->words[i], 0, memory_order_relaxed);
}

size_t keyfilter_capacity(const keyfilter *f)
{
	return f->nblocks * WORDS * 64 / CAPACITY_BITS_PER_KEY;
}

size_t keyfilter_bytes(const keyfilter *f)
{
	return f->nblocks * WORDS * sizeof(uint64_t);
}
