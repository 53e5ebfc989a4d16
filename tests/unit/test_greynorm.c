/*
 * Unit tests for core/greynorm: the greylist key of a sender. The table
 * holds, for each row, the key postgrey 1.37 makes of the same sender
 * (do_sender_substitutions, then its lc; found by running postgrey's own
 * code on each row): a row without a reason must agree with it, a row with
 * one is a deliberate difference (docs/greylist.md). Then hostile inputs,
 * buffer sizes, and properties (the key is a fixed point, never longer than
 * the sender + 2) over the table and over generated senders.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/greynorm.h"
#include "unit_table.h"

struct norm_case {
	const char *name;
	const char *sender;
	const char *delimiters;
	const char *key;
	const char *postgrey; /* postgrey 1.37's key (its delimiter is always '+') */
	const char *differs;  /* why key is not postgrey's, NULL when it is */
};

static struct norm_case norm_cases[] = {
    {"plain", "user@example.com", "+", "user@example.com", "user@example.com", NULL},
    {"lower case", "User@Example.COM", "+", "user@example.com", "user@example.com", NULL},
    {"extension cut", "user+ext@example.com", "+", "user@example.com", "user@example.com", NULL},
    {"first delimiter cuts", "user+a+b@example.com", "+", "user@example.com", "user@example.com", NULL},
    {"leading delimiter", "+ext@example.com", "+", "@example.com", "@example.com", NULL},
    {"minus kept without minus delimiter", "user-ext@example.com", "+", "user-ext@example.com",
     "user-ext@example.com", NULL},
    {"minus delimiter", "user-ext@example.com", "+-", "user@example.com", "user-ext@example.com",
     "delimiters from traps.recipient_delimiter"},
    {"equals delimiter", "user=ext@example.com", "=", "user@example.com", "user=ext@example.com",
     "delimiters from traps.recipient_delimiter"},
    {"no delimiters", "user+ext@example.com", "", "user+ext@example.com", "user@example.com",
     "delimiters from traps.recipient_delimiter"},
    {"hash never delimits", "user#1@example.com", "#", "user##@example.com", "user##@example.com", NULL},
    {"batv tag first", "prvs=0123456789=user@example.com", "+", "user@example.com", "user@example.com", NULL},
    {"batv tag last", "prvs=user=0123456789@example.com", "+", "user@example.com", "user@example.com", NULL},
    {"batv short tag", "prvs=abc=user@example.com", "+", "user@example.com", "user@example.com", NULL},
    {"batv both tags", "prvs=0123456789=0123456789@example.com", "+", "#@example.com", "#@example.com", NULL},
    {"batv with extension", "prvs=0123456789=user+ext@example.com", "+", "user@example.com",
     "user@example.com", NULL},
    {"batv equals delimiter", "prvs=0123456789=user@example.com", "=", "user@example.com", "user@example.com",
     NULL},
    {"batv upper case", "PRVS=0123456789=User@example.com", "+", "user@example.com",
     "prvs=#=user@example.com", "lowercased before the prvs= test"},
    {"batv nothing after", "prvs=@example.com", "+", "prvs=@example.com", "prvs=@example.com", NULL},
    {"batv one field", "prvs=a@example.com", "+", "prvs=a@example.com", "prvs=a@example.com", NULL},
    {"batv four fields", "prvs=a=b=c@example.com", "+", "prvs=a=b=c@example.com", "prvs=a=b=c@example.com",
     NULL},
    {"batv trailing empty fields", "prvs=a=b==@example.com", "+", "b@example.com", "b@example.com", NULL},
    {"batv empty first field", "prvs==user@example.com", "+", "user@example.com", "user@example.com", NULL},
    {"batv empty pick", "prvs==0123456789@example.com", "+", "@example.com", "@example.com", NULL},
    {"batv empty last field", "prvs=0123456789=@example.com", "+", "prvs=#=@example.com",
     "prvs=#=@example.com", NULL},
    {"batv not at start", "xprvs=0123456789=user@example.com", "+", "xprvs=#=user@example.com",
     "xprvs=#=user@example.com", NULL},
    {"batv cut leaves three fields", "prvs=a=b+=c=d@example.com", "+", "b@example.com",
     "prvs=a=b@example.com", "BATV again after the cut"},
    {"verp digits", "bounce-123-456@lists.example", "+", "bounce-#-#@lists.example",
     "bounce-#-#@lists.example", NULL},
    {"verp trailing minus", "bounce-123-456-@lists.example", "+", "bounce-#-#-@lists.example",
     "bounce-#-#-@lists.example", NULL},
    {"digits only", "123@example.com", "+", "#@example.com", "#@example.com", NULL},
    {"digits after letters kept", "user123@example.com", "+", "user123@example.com", "user123@example.com",
     NULL},
    {"digits before letters kept", "123user@example.com", "+", "123user@example.com", "123user@example.com",
     NULL},
    {"underscore is a word character", "a_123@example.com", "+", "a_123@example.com", "a_123@example.com",
     NULL},
    {"dots separate words", "a.123.b@example.com", "+", "a.#.b@example.com", "a.#.b@example.com", NULL},
    {"dotted digits", "1.2.3@example.com", "+", "#.#.#@example.com", "#.#.#@example.com", NULL},
    {"domain digits kept", "user@123.example.com", "+", "user@123.example.com", "user@123.example.com", NULL},
    {"extension before digits", "bounces+12345-67@lists.example", "+", "bounces@lists.example",
     "bounces@lists.example", NULL},
    {"digit words joined stay apart", "20261205-123456@example.com", "+", "#-#@example.com",
     "#-#@example.com", NULL},
    {"hex run", "msg-a1b2c3d4e5@example.com", "+", "msg-#@example.com", "msg-a1b2c3d4e5@example.com",
     "hex runs"},
    {"hex letters only kept", "msg-deadbeef@example.com", "+", "msg-deadbeef@example.com",
     "msg-deadbeef@example.com", NULL},
    {"short hex run kept", "msg-abcdef1@example.com", "+", "msg-abcdef1@example.com",
     "msg-abcdef1@example.com", NULL},
    {"non-hex letter kept", "msg-a1b2c3d4g5@example.com", "+", "msg-a1b2c3d4g5@example.com",
     "msg-a1b2c3d4g5@example.com", NULL},
    {"hex run of words",
     "0100018b9a4f1234-5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d-000000@us-east-1.amazonses.com", "+",
     "#@us-east-1.amazonses.com",
     "0100018b9a4f1234-5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d-#@us-east-1.amazonses.com", "hex runs"},
    {"digit words joined to hex", "1234-5678-abcd@example.com", "+", "#@example.com", "#-#-abcd@example.com",
     "hex runs"},
    {"hex run after underscore word", "bounce-mc.us12_12345678.1234567-abcdef0123@mcsv.net", "+",
     "bounce-mc.us12_12345678.#@mcsv.net", "bounce-mc.us12_12345678.#-abcdef0123@mcsv.net", "hex runs"},
    {"srs0", "SRS0=HHhh=TT=orig.example=user@fwd.example", "+", "srs=orig.example=user@fwd.example",
     "srs0=hhhh=tt=orig.example=user@fwd.example", "SRS"},
    {"srs0 plus separator", "srs0+hhhh=tt=orig.example=user@fwd.example", "+",
     "srs=orig.example=user@fwd.example", "srs0@fwd.example", "SRS"},
    {"srs0 hash with plus", "srs0=ab+/=tt=orig.example=user+ext@fwd.example", "+",
     "srs=orig.example=user@fwd.example", "srs0=ab@fwd.example", "SRS"},
    {"srs0 digits in original", "srs0=hhhh=tt=orig.example=bounce-123@fwd.example", "+",
     "srs=orig.example=bounce-#@fwd.example", "srs0=hhhh=tt=orig.example=bounce-#@fwd.example", "SRS"},
    {"srs0 minus delimiter", "srs0-hhhh=tt=my-orig.example=user-ext@fwd.example", "-",
     "srs=my-orig.example=user@fwd.example", "srs0-hhhh=tt=my-orig.example=user-ext@fwd.example", "SRS"},
    {"srs1", "srs1=hhhh=fwd1.example==hhhh=tt=orig.example=user@fwd2.example", "+",
     "srs=orig.example=user@fwd2.example", "srs1=hhhh=fwd1.example==hhhh=tt=orig.example=user@fwd2.example",
     "SRS"},
    {"srs key stays", "srs=orig.example=user@fwd.example", "+", "srs=orig.example=user@fwd.example",
     "srs=orig.example=user@fwd.example", NULL},
    {"srs0 nothing after", "srs0=@fwd.example", "+", "srs0=@fwd.example", "srs0=@fwd.example", NULL},
    {"srs0 hash only", "srs0=hhhh@fwd.example", "+", "srs0=hhhh@fwd.example", "srs0=hhhh@fwd.example", NULL},
    {"srs0 no domain field", "srs0=hhhh=tt@fwd.example", "+", "srs0=hhhh=tt@fwd.example",
     "srs0=hhhh=tt@fwd.example", NULL},
    {"srs0 no local field", "srs0=hhhh=tt=orig.example@fwd.example", "+",
     "srs0=hhhh=tt=orig.example@fwd.example", "srs0=hhhh=tt=orig.example@fwd.example", NULL},
    {"srs0 empty local", "srs0=hhhh=tt=orig.example=@fwd.example", "+",
     "srs0=hhhh=tt=orig.example=@fwd.example", "srs0=hhhh=tt=orig.example=@fwd.example", NULL},
    {"srs0 bad timestamp", "srs0=hhhh=t1=orig.example=user@fwd.example", "+",
     "srs0=hhhh=t1=orig.example=user@fwd.example", "srs0=hhhh=t1=orig.example=user@fwd.example", NULL},
    {"srs0 empty domain", "srs0=hhhh=tt==user@fwd.example", "+", "srs0=hhhh=tt==user@fwd.example",
     "srs0=hhhh=tt==user@fwd.example", NULL},
    {"srs1 nested", "srs1=hhhh=fwd1.example==srs1=hhhh=x==hhhh=tt=o=u@fwd.example", "+",
     "srs1=hhhh=fwd1.example==srs1=hhhh=x==hhhh=tt=o=u@fwd.example",
     "srs1=hhhh=fwd1.example==srs1=hhhh=x==hhhh=tt=o=u@fwd.example", NULL},
    {"srs1 empty first hop", "srs1=hhhh==hhhh=tt=o=u@fwd.example", "+", "srs1=hhhh==hhhh=tt=o=u@fwd.example",
     "srs1=hhhh==hhhh=tt=o=u@fwd.example", NULL},
    {"at sign in local part", "a+x@b@example.com", "+", "a@example.com", "a@b@example.com",
     "domain after the last at sign"},
    {"quoted local part", "\"john doe\"@example.com", "+", "\"john doe\"@example.com",
     "\"john doe\"@example.com", NULL},
    {"empty local part", "@example.com", "+", "@example.com", "@example.com", NULL},
    {"no domain", "postmaster", "+", "postmaster", "postmaster", NULL},
    {"invalid utf-8", "\xff\xc3-123@example.com", "+", "\xff\xc3-#@example.com", "\xff\xc3-#@example.com",
     NULL},
};

/* Normalising the key again gives the key; it is never longer than the sender + 2. */
static void assert_fixed_point(const char *sender, const char *delimiters)
{
	char key[GREYNORM_MAX + 2], again[GREYNORM_MAX + 2];
	size_t len = greynorm_sender(sender, delimiters, key, sizeof key);

	assert_int_equal(len, strlen(key));
	assert_true(len <= strlen(sender) + 2);
	assert_true(len > 0 || sender[0] != '\0');
	assert_int_equal(greynorm_sender(key, delimiters, again, sizeof again), len);
	assert_string_equal(again, key);
}

static void test_norm_case(void **state)
{
	const struct norm_case *c = *state;
	char key[GREYNORM_MAX];
	size_t len;

	memset(key, 'x', sizeof key);
	len = greynorm_sender(c->sender, c->delimiters, key, sizeof key);
	assert_string_equal(key, c->key);
	assert_int_equal(len, strlen(c->key));
	if (c->differs == NULL)
		assert_string_equal(c->key, c->postgrey);
	else
		assert_string_not_equal(c->key, c->postgrey);
	assert_fixed_point(c->sender, c->delimiters);
}

/* ---- null sender, hostile input, buffer sizes ---- */

static void test_null_sender(void **state)
{
	char key[32];

	(void)state;
	assert_int_equal(greynorm_sender("", "+", key, sizeof key), 2);
	assert_string_equal(key, "<>");
	/* distinct from the keys of the nearest real senders */
	assert_int_equal(greynorm_sender("@", "+", key, sizeof key), 1);
	assert_string_equal(key, "@");
	assert_int_equal(greynorm_sender("<>@example.com", "+", key, sizeof key), 14);
	assert_string_equal(key, "<>@example.com");
}

static void test_bad_arguments(void **state)
{
	char key[16] = "unchanged";

	(void)state;
	assert_int_equal(greynorm_sender(NULL, "+", key, sizeof key), 0);
	assert_string_equal(key, "");
	assert_int_equal(greynorm_sender("a@b", "+", NULL, 16), 0);
	strcpy(key, "unchanged");
	assert_int_equal(greynorm_sender("a@b", "+", key, 0), 0);
	assert_string_equal(key, "unchanged");
	assert_int_equal(greynorm_sender("a+b@c", NULL, key, sizeof key), 5);
	assert_string_equal(key, "a+b@c");
}

/* A key that does not fit is refused whole, never cut (a cut key is another sender's). */
static void test_out_too_small(void **state)
{
	char key[32];

	(void)state;
	memset(key, 'x', sizeof key);
	assert_int_equal(greynorm_sender("user+ext@example.com", "+", key, 16), 0);
	assert_string_equal(key, "");
	assert_int_equal(greynorm_sender("user+ext@example.com", "+", key, 17), 16);
	assert_string_equal(key, "user@example.com");
	assert_int_equal(greynorm_sender("", "+", key, 2), 0);
	assert_int_equal(greynorm_sender("", "+", key, 3), 2);
}

static void test_long_input(void **state)
{
	char sender[GREYNORM_MAX + 1], key[GREYNORM_MAX];

	(void)state;
	memset(sender, '7', GREYNORM_MAX - 13);
	strcpy(sender + GREYNORM_MAX - 13, "@example.com");
	assert_int_equal(strlen(sender), GREYNORM_MAX - 1);
	assert_int_equal(greynorm_sender(sender, "+", key, sizeof key), 13);
	assert_string_equal(key, "#@example.com");
	memset(sender, 'a', GREYNORM_MAX);
	sender[GREYNORM_MAX] = '\0';
	assert_int_equal(greynorm_sender(sender, "+", key, sizeof key), 0);
	assert_string_equal(key, "");
}

/* Separator-only and field-only senders of every length: bounded, fixed points. */
static void test_degenerate_runs(void **state)
{
	static const char *const prefixes[] = {"prvs=", "srs0=", "srs1=", "srs=", "srs1=h=d=", ""};
	static const char fill[] = "=+-#@";
	char sender[GREYNORM_MAX];

	(void)state;
	for (size_t p = 0; p < NELEM(prefixes); p++)
		for (size_t f = 0; f < sizeof fill - 1; f++)
			for (size_t n = 0; n < 300; n += 7) {
				size_t plen = strlen(prefixes[p]);

				memcpy(sender, prefixes[p], plen);
				memset(sender + plen, fill[f], n);
				sender[plen + n] = '\0';
				assert_fixed_point(sender, "+-=");
				assert_fixed_point(sender, "");
			}
}

/* Senders built from the pieces the rules look at, from a fixed seed: a fixed point each. */
static void test_generated_fixed_points(void **state)
{
	static const char *const pieces[] = {
	    "prvs=", "srs0=", "srs1=", "srs=", "srs0-", "=",     "==",    "+",        "-",
	    "_",     "#",     "@",     ".",    "a",     "g",     "0",     "7",        "tt",
	    "hhhh",  "ab+/",  "\xff",  "\"",   "x.ex",  "PRVS=", "SRS0=", "abcd1234", "0123456789",
	};
	static const char *const delimiter_sets[] = {"", "+", "-", "+-", "=", "#", "=+-#@", "_."};
	uint32_t seed = 1;
	char sender[GREYNORM_MAX];

	(void)state;
	for (int i = 0; i < 20000; i++) {
		size_t len = 0;

		seed = seed * 1103515245u + 12345u;
		for (unsigned k = (seed >> 16) % 14; k > 0; k--) {
			const char *piece;

			seed = seed * 1103515245u + 12345u;
			piece = pieces[(seed >> 16) % NELEM(pieces)];
			if (len + strlen(piece) < sizeof sender) {
				memcpy(sender + len, piece, strlen(piece));
				len += strlen(piece);
			}
		}
		sender[len] = '\0';
		assert_fixed_point(sender, delimiter_sets[(seed >> 8) % NELEM(delimiter_sets)]);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_null_sender),     cmocka_unit_test(test_bad_arguments),
	    cmocka_unit_test(test_out_too_small),   cmocka_unit_test(test_long_input),
	    cmocka_unit_test(test_degenerate_runs), cmocka_unit_test(test_generated_fixed_points),
	};
	int failed = 0;

	RUN_TABLE("greynorm_sender", norm_cases, test_norm_case, failed);
	failed += cmocka_run_group_tests_name("greynorm hostile", tests, NULL, NULL);
	return failed == 0 ? 0 : 1;
}
