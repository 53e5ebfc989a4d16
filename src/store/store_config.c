/*
 * store_config: deep copy, release and comparison of a store_config, so a
 * store can keep its own settings and the engine can tell whether a reload
 * needs a new store. No I/O; the only error is running out of memory.
 */
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

/* dst is overwritten, not released first: pass a fresh or cleared struct. */
int store_config_copy(store_config *dst, const store_config *src)
{
	*dst = *src;
	/* Own nothing yet, so that a failure part way can clear dst safely. */
	dst->sqlite_path = dst->redis_host = dst->redis_socket = dst->redis_password = dst->redis_prefix =
	    NULL;
	if (dup_field(&dst->sqlite_path, src->sqlite_path) < 0 ||
	    dup_field(&dst->redis_host, src->redis_host) < 0 ||
	    dup_field(&dst->redis_socket, src->redis_socket) < 0 ||
	    dup_field(&dst->redis_password, src->redis_password) < 0 ||
	    dup_field(&dst->redis_prefix, src->redis_prefix) < 0) {
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
	memset(cfg, 0, sizeof *cfg);
}

static bool str_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

bool store_config_equal(const store_config *a, const store_config *b)
{
	return a->backend == b->backend && str_equal(a->sqlite_path, b->sqlite_path) &&
	       str_equal(a->redis_host, b->redis_host) && a->redis_port == b->redis_port &&
	       str_equal(a->redis_socket, b->redis_socket) && a->redis_db == b->redis_db &&
	       str_equal(a->redis_password, b->redis_password) &&
	       str_equal(a->redis_prefix, b->redis_prefix) &&
	       a->redis_connect_timeout_ms == b->redis_connect_timeout_ms &&
	       a->redis_command_timeout_ms == b->redis_command_timeout_ms;
}
