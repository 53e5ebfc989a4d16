/*
 * spf_record: the RFC 7208 record grammar (section 4.5 and 12). Pure. A
 * parsed record points into the text it was parsed from, which the caller
 * keeps alive.
 */
#ifndef SPAMTRAPD_SPF_RECORD_H
#define SPAMTRAPD_SPF_RECORD_H

#include <stdbool.h>
#include <stddef.h>

#include "spf/spf.h"

enum spf_mech {
	SPF_MECH_ALL,
	SPF_MECH_INCLUDE,
	SPF_MECH_A,
	SPF_MECH_MX,
	SPF_MECH_PTR,
	SPF_MECH_IP4,
	SPF_MECH_IP6,
	SPF_MECH_EXISTS,
};

struct spf_term {
	enum spf_mech mech;
	enum spf_result qual; /* SPF_PASS, SPF_FAIL, SPF_SOFTFAIL or SPF_NEUTRAL */
	const char *spec;     /* domain-spec, NULL: the current <domain> */
	size_t spec_len;
	int cidr4, cidr6;      /* 32 and 128 when not given */
	unsigned char net[16]; /* ip4 (4 bytes) / ip6 network */
};

struct spf_record {
	struct spf_term *terms; /* owned */
	size_t nterms;
	const char *redirect; /* NULL when absent */
	size_t redirect_len;
	const char *exp;
	size_t exp_len;
};

/* true when txt is an SPF version 1 record: "v=spf1" then a space or the end. */
bool spf_record_is_spf1(const char *txt, size_t len);

/*
 * Parses a whole record (RFC 7208 4.6: any syntax error anywhere is a
 * permerror before anything is evaluated). 0, or -1 with a message in err.
 * On success free rec->terms with spf_record_clear().
 */
int spf_record_parse(const char *txt, size_t len, struct spf_record *rec, char *err, size_t errlen);
void spf_record_clear(struct spf_record *rec);

const char *spf_mech_name(enum spf_mech m);

#endif
