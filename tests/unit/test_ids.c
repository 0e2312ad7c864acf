/*
 * test_ids: id validation, id lists, the PostgreSQL array literal, and Redis
 * key templating (proto/ids.h, url_template_expand).
 */
#include "unit.h"

#include <errno.h>

#include "proto/ids.h"
#include "proto/url.h"

static void test_valid_ids(void **state)
{
    (void)state;
    static const char *const good[] = { "s1", "A", "a-b_c.d:e", "0", "UPPER", "x:1:2" };
    static const char *const bad[] = { "", "a b", "a/b", "a,b", "ä", "a\"b", "a\\b", "a%20", "{", "a\n" };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_true(ids_valid(good[i], strlen(good[i])));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(ids_valid(bad[i], strlen(bad[i])));
    char max[IDS_MAX_LEN + 1];
    memset(max, 'x', sizeof(max));
    assert_true(ids_valid(max, IDS_MAX_LEN));
    assert_false(ids_valid(max, IDS_MAX_LEN + 1));
    assert_false(ids_valid("a\0b", 3));
}

static void test_list_keeps_order_and_duplicates(void **state)
{
    (void)state;
    struct id_list l;
    id_list_init(&l);
    assert_int_equal(id_list_add_csv(&l, STR_LIT("s3,s1,s3"), 10), 0);
    assert_int_equal(id_list_add(&l, "s9", 2, 10), 0);
    assert_int_equal(l.n, 4);
    assert_str_eq(id_list_get(&l, 0), "s3");
    assert_str_eq(id_list_get(&l, 1), "s1");
    assert_str_eq(id_list_get(&l, 2), "s3");
    assert_str_eq(id_list_get(&l, 3), "s9");
    id_list_deinit(&l);
}

static void test_list_errors(void **state)
{
    (void)state;
    static const char *const bad_csv[] = { "", ",", "a,", ",a", "a,,b", "a, b", "a,b c" };
    for (size_t i = 0; i < sizeof(bad_csv) / sizeof(bad_csv[0]); i++) {
        struct id_list l;
        id_list_init(&l);
        assert_int_equal(id_list_add_csv(&l, str_cstr(bad_csv[i]), 10), -EINVAL);
        id_list_deinit(&l);
    }
    struct id_list l;
    id_list_init(&l);
    assert_int_equal(id_list_add_csv(&l, STR_LIT("a,b,c"), 3), 0);
    assert_int_equal(id_list_add(&l, "d", 1, 3), -E2BIG);
    assert_int_equal(l.n, 3);
    id_list_deinit(&l);
    id_list_init(&l);
    assert_int_equal(id_list_add_csv(&l, STR_LIT("a,b,c,d"), 3), -E2BIG);
    id_list_deinit(&l);
}

static void test_many_ids_grow(void **state)
{
    (void)state;
    struct id_list l;
    id_list_init(&l);
    char id[16];
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(id, sizeof(id), "id%d", i);
        assert_int_equal(id_list_add(&l, id, (size_t)n, 5000), 0);
    }
    assert_str_eq(id_list_get(&l, 4321), "id4321");
    id_list_deinit(&l);
}

static void test_pg_array(void **state)
{
    (void)state;
    struct id_list l;
    id_list_init(&l);
    assert_int_equal(id_list_add_csv(&l, STR_LIT("s1,NULL,a:b"), 10), 0);
    struct buf out = BUF_INIT;
    for (unsigned i = 0; i < l.n; i++)
        ids_pg_array_add(&out, id_list_get(&l, i).p, id_list_get(&l, i).len);
    ids_pg_array_end(&out);
    assert_str_eq(buf_str(&out), "{\"s1\",\"NULL\",\"a:b\"}");
    buf_reset(&out);
    ids_pg_array_end(&out);
    assert_str_eq(buf_str(&out), "{}");
    buf_deinit(&out);
    id_list_deinit(&l);
}

static void test_key_template(void **state)
{
    (void)state;
    struct buf out = BUF_INIT;
    url_template_expand("session:{id}", "id", STR_LIT("s42"), &out);
    assert_str_eq(buf_str(&out), "session:s42");
    buf_reset(&out);
    url_template_expand("{id}:{id}:v2", "id", STR_LIT("x"), &out);
    assert_str_eq(buf_str(&out), "x:x:v2");
    buf_reset(&out);
    url_template_expand("events:{tenant}:{id}", "id", STR_LIT("7"), &out);
    assert_str_eq(buf_str(&out), "events:{tenant}:7");
    buf_deinit(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_ids),
        cmocka_unit_test(test_list_keeps_order_and_duplicates),
        cmocka_unit_test(test_list_errors),
        cmocka_unit_test(test_many_ids_grow),
        cmocka_unit_test(test_pg_array),
        cmocka_unit_test(test_key_template),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
