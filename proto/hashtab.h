/*
 * hashtab: the one hash table for byte-string keys that clients choose
 * (ids of a batch, channel names), keyed with SipHash-1-3 and a seed taken
 * at random once per process, so that nobody can pick keys that all land
 * in one chain (hash flooding), as Redis's dict.c does.
 *
 *   buckets[hash & mask] ──> node ──> node ──> NULL
 *                             │ embedded in the caller's object,
 *                             │ pointing at its key
 *
 * Intrusive: the caller embeds a struct hashtab_node in its object and owns
 * that memory; the table owns only its bucket array, so a lookup allocates
 * nothing. A node records where its key is (the key must stay where it is,
 * unchanged, while the node is in a table) and the key's hash. The table
 * doubles when it holds as many nodes as buckets, and never shrinks.
 */
#ifndef BATCHD_PROTO_HASHTAB_H
#define BATCHD_PROTO_HASHTAB_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct hashtab_node {
    struct hashtab_node *next;  /* chain */
    const char *key;
    uint32_t len;
    uint32_t hash;
};

struct hashtab {
    struct hashtab_node **buckets;
    uint32_t mask;              /* buckets - 1 */
    uint32_t count;             /* nodes in the table */
};

/* The object a node is embedded in. */
#define hashtab_entry(node, type, member) ((type *)(void *)((char *)(node) - offsetof(type, member)))

/* Takes the process's 128-bit seed from getrandom(); aborts with a message
 * when the kernel gives none. Call once at start, before any table holds a
 * node (the hashes of nodes in a table would no longer match). */
void hashtab_seed_init(void);
/* Sets the seed (tests; same rule as above). Until either is called the
 * seed is all zeroes. */
void hashtab_seed_set(const uint8_t seed[16]);

/* SipHash-c-d of data under a 128-bit key, as the algorithm's paper
 * describes it (key and result read as little-endian). The table uses
 * SipHash-1-3, as Redis and CPython do: keys are short, and 1-3 costs two
 * thirds of 2-4 there. 2-4 is the variant with published reference
 * vectors, which test the code both share. */
uint64_t hashtab_siphash13(const uint8_t key[16], const void *data, size_t len);
uint64_t hashtab_siphash24(const uint8_t key[16], const void *data, size_t len);
/* The hash the table uses for a key: SipHash-1-3 under the process's
 * seed, cut to 32 bits. */
uint32_t hashtab_hash(const char *key, size_t len);

/* nbuckets: a power of two. */
void hashtab_init(struct hashtab *t, uint32_t nbuckets);
/* Frees the bucket array; nodes still in the table are left as they are
 * (their memory is the caller's). */
void hashtab_deinit(struct hashtab *t);

/* Lookups, adds and removes are inline: the batch path makes them for
 * every id of every read.
 *
 * The node whose key is key[0..len), or NULL. hash: hashtab_hash(key, len),
 * for a caller that adds the key when it is missing and so hashes it once. */
static inline struct hashtab_node *hashtab_find_hashed(const struct hashtab *t, const char *key, size_t len,
                                                       uint32_t hash)
{
    for (struct hashtab_node *n = t->buckets[hash & t->mask]; n; n = n->next)
        if (n->hash == hash && n->len == len && memcmp(n->key, key, len) == 0)
            return n;
    return NULL;
}

static inline struct hashtab_node *hashtab_find(const struct hashtab *t, const char *key, size_t len)
{
    return hashtab_find_hashed(t, key, len, hashtab_hash(key, len));
}

/* Doubles the bucket array (hashtab_add calls it). */
void hashtab_grow(struct hashtab *t);

/* Adds n under key[0..len), which must not be in the table yet; n->key
 * points at key from now on. hash: hashtab_hash(key, len). */
static inline void hashtab_add(struct hashtab *t, struct hashtab_node *n, const char *key, size_t len,
                               uint32_t hash)
{
    /* Chains of one on average: each link is a cache miss. */
    if (t->count > t->mask)
        hashtab_grow(t);
    n->key = key;
    n->len = (uint32_t)len;
    n->hash = hash;
    n->next = t->buckets[hash & t->mask];
    t->buckets[hash & t->mask] = n;
    t->count++;
}

/* Takes n, which is in t, out of it. */
static inline void hashtab_remove(struct hashtab *t, struct hashtab_node *n)
{
    struct hashtab_node **pp = &t->buckets[n->hash & t->mask];
    while (*pp != n) {
        assert(*pp != NULL); /* n is not in t */
        pp = &(*pp)->next;
    }
    *pp = n->next;
    n->next = NULL;
    t->count--;
}

/* Visits every node, in no particular order:
 *
 *   struct hashtab_iter it;
 *   for (hashtab_iter_init(&it, &t); (n = hashtab_iter_next(&it)) != NULL;)
 *
 * The loop may remove (and free) the node it was just given, or any node
 * visited before; it must not add nodes (that may grow the table) nor
 * remove one not visited yet. */
struct hashtab_iter {
    const struct hashtab *t;
    uint32_t bucket;            /* the next bucket to look in */
    struct hashtab_node *next;  /* the next node to give */
};

void hashtab_iter_init(struct hashtab_iter *it, const struct hashtab *t);
struct hashtab_node *hashtab_iter_next(struct hashtab_iter *it);

#endif
