/*
 * test_batch: the bookkeeping of coalesced reads (proto/batch.h): which
 * request gets which result, single flight, late joiners, early leavers,
 * and reference counts (run under ASan, a leak or use-after-free fails).
 */
#include "unit.h"

#include "proto/batch.h"

static struct batch_entry *get(struct batch_table *t, const char *id, bool *created)
{
    return batch_table_get(t, id, strlen(id), created);
}

static unsigned count(struct batch_read *done)
{
    unsigned n = 0;
    for (; done; done = done->next_done)
        n++;
    return n;
}

static void test_one_entry_per_id(void **state)
{
    (void)state;
    struct batch_table t;
    batch_table_init(&t);
    bool created;
    struct batch_entry *a = get(&t, "s1", &created);
    assert_true(created);
    assert_int_equal(a->state, BATCH_QUEUED);
    assert_ptr_equal(get(&t, "s1", &created), a);
    assert_false(created);
    struct batch_entry *b = get(&t, "s2", &created);
    assert_true(created);
    assert_ptr_not_equal(a, b);
    assert_ptr_equal(batch_table_find(&t, "s2", 2), b);
    assert_null(batch_table_find(&t, "s3", 2));
    batch_table_deinit(&t);
}

static void test_results_reach_the_right_slots(void **state)
{
    (void)state;
    struct batch_table t;
    batch_table_init(&t);
    bool c;
    /* A = [s1, s2, s1], B = [s2] */
    struct batch_read A, B;
    batch_read_init(&A, 3);
    batch_read_init(&B, 1);
    struct batch_entry *s1 = get(&t, "s1", &c), *s2 = get(&t, "s2", &c);
    batch_read_set(&A, 0, s1);
    batch_read_set(&A, 1, s2);
    batch_read_set(&A, 2, get(&t, "s1", &c));
    batch_read_set(&B, 0, get(&t, "s2", &c));
    assert_int_equal(A.pending, 3);
    assert_int_equal(B.pending, 1);

    struct batch_read *done = NULL;
    batch_entry_resolve(s2, BATCH_FOUND, 0, "{\"v\":2}", 7, &done);
    assert_int_equal(count(done), 1);
    assert_ptr_equal(done, &B);
    assert_int_equal(A.pending, 2);
    assert_bytes_eq(B.slots[0]->doc, B.slots[0]->doc_len, "{\"v\":2}", 7);

    done = NULL;
    batch_entry_resolve(s1, BATCH_ABSENT, 0, NULL, 0, &done);
    assert_int_equal(count(done), 1);
    assert_ptr_equal(done, &A);
    assert_int_equal(A.slots[0]->result, BATCH_ABSENT);
    assert_int_equal(A.slots[1]->result, BATCH_FOUND);
    assert_ptr_equal(A.slots[0], A.slots[2]);

    /* Resolving twice changes nothing and reports nobody. */
    done = NULL;
    batch_entry_resolve(s1, BATCH_FOUND, 0, "1", 1, &done);
    assert_null(done);
    assert_int_equal(s1->result, BATCH_ABSENT);

    batch_read_release(&A);
    batch_read_release(&B);
    batch_table_deinit(&t);
}

static void test_late_joiner_of_resolved_entry_completes_at_once(void **state)
{
    (void)state;
    struct batch_table t;
    batch_table_init(&t);
    bool c;
    struct batch_entry *e = get(&t, "s1", &c);
    struct batch_read *done = NULL;
    batch_entry_resolve(e, BATCH_FOUND, 0, "[]", 2, &done);
    /* Still in the table while its write-back runs: a joiner needs no load. */
    struct batch_read R;
    batch_read_init(&R, 1);
    assert_ptr_equal(get(&t, "s1", &c), e);
    assert_false(c);
    batch_read_set(&R, 0, e);
    assert_int_equal(R.pending, 0);
    batch_table_remove(&t, e);
    assert_null(batch_table_find(&t, "s1", 2));
    /* A new read after removal starts a fresh load. */
    struct batch_entry *fresh = get(&t, "s1", &c);
    assert_true(c);
    assert_ptr_not_equal(fresh, e);
    assert_bytes_eq(R.slots[0]->doc, R.slots[0]->doc_len, "[]", 2); /* R keeps the old one alive */
    batch_read_release(&R);
    batch_table_deinit(&t);
}

static void test_reader_that_leaves_early_is_not_reported(void **state)
{
    (void)state;
    struct batch_table t;
    batch_table_init(&t);
    bool c;
    struct batch_entry *e = get(&t, "s1", &c);
    struct batch_read *X = test_malloc(sizeof(*X)), Y;
    batch_read_init(X, 2);
    batch_read_init(&Y, 1);
    batch_read_set(X, 0, e);
    batch_read_set(X, 1, e);
    batch_read_set(&Y, 0, e);
    batch_read_release(X); /* X is gone before the load ends */
    test_free(X);
    struct batch_read *done = NULL;
    batch_entry_resolve(e, BATCH_FAILED, 7, NULL, 0, &done);
    assert_int_equal(count(done), 1);
    assert_ptr_equal(done, &Y);
    assert_int_equal(Y.slots[0]->err, 7);
    batch_read_release(&Y);
    batch_table_deinit(&t);
}

static void test_many_ids_and_growth(void **state)
{
    (void)state;
    struct batch_table t;
    batch_table_init(&t);
    enum { N = 3000 };
    struct batch_read R;
    batch_read_init(&R, N);
    char id[16];
    bool c;
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "s%d", i % 1000); /* each id three times */
        batch_read_set(&R, (unsigned)i, get(&t, id, &c));
    }
    assert_int_equal(batch_table_count(&t), 1000);
    assert_int_equal(R.pending, N);
    struct batch_read *done = NULL;
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof(id), "s%d", i);
        struct batch_entry *e = batch_table_find(&t, id, strlen(id));
        assert_non_null(e);
        batch_entry_resolve(e, BATCH_FOUND, 0, id, strlen(id), &done);
        assert_true(i == 999 ? done == &R : done == NULL);
    }
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "s%d", i % 1000);
        assert_str_eq(str_make(R.slots[i]->doc, R.slots[i]->doc_len), id);
    }
    batch_read_release(&R);
    batch_table_deinit(&t);
}

/* Freed short-id entries are kept and handed out again; a long id gets an
 * entry of its own size, freed at once. batch_pool_drain frees the kept
 * ones (ASan reports a leak otherwise). */
static void test_entries_are_reused_and_long_ids_fit(void **state)
{
    (void)state;
    struct batch_table t;
    batch_table_init(&t);
    bool c;
    struct batch_entry *a = get(&t, "s1", &c);
    batch_table_remove(&t, a); /* the last reference: kept for reuse */
    struct batch_entry *b = get(&t, "s2", &c);
    assert_ptr_equal(b, a);
    assert_int_equal(b->refs, 1);
    assert_int_equal(b->n_waiters, 0);
    assert_str_eq(str_make(b->id, b->id_len), "s2");
    char long_id[301];
    memset(long_id, 'x', 300);
    long_id[300] = '\0';
    struct batch_entry *l = get(&t, long_id, &c);
    assert_true(c);
    assert_int_equal(l->id_len, 300);
    assert_ptr_equal(batch_table_find(&t, long_id, 300), l);
    batch_table_remove(&t, l);
    assert_null(batch_table_find(&t, long_id, 300));
    batch_table_deinit(&t);
    batch_pool_drain();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_entry_per_id),
        cmocka_unit_test(test_results_reach_the_right_slots),
        cmocka_unit_test(test_late_joiner_of_resolved_entry_completes_at_once),
        cmocka_unit_test(test_reader_that_leaves_early_is_not_reported),
        cmocka_unit_test(test_many_ids_and_growth),
        cmocka_unit_test(test_entries_are_reused_and_long_ids_fit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
