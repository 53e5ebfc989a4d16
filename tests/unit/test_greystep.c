/*
 * Unit tests for core/greystep: postgrey 1.37's greylisting step, row by
 * row at its edges (new, early retry, exactly at delay, exactly at and
 * past retry_window, a passed triplet, a clock that went back, the
 * auto-whitelist counting once per period and refreshing once per period,
 * awl_count 0), each row the whole answer: result, times and what to
 * write. Then the key formats the check, the stores and spamtrapctl share.
 * tests/unit/test_store.c runs the same steps through both stores.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "core/greystep.h"
#include "unit_table.h"

#define T0 ((int64_t)1000000000000)
#define D ((int64_t)300 * 1000)        /* delay: 5 minutes, as postgrey */
#define W ((int64_t)2 * 86400 * 1000)  /* retry_window: 2 days */
#define M ((int64_t)35 * 86400 * 1000) /* max_age: 35 days */
#define HOUR GREYSTEP_AWL_PERIOD_MS
#define AWL 5

struct step_case {
	const char *name;
	uint64_t awl_count;
	greystep_triplet triplet;
	greystep_awl awl;
	bool no_awl_key; /* the check asks with no client record (awl NULL) */
	int64_t now;
	/* expected */
	greystep_result result;
	int64_t remaining, waited;
	bool write_triplet;
	int64_t first, last, triplet_expires;
	bool write_awl;
	uint64_t count;
	int64_t awl_last, awl_expires;
};

#define TRIP(f, l)                                                                                           \
	{                                                                                                    \
		.present = true, .first_ms = (f), .last_ms = (l)                                             \
	}
#define CLIENT(c, l)                                                                                         \
	{                                                                                                    \
		.present = true, .count = (c), .last_ms = (l)                                                \
	}

static struct step_case step_cases[] = {
    {"new triplet deferred for delay",
     AWL,
     {0},
     {0},
     false,
     T0,
     GREYSTEP_DEFER_NEW,
     D,
     0,
     true,
     T0,
     T0,
     T0 + W + 1,
     false,
     0,
     0,
     0},
    {"early retry deferred for the rest",
     AWL,
     TRIP(T0, T0),
     {0},
     false,
     T0 + 1000,
     GREYSTEP_DEFER_EARLY,
     D - 1000,
     0,
     true,
     T0,
     T0 + 1000,
     T0 + W + 1,
     false,
     0,
     0,
     0},
    {"one ms before delay still deferred",
     AWL,
     TRIP(T0, T0),
     {0},
     false,
     T0 + D - 1,
     GREYSTEP_DEFER_EARLY,
     1,
     0,
     true,
     T0,
     T0 + D - 1,
     T0 + W + 1,
     false,
     0,
     0,
     0},
    {"exactly at delay passes and counts the client",
     AWL,
     TRIP(T0, T0),
     {0},
     false,
     T0 + D,
     GREYSTEP_PASS_FIRST,
     0,
     D,
     true,
     T0,
     T0 + D,
     T0 + D + M,
     true,
     1,
     T0 + D,
     T0 + D + M},
    {"exactly at retry_window still passes",
     AWL,
     TRIP(T0, T0 + 1000),
     {0},
     false,
     T0 + W,
     GREYSTEP_PASS_FIRST,
     0,
     W,
     true,
     T0,
     T0 + W,
     T0 + W + M,
     true,
     1,
     T0 + W,
     T0 + W + M},
    {"after retry_window starts over",
     AWL,
     TRIP(T0, T0 + 1000),
     {0},
     false,
     T0 + W + 1,
     GREYSTEP_DEFER_NEW,
     D,
     0,
     true,
     T0 + W + 1,
     T0 + W + 1,
     T0 + 2 * W + 2,
     false,
     0,
     0,
     0},
    {"passed triplet stays valid past the window",
     AWL,
     TRIP(T0, T0 + D),
     {0},
     false,
     T0 + 10 * W,
     GREYSTEP_PASS,
     0,
     0,
     true,
     T0,
     T0 + 10 * W,
     T0 + 10 * W + M,
     false,
     0,
     0,
     0},
    {"passed triplet does not count the client again", AWL, TRIP(T0, T0 + D), CLIENT(1, T0 - 2 * HOUR), false,
     T0 + D + 1, GREYSTEP_PASS, 0, 0, true, T0, T0 + D + 1, T0 + D + 1 + M, false, 0, 0, 0},
    {"first attempt in the future starts now",
     AWL,
     TRIP(T0 + 2 * D, T0 + 2 * D),
     {0},
     false,
     T0,
     GREYSTEP_DEFER_NEW,
     D,
     0,
     true,
     T0,
     T0,
     T0 + W + 1,
     false,
     0,
     0,
     0},
    {"client counted once per period", AWL, TRIP(T0, T0), CLIENT(1, T0 + D - HOUR + 1), false, T0 + D,
     GREYSTEP_PASS_FIRST, 0, D, true, T0, T0 + D, T0 + D + M, false, 0, 0, 0},
    {"client counted again after a period", AWL, TRIP(T0, T0), CLIENT(1, T0 + D - HOUR), false, T0 + D,
     GREYSTEP_PASS_FIRST, 0, D, true, T0, T0 + D, T0 + D + M, true, 2, T0 + D, T0 + D + M},
    {"client one short of awl_count is greylisted",
     AWL,
     {0},
     CLIENT(AWL - 1, T0 - 1),
     false,
     T0,
     GREYSTEP_DEFER_NEW,
     D,
     0,
     true,
     T0,
     T0,
     T0 + W + 1,
     false,
     0,
     0,
     0},
    {"auto-whitelisted client passes untouched",
     AWL,
     {0},
     CLIENT(AWL, T0 - 1000),
     false,
     T0,
     GREYSTEP_PASS_AWL,
     0,
     0,
     false,
     0,
     0,
     0,
     false,
     0,
     0,
     0},
    {"auto-whitelisted client refreshed once per period",
     AWL,
     {0},
     CLIENT(AWL, T0 - HOUR),
     false,
     T0,
     GREYSTEP_PASS_AWL,
     0,
     0,
     false,
     0,
     0,
     0,
     true,
     AWL + 1,
     T0,
     T0 + M},
    {"auto-whitelisted client last counted in the future refreshed",
     AWL,
     {0},
     CLIENT(AWL, T0 + 1000),
     false,
     T0,
     GREYSTEP_PASS_AWL,
     0,
     0,
     false,
     0,
     0,
     0,
     true,
     AWL + 1,
     T0,
     T0 + M},
    {"awl_count 0 ignores the client record",
     0,
     {0},
     CLIENT(100, T0 - 1000),
     false,
     T0,
     GREYSTEP_DEFER_NEW,
     D,
     0,
     true,
     T0,
     T0,
     T0 + W + 1,
     false,
     0,
     0,
     0},
    {"awl_count 0 counts nothing on a pass",
     0,
     TRIP(T0, T0),
     {0},
     false,
     T0 + D,
     GREYSTEP_PASS_FIRST,
     0,
     D,
     true,
     T0,
     T0 + D,
     T0 + D + M,
     false,
     0,
     0,
     0},
    {"no client record given: counted in the answer only", AWL, TRIP(T0, T0), CLIENT(AWL, T0), true, T0 + D,
     GREYSTEP_PASS_FIRST, 0, D, true, T0, T0 + D, T0 + D + M, true, 1, T0 + D, T0 + D + M},
};

static void test_step_case(void **state)
{
	const struct step_case *c = *state;
	greystep_params p = {.delay_ms = D, .retry_window_ms = W, .max_age_ms = M, .awl_count = c->awl_count};
	greystep_out out;

	greystep_run(&p, &c->triplet, c->no_awl_key ? NULL : &c->awl, c->now, &out);
	assert_string_equal(greystep_result_name(out.result), greystep_result_name(c->result));
	assert_int_equal(out.remaining_ms, c->remaining);
	assert_int_equal(out.waited_ms, c->waited);
	assert_int_equal(out.write_triplet, c->write_triplet);
	if (c->write_triplet) {
		assert_true(out.triplet.present);
		assert_int_equal(out.triplet.first_ms, c->first);
		assert_int_equal(out.triplet.last_ms, c->last);
		assert_int_equal(out.triplet_expires_ms, c->triplet_expires);
	}
	assert_int_equal(out.write_awl, c->write_awl);
	if (c->write_awl) {
		assert_int_equal(out.awl.count, c->count);
		assert_int_equal(out.awl.last_ms, c->awl_last);
		assert_int_equal(out.awl_expires_ms, c->awl_expires);
	}
	assert_int_equal(greystep_passes(out.result), c->result >= GREYSTEP_PASS_FIRST);
}

/* A whole postgrey sequence through the step's own writes: new, early, pass, pass, new after max_age. */
static void test_sequence(void **state)
{
	greystep_params p = {.delay_ms = D, .retry_window_ms = W, .max_age_ms = M, .awl_count = AWL};
	greystep_triplet t = {.present = false};
	greystep_awl a = {.present = false};
	static const struct {
		int64_t at;
		greystep_result want;
	} steps[] = {{T0, GREYSTEP_DEFER_NEW},
	             {T0 + 60000, GREYSTEP_DEFER_EARLY},
	             {T0 + D, GREYSTEP_PASS_FIRST},
	             {T0 + D + 5, GREYSTEP_PASS},
	             {T0 + D + M, GREYSTEP_PASS}};
	greystep_out out;

	(void)state;
	for (size_t i = 0; i < NELEM(steps); i++) {
		greystep_run(&p, &t, &a, steps[i].at, &out);
		assert_string_equal(greystep_result_name(out.result), greystep_result_name(steps[i].want));
		if (out.write_triplet)
			t = out.triplet;
		if (out.write_awl)
			a = out.awl;
	}
	/* The store drops the triplet at its expiry: one ms later it is new again. */
	assert_int_equal(out.triplet_expires_ms, T0 + D + 2 * M);
	t.present = false;
	greystep_run(&p, &t, &a, out.triplet_expires_ms, &out);
	assert_int_equal(out.result, GREYSTEP_DEFER_NEW);
	assert_int_equal(a.count, 1);
}

static void test_keys(void **state)
{
	addr_ip v4, v6;
	char out[GREYSTEP_KEY_MAX];

	(void)state;
	assert_true(addr_ip_parse("192.0.2.7", &v4));
	assert_true(addr_ip_parse("2001:db8::1", &v6));
	assert_int_equal(
	    greystep_triplet_key(&v4, 24, 64, "user@example.com", "bob@example.org", out, sizeof(out)),
	    strlen("192.0.2.0/24/user@example.com/bob@example.org"));
	assert_string_equal(out, "192.0.2.0/24/user@example.com/bob@example.org");
	greystep_triplet_key(&v6, 24, 64, "", "bob@example.org", out, sizeof(out));
	assert_string_equal(out, "2001:db8::/64//bob@example.org");
	assert_int_equal(greystep_triplet_key(&v4, 24, 64, "a@b", "c@d", out, 10), 0);
	assert_string_equal(out, "");
	greystep_awl_key(&v4, false, 24, 64, out, sizeof(out));
	assert_string_equal(out, "192.0.2.7");
	greystep_awl_key(&v4, true, 24, 64, out, sizeof(out));
	assert_string_equal(out, "192.0.2.0/24");
}

int main(void)
{
	static const struct CMUnitTest others[] = {
	    cmocka_unit_test(test_sequence),
	    cmocka_unit_test(test_keys),
	};
	int failed = 0;

	RUN_TABLE("greystep_run", step_cases, test_step_case, failed);
	failed += cmocka_run_group_tests_name("greystep", others, NULL, NULL);
	return failed ? 1 : 0;
}
