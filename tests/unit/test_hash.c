/*
 * Unit tests for core/hash: FNV-1a 64 against the published test vectors
 * (draft-eastlake-fnv, the FNV reference code's test suite), and hashing in
 * pieces equal to hashing at once (netset hashes a network field by field).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "core/hash.h"
#include "unit_table.h"

struct vector_case {
	const char *name;
	const char *in;
	size_t len; /* 0: strlen(in) */
	uint64_t want;
};

static struct vector_case vector_cases[] = {
    {"empty", "", 0, UINT64_C(0xcbf29ce484222325)},
    {"a", "a", 0, UINT64_C(0xaf63dc4c8601ec8c)},
    {"foobar", "foobar", 0, UINT64_C(0x85944171f73967e8)},
    {"one NUL byte", "\0", 1, UINT64_C(0xaf63bd4c8601b7df)},
    {"chongo was here", "chongo was here!\n", 0, UINT64_C(0x46810940eff5f915)},
};

static void test_vector_case(void **state)
{
	const struct vector_case *c = *state;
	size_t len = c->len ? c->len : strlen(c->in);

	assert_int_equal(hash_fnv1a(HASH_FNV1A_INIT, c->in, len), c->want);
}

static void test_pieces_equal_whole(void **state)
{
	static const char text[] = "spammer@example.com";
	uint64_t whole = hash_fnv1a(HASH_FNV1A_INIT, text, sizeof(text) - 1);

	(void)state;
	for (size_t split = 0; split < sizeof(text); split++) {
		uint64_t h = hash_fnv1a(HASH_FNV1A_INIT, text, split);

		assert_int_equal(hash_fnv1a(h, text + split, sizeof(text) - 1 - split), whole);
	}
	assert_int_equal(hash_fnv1a(whole, NULL, 0), whole);
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest more[] = {
	    cmocka_unit_test(test_pieces_equal_whole),
	};

	RUN_TABLE("hash_fnv1a vectors", vector_cases, test_vector_case, failed);
	failed += cmocka_run_group_tests_name("hash_fnv1a", more, NULL, NULL);
	return failed;
}
