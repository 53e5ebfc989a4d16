/*
 * Unit tests of config.c: defaults, the shipped file, every kind of bad
 * value with the FILE:LINE:COLUMN: key it must name, overrides, trap and
 * whitelist files, and the store_config helpers config links. Table-driven:
 * one named row per case. Files are written to /tmp with mkstemp/mkdtemp.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>

#include "config.h"

/* The test runs in tests/unit (see tests/CMakeLists.txt). */
#define SHIPPED_CONFIG "../../conf/spamtrapd.json"
#define ERRMAX 8192

#define DEFAULT_REJECT "550 5.7.1 Sender is blocklisted after mail to a spamtrap"

/* ---- helpers ---- */

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

/* Writes json to a new file under /tmp; path gets its name. */
static void write_temp(char *path, size_t pathlen, const char *json)
{
	int fd;

	snprintf(path, pathlen, "/tmp/test_config_XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	write_file(path, json);
}

static config *load_text(const char *json, const char *const *ov, size_t nov, char *path, size_t pathlen,
                         char *err)
{
	config *cfg;

	write_temp(path, pathlen, json);
	err[0] = '\0';
	cfg = config_load(path, ov, nov, err, ERRMAX);
	unlink(path);
	return cfg;
}

static size_t count_lines(const char *s)
{
	size_t n = s[0] != '\0';

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static size_t count_overrides(const char *const *ov, size_t max)
{
	size_t n = 0;

	while (n < max && ov[n] != NULL)
		n++;
	return n;
}

static bool is_trap(const config *cfg, const char *rcpt)
{
	return trapset_match(cfg->decide.traps, rcpt, NULL, 0);
}

static bool allowed(const config *cfg, const char *ip)
{
	addr_ip a;

	assert_true(addr_ip_parse(ip, &a));
	return netset_contains(cfg->policy.allow, &a);
}

/* ---- configs that load ---- */

typedef struct ok_case {
	const char *name;
	const char *json;
	const char *overrides[4];
	void (*check)(const config *cfg);
} ok_case;

static void check_metrics(const config *cfg)
{
	addr_ip a;

	assert_string_equal(cfg->metrics.listen, "[::1]:9150");
	assert_int_equal(netset_count(cfg->metrics.allow), 1);
	assert_true(addr_ip_parse("192.0.2.7", &a));
	assert_true(netset_contains(cfg->metrics.allow, &a));
	assert_true(addr_ip_parse("127.0.0.1", &a));
	assert_false(netset_contains(cfg->metrics.allow, &a)); /* the list replaces the default */
	assert_int_equal(cfg->metrics.entries_refresh, 60);    /* the default: a minute */
}

static void check_defaults(const config *cfg)
{
	assert_null(cfg->user);
	assert_false(cfg->decide.dry_run);
	assert_null(cfg->milter.listen);
	assert_null(cfg->milter.socket_owner);
	assert_null(cfg->milter.socket_group);
	assert_int_equal(cfg->milter.socket_mode, 0);
	assert_int_equal(cfg->milter.timeout, 7210);

	assert_int_equal(cfg->policy.nlisten, 2);
	assert_string_equal(cfg->policy.listen[0].address, "127.0.0.1:10666");
	assert_int_equal(cfg->policy.listen[0].role, POLICY_ROLE_TRAP);
	assert_string_equal(cfg->policy.listen[1].address, "127.0.0.1:10667");
	assert_int_equal(cfg->policy.listen[1].role, POLICY_ROLE_SENDER);
	assert_int_equal(netset_count(cfg->policy.allow), 2);
	assert_true(allowed(cfg, "127.0.0.2"));
	assert_true(allowed(cfg, "::1"));
	assert_false(allowed(cfg, "192.0.2.1"));
	assert_null(cfg->metrics.listen); /* off unless asked for */
	assert_int_equal(netset_count(cfg->metrics.allow), 2);
	assert_int_equal(cfg->policy.max_connections, 1000);
	assert_int_equal(cfg->policy.idle_timeout, 330);
	assert_int_equal(cfg->policy.max_line, 4096);
	assert_int_equal(cfg->policy.max_attributes, 64);
	assert_int_equal(cfg->policy.threads, 0);
	assert_null(cfg->policy.socket_owner);
	assert_null(cfg->policy.socket_group);
	assert_int_equal(cfg->policy.socket_mode, 0660);

	assert_int_equal(cfg->store.backend, STORE_BACKEND_SQLITE);
	assert_string_equal(cfg->store.sqlite_path, "/var/lib/spamtrapd/spamtrapd.db");
	assert_string_equal(cfg->store.redis_host, "127.0.0.1");
	assert_int_equal(cfg->store.redis_port, 6379);
	assert_null(cfg->store.redis_socket);
	assert_int_equal(cfg->store.redis_db, 0);
	assert_null(cfg->store.redis_password);
	assert_string_equal(cfg->store.redis_prefix, "spamtrapd:");
	assert_int_equal(cfg->store.redis_connect_timeout_ms, 1000);
	assert_int_equal(cfg->store.redis_command_timeout_ms, 500);
	assert_null(cfg->store.redis_sentinels);
	assert_int_equal(cfg->store.redis_nsentinels, 0);
	assert_string_equal(cfg->store.redis_sentinel_master, "mymaster");
	assert_false(cfg->decide.on_error_tempfail);
	assert_int_equal(cfg->purge_interval, 600);

	assert_non_null(cfg->decide.traps);
	assert_int_equal(trapset_count(cfg->decide.traps), 0);
	assert_string_equal(cfg->recipient_delimiter, "+");
	assert_int_equal(cfg->decide.action, TRAP_ACTION_DISCARD);
	assert_int_equal(cfg->decide.on_mixed, ON_MIXED_DELIVER_OTHERS);
	assert_int_equal(cfg->decide.null_sender, NULL_SENDER_IGNORE);

	assert_int_equal(cfg->decide.keys, DECIDE_KEY_SENDER | DECIDE_KEY_CLIENT_ADDRESS);
	assert_int_equal(cfg->decide.ttl, 86400);
	assert_int_equal(cfg->decide.ipv4_prefix, 32);
	assert_int_equal(cfg->decide.ipv6_prefix, 64);
	assert_int_equal(cfg->decide.domain_min_networks, 3);
	assert_string_equal(cfg->decide.reject.code, "550");
	assert_string_equal(cfg->decide.reject.xcode, "5.7.1");
	assert_string_equal(cfg->decide.reject.text, "Sender is blocklisted after mail to a spamtrap");

	assert_non_null(cfg->decide.whitelist);
	assert_int_equal(whitelist_check(cfg->decide.whitelist, "a@example.org", "192.0.2.1"),
	                 WHITELIST_NONE);

	assert_int_equal(cfg->log.target, LOG_TARGET_SYSLOG);
	assert_int_equal(cfg->log.facility, LOG_MAIL);
	assert_int_equal(cfg->log.level, LOG_INFO);
}

/* The SPEC.md example, every key written out. */
static const char spec_example[] =
    "{\n"
    "  \"mode\": \"dry-run\",\n"
    "  \"milter\": { \"listen\": \"inet:8890@127.0.0.1\" },\n"
    "  \"policy\": {\n"
    "    \"listen\": [\n"
    "      { \"address\": \"127.0.0.1:10666\", \"role\": \"trap\" },\n"
    "      { \"address\": \"127.0.0.1:10667\", \"role\": \"sender\" }\n"
    "    ],\n"
    "    \"allow\": [\"127.0.0.0/8\", \"::1\"]\n"
    "  },\n"
    "  \"store\": {\n"
    "    \"backend\": \"redis\",\n"
    "    \"sqlite\": { \"path\": \"/var/lib/spamtrapd/spamtrapd.db\" },\n"
    "    \"redis\": { \"host\": \"10.0.0.5\", \"port\": 6380, \"db\": 2, "
    "\"prefix\": \"st:\" },\n"
    "    \"on_error\": \"tempfail\"\n"
    "  },\n"
    "  \"traps\": {\n"
    "    \"addresses\": [\"trap@example.com\"],\n"
    "    \"domains\": [\"trap.example.net\"],\n"
    "    \"patterns\": [\"^spam(master|trap)?@\"],\n"
    "    \"files\": [],\n"
    "    \"recipient_delimiter\": \"+-\",\n"
    "    \"action\": \"reject\",\n"
    "    \"on_mixed\": \"discard-all\",\n"
    "    \"null_sender\": \"client\"\n"
    "  },\n"
    "  \"blocklist\": {\n"
    "    \"keys\": [\"sender\", \"client_address\", \"sasl_username\", "
    "\"sender_domain\", \"helo_name\"],\n"
    "    \"ttl\": \"7d\",\n"
    "    \"ipv4_prefix\": 24,\n"
    "    \"ipv6_prefix\": 48,\n"
    "    \"reject\": \"554 5.7.1 Go away\"\n"
    "  },\n"
    "  \"whitelist\": {\n"
    "    \"domains\": [\"example.org\"],\n"
    "    \"include_subdomains\": true,\n"
    "    \"addresses\": [\"boss@example.net\"],\n"
    "    \"networks\": [\"198.51.100.0/24\"],\n"
    "    \"files\": []\n"
    "  },\n"
    "  \"log\": { \"target\": \"stderr\", \"facility\": \"local3\", \"level\": \"debug\" }\n"
    "}\n";

static void check_spec_example(const config *cfg)
{
	assert_true(cfg->decide.dry_run);
	assert_string_equal(cfg->milter.listen, "inet:8890@127.0.0.1");
	assert_null(cfg->metrics.listen); /* the package ships the metrics listener off */
	assert_int_equal(cfg->store.backend, STORE_BACKEND_REDIS);
	assert_string_equal(cfg->store.redis_host, "10.0.0.5");
	assert_int_equal(cfg->store.redis_port, 6380);
	assert_int_equal(cfg->store.redis_db, 2);
	assert_string_equal(cfg->store.redis_prefix, "st:");
	assert_true(cfg->decide.on_error_tempfail);
	assert_int_equal(trapset_count(cfg->decide.traps), 3);
	assert_true(is_trap(cfg, "<Trap+tag@Example.COM>"));
	assert_true(is_trap(cfg, "trap-tag@example.com"));
	assert_true(is_trap(cfg, "anyone@trap.example.net"));
	assert_true(is_trap(cfg, "spammaster@example.org"));
	assert_false(is_trap(cfg, "postmaster@example.com"));
	assert_string_equal(cfg->recipient_delimiter, "+-");
	assert_int_equal(cfg->decide.action, TRAP_ACTION_REJECT);
	assert_int_equal(cfg->decide.on_mixed, ON_MIXED_DISCARD_ALL);
	assert_int_equal(cfg->decide.null_sender, NULL_SENDER_CLIENT);
	assert_int_equal(cfg->decide.keys, DECIDE_KEY_SENDER | DECIDE_KEY_CLIENT_ADDRESS |
	                                       DECIDE_KEY_SASL_USERNAME | DECIDE_KEY_SENDER_DOMAIN |
	                                       DECIDE_KEY_HELO_NAME);
	assert_int_equal(cfg->decide.ttl, 7 * 86400);
	assert_int_equal(cfg->decide.ipv4_prefix, 24);
	assert_int_equal(cfg->decide.ipv6_prefix, 48);
	assert_string_equal(cfg->decide.reject.code, "554");
	assert_string_equal(cfg->decide.reject.text, "Go away");
	assert_int_equal(whitelist_check(cfg->decide.whitelist, "x@mail.example.org", NULL),
	                 WHITELIST_SENDER_DOMAIN);
	assert_int_equal(whitelist_check(cfg->decide.whitelist, "boss@example.net", NULL),
	                 WHITELIST_SENDER_ADDRESS);
	assert_int_equal(whitelist_check(cfg->decide.whitelist, "x@example.net", "198.51.100.9"),
	                 WHITELIST_CLIENT_NETWORK);
	assert_int_equal(cfg->log.target, LOG_TARGET_STDERR);
	assert_int_equal(cfg->log.facility, LOG_LOCAL3);
	assert_int_equal(cfg->log.level, LOG_DEBUG);
}

static void check_ttl_7d(const config *cfg)
{
	assert_int_equal(cfg->decide.ttl, 7 * 86400);
}

static void check_ttl_15m(const config *cfg)
{
	assert_int_equal(cfg->decide.ttl, 15 * 60);
}

static void check_ttl_3600(const config *cfg)
{
	assert_int_equal(cfg->decide.ttl, 3600);
}

static void check_ttl_30(const config *cfg)
{
	assert_int_equal(cfg->decide.ttl, 30);
}

static void check_durations(const config *cfg)
{
	assert_int_equal(cfg->milter.timeout, 120);
	assert_int_equal(cfg->policy.idle_timeout, 7200);
	assert_int_equal(cfg->purge_interval, 86400);
}

static void check_listeners(const config *cfg)
{
	assert_int_equal(cfg->policy.nlisten, 3);
	assert_string_equal(cfg->policy.listen[0].address, "[::1]:10666");
	assert_int_equal(cfg->policy.listen[0].role, POLICY_ROLE_FULL);
	assert_string_equal(cfg->policy.listen[1].address, "unix:/run/spamtrapd/policy.sock");
	assert_int_equal(cfg->policy.listen[1].role, POLICY_ROLE_SENDER);
	assert_string_equal(cfg->policy.listen[2].address, "0.0.0.0:10667");
	assert_int_equal(cfg->policy.listen[2].role, POLICY_ROLE_TRAP);
	assert_string_equal(policy_role_name(cfg->policy.listen[0].role), "full");
}

static void check_no_listeners(const config *cfg)
{
	assert_int_equal(cfg->policy.nlisten, 0);
}

static void check_policy_socket(const config *cfg)
{
	assert_string_equal(cfg->policy.socket_owner, "spamtrapd");
	assert_string_equal(cfg->policy.socket_group, "postfix");
	assert_int_equal(cfg->policy.socket_mode, 0620);
	/* the milter's settings are its own */
	assert_null(cfg->milter.socket_group);
	assert_int_equal(cfg->milter.socket_mode, 0);
}

static void check_policy_socket_mode_null(const config *cfg)
{
	assert_int_equal(cfg->policy.socket_mode, 0);
	assert_null(cfg->policy.socket_group);
}

static void check_milter(const config *cfg)
{
	assert_string_equal(cfg->milter.listen, "unix:/run/spamtrapd/milter.sock");
	assert_string_equal(cfg->milter.socket_owner, "postfix");
	assert_string_equal(cfg->milter.socket_group, "mail");
	assert_int_equal(cfg->milter.socket_mode, 0660);
	assert_string_equal(cfg->user, "spamtrapd");
}

static void check_allow(const config *cfg)
{
	assert_int_equal(netset_count(cfg->policy.allow), 2);
	assert_true(allowed(cfg, "10.1.2.3"));
	assert_true(allowed(cfg, "2001:db8::5"));
	assert_false(allowed(cfg, "127.0.0.1"));
}

static void check_overrides(const config *cfg)
{
	assert_true(cfg->decide.dry_run);
	assert_int_equal(cfg->store.redis_port, 6380);
	assert_string_equal(cfg->store.redis_password, "12345");
	assert_string_equal(cfg->store.sqlite_path, "var/spamtrapd.db");
	/* the file's other traps keys stay */
	assert_int_equal(cfg->decide.action, TRAP_ACTION_REJECT);
}

static void check_sentinels(const config *cfg)
{
	assert_int_equal(cfg->store.redis_nsentinels, 3);
	assert_string_equal(cfg->store.redis_sentinels[0], "10.0.0.1:26379");
	assert_string_equal(cfg->store.redis_sentinels[1], "[2001:db8::1]:26379");
	assert_string_equal(cfg->store.redis_sentinels[2], "sentinel-3.example:26380");
	assert_string_equal(cfg->store.redis_sentinel_master, "mx-blocklist");
}

static void check_sentinel_override(const config *cfg)
{
	assert_int_equal(cfg->store.redis_nsentinels, 1);
	assert_string_equal(cfg->store.redis_sentinels[0], "127.0.0.1:26379");
	assert_string_equal(cfg->store.redis_sentinel_master, "mymaster");
}

static void check_dns_default(const config *cfg)
{
	assert_int_equal(cfg->dns.nforwarders, 0);
	assert_int_equal(cfg->dns.timeout, 3);
	assert_int_equal(cfg->dns.max_inflight, 1000);
	assert_int_equal(cfg->dns.cache_size, 8);
}

static void check_dns(const config *cfg)
{
	assert_int_equal(cfg->dns.nforwarders, 3);
	assert_string_equal(cfg->dns.forwarders[0], "127.0.0.1@5353");
	assert_string_equal(cfg->dns.forwarders[1], "::1");
	assert_string_equal(cfg->dns.forwarders[2], "2001:db8::53@53");
	assert_int_equal(cfg->dns.timeout, 5);
	assert_int_equal(cfg->dns.max_inflight, 50);
	assert_int_equal(cfg->dns.cache_size, 2);
}

static void check_domain_min_1(const config *cfg)
{
	assert_int_equal(cfg->decide.domain_min_networks, 1);
}

/* exports: /tmp exists on every machine the tests run on. */
static void check_exports(const config *cfg)
{
	assert_int_equal(cfg->nexports, 2);
	assert_int_equal(cfg->exports[0].format, EXPORT_NFT);
	assert_string_equal(cfg->exports[0].path, "/tmp/bl.nft");
	assert_int_equal(cfg->exports[0].interval, 10);
	assert_int_equal(cfg->exports[0].keys, EXPORT_KEY_CLIENT);
	assert_int_equal(cfg->exports[1].format, EXPORT_RBLDNSD);
	assert_int_equal(cfg->exports[1].interval, 60);
	assert_int_equal(cfg->exports[1].keys, EXPORT_KEY_CLIENT | EXPORT_KEY_DOMAIN);
}

static void check_no_exports(const config *cfg)
{
	assert_int_equal(cfg->nexports, 0);
	assert_null(cfg->exports);
}

/* A firewall loading the exports of a daemon that only logs would block for real. */
static void check_exports_dry_run_warns(const config *cfg)
{
	bool warned = false;

	for (size_t i = 0; i < cfg->nwarnings; i++)
		warned |= strstr(cfg->warnings[i], "exports are written while mode is dry-run") != NULL;
	assert_true(warned);
}

static void check_domain_min_1000(const config *cfg)
{
	assert_int_equal(cfg->decide.domain_min_networks, 1000);
}

static void check_override_list(const config *cfg)
{
	assert_true(is_trap(cfg, "a@trap.example"));
	assert_false(is_trap(cfg, "trap@example.com"));
	assert_null(cfg->user);
}

static const ok_case ok_cases[] = {
    {"empty object gives every default", "{}", {NULL}, check_defaults},
    {"SPEC example with every key", spec_example, {NULL}, check_spec_example},
    {"ttl in days", "{\"blocklist\": {\"ttl\": \"7d\"}}", {NULL}, check_ttl_7d},
    {"ttl in minutes", "{\"blocklist\": {\"ttl\": \"15m\"}}", {NULL}, check_ttl_15m},
    {"ttl as integer seconds", "{\"blocklist\": {\"ttl\": 3600}}", {NULL}, check_ttl_3600},
    {"ttl as plain string seconds", "{\"blocklist\": {\"ttl\": \"30\"}}", {NULL}, check_ttl_30},
    {"other durations",
     "{\"milter\": {\"timeout\": \"2m\"}, \"policy\": {\"idle_timeout\": \"2h\"}, "
     "\"store\": {\"purge_interval\": \"1d\"}}",
     {NULL},
     check_durations},
    {"listeners: IPv6, unix, role defaults to full",
     "{\"policy\": {\"listen\": [{\"address\": \"[::1]:10666\"}, "
     "{\"address\": \"unix:/run/spamtrapd/policy.sock\", \"role\": \"sender\"}, "
     "{\"role\": \"trap\", \"address\": \"0.0.0.0:10667\"}]}}",
     {NULL},
     check_listeners},
    {"no listeners: empty list", "{\"policy\": {\"listen\": []}}", {NULL}, check_no_listeners},
    {"no listeners: null", "{\"policy\": {\"listen\": null}}", {NULL}, check_no_listeners},
    {"milter socket settings and user",
     "{\"user\": \"spamtrapd\", \"milter\": {\"listen\": \"unix:/run/spamtrapd/milter.sock\", "
     "\"socket_owner\": \"postfix\", \"socket_group\": \"mail\", \"socket_mode\": \"0660\"}}",
     {NULL},
     check_milter},
    {"policy socket settings",
     "{\"policy\": {\"listen\": [{\"address\": \"unix:/run/spamtrapd/policy.sock\"}], "
     "\"socket_owner\": \"spamtrapd\", \"socket_group\": \"postfix\", \"socket_mode\": \"620\"}}",
     {NULL},
     check_policy_socket},
    {"policy socket mode null: as created", "{}", {"policy.socket_mode=null"}, check_policy_socket_mode_null},
    {"policy.allow replaces the default",
     "{\"policy\": {\"allow\": [\"10.0.0.0/8\", \"2001:db8::/32\"]}}",
     {NULL},
     check_allow},
    {"metrics listener and allow",
     "{\"metrics\": {\"listen\": \"[::1]:9150\", \"allow\": [\"192.0.2.0/24\"]}}",
     {NULL},
     check_metrics},
    {"metrics listener beside listeners on other addresses of its port",
     "{\"metrics\": {\"listen\": \"[::1]:9150\", \"allow\": [\"192.0.2.0/24\"]},\n"
     " \"policy\": {\"listen\": [{\"address\": \"127.0.0.1:9150\"}, {\"address\": \"[::2]:9150\"},\n"
     " {\"address\": \"unix:/run/p.sock\"}]}, \"milter\": {\"listen\": \"inet:9150@127.0.0.2\"}}",
     {NULL},
     check_metrics},
    {"overrides: enum, integer, number kept as string, new section",
     "{\"traps\": {\"action\": \"reject\"}}",
     {"mode=dry-run", "store.redis.port=6380", "store.redis.password=12345",
      "store.sqlite.path=var/spamtrapd.db"},
     check_overrides},
    {"redis sentinels and master name",
     "{\"store\": {\"backend\": \"redis\", \"redis\": {\"sentinels\": [\"10.0.0.1:26379\", "
     "\"[2001:db8::1]:26379\", \"sentinel-3.example:26380\"], \"sentinel_master\": \"mx-blocklist\"}}}",
     {NULL},
     check_sentinels},
    {"dns: defaults", "{}", {NULL}, check_dns_default},
    {"dns: forwarders and bounds",
     "{\"dns\": {\"forwarders\": [\"127.0.0.1@5353\", \"::1\", \"2001:db8::53@53\"], \"timeout\": \"5s\", "
     "\"max_inflight\": 50, \"cache_size\": 2}}",
     {NULL},
     check_dns},
    {"redis sentinels as an override",
     "{}",
     {"store.redis.sentinels=[\"127.0.0.1:26379\"]"},
     check_sentinel_override},
    {"sender domain listed at the first hit",
     "{\"blocklist\": {\"sender_domain_min_networks\": 1}}",
     {NULL},
     check_domain_min_1},
    {"sender domain after 1000 networks",
     "{}",
     {"blocklist.sender_domain_min_networks=1000"},
     check_domain_min_1000},
    {"exports: defaults and keys",
     "{\"exports\": [{\"format\": \"nft\", \"path\": \"/tmp/bl.nft\"}, {\"format\": \"rbldnsd\", "
     "\"path\": \"/tmp/bl.rbl\", \"interval\": \"1m\", \"keys\": [\"client\", \"domain\"]}]}",
     {NULL},
     check_exports},
    {"exports: none by default", "{}", {NULL}, check_no_exports},
    {"exports: dry-run warns",
     "{\"mode\": \"dry-run\", \"exports\": [{\"format\": \"nft\", \"path\": \"/tmp/bl.nft\"}]}",
     {NULL},
     check_exports_dry_run_warns},
    {"overrides: a list as JSON, null",
     "{\"user\": \"nobody\", \"traps\": {\"addresses\": [\"trap@example.com\"]}}",
     {"traps.addresses=[\"a@trap.example\"]", "user=null"},
     check_override_list},
};

static void test_ok_table(void **state)
{
	char path[64], err[ERRMAX];

	(void)state;
	for (size_t i = 0; i < sizeof ok_cases / sizeof ok_cases[0]; i++) {
		const ok_case *c = &ok_cases[i];
		config *cfg = load_text(c->json, c->overrides, count_overrides(c->overrides, 4), path,
		                        sizeof path, err);

		print_message("case: %s\n", c->name);
		if (cfg == NULL)
			print_error("unexpected errors:\n%s\n", err);
		assert_non_null(cfg);
		assert_string_equal(cfg->path, path);
		c->check(cfg);
		config_unref(cfg);
	}
}

static void test_shipped_config(void **state)
{
	char err[ERRMAX] = "";
	config *cfg = config_load(SHIPPED_CONFIG, NULL, 0, err, sizeof err);

	(void)state;
	if (cfg == NULL)
		print_error("%s\n", err);
	assert_non_null(cfg);
	assert_false(cfg->decide.dry_run);
	assert_string_equal(cfg->milter.listen, "inet:8890@127.0.0.1");
	assert_int_equal(cfg->policy.nlisten, 2);
	assert_int_equal(cfg->store.backend, STORE_BACKEND_SQLITE);
	assert_true(is_trap(cfg, "trap@example.com"));
	assert_int_equal(cfg->decide.ttl, 86400);
	config_unref(cfg);
}

/* ---- configs that must fail, and what the message must say ---- */

typedef struct error_case {
	const char *name;
	const char *json;
	const char *overrides[3];
	/* Substrings of the error text; one starting with ':' must follow the file name. */
	const char *expect[4];
	size_t nlines; /* error lines expected */
} error_case;

static const error_case error_cases[] = {
    {"unknown top-level key",
     "{\n  \"mdoe\": \"enforce\"\n}",
     {NULL},
     {":2:3: mdoe: unknown key (did you mean mode?)"},
     1},
    {"unknown nested key",
     "{\n  \"traps\": {\n    \"adresses\": []\n  }\n}",
     {NULL},
     {":3:5: traps.adresses: unknown key (did you mean traps.addresses?)"},
     1},
    {"unknown key in a listener",
     "{\"policy\": {\"listen\": [{\"address\": \"127.0.0.1:1\", \"rol\": \"trap\"}]}}",
     {NULL},
     {":1:51: policy.listen[0].rol: unknown key"},
     1},
    {"dotted key is not a path",
     "{\"traps.action\": \"reject\"}",
     {NULL},
     {":1:2: traps.action: unknown key"},
     1},
    {"section is not an object",
     "{\n  \"traps\": [\"a@b.example\"]\n}",
     {NULL},
     {":2:3: traps: expected an object"},
     1},
    {"top level is not an object", "[1, 2]", {NULL}, {": expected a JSON object"}, 1},
    {"string expected",
     "{\"store\": {\"sqlite\": {\"path\": 5}}}",
     {NULL},
     {":1:23: store.sqlite.path: expected a string"},
     1},
    {"empty string", "{\"user\": \"\"}", {NULL}, {":1:2: user: must not be empty"}, 1},
    {"integer expected",
     "{\n  \"store\": {\n    \"redis\": {\n      \"port\": \"6379\"\n    }\n  }\n}",
     {NULL},
     {":4:7: store.redis.port: expected an integer"},
     1},
    {"integer out of range",
     "{\"blocklist\": {\"ipv4_prefix\": 33, \"ipv6_prefix\": -1}}",
     {NULL},
     {":1:16: blocklist.ipv4_prefix: must be between 8 and 32",
      ":1:35: blocklist.ipv6_prefix: must be between 16 and 128"},
     2},
    {"prefix so short that one hit blocks the Internet",
     "{\"blocklist\": {\"ipv4_prefix\": 0, \"ipv6_prefix\": 15}}",
     {NULL},
     {":1:16: blocklist.ipv4_prefix: must be between 8 and 32",
      ":1:34: blocklist.ipv6_prefix: must be between 16 and 128"},
     2},
    {"sender_domain_min_networks is an integer",
     "{\"blocklist\": {\"sender_domain_min_networks\": \"3\"}}",
     {NULL},
     {":1:16: blocklist.sender_domain_min_networks: expected an integer"},
     1},
    {"sender_domain_min_networks out of range",
     "{\"blocklist\": {\"sender_domain_min_networks\": 0}}\n",
     {NULL},
     {":1:16: blocklist.sender_domain_min_networks: must be between 1 and 1000"},
     1},
    {"sender_domain_min_networks too large",
     "{\n  \"blocklist\": {\n    \"sender_domain_min_networks\": 1001\n  }\n}",
     {NULL},
     {":3:5: blocklist.sender_domain_min_networks: must be between 1 and 1000"},
     1},
    {"real is not an integer",
     "{\"policy\": {\"max_line\": 4096.0}}",
     {NULL},
     {"policy.max_line: expected an integer"},
     1},
    {"bool expected",
     "{\"whitelist\": {\"include_subdomains\": \"yes\"}}",
     {NULL},
     {":1:16: whitelist.include_subdomains: expected true or false"},
     1},
    {"list expected",
     "{\"traps\": {\"addresses\": \"trap@example.com\"}}",
     {NULL},
     {":1:12: traps.addresses: expected a list of strings"},
     1},
    {"list element not a string",
     "{\"traps\": {\"domains\": [\"a.example\",\n  7]}}",
     {NULL},
     {":2:3: traps.domains[1]: expected a string"},
     1},
    {"bad enum",
     "{\"traps\": {\"action\": \"drop\"}}",
     {NULL},
     {":1:12: traps.action: expected one of discard, reject, accept"},
     1},
    {"bad null_sender",
     "{\"traps\": {\"action\": \"reject\",\n  \"null_sender\": \"sender\"}}",
     {NULL},
     {":2:3: traps.null_sender: expected one of ignore, client"},
     1},
    {"bad mode", "{\"mode\": \"dryrun\"}", {NULL}, {"mode: expected one of enforce, dry-run"}, 1},
    {"bad duration unit",
     "{\"blocklist\": {\"ttl\": \"24x\"}}",
     {NULL},
     {":1:16: blocklist.ttl: expected a duration"},
     1},
    {"negative duration",
     "{\"blocklist\": {\"ttl\": -5}}",
     {NULL},
     {"blocklist.ttl: expected a duration"},
     1},
    {"zero ttl",
     "{\"blocklist\": {\"ttl\": \"0s\"}}",
     {NULL},
     {"blocklist.ttl: must be between 1s and 3650d"},
     1},
    {"bad listener address",
     "{\"policy\": {\"listen\": [{\"address\": \"localhost:10666\", \"role\": \"trap\"}]}}",
     {NULL},
     {":1:25: policy.listen[0].address: expected IPV4:PORT, [IPV6]:PORT or unix:PATH"},
     1},
    {"bad listener port",
     "{\"policy\": {\"listen\": [{\"address\": \"127.0.0.1:0\"}, {\"address\": \"[::1]:70000\"}]}}",
     {NULL},
     {"policy.listen[0].address: expected IPV4:PORT, [IPV6]:PORT or unix:PATH (port must be 1 to 65535)",
      "policy.listen[1].address: expected"},
     2},
    {"listener reasons from addr_hostport_parse",
     "{\"policy\": {\"listen\": [{\"address\": \"localhost:10666\"}, {\"address\": \"::1:10666\"}, "
     "{\"address\": \"[::1]\"}]}}",
     {NULL},
     {"policy.listen[0].address: expected IPV4:PORT, [IPV6]:PORT or unix:PATH ('localhost' is not an IPv4 "
      "address (host names are not accepted))",
      "policy.listen[1].address: expected IPV4:PORT, [IPV6]:PORT or unix:PATH (an IPv6 address goes in "
      "brackets",
      "policy.listen[2].address: expected IPV4:PORT, [IPV6]:PORT or unix:PATH (no :PORT)"},
     3},
    {"bad listener role",
     "{\"policy\": {\"listen\": [{\"address\": \"127.0.0.1:1\", \"role\": \"both\"}]}}",
     {NULL},
     {"policy.listen[0].role: expected one of trap, sender, full"},
     1},
    {"listener without address",
     "{\"policy\": {\"listen\": [{\"role\": \"trap\"}]}}",
     {NULL},
     {":1:24: policy.listen[0]: missing \"address\""},
     1},
    {"duplicate listener",
     "{\"policy\": {\"listen\": [\n  {\"address\": \"[::1]:10666\", \"role\": \"trap\"},\n"
     "  {\"address\": \"[0:0::1]:10666\", \"role\": \"sender\"}\n]}}",
     {NULL},
     {":3:3: policy.listen[1]: duplicate listener [0:0::1]:10666 (as policy.listen[0])"},
     1},
    {"duplicate listener: one port spelt two ways",
     "{\"policy\": {\"listen\": [{\"address\": \"127.0.0.1:8080\"}, {\"address\": \"127.0.0.1:08080\"}, "
     "{\"address\": \"[::ffff:127.0.0.1]:25\"}, {\"address\": \"[::ffff:7f00:1]:25\"}]}}",
     {NULL},
     {"policy.listen[1]: duplicate listener 127.0.0.1:08080 (as policy.listen[0])",
      "policy.listen[3]: duplicate listener [::ffff:7f00:1]:25 (as policy.listen[2])"},
     2},
    {"metrics.listen on a policy listener's unix path",
     "{\"policy\": {\"listen\": [{\"address\": \"127.0.0.1:10666\"}, {\"address\": "
     "\"unix:/run/spamtrapd/policy.sock\"}]},\n"
     " \"metrics\": {\"listen\": \"unix:/run/spamtrapd/policy.sock\"}}",
     {NULL},
     {":2:14: metrics.listen: unix:/run/spamtrapd/policy.sock is also policy.listen[1] "
      "(unix:/run/spamtrapd/policy.sock): the metrics listener needs an address of its own"},
     1},
    {"metrics.listen on a policy listener's port, spelt another way",
     "{\"policy\": {\"listen\": [{\"address\": \"127.0.0.1:9150\"}]}, \"metrics\": {\"listen\": "
     "\"127.0.0.1:09150\"}}",
     {NULL},
     {"metrics.listen: 127.0.0.1:09150 is also policy.listen[0]"},
     1},
    {"metrics.listen on the milter's unix path",
     "{\"milter\": {\"listen\": \"local:/run/m.sock\"}, \"metrics\": {\"listen\": \"unix:/run/m.sock\"}}",
     {NULL},
     {"metrics.listen: unix:/run/m.sock is also milter.listen (local:/run/m.sock)"},
     1},
    {"metrics.listen on a policy listener's wildcard port",
     "{\"policy\": {\"listen\": [{\"address\": \"0.0.0.0:9150\"}]}, \"metrics\": {\"listen\": "
     "\"127.0.0.1:9150\"}}",
     {NULL},
     {"metrics.listen: 127.0.0.1:9150 is also policy.listen[0] (0.0.0.0:9150)"},
     1},
    {"metrics.listen on the milter's port",
     "{\"milter\": {\"listen\": \"inet:9150\"}, \"metrics\": {\"listen\": \"127.0.0.1:9150\"}}",
     {NULL},
     {"metrics.listen: 127.0.0.1:9150 is also milter.listen (inet:9150)"},
     1},
    {"bad network in allow",
     "{\"policy\": {\"allow\": [\"127.0.0.0/8\", \"10.0.0.0/33\"]}}",
     {NULL},
     {":1:38: policy.allow[1]: "},
     1},
    {"bad regex in traps.patterns",
     "{\"traps\": {\"patterns\": [\"(unclosed\"]}}",
     {NULL},
     {":1:25: traps.patterns[0]: bad trap pattern"},
     1},
    {"bad trap address",
     "{\"traps\": {\"addresses\": [\"not an address\"]}}",
     {NULL},
     {"traps.addresses[0]: 'not an address' is not a trap address"},
     1},
    {"missing trap file",
     "{\"traps\": {\"files\": [\"/nonexistent/traps.txt\"]}}",
     {NULL},
     {":1:22: traps.files[0]: cannot open /nonexistent/traps.txt: No such file"},
     1},
    {"blocklist.keys empty",
     "{\"blocklist\": {\"keys\": []}}",
     {NULL},
     {"blocklist.keys: must not be empty"},
     1},
    {"blocklist.keys unknown and twice",
     "{\"blocklist\": {\"keys\": [\"sender\", \"ip\", \"sender\"]}}",
     {NULL},
     {"blocklist.keys[1]: expected one of sender, client_address, sasl_username, sender_domain, helo_name",
      "blocklist.keys[2]: sender is listed twice"},
     2},
    {"reject is not an SMTP reply",
     "{\"blocklist\": {\"reject\": \"250 OK\"}}",
     {NULL},
     {"blocklist.reject: "},
     1},
    {"bad log names",
     "{\"log\": {\"facility\": \"kern\", \"level\": \"verbose\", \"target\": \"file\"}}",
     {NULL},
     {"log.facility: expected one of mail", "log.level: expected one of debug, info, notice, warning, err",
      "log.target: expected one of syslog, stderr"},
     3},
    {"bad milter socket spec",
     "{\"milter\": {\"listen\": \"inet:99999@127.0.0.1\"}}",
     {NULL},
     {"milter.listen: expected unix:PATH, inet:PORT@HOST or inet6:PORT@HOST"},
     1},
    {"bad metrics settings",
     "{\"metrics\": {\"listen\": \"localhost:9150\", \"allow\": [\"10.0.0.1/8\"]}}",
     {NULL},
     {"metrics.listen: expected IPV4:PORT, [IPV6]:PORT or unix:PATH", "metrics.allow[0]: "},
     2},
    {"bad socket mode",
     "{\"milter\": {\"socket_mode\": \"rw-rw----\"}}",
     {NULL},
     {"milter.socket_mode: expected an octal mode"},
     1},
    {"bad policy socket settings",
     "{\"policy\": {\"socket_mode\": \"0999\", \"socket_owner\": \"\", \"socket_group\": 5}}",
     {NULL},
     {"policy.socket_mode: expected an octal mode such as \"0660\"", "policy.socket_owner: must not be empty",
      "policy.socket_group: expected a string or null"},
     3},
    {"policy socket mode: not 0",
     "{\"policy\": {\"socket_mode\": \"000\"}}",
     {NULL},
     {"policy.socket_mode: expected an octal mode"},
     1},
    {"policy socket mode: not five digits",
     "{}",
     {"policy.socket_mode=06600"},
     {"policy.socket_mode: expected"},
     1},
    {"bad recipient delimiter",
     "{\"traps\": {\"recipient_delimiter\": \"@\"}}",
     {NULL},
     {"traps.recipient_delimiter: must not contain '@'"},
     1},
    {"redis sentinels: not HOST:PORT",
     "{\"store\": {\"redis\": {\"sentinels\": [\"10.0.0.1\", \"::1:26379\", \"h:0\", \"h:70000\", "
     "\"a b:1\", \":26379\", \"[]:1\", \"h:26379x\"]}}}",
     {NULL},
     {":1:36: store.redis.sentinels[0]: expected HOST:PORT or [IPV6]:PORT (port 1-65535)",
      "store.redis.sentinels[1]: expected", "store.redis.sentinels[7]: expected"},
     8},
    {"dns: forwarders not ADDR[@PORT], bounds",
     "{\"dns\": {\"forwarders\": [\"ns.example\", \"127.0.0.1@0\", \"127.0.0.1@\", \"127.0.0.1:53\"], "
     "\"timeout\": \"2m\", \"max_inflight\": 0, \"cache_size\": 2000}}",
     {NULL},
     {"dns.forwarders[0]: expected an IP address, optionally followed by @PORT",
      "dns.forwarders[1]: expected @PORT (1-65535)", "dns.forwarders[2]: expected @PORT",
      "dns.forwarders[3]: expected an IP address"},
     7},
    {"redis sentinels: listed twice, not a list, empty master",
     "{\"store\": {\"redis\": {\"sentinels\": [\"s1:26379\", \"s1:26379\"], \"sentinel_master\": \"\"}}}",
     {NULL},
     {"store.redis.sentinels[1]: s1:26379 is listed twice", "store.redis.sentinel_master: must not be empty"},
     2},
    {"redis sentinels: a string, not a list",
     "{\"store\": {\"redis\": {\"sentinels\": \"s1:26379\"}}}",
     {NULL},
     {"store.redis.sentinels: expected a list of strings"},
     1},
    {"syntax error with line and column", "{\n  \"mode\": \"enforce\"\n  \"log\": {}\n}", {NULL}, {":3:"}, 1},
    {"duplicate keys",
     "{\n  \"mode\": \"enforce\",\n  \"mode\": \"dry-run\"\n}",
     {NULL},
     {":3:", "duplicate object key"},
     1},
    {"multiple errors, sorted by position",
     "{\n  \"blocklist\": { \"ttl\": \"1y\" },\n  \"mode\": \"on\",\n  \"traps\": { \"bogus\": 1 }\n}",
     {NULL},
     {":2:18: blocklist.ttl: expected a duration", ":3:3: mode: expected one of",
      ":4:14: traps.bogus: unknown key"},
     3},
    {"override of an unknown key", "{}", {"traps.bogus=1"}, {"-o traps.bogus: unknown key"}, 1},
    {"override of a typo gets a hint",
     "{}",
     {"blocklist.tll=1h"},
     {"-o blocklist.tll: unknown key (did you mean blocklist.ttl?)"},
     1},
    {"override with a bad value",
     "{}",
     {"traps.action=drop", "policy.listen=[{\"address\": \"x\"}]"},
     {"-o traps.action: expected one of discard, reject, accept",
      "-o policy.listen: policy.listen[0].address: expected"},
     2},
    {"override without =", "{}", {"mode"}, {"-o mode: expected KEY=VALUE"}, 1},
    {"exports: bad path, format, keys, interval, duplicate",
     "{\"exports\": [\n"
     "{\"format\": \"nft\", \"path\": \"/nonexistent-dir/x.nft\"},\n"
     "{\"format\": \"postfix\", \"path\": \"relative\"},\n"
     "{\"format\": \"nft\", \"path\": \"/tmp/a.nft\", \"keys\": [\"sender\"]},\n"
     "{\"format\": \"iptables\", \"path\": \"/tmp/b\"},\n"
     "{\"format\": \"nft\", \"path\": \"/tmp/c\", \"interval\": \"2h\"},\n"
     "{\"format\": \"nft\", \"path\": \"/tmp/d\"}, {\"format\": \"pf\", \"path\": \"/tmp/d\"},\n"
     "{\"path\": \"/tmp/e\", \"what\": 1}]}",
     {NULL},
     {":2:19: exports[0].path: directory /nonexistent-dir: No such file or directory",
      ":3:23: exports[1].path: expected the absolute path of a file",
      ":4:1: exports[2]: format nft holds client keys only",
      "exports[6]: path /tmp/d is another export's too"},
     8},
};

static void check_error_text(const error_case *c, const char *path, const char *err)
{
	char want[512];

	for (size_t j = 0; j < 4 && c->expect[j] != NULL; j++) {
		if (c->expect[j][0] == ':')
			snprintf(want, sizeof want, "%s%s", path, c->expect[j]);
		else
			snprintf(want, sizeof want, "%s", c->expect[j]);
		if (strstr(err, want) == NULL)
			fail_msg("case \"%s\": \"%s\" not in:\n%s", c->name, want, err);
	}
	if (c->nlines != count_lines(err))
		fail_msg("case \"%s\": %zu error lines expected, got:\n%s", c->name, c->nlines, err);
}

static void test_error_table(void **state)
{
	char path[64], err[ERRMAX];

	(void)state;
	for (size_t i = 0; i < sizeof error_cases / sizeof error_cases[0]; i++) {
		const error_case *c = &error_cases[i];
		config *cfg = load_text(c->json, c->overrides, count_overrides(c->overrides, 3), path,
		                        sizeof path, err);

		print_message("case: %s\n", c->name);
		if (cfg != NULL)
			fail_msg("case \"%s\": loaded, expected an error", c->name);
		check_error_text(c, path, err);
	}
}

/* Errors are listed in order of position: line 2 before line 3. */
static void test_errors_sorted(void **state)
{
	char path[64], err[ERRMAX];
	config *cfg = load_text("{\n  \"zzz\": 1,\n  \"aaa\": 2\n}", NULL, 0, path, sizeof path, err);

	(void)state;
	assert_null(cfg);
	assert_non_null(strstr(err, "zzz"));
	assert_true(strstr(err, "zzz") < strstr(err, "aaa"));
}

static void test_missing_file(void **state)
{
	char err[ERRMAX];

	(void)state;
	assert_null(config_load("/nonexistent/spamtrapd.json", NULL, 0, err, sizeof err));
	assert_string_equal(err, "/nonexistent/spamtrapd.json: cannot open: No such file or directory");
}

/* A small err buffer is filled, not overrun, and still NUL-terminated. */
static void test_small_error_buffer(void **state)
{
	char path[64], err[16];

	(void)state;
	write_temp(path, sizeof path, "{\"a\": 1, \"b\": 2}");
	assert_null(config_load(path, NULL, 0, err, sizeof err));
	unlink(path);
	assert_true(strlen(err) < sizeof err);
	assert_null(config_load("/nonexistent", NULL, 0, NULL, 0));
}

/* Hundreds of bad entries give a bounded, readable list. */
static void test_error_cap(void **state)
{
	char path[64], err[ERRMAX * 2], json[8192] = "{\"traps\": {\"addresses\": [\"x\"";
	config *cfg;

	(void)state;
	for (int i = 0; i < 300; i++)
		strcat(json, ", \"x\"");
	strcat(json, "]}}");
	cfg = load_text(json, NULL, 0, path, sizeof path, err);
	assert_null(cfg);
	assert_non_null(strstr(err, "traps.addresses[49]: "));
	assert_null(strstr(err, "traps.addresses[50]: "));
	assert_non_null(strstr(err, "more errors not shown"));
	assert_int_equal(count_lines(err), 51);
}

/* A value quoted in a message cannot break the one-error-a-line format. */
static void test_error_one_line(void **state)
{
	char path[64], err[ERRMAX];
	config *cfg = load_text("{\"traps\": {\"addresses\": [\"a\\nb\"]}}", NULL, 0, path, sizeof path, err);

	(void)state;
	assert_null(cfg);
	assert_non_null(strstr(err, "traps.addresses[0]: "));
	assert_int_equal(count_lines(err), 1);
}

/* ---- trap and whitelist files ---- */

typedef struct list_dir {
	char dir[64], conf[96], traps[96], wl[96];
} list_dir;

static void list_dir_make(list_dir *d, const char *conf, const char *traps, const char *wl)
{
	snprintf(d->dir, sizeof d->dir, "/tmp/test_config_XXXXXX");
	assert_non_null(mkdtemp(d->dir));
	snprintf(d->conf, sizeof d->conf, "%s/spamtrapd.json", d->dir);
	snprintf(d->traps, sizeof d->traps, "%s/traps.txt", d->dir);
	snprintf(d->wl, sizeof d->wl, "%s/whitelist.txt", d->dir);
	write_file(d->conf, conf);
	write_file(d->traps, traps);
	write_file(d->wl, wl);
}

static void list_dir_remove(const list_dir *d)
{
	unlink(d->conf);
	unlink(d->traps);
	unlink(d->wl);
	rmdir(d->dir);
}

static const char list_conf[] = "{\n"
                                "  \"traps\": { \"files\": [\"traps.txt\"] },\n"
                                "  \"whitelist\": { \"files\": [\"whitelist.txt\"] }\n"
                                "}\n";

/* Relative list files are read from the config file's folder. */
static void test_list_files_relative(void **state)
{
	list_dir d;
	char err[ERRMAX];
	config *cfg;

	(void)state;
	list_dir_make(&d, list_conf, "# traps\n\ntrap@example.com\n  @trap.example.net  \r\n/^spam@/\n",
	              "boss@example.org\n# comment\n198.51.100.0/24\n");
	cfg = config_load(d.conf, NULL, 0, err, sizeof err);
	list_dir_remove(&d);
	if (cfg == NULL)
		print_error("%s\n", err);
	assert_non_null(cfg);
	assert_int_equal(trapset_count(cfg->decide.traps), 3);
	assert_true(is_trap(cfg, "trap+x@example.com"));
	assert_true(is_trap(cfg, "who@trap.example.net"));
	assert_true(is_trap(cfg, "spam@example.org"));
	assert_int_equal(whitelist_check(cfg->decide.whitelist, "boss@example.org", NULL),
	                 WHITELIST_SENDER_ADDRESS);
	assert_int_equal(whitelist_check(cfg->decide.whitelist, "x@example.com", "198.51.100.7"),
	                 WHITELIST_CLIENT_NETWORK);
	config_unref(cfg);
}

/* A bad line names the list file and its line, and every bad line is reported. */
static void test_list_files_bad_lines(void **state)
{
	list_dir d;
	char err[ERRMAX], want[256];
	config *cfg;

	(void)state;
	list_dir_make(&d, list_conf, "trap@example.com\n# ok\n/(unclosed/\nfine@example.com\n/[z-a]/\n",
	              "not valid at all\n");
	cfg = config_load(d.conf, NULL, 0, err, sizeof err);
	list_dir_remove(&d);
	assert_null(cfg);
	snprintf(want, sizeof want, "%s:3: traps.files: ", d.traps);
	assert_non_null(strstr(err, want));
	snprintf(want, sizeof want, "%s:5: traps.files: ", d.traps);
	assert_non_null(strstr(err, want));
	snprintf(want, sizeof want, "%s:1: whitelist.files: ", d.wl);
	assert_non_null(strstr(err, want));
	assert_int_equal(count_lines(err), 3);
}

/* A file full of bad lines stops after a bounded number of messages. */
static void test_list_file_error_cap(void **state)
{
	list_dir d;
	char err[ERRMAX * 2], lines[2000] = "";
	config *cfg;

	(void)state;
	for (int i = 0; i < 100; i++)
		strcat(lines, "/(/\n");
	list_dir_make(&d, list_conf, lines, "");
	cfg = config_load(d.conf, NULL, 0, err, sizeof err);
	list_dir_remove(&d);
	assert_null(cfg);
	assert_true(count_lines(err) <= 21);
	assert_non_null(strstr(err, "too many errors"));
}

/* ---- durations ---- */

typedef struct duration_case {
	const char *text;
	bool ok;
	int64_t seconds;
} duration_case;

static const duration_case duration_cases[] = {
    {"30", true, 30},
    {"30s", true, 30},
    {"15m", true, 900},
    {"24h", true, 86400},
    {"7d", true, 604800},
    {"0", true, 0},
    {"", false, 0},
    {"s", false, 0},
    {"-5", false, 0},
    {"1.5h", false, 0},
    {"10 m", false, 0},
    {"10mm", false, 0},
    {"1w", false, 0},
    {" 5", false, 0},
    {"99999999999999999999", false, 0},
    {"9999999999999999d", false, 0},
};

static void test_parse_duration(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof duration_cases / sizeof duration_cases[0]; i++) {
		const duration_case *c = &duration_cases[i];
		int64_t s = -1;

		print_message("case: \"%s\"\n", c->text);
		assert_int_equal(config_parse_duration(c->text, &s), c->ok);
		if (c->ok)
			assert_int_equal(s, c->seconds);
	}
	assert_false(config_parse_duration(NULL, NULL));
}

/* ---- snapshots and store_config ---- */

static void test_refcount(void **state)
{
	char path[64], err[ERRMAX];
	config *cfg = load_text("{}", NULL, 0, path, sizeof path, err);

	(void)state;
	assert_non_null(cfg);
	assert_ptr_equal(config_ref(cfg), cfg);
	config_unref(cfg);
	assert_string_equal(cfg->store.sqlite_path, "/var/lib/spamtrapd/spamtrapd.db"); /* still held */
	config_unref(cfg);
	config_unref(NULL);
	assert_null(config_ref(NULL));
}

static void test_store_config(void **state)
{
	char path[64], err[ERRMAX];
	const char *ov[] = {"store.redis.password=secret"};
	config *cfg = load_text("{}", ov, 1, path, sizeof path, err);
	store_config copy;

	(void)state;
	assert_non_null(cfg);
	assert_int_equal(store_config_copy(&copy, &cfg->store), 0);
	assert_true(store_config_equal(&copy, &cfg->store));
	assert_ptr_not_equal(copy.sqlite_path, cfg->store.sqlite_path);
	assert_string_equal(copy.redis_password, "secret");
	assert_null(copy.redis_socket);
	copy.redis_db = 3;
	assert_false(store_config_equal(&copy, &cfg->store));
	copy.redis_db = cfg->store.redis_db;
	free(copy.redis_password);
	copy.redis_password = NULL;
	assert_false(store_config_equal(&copy, &cfg->store));
	store_config_clear(&copy);
	assert_null(copy.sqlite_path);
	store_config_clear(NULL);
	config_unref(cfg);
}

/* The Sentinel list and name are deep-copied and take part in equality (a reload needs a new store). */
static void test_store_config_sentinels(void **state)
{
	char path[64], err[ERRMAX];
	const char *ov[] = {"store.redis.sentinels=[\"s1:26379\", \"s2:26379\"]",
	                    "store.redis.sentinel_master=mx"};
	config *cfg = load_text("{}", ov, 2, path, sizeof path, err);
	store_config copy;
	char *keep;

	(void)state;
	assert_non_null(cfg);
	assert_int_equal(store_config_copy(&copy, &cfg->store), 0);
	assert_true(store_config_equal(&copy, &cfg->store));
	assert_int_equal(copy.redis_nsentinels, 2);
	assert_ptr_not_equal(copy.redis_sentinels, cfg->store.redis_sentinels);
	assert_ptr_not_equal(copy.redis_sentinels[1], cfg->store.redis_sentinels[1]);
	assert_string_equal(copy.redis_sentinels[1], "s2:26379");
	assert_ptr_not_equal(copy.redis_sentinel_master, cfg->store.redis_sentinel_master);
	/* another order is another list */
	keep = copy.redis_sentinels[0];
	copy.redis_sentinels[0] = copy.redis_sentinels[1];
	copy.redis_sentinels[1] = keep;
	assert_false(store_config_equal(&copy, &cfg->store));
	copy.redis_sentinels[1] = copy.redis_sentinels[0];
	copy.redis_sentinels[0] = keep;
	copy.redis_nsentinels = 1;
	assert_false(store_config_equal(&copy, &cfg->store));
	copy.redis_nsentinels = 2;
	copy.redis_sentinel_master[0] = 'X';
	assert_false(store_config_equal(&copy, &cfg->store));
	store_config_clear(&copy);
	assert_null(copy.redis_sentinels);
	assert_int_equal(copy.redis_nsentinels, 0);
	config_unref(cfg);
}

typedef struct addr_case {
	const char *spec;
	bool ok;
	const char *host;
	int port;
} addr_case;

static void test_redis_addr_split(void **state)
{
	static const addr_case cases[] = {
	    {"127.0.0.1:26379", true, "127.0.0.1", 26379},
	    {"sentinel.example:1", true, "sentinel.example", 1},
	    {"[::1]:65535", true, "::1", 65535},
	    {"[2001:db8::5]:26379", true, "2001:db8::5", 26379},
	    {"::1:26379", false, NULL, 0},
	    {"host", false, NULL, 0},
	    {"host:", false, NULL, 0},
	    {":26379", false, NULL, 0},
	    {"[]:26379", false, NULL, 0},
	    {"host:0", false, NULL, 0},
	    {"host:65536", false, NULL, 0},
	    {"host:123456", false, NULL, 0},
	    {"host:+80", false, NULL, 0},
	    {"ho st:80", false, NULL, 0},
	    {"host\n:80", false, NULL, 0},
	    {"[::1:80", false, NULL, 0},
	    {"a]b:80", false, NULL, 0},
	};
	char host[32];
	int port;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const addr_case *c = &cases[i];
		bool ok = store_redis_addr_split(c->spec, host, sizeof host, &port);

		if (ok != c->ok)
			fail_msg("\"%s\": %s expected", c->spec, c->ok ? "accepted" : "refused");
		if (ok && (strcmp(host, c->host) != 0 || port != c->port))
			fail_msg("\"%s\": got %s and %d", c->spec, host, port);
	}
	/* a host longer than the caller's buffer is refused, not cut */
	assert_false(
	    store_redis_addr_split("sentinel-with-a-long-name.example:26379", host, sizeof host, &port));
	assert_false(store_redis_addr_split(NULL, host, sizeof host, &port));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ok_table),
	    cmocka_unit_test(test_shipped_config),
	    cmocka_unit_test(test_error_table),
	    cmocka_unit_test(test_errors_sorted),
	    cmocka_unit_test(test_missing_file),
	    cmocka_unit_test(test_error_cap),
	    cmocka_unit_test(test_error_one_line),
	    cmocka_unit_test(test_small_error_buffer),
	    cmocka_unit_test(test_list_files_relative),
	    cmocka_unit_test(test_list_files_bad_lines),
	    cmocka_unit_test(test_list_file_error_cap),
	    cmocka_unit_test(test_parse_duration),
	    cmocka_unit_test(test_refcount),
	    cmocka_unit_test(test_store_config),
	    cmocka_unit_test(test_store_config_sentinels),
	    cmocka_unit_test(test_redis_addr_split),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
