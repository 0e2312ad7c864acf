/*
 * test_recent: the record of recently written keys (proto/recent.h) and
 * the replica list splitter (proto/connlist.h): expiry by window, notes
 * that move a key, the byte bound and the "full" state it leads to, and
 * ';' inside quoted conninfo values.
 */
#include "unit.h"

#include <errno.h>

#include "proto/connlist.h"
#include "proto/recent.h"

static void test_window(void **state)
{
    (void)state;
    struct recent r;
    recent_init(&r, 1 << 20, 1000);
    assert_false(recent_has(&r, "a", 1, 0));
    assert_int_equal(recent_note(&r, "a", 1, 100), 0);
    assert_true(recent_has(&r, "a", 1, 100));
    assert_true(recent_has(&r, "a", 1, 1099));
    assert_false(recent_has(&r, "b", 1, 500));
    assert_false(recent_has(&r, "a", 1, 1100)); /* exactly window_ms later: gone */
    assert_int_equal(recent_count(&r), 0);
    assert_int_equal(r.bytes, 0);
    recent_deinit(&r);
}

static void test_renote_moves(void **state)
{
    (void)state;
    struct recent r;
    recent_init(&r, 1 << 20, 1000);
    assert_int_equal(recent_note(&r, "a", 1, 0), 0);
    assert_int_equal(recent_note(&r, "b", 1, 500), 0);
    assert_int_equal(recent_note(&r, "a", 1, 900), 0); /* a again: now the newest */
    assert_int_equal(recent_count(&r), 2);
    assert_false(recent_has(&r, "b", 1, 1500));
    assert_true(recent_has(&r, "a", 1, 1500));
    assert_int_equal(recent_count(&r), 1);
    assert_false(recent_has(&r, "a", 1, 1900));
    recent_deinit(&r);
}

static void test_keys_by_bytes(void **state)
{
    (void)state;
    struct recent r;
    recent_init(&r, 1 << 20, 1000);
    assert_int_equal(recent_note(&r, "session:1", 9, 0), 0);
    assert_false(recent_has(&r, "session:10", 10, 1));
    assert_false(recent_has(&r, "session:", 8, 1));
    assert_true(recent_has(&r, "session:1", 9, 1));
    assert_int_equal(r.bytes, recent_entry_cost(9));
    recent_deinit(&r);
}

static void test_full(void **state)
{
    (void)state;
    struct recent r;
    size_t cost = recent_entry_cost(2);
    recent_init(&r, 3 * cost, 1000);
    char k[3];
    for (int i = 0; i < 3; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        assert_int_equal(recent_note(&r, k, 2, 10), 0);
    }
    assert_int_equal(r.bytes, 3 * cost);
    assert_false(recent_full(&r, 10));
    assert_false(recent_has(&r, "zz", 2, 10));
    /* The fourth does not fit: every key counts as recent for a window. */
    assert_int_equal(recent_note(&r, "k3", 2, 20), -ENOSPC);
    assert_int_equal(r.full_total, 1);
    assert_true(recent_full(&r, 20));
    assert_true(recent_has(&r, "zz", 2, 500));
    assert_true(recent_has(&r, "k3", 2, 1019));
    /* A key held already is renoted even when full. */
    assert_int_equal(recent_note(&r, "k1", 2, 30), 0);
    /* The window after the refused note: back to normal, old entries gone. */
    assert_false(recent_full(&r, 1020));
    assert_false(recent_has(&r, "zz", 2, 1020));
    assert_false(recent_has(&r, "k0", 2, 1020));
    assert_true(recent_has(&r, "k1", 2, 1020));
    assert_int_equal(recent_count(&r), 1);
    assert_int_equal(recent_note(&r, "k4", 2, 1021), 0);
    recent_deinit(&r);
}

static void test_many(void **state)
{
    (void)state;
    struct recent r;
    recent_init(&r, 64 << 20, 10000);
    char k[32];
    for (int i = 0; i < 50000; i++) {
        int n = snprintf(k, sizeof(k), "id-%d", i);
        assert_int_equal(recent_note(&r, k, (size_t)n, (uint64_t)i / 10), 0);
    }
    assert_int_equal(recent_count(&r), 50000);
    /* At 10000 ms the ten notes of ms 0 are window_ms old: they expire. */
    assert_false(recent_has(&r, "id-0", 4, 10000));
    assert_true(recent_has(&r, "id-49999", 8, 10000));
    assert_int_equal(recent_count(&r), 50000 - 10);
    recent_deinit(&r);
}

static int split(const char *v, struct connlist_item *out)
{
    return connlist_split(v, out, 4);
}

static void assert_item(const char *v, struct connlist_item it, const char *want)
{
    assert_str_eq(((str_t){ v + it.off, it.len }), want);
}

static void test_connlist(void **state)
{
    (void)state;
    struct connlist_item it[4];
    assert_int_equal(split("", it), 0);
    assert_int_equal(split("   ", it), 0);
    const char *v = "host=a port=5433";
    assert_int_equal(split(v, it), 1);
    assert_item(v, it[0], "host=a port=5433");
    v = " host=a port=5433;host=b ; postgresql://u@c:5/db ";
    assert_int_equal(split(v, it), 3);
    assert_item(v, it[0], "host=a port=5433");
    assert_item(v, it[1], "host=b");
    assert_item(v, it[2], "postgresql://u@c:5/db");
    v = "host=a password='x;y\\';z';host=b";
    assert_int_equal(split(v, it), 2);
    assert_item(v, it[0], "host=a password='x;y\\';z'");
    assert_item(v, it[1], "host=b");
    assert_int_equal(split("host=a;;host=b", it), CONNLIST_EMPTY_ITEM);
    assert_int_equal(split("host=a;", it), CONNLIST_EMPTY_ITEM);
    assert_int_equal(split(";host=a", it), CONNLIST_EMPTY_ITEM);
    assert_int_equal(split("a;b;c;d;e", it), CONNLIST_TOO_MANY);
    assert_int_equal(split("a;b;c;d", it), 4);
    assert_int_equal(split("host=a password='x;y", it), CONNLIST_OPEN_QUOTE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window),   cmocka_unit_test(test_renote_moves), cmocka_unit_test(test_keys_by_bytes),
        cmocka_unit_test(test_full),     cmocka_unit_test(test_many),         cmocka_unit_test(test_connlist),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
