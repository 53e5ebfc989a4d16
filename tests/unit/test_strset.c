/*
 * Unit tests for core/strset: membership is exact over bytes (length
 * included), duplicates count once, the set owns its copies and grows far
 * past its initial size. Each table row is its own named cmocka test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "core/strset.h"
#include "unit_table.h"

/* The members every lookup case runs against. */
static const char *const members[] = {"trap@example.com", "example.org", "", "a", "ab"};
static const char nul_member[] = {'x', '\0', 'y'};

struct lookup_case {
	const char *name;
	const char *s;
	size_t len; /* 0: strlen(s) */
	bool found;
};

static struct lookup_case lookup_cases[] = {
    {"address", "trap@example.com", 0, true},
    {"domain", "example.org", 0, true},
    {"empty string", "", 0, true},
    {"one byte", "a", 0, true},
    {"prefix of member", "trap@example.co", 0, false},
    {"member is prefix", "trap@example.com.", 0, false},
    {"length limits the key", "abc", 2, true},
    {"case sensitive", "Example.org", 0, false},
    {"not present", "nobody@example.com", 0, false},
    {"embedded nul", "x\0y", 3, true},
    {"embedded nul truncated", "x", 1, false},
};

static strset *members_new(void)
{
	strset *set = strset_new(2);

	assert_non_null(set);
	for (size_t i = 0; i < NELEM(members); i++)
		assert_int_equal(strset_add(set, members[i], strlen(members[i])), 0);
	assert_int_equal(strset_add(set, nul_member, sizeof(nul_member)), 0);
	return set;
}

static void test_lookup_case(void **state)
{
	const struct lookup_case *c = *state;
	strset *set = members_new();
	size_t len = c->len ? c->len : strlen(c->s);

	assert_int_equal(strset_contains(set, c->s, len), c->found);
	strset_free(set);
}

static void test_count_and_duplicates(void **state)
{
	strset *set = members_new();

	(void)state;
	assert_int_equal(strset_count(set), NELEM(members) + 1);
	assert_int_equal(strset_add(set, "example.org", 11), 0);
	assert_int_equal(strset_add(set, "", 0), 0);
	assert_int_equal(strset_count(set), NELEM(members) + 1);
	strset_free(set);
}

static void test_owns_copies(void **state)
{
	char buf[32];
	strset *set = strset_new(0);

	(void)state;
	assert_non_null(set);
	strcpy(buf, "copied@example.com");
	assert_int_equal(strset_add(set, buf, strlen(buf)), 0);
	memset(buf, 'z', sizeof(buf) - 1);
	assert_true(strset_contains(set, "copied@example.com", 18));
	strset_free(set);
}

static void test_null_set(void **state)
{
	(void)state;
	assert_false(strset_contains(NULL, "a", 1));
	assert_int_equal(strset_count(NULL), 0);
	strset_free(NULL);
}

/* 100,000 distinct entries from a set sized for none: correctness only, never time. */
static void test_hundred_thousand(void **state)
{
	enum { N = 100000 };
	char key[64];
	strset *set = strset_new(0);

	(void)state;
	assert_non_null(set);
	for (int i = 0; i < N; i++) {
		int n = snprintf(key, sizeof(key), "trap%06d@example%d.com", i, i % 97);

		assert_int_equal(strset_add(set, key, (size_t)n), 0);
	}
	assert_int_equal(strset_count(set), N);
	for (int i = 0; i < N; i++) {
		int n = snprintf(key, sizeof(key), "trap%06d@example%d.com", i, i % 97);

		assert_true(strset_contains(set, key, (size_t)n));
		n = snprintf(key, sizeof(key), "trap%06d@example%d.com", i, (i + 1) % 97);
		assert_false(strset_contains(set, key, (size_t)n));
	}
	strset_free(set);
}

static void test_presized(void **state)
{
	char key[32];
	strset *set = strset_new(5000);

	(void)state;
	assert_non_null(set);
	for (int i = 0; i < 5000; i++) {
		int n = snprintf(key, sizeof(key), "k%d", i);

		assert_int_equal(strset_add(set, key, (size_t)n), 0);
	}
	for (int i = 0; i < 5000; i++) {
		int n = snprintf(key, sizeof(key), "k%d", i);

		assert_true(strset_contains(set, key, (size_t)n));
	}
	assert_false(strset_contains(set, "k5000", 5));
	assert_int_equal(strset_count(set), 5000);
	strset_free(set);
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_count_and_duplicates),
	    cmocka_unit_test(test_owns_copies),
	    cmocka_unit_test(test_null_set),
	    cmocka_unit_test(test_hundred_thousand),
	    cmocka_unit_test(test_presized),
	};

	RUN_TABLE("strset_contains", lookup_cases, test_lookup_case, failed);
	failed += cmocka_run_group_tests_name("strset", tests, NULL, NULL);
	return failed;
}
