/*
 * ctl_scrape: GET /metrics (or /rates) from the daemon's metrics listener
 * (metrics.listen: IP:PORT, [IPV6]:PORT or unix:PATH), for spamtrapctl
 * stats. Bounded: CTL_SCRAPE_TIMEOUT seconds for the connect, the request
 * and the whole answer together, at most CTL_SCRAPE_MAX bytes of answer.
 */
#ifndef SPAMTRAPD_CTL_SCRAPE_H
#define SPAMTRAPD_CTL_SCRAPE_H

#include <stdbool.h>
#include <stddef.h>

#define CTL_SCRAPE_TIMEOUT 5
#define CTL_SCRAPE_MAX (8u << 20)

/* The body of a 200 answer to GET /metrics, malloc'd and NUL-terminated; NULL with err. */
char *ctl_scrape(const char *listen, char *err, size_t errlen);
/*
 * The same for another path the listener serves ("/rates"). *answered
 * (unless NULL): an HTTP answer came, whatever its status (e.g. a 404
 * from a daemon without that path); false when the listener could not be
 * reached or did not answer in time.
 */
char *ctl_scrape_path(const char *listen, const char *path, bool *answered, char *err, size_t errlen);

#endif
