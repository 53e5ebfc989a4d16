/* relay: distinct client networks per account (see relay.h). */
#include "core/checks/relay.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"
#include "core/key.h"

static const smtp_reply REPLY_STORE_ERROR = {"451", "4.3.0", "Temporary local problem, try again later"};
static const char SET_PREFIX[] = "relay:";
static const char TRIP_NS[] = RELAY_TRIP_NS;
static const char TRIP_NS_SHADOW[] = RELAY_TRIP_NS_SHADOW;

/* The default reply of each action; hold and discard use only the text (for the log and HOLD). */
static const char *const default_reply[] = {
    [RELAY_ACTION_DEFER] = "451 4.7.1 Too many client networks for this account, try again later",
    [RELAY_ACTION_REJECT] = "554 5.7.1 Too many client networks for this account",
    [RELAY_ACTION_HOLD] = "451 4.7.1 Too many client networks for this account",
    [RELAY_ACTION_DISCARD] = "451 4.7.1 Too many client networks for this account",
};

/* The placeholders of relay.notify, in the order of relay_scratch's hook values. */
static const char *const hook_names[] = {"account", "network", "count", "action", NULL};

typedef enum {
	RELAY_SKIP,   /* nothing to count: no account, no client, a key that does not fit */
	RELAY_EXEMPT, /* the client's network is private or exempt: never counted */
	RELAY_ASK,
} relay_plan;

/* What needs() worked out, for decide() and the effects. */
typedef struct relay_scratch {
	relay_plan plan;
	bool is_sasl;                      /* the account is the SASL login (block_account's key) */
	char account[QUERY_KEY_MAX];       /* "sasl:alice" or "alice@example.com" */
	char set[QUERY_KEY_MAX];           /* "relay:" account */
	char network[ADDR_NET_STRLEN];     /* "192.0.2.0/24" */
	char count[24];                    /* the hook's %{count} */
	char marker[ADDR_NET_STRLEN + 32]; /* the trip marker's value: "NETWORK networks=N" */
} relay_scratch;

_Static_assert(sizeof(relay_scratch) <= CHECK_SCRATCH_MAX, "CHECK_SCRATCH_MAX too small for relay");

static const check_key relay_keys[] = {
    {"keys", CHECK_KEY_LIST, "[\"sasl_username\"]", CHECK_KEY_AT(relay_conf, keys)},
    {"sender_domains", CHECK_KEY_LIST, "[]", CHECK_KEY_AT(relay_conf, sender_domains)},
    {"window", CHECK_KEY_DURATION, "\"1h\"", 60, 86400 * 7, CHECK_KEY_AT(relay_conf, window)},
    {"max_networks", CHECK_KEY_INT, "10", 1, 100000, CHECK_KEY_AT(relay_conf, max_networks)},
    {"max_entries", CHECK_KEY_INT, "1000000", 0, INT64_C(1000000000), CHECK_KEY_AT(relay_conf, max_entries)},
    {"ipv4_prefix", CHECK_KEY_INT, "24", 8, 32, CHECK_KEY_AT(relay_conf, ipv4_prefix)},
    {"ipv6_prefix", CHECK_KEY_INT, "48", 16, 128, CHECK_KEY_AT(relay_conf, ipv6_prefix)},
    {"exempt_networks", CHECK_KEY_LIST, "[]", CHECK_KEY_AT(relay_conf, exempt_networks)},
    {"action", CHECK_KEY_ENUM, "\"defer\"",
     .names = (const char *const[]){"defer", "reject", "hold", "discard", NULL},
     CHECK_KEY_AT(relay_conf, action)},
    {"reply", CHECK_KEY_STRING, "null", 0, 400, .nullable = true, CHECK_KEY_AT(relay_conf, reply)},
    {"block_account", CHECK_KEY_BOOL, "false", CHECK_KEY_AT(relay_conf, block_account)},
    {"block_ttl", CHECK_KEY_DURATION, "\"24h\"", 60, 86400 * 365, CHECK_KEY_AT(relay_conf, block_ttl)},
    {"notify", CHECK_KEY_LIST, "null", .nullable = true, CHECK_KEY_AT(relay_conf, notify)},
    {"notify_timeout", CHECK_KEY_DURATION, "\"10s\"", 1, 3600, CHECK_KEY_AT(relay_conf, notify_timeout)},
    {"on_error", CHECK_KEY_ENUM, "\"continue\"", .names = (const char *const[]){"continue", "tempfail", NULL},
     CHECK_KEY_AT(relay_conf, on_error)},
};

/*
 * Never counted, whatever exempt_networks says: the site's own hosts
 * (webmail, internal relays) on loopback, RFC 1918, link-local and
 * unique-local addresses. Not CGNAT (100.64.0.0/10, RFC 6598): a server
 * on the public Internet never sees it (it sees the carrier's public NAT
 * address), and one that does sits inside a carrier, where each of those
 * addresses is another customer: exempting them would let a botnet of
 * that carrier's customers use a stolen password unseen.
 */
static const char *const private_networks[] = {
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
    "0.0.0.0/8",   "::1",        "::/128",        "fc00::/7",       "fe80::/10",
};

size_t relay_set_name(const char *account_key, char *out, size_t outlen)
{
	size_t plen = sizeof(SET_PREFIX) - 1, klen = strlen(account_key);

	/* memcpy, not snprintf: at every recipient of an account, and snprintf's parsing costs more. */
	if (!account_key[0] || plen + klen >= outlen) {
		if (outlen)
			out[0] = '\0';
		return 0;
	}
	memcpy(out, SET_PREFIX, plen);
	memcpy(out + plen, account_key, klen + 1);
	return plen + klen;
}

static int compile_keys(relay_conf *c, char *err, size_t errlen)
{
	c->key_bits = 0;
	for (size_t i = 0; i < c->keys.n; i++) {
		if (strcmp(c->keys.v[i], "sasl_username") == 0)
			c->key_bits |= RELAY_KEY_SASL;
		else if (strcmp(c->keys.v[i], "sender") == 0)
			c->key_bits |= RELAY_KEY_SENDER;
		else {
			snprintf(err, errlen, "keys: unknown key \"%s\" (known: sasl_username, sender)",
			         c->keys.v[i]);
			return -1;
		}
	}
	if (c->key_bits == 0) {
		snprintf(err, errlen, "keys: must name sasl_username, sender or both");
		return -1;
	}
	/* A sender key on every domain would let anyone lock a user out with a forged MAIL FROM. */
	if ((c->key_bits & RELAY_KEY_SENDER) && c->sender_domains.n == 0) {
		snprintf(err, errlen,
		         "keys: \"sender\" needs relay.sender_domains (an unauthenticated sender "
		         "is keyed only in those domains: a forged sender must not lock a user out)");
		return -1;
	}
	return 0;
}

static int compile_sets(relay_conf *c, char *err, size_t errlen)
{
	char perr[256], dom[ADDR_MAX];

	if (!(c->exempt = netset_new()) || !(c->domains = strset_new(c->sender_domains.n + 1))) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < sizeof(private_networks) / sizeof(private_networks[0]); i++)
		if (netset_add_text(c->exempt, private_networks[i], perr, sizeof(perr)) != 0) {
			snprintf(err, errlen, "exempt_networks: %s", perr);
			return -1;
		}
	for (size_t i = 0; i < c->exempt_networks.n; i++)
		if (netset_add_text(c->exempt, c->exempt_networks.v[i], perr, sizeof(perr)) != 0) {
			snprintf(err, errlen, "exempt_networks: %s: %s", c->exempt_networks.v[i], perr);
			return -1;
		}
	for (size_t i = 0; i < c->sender_domains.n; i++) {
		if (!addr_domain_normalise(c->sender_domains.v[i], dom, sizeof(dom))) {
			snprintf(err, errlen, "sender_domains: \"%s\" is not a domain",
			         c->sender_domains.v[i]);
			return -1;
		}
		if (strset_add(c->domains, dom, strlen(dom)) < 0) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
	}
	return 0;
}

static int compile_reply(relay_conf *c, char *err, size_t errlen)
{
	char perr[256];
	const char *text = c->reply ? c->reply : default_reply[c->action];

	if (!smtp_reply_parse(text, &c->reply_parsed, perr, sizeof(perr))) {
		snprintf(err, errlen, "reply: %s", perr);
		return -1;
	}
	if (c->action == RELAY_ACTION_DEFER && c->reply_parsed.code[0] != '4') {
		snprintf(err, errlen, "reply: action defer needs a 4xx code, not %s", c->reply_parsed.code);
		return -1;
	}
	if (c->action == RELAY_ACTION_REJECT && c->reply_parsed.code[0] != '5') {
		snprintf(err, errlen, "reply: action reject needs a 5xx code, not %s", c->reply_parsed.code);
		return -1;
	}
	return 0;
}

static int compile_notify(const relay_conf *c, char *err, size_t errlen)
{
	if (c->notify.n == 0)
		return 0;
	if (c->notify.v[0][0] != '/') {
		snprintf(err, errlen,
		         "notify: the program must be an absolute path, not \"%s\" (no shell, no PATH)",
		         c->notify.v[0]);
		return -1;
	}
	if (strstr(c->notify.v[0], "%{")) {
		snprintf(err, errlen,
		         "notify: the program \"%s\" holds a placeholder: it is the admin's, never a value "
		         "from mail",
		         c->notify.v[0]);
		return -1;
	}
	for (size_t i = 1; i < c->notify.n; i++) {
		const char *a = c->notify.v[i];
		size_t j = 0;

		if (!strstr(a, "%{"))
			continue;
		while (hook_names[j] && !(strncmp(a + 2, hook_names[j], strlen(hook_names[j])) == 0 &&
		                          strcmp(a + 2 + strlen(hook_names[j]), "}") == 0))
			j++;
		/* A value is a whole argument: inside a sh -c script a sender's local part would be code. */
		if (a[0] != '%' || a[1] != '{' || !hook_names[j]) {
			snprintf(err, errlen,
			         "notify: \"%s\": a placeholder is a whole argument, one of %%{account}, "
			         "%%{network}, %%{count}, %%{action} (pass it to a script as \"$1\")",
			         a);
			return -1;
		}
	}
	return 0;
}

static int relay_compile(void *conf, char *err, size_t errlen)
{
	relay_conf *c = conf;

	if (compile_keys(c, err, errlen) < 0 || compile_sets(c, err, errlen) < 0 ||
	    compile_reply(c, err, errlen) < 0 || compile_notify(c, err, errlen) < 0)
		return -1;
	return 0;
}

static void relay_conf_free(void *conf)
{
	relay_conf *c = conf;

	netset_free(c->exempt);
	strset_free(c->domains);
	c->exempt = NULL;
	c->domains = NULL;
}

/*
 * The account of this transaction, by the first of relay.keys that
 * applies: the SASL login, or (only when listed) an unauthenticated
 * sender of one of sender_domains. false: not keyed.
 */
static bool account_of(const relay_conf *conf, const check_ctx *ctx, relay_scratch *s)
{
	const decide_facts *f = ctx->facts;
	const decide_txn *txn = ctx->txn;
	const char *domain;

	for (size_t i = 0; i < conf->keys.n; i++) {
		if (strcmp(conf->keys.v[i], "sasl_username") == 0) {
			if (f->sasl_username && *f->sasl_username &&
			    key_sasl(f->sasl_username, s->account, sizeof(s->account)) > 0) {
				s->is_sasl = true;
				return true;
			}
			continue;
		}
		/* "sender": a forged sender must not lock a real user out, so only the listed domains. */
		if (txn->null_sender || txn->sender_invalid || !(domain = addr_domain(txn->sender)) ||
		    !strset_contains(conf->domains, domain, strlen(domain)))
			continue;
		if (key_sender(txn->sender, s->account, sizeof(s->account)) > 0) {
			s->is_sasl = false;
			return true;
		}
	}
	return false;
}

static relay_plan plan(const relay_conf *conf, const check_ctx *ctx, relay_scratch *s)
{
	addr_ip ip;
	addr_net net;

	if (!account_of(conf, ctx, s) || relay_set_name(s->account, s->set, sizeof(s->set)) == 0)
		return RELAY_SKIP;
	/*
	 * txn->client is this parse when set (decide_prepare); not for a
	 * whitelisted verified sender nor loopback, so parsed here then.
	 */
	if (ctx->txn->have_client)
		ip = ctx->txn->client;
	else if (!ctx->facts->client_address || !addr_ip_parse(ctx->facts->client_address, &ip))
		return RELAY_SKIP;
	if (netset_contains(conf->exempt, &ip))
		return RELAY_EXEMPT;
	net = addr_net_of(&ip, ip.version == 4 ? (unsigned)conf->ipv4_prefix : (unsigned)conf->ipv6_prefix);
	addr_net_format(&net, s->network, sizeof(s->network));
	return RELAY_ASK;
}

static size_t relay_needs(const void *vconf, const check_ctx *ctx, void *scratch, query *q)
{
	const relay_conf *conf = vconf;
	relay_scratch *s = scratch;

	s->plan = RELAY_SKIP;
	if (ctx->stage != CHECK_STAGE_RCPT)
		return 0;
	s->plan = plan(conf, ctx, s);
	if (s->plan != RELAY_ASK)
		return 0;
	/*
	 * Counted first, decided after (a late check: only once the traps,
	 * the blocklist and the whitelist let the recipient through). The
	 * peek says whether the network is known; the add, atomic and
	 * carrying the limit, is what decides a new one, so that parallel
	 * requests from new networks (workers, hosts on one Redis) cannot all
	 * pass on the same free slot: the store lets exactly as many in as
	 * there is room.
	 */
	memset(q, 0, 2 * sizeof(*q));
	for (int i = 0; i < 2; i++) {
		q[i].kind = QUERY_DISTINCT_ADD;
		q[i].u.distinct.key = s->set;
		q[i].u.distinct.member = s->network;
		q[i].u.distinct.now = ctx->now;
		q[i].u.distinct.window = conf->window;
		/* Hosts on one Redis whose clocks disagree still count one window (Redis TIME). */
		q[i].u.distinct.store_clock = true;
		/*
		 * Shadow mode goes on counting past the limit, so that relay
		 * show says how far an account went; bounded, so that a botnet
		 * cannot grow the set without end.
		 */
		q[i].u.distinct.limit =
		    (uint64_t)conf->max_networks + (ctx->mode == CHECK_MODE_ENFORCE ? 0 : RELAY_SHADOW_EXTRA);
	}
	q[0].u.distinct.peek = true;
	/* SQLite: a new network that finds the table full is not counted (relay_decide). */
	q[1].u.distinct.max_rows = (uint64_t)conf->max_entries;
	/* Did the account trip in this window already? Then no second block, no second hook. */
	memset(&q[2], 0, sizeof(q[2]));
	q[2].kind = QUERY_KV;
	q[2].u.kv.op = QUERY_KV_GET;
	q[2].u.kv.ns = ctx->mode == CHECK_MODE_ENFORCE ? TRIP_NS : TRIP_NS_SHADOW;
	q[2].u.kv.key = s->account;
	q[2].u.kv.now_ms = ctx->now_ms;
	return 3;
}

/* block_account: the account's blocklist entry, reason "relay", on every host and front end. */
static void block(const relay_conf *conf, const check_ctx *ctx, const relay_scratch *s, check_effects *eff)
{
	query *q = &eff->q[eff->nq];

	memset(q, 0, sizeof(*q));
	q->kind = QUERY_BLOCKLIST_RECORD;
	q->u.record.keys[0] = s->account;
	q->u.record.nkeys = 1;
	q->u.record.hit = (query_hit){
	    .now = ctx->now,
	    .ttl = conf->block_ttl,
	    .trap = "",
	    .sender = ctx->txn->null_sender ? "" : ctx->txn->sender,
	    .recipient = ctx->facts->recipient ? ctx->facts->recipient : "",
	    .client = ctx->facts->client_address ? ctx->facts->client_address : "",
	    .helo = ctx->facts->helo ? ctx->facts->helo : "",
	    .queue_id = ctx->facts->queue_id ? ctx->facts->queue_id : "",
	    .reason = "relay",
	};
	eff->when[eff->nq++] = CHECK_EFFECT_ENFORCE;
}

/* The first trip of the window: its marker, live for a window (a PUT_NEW: racing trips write one). */
static int mark(const relay_conf *conf, const check_ctx *ctx, relay_scratch *s, uint64_t count,
                check_effects *eff)
{
	query *q = &eff->q[eff->nq];

	snprintf(s->marker, sizeof(s->marker), "%s networks=%" PRIu64, s->network, count);
	memset(q, 0, sizeof(*q));
	q->kind = QUERY_KV;
	q->u.kv.op = QUERY_KV_PUT_NEW;
	q->u.kv.ns = ctx->mode == CHECK_MODE_ENFORCE ? TRIP_NS : TRIP_NS_SHADOW;
	q->u.kv.key = s->account;
	q->u.kv.value = s->marker;
	q->u.kv.now_ms = ctx->now_ms;
	q->u.kv.ttl_ms = conf->window * 1000;
	eff->when[eff->nq] = CHECK_EFFECT_ALWAYS;
	return (int)eff->nq++;
}

static const char *const action_names[] = {"defer", "reject", "hold", "discard"};

/*
 * Over the limit: refuse. The first trip of a window (no marker yet) also
 * blocks the account and runs the hook, once however many hosts and
 * workers trip at the same moment (the hook is gated on the marker's
 * write); later trips in the window only refuse (trip=repeat).
 */
static void trip(const relay_conf *conf, const check_ctx *ctx, relay_scratch *s, uint64_t count,
                 bool tripped_before, check_verdict *v, check_effects *eff)
{
	char field[QUERY_KEY_MAX];
	static const decide_action actions[] = {
	    [RELAY_ACTION_DEFER] = DECIDE_TEMPFAIL,
	    [RELAY_ACTION_REJECT] = DECIDE_REJECT,
	    [RELAY_ACTION_HOLD] = DECIDE_HOLD,
	    [RELAY_ACTION_DISCARD] = DECIDE_DISCARD,
	};

	check_verdict_set(v, actions[conf->action], "relay", &conf->reply_parsed);
	check_detail_add(
	    v, " account=%s network=%s networks=%" PRIu64 " max_networks=%" PRId64 " window=%" PRId64 "s",
	    check_field(s->account, field, sizeof(field)), s->network, count + 1, conf->max_networks,
	    conf->window);
	if (tripped_before) {
		check_detail_add(v, " trip=repeat");
		return;
	}
	check_detail_add(v, " trip=first");
	eff->hook_gate = mark(conf, ctx, s, count + 1, eff);
	/* Only a login: a sender-keyed account's trip may come from forged MAIL FROMs (a stranger). */
	if (conf->block_account && s->is_sasl)
		block(conf, ctx, s, eff);
	if (conf->notify.n > 0) {
		snprintf(s->count, sizeof(s->count), "%" PRIu64, count + 1);
		eff->hook_argv = &conf->notify;
		eff->hook_names = hook_names;
		eff->hook_values[0] = s->account;
		eff->hook_values[1] = s->network;
		eff->hook_values[2] = s->count;
		eff->hook_values[3] = action_names[conf->action];
		eff->hook_timeout_ms = conf->notify_timeout * 1000;
	}
}

static void relay_decide(const void *vconf, const check_ctx *ctx, void *scratch, const query *answers,
                         size_t nanswers, check_verdict *v, check_effects *eff)
{
	const relay_conf *conf = vconf;
	relay_scratch *s = scratch;
	const query *peek = &answers[0], *add = &answers[1];
	char field[QUERY_KEY_MAX];

	if (s->plan != RELAY_ASK || nanswers < 3)
		return;
	switch (peek->status == QUERY_OK ? add->status : peek->status) {
	case QUERY_OK:
		break;
	case QUERY_ERROR:
		if (conf->on_error == RELAY_ON_ERROR_TEMPFAIL)
			check_verdict_set(v, DECIDE_TEMPFAIL, "store-error", &REPLY_STORE_ERROR);
		else
			check_verdict_set(v, DECIDE_CONTINUE, "store-error", NULL);
		check_detail_add(v, " check=relay account=%s", check_field(s->account, field, sizeof(field)));
		return;
	case QUERY_NOTFOUND:
	case QUERY_PENDING:
		return;
	}
	/*
	 * A known network was refreshed; a new one was added if the account
	 * stays within max_networks. A new one the store held back at
	 * relay.max_entries (SQLite's table full of live rows, the engine logs
	 * it) passes uncounted, as a store error under on_error continue: it
	 * is no evidence against the account.
	 */
	if (peek->u.distinct.present || add->u.distinct.capped ||
	    add->u.distinct.count <= (uint64_t)conf->max_networks)
		return;
	trip(conf, ctx, s, add->u.distinct.count - 1, answers[2].status == QUERY_OK && answers[2].u.kv.found,
	     v, eff);
}

const check_def check_relay = {
    .name = "relay",
    .stages = CHECK_STAGE_RCPT,
    .default_mode = CHECK_MODE_OFF,
    .late = true,
    .conf_size = sizeof(relay_conf),
    .keys = relay_keys,
    .nkeys = sizeof(relay_keys) / sizeof(relay_keys[0]),
    .compile = relay_compile,
    .conf_free = relay_conf_free,
    .needs = relay_needs,
    .decide = relay_decide,
};
