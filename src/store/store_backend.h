/*
 * store_backend: the private contract between store.c and its backends.
 * store.c checks arguments once (key count and length, NULL pointers) and
 * dispatches through a store_ops table; a backend only does the database
 * work and reports failures with store_set_error().
 */
#ifndef SPAMTRAPD_STORE_BACKEND_H
#define SPAMTRAPD_STORE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* Most keys one lookup may carry (NETKEYS_MAX in core/netkeys.h). */
#define STORE_LOOKUP_MAX 48
/* Most keys one trap hit may record (DECIDE_MAX_RECORD, with headroom). */
#define STORE_RECORD_MAX 16

/* Capacity of a store_entry field, for capping values written to a backend. */
#define STORE_FIELD_CAP(field) sizeof(((store_entry *)0)->field)

typedef struct store_backend_impl store_backend_impl;

typedef struct store_ops {
	const char *name;
	store_backend_impl *(*open)(const store_config *cfg, char *err, size_t errlen);
	void (*free)(store_backend_impl *impl);
	store_status (*lookup)(store_backend_impl *impl, const char *const *keys, size_t nkeys, int64_t now,
	                       store_entry *found);
	/* created (NULL, or nkeys long): whether each key had no live entry before */
	store_status (*record)(store_backend_impl *impl, const char *const *keys, size_t nkeys,
	                       const store_hit *hit, bool *created);
	store_status (*get)(store_backend_impl *impl, const char *key, store_entry *out);
	store_status (*put)(store_backend_impl *impl, const store_entry *e);
	store_status (*remove)(store_backend_impl *impl, const char *key);
	store_status (*purge)(store_backend_impl *impl, int64_t now, uint64_t *purged);
	store_status (*foreach)(store_backend_impl *impl, int64_t now, store_visit_fn fn, void *ctx);
	/* Optional: without it, store_lookup_netlens calls lookup (which parses the keys). */
	store_status (*lookup_netlens)(store_backend_impl *impl, const char *const *keys,
	                               const int16_t *netlens, size_t nkeys, int64_t now, store_entry *found);
	/* Optional, both or neither: store_netlens and store_lookup_built (without: lengths unknown). */
	bool (*netlens)(store_backend_impl *impl, store_netmask *out);
	store_status (*lookup_built)(store_backend_impl *impl, const char *const *keys,
	                             const int16_t *netlens, size_t nkeys, const store_netmask *built,
	                             int64_t now, store_entry *found, bool *stale);
	/* max_rows: the SQLite cap of store_distinct_add_capped (0: none); Redis expires sets itself. */
	store_status (*distinct_add)(store_backend_impl *impl, const char *set, const char *member,
	                             int64_t now, int64_t window, uint64_t limit, uint64_t max_rows,
	                             uint64_t *count, bool *capped);
	store_status (*distinct_peek)(store_backend_impl *impl, const char *set, const char *member,
	                              int64_t now, uint64_t *count, bool *present);
	store_status (*distinct_list)(store_backend_impl *impl, const char *set, int64_t now,
	                              store_distinct_visit_fn fn, void *ctx);
	store_status (*distinct_clear)(store_backend_impl *impl, const char *set);
	/* Checked queries of kind QUERY_KV and QUERY_COUNTER; they fill in the answer. */
	store_status (*kv)(store_backend_impl *impl, query *q);
	store_status (*counter)(store_backend_impl *impl, query *q);
	store_status (*counter_delete)(store_backend_impl *impl, const char *ns, const char *key);
	/*
	 * Optional: several checked QUERY_KV and QUERY_COUNTER queries in one
	 * round trip, each setting its status; STORE_ERROR when the connection
	 * failed (the queries it left unanswered say QUERY_ERROR). Without it,
	 * store_run calls kv and counter for each.
	 */
	store_status (*batch)(store_backend_impl *impl, query *q, size_t nq);
	/* Optional: store_script_round_trips. */
	uint64_t (*script_trips)(store_backend_impl *impl);
	/* Optional: store_hot_clock_skew. */
	void (*hot_skew)(store_backend_impl *impl, int64_t ms);
	/* Optional: without it, store_put_many calls put for each entry. next() gives checked entries. */
	store_status (*put_many)(store_backend_impl *impl, store_next_fn next, void *ctx, uint64_t *written);
	/*
	 * The greylist (store_greylist and its admin calls), checked: grey_get
	 * answers the record whatever its expiry (store.c compares), grey_purge
	 * and grey_time are optional (no purge; the wall clock).
	 */
	store_status (*greylist)(store_backend_impl *impl, query *q);
	store_status (*grey_get)(store_backend_impl *impl, store_grey_kind kind, const char *key,
	                         store_grey_record *out);
	store_status (*grey_remove)(store_backend_impl *impl, store_grey_kind kind, const char *key);
	store_status (*grey_awl_put)(store_backend_impl *impl, const store_grey_record *r);
	store_status (*grey_foreach)(store_backend_impl *impl, int64_t now_ms, store_grey_visit_fn fn,
	                             void *ctx);
	store_status (*grey_purge)(store_backend_impl *impl, int64_t now_ms, uint64_t *purged);
	store_status (*grey_time)(store_backend_impl *impl, int64_t *now_ms);
	/* Optional: store_write_behind and store_sync (without: nothing held back, nothing to do). */
	store_status (*write_behind)(store_backend_impl *impl);
	store_status (*sync)(store_backend_impl *impl);
	/* Optional: store_decision_begin (begin true) and store_decision_end, on the calling thread. */
	void (*decision)(store_backend_impl *impl, bool begin);
	/* Optional: a backend with an absent-key filter (store_filter_answers). */
	uint64_t (*filter_answers)(store_backend_impl *impl);
	/* Optional: without it, store_count_types types the entries foreach visits. */
	store_status (*count_types)(store_backend_impl *impl, int64_t now, uint64_t *counts);
} store_ops;

extern const store_ops store_sqlite_ops;
extern const store_ops store_redis_ops;

/*
 * The Redis store's hot copies: Redis's clock less this host's, in ms,
 * from TIME's answer (redis_ms) and this host's clock read before TIME
 * was sent (sent_ms), both cut to the ms (store_redis.c, hot_note_time).
 */
int64_t store_redis_clock_offset(int64_t redis_ms, int64_t sent_ms);
/* The polls of a local view's socket this thread has made (tests: one per decision, store_decision_begin). */
uint64_t store_redis_view_polls(void);

/* Sets this thread's store_last_error(); always returns STORE_ERROR. */
store_status store_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Bytes of s to keep in a field of cap bytes (NUL included): at most
 * cap - 1, cut back to the start of a UTF-8 sequence so that a capped
 * field stays valid text. s may be NULL (0).
 */
size_t store_field_len(const char *s, size_t cap);

/* Copy len bytes of src (which may be NULL) into dst of cap bytes, capped and NUL-terminated. */
void store_field_copy(char *dst, size_t cap, const char *src, size_t len);

/*
 * The prefix length of a network key "ADDRESS/LEN" as core/decide.h
 * writes them ("192.0.2.0/24", "2001:db8::/48"): hex digits, '.' and ':',
 * then '/' and one to three digits, at most 32 (IPv4) or 128 (IPv6, a key
 * with a ':'); *family is 4 or 6. -1 for every other key (hosts, senders,
 * sasl:, helo:, @domain). The backends keep the lengths present among
 * stored network keys and skip lookup keys of other lengths; everything
 * that writes or reads those lengths classifies keys with this function
 * (or, in SQL, a definition that accepts at least the same keys).
 */
int store_net_key_len(const char *key, int *family);

/* The provenance strings of a hit, NULL as "" and reason NULL as "trap". */
const char *store_hit_reason(const store_hit *hit);

#endif
