/*
 * Unit tests for stats: the daemon's families exist with their fixed
 * labels, a DNS plan's answers count by check and result (a lookup still
 * pending counts as a timeout), SPF results by result, names outside the
 * fixed lists count as "other", and every call is a no-op before
 * stats_init.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/checks/checks.h"
#include "stats.h"
#include "stats_scrape.h"

static void test_before_init_nothing(void **state)
{
	(void)state;
	assert_null(stats_registry());
	stats_decision(CHECK_ID_TRAPS, DECIDE_REJECT, STATS_MODE_ENFORCE);
	stats_dns_plan(NULL);
	stats_reload(true);
}

static void test_dns_plan(void **state)
{
	static dnsplan plan;
	static const char *const sites[] = {"bl.example.org", "other", "wl.example.org"};
	char err[256];

	(void)state;
	assert_int_equal(stats_init(sites, 3, err, sizeof(err)), 0);
	dnsplan_init(&plan);
	const dnsplan_status statuses[] = {DNSPLAN_FOUND, DNSPLAN_NXDOMAIN, DNSPLAN_TEMPFAIL, DNSPLAN_TIMEOUT,
	                                   DNSPLAN_PENDING};
	for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
		dnsplan_lookup *l =
		    dnsplan_add(&plan, CHECK_ID_DNSBL, (uint8_t)i, "2.0.0.127.bl.example.org");
		assert_non_null(l);
		l->status = statuses[i];
	}
	/* Another site, one a reload added, a name that only ends like a site, upper case. */
	const char *names[] = {"2.0.0.127.wl.example.org", "2.0.0.127.new.example",
	                       "2.0.0.127.xbl.example.org", "2.0.0.127.BL.Example.org"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		dnsplan_lookup *l = dnsplan_add(&plan, CHECK_ID_DNSBL, 9, names[i]);
		assert_non_null(l);
		l->status = DNSPLAN_NXDOMAIN;
	}
	plan.spf.wanted = true;
	plan.spf.done = true;
	plan.spf.result = SPF_SOFTFAIL;
	stats_dns_plan(&plan);
	plan.spf.done = false;
	stats_dns_plan(&plan);
	assert_int_equal(scraped("spamtrapd_dns_lookups_total{site=\"bl.example.org\",result=\"found\"}"), 2);
	assert_int_equal(scraped("spamtrapd_dns_lookups_total{site=\"bl.example.org\",result=\"nxdomain\"}"),
	                 4);
	assert_int_equal(scraped("spamtrapd_dns_lookups_total{site=\"bl.example.org\",result=\"nodata\"}"),
	                 0);
	assert_int_equal(scraped("spamtrapd_dns_lookups_total{site=\"bl.example.org\",result=\"tempfail\"}"),
	                 2);
	assert_int_equal(scraped("spamtrapd_dns_lookups_total{site=\"bl.example.org\",result=\"timeout\"}"),
	                 4);
	assert_int_equal(scraped("spamtrapd_dns_lookups_total{site=\"wl.example.org\",result=\"nxdomain\"}"),
	                 2);
	assert_int_equal(scraped("spamtrapd_dns_lookups_total{site=\"other\",result=\"nxdomain\"}"), 4);
	assert_int_equal(scraped("spamtrapd_spf_checks_total{result=\"softfail\"}"), 1);
	assert_int_equal(scraped("spamtrapd_spf_checks_total{result=\"timeout\"}"), 1);
	stats_free();
}

static void test_other_names(void **state)
{
	char err[256];

	(void)state;
	assert_int_equal(stats_init(NULL, 0, err, sizeof(err)), 0);
	stats_greylist("greylist passed", STATS_MODE_ENFORCE);
	stats_greylist("a reason added later", STATS_MODE_SHADOW);
	stats_blocklist_record(KEY_TYPE_SASL, "relay");
	stats_blocklist_record(KEY_TYPE_SENDER, "something new");
	stats_store_duration(STORE_BACKEND_REDIS, STATS_CALL_QUERIES, 0.0003);
	assert_int_equal(scraped("spamtrapd_greylist_results_total{result=\"passed\",mode=\"enforce\"}"), 1);
	assert_int_equal(scraped("spamtrapd_greylist_results_total{result=\"other\",mode=\"shadow\"}"), 1);
	assert_int_equal(
	    scraped("spamtrapd_blocklist_additions_total{key_type=\"sasl_username\",reason=\"relay\"}"), 1);
	assert_int_equal(scraped("spamtrapd_blocklist_additions_total{key_type=\"sender\",reason=\"other\"}"),
	                 1);
	assert_int_equal(scraped("spamtrapd_store_call_duration_seconds_bucket{backend=\"redis\",call="
	                         "\"queries\",le=\"0.00025\"}"),
	                 0);
	assert_int_equal(scraped("spamtrapd_store_call_duration_seconds_bucket{backend=\"redis\",call="
	                         "\"queries\",le=\"0.0005\"}"),
	                 1);
	assert_int_equal(scraped("spamtrapd_build_info{version=\"" SPAMTRAPD_VERSION "\"}"), 1);
	stats_free();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_before_init_nothing),
	    cmocka_unit_test(test_dns_plan),
	    cmocka_unit_test(test_other_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
