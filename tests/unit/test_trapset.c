/*
 * Unit tests for core/trapset: exact addresses, domains and PCRE2 patterns,
 * recipient normalisation and extensions, match order and the reported
 * trap, trap-file line syntax and its error messages, and 100,000 traps.
 * Each table row is its own named cmocka test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/trapset.h"
#include "unit_table.h"

/* The traps every match case runs against, as trap-file lines. */
static const char *const trap_lines[] = {
    "trap@example.com",
    "Mixed.Case@Example.COM",
    "tagged+keep@example.com",
    "exact@trap.example.net",
    "@trap.example.net",
    "@Whole.Example.ORG.",
    "/^spam(master|trap)?@/",
    "/honeypot/",
    "/\\+secret@/",
    "/^x-[0-9]+@numbers\\.example$/",
};

static trapset *traps_new(const char *delimiters)
{
	trapset *set = trapset_new(delimiters);
	char err[256];

	assert_non_null(set);
	for (size_t i = 0; i < NELEM(trap_lines); i++) {
		if (trapset_add_line(set, trap_lines[i], err, sizeof(err)) != 0)
			fail_msg("%s: %s", trap_lines[i], err);
	}
	return set;
}

struct match_case {
	const char *name;
	const char *delimiters;
	const char *rcpt;
	const char *matched; /* NULL: no trap */
};

static struct match_case match_cases[] = {
    {"exact address", "+", "trap@example.com", "trap@example.com"},
    {"brackets and case", "+", "<TRAP@Example.Com>", "trap@example.com"},
    {"trailing dot", "+", "<trap@example.com.>", "trap@example.com"},
    {"source route", "+", "<@relay.example:trap@example.com>", "trap@example.com"},
    {"trap listed in mixed case", "+", "mixed.case@example.com", "mixed.case@example.com"},
    {"extension removed", "+", "trap+newsletter@example.com", "trap@example.com"},
    {"extension with brackets", "+", "<Trap+X@EXAMPLE.com>", "trap@example.com"},
    {"multi-char delimiters dash", "+-", "trap-x@example.com", "trap@example.com"},
    {"multi-char delimiters both", "+-", "trap+a-b@example.com", "trap@example.com"},
    {"dash not a delimiter", "+", "trap-x@example.com", NULL},
    {"no delimiters", "", "trap+x@example.com", NULL},
    {"listed with extension", "+", "tagged+keep@example.com", "tagged+keep@example.com"},
    {"other extension of listed", "+", "tagged+other@example.com", NULL},
    {"domain", "+", "anyone@trap.example.net", "@trap.example.net"},
    {"domain case and dot", "+", "<Anyone@TRAP.Example.NET.>", "@trap.example.net"},
    {"domain listed with at and dot", "+", "who@whole.example.org", "@whole.example.org"},
    {"subdomain is not the domain", "+", "x@sub.trap.example.net", NULL},
    {"parent is not the domain", "+", "x@example.net", NULL},
    {"address before domain", "+", "exact@trap.example.net", "exact@trap.example.net"},
    {"domain before pattern", "+", "spam@trap.example.net", "@trap.example.net"},
    {"pattern", "+", "spammaster@foo.example", "/^spam(master|trap)?@/"},
    {"pattern caseless", "+", "<SpamTrap@Foo.Example>", "/^spam(master|trap)?@/"},
    {"pattern on address without extension", "+", "spam+x@foo.example", "/^spam(master|trap)?@/"},
    {"pattern anywhere", "+", "my-honeypot-1@bar.example", "/honeypot/"},
    {"pattern on full address", "+", "user+secret@bar.example", "/\\+secret@/"},
    {"pattern anchored at end", "+", "x-42@numbers.example", "/^x-[0-9]+@numbers\\.example$/"},
    {"pattern sees normalised form", "+", "<X-42@Numbers.Example.>", "/^x-[0-9]+@numbers\\.example$/"},
    {"pattern anchored miss", "+", "x-42@numbers.example.com", NULL},
    {"pattern not matched", "+", "spamx@foo.example", NULL},
    {"ordinary recipient", "+", "user@example.com", NULL},
    {"trap as substring", "+", "xtrap@example.com", NULL},
    {"trap as prefix", "+", "trapx@example.com", NULL},
    {"trap local part other domain", "+", "trap@example.org", NULL},
    {"null recipient", "+", "<>", NULL},
    {"empty recipient", "+", "", NULL},
    {"unbalanced bracket", "+", "<trap@example.com", NULL},
    {"control character", "+", "trap@example.com\r", NULL},
};

static void test_match_case(void **state)
{
	const struct match_case *c = *state;
	trapset *set = traps_new(c->delimiters);
	char matched[TRAPSET_MATCH_MAX] = "unchanged";

	assert_int_equal(trapset_match(set, c->rcpt, matched, sizeof(matched)), c->matched != NULL);
	if (c->matched != NULL)
		assert_string_equal(matched, c->matched);
	assert_int_equal(trapset_match(set, c->rcpt, NULL, 0), c->matched != NULL);
	trapset_free(set);
}

struct line_case {
	const char *name;
	const char *line;
	const char *err;   /* NULL: accepted; else a substring of the message */
	const char *probe; /* accepted lines: a recipient that must now be a trap */
};

static struct line_case line_cases[] = {
    {"address", "user@example.com", NULL, "user@example.com"},
    {"address with blanks", " \tuser@example.com \t", NULL, "USER@example.com"},
    {"address with crlf", "user@example.com\r\n", NULL, "user@example.com"},
    {"address in brackets", "<user@example.com>", NULL, "user@example.com"},
    {"domain", "@example.net", NULL, "anyone@example.net"},
    {"domain with blanks", "  @Example.NET  ", NULL, "anyone@example.net"},
    {"pattern", "/^abuse-.*@/", NULL, "abuse-desk@example.org"},
    {"pattern with blanks", "\t/^abuse-.*@/ ", NULL, "abuse-x@example.org"},
    {"pattern with slash inside", "/^a\\/b@|^c/d@/", NULL, "c/d@example.org"},
    {"bad regex", "/^spam(/", "missing closing parenthesis", NULL},
    {"bad regex names the pattern", "/[z-a]/", "/[z-a]/", NULL},
    {"bad regex gives the offset", "/ab(c/", "at offset 4", NULL},
    {"unclosed pattern", "/^spam", "a trap pattern is written /regex/", NULL},
    {"lone slash", "/", "a trap pattern is written /regex/", NULL},
    {"empty pattern", "//", "empty trap pattern", NULL},
    {"flags are not syntax", "/spam/i", "a trap pattern is written /regex/", NULL},
    {"no at sign", "postmaster", "not a trap address", NULL},
    {"no domain", "user@", "not a trap address", NULL},
    {"unbalanced bracket", "<user@example.com", "not a trap address", NULL},
    {"bare at sign", "@", "not a trap domain", NULL},
    {"domain with blank", "@bad domain.example", "not a trap domain", NULL},
    {"domain with at", "@a@b.example", "not a trap domain", NULL},
    {"domain starting with dot", "@.example.com", "not a trap domain", NULL},
    {"address with one trailing dot", "user@example.com.", NULL, "user@example.com"},
    /* Stored forms no recipient normalises to (found by fuzz_lists, fuzz_addr). */
    {"address with two trailing dots", "user@example.com..", "not a trap address", NULL},
    {"address with a blank before the dot", "l@ .", "not a trap address", NULL},
    {"domain with two trailing dots", "@example.com..", "not a trap domain", NULL},
    {"empty", "", "empty trap entry", NULL},
    {"blanks only", " \t ", "empty trap entry", NULL},
};

static void test_line_case(void **state)
{
	const struct line_case *c = *state;
	trapset *set = trapset_new("+");
	char err[256] = "";
	int rc = trapset_add_line(set, c->line, err, sizeof(err));

	if (c->err != NULL) {
		assert_int_equal(rc, -1);
		if (strstr(err, c->err) == NULL)
			fail_msg("error '%s' does not contain '%s'", err, c->err);
		assert_int_equal(trapset_count(set), 0);
	} else {
		if (rc != 0)
			fail_msg("rejected: %s", err);
		assert_int_equal(trapset_count(set), 1);
		assert_true(trapset_match(set, c->probe, NULL, 0));
		assert_false(trapset_match(set, "innocent@elsewhere.example", NULL, 0));
	}
	trapset_free(set);
}

static void test_add_functions(void **state)
{
	trapset *set = trapset_new("+");
	char err[256];
	char matched[TRAPSET_MATCH_MAX];

	(void)state;
	assert_int_equal(trapset_add_address(set, "<A@B.example>", err, sizeof(err)), 0);
	assert_int_equal(trapset_add_domain(set, "Traps.Example.", err, sizeof(err)), 0);
	assert_int_equal(trapset_add_domain(set, "@more.example", err, sizeof(err)), 0);
	assert_int_equal(trapset_add_pattern(set, "^bait[0-9]+@", err, sizeof(err)), 0);
	assert_int_equal(trapset_add_address(set, "a@b.example", err, sizeof(err)), 0); /* duplicate */
	assert_int_equal(trapset_count(set), 4);
	assert_true(trapset_match(set, "a@b.example", matched, sizeof(matched)));
	assert_string_equal(matched, "a@b.example");
	assert_true(trapset_match(set, "x@traps.example", matched, sizeof(matched)));
	assert_string_equal(matched, "@traps.example");
	assert_true(trapset_match(set, "x@more.example", matched, sizeof(matched)));
	assert_string_equal(matched, "@more.example");
	assert_true(trapset_match(set, "Bait7@c.example", matched, sizeof(matched)));
	assert_string_equal(matched, "/^bait[0-9]+@/");
	trapset_free(set);
}

static void test_pattern_error_message(void **state)
{
	trapset *set = trapset_new("");
	char err[256] = "";

	(void)state;
	assert_int_equal(trapset_add_pattern(set, "^spam(master", err, sizeof(err)), -1);
	assert_string_equal(err, "bad trap pattern /^spam(master/: missing closing parenthesis at offset 12");
	assert_int_equal(trapset_add_pattern(set, "", err, sizeof(err)), -1);
	assert_non_null(strstr(err, "every recipient"));
	assert_int_equal(trapset_count(set), 0);
	trapset_free(set);
}

static void test_matched_truncated(void **state)
{
	trapset *set = traps_new("+");
	char matched[6];

	(void)state;
	assert_true(trapset_match(set, "trap@example.com", matched, sizeof(matched)));
	assert_string_equal(matched, "trap@");
	trapset_free(set);
}

static void test_empty_and_null(void **state)
{
	trapset *set = trapset_new(NULL);

	(void)state;
	assert_non_null(set);
	assert_int_equal(trapset_count(set), 0);
	assert_false(trapset_match(set, "trap@example.com", NULL, 0));
	assert_false(trapset_match(set, NULL, NULL, 0));
	assert_false(trapset_match(NULL, "trap@example.com", NULL, 0));
	assert_int_equal(trapset_count(NULL), 0);
	trapset_free(set);
	trapset_free(NULL);
}

/* Sites with 10,000 traps or more (SPEC traps.files): correctness at 100,000, never time. */
static void test_hundred_thousand(void **state)
{
	enum { N = 100000 };
	trapset *set = trapset_new("+");
	char line[64], rcpt[80], want[64], matched[TRAPSET_MATCH_MAX];
	char err[256];

	(void)state;
	for (int i = 0; i < N; i++) {
		snprintf(line, sizeof(line), "  trap%06d@example%d.com\n", i, i % 101);
		if (trapset_add_line(set, line, err, sizeof(err)) != 0)
			fail_msg("%s: %s", line, err);
	}
	assert_int_equal(trapset_count(set), N);
	for (int i = 0; i < N; i++) {
		snprintf(rcpt, sizeof(rcpt), "<Trap%06d+tag%d@Example%d.COM>", i, i, i % 101);
		snprintf(want, sizeof(want), "trap%06d@example%d.com", i, i % 101);
		assert_true(trapset_match(set, rcpt, matched, sizeof(matched)));
		assert_string_equal(matched, want);
		snprintf(rcpt, sizeof(rcpt), "trap%06d@example%d.com", i, (i + 1) % 101);
		assert_false(trapset_match(set, rcpt, NULL, 0));
	}
	trapset_free(set);
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_add_functions),     cmocka_unit_test(test_pattern_error_message),
	    cmocka_unit_test(test_matched_truncated), cmocka_unit_test(test_empty_and_null),
	    cmocka_unit_test(test_hundred_thousand),
	};

	RUN_TABLE("trapset_match", match_cases, test_match_case, failed);
	RUN_TABLE("trapset_add_line", line_cases, test_line_case, failed);
	failed += cmocka_run_group_tests_name("trapset", tests, NULL, NULL);
	return failed;
}
