/*
 * spf: an asynchronous RFC 7208 check_host() evaluator. It does no I/O: it
 * asks an abstract resolver (spf_resolver) for DNS records and is driven by
 * the resolver's callbacks, so the daemon can back it with libunbound's
 * asynchronous API and the tests with zone data (docs/spf.md).
 *
 * Use: spf_new() with the identity, the resolver and a completion callback;
 * spf_start(); the completion callback runs exactly once, possibly from
 * inside spf_start() when the resolver answers synchronously. spf_free()
 * may be called from the completion callback or at any time before: it
 * cancels a query in flight through the resolver's cancel().
 */
#ifndef SPAMTRAPD_SPF_H
#define SPAMTRAPD_SPF_H

#include <stddef.h>
#include <stdint.h>

enum spf_result {
	SPF_NONE,
	SPF_NEUTRAL,
	SPF_PASS,
	SPF_FAIL,
	SPF_SOFTFAIL,
	SPF_TEMPERROR,
	SPF_PERMERROR,
};

const char *spf_result_name(enum spf_result r); /* "none", "pass", ... */

/* The record types the evaluator asks for. */
enum spf_rrtype { SPF_RR_A, SPF_RR_AAAA, SPF_RR_MX, SPF_RR_TXT, SPF_RR_PTR };

enum spf_dns_status {
	SPF_DNS_OK,       /* records follow (count may still be 0: no data) */
	SPF_DNS_NXDOMAIN, /* the name does not exist */
	SPF_DNS_NODATA,   /* the name exists, no record of this type */
	SPF_DNS_TEMPFAIL, /* timeout, SERVFAIL, or any other failure */
};

/*
 * One record of an answer, in the form the evaluator wants:
 *   A: 4 bytes, AAAA: 16 bytes (network order);
 *   TXT: the record's character-strings joined with nothing between them;
 *   MX: the exchange's name, PTR: the target name (text, trailing dot optional).
 * The backend follows CNAMEs; only records of the asked type are given.
 */
struct spf_dns_rr {
	const unsigned char *data;
	size_t len;
};

/* Lent to the callback for the duration of the call only. */
struct spf_dns_answer {
	enum spf_dns_status status;
	const struct spf_dns_rr *rr;
	size_t count;
};

typedef void (*spf_dns_cb)(void *cbarg, const struct spf_dns_answer *ans);

/*
 * The resolver. submit() starts a query and returns 0 with *id set, or -1
 * (the query then counts as a temporary failure). It calls cb exactly once,
 * from submit() itself or later, unless cancel(ctx, id) is called first.
 * name has no trailing dot and at most 253 characters.
 */
struct spf_resolver {
	int (*submit)(void *ctx, const char *name, enum spf_rrtype type, spf_dns_cb cb, void *cbarg,
	              uint64_t *id);
	void (*cancel)(void *ctx, uint64_t id);
	void *ctx;
};

/* The identity checked and the context of the check. Copied by spf_new(). */
struct spf_request {
	int family;           /* AF_INET or AF_INET6 (IPv4-mapped IPv6 is IPv4) */
	unsigned char ip[16]; /* 4 or 16 bytes, network order */
	const char *mailfrom; /* MAIL FROM address without <>, "" or NULL for <> */
	const char *helo;     /* HELO/EHLO name */
	const char *receiver; /* our host name (%{r}); NULL: "unknown" */
	long long now;        /* %{t}, seconds since the epoch */
	int helo_identity;    /* 1: check the HELO identity (RFC 7208 2.3) */
};

struct spf_outcome {
	enum spf_result result;
	const char *explanation; /* fail with a usable exp=: the expanded text, else NULL */
	const char *reason;      /* short text: which term or error decided */
	const char *domain;      /* the domain checked first */
};

typedef void (*spf_done_cb)(void *arg, const struct spf_outcome *out);

/* Limits (RFC 7208 4.6.4 and our bounds). */
#define SPF_MAX_DNS_LOOKUPS 10
#define SPF_MAX_VOID_LOOKUPS 2
#define SPF_MAX_MX_NAMES 10
#define SPF_MAX_PTR_NAMES 10
#define SPF_MAX_DEPTH 12        /* include nesting; the lookup limit stops it first */
#define SPF_MAX_RECORD 4096     /* a longer SPF record is a permerror */
#define SPF_MAX_EXPLANATION 512 /* exp= text kept, longer is cut */

typedef struct spf_eval spf_eval;

/* NULL on out of memory or an unusable request (bad family). */
spf_eval *spf_new(const struct spf_request *req, const struct spf_resolver *res, spf_done_cb done, void *arg);
void spf_start(spf_eval *ev);
void spf_free(spf_eval *ev); /* accepts NULL; cancels a query in flight */

/*
 * Before completion: whether the result is already decided and only a
 * fail's exp= explanation is being looked up. Then 1 with *out set (no
 * explanation; reason and domain valid until spf_free): a caller whose
 * deadline passed uses it, as RFC 7208 6.2 drops an explanation that
 * cannot be had. Else 0.
 */
int spf_decided(const spf_eval *ev, struct spf_outcome *out);

/* Statistics for tests and metrics. */
unsigned spf_dns_lookups(const spf_eval *ev); /* mechanisms/modifiers counted */
unsigned spf_queries(const spf_eval *ev);     /* queries submitted in all */

#endif
