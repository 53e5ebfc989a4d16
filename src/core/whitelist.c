/*
 * whitelist: trusted senders and client networks (see whitelist.h).
 *
 * whitelist_check() tries, in order: the client network (netset), the
 * sender address (exact, normalised), the sender domain (exact; with
 * include_subdomains also every parent domain of the sender's, each one
 * hash lookup: "a.b.example.org" tries "b.example.org" and "example.org").
 * An unknown client address ("unknown" or NULL) never matches a network;
 * the null sender never matches an address or a domain. Building reports
 * errors into the caller's buffer; checking cannot fail.
 */
#include "core/whitelist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"
#include "core/netset.h"
#include "core/strset.h"
#include "core/text.h"

/* RFC 1035 2.3.4: a domain name is at most 255 octets. */

struct whitelist {
	bool include_subdomains;
	strset *domains;
	strset *addresses;
	netset *networks;
};

whitelist *whitelist_new(bool include_subdomains)
{
	whitelist *wl = calloc(1, sizeof(*wl));

	if (wl == NULL)
		return NULL;
	wl->include_subdomains = include_subdomains;
	wl->domains = strset_new(16);
	wl->addresses = strset_new(16);
	wl->networks = netset_new();
	if (wl->domains == NULL || wl->addresses == NULL || wl->networks == NULL) {
		whitelist_free(wl);
		return NULL;
	}
	return wl;
}

void whitelist_free(whitelist *wl)
{
	if (wl == NULL)
		return;
	strset_free(wl->domains);
	strset_free(wl->addresses);
	netset_free(wl->networks);
	free(wl);
}

int whitelist_add_domain(whitelist *wl, const char *domain, char *err, size_t errlen)
{
	char norm[ADDR_DOMAIN_MAX + 1];

	if (!addr_domain_normalise(domain, norm, sizeof(norm))) {
		snprintf(err, errlen, "'%.64s' is not a domain (expected example.org)", domain);
		return -1;
	}
	if (strset_add(wl->domains, norm, strlen(norm)) != 0) {
		snprintf(err, errlen, "out of memory adding whitelisted domain %.64s", norm);
		return -1;
	}
	return 0;
}

int whitelist_add_address(whitelist *wl, const char *address, char *err, size_t errlen)
{
	char norm[ADDR_MAX];

	if (!addr_entry_normalise(address, norm, sizeof(norm))) {
		snprintf(err, errlen, "'%.64s' is not an address (expected user@example.org)", address);
		return -1;
	}
	if (strset_add(wl->addresses, norm, strlen(norm)) != 0) {
		snprintf(err, errlen, "out of memory adding whitelisted address %.64s", norm);
		return -1;
	}
	return 0;
}

int whitelist_add_network(whitelist *wl, const char *network, char *err, size_t errlen)
{
	return netset_add_text(wl->networks, network, err, errlen);
}

/* IPv6 text has a ':', networks a '/', IPv4 only digits and dots. */
static bool looks_like_network(const char *s)
{
	return strchr(s, ':') != NULL || strchr(s, '/') != NULL || strspn(s, "0123456789.") == strlen(s);
}

/* Dispatch a trimmed, NUL-terminated whitelist entry by its form. */
static int add_entry(whitelist *wl, const char *s, char *err, size_t errlen)
{
	if (s[0] == '\0') {
		snprintf(err, errlen, "empty whitelist entry");
		return -1;
	}
	if (s[0] == '@')
		return whitelist_add_domain(wl, s, err, errlen);
	if (strchr(s, '@') != NULL)
		return whitelist_add_address(wl, s, err, errlen);
	if (looks_like_network(s))
		return whitelist_add_network(wl, s, err, errlen);
	return whitelist_add_domain(wl, s, err, errlen);
}

int whitelist_add_line(whitelist *wl, const char *line, char *err, size_t errlen)
{
	char *copy = text_trim_dup(line);
	int rc;

	if (copy == NULL) {
		snprintf(err, errlen, "out of memory reading a whitelist entry");
		return -1;
	}
	rc = add_entry(wl, copy, err, errlen);
	free(copy);
	return rc;
}

static bool client_whitelisted(const whitelist *wl, const char *client_address)
{
	addr_ip ip;

	if (client_address == NULL || strcmp(client_address, "unknown") == 0)
		return false;
	return addr_ip_parse(client_address, &ip) && netset_contains(wl->networks, &ip);
}

static bool domain_whitelisted(const whitelist *wl, const char *domain)
{
	if (strset_contains(wl->domains, domain, strlen(domain)))
		return true;
	if (!wl->include_subdomains)
		return false;
	for (const char *dot = strchr(domain, '.'); dot != NULL; dot = strchr(dot + 1, '.')) {
		if (dot[1] != '\0' && strset_contains(wl->domains, dot + 1, strlen(dot + 1)))
			return true;
	}
	return false;
}

bool whitelist_check_client(const whitelist *wl, const char *client_address)
{
	return wl != NULL && client_whitelisted(wl, client_address);
}

whitelist_match whitelist_check_sender(const whitelist *wl, const char *sender)
{
	char norm[ADDR_MAX];
	const char *domain;

	if (wl == NULL)
		return WHITELIST_NONE;
	/* Normalise again so that a caller's raw "<User@Example.ORG>" compares too. */
	if (sender == NULL || addr_normalise(sender, strlen(sender), norm, sizeof(norm)) != ADDR_OK)
		return WHITELIST_NONE;
	if (strset_contains(wl->addresses, norm, strlen(norm)))
		return WHITELIST_SENDER_ADDRESS;
	domain = addr_domain(norm);
	if (domain != NULL && domain_whitelisted(wl, domain))
		return WHITELIST_SENDER_DOMAIN;
	return WHITELIST_NONE;
}

whitelist_match whitelist_check(const whitelist *wl, const char *sender, const char *client_address)
{
	if (whitelist_check_client(wl, client_address))
		return WHITELIST_CLIENT_NETWORK;
	return whitelist_check_sender(wl, sender);
}
