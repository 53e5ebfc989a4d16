/*
 * dns: libunbound behind a small asynchronous API (dns.h). Offers queries
 * with callbacks delivered by dns_process(), cancellation, a bound on the
 * queries in flight, and a blocking wait for threads that may block (the
 * milter's). Errors: dns_new() writes why into err; a query that cannot
 * start returns -1 and is the caller's temporary failure.
 */
#include "dns/dns.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unbound.h>

#include "core/addr.h"
#include "log.h"

#define MAX_RECORDS 64       /* records of one answer handed on; more are ignored */
#define FULL_LOG_INTERVAL 60 /* seconds between lines about max_inflight */
#define RCODE_NXDOMAIN 3     /* RFC 1035 4.1.1 */

/*
 * The answer cache in front of libunbound's (dns.h): a fixed array
 * allocated with the resolver, so its memory never grows, in sets of
 * ACACHE_WAYS slots. Not direct-mapped: there, two names of one load
 * sharing a slot (15% of the bench's 130) evict each other on every
 * request, and each miss is a round trip through libunbound's thread,
 * which the cached-path profile showed as the biggest cost after the
 * sockets. An answer that does not fit a slot is simply not kept.
 */
#define ACACHE_SLOTS 1024 /* answers kept per resolver */
#define ACACHE_WAYS 4     /* slots a name may use: one set */
#define ACACHE_SETS (ACACHE_SLOTS / ACACHE_WAYS)
#define ACACHE_RECORDS 16   /* records of one kept answer */
#define ACACHE_DATA 480     /* RDATA bytes of one kept answer, all records together */
#define ACACHE_NAME 256     /* the escaped name with its NUL */
#define ACACHE_TTL_MAX 3600 /* seconds: a zone's longer TTL is cut to this */

typedef struct aentry {
	int64_t expires_ms; /* dns_now_ms() clock; 0: an empty slot */
	uint32_t hash;      /* acache_hash() of name and type: most mismatches without a string compare */
	int type;
	dns_status status;
	int rcode;
	unsigned count;
	uint16_t len[ACACHE_RECORDS];
	unsigned char data[ACACHE_DATA];
	char name[ACACHE_NAME];
} aentry;

/*
 * A cache hit waiting for delivery: a copy of the slot's answer (the slot
 * may change), its used RDATA only (a slot is mostly empty), allocated
 * with its qrec.
 */
typedef struct ahit {
	dns_status status;
	int rcode;
	unsigned count;
	uint16_t len[ACACHE_RECORDS];
	unsigned char data[];
} ahit;

typedef struct qrec {
	dns_resolver *r;
	dns_cb cb;
	void *arg;
	int async_id;
	int type;
	ahit *hit; /* answered from the cache (after the qrec, one allocation): on the ready list */
	struct qrec *prev, *next;   /* the resolver's queries in flight, hits included */
	struct qrec *rprev, *rnext; /* the ready list */
	char name[ACACHE_NAME];     /* the escaped name; "": too long to cache */
} qrec;

struct dns_resolver {
	struct ub_ctx *ctx;
	pthread_mutex_t lock; /* recursive: callbacks run under it and may query */
	pthread_cond_t delivered;
	bool polling; /* a dns_wait() thread is polling the fd */
	unsigned inflight, max_inflight;
	qrec *head;
	qrec *ready_head, *ready_tail; /* cache hits waiting for delivery, oldest first */
	aentry *cache;                 /* ACACHE_SLOTS */
	log_ratelimit full;
};

const char *dns_status_name(dns_status s)
{
	switch (s) {
	case DNS_OK:
		return "answer";
	case DNS_NXDOMAIN:
		return "NXDOMAIN";
	case DNS_NODATA:
		return "no data";
	case DNS_TEMPFAIL:
		break;
	}
	return "temporary failure";
}

dns_status dns_status_of(int err, int rcode, bool havedata, bool bogus)
{
	if (err != 0 || bogus)
		return DNS_TEMPFAIL;
	if (rcode == RCODE_NXDOMAIN)
		return DNS_NXDOMAIN;
	if (rcode != 0) /* SERVFAIL, REFUSED, NOTIMP, FORMERR...: the name's state is unknown */
		return DNS_TEMPFAIL;
	return havedata ? DNS_OK : DNS_NODATA;
}

int64_t dns_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- setup ---- */

static bool forwarder_is_loopback(const char *fwd)
{
	char host[64];
	const char *at = strchr(fwd, '@');
	size_t n = at ? (size_t)(at - fwd) : strlen(fwd);
	addr_ip ip;

	if (n >= sizeof(host))
		return false;
	memcpy(host, fwd, n);
	host[n] = '\0';
	if (!addr_ip_parse(host, &ip))
		return false;
	if (ip.version == 4)
		return ip.bytes[0] == 127;
	return memcmp(ip.bytes, (const uint8_t[16]){[15] = 1}, 16) == 0;
}

static int set_option(struct ub_ctx *ctx, const char *opt, const char *val, char *err, size_t errlen)
{
	int rc = ub_ctx_set_option(ctx, opt, val);

	if (rc != 0)
		snprintf(err, errlen, "dns: %s %s: %s", opt, val, ub_strerror(rc));
	return rc == 0 ? 0 : -1;
}

/*
 * Forwarding: the forwarders answer the reverse zones of private and
 * documentation networks too, instead of libunbound's built-in empty
 * zones (RFC 6303): the forwarder is the site's own resolver, with its
 * own policy for them (it may serve its internal hosts' names). Without
 * forwarders those queries never leave the host, as with any unbound.
 */
static int forward_private_zones(struct ub_ctx *ctx, char *err, size_t errlen)
{
	static const char *const zones[] = {
	    "2.0.192.in-addr.arpa. nodefault", "100.51.198.in-addr.arpa. nodefault",
	    "113.0.203.in-addr.arpa. nodefault", "8.b.d.0.1.0.0.2.ip6.arpa. nodefault"};

	if (set_option(ctx, "unblock-lan-zones:", "yes", err, errlen) < 0 ||
	    set_option(ctx, "insecure-lan-zones:", "yes", err, errlen) < 0)
		return -1;
	for (size_t i = 0; i < sizeof(zones) / sizeof(zones[0]); i++)
		if (set_option(ctx, "local-zone:", zones[i], err, errlen) < 0)
			return -1;
	return 0;
}

static int configure(struct ub_ctx *ctx, const dns_settings *s, char *err, size_t errlen)
{
	char half[32];
	bool loopback = false;
	int rc;

	/* The two caches share cache_mib: libunbound's defaults are 4 MiB each. */
	snprintf(half, sizeof(half), "%llu", (unsigned long long)s->cache_mib * 1024 * 1024 / 2);
	if ((rc = ub_ctx_async(ctx, 1)) != 0) {
		snprintf(err, errlen, "dns: threaded mode: %s", ub_strerror(rc));
		return -1;
	}
	if (set_option(ctx, "msg-cache-size:", half, err, errlen) < 0 ||
	    set_option(ctx, "rrset-cache-size:", half, err, errlen) < 0)
		return -1;
	for (size_t i = 0; i < s->nforwarders; i++) {
		if ((rc = ub_ctx_set_fwd(ctx, s->forwarders[i])) != 0) {
			snprintf(err, errlen, "dns: forwarder %s: %s", s->forwarders[i], ub_strerror(rc));
			return -1;
		}
		loopback = loopback || forwarder_is_loopback(s->forwarders[i]);
	}
	if (s->nforwarders > 0 && forward_private_zones(ctx, err, errlen) < 0)
		return -1;
	/* A local forwarder (a caching resolver on the host) is what unbound refuses by default. */
	return loopback ? set_option(ctx, "do-not-query-localhost:", "no", err, errlen) : 0;
}

dns_resolver *dns_new(const dns_settings *s, char *err, size_t errlen)
{
	dns_resolver *r = calloc(1, sizeof(*r));
	pthread_mutexattr_t ma;
	pthread_condattr_t ca;

	if (r == NULL) {
		snprintf(err, errlen, "dns: out of memory");
		return NULL;
	}
	if ((r->cache = calloc(ACACHE_SLOTS, sizeof(*r->cache))) == NULL ||
	    (r->ctx = ub_ctx_create()) == NULL) {
		snprintf(err, errlen, "dns: cannot create a libunbound context");
		free(r->cache);
		free(r);
		return NULL;
	}
	if (configure(r->ctx, s, err, errlen) < 0) {
		ub_ctx_delete(r->ctx);
		free(r->cache);
		free(r);
		return NULL;
	}
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&r->lock, &ma);
	pthread_mutexattr_destroy(&ma);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->delivered, &ca);
	pthread_condattr_destroy(&ca);
	r->max_inflight = s->max_inflight ? s->max_inflight : 1;
	r->full.interval = FULL_LOG_INTERVAL;
	return r;
}

void dns_free(dns_resolver *r)
{
	if (r == NULL)
		return;
	ub_ctx_delete(r->ctx); /* stops libunbound's thread; no callback runs after this */
	while (r->head != NULL) {
		qrec *q = r->head;

		r->head = q->next;
		free(q);
	}
	pthread_cond_destroy(&r->delivered);
	pthread_mutex_destroy(&r->lock);
	free(r->cache);
	free(r);
}

/* ---- queries ---- */

void dns_lock(dns_resolver *r)
{
	pthread_mutex_lock(&r->lock);
}

void dns_unlock(dns_resolver *r)
{
	pthread_mutex_unlock(&r->lock);
}

int dns_fd(const dns_resolver *r)
{
	return ub_fd(r->ctx);
}

unsigned dns_inflight(dns_resolver *r)
{
	unsigned n;

	dns_lock(r);
	n = r->inflight;
	dns_unlock(r);
	return n;
}

static void unlink_rec(dns_resolver *r, qrec *q)
{
	if (q->prev)
		q->prev->next = q->next;
	else
		r->head = q->next;
	if (q->next)
		q->next->prev = q->prev;
	r->inflight--;
}

/* ---- the answer cache ---- */

/* FNV-1a over the name with ASCII letters folded (names compare case-insensitively) and the type. */
static uint32_t acache_hash(const char *name, int type)
{
	uint32_t h = 2166136261u ^ (uint32_t)type;

	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ (uint32_t)(*p >= 'A' && *p <= 'Z' ? *p | 0x20 : *p)) * 16777619u;
	return h;
}

static aentry *acache_set(dns_resolver *r, uint32_t h)
{
	return &r->cache[(h % ACACHE_SETS) * ACACHE_WAYS];
}

/* The slot of the set holding (name, type), live or expired, or NULL. */
static aentry *acache_find(aentry *set, uint32_t h, const char *name, int type)
{
	for (int i = 0; i < ACACHE_WAYS; i++) {
		aentry *e = &set[i];

		if (e->expires_ms != 0 && e->hash == h && e->type == type && strcasecmp(e->name, name) == 0)
			return e;
	}
	return NULL;
}

/* The live answer for (name, type, class IN), or NULL (none, expired). */
static const aentry *acache_get(dns_resolver *r, const char *name, int type)
{
	uint32_t h = acache_hash(name, type);
	const aentry *e = acache_find(acache_set(r, h), h, name, type);

	return e != NULL && e->expires_ms > dns_now_ms() ? e : NULL;
}

static size_t acache_used(const aentry *e)
{
	size_t used = 0;

	for (unsigned i = 0; i < e->count; i++)
		used += e->len[i];
	return used;
}

/*
 * Where (name, type) is kept: its own slot, else an empty or expired one,
 * else the one that expires first (the least to lose).
 */
static aentry *acache_victim(aentry *set, uint32_t h, const char *name, int type, int64_t now)
{
	aentry *e = acache_find(set, h, name, type), *first = &set[0];

	if (e != NULL)
		return e;
	for (int i = 0; i < ACACHE_WAYS; i++) {
		if (set[i].expires_ms <= now)
			return &set[i];
		if (set[i].expires_ms < first->expires_ms)
			first = &set[i];
	}
	return first;
}

/*
 * Keeps a final answer (records, NXDOMAIN, no data) for its TTL as
 * libunbound reports it (for a negative answer, what the zone's SOA
 * allows), at most ACACHE_TTL_MAX. A failure is never kept, nor an
 * answer without a TTL or too big for a slot.
 */
static void acache_put(dns_resolver *r, const char *name, int type, const dns_answer *ans, int ttl)
{
	size_t total = 0, off = 0;
	uint32_t h = acache_hash(name, type);
	int64_t now = dns_now_ms();
	aentry *e;

	if (ttl <= 0 || !name[0] || ans->count > ACACHE_RECORDS ||
	    (ans->status != DNS_OK && ans->status != DNS_NXDOMAIN && ans->status != DNS_NODATA))
		return;
	for (size_t i = 0; i < ans->count; i++)
		total += ans->rr[i].len;
	if (total > ACACHE_DATA)
		return;
	e = acache_victim(acache_set(r, h), h, name, type, now);
	for (size_t i = 0; i < ans->count; i++) {
		memcpy(e->data + off, ans->rr[i].data, ans->rr[i].len);
		e->len[i] = (uint16_t)ans->rr[i].len;
		off += ans->rr[i].len;
	}
	e->count = (unsigned)ans->count;
	e->hash = h;
	e->type = type;
	e->status = ans->status;
	e->rcode = ans->rcode;
	memcpy(e->name, name, strlen(name) + 1);
	e->expires_ms = now + (int64_t)(ttl < ACACHE_TTL_MAX ? ttl : ACACHE_TTL_MAX) * 1000;
}

static void ready_push(dns_resolver *r, qrec *q)
{
	q->rprev = r->ready_tail;
	q->rnext = NULL;
	if (r->ready_tail)
		r->ready_tail->rnext = q;
	else
		r->ready_head = q;
	r->ready_tail = q;
}

static void ready_unlink(dns_resolver *r, qrec *q)
{
	if (q->rprev)
		q->rprev->rnext = q->rnext;
	else
		r->ready_head = q->rnext;
	if (q->rnext)
		q->rnext->rprev = q->rprev;
	else
		r->ready_tail = q->rprev;
}

/* Delivers the cache hits waiting, including those their callbacks add. */
static void deliver_ready(dns_resolver *r)
{
	while (r->ready_head != NULL) {
		qrec *q = r->ready_head;
		const ahit *e = q->hit;
		dns_rr rr[ACACHE_RECORDS];
		dns_answer ans = {.status = e->status, .rcode = e->rcode, .rr = rr, .count = e->count};
		size_t off = 0;

		for (unsigned i = 0; i < e->count; i++) {
			rr[i].data = e->data + off;
			rr[i].len = e->len[i];
			off += e->len[i];
		}
		ready_unlink(r, q);
		unlink_rec(r, q);
		q->cb(q->arg, &ans);
		free(q);
	}
}

static void on_result(void *arg, int err, struct ub_result *res)
{
	qrec *q = arg;
	dns_rr rr[MAX_RECORDS];
	dns_answer ans = {.rcode = res ? res->rcode : -1, .rr = rr};

	unlink_rec(q->r, q);
	ans.status = dns_status_of(err, res ? res->rcode : 0, res && res->havedata, res && res->bogus);
	for (size_t i = 0; ans.status == DNS_OK && res->data[i] != NULL && ans.count < MAX_RECORDS; i++) {
		rr[ans.count].data = (const unsigned char *)res->data[i];
		rr[ans.count].len = (size_t)res->len[i];
		ans.count++;
	}
	if (ans.status == DNS_OK && ans.count == 0)
		ans.status = DNS_NODATA;
	if (err != 0)
		log_debug("dns: %s", ub_strerror(err));
	else if (res != NULL && !res->bogus)
		acache_put(q->r, q->name, q->type, &ans, res->ttl);
	q->cb(q->arg, &ans);
	if (res)
		ub_resolve_free(res);
	free(q);
}

/* One line a minute while queries are refused for want of room. */
static void log_full(dns_resolver *r)
{
	uint64_t more = 0;

	if (log_ratelimit_pass(&r->full, dns_now_ms() / 1000, &more))
		log_warning("dns: %u queries in flight (dns.max_inflight): new ones are temporary failures "
		            "(%llu more since the last line)",
		            r->max_inflight, (unsigned long long)more);
}

/*
 * The name in the presentation form libunbound parses (RFC 1035 5.1): a
 * byte other than a letter, digit, '-', '_' or the dots between labels is
 * written \DDD. SPF builds names from what the client sent (macros of
 * the local part, the HELO name): a space or a '"' is a byte of a label,
 * never syntax. false when it does not fit. Byte by byte, without
 * snprintf: it runs for every query, cached answers included.
 */
static bool name_escape(const char *in, char *out, size_t outlen, size_t *len)
{
	size_t o = 0;

	for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
		bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		             (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.';
		if (o + (plain ? 1 : 4) >= outlen)
			return false;
		if (plain) {
			out[o++] = (char)*p;
			continue;
		}
		out[o++] = '\\';
		out[o++] = (char)('0' + *p / 100);
		out[o++] = (char)('0' + *p / 10 % 10);
		out[o++] = (char)('0' + *p % 10);
	}
	out[o] = '\0';
	*len = o;
	return true;
}

/*
 * A query's record; a hit's answer (e) copied in after it, in the same
 * allocation (hits are most queries: one allocation, not two). The name
 * is kept only for a miss, whose answer goes into the cache.
 */
static qrec *qrec_new(dns_resolver *r, const char *wire_name, size_t len, int type, const aentry *e)
{
	size_t used = e ? acache_used(e) : 0;
	qrec *q = malloc(sizeof(*q) + (e ? sizeof(ahit) + used : 0));

	if (q == NULL)
		return NULL;
	memset(q, 0, offsetof(qrec, name));
	q->r = r;
	q->type = type;
	q->name[0] = '\0';
	if (e != NULL) {
		q->hit = (ahit *)(q + 1);
		q->hit->status = e->status;
		q->hit->rcode = e->rcode;
		q->hit->count = e->count;
		memcpy(q->hit->len, e->len, sizeof(q->hit->len));
		memcpy(q->hit->data, e->data, used);
	} else if (len < sizeof(q->name)) {
		memcpy(q->name, wire_name, len + 1);
	}
	return q;
}

int dns_query(dns_resolver *r, const char *name, int type, dns_cb cb, void *arg, uint64_t *id)
{
	char wire_name[4 * 256];
	size_t len;
	qrec *q;
	int rc;

	if (!name_escape(name, wire_name, sizeof(wire_name), &len))
		return -1;

	dns_lock(r);
	if (r->inflight >= r->max_inflight) {
		log_full(r);
		dns_unlock(r);
		return -1;
	}
	if ((q = qrec_new(r, wire_name, len, type,
	                  len < ACACHE_NAME ? acache_get(r, wire_name, type) : NULL)) == NULL) {
		dns_unlock(r);
		return -1;
	}
	q->cb = cb;
	q->arg = arg;
	/* A hit never calls back from here: the caller may not be ready for it (dns.h). */
	if (q->hit != NULL) {
		ready_push(r, q);
	} else if ((rc = ub_resolve_async(r->ctx, wire_name, type, 1 /* IN */, q, on_result, &q->async_id)) !=
	           0) {
		log_debug("dns: %s type %d: %s", name, type, ub_strerror(rc));
		free(q);
		dns_unlock(r);
		return -1;
	}
	q->next = r->head;
	if (r->head)
		r->head->prev = q;
	r->head = q;
	r->inflight++;
	*id = (uint64_t)(uintptr_t)q;
	dns_unlock(r);
	return 0;
}

void dns_cancel(dns_resolver *r, uint64_t id)
{
	qrec *q = (qrec *)(uintptr_t)id;

	dns_lock(r);
	if (q->hit != NULL)
		ready_unlink(r, q);
	else /* Once ub_cancel returns, the answer is dropped even if it already waits in the pipe. */
		ub_cancel(r->ctx, q->async_id);
	unlink_rec(r, q);
	free(q);
	dns_unlock(r);
}

bool dns_has_ready(dns_resolver *r)
{
	bool ready;

	dns_lock(r);
	ready = r->ready_head != NULL;
	dns_unlock(r);
	return ready;
}

void dns_deliver(dns_resolver *r)
{
	dns_lock(r);
	deliver_ready(r);
	pthread_cond_broadcast(&r->delivered);
	dns_unlock(r);
}

int dns_process(dns_resolver *r)
{
	int rc;

	dns_lock(r);
	rc = ub_process(r->ctx);
	deliver_ready(r);
	pthread_cond_broadcast(&r->delivered);
	dns_unlock(r);
	if (rc != 0)
		log_warning("dns: %s", ub_strerror(rc));
	return rc == 0 ? 0 : -1;
}

/* ---- waiting (threads that may block) ---- */

static struct timespec abs_ms(int64_t ms)
{
	return (struct timespec){.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
}

bool dns_wait(dns_resolver *r, bool (*done)(void *arg), void *arg, int64_t deadline_ms)
{
	bool ok;

	dns_lock(r);
	while (!(ok = done(arg))) {
		int64_t left = deadline_ms - dns_now_ms();

		if (r->ready_head != NULL) { /* cache hits: no need to poll */
			deliver_ready(r);
			pthread_cond_broadcast(&r->delivered);
			continue;
		}
		if (left <= 0)
			break;
		if (r->polling) {
			struct timespec until = abs_ms(deadline_ms);

			pthread_cond_timedwait(&r->delivered, &r->lock, &until);
			continue;
		}
		r->polling = true;
		dns_unlock(r);
		struct pollfd pfd = {.fd = ub_fd(r->ctx), .events = POLLIN};

		if (poll(&pfd, 1, (int)(left > 1000 ? 1000 : left)) < 0 && errno != EINTR)
			log_debug("dns: poll: %s", strerror(errno));
		dns_lock(r);
		r->polling = false;
		if (pfd.revents & POLLIN)
			ub_process(r->ctx);
		deliver_ready(r);
		pthread_cond_broadcast(&r->delivered); /* also: another thread may poll now */
	}
	dns_unlock(r);
	return ok;
}
