/*
 * test_slot_tag: a tombstone or idempotency key named by slot_tag lands in
 * its key's cluster slot, whatever braces the key holds (ids come from
 * clients), and the common forms read as documented.
 */
#include "unit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/buf.h"
#include "proto/cluster.h"
#include "proto/slot_tag.h"

static void check(const char *key, size_t len, const char *want)
{
    struct buf out = BUF_INIT;
    slot_tag_prefixed("batchd:inval:", key, len, &out);
    assert_true(out.len > len);
    assert_memory_equal(out.data, "batchd:inval:", 13);
    assert_int_equal(cluster_key_slot(out.data, out.len), cluster_key_slot(key, len));
    if (want)
        assert_string_equal(out.data, want);
    buf_deinit(&out);
}

static void test_forms(void **state)
{
    (void)state;
    check("session:s1", 10, "batchd:inval:{session:s1}");
    check("s:{u1}:x", 8, "batchd:inval:s:{u1}:x");
    check("a{b", 3, "batchd:inval:{a{b}");
    check("", 0, NULL); /* "{}" would be no tag at all */
    check("a}b", 3, NULL);      /* a '}' with no tag: the slot's number as the tag */
    check("{}x}", 4, NULL);
    check("x{}}{", 5, NULL);
}

/* Every byte string of a few characters drawn from the ones that matter. */
static void test_every_short_key(void **state)
{
    (void)state;
    const char alphabet[] = "{}a:";
    char key[6];
    for (unsigned len = 0; len <= 5; len++) {
        unsigned total = 1;
        for (unsigned i = 0; i < len; i++)
            total *= 4;
        for (unsigned n = 0; n < total; n++) {
            unsigned v = n;
            for (unsigned i = 0; i < len; i++, v /= 4)
                key[i] = alphabet[v % 4];
            check(key, len, NULL);
        }
    }
}

static void test_random_keys(void **state)
{
    (void)state;
    srand(7);
    char key[40];
    for (int n = 0; n < 20000; n++) {
        size_t len = (size_t)(rand() % 40);
        for (size_t i = 0; i < len; i++) {
            int r = rand() % 10;
            key[i] = r == 0 ? '{' : r == 1 ? '}' : (char)('a' + rand() % 26);
        }
        check(key, len, NULL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forms),
        cmocka_unit_test(test_every_short_key),
        cmocka_unit_test(test_random_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
