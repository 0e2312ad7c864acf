/*
 * recent: keys written within a window, bounded in bytes. See recent.h.
 */
#include "proto/recent.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "proto/mem.h"

void recent_init(struct recent *r, size_t limit_bytes, uint64_t window_ms)
{
    memset(r, 0, sizeof(*r));
    hashtab_init(&r->tab, 16);
    TAILQ_INIT(&r->fifo);
    r->limit_bytes = limit_bytes;
    r->window_ms = window_ms;
}

static void entry_drop(struct recent *r, struct recent_entry *e)
{
    hashtab_remove(&r->tab, &e->node);
    TAILQ_REMOVE(&r->fifo, e, link);
    r->bytes -= recent_entry_cost(e->len);
    free(e);
}

void recent_deinit(struct recent *r)
{
    struct recent_entry *e;
    while ((e = TAILQ_FIRST(&r->fifo)) != NULL)
        entry_drop(r, e);
    hashtab_deinit(&r->tab);
}

void recent_configure(struct recent *r, size_t limit_bytes, uint64_t window_ms)
{
    r->limit_bytes = limit_bytes;
    r->window_ms = window_ms;
}

size_t recent_entry_cost(size_t len)
{
    /* The bucket pointer: the table keeps about one per entry. */
    return sizeof(struct recent_entry) + len + sizeof(void *);
}

void recent_expire(struct recent *r, uint64_t now_ms)
{
    struct recent_entry *e;
    while ((e = TAILQ_FIRST(&r->fifo)) != NULL && now_ms - e->at_ms >= r->window_ms)
        entry_drop(r, e);
}

bool recent_full(const struct recent *r, uint64_t now_ms)
{
    return now_ms < r->full_until_ms;
}

int recent_note(struct recent *r, const char *key, size_t len, uint64_t now_ms)
{
    recent_expire(r, now_ms);
    uint32_t hash = hashtab_hash(key, len);
    struct hashtab_node *n = hashtab_find_hashed(&r->tab, key, len, hash);
    if (n != NULL) {
        struct recent_entry *e = hashtab_entry(n, struct recent_entry, node);
        e->at_ms = now_ms;
        TAILQ_REMOVE(&r->fifo, e, link);
        TAILQ_INSERT_TAIL(&r->fifo, e, link);
        return 0;
    }
    size_t cost = recent_entry_cost(len);
    if (len > UINT32_MAX || r->bytes + cost > r->limit_bytes) {
        r->full_until_ms = now_ms + r->window_ms;
        r->full_total++;
        return -ENOSPC;
    }
    struct recent_entry *e = mem_alloc(sizeof(*e) + len);
    memcpy(e->key, key, len);
    e->len = (uint32_t)len;
    e->at_ms = now_ms;
    hashtab_add(&r->tab, &e->node, e->key, len, hash);
    TAILQ_INSERT_TAIL(&r->fifo, e, link);
    r->bytes += cost;
    return 0;
}

bool recent_has(struct recent *r, const char *key, size_t len, uint64_t now_ms)
{
    if (recent_full(r, now_ms))
        return true;
    recent_expire(r, now_ms);
    if (r->tab.count == 0)
        return false;
    return hashtab_find(&r->tab, key, len) != NULL;
}
