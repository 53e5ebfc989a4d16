/*
 * dnsbl: the client's DNSBL / DNSWL score (SPEC.md "Checks" item 6, seed
 * 002), as postscreen(8) scores it: every site of dnsbl.sites (postscreen's
 * syntax, core/dnsbl_site.h) whose answer matches its filter adds its
 * weight once; a score at or above threshold takes the action (reject,
 * defer, or greylist: the greylist check then greylists the client); a
 * score at or below a negative allowlist_threshold spares the client
 * greylisting.
 *
 * It is pure: plan_dns() names the lookups (one per distinct site name:
 * postscreen configs list one DNSWL several times with different filters
 * and weights), the front end resolves them all in parallel by
 * dnsbl.timeout (core/dnsplan.h), and decide() scores what answered. An
 * answer outside 127.0.0.0/8 or inside 127.255.255.0/24 (a list refusing
 * the query, as Spamhaus does for public resolvers) is an error, logged,
 * and never a listing. A timeout or failure counts as "not listed"; only
 * when every site failed does on_error apply. DNS trouble never becomes a
 * 5xx.
 *
 * Not asked, not scored: a whitelisted network (the whitelist check
 * stops before; plan_dns() does not ask either), a client without a usable
 * address, and an authenticated (SASL) client, whose home address
 * policy-block lists name on purpose.
 *
 * It runs at RCPT only, after the trap check: a listed client's trap hits
 * must still be seen and recorded, so it is never refused at MAIL FROM.
 */
#ifndef SPAMTRAPD_CHECK_DNSBL_H
#define SPAMTRAPD_CHECK_DNSBL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/check.h"
#include "core/decide.h"
#include "core/dnsbl_site.h"
#include "core/dnsplan.h"

/* Most members of dnsbl.sites: one lookup each at most in a stage's plan. */
#define DNSBL_SITES_MAX DNSPLAN_MAX_LOOKUPS

typedef enum { DNSBL_ACTION_REJECT, DNSBL_ACTION_DEFER, DNSBL_ACTION_GREYLIST } dnsbl_action;
typedef enum { DNSBL_ON_ERROR_CONTINUE, DNSBL_ON_ERROR_TEMPFAIL } dnsbl_on_error;

/* The dnsbl section of spamtrapd.json (docs/spamtrapd.json.5.md DNSBL). */
typedef struct dnsbl_conf {
	check_strlist sites;
	int64_t threshold;
	int64_t allowlist_threshold; /* 0: none; negative: a score at or below it skips greylisting */
	int action;                  /* dnsbl_action */
	char *reply;                 /* NULL: the action's default */
	check_strlist reply_map;     /* pairs: a site's name, the reply when it is %{site} */
	int64_t timeout;             /* seconds */
	int on_error;                /* dnsbl_on_error */
	/* Compiled: */
	dnsbl_site site[DNSBL_SITES_MAX];
	size_t nsites;
	uint8_t lookup_of[DNSBL_SITES_MAX]; /* the site's distinct name: its lookup's tag */
	size_t nnames;
	smtp_reply reply_parsed;
	smtp_reply map_reply[DNSBL_SITES_MAX]; /* the reply of each distinct name; code[0] 0: reply_parsed */
} dnsbl_conf;

extern const check_def check_dnsbl;

#endif
