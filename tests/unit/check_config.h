/*
 * check_config: the config a check's unit tests load, written to a file in
 * their temp folder: a trap, a SQLite store in that folder, optional base
 * sections, the check's own section (enforce unless it names a mode) and
 * the test's extra top-level keys. Include after <cmocka.h>.
 */
#ifndef SPAMTRAPD_CHECK_CONFIG_H
#define SPAMTRAPD_CHECK_CONFIG_H

#include <stdio.h>
#include <string.h>

#include "config.h"

/*
 * base: top-level keys every config of the test has ("" for none);
 * section: the check's section name, NULL to write none (then body is
 * ignored); body: what goes inside it; extra: more top-level keys. NULL
 * with the loader's message in err when the config does not load.
 */
static config *check_config_load(const char *dir, const char *base, const char *section, const char *body,
                                 const char *extra, char *err, size_t errlen)
{
	static unsigned seq;
	char path[256], own[4096] = "";
	FILE *f;

	if (section != NULL)
		snprintf(own, sizeof(own), ", \"%s\": {%s%s%s}", section,
		         strstr(body, "\"mode\"") ? "" : "\"mode\": \"enforce\"",
		         body[0] && !strstr(body, "\"mode\"") ? ", " : "", body);
	snprintf(path, sizeof(path), "%s/c%u.json", dir, ++seq);
	f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f,
	        "{\"traps\": {\"addresses\": [\"trap@example.com\"]}, \"store\": {\"sqlite\": {\"path\": "
	        "\"%s/db.sqlite\"}}%s%s%s%s%s}\n",
	        dir, base[0] ? ", " : "", base, own, extra[0] ? ", " : "", extra);
	fclose(f);
	return config_load(path, NULL, 0, err, errlen);
}

/* check_config_load, or the test fails with the loader's message. */
static config *check_config_must_load(const char *dir, const char *base, const char *section,
                                      const char *body, const char *extra)
{
	char err[4096];
	config *cfg = check_config_load(dir, base, section, body, extra, err, sizeof(err));

	if (!cfg)
		fail_msg("config: %s", err);
	return cfg;
}

#endif
