/*
 * milter: the libmilter front end (see milter.h), a thin layer over the
 * engine: each callback copies what libmilter lends it (length-capped),
 * builds decide_facts, asks the engine and maps the verdict to SMFIS_* and
 * smfi_setreply. All libmilter calls but setup go through a milter_shim,
 * so unit tests drive these callbacks without an MTA (milter_shim.h).
 *
 * Contexts: one per milter connection, which Postfix opens per SMTP
 * session. It is allocated at option negotiation (which records what the
 * MTA agreed to) or at connect, filled at connect and HELO, and freed at
 * close, which libmilter calls on every path: QUIT, abort, MTA gone, read
 * error (not at smfi_stop: see filter.live below). Inside it, one message context per MAIL FROM holds the
 * engine snapshot of the transaction (SPEC: a transaction finishes under the config it started with) and the
 * trap recipients to remove at end of message; it ends at end of message, abort, the next MAIL, or close.
 *
 * Negotiation asks Postfix for the least work (docs/milter.md): no DATA
 * (unless the greylist defers the null sender there), headers, end of
 * headers, body or unknown commands; no reply awaited for connect and
 * HELO, which always continue; only the macros used here; the right to
 * add a header only when the greylist adds one.
 *
 * Errors: setup writes into the caller's buffer. At run time an internal
 * error (out of memory) gives a 4xx for the command, never a 5xx, and is
 * logged; store errors are the engine's (store.on_error).
 */
#include "milter/milter.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/addr.h"
#include "core/checks/greylist.h"
#include "core/checks/relay.h"
#include "core/checks/spf.h"
#include "dns/dns.h"
#include "dns/dnsrun.h"
#include "log.h"
#include "sockperm.h"
#include "stats.h"
#include "milter/milter_shim.h"

/* Caps for what the MTA lends us (STYLE 6). */
#define CLIENT_MAX 64 /* an IPv6 address in text, with room to spare */
#define HELO_MAX 256  /* a host name is at most 255 octets */
/* Longer than any key (decide.c caps them at 255): a longer name still
 * counts as authenticated, never cut into another account's name. */
#define SASL_MAX 1024
#define QUEUE_ID_MAX 64             /* Postfix long queue ids are about 20 characters */
#define ENVELOPE_MAX (ADDR_MAX + 2) /* an address plus its angle brackets */
#define CLIENT_NAME_MAX 256         /* a host name is at most 255 octets */

/* Lines a second about connections that were no MTA; the others are counted. */
#define NOT_MTA_LOG_BURST 20

/* How long milter_stop lets transactions in flight finish. */
#define STOP_GRACE_MS 30000

/* Steps spamtrapd never looks at: Postfix need not send them. */
#define STEPS_NOT_WANTED (SMFIP_NODATA | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOBODY | SMFIP_NOUNKNOWN)
/* Steps that always continue: Postfix need not wait for a reply. */
#define STEPS_NO_REPLY (SMFIP_NR_CONN | SMFIP_NR_HELO)

static const smtp_reply REPLY_INTERNAL = {"451", "4.3.0", "Temporary local problem, try again later"};
static const smtp_reply REPLY_STOPPING = {"451", "4.3.2", "Service shutting down, try again later"};

/* One SMTP transaction: MAIL FROM to end of message. */
typedef struct milter_msg {
	engine_msg msg; /* the engine's: its snapshot is NULL outside a transaction */
	char sender[ENVELOPE_MAX];
	char sasl[SASL_MAX];
	char queue_id[QUEUE_ID_MAX];
	char header[CHECK_HEADER_MAX]; /* "Name: value" to insert at end of message (greylist), or "" */
	char hold[sizeof(((smtp_reply *)0)->text)]; /* a recipient's verdict was hold: the reason, or "" */
	char **traps;                               /* trap recipients exactly as given, for smfi_delrcpt */
	size_t ntraps, traps_cap;
	/*
	 * The DNS answers of the stage in progress (milter_stage): kilobytes,
	 * too many for libmilter's small thread stacks, and here rather than
	 * a malloc per stage (docs/performance.md, issue 18).
	 */
	dnsplan plan;
} milter_msg;

/* One milter connection, i.e. one SMTP session. */
typedef struct milter_conn {
	struct milter_conn *prev, *next; /* the live list, see filter.live */
	unsigned long steps;             /* SMFIP_* agreed at negotiation */
	char client[CLIENT_MAX];
	char client_name[CLIENT_NAME_MAX]; /* Postfix's verified name, "unknown" or "[address]" */
	char helo[HELO_MAX];
	milter_msg msg;
} milter_conn;

/*
 * libmilter allows one filter per process, so the filter is module state:
 * the engine and shim it was bound to, a count of transactions holding a
 * snapshot (milter_stop waits for them) and the live connection contexts.
 *
 * Why a list of live contexts: Debian's libmilter runs sessions on a
 * worker pool (_FFR_WORKERS_POOL) that, once smfi_stop is called, drops
 * every open session without calling xxfi_close. Their contexts stay on
 * this list, reachable, until the process exits a moment later, instead
 * of being freed under a worker that may still be in a callback.
 */
static struct {
	engine *eng;
	const milter_shim *shim;
	pthread_mutex_t lock;
	pthread_cond_t idle; /* signalled when transactions drops to 0 */
	unsigned transactions;
	unsigned connections;
	milter_conn *live;
	bool stopping;
	atomic_bool failed; /* libmilter stopped without being asked */
	bool registered;
	bool running;
	pthread_t thread;
	atomic_bool listener_done; /* smfi_main returned */
	log_ratelimit not_mta;     /* connections that never negotiated: a line each, unless a flood */
	/* The resolver of the DNS checks, made at the first stage that needs it (milter_dns). */
	dns_resolver *dns;
	unsigned dns_users; /* threads waiting on it */
	/* The one a reload replaced, kept until the threads waiting on it are done. */
	dns_resolver *dns_old;
	unsigned dns_old_users;
	char dns_settings[CONFIG_DNS_KEY_MAX]; /* the dns.key it was made with */
	char hostname[256];                    /* SPF's %{r} */
	log_ratelimit dns_errors, dns_late;
} filter = {.lock = PTHREAD_MUTEX_INITIALIZER,
            .idle = PTHREAD_COND_INITIALIZER,
            .not_mta = {.interval = 1, .burst = NOT_MTA_LOG_BURST},
            .dns_errors = {.interval = 10},
            .dns_late = {.interval = 10}};

static char filter_name[] = "spamtrapd";

/* Copy a string libmilter lends us into a fixed buffer, truncated to fit. */
static void copy_capped(char *dst, size_t dstlen, const char *src)
{
	size_t n = src ? strnlen(src, dstlen - 1) : 0;
	memcpy(dst, src ? src : "", n);
	dst[n] = '\0';
}

/*
 * An envelope address as Postfix hands it to a milter ("<a@b>", "<>",
 * "<\"x y\"@d>") in the form the policy protocol uses ("a@b", "", "x y@d"),
 * so that both front ends log and record the same strings. Returns in
 * unchanged when it does not fit out: an over-long address is judged
 * (invalid) as it came, never truncated into another address.
 */
static const char *envelope_bare(const char *in, char *out, size_t outlen)
{
	size_t n = strnlen(in, outlen);
	if (n >= outlen)
		return in;
	if (n >= 2 && in[0] == '<' && in[n - 1] == '>') {
		in++;
		n -= 2;
	}
	memcpy(out, in, n);
	out[n] = '\0';
	addr_unquote(out);
	return out;
}

/*
 * Sendmail uses milter reply texts as format strings; Postfix turns "%%"
 * into "%" and drops a lone "%" (milter8.c). Doubling every '%' makes the
 * configured blocklist.reject reach the client as written.
 */
static void escape_percent(const char *in, char *out, size_t outlen)
{
	size_t o = 0;
	for (; *in && o + 2 < outlen; in++) {
		if (*in == '%')
			out[o++] = '%';
		out[o++] = *in;
	}
	out[o] = '\0';
}

static sfsistat reply_with(SMFICTX *ctx, const smtp_reply *r, sfsistat status)
{
	if (!r->code[0])
		return status;
	char text[2 * sizeof(r->text)];
	escape_percent(r->text, text, sizeof(text));
	if (filter.shim->setreply(ctx, r->code, r->xcode[0] ? r->xcode : NULL, text) != MI_SUCCESS)
		log_warning("milter: cannot set the reply \"%s %s %s\"; the MTA uses its default text",
		            r->code, r->xcode, r->text);
	return status;
}

/* Map a verdict to libmilter's answer; DROP_COPY is the caller's business. */
static sfsistat verdict_status(SMFICTX *ctx, const check_verdict *v)
{
	switch (v->action) {
	case DECIDE_REJECT:
		return reply_with(ctx, &v->reply, SMFIS_REJECT);
	case DECIDE_TEMPFAIL:
	case DECIDE_DEFER_IF_PERMIT: /* nothing after a milter's RCPT verdict could reject instead */
		return reply_with(ctx, &v->reply, SMFIS_TEMPFAIL);
	case DECIDE_DISCARD:
		return SMFIS_DISCARD;
	case DECIDE_CONTINUE:
	case DECIDE_DROP_COPY:
	case DECIDE_HOLD: /* cb_envrcpt remembers it for the end of message */
		break;
	}
	return SMFIS_CONTINUE;
}

/* ---- transactions ---- */

/* A context's message outside any transaction. */
static void msg_init(milter_msg *m)
{
	engine_msg_init(&m->msg);
	m->traps = NULL;
	m->ntraps = m->traps_cap = 0;
	m->sender[0] = m->sasl[0] = m->queue_id[0] = m->header[0] = m->hold[0] = '\0';
}

/* Take the transaction's snapshot; false once the filter is stopping. */
static bool msg_begin(milter_msg *m)
{
	pthread_mutex_lock(&filter.lock);
	bool ok = !filter.stopping;
	if (ok)
		filter.transactions++;
	pthread_mutex_unlock(&filter.lock);
	if (ok) {
		engine_snapshot *snap = engine_acquire(filter.eng);
		engine_msg_begin(&m->msg, snap);
		engine_release(snap);
	}
	return ok;
}

/* End the transaction, if any: release the snapshot, forget the recipients. Idempotent. */
static void msg_end(milter_msg *m)
{
	for (size_t i = 0; i < m->ntraps; i++)
		free(m->traps[i]);
	free(m->traps);
	m->traps = NULL;
	m->ntraps = m->traps_cap = 0;
	m->sender[0] = m->sasl[0] = m->queue_id[0] = m->header[0] = m->hold[0] = '\0';
	if (!m->msg.snap)
		return;
	engine_msg_end(&m->msg);
	pthread_mutex_lock(&filter.lock);
	if (--filter.transactions == 0)
		pthread_cond_broadcast(&filter.idle);
	pthread_mutex_unlock(&filter.lock);
}

/* Remember a trap recipient for smfi_delrcpt at end of message. */
static bool msg_add_trap(milter_msg *m, const char *rcpt)
{
	if (strnlen(rcpt, ENVELOPE_MAX) >= ENVELOPE_MAX)
		return false; /* no trap is that long; never truncate what delrcpt must match */
	if (m->ntraps == m->traps_cap) {
		size_t cap = m->traps_cap ? 2 * m->traps_cap : 4;
		char **grown = realloc(m->traps, cap * sizeof(*grown));
		if (!grown)
			return false;
		m->traps = grown;
		m->traps_cap = cap;
	}
	char *copy = strdup(rcpt);
	if (!copy)
		return false;
	m->traps[m->ntraps++] = copy;
	return true;
}

/* ---- DNS ---- */

/*
 * The milter's resolver, one for all its connections, made at the first
 * stage whose checks want DNS; NULL (logged, rate limited) when it cannot
 * be made. A reload that changed the dns section makes a new one at once;
 * threads waiting on the old one finish with it, and it goes with the last
 * (after two reloads in a row, the second waits for that). Each call is
 * paired with milter_dns_release.
 */
static dns_resolver *milter_dns_acquire(const config *cfg)
{
	dns_settings ds = config_dns_settings(cfg);
	const char *sig = cfg->dns.key;
	char err[256] = "";
	uint64_t more = 0;
	dns_resolver *r;

	pthread_mutex_lock(&filter.lock);
	if (filter.dns != NULL && strcmp(sig, filter.dns_settings) != 0) {
		if (filter.dns_users == 0) {
			dns_free(filter.dns);
			filter.dns = NULL;
		} else if (filter.dns_old == NULL) {
			filter.dns_old = filter.dns;
			filter.dns_old_users = filter.dns_users;
			filter.dns = NULL;
			filter.dns_users = 0;
		}
	}
	if (filter.dns == NULL && (filter.dns = dns_new(&ds, err, sizeof(err))) != NULL)
		snprintf(filter.dns_settings, sizeof(filter.dns_settings), "%s", sig);
	if ((r = filter.dns) != NULL)
		filter.dns_users++;
	pthread_mutex_unlock(&filter.lock);
	if (r == NULL && log_ratelimit_pass(&filter.dns_errors, dns_now_ms() / 1000, &more))
		log_error(
		    "milter: no resolver (%s): DNS answers count as failures (%llu more since the last line)",
		    err, (unsigned long long)more);
	return r;
}

static void milter_dns_release(dns_resolver *r)
{
	pthread_mutex_lock(&filter.lock);
	if (r != filter.dns_old) {
		filter.dns_users--;
	} else if (--filter.dns_old_users == 0) {
		dns_free(filter.dns_old); /* its last user: nobody waits on it */
		filter.dns_old = NULL;
	}
	pthread_mutex_unlock(&filter.lock);
}

/*
 * The plan's answers, by dns.timeout or a check's own shorter deadline.
 * libmilter gives each connection's callbacks a thread (of its pool) that
 * may block, as it does on a store round trip: waiting here holds only
 * this SMTP session, which waits for our answer anyway, so a blocking
 * wait (dns_wait: one waiting thread polls the shared resolver's fd and
 * delivers everyone's answers) is simpler than an event loop and costs
 * nothing the MTA would not wait for. The MTA's milter timeouts are far
 * longer than dns.timeout (at most 60 s).
 */
static void milter_resolve(const engine_msg *em, dnsplan *plan)
{
	const config *cfg = engine_config(em->snap);
	int64_t limit = cfg->dns.timeout * 1000;
	int64_t start = dns_now_ms();
	dns_resolver *r = milter_dns_acquire(cfg);
	dnsrun *run;
	uint64_t more = 0;

	if (r == NULL) {
		dnsplan_expire(plan);
		return;
	}
	if (plan->timeout_ms > 0 && plan->timeout_ms < limit)
		limit = plan->timeout_ms;
	if ((run = dnsrun_start(r, plan, filter.hostname, (int64_t)time(NULL), NULL, NULL)) != NULL) {
		dnsrun_wait(run, start + limit);
		dnsrun_free(run);
	}
	milter_dns_release(r);
	if (dns_now_ms() - start >= limit && log_ratelimit_pass(&filter.dns_late, start / 1000, &more))
		log_warning(
		    "milter: DNS answers still missing at the deadline (%lld ms, dns.timeout or a check's "
		    "own): counted as DNS failures (%llu more since the last line)",
		    (long long)limit, (unsigned long long)more);
}

/*
 * engine_stage with the DNS answers its checks want first (engine.h:
 * engine_dns_plan), on the milter's resolver, in the transaction's plan.
 */
static check_verdict milter_stage(milter_msg *m, check_stage stage, const decide_facts *facts)
{
	decide_facts f = *facts;

	if (engine_dns_plan(&m->msg, stage, CHECKS_EVERY, facts, &m->plan)) {
		milter_resolve(&m->msg, &m->plan);
		f.dns = &m->plan;
	}
	return engine_stage(&m->msg, stage, CHECKS_EVERY, &f);
}

/* Postfix knows the queue id from the first accepted RCPT on; keep the latest. */
static void msg_update_queue_id(SMFICTX *ctx, milter_msg *m)
{
	const char *qid = filter.shim->getsymval(ctx, "i");
	if (qid && *qid)
		copy_capped(m->queue_id, sizeof(m->queue_id), qid);
}

static decide_facts conn_facts(const milter_conn *c, const char *recipient)
{
	decide_facts f = {
	    .front = DECIDE_FRONT_MILTER,
	    .client_address = c->client[0] ? c->client : NULL,
	    .client_name = c->client_name[0] ? c->client_name : NULL,
	    .helo = c->helo[0] ? c->helo : NULL,
	    .sender = c->msg.sender,
	    .sasl_username = c->msg.sasl[0] ? c->msg.sasl : NULL,
	    .recipient = recipient,
	    .queue_id = c->msg.queue_id[0] ? c->msg.queue_id : NULL,
	};
	return f;
}

/* ---- connection contexts ---- */

/*
 * Not calloc: the context is kilobytes of buffers (the message's keys,
 * its SASL name, a header) that each step writes before reading, and
 * zeroing them was the largest cost a session added to libmilter's:
 * 6,900 instructions (docs/performance.md, issue 18).
 */
static milter_conn *conn_new(SMFICTX *ctx)
{
	milter_conn *c = malloc(sizeof(*c));
	if (!c) {
		log_error("milter: out of memory for a connection context");
		return NULL;
	}
	c->prev = c->next = NULL;
	c->steps = 0;
	c->client[0] = c->client_name[0] = c->helo[0] = '\0';
	msg_init(&c->msg);
	if (filter.shim->setpriv(ctx, c) != MI_SUCCESS) {
		log_error("milter: cannot attach a connection context");
		free(c);
		return NULL;
	}
	pthread_mutex_lock(&filter.lock);
	filter.connections++;
	c->next = filter.live;
	if (filter.live)
		filter.live->prev = c;
	filter.live = c;
	pthread_mutex_unlock(&filter.lock);
	return c;
}

static void conn_free(SMFICTX *ctx, milter_conn *c)
{
	if (!c)
		return;
	msg_end(&c->msg);
	filter.shim->setpriv(ctx, NULL);
	pthread_mutex_lock(&filter.lock);
	filter.connections--;
	if (c->prev)
		c->prev->next = c->next;
	else
		filter.live = c->next;
	if (c->next)
		c->next->prev = c->prev;
	pthread_mutex_unlock(&filter.lock);
	free(c);
}

/* A no-reply step must answer SMFIS_NOREPLY, others SMFIS_CONTINUE (libmilter's rule). */
static sfsistat step_done(const milter_conn *c, unsigned long nr_flag)
{
	return c && (c->steps & nr_flag) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

/*
 * The client's address in text, as inet_ntop writes it but by
 * addr_net_format: glibc's inet_ntop formats IPv4 with sprintf, 1,800
 * instructions a session (docs/performance.md, issue 18).
 */
static void client_text(const struct sockaddr *sa, char *out, size_t outlen)
{
	addr_net host = {.ip.version = 0};

	out[0] = '\0';
	if (!sa)
		return; /* unknown family: no client address to key on */
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in in4;
		memcpy(&in4, sa, sizeof(in4));
		host.ip.version = 4;
		host.prefix = 32;
		memcpy(host.ip.bytes, &in4.sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 in6;
		memcpy(&in6, sa, sizeof(in6));
		host.ip.version = 6;
		host.prefix = 128;
		memcpy(host.ip.bytes, &in6.sin6_addr, 16);
	} else {
		return;
	}
	addr_net_format(&host, out, outlen);
}

/* ---- callbacks ---- */

/*
 * What the greylist needs of this session, under the config in force at
 * its negotiation: the DATA step (it defers a null sender there) and the
 * right to add its header (or the spf check's). A reload applies from the next session on.
 */
static void greylist_wants(bool *data, bool *header)
{
	engine_snapshot *snap = engine_acquire(filter.eng);
	const pipeline_check *g = &engine_config(snap)->pipeline.checks[CHECK_ID_GREYLIST];
	const greylist_conf *gc = g->conf;
	bool on = g->mode != CHECK_MODE_OFF;
	const pipeline_check *sp = &engine_config(snap)->pipeline.checks[CHECK_ID_SPF];
	const spfcheck_conf *sc = sp->conf;

	*data = on && gc->null_sender_at == GREYLIST_NULL_AT_DATA;
	/* The spf check's Received-SPF too (its verdict at end of message; none in shadow). */
	*header = (on && gc->header) || (sp->mode == CHECK_MODE_ENFORCE && sc && sc->header);
	engine_release(snap);
}

/* relay.action hold under the config in force at negotiation: the right to quarantine. */
static bool relay_wants_hold(void)
{
	engine_snapshot *snap = engine_acquire(filter.eng);
	const pipeline_check *r = &engine_config(snap)->pipeline.checks[CHECK_ID_RELAY];
	const relay_conf *rc = r->conf;
	bool on = r->mode != CHECK_MODE_OFF && rc->action == RELAY_ACTION_HOLD;

	engine_release(snap);
	return on;
}

static sfsistat cb_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
                             unsigned long f3, unsigned long *pf0, unsigned long *pf1, unsigned long *pf2,
                             unsigned long *pf3)
{
	(void)f2;
	(void)f3;
	/* The context first: cb_close tells an MTA from a peer that never negotiated by it. */
	milter_conn *c = filter.shim->getpriv(ctx);
	if (!c && !(c = conn_new(ctx)))
		return SMFIS_REJECT;
	if (!(f0 & SMFIF_DELRCPT)) {
		/* Without it a trap copy cannot be dropped; the MTA's milter_default_action applies. */
		log_error("milter: the MTA does not let filters remove recipients (SMFIF_DELRCPT); refusing");
		return SMFIS_REJECT;
	}
	bool want_data, want_header;

	greylist_wants(&want_data, &want_header);
	*pf0 = SMFIF_DELRCPT | (f0 & SMFIF_SETSYMLIST) | (relay_wants_hold() ? f0 & SMFIF_QUARANTINE : 0) |
	       (want_header ? f0 & SMFIF_ADDHDRS : 0);
	*pf1 = f1 & (STEPS_NOT_WANTED | STEPS_NO_REPLY);
	if (want_data)
		*pf1 &= ~(unsigned long)SMFIP_NODATA;
	*pf2 = *pf3 = 0;
	c->steps = *pf1;
	/* Only the macros used here; Postfix then sends no others, at any stage. */
	if (f0 & SMFIF_SETSYMLIST) {
		filter.shim->setsymlist(ctx, SMFIM_ENVFROM, "i {auth_authen}");
		filter.shim->setsymlist(ctx, SMFIM_ENVRCPT, "i");
		filter.shim->setsymlist(ctx, SMFIM_EOM, "i");
	}
	return SMFIS_CONTINUE;
}

/*
 * Nothing is decided at connect: Postfix's first connection for an XCLIENT
 * session shows 127.0.0.1 and is closed before the real client's.
 */
static sfsistat cb_connect(SMFICTX *ctx, char *hostname, _SOCK_ADDR *hostaddr)
{
	milter_conn *c = filter.shim->getpriv(ctx);
	stats_milter_session();
	if (!c && !(c = conn_new(ctx)))
		return SMFIS_CONTINUE; /* no context: MAIL FROM will tempfail */
	msg_end(&c->msg);
	client_text(hostaddr, c->client, sizeof(c->client));
	/* Postfix sends its client_name here: the verified name, never the unverified PTR. */
	copy_capped(c->client_name, sizeof(c->client_name), hostname);
	c->helo[0] = '\0';
	return step_done(c, SMFIP_NR_CONN);
}

/* HELO may be a blocklist key (helo_name) and is recorded with every hit. */
static sfsistat cb_helo(SMFICTX *ctx, char *helohost)
{
	milter_conn *c = filter.shim->getpriv(ctx);
	if (c)
		copy_capped(c->helo, sizeof(c->helo), helohost);
	return step_done(c, SMFIP_NR_HELO);
}

static sfsistat cb_envfrom(SMFICTX *ctx, char **argv)
{
	milter_conn *c = filter.shim->getpriv(ctx);
	if (!c)
		return reply_with(ctx, &REPLY_INTERNAL, SMFIS_TEMPFAIL);
	msg_end(&c->msg); /* a transaction the MTA never closed */
	if (!msg_begin(&c->msg))
		return reply_with(ctx, &REPLY_STOPPING, SMFIS_TEMPFAIL);
	milter_msg *m = &c->msg;
	const char *sender = envelope_bare(argv && argv[0] ? argv[0] : "", m->sender, sizeof(m->sender));
	if (sender != m->sender)
		copy_capped(m->sender, sizeof(m->sender), sender); /* for the log only */
	copy_capped(m->sasl, sizeof(m->sasl), filter.shim->getsymval(ctx, "{auth_authen}"));
	msg_update_queue_id(ctx, m);

	decide_facts f = conn_facts(c, NULL);
	f.sender = sender; /* uncapped: an over-long address must be judged as such */
	check_verdict v = milter_stage(m, CHECK_STAGE_MAIL, &f);
	sfsistat status = verdict_status(ctx, &v);
	if (status != SMFIS_CONTINUE)
		msg_end(m);
	return status;
}

static sfsistat cb_envrcpt(SMFICTX *ctx, char **argv)
{
	milter_conn *c = filter.shim->getpriv(ctx);
	if (!c || !c->msg.msg.snap || !argv || !argv[0])
		return SMFIS_CONTINUE; /* no transaction of ours: nothing to decide */
	milter_msg *m = &c->msg;
	msg_update_queue_id(ctx, m);
	char bare[ENVELOPE_MAX];
	decide_facts f = conn_facts(c, envelope_bare(argv[0], bare, sizeof(bare)));
	check_verdict v = milter_stage(m, CHECK_STAGE_RCPT, &f);
	if (v.action == DECIDE_DROP_COPY) {
		if (msg_add_trap(m, argv[0]))
			return SMFIS_CONTINUE;
		engine_msg_forget_trap(&m->msg);
		char safe[128];
		log_error("%s: milter: cannot remember trap recipient <%s> for removal; tempfailing it",
		          m->queue_id[0] ? m->queue_id : "NOQUEUE", log_safe(argv[0], safe, sizeof(safe)));
		return reply_with(ctx, &REPLY_INTERNAL, SMFIS_TEMPFAIL);
	}
	if (v.action == DECIDE_CONTINUE && v.header[0] && !m->header[0])
		memcpy(m->header, v.header, sizeof(m->header));
	if (v.action == DECIDE_HOLD && !m->hold[0])
		snprintf(m->hold, sizeof(m->hold), "%s", v.reply.text[0] ? v.reply.text : "spamtrapd hold");
	return verdict_status(ctx, &v);
}

/* DATA: where the greylist defers a null sender (greylist.null_sender_at), once RCPT TO got its answer. */
static sfsistat cb_data(SMFICTX *ctx)
{
	milter_conn *c = filter.shim->getpriv(ctx);
	if (!c || !c->msg.msg.snap)
		return SMFIS_CONTINUE;
	milter_msg *m = &c->msg;
	msg_update_queue_id(ctx, m);
	decide_facts f = conn_facts(c, NULL);
	check_verdict v = milter_stage(m, CHECK_STAGE_DATA, &f);
	sfsistat status = verdict_status(ctx, &v);
	if (status != SMFIS_CONTINUE)
		msg_end(m);
	return status;
}

/*
 * A check's header ("Name: value": the greylist's X-Greylist, the spf
 * check's Received-SPF), first in the message as the policy side's
 * PREPEND puts it.
 */
static void insert_header(SMFICTX *ctx, const milter_msg *m, const char *header)
{
	char name[CHECK_HEADER_MAX];
	const char *colon = strchr(header, ':');
	size_t n = colon ? (size_t)(colon - header) : 0;

	if (n == 0)
		return;
	memcpy(name, header, n);
	name[n] = '\0';
	if (filter.shim->insheader(ctx, 0, name, colon + 1 + (colon[1] == ' ')) != MI_SUCCESS)
		log_warning("%s: milter: cannot add the header %s", m->queue_id[0] ? m->queue_id : "NOQUEUE",
		            name);
}

static void remove_traps(SMFICTX *ctx, const milter_msg *m)
{
	for (size_t i = 0; i < m->ntraps; i++) {
		if (filter.shim->delrcpt(ctx, m->traps[i]) == MI_SUCCESS)
			continue;
		char safe[128];
		log_error("%s: milter: cannot remove trap recipient %s; it gets its copy",
		          m->queue_id[0] ? m->queue_id : "NOQUEUE",
		          log_safe(m->traps[i], safe, sizeof(safe)));
	}
}

static sfsistat cb_eom(SMFICTX *ctx)
{
	milter_conn *c = filter.shim->getpriv(ctx);
	if (!c || !c->msg.msg.snap)
		return SMFIS_CONTINUE;
	milter_msg *m = &c->msg;
	msg_update_queue_id(ctx, m);
	decide_facts f = conn_facts(c, NULL);
	check_verdict v = milter_stage(m, CHECK_STAGE_EOM, &f);
	sfsistat status = SMFIS_CONTINUE;
	if (v.action == DECIDE_DISCARD)
		status = SMFIS_DISCARD;
	else if (v.action == DECIDE_DROP_COPY)
		remove_traps(ctx, m);
	if (status == SMFIS_CONTINUE && m->hold[0] && filter.shim->quarantine(ctx, m->hold) != MI_SUCCESS) {
		/* Never deliver what was to be held: the MTA did not grant SMFIF_QUARANTINE, or failed. */
		log_error("%s: milter: cannot put the message on hold (smfi_quarantine); tempfailing it",
		          m->queue_id[0] ? m->queue_id : "NOQUEUE");
		status = reply_with(ctx, &REPLY_INTERNAL, SMFIS_TEMPFAIL);
	}
	if (status == SMFIS_CONTINUE && m->header[0])
		insert_header(ctx, m, m->header);
	/* Last, so first in the message: Received-SPF goes above the greylist's header, as a trace field. */
	if (status == SMFIS_CONTINUE && v.action == DECIDE_CONTINUE && v.header[0])
		insert_header(ctx, m, v.header);
	msg_end(m);
	return status;
}

static sfsistat cb_abort(SMFICTX *ctx)
{
	milter_conn *c = filter.shim->getpriv(ctx);
	if (c)
		msg_end(&c->msg);
	return SMFIS_CONTINUE;
}

/*
 * libmilter drops a connection whose first packet is no option
 * negotiation (garbage, an HTTP or TLS client, a port probe) without a
 * word in our log; it still calls close. One line each, unless a flood.
 */
static void log_not_mta(void)
{
	struct timespec now;
	uint64_t more = 0;
	clock_gettime(CLOCK_MONOTONIC, &now);
	bool pass = log_ratelimit_pass(&filter.not_mta, (int64_t)now.tv_sec, &more);
	if (more > 0)
		log_warning("milter: %llu more connections that were no MTA not logged (at most %d a second)",
		            (unsigned long long)more, NOT_MTA_LOG_BURST);
	if (pass)
		log_warning(
		    "milter: connection closed before option negotiation: the peer does not speak the "
		    "milter protocol (garbage, another protocol, a port probe)");
}

static sfsistat cb_close(SMFICTX *ctx)
{
	milter_conn *c = filter.shim->getpriv(ctx);
	if (!c)
		log_not_mta();
	conn_free(ctx, c);
	return SMFIS_CONTINUE;
}

void milter_filter_init(engine *eng, const milter_shim *shim, struct smfiDesc *desc)
{
	pthread_mutex_lock(&filter.lock);
	filter.eng = eng;
	filter.shim = shim;
	filter.stopping = false;
	if (gethostname(filter.hostname, sizeof(filter.hostname) - 1) < 0)
		snprintf(filter.hostname, sizeof(filter.hostname), "unknown");
	pthread_mutex_unlock(&filter.lock);
	memset(desc, 0, sizeof(*desc));
	desc->xxfi_name = filter_name;
	desc->xxfi_version = SMFI_VERSION;
	desc->xxfi_flags = SMFIF_DELRCPT | SMFIF_ADDHDRS | SMFIF_QUARANTINE;
	desc->xxfi_connect = cb_connect;
	desc->xxfi_helo = cb_helo;
	desc->xxfi_envfrom = cb_envfrom;
	desc->xxfi_envrcpt = cb_envrcpt;
	desc->xxfi_data = cb_data;
	desc->xxfi_eom = cb_eom;
	desc->xxfi_abort = cb_abort;
	desc->xxfi_close = cb_close;
	desc->xxfi_negotiate = cb_negotiate;
}

unsigned milter_filter_quiesce(unsigned grace_ms)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += grace_ms / 1000;
	until.tv_nsec += (long)(grace_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&filter.lock);
	filter.stopping = true;
	while (filter.transactions > 0)
		if (pthread_cond_timedwait(&filter.idle, &filter.lock, &until) != 0)
			break;
	unsigned left = filter.transactions;
	pthread_mutex_unlock(&filter.lock);
	return left;
}

unsigned milter_filter_connections(void)
{
	pthread_mutex_lock(&filter.lock);
	unsigned n = filter.connections;
	pthread_mutex_unlock(&filter.lock);
	return n;
}

/* ---- setup ---- */

/* The path of a unix:/local: socket spec, or NULL for inet: and inet6:. */
static const char *unix_path(const char *spec)
{
	if (strncmp(spec, "unix:", 5) == 0)
		return spec + 5;
	if (strncmp(spec, "local:", 6) == 0)
		return spec + 6;
	return NULL;
}

/* Give the socket the configured owner, group and mode (Postfix must be able to connect). */
static int socket_permissions(const config *cfg, const char *path, char *err, size_t errlen)
{
	return sockperm_apply(path, cfg->milter.socket_owner, cfg->milter.socket_group,
	                      cfg->milter.socket_mode, "milter.socket", err, errlen);
}

/* libmilter only logs why a socket failed; say the likely reason here. */
static int check_socket_dir(const char *path, char *err, size_t errlen)
{
	char dir[4096];
	copy_capped(dir, sizeof(dir), path);
	char *slash = strrchr(dir, '/');
	if (!slash)
		return 0;
	*(slash == dir ? slash + 1 : slash) = '\0';
	struct stat st;
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen,
		         "milter.listen: directory %s does not exist (create it, see docs/milter.md)", dir);
		return -1;
	}
	return 0;
}

static int open_socket(const config *cfg, const char *path, char *err, size_t errlen)
{
	/* Create the socket with no more access than asked for, not the umask's. */
	mode_t old_mask = 0;
	if (path && cfg->milter.socket_mode)
		old_mask = umask(~(mode_t)cfg->milter.socket_mode & 0777);
	errno = 0;
	int rc = smfi_opensocket(true);
	int saved = errno;
	if (path && cfg->milter.socket_mode)
		umask(old_mask);
	if (rc != MI_SUCCESS) {
		snprintf(err, errlen, "milter.listen %s: cannot listen%s%s", cfg->milter.listen,
		         saved ? ": " : " (see the syslog for libmilter's reason)",
		         saved ? strerror(saved) : "");
		return -1;
	}
	return path ? socket_permissions(cfg, path, err, errlen) : 0;
}

int milter_setup(engine *eng, const config *cfg, char *err, size_t errlen)
{
	if (filter.registered) {
		snprintf(err, errlen, "milter: already set up (libmilter allows one filter per process)");
		return -1;
	}
	if (!cfg->milter.listen || !*cfg->milter.listen) {
		snprintf(err, errlen, "milter.listen is not set");
		return -1;
	}
	const char *path = unix_path(cfg->milter.listen);
	if (path && check_socket_dir(path, err, errlen) < 0)
		return -1;
	struct smfiDesc desc;
	milter_filter_init(eng, &milter_shim_libmilter, &desc);
	if (smfi_register(desc) != MI_SUCCESS || smfi_setconn((char *)cfg->milter.listen) != MI_SUCCESS) {
		snprintf(err, errlen, "milter: libmilter refused the filter or milter.listen \"%s\"",
		         cfg->milter.listen);
		return -1;
	}
	if (cfg->milter.timeout > 0)
		smfi_settimeout(cfg->milter.timeout);
	if (open_socket(cfg, path, err, errlen) < 0)
		return -1;
	filter.registered = true;
	return 0;
}

/*
 * libmilter's listener looks at smfi_stop only between two polls of 5 s
 * each: a stop took up to 5 s more (with the policy listeners already
 * closed). A signal with a handler cuts the poll short (EINTR: it looks
 * at once). SIGURG: never sent to spamtrapd otherwise (no socket of ours
 * has an owner for out-of-band data); every other thread blocks it
 * (daemon_block_signals) but libmilter's, started by this one, which
 * retry on EINTR. No SA_RESTART: an accept() that blocks after the poll
 * must end too.
 */
#define WAKE_SIGNAL SIGURG

static void wake_handler(int sig)
{
	(void)sig;
}

static void *stop_main(void *arg)
{
	(void)arg;
	smfi_stop();
	return NULL;
}

static void *milter_main(void *arg)
{
	(void)arg;
	sigset_t wake;
	sigemptyset(&wake);
	sigaddset(&wake, WAKE_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &wake, NULL);
	int rc = smfi_main();
	atomic_store(&filter.listener_done, true);
	pthread_mutex_lock(&filter.lock);
	bool expected = filter.stopping;
	pthread_mutex_unlock(&filter.lock);
	if (!expected) {
		/*
		 * libmilter's own signal thread stops the filter on a SIGHUP or
		 * SIGTERM that reaches it instead of the main thread. A daemon
		 * without its milter must not linger: stop it with a failure
		 * status so that the service manager starts it again.
		 */
		log_error("milter: libmilter stopped on its own (rc %d); stopping spamtrapd", rc);
		atomic_store(&filter.failed, true);
		kill(getpid(), SIGTERM);
	}
	return NULL;
}

int milter_start(char *err, size_t errlen)
{
	if (!filter.registered || filter.running) {
		snprintf(err, errlen, "milter: %s",
		         filter.running ? "already running" : "milter_setup not called");
		return -1;
	}
	struct sigaction sa = {.sa_handler = wake_handler};
	sigemptyset(&sa.sa_mask);
	sigaction(WAKE_SIGNAL, &sa, NULL);
	atomic_store(&filter.listener_done, false);
	int rc = pthread_create(&filter.thread, NULL, milter_main, NULL);
	if (rc != 0) {
		snprintf(err, errlen, "milter: cannot start the libmilter thread: %s", strerror(rc));
		return -1;
	}
	filter.running = true;
	return 0;
}

/*
 * Transactions in flight finish first, while libmilter still serves them:
 * its worker pool drops every session at smfi_stop. New transactions get
 * a 4xx meanwhile (Postfix retries them, nothing is lost).
 */
bool milter_failed(void)
{
	return atomic_load(&filter.failed);
}

bool milter_stop(void)
{
	if (!filter.running)
		return true;
	unsigned left = milter_filter_quiesce(STOP_GRACE_MS);
	if (left)
		log_warning("milter: %u transaction(s) still in flight after %d s; stopping anyway", left,
		            STOP_GRACE_MS / 1000);
	/*
	 * smfi_stop waits for the lock the listener holds across its poll:
	 * it runs on a thread of its own while this one wakes the listener, again
	 * until it is out (a wake-up just before its poll is lost).
	 */
	pthread_t stopper;
	if (pthread_create(&stopper, NULL, stop_main, NULL) != 0) {
		smfi_stop(); /* the slow way */
	} else {
		while (!atomic_load(&filter.listener_done)) {
			pthread_kill(filter.thread, WAKE_SIGNAL);
			nanosleep(&(struct timespec){.tv_nsec = 20 * 1000000L}, NULL);
		}
		pthread_join(stopper, NULL);
	}
	pthread_join(filter.thread, NULL);
	filter.running = false;
	unsigned open = milter_filter_connections();
	if (open)
		log_info("milter: stopped with %u connection(s) open; libmilter dropped them", open);
	/* The resolver, unless a dropped session's thread still waits on it (then the process exit does). */
	pthread_mutex_lock(&filter.lock);
	if (filter.dns_users == 0) {
		dns_free(filter.dns);
		filter.dns = NULL;
	}
	pthread_mutex_unlock(&filter.lock);
	return left == 0;
}
