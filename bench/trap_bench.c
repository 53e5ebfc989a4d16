/*
 * trap_bench: a site with many traps. Writes a trap file of N addresses
 * (default 100,000, named as in bench_util.h) and a config that uses it
 * into DIR, times config_load (which reads the file and compiles the trap
 * set, as the daemon does at start and reload), then times the decision
 * core per request with that config: decide_prepare, then the checks of
 * MAIL FROM and RCPT TO through the pipeline (core/pipeline.h) with every
 * lookup answered "not listed", on trap and ordinary recipients, no store
 * involved.
 *
 * Usage: trap_bench -d DIR [-n TRAPS] [-l LOOKUPS]
 * Prints one JSON object a line; exit 0 on success.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_util.h"
#include "config.h"

static int write_files(const char *dir, unsigned ntraps, char *cfgpath, size_t cfglen)
{
	char trappath[1024];
	snprintf(trappath, sizeof(trappath), "%s/traps.txt", dir);
	snprintf(cfgpath, cfglen, "%s/trap_bench.json", dir);
	FILE *t = fopen(trappath, "w");
	FILE *c = fopen(cfgpath, "w");
	if (!t || !c) {
		perror("trap_bench: cannot write into the directory");
		if (t)
			fclose(t);
		if (c)
			fclose(c);
		return -1;
	}
	fprintf(t, "# %u generated trap addresses\n", ntraps);
	for (unsigned i = 0; i < ntraps; i++) {
		fprintf(t, BENCH_TRAP_FMT, i);
		fputc('\n', t);
	}
	fprintf(c,
	        "{\"traps\": {\"files\": [\"%s\"]}, \"store\": {\"sqlite\": {\"path\": \"%s/unused.db\"}},"
	        " \"log\": {\"target\": \"stderr\"}}\n",
	        trappath, dir);
	fclose(t);
	return fclose(c) == 0 ? 0 : -1;
}

/* One stage through the pipeline with every lookup answered "not listed". */
static check_verdict run_stage(const config *cfg, check_stage stage, const decide_facts *f,
                               const decide_txn *txn, check_msg *msg)
{
	static _Thread_local pipeline_run runs;
	pipeline_run *run = &runs;

	pipeline_begin(run, stage, CHECKS_EVERY, f, txn, msg, 0);
	pipeline_needs(&cfg->pipeline, run);
	for (size_t i = 0; i < run->nq; i++)
		run->q[i].status = QUERY_NOTFOUND;
	for (size_t from; pipeline_decide(&cfg->pipeline, run, &from);)
		for (size_t i = from; i < run->nq; i++)
			run->q[i].status =
			    QUERY_ERROR; /* a late check's store step: not this bench's business */
	*msg = run->msg;
	return run->final;
}

/* One policy request's worth of core work; returns whether the recipient was a trap. */
static bool core_request(const config *cfg, bench_rng *rng, unsigned ntraps, bool trap, decide_txn *txn)
{
	char client[64], sender[96], rcpt[96];
	bench_client_ipv4(bench_rng_below(rng, 50000), client, sizeof(client));
	snprintf(sender, sizeof(sender), BENCH_SENDER_FMT, bench_rng_below(rng, 100000));
	snprintf(rcpt, sizeof(rcpt), trap ? "<" BENCH_TRAP_FMT ">" : "<" BENCH_RCPT_FMT ">",
	         bench_rng_below(rng, trap ? ntraps : 1000000));
	decide_facts f = {.front = DECIDE_FRONT_POLICY,
	                  .client_address = client,
	                  .helo = "mx1.senders.example",
	                  .sender = sender,
	                  .recipient = rcpt};
	check_msg msg = {0};

	decide_prepare(&cfg->decide, &f, txn);
	check_verdict s = run_stage(cfg, CHECK_STAGE_MAIL, &f, txn, &msg);
	check_verdict r = run_stage(cfg, CHECK_STAGE_RCPT, &f, txn, &msg);
	return s.action == DECIDE_CONTINUE && r.reason && strcmp(r.reason, "trap") == 0;
}

static int time_core(const config *cfg, unsigned ntraps, unsigned lookups, bool trap)
{
	bench_rng rng;
	bench_rng_seed(&rng, trap ? 3 : 4);
	decide_txn *txn = malloc(sizeof(*txn));
	if (!txn)
		return -1;
	unsigned wrong = 0;
	uint64_t t0 = bench_now_ns();
	for (unsigned i = 0; i < lookups; i++)
		wrong += core_request(cfg, &rng, ntraps, trap, txn) != trap;
	double ns = (double)(bench_now_ns() - t0) / lookups;
	free(txn);
	printf("{\"phase\": \"core\", \"recipients\": \"%s\", \"requests\": %u, \"ns_per_request\": %.0f, "
	       "\"wrong\": %u}\n",
	       trap ? "trap" : "ordinary", lookups, ns, wrong);
	return wrong ? -1 : 0;
}

int main(int argc, char **argv)
{
	const char *dir = NULL;
	unsigned ntraps = 100000, lookups = 200000;
	int c;
	while ((c = getopt(argc, argv, "d:n:l:")) != -1) {
		if (c == 'd')
			dir = optarg;
		else if (c == 'n')
			ntraps = (unsigned)atoi(optarg);
		else if (c == 'l')
			lookups = (unsigned)atoi(optarg);
		else
			dir = NULL, optind = argc;
	}
	char cfgpath[1024], err[4096];
	if (!dir || !ntraps || !lookups) {
		fprintf(stderr, "usage: trap_bench -d DIR [-n TRAPS] [-l LOOKUPS]\n");
		return 2;
	}
	if (write_files(dir, ntraps, cfgpath, sizeof(cfgpath)) < 0)
		return 1;
	uint64_t t0 = bench_now_ns();
	config *cfg = config_load(cfgpath, NULL, 0, err, sizeof(err));
	double secs = (double)(bench_now_ns() - t0) / 1e9;
	if (!cfg) {
		fprintf(stderr, "trap_bench: %s\n", err);
		return 1;
	}
	size_t count = trapset_count(cfg->decide.traps);
	printf("{\"phase\": \"config_load\", \"traps\": %zu, \"seconds\": %.3f, \"hwm_kib\": %ld}\n", count,
	       secs, bench_self_hwm_kib());
	int rc = count == ntraps ? 0 : -1;
	if (rc == 0)
		rc = time_core(cfg, ntraps, lookups, true);
	if (rc == 0)
		rc = time_core(cfg, ntraps, lookups, false);
	config_unref(cfg);
	return rc == 0 ? 0 : 1;
}
