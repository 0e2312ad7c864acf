/* batch: coalesced-read bookkeeping. See batch.h. */
#include "proto/batch.h"

#include <stdlib.h>
#include <string.h>

#include "proto/freelist.h"
#include "proto/mem.h"

/* Entries come and go by the thousand per second; short-id entries are
 * one size, so freed ones are kept (up to POOL_MAX) and reused. */
#define POOL_MAX 8192
#define POOLED_SIZE (sizeof(struct batch_entry) + BATCH_POOLED_ID_MAX + 1)

static struct freelist pool = FREELIST_INIT(POOL_MAX);

static struct batch_entry *entry_get(size_t id_len)
{
    if (id_len > BATCH_POOLED_ID_MAX)
        return mem_calloc(1, sizeof(struct batch_entry) + id_len + 1);
    struct batch_entry *e = freelist_get(&pool);
    if (e == NULL)
        return mem_calloc(1, POOLED_SIZE);
    memset(e, 0, sizeof(*e));
    return e;
}

static void entry_put(struct batch_entry *e)
{
    if (e->id_len > BATCH_POOLED_ID_MAX || !freelist_put(&pool, e))
        free(e);
}

void batch_pool_drain(void)
{
    freelist_drain(&pool, NULL);
}

void batch_table_init(struct batch_table *t)
{
    hashtab_init(&t->ht, 64);
}

void batch_table_deinit(struct batch_table *t)
{
    struct hashtab_iter it;
    struct hashtab_node *n;
    for (hashtab_iter_init(&it, &t->ht); (n = hashtab_iter_next(&it)) != NULL;) {
        struct batch_entry *e = hashtab_entry(n, struct batch_entry, hnode);
        hashtab_remove(&t->ht, n);
        e->in_table = false;
        batch_entry_unref(e);
    }
    hashtab_deinit(&t->ht);
}

struct batch_entry *batch_table_find(const struct batch_table *t, const char *id, size_t len)
{
    struct hashtab_node *n = hashtab_find(&t->ht, id, len);
    return n ? hashtab_entry(n, struct batch_entry, hnode) : NULL;
}

struct batch_entry *batch_table_get(struct batch_table *t, const char *id, size_t len, bool *created)
{
    uint32_t h = hashtab_hash(id, len);
    struct hashtab_node *n = hashtab_find_hashed(&t->ht, id, len, h);
    if (n) {
        *created = false;
        return hashtab_entry(n, struct batch_entry, hnode);
    }
    struct batch_entry *e = entry_get(len);
    e->refs = 1; /* the table's */
    e->state = BATCH_QUEUED;
    e->in_table = true;
    e->id_len = (uint16_t)len;
    memcpy(e->id, id, len);
    e->id[len] = '\0';
    hashtab_add(&t->ht, &e->hnode, e->id, len, h);
    *created = true;
    return e;
}

void batch_table_remove(struct batch_table *t, struct batch_entry *e)
{
    if (!e->in_table)
        return;
    hashtab_remove(&t->ht, &e->hnode);
    e->in_table = false;
    batch_entry_unref(e);
}

void batch_entry_ref(struct batch_entry *e)
{
    e->refs++;
}

void batch_entry_unref(struct batch_entry *e)
{
    if (--e->refs > 0)
        return;
    if (e->doc_release)
        e->doc_release(e->doc_ref);
    else
        free(e->doc);
    if (e->waiters != &e->one_waiter)
        free(e->waiters);
    entry_put(e);
}

void batch_read_init(struct batch_read *rd, unsigned n)
{
    rd->n = n;
    rd->pending = 0;
    rd->one_slot = NULL;
    /* Single-id reads, the common case, need no allocation. */
    rd->slots = n <= 1 ? &rd->one_slot : mem_calloc(n, sizeof(*rd->slots));
    rd->next_done = NULL;
}

void batch_read_init_none(struct batch_read *rd, unsigned n)
{
    rd->n = n;
    rd->pending = 0;
    rd->one_slot = NULL;
    rd->slots = NULL;
    rd->next_done = NULL;
}

void batch_read_set(struct batch_read *rd, unsigned i, struct batch_entry *e)
{
    batch_entry_ref(e);
    rd->slots[i] = e;
    if (e->state == BATCH_DONE)
        return;
    rd->pending++;
    if (e->n_waiters == e->cap_waiters) {
        if (e->cap_waiters == 0) { /* most ids have one reader */
            e->waiters = &e->one_waiter;
            e->cap_waiters = 1;
        } else {
            unsigned cap = e->cap_waiters * 4;
            struct batch_waiter *w = mem_alloc(cap * sizeof(*w));
            memcpy(w, e->waiters, e->n_waiters * sizeof(*w));
            if (e->waiters != &e->one_waiter)
                free(e->waiters);
            e->waiters = w;
            e->cap_waiters = cap;
        }
    }
    e->waiters[e->n_waiters++] = (struct batch_waiter){ rd, i };
}

void batch_read_release(struct batch_read *rd)
{
    for (unsigned i = 0; rd->slots && i < rd->n; i++) {
        struct batch_entry *e = rd->slots[i];
        if (e == NULL)
            continue;
        /* A read that gives up early stops waiting. */
        if (e->state != BATCH_DONE) {
            for (unsigned w = 0; w < e->n_waiters; w++) {
                if (e->waiters[w].rd == rd) {
                    e->waiters[w] = e->waiters[--e->n_waiters];
                    w--;
                }
            }
        }
        batch_entry_unref(e);
    }
    if (rd->slots != &rd->one_slot)
        free(rd->slots); /* NULL for batch_read_init_none */
    rd->slots = NULL;
    rd->n = 0;
}

static void wake_waiters(struct batch_entry *e, struct batch_read **done)
{
    for (unsigned w = 0; w < e->n_waiters; w++) {
        struct batch_read *rd = e->waiters[w].rd;
        if (--rd->pending == 0) {
            rd->next_done = *done;
            *done = rd;
        }
    }
    if (e->waiters != &e->one_waiter)
        free(e->waiters);
    e->waiters = NULL;
    e->n_waiters = e->cap_waiters = 0;
}

void batch_entry_resolve(struct batch_entry *e, enum batch_result result, int err,
                         const char *doc, size_t doc_len, struct batch_read **done)
{
    if (e->state == BATCH_DONE)
        return;
    e->state = BATCH_DONE;
    e->result = result;
    e->err = err;
    if (result == BATCH_FOUND) {
        e->doc = mem_alloc(doc_len + 1);
        memcpy(e->doc, doc, doc_len);
        e->doc[doc_len] = '\0';
        e->doc_len = doc_len;
    }
    wake_waiters(e, done);
}

void batch_entry_resolve_borrowed(struct batch_entry *e, const char *doc, size_t doc_len,
                                  void (*release)(void *ref), void *ref, struct batch_read **done)
{
    if (e->state == BATCH_DONE) {
        release(ref);
        return;
    }
    e->state = BATCH_DONE;
    e->result = BATCH_FOUND;
    e->err = 0;
    e->doc = (char *)doc;
    e->doc_len = doc_len;
    e->doc_release = release;
    e->doc_ref = ref;
    wake_waiters(e, done);
}
