/*
 * libFuzzer target for src/spf. Byte 0 holds flags: bit 0 an IPv6 client,
 * bit 1 answers given later from a queue (else from inside submit()),
 * bit 2 address answers that contain the client, bit 3 every name exists
 * (else NXDOMAIN but for TXT), bit 4 address lookups time out. The rest,
 * up to a first newline, is the TXT record every TXT query gets (the SPF
 * record of every domain, and exp= text); after it, the sender's local
 * part. MX and PTR queries get three names each. The record also goes
 * through spf_record_parse and spf_macro_expand directly. Invariants
 * beyond "no crash":
 *
 * - the completion callback runs exactly once, with a result in range and
 *   an explanation of at most SPF_MAX_EXPLANATION characters, only on fail;
 * - at most 11 mechanisms/modifiers are counted, and the queries of one
 *   evaluation are bounded (each counted term asks at most 1 + 10 names,
 *   plus the %{p} validation and exp=);
 * - every name queried is 1 to 253 printable characters without a
 *   trailing dot;
 * - spf_macro_valid agrees with spf_macro_expand, and an expanded domain
 *   has at most 253 characters;
 * - a parsed record starts with "v=spf1".
 */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "spf/spf.h"
#include "spf/spf_macro.h"
#include "spf/spf_record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_QUERIES (SPF_MAX_DNS_LOOKUPS * (1 + SPF_MAX_MX_NAMES) + 2 * (1 + SPF_MAX_PTR_NAMES) + 4)

struct pending {
	enum spf_rrtype type;
	spf_dns_cb cb;
	void *arg;
};

struct dns {
	unsigned flags;
	const char *txt;
	size_t txt_len;
	unsigned char client[16];
	struct pending queue[MAX_QUERIES + 8];
	size_t head, n;
	unsigned submitted;
};

struct box {
	int calls;
	struct spf_outcome out;
	size_t explanation_len;
};

static void answer(struct dns *d, enum spf_rrtype type, spf_dns_cb cb, void *arg)
{
	static const char *const names[] = {"mx1.example.com", "mx2.example.com.", "mx3.other.example"};
	static const unsigned char other[16] = {198, 51, 100, 1};
	struct spf_dns_rr rr[3];
	struct spf_dns_answer ans = {.status = SPF_DNS_OK, .rr = rr, .count = 0};
	bool exists = d->flags & 8;
	switch (type) {
	case SPF_RR_TXT:
		rr[ans.count++] = (struct spf_dns_rr){(const unsigned char *)d->txt, d->txt_len};
		break;
	case SPF_RR_MX:
	case SPF_RR_PTR:
		for (size_t i = 0; i < 3 && exists; i++)
			rr[ans.count++] =
			    (struct spf_dns_rr){(const unsigned char *)names[i], strlen(names[i])};
		break;
	case SPF_RR_A:
	case SPF_RR_AAAA:
		if (d->flags & 16) {
			ans.status = SPF_DNS_TEMPFAIL;
			break;
		}
		if (exists)
			rr[ans.count++] = (struct spf_dns_rr){other, type == SPF_RR_A ? 4u : 16u};
		if (exists && (d->flags & 4))
			rr[ans.count++] = (struct spf_dns_rr){d->client, type == SPF_RR_A ? 4u : 16u};
		break;
	}
	if (ans.status == SPF_DNS_OK && ans.count == 0)
		ans.status = exists ? SPF_DNS_NODATA : SPF_DNS_NXDOMAIN;
	cb(arg, &ans);
}

static int submit(void *ctx, const char *name, enum spf_rrtype type, spf_dns_cb cb, void *arg, uint64_t *id)
{
	struct dns *d = ctx;
	size_t len = strlen(name);
	CHECK(len >= 1 && len <= 253 && name[len - 1] != '.');
	for (size_t i = 0; i < len; i++)
		CHECK(name[i] >= 0x20 && name[i] < 0x7f);
	CHECK(++d->submitted <= MAX_QUERIES);
	*id = d->submitted;
	if (!(d->flags & 2)) {
		answer(d, type, cb, arg);
		return 0;
	}
	CHECK(d->head + d->n < sizeof(d->queue) / sizeof(d->queue[0]));
	d->queue[d->head + d->n++] = (struct pending){type, cb, arg};
	return 0;
}

static void on_done(void *arg, const struct spf_outcome *out)
{
	struct box *b = arg;
	b->calls++;
	b->out = *out;
	CHECK(out->result >= SPF_NONE && out->result <= SPF_PERMERROR);
	CHECK(out->reason != NULL);
	if (out->explanation) {
		CHECK(out->result == SPF_FAIL);
		b->explanation_len = strlen(out->explanation);
		CHECK(b->explanation_len <= SPF_MAX_EXPLANATION);
	}
}

static void evaluate(unsigned flags, const char *txt, size_t txt_len, const char *local)
{
	struct dns d = {.flags = flags, .txt = txt, .txt_len = txt_len};
	struct spf_resolver res = {.submit = submit, .ctx = &d};
	struct spf_request req = {.mailfrom = NULL, .helo = "helo.example.org", .now = 1};
	char mailfrom[300];
	snprintf(mailfrom, sizeof(mailfrom), "%s@example.com", local);
	req.mailfrom = mailfrom;
	req.family = (flags & 1) ? AF_INET6 : AF_INET;
	inet_pton(req.family, (flags & 1) ? "2001:db8::7" : "192.0.2.7", req.ip);
	memcpy(d.client, req.ip, sizeof(d.client));
	struct box b = {0};
	spf_eval *ev = spf_new(&req, &res, on_done, &b);
	CHECK(ev != NULL);
	spf_start(ev);
	while (d.n > 0) {
		struct pending p = d.queue[d.head++];
		d.n--;
		answer(&d, p.type, p.cb, p.arg);
	}
	CHECK(b.calls == 1);
	CHECK(spf_dns_lookups(ev) <= SPF_MAX_DNS_LOOKUPS + 1);
	spf_free(ev);
}

static void macros(const char *s, size_t len)
{
	static const unsigned char ip[16] = {192, 0, 2, 7};
	struct spf_macro_vars v = {.sender = "a-b@c.example.com",
	                           .local = "a-b",
	                           .domain_o = "c.example.com",
	                           .domain = "d.example.com",
	                           .family = AF_INET,
	                           .ip = ip,
	                           .helo = "h.example",
	                           .receiver = "r.example",
	                           .now = 7};
	char out[300];
	for (int kind = SPF_MACRO_DOMAIN; kind <= SPF_MACRO_EXPLAIN; kind++) {
		bool valid = spf_macro_valid(s, len, (enum spf_macro_kind)kind);
		int rc = spf_macro_expand(s, len, (enum spf_macro_kind)kind, &v, out, sizeof(out));
		CHECK(valid == (rc == 0));
		if (rc == 0) {
			CHECK_TERMINATED(out, sizeof(out));
			CHECK(kind != SPF_MACRO_DOMAIN || strlen(out) <= 253);
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 8192)
		return 0;
	unsigned flags = data[0];
	const char *txt = (const char *)data + 1;
	size_t rest = size - 1;
	const char *nl = memchr(txt, '\n', rest);
	size_t txt_len = nl ? (size_t)(nl - txt) : rest;
	char local[65] = "user";
	if (nl) {
		size_t l = rest - txt_len - 1;
		l = l < sizeof(local) - 1 ? l : sizeof(local) - 1;
		memcpy(local, nl + 1, l);
		local[l] = '\0';
	}
	struct spf_record rec;
	char err[160];
	if (spf_record_parse(txt, txt_len, &rec, err, sizeof(err)) == 0) {
		CHECK(spf_record_is_spf1(txt, txt_len));
		spf_record_clear(&rec);
	} else {
		CHECK_TERMINATED(err, sizeof(err));
	}
	macros(txt, txt_len);
	evaluate(flags, txt, txt_len, local);
	return 0;
}
