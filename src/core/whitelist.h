/*
 * whitelist: client networks that spamtrapd never blocklists and never
 * rejects, and senders (by address, or by domain and optionally its
 * subdomains) whose sender-derived keys it never blocklists. A sender can
 * be forged, so the caller decides how far a sender match reaches
 * (decide.c: the whole transaction only when the sender is verified).
 * Built once per config snapshot; read-only afterwards.
 */
#ifndef SPAMTRAPD_WHITELIST_H
#define SPAMTRAPD_WHITELIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct whitelist whitelist;

typedef enum {
	WHITELIST_NONE = 0,
	WHITELIST_SENDER_ADDRESS,
	WHITELIST_SENDER_DOMAIN,
	WHITELIST_CLIENT_NETWORK,
} whitelist_match;

whitelist *whitelist_new(bool include_subdomains);
void whitelist_free(whitelist *wl); /* accepts NULL */

/* Each returns 0, or -1 with a message in err. */
int whitelist_add_domain(whitelist *wl, const char *domain, char *err, size_t errlen);
int whitelist_add_address(whitelist *wl, const char *address, char *err, size_t errlen);
int whitelist_add_network(whitelist *wl, const char *network, char *err, size_t errlen);
/*
 * One line of a whitelist file: an address ("user@example.org"), a domain
 * ("example.org" or "@example.org"), or a network ("192.0.2.0/24",
 * "2001:db8::/32", a bare IP). The caller skips blanks and '#' comments.
 */
int whitelist_add_line(whitelist *wl, const char *line, char *err, size_t errlen);

/*
 * sender: normalised sender address ("" for the null sender, NULL unknown);
 * client_address: as Postfix reports it (NULL or "unknown" when unknown).
 * The first match of: client network, sender address, sender domain.
 */
whitelist_match whitelist_check(const whitelist *wl, const char *sender, const char *client_address);

/* The two halves of whitelist_check, for callers that need both answers. */
bool whitelist_check_client(const whitelist *wl, const char *client_address);
/* WHITELIST_SENDER_ADDRESS, WHITELIST_SENDER_DOMAIN or WHITELIST_NONE. */
whitelist_match whitelist_check_sender(const whitelist *wl, const char *sender);

#endif
