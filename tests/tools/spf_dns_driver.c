/*
 * spf_dns_driver: SPF check_host() the way the daemon runs it (a dnsplan
 * answered by dnsrun on a libunbound resolver), for tests that serve the
 * zone data from a real DNS server (tests/integration/test_spf_suite_dns.py).
 *
 *   spf_dns_driver FORWARDER TIMEOUT_MS < cases
 *
 * Each input line is "client-ip TAB mailfrom TAB helo"; each output line
 * "result TAB explanation-or-DEFAULT TAB reason". One resolver for all the
 * lines (its cache included): the zone data is the same for them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dnsplan.h"
#include "dns/dns.h"
#include "dns/dnsrun.h"

static void answer(dns_resolver *r, char *line, int64_t timeout_ms)
{
	char *ip = strtok(line, "\t\n"), *mailfrom = strtok(NULL, "\t\n"), *helo = strtok(NULL, "\t\n");
	dnsplan plan;
	dnsrun *run;

	dnsplan_init(&plan);
	if (ip == NULL || !dnsplan_want_spf(&plan, ip, mailfrom && strcmp(mailfrom, "-") ? mailfrom : "",
	                                    helo && strcmp(helo, "-") ? helo : "")) {
		printf("unusable\tDEFAULT\t-\n");
		return;
	}
	run = dnsrun_start(r, &plan, "receiver.example", 0, NULL, NULL);
	if (run != NULL) {
		dnsrun_wait(run, dns_now_ms() + timeout_ms);
		dnsrun_free(run);
	}
	printf("%s\t%s\t%s\n", spf_result_name(plan.spf.result),
	       plan.spf.explanation[0] ? plan.spf.explanation : "DEFAULT", plan.spf.reason);
}

int main(int argc, char **argv)
{
	char line[4096], err[256];
	const char *fwd[1];
	dns_settings s = {.forwarders = fwd, .nforwarders = 1, .max_inflight = 100, .cache_mib = 1};
	dns_resolver *r;

	if (argc != 3) {
		fprintf(stderr, "usage: spf_dns_driver FORWARDER TIMEOUT_MS < cases\n");
		return 2;
	}
	fwd[0] = argv[1];
	if ((r = dns_new(&s, err, sizeof(err))) == NULL) {
		fprintf(stderr, "spf_dns_driver: %s\n", err);
		return 1;
	}
	while (fgets(line, sizeof(line), stdin) != NULL) {
		answer(r, line, atoi(argv[2]));
		fflush(stdout);
	}
	dns_free(r);
	return 0;
}
