/*
 * Unit tests for core/text: trimming a list line, in place (text_trim) and
 * as a copy (text_trim_dup), on every white space byte isspace() knows;
 * the formatting helpers against the snprintf calls they replace.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
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

/* text_copy cuts and terminates as snprintf(dst, size, "%s", src) does, at every size. */
static void test_copy_as_snprintf(void **state)
{
	static const char *srcs[] = {"", "a", "example.org", "postmaster"};
	char got[16], want[16];

	(void)state;
	for (size_t i = 0; i < sizeof(srcs) / sizeof(srcs[0]); i++)
		for (size_t size = 1; size <= sizeof(got); size++) {
			memset(got, 'x', sizeof(got));
			memset(want, 'x', sizeof(want));
			int n = snprintf(want, size, "%s", srcs[i]);
			size_t len = text_copy(got, size, srcs[i]);

			assert_memory_equal(got, want, sizeof(got)); /* nothing written past the terminator */
			assert_int_equal(len, (size_t)n < size ? (size_t)n : size - 1);
		}
	memset(got, 'x', sizeof(got));
	assert_int_equal(text_copy(got, 0, "abc"), 0);
	assert_int_equal(got[0], 'x');
}

static void test_put_u8_every_byte(void **state)
{
	char got[4], want[4];

	(void)state;
	for (unsigned v = 0; v < 256; v++) {
		int n = snprintf(want, sizeof(want), "%u", v);
		size_t len = text_put_u8(got, (unsigned char)v);

		assert_int_equal(len, (size_t)n);
		assert_memory_equal(got, want, len);
	}
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest more[] = {
	    cmocka_unit_test(test_is_space),
	    cmocka_unit_test(test_copy_as_snprintf),
	    cmocka_unit_test(test_put_u8_every_byte),
	};

	RUN_TABLE("text_trim", trim_cases, test_trim_case, failed);
	failed += cmocka_run_group_tests_name("text", more, NULL, NULL);
	return failed;
}
