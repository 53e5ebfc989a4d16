/*
 * policy_server: the Postfix policy-delegation front end (SMTPD_POLICY_README):
 * listeners from policy.listen, persistent connections, one request at a
 * time per connection, one reply line per request. See policy_server.c for
 * the threading model.
 */
#ifndef SPAMTRAPD_POLICY_SERVER_H
#define SPAMTRAPD_POLICY_SERVER_H

#include <stddef.h>

#include "config.h"
#include "engine.h"

typedef struct policy_server policy_server;

/* Binds every listener of cfg (before privileges are dropped); no threads yet. */
policy_server *policy_server_new(engine *eng, const config *cfg, char *err, size_t errlen);
/* Starts the worker threads. 0, or -1 with err. */
int policy_server_start(policy_server *srv, char *err, size_t errlen);
/* Stops accepting, lets each connection finish its request, joins the workers. */
void policy_server_stop(policy_server *srv);
void policy_server_free(policy_server *srv); /* accepts NULL */

#endif
