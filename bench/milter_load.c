/*
 * milter_load: an MTA-side milter client for benchmarks, modelled on
 * Postfix's milter8 client. Each session is one SMTP session with one
 * transaction, as smtpd runs it against a filter:
 *
 *   connect, option negotiation (version 6, every action and protocol
 *   flag Postfix offers), macros + CONNECT, macros + HELO, macros + MAIL,
 *   macros + RCPT (per recipient), ABORT, QUIT, close.
 *
 * The filter's protocol flags are honoured as Postfix does: a step the
 * filter skipped (SMFIP_NO*) is not sent, a step it said it will not
 * answer (SMFIP_NR_*) is sent without waiting, and a SETSYMLIST list
 * replaces the default macros of its stage. As Postfix's milter8_event,
 * every step reached sends its stage's SMFIC_MACRO first, skipped or
 * not, and with none of its macros defined (only the stage's letter):
 * a filter that asks for macros Postfix does not define at that stage
 * still reads a packet there. Commands that need no reply go out
 * together with the next one that does. A reject or tempfail at
 * CONNECT ends the session; at MAIL it ends the transaction (ABORT).
 *
 * N sessions run at once from one epoll thread. Output: one JSON object
 * with sessions per second, session latency (connect to QUIT: what the
 * MTA waited for the filter), per-reply latency, replies by step, and
 * what the filter negotiated. Exit 0 when every reply was well formed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <libmilter/mfdef.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "bench_util.h"

#define MAX_RCPT 8
#define OUT_MAX 8192
#define IN_MAX 4096
#define SYM_MAX 512
/* Macro stages of SETSYMLIST, as numbered on the wire (mfapi.h SMFIM_*). */
enum { SMFIM_CONNECT, SMFIM_HELO, SMFIM_ENVFROM, SMFIM_ENVRCPT, SMFIM_DATA, SMFIM_EOM, SMFIM_EOH, NSTAGES };

/* Postfix 3.7 offers every protocol step and no-reply flag (milter8.c). */
#define MTA_PROTOCOL (SMFI_CURR_PROT)
#define MTA_ACTIONS (SMFI_CURR_ACTS)

/* The shared options and milter_load's own: -R recipients per transaction. */
typedef struct options {
	bench_load_opts load;
	unsigned rcpts;
} options;

enum step { S_OPTNEG, S_CONNECT, S_HELO, S_MAIL, S_RCPT, S_ABORT, S_QUIT, S_DONE };

typedef struct session {
	int fd;
	enum step step;
	unsigned rcpt; /* next recipient index at S_RCPT */
	bool waiting;
	uint64_t start_ns, wait_ns;
	uint32_t pflags;
	char symlist[NSTAGES][SYM_MAX];
	bool has_symlist[NSTAGES];
	unsigned char in[IN_MAX];
	size_t inlen;
	char out[OUT_MAX];
	size_t outlen;
	char client[64], helo[64], sender[96], qid[16];
	char rcpt_addr[MAX_RCPT][96];
	bool trap[MAX_RCPT];
	bench_rng rng;
	unsigned id;
	unsigned long seq;
} session;

typedef struct run {
	const options *opt;
	const bench_load_opts *lo;
	session *s;
	int ep;
	bench_window win;
	unsigned long done, all, started, malformed, errors, active;
	uint32_t negotiated_pflags, negotiated_actions;
	bench_tally t_connect, t_helo, t_mail, t_rcpt_trap, t_rcpt_other;
	bench_lat lat_session, lat_reply;
} run;

static void usage(void)
{
	fprintf(stderr, "usage: milter_load " BENCH_LOAD_USAGE "\n"
	                "       [-R RCPTS]\n"
	                "       -n COUNT: SMTP sessions\n");
}

static int parse_options(int argc, char **argv, options *o)
{
	static const bench_flag own[] = {{'R', BENCH_UINT, offsetof(options, rcpts)}};
	o->rcpts = 1;
	if (bench_load_parse(&o->load, "milter_load", argc, argv, own, sizeof(own) / sizeof(own[0]), o) < 0 ||
	    !o->rcpts || o->rcpts > MAX_RCPT) {
		usage();
		return -1;
	}
	return 0;
}

/* --- packets ---------------------------------------------------------------- */

static void put_packet(session *s, char cmd, const void *data, size_t len)
{
	uint32_t n = htonl((uint32_t)(len + 1));
	if (s->outlen + 5 + len > OUT_MAX)
		return; /* cannot happen with the capped facts below */
	memcpy(s->out + s->outlen, &n, 4);
	s->out[s->outlen + 4] = cmd;
	if (len)
		memcpy(s->out + s->outlen + 5, data, len);
	s->outlen += 5 + len;
}

/* Append "str\0" to a packet body being built in buf. */
static size_t put_str(char *buf, size_t off, size_t cap, const char *str)
{
	size_t n = strlen(str) + 1;
	if (off + n > cap)
		return off;
	memcpy(buf + off, str, n);
	return off + n;
}

/* --- macros, as Postfix's milter_*_macros defaults send them ------------------ */

static const char *const default_macros[NSTAGES] = {
    [SMFIM_CONNECT] = "j {daemon_name} {daemon_addr} v _",
    [SMFIM_HELO] = "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    [SMFIM_ENVFROM] = "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",
    [SMFIM_ENVRCPT] = "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
};

/* The value of one macro in this session, NULL when Postfix would not define it. */
static const char *macro_value(const session *s, const char *name, char *tmp, size_t tmplen)
{
	if (!strcmp(name, "j"))
		return "mx.bench.example";
	if (!strcmp(name, "{daemon_name}"))
		return "smtpd";
	if (!strcmp(name, "{daemon_addr}"))
		return "192.0.2.25";
	if (!strcmp(name, "v"))
		return "Postfix 3.7.11";
	if (!strcmp(name, "_"))
		return snprintf(tmp, tmplen, "unknown [%s]", s->client), tmp;
	if (!strcmp(name, "{tls_version}"))
		return "TLSv1.3";
	if (!strcmp(name, "{cipher}"))
		return "TLS_AES_256_GCM_SHA384";
	if (!strcmp(name, "{cipher_bits}"))
		return "256";
	if (!strcmp(name, "i") || !strcmp(name, "{i}"))
		return s->step == S_RCPT ? s->qid : NULL; /* smtpd_delay_open_until_valid_rcpt */
	if (!strcmp(name, "{mail_addr}"))
		return s->sender;
	if (!strcmp(name, "{mail_mailer}") || !strcmp(name, "{rcpt_mailer}"))
		return "smtp";
	if (!strcmp(name, "{mail_host}"))
		return strchr(s->sender, '@') + 1;
	if (!strcmp(name, "{rcpt_addr}"))
		return s->rcpt_addr[s->rcpt];
	if (!strcmp(name, "{rcpt_host}"))
		return strchr(s->rcpt_addr[s->rcpt], '@') + 1;
	return NULL;
}

/*
 * SMFIC_MACRO for a stage: its command letter, then name/value pairs of
 * the defined macros; the letter alone when none is (Postfix sends that too).
 */
static void put_macros(session *s, int stage, char cmd)
{
	const char *list = s->has_symlist[stage] ? s->symlist[stage] : default_macros[stage];
	char body[2048], names[SYM_MAX], tmp[128];
	size_t off = 0;
	if (!list)
		return;
	body[off++] = cmd;
	snprintf(names, sizeof(names), "%s", list);
	for (char *save = NULL, *name = strtok_r(names, " ", &save); name;
	     name = strtok_r(NULL, " ", &save)) {
		const char *value = macro_value(s, name, tmp, sizeof(tmp));
		if (value) {
			off = put_str(body, off, sizeof(body), name);
			off = put_str(body, off, sizeof(body), value);
		}
	}
	put_packet(s, SMFIC_MACRO, body, off);
}

/* --- the session's steps ------------------------------------------------------ */

static void new_facts(session *s, const options *o)
{
	const bench_load_opts *lo = &o->load;
	uint32_t ci = bench_pick_client(&s->rng, lo, 0, s->client, sizeof(s->client));
	snprintf(s->helo, sizeof(s->helo), BENCH_HELO_FMT, ci % 1000);
	bench_pick_sender(&s->rng, lo, s->sender, sizeof(s->sender));
	for (unsigned i = 0; i < o->rcpts; i++)
		s->trap[i] = bench_pick_rcpt(&s->rng, lo, s->rcpt_addr[i], sizeof(s->rcpt_addr[i]));
	s->seq++;
	snprintf(s->qid, sizeof(s->qid), "%X%06lX", s->id & 0xF, s->seq & 0xFFFFFF);
}

static void put_optneg(session *s)
{
	uint32_t v[3] = {htonl(SMFI_PROT_VERSION), htonl(MTA_ACTIONS), htonl(MTA_PROTOCOL)};
	put_packet(s, SMFIC_OPTNEG, v, sizeof(v));
}

static void put_connect(session *s)
{
	char body[256];
	uint16_t port = htons((uint16_t)(1024 + s->seq % 60000));
	size_t off = put_str(body, 0, sizeof(body), "unknown");
	body[off++] = SMFIA_INET;
	memcpy(body + off, &port, 2);
	off = put_str(body, off + 2, sizeof(body), s->client);
	put_packet(s, SMFIC_CONNECT, body, off);
}

static void put_envelope(session *s, char cmd, const char *addr, const char *arg)
{
	char body[256], bracketed[128];
	snprintf(bracketed, sizeof(bracketed), "<%s>", addr);
	size_t off = put_str(body, 0, sizeof(body), bracketed);
	if (arg)
		off = put_str(body, off, sizeof(body), arg);
	put_packet(s, cmd, body, off);
}

/*
 * Queue step's command if the filter wants it. Returns true when the MTA
 * must now wait for a reply.
 */
static bool put_step(session *s)
{
	uint32_t f = s->pflags;
	switch (s->step) {
	case S_OPTNEG:
		put_optneg(s);
		return true;
	case S_CONNECT:
		put_macros(s, SMFIM_CONNECT, SMFIC_CONNECT);
		if (f & SMFIP_NOCONNECT)
			return false;
		put_connect(s);
		return !(f & SMFIP_NR_CONN);
	case S_HELO:
		put_macros(s, SMFIM_HELO, SMFIC_HELO);
		if (f & SMFIP_NOHELO)
			return false;
		put_packet(s, SMFIC_HELO, s->helo, strlen(s->helo) + 1);
		return !(f & SMFIP_NR_HELO);
	case S_MAIL:
		put_macros(s, SMFIM_ENVFROM, SMFIC_MAIL);
		if (f & SMFIP_NOMAIL)
			return false;
		put_envelope(s, SMFIC_MAIL, s->sender, "SIZE=2048");
		return !(f & SMFIP_NR_MAIL);
	case S_RCPT:
		put_macros(s, SMFIM_ENVRCPT, SMFIC_RCPT);
		if (f & SMFIP_NORCPT)
			return false;
		put_envelope(s, SMFIC_RCPT, s->rcpt_addr[s->rcpt], NULL);
		return !(f & SMFIP_NR_RCPT);
	case S_ABORT:
		put_packet(s, SMFIC_ABORT, NULL, 0);
		return false;
	case S_QUIT:
		put_packet(s, SMFIC_QUIT, NULL, 0);
		return false;
	case S_DONE:
		break;
	}
	return false;
}

static void next_step(session *s, const options *o)
{
	if (s->step == S_RCPT && ++s->rcpt < o->rcpts)
		return;
	s->step++;
}

static int flush_out(session *s)
{
	int rc = bench_write_all(s->fd, s->out, s->outlen);
	s->outlen = 0;
	return rc;
}

/* --- replies -------------------------------------------------------------------- */

/* Counts a reply by its command letter; a reply code as "y" and its three digits. */
static void tally_add(bench_tally *t, char cmd, const unsigned char *data, size_t len)
{
	char name[8] = {cmd, 0};
	if (cmd == SMFIR_REPLYCODE && len >= 3)
		snprintf(name, sizeof(name), "y%.3s", (const char *)data);
	bench_tally_add(t, name, strlen(name));
}

/* The filter's answer to option negotiation: flags, then optional SETSYMLIST lists. */
static int take_optneg(run *r, session *s, const unsigned char *data, size_t len)
{
	uint32_t v[3];
	if (len < 12)
		return -1;
	memcpy(v, data, 12);
	s->pflags = ntohl(v[2]);
	r->negotiated_actions = ntohl(v[1]);
	r->negotiated_pflags = s->pflags;
	for (size_t off = 12; off + 5 <= len;) {
		uint32_t stage;
		memcpy(&stage, data + off, 4);
		stage = ntohl(stage);
		const char *list = (const char *)data + off + 4;
		size_t n = strnlen(list, len - off - 4);
		if (stage < NSTAGES) {
			snprintf(s->symlist[stage], SYM_MAX, "%.*s", (int)n, list);
			s->has_symlist[stage] = true;
		}
		off += 4 + n + 1;
	}
	return 0;
}

static bool is_final(char cmd)
{
	return cmd == SMFIR_ACCEPT || cmd == SMFIR_REJECT || cmd == SMFIR_TEMPFAIL ||
	       cmd == SMFIR_REPLYCODE || cmd == SMFIR_DISCARD || cmd == SMFIR_CONN_FAIL ||
	       cmd == SMFIR_SHUTDOWN;
}

/* Where a reply at the current step takes the session, as Postfix's smtpd would go on. */
static void after_reply(session *s, const options *o, char cmd)
{
	switch (s->step) {
	case S_CONNECT:
		s->step = is_final(cmd) ? S_QUIT : S_HELO;
		return;
	case S_MAIL:
		s->step = is_final(cmd) ? S_ABORT : S_RCPT;
		return;
	case S_RCPT:
		if (cmd == SMFIR_DISCARD || cmd == SMFIR_ACCEPT)
			s->step = S_ABORT;
		else
			next_step(s, o);
		return;
	default:
		next_step(s, o);
	}
}

static int take_reply(run *r, session *s, char cmd, const unsigned char *data, size_t len)
{
	uint64_t now = bench_now_ns();
	if (cmd == SMFIR_PROGRESS)
		return 0;
	if (!s->waiting)
		return -1;
	s->waiting = false;
	if (now >= r->win.measure_ns)
		bench_lat_add(&r->lat_reply, now - s->wait_ns);
	switch (s->step) {
	case S_OPTNEG:
		if (cmd != SMFIC_OPTNEG || take_optneg(r, s, data, len) < 0)
			return -1;
		s->step = S_CONNECT;
		return 0;
	case S_CONNECT:
		tally_add(&r->t_connect, cmd, data, len);
		break;
	case S_HELO:
		tally_add(&r->t_helo, cmd, data, len);
		break;
	case S_MAIL:
		tally_add(&r->t_mail, cmd, data, len);
		break;
	case S_RCPT:
		tally_add(s->trap[s->rcpt] ? &r->t_rcpt_trap : &r->t_rcpt_other, cmd, data, len);
		break;
	default:
		return -1;
	}
	if (!strchr("acdfrty4", cmd))
		return -1;
	after_reply(s, r->opt, cmd);
	return 0;
}

/* --- the event loop ------------------------------------------------------------ */

static bool want_more(const run *r, uint64_t now)
{
	return bench_window_more(&r->win, r->lo, r->started, now);
}

static void end_session(run *r, session *s, bool ok)
{
	uint64_t now = bench_now_ns();
	epoll_ctl(r->ep, EPOLL_CTL_DEL, s->fd, NULL);
	close(s->fd);
	s->fd = -1;
	r->active--;
	if (ok)
		r->all++;
	if (!ok)
		r->errors++;
	else if (now >= r->win.measure_ns && now < r->win.end_ns) {
		r->done++;
		bench_lat_add(&r->lat_session, now - s->start_ns);
	}
}

static int start_session(run *r, session *s)
{
	new_facts(s, r->opt);
	memset(s->has_symlist, 0, sizeof(s->has_symlist));
	s->step = S_OPTNEG;
	s->rcpt = 0;
	s->pflags = 0;
	s->inlen = s->outlen = 0;
	s->waiting = false;
	s->start_ns = bench_now_ns();
	s->fd = bench_dial(r->lo);
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
	if (s->fd < 0 || epoll_ctl(r->ep, EPOLL_CTL_ADD, s->fd, &ev) < 0)
		return -1;
	r->active++;
	r->started++;
	return 0;
}

/* Send steps until one needs a reply or the session is over; then start the next session. */
static int drive(run *r, session *s)
{
	while (s->fd >= 0 && !s->waiting) {
		if (s->step == S_DONE) {
			if (flush_out(s) < 0)
				r->errors++;
			end_session(r, s, true);
			if (want_more(r, bench_now_ns()) && start_session(r, s) < 0)
				return -1;
			continue;
		}
		if (put_step(s)) {
			s->waiting = true;
			s->wait_ns = bench_now_ns();
			if (flush_out(s) < 0)
				end_session(r, s, false);
			return 0;
		}
		next_step(s, r->opt);
	}
	return 0;
}

static int on_readable(void *run_, void *session_)
{
	run *r = run_;
	session *s = session_;
	ssize_t n = read(s->fd, s->in + s->inlen, sizeof(s->in) - s->inlen);
	if (n <= 0) {
		if (n < 0 && errno == EINTR)
			return 0;
		end_session(r, s, false);
		return want_more(r, bench_now_ns()) ? start_session(r, s) : 0;
	}
	s->inlen += (size_t)n;
	size_t off = 0;
	while (s->inlen - off >= 5) {
		uint32_t len;
		memcpy(&len, s->in + off, 4);
		len = ntohl(len);
		if (len == 0 || len > sizeof(s->in) - 4) {
			r->malformed++;
			end_session(r, s, false);
			return want_more(r, bench_now_ns()) ? start_session(r, s) : 0;
		}
		if (s->inlen - off < 4 + len)
			break;
		if (take_reply(r, s, (char)s->in[off + 4], s->in + off + 5, len - 1) < 0)
			r->malformed++;
		off += 4 + len;
	}
	memmove(s->in, s->in + off, s->inlen - off);
	s->inlen -= off;
	return drive(r, s);
}

static unsigned long active_count(const void *run_)
{
	return ((const run *)run_)->active;
}

static int loop(run *r)
{
	bench_window_start(&r->win, r->lo);
	for (unsigned i = 0; i < r->lo->conns; i++) {
		session *s = &r->s[i];
		s->id = i;
		bench_load_rng(r->lo, i, &s->rng);
		if (start_session(r, s) < 0 || drive(r, s) < 0)
			return -1;
	}
	return bench_epoll_loop(r->ep, &r->win, on_readable, active_count, r);
}

/* --- report ------------------------------------------------------------------- */

static void report(run *r)
{
	bench_json_head(r->lo, &r->win, "sessions", r->done, r->all);
	printf(", \"malformed\": %lu, \"errors\": %lu, \"unfinished\": %lu, \"filter_actions\": \"0x%x\", "
	       "\"filter_protocol\": \"0x%x\"",
	       r->malformed, r->errors, r->active, r->negotiated_actions, r->negotiated_pflags);
	bench_json_lat("", &r->lat_session);
	bench_json_lat("reply_", &r->lat_reply);
	printf(", \"replies_per_session\": %.2f", r->done ? (double)r->lat_reply.n / (double)r->done : 0.0);
	bench_json_tally("connect", &r->t_connect);
	bench_json_tally("helo", &r->t_helo);
	bench_json_tally("mail", &r->t_mail);
	bench_json_tally("rcpt_trap", &r->t_rcpt_trap);
	bench_json_tally("rcpt_other", &r->t_rcpt_other);
	bench_json_end();
}

static int setup(run *r)
{
	r->s = calloc(r->lo->conns, sizeof(*r->s));
	r->ep = epoll_create1(EPOLL_CLOEXEC);
	if (!r->s || r->ep < 0)
		return -1;
	for (unsigned i = 0; i < r->lo->conns; i++)
		r->s[i].fd = -1;
	return 0;
}

static void run_free(run *r)
{
	for (unsigned i = 0; r->s && i < r->lo->conns; i++)
		if (r->s[i].fd >= 0)
			close(r->s[i].fd);
	free(r->s);
	bench_lat_free(&r->lat_session);
	bench_lat_free(&r->lat_reply);
	if (r->ep >= 0)
		close(r->ep);
}

int main(int argc, char **argv)
{
	options opt;
	int rc = 2;
	if (parse_options(argc, argv, &opt) < 0)
		return rc;
	run r = {.opt = &opt, .lo = &opt.load, .ep = -1};
	bench_lat_init(&r.lat_session);
	bench_lat_init(&r.lat_reply);
	if (setup(&r) < 0 || loop(&r) < 0) {
		fprintf(stderr, "milter_load: setup failed: %s\n", strerror(errno));
	} else {
		report(&r);
		rc = r.malformed || r.errors || r.active ? 1 : 0;
	}
	run_free(&r);
	return rc;
}
