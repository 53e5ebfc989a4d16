/*
 * Unit tests for core/text: trimming a list line, in place (text_trim) and
 * as a copy (text_trim_dup), on every white space byte isspace() knows.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/text.h"
#include "unit_table.h"

struct trim_case {
	const char *name;
	const char *in;
	const char *out;
	size_t start; /* offset of the trimmed text in in */
};

static struct trim_case trim_cases[] = {
    {"nothing to trim", "trap@example.com", "trap@example.com", 0},
    {"blanks around", "  @example.org \t", "@example.org", 2},
    {"LF line end", "192.0.2.0/24\n", "192.0.2.0/24", 0},
    {"CRLF line end", "/^spam/\r\n", "/^spam/", 0},
    {"vertical tab and form feed", "\v\fa@b\f\v", "a@b", 2},
    {"blanks inside are kept", " a b\tc ", "a b\tc", 1},
    {"empty", "", "", 0},
    {"white space only", " \t\r\n", "", 4},
    {"one character", " x ", "x", 1},
    {"high bytes are not space", "\xa0x\xa0", "\xa0x\xa0", 0},
    {"NUL ends the line", "a \0 b", "a", 0},
};

static void test_trim_case(void **state)
{
	const struct trim_case *c = *state;
	size_t len = 99;
	const char *start = text_trim(c->in, &len);
	char *copy = text_trim_dup(c->in);

	assert_ptr_equal(start, c->in + c->start);
	assert_int_equal(len, strlen(c->out));
	assert_memory_equal(start, c->out, len);
	assert_non_null(copy);
	assert_string_equal(copy, c->out);
	free(copy);
}

static void test_is_space(void **state)
{
	(void)state;
	for (int c = -128; c < 128; c++) {
		bool want = c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';

		if (text_is_space((char)c) != want)
			fail_msg("byte %d: %s", c, want ? "is space" : "is not space");
	}
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest more[] = {
	    cmocka_unit_test(test_is_space),
	};

	RUN_TABLE("text_trim", trim_cases, test_trim_case, failed);
	failed += cmocka_run_group_tests_name("text", more, NULL, NULL);
	return failed;
}
