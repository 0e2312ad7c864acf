/*
 * fuzz.h: what the harnesses in tests/fuzz share. Header-only, so a harness
 * stays one .c file whether libFuzzer or tests/fuzz/replay_main.c drives it.
 *
 * CHECK aborts with the failed condition; libFuzzer then saves the input,
 * and the replay test fails on the signal.
 *
 * Also here: heap copies of exactly the bytes under test (so ASan sees a
 * read past the end), a reference UTF-8 validator, the escaped logs the
 * differential harnesses compare, and the driver loop of a parser that
 * pauses (proto/http.h, proto/http_response.h).
 */
#ifndef BATCHD_TESTS_FUZZ_H
#define BATCHD_TESTS_FUZZ_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/buf.h"

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

/* A heap copy of exactly p[0..n) (free it), so that a read one byte past
 * the end is caught; 1 byte is allocated for n == 0. */
static inline char *fuzz_copy(const void *p, size_t n)
{
    char *c = malloc(n ? n : 1);
    CHECK(c != NULL);
    if (n)
        memcpy(c, p, n);
    return c;
}

/* Length of the well-formed UTF-8 sequence at s[0..n), n > 0 (Unicode
 * table 3-7: no overlongs, no surrogates, at most U+10FFFF), or 0. */
static inline size_t fuzz_utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t len;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c == 0xE0)
        len = 3, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
        len = 3;
    else if (c == 0xED)
        len = 3, hi = 0x9F;
    else if (c == 0xF0)
        len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3)
        len = 4;
    else if (c == 0xF4)
        len = 4, hi = 0x8F;
    else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

/* s[0..n) is well-formed UTF-8 (see fuzz_utf8_len). */
static inline bool fuzz_utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t len = fuzz_utf8_len(s + i, n - i);
        if (len == 0)
            return false;
        i += len;
    }
    return true;
}

/* Appends p[0..n) to a log, printable ASCII as itself and any other byte
 * (and '\') as \xHH, so that two logs compare byte for byte. */
static inline void fuzz_log_bytes(struct buf *log, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            buf_append_char(log, (char)c);
        else
            buf_appendf(log, "\\x%02x", c);
    }
}

/* Appends "name: value\n" to a log, both escaped as by fuzz_log_bytes. */
static inline void fuzz_log_field(struct buf *log, str_t name, str_t value)
{
    fuzz_log_bytes(log, name.p, name.len);
    buf_append_str(log, ": ");
    fuzz_log_bytes(log, value.p, value.len);
    buf_append_char(log, '\n');
}

/* One read handed to the parser under test; false stops the reads. */
typedef bool (*fuzz_read_fn)(void *arg, const char *piece, size_t n);

/* Hands data[0..size) to read() in pieces ending at cuts[0..n_cuts) (in
 * order, at most size) and then at size, each a heap copy freed after the
 * call: nothing may keep pointing into a read buffer. */
static inline void fuzz_reads(const uint8_t *data, size_t size, const size_t *cuts,
                              size_t n_cuts, fuzz_read_fn read, void *arg)
{
    size_t pos = 0;
    for (size_t k = 0; k <= n_cuts; k++) {
        size_t end = k < n_cuts ? cuts[k] : size;
        char *piece = fuzz_copy(data + pos, end - pos);
        bool go_on = read(arg, piece, end - pos);
        free(piece);
        pos = end;
        if (!go_on)
            break;
    }
}

/* The driver of a parser that pauses, after each execute on what is left
 * of a read of n bytes: counts the `used` bytes into *pos, and says whether
 * to resume and execute again. A parser that neither failed nor paused
 * must have taken the whole read; pauses are bounded by a head, a body
 * piece and a completion per byte, plus those reached with no byte after
 * a resume. */
static inline bool fuzz_paused(size_t used, bool failed, bool paused, size_t n, size_t *pos,
                               size_t *pauses)
{
    CHECK(used <= n - *pos);
    *pos += used;
    if (failed)
        return false;
    if (!paused) {
        CHECK(*pos == n);
        return false;
    }
    CHECK(++*pauses <= 3 * n + 3);
    return true;
}

#endif
