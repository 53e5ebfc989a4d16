/*
 * fuzz_check: what the fuzz targets share. CHECK() states an invariant; a
 * broken one names itself on stderr and aborts, which libFuzzer and the
 * replay driver (replay_main.c) both report as a crash with this input.
 */
#ifndef SPAMTRAPD_FUZZ_CHECK_H
#define SPAMTRAPD_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                          \
	do {                                                                                                 \
		if (!(cond)) {                                                                               \
			fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);         \
			abort();                                                                             \
		}                                                                                            \
	} while (0)

/* A text a function wrote into a buffer of len bytes ends with a NUL inside it. */
#define CHECK_TERMINATED(buf, len) CHECK(memchr((buf), '\0', (len)) != NULL)

#endif
