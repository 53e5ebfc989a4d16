/* check: the helpers every check shares (see check.h). */
#include "core/check.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void check_verdict_reset(check_verdict *v)
{
	v->action = v->enforce_action = DECIDE_CONTINUE;
	v->stop = v->quiet = v->log_limited = false;
	v->reason = v->check = NULL;
	v->mode = CHECK_MODE_ENFORCE;
	v->reply.code[0] = v->reply.xcode[0] = v->reply.text[0] = '\0';
	v->detail[0] = v->header[0] = '\0';
}

check_verdict check_continue(void)
{
	check_verdict v;

	check_verdict_reset(&v);
	return v;
}

void check_verdict_set(check_verdict *v, decide_action action, const char *reason, const smtp_reply *reply)
{
	v->action = v->enforce_action = action;
	v->reason = reason;
	if (reply)
		v->reply = *reply;
	else
		v->reply.code[0] = v->reply.xcode[0] = v->reply.text[0] = '\0';
}

void check_detail_add(check_verdict *v, const char *fmt, ...)
{
	size_t used = strnlen(v->detail, sizeof(v->detail));
	va_list ap;

	if (used + 1 >= sizeof(v->detail))
		return;
	va_start(ap, fmt);
	vsnprintf(v->detail + used, sizeof(v->detail) - used, fmt, ap);
	va_end(ap);
}

const char *check_field(const char *value, char *buf, size_t buflen)
{
	size_t o = 0;

	if (buflen == 0)
		return "";
	for (; *value && o + 1 < buflen; value++)
		buf[o++] = (*value == ' ' || *value == '\t' || *value == '=') ? '?' : *value;
	buf[o] = '\0';
	return buf;
}

const char *check_mode_name(check_mode m)
{
	switch (m) {
	case CHECK_MODE_OFF:
		return "off";
	case CHECK_MODE_SHADOW:
		return "shadow";
	case CHECK_MODE_ENFORCE:
		return "enforce";
	}
	return "?";
}
