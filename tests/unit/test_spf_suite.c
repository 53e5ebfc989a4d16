/*
 * The OpenSPF RFC 7208 test suite (tests/data/spf/rfc7208-tests.yml,
 * converted to JSON at build time by tests/data/spf/yaml2json.py) run
 * through the evaluator over each scenario's zone data (spf_fake_dns.h).
 * Every case is its own named cmocka test and runs twice: with answers
 * given from inside submit() and with answers given later from a queue,
 * as an event loop would. A case passes when the result is one of those
 * the suite accepts and, where the suite gives an explanation, the
 * explanation matches ("DEFAULT": none from exp=). A summary line counts
 * the cases passed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "spf/spf.h"
#include "spf_fake_dns.h"

#ifndef SPF_SUITE_JSON
#error "SPF_SUITE_JSON: the converted suite's path"
#endif

struct suite_case {
	char *name; /* "scenario: case" */
	json_t *zone;
	json_t *test;
	bool deferred;
};

struct outcome_box {
	int calls;
	enum spf_result result;
	char explanation[1024];
	bool have_explanation;
	char reason[256];
};

static unsigned passed[2], total[2];

static void on_done(void *arg, const struct spf_outcome *out)
{
	struct outcome_box *b = arg;
	b->calls++;
	b->result = out->result;
	b->have_explanation = out->explanation != NULL;
	snprintf(b->explanation, sizeof(b->explanation), "%s", out->explanation ? out->explanation : "");
	snprintf(b->reason, sizeof(b->reason), "%s", out->reason);
}

static bool parse_host(const char *host, struct spf_request *req)
{
	if (inet_pton(AF_INET, host, req->ip) == 1) {
		req->family = AF_INET;
		return true;
	}
	req->family = AF_INET6;
	return inet_pton(AF_INET6, host, req->ip) == 1;
}

static bool result_accepted(const json_t *results, enum spf_result r)
{
	size_t i;
	json_t *v;
	json_array_foreach(results, i, v)
	{
		if (strcmp(json_string_value(v), spf_result_name(r)) == 0)
			return true;
	}
	return false;
}

/*
 * The suite's explanations are compared without regard to case: its IPv6
 * example spells the nibbles of %{ir} in upper case, as the test's host is.
 */
static bool explanation_ok(const json_t *test, const struct outcome_box *b)
{
	const char *want = json_string_value(json_object_get(test, "explanation"));
	if (!want)
		return true;
	if (strcmp(want, "DEFAULT") == 0)
		return !b->have_explanation;
	return b->have_explanation && strcasecmp(want, b->explanation) == 0;
}

static void run_case(void **state)
{
	struct suite_case *c = *state;
	struct fake_dns dns = {.zone = c->zone, .deferred = c->deferred};
	struct spf_resolver res = fake_dns_resolver(&dns);
	struct outcome_box box = {0};
	struct spf_request req = {
	    .mailfrom = json_string_value(json_object_get(c->test, "mailfrom")),
	    .helo = json_string_value(json_object_get(c->test, "helo")),
	    .now = 1700000000,
	};
	assert_true(parse_host(json_string_value(json_object_get(c->test, "host")), &req));
	spf_eval *ev = spf_new(&req, &res, on_done, &box);
	assert_non_null(ev);
	spf_start(ev);
	fake_dns_run(&dns);
	assert_int_equal(box.calls, 1);
	unsigned lookups = spf_dns_lookups(ev);
	spf_free(ev);
	fake_dns_free(&dns);
	total[c->deferred]++;
	bool ok =
	    result_accepted(json_object_get(c->test, "results"), box.result) && explanation_ok(c->test, &box);
	if (!ok) {
		char *want = json_dumps(json_object_get(c->test, "results"), JSON_COMPACT);
		print_error("%s: got %s (%s; %u lookups) explanation \"%s\"; want %s explanation \"%s\"\n",
		            c->name, spf_result_name(box.result), box.reason, lookups, box.explanation, want,
		            json_string_value(json_object_get(c->test, "explanation")) ?: "-");
		free(want);
		fail();
	}
	passed[c->deferred]++;
}

int main(void)
{
	json_error_t jerr;
	json_t *suite = json_load_file(SPF_SUITE_JSON, JSON_ALLOW_NUL, &jerr);
	if (!suite) {
		fprintf(stderr, "%s: %s (line %d)\n", SPF_SUITE_JSON, jerr.text, jerr.line);
		return 1;
	}
	size_t ncases = 0, i, j;
	json_t *scen, *test;
	json_array_foreach(suite, i, scen) ncases += json_array_size(json_object_get(scen, "tests"));
	struct suite_case *cases = calloc(2 * ncases, sizeof(*cases));
	struct CMUnitTest *tests = calloc(2 * ncases, sizeof(*tests));
	if (!cases || !tests)
		return 1;
	size_t n = 0;
	for (int deferred = 0; deferred < 2; deferred++) {
		json_array_foreach(suite, i, scen)
		{
			json_array_foreach(json_object_get(scen, "tests"), j, test)
			{
				struct suite_case *c = &cases[n];
				if (asprintf(&c->name, "%s%s: %s", deferred ? "deferred " : "",
				             json_string_value(json_object_get(scen, "description")),
				             json_string_value(json_object_get(test, "name"))) < 0)
					return 1;
				c->zone = json_object_get(scen, "zone");
				c->test = test;
				c->deferred = deferred;
				tests[n] = (struct CMUnitTest){
				    .name = c->name, .test_func = run_case, .initial_state = c};
				n++;
			}
		}
	}
	int failed = _cmocka_run_group_tests("rfc7208", tests, n, NULL, NULL);
	printf(
	    "rfc7208 suite: %u of %u cases passed with synchronous answers, %u of %u with deferred answers\n",
	    passed[0], total[0], passed[1], total[1]);
	for (size_t k = 0; k < n; k++)
		free(cases[k].name);
	free(cases);
	free(tests);
	json_decref(suite);
	return failed ? 1 : 0;
}
