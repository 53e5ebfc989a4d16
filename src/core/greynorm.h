/*
 * greynorm: the sender part of a greylist triplet (SPEC.md "Checks" →
 * greylist). Senders that change with every message of one mailing (VERP
 * counters, BATV tags, SRS timestamps) would make every message a new
 * triplet and delay each one; the key keeps what identifies the sender and
 * drops what changes. Pure: no I/O, no allocation, no globals.
 *
 * postgrey 1.37 (do_sender_substitutions) is the model; docs/greylist.md
 * "Sender normalisation" has a table of inputs and both keys. Where we
 * deliberately differ:
 * - SRS0/SRS1 (postgrey has no rule): the hash and timestamp are dropped,
 *   the key is "srs=ORIGDOMAIN=ORIGLOCAL@FORWARDER" with ORIGLOCAL
 *   normalised like any local part. An SRS1 address gives the key of the
 *   SRS0 address it wraps.
 * - Hex runs (postgrey has no rule): words of [0-9a-f] joined by single
 *   '-' (UUIDs, SES message ids) with 8 or more hex digits in all, at least
 *   one a digit and one a letter, become one '#'. Pure letters ("deadbeef")
 *   are kept: a key must keep the local part's letters, or a spammer could
 *   ride a legitimate sender's passed triplet.
 * - The extension delimiters are traps.recipient_delimiter (postgrey: '+'
 *   only); '#' never delimits (it is the placeholder).
 * - The domain is after the last '@' (postgrey splits at the first).
 * - The input is lowercase already (addr_normalise), so "PRVS=" is BATV too
 *   and postgrey's tag test ([0-9a-z]{10}, before its lowercasing) sees
 *   upper-case tags as tags.
 * - The null sender is "<>" (postgrey: ""); a sender without '@' is kept
 *   as it is, lowercased, as postgrey keeps it.
 * Like postgrey, digits are replaced only as whole words (\b\d+\b):
 * "user123" keeps its digits, "bounce-123" does not.
 *
 * The result is a fixed point: normalising a key gives the same key.
 */
#ifndef SPAMTRAPD_GREYNORM_H
#define SPAMTRAPD_GREYNORM_H

#include <stddef.h>

#include "core/addr.h"

/* Inputs of this many bytes or more are refused (addr_normalise never makes one). */
#define GREYNORM_MAX ADDR_MAX

/*
 * The greylist key of sender, an address as addr_normalise writes it (no
 * angle brackets, "" for the null sender). delimiters: Postfix
 * recipient_delimiter characters ("" or NULL for none). Writes a
 * NUL-terminated key of at most strlen(sender) + 2 bytes and returns its
 * length; returns 0 with out "" (when outlen > 0) when sender is NULL, has
 * GREYNORM_MAX bytes or more, or the key does not fit in outlen.
 */
size_t greynorm_sender(const char *sender, const char *delimiters, char *out, size_t outlen);

#endif
