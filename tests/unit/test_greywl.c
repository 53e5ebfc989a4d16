/*
 * Unit tests for core/greywl: postgrey-compatible greylist whitelists.
 * Tables of client and recipient lookups against a fixed whitelist (each
 * row its own named test), a table of lines that must fail the load with
 * their reason, and Debian's shipped postgrey 1.37 files
 * (tests/data/postgrey), which must load unchanged and match what postgrey
 * matches.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/greywl.h"
#include "unit_table.h"

static const char clients_text[] = "# a whitelist_clients file in postgrey's syntax\n"
                                   "\n"
                                   "google.com\n"
                                   "  Example.ORG.   # trailing dot, upper case, comment\n"
                                   "192.0.2.7\n"
                                   "198.51.100.0/24\n"
                                   "203.0.113.77/28\r\n"
                                   "10.20.30\n"
                                   "172.16\n"
                                   "2001:db8:1::/48\n"
                                   "::ffff:100.64.0.0/106\n"
                                   "/^mx\\d+\\.regex\\.test$/\n"
                                   "/^(a+)+$/\n"
                                   "/^unknown$/\n";

static const char recipients_text[] = "postmaster@\n"
                                      "abuse@example.com\n"
                                      "@exact.test\n"
                                      "example.net   # and its subdomains\n"
                                      "/^list-.*@lists\\.test$/\n";

static greywl *fixture_new(void)
{
	greywl *wl = greywl_new();
	char err[512] = "";

	assert_non_null(wl);
	if (greywl_load_clients(wl, clients_text, strlen(clients_text), "clients", err, sizeof(err)) != 0)
		fail_msg("clients: %s", err);
	if (greywl_load_recipients(wl, recipients_text, strlen(recipients_text), "recipients", err,
	                           sizeof(err)) != 0)
		fail_msg("recipients: %s", err);
	return wl;
}

struct client_case {
	const char *name;
	const char *address;
	const char *client_name;
	const char *why; /* NULL: no match */
};

static char long_name[400];

static struct client_case client_cases[] = {
    {"host exact", "192.0.2.99", "google.com", "clients:3: google.com"},
    {"host below", "192.0.2.99", "mx.google.com", "clients:3: google.com"},
    {"host upper case", "192.0.2.99", "MX.GOOGLE.COM", "clients:3: google.com"},
    {"host trailing dot", "192.0.2.99", "mx.google.com.", "clients:3: google.com"},
    {"host suffix not on a label", "192.0.2.99", "evilgoogle.com", NULL},
    {"host entry inside attacker name", "192.0.2.99", "mail.google.com.evil.test", NULL},
    {"host entry as a label prefix", "192.0.2.99", "google.com-evil.test", NULL},
    {"entry trailing dot upper case", "192.0.2.99", "mail.example.org", "clients:4: Example.ORG."},
    {"client_name unknown", "192.0.2.99", "unknown", NULL},
    {"client_name UNKNOWN", "192.0.2.99", "UNKNOWN", NULL},
    {"client_name address literal", "192.0.2.99", "[192.0.2.99]", NULL},
    {"client_name with a blank", "192.0.2.99", "x google.com", NULL},
    {"client_name over 253", "192.0.2.99", long_name, NULL},
    {"ip host", "192.0.2.7", NULL, "clients:5: 192.0.2.7"},
    {"ip host neighbour", "192.0.2.8", "unknown", NULL},
    {"ip mapped client", "::ffff:192.0.2.7", NULL, "clients:5: 192.0.2.7"},
    {"ip literal client", "[192.0.2.7]", NULL, "clients:5: 192.0.2.7"},
    {"cidr inside", "198.51.100.200", NULL, "clients:6: 198.51.100.0/24"},
    {"cidr outside", "198.51.101.1", NULL, NULL},
    {"cidr host bits cleared", "203.0.113.64", NULL, "clients:7: 203.0.113.77/28"},
    {"cidr host bits upper end", "203.0.113.79", NULL, "clients:7: 203.0.113.77/28"},
    {"cidr host bits outside", "203.0.113.80", NULL, NULL},
    {"partial /24 inside", "10.20.30.255", NULL, "clients:8: 10.20.30"},
    {"partial /24 outside", "10.20.31.1", NULL, NULL},
    /* postgrey 1.37 gives 172.16 a /24: this row is where spamtrapd differs. */
    {"partial /16 beyond the first /24", "172.16.200.1", NULL, "clients:9: 172.16"},
    {"partial /16 first /24", "172.16.0.1", NULL, "clients:9: 172.16"},
    {"partial /16 outside", "172.17.0.1", NULL, NULL},
    {"ipv6 /48 inside", "2001:db8:1:ffff::1", NULL, "clients:10: 2001:db8:1::/48"},
    {"ipv6 /48 outside", "2001:db8:2::1", NULL, NULL},
    {"ipv6 literal client", "IPv6:2001:db8:1::9", NULL, "clients:10: 2001:db8:1::/48"},
    {"ipv4 mapped network", "100.127.0.1", NULL, "clients:11: ::ffff:100.64.0.0/106"},
    {"ipv4 mapped network outside", "100.128.0.1", NULL, NULL},
    {"bad client address", "not-an-ip", NULL, NULL},
    {"regex", "192.0.2.99", "mx12.regex.test", "clients:12: /^mx\\d+\\.regex\\.test$/"},
    {"regex caseless", "192.0.2.99", "MX1.Regex.Test", "clients:12: /^mx\\d+\\.regex\\.test$/"},
    {"regex anchored by its entry", "192.0.2.99", "mx12.regex.test.evil.test", NULL},
    {"regex backtracking capped", "192.0.2.99", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.b", NULL},
    {"regex matching a long run", "192.0.2.99", "aaaa", "clients:13: /^(a+)+$/"},
    {"nothing at all", NULL, NULL, NULL},
};

static void test_client_case(void **state)
{
	const struct client_case *c = *state;
	greywl *wl = fixture_new();
	char why[GREYWL_WHY_MAX] = "";
	bool hit = greywl_match_client(wl, c->address, c->client_name, why, sizeof(why));

	if (c->why == NULL) {
		if (hit)
			fail_msg("matched %s", why);
	} else {
		assert_true(hit);
		assert_string_equal(why, c->why);
	}
	greywl_free(wl);
}

struct recipient_case {
	const char *name;
	const char *recipient;
	bool hit;
};

static struct recipient_case recipient_cases[] = {
    {"user@ any domain", "postmaster@anything.test", true},
    {"user@ upper case", "PostMaster@X.TEST", true},
    {"user@ extension", "postmaster+tag@x.test", true},
    {"user@ empty extension", "postmaster+@x.test", false},
    {"user@ longer user", "postmasterx@x.test", false},
    {"user@ prefixed user", "xpostmaster@x.test", false},
    {"user@ no at", "postmaster", false},
    {"address", "abuse@example.com", true},
    {"address upper case", "ABUSE@Example.COM", true},
    {"address extension", "abuse+x@example.com", true},
    {"address extension with at", "abuse+x@y@example.com", false},
    {"address other domain", "abuse@example.com.evil.test", false},
    {"address subdomain", "abuse@sub.example.com", false},
    {"address quoted local part", "abuse@example.com@evil.test", false},
    {"@domain exact", "x@exact.test", true},
    {"@domain subdomain", "x@sub.exact.test", false},
    {"@domain suffix", "x@inexact.test", false},
    {"domain", "x@example.net", true},
    {"domain subdomain", "x@mx.example.net", true},
    {"domain upper case", "X@EXAMPLE.NET", true},
    {"domain not on a label", "x@evilexample.net", false},
    {"domain in quoted local part", "x@example.net@evil.test", false},
    {"domain alone", "example.net", false},
    {"regex", "list-foo@lists.test", true},
    {"regex caseless", "LIST-foo@LISTS.TEST", true},
    {"regex anchored by its entry", "list-foo@lists.test.evil", false},
    {"empty", "", false},
};

static void test_recipient_case(void **state)
{
	const struct recipient_case *c = *state;
	greywl *wl = fixture_new();
	char why[GREYWL_WHY_MAX] = "";

	assert_int_equal(greywl_match_recipient(wl, c->recipient, why, sizeof(why)), c->hit);
	greywl_free(wl);
}

struct bad_case {
	const char *name;
	bool recipients;
	const char *line;
	const char *message; /* a part of err after "f:3: " */
};

static struct bad_case bad_cases[] = {
    {"octet over 255", false, "300.1.1.1", "is not an IPv4 address"},
    {"partial octet over 255", false, "10.256", "is not an IPv4 address"},
    {"ipv4 prefix over 32", false, "192.0.2.0/33", "out of range"},
    {"ipv6 prefix over 128", false, "2001:db8::/129", "bad prefix length"},
    {"ipv6 garbage", false, "foo:bar:baz", "not an IPv6 address"},
    {"mapped prefix under 96", false, "::ffff:1.2.3.4/64", "96 or more"},
    {"wildcard host", false, "*.example.com", "doesn't look like a host name"},
    {"partial ip with prefix", false, "10.1.2/24", "doesn't look like a host name"},
    {"ip with empty prefix", false, "10.1.2.3/", "doesn't look like a host name"},
    {"host with blank", false, "mail example.com", "white space"},
    {"host leading dot", false, ".example.com", "not a valid host name"},
    {"host empty label", false, "a..example.com", "not a valid host name"},
    {"client regex with blank", false, "/a b/", "cannot contain white space"},
    {"client bad regex", false, "/(unclosed/", "bad regex"},
    {"recipient with blank", true, "a b@example.com", "white space"},
    {"recipient regex unclosed", true, "/^abuse@", "without its closing"},
    {"recipient bad regex", true, "/[z-a]/", "bad regex"},
    {"recipient at alone", true, "@", "no address"},
};

static void test_bad_case(void **state)
{
	const struct bad_case *c = *state;
	greywl *wl = greywl_new();
	char text[256], err[512] = "";
	int rc;

	assert_non_null(wl);
	/* Two good lines first: the message must name line 3. */
	snprintf(text, sizeof(text), "# comment\n%s\n%s\nexample.org\n",
	         c->recipients ? "abuse@" : "example.com", c->line);
	rc = c->recipients ? greywl_load_recipients(wl, text, strlen(text), "f", err, sizeof(err))
	                   : greywl_load_clients(wl, text, strlen(text), "f", err, sizeof(err));
	assert_int_equal(rc, -1);
	if (strncmp(err, "f:3: ", 5) != 0 || strstr(err, c->message) == NULL)
		fail_msg("err is '%s', expected 'f:3: ...%s...'", err, c->message);
	greywl_free(wl);
}

static void test_single_entries(void **state)
{
	greywl *wl = greywl_new();
	char err[512] = "", why[GREYWL_WHY_MAX] = "";

	(void)state;
	assert_non_null(wl);
	assert_int_equal(
	    greywl_add_client(wl, " 192.0.2.0/24 ", "greylist.whitelist_clients[0]", err, sizeof(err)), 0);
	assert_int_equal(
	    greywl_add_recipient(wl, "abuse@", "greylist.whitelist_recipients[0]", err, sizeof(err)), 0);
	assert_int_equal(greywl_add_client(wl, "", "greylist.whitelist_clients[1]", err, sizeof(err)), -1);
	assert_string_equal(err, "greylist.whitelist_clients[1]: empty entry");
	assert_int_equal(
	    greywl_add_client(wl, "1.2.3.4/40", "greylist.whitelist_clients[2]", err, sizeof(err)), -1);
	assert_non_null(strstr(err, "greylist.whitelist_clients[2]: '1.2.3.4/40'"));
	assert_int_equal(greywl_client_count(wl), 1);
	assert_int_equal(greywl_recipient_count(wl), 1);
	assert_true(greywl_match_client(wl, "192.0.2.200", NULL, why, sizeof(why)));
	assert_string_equal(why, "greylist.whitelist_clients[0]: 192.0.2.0/24");
	assert_true(greywl_match_recipient(wl, "abuse@example.com", why, sizeof(why)));
	assert_string_equal(why, "greylist.whitelist_recipients[0]: abuse@");
	greywl_free(wl);
}

/* A buffer need not end in a newline nor in a NUL; a NUL inside a line is an error. */
static void test_buffer_edges(void **state)
{
	greywl *wl = greywl_new();
	char err[512] = "";
	static const char text[] = "example.com\nexample.org";
	static const char nul[] = "example.com\nexa\0mple.org\n";

	(void)state;
	assert_int_equal(greywl_load_clients(wl, text, strlen(text) - 2, "f", err, sizeof(err)), 0);
	assert_true(greywl_match_client(wl, NULL, "example.o", NULL, 0));
	assert_false(greywl_match_client(wl, NULL, "example.org", NULL, 0));
	assert_int_equal(greywl_load_clients(wl, nul, sizeof(nul) - 1, "f", err, sizeof(err)), -1);
	assert_string_equal(err, "f:2: contains a NUL byte");
	assert_int_equal(greywl_load_clients(wl, "", 0, "empty", err, sizeof(err)), 0);
	greywl_free(wl);
	greywl_free(NULL);
	assert_false(greywl_match_client(NULL, "192.0.2.1", "x", NULL, 0));
	assert_false(greywl_match_recipient(NULL, "x@y", NULL, 0));
}

static char *read_data(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;

	if (f == NULL)
		fail_msg("cannot open %s", path);
	buf = malloc(1 << 20);
	assert_non_null(buf);
	*len = fread(buf, 1, 1 << 20, f);
	fclose(f);
	return buf;
}

/* Debian's postgrey 1.37 whitelist_clients and whitelist_recipients, unchanged. */
static void test_debian_files(void **state)
{
	greywl *wl = greywl_new();
	char err[512] = "", why[GREYWL_WHY_MAX] = "";
	size_t len;
	char *text;

	(void)state;
	text = read_data("../data/postgrey/whitelist_clients", &len);
	if (greywl_load_clients(wl, text, len, "whitelist_clients", err, sizeof(err)) != 0)
		fail_msg("%s", err);
	free(text);
	text = read_data("../data/postgrey/whitelist_recipients", &len);
	if (greywl_load_recipients(wl, text, len, "whitelist_recipients", err, sizeof(err)) != 0)
		fail_msg("%s", err);
	free(text);
	assert_int_equal(greywl_client_count(wl), 164); /* every entry line */
	assert_int_equal(greywl_recipient_count(wl), 2);

	assert_true(greywl_match_client(wl, "192.0.2.1", "bendel.debian.org", why, sizeof(why)));
	assert_string_equal(why, "whitelist_clients:12: debian.org");
	assert_false(greywl_match_client(wl, "192.0.2.1", "notdebian.org", NULL, 0));
	assert_false(greywl_match_client(wl, "192.0.2.1", "debian.org.evil.test", NULL, 0));
	assert_true(greywl_match_client(wl, "192.0.2.1", "mail42.telekom.de", why, sizeof(why)));
	assert_string_equal(why, "whitelist_clients:58: /^mail\\d+\\.telekom\\.de$/");
	assert_false(greywl_match_client(wl, "192.0.2.1", "mail42.telekom.de.evil.test", NULL, 0));
	assert_false(greywl_match_client(wl, "192.0.2.1", "mailx.telekom.de", NULL, 0));
	assert_true(greywl_match_client(wl, "66.216.126.174", "unknown", NULL, 0));
	assert_false(greywl_match_client(wl, "66.216.126.175", "unknown", NULL, 0));
	assert_true(greywl_match_client(wl, "195.235.39.250", NULL, why, sizeof(why)));
	assert_string_equal(why, "whitelist_clients:107: 195.235.39");
	assert_false(greywl_match_client(wl, "195.235.40.1", NULL, NULL, 0));
	assert_true(greywl_match_client(wl, "51.4.72.9", NULL, NULL, 0));
	assert_true(greywl_match_client(wl, "2a01:4180:4051:800::25", NULL, NULL, 0));
	assert_false(greywl_match_client(wl, "2a01:4180:4051:801::25", NULL, NULL, 0));

	assert_true(greywl_match_recipient(wl, "postmaster@example.com", NULL, 0));
	assert_true(greywl_match_recipient(wl, "abuse+spam@example.com", NULL, 0));
	assert_false(greywl_match_recipient(wl, "webmaster@example.com", NULL, 0));
	greywl_free(wl);
}

int main(void)
{
	int failed = 0;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_single_entries),
	    cmocka_unit_test(test_buffer_edges),
	    cmocka_unit_test(test_debian_files),
	};

	memset(long_name, 'a', sizeof(long_name) - 1);
	memcpy(long_name + sizeof(long_name) - 1 - strlen(".google.com"), ".google.com",
	       strlen(".google.com"));
	RUN_TABLE("greywl_client", client_cases, test_client_case, failed);
	RUN_TABLE("greywl_recipient", recipient_cases, test_recipient_case, failed);
	RUN_TABLE("greywl_bad_line", bad_cases, test_bad_case, failed);
	failed += cmocka_run_group_tests_name("greywl", tests, NULL, NULL);
	return failed != 0;
}
