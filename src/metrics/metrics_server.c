/*
 * metrics_server: one thread, one epoll, a fixed table of connections
 * (see metrics_server.h). A connection reads its request head through
 * httpreq, then writes its whole answer (rendered once, at the end of the
 * head) and closes. The epoll timeout is the nearest connection deadline;
 * an eventfd wakes the thread to stop. Errors on one connection close it;
 * accept errors (EMFILE) pause accepting for a moment instead of spinning.
 */
#include "metrics/metrics_server.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/addr.h"
#include "core/netset.h"
#include "listenaddr.h"
#include "log.h"
#include "metrics/httpreq.h"
#include "rates.h"

#define LISTEN_BACKLOG 128
#define ACCEPT_PAUSE_MS 100
#define ACCEPTS_PER_WAKE 64
#define ID_LISTEN METRICS_SERVER_MAX_CONNS
#define ID_STOP (METRICS_SERVER_MAX_CONNS + 1)

typedef struct mconn {
	int fd; /* -1: free */
	int64_t deadline_ms;
	httpreq req;
	char *out; /* the answer, once the head is read */
	size_t outlen, outoff;
} mconn;

struct metrics_server {
	config *cfg;
	const metrics *reg;
	rates *rates; /* ticked and rendered on the server's thread only */
	int listen_fd, epoll_fd, stop_fd;
	char *unix_path; /* to unlink at the end */
	int64_t paused_until_ms;
	pthread_t thread;
	bool started;
	mconn conns[METRICS_SERVER_MAX_CONNS];
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int bind_address(const char *address, struct sockaddr_storage *ss, socklen_t *len, char *err,
                        size_t errlen)
{
	if (strncmp(address, "unix:", 5) == 0) {
		struct sockaddr_un *sun = (struct sockaddr_un *)ss;
		memset(ss, 0, sizeof(*ss));
		sun->sun_family = AF_UNIX;
		snprintf(sun->sun_path, sizeof(sun->sun_path), "%s", address + 5);
		char what[160];

		snprintf(what, sizeof(what), "metrics.listen %s", address);
		if (listenaddr_clear_stale_unix(sun, what, err, errlen) < 0)
			return -1;
		*len = sizeof(*sun);
		return 0;
	}
	addr_ip ip;
	uint16_t port;
	char why[128];
	if (!addr_hostport_parse(address, &ip, &port, why, sizeof(why))) {
		snprintf(err, errlen, "metrics.listen %s: %s", address, why);
		return -1;
	}
	*len = listenaddr_inet(&ip, port, ss);
	return 0;
}

static int open_listener(metrics_server *s, char *err, size_t errlen)
{
	const char *address = s->cfg->metrics.listen;
	struct sockaddr_storage ss;
	socklen_t len;
	int one = 1;

	if (bind_address(address, &ss, &len, err, errlen) < 0)
		return -1;
	s->listen_fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->listen_fd < 0) {
		snprintf(err, errlen, "metrics.listen %s: socket: %s", address, strerror(errno));
		return -1;
	}
	setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(s->listen_fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(s->listen_fd, (struct sockaddr *)&ss, len) < 0) {
		snprintf(err, errlen, "metrics.listen %s: %s", address, strerror(errno));
		return -1;
	}
	/* Only now is the file at the path ours to remove at the end (a bind that failed left another's). */
	if (ss.ss_family == AF_UNIX && !(s->unix_path = strdup(address + 5))) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (listen(s->listen_fd, LISTEN_BACKLOG) < 0) {
		snprintf(err, errlen, "metrics.listen %s: %s", address, strerror(errno));
		return -1;
	}
	return 0;
}

static int watch(metrics_server *s, int op, int fd, uint32_t events, uint32_t id)
{
	struct epoll_event ev = {.events = events, .data.u32 = id};
	return epoll_ctl(s->epoll_fd, op, fd, &ev);
}

metrics_server *metrics_server_new(config *cfg, const metrics *reg, char *err, size_t errlen)
{
	metrics_server *s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->cfg = config_ref(cfg);
	s->reg = reg;
	s->listen_fd = s->epoll_fd = s->stop_fd = -1;
	for (size_t i = 0; i < METRICS_SERVER_MAX_CONNS; i++)
		s->conns[i].fd = -1;
	if (open_listener(s, err, errlen) < 0)
		goto fail;
	if (!(s->rates = rates_new(reg, now_ms()))) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	s->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	s->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (s->epoll_fd < 0 || s->stop_fd < 0 ||
	    watch(s, EPOLL_CTL_ADD, s->listen_fd, EPOLLIN, ID_LISTEN) < 0 ||
	    watch(s, EPOLL_CTL_ADD, s->stop_fd, EPOLLIN, ID_STOP) < 0) {
		snprintf(err, errlen, "metrics listener: %s", strerror(errno));
		goto fail;
	}
	return s;
fail:
	metrics_server_free(s);
	return NULL;
}

static void conn_close(mconn *c)
{
	if (c->fd < 0)
		return;
	close(c->fd); /* leaves the epoll set with it */
	c->fd = -1;
	free(c->out);
	c->out = NULL;
}

/* The whole answer: status line, headers, body (the metrics, or the reason). */
static void conn_answer(metrics_server *s, mconn *c, httpreq_status st)
{
	size_t bodylen = 0;
	bool ok = st == HTTPREQ_OK || st == HTTPREQ_RATES;
	char *body = st == HTTPREQ_OK      ? metrics_render(s->reg, &bodylen)
	             : st == HTTPREQ_RATES ? rates_render(s->rates, now_ms(), &bodylen)
	                                   : NULL;
	const char *type =
	    st == HTTPREQ_OK ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8";
	char head[512], reason_body[64];

	if (ok && !body)
		return; /* out of memory: no answer, the connection closes */
	if (!ok) {
		snprintf(reason_body, sizeof(reason_body), "%s\n", httpreq_reason(st));
		bodylen = strlen(reason_body);
		type = "text/plain; charset=utf-8";
	}
	int n = snprintf(
	    head, sizeof(head),
	    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n",
	    httpreq_code(st), httpreq_reason(st), type, bodylen,
	    st == HTTPREQ_METHOD ? "Allow: GET\r\n" : "");
	c->out = malloc((size_t)n + bodylen);
	if (c->out) {
		memcpy(c->out, head, (size_t)n);
		memcpy(c->out + n, body ? body : reason_body, bodylen);
		c->outlen = (size_t)n + bodylen;
		c->outoff = 0;
	}
	free(body);
}

/* Write what the socket takes; done (closed) at the end or on an error. */
static void conn_write(mconn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0)
			break;
		c->outoff += (size_t)n;
	}
	shutdown(c->fd, SHUT_WR);
	conn_close(c);
}

static void conn_read(metrics_server *s, mconn *c)
{
	char buf[2048];
	httpreq_status st = HTTPREQ_MORE;

	while (st == HTTPREQ_MORE) {
		ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) { /* closed before a whole head, or an error */
			conn_close(c);
			return;
		}
		st = httpreq_feed(&c->req, buf, (size_t)n);
	}
	conn_answer(s, c, st);
	if (!c->out || watch(s, EPOLL_CTL_MOD, c->fd, EPOLLOUT, (uint32_t)(c - s->conns)) < 0) {
		conn_close(c);
		return;
	}
	conn_write(c);
}

static bool peer_allowed(const metrics_server *s, const struct sockaddr_storage *ss)
{
	addr_ip ip = {0};
	if (ss->ss_family == AF_UNIX)
		return true; /* the socket file's permissions decide */
	if (ss->ss_family == AF_INET) {
		ip.version = 4;
		memcpy(ip.bytes, &((const struct sockaddr_in *)ss)->sin_addr, 4);
	} else if (ss->ss_family == AF_INET6) {
		ip.version = 6;
		memcpy(ip.bytes, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
	} else {
		return false;
	}
	return s->cfg->metrics.allow && netset_contains(s->cfg->metrics.allow, &ip);
}

/* No free slot: a short 503, as far as the socket takes it at once, and close. */
static void refuse_busy(int fd)
{
	static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; "
	                           "charset=utf-8\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n";
	ssize_t ignored = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)ignored;
	close(fd);
}

/*
 * A slot for a new connection: a free one, else the one that has waited
 * longest for its request head. Without that, anyone allowed to connect
 * could hold every slot with idle connections, opening new ones as the
 * old ones time out, and no scrape would get in; a scraper sends its head
 * at once, so it loses its slot only to a flood of connections made in
 * that moment. Answers being written are never cut. NULL: every slot is
 * writing one.
 */
static mconn *take_slot(metrics_server *s)
{
	mconn *oldest = NULL;

	for (size_t i = 0; i < METRICS_SERVER_MAX_CONNS; i++) {
		mconn *c = &s->conns[i];
		if (c->fd < 0)
			return c;
		if (!c->out && (!oldest || c->deadline_ms < oldest->deadline_ms))
			oldest = c;
	}
	if (oldest)
		conn_close(oldest);
	return oldest;
}

static void accept_some(metrics_server *s, int64_t now)
{
	for (int k = 0; k < ACCEPTS_PER_WAKE; k++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd = accept4(s->listen_fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				s->paused_until_ms = now + ACCEPT_PAUSE_MS;
				watch(s, EPOLL_CTL_MOD, s->listen_fd, 0, ID_LISTEN);
			}
			return;
		}
		mconn *c = peer_allowed(s, &ss) ? take_slot(s) : NULL;
		if (!c) {
			if (peer_allowed(s, &ss))
				refuse_busy(fd);
			else
				close(fd);
			continue;
		}
		c->fd = fd;
		c->deadline_ms = now + METRICS_SERVER_DEADLINE_MS;
		httpreq_init(&c->req);
		if (watch(s, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLRDHUP, (uint32_t)(c - s->conns)) < 0)
			conn_close(c);
	}
}

/* Close the connections past their deadline; the epoll timeout until the next one (-1: none). */
static int sweep(metrics_server *s, int64_t now)
{
	int64_t next = INT64_MAX;

	if (s->paused_until_ms) {
		if (now >= s->paused_until_ms) {
			s->paused_until_ms = 0;
			watch(s, EPOLL_CTL_MOD, s->listen_fd, EPOLLIN, ID_LISTEN);
		} else {
			next = s->paused_until_ms;
		}
	}
	for (size_t i = 0; i < METRICS_SERVER_MAX_CONNS; i++) {
		mconn *c = &s->conns[i];
		if (c->fd < 0)
			continue;
		if (now >= c->deadline_ms)
			conn_close(c);
		else if (c->deadline_ms < next)
			next = c->deadline_ms;
	}
	return next == INT64_MAX ? -1 : (int)(next - now);
}

static void *serve(void *arg)
{
	metrics_server *s = arg;
	struct epoll_event evs[METRICS_SERVER_MAX_CONNS + 2];

	for (;;) {
		int64_t start = now_ms();
		int timeout = sweep(s, start);

		rates_tick(s->rates, start);
		int64_t tick = rates_next_ms(s->rates) - start;
		if (timeout < 0 || tick < timeout)
			timeout = tick < 0 ? 0 : (int)tick;
		int n = epoll_wait(s->epoll_fd, evs, METRICS_SERVER_MAX_CONNS + 2, timeout);
		int64_t now = now_ms();
		for (int i = 0; i < n; i++) {
			uint32_t id = evs[i].data.u32;
			if (id == ID_STOP)
				return NULL;
			if (id == ID_LISTEN) {
				accept_some(s, now);
				continue;
			}
			mconn *c = &s->conns[id];
			if (c->fd < 0)
				continue;
			if (c->out)
				conn_write(c);
			else
				conn_read(s, c);
		}
	}
}

int metrics_server_start(metrics_server *s, char *err, size_t errlen)
{
	int rc = pthread_create(&s->thread, NULL, serve, s);
	if (rc != 0) {
		snprintf(err, errlen, "metrics listener: cannot start its thread: %s", strerror(rc));
		return -1;
	}
	s->started = true;
	log_info("metrics listener on %s", s->cfg->metrics.listen);
	return 0;
}

void metrics_server_free(metrics_server *s)
{
	if (!s)
		return;
	if (s->started) {
		uint64_t one = 1;
		ssize_t ignored = write(s->stop_fd, &one, sizeof(one));
		(void)ignored;
		pthread_join(s->thread, NULL);
	}
	for (size_t i = 0; i < METRICS_SERVER_MAX_CONNS; i++)
		conn_close(&s->conns[i]);
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->epoll_fd >= 0)
		close(s->epoll_fd);
	if (s->stop_fd >= 0)
		close(s->stop_fd);
	/* Best effort: after dropping privileges the directory may not be ours. */
	if (s->unix_path)
		unlink(s->unix_path);
	free(s->unix_path);
	config_unref(s->cfg);
	rates_free(s->rates);
	free(s);
}
