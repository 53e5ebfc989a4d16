/*
 * Unit tests for store/redis_view's remembered answers (redis_view_recall,
 * redis_view_remember): what a round trip said of a key is answered again
 * until the key is added (an invalidation, a write of this process), the
 * view is rebuilt or disabled; an answer that an add of its key overtook
 * (the add may be the invalidation of a write after the round trip's
 * read) is not remembered. Each of these is what keeps a removed entry
 * from being answered "listed", or a new one "not listed", from memory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "store/keyfilter.h"
#include "store/redis_view.h"

static redis_view *ready_view(void)
{
	redis_view *v = redis_view_new(1000);

	assert_non_null(v);
	redis_view_begin(v);
	redis_view_confirm(v, 1000);
	redis_view_ready(v);
	return v;
}

static void entry_for(const char *key, store_entry *e)
{
	memset(e, 0, sizeof(*e));
	snprintf(e->key, sizeof(e->key), "%s", key);
	e->first_seen = 100;
	e->last_seen = 200;
	e->expires = 5000;
	e->hits = 3;
	snprintf(e->trap, sizeof(e->trap), "trap@example.com");
	snprintf(e->sender, sizeof(e->sender), "%s", key);
	snprintf(e->recipient, sizeof(e->recipient), "trap@example.com");
	snprintf(e->client, sizeof(e->client), "192.0.2.7");
	snprintf(e->helo, sizeof(e->helo), "mail.example.net");
	snprintf(e->queue_id, sizeof(e->queue_id), "4ABCDEF");
	snprintf(e->reason, sizeof(e->reason), "trap");
}

static redis_view_token enter(redis_view *v)
{
	redis_view_token t;

	assert_true(redis_view_enter(v, 1100, &t));
	return t;
}

/* What the view remembers of key under t; *gen (when not NULL) for a remember after a round trip. */
static redis_view_answer recall(redis_view *v, const redis_view_token *t, const char *key, store_entry *out,
                                uint64_t *gen)
{
	uint64_t g;

	return redis_view_recall(v, t, key, out, gen ? gen : &g);
}

/* A round trip for key, answered e (NULL: no entry), with nothing in between. */
static void learn(redis_view *v, const redis_view_token *t, const char *key, const store_entry *e)
{
	store_entry out;
	uint64_t gen;

	assert_int_equal(recall(v, t, key, &out, &gen), REDIS_VIEW_UNKNOWN);
	redis_view_remember(v, t, key, e, gen);
}

static void test_found_entry_recalled_whole(void **state)
{
	redis_view *v = ready_view();
	redis_view_token t = enter(v);
	store_entry e, out;

	(void)state;
	entry_for("spam@example.org", &e);
	learn(v, &t, "spam@example.org", &e);
	t = enter(v);
	assert_int_equal(recall(v, &t, "spam@example.org", &out, NULL), REDIS_VIEW_FOUND);
	assert_memory_equal(&e, &out, sizeof(e));
	assert_true(redis_view_still(v, &t));
	/* another key, and a key that only shares a prefix, are not it */
	assert_int_equal(recall(v, &t, "spam@example.or", &out, NULL), REDIS_VIEW_UNKNOWN);
	learn(v, &t, "ham@example.org", NULL);
	assert_int_equal(recall(v, &t, "ham@example.org", &out, NULL), REDIS_VIEW_NONE);
	redis_view_free(v);
}

static void test_add_forgets(void **state)
{
	redis_view *v = ready_view();
	redis_view_token t = enter(v);
	store_entry e, out;

	(void)state;
	entry_for("spam@example.org", &e);
	learn(v, &t, "spam@example.org", &e);
	learn(v, &t, "ham@example.org", NULL);
	/* an invalidation of each (removed by spamtrapctl; listed by another host) */
	redis_view_add(v, "spam@example.org", strlen("spam@example.org"));
	redis_view_add(v, "ham@example.org", strlen("ham@example.org"));
	t = enter(v);
	assert_int_equal(recall(v, &t, "spam@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	assert_int_equal(recall(v, &t, "ham@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	redis_view_free(v);
}

static void test_answer_overtaken_by_an_add_is_not_remembered(void **state)
{
	redis_view *v = ready_view();
	redis_view_token t = enter(v);
	store_entry e, out;
	uint64_t gen;

	(void)state;
	/* the round trip read "no entry"; meanwhile the key was listed (its invalidation, or this process) */
	assert_int_equal(recall(v, &t, "new@example.org", &out, &gen), REDIS_VIEW_UNKNOWN);
	redis_view_add(v, "new@example.org", strlen("new@example.org"));
	redis_view_remember(v, &t, "new@example.org", NULL, gen);
	assert_int_equal(recall(v, &t, "new@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	/* the same for an entry read before its removal */
	assert_int_equal(recall(v, &t, "gone@example.org", &out, &gen), REDIS_VIEW_UNKNOWN);
	redis_view_add(v, "gone@example.org", strlen("gone@example.org"));
	entry_for("gone@example.org", &e);
	redis_view_remember(v, &t, "gone@example.org", &e, gen);
	assert_int_equal(recall(v, &t, "gone@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	redis_view_free(v);
}

static void test_rebuild_and_disable_forget(void **state)
{
	redis_view *v = ready_view();
	redis_view_token t = enter(v), old;
	store_entry e, out;
	uint64_t gen;

	(void)state;
	entry_for("spam@example.org", &e);
	learn(v, &t, "spam@example.org", &e);
	/* a round trip under way when the connection is lost */
	assert_int_equal(recall(v, &t, "late@example.org", &out, &gen), REDIS_VIEW_UNKNOWN);
	old = t;
	redis_view_disable(v);
	assert_false(redis_view_enter(v, 1100, &t));
	redis_view_begin(v);
	redis_view_confirm(v, 2000);
	redis_view_ready(v);
	redis_view_remember(v, &old, "late@example.org", NULL, gen);
	assert_true(redis_view_enter(v, 2100, &t));
	assert_int_equal(recall(v, &t, "spam@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	assert_int_equal(recall(v, &t, "late@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	redis_view_free(v);
}

static void test_entry_too_long_is_not_kept(void **state)
{
	redis_view *v = ready_view();
	redis_view_token t = enter(v);
	store_entry e, out;

	(void)state;
	entry_for("long@example.org", &e);
	memset(e.helo, 'h', 250);
	e.helo[250] = '\0';
	memset(e.recipient, 'r', 300);
	e.recipient[300] = '\0';
	learn(v, &t, "long@example.org", &e);
	assert_int_equal(recall(v, &t, "long@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	redis_view_free(v);
}

/* A key other than key whose hash is the same modulo mod, and not modulo other (0: any). */
static void key_like(const char *key, uint64_t mod, uint64_t other, char *out, size_t cap)
{
	uint64_t h = keyfilter_hash(key, strlen(key));

	for (unsigned i = 0;; i++) {
		uint64_t g;

		snprintf(out, cap, "x%u@example.net", i);
		g = keyfilter_hash(out, strlen(out));
		if (g % mod == h % mod && (!other || g % other != h % other) && strcmp(out, key) != 0)
			return;
	}
}

static void test_keys_of_one_slot(void **state)
{
	redis_view *v = ready_view();
	redis_view_token t = enter(v);
	store_entry e, out;
	uint64_t gen;
	char other[64];

	(void)state;
	key_like("spam@example.org", REDIS_VIEW_ANSWERS, 0, other, sizeof(other));
	entry_for("spam@example.org", &e);
	learn(v, &t, "spam@example.org", &e);
	/* a key an attacker picked for the slot is not answered as the one there */
	assert_int_equal(recall(v, &t, other, &out, NULL), REDIS_VIEW_UNKNOWN);
	/* an add of it clears the slot; an answer in flight for either is refused */
	redis_view_add(v, other, strlen(other));
	assert_int_equal(recall(v, &t, "spam@example.org", &out, &gen), REDIS_VIEW_UNKNOWN);
	redis_view_add(v, other, strlen(other));
	redis_view_remember(v, &t, "spam@example.org", &e, gen);
	assert_int_equal(recall(v, &t, "spam@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	/* the last answer remembered replaces the other */
	learn(v, &t, "spam@example.org", &e);
	learn(v, &t, other, NULL);
	assert_int_equal(recall(v, &t, "spam@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	assert_int_equal(recall(v, &t, other, &out, NULL), REDIS_VIEW_NONE);
	redis_view_free(v);
}

static void test_keys_of_one_gen_group(void **state)
{
	redis_view *v = ready_view();
	redis_view_token t = enter(v);
	store_entry out;
	uint64_t gen;
	char other[64];

	(void)state;
	/* slots whose gen is shared (4,096 groups): same index modulo 4,096, another slot */
	key_like("ham@example.org", REDIS_VIEW_ANSWER_GENS, REDIS_VIEW_ANSWERS, other, sizeof(other));
	learn(v, &t, "ham@example.org", NULL);
	assert_int_equal(recall(v, &t, "ham@example.org", &out, &gen), REDIS_VIEW_NONE);
	redis_view_add(v, other, strlen(other));
	/* its slot is not cleared, but an answer in flight is refused (the gen is the group's) */
	assert_int_equal(recall(v, &t, "ham@example.org", &out, NULL), REDIS_VIEW_NONE);
	assert_int_equal(recall(v, &t, "new@example.org", &out, &gen), REDIS_VIEW_UNKNOWN);
	key_like("new@example.org", REDIS_VIEW_ANSWER_GENS, REDIS_VIEW_ANSWERS, other, sizeof(other));
	redis_view_add(v, other, strlen(other));
	redis_view_remember(v, &t, "new@example.org", NULL, gen);
	assert_int_equal(recall(v, &t, "new@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	redis_view_free(v);
}

static void test_two_lookups_of_one_key(void **state)
{
	redis_view *v = ready_view();
	redis_view_token t = enter(v);
	store_entry e, out;
	uint64_t gen1, gen2;

	(void)state;
	entry_for("both@example.org", &e);
	/* 1 read "none" before another host's write, 2 read the entry after it; the write's message
	 * is applied between their answers, in either order */
	assert_int_equal(recall(v, &t, "both@example.org", &out, &gen1), REDIS_VIEW_UNKNOWN);
	assert_int_equal(recall(v, &t, "both@example.org", &out, &gen2), REDIS_VIEW_UNKNOWN);
	redis_view_remember(v, &t, "both@example.org", &e, gen2);
	redis_view_add(v, "both@example.org", strlen("both@example.org"));
	redis_view_remember(v, &t, "both@example.org", NULL, gen1);
	assert_int_equal(recall(v, &t, "both@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	/* both answers before the message: the stale one may be kept until the message, not after */
	assert_int_equal(recall(v, &t, "both@example.org", &out, &gen1), REDIS_VIEW_UNKNOWN);
	assert_int_equal(recall(v, &t, "both@example.org", &out, &gen2), REDIS_VIEW_UNKNOWN);
	redis_view_remember(v, &t, "both@example.org", &e, gen2);
	redis_view_remember(v, &t, "both@example.org", NULL, gen1);
	redis_view_add(v, "both@example.org", strlen("both@example.org"));
	assert_int_equal(recall(v, &t, "both@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	redis_view_free(v);
}

static void test_rebuild_forgets_without_adds(void **state)
{
	redis_view *v = ready_view();
	redis_view_token t = enter(v);
	store_entry e, out;

	(void)state;
	entry_for("kept@example.org", &e);
	learn(v, &t, "kept@example.org", &e);
	redis_view_begin(v);
	assert_true(redis_view_add_scanned(v, "kept@example.org", strlen("kept@example.org")));
	redis_view_confirm(v, 1000);
	redis_view_ready(v);
	t = enter(v);
	assert_int_equal(recall(v, &t, "kept@example.org", &out, NULL), REDIS_VIEW_UNKNOWN);
	assert_int_equal(redis_view_test(v, (const char *const[]){"kept@example.org"}, 1), 1);
	redis_view_free(v);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_found_entry_recalled_whole),
	    cmocka_unit_test(test_add_forgets),
	    cmocka_unit_test(test_answer_overtaken_by_an_add_is_not_remembered),
	    cmocka_unit_test(test_rebuild_and_disable_forget),
	    cmocka_unit_test(test_entry_too_long_is_not_kept),
	    cmocka_unit_test(test_keys_of_one_slot),
	    cmocka_unit_test(test_keys_of_one_gen_group),
	    cmocka_unit_test(test_two_lookups_of_one_key),
	    cmocka_unit_test(test_rebuild_forgets_without_adds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
