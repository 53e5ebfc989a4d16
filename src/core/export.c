/*
 * export: the blocklist as text for Postfix, nftables, ipset, PF and
 * rbldnsd (export.h). Entries are collected first and written in one
 * go, sorted, so that two exports of one blocklist are the same text.
 * Errors: out of memory only (NULL or false).
 */
#include "core/export.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"
#include "core/key.h"

#define DEFAULT_NAME "spamtrapd"
#define NFT_CHUNK 1000            /* elements an add element statement */
#define IPSET_MAXELEM_MIN 1048576 /* a cap only: the hash grows with its entries */

typedef struct export_net {
	addr_net net;
	int64_t expires;
	bool trap;
} export_net;

typedef struct export_line {
	char *s;
	bool trap;
} export_line;

typedef struct buf {
	char *s;
	size_t len, cap;
	bool oom;
} buf;

struct export
{
	export_options o;
	char *name, *zone_ns, *zone_mail, *action;
	export_net *nets;
	size_t nnets, netcap;
	export_line *lines; /* postfix and cidr lines; rbldnsd sender domains */
	size_t nlines, linecap;
	export_counts counts;
	bool oom;
};

static const struct {
	const char *name;
	export_format format;
	unsigned allowed, dflt;
} formats[] = {
    {"postfix", EXPORT_POSTFIX,
     EXPORT_KEY_SENDER | EXPORT_KEY_DOMAIN | EXPORT_KEY_CLIENT | EXPORT_KEY_SASL | EXPORT_KEY_HELO,
     EXPORT_KEY_SENDER | EXPORT_KEY_DOMAIN | EXPORT_KEY_CLIENT},
    {"cidr", EXPORT_CIDR, EXPORT_KEY_CLIENT, EXPORT_KEY_CLIENT},
    {"nft", EXPORT_NFT, EXPORT_KEY_CLIENT, EXPORT_KEY_CLIENT},
    {"ipset", EXPORT_IPSET, EXPORT_KEY_CLIENT, EXPORT_KEY_CLIENT},
    {"pf", EXPORT_PF, EXPORT_KEY_CLIENT, EXPORT_KEY_CLIENT},
    {"rbldnsd", EXPORT_RBLDNSD, EXPORT_KEY_CLIENT | EXPORT_KEY_DOMAIN, EXPORT_KEY_CLIENT},
};

#define NFORMATS (sizeof(formats) / sizeof(formats[0]))

bool export_format_parse(const char *name, export_format *out)
{
	for (size_t i = 0; i < NFORMATS; i++)
		if (strcmp(name, formats[i].name) == 0) {
			*out = formats[i].format;
			return true;
		}
	return false;
}

const char *export_format_name(export_format f)
{
	return (size_t)f < NFORMATS ? formats[f].name : "?";
}

unsigned export_keys_default(export_format f)
{
	return (size_t)f < NFORMATS ? formats[f].dflt : 0;
}

unsigned export_keys_allowed(export_format f)
{
	return (size_t)f < NFORMATS ? formats[f].allowed : 0;
}

bool export_keys_parse(const char *list, unsigned *keys, char *err, size_t errlen)
{
	static const struct {
		const char *name;
		unsigned bit;
	} names[] = {{"sender", EXPORT_KEY_SENDER},
	             {"domain", EXPORT_KEY_DOMAIN},
	             {"client", EXPORT_KEY_CLIENT},
	             {"sasl", EXPORT_KEY_SASL},
	             {"helo", EXPORT_KEY_HELO},
	             {"all", EXPORT_KEY_SENDER | EXPORT_KEY_DOMAIN | EXPORT_KEY_CLIENT}};
	const char *p = list;

	*keys = 0;
	while (*p) {
		size_t n = strcspn(p, ","), i = 0;

		while (i < sizeof(names) / sizeof(names[0]) &&
		       !(strlen(names[i].name) == n && strncmp(p, names[i].name, n) == 0))
			i++;
		if (i == sizeof(names) / sizeof(names[0])) {
			snprintf(err, errlen, "unknown kind '%.*s' (sender, domain, client, sasl, helo)",
			         (int)n, p);
			return false;
		}
		*keys |= names[i].bit;
		p += n + (p[n] == ',');
	}
	if (!*keys)
		snprintf(err, errlen, "empty list");
	return *keys != 0;
}

/* --- building ------------------------------------------------------------ */

static char *dup_or(const char *s, const char *dflt, bool *oom)
{
	char *d = strdup(s ? s : dflt);

	if (!d)
		*oom = true;
	return d;
}

export *export_new(const export_options *o)
{
	export *x = calloc(1, sizeof(*x));
	bool oom = false;

	if (!x)
		return NULL;
	x->o = *o;
	x->name = dup_or(o->name, DEFAULT_NAME, &oom);
	x->zone_ns = dup_or(o->zone_ns, "localhost", &oom);
	x->zone_mail = dup_or(o->zone_mail, "hostmaster.localhost", &oom);
	x->action = dup_or(o->action, "REJECT", &oom);
	if (oom) {
		export_free(x);
		return NULL;
	}
	return x;
}

void export_free(export *x)
{
	if (!x)
		return;
	for (size_t i = 0; i < x->nlines; i++)
		free(x->lines[i].s);
	free(x->lines);
	free(x->nets);
	free(x->name);
	free(x->zone_ns);
	free(x->zone_mail);
	free(x->action);
	free(x);
}

const export_counts *export_get_counts(const export *x)
{
	return &x->counts;
}

static bool grow(void **v, size_t *cap, size_t n, size_t size)
{
	size_t ncap;
	void *p;

	if (n < *cap)
		return true;
	ncap = *cap ? 2 * *cap : 64;
	if (!(p = realloc(*v, ncap * size)))
		return false;
	*v = p;
	*cap = ncap;
	return true;
}

/* A line of a map, or a domain of the rbldnsd export; the owner frees. */
static bool add_line(export *x, char *line, bool trap)
{
	if (!line || !grow((void **)&x->lines, &x->linecap, x->nlines, sizeof(*x->lines))) {
		free(line);
		return !(x->oom = true);
	}
	x->lines[x->nlines++] = (export_line){line, trap};
	return true;
}

static bool add_map_line(export *x, const char *key)
{
	size_t len = strlen(key) + strlen(x->action) + 2;
	char *line = malloc(len);

	if (line)
		snprintf(line, len, "%s %s", key, x->action);
	return add_line(x, line, true);
}

/*
 * An IPv4 network in a hash access map: Postfix matches the address and
 * its prefixes at octet boundaries ("192.0.2", "192.0", "192"), so a
 * network between boundaries becomes the (at most 128) networks of the
 * next boundary that it covers.
 */
static bool add_ipv4_map_net(export *x, const addr_net *net)
{
	unsigned octets = (net->prefix + 7) / 8;
	uint32_t base = (uint32_t)net->ip.bytes[0] << 24 | (uint32_t)net->ip.bytes[1] << 16 |
	                (uint32_t)net->ip.bytes[2] << 8 | net->ip.bytes[3];
	uint32_t count = 1u << (octets * 8 - net->prefix);

	for (uint32_t i = 0; i < count; i++) {
		uint32_t a = base + (i << (32 - octets * 8));
		char text[20];
		int n = 0;

		for (unsigned o = 0; o < octets; o++)
			n += snprintf(text + n, sizeof(text) - (size_t)n, "%s%u", o ? "." : "",
			              (unsigned)(a >> (24 - 8 * o)) & 0xff);
		if (!add_map_line(x, text))
			return false;
	}
	return true;
}

static bool add_map_net(export *x, const char *key, const addr_net *net)
{
	if (x->o.format == EXPORT_CIDR)
		return add_map_line(x, key);
	if (net->ip.version == 6 && net->prefix < 128) {
		x->counts.skipped_v6net++;
		return true;
	}
	if (net->ip.version == 6 || net->prefix == 32)
		return add_map_line(x, key);
	return add_ipv4_map_net(x, net);
}

/*
 * The daemon never checks an IPv4 network shorter than /8 or an IPv6 one
 * shorter than /16 (core/netkeys.h), and spamtrapctl add refuses them: such
 * an entry can only come from a store written by other means, and in a
 * firewall set it would block whole continents.
 */
static bool checked_len(const addr_net *net)
{
	return net->prefix >= (net->ip.version == 4 ? 8 : 16);
}

static bool add_net(export *x, const char *key, int64_t expires, bool trap)
{
	addr_net net;

	if (!addr_net_parse(key, &net, NULL, 0) || !checked_len(&net)) {
		x->counts.skipped_other++;
		return true;
	}
	if (x->o.format == EXPORT_POSTFIX || x->o.format == EXPORT_CIDR)
		return add_map_net(x, key, &net);
	if (!grow((void **)&x->nets, &x->netcap, x->nnets, sizeof(*x->nets)))
		return !(x->oom = true);
	x->nets[x->nnets++] = (export_net){net, expires, trap};
	return true;
}

/* Access maps and DNS names are split at white space: such a key cannot be written. */
static bool plain(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s <= ' ' || *s == 0x7f)
			return false;
	return true;
}

static bool add_named(export *x, const char *name, bool trap)
{
	if (x->o.format == EXPORT_RBLDNSD)
		return add_line(x, strdup(name), trap);
	return add_map_line(x, name);
}

static unsigned kind_of(key_type t)
{
	switch (t) {
	case KEY_TYPE_SENDER:
		return EXPORT_KEY_SENDER;
	case KEY_TYPE_DOMAIN:
		return EXPORT_KEY_DOMAIN;
	case KEY_TYPE_SASL:
		return EXPORT_KEY_SASL;
	case KEY_TYPE_HELO:
		return EXPORT_KEY_HELO;
	case KEY_TYPE_NETWORK:
		break;
	}
	return EXPORT_KEY_CLIENT;
}

bool export_add(export *x, const char *key, int64_t expires, bool trap)
{
	key_type t = key_type_of(key);

	if (x->oom)
		return false;
	if (!(x->o.keys & kind_of(t) & export_keys_allowed(x->o.format)))
		return true;
	if (!plain(key)) {
		x->counts.skipped_other++;
		return true;
	}
	switch (t) {
	case KEY_TYPE_NETWORK:
		return add_net(x, key, expires, trap);
	case KEY_TYPE_SASL:
	case KEY_TYPE_HELO:
		return add_named(x, key + 5,
		                 trap); /* the bare name, for check_sasl_access, check_helo_access */
	case KEY_TYPE_DOMAIN:
		return add_named(x, key + 1, trap); /* access(5) has no "@domain": the domain form */
	case KEY_TYPE_SENDER:
		return add_named(x, key, trap);
	}
	return true;
}

/* --- merging networks ---------------------------------------------------- */

static int cmp_net(const void *a, const void *b)
{
	const addr_net *p = &((const export_net *)a)->net, *q = &((const export_net *)b)->net;
	int c;

	if (p->ip.version != q->ip.version)
		return p->ip.version < q->ip.version ? -1 : 1;
	if ((c = memcmp(p->ip.bytes, q->ip.bytes, sizeof(p->ip.bytes))) != 0)
		return c;
	return (p->prefix > q->prefix) - (p->prefix < q->prefix);
}

/*
 * Networks are nested or apart, so in address order (shorter first at
 * one address) a network inside any kept one is inside the last kept.
 */
static void merge_nets(export *x)
{
	size_t kept = 0;

	if (x->nnets)
		qsort(x->nets, x->nnets, sizeof(*x->nets), cmp_net);
	for (size_t i = 0; i < x->nnets; i++) {
		export_net *cur = &x->nets[i], *last = kept ? &x->nets[kept - 1] : NULL;

		if (last && last->net.ip.version == cur->net.ip.version &&
		    cur->net.prefix >= last->net.prefix && addr_net_contains(&last->net, &cur->net.ip)) {
			if (cur->expires > last->expires)
				last->expires = cur->expires;
			last->trap = last->trap || cur->trap;
			x->counts.merged++;
			continue;
		}
		x->nets[kept++] = *cur;
	}
	x->nnets = kept;
}

/* --- writing ------------------------------------------------------------- */

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->oom)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = true;
			return;
		}
		if ((size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = (b->cap + (size_t)n + 1) * 2;
		char *s = realloc(b->s, cap);

		if (!s) {
			b->oom = true;
			return;
		}
		b->s = s, b->cap = cap;
	}
}

static int64_t remaining(const export *x, const export_net *e, bool *clamped)
{
	int64_t t = e->expires - x->o.now;

	*clamped = t > EXPORT_TIMEOUT_MAX;
	return t < 1 ? 1 : *clamped ? EXPORT_TIMEOUT_MAX : t;
}

static int64_t timeout_of(export *x, const export_net *e)
{
	bool clamped;
	int64_t t = remaining(x, e, &clamped);

	x->counts.clamped += clamped;
	return t;
}

static size_t count_family(const export *x, int version)
{
	size_t n = 0;

	for (size_t i = 0; i < x->nnets; i++)
		n += x->nets[i].net.ip.version == version;
	return n;
}

static void nft_elements(export *x, buf *b, int version)
{
	size_t done = 0, total = count_family(x, version);

	for (size_t i = 0; i < x->nnets; i++) {
		char text[ADDR_NET_STRLEN];
		const export_net *e = &x->nets[i];

		if (e->net.ip.version != version)
			continue;
		if (done % NFT_CHUNK == 0)
			put(b, "add element inet %s v%d {\n", x->name, version);
		addr_net_format(&e->net, text, sizeof(text));
		done++;
		/* An empty "{ }" is a syntax error: a set without elements gets no statement. */
		put(b, "\t%s timeout %llds%s\n", text, (long long)timeout_of(x, e),
		    done % NFT_CHUNK && done < total ? "," : "");
		if (done % NFT_CHUNK == 0 || done == total)
			put(b, "}\n");
	}
}

/*
 * Declaring the table and sets is a no-op when they exist (the
 * administrator's chains in the table stay), and flush plus add in one
 * file is one transaction: nft -f swaps the whole content or nothing.
 */
static void render_nft(export *x, buf *b)
{
	put(b,
	    "#!/usr/sbin/nft -f\n# spamtrapd blocklist: %zu client networks; nft -f FILE replaces the sets "
	    "in one transaction\n",
	    x->nnets);
	put(b, "table inet %s {\n", x->name);
	for (int v = 4; v <= 6; v += 2)
		put(b, "\tset v%d {\n\t\ttype ipv%d_addr\n\t\tflags interval, timeout\n\t}\n", v, v);
	put(b, "}\nflush set inet %s v4\nflush set inet %s v6\n", x->name, x->name);
	nft_elements(x, b, 4);
	nft_elements(x, b, 6);
}

/* A power of two with room to double, never below ipset's default. */
static size_t ipset_maxelem(size_t n)
{
	size_t m = IPSET_MAXELEM_MIN;

	while (m < 2 * n)
		m *= 2;
	return m;
}

/*
 * The new content goes into NAME-vN-new, which is swapped with the live
 * set (rules that use it see one or the other, never half) and then
 * destroyed. ipset restore runs line by line: anything that fails stops
 * it before the swap, and the live set stays as it was.
 */
static void render_ipset_family(export *x, buf *b, int version)
{
	size_t maxelem = ipset_maxelem(count_family(x, version));
	const char *family = version == 4 ? "inet" : "inet6";

	put(b, "create %s-v%d-new hash:net family %s hashsize 1024 maxelem %zu timeout 0 -exist\n", x->name,
	    version, family, maxelem);
	put(b, "flush %s-v%d-new\n", x->name, version);
	for (size_t i = 0; i < x->nnets; i++) {
		char text[ADDR_NET_STRLEN];
		const export_net *e = &x->nets[i];

		if (e->net.ip.version != version)
			continue;
		addr_net_format(&e->net, text, sizeof(text));
		put(b, "add %s-v%d-new %s timeout %lld\n", x->name, version, text,
		    (long long)timeout_of(x, e));
	}
	put(b, "create %s-v%d hash:net family %s hashsize 1024 maxelem %zu timeout 0 -exist\n", x->name,
	    version, family, maxelem);
	put(b, "swap %s-v%d-new %s-v%d\ndestroy %s-v%d-new\n", x->name, version, x->name, version, x->name,
	    version);
}

static void render_ipset(export *x, buf *b)
{
	put(b, "# spamtrapd blocklist: %zu client networks; ipset restore < FILE\n", x->nnets);
	render_ipset_family(x, b, 4);
	render_ipset_family(x, b, 6);
}

static void render_pf(export *x, buf *b)
{
	put(b, "# spamtrapd blocklist: %zu client networks; pfctl -t %s -T replace -f FILE\n", x->nnets,
	    x->name);
	for (size_t i = 0; i < x->nnets; i++) {
		char text[ADDR_NET_STRLEN];

		addr_net_format(&x->nets[i].net, text, sizeof(text));
		put(b, "%s\n", text);
	}
}

static void rbl_nets(export *x, buf *b, int version)
{
	put(b, "$DATASET ip%dtrie:clients%s @\n", version, version == 4 ? "" : "6");
	put(b, ":%s:$ sent mail to a spamtrap\n", EXPORT_RBL_TRAP);
	for (size_t i = 0; i < x->nnets; i++) {
		char text[ADDR_NET_STRLEN];
		const export_net *e = &x->nets[i];

		if (e->net.ip.version != version)
			continue;
		addr_net_format(&e->net, text, sizeof(text));
		if (e->trap)
			put(b, "%s\n", text);
		else
			put(b, "%s :%s:$ is blocklisted by the administrator\n", text, EXPORT_RBL_MANUAL);
	}
}

static int cmp_line(const void *a, const void *b)
{
	return strcmp(((const export_line *)a)->s, ((const export_line *)b)->s);
}

/*
 * A combined dataset: client addresses at the zone itself
 * (7.2.0.192.ZONE), sender domains at the subzone "domains"
 * (example.com.domains.ZONE). TXT answers never name the trap: a trap
 * address that leaks is a trap no more.
 */
static void render_rbldnsd(export *x, buf *b)
{
	put(b, "# spamtrapd blocklist as rbldnsd data: rbldnsd ... ZONE:combined:FILE\n");
	put(b, "$SOA 300 %s. %s. %lld 600 300 86400 60\n", x->zone_ns, x->zone_mail, (long long)x->o.now);
	put(b, "$NS 300 %s.\n$TTL 300\n", x->zone_ns);
	rbl_nets(x, b, 4);
	rbl_nets(x, b, 6);
	if (!(x->o.keys & EXPORT_KEY_DOMAIN))
		return;
	put(b, "$DATASET dnset:domains domains\n:%s:$ sent mail to a spamtrap\n", EXPORT_RBL_TRAP);
	for (size_t i = 0; i < x->nlines; i++)
		put(b, "%s%s\n", x->lines[i].s,
		    x->lines[i].trap ? "" : " :" EXPORT_RBL_MANUAL ":$ is blocklisted by the administrator");
}

/* postmap warns about duplicate keys: an expanded network may repeat a host entry. */
static void render_map(export *x, buf *b)
{
	for (size_t i = 0; i < x->nlines; i++)
		if (i == 0 || strcmp(x->lines[i].s, x->lines[i - 1].s) != 0)
			put(b, "%s\n", x->lines[i].s);
}

static size_t count_written(const export *x)
{
	size_t n = x->nnets;

	if (x->o.format == EXPORT_POSTFIX || x->o.format == EXPORT_CIDR || x->o.format == EXPORT_RBLDNSD)
		for (size_t i = 0; i < x->nlines; i++)
			n += i == 0 || strcmp(x->lines[i].s, x->lines[i - 1].s) != 0;
	return n;
}

char *export_render(export *x, size_t *len)
{
	buf b = {0};

	if (x->oom)
		return NULL;
	if (x->nlines)
		qsort(x->lines, x->nlines, sizeof(*x->lines), cmp_line);
	merge_nets(x);
	x->counts.written = count_written(x);
	put(&b, "%s", "");
	switch (x->o.format) {
	case EXPORT_POSTFIX:
	case EXPORT_CIDR:
		render_map(x, &b);
		break;
	case EXPORT_NFT:
		render_nft(x, &b);
		break;
	case EXPORT_IPSET:
		render_ipset(x, &b);
		break;
	case EXPORT_PF:
		render_pf(x, &b);
		break;
	case EXPORT_RBLDNSD:
		render_rbldnsd(x, &b);
		break;
	}
	if (b.oom) {
		free(b.s);
		return NULL;
	}
	*len = b.len;
	return b.s;
}
