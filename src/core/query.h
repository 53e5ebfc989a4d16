/*
 * query: what a check asks of the store, written down as plain data. The
 * checks (core/check.h) are pure: they fill in queries, the engine hands
 * the queries of one stage to the store in one call (store_run in
 * store/store.h: one round trip for the lot), and the checks read the
 * answers from the same structs. Effects (a trap hit recorded, a member
 * added to a set, a bucket charged) are queries too, run after the
 * verdict.
 *
 * Every kind is atomic on its own in every backend (one SQLite
 * transaction, one Redis script); a batch of queries is not a transaction.
 */
#ifndef SPAMTRAPD_QUERY_H
#define SPAMTRAPD_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"

#define QUERY_KEY_MAX 600
#define QUERY_FIELD_MAX 600
/* Most non-network keys one blocklist lookup carries (sender, SASL, domain, HELO, with headroom). */
#define QUERY_LOOKUP_KEYS_MAX 8
/* Most keys one trap hit records. */
#define QUERY_RECORD_KEYS_MAX 8

typedef enum {
	/*
	 * Is any of keys[], or any network that holds client (at every length
	 * an entry may have), blocklisted? The store builds the network keys:
	 * it knows which lengths it holds.
	 */
	QUERY_BLOCKLIST_LOOKUP,
	/* A trap hit: create or refresh keys[] until now + ttl, with provenance. */
	QUERY_BLOCKLIST_RECORD,
	/*
	 * Add member to the set named key, live until now + window (refreshed
	 * when present, never shortened); drop members past their time; answer
	 * how many live. A new member beyond limit (0: none) is not added.
	 */
	QUERY_DISTINCT_ADD,
} query_kind;

typedef enum { QUERY_PENDING = 0, QUERY_OK, QUERY_NOTFOUND, QUERY_ERROR } query_status;

/* Provenance of one trap hit, recorded with every key it blocklists. Times are Unix seconds. */
typedef struct query_hit {
	int64_t now;
	int64_t ttl;
	const char *trap, *sender, *recipient, *client, *helo, *queue_id, *reason;
} query_hit;

/* The entry a blocklist lookup found: what a log line and a check need of it. */
typedef struct query_found {
	char key[QUERY_KEY_MAX];
	char trap[QUERY_FIELD_MAX];
	uint64_t hits;
} query_found;

typedef struct query {
	query_kind kind;
	query_status status; /* the answer; QUERY_PENDING until run */
	union {
		struct {
			const char *keys[QUERY_LOOKUP_KEYS_MAX];
			size_t nkeys;
			const addr_ip *client; /* NULL: no client network to look up */
			size_t client_at;      /* the networks go before keys[client_at] in precedence */
			/* The aggregation lengths trap hits write: always looked up. */
			unsigned ipv4_prefix, ipv6_prefix;
			query_found found; /* on QUERY_OK: the first listed key, most specific first */
		} lookup;
		struct {
			const char *keys[QUERY_RECORD_KEYS_MAX];
			size_t nkeys;
			query_hit hit;
		} record;
		struct {
			const char *key; /* the set's name, typed by its caller ("domnet:@example.com") */
			const char *member;
			int64_t now, window; /* Unix seconds, seconds */
			uint64_t limit;
			uint64_t count; /* on QUERY_OK: live members, counting this one (> limit: refused) */
		} distinct;
	} u;
} query;

#endif
