/*
 * log: one place that writes log lines, to syslog (with the configured
 * facility) or to stderr (spamtrapd -f). Thread-safe. Levels are syslog's.
 */
#ifndef SPAMTRAPD_LOG_H
#define SPAMTRAPD_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <syslog.h>

typedef enum { LOG_TARGET_SYSLOG, LOG_TARGET_STDERR } log_target;

void log_open(const char *ident, log_target target, int facility, int level);
void log_set_level(int level);
void log_close(void);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * For tests and tools that read what the daemon would log (the unit test
 * of the engine, the golden-file driver): every line that passes the
 * level goes to sink instead of syslog or stderr; NULL restores the
 * normal output. Set it before threads log.
 */
typedef void (*log_sink_fn)(int level, const char *msg, void *ctx);
void log_set_sink(log_sink_fn sink, void *ctx);

#define log_error(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* Names as in the config ("debug", "info", "notice", "warning", "err"). */
int log_level_from_name(const char *name);    /* -1 when unknown */
int log_facility_from_name(const char *name); /* -1 when unknown */

/*
 * At most burst lines (0 counts as 1) per interval for a recurring error (a
 * store that is down) or for bad input from many clients:
 * log_ratelimit_pass returns true when this occurrence may be logged, with
 * *suppressed set to how many were dropped before it and not reported yet
 * (the caller says so, e.g. "N more ..."). log_ratelimit_flush hands out
 * that count once the interval in which they were dropped has passed, so a
 * flood that stops still gets its summary (call it from a timer).
 */
typedef struct log_ratelimit {
	int64_t interval;
	unsigned burst;
	int64_t last;  /* start of the current interval; 0: none yet */
	unsigned used; /* lines passed in it */
	uint64_t suppressed;
} log_ratelimit;
bool log_ratelimit_pass(log_ratelimit *rl, int64_t now, uint64_t *suppressed);
bool log_ratelimit_flush(log_ratelimit *rl, int64_t now, uint64_t *suppressed);

/*
 * Copy s ("-" when NULL) into buf for a log field, replacing control
 * characters and capping its length; returns buf.
 */
const char *log_safe(const char *s, char *buf, size_t buflen);

/*
 * log_safe for a value inside "name=value" fields (addresses, HELO names
 * from the network): also masks blanks, '<', '>' and '=', which could
 * otherwise fake the fields that follow. Returns buf.
 */
const char *log_safe_field(const char *s, char *buf, size_t buflen);

#endif
