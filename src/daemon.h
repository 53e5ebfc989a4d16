/*
 * daemon: the process-level chores of a Unix daemon: detaching from the
 * terminal, dropping root privileges, the signal mask that lets the main
 * thread own every signal (see main.c), the open files limit.
 */
#ifndef SPAMTRAPD_DAEMON_H
#define SPAMTRAPD_DAEMON_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

/*
 * fork, setsid, chdir /, stdin/stdout/stderr to /dev/null. The parent
 * stays until the child calls daemon_report_started (or dies), and exits
 * 0 or 1 accordingly, so that `spamtrapd` without -f fails visibly when
 * start-up fails. In the child, *status_fd is the reporting end.
 * 0, or -1 with err.
 */
int daemon_detach(int *status_fd, char *err, size_t errlen);

/* Tell the waiting parent how start-up went; once; a no-op for fd -1. */
void daemon_report_started(int status_fd, bool ok);

/*
 * Become user (and its primary and supplementary groups). Called after the
 * sockets are bound. When the process does not run as root, user must be
 * NULL or the current user. 0, or -1 with err.
 */
int daemon_drop_privileges(const char *user, char *err, size_t errlen);

/*
 * Block the signals the main thread handles (HUP, USR1, TERM, INT) in the
 * calling thread, so that every thread created afterwards inherits the
 * block, and ignore SIGPIPE (a peer that went away is an EPIPE, not a
 * death). Fills set with the handled signals. SIGURG is in the set too:
 * milter_stop's wake-up of libmilter's listener, to be taken by that
 * thread only; one from outside goes to the main thread's wait, which
 * drops it, instead of cutting short a system call of another thread.
 */
void daemon_block_signals(sigset_t *set);

/*
 * Raise the soft limit of open files to the hard limit. Services start
 * with a soft limit of 1024 (systemd, most shells): fewer descriptors
 * than policy.max_connections needs, and spamtrapd uses no select(), so
 * the soft limit has no reason to stay low. *before and *after get the
 * soft limit (RLIM_INFINITY as ULLONG_MAX). 0, or -1 with err.
 */
int daemon_raise_open_files(unsigned long long *before, unsigned long long *after, char *err, size_t errlen);

#endif
