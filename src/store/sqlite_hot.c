/* sqlite_hot: the SQLite store's hot buckets and sets in memory (see sqlite_hot.h). */
#include "store/sqlite_hot.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "store/store.h"

/* Buckets of the hash table a clean entry is looked for in, at most, when the table is full. */
#define EVICT_SCAN 64
/*
 * The longest chain a new entry joins: the hash is not keyed, and keys
 * (recipients, senders) are the attacker's; a crafted collision costs a
 * bounded walk, and the key past it goes to the file.
 */
#define CHAIN_MAX 16
/* Slots of the forget counts (see struct sqlite_hot). */
#define GEN_SLOTS 4096
/* Shared: a known member this near its expiry in the store (s) is refreshed there, not behind. */
#define REFRESH_NEAR_S(window) ((window) / 4 < 60 ? (window) / 4 : 60)

typedef struct hot_member {
	char *name;
	int64_t expires; /* s */
	int64_t stored;  /* the expiry the file has (0: no row yet) */
	bool dirty;
} hot_member;

typedef struct hot_entry {
	struct hot_entry *next;          /* hash chain */
	struct hot_entry *dprev, *dnext; /* the list of entries with writes owed */
	bool dirty;
	uint64_t taken; /* the take that last handed out its writes (h->takes), 0 none */
	sqlite_hot_kind kind;
	uint64_t hash;
	char *ns; /* counters; NULL for sets */
	char *key;
	/* counters */
	int64_t tat;
	bool found;   /* a TAT was ever set */
	bool in_file; /* the file has a row */
	/*
	 * shared: charges owed as a delta (tat = max(tat, owe_from) + owe_add);
	 * stale: a bucket's TAT unknown, a set kept only for its owed refreshes
	 */
	int64_t owe_from, owe_add;
	/* shared: when the first charge owed was made (0: owed again after a failed write), its tau */
	int64_t owe_first, owe_tau;
	/* shared: a charge owed left half its burst tolerance or less, or the charges owed reach half of it
	 */
	bool owe_near;
	bool stale;
	/* sets */
	hot_member *m;
	size_t n, cap;
	/* records: found says value and expires_ms are the live record's */
	char *value;
	int64_t expires_ms;
} hot_entry;

struct sqlite_hot {
	pthread_mutex_t lock;
	hot_entry **bucket;
	size_t nbuckets; /* a power of two */
	size_t n, max, hand;
	hot_entry *dirty;
	/*
	 * A change count, and for each slot of keys (by hash) the count at
	 * its last forget: a load read since count g is kept unless its
	 * slot, every entry (all_gen) or, for a bucket owing charges, a take
	 * (take_gen) changed after g. Per slot, so that a busy store's
	 * invalidations of other keys do not refuse every load.
	 */
	uint64_t generation;
	uint64_t slot_gen[GEN_SLOTS];
	uint64_t all_gen, take_gen;
	/* Takes so far; the last one's writes are not in the file until sqlite_hot_written. */
	uint64_t takes;
	bool writing;
	uint64_t pending; /* members added and not taken */
	size_t members;   /* of every set, against SQLITE_HOT_MAX_MEMBERS */
	bool shared;      /* sqlite_hot_new_shared */
};

static uint64_t entry_hash(sqlite_hot_kind kind, const char *ns, const char *key)
{
	uint64_t h = hash_fnv1a(HASH_FNV1A_INIT,
	                        kind == SQLITE_HOT_COUNTER ? "c"
	                        : kind == SQLITE_HOT_SET   ? "s"
	                                                   : "k",
	                        1);

	if (ns)
		h = hash_fnv1a(h, ns, strlen(ns) + 1);
	return hash_fnv1a(h, key, strlen(key));
}

sqlite_hot *sqlite_hot_new(size_t max_entries)
{
	sqlite_hot *h = calloc(1, sizeof(*h));
	size_t nb = 16;

	if (!h)
		return NULL;
	while (nb < max_entries)
		nb <<= 1;
	h->bucket = calloc(nb, sizeof(*h->bucket));
	if (!h->bucket) {
		free(h);
		return NULL;
	}
	h->nbuckets = nb;
	h->max = max_entries ? max_entries : 1;
	pthread_mutex_init(&h->lock, NULL);
	return h;
}

static void entry_free(hot_entry *e)
{
	for (size_t i = 0; i < e->n; i++)
		free(e->m[i].name);
	free(e->m);
	free(e->value);
	free(e->ns);
	free(e->key);
	free(e);
}

sqlite_hot *sqlite_hot_new_shared(size_t max_entries)
{
	sqlite_hot *h = sqlite_hot_new(max_entries);

	if (h)
		h->shared = true;
	return h;
}

void sqlite_hot_free(sqlite_hot *h)
{
	if (!h)
		return;
	for (size_t i = 0; i < h->nbuckets; i++)
		for (hot_entry *e = h->bucket[i], *next; e; e = next) {
			next = e->next;
			entry_free(e);
		}
	free(h->bucket);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

uint64_t sqlite_hot_generation(sqlite_hot *h)
{
	uint64_t g;

	pthread_mutex_lock(&h->lock);
	g = h->generation;
	pthread_mutex_unlock(&h->lock);
	return g;
}

/*
 * Under the lock: may a load of the key of hash, read since generation, be
 * kept? A shared bucket's (writes_too) not while a take's writes are on
 * their way nor when they landed since: the read may have missed them,
 * and the store does not tell this process of its own writes.
 */
static bool load_ok(const sqlite_hot *h, uint64_t hash, uint64_t generation, bool writes_too)
{
	return h->all_gen <= generation && h->slot_gen[hash % GEN_SLOTS] <= generation &&
	       (!writes_too || (!h->writing && h->take_gen <= generation));
}

/* Under the lock: the key of hash was forgotten (or invalidated). */
static void forgot(sqlite_hot *h, uint64_t hash)
{
	h->slot_gen[hash % GEN_SLOTS] = ++h->generation;
}

static bool same_name(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static hot_entry *find(sqlite_hot *h, sqlite_hot_kind kind, const char *ns, const char *key, uint64_t hash)
{
	for (hot_entry *e = h->bucket[hash & (h->nbuckets - 1)]; e; e = e->next)
		if (e->hash == hash && e->kind == kind && same_name(e->ns, ns) && strcmp(e->key, key) == 0)
			return e;
	return NULL;
}

static void mark_dirty(sqlite_hot *h, hot_entry *e)
{
	if (e->dirty)
		return;
	e->dirty = true;
	e->dprev = NULL;
	e->dnext = h->dirty;
	if (h->dirty)
		h->dirty->dprev = e;
	h->dirty = e;
}

static void unlist_dirty(sqlite_hot *h, hot_entry *e)
{
	if (!e->dirty)
		return;
	if (e->dprev)
		e->dprev->dnext = e->dnext;
	else
		h->dirty = e->dnext;
	if (e->dnext)
		e->dnext->dprev = e->dprev;
	e->dirty = false;
	e->dprev = e->dnext = NULL;
}

/* Unlink e from the table (it must be there) and free it. */
static void remove_entry(sqlite_hot *h, hot_entry *e)
{
	hot_entry **p = &h->bucket[e->hash & (h->nbuckets - 1)];

	while (*p != e)
		p = &(*p)->next;
	*p = e->next;
	unlist_dirty(h, e);
	for (size_t i = 0; i < e->n; i++)
		if (e->m[i].dirty && e->m[i].stored == 0 && h->pending > 0)
			h->pending--;
	h->members -= e->n;
	h->n--;
	entry_free(e);
}

/* Room for one more entry: drops a clean one when full. false: every entry nearby owes a write. */
static bool make_room(sqlite_hot *h)
{
	if (h->n < h->max)
		return true;
	for (size_t i = 0; i < EVICT_SCAN; i++) {
		size_t b = (h->hand + i) & (h->nbuckets - 1);

		for (hot_entry *e = h->bucket[b]; e; e = e->next)
			if (!e->dirty && !(h->writing && e->taken == h->takes)) {
				h->hand = b + 1;
				remove_entry(h, e);
				return true;
			}
	}
	h->hand += EVICT_SCAN;
	return false;
}

static hot_entry *insert(sqlite_hot *h, sqlite_hot_kind kind, const char *ns, const char *key, uint64_t hash)
{
	hot_entry *e;
	size_t b = hash & (h->nbuckets - 1), chain = 0;

	for (e = h->bucket[b]; e; e = e->next)
		chain++;
	if (chain >= CHAIN_MAX || !make_room(h) || !(e = calloc(1, sizeof(*e))))
		return NULL;
	e->kind = kind;
	e->hash = hash;
	e->key = strdup(key);
	e->ns = ns ? strdup(ns) : NULL;
	if (!e->key || (ns && !e->ns)) {
		entry_free(e);
		return NULL;
	}
	e->next = h->bucket[b];
	h->bucket[b] = e;
	h->n++;
	return e;
}

/* --- buckets ---------------------------------------------------------------- */

void sqlite_hot_gcra(query *q, bool found, int64_t stored, int64_t *next)
{
	int64_t now = q->u.counter.now_ms, t = q->u.counter.emission_ms, tat = now;
	int64_t tau = (int64_t)q->u.counter.burst * t;

	if (found && stored > now)
		tat = stored;
	*next = tat + (int64_t)q->u.counter.cost * t;
	q->u.counter.allowed = *next - now <= tau || (q->u.counter.debt && q->u.counter.cost > 0);
	if (!q->u.counter.allowed) {
		q->u.counter.retry_after_ms = *next - tau - now;
		q->u.counter.remaining = tat - now < tau ? (uint64_t)((tau - (tat - now)) / t) : 0;
		return;
	}
	/* In debt: no room until the TAT is back within tau. */
	q->u.counter.remaining = *next - now <= tau ? (uint64_t)((tau - (*next - now)) / t) : 0;
}

/*
 * Charges as functions of the TAT, x -> max(x, from) + add (a charge of
 * add at time from, GCRA's step): first (from0, add0), then (from1,
 * add1), is one such function again. From 0 and add 0 charge nothing
 * (TATs are positive).
 */
static void compose(int64_t from0, int64_t add0, int64_t *from, int64_t *add)
{
	*from = from0 > *from - add0 ? from0 : *from - add0;
	*add += add0;
}

/* Shared: a charge of add at now, owed after what the bucket owes already. */
static void owe(hot_entry *e, int64_t now, int64_t add)
{
	int64_t from = now, sum = add;

	if (e->owe_add == 0)
		e->owe_first = now;
	compose(e->owe_from, e->owe_add, &from, &sum);
	e->owe_from = from;
	e->owe_add = sum;
}

sqlite_hot_rc sqlite_hot_counter(sqlite_hot *h, query *q)
{
	uint64_t hash = entry_hash(SQLITE_HOT_COUNTER, q->u.counter.ns, q->u.counter.key);
	hot_entry *e;
	int64_t next;

	pthread_mutex_lock(&h->lock);
	e = find(h, SQLITE_HOT_COUNTER, q->u.counter.ns, q->u.counter.key, hash);
	if (e && e->stale)
		e = NULL;
	if (e) {
		sqlite_hot_gcra(q, e->found, e->tat, &next);
		if (q->u.counter.allowed && q->u.counter.cost > 0) {
			e->tat = next;
			e->found = true;
			if (h->shared) {
				owe(e, q->u.counter.now_ms,
				    (int64_t)q->u.counter.cost * q->u.counter.emission_ms);
				e->owe_tau = (int64_t)q->u.counter.burst * q->u.counter.emission_ms;
				/*
				 * Held back is what it owes, not its backlog: charges
				 * drained meanwhile are still added on top of another
				 * host's TAT (owe_from), so they count too.
				 */
				e->owe_near = e->owe_near || next - q->u.counter.now_ms >= e->owe_tau / 2 ||
				              e->owe_add >= e->owe_tau / 2;
			}
			mark_dirty(h, e);
		}
	}
	pthread_mutex_unlock(&h->lock);
	return e ? SQLITE_HOT_DONE : SQLITE_HOT_MISS;
}

bool sqlite_hot_counter_load(sqlite_hot *h, const char *ns, const char *key, bool found, int64_t tat,
                             uint64_t generation)
{
	uint64_t hash = entry_hash(SQLITE_HOT_COUNTER, ns, key);
	hot_entry *e;
	bool ok = true;

	pthread_mutex_lock(&h->lock);
	e = find(h, SQLITE_HOT_COUNTER, ns, key, hash);
	if (e && e->stale && load_ok(h, hash, generation, true)) {
		/* What the store has, and on top what this process still owes it. */
		e->tat = e->owe_add && (!found || e->owe_from > tat) ? e->owe_from : found ? tat : 0;
		e->tat += e->owe_add;
		e->found = found || e->owe_add > 0;
		e->stale = false;
	} else if (!e && load_ok(h, hash, generation, h->shared)) {
		if ((e = insert(h, SQLITE_HOT_COUNTER, ns, key, hash)) != NULL) {
			e->found = e->in_file = found;
			e->tat = tat;
		} else {
			ok = false;
		}
	}
	pthread_mutex_unlock(&h->lock);
	return ok;
}

/* --- sets ------------------------------------------------------------------- */

/* Drop the members expired at now (their rows, if any, go with the file's purge). */
static void drop_expired(sqlite_hot *h, hot_entry *e, int64_t now)
{
	for (size_t i = 0; i < e->n;) {
		if (e->m[i].expires > now) {
			i++;
			continue;
		}
		if (e->m[i].dirty && e->m[i].stored == 0 && h->pending > 0)
			h->pending--;
		free(e->m[i].name);
		e->m[i] = e->m[--e->n];
		h->members--;
	}
}

static hot_member *member_of(hot_entry *e, const char *member)
{
	for (size_t i = 0; i < e->n; i++)
		if (strcmp(e->m[i].name, member) == 0)
			return &e->m[i];
	return NULL;
}

/* NULL: out of memory, or the sets hold SQLITE_HOT_MAX_MEMBERS already. */
static hot_member *member_add(sqlite_hot *h, hot_entry *e, const char *member)
{
	if (h->members >= SQLITE_HOT_MAX_MEMBERS)
		return NULL;
	if (e->n == e->cap) {
		size_t cap = e->cap ? 2 * e->cap : 4;
		hot_member *m = realloc(e->m, cap * sizeof(*m));

		if (!m)
			return NULL;
		e->m = m;
		e->cap = cap;
	}
	e->m[e->n] = (hot_member){.name = strdup(member)};
	if (!e->m[e->n].name)
		return NULL;
	h->members++;
	return &e->m[e->n++];
}

/* Under the lock, e held: the add or peek of a. */
static sqlite_hot_rc distinct_step(sqlite_hot *h, hot_entry *e, sqlite_hot_distinct *a)
{
	hot_member *m;
	int64_t until = a->now + a->window;

	drop_expired(h, e, a->now);
	m = member_of(e, a->member);
	if (a->peek) {
		a->count = e->n;
		a->present = m != NULL;
		return SQLITE_HOT_DONE;
	}
	a->count = m ? e->n : e->n + 1;
	if (!m && h->shared)
		return SQLITE_HOT_FULL; /* a new member: the store's atomic add decides, hosts together */
	/*
	 * Shared, a known member about to expire in the store: refreshed by
	 * the store's add now. Written behind, it could come after an add
	 * (another host's, this one's next new member) purged it by the
	 * store's clock, and a refresh never re-adds a member (the set may
	 * have been reset meanwhile): the network, used within the window,
	 * would count as new.
	 */
	if (m && h->shared && m->stored - a->now < REFRESH_NEAR_S(a->window))
		return SQLITE_HOT_FULL;
	if (!m && a->limit && e->n >= a->limit)
		return SQLITE_HOT_DONE;
	if (!m && !a->room)
		return SQLITE_HOT_FULL;
	if (!m) {
		if (!(m = member_add(h, e, a->member)))
			return SQLITE_HOT_FULL;
		h->pending++;
	}
	if (until > m->expires)
		m->expires = until;
	/* The file may lag by the slack (the member may expire that much early after a restart). */
	if (m->stored == 0 || m->expires - m->stored > STORE_DISTINCT_SLACK(a->window)) {
		m->dirty = true;
		mark_dirty(h, e);
	}
	return SQLITE_HOT_DONE;
}

sqlite_hot_rc sqlite_hot_distinct_run(sqlite_hot *h, sqlite_hot_distinct *a)
{
	uint64_t hash = entry_hash(SQLITE_HOT_SET, NULL, a->set);
	hot_entry *e;
	sqlite_hot_rc rc = SQLITE_HOT_MISS;

	pthread_mutex_lock(&h->lock);
	if ((e = find(h, SQLITE_HOT_SET, NULL, a->set, hash)) != NULL && !e->stale)
		rc = distinct_step(h, e, a);
	pthread_mutex_unlock(&h->lock);
	return rc;
}

bool sqlite_hot_set_load(sqlite_hot *h, const char *set, const sqlite_hot_member *m, size_t n,
                         uint64_t generation)
{
	uint64_t hash = entry_hash(SQLITE_HOT_SET, NULL, set);
	hot_entry *e;
	bool ok = true;

	pthread_mutex_lock(&h->lock);
	e = find(h, SQLITE_HOT_SET, NULL, set, hash);
	/* A set kept for its refreshes: replaced once they are written and the read came after. */
	if (e && e->stale && !e->dirty && load_ok(h, hash, generation, true)) {
		remove_entry(h, e);
		e = NULL;
	}
	if (!e && load_ok(h, hash, generation, false)) {
		if ((e = insert(h, SQLITE_HOT_SET, NULL, set, hash)) != NULL) {
			for (size_t i = 0; i < n && ok; i++) {
				hot_member *x = member_add(h, e, m[i].member);

				if (x)
					x->expires = x->stored = m[i].expires;
				ok = x != NULL;
			}
			if (!ok)
				remove_entry(h, e);
		} else {
			ok = false;
		}
	}
	pthread_mutex_unlock(&h->lock);
	return ok;
}

/* --- records ---------------------------------------------------------------- */

sqlite_hot_rc sqlite_hot_kv_get(sqlite_hot *h, query *q)
{
	uint64_t hash = entry_hash(SQLITE_HOT_KV, q->u.kv.ns, q->u.kv.key);
	hot_entry *e;

	pthread_mutex_lock(&h->lock);
	e = find(h, SQLITE_HOT_KV, q->u.kv.ns, q->u.kv.key, hash);
	if (e && e->found && e->expires_ms > q->u.kv.now_ms) {
		size_t len = strlen(e->value);

		if (len > QUERY_VALUE_MAX)
			len = QUERY_VALUE_MAX;
		memcpy(q->u.kv.old, e->value, len);
		q->u.kv.old[len] = '\0';
		q->u.kv.found = true;
		q->u.kv.expires_ms = e->expires_ms;
	}
	pthread_mutex_unlock(&h->lock);
	return e ? SQLITE_HOT_DONE : SQLITE_HOT_MISS;
}

bool sqlite_hot_kv_load(sqlite_hot *h, const char *ns, const char *key, bool found, const char *value,
                        int64_t expires_ms, uint64_t generation)
{
	uint64_t hash = entry_hash(SQLITE_HOT_KV, ns, key);
	hot_entry *e;
	bool ok = true;

	pthread_mutex_lock(&h->lock);
	if (load_ok(h, hash, generation, false) && !find(h, SQLITE_HOT_KV, ns, key, hash)) {
		if ((e = insert(h, SQLITE_HOT_KV, ns, key, hash)) != NULL &&
		    (!found || (e->value = strdup(value)))) {
			e->found = found;
			e->expires_ms = expires_ms;
		} else {
			if (e)
				remove_entry(h, e);
			ok = false;
		}
	}
	pthread_mutex_unlock(&h->lock);
	return ok;
}

/* --- resets and writing behind ----------------------------------------------- */

/*
 * Under the lock: e is in doubt. A bucket owing charges keeps them
 * (keep_owed), and one whose charges are being written too (a failed
 * write owes them again: sqlite_hot_retake); so does a set its refreshes
 * (lost, a network used within the window would expire in the store at
 * its old time and count as new; written after any other write they are
 * safe: the store refreshes only a member it still has). Everything
 * else goes.
 */
static void invalidate(sqlite_hot *h, hot_entry *e, bool keep_owed)
{
	bool being_written = h->writing && e->taken == h->takes;

	if (keep_owed && h->shared &&
	    ((e->kind == SQLITE_HOT_COUNTER && (e->owe_add > 0 || being_written)) ||
	     (e->kind == SQLITE_HOT_SET && (e->dirty || being_written))))
		e->stale = true;
	else
		remove_entry(h, e);
}

/* The entry (kind, ns, key) forgotten or invalidated, and loads of it read before refused. */
static void drop_key(sqlite_hot *h, sqlite_hot_kind kind, const char *ns, const char *key, bool keep_owed)
{
	uint64_t hash = entry_hash(kind, kind == SQLITE_HOT_SET ? NULL : ns, key);
	hot_entry *e;

	pthread_mutex_lock(&h->lock);
	if ((e = find(h, kind, kind == SQLITE_HOT_SET ? NULL : ns, key, hash)) != NULL)
		invalidate(h, e, keep_owed);
	forgot(h, hash);
	pthread_mutex_unlock(&h->lock);
}

void sqlite_hot_forget(sqlite_hot *h, sqlite_hot_kind kind, const char *ns, const char *key)
{
	drop_key(h, kind, ns, key, false);
}

void sqlite_hot_invalidate(sqlite_hot *h, sqlite_hot_kind kind, const char *ns, const char *key)
{
	drop_key(h, kind, ns, key, true);
}

void sqlite_hot_invalidate_all(sqlite_hot *h)
{
	pthread_mutex_lock(&h->lock);
	for (size_t i = 0; i < h->nbuckets; i++)
		for (hot_entry *e = h->bucket[i], *next; e; e = next) {
			next = e->next;
			invalidate(h, e, true);
		}
	h->all_gen = ++h->generation;
	pthread_mutex_unlock(&h->lock);
}

bool sqlite_hot_owes(sqlite_hot *h)
{
	bool owes;

	pthread_mutex_lock(&h->lock);
	owes = h->dirty != NULL;
	pthread_mutex_unlock(&h->lock);
	return owes;
}

uint64_t sqlite_hot_pending_members(sqlite_hot *h)
{
	uint64_t n;

	pthread_mutex_lock(&h->lock);
	n = h->pending;
	pthread_mutex_unlock(&h->lock);
	return n;
}

size_t sqlite_hot_entries(sqlite_hot *h)
{
	size_t n;

	pthread_mutex_lock(&h->lock);
	n = h->n;
	pthread_mutex_unlock(&h->lock);
	return n;
}

static sqlite_hot_write *batch_add(sqlite_hot_batch *b, sqlite_hot_kind kind, const char *ns, const char *key,
                                   const char *member, int64_t value, bool fresh)
{
	sqlite_hot_write *w;

	if (b->n == b->cap) {
		size_t cap = b->cap ? 2 * b->cap : 64;
		sqlite_hot_write *v = realloc(b->v, cap * sizeof(*v));

		if (!v)
			return NULL;
		b->v = v;
		b->cap = cap;
	}
	w = &b->v[b->n];
	*w = (sqlite_hot_write){.kind = kind, .value = value, .fresh = fresh};
	w->key = strdup(key);
	w->ns = ns ? strdup(ns) : NULL;
	w->member = member ? strdup(member) : NULL;
	if (!w->key || (ns && !w->ns) || (member && !w->member)) {
		free(w->key);
		free(w->ns);
		free(w->member);
		return NULL;
	}
	b->n++;
	return w;
}

bool sqlite_hot_batch_note(sqlite_hot_batch *b, sqlite_hot_kind kind, const char *ns, const char *key)
{
	return batch_add(b, kind, kind == SQLITE_HOT_SET ? NULL : ns, key, NULL, 0, false) != NULL;
}

/*
 * e's writes into b; false when out of memory (e then still owes what did
 * not fit). A bucket of this process's own (not shared) whose TAT is at or
 * before now_ms is empty, and the file's row reads empty too (its TAT is an
 * earlier one of this bucket's, or there is none): nothing to write (a fast
 * rule's buckets, empty again within ms of each charge, written no more).
 */
static bool take_entry(sqlite_hot *h, hot_entry *e, sqlite_hot_batch *b, int64_t now_ms)
{
	if (e->kind == SQLITE_HOT_COUNTER && !h->shared && e->tat <= now_ms)
		return true;
	e->taken = h->takes;
	if (e->kind == SQLITE_HOT_COUNTER && h->shared) {
		sqlite_hot_write *w;

		if (e->owe_add == 0)
			return true;
		if (!(w = batch_add(b, SQLITE_HOT_COUNTER, e->ns, e->key, NULL, e->owe_from, false)))
			return false;
		w->add = e->owe_add;
		e->owe_from = e->owe_add = e->owe_first = 0;
		e->owe_near = false;
		return true;
	}
	if (e->kind == SQLITE_HOT_COUNTER) {
		if (!batch_add(b, SQLITE_HOT_COUNTER, e->ns, e->key, NULL, e->tat, !e->in_file))
			return false;
		e->in_file = true;
		return true;
	}
	for (size_t i = 0; i < e->n; i++) {
		hot_member *m = &e->m[i];

		if (!m->dirty)
			continue;
		if (!batch_add(b, SQLITE_HOT_SET, NULL, e->key, m->name, m->expires, m->stored == 0))
			return false;
		if (m->stored == 0 && h->pending > 0)
			h->pending--;
		m->stored = m->expires;
		m->dirty = false;
	}
	return true;
}

/*
 * Shared: is e's write due at now_ms, a tick of sqlite_hot_take_due? A
 * bucket whose copy's TAT is less than half its burst tolerance ahead,
 * at each charge owed and at the tick, and whose charges owed add up to
 * less than half of it (they drain here, not on top of another host's
 * TAT), may hold its charges up to
 * wait_ms from the first (a bucket of burst 2 never): then no one host's
 * unwritten charges are half the burst, so two hosts' together are not
 * the whole of it, and one that crosses the half is written at the next
 * tick. A bucket read again (stale: another host writes it), owed again
 * after a failed write, and anything else are due at once.
 */
static bool take_due(const sqlite_hot *h, const hot_entry *e, int64_t now_ms, int64_t wait_ms)
{
	if (!h->shared || e->kind != SQLITE_HOT_COUNTER || e->stale || e->owe_add == 0 || e->owe_first == 0)
		return true;
	if (e->owe_near || now_ms - e->owe_first >= wait_ms)
		return true;
	return e->tat - now_ms >= e->owe_tau / 2;
}

static int take_all(sqlite_hot *h, sqlite_hot_batch *b, int64_t now_ms, int64_t wait_ms)
{
	int rc = 0;

	pthread_mutex_lock(&h->lock);
	h->takes++;
	h->writing = true;
	/* Shared: a load read before this take's writes reach the store would owe them twice. */
	if (h->shared)
		h->take_gen = ++h->generation;
	for (hot_entry *e = h->dirty, *next; e; e = next) {
		next = e->dnext;
		if (wait_ms > 0 && !take_due(h, e, now_ms, wait_ms))
			continue;
		if (!take_entry(h, e, b, now_ms)) {
			rc = -1;
			break;
		}
		unlist_dirty(h, e);
	}
	pthread_mutex_unlock(&h->lock);
	return rc;
}

int sqlite_hot_take(sqlite_hot *h, sqlite_hot_batch *b)
{
	return take_all(h, b, INT64_MIN, 0);
}

int sqlite_hot_take_at(sqlite_hot *h, sqlite_hot_batch *b, int64_t now_ms)
{
	return take_all(h, b, now_ms, 0);
}

int sqlite_hot_take_due(sqlite_hot *h, sqlite_hot_batch *b, int64_t now_ms, int64_t wait_ms)
{
	return take_all(h, b, now_ms, wait_ms > 0 ? wait_ms : 0);
}

void sqlite_hot_written(sqlite_hot *h)
{
	pthread_mutex_lock(&h->lock);
	h->writing = false;
	if (h->shared)
		h->take_gen = ++h->generation; /* the writes landed: a read before missed them */
	pthread_mutex_unlock(&h->lock);
}

void sqlite_hot_retake(sqlite_hot *h, const sqlite_hot_batch *b)
{
	pthread_mutex_lock(&h->lock);
	for (size_t i = 0; i < b->n; i++) {
		const sqlite_hot_write *w = &b->v[i];
		hot_entry *e = find(h, w->kind, w->ns, w->key, entry_hash(w->kind, w->ns, w->key));
		hot_member *m;

		if (!e)
			continue;
		if (w->kind == SQLITE_HOT_COUNTER && h->shared) {
			int64_t from = e->owe_from, add = e->owe_add;

			/* Owed before what the entry owes since. */
			compose(w->value, w->add, &from, &add);
			if (e->owe_add == 0)
				from = w->value;
			e->owe_from = from;
			e->owe_first = 0; /* due at the next take */
			e->owe_add = add;
		} else if (w->kind == SQLITE_HOT_COUNTER) {
			e->in_file = e->in_file && !w->fresh;
		} else if ((m = member_of(e, w->member)) != NULL) {
			if (w->fresh && m->stored != 0) {
				m->stored = 0;
				h->pending++;
			}
			m->dirty = true;
		} else {
			continue;
		}
		mark_dirty(h, e);
	}
	pthread_mutex_unlock(&h->lock);
}

void sqlite_hot_batch_clear(sqlite_hot_batch *b)
{
	for (size_t i = 0; i < b->n; i++) {
		free(b->v[i].ns);
		free(b->v[i].key);
		free(b->v[i].member);
	}
	free(b->v);
	*b = (sqlite_hot_batch){0};
}
