/*
 * daemon: the process-level chores of a Unix daemon: detaching from the
 * terminal, dropping root privileges, and the signal mask that lets the
 * main thread own every signal (see main.c).
 */
#ifndef SPAMTRAPD_DAEMON_H
#define SPAMTRAPD_DAEMON_H

#include <signal.h>
#include <stddef.h>

/* fork, setsid, chdir /, stdin/stdout/stderr to /dev/null. 0, or -1 with err. */
int daemon_detach(char *err, size_t errlen);

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
 * death). Fills set with the handled signals.
 */
void daemon_block_signals(sigset_t *set);

#endif
