/*
 * dnsrun: answers one dnsplan (core/dnsplan.h) on a resolver (dns/dns.h):
 * all its A lookups and its SPF evaluations at once (spf, and the
 * greylist's probes when the plan has them: each one check_host() of
 * spf/spf.h through an spf_resolver adapter on the same resolver), filling
 * the plan's statuses, addresses and SPF outcomes. A failure is never an answer: SERVFAIL,
 * REFUSED, a network error, a malformed record or no room for the query
 * make a lookup DNSPLAN_TEMPFAIL (SPF: temperror), NXDOMAIN is
 * DNSPLAN_NXDOMAIN, an existing name without an A record DNSPLAN_NODATA.
 *
 * The caller owns the deadline: at plan->timeout_ms it calls
 * dnsrun_expire(), which cancels what is still in flight and marks it
 * DNSPLAN_TIMEOUT (dnsplan_expire). Event loops call dnsrun_start() and
 * are told by the done callback, from dns_process(); threads that may
 * block call dnsrun_wait().
 */
#ifndef SPAMTRAPD_DNSRUN_H
#define SPAMTRAPD_DNSRUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/dnsplan.h"
#include "dns/dns.h"
#include "spf/spf.h"

typedef struct dnsrun dnsrun;
typedef void (*dnsrun_done_fn)(void *arg);

/*
 * Starts every part of plan (which must outlive the run). receiver is our
 * host name for SPF's %{r} (NULL: "unknown"), now the time for %{t}.
 * done(arg) is called once, from dns_process(), when the last part is
 * answered; never from inside dnsrun_start(): a plan answered at once (or
 * whose queries could not start) is dnsrun_finished() on return. NULL on
 * out of memory: then the plan is expired (every part a timeout).
 */
dnsrun *dnsrun_start(dns_resolver *r, dnsplan *plan, const char *receiver, int64_t now, dnsrun_done_fn done,
                     void *arg);
/* Every part answered, or expired. */
bool dnsrun_finished(dnsrun *run);
/* The deadline: cancel what is in flight, mark it timed out (dnsplan_expire); done is not called. */
void dnsrun_expire(dnsrun *run);
/* Cancels what is in flight (a connection gone while it waited). Accepts NULL. */
void dnsrun_free(dnsrun *run);
/*
 * For threads that may block (the milter): wait until the run is finished
 * or deadline_ms (dns_now_ms() clock) passes, then expire what is left.
 */
void dnsrun_wait(dnsrun *run, int64_t deadline_ms);

/*
 * One record's RDATA in the form spf.h wants for type: A/AAAA the 4/16
 * address bytes, TXT the character-strings joined, MX the exchange and
 * PTR the target as text without the trailing dot. Writes at most outsize
 * bytes (no NUL) and sets *outlen; false when the RDATA is malformed or
 * does not fit (the record is then skipped), or the name is the root (a
 * null MX, RFC 7505).
 */
bool dnsrun_spf_record(enum spf_rrtype type, const unsigned char *rdata, size_t len, unsigned char *out,
                       size_t outsize, size_t *outlen);

#endif
