/*
 * policy_ref: the bare policy responder, the practical upper limit of a
 * policy server on this machine. It speaks just enough of the Postfix
 * policy protocol to be a fair reference: reads requests (lines ended by
 * an empty line, split anywhere across reads) and answers each with
 * "action=DUNNO". No parsing, no lookups: what is left is the cost of the
 * sockets and the event loop.
 *
 * Usage: policy_ref -p PORT [-t THREADS]. Each thread runs its own epoll
 * loop over the one listening socket (EPOLLEXCLUSIVE, so one accept per
 * new connection). Runs until SIGTERM or SIGINT.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_THREADS 64
#define REPLY "action=DUNNO\n\n"

typedef struct client {
	int fd;
	char last; /* the last byte of the previous read, to see "\n\n" split across reads */
} client;

static int listen_on(int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1024) < 0) {
		perror("policy_ref: listen");
		exit(2);
	}
	return fd;
}

/* How many requests end in buf[0..n), given the byte before it. */
static unsigned count_ends(char prev, const char *buf, size_t n)
{
	unsigned ends = 0;
	for (size_t i = 0; i < n; i++) {
		if (buf[i] == '\n' && prev == '\n')
			ends++;
		prev = buf[i];
	}
	return ends;
}

static void drop(int ep, client *c)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c);
}

static void serve(int ep, client *c)
{
	char buf[8192], out[64 * sizeof(REPLY)];
	for (;;) {
		ssize_t n = read(c->fd, buf, sizeof(buf));
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			drop(ep, c);
			return;
		}
		unsigned ends = count_ends(c->last, buf, (size_t)n);
		c->last = buf[n - 1];
		if (ends > 64)
			ends = 64; /* lock-step clients never send more than one */
		size_t len = 0;
		for (unsigned i = 0; i < ends; i++, len += sizeof(REPLY) - 1)
			memcpy(out + len, REPLY, sizeof(REPLY) - 1);
		if (len && write(c->fd, out, len) != (ssize_t)len) {
			drop(ep, c);
			return;
		}
		if ((size_t)n < sizeof(buf))
			return;
	}
}

static void accept_all(int ep, int lfd)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		client *c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			free(c);
		}
	}
}

static void *worker(void *arg)
{
	int lfd = *(int *)arg;
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = NULL};
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
		perror("policy_ref: epoll");
		exit(2);
	}
	struct epoll_event evs[256];
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr == NULL)
				accept_all(ep, lfd);
			else
				serve(ep, evs[i].data.ptr);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int port = 0, threads = 1, c;
	while ((c = getopt(argc, argv, "p:t:")) != -1) {
		if (c == 'p')
			port = atoi(optarg);
		else if (c == 't')
			threads = atoi(optarg);
		else
			port = -1;
	}
	if (port <= 0 || threads < 1 || threads > MAX_THREADS) {
		fprintf(stderr, "usage: policy_ref -p PORT [-t THREADS]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	int lfd = listen_on(port);
	pthread_t tids[MAX_THREADS];
	for (int i = 0; i < threads; i++)
		if (pthread_create(&tids[i], NULL, worker, &lfd) != 0) {
			fprintf(stderr, "policy_ref: cannot start a thread\n");
			return 2;
		}
	/* The default actions of SIGTERM and SIGINT end the process; the workers never return. */
	pthread_join(tids[0], NULL);
	return 0;
}
