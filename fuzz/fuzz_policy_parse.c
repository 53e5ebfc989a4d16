/*
 * libFuzzer target for policy_parse. The first three bytes choose the
 * limits and a chunk size; the rest is parsed twice, once whole and once in
 * chunks, and both runs must see the same requests and the same error at
 * the same offset (splitting input at any byte must not change meaning).
 * Every request must respect the caps and limits. A malformed request is
 * one more event (its error and line), after which parsing goes on; a
 * fatal error ends the run and must be a NUL byte or an endless request.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "policy/policy_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_EVENTS 64

typedef struct trace {
	size_t n;
	struct {
		int status;
		size_t end; /* absolute offset after the request, or of the error */
		uint64_t digest;
	} ev[MAX_EVENTS];
} trace;

/* Check the caps and limits of one request and digest what it holds. */
static uint64_t check_request(const policy_request *req, unsigned max_attrs)
{
	uint64_t h = HASH_FNV1A_INIT;

	if (req->nattributes > max_attrs)
		abort();
	h = hash_fnv1a(h, &req->present, sizeof(req->present));
	h = hash_fnv1a(h, &req->truncated, sizeof(req->truncated));
	h = hash_fnv1a(h, &req->nattributes, sizeof(req->nattributes));
	for (int a = 0; a < POLICY_ATTR_COUNT; a++) {
		const char *v = policy_request_get(req, (policy_attr)a);
		size_t len;

		if (v == NULL)
			continue;
		len = strnlen(v, policy_attr_cap((policy_attr)a) + 1);
		if (len > policy_attr_cap((policy_attr)a))
			abort();
		h = hash_fnv1a(h, v, len + 1);
	}
	return h;
}

static void record(trace *t, int status, size_t end, uint64_t digest)
{
	if (t->n < MAX_EVENTS) {
		t->ev[t->n].status = status;
		t->ev[t->n].end = end;
		t->ev[t->n].digest = digest;
	}
	t->n++;
}

/* Parse data in chunks of at most chunk bytes (0: all at once) into t. */
static void run(const uint8_t *data, size_t size, size_t chunk, size_t max_line, unsigned max_attrs, trace *t)
{
	policy_parser *p = policy_parser_new(max_line, max_attrs);
	size_t pos = 0;

	if (p == NULL)
		abort();
	while (pos < size) {
		size_t len = (chunk == 0 || size - pos < chunk) ? size - pos : chunk, used;
		policy_parse_status st = policy_parser_feed(p, (const char *)data + pos, len, &used);

		if (used > len)
			abort();
		pos += used;
		if (st == POLICY_PARSE_REQUEST) {
			if (policy_parser_error(p) != POLICY_ERR_NONE)
				abort();
			record(t, st, pos, check_request(policy_parser_request(p), max_attrs));
		} else if (st == POLICY_PARSE_MALFORMED) {
			if (policy_parser_error(p) == POLICY_ERR_NONE || !policy_parser_idle(p))
				abort();
			record(t, st, pos, (uint64_t)policy_parser_error(p) << 32 | policy_parser_line(p));
		} else if (st == POLICY_PARSE_ERROR) {
			if (policy_parser_error(p) != POLICY_ERR_NUL_BYTE &&
			    policy_parser_error(p) != POLICY_ERR_ENDLESS)
				abort();
			record(t, st, pos, (uint64_t)policy_parser_error(p) << 32 | policy_parser_line(p));
			break;
		} else if (used != len) {
			abort();
		}
	}
	policy_parser_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	trace whole = {0}, split = {0};
	size_t max_line, chunk;
	unsigned max_attrs;

	if (size < 3)
		return 0;
	max_line = 1 + (size_t)data[0] * 8;
	max_attrs = 1 + data[1] % 64;
	chunk = 1 + data[2] % 17;
	run(data + 3, size - 3, 0, max_line, max_attrs, &whole);
	run(data + 3, size - 3, chunk, max_line, max_attrs, &split);
	if (whole.n != split.n || memcmp(whole.ev, split.ev, sizeof(whole.ev)) != 0)
		abort();
	return 0;
}
