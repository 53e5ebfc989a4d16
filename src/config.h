/*
 * config: spamtrapd.json into an immutable, reference-counted snapshot.
 *
 * One schema table (config.c) names every key with its type, default,
 * bounds and validator; it drives parsing, defaults and error messages.
 * Unknown keys, wrong types and bad values are errors naming file, line,
 * column and key ("spamtrapd.json:12:5: traps.action: expected one of
 * discard, reject, accept"). Trap sets, whitelists and networks are
 * compiled here, so the request path never parses config. A reload builds
 * a new snapshot; holders of the old one keep it until they unref it.
 */
#ifndef SPAMTRAPD_CONFIG_H
#define SPAMTRAPD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/decide.h"
#include "core/export.h"
#include "core/pipeline.h"
#include "core/netset.h"
#include "dns/dns.h"
#include "log.h"
#include "store/store.h"

#define CONFIG_DEFAULT_PATH "/etc/spamtrapd/spamtrapd.json"
/* The longest blocklist.ttl (3650d), also the cap of `spamtrapctl add --ttl`. */
#define CONFIG_TTL_MAX ((int64_t)3650 * 86400)
/* dns.forwarders: more would only be tried in turn by libunbound. */
#define CONFIG_DNS_MAX_FORWARDERS 8
#define CONFIG_DNS_KEY_MAX 512

typedef enum { POLICY_ROLE_TRAP, POLICY_ROLE_SENDER, POLICY_ROLE_FULL } policy_role;

typedef struct config_listener {
	char *address; /* "127.0.0.1:10666", "[::1]:10666", "unix:/path" */
	policy_role role;
	/*
	 * The checks the role runs (CHECK_BIT()s, core/checks/checks.h): trap,
	 * the recipient-stage checks (all but the blocklist); sender, the
	 * blocklist; full, all of them, each at the stages it runs at.
	 */
	unsigned checks;
} config_listener;

/* The placeholders of hooks.on_block: %{key} ... ; config_block_hook_names[CONFIG_BLOCK_HOOK_KEY] is "key".
 */
enum {
	CONFIG_BLOCK_HOOK_KEY,
	CONFIG_BLOCK_HOOK_TYPE,
	CONFIG_BLOCK_HOOK_TTL,
	CONFIG_BLOCK_HOOK_REASON,
	CONFIG_BLOCK_HOOK_TRAP,
	CONFIG_BLOCK_HOOK_CLIENT,
	CONFIG_BLOCK_HOOK_QUEUE_ID,
	CONFIG_BLOCK_HOOK_VALUES
};
extern const char *const config_block_hook_names[]; /* NULL-terminated */

/* One of "exports": a file the daemon keeps current (src/exporter.c). */
typedef struct config_export {
	export_format format;
	char *path;       /* absolute; its directory existed at load */
	int64_t interval; /* seconds: rewritten at most this long after a change */
	unsigned keys;    /* EXPORT_KEY_* */
} config_export;
#define CONFIG_EXPORTS_MAX 16

typedef struct config {
	char *path; /* the file this snapshot was read from */
	char *user; /* run as this user after binding; NULL: stay as started */

	decide_policy decide;          /* mode, traps, blocklist, whitelist, on_error */
	check_mode modes[CHECK_COUNT]; /* each check's own mode, as configured */
	pipeline pipeline;             /* the checks with their modes in force (dry-run: shadow) */
	char *recipient_delimiter;

	struct {
		char *listen;       /* libmilter socket spec; NULL: no milter */
		char *socket_owner; /* unix socket owner/group/mode; NULL: unchanged */
		char *socket_group;
		unsigned socket_mode; /* 0 when unset */
		int timeout;          /* seconds libmilter waits on the MTA */
	} milter;

	struct {
		config_listener *listen;
		size_t nlisten;
		netset *allow;
		unsigned max_connections;
		int64_t idle_timeout;    /* seconds */
		size_t max_line;         /* bytes in one attribute line */
		unsigned max_attributes; /* per request */
		unsigned threads;        /* 0: one per CPU */
		char *socket_owner;      /* unix listeners: owner/group/mode; NULL: unchanged */
		char *socket_group;
		unsigned socket_mode; /* default 0660; 0 (null): as created */
	} policy;

	/* The Prometheus endpoint (src/metrics/metrics_server.c, docs/metrics.md). */
	struct {
		char *listen;            /* "127.0.0.1:9150", "[::1]:9150", "unix:/path"; NULL: off */
		netset *allow;           /* TCP clients that may scrape */
		int64_t entries_refresh; /* seconds between counts of the blocklist's entries (with listen) */
	} metrics;

	store_config store;
	int64_t purge_interval; /* seconds between purges of expired entries */

	/* The resolver of the DNS checks (src/dns/): made only when a check plans DNS. */
	struct {
		char **forwarders; /* "ADDR" or "ADDR@PORT"; none: recursive from the root */
		size_t nforwarders;
		int64_t timeout;       /* seconds a request waits for its DNS answers at most */
		unsigned max_inflight; /* queries in flight per resolver */
		unsigned cache_size;   /* MiB of cache per resolver */
		/*
		 * The settings a resolver is made with, as one string: a front
		 * end whose resolver has another key (a reload changed the
		 * section) makes a new one. Built once at load, not per request.
		 */
		char key[CONFIG_DNS_KEY_MAX];
	} dns;

	/* hooks.on_block: an argv run for each new enforced blocklist entry (hook.h); none when non_block is
	 * 0 */
	struct {
		char **on_block;
		size_t non_block;
		int64_t timeout; /* seconds, then the hook is killed */
	} hooks;

	/* exports: none when nexports is 0 */
	config_export *exports;
	size_t nexports;

	struct {
		log_target target;
		int facility;
		int level;
	} log;

	/*
	 * What is worth telling but does not stop the load, one line each: a
	 * file spamtrapd trusts (this file, traps.files, whitelist.files) that
	 * someone other than root and the service user may change. The caller
	 * logs them (the daemon) or prints them (spamtrapd -t).
	 */
	char **warnings;
	size_t nwarnings;
} config;

/*
 * Load and validate path. overrides are "dotted.key=value" strings applied
 * on top of the file (value parsed as JSON, else taken as a string), as in
 * `spamtrapd -o store.sqlite.path=var/spamtrapd.db`. Returns a snapshot with
 * one reference, or NULL with every problem found (one a line) in err.
 */
config *config_load(const char *path, const char *const *overrides, size_t noverrides, char *err,
                    size_t errlen);

config *config_ref(config *cfg);
void config_unref(config *cfg); /* accepts NULL; frees at zero */

/* Parse "30", "30s", "15m", "24h", "7d" into seconds; false when invalid. */
bool config_parse_duration(const char *s, int64_t *seconds);

/* The dns section as the resolver takes it (pointing into cfg). */
dns_settings config_dns_settings(const config *cfg);

const char *policy_role_name(policy_role role);
/* The checks a listener of this role runs (config_listener.checks). */
unsigned policy_role_checks(policy_role role);

#endif
