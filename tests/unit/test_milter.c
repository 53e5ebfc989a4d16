/*
 * Unit tests of the milter front end: the libmilter callbacks driven
 * through a fake shim and a fake SMFICTX (no MTA, no socket), over a real
 * engine with a real SQLite store in a temporary folder.
 *
 * Each scenario is a named table row: config overrides, a script of
 * milter steps with the status and reply expected from each, the trap
 * recipients expected to be removed at end of message, and the blocklist
 * keys expected (not) to exist afterwards. Every scenario also checks that
 * every connection context was freed and no transaction holds a snapshot.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "config.h"
#include "engine.h"
#include "log.h"
#include "milter/milter.h"
#include "milter/milter_shim.h"

/* ---- the fake libmilter context and shim ---- */

#define MAX_MACROS 8
#define MAX_DELETED 8

struct smfi_str {
	void *priv;
	const char *macro_names[MAX_MACROS];
	char macro_values[MAX_MACROS][128];
	size_t nmacros;
	char reply[700]; /* "code xcode text" of the last setreply */
	char deleted[MAX_DELETED][600];
	size_t ndeleted;
	char symlist[8][64];
	bool fail_delrcpt;
	char header[300];      /* "index name: value" of the last insheader */
	char quarantined[600]; /* the reason of the last smfi_quarantine */
	bool fail_quarantine;
};

static void *fake_getpriv(SMFICTX *ctx)
{
	return ctx->priv;
}

static int fake_setpriv(SMFICTX *ctx, void *priv)
{
	ctx->priv = priv;
	return MI_SUCCESS;
}

static const char *fake_getsymval(SMFICTX *ctx, const char *name)
{
	for (size_t i = 0; i < ctx->nmacros; i++)
		if (strcmp(ctx->macro_names[i], name) == 0)
			return ctx->macro_values[i];
	return NULL;
}

static int fake_setreply(SMFICTX *ctx, const char *code, const char *xcode, const char *text)
{
	snprintf(ctx->reply, sizeof(ctx->reply), "%s %s %s", code, xcode ? xcode : "-", text);
	return MI_SUCCESS;
}

static int fake_delrcpt(SMFICTX *ctx, const char *rcpt)
{
	if (ctx->fail_delrcpt)
		return MI_FAILURE;
	assert_true(ctx->ndeleted < MAX_DELETED);
	snprintf(ctx->deleted[ctx->ndeleted++], sizeof(ctx->deleted[0]), "%s", rcpt);
	return MI_SUCCESS;
}

static int fake_setsymlist(SMFICTX *ctx, int stage, const char *macros)
{
	assert_true(stage >= 0 && stage < 8);
	snprintf(ctx->symlist[stage], sizeof(ctx->symlist[0]), "%s", macros);
	return MI_SUCCESS;
}

static int fake_insheader(SMFICTX *ctx, int index, const char *name, const char *value)
{
	snprintf(ctx->header, sizeof(ctx->header), "%d %s: %s", index, name, value);
	return MI_SUCCESS;
}

static int fake_quarantine(SMFICTX *ctx, const char *reason)
{
	if (ctx->fail_quarantine)
		return MI_FAILURE;
	snprintf(ctx->quarantined, sizeof(ctx->quarantined), "%s", reason);
	return MI_SUCCESS;
}

static const milter_shim fake_shim = {
    .getpriv = fake_getpriv,
    .setpriv = fake_setpriv,
    .getsymval = fake_getsymval,
    .setreply = fake_setreply,
    .delrcpt = fake_delrcpt,
    .setsymlist = fake_setsymlist,
    .insheader = fake_insheader,
    .quarantine = fake_quarantine,
};

/* Define a macro for the following steps; the fake owns a copy of the name. */
static void set_macro(SMFICTX *ctx, const char *name, size_t namelen, const char *value)
{
	for (size_t i = 0; i < ctx->nmacros; i++)
		if (strlen(ctx->macro_names[i]) == namelen &&
		    strncmp(ctx->macro_names[i], name, namelen) == 0) {
			snprintf(ctx->macro_values[i], sizeof(ctx->macro_values[0]), "%s", value);
			return;
		}
	assert_true(ctx->nmacros < MAX_MACROS);
	ctx->macro_names[ctx->nmacros] = strndup(name, namelen);
	snprintf(ctx->macro_values[ctx->nmacros++], sizeof(ctx->macro_values[0]), "%s", value);
}

static void free_macro_names(SMFICTX *ctx)
{
	for (size_t i = 0; i < ctx->nmacros; i++)
		free((char *)ctx->macro_names[i]);
	ctx->nmacros = 0;
}

/* What Postfix 3.7 offers at negotiation (milter_protocol = 6). */
#define POSTFIX_ACTIONS 0x1ffUL
#define POSTFIX_STEPS 0x1fffffUL

/* ---- an engine over a fresh SQLite file per test ---- */

typedef struct fixture {
	char dir[64];
	char config_path[128];
	char db_override[160];
	engine *eng;
	struct smfiDesc desc;
} fixture;

static const char BASE_CONFIG[] =
    "{\n"
    "  \"milter\": {\"listen\": null},\n"
    "  \"policy\": {\"listen\": null},\n"
    "  \"traps\": {\"addresses\": [\"trap@example.com\"], \"domains\": [\"trap.example.net\"]},\n"
    "  \"blocklist\": {\"keys\": [\"sender\", \"client_address\", \"sasl_username\"],\n"
    "                \"reject\": \"550 5.7.1 Blocklisted: 100% spam\"},\n"
    "  \"whitelist\": {\"domains\": [\"example.org\"], \"networks\": [\"198.51.100.0/24\"]},\n"
    "  \"log\": {\"target\": \"stderr\", \"level\": \"err\"}\n"
    "}\n";

static engine *engine_with(fixture *f, const char *const *overrides)
{
	const char *all[8];
	size_t n = 0;
	all[n++] = f->db_override;
	for (; overrides && overrides[n - 1]; n++) {
		assert_true(n < 8);
		all[n] = overrides[n - 1];
	}
	char err[2048];
	config *cfg = config_load(f->config_path, all, n, err, sizeof(err));
	if (!cfg)
		fail_msg("config: %s", err);
	engine *eng = engine_new(cfg, err, sizeof(err));
	assert_non_null(eng);
	if (engine_open_store(eng, err, sizeof(err)) < 0)
		fail_msg("store: %s", err);
	return eng;
}

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/test_milter.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->config_path, sizeof(f->config_path), "%s/spamtrapd.json", f->dir);
	snprintf(f->db_override, sizeof(f->db_override), "store.sqlite.path=%s/st.db", f->dir);
	FILE *fp = fopen(f->config_path, "w");
	assert_non_null(fp);
	fputs(BASE_CONFIG, fp);
	fclose(fp);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;
	unsigned open = milter_filter_connections();
	engine_free(f->eng);
	static const char *const files[] = {"st.db", "st.db-wal", "st.db-shm", "spamtrapd.json"};
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		char path[160];
		snprintf(path, sizeof(path), "%s/%s", f->dir, files[i]);
		unlink(path);
	}
	rmdir(f->dir);
	free(f);
	assert_int_equal(open, 0); /* last: a failure must not leave the folder behind */
	return 0;
}

static void start_filter(fixture *f, const char *const *overrides)
{
	f->eng = engine_with(f, overrides);
	milter_filter_init(f->eng, &fake_shim, &f->desc);
}

/* ---- scenario steps ---- */

typedef enum {
	OP_END,
	OP_CONNECT, /* negotiate + connect; arg: client IP */
	OP_HELO,
	OP_MACRO, /* arg: "name=value" for the following steps */
	OP_MAIL,
	OP_RCPT,
	OP_EOM,
	OP_ABORT,
	OP_CLOSE,
	OP_DATA,
} op_kind;

typedef struct step {
	op_kind op;
	const char *arg;
	sfsistat want;
	const char *reply; /* expected "code xcode text" when the step sets one */
} step;

#define MAX_STEPS 24
#define MAX_KEYS 4

typedef struct scenario {
	const char *name;
	const char *overrides[4];
	step steps[MAX_STEPS];
	const char *deleted[MAX_DELETED];      /* smfi_delrcpt calls, in order */
	const char *blocklisted[MAX_KEYS];     /* keys that must exist afterwards */
	const char *not_blocklisted[MAX_KEYS]; /* keys that must not */
} scenario;

static struct sockaddr_storage sockaddr_of(const char *ip)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, ip, &in4->sin_addr) == 1)
		in4->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1)
		in6->sin6_family = AF_INET6;
	else
		fail_msg("bad test address %s", ip);
	return ss;
}

static sfsistat do_connect(fixture *f, SMFICTX *ctx, const char *ip)
{
	unsigned long pf0 = 0, pf1 = 0, pf2 = 0, pf3 = 0;
	sfsistat s =
	    f->desc.xxfi_negotiate(ctx, POSTFIX_ACTIONS, POSTFIX_STEPS, 0, 0, &pf0, &pf1, &pf2, &pf3);
	assert_int_equal(s, SMFIS_CONTINUE);
	struct sockaddr_storage ss = sockaddr_of(ip);
	return f->desc.xxfi_connect(ctx, (char *)"[client]", (struct sockaddr *)&ss);
}

static sfsistat run_step(fixture *f, SMFICTX *ctx, const step *st)
{
	char arg[256];
	char *argv[2] = {arg, NULL};
	snprintf(arg, sizeof(arg), "%s", st->arg ? st->arg : "");
	switch (st->op) {
	case OP_CONNECT:
		return do_connect(f, ctx, st->arg);
	case OP_HELO:
		return f->desc.xxfi_helo(ctx, arg);
	case OP_MACRO: {
		const char *eq = strchr(arg, '=');
		assert_non_null(eq);
		set_macro(ctx, arg, (size_t)(eq - arg), eq + 1);
		return st->want;
	}
	case OP_MAIL:
		return f->desc.xxfi_envfrom(ctx, argv);
	case OP_RCPT:
		return f->desc.xxfi_envrcpt(ctx, argv);
	case OP_EOM:
		return f->desc.xxfi_eom(ctx);
	case OP_ABORT:
		return f->desc.xxfi_abort(ctx);
	case OP_CLOSE:
		return f->desc.xxfi_close(ctx);
	case OP_DATA:
		return f->desc.xxfi_data(ctx);
	case OP_END:
		break;
	}
	return SMFIS_CONTINUE;
}

static const char *op_name(op_kind op)
{
	static const char *const names[] = {"end",  "connect", "helo",  "macro", "mail",
	                                    "rcpt", "eom",     "abort", "close", "data"};
	return names[op];
}

static void check_keys(fixture *f, const scenario *sc)
{
	engine_snapshot *snap = engine_acquire(f->eng);
	store_entry e;
	for (size_t i = 0; i < MAX_KEYS && sc->blocklisted[i]; i++)
		if (store_get(engine_store(snap), sc->blocklisted[i], &e) != STORE_OK)
			fail_msg("%s: %s is not blocklisted", sc->name, sc->blocklisted[i]);
	for (size_t i = 0; i < MAX_KEYS && sc->not_blocklisted[i]; i++)
		if (store_get(engine_store(snap), sc->not_blocklisted[i], &e) != STORE_NOTFOUND)
			fail_msg("%s: %s is blocklisted", sc->name, sc->not_blocklisted[i]);
	engine_release(snap);
}

static void run_scenario(void **state, const scenario *sc)
{
	fixture *f = *state;
	start_filter(f, sc->overrides);
	SMFICTX ctx;
	memset(&ctx, 0, sizeof(ctx));
	size_t ndeleted = 0;
	char all_deleted[MAX_DELETED][600];
	for (size_t i = 0; i < MAX_STEPS && sc->steps[i].op != OP_END; i++) {
		const step *st = &sc->steps[i];
		ctx.reply[0] = '\0';
		sfsistat got = run_step(f, &ctx, st);
		if (got != st->want)
			fail_msg("%s: step %zu (%s %s): status %d, want %d", sc->name, i, op_name(st->op),
			         st->arg ? st->arg : "", got, st->want);
		if (st->reply && strcmp(ctx.reply, st->reply) != 0)
			fail_msg("%s: step %zu (%s): reply \"%s\", want \"%s\"", sc->name, i, op_name(st->op),
			         ctx.reply, st->reply);
		for (size_t d = 0; d < ctx.ndeleted; d++)
			memcpy(all_deleted[ndeleted++], ctx.deleted[d], sizeof(all_deleted[0]));
		ctx.ndeleted = 0;
		if (st->op == OP_CLOSE) {
			free_macro_names(&ctx);
			memset(&ctx, 0, sizeof(ctx));
		}
	}
	free_macro_names(&ctx);
	assert_null(ctx.priv);
	size_t want_deleted = 0;
	while (want_deleted < MAX_DELETED && sc->deleted[want_deleted])
		want_deleted++;
	if (ndeleted != want_deleted)
		fail_msg("%s: %zu recipients removed, want %zu", sc->name, ndeleted, want_deleted);
	for (size_t d = 0; d < ndeleted; d++)
		assert_string_equal(all_deleted[d], sc->deleted[d]);
	check_keys(f, sc);
	assert_int_equal(milter_filter_quiesce(0), 0);
}

#define CONNECT(ip)                                                                                          \
	{                                                                                                    \
		OP_CONNECT, ip, SMFIS_NOREPLY, NULL                                                          \
	}
#define HELO(name)                                                                                           \
	{                                                                                                    \
		OP_HELO, name, SMFIS_NOREPLY, NULL                                                           \
	}
#define MACRO(nv)                                                                                            \
	{                                                                                                    \
		OP_MACRO, nv, SMFIS_CONTINUE, NULL                                                           \
	}
#define MAIL(s, want, reply)                                                                                 \
	{                                                                                                    \
		OP_MAIL, s, want, reply                                                                      \
	}
#define RCPT(r, want, reply)                                                                                 \
	{                                                                                                    \
		OP_RCPT, r, want, reply                                                                      \
	}
#define EOM(want)                                                                                            \
	{                                                                                                    \
		OP_EOM, NULL, want, NULL                                                                     \
	}
#define ABORT                                                                                                \
	{                                                                                                    \
		OP_ABORT, NULL, SMFIS_CONTINUE, NULL                                                         \
	}
#define CLOSE                                                                                                \
	{                                                                                                    \
		OP_CLOSE, NULL, SMFIS_CONTINUE, NULL                                                         \
	}
#define DATA(want, reply)                                                                                    \
	{                                                                                                    \
		OP_DATA, NULL, want, reply                                                                   \
	}
#define OK SMFIS_CONTINUE
#define GREYLISTED "450 4.2.0 Greylisted, try again in 300 seconds"

#define BLOCKED "550 5.7.1 Blocklisted: 100%% spam"

static const scenario scenarios[] = {
    {"trap hit, then the sender is rejected at MAIL FROM in the next transaction",
     {NULL},
     {CONNECT("192.0.2.7"), HELO("bad.example"), MACRO("i=QID1"), MAIL("<spam@bad.example>", OK, NULL),
      RCPT("<trap@example.com>", OK, NULL), EOM(SMFIS_DISCARD),
      MAIL("<spam@bad.example>", SMFIS_REJECT, BLOCKED),
      MAIL("<other@elsewhere.example>", SMFIS_REJECT, BLOCKED), CLOSE},
     {NULL},
     {"spam@bad.example", "192.0.2.7"},
     {"helo:bad.example"}},
    {"blocklisted client is rejected on a new connection too",
     {NULL},
     {CONNECT("192.0.2.7"), MAIL("<spam@bad.example>", OK, NULL), RCPT("<Trap+x@Example.COM>", OK, NULL),
      ABORT, CLOSE, CONNECT("192.0.2.7"), HELO("x"), MAIL("<new@new.example>", SMFIS_REJECT, BLOCKED), CLOSE},
     {NULL},
     {"spam@bad.example", "192.0.2.7"},
     {NULL}},
    {"one trap and two real recipients: both get it, the trap copy is removed",
     {NULL},
     {CONNECT("192.0.2.8"), MAIL("<s@bad.example>", OK, NULL), RCPT("<alice@sink.test>", OK, NULL),
      RCPT("<Trap+tag@example.com>", OK, NULL), RCPT("<bob@sink.test>", OK, NULL), EOM(OK), CLOSE},
     {"<Trap+tag@example.com>"},
     {"s@bad.example", "192.0.2.8"},
     {NULL}},
    {"discard-all drops the whole mixed message",
     {"traps.on_mixed=discard-all"},
     {CONNECT("192.0.2.8"), MAIL("<s@bad.example>", OK, NULL), RCPT("<alice@sink.test>", OK, NULL),
      RCPT("<x@trap.example.net>", OK, NULL), RCPT("<bob@sink.test>", OK, NULL), EOM(SMFIS_DISCARD), CLOSE},
     {NULL},
     {"s@bad.example"},
     {NULL}},
    {"two traps alone: message discarded, nothing removed",
     {NULL},
     {CONNECT("192.0.2.8"), MAIL("<s@bad.example>", OK, NULL), RCPT("<trap@example.com>", OK, NULL),
      RCPT("<a@trap.example.net>", OK, NULL), EOM(SMFIS_DISCARD), CLOSE},
     {NULL},
     {"s@bad.example"},
     {NULL}},
    {"action reject rejects the trap recipient only",
     {"traps.action=reject"},
     {CONNECT("192.0.2.9"), MAIL("<s@bad.example>", OK, NULL),
      RCPT("<trap@example.com>", SMFIS_REJECT, "550 5.7.1 Recipient address rejected"),
      RCPT("<alice@sink.test>", OK, NULL), EOM(OK), CLOSE},
     {NULL},
     {"s@bad.example", "192.0.2.9"},
     {NULL}},
    {"action accept delivers to the trap and still blocklists",
     {"traps.action=accept"},
     {CONNECT("192.0.2.9"), MAIL("<s@bad.example>", OK, NULL), RCPT("<trap@example.com>", OK, NULL), EOM(OK),
      MAIL("<s@bad.example>", SMFIS_REJECT, BLOCKED), CLOSE},
     {NULL},
     {"s@bad.example"},
     {NULL}},
    {"dry-run records the hit but lets everything through",
     {"mode=dry-run"},
     {CONNECT("192.0.2.10"), MAIL("<s@bad.example>", OK, NULL), RCPT("<trap@example.com>", OK, NULL),
      RCPT("<alice@sink.test>", OK, NULL), EOM(OK), MAIL("<s@bad.example>", OK, NULL), ABORT, CLOSE},
     {NULL},
     {"s@bad.example", "192.0.2.10"},
     {NULL}},
    {"bounce to a trap (traps.null_sender ignore): the copy is dropped, nothing is recorded",
     {NULL},
     {CONNECT("192.0.2.11"), MAIL("<>", OK, NULL), RCPT("<trap@example.com>", OK, NULL), EOM(SMFIS_DISCARD),
      MAIL("<>", OK, NULL), CLOSE},
     {NULL},
     {NULL},
     {"192.0.2.11", "<>"}},
    {"null_sender client: a bounce to a trap blocks the client, never <>",
     {"traps.null_sender=client"},
     {CONNECT("192.0.2.11"), MAIL("<>", OK, NULL), RCPT("<trap@example.com>", OK, NULL), EOM(SMFIS_DISCARD),
      MAIL("<>", SMFIS_REJECT, BLOCKED), CLOSE},
     {NULL},
     {"192.0.2.11"},
     {"<>"}},
    {"SASL client: the account is blocklisted, its shared client address is not",
     {NULL},
     {CONNECT("192.0.2.12"), MACRO("{auth_authen}=alice"), MAIL("<alice@good.example>", OK, NULL),
      RCPT("<trap@example.com>", OK, NULL), EOM(SMFIS_DISCARD), CLOSE},
     {NULL},
     {"sasl:alice", "alice@good.example"},
     {"192.0.2.12"}},
    {"forged whitelisted sender domain: the client is blocklisted, the sender is not",
     {NULL},
     {CONNECT("192.0.2.13"), MAIL("<boss@example.org>", OK, NULL), RCPT("<trap@example.com>", OK, NULL),
      EOM(SMFIS_DISCARD), MAIL("<boss@example.org>", SMFIS_REJECT, BLOCKED), CLOSE},
     {NULL},
     {"192.0.2.13"},
     {"boss@example.org"}},
    {"authenticated whitelisted sender domain: the account is blocklisted, not the sender or client",
     {NULL},
     {CONNECT("192.0.2.13"), MACRO("{auth_authen}=boss"), MAIL("<boss@example.org>", OK, NULL),
      RCPT("<trap@example.com>", OK, NULL), EOM(SMFIS_DISCARD),
      MAIL("<boss@example.org>", SMFIS_REJECT, BLOCKED), CLOSE},
     {NULL},
     {"sasl:boss"},
     {"boss@example.org", "192.0.2.13"}},
    {"discard-all, authenticated whitelisted sender: only the trap copy is removed",
     {"traps.on_mixed=discard-all"},
     {CONNECT("192.0.2.14"), MACRO("{auth_authen}=boss14"), MAIL("<boss14@example.org>", OK, NULL),
      RCPT("<alice@sink.test>", OK, NULL), RCPT("<trap@example.com>", OK, NULL), EOM(OK), CLOSE},
     {"<trap@example.com>"},
     {"sasl:boss14"},
     {"boss14@example.org", "192.0.2.14"}},
    {"whitelisted network: never blocklisted",
     {NULL},
     {CONNECT("198.51.100.5"), MAIL("<x@bad.example>", OK, NULL), RCPT("<trap@example.com>", OK, NULL),
      EOM(OK), CLOSE},
     {NULL},
     {NULL},
     {"x@bad.example", "198.51.100.5"}},
    {"IPv6 client aggregated to its /64",
     {NULL},
     {CONNECT("2001:db8:1:2::99"), MAIL("<v6@bad.example>", OK, NULL), RCPT("<trap@example.com>", OK, NULL),
      ABORT, CLOSE, CONNECT("2001:db8:1:2::1"), MAIL("<fresh@new.example>", SMFIS_REJECT, BLOCKED), CLOSE},
     {NULL},
     {"2001:db8:1:2::/64"},
     {NULL}},
    {"an IPv4-mapped IPv6 client is its IPv4 address, as with inet_ntop's text",
     {NULL},
     {CONNECT("::ffff:192.0.2.77"), MAIL("<mapped@bad.example>", OK, NULL),
      RCPT("<trap@example.com>", OK, NULL), ABORT, CLOSE, CONNECT("192.0.2.77"),
      MAIL("<fresh@new.example>", SMFIS_REJECT, BLOCKED), CLOSE},
     {NULL},
     {"192.0.2.77"},
     {"::ffff:192.0.2.77"}},
    {"close in the middle of a transaction frees everything",
     {NULL},
     {CONNECT("192.0.2.14"), MAIL("<a@good.example>", OK, NULL), RCPT("<alice@sink.test>", OK, NULL),
      RCPT("<trap@example.com>", OK, NULL), CLOSE},
     {NULL},
     {"a@good.example"},
     {NULL}},
    {"second message on a connection starts clean",
     {NULL},
     {CONNECT("192.0.2.15"), MAIL("<a@good.example>", OK, NULL), RCPT("<alice@sink.test>", OK, NULL), EOM(OK),
      MAIL("<b@good.example>", OK, NULL), RCPT("<bob@sink.test>", OK, NULL), EOM(OK), CLOSE},
     {NULL},
     {NULL},
     {"a@good.example", "b@good.example", "192.0.2.15"}},
    {"a quoted local part is the same mailbox: one key, as the policy protocol spells it",
     {NULL},
     {CONNECT("192.0.2.17"), MAIL("<\"spam\"@bad.example>", OK, NULL), RCPT("<trap@example.com>", OK, NULL),
      EOM(SMFIS_DISCARD), CLOSE, CONNECT("203.0.113.17"), MAIL("<spam@bad.example>", SMFIS_REJECT, BLOCKED),
      MAIL("<\"sp\\am\"@Bad.Example>", SMFIS_REJECT, BLOCKED), CLOSE},
     {NULL},
     {"spam@bad.example"},
     {"\"spam\"@bad.example"}},
    {"a quoted local part with a blank: Postfix's internal form x y@d",
     {NULL},
     {CONNECT("192.0.2.18"), MAIL("<\"x y\"@bad.example>", OK, NULL), RCPT("<alice@sink.test>", OK, NULL),
      RCPT("<\"trap\"@example.com>", OK, NULL), EOM(OK), CLOSE},
     {"<\"trap\"@example.com>"},
     {"x y@bad.example", "192.0.2.18"},
     {"\"x y\"@bad.example"}},
    {"RCPT and end of message outside a transaction continue",
     {NULL},
     {CONNECT("192.0.2.16"), RCPT("<trap@example.com>", OK, NULL), EOM(OK), ABORT, CLOSE},
     {NULL},
     {NULL},
     {"192.0.2.16"}},
    {"greylist: a new triplet defers that recipient only; a whitelisted one and a trap are judged on their "
     "own",
     {"greylist.mode=enforce", "greylist.recipients=[\"postmaster@\"]"},
     {CONNECT("192.0.2.30"), MAIL("<news@list.example>", OK, NULL),
      RCPT("<alice@sink.test>", SMFIS_TEMPFAIL, GREYLISTED), RCPT("<postmaster@sink.test>", OK, NULL),
      RCPT("<trap@example.com>", OK, NULL), RCPT("<alice@sink.test>", SMFIS_TEMPFAIL, GREYLISTED), EOM(OK),
      CLOSE},
     {"<trap@example.com>"},
     {"news@list.example", "192.0.2.30"},
     {NULL}},
    {"greylist: the null sender passes RCPT TO (callouts) and is deferred at DATA",
     {"greylist.mode=enforce"},
     {CONNECT("192.0.2.31"), MAIL("<>", OK, NULL), RCPT("<alice@sink.test>", OK, NULL),
      DATA(SMFIS_TEMPFAIL, GREYLISTED), MAIL("<>", OK, NULL), RCPT("<postmaster@sink.test>", OK, NULL), ABORT,
      MAIL("<bob@sender.example>", OK, NULL), DATA(OK, NULL), ABORT, CLOSE},
     {NULL},
     {NULL},
     {"192.0.2.31"}},
    {"greylist: authenticated and whitelisted clients are not greylisted",
     {"greylist.mode=enforce"},
     {CONNECT("198.51.100.9"), MAIL("<a@sender.example>", OK, NULL), RCPT("<alice@sink.test>", OK, NULL),
      ABORT, CLOSE, CONNECT("203.0.113.9"), MACRO("{auth_authen}=carol"),
      MAIL("<a@sender.example>", OK, NULL), RCPT("<alice@sink.test>", OK, NULL), ABORT, CLOSE},
     {NULL},
     {NULL},
     {NULL}},
};

static void test_scenarios(void **state)
{
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		if (i > 0) {
			teardown(state);
			setup(state);
		}
		run_scenario(state, &scenarios[i]);
	}
}

/* ---- negotiation ---- */

typedef struct negotiate_case {
	const char *name;
	unsigned long actions, steps; /* offered by the MTA */
	sfsistat want;
	unsigned long want_actions, want_steps;
	bool want_symlist;
} negotiate_case;

static const negotiate_case negotiate_cases[] = {
    {"Postfix 3.7: the least work, no replies for connect and HELO", POSTFIX_ACTIONS, POSTFIX_STEPS,
     SMFIS_CONTINUE, SMFIF_DELRCPT | SMFIF_SETSYMLIST,
     SMFIP_NODATA | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOBODY | SMFIP_NOUNKNOWN | SMFIP_NR_CONN |
         SMFIP_NR_HELO,
     true},
    {"an old MTA: only what it offers, no macro lists", SMFIF_DELRCPT | SMFIF_ADDHDRS,
     SMFIP_NOHDRS | SMFIP_NOBODY | SMFIP_NOEOH, SMFIS_CONTINUE, SMFIF_DELRCPT,
     SMFIP_NOHDRS | SMFIP_NOBODY | SMFIP_NOEOH, false},
    {"an MTA that cannot remove recipients is refused", SMFIF_ADDHDRS, POSTFIX_STEPS, SMFIS_REJECT, 0, 0,
     false},
};

static void test_negotiate(void **state)
{
	fixture *f = *state;
	start_filter(f, NULL);
	for (size_t i = 0; i < sizeof(negotiate_cases) / sizeof(negotiate_cases[0]); i++) {
		const negotiate_case *nc = &negotiate_cases[i];
		SMFICTX ctx;
		memset(&ctx, 0, sizeof(ctx));
		unsigned long pf0 = 0, pf1 = 0, pf2 = 0, pf3 = 0;
		sfsistat s =
		    f->desc.xxfi_negotiate(&ctx, nc->actions, nc->steps, 0, 0, &pf0, &pf1, &pf2, &pf3);
		if (s != nc->want)
			fail_msg("%s: status %d", nc->name, s);
		if (s == SMFIS_CONTINUE && (pf0 != nc->want_actions || pf1 != nc->want_steps))
			fail_msg("%s: actions 0x%lx steps 0x%lx", nc->name, pf0, pf1);
		if (nc->want_symlist) {
			assert_string_equal(ctx.symlist[SMFIM_ENVFROM], "i {auth_authen}");
			assert_string_equal(ctx.symlist[SMFIM_ENVRCPT], "i");
			assert_string_equal(ctx.symlist[SMFIM_EOM], "i");
			assert_string_equal(ctx.symlist[SMFIM_CONNECT], "");
		} else {
			assert_string_equal(ctx.symlist[SMFIM_ENVFROM], "");
		}
		/* libmilter calls close on every path, also after a refused negotiation. */
		f->desc.xxfi_close(&ctx);
		assert_null(ctx.priv);
	}
}

/* Without NR_CONN/NR_HELO negotiated, connect and HELO must answer CONTINUE. */
static void test_replies_without_no_reply_steps(void **state)
{
	fixture *f = *state;
	start_filter(f, NULL);
	SMFICTX ctx;
	memset(&ctx, 0, sizeof(ctx));
	unsigned long pf0, pf1, pf2, pf3;
	assert_int_equal(
	    f->desc.xxfi_negotiate(&ctx, SMFIF_DELRCPT, SMFIP_NOBODY, 0, 0, &pf0, &pf1, &pf2, &pf3),
	    SMFIS_CONTINUE);
	struct sockaddr_storage ss = sockaddr_of("192.0.2.20");
	assert_int_equal(f->desc.xxfi_connect(&ctx, (char *)"h", (struct sockaddr *)&ss), SMFIS_CONTINUE);
	assert_int_equal(f->desc.xxfi_helo(&ctx, (char *)"h.example"), SMFIS_CONTINUE);
	f->desc.xxfi_close(&ctx);
	/* No negotiation at all (an old libmilter): connect allocates the context. */
	memset(&ctx, 0, sizeof(ctx));
	assert_int_equal(f->desc.xxfi_connect(&ctx, (char *)"h", NULL), SMFIS_CONTINUE);
	assert_non_null(ctx.priv);
	f->desc.xxfi_close(&ctx);
	assert_null(ctx.priv);
}

/* milter_stop's quiesce: in-flight transactions finish, new ones get a 4xx. */
static void test_quiesce(void **state)
{
	fixture *f = *state;
	start_filter(f, NULL);
	SMFICTX a, b;
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	char sender[] = "<a@good.example>";
	char *argv[] = {sender, NULL};
	do_connect(f, &a, "192.0.2.30");
	do_connect(f, &b, "192.0.2.31");
	assert_int_equal(f->desc.xxfi_envfrom(&a, argv), SMFIS_CONTINUE);
	assert_int_equal(milter_filter_quiesce(50), 1);
	assert_int_equal(f->desc.xxfi_envfrom(&b, argv), SMFIS_TEMPFAIL);
	assert_string_equal(b.reply, "451 4.3.2 Service shutting down, try again later");
	assert_int_equal(f->desc.xxfi_eom(&a), SMFIS_CONTINUE);
	assert_int_equal(milter_filter_quiesce(0), 0);
	f->desc.xxfi_close(&a);
	f->desc.xxfi_close(&b);
}

/* Strings from the MTA are capped where they are copied; over-long ones are judged, not truncated. */
static void test_oversized_input(void **state)
{
	fixture *f = *state;
	start_filter(f, NULL);
	SMFICTX ctx;
	memset(&ctx, 0, sizeof(ctx));
	do_connect(f, &ctx, "192.0.2.40");
	char helo[5000];
	memset(helo, 'h', sizeof(helo) - 1);
	helo[sizeof(helo) - 1] = '\0';
	f->desc.xxfi_helo(&ctx, helo);
	char sender[3000];
	memset(sender, 'a', sizeof(sender) - 1);
	memcpy(sender + sizeof(sender) - 14, "@bad.example>", 14);
	sender[0] = '<';
	char *argv[] = {sender, NULL};
	assert_int_equal(f->desc.xxfi_envfrom(&ctx, argv), SMFIS_CONTINUE);
	char rcpt[3000];
	memset(rcpt, 'r', sizeof(rcpt) - 1);
	rcpt[sizeof(rcpt) - 1] = '\0';
	argv[0] = rcpt;
	assert_int_equal(f->desc.xxfi_envrcpt(&ctx, argv), SMFIS_CONTINUE);
	set_macro(&ctx, "i", 1,
	          "QUEUEID-THAT-IS-FAR-TOO-LONG-FOR-ANY-POSTFIX-QUEUE-ID-0123456789-0123456789");
	assert_int_equal(f->desc.xxfi_eom(&ctx), SMFIS_CONTINUE);
	f->desc.xxfi_close(&ctx);
	free_macro_names(&ctx);
}

/* If Postfix refuses to remove the trap, the message still goes out: never lose mail. */
static void test_delrcpt_failure_keeps_the_message(void **state)
{
	fixture *f = *state;
	start_filter(f, NULL);
	SMFICTX ctx;
	memset(&ctx, 0, sizeof(ctx));
	char sender[] = "<s@bad.example>", alice[] = "<alice@sink.test>", trap[] = "<trap@example.com>";
	char *argv[] = {sender, NULL};
	do_connect(f, &ctx, "192.0.2.50");
	assert_int_equal(f->desc.xxfi_envfrom(&ctx, argv), SMFIS_CONTINUE);
	argv[0] = alice;
	assert_int_equal(f->desc.xxfi_envrcpt(&ctx, argv), SMFIS_CONTINUE);
	argv[0] = trap;
	assert_int_equal(f->desc.xxfi_envrcpt(&ctx, argv), SMFIS_CONTINUE);
	ctx.fail_delrcpt = true;
	assert_int_equal(f->desc.xxfi_eom(&ctx), SMFIS_CONTINUE);
	assert_int_equal(ctx.ndeleted, 0);
	f->desc.xxfi_close(&ctx);
}

/* Setup errors are reported into the caller's buffer before libmilter is touched. */
static void test_setup_errors(void **state)
{
	fixture *f = *state;
	f->eng = engine_with(f, NULL);
	static const struct {
		const char *name, *listen, *want;
	} cases[] = {
	    {"no milter.listen", NULL, "milter.listen is not set"},
	    {"unix socket in a missing folder", "unix:/nonexistent-spamtrapd-dir/milter.sock",
	     "directory /nonexistent-spamtrapd-dir does not exist"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		config cfg;
		memset(&cfg, 0, sizeof(cfg));
		cfg.milter.listen = (char *)cases[i].listen;
		char err[256] = "";
		assert_int_equal(milter_setup(f->eng, &cfg, err, sizeof(err)), -1);
		if (!strstr(err, cases[i].want))
			fail_msg("%s: error \"%s\"", cases[i].name, err);
	}
}

/* With the greylist on: the DATA step for the null sender, the right to add headers for its header. */
static void test_negotiate_greylist(void **state)
{
	fixture *f = *state;
	static const char *const on[] = {"greylist.mode=shadow", "greylist.header=true", NULL};
	SMFICTX ctx;
	unsigned long pf0 = 0, pf1 = 0, pf2 = 0, pf3 = 0;

	start_filter(f, on);
	memset(&ctx, 0, sizeof(ctx));
	assert_int_equal(
	    f->desc.xxfi_negotiate(&ctx, POSTFIX_ACTIONS, POSTFIX_STEPS, 0, 0, &pf0, &pf1, &pf2, &pf3),
	    SMFIS_CONTINUE);
	assert_int_equal(pf0, SMFIF_DELRCPT | SMFIF_SETSYMLIST | SMFIF_ADDHDRS);
	assert_int_equal(pf1 & SMFIP_NODATA, 0);
	assert_int_not_equal(pf1 & SMFIP_NOBODY, 0);
	f->desc.xxfi_close(&ctx);
}

/* With the spf check enforcing and its header wanted: the right to add headers (Received-SPF); not otherwise.
 */
static void test_negotiate_spf(void **state)
{
	fixture *f = *state;
	static const char *const on[] = {"spf.mode=enforce", NULL};
	SMFICTX ctx;
	unsigned long pf0 = 0, pf1 = 0, pf2 = 0, pf3 = 0;

	start_filter(f, on);
	memset(&ctx, 0, sizeof(ctx));
	assert_int_equal(
	    f->desc.xxfi_negotiate(&ctx, POSTFIX_ACTIONS, POSTFIX_STEPS, 0, 0, &pf0, &pf1, &pf2, &pf3),
	    SMFIS_CONTINUE);
	assert_int_equal(pf0, SMFIF_DELRCPT | SMFIF_SETSYMLIST | SMFIF_ADDHDRS);
	f->desc.xxfi_close(&ctx);
}

static void test_negotiate_spf_no_header(void **state)
{
	fixture *f = *state;
	static const char *const no_header[] = {"spf.mode=enforce", "spf.header=false", NULL};
	static const char *const shadow[] = {"spf.mode=shadow", NULL};
	SMFICTX ctx;
	unsigned long pf0 = 0, pf1 = 0, pf2 = 0, pf3 = 0;

	start_filter(f, no_header);
	memset(&ctx, 0, sizeof(ctx));
	assert_int_equal(
	    f->desc.xxfi_negotiate(&ctx, POSTFIX_ACTIONS, POSTFIX_STEPS, 0, 0, &pf0, &pf1, &pf2, &pf3),
	    SMFIS_CONTINUE);
	assert_int_equal(pf0, SMFIF_DELRCPT | SMFIF_SETSYMLIST);
	f->desc.xxfi_close(&ctx);
	engine_free(f->eng);
	start_filter(f, shadow);
	memset(&ctx, 0, sizeof(ctx));
	assert_int_equal(
	    f->desc.xxfi_negotiate(&ctx, POSTFIX_ACTIONS, POSTFIX_STEPS, 0, 0, &pf0, &pf1, &pf2, &pf3),
	    SMFIS_CONTINUE);
	assert_int_equal(pf0, SMFIF_DELRCPT | SMFIF_SETSYMLIST);
	f->desc.xxfi_close(&ctx);
}

/* A triplet that passes (delay 0 here) gets its header once, first in the message, at end of message. */
static void test_greylist_header(void **state)
{
	fixture *f = *state;
	static const char *const on[] = {"greylist.mode=enforce", "greylist.header=true", "greylist.delay=0s",
	                                 NULL};
	char rcpt1[] = "<alice@sink.test>", rcpt2[] = "<bob@sink.test>", from[] = "<a@sender.example>";
	char *argv[2] = {from, NULL};
	SMFICTX ctx;

	start_filter(f, on);
	memset(&ctx, 0, sizeof(ctx));
	do_connect(f, &ctx, "192.0.2.40");
	assert_int_equal(f->desc.xxfi_envfrom(&ctx, argv), SMFIS_CONTINUE);
	argv[0] = rcpt1;
	assert_int_equal(f->desc.xxfi_envrcpt(&ctx, argv), SMFIS_CONTINUE);
	argv[0] = rcpt2;
	assert_int_equal(f->desc.xxfi_envrcpt(&ctx, argv), SMFIS_CONTINUE);
	assert_int_equal(f->desc.xxfi_eom(&ctx), SMFIS_CONTINUE);
	if (strncmp(ctx.header, "0 X-Greylist: delayed 0 seconds by spamtrapd; ", 46) != 0)
		fail_msg("header: \"%s\"", ctx.header);
	/* The next message of the passed triplets: no header. */
	ctx.header[0] = '\0';
	argv[0] = from;
	assert_int_equal(f->desc.xxfi_envfrom(&ctx, argv), SMFIS_CONTINUE);
	argv[0] = rcpt1;
	assert_int_equal(f->desc.xxfi_envrcpt(&ctx, argv), SMFIS_CONTINUE);
	assert_int_equal(f->desc.xxfi_eom(&ctx), SMFIS_CONTINUE);
	assert_string_equal(ctx.header, "");
	f->desc.xxfi_close(&ctx);
	free_macro_names(&ctx);
}

/* One message of an authenticated session from client ip; the status of its end of message. */
static sfsistat relay_message(fixture *f, SMFICTX *ctx, const char *ip, unsigned long *granted)
{
	char from[] = "<alice@example.com>", rcpt[] = "<friend@sink.test>";
	char *argv[2] = {from, NULL};
	unsigned long pf1 = 0, pf2 = 0, pf3 = 0;
	struct sockaddr_storage ss = sockaddr_of(ip);
	sfsistat s;

	memset(ctx, 0, sizeof(*ctx));
	assert_int_equal(
	    f->desc.xxfi_negotiate(ctx, POSTFIX_ACTIONS, POSTFIX_STEPS, 0, 0, granted, &pf1, &pf2, &pf3),
	    SMFIS_CONTINUE);
	f->desc.xxfi_connect(ctx, (char *)"[client]", (struct sockaddr *)&ss);
	set_macro(ctx, "{auth_authen}", 13, "alice");
	assert_int_equal(f->desc.xxfi_envfrom(ctx, argv), SMFIS_CONTINUE);
	argv[0] = rcpt;
	assert_int_equal(f->desc.xxfi_envrcpt(ctx, argv), SMFIS_CONTINUE); /* held, not refused */
	s = f->desc.xxfi_eom(ctx);
	return s;
}

/* relay.action hold: the milter asks for the quarantine right, and quarantines at end of message. */
static void test_relay_hold(void **state)
{
	fixture *f = *state;
	static const char *const on[] = {"relay.mode=enforce", "relay.max_networks=1", "relay.action=hold",
	                                 NULL};
	unsigned long granted = 0;
	SMFICTX ctx;

	start_filter(f, on);
	assert_int_equal(relay_message(f, &ctx, "192.0.2.50", &granted), SMFIS_CONTINUE);
	assert_int_not_equal(granted & SMFIF_QUARANTINE, 0);
	assert_string_equal(ctx.quarantined, "");
	f->desc.xxfi_close(&ctx);
	free_macro_names(&ctx);
	/* a second network: over max_networks 1, held */
	assert_int_equal(relay_message(f, &ctx, "203.0.113.50", &granted), SMFIS_CONTINUE);
	assert_string_equal(ctx.quarantined, "Too many client networks for this account");
	f->desc.xxfi_close(&ctx);
	free_macro_names(&ctx);
	/* a quarantine the MTA refuses: tempfailed, never delivered */
	memset(&ctx, 0, sizeof(ctx));
	ctx.fail_quarantine = true;
	{
		char from[] = "<alice@example.com>", rcpt[] = "<friend@sink.test>";
		char *argv[2] = {from, NULL};

		do_connect(f, &ctx, "198.18.0.50");
		set_macro(&ctx, "{auth_authen}", 13, "alice");
		assert_int_equal(f->desc.xxfi_envfrom(&ctx, argv), SMFIS_CONTINUE);
		argv[0] = rcpt;
		assert_int_equal(f->desc.xxfi_envrcpt(&ctx, argv), SMFIS_CONTINUE);
		assert_int_equal(f->desc.xxfi_eom(&ctx), SMFIS_TEMPFAIL);
	}
	f->desc.xxfi_close(&ctx);
	free_macro_names(&ctx);
}

int main(void)
{
	log_open("test_milter", LOG_TARGET_STDERR, LOG_MAIL, LOG_ERR);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_scenarios, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_negotiate, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_negotiate_greylist, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_negotiate_spf, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_negotiate_spf_no_header, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_greylist_header, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_relay_hold, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_replies_without_no_reply_steps, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_quiesce, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_oversized_input, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_delrcpt_failure_keeps_the_message, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_setup_errors, setup, teardown),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	log_close();
	return rc;
}
