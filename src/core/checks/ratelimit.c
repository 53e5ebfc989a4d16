/* ratelimit: rate limits per key (see ratelimit.h). */
#include "core/checks/ratelimit.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "core/addr.h"
#include "core/hash.h"

static const smtp_reply REPLY_STORE_ERROR = {"451", "4.3.0", "Temporary local problem, try again later"};

/* Room for one bucket's "RULE:VALUE"; a longer value is named by its hash (still one bucket). */
#define RL_BUCKET_MAX RATELIMIT_BUCKET_MAX
/* The hashed name always fits: bucket_name never fails for a bucket of the scratch. */
_Static_assert(RL_BUCKET_MAX >= RATELIMIT_NAME_MAX + sizeof(":<hash:0123456789abcdef>"), "RL_BUCKET_MAX");

const char *const ratelimit_key_names[] = {"sasl_username", "sender", "client_address", "recipient", NULL};
const char *const ratelimit_unit_names[] = {"message", "recipient", NULL};
const char *const ratelimit_action_names[] = {"defer", "reject", NULL};

/* What needs() worked out, for decide(): the buckets it peeked, in rule order. */
typedef struct rl_scratch {
	size_t nasked;
	unsigned char rule[RATELIMIT_RULES_MAX]; /* the rule of each bucket asked */
	char bucket[RATELIMIT_RULES_MAX][RL_BUCKET_MAX];
} rl_scratch;

_Static_assert(sizeof(rl_scratch) <= CHECK_SCRATCH_MAX, "CHECK_SCRATCH_MAX too small for ratelimit");

static const check_key ratelimit_keys[] = {
    {"on_error", CHECK_KEY_ENUM, "\"continue\"", .names = (const char *const[]){"continue", "tempfail", NULL},
     CHECK_KEY_AT(ratelimit_conf, on_error)},
    {"max_buckets", CHECK_KEY_INT, "1000000", 0, INT64_C(1000000000),
     CHECK_KEY_AT(ratelimit_conf, max_buckets)},
};

bool ratelimit_name_ok(const char *name)
{
	size_t n = strnlen(name, RATELIMIT_NAME_MAX);

	return n > 0 && n < RATELIMIT_NAME_MAX && strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

int64_t ratelimit_emission_ms(const ratelimit_rule *r)
{
	int64_t ms = r->count > 0 ? r->per * 1000 / (int64_t)r->count : r->per * 1000;

	return ms > 0 ? ms : 1;
}

/* The value of a recipient or sender bucket: the normalised address, or its raw bytes' hash. */
static void address_value(const char *raw, char *out, size_t outlen)
{
	if (raw == NULL) {
		snprintf(out, outlen, "<invalid>");
		return;
	}
	if (addr_normalise(raw, strlen(raw), out, outlen) == ADDR_OK)
		return;
	snprintf(out, outlen, "<invalid:%016" PRIx64 ">", hash_fnv1a(HASH_FNV1A_INIT, raw, strlen(raw)));
}

/* The null sender's value: "<>:NETWORK" of the client, "<>" without one. */
static void null_value(const addr_ip *client, char *out, size_t outlen)
{
	addr_net net;
	char text[ADDR_NET_STRLEN];

	if (client == NULL) {
		snprintf(out, outlen, "<>");
		return;
	}
	net = addr_net_of(client,
	                  client->version == 4 ? RATELIMIT_NULL_IPV4_PREFIX : RATELIMIT_NULL_IPV6_PREFIX);
	addr_net_format(&net, text, sizeof(text));
	snprintf(out, outlen, "<>:%s", text);
}

/* A normalised sender without its +extension: user+1@ and user+2@ must share user@'s bucket. */
static void sender_value(const char *sender, const char *delimiters, char *out, size_t outlen)
{
	if (!delimiters || !*delimiters || !addr_strip_extension(sender, delimiters, out, outlen))
		snprintf(out, outlen, "%s", sender);
}

/* in lowercased into out, cut to outlen - 1 bytes as snprintf would (which costs more, per recipient). */
static void lower_copy(const char *in, char *out, size_t outlen)
{
	size_t i = 0;

	if (outlen == 0)
		return;
	for (; in[i] && i + 1 < outlen; i++)
		out[i] = (char)tolower((unsigned char)in[i]);
	out[i] = '\0';
}

/*
 * The value of rule r's bucket for this recipient, in out; false: the rule
 * does not apply. SASL accounts are compared without case: mail systems
 * that log in case-insensitively must not give an account one bucket per
 * spelling.
 */
static bool rule_value(const ratelimit_rule *r, const char *delimiters, const check_ctx *ctx, char *out,
                       size_t outlen)
{
	const decide_facts *f = ctx->facts;
	const decide_txn *txn = ctx->txn;
	bool authenticated = f->sasl_username && *f->sasl_username;
	addr_net net;

	switch (r->key) {
	case RATELIMIT_KEY_SASL_USERNAME:
		if (!authenticated)
			return false;
		lower_copy(f->sasl_username, out, outlen);
		return true;
	case RATELIMIT_KEY_SENDER:
		/* Anyone can write a MAIL FROM: an outsider's could exhaust a real user's bucket. */
		if (!authenticated && !r->unauthenticated)
			return false;
		if (txn->null_sender)
			null_value(txn->have_client ? &txn->client : NULL, out, outlen);
		else if (txn->sender_invalid)
			address_value(f->sender, out, outlen);
		else
			sender_value(txn->sender, delimiters, out, outlen);
		return true;
	case RATELIMIT_KEY_CLIENT_ADDRESS:
		if (!txn->have_client)
			return false;
		net = addr_net_of(&txn->client,
		                  (unsigned)(txn->client.version == 4 ? r->ipv4_prefix : r->ipv6_prefix));
		addr_net_format(&net, out, outlen);
		return true;
	case RATELIMIT_KEY_RECIPIENT:
		address_value(f->recipient, out, outlen);
		return true;
	}
	return false;
}

/*
 * Rule r's bucket name "RULE:VALUE" in out, the value hashed when it would
 * not fit; false: not even the hashed name fits outlen.
 */
static bool bucket_name(const ratelimit_rule *r, const char *value, char *out, size_t outlen)
{
	size_t nlen = strnlen(r->name, sizeof(r->name)), vlen = strlen(value);
	int n;

	if (nlen + 1 + vlen < outlen) {
		memcpy(out, r->name, nlen);
		out[nlen] = ':';
		memcpy(out + nlen + 1, value, vlen + 1);
		return true;
	}
	n = snprintf(out, outlen, "%.*s:<hash:%016" PRIx64 ">", (int)nlen, r->name,
	             hash_fnv1a(HASH_FNV1A_INIT, value, vlen));
	if (n < 0 || (size_t)n >= outlen) {
		if (outlen)
			out[0] = '\0';
		return false;
	}
	return true;
}

static void counter_query(const ratelimit_conf *conf, const ratelimit_rule *r, const check_ctx *ctx,
                          const char *bucket, uint64_t cost, query *q)
{
	memset(q, 0, sizeof(*q));
	q->kind = QUERY_COUNTER;
	q->u.counter.ns = RATELIMIT_NS;
	q->u.counter.key = bucket;
	q->u.counter.now_ms = ctx->now_ms;
	q->u.counter.emission_ms = ratelimit_emission_ms(r);
	q->u.counter.burst = r->burst;
	q->u.counter.cost = cost;
	q->u.counter.max_rows = (uint64_t)conf->max_buckets;
}

static size_t ratelimit_needs(const void *vconf, const check_ctx *ctx, void *scratch, query *q)
{
	const ratelimit_conf *conf = vconf;
	rl_scratch *s = scratch;
	char value[ADDR_MAX + 64];

	s->nasked = 0;
	if (ctx->stage != CHECK_STAGE_RCPT)
		return 0;
	for (size_t i = 0; i < conf->nrules && s->nasked < RATELIMIT_RULES_MAX; i++) {
		const ratelimit_rule *r = &conf->rules[i];

		/* A message is charged once, at its first accepted recipient; the recipient key never
		 * repeats. */
		if (r->unit == RATELIMIT_UNIT_MESSAGE && r->key != RATELIMIT_KEY_RECIPIENT &&
		    ctx->msg->nothers > 0)
			continue;
		if (!rule_value(r, conf->recipient_delimiter, ctx, value, sizeof(value)))
			continue;
		if (!bucket_name(r, value, s->bucket[s->nasked], sizeof(s->bucket[s->nasked])))
			continue;
		s->rule[s->nasked] = (unsigned char)i;
		counter_query(conf, r, ctx, s->bucket[s->nasked], 0, &q[s->nasked]);
		s->nasked++;
	}
	return s->nasked;
}

static void refuse(const ratelimit_rule *r, const rl_scratch *s, size_t j, check_verdict *v)
{
	char field[RL_BUCKET_MAX];

	/* A sender's quoted local part may hold blanks and '=' (check_field). */
	check_field(s->bucket[j], field, sizeof(field));
	check_verdict_set(v, r->action == RATELIMIT_ACTION_REJECT ? DECIDE_REJECT : DECIDE_TEMPFAIL,
	                  "rate limited", &r->reply);
	check_detail_add(v, " rule=%s bucket=%s", r->name, field);
}

static void ratelimit_decide(const void *vconf, const check_ctx *ctx, void *scratch, const query *answers,
                             size_t nanswers, check_verdict *v, check_effects *eff)
{
	const ratelimit_conf *conf = vconf;
	const rl_scratch *s = scratch;
	bool failed = false;

	for (size_t j = 0; j < nanswers && j < s->nasked; j++) {
		const ratelimit_rule *r = &conf->rules[s->rule[j]];

		if (answers[j].status == QUERY_ERROR) {
			failed = true;
			continue;
		}
		/* A peek (cost 0) answers the room left: 0 means one more unit would be refused. */
		if (answers[j].status == QUERY_OK && answers[j].u.counter.remaining == 0) {
			refuse(r, s, j, v);
			return;
		}
	}
	if (failed) {
		if (conf->on_error == RATELIMIT_ON_ERROR_TEMPFAIL)
			check_verdict_set(v, DECIDE_TEMPFAIL, "store-error", &REPLY_STORE_ERROR);
		else
			check_verdict_set(v, DECIDE_CONTINUE, "store-error", NULL);
		check_detail_add(v, " check=ratelimit");
		return;
	}
	/* Charged only if the final verdict lets the recipient through (pipeline_effect_applies). */
	for (size_t j = 0; j < s->nasked && eff->nq < CHECK_MAX_EFFECTS; j++) {
		counter_query(conf, &conf->rules[s->rule[j]], ctx, s->bucket[j], 1, &eff->q[eff->nq]);
		/* The recipient passed on the peek: charged even if a parallel one took the last unit. */
		eff->q[eff->nq].u.counter.debt = true;
		eff->when[eff->nq++] = CHECK_EFFECT_COUNT_ACCEPTED;
	}
}

/* "<>" or "<>:CLIENT" of a sender rule, as null_value makes it; false with err. */
static bool admin_null(const char *in, char *out, size_t outlen, char *err, size_t errlen)
{
	addr_ip ip;

	if (in[2] == '\0') {
		null_value(NULL, out, outlen);
		return true;
	}
	if (in[2] == ':' && addr_ip_parse(in + 3, &ip)) {
		null_value(&ip, out, outlen);
		return true;
	}
	snprintf(err, errlen,
	         "the null sender counts per client network: <>:CLIENT-ADDRESS (\"<>:192.0.2.7\"), "
	         "not '%.64s'",
	         in);
	return false;
}

/* VALUE of "RULE:VALUE" as rule_value makes it from a transaction; false with err. */
static bool admin_value(const ratelimit_conf *conf, const ratelimit_rule *r, const char *in, char *out,
                        size_t outlen, char *err, size_t errlen)
{
	char addr[ADDR_MAX];
	addr_ip ip;
	addr_net net;

	switch (r->key) {
	case RATELIMIT_KEY_SASL_USERNAME:
		snprintf(out, outlen, "%s", in);
		for (char *p = out; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		return *in != '\0';
	case RATELIMIT_KEY_SENDER:
		if (strncmp(in, "<>", 2) == 0)
			return admin_null(in, out, outlen, err, errlen);
		if (*in == '\0') {
			null_value(NULL, out, outlen);
			return true;
		}
		if (addr_normalise(in, strlen(in), addr, sizeof(addr)) == ADDR_OK && *addr) {
			sender_value(addr, conf->recipient_delimiter, out, outlen);
			return true;
		}
		snprintf(err, errlen, "'%.64s' is not an address", in);
		return false;
	case RATELIMIT_KEY_RECIPIENT:
		if (addr_normalise(in, strlen(in), out, outlen) == ADDR_OK && *out)
			return true;
		snprintf(err, errlen, "'%.64s' is not an address", in);
		return false;
	case RATELIMIT_KEY_CLIENT_ADDRESS:
		if (!addr_ip_parse(in, &ip)) {
			snprintf(err, errlen, "'%.64s' is not an IPv4 or IPv6 address", in);
			return false;
		}
		net = addr_net_of(&ip, (unsigned)(ip.version == 4 ? r->ipv4_prefix : r->ipv6_prefix));
		addr_net_format(&net, out, outlen);
		return true;
	}
	return false;
}

const ratelimit_rule *ratelimit_admin_bucket(const ratelimit_conf *conf, const char *spec, char *out,
                                             size_t outlen, char *err, size_t errlen)
{
	const char *colon = strchr(spec, ':');
	char value[ADDR_MAX + 64];

	snprintf(err, errlen, "expected RULE:VALUE");
	if (colon == NULL)
		return NULL;
	for (size_t i = 0; i < conf->nrules; i++) {
		const ratelimit_rule *r = &conf->rules[i];

		if (strlen(r->name) != (size_t)(colon - spec) || strncmp(r->name, spec, strlen(r->name)) != 0)
			continue;
		snprintf(err, errlen, "rule %s: no value", r->name);
		if (!admin_value(conf, r, colon + 1, value, sizeof(value), err, errlen))
			return NULL;
		if (!bucket_name(r, value, out, outlen)) {
			snprintf(err, errlen, "rule %s: no room for the bucket name", r->name);
			return NULL;
		}
		return r;
	}
	snprintf(err, errlen, "no rule named '%.*s' in ratelimit.rules",
	         (int)(colon - spec > 64 ? 64 : colon - spec), spec);
	return NULL;
}

const check_def check_ratelimit = {
    .name = "ratelimit",
    .stages = CHECK_STAGE_RCPT,
    .default_mode = CHECK_MODE_OFF,
    .conf_size = sizeof(ratelimit_conf),
    .keys = ratelimit_keys,
    .nkeys = sizeof(ratelimit_keys) / sizeof(ratelimit_keys[0]),
    .needs = ratelimit_needs,
    .decide = ratelimit_decide,
};
