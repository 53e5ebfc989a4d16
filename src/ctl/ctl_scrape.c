/*
 * ctl_scrape: one HTTP/1.0 GET over a blocking socket with timeouts (see
 * ctl_scrape.h). The listener closes after its answer, so the answer ends
 * where the stream does.
 */
#include "ctl/ctl_scrape.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/addr.h"

static int open_socket(const char *listen, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	memset(&ss, 0, sizeof(ss));
	if (strncmp(listen, "unix:", 5) == 0) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&ss;
		sun->sun_family = AF_UNIX;
		snprintf(sun->sun_path, sizeof(sun->sun_path), "%s", listen + 5);
		len = sizeof(*sun);
	} else {
		addr_ip ip;
		uint16_t port;
		char why[128];
		if (!addr_hostport_parse(listen, &ip, &port, why, sizeof(why))) {
			snprintf(err, errlen, "%s: %s", listen, why);
			return -1;
		}
		if (ip.version == 6) {
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
			sin6->sin6_family = AF_INET6;
			sin6->sin6_port = htons(port);
			memcpy(&sin6->sin6_addr, ip.bytes, 16);
			len = sizeof(*sin6);
		} else {
			struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
			sin->sin_family = AF_INET;
			sin->sin_port = htons(port);
			memcpy(&sin->sin_addr, ip.bytes, 4);
			len = sizeof(*sin);
		}
	}
	struct timeval tv = {.tv_sec = CTL_SCRAPE_TIMEOUT};
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
		snprintf(err, errlen, "%s: %s", listen, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
		/*
		 * SO_SNDTIMEO ends a connect nobody accepts (a listener whose
		 * backlog is full, a host that drops the SYN) with EINPROGRESS,
		 * or EAGAIN for a unix socket: "Operation now in progress" told
		 * the operator nothing.
		 */
		int e = errno == EINPROGRESS || errno == EAGAIN ? ETIMEDOUT : errno;
		snprintf(err, errlen, "%s: connect: %s", listen, strerror(e));
		close(fd);
		return -1;
	}
	return fd;
}

static int64_t monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Waits for bytes until the answer's deadline: a per-read timeout alone
 * let a peer that trickles a byte now and then hold stats for as long as
 * it liked.
 */
static int wait_readable(int fd, int64_t deadline_ms)
{
	for (;;) {
		int64_t left = deadline_ms - monotonic_ms();
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (left <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		int n = poll(&p, 1, (int)left);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -1;
	}
}

/* The whole answer, to the server's close, by the deadline. */
static char *read_all(int fd, int64_t deadline_ms, size_t *len, char *err, size_t errlen, const char *listen)
{
	size_t cap = 65536;
	char *buf = malloc(cap + 1);
	*len = 0;
	while (buf) {
		if (*len == cap) {
			char *grown = cap < CTL_SCRAPE_MAX ? realloc(buf, cap * 2 + 1) : NULL;
			if (!grown) {
				snprintf(err, errlen, "%s: answer too large", listen);
				break;
			}
			buf = grown;
			cap *= 2;
		}
		ssize_t n = wait_readable(fd, deadline_ms) < 0 ? -1 : recv(fd, buf + *len, cap - *len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			snprintf(err, errlen, "%s: %s", listen, strerror(errno));
			break;
		}
		if (n == 0) {
			buf[*len] = '\0';
			return buf;
		}
		*len += (size_t)n;
	}
	free(buf);
	return NULL;
}

char *ctl_scrape(const char *listen, char *err, size_t errlen)
{
	return ctl_scrape_path(listen, "/metrics", NULL, err, errlen);
}

char *ctl_scrape_path(const char *listen, const char *path, bool *answered, char *err, size_t errlen)
{
	char request[256];
	int reqlen = snprintf(request, sizeof(request), "GET %s HTTP/1.0\r\nHost: spamtrapctl\r\n\r\n", path);
	int fd;
	size_t len;
	char *answer = NULL;

	if (answered)
		*answered = false;
	if (reqlen < 0 || (size_t)reqlen >= sizeof(request)) {
		snprintf(err, errlen, "%s: path too long", listen);
		return NULL;
	}
	int64_t deadline_ms = monotonic_ms() + CTL_SCRAPE_TIMEOUT * 1000;
	if ((fd = open_socket(listen, err, errlen)) < 0)
		return NULL;
	if (send(fd, request, (size_t)reqlen, MSG_NOSIGNAL) != (ssize_t)reqlen)
		snprintf(err, errlen, "%s: %s", listen, strerror(errno));
	else
		answer = read_all(fd, deadline_ms, &len, err, errlen, listen);
	close(fd);
	if (answered)
		*answered = answer != NULL && strncmp(answer, "HTTP/", 5) == 0;
	if (!answer)
		return NULL;
	char *body = strstr(answer, "\r\n\r\n");
	if (strncmp(answer, "HTTP/1.1 200 ", 13) != 0 || !body) {
		snprintf(err, errlen, "%s: %.60s", listen,
		         strncmp(answer, "HTTP/", 5) == 0 ? answer : "not HTTP");
		char *eol = strpbrk(err, "\r\n");
		if (eol)
			*eol = '\0';
		/* The status line is the peer's, not ours: keep control bytes off the terminal. */
		for (char *p = err; *p; p++)
			if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
				*p = '?';
		free(answer);
		return NULL;
	}
	memmove(answer, body + 4, strlen(body + 4) + 1);
	return answer;
}
