/*
 * list_int: what the page path (list.c), its Redis side (list_cache.c) and
 * the set (list_set.c) share. Internal to them; everyone else uses list.h.
 */
#ifndef BATCHD_LIST_INT_H
#define BATCHD_LIST_INT_H

#include <stdint.h>
#include <sys/queue.h>
#include <time.h>
#include <uv.h>

#include "daemon/cache/list.h"
#include "daemon/metrics.h"
#include "proto/buf.h"
#include "proto/hashtab.h"
#include "proto/ids.h"

#define LIST_KEY_PREFIX "batchd:list:"
/* The field of a hash that holds its invalidation tombstone. Page fields
 * start with a hex digit, so it is never one of them. */
#define LIST_TOMBSTONE_FIELD "!inval"
#define LIST_TOMBSTONE_EXTRA_MS 5000
/* Hosts' clocks may differ by this much: a page whose query started within
 * it of an invalidation is not cached. */
#define LIST_CLOCK_SKEW_MS 250
#define LIST_MAX_PARAMS 16
/* Requests one list may have waiting on its pages (joined to a page in
 * flight, or the first of one); more: 503 list_busy, counted in
 * batchd_list_waiters_full_total. */
#define LIST_MAX_WAITERS 65536

/* How a page request ended, with the result label of
 * batchd_list_requests_total. */
#define LIST_RESULTS(X)                              \
    X(OK, "ok")                                      \
    X(INVALID, "invalid")         /* 400 */          \
    X(BUSY, "busy")               /* 503 list_busy, backend_busy */ \
    X(UNAVAILABLE, "unavailable") /* 503 db_unavailable, shutting_down */ \
    X(ERROR, "error")             /* 500 */

enum list_result {
#define X(name, label) LIST_##name,
    LIST_RESULTS(X)
#undef X
    LIST__RESULTS
};

/* Problems, with the kind label of batchd_list_errors_total. */
#define LIST_ERRORS(X)                                                        \
    X(QUERY, "query_failed")            /* page_query failed (not the cursor's fault) */ \
    X(SHAPE, "bad_row")                 /* a row without a valid id, or a next page without a cursor */ \
    X(CURSOR_COLUMN, "bad_cursor")      /* a cursor column batchd cannot hand out */ \
    X(INVALID_CACHED, "invalid_cached") /* a cached page that did not parse (re-read) */ \
    X(CACHE_WRITE, "cache_write")       /* a page could not be cached */

enum list_error {
#define X(name, label) LERR_##name,
    LIST_ERRORS(X)
#undef X
    LERR__COUNT
};

struct list_set {
    const struct config *cfg;
    struct redis_pool *redis;
    struct pg_pool *pg;
    struct resource_set *resources;
    struct listing **lists;     /* stable addresses: pages and the proxy point at them */
    unsigned n;
    unsigned n_pages;           /* pages alive: the set is freed after the last */
    bool freeing;
};

/* One [list NAME]. */
struct listing {
    struct list_set *set;
    const struct cfg_listing *cfg;
    int stmt;                   /* page_query with 3 + params.n parameters */
    unsigned nparams;
    uint32_t query_hash;        /* of page_query and params: part of every cache field */
    bool retired;               /* dropped from the config: no routes, finishing work */
    struct hashtab pages;       /* joinable pages, by principal and field */
    struct hashtab owners;      /* principals with joinable pages */
    unsigned n_loading;         /* pages reading Redis or PostgreSQL (max_pages_in_flight) */
    unsigned n_waiters;         /* requests waiting on pages (LIST_MAX_WAITERS) */
    uint64_t *m_requests[LIST__RESULTS];
    uint64_t *m_err[LERR__COUNT];
    uint64_t *m_pages_cache, *m_pages_db, *m_joins, *m_busy, *m_waiters_full;
    uint64_t *m_inval, *m_inval_err, *m_writebacks, *m_wb_skipped, *m_resets;
    uint64_t *m_absent, *m_not_owner, *m_degraded;
    struct metric_hist *m_query_s;
};

/* A principal's joinable pages in one list, so that an invalidation finds
 * them. Exists while it has some. */
struct list_owner {
    struct hashtab_node hnode;  /* in list->owners, keyed by principal */
    LIST_HEAD(, page) pages;
    uint16_t len;
    char principal[];
};

enum page_state {
    PAGE_CACHE,     /* HGET in flight */
    PAGE_DB,        /* page_query in flight */
    PAGE_DONE,      /* ids known (maybe being written to the cache), or failed */
};

struct waiter {
    struct waiter *next;
    struct req *r;
};

/* One page being loaded: every identical request joins it (single flight). */
struct page {
    struct hashtab_node hnode;  /* in list->pages while joinable */
    LIST_ENTRY(page) owner_link;
    struct listing *list;
    struct list_owner *owner;   /* NULL once it is not joinable */
    unsigned refs;              /* the table, what is in flight, answers being built */
    enum page_state state;
    bool stale;                 /* invalidated while loading: answer, do not cache */
    bool from_cache;
    int stmt;                   /* the statement and count it was created with */
    unsigned nparams;
    unsigned limit;
    uint64_t start_ns;
    uint64_t start_wall_ms;     /* when page_query was sent */
    struct waiter *waiters;     /* waiting for the ids, in arrival order */
    struct waiter **waiters_tail;
    struct id_list ids;
    struct buf next;            /* the next cursor as the client gets it; empty: last page */
    struct buf tkey;            /* u16 principal length, principal, field: the table key */
    size_t field_off;
    struct buf args;            /* $2 and $4...: the cursor text and the params, back to back */
    int32_t arg_len[1 + LIST_MAX_PARAMS];   /* -1: NULL */
};

/* Wall-clock ms: pages' expiry and tombstones, compared across processes. */
static inline uint64_t list_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline str_t page_principal(const struct page *p)
{
    return str_make(p->tkey.data + 2, p->field_off - 2);
}

static inline str_t page_field(const struct page *p)
{
    return str_make(p->tkey.data + p->field_off, p->tkey.len - p->field_off);
}

/* --- list_cache.c ------------------------------------------------------------ */

/* HGETs p's field; the answer comes to list_page_cached. Returns 0, or
 * -EBUSY / -EAGAIN when nothing was sent. */
int list_cache_lookup(struct page *p);
/* Caches p's ids for ttl, unless the principal's pages were invalidated
 * after p's query started; p stays joinable until Redis answers. */
void list_cache_store(struct page *p);
/* The Redis key of a principal's pages in l (also its name in the record
 * of recent writes, with replicas), appended to out. */
void list_cache_key(const struct listing *l, str_t principal, struct buf *out);

/* --- list.c, for list_cache.c ------------------------------------------------ */

/* The HGET's answer: a value (v.p NULL for none) or err < 0. */
void list_page_cached(struct page *p, str_t v, int err);
/* The store was answered: p is no longer joinable. */
void list_page_stored(struct page *p);
/* Marks the principal's pages in flight stale and unjoinable. */
void list_forget_principal(struct listing *l, const char *principal, size_t len);
void list_page_unref(struct page *p);

/* --- list_set.c ------------------------------------------------------------------- */

/* Frees the set and its lists (list_set_free, or the last page after it). */
void list_set_destroy(struct list_set *s);

#endif
