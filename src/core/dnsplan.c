#include "core/dnsplan.h"

#include <stdio.h>
#include <string.h>

void dnsplan_init(dnsplan *p)
{
	p->timeout_ms = 0;
	p->nlookups = 0;
	p->spf.wanted = false;
	p->spf.done = false;
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

bool dnsplan_want_spf(dnsplan *p, const char *client, const char *mailfrom, const char *helo)
{
	dnsplan_spf *s = &p->spf;

	if (s->wanted)
		return true;
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

void dnsplan_timeout_at_least(dnsplan *p, int64_t ms)
{
	if (ms > p->timeout_ms)
		p->timeout_ms = ms;
}

void dnsplan_expire(dnsplan *p)
{
	for (size_t i = 0; i < p->nlookups; i++)
		if (p->lookup[i].status == DNSPLAN_PENDING)
			p->lookup[i].status = DNSPLAN_TIMEOUT;
	if (p->spf.wanted && !p->spf.done) {
		p->spf.result = SPF_TEMPERROR;
		snprintf(p->spf.reason, sizeof(p->spf.reason), "no answer by the deadline");
	}
}
