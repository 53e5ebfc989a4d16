/*
 * atomicfile: write a temporary file next to the target, fsync, rename,
 * fsync the directory (atomicfile.h). Errors name the file and errno.
 */
#include "atomicfile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(const char *what, const char *path, char *err, size_t errlen)
{
	snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
	return -1;
}

static int write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The directory of path, synced so that the new name is on disk too. */
static int sync_dir(const char *path, char *err, size_t errlen)
{
	char *copy = strdup(path);
	const char *dir;
	int fd, rc = 0;

	if (!copy)
		return fail("syncing the directory of", path, err, errlen);
	dir = dirname(copy);
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0)
		rc = fail("syncing the directory", dir, err, errlen);
	if (fd >= 0)
		close(fd);
	free(copy);
	return rc;
}

static int fill(int fd, const char *tmp, const void *data, size_t len, mode_t mode, char *err, size_t errlen)
{
	if (fchmod(fd, mode) < 0)
		return fail("setting the mode of", tmp, err, errlen);
	if (write_all(fd, data, len) < 0)
		return fail("writing", tmp, err, errlen);
	if (fsync(fd) < 0)
		return fail("syncing", tmp, err, errlen);
	return 0;
}

int atomicfile_write(const char *path, const void *data, size_t len, mode_t mode, char *err, size_t errlen)
{
	size_t n = strlen(path) + sizeof(".XXXXXX");
	char *tmp = malloc(n);
	int fd, rc;

	if (!tmp) {
		errno = ENOMEM;
		return fail("writing", path, err, errlen);
	}
	snprintf(tmp, n, "%s.XXXXXX", path);
	if ((fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
		rc = fail("creating a temporary file for", path, err, errlen);
		free(tmp);
		return rc;
	}
	rc = fill(fd, tmp, data, len, mode, err, errlen);
	if (close(fd) < 0 && rc == 0)
		rc = fail("writing", tmp, err, errlen);
	if (rc == 0 && rename(tmp, path) < 0)
		rc = fail("renaming the temporary file to", path, err, errlen);
	if (rc < 0)
		unlink(tmp);
	free(tmp);
	return rc < 0 ? rc : sync_dir(path, err, errlen);
}
