/*
 * fuzz_cursor: libFuzzer harness for list cursors and cached pages
 * (proto/cursor.c), the two things a client or Redis hands batchd for a
 * [list] page.
 *
 *   input: [flags][max] bytes...
 *
 * flags bit 0 clear: the bytes are a cursor from a client. cursor_decode
 * (limit: 2 + 4 * max bytes) must agree with a reference decoder written
 * here (RFC 4648 base64url in groups of four, strict: no padding, zero
 * leftover bits, version byte, text rules); a cursor it takes must encode
 * back to exactly the same bytes. Then the bytes are used as a text: when
 * the reference says it is a valid text, it must survive encode + decode.
 *
 * flags bit 0 set: the bytes are a cached page value from Redis, read with
 * 1 + max % 64 ids at most. A value cursor_page_decode takes must be what
 * cursor_page_encode writes for what it read (one spelling per page), with
 * valid ids, at most that many, and a next cursor that decodes.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/cursor.h"
#include "proto/ids.h"
#include "tests/fuzz/fuzz.h"

static const char ALPHABET[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int ref_value(unsigned char c)
{
    const char *p = c ? strchr(ALPHABET, c) : NULL;
    return p ? (int)(p - ALPHABET) : -1;
}

static bool ref_text_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return fuzz_utf8_valid(s, n);
}

/* Decodes into out (capacity >= n); returns the text length, or -1. */
static long ref_decode(const unsigned char *in, size_t n, unsigned char *out)
{
    if (n % 4 == 1 || n < 2)
        return -1;
    size_t bytes = 0;
    for (size_t g = 0; g < n; g += 4) {
        size_t k = n - g < 4 ? n - g : 4;
        uint32_t v = 0;
        for (size_t i = 0; i < 4; i++) {
            int x = i < k ? ref_value(in[g + i]) : 0;
            if (x < 0)
                return -1;
            v = v << 6 | (uint32_t)x;
        }
        unsigned char three[3] = { (unsigned char)(v >> 16), (unsigned char)(v >> 8), (unsigned char)v };
        size_t whole = k - 1; /* 4 chars: 3 bytes, 3: 2, 2: 1 */
        for (size_t i = whole; i < 3; i++)
            if (three[i] != 0)
                return -1; /* leftover bits set */
        memcpy(out + bytes, three, whole);
        bytes += whole;
    }
    if (bytes == 0 || out[0] != CURSOR_VERSION)
        return -1;
    if (!ref_text_valid(out + 1, bytes - 1))
        return -1;
    memmove(out, out + 1, bytes - 1);
    return (long)bytes - 1;
}

static void check_cursor(const uint8_t *data, size_t size, size_t max)
{
    char *in = fuzz_copy(data, size);
    struct buf out = BUF_INIT;
    buf_append_str(&out, "kept"); /* decode appends: what was there stays */
    int rc = cursor_decode(str_make(in, size), max, &out);
    unsigned char *ref = malloc(size + 1);
    CHECK(ref != NULL);
    long n = size > max ? -2 : ref_decode(data, size, ref);
    CHECK(out.len >= 4 && memcmp(out.data, "kept", 4) == 0);
    if (n == -2) {
        CHECK(rc == -E2BIG);
    } else if (n < 0) {
        CHECK(rc == -EINVAL);
    } else {
        if (rc != 0 || out.len - 4 != (size_t)n || memcmp(out.data + 4, ref, (size_t)n) != 0) {
            fuzz_dump("cursor", data, size);
            CHECK(!"cursor_decode disagrees with the reference");
        }
        struct buf again = BUF_INIT;
        cursor_encode(out.data + 4, out.len - 4, &again);
        CHECK(again.len == size && memcmp(again.data, data, size) == 0);
        buf_deinit(&again);
    }
    free(ref);
    /* The bytes as a text. */
    CHECK(cursor_text_valid(in, size) == ref_text_valid(data, size));
    if (ref_text_valid(data, size)) {
        struct buf enc = BUF_INIT, dec = BUF_INIT;
        cursor_encode(in, size, &enc);
        CHECK(enc.len == cursor_encoded_len(size));
        CHECK(cursor_decode(buf_str(&enc), enc.len, &dec) == 0);
        CHECK(dec.len == size && (size == 0 || memcmp(dec.data, data, size) == 0));
        buf_deinit(&enc);
        buf_deinit(&dec);
    }
    buf_deinit(&out);
    free(in);
}

static void check_page(const uint8_t *data, size_t size, unsigned max_ids)
{
    char *in = fuzz_copy(data, size);
    struct id_list ids;
    id_list_init(&ids);
    struct buf next = BUF_INIT;
    uint64_t expires = 0;
    if (cursor_page_decode(str_make(in, size), max_ids, 64, &expires, &next, &ids) == 0) {
        CHECK(ids.n <= max_ids);
        for (unsigned i = 0; i < ids.n; i++)
            CHECK(ids_valid(id_list_get(&ids, i).p, id_list_get(&ids, i).len));
        if (next.len) {
            struct buf text = BUF_INIT;
            CHECK(next.len <= 64 && cursor_decode(buf_str(&next), 64, &text) == 0);
            buf_deinit(&text);
        }
        struct buf again = BUF_INIT;
        cursor_page_encode(expires, buf_str(&next), &ids, &again);
        if (again.len != size || memcmp(again.data, data, size) != 0) {
            fuzz_dump("value", data, size);
            fuzz_dump("encoded again", again.data, again.len);
            CHECK(!"a page decoded from a value that is not its one spelling");
        }
        buf_deinit(&again);
    }
    buf_deinit(&next);
    id_list_deinit(&ids);
    free(in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    if (data[0] & 1)
        check_page(data + 2, size - 2, 1 + data[1] % 64);
    else
        check_cursor(data + 2, size - 2, 2 + 4 * (size_t)data[1]);
    return 0;
}
