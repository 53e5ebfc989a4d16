/*
 * Unit tests for policy_parse: a real Postfix request split at every byte,
 * named table cases for the rules and limits, pipelining, error handling:
 * a syntax error spoils one request (MALFORMED at its empty line, the next
 * request parses), a NUL byte or an endless request is fatal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "policy/policy_parse.h"

#define MAX_LINE 2048
#define MAX_ATTRS 100

/* What Postfix 3.7 smtpd sends at RCPT for an authenticated client (SMTPD_POLICY_README). */
static const char postfix_request[] = "request=smtpd_access_policy\n"
                                      "protocol_state=RCPT\n"
                                      "protocol_name=ESMTP\n"
                                      "helo_name=mail.example.net\n"
                                      "queue_id=4XyZ1b2C3dz9sQ\n"
                                      "sender=Alice.Sender@example.net\n"
                                      "recipient=trap+tag@example.com\n"
                                      "recipient_count=0\n"
                                      "client_address=2001:db8::25\n"
                                      "client_name=mail.example.net\n"
                                      "reverse_client_name=mail.example.net\n"
                                      "instance=1a2b.66a0f1c3.8d7e5.0\n"
                                      "sasl_method=PLAIN\n"
                                      "sasl_username=alice\n"
                                      "sasl_sender=\n"
                                      "size=12345\n"
                                      "ccert_subject=\n"
                                      "ccert_issuer=\n"
                                      "ccert_fingerprint=\n"
                                      "ccert_pubkey_fingerprint=\n"
                                      "encryption_protocol=TLSv1.3\n"
                                      "encryption_cipher=TLS_AES_256_GCM_SHA384\n"
                                      "encryption_keysize=256\n"
                                      "etrn_domain=\n"
                                      "stress=\n"
                                      "client_port=52734\n"
                                      "policy_context=\n"
                                      "server_address=192.0.2.25\n"
                                      "server_port=25\n"
                                      "\n";

struct expect_attr {
	policy_attr attr;
	const char *value; /* NULL: absent */
};

static const struct expect_attr postfix_expect[] = {
    {POLICY_ATTR_REQUEST, "smtpd_access_policy"},    {POLICY_ATTR_PROTOCOL_STATE, "RCPT"},
    {POLICY_ATTR_CLIENT_ADDRESS, "2001:db8::25"},    {POLICY_ATTR_CLIENT_NAME, "mail.example.net"},
    {POLICY_ATTR_HELO_NAME, "mail.example.net"},     {POLICY_ATTR_SENDER, "Alice.Sender@example.net"},
    {POLICY_ATTR_RECIPIENT, "trap+tag@example.com"}, {POLICY_ATTR_SASL_USERNAME, "alice"},
    {POLICY_ATTR_QUEUE_ID, "4XyZ1b2C3dz9sQ"},        {POLICY_ATTR_INSTANCE, "1a2b.66a0f1c3.8d7e5.0"},
};

static void check_attrs(const policy_request *req, const struct expect_attr *want, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const char *got = policy_request_get(req, want[i].attr);

		if (want[i].value == NULL) {
			if (got != NULL)
				fail_msg("%s: expected absent, got \"%s\"", policy_attr_name(want[i].attr),
				         got);
			continue;
		}
		if (got == NULL)
			fail_msg("%s: expected \"%s\", absent", policy_attr_name(want[i].attr),
			         want[i].value);
		if (strcmp(got, want[i].value) != 0)
			fail_msg("%s: expected \"%s\", got \"%s\"", policy_attr_name(want[i].attr),
			         want[i].value, got);
	}
}

static void check_postfix_request(const policy_request *req)
{
	check_attrs(req, postfix_expect, sizeof(postfix_expect) / sizeof(postfix_expect[0]));
	assert_int_equal(req->nattributes, 29);
	assert_int_equal(req->truncated, 0);
}

/* Feed data[0..split) then data[split..len): exactly one request, at the very end. */
static void feed_split(policy_parser *p, const char *data, size_t len, size_t split)
{
	size_t used;

	assert_int_equal(policy_parser_feed(p, data, split, &used), POLICY_PARSE_NEED_MORE);
	assert_int_equal(used, split);
	assert_int_equal(policy_parser_feed(p, data + split, len - split, &used), POLICY_PARSE_REQUEST);
	assert_int_equal(used, len - split);
}

static void test_postfix_request_every_split(void **state)
{
	size_t len = strlen(postfix_request);
	policy_parser *p = policy_parser_new(MAX_LINE, MAX_ATTRS);

	(void)state;
	for (size_t split = 0; split < len; split++) {
		feed_split(p, postfix_request, len, split);
		check_postfix_request(policy_parser_request(p));
	}
	policy_parser_free(p);
}

/* Every pair of split points: the request in three pieces. */
static void test_postfix_request_every_double_split(void **state)
{
	size_t len = strlen(postfix_request), used;
	policy_parser *p = policy_parser_new(MAX_LINE, MAX_ATTRS);

	(void)state;
	for (size_t a = 0; a < len; a++) {
		for (size_t b = a; b < len; b++) {
			assert_int_equal(policy_parser_feed(p, postfix_request, a, &used),
			                 POLICY_PARSE_NEED_MORE);
			assert_int_equal(policy_parser_feed(p, postfix_request + a, b - a, &used),
			                 POLICY_PARSE_NEED_MORE);
			assert_int_equal(policy_parser_feed(p, postfix_request + b, len - b, &used),
			                 POLICY_PARSE_REQUEST);
			assert_int_equal(used, len - b);
		}
		check_postfix_request(policy_parser_request(p));
	}
	policy_parser_free(p);
}

static void test_postfix_request_byte_by_byte(void **state)
{
	size_t len = strlen(postfix_request), used;
	policy_parser *p = policy_parser_new(MAX_LINE, MAX_ATTRS);

	(void)state;
	for (int round = 0; round < 3; round++) {
		assert_true(policy_parser_idle(p));
		for (size_t i = 0; i + 1 < len; i++) {
			assert_int_equal(policy_parser_feed(p, postfix_request + i, 1, &used),
			                 POLICY_PARSE_NEED_MORE);
			assert_false(policy_parser_idle(p));
		}
		assert_int_equal(policy_parser_feed(p, postfix_request + len - 1, 1, &used),
		                 POLICY_PARSE_REQUEST);
		check_postfix_request(policy_parser_request(p));
	}
	policy_parser_free(p);
}

/* Table cases: one input, fed whole, and what it must give. */
struct parse_case {
	const char *name;
	const char *input;
	size_t len; /* 0: strlen(input) */
	size_t max_line;
	unsigned max_attrs;
	policy_parse_status status;
	policy_parse_error err; /* checked always: NONE unless a syntax or fatal error was found */
	unsigned line;          /* when not 0: policy_parser_line() */
	unsigned nattributes;   /* checked on REQUEST */
	unsigned truncated;     /* bit mask, checked on REQUEST */
	struct expect_attr attrs[4];
	size_t nattrs;
};

/* Sets attrs[] and how many of them to check. */
#define ATTRS(...)                                                                                           \
	.attrs = {__VA_ARGS__},                                                                              \
	.nattrs = sizeof((struct expect_attr[]){__VA_ARGS__}) / sizeof(struct expect_attr)

#define BIT(a) (1u << (a))

static char long_sender_line[700];
static char long_line_ok[300];
static char long_line_over[300];
static char many_attrs_ok[2048];
static char many_attrs_over[2048];
static char long_unknown_name[200];

static void build_inputs(void)
{
	char *s;

	/* sender=<600 x a>\n\n: longer than the sender cap (511) but within max_line. */
	s = long_sender_line + sprintf(long_sender_line, "sender=");
	memset(s, 'a', 600);
	strcpy(s + 600, "\n\n");
	/* A line of exactly 200 bytes, and one of 201 (max_line 200 in the table). */
	s = long_line_ok + sprintf(long_line_ok, "x=");
	memset(s, 'v', 198);
	strcpy(s + 198, "\n\n");
	s = long_line_over + sprintf(long_line_over, "x=");
	memset(s, 'v', 199);
	strcpy(s + 199, "\n\n");
	s = many_attrs_ok;
	for (int i = 0; i < 10; i++)
		s += sprintf(s, "a%d=%d\n", i, i);
	strcpy(s, "\n");
	s = many_attrs_over;
	for (int i = 0; i < 11; i++)
		s += sprintf(s, "a%d=%d\n", i, i);
	strcpy(s, "\n");
	s = long_unknown_name;
	memset(s, 'n', 100);
	strcpy(s + 100, "=value\nsender=a@b\n\n");
}

static const struct parse_case cases[] = {
    {.name = "minimal request",
     .input = "request=smtpd_access_policy\n\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 1,
     ATTRS({POLICY_ATTR_REQUEST, "smtpd_access_policy"}, {POLICY_ATTR_SENDER, NULL})},
    {.name = "empty request",
     .input = "\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 0,
     ATTRS({POLICY_ATTR_REQUEST, NULL})},
    {.name = "incomplete request needs more",
     .input = "request=smtpd_access_policy\nsender=a@b\n",
     .status = POLICY_PARSE_NEED_MORE},
    {.name = "incomplete line needs more", .input = "request=smtpd_acc", .status = POLICY_PARSE_NEED_MORE},
    {.name = "unknown attributes ignored",
     .input = "foo=bar\nrecipient=t@x\nccert_subject=CN=x\n\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 3,
     ATTRS({POLICY_ATTR_RECIPIENT, "t@x"}, {POLICY_ATTR_SENDER, NULL})},
    {.name = "later duplicate replaces earlier",
     .input = "sender=first@x\nrecipient=r@x\nsender=second@x\n\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 3,
     ATTRS({POLICY_ATTR_SENDER, "second@x"}, {POLICY_ATTR_RECIPIENT, "r@x"})},
    {.name = "shorter duplicate leaves no tail",
     .input = "sender=longer-address@x\nsender=s@x\n\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 2,
     ATTRS({POLICY_ATTR_SENDER, "s@x"})},
    {.name = "value may contain '='",
     .input = "sender=a=b@x\ninstance==\n\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 2,
     ATTRS({POLICY_ATTR_SENDER, "a=b@x"}, {POLICY_ATTR_INSTANCE, "="})},
    {.name = "empty value is present",
     .input = "sender=\n\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 1,
     ATTRS({POLICY_ATTR_SENDER, ""})},
    {.name = "names are case-sensitive",
     .input = "Sender=a@x\n\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 1,
     ATTRS({POLICY_ATTR_SENDER, NULL})},
    {.name = "prefix and extension of a known name are unknown",
     .input = "send=a@x\nsenderx=b@x\nsender_domain=c\n\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 3,
     ATTRS({POLICY_ATTR_SENDER, NULL})},
    {.name = "CRLF line ends",
     .input = "sender=a@x\r\nrecipient=t@x\r\n\r\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 2,
     ATTRS({POLICY_ATTR_SENDER, "a@x"}, {POLICY_ATTR_RECIPIENT, "t@x"})},
    {.name = "lone CR in a value is kept",
     .input = "helo_name=a\rb\n\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 1,
     ATTRS({POLICY_ATTR_HELO_NAME, "a\rb"})},
    {.name = "spaces are part of the value",
     .input = "helo_name= spaced name \n\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 1,
     ATTRS({POLICY_ATTR_HELO_NAME, " spaced name "})},
    {.name = "overlong unknown name is skipped",
     .input = long_unknown_name,
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 2,
     ATTRS({POLICY_ATTR_SENDER, "a@b"})},
    {.name = "value longer than its cap is truncated",
     .input = long_sender_line,
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 1,
     .truncated = BIT(POLICY_ATTR_SENDER)},
    {.name = "line of exactly max_line",
     .input = long_line_ok,
     .max_line = 200,
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 1},
    {.name = "line one byte over max_line",
     .input = long_line_over,
     .max_line = 200,
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_LINE_TOO_LONG,
     .line = 1},
    {.name = "name alone over max_line: skipping, needs the end of the request",
     .input = "abcdefghijklmnopqrstuvwxyz",
     .max_line = 20,
     .status = POLICY_PARSE_NEED_MORE,
     .err = POLICY_ERR_LINE_TOO_LONG},
    {.name = "overlong line, then lines up to the empty line are skipped",
     .input = "request=smtpd_access_policy\nabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz=1\nsender="
              "a\n=x\n\n",
     .max_line = 40,
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_LINE_TOO_LONG,
     .line = 2},
    {.name = "exactly max_attributes",
     .input = many_attrs_ok,
     .max_attrs = 10,
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 10},
    {.name = "one attribute over max_attributes",
     .input = many_attrs_over,
     .max_attrs = 10,
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_TOO_MANY_ATTRIBUTES,
     .line = 11},
    {.name = "line without '='",
     .input = "request=smtpd_access_policy\nhello\n\n",
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_MISSING_EQUALS,
     .line = 2},
    {.name = "line without '=', then more lines",
     .input = "hello\nsender=a\nworld\n\n",
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_MISSING_EQUALS,
     .line = 1},
    {.name = "CRLF line without '='",
     .input = "hello\r\n\r\n",
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_MISSING_EQUALS},
    {.name = "empty name",
     .input = "=value\n\n",
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_EMPTY_NAME,
     .line = 1},
    {.name = "tab in name",
     .input = "sen\tder=a\n\n",
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_BAD_NAME},
    {.name = "space line is not an empty line",
     .input = "sender=a\n \n",
     .status = POLICY_PARSE_NEED_MORE,
     .err = POLICY_ERR_MISSING_EQUALS},
    {.name = "space line, then the empty line",
     .input = "sender=a\n \n\n",
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_MISSING_EQUALS,
     .line = 2},
    {.name = "lone CR line while skipping is not an empty line",
     .input = "bad\n\rx\n",
     .status = POLICY_PARSE_NEED_MORE,
     .err = POLICY_ERR_MISSING_EQUALS},
    {.name = "NUL while skipping is fatal",
     .input = "bad\nx\0y\n\n",
     .len = 10,
     .status = POLICY_PARSE_ERROR,
     .err = POLICY_ERR_NUL_BYTE,
     .line = 2},
    {.name = "NUL in value",
     .input = "sender=a\0b\n\n",
     .len = 12,
     .status = POLICY_PARSE_ERROR,
     .err = POLICY_ERR_NUL_BYTE},
    {.name = "NUL in name",
     .input = "sen\0der=a\n\n",
     .len = 11,
     .status = POLICY_PARSE_ERROR,
     .err = POLICY_ERR_NUL_BYTE},
    {.name = "NUL instead of the empty line",
     .input = "sender=a\n\0",
     .len = 10,
     .status = POLICY_PARSE_ERROR,
     .err = POLICY_ERR_NUL_BYTE},
    {.name = "TLS client hello: a control character, then NUL",
     .input = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
     .len = 11,
     .status = POLICY_PARSE_ERROR,
     .err = POLICY_ERR_NUL_BYTE},
    {.name = "control character in a name",
     .input = "\x16\x03\x01\n\n",
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_BAD_NAME},
    {.name = "DEL in a long name",
     .input = "abcdefghij\x7fk=v\n\n",
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_BAD_NAME,
     .line = 1},
    {.name = "tab as the last byte of a nine-byte name",
     .input = "sender=a\nabcdefgh\t=v\n\n",
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_BAD_NAME,
     .line = 2},
    {.name = "bytes above 0x7f in a name are no control characters",
     .input = "\x80\x9f\xa0\xff\xc3\xa4\x80\x81\x9f\xfe=x\nsender=a@b\n\n",
     .status = POLICY_PARSE_REQUEST,
     .nattributes = 2,
     ATTRS({POLICY_ATTR_SENDER, "a@b"})},
    {.name = "NUL in the value of a whole line",
     .input = "sender=a@b\nrecipient=t\0x\n\n",
     .len = 26,
     .status = POLICY_PARSE_ERROR,
     .err = POLICY_ERR_NUL_BYTE,
     .line = 2},
    {.name = "HTTP request",
     .input = "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
     .status = POLICY_PARSE_MALFORMED,
     .err = POLICY_ERR_MISSING_EQUALS,
     .line = 1},
};

static void run_case(const struct parse_case *c)
{
	size_t len = c->len ? c->len : strlen(c->input), used;
	policy_parser *p =
	    policy_parser_new(c->max_line ? c->max_line : MAX_LINE, c->max_attrs ? c->max_attrs : MAX_ATTRS);
	policy_parse_status st;

	assert_non_null(p);
	st = policy_parser_feed(p, c->input, len, &used);
	if (st != c->status)
		fail_msg("%s: status %d, expected %d (error: %s)", c->name, st, c->status,
		         policy_parse_error_name(policy_parser_error(p)));
	if (policy_parser_error(p) != c->err)
		fail_msg("%s: error \"%s\", expected \"%s\"", c->name,
		         policy_parse_error_name(policy_parser_error(p)), policy_parse_error_name(c->err));
	if (c->line != 0 && policy_parser_line(p) != c->line)
		fail_msg("%s: line %u, expected %u", c->name, policy_parser_line(p), c->line);
	if (st == POLICY_PARSE_MALFORMED)
		assert_int_equal(used, len);
	if (st == POLICY_PARSE_REQUEST) {
		const policy_request *req = policy_parser_request(p);

		assert_int_equal(used, len);
		if (req->nattributes != c->nattributes)
			fail_msg("%s: %u attributes, expected %u", c->name, req->nattributes, c->nattributes);
		if (req->truncated != c->truncated)
			fail_msg("%s: truncated mask %#x, expected %#x", c->name, req->truncated,
			         c->truncated);
		check_attrs(req, c->attrs, c->nattrs);
	}
	if (st == POLICY_PARSE_NEED_MORE)
		assert_int_equal(used, len);
	policy_parser_free(p);
}

static void test_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		print_message("case: %s\n", cases[i].name);
		run_case(&cases[i]);
	}
}

static void test_truncated_value_is_capped(void **state)
{
	policy_parser *p = policy_parser_new(MAX_LINE, MAX_ATTRS);
	size_t used;
	const char *v;

	(void)state;
	assert_int_equal(policy_parser_feed(p, long_sender_line, strlen(long_sender_line), &used),
	                 POLICY_PARSE_REQUEST);
	v = policy_request_get(policy_parser_request(p), POLICY_ATTR_SENDER);
	assert_non_null(v);
	assert_int_equal(strlen(v), policy_attr_cap(POLICY_ATTR_SENDER));
	assert_true(policy_request_truncated(policy_parser_request(p), POLICY_ATTR_SENDER));
	/* A later, shorter duplicate clears the flag. */
	assert_int_equal(policy_parser_feed(p, "sender=x\nsender=y@z\n\n", 21, &used), POLICY_PARSE_REQUEST);
	assert_false(policy_request_truncated(policy_parser_request(p), POLICY_ATTR_SENDER));
	assert_string_equal(policy_request_get(policy_parser_request(p), POLICY_ATTR_SENDER), "y@z");
	policy_parser_free(p);
}

/* Two requests in one read (pipelining): the second must not inherit the first's values. */
static void test_two_requests_in_one_buffer(void **state)
{
	static const char two[] =
	    "request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@x\nrecipient=t@x\n\n"
	    "request=smtpd_access_policy\nprotocol_state=MAIL\nsender=b@y\n\n";
	static const struct expect_attr first[] = {{POLICY_ATTR_PROTOCOL_STATE, "RCPT"},
	                                           {POLICY_ATTR_SENDER, "a@x"},
	                                           {POLICY_ATTR_RECIPIENT, "t@x"}};
	static const struct expect_attr second[] = {
	    {POLICY_ATTR_PROTOCOL_STATE, "MAIL"}, {POLICY_ATTR_SENDER, "b@y"}, {POLICY_ATTR_RECIPIENT, NULL}};
	policy_parser *p = policy_parser_new(MAX_LINE, MAX_ATTRS);
	size_t len = strlen(two), used, off;

	(void)state;
	assert_int_equal(policy_parser_feed(p, two, len, &used), POLICY_PARSE_REQUEST);
	assert_true(used < len);
	check_attrs(policy_parser_request(p), first, 3);
	assert_int_equal(policy_parser_request(p)->nattributes, 4);
	off = used;
	assert_int_equal(policy_parser_feed(p, two + off, len - off, &used), POLICY_PARSE_REQUEST);
	assert_int_equal(off + used, len);
	check_attrs(policy_parser_request(p), second, 3);
	assert_int_equal(policy_parser_request(p)->nattributes, 3);
	assert_true(policy_parser_idle(p));
	policy_parser_free(p);
}

/* The sample request three times back to back, split at every point. */
static void test_pipelined_every_split(void **state)
{
	char buf[sizeof(postfix_request) * 3];
	size_t one = strlen(postfix_request), len = 3 * one;
	policy_parser *p = policy_parser_new(MAX_LINE, MAX_ATTRS);

	(void)state;
	for (int i = 0; i < 3; i++)
		memcpy(buf + i * one, postfix_request, one);
	for (size_t split = 0; split <= len; split++) {
		size_t pos = 0, end = split, used;
		int requests = 0;

		while (pos < len) {
			policy_parse_status st = policy_parser_feed(p, buf + pos, end - pos, &used);

			assert_int_not_equal(st, POLICY_PARSE_ERROR);
			pos += used;
			if (st == POLICY_PARSE_REQUEST) {
				check_postfix_request(policy_parser_request(p));
				requests++;
			} else {
				end = len;
			}
		}
		assert_int_equal(requests, 3);
	}
	policy_parser_free(p);
}

static void test_fatal_error_is_sticky_until_reset(void **state)
{
	policy_parser *p = policy_parser_new(MAX_LINE, MAX_ATTRS);
	size_t used;

	(void)state;
	assert_int_equal(policy_parser_feed(p, "sender=a\nbad\0line\n", 18, &used), POLICY_PARSE_ERROR);
	assert_int_equal(used, 12); /* the NUL */
	assert_int_equal(policy_parser_error(p), POLICY_ERR_NUL_BYTE);
	assert_int_equal(policy_parser_line(p), 2);
	assert_int_equal(policy_parser_feed(p, "sender=a\n\n", 10, &used), POLICY_PARSE_ERROR);
	assert_int_equal(used, 0);
	assert_false(policy_parser_idle(p));
	policy_parser_reset(p);
	assert_int_equal(policy_parser_error(p), POLICY_ERR_NONE);
	assert_true(policy_parser_idle(p));
	assert_int_equal(policy_parser_feed(p, "sender=a\n\n", 10, &used), POLICY_PARSE_REQUEST);
	assert_string_equal(policy_request_get(policy_parser_request(p), POLICY_ATTR_SENDER), "a");
	policy_parser_free(p);
}

/* New limits (a reload) apply to the next request. */
static void test_set_limits(void **state)
{
	policy_parser *p = policy_parser_new(MAX_LINE, MAX_ATTRS);
	size_t used;

	(void)state;
	assert_int_equal(policy_parser_feed(p, "a=1\nb=2\nc=3\n\n", 13, &used), POLICY_PARSE_REQUEST);
	policy_parser_set_limits(p, MAX_LINE, 2);
	assert_int_equal(policy_parser_feed(p, "a=1\nb=2\nc=3\n\n", 13, &used), POLICY_PARSE_MALFORMED);
	assert_int_equal(policy_parser_error(p), POLICY_ERR_TOO_MANY_ATTRIBUTES);
	policy_parser_set_limits(p, 4, 2);
	assert_int_equal(policy_parser_feed(p, "a=12\n\n", 6, &used), POLICY_PARSE_REQUEST);
	assert_int_equal(policy_parser_error(p), POLICY_ERR_NONE);
	assert_int_equal(policy_parser_feed(p, "a=123\n\n", 7, &used), POLICY_PARSE_MALFORMED);
	assert_int_equal(policy_parser_error(p), POLICY_ERR_LINE_TOO_LONG);
	policy_parser_free(p);
}

/*
 * Postfix asks again on a new connection when a connection closes, so a
 * request it cannot parse must get an answer: MALFORMED at its empty line,
 * then the next request as if nothing happened.
 */
static void test_malformed_then_next_request(void **state)
{
	static const char two[] = "request=smtpd_access_policy\nqueue_id=Q1\nno equals here\nsender=bad@x\n\n"
	                          "request=smtpd_access_policy\nsender=good@x\n\n";
	policy_parser *p = policy_parser_new(MAX_LINE, MAX_ATTRS);
	size_t len = strlen(two), used, first = (size_t)(strstr(two, "\n\n") - two) + 2;
	const policy_request *req;

	(void)state;
	assert_int_equal(policy_parser_feed(p, two, len, &used), POLICY_PARSE_MALFORMED);
	assert_int_equal(used, first);
	assert_int_equal(policy_parser_error(p), POLICY_ERR_MISSING_EQUALS);
	assert_int_equal(policy_parser_line(p), 3);
	assert_true(policy_parser_idle(p));
	/* what came before the error is kept for the log line; nothing after it is stored */
	req = policy_parser_request(p);
	assert_string_equal(policy_request_get(req, POLICY_ATTR_QUEUE_ID), "Q1");
	assert_null(policy_request_get(req, POLICY_ATTR_SENDER));
	assert_int_equal(policy_parser_feed(p, two + used, len - used, &used), POLICY_PARSE_REQUEST);
	assert_int_equal(first + used, len);
	assert_int_equal(policy_parser_error(p), POLICY_ERR_NONE);
	req = policy_parser_request(p);
	assert_string_equal(policy_request_get(req, POLICY_ATTR_SENDER), "good@x");
	assert_null(policy_request_get(req, POLICY_ATTR_QUEUE_ID));
	assert_int_equal(req->nattributes, 2);
	policy_parser_free(p);
}

/* A value the error cut off is dropped, also when it replaced an earlier one. */
static void test_malformed_drops_the_cut_value(void **state)
{
	char in[400];
	policy_parser *p = policy_parser_new(200, MAX_ATTRS);
	size_t used;
	int n = snprintf(in, sizeof(in), "sender=first@x\nqueue_id=Q2\nsender=%0300d\n\n", 7);
	const policy_request *req;

	(void)state;
	assert_int_equal(policy_parser_feed(p, in, (size_t)n, &used), POLICY_PARSE_MALFORMED);
	assert_int_equal(policy_parser_error(p), POLICY_ERR_LINE_TOO_LONG);
	req = policy_parser_request(p);
	assert_null(policy_request_get(req, POLICY_ATTR_SENDER));
	assert_string_equal(policy_request_get(req, POLICY_ATTR_QUEUE_ID), "Q2");
	policy_parser_free(p);
}

/* A malformed request between two good ones, split at every point: the same three results. */
static void test_malformed_pipelined_every_split(void **state)
{
	static const char three[] = "request=smtpd_access_policy\nsender=a@x\n\n"
	                            "request=smtpd_access_policy\r\n=empty name\r\nsender=b@x\r\n\r\n"
	                            "request=smtpd_access_policy\nsender=c@x\n\n";
	static const char *const senders[] = {"a@x", NULL, "c@x"};
	policy_parser *p = policy_parser_new(MAX_LINE, MAX_ATTRS);
	size_t len = strlen(three);

	(void)state;
	for (size_t split = 0; split <= len; split++) {
		size_t pos = 0, end = split, used;
		int n = 0;

		while (pos < len) {
			policy_parse_status st = policy_parser_feed(p, three + pos, end - pos, &used);

			pos += used;
			if (st == POLICY_PARSE_NEED_MORE) {
				end = len;
				continue;
			}
			assert_true(n < 3);
			assert_int_equal(st, senders[n] ? POLICY_PARSE_REQUEST : POLICY_PARSE_MALFORMED);
			if (senders[n])
				assert_string_equal(
				    policy_request_get(policy_parser_request(p), POLICY_ATTR_SENDER),
				    senders[n]);
			else
				assert_int_equal(policy_parser_error(p), POLICY_ERR_EMPTY_NAME);
			n++;
		}
		assert_int_equal(n, 3);
	}
	policy_parser_free(p);
}

/* Feed n copies of unit; the status of the last feed, and how many bytes in total were used. */
static policy_parse_status feed_repeated(policy_parser *p, const char *unit, size_t n, size_t *total)
{
	size_t len = strlen(unit), used;
	policy_parse_status st = POLICY_PARSE_NEED_MORE;

	*total = 0;
	for (size_t i = 0; i < n && st == POLICY_PARSE_NEED_MORE; i++) {
		st = policy_parser_feed(p, unit, len, &used);
		*total += used;
	}
	return st;
}

/* After a syntax error, POLICY_SKIP_MAX bytes without the empty line are the most it waits for. */
static void test_endless_malformed_request_is_fatal(void **state)
{
	static const char *const units[] = {"xxxxxxxxxxxxxxx\n", "xxxxxxxxxxxxxxxx"}; /* 16 bytes each */
	policy_parser *p = policy_parser_new(MAX_LINE, MAX_ATTRS);
	size_t total, used;

	(void)state;
	for (size_t u = 0; u < 2; u++) {
		policy_parser_reset(p);
		assert_int_equal(policy_parser_feed(p, "bad\n", 4, &used), POLICY_PARSE_NEED_MORE);
		assert_int_equal(feed_repeated(p, units[u], POLICY_SKIP_MAX / 16, &total),
		                 POLICY_PARSE_NEED_MORE);
		assert_int_equal(total, POLICY_SKIP_MAX);
		assert_int_equal(policy_parser_error(p), POLICY_ERR_MISSING_EQUALS);
		assert_int_equal(policy_parser_feed(p, "x\n\n", 3, &used), POLICY_PARSE_ERROR);
		assert_int_equal(used, 0);
		assert_int_equal(policy_parser_error(p), POLICY_ERR_ENDLESS);
	}
	/* exactly POLICY_SKIP_MAX skipped bytes, the last being the empty line, still end the request */
	policy_parser_reset(p);
	assert_int_equal(policy_parser_feed(p, "bad\n", 4, &used), POLICY_PARSE_NEED_MORE);
	assert_int_equal(feed_repeated(p, units[0], POLICY_SKIP_MAX / 16 - 1, &total),
	                 POLICY_PARSE_NEED_MORE);
	assert_int_equal(feed_repeated(p, "xxxxxxxxxxxxxx\n\n", 1, &total), POLICY_PARSE_MALFORMED);
	assert_int_equal(total, 16);
	policy_parser_free(p);
}

/* A CR at the end of one read and its LF at the start of the next. */
static void test_crlf_split_across_reads(void **state)
{
	policy_parser *p = policy_parser_new(MAX_LINE, MAX_ATTRS);
	size_t used;

	(void)state;
	assert_int_equal(policy_parser_feed(p, "sender=a@x\r", 11, &used), POLICY_PARSE_NEED_MORE);
	assert_int_equal(policy_parser_feed(p, "\n\r", 2, &used), POLICY_PARSE_NEED_MORE);
	assert_false(policy_parser_idle(p));
	assert_int_equal(policy_parser_feed(p, "\n", 1, &used), POLICY_PARSE_REQUEST);
	assert_string_equal(policy_request_get(policy_parser_request(p), POLICY_ATTR_SENDER), "a@x");
	policy_parser_free(p);
}

static void test_names_and_caps(void **state)
{
	(void)state;
	assert_string_equal(policy_attr_name(POLICY_ATTR_SASL_USERNAME), "sasl_username");
	assert_string_equal(policy_attr_name(POLICY_ATTR_COUNT), "?");
	assert_int_equal(policy_attr_cap(POLICY_ATTR_SENDER), 511);
	assert_int_equal(policy_attr_cap(POLICY_ATTR_COUNT), 0);
	for (int e = POLICY_ERR_NONE; e <= POLICY_ERR_ENDLESS; e++)
		assert_string_not_equal(policy_parse_error_name((policy_parse_error)e), "unknown error");
	policy_parser_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_postfix_request_every_split),
	    cmocka_unit_test(test_postfix_request_every_double_split),
	    cmocka_unit_test(test_postfix_request_byte_by_byte),
	    cmocka_unit_test(test_table),
	    cmocka_unit_test(test_truncated_value_is_capped),
	    cmocka_unit_test(test_two_requests_in_one_buffer),
	    cmocka_unit_test(test_pipelined_every_split),
	    cmocka_unit_test(test_fatal_error_is_sticky_until_reset),
	    cmocka_unit_test(test_set_limits),
	    cmocka_unit_test(test_malformed_then_next_request),
	    cmocka_unit_test(test_malformed_drops_the_cut_value),
	    cmocka_unit_test(test_malformed_pipelined_every_split),
	    cmocka_unit_test(test_endless_malformed_request_is_fatal),
	    cmocka_unit_test(test_crlf_split_across_reads),
	    cmocka_unit_test(test_names_and_caps),
	};

	build_inputs();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
