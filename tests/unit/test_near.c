/*
 * test_near: the near cache's store (daemon/cache/near.h): finding,
 * replacing, the byte bound and what it counts, CLOCK's second chance,
 * local expiry, drops and flushes, entries that outlive their removal while
 * an answer holds them, and the owner span kept at store time.
 */
#include "unit.h"

#include <malloc.h>

#include "daemon/cache/near.h"

static uint64_t evictions, drops[NEAR_DROP__COUNT];
static uint64_t *const drop_slots[NEAR_DROP__COUNT] = { &drops[0], &drops[1], &drops[2], &drops[3], &drops[4] };

static void setup(struct near_cache *nc, size_t limit)
{
    evictions = 0;
    memset(drops, 0, sizeof(drops));
    near_init(nc, limit, &evictions, drop_slots);
}

static bool put(struct near_cache *nc, const char *id, const char *doc, uint64_t now, uint64_t ttl)
{
    return near_put(nc, id, strlen(id), doc, doc ? strlen(doc) : 0, now, ttl, "owner");
}

static struct near_entry *find(struct near_cache *nc, const char *id, uint64_t now)
{
    return near_find(nc, id, strlen(id), now);
}

static void test_put_find_replace(void **state)
{
    (void)state;
    struct near_cache nc;
    setup(&nc, 1 << 20);
    assert_null(find(&nc, "a", 0));
    assert_true(put(&nc, "a", "{\"v\":1}", 0, 1000));
    struct near_entry *e = find(&nc, "a", 1);
    assert_non_null(e);
    assert_int_equal(e->doc_len, 7);
    assert_memory_equal(e->data, "{\"v\":1},", 8); /* the comma rides with the document */
    assert_string_equal(near_entry_id(e), "a");
    assert_false(e->absent);
    /* Replacing is not a drop. */
    assert_true(put(&nc, "a", "{\"v\":22}", 0, 1000));
    e = find(&nc, "a", 1);
    assert_int_equal(e->doc_len, 8);
    assert_int_equal(nc.ht.count, 1);
    for (int i = 0; i < NEAR_DROP__COUNT; i++)
        assert_int_equal(drops[i], 0);
    /* Absent markers. */
    assert_true(put(&nc, "gone", NULL, 0, 1000));
    e = find(&nc, "gone", 1);
    assert_non_null(e);
    assert_true(e->absent);
    near_deinit(&nc);
}

static void test_bytes_count_allocations_and_table(void **state)
{
    (void)state;
    struct near_cache nc;
    setup(&nc, 1 << 20);
    size_t empty = nc.bytes;
    assert_int_equal(empty, 64 * sizeof(void *)); /* the bucket array */
    put(&nc, "a", "{}", 0, 1000);
    struct near_entry *e = find(&nc, "a", 0);
    assert_int_equal(e->charge, malloc_usable_size(e) + sizeof(size_t));
    assert_true(e->charge >= sizeof(*e) + 2 + 1 + 1 + 1);
    assert_int_equal(nc.bytes, empty + e->charge);
    near_drop(&nc, "a", 1, NEAR_DROP_REDIS);
    assert_int_equal(nc.bytes, empty);
    /* Growing the table is counted too. */
    char id[16];
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof(id), "id%d", i);
        put(&nc, id, "{}", 0, 1000);
    }
    size_t sum = ((size_t)nc.ht.mask + 1) * sizeof(void *);
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof(id), "id%d", i);
        sum += find(&nc, id, 0)->charge;
    }
    assert_int_equal(nc.bytes, sum);
    near_deinit(&nc);
}

static void test_bound_holds_under_ten_times_its_size(void **state)
{
    (void)state;
    struct near_cache nc;
    size_t limit = 65536;
    setup(&nc, limit);
    char id[32], doc[300];
    memset(doc, 'x', sizeof(doc));
    doc[0] = '"';
    doc[sizeof(doc) - 2] = '"';
    doc[sizeof(doc) - 1] = '\0';
    unsigned stored = 0;
    for (int i = 0; i < 2500; i++) { /* ~10x the bound in documents */
        snprintf(id, sizeof(id), "doc-%d", i);
        stored += put(&nc, id, doc, 0, 1000);
        assert_true(nc.bytes <= limit);
    }
    assert_int_equal(stored, 2500);
    assert_true(evictions > 0);
    assert_true(nc.ht.count > 50);
    assert_int_equal(evictions + nc.ht.count, 2500);
    /* A smaller bound evicts at once. */
    near_set_limit(&nc, 32768);
    assert_true(nc.bytes <= 32768);
    near_deinit(&nc);
}

static void test_too_large_is_not_kept(void **state)
{
    (void)state;
    struct near_cache nc;
    setup(&nc, 65536);
    char *big = malloc(65536 / 16 + 2);
    memset(big, 'x', 65536 / 16 + 1);
    big[65536 / 16 + 1] = '\0';
    assert_false(put(&nc, "big", big, 0, 1000));
    assert_null(find(&nc, "big", 0));
    big[65536 / 16] = '\0';
    assert_true(put(&nc, "big", big, 0, 1000));
    free(big);
    near_deinit(&nc);
}

static void test_clock_gives_hit_entries_a_second_chance(void **state)
{
    (void)state;
    struct near_cache nc;
    setup(&nc, 1 << 20);
    put(&nc, "old-hot", "1", 0, 1000);
    put(&nc, "old-cold", "2", 0, 1000);
    put(&nc, "new", "3", 0, 1000);
    /* Room for exactly the three: the next one evicts. */
    find(&nc, "old-hot", 0);
    nc.limit = nc.bytes;
    put(&nc, "newest", "4", 0, 1000);
    assert_non_null(find(&nc, "old-hot", 0));   /* hit since stored: passed over */
    assert_null(find(&nc, "old-cold", 0));      /* the oldest without a hit: gone */
    assert_non_null(find(&nc, "newest", 0));
    assert_int_equal(evictions, 1);
    near_deinit(&nc);
}

static void test_expiry_is_local_time(void **state)
{
    (void)state;
    struct near_cache nc;
    setup(&nc, 1 << 20);
    put(&nc, "a", "1", 1000, 500);
    assert_non_null(find(&nc, "a", 1499));
    size_t before = nc.bytes;
    assert_null(find(&nc, "a", 1500));
    assert_true(nc.bytes < before);
    assert_int_equal(nc.ht.count, 0);
    near_deinit(&nc);
}

static void test_drops_and_flush_are_counted_by_source(void **state)
{
    (void)state;
    struct near_cache nc;
    setup(&nc, 1 << 20);
    put(&nc, "a", "1", 0, 1000);
    put(&nc, "b", "2", 0, 1000);
    put(&nc, "c", "3", 0, 1000);
    assert_true(near_drop(&nc, "a", 1, NEAR_DROP_REDIS));
    assert_false(near_drop(&nc, "a", 1, NEAR_DROP_REDIS)); /* nothing left to drop */
    assert_true(near_drop(&nc, "b", 1, NEAR_DROP_WRITE));
    assert_int_equal(near_clear(&nc, NEAR_DROP_FLUSH), 1);
    assert_int_equal(drops[NEAR_DROP_REDIS], 1);
    assert_int_equal(drops[NEAR_DROP_WRITE], 1);
    assert_int_equal(drops[NEAR_DROP_FLUSH], 1);
    assert_int_equal(nc.ht.count, 0);
    assert_int_equal(nc.bytes, 64 * sizeof(void *));
    near_deinit(&nc);
}

static void test_a_held_entry_outlives_its_removal(void **state)
{
    (void)state;
    struct near_cache nc;
    setup(&nc, 1 << 20);
    put(&nc, "a", "{\"v\":\"kept\"}", 0, 1000);
    struct near_entry *e = find(&nc, "a", 0);
    near_entry_ref(e); /* an answer being written */
    near_drop(&nc, "a", 1, NEAR_DROP_REDIS);
    assert_false(e->in_table);
    assert_null(find(&nc, "a", 0));
    put(&nc, "a", "{\"v\":\"new\"}", 0, 1000);
    assert_memory_equal(e->data, "{\"v\":\"kept\"}", 12); /* still readable (ASan checks) */
    near_entry_release(e);
    assert_memory_equal(find(&nc, "a", 0)->data, "{\"v\":\"new\"}", 11);
    near_deinit(&nc);
}

static void test_owner_span_is_found_once(void **state)
{
    (void)state;
    struct near_cache nc;
    setup(&nc, 1 << 20);
    put(&nc, "s", "{\"id\":\"s\",\"owner\":\"alice\"}", 0, 1000);
    put(&nc, "n", "{\"owner\": 42}", 0, 1000);
    put(&nc, "e", "{\"owner\":\"al\\u0069ce\"}", 0, 1000);
    put(&nc, "none", "{\"id\":1}", 0, 1000);
    put(&nc, "obj", "{\"owner\":{\"id\":\"alice\"}}", 0, 1000);
    put(&nc, "arr", "[\"owner\",\"alice\"]", 0, 1000);
    assert_true(near_entry_owned_by(find(&nc, "s", 0), "alice", 5));
    assert_false(near_entry_owned_by(find(&nc, "s", 0), "alic", 4));
    assert_false(near_entry_owned_by(find(&nc, "s", 0), NULL, 0));
    assert_true(near_entry_owned_by(find(&nc, "n", 0), "42", 2));
    assert_false(near_entry_owned_by(find(&nc, "n", 0), "4", 1));
    assert_true(near_entry_owned_by(find(&nc, "e", 0), "alice", 5)); /* escapes decoded */
    assert_false(near_entry_owned_by(find(&nc, "none", 0), "1", 1));
    assert_false(near_entry_owned_by(find(&nc, "obj", 0), "alice", 5));
    assert_false(near_entry_owned_by(find(&nc, "arr", 0), "alice", 5));
    near_deinit(&nc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_find_replace),
        cmocka_unit_test(test_bytes_count_allocations_and_table),
        cmocka_unit_test(test_bound_holds_under_ten_times_its_size),
        cmocka_unit_test(test_too_large_is_not_kept),
        cmocka_unit_test(test_clock_gives_hit_entries_a_second_chance),
        cmocka_unit_test(test_expiry_is_local_time),
        cmocka_unit_test(test_drops_and_flush_are_counted_by_source),
        cmocka_unit_test(test_a_held_entry_outlives_its_removal),
        cmocka_unit_test(test_owner_span_is_found_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
