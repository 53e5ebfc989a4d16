/*
 * sockperm: owner, group and mode of a unix socket the daemon listens on
 * (milter.socket_*, policy.socket_*), so that Postfix, and only Postfix,
 * can connect.
 */
#ifndef SPAMTRAPD_SOCKPERM_H
#define SPAMTRAPD_SOCKPERM_H

#include <stddef.h>

/*
 * owner and group are names or numbers (NULL: left as they are), mode an
 * octal mode (0: left as bind() made it). what prefixes messages, e.g.
 * "policy.socket" gives "policy.socket_group: no such group \"x\"".
 * 0, or -1 with a message in err.
 */
int sockperm_apply(const char *path, const char *owner, const char *group, unsigned mode, const char *what,
                   char *err, size_t errlen);

#endif
