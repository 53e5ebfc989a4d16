/*
 * engine: front ends -> checks' queries -> store -> checks' verdicts ->
 * effects -> log lines (see engine.h). The only module that knows both
 * the store and the core. Per message it holds the policy protocol's
 * instance table; everything else a message needs is in its engine_msg.
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

#include "core/checks/greylist.h"
#include "core/checks/spf.h"
#include "core/hash.h"
#include "core/key.h"
#include "core/pipeline.h"
#include "hook.h"
#include "log.h"
#include "stats.h"

/* One line per interval while the store keeps failing (SPEC: logged at a limited rate). */
#define STORE_ERROR_LOG_INTERVAL 10
/* check_verdict.log_limited lines: each check's, at most a burst of them a minute. */
#define CHECK_ERROR_LOG_INTERVAL 60
#define CHECK_ERROR_LOG_BURST 3

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

/* Messages whose state the policy protocol keeps by instance (engine_msg_recall). */
#define ENGINE_MESSAGE_SLOTS 4096

struct engine {
	pthread_mutex_t lock; /* guards current */
	engine_snapshot *current;
	store_health health[STORE_KINDS];
	_Atomic uint64_t messages[ENGINE_MESSAGE_SLOTS];
	log_ratelimit check_errors[CHECK_COUNT]; /* check_verdict.log_limited lines */
	log_ratelimit capped;                    /* relay adds held back at relay.max_entries */
	/* The hooks' runner (relay.notify), started at the first hook: the daemon forks before. */
	pthread_mutex_t hooks_lock;
	hook_runner *hooks;
	/* engine_set_change_notify: set before any thread reads it */
	engine_change_fn on_change;
	void *on_change_ctx;
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
	/* The daemon's buckets and relay sets in memory, written behind (store.h). */
	if (ss->st && store_write_behind(ss->st) != STORE_OK) {
		snprintf(err, errlen, "%s", store_last_error());
		store_free(ss->st);
		ss->st = NULL;
	}
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
	pthread_mutex_init(&eng->hooks_lock, NULL);
	eng->current = snap;
	for (int i = 0; i < CHECK_COUNT; i++)
		eng->check_errors[i] =
		    (log_ratelimit){.interval = CHECK_ERROR_LOG_INTERVAL, .burst = CHECK_ERROR_LOG_BURST};
	eng->capped = (log_ratelimit){.interval = STORE_ERROR_LOG_INTERVAL};
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
	hook_runner_free(eng->hooks);
	pthread_mutex_destroy(&eng->hooks_lock);
	pthread_mutex_destroy(&eng->lock);
	free(eng);
}

void engine_set_change_notify(engine *eng, engine_change_fn fn, void *ctx)
{
	eng->on_change = fn;
	eng->on_change_ctx = ctx;
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
	/* The exports (or the store they list) may have changed: the exporter looks again now. */
	if (eng->on_change)
		eng->on_change(eng->on_change_ctx);
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
	stats_store_error(kind == STORE_UPDATES ? STATS_STORE_UPDATE : STATS_STORE_LOOKUP);
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
static void log_verdict(const pipeline *p, const decide_facts *f, const check_verdict *v, log_ratelimit *rl)
{
	fact_text t;
	char action[48], detail[CHECK_DETAIL_MAX], more[64] = "";
	int level = v->quiet ? LOG_DEBUG : LOG_INFO;
	uint64_t suppressed = 0;

	if (level != LOG_DEBUG && v->log_limited) {
		if (!log_ratelimit_pass(rl, (int64_t)time(NULL), &suppressed))
			level = LOG_DEBUG;
		else if (suppressed)
			snprintf(more, sizeof(more), " (%llu similar lines at debug level)",
			         (unsigned long long)suppressed);
	}
	fact_text_fill(&t, f);
	pipeline_action_text(p, v, action, sizeof(action));
	log_msg(level, "%s: %s: %s%s; client=%s helo=%s sender=<%s> recipient=<%s> front=%s%s", t.queue_id,
	        action, v->reason, log_safe(v->detail, detail, sizeof(detail)), t.client, t.helo, t.sender,
	        t.recipient, front_name(f), more);
}

/* The milter's end of message, in the words of what it drops. */
static void log_end_of_message(const decide_facts *f, const check_verdict *v, const check_msg *msg)
{
	fact_text t;

	fact_text_fill(&t, f);
	log_info(
	    "%s: %s at end of message: %u trap recipient(s), %u other(s); client=%s sender=<%s> front=%s",
	    t.queue_id, v->action == DECIDE_DISCARD ? "discard message" : "remove trap recipients",
	    msg->ntraps, msg->nothers, t.client, t.sender, front_name(f));
}

void engine_msg_init(engine_msg *m)
{
	m->snap = NULL;
	memset(&m->state, 0, sizeof(m->state));
	m->prepared = false;
	m->plan_verified = -1;
	m->plan_stage = CHECK_STAGE_MAIL;
}

void engine_msg_begin(engine_msg *m, engine_snapshot *snap)
{
	atomic_fetch_add(&snap->refs, 1);
	m->snap = snap;
	memset(&m->state, 0, sizeof(m->state));
	m->prepared = false;
	m->plan_verified = -1;
}

void engine_msg_end(engine_msg *m)
{
	engine_release(m->snap);
	m->snap = NULL;
	memset(&m->state, 0, sizeof(m->state));
	m->prepared = false;
	m->plan_verified = -1;
}

/*
 * The policy protocol's message table: one word per slot, the instance's
 * hash in the high bits and the state's flags in the low ones, so that
 * workers share it without a lock. Direct-mapped: a newer message takes
 * the slot of an older one, which is then judged as if new.
 */
enum {
	MSG_TRAP_HIT = 1u << 0,
	MSG_LISTED_BEFORE = 1u << 1,
	MSG_GREY_DEFER_DATA = 1u << 2,
	MSG_GREY_HEADER_DONE = 1u << 3,
	MSG_ACCEPTED = 1u << 4, /* a recipient got the message: its per-message rate buckets are charged */
	MSG_SPF_HEADER_DONE = 1u << 5,
	MSG_SPF_SHIFT = 6,      /* 3 bits: check_msg.spf (0, or spf_result + 1 up to 7) */
	MSG_SPF_OPEN_SHIFT = 9, /* 2 bits: check_msg.spf_open */
	/* 21 bits: 24 days, longer than greylist.delay can be */
	MSG_GREY_REMAINING_SHIFT = 11,
	MSG_FLAG_BITS = 32
};
#define MSG_TAG_MASK (~(uint64_t)0 << MSG_FLAG_BITS)
#define MSG_GREY_REMAINING_MAX ((UINT32_C(1) << (MSG_FLAG_BITS - MSG_GREY_REMAINING_SHIFT)) - 1)

static uint64_t instance_tag(const char *instance)
{
	uint64_t h = hash_fnv1a(HASH_FNV1A_INIT, instance, strlen(instance));

	return (h & MSG_TAG_MASK) ? h : h | (UINT64_C(1) << 63); /* a tag of 0 marks an empty slot */
}

void engine_msg_recall(engine_msg *m, const char *instance)
{
	if (!instance || !*instance || !m->snap)
		return;
	uint64_t tag = instance_tag(instance);
	uint64_t slot =
	    atomic_load_explicit(&m->snap->eng->messages[tag % ENGINE_MESSAGE_SLOTS], memory_order_relaxed);
	if ((slot & MSG_TAG_MASK) != (tag & MSG_TAG_MASK))
		return;
	m->state.trap_hit = slot & MSG_TRAP_HIT;
	m->state.listed_before = slot & MSG_LISTED_BEFORE;
	m->state.grey_defer_data = slot & MSG_GREY_DEFER_DATA;
	m->state.grey_header_done = slot & MSG_GREY_HEADER_DONE;
	m->state.spf_header_done = slot & MSG_SPF_HEADER_DONE;
	m->state.nothers = (slot & MSG_ACCEPTED) ? 1 : 0;
	m->state.spf = (uint8_t)((slot >> MSG_SPF_SHIFT) & 7);
	m->state.spf_open = (uint8_t)((slot >> MSG_SPF_OPEN_SHIFT) & 3);
	m->state.grey_remaining = (uint32_t)((slot & ~MSG_TAG_MASK) >> MSG_GREY_REMAINING_SHIFT);
}

/*
 * Whether the table must keep that a recipient got the message: only the
 * ratelimit check asks (unit "message"), and every message taking a slot
 * would push out other messages' trap hits sooner.
 */
static bool keep_accepted(const engine_msg *m)
{
	return m->state.nothers > 0 &&
	       m->snap->cfg->pipeline.checks[CHECK_ID_RATELIMIT].mode != CHECK_MODE_OFF;
}

void engine_msg_remember(const engine_msg *m, const char *instance)
{
	const check_msg *st = &m->state;
	uint32_t remaining =
	    st->grey_remaining < MSG_GREY_REMAINING_MAX ? st->grey_remaining : MSG_GREY_REMAINING_MAX;

	if (!instance || !*instance || !m->snap ||
	    !(st->trap_hit || st->grey_defer_data || st->grey_header_done || st->spf || st->spf_header_done ||
	      keep_accepted(m)))
		return;
	uint64_t tag = instance_tag(instance);
	uint64_t slot = (tag & MSG_TAG_MASK) | (st->trap_hit ? MSG_TRAP_HIT : 0) |
	                (st->listed_before ? MSG_LISTED_BEFORE : 0) |
	                (st->grey_defer_data ? MSG_GREY_DEFER_DATA : 0) |
	                (st->grey_header_done ? MSG_GREY_HEADER_DONE : 0) |
	                (st->spf_header_done ? MSG_SPF_HEADER_DONE : 0) |
	                (st->nothers > 0 ? MSG_ACCEPTED : 0) | ((uint64_t)(st->spf & 7) << MSG_SPF_SHIFT) |
	                ((uint64_t)(st->spf_open & 3) << MSG_SPF_OPEN_SHIFT) |
	                ((uint64_t)remaining << MSG_GREY_REMAINING_SHIFT);
	atomic_store_explicit(&m->snap->eng->messages[tag % ENGINE_MESSAGE_SLOTS], slot,
	                      memory_order_relaxed);
}

void engine_msg_forget_trap(engine_msg *m)
{
	if (m->state.ntraps > 0)
		m->state.ntraps--;
}

/* Store health by kind: queries that only read (a lookup, a distinct set's peek), and those that write. */
static void note_health(engine *eng, const query *q, size_t nq)
{
	bool failed[STORE_KINDS] = {false, false}, worked[STORE_KINDS] = {false, false};

	for (size_t i = 0; i < nq; i++) {
		bool reads = q[i].kind == QUERY_BLOCKLIST_LOOKUP ||
		             (q[i].kind == QUERY_DISTINCT_ADD && q[i].u.distinct.peek);
		int kind = reads ? STORE_LOOKUPS : STORE_UPDATES;

		failed[kind] |= q[i].status == QUERY_ERROR;
		worked[kind] |= q[i].status == QUERY_OK || q[i].status == QUERY_NOTFOUND;
	}
	for (int kind = 0; kind < STORE_KINDS; kind++) {
		if (failed[kind])
			log_store_error(eng, kind, kind == STORE_UPDATES ? "update" : "lookup");
		else if (worked[kind])
			store_worked(eng, kind);
	}
}

/* The blocklist entries a check's writes created (not those a hit refreshed), by key type and reason. */
static void count_records(const query *writes, size_t n)
{
	for (size_t j = 0; j < n; j++) {
		if (writes[j].kind != QUERY_BLOCKLIST_RECORD || writes[j].status != QUERY_OK)
			continue;
		for (size_t k = 0; k < writes[j].u.record.nkeys; k++)
			if (writes[j].u.record.created[k])
				stats_blocklist_record(key_type_of(writes[j].u.record.keys[k]),
				                       writes[j].u.record.hit.reason);
	}
}

static double seconds_since(const struct timespec *a)
{
	struct timespec b;

	clock_gettime(CLOCK_MONOTONIC, &b);
	return (double)(b.tv_sec - a->tv_sec) + (double)(b.tv_nsec - a->tv_nsec) / 1e9;
}

/* store_run, timed for spamtrapd_store_call_duration_seconds. */
static void store_call(engine_snapshot *snap, query *q, size_t n, int64_t now, stats_store_call call)
{
#ifdef SPAMTRAPD_NO_METRICS
	(void)call;
	store_run(snap->ss->st, q, n, now);
#else
	struct timespec a;

	clock_gettime(CLOCK_MONOTONIC, &a);
	store_run(snap->ss->st, q, n, now);
	stats_store_duration(snap->cfg->store.backend, call, seconds_since(&a));
#endif
}

static const char *block_type(const char *key)
{
	switch (key_type_of(key)) {
	case KEY_TYPE_NETWORK:
		return "client";
	case KEY_TYPE_SENDER:
		return "sender";
	case KEY_TYPE_DOMAIN:
		return "domain";
	case KEY_TYPE_SASL:
		return "sasl";
	case KEY_TYPE_HELO:
		return "helo";
	}
	return "?";
}

/*
 * "block: type=client key=192.0.2.0/24 client=192.0.2.7 ttl=86400
 * reason=trap mode=enforce queue_id=ABC123", once for each new
 * blocklist entry: a fixed format for fail2ban and scripts
 * (docs/firewall.md). Every value is a log_safe_field, so no sender key
 * can fake a field; mode=shadow when the check that wrote it only
 * shadows (or the daemon runs in dry-run).
 */
static hook_runner *hooks_of(engine *eng);

/*
 * hooks.on_block for one new entry of an enforcing check: queued, never
 * waited for; the runner logs what fails. The values go as they are (an
 * argv, no shell): a hook must take a key that starts with '-' as such.
 */
static void run_block_hook(engine_snapshot *snap, const query *q, size_t k, const decide_facts *f)
{
	const config *cfg = snap->cfg;
	const char *values[CONFIG_BLOCK_HOOK_VALUES];
	char ttl[24];

	if (cfg->hooks.non_block == 0)
		return;
	snprintf(ttl, sizeof(ttl), "%lld", (long long)q->u.record.hit.ttl);
	values[CONFIG_BLOCK_HOOK_KEY] = q->u.record.keys[k];
	values[CONFIG_BLOCK_HOOK_TYPE] = block_type(q->u.record.keys[k]);
	values[CONFIG_BLOCK_HOOK_TTL] = ttl;
	values[CONFIG_BLOCK_HOOK_REASON] = q->u.record.hit.reason ? q->u.record.hit.reason : "";
	values[CONFIG_BLOCK_HOOK_TRAP] = q->u.record.hit.trap ? q->u.record.hit.trap : "";
	values[CONFIG_BLOCK_HOOK_CLIENT] = f->client_address ? f->client_address : "";
	values[CONFIG_BLOCK_HOOK_QUEUE_ID] = f->queue_id ? f->queue_id : "";
	hook_run(hooks_of(snap->eng), cfg->hooks.on_block, cfg->hooks.non_block, config_block_hook_names,
	         values, cfg->hooks.timeout * 1000);
}

static void log_new_entries(engine_snapshot *snap, const query *q, check_mode mode, const decide_facts *f)
{
	char key[QUERY_KEY_MAX], client[64], qid[64], reason[64];
	bool notified = false;

	if (q->kind != QUERY_BLOCKLIST_RECORD || q->status != QUERY_OK)
		return;
	for (size_t k = 0; k < q->u.record.nkeys; k++) {
		if (!q->u.record.created[k])
			continue;
		if (!notified && snap->eng->on_change) {
			snap->eng->on_change(snap->eng->on_change_ctx);
			notified = true;
		}
		log_info(
		    "block: type=%s key=%s client=%s ttl=%lld reason=%s mode=%s queue_id=%s",
		    block_type(q->u.record.keys[k]), log_safe_field(q->u.record.keys[k], key, sizeof(key)),
		    log_safe_field(f->client_address, client, sizeof(client)), (long long)q->u.record.hit.ttl,
		    log_safe_field(q->u.record.hit.reason, reason, sizeof(reason)),
		    mode == CHECK_MODE_ENFORCE ? "enforce" : "shadow",
		    log_safe_field(f->queue_id ? f->queue_id : "NOQUEUE", qid, sizeof(qid)));
		if (mode == CHECK_MODE_ENFORCE)
			run_block_hook(snap, q, k, f);
	}
}

/* A set's new member the store held back at its cap (relay.max_entries): the table is full of live rows. */
static void log_capped(engine *eng, const query *q)
{
	uint64_t suppressed = 0;
	char set[128];

	if (!log_ratelimit_pass(&eng->capped, (int64_t)time(NULL), &suppressed))
		return;
	log_warning("relay: table full (relay.max_entries), new networks are not counted: set=%s%s",
	            log_safe_field(q->u.distinct.key, set, sizeof(set)),
	            suppressed ? " (and more since the last line)" : "");
}

/*
 * Queries to the store, answered in place: its health noted, and a
 * relay network the store held back at relay.max_entries logged (the
 * relay check's add, a query of its needs since it counts first).
 */
static void ask_store(engine_snapshot *snap, query *q, size_t n, int64_t now, stats_store_call call)
{
	store_call(snap, q, n, now, call);
	note_health(snap->eng, q, n);
	for (size_t j = 0; j < n; j++)
		if (q[j].kind == QUERY_DISTINCT_ADD && q[j].status == QUERY_OK && q[j].u.distinct.capped)
			log_capped(snap->eng, &q[j]);
}

/*
 * The effects gathered so far in one store_run; each answer goes back
 * into its check's effect slot (a hook gated on one reads it:
 * check_effects.hook_gate), then each check with a failed write is told,
 * once.
 */
static void flush_effects(engine_snapshot *snap, pipeline_run *run, const decide_facts *facts, query *writes,
                          const int *owner, const size_t *at, size_t n)
{
	bool failed[CHECK_COUNT] = {false};

	if (n == 0)
		return;
	ask_store(snap, writes, n, run->ctx.now, STATS_CALL_WRITES);
	count_records(writes, n);
	for (size_t j = 0; j < n; j++) {
		run->effects[owner[j]].q[at[j]] = writes[j];
		log_new_entries(snap, &writes[j], snap->cfg->pipeline.checks[owner[j]].mode, facts);
		failed[owner[j]] |= writes[j].status == QUERY_ERROR;
	}
	for (int i = 0; i < CHECK_COUNT; i++)
		if (failed[i])
			pipeline_store_failed(&snap->cfg->pipeline, run, i);
}

/*
 * Write the effects of the checks that decided; tell the pipeline which
 * ones failed. The writes of several checks go to the store together
 * (a recipient's relay trip marker and ratelimit charge: one round trip
 * to Redis), two checks' worth at a time.
 */
static void apply_effects(engine_snapshot *snap, pipeline_run *run, const decide_facts *facts)
{
	const pipeline *p = &snap->cfg->pipeline;
	query writes[2 * CHECK_MAX_EFFECTS];
	int owner[2 * CHECK_MAX_EFFECTS];
	size_t at[2 * CHECK_MAX_EFFECTS], n = 0;

	for (int i = 0; i < CHECK_COUNT; i++) {
		if (!run->decided[i])
			continue;
		if (n + CHECK_MAX_EFFECTS > sizeof(writes) / sizeof(writes[0])) {
			flush_effects(snap, run, facts, writes, owner, at, n);
			n = 0;
		}
		for (size_t j = 0; j < run->effects[i].nq && j < CHECK_MAX_EFFECTS; j++)
			if (pipeline_effect_applies(p, run, i, j)) {
				owner[n] = i;
				at[n] = j;
				writes[n++] = run->effects[i].q[j];
			}
	}
	flush_effects(snap, run, facts, writes, owner, at, n);
}

static hook_runner *hooks_of(engine *eng)
{
	hook_runner *h;

	pthread_mutex_lock(&eng->hooks_lock);
	if (!eng->hooks && !(eng->hooks = hook_runner_new(HOOK_MAX_RUNNING, HOOK_QUEUE_MAX)))
		log_error("cannot start the hook runner: hooks are not run");
	h = eng->hooks;
	pthread_mutex_unlock(&eng->hooks_lock);
	return h;
}

/* The hooks of enforcing checks (relay.notify): queued, never waited for. */
static void run_hooks(engine_snapshot *snap, const pipeline_run *run)
{
	const pipeline *p = &snap->cfg->pipeline;

	for (int i = 0; i < CHECK_COUNT; i++) {
		const check_effects *eff = &run->effects[i];

		if (!run->decided[i] || !eff->hook_argv || eff->hook_argv->n == 0 ||
		    p->checks[i].mode != CHECK_MODE_ENFORCE)
			continue;
		/* Gated: only the write that created the record runs it (a failed write: not at all). */
		if (eff->hook_gate >= 0 &&
		    ((size_t)eff->hook_gate >= eff->nq || eff->q[eff->hook_gate].kind != QUERY_KV ||
		     eff->q[eff->hook_gate].status != QUERY_OK || eff->q[eff->hook_gate].u.kv.found))
			continue;
		hook_run(hooks_of(snap->eng), eff->hook_argv->v, eff->hook_argv->n, eff->hook_names,
		         eff->hook_values, eff->hook_timeout_ms);
	}
}

/*
 * The metrics of a decision that gets a log line (docs/metrics.md): the
 * one place both front ends pass. In shadow mode, what enforce would do.
 */
static void count_verdict(int check, const check_verdict *v)
{
	stats_mode mode = v->mode == CHECK_MODE_SHADOW ? STATS_MODE_SHADOW : STATS_MODE_ENFORCE;
	decide_action action =
	    mode == STATS_MODE_SHADOW && v->enforce_action != DECIDE_CONTINUE ? v->enforce_action : v->action;

	stats_decision(check, action, mode);
	if (check == CHECK_ID_TRAPS && strcmp(v->reason, "trap") == 0)
		stats_trap_hit(mode);
	else if (check == CHECK_ID_GREYLIST)
		stats_greylist(v->reason, mode);
	else if (check == CHECK_ID_RELAY && strcmp(v->reason, "relay") == 0)
		stats_relay_trip(mode);
	else if (check == CHECK_ID_RATELIMIT && strcmp(v->reason, "rate limited") == 0)
		stats_ratelimit_hit(mode);
}

static void log_stage(engine *eng, const pipeline *p, const pipeline_run *run, const decide_facts *facts)
{
	for (int i = 0; i < CHECK_COUNT; i++) {
		const check_verdict *v = &run->verdict[i];

		if (!run->decided[i] || !v->reason)
			continue;
		count_verdict(i, v);
		if (run->ctx.stage == CHECK_STAGE_EOM)
			log_end_of_message(facts, v, run->ctx.msg);
		else
			log_verdict(p, facts, v, &eng->check_errors[i]);
	}
}

/* What the message remembers of a recipient's final verdict, for the end of message. */
static void count_recipient(check_msg *msg, const check_verdict *v)
{
	if (v->action == DECIDE_DROP_COPY)
		msg->ntraps++;
	else if (v->action == DECIDE_CONTINUE || v->action == DECIDE_HOLD)
		msg->nothers++;
}

/*
 * A stage's working state (some 75 KB) lives in one buffer per thread, on
 * the heap: not on the stack, since libmilter runs each connection on a
 * thread of its own and glibc gives an exiting thread's stack pages back
 * (30 KB more of stack cost every milter session 13% more CPU, make
 * bench-compare), and not a malloc per stage, which a sanitizer build's
 * quarantine turns into memory growth under load.
 */
static pthread_key_t run_key;
static pthread_once_t run_key_once = PTHREAD_ONCE_INIT;

static void run_key_make(void)
{
	(void)pthread_key_create(&run_key, free);
}

static pipeline_run *run_buffer(void)
{
	pipeline_run *run;

	pthread_once(&run_key_once, run_key_make);
	run = pthread_getspecific(run_key);
	if (!run && (run = malloc(sizeof(*run))) && pthread_setspecific(run_key, run) != 0) {
		free(run);
		run = NULL;
	}
	return run;
}

/*
 * planning: called by engine_dns_plan, whose engine_stage follows with the
 * same facts but the answers: it prepares again only if they changed
 * sender_verified, the one input of decide_prepare they can change (a
 * second decide_prepare of every DNS request was a visible part of the
 * cached-path profile).
 */
static void prepare_txn(engine_msg *m, check_stage stage, const decide_facts *facts, bool planning)
{
	decide_facts f = *facts;
	bool planned = !planning && m->plan_verified >= 0 && m->plan_stage == stage;
	signed char verified = -1;

	/* Again after DNS: an SPF result can verify the sender (decide_facts.sender_verified). */
	if (stage == CHECK_STAGE_MAIL || !m->prepared || (facts->dns && facts->dns->spf.wanted)) {
		f.sender_verified = f.sender_verified || spfcheck_verified(facts->dns, &m->state);
		verified = (signed char)f.sender_verified;
		if (!planned || m->plan_verified != verified)
			decide_prepare(&m->snap->cfg->decide, &f, &m->txn);
		m->prepared = true;
	}
	m->plan_verified = planning ? verified : -1;
	m->plan_stage = stage;
}

bool engine_dns_plan(engine_msg *m, check_stage stage, unsigned checks, const decide_facts *facts,
                     dnsplan *plan)
{
	pipeline_run *run = run_buffer();
	decide_facts asked = *facts;

	dnsplan_init(plan);
	m->plan_verified = -1; /* until prepare_txn says otherwise: nothing of an earlier plan carries over */
	if (!run || !m->snap)
		return false;
	asked.dns = NULL;
	prepare_txn(m, stage, &asked, true);
	pipeline_begin(run, stage, checks, &asked, &m->txn, &m->state, (int64_t)time(NULL));
	pipeline_plan_dns(&m->snap->cfg->pipeline, run, plan);
	return !dnsplan_empty(plan);
}

check_verdict engine_stage(engine_msg *m, check_stage stage, unsigned checks, const decide_facts *facts)
{
	engine_snapshot *snap = m->snap;
	const pipeline *p = &snap->cfg->pipeline;
	pipeline_run *run = run_buffer();
	check_verdict out;

	if (!run) {
		log_error("%s: out of memory for a decision; the transaction goes on unjudged",
		          facts->queue_id ? facts->queue_id : "NOQUEUE");
		out = check_continue();
		/* It gets the message: the end of message must not take it for a trap-only message. */
		if (stage == CHECK_STAGE_RCPT)
			count_recipient(&m->state, &out);
		return out;
	}
	prepare_txn(m, stage, facts, false);
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	pipeline_begin(run, stage, checks, facts, &m->txn, &m->state, (int64_t)ts.tv_sec);
	/* Milliseconds for the greylist's SQLite clock: an early retry within the same second is one. */
	run->ctx.now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	stats_dns_plan(facts->dns);
	/* One decision, one look for other hosts' news (store.h): not one per store call. */
	store_decision_begin(snap->ss ? snap->ss->st : NULL);
	if (pipeline_needs(p, run) > 0) {
		ask_store(snap, run->q, run->nq, run->ctx.now, STATS_CALL_QUERIES);
	}
	for (size_t from; pipeline_decide(p, run, &from);) {
		ask_store(snap, run->q + from, run->nq - from, run->ctx.now, STATS_CALL_QUERIES);
	}
	apply_effects(snap, run, facts);
	store_decision_end(snap->ss ? snap->ss->st : NULL);
	run_hooks(snap, run);
	log_stage(snap->eng, p, run, facts);
	m->state = run->msg;
	/* Once a message: later stages read it (a timeout is not remembered, the next stage tries again). */
	spfcheck_remember(facts->dns, &m->state);
	spfcheck_header_sent(&run->final, &m->state);
	if (stage == CHECK_STAGE_RCPT)
		count_recipient(&m->state, &run->final);
	out = run->final;
	return out;
}

/*
 * greylist.maintenance of the config in force: only the host where it is
 * true purges the greylist's SQLite tables (store_greylist_purge), so
 * that hosts sharing one file do not all scan it. Whatever the check's
 * mode: a greylist turned off still has its rows to expire.
 */
static bool greylist_maintenance(const config *cfg)
{
	const greylist_conf *gc = cfg->pipeline.checks[CHECK_ID_GREYLIST].conf;

	return gc && gc->maintenance;
}

/* Expired triplets and auto-whitelisted clients, in the store's chunks; Redis expires its own. */
static void purge_greylist(engine *eng, store *st, bool maintenance)
{
	struct timespec ts;
	uint64_t purged = 0;

	if (!maintenance)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	if (store_greylist_purge(st, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, &purged) != STORE_OK)
		log_store_error(eng, STORE_UPDATES, "greylist purge");
	else {
		store_worked(eng, STORE_UPDATES);
		if (purged)
			log_info("purged %llu expired greylist records", (unsigned long long)purged);
	}
}

void engine_count_entries(engine *eng)
{
	engine_snapshot *snap = engine_acquire(eng);
	uint64_t counts[STORE_KEY_TYPES];
	int64_t now = (int64_t)time(NULL);

	if (store_count_types(snap->ss->st, now, counts) == STORE_OK)
		stats_blocklist_entries(counts, now);
	else
		log_debug("metrics: the blocklist's entries not counted: %s", store_last_error());
	engine_release(snap);
}

void engine_purge(engine *eng)
{
	engine_snapshot *snap = engine_acquire(eng);
	uint64_t purged = 0, answers;
	if (store_filter_answers(snap->ss->st, &answers))
		log_debug(
		    "store: the absent-key filter answered %llu lookups without asking %s since the store "
		    "was opened",
		    (unsigned long long)answers, store_backend_name(snap->ss->st));
	struct timespec a;
	clock_gettime(CLOCK_MONOTONIC, &a);
	store_status rc = store_purge(snap->ss->st, (int64_t)time(NULL), &purged);
	stats_store_duration(snap->cfg->store.backend, STATS_CALL_PURGE, seconds_since(&a));
	if (rc != STORE_OK) {
		log_store_error(eng, STORE_UPDATES, "purge");
	} else {
		store_worked(eng, STORE_UPDATES);
		if (purged)
			log_info("purged %llu expired blocklist entries", (unsigned long long)purged);
	}
	purge_greylist(eng, snap->ss->st, greylist_maintenance(snap->cfg));
	engine_release(snap);
}
