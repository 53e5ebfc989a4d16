/*
 * metrics_server: the metrics listener (metrics.listen, metrics.allow):
 * GET /metrics answered with the registry's text (and GET /rates with
 * rates.h's), on a thread of its own
 * with its own epoll, so that a slow or hostile scraper never holds up a
 * mail worker and mail load never holds up a scrape. Everything is
 * bounded: METRICS_SERVER_MAX_CONNS connections at once (one more takes
 * the slot of the one that has waited longest for its request head; a
 * 503 when every slot is writing an answer), a request head of
 * HTTPREQ_MAX bytes, and
 * METRICS_SERVER_DEADLINE_MS from accept to the last byte of the answer.
 * One request per connection (Connection: close).
 */
#ifndef SPAMTRAPD_METRICS_SERVER_H
#define SPAMTRAPD_METRICS_SERVER_H

#include <stddef.h>

#include "config.h"
#include "metrics.h"

#define METRICS_SERVER_MAX_CONNS 64
#define METRICS_SERVER_DEADLINE_MS 5000

typedef struct metrics_server metrics_server;

/*
 * Binds cfg->metrics.listen (as root, before privileges are dropped) and
 * keeps a reference to cfg for its allow list: a reload changes neither
 * (like the other listeners). reg must outlive the server. NULL + err.
 */
metrics_server *metrics_server_new(config *cfg, const metrics *reg, char *err, size_t errlen);
/* Start serving on the server's thread. 0, or -1 with err. */
int metrics_server_start(metrics_server *s, char *err, size_t errlen);
/* Stop the thread (if started), close every connection and the socket; accepts NULL. */
void metrics_server_free(metrics_server *s);

#endif
