/*
 * bench_util: clock, random numbers, latency samples and generated names
 * shared by the bench programs, and the option parsing, workload, event
 * loop and JSON output shared by the load generators (see bench_util.h).
 * Exits on out of memory: a benchmark that cannot keep its samples has no
 * result to give.
 */
#include "bench_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bench_rng_seed(bench_rng *r, uint64_t seed)
{
	/* splitmix64 step, so that nearby seeds give unrelated streams; never 0. */
	uint64_t z = seed + 0x9E3779B97F4A7C15ull;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	r->s = (z ^ (z >> 31)) | 1;
}

uint64_t bench_rng_next(bench_rng *r)
{
	r->s ^= r->s >> 12;
	r->s ^= r->s << 25;
	r->s ^= r->s >> 27;
	return r->s * 0x2545F4914F6CDD1Dull;
}

uint32_t bench_rng_below(bench_rng *r, uint32_t n)
{
	return (uint32_t)(((bench_rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

bool bench_rng_chance(bench_rng *r, double p)
{
	return (double)(bench_rng_next(r) >> 11) * (1.0 / 9007199254740992.0) < p;
}

void bench_client_ipv4(uint32_t i, char *buf, size_t buflen)
{
	/* Multiply by an odd constant so consecutive indexes land in different /24s. */
	uint32_t a = (i * 2654435761u) & 0x00FFFFFFu;
	snprintf(buf, buflen, "10.%u.%u.%u", a >> 16, (a >> 8) & 0xFF, (a & 0xFF) | 1);
}

void bench_client_ipv6(uint32_t i, char *buf, size_t buflen)
{
	snprintf(buf, buflen, "2001:db8:%x:%x::%x", (i >> 16) & 0xFFFF, i & 0xFFFF, (i % 250) + 1);
}

void bench_lat_init(bench_lat *l)
{
	memset(l, 0, sizeof(*l));
}

void bench_lat_add(bench_lat *l, uint64_t ns)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 1 << 16;
		uint32_t *p = realloc(l->ns, cap * sizeof(*p));
		if (!p) {
			fprintf(stderr, "bench: out of memory for latency samples\n");
			exit(2);
		}
		l->ns = p;
		l->cap = cap;
	}
	l->ns[l->n++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

void bench_lat_sort(bench_lat *l)
{
	if (l->n)
		qsort(l->ns, l->n, sizeof(*l->ns), cmp_u32);
}

uint64_t bench_lat_pct(const bench_lat *l, double q)
{
	if (!l->n)
		return 0;
	size_t i = (size_t)(q / 100.0 * (double)(l->n - 1) + 0.5);
	return l->ns[i < l->n ? i : l->n - 1];
}

void bench_lat_free(bench_lat *l)
{
	free(l->ns);
	memset(l, 0, sizeof(*l));
}

long bench_self_hwm_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* --- load generators: options ------------------------------------------------ */

static const bench_flag shared_flags[] = {
    {'h', BENCH_STR, offsetof(bench_load_opts, host)},
    {'p', BENCH_UINT, offsetof(bench_load_opts, port)},
    {'c', BENCH_UINT, offsetof(bench_load_opts, conns)},
    {'d', BENCH_DOUBLE, offsetof(bench_load_opts, duration)},
    {'w', BENCH_DOUBLE, offsetof(bench_load_opts, warmup)},
    {'n', BENCH_U64, offsetof(bench_load_opts, limit)},
    {'t', BENCH_DOUBLE, offsetof(bench_load_opts, trap_fraction)},
    {'b', BENCH_DOUBLE, offsetof(bench_load_opts, blocked_fraction)},
    {'S', BENCH_UINT, offsetof(bench_load_opts, senders)},
    {'C', BENCH_UINT, offsetof(bench_load_opts, clients)},
    {'T', BENCH_UINT, offsetof(bench_load_opts, traps)},
    {'B', BENCH_UINT, offsetof(bench_load_opts, blocked)},
    {'r', BENCH_U64, offsetof(bench_load_opts, seed)},
};

#define NSHARED (sizeof(shared_flags) / sizeof(shared_flags[0]))

/*
 * Stores arg at base + f->offset as f->type says; -1 when it is not a
 * number of that type (doubles: 0 to 1e9, no NaN or infinity).
 */
static int set_flag(const bench_flag *f, void *base, const char *arg)
{
	void *p = (char *)base + f->offset;
	char *end = NULL;

	errno = 0;
	if (f->type == BENCH_STR) {
		*(const char **)p = arg;
		return 0;
	}
	if (f->type == BENCH_DOUBLE) {
		double v = strtod(arg, &end);
		*(double *)p = v;
		return end == arg || *end || errno || !(v >= 0 && v <= 1e9) ? -1 : 0; /* also NaN, inf */
	}
	if (arg[0] == '-')
		return -1; /* strtoull would wrap it */
	unsigned long long v = strtoull(arg, &end, 10);
	if (end == arg || *end || errno || (f->type == BENCH_UINT && v > UINT_MAX))
		return -1;
	if (f->type == BENCH_UINT)
		*(unsigned *)p = (unsigned)v;
	else
		*(uint64_t *)p = (uint64_t)v;
	return 0;
}

static const bench_flag *find_flag(const bench_flag *flags, size_t n, int c)
{
	for (size_t i = 0; i < n; i++)
		if (flags[i].flag == c)
			return &flags[i];
	return NULL;
}

/* getopt's option string for both tables: every flag takes an argument. */
static void build_optstring(char *buf, size_t buflen, const bench_flag *own, size_t nown)
{
	size_t off = 0;

	for (size_t i = 0; i < NSHARED + nown && off + 3 <= buflen; i++) {
		buf[off++] = i < NSHARED ? shared_flags[i].flag : own[i - NSHARED].flag;
		buf[off++] = ':';
	}
	buf[off] = '\0';
}

static bool shared_valid(const bench_load_opts *o)
{
	return o->port > 0 && o->port <= 65535 && o->conns > 0 && o->duration > 0 && o->trap_fraction <= 1 &&
	       o->blocked_fraction <= 1 && o->senders && o->clients && o->traps && o->blocked;
}

static void load_defaults(bench_load_opts *o, const char *tool)
{
	*o = (bench_load_opts){.tool = tool,
	                       .host = "127.0.0.1",
	                       .conns = 1,
	                       .duration = 5,
	                       .warmup = 1,
	                       .trap_fraction = 0.02,
	                       .blocked_fraction = 0.05,
	                       .senders = 100000,
	                       .clients = 50000,
	                       .traps = 100000,
	                       .blocked = 100000,
	                       .seed = 1};
}

int bench_load_parse(bench_load_opts *o, const char *tool, int argc, char **argv, const bench_flag *own,
                     size_t nown, void *own_base)
{
	char optstring[2 * (NSHARED + 16) + 1]; /* room for 16 flags of the tool's own */
	int c;

	load_defaults(o, tool);
	build_optstring(optstring, sizeof(optstring), own, nown);
	while ((c = getopt(argc, argv, optstring)) != -1) {
		const bench_flag *f = find_flag(shared_flags, NSHARED, c);
		void *base = o;
		if (!f) {
			f = find_flag(own, nown, c);
			base = own_base;
		}
		if (!f || set_flag(f, base, optarg) < 0) {
			if (f)
				fprintf(stderr, "%s: bad value for -%c: %s\n", tool, c, optarg);
			return -1;
		}
	}
	return optind == argc && shared_valid(o) ? 0 : -1;
}

void bench_load_rng(const bench_load_opts *o, unsigned i, bench_rng *r)
{
	bench_rng_seed(r, o->seed * 1000003u + i);
}

/* --- load generators: the workload ------------------------------------------ */

uint32_t bench_pick_client(bench_rng *r, const bench_load_opts *o, double ipv6_fraction, char *buf,
                           size_t buflen)
{
	uint32_t ci = bench_rng_below(r, o->clients);

	if (ipv6_fraction > 0 && bench_rng_chance(r, ipv6_fraction))
		bench_client_ipv6(ci, buf, buflen);
	else
		bench_client_ipv4(ci, buf, buflen);
	return ci;
}

bool bench_pick_sender(bench_rng *r, const bench_load_opts *o, char *buf, size_t buflen)
{
	bool blocked = bench_rng_chance(r, o->blocked_fraction);

	snprintf(buf, buflen, blocked ? BENCH_BLOCKED_FMT : BENCH_SENDER_FMT,
	         bench_rng_below(r, blocked ? o->blocked : o->senders));
	return blocked;
}

bool bench_pick_rcpt(bench_rng *r, const bench_load_opts *o, char *buf, size_t buflen)
{
	bool trap = bench_rng_chance(r, o->trap_fraction);

	snprintf(buf, buflen, trap ? BENCH_TRAP_FMT : BENCH_RCPT_FMT,
	         bench_rng_below(r, trap ? o->traps : BENCH_RCPTS));
	return trap;
}

/* --- load generators: connections and time ------------------------------------ */

int bench_dial(const bench_load_opts *o)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
	int one = 1;

	if (inet_pton(AF_INET, o->host, &sa.sin_addr) != 1) {
		fprintf(stderr, "%s: bad IPv4 address %s\n", o->tool, o->host);
		return -1;
	}
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, "%s: connect %s:%u: %s\n", o->tool, o->host, o->port, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

int bench_write_all(int fd, const void *buf, size_t len)
{
	size_t off = 0;

	while (off < len) {
		ssize_t w = write(fd, (const char *)buf + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		off += (size_t)w;
	}
	return 0;
}

void bench_window_start(bench_window *w, const bench_load_opts *o)
{
	w->start_ns = bench_now_ns();
	w->measure_ns = w->start_ns + (uint64_t)(o->warmup * 1e9);
	w->end_ns = w->measure_ns + (uint64_t)(o->duration * 1e9);
	w->give_up_ns = w->end_ns + 10000000000ull;
}

bool bench_window_more(const bench_window *w, const bench_load_opts *o, unsigned long started, uint64_t now)
{
	if (o->limit && started >= o->limit)
		return false;
	return now < w->end_ns;
}

int bench_epoll_loop(int ep, const bench_window *w, int (*ready)(void *run, void *conn),
                     unsigned long (*pending)(const void *run), void *run)
{
	struct epoll_event evs[256];

	while (pending(run) > 0 && bench_now_ns() < w->give_up_ns) {
		int n = epoll_wait(ep, evs, 256, 100);
		for (int i = 0; i < n; i++)
			if (ready(run, evs[i].data.ptr) < 0)
				return -1;
	}
	return 0;
}

/* --- load generators: counting and output ------------------------------------- */

void bench_tally_add(bench_tally *t, const char *name, size_t len)
{
	char word[sizeof(t->name[0])];

	/* Names come from the server: cap them, and keep the JSON well formed. */
	if (len >= sizeof(word))
		len = sizeof(word) - 1;
	for (size_t i = 0; i < len; i++)
		word[i] =
		    name[i] > ' ' && name[i] < 0x7f && name[i] != '"' && name[i] != '\\' ? name[i] : '?';
	word[len] = '\0';
	if (len == 0)
		snprintf(word, sizeof(word), "(empty)"); /* an empty slot name means unused */
	for (int i = 0; i < BENCH_TALLY_MAX; i++) {
		if (t->name[i][0] == '\0')
			memcpy(t->name[i], word, sizeof(word));
		if (strcmp(t->name[i], word) == 0) {
			t->n[i]++;
			return;
		}
	}
	t->other++;
}

void bench_json_head(const bench_load_opts *o, const bench_window *w, const char *count_key,
                     unsigned long done, unsigned long all)
{
	double secs = o->limit ? (double)(bench_now_ns() - w->measure_ns) / 1e9 : o->duration;

	printf("{\"tool\": \"%s\", \"connections\": %u, \"seconds\": %.3f, \"%s\": %lu, \"all\": %lu, "
	       "\"rps\": %.1f",
	       o->tool, o->conns, secs, count_key, done, all, (double)done / secs);
}

void bench_json_lat(const char *prefix, bench_lat *l)
{
	static const struct {
		const char *name;
		double q;
	} pcts[] = {{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p999", 99.9}, {"max", 100}};

	bench_lat_sort(l);
	for (size_t i = 0; i < sizeof(pcts) / sizeof(pcts[0]); i++)
		printf(", \"%s%s_us\": %.1f", prefix, pcts[i].name,
		       (double)bench_lat_pct(l, pcts[i].q) / 1e3);
}

void bench_json_tally(const char *key, const bench_tally *t)
{
	const char *sep = "";

	printf(", \"%s\": {", key);
	for (int i = 0; i < BENCH_TALLY_MAX && t->name[i][0]; i++, sep = ", ")
		printf("%s\"%s\": %lu", sep, t->name[i], t->n[i]);
	if (t->other)
		printf("%s\"(more)\": %lu", sep, t->other);
	printf("}");
}

void bench_json_end(void)
{
	printf("}\n");
}
