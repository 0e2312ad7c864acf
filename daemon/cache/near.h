/*
 * near: a resource's near cache, documents kept in batchd's own memory
 * (`local_cache_bytes`), with no I/O. Whether an entry may be trusted is
 * decided elsewhere (near_track.c: Redis's invalidation messages); this
 * file only stores, finds, bounds and drops.
 *
 *   id ──> hashtab (seeded) ──> entry: refs · CLOCK bit · expiry · owner span · doc ',' id
 *                                  │
 *   FIFO with a second chance ─────┘ (CLOCK): a hit sets the bit; eviction takes
 *                                    the oldest entry whose bit is clear, clearing
 *                                    bits as it passes them
 *
 * An entry is reference-counted: the table holds one reference, and every
 * answer being written holds one while the socket has its bytes (an answer
 * points at the document; it does not copy it). A dropped or evicted entry
 * leaves the table and the byte count at once and is freed when its last
 * answer is written.
 *
 * Bytes are counted with the allocator's own size of each entry plus the
 * table's bucket array, so the gauge is what the near cache holds, not
 * what its documents weigh. The document is stored followed by a ',', so
 * that an answer array needs one iovec per document (the comma rides with
 * it) rather than two.
 */
#ifndef BATCHD_NEAR_H
#define BATCHD_NEAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "proto/hashtab.h"

/* Why entries left (the source label of batchd_local_cache_invalidations_total). */
#define NEAR_DROPS(X)                 \
    X(REDIS, "redis")       /* an invalidation message named its key */ \
    X(WRITE, "write")       /* a write through batchd (PURGE, proxied write) */ \
    X(FLUSH, "flush")       /* FLUSHALL / FLUSHDB */ \
    X(TRACKING, "tracking") /* tracking lost: nothing can be trusted */ \
    X(CONFIG, "config")     /* reloaded: off, or a new key */

enum near_drop {
#define X(name, label) NEAR_DROP_##name,
    NEAR_DROPS(X)
#undef X
    NEAR_DROP__COUNT
};

/* The owner field's value as found when the entry was stored. */
enum near_owner {
    NEAR_OWNER_NONE,    /* no such field, or the document is not an object */
    NEAR_OWNER_STRING,  /* a JSON string, quotes included in the span */
    NEAR_OWNER_NUMBER,
};

struct near_entry {
    struct hashtab_node hnode;
    TAILQ_ENTRY(near_entry) fifo;
    uint32_t refs;
    bool in_table;
    bool referenced;        /* CLOCK bit: hit since the hand last passed */
    bool absent;            /* a cached "no such row" */
    bool tagged;            /* tag holds the document's etag_hash (computed at its first answer) */
    uint8_t owner_kind;     /* enum near_owner */
    uint32_t owner_off, owner_len;
    uint32_t doc_len;       /* the document; data[doc_len] is ',' */
    uint16_t id_len;
    uint64_t expires_ms;    /* loop time */
    uint64_t tag;
    size_t charge;          /* bytes counted for it */
    char data[];            /* doc, ',', id, NUL */
};

static inline const char *near_entry_id(const struct near_entry *e)
{
    return e->data + e->doc_len + 1;
}

struct near_cache {
    struct hashtab ht;
    TAILQ_HEAD(, near_entry) fifo;  /* oldest first */
    size_t bytes;                   /* entries' charges + the bucket array */
    size_t limit;
    uint64_t *m_evictions;              /* counters the owner points at /metrics */
    uint64_t *m_drops[NEAR_DROP__COUNT];
};

/* limit: local_cache_bytes (> 0). The counters: evictions and drops by
 * enum near_drop (each non-NULL). */
void near_init(struct near_cache *nc, size_t limit, uint64_t *evictions, uint64_t *const drops[NEAR_DROP__COUNT]);
/* Drops everything (answers in flight keep their entries) and frees the
 * table. */
void near_deinit(struct near_cache *nc);
/* A new bound: evicts down to it at once. */
void near_set_limit(struct near_cache *nc, size_t limit);

/* The live entry of id, or NULL; an expired one is dropped. A hit sets the
 * CLOCK bit. The caller takes no reference: near_entry_ref for that. */
static inline struct near_entry *near_find(struct near_cache *nc, const char *id, size_t len, uint64_t now_ms);

/* Stores id's document (doc NULL: absent) for ttl_ms, replacing what was
 * there. owner_field: the field whose value is kept for owner checks, or
 * NULL. Returns false (nothing stored) for a document over limit / 16. */
bool near_put(struct near_cache *nc, const char *id, size_t id_len, const char *doc, size_t doc_len,
              uint64_t now_ms, uint64_t ttl_ms, const char *owner_field);
/* Drops id's entry, if any. Returns true when there was one. */
bool near_drop(struct near_cache *nc, const char *id, size_t len, enum near_drop why);
/* Drops every entry. Returns how many. */
unsigned near_clear(struct near_cache *nc, enum near_drop why);

static inline void near_entry_ref(struct near_entry *e)
{
    e->refs++;
}
/* Drops a reference; the last one frees the entry (a req_hold release). */
void near_entry_release(void *entry);

/* Does the stored owner value name this principal? (see resource_owned_by) */
bool near_entry_owned_by(const struct near_entry *e, const char *principal, size_t principal_len);

/* --- inline ------------------------------------------------------------------ */

void near_expire(struct near_cache *nc, struct near_entry *e);

static inline struct near_entry *near_find(struct near_cache *nc, const char *id, size_t len, uint64_t now_ms)
{
    struct hashtab_node *n = hashtab_find(&nc->ht, id, len);
    if (n == NULL)
        return NULL;
    struct near_entry *e = hashtab_entry(n, struct near_entry, hnode);
    if (now_ms >= e->expires_ms) {
        near_expire(nc, e);
        return NULL;
    }
    e->referenced = true;
    return e;
}

#endif
