/* hashtab: seeded chained hash table. See hashtab.h. */
#include "proto/hashtab.h"

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "proto/mem.h"

static uint8_t seed[16];

void hashtab_seed_set(const uint8_t s[16])
{
    memcpy(seed, s, sizeof(seed));
}

void hashtab_seed_init(void)
{
    uint8_t s[16];
    size_t got = 0;
    while (got < sizeof(s)) {
        ssize_t n = getrandom(s + got, sizeof(s) - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "batchd: getrandom() failed for the hash seed: %s\n", strerror(errno));
            abort();
        }
        got += (size_t)n;
    }
    hashtab_seed_set(s);
}

/* --- SipHash (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012) --- */

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

#define SIPROUND(v0, v1, v2, v3) \
    do { \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2; \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0; \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
    } while (0)

static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof(w));
    return le64toh(w);
}

/* SipHash-c-d; inlined into each variant so that the round counts are
 * constants and the loops unroll. */
static inline __attribute__((always_inline)) uint64_t siphash(const uint8_t key[16], const uint8_t *p, size_t len,
                                                               int c, int d)
{
    uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL;
    uint64_t v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL;
    uint64_t v3 = k1 ^ 0x7465646279746573ULL;
    const uint8_t *end = p + (len & ~(size_t)7);
    for (; p != end; p += 8) {
        uint64_t m = load_le64(p);
        v3 ^= m;
        for (int i = 0; i < c; i++)
            SIPROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    /* The last word: the bytes left, and the length's low byte on top. */
    uint64_t b = (uint64_t)len << 56;
    switch (len & 7) {
    case 7: b |= (uint64_t)p[6] << 48; /* fall through */
    case 6: b |= (uint64_t)p[5] << 40; /* fall through */
    case 5: b |= (uint64_t)p[4] << 32; /* fall through */
    case 4: b |= (uint64_t)p[3] << 24; /* fall through */
    case 3: b |= (uint64_t)p[2] << 16; /* fall through */
    case 2: b |= (uint64_t)p[1] << 8;  /* fall through */
    case 1: b |= (uint64_t)p[0];
    }
    v3 ^= b;
    for (int i = 0; i < c; i++)
        SIPROUND(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xff;
    for (int i = 0; i < d; i++)
        SIPROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t hashtab_siphash24(const uint8_t key[16], const void *data, size_t len)
{
    return siphash(key, data, len, 2, 4);
}

uint64_t hashtab_siphash13(const uint8_t key[16], const void *data, size_t len)
{
    return siphash(key, data, len, 1, 3);
}

uint32_t hashtab_hash(const char *key, size_t len)
{
    return (uint32_t)siphash(seed, (const uint8_t *)key, len, 1, 3);
}

/* --- the table --------------------------------------------------------------- */

void hashtab_init(struct hashtab *t, uint32_t nbuckets)
{
    assert(nbuckets > 0 && (nbuckets & (nbuckets - 1)) == 0);
    t->buckets = mem_calloc(nbuckets, sizeof(*t->buckets));
    t->mask = nbuckets - 1;
    t->count = 0;
}

void hashtab_deinit(struct hashtab *t)
{
    free(t->buckets);
    t->buckets = NULL;
    t->mask = 0;
    t->count = 0;
}

void hashtab_grow(struct hashtab *t)
{
    uint32_t mask = t->mask * 2 + 1;
    assert(mask > t->mask);
    struct hashtab_node **b = mem_calloc((size_t)mask + 1, sizeof(*b));
    for (uint32_t i = 0; i <= t->mask; i++) {
        struct hashtab_node *n = t->buckets[i];
        while (n) {
            struct hashtab_node *next = n->next;
            n->next = b[n->hash & mask];
            b[n->hash & mask] = n;
            n = next;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->mask = mask;
}

/* --- iteration ------------------------------------------------------------------ */

void hashtab_iter_init(struct hashtab_iter *it, const struct hashtab *t)
{
    it->t = t;
    it->bucket = 0;
    it->next = NULL;
}

struct hashtab_node *hashtab_iter_next(struct hashtab_iter *it)
{
    const struct hashtab *t = it->t;
    while (it->next == NULL) {
        if (t->buckets == NULL || it->bucket > t->mask)
            return NULL;
        it->next = t->buckets[it->bucket++];
    }
    /* Taken before the caller sees n, so that it may remove n. */
    struct hashtab_node *n = it->next;
    it->next = n->next;
    return n;
}
