/*
 * milter: the libmilter front end. Postfix's smtpd_milters client talks to
 * it; each callback copies what libmilter lends it, builds decide_facts, asks
 * the engine and maps the verdict to SMFIS_* and smfi_setreply.
 *
 * libmilter keeps global state (one filter per process), so this module
 * does too: one milter_setup per process, then milter_start, milter_stop.
 */
#ifndef SPAMTRAPD_MILTER_H
#define SPAMTRAPD_MILTER_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "engine.h"

/*
 * Register the filter and open cfg->milter.listen (as root if need be, so
 * before privileges are dropped); a unix socket gets the configured owner,
 * group and mode. Returns 0, or -1 with a message in err.
 */
int milter_setup(engine *eng, const config *cfg, char *err, size_t errlen);

/* Run smfi_main on a thread of its own; 0, or -1 with err. */
int milter_start(char *err, size_t errlen);

/*
 * Stop: no new connections, callbacks in flight finish, join the thread.
 * libmilter notices within its listener poll interval (a few seconds).
 * Returns false when transactions were still in flight at the deadline:
 * their callbacks may still use the engine, so the caller must not free it.
 */
bool milter_stop(void);

/* libmilter stopped without milter_stop (it sends SIGTERM to the process then). */
bool milter_failed(void);

#endif
