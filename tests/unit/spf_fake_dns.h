/*
 * spf_fake_dns: an spf_resolver over zone data in JSON (the form
 * tests/data/spf/yaml2json.py writes: {name: {"TXT": [...], "A": [...],
 * "AAAA", "MX", "PTR", "CNAME", "timeout": bool}}), for the SPF tests.
 *
 * Synchronous mode answers from inside submit() (a resolver cache hit);
 * deferred mode queues the queries and fake_dns_run() answers them later,
 * in order, as an event loop would. A name lists the records it has; a
 * type it has none of is NODATA, or a timeout when "timeout" is set; a
 * name not in the zone is NXDOMAIN. CNAMEs are followed, a loop is a
 * failure.
 */
#ifndef SPAMTRAPD_SPF_FAKE_DNS_H
#define SPAMTRAPD_SPF_FAKE_DNS_H

#include <arpa/inet.h>
#include <ctype.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spf/spf.h"

#define FAKE_DNS_MAX_RR 64

struct fake_query {
	char name[256];
	enum spf_rrtype type;
	spf_dns_cb cb;
	void *arg;
	uint64_t id;
	bool cancelled;
};

struct fake_dns {
	json_t *zone; /* borrowed */
	bool deferred;
	struct fake_query *queue;
	size_t head, n, cap;
	uint64_t next_id;
	unsigned submitted, cancelled;
	size_t longest; /* the longest name asked about */
};

static const char *const fake_dns_types[] = {"A", "AAAA", "MX", "TXT", "PTR"};

static inline json_t *fake_dns_node(struct fake_dns *d, const char *name)
{
	char key[256];
	size_t n = 0;
	for (; name[n] && n < sizeof(key) - 1; n++)
		key[n] = (char)tolower((unsigned char)name[n]);
	key[n] = '\0';
	while (n > 0 && key[n - 1] == '.')
		key[--n] = '\0';
	return json_object_get(d->zone, key);
}

static inline void fake_dns_answer(struct fake_dns *d, const char *name, enum spf_rrtype type, spf_dns_cb cb,
                                   void *arg)
{
	struct spf_dns_rr rr[FAKE_DNS_MAX_RR];
	unsigned char addr[FAKE_DNS_MAX_RR][16];
	struct spf_dns_answer ans = {.status = SPF_DNS_NXDOMAIN, .rr = rr};
	json_t *node = fake_dns_node(d, name);
	for (int hops = 0; node; hops++) {
		json_t *cname = json_object_get(node, "CNAME");
		if (json_array_size(cname) == 0)
			break;
		if (hops == 8) {
			node = NULL;
			ans.status = SPF_DNS_TEMPFAIL; /* CNAME loop */
			break;
		}
		node = fake_dns_node(d, json_string_value(json_array_get(cname, 0)));
	}
	if (!node) {
		cb(arg, &ans);
		return;
	}
	json_t *list = json_object_get(node, fake_dns_types[type]);
	size_t i;
	json_t *v;
	json_array_foreach(list, i, v)
	{
		if (ans.count == FAKE_DNS_MAX_RR)
			break;
		const char *s = json_string_value(v);
		if (type == SPF_RR_A || type == SPF_RR_AAAA) {
			if (inet_pton(type == SPF_RR_A ? AF_INET : AF_INET6, s, addr[ans.count]) != 1)
				continue;
			rr[ans.count] = (struct spf_dns_rr){addr[ans.count], type == SPF_RR_A ? 4 : 16};
		} else {
			rr[ans.count] = (struct spf_dns_rr){(const unsigned char *)s, json_string_length(v)};
		}
		ans.count++;
	}
	if (ans.count > 0)
		ans.status = SPF_DNS_OK;
	else if (json_is_true(json_object_get(node, "timeout")))
		ans.status = SPF_DNS_TEMPFAIL;
	else
		ans.status = SPF_DNS_NODATA;
	cb(arg, &ans);
}

static inline int fake_dns_submit(void *ctx, const char *name, enum spf_rrtype type, spf_dns_cb cb, void *arg,
                                  uint64_t *id)
{
	struct fake_dns *d = ctx;
	d->submitted++;
	if (strlen(name) > d->longest)
		d->longest = strlen(name);
	*id = ++d->next_id;
	if (!d->deferred) {
		fake_dns_answer(d, name, type, cb, arg);
		return 0;
	}
	if (d->head + d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 16;
		struct fake_query *q = realloc(d->queue, cap * sizeof(*q));
		if (!q)
			return -1;
		d->queue = q;
		d->cap = cap;
	}
	struct fake_query *q = &d->queue[d->head + d->n++];
	snprintf(q->name, sizeof(q->name), "%s", name);
	q->type = type;
	q->cb = cb;
	q->arg = arg;
	q->id = *id;
	q->cancelled = false;
	return 0;
}

static inline void fake_dns_cancel(void *ctx, uint64_t id)
{
	struct fake_dns *d = ctx;
	for (size_t i = d->head; i < d->head + d->n; i++)
		if (d->queue[i].id == id) {
			d->queue[i].cancelled = true;
			d->cancelled++;
		}
}

/* Answers the queued queries, and those their answers submit, in order. */
static inline void fake_dns_run(struct fake_dns *d)
{
	while (d->n > 0) {
		struct fake_query q = d->queue[d->head++];
		d->n--;
		if (d->n == 0)
			d->head = 0;
		if (!q.cancelled)
			fake_dns_answer(d, q.name, q.type, q.cb, q.arg);
	}
}

static inline struct spf_resolver fake_dns_resolver(struct fake_dns *d)
{
	return (struct spf_resolver){.submit = fake_dns_submit, .cancel = fake_dns_cancel, .ctx = d};
}

static inline void fake_dns_free(struct fake_dns *d)
{
	free(d->queue);
	d->queue = NULL;
	d->head = d->n = d->cap = 0;
}

#endif
