/* whitelist: skip the checks after it for a whitelisted transaction (see whitelist.h). */
#include "core/checks/whitelist.h"

static bool authenticated(const decide_facts *f)
{
	return f->sasl_username && *f->sasl_username;
}

static void whitelist_decide(const void *conf, const check_ctx *ctx, void *scratch, const query *answers,
                             size_t nanswers, check_verdict *v, check_effects *eff)
{
	(void)conf;
	(void)scratch;
	(void)answers;
	(void)nanswers;
	(void)eff;
	/*
	 * No line: the blocklist check logged it at MAIL FROM, and an ordinary
	 * recipient is no news. A sender the client's SASL login verified does
	 * not stop the walk: the checks after this one that judge the account
	 * (relay, ratelimit) must see it, or a stolen password would pass them
	 * by writing the site's own whitelisted domain in MAIL FROM; the others
	 * skip authenticated clients themselves (greylist).
	 */
	v->stop = ctx->txn->whitelisted != WHITELIST_NONE ||
	          (ctx->txn->sender_trusted && !authenticated(ctx->facts));
}

const check_def check_whitelist = {
    .name = "whitelist",
    .stages = CHECK_STAGE_RCPT,
    .default_mode = CHECK_MODE_ENFORCE,
    .no_mode = true, /* it only ever lets mail through */
    .decide = whitelist_decide,
};
