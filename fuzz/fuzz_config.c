/*
 * libFuzzer target for config_load. The input is up to four sections
 * separated by a line "%%": the config file, "-o" overrides (one a line,
 * at most MAX_OVERRIDES), and the files traps.txt and whitelist.txt beside
 * it (a config may name them in traps.files / whitelist.files). The files
 * live in one scratch folder made at the first run; config.c's fopen comes
 * here (fuzz/CMakeLists.txt) and opens only them, so no input reaches
 * another file, a device or a FIFO.
 *
 * Invariants beyond "no crash":
 * - NULL comes with a reason in err and a snapshot with none; err is
 *   NUL-terminated, and a smaller buffer gets a prefix of the same text
 *   (the same answer twice: nothing depends on leftover state);
 * - every error line is one line naming the config file, a list file or
 *   "-o KEY"; a FILE:LINE lies inside that file, and in a config that is
 *   valid JSON its COL points at a key or a list element (the locator);
 * - a snapshot holds only values inside the schema's bounds, every set is
 *   built, every listener parses and no two share an address;
 * - every trap address, trap domain, whitelisted address and network, and
 *   policy.allow network of the file hits in the snapshot (unless an
 *   override replaced that section);
 * - config_ref/config_unref keep it alive until the last reference.
 */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "core/addr.h"
#include "core/trapset.h"
#include "core/whitelist.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
FILE *fuzz_config_fopen(const char *path, const char *mode);

#define MAX_OVERRIDES 8
#define ERR_BIG 16384
#define NFILES 3

static const char *const file_names[NFILES] = {"spamtrapd.json", "traps.txt", "whitelist.txt"};
static char scratch[256];
static char file_paths[NFILES][300];

static void remove_scratch(void)
{
	for (size_t i = 0; i < NFILES; i++)
		unlink(file_paths[i]);
	rmdir(scratch);
}

static void make_scratch(void)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(scratch, sizeof scratch, "%s/fuzz_config.XXXXXX", tmp != NULL && tmp[0] ? tmp : "/tmp");
	CHECK(mkdtemp(scratch) != NULL);
	for (size_t i = 0; i < NFILES; i++)
		snprintf(file_paths[i], sizeof file_paths[i], "%s/%s", scratch, file_names[i]);
	atexit(remove_scratch);
}

/* config.c's fopen: only the files of the input exist. */
FILE *fuzz_config_fopen(const char *path, const char *mode)
{
	for (size_t i = 0; i < NFILES; i++)
		if (strcmp(path, file_paths[i]) == 0)
			return fopen(path, mode);
	errno = ENOENT;
	return NULL;
}

static void write_file(const char *path, const uint8_t *data, size_t len)
{
	FILE *f = fopen(path, "wb");

	CHECK(f != NULL);
	CHECK(fwrite(data, 1, len, f) == len);
	CHECK(fclose(f) == 0);
}

/* Section i of the input (separated by "\n%%\n"): where it starts and its length. */
static const uint8_t *section(const uint8_t *data, size_t size, unsigned i, size_t *len)
{
	static const char sep[] = "\n%%\n";
	const uint8_t *p = data, *end = data + size, *hit;

	for (;; i--) {
		hit = memmem(p, (size_t)(end - p), sep, 4);
		if (i == 0) {
			*len = hit != NULL ? (size_t)(hit - p) : (size_t)(end - p);
			return p;
		}
		if (hit == NULL) {
			*len = 0;
			return end;
		}
		p = hit + 4;
	}
}

/* The override lines of section 1, copied; returns how many. */
static size_t overrides_of(const uint8_t *text, size_t len, char **ov)
{
	size_t n = 0;

	while (len > 0 && n < MAX_OVERRIDES) {
		const uint8_t *nl = memchr(text, '\n', len);
		size_t l = nl != NULL ? (size_t)(nl - text) : len;

		ov[n] = strndup((const char *)text, l);
		CHECK(ov[n] != NULL);
		n++;
		text += l;
		len -= l;
		if (len > 0) {
			text++;
			len--;
		}
	}
	return n;
}

static size_t count_lines(const uint8_t *data, size_t len)
{
	size_t n = 1;

	for (size_t i = 0; i < len; i++)
		n += data[i] == '\n';
	return n;
}

/* ---- err ---- */

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The config file as read, and whether it is valid JSON (then every FILE:LINE:COL is config.c's locator). */
typedef struct source {
	const uint8_t *text;
	size_t len;
	bool valid_json;
	size_t nlines[NFILES];
} source;

/* Offset of LINE:COL (columns count UTF-8 characters, as config.c and jansson do), or SIZE_MAX. */
static size_t offset_of(const source *src, long line, long col)
{
	size_t i = 0;

	for (long l = 1; l < line; l++) {
		const uint8_t *nl = memchr(src->text + i, '\n', src->len - i);

		if (nl == NULL)
			return SIZE_MAX;
		i = (size_t)(nl - src->text) + 1;
	}
	for (long c = 1; c < col && i < src->len; c++)
		for (i++; i < src->len && (src->text[i] & 0xc0) == 0x80; i++)
			;
	return i < src->len ? i : SIZE_MAX;
}

/* A position config.c located points at a member's key (a string) or an array element (a value). */
static void check_position(const source *src, long line, long col)
{
	size_t off = offset_of(src, line, col);

	CHECK(col >= 1 && off != SIZE_MAX);
	CHECK(strchr("\"{[-0123456789tfn", src->text[off]) != NULL && src->text[off] != '\0');
}

/* One error line: from a known source, and a position inside its file. */
static void check_error_line(const char *line, size_t len, const source *src)
{
	long l, c;
	int n;

	CHECK(len > 0);
	for (size_t i = 0; i < len; i++)
		CHECK((unsigned char)line[i] >= 0x20 && line[i] != 0x7f);
	if (starts_with(line, "-o "))
		return;
	for (size_t i = 0; i < NFILES; i++) {
		/* "PATH:" compared in place: a copy into a fixed buffer could truncate a long TMPDIR. */
		const char *rest;

		if (!starts_with(line, file_paths[i]) || line[strlen(file_paths[i])] != ':')
			continue;
		rest = line + strlen(file_paths[i]) + 1;
		if (*rest == ' ')
			return; /* no position */
		n = sscanf(rest, "%ld:%ld:", &l, &c);
		CHECK(n >= 1 && l >= 1 && (size_t)l <= src->nlines[i]);
		if (i == 0 && n == 2 && src->valid_json)
			check_position(src, l, c);
		return;
	}
	CHECK(!"an error line names neither the config file, a list file nor -o");
}

static void check_errors(const char *err, const source *src)
{
	for (const char *line = err; *line != '\0';) {
		size_t len = strcspn(line, "\n");

		check_error_line(line, len, src);
		line += len;
		if (*line == '\n')
			line++;
	}
}

/* ---- a snapshot ---- */

static bool listener_ok(const config_listener *l, char *canon, size_t canonlen)
{
	char err[128], text[ADDR_NET_STRLEN];
	addr_ip ip;
	uint16_t port;
	addr_net host;

	if (strncmp(l->address, "unix:", 5) == 0) {
		snprintf(canon, canonlen, "%s", l->address);
		return l->address[5] != '\0';
	}
	if (!addr_hostport_parse(l->address, &ip, &port, err, sizeof err))
		return false;
	host = addr_net_of(&ip, 128);
	addr_net_format(&host, text, sizeof text);
	snprintf(canon, canonlen, "%u %s %u", ip.version, text, port);
	return true;
}

static void check_listeners(const config *cfg)
{
	char canon[16][200];

	for (size_t i = 0; i < cfg->policy.nlisten; i++) {
		const config_listener *l = &cfg->policy.listen[i];

		CHECK(l->address != NULL && l->role <= POLICY_ROLE_FULL);
		CHECK(listener_ok(l, canon[i % 16], sizeof canon[0]));
		for (size_t j = 0; j < i && j < 16 && i < 16; j++)
			CHECK(strcmp(canon[i], canon[j]) != 0);
	}
}

static void check_bounds(const config *cfg)
{
	const decide_policy *d = &cfg->decide;

	CHECK(d->traps != NULL && d->whitelist != NULL && cfg->policy.allow != NULL);
	CHECK(d->action <= TRAP_ACTION_ACCEPT && d->on_mixed <= ON_MIXED_DISCARD_ALL);
	CHECK(d->keys != 0 && d->keys < 32);
	CHECK(d->ttl >= 1 && d->ttl <= CONFIG_TTL_MAX);
	CHECK(d->ipv4_prefix >= 8 && d->ipv4_prefix <= 32 && d->ipv6_prefix >= 16 && d->ipv6_prefix <= 128);
	CHECK(d->domain_min_networks >= 1 && d->domain_min_networks <= 1000);
	CHECK(strlen(d->reject.code) == 3 && (d->reject.code[0] == '4' || d->reject.code[0] == '5'));
	CHECK(d->reject.text[0] != '\0');
	CHECK(cfg->recipient_delimiter != NULL && strpbrk(cfg->recipient_delimiter, "@ \t\r\n") == NULL);
	CHECK(cfg->user == NULL || (cfg->user[0] != '\0' && strlen(cfg->user) <= 64));
	CHECK(cfg->milter.listen == NULL || starts_with(cfg->milter.listen, "unix:") ||
	      starts_with(cfg->milter.listen, "local:") || starts_with(cfg->milter.listen, "inet:") ||
	      starts_with(cfg->milter.listen, "inet6:"));
	CHECK(cfg->milter.timeout >= 1 && cfg->milter.timeout <= 86400);
	CHECK(cfg->milter.socket_mode <= 07777 && cfg->policy.socket_mode <= 07777);
	CHECK(cfg->policy.max_connections >= 1 && cfg->policy.max_connections <= 100000);
	CHECK(cfg->policy.idle_timeout >= 1 && cfg->policy.idle_timeout <= 86400);
	CHECK(cfg->policy.max_line >= 256 && cfg->policy.max_line <= 65536);
	CHECK(cfg->policy.max_attributes >= 8 && cfg->policy.max_attributes <= 1024);
	CHECK(cfg->policy.threads <= 64);
	CHECK(cfg->store.sqlite_path != NULL && cfg->store.sqlite_path[0] != '\0');
	CHECK(cfg->store.redis_port >= 1 && cfg->store.redis_port <= 65535);
	CHECK(cfg->store.redis_prefix != NULL && strlen(cfg->store.redis_prefix) <= 64);
	CHECK(cfg->purge_interval >= 1 && cfg->purge_interval <= 7 * 86400);
	check_listeners(cfg);
}

/* True when no override sets section or a key inside it (the file's value is the one in force). */
static bool from_file(char *const *ov, size_t nov, const char *section)
{
	size_t n = strlen(section);

	for (size_t i = 0; i < nov; i++)
		if (strncmp(ov[i], section, n) == 0 && (ov[i][n] == '=' || ov[i][n] == '.'))
			return false;
	return true;
}

static const json_t *get(const json_t *root, const char *section, const char *key)
{
	return json_object_get(json_object_get(root, section), key);
}

static void check_traps_hit(const config *cfg, const json_t *root)
{
	char q[ADDR_DOMAIN_MAX + 16];
	size_t i;
	const json_t *v;

	json_array_foreach(get(root, "traps", "addresses"), i, v)
	    CHECK(trapset_match(cfg->decide.traps, json_string_value(v), NULL, 0));
	json_array_foreach(get(root, "traps", "domains"), i, v)
	{
		const char *d = json_string_value(v);

		snprintf(q, sizeof q, "someone@%s", d + (d[0] == '@'));
		CHECK(trapset_match(cfg->decide.traps, q, NULL, 0));
	}
}

/* The lowest address of a network given as text. */
static void net_host_text(const char *s, char *text)
{
	char err[160];
	addr_net net, host;

	CHECK(addr_net_parse(s, &net, err, sizeof err));
	host = addr_net_of(&net.ip, 128);
	addr_net_format(&host, text, ADDR_NET_STRLEN);
}

static void check_whitelist_hits(const config *cfg, const json_t *root)
{
	char text[ADDR_NET_STRLEN];
	size_t i;
	const json_t *v;

	json_array_foreach(get(root, "whitelist", "addresses"), i, v) CHECK(
	    whitelist_check(cfg->decide.whitelist, json_string_value(v), NULL) == WHITELIST_SENDER_ADDRESS);
	json_array_foreach(get(root, "whitelist", "networks"), i, v)
	{
		net_host_text(json_string_value(v), text);
		CHECK(whitelist_check(cfg->decide.whitelist, NULL, text) == WHITELIST_CLIENT_NETWORK);
	}
}

static void check_policy(const config *cfg, const json_t *root)
{
	const json_t *listen = get(root, "policy", "listen");
	char text[ADDR_NET_STRLEN];
	addr_ip ip;
	size_t i;
	const json_t *v;

	if (json_is_array(listen))
		CHECK(cfg->policy.nlisten == json_array_size(listen));
	json_array_foreach(get(root, "policy", "allow"), i, v)
	{
		net_host_text(json_string_value(v), text);
		CHECK(addr_ip_parse(text, &ip) && netset_contains(cfg->policy.allow, &ip));
	}
}

/* What the file asked for is in force: its own JSON, read again here. */
static void check_contents(const config *cfg, const uint8_t *text, size_t len, char *const *ov, size_t nov)
{
	json_t *root = json_loadb((const char *)text, len, 0, NULL);

	CHECK(root != NULL);
	if (from_file(ov, nov, "traps"))
		check_traps_hit(cfg, root);
	if (from_file(ov, nov, "whitelist"))
		check_whitelist_hits(cfg, root);
	if (from_file(ov, nov, "policy"))
		check_policy(cfg, root);
	json_decref(root);
}

/* Writes the three files of the input and describes the config file in src; returns the overrides' text. */
static const uint8_t *take_input(const uint8_t *data, size_t size, source *src, size_t *ovlen)
{
	const uint8_t *sec[4];
	size_t len[4];
	json_t *root;

	for (unsigned i = 0; i < 4; i++)
		sec[i] = section(data, size, i, &len[i]);
	write_file(file_paths[0], sec[0], len[0]);
	write_file(file_paths[1], sec[2], len[2]);
	write_file(file_paths[2], sec[3], len[3]);
	src->text = sec[0];
	src->len = len[0];
	root = json_loadb((const char *)sec[0], len[0], JSON_REJECT_DUPLICATES, NULL);
	src->valid_json = json_is_object(root);
	json_decref(root);
	src->nlines[0] = count_lines(sec[0], len[0]);
	src->nlines[1] = count_lines(sec[2], len[2]);
	src->nlines[2] = count_lines(sec[3], len[3]);
	*ovlen = len[1];
	return sec[1];
}

/* A snapshot: in bounds, holding what the file says, alive until its last reference goes. */
static void check_snapshot(config *cfg, const source *src, char *const *ov, size_t nov)
{
	CHECK(strcmp(cfg->path, file_paths[0]) == 0);
	check_bounds(cfg);
	check_contents(config_ref(cfg), src->text, src->len, ov, nov);
	config_unref(cfg);
	CHECK(cfg->decide.traps != NULL); /* still held */
	config_unref(cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t ovlen, nov, smalllen = 1 + size % 97;
	char *ov[MAX_OVERRIDES], *err = malloc(ERR_BIG), *small = malloc(smalllen);
	const uint8_t *ovtext;
	config *cfg, *again;
	source src;

	CHECK(err != NULL && small != NULL);
	if (scratch[0] == '\0')
		make_scratch();
	ovtext = take_input(data, size, &src, &ovlen);
	nov = overrides_of(ovtext, ovlen, ov);
	cfg = config_load(file_paths[0], (const char *const *)ov, nov, err, ERR_BIG);
	CHECK_TERMINATED(err, ERR_BIG);
	CHECK((cfg == NULL) == (err[0] != '\0'));
	if (strlen(err) + 1 < ERR_BIG)
		check_errors(err, &src);
	again = config_load(file_paths[0], (const char *const *)ov, nov, small, smalllen);
	CHECK_TERMINATED(small, smalllen);
	CHECK((again == NULL) == (cfg == NULL) && strncmp(err, small, strlen(small)) == 0);
	config_unref(again);
	if (cfg != NULL)
		check_snapshot(cfg, &src, ov, nov);
	for (size_t i = 0; i < nov; i++)
		free(ov[i]);
	free(err);
	free(small);
	return 0;
}
