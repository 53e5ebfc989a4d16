/*
 * atomicfile: replace a file so that a reader sees the old content or
 * the new, never a part (a firewall loader, postmap, rbldnsd reloading
 * while an export is written). The new content goes to a temporary file
 * in the same directory, is synced, renamed over the old name, and the
 * directory is synced so that the rename survives a crash.
 */
#ifndef SPAMTRAPD_ATOMICFILE_H
#define SPAMTRAPD_ATOMICFILE_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Write len bytes of data as path, with mode as given (no umask: umask()
 * is per process, and a reader such as rbldnsd may be another user); 0, or
 * -1 with the reason in err, and then path is as it was and no
 * temporary file is left.
 */
int atomicfile_write(const char *path, const void *data, size_t len, mode_t mode, char *err, size_t errlen);

#endif
