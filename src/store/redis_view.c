/*
 * redis_view (see redis_view.h). The state word is (seq << 1) | usable;
 * every change of state bumps seq, so that a reader that overlapped a
 * disable or a rebuild sees a different word afterwards. Reads from the
 * server are bracketed by two counters (reads_begun, reads_done): a
 * reader that saw them equal before and the same begun count after knows
 * that no message was taken off the socket while it looked without being
 * added before it looked (the caller polls the socket in between, see
 * store_redis.c).
 */
#include "store/redis_view.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "store/keyfilter.h"
#include "store/store_backend.h"

struct redis_view {
	keyfilter *filter;
	size_t max_keys;
	_Atomic size_t keys;
	_Atomic uint64_t state;
	_Atomic int64_t confirmed_ms; /* when the PING last answered was sent */
	_Atomic uint64_t reads_begun, reads_done;
	_Atomic uint64_t answers;
	_Atomic uint64_t lens[4]; /* store_netmask: v4, then v6[0..2] */
};

redis_view *redis_view_new(size_t max_keys)
{
	redis_view *v = calloc(1, sizeof(*v));

	if (!v)
		return NULL;
	if (!(v->filter = keyfilter_new(max_keys))) {
		free(v);
		return NULL;
	}
	v->max_keys = max_keys;
	return v;
}

void redis_view_free(redis_view *v)
{
	if (!v)
		return;
	keyfilter_free(v->filter);
	free(v);
}

/* A new state word: the next seq, usable or not. */
static void set_state(redis_view *v, bool usable)
{
	uint64_t s = atomic_load(&v->state);

	atomic_store(&v->state, ((s >> 1) + 1) << 1 | (usable ? 1 : 0));
}

void redis_view_disable(redis_view *v)
{
	if (atomic_load(&v->state) & 1)
		set_state(v, false);
}

void redis_view_begin(redis_view *v)
{
	set_state(v, false);
	keyfilter_clear(v->filter);
	atomic_store(&v->keys, 0);
	for (int i = 0; i < 4; i++)
		atomic_store(&v->lens[i], 0);
}

/* A network key's length into v->lens (netkeys.h's bits). */
static void add_len(redis_view *v, const char *key, size_t len)
{
	char buf[64];
	int family, n;

	if (len >= sizeof(buf) || !memchr(key, '/', len))
		return;
	memcpy(buf, key, len);
	buf[len] = '\0';
	if ((n = store_net_key_len(buf, &family)) < 0)
		return;
	if (family == 4)
		atomic_fetch_or(&v->lens[0], UINT64_C(1) << n);
	else
		atomic_fetch_or(&v->lens[1 + n / 64], UINT64_C(1) << (n % 64));
}

void redis_view_lens(const redis_view *v, store_netmask *out)
{
	out->v4 = atomic_load(&v->lens[0]);
	for (int i = 0; i < 3; i++)
		out->v6[i] = atomic_load(&v->lens[1 + i]);
}

bool redis_view_add(redis_view *v, const char *key, size_t len)
{
	add_len(v, key, len);
	if (keyfilter_add_hash(v->filter, keyfilter_hash(key, len)))
		atomic_fetch_add_explicit(&v->keys, 1, memory_order_relaxed);
	return atomic_load_explicit(&v->keys, memory_order_relaxed) <= v->max_keys;
}

void redis_view_confirm(redis_view *v, int64_t sent_ms)
{
	atomic_store(&v->confirmed_ms, sent_ms);
}

void redis_view_ready(redis_view *v)
{
	set_state(v, true);
}

size_t redis_view_keys(const redis_view *v)
{
	return atomic_load(&v->keys);
}

size_t redis_view_max_keys(const redis_view *v)
{
	return v->max_keys;
}

void redis_view_reading(redis_view *v)
{
	atomic_fetch_add(&v->reads_begun, 1);
}

void redis_view_read(redis_view *v)
{
	atomic_fetch_add(&v->reads_done, 1);
}

bool redis_view_enter(redis_view *v, int64_t now_ms, redis_view_token *t)
{
	uint64_t done = atomic_load(&v->reads_done);

	t->state = atomic_load(&v->state);
	t->reads = atomic_load(&v->reads_begun);
	return (t->state & 1) && t->reads == done &&
	       now_ms - atomic_load(&v->confirmed_ms) <= REDIS_VIEW_STALE_MS;
}

uint64_t redis_view_test(const redis_view *v, const char *const *keys, size_t nkeys)
{
	uint64_t maybe = 0;

	for (size_t i = 0; i < nkeys && i < 64; i++) {
		size_t len = 0;

		while (keys[i][len])
			len++;
		if (keyfilter_may_have_hash(v->filter, keyfilter_hash(keys[i], len)))
			maybe |= UINT64_C(1) << i;
	}
	return maybe;
}

bool redis_view_still(redis_view *v, const redis_view_token *t)
{
	return atomic_load(&v->state) == t->state && atomic_load(&v->reads_begun) == t->reads;
}

void redis_view_answered(redis_view *v)
{
	atomic_fetch_add_explicit(&v->answers, 1, memory_order_relaxed);
}

uint64_t redis_view_answers(const redis_view *v)
{
	return atomic_load_explicit(&v->answers, memory_order_relaxed);
}
