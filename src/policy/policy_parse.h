/*
 * policy_parse: an incremental, bounded parser for Postfix policy delegation
 * requests (SMTPD_POLICY_README, "Policy protocol description"): lines of
 * name=value, ended by an empty line.
 *
 * Bytes go in as they arrive, split anywhere; each call reports need-more,
 * one complete request, one complete malformed request, or a fatal error.
 * The parser is pure (no I/O, no clock,
 * no logging) and holds one fixed-size state object per connection: a line
 * is never buffered whole, values are streamed into capped fields, so
 * memory does not grow with policy.max_line. Only the attributes spamtrapd
 * uses are stored; the others are counted and skipped.
 *
 * Rules: attributes in any order; unknown names ignored; a later duplicate
 * replaces the earlier value; the value is everything after the first '='
 * (it may contain '='); a CR right before LF is dropped (hand tests with
 * telnet send CRLF).
 *
 * Syntax errors (a line longer than max_line bytes, more than
 * max_attributes attributes, a line without '=', an empty name, a control
 * character in a name) spoil one request, not the connection: the parser
 * remembers the first one, skips (without storing) to the empty line that
 * ends the request and reports it as MALFORMED, ready for the next one.
 * SPEC "Replies" answers a malformed request with DUNNO: Postfix would
 * send the same request again on a new connection and defer the mail.
 *
 * Fatal errors: a NUL byte anywhere (no text protocol has one: the peer
 * is not Postfix), or more than POLICY_SKIP_MAX bytes skipped after a
 * syntax error without the request ending (a peer that never ends one).
 * The parser then stays in the error until policy_parser_reset(); the
 * caller logs and disconnects.
 */
#ifndef SPAMTRAPD_POLICY_PARSE_H
#define SPAMTRAPD_POLICY_PARSE_H

#include <stdbool.h>
#include <stddef.h>

/* The attributes spamtrapd reads; all others are skipped. */
typedef enum {
	POLICY_ATTR_REQUEST,
	POLICY_ATTR_PROTOCOL_STATE,
	POLICY_ATTR_CLIENT_ADDRESS,
	POLICY_ATTR_CLIENT_NAME,
	POLICY_ATTR_HELO_NAME,
	POLICY_ATTR_SENDER,
	POLICY_ATTR_RECIPIENT,
	POLICY_ATTR_SASL_USERNAME,
	POLICY_ATTR_QUEUE_ID,
	POLICY_ATTR_INSTANCE,
	POLICY_ATTR_COUNT
} policy_attr;

/* Storage of every stored value, with its NUL (see the caps in policy_parse.c). */
#define POLICY_REQUEST_BUF 2048

/*
 * One complete request. Read it with the accessors below; a value longer
 * than its cap is cut and flagged as truncated.
 */
typedef struct policy_request {
	unsigned nattributes; /* attribute lines, known or not */
	unsigned present;     /* bit (1u << attr) per stored attribute seen */
	unsigned truncated;   /* bit per stored attribute cut at its cap */
	char buf[POLICY_REQUEST_BUF];
} policy_request;

/* The value of attr, or NULL when the request did not have it. */
const char *policy_request_get(const policy_request *req, policy_attr attr);
bool policy_request_truncated(const policy_request *req, policy_attr attr);
const char *policy_attr_name(policy_attr attr);
/* The most bytes (without NUL) stored for attr. */
size_t policy_attr_cap(policy_attr attr);

/* Bytes skipped after a syntax error before the request is given up as endless. */
#define POLICY_SKIP_MAX ((size_t)1 << 20)

typedef enum {
	POLICY_PARSE_NEED_MORE, /* every byte consumed, no request complete yet */
	POLICY_PARSE_REQUEST,   /* a request is complete: policy_parser_request() */
	POLICY_PARSE_MALFORMED, /* a request with a syntax error is complete: policy_parser_error() */
	POLICY_PARSE_ERROR,     /* fatal: policy_parser_error(); the connection must go */
} policy_parse_status;

typedef enum {
	POLICY_ERR_NONE,
	POLICY_ERR_LINE_TOO_LONG,
	POLICY_ERR_TOO_MANY_ATTRIBUTES,
	POLICY_ERR_MISSING_EQUALS,
	POLICY_ERR_EMPTY_NAME,
	POLICY_ERR_BAD_NAME, /* a control character in an attribute name */
	POLICY_ERR_NUL_BYTE, /* fatal */
	POLICY_ERR_ENDLESS,  /* fatal: POLICY_SKIP_MAX bytes skipped without the end of the request */
} policy_parse_error;

typedef struct policy_parser policy_parser;

/* NULL when out of memory. Limits as in config policy.max_line / max_attributes. */
policy_parser *policy_parser_new(size_t max_line, unsigned max_attributes);
void policy_parser_free(policy_parser *p); /* accepts NULL */

/* New limits (a reload); they apply from the next line on. */
void policy_parser_set_limits(policy_parser *p, size_t max_line, unsigned max_attributes);

/*
 * Feed len bytes. *consumed gets how many were used: all of them on
 * NEED_MORE; on REQUEST and MALFORMED those up to and including the empty
 * line that ends the request (the rest belongs to the next request: feed
 * it again after answering); on ERROR the position of the offending byte.
 * The request returned stays valid until the next call to feed or reset.
 * After MALFORMED it holds only the attributes completed before the
 * error: good for a log line (queue_id), never for a decision.
 */
policy_parse_status policy_parser_feed(policy_parser *p, const char *data, size_t len, size_t *consumed);

const policy_request *policy_parser_request(const policy_parser *p);
/* The error of a MALFORMED request or a fatal one; POLICY_ERR_NONE otherwise. */
policy_parse_error policy_parser_error(const policy_parser *p);
/* 1-based line of the current request where the error is (without one: where the parser is). */
unsigned policy_parser_line(const policy_parser *p);

/* True when no byte of a next request has been seen (a clean place to close). */
bool policy_parser_idle(const policy_parser *p);

/* Forget everything, a fatal error included: ready for a new request. */
void policy_parser_reset(policy_parser *p);

const char *policy_parse_error_name(policy_parse_error err);

#endif
