/*
 * log: syslog or stderr, one line per call, safe from any thread. The level
 * filter is an atomic so that a reload can change it under running threads.
 */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = LOG_INFO;
static atomic_int log_to = LOG_TARGET_STDERR;
static char log_ident[32] = "spamtrapd";
static pthread_mutex_t ratelimit_lock = PTHREAD_MUTEX_INITIALIZER;
static log_sink_fn log_sink;
static void *log_sink_ctx;
/*
 * The pid of a stderr line, asked of the kernel once and not on every line
 * (a system call per logged decision); 0 until then, and again in the
 * child of a fork (daemon.c), which has another.
 */
static atomic_int log_pid;
static pthread_once_t log_pid_once = PTHREAD_ONCE_INIT;

static const struct {
	const char *name;
	int value;
} levels[] = {
    {"debug", LOG_DEBUG},     {"info", LOG_INFO}, {"notice", LOG_NOTICE},
    {"warning", LOG_WARNING}, {"err", LOG_ERR},   {"error", LOG_ERR},
};

static const struct {
	const char *name;
	int value;
} facilities[] = {
    {"mail", LOG_MAIL},     {"daemon", LOG_DAEMON}, {"user", LOG_USER},     {"local0", LOG_LOCAL0},
    {"local1", LOG_LOCAL1}, {"local2", LOG_LOCAL2}, {"local3", LOG_LOCAL3}, {"local4", LOG_LOCAL4},
    {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6}, {"local7", LOG_LOCAL7},
};

int log_level_from_name(const char *name)
{
	for (size_t i = 0; name && i < sizeof(levels) / sizeof(levels[0]); i++)
		if (strcasecmp(name, levels[i].name) == 0)
			return levels[i].value;
	return -1;
}

int log_facility_from_name(const char *name)
{
	for (size_t i = 0; name && i < sizeof(facilities) / sizeof(facilities[0]); i++)
		if (strcasecmp(name, facilities[i].name) == 0)
			return facilities[i].value;
	return -1;
}

static const char *level_name(int level)
{
	switch (level) {
	case LOG_DEBUG:
		return "debug";
	case LOG_INFO:
		return "info";
	case LOG_NOTICE:
		return "notice";
	case LOG_WARNING:
		return "warning";
	default:
		return "error";
	}
}

void log_open(const char *ident, log_target target, int facility, int level)
{
	if (ident)
		snprintf(log_ident, sizeof(log_ident), "%s", ident);
	if (atomic_load(&log_to) == LOG_TARGET_SYSLOG)
		closelog();
	if (target == LOG_TARGET_SYSLOG)
		openlog(log_ident, LOG_PID | LOG_NDELAY, facility);
	atomic_store(&log_to, (int)target);
	atomic_store(&log_level, level);
}

void log_set_level(int level)
{
	atomic_store(&log_level, level);
}

void log_close(void)
{
	if (atomic_load(&log_to) == LOG_TARGET_SYSLOG)
		closelog();
	atomic_store(&log_to, LOG_TARGET_STDERR);
}

static void log_pid_forget(void)
{
	atomic_store(&log_pid, 0);
}

static void log_pid_watch_forks(void)
{
	(void)pthread_atfork(NULL, NULL, log_pid_forget);
}

static int current_pid(void)
{
	int pid = atomic_load_explicit(&log_pid, memory_order_relaxed);

	if (pid == 0) {
		pthread_once(&log_pid_once, log_pid_watch_forks);
		pid = (int)getpid();
		atomic_store_explicit(&log_pid, pid, memory_order_relaxed);
	}
	return pid;
}

void log_msg(int level, const char *fmt, ...)
{
	if (level > atomic_load(&log_level))
		return;
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (log_sink) {
		log_sink(level, msg, log_sink_ctx);
		return;
	}
	if (atomic_load(&log_to) == LOG_TARGET_SYSLOG) {
		syslog(level, "%s", msg);
		return;
	}
	/* One write per line, so lines from different threads never interleave. */
	char line[2200];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	localtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ld %s[%d]: %s: %s\n",
	                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
	                 ts.tv_nsec / 1000000, log_ident, current_pid(), level_name(level), msg);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line)) {
		n = sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	ssize_t ignored = write(STDERR_FILENO, line, (size_t)n);
	(void)ignored;
}

void log_set_sink(log_sink_fn sink, void *ctx)
{
	log_sink_ctx = ctx;
	log_sink = sink;
}

bool log_ratelimit_pass(log_ratelimit *rl, int64_t now, uint64_t *suppressed)
{
	bool pass;
	pthread_mutex_lock(&ratelimit_lock);
	*suppressed = 0;
	if (rl->last == 0 || now - rl->last >= rl->interval) {
		rl->last = now;
		rl->used = 0;
	}
	pass = rl->used < (rl->burst ? rl->burst : 1);
	if (pass) {
		rl->used++;
		*suppressed = rl->suppressed;
		rl->suppressed = 0;
	} else {
		rl->suppressed++;
	}
	pthread_mutex_unlock(&ratelimit_lock);
	return pass;
}

bool log_ratelimit_flush(log_ratelimit *rl, int64_t now, uint64_t *suppressed)
{
	bool due;
	pthread_mutex_lock(&ratelimit_lock);
	due = rl->suppressed > 0 && now - rl->last >= rl->interval;
	*suppressed = due ? rl->suppressed : 0;
	if (due)
		rl->suppressed = 0;
	pthread_mutex_unlock(&ratelimit_lock);
	return due;
}

/*
 * Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0. C1 controls
 * (U+0080..U+009F) count as malformed: like C0 controls they can move a
 * terminal's cursor.
 */
static size_t utf8_sequence_len(const unsigned char *s)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n;
	if (s[0] == 0xc2) {
		n = 2, lo = 0xa0;
	} else if (s[0] >= 0xc3 && s[0] <= 0xdf) {
		n = 2;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		if (s[0] == 0xe0)
			lo = 0xa0;
		else if (s[0] == 0xed)
			hi = 0x9f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		if (s[0] == 0xf0)
			lo = 0x90;
		else if (s[0] == 0xf4)
			hi = 0x8f;
	} else {
		return 0;
	}
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

/*
 * Every byte that is not printable ASCII or part of well-formed UTF-8
 * becomes '?': journald keeps a line with invalid UTF-8 as a binary blob
 * that journalctl does not show, so one hostile sender address could hide
 * a decision line from the administrator. A sequence that does not fit
 * whole is dropped rather than cut.
 */
const char *log_safe(const char *s, char *buf, size_t buflen)
{
	if (buflen == 0)
		return "";
	if (!s)
		s = "-";
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	while (*p && i + 1 < buflen) {
		if (*p >= 0x20 && *p < 0x7f) {
			buf[i++] = (char)*p++;
			continue;
		}
		size_t n = *p >= 0x80 ? utf8_sequence_len(p) : 0;
		if (n == 0) {
			buf[i++] = '?';
			p++;
		} else if (i + n < buflen) {
			memcpy(buf + i, p, n);
			i += n, p += n;
		} else {
			break;
		}
	}
	buf[i] = '\0';
	return buf;
}

const char *log_safe_field(const char *s, char *buf, size_t buflen)
{
	log_safe(s, buf, buflen);
	for (char *p = buf; *p; p++)
		if (*p == '<' || *p == '>' || *p == ' ' || *p == '=')
			*p = '?';
	return buf;
}
