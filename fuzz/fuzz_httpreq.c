/*
 * libFuzzer target for metrics/httpreq. The first byte chooses a chunk
 * size; the rest is parsed whole and in chunks, and both must give the
 * same answer (how reads split a request must not change it). The parser
 * never takes more than HTTPREQ_MAX bytes, and a complete answer is one
 * of the statuses with a code.
 */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_check.h"
#include "metrics/httpreq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static httpreq whole, chunked;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t chunk = (size_t)data[0] % 17 + 1;
	const char *in = (const char *)data + 1;
	size_t len = size - 1;

	httpreq_init(&whole);
	httpreq_status a = httpreq_feed(&whole, in, len);
	httpreq_init(&chunked);
	httpreq_status b = HTTPREQ_MORE;
	for (size_t at = 0; at < len && b == HTTPREQ_MORE; at += chunk)
		b = httpreq_feed(&chunked, in + at, len - at < chunk ? len - at : chunk);
	CHECK(a == b);
	CHECK(whole.seen <= HTTPREQ_MAX && whole.seen <= len);
	CHECK(whole.seen == chunked.seen);
	CHECK(a == HTTPREQ_MORE || httpreq_code(a) >= 200);
	CHECK(a != HTTPREQ_MORE || len < HTTPREQ_MAX);
	return 0;
}
