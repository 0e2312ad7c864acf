/* near: the near cache's store. See near.h. */
#include "daemon/cache/near.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "proto/jtext.h"
#include "proto/mem.h"

#define BUCKET_BYTES(nc) (((size_t)(nc)->ht.mask + 1) * sizeof(struct hashtab_node *))

void near_init(struct near_cache *nc, size_t limit, uint64_t *evictions, uint64_t *const drops[NEAR_DROP__COUNT])
{
    memset(nc, 0, sizeof(*nc));
    nc->m_evictions = evictions;
    memcpy(nc->m_drops, drops, sizeof(nc->m_drops));
    hashtab_init(&nc->ht, 64);
    TAILQ_INIT(&nc->fifo);
    nc->limit = limit;
    nc->bytes = BUCKET_BYTES(nc);
}

static void entry_free(struct near_entry *e)
{
    free(e);
}

void near_entry_release(void *entry)
{
    struct near_entry *e = entry;
    if (--e->refs == 0)
        entry_free(e);
}

/* Takes e out of the table and the count; answers holding it keep it. */
static void unlink_entry(struct near_cache *nc, struct near_entry *e)
{
    hashtab_remove(&nc->ht, &e->hnode);
    TAILQ_REMOVE(&nc->fifo, e, fifo);
    e->in_table = false;
    nc->bytes -= e->charge;
    near_entry_release(e);
}

void near_expire(struct near_cache *nc, struct near_entry *e)
{
    unlink_entry(nc, e); /* expiry is not an invalidation: nothing counted */
}

bool near_drop(struct near_cache *nc, const char *id, size_t len, enum near_drop why)
{
    struct hashtab_node *n = hashtab_find(&nc->ht, id, len);
    if (n == NULL)
        return false;
    unlink_entry(nc, hashtab_entry(n, struct near_entry, hnode));
    (*nc->m_drops[why])++;
    return true;
}

unsigned near_clear(struct near_cache *nc, enum near_drop why)
{
    unsigned n = 0;
    struct near_entry *e;
    while ((e = TAILQ_FIRST(&nc->fifo)) != NULL) {
        unlink_entry(nc, e);
        n++;
    }
    *nc->m_drops[why] += n;
    return n;
}

void near_deinit(struct near_cache *nc)
{
    near_clear(nc, NEAR_DROP_CONFIG);
    hashtab_deinit(&nc->ht);
    nc->bytes = 0;
}

/* CLOCK over the FIFO: the oldest entry goes unless it was hit since the
 * hand last passed, in which case it loses its bit and goes to the back. */
static void evict_one(struct near_cache *nc)
{
    for (;;) {
        struct near_entry *e = TAILQ_FIRST(&nc->fifo);
        if (e == NULL)
            return;
        if (e->referenced) {
            e->referenced = false;
            TAILQ_REMOVE(&nc->fifo, e, fifo);
            TAILQ_INSERT_TAIL(&nc->fifo, e, fifo);
            continue;
        }
        unlink_entry(nc, e);
        (*nc->m_evictions)++;
        return;
    }
}

static void evict_to(struct near_cache *nc, size_t room)
{
    while (nc->bytes + room > nc->limit && !TAILQ_EMPTY(&nc->fifo))
        evict_one(nc);
}

void near_set_limit(struct near_cache *nc, size_t limit)
{
    nc->limit = limit;
    evict_to(nc, 0);
}

bool near_put(struct near_cache *nc, const char *id, size_t id_len, const char *doc, size_t doc_len,
              uint64_t now_ms, uint64_t ttl_ms, const char *owner_field)
{
    if (doc_len > nc->limit / 16 || id_len > UINT16_MAX)
        return false;
    struct hashtab_node *old = hashtab_find(&nc->ht, id, id_len);
    if (old) /* replaced: not counted as a drop */
        unlink_entry(nc, hashtab_entry(old, struct near_entry, hnode));
    struct near_entry *e = mem_alloc(sizeof(*e) + doc_len + 1 + id_len + 1);
    /* What the allocator gives plus its chunk header (glibc's size word). */
    size_t charge = malloc_usable_size(e) + sizeof(size_t);
    /* The table doubles its buckets when it is full: that growth is
     * charged to the entry that causes it. */
    size_t growth = nc->ht.count > nc->ht.mask ? BUCKET_BYTES(nc) : 0;
    evict_to(nc, charge + growth);
    if (nc->bytes + charge + growth > nc->limit) {
        free(e);
        return false;
    }
    memset(e, 0, sizeof(*e));
    e->refs = 1; /* the table's */
    e->absent = doc == NULL;
    e->doc_len = (uint32_t)doc_len;
    e->id_len = (uint16_t)id_len;
    e->expires_ms = now_ms + ttl_ms;
    e->charge = charge;
    if (doc_len)
        memcpy(e->data, doc, doc_len);
    e->data[doc_len] = ',';
    memcpy(e->data + doc_len + 1, id, id_len);
    e->data[doc_len + 1 + id_len] = '\0';
    const char *v;
    size_t vn;
    if (doc && owner_field &&
        jtext_object_field(doc, doc_len, owner_field, strlen(owner_field), &v, &vn) == 1 &&
        (v[0] == '"' || v[0] == '-' || (v[0] >= '0' && v[0] <= '9'))) {
        e->owner_kind = v[0] == '"' ? NEAR_OWNER_STRING : NEAR_OWNER_NUMBER;
        e->owner_off = (uint32_t)(v - doc);
        e->owner_len = (uint32_t)vn;
    }
    size_t before = BUCKET_BYTES(nc);
    hashtab_add(&nc->ht, &e->hnode, near_entry_id(e), id_len, hashtab_hash(near_entry_id(e), id_len));
    nc->bytes += BUCKET_BYTES(nc) - before + charge;
    e->in_table = true;
    TAILQ_INSERT_TAIL(&nc->fifo, e, fifo);
    return true;
}

bool near_entry_owned_by(const struct near_entry *e, const char *principal, size_t principal_len)
{
    return principal != NULL && e->owner_kind != NEAR_OWNER_NONE &&
           jtext_value_names(e->data + e->owner_off, e->owner_len, principal, principal_len);
}
