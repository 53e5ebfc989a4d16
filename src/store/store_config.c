/*
 * store_config: deep copy, release and comparison of a store_config, so a
 * store can keep its own settings and the engine can tell whether a reload
 * needs a new store; and the one parser of Redis "host:port" addresses,
 * shared by the config checks and the Redis backend. No I/O; the only
 * error is running out of memory.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"

static int dup_field(char **dst, const char *src)
{
	*dst = NULL;
	if (src == NULL)
		return 0;
	*dst = strdup(src);
	return *dst != NULL ? 0 : -1;
}

/* dst->redis_nsentinels counts the strings copied so far, so that clearing a half copy is safe. */
static int dup_sentinels(store_config *dst, const store_config *src)
{
	dst->redis_nsentinels = 0;
	if (src->redis_nsentinels == 0)
		return 0;
	dst->redis_sentinels = calloc(src->redis_nsentinels, sizeof(*dst->redis_sentinels));
	if (dst->redis_sentinels == NULL)
		return -1;
	for (size_t i = 0; i < src->redis_nsentinels; i++) {
		if (dup_field(&dst->redis_sentinels[i], src->redis_sentinels[i]) < 0)
			return -1;
		dst->redis_nsentinels++;
	}
	return 0;
}

/* dst is overwritten, not released first: pass a fresh or cleared struct. */
int store_config_copy(store_config *dst, const store_config *src)
{
	*dst = *src;
	/* Own nothing yet, so that a failure part way can clear dst safely. */
	dst->sqlite_path = dst->redis_host = dst->redis_socket = dst->redis_password = dst->redis_prefix =
	    dst->redis_sentinel_master = NULL;
	dst->redis_sentinels = NULL;
	dst->redis_nsentinels = 0;
	if (dup_field(&dst->sqlite_path, src->sqlite_path) < 0 ||
	    dup_field(&dst->redis_host, src->redis_host) < 0 ||
	    dup_field(&dst->redis_socket, src->redis_socket) < 0 ||
	    dup_field(&dst->redis_password, src->redis_password) < 0 ||
	    dup_field(&dst->redis_prefix, src->redis_prefix) < 0 ||
	    dup_field(&dst->redis_sentinel_master, src->redis_sentinel_master) < 0 ||
	    dup_sentinels(dst, src) < 0) {
		store_config_clear(dst);
		return -1;
	}
	return 0;
}

void store_config_clear(store_config *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->sqlite_path);
	free(cfg->redis_host);
	free(cfg->redis_socket);
	free(cfg->redis_password);
	free(cfg->redis_prefix);
	free(cfg->redis_sentinel_master);
	for (size_t i = 0; i < cfg->redis_nsentinels; i++)
		free(cfg->redis_sentinels[i]);
	free(cfg->redis_sentinels);
	memset(cfg, 0, sizeof *cfg);
}

static bool str_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static bool sentinels_equal(const store_config *a, const store_config *b)
{
	if (a->redis_nsentinels != b->redis_nsentinels)
		return false;
	for (size_t i = 0; i < a->redis_nsentinels; i++)
		if (!str_equal(a->redis_sentinels[i], b->redis_sentinels[i]))
			return false;
	return true;
}

bool store_config_equal(const store_config *a, const store_config *b)
{
	return sentinels_equal(a, b) && str_equal(a->redis_sentinel_master, b->redis_sentinel_master) &&
	       a->backend == b->backend && str_equal(a->sqlite_path, b->sqlite_path) &&
	       str_equal(a->redis_host, b->redis_host) && a->redis_port == b->redis_port &&
	       str_equal(a->redis_socket, b->redis_socket) && a->redis_db == b->redis_db &&
	       str_equal(a->redis_password, b->redis_password) &&
	       str_equal(a->redis_prefix, b->redis_prefix) &&
	       a->redis_connect_timeout_ms == b->redis_connect_timeout_ms &&
	       a->redis_command_timeout_ms == b->redis_command_timeout_ms &&
	       a->redis_local_view == b->redis_local_view &&
	       a->redis_local_view_keys == b->redis_local_view_keys;
}

/* "1".."65535" and nothing else. */
static bool parse_port(const char *s, int *port)
{
	long n = 0;

	if (*s == '\0' || strlen(s) > 5)
		return false;
	for (; *s; s++) {
		if (!isdigit((unsigned char)*s))
			return false;
		n = n * 10 + (*s - '0');
	}
	*port = (int)n;
	return n >= 1 && n <= 65535;
}

bool store_redis_addr_split(const char *spec, char *host, size_t hostlen, int *port)
{
	const char *colon = spec ? strrchr(spec, ':') : NULL, *h = spec;
	size_t len;

	if (colon == NULL || !parse_port(colon + 1, port))
		return false;
	len = (size_t)(colon - spec);
	if (len >= 2 && spec[0] == '[' && spec[len - 1] == ']') {
		h = spec + 1;
		len -= 2;
	} else if (memchr(spec, ':', len) != NULL) {
		return false; /* an IPv6 address needs brackets: which colon ends it? */
	}
	if (len == 0 || len >= hostlen)
		return false;
	for (size_t i = 0; i < len; i++)
		if (isspace((unsigned char)h[i]) || iscntrl((unsigned char)h[i]) || h[i] == '[' ||
		    h[i] == ']')
			return false;
	memcpy(host, h, len);
	host[len] = '\0';
	return true;
}
