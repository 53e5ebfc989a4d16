/*
 * stats: the families of docs/metrics.md and the calls that count them
 * (see stats.h). The label lists are built here once from the core's own
 * names (checks_all[], decide_action_name, key_type_name), so a new check
 * or action gets its series without an edit; a name given at run time
 * that is not in a list counts under "other".
 */
#define STATS_IMPL
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/checks/checks.h"

enum { NACTIONS = DECIDE_HOLD + 1, NKEY_TYPES = KEY_TYPE_HELO + 1 };

static const char *const mode_names[] = {"enforce", "shadow"};
static const char *const reason_names[] = {"trap", "relay", "other"};
enum { REASON_OTHER = 2 };
static const char *const store_op_names[] = {"lookup", "update"};
static const char *const reload_names[] = {"success", "failure"};
static const char *const role_names[] = {"trap", "sender", "full"};
static const char *const version_names[] = {SPAMTRAPD_VERSION};
static const char *const backend_names[] = {"sqlite", "redis"};
static const char *const call_names[] = {"queries", "writes", "purge"};
/* dnsplan_status but DNSPLAN_PENDING: a lookup still pending at use is one that timed out. */
static const char *const dns_names[] = {"found", "nxdomain", "nodata", "tempfail", "timeout"};
/* spf_result, then no outcome by the deadline. */
static const char *const spf_names[] = {"none",     "neutral",   "pass",      "fail",
                                        "softfail", "temperror", "permerror", "timeout"};
/* Seconds: a local SQLite call takes tens of microseconds, a Redis round trip about a millisecond. */
static const double duration_buckets[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                          0.025,   0.05,   0.1,     0.25,   0.5,   1,      2.5,   5};

/* The greylist check's reasons and their results (core/checks/greylist.c). */
static const struct {
	const char *reason, *result;
} greylist_reasons[] = {
    {"greylisted", "deferred"},
    {"greylisted, the null sender is deferred at DATA", "deferred_at_data"},
    {"greylist passed", "passed"},
    {"greylist whitelisted", "whitelisted"},
    {"greylist skipped, dnsbl allowlisted", "dnswl_skipped"},
    {"greylist full", "full"},
    {"store-error", "store_error"},
};
#define NGREYLIST (sizeof(greylist_reasons) / sizeof(greylist_reasons[0]))

static struct {
	metrics *reg;
	const char *checks[CHECK_COUNT];
	const char *actions[NACTIONS];
	const char *key_types[NKEY_TYPES];
	const char *greylist[NGREYLIST + 1];
	char **sites; /* the DNS lists at start-up, then "other" */
	size_t nsites;
	metrics_family *decisions, *trap_hits, *blocklist, *greylist_results, *relay_trips, *ratelimit_hits,
	    *store_errors, *policy_requests, *milter_sessions, *reloads, *build_info, *store_duration,
	    *dns_lookups, *spf_results, *entries, *entries_time;
} st;

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define LABEL(name, values)                                                                                  \
	{                                                                                                    \
		name, values, NELEM(values)                                                                  \
	}

static void fill_names(void)
{
	for (int i = 0; i < CHECK_COUNT; i++)
		st.checks[i] = checks_all[i]->name;
	for (int a = 0; a < NACTIONS; a++)
		st.actions[a] = decide_action_name((decide_action)a);
	for (int k = 0; k < NKEY_TYPES; k++)
		st.key_types[k] = key_type_name((key_type)k);
	for (size_t g = 0; g < NGREYLIST; g++)
		st.greylist[g] = greylist_reasons[g].result;
	st.greylist[NGREYLIST] = "other";
}

static metrics_family *family(metrics_type type, const char *name, const char *help,
                              const metrics_label *labels, size_t nlabels, char *err, size_t errlen)
{
	return metrics_family_new(st.reg, type, name, help, labels, nlabels, NULL, 0, err, errlen);
}

/* The families of the edges: store call durations, DNS answers. */
static int make_io_families(char *err, size_t errlen)
{
	const metrics_label store_call[] = {LABEL("backend", backend_names), LABEL("call", call_names)};
	const metrics_label dns[] = {{"site", (const char *const *)st.sites, st.nsites},
	                             LABEL("result", dns_names)};
	const metrics_label spf[] = {LABEL("result", spf_names)};

	st.store_duration = metrics_family_new(
	    st.reg, METRICS_HISTOGRAM, "spamtrapd_store_call_duration_seconds",
	    "Time of one store call: a stage's queries, its checks' writes, or a purge, by backend.",
	    store_call, 2, duration_buckets, NELEM(duration_buckets), err, errlen);
	return st.store_duration &&
	               (st.dns_lookups = family(METRICS_COUNTER, "spamtrapd_dns_lookups_total",
	                                        "DNS list lookups (dnsbl.sites), by site and answer.", dns, 2,
	                                        err, errlen)) &&
	               (st.spf_results = family(METRICS_COUNTER, "spamtrapd_spf_checks_total",
	                                        "SPF evaluations of the sender, by result (timeout: none by "
	                                        "the deadline).",
	                                        spf, 1, err, errlen))
	           ? 0
	           : -1;
}

static int make_families(char *err, size_t errlen)
{
	const metrics_label decision[] = {LABEL("check", st.checks), LABEL("action", st.actions),
	                                  LABEL("mode", mode_names)};
	const metrics_label mode[] = {LABEL("mode", mode_names)};
	const metrics_label blocklist[] = {LABEL("key_type", st.key_types), LABEL("reason", reason_names)};
	const metrics_label greylist[] = {LABEL("result", st.greylist), LABEL("mode", mode_names)};
	const metrics_label store_op[] = {LABEL("operation", store_op_names)};
	const metrics_label type[] = {LABEL("key_type", st.key_types)};
	const metrics_label role[] = {LABEL("role", role_names)};
	const metrics_label reload[] = {LABEL("result", reload_names)};
	const metrics_label version[] = {LABEL("version", version_names)};

	return (st.decisions =
	            family(METRICS_COUNTER, "spamtrapd_decisions_total",
	                   "Verdicts of the checks, by check, action and mode (in shadow mode, the "
	                   "action enforce mode would have taken).",
	                   decision, 3, err, errlen)) &&
	               (st.trap_hits = family(METRICS_COUNTER, "spamtrapd_trap_hits_total",
	                                      "Trap recipients met.", mode, 1, err, errlen)) &&
	               (st.blocklist = family(
	                    METRICS_COUNTER, "spamtrapd_blocklist_additions_total",
	                    "New blocklist entries (not refreshes of one in force), by key type and reason.",
	                    blocklist, 2, err, errlen)) &&
	               (st.greylist_results = family(METRICS_COUNTER, "spamtrapd_greylist_results_total",
	                                             "Greylist check results.", greylist, 2, err, errlen)) &&
	               (st.relay_trips = family(METRICS_COUNTER, "spamtrapd_relay_trips_total",
	                                        "Recipients refused because their account sent from too many "
	                                        "networks.",
	                                        mode, 1, err, errlen)) &&
	               (st.ratelimit_hits =
	                    family(METRICS_COUNTER, "spamtrapd_ratelimit_hits_total",
	                           "Recipients over a rate limit rule.", mode, 1, err, errlen)) &&
	               (st.store_errors =
	                    family(METRICS_COUNTER, "spamtrapd_store_errors_total",
	                           "Store calls that failed, by operation.", store_op, 1, err, errlen)) &&
	               (st.policy_requests =
	                    family(METRICS_COUNTER, "spamtrapd_policy_requests_total",
	                           "Policy delegation requests, by listener role.", role, 1, err, errlen)) &&
	               (st.milter_sessions = family(METRICS_COUNTER, "spamtrapd_milter_sessions_total",
	                                            "Milter connections from the MTA (one per SMTP session).",
	                                            NULL, 0, err, errlen)) &&
	               (st.entries = family(METRICS_GAUGE, "spamtrapd_blocklist_entries",
	                                    "Blocklist entries in force, by key type, as last counted "
	                                    "(every metrics.entries_refresh).",
	                                    type, 1, err, errlen)) &&
	               (st.entries_time =
	                    family(METRICS_GAUGE, "spamtrapd_blocklist_entries_timestamp_seconds",
	                           "When spamtrapd_blocklist_entries was last counted (Unix "
	                           "time; 0: not yet).",
	                           NULL, 0, err, errlen)) &&
	               (st.reloads = family(METRICS_COUNTER, "spamtrapd_reloads_total",
	                                    "Configuration reloads, by result.", reload, 1, err, errlen)) &&
	               (st.build_info =
	                    family(METRICS_GAUGE, "spamtrapd_build_info",
	                           "The running spamtrapd's version (always 1).", version, 1, err, errlen))
	           ? 0
	           : -1;
}

/* The sites, then "other" (a site a reload adds, or an answer none of them asked). */
static int copy_sites(const char *const *sites, size_t n)
{
	if (!(st.sites = calloc(n + 1, sizeof(char *))))
		return -1;
	for (size_t i = 0; i <= n; i++) {
		if (i < n && strcmp(sites[i], "other") == 0)
			continue; /* one series for it and the fallback */
		if (!(st.sites[st.nsites] = strdup(i < n ? sites[i] : "other")))
			return -1;
		st.nsites++;
	}
	return 0;
}

int stats_init(const char *const *sites, size_t nsites, char *err, size_t errlen)
{
	if (st.reg)
		return 0;
	if (!(st.reg = metrics_new()) || copy_sites(sites, nsites) < 0) {
		stats_free();
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	fill_names();
	if (make_families(err, errlen) < 0 || make_io_families(err, errlen) < 0) {
		stats_free();
		return -1;
	}
	metrics_set(st.build_info, 0, 1);
	return 0;
}

void stats_free(void)
{
	metrics_free(st.reg);
	for (size_t i = 0; i < st.nsites; i++)
		free(st.sites[i]);
	free(st.sites);
	memset(&st, 0, sizeof(st));
}

const metrics *stats_registry(void)
{
	return st.reg;
}

void stats_decision(int check, decide_action action, stats_mode mode)
{
	if (check >= 0)
		metrics_add(
		    st.decisions,
		    metrics_series(st.decisions, (size_t[]){(size_t)check, (size_t)action, (size_t)mode}), 1);
}

void stats_blocklist_entries(const uint64_t counts[STORE_KEY_TYPES], int64_t when)
{
	for (size_t k = 0; k < STORE_KEY_TYPES && k < NKEY_TYPES; k++)
		metrics_set(st.entries, k, (int64_t)counts[k]);
	metrics_set(st.entries_time, 0, when);
}

void stats_trap_hit(stats_mode mode)
{
	metrics_add(st.trap_hits, (size_t)mode, 1);
}

void stats_blocklist_record(key_type type, const char *reason)
{
	size_t r = REASON_OTHER;
	for (size_t i = 0; i < REASON_OTHER; i++)
		if (reason && strcmp(reason, reason_names[i]) == 0)
			r = i;
	metrics_add(st.blocklist, metrics_series(st.blocklist, (size_t[]){(size_t)type, r}), 1);
}

void stats_greylist(const char *reason, stats_mode mode)
{
	size_t g = NGREYLIST;
	for (size_t i = 0; i < NGREYLIST; i++)
		if (reason && strcmp(reason, greylist_reasons[i].reason) == 0)
			g = i;
	metrics_add(st.greylist_results, metrics_series(st.greylist_results, (size_t[]){g, (size_t)mode}), 1);
}

void stats_relay_trip(stats_mode mode)
{
	metrics_add(st.relay_trips, (size_t)mode, 1);
}

void stats_ratelimit_hit(stats_mode mode)
{
	metrics_add(st.ratelimit_hits, (size_t)mode, 1);
}

void stats_store_error(stats_store_op op)
{
	metrics_add(st.store_errors, (size_t)op, 1);
}

void stats_policy_request(int role)
{
	if (role >= 0)
		metrics_add(st.policy_requests, (size_t)role, 1);
}

void stats_milter_session(void)
{
	metrics_add(st.milter_sessions, 0, 1);
}

void stats_reload(bool ok)
{
	metrics_add(st.reloads, ok ? 0 : 1, 1);
}

void stats_store_duration(store_backend backend, stats_store_call call, double seconds)
{
	metrics_observe(st.store_duration,
	                metrics_series(st.store_duration, (size_t[]){(size_t)backend, (size_t)call}),
	                seconds);
}

/* The site a lookup's name is under ("2.0.0.127.zen.example" under "zen.example"), else "other". */
static size_t site_of(const char *name)
{
	size_t len = strlen(name);

	for (size_t i = 0; i + 1 < st.nsites; i++) {
		size_t n = strlen(st.sites[i]);
		if (len > n && name[len - n - 1] == '.' && strcasecmp(name + len - n, st.sites[i]) == 0)
			return i;
	}
	return st.nsites - 1;
}

void stats_dns_plan(const dnsplan *plan)
{
	if (!plan || !st.reg)
		return;
	for (size_t i = 0; i < plan->nlookups; i++) {
		const dnsplan_lookup *l = &plan->lookup[i];
		size_t result = l->status == DNSPLAN_PENDING || l->status > DNSPLAN_TIMEOUT
		                    ? NELEM(dns_names) - 1
		                    : (size_t)l->status - DNSPLAN_FOUND;
		metrics_add(st.dns_lookups,
		            metrics_series(st.dns_lookups, (size_t[]){site_of(l->name), result}), 1);
	}
	if (plan->spf.wanted)
		metrics_add(st.spf_results, plan->spf.done ? (size_t)plan->spf.result : NELEM(spf_names) - 1,
		            1);
}
