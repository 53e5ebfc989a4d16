/*
 * greystep: one greylisting step for one triplet, postgrey 1.37's rules
 * (smtpd_access_policy) as a pure function of the stored state and the
 * store's clock. The SQLite store runs it inside its transaction; the
 * Redis store runs the same rules in its Lua script (store_redis.c), with
 * Redis TIME as the clock, so that hosts whose clocks disagree still agree
 * on when a retry is early. tests/unit/test_greystep.c holds the edges;
 * the store tests run the same table against both backends.
 *
 * Times are milliseconds of the store's clock.
 */
#ifndef SPAMTRAPD_GREYSTEP_H
#define SPAMTRAPD_GREYSTEP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"

/* A client's count goes up at most once per period, as postgrey's (one hour). */
#define GREYSTEP_AWL_PERIOD_MS ((int64_t)3600 * 1000)

typedef struct greystep_params {
	int64_t delay_ms;        /* a retry this long after the first attempt passes */
	int64_t retry_window_ms; /* ... if it comes within this long of the first attempt */
	int64_t max_age_ms;      /* a passed triplet (and an AWL client) lives this long from its last use */
	uint64_t awl_count;      /* passes that auto-whitelist a client; 0: no auto-whitelist */
} greystep_params;

/* A stored triplet: first attempt and the last one, as postgrey's "first,last". */
typedef struct greystep_triplet {
	bool present;
	int64_t first_ms, last_ms;
} greystep_triplet;

/* A stored auto-whitelist record of a client (or its network): passes counted, when last counted. */
typedef struct greystep_awl {
	bool present;
	uint64_t count;
	int64_t last_ms;
} greystep_awl;

typedef enum {
	GREYSTEP_DEFER_NEW,   /* first attempt (or the first after retry_window): deferred */
	GREYSTEP_DEFER_EARLY, /* a retry before delay: deferred */
	GREYSTEP_PASS_FIRST,  /* the retry that passes (the X-Greylist header's moment) */
	GREYSTEP_PASS,        /* a triplet that passed before */
	GREYSTEP_PASS_AWL,    /* the client is auto-whitelisted: the triplet is not looked at */
} greystep_result;

typedef struct greystep_out {
	greystep_result result;
	int64_t remaining_ms; /* DEFER_*: how long until a retry passes (> 0) */
	int64_t waited_ms;    /* PASS_FIRST: how long the triplet waited (now - first) */
	/* What to store. write_*: the record changed; *_expires_ms: when it may be dropped. */
	bool write_triplet;
	greystep_triplet triplet;
	int64_t triplet_expires_ms;
	bool write_awl;
	greystep_awl awl;
	int64_t awl_expires_ms;
} greystep_out;

/*
 * One attempt of the triplet at now_ms. triplet and awl are the stored
 * records live at now_ms (present false: none, or expired); awl is ignored
 * when p->awl_count is 0.
 */
void greystep_run(const greystep_params *p, const greystep_triplet *triplet, const greystep_awl *awl,
                  int64_t now_ms, greystep_out *out);

bool greystep_passes(greystep_result r);

/* Longest triplet key: network, '/', sender key, '/', recipient. */
#define GREYSTEP_KEY_MAX 1100

/*
 * The triplet's key, the same in the check, the stores and spamtrapctl:
 * "NETWORK/SENDERKEY/RECIPIENT", e.g. "192.0.2.0/24/user@example.com/bob@example.org".
 * client: the client's address; ipv4_prefix, ipv6_prefix: the network it
 * is counted by (greylist.ipv4_prefix, ipv6_prefix). sender_key: the
 * sender as greynorm_sender() makes it. recipient: normalised (lower
 * case, no brackets), kept whole: "bob+ext" is another triplet, as in
 * postgrey. Returns the length, or 0 (out "") when it does not fit.
 */
size_t greystep_triplet_key(const addr_ip *client, unsigned ipv4_prefix, unsigned ipv6_prefix,
                            const char *sender_key, const char *recipient, char *out, size_t outlen);

/* The auto-whitelist key of a client: its address, or its network when by_network. */
size_t greystep_awl_key(const addr_ip *client, bool by_network, unsigned ipv4_prefix, unsigned ipv6_prefix,
                        char *out, size_t outlen);
/* "new", "early-retry", "pass-first", "pass", "awl": for log lines and spamtrapctl. */
const char *greystep_result_name(greystep_result r);

#endif
