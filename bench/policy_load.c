/*
 * policy_load: a Postfix policy-delegation client for benchmarks.
 *
 * Like smtpd's check_policy_service it keeps N persistent connections and
 * runs each in lock step: one request of about 30 attributes (as Postfix
 * 3.7 sends them), then wait for the one reply, then the next request.
 * Senders, clients and recipients are drawn from large pools, a set
 * fraction of recipients are traps and a set fraction of senders are ones
 * store_bench preloaded into the blocklist (names in bench_util.h). With
 * -u PREFIX every request has a sender of its own instead (the greylisting
 * row: every triplet is new, so every request writes). With -a N every
 * request is SASL-authenticated as one of N accounts, each sending from
 * its own few public networks (the relay and ratelimit rows).
 *
 * One thread drives every connection through epoll, so the client costs
 * one core at most. Results go to stdout as one JSON object: completed
 * requests and their rate after the warm-up, latency percentiles, replies
 * by action for trap and ordinary recipients, and connection errors.
 * Exit status 0 when every reply was well formed, 1 otherwise, 2 on usage
 * or setup errors.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "bench_util.h"

#define REQ_MAX 2048
#define REPLY_MAX 1024
/* The public /24 networks an account of -a sends from: under relay's default max_networks. */
#define ACCOUNT_NETWORKS 3

/* The shared options and policy_load's own: -6 IPv6 fraction, -s protocol_state, -u unique senders. */
typedef struct options {
	bench_load_opts load;
	double ipv6_fraction;
	const char *state;
	const char *unique; /* "": senders from the pool */
	uint64_t run_tag;   /* -u: this process's start, so that two runs never share a sender */
	unsigned accounts;  /* -a: SASL accounts (0: none, as an MX sees mail) */
} options;

typedef struct conn {
	int fd;
	bool trap, blocked, busy;
	uint64_t sent_ns;
	size_t replylen;
	char reply[REPLY_MAX];
	char req[REQ_MAX];
	size_t reqlen;
	bench_rng rng;
	unsigned long seq;
	unsigned id;
} conn;

typedef struct run {
	const options *opt;
	const bench_load_opts *lo;
	conn *conns;
	int ep;
	bench_window win;
	unsigned long done, all, sent, malformed, disconnects;
	bench_tally trap_replies, other_replies;
	bench_lat lat;
} run;

static void usage(void)
{
	fprintf(stderr,
	        "usage: policy_load " BENCH_LOAD_USAGE "\n"
	        "       [-6 IPV6_FRACTION] [-s STATE] [-u PREFIX] [-a ACCOUNTS]\n"
	        "       -n COUNT: requests\n"
	        "       -u PREFIX: a new sender each request (PREFIX: up to 16 letters a-z)\n"
	        "       -a ACCOUNTS: SASL logins acctN, N below ACCOUNTS, each from %d networks of its own\n",
	        ACCOUNT_NETWORKS);
}

/*
 * A -u prefix: letters only, so that the sender's local part is one word
 * with letters in it, which neither postgrey's "numbers to #" nor
 * spamtrapd's digit and hex-run rules (docs/greylist.md) fold into another
 * request's key.
 */
static bool prefix_ok(const char *p)
{
	size_t n = strlen(p);
	return n <= 16 && strspn(p, "abcdefghijklmnopqrstuvwxyz") == n;
}

static int parse_options(int argc, char **argv, options *o)
{
	static const bench_flag own[] = {
	    {'6', BENCH_DOUBLE, offsetof(options, ipv6_fraction)},
	    {'s', BENCH_STR, offsetof(options, state)},
	    {'u', BENCH_STR, offsetof(options, unique)},
	    {'a', BENCH_UINT, offsetof(options, accounts)},
	};
	o->ipv6_fraction = 0.1;
	o->state = "RCPT";
	o->unique = "";
	o->accounts = 0;
	o->run_tag = bench_now_ns();
	if (bench_load_parse(&o->load, "policy_load", argc, argv, own, sizeof(own) / sizeof(own[0]), o) < 0 ||
	    o->ipv6_fraction > 1 || !o->state[0] || !prefix_ok(o->unique)) {
		usage();
		return -1;
	}
	return 0;
}

/* The sender of a request: from the pool, or with -u one no other request has. */
static void pick_sender(conn *c, const options *o, char *buf, size_t buflen)
{
	if (!o->unique[0]) {
		c->blocked = bench_pick_sender(&c->rng, &o->load, buf, buflen);
		return;
	}
	c->blocked = false;
	snprintf(buf, buflen, "%sr%llxc%un%lu@senders.example", o->unique, (unsigned long long)o->run_tag,
	         c->id, c->seq);
}

/*
 * With -a: an account and a client address in one of its networks,
 * first octet 20 to 89 (never a private or exempt range, which relay
 * would not count); without: the pool's client and no login.
 */
static uint32_t pick_login(conn *c, const options *o, char *client, size_t clen, char *login, size_t llen)
{
	uint32_t a, net;

	if (o->accounts == 0) {
		login[0] = '\0';
		return bench_pick_client(&c->rng, &o->load, o->ipv6_fraction, client, clen);
	}
	a = bench_rng_below(&c->rng, o->accounts);
	net = a * ACCOUNT_NETWORKS + bench_rng_below(&c->rng, ACCOUNT_NETWORKS);
	snprintf(login, llen, "acct%u", a);
	snprintf(client, clen, "%u.%u.%u.%u", 20 + (net >> 16) % 70, (net >> 8) & 255, net & 255,
	         1 + bench_rng_below(&c->rng, 254));
	return a;
}

/*
 * One RCPT-time request with the attributes Postfix 3.7 sends, in its
 * order (smtpd_check.c). Empty attributes are sent as Postfix does.
 */
static void build_request(conn *c, const options *o)
{
	const bench_load_opts *lo = &o->load;
	char client[64], sender[96], rcpt[96], login[32];
	uint32_t ci = pick_login(c, o, client, sizeof(client), login, sizeof(login));
	c->seq++;
	pick_sender(c, o, sender, sizeof(sender));
	c->trap = bench_pick_rcpt(&c->rng, lo, rcpt, sizeof(rcpt));
	int n = snprintf(c->req, sizeof(c->req),
	                 "request=smtpd_access_policy\nprotocol_state=%s\nprotocol_name=ESMTP\n"
	                 "helo_name=" BENCH_HELO_FMT "\nqueue_id=%X%05lX\nsender=%s\nrecipient=%s\n"
	                 "recipient_count=0\nclient_address=%s\nclient_name=unknown\n"
	                 "reverse_client_name=unknown\ninstance=%x.%lx.0\nsasl_method=%s\nsasl_username=%s\n"
	                 "sasl_sender=\nsize=%u\nccert_subject=\nccert_issuer=\nccert_fingerprint=\n"
	                 "ccert_pubkey_fingerprint=\nencryption_protocol=TLSv1.3\n"
	                 "encryption_cipher=TLS_AES_256_GCM_SHA384\nencryption_keysize=256\netrn_domain=\n"
	                 "stress=\nclient_port=%u\npolicy_context=\nserver_address=192.0.2.25\n"
	                 "server_port=25\ncompatibility_level=3.6\nmail_version=3.7.11\n\n",
	                 o->state, ci % 1000, c->id, c->seq & 0xFFFFF, sender, rcpt, client, c->id, c->seq,
	                 login[0] ? "PLAIN" : "", login, 1000 + bench_rng_below(&c->rng, 100000),
	                 1024 + bench_rng_below(&c->rng, 60000));
	c->reqlen = (size_t)n;
}

static int send_request(run *r, conn *c)
{
	build_request(c, r->opt);
	c->replylen = 0;
	c->sent_ns = bench_now_ns();
	if (bench_write_all(c->fd, c->req, c->reqlen) < 0)
		return -1;
	c->busy = true;
	r->sent++;
	return 0;
}

/* A complete reply is "action=...\n\n"; anything else is counted as malformed. */
static void finish_reply(run *r, conn *c, uint64_t now)
{
	c->busy = false;
	if (strncmp(c->reply, "action=", 7) != 0 ||
	    memchr(c->reply, '\n', c->replylen) != c->reply + c->replylen - 2) {
		r->malformed++;
		return;
	}
	c->reply[c->replylen - 2] = '\0';
	r->all++;
	if (now < r->win.measure_ns)
		return;
	r->done++;
	bench_lat_add(&r->lat, now - c->sent_ns);
	const char *action = c->reply + 7;
	bench_tally_add(c->trap ? &r->trap_replies : &r->other_replies, action, strcspn(action, " \n"));
}

static int reconnect(run *r, conn *c)
{
	epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	r->disconnects++;
	c->busy = false;
	c->fd = bench_dial(r->lo);
	if (c->fd < 0)
		return -1;
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
	return epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static bool want_more(const run *r, uint64_t now)
{
	return bench_window_more(&r->win, r->lo, r->sent, now);
}

/* Readable: take what arrived; on a full reply, record it and send the next request. */
static int on_readable(void *run_, void *conn_)
{
	run *r = run_;
	conn *c = conn_;
	ssize_t n = read(c->fd, c->reply + c->replylen, sizeof(c->reply) - 1 - c->replylen);
	if (n <= 0) {
		if (n < 0 && errno == EINTR)
			return 0;
		if (reconnect(r, c) < 0)
			return -1;
		return want_more(r, bench_now_ns()) ? send_request(r, c) : 0;
	}
	c->replylen += (size_t)n;
	c->reply[c->replylen] = '\0';
	if (c->replylen < 2 || strcmp(c->reply + c->replylen - 2, "\n\n") != 0) {
		if (c->replylen == sizeof(c->reply) - 1)
			c->replylen = 0, r->malformed++;
		return 0;
	}
	uint64_t now = bench_now_ns();
	finish_reply(r, c, now);
	return want_more(r, now) ? send_request(r, c) : 0;
}

static unsigned long busy_count(const void *run_)
{
	const run *r = run_;
	unsigned long n = 0;
	for (unsigned i = 0; i < r->lo->conns; i++)
		n += r->conns[i].busy;
	return n;
}

static int setup(run *r)
{
	r->ep = epoll_create1(EPOLL_CLOEXEC);
	r->conns = calloc(r->lo->conns, sizeof(*r->conns));
	if (r->ep < 0 || !r->conns)
		return -1;
	for (unsigned i = 0; i < r->lo->conns; i++)
		r->conns[i].fd = -1;
	for (unsigned i = 0; i < r->lo->conns; i++) {
		conn *c = &r->conns[i];
		c->id = i;
		bench_load_rng(r->lo, i, &c->rng);
		c->fd = bench_dial(r->lo);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		if (c->fd < 0 || epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
			return -1;
	}
	return 0;
}

static int loop(run *r)
{
	bench_window_start(&r->win, r->lo);
	for (unsigned i = 0; i < r->lo->conns; i++)
		if (send_request(r, &r->conns[i]) < 0)
			return -1;
	return bench_epoll_loop(r->ep, &r->win, on_readable, busy_count, r);
}

static void report(run *r)
{
	bench_json_head(r->lo, &r->win, "requests", r->done, r->all);
	bench_json_lat("", &r->lat);
	printf(", \"malformed\": %lu, \"disconnects\": %lu, \"unanswered\": %lu", r->malformed,
	       r->disconnects, busy_count(r));
	bench_json_tally("trap_replies", &r->trap_replies);
	bench_json_tally("other_replies", &r->other_replies);
	bench_json_end();
}

static void run_free(run *r)
{
	for (unsigned i = 0; r->conns && i < r->lo->conns; i++)
		if (r->conns[i].fd >= 0)
			close(r->conns[i].fd);
	free(r->conns);
	bench_lat_free(&r->lat);
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
	bench_lat_init(&r.lat);
	if (setup(&r) < 0 || loop(&r) < 0) {
		fprintf(stderr, "policy_load: %s\n", strerror(errno));
	} else {
		report(&r);
		rc = r.malformed || busy_count(&r) ? 1 : 0;
	}
	run_free(&r);
	return rc;
}
