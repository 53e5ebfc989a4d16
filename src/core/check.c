/* check: the helpers every check shares (see check.h). */
#include "core/check.h"

#include <string.h>

check_verdict check_continue(void)
{
	check_verdict v;

	memset(&v, 0, sizeof(v));
	v.action = DECIDE_CONTINUE;
	v.enforce_action = DECIDE_CONTINUE;
	return v;
}

check_verdict check_verdict_of(decide_action action, const char *reason, const smtp_reply *reply)
{
	check_verdict v = check_continue();

	v.action = action;
	v.enforce_action = action;
	v.reason = reason;
	if (reply)
		v.reply = *reply;
	return v;
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
