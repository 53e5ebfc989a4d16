/* checks: the order table (see checks.h). A new check is one line here. */
#include "core/checks/checks.h"

#include <string.h>

#include "core/checks/blocklist.h"
#include "core/checks/dnsbl.h"
#include "core/checks/greylist.h"
#include "core/checks/relay.h"
#include "core/checks/ratelimit.h"
#include "core/checks/spf.h"
#include "core/checks/trap.h"
#include "core/checks/whitelist.h"

const check_def *const checks_all[CHECK_COUNT] = {
    [CHECK_ID_TRAPS] = &check_trap,
    [CHECK_ID_BLOCKLIST] = &check_blocklist,
    [CHECK_ID_WHITELIST] = &check_whitelist,
    [CHECK_ID_RELAY] = &check_relay,
    [CHECK_ID_RATELIMIT] = &check_ratelimit,
    [CHECK_ID_DNSBL] = &check_dnsbl,
    [CHECK_ID_SPF] = &check_spf,
    [CHECK_ID_GREYLIST] = &check_greylist,
};

int checks_find(const char *name)
{
	for (int i = 0; i < CHECK_COUNT; i++)
		if (strcmp(checks_all[i]->name, name) == 0)
			return i;
	return -1;
}
