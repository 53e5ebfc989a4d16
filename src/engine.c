/*
 * engine: front ends -> store lookups -> decision core -> effects -> one log
 * line (see engine.h). The only module that knows both the store and the
 * core; it holds no per-transaction state of its own.
 *
 * Snapshots are reference counted; the store inside them is shared between
 * consecutive snapshots while its settings stay the same, so a reload that
 * only changes traps keeps the open database and its pool.
 */
#include "engine.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* The core writes the keys' network lengths as the store reads them. */
_Static_assert(DECIDE_NETLEN_NONE == STORE_NETLEN_NONE && DECIDE_NETLEN(4, 24) == STORE_NETLEN(4, 24) &&
                   DECIDE_NETLEN(6, 48) == STORE_NETLEN(6, 48),
               "decide.h and store.h disagree on network lengths");

/* One line per interval while the store keeps failing (SPEC: logged at a limited rate). */
#define STORE_ERROR_LOG_INTERVAL 10

/*
 * Lookups and updates fail apart (a full disk or another process's write
 * lock stops updates only), so each kind has its own error lines and its
 * own "works again" line at the first success after failures.
 */
enum { STORE_LOOKUPS, STORE_UPDATES, STORE_KINDS };
static const char *const store_kind_names[STORE_KINDS] = {"lookups", "updates"};

typedef struct store_health {
	log_ratelimit errors;
	log_ratelimit recoveries;
	atomic_uint_fast64_t failed; /* failed calls since the last success */
} store_health;

typedef struct shared_store {
	atomic_uint refs;
	store *st;
} shared_store;

struct engine_snapshot {
	atomic_uint refs;
	config *cfg;
	shared_store *ss;
	engine *eng;
};

struct engine {
	pthread_mutex_t lock; /* guards current */
	engine_snapshot *current;
	store_health health[STORE_KINDS];
};

static void shared_store_unref(shared_store *ss)
{
	if (ss && atomic_fetch_sub(&ss->refs, 1) == 1) {
		store_free(ss->st);
		free(ss);
	}
}

static shared_store *shared_store_open(const store_config *cfg, char *err, size_t errlen)
{
	shared_store *ss = calloc(1, sizeof(*ss));
	if (!ss) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	ss->st = store_open(cfg, err, errlen);
	if (!ss->st) {
		free(ss);
		return NULL;
	}
	atomic_init(&ss->refs, 1);
	return ss;
}

static engine_snapshot *snapshot_new(engine *eng, config *cfg, shared_store *ss)
{
	engine_snapshot *snap = calloc(1, sizeof(*snap));
	if (!snap)
		return NULL;
	atomic_init(&snap->refs, 1);
	snap->cfg = cfg;
	snap->ss = ss;
	snap->eng = eng;
	return snap;
}

engine *engine_new(config *cfg, char *err, size_t errlen)
{
	engine *eng = calloc(1, sizeof(*eng));
	engine_snapshot *snap = eng ? snapshot_new(eng, cfg, NULL) : NULL;
	if (!snap) {
		snprintf(err, errlen, "out of memory");
		free(eng);
		config_unref(cfg);
		return NULL;
	}
	pthread_mutex_init(&eng->lock, NULL);
	eng->current = snap;
	for (int k = 0; k < STORE_KINDS; k++) {
		eng->health[k].errors.interval = STORE_ERROR_LOG_INTERVAL;
		eng->health[k].recoveries.interval = STORE_ERROR_LOG_INTERVAL;
		atomic_init(&eng->health[k].failed, 0);
	}
	return eng;
}

int engine_open_store(engine *eng, char *err, size_t errlen)
{
	engine_snapshot *snap = eng->current;
	if (snap->ss)
		return 0;
	snap->ss = shared_store_open(&snap->cfg->store, err, errlen);
	return snap->ss ? 0 : -1;
}

void engine_free(engine *eng)
{
	if (!eng)
		return;
	engine_release(eng->current);
	pthread_mutex_destroy(&eng->lock);
	free(eng);
}

int engine_reload(engine *eng, config *cfg, char *err, size_t errlen)
{
	engine_snapshot *old = engine_acquire(eng);
	shared_store *ss;
	if (old->ss && store_config_equal(&old->cfg->store, &cfg->store)) {
		ss = old->ss;
		atomic_fetch_add(&ss->refs, 1);
	} else {
		ss = shared_store_open(&cfg->store, err, errlen);
	}
	engine_release(old);
	engine_snapshot *snap = ss ? snapshot_new(eng, cfg, ss) : NULL;
	if (!snap) {
		if (ss)
			snprintf(err, errlen, "out of memory");
		shared_store_unref(ss);
		config_unref(cfg);
		return -1;
	}
	pthread_mutex_lock(&eng->lock);
	old = eng->current;
	eng->current = snap;
	pthread_mutex_unlock(&eng->lock);
	engine_release(old);
	return 0;
}

engine_snapshot *engine_acquire(engine *eng)
{
	pthread_mutex_lock(&eng->lock);
	engine_snapshot *snap = eng->current;
	atomic_fetch_add(&snap->refs, 1);
	pthread_mutex_unlock(&eng->lock);
	return snap;
}

void engine_release(engine_snapshot *snap)
{
	if (snap && atomic_fetch_sub(&snap->refs, 1) == 1) {
		shared_store_unref(snap->ss);
		config_unref(snap->cfg);
		free(snap);
	}
}

const config *engine_config(const engine_snapshot *snap)
{
	return snap->cfg;
}

store *engine_store(const engine_snapshot *snap)
{
	return snap->ss->st;
}

static void log_store_error(engine *eng, int kind, const char *what)
{
	store_health *h = &eng->health[kind];
	uint64_t suppressed = 0;
	atomic_fetch_add_explicit(&h->failed, 1, memory_order_relaxed);
	if (!log_ratelimit_pass(&h->errors, (int64_t)time(NULL), &suppressed))
		return;
	if (suppressed)
		log_error("store %s failed: %s (%llu similar errors not logged)", what, store_last_error(),
		          (unsigned long long)suppressed);
	else
		log_error("store %s failed: %s", what, store_last_error());
}

/* A call of this kind worked: after failures, say once that the store works again (no restart needed). */
static void store_worked(engine *eng, int kind)
{
	store_health *h = &eng->health[kind];
	uint64_t suppressed = 0;
	if (atomic_load_explicit(&h->failed, memory_order_relaxed) == 0)
		return;
	uint64_t failed = atomic_exchange_explicit(&h->failed, 0, memory_order_relaxed);
	if (failed && log_ratelimit_pass(&h->recoveries, (int64_t)time(NULL), &suppressed))
		log_notice("store %s work again after %llu failed call(s)", store_kind_names[kind],
		           (unsigned long long)failed);
}

/* Log-safe copies of the facts, for the one line per decision. */
typedef struct fact_text {
	char queue_id[64], client[64], helo[128], sender[256], recipient[256];
} fact_text;

static void fact_text_fill(fact_text *t, const decide_facts *f)
{
	log_safe(f->queue_id ? f->queue_id : "NOQUEUE", t->queue_id, sizeof(t->queue_id));
	log_safe_field(f->client_address, t->client, sizeof(t->client));
	log_safe_field(f->helo, t->helo, sizeof(t->helo));
	log_safe_field(f->sender, t->sender, sizeof(t->sender));
	log_safe_field(f->recipient, t->recipient, sizeof(t->recipient));
}

static const char *front_name(const decide_facts *f)
{
	return f->front == DECIDE_FRONT_MILTER ? "milter" : "policy";
}

/*
 * "ABC123: reject: blocklisted key=x; client=... helo=... sender=<...>
 * recipient=<...> front=policy": queue id first as in Postfix's own log
 * lines, so `grep QUEUEID` finds the decision next to Postfix's lines.
 */
static void log_verdict(const decide_facts *f, const decide_verdict *v, const char *detail)
{
	if (v->reason == DECIDE_REASON_NONE)
		return;
	fact_text t;
	fact_text_fill(&t, f);
	char action[48];
	if (v->action != v->enforce_action)
		snprintf(action, sizeof(action), "dry-run, would %s", decide_action_name(v->enforce_action));
	else
		snprintf(action, sizeof(action), "%s", decide_action_name(v->action));
	int level = v->reason == DECIDE_REASON_WHITELISTED && !v->trap[0] ? LOG_DEBUG : LOG_INFO;
	log_msg(level, "%s: %s: %s%s; client=%s helo=%s sender=<%s> recipient=<%s> front=%s", t.queue_id,
	        action, decide_reason_name(v->reason), detail, t.client, t.helo, t.sender, t.recipient,
	        front_name(f));
}

void engine_prepare(engine_snapshot *snap, const decide_facts *facts, decide_txn *txn)
{
	store_netmask m;
	decide_netmask present;
	bool known = store_netlens(snap->ss->st, &m);

	if (known) {
		present.v4 = m.v4;
		memcpy(present.v6, m.v6, sizeof(present.v6));
	}
	decide_prepare_lens(&snap->cfg->decide, facts, known ? &present : NULL, txn);
}

static bool all_built(const decide_netmask *m)
{
	return (m->v4 & m->v6[0] & m->v6[1] & m->v6[2]) == UINT64_MAX;
}

/* With every network key: the store holds a length txn was not built for. */
static store_status lookup_full(engine_snapshot *snap, const decide_facts *facts, int64_t now,
                                store_entry *found)
{
	decide_txn full;

	decide_prepare(&snap->cfg->decide, facts, &full);
	return store_lookup_netlens(snap->ss->st, full.lookup, full.lookup_netlen, full.nlookup, now, found);
}

/* The lookup of txn's keys; again with all of them when they were built for too few lengths. */
static store_status lookup_txn(engine_snapshot *snap, const decide_facts *facts, const decide_txn *txn,
                               store_entry *found)
{
	int64_t now = (int64_t)time(NULL);
	store_netmask built;
	bool stale;
	store_status rc;

	if (all_built(&txn->built))
		return store_lookup_netlens(snap->ss->st, txn->lookup, txn->lookup_netlen, txn->nlookup, now,
		                            found);
	built.v4 = txn->built.v4;
	memcpy(built.v6, txn->built.v6, sizeof(built.v6));
	rc = store_lookup_built(snap->ss->st, txn->lookup, txn->lookup_netlen, txn->nlookup, &built, now,
	                        found, &stale);
	return stale ? lookup_full(snap, facts, now, found) : rc;
}

decide_verdict engine_check_sender(engine_snapshot *snap, const decide_facts *facts, const decide_txn *txn)
{
	const config *cfg = snap->cfg;
	decide_lookup lookup = DECIDE_LOOKUP_MISS;
	store_entry found;
	found.key[0] = '\0';
	if (txn->whitelisted == WHITELIST_NONE && txn->nlookup > 0) {
		switch (lookup_txn(snap, facts, txn, &found)) {
		case STORE_OK:
			lookup = DECIDE_LOOKUP_HIT;
			store_worked(snap->eng, STORE_LOOKUPS);
			break;
		case STORE_NOTFOUND:
			store_worked(snap->eng, STORE_LOOKUPS);
			break;
		case STORE_ERROR:
			lookup = DECIDE_LOOKUP_ERROR;
			log_store_error(snap->eng, STORE_LOOKUPS, "lookup");
			break;
		}
	}
	decide_verdict v = decide_sender(&cfg->decide, txn, lookup);
	char detail[STORE_KEY_MAX + STORE_FIELD_MAX + 64] = "";
	if (lookup == DECIDE_LOOKUP_HIT) {
		char key[STORE_KEY_MAX], trap[STORE_FIELD_MAX];
		snprintf(detail, sizeof(detail), " key=%s trap=%s hits=%llu",
		         log_safe(found.key, key, sizeof(key)),
		         found.trap[0] ? log_safe(found.trap, trap, sizeof(trap)) : "-",
		         (unsigned long long)found.hits);
	}
	log_verdict(facts, &v, detail);
	return v;
}

/* "sender,192.0.2.0/24" for the log line: what this hit blocklisted. */
static void record_list(const char *const *keys, size_t nkeys, char *out, size_t outlen)
{
	size_t used = 0;
	out[0] = '\0';
	for (size_t i = 0; i < nkeys && used < outlen; i++) {
		int n = snprintf(out + used, outlen - used, "%s%s", i ? "," : "", keys[i]);
		if (n < 0)
			break;
		used += (size_t)n;
	}
	if (nkeys == 0)
		snprintf(out, outlen, "-");
}

/*
 * A sender domain that waits for networks: count this hit's client
 * network toward it (for as long as an entry would live), and say so in
 * detail for the log line (" domain=@d networks=2/3"). *networks: the
 * distinct networks counted, 0 when this client does not count or the
 * count failed. Returns -1 on a store error, else 0.
 */
static int count_domain(engine_snapshot *snap, const decide_txn *txn, int64_t now, uint64_t *networks,
                        char *detail, size_t detlen)
{
	const decide_policy *p = &snap->cfg->decide;
	char dom[STORE_KEY_MAX];

	*networks = 0;
	if (!txn->domain_key)
		return 0;
	log_safe(txn->domain_key, dom, sizeof(dom));
	if (!decide_counts_domain(txn)) {
		snprintf(detail, detlen, " domain=%s networks=not counted", dom);
		return 0;
	}
	if (store_distinct_add(snap->ss->st, txn->domain_set, txn->domain_net, now, p->ttl, 0, networks) !=
	    STORE_OK) {
		snprintf(detail, detlen, " domain=%s networks=? (store error)", dom);
		return -1;
	}
	snprintf(detail, detlen, " domain=%s networks=%llu/%u", dom, (unsigned long long)*networks,
	         p->domain_min_networks);
	return 0;
}

/*
 * The effects of a trap hit: count the domain's network, then blocklist
 * what the hit lists (the other keys also when the count failed). false
 * on a store error in either (logged, store.on_error then applies). keys
 * and domain get the log line's list of keys and domain count.
 */
static bool record_hit(engine_snapshot *snap, const decide_facts *facts, const decide_txn *txn,
                       const decide_verdict *v, char *keys, size_t keyslen, char *domain, size_t domlen)
{
	const config *cfg = snap->cfg;
	const char *rec[DECIDE_MAX_RECORD];
	uint64_t networks;
	store_hit hit = {
	    .now = (int64_t)time(NULL),
	    .ttl = cfg->decide.ttl,
	    .trap = v->trap,
	    .sender = txn->null_sender ? "" : txn->sender,
	    .recipient = facts->recipient,
	    .client = facts->client_address,
	    .helo = facts->helo,
	    .queue_id = facts->queue_id,
	    .reason = "trap",
	};
	bool counted = count_domain(snap, txn, hit.now, &networks, domain, domlen) == 0;
	size_t n = decide_record_keys(&cfg->decide, txn, networks, rec);

	if (!counted)
		log_store_error(snap->eng, STORE_UPDATES, "update");
	if (store_record(snap->ss->st, rec, n, &hit) != STORE_OK) {
		log_store_error(snap->eng, STORE_UPDATES, "update");
		snprintf(keys, keyslen, "none (store error)");
		return false;
	}
	if (counted)
		store_worked(snap->eng, STORE_UPDATES);
	record_list(rec, n, keys, keyslen);
	return counted;
}

/* Whether a key of txn is blocklisted now; a store error counts as "no" (logged). */
static bool listed_now(engine_snapshot *snap, const decide_facts *facts, const decide_txn *txn)
{
	store_entry found;

	if (txn->nlookup == 0)
		return false;
	switch (lookup_txn(snap, facts, txn, &found)) {
	case STORE_OK:
		store_worked(snap->eng, STORE_LOOKUPS);
		return true;
	case STORE_NOTFOUND:
		store_worked(snap->eng, STORE_LOOKUPS);
		return false;
	case STORE_ERROR:
		log_store_error(snap->eng, STORE_LOOKUPS, "lookup");
		return false;
	}
	return false;
}

decide_verdict engine_check_recipient(engine_snapshot *snap, const decide_facts *facts, const decide_txn *txn)
{
	return engine_check_recipient_listed(snap, facts, txn, NULL);
}

decide_verdict engine_check_recipient_listed(engine_snapshot *snap, const decide_facts *facts,
                                             const decide_txn *txn, bool *listed_before)
{
	const config *cfg = snap->cfg;
	decide_verdict v = decide_recipient(&cfg->decide, txn, facts);
	if (listed_before)
		*listed_before = false;
	if (v.reason == DECIDE_REASON_NONE)
		return v;
	char keys[1024] = "-", domain[STORE_KEY_MAX + 64] = "";
	if (v.reason == DECIDE_REASON_TRAP && !v.record && txn->null_sender)
		snprintf(keys, sizeof(keys), "none (null sender)");
	if (v.record && listed_before)
		*listed_before = listed_now(snap, facts, txn);
	if (v.record && !record_hit(snap, facts, txn, &v, keys, sizeof(keys), domain, sizeof(domain)))
		v = decide_store_failed(&cfg->decide, &v);
	char detail[TRAPSET_MATCH_MAX + 1800], trap[TRAPSET_MATCH_MAX], safe_keys[1024];
	snprintf(detail, sizeof(detail), " trap=%s blocklisted=%s%s", log_safe(v.trap, trap, sizeof(trap)),
	         log_safe(keys, safe_keys, sizeof(safe_keys)), domain);
	log_verdict(facts, &v, detail);
	return v;
}

decide_action engine_end_of_message(engine_snapshot *snap, const decide_facts *facts, size_t ntraps,
                                    size_t nothers)
{
	decide_action a = decide_end_of_message(&snap->cfg->decide, ntraps, nothers);
	if (a != DECIDE_CONTINUE) {
		fact_text t;
		fact_text_fill(&t, facts);
		log_info(
		    "%s: %s at end of message: %zu trap recipient(s), %zu other(s); client=%s sender=<%s> "
		    "front=%s",
		    t.queue_id, a == DECIDE_DISCARD ? "discard message" : "remove trap recipients", ntraps,
		    nothers, t.client, t.sender, front_name(facts));
	}
	return a;
}

void engine_purge(engine *eng)
{
	engine_snapshot *snap = engine_acquire(eng);
	uint64_t purged = 0, answers;
	if (store_filter_answers(snap->ss->st, &answers))
		log_debug("store: the absent-key filter answered %llu lookups without SQLite since the store "
		          "was opened",
		          (unsigned long long)answers);
	if (store_purge(snap->ss->st, (int64_t)time(NULL), &purged) != STORE_OK) {
		log_store_error(eng, STORE_UPDATES, "purge");
	} else {
		store_worked(eng, STORE_UPDATES);
		if (purged)
			log_info("purged %llu expired blocklist entries", (unsigned long long)purged);
	}
	engine_release(snap);
}
