/*
 * Unit tests for store/sqlite_hot: the SQLite store's buckets and sets in
 * memory. They answer as the file did (GCRA with the debt rule, a set's
 * limit counted first, so that of two new networks racing for the last
 * slot one passes), hand out exactly what changed, forget on a reset
 * (also an entry read from the file while the reset ran), and stay
 * bounded: a full table of unwritten entries sends new keys to the file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/sqlite_hot.h"

static query counter_q(const char *key, int64_t now_ms, uint64_t cost, bool debt)
{
	query q = {.kind = QUERY_COUNTER};

	q.u.counter.ns = "ratelimit";
	q.u.counter.key = key;
	q.u.counter.now_ms = now_ms;
	q.u.counter.emission_ms = 1000; /* one a second */
	q.u.counter.burst = 2;
	q.u.counter.cost = cost;
	q.u.counter.debt = debt;
	return q;
}

static sqlite_hot_distinct add_a(const char *set, const char *member, int64_t now, uint64_t limit)
{
	return (sqlite_hot_distinct){
	    .set = set, .member = member, .now = now, .window = 3600, .limit = limit, .room = true};
}

static void test_counter_in_memory(void **state)
{
	sqlite_hot *h = sqlite_hot_new(16);
	query q = counter_q("account:a", 1000000, 1, true);
	sqlite_hot_batch b = {0};

	(void)state;
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_MISS);
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "account:a", false, 0, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_true(q.u.counter.allowed);
	assert_int_equal(q.u.counter.remaining, 1);
	/* Two peeks saw room at once; both charge (debt): the bucket owes one, the next peek finds none. */
	q = counter_q("account:a", 1000000, 1, true);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	q = counter_q("account:a", 1000000, 1, true);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_true(q.u.counter.allowed);
	q = counter_q("account:a", 1000000, 0, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_int_equal(q.u.counter.remaining, 0);
	/* Paid back after the owed unit's interval and one more. */
	q = counter_q("account:a", 1002000, 0, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_int_equal(q.u.counter.remaining, 1);
	/* A charge without debt past the burst is refused and charges nothing. */
	q = counter_q("account:a", 1000000, 5, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_false(q.u.counter.allowed);
	/* One write: the TAT after three charges, a new row. */
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.v[0].kind, SQLITE_HOT_COUNTER);
	assert_string_equal(b.v[0].key, "account:a");
	assert_int_equal(b.v[0].value, 1003000);
	assert_true(b.v[0].fresh);
	sqlite_hot_batch_clear(&b);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 0);
	/* Charged again: a row now, not fresh. */
	q = counter_q("account:a", 1010000, 1, true);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 1);
	assert_false(b.v[0].fresh);
	assert_int_equal(b.v[0].value, 1011000);
	sqlite_hot_batch_clear(&b);
	sqlite_hot_free(h);
}

static void test_gcra_matches_loaded_tat(void **state)
{
	sqlite_hot *h = sqlite_hot_new(16);
	query q = counter_q("k", 5000, 0, false);

	(void)state;
	/* The file's TAT is 2 s ahead: the burst of 2 is spent. */
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k", true, 7000, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_int_equal(q.u.counter.remaining, 0);
	q = counter_q("k", 5000, 1, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_false(q.u.counter.allowed);
	assert_int_equal(q.u.counter.retry_after_ms, 1000);
	sqlite_hot_free(h);
}

static void test_set_counts_first(void **state)
{
	sqlite_hot *h = sqlite_hot_new(16);
	sqlite_hot_member known[] = {{"192.0.2.0/24", 1000 + 3600}, {"198.51.100.0/24", 1000 + 3000}};
	sqlite_hot_distinct a = add_a("relay:sasl:nina", "203.0.113.0/24", 1000, 3), peek;
	sqlite_hot_batch b = {0};

	(void)state;
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_MISS);
	assert_true(sqlite_hot_set_load(h, "relay:sasl:nina", known, 2, sqlite_hot_generation(h)));
	/* Two requests from new networks, one free slot: the first add takes it, the second trips. */
	a = add_a("relay:sasl:nina", "203.0.113.0/24", 1000, 3);
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_DONE);
	assert_int_equal(a.count, 3);
	a = add_a("relay:sasl:nina", "233.252.0.0/24", 1000, 3);
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_DONE);
	assert_int_equal(a.count, 4);
	peek = (sqlite_hot_distinct){
	    .set = "relay:sasl:nina", .member = "233.252.0.0/24", .now = 1000, .peek = true};
	assert_int_equal(sqlite_hot_distinct_run(h, &peek), SQLITE_HOT_DONE);
	assert_int_equal(peek.count, 3);
	assert_false(peek.present);
	/* A known network refreshes and passes at the limit. */
	a = add_a("relay:sasl:nina", "192.0.2.0/24", 1000, 3);
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_DONE);
	assert_int_equal(a.count, 3);
	/* The new member is owed; the refreshed one within the slack (a 64th of the window) is not. */
	assert_int_equal(sqlite_hot_pending_members(h), 1);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 1);
	assert_string_equal(b.v[0].member, "203.0.113.0/24");
	assert_int_equal(b.v[0].value, 1000 + 3600);
	assert_true(b.v[0].fresh);
	assert_int_equal(sqlite_hot_pending_members(h), 0);
	sqlite_hot_batch_clear(&b);
	/* Past the slack a refresh is owed; past its window a member no longer counts. */
	a = add_a("relay:sasl:nina", "192.0.2.0/24", 1000 + 120, 3);
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_DONE);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 1);
	assert_false(b.v[0].fresh);
	assert_int_equal(b.v[0].value, 1120 + 3600);
	sqlite_hot_batch_clear(&b);
	peek.now = 4001;
	assert_int_equal(sqlite_hot_distinct_run(h, &peek), SQLITE_HOT_DONE);
	assert_int_equal(peek.count, 2);
	sqlite_hot_free(h);
}

static void test_set_at_table_cap_goes_to_file(void **state)
{
	sqlite_hot *h = sqlite_hot_new(16);
	sqlite_hot_member known[] = {{"192.0.2.0/24", 5000}};
	sqlite_hot_distinct a = add_a("relay:sasl:x", "198.51.100.0/24", 1000, 10);

	(void)state;
	assert_true(sqlite_hot_set_load(h, "relay:sasl:x", known, 1, sqlite_hot_generation(h)));
	a.room = false;
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_FULL);
	a = add_a("relay:sasl:x", "192.0.2.0/24", 1000, 10);
	a.room = false;
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_DONE);
	assert_int_equal(a.count, 1);
	sqlite_hot_free(h);
}

static void test_forget_beats_a_racing_load(void **state)
{
	sqlite_hot *h = sqlite_hot_new(16);
	query q = counter_q("account:b", 1000, 1, true);
	uint64_t gen = sqlite_hot_generation(h);
	sqlite_hot_batch b = {0};

	(void)state;
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "account:b", true, 9000, gen));
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	/* A reset drops the entry and what it owed. */
	sqlite_hot_forget(h, SQLITE_HOT_COUNTER, "ratelimit", "account:b");
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_MISS);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 0);
	/* A load that read the file before the reset keeps nothing. */
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "account:b", true, 9000, gen));
	q = counter_q("k", 1000000, 0, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_MISS);
	assert_int_equal(sqlite_hot_entries(h), 0);
	sqlite_hot_free(h);
}

static void test_record_read_from_memory(void **state)
{
	sqlite_hot *h = sqlite_hot_new(16);
	query q = {.kind = QUERY_KV};

	(void)state;
	q.u.kv.op = QUERY_KV_GET;
	q.u.kv.ns = "relay-trip";
	q.u.kv.key = "sasl:olga";
	q.u.kv.now_ms = 1000;
	assert_int_equal(sqlite_hot_kv_get(h, &q), SQLITE_HOT_MISS);
	/* No record in the file: "none" is held too (the trip marker is read at every recipient). */
	assert_true(sqlite_hot_kv_load(h, "relay-trip", "sasl:olga", false, "", 0, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_kv_get(h, &q), SQLITE_HOT_DONE);
	assert_false(q.u.kv.found);
	/* Written to the file (a trip): forgotten, then read again with the marker. */
	sqlite_hot_forget(h, SQLITE_HOT_KV, "relay-trip", "sasl:olga");
	assert_int_equal(sqlite_hot_kv_get(h, &q), SQLITE_HOT_MISS);
	assert_true(sqlite_hot_kv_load(h, "relay-trip", "sasl:olga", true, "198.18.1.0/24 networks=11", 5000,
	                               sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_kv_get(h, &q), SQLITE_HOT_DONE);
	assert_true(q.u.kv.found);
	assert_string_equal(q.u.kv.old, "198.18.1.0/24 networks=11");
	assert_int_equal(q.u.kv.expires_ms, 5000);
	/* Past its expiry it is gone. */
	q.u.kv.found = false;
	q.u.kv.now_ms = 5000;
	assert_int_equal(sqlite_hot_kv_get(h, &q), SQLITE_HOT_DONE);
	assert_false(q.u.kv.found);
	sqlite_hot_free(h);
}

static void test_bounded(void **state)
{
	sqlite_hot *h = sqlite_hot_new(2);
	query q;
	sqlite_hot_batch b = {0};
	const char *keys[] = {"a", "b", "c"};

	(void)state;
	for (int i = 0; i < 2; i++) {
		q = counter_q(keys[i], 1000, 1, true);
		assert_true(
		    sqlite_hot_counter_load(h, "ratelimit", keys[i], false, 0, sqlite_hot_generation(h)));
		assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	}
	/* Both owe a write: no room for a third (the store asks the file for it). */
	assert_false(sqlite_hot_counter_load(h, "ratelimit", "c", false, 0, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 2);
	/* A failed write owes them again. */
	sqlite_hot_retake(h, &b);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	assert_false(sqlite_hot_counter_load(h, "ratelimit", "c", false, 0, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 2);
	assert_true(b.v[0].fresh && b.v[1].fresh);
	sqlite_hot_batch_clear(&b);
	sqlite_hot_written(h);
	/* Written: a clean entry makes room. */
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "c", false, 0, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_entries(h), 2);
	sqlite_hot_free(h);
}

/* The members of all sets together are bounded too: past the bound, the store counts in the file. */
static void test_members_bounded(void **state)
{
	sqlite_hot *h = sqlite_hot_new(16);
	size_t n = SQLITE_HOT_MAX_MEMBERS;
	sqlite_hot_member *m = calloc(n, sizeof(*m));
	char(*names)[16] = calloc(n, sizeof(*names));
	sqlite_hot_distinct a = add_a("relay:sasl:big", "new", 1000, 0);

	(void)state;
	assert_non_null(m);
	assert_non_null(names);
	for (size_t i = 0; i < n; i++) {
		snprintf(names[i], sizeof(names[i]), "m%zu", i);
		m[i] = (sqlite_hot_member){names[i], 5000};
	}
	/* One more than the bound: not kept. */
	assert_true(sqlite_hot_set_load(h, "relay:sasl:one", m, 1, sqlite_hot_generation(h)));
	assert_false(sqlite_hot_set_load(h, "relay:sasl:big", m, n, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_entries(h), 1);
	/* At the bound: a new member goes to the file, a known one is answered. */
	assert_true(sqlite_hot_set_load(h, "relay:sasl:big", m, n - 1, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_FULL);
	a = add_a("relay:sasl:big", "m7", 1000, 0);
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_DONE);
	assert_int_equal(a.count, n - 1);
	free(names);
	free(m);
	sqlite_hot_free(h);
}

/*
 * An entry handed out (taken) is not in the file until that flush commits:
 * dropped for room before then, it would be read back from the file as it
 * was before the flush (a stranger's new keys filling the table could so
 * wipe a stolen account's networks or a bucket's charges). It stays held
 * until sqlite_hot_written.
 */
static void test_taken_not_dropped_before_written(void **state)
{
	(void)state;
	sqlite_hot *h = sqlite_hot_new(1);
	query q = counter_q("account:victim", 10000, 1, false);
	sqlite_hot_batch b = {0};

	assert_true(
	    sqlite_hot_counter_load(h, "ratelimit", "account:victim", false, 0, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 1);
	/* The flush's transaction runs: a stranger's new key finds no room. */
	assert_false(
	    sqlite_hot_counter_load(h, "ratelimit", "client:192.0.2.1", false, 0, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_entries(h), 1);
	sqlite_hot_written(h);
	/* Committed: the victim's bucket may make room now (the file has it). */
	assert_true(
	    sqlite_hot_counter_load(h, "ratelimit", "client:192.0.2.1", false, 0, sqlite_hot_generation(h)));
	sqlite_hot_batch_clear(&b);
	sqlite_hot_free(h);
}

/* Shared (Redis): charges owed as a delta that composes, so that two hosts' charges add up. */
static void test_shared_counter_owes_deltas(void **state)
{
	sqlite_hot *h = sqlite_hot_new_shared(16);
	query q;
	sqlite_hot_batch b = {0};
	int64_t tat;

	(void)state;
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k", true, 1000500, sqlite_hot_generation(h)));
	/* At 1,000,000 (TAT 1,000,500) and at 1,003,000 (the TAT passed by then): one unit (1 s) each. */
	q = counter_q("k", 1000000, 1, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	q = counter_q("k", 1003000, 1, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 1);
	/* Not the TAT but the function: tat = max(tat, from) + add. */
	assert_int_equal(b.v[0].add, 2000);
	assert_int_equal(b.v[0].value, 1002000);
	/* Applied to the TAT this host read, it gives this host's TAT ... */
	tat = 1000500 > b.v[0].value ? 1000500 : b.v[0].value;
	assert_int_equal(tat + b.v[0].add, 1004000);
	/* ... and to a TAT another host pushed to 1,010,000, both hosts' units. */
	tat = 1010000 > b.v[0].value ? 1010000 : b.v[0].value;
	assert_int_equal(tat + b.v[0].add, 1012000);
	/* A failed write owes it again, before what was charged since. */
	q = counter_q("k", 1003000, 1, true);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	sqlite_hot_retake(h, &b);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.v[0].add, 3000);
	assert_int_equal(b.v[0].value, 1002000);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	sqlite_hot_free(h);
}

/* A charge of cost at now_ms, burst 10 (tolerance 10 s, half of it 5 s ahead): answered from memory. */
static void charge10(sqlite_hot *h, int64_t now_ms, uint64_t cost)
{
	query q = counter_q("k", now_ms, cost, false);

	q.u.counter.burst = 10;
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_true(q.u.counter.allowed);
}

/*
 * Shared, at a tick (sqlite_hot_take_due): a bucket with plenty of room
 * keeps its charges, added up, until wait_ms after the first; the delta's
 * from is the first charge's time, so that it adds to any TAT as the
 * charges written one by one would. A bucket near its limit, or owed again
 * after a failed write, is taken at once.
 */
static void test_shared_take_due(void **state)
{
	sqlite_hot *h = sqlite_hot_new_shared(16);
	sqlite_hot_batch b = {0};

	(void)state;
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k", false, 0, sqlite_hot_generation(h)));
	charge10(h, 1000000, 1);
	charge10(h, 1000200, 1); /* TAT 1,002,000: 2 s ahead, less than half of 10 s */
	assert_int_equal(sqlite_hot_take_due(h, &b, 1000200, 800), 0);
	assert_int_equal(b.n, 0);
	sqlite_hot_written(h);
	assert_true(sqlite_hot_owes(h));
	assert_int_equal(sqlite_hot_take_due(h, &b, 1000799, 800), 0);
	assert_int_equal(b.n, 0);
	sqlite_hot_written(h);
	assert_int_equal(sqlite_hot_take_due(h, &b, 1000800, 800), 0);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.v[0].value, 1000000);
	assert_int_equal(b.v[0].add, 2000);
	/* Written one by one: 1,001,000 then 1,002,000 on an empty bucket, 1,006,000 then 1,007,000 on one at
	 * 1,005,000. */
	assert_int_equal((0 > b.v[0].value ? 0 : b.v[0].value) + b.v[0].add, 1002000);
	assert_int_equal((1005000 > b.v[0].value ? 1005000 : b.v[0].value) + b.v[0].add, 1007000);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	assert_false(sqlite_hot_owes(h));
	/* Past half its tolerance (TAT 1,007,000 at 1,001,000): taken at the next tick. */
	charge10(h, 1001000, 5);
	assert_int_equal(sqlite_hot_take_due(h, &b, 1001100, 800), 0);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.v[0].add, 5000);
	/* Its write failed: owed again, and due at once even with room again. */
	sqlite_hot_retake(h, &b);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	assert_int_equal(sqlite_hot_take_due(h, &b, 1004000, 800), 0);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.v[0].add, 5000);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	/*
	 * Burst 2 charged once: half its tolerance ahead at the charge, near,
	 * though less than half by the tick (drained 100 ms).
	 */
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k2", false, 0, sqlite_hot_generation(h)));
	{
		query q = counter_q("k2", 1005000, 1, false);

		assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	}
	assert_int_equal(sqlite_hot_take_due(h, &b, 1005100, 800), 0);
	assert_int_equal(b.n, 1);
	assert_string_equal(b.v[0].key, "k2");
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	/* A take of everything (a stop) takes a bucket with room at once. */
	charge10(h, 1010000, 1);
	assert_int_equal(sqlite_hot_take_due(h, &b, 1010000, 800), 0);
	assert_int_equal(b.n, 0);
	sqlite_hot_written(h);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.v[0].value, 1010000);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	/*
	 * Charges that drained here while held: the TAT is 4.3 s ahead, less
	 * than half, but the delta owes 5 s, added in full on top of a TAT
	 * another host wrote meanwhile: half the burst held back, so due now.
	 */
	charge10(h, 1020000, 4);
	charge10(h, 1020700, 1);
	assert_int_equal(sqlite_hot_take_due(h, &b, 1020700, 800), 0);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.v[0].add, 5000);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	sqlite_hot_free(h);
}

/*
 * A bucket empty again by the flush (its TAT passed: a fast rule) is not
 * written: the file's row, an earlier TAT or none, reads empty as well.
 * It stays in memory; one still charged is written, a new one as fresh.
 */
static void test_take_leaves_out_empty_buckets(void **state)
{
	sqlite_hot *h = sqlite_hot_new(16);
	query q;
	sqlite_hot_batch b = {0};

	(void)state;
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k", false, 0, sqlite_hot_generation(h)));
	q = counter_q("k", 1000000, 1, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	/* TAT 1,001,000: empty at 1,001,000. */
	assert_int_equal(sqlite_hot_take_at(h, &b, 1001000), 0);
	assert_int_equal(b.n, 0);
	sqlite_hot_written(h);
	assert_false(sqlite_hot_owes(h));
	/* Still answered from memory, as charged. */
	q = counter_q("k", 1000500, 0, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_int_equal(q.u.counter.remaining, 1);
	/* Charged again, TAT 1,003,000, not passed at 1,002,999: written, still a new row. */
	q = counter_q("k", 1002000, 1, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_int_equal(sqlite_hot_take_at(h, &b, 1002999), 0);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.v[0].value, 1003000);
	assert_true(b.v[0].fresh);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	/* Shared (Redis): the charge is owed as a delta whatever the time, other hosts' add to it. */
	sqlite_hot_free(h);
	h = sqlite_hot_new_shared(16);
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k", false, 0, sqlite_hot_generation(h)));
	q = counter_q("k", 1000000, 1, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_int_equal(sqlite_hot_take_at(h, &b, 2000000), 0);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.v[0].add, 1000);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	sqlite_hot_free(h);
}

/* Shared: another writer's change drops the copy, never what this host owes. */
static void test_shared_invalidate_keeps_owed_charges(void **state)
{
	sqlite_hot *h = sqlite_hot_new_shared(16);
	query q = counter_q("k", 1000000, 1, false);
	sqlite_hot_batch b = {0};
	uint64_t gen;

	(void)state;
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k", false, 0, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	gen = sqlite_hot_generation(h);
	sqlite_hot_invalidate(h, SQLITE_HOT_COUNTER, "ratelimit", "k");
	/* Stale: asked of the store, and a load read before the invalidation is not kept. */
	q = counter_q("k", 1000000, 0, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_MISS);
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k", true, 1005000, gen));
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_MISS);
	/* Read again: the store's TAT (another host's 5 units) plus the one owed here. */
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k", true, 1005000, sqlite_hot_generation(h)));
	q = counter_q("k", 1000000, 0, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_false(q.u.counter.allowed && q.u.counter.remaining > 0);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.v[0].add, 1000);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	/* Another key's invalidation does not refuse this key's load (a busy store invalidates often). */
	gen = sqlite_hot_generation(h);
	sqlite_hot_invalidate(h, SQLITE_HOT_COUNTER, "ratelimit", "other");
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k2", false, 0, gen));
	q = counter_q("k2", 1000000, 0, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	/* The invalidations lost (the view's connection): every copy goes, nothing is owed any more. */
	sqlite_hot_invalidate_all(h);
	q = counter_q("k", 1000000, 0, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_MISS);
	assert_int_equal(sqlite_hot_entries(h), 0);
	sqlite_hot_free(h);
}

/* Shared: a new member is the store's to decide; a write of the set elsewhere drops the copy. */
static void test_shared_set_new_member_is_the_stores(void **state)
{
	sqlite_hot *h = sqlite_hot_new_shared(16);
	sqlite_hot_member m[1] = {{"198.51.100.0/24", 1000 + 3600}};
	sqlite_hot_distinct a = add_a("relay:sasl:a", "198.51.100.0/24", 1000 + 3600 / 2, 10);
	sqlite_hot_batch b = {0};

	(void)state;
	assert_true(sqlite_hot_set_load(h, "relay:sasl:a", m, 1, sqlite_hot_generation(h)));
	/* Known: refreshed in memory, owed. */
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_DONE);
	assert_int_equal(a.count, 1);
	/* New, with room: not decided here (two hosts must count together). */
	a = add_a("relay:sasl:a", "203.0.113.0/24", 1000 + 3600 / 2, 10);
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_FULL);
	/* A peek of it is answered. */
	a.peek = true;
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_DONE);
	assert_false(a.present);
	assert_int_equal(a.count, 1);
	/* Written elsewhere: the copy goes (a reset of the set is forgotten, not invalidated: below). */
	sqlite_hot_invalidate(h, SQLITE_HOT_SET, NULL, "relay:sasl:a");
	a = add_a("relay:sasl:a", "198.51.100.0/24", 1000 + 3600 / 2, 10);
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_MISS);
	sqlite_hot_take(h, &b);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	sqlite_hot_forget(h, SQLITE_HOT_SET, NULL, "relay:sasl:a");
	assert_int_equal(sqlite_hot_entries(h), 0);
	sqlite_hot_free(h);
}

/*
 * Shared: another writer's change of a set (another host's add of the
 * account's next network, this host's own) drops the copy, never the
 * refresh this host owes of a known network: lost, the network would
 * expire in the store at its old time though used within the window, and
 * count as new (a trip on a known network). The refresh is safe to write
 * after any write: the store refreshes only a member it still has.
 */
static void test_shared_invalidate_keeps_owed_refreshes(void **state)
{
	sqlite_hot *h = sqlite_hot_new_shared(16);
	sqlite_hot_member m[2] = {{"198.51.100.0/24", 1000 + 3600}, {"192.0.2.0/24", 1000 + 3600}};
	sqlite_hot_distinct a = add_a("relay:sasl:a", "198.51.100.0/24", 1000 + 3600 / 2, 10);
	sqlite_hot_batch b = {0};
	uint64_t gen;

	(void)state;
	assert_true(sqlite_hot_set_load(h, "relay:sasl:a", m, 2, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_DONE);
	gen = sqlite_hot_generation(h);
	sqlite_hot_invalidate(h, SQLITE_HOT_SET, NULL, "relay:sasl:a");
	/* In doubt: asked of the store; a load read before, or while the refresh is owed, is not kept. */
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_MISS);
	assert_true(sqlite_hot_set_load(h, "relay:sasl:a", m, 2, gen));
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_MISS);
	assert_true(sqlite_hot_set_load(h, "relay:sasl:a", m, 2, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_MISS);
	/* Still written, for the window from its use. */
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	if (b.n != 1)
		fail_msg("%zu refreshes owed after the set's invalidation, want 1", b.n);
	assert_string_equal(b.v[0].member, "198.51.100.0/24");
	assert_int_equal(b.v[0].value, 1000 + 3600 / 2 + 3600);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	/* Written: the store's set is read again for the copy. */
	m[0].expires = 1000 + 3600 / 2 + 3600;
	assert_true(sqlite_hot_set_load(h, "relay:sasl:a", m, 2, sqlite_hot_generation(h)));
	a.peek = true;
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_DONE);
	assert_true(a.present);
	assert_int_equal(a.count, 2);
	/* The invalidations lost: the copy goes, a refresh owed stays owed. */
	a.peek = false;
	a.now += 3600 / 2;
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_DONE);
	sqlite_hot_invalidate_all(h);
	assert_int_equal(sqlite_hot_distinct_run(h, &a), SQLITE_HOT_MISS);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 1);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	sqlite_hot_free(h);
}

/*
 * Shared: another host writes a bucket while this host's charges of it are
 * on their way (taken, not written). A read of the store then may miss
 * them, and the store never tells this host of its own writes: such a
 * copy would lack them for good (a limit passed). And a write that fails
 * must owe them again, even though the copy was dropped meanwhile.
 */
static void test_shared_charges_on_their_way(void **state)
{
	sqlite_hot *h = sqlite_hot_new_shared(16);
	query q = counter_q("k", 1000000, 1, false);
	sqlite_hot_batch b = {0};
	uint64_t gen;

	(void)state;
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k", false, 0, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 1);
	/* Another host's write: the copy is in doubt; read again (before this host's write lands). */
	sqlite_hot_invalidate(h, SQLITE_HOT_COUNTER, "ratelimit", "k");
	gen = sqlite_hot_generation(h);
	q = counter_q("k", 1000000, 0, false);
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_MISS);
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k", true, 1002000, gen));
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_MISS);
	/* The write failed: its charge is owed again. */
	sqlite_hot_retake(h, &b);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	/* A read from before the write's end is not kept either. */
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k", true, 1002000, gen));
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_MISS);
	assert_int_equal(sqlite_hot_take(h, &b), 0);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.v[0].add, 1000);
	assert_int_equal(b.v[0].value, 1000000);
	sqlite_hot_written(h);
	sqlite_hot_batch_clear(&b);
	/* Written: a read from now on is kept. */
	assert_true(sqlite_hot_counter_load(h, "ratelimit", "k", true, 1001000, sqlite_hot_generation(h)));
	assert_int_equal(sqlite_hot_counter(h, &q), SQLITE_HOT_DONE);
	assert_int_equal(q.u.counter.remaining, 1);
	sqlite_hot_free(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_counter_in_memory),
	    cmocka_unit_test(test_gcra_matches_loaded_tat),
	    cmocka_unit_test(test_set_counts_first),
	    cmocka_unit_test(test_set_at_table_cap_goes_to_file),
	    cmocka_unit_test(test_forget_beats_a_racing_load),
	    cmocka_unit_test(test_record_read_from_memory),
	    cmocka_unit_test(test_bounded),
	    cmocka_unit_test(test_members_bounded),
	    cmocka_unit_test(test_taken_not_dropped_before_written),
	    cmocka_unit_test(test_take_leaves_out_empty_buckets),
	    cmocka_unit_test(test_shared_counter_owes_deltas),
	    cmocka_unit_test(test_shared_take_due),
	    cmocka_unit_test(test_shared_invalidate_keeps_owed_charges),
	    cmocka_unit_test(test_shared_set_new_member_is_the_stores),
	    cmocka_unit_test(test_shared_invalidate_keeps_owed_refreshes),
	    cmocka_unit_test(test_shared_charges_on_their_way),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
