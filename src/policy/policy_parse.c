/*
 * policy_parse: the Postfix policy request parser (see policy_parse.h for
 * the contract). A state machine defined byte by byte (step()): an
 * attribute name is collected in a small buffer, a value is streamed
 * straight into its capped field (or skipped), so the state is a fixed
 * size whatever the configured line limit. After a syntax error the state
 * is ST_SKIP: bytes are only counted until the empty line that ends the
 * request. Nothing here allocates after policy_parser_new().
 *
 * Most bytes never go through step() (a function call per byte was a
 * quarter of a request's instructions): a whole "name=value" line in the
 * buffer is taken in one go (memchr for its LF and its '=', the value
 * copied with memcpy); the part of a line that a read split, or a line
 * skipped after an error, in runs up to the next byte that step() treats
 * specially (LF, NUL, '=' and control characters in a name, a CR that an
 * LF may follow) or up to the line or skip limit. Both do exactly what
 * step() would do byte by byte, wherever the input is split; what they
 * leave (the ends of lines and of requests, every error) goes through
 * step().
 */
#include "policy/policy_parse.h"

#include <stdint.h>
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

/* NAME: the attribute name and its length, so that a name is compared only with those of its length. */
#define NAME(s) s, sizeof(s) - 1

static const struct attr_def {
	const char *name;
	size_t namelen, off, cap;
} attr_defs[POLICY_ATTR_COUNT] = {
    [POLICY_ATTR_REQUEST] = {NAME("request"), OFF_REQUEST, CAP_REQUEST},
    [POLICY_ATTR_PROTOCOL_STATE] = {NAME("protocol_state"), OFF_PROTOCOL_STATE, CAP_PROTOCOL_STATE},
    [POLICY_ATTR_CLIENT_ADDRESS] = {NAME("client_address"), OFF_CLIENT_ADDRESS, CAP_CLIENT_ADDRESS},
    [POLICY_ATTR_CLIENT_NAME] = {NAME("client_name"), OFF_CLIENT_NAME, CAP_CLIENT_NAME},
    [POLICY_ATTR_HELO_NAME] = {NAME("helo_name"), OFF_HELO_NAME, CAP_HELO_NAME},
    [POLICY_ATTR_SENDER] = {NAME("sender"), OFF_SENDER, CAP_SENDER},
    [POLICY_ATTR_RECIPIENT] = {NAME("recipient"), OFF_RECIPIENT, CAP_RECIPIENT},
    [POLICY_ATTR_SASL_USERNAME] = {NAME("sasl_username"), OFF_SASL_USERNAME, CAP_SASL_USERNAME},
    [POLICY_ATTR_QUEUE_ID] = {NAME("queue_id"), OFF_QUEUE_ID, CAP_QUEUE_ID},
    [POLICY_ATTR_INSTANCE] = {NAME("instance"), OFF_INSTANCE, CAP_INSTANCE},
};

#define MIN(a, b) ((a) < (b) ? (a) : (b))

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

/* Not allowed in a name. */
static bool is_control(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
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

/* The stored attribute called name (len bytes), or -1. Only the first NAME_MAX_STORED bytes are read. */
static int attr_find(const char *name, size_t len)
{
	if (len == 0 || len >= NAME_MAX_STORED)
		return -1;
	for (int a = 0; a < POLICY_ATTR_COUNT; a++)
		if (attr_defs[a].namelen == len && attr_defs[a].name[0] == name[0] &&
		    attr_defs[a].name[len - 1] == name[len - 1] && memcmp(attr_defs[a].name, name, len) == 0)
			return a;
	return -1;
}

/* A value of attribute a begins: a later duplicate replaces the earlier value, flags included. */
static void attr_begin(policy_request *req, int a)
{
	req->present |= 1u << a;
	req->truncated &= ~(1u << a);
}

/* '=' ends the name: find out whether the value is one we store. */
static void value_begin(policy_parser *p)
{
	p->vlen = 0;
	p->attr = attr_find(p->name, p->namelen);
	if (p->attr >= 0)
		attr_begin(&p->req, p->attr);
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
	if (is_control(c))
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

/* CR LF counts as LF; any other CR is an ordinary byte. The one definition of the syntax. */
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

/* How many more bytes fit under limit when used are taken (0 when a reload lowered it below used). */
static size_t room(size_t used, size_t limit)
{
	return used < limit ? limit - used : 0;
}

static bool name_stop(unsigned char c)
{
	return c == '=' || is_control(c);
}

/*
 * Is there a control character among the 8 bytes at s? A byte below 0x20
 * leaves its high bit set in (w - 0x20..) & ~w, a byte of 0x7f in
 * (d - 0x01..) & ~d with d = w ^ 0x7f.. (the "hasless" and "haszero"
 * tests of Bit Twiddling Hacks): exact for whether there is one, which is
 * all this needs, in any byte order.
 */
static bool word_has_control(const char *s)
{
	const uint64_t ones = UINT64_C(0x0101010101010101);
	uint64_t w, d;

	memcpy(&w, s, sizeof(w));
	d = w ^ (0x7f * ones);
	return (((w - 0x20 * ones) & ~w) | ((d - ones) & ~d)) & (ones << 7);
}

/* Is there a control character among n bytes at s? Eight at a time, the last word overlapping. */
static bool has_control(const char *s, size_t n)
{
	if (n < 8) {
		for (size_t i = 0; i < n; i++)
			if (is_control((unsigned char)s[i]))
				return true;
		return false;
	}
	for (size_t i = 0; i + 8 < n; i += 8)
		if (word_has_control(s + i))
			return true;
	return word_has_control(s + n - 8);
}

/* The ordinary bytes of a name at s: up to '=' or a control character (NUL, CR, LF among them). */
static size_t name_run(const char *s, size_t max)
{
	size_t n = 0;

	while (n < max && !name_stop((unsigned char)s[n]))
		n++;
	return n;
}

/*
 * The ordinary bytes of a value or a skipped line at s: up to the first LF
 * or NUL. A CR at the end of the run is left to step(), which knows
 * whether an LF follows; a CR inside the run is followed by a byte of the
 * run, no LF, so step() would take it as an ordinary byte too.
 */
static size_t text_run(const char *s, size_t max)
{
	const char *nl = memchr(s, '\n', max);
	size_t n = nl != NULL ? (size_t)(nl - s) : max;
	const char *nul = memchr(s, '\0', n);

	if (nul != NULL)
		n = (size_t)(nul - s);
	if (n > 0 && s[n - 1] == '\r')
		n--;
	return n;
}

/* name_byte() for n ordinary name bytes. */
static void name_bytes(policy_parser *p, const char *s, size_t n)
{
	if (p->namelen < NAME_MAX_STORED)
		memcpy(p->name + p->namelen, s,
		       n < NAME_MAX_STORED - p->namelen ? n : NAME_MAX_STORED - p->namelen);
	p->namelen += n;
}

/* value_byte() for n ordinary value bytes: copied up to the cap, the rest flagged as cut. */
static void value_bytes(policy_parser *p, const char *s, size_t n)
{
	const struct attr_def *d;
	size_t fit;

	if (p->attr < 0)
		return;
	d = &attr_defs[p->attr];
	fit = d->cap - 1 - p->vlen;
	if (n > fit) {
		p->req.truncated |= 1u << p->attr;
		n = fit;
	}
	memcpy(p->req.buf + d->off + p->vlen, s, n);
	p->vlen += n;
}

/*
 * Take the ordinary bytes at s (at most len) in one go, as step() would
 * one by one; how many. Each run stays within the line limit (values and
 * names) or the skip limit, so the byte that reaches a limit goes through
 * step() and reports it.
 */
static size_t take_run(policy_parser *p, const char *s, size_t len)
{
	size_t n;

	if (p->cr_pending)
		return 0;
	if (p->state == ST_NAME) {
		n = name_run(s, MIN(len, room(p->linelen, p->max_line)));
		name_bytes(p, s, n);
	} else if (p->state == ST_VALUE) {
		n = text_run(s, MIN(len, room(p->linelen, p->max_line)));
		value_bytes(p, s, n);
	} else if (p->state == ST_SKIP) {
		n = text_run(s, MIN(len, room(p->skipped, POLICY_SKIP_MAX)));
		p->skipped += n;
	} else {
		return 0;
	}
	p->linelen += n;
	p->started |= n > 0;
	return n;
}

/* A whole value of attribute a (or of none: -1), stored as step() would store it byte by byte. */
static void line_value(policy_request *req, int a, const char *v, size_t vlen)
{
	const struct attr_def *d;
	size_t n;

	if (a < 0)
		return;
	d = &attr_defs[a];
	n = MIN(vlen, d->cap - 1);
	attr_begin(req, a);
	memcpy(req->buf + d->off, v, n);
	req->buf[d->off + n] = '\0';
	if (n < vlen)
		req->truncated |= 1u << a;
}

/*
 * At the start of a line, a whole "name=value" line and its LF in s: the
 * usual case, taken in one go when nothing in it needs step(): within the
 * line limit and max_attributes, a name without control characters, no
 * NUL, no CR before the LF (CR LF is left to step()). Returns the bytes
 * taken, the LF included, or 0: then runs and step() take the line, and
 * report what is wrong with it.
 */
static size_t take_line(policy_parser *p, const char *s, size_t len)
{
	const char *nl, *eq;
	size_t linelen, namelen;

	if (p->state != ST_NAME || p->linelen != 0 || p->cr_pending ||
	    p->req.nattributes >= p->max_attributes)
		return 0;
	nl = memchr(s, '\n', p->max_line < len ? p->max_line + 1 : len);
	if (nl == NULL)
		return 0;
	linelen = (size_t)(nl - s);
	eq = memchr(s, '=', linelen);
	if (eq == NULL || eq == s || s[linelen - 1] == '\r')
		return 0;
	namelen = (size_t)(eq - s);
	if (has_control(s, namelen) || memchr(eq + 1, '\0', linelen - namelen - 1) != NULL)
		return 0;
	p->req.nattributes++;
	line_value(&p->req, attr_find(s, namelen), eq + 1, linelen - namelen - 1);
	p->started = true;
	p->line++;
	return linelen + 1;
}

/* Whole lines, else a run of ordinary bytes, else one byte through step(). */
policy_parse_status policy_parser_feed(policy_parser *p, const char *data, size_t len, size_t *consumed)
{
	size_t i = 0;

	*consumed = 0;
	if (p->state == ST_ERROR)
		return POLICY_PARSE_ERROR;
	if (p->state == ST_DONE)
		request_begin(p);
	while (i < len) {
		size_t n = take_line(p, data + i, len - i);
		policy_parse_status st;

		if (n == 0)
			n = take_run(p, data + i, len - i);
		if (n > 0) {
			i += n;
			continue;
		}
		st = step(p, (unsigned char)data[i]);
		if (st == POLICY_PARSE_REQUEST || st == POLICY_PARSE_MALFORMED) {
			*consumed = i + 1;
			return st;
		}
		if (st == POLICY_PARSE_ERROR) {
			*consumed = i;
			return st;
		}
		i++;
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
