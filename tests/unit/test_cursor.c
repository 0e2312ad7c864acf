/*
 * test_cursor: list page cursors and cached pages (proto/cursor.h).
 * Known encodings come from Python's base64.urlsafe_b64encode with the
 * padding removed.
 */
#include "unit.h"

#include <errno.h>

#include "proto/cursor.h"

static void encode_is(const char *text, size_t len, const char *want)
{
    struct buf out = BUF_INIT;
    cursor_encode(text, len, &out);
    assert_str_eq(buf_str(&out), want);
    assert_int_equal(out.len, cursor_encoded_len(len));
    /* And back. */
    struct buf back = BUF_INIT;
    assert_int_equal(cursor_decode(buf_str(&out), 4096, &back), 0);
    assert_bytes_eq(back.data, back.len, text, len);
    buf_deinit(&back);
    buf_deinit(&out);
}

static void test_known_encodings(void **state)
{
    (void)state;
    encode_is("", 0, "AQ");
    encode_is("a", 1, "AWE");
    encode_is("ab", 2, "AWFi");
    encode_is("abc", 3, "AWFiYw");
    encode_is("2026-01-01 00:00:00+00 s42", 26, "ATIwMjYtMDEtMDEgMDA6MDA6MDArMDAgczQy");
    encode_is("\xc3\xa9\xe2\x82\xac", 5, "AcOp4oKs"); /* é€: UTF-8 passes */
}

static int decode(const char *in, size_t max, struct buf *out)
{
    buf_reset(out);
    return cursor_decode(str_cstr(in), max, out);
}

static void test_bad_cursors(void **state)
{
    (void)state;
    struct buf out = BUF_INIT;
    static const char *const bad[] = {
        "", "A", "AQ=", "AWFiYw==", /* padding is not accepted */
        "AWFiY", /* 5 characters: the last holds no whole byte */
        "AWF", /* "a" spelled with non-zero leftover bits (AWE is the one spelling) */
        "AWFiYx", /* the same for two bytes */
        "AmFiYw", /* version 2 */
        "AWEKYg", /* "a\nb": a control byte */
        "AQA", /* a NUL */
        "Af_-", /* bytes ff fe: not UTF-8 */
        "AWFi+w", "AWFi/w", "AWFi Yw", "AWFi.w", "AWFi%w", /* not base64url */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (decode(bad[i], 512, &out) != -EINVAL) {
            print_error("accepted \"%s\"\n", bad[i]);
            fail();
        }
    }
    assert_int_equal(decode("AWFiYw", 6, &out), 0);
    assert_str_eq(buf_str(&out), "abc");
    assert_int_equal(decode("AWFiYw", 5, &out), -E2BIG);
    /* Checking only (out NULL): the same verdicts. */
    assert_int_equal(cursor_decode(STR_LIT("AWFiYw"), 6, NULL), 0);
    assert_int_equal(cursor_decode(STR_LIT("AWF"), 512, NULL), -EINVAL);
    assert_int_equal(cursor_decode(STR_LIT("AWFiYw"), 5, NULL), -E2BIG);
    /* A NUL inside the input is a bad character, not the end. */
    buf_reset(&out);
    assert_int_equal(cursor_decode(STR_LIT("AWFi\0w"), 512, &out), -EINVAL);
    buf_deinit(&out);
}

static void test_text_rules(void **state)
{
    (void)state;
    assert_true(cursor_text_valid("2026-01-01 00:00:00+00 s1", 25));
    assert_true(cursor_text_valid("", 0));
    assert_false(cursor_text_valid("a\tb", 3));
    assert_false(cursor_text_valid("a\x7f", 2));
    assert_false(cursor_text_valid("a\0b", 3));
    assert_false(cursor_text_valid("\xc3", 1));
    assert_false(cursor_text_valid("\xed\xa0\x80", 3)); /* a surrogate */
}

static void test_field(void **state)
{
    (void)state;
    struct buf out = BUF_INIT;
    const char *names[] = { "status", "kind" };
    str_t values[] = { STR_LIT("open"), STR_NULL };
    cursor_page_field(0xabc, 20, STR_NULL, names, values, 2, &out);
    assert_str_eq(buf_str(&out), "00000abc 20 ~ status=open");
    buf_reset(&out);
    values[0] = STR_NULL;
    values[1] = STR_LIT("x:1");
    cursor_page_field(0xdeadbeef, 5, STR_LIT("AWFiYw"), names, values, 2, &out);
    assert_str_eq(buf_str(&out), "deadbeef 5 AWFiYw kind=x:1");
    buf_deinit(&out);
}

static void test_page_round_trip(void **state)
{
    (void)state;
    struct id_list ids, back;
    id_list_init(&ids);
    id_list_init(&back);
    assert_int_equal(id_list_add_csv(&ids, STR_LIT("s3,s1,a:b"), 10), 0);
    struct buf v = BUF_INIT, next = BUF_INIT;
    cursor_page_encode(1700000000123, STR_LIT("AWFiYw"), &ids, &v);
    assert_str_eq(buf_str(&v), "1 1700000000123 AWFiYw 3 s3 s1 a:b");
    uint64_t exp = 0;
    assert_int_equal(cursor_page_decode(buf_str(&v), 10, 64, &exp, &next, &back), 0);
    assert_true(exp == 1700000000123ULL);
    assert_str_eq(buf_str(&next), "AWFiYw");
    assert_int_equal(back.n, 3);
    assert_str_eq(id_list_get(&back, 2), "a:b");
    /* The last page, and an empty one. */
    id_list_deinit(&back);
    id_list_init(&back);
    buf_reset(&next);
    assert_int_equal(cursor_page_decode(STR_LIT("1 5 ~ 0"), 10, 64, &exp, &next, &back), 0);
    assert_int_equal(back.n, 0);
    assert_int_equal(next.len, 0);
    assert_true(exp == 5);
    /* One ids limit too many. */
    id_list_deinit(&back);
    id_list_init(&back);
    assert_int_equal(cursor_page_decode(buf_str(&v), 2, 64, &exp, &next, &back), -EINVAL);
    buf_deinit(&v);
    buf_deinit(&next);
    id_list_deinit(&ids);
    id_list_deinit(&back);
}

static void test_bad_pages(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "1", "1 5", "1 5 ~", "2 5 ~ 0", "1 05 ~ 0", "1 5 ~ 00", "1 5 ~ 0 ", " 1 5 ~ 0",
        "1  5 ~ 0", "1 5 ~ 1", "1 5 ~ 1 a b", "1 5 ~ 2 a", "1 5 ~ 1 a,b", "1 5 ~ 1 a\tb",
        "1 -5 ~ 0", "1 5 AWF 0", "1 5 AmFiYw 0", "1 5 ~~ 0", "1 99999999999999999999 ~ 0",
        "1 5 ~ 3 a b c", /* more than max_ids */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct id_list ids;
        id_list_init(&ids);
        struct buf next = BUF_INIT;
        uint64_t exp;
        if (cursor_page_decode(str_cstr(bad[i]), 2, 64, &exp, &next, &ids) != -EINVAL) {
            print_error("accepted \"%s\"\n", bad[i]);
            fail();
        }
        buf_deinit(&next);
        id_list_deinit(&ids);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_encodings),
        cmocka_unit_test(test_bad_cursors),
        cmocka_unit_test(test_text_rules),
        cmocka_unit_test(test_field),
        cmocka_unit_test(test_page_round_trip),
        cmocka_unit_test(test_bad_pages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
