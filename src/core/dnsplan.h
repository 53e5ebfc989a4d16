/*
 * dnsplan: the DNS answers one stage's checks need, as data: the DNS
 * counterpart of the store's queries (core/query.h). The core stays pure
 * and no check ever waits on the network:
 *
 *   1. engine_dns_plan() asks each check of the stage that has DNS needs
 *      (check_def.plan_dns: dnsbl, spf) to add to a plan (pure);
 *   2. the front end has the resolver (src/dns/) answer the whole plan in
 *      parallel, asynchronously, by plan->timeout_ms (a policy worker goes
 *      on serving its other connections meanwhile);
 *   3. engine_stage() runs the checks with facts->dns pointing to the
 *      answered plan; a check reads its answers in check_ctx.dns.
 *
 * An answer still DNSPLAN_PENDING when the checks run was not there by the
 * deadline: a check treats it like DNSPLAN_TIMEOUT (its on_error), never as
 * a listing.
 */
#ifndef SPAMTRAPD_DNSPLAN_H
#define SPAMTRAPD_DNSPLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "spf/spf.h"

#define DNSPLAN_MAX_LOOKUPS 16 /* bounds dnsbl.sites */
#define DNSPLAN_MAX_ADDRS 8    /* A records kept of one answer; more are ignored */
#define DNSPLAN_NAME_MAX 256   /* a name (253 characters at most, no trailing dot) and its NUL */
#define DNSPLAN_HELO_MAX 256

typedef enum {
	DNSPLAN_PENDING,  /* no answer (yet) */
	DNSPLAN_FOUND,    /* A records: addr[0..naddr) */
	DNSPLAN_NXDOMAIN, /* the name does not exist: not listed */
	DNSPLAN_NODATA,   /* the name exists without an A record: not listed */
	DNSPLAN_TEMPFAIL, /* SERVFAIL, REFUSED, a network error */
	DNSPLAN_TIMEOUT   /* no answer by the deadline */
} dnsplan_status;

/* One A lookup (a DNSBL or DNSWL site's name for the client). */
typedef struct dnsplan_lookup {
	char name[DNSPLAN_NAME_MAX]; /* "7.2.0.192.bl.example.org": no trailing dot */
	uint8_t owner;               /* the CHECK_ID_* that asked: its answers only are its own */
	uint8_t tag;                 /* the owner's own index (dnsbl: the site) */
	dnsplan_status status;
	uint32_t addr[DNSPLAN_MAX_ADDRS]; /* host byte order: 127.0.0.2 is 0x7f000002 */
	unsigned naddr;
} dnsplan_lookup;

/* One SPF check_host() of the MAIL FROM identity (RFC 7208), or of HELO for <>. */
typedef struct dnsplan_spf {
	bool wanted;
	/* The identity, copied in when planned. */
	char client[ADDR_NET_STRLEN]; /* the client's address as text */
	char mailfrom[ADDR_MAX];      /* without <>; "" for the null sender (the HELO identity is checked) */
	char helo[DNSPLAN_HELO_MAX];
	/* The answer; done false: no outcome by the deadline (treated as temperror). */
	bool done;
	enum spf_result result;
	char explanation[SPF_MAX_EXPLANATION + 1]; /* fail with a usable exp=, else "" */
	char reason[128];                          /* which term or error decided, for the log */
} dnsplan_spf;

/*
 * The probes of greylist.spf_key: the same check_host() as spf (same
 * mailfrom, helo and everything else) with the client address replaced by
 * DNSPLAN_SPF_PROBE_V4 and _V6, documentation addresses no real server
 * sends from. A record that passes either authorises (nearly) everyone
 * ("+all", "ip4:0.0.0.0/0", "ip6:::/0"): its domain is no narrower a
 * greylist key than the client's network.
 */
#define DNSPLAN_SPF_PROBES 2
#define DNSPLAN_SPF_PROBE_V4 "192.0.2.1"
#define DNSPLAN_SPF_PROBE_V6 "2001:db8::1"

/*
 * What the resolver glue (src/dns/) answers: every lookup[0..nlookups),
 * spf when spf.wanted, and each probe[i] with probe[i].wanted, all in
 * parallel and each the same way (a dnsplan_spf is one check_host() of its
 * own client, mailfrom and helo; done, result, explanation, reason set
 * when it ends), all by timeout_ms.
 */
typedef struct dnsplan {
	int64_t timeout_ms; /* the longest wait any asking check allows */
	size_t nlookups;
	dnsplan_lookup lookup[DNSPLAN_MAX_LOOKUPS];
	dnsplan_spf spf;
	dnsplan_spf probe[DNSPLAN_SPF_PROBES]; /* probe[0]: DNSPLAN_SPF_PROBE_V4, probe[1]: _V6 */
} dnsplan;

/* An empty plan. */
void dnsplan_init(dnsplan *p);
/* Whether the plan asks anything. */
bool dnsplan_empty(const dnsplan *p);
/* Append an A lookup of name (copied); NULL when the plan is full or name is too long. */
dnsplan_lookup *dnsplan_add(dnsplan *p, uint8_t owner, uint8_t tag, const char *name);
/* Ask for SPF (idempotent); false when an identity part does not fit (then nothing is asked). */
bool dnsplan_want_spf(dnsplan *p, const char *client, const char *mailfrom, const char *helo);
/*
 * Ask for the probes too (idempotent): spf's identity checked from
 * DNSPLAN_SPF_PROBE_V4 and _V6. false (nothing asked) unless spf is wanted.
 */
bool dnsplan_want_spf_probes(dnsplan *p);
/* Raise the plan's timeout to at least ms. */
void dnsplan_timeout_at_least(dnsplan *p, int64_t ms);
/* Mark every lookup still pending, and an SPF check or probe not done, as timed out (the front end's
 * deadline). */
void dnsplan_expire(dnsplan *p);

#endif
