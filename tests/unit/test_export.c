/*
 * Unit tests for core/export: each format's text for a set of entries
 * (exact lines), the merging of addresses and networks inside exported
 * networks with the longer remaining time, kernel timeouts cut to
 * EXPORT_TIMEOUT_MAX, empty sets without "{ }", ipset maxelem, rbldnsd
 * answer codes, and --keys / --format parsing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/export.h"
#include "unit_table.h"

#define NOW 1000000

typedef struct entry {
	const char *key;
	int64_t ttl; /* expires at NOW + ttl */
	bool trap;
} entry;

static char *render(export_format f, unsigned keys, const entry *e, size_t n, export_counts *counts)
{
	export_options o = {.format = f,
	                    .keys = keys ? keys : export_keys_default(f),
	                    .now = NOW,
	                    .action = "REJECT 5.7.1 listed",
	                    .zone_ns = "ns.example.org",
	                    .zone_mail = "hostmaster.example.org"};
	export *x = export_new(&o);
	size_t len = 0;
	char *text;

	assert_non_null(x);
	for (size_t i = 0; i < n; i++)
		assert_true(export_add(x, e[i].key, NOW + e[i].ttl, e[i].trap));
	text = export_render(x, &len);
	assert_non_null(text);
	assert_int_equal(strlen(text), len);
	if (counts)
		*counts = *export_get_counts(x);
	export_free(x);
	return text;
}

/* text holds want as whole consecutive lines. */
static void assert_has(const char *text, const char *want)
{
	if (!strstr(text, want))
		fail_msg("missing:\n%s\n--- in:\n%s", want, text);
}

static void assert_lacks(const char *text, const char *unwanted)
{
	if (strstr(text, unwanted))
		fail_msg("unexpected:\n%s\n--- in:\n%s", unwanted, text);
}

static void test_nft_merges_and_times(void **state)
{
	(void)state;
	const entry e[] = {{"192.0.2.7", 7200, true},  {"192.0.2.0/24", 3600, true},
	                   {"10.1.0.0/16", 60, true},  {"10.1.2.0/24", 600, true},
	                   {"10.2.0.0/16", 30, false}, {"2001:db8::/64", 100, true},
	                   {"2001:db8::5", 10, true},  {"spammer@example.com", 50, true}};
	export_counts c;
	char *t = render(EXPORT_NFT, 0, e, sizeof(e) / sizeof(e[0]), &c);

	assert_has(
	    t, "table inet spamtrapd {\n\tset v4 {\n\t\ttype ipv4_addr\n\t\tflags interval, timeout\n\t}\n");
	assert_has(t, "flush set inet spamtrapd v4\nflush set inet spamtrapd v6\n");
	/* the host inside the /24 goes, and the /24 keeps the host's longer time; /24 inside /16 likewise */
	assert_has(
	    t, "add element inet spamtrapd v4 {\n\t10.1.0.0/16 timeout 600s,\n\t10.2.0.0/16 timeout 30s,\n"
	       "\t192.0.2.0/24 timeout 7200s\n}\n");
	assert_has(t, "add element inet spamtrapd v6 {\n\t2001:db8::/64 timeout 100s\n}\n");
	assert_lacks(t, "192.0.2.7");
	assert_lacks(t, "spammer");
	assert_int_equal(c.merged, 3);
	assert_int_equal(c.written, 4);
	free(t);
}

static void test_nft_empty_sets_have_no_elements(void **state)
{
	(void)state;
	const entry e[] = {{"2001:db8::1", 5, true}};
	char *t = render(EXPORT_NFT, 0, NULL, 0, NULL);

	/* flushed, never "elements = { }" nor "add element ... { }" */
	assert_has(t, "flush set inet spamtrapd v4\nflush set inet spamtrapd v6\n");
	assert_lacks(t, "add element");
	assert_lacks(t, "{ }");
	free(t);
	t = render(EXPORT_NFT, 0, e, 1, NULL);
	assert_lacks(t, "add element inet spamtrapd v4");
	assert_has(t, "add element inet spamtrapd v6 {\n\t2001:db8::1 timeout 5s\n}\n");
	free(t);
}

static void test_nft_timeouts_clamped_and_chunked(void **state)
{
	(void)state;
	enum { N = 1001 };
	entry *e = calloc(N, sizeof(*e));
	char(*keys)[32] = calloc(N, 32);
	export_counts c;
	char *t;

	for (int i = 0; i < N; i++) {
		snprintf(keys[i], 32, "10.%d.%d.1", i / 256, i % 256);
		e[i] = (entry){keys[i], i == 0 ? 100LL * 365 * 86400 : 60, true};
	}
	t = render(EXPORT_NFT, 0, e, N, &c);
	assert_has(t, "\t10.0.0.1 timeout 2147483s,\n");
	assert_int_equal(c.clamped, 1);
	/* 1,000 elements a statement: the thousandth closes it without a comma, the last one alone */
	assert_has(
	    t, "\t10.3.231.1 timeout 60s\n}\nadd element inet spamtrapd v4 {\n\t10.3.232.1 timeout 60s\n}\n");
	free(t);
	free(keys);
	free(e);
}

static void test_ipset(void **state)
{
	(void)state;
	const entry e[] = {{"192.0.2.0/24", 50, true},
	                   {"192.0.2.1", 10, true},
	                   {"2001:db8::/48", 100LL * 86400 * 365, true}};
	char *t = render(EXPORT_IPSET, 0, e, 3, NULL);

	assert_has(
	    t, "create spamtrapd-v4-new hash:net family inet hashsize 1024 maxelem 1048576 timeout 0 -exist\n"
	       "flush spamtrapd-v4-new\n"
	       "add spamtrapd-v4-new 192.0.2.0/24 timeout 50\n"
	       "create spamtrapd-v4 hash:net family inet hashsize 1024 maxelem 1048576 timeout 0 -exist\n"
	       "swap spamtrapd-v4-new spamtrapd-v4\n"
	       "destroy spamtrapd-v4-new\n");
	assert_has(t, "create spamtrapd-v6-new hash:net family inet6 ");
	assert_has(t, "add spamtrapd-v6-new 2001:db8::/48 timeout 2147483\n");
	free(t);
}

static void test_ipset_maxelem_grows(void **state)
{
	(void)state;
	enum { N = 600000 };
	entry *e = calloc(N, sizeof(*e));
	char(*keys)[32] = calloc(N, 32);
	char *t;

	for (int i = 0; i < N; i++) {
		snprintf(keys[i], 32, "10.%d.%d.%d", i / 65536, i / 256 % 256, i % 256);
		e[i] = (entry){keys[i], 60, true};
	}
	t = render(EXPORT_IPSET, 0, e, N, NULL);
	assert_has(t, "hash:net family inet hashsize 1024 maxelem 2097152 ");
	assert_has(t, "hash:net family inet6 hashsize 1024 maxelem 1048576 ");
	free(t);
	free(keys);
	free(e);
}

static void test_pf(void **state)
{
	(void)state;
	const entry e[] = {{"198.51.100.0/24", 5, true}, {"198.51.100.9", 5, true}, {"2001:db8::1", 5, true},
	                   {"@example.net", 5, true},    {"0.0.0.0/0", 5, true},    {"64.0.0.0/2", 5, true},
	                   {"2000::/3", 5, true},        {"10.0.0.0/8", 5, true}};
	export_counts c;
	char *t = render(EXPORT_PF, 0, e, 8, &c);

	/* networks the daemon never checks (shorter than /8, /16) never reach a firewall */
	assert_int_equal(c.skipped_other, 3);
	assert_has(t, "\n10.0.0.0/8\n198.51.100.0/24\n2001:db8::1\n");
	assert_lacks(t, "\n0.0.0.0/0");
	assert_lacks(t, "64.0.0.0");
	assert_lacks(t, "2000::");

	assert_has(t, "\n198.51.100.0/24\n2001:db8::1\n");
	assert_lacks(t, "198.51.100.9");
	assert_lacks(t, "example.net");
	free(t);
}

static void test_rbldnsd(void **state)
{
	(void)state;
	const entry e[] = {{"192.0.2.7", 60, true},        {"198.51.100.0/24", 60, false},
	                   {"2001:db8::/64", 60, true},    {"@spam.example", 60, true},
	                   {"@manual.example", 60, false}, {"user@spam.example", 60, true}};
	char *t = render(EXPORT_RBLDNSD, 0, e, 6, NULL);

	assert_has(t, "$SOA 300 ns.example.org. hostmaster.example.org. 1000000 ");
	assert_has(t, "$NS 300 ns.example.org.\n$TTL 300\n");
	assert_has(t, "$DATASET ip4trie:clients @\n:127.0.0.2:$ sent mail to a spamtrap\n192.0.2.7\n"
	              "198.51.100.0/24 :127.0.0.3:$ is blocklisted by the administrator\n");
	assert_has(t, "$DATASET ip6trie:clients6 @\n:127.0.0.2:$ sent mail to a spamtrap\n2001:db8::/64\n");
	assert_lacks(t, "dnset"); /* domains only when asked for */
	assert_lacks(t, "user@");
	free(t);
	t = render(EXPORT_RBLDNSD, EXPORT_KEY_CLIENT | EXPORT_KEY_DOMAIN, e, 6, NULL);
	assert_has(t, "$DATASET dnset:domains domains\n:127.0.0.2:$ sent mail to a spamtrap\n"
	              "manual.example :127.0.0.3:$ is blocklisted by the administrator\nspam.example\n");
	free(t);
}

static void test_postfix_and_cidr(void **state)
{
	(void)state;
	const entry e[] = {{"198.51.100.0/25", 60, true}, {"198.51.100.7", 60, true},
	                   {"2001:db8::/64", 60, true},   {"@example.net", 60, true},
	                   {"a@example.com", 60, true},   {"sasl:bob", 60, true},
	                   {"sasl:j doe", 60, true}};
	export_counts c;
	char *t = render(EXPORT_POSTFIX, 0, e, 7, &c);

	assert_has(t, "198.51.100.0 REJECT 5.7.1 listed\n198.51.100.1 REJECT 5.7.1 listed\n");
	assert_has(t, "198.51.100.127 REJECT 5.7.1 listed\n");
	assert_has(t, "198.51.100.7 REJECT 5.7.1 listed\n198.51.100.70 "); /* once, not twice */
	assert_has(t, "a@example.com REJECT 5.7.1 listed\nexample.net REJECT 5.7.1 listed\n");
	assert_lacks(t, "bob");
	assert_int_equal(c.skipped_v6net, 1);
	assert_int_equal(c.written, 130);
	free(t);
	t = render(EXPORT_POSTFIX, EXPORT_KEY_SASL, e, 7, &c);
	assert_string_equal(t, "bob REJECT 5.7.1 listed\n");
	assert_int_equal(c.skipped_other, 1); /* "j doe": an access map splits at the blank */
	free(t);
	t = render(EXPORT_CIDR, 0, e, 7, NULL);
	assert_string_equal(t, "198.51.100.0/25 REJECT 5.7.1 listed\n198.51.100.7 REJECT 5.7.1 listed\n"
	                       "2001:db8::/64 REJECT 5.7.1 listed\n");
	free(t);
}

static void test_names(void **state)
{
	(void)state;
	const char *names[] = {"postfix", "cidr", "nft", "ipset", "pf", "rbldnsd"};
	export_format f;
	unsigned keys;
	char err[128];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		assert_true(export_format_parse(names[i], &f));
		assert_string_equal(export_format_name(f), names[i]);
		assert_int_equal(export_keys_default(f) & ~export_keys_allowed(f), 0);
	}
	assert_false(export_format_parse("iptables", &f));
	assert_false(export_format_parse("NFT", &f));
	assert_int_equal(export_keys_allowed(EXPORT_NFT), EXPORT_KEY_CLIENT);
	assert_int_equal(export_keys_allowed(EXPORT_RBLDNSD), EXPORT_KEY_CLIENT | EXPORT_KEY_DOMAIN);
	assert_true(export_keys_parse("client,domain", &keys, err, sizeof(err)));
	assert_int_equal(keys, EXPORT_KEY_CLIENT | EXPORT_KEY_DOMAIN);
	assert_false(export_keys_parse("client,senders", &keys, err, sizeof(err)));
	assert_non_null(strstr(err, "unknown kind 'senders'"));
	assert_false(export_keys_parse("", &keys, err, sizeof(err)));
	assert_false(export_keys_parse(",", &keys, err, sizeof(err)));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_nft_merges_and_times),
	    cmocka_unit_test(test_nft_empty_sets_have_no_elements),
	    cmocka_unit_test(test_nft_timeouts_clamped_and_chunked),
	    cmocka_unit_test(test_ipset),
	    cmocka_unit_test(test_ipset_maxelem_grows),
	    cmocka_unit_test(test_pf),
	    cmocka_unit_test(test_rbldnsd),
	    cmocka_unit_test(test_postfix_and_cidr),
	    cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
