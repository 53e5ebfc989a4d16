/*
 * spf: RFC 7208 check_host() as a state machine over an asynchronous
 * resolver (see spf.h, docs/spf.md).
 *
 * One query is in flight at a time. Every step either submits a query and
 * waits, moves to another state, or finishes; drive() runs steps until it
 * must wait. An answer that arrives from inside submit() (a cache hit) is
 * digested and the loop goes on, so recursion never grows with the number
 * of queries. Answers are digested at once into bounded state (the SPF
 * record, at most 10 names, a match flag): nothing the resolver lends is
 * kept.
 *
 * include pushes a frame, redirect replaces the current one; the depth is
 * bounded by the 10-lookup limit and by SPF_MAX_DEPTH besides. Errors
 * end in temperror (DNS) or permerror (syntax, limits) as RFC 7208 says.
 */
#include "spf/spf.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "core/text.h"
#include "spf/spf_macro.h"
#include "spf/spf_record.h"

#define SPF_NAME_MAX 256

enum state {
	ST_FETCH,    /* query the TXT records of the top frame's domain */
	ST_RECORD,   /* TXT answer: select and parse the SPF record */
	ST_TERM,     /* evaluate the top frame's next term */
	ST_A,        /* a: A/AAAA answer */
	ST_MX,       /* mx: MX answer */
	ST_MX_ADDR,  /* mx: address answer of one exchange */
	ST_EXISTS,   /* exists: A answer */
	ST_PTR,      /* validation: PTR answer */
	ST_PTR_ADDR, /* validation: address answer of one PTR name */
	ST_END,      /* no term matched: redirect= or neutral */
	ST_EXPLAIN,  /* fail: look up exp= */
	ST_EXP_TXT,  /* exp= TXT answer */
	ST_EXP_TEXT, /* expand the explanation text */
	ST_DONE,
};

/* Why the PTR names are being validated (RFC 7208 5.5 and 7.3). */
enum validate_for { VALIDATE_MECH, VALIDATE_MACRO };

struct frame {
	char domain[SPF_NAME_MAX];
	char *text; /* the selected record, owned */
	struct spf_record rec;
	size_t next;       /* index of the term being evaluated */
	bool via_redirect; /* a "none" here is a permerror (RFC 7208 6.1) */
};

/* What the evaluator keeps of one answer. */
struct digest {
	enum spf_dns_status status;
	size_t count; /* records of the asked type */
	bool match;   /* A/AAAA: an address inside the network asked about */
	size_t ntxt;  /* TXT: records that count (SPF ones, or all for exp=) */
	char *txt;    /* TXT: the first of those, owned */
	size_t txt_len;
	size_t nnames;                              /* MX/PTR: names kept */
	char names[SPF_MAX_MX_NAMES][SPF_NAME_MAX]; /* last: read only below nnames, never zeroed */
};

struct spf_eval {
	struct spf_resolver res;
	spf_done_cb done;
	void *done_arg;

	/* the request */
	int family;
	unsigned char ip[16];
	char local[SPF_NAME_MAX], sender_domain[SPF_NAME_MAX], sender[2 * SPF_NAME_MAX];
	char helo[SPF_NAME_MAX], receiver[SPF_NAME_MAX];
	long long now;
	char first_domain[SPF_NAME_MAX];

	/* the machine */
	enum state state;
	bool running, waiting, in_flight, finished, notified;
	uint64_t query_id;
	enum spf_rrtype qtype;
	int match_bits; /* prefix length an A/AAAA answer is matched at */
	unsigned lookups, voids, queries;

	size_t depth; /* frames in use; the top is frames[depth - 1] */

	/* mx and ptr iteration */
	size_t nnames, name_idx;
	bool addr_error;
	char target[SPF_NAME_MAX]; /* ptr: the domain validated names must be in */

	/* PTR validation */
	enum validate_for validate_for;
	enum state resume;
	size_t nvalid;
	bool p_done;
	char p_name[SPF_NAME_MAX];

	/* the outcome */
	enum spf_result result;
	char *exp_text;
	char explanation[SPF_MAX_EXPLANATION + 1];
	bool have_explanation;
	bool explaining; /* the result is a fail; only exp= is being looked up (spf_decided) */
	char reason[256];

	/*
	 * From here on, arrays read only below a count (depth, nnames, nvalid,
	 * dg.nnames) that their writes raise: spf_new does not zero them
	 * (zeroing their 10 KiB was a visible cost of every evaluation in the
	 * cached-path profile); a frame is zeroed when pushed.
	 */
	struct frame frames[SPF_MAX_DEPTH];
	char names[SPF_MAX_MX_NAMES][SPF_NAME_MAX];
	char valid[SPF_MAX_PTR_NAMES][SPF_NAME_MAX];
	struct digest dg; /* last: its names[] are not zeroed either (digest_clear) */
};

static const char *const result_names[] = {"none",     "neutral",   "pass",     "fail",
                                           "softfail", "temperror", "permerror"};

const char *spf_result_name(enum spf_result r)
{
	return (unsigned)r < sizeof(result_names) / sizeof(result_names[0]) ? result_names[r] : "?";
}

static struct frame *top(spf_eval *ev)
{
	return &ev->frames[ev->depth - 1];
}

/* The evaluation ends with r, why already written (every evaluation ends here: no formatting). */
static void finish_text(spf_eval *ev, enum spf_result r, const char *why)
{
	text_copy(ev->reason, sizeof(ev->reason), why);
	ev->result = r;
	ev->state = ST_DONE;
	ev->finished = true;
}

__attribute__((format(printf, 3, 4))) static void finish(spf_eval *ev, enum spf_result r, const char *fmt,
                                                         ...)
{
	char why[sizeof(ev->reason)];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	finish_text(ev, r, why);
}

/* ---- names ---- */

/*
 * Copies a name without its trailing dot; false when it cannot be a DNS
 * name (empty or long labels, over 253 characters, bytes outside printable
 * ASCII). Spaces and other printable bytes stay: records may name them
 * (the suite's "macro%percent  space"), the resolver backend escapes them.
 */
static bool name_copy(char *dst, const char *src, size_t len)
{
	if (len > 0 && src[len - 1] == '.')
		len--;
	if (len == 0 || len > 253)
		return false;
	size_t label = 0;
	for (size_t i = 0; i < len; i++) {
		/* Printable ASCII only: an attacker's %{l} must not put control bytes into a query. */
		if ((unsigned char)src[i] < 0x20 || (unsigned char)src[i] > 0x7e)
			return false;
		if (src[i] == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (++label > 63) {
			return false;
		}
	}
	if (label == 0)
		return false;
	memcpy(dst, src, len);
	dst[len] = '\0';
	return true;
}

/* RFC 7208 4.3: the checked domain must be a fully qualified domain name. */
static bool fqdn_ok(const char *d)
{
	char tmp[SPF_NAME_MAX];
	return name_copy(tmp, d, strlen(d)) && strchr(tmp, '.') != NULL;
}

/* true when name equals domain or is below it (case-insensitive). */
static bool name_within(const char *name, const char *domain)
{
	size_t n = strlen(name), d = strlen(domain);
	if (n < d || strcasecmp(name + n - d, domain) != 0)
		return false;
	return n == d || name[n - d - 1] == '.';
}

/* ---- queries ---- */

static void digest_clear(struct digest *dg)
{
	free(dg->txt);
	memset(dg, 0, offsetof(struct digest, names));
}

/* true when the first bits of addr (alen bytes) equal those of ip. */
static bool prefix_match(const unsigned char *addr, const unsigned char *ip, int bits)
{
	size_t whole = (size_t)bits / 8;
	if (memcmp(addr, ip, whole) != 0)
		return false;
	if (bits % 8 == 0)
		return true;
	unsigned char mask = (unsigned char)(0xff << (8 - bits % 8));
	return (addr[whole] & mask) == (ip[whole] & mask);
}

static bool addr_match(const spf_eval *ev, const struct spf_dns_rr *rr)
{
	return rr->len == (ev->family == AF_INET ? 4u : 16u) &&
	       prefix_match(rr->data, ev->ip, ev->match_bits);
}

static void digest_txt(spf_eval *ev, const struct spf_dns_rr *rr)
{
	const char *t = (const char *)rr->data;
	bool want = ev->state == ST_EXP_TXT || spf_record_is_spf1(t, rr->len);
	if (!want)
		return;
	if (ev->dg.ntxt++ > 0)
		return;
	size_t n = rr->len > SPF_MAX_RECORD ? SPF_MAX_RECORD + 1 : rr->len; /* +1: "too long" shows */
	ev->dg.txt = malloc(n + 1);
	if (!ev->dg.txt)
		return;
	memcpy(ev->dg.txt, t, n);
	ev->dg.txt[n] = '\0';
	ev->dg.txt_len = n;
}

static void digest_name(struct digest *dg, const struct spf_dns_rr *rr)
{
	if (dg->nnames == SPF_MAX_MX_NAMES)
		return;
	if (!name_copy(dg->names[dg->nnames], (const char *)rr->data, rr->len))
		dg->names[dg->nnames][0] = '\0'; /* kept so that the count stays honest */
	dg->nnames++;
}

static void digest(spf_eval *ev, const struct spf_dns_answer *ans)
{
	struct digest *dg = &ev->dg;
	dg->status = ans->status;
	if (ans->status != SPF_DNS_OK)
		return;
	for (size_t i = 0; i < ans->count; i++) {
		const struct spf_dns_rr *rr = &ans->rr[i];
		dg->count++;
		if (ev->qtype == SPF_RR_TXT)
			digest_txt(ev, rr);
		else if (ev->qtype == SPF_RR_MX || ev->qtype == SPF_RR_PTR)
			digest_name(dg, rr);
		else if (addr_match(ev, rr))
			dg->match = true;
	}
	if (dg->count == 0)
		dg->status = SPF_DNS_NODATA;
}

static void drive(spf_eval *ev);

static void on_answer(void *arg, const struct spf_dns_answer *ans)
{
	spf_eval *ev = arg;
	ev->in_flight = false;
	digest(ev, ans);
	ev->waiting = false;
	if (!ev->running)
		drive(ev); /* may free ev through the completion callback: touch nothing after */
}

/* Submits a query; the answer is digested and step() resumes in state next. */
static void query(spf_eval *ev, const char *name, enum spf_rrtype type, enum state next)
{
	digest_clear(&ev->dg);
	ev->qtype = type;
	ev->state = next;
	ev->waiting = true;
	ev->in_flight = true;
	ev->queries++;
	uint64_t id = 0;
	if (ev->res.submit(ev->res.ctx, name, type, on_answer, ev, &id) < 0) {
		ev->in_flight = false;
		ev->waiting = false;
		ev->dg.status = SPF_DNS_TEMPFAIL;
		return;
	}
	if (ev->in_flight)
		ev->query_id = id;
}

/* The address type matching the client: A for IPv4, AAAA for IPv6. */
static enum spf_rrtype addr_type(const spf_eval *ev)
{
	return ev->family == AF_INET ? SPF_RR_A : SPF_RR_AAAA;
}

/* ---- limits ---- */

static bool count_lookup(spf_eval *ev)
{
	if (++ev->lookups <= SPF_MAX_DNS_LOOKUPS)
		return true;
	finish(ev, SPF_PERMERROR, "more than %d DNS lookups", SPF_MAX_DNS_LOOKUPS);
	return false;
}

/* RFC 7208 4.6.4: an answer with no records (or NXDOMAIN) is a void lookup. */
static bool count_void(spf_eval *ev)
{
	if (ev->dg.status != SPF_DNS_NXDOMAIN && ev->dg.status != SPF_DNS_NODATA)
		return true;
	if (++ev->voids <= SPF_MAX_VOID_LOOKUPS)
		return true;
	finish(ev, SPF_PERMERROR, "more than %d void lookups", SPF_MAX_VOID_LOOKUPS);
	return false;
}

/* ---- macros ---- */

static void macro_vars(spf_eval *ev, struct spf_macro_vars *v)
{
	*v = (struct spf_macro_vars){
	    .sender = ev->sender,
	    .local = ev->local,
	    .domain_o = ev->sender_domain,
	    .domain = top(ev)->domain,
	    .family = ev->family,
	    .ip = ev->ip,
	    .ptr = ev->p_done ? ev->p_name : "unknown",
	    .helo = ev->helo,
	    .receiver = ev->receiver,
	    .now = ev->now,
	};
}

static void validate_start(spf_eval *ev, enum validate_for why);

/*
 * %{p} needs the validated name first: starts the validation and returns
 * true when the caller must stop; the current state is entered again after.
 */
static bool need_p(spf_eval *ev, const char *s, size_t len)
{
	if (ev->p_done || !spf_macro_uses_p(s, len))
		return false;
	ev->resume = ev->state;
	validate_start(ev, VALIDATE_MACRO);
	return true;
}

/* Expands a domain-spec into a name to query; false: no usable name. */
static bool expand_name(spf_eval *ev, const char *spec, size_t len, char *out)
{
	char buf[SPF_NAME_MAX + 256];
	struct spf_macro_vars v;
	if (!spec) {
		snprintf(out, SPF_NAME_MAX, "%s", top(ev)->domain);
		return true;
	}
	macro_vars(ev, &v);
	if (spf_macro_expand(spec, len, SPF_MACRO_DOMAIN, &v, buf, sizeof(buf)) < 0)
		return false;
	return name_copy(out, buf, strlen(buf));
}

/* ---- frames ---- */

static void frame_clear(struct frame *f)
{
	spf_record_clear(&f->rec);
	free(f->text);
	memset(f, 0, sizeof(*f));
}

__attribute__((format(printf, 3, 4))) static void frame_result(spf_eval *ev, enum spf_result r,
                                                               const char *fmt, ...);

/* Starts check_host() on domain in a new frame (include) or the top one (redirect). */
static void frame_start(spf_eval *ev, const char *domain, bool redirect)
{
	if (!redirect && ev->depth == SPF_MAX_DEPTH) {
		finish(ev, SPF_PERMERROR, "include nesting deeper than %d", SPF_MAX_DEPTH);
		return;
	}
	if (redirect)
		frame_clear(top(ev));
	else
		memset(&ev->frames[ev->depth++], 0, sizeof(ev->frames[0]));
	struct frame *f = top(ev);
	snprintf(f->domain, sizeof(f->domain), "%s", domain);
	f->via_redirect = redirect;
	ev->state = ST_FETCH;
}

static void fetch(spf_eval *ev)
{
	struct frame *f = top(ev);
	if (!fqdn_ok(f->domain)) {
		frame_result(ev, SPF_NONE, "not a domain name");
		return;
	}
	query(ev, f->domain, SPF_RR_TXT, ST_RECORD);
}

static bool record_ascii(const char *t, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)t[i] > 0x7e || (unsigned char)t[i] < 0x20)
			return false;
	return true;
}

static void got_record(spf_eval *ev)
{
	struct frame *f = top(ev);
	struct digest *dg = &ev->dg;
	char err[160];
	if (dg->status == SPF_DNS_TEMPFAIL) {
		frame_result(ev, SPF_TEMPERROR, "DNS failure looking up the SPF record");
		return;
	}
	if (dg->ntxt == 0) {
		frame_result(ev, SPF_NONE, "no SPF record");
		return;
	}
	if (dg->ntxt > 1) {
		frame_result(ev, SPF_PERMERROR, "more than one SPF record");
		return;
	}
	if (!dg->txt) {
		frame_result(ev, SPF_TEMPERROR, "out of memory");
		return;
	}
	if (dg->txt_len > SPF_MAX_RECORD) {
		frame_result(ev, SPF_PERMERROR, "SPF record longer than %d", SPF_MAX_RECORD);
		return;
	}
	if (!record_ascii(dg->txt, dg->txt_len)) {
		frame_result(ev, SPF_PERMERROR, "SPF record has characters outside 7-bit ASCII");
		return;
	}
	f->text = dg->txt;
	dg->txt = NULL;
	if (spf_record_parse(f->text, dg->txt_len, &f->rec, err, sizeof(err)) < 0) {
		frame_result(ev, SPF_PERMERROR, "SPF record syntax: %s", err);
		return;
	}
	f->next = 0;
	ev->state = ST_TERM;
}

/* ---- mechanisms ---- */

static void term_matched(spf_eval *ev)
{
	struct frame *f = top(ev);
	const struct spf_term *t = &f->rec.terms[f->next];
	frame_result(ev, t->qual, "matched %s in %s", spf_mech_name(t->mech), f->domain);
}

static void term_next(spf_eval *ev)
{
	top(ev)->next++;
	ev->state = ST_TERM;
}

static bool ip_in(const spf_eval *ev, const unsigned char *net, int bits)
{
	return prefix_match(net, ev->ip, bits);
}

/* Expands the term's domain and submits the query of a/mx/exists/ptr. */
static void eval_dns_term(spf_eval *ev, const struct spf_term *t)
{
	char name[SPF_NAME_MAX];
	if (need_p(ev, t->spec, t->spec_len))
		return;
	if (!count_lookup(ev))
		return;
	if (!expand_name(ev, t->spec, t->spec_len, name)) {
		if (t->mech == SPF_MECH_INCLUDE)
			finish(ev, SPF_PERMERROR, "include in %s names no domain", top(ev)->domain);
		else
			term_next(ev); /* no name to look up: the mechanism does not match */
		return;
	}
	ev->match_bits = ev->family == AF_INET ? t->cidr4 : t->cidr6;
	switch (t->mech) {
	case SPF_MECH_A:
		query(ev, name, addr_type(ev), ST_A);
		break;
	case SPF_MECH_MX:
		query(ev, name, SPF_RR_MX, ST_MX);
		break;
	case SPF_MECH_EXISTS:
		query(ev, name, SPF_RR_A, ST_EXISTS); /* RFC 7208 5.7: always A */
		break;
	case SPF_MECH_PTR:
		snprintf(ev->target, sizeof(ev->target), "%s", name);
		validate_start(ev, VALIDATE_MECH);
		break;
	case SPF_MECH_INCLUDE:
		frame_start(ev, name, false);
		break;
	default:
		break;
	}
}

static void eval_term(spf_eval *ev)
{
	struct frame *f = top(ev);
	if (f->next == f->rec.nterms) {
		ev->state = ST_END;
		return;
	}
	const struct spf_term *t = &f->rec.terms[f->next];
	switch (t->mech) {
	case SPF_MECH_ALL:
		term_matched(ev);
		return;
	case SPF_MECH_IP4:
		if (ev->family == AF_INET && ip_in(ev, t->net, t->cidr4))
			term_matched(ev);
		else
			term_next(ev);
		return;
	case SPF_MECH_IP6:
		if (ev->family == AF_INET6 && ip_in(ev, t->net, t->cidr6))
			term_matched(ev);
		else
			term_next(ev);
		return;
	default:
		eval_dns_term(ev, t);
		return;
	}
}

/* a and exists: a DNS failure is a temperror, an address in the network a match. */
static void got_addr_term(spf_eval *ev)
{
	if (ev->dg.status == SPF_DNS_TEMPFAIL) {
		frame_result(ev, SPF_TEMPERROR, "DNS failure in %s of %s",
		             spf_mech_name(top(ev)->rec.terms[top(ev)->next].mech), top(ev)->domain);
		return;
	}
	if (!count_void(ev))
		return;
	bool hit = ev->state == ST_EXISTS ? ev->dg.count > 0 : ev->dg.match;
	if (hit)
		term_matched(ev);
	else
		term_next(ev);
}

static void mx_next(spf_eval *ev)
{
	while (ev->name_idx < ev->nnames && ev->names[ev->name_idx][0] == '\0')
		ev->name_idx++;
	if (ev->name_idx == ev->nnames) {
		if (ev->addr_error)
			frame_result(ev, SPF_TEMPERROR, "DNS failure looking up an MX host of %s",
			             top(ev)->domain);
		else
			term_next(ev);
		return;
	}
	query(ev, ev->names[ev->name_idx++], addr_type(ev), ST_MX_ADDR);
}

static void got_mx(spf_eval *ev)
{
	struct digest *dg = &ev->dg;
	if (dg->status == SPF_DNS_TEMPFAIL) {
		frame_result(ev, SPF_TEMPERROR, "DNS failure in mx of %s", top(ev)->domain);
		return;
	}
	if (!count_void(ev))
		return;
	if (dg->count > SPF_MAX_MX_NAMES) {
		frame_result(ev, SPF_PERMERROR, "more than %d MX names", SPF_MAX_MX_NAMES);
		return;
	}
	memcpy(ev->names, dg->names, dg->nnames * sizeof(ev->names[0]));
	ev->nnames = dg->nnames;
	ev->name_idx = 0;
	ev->addr_error = false;
	mx_next(ev);
}

static void got_mx_addr(spf_eval *ev)
{
	if (ev->dg.status == SPF_DNS_TEMPFAIL)
		ev->addr_error = true;
	if (ev->dg.match) {
		term_matched(ev);
		return;
	}
	mx_next(ev);
}

/* ---- PTR validation (RFC 7208 5.5) ---- */

static void reverse_name(const spf_eval *ev, char *out, size_t size)
{
	static const char hex[] = "0123456789abcdef";
	if (ev->family == AF_INET) {
		snprintf(out, size, "%u.%u.%u.%u.in-addr.arpa", ev->ip[3], ev->ip[2], ev->ip[1], ev->ip[0]);
		return;
	}
	size_t n = 0;
	for (int b = 15; b >= 0; b--) {
		out[n++] = hex[ev->ip[b] & 15];
		out[n++] = '.';
		out[n++] = hex[ev->ip[b] >> 4];
		out[n++] = '.';
	}
	snprintf(out + n, size - n, "ip6.arpa");
}

static void validate_start(spf_eval *ev, enum validate_for why)
{
	char rev[80];
	ev->validate_for = why;
	ev->nvalid = 0;
	ev->match_bits = ev->family == AF_INET ? 32 : 128;
	reverse_name(ev, rev, sizeof(rev));
	query(ev, rev, SPF_RR_PTR, ST_PTR);
}

static void validate_done(spf_eval *ev)
{
	if (ev->validate_for == VALIDATE_MACRO) {
		/* RFC 7208 7.3: the domain itself, else a subdomain, else any validated name. */
		const char *d = top(ev)->domain, *pick = ev->nvalid ? ev->valid[0] : "unknown";
		for (size_t i = 0; i < ev->nvalid; i++)
			if (strcasecmp(ev->valid[i], d) == 0) {
				pick = ev->valid[i];
				break;
			} else if (name_within(ev->valid[i], d) && pick == ev->valid[0]) {
				pick = ev->valid[i];
			}
		snprintf(ev->p_name, sizeof(ev->p_name), "%s", pick);
		ev->p_done = true;
		ev->state = ev->resume;
		return;
	}
	for (size_t i = 0; i < ev->nvalid; i++)
		if (name_within(ev->valid[i], ev->target)) {
			term_matched(ev);
			return;
		}
	term_next(ev);
}

static void ptr_next(spf_eval *ev)
{
	while (ev->name_idx < ev->nnames && ev->names[ev->name_idx][0] == '\0')
		ev->name_idx++;
	if (ev->name_idx == ev->nnames) {
		validate_done(ev);
		return;
	}
	query(ev, ev->names[ev->name_idx], addr_type(ev), ST_PTR_ADDR);
}

static void got_ptr(spf_eval *ev)
{
	/* A DNS error on the PTR lookup: nothing validates (RFC 7208 5.5). */
	if (ev->validate_for == VALIDATE_MECH && !count_void(ev))
		return;
	ev->nnames = ev->dg.status == SPF_DNS_OK ? ev->dg.nnames : 0; /* the first 10; the rest ignored */
	memcpy(ev->names, ev->dg.names, ev->nnames * sizeof(ev->names[0]));
	ev->name_idx = 0;
	ptr_next(ev);
}

static void got_ptr_addr(spf_eval *ev)
{
	/* Errors skip the name (RFC 7208 5.5). */
	if (ev->dg.match && ev->nvalid < SPF_MAX_PTR_NAMES) {
		/* Two arrays of one struct: GCC cannot tell at -O2 that they never overlap. */
		const char *name = ev->names[ev->name_idx];
		size_t len = strnlen(name, SPF_NAME_MAX - 1);

		memcpy(ev->valid[ev->nvalid], name, len);
		ev->valid[ev->nvalid++][len] = '\0';
	}
	ev->name_idx++;
	ptr_next(ev);
}

/* ---- end of a record, results, explanation ---- */

static void end_of_terms(spf_eval *ev)
{
	struct frame *f = top(ev);
	char name[SPF_NAME_MAX];
	if (!f->rec.redirect) {
		frame_result(ev, SPF_NEUTRAL, "no term matched in %s", f->domain);
		return;
	}
	if (need_p(ev, f->rec.redirect, f->rec.redirect_len))
		return;
	if (!count_lookup(ev))
		return;
	if (!expand_name(ev, f->rec.redirect, f->rec.redirect_len, name)) {
		frame_result(ev, SPF_PERMERROR, "redirect= of %s names no domain", f->domain);
		return;
	}
	frame_start(ev, name, true);
}

static void explain(spf_eval *ev)
{
	struct frame *f = top(ev);
	char name[SPF_NAME_MAX];
	if (need_p(ev, f->rec.exp, f->rec.exp_len))
		return;
	if (!expand_name(ev, f->rec.exp, f->rec.exp_len, name)) {
		ev->finished = true;
		return;
	}
	query(ev, name, SPF_RR_TXT, ST_EXP_TXT);
}

/* RFC 7208 6.2: anything wrong with the explanation only loses it. */
static void got_exp_txt(spf_eval *ev)
{
	if (ev->dg.status != SPF_DNS_OK || ev->dg.ntxt != 1 || !ev->dg.txt ||
	    !record_ascii(ev->dg.txt, ev->dg.txt_len)) {
		ev->finished = true;
		return;
	}
	ev->exp_text = ev->dg.txt;
	ev->dg.txt = NULL;
	ev->state = ST_EXP_TEXT;
}

static void expand_exp_text(spf_eval *ev)
{
	struct spf_macro_vars v;
	size_t n = strlen(ev->exp_text);
	if (need_p(ev, ev->exp_text, n))
		return;
	macro_vars(ev, &v);
	if (spf_macro_expand(ev->exp_text, n, SPF_MACRO_EXPLAIN, &v, ev->explanation,
	                     sizeof(ev->explanation)) == 0)
		ev->have_explanation = true;
	ev->finished = true;
}

/*
 * The top frame's check_host() returned r. The outermost one ends the
 * evaluation (looking up exp= on a fail); an included one is turned into a
 * match or not per RFC 7208 5.2.
 */
static void frame_result(spf_eval *ev, enum spf_result r, const char *fmt, ...)
{
	char why[sizeof(ev->reason)];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	if (r == SPF_NONE && top(ev)->via_redirect) {
		r = SPF_PERMERROR; /* RFC 7208 6.1 */
		snprintf(why, sizeof(why), "redirect= target %.200s has no SPF record", top(ev)->domain);
	}
	if (ev->depth == 1 || r == SPF_TEMPERROR || r == SPF_PERMERROR) {
		finish_text(ev, r, why);
		if (r == SPF_FAIL && ev->depth == 1 && top(ev)->rec.exp) {
			ev->finished = false;
			ev->explaining = true;
			ev->state = ST_EXPLAIN;
		}
		return;
	}
	if (r == SPF_NONE) {
		finish(ev, SPF_PERMERROR, "include of %.200s found no SPF record", top(ev)->domain);
		return;
	}
	frame_clear(top(ev));
	ev->depth--;
	if (r == SPF_PASS)
		term_matched(ev);
	else
		term_next(ev);
}

/* ---- driving ---- */

static void step(spf_eval *ev)
{
	switch (ev->state) {
	case ST_FETCH:
		fetch(ev);
		break;
	case ST_RECORD:
		got_record(ev);
		break;
	case ST_TERM:
		eval_term(ev);
		break;
	case ST_A:
		got_addr_term(ev);
		break;
	case ST_EXISTS:
		got_addr_term(ev);
		break;
	case ST_MX:
		got_mx(ev);
		break;
	case ST_MX_ADDR:
		got_mx_addr(ev);
		break;
	case ST_PTR:
		got_ptr(ev);
		break;
	case ST_PTR_ADDR:
		got_ptr_addr(ev);
		break;
	case ST_END:
		end_of_terms(ev);
		break;
	case ST_EXPLAIN:
		explain(ev);
		break;
	case ST_EXP_TXT:
		got_exp_txt(ev);
		break;
	case ST_EXP_TEXT:
		expand_exp_text(ev);
		break;
	case ST_DONE:
		ev->finished = true;
		break;
	}
}

static void drive(spf_eval *ev)
{
	ev->running = true;
	while (!ev->waiting && !ev->finished)
		step(ev);
	ev->running = false;
	if (!ev->finished || ev->notified)
		return;
	ev->notified = true;
	struct spf_outcome out = {
	    .result = ev->result,
	    .explanation = ev->have_explanation ? ev->explanation : NULL,
	    .reason = ev->reason,
	    .domain = ev->first_domain,
	};
	ev->done(ev->done_arg, &out); /* last: the callback may free ev */
}

/* ---- the request ---- */

/* Copies with text_copy, not snprintf: this runs for every evaluation (a profile showed it). */
static void set_identity(spf_eval *ev, const struct spf_request *req)
{
	const char *from = req->mailfrom ? req->mailfrom : "";
	const char *at = strrchr(from, '@');
	size_t n;

	text_copy(ev->helo, sizeof(ev->helo), req->helo ? req->helo : "");
	text_copy(ev->receiver, sizeof(ev->receiver), req->receiver ? req->receiver : "unknown");
	if (req->helo_identity || from[0] == '\0') {
		/* RFC 7208 2.3 / 2.4: postmaster@helo */
		text_copy(ev->local, sizeof(ev->local), "postmaster");
		text_copy(ev->sender_domain, sizeof(ev->sender_domain), ev->helo);
	} else if (!at) {
		text_copy(ev->local, sizeof(ev->local), "postmaster");
		text_copy(ev->sender_domain, sizeof(ev->sender_domain), from);
	} else {
		size_t l = (size_t)(at - from);
		if (l > 255)
			l = 255;
		if (l > sizeof(ev->local) - 1)
			l = sizeof(ev->local) - 1;
		memcpy(ev->local, from, l);
		ev->local[l] = '\0';
		if (l == 0)
			text_copy(ev->local, sizeof(ev->local), "postmaster"); /* RFC 7208 4.3 */
		text_copy(ev->sender_domain, sizeof(ev->sender_domain), at + 1);
	}
	/* local@domain, cut as snprintf("%s@%s") would cut it */
	n = text_copy(ev->sender, sizeof(ev->sender), ev->local);
	if (n < sizeof(ev->sender) - 1) {
		ev->sender[n++] = '@';
		text_copy(ev->sender + n, sizeof(ev->sender) - n, ev->sender_domain);
	}
	size_t dl = strlen(ev->sender_domain);
	if (dl > 0 && ev->sender_domain[dl - 1] == '.')
		ev->sender_domain[dl - 1] = '\0';
	text_copy(ev->first_domain, sizeof(ev->first_domain), ev->sender_domain);
}

spf_eval *spf_new(const struct spf_request *req, const struct spf_resolver *res, spf_done_cb done, void *arg)
{
	static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	if (!req || !res || !res->submit || !done || (req->family != AF_INET && req->family != AF_INET6))
		return NULL;
	spf_eval *ev = malloc(sizeof(*ev));
	if (!ev)
		return NULL;
	memset(ev, 0, offsetof(spf_eval, frames));
	memset(&ev->dg, 0, offsetof(struct digest, names));
	ev->res = *res;
	ev->done = done;
	ev->done_arg = arg;
	ev->family = req->family;
	memcpy(ev->ip, req->ip, req->family == AF_INET ? 4 : 16);
	if (ev->family == AF_INET6 && memcmp(ev->ip, mapped, 12) == 0) {
		/* RFC 7208 5: an IPv4-mapped client is an IPv4 client. */
		memmove(ev->ip, ev->ip + 12, 4);
		memset(ev->ip + 4, 0, 12);
		ev->family = AF_INET;
	}
	ev->now = req->now;
	set_identity(ev, req);
	return ev;
}

void spf_start(spf_eval *ev)
{
	if (ev->depth != 0 || ev->finished)
		return;
	ev->depth = 1;
	memset(&ev->frames[0], 0, sizeof(ev->frames[0]));
	text_copy(ev->frames[0].domain, SPF_NAME_MAX, ev->first_domain);
	ev->state = ST_FETCH;
	drive(ev);
}

void spf_free(spf_eval *ev)
{
	if (!ev)
		return;
	if (ev->in_flight && ev->res.cancel)
		ev->res.cancel(ev->res.ctx, ev->query_id);
	for (size_t i = 0; i < ev->depth; i++)
		frame_clear(&ev->frames[i]);
	digest_clear(&ev->dg);
	free(ev->exp_text);
	free(ev);
}

int spf_decided(const spf_eval *ev, struct spf_outcome *out)
{
	if (!ev->explaining || ev->finished)
		return 0;
	*out = (struct spf_outcome){.result = ev->result, .reason = ev->reason, .domain = ev->first_domain};
	return 1;
}

unsigned spf_dns_lookups(const spf_eval *ev)
{
	return ev->lookups;
}

unsigned spf_queries(const spf_eval *ev)
{
	return ev->queries;
}
