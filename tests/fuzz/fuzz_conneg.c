/*
 * fuzz_conneg: libFuzzer harness for proto/accept.c and proto/etag.c.
 *
 * The input is a header value, read both as Accept-Encoding and as
 * If-None-Match. Invariants: Accept-Encoding's answer does not depend on
 * letter case, and feeding the value twice (two field lines) or adding
 * ",gzip;q=0" after it never turns a no into a yes; If-None-Match matches
 * "*" alone or a tag found in the value (checked by a plain scan), and a
 * match stays a match with our tag's own element appended or prepended
 * (a list). The hash is deterministic.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/accept.h"
#include "proto/etag.h"
#include "tests/fuzz/fuzz.h"

static bool gz(const char *s, size_t n, int times)
{
    struct accept_enc a = ACCEPT_ENC_INIT;
    for (int i = 0; i < times; i++)
        accept_feed(&a, str_make(s, n));
    return accept_gzip(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_copy(data, size);
    bool yes = gz(s, size, 1);
    char *up = fuzz_copy(data, size);
    for (size_t i = 0; i < size; i++)
        up[i] = (char)toupper((unsigned char)up[i]);
    CHECK(gz(up, size, 1) == yes);
    CHECK(gz(s, size, 2) == yes);
    char *more = malloc(size + 10);
    memcpy(more, s, size);
    memcpy(more + size, ",gzip;q=0", 9);
    if (!yes)
        CHECK(!gz(more, size + 9, 1));

    char tag[ETAG_MAX];
    uint64_t h = etag_hash(s, size);
    CHECK(h == etag_hash(s, size));
    size_t tn = etag_format(h, size % 10, tag);
    str_t t = str_make(tag, tn);
    enum etag_match m = etag_none_match(str_make(s, size), t);
    if (m == ETAG_MATCH) {
        /* "*" (with spaces) or our tag is in the value. */
        bool star = false;
        size_t i = 0, e = size;
        while (i < e && (s[i] == ' ' || s[i] == '\t'))
            i++;
        while (e > i && (s[e - 1] == ' ' || s[e - 1] == '\t'))
            e--;
        star = e - i == 1 && s[i] == '*';
        CHECK(star || memmem(s, size, tag, tn) != NULL);
    }
    if (m != ETAG_INVALID) {
        /* A valid list with our tag appended matches. */
        char *list = malloc(size + 2 + tn);
        memcpy(list, s, size);
        memcpy(list + size, ",", 1);
        memcpy(list + size + 1, tag, tn);
        enum etag_match m2 = etag_none_match(str_make(list, size + 1 + tn), t);
        bool star = m == ETAG_MATCH && memchr(s, '"', size) == NULL;
        CHECK(m2 == ETAG_MATCH || star);
        free(list);
    }
    free(more);
    free(up);
    free(s);
    return 0;
}
