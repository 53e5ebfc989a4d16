/* greylist: the greylisting check (see greylist.h). */
#include "core/checks/greylist.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/checks/spf.h"
#include "core/greynorm.h"
#include "core/greystep.h"
#include "core/hash.h"

static const smtp_reply REPLY_STORE_ERROR = {"451", "4.3.0", "Temporary local problem, try again later"};
/* The sender key of an envelope sender Postfix let through but spamtrapd cannot read: one triplet. */
static const char INVALID_SENDER_KEY[] = "<invalid>";
/* The recipient key when the front end could not hand the recipient over (cut at its cap). */
static const char MISSING_RCPT_KEY[] = "<invalid>";

typedef enum {
	GREY_ASK,                /* the triplet is looked up */
	GREY_SKIP,               /* nothing to say: no client address, a key too long */
	GREY_SKIP_AUTHENTICATED, /* SASL clients are never greylisted */
	GREY_SKIP_CLIENT_LISTED, /* greylist.clients / client_files */
	GREY_SKIP_RCPT_LISTED,   /* greylist.recipients / recipient_files */
	GREY_SKIP_DNSWL,         /* the dnsbl check allowlisted the client (dnsbl.allowlist_threshold) */
	GREY_SKIP_NOT_LISTED,    /* apply "listed": the dnsbl check did not list the client */
} grey_plan;

/* What needs() worked out, for decide(). */
typedef struct grey_scratch {
	grey_plan plan;
	char triplet[GREYSTEP_KEY_MAX];
	char awl[ADDR_NET_STRLEN];
	char why[GREYWL_WHY_MAX];
	int dnsbl_score;
} grey_scratch;

_Static_assert(sizeof(grey_scratch) <= CHECK_SCRATCH_MAX, "CHECK_SCRATCH_MAX too small for greylist");

static const check_key greylist_keys[] = {
    {"delay", CHECK_KEY_DURATION, "\"5m\"", 0, 86400 * 7, CHECK_KEY_AT(greylist_conf, delay)},
    {"retry_window", CHECK_KEY_DURATION, "\"2d\"", 60, 86400 * 60, CHECK_KEY_AT(greylist_conf, retry_window)},
    {"max_age", CHECK_KEY_DURATION, "\"35d\"", 3600, 86400 * 3650, CHECK_KEY_AT(greylist_conf, max_age)},
    {"ipv4_prefix", CHECK_KEY_INT, "24", 8, 32, CHECK_KEY_AT(greylist_conf, ipv4_prefix)},
    {"ipv6_prefix", CHECK_KEY_INT, "64", 16, 128, CHECK_KEY_AT(greylist_conf, ipv6_prefix)},
    {"awl_count", CHECK_KEY_INT, "5", 0, 1000000, CHECK_KEY_AT(greylist_conf, awl_count)},
    {"awl_by", CHECK_KEY_ENUM, "\"address\"", .names = (const char *const[]){"address", "network", NULL},
     CHECK_KEY_AT(greylist_conf, awl_by)},
    {"apply", CHECK_KEY_ENUM, "\"all\"", .names = (const char *const[]){"all", "listed", NULL},
     CHECK_KEY_AT(greylist_conf, apply)},
    {"null_sender_at", CHECK_KEY_ENUM, "\"data\"", .names = (const char *const[]){"data", "rcpt", NULL},
     CHECK_KEY_AT(greylist_conf, null_sender_at)},
    {"on_error", CHECK_KEY_ENUM, "\"continue\"", .names = (const char *const[]){"continue", "tempfail", NULL},
     CHECK_KEY_AT(greylist_conf, on_error)},
    {"maintenance", CHECK_KEY_BOOL, "true", CHECK_KEY_AT(greylist_conf, maintenance)},
    {"max_triplets", CHECK_KEY_INT, "1000000", 0, INT64_C(1000000000),
     CHECK_KEY_AT(greylist_conf, max_triplets)},
    {"reply", CHECK_KEY_STRING, "\"450 4.2.0 Greylisted, try again in %{remaining} seconds\"", 0, 400,
     CHECK_KEY_AT(greylist_conf, reply)},
    {"header", CHECK_KEY_BOOL, "false", CHECK_KEY_AT(greylist_conf, header)},
    {"spf_key", CHECK_KEY_BOOL, "false", CHECK_KEY_AT(greylist_conf, spf_key)},
    {"header_text", CHECK_KEY_STRING, "\"X-Greylist: delayed %{delay} seconds by spamtrapd; %{date}\"", 0,
     200, CHECK_KEY_AT(greylist_conf, header_text)},
};

/* Placeholders a text may hold: %{name} for each name given, and nothing else. */
static bool placeholders_known(const char *text, const char *const *names, char *err, size_t errlen,
                               const char *key)
{
	for (const char *p = strstr(text, "%{"); p; p = strstr(p + 2, "%{")) {
		const char *end = strchr(p, '}');
		bool known = false;

		for (size_t i = 0; end && names[i]; i++)
			known |= (size_t)(end - p - 2) == strlen(names[i]) &&
			         strncmp(p + 2, names[i], end - p - 2) == 0;
		if (!known) {
			snprintf(err, errlen, "%s: unknown placeholder in \"%s\" (known: %%{%s}%s%s%s)", key,
			         text, names[0], names[1] ? ", %{" : "", names[1] ? names[1] : "",
			         names[1] ? "}" : "");
			return false;
		}
	}
	return true;
}

static int greylist_compile(void *conf, char *err, size_t errlen)
{
	greylist_conf *c = conf;
	static const char *const reply_names[] = {"remaining", NULL};
	static const char *const header_names[] = {"delay", "date", NULL};
	char perr[256];
	const char *colon;

	if (!smtp_reply_parse(c->reply, &c->reply_parsed, perr, sizeof(perr))) {
		snprintf(err, errlen, "reply: %s", perr);
		return -1;
	}
	if (c->reply_parsed.code[0] != '4') {
		snprintf(err, errlen, "reply: greylisting defers: the code must be 4xx, not %s",
		         c->reply_parsed.code);
		return -1;
	}
	if (!placeholders_known(c->reply_parsed.text, reply_names, err, errlen, "reply") ||
	    !placeholders_known(c->header_text, header_names, err, errlen, "header_text"))
		return -1;
	colon = strchr(c->header_text, ':');
	if (colon == NULL || colon == c->header_text || colon[1] != ' ' ||
	    strcspn(c->header_text, " \t:") != (size_t)(colon - c->header_text)) {
		snprintf(
		    err, errlen,
		    "header_text: expected \"Name: value\", as \"X-Greylist: delayed %%{delay} seconds\"");
		return -1;
	}
	if (c->retry_window <= c->delay) {
		snprintf(err, errlen,
		         "retry_window: must be longer than greylist.delay, or no retry could pass");
		return -1;
	}
	return 0;
}

/*
 * The recipient's part of the triplet; true when it is a readable address.
 * Postfix delivers recipients spamtrapd cannot read ("user+<x"@d in its
 * internal form, an extension longer than our caps): each is greylisted
 * under a key of its raw bytes (or one key when the front end had to drop
 * it), never let through ungreylisted.
 */
static bool recipient_key(const char *recipient, char *out, size_t outlen)
{
	if (recipient == NULL) {
		snprintf(out, outlen, "%s", MISSING_RCPT_KEY);
		return false;
	}
	if (addr_normalise(recipient, strlen(recipient), out, outlen) == ADDR_OK)
		return true;
	snprintf(out, outlen, "<invalid:%016" PRIx64 ">",
	         hash_fnv1a(HASH_FNV1A_INIT, recipient, strlen(recipient)));
	return false;
}

/*
 * greylist.spf_key: the triplet "spf:DOMAIN/sender/recipient" when SPF
 * passes for the sender and its record is narrow (both probes ended and
 * neither passed). Anything else (no answer, a probe that timed out, an
 * open record) keeps the network: a spammer must not pick the key by
 * writing a domain that authorises everyone.
 */
static bool spf_triplet(const greylist_conf *conf, const check_ctx *ctx, const char *skey, const char *rcpt,
                        grey_scratch *s)
{
	const char *at;
	int n;

	if (!conf->spf_key || ctx->txn->null_sender || ctx->txn->sender_invalid ||
	    spfcheck_result(ctx) != SPF_PASS || spfcheck_open(ctx) != CHECK_SPF_NARROW ||
	    !(at = strrchr(ctx->txn->sender, '@')) || !at[1])
		return false;
	n = snprintf(s->triplet, sizeof(s->triplet), "spf:%s/%s/%s", at + 1, skey, rcpt);
	return n > 0 && (size_t)n < sizeof(s->triplet);
}

static grey_plan plan(const greylist_conf *conf, const check_ctx *ctx, grey_scratch *s)
{
	const decide_facts *f = ctx->facts;
	const decide_txn *txn = ctx->txn;
	/* What the dnsbl check, before this one, made of the client in this stage (check_msg.dnsbl). */
	const check_msg *now = ctx->stage_msg ? ctx->stage_msg : ctx->msg;
	char sender_key[ADDR_MAX + 2], rcpt[ADDR_MAX];
	const char *skey = sender_key;

	if (!txn->have_client)
		return GREY_SKIP;
	if (f->sasl_username && *f->sasl_username)
		return GREY_SKIP_AUTHENTICATED;
	s->dnsbl_score = now->dnsbl_score;
	if (now->dnsbl == CHECK_DNSBL_ALLOWLISTED)
		return GREY_SKIP_DNSWL;
	if (conf->apply == GREYLIST_APPLY_LISTED && now->dnsbl != CHECK_DNSBL_LISTED)
		return GREY_SKIP_NOT_LISTED;
	if (conf->wl &&
	    greywl_match_client(conf->wl, f->client_address, f->client_name, s->why, sizeof(s->why)))
		return GREY_SKIP_CLIENT_LISTED;
	if (recipient_key(f->recipient, rcpt, sizeof(rcpt)) &&
	    (conf->wl && greywl_match_recipient(conf->wl, rcpt, s->why, sizeof(s->why))))
		return GREY_SKIP_RCPT_LISTED;
	if (txn->sender_invalid)
		skey = INVALID_SENDER_KEY;
	else if (greynorm_sender(txn->sender, conf->recipient_delimiter, sender_key, sizeof(sender_key)) == 0)
		return GREY_SKIP;
	if (!spf_triplet(conf, ctx, skey, rcpt, s) &&
	    greystep_triplet_key(&txn->client, (unsigned)conf->ipv4_prefix, (unsigned)conf->ipv6_prefix, skey,
	                         rcpt, s->triplet, sizeof(s->triplet)) == 0)
		return GREY_SKIP;
	if (greystep_awl_key(&txn->client, conf->awl_by == GREYLIST_AWL_BY_NETWORK,
	                     (unsigned)conf->ipv4_prefix, (unsigned)conf->ipv6_prefix, s->awl,
	                     sizeof(s->awl)) == 0)
		return GREY_SKIP;
	return GREY_ASK;
}

static size_t greylist_needs(const void *vconf, const check_ctx *ctx, void *scratch, query *q)
{
	const greylist_conf *conf = vconf;
	grey_scratch *s = scratch;

	s->plan = GREY_SKIP;
	if (ctx->stage != CHECK_STAGE_RCPT)
		return 0;
	s->plan = plan(conf, ctx, s);
	if (s->plan != GREY_ASK)
		return 0;
	memset(q, 0, sizeof(*q));
	q->kind = QUERY_GREYLIST;
	q->u.grey.triplet = s->triplet;
	q->u.grey.awl = conf->awl_count > 0 ? s->awl : NULL;
	q->u.grey.params = (greystep_params){.delay_ms = conf->delay * 1000,
	                                     .retry_window_ms = conf->retry_window * 1000,
	                                     .max_age_ms = conf->max_age * 1000,
	                                     .awl_count = (uint64_t)conf->awl_count};
	q->u.grey.now_ms = ctx->now_ms;
	q->u.grey.max_triplets = (uint64_t)conf->max_triplets;
	return 1;
}

/* text with each %{name} replaced by its value (names[i] -> values[i]), cut to fit out. */
static void expand(const char *text, const char *const *names, const char *const *values, char *out,
                   size_t outlen)
{
	size_t o = 0;

	while (*text && o + 1 < outlen) {
		size_t i = 0, n;

		if (text[0] == '%' && text[1] == '{')
			for (; names[i]; i++)
				if (strncmp(text + 2, names[i], strlen(names[i])) == 0 &&
				    text[2 + strlen(names[i])] == '}')
					break;
		if (text[0] != '%' || text[1] != '{' || !names[i]) {
			out[o++] = *text++;
			continue;
		}
		n = strlen(values[i]);
		if (n > outlen - 1 - o)
			n = outlen - 1 - o;
		memcpy(out + o, values[i], n);
		o += n;
		text += strlen(names[i]) + 3;
	}
	out[o] = '\0';
}

/* Seconds, rounded up: "try again in 0 seconds" would be a lie for the last 999 ms. */
static int64_t seconds_up(int64_t ms)
{
	return ms <= 0 ? 0 : (ms + 999) / 1000;
}

static void defer(const greylist_conf *conf, int64_t remaining_s, check_verdict *v)
{
	static const char *const names[] = {"remaining", NULL};
	char secs[24];
	const char *values[] = {secs};
	smtp_reply r = conf->reply_parsed;

	snprintf(secs, sizeof(secs), "%" PRId64, remaining_s);
	expand(conf->reply_parsed.text, names, values, r.text, sizeof(r.text));
	check_verdict_set(v, DECIDE_DEFER_IF_PERMIT, "greylisted", &r);
}

/* RFC 5322 date in UTC, without the locale's names. */
static void rfc5322_date(int64_t now, char *out, size_t outlen)
{
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	time_t t = (time_t)now;
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL) {
		snprintf(out, outlen, "?");
		return;
	}
	snprintf(out, outlen, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7], tm.tm_mday,
	         months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static void add_header(const greylist_conf *conf, const check_ctx *ctx, int64_t waited_s, check_verdict *v,
                       check_effects *eff)
{
	static const char *const names[] = {"delay", "date", NULL};
	char delay[24], date[48];
	const char *values[] = {delay, date};

	if (!conf->header || ctx->msg->grey_header_done)
		return;
	snprintf(delay, sizeof(delay), "%" PRId64, waited_s);
	rfc5322_date(ctx->now, date, sizeof(date));
	expand(conf->header_text, names, values, v->header, sizeof(v->header));
	eff->msg.grey_header_done = true;
}

static void skipped(grey_plan p, const grey_scratch *s, check_verdict *v)
{
	switch (p) {
	case GREY_SKIP_CLIENT_LISTED:
	case GREY_SKIP_RCPT_LISTED:
		check_verdict_set(v, DECIDE_CONTINUE, "greylist whitelisted", NULL);
		check_detail_add(v, " %s=%s", p == GREY_SKIP_CLIENT_LISTED ? "client" : "recipient", s->why);
		v->quiet = true;
		return;
	case GREY_SKIP_DNSWL:
		check_verdict_set(v, DECIDE_CONTINUE, "greylist skipped, dnsbl allowlisted", NULL);
		check_detail_add(v, " dnsbl_score=%d", s->dnsbl_score);
		v->quiet = true;
		return;
	case GREY_SKIP_NOT_LISTED:
	case GREY_SKIP_AUTHENTICATED:
	case GREY_SKIP:
	case GREY_ASK:
		return;
	}
}

/* The null sender deferred at DATA: this recipient goes on, the message remembers the deferral. */
static void defer_at_data(const greystep_out *out, check_verdict *v, check_effects *eff)
{
	int64_t remaining = seconds_up(out->remaining_ms);

	eff->msg.grey_defer_data = true;
	if (remaining > (int64_t)eff->msg.grey_remaining)
		eff->msg.grey_remaining = remaining > UINT32_MAX ? UINT32_MAX : (uint32_t)remaining;
	check_verdict_set(v, DECIDE_CONTINUE, "greylisted, the null sender is deferred at DATA", NULL);
}

static void answered(const greylist_conf *conf, const check_ctx *ctx, const grey_scratch *s, const query *a,
                     check_verdict *v, check_effects *eff)
{
	const greystep_out *out = &a->u.grey.answer;

	if (a->u.grey.capped) {
		check_verdict_set(v, DECIDE_CONTINUE, "greylist full", NULL);
		check_detail_add(v, " max_triplets=%" PRId64 " triplet=%s", conf->max_triplets, s->triplet);
		return;
	}
	switch (out->result) {
	case GREYSTEP_DEFER_NEW:
	case GREYSTEP_DEFER_EARLY:
		if (ctx->txn->null_sender && conf->null_sender_at == GREYLIST_NULL_AT_DATA)
			defer_at_data(out, v, eff);
		else
			defer(conf, seconds_up(out->remaining_ms), v);
		check_detail_add(v, " result=%s remaining=%" PRId64 "s triplet=%s",
		                 greystep_result_name(out->result), seconds_up(out->remaining_ms),
		                 s->triplet);
		return;
	case GREYSTEP_PASS_FIRST:
		check_verdict_set(v, DECIDE_CONTINUE, "greylist passed", NULL);
		check_detail_add(v, " waited=%" PRId64 "s triplet=%s", out->waited_ms / 1000, s->triplet);
		add_header(conf, ctx, out->waited_ms / 1000, v, eff);
		return;
	case GREYSTEP_PASS:
	case GREYSTEP_PASS_AWL:
		check_verdict_set(v, DECIDE_CONTINUE, "greylist passed", NULL);
		check_detail_add(v, " result=%s triplet=%s", greystep_result_name(out->result), s->triplet);
		v->quiet = true;
		return;
	}
}

static void greylist_decide(const void *vconf, const check_ctx *ctx, void *scratch, const query *answers,
                            size_t nanswers, check_verdict *v, check_effects *eff)
{
	const greylist_conf *conf = vconf;
	const grey_scratch *s = scratch;

	if (ctx->stage == CHECK_STAGE_DATA) {
		if (ctx->msg->grey_defer_data) {
			defer(conf, ctx->msg->grey_remaining, v);
			check_detail_add(v, " result=null-sender-at-data remaining=%" PRIu32 "s",
			                 ctx->msg->grey_remaining);
		}
		return;
	}
	if (s->plan != GREY_ASK || nanswers == 0) {
		skipped(s->plan, s, v);
		return;
	}
	switch (answers[0].status) {
	case QUERY_OK:
		answered(conf, ctx, s, &answers[0], v, eff);
		return;
	case QUERY_ERROR:
		if (conf->on_error == GREYLIST_ON_ERROR_TEMPFAIL)
			check_verdict_set(v, DECIDE_TEMPFAIL, "store-error", &REPLY_STORE_ERROR);
		else
			check_verdict_set(v, DECIDE_CONTINUE, "store-error", NULL);
		/* The line must say whose store question failed: the blocklist's line looks the same. */
		check_detail_add(v, " check=greylist triplet=%s", s->triplet);
		return;
	case QUERY_NOTFOUND:
	case QUERY_PENDING:
		return;
	}
}

const check_def check_greylist = {
    .name = "greylist",
    .stages = CHECK_STAGE_RCPT | CHECK_STAGE_DATA,
    .default_mode = CHECK_MODE_OFF,
    .late = true,
    .conf_size = sizeof(greylist_conf),
    .keys = greylist_keys,
    .nkeys = sizeof(greylist_keys) / sizeof(greylist_keys[0]),
    .compile = greylist_compile,
    .needs = greylist_needs,
    .decide = greylist_decide,
};
