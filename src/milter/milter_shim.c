/*
 * milter_shim: the libmilter table of milter_shim.h. libmilter's prototypes
 * predate const; it copies or only reads every string passed here, so the
 * casts below are safe.
 */
#include "milter/milter_shim.h"

static void *shim_getpriv(SMFICTX *ctx)
{
	return smfi_getpriv(ctx);
}

static int shim_setpriv(SMFICTX *ctx, void *priv)
{
	return smfi_setpriv(ctx, priv);
}

static const char *shim_getsymval(SMFICTX *ctx, const char *name)
{
	return smfi_getsymval(ctx, (char *)name);
}

static int shim_setreply(SMFICTX *ctx, const char *code, const char *xcode, const char *text)
{
	return smfi_setreply(ctx, (char *)code, (char *)xcode, (char *)text);
}

static int shim_delrcpt(SMFICTX *ctx, const char *rcpt)
{
	return smfi_delrcpt(ctx, (char *)rcpt);
}

static int shim_setsymlist(SMFICTX *ctx, int stage, const char *macros)
{
	return smfi_setsymlist(ctx, stage, (char *)macros);
}

static int shim_quarantine(SMFICTX *ctx, const char *reason)
{
	return smfi_quarantine(ctx, (char *)reason);
}

static int shim_insheader(SMFICTX *ctx, int index, const char *name, const char *value)
{
	return smfi_insheader(ctx, index, (char *)name, (char *)value);
}

const milter_shim milter_shim_libmilter = {
    .getpriv = shim_getpriv,
    .setpriv = shim_setpriv,
    .getsymval = shim_getsymval,
    .setreply = shim_setreply,
    .delrcpt = shim_delrcpt,
    .setsymlist = shim_setsymlist,
    .insheader = shim_insheader,
    .quarantine = shim_quarantine,
};
