/*
 * sockperm: chown and chmod of a listening unix socket (see sockperm.h).
 */
#include "sockperm.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A user or group name, or a number. */
static int lookup_id(const char *name, bool group, const char *what, unsigned *id, char *err, size_t errlen)
{
	char *end;
	unsigned long n = strtoul(name, &end, 10);
	if (*name && !*end) {
		*id = (unsigned)n;
		return 0;
	}
	struct passwd *pw = group ? NULL : getpwnam(name);
	struct group *gr = group ? getgrnam(name) : NULL;
	if (!pw && !gr) {
		snprintf(err, errlen, "%s_%s: no such %s \"%s\"", what, group ? "group" : "owner",
		         group ? "group" : "user", name);
		return -1;
	}
	*id = group ? (unsigned)gr->gr_gid : (unsigned)pw->pw_uid;
	return 0;
}

int sockperm_apply(const char *path, const char *owner, const char *group, unsigned mode, const char *what,
                   char *err, size_t errlen)
{
	unsigned uid = (unsigned)-1, gid = (unsigned)-1;
	if (owner && lookup_id(owner, false, what, &uid, err, errlen) < 0)
		return -1;
	if (group && lookup_id(group, true, what, &gid, err, errlen) < 0)
		return -1;
	if ((owner || group) && chown(path, (uid_t)uid, (gid_t)gid) < 0) {
		snprintf(err, errlen, "%s %s: chown: %s", what, path, strerror(errno));
		return -1;
	}
	if (mode && chmod(path, (mode_t)mode) < 0) {
		snprintf(err, errlen, "%s %s: chmod: %s", what, path, strerror(errno));
		return -1;
	}
	return 0;
}
