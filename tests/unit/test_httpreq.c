/*
 * Unit tests for metrics/httpreq: what a scraper sends is served, every
 * other request head gets its status, hostile input (control bytes, NUL,
 * obs-fold, no end of head, bare CRs) is refused within the bound, and the
 * answer does not depend on how the bytes are split into reads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "metrics/httpreq.h"
#include "unit_table.h"

struct req_case {
	const char *name;
	const char *in;
	size_t len; /* 0: strlen(in) */
	httpreq_status want;
};

static struct req_case req_cases[] = {
    {"prometheus",
     "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9\r\nUser-Agent: Prometheus/2.42.0\r\nAccept: "
     "text/plain;version=0.0.4;q=1,*/*;q=0.1\r\nAccept-Encoding: gzip\r\n\r\n",
     0, HTTPREQ_OK},
    {"curl, HTTP/1.0, bare LF", "GET /metrics HTTP/1.0\nHost: x\n\n", 0, HTTPREQ_OK},
    {"query string", "GET /metrics?x=1 HTTP/1.1\r\n\r\n", 0, HTTPREQ_OK},
    {"rates", "GET /rates HTTP/1.0\r\n\r\n", 0, HTTPREQ_RATES},
    {"rates, absolute form", "GET http://h/rates?x HTTP/1.1\r\n\r\n", 0, HTTPREQ_RATES},
    {"rates, longer path", "GET /ratesx HTTP/1.1\r\n\r\n", 0, HTTPREQ_NOT_FOUND},
    {"rates, posted", "POST /rates HTTP/1.1\r\n\r\n", 0, HTTPREQ_METHOD},
    {"absolute form", "GET http://127.0.0.1:9/metrics HTTP/1.1\r\n\r\n", 0, HTTPREQ_OK},
    {"empty lines first", "\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n", 0, HTTPREQ_OK},
    {"empty header value", "GET /metrics HTTP/1.1\r\nX:\r\n\r\n", 0, HTTPREQ_OK},
    {"other path", "GET / HTTP/1.1\r\n\r\n", 0, HTTPREQ_NOT_FOUND},
    {"longer path", "GET /metricsx HTTP/1.1\r\n\r\n", 0, HTTPREQ_NOT_FOUND},
    {"sub path", "GET /metrics/x HTTP/1.1\r\n\r\n", 0, HTTPREQ_NOT_FOUND},
    {"absolute form without path", "GET http://h HTTP/1.1\r\n\r\n", 0, HTTPREQ_NOT_FOUND},
    {"POST", "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 0, HTTPREQ_METHOD},
    {"lower case get", "get /metrics HTTP/1.1\r\n\r\n", 0, HTTPREQ_METHOD},
    {"HEAD", "HEAD /metrics HTTP/1.1\r\n\r\n", 0, HTTPREQ_METHOD},
    {"HTTP/2.0", "GET /metrics HTTP/2.0\r\n\r\n", 0, HTTPREQ_VERSION},
    {"HTTP/0.9 style", "GET /metrics\r\n\r\n", 0, HTTPREQ_BAD},
    {"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11, HTTPREQ_BAD},
    {"NUL in the line", "GET /met\0rics HTTP/1.1\r\n\r\n", 26, HTTPREQ_BAD},
    {"NUL in a header", "GET /metrics HTTP/1.1\r\nX: a\0b\r\n\r\n", 32, HTTPREQ_BAD},
    {"two spaces", "GET  /metrics HTTP/1.1\r\n\r\n", 0, HTTPREQ_BAD},
    {"trailing space", "GET /metrics HTTP/1.1 \r\n\r\n", 0, HTTPREQ_BAD},
    {"tab separator", "GET\t/metrics HTTP/1.1\r\n\r\n", 0, HTTPREQ_BAD},
    {"no target", "GET HTTP/1.1\r\n\r\n", 0, HTTPREQ_BAD},
    {"target not a path", "GET metrics HTTP/1.1\r\n\r\n", 0, HTTPREQ_BAD},
    {"bad version", "GET /metrics HTTX/1.1\r\n\r\n", 0, HTTPREQ_BAD},
    {"bare CR in the line", "GET /metrics HTTP/1.1\rX\r\n\r\n", 0, HTTPREQ_BAD},
    {"bare CR in a value", "GET /metrics HTTP/1.1\r\nX: a\rb\r\n\r\n", 0, HTTPREQ_BAD},
    {"obs-fold", "GET /metrics HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 0, HTTPREQ_BAD},
    {"space before colon", "GET /metrics HTTP/1.1\r\nX : a\r\n\r\n", 0, HTTPREQ_BAD},
    {"header without colon", "GET /metrics HTTP/1.1\r\nHost\r\n\r\n", 0, HTTPREQ_BAD},
    {"CR then not LF at the end", "GET /metrics HTTP/1.1\r\n\rX", 0, HTTPREQ_BAD},
    {"garbage after a bad line is not read", "XX\r\n\r\n\0\0\0", 9, HTTPREQ_BAD},
    {"incomplete", "GET /metrics HTTP/1.1\r\nHost: x\r\n", 0, HTTPREQ_MORE},
    {"empty", "", 0, HTTPREQ_MORE},
    {"only empty lines", "\r\n\r\n\n\n", 0, HTTPREQ_MORE},
};

static void test_req_case(void **state)
{
	const struct req_case *c = *state;
	size_t len = c->len ? c->len : strlen(c->in);
	httpreq *r = malloc(sizeof(*r));

	assert_non_null(r);
	/* At once, then a byte at a time: the same answer. */
	httpreq_init(r);
	assert_int_equal(httpreq_feed(r, c->in, len), c->want);
	httpreq_init(r);
	httpreq_status st = HTTPREQ_MORE;
	for (size_t i = 0; i < len; i++)
		st = httpreq_feed(r, c->in + i, 1);
	assert_int_equal(st, c->want);
	free(r);
}

/* A head that never ends: 431 at exactly HTTPREQ_MAX bytes, however it comes. */
static void test_too_large(void **state)
{
	static char big[HTTPREQ_MAX + 100];
	httpreq *r = malloc(sizeof(*r));
	const char *start = "GET /metrics HTTP/1.1\r\n";

	(void)state;
	assert_non_null(r);
	memset(big, 'a', sizeof(big));
	memcpy(big, start, strlen(start));
	memcpy(big + strlen(start), "X: ", 3);
	httpreq_init(r);
	assert_int_equal(httpreq_feed(r, big, HTTPREQ_MAX - 1), HTTPREQ_MORE);
	assert_int_equal(httpreq_feed(r, big, 1), HTTPREQ_TOO_LARGE);
	assert_int_equal(r->seen, HTTPREQ_MAX);
	assert_int_equal(httpreq_feed(r, "\r\n\r\n", 4), HTTPREQ_TOO_LARGE); /* and stays so */
	/* A request line of 8 KiB too. */
	memset(big, 'a', sizeof(big));
	memcpy(big, "GET /", 5);
	httpreq_init(r);
	assert_int_equal(httpreq_feed(r, big, sizeof(big)), HTTPREQ_TOO_LARGE);
	/* Empty lines forever. */
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = "\r\n"[i % 2];
	httpreq_init(r);
	assert_int_equal(httpreq_feed(r, big, sizeof(big)), HTTPREQ_TOO_LARGE);
	free(r);
}

static void test_codes(void **state)
{
	(void)state;
	assert_int_equal(httpreq_code(HTTPREQ_OK), 200);
	assert_int_equal(httpreq_code(HTTPREQ_BAD), 400);
	assert_int_equal(httpreq_code(HTTPREQ_NOT_FOUND), 404);
	assert_int_equal(httpreq_code(HTTPREQ_METHOD), 405);
	assert_int_equal(httpreq_code(HTTPREQ_TOO_LARGE), 431);
	assert_int_equal(httpreq_code(HTTPREQ_VERSION), 505);
	assert_int_equal(httpreq_code(HTTPREQ_RATES), 200);
	assert_string_equal(httpreq_reason(HTTPREQ_NOT_FOUND), "Not Found");
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_too_large),
	    cmocka_unit_test(test_codes),
	};

	RUN_TABLE("requests", req_cases, test_req_case, failed);
	failed += cmocka_run_group_tests_name("httpreq", tests, NULL, NULL);
	return failed ? 1 : 0;
}
