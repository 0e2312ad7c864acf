/*
 * unit: what every proto/ unit test needs besides cmocka itself.
 *
 * cmocka wants <stdarg.h>, <stddef.h> and <setjmp.h> before <cmocka.h>;
 * assert_str_eq compares a str_t with a C string and prints both on failure.
 */
#ifndef BATCHD_TESTS_UNIT_H
#define BATCHD_TESTS_UNIT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
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

#endif
