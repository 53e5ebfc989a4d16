/*
 * bench_util: clock, random numbers, latency samples and generated names
 * shared by the bench programs (see bench_util.h). Exits on out of memory:
 * a benchmark that cannot keep its samples has no result to give.
 */
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
