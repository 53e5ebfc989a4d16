/*
 * dns: an asynchronous stub/recursive resolver on libunbound, for the DNS
 * checks (core/dnsplan.h, issue 15). Recursive from the root by default,
 * or forwarding to the configured servers (dns.forwarders); libunbound's
 * own TTL cache, bounded (dns.cache_size); a bound on the queries in
 * flight (dns.max_inflight: beyond it a query fails at once and is a
 * temporary failure for the caller, one log line a minute).
 *
 * Threading: the resolver runs libunbound in threaded async mode
 * (ub_ctx_async(ctx, 1): a resolver thread of libunbound's, never a forked
 * process). Answers are delivered by dns_process(), in the thread that
 * calls it, when dns_fd() is readable. Every function locks the
 * resolver's recursive mutex, and answers are delivered with it held, so
 * one resolver may be shared by threads (the milter's, which wait with
 * dns_wait) and a callback may submit or cancel queries. A policy worker
 * has a resolver of its own: its answers then arrive on the thread that
 * owns the waiting connection, which needs no hand-off, and the mutex is
 * never contended. The price is one cache per worker.
 *
 * An answer cache in front of libunbound's (issue 15): libunbound's
 * threaded mode hands every query, even one its cache answers, to its
 * thread and back over a socket pair, tens of system calls. Final answers
 * (records, NXDOMAIN, no data; never a failure) are kept per resolver in
 * a fixed table, 4-way set-associative (1,024 answers of at most 16 records and
 * 480 bytes of RDATA, about 800 KiB, allocated with the resolver and
 * never grown; a bigger answer is not kept), keyed by the exact name
 * (letters case-insensitive) and type, for the TTL libunbound reports,
 * at most an hour. A hit is never delivered from dns_query(): it waits on
 * the resolver's ready list (dns_has_ready) for dns_process(),
 * dns_deliver() or dns_wait(), like any answer, and dns_cancel() drops it.
 *
 * There is no deadline here: the caller cancels what it no longer waits
 * for (dnsrun_expire). Errors: dns_new writes a message into err.
 */
#ifndef SPAMTRAPD_DNS_H
#define SPAMTRAPD_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Record types asked (RFC 1035, RFC 3596). */
enum { DNS_TYPE_A = 1, DNS_TYPE_PTR = 12, DNS_TYPE_MX = 15, DNS_TYPE_TXT = 16, DNS_TYPE_AAAA = 28 };

typedef enum {
	DNS_OK,       /* records of the asked type follow (count > 0) */
	DNS_NXDOMAIN, /* the name does not exist */
	DNS_NODATA,   /* the name exists, no record of the type */
	DNS_TEMPFAIL  /* SERVFAIL, REFUSED, any other rcode, a network error, a bogus answer, no room */
} dns_status;

const char *dns_status_name(dns_status s);

/*
 * What an answer means, from libunbound's result: err (the callback's
 * error code, nonzero: no result), the rcode, whether there is data and
 * whether validation found it bogus. An error is never an answer.
 */
dns_status dns_status_of(int err, int rcode, bool havedata, bool bogus);

/* One record's RDATA in wire form (names uncompressed), lent for the callback's duration. */
typedef struct dns_rr {
	const unsigned char *data;
	size_t len;
} dns_rr;

typedef struct dns_answer {
	dns_status status;
	int rcode; /* -1 when there was no response (err) */
	const dns_rr *rr;
	size_t count;
} dns_answer;

typedef void (*dns_cb)(void *arg, const dns_answer *ans);

typedef struct dns_settings {
	const char *const *forwarders; /* "192.0.2.1", "127.0.0.1@5353", "::1@53"; none: recursive */
	size_t nforwarders;
	unsigned max_inflight; /* queries in flight at once */
	unsigned cache_mib;    /* the message and RRset caches together, MiB */
} dns_settings;

typedef struct dns_resolver dns_resolver;

/* A resolver (libunbound's thread starts at the first query). NULL + err on failure. */
dns_resolver *dns_new(const dns_settings *s, char *err, size_t errlen);
void dns_free(dns_resolver *r); /* accepts NULL; queries in flight are dropped without callbacks */

/* Readable when answers wait for dns_process(). */
int dns_fd(const dns_resolver *r);
/* Deliver the answers that arrived and the cache hits (callbacks run here, under the lock). 0, or -1 on
 * error. */
int dns_process(dns_resolver *r);
/*
 * Cache hits wait for delivery: an event loop must call dns_deliver() (or
 * dns_process()) without waiting for dns_fd(), which they do not make readable.
 */
bool dns_has_ready(dns_resolver *r);
/* Deliver the cache hits only (no system call), including those their callbacks start. */
void dns_deliver(dns_resolver *r);

/*
 * Start a query of name (no trailing dot needed) and type. 0 with *id set:
 * cb is called exactly once, from dns_process(), dns_deliver() or
 * dns_wait() (never from here, even for a cache hit), unless dns_cancel(id) is
 * called first. -1: nothing started, cb never called (over max_inflight,
 * a bad name, out of memory): a temporary failure for the caller.
 */
int dns_query(dns_resolver *r, const char *name, int type, dns_cb cb, void *arg, uint64_t *id);
/* Cancel a query whose callback has not run; cb will not be called. */
void dns_cancel(dns_resolver *r, uint64_t id);
/* Queries in flight now. */
unsigned dns_inflight(dns_resolver *r);

/* The resolver's recursive mutex, for a caller whose state its callbacks touch (dnsrun). */
void dns_lock(dns_resolver *r);
void dns_unlock(dns_resolver *r);

/*
 * Block until done(arg) is true or deadline_ms (CLOCK_MONOTONIC
 * milliseconds) passes, delivering answers meanwhile; done is evaluated
 * under the lock. Several threads may wait at once on one resolver: one
 * of them polls dns_fd() and delivers everyone's answers, the others wait
 * on a condition it signals. Returns done(arg).
 */
bool dns_wait(dns_resolver *r, bool (*done)(void *arg), void *arg, int64_t deadline_ms);

/* CLOCK_MONOTONIC now, in milliseconds. */
int64_t dns_now_ms(void);

#endif
