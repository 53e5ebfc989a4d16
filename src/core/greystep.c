/* greystep: postgrey 1.37's greylisting step as a pure function (see greystep.h). */
#include "core/greystep.h"

#include <stdio.h>
#include <string.h>

/* An auto-whitelisted client passes; its record is refreshed at most once per period, as postgrey's. */
static void awl_pass(const greystep_params *p, const greystep_awl *awl, int64_t now_ms, greystep_out *out)
{
	out->result = GREYSTEP_PASS_AWL;
	if (now_ms >= awl->last_ms + GREYSTEP_AWL_PERIOD_MS || awl->last_ms > now_ms) {
		out->write_awl = true;
		out->awl = (greystep_awl){.present = true, .count = awl->count + 1, .last_ms = now_ms};
		out->awl_expires_ms = now_ms + p->max_age_ms;
	}
}

/* A triplet's first pass counts toward its client's auto-whitelisting, once per period. */
static void awl_count_pass(const greystep_params *p, const greystep_awl *awl, int64_t now_ms,
                           greystep_out *out)
{
	if (p->awl_count == 0 || (awl->present && now_ms < awl->last_ms + GREYSTEP_AWL_PERIOD_MS))
		return;
	out->write_awl = true;
	out->awl =
	    (greystep_awl){.present = true, .count = (awl->present ? awl->count : 0) + 1, .last_ms = now_ms};
	out->awl_expires_ms = now_ms + p->max_age_ms;
}

void greystep_run(const greystep_params *p, const greystep_triplet *triplet, const greystep_awl *awl,
                  int64_t now_ms, greystep_out *out)
{
	static const greystep_awl no_awl = {.present = false};
	int64_t first = now_ms;
	bool passed_before = false;

	memset(out, 0, sizeof(*out));
	if (p->awl_count == 0 || awl == NULL)
		awl = &no_awl;
	if (awl->present && awl->count >= p->awl_count && p->awl_count > 0) {
		awl_pass(p, awl, now_ms, out);
		return;
	}
	if (triplet && triplet->present) {
		first = triplet->first_ms;
		passed_before = triplet->last_ms - triplet->first_ms >= p->delay_ms;
		/* The first retry after retry_window starts over, as a new triplet. */
		if (!passed_before && now_ms - first > p->retry_window_ms)
			first = now_ms;
		/* A first attempt "in the future" (a clock that went back) would defer for longer. */
		if (first > now_ms)
			first = now_ms;
	}
	out->write_triplet = true;
	out->triplet = (greystep_triplet){.present = true, .first_ms = first, .last_ms = now_ms};
	if (now_ms - first >= p->delay_ms) {
		out->triplet_expires_ms = now_ms + p->max_age_ms;
	} else {
		/* Live one past the window's end: a retry at exactly retry_window still passes, as
		 * postgrey's. */
		out->triplet_expires_ms = first + p->retry_window_ms + 1;
	}
	if (p->delay_ms - (now_ms - first) > 0) {
		out->result = (triplet && triplet->present && first != now_ms) ? GREYSTEP_DEFER_EARLY
		                                                               : GREYSTEP_DEFER_NEW;
		out->remaining_ms = p->delay_ms - (now_ms - first);
		return;
	}
	if (passed_before) {
		out->result = GREYSTEP_PASS;
		return;
	}
	out->result = GREYSTEP_PASS_FIRST;
	out->waited_ms = now_ms - first;
	awl_count_pass(p, awl, now_ms, out);
}

bool greystep_passes(greystep_result r)
{
	return r == GREYSTEP_PASS_FIRST || r == GREYSTEP_PASS || r == GREYSTEP_PASS_AWL;
}

const char *greystep_result_name(greystep_result r)
{
	switch (r) {
	case GREYSTEP_DEFER_NEW:
		return "new";
	case GREYSTEP_DEFER_EARLY:
		return "early-retry";
	case GREYSTEP_PASS_FIRST:
		return "pass-first";
	case GREYSTEP_PASS:
		return "pass";
	case GREYSTEP_PASS_AWL:
		return "awl";
	}
	return "?";
}

size_t greystep_triplet_key(const addr_ip *client, unsigned ipv4_prefix, unsigned ipv6_prefix,
                            const char *sender_key, const char *recipient, char *out, size_t outlen)
{
	addr_net net = addr_net_of(client, client->version == 4 ? ipv4_prefix : ipv6_prefix);
	char text[ADDR_NET_STRLEN];
	int n;

	addr_net_format(&net, text, sizeof(text));
	n = snprintf(out, outlen, "%s/%s/%s", text, sender_key, recipient);
	if (n < 0 || (size_t)n >= outlen) {
		if (outlen > 0)
			out[0] = '\0';
		return 0;
	}
	return (size_t)n;
}

size_t greystep_awl_key(const addr_ip *client, bool by_network, unsigned ipv4_prefix, unsigned ipv6_prefix,
                        char *out, size_t outlen)
{
	unsigned host = client->version == 4 ? 32 : 128;
	unsigned prefix = !by_network ? host : client->version == 4 ? ipv4_prefix : ipv6_prefix;
	addr_net net = addr_net_of(client, prefix);
	size_t n = addr_net_format(&net, out, outlen);

	return n < outlen ? n : 0;
}
