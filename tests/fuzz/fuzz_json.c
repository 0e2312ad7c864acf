/*
 * fuzz_json: differential harness, proto/jtext.c against jansson.
 *
 * jtext_valid(input) must agree with json_loadb(input, JSON_DECODE_ANY),
 * except where the two are known to differ on purpose; those cases are
 * recognised explicitly below, and any other disagreement aborts:
 *
 *   valid here, jansson rejects:
 *     - "\u0000" in a string: jansson refuses NUL without JSON_ALLOW_NUL
 *       (json_error_null_character), and in object keys always
 *       (json_error_null_byte_in_key); RFC 8259 allows it.
 *     - numbers beyond json_int_t / double range (json_error_numeric_overflow);
 *       RFC 8259 puts no limit on the grammar, and jtext_valid only checks it.
 *     - \u escapes that are lone or mismatched UTF-16 surrogates ("invalid
 *       Unicode"): RFC 8259's grammar accepts any four hex digits.
 *   jansson accepts, rejected here:
 *     - nesting deeper than JTEXT_MAX_DEPTH (256); jansson allows 2048.
 *     - a raw NUL byte right after a number or literal ("1\0", "[1\0]"):
 *       jansson 2.14's stream_unget leaves the NUL in its one-character
 *       buffer, where it reads as "buffer empty", so the byte is dropped.
 *       Such inputs are accepted as known only if they are valid once
 *       their NUL bytes are removed.
 *
 * The input is also run through jtext_append_string, whose output must be
 * valid to both, and must decode back to the input when that is valid UTF-8;
 * and through jtext_object_field, which must find every member jansson finds
 * in an object (check_object_field).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/jtext.h"
#include "tests/fuzz/fuzz.h"

/* Container nesting of a decoded value: "[]" is 1, "1" is 0. */
static int tree_depth(json_t *v)
{
    int max = 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            int d = tree_depth(e);
            max = d > max ? d : max;
        }
        return max + 1;
    }
    if (json_is_object(v)) {
        const char *k;
        json_t *e;
        json_object_foreach(v, k, e) {
            int d = tree_depth(e);
            max = d > max ? d : max;
        }
        return max + 1;
    }
    return 0;
}

static void disagree(const char *why, const uint8_t *data, size_t size, const json_error_t *err)
{
    fprintf(stderr, "fuzz_json: %s\njansson: %s (code %d, position %d)\ninput (%zu bytes): ", why,
            err ? err->text : "-", err ? (int)json_error_code(err) : -1,
            err ? err->position : -1, size);
    for (size_t i = 0; i < size && i < 512; i++)
        fprintf(stderr, (data[i] >= 0x20 && data[i] < 0x7f) ? "%c" : "\\x%02x", data[i]);
    fprintf(stderr, "\n");
    abort();
}

static void check_differential(const char *s, size_t n)
{
    bool ours = jtext_valid(s, n);
    json_error_t err;
    json_t *root = json_loadb(s, n, JSON_DECODE_ANY, &err);
    if (ours && root == NULL) {
        enum json_error_code code = json_error_code(&err);
        if ((code == json_error_null_character || code == json_error_null_byte_in_key) &&
            memmem(s, n, "\\u0000", 6) != NULL)
            return; /* known: NUL in a string or key */
        if (code == json_error_numeric_overflow)
            return; /* known: number out of range */
        if (code == json_error_invalid_syntax && strncmp(err.text, "invalid Unicode", 15) == 0)
            return; /* known: lone surrogate escape */
        disagree("jtext_valid accepts what jansson rejects", (const uint8_t *)s, n, &err);
    }
    if (!ours && root != NULL) {
        int depth = tree_depth(root);
        json_decref(root);
        if (depth > JTEXT_MAX_DEPTH)
            return; /* known: deeper than jtext_valid allows */
        if (memchr(s, '\0', n) != NULL) {
            char *stripped = malloc(n);
            CHECK(stripped != NULL);
            size_t m = 0;
            for (size_t i = 0; i < n; i++)
                if (s[i] != '\0')
                    stripped[m++] = s[i];
            bool valid_without_nul = jtext_valid(stripped, m);
            free(stripped);
            if (valid_without_nul)
                return; /* known: jansson drops a NUL after a token */
        }
        disagree("jtext_valid rejects what jansson accepts", (const uint8_t *)s, n, NULL);
    }
    if (root)
        json_decref(root);
}

static void check_append_string(const uint8_t *data, size_t size)
{
    struct buf out = BUF_INIT;
    buf_append_str(&out, "[");
    jtext_append_string(&out, (const char *)data, size);
    buf_append_str(&out, "]");
    str_t lit = str_make(out.data + 1, out.len - 2);
    CHECK(jtext_valid(lit.p, lit.len));
    CHECK(jtext_valid(out.data, out.len));
    /* No raw control characters, and only valid UTF-8, in the output. */
    for (size_t i = 0; i < out.len; i++)
        CHECK((unsigned char)out.data[i] >= 0x20);
    CHECK(fuzz_utf8_valid((const unsigned char *)out.data, out.len));

    json_error_t err;
    json_t *v = json_loadb(lit.p, lit.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (v == NULL || !json_is_string(v))
        disagree("jansson rejects jtext_append_string output", (const uint8_t *)lit.p, lit.len,
                 &err);
    if (fuzz_utf8_valid(data, size)) {
        CHECK(json_string_length(v) == size);
        CHECK(size == 0 || memcmp(json_string_value(v), data, size) == 0);
    } else {
        /* Every byte became itself or one U+FFFD: never shorter, at most 3x. */
        CHECK(json_string_length(v) >= size && json_string_length(v) <= 3 * size);
    }
    json_decref(v);
    buf_deinit(&out);
}

/* jtext_object_field against jansson: in a valid object without duplicate
 * keys, every member jansson sees is found, and its value's text decodes
 * to the same value; a name that is not a key is absent. On any input it
 * must stay inside the bytes (ASan) and a found value must be in them. */
static void check_object_field(const char *s, size_t n)
{
    const char *v;
    size_t vn;
    int rc = jtext_object_field(s, n, "owner_id", 8, &v, &vn);
    if (rc == 1)
        CHECK(v >= s && vn <= n && v + vn <= s + n && vn > 0);
    if (!jtext_valid(s, n))
        return;
    json_error_t err;
    json_t *root = json_loadb(s, n, JSON_REJECT_DUPLICATES, &err);
    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        return;
    }
    CHECK(jtext_object_field(s, n, "\x01no such key", 13, &v, &vn) == (json_object_get(root, "\x01no such key") ? 1 : 0));
    const char *k;
    json_t *member;
    json_object_foreach(root, k, member) {
        CHECK(jtext_object_field(s, n, k, strlen(k), &v, &vn) == 1);
        json_t *mine = json_loadb(v, vn, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
        CHECK(mine != NULL && json_equal(mine, member));
        if (json_is_string(member))
            CHECK(jtext_string_equals(v, vn, json_string_value(member), json_string_length(member)));
        json_decref(mine);
    }
    json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A heap copy of exactly `size` bytes, so reads past the end are caught. */
    char *s = fuzz_copy(data, size);

    check_differential(s, size);

    /* Whitespace around a document does not change the verdict. */
    char *w = malloc(size + 4);
    if (w != NULL) {
        memcpy(w, " \t", 2);
        memcpy(w + 2, data, size);
        memcpy(w + 2 + size, "\r\n", 2);
        CHECK(jtext_valid(w, size + 4) == jtext_valid(s, size));
        free(w);
    }

    if (size > 0)
        CHECK(jtext_utf8_seq_len(data, size) == fuzz_utf8_len(data, size));

    check_append_string(data, size);
    check_object_field(s, size);
    free(s);
    return 0;
}
