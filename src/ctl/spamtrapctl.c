/*
 * spamtrapctl: manage the blocklist store the daemon uses (SPEC.md
 * "Commands"): list, lookup, add, remove, expire, export, import, the
 * greylist (greylist list|lookup|remove|whitelist), the relay check's
 * networks (relay show|reset) and the ratelimit's buckets (rate
 * show|reset). It reads the
 * daemon's config to find the store and talks to the store directly, so
 * it works whether or not the daemon runs.
 *
 * Keys are normalised to the forms of core/decide.h before any store
 * call, so "<User@Example.COM>" and "user@example.com" name one entry.
 * Exit status: 0 done, 1 usage error or nothing found, 2 config or store
 * error. Messages for people go to stderr; results to stdout.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "atomicfile.h"
#include "config.h"
#include "ctl/ctl_scrape.h"
#include "ctl/ctl_stats.h"
#include "core/checks/greylist.h"
#include "core/checks/ratelimit.h"
#include "core/checks/relay.h"
#include "core/addr.h"
#include "core/greynorm.h"
#include "core/export.h"
#include "core/greystep.h"
#include "core/key.h"
#include "daemon.h"
#include "log.h"
#include "store/store.h"

enum { EXIT_OK = 0, EXIT_USAGE = 1, EXIT_NOTFOUND = 1, EXIT_STORE = 2 };

#define MAX_OVERRIDES 32

static const char usage_text[] =
    "usage: spamtrapctl [-c FILE] [-o KEY=VALUE]... COMMAND [ARGS]\n"
    "\n"
    "  list                                 entries in force, one a line, tab separated:\n"
    "                                       key, expires, hits, last seen, trap, reason\n"
    "  lookup KEY                           explain every entry that matches KEY\n"
    "  add KEY [--ttl T] [--reason TEXT]    blocklist KEY for T (default blocklist.ttl)\n"
    "  remove KEY                           delete the entry for KEY\n"
    "  expire                               drop expired entries now\n"
    "  stats                                entries by type, new and hit in the last minute,\n"
    "                                       hour and day, top traps and most-hit keys; with\n"
    "                                       metrics.listen, the daemon's counters and their\n"
    "                                       rates over the last minute and hour\n"
    "  export [--format F] [--keys LIST] [--output FILE]\n"
    "                                       the blocklist as a Postfix map (postfix, cidr), a\n"
    "                                       firewall set (nft, ipset, pf) or a DNSBL zone\n"
    "                                       (rbldnsd); FILE is replaced atomically\n"
    "  import FILE [--ttl T] [--reason TEXT]\n"
    "                                       add or replace the entries of FILE: lines as list\n"
    "                                       prints them, or keys alone (see spamtrapctl(8))\n"
    "  greylist list                        triplets and auto-whitelisted clients in force\n"
    "  greylist lookup CLIENT SENDER RECIPIENT\n"
    "                                       why a mail is delayed, and for how long more\n"
    "  greylist remove CLIENT SENDER RECIPIENT\n"
    "  greylist remove --client CLIENT      drop a triplet, or a client's auto-whitelist record\n"
    "  greylist whitelist CLIENT            auto-whitelist CLIENT (until greylist.max_age)\n"
    "  rate show RULE:VALUE                 a ratelimit bucket: its rule and the room left\n"
    "  rate reset RULE:VALUE                empty the bucket: its key may send a full burst again\n"
    "  relay show ACCOUNT                   an account's client networks in relay.window,\n"
    "                                       when each was last seen\n"
    "  relay reset ACCOUNT                  forget them (the account counts from zero)\n"
    "                                       ACCOUNT: NAME or sasl:NAME (a login),\n"
    "                                       sender:ADDRESS (a sender of relay.sender_domains)\n"
    "\n"
    "  -c FILE          config file (default " CONFIG_DEFAULT_PATH ")\n"
    "  -o KEY=VALUE     override a config key, e.g. -o store.sqlite.path=/tmp/x.db\n"
    "  -h, --help       print this help and exit\n"
    "  -V, --version    print the version and exit\n"
    "\n"
    "KEY: user@example.com, @example.com, 192.0.2.7, 192.0.2.0/24, 2001:db8::/64,\n"
    "     sasl:NAME or helo:NAME.\n"
    "Durations: 3600, 30s, 15m, 24h, 7d. Exit: 0 ok, 1 usage or not found, 2 store error.\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("spamtrapctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\n\n", stderr);
	fputs(usage_text, stderr);
	return EXIT_USAGE;
}

/* A bad value (a key, a duration): the message alone, the usage would bury it. */
static int value_error(const char *what, const char *msg)
{
	fprintf(stderr, "spamtrapctl: %s: %s\n", what, msg);
	return EXIT_USAGE;
}

/* --- output helpers ------------------------------------------------------ */

/* ISO 8601 local time with the UTC offset as +hh:mm. */
static const char *iso_time(int64_t t, char *buf, size_t buflen)
{
	time_t tt = (time_t)t;
	struct tm tm;
	long off;
	size_t n;

	if (!localtime_r(&tt, &tm) || (n = strftime(buf, buflen, "%Y-%m-%dT%H:%M:%S", &tm)) == 0) {
		snprintf(buf, buflen, "@%lld", (long long)t);
		return buf;
	}
	off = tm.tm_gmtoff;
	snprintf(buf + n, buflen - n, "%c%02ld:%02ld", off < 0 ? '-' : '+', labs(off) / 3600,
	         labs(off) % 3600 / 60);
	return buf;
}

/* "2d 3h", "5h 10m", "42s": how long until (or since) an instant, for people. */
static const char *span(int64_t secs, char *buf, size_t buflen)
{
	if (secs < 0)
		secs = -secs;
	if (secs >= 86400)
		snprintf(buf, buflen, "%lldd %lldh", (long long)(secs / 86400),
		         (long long)(secs % 86400 / 3600));
	else if (secs >= 3600)
		snprintf(buf, buflen, "%lldh %lldm", (long long)(secs / 3600), (long long)(secs % 3600 / 60));
	else if (secs >= 60)
		snprintf(buf, buflen, "%lldm %llds", (long long)(secs / 60), (long long)(secs % 60));
	else
		snprintf(buf, buflen, "%llds", (long long)secs);
	return buf;
}

/* --- keys ---------------------------------------------------------------- */

typedef struct ctl_key {
	key_type type;
	char text[STORE_KEY_MAX];
	addr_net net; /* KEY_TYPE_NETWORK */
} ctl_key;

/* sasl:NAME and helo:NAME as the daemon makes them (core/key.h), whatever the case of the prefix. */
static int name_key(ctl_key *k, const char *name, char *err, size_t errlen)
{
	size_t len = k->type == KEY_TYPE_SASL ? key_sasl(name, k->text, sizeof(k->text))
	                                      : key_helo(name, k->text, sizeof(k->text));

	if (len > 0)
		return 0;
	if (!name[0])
		snprintf(err, errlen, "%s needs a name", k->type == KEY_TYPE_SASL ? "sasl:" : "helo:");
	else if (k->type == KEY_TYPE_SASL)
		snprintf(
		    err, errlen,
		    "sasl:%.64s: a SASL name is at most %d bytes of UTF-8 text without control characters",
		    name, KEY_NAME_MAX);
	else
		snprintf(err, errlen,
		         "helo:%.64s: a HELO name is at most %d printable ASCII characters, no spaces", name,
		         KEY_NAME_MAX);
	return -1;
}

/*
 * A sender as the daemon keys it (core/key.h): quoting undone as Postfix
 * does, then quoted where the key needs it. "<User@Example.COM>" is
 * user@example.com, "x y"@d is x y@d, both <sasl:x@d> and "sasl:x"@d are
 * "sasl:x"@d: list's output reads back to the same key.
 */
static int address_key(const char *in, ctl_key *k, char *err, size_t errlen)
{
	char buf[ADDR_MAX], bare[ADDR_MAX];

	if (strlen(in) >= sizeof(bare)) {
		snprintf(err, errlen, "'%.64s...' is too long for an address", in);
		return -1;
	}
	memcpy(bare, in, strlen(in) + 1);
	addr_unquote(bare);
	switch (addr_normalise(bare, strlen(bare), buf, sizeof(buf))) {
	case ADDR_NULL:
		snprintf(err, errlen, "the null sender <> is never blocklisted");
		return -1;
	case ADDR_INVALID:
		snprintf(err, errlen, "'%.64s' is not a valid address", in);
		return -1;
	case ADDR_OK:
		break;
	}
	if (key_sender(buf, k->text, sizeof(k->text)) == 0) {
		snprintf(err, errlen, "'%.64s' is not a valid address (user@domain, UTF-8 text)", in);
		return -1;
	}
	return 0;
}

/* "@Example.COM." is the sender domain key "@example.com": normalised as the domain of an address. */
static int domain_key(const char *in, ctl_key *k, char *err, size_t errlen)
{
	char addr[ADDR_MAX + 2], buf[ADDR_MAX];

	if (strlen(in) >= ADDR_MAX) {
		snprintf(err, errlen, "'%.64s...' is too long for a domain", in);
		return -1;
	}
	snprintf(addr, sizeof(addr), "x%s", in);
	if (in[1] == '\0' || strchr(in + 1, '@') ||
	    addr_normalise(addr, strlen(addr), buf, sizeof(buf)) != ADDR_OK ||
	    key_domain(buf, k->text, sizeof(k->text)) == 0) {
		snprintf(err, errlen, "'%.64s' is not a valid @domain", in);
		return -1;
	}
	return 0;
}

static int net_key(const char *in, ctl_key *k, char *err, size_t errlen)
{
	char text[ADDR_NET_STRLEN];

	if (!addr_net_parse(in, &k->net, err, errlen))
		return -1;
	addr_net_format(&k->net, text, sizeof(text));
	snprintf(k->text, sizeof(k->text), "%s", text);
	return 0;
}

/* Any KEY form of the command line into its canonical store key; its type is key_type_of's. */
static int key_parse(const char *in, ctl_key *k, char *err, size_t errlen)
{
	memset(k, 0, sizeof(*k));
	if (strcmp(in, "<>") == 0 || in[0] == '\0') {
		snprintf(err, errlen, "the null sender <> is never blocklisted");
		return -1;
	}
	k->type = key_type_of(in);
	switch (k->type) {
	case KEY_TYPE_SASL:
	case KEY_TYPE_HELO:
		return name_key(k, in + 5, err, errlen);
	case KEY_TYPE_DOMAIN:
		return domain_key(in, k, err, errlen);
	case KEY_TYPE_SENDER:
		return address_key(in, k, err, errlen);
	case KEY_TYPE_NETWORK:
		break;
	}
	if (strpbrk(in, ":/") || (in[0] && strspn(in, "0123456789.[]") == strlen(in)))
		return net_key(in, k, err, errlen);
	snprintf(err, errlen,
	         "'%.64s' is not a key: use user@example.com, @example.com, an IP address or network, "
	         "sasl:NAME or helo:NAME",
	         in);
	return -1;
}

/*
 * The daemon looks up IPv4 networks /8 to /32, IPv6 networks /16 to /128
 * in steps of 4, and the configured aggregation lengths (decide.c); an
 * entry of another length would never match anything.
 */
static int net_checked(const config *cfg, const addr_net *net, char *err, size_t errlen)
{
	unsigned p = net->prefix;

	if (net->ip.version == 4 && (p >= 8 || p == cfg->decide.ipv4_prefix))
		return 0;
	if (net->ip.version == 6 && ((p >= 16 && p % 4 == 0) || p == cfg->decide.ipv6_prefix))
		return 0;
	snprintf(err, errlen,
	         "spamtrapd never checks a /%u network: use IPv4 /8 to /32, IPv6 /16 to /128 in steps of 4",
	         p);
	return -1;
}

/* --- the store ----------------------------------------------------------- */

typedef struct ctl {
	config *cfg;
	store *st;
	int64_t now;
} ctl;

static int fail_store(const char *what)
{
	fprintf(stderr, "spamtrapctl: %s: %s\n", what, store_last_error());
	return EXIT_STORE;
}

/* --- lookup -------------------------------------------------------------- */

static void explain_line(const char *label, const char *value)
{
	char buf[STORE_FIELD_MAX];

	printf("  %-11s %s\n", label, value && value[0] ? log_safe(value, buf, sizeof(buf)) : "-");
}

static void explain(const ctl *c, const store_entry *e, const char *asked)
{
	char t[64], d[32], key[STORE_KEY_MAX], hits[24];

	if (e->expires > c->now)
		printf("%s: blocklisted until %s (%s from now)\n", log_safe(e->key, key, sizeof(key)),
		       iso_time(e->expires, t, sizeof(t)), span(e->expires - c->now, d, sizeof(d)));
	else
		printf("%s: expired since %s (%s ago); `spamtrapctl expire` drops it\n",
		       log_safe(e->key, key, sizeof(key)), iso_time(e->expires, t, sizeof(t)),
		       span(c->now - e->expires, d, sizeof(d)));
	if (strcmp(e->key, asked) != 0)
		explain_line("matches:", asked);
	/* The relay check's block_account entries have no trap either (core/checks/relay.c). */
	explain_line("trap:", e->trap[0] ? e->trap
	                      : strcmp(e->reason, "relay") == 0
	                          ? "(none: the relay check, a compromised account)"
	                          : "(none: added by hand)");
	explain_line("reason:", e->reason);
	explain_line("first seen:", iso_time(e->first_seen, t, sizeof(t)));
	explain_line("last seen:", iso_time(e->last_seen, t, sizeof(t)));
	snprintf(hits, sizeof(hits), "%llu", (unsigned long long)e->hits);
	explain_line("hits:", hits);
	explain_line("client:", e->client);
	explain_line("helo:", e->helo);
	explain_line("queue id:", e->queue_id);
	explain_line("sender:", e->sender);
	explain_line("recipient:", e->recipient);
}

/* Show the entry for key if there is one; counts shown and in-force entries. */
static int show_key(const ctl *c, const char *key, const char *asked, int *shown, int *in_force)
{
	store_entry e;

	switch (store_get(c->st, key, &e)) {
	case STORE_OK:
		if (*shown)
			putchar('\n');
		explain(c, &e, asked);
		(*shown)++;
		*in_force += e.expires > c->now;
		return 0;
	case STORE_NOTFOUND:
		return 0;
	case STORE_ERROR:
		break;
	}
	return -1;
}

/* The candidates of a key: an IP shows every network that contains it; an address, its domain too. */
static int show_candidates(const ctl *c, const ctl_key *k, int *shown, int *in_force)
{
	if (k->type == KEY_TYPE_NETWORK) {
		for (int p = k->net.prefix; p >= 0; p--) {
			addr_net net = addr_net_of(&k->net.ip, (unsigned)p);
			char text[ADDR_NET_STRLEN];

			addr_net_format(&net, text, sizeof(text));
			if (show_key(c, text, k->text, shown, in_force) < 0)
				return -1;
		}
		return 0;
	}
	if (show_key(c, k->text, k->text, shown, in_force) < 0)
		return -1;
	if (k->type == KEY_TYPE_SENDER) {
		char domain[STORE_KEY_MAX];

		snprintf(domain, sizeof(domain), "@%s", addr_domain(k->text));
		return show_key(c, domain, k->text, shown, in_force);
	}
	return 0;
}

static int cmd_lookup(ctl *c, const ctl_key *k)
{
	int shown = 0, in_force = 0;

	if (show_candidates(c, k, &shown, &in_force) < 0)
		return fail_store("lookup");
	if (shown == 0)
		fprintf(stderr, "spamtrapctl: %s: not blocklisted\n", k->text);
	return in_force ? EXIT_OK : EXIT_NOTFOUND;
}

/* --- list ---------------------------------------------------------------- */

static int list_one(const store_entry *e, void *ctx)
{
	char key[STORE_KEY_MAX], exp[64], last[64], trap[STORE_FIELD_MAX], reason[STORE_FIELD_MAX];

	(void)ctx;
	printf("%s\t%s\t%llu\t%s\t%s\t%s\n", log_safe(e->key, key, sizeof(key)),
	       iso_time(e->expires, exp, sizeof(exp)), (unsigned long long)e->hits,
	       iso_time(e->last_seen, last, sizeof(last)),
	       e->trap[0] ? log_safe(e->trap, trap, sizeof(trap)) : "-",
	       e->reason[0] ? log_safe(e->reason, reason, sizeof(reason)) : "-");
	return 0;
}

static int cmd_list(ctl *c)
{
	return store_foreach(c->st, c->now, list_one, NULL) == STORE_OK ? EXIT_OK : fail_store("list");
}

/* --- stats --------------------------------------------------------------- */

static int stats_one(const store_entry *e, void *ctx)
{
	return ctl_stats_add(ctx, e);
}

/* The daemon's side, when it serves metrics: a daemon that does not answer is said, not an error. */
static void print_daemon_counters(const config *cfg)
{
	char err[256], *body;
	bool answered;

	if (!cfg->metrics.listen)
		return;
	fflush(stdout);
	/*
	 * The rates, from the daemon's recent snapshots; a daemon that answers
	 * without them: its counters alone. One that does not answer is not
	 * asked twice (twice the timeout).
	 */
	body = ctl_scrape_path(cfg->metrics.listen, "/rates", &answered, err, sizeof(err));
	if (body && ctl_stats_print_rates(body, stdout)) {
		free(body);
		return;
	}
	free(body);
	if (!answered) {
		fprintf(stderr, "spamtrapctl: stats: no counters from the daemon (metrics.listen %s)\n", err);
		return;
	}
	if (!(body = ctl_scrape(cfg->metrics.listen, err, sizeof(err)))) {
		fprintf(stderr, "spamtrapctl: stats: no counters from the daemon (metrics.listen %s)\n", err);
		return;
	}
	ctl_stats_print_daemon(body, stdout);
	free(body);
}

static int cmd_stats(ctl *c)
{
	ctl_stats *s = ctl_stats_new(c->now);
	int rc;

	if (!s) {
		fprintf(stderr, "spamtrapctl: stats: out of memory\n");
		return EXIT_STORE;
	}
	if (store_foreach(c->st, c->now, stats_one, s) == STORE_OK) {
		ctl_stats_print(s, stdout);
		print_daemon_counters(c->cfg);
		rc = EXIT_OK;
	} else {
		rc = fail_store("stats");
	}
	ctl_stats_free(s);
	return rc;
}

/* --- add, remove, expire ------------------------------------------------- */

static int cmd_add(ctl *c, const ctl_key *k, int64_t ttl, const char *reason)
{
	store_entry e;
	char t[64];
	store_status rc = store_get(c->st, k->text, &e);
	bool update = rc == STORE_OK && e.expires > c->now;

	if (rc == STORE_ERROR)
		return fail_store("add");
	/* An entry in force keeps its history; a new or expired one starts afresh. */
	if (!update) {
		memset(&e, 0, sizeof(e));
		snprintf(e.key, sizeof(e.key), "%s", k->text);
		e.first_seen = e.last_seen = c->now;
		snprintf(e.reason, sizeof(e.reason), "%s", reason ? reason : "manual");
	} else if (reason) {
		snprintf(e.reason, sizeof(e.reason), "%s", reason);
	}
	e.expires = c->now + ttl;
	if (store_put(c->st, &e) != STORE_OK)
		return fail_store("add");
	printf("%s %s until %s\n", update ? "updated" : "added", k->text, iso_time(e.expires, t, sizeof(t)));
	return EXIT_OK;
}

static int cmd_remove(ctl *c, const ctl_key *k)
{
	switch (store_remove(c->st, k->text)) {
	case STORE_OK:
		printf("removed %s\n", k->text);
		return EXIT_OK;
	case STORE_NOTFOUND:
		fprintf(stderr, "spamtrapctl: %s: no such entry\n", k->text);
		return EXIT_NOTFOUND;
	case STORE_ERROR:
		break;
	}
	return fail_store("remove");
}

static int cmd_expire(ctl *c)
{
	uint64_t n = 0;

	if (store_purge(c->st, c->now, &n) != STORE_OK)
		return fail_store("expire");
	printf("removed %llu expired %s\n", (unsigned long long)n, n == 1 ? "entry" : "entries");
	return EXIT_OK;
}

/* --- greylist ------------------------------------------------------------ */

/* The greylist settings these commands need, from the config as the greylist check reads them. */
typedef struct ctl_grey {
	int64_t delay_ms, max_age_ms;
	uint64_t awl_count;
	bool awl_by_network;
	unsigned ipv4_prefix, ipv6_prefix;
	const char *delimiters; /* traps.recipient_delimiter, as the check's sender key */
} ctl_grey;

static void ctl_grey_conf(const config *cfg, ctl_grey *g)
{
	const greylist_conf *gc = cfg->pipeline.checks[CHECK_ID_GREYLIST].conf;

	*g = (ctl_grey){.delay_ms = gc->delay * 1000,
	                .max_age_ms = gc->max_age * 1000,
	                .awl_count = (uint64_t)gc->awl_count,
	                .awl_by_network = gc->awl_by == GREYLIST_AWL_BY_NETWORK,
	                .ipv4_prefix = (unsigned)gc->ipv4_prefix,
	                .ipv6_prefix = (unsigned)gc->ipv6_prefix,
	                .delimiters = cfg->recipient_delimiter};
}

/* Seconds of ms, rounded up as the check's reply rounds them ("0 seconds" is never said early). */
static int64_t ms_to_s_up(int64_t ms)
{
	return ms <= 0 ? 0 : (ms + 999) / 1000;
}

static const char *iso_ms(int64_t ms, char *buf, size_t buflen)
{
	return iso_time(ms / 1000, buf, buflen);
}

/* --- rate ---------------------------------------------------------------- */

/* "1h" for 3600: a rule's period as the config would write it. */
static void period_text(int64_t s, char *buf, size_t buflen)
{
	if (s % 86400 == 0)
		snprintf(buf, buflen, "%lldd", (long long)(s / 86400));
	else if (s % 3600 == 0)
		snprintf(buf, buflen, "%lldh", (long long)(s / 3600));
	else if (s % 60 == 0)
		snprintf(buf, buflen, "%lldm", (long long)(s / 60));
	else
		snprintf(buf, buflen, "%llds", (long long)s);
}

/* Peek the bucket (a charge of 0, in the store's clock) and say how much room it has. */
static int cmd_rate_show(ctl *c, const ratelimit_rule *r, const char *bucket)
{
	struct timespec ts;
	query q = {.kind = QUERY_COUNTER};
	char per[32], safe[RATELIMIT_BUCKET_MAX * 4];

	clock_gettime(CLOCK_REALTIME, &ts);
	q.u.counter.ns = RATELIMIT_NS;
	q.u.counter.key = bucket;
	q.u.counter.now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	q.u.counter.emission_ms = ratelimit_emission_ms(r);
	q.u.counter.burst = r->burst;
	/* The daemon holds its buckets in memory and writes them behind: written now. */
	if (store_sync(c->st) != STORE_OK || store_counter(c->st, &q) != STORE_OK)
		return fail_store("rate show");
	period_text(r->per, per, sizeof(per));
	printf("bucket %s\n", log_safe(bucket, safe, sizeof(safe)));
	printf("rule %s: key %s, %llu/%s, burst %llu, unit %s, action %s\n", r->name,
	       ratelimit_key_names[r->key], (unsigned long long)r->count, per, (unsigned long long)r->burst,
	       ratelimit_unit_names[r->unit], ratelimit_action_names[r->action]);
	printf("room %llu of %llu%s\n", (unsigned long long)q.u.counter.remaining,
	       (unsigned long long)r->burst,
	       q.u.counter.remaining == 0 ? ": full, mail under this key is refused" : "");
	return EXIT_OK;
}

static int cmd_rate_reset(ctl *c, const char *bucket)
{
	char safe[RATELIMIT_BUCKET_MAX * 4];
	store_status st = store_counter_delete(c->st, RATELIMIT_NS, bucket);

	if (st == STORE_ERROR)
		return fail_store("rate reset");
	log_safe(bucket, safe, sizeof(safe));
	if (st == STORE_NOTFOUND) {
		printf("bucket %s: already empty\n", safe);
		return EXIT_OK;
	}
	printf("bucket %s: reset\n", safe);
	return EXIT_OK;
}

/* A client's address, or a message in err. */
static int grey_client(const char *in, addr_ip *ip, char *err, size_t errlen)
{
	if (addr_ip_parse(in, ip))
		return 0;
	snprintf(err, errlen, "'%.64s' is not an IPv4 or IPv6 address", in);
	return -1;
}

/*
 * The triplet's key exactly as the greylist check makes it: the client's
 * network, the sender normalised (addr_normalise) then made a greylist key
 * (greynorm_sender; "<>" the null sender), the recipient normalised.
 */
static int grey_triplet(const ctl_grey *g, const addr_ip *client, const char *sender, const char *recipient,
                        char *key, size_t keylen, char *err, size_t errlen)
{
	char snorm[ADDR_MAX], skey[ADDR_MAX + 2], rnorm[ADDR_MAX];
	addr_status st = addr_normalise(sender, strlen(sender), snorm, sizeof(snorm));

	if (st == ADDR_INVALID) {
		snprintf(skey, sizeof(skey), "<invalid>"); /* as the check keys an unparsable sender */
	} else {
		if (st == ADDR_NULL)
			snorm[0] = '\0';
		if (greynorm_sender(snorm, g->delimiters, skey, sizeof(skey)) == 0) {
			snprintf(err, errlen, "sender '%.64s' makes no greylist key", sender);
			return -1;
		}
	}
	if (addr_normalise(recipient, strlen(recipient), rnorm, sizeof(rnorm)) != ADDR_OK) {
		snprintf(err, errlen, "'%.64s' is not a recipient address", recipient);
		return -1;
	}
	if (greystep_triplet_key(client, g->ipv4_prefix, g->ipv6_prefix, skey, rnorm, key, keylen) == 0) {
		snprintf(err, errlen, "the triplet's key is longer than %zu bytes", keylen - 1);
		return -1;
	}
	return 0;
}

static int grey_awl_key(const ctl_grey *g, const addr_ip *client, char *key, size_t keylen)
{
	return greystep_awl_key(client, g->awl_by_network, g->ipv4_prefix, g->ipv6_prefix, key, keylen) ? 0
	                                                                                                : -1;
}

typedef struct grey_list_ctx {
	const ctl_grey *g;
} grey_list_ctx;

/* One line a record, tab separated: type, key, state, first seen, last seen, expires. */
static int grey_list_one(const store_grey_record *r, void *ctx)
{
	const grey_list_ctx *lc = ctx;
	char key[GREYSTEP_KEY_MAX], first[64], last[64], exp[64], state[48];

	if (r->kind == STORE_GREY_TRIPLET) {
		printf("triplet\t%s\t%s\t%s\t%s\t%s\n", log_safe(r->key, key, sizeof(key)),
		       r->last_ms - r->first_ms >= lc->g->delay_ms ? "passed" : "pending",
		       iso_ms(r->first_ms, first, sizeof(first)), iso_ms(r->last_ms, last, sizeof(last)),
		       iso_ms(r->expires_ms, exp, sizeof(exp)));
		return 0;
	}
	snprintf(state, sizeof(state), "%s %llu/%llu",
	         lc->g->awl_count && r->count >= lc->g->awl_count ? "whitelisted" : "counting",
	         (unsigned long long)r->count, (unsigned long long)lc->g->awl_count);
	printf("client\t%s\t%s\t-\t%s\t%s\n", log_safe(r->key, key, sizeof(key)), state,
	       iso_ms(r->last_ms, last, sizeof(last)), iso_ms(r->expires_ms, exp, sizeof(exp)));
	return 0;
}

static int cmd_grey_list(ctl *c, const ctl_grey *g)
{
	grey_list_ctx lc = {g};
	int64_t now;

	if (store_greylist_time(c->st, &now) != STORE_OK ||
	    store_greylist_foreach(c->st, now, grey_list_one, &lc) != STORE_OK)
		return fail_store("greylist list");
	return EXIT_OK;
}

/* The triplet's state in words: what its next attempt gets. */
static void grey_explain_triplet(const ctl_grey *g, const store_grey_record *r, int64_t now)
{
	char key[GREYSTEP_KEY_MAX], t[64], d[32];
	int64_t left = r->first_ms + g->delay_ms - now;

	printf("triplet %s:\n", log_safe(r->key, key, sizeof(key)));
	if (r->last_ms - r->first_ms >= g->delay_ms)
		printf("  passed: mail passes; it is kept until %s (max_age after its last use)\n",
		       iso_ms(r->expires_ms, t, sizeof(t)));
	else if (left > 0)
		printf("  pending: deferred; a retry passes in %llds (%s), if it comes before %s\n",
		       (long long)ms_to_s_up(left), span(ms_to_s_up(left), d, sizeof(d)),
		       iso_ms(r->expires_ms, t, sizeof(t)));
	else
		printf("  pending: waited long enough; a retry before %s passes\n",
		       iso_ms(r->expires_ms, t, sizeof(t)));
	explain_line("first seen:", iso_ms(r->first_ms, t, sizeof(t)));
	explain_line("last seen:", iso_ms(r->last_ms, t, sizeof(t)));
	explain_line("expires:", iso_ms(r->expires_ms, t, sizeof(t)));
}

static void grey_explain_awl(const ctl_grey *g, const store_grey_record *r)
{
	char key[STORE_KEY_MAX], t[64];

	if (g->awl_count && r->count >= g->awl_count)
		printf("client %s: auto-whitelisted (%llu passes, %llu needed): its mail is not greylisted, "
		       "until %s\n",
		       log_safe(r->key, key, sizeof(key)), (unsigned long long)r->count,
		       (unsigned long long)g->awl_count, iso_ms(r->expires_ms, t, sizeof(t)));
	else
		printf("client %s: not auto-whitelisted (%llu of %llu passes), counted until %s\n",
		       log_safe(r->key, key, sizeof(key)), (unsigned long long)r->count,
		       (unsigned long long)g->awl_count, iso_ms(r->expires_ms, t, sizeof(t)));
}

/* The triplet (and the client's record): what the next attempt gets, and when a retry passes. */
static int cmd_grey_lookup(ctl *c, const ctl_grey *g, const char *triplet, const char *awl)
{
	store_grey_record t, a;
	store_status trc, arc = STORE_NOTFOUND;
	int64_t now;
	char d[32], key[GREYSTEP_KEY_MAX];

	if (store_greylist_time(c->st, &now) != STORE_OK ||
	    (trc = store_greylist_get(c->st, triplet, now, &t)) == STORE_ERROR ||
	    (g->awl_count && (arc = store_greylist_awl_get(c->st, awl, now, &a)) == STORE_ERROR))
		return fail_store("greylist lookup");
	if (trc == STORE_OK)
		grey_explain_triplet(g, &t, now);
	else if (arc == STORE_OK && a.count >= g->awl_count)
		printf("triplet %s: not seen (or expired); its client passes without it\n",
		       log_safe(triplet, key, sizeof(key)));
	else
		printf("triplet %s: not seen (or expired): its next attempt is deferred for %s\n",
		       log_safe(triplet, key, sizeof(key)), span(g->delay_ms / 1000, d, sizeof(d)));
	if (arc == STORE_OK)
		grey_explain_awl(g, &a);
	else if (g->awl_count)
		printf("client %s: not auto-whitelisted (no passes counted)\n", awl);
	return trc == STORE_OK || arc == STORE_OK ? EXIT_OK : EXIT_NOTFOUND;
}

static int grey_removed(store_status rc, const char *what, const char *key)
{
	char safe[GREYSTEP_KEY_MAX];

	switch (rc) {
	case STORE_OK:
		printf("removed %s %s\n", what, log_safe(key, safe, sizeof(safe)));
		return EXIT_OK;
	case STORE_NOTFOUND:
		fprintf(stderr, "spamtrapctl: greylist: no %s %s\n", what, log_safe(key, safe, sizeof(safe)));
		return EXIT_NOTFOUND;
	case STORE_ERROR:
		break;
	}
	return fail_store("greylist remove");
}

static int cmd_grey_whitelist(ctl *c, const ctl_grey *g, const char *awl)
{
	int64_t now;
	char t[64];

	if (g->awl_count == 0) {
		fprintf(stderr, "spamtrapctl: greylist whitelist: greylist.awl_count is 0: there is no "
		                "auto-whitelist (list the client in greylist.clients instead)\n");
		return EXIT_USAGE;
	}
	if (store_greylist_time(c->st, &now) != STORE_OK ||
	    store_greylist_awl_put(c->st, awl, g->awl_count, now, now + g->max_age_ms) != STORE_OK)
		return fail_store("greylist whitelist");
	printf("auto-whitelisted client %s until %s\n", awl, iso_ms(now + g->max_age_ms, t, sizeof(t)));
	return EXIT_OK;
}

/* --- export -------------------------------------------------------------- */

static int export_one(const store_entry *e, void *ctx)
{
	return export_add(ctx, e->key, e->expires, e->trap[0] != '\0') ? 0 : 1;
}

static void export_notes(const export_options *o, const export_counts *n)
{
	if (n->skipped_v6net)
		fprintf(
		    stderr,
		    "spamtrapctl: export: %zu IPv6 network entries left out: a hash map cannot hold them, "
		    "use --format cidr\n",
		    n->skipped_v6net);
	if (n->skipped_other)
		fprintf(stderr, "spamtrapctl: export: %zu entries left out: not expressible in %s format\n",
		        n->skipped_other, export_format_name(o->format));
	if (n->clamped)
		fprintf(stderr,
		        "spamtrapctl: export: %zu timeouts cut to %d s, the longest every firewall takes: "
		        "export again before then\n",
		        n->clamped, EXPORT_TIMEOUT_MAX);
}

/* The rbldnsd zone's name server and mailbox: this host, unless its name is no domain. */
static void export_zone_names(char *ns, size_t nslen, char *mail, size_t maillen)
{
	char host[256] = "";

	if (gethostname(host, sizeof(host) - 1) != 0 || !strchr(host, '.'))
		snprintf(host, sizeof(host), "localhost");
	snprintf(ns, nslen, "%s", host);
	snprintf(mail, maillen, "hostmaster.%s", host);
}

static int export_options_for(const char *format, const char *keys, export_options *o)
{
	char err[256];

	if (!export_format_parse(format, &o->format))
		return usage_error("export: unknown format '%s' (postfix, cidr, nft, ipset, pf or rbldnsd)",
		                   format);
	o->keys = export_keys_default(o->format);
	if (keys && !export_keys_parse(keys, &o->keys, err, sizeof(err)))
		return usage_error("--keys: %s", err);
	if (o->keys & ~export_keys_allowed(o->format))
		return usage_error("export: --format %s holds %s only", format,
		                   o->format == EXPORT_RBLDNSD ? "client addresses and sender domains"
		                                               : "client addresses");
	return 0;
}

/* The text to stdout, or atomically to output: a reader never sees part of it. */
static int export_write(const char *text, size_t len, const char *output)
{
	char err[512];

	if (!output) {
		fwrite(text, 1, len, stdout);
		return EXIT_OK;
	}
	if (atomicfile_write(output, text, len, 0644, err, sizeof(err)) < 0) {
		fprintf(stderr, "spamtrapctl: export: %s\n", err);
		return EXIT_STORE;
	}
	return EXIT_OK;
}

static int cmd_export(ctl *c, const char *format, const char *keys, const char *output)
{
	const smtp_reply *r = &c->cfg->decide.reject;
	char action[700], ns[256], mail[300];
	export_options o = {.now = c->now, .action = action, .zone_ns = ns, .zone_mail = mail};
	export *x;
	char *text = NULL;
	size_t len = 0;
	int rc = export_options_for(format, keys, &o);

	if (rc != 0)
		return rc;
	snprintf(action, sizeof(action), "REJECT %s%s%s", r->xcode, r->xcode[0] ? " " : "", r->text);
	export_zone_names(ns, sizeof(ns), mail, sizeof(mail));
	if (!(x = export_new(&o)))
		return (fprintf(stderr, "spamtrapctl: export: out of memory\n"), EXIT_STORE);
	if (store_foreach(c->st, c->now, export_one, x) != STORE_OK)
		rc = fail_store("export");
	else if (!(text = export_render(x, &len)))
		rc = (fprintf(stderr, "spamtrapctl: export: out of memory\n"), EXIT_STORE);
	else if ((rc = export_write(text, len, output)) == EXIT_OK)
		export_notes(&o, export_get_counts(x));
	free(text);
	export_free(x);
	return rc;
}

/* --- import -------------------------------------------------------------- */

#define IMPORT_LINE_MAX 4096
#define IMPORT_ERRORS_SHOWN 20

/* An entry read from the file: strings in the importer's arena; its line, so that the last of a key wins. */
typedef struct import_rec {
	uint32_t key, trap, reason, line;
	int64_t expires, last_seen;
	uint64_t hits;
} import_rec;

typedef struct importer {
	const ctl *c;
	FILE *f;
	const char *path;
	int64_t ttl;
	const char *reason;
	char *line;
	size_t cap;
	unsigned long lineno, errors, expired;
	char *arena; /* NUL-terminated strings of the records */
	size_t arena_len, arena_cap;
	import_rec *recs;
	size_t nrecs, recs_cap, next;
} importer;

/* n decimal digits at s into *v. */
static bool fixed_digits(const char *s, int n, int *v)
{
	*v = 0;
	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		*v = *v * 10 + (s[i] - '0');
	}
	return true;
}

/* Days from 1970-01-01 to y-m-d, proleptic Gregorian (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int y, int m, int d)
{
	int64_t era, yoe, doy;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	return era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
}

/* "2024-05-01T14:03:27+02:00" as iso_time() writes it, or with "Z" for UTC. */
static bool parse_iso(const char *s, int64_t *out)
{
	static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int y, mo, d, h, mi, sec, oh = 0, om = 0, sign = 0;

	if (strlen(s) < 20 || !fixed_digits(s, 4, &y) || s[4] != '-' || !fixed_digits(s + 5, 2, &mo) ||
	    s[7] != '-' || !fixed_digits(s + 8, 2, &d) || s[10] != 'T' || !fixed_digits(s + 11, 2, &h) ||
	    s[13] != ':' || !fixed_digits(s + 14, 2, &mi) || s[16] != ':' || !fixed_digits(s + 17, 2, &sec))
		return false;
	if (strcmp(s + 19, "Z") != 0) {
		sign = s[19] == '+' ? 1 : s[19] == '-' ? -1 : 0;
		if (!sign || strlen(s) != 25 || !fixed_digits(s + 20, 2, &oh) || s[22] != ':' ||
		    !fixed_digits(s + 23, 2, &om) || oh > 23 || om > 59)
			return false;
	}
	if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || sec > 60)
		return false;
	*out = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - sign * (oh * 3600 + om * 60);
	return true;
}

/* A time as list prints it (ISO 8601, or "@" and Unix seconds), or Unix seconds. */
static bool parse_time(const char *s, int64_t *out)
{
	const char *digits = s[0] == '@' ? s + 1 : s;
	size_t n = strspn(digits, "0123456789");

	if (n > 0 && n <= 12 && digits[n] == '\0') {
		*out = strtoll(digits, NULL, 10);
		return true;
	}
	return parse_iso(s, out);
}

/* Split line at tabs into at most max fields; how many there were (max + 1: too many). */
static int split_tabs(char *line, char **field, int max)
{
	int n = 1;

	field[0] = line;
	for (char *p = line; (p = strchr(p, '\t')) != NULL; p++) {
		if (n == max)
			return max + 1;
		*p = '\0';
		field[n++] = p + 1;
	}
	return n;
}

static bool is_dash(const char *s)
{
	return strcmp(s, "-") == 0;
}

/* A text column ("-": none) into a field of cap bytes, which it must fit. */
static int text_field(const char *in, char *out, size_t cap, const char *what, char *err, size_t errlen)
{
	size_t len = strlen(in);

	if (len >= cap) {
		snprintf(err, errlen, "the %s is longer than %zu bytes", what, cap - 1);
		return -1;
	}
	if (is_dash(in))
		len = 0;
	memcpy(out, in, len);
	out[len] = '\0';
	return 0;
}

static int bad_column(const char *what, const char *value, char *err, size_t errlen)
{
	snprintf(err, errlen, "'%.64s' is not %s", value, what);
	return -1;
}

/* The columns after the key: expires, hits, last seen, trap, reason; each may be left out or "-". */
static int import_columns(const importer *im, char **f, int n, store_entry *e, char *err, size_t errlen)
{
	const char *when = "a time (2024-05-01T14:03:27+02:00)";
	char *end;

	e->expires = im->c->now + im->ttl;
	e->hits = 0;
	e->last_seen = im->c->now;
	if (n > 1 && !is_dash(f[1]) && !parse_time(f[1], &e->expires))
		return bad_column(when, f[1], err, errlen);
	if (n > 2 && !is_dash(f[2])) {
		errno = 0;
		e->hits = strtoull(f[2], &end, 10);
		if (f[2][0] < '0' || f[2][0] > '9' || *end || errno)
			return bad_column("a number of hits", f[2], err, errlen);
	}
	if (n > 3 && !is_dash(f[3]) && !parse_time(f[3], &e->last_seen))
		return bad_column(when, f[3], err, errlen);
	e->first_seen = e->last_seen;
	e->trap[0] = '\0';
	if (n > 4 && text_field(f[4], e->trap, sizeof(e->trap), "trap", err, errlen) < 0)
		return -1;
	if (n > 5)
		return text_field(f[5], e->reason, sizeof(e->reason), "reason", err, errlen);
	return text_field(im->reason, e->reason, sizeof(e->reason), "reason", err, errlen);
}

/* One line into *e: 1, 0 for a line with nothing to import (blank, comment, expired), or -1. */
static int import_line(importer *im, char *line, store_entry *e, char *err, size_t errlen)
{
	char *f[6] = {NULL};
	int n;
	ctl_key k;

	if (line[0] == '\0' || line[0] == '#')
		return 0;
	if ((n = split_tabs(line, f, 6)) > 6) {
		snprintf(err, errlen, "more than 6 tab-separated columns");
		return -1;
	}
	if (key_parse(f[0], &k, err, errlen) < 0 ||
	    (k.type == KEY_TYPE_NETWORK && net_checked(im->c->cfg, &k.net, err, errlen) < 0))
		return -1;
	memcpy(e->key, k.text, strlen(k.text) + 1);
	e->sender[0] = e->recipient[0] = e->client[0] = e->helo[0] = e->queue_id[0] = '\0';
	if (import_columns(im, f, n, e, err, errlen) < 0)
		return -1;
	if (e->expires <= im->c->now) {
		im->expired++;
		return 0;
	}
	return 1;
}

/* The next line of the file without its line end; -1 at the end, -2 for a line no import takes. */
static ssize_t import_read(importer *im)
{
	ssize_t len = getline(&im->line, &im->cap, im->f);

	if (len < 0)
		return -1;
	im->lineno++;
	if (len > 0 && im->line[len - 1] == '\n')
		im->line[--len] = '\0';
	if (len > 0 && im->line[len - 1] == '\r')
		im->line[--len] = '\0';
	return len > IMPORT_LINE_MAX || strlen(im->line) != (size_t)len ? -2 : len;
}

static bool grow(void **buf, size_t *cap, size_t need, size_t size)
{
	size_t n = *cap ? *cap : 4096;
	void *p;

	while (n < need)
		n *= 2;
	if (n == *cap)
		return true;
	if (n > SIZE_MAX / size || !(p = realloc(*buf, n * size)))
		return false;
	*buf = p;
	*cap = n;
	return true;
}

#define NO_PREV UINT32_MAX

/* s into the arena, or prev again when equal (traps and reasons repeat; keys pass NO_PREV); its offset. */
static bool arena_add(importer *im, const char *s, uint32_t prev, uint32_t *off)
{
	size_t len = strlen(s) + 1;

	if (prev != NO_PREV && strcmp(im->arena + prev, s) == 0) {
		*off = prev;
		return true;
	}
	if (im->arena_len + len > UINT32_MAX ||
	    !grow((void **)&im->arena, &im->arena_cap, im->arena_len + len, 1))
		return false;
	memcpy(im->arena + im->arena_len, s, len);
	*off = (uint32_t)im->arena_len;
	im->arena_len += len;
	return true;
}

/* Keep a checked entry for the write; false when out of memory. */
static bool import_keep(importer *im, const store_entry *e)
{
	uint32_t trap = im->nrecs ? im->recs[im->nrecs - 1].trap : NO_PREV;
	uint32_t reason = im->nrecs ? im->recs[im->nrecs - 1].reason : NO_PREV;
	import_rec *r;

	if (!grow((void **)&im->recs, &im->recs_cap, im->nrecs + 1, sizeof(*im->recs)))
		return false;
	r = &im->recs[im->nrecs];
	*r = (import_rec){
	    .line = (uint32_t)im->lineno, .expires = e->expires, .last_seen = e->last_seen, .hits = e->hits};
	if (!arena_add(im, e->key, NO_PREV, &r->key) || !arena_add(im, e->trap, trap, &r->trap) ||
	    !arena_add(im, e->reason, reason, &r->reason))
		return false;
	im->nrecs++;
	return true;
}

/* Every line of the file, checked and kept; false (with messages) when one is bad or out of memory. */
static bool import_read_all(importer *im, store_entry *e)
{
	char err[512];
	ssize_t len;
	int rc;

	while ((len = import_read(im)) != -1) {
		rc = -1;
		if (len == -2)
			snprintf(err, sizeof(err), "longer than %d bytes, or a NUL byte", IMPORT_LINE_MAX);
		else
			rc = import_line(im, im->line, e, err, sizeof(err));
		if (rc < 0 && ++im->errors <= IMPORT_ERRORS_SHOWN)
			fprintf(stderr, "spamtrapctl: import: %s:%lu: %s\n", im->path, im->lineno, err);
		if (rc > 0 && !import_keep(im, e)) {
			fprintf(stderr, "spamtrapctl: import: %s: out of memory at line %lu\n", im->path,
			        im->lineno);
			return false;
		}
	}
	if (im->errors > IMPORT_ERRORS_SHOWN)
		fprintf(stderr, "spamtrapctl: import: %lu more bad lines\n",
		        im->errors - IMPORT_ERRORS_SHOWN);
	if (ferror(im->f) || im->errors)
		fprintf(stderr, "spamtrapctl: import: %s: %s; nothing imported\n", im->path,
		        ferror(im->f) ? strerror(errno) : "bad lines");
	return !ferror(im->f) && !im->errors;
}

static const char *sort_arena; /* qsort has no context argument */

/* By key, then by line: of the lines of one key, the last is the one written. */
static int cmp_rec(const void *a, const void *b)
{
	const import_rec *x = a, *y = b;
	int c = strcmp(sort_arena + x->key, sort_arena + y->key);

	return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* store_next_fn over the kept entries in key order (pages of the file are written once, in order). */
static int import_next(store_entry *e, void *ctx)
{
	importer *im = ctx;
	const import_rec *r;

	while (im->next + 1 < im->nrecs &&
	       strcmp(im->arena + im->recs[im->next].key, im->arena + im->recs[im->next + 1].key) == 0)
		im->next++;
	if (im->next >= im->nrecs)
		return 0;
	r = &im->recs[im->next++];
	snprintf(e->key, sizeof(e->key), "%s", im->arena + r->key);
	e->expires = r->expires;
	e->first_seen = e->last_seen = r->last_seen;
	e->hits = r->hits;
	snprintf(e->trap, sizeof(e->trap), "%s", im->arena + r->trap);
	snprintf(e->reason, sizeof(e->reason), "%s", im->arena + r->reason);
	e->sender[0] = e->recipient[0] = e->client[0] = e->helo[0] = e->queue_id[0] = '\0';
	return 1;
}

/*
 * Every line is read and checked first, so that a bad file changes
 * nothing; the entries are sorted by key (a random order rewrites every
 * page of a large file at each transaction) and written in large
 * transactions.
 */
static int cmd_import(ctl *c, const char *path, int64_t ttl, const char *reason)
{
	importer im = {.c = c, .path = path, .ttl = ttl, .reason = reason ? reason : "import"};
	store_entry *e = malloc(sizeof(*e));
	uint64_t n = 0;
	int rc = EXIT_USAGE;

	if (!e || !(im.f = fopen(path, "r"))) {
		fprintf(stderr, "spamtrapctl: import: %s: %s\n", path, strerror(e ? errno : ENOMEM));
		free(e);
		return EXIT_USAGE;
	}
	if (import_read_all(&im, e)) {
		sort_arena = im.arena;
		qsort(im.recs, im.nrecs, sizeof(*im.recs), cmp_rec);
		rc = EXIT_OK;
		if (store_put_many(c->st, import_next, &im, &n) != STORE_OK) {
			fprintf(stderr, "spamtrapctl: import: %llu entries imported before the error\n",
			        (unsigned long long)n);
			rc = fail_store("import");
		} else {
			printf("imported %llu %s", (unsigned long long)n, n == 1 ? "entry" : "entries");
			if (im.expired)
				printf(" (%lu expired lines left out)", im.expired);
			putchar('\n');
		}
	}
	fclose(im.f);
	free(im.line);
	free(im.arena);
	free(im.recs);
	free(e);
	return rc;
}

/* --- command line -------------------------------------------------------- */

typedef struct cmdline {
	const char *config;
	const char *overrides[MAX_OVERRIDES];
	size_t noverrides;
	const char *command;
	const char *key;
	const char *ttl, *reason, *format, *keys, *output;
	/* greylist: its subcommand, its words (CLIENT SENDER RECIPIENT), --client */
	const char *grey_cmd;
	const char *grey_args[3];
	int grey_nargs;
	const char *grey_client;
	bool help, version;
} cmdline;

static const struct option long_options[] = {
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

/* Global options, up to the command name; 0, or an exit status. */
static int parse_global(int argc, char **argv, cmdline *cl)
{
	int opt;

	cl->config = CONFIG_DEFAULT_PATH;
	while ((opt = getopt_long(argc, argv, "+c:o:hV", long_options, NULL)) != -1) {
		switch (opt) {
		case 'c':
			cl->config = optarg;
			break;
		case 'o':
			if (cl->noverrides == MAX_OVERRIDES)
				return usage_error("too many -o options");
			cl->overrides[cl->noverrides++] = optarg;
			break;
		case 'h':
			cl->help = true;
			return 0;
		case 'V':
			cl->version = true;
			return 0;
		default:
			return usage_error("bad option");
		}
	}
	if (optind >= argc)
		return usage_error("no command given");
	cl->command = argv[optind++];
	return 0;
}

/* "--name VALUE" or "--name=VALUE" at argv[*i]; NULL when argv[*i] is not --name. */
static const char *long_opt(int argc, char **argv, int *i, const char *name, bool *missing)
{
	size_t len = strlen(name);
	const char *a = argv[*i];

	if (strncmp(a, name, len) != 0)
		return NULL;
	if (a[len] == '=')
		return a + len + 1;
	if (a[len] != '\0')
		return NULL;
	if (*i + 1 >= argc) {
		*missing = true;
		return NULL;
	}
	return argv[++*i];
}

static int parse_command_args(int argc, char **argv, cmdline *cl)
{
	for (int i = optind; i < argc; i++) {
		bool missing = false;
		const char *v;

		if ((v = long_opt(argc, argv, &i, "--ttl", &missing)))
			cl->ttl = v;
		else if ((v = long_opt(argc, argv, &i, "--reason", &missing)))
			cl->reason = v;
		else if ((v = long_opt(argc, argv, &i, "--format", &missing)))
			cl->format = v;
		else if ((v = long_opt(argc, argv, &i, "--keys", &missing)))
			cl->keys = v;
		else if ((v = long_opt(argc, argv, &i, "--output", &missing)))
			cl->output = v;
		else if (missing)
			return usage_error("%s needs a value", argv[i]);
		else if (strcmp(argv[i], "--help") == 0)
			cl->help = true; /* "spamtrapctl add --help": no key is named --help */
		else if (argv[i][0] == '-' && argv[i][1] == '-')
			return usage_error("unknown option %s", argv[i]);
		else if (!cl->key)
			cl->key = argv[i];
		else
			return usage_error("unexpected argument '%s'", argv[i]);
	}
	return 0;
}

/* greylist SUBCOMMAND [--client CLIENT] [WORD]...: at most three words. */
static int parse_greylist_args(int argc, char **argv, cmdline *cl)
{
	for (int i = optind; i < argc; i++) {
		bool missing = false;
		const char *v;

		if ((v = long_opt(argc, argv, &i, "--client", &missing)))
			cl->grey_client = v;
		else if (missing)
			return usage_error("%s needs a value", argv[i]);
		else if (strcmp(argv[i], "--help") == 0)
			cl->help = true;
		else if (argv[i][0] == '-' && argv[i][1] == '-')
			return usage_error("unknown option %s", argv[i]);
		else if (!cl->grey_cmd)
			cl->grey_cmd = argv[i];
		else if (cl->grey_nargs < 3)
			cl->grey_args[cl->grey_nargs++] = argv[i];
		else
			return usage_error("unexpected argument '%s'", argv[i]);
	}
	return 0;
}

/* rate show|reset RULE:VALUE */
static int check_rate_args(const cmdline *cl)
{
	const char *sub = cl->grey_cmd;

	if (!sub || (strcmp(sub, "show") != 0 && strcmp(sub, "reset") != 0))
		return usage_error("rate: needs show or reset");
	if (cl->grey_client)
		return usage_error("rate %s: takes no --client", sub);
	return cl->grey_nargs == 1 ? 0 : usage_error("rate %s: needs RULE:VALUE", sub);
}

/* Which words each greylist subcommand takes. */
static int check_greylist_args(const cmdline *cl)
{
	const char *sub = cl->grey_cmd;
	int n = cl->grey_nargs;

	if (!sub)
		return usage_error("greylist: needs list, lookup, remove or whitelist");
	if (cl->grey_client && strcmp(sub, "remove") != 0)
		return usage_error("greylist %s: takes no --client", sub);
	if (strcmp(sub, "list") == 0)
		return n == 0 ? 0 : usage_error("greylist list: takes no arguments");
	if (strcmp(sub, "lookup") == 0)
		return n == 3 ? 0 : usage_error("greylist lookup: needs CLIENT SENDER RECIPIENT");
	if (strcmp(sub, "remove") == 0 && cl->grey_client)
		return n == 0 ? 0 : usage_error("greylist remove --client CLIENT: takes nothing else");
	if (strcmp(sub, "remove") == 0)
		return n == 3 ? 0
		              : usage_error(
		                    "greylist remove: needs CLIENT SENDER RECIPIENT, or --client CLIENT");
	if (strcmp(sub, "whitelist") == 0)
		return n == 1 ? 0 : usage_error("greylist whitelist: needs CLIENT");
	return usage_error("greylist: unknown command '%s'", sub);
}

/* relay show|reset ACCOUNT. */
static int check_relay_args(const cmdline *cl)
{
	if (!cl->grey_cmd || (strcmp(cl->grey_cmd, "show") != 0 && strcmp(cl->grey_cmd, "reset") != 0))
		return usage_error("relay: needs show or reset");
	if (cl->grey_client)
		return usage_error("relay: takes no --client");
	return cl->grey_nargs == 1 ? 0 : usage_error("relay %s: needs an ACCOUNT", cl->grey_cmd);
}

/* What a command says when its positional argument is missing or extra. */
static const char *arg_need(const char *command, bool takes)
{
	if (!takes)
		return "takes no KEY";
	return strcmp(command, "import") == 0 ? "needs a FILE" : "needs a KEY";
}

/* Which arguments each command takes. */
static int check_args(const cmdline *cl)
{
	static const struct {
		const char *name;
		bool key, ttl_reason, export;
	} cmds[] = {{"list", false, false, false},   {"lookup", true, false, false},
	            {"add", true, true, false},      {"remove", true, false, false},
	            {"expire", false, false, false}, {"export", false, false, true},
	            {"import", true, true, false},   {"stats", false, false, false}};

	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (strcmp(cl->command, cmds[i].name) != 0)
			continue;
		if (cmds[i].key != (cl->key != NULL))
			return usage_error("%s: %s", cl->command, arg_need(cl->command, cmds[i].key));
		if (!cmds[i].ttl_reason && (cl->ttl || cl->reason))
			return usage_error("%s: takes no --ttl or --reason", cl->command);
		if (!cmds[i].export && (cl->format || cl->keys || cl->output))
			return usage_error("%s: takes no --format, --keys or --output", cl->command);
		return 0;
	}
	return usage_error("unknown command '%s'", cl->command);
}

static int open_ctl(const cmdline *cl, ctl *c)
{
	char err[4096] = "";

	c->cfg = config_load(cl->config, cl->overrides, cl->noverrides, err, sizeof(err));
	if (!c->cfg) {
		fprintf(stderr, "spamtrapctl: %s\n", err);
		return EXIT_STORE;
	}
	/*
	 * Run as the daemon's user, so that a database file or a WAL file
	 * this command creates stays writable by the daemon.
	 */
	if (geteuid() == 0 && daemon_drop_privileges(c->cfg->user, err, sizeof(err)) < 0) {
		fprintf(stderr, "spamtrapctl: %s\n", err);
		return EXIT_STORE;
	}
	/* A command makes a few calls: the Redis store's local view would cost a SCAN for nothing. */
	c->cfg->store.redis_local_view = false;
	c->st = store_open(&c->cfg->store, err, sizeof(err));
	if (!c->st) {
		fprintf(stderr, "spamtrapctl: %s\n", err);
		return EXIT_STORE;
	}
	c->now = (int64_t)time(NULL);
	return EXIT_OK;
}

/*
 * --ttl: 1s to blocklist.ttl's maximum. Anything longer is refused, not
 * cut: now + ttl must not overflow, and Redis refuses far-off expiries.
 */
static int parse_ttl(const char *s, int64_t *ttl, char *err, size_t errlen)
{
	size_t digits = strspn(s, "0123456789");
	bool number =
	    digits > 0 && (s[digits] == '\0' || (strchr("smhd", s[digits]) && s[digits + 1] == '\0'));

	if (!number) {
		snprintf(err, errlen, "'%.64s' is not a duration (3600, 30s, 15m, 24h, 7d)", s);
		return -1;
	}
	if (!config_parse_duration(s, ttl) || *ttl > CONFIG_TTL_MAX) {
		snprintf(err, errlen, "'%.64s' is longer than %lldd, the most blocklist.ttl allows", s,
		         (long long)(CONFIG_TTL_MAX / 86400));
		return -1;
	}
	if (*ttl <= 0) {
		snprintf(err, errlen, "'%.64s': the shortest is 1s", s);
		return -1;
	}
	return 0;
}

static int run_key_command(ctl *c, const cmdline *cl)
{
	ctl_key k;
	char err[512];
	int64_t ttl = c->cfg->decide.ttl;

	if (key_parse(cl->key, &k, err, sizeof(err)) < 0)
		return value_error(cl->command, err);
	if (strcmp(cl->command, "lookup") == 0)
		return cmd_lookup(c, &k);
	if (strcmp(cl->command, "remove") == 0)
		return cmd_remove(c, &k);
	if (k.type == KEY_TYPE_NETWORK && net_checked(c->cfg, &k.net, err, sizeof(err)) < 0)
		return value_error(cl->command, err);
	if (cl->ttl && parse_ttl(cl->ttl, &ttl, err, sizeof(err)) < 0)
		return value_error("--ttl", err);
	return cmd_add(c, &k, ttl, cl->reason);
}

static int run_import(ctl *c, const cmdline *cl)
{
	char err[512];
	int64_t ttl = c->cfg->decide.ttl;

	if (cl->ttl && parse_ttl(cl->ttl, &ttl, err, sizeof(err)) < 0)
		return value_error("--ttl", err);
	return cmd_import(c, cl->key, ttl, cl->reason);
}

static int run_greylist(ctl *c, const cmdline *cl)
{
	const char *sub = cl->grey_cmd;
	char triplet[GREYSTEP_KEY_MAX], awl[ADDR_NET_STRLEN], err[512];
	ctl_grey g;
	addr_ip client;

	ctl_grey_conf(c->cfg, &g);
	if (strcmp(sub, "list") == 0)
		return cmd_grey_list(c, &g);
	if (grey_client(cl->grey_client ? cl->grey_client : cl->grey_args[0], &client, err, sizeof(err)) < 0)
		return value_error("greylist", err);
	if (grey_awl_key(&g, &client, awl, sizeof(awl)) < 0)
		return value_error("greylist", "the client makes no key");
	if (strcmp(sub, "whitelist") == 0)
		return cmd_grey_whitelist(c, &g, awl);
	if (cl->grey_client)
		return grey_removed(store_greylist_awl_remove(c->st, awl), "client", awl);
	if (grey_triplet(&g, &client, cl->grey_args[1], cl->grey_args[2], triplet, sizeof(triplet), err,
	                 sizeof(err)) < 0)
		return value_error("greylist", err);
	if (strcmp(sub, "lookup") == 0)
		return cmd_grey_lookup(c, &g, triplet, awl);
	return grey_removed(store_greylist_remove(c->st, triplet), "triplet", triplet);
}

static int run_rate(ctl *c, const cmdline *cl)
{
	const ratelimit_conf *rc = c->cfg->pipeline.checks[CHECK_ID_RATELIMIT].conf;
	char bucket[RATELIMIT_BUCKET_MAX], err[512];
	const ratelimit_rule *r =
	    ratelimit_admin_bucket(rc, cl->grey_args[0], bucket, sizeof(bucket), err, sizeof(err));

	if (!r)
		return value_error("rate", err);
	if (strcmp(cl->grey_cmd, "show") == 0)
		return cmd_rate_show(c, r, bucket);
	return cmd_rate_reset(c, bucket);
}

/* --- relay: an account's networks (the relay check, core/checks/relay.h) --- */

/* The accounts an ACCOUNT argument names (a bare address may be a login and a sender at once). */
typedef struct relay_accounts {
	size_t n;
	char account[2][STORE_KEY_MAX]; /* "sasl:alice", "alice@example.com" */
	char set[2][STORE_KEY_MAX];
} relay_accounts;

static int relay_add(relay_accounts *a, size_t keylen)
{
	if (keylen == 0)
		return -1;
	if (relay_set_name(a->account[a->n], a->set[a->n], sizeof(a->set[0])) == 0)
		return -1;
	a->n++;
	return 0;
}

/* addr as a sender-keyed account of rc: 1 added, 0 not one (rc does not key its domain), -1 no key. */
static int relay_sender(const relay_conf *rc, const char *addr, relay_accounts *a)
{
	char norm[ADDR_MAX];
	const char *domain;

	if (addr_normalise(addr, strlen(addr), norm, sizeof(norm)) != ADDR_OK ||
	    !(domain = addr_domain(norm)))
		return -1;
	if (!(rc->key_bits & RELAY_KEY_SENDER) || !strset_contains(rc->domains, domain, strlen(domain)))
		return 0;
	return relay_add(a, key_sender(norm, a->account[a->n], sizeof(a->account[0]))) < 0 ? -1 : 1;
}

/*
 * ACCOUNT as the relay check keys it: "sasl:NAME" the SASL login,
 * "sender:ADDRESS" a sender of relay.sender_domains, and a bare NAME the
 * login; a bare address is the login and, when relay.keys has "sender" and
 * its domain is one of sender_domains, that sender's account too (logins
 * are often addresses).
 */
static int relay_accounts_of(const relay_conf *rc, const char *in, relay_accounts *a)
{
	const char *colon = strchr(in, ':');
	size_t word = colon ? strspn(in, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") : 0;
	char msg[512];
	int r;

	a->n = 0;
	if (strncasecmp(in, "sasl:", 5) == 0) {
		if (relay_add(a, key_sasl(in + 5, a->account[0], sizeof(a->account[0]))) < 0)
			return value_error("relay",
			                   "sasl:NAME: the name makes no account (empty, too long or "
			                   "not text)");
		return EXIT_OK;
	}
	if (strncasecmp(in, "sender:", 7) == 0) {
		if ((r = relay_sender(rc, in + 7, a)) > 0)
			return EXIT_OK;
		return value_error("relay", r < 0
		                                ? "sender:ADDRESS: not an address"
		                                : "sender:ADDRESS: relay.keys has no \"sender\" or the "
		                                  "domain is not one of relay.sender_domains: never counted");
	}
	if (strncasecmp(in, "relay:", 6) == 0)
		return value_error("relay", "give the account, not its store set: relay:sasl:alice is "
		                            "sasl:alice");
	/* "helo:x", "client:x": a typo or a blocklist key, not a login (which has no such prefix). */
	if (colon && word > 0 && in + word == colon) {
		snprintf(msg, sizeof(msg),
		         "unknown account form '%.*s:' (sasl:NAME, NAME, or sender:ADDRESS for "
		         "relay.sender_domains)",
		         (int)(word > 32 ? 32 : word), in);
		return value_error("relay", msg);
	}
	if (relay_add(a, key_sasl(in, a->account[0], sizeof(a->account[0]))) < 0)
		return value_error("relay", "the account makes no key (sasl:NAME, NAME or sender:ADDRESS)");
	if (strchr(in, '@') && relay_sender(rc, in, a) < 0)
		a->n = 1; /* a login that is no address: the login alone */
	return EXIT_OK;
}

/* Drop the account's trip markers (core/checks/relay.h), both modes'. */
static store_status relay_forget_trips(store *st, const char *account)
{
	static const char *const ns[] = {RELAY_TRIP_NS, RELAY_TRIP_NS_SHADOW};

	for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
		query q = {.kind = QUERY_KV};

		q.u.kv.op = QUERY_KV_DELETE;
		q.u.kv.ns = ns[i];
		q.u.kv.key = account;
		q.u.kv.now_ms = (int64_t)time(NULL) * 1000;
		if (store_kv(st, &q) == STORE_ERROR)
			return STORE_ERROR;
	}
	return STORE_OK;
}

typedef struct relay_show_ctx {
	int64_t window, now;
	size_t n;
} relay_show_ctx;

static int relay_show_one(const char *member, int64_t expires, void *vctx)
{
	relay_show_ctx *x = vctx;
	char seen[40], until[40], ago[32], safe[ADDR_NET_STRLEN + 8];

	x->n++;
	printf("%s\tlast seen %s (%s ago)\tcounts until %s\n", log_safe(member, safe, sizeof(safe)),
	       iso_time(expires - x->window, seen, sizeof(seen)),
	       span(x->now - (expires - x->window), ago, sizeof(ago)),
	       iso_time(expires, until, sizeof(until)));
	return 0;
}

static int relay_reset_one(ctl *c, const char *account, const char *set, bool *found)
{
	char safe[STORE_KEY_MAX];

	log_safe(account, safe, sizeof(safe));
	/* The next trip blocks and notifies again. */
	if (relay_forget_trips(c->st, account) != STORE_OK)
		return fail_store("relay reset");
	switch (store_distinct_clear(c->st, set)) {
	case STORE_OK:
		printf("account %s: networks forgotten\n", safe);
		*found = true;
		return EXIT_OK;
	case STORE_NOTFOUND:
		fprintf(stderr, "spamtrapctl: relay: account %s has no networks counted\n", safe);
		return EXIT_OK;
	case STORE_ERROR:
		break;
	}
	return fail_store("relay reset");
}

static int relay_show_account(ctl *c, const relay_conf *rc, const char *account, const char *set, bool *found)
{
	char safe[STORE_KEY_MAX];
	relay_show_ctx x = {.window = rc->window, .now = (int64_t)time(NULL)};

	log_safe(account, safe, sizeof(safe));
	/* The daemon holds its sets in memory and writes them behind: written now. */
	if (store_sync(c->st) != STORE_OK ||
	    store_distinct_list(c->st, set, x.now, relay_show_one, &x) != STORE_OK)
		return fail_store("relay show");
	printf("account %s: %zu network(s) in the last %llds (relay.max_networks %lld)\n", safe, x.n,
	       (long long)rc->window, (long long)rc->max_networks);
	*found |= x.n > 0;
	return EXIT_OK;
}

static int run_relay(ctl *c, const cmdline *cl)
{
	const relay_conf *rc = c->cfg->pipeline.checks[CHECK_ID_RELAY].conf;
	relay_accounts a;
	bool found = false;
	int e = relay_accounts_of(rc, cl->grey_args[0], &a);

	for (size_t i = 0; e == EXIT_OK && i < a.n; i++)
		e = strcmp(cl->grey_cmd, "reset") == 0
		        ? relay_reset_one(c, a.account[i], a.set[i], &found)
		        : relay_show_account(c, rc, a.account[i], a.set[i], &found);
	if (e != EXIT_OK)
		return e;
	return found ? EXIT_OK : EXIT_NOTFOUND;
}

static int run(const cmdline *cl)
{
	ctl c = {0};
	int rc = open_ctl(cl, &c);

	if (rc == EXIT_OK) {
		if (strcmp(cl->command, "greylist") == 0)
			rc = run_greylist(&c, cl);
		else if (strcmp(cl->command, "rate") == 0)
			rc = run_rate(&c, cl);
		else if (strcmp(cl->command, "relay") == 0)
			rc = run_relay(&c, cl);
		else if (strcmp(cl->command, "import") == 0)
			rc = run_import(&c, cl);
		else if (cl->key)
			rc = run_key_command(&c, cl);
		else if (strcmp(cl->command, "list") == 0)
			rc = cmd_list(&c);
		else if (strcmp(cl->command, "expire") == 0)
			rc = cmd_expire(&c);
		else if (strcmp(cl->command, "stats") == 0)
			rc = cmd_stats(&c);
		else
			rc = cmd_export(&c, cl->format ? cl->format : "postfix", cl->keys, cl->output);
	}
	store_free(c.st);
	config_unref(c.cfg);
	return rc;
}

int main(int argc, char **argv)
{
	cmdline cl = {0};
	int rc = parse_global(argc, argv, &cl);

	if (rc != 0)
		return rc;
	if (!cl.help && !cl.version &&
	    (strcmp(cl.command, "greylist") == 0 || strcmp(cl.command, "rate") == 0 ||
	     strcmp(cl.command, "relay") == 0))
		rc = parse_greylist_args(argc, argv, &cl);
	else if (!cl.help && !cl.version)
		rc = parse_command_args(argc, argv, &cl);
	if (rc != 0)
		return rc;
	if (cl.version) {
		printf("spamtrapctl %s\n", SPAMTRAPD_VERSION);
		return EXIT_OK;
	}
	if (cl.help) {
		fputs(usage_text, stdout);
		return EXIT_OK;
	}
	if ((rc = strcmp(cl.command, "greylist") == 0 ? check_greylist_args(&cl)
	          : strcmp(cl.command, "rate") == 0   ? check_rate_args(&cl)
	          : strcmp(cl.command, "relay") == 0  ? check_relay_args(&cl)
	                                              : check_args(&cl)) != 0)
		return rc;
	rc = run(&cl);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		perror("spamtrapctl: writing the output");
		return EXIT_STORE;
	}
	return rc;
}
