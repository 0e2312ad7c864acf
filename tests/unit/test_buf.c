/*
 * test_buf: the growable buffer and the str_t helpers (proto/buf.h).
 *
 * Growth is checked against a reference built byte by byte, so a lost or
 * duplicated byte at a reallocation shows up as a content mismatch.
 */
#include "unit.h"

#include <errno.h>
#include <inttypes.h>

#include "proto/buf.h"

/* The invariants every buf must keep: NUL after the bytes, room for it. */
static void check_buf(const struct buf *b)
{
    assert_non_null(b->data);
    assert_true(b->cap >= b->len + 1);
    assert_int_equal(b->data[b->len], '\0');
}

static void test_append_grows_and_keeps_bytes(void **state)
{
    struct buf b = BUF_INIT;
    char want[5000];
    size_t n = 0;
    /* One byte at a time across several doublings. */
    for (int i = 0; i < 1000; i++) {
        char c = (char)('a' + i % 26);
        buf_append(&b, &c, 1);
        want[n++] = c;
        check_buf(&b);
    }
    /* Then a block far larger than the current capacity. */
    char block[3000];
    for (size_t i = 0; i < sizeof(block); i++)
        block[i] = (char)('0' + i % 10);
    buf_append(&b, block, sizeof(block));
    memcpy(want + n, block, sizeof(block));
    n += sizeof(block);
    check_buf(&b);
    buf_append_str(&b, "end");
    memcpy(want + n, "end", 3);
    n += 3;
    check_buf(&b);
    assert_bytes_eq(b.data, b.len, want, n);
    buf_deinit(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
}

static void test_append_empty_and_nul_bytes(void **state)
{
    struct buf b;
    buf_init(&b);
    buf_append(&b, "", 0);
    check_buf(&b);
    assert_int_equal(b.len, 0);
    /* Embedded NULs are data, not terminators. */
    buf_append(&b, "a\0b", 3);
    buf_append_char(&b, '\0');
    check_buf(&b);
    assert_bytes_eq(b.data, b.len, "a\0b\0", 4);
    buf_deinit(&b);
}

static void test_appendf_short_and_long(void **state)
{
    struct buf b = BUF_INIT;
    buf_appendf(&b, "%s=%d;", "x", 42);
    assert_string_equal(b.data, "x=42;");
    /* Longer than the first vsnprintf attempt gets, so the retry path runs. */
    char big[1001];
    memset(big, 'z', 1000);
    big[1000] = '\0';
    buf_appendf(&b, "[%s]", big);
    check_buf(&b);
    assert_int_equal(b.len, 5 + 1002);
    assert_memory_equal(b.data, "x=42;[", 6);
    assert_memory_equal(b.data + 6, big, 1000);
    assert_int_equal(b.data[b.len - 1], ']');
    buf_deinit(&b);
}

static void test_appendf_at_every_fill_level(void **state)
{
    /* Many small appends hit every distance to the end of the allocation. */
    struct buf b = BUF_INIT;
    char want[8192];
    size_t n = 0;
    for (int i = 0; i < 600; i++) {
        buf_appendf(&b, "%d,", i);
        n += (size_t)snprintf(want + n, sizeof(want) - n, "%d,", i);
        check_buf(&b);
    }
    assert_bytes_eq(b.data, b.len, want, n);
    buf_deinit(&b);
}

static void test_append_numbers(void **state)
{
    struct buf b = BUF_INIT;
    buf_append_u64(&b, 0);
    buf_append_char(&b, ' ');
    buf_append_u64(&b, UINT64_MAX);
    buf_append_char(&b, ' ');
    buf_append_i64(&b, -1);
    buf_append_char(&b, ' ');
    buf_append_i64(&b, INT64_MIN);
    buf_append_char(&b, ' ');
    buf_append_i64(&b, INT64_MAX);
    check_buf(&b);
    assert_string_equal(b.data, "0 18446744073709551615 -1 -9223372036854775808 "
                                "9223372036854775807");
    buf_deinit(&b);
}

static void test_consume(void **state)
{
    struct buf b = BUF_INIT;
    buf_append_str(&b, "hello, world");
    buf_consume(&b, 0);
    assert_string_equal(b.data, "hello, world");
    buf_consume(&b, 7);
    check_buf(&b);
    assert_string_equal(b.data, "world");
    assert_int_equal(b.len, 5);
    buf_append_str(&b, "!");
    assert_string_equal(b.data, "world!");
    buf_consume(&b, 6); /* exactly all */
    check_buf(&b);
    assert_int_equal(b.len, 0);
    buf_append_str(&b, "ab");
    buf_consume(&b, 100); /* more than there is */
    check_buf(&b);
    assert_int_equal(b.len, 0);
    buf_deinit(&b);
}

static void test_reset_keeps_memory(void **state)
{
    struct buf b = BUF_INIT;
    buf_reset(&b); /* on a buffer that never allocated */
    assert_int_equal(b.len, 0);
    buf_append_str(&b, "some bytes that allocate");
    char *data = b.data;
    size_t cap = b.cap;
    buf_reset(&b);
    check_buf(&b);
    assert_int_equal(b.len, 0);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    buf_deinit(&b);
}

static void test_fmt_u64(void **state)
{
    static const struct {
        uint64_t v;
        const char *s;
    } cases[] = {
        { 0, "0" },
        { 9, "9" },
        { 10, "10" },
        { 1000000, "1000000" },
        { UINT64_MAX - 1, "18446744073709551614" },
        { UINT64_MAX, "18446744073709551615" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[21 + 1];
        memset(out, 'X', sizeof(out));
        size_t n = fmt_u64(out, cases[i].v);
        assert_int_equal(n, strlen(cases[i].s));
        assert_string_equal(out, cases[i].s);
        assert_int_equal(out[21], 'X'); /* never writes past 21 bytes */
    }
}

static void test_str_to_u64(void **state)
{
    static const struct {
        const char *s;
        int rc;
        uint64_t v;
    } cases[] = {
        { "0", 0, 0 },
        { "7", 0, 7 },
        { "0012", 0, 12 },
        { "4294967296", 0, 4294967296u },
        { "18446744073709551615", 0, UINT64_MAX },
        { "18446744073709551616", -EINVAL, 0 },  /* UINT64_MAX + 1 */
        { "18446744073709551620", -EINVAL, 0 },
        { "99999999999999999999", -EINVAL, 0 },  /* 20 digits, overflows */
        { "184467440737095516150", -EINVAL, 0 }, /* 21 digits */
        { "", -EINVAL, 0 },
        { "-1", -EINVAL, 0 },
        { "+1", -EINVAL, 0 },
        { " 1", -EINVAL, 0 },
        { "1 ", -EINVAL, 0 },
        { "12a", -EINVAL, 0 },
        { "0x10", -EINVAL, 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 12345;
        int rc = str_to_u64(str_cstr(cases[i].s), &v);
        if (rc != cases[i].rc)
            fail_msg("str_to_u64(\"%s\") = %d, want %d", cases[i].s, rc, cases[i].rc);
        if (rc == 0 && v != cases[i].v)
            fail_msg("str_to_u64(\"%s\") gave %" PRIu64, cases[i].s, v);
        if (rc != 0 && v != 12345)
            fail_msg("str_to_u64(\"%s\") wrote its output on failure", cases[i].s);
    }
    /* Only the bytes of the view count, not what follows them. */
    uint64_t v = 0;
    assert_int_equal(str_to_u64(str_make("123456", 3), &v), 0);
    assert_int_equal(v, 123);
}

static void test_str_eq(void **state)
{
    assert_true(str_eq(STR_LIT("abc"), str_cstr("abc")));
    assert_false(str_eq(STR_LIT("abc"), STR_LIT("abd")));
    assert_false(str_eq(STR_LIT("abc"), STR_LIT("ab")));
    assert_true(str_eq(STR_NULL, STR_LIT("")));
    assert_true(str_eq_ci(STR_LIT("Content-Length"), STR_LIT("content-LENGTH")));
    assert_false(str_eq_ci(STR_LIT("Content-Length"), STR_LIT("Content-Lengt")));
    /* Only ASCII letters fold: '[' is not '{', '@' is not '`'. */
    assert_false(str_eq_ci(STR_LIT("["), STR_LIT("{")));
    assert_false(str_eq_ci(STR_LIT("@"), STR_LIT("`")));
}

static void test_str_list_has_token(void **state)
{
    static const struct {
        const char *list, *tok;
        bool want;
    } cases[] = {
        { "keep-alive, Upgrade", "upgrade", true },
        { "keep-alive, Upgrade", "keep-alive", true },
        { "keep-alive,Upgrade", "UPGRADE", true },
        { "  close  ", "close", true },
        { "\tclose\t,", "close", true },
        { ",,close,,", "close", true },
        { "close", "close", true },
        { "keep-alive, Upgraded", "upgrade", false },
        { "keep-alive, Upgrade", "grade", false },
        { "keep-alive", "keep", false },
        { "up grade", "upgrade", false },
        { "", "close", false },
        { " , , ", "close", false },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bool got = str_list_has_token(str_cstr(cases[i].list), str_cstr(cases[i].tok));
        if (got != cases[i].want)
            fail_msg("str_list_has_token(\"%s\", \"%s\") = %d", cases[i].list, cases[i].tok, got);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_grows_and_keeps_bytes),
        cmocka_unit_test(test_append_empty_and_nul_bytes),
        cmocka_unit_test(test_appendf_short_and_long),
        cmocka_unit_test(test_appendf_at_every_fill_level),
        cmocka_unit_test(test_append_numbers),
        cmocka_unit_test(test_consume),
        cmocka_unit_test(test_reset_keeps_memory),
        cmocka_unit_test(test_fmt_u64),
        cmocka_unit_test(test_str_to_u64),
        cmocka_unit_test(test_str_eq),
        cmocka_unit_test(test_str_list_has_token),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
