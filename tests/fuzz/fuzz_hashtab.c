/*
 * fuzz_hashtab: libFuzzer harness for the seeded hash table (proto/hashtab.c).
 *
 *   input: [seed x16][log2 of the first bucket count] then operations:
 *          [op][len] key bytes (len % 33 of them)
 *
 * Operations add, remove and look up keys (any bytes, NUL included, empty
 * too) and walk the table removing some of what they visit, in any order,
 * under any seed and from a table of 1 to 128 buckets. A model kept here (a
 * plain array) predicts every lookup, and after every step the table must
 * hold exactly the model's keys: the count agrees, every node sits in the
 * bucket its hash names, holds the hash of its key, and is the one found
 * for that key; a walk visits each node once.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/hashtab.h"
#include "tests/fuzz/fuzz.h"

#define MAX_KEYS 256
#define MAX_KEY 32

struct item {
    struct hashtab_node node;
    unsigned slot;              /* its index in the model */
    size_t len;
    char key[MAX_KEY];
};

struct model {
    struct item *items[MAX_KEYS]; /* NULL: free slot */
    unsigned n;
};

/* The model's slot holding key, or -1. */
static int model_find(const struct model *m, const char *key, size_t len)
{
    for (unsigned i = 0; i < MAX_KEYS; i++) {
        const struct item *it = m->items[i];
        if (it && it->len == len && memcmp(it->key, key, len) == 0)
            return (int)i;
    }
    return -1;
}

static struct item *table_find(const struct hashtab *t, const char *key, size_t len)
{
    struct hashtab_node *n = hashtab_find(t, key, len);
    return n ? hashtab_entry(n, struct item, node) : NULL;
}

static void take_out(struct hashtab *t, struct model *m, struct item *it)
{
    hashtab_remove(t, &it->node);
    m->items[it->slot] = NULL;
    m->n--;
    free(it);
}

static void check_table(const struct hashtab *t, const struct model *m)
{
    CHECK(t->count == m->n);
    unsigned seen = 0;
    for (uint32_t b = 0; b <= t->mask; b++) {
        for (const struct hashtab_node *n = t->buckets[b]; n; n = n->next) {
            const struct item *it = hashtab_entry(n, struct item, node);
            CHECK((n->hash & t->mask) == b);
            CHECK(n->hash == hashtab_hash(it->key, it->len));
            CHECK(n->key == it->key && n->len == it->len);
            CHECK(m->items[it->slot] == it);
            CHECK(table_find(t, it->key, it->len) == it);
            seen++;
        }
    }
    CHECK(seen == m->n);
    CHECK(t->count <= t->mask + 1); /* grown as it filled */
}

/* Walks the table, removing the nodes whose key length has the parity of
 * arg; each node must come once. */
static void walk(struct hashtab *t, struct model *m, unsigned arg)
{
    bool visited[MAX_KEYS] = { false };
    unsigned n_visited = 0, before = m->n;
    struct hashtab_iter iter;
    struct hashtab_node *n;
    for (hashtab_iter_init(&iter, t); (n = hashtab_iter_next(&iter)) != NULL;) {
        struct item *it = hashtab_entry(n, struct item, node);
        CHECK(!visited[it->slot]);
        visited[it->slot] = true;
        n_visited++;
        if (it->len % 2 == arg % 2)
            take_out(t, m, it);
    }
    CHECK(n_visited == before);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 17)
        return 0;
    hashtab_seed_set(data);
    struct hashtab t;
    hashtab_init(&t, 1u << (data[16] % 8));
    struct model m = { { NULL }, 0 };
    size_t pos = 17;
    while (pos + 2 <= size) {
        unsigned op = data[pos] % 4, arg = data[pos + 1];
        size_t len = arg % (MAX_KEY + 1);
        pos += 2;
        if (len > size - pos)
            len = size - pos;
        const char *key = (const char *)data + pos;
        pos += len;
        int slot = model_find(&m, key, len);
        struct item *found = table_find(&t, key, len);
        CHECK(found == (slot < 0 ? NULL : m.items[slot]));
        switch (op) {
        case 0: { /* add */
            if (found || m.n == MAX_KEYS)
                break;
            for (slot = 0; m.items[slot]; slot++)
                ;
            struct item *it = calloc(1, sizeof(*it));
            CHECK(it != NULL);
            memcpy(it->key, key, len);
            it->len = len;
            it->slot = (unsigned)slot;
            hashtab_add(&t, &it->node, it->key, len, hashtab_hash(it->key, len));
            m.items[slot] = it;
            m.n++;
            CHECK(table_find(&t, key, len) == it);
            break;
        }
        case 1: /* remove */
            if (found)
                take_out(&t, &m, found);
            CHECK(table_find(&t, key, len) == NULL);
            break;
        case 2: /* look up: checked above */
            break;
        case 3:
            walk(&t, &m, arg);
            break;
        }
        check_table(&t, &m);
    }
    walk(&t, &m, 0);
    walk(&t, &m, 1);
    CHECK(t.count == 0 && m.n == 0);
    hashtab_deinit(&t);
    return 0;
}
