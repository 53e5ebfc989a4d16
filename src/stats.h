/*
 * stats: spamtrapd's own metric families (docs/metrics.md), one set per
 * process, in a metrics registry the metrics listener renders. Every
 * label takes its values from a fixed list here: check names, actions,
 * key types, results; never a sender, an address or an account.
 *
 * stats_init() makes them at start-up, before any thread counts; until
 * then (and in unit tests that never call it) every stats_ call is a
 * no-op. Counting is a relaxed atomic add: safe from any thread.
 */
#ifndef SPAMTRAPD_STATS_H
#define SPAMTRAPD_STATS_H

#include <stdbool.h>
#include <stddef.h>

#include "core/decide.h"
#include "core/dnsplan.h"
#include "core/key.h"
#include "metrics.h"
#include "store/store.h"

/*
 * 0, or -1 with err. Once per process; a second call does nothing.
 * sites: the DNS list names (dnsbl.sites) at start-up, the values of the
 * site label (copied; a site a reload adds counts under "other").
 */
int stats_init(const char *const *sites, size_t nsites, char *err, size_t errlen);
void stats_free(void);
/* The registry to render; NULL before stats_init. */
const metrics *stats_registry(void);

/*
 * The blocklist's entries in force by key type (store_count_types), counted
 * at Unix time when: the gauge the control thread refreshes every
 * metrics.entries_refresh, never per request.
 */
void stats_blocklist_entries(const uint64_t counts[STORE_KEY_TYPES], int64_t when);

/*
 * The counting calls. Built with SPAMTRAPD_METRICS=OFF (SPAMTRAPD_NO_METRICS,
 * for measuring what counting costs) they are empty inline functions, so
 * that the request path does not even call out; stats.c (STATS_IMPL) still
 * builds the real ones.
 */
#if defined(SPAMTRAPD_NO_METRICS) && !defined(STATS_IMPL)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#define STATS_COUNTING(decl)                                                                                 \
	static inline decl                                                                                   \
	{                                                                                                    \
	}
#else
#define STATS_COUNTING(decl) decl;
#endif

typedef enum { STATS_MODE_ENFORCE, STATS_MODE_SHADOW } stats_mode;

/* A check's verdict that the engine logs: in shadow mode, what enforce would have done. */
STATS_COUNTING(void stats_decision(int check, decide_action action, stats_mode mode))
/* A trap recipient met (in every mode: shadow traps record too). */
STATS_COUNTING(void stats_trap_hit(stats_mode mode))
/* A new blocklist entry (not a refresh); reason as query_hit.reason ("trap", "relay"). */
STATS_COUNTING(void stats_blocklist_record(key_type type, const char *reason))
/* The greylist's verdict, by its reason text (core/checks/greylist.c). */
STATS_COUNTING(void stats_greylist(const char *reason, stats_mode mode))
STATS_COUNTING(void stats_relay_trip(stats_mode mode))
STATS_COUNTING(void stats_ratelimit_hit(stats_mode mode))

typedef enum { STATS_STORE_LOOKUP, STATS_STORE_UPDATE } stats_store_op;
STATS_COUNTING(void stats_store_error(stats_store_op op))

/* How long one store call took: a stage's queries, its checks' writes, or a purge. */
typedef enum { STATS_CALL_QUERIES, STATS_CALL_WRITES, STATS_CALL_PURGE } stats_store_call;
STATS_COUNTING(void stats_store_duration(store_backend backend, stats_store_call call, double seconds))

/* The answers of a DNS plan a stage used: each A lookup by its site, the SPF result. */
STATS_COUNTING(void stats_dns_plan(const dnsplan *plan))

/* One policy request answered (or parked for DNS) on a listener of this role (policy_role). */
STATS_COUNTING(void stats_policy_request(int role))
STATS_COUNTING(void stats_milter_session(void))
STATS_COUNTING(void stats_reload(bool ok))

#if defined(SPAMTRAPD_NO_METRICS) && !defined(STATS_IMPL)
#pragma GCC diagnostic pop
#endif
#endif
