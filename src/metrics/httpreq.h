/*
 * httpreq: the requests the metrics listener serves, GET /metrics (and
 * GET /rates, spamtrapctl's), read
 * from bytes as they arrive (RFC 9112 section 2-5, only what a scraper
 * sends). Pure and bounded: at most HTTPREQ_MAX bytes of request line and
 * headers are ever looked at, each byte once, and the first thing that is
 * not a well-formed HTTP/1.x request head ends it with a status to send.
 * The body (a GET has none) and every header are ignored: the reply is the
 * same for any, and the connection closes after it.
 */
#ifndef SPAMTRAPD_HTTPREQ_H
#define SPAMTRAPD_HTTPREQ_H

#include <stddef.h>

#define HTTPREQ_MAX 8192

typedef enum {
	HTTPREQ_MORE,      /* the head is not complete yet: feed more */
	HTTPREQ_OK,        /* GET /metrics: 200 */
	HTTPREQ_BAD,       /* 400: not a request head */
	HTTPREQ_NOT_FOUND, /* 404: another path */
	HTTPREQ_METHOD,    /* 405: another method */
	HTTPREQ_TOO_LARGE, /* 431: no end of head within HTTPREQ_MAX bytes */
	HTTPREQ_VERSION,   /* 505: not HTTP/1.0 or 1.1 */
	HTTPREQ_RATES,     /* GET /rates: 200 (the counters' recent increases, for spamtrapctl stats) */
} httpreq_status;

/* Where a parse stands. Zero it (or httpreq_init) before the first byte. */
typedef struct httpreq {
	size_t seen;           /* bytes taken so far */
	size_t line_len;       /* of the line being read */
	int state;             /* what is being read: the request line, a header line */
	httpreq_status result; /* of the request line, given when the head ends */
	char line[HTTPREQ_MAX];
} httpreq;

void httpreq_init(httpreq *r);
/*
 * Take len more bytes. HTTPREQ_MORE until the head is complete or wrong;
 * after any other answer the rest of the input is not read and that
 * answer is given again.
 */
httpreq_status httpreq_feed(httpreq *r, const char *data, size_t len);

/* 200, 400, ...; and the reason phrase ("Not Found"). */
int httpreq_code(httpreq_status st);
const char *httpreq_reason(httpreq_status st);

#endif
