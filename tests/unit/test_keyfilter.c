/*
 * Unit tests for store/keyfilter: a key added is never reported absent,
 * at every size; keys never added are reported present about as rarely
 * as the header promises, up to the capacity it states; clear forgets.
 * Keys are shaped like the blocklist's (senders, networks, HELO names).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "store/keyfilter.h"
#include "unit_table.h"

#define AT_CAPACITY SIZE_MAX

struct size_case {
	const char *name;
	size_t sized_for; /* keyfilter_new's argument */
	size_t added;     /* keys added; AT_CAPACITY: keyfilter_capacity's */
	double max_fp;    /* largest share of absent keys reported present */
};

static struct size_case size_cases[] = {
    {"empty", 0, 0, 0.0},
    {"a few keys in the smallest filter", 0, 50, 0.001},
    {"10,000 keys as sized", 10000, 10000, 0.004},
    {"200,000 keys as sized", 200000, 200000, 0.004},
    {"up to the stated capacity", 10000, AT_CAPACITY, 0.02},
};

static void key_of(size_t i, bool added, char *buf, size_t len)
{
	switch (i % 3) {
	case 0:
		snprintf(buf, len, "%s%zu@example.com", added ? "in" : "out", i);
		break;
	case 1:
		snprintf(buf, len, "%s.%zu.%zu.0/24", added ? "10" : "11", i >> 8 & 255, i & 255);
		break;
	default:
		snprintf(buf, len, "helo:%s-%zu.example.net", added ? "in" : "out", i);
	}
}

static bool may_have(const keyfilter *f, const char *key)
{
	return keyfilter_may_have_hash(f, keyfilter_hash(key, strlen(key)));
}

static void test_size_case(void **state)
{
	const struct size_case *c = *state;
	keyfilter *f = keyfilter_new(c->sized_for);
	size_t n, fp = 0, probes = 100000;
	char key[64];

	assert_non_null(f);
	n = c->added == AT_CAPACITY ? keyfilter_capacity(f) : c->added;
	assert_true(keyfilter_capacity(f) >= c->sized_for);
	for (size_t i = 0; i < n; i++) {
		key_of(i, true, key, sizeof(key));
		keyfilter_add_hash(f, keyfilter_hash(key, strlen(key)));
	}
	for (size_t i = 0; i < n; i++) {
		key_of(i, true, key, sizeof(key));
		if (!may_have(f, key))
			fail_msg("%s was added but is reported absent", key);
	}
	for (size_t i = 0; i < probes; i++) {
		key_of(i, false, key, sizeof(key));
		fp += may_have(f, key);
	}
	if ((double)fp / (double)probes > c->max_fp)
		fail_msg("%zu of %zu absent keys reported present with %zu keys in %zu bytes", fp, probes, n,
		         keyfilter_bytes(f));
	keyfilter_free(f);
}

/* Adding reports whether the key set a bit; clear forgets every key. */
static void test_add_reports_new_and_clear_forgets(void **state)
{
	keyfilter *f = keyfilter_new(1000);
	uint64_t h = keyfilter_hash("spammer@example.com", 19);

	(void)state;
	assert_false(keyfilter_may_have_hash(f, h));
	assert_true(keyfilter_add_hash(f, h));
	assert_false(keyfilter_add_hash(f, h));
	assert_true(keyfilter_may_have_hash(f, h));
	keyfilter_clear(f);
	assert_false(keyfilter_may_have_hash(f, h));
	keyfilter_free(f);
	keyfilter_free(NULL);
}

/* The hash covers every byte: keys that differ in one character hash apart. */
static void test_hash_covers_every_byte(void **state)
{
	char a[] = "user@example.com", b[sizeof(a)];

	(void)state;
	for (size_t i = 0; i < sizeof(a) - 1; i++) {
		memcpy(b, a, sizeof(a));
		b[i] ^= 1;
		assert_int_not_equal(keyfilter_hash(a, sizeof(a) - 1), keyfilter_hash(b, sizeof(b) - 1));
	}
	assert_int_not_equal(keyfilter_hash(a, 4), keyfilter_hash(a, 5));
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest more[] = {
	    cmocka_unit_test(test_add_reports_new_and_clear_forgets),
	    cmocka_unit_test(test_hash_covers_every_byte),
	};

	RUN_TABLE("keyfilter sizes", size_cases, test_size_case, failed);
	failed += cmocka_run_group_tests_name("keyfilter", more, NULL, NULL);
	return failed ? 1 : 0;
}
