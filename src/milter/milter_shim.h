/*
 * milter_shim: the seam between the filter and libmilter.
 *
 * The filter (milter.c) calls libmilter only through a milter_shim, a table
 * of the few smfi_* functions its callbacks need. In the daemon the table
 * forwards to libmilter (milter_shim_libmilter); unit tests pass their own
 * table and a fake SMFICTX and call the callbacks directly, with no MTA
 * and no socket (tests/unit/test_milter.c), the way OpenDKIM's test suite
 * drives its filter.
 */
#ifndef SPAMTRAPD_MILTER_SHIM_H
#define SPAMTRAPD_MILTER_SHIM_H

#include <libmilter/mfapi.h>

#include "engine.h"

typedef struct milter_shim {
	void *(*getpriv)(SMFICTX *ctx);
	int (*setpriv)(SMFICTX *ctx, void *priv);
	/* A macro's value for the current stage, or NULL ("i", "{auth_authen}"). */
	const char *(*getsymval)(SMFICTX *ctx, const char *name);
	/* Each returns MI_SUCCESS or MI_FAILURE, as libmilter does. */
	int (*setreply)(SMFICTX *ctx, const char *code, const char *xcode, const char *text);
	int (*delrcpt)(SMFICTX *ctx, const char *rcpt);
	int (*setsymlist)(SMFICTX *ctx, int stage, const char *macros);
	/* Insert a header at index (0: first, as the policy side's PREPEND); at end of message only. */
	int (*insheader)(SMFICTX *ctx, int index, const char *name, const char *value);
	/* Put the message in the MTA's hold queue (relay.action hold); at end of message only. */
	int (*quarantine)(SMFICTX *ctx, const char *reason);
} milter_shim;

/* The real thing: every entry calls the smfi_* function of the same name. */
extern const milter_shim milter_shim_libmilter;

/*
 * Implemented in milter.c. Bind the filter to an engine and a shim (once,
 * before any callback runs) and fill desc with the filter's name, flags
 * and callbacks: what milter_setup registers with libmilter, and what unit
 * tests call. Callbacks that take a transaction's snapshot check
 * milter_filter_stopping() first.
 */
void milter_filter_init(engine *eng, const milter_shim *shim, struct smfiDesc *desc);

/*
 * From now on new transactions get a 4xx instead of touching the engine,
 * and wait up to grace_ms for those in flight to end. Returns how many
 * are still in flight (0 when all ended). Used by milter_stop; callable
 * from tests.
 */
unsigned milter_filter_quiesce(unsigned grace_ms);

/* Connection contexts alive now (allocated at connect, freed at close): for leak tests. */
unsigned milter_filter_connections(void);

#endif
