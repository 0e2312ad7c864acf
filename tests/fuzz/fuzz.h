/*
 * fuzz.h: what the harnesses in tests/fuzz share. Header-only, so a harness
 * stays one .c file whether libFuzzer or tests/fuzz/replay_main.c drives it.
 *
 * CHECK aborts with the failed condition; libFuzzer then saves the input,
 * and the replay test fails on the signal.
 */
#ifndef BATCHD_TESTS_FUZZ_H
#define BATCHD_TESTS_FUZZ_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                    \
        }                                                                               \
    } while (0)

/* Writes bytes to stderr readably, for a failure message. */
static inline void fuzz_dump(const char *what, const void *p, size_t n)
{
    const unsigned char *s = p;
    fprintf(stderr, "%s (%zu bytes): ", what, n);
    for (size_t i = 0; i < n && i < 2048; i++)
        fprintf(stderr, (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\\') ? "%c" : "\\x%02x", s[i]);
    fprintf(stderr, "\n");
}

#endif
