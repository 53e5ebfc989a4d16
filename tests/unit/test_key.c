/*
 * Unit tests for core/key: the typed blocklist keys (issue 11). Each
 * constructor's cases, key_type_of, the upgrade of 0.1.0 keys, every pair
 * of key types that hostile input could make collide, and the keys that
 * decide_prepare builds from a transaction (its record and lookup lists:
 * what keyable_sender used to decide). Each table row is its own named
 * cmocka test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "core/addr.h"
#include "core/decide.h"
#include "core/key.h"
#include "core/netkeys.h"
#include "unit_table.h"

#define KEYMAX 600 /* STORE_KEY_MAX */

/* ---- key_type_of ---- */

struct type_case {
	const char *name, *key;
	key_type type;
};

static struct type_case type_cases[] = {
    {"sasl", "sasl:alice", KEY_TYPE_SASL},
    {"sasl with an @", "sasl:alice@sink.test", KEY_TYPE_SASL},
    {"sasl prefix in capitals (typed by a person)", "SASL:Alice", KEY_TYPE_SASL},
    {"sasl with a blank", "sasl:j doe", KEY_TYPE_SASL},
    {"helo", "helo:mx.example", KEY_TYPE_HELO},
    {"helo with an @", "helo:x@y", KEY_TYPE_HELO},
    {"helo prefix in capitals", "Helo:mx", KEY_TYPE_HELO},
    {"domain", "@example.com", KEY_TYPE_DOMAIN},
    {"domain-like text with two @", "@a@b", KEY_TYPE_DOMAIN},
    {"sender", "user@example.com", KEY_TYPE_SENDER},
    {"quoted sender", "\"sasl:alice\"@sink.test", KEY_TYPE_SENDER},
    {"sender with a colon", "sasl.alice:x@d", KEY_TYPE_SENDER},
    {"sasl without the colon is a sender", "sasl@d", KEY_TYPE_SENDER},
    {"ipv4 host", "192.0.2.7", KEY_TYPE_NETWORK},
    {"ipv4 network", "192.0.2.0/24", KEY_TYPE_NETWORK},
    {"ipv6 network", "2001:db8::/64", KEY_TYPE_NETWORK},
};

static void test_type_case(void **state)
{
	const struct type_case *c = *state;

	assert_int_equal(key_type_of(c->key), c->type);
}

/* ---- constructors ---- */

typedef size_t (*make_fn)(const char *, char *, size_t);

struct make_case {
	const char *name;
	make_fn make;
	const char *in;
	const char *want; /* "" for no key */
	key_type type;
};

#define S key_sender
#define D key_domain
#define A key_sasl
#define H key_helo
#define LONG255                                                                                              \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
	"aa"                                                                                                 \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
	"aa"                                                                                                 \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

static struct make_case make_cases[] = {
    /* senders: the internal form as addr_normalise left it */
    {"plain sender", S, "a@b.example", "a@b.example", KEY_TYPE_SENDER},
    {"sender with a blank (from <\"x y\"@d>)", S, "x y@d.example", "x y@d.example", KEY_TYPE_SENDER},
    {"SMTPUTF8 sender", S,
     "j\xc3\xb6rg@b\xc3\xbc"
     "cher.test",
     "j\xc3\xb6rg@b\xc3\xbc"
     "cher.test",
     KEY_TYPE_SENDER},
    {"sender spelled as a SASL key is quoted", S, "sasl:alice@sink.test", "\"sasl:alice\"@sink.test",
     KEY_TYPE_SENDER},
    {"sender spelled as a HELO key is quoted", S, "helo:mx@sink.test", "\"helo:mx\"@sink.test",
     KEY_TYPE_SENDER},
    {"prefix in capitals is quoted too", S, "SASL:Alice@sink.test", "\"SASL:Alice\"@sink.test",
     KEY_TYPE_SENDER},
    {"sender spelled as a domain key is quoted", S, "@a@b.example", "\"@a\"@b.example", KEY_TYPE_SENDER},
    {"sender with a quote of its own is quoted, escaped", S, "\"sasl:alice\"@sink.test",
     "\"\\\"sasl:alice\\\"\"@sink.test", KEY_TYPE_SENDER},
    {"sender with a backslash is quoted, escaped", S, "a\\b@d.example", "\"a\\\\b\"@d.example",
     KEY_TYPE_SENDER},
    {"local part with an @ stays", S, "a@b@c.example", "a@b@c.example", KEY_TYPE_SENDER},
    {"quoted local part with an @", S, "sasl:a@b@c.example", "\"sasl:a@b\"@c.example", KEY_TYPE_SENDER},
    {"unqualified sender: no key", S, "sasl:alice", "", KEY_TYPE_SENDER},
    {"a network as a sender: no key", S, "8.0.0.0/8", "", KEY_TYPE_SENDER},
    {"domain alone: no key", S, "@b.example", "", KEY_TYPE_SENDER},
    {"no domain: no key", S, "a@", "", KEY_TYPE_SENDER},
    {"empty: no key", S, "", "", KEY_TYPE_SENDER},
    {"invalid UTF-8: no key", S, "j\xf6rg@b.example", "", KEY_TYPE_SENDER},
    {"quote in the domain: no key", S, "a@\"b\".example", "", KEY_TYPE_SENDER},
    /* sender domains */
    {"domain of a sender", D, "a@b.example", "@b.example", KEY_TYPE_DOMAIN},
    {"domain of a quoted sender", D, "sasl:alice@sink.test", "@sink.test", KEY_TYPE_DOMAIN},
    {"domain of an unqualified sender: none", D, "sasl:alice", "", KEY_TYPE_DOMAIN},
    {"domain of a domain alone: none", D, "@b.example", "", KEY_TYPE_DOMAIN},
    /* SASL names */
    {"sasl name lowercased", A, "Alice", "sasl:alice", KEY_TYPE_SASL},
    {"sasl name with an @", A, "Alice@Sink.Test", "sasl:alice@sink.test", KEY_TYPE_SASL},
    {"sasl name with a blank", A, "J Doe", "sasl:j doe", KEY_TYPE_SASL},
    {"sasl name in UTF-8, ASCII lowercased", A, "J\xc3\x96RG", "sasl:j\xc3\x96rg", KEY_TYPE_SASL},
    {"sasl name that looks like a helo key", A, "helo:x", "sasl:helo:x", KEY_TYPE_SASL},
    {"sasl name of 255 bytes", A, LONG255, "sasl:" LONG255, KEY_TYPE_SASL},
    {"sasl name of 256 bytes: no key", A, LONG255 "a", "", KEY_TYPE_SASL},
    {"sasl name with a tab: no key", A, "a\tb", "", KEY_TYPE_SASL},
    {"sasl name in Latin-1: no key", A, "J\xf6rg", "", KEY_TYPE_SASL},
    {"empty sasl name: no key", A, "", "", KEY_TYPE_SASL},
    /* HELO names */
    {"helo lowercased", H, "MX.Bad.Example", "helo:mx.bad.example", KEY_TYPE_HELO},
    {"helo with an @ is a helo key", H, "x@Y.example", "helo:x@y.example", KEY_TYPE_HELO},
    {"helo address literal", H, "[192.0.2.1]", "helo:[192.0.2.1]", KEY_TYPE_HELO},
    {"helo with a blank: no key", H, "a b", "", KEY_TYPE_HELO},
    {"helo in UTF-8: no key", H,
     "b\xc3\xbc"
     "cher",
     "", KEY_TYPE_HELO},
    {"helo of 256 bytes: no key", H, LONG255 "a", "", KEY_TYPE_HELO},
};

static void test_make_case(void **state)
{
	const struct make_case *c = *state;
	char out[KEYMAX];
	size_t len = c->make(c->in, out, sizeof(out));

	assert_string_equal(out, c->want);
	assert_int_equal(len, strlen(c->want));
	if (len > 0)
		assert_int_equal(key_type_of(out), c->type);
}

/* A key that does not fit is no key, never a cut one (which could be another key). */
static void test_make_small_output(void **state)
{
	char out[24];

	(void)state;
	assert_int_equal(key_sender("sasl:alice@sink.test", out, 22), 0);
	assert_string_equal(out, "");
	assert_int_equal(key_sender("sasl:alice@sink.test", out, 23), 22);
	assert_int_equal(key_sender("abcdefghij@example.com", out, 22), 0);
	assert_int_equal(key_sasl("abcdefghij", out, 15), 0);
	assert_int_equal(key_sasl("abcdefghij", out, 16), 15);
	assert_int_equal(key_helo("abcdefghij", out, 15), 0);
	assert_int_equal(key_domain("a@example.com", out, 12), 0);
	assert_int_equal(key_sasl(NULL, out, sizeof(out)), 0);
}

/* ---- the upgrade of 0.1.0 keys ---- */

struct migrate_case {
	const char *name, *key, *sender, *want;
};

static struct migrate_case migrate_cases[] = {
    {"poisoned sasl key becomes the quoted sender", "sasl:alice@sink.test", "sasl:alice@sink.test",
     "\"sasl:alice\"@sink.test"},
    {"poisoned helo key becomes the quoted sender", "helo:x@y.example", "helo:x@y.example",
     "\"helo:x\"@y.example"},
    {"sasl key of a real user stays", "sasl:alice@sink.test", "alice@sink.test", "sasl:alice@sink.test"},
    {"sasl key added by hand stays", "sasl:alice@sink.test", "", "sasl:alice@sink.test"},
    {"sasl name lowercased", "sasl:Alice", "x@y.example", "sasl:alice"},
    {"sasl key in capitals with an @: lowercased", "sasl:Alice@Sink.Test", "alice@sink.test",
     "sasl:alice@sink.test"},
    {"helo key stays", "helo:mx.example", "x@y.example", "helo:mx.example"},
    {"sender stays", "a@b.example", "a@b.example", "a@b.example"},
    {"sender with quotes of its own is quoted", "\"x\"@d.example", "\"x\"@d.example",
     "\"\\\"x\\\"\"@d.example"},
    {"quoted sender added by hand stays: it means x y@d now", "\"x y\"@d.example", "", "\"x y\"@d.example"},
    {"poisoned domain-like key becomes the quoted sender", "@a@d.example", "@a@d.example",
     "\"@a\"@d.example"},
    {"domain key stays", "@d.example", "x@d.example", "@d.example"},
    {"domain stays", "@b.example", "a@b.example", "@b.example"},
    {"network stays", "192.0.2.0/24", "a@b.example", "192.0.2.0/24"},
    {"poisoned key that makes no sender key now: dropped", "sasl:\xff@d.example", "sasl:\xff@d.example", ""},
};

static void test_migrate_case(void **state)
{
	const struct migrate_case *c = *state;
	char out[KEYMAX], again[KEYMAX];

	key_migrate(c->key, c->sender, out, sizeof(out));
	assert_string_equal(out, c->want);
	if (!out[0] || strcmp(out, c->key) == 0)
		return;
	/*
	 * A second upgrade (another host, a retry) changes nothing: the
	 * moved entry keeps its recorded sender, which is no longer its key.
	 */
	key_migrate(out, c->sender, again, sizeof(again));
	assert_string_equal(again, out);
}

/* ---- no two key types ever meet ---- */

/*
 * Hostile texts, each given to every constructor the way the daemon
 * does (a sender as Postfix's internal form, normalised; SASL and HELO
 * names as they come; a network when it parses as one).
 */
static const char *const hostile[] = {
    "alice@sink.test",
    "sasl:alice@sink.test",
    "SASL:Alice@Sink.Test",
    "helo:alice@sink.test",
    "\"sasl:alice\"@sink.test",
    "<\"sasl:alice\"@sink.test>",
    "\"\\\"sasl:alice\\\"\"@sink.test",
    "@sink.test",
    "@@sink.test",
    "@a@sink.test",
    "sink.test",
    "alice",
    "J Doe",
    "j doe@sink.test",
    "sasl:j doe",
    "helo:mx.example",
    "mx.example",
    "x@y",
    "192.0.2.1",
    "192.0.2.0/24",
    "2001:db8::/64",
    "2001:db8::1",
    "sasl:192.0.2.1",
    "192.0.2.1@sink.test",
    "[192.0.2.1]",
    "a\\b@sink.test",
    "a@b@sink.test",
};

#define NHOSTILE (sizeof(hostile) / sizeof(hostile[0]))
#define NMAKERS 5

typedef struct made {
	char key[KEYMAX];
	key_type type;
	const char *from;
} made;

/* The key of text as the constructor for type makes it; false when none. */
static bool make_as(key_type type, const char *text, char *out)
{
	char bare[KEYMAX], norm[ADDR_MAX], err[128];
	addr_net net;

	switch (type) {
	case KEY_TYPE_SENDER:
	case KEY_TYPE_DOMAIN:
		snprintf(bare, sizeof(bare), "%s", text);
		addr_unquote(bare);
		if (addr_normalise(bare, strlen(bare), norm, sizeof(norm)) != ADDR_OK)
			return false;
		return (type == KEY_TYPE_SENDER ? key_sender : key_domain)(norm, out, KEYMAX) > 0;
	case KEY_TYPE_SASL:
		return key_sasl(text, out, KEYMAX) > 0;
	case KEY_TYPE_HELO:
		return key_helo(text, out, KEYMAX) > 0;
	case KEY_TYPE_NETWORK:
		if (!addr_net_parse(text, &net, err, sizeof(err)))
			return false;
		addr_net_format(&net, out, KEYMAX);
		return true;
	}
	return false;
}

static void test_no_cross_type_collision(void **state)
{
	static made keys[NHOSTILE * NMAKERS];
	size_t n = 0;

	(void)state;
	for (size_t i = 0; i < NHOSTILE; i++)
		for (int t = 0; t < NMAKERS; t++)
			if (make_as((key_type)t, hostile[i], keys[n].key)) {
				keys[n].type = (key_type)t;
				keys[n].from = hostile[i];
				if (key_type_of(keys[n].key) != keys[n].type)
					fail_msg("%s from '%s' is %s, reads as %s",
					         key_type_name(keys[n].type), keys[n].from, keys[n].key,
					         key_type_name(key_type_of(keys[n].key)));
				n++;
			}
	assert_true(n > NHOSTILE); /* most texts make keys of several types */
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			if (keys[i].type != keys[j].type && strcmp(keys[i].key, keys[j].key) == 0)
				fail_msg("%s from '%s' and %s from '%s' are both %s",
				         key_type_name(keys[i].type), keys[i].from,
				         key_type_name(keys[j].type), keys[j].from, keys[i].key);
}

/* Two different senders never share a key: the quoted form is never another sender's text. */
static void test_no_sender_collision(void **state)
{
	static const char *const senders[] = {
	    "sasl:alice@sink.test",
	    "\"sasl:alice\"@sink.test",
	    "\"\\\"sasl:alice\\\"\"@sink.test",
	    "a\\b@sink.test",
	    "\"a\\\\b\"@sink.test",
	    "@a@sink.test",
	    "\"@a\"@sink.test",
	    "x y@sink.test",
	    "\"x y\"@sink.test",
	};
	char keys[sizeof(senders) / sizeof(senders[0])][KEYMAX];
	size_t n = sizeof(senders) / sizeof(senders[0]);

	(void)state;
	for (size_t i = 0; i < n; i++)
		assert_int_not_equal(key_sender(senders[i], keys[i], KEYMAX), 0);
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			if (strcmp(keys[i], keys[j]) == 0)
				fail_msg("senders %s and %s share the key %s", senders[i], senders[j],
				         keys[i]);
}

/*
 * spamtrapctl reads a sender key back by undoing the quoting as Postfix
 * does (addr_unquote, addr_normalise) and keying the result: every sender
 * key must come back to itself, or list's output could not be looked up.
 */
static void test_sender_keys_read_back(void **state)
{
	(void)state;
	for (size_t i = 0; i < NHOSTILE; i++) {
		char key[KEYMAX], again[KEYMAX];

		if (!make_as(KEY_TYPE_SENDER, hostile[i], key))
			continue;
		assert_true(make_as(KEY_TYPE_SENDER, key, again));
		if (strcmp(key, again) != 0)
			fail_msg("'%s' is the key %s, which reads back as %s", hostile[i], key, again);
	}
}

/* ---- the keys of a transaction (decide_prepare) ---- */

static decide_policy policy_all(void)
{
	decide_policy p;
	char err[128];

	memset(&p, 0, sizeof(p));
	/* Not sender_domain, whose listing has rules of its own (issue 11, item 5). */
	p.keys =
	    DECIDE_KEY_SENDER | DECIDE_KEY_CLIENT_ADDRESS | DECIDE_KEY_SASL_USERNAME | DECIDE_KEY_HELO_NAME;
	p.ttl = 86400;
	p.ipv4_prefix = 32;
	p.ipv6_prefix = 64;
	assert_true(smtp_reply_parse("550 5.7.1 Blocklisted", &p.reject, err, sizeof(err)));
	return p;
}

/*
 * Every key a MAIL FROM looks up for txn, in order, as the store builds
 * them from the blocklist check's query (the client's networks at every
 * length). Static: valid until the next call.
 */
static const netkeys *lookups(const decide_policy *p, const decide_txn *txn)
{
	static query q;
	static netkeys k;

	decide_lookup_query(p, txn, &q);
	netkeys_build(&k, &q, &netkeys_every);
	return &k;
}

static bool in_list(const char *const *list, size_t n, const char *key)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(list[i], key) == 0)
			return true;
	return false;
}

struct txn_case {
	const char *name;
	const char *sender, *client, *sasl, *helo;
	const char *record[DECIDE_MAX_RECORD]; /* NULL-terminated, in order */
};

static struct txn_case txn_cases[] = {
    {"ordinary sender: sender, client, domain, helo",
     "<Spammer@Bad.Example>",
     "192.0.2.66",
     NULL,
     "mx.bad.example",
     {"spammer@bad.example", "192.0.2.66", "helo:mx.bad.example"}},
    {"sender spelled as a SASL key is recorded quoted",
     "<sasl:alice@sink.test>",
     "192.0.2.66",
     NULL,
     NULL,
     {"\"sasl:alice\"@sink.test", "192.0.2.66"}},
    {"the same sender from the policy protocol (internal form)",
     "sasl:alice@sink.test",
     "192.0.2.66",
     NULL,
     NULL,
     {"\"sasl:alice\"@sink.test", "192.0.2.66"}},
    {"sender spelled as a HELO key is recorded quoted",
     "helo:mx.sink.test@sink.test",
     "192.0.2.66",
     NULL,
     NULL,
     {"\"helo:mx.sink.test\"@sink.test", "192.0.2.66"}},
    {"unqualified sender that names an account: client only",
     "<sasl:alice>",
     "192.0.2.66",
     NULL,
     NULL,
     {"192.0.2.66"}},
    {"unqualified sender that names a network: client only",
     "<8.0.0.0/8>",
     "192.0.2.66",
     NULL,
     NULL,
     {"192.0.2.66"}},
    {"sender without a local part: client only", "<@sink.test>", "192.0.2.66", NULL, NULL, {"192.0.2.66"}},
    {"sender without a domain: client only", "a@", "192.0.2.66", NULL, NULL, {"192.0.2.66"}},
    {"sender in Latin-1: client only", "j\xf6rg@sink.test", "192.0.2.66", NULL, NULL, {"192.0.2.66"}},
    {"sender spelled as a domain key is recorded quoted",
     "<@a@sink.test>",
     "192.0.2.66",
     NULL,
     NULL,
     {"\"@a\"@sink.test", "192.0.2.66"}},
    {"SASL name in capitals and with a blank: lowercased, authenticated (no client key)",
     "<j.doe@sink.test>",
     "192.0.2.67",
     "J Doe",
     NULL,
     {"j.doe@sink.test", "sasl:j doe"}},
    {"SASL name that makes no key still authenticates (no client key)",
     "<j.doe@sink.test>",
     "192.0.2.67",
     "J\tDoe",
     NULL,
     {"j.doe@sink.test"}},
    {"HELO with an @ is a HELO key",
     "<a@b.example>",
     "192.0.2.68",
     NULL,
     "Alice@Sink.Test",
     {"a@b.example", "192.0.2.68", "helo:alice@sink.test"}},
};

static void test_txn_case(void **state)
{
	const struct txn_case *c = *state;
	decide_policy p = policy_all();
	decide_facts f = {.front = DECIDE_FRONT_POLICY,
	                  .sender = c->sender,
	                  .client_address = c->client,
	                  .sasl_username = c->sasl,
	                  .helo = c->helo};
	decide_txn txn;
	size_t n = 0;

	decide_prepare(&p, &f, &txn);
	while (n < DECIDE_MAX_RECORD && c->record[n])
		n++;
	for (size_t i = 0; i < txn.nrecord; i++)
		print_message("record[%zu] %s\n", i, txn.record[i]);
	assert_int_equal(txn.nrecord, n);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(txn.record[i], c->record[i]);
		/* What a hit records is looked up at MAIL FROM. */
		assert_true(in_list(lookups(&p, &txn)->key, lookups(&p, &txn)->n, c->record[i]));
	}
}

/*
 * The attack of issue 11: a trap hit from <"sasl:alice"@sink.test> at
 * 192.0.2.66 must record nothing that the real SASL user alice@sink.test
 * (or a HELO of the same text) looks up, from wherever that user comes.
 */
static void test_poisoned_sender_misses_the_sasl_user(void **state)
{
	static const char *const attacks[] = {"sasl:alice@sink.test", "<sasl:alice@sink.test>",
	                                      "SASL:Alice@Sink.Test", "helo:alice@sink.test"};
	decide_policy p = policy_all();

	(void)state;
	for (size_t a = 0; a < sizeof(attacks) / sizeof(attacks[0]); a++) {
		decide_facts spam = {.front = DECIDE_FRONT_POLICY,
		                     .sender = attacks[a],
		                     .client_address = "192.0.2.66",
		                     .helo = "spam.example"};
		decide_facts user = {.front = DECIDE_FRONT_POLICY,
		                     .sender = "alice@sink.test",
		                     .client_address = "198.51.100.5",
		                     .sasl_username = "alice@sink.test",
		                     .helo = "alice@sink.test"};
		decide_txn spam_txn, user_txn;

		decide_prepare(&p, &spam, &spam_txn);
		decide_prepare(&p, &user, &user_txn);
		const netkeys *user_keys = lookups(&p, &user_txn);
		assert_true(in_list(user_keys->key, user_keys->n, "sasl:alice@sink.test"));
		assert_true(in_list(user_keys->key, user_keys->n, "helo:alice@sink.test"));
		assert_true(spam_txn.nrecord > 0);
		for (size_t i = 0; i < spam_txn.nrecord; i++)
			if (in_list(user_keys->key, user_keys->n, spam_txn.record[i]))
				fail_msg("sender %s records %s, which SASL user alice@sink.test looks up",
				         attacks[a], spam_txn.record[i]);
	}
}

/*
 * At MAIL FROM every key of the transaction is looked up, whatever
 * blocklist.keys records: an entry from spamtrapctl add (sasl:NAME) or one
 * recorded under an earlier config still rejects. Typed keys make that safe:
 * only a SASL entry can match the SASL key.
 */
static void test_sasl_looked_up_whatever_keys_record(void **state)
{
	decide_policy p = policy_all();
	decide_facts f = {.front = DECIDE_FRONT_MILTER,
	                  .sender = "<alice@sink.test>",
	                  .client_address = "198.51.100.5",
	                  .sasl_username = "Alice@Sink.Test",
	                  .helo = "Laptop.Sink.Test"};
	decide_txn txn;

	(void)state;
	p.keys = DECIDE_KEY_CLIENT_ADDRESS;
	decide_prepare(&p, &f, &txn);
	assert_int_equal(txn.nrecord, 0); /* authenticated: no client key */
	const netkeys *k = lookups(&p, &txn);
	assert_true(in_list(k->key, k->n, "sasl:alice@sink.test"));
	assert_true(in_list(k->key, k->n, "helo:laptop.sink.test"));
	assert_true(in_list(k->key, k->n, "alice@sink.test"));
	assert_true(in_list(k->key, k->n, "@sink.test"));
	for (size_t i = 0; i < k->n; i++) {
		key_type t = key_type_of(k->key[i]);

		if ((t == KEY_TYPE_NETWORK) != (i >= 2 && i < 2 + 25))
			fail_msg("lookup[%zu] %s is a %s key", i, k->key[i], key_type_name(t));
	}
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest others[] = {
	    cmocka_unit_test(test_make_small_output),
	    cmocka_unit_test(test_no_cross_type_collision),
	    cmocka_unit_test(test_no_sender_collision),
	    cmocka_unit_test(test_sender_keys_read_back),
	    cmocka_unit_test(test_poisoned_sender_misses_the_sasl_user),
	    cmocka_unit_test(test_sasl_looked_up_whatever_keys_record),
	};

	RUN_TABLE("key_type_of", type_cases, test_type_case, failed);
	RUN_TABLE("key constructors", make_cases, test_make_case, failed);
	RUN_TABLE("key_migrate", migrate_cases, test_migrate_case, failed);
	RUN_TABLE("decide_prepare keys", txn_cases, test_txn_case, failed);
	failed += cmocka_run_group_tests_name("key", others, NULL, NULL);
	return failed;
}
