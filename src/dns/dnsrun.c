/*
 * dnsrun: one dnsplan through the resolver (dnsrun.h). The run's state is
 * touched by the resolver's callbacks, which hold the resolver's lock, so
 * every entry point here takes that lock too: a resolver shared by the
 * milter's threads may deliver this run's answers on another thread.
 */
#include "dns/dnsrun.h"

#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/addr.h"
#include "core/text.h"

#define SPF_RECORDS_MAX 64 /* records of one answer handed to the evaluator; more are ignored */

typedef struct slot {
	struct dnsrun *run;
	size_t i;
	uint64_t id;
	bool pending;
} slot;

/*
 * The check_host() evaluations of the plan: spf, and the greylist's probes
 * (the same identity from other clients) where dnsplan.h has them.
 */
#ifdef DNSPLAN_SPF_PROBES
#define SPF_EVALS (1 + DNSPLAN_SPF_PROBES)
#else
#define SPF_EVALS 1
#endif

/* A query the SPF evaluator asked: an evaluation has one in flight at most (its spf_resolver id is this
 * record). */
typedef struct spfq {
	struct dnsrun *run;
	enum spf_rrtype type;
	spf_dns_cb cb;
	void *cbarg;
	uint64_t id; /* the resolver's */
} spfq;

/* One check_host() evaluation; its resolver's ctx. */
typedef struct spfslot {
	struct dnsrun *run;
	dnsplan_spf *s;
	spf_eval *ev;
	spfq q;
} spfslot;

struct dnsrun {
	dns_resolver *r;
	dnsplan *plan;
	slot lookup[DNSPLAN_MAX_LOOKUPS];
	spfslot spf[SPF_EVALS];
	unsigned pending; /* parts not answered */
	bool starting;    /* inside dnsrun_start: done is not called from there */
	atomic_bool finished;
	dnsrun_done_fn done;
	void *arg;
};

/* ---- records ---- */

/* A wire-form name (RFC 1035 3.1, uncompressed) as "a.b.c"; false when malformed or the root. */
static bool name_text(const unsigned char *p, size_t len, char *out, size_t outsize, size_t *outlen)
{
	size_t i = 0, o = 0;

	while (i < len && p[i] != 0) {
		size_t l = p[i++];

		if (l > 63 || i + l > len || o + l + 1 > outsize)
			return false; /* also a compression pointer (0xc0): never in libunbound's RDATA */
		if (o > 0)
			out[o++] = '.';
		for (size_t k = 0; k < l; k++) {
			unsigned char c = p[i + k];

			if (c <= ' ' || c == '.' || c >= 0x7f)
				return false; /* no usable host name */
			out[o++] = (char)c;
		}
		i += l;
	}
	if (i >= len || o == 0)
		return false;
	*outlen = o;
	return true;
}

/* RFC 7208 3.3: the character-strings of one TXT record, joined with nothing between them. */
static bool txt_join(const unsigned char *p, size_t len, unsigned char *out, size_t outsize, size_t *outlen)
{
	size_t i = 0, o = 0;

	while (i < len) {
		size_t l = p[i++];

		if (i + l > len || o + l > outsize)
			return false;
		memcpy(out + o, p + i, l);
		o += l;
		i += l;
	}
	*outlen = o;
	return true;
}

bool dnsrun_spf_record(enum spf_rrtype type, const unsigned char *rdata, size_t len, unsigned char *out,
                       size_t outsize, size_t *outlen)
{
	size_t want = type == SPF_RR_A ? 4 : 16;

	switch (type) {
	case SPF_RR_A:
	case SPF_RR_AAAA:
		if (len != want || outsize < want)
			return false;
		memcpy(out, rdata, want);
		*outlen = want;
		return true;
	case SPF_RR_TXT:
		return txt_join(rdata, len, out, outsize, outlen);
	case SPF_RR_MX: /* preference (2 bytes), exchange */
		return len > 2 && name_text(rdata + 2, len - 2, (char *)out, outsize, outlen);
	case SPF_RR_PTR:
		return name_text(rdata, len, (char *)out, outsize, outlen);
	}
	return false;
}

/* ---- completion ---- */

static void part_done(dnsrun *run)
{
	if (--run->pending > 0)
		return;
	atomic_store(&run->finished, true);
	if (!run->starting && run->done)
		run->done(run->arg);
}

static dnsplan_status plan_status(dns_status s)
{
	switch (s) {
	case DNS_OK:
		return DNSPLAN_FOUND;
	case DNS_NXDOMAIN:
		return DNSPLAN_NXDOMAIN;
	case DNS_NODATA:
		return DNSPLAN_NODATA;
	case DNS_TEMPFAIL:
		break;
	}
	return DNSPLAN_TEMPFAIL;
}

static void on_lookup(void *arg, const dns_answer *ans)
{
	slot *s = arg;
	dnsplan_lookup *l = &s->run->plan->lookup[s->i];

	s->pending = false;
	l->status = plan_status(ans->status);
	l->naddr = 0;
	for (size_t k = 0; k < ans->count && l->naddr < DNSPLAN_MAX_ADDRS; k++) {
		const unsigned char *d = ans->rr[k].data;

		if (ans->rr[k].len == 4)
			l->addr[l->naddr++] =
			    (uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 | (uint32_t)d[2] << 8 | d[3];
	}
	if (l->status == DNSPLAN_FOUND && l->naddr == 0)
		l->status = DNSPLAN_TEMPFAIL; /* malformed A records: an error, never "not listed" */
	part_done(s->run);
}

/* ---- the SPF evaluator's resolver ---- */

static int spf_type(enum spf_rrtype t)
{
	static const int types[] = {[SPF_RR_A] = DNS_TYPE_A,
	                            [SPF_RR_AAAA] = DNS_TYPE_AAAA,
	                            [SPF_RR_MX] = DNS_TYPE_MX,
	                            [SPF_RR_TXT] = DNS_TYPE_TXT,
	                            [SPF_RR_PTR] = DNS_TYPE_PTR};

	return types[t];
}

static enum spf_dns_status spf_status(dns_status s)
{
	switch (s) {
	case DNS_OK:
		return SPF_DNS_OK;
	case DNS_NXDOMAIN:
		return SPF_DNS_NXDOMAIN;
	case DNS_NODATA:
		return SPF_DNS_NODATA;
	case DNS_TEMPFAIL:
		break;
	}
	return SPF_DNS_TEMPFAIL;
}

/* Converts the answer into the evaluator's form; buf holds the converted records. */
static size_t spf_records(const spfq *q, const dns_answer *ans, struct spf_dns_rr *rr, unsigned char *buf,
                          size_t bufsize)
{
	size_t n = 0, used = 0;

	for (size_t k = 0; k < ans->count && n < SPF_RECORDS_MAX; k++) {
		size_t len;

		if (!dnsrun_spf_record(q->type, ans->rr[k].data, ans->rr[k].len, buf + used, bufsize - used,
		                       &len))
			continue;
		rr[n].data = buf + used;
		rr[n].len = len;
		used += len;
		n++;
	}
	return n;
}

/* Converted records of an answer this size or smaller need no allocation (an SPF record is most answers). */
#define SPF_ANSWER_STACK 1024

static void on_spf_answer(void *arg, const dns_answer *ans)
{
	spfq *q = arg;
	struct spf_dns_rr rr[SPF_RECORDS_MAX];
	struct spf_dns_answer sa = {.status = spf_status(ans->status), .rr = rr};
	unsigned char small[SPF_ANSWER_STACK];
	size_t bufsize = 0;
	unsigned char *buf = small;
	spf_dns_cb cb = q->cb;
	void *cbarg = q->cbarg;

	for (size_t k = 0; k < ans->count; k++)
		bufsize += ans->rr[k].len; /* a converted record is never longer than its RDATA */
	if (bufsize > sizeof(small))
		buf = malloc(bufsize);
	if (buf == NULL)
		sa.status = SPF_DNS_TEMPFAIL;
	else if (sa.status == SPF_DNS_OK)
		sa.count = spf_records(q, ans, rr, buf, bufsize);
	/* q is free from here: cb may submit the evaluator's next query into it */
	cb(cbarg, &sa);
	if (buf != small)
		free(buf);
}

static int spf_submit(void *ctx, const char *name, enum spf_rrtype type, spf_dns_cb cb, void *cbarg,
                      uint64_t *id)
{
	spfslot *e = ctx;
	spfq *q = &e->q;

	*q = (spfq){.run = e->run, .type = type, .cb = cb, .cbarg = cbarg};
	if (dns_query(e->run->r, name, spf_type(type), on_spf_answer, q, &q->id) < 0)
		return -1;
	*id = (uint64_t)(uintptr_t)q;
	return 0;
}

static void spf_cancel(void *ctx, uint64_t id)
{
	spfslot *e = ctx;
	spfq *q = (spfq *)(uintptr_t)id;

	dns_cancel(e->run->r, q->id);
}

static void on_spf_done(void *arg, const struct spf_outcome *out)
{
	spfslot *e = arg;
	dnsplan_spf *s = e->s;

	s->result = out->result;
	text_copy(s->explanation, sizeof(s->explanation), out->explanation ? out->explanation : "");
	text_copy(s->reason, sizeof(s->reason), out->reason ? out->reason : "");
	s->done = true;
	part_done(e->run);
}

/* Starts one check_host() of s's identity; false when it cannot start (then it stays not done). */
static bool spf_begin(dnsrun *run, spfslot *e, dnsplan_spf *s, const char *receiver, int64_t now)
{
	struct spf_resolver res = {.submit = spf_submit, .cancel = spf_cancel, .ctx = e};
	struct spf_request req = {.mailfrom = s->mailfrom, .helo = s->helo, .receiver = receiver, .now = now};
	addr_ip ip;

	e->run = run;
	e->s = s;
	if (!addr_ip_parse(s->client, &ip))
		return false;
	req.family = ip.version == 4 ? AF_INET : AF_INET6;
	memcpy(req.ip, ip.bytes, ip.version == 4 ? 4 : 16);
	if ((e->ev = spf_new(&req, &res, on_spf_done, e)) == NULL)
		return false;
	run->pending++;
	spf_start(e->ev);
	return true;
}

static void spf_begin_all(dnsrun *run, const char *receiver, int64_t now)
{
	dnsplan_spf *all[SPF_EVALS] = {&run->plan->spf};

#ifdef DNSPLAN_SPF_PROBES
	for (int i = 0; i < DNSPLAN_SPF_PROBES; i++)
		all[1 + i] = &run->plan->probe[i];
#endif
	for (int i = 0; i < SPF_EVALS; i++)
		if (all[i]->wanted && !spf_begin(run, &run->spf[i], all[i], receiver, now))
			snprintf(all[i]->reason, sizeof(all[i]->reason), "cannot start the SPF evaluation");
}

/* ---- the run ---- */

dnsrun *dnsrun_start(dns_resolver *r, dnsplan *plan, const char *receiver, int64_t now, dnsrun_done_fn done,
                     void *arg)
{
	dnsrun *run = calloc(1, sizeof(*run));

	if (run == NULL) {
		dnsplan_expire(plan);
		return NULL;
	}
	run->r = r;
	run->plan = plan;
	run->done = done;
	run->arg = arg;
	run->starting = true;
	run->pending = 1; /* held while starting, so no part finishes the run early */
	dns_lock(r);
	for (size_t i = 0; i < plan->nlookups; i++) {
		slot *s = &run->lookup[i];

		*s = (slot){.run = run, .i = i, .pending = true};
		run->pending++;
		if (dns_query(r, plan->lookup[i].name, DNS_TYPE_A, on_lookup, s, &s->id) < 0) {
			s->pending = false;
			plan->lookup[i].status = DNSPLAN_TEMPFAIL;
			run->pending--;
		}
	}
	spf_begin_all(run, receiver, now);
	part_done(run);
	run->starting = false;
	dns_unlock(r);
	return run;
}

bool dnsrun_finished(dnsrun *run)
{
	return atomic_load(&run->finished);
}

/* Cancel every part still in flight; under the lock. */
static void cancel_all(dnsrun *run)
{
	for (size_t i = 0; i < run->plan->nlookups; i++) {
		if (run->lookup[i].pending) {
			dns_cancel(run->r, run->lookup[i].id);
			run->lookup[i].pending = false;
		}
	}
	for (int i = 0; i < SPF_EVALS; i++) {
		spf_free(run->spf[i].ev); /* cancels its query in flight */
		run->spf[i].ev = NULL;
	}
	run->pending = 0;
}

/*
 * At the deadline, an evaluation that has its result and only looks up a
 * fail's exp= keeps the result (RFC 7208 6.2: an explanation that cannot
 * be had is dropped), rather than turning into a timeout.
 */
static void keep_decided(dnsrun *run)
{
	for (int i = 0; i < SPF_EVALS; i++) {
		struct spf_outcome out;
		dnsplan_spf *s = run->spf[i].s;

		if (run->spf[i].ev == NULL || s->done || !spf_decided(run->spf[i].ev, &out))
			continue;
		s->result = out.result;
		s->explanation[0] = '\0';
		snprintf(s->reason, sizeof(s->reason), "%s (its exp= explanation not found in time)",
		         out.reason ? out.reason : "");
		s->done = true;
	}
}

void dnsrun_expire(dnsrun *run)
{
	dns_lock(run->r);
	if (!atomic_load(&run->finished)) {
		keep_decided(run);
		cancel_all(run);
		dnsplan_expire(run->plan);
		atomic_store(&run->finished, true);
	}
	dns_unlock(run->r);
}

void dnsrun_free(dnsrun *run)
{
	if (run == NULL)
		return;
	dns_lock(run->r);
	cancel_all(run);
	dns_unlock(run->r);
	free(run);
}

static bool run_finished(void *arg)
{
	return dnsrun_finished(arg);
}

void dnsrun_wait(dnsrun *run, int64_t deadline_ms)
{
	if (!dns_wait(run->r, run_finished, run, deadline_ms))
		dnsrun_expire(run);
}
