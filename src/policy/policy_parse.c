/*
 * policy_parse: the Postfix policy request parser (see policy_parse.h for
 * the contract). A byte-at-a-time state machine: an attribute name is
 * collected in a small buffer, a value is streamed straight into its
 * capped field (or skipped), so the state is a fixed size whatever the
 * configured line limit. After a syntax error the state is ST_SKIP: bytes
 * are only counted until the empty line that ends the request. Nothing
 * here allocates after policy_parser_new().
 */
#include "policy/policy_parse.h"

#include <stdlib.h>
#include <string.h>

/*
 * Caps with the NUL. Addresses: RFC 5321 allows 64 + 1 + 255 octets, 512
 * leaves room for quoted local parts (as core/addr.h ADDR_MAX); DNS names
 * are at most 255 octets.
 */
#define CAP_REQUEST 32
#define CAP_PROTOCOL_STATE 32
#define CAP_CLIENT_ADDRESS 64
#define CAP_CLIENT_NAME 256
#define CAP_HELO_NAME 256
#define CAP_SENDER 512
#define CAP_RECIPIENT 512
#define CAP_SASL_USERNAME 256
#define CAP_QUEUE_ID 64
#define CAP_INSTANCE 64

#define OFF_REQUEST 0
#define OFF_PROTOCOL_STATE (OFF_REQUEST + CAP_REQUEST)
#define OFF_CLIENT_ADDRESS (OFF_PROTOCOL_STATE + CAP_PROTOCOL_STATE)
#define OFF_CLIENT_NAME (OFF_CLIENT_ADDRESS + CAP_CLIENT_ADDRESS)
#define OFF_HELO_NAME (OFF_CLIENT_NAME + CAP_CLIENT_NAME)
#define OFF_SENDER (OFF_HELO_NAME + CAP_HELO_NAME)
#define OFF_RECIPIENT (OFF_SENDER + CAP_SENDER)
#define OFF_SASL_USERNAME (OFF_RECIPIENT + CAP_RECIPIENT)
#define OFF_QUEUE_ID (OFF_SASL_USERNAME + CAP_SASL_USERNAME)
#define OFF_INSTANCE (OFF_QUEUE_ID + CAP_QUEUE_ID)

_Static_assert(OFF_INSTANCE + CAP_INSTANCE == POLICY_REQUEST_BUF, "policy_request buffer size");

static const struct attr_def {
	const char *name;
	size_t off, cap;
} attr_defs[POLICY_ATTR_COUNT] = {
    [POLICY_ATTR_REQUEST] = {"request", OFF_REQUEST, CAP_REQUEST},
    [POLICY_ATTR_PROTOCOL_STATE] = {"protocol_state", OFF_PROTOCOL_STATE, CAP_PROTOCOL_STATE},
    [POLICY_ATTR_CLIENT_ADDRESS] = {"client_address", OFF_CLIENT_ADDRESS, CAP_CLIENT_ADDRESS},
    [POLICY_ATTR_CLIENT_NAME] = {"client_name", OFF_CLIENT_NAME, CAP_CLIENT_NAME},
    [POLICY_ATTR_HELO_NAME] = {"helo_name", OFF_HELO_NAME, CAP_HELO_NAME},
    [POLICY_ATTR_SENDER] = {"sender", OFF_SENDER, CAP_SENDER},
    [POLICY_ATTR_RECIPIENT] = {"recipient", OFF_RECIPIENT, CAP_RECIPIENT},
    [POLICY_ATTR_SASL_USERNAME] = {"sasl_username", OFF_SASL_USERNAME, CAP_SASL_USERNAME},
    [POLICY_ATTR_QUEUE_ID] = {"queue_id", OFF_QUEUE_ID, CAP_QUEUE_ID},
    [POLICY_ATTR_INSTANCE] = {"instance", OFF_INSTANCE, CAP_INSTANCE},
};

/* Longer names than this cannot be one of ours; they are still parsed and skipped. */
#define NAME_MAX_STORED 32

typedef enum {
	ST_NAME,  /* in an attribute name, or at the start of a line */
	ST_VALUE, /* in a value */
	ST_SKIP,  /* after a syntax error: looking for the empty line */
	ST_DONE,  /* a request (good or malformed) was reported */
	ST_ERROR, /* fatal, until policy_parser_reset() */
} parse_state;

struct policy_parser {
	size_t max_line;
	unsigned max_attributes;
	parse_state state;
	policy_parse_error err;
	unsigned err_line; /* the line err was found in */
	size_t skipped;    /* bytes seen in ST_SKIP */
	bool started;      /* a byte of the current request was seen */
	bool cr_pending;   /* a CR that is dropped if LF follows */
	unsigned line;     /* 1-based line within the request */
	size_t linelen;    /* bytes of the current line so far */
	char name[NAME_MAX_STORED];
	size_t namelen;
	int attr; /* the stored attribute the current value goes to, or -1 */
	size_t vlen;
	policy_request req;
};

const char *policy_request_get(const policy_request *req, policy_attr attr)
{
	if ((unsigned)attr >= POLICY_ATTR_COUNT || !(req->present & (1u << attr)))
		return NULL;
	return req->buf + attr_defs[attr].off;
}

bool policy_request_truncated(const policy_request *req, policy_attr attr)
{
	return (unsigned)attr < POLICY_ATTR_COUNT && (req->truncated & (1u << attr));
}

const char *policy_attr_name(policy_attr attr)
{
	return (unsigned)attr < POLICY_ATTR_COUNT ? attr_defs[attr].name : "?";
}

size_t policy_attr_cap(policy_attr attr)
{
	return (unsigned)attr < POLICY_ATTR_COUNT ? attr_defs[attr].cap - 1 : 0;
}

static void request_begin(policy_parser *p)
{
	p->err = POLICY_ERR_NONE;
	p->err_line = 0;
	p->skipped = 0;
	p->req.nattributes = 0;
	p->req.present = 0;
	p->req.truncated = 0;
	p->state = ST_NAME;
	p->started = false;
	p->cr_pending = false;
	p->line = 1;
	p->linelen = 0;
	p->namelen = 0;
	p->attr = -1;
}

policy_parser *policy_parser_new(size_t max_line, unsigned max_attributes)
{
	policy_parser *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return NULL;
	policy_parser_set_limits(p, max_line, max_attributes);
	policy_parser_reset(p);
	return p;
}

void policy_parser_free(policy_parser *p)
{
	free(p);
}

void policy_parser_set_limits(policy_parser *p, size_t max_line, unsigned max_attributes)
{
	p->max_line = max_line;
	p->max_attributes = max_attributes;
}

void policy_parser_reset(policy_parser *p)
{
	request_begin(p);
}

/* A fatal error: nothing more is parsed until policy_parser_reset(). */
static policy_parse_status fail(policy_parser *p, policy_parse_error err)
{
	p->state = ST_ERROR;
	p->err = err;
	p->err_line = p->line;
	return POLICY_PARSE_ERROR;
}

/*
 * A syntax error: skip to the end of the request. A value cut off by the
 * error is dropped, so that what was stored before stays well-formed.
 */
static policy_parse_status malformed(policy_parser *p, policy_parse_error err)
{
	if (p->attr >= 0)
		p->req.present &= ~(1u << p->attr);
	p->attr = -1;
	p->state = ST_SKIP;
	p->err = err;
	p->err_line = p->line;
	p->skipped = 0;
	return POLICY_PARSE_NEED_MORE;
}

/* '=' ends the name: find out whether the value is one we store. */
static void value_begin(policy_parser *p)
{
	p->attr = -1;
	p->vlen = 0;
	if (p->namelen >= NAME_MAX_STORED)
		return;
	for (int a = 0; a < POLICY_ATTR_COUNT; a++) {
		if (strlen(attr_defs[a].name) == p->namelen &&
		    memcmp(attr_defs[a].name, p->name, p->namelen) == 0) {
			p->attr = a;
			/* A later duplicate replaces the earlier value, flags included. */
			p->req.present |= 1u << a;
			p->req.truncated &= ~(1u << a);
			return;
		}
	}
}

static void value_byte(policy_parser *p, unsigned char c)
{
	const struct attr_def *d;

	if (p->attr < 0)
		return;
	d = &attr_defs[p->attr];
	if (p->vlen + 1 < d->cap)
		p->req.buf[d->off + p->vlen++] = (char)c;
	else
		p->req.truncated |= 1u << p->attr;
}

static policy_parse_status name_byte(policy_parser *p, unsigned char c)
{
	if (c == '=') {
		if (p->namelen == 0)
			return malformed(p, POLICY_ERR_EMPTY_NAME);
		if (++p->req.nattributes > p->max_attributes)
			return malformed(p, POLICY_ERR_TOO_MANY_ATTRIBUTES);
		value_begin(p);
		p->state = ST_VALUE;
		return POLICY_PARSE_NEED_MORE;
	}
	if (c < 0x20 || c == 0x7f)
		return malformed(p, POLICY_ERR_BAD_NAME);
	if (p->namelen < NAME_MAX_STORED)
		p->name[p->namelen] = (char)c;
	p->namelen++;
	return POLICY_PARSE_NEED_MORE;
}

static void next_line(policy_parser *p)
{
	p->line++;
	p->linelen = 0;
	p->namelen = 0;
	p->attr = -1;
}

static policy_parse_status end_of_line(policy_parser *p)
{
	if (p->state == ST_NAME && p->linelen == 0) {
		p->state = ST_DONE; /* the empty line: the request is complete */
		return POLICY_PARSE_REQUEST;
	}
	if (p->state == ST_NAME) {
		malformed(p, POLICY_ERR_MISSING_EQUALS);
	} else {
		if (p->attr >= 0)
			p->req.buf[attr_defs[p->attr].off + p->vlen] = '\0';
		p->state = ST_NAME;
	}
	next_line(p);
	return POLICY_PARSE_NEED_MORE;
}

/* After a syntax error: count, and find the empty line (a line end right after a line end). */
static policy_parse_status skip_byte(policy_parser *p, unsigned char c)
{
	if (++p->skipped > POLICY_SKIP_MAX)
		return fail(p, POLICY_ERR_ENDLESS);
	if (c != '\n') {
		p->linelen++;
		return POLICY_PARSE_NEED_MORE;
	}
	if (p->linelen == 0) {
		p->state = ST_DONE;
		return POLICY_PARSE_MALFORMED;
	}
	next_line(p);
	return POLICY_PARSE_NEED_MORE;
}

static policy_parse_status byte(policy_parser *p, unsigned char c)
{
	p->started = true;
	if (c == '\0')
		return fail(p, POLICY_ERR_NUL_BYTE);
	if (p->state == ST_SKIP)
		return skip_byte(p, c);
	if (c == '\n')
		return end_of_line(p);
	if (++p->linelen > p->max_line)
		return malformed(p, POLICY_ERR_LINE_TOO_LONG);
	if (p->state == ST_NAME)
		return name_byte(p, c);
	value_byte(p, c);
	return POLICY_PARSE_NEED_MORE;
}

/* CR LF counts as LF; any other CR is an ordinary byte. */
static policy_parse_status step(policy_parser *p, unsigned char c)
{
	if (p->cr_pending) {
		p->cr_pending = false;
		if (c != '\n') {
			policy_parse_status st = byte(p, '\r');

			if (st != POLICY_PARSE_NEED_MORE)
				return st;
		}
	}
	if (c == '\r') {
		p->started = true;
		p->cr_pending = true;
		return POLICY_PARSE_NEED_MORE;
	}
	return byte(p, c);
}

policy_parse_status policy_parser_feed(policy_parser *p, const char *data, size_t len, size_t *consumed)
{
	*consumed = 0;
	if (p->state == ST_ERROR)
		return POLICY_PARSE_ERROR;
	if (p->state == ST_DONE)
		request_begin(p);
	for (size_t i = 0; i < len; i++) {
		policy_parse_status st = step(p, (unsigned char)data[i]);

		if (st == POLICY_PARSE_REQUEST || st == POLICY_PARSE_MALFORMED) {
			*consumed = i + 1;
			return st;
		}
		if (st == POLICY_PARSE_ERROR) {
			*consumed = i;
			return st;
		}
	}
	*consumed = len;
	return POLICY_PARSE_NEED_MORE;
}

const policy_request *policy_parser_request(const policy_parser *p)
{
	return &p->req;
}

policy_parse_error policy_parser_error(const policy_parser *p)
{
	return p->err;
}

unsigned policy_parser_line(const policy_parser *p)
{
	return p->err != POLICY_ERR_NONE ? p->err_line : p->line;
}

bool policy_parser_idle(const policy_parser *p)
{
	return p->state == ST_DONE || (p->state == ST_NAME && !p->started);
}

const char *policy_parse_error_name(policy_parse_error err)
{
	switch (err) {
	case POLICY_ERR_NONE:
		return "no error";
	case POLICY_ERR_LINE_TOO_LONG:
		return "line too long";
	case POLICY_ERR_TOO_MANY_ATTRIBUTES:
		return "too many attributes";
	case POLICY_ERR_MISSING_EQUALS:
		return "line without '='";
	case POLICY_ERR_EMPTY_NAME:
		return "empty attribute name";
	case POLICY_ERR_BAD_NAME:
		return "control character in attribute name";
	case POLICY_ERR_NUL_BYTE:
		return "NUL byte";
	case POLICY_ERR_ENDLESS:
		return "no end of the request within 1 MiB after a syntax error";
	}
	return "unknown error";
}
