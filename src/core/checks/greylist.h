/*
 * greylist: the greylisting check (SPEC.md "Checks" item 7, seeds 002 and
 * 004): postgrey 1.37's triplets, timers and auto-whitelist
 * (core/greystep.h), its whitelist files (core/greywl.h) and its sender
 * normalisation (core/greynorm.h), on both front ends and both stores.
 *
 * It runs last, and only once every check before it let the recipient
 * through (check_def.late): its one store query reads and writes the
 * triplet atomically, so a recipient another check refuses never starts a
 * triplet, and a trap recipient is never greylisted.
 *
 * The null sender is not deferred at RCPT TO by default (null_sender_at
 * "data"): sender-verification callouts (RCPT TO then QUIT) must get
 * their answer; the message is deferred at DATA instead.
 */
#ifndef SPAMTRAPD_CHECK_GREYLIST_H
#define SPAMTRAPD_CHECK_GREYLIST_H

#include <stdbool.h>
#include <stdint.h>

#include "core/check.h"
#include "core/decide.h"
#include "core/greywl.h"

/*
 * greylist.apply: every client, or only those the dnsbl check scored at or
 * above dnsbl.threshold in this stage (check_msg.dnsbl; selective
 * greylisting with dnsbl.action "greylist"). Either way a client the dnsbl
 * check allowlisted (dnsbl.allowlist_threshold) is not greylisted.
 */
typedef enum { GREYLIST_APPLY_ALL, GREYLIST_APPLY_LISTED } greylist_apply;
typedef enum { GREYLIST_AWL_BY_ADDRESS, GREYLIST_AWL_BY_NETWORK } greylist_awl_by;
typedef enum { GREYLIST_NULL_AT_DATA, GREYLIST_NULL_AT_RCPT } greylist_null_at;
typedef enum { GREYLIST_ON_ERROR_CONTINUE, GREYLIST_ON_ERROR_TEMPFAIL } greylist_on_error;

/* The greylist section of spamtrapd.json (docs/spamtrapd.json.5.md GREYLIST). */
typedef struct greylist_conf {
	int64_t delay, retry_window, max_age; /* seconds */
	int ipv4_prefix, ipv6_prefix;         /* the client network of a triplet */
	int64_t awl_count;                    /* 0: no auto-whitelist */
	int awl_by;                           /* greylist_awl_by */
	int apply;                            /* greylist_apply */
	int null_sender_at;                   /* greylist_null_at */
	int on_error;                         /* greylist_on_error */
	bool maintenance;                     /* SQLite: this host purges expired triplets */
	int64_t max_triplets;                 /* SQLite: the most triplets kept; 0: no cap */
	char *reply;                          /* "450 4.2.0 Greylisted, try again in %{remaining} seconds" */
	bool header;                          /* add header_text to a message that waited */
	/*
	 * An SPF-passing sender's domain ("spf:example.org") instead of the
	 * client's network in the triplet, unless its record authorises the
	 * probes (core/dnsplan.h): a retry may come from any server the domain
	 * names (large senders retry from another address).
	 */
	bool spf_key;
	char *header_text;               /* "X-Greylist: delayed %{delay} seconds by spamtrapd; %{date}" */
	const char *recipient_delimiter; /* not owned: the config's traps.recipient_delimiter */
	/* Compiled: */
	smtp_reply reply_parsed;
	const greywl *wl; /* the clients / recipients lists and files; owned by the config */
} greylist_conf;

extern const check_def check_greylist;

#endif
