/* spf: the SPF check, the fact the other checks use and its own verdict (see spf.h). */
#include "core/checks/spf.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/addr.h"
#include "core/dnsplan.h"
#include "core/text.h"
#include "core/trapset.h"

static const smtp_reply REPLY_TEMPERROR = {"451", "4.4.3", "SPF temporary error, try again later"};
/*
 * The longest envelope-from or helo value the header writes (quotes and
 * escapes included): more and the key is left out. Two of them with the
 * rest of the longest header stay under RFC 5322's 998 (spf.h).
 */
#define HEADER_VALUE_MAX 300

static const check_key spf_keys[] = {
    {"reject_fail", CHECK_KEY_BOOL, "false", CHECK_KEY_AT(spfcheck_conf, reject_fail)},
    /* RFC 7372: 5.7.23 is "SPF validation failed". */
    {"reply", CHECK_KEY_STRING, "\"550 5.7.23 SPF validation failed: %{explanation}\"", 0, 400,
     CHECK_KEY_AT(spfcheck_conf, reply)},
    {"header", CHECK_KEY_BOOL, "true", CHECK_KEY_AT(spfcheck_conf, header)},
    {"receiver", CHECK_KEY_STRING, "null", 0, SPFCHECK_RECEIVER_MAX, .nullable = true,
     CHECK_KEY_AT(spfcheck_conf, receiver)},
    {"on_error", CHECK_KEY_ENUM, "\"continue\"", .names = (const char *const[]){"continue", "tempfail", NULL},
     CHECK_KEY_AT(spfcheck_conf, on_error)},
    {"timeout", CHECK_KEY_DURATION, "\"3s\"", 1, 60, CHECK_KEY_AT(spfcheck_conf, timeout)},
};

/* A host name as the header's receiver: letters, digits, '-' and '.' only, else NULL. */
static bool host_name_ok(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
		      *s == '-' || *s == '.'))
			return false;
	return true;
}

static int spf_compile(void *vconf, char *err, size_t errlen)
{
	spfcheck_conf *c = vconf;
	const char *p;

	if (!smtp_reply_parse(c->reply, &c->reply_parsed, err, errlen)) {
		char why[256];

		snprintf(why, sizeof(why), "%s", err);
		snprintf(err, errlen, "reply: %s", why);
		return -1;
	}
	if (c->reply_parsed.code[0] != '5') {
		snprintf(err, errlen, "reply: expected a 5xx reply (it refuses a message whose SPF fails)");
		return -1;
	}
	for (p = strstr(c->reply, "%{"); p; p = strstr(p + 2, "%{"))
		if (strncmp(p, "%{explanation}", 14) != 0 && strncmp(p, "%{client}", 9) != 0) {
			snprintf(err, errlen,
			         "reply: unknown placeholder (known: %%{explanation}, %%{client})");
			return -1;
		}
	if (c->receiver && !host_name_ok(c->receiver)) {
		snprintf(err, errlen, "receiver: expected a host name (letters, digits, '-' and '.')");
		return -1;
	}
	/* Once, at load: the request path asks the system nothing. */
	if (c->receiver)
		snprintf(c->receiver_name, sizeof(c->receiver_name), "%s", c->receiver);
	else if (gethostname(c->receiver_name, sizeof(c->receiver_name)) != 0 ||
	         (c->receiver_name[sizeof(c->receiver_name) - 1] = '\0', !host_name_ok(c->receiver_name)))
		snprintf(c->receiver_name, sizeof(c->receiver_name), "unknown");
	return 0;
}

static bool authenticated(const decide_facts *f)
{
	return f->sasl_username && *f->sasl_username;
}

static bool is_loopback(const addr_ip *ip)
{
	static const uint8_t v6_loopback[16] = {[15] = 1};

	return ip->version == 6 ? memcmp(ip->bytes, v6_loopback, 16) == 0 : ip->bytes[0] == 127;
}

/*
 * The MAIL FROM identity SPF checks: "" for the null sender (then HELO),
 * the normalised address, or for an address the other checks find
 * invalid (a quoted local part with a '"' in it: "a\"b"@bank.example,
 * which Postfix accepts and hands over as a"b@bank.example) the address
 * as the client wrote it: its domain is still the one that says which
 * servers may send its mail, and a forger must not escape reject_fail by
 * quoting. NULL when there is no address at all.
 */
static const char *spf_sender(const check_ctx *ctx)
{
	if (ctx->txn->null_sender)
		return "";
	return ctx->txn->sender_invalid ? ctx->facts->sender : ctx->txn->sender;
}

/*
 * Whether SPF can say anything of this transaction that anybody uses: not
 * for an authenticated client (its login verifies it), a whitelisted
 * network (exempt from everything) or the host itself.
 */
static bool applies(const check_ctx *ctx)
{
	const decide_facts *f = ctx->facts;
	addr_ip ip;

	return !authenticated(f) && ctx->txn->whitelisted == WHITELIST_NONE && spf_sender(ctx) &&
	       f->client_address && addr_ip_parse(f->client_address, &ip) && !is_loopback(&ip);
}

/* blocklist.sender_requires spf-pass and this recipient is a trap: the hit's keys depend on SPF. */
static bool trap_wants(const spfcheck_conf *conf, const check_ctx *ctx)
{
	const decide_policy *policy = conf->policy;
	char matched[TRAPSET_MATCH_MAX];

	return ctx->stage == CHECK_STAGE_RCPT && policy &&
	       policy->sender_requires == SENDER_REQUIRES_SPF_PASS &&
	       (policy->keys & (DECIDE_KEY_SENDER | DECIDE_KEY_SENDER_DOMAIN)) && !ctx->txn->null_sender &&
	       policy->traps && ctx->facts->recipient &&
	       trapset_match(policy->traps, ctx->facts->recipient, matched, sizeof(matched));
}

static void spf_plan_dns(const void *vconf, const check_ctx *ctx, dnsplan *plan)
{
	const spfcheck_conf *conf = vconf;
	const check_msg *msg = ctx->msg;
	const decide_txn *txn = ctx->txn;
	bool known = msg->spf != 0;

	if (!applies(ctx))
		return;
	/*
	 * Uses that need the sender verified (a pass of a narrow record): a
	 * whitelisted sender, at MAIL FROM already (a verified sender's client
	 * networks are not looked up there), and a trap hit under
	 * sender_requires; and the greylist's key, which needs the same.
	 */
	bool verify =
	    !txn->sender_invalid && (txn->sender_whitelisted != WHITELIST_NONE || trap_wants(conf, ctx) ||
	                             (ctx->stage == CHECK_STAGE_RCPT && conf->grey_spf_key));
	bool own =
	    ctx->stage != CHECK_STAGE_MAIL && (conf->reject_fail || (conf->header && !msg->spf_header_done));
	bool probes =
	    verify && !txn->null_sender && msg->spf_open == 0 && (!known || msg->spf == SPF_PASS + 1);

	if (!probes && (known || !(verify || own)))
		return;
	if (!dnsplan_want_spf(plan, ctx->facts->client_address, spf_sender(ctx),
	                      ctx->facts->helo ? ctx->facts->helo : ""))
		return;
	if (probes)
		(void)dnsplan_want_spf_probes(plan);
	dnsplan_timeout_at_least(plan, conf->timeout * 1000);
}

void spfcheck_plan_verify(const check_ctx *ctx, int64_t timeout_ms, dnsplan *plan)
{
	const check_msg *msg = ctx->msg;
	const decide_txn *txn = ctx->txn;

	if (timeout_ms <= 0 || !applies(ctx) || txn->sender_whitelisted == WHITELIST_NONE ||
	    msg->spf_open != 0 || (msg->spf != 0 && msg->spf != SPF_PASS + 1))
		return;
	if (!dnsplan_want_spf(plan, ctx->facts->client_address, txn->sender,
	                      ctx->facts->helo ? ctx->facts->helo : ""))
		return;
	(void)dnsplan_want_spf_probes(plan);
	dnsplan_timeout_at_least(plan, timeout_ms);
}

int spfcheck_result(const check_ctx *ctx)
{
	if (ctx->dns && ctx->dns->spf.wanted)
		return ctx->dns->spf.done ? (int)ctx->dns->spf.result : SPF_TEMPERROR;
	if (ctx->msg->spf)
		return ctx->msg->spf - 1;
	return SPFCHECK_UNKNOWN;
}

/*
 * From a plan's probes: CHECK_SPF_OPEN / _NARROW, or 0 when one did not
 * end or ended in a temporary error (asked again at the next stage).
 * Narrow takes a definite "not authorised" for both; a permerror is no
 * proof of that.
 */
static int probes_open(const dnsplan *dns)
{
	bool open = false;

	for (int i = 0; i < DNSPLAN_SPF_PROBES; i++) {
		if (!dns->probe[i].wanted || !dns->probe[i].done || dns->probe[i].result == SPF_TEMPERROR)
			return 0;
		open |= dns->probe[i].result == SPF_PASS || dns->probe[i].result == SPF_PERMERROR;
	}
	return open ? CHECK_SPF_OPEN : CHECK_SPF_NARROW;
}

int spfcheck_open(const check_ctx *ctx)
{
	int open = ctx->dns ? probes_open(ctx->dns) : 0;

	return open ? open : ctx->msg->spf_open;
}

bool spfcheck_verified(const dnsplan *dns, const check_msg *msg)
{
	int result = msg->spf, open = dns ? probes_open(dns) : 0;

	if (dns && dns->spf.wanted) {
		if (!dns->spf.done || !dns->spf.mailfrom[0])
			return false;
		result = dns->spf.result + 1;
	}
	/* A record that authorises everyone verifies no one (spf.h). */
	return result == SPF_PASS + 1 && (open ? open : msg->spf_open) == CHECK_SPF_NARROW;
}

void spfcheck_remember(const dnsplan *dns, check_msg *msg)
{
	int open;

	if (!dns)
		return;
	if (dns->spf.wanted && dns->spf.done)
		msg->spf = (uint8_t)(dns->spf.result + 1);
	if ((open = probes_open(dns)) != 0)
		msg->spf_open = (uint8_t)open;
}

/* ---- the Received-SPF header ---- */

static bool atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* RFC 5322 dot-atom-text: atext runs joined by single dots. */
static bool dot_atom(const char *s)
{
	bool after_dot = true;

	for (; *s; s++) {
		if (*s == '.') {
			if (after_dot)
				return false;
			after_dot = true;
		} else if (atext((unsigned char)*s))
			after_dot = false;
		else
			return false;
	}
	return !after_dot;
}

/* value as the header writes it into out[HEADER_VALUE_MAX + 1]: a dot-atom as it is, else a quoted-string.
 * false: too long. */
static bool header_value(const char *value, char *out)
{
	size_t o = 0;

	if (dot_atom(value)) {
		if (strlen(value) > HEADER_VALUE_MAX)
			return false;
		memcpy(out, value, strlen(value) + 1);
		return true;
	}
	out[o++] = '"';
	for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
		if (o + 3 > HEADER_VALUE_MAX) /* an escape, a byte and the closing quote */
			return false;
		if (*p == '"' || *p == '\\')
			out[o++] = '\\';
		/* No CR or LF may end the header early, and 8-bit bytes have no place in one. */
		out[o++] = *p >= 0x20 && *p < 0x7f ? (char)*p : '?';
	}
	out[o++] = '"';
	out[o] = '\0';
	return true;
}

/* The comment of RFC 7208 9.1, written by us alone: nothing the client wrote goes in. */
static const char *comment_of(enum spf_result r)
{
	switch (r) {
	case SPF_PASS:
		return "domain of the sender designates %s as permitted sender";
	case SPF_FAIL:
		return "domain of the sender does not designate %s as permitted sender";
	case SPF_SOFTFAIL:
		return "transitioning domain of the sender does not designate %s as permitted sender";
	case SPF_NEUTRAL:
		return "%s is neither permitted nor denied by domain of the sender";
	case SPF_NONE:
		return "domain of the sender does not designate permitted sender hosts (%s)";
	case SPF_TEMPERROR:
		return "temporary error in processing the sender's SPF record for %s";
	case SPF_PERMERROR:
		return "permanent error in processing the sender's SPF record for %s";
	}
	return "%s";
}

/* Appends s[0..n) to out at *o, terminated; false when it does not fit in outlen with its terminator. */
static bool put(char *out, size_t outlen, size_t *o, const char *s, size_t n)
{
	if (*o + n >= outlen)
		return false;
	memcpy(out + *o, s, n);
	*o += n;
	out[*o] = '\0';
	return true;
}

static bool puts0(char *out, size_t outlen, size_t *o, const char *s)
{
	return put(out, outlen, o, s, strlen(s));
}

/*
 * Written piece by piece, not with snprintf: it goes out with every reply
 * (a profile of the DNS checks showed its snprintf calls). The comment is
 * at most 75 bytes of text around the 63-byte address, so nothing is cut.
 */
size_t spfcheck_header(enum spf_result r, const char *receiver, const char *client, const char *mailfrom,
                       const char *helo, char *out, size_t outlen)
{
	char ip[ADDR_NET_STRLEN], from[HEADER_VALUE_MAX + 1], hv[HEADER_VALUE_MAX + 1];
	char rcv[SPFCHECK_RECEIVER_MAX + 1];
	const char *comment = comment_of(r), *mark = strstr(comment, "%s");
	addr_ip parsed;
	size_t o = 0;

	/* The address as the front end gave it, if it is one: nothing else goes into client-ip. */
	text_copy(ip, sizeof(ip), client && addr_ip_parse(client, &parsed) ? client : "unknown");
	text_copy(rcv, sizeof(rcv), receiver && host_name_ok(receiver) ? receiver : "unknown");
	if (!puts0(out, outlen, &o, SPFCHECK_HEADER_NAME ": ") ||
	    !puts0(out, outlen, &o, spf_result_name(r)) || !puts0(out, outlen, &o, " (") ||
	    !puts0(out, outlen, &o, rcv) || !puts0(out, outlen, &o, ": ") ||
	    !put(out, outlen, &o, comment, (size_t)(mark - comment)) || !puts0(out, outlen, &o, ip) ||
	    !puts0(out, outlen, &o, mark + 2) || !puts0(out, outlen, &o, ") client-ip=") ||
	    !puts0(out, outlen, &o, ip) || !puts0(out, outlen, &o, ";"))
		goto too_small;
	if (header_value(mailfrom ? mailfrom : "", from) &&
	    (!puts0(out, outlen, &o, " envelope-from=") || !puts0(out, outlen, &o, from) ||
	     !puts0(out, outlen, &o, ";")))
		goto too_small;
	if (helo && *helo && header_value(helo, hv) &&
	    (!puts0(out, outlen, &o, " helo=") || !puts0(out, outlen, &o, hv) ||
	     !puts0(out, outlen, &o, ";")))
		goto too_small;
	if (!puts0(out, outlen, &o, " receiver=") || !puts0(out, outlen, &o, rcv) ||
	    !puts0(out, outlen, &o, "; identity=") ||
	    !puts0(out, outlen, &o, mailfrom && *mailfrom ? "mailfrom" : "helo"))
		goto too_small;
	return o;
too_small:
	if (outlen)
		out[0] = '\0';
	return 0;
}

/* ---- the verdict ---- */

/* Text from the sender's DNS, fit for a reply line or a log line: printable ASCII only. */
static void printable(const char *in, char *out, size_t outlen)
{
	size_t o = 0;

	for (; *in && o + 1 < outlen; in++)
		out[o++] = (unsigned char)*in >= 0x20 && (unsigned char)*in < 0x7f ? *in : '?';
	out[o] = '\0';
}

static void fail_reply(const spfcheck_conf *conf, const check_ctx *ctx, smtp_reply *r)
{
	const char *text = conf->reply_parsed.text,
	           *exp = ctx->dns && ctx->dns->spf.wanted ? ctx->dns->spf.explanation : "";
	char explanation[SPF_MAX_EXPLANATION + 1], deflt[128];
	size_t o = 0;

	if (exp[0])
		printable(exp, explanation, sizeof(explanation));
	else {
		snprintf(deflt, sizeof(deflt), "the sender's domain does not authorise [%s] to send its mail",
		         ctx->facts->client_address);
		snprintf(explanation, sizeof(explanation), "%s", deflt);
	}
	*r = conf->reply_parsed;
	while (*text && o + 1 < sizeof(r->text)) {
		const char *value = NULL;
		size_t skip = 0;

		if (strncmp(text, "%{explanation}", 14) == 0)
			value = explanation, skip = 14;
		else if (strncmp(text, "%{client}", 9) == 0)
			value = ctx->facts->client_address, skip = 9;
		if (!value) {
			r->text[o++] = *text++;
			continue;
		}
		for (; *value && o + 1 < sizeof(r->text); value++)
			r->text[o++] = *value;
		text += skip;
	}
	r->text[o] = '\0';
}

/* The header once a message: at RCPT TO for the policy server (PREPEND), at end of message for the milter. */
static void add_header(const spfcheck_conf *conf, const check_ctx *ctx, int r, check_verdict *v,
                       check_effects *eff)
{
	const decide_facts *f = ctx->facts;
	check_stage at = f->front == DECIDE_FRONT_MILTER ? CHECK_STAGE_EOM : CHECK_STAGE_RCPT;

	(void)eff; /* done only once it went out: spfcheck_header_sent */
	/*
	 * Not for a verified whitelisted sender: on the policy side the
	 * whitelist's stop keeps this check from running at RCPT TO, and the
	 * milter's end of message says the same.
	 */
	if (!conf->header || ctx->msg->spf_header_done || ctx->stage != at || ctx->txn->sender_trusted)
		return;
	spfcheck_header((enum spf_result)r, conf->receiver_name, f->client_address, spf_sender(ctx), f->helo,
	                v->header, sizeof(v->header));
}

void spfcheck_header_sent(const check_verdict *final, check_msg *msg)
{
	if (final->action == DECIDE_CONTINUE && strncmp(final->header, SPFCHECK_HEADER_NAME ":", 13) == 0)
		msg->spf_header_done = true;
}

/*
 * " spf=RESULT reason=\"...\"": which term or error decided, when this stage
 * evaluated it. The reason names domains the sender's record and MAIL FROM
 * wrote (an include:%{l}.example built from a local part, a syntax error
 * quoting the record): a '"' there would close the field and let the
 * sender append fields of its own to the line, so it is written '?'.
 */
static void result_detail(const check_ctx *ctx, int r, check_verdict *v)
{
	char reason[sizeof(ctx->dns->spf.reason)];

	check_detail_add(v, " spf=%s", spf_result_name((enum spf_result)r));
	if (!ctx->dns || !ctx->dns->spf.wanted || !ctx->dns->spf.reason[0])
		return;
	printable(ctx->dns->spf.reason, reason, sizeof(reason));
	for (char *p = reason; *p; p++)
		if (*p == '"' || *p == '\\')
			*p = '?';
	check_detail_add(v, " reason=\"%s\"", reason);
}

static void spf_decide(const void *vconf, const check_ctx *ctx, void *scratch, const query *answers,
                       size_t nanswers, check_verdict *v, check_effects *eff)
{
	const spfcheck_conf *conf = vconf;
	int r;

	(void)scratch;
	(void)answers;
	(void)nanswers;
	if (ctx->stage == CHECK_STAGE_MAIL || !applies(ctx) || (r = spfcheck_result(ctx)) == SPFCHECK_UNKNOWN)
		return;
	if (ctx->stage == CHECK_STAGE_RCPT && conf->reject_fail) {
		/* Only "fail": softfail is the domain saying it is not sure; errors never become a 5xx. */
		if (r == SPF_FAIL) {
			smtp_reply reply;

			fail_reply(conf, ctx, &reply);
			check_verdict_set(v, DECIDE_REJECT, "spf-fail", &reply);
			result_detail(ctx, r, v);
			return;
		}
		if (r == SPF_TEMPERROR && conf->on_error == SPFCHECK_ON_ERROR_TEMPFAIL) {
			check_verdict_set(v, DECIDE_TEMPFAIL, "spf-error", &REPLY_TEMPERROR);
			result_detail(ctx, r, v);
			return;
		}
	}
	/*
	 * A DNS failure this stage met: the mail goes on (on_error continue, or
	 * nothing refuses on SPF), one line, rate limited while it lasts.
	 */
	if (r == SPF_TEMPERROR && ctx->stage == CHECK_STAGE_RCPT && ctx->dns && ctx->dns->spf.wanted) {
		check_verdict_set(v, DECIDE_CONTINUE, "spf-error", NULL);
		result_detail(ctx, r, v);
		v->log_limited = true;
	}
	add_header(conf, ctx, r, v, eff);
}

const check_def check_spf = {
    .name = "spf",
    .stages = CHECK_STAGE_MAIL | CHECK_STAGE_RCPT | CHECK_STAGE_EOM,
    .default_mode = CHECK_MODE_OFF,
    .conf_size = sizeof(spfcheck_conf),
    .keys = spf_keys,
    .nkeys = sizeof(spf_keys) / sizeof(spf_keys[0]),
    .compile = spf_compile,
    .plan_dns = spf_plan_dns,
    .decide = spf_decide,
};
