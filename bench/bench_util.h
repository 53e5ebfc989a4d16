/*
 * bench_util: what the load generators and the store benchmarks share: a
 * monotonic clock, a small fast random generator, a latency recorder with
 * exact percentiles, and the naming scheme of generated senders, clients
 * and traps, so that store_bench's preloaded blocklist and trap file match
 * what policy_load and milter_load send.
 *
 * For the two load generators also: their common options and one parser
 * that each tool extends with its own flags, the workload's pools, the
 * connection and timing plumbing of one epoll thread, reply counters and
 * the JSON they print. Each tool keeps only its protocol.
 */
#ifndef SPAMTRAPD_BENCH_UTIL_H
#define SPAMTRAPD_BENCH_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Generated names (snprintf formats, one unsigned argument each):
 * ordinary senders and recipients, senders preloaded into the blocklist
 * by store_bench, and trap addresses of trap_bench's / run.py's trap file.
 */
#define BENCH_SENDER_FMT "user%u@senders.example"
#define BENCH_BLOCKED_FMT "bl%u@spam.example"
#define BENCH_RCPT_FMT "rcpt%u@example.net"
#define BENCH_TRAP_FMT "trap%u@traps.example"
/* HELO names: one per client index modulo 1000. */
#define BENCH_HELO_FMT "mx%u.senders.example"
/* Ordinary recipients are drawn from this many names. */
#define BENCH_RCPTS 1000000u

uint64_t bench_now_ns(void);

/* xorshift64*: per connection, no locking, good enough to spread names. */
typedef struct bench_rng {
	uint64_t s;
} bench_rng;

void bench_rng_seed(bench_rng *r, uint64_t seed);
uint64_t bench_rng_next(bench_rng *r);
/* Uniform in [0, n); n > 0. */
uint32_t bench_rng_below(bench_rng *r, uint32_t n);
/* True with probability p (0..1). */
bool bench_rng_chance(bench_rng *r, double p);

/*
 * An IPv4 client address in text: index i of a pool spread over 10.0.0.0/8
 * (never loopback, so spamtrapd keys it). buf has at least 16 bytes.
 */
void bench_client_ipv4(uint32_t i, char *buf, size_t buflen);
/* An IPv6 client in 2001:db8::/32 (documentation prefix), one /64 per i. */
void bench_client_ipv6(uint32_t i, char *buf, size_t buflen);

/*
 * Latency samples in nanoseconds. Grows as needed; percentiles are exact
 * (sorted at the end), which a few million samples make affordable.
 */
typedef struct bench_lat {
	uint32_t *ns; /* capped at ~4.29 s, far beyond any timeout here */
	size_t n, cap;
} bench_lat;

void bench_lat_init(bench_lat *l);
void bench_lat_add(bench_lat *l, uint64_t ns);
/* Sorts in place; then bench_lat_pct gives the q-th percentile (0..100) in ns. */
void bench_lat_sort(bench_lat *l);
uint64_t bench_lat_pct(const bench_lat *l, double q);
void bench_lat_free(bench_lat *l);

/* Peak RSS of this process in KiB (VmHWM), 0 when unknown. */
long bench_self_hwm_kib(void);

/* --- load generators: options ------------------------------------------------ */

/*
 * The options policy_load and milter_load share. Flags (BENCH_LOAD_USAGE):
 * -h host, -p port, -c connections, -d seconds measured, -w warm-up
 * seconds, -n stop after N requests/sessions (0: run for -d), -t trap and
 * -b blocklisted fractions, -S -C -T -B pool sizes (senders, clients,
 * traps, blocklisted senders), -r seed.
 */
typedef struct bench_load_opts {
	const char *tool; /* program name for messages and the JSON "tool" */
	const char *host; /* IPv4 literal */
	unsigned port, conns;
	double duration, warmup;
	uint64_t limit;
	double trap_fraction, blocked_fraction;
	unsigned senders, clients, traps, blocked;
	uint64_t seed;
} bench_load_opts;

#define BENCH_LOAD_USAGE                                                                                     \
	"-p PORT [-h HOST] [-c CONNS] [-d SECONDS] [-w WARMUP] [-n COUNT] [-t TRAP_FRACTION]\n"              \
	"       [-b BLOCKED_FRACTION] [-S SENDERS] [-C CLIENTS] [-T TRAPS] [-B BLOCKED] [-r SEED]"

/* How a flag's argument is stored: a string, an unsigned, a uint64_t or a double. */
typedef enum bench_flag_type { BENCH_STR, BENCH_UINT, BENCH_U64, BENCH_DOUBLE } bench_flag_type;

/* One flag of a tool's own: its letter, its type and where it goes (offsetof in the tool's options). */
typedef struct bench_flag {
	char flag;
	bench_flag_type type;
	size_t offset;
} bench_flag;

/*
 * Sets o to the shared defaults, then parses argv: shared flags into o,
 * the tool's own flags (own[0..nown)) into own_base. Numbers must be whole
 * numbers (fractions in 0..1). Returns 0, or -1 on an unknown flag, a bad
 * value or a missing port; the tool then prints its usage. The tool sets
 * its own defaults before and checks its own values after.
 */
int bench_load_parse(bench_load_opts *o, const char *tool, int argc, char **argv, const bench_flag *own,
                     size_t nown, void *own_base);

/* The random stream of connection i: different per connection, fixed by -r. */
void bench_load_rng(const bench_load_opts *o, unsigned i, bench_rng *r);

/* --- load generators: the workload ------------------------------------------ */

/*
 * Draws a client of the pool: writes its address into buf (IPv6 with
 * probability ipv6_fraction, no draw for it when 0) and returns its index.
 */
uint32_t bench_pick_client(bench_rng *r, const bench_load_opts *o, double ipv6_fraction, char *buf,
                           size_t buflen);
/* Draws a sender; blocklisted with probability -b. Returns true for a blocklisted one. */
bool bench_pick_sender(bench_rng *r, const bench_load_opts *o, char *buf, size_t buflen);
/* Draws a recipient; a trap with probability -t. Returns true for a trap. */
bool bench_pick_rcpt(bench_rng *r, const bench_load_opts *o, char *buf, size_t buflen);

/* --- load generators: connections and time ------------------------------------ */

/* A TCP connection to -h:-p with TCP_NODELAY, as an MTA makes it; -1 (reported on stderr) on failure. */
int bench_dial(const bench_load_opts *o);
/* Writes all of buf to a blocking socket; -1 on an error or a closed peer. */
int bench_write_all(int fd, const void *buf, size_t len);

/*
 * The run's time line: warm-up from start to measure, measured until end,
 * then up to 10 s for replies in flight (give_up).
 */
typedef struct bench_window {
	uint64_t start_ns, measure_ns, end_ns, give_up_ns;
} bench_window;

void bench_window_start(bench_window *w, const bench_load_opts *o);
/* Whether to start another request/session, given how many were started. */
bool bench_window_more(const bench_window *w, const bench_load_opts *o, unsigned long started, uint64_t now);

/*
 * The event loop of every load generator: waits on ep and calls
 * ready(run, conn) with the epoll data pointer of each readable connection,
 * while pending(run) is not 0 and the window's give-up time has not come.
 * Returns 0, or -1 as soon as ready() returns -1.
 */
int bench_epoll_loop(int ep, const bench_window *w, int (*ready)(void *run, void *conn),
                     unsigned long (*pending)(const void *run), void *run);

/* --- load generators: counting and output ------------------------------------- */

#define BENCH_TALLY_MAX 16

/* Replies counted by name (an action word, a milter reply letter); more names than slots go to other. */
typedef struct bench_tally {
	char name[BENCH_TALLY_MAX][32];
	unsigned long n[BENCH_TALLY_MAX];
	unsigned long other;
} bench_tally;

/* Counts one reply named by the first len bytes of name (capped to the slot size). */
void bench_tally_add(bench_tally *t, const char *name, size_t len);

/*
 * The JSON result is printed in pieces: bench_json_head opens the object
 * ("tool", "connections", "seconds", the count under count_key, "all",
 * "rps"), each further piece starts with ", ", bench_json_end closes it.
 * The measured seconds are -d, or with -n the time from the end of the
 * warm-up until now.
 */
void bench_json_head(const bench_load_opts *o, const bench_window *w, const char *count_key,
                     unsigned long done, unsigned long all);
/* ", "<prefix>p50_us": …" for p50, p90, p99, p99.9 and max; sorts l. */
void bench_json_lat(const char *prefix, bench_lat *l);
/* ", "<key>": {"<name>": n, …}", overflow as "(more)". */
void bench_json_tally(const char *key, const bench_tally *t);
void bench_json_end(void);

#endif
