/*
 * test_freelist: the bounded list of spare objects (proto/freelist.h).
 */
#include "unit.h"

#include <stdlib.h>

#include "proto/freelist.h"

struct obj {
    struct obj *link_space; /* overwritten while spare */
    int value;
};

static void test_get_returns_last_put_and_counts(void **state)
{
    struct freelist fl = FREELIST_INIT(2);
    assert_null(freelist_get(&fl));
    struct obj *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b)), *c = calloc(1, sizeof(*c));
    assert_true(freelist_put(&fl, a));
    assert_true(freelist_put(&fl, b));
    assert_int_equal(fl.len, 2);
    /* Full: the third stays the caller's. */
    assert_false(freelist_put(&fl, c));
    assert_int_equal(fl.len, 2);
    free(c);
    assert_ptr_equal(freelist_get(&fl), b);
    assert_ptr_equal(freelist_get(&fl), a);
    assert_null(freelist_get(&fl));
    assert_int_equal(fl.len, 0);
    free(a);
    free(b);
}

static int destroyed;
static void destroy(void *p)
{
    destroyed++;
    free(p);
}

static void test_drain_destroys_every_spare(void **state)
{
    struct freelist fl = FREELIST_INIT(8);
    for (int i = 0; i < 5; i++)
        assert_true(freelist_put(&fl, malloc(sizeof(struct obj))));
    destroyed = 0;
    freelist_drain(&fl, destroy);
    assert_int_equal(destroyed, 5);
    assert_int_equal(fl.len, 0);
    assert_null(freelist_get(&fl));
    /* NULL destroy means free(); ASan reports a leak if it does not. */
    assert_true(freelist_put(&fl, malloc(sizeof(struct obj))));
    freelist_drain(&fl, NULL);
    assert_int_equal(fl.len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_returns_last_put_and_counts),
        cmocka_unit_test(test_drain_destroys_every_spare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
