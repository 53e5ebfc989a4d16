/*
 * check: the interface every capability of spamtrapd implements (traps,
 * blocklist, whitelist, and the checks still to come: relay, ratelimit,
 * dnsbl, greylist), in the spirit of Postfix's per-stage smtpd_check_*:
 * at each SMTP stage a check answers "a verdict, or nothing".
 *
 * A check is pure. For one stage of one transaction it
 *   1. says what it needs from the store (needs: fills queries, no I/O);
 *   2. decides from the answers (decide: a verdict, and the effects to
 *      apply afterwards: queries that write, and what the message should
 *      remember for its later stages).
 * The engine (engine.h) runs the checks of a stage in SPEC.md's order
 * (core/pipeline.h), sends every check's queries to the store in one call,
 * applies modes (enforce, shadow, off) and effects, and logs.
 *
 * Adding a check: one file in src/core/checks/ defining a check_def with
 * its config section (check_key rows), its id in core/checks/checks.h and
 * one line in the order table (core/checks/checks.c). docs/architecture.md
 * walks through it.
 */
#ifndef SPAMTRAPD_CHECK_H
#define SPAMTRAPD_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/decide.h"
#include "core/dnsplan.h"
#include "core/query.h"

/* SPEC.md "Checks": enforce, or shadow (decide, log "would have", change nothing), or off. */
typedef enum { CHECK_MODE_OFF, CHECK_MODE_SHADOW, CHECK_MODE_ENFORCE } check_mode;

/* SMTP stages a check may run at, as bits of check_def.stages. */
enum {
	CHECK_STAGE_MAIL = 1u << 0,
	CHECK_STAGE_RCPT = 1u << 1,
	CHECK_STAGE_EOM = 1u << 2,  /* end of message (milter only) */
	CHECK_STAGE_DATA = 1u << 3, /* the DATA command (milter; policy in smtpd_data_restrictions) */
};
typedef unsigned check_stage;

/*
 * What a message remembers between its stages. The milter keeps all of it
 * in its connection context. The policy protocol's requests are separate:
 * the engine keeps only trap_hit, listed_before, the grey_* and the spf*
 * fields for them, by the message's "instance" attribute, in one word per message
 * (engine.c); a field a new check adds here is lost between policy
 * requests unless it is packed there too.
 */
typedef struct check_msg {
	bool sender_checked; /* the blocklist check answered at MAIL FROM */
	bool trap_hit;       /* a recipient hit a trap and the hit was recorded */
	bool listed_before;  /* ... and the sender was blocklisted already before that hit */
	unsigned ntraps;     /* recipients accepted only to be dropped at end of message */
	unsigned nothers;    /* recipients that get the message */
	/*
	 * The greylist deferred a null-sender recipient at RCPT TO in words
	 * only: the message is deferred at DATA, grey_remaining seconds (the
	 * longest of its recipients) before a retry passes.
	 */
	bool grey_defer_data;
	uint32_t grey_remaining;
	bool grey_header_done; /* the message got its X-Greylist header (policy: one PREPEND a message) */
	/*
	 * The SPF result for this message's sender and client, once evaluated
	 * (core/dnsplan.h): 0 not yet, else enum spf_result + 1. Evaluated once
	 * a message, at the first stage whose checks want it.
	 */
	uint8_t spf;
	/*
	 * The probes of greylist.spf_key (core/dnsplan.h): 0 not evaluated, or
	 * evaluated but a probe did not end (tried again at the next stage);
	 * CHECK_SPF_NARROW the sender's record authorised neither probe;
	 * CHECK_SPF_OPEN it authorised one (or both).
	 */
	uint8_t spf_open;
	bool spf_header_done; /* the message got its Received-SPF header (policy: one PREPEND a message) */
	/*
	 * The dnsbl check's result for this recipient (CHECK_DNSBL_*) and its
	 * score: how the dnsbl check hands its listing to the greylist check
	 * (greylist.apply "listed", dnsbl.allowlist_threshold). The dnsbl check
	 * writes it at every stage it runs and the greylist reads it later in
	 * the same stage, in check_ctx.stage_msg; each stage starts without it
	 * (pipeline_begin), so the policy protocol losing it between requests does no
	 * harm (each recipient scores again, from the resolver's cache). A
	 * shadow dnsbl leaves it UNSCORED (check_ctx.mode).
	 */
	uint8_t dnsbl;
	int16_t dnsbl_score;
} check_msg;

enum { CHECK_SPF_NARROW = 1, CHECK_SPF_OPEN = 2 };

/* check_msg.dnsbl. */
enum {
	CHECK_DNSBL_UNSCORED,    /* the dnsbl check did not score this recipient */
	CHECK_DNSBL_CLEAN,       /* scored between the two thresholds */
	CHECK_DNSBL_LISTED,      /* score at or above dnsbl.threshold */
	CHECK_DNSBL_ALLOWLISTED, /* score at or below a negative dnsbl.allowlist_threshold */
};

/* Everything a check may look at; read-only. */
typedef struct check_ctx {
	check_stage stage;
	const decide_facts *facts;
	const decide_txn *txn; /* the transaction's keys, prepared once per MAIL FROM */
	const check_msg *msg;  /* the message's state before this stage */
	/*
	 * The message's state as the checks before this one left it in this
	 * stage (what a check hands a later one: check_msg.dnsbl); NULL is read
	 * as msg. Set by pipeline_begin.
	 */
	const check_msg *stage_msg;
	/*
	 * The mode of the check being asked (the pipeline sets it before each
	 * call): what a shadow check hands a later one must not change what
	 * that one does (the dnsbl's score for the greylist).
	 */
	check_mode mode;
	int64_t now;    /* Unix seconds */
	int64_t now_ms; /* the same moment in milliseconds (the greylist's SQLite clock) */
	/* This stage's DNS answers (facts->dns): NULL when the stage asked none. */
	const struct dnsplan *dns;
} check_ctx;

/*
 * Most queries one check asks at one stage, and most it writes as effects:
 * the ratelimit check asks one per rule. Each slot costs a query (1.3 KB)
 * per check in every thread's pipeline_run (engine.c): 4 keeps it near 70 KB.
 */
#define CHECK_MAX_NEEDS 4
#define CHECK_MAX_EFFECTS 4
#define CHECK_DETAIL_MAX 1400
/* Room a check has to carry what needs() worked out over to decide(). */
#define CHECK_SCRATCH_MAX 2048
/* A Received-SPF header (RFC 7208 9.1) with its attacker-written envelope-from and helo fits: 998 at most. */
#define CHECK_HEADER_MAX 1000
/* Most placeholders a hook's arguments may hold. */
#define CHECK_HOOK_VALUES 4

/* A check's answer for one stage. action CONTINUE: no objection. */
typedef struct check_verdict {
	decide_action action;
	/* No later check runs: the transaction is whitelisted, or the recipient is a trap. */
	bool stop;
	/*
	 * Why, for the log line ("trap", "blocklisted", "whitelisted",
	 * "store-error"); NULL: nothing worth a line.
	 */
	const char *reason;
	bool quiet; /* log at debug level (a whitelisted transaction without a trap hit) */
	/*
	 * An error that recurs at every recipient while it lasts (a DNS list
	 * refusing all queries): the engine logs such lines of a check at
	 * most a few times in its interval, the others at debug level.
	 */
	bool log_limited;
	smtp_reply reply; /* for REJECT, TEMPFAIL, DISCARD (text only) */
	/*
	 * A header for the message ("X-Greylist: delayed 300 seconds ..."),
	 * "" for none: on CONTINUE only, never in shadow mode. The milter adds
	 * it at end of message, the policy server answers PREPEND.
	 */
	char header[CHECK_HEADER_MAX];
	char detail[CHECK_DETAIL_MAX]; /* appended to the log line: " key=... trap=..." */
	/* Set by the engine: the check that gave it, and what enforce mode does in shadow. */
	const char *check;
	decide_action enforce_action;
	check_mode mode;
} check_verdict;

/* A CHECK_KEY_LIST value: n strings (owned by the config); null: the key was null (nullable). */
typedef struct check_strlist {
	char **v;
	size_t n;
	bool null;
} check_strlist;

/* When an effect's store write applies. */
typedef enum {
	CHECK_EFFECT_ALWAYS,    /* in shadow mode too: a trap hit is recorded in dry-run */
	CHECK_EFFECT_ENFORCE,   /* only when the check enforces */
	CHECK_EFFECT_ON_ACCEPT, /* only when it enforces and the final verdict lets the recipient through */
	/*
	 * In every mode, when the final verdict lets the recipient through: a
	 * count of accepted mail (rate buckets, the relay check's networks), so
	 * that shadow mode counts what the site accepts and says when enforce
	 * would refuse.
	 */
	CHECK_EFFECT_COUNT_ACCEPTED
} check_effect_when;

typedef struct check_effects {
	query q[CHECK_MAX_EFFECTS]; /* store writes after the verdict */
	check_effect_when when[CHECK_MAX_EFFECTS];
	size_t nq;
	/* The message's state after this stage (starts as a copy of check_ctx.msg). */
	check_msg msg;
	/*
	 * Writes whose failure changes the verdict (store.on_error tempfail
	 * for a trap hit): the engine calls store_failed with the verdict.
	 */
	bool verdict_needs_writes;
	/*
	 * A hook to run when the check enforces (relay.notify): hook_argv's
	 * arguments with each %{hook_names[i]} replaced by hook_values[i]. The
	 * engine hands it to the hook runner (src/hook.h), which never blocks a
	 * worker. NULL hook_argv: none. The strings live as long as the stage.
	 */
	const check_strlist *hook_argv;
	const char *const *hook_names;
	const char *hook_values[CHECK_HOOK_VALUES];
	int64_t hook_timeout_ms; /* then killed */
	/*
	 * -1: the hook runs whenever the check enforces. Else the index in q
	 * of a QUERY_KV_PUT_NEW effect: the hook runs only if that write
	 * created its record, so that workers or hosts deciding the same thing
	 * at once run it once (the relay check's trip marker).
	 */
	int hook_gate;
} check_effects;

/*
 * One key of a check's own config section ("SECTION.NAME" in
 * spamtrapd.json), parsed by config.c into the check's conf struct with
 * the same types, bounds and error messages as every other key.
 */
typedef enum {
	CHECK_KEY_INT,
	CHECK_KEY_DURATION,
	CHECK_KEY_BOOL,
	CHECK_KEY_STRING,
	CHECK_KEY_ENUM,
	CHECK_KEY_LIST, /* a list of strings, into a check_strlist field */
	/*
	 * An object of strings ({"name": "text"}), into a check_strlist field
	 * as pairs: v[2i] a member's name, v[2i + 1] its value, in the file's
	 * order.
	 */
	CHECK_KEY_MAP
} check_key_type;

typedef struct check_key {
	const char *name;         /* within the section */
	check_key_type type;      /* INT and DURATION: an int64_t or int field; BOOL: bool; STRING: char *;
	                             LIST, MAP: check_strlist */
	const char *def;          /* the default, as JSON text: "\"5m\"", "10", "null" */
	int64_t min, max;         /* INT, DURATION: bounds; STRING: max is a length limit when set */
	const char *const *names; /* ENUM: the names in the order of the C enum (an int field) */
	bool nullable;            /* STRING: null means "not set" (a NULL field); LIST: null sets .null */
	size_t off, size;         /* the field in the check's conf struct */
} check_key;

#define CHECK_KEY_AT(type, member) .off = offsetof(type, member), .size = sizeof(((type *)0)->member)

typedef struct check_def {
	const char *name; /* the name in log lines and metrics, and its config section */
	unsigned stages;  /* CHECK_STAGE_* bits */
	/*
	 * SECTION.mode's default: traps and blocklist enforce; every check
	 * added later off, so that an upgrade changes nothing until the admin
	 * turns it on. no_mode: the check has no mode key (always enforce).
	 */
	check_mode default_mode;
	bool no_mode;
	/*
	 * late: needs() runs only once every check before it let the
	 * recipient through (a second store call), and its queries may write:
	 * the greylist's atomic step must not start a triplet for a recipient
	 * an earlier check refuses.
	 */
	bool late;
	/*
	 * The check's own config: conf_size bytes (0: the check reads the
	 * shared decide_policy instead), keys[nkeys] parsed into it, then
	 * compile (optional) checks what single keys cannot and derives what
	 * the request path needs; 0, or -1 with a message naming the key.
	 * conf_free (optional) releases what compile made; strings of STRING
	 * keys are freed by the config.
	 */
	size_t conf_size;
	const check_key *keys;
	size_t nkeys;
	int (*compile)(void *conf, char *err, size_t errlen);
	void (*conf_free)(void *conf);
	/*
	 * What to ask the store at this stage: append to q (at most
	 * CHECK_MAX_NEEDS) and return how many. Strings the queries point to
	 * must live as long as ctx (the txn's buffer, the config). scratch is
	 * not zeroed: set what decide() will read. Optional. These queries run
	 * before any check decides, whatever the verdict and the mode: they
	 * must only read (unless the check is late, see above). Writes (a bucket charged, a pass counted) are
	 * effects, applied after the verdict. The one exception is the trap
	 * check's count of a sender domain's networks: a trap recipient's
	 * verdict is final and recorded in every mode anyway.
	 */
	size_t (*needs)(const void *conf, const check_ctx *ctx, void *scratch, query *q);
	/*
	 * Optional, pure: the DNS answers this check wants at this stage,
	 * added to plan (core/dnsplan.h) before any check runs; the front end
	 * resolves them and the check reads them in ctx->dns. Asked only
	 * when the check runs at the stage (its mode is not off). ctx->txn is
	 * prepared; ctx->dns is NULL.
	 */
	void (*plan_dns)(const void *conf, const check_ctx *ctx, struct dnsplan *plan);
	/*
	 * The verdict from the answers to the queries needs() asked, written
	 * into *v, which arrives as "continue, nothing to log" (a verdict is
	 * large: it is filled in place, never returned by value).
	 */
	void (*decide)(const void *conf, const check_ctx *ctx, void *scratch, const query *answers,
	               size_t nanswers, check_verdict *v, check_effects *eff);
	/* Optional: *v as it is when the effects could not be written (verdict_needs_writes). */
	void (*store_failed)(const void *conf, check_verdict *v);
} check_def;

/* A verdict of no objection, nothing to log. */
check_verdict check_continue(void);
/* *v as "continue, nothing to log", without clearing its buffers. */
void check_verdict_reset(check_verdict *v);
/* Action, reason and reply (NULL: none) of *v. */
void check_verdict_set(check_verdict *v, decide_action action, const char *reason, const smtp_reply *reply);
/* Append to v->detail, within its room. */
void check_detail_add(check_verdict *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * value copied into buf for a detail's "name=value" field: blanks and '='
 * become '?' as in the log's own fields (log_safe_field), so that a SASL
 * name or a sender's quoted local part cannot write fields of its own
 * after ours (docs/security.md "Log injection"; the log masks control
 * characters and invalid UTF-8 itself; '<' and '>' stay: a detail field
 * is not framed by them). Returns buf.
 */
const char *check_field(const char *value, char *buf, size_t buflen);

const char *check_mode_name(check_mode m);

#endif
