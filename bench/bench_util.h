/*
 * bench_util: what the load generators and the store benchmarks share: a
 * monotonic clock, a small fast random generator, a latency recorder with
 * exact percentiles, and the naming scheme of generated senders, clients
 * and traps, so that store_bench's preloaded blocklist and trap file match
 * what policy_load and milter_load send.
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

#endif
