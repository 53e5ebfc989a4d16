/*
 * milter_ref: the no-op libmilter filter, the practical upper limit of a
 * libmilter-based filter on this machine. It answers every envelope step
 * (connect, HELO, MAIL, RCPT) with "continue" and negotiates away only
 * what a filter that never looks at the message would: headers, end of
 * headers, body, DATA and unknown commands. It keeps no state and makes
 * no lookups, so what is left is the cost of libmilter and the sockets.
 *
 * Usage: milter_ref -p PORT. Listens on inet:PORT@127.0.0.1 until
 * SIGTERM or SIGINT (libmilter's own signal handling).
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static sfsistat ref_connect(SMFICTX *ctx, char *host, struct sockaddr *sa)
{
	(void)ctx, (void)host, (void)sa;
	return SMFIS_CONTINUE;
}

static sfsistat ref_helo(SMFICTX *ctx, char *helo)
{
	(void)ctx, (void)helo;
	return SMFIS_CONTINUE;
}

static sfsistat ref_envelope(SMFICTX *ctx, char **argv)
{
	(void)ctx, (void)argv;
	return SMFIS_CONTINUE;
}

static sfsistat ref_abort(SMFICTX *ctx)
{
	(void)ctx;
	return SMFIS_CONTINUE;
}

static sfsistat ref_close(SMFICTX *ctx)
{
	(void)ctx;
	return SMFIS_CONTINUE;
}

/* Keep every envelope step and its reply; drop what a no-op filter never reads. */
static sfsistat ref_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
                              unsigned long f3, unsigned long *pf0, unsigned long *pf1, unsigned long *pf2,
                              unsigned long *pf3)
{
	(void)ctx, (void)f0, (void)f2, (void)f3;
	*pf0 = 0;
	*pf1 = f1 & (SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOBODY | SMFIP_NODATA | SMFIP_NOUNKNOWN);
	*pf2 = 0;
	*pf3 = 0;
	return SMFIS_CONTINUE;
}

int main(int argc, char **argv)
{
	static char name[] = "milter_ref";
	struct smfiDesc desc = {
	    .xxfi_name = name,
	    .xxfi_version = SMFI_VERSION,
	    .xxfi_connect = ref_connect,
	    .xxfi_helo = ref_helo,
	    .xxfi_envfrom = ref_envelope,
	    .xxfi_envrcpt = ref_envelope,
	    .xxfi_abort = ref_abort,
	    .xxfi_close = ref_close,
	    .xxfi_negotiate = ref_negotiate,
	};
	char conn[64];
	int port = 0, c;
	while ((c = getopt(argc, argv, "p:")) != -1)
		port = c == 'p' ? atoi(optarg) : -1;
	if (port <= 0) {
		fprintf(stderr, "usage: milter_ref -p PORT\n");
		return 2;
	}
	snprintf(conn, sizeof(conn), "inet:%d@127.0.0.1", port);
	if (smfi_setconn(conn) == MI_FAILURE || smfi_register(desc) == MI_FAILURE) {
		fprintf(stderr, "milter_ref: cannot register the filter on %s\n", conn);
		return 2;
	}
	smfi_setbacklog(1024);
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
