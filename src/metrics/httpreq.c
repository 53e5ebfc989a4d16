/*
 * httpreq: a byte-at-a-time state machine over the request head (see
 * httpreq.h). The request line is kept (it is judged when complete);
 * header lines are only checked for shape, never kept.
 */
#include "metrics/httpreq.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

enum {
	S_START,    /* before the request line: empty lines are skipped (RFC 9112 2.2) */
	S_START_CR, /* a CR there */
	S_LINE,     /* the request line */
	S_LINE_CR,  /* a CR ending it */
	S_FIELD,    /* the start of a header line, or the empty line ending the head */
	S_NAME,     /* a field name */
	S_VALUE,    /* a field value */
	S_VALUE_CR, /* a CR ending it */
	S_END_CR,   /* a CR of the empty line */
	S_DONE,     /* answered: r->result */
};

void httpreq_init(httpreq *r)
{
	memset(r, 0, sizeof(*r));
}

/* RFC 9110 5.6.2 tchar. */
static bool is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_ctl(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

/* The path of an origin-form ("/metrics?x") or absolute-form ("http://h/metrics") target. */
static httpreq_status judge_target(const char *t, size_t n)
{
	size_t i = 0;
	if (n >= 7 && strncasecmp(t, "http://", 7) == 0) {
		for (i = 7; i < n && t[i] != '/' && t[i] != '?'; i++)
			;
		if (i == n || t[i] == '?')
			return HTTPREQ_NOT_FOUND; /* path "/" */
	} else if (n == 0 || t[0] != '/') {
		return HTTPREQ_BAD;
	}
	size_t end = i;
	while (end < n && t[end] != '?')
		end++;
	if (end - i == 8 && memcmp(t + i, "/metrics", 8) == 0)
		return HTTPREQ_OK;
	return end - i == 6 && memcmp(t + i, "/rates", 6) == 0 ? HTTPREQ_RATES : HTTPREQ_NOT_FOUND;
}

static httpreq_status judge_version(const char *v, size_t n)
{
	if (n == 8 && (memcmp(v, "HTTP/1.1", 8) == 0 || memcmp(v, "HTTP/1.0", 8) == 0))
		return HTTPREQ_OK;
	if (n == 8 && memcmp(v, "HTTP/", 5) == 0 && v[5] >= '0' && v[5] <= '9' && v[6] == '.' &&
	    v[7] >= '0' && v[7] <= '9')
		return HTTPREQ_VERSION;
	return HTTPREQ_BAD;
}

/* method SP request-target SP HTTP-version, single spaces (RFC 9112 3). */
static httpreq_status judge_line(const char *l, size_t n)
{
	const char *sp1 = memchr(l, ' ', n);
	if (!sp1 || sp1 == l)
		return HTTPREQ_BAD;
	size_t mlen = (size_t)(sp1 - l);
	const char *target = sp1 + 1;
	const char *sp2 = memchr(target, ' ', n - mlen - 1);
	if (!sp2 || sp2 == target)
		return HTTPREQ_BAD;
	size_t tlen = (size_t)(sp2 - target);
	const char *version = sp2 + 1;
	size_t vlen = n - mlen - tlen - 2;
	if (memchr(version, ' ', vlen))
		return HTTPREQ_BAD;
	for (size_t i = 0; i < mlen; i++)
		if (!is_tchar((unsigned char)l[i]))
			return HTTPREQ_BAD;
	httpreq_status v = judge_version(version, vlen);
	httpreq_status t = judge_target(target, tlen);
	if (v != HTTPREQ_OK)
		return v;
	if (t == HTTPREQ_BAD)
		return t;
	if (mlen != 3 || memcmp(l, "GET", 3) != 0)
		return HTTPREQ_METHOD;
	return t;
}

static int done(httpreq *r, httpreq_status st)
{
	r->result = st;
	return S_DONE;
}

/* The request line is complete: a malformed one ends the parse now, anything else at the end of the head. */
static int line_end(httpreq *r)
{
	httpreq_status st = judge_line(r->line, r->line_len);
	if (st == HTTPREQ_BAD)
		return done(r, st);
	r->result = st;
	return S_FIELD;
}

/* A byte of the request line (line_len < seen <= HTTPREQ_MAX: it fits). */
static int line_byte(httpreq *r, unsigned char c)
{
	if (c == '\r')
		return S_LINE_CR;
	if (c == '\n')
		return line_end(r);
	if (is_ctl(c))
		return done(r, HTTPREQ_BAD);
	r->line[r->line_len++] = (char)c;
	return S_LINE;
}

static int step(httpreq *r, unsigned char c)
{
	switch (r->state) {
	case S_START:
		if (c == '\r')
			return S_START_CR;
		return c == '\n' ? S_START : line_byte(r, c);
	case S_LINE:
		return line_byte(r, c);
	case S_START_CR:
		return c == '\n' ? S_START : done(r, HTTPREQ_BAD);
	case S_LINE_CR:
		return c == '\n' ? line_end(r) : done(r, HTTPREQ_BAD);
	case S_FIELD:
		if (c == '\r')
			return S_END_CR;
		if (c == '\n')
			return done(r, r->result);
		return is_tchar(c) ? S_NAME : done(r, HTTPREQ_BAD); /* a blank first: obs-fold, refused */
	case S_NAME:
		if (c == ':')
			return S_VALUE;
		return is_tchar(c) ? S_NAME : done(r, HTTPREQ_BAD);
	case S_VALUE:
		if (c == '\r')
			return S_VALUE_CR;
		if (c == '\n')
			return S_FIELD;
		return is_ctl(c) && c != '\t' ? done(r, HTTPREQ_BAD) : S_VALUE;
	case S_VALUE_CR:
		return c == '\n' ? S_FIELD : done(r, HTTPREQ_BAD);
	case S_END_CR:
		return done(r, c == '\n' ? r->result : HTTPREQ_BAD);
	default:
		return S_DONE;
	}
}

httpreq_status httpreq_feed(httpreq *r, const char *data, size_t len)
{
	for (size_t i = 0; i < len && r->state != S_DONE; i++) {
		r->seen++;
		r->state = step(r, (unsigned char)data[i]);
		if (r->state != S_DONE && r->seen >= HTTPREQ_MAX)
			r->state = done(r, HTTPREQ_TOO_LARGE);
	}
	return r->state == S_DONE ? r->result : HTTPREQ_MORE;
}

int httpreq_code(httpreq_status st)
{
	static const int codes[] = {0, 200, 400, 404, 405, 431, 505, 200};
	return (size_t)st < sizeof(codes) / sizeof(codes[0]) ? codes[st] : 500;
}

const char *httpreq_reason(httpreq_status st)
{
	static const char *const reasons[] = {"",
	                                      "OK",
	                                      "Bad Request",
	                                      "Not Found",
	                                      "Method Not Allowed",
	                                      "Request Header Fields Too Large",
	                                      "HTTP Version Not Supported",
	                                      "OK"};
	return (size_t)st < sizeof(reasons) / sizeof(reasons[0]) ? reasons[st] : "Internal Server Error";
}
