/*
 * policy_load: a Postfix policy-delegation client for benchmarks.
 *
 * Like smtpd's check_policy_service it keeps N persistent connections and
 * runs each in lock step: one request of about 30 attributes (as Postfix
 * 3.7 sends them), then wait for the one reply, then the next request.
 * Senders, clients and recipients are drawn from large pools, a set
 * fraction of recipients are traps and a set fraction of senders are ones
 * store_bench preloaded into the blocklist (names in bench_util.h).
 *
 * One thread drives every connection through epoll, so the client costs
 * one core at most. Results go to stdout as one JSON object: completed
 * requests and their rate after the warm-up, latency percentiles, replies
 * by action for trap and ordinary recipients, and connection errors.
 * Exit status 0 when every reply was well formed, 1 otherwise, 2 on usage
 * or setup errors.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench_util.h"

#define REQ_MAX 2048
#define REPLY_MAX 1024
#define MAX_ACTIONS 16

typedef struct options {
	const char *host;
	int port;
	unsigned conns;
	double duration, warmup;
	double trap_fraction, blocked_fraction, ipv6_fraction;
	unsigned senders, clients, traps, blocked;
	unsigned long max_requests; /* 0: until duration ends */
	const char *state;
	uint64_t seed;
} options;

/* Replies counted by their action word ("DUNNO", "550", "DEFER_IF_PERMIT"). */
typedef struct action_count {
	char name[32];
	unsigned long n;
} action_count;

typedef struct tally {
	action_count a[MAX_ACTIONS];
	unsigned long other;
} tally;

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
	conn *conns;
	int ep;
	uint64_t start_ns, measure_ns, end_ns;
	unsigned long done, all, sent, malformed, disconnects;
	tally trap_replies, other_replies;
	bench_lat lat;
} run;

static void usage(void)
{
	fprintf(stderr,
	        "usage: policy_load -p PORT [-h HOST] [-c CONNS] [-d SECONDS] [-w WARMUP] [-n REQUESTS]\n"
	        "       [-t TRAP_FRACTION] [-b BLOCKED_FRACTION] [-6 IPV6_FRACTION] [-S SENDERS]\n"
	        "       [-C CLIENTS] [-T TRAPS] [-B BLOCKED] [-s STATE] [-r SEED]\n");
}

static int parse_options(int argc, char **argv, options *o)
{
	*o = (options){.host = "127.0.0.1",
	               .conns = 1,
	               .duration = 5,
	               .warmup = 1,
	               .trap_fraction = 0.02,
	               .blocked_fraction = 0.05,
	               .ipv6_fraction = 0.1,
	               .senders = 100000,
	               .clients = 50000,
	               .traps = 100000,
	               .blocked = 100000,
	               .state = "RCPT",
	               .seed = 1};
	int c;
	while ((c = getopt(argc, argv, "h:p:c:d:w:n:t:b:6:S:C:T:B:s:r:")) != -1) {
		switch (c) {
		case 'h':
			o->host = optarg;
			break;
		case 'p':
			o->port = atoi(optarg);
			break;
		case 'c':
			o->conns = (unsigned)atoi(optarg);
			break;
		case 'd':
			o->duration = atof(optarg);
			break;
		case 'w':
			o->warmup = atof(optarg);
			break;
		case 'n':
			o->max_requests = strtoul(optarg, NULL, 10);
			break;
		case 't':
			o->trap_fraction = atof(optarg);
			break;
		case 'b':
			o->blocked_fraction = atof(optarg);
			break;
		case '6':
			o->ipv6_fraction = atof(optarg);
			break;
		case 'S':
			o->senders = (unsigned)atoi(optarg);
			break;
		case 'C':
			o->clients = (unsigned)atoi(optarg);
			break;
		case 'T':
			o->traps = (unsigned)atoi(optarg);
			break;
		case 'B':
			o->blocked = (unsigned)atoi(optarg);
			break;
		case 's':
			o->state = optarg;
			break;
		case 'r':
			o->seed = strtoull(optarg, NULL, 10);
			break;
		default:
			usage();
			return -1;
		}
	}
	if (o->port <= 0 || o->conns == 0 || o->duration <= 0 || o->warmup < 0 || !o->senders ||
	    !o->clients || !o->traps || !o->blocked) {
		usage();
		return -1;
	}
	return 0;
}

static int dial(const options *o)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
	if (inet_pton(AF_INET, o->host, &sa.sin_addr) != 1) {
		fprintf(stderr, "policy_load: bad IPv4 address %s\n", o->host);
		return -1;
	}
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, "policy_load: connect %s:%d: %s\n", o->host, o->port, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * One RCPT-time request with the attributes Postfix 3.7 sends, in its
 * order (smtpd_check.c). Empty attributes are sent as Postfix does.
 */
static void build_request(conn *c, const options *o)
{
	char client[64], sender[96], rcpt[96];
	uint32_t ci = bench_rng_below(&c->rng, o->clients);
	bool v6 = bench_rng_chance(&c->rng, o->ipv6_fraction);
	if (v6)
		bench_client_ipv6(ci, client, sizeof(client));
	else
		bench_client_ipv4(ci, client, sizeof(client));
	c->blocked = bench_rng_chance(&c->rng, o->blocked_fraction);
	snprintf(sender, sizeof(sender), c->blocked ? BENCH_BLOCKED_FMT : BENCH_SENDER_FMT,
	         bench_rng_below(&c->rng, c->blocked ? o->blocked : o->senders));
	c->trap = bench_rng_chance(&c->rng, o->trap_fraction);
	snprintf(rcpt, sizeof(rcpt), c->trap ? BENCH_TRAP_FMT : BENCH_RCPT_FMT,
	         bench_rng_below(&c->rng, c->trap ? o->traps : 1000000));
	c->seq++;
	int n = snprintf(c->req, sizeof(c->req),
	                 "request=smtpd_access_policy\nprotocol_state=%s\nprotocol_name=ESMTP\n"
	                 "helo_name=mx%u.senders.example\nqueue_id=%X%05lX\nsender=%s\nrecipient=%s\n"
	                 "recipient_count=0\nclient_address=%s\nclient_name=unknown\n"
	                 "reverse_client_name=unknown\ninstance=%x.%lx.0\nsasl_method=\nsasl_username=\n"
	                 "sasl_sender=\nsize=%u\nccert_subject=\nccert_issuer=\nccert_fingerprint=\n"
	                 "ccert_pubkey_fingerprint=\nencryption_protocol=TLSv1.3\n"
	                 "encryption_cipher=TLS_AES_256_GCM_SHA384\nencryption_keysize=256\netrn_domain=\n"
	                 "stress=\nclient_port=%u\npolicy_context=\nserver_address=192.0.2.25\n"
	                 "server_port=25\ncompatibility_level=3.6\nmail_version=3.7.11\n\n",
	                 o->state, ci % 1000, c->id, c->seq & 0xFFFFF, sender, rcpt, client, c->id, c->seq,
	                 1000 + bench_rng_below(&c->rng, 100000), 1024 + bench_rng_below(&c->rng, 60000));
	c->reqlen = (size_t)n;
}

static int send_request(run *r, conn *c)
{
	build_request(c, r->opt);
	c->replylen = 0;
	c->sent_ns = bench_now_ns();
	size_t off = 0;
	while (off < c->reqlen) {
		ssize_t w = write(c->fd, c->req + off, c->reqlen - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		off += (size_t)w;
	}
	c->busy = true;
	r->sent++;
	return 0;
}

static void tally_add(tally *t, const char *action)
{
	char word[32];
	size_t n = strcspn(action, " \n");
	if (n >= sizeof(word))
		n = sizeof(word) - 1;
	memcpy(word, action, n);
	word[n] = '\0';
	for (int i = 0; i < MAX_ACTIONS; i++) {
		if (t->a[i].name[0] == '\0')
			snprintf(t->a[i].name, sizeof(t->a[i].name), "%s", word);
		if (strcmp(t->a[i].name, word) == 0) {
			t->a[i].n++;
			return;
		}
	}
	t->other++;
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
	if (now < r->measure_ns)
		return;
	r->done++;
	bench_lat_add(&r->lat, now - c->sent_ns);
	tally_add(c->trap ? &r->trap_replies : &r->other_replies, c->reply + 7);
}

static int reconnect(run *r, conn *c)
{
	epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	r->disconnects++;
	c->busy = false;
	c->fd = dial(r->opt);
	if (c->fd < 0)
		return -1;
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
	return epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static bool want_more(const run *r, uint64_t now)
{
	if (r->opt->max_requests)
		return r->sent < r->opt->max_requests && now < r->end_ns;
	return now < r->end_ns;
}

/* Readable: take what arrived; on a full reply, record it and send the next request. */
static int on_readable(run *r, conn *c)
{
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

static unsigned busy_count(const run *r)
{
	unsigned n = 0;
	for (unsigned i = 0; i < r->opt->conns; i++)
		n += r->conns[i].busy;
	return n;
}

static int setup(run *r)
{
	r->ep = epoll_create1(EPOLL_CLOEXEC);
	r->conns = calloc(r->opt->conns, sizeof(*r->conns));
	if (r->ep < 0 || !r->conns)
		return -1;
	for (unsigned i = 0; i < r->opt->conns; i++) {
		conn *c = &r->conns[i];
		c->id = i;
		bench_rng_seed(&c->rng, r->opt->seed * 1000003u + i);
		c->fd = dial(r->opt);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		if (c->fd < 0 || epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
			return -1;
	}
	return 0;
}

static int loop(run *r)
{
	struct epoll_event evs[256];
	r->start_ns = bench_now_ns();
	r->measure_ns = r->start_ns + (uint64_t)(r->opt->warmup * 1e9);
	r->end_ns = r->measure_ns + (uint64_t)(r->opt->duration * 1e9);
	uint64_t give_up = r->end_ns + 10000000000ull; /* replies in flight get 10 s more */
	for (unsigned i = 0; i < r->opt->conns; i++)
		if (send_request(r, &r->conns[i]) < 0)
			return -1;
	while (busy_count(r) > 0 && bench_now_ns() < give_up) {
		int n = epoll_wait(r->ep, evs, 256, 100);
		for (int i = 0; i < n; i++)
			if (on_readable(r, evs[i].data.ptr) < 0)
				return -1;
	}
	return 0;
}

static void print_tally(const char *name, const tally *t)
{
	printf("\"%s\": {", name);
	const char *sep = "";
	for (int i = 0; i < MAX_ACTIONS && t->a[i].name[0]; i++, sep = ", ")
		printf("%s\"%s\": %lu", sep, t->a[i].name, t->a[i].n);
	if (t->other)
		printf("%s\"(more)\": %lu", sep, t->other);
	printf("}");
}

static void report(run *r)
{
	bench_lat_sort(&r->lat);
	double secs =
	    r->opt->max_requests ? (double)(bench_now_ns() - r->measure_ns) / 1e9 : r->opt->duration;
	printf("{\"tool\": \"policy_load\", \"connections\": %u, \"seconds\": %.3f, \"requests\": %lu, "
	       "\"all\": %lu, "
	       "\"rps\": %.1f, \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, "
	       "\"max_us\": %.1f, \"malformed\": %lu, \"disconnects\": %lu, \"unanswered\": %u, ",
	       r->opt->conns, secs, r->done, r->all, (double)r->done / secs, bench_lat_pct(&r->lat, 50) / 1e3,
	       bench_lat_pct(&r->lat, 90) / 1e3, bench_lat_pct(&r->lat, 99) / 1e3,
	       bench_lat_pct(&r->lat, 99.9) / 1e3, bench_lat_pct(&r->lat, 100) / 1e3, r->malformed,
	       r->disconnects, busy_count(r));
	print_tally("trap_replies", &r->trap_replies);
	printf(", ");
	print_tally("other_replies", &r->other_replies);
	printf("}\n");
}

int main(int argc, char **argv)
{
	options opt;
	if (parse_options(argc, argv, &opt) < 0)
		return 2;
	run r = {.opt = &opt};
	bench_lat_init(&r.lat);
	if (setup(&r) < 0 || loop(&r) < 0) {
		fprintf(stderr, "policy_load: %s\n", strerror(errno));
		return 2;
	}
	report(&r);
	int rc = r.malformed || busy_count(&r) ? 1 : 0;
	for (unsigned i = 0; i < opt.conns; i++)
		close(r.conns[i].fd);
	free(r.conns);
	bench_lat_free(&r.lat);
	close(r.ep);
	return rc;
}
