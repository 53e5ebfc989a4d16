#include "core/dnsplan.h"

#include <stdio.h>
#include <string.h>

void dnsplan_init(dnsplan *p)
{
	p->timeout_ms = 0;
	p->nlookups = 0;
	p->spf.wanted = false;
	p->spf.done = false;
	for (int i = 0; i < DNSPLAN_SPF_PROBES; i++)
		p->probe[i].wanted = p->probe[i].done = false;
}

bool dnsplan_empty(const dnsplan *p)
{
	return p->nlookups == 0 && !p->spf.wanted;
}

/* Copies src into dst[size]; false (dst untouched) when it does not fit. */
static bool copy_fits(char *dst, size_t size, const char *src)
{
	size_t n = strlen(src);

	if (n >= size)
		return false;
	memcpy(dst, src, n + 1);
	return true;
}

dnsplan_lookup *dnsplan_add(dnsplan *p, uint8_t owner, uint8_t tag, const char *name)
{
	dnsplan_lookup *l;

	if (p->nlookups >= DNSPLAN_MAX_LOOKUPS)
		return NULL;
	l = &p->lookup[p->nlookups];
	if (!copy_fits(l->name, sizeof(l->name), name))
		return NULL;
	l->owner = owner;
	l->tag = tag;
	l->status = DNSPLAN_PENDING;
	l->naddr = 0;
	p->nlookups++;
	return l;
}

/* s asks check_host() of that identity. */
static bool spf_ask(dnsplan_spf *s, const char *client, const char *mailfrom, const char *helo)
{
	if (strlen(client) >= sizeof(s->client) || strlen(mailfrom) >= sizeof(s->mailfrom) ||
	    strlen(helo) >= sizeof(s->helo))
		return false;
	strcpy(s->client, client);
	strcpy(s->mailfrom, mailfrom);
	strcpy(s->helo, helo);
	s->done = false;
	s->result = SPF_TEMPERROR;
	s->explanation[0] = s->reason[0] = '\0';
	s->wanted = true;
	return true;
}

bool dnsplan_want_spf(dnsplan *p, const char *client, const char *mailfrom, const char *helo)
{
	return p->spf.wanted || spf_ask(&p->spf, client, mailfrom, helo);
}

bool dnsplan_want_spf_probes(dnsplan *p)
{
	static const char *const probe_client[DNSPLAN_SPF_PROBES] = {DNSPLAN_SPF_PROBE_V4,
	                                                             DNSPLAN_SPF_PROBE_V6};

	if (!p->spf.wanted)
		return false;
	for (int i = 0; i < DNSPLAN_SPF_PROBES; i++)
		if (!p->probe[i].wanted &&
		    !spf_ask(&p->probe[i], probe_client[i], p->spf.mailfrom, p->spf.helo))
			return false;
	return true;
}

void dnsplan_timeout_at_least(dnsplan *p, int64_t ms)
{
	if (ms > p->timeout_ms)
		p->timeout_ms = ms;
}

static void spf_expire(dnsplan_spf *s)
{
	if (s->wanted && !s->done) {
		s->result = SPF_TEMPERROR;
		snprintf(s->reason, sizeof(s->reason), "no answer by the deadline");
	}
}

void dnsplan_expire(dnsplan *p)
{
	for (size_t i = 0; i < p->nlookups; i++)
		if (p->lookup[i].status == DNSPLAN_PENDING)
			p->lookup[i].status = DNSPLAN_TIMEOUT;
	spf_expire(&p->spf);
	for (int i = 0; i < DNSPLAN_SPF_PROBES; i++)
		spf_expire(&p->probe[i]);
}
