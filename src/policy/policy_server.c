/*
 * policy_server: the Postfix policy-delegation front end (SMTPD_POLICY_README).
 *
 * Offers: listeners bound at policy_server_new() (before privileges are
 * dropped), worker threads from policy_server_start(), a bounded drain in
 * policy_server_stop(). Every request gets exactly one reply line
 * ("action=...", then an empty line); a malformed one gets action=DUNNO and
 * one log line (SPEC "Replies"), and the connection stays. Only input that
 * cannot be Postfix (a NUL byte, a request that never ends, several
 * malformed requests in a row) gets one log line and a closed connection.
 * Lines about bad input are limited to BAD_INPUT_BURST a second for the
 * daemon, the rest counted in a summary line. Nothing a client sends can
 * crash or stall the daemon for the other clients.
 *
 * Threading model: N workers (policy.threads, 0 = one per CPU, at least 2),
 * each with its own epoll instance. Every listening socket is in every
 * worker's epoll with EPOLLEXCLUSIVE, so a new connection wakes one idle
 * worker (no thundering herd) and is accepted there; the connection then
 * lives on that thread until it closes. Per connection the protocol is
 * lock-step, as Postfix speaks it: one request is read, decided, answered,
 * and only then is the next one parsed. Why this shape:
 *  - A decision is a short synchronous call: a store lookup (SQLite in the
 *    process, or one Redis round trip with a command timeout) and the pure
 *    core. Postfix sends one request per connection and waits for the reply,
 *    so there is nothing to overlap within a connection; concurrency comes
 *    from the many connections (one per smtpd process).
 *  - A connection's state is touched by one thread only: no locks, no
 *    hand-off queue, no wake-ups between threads on the request path. The
 *    only shared things there are the engine snapshot (engine_acquire), the
 *    atomic connection counter at accept, and the engine's lock-free message
 *    table (engine_msg_recall).
 *  - DNS is the exception: a request whose checks want DNS answers
 *    (engine_dns_plan) parks until they are in or its deadline passes, and
 *    the worker serves its other connections meanwhile (a slow DNS server
 *    is common, and one request could otherwise hold a worker for seconds).
 *    The worker's own resolver has its fd in the worker's epoll set, so
 *    answers arrive on the thread that owns the connection (see "parked").
 *  - A slow store blocks one worker, and only the connections on it; the
 *    other workers keep accepting and answering. A thread per connection
 *    would cost a stack and a context switch per smtpd process; one event
 *    loop feeding a pool of store threads would add a queue, a lock and two
 *    wake-ups to every request for the same latency.
 *
 * Limits: policy.max_connections, lowered to what the open files limit
 * leaves room for (at it, the least recently active connection is closed
 * for each new one: idle or slow clients cannot lock Postfix out; one
 * log line per burst), policy.idle_timeout (a one-second timerfd per
 * worker sweeps its connections, kept in least-recently-active order; a
 * connection is active when a reply goes out or a request begins, so the
 * timeout also bounds how long one request may take to arrive: a client
 * sending a byte a second holds nothing for long), policy.max_line and
 * policy.max_attributes (the parser; a request over them is answered
 * DUNNO), policy.allow (TCP clients outside it are closed at accept; unix
 * sockets are always allowed: their owner, group and mode,
 * policy.socket_*, decide who may connect). Limits and the allow list are
 * read from the current snapshot at accept and after every request, so a
 * reload applies to them; listeners and the thread count need a restart.
 */
#include "policy/policy_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/addr.h"
#include "core/netset.h"
#include "dns/dns.h"
#include "dns/dnsrun.h"
#include "listenaddr.h"
#include "log.h"
#include "sockperm.h"
#include "stats.h"
#include "policy/policy_parse.h"

#define IN_BUF 4096
#define OUT_BUF 1024 /* one reply: "action=" + code, xcode, 511 bytes of text */
#define MAX_EVENTS 64
#define ACCEPT_BATCH 32 /* accepts per wake-up, so one listener cannot starve the rest */
#define LISTEN_BACKLOG 1024
#define DRAIN_SECONDS 3        /* policy_server_stop waits this long for requests in progress */
#define LOG_INTERVAL 10        /* seconds between rate-limited lines (limits, accept errors) */
#define REFUSED_LOG_INTERVAL 1 /* clients outside policy.allow: nearly every one, yet no flood */
#define PEER_MAX 64
#define MALFORMED_MAX 3       /* malformed requests in a row before the connection is closed */
#define BAD_INPUT_BURST 20    /* lines about bad input per second, for the daemon; the rest are counted */
#define EVICT_LOG_INTERVAL 10 /* seconds between lines about connections closed to make room */
#define EVICT_SCAN 8          /* connections looked at, least recently active first, for one to close */
#define EVICT_SLACK 64    /* connections over the limit while the workers holding the old ones close them */
#define EVICT_DEFER_MAX 8 /* over the limit by this many, a worker closes its own oldest, not another's */
/* Descriptors kept free of policy connections: listeners, epoll, the store, milter sessions. */
#define FD_RESERVE_MIN 64

/* What an epoll event points to; the first member of each source. */
typedef enum { SRC_LISTENER, SRC_CONN, SRC_WAKE, SRC_TIMER, SRC_DNS, SRC_DNS_OLD } src_kind;

typedef struct listener {
	src_kind kind;
	int fd;
	policy_role role;
	unsigned checks; /* the role's checks (config_listener.checks) */
	char *address;   /* as configured, for log lines */
	char *unix_path; /* to unlink at the end; NULL for TCP */
} listener;

typedef struct worker worker;
typedef struct conn conn;

/*
 * A request waiting for its DNS answers (dns/dnsrun.h): the message being
 * decided, the plan and its run. The connection reads nothing meanwhile
 * (pipelined requests wait in its buffer), and its facts point into the
 * parser's request, which stays as it is until the parser is fed again.
 * Workers keep them in a list, to resume those answered or past their
 * deadline after each batch of events.
 */
typedef struct parked {
	conn *c;
	struct parked *prev, *next;
	engine_msg m;    /* points into itself: never copied, hence a worker's spare, used in place */
	dns_resolver *r; /* the resolver its run is on */
	check_stage stage;
	decide_facts f;
	const char *instance;
	dnsrun *run;
	int64_t started_ms, deadline_ms;
	bool ready; /* every answer is in */
	dnsplan plan;
} parked;

struct conn {
	src_kind kind;
	int fd;
	worker *w;
	const listener *lst;
	conn *prev, *next; /* the worker's list, least recently active first */
	/*
	 * Monotonic ns: the last reply (read before it is sent), or the first
	 * byte of the request since. Read at that moment, not the batch's
	 * clock: it orders connections across workers (evict_candidate), so a
	 * reply the client answers with a new connection must count as earlier
	 * than that connection's request, even in the same millisecond.
	 */
	int64_t last_active;
	uint64_t batch;     /* the worker's batch of events it was accepted in */
	bool want_out;      /* registered for EPOLLOUT instead of EPOLLIN */
	bool closing;       /* draining, or given up on: close once the current reply is out */
	unsigned malformed; /* malformed requests in a row */
	parked *wait;       /* the request waiting for DNS, if any */
	policy_parser *parser;
	char peer[PEER_MAX];
	size_t inoff, inlen, outoff, outlen;
	char in[IN_BUF];
	char out[OUT_BUF];
};

struct worker {
	policy_server *srv;
	unsigned id;
	pthread_t thread;
	bool running;
	int epfd, wakefd, timerfd;
	src_kind wake_tag, timer_tag;
	conn *head, *tail;
	size_t nconn;
	int64_t now, now_ms; /* monotonic seconds (rate limits), milliseconds (activity) */
	uint64_t batch;      /* counts the loop's batches of events */
	/* last_active of its evict_candidate (INT64_MAX: none), for the other workers (worker_publish) */
	_Atomic int64_t oldest;
	bool accepting, draining;
	int64_t drain_deadline;
	/* DNS: the worker's own resolver, made at the first request that needs it (dns/dns.h). */
	dns_resolver *dns;
	src_kind dns_tag, dns_old_tag;
	char dns_settings[CONFIG_DNS_KEY_MAX]; /* the dns.key it was made with: remade after a reload changes
	                                          it */
	/* The resolver a reload replaced, kept until the requests waiting on it are answered. */
	dns_resolver *dns_old;
	size_t nparked_old;
	parked *parked_head, *parked_tail;
	size_t nparked;
	parked *spare; /* for the next request: allocated only when the last one parked */
};

struct policy_server {
	engine *eng;
	listener *listeners;
	size_t nlisteners;
	worker *workers;
	size_t nworkers;
	bool started, stopped;
	atomic_uint nconn;
	atomic_uint conn_limit; /* policy.max_connections, or what the open files limit leaves room for */
	unsigned fd_cap;        /* connections the open files limit leaves room for */
	atomic_bool stopping;   /* policy_server_stop: a wake-up means drain, not evict */
	/*
	 * Shared by the workers (log_ratelimit_pass locks): one line per
	 * interval for the daemon; bad_input lets through BAD_INPUT_BURST a
	 * second, so that each bad request or connection gets its line unless
	 * a flood of them would drown the log (then a count says how many).
	 */
	log_ratelimit over_limit, refused, accept_errors, evicted, bad_input;
	log_ratelimit dns_late, dns_errors; /* DNS answers missing at the deadline; no resolver */
	char hostname[256];                 /* SPF's %{r} */
};

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void worker_clock(worker *w)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	w->now = (int64_t)ts.tv_sec;
	w->now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- lines about bad input ---- */

static void log_bad_input_summary(uint64_t suppressed)
{
	log_warning("policy: %llu more lines about bad input from clients not logged (at most %u a second)",
	            (unsigned long long)suppressed, (unsigned)BAD_INPUT_BURST);
}

/*
 * One line about a bad request or connection (SPEC "Bad input": a clear
 * line for each), unless a flood of them goes over BAD_INPUT_BURST a
 * second: those are counted, and the count is logged before the next line
 * that passes or by the workers' one-second tick.
 */
__attribute__((format(printf, 4, 5))) static void log_bad_input(policy_server *srv, int64_t now, int level,
                                                                const char *fmt, ...)
{
	uint64_t suppressed = 0;
	char line[1024];
	va_list ap;
	bool pass = log_ratelimit_pass(&srv->bad_input, now, &suppressed);

	if (suppressed > 0)
		log_bad_input_summary(suppressed);
	if (!pass)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	log_msg(level, "%s", line);
}

static void log_bad_input_flush(policy_server *srv, int64_t now)
{
	uint64_t suppressed;

	if (log_ratelimit_flush(&srv->bad_input, now, &suppressed))
		log_bad_input_summary(suppressed);
}

/* ---- listeners ---- */

static int bind_inet(listener *l, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	char why[128];
	addr_ip ip;
	uint16_t port;
	int one = 1;

	/* The parser config.c checked the address with: it cannot fail on a loaded config. */
	if (!addr_hostport_parse(l->address, &ip, &port, why, sizeof(why))) {
		snprintf(err, errlen, "policy listener %s: expected IPV4:PORT, [IPV6]:PORT or unix:PATH (%s)",
		         l->address, why);
		return -1;
	}
	sslen = listenaddr_inet(&ip, port, &ss);
	l->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->fd < 0) {
		snprintf(err, errlen, "policy listener %s: socket: %s", l->address, strerror(errno));
		return -1;
	}
	setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* [::]:P serves IPv6 only, so that 0.0.0.0:P can be listed beside it. */
	if (ss.ss_family == AF_INET6)
		setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(l->fd, (struct sockaddr *)&ss, sslen) < 0 || listen(l->fd, LISTEN_BACKLOG) < 0) {
		snprintf(err, errlen, "policy listener %s: %s", l->address, strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * policy.socket_owner, socket_group and socket_mode on a bound unix
 * socket. Done before listen(): until then a connect is refused, so no
 * client gets in under the permissions bind() left (those of the umask).
 */
static int unix_permissions(const config *cfg, const char *path, char *err, size_t errlen)
{
	return sockperm_apply(path, cfg->policy.socket_owner, cfg->policy.socket_group,
	                      cfg->policy.socket_mode, "policy.socket", err, errlen);
}

static int bind_unix(listener *l, const config *cfg, char *err, size_t errlen)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	const char *path = l->address + 5;

	if (*path == '\0' || strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "policy listener %s: bad unix socket path", l->address);
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	char what[160];

	snprintf(what, sizeof(what), "policy listener %s", l->address);
	if (listenaddr_clear_stale_unix(&sun, what, err, errlen) < 0)
		return -1;
	l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->fd < 0 || bind(l->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		snprintf(err, errlen, "policy listener %s: %s", l->address, strerror(errno));
		return -1;
	}
	l->unix_path = strdup(path);
	if (l->unix_path == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (unix_permissions(cfg, path, err, errlen) < 0)
		return -1;
	if (listen(l->fd, LISTEN_BACKLOG) < 0) {
		snprintf(err, errlen, "policy listener %s: %s", l->address, strerror(errno));
		return -1;
	}
	return 0;
}

static int listener_open(listener *l, const config *cfg, const config_listener *cl, char *err, size_t errlen)
{
	l->kind = SRC_LISTENER;
	l->fd = -1;
	l->role = cl->role;
	l->checks = cl->checks;
	l->address = strdup(cl->address);
	if (l->address == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (strncmp(l->address, "unix:", 5) == 0)
		return bind_unix(l, cfg, err, errlen);
	return bind_inet(l, err, errlen);
}

static void listener_close(listener *l)
{
	if (l->fd >= 0)
		close(l->fd);
	l->fd = -1;
	/* Best effort: after dropping privileges the directory may not be ours. */
	if (l->unix_path != NULL && unlink(l->unix_path) < 0 && errno != ENOENT)
		log_debug("policy listener %s: cannot remove the socket: %s", l->address, strerror(errno));
	free(l->unix_path);
	l->unix_path = NULL;
}

/* ---- deciding one request ---- */

typedef enum { STAGE_OTHER, STAGE_MAIL, STAGE_RCPT, STAGE_DATA } smtp_stage;

/* A value as the client sent it; NULL when absent, empty, or cut at its cap. */
static const char *attr_whole(const policy_request *req, policy_attr a)
{
	const char *v = policy_request_get(req, a);

	return v == NULL || *v == '\0' || policy_request_truncated(req, a) ? NULL : v;
}

/* protocol_state; when absent, what the attributes show (a recipient: RCPT). */
static smtp_stage request_stage(const policy_request *req)
{
	const char *state = policy_request_get(req, POLICY_ATTR_PROTOCOL_STATE);

	if (state == NULL) {
		if (attr_whole(req, POLICY_ATTR_RECIPIENT) != NULL)
			return STAGE_RCPT;
		return policy_request_get(req, POLICY_ATTR_SENDER) != NULL ? STAGE_MAIL : STAGE_OTHER;
	}
	if (strcasecmp(state, "RCPT") == 0)
		return STAGE_RCPT;
	if (strcasecmp(state, "MAIL") == 0)
		return STAGE_MAIL;
	/* smtpd_data_restrictions: where the greylist defers the null sender (greylist.null_sender_at) */
	if (strcasecmp(state, "DATA") == 0)
		return STAGE_DATA;
	return STAGE_OTHER;
}

typedef struct request_ctx {
	policy_server *srv;
	const listener *lst;
	const char *peer;
	const policy_request *req;
	int64_t now;
	unsigned malformed_before; /* malformed requests in a row before this one */
	bool malformed;            /* set when the request cannot be decided on */
} request_ctx;

static void log_malformed(const request_ctx *rc, const char *why)
{
	char qid[64], closing[64] = "";

	if (rc->malformed_before + 1 >= MALFORMED_MAX)
		snprintf(closing, sizeof(closing), ", closing the connection after %u in a row",
		         rc->malformed_before + 1);
	log_bad_input(rc->srv, rc->now, LOG_WARNING,
	              "policy: %s: request from %s on %s: %s; answered DUNNO%s",
	              log_safe(attr_whole(rc->req, POLICY_ATTR_QUEUE_ID), qid, sizeof(qid)), rc->peer,
	              rc->lst->address, why, closing);
}

/* One line for a request whose values were cut: they are used as described below. */
static void log_truncated(const request_ctx *rc)
{
	static const policy_attr used[] = {POLICY_ATTR_SENDER, POLICY_ATTR_RECIPIENT,
	                                   POLICY_ATTR_CLIENT_ADDRESS, POLICY_ATTR_HELO_NAME};
	char qid[64];

	for (size_t i = 0; i < sizeof(used) / sizeof(used[0]); i++) {
		if (policy_request_truncated(rc->req, used[i])) {
			log_bad_input(rc->srv, rc->now, LOG_INFO,
			              "policy: %s: request from %s on %s: %s longer than %zu bytes, not used",
			              log_safe(attr_whole(rc->req, POLICY_ATTR_QUEUE_ID), qid, sizeof(qid)),
			              rc->peer, rc->lst->address, policy_attr_name(used[i]),
			              policy_attr_cap(used[i]));
			return;
		}
	}
}

/*
 * Facts from the request. A value longer than its cap is not the real
 * value: a cut sender counts as invalid (the other keys are still checked),
 * a cut recipient is not a trap, a cut HELO or client address is unknown.
 * Returns false (answer DUNNO) when the request cannot be decided on.
 */
static bool request_facts(const request_ctx *rc, smtp_stage stage, decide_facts *f)
{
	const policy_request *req = rc->req;
	const char *request = policy_request_get(req, POLICY_ATTR_REQUEST);
	bool rcpt_check = stage == STAGE_RCPT && rc->lst->role != POLICY_ROLE_SENDER;
	bool sender_check = stage != STAGE_OTHER && rc->lst->role != POLICY_ROLE_TRAP;

	if (request == NULL || strcmp(request, "smtpd_access_policy") != 0) {
		log_malformed(rc, request == NULL ? "no request attribute"
		                                  : "request is not smtpd_access_policy");
		return false;
	}
	if (policy_request_truncated(req, POLICY_ATTR_SASL_USERNAME)) {
		log_malformed(rc, "sasl_username too long"); /* whose account it is matters */
		return false;
	}
	if ((rcpt_check && policy_request_get(req, POLICY_ATTR_RECIPIENT) == NULL) ||
	    (sender_check && policy_request_get(req, POLICY_ATTR_SENDER) == NULL)) {
		log_malformed(rc, rcpt_check && !policy_request_get(req, POLICY_ATTR_RECIPIENT)
		                      ? "no recipient attribute"
		                      : "no sender attribute");
		return false;
	}
	if (rc->req->truncated != 0)
		log_truncated(rc);
	memset(f, 0, sizeof(*f));
	f->front = DECIDE_FRONT_POLICY;
	f->client_address = attr_whole(req, POLICY_ATTR_CLIENT_ADDRESS);
	f->helo = attr_whole(req, POLICY_ATTR_HELO_NAME);
	f->client_name = attr_whole(req, POLICY_ATTR_CLIENT_NAME);
	f->sasl_username = attr_whole(req, POLICY_ATTR_SASL_USERNAME);
	f->recipient = attr_whole(req, POLICY_ATTR_RECIPIENT);
	f->queue_id = attr_whole(req, POLICY_ATTR_QUEUE_ID);
	/* The null sender arrives as "sender=": keep it "" (not NULL, which is invalid). */
	f->sender = policy_request_truncated(req, POLICY_ATTR_SENDER)
	                ? NULL
	                : policy_request_get(req, POLICY_ATTR_SENDER);
	return true;
}

static check_stage check_stage_of(smtp_stage stage)
{
	switch (stage) {
	case STAGE_MAIL:
		return CHECK_STAGE_MAIL;
	case STAGE_DATA:
		return CHECK_STAGE_DATA;
	case STAGE_RCPT:
	case STAGE_OTHER:
		break;
	}
	return CHECK_STAGE_RCPT;
}

/*
 * The request's stage through the checks the listener's role runs
 * (config_listener.checks), with the message's state recalled by its
 * instance attribute: one message's recipients arrive as separate
 * requests, on one or two listeners. In two steps, because the checks may
 * want DNS answers in between (conn_answer): policy_begin returns false
 * with *v final when there is nothing to decide, else true with a message
 * begun in p, which policy_finish decides and ends.
 */
static bool policy_begin(engine_snapshot *snap, request_ctx *rc, parked *p, check_verdict *v)
{
	smtp_stage stage = request_stage(rc->req);

	*v = check_continue();
	if (!request_facts(rc, stage, &p->f)) {
		rc->malformed = true;
		return false;
	}
	if (stage == STAGE_OTHER)
		return false;
	p->stage = check_stage_of(stage);
	p->instance = attr_whole(rc->req, POLICY_ATTR_INSTANCE);
	engine_msg_begin(&p->m, snap);
	engine_msg_recall(&p->m, p->instance);
	return true;
}

static check_verdict policy_finish(parked *p, const listener *l)
{
	check_verdict v = engine_stage(&p->m, p->stage, l->checks, &p->f);

	engine_msg_remember(&p->m, p->instance);
	engine_msg_end(&p->m);
	return v;
}

static const char DUNNO[] = "action=DUNNO\n\n";

static void log_internal(const request_ctx *rc, const char *why)
{
	char qid[64];

	log_error("policy: %s: request from %s on %s: internal error: %s; answered DUNNO",
	          log_safe(attr_whole(rc->req, POLICY_ATTR_QUEUE_ID), qid, sizeof(qid)), rc->peer,
	          rc->lst->address, why);
}

/*
 * "action=550 5.7.1 text\n\n" (SMTPD_POLICY_README, access(5) actions);
 * "action=DEFER_IF_PERMIT 4.2.0 text" for greylisting, as postgrey says
 * it; "action=PREPEND X-Greylist: ..." for a header on a message let through.
 */
static void format_reply(const check_verdict *v, const request_ctx *rc, char *out, size_t outlen)
{
	char code[sizeof(v->reply.code)], xcode[sizeof(v->reply.xcode)], text[sizeof(v->reply.text)];
	char header[sizeof(v->header)];

	/*
	 * The config refuses control characters in reply text, and the core
	 * writes none; should one get through, a newline would end the reply
	 * early and desynchronise the protocol, so log_safe masks them.
	 */
	log_safe(v->reply.code, code, sizeof(code));
	log_safe(v->reply.xcode, xcode, sizeof(xcode));
	log_safe(v->reply.text, text, sizeof(text));
	switch (v->action) {
	case DECIDE_REJECT:
	case DECIDE_TEMPFAIL:
		if (strlen(code) == 3 && (code[0] == '4' || code[0] == '5')) {
			snprintf(out, outlen, "action=%s%s%s%s%s\n\n", code, *xcode ? " " : "", xcode,
			         *text ? " " : "", text);
			return;
		}
		log_internal(rc, "a reject verdict without an SMTP code");
		break;
	case DECIDE_DISCARD:
		snprintf(out, outlen, "action=DISCARD%s%s\n\n", *text ? " " : "", text);
		return;
	case DECIDE_DEFER_IF_PERMIT:
		snprintf(out, outlen, "action=DEFER_IF_PERMIT%s%s%s%s\n\n", *xcode ? " " : "", xcode,
		         *text ? " " : "", text);
		return;
	case DECIDE_HOLD:
		snprintf(out, outlen, "action=HOLD%s%s\n\n", *text ? " " : "", text);
		return;
	case DECIDE_DROP_COPY:
		log_internal(rc, "drop-copy verdict on the policy front end");
		break;
	case DECIDE_CONTINUE:
		if (v->header[0]) {
			snprintf(out, outlen, "action=PREPEND %s\n\n",
			         log_safe(v->header, header, sizeof(header)));
			return;
		}
		break;
	}
	snprintf(out, outlen, "%s", DUNNO);
}

/* ---- connections ---- */

/* The worker's connections, least recently active first: take c out of the list. */
static void list_unlink(worker *w, conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		w->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		w->tail = c->prev;
}

/* Put c at the tail of the list: the most recently active. */
static void list_append(worker *w, conn *c)
{
	c->prev = w->tail;
	c->next = NULL;
	if (w->tail)
		w->tail->next = c;
	else
		w->head = c;
	w->tail = c;
}

static void conn_touch(conn *c)
{
	worker *w = c->w;

	c->last_active = mono_ns();
	if (w->tail == c)
		return;
	list_unlink(w, c);
	list_append(w, c);
}

static void parked_drop(worker *w, parked *p);

/* Closes c, already counted out of srv->nconn (claim_room); conn_close counts it out itself. */
static void conn_free(conn *c)
{
	worker *w = c->w;

	if (c->wait != NULL) /* gone while its request waited for DNS: cancel the queries */
		parked_drop(w, c->wait);
	list_unlink(w, c);
	w->nconn--;
	/*
	 * Out of the epoll set before the close: close() removes it only with
	 * the last descriptor of the socket, and a hook (src/hook.c) spawned
	 * at this moment holds a copy until its exec; an event for the freed
	 * connection would follow.
	 */
	epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	policy_parser_free(c->parser);
	free(c);
}

static void conn_close(conn *c)
{
	policy_server *srv = c->w->srv;

	conn_free(c);
	atomic_fetch_sub(&srv->nconn, 1);
}

/* Milliseconds since c was last active, by the batch's clock (which may be a little behind it). */
static int64_t conn_age_ms(const worker *w, const conn *c)
{
	return w->now_ms - c->last_active / 1000000;
}

/* Nothing received and not yet answered, nothing waiting to be sent. */
static bool conn_idle(const conn *c)
{
	return c->wait == NULL && c->outlen == 0 && c->inoff == c->inlen && policy_parser_idle(c->parser);
}

static int conn_want(conn *c, bool out)
{
	struct epoll_event ev = {.events = out ? EPOLLOUT : EPOLLIN | EPOLLRDHUP, .data.ptr = c};

	if (c->want_out == out)
		return 0;
	c->want_out = out;
	return epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* 1: all sent, 0: the rest waits for EPOLLOUT, -1: the peer is gone. */
static int conn_flush(conn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n;

		conn_touch(c); /* before the send: see last_active */
		n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return conn_want(c, true) < 0 ? -1 : 0;
		if (n < 0) {
			log_debug("policy: connection from %s on %s: send: %s", c->peer, c->lst->address,
			          strerror(errno));
			return -1;
		}
		c->outoff += (size_t)n;
	}
	c->outoff = c->outlen = 0;
	return conn_want(c, false) < 0 ? -1 : 1;
}

static request_ctx conn_request(const conn *c, const policy_request *req)
{
	return (request_ctx){.srv = c->w->srv,
	                     .lst = c->lst,
	                     .peer = c->peer,
	                     .req = req,
	                     .now = c->w->now,
	                     .malformed_before = c->malformed};
}

static void conn_reply(conn *c, const check_verdict *v, const request_ctx *rc, const config *cfg)
{
	format_reply(v, rc, c->out, sizeof(c->out));
	c->outlen = strlen(c->out);
	c->outoff = 0;
	/* A complete request Postfix would never send (no request attribute...) counts as malformed. */
	c->malformed = rc->malformed ? c->malformed + 1 : 0;
	if (c->malformed >= MALFORMED_MAX)
		c->closing = true;
	policy_parser_set_limits(c->parser, cfg->policy.max_line, cfg->policy.max_attributes);
}

/* ---- requests waiting for DNS ---- */

static void worker_dns_close(worker *w, dns_resolver **r)
{
	if (*r == NULL)
		return;
	epoll_ctl(w->epfd, EPOLL_CTL_DEL, dns_fd(*r), NULL);
	dns_free(*r);
	*r = NULL;
}

/* A reload changed the dns section while requests wait on the resolver: they keep it, new ones get a new one.
 */
static void worker_dns_retire(worker *w)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->dns_old_tag};

	if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, dns_fd(w->dns), &ev) < 0)
		return; /* keep using it: the reload applies once nothing waits */
	w->dns_old = w->dns;
	w->nparked_old = w->nparked;
	w->dns = NULL;
}

/* p's run is over (answered, expired or cancelled): a retired resolver goes with its last request. */
static void parked_run_done(worker *w, parked *p)
{
	dnsrun_free(p->run);
	p->run = NULL;
	if (w->dns_old != NULL && p->r == w->dns_old && --w->nparked_old == 0)
		worker_dns_close(w, &w->dns_old);
}

/*
 * The worker's resolver, made at the first request that needs DNS (so a
 * daemon whose DNS checks are off sends no query and starts no thread),
 * its descriptor in the worker's epoll set. A reload that changed the dns
 * section makes a new one; the old one stays for the requests waiting on
 * it (after two reloads in a row, the second waits until those are done).
 */
static dns_resolver *worker_dns(worker *w, const config *cfg)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->dns_tag};
	dns_settings ds = config_dns_settings(cfg);
	const char *sig = cfg->dns.key;
	char err[256];
	uint64_t more = 0;

	if (w->dns != NULL && strcmp(sig, w->dns_settings) != 0) {
		if (w->nparked == 0)
			worker_dns_close(w, &w->dns);
		else if (w->dns_old == NULL)
			worker_dns_retire(w);
	}
	if (w->dns != NULL)
		return w->dns;
	if ((w->dns = dns_new(&ds, err, sizeof(err))) == NULL ||
	    epoll_ctl(w->epfd, EPOLL_CTL_ADD, dns_fd(w->dns), &ev) < 0) {
		if (w->dns != NULL)
			snprintf(err, sizeof(err), "dns: epoll: %s", strerror(errno));
		worker_dns_close(w, &w->dns);
		if (log_ratelimit_pass(&w->srv->dns_errors, w->now, &more))
			log_error(
			    "policy worker %u: no resolver (%s): DNS answers count as failures (%llu more "
			    "since the last line)",
			    w->id, err, (unsigned long long)more);
		return NULL;
	}
	snprintf(w->dns_settings, sizeof(w->dns_settings), "%s", sig);
	log_debug("policy worker %u: resolver made (%s)", w->id,
	          cfg->dns.nforwarders ? "forwarding" : "recursive");
	return w->dns;
}

/* Called from dns_process() (worker_after_batch): the request is resumed after the batch. */
static void parked_answered(void *arg)
{
	((parked *)arg)->ready = true;
}

static void parked_unlink(worker *w, parked *p)
{
	if (p->prev)
		p->prev->next = p->next;
	else
		w->parked_head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else
		w->parked_tail = p->prev;
	w->nparked--;
}

/* Done with p: it becomes the worker's spare, or is freed. */
static void parked_recycle(worker *w, parked *p)
{
	if (w->spare == NULL)
		w->spare = p;
	else
		free(p);
}

static void parked_drop(worker *w, parked *p)
{
	parked_unlink(w, p);
	parked_run_done(w, p); /* cancels the queries in flight */
	engine_msg_end(&p->m);
	p->c->wait = NULL;
	parked_recycle(w, p);
}

/*
 * Park c's request until its plan is answered or its deadline: dns.timeout,
 * or a check's own shorter one (plan.timeout_ms). The connection is then
 * watched only for hang-up (EPOLLRDHUP): nothing more is read. false when
 * it need not or cannot wait: every answer came from the resolver's
 * answer cache (the plan is answered), or there is no resolver (the plan
 * is expired, every answer a failure); the caller decides at once.
 */
static bool conn_park(conn *c, parked *p, const config *cfg)
{
	worker *w = c->w;
	struct epoll_event ev = {.events = EPOLLRDHUP, .data.ptr = c};
	int64_t limit = cfg->dns.timeout * 1000;
	dns_resolver *r = worker_dns(w, cfg);

	p->f.dns = &p->plan;
	if (r == NULL) {
		dnsplan_expire(&p->plan);
		return false;
	}
	p->run = dnsrun_start(r, &p->plan, w->srv->hostname, (int64_t)time(NULL), parked_answered, p);
	if (p->run == NULL) /* out of memory: the plan is expired */
		return false;
	/* Cache hits (also other parked requests'): a plan answered by them needs no parking at all. */
	if (dns_has_ready(r))
		dns_deliver(r);
	if (dnsrun_finished(p->run) || epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
		if (!dnsrun_finished(p->run))
			dnsrun_expire(p->run);
		dnsrun_free(p->run);
		p->run = NULL;
		return false;
	}
	p->c = c;
	p->r = r;
	p->started_ms = w->now_ms;
	p->deadline_ms =
	    w->now_ms + (p->plan.timeout_ms > 0 && p->plan.timeout_ms < limit ? p->plan.timeout_ms : limit);
	p->ready = false;
	p->prev = w->parked_tail;
	p->next = NULL;
	if (w->parked_tail)
		w->parked_tail->next = p;
	else
		w->parked_head = p;
	w->parked_tail = p;
	w->nparked++;
	w->spare = NULL;
	c->wait = p;
	return true;
}

/*
 * One request: its facts, the DNS answers its checks want (a request that
 * needs them parks, and conn_resume answers it), the checks, the reply. A
 * worker keeps one spare parked struct for this, so a request that needs
 * no DNS allocates nothing.
 */
static void conn_answer(conn *c, const policy_request *req)
{
	worker *w = c->w;
	engine_snapshot *snap = engine_acquire(w->srv->eng);
	const config *cfg = engine_config(snap);
	request_ctx rc = conn_request(c, req);
	check_verdict v = check_continue();
	parked *p = w->spare ? w->spare : (w->spare = malloc(sizeof(*w->spare)));

	stats_policy_request((int)c->lst->role);
	if (p == NULL) {
		log_internal(&rc, "out of memory");
	} else if (policy_begin(snap, &rc, p, &v)) {
		if (engine_dns_plan(&p->m, p->stage, c->lst->checks, &p->f, &p->plan) &&
		    conn_park(c, p, cfg)) {
			engine_release(snap);
			return;
		}
		v = policy_finish(p, c->lst);
	}
	conn_reply(c, &v, &rc, cfg);
	engine_release(snap);
}

static int conn_process(conn *c);

/* The answers are in, or the deadline passed: decide, reply, and go on with what the client sent since. */
static void conn_resume(conn *c)
{
	worker *w = c->w;
	parked *p = c->wait;
	request_ctx rc = conn_request(c, policy_parser_request(c->parser));
	struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
	engine_snapshot *snap;
	check_verdict v;
	int n;

	parked_unlink(w, p);
	parked_run_done(w, p);
	c->wait = NULL;
	v = policy_finish(p, c->lst);
	parked_recycle(w, p);
	snap = engine_acquire(w->srv->eng);
	conn_reply(c, &v, &rc, engine_config(snap));
	engine_release(snap);
	if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
		conn_close(c);
		return;
	}
	n = conn_flush(c);
	if (n > 0 && !c->closing)
		n = conn_process(c) < 0 ? -1 : 0;
	if (n < 0 || (n > 0 && c->closing))
		conn_close(c);
}

static void log_dns_late(worker *w, const parked *p)
{
	uint64_t more = 0;

	if (log_ratelimit_pass(&w->srv->dns_late, w->now, &more))
		log_warning("policy: DNS answers still missing at the deadline (%lld ms, dns.timeout or a "
		            "check's own): counted as DNS failures (%llu more since the last line)",
		            (long long)(p->deadline_ms - p->started_ms), (unsigned long long)more);
}

/* After each batch: the requests whose answers are in or whose deadline passed. */
static void worker_resume(worker *w)
{
	for (parked *p = w->parked_head, *next; p != NULL; p = next) {
		next = p->next;
		if (!p->ready && w->now_ms < p->deadline_ms)
			continue;
		if (!p->ready) {
			dnsrun_expire(p->run);
			log_dns_late(w, p);
		}
		conn_resume(p->c);
	}
}

/* How long epoll_wait may sleep: until the nearest DNS deadline or cache hit; -1 (or 100 ms draining) without
 * one. */
static int worker_timeout(const worker *w)
{
	int64_t t = w->draining ? 100 : -1;

	/* Cache hits of requests parked after this batch's delivery (pipelined ones): at once. */
	if ((w->dns != NULL && dns_has_ready(w->dns)) || (w->dns_old != NULL && dns_has_ready(w->dns_old)))
		return 0;
	for (const parked *p = w->parked_head; p != NULL; p = p->next) {
		int64_t left = p->ready ? 0 : p->deadline_ms - w->now_ms;

		left = left < 0 ? 0 : left;
		if (t < 0 || left < t)
			t = left;
	}
	return (int)t;
}

/*
 * A request with a syntax error: DUNNO (SPEC "Replies"), one log line. A
 * peer that sends nothing else is not Postfix: after MALFORMED_MAX in a
 * row it is closed once that reply is out.
 */
static void conn_answer_malformed(conn *c)
{
	const policy_request *req = policy_parser_request(c->parser);
	bool give_up = ++c->malformed >= MALFORMED_MAX;
	char qid[64], why[64] = "";

	if (give_up) {
		snprintf(why, sizeof(why), ", closing the connection after %u in a row", c->malformed);
		c->closing = true;
	}
	log_bad_input(c->w->srv, c->w->now, LOG_WARNING,
	              "policy: %s: malformed request from %s on %s: %s in line %u; answered DUNNO%s",
	              log_safe(attr_whole(req, POLICY_ATTR_QUEUE_ID), qid, sizeof(qid)), c->peer,
	              c->lst->address, policy_parse_error_name(policy_parser_error(c->parser)),
	              policy_parser_line(c->parser), why);
	snprintf(c->out, sizeof(c->out), "%s", DUNNO);
	c->outlen = strlen(c->out);
	c->outoff = 0;
}

static void log_parse_error(const conn *c)
{
	log_bad_input(c->w->srv, c->w->now, LOG_WARNING,
	              "policy: closing connection from %s on %s: %s in line %u of a request", c->peer,
	              c->lst->address, policy_parse_error_name(policy_parser_error(c->parser)),
	              policy_parser_line(c->parser));
}

/*
 * Parse what was read, answering each complete request before looking at
 * the next (lock-step). Stops while a reply waits for EPOLLOUT. Returns -1
 * when the connection must close.
 */
static int conn_process(conn *c)
{
	while (c->outlen == 0 && c->wait == NULL && c->inoff < c->inlen) {
		size_t used;
		policy_parse_status st =
		    policy_parser_feed(c->parser, c->in + c->inoff, c->inlen - c->inoff, &used);
		int rc;

		c->inoff += used;
		if (st == POLICY_PARSE_ERROR) {
			log_parse_error(c);
			return -1;
		}
		if (st == POLICY_PARSE_NEED_MORE)
			break;
		if (st == POLICY_PARSE_MALFORMED)
			conn_answer_malformed(c);
		else
			conn_answer(c, policy_parser_request(c->parser));
		if (c->wait != NULL)
			break; /* parked for DNS: the reply, and what follows, wait for conn_resume */
		rc = conn_flush(c);
		if (rc < 0 || (rc > 0 && c->closing))
			return -1;
	}
	if (c->inoff == c->inlen)
		c->inoff = c->inlen = 0;
	return 0;
}

/* A client that goes away between requests is routine; in the middle of one, it is bad input. */
static void conn_log_end(const conn *c, int error)
{
	if (policy_parser_idle(c->parser) && c->inoff == c->inlen) {
		if (error)
			log_debug("policy: connection from %s on %s: recv: %s", c->peer, c->lst->address,
			          strerror(error));
	} else if (error) {
		log_bad_input(c->w->srv, c->w->now, LOG_INFO,
		              "policy: connection from %s on %s lost in the middle of a request: %s", c->peer,
		              c->lst->address, strerror(error));
	} else {
		log_bad_input(c->w->srv, c->w->now, LOG_INFO,
		              "policy: connection from %s on %s closed in the middle of a request", c->peer,
		              c->lst->address);
	}
}

/* Returns -1 when the connection must close (end of file or an error). */
static int conn_read(conn *c)
{
	/* Bytes that begin a request start its clock: it must be complete within policy.idle_timeout. */
	bool starts_request = c->inoff == c->inlen && policy_parser_idle(c->parser);
	ssize_t n;

	if (c->inlen == sizeof(c->in))
		return 0; /* cannot happen: input waits only while a reply does, and then we do not read */
	do
		n = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return 0;
	if (n <= 0) {
		conn_log_end(c, n < 0 ? errno : 0);
		return -1;
	}
	c->inlen += (size_t)n;
	if (starts_request)
		conn_touch(c);
	return 0;
}

static void conn_event(conn *c, uint32_t events)
{
	int rc = 0;

	if (c->wait != NULL) {
		/* Watched for hang-up only: the client left while its request waited for DNS. */
		log_debug("policy: connection from %s on %s closed while its request waited for DNS", c->peer,
		          c->lst->address);
		rc = -1;
	} else if (c->want_out) {
		rc = (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) ? conn_flush(c) : 0;
		if (rc > 0 && c->closing)
			rc = -1;
		if (rc > 0)
			rc = conn_process(c); /* requests that arrived with the last one */
	} else if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
		rc = conn_read(c);
		if (rc == 0)
			rc = conn_process(c);
	}
	if (rc < 0)
		conn_close(c);
}

/* ---- accepting ---- */

/* Peer text for logs, and whether policy.allow lets it in. */
static bool peer_allowed(const config *cfg, const listener *l, const struct sockaddr_storage *ss, char *peer)
{
	char text[INET6_ADDRSTRLEN] = "";
	addr_ip ip;
	addr_net host;

	if (l->unix_path != NULL) {
		snprintf(peer, PEER_MAX, "local");
		return true;
	}
	if (ss->ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, text, sizeof(text));
	else if (ss->ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, text, sizeof(text));
	if (!addr_ip_parse(text, &ip)) {
		snprintf(peer, PEER_MAX, "unknown");
		return false;
	}
	host = addr_net_of(&ip, ip.version == 4 ? 32 : 128);
	addr_net_format(&host, peer, PEER_MAX);
	return cfg->policy.allow != NULL && netset_contains(cfg->policy.allow, &ip);
}

static void log_limited(worker *w, log_ratelimit *rl, const char *what, const char *peer, const listener *l)
{
	uint64_t suppressed = 0;

	if (!log_ratelimit_pass(rl, w->now, &suppressed))
		return;
	if (suppressed)
		log_warning("policy: refused connection from %s on %s: %s (%llu more refused since the last "
		            "line)",
		            peer, l->address, what, (unsigned long long)suppressed);
	else
		log_warning("policy: refused connection from %s on %s: %s", peer, l->address, what);
}

static conn *conn_new(worker *w, const listener *l, int fd, const config *cfg, const char *peer)
{
	conn *c = malloc(sizeof(*c));

	if (c == NULL)
		return NULL;
	memset(c, 0, offsetof(conn, in));
	c->parser = policy_parser_new(cfg->policy.max_line, cfg->policy.max_attributes);
	if (c->parser == NULL) {
		free(c);
		return NULL;
	}
	c->kind = SRC_CONN;
	c->fd = fd;
	c->w = w;
	c->lst = l;
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	return c;
}

static void conn_discard(conn *c)
{
	if (c != NULL)
		policy_parser_free(c->parser);
	free(c);
}

/* Registers c and puts it at the tail of the worker's list; -1 on failure. */
static int conn_attach(worker *w, conn *c)
{
	struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};

	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
		return -1;
	c->last_active = mono_ns();
	c->batch = w->batch;
	list_append(w, c);
	w->nconn++;
	return 0;
}

/* ---- room for new connections ---- */

/* The most connections now: policy.max_connections, or fewer when the open files limit has no room. */
static unsigned conn_limit(const policy_server *srv, const config *cfg)
{
	return cfg->policy.max_connections < srv->fd_cap ? cfg->policy.max_connections : srv->fd_cap;
}

/* Between requests, or with a request coming for a second or more (a slow client holds no request
 * Postfix waits on). */
static bool conn_evictable(const worker *w, const conn *c)
{
	return conn_idle(c) || (c->wait == NULL && conn_age_ms(w, c) >= 1000);
}

/*
 * A connection this worker may close to make room: the least recently
 * active evictable one, never one accepted in the batch of events just
 * handled.
 */
static conn *evict_candidate(worker *w)
{
	unsigned looked = 0;

	for (conn *c = w->head; c != NULL && looked < EVICT_SCAN; c = c->next, looked++)
		if (c->batch != w->batch && conn_evictable(w, c))
			return c;
	return NULL;
}

static void log_evicted(worker *w, const conn *c, unsigned limit)
{
	uint64_t more = 0;
	char since[64] = "";

	log_debug("policy: closing connection from %s on %s to make room for a new one", c->peer,
	          c->lst->address);
	if (!log_ratelimit_pass(&w->srv->evicted, w->now, &more))
		return;
	if (more > 0)
		snprintf(since, sizeof(since), " (%llu more since the last line)", (unsigned long long)more);
	log_warning("policy: %u connections (policy.max_connections, or the open files limit): closing the "
	            "least recently active ones to make room for new ones%s",
	            limit, since);
}

/*
 * Tells the other workers how old this one's candidate is: after each
 * batch, and before a wake-up. Counting those accepted in this batch, as
 * they are candidates from the next one on: by the time another worker
 * reads it, the value must not be younger than this worker's candidate,
 * or that worker would close a younger connection of its own. Older does
 * no harm: the worker woken for it decides again.
 */
static void worker_publish(worker *w)
{
	int64_t oldest = INT64_MAX;
	unsigned looked = 0;

	for (const conn *c = w->head; c != NULL && looked < EVICT_SCAN; c = c->next, looked++)
		if (conn_evictable(w, c)) {
			oldest = c->last_active;
			break;
		}
	atomic_store_explicit(&w->oldest, oldest, memory_order_relaxed);
}

/* The other worker with the oldest candidate, if it is older than `than`. */
static worker *older_elsewhere(worker *w, int64_t than)
{
	policy_server *srv = w->srv;
	worker *target = NULL;

	for (size_t i = 0; i < srv->nworkers; i++) {
		int64_t theirs = atomic_load_explicit(&srv->workers[i].oldest, memory_order_relaxed);

		if (&srv->workers[i] != w && theirs < than) {
			than = theirs;
			target = &srv->workers[i];
		}
	}
	return target;
}

/*
 * Takes one connection off the count while the daemon is over limit: each
 * close that makes room is claimed first, so workers closing at the same
 * moment never close more than the daemon is over.
 */
static bool claim_room(policy_server *srv, unsigned limit)
{
	unsigned n = atomic_load(&srv->nconn);

	while (n > limit)
		if (atomic_compare_exchange_weak(&srv->nconn, &n, n - 1))
			return true;
	return false;
}

/*
 * While the daemon is over its connection limit, close the least recently
 * active connections: this worker's own while its candidate is the oldest;
 * otherwise it wakes the worker whose candidate is (through its eventfd;
 * each keeps its connections in that order, so only the candidates are
 * compared), which decides again with what it knows then. A worker's
 * published candidate may be a batch old: the one woken for it may find
 * its own younger now and wake this one back, so that every close is of
 * the oldest. When the daemon is EVICT_DEFER_MAX over the limit the other
 * workers are not keeping up: this one closes its own.
 */
static void worker_evict(worker *w)
{
	policy_server *srv = w->srv;
	unsigned limit = atomic_load(&srv->conn_limit);
	const uint64_t one = 1;

	for (;;) {
		unsigned n = atomic_load(&srv->nconn);
		conn *c = n > limit ? evict_candidate(w) : NULL;
		worker *target = NULL;

		if (n <= limit)
			break;
		if (c == NULL || n - limit < EVICT_DEFER_MAX)
			target = older_elsewhere(w, c ? c->last_active : INT64_MAX);
		if (target != NULL) {
			worker_publish(w);
			/* Every wakefd was made before the first worker started and stays until
			 * policy_server_free. */
			if (write(target->wakefd, &one, sizeof(one)) < 0)
				log_debug("policy worker %u: cannot wake worker %u: %s", w->id, target->id,
				          strerror(errno));
			return;
		}
		if (c == NULL || !claim_room(srv, limit))
			break;
		log_evicted(w, c, limit);
		conn_free(c);
	}
	worker_publish(w);
}

/* The other workers run worker_evict (worker_wake): each closes its own while over the limit. */
static void wake_others(worker *w)
{
	const uint64_t one = 1;

	for (size_t i = 0; i < w->srv->nworkers; i++)
		if (&w->srv->workers[i] != w && write(w->srv->workers[i].wakefd, &one, sizeof(one)) < 0)
			log_debug("policy worker %u: cannot wake worker %zu: %s", w->id, i, strerror(errno));
}

/*
 * A slot for a new connection. At the limit the least recently active
 * connection makes room: Postfix keeps its policy connection open between
 * requests and opens a new one when it finds it closed
 * (SMTPD_POLICY_README), so idle or slow clients cannot lock it out.
 * Listeners are handled after every other event of the batch
 * (worker_main), so no event left in the batch points to the connection
 * closed here. Only EVICT_SLACK over the limit, when nothing could be
 * closed in time, is the new connection refused.
 */
static bool conn_admit(worker *w, const config *cfg)
{
	policy_server *srv = w->srv;
	unsigned limit = conn_limit(srv, cfg);
	unsigned n = atomic_fetch_add(&srv->nconn, 1);

	atomic_store(&srv->conn_limit, limit);
	if (n < limit)
		return true;
	worker_evict(w);
	if (n < limit + EVICT_SLACK || atomic_load(&srv->nconn) <= limit + EVICT_SLACK)
		return true;
	/*
	 * Far over: a reload lowered the limit (until the next sweep), or the other workers are not
	 * keeping up (this one closed its own: EVICT_DEFER_MAX). Wake the others before refusing:
	 * refused, Postfix waits smtpd_policy_service_retry_delay (1s) before it tries again.
	 */
	atomic_fetch_sub(&srv->nconn, 1);
	wake_others(w);
	return false;
}

/* The checks at accept, against the current snapshot; a refused fd is closed at once. */
static void conn_open(worker *w, const listener *l, int fd, const struct sockaddr_storage *ss)
{
	engine_snapshot *snap = engine_acquire(w->srv->eng);
	const config *cfg = engine_config(snap);
	char peer[PEER_MAX];
	conn *c = NULL;

	if (!peer_allowed(cfg, l, ss, peer)) {
		log_limited(w, &w->srv->refused, "not in policy.allow", peer, l);
	} else if (!conn_admit(w, cfg)) {
		log_limited(w, &w->srv->over_limit, "policy.max_connections reached", peer, l);
	} else if ((c = conn_new(w, l, fd, cfg, peer)) == NULL || conn_attach(w, c) < 0) {
		atomic_fetch_sub(&w->srv->nconn, 1);
		log_limited(w, &w->srv->accept_errors, c ? strerror(errno) : "out of memory", peer, l);
		conn_discard(c);
		c = NULL;
	} else {
		log_debug("policy: connection from %s on %s", peer, l->address);
	}
	engine_release(snap);
	if (c == NULL)
		close(fd);
}

static int listeners_watch(worker *w, bool on)
{
	policy_server *srv = w->srv;

	for (size_t i = 0; i < srv->nlisteners; i++) {
		struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = &srv->listeners[i]};
		int fd = srv->listeners[i].fd;

		if (!on) {
			epoll_ctl(w->epfd, EPOLL_CTL_DEL, fd, NULL);
			continue;
		}
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			/* Kernels before 4.5 lack EPOLLEXCLUSIVE: a herd, but correct. */
			ev.events = EPOLLIN;
			if (errno != EINVAL || epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
				return -1;
		}
	}
	w->accepting = on;
	return 0;
}

static void worker_accept(worker *w, const listener *l)
{
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		struct sockaddr_storage ss;
		socklen_t sslen = sizeof(ss);
		int fd = accept4(l->fd, (struct sockaddr *)&ss, &sslen, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd >= 0) {
			conn_open(w, l, fd, &ss);
			continue;
		}
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
			/* Out of descriptors: a level-triggered listener would spin; pause until the next
			 * tick. */
			log_limited(w, &w->srv->accept_errors, strerror(errno), "-", l);
			listeners_watch(w, false);
		}
		return; /* EAGAIN (another worker took it), ECONNABORTED, EINTR: nothing to do */
	}
}

/* ---- the worker loop ---- */

/*
 * An idle connection is routine (Postfix keeps one per smtpd process):
 * a debug line. A request not complete in time, or a reply the client
 * does not read, is bad input.
 */
static void log_expired(worker *w, const conn *c)
{
	long long age = (long long)(conn_age_ms(w, c) / 1000);

	if (conn_idle(c))
		log_debug("policy: closing connection from %s on %s: idle for %llds", c->peer,
		          c->lst->address, age);
	else if (c->outlen > 0)
		log_bad_input(w->srv, w->now, LOG_INFO,
		              "policy: closing connection from %s on %s: reply not read for %llds", c->peer,
		              c->lst->address, age);
	else
		log_bad_input(
		    w->srv, w->now, LOG_INFO,
		    "policy: closing connection from %s on %s: request not complete %llds after its "
		    "first byte (policy.idle_timeout)",
		    c->peer, c->lst->address, age);
}

/* policy.idle_timeout, which also bounds how long one request may take to arrive. */
static void worker_sweep(worker *w)
{
	engine_snapshot *snap = engine_acquire(w->srv->eng);
	const config *cfg = engine_config(snap);
	int64_t timeout = cfg->policy.idle_timeout;

	atomic_store(&w->srv->conn_limit, conn_limit(w->srv, cfg)); /* a reload may have lowered it */
	engine_release(snap);
	for (conn *c = w->head, *next; c != NULL && conn_age_ms(w, c) >= timeout * 1000; c = next) {
		next = c->next;
		if (c->wait != NULL)
			continue; /* waiting for DNS, which its own deadline bounds: the client did its part
			           */
		log_expired(w, c);
		conn_close(c);
	}
	worker_evict(w);
}

static void worker_tick(worker *w)
{
	uint64_t expirations;

	if (read(w->timerfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
		log_debug("policy worker %u: timerfd: %s", w->id, strerror(errno));
	if (w->draining)
		return;
	if (!w->accepting && listeners_watch(w, true) < 0)
		log_error("policy worker %u: cannot watch the listeners again: %s", w->id, strerror(errno));
	worker_sweep(w);
	log_bad_input_flush(w->srv, w->now);
}

/* Stop accepting; close what is idle; the rest closes after its current reply. */
static void worker_begin_drain(worker *w)
{
	if (w->draining)
		return;
	w->draining = true;
	w->drain_deadline = w->now + DRAIN_SECONDS;
	listeners_watch(w, false);
	for (conn *c = w->head, *next; c != NULL; c = next) {
		next = c->next;
		c->closing = true;
		if (conn_idle(c))
			conn_close(c);
	}
}

/* The eventfd: policy_server_stop, or another worker over the connection limit. */
static void worker_wake(worker *w)
{
	uint64_t n;

	if (read(w->wakefd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		log_debug("policy worker %u: eventfd: %s", w->id, strerror(errno));
	if (atomic_load(&w->srv->stopping))
		worker_begin_drain(w);
	else
		worker_evict(w);
}

/* What a batch of events asks for besides connection events, done after them. */
typedef struct batch_todo {
	bool wake, tick, dns, dns_old;
	listener *ready[MAX_EVENTS]; /* listeners with connections to accept */
	int nready;
} batch_todo;

static void worker_dispatch(const struct epoll_event *ev, batch_todo *todo)
{
	src_kind kind = *(const src_kind *)ev->data.ptr;

	switch (kind) {
	case SRC_LISTENER:
		todo->ready[todo->nready++] = ev->data.ptr;
		break;
	case SRC_CONN:
		conn_event(ev->data.ptr, ev->events);
		break;
	case SRC_WAKE:
		todo->wake = true;
		break;
	case SRC_TIMER:
		todo->tick = true;
		break;
	case SRC_DNS:
		todo->dns = true;
		break;
	case SRC_DNS_OLD:
		todo->dns_old = true;
		break;
	}
}

/*
 * Accepting may close another connection to make room (conn_admit), and
 * wake-ups and ticks close connections: all after the batch's connection
 * events, which may point to them.
 */
static void worker_after_batch(worker *w, const batch_todo *todo)
{
	if (todo->dns && w->dns != NULL)
		dns_process(w->dns); /* marks the parked requests answered */
	else if (w->dns != NULL && dns_has_ready(w->dns))
		dns_deliver(w->dns); /* cache hits: the fd says nothing about them */
	if (todo->dns_old && w->dns_old != NULL)
		dns_process(w->dns_old);
	else if (w->dns_old != NULL && dns_has_ready(w->dns_old))
		dns_deliver(w->dns_old);
	if (w->parked_head != NULL)
		worker_resume(w);
	for (int i = 0; i < todo->nready && w->accepting; i++)
		worker_accept(w, todo->ready[i]);
	if (todo->wake)
		worker_wake(w);
	if (todo->tick)
		worker_tick(w);
}

static void *worker_main(void *arg)
{
	worker *w = arg;
	struct epoll_event ev[MAX_EVENTS];

	while (!w->draining || (w->nconn > 0 && w->now < w->drain_deadline)) {
		int n = epoll_wait(w->epfd, ev, MAX_EVENTS, worker_timeout(w));
		batch_todo todo; /* ready[] is filled as needed: no need to clear it per batch */

		if (n < 0 && errno != EINTR) {
			log_error("policy worker %u: epoll_wait: %s", w->id, strerror(errno));
			break;
		}
		worker_clock(w);
		w->batch++;
		todo.wake = todo.tick = todo.dns = todo.dns_old = false;
		todo.nready = 0;
		for (int i = 0; i < n; i++)
			worker_dispatch(&ev[i], &todo);
		worker_after_batch(w, &todo);
		worker_publish(w);
	}
	if (w->nconn > 0)
		log_warning("policy worker %u: closing %zu connection(s) with a request still in progress",
		            w->id, w->nconn);
	while (w->head != NULL)
		conn_close(w->head);
	free(w->spare);
	w->spare = NULL;
	worker_dns_close(w, &w->dns);
	worker_dns_close(w, &w->dns_old);
	return NULL;
}

static int worker_setup(worker *w, policy_server *srv, unsigned id, char *err, size_t errlen)
{
	struct itimerspec every_second = {.it_interval = {.tv_sec = 1}, .it_value = {.tv_sec = 1}};
	struct epoll_event wake = {.events = EPOLLIN, .data.ptr = &w->wake_tag};
	struct epoll_event timer = {.events = EPOLLIN, .data.ptr = &w->timer_tag};

	w->srv = srv;
	w->id = id;
	w->wake_tag = SRC_WAKE;
	w->timer_tag = SRC_TIMER;
	w->dns_tag = SRC_DNS;
	w->dns_old_tag = SRC_DNS_OLD;
	worker_clock(w);
	atomic_init(&w->oldest, INT64_MAX);
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	w->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	w->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (w->epfd < 0 || w->wakefd < 0 || w->timerfd < 0 ||
	    timerfd_settime(w->timerfd, 0, &every_second, NULL) < 0 ||
	    epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wakefd, &wake) < 0 ||
	    epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->timerfd, &timer) < 0 || listeners_watch(w, true) < 0) {
		snprintf(err, errlen, "policy worker %u: %s", id, strerror(errno));
		return -1;
	}
	return 0;
}

/* Workers take no process signals: main.c waits for them with sigwaitinfo. */
static int worker_spawn(worker *w, char *err, size_t errlen)
{
	sigset_t all, old;
	char name[16];
	int rc;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&w->thread, NULL, worker_main, w);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		snprintf(err, errlen, "policy worker %u: pthread_create: %s", w->id, strerror(rc));
		return -1;
	}
	snprintf(name, sizeof(name), "policy-%u", w->id);
	pthread_setname_np(w->thread, name);
	w->running = true;
	return 0;
}

static void worker_release(worker *w)
{
	if (w->epfd >= 0)
		close(w->epfd);
	if (w->wakefd >= 0)
		close(w->wakefd);
	if (w->timerfd >= 0)
		close(w->timerfd);
	w->epfd = w->wakefd = w->timerfd = -1;
}

/* ---- the public API ---- */

/*
 * Policy connections the open files limit leaves room for: it minus a
 * reserve for everything else (listeners, epoll and timer descriptors, the
 * store, milter sessions, libraries) and the slack over the limit. main.c
 * raises the soft limit to the hard one before this is read.
 */
static unsigned fd_capacity(const config *cfg)
{
	struct rlimit rl;
	rlim_t reserve, cap;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return UINT_MAX;
	reserve = FD_RESERVE_MIN + rl.rlim_cur / 8 + EVICT_SLACK;
	cap = rl.rlim_cur > reserve ? rl.rlim_cur - reserve : 1;
	if (cap < cfg->policy.max_connections)
		log_warning(
		    "policy: the open files limit (%llu) leaves room for %llu connections, fewer than "
		    "policy.max_connections (%u): at %llu, the least recently active connection is "
		    "closed for a new one; raise the limit (LimitNOFILE=, ulimit -n)",
		    (unsigned long long)rl.rlim_cur, (unsigned long long)cap, cfg->policy.max_connections,
		    (unsigned long long)cap);
	return cap < UINT_MAX ? (unsigned)cap : UINT_MAX;
}

static size_t worker_count(unsigned threads)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	size_t n = threads ? threads : (cpus > 0 ? (size_t)cpus : 2);

	return n < 2 ? 2 : n;
}

policy_server *policy_server_new(engine *eng, const config *cfg, char *err, size_t errlen)
{
	policy_server *srv = calloc(1, sizeof(*srv));
	size_t nworkers = worker_count(cfg->policy.threads);

	if (srv == NULL ||
	    (cfg->policy.nlisten > 0 &&
	     (srv->listeners = calloc(cfg->policy.nlisten, sizeof(*srv->listeners))) == NULL) ||
	    (srv->workers = calloc(nworkers, sizeof(*srv->workers))) == NULL) {
		snprintf(err, errlen, "out of memory");
		policy_server_free(srv);
		return NULL;
	}
	srv->eng = eng;
	srv->nworkers = cfg->policy.nlisten > 0 ? nworkers : 0; /* no listener, no workers */
	for (size_t i = 0; i < nworkers; i++)
		srv->workers[i].epfd = srv->workers[i].wakefd = srv->workers[i].timerfd = -1;
	atomic_init(&srv->nconn, 0);
	atomic_init(&srv->stopping, false);
	srv->fd_cap = cfg->policy.nlisten > 0 ? fd_capacity(cfg) : UINT_MAX;
	atomic_init(&srv->conn_limit, conn_limit(srv, cfg));
	srv->over_limit.interval = srv->accept_errors.interval = LOG_INTERVAL;
	srv->refused.interval = REFUSED_LOG_INTERVAL;
	srv->evicted.interval = EVICT_LOG_INTERVAL;
	srv->bad_input.interval = 1;
	srv->bad_input.burst = BAD_INPUT_BURST;
	srv->dns_late.interval = srv->dns_errors.interval = LOG_INTERVAL;
	if (gethostname(srv->hostname, sizeof(srv->hostname) - 1) < 0)
		snprintf(srv->hostname, sizeof(srv->hostname), "unknown");
	for (size_t i = 0; i < cfg->policy.nlisten; i++) {
		srv->nlisteners++;
		if (listener_open(&srv->listeners[i], cfg, &cfg->policy.listen[i], err, errlen) < 0) {
			policy_server_free(srv);
			return NULL;
		}
	}
	return srv;
}

int policy_server_start(policy_server *srv, char *err, size_t errlen)
{
	if (srv->started) {
		snprintf(err, errlen, "policy server already started");
		return -1;
	}
	srv->started = true;
	/* Every worker's descriptors first: a running worker may wake the others (workers_wake_others). */
	for (size_t i = 0; i < srv->nworkers; i++) {
		if (worker_setup(&srv->workers[i], srv, (unsigned)i, err, errlen) < 0) {
			policy_server_stop(srv);
			return -1;
		}
	}
	for (size_t i = 0; i < srv->nworkers; i++) {
		if (worker_spawn(&srv->workers[i], err, errlen) < 0) {
			policy_server_stop(srv);
			return -1;
		}
	}
	if (srv->nworkers > 0)
		log_info("policy: %zu listener(s), %zu worker thread(s)", srv->nlisteners, srv->nworkers);
	return 0;
}

void policy_server_stop(policy_server *srv)
{
	const uint64_t one = 1;

	if (srv == NULL || srv->stopped)
		return;
	srv->stopped = true;
	atomic_store(&srv->stopping, true); /* before the wake-ups: they now mean "drain" */
	for (size_t i = 0; i < srv->nworkers; i++)
		if (srv->workers[i].running && write(srv->workers[i].wakefd, &one, sizeof(one)) < 0)
			log_error("policy worker %zu: cannot wake it: %s", i, strerror(errno));
	for (size_t i = 0; i < srv->nworkers; i++) {
		if (srv->workers[i].running)
			pthread_join(srv->workers[i].thread, NULL);
		srv->workers[i].running = false;
	}
	for (size_t i = 0; i < srv->nlisteners; i++)
		listener_close(&srv->listeners[i]);
}

void policy_server_free(policy_server *srv)
{
	if (srv == NULL)
		return;
	policy_server_stop(srv);
	for (size_t i = 0; srv->workers != NULL && i < srv->nworkers; i++)
		worker_release(&srv->workers[i]);
	for (size_t i = 0; i < srv->nlisteners; i++) {
		listener_close(&srv->listeners[i]);
		free(srv->listeners[i].address);
	}
	free(srv->listeners);
	free(srv->workers);
	free(srv);
}
