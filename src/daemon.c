/*
 * daemon: detach, drop privileges, block signals, raise the open files
 * limit (see daemon.h).
 */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define ST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ST_SANITIZED 1
#endif
#endif

#ifdef ST_SANITIZED
/*
 * Sanitizer (test) builds only. GCC's UBSan runtime reads UBSAN_OPTIONS at
 * its first report, from /proc/self/environ. Once we have switched user the
 * process is not dumpable, that file is root's, and the options would be
 * lost without a word: no stack trace, and exit status 1, which reads as an
 * ordinary start-up failure instead of the tests' 86. The runtime asks this
 * hook first: it gets them from our own environment. Unlike
 * prctl(PR_SET_DUMPABLE, 1), this leaves the process as hard to ptrace or
 * core-dump as the release build (docs/testing.md).
 */
const char *__ubsan_default_options(void);
const char *__ubsan_default_options(void)
{
	const char *options = getenv("UBSAN_OPTIONS");
	return options ? options : "";
}
#endif

/* The parent's side: wait for the child's word, exit with it. */
static void wait_for_child(int fd)
{
	char status = 0;
	ssize_t n;
	do
		n = read(fd, &status, 1);
	while (n < 0 && errno == EINTR);
	if (n == 1 && status == '1')
		_exit(0);
	fprintf(stderr, "spamtrapd: start-up failed; see the log (syslog) for why\n");
	_exit(1);
}

int daemon_detach(int *status_fd, char *err, size_t errlen)
{
	int fds[2];
	if (pipe2(fds, O_CLOEXEC) < 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return -1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(err, errlen, "fork: %s", strerror(errno));
		return -1;
	}
	if (pid > 0) {
		close(fds[1]);
		wait_for_child(fds[0]);
	}
	close(fds[0]);
	*status_fd = fds[1];
	if (setsid() < 0) {
		snprintf(err, errlen, "setsid: %s", strerror(errno));
		return -1;
	}
	if (chdir("/") < 0) {
		snprintf(err, errlen, "chdir /: %s", strerror(errno));
		return -1;
	}
	int fd = open("/dev/null", O_RDWR);
	if (fd < 0) {
		snprintf(err, errlen, "/dev/null: %s", strerror(errno));
		return -1;
	}
	dup2(fd, STDIN_FILENO);
	dup2(fd, STDOUT_FILENO);
	dup2(fd, STDERR_FILENO);
	if (fd > STDERR_FILENO)
		close(fd);
	return 0;
}

void daemon_report_started(int status_fd, bool ok)
{
	static bool reported;
	if (status_fd < 0 || reported)
		return;
	reported = true;
	char status = ok ? '1' : '0';
	ssize_t ignored = write(status_fd, &status, 1);
	(void)ignored;
	close(status_fd);
}

int daemon_drop_privileges(const char *user, char *err, size_t errlen)
{
	if (!user)
		return 0;
	errno = 0;
	struct passwd *pw = getpwnam(user);
	if (!pw) {
		snprintf(err, errlen, "user \"%s\": %s", user, errno ? strerror(errno) : "no such user");
		return -1;
	}
	if (getuid() != 0) {
		if (getuid() == pw->pw_uid)
			return 0;
		snprintf(err, errlen, "cannot switch to user \"%s\": not running as root", user);
		return -1;
	}
	if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
		snprintf(err, errlen, "cannot switch to user \"%s\": %s", user, strerror(errno));
		return -1;
	}
	/* A setuid that silently left a way back to root would be worse than failing. */
	if (pw->pw_uid != 0 && setuid(0) == 0) {
		snprintf(err, errlen, "could regain root after switching to \"%s\"", user);
		return -1;
	}
	return 0;
}

void daemon_block_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGHUP);
	sigaddset(set, SIGUSR1);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGURG);
	pthread_sigmask(SIG_BLOCK, set, NULL);
	signal(SIGPIPE, SIG_IGN);
}

static unsigned long long rlim_value(rlim_t v)
{
	return v == RLIM_INFINITY ? ULLONG_MAX : (unsigned long long)v;
}

int daemon_raise_open_files(unsigned long long *before, unsigned long long *after, char *err, size_t errlen)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
		snprintf(err, errlen, "getrlimit: %s", strerror(errno));
		*before = *after = 0;
		return -1;
	}
	*before = *after = rlim_value(rl.rlim_cur);
	if (rl.rlim_cur == rl.rlim_max)
		return 0;
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
		snprintf(err, errlen, "setrlimit to the hard limit %llu: %s", rlim_value(rl.rlim_max),
		         strerror(errno));
		return -1;
	}
	*after = rlim_value(rl.rlim_cur);
	return 0;
}
