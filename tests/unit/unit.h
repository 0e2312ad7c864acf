/*
 * unit: what every proto/ unit test needs besides cmocka itself.
 *
 * cmocka wants <stdarg.h>, <stddef.h> and <setjmp.h> before <cmocka.h>;
 * assert_str_eq compares a str_t with a C string and prints both on failure.
 * For the parser tests: unit_feed hands a parser its input in reads, and
 * unit_check_splits checks that how the input is split changes nothing.
 */
#ifndef BATCHD_TESTS_UNIT_H
#define BATCHD_TESTS_UNIT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/buf.h"

#define assert_str_eq(s, want) assert_str_eq_at((s), (want), __FILE__, __LINE__)

static inline void assert_str_eq_at(str_t s, const char *want, const char *file, int line)
{
    size_t n = strlen(want);
    if (s.len == n && (n == 0 || memcmp(s.p, want, n) == 0))
        return;
    print_error("got \"%.*s\" (%zu bytes), want \"%s\" (%zu bytes)\n", (int)s.len,
                s.p ? s.p : "", s.len, want, n);
    _fail(file, line);
}

/* Compares bytes that may hold NULs, showing them escaped on failure. */
#define assert_bytes_eq(got, got_len, want, want_len) \
    assert_bytes_eq_at((got), (got_len), (want), (want_len), __FILE__, __LINE__)

static inline void print_escaped(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            print_error("%c", c);
        else
            print_error("\\x%02x", c);
    }
}

static inline void assert_bytes_eq_at(const char *got, size_t got_len, const char *want,
                                      size_t want_len, const char *file, int line)
{
    if (got_len == want_len && (want_len == 0 || memcmp(got, want, want_len) == 0))
        return;
    print_error("got  \"");
    print_escaped(got, got_len);
    print_error("\" (%zu bytes)\nwant \"", got_len);
    print_escaped(want, want_len);
    print_error("\" (%zu bytes)\n", want_len);
    _fail(file, line);
}

/* One read handed to the parser under test: sets *used to the bytes of
 * piece[0..n) it consumed and returns false when feeding must stop. */
typedef bool (*unit_read_fn)(void *arg, const char *piece, size_t n, size_t *used);

/* Feeds in[0..len) as reads ending at cuts[0], cuts[1], ..., then len (a
 * cut behind what was consumed is skipped), each read from a heap copy
 * freed right after the call, so that ASan catches a pointer the parser
 * kept into a read buffer. Returns the bytes consumed. */
static inline size_t unit_feed(const char *in, size_t len, const size_t *cuts, size_t n_cuts,
                               unit_read_fn read, void *arg)
{
    size_t pos = 0;
    for (size_t k = 0; k <= n_cuts; k++) {
        size_t end = k < n_cuts ? cuts[k] : len;
        if (end < pos)
            continue;
        size_t n = end - pos, used = 0;
        char *piece = malloc(n ? n : 1);
        assert_non_null(piece);
        memcpy(piece, in + pos, n);
        bool go_on = read(arg, piece, n, &used);
        free(piece);
        pos += used;
        if (!go_on)
            break;
    }
    return pos;
}

/* Renders what the parser under test made of in[0..len) fed at the given
 * cuts (with unit_feed) to one string (free it). */
typedef char *(*unit_render_fn)(const void *arg, const char *in, size_t len, const size_t *cuts,
                                size_t n_cuts);

/* The result of parsing must not depend on how the bytes are split: checks
 * `whole`, the rendering of in[0..len) in one read, against the rendering
 * of every two-piece split at cut = first_cut .. len (with include_len,
 * else .. len - 1) and of one byte at a time. */
#define unit_check_splits(whole, in, len, first_cut, include_len, render, arg)              \
    unit_check_splits_at((whole), (in), (len), (first_cut), (include_len), (render), (arg), \
                         __FILE__, __LINE__)

static inline void unit_check_splits_at(const char *whole, const char *in, size_t len,
                                        size_t first_cut, bool include_len, unit_render_fn render,
                                        const void *arg, const char *file, int line)
{
    for (size_t cut = first_cut; cut < len + include_len; cut++) {
        char *split = render(arg, in, len, &cut, 1);
        if (strcmp(whole, split) != 0) {
            print_error("split at byte %zu differs.\n--- one read:\n%s--- split:\n%s\n", cut,
                        whole, split);
            _fail(file, line);
        }
        free(split);
    }
    size_t *cuts = malloc(len * sizeof(*cuts));
    assert_non_null(cuts);
    for (size_t i = 0; i < len; i++)
        cuts[i] = i + 1;
    char *bytewise = render(arg, in, len, cuts, len);
    free(cuts);
    if (strcmp(whole, bytewise) != 0) {
        print_error("byte at a time differs.\n--- one read:\n%s--- bytewise:\n%s\n", whole,
                    bytewise);
        _fail(file, line);
    }
    free(bytewise);
}

#endif
