/*
 * store_bench: the blocklist store as the daemon uses it, at scale.
 *
 * Loads N entries (default 1,000,000) through store_record, 16 keys a
 * call as a trap hit would record them, and at each checkpoint (10k,
 * 100k, 1M entries) times the blocklist lookup as the engine runs it
 * (store_run of the query decide_lookup_query builds from the real
 * decision core's keys: sender, the client's networks, sender domain,
 * HELO), for senders that are blocklisted (hit) and that
 * are not (miss). Entries are the names of bench_util.h: nine in ten are
 * senders BENCH_BLOCKED_FMT, one in ten is a client address, so that
 * policy_load -B and milter_load -B hit them.
 *
 * Usage: store_bench [-b sqlite|redis] [-f DBFILE] [-H HOST -P PORT]
 *        [-n ENTRIES] [-l LOOKUPS] [-e] [-x FILE]
 * -e: the store already holds ENTRIES entries (an earlier run): lookups
 * only, for profiling.
 * -x FILE: write the same ENTRIES entries as a `spamtrapctl import` file
 * (every column, as `spamtrapctl list` prints them) and do nothing else:
 * bench/run.py times the bulk load with it.
 * Prints one JSON object a line per phase; exit 0 on success.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "core/decide.h"
#include "store/store.h"

#define RECORD_BATCH 16
#define BLOCKED_CLIENT_BASE (1u << 23)
#define MAX_CHECKPOINTS 8

typedef struct options {
	store_config cfg;
	unsigned entries, lookups;
	bool existing;      /* the store already holds the entries: time lookups only */
	const char *export; /* write an import file of the entries instead */
} options;

/* Entry i of the preloaded blocklist; see the file comment. */
static void entry_key(unsigned i, char *buf, size_t buflen)
{
	if (i % 10 == 9)
		bench_client_ipv4(BLOCKED_CLIENT_BASE + i / 10, buf, buflen);
	else
		snprintf(buf, buflen, BENCH_BLOCKED_FMT, i / 10 * 9 + i % 10);
}

/* Senders among the first n entries: what policy_load -B may pick from. */
static unsigned blocked_senders(unsigned n)
{
	return n / 10 * 9 + (n % 10 < 9 ? n % 10 : 9);
}

static int load_range(store *st, unsigned from, unsigned to, int64_t now)
{
	char keys[RECORD_BATCH][64];
	const char *ptrs[RECORD_BATCH];
	store_hit hit = {.now = now,
	                 .ttl = 30 * 86400,
	                 .trap = "trap1@traps.example",
	                 .recipient = "trap1@traps.example",
	                 .client = "10.9.8.7",
	                 .helo = "mx.spam.example",
	                 .queue_id = "4ABCDEF123",
	                 .reason = "trap"};
	for (unsigned i = from; i < to;) {
		size_t n = 0;
		for (; n < RECORD_BATCH && i < to; n++, i++) {
			entry_key(i, keys[n], sizeof(keys[n]));
			ptrs[n] = keys[n];
		}
		hit.sender = ptrs[0];
		if (store_record(st, ptrs, n, &hit) != STORE_OK) {
			fprintf(stderr, "store_bench: record: %s\n", store_last_error());
			return -1;
		}
	}
	return 0;
}

/* Time `lookups` lookups of transactions whose sender is (hit) or is not (miss) blocklisted. */
static int time_lookups(store *st, const decide_policy *pol, unsigned loaded, unsigned lookups, bool hit,
                        bench_lat *lat)
{
	bench_rng rng;
	bench_rng_seed(&rng, hit ? 7 : 8);
	decide_txn *txn = malloc(sizeof(*txn));
	if (!txn)
		return -1;
	char client[64], sender[96];
	query q;
	for (unsigned i = 0; i < lookups; i++) {
		bench_client_ipv4(bench_rng_below(&rng, 50000), client, sizeof(client));
		if (hit)
			snprintf(sender, sizeof(sender), BENCH_BLOCKED_FMT,
			         bench_rng_below(&rng, blocked_senders(loaded)));
		else
			snprintf(sender, sizeof(sender), BENCH_SENDER_FMT, bench_rng_below(&rng, 100000));
		decide_facts f = {.front = DECIDE_FRONT_POLICY,
		                  .client_address = client,
		                  .helo = "mx1.senders.example",
		                  .sender = sender};
		decide_prepare(pol, &f, txn);
		decide_lookup_query(pol, txn, &q);
		uint64_t t0 = bench_now_ns();
		store_run(st, &q, 1, (int64_t)time(NULL));
		bench_lat_add(lat, bench_now_ns() - t0);
		if (q.status != (hit ? QUERY_OK : QUERY_NOTFOUND)) {
			fprintf(stderr, "store_bench: lookup of %s gave %d, expected %s: %s\n", sender,
			        (int)q.status, hit ? "a hit" : "a miss", store_last_error());
			free(txn);
			return -1;
		}
	}
	free(txn);
	return 0;
}

static int report_lookups(store *st, const decide_policy *pol, unsigned loaded, unsigned lookups)
{
	bench_lat miss, hit;
	bench_lat_init(&miss);
	bench_lat_init(&hit);
	/* An untimed pass first: the daemon answers from warm caches too. */
	int rc = time_lookups(st, pol, loaded, lookups / 4 + 1, false, &miss);
	miss.n = 0;
	if (rc == 0)
		rc = time_lookups(st, pol, loaded, lookups, false, &miss);
	if (rc == 0)
		rc = time_lookups(st, pol, loaded, lookups, true, &hit);
	if (rc == 0) {
		double miss_mean = 0;
		for (size_t i = 0; i < miss.n; i++)
			miss_mean += miss.ns[i];
		miss_mean /= (double)(miss.n ? miss.n : 1);
		bench_lat_sort(&miss);
		bench_lat_sort(&hit);
		printf("{\"phase\": \"lookup\", \"entries\": %u, \"lookups\": %u, \"miss_per_s\": %.0f, "
		       "\"miss_p50_us\": %.2f, \"miss_p99_us\": %.2f, \"hit_p50_us\": %.2f, \"hit_p99_us\": "
		       "%.2f}\n",
		       loaded, lookups, 1e9 / miss_mean, bench_lat_pct(&miss, 50) / 1e3,
		       bench_lat_pct(&miss, 99) / 1e3, bench_lat_pct(&hit, 50) / 1e3,
		       bench_lat_pct(&hit, 99) / 1e3);
		fflush(stdout);
	}
	bench_lat_free(&miss);
	bench_lat_free(&hit);
	return rc;
}

static int usage(void)
{
	fprintf(stderr, "usage: store_bench [-b sqlite|redis] [-f DBFILE] [-H HOST] [-P PORT] [-n ENTRIES] "
	                "[-l LOOKUPS] [-e] [-x FILE]\n");
	return 2;
}

/* Entries 0..n-1 as import lines: key, expires, hits, last seen, trap, reason (UTC times). */
static int write_import_file(const char *path, unsigned n)
{
	FILE *f = fopen(path, "w");
	time_t now = time(NULL), expires = now + 30 * 86400;
	char key[64], exp[32], last[32];
	struct tm tm;

	if (!f) {
		perror(path);
		return -1;
	}
	strftime(exp, sizeof(exp), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&expires, &tm));
	strftime(last, sizeof(last), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
	for (unsigned i = 0; i < n; i++) {
		entry_key(i, key, sizeof(key));
		fprintf(f, "%s\t%s\t1\t%s\ttrap1@traps.example\ttrap\n", key, exp, last);
	}
	if (fclose(f) != 0) {
		perror(path);
		return -1;
	}
	printf("{\"phase\": \"import_file\", \"entries\": %u, \"path\": \"%s\"}\n", n, path);
	return 0;
}

static int parse_options(int argc, char **argv, options *o)
{
	static char host[] = "127.0.0.1", prefix[] = "spamtrapd:";
	memset(o, 0, sizeof(*o));
	o->cfg.backend = STORE_BACKEND_SQLITE;
	o->cfg.redis_host = host;
	o->cfg.redis_port = 6379;
	o->cfg.redis_prefix = prefix;
	o->cfg.redis_connect_timeout_ms = 2000;
	o->cfg.redis_command_timeout_ms = 2000;
	o->entries = 1000000;
	o->lookups = 20000;
	int c;
	while ((c = getopt(argc, argv, "b:f:H:P:n:l:ex:")) != -1) {
		if (c == 'b' && (!strcmp(optarg, "sqlite") || !strcmp(optarg, "redis")))
			o->cfg.backend = optarg[0] == 's' ? STORE_BACKEND_SQLITE : STORE_BACKEND_REDIS;
		else if (c == 'f')
			o->cfg.sqlite_path = optarg;
		else if (c == 'H')
			o->cfg.redis_host = optarg;
		else if (c == 'P')
			o->cfg.redis_port = atoi(optarg);
		else if (c == 'n')
			o->entries = (unsigned)atoi(optarg);
		else if (c == 'l')
			o->lookups = (unsigned)atoi(optarg);
		else if (c == 'e')
			o->existing = true;
		else if (c == 'x')
			o->export = optarg;
		else
			return -1;
	}
	if (o->cfg.backend == STORE_BACKEND_SQLITE && !o->cfg.sqlite_path && !o->export)
		return -1;
	return o->entries && o->lookups ? 0 : -1;
}

/* Load in steps up to each checkpoint, timing the load and the lookups at each. */
static int run(store *st, const options *o, const decide_policy *pol)
{
	unsigned checkpoints[MAX_CHECKPOINTS], n = 0;
	for (unsigned c = 10000; c < o->entries && n < MAX_CHECKPOINTS - 1; c *= 10)
		checkpoints[n++] = c;
	checkpoints[n++] = o->entries;
	int64_t now = (int64_t)time(NULL);
	double load_secs = 0;
	unsigned loaded = 0;
	for (unsigned i = 0; i < n; i++) {
		uint64_t t0 = bench_now_ns();
		if (load_range(st, loaded, checkpoints[i], now) < 0)
			return -1;
		load_secs += (double)(bench_now_ns() - t0) / 1e9;
		loaded = checkpoints[i];
		printf("{\"phase\": \"load\", \"entries\": %u, \"seconds\": %.3f, \"per_s\": %.0f}\n", loaded,
		       load_secs, loaded / load_secs);
		fflush(stdout);
		if (report_lookups(st, pol, loaded, o->lookups) < 0)
			return -1;
	}
	printf("{\"phase\": \"done\", \"backend\": \"%s\", \"entries\": %u, \"load_seconds\": %.3f, "
	       "\"blocked_senders\": %u, \"hwm_kib\": %ld}\n",
	       store_backend_name(st), loaded, load_secs, blocked_senders(loaded), bench_self_hwm_kib());
	return 0;
}

int main(int argc, char **argv)
{
	options o;
	char err[1024];
	if (parse_options(argc, argv, &o) < 0)
		return usage();
	if (o.export)
		return write_import_file(o.export, o.entries) == 0 ? 0 : 1;
	store *st = store_open(&o.cfg, err, sizeof(err));
	if (!st) {
		fprintf(stderr, "store_bench: %s\n", err);
		return 1;
	}
	/* The policy the core keys transactions with: spamtrapd's defaults (SPEC blocklist). */
	trapset *traps = trapset_new("+");
	whitelist *wl = whitelist_new(false);
	decide_policy pol = {.action = TRAP_ACTION_DISCARD,
	                     .keys = DECIDE_KEY_SENDER | DECIDE_KEY_CLIENT_ADDRESS,
	                     .ttl = 86400,
	                     .ipv4_prefix = 32,
	                     .ipv6_prefix = 64,
	                     .traps = traps,
	                     .whitelist = wl};
	int rc = -1;
	if (traps && wl)
		rc = o.existing ? report_lookups(st, &pol, o.entries, o.lookups) : run(st, &o, &pol);
	trapset_free(traps);
	whitelist_free(wl);
	store_free(st);
	return rc == 0 ? 0 : 1;
}
