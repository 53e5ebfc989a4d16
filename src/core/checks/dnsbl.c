/* dnsbl: the client's DNSBL / DNSWL score (see dnsbl.h). */
#include "core/checks/dnsbl.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "core/checks/checks.h"
#include "core/text.h"

#define REPLY_REJECT "554 5.7.1 Service unavailable; client [%{client}] blocked using %{site}"
#define REPLY_DEFER "450 4.7.1 Service unavailable; client [%{client}] blocked using %{site}"
static const smtp_reply REPLY_DNS_ERROR = {
    "451", "4.7.1", "Service unavailable; DNS blocklists did not answer, try again later"};

static const check_key dnsbl_keys[] = {
    {"sites", CHECK_KEY_LIST, "[]", CHECK_KEY_AT(dnsbl_conf, sites)},
    {"threshold", CHECK_KEY_INT, "1", 1, DNSBL_SITES_MAX *DNSBL_WEIGHT_MAX,
     CHECK_KEY_AT(dnsbl_conf, threshold)},
    {"allowlist_threshold", CHECK_KEY_INT, "0", DNSBL_SITES_MAX *DNSBL_WEIGHT_MIN, 0,
     CHECK_KEY_AT(dnsbl_conf, allowlist_threshold)},
    {"action", CHECK_KEY_ENUM, "\"reject\"",
     .names = (const char *const[]){"reject", "defer", "greylist", NULL}, CHECK_KEY_AT(dnsbl_conf, action)},
    {"reply", CHECK_KEY_STRING, "null", 0, 400, .nullable = true, CHECK_KEY_AT(dnsbl_conf, reply)},
    {"reply_map", CHECK_KEY_MAP, "{}", CHECK_KEY_AT(dnsbl_conf, reply_map)},
    {"timeout", CHECK_KEY_DURATION, "\"3s\"", 1, 60, CHECK_KEY_AT(dnsbl_conf, timeout)},
    {"on_error", CHECK_KEY_ENUM, "\"continue\"", .names = (const char *const[]){"continue", "tempfail", NULL},
     CHECK_KEY_AT(dnsbl_conf, on_error)},
};

/* The placeholders of a reply: %{client} and %{site}, and nothing else. */
static bool placeholders_known(const char *text, const char *key, char *err, size_t errlen)
{
	for (const char *p = strstr(text, "%{"); p; p = strstr(p + 2, "%{"))
		if (strncmp(p, "%{client}", 9) != 0 && strncmp(p, "%{site}", 7) != 0) {
			snprintf(err, errlen,
			         "%s: unknown placeholder in \"%s\" (known: %%{client}, %%{site})", key,
			         text);
			return false;
		}
	return true;
}

/* text as the reply of action: a reject 5xx, a defer 4xx; false with err. */
static bool reply_compile(const dnsbl_conf *c, const char *text, const char *key, smtp_reply *out, char *err,
                          size_t errlen)
{
	char perr[256];

	if (!smtp_reply_parse(text, out, perr, sizeof(perr))) {
		snprintf(err, errlen, "%s: %s", key, perr);
		return false;
	}
	if (c->action == DNSBL_ACTION_REJECT && out->code[0] != '5') {
		snprintf(err, errlen, "%s: action reject needs a 5xx reply, not %s", key, out->code);
		return false;
	}
	if (c->action == DNSBL_ACTION_DEFER && out->code[0] != '4') {
		snprintf(err, errlen, "%s: action defer needs a 4xx reply, not %s", key, out->code);
		return false;
	}
	return placeholders_known(out->text, key, err, errlen);
}

static int sites_compile(dnsbl_conf *c, char *err, size_t errlen)
{
	char perr[256];

	if (c->sites.n > DNSBL_SITES_MAX) {
		snprintf(err, errlen, "sites: at most %d sites", DNSBL_SITES_MAX);
		return -1;
	}
	c->nsites = c->nnames = 0;
	for (size_t i = 0; i < c->sites.n; i++) {
		dnsbl_site *s = &c->site[i];
		size_t u = 0;

		if (!dnsbl_site_parse(c->sites.v[i], s, perr, sizeof(perr))) {
			snprintf(err, errlen, "sites[%zu]: \"%.200s\": %s", i, c->sites.v[i], perr);
			return -1;
		}
		/* A site listed twice (a DNSWL's trust levels, each its own weight) is one lookup. */
		while (u < i && strcmp(c->site[u].name, s->name) != 0)
			u++;
		c->lookup_of[i] = u < i ? c->lookup_of[u] : (uint8_t)c->nnames++;
		c->nsites++;
	}
	return 0;
}

/* The first site whose name is name, or -1. */
static int site_named(const dnsbl_conf *c, const char *name)
{
	dnsbl_site probe;
	char perr[256];

	/* The bare name, as in the site ("bl.example.org", not "bl.example.org=127.0.0.2"). */
	if (strpbrk(name, "=*") || !dnsbl_site_parse(name, &probe, perr, sizeof(perr)))
		return -1;
	for (size_t i = 0; i < c->nsites; i++)
		if (strcmp(c->site[i].name, probe.name) == 0)
			return (int)i;
	return -1;
}

static int dnsbl_compile(void *conf, char *err, size_t errlen)
{
	dnsbl_conf *c = conf;
	const char *reply = c->reply                          ? c->reply
	                    : c->action == DNSBL_ACTION_DEFER ? REPLY_DEFER
	                                                      : REPLY_REJECT;
	char key[300];

	if (sites_compile(c, err, errlen) < 0 ||
	    !reply_compile(c, reply, "reply", &c->reply_parsed, err, errlen))
		return -1;
	memset(c->map_reply, 0, sizeof(c->map_reply));
	for (size_t i = 0; i + 1 < c->reply_map.n; i += 2) {
		int s = site_named(c, c->reply_map.v[i]);

		snprintf(key, sizeof(key), "reply_map.%.200s", c->reply_map.v[i]);
		if (s < 0) {
			snprintf(err, errlen, "%s: not the name of a site of dnsbl.sites", key);
			return -1;
		}
		if (!reply_compile(c, c->reply_map.v[i + 1], key, &c->map_reply[c->lookup_of[s]], err,
		                   errlen))
			return -1;
	}
	return 0;
}

/* Whether site i is the first of its name (the one whose lookup is planned and reported). */
static bool first_of_name(const dnsbl_conf *c, size_t i)
{
	for (size_t k = 0; k < i; k++)
		if (c->lookup_of[k] == c->lookup_of[i])
			return false;
	return true;
}

static bool authenticated(const decide_facts *f)
{
	return f->sasl_username && *f->sasl_username;
}

/* Whether this recipient is scored at all (see dnsbl.h). */
static bool scored(const dnsbl_conf *c, const check_ctx *ctx)
{
	return c->nsites > 0 && ctx->stage == CHECK_STAGE_RCPT && ctx->txn->have_client &&
	       ctx->txn->whitelisted == WHITELIST_NONE && !authenticated(ctx->facts);
}

static void dnsbl_plan_dns(const void *vconf, const check_ctx *ctx, dnsplan *plan)
{
	const dnsbl_conf *c = vconf;
	char name[DNSPLAN_NAME_MAX];

	if (!scored(c, ctx))
		return;
	for (size_t i = 0; i < c->nsites; i++) {
		if (!first_of_name(c, i))
			continue;
		if (dnsbl_query_name(&ctx->txn->client, c->site[i].name, name, sizeof(name)) > 0)
			(void)dnsplan_add(plan, CHECK_ID_DNSBL, c->lookup_of[i], name);
	}
	dnsplan_timeout_at_least(plan, c->timeout * 1000);
}

/* This check's answer for distinct name u, or NULL (not asked, or no DNS at this stage). */
static const dnsplan_lookup *answer_of(const check_ctx *ctx, uint8_t u)
{
	if (ctx->dns == NULL)
		return NULL;
	for (size_t i = 0; i < ctx->dns->nlookups; i++)
		if (ctx->dns->lookup[i].owner == CHECK_ID_DNSBL && ctx->dns->lookup[i].tag == u)
			return &ctx->dns->lookup[i];
	return NULL;
}

static const char *status_name(dnsplan_status s)
{
	switch (s) {
	case DNSPLAN_PENDING:
	case DNSPLAN_TIMEOUT:
		return "timeout";
	case DNSPLAN_TEMPFAIL:
		return "tempfail";
	case DNSPLAN_NXDOMAIN:
		return "nxdomain";
	case DNSPLAN_NODATA:
		return "nodata";
	case DNSPLAN_FOUND:
		return "found";
	}
	return "?";
}

/* "127.0.0.2" into out (16 bytes at least), by hand: a listing's detail is written on every request it
 * scores. */
static void ip4_text(uint32_t a, char *out, size_t outlen)
{
	size_t o = 0;

	if (outlen < 16)
		return;
	for (int shift = 24; shift >= 0; shift -= 8) {
		o += text_put_u8(out + o, (unsigned char)(a >> shift));
		if (shift > 0)
			out[o++] = '.';
	}
	out[o] = '\0';
}

/* check_detail_add(v, " site=%s=%s*%d", ...) without snprintf: the same text, cut the same way. */
static void detail_site(check_verdict *v, const char *site, const char *addr, int weight)
{
	char piece[DNSPLAN_NAME_MAX + 48], num[16];
	size_t o = 0, n = 0, used = strnlen(v->detail, sizeof(v->detail));
	unsigned w = weight < 0 ? 0u - (unsigned)weight : (unsigned)weight;

	if (used + 1 >= sizeof(v->detail))
		return;
	do
		num[n++] = (char)('0' + w % 10);
	while ((w /= 10) > 0);
	o += text_copy(piece + o, sizeof(piece) - o, " site=");
	o += text_copy(piece + o, sizeof(piece) - o, site);
	o += text_copy(piece + o, sizeof(piece) - o, "=");
	o += text_copy(piece + o, sizeof(piece) - o, addr);
	o += text_copy(piece + o, sizeof(piece) - o, weight < 0 ? "*-" : "*");
	while (n > 0 && o + 1 < sizeof(piece))
		piece[o++] = num[--n];
	piece[o] = '\0';
	text_copy(v->detail + used, sizeof(v->detail) - used, piece);
}

/* What the answers say: the score, the site that named the client, what failed. */
typedef struct dnsbl_tally {
	int score;
	int best; /* the listing site of highest weight (%{site}), -1: none */
	size_t failed, bad;
	bool answered; /* at least one distinct name answered usably */
} dnsbl_tally;

/*
 * Name u's answer: whether it answered usably; its bad answers
 * (127.255.255.0/24, outside 127/8) and failures go into the detail.
 */
static bool name_answered(const dnsbl_conf *c, const check_ctx *ctx, size_t site, dnsbl_tally *t,
                          check_verdict *v)
{
	const dnsplan_lookup *l = answer_of(ctx, c->lookup_of[site]);
	char a[16];
	bool any_valid = false;

	if (l == NULL ||
	    (l->status != DNSPLAN_FOUND && l->status != DNSPLAN_NXDOMAIN && l->status != DNSPLAN_NODATA)) {
		t->failed++;
		check_detail_add(v, " failed=%s:%s", c->site[site].name,
		                 l ? status_name(l->status) : "no-dns");
		return false;
	}
	for (unsigned j = 0; j < l->naddr && j < DNSPLAN_MAX_ADDRS; j++) {
		if (dnsbl_answer_valid(l->addr[j])) {
			any_valid = true;
			continue;
		}
		t->bad++;
		ip4_text(l->addr[j], a, sizeof(a));
		check_detail_add(v, " bad_answer=%s:%s%s", c->site[site].name, a,
		                 (l->addr[j] >> 8) == 0x7fffffu ? "(query-refused)" : "");
	}
	if (l->status == DNSPLAN_FOUND && !any_valid) {
		t->failed++;
		return false;
	}
	return true;
}

/* Whether site i lists the client: one of its name's answers matches its filter (counted once). */
static bool site_listed(const dnsbl_conf *c, const check_ctx *ctx, size_t i, uint32_t *hit)
{
	const dnsplan_lookup *l = answer_of(ctx, c->lookup_of[i]);

	if (l == NULL || l->status != DNSPLAN_FOUND)
		return false;
	for (unsigned j = 0; j < l->naddr && j < DNSPLAN_MAX_ADDRS; j++)
		if (dnsbl_site_matches(&c->site[i], l->addr[j])) {
			*hit = l->addr[j];
			return true;
		}
	return false;
}

static void tally(const dnsbl_conf *c, const check_ctx *ctx, dnsbl_tally *t, check_verdict *v)
{
	char a[16];

	*t = (dnsbl_tally){.best = -1};
	for (size_t i = 0; i < c->nsites; i++) {
		uint32_t hit = 0;

		if (first_of_name(c, i) && name_answered(c, ctx, i, t, v))
			t->answered = true;
		if (!site_listed(c, ctx, i, &hit))
			continue;
		t->score += c->site[i].weight;
		ip4_text(hit, a, sizeof(a));
		detail_site(v, c->site[i].name, a, c->site[i].weight);
		if (c->site[i].weight > 0 && (t->best < 0 || c->site[i].weight > c->site[t->best].weight))
			t->best = (int)i;
	}
}

/* text with %{client} and %{site} replaced, cut to fit out. */
static void expand(const char *text, const char *client, const char *site, char *out, size_t outlen)
{
	size_t o = 0;

	while (*text && o + 1 < outlen) {
		const char *val = NULL;
		size_t skip = 0, n;

		if (strncmp(text, "%{client}", 9) == 0)
			val = client, skip = 9;
		else if (strncmp(text, "%{site}", 7) == 0)
			val = site, skip = 7;
		if (val == NULL) {
			out[o++] = *text++;
			continue;
		}
		n = strlen(val);
		if (n > outlen - 1 - o)
			n = outlen - 1 - o;
		memcpy(out + o, val, n);
		o += n;
		text += skip;
	}
	out[o] = '\0';
}

/*
 * The score's class for the greylist (check_msg.dnsbl). A shadow dnsbl
 * hands nothing over: trying it must not change whom the greylist defers.
 */
static void hand_over(const check_ctx *ctx, check_effects *eff, uint8_t what)
{
	eff->msg.dnsbl = ctx->mode == CHECK_MODE_SHADOW ? CHECK_DNSBL_UNSCORED : what;
}

static void listed(const dnsbl_conf *c, const check_ctx *ctx, const dnsbl_tally *t, check_verdict *v,
                   check_effects *eff)
{
	/* A score reached by positive weights has a best site; a threshold only reached otherwise cannot be.
	 */
	int best = t->best >= 0 ? t->best : 0;
	const smtp_reply *tmpl =
	    c->map_reply[c->lookup_of[best]].code[0] ? &c->map_reply[c->lookup_of[best]] : &c->reply_parsed;
	smtp_reply r = *tmpl;
	const char *client = ctx->facts->client_address ? ctx->facts->client_address : "unknown";

	hand_over(ctx, eff, CHECK_DNSBL_LISTED);
	switch ((dnsbl_action)c->action) {
	case DNSBL_ACTION_GREYLIST:
		check_verdict_set(v, DECIDE_CONTINUE, "dnsbl listed, to be greylisted", NULL);
		return;
	case DNSBL_ACTION_REJECT:
	case DNSBL_ACTION_DEFER:
		expand(tmpl->text, client, c->site[best].name, r.text, sizeof(r.text));
		check_verdict_set(v, c->action == DNSBL_ACTION_REJECT ? DECIDE_REJECT : DECIDE_TEMPFAIL,
		                  "dnsbl listed", &r);
		return;
	}
}

static void dnsbl_decide(const void *vconf, const check_ctx *ctx, void *scratch, const query *answers,
                         size_t nanswers, check_verdict *v, check_effects *eff)
{
	const dnsbl_conf *c = vconf;
	dnsbl_tally t;

	(void)scratch;
	(void)answers;
	(void)nanswers;
	eff->msg.dnsbl = CHECK_DNSBL_UNSCORED;
	eff->msg.dnsbl_score = 0;
	if (!scored(c, ctx))
		return;
	tally(c, ctx, &t, v);
	if (!t.answered) {
		/* Nothing usable came back: not listed, and the admin's on_error says what else. */
		if (c->on_error == DNSBL_ON_ERROR_TEMPFAIL)
			check_verdict_set(v, DECIDE_TEMPFAIL, "dnsbl-error", &REPLY_DNS_ERROR);
		else
			check_verdict_set(v, DECIDE_CONTINUE, "dnsbl-error", NULL);
		v->log_limited = v->action == DECIDE_CONTINUE;
		return;
	}
	eff->msg.dnsbl_score = (int16_t)t.score;
	check_detail_add(v, " score=%d", t.score);
	if (t.score >= c->threshold) {
		listed(c, ctx, &t, v, eff);
		return;
	}
	if (c->allowlist_threshold < 0 && t.score <= c->allowlist_threshold) {
		hand_over(ctx, eff, CHECK_DNSBL_ALLOWLISTED);
		check_verdict_set(v, DECIDE_CONTINUE, "dnsbl allowlisted", NULL);
		v->quiet = t.bad == 0;
		v->log_limited = t.bad > 0;
		return;
	}
	hand_over(ctx, eff, CHECK_DNSBL_CLEAN);
	if (t.bad > 0) { /* a list answering nonsense must be seen, even when the client is clean */
		check_verdict_set(v, DECIDE_CONTINUE, "dnsbl-error", NULL);
		v->log_limited = true;
	} else if (t.score != 0 || t.failed > 0) {
		check_verdict_set(v, DECIDE_CONTINUE, t.failed > 0 ? "dnsbl-error" : "dnsbl scored", NULL);
		v->quiet = true;
	}
}

const check_def check_dnsbl = {
    .name = "dnsbl",
    .stages = CHECK_STAGE_RCPT,
    .default_mode = CHECK_MODE_OFF,
    .conf_size = sizeof(dnsbl_conf),
    .keys = dnsbl_keys,
    .nkeys = sizeof(dnsbl_keys) / sizeof(dnsbl_keys[0]),
    .compile = dnsbl_compile,
    .plan_dns = dnsbl_plan_dns,
    .decide = dnsbl_decide,
};
