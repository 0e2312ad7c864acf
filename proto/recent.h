/*
 * recent: keys written within the last window_ms, bounded in bytes. The
 * PostgreSQL read router asks it whether a read names a key written so
 * recently that a replica may not have replayed the write yet.
 *
 *   note(key, now) ──> FIFO by time (oldest first) + seeded hash table
 *   has(key, now)  ──> true while the key's last note is younger than window_ms,
 *                      or while the record is "full" (see below)
 *
 * Every entry lives the same window, so entries expire from the head of
 * the FIFO in the order they were noted: expiry is O(expired). A key noted
 * again moves to the tail with its new time.
 *
 * Bounded: an entry costs sizeof(struct recent_entry) + its key + one
 * bucket pointer. A note that would pass limit_bytes is not stored; the
 * record turns "full" instead: has() answers true for every key until
 * window_ms after that note (everything goes to the primary: safe), and
 * full_total counts it. No I/O; times are the caller's (milliseconds).
 */
#ifndef BATCHD_PROTO_RECENT_H
#define BATCHD_PROTO_RECENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "proto/hashtab.h"

struct recent_entry {
    struct hashtab_node node;
    TAILQ_ENTRY(recent_entry) link;
    uint64_t at_ms;
    uint32_t len;
    char key[];
};

struct recent {
    struct hashtab tab;
    TAILQ_HEAD(, recent_entry) fifo;    /* oldest first */
    size_t bytes;                       /* as counted above */
    size_t limit_bytes;
    uint64_t window_ms;
    uint64_t full_until_ms;             /* has() is true for all keys before this */
    uint64_t full_total;                /* notes refused because of limit_bytes */
};

void recent_init(struct recent *r, size_t limit_bytes, uint64_t window_ms);
/* Frees every entry and the table. */
void recent_deinit(struct recent *r);
/* New limits (a reload). Entries over a lower limit stay until they expire. */
void recent_configure(struct recent *r, size_t limit_bytes, uint64_t window_ms);

/* What one entry of a key of len bytes costs against limit_bytes. */
size_t recent_entry_cost(size_t len);

/* Records that key[0..len) was written at now_ms. 0, or -ENOSPC when it
 * did not fit: the record is full (has() true for all) until now + window. */
int recent_note(struct recent *r, const char *key, size_t len, uint64_t now_ms)
    __attribute__((warn_unused_result));
/* True when key was noted less than window_ms before now_ms, or the record
 * is full. Expires old entries first. */
bool recent_has(struct recent *r, const char *key, size_t len, uint64_t now_ms);
/* True while the record is full (every key counts as recent). */
bool recent_full(const struct recent *r, uint64_t now_ms);
/* Drops entries older than the window. */
void recent_expire(struct recent *r, uint64_t now_ms);
/* Entries held. */
static inline uint32_t recent_count(const struct recent *r)
{
    return r->tab.count;
}

#endif
