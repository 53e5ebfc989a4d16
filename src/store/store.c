/*
 * store: the public face of the blocklist store. Checks arguments once,
 * then dispatches to the backend chosen by store_config.backend through
 * its ops table (store_backend.h). Errors are kept per thread, so that
 * many threads can share one store and each read its own last error.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/key.h"
#include "core/netkeys.h"
#include "store/store.h"
#include "store/store_backend.h"

struct store {
	const store_ops *ops;
	store_backend_impl *impl;
};

static _Thread_local char last_error[512];

store_status store_set_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	return STORE_ERROR;
}

const char *store_last_error(void)
{
	return last_error[0] ? last_error : "no error";
}

size_t store_field_len(const char *s, size_t cap)
{
	size_t len;

	if (!s || cap == 0)
		return 0;
	len = strnlen(s, cap);
	if (len < cap)
		return len;
	len = cap - 1;
	/* Do not split a multi-byte UTF-8 sequence: back up over continuation bytes. */
	while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
		len--;
	return len;
}

void store_field_copy(char *dst, size_t cap, const char *src, size_t len)
{
	if (cap == 0)
		return;
	if (!src)
		len = 0;
	if (len >= cap)
		len = store_field_len(src, cap);
	if (len)
		memcpy(dst, src, len);
	dst[len] = '\0';
}

const char *store_hit_reason(const store_hit *hit)
{
	return hit->reason && hit->reason[0] ? hit->reason : "trap";
}

/*
 * What each character may be in a network key "ADDRESS/LEN" before the
 * '/': one look-up per character, since a lookup classifies some 28 keys.
 * NK_ADDR is set for every character of an address, NK_COLON too for ':'.
 */
enum { NK_ADDR = 1, NK_COLON = 2 };

#define NK_HEX(c) [c] = NK_ADDR, [c - 'a' + 'A'] = NK_ADDR

static const unsigned char nk_class[256] = {
    ['0'] = NK_ADDR, ['1'] = NK_ADDR, ['2'] = NK_ADDR,
    ['3'] = NK_ADDR, ['4'] = NK_ADDR, ['5'] = NK_ADDR,
    ['6'] = NK_ADDR, ['7'] = NK_ADDR, ['8'] = NK_ADDR,
    ['9'] = NK_ADDR, NK_HEX('a'),     NK_HEX('b'),
    NK_HEX('c'),     NK_HEX('d'),     NK_HEX('e'),
    NK_HEX('f'),     ['.'] = NK_ADDR, [':'] = NK_ADDR | NK_COLON,
};

int store_net_key_len(const char *key, int *family)
{
	const unsigned char *p = (const unsigned char *)key;
	unsigned seen = 0;
	int len = 0, digits = 0;

	for (; nk_class[*p] & NK_ADDR; p++)
		seen |= nk_class[*p];
	*family = seen & NK_COLON ? 6 : 4;
	if (*p != '/' || p == (const unsigned char *)key) /* the end of the key too: no '/' */
		return -1;
	for (p++; *p >= '0' && *p <= '9' && digits < 4; p++, digits++)
		len = len * 10 + (*p - '0');
	if (*p != '\0' || digits == 0 || digits > 3 || len > (*family == 6 ? 128 : 32))
		return -1;
	return len;
}

static const store_ops *ops_for(store_backend backend)
{
	switch (backend) {
	case STORE_BACKEND_SQLITE:
		return &store_sqlite_ops;
	case STORE_BACKEND_REDIS:
		return &store_redis_ops;
	}
	return NULL;
}

store *store_open(const store_config *cfg, char *err, size_t errlen)
{
	const store_ops *ops = cfg ? ops_for(cfg->backend) : NULL;
	store *st;

	if (!ops) {
		snprintf(err, errlen, "store: unknown backend");
		return NULL;
	}
	st = calloc(1, sizeof(*st));
	if (!st) {
		snprintf(err, errlen, "store: out of memory");
		return NULL;
	}
	st->ops = ops;
	st->impl = ops->open(cfg, err, errlen);
	if (!st->impl) {
		free(st);
		return NULL;
	}
	return st;
}

void store_free(store *st)
{
	if (!st)
		return;
	st->ops->free(st->impl);
	free(st);
}

const char *store_backend_name(const store *st)
{
	return st ? st->ops->name : "none";
}

/* A key the backends can store: present, not empty, shorter than STORE_KEY_MAX. */
static bool key_ok(const char *key)
{
	if (!key || !key[0]) {
		store_set_error("empty blocklist key");
		return false;
	}
	if (strnlen(key, STORE_KEY_MAX) >= STORE_KEY_MAX) {
		store_set_error("blocklist key longer than %d bytes", STORE_KEY_MAX - 1);
		return false;
	}
	return true;
}

static bool keys_ok(const char *const *keys, size_t nkeys, size_t max)
{
	if (nkeys > max) {
		store_set_error("%zu keys in one call, at most %zu", nkeys, max);
		return false;
	}
	if (nkeys && !keys) {
		store_set_error("no keys given");
		return false;
	}
	for (size_t i = 0; i < nkeys; i++)
		if (!key_ok(keys[i]))
			return false;
	return true;
}

store_status store_lookup(store *st, const char *const *keys, size_t nkeys, int64_t now, store_entry *found)
{
	store_entry scratch;

	if (!keys_ok(keys, nkeys, STORE_LOOKUP_MAX))
		return STORE_ERROR;
	if (nkeys == 0)
		return STORE_NOTFOUND;
	return st->ops->lookup(st->impl, keys, nkeys, now, found ? found : &scratch);
}

/* Builds with assertions check the caller's lengths against the parse they replace. */
static bool netlens_ok(const char *const *keys, const int16_t *netlens, size_t nkeys)
{
#ifndef NDEBUG
	for (size_t i = 0; i < nkeys; i++) {
		int family, len = store_net_key_len(keys[i], &family);

		if (netlens[i] != (len < 0 ? STORE_NETLEN_NONE : STORE_NETLEN(family, len))) {
			store_set_error("store_lookup_netlens: key %zu (%.64s) has network length %d, not %d",
			                i, keys[i], len < 0 ? STORE_NETLEN_NONE : STORE_NETLEN(family, len),
			                netlens[i]);
			return false;
		}
	}
#else
	(void)keys, (void)netlens, (void)nkeys;
#endif
	return true;
}

store_status store_lookup_netlens(store *st, const char *const *keys, const int16_t *netlens, size_t nkeys,
                                  int64_t now, store_entry *found)
{
	store_entry scratch;

	if (!keys_ok(keys, nkeys, STORE_LOOKUP_MAX))
		return STORE_ERROR;
	if (nkeys && !netlens)
		return store_set_error("store_lookup_netlens: no lengths given");
	if (!netlens_ok(keys, netlens, nkeys))
		return STORE_ERROR;
	if (nkeys == 0)
		return STORE_NOTFOUND;
	if (!st->ops->lookup_netlens)
		return st->ops->lookup(st->impl, keys, nkeys, now, found ? found : &scratch);
	return st->ops->lookup_netlens(st->impl, keys, netlens, nkeys, now, found ? found : &scratch);
}

bool store_netlens(store *st, store_netmask *out)
{
	return st->ops->netlens && st->ops->netlens(st->impl, out);
}

bool store_filter_answers(store *st, uint64_t *answers)
{
	if (!st->ops->filter_answers)
		return false;
	*answers = st->ops->filter_answers(st->impl);
	return true;
}

store_status store_lookup_built(store *st, const char *const *keys, const int16_t *netlens, size_t nkeys,
                                const store_netmask *built, int64_t now, store_entry *found, bool *stale)
{
	store_entry scratch;

	*stale = false;
	if (!keys_ok(keys, nkeys, STORE_LOOKUP_MAX))
		return STORE_ERROR;
	if (nkeys && !netlens)
		return store_set_error("store_lookup_built: no lengths given");
	if (!built)
		return store_set_error("store_lookup_built: no built lengths given");
	if (!netlens_ok(keys, netlens, nkeys))
		return STORE_ERROR;
	if (!st->ops->lookup_built) {
		/* A backend that cannot tell the lengths: only a full key list is safe. */
		*stale = true;
		return STORE_NOTFOUND;
	}
	return st->ops->lookup_built(st->impl, keys, netlens, nkeys, built, now, found ? found : &scratch,
	                             stale);
}

store_status store_record(store *st, const char *const *keys, size_t nkeys, const store_hit *hit)
{
	return store_record_created(st, keys, nkeys, hit, NULL);
}

store_status store_record_created(store *st, const char *const *keys, size_t nkeys, const store_hit *hit,
                                  bool *created)
{
	if (!hit)
		return store_set_error("store_record: no hit given");
	if (hit->ttl <= 0)
		return store_set_error("store_record: ttl must be positive, not %lld", (long long)hit->ttl);
	if (!keys_ok(keys, nkeys, STORE_RECORD_MAX))
		return STORE_ERROR;
	if (nkeys == 0)
		return STORE_OK;
	if (created)
		memset(created, 0, nkeys * sizeof(*created));
	return st->ops->record(st->impl, keys, nkeys, hit, created);
}

/* A set or member name: present, not empty, shorter than STORE_KEY_MAX. */
static bool name_ok(const char *name, const char *what)
{
	if (!name || !name[0]) {
		store_set_error("store_distinct_add: empty %s", what);
		return false;
	}
	if (strnlen(name, STORE_KEY_MAX) >= STORE_KEY_MAX) {
		store_set_error("store_distinct_add: %s longer than %d bytes", what, STORE_KEY_MAX - 1);
		return false;
	}
	return true;
}

store_status store_distinct_add(store *st, const char *set, const char *member, int64_t now, int64_t window,
                                uint64_t limit, uint64_t *count)
{
	return store_distinct_add_capped(st, set, member, now, window, limit, 0, count, NULL);
}

store_status store_distinct_add_capped(store *st, const char *set, const char *member, int64_t now,
                                       int64_t window, uint64_t limit, uint64_t max_rows, uint64_t *count,
                                       bool *capped)
{
	uint64_t scratch = 0;
	bool scratch_capped = false;

	if (!name_ok(set, "set") || !name_ok(member, "member"))
		return STORE_ERROR;
	if (window <= 0 || now > INT64_MAX - window)
		return store_set_error(
		    "store_distinct_add: window must be positive and end before 2^63, not %lld",
		    (long long)window);
	return st->ops->distinct_add(st->impl, set, member, now, window, limit, max_rows,
	                             count ? count : &scratch, capped ? capped : &scratch_capped);
}

store_status store_distinct_peek(store *st, const char *set, const char *member, int64_t now, uint64_t *count,
                                 bool *present)
{
	uint64_t n = 0;
	bool here = false;

	if (!name_ok(set, "set") || !name_ok(member, "member"))
		return STORE_ERROR;
	store_status rc = st->ops->distinct_peek(st->impl, set, member, now, &n, &here);
	if (count)
		*count = n;
	if (present)
		*present = here;
	return rc;
}

store_status store_distinct_list(store *st, const char *set, int64_t now, store_distinct_visit_fn fn,
                                 void *ctx)
{
	if (!name_ok(set, "set") || !fn)
		return STORE_ERROR;
	return st->ops->distinct_list(st->impl, set, now, fn, ctx);
}

store_status store_distinct_clear(store *st, const char *set)
{
	if (!name_ok(set, "set"))
		return STORE_ERROR;
	return st->ops->distinct_clear(st->impl, set);
}

/* [a-z0-9_-]: a loop, not strspn (asked at every store query of a recipient; strspn's set costs more). */
static bool ns_char_ok(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* The length of ns when it is 1 to QUERY_NS_MAX - 1 bytes of [a-z0-9_-], else 0. */
static size_t ns_len(const char *ns)
{
	size_t n = 0;

	if (!ns)
		return 0;
	while (n < QUERY_NS_MAX && ns[n] && ns_char_ok(ns[n]))
		n++;
	return n < QUERY_NS_MAX && ns[n] == '\0' ? n : 0;
}

/* A namespace and key of store_kv and store_counter; the namespace goes into Redis key names. */
static bool ns_key_ok(const char *ns, const char *key, const char *what)
{
	if (ns_len(ns) == 0) {
		store_set_error("%s: namespace must be 1 to %d bytes of [a-z0-9_-]", what, QUERY_NS_MAX - 1);
		return false;
	}
	if (!key || !key[0] || strnlen(key, STORE_KEY_MAX) >= STORE_KEY_MAX) {
		store_set_error("%s: key must be 1 to %d bytes", what, STORE_KEY_MAX - 1);
		return false;
	}
	return true;
}

/* Clears the answer and checks the arguments of a QUERY_KV query. */
static store_status kv_ok(query *q)
{
	bool put = q->u.kv.op == QUERY_KV_PUT || q->u.kv.op == QUERY_KV_PUT_NEW;

	q->u.kv.found = false;
	q->u.kv.old[0] = '\0';
	q->u.kv.expires_ms = 0;
	if (!ns_key_ok(q->u.kv.ns, q->u.kv.key, "store_kv"))
		return STORE_ERROR;
	if (q->u.kv.op > QUERY_KV_DELETE)
		return store_set_error("store_kv: unknown op %d", (int)q->u.kv.op);
	if (put && (!q->u.kv.value || strnlen(q->u.kv.value, QUERY_VALUE_MAX + 1) > QUERY_VALUE_MAX))
		return store_set_error("store_kv: value must be at most %d bytes", QUERY_VALUE_MAX);
	/* A ttl of a century at most keeps now + ttl in range and within Redis's PX. */
	if (put && (q->u.kv.ttl_ms <= 0 || q->u.kv.ttl_ms > STORE_TTL_MS_MAX))
		return store_set_error("store_kv: ttl_ms must be 1 to %lld", (long long)STORE_TTL_MS_MAX);
	if (q->u.kv.now_ms < 0 || q->u.kv.now_ms > INT64_MAX / 2)
		return store_set_error("store_kv: now_ms out of range");
	return STORE_OK;
}

store_status store_kv(store *st, query *q)
{
	return kv_ok(q) == STORE_OK ? st->ops->kv(st->impl, q) : STORE_ERROR;
}

/* Clears the answer and checks the arguments of a QUERY_COUNTER query. */
static store_status counter_ok(query *q)
{
	q->u.counter.allowed = false;
	q->u.counter.retry_after_ms = 0;
	q->u.counter.remaining = 0;
	if (!ns_key_ok(q->u.counter.ns, q->u.counter.key, "store_counter"))
		return STORE_ERROR;
	/* Bounds that keep emission * (burst + cost) far from 2^53 (Lua's exact integers) and 2^63. */
	if (q->u.counter.emission_ms <= 0 || q->u.counter.emission_ms > STORE_TTL_MS_MAX ||
	    q->u.counter.burst < 1 || q->u.counter.burst > STORE_COUNTER_UNITS_MAX ||
	    q->u.counter.cost > STORE_COUNTER_UNITS_MAX ||
	    q->u.counter.burst + q->u.counter.cost > (uint64_t)(STORE_TTL_MS_MAX / q->u.counter.emission_ms))
		return store_set_error("store_counter: emission_ms, burst or cost out of range");
	if (q->u.counter.now_ms < 0 || q->u.counter.now_ms > INT64_MAX / 2)
		return store_set_error("store_counter: now_ms out of range");
	return STORE_OK;
}

store_status store_counter(store *st, query *q)
{
	return counter_ok(q) == STORE_OK ? st->ops->counter(st->impl, q) : STORE_ERROR;
}

store_status store_counter_delete(store *st, const char *ns, const char *key)
{
	if (!ns_key_ok(ns, key, "store_counter_delete"))
		return STORE_ERROR;
	return st->ops->counter_delete(st->impl, ns, key);
}

store_status store_write_behind(store *st)
{
	return st->ops->write_behind ? st->ops->write_behind(st->impl) : STORE_OK;
}

store_status store_sync(store *st)
{
	return st->ops->sync ? st->ops->sync(st->impl) : STORE_OK;
}

void store_decision_begin(store *st)
{
	if (st && st->ops->decision)
		st->ops->decision(st->impl, true);
}

void store_decision_end(store *st)
{
	if (st && st->ops->decision)
		st->ops->decision(st->impl, false);
}

uint64_t store_script_round_trips(store *st)
{
	return st->ops->script_trips ? st->ops->script_trips(st->impl) : 0;
}

void store_hot_clock_skew(store *st, int64_t ms)
{
	if (st->ops->hot_skew)
		st->ops->hot_skew(st->impl, ms);
}

store_status store_get(store *st, const char *key, store_entry *out)
{
	if (!key_ok(key))
		return STORE_ERROR;
	if (!out)
		return store_set_error("store_get: no entry to fill");
	return st->ops->get(st->impl, key, out);
}

store_status store_put(store *st, const store_entry *e)
{
	if (!e)
		return store_set_error("store_put: no entry given");
	if (strnlen(e->key, sizeof(e->key)) >= sizeof(e->key))
		return store_set_error("store_put: key is not terminated");
	if (!key_ok(e->key))
		return STORE_ERROR;
	return st->ops->put(st->impl, e);
}

/* A put_many source that checks each entry as store_put does. */
typedef struct checked_next {
	store_next_fn next;
	void *ctx;
} checked_next;

static int next_checked(store_entry *e, void *arg)
{
	checked_next *c = arg;
	int rc = c->next(e, c->ctx);

	if (rc < 0)
		store_set_error("store_put_many: the source of entries failed");
	else if (rc > 0 && !key_ok(e->key))
		return -1;
	return rc < 0 ? -1 : rc > 0;
}

store_status store_put_many(store *st, store_next_fn next, void *ctx, uint64_t *written)
{
	checked_next c = {next, ctx};
	uint64_t scratch = 0, *n = written ? written : &scratch;
	store_entry *e;
	store_status rc = STORE_OK;
	int more;

	*n = 0;
	if (!next)
		return store_set_error("store_put_many: no source of entries given");
	if (st->ops->put_many)
		return st->ops->put_many(st->impl, next_checked, &c, n);
	if (!(e = malloc(sizeof(*e))))
		return store_set_error("store_put_many: out of memory");
	while (rc == STORE_OK && (more = next_checked(e, &c)) != 0) {
		rc = more < 0 ? STORE_ERROR : st->ops->put(st->impl, e);
		*n += rc == STORE_OK;
	}
	free(e);
	return rc;
}

store_status store_remove(store *st, const char *key)
{
	if (!key_ok(key))
		return STORE_ERROR;
	return st->ops->remove(st->impl, key);
}

store_status store_purge(store *st, int64_t now, uint64_t *purged)
{
	uint64_t scratch = 0;

	return st->ops->purge(st->impl, now, purged ? purged : &scratch);
}

store_status store_foreach(store *st, int64_t now, store_visit_fn fn, void *ctx)
{
	if (!fn)
		return store_set_error("store_foreach: no visitor given");
	return st->ops->foreach (st->impl, now, fn, ctx);
}

_Static_assert(STORE_KEY_TYPES == KEY_TYPE_HELO + 1, "one count per key type of core/key.h");

static int count_one(const store_entry *e, void *ctx)
{
	uint64_t *counts = ctx;

	counts[key_type_of(e->key)]++;
	return 0;
}

store_status store_count_types(store *st, int64_t now, uint64_t counts[STORE_KEY_TYPES])
{
	memset(counts, 0, STORE_KEY_TYPES * sizeof(*counts));
	if (st->ops->count_types)
		return st->ops->count_types(st->impl, now, counts);
	return st->ops->foreach (st->impl, now, count_one, counts);
}

/* --- store_run: the queries of one stage of the checks ------------------- */

static bool all_built(const store_netmask *m)
{
	return (m->v4 & m->v6[0] & m->v6[1] & m->v6[2]) == UINT64_MAX;
}

/*
 * The client's networks only at the lengths the store holds (as far as it
 * can tell without I/O); again with every length when the state the
 * lookup read holds one more.
 */
static store_status run_lookup(store *st, query *q, int64_t now, store_entry *e)
{
	netkeys k;
	store_netmask built;
	bool stale = false;
	store_status rc;

	if (q->u.lookup.client && store_netlens(st, &built) && !all_built(&built)) {
		built = netkeys_with_fixed(&built, q);
		netkeys_build(&k, q, &built);
		rc = store_lookup_built(st, k.key, k.netlen, k.n, &built, now, e, &stale);
		if (!stale)
			return rc;
	}
	netkeys_build(&k, q, &netkeys_every);
	return store_lookup_netlens(st, k.key, k.netlen, k.n, now, e);
}

static query_status query_status_of(store_status rc)
{
	switch (rc) {
	case STORE_OK:
		return QUERY_OK;
	case STORE_NOTFOUND:
		return QUERY_NOTFOUND;
	case STORE_ERROR:
		break;
	}
	return QUERY_ERROR;
}

static bool same_lookup(const query *a, const query *b)
{
	return a->kind == QUERY_BLOCKLIST_LOOKUP && b->kind == QUERY_BLOCKLIST_LOOKUP &&
	       a->u.lookup.nkeys == b->u.lookup.nkeys && a->u.lookup.client == b->u.lookup.client &&
	       a->u.lookup.client_at == b->u.lookup.client_at &&
	       a->u.lookup.ipv4_prefix == b->u.lookup.ipv4_prefix &&
	       a->u.lookup.ipv6_prefix == b->u.lookup.ipv6_prefix &&
	       memcmp(a->u.lookup.keys, b->u.lookup.keys, a->u.lookup.nkeys * sizeof(a->u.lookup.keys[0])) ==
	           0;
}

static void run_one(store *st, query *q, int64_t now)
{
	store_entry e;

	switch (q->kind) {
	case QUERY_BLOCKLIST_LOOKUP:
		e.key[0] = e.trap[0] = '\0';
		e.hits = 0;
		q->status = query_status_of(run_lookup(st, q, now, &e));
		if (q->status == QUERY_OK) {
			snprintf(q->u.lookup.found.key, sizeof(q->u.lookup.found.key), "%s", e.key);
			snprintf(q->u.lookup.found.trap, sizeof(q->u.lookup.found.trap), "%s", e.trap);
			q->u.lookup.found.hits = e.hits;
		}
		return;
	case QUERY_BLOCKLIST_RECORD:
		q->status = query_status_of(store_record_created(st, q->u.record.keys, q->u.record.nkeys,
		                                                 &q->u.record.hit, q->u.record.created));
		return;
	case QUERY_DISTINCT_ADD:
		if (q->u.distinct.peek) {
			q->status = query_status_of(store_distinct_peek(
			    st, q->u.distinct.key, q->u.distinct.member,
			    q->u.distinct.store_clock ? STORE_NOW_SERVER : q->u.distinct.now,
			    &q->u.distinct.count, &q->u.distinct.present));
			return;
		}
		q->status = query_status_of(store_distinct_add_capped(
		    st, q->u.distinct.key, q->u.distinct.member,
		    q->u.distinct.store_clock ? STORE_NOW_SERVER : q->u.distinct.now, q->u.distinct.window,
		    q->u.distinct.limit, q->u.distinct.max_rows, &q->u.distinct.count,
		    &q->u.distinct.capped));
		return;
	case QUERY_KV:
		q->status = query_status_of(store_kv(st, q));
		return;
	case QUERY_COUNTER:
		q->status = query_status_of(store_counter(st, q));
		return;
	case QUERY_GREYLIST:
		q->status = query_status_of(store_greylist(st, q));
		return;
	}
	store_set_error("unknown query kind %d", (int)q->kind);
	q->status = QUERY_ERROR;
}

/*
 * Records, buckets and distinct sets: batched in one round trip where the
 * backend can (Redis: the relay and ratelimit peeks of a recipient go
 * together, and so do their writes).
 */
static bool batched(const query *q)
{
	return q->kind == QUERY_KV || q->kind == QUERY_COUNTER || q->kind == QUERY_DISTINCT_ADD;
}

/* Checks a batched distinct query as store_distinct_add_capped and store_distinct_peek do. */
static store_status distinct_ok(query *q)
{
	q->u.distinct.count = 0;
	q->u.distinct.present = q->u.distinct.capped = false;
	if (!name_ok(q->u.distinct.key, "set") || !name_ok(q->u.distinct.member, "member"))
		return STORE_ERROR;
	if (!q->u.distinct.peek &&
	    (q->u.distinct.window <= 0 || q->u.distinct.now > INT64_MAX - q->u.distinct.window))
		return store_set_error(
		    "store_distinct_add: window must be positive and end before 2^63, not %lld",
		    (long long)q->u.distinct.window);
	return STORE_OK;
}

static store_status batch_ok(query *q)
{
	return q->kind == QUERY_KV ? kv_ok(q) : q->kind == QUERY_COUNTER ? counter_ok(q) : distinct_ok(q);
}

/*
 * The batched queries of q[], checked, in one backend call (in place:
 * the backend reads an array, so the checked ones are copied together and
 * their answers copied back).
 */
static store_status run_batch(store *st, query *q, size_t nq)
{
	query *todo;
	size_t *from, n = 0;
	store_status rc;

	for (size_t i = 0; i < nq; i++)
		n += batched(&q[i]);
	if (n < 2 || !st->ops->batch) {
		for (size_t i = 0; i < nq; i++)
			if (batched(&q[i]))
				run_one(st, &q[i], 0);
		return STORE_OK;
	}
	/*
	 * Not calloc: every slot used is copied in below, and a query is 1.3 KB,
	 * so zeroing the lot cost more than the rest of a warm relay stage on
	 * Redis (docs/performance.md, "Where a relay row's CPU goes").
	 */
	todo = malloc(n * sizeof(*todo));
	from = malloc(n * sizeof(*from));
	if (!todo || !from) {
		free(todo);
		free(from);
		for (size_t i = 0; i < nq; i++)
			if (batched(&q[i]))
				q[i].status = QUERY_ERROR;
		return store_set_error("store_run: out of memory");
	}
	n = 0;
	for (size_t i = 0; i < nq; i++) {
		if (!batched(&q[i]))
			continue;
		if (batch_ok(&q[i]) != STORE_OK) {
			q[i].status = QUERY_ERROR;
			continue;
		}
		todo[n] = q[i];
		todo[n].status = QUERY_PENDING;
		from[n++] = i;
	}
	rc = n ? st->ops->batch(st->impl, todo, n) : STORE_OK;
	for (size_t j = 0; j < n; j++)
		q[from[j]] = todo[j];
	free(todo);
	free(from);
	return rc;
}

/* A triplet or client key of the greylist: 1 to GREYSTEP_KEY_MAX - 1 bytes, as greystep_triplet_key makes
 * them. */
static bool grey_key_ok(const char *key, const char *what)
{
	if (!key || !key[0] || strnlen(key, GREYSTEP_KEY_MAX) >= GREYSTEP_KEY_MAX) {
		store_set_error("%s: key must be 1 to %d bytes", what, GREYSTEP_KEY_MAX - 1);
		return false;
	}
	return true;
}

/* A time of the store's clock in ms: far from overflow when a century is added. */
static bool grey_time_ok(int64_t ms)
{
	return ms >= 0 && ms <= INT64_MAX / 2;
}

/* Clears the answer and checks the arguments of a QUERY_GREYLIST query. */
static store_status greylist_ok(query *q)
{
	const greystep_params *p = &q->u.grey.params;

	memset(&q->u.grey.answer, 0, sizeof(q->u.grey.answer));
	q->u.grey.capped = false;
	if (!grey_key_ok(q->u.grey.triplet, "store_greylist") ||
	    (q->u.grey.awl && !grey_key_ok(q->u.grey.awl, "store_greylist")))
		return STORE_ERROR;
	/* A century at most each keeps every sum of the step in range and within Redis's PEXPIREAT. */
	if (p->delay_ms < 0 || p->delay_ms > STORE_TTL_MS_MAX || p->retry_window_ms < 0 ||
	    p->retry_window_ms > STORE_TTL_MS_MAX || p->max_age_ms <= 0 || p->max_age_ms > STORE_TTL_MS_MAX ||
	    p->awl_count > STORE_COUNTER_UNITS_MAX)
		return store_set_error(
		    "store_greylist: delay, retry_window, max_age or awl_count out of range");
	if (!grey_time_ok(q->u.grey.now_ms))
		return store_set_error("store_greylist: now_ms out of range");
	return STORE_OK;
}

store_status store_greylist(store *st, query *q)
{
	return greylist_ok(q) == STORE_OK ? st->ops->greylist(st->impl, q) : STORE_ERROR;
}

store_status store_greylist_time(store *st, int64_t *now_ms)
{
	struct timespec ts;

	if (st->ops->grey_time)
		return st->ops->grey_time(st->impl, now_ms);
	clock_gettime(CLOCK_REALTIME, &ts);
	*now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	return STORE_OK;
}

static store_status grey_get(store *st, store_grey_kind kind, const char *key, int64_t now_ms,
                             store_grey_record *out)
{
	store_status rc;

	if (!out)
		return store_set_error("store_greylist_get: no record to fill");
	if (!grey_key_ok(key, "store_greylist_get"))
		return STORE_ERROR;
	memset(out, 0, sizeof(*out));
	rc = st->ops->grey_get(st->impl, kind, key, out);
	/* Past its expiry a record is gone, purged or not. */
	if (rc == STORE_OK && out->expires_ms <= now_ms)
		rc = STORE_NOTFOUND;
	return rc;
}

store_status store_greylist_get(store *st, const char *triplet, int64_t now_ms, store_grey_record *out)
{
	return grey_get(st, STORE_GREY_TRIPLET, triplet, now_ms, out);
}

store_status store_greylist_awl_get(store *st, const char *client, int64_t now_ms, store_grey_record *out)
{
	return grey_get(st, STORE_GREY_AWL, client, now_ms, out);
}

store_status store_greylist_remove(store *st, const char *triplet)
{
	if (!grey_key_ok(triplet, "store_greylist_remove"))
		return STORE_ERROR;
	return st->ops->grey_remove(st->impl, STORE_GREY_TRIPLET, triplet);
}

store_status store_greylist_awl_remove(store *st, const char *client)
{
	if (!grey_key_ok(client, "store_greylist_awl_remove"))
		return STORE_ERROR;
	return st->ops->grey_remove(st->impl, STORE_GREY_AWL, client);
}

store_status store_greylist_awl_put(store *st, const char *client, uint64_t count, int64_t now_ms,
                                    int64_t expires_ms)
{
	store_grey_record r = {
	    .kind = STORE_GREY_AWL, .count = count, .last_ms = now_ms, .expires_ms = expires_ms};

	if (!grey_key_ok(client, "store_greylist_awl_put"))
		return STORE_ERROR;
	if (!grey_time_ok(now_ms) || expires_ms <= now_ms || expires_ms - now_ms > STORE_TTL_MS_MAX ||
	    count > STORE_COUNTER_UNITS_MAX)
		return store_set_error("store_greylist_awl_put: times or count out of range");
	snprintf(r.key, sizeof(r.key), "%s", client);
	return st->ops->grey_awl_put(st->impl, &r);
}

store_status store_greylist_foreach(store *st, int64_t now_ms, store_grey_visit_fn fn, void *ctx)
{
	if (!fn)
		return store_set_error("store_greylist_foreach: no visitor");
	return st->ops->grey_foreach(st->impl, now_ms, fn, ctx);
}

store_status store_greylist_purge(store *st, int64_t now_ms, uint64_t *purged)
{
	uint64_t scratch = 0;

	if (!purged)
		purged = &scratch;
	*purged = 0;
	if (!grey_time_ok(now_ms))
		return store_set_error("store_greylist_purge: now_ms out of range");
	return st->ops->grey_purge ? st->ops->grey_purge(st->impl, now_ms, purged) : STORE_OK;
}

store_status store_run(store *st, query *q, size_t nq, int64_t now)
{
	store_status rc = STORE_OK;

	run_batch(st, q, nq);
	for (size_t i = 0; i < nq; i++) {
		size_t same = 0;

		if (batched(&q[i])) {
			if (q[i].status == QUERY_ERROR)
				rc = STORE_ERROR;
			continue;
		}

		while (same < i && !same_lookup(&q[same], &q[i]))
			same++;
		if (same < i) {
			q[i].status = q[same].status;
			q[i].u.lookup.found = q[same].u.lookup.found;
		} else {
			run_one(st, &q[i], now);
		}
		if (q[i].status == QUERY_ERROR)
			rc = STORE_ERROR;
	}
	return rc;
}
