/*
 * listenaddr: what the daemon's own listeners (policy, metrics) share
 * before bind(): the socket address of an IP and port, and the removal of
 * a unix socket file left by a daemon that died.
 */
#ifndef SPAMTRAPD_LISTENADDR_H
#define SPAMTRAPD_LISTENADDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "core/addr.h"

/* ip and port as a socket address in *ss (zeroed first); its length. */
socklen_t listenaddr_inet(const addr_ip *ip, uint16_t port, struct sockaddr_storage *ss);

/*
 * Remove the socket file at sun's path if nobody accepts on it any more.
 * One that another process still accepts on (this daemon's other socket
 * named again by mistake, another spamtrapd's) or a file that is not a
 * socket (a typo naming a real file) is an error, and is left alone.
 * what prefixes messages ("policy listener unix:/run/x"). 0, or -1 with
 * a message in err.
 */
int listenaddr_clear_stale_unix(const struct sockaddr_un *sun, const char *what, char *err, size_t errlen);

#endif
