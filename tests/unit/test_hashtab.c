/*
 * test_hashtab: the seeded hash table (proto/hashtab.h): SipHash-2-4
 * against the reference vectors, lookups, removal, growth, many keys of
 * one length, keys that differ only in their last byte or their length,
 * iteration that removes what it visits, and how evenly a fixed seed
 * spreads keys an attacker could choose against an unseeded hash.
 */
#include "unit.h"

#include <stdlib.h>

#include "proto/hashtab.h"

/* The 64 vectors of the reference implementation (vectors.h, vectors_sip64):
 * key 00 01 .. 0f, message 00 01 .. (i-1), read as little-endian. */
static const uint64_t sip64[64] = {
    0x726fdb47dd0e0e31ULL, 0x74f839c593dc67fdULL, 0x0d6c8009d9a94f5aULL,
    0x85676696d7fb7e2dULL, 0xcf2794e0277187b7ULL, 0x18765564cd99a68dULL,
    0xcbc9466e58fee3ceULL, 0xab0200f58b01d137ULL, 0x93f5f5799a932462ULL,
    0x9e0082df0ba9e4b0ULL, 0x7a5dbbc594ddb9f3ULL, 0xf4b32f46226bada7ULL,
    0x751e8fbc860ee5fbULL, 0x14ea5627c0843d90ULL, 0xf723ca908e7af2eeULL,
    0xa129ca6149be45e5ULL, 0x3f2acc7f57c29bdbULL, 0x699ae9f52cbe4794ULL,
    0x4bc1b3f0968dd39cULL, 0xbb6dc91da77961bdULL, 0xbed65cf21aa2ee98ULL,
    0xd0f2cbb02e3b67c7ULL, 0x93536795e3a33e88ULL, 0xa80c038ccd5ccec8ULL,
    0xb8ad50c6f649af94ULL, 0xbce192de8a85b8eaULL, 0x17d835b85bbb15f3ULL,
    0x2f2e6163076bcfadULL, 0xde4daaaca71dc9a5ULL, 0xa6a2506687956571ULL,
    0xad87a3535c49ef28ULL, 0x32d892fad841c342ULL, 0x7127512f72f27cceULL,
    0xa7f32346f95978e3ULL, 0x12e0b01abb051238ULL, 0x15e034d40fa197aeULL,
    0x314dffbe0815a3b4ULL, 0x027990f029623981ULL, 0xcadcd4e59ef40c4dULL,
    0x9abfd8766a33735cULL, 0x0e3ea96b5304a7d0ULL, 0xad0c42d6fc585992ULL,
    0x187306c89bc215a9ULL, 0xd4a60abcf3792b95ULL, 0xf935451de4f21df2ULL,
    0xa9538f0419755787ULL, 0xdb9acddff56ca510ULL, 0xd06c98cd5c0975ebULL,
    0xe612a3cb9ecba951ULL, 0xc766e62cfcadaf96ULL, 0xee64435a9752fe72ULL,
    0xa192d576b245165aULL, 0x0a8787bf8ecb74b2ULL, 0x81b3e73d20b49b6fULL,
    0x7fa8220ba3b2eceaULL, 0x245731c13ca42499ULL, 0xb78dbfaf3a8d83bdULL,
    0xea1ad565322a1a0bULL, 0x60e61c23a3795013ULL, 0x6606d7e446282b93ULL,
    0x6ca4ecb15c5f91e1ULL, 0x9f626da15c9625f3ULL, 0xe51b38608ef25f57ULL,
    0x958a324ceb064572ULL,
};

/* SipHash-1-3 has no published vectors; these are CPython's hash() of
 * bytes(range(n)) with PYTHONHASHSEED=0 (its SipHash-1-3 under a zero key),
 * an implementation independent of this one. */
static const struct {
    size_t len;
    uint64_t hash;
} sip13_zero_key[] = {
    { 1, 0x68a914128e01e473ULL },  { 7, 0x2f098ab0c751325aULL },  { 8, 0xead411e67ebe2eeaULL },
    { 9, 0x75927f9d95124362ULL },  { 15, 0xf30eb725bb91c9eaULL }, { 16, 0x8972188433a5c5b7ULL },
    { 63, 0x385d3e39e5f37359ULL },
};

static const uint8_t key_0_15[16] = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 };

struct item {
    int value;
    struct hashtab_node node;
    char key[32];
};

static struct item *item_new(const char *key, size_t len, int value)
{
    struct item *it = test_calloc(1, sizeof(*it));
    assert_true(len <= sizeof(it->key));
    memcpy(it->key, key, len);
    it->value = value;
    return it;
}

static void add(struct hashtab *t, struct item *it, size_t len)
{
    assert_null(hashtab_find(t, it->key, len));
    hashtab_add(t, &it->node, it->key, len, hashtab_hash(it->key, len));
}

static struct item *find(const struct hashtab *t, const char *key, size_t len)
{
    struct hashtab_node *n = hashtab_find(t, key, len);
    return n ? hashtab_entry(n, struct item, node) : NULL;
}

/* Adds items "id-0" .. "id-<n-1>" holding 0 .. n-1. */
static void add_numbered(struct hashtab *t, int n)
{
    char key[32];
    for (int i = 0; i < n; i++) {
        int len = snprintf(key, sizeof(key), "id-%d", i);
        add(t, item_new(key, (size_t)len, i), (size_t)len);
        assert_true(t->count <= t->mask + 1); /* grown: at most one node per bucket */
    }
}

/* The item "id-<i>", or NULL. */
static struct item *find_numbered(const struct hashtab *t, int i)
{
    char key[32];
    int len = snprintf(key, sizeof(key), "id-%d", i);
    return find(t, key, (size_t)len);
}

/* Removes and frees every item. */
static void empty(struct hashtab *t)
{
    struct hashtab_iter it;
    struct hashtab_node *n;
    for (hashtab_iter_init(&it, t); (n = hashtab_iter_next(&it)) != NULL;) {
        hashtab_remove(t, n);
        test_free(hashtab_entry(n, struct item, node));
    }
    assert_int_equal(t->count, 0);
}

static void check_hash(const char *what, size_t len, uint64_t got, uint64_t want)
{
    if (got != want)
        fail_msg("%s, length %zu: got %016llx, want %016llx", what, len, (unsigned long long)got,
                 (unsigned long long)want);
}

static void test_siphash_reference_vectors(void **state)
{
    (void)state;
    uint8_t msg[64];
    for (unsigned i = 0; i < 64; i++)
        msg[i] = (uint8_t)i;
    for (size_t i = 0; i < 64; i++)
        check_hash("SipHash-2-4", i, hashtab_siphash24(key_0_15, msg, i), sip64[i]);
    const uint8_t zero[16] = { 0 };
    for (size_t i = 0; i < sizeof(sip13_zero_key) / sizeof(sip13_zero_key[0]); i++)
        check_hash("SipHash-1-3", sip13_zero_key[i].len, hashtab_siphash13(zero, msg, sip13_zero_key[i].len),
                   sip13_zero_key[i].hash);
}

static void test_hash_depends_on_the_seed(void **state)
{
    (void)state;
    uint8_t a[16] = { 1 }, b[16] = { 2 };
    hashtab_seed_set(a);
    uint32_t ha = hashtab_hash("session-1", 9);
    assert_int_equal(hashtab_hash("session-1", 9), ha); /* stable under one seed */
    hashtab_seed_set(b);
    assert_int_not_equal(hashtab_hash("session-1", 9), ha);
    /* The table's hash is SipHash-1-3 under the seed, cut to 32 bits. */
    hashtab_seed_set(key_0_15);
    assert_int_equal(hashtab_hash("session-1", 9), (uint32_t)hashtab_siphash13(key_0_15, "session-1", 9));
    /* hashtab_seed_init draws a seed: two draws hash two keys alike, and
     * like the zero seed, only by a chance of about 2^-64. */
    uint8_t zero[16] = { 0 };
    hashtab_seed_set(zero);
    uint32_t zx = hashtab_hash("x", 1), zy = hashtab_hash("y", 1);
    hashtab_seed_init();
    uint32_t x1 = hashtab_hash("x", 1), y1 = hashtab_hash("y", 1);
    hashtab_seed_init();
    uint32_t x2 = hashtab_hash("x", 1), y2 = hashtab_hash("y", 1);
    assert_false(x1 == x2 && y1 == y2);
    assert_false(x1 == zx && y1 == zy);
    hashtab_seed_set(zero);
}

static void test_add_find_remove(void **state)
{
    (void)state;
    struct hashtab t;
    hashtab_init(&t, 4);
    struct item *a = item_new("s1", 2, 1), *b = item_new("s2", 2, 2), *e = item_new("", 0, 3);
    struct item *nul = item_new("s1\0x", 4, 4);
    add(&t, a, 2);
    add(&t, b, 2);
    add(&t, e, 0);
    add(&t, nul, 4);
    assert_int_equal(t.count, 4);
    assert_ptr_equal(find(&t, "s1", 2), a);
    assert_ptr_equal(find(&t, "s2", 2), b);
    assert_ptr_equal(find(&t, "", 0), e);
    assert_ptr_equal(find(&t, "s1\0x", 4), nul);
    assert_null(find(&t, "s1\0y", 4));
    assert_null(find(&t, "s", 1));  /* a prefix */
    assert_null(find(&t, "s10", 3)); /* longer */
    assert_null(find(&t, "s3", 2));
    /* The node points at its key. */
    assert_ptr_equal(a->node.key, a->key);
    assert_int_equal(a->node.len, 2);

    hashtab_remove(&t, &a->node);
    assert_null(find(&t, "s1", 2));
    assert_ptr_equal(find(&t, "s2", 2), b);
    assert_int_equal(t.count, 3);
    /* Back in again, under the same key. */
    add(&t, a, 2);
    assert_ptr_equal(find(&t, "s1", 2), a);
    empty(&t);
    hashtab_deinit(&t);
}

static void test_growth_keeps_every_key(void **state)
{
    (void)state;
    struct hashtab t;
    hashtab_init(&t, 1);
    enum { N = 5000 };
    add_numbered(&t, N);
    assert_int_equal(t.count, N);
    assert_int_equal(t.mask + 1, 8192);
    for (int i = 0; i < N; i++) {
        struct item *it = find_numbered(&t, i);
        assert_non_null(it);
        assert_int_equal(it->value, i);
    }
    /* Remove the even ones; the odd ones stay findable. */
    for (int i = 0; i < N; i += 2) {
        struct item *it = find_numbered(&t, i);
        hashtab_remove(&t, &it->node);
        test_free(it);
    }
    assert_int_equal(t.count, N / 2);
    for (int i = 0; i < N; i++) {
        struct item *it = find_numbered(&t, i);
        if (i % 2)
            assert_true(it != NULL && it->value == i);
        else
            assert_null(it);
    }
    empty(&t);
    hashtab_deinit(&t);
}

/* Keys of one length that differ in one byte, and keys that differ only
 * in length (zero bytes appended, which SipHash's length byte tells apart). */
static void test_same_length_and_padded_keys(void **state)
{
    (void)state;
    struct hashtab t;
    hashtab_init(&t, 64);
    char key[32] = { 0 };
    unsigned n = 0;
    for (unsigned pos = 0; pos < 16; pos++) {
        for (unsigned c = 0; c < 256; c++) {
            memset(key, 'a', 16);
            key[pos] = (char)c;
            if (c == 'a' && pos > 0)
                continue; /* the same key as pos 0 */
            add(&t, item_new(key, 16, (int)n++), 16);
        }
    }
    memset(key, 0, sizeof(key));
    for (unsigned len = 0; len <= 24; len++)
        add(&t, item_new(key, len, (int)n++), len);
    assert_int_equal(t.count, n);
    for (unsigned len = 0; len <= 24; len++) {
        struct item *it = find(&t, key, len);
        assert_non_null(it);
        assert_int_equal(it->node.len, len);
    }
    /* Every 16-byte key is found and is itself. */
    struct hashtab_iter iter;
    struct hashtab_node *node;
    unsigned seen = 0;
    for (hashtab_iter_init(&iter, &t); (node = hashtab_iter_next(&iter)) != NULL; seen++)
        assert_ptr_equal(find(&t, node->key, node->len), hashtab_entry(node, struct item, node));
    assert_int_equal(seen, n);
    empty(&t);
    hashtab_deinit(&t);
}

/* Keys chosen to share one bucket under the unseeded FNV-1a the table
 * replaced (found by trying, as an attacker would) spread evenly under
 * the seeded hash: no chain is long. */
static uint32_t fnv1a(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

static void test_chosen_keys_do_not_pile_up(void **state)
{
    (void)state;
    uint8_t s[16] = { 42 };
    hashtab_seed_set(s);
    struct hashtab t;
    hashtab_init(&t, 1024);
    /* 4-byte keys whose FNV-1a lands in bucket 0 of a 1024-bucket table. */
    enum { WANT = 1000 };
    unsigned n = 0;
    char key[4];
    for (uint32_t i = 0; n < WANT; i++) {
        memcpy(key, &i, 4);
        if ((fnv1a(key, 4) & 1023) != 0)
            continue;
        add(&t, item_new(key, 4, (int)n), 4);
        n++;
    }
    assert_int_equal(t.mask + 1, 1024);
    unsigned longest = 0;
    for (uint32_t b = 0; b <= t.mask; b++) {
        unsigned len = 0;
        for (struct hashtab_node *node = t.buckets[b]; node; node = node->next)
            len++;
        if (len > longest)
            longest = len;
    }
    /* 1000 keys in 1024 buckets: with a good hash the longest chain is
     * about 6; under FNV-1a it would be all 1000. */
    assert_true(longest <= 12);
    empty(&t);
    hashtab_deinit(&t);
    uint8_t zero[16] = { 0 };
    hashtab_seed_set(zero);
}

static void test_iteration_may_remove_what_it_visits(void **state)
{
    (void)state;
    struct hashtab t;
    hashtab_init(&t, 8);
    enum { N = 300 };
    add_numbered(&t, N);
    /* Remove (and free) every third node as it is visited; each node is
     * visited once. */
    unsigned char *visited = test_calloc(N, 1);
    struct hashtab_iter it;
    struct hashtab_node *n;
    unsigned seen = 0;
    for (hashtab_iter_init(&it, &t); (n = hashtab_iter_next(&it)) != NULL; seen++) {
        struct item *x = hashtab_entry(n, struct item, node);
        assert_int_equal(visited[x->value], 0);
        visited[x->value] = 1;
        if (x->value % 3 == 0) {
            hashtab_remove(&t, n);
            memset(x, 0xa5, sizeof(*x)); /* a stale link would now crash */
            test_free(x);
        }
    }
    assert_int_equal(seen, N);
    assert_int_equal(t.count, N - (N + 2) / 3);
    for (int i = 0; i < N; i++)
        assert_true((find_numbered(&t, i) == NULL) == (i % 3 == 0));
    test_free(visited);
    /* An empty table, and one deinitialised, iterate over nothing. */
    empty(&t);
    hashtab_iter_init(&it, &t);
    assert_null(hashtab_iter_next(&it));
    hashtab_deinit(&t);
    hashtab_iter_init(&it, &t);
    assert_null(hashtab_iter_next(&it));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_siphash_reference_vectors),
        cmocka_unit_test(test_hash_depends_on_the_seed),
        cmocka_unit_test(test_add_find_remove),
        cmocka_unit_test(test_growth_keeps_every_key),
        cmocka_unit_test(test_same_length_and_padded_keys),
        cmocka_unit_test(test_chosen_keys_do_not_pile_up),
        cmocka_unit_test(test_iteration_may_remove_what_it_visits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
