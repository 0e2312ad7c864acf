/*
 * batch: the bookkeeping of coalesced reads, with no I/O.
 *
 *   read A: [s1, s2, s1]          entry s1 ── waiters: (A,0) (A,2) (B,0)
 *   read B: [s1]          ──>     entry s2 ── waiters: (A,1)
 *
 * Every distinct id being loaded has one entry in the table, whoever asked
 * for it (single flight). A read holds one slot per id it asked for, in
 * request order, each pointing at an entry. When the owner resolves an
 * entry, every slot waiting on it is filled, and the reads whose last slot
 * that was are handed back on a list, so the owner answers them after it is
 * done touching the table.
 *
 * Entries are reference-counted: the table holds one reference while the
 * entry is joinable, and each slot holds one until its read is released.
 * A resolved entry may stay in the table (the owner is writing it back to
 * the cache), and late readers then get the result at once.
 */
#ifndef BATCHD_PROTO_BATCH_H
#define BATCHD_PROTO_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/hashtab.h"

enum batch_state {
    BATCH_QUEUED,   /* waiting for the next flush */
    BATCH_CACHE,    /* in an MGET */
    BATCH_DB,       /* in a by_ids query */
    BATCH_DONE,     /* resolved */
};

enum batch_result {
    BATCH_FOUND,
    BATCH_ABSENT,   /* no such row */
    BATCH_FAILED,   /* could not be answered; `err` says why */
};

struct batch_read;

struct batch_waiter {
    struct batch_read *rd;
    unsigned slot;
};

struct batch_entry {
    struct hashtab_node hnode;      /* in the table, keyed by id */
    struct batch_entry *next;       /* owner's list (queue, flight) */
    void *owner;                    /* owner's tag (which flight holds it) */
    uint32_t refs;
    enum batch_state state;
    enum batch_result result;
    bool in_table;
    bool from_cache;
    bool stale;                     /* owner's: invalidated while loading */
    bool no_near;                   /* owner's: changed while loading, not to be kept locally */
    bool tagged;                    /* owner's: tag holds the document's ETag hash (memo) */
    int err;                        /* for BATCH_FAILED: owner's code */
    uint32_t cache_us, db_us;       /* time spent in Redis / PostgreSQL */
    uint64_t tag;
    char *doc;                      /* BATCH_FOUND: the document */
    size_t doc_len;
    void (*doc_release)(void *ref); /* set when doc is borrowed from ref */
    void *doc_ref;
    struct batch_waiter *waiters;   /* &one_waiter until a second one comes */
    unsigned n_waiters, cap_waiters;
    struct batch_waiter one_waiter;
    uint16_t id_len;
    char id[];                      /* id_len bytes, then NUL */
};

struct batch_read {
    unsigned n;                     /* slots: ids asked for */
    unsigned pending;               /* slots not resolved yet */
    struct batch_entry **slots;     /* &one_slot for a single id */
    struct batch_read *next_done;   /* link on the completed list */
    struct batch_entry *one_slot;
};

/* Ids up to this long get pooled, fixed-size entries (all valid ids do). */
#define BATCH_POOLED_ID_MAX 128

/* The joinable entries, by id (a seeded hashtab: clients choose ids). */
struct batch_table {
    struct hashtab ht;
};

void batch_table_init(struct batch_table *t);
/* Drops the table's references; entries still held by reads live on. */
void batch_table_deinit(struct batch_table *t);

/* Entries in the table. */
static inline unsigned batch_table_count(const struct batch_table *t)
{
    return t->ht.count;
}

/* The joinable entry for id, or NULL. */
struct batch_entry *batch_table_find(const struct batch_table *t, const char *id, size_t len);
/* The joinable entry for id, created QUEUED when there is none. */
struct batch_entry *batch_table_get(struct batch_table *t, const char *id, size_t len, bool *created);
/* Makes the entry unjoinable (new reads start a fresh load). */
void batch_table_remove(struct batch_table *t, struct batch_entry *e);

void batch_entry_ref(struct batch_entry *e);
void batch_entry_unref(struct batch_entry *e);
/* Frees the pooled entries kept for reuse (at exit). */
void batch_pool_drain(void);

void batch_read_init(struct batch_read *rd, unsigned n);
/* A read of n slots none of which will be a batch entry (the owner answers
 * them from elsewhere): no slot array, nothing pending. */
void batch_read_init_none(struct batch_read *rd, unsigned n);
/* Points slot i at e. A resolved entry fills the slot at once; otherwise the
 * read waits on e. */
void batch_read_set(struct batch_read *rd, unsigned i, struct batch_entry *e);
/* Drops the read's references (its slots). */
void batch_read_release(struct batch_read *rd);

/* Resolves e (doc is copied for BATCH_FOUND). Reads completed by this are
 * pushed onto *done. */
void batch_entry_resolve(struct batch_entry *e, enum batch_result result, int err,
                         const char *doc, size_t doc_len, struct batch_read **done);
/* Resolves e as BATCH_FOUND with a document that stays valid until
 * release(ref), which the entry calls when it is freed (no copy). */
void batch_entry_resolve_borrowed(struct batch_entry *e, const char *doc, size_t doc_len,
                                  void (*release)(void *ref), void *ref, struct batch_read **done);

#endif
