/*
 * redis_view (see redis_view.h). The state word is (seq << 1) | usable;
 * every change of state bumps seq, so that a reader that overlapped a
 * disable or a rebuild sees a different word afterwards. Reads from the
 * server are bracketed by two counters (reads_begun, reads_done): a
 * reader that saw them equal before and the same begun count after knows
 * that no message was taken off the socket while it looked without being
 * added before it looked (the caller polls the socket in between, see
 * store_redis.c).
 *
 * The answers it remembers (redis_view_recall) live in a table of
 * REDIS_VIEW_ANSWERS slots indexed by the key's hash, each under one of
 * ANSWER_LOCKS mutexes. redis_view_add bumps the gen of the slot's group
 * (ANSWER_GENS groups, each under one lock) and clears the slot under
 * its lock; redis_view_remember writes only if the gen is the one
 * redis_view_recall saw before the round trip was sent, under the same
 * lock: an answer that an add overtook is refused, and one written
 * before an add is cleared by it. The gens are apart from the slots so
 * that an add writes a slot only when it holds an answer: every write
 * and expiry under the prefix is an add, and a gen in each slot made
 * the whole table resident within a few ten thousand of them.
 */
#include "store/redis_view.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "store/keyfilter.h"
#include "store/store_backend.h"

#define ANSWER_LOCKS 64
#define ANSWER_GENS REDIS_VIEW_ANSWER_GENS
_Static_assert(ANSWER_GENS % ANSWER_LOCKS == 0, "a group's slots share its lock");
#define ANSWER_TEXT 200 /* the key and the entry's texts, each ended by a NUL: a 256-byte slot */

/* A remembered answer: none (entry_len 0), or a live entry packed into text. */
typedef struct answer_slot {
	uint64_t hash;  /* of the key */
	uint64_t state; /* the view's state word when it was written: a rebuild forgets it */
	int64_t first_seen, last_seen, expires;
	uint64_t hits;
	uint16_t key_len, entry_len; /* entry_len: the texts after the key, 0 for "none" */
	char text[ANSWER_TEXT];
} answer_slot;

_Static_assert(sizeof(answer_slot) == 256, "a slot in 256 bytes: the table's 16 MiB");

struct redis_view {
	keyfilter *filter;
	answer_slot *answers_table;
	pthread_mutex_t answer_lock[ANSWER_LOCKS];
	uint64_t answer_gen[ANSWER_GENS]; /* bumped by every add of a key of the group's slots */
	size_t max_keys;
	_Atomic size_t keys;
	_Atomic uint64_t state;
	_Atomic int64_t confirmed_ms; /* when the PING last answered was sent */
	_Atomic uint64_t reads_begun, reads_done;
	_Atomic uint64_t answers;
	_Atomic uint64_t lens[4]; /* store_netmask: v4, then v6[0..2] */
};

#define TABLE_BYTES (REDIS_VIEW_ANSWERS * sizeof(answer_slot))

/*
 * The answers' table from the kernel, not malloc: its zero pages become
 * resident only as slots are written, and go back at once when it is
 * freed. Once malloc has freed a block this large it serves the next one
 * (a reload's new store) from its heap and clears it all: every reload
 * that changed the store made 16 MiB more resident (RSS 9 MB to 51 MB in
 * six).
 */
static answer_slot *table_new(void)
{
	void *p = mmap(NULL, TABLE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

redis_view *redis_view_new(size_t max_keys)
{
	redis_view *v = calloc(1, sizeof(*v));

	if (!v)
		return NULL;
	if (!(v->filter = keyfilter_new(max_keys)) || !(v->answers_table = table_new())) {
		keyfilter_free(v->filter);
		free(v);
		return NULL;
	}
	for (int i = 0; i < ANSWER_LOCKS; i++)
		pthread_mutex_init(&v->answer_lock[i], NULL);
	v->max_keys = max_keys;
	return v;
}

void redis_view_free(redis_view *v)
{
	if (!v)
		return;
	for (int i = 0; i < ANSWER_LOCKS; i++)
		pthread_mutex_destroy(&v->answer_lock[i]);
	munmap(v->answers_table, TABLE_BYTES);
	keyfilter_free(v->filter);
	free(v);
}

static size_t answer_index(uint64_t hash)
{
	return (size_t)(hash % REDIS_VIEW_ANSWERS);
}

static pthread_mutex_t *answer_lock(redis_view *v, size_t i)
{
	return &v->answer_lock[i % ANSWER_LOCKS];
}

static uint64_t *answer_gen(redis_view *v, size_t i)
{
	return &v->answer_gen[i % ANSWER_GENS];
}

/*
 * Forget what a round trip said of the key of this hash (it was written,
 * or may have been), and make every answer read before now too old to
 * be remembered in its slot (redis_view_remember).
 */
static void answer_forget(redis_view *v, uint64_t hash)
{
	size_t i = answer_index(hash);
	answer_slot *a = &v->answers_table[i];

	pthread_mutex_lock(answer_lock(v, i));
	(*answer_gen(v, i))++;
	if (a->state) /* a slot never written is not touched */
		a->state = 0;
	pthread_mutex_unlock(answer_lock(v, i));
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

static bool add_hash(redis_view *v, const char *key, size_t len, uint64_t hash)
{
	add_len(v, key, len);
	if (keyfilter_add_hash(v->filter, hash))
		atomic_fetch_add_explicit(&v->keys, 1, memory_order_relaxed);
	return atomic_load_explicit(&v->keys, memory_order_relaxed) <= v->max_keys;
}

bool redis_view_add(redis_view *v, const char *key, size_t len)
{
	uint64_t hash = keyfilter_hash(key, len);

	answer_forget(v, hash);
	return add_hash(v, key, len, hash);
}

/*
 * Nothing to forget: the answers remembered before redis_view_begin have
 * its old state, and none is remembered until redis_view_ready. A slot
 * written here for each key would make the whole table resident at every
 * rebuild of a store of more than a few ten thousand entries.
 */
bool redis_view_add_scanned(redis_view *v, const char *key, size_t len)
{
	return add_hash(v, key, len, keyfilter_hash(key, len));
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

/* The texts of an entry after its key, each with its NUL; 0 when they do not fit in room. */
static size_t pack_entry(const store_entry *e, char *p, size_t room)
{
	const char *texts[] = {e->trap, e->sender, e->recipient, e->client, e->helo, e->queue_id, e->reason};
	size_t used = 0;

	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		size_t n = strlen(texts[i]) + 1;

		if (n > room - used)
			return 0;
		memcpy(p + used, texts[i], n);
		used += n;
	}
	return used;
}

static void unpack_entry(const answer_slot *a, store_entry *e)
{
	char *texts[] = {e->trap, e->sender, e->recipient, e->client, e->helo, e->queue_id, e->reason};
	size_t caps[] = {sizeof(e->trap), sizeof(e->sender),   sizeof(e->recipient), sizeof(e->client),
	                 sizeof(e->helo), sizeof(e->queue_id), sizeof(e->reason)};
	const char *p = a->text + a->key_len + 1;

	memset(e, 0, sizeof(*e));
	memcpy(e->key, a->text, a->key_len);
	e->first_seen = a->first_seen;
	e->last_seen = a->last_seen;
	e->expires = a->expires;
	e->hits = a->hits;
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		size_t n = strlen(p);

		memcpy(texts[i], p, n < caps[i] ? n : caps[i] - 1);
		p += n + 1;
	}
}

redis_view_answer redis_view_recall(redis_view *v, const redis_view_token *t, const char *key,
                                    store_entry *out, uint64_t *gen)
{
	size_t len = strlen(key);
	uint64_t hash = keyfilter_hash(key, len);
	size_t i = answer_index(hash);
	const answer_slot *a = &v->answers_table[i];
	redis_view_answer r = REDIS_VIEW_UNKNOWN;

	pthread_mutex_lock(answer_lock(v, i));
	*gen = *answer_gen(v, i);
	if (a->hash == hash && a->state == t->state && a->key_len == len && memcmp(a->text, key, len) == 0) {
		r = a->entry_len ? REDIS_VIEW_FOUND : REDIS_VIEW_NONE;
		if (r == REDIS_VIEW_FOUND)
			unpack_entry(a, out);
	}
	pthread_mutex_unlock(answer_lock(v, i));
	return r;
}

void redis_view_remember(redis_view *v, const redis_view_token *t, const char *key, const store_entry *e,
                         uint64_t gen)
{
	size_t len = strlen(key), packed = 0;
	uint64_t hash = keyfilter_hash(key, len);
	size_t i = answer_index(hash);
	answer_slot *a = &v->answers_table[i];
	char texts[ANSWER_TEXT];

	if (len + 1 > ANSWER_TEXT || (e && !(packed = pack_entry(e, texts, ANSWER_TEXT - len - 1))))
		return;
	pthread_mutex_lock(answer_lock(v, i));
	/* An add of the key since gen was read may have been for a write after the trip's read. */
	if (*answer_gen(v, i) == gen && atomic_load(&v->state) == t->state) {
		a->hash = hash;
		a->state = t->state;
		a->key_len = (uint16_t)len;
		a->entry_len = (uint16_t)packed;
		memcpy(a->text, key, len + 1);
		memcpy(a->text + len + 1, texts, packed);
		if (e) {
			a->first_seen = e->first_seen;
			a->last_seen = e->last_seen;
			a->expires = e->expires;
			a->hits = e->hits;
		}
	}
	pthread_mutex_unlock(answer_lock(v, i));
}

void redis_view_answered(redis_view *v)
{
	atomic_fetch_add_explicit(&v->answers, 1, memory_order_relaxed);
}

uint64_t redis_view_answers(const redis_view *v)
{
	return atomic_load_explicit(&v->answers, memory_order_relaxed);
}
