/*
 * greywl: the greylist's static whitelists, in postgrey 1.37's own file
 * syntax, so that /etc/postgrey/whitelist_clients and whitelist_recipients
 * load unchanged (docs/greylist-whitelists.md has the syntax, the matching
 * rules and where spamtrapd differs from postgrey).
 *
 * Pure: the caller reads the files and hands over their text; no I/O, no
 * clock. Built once per config snapshot, then read by any number of
 * threads (the PCRE2 match context is shared read-only; match data is per
 * call).
 */
#ifndef SPAMTRAPD_GREYWL_H
#define SPAMTRAPD_GREYWL_H

#include <stdbool.h>
#include <stddef.h>

/* Longest "why" text a match writes: "SOURCE:LINE: ENTRY", cut to fit. */
#define GREYWL_WHY_MAX 600

typedef struct greywl greywl;

/* An empty whitelist (matches nothing); NULL when out of memory. The caller owns it. */
greywl *greywl_new(void);
void greywl_free(greywl *wl); /* accepts NULL */

/*
 * Add every line of a whitelist_clients (or whitelist_recipients) file:
 * text is the file's content (len bytes, need not be NUL-terminated, not
 * kept), source its name for messages and for the "why" of a match
 * (copied). '#' starts a comment anywhere on a line; blank lines are
 * skipped. A line that postgrey would skip with a warning, or drop
 * silently (an IP octet over 255, a prefix over 32), fails the load: -1
 * and "SOURCE:LINE: message" in err. The entries before it may have been
 * added, so a caller discards wl on failure. 0 on success.
 */
int greywl_load_clients(greywl *wl, const char *text, size_t len, const char *source, char *err,
                        size_t errlen);
int greywl_load_recipients(greywl *wl, const char *text, size_t len, const char *source, char *err,
                           size_t errlen);

/*
 * One entry in the same syntax as a file line (from a JSON config list):
 * source names it ("greylist.whitelist_clients[3]"), copied. An empty
 * entry is an error. 0, or -1 with "SOURCE: message" in err.
 */
int greywl_add_client(greywl *wl, const char *entry, const char *source, char *err, size_t errlen);
int greywl_add_recipient(greywl *wl, const char *entry, const char *source, char *err, size_t errlen);

/* How many client / recipient entries are loaded (for the start-up log line). */
size_t greywl_client_count(const greywl *wl);
size_t greywl_recipient_count(const greywl *wl);

/*
 * Is the client whitelisted? client_address as Postfix gives it
 * (policy client_address, milter's address; IPv4-mapped IPv6 counts as
 * IPv4), client_name the *verified* host name (policy client_name, the
 * milter's {client_name}), or NULL. Host name and /regex/ entries are
 * matched against client_name only, as postgrey does: never against the
 * unverified PTR name (reverse_client_name, {client_ptr}), which whoever
 * owns the client's reverse zone chooses freely. A client_name of
 * "unknown", "" or an address literal "[...]" is no name. On a match, why
 * gets "SOURCE:LINE: ENTRY" of the entry that matched (why may be NULL).
 */
bool greywl_match_client(const greywl *wl, const char *client_address, const char *client_name, char *why,
                         size_t whylen);

/*
 * Is the recipient whitelisted? recipient as the policy protocol gives it:
 * no angle brackets, quoted local parts in Postfix's internal form
 * (addr_unquote); case does not matter. why as above.
 */
bool greywl_match_recipient(const greywl *wl, const char *recipient, char *why, size_t whylen);

#endif
