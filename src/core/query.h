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
#include "core/greystep.h"

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
	 * With u.distinct.peek set it only reads: how many live, and whether
	 * member is one of them (a check's needs() may ask that; the add is
	 * then its effect).
	 */
	QUERY_DISTINCT_ADD,
	/*
	 * A keyed record with an expiry (greylist triplets, relay state):
	 * ns + key -> value, by op (query_kv_op). Times in ms; in Redis the
	 * server's clock (TIME), not now_ms.
	 */
	QUERY_KV,
	/* A GCRA bucket per ns + key: charge cost units if the rate allows. Times in ms, as QUERY_KV. */
	QUERY_COUNTER,
	/*
	 * One greylisting attempt of a triplet (core/greystep.h), read and
	 * written atomically in the store's clock (Redis: TIME): the one
	 * query a check asks that writes, so the greylist check asks it only
	 * once every check before it let the recipient through (check_def.late).
	 */
	QUERY_GREYLIST,
} query_kind;

typedef enum {
	QUERY_KV_GET,     /* answer the live record */
	QUERY_KV_PUT,     /* set value until now + ttl_ms; answer the record it replaced */
	QUERY_KV_PUT_NEW, /* QUERY_KV_PUT only if no live record: else leave it and answer it */
	QUERY_KV_DELETE,  /* drop the record; answer what it was */
} query_kv_op;

/* Namespaces of QUERY_KV and QUERY_COUNTER: [a-z0-9_-], 1 to 31 bytes. Values: text up to 512 bytes. */
#define QUERY_NS_MAX 32
#define QUERY_VALUE_MAX 512

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
			bool created[QUERY_RECORD_KEYS_MAX]; /* on QUERY_OK: keys[i] had no entry in force */
		} record;
		struct {
			const char *key; /* the set's name, typed by its caller ("domnet:@example.com") */
			const char *member;
			int64_t now, window; /* Unix seconds, seconds */
			uint64_t limit;
			bool peek; /* read only: count and present, nothing added or dropped */
			/* The store's clock decides, not now (Redis TIME: hosts with skewed clocks agree). */
			bool store_clock;
			uint64_t count; /* on QUERY_OK: live members, counting this one (> limit: refused) */
			bool present; /* peek, on QUERY_OK: member is live (count is then without it added) */
			/*
			 * SQLite: the most members of all sets together (0: no cap). At the cap
			 * the expired ones go first; while live members fill it, a new member
			 * is not added (capped): a live member is evidence against its account.
			 */
			uint64_t max_rows;
			bool capped; /* add, on QUERY_OK: member was new and not added (max_rows) */
		} distinct;
		struct {
			query_kv_op op;
			const char *ns, *key;
			const char *value;      /* puts: text of at most QUERY_VALUE_MAX bytes */
			int64_t now_ms, ttl_ms; /* ttl_ms > 0 for puts */
			/* On QUERY_OK: found says a live record was there before the op, with its value and
			 * expiry. */
			bool found;
			char old[QUERY_VALUE_MAX + 1];
			int64_t expires_ms;
		} kv;
		struct {
			const char *ns, *key;
			int64_t now_ms;
			int64_t emission_ms; /* ms per unit: the steady rate, > 0 */
			uint64_t burst;      /* units that may be spent at once, >= 1 */
			uint64_t cost;       /* units to charge; 0 peeks */
			/*
			 * SQLite: the most buckets (0: no cap). A new bucket at the cap
			 * first drops the buckets with the earliest TAT: the expired ones
			 * (as good as absent), then those nearest to full again.
			 */
			uint64_t max_rows;
			/* On QUERY_OK: */
			bool allowed;           /* charged; a refused call charges nothing */
			int64_t retry_after_ms; /* refused: when the same cost would be allowed */
			uint64_t remaining;     /* units that could be spent now, after this call */
		} counter;
		struct {
			/*
			 * The triplet's key ("192.0.2.0/24/sender-key/recipient") and its
			 * client's auto-whitelist key ("192.0.2.7" or "192.0.2.0/24"; NULL: no
			 * auto-whitelist); each 1 to GREYSTEP_KEY_MAX - 1 bytes, in namespaces of
			 * their own.
			 */
			const char *triplet, *awl;
			greystep_params params;
			int64_t now_ms; /* SQLite's clock; Redis reads its own */
			/*
			 * SQLite: the most triplets kept (0: no cap). At the cap a new triplet is
			 * not recorded and passes (answer.result GREYSTEP_PASS, capped true): an
			 * attacker filling the table turns greylisting off for new triplets, never
			 * into lost or delayed mail, and costs bounded disk.
			 */
			uint64_t max_triplets;
			/* On QUERY_OK: the step's outcome, in the store's clock (now_ms filled by Redis too).
			 */
			greystep_out answer;
			bool capped;
		} grey;
	} u;
} query;

#endif
