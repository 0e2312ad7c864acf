/*
 * resource_int: what the read path (resource.c) and the cache's write side
 * (cache_writeback.c: invalidation, tombstones, write-backs) share. Internal
 * to those two files; everyone else uses resource.h.
 */
#ifndef BATCHD_RESOURCE_INT_H
#define BATCHD_RESOURCE_INT_H

#include <stdint.h>
#include <sys/queue.h>
#include <uv.h>

#include "daemon/metrics.h"
#include "daemon/cache/near.h"
#include "daemon/cache/resource.h"
#include "proto/batch.h"
#include "proto/buf.h"
#include "proto/slot_tag.h"

/* A missing row, cached: starts with a NUL byte, so never a JSON document. */
#define ABSENT_MARKER "\0batchd:absent"
#define ABSENT_LEN (sizeof(ABSENT_MARKER) - 1)
/* A key's tombstone: batchd:inval:{<key>}, in the key's cluster slot (proto/slot_tag.h). */
#define TOMBSTONE_PREFIX "batchd:inval:"
#define resource_tomb_key(key, len, out) slot_tag_prefixed(TOMBSTONE_PREFIX, key, len, out)
#define TOMBSTONE_EXTRA_MS 5000
/* Hosts' clocks may differ by this much; fills starting within it of an
 * invalidation are not cached. */
#define CLOCK_SKEW_MS 250



/* Why ids of a read failed, with the kind label of
 * batchd_resource_errors_total (FAIL_NONE has no series). A read failing
 * in several ways answers with the last in this order. */
#define FAIL_KINDS(X)                            \
    X(DB_UNAVAILABLE, "db_unavailable")          \
    X(QUERY, "query_failed")                     \
    X(DOCUMENT, "invalid_document")              \
    X(BUSY, "backend_busy")                      \
    X(SHUTDOWN, "shutdown")

enum fail_kind {
    FAIL_NONE = 0,
#define X(name, label) FAIL_##name,
    FAIL_KINDS(X)
#undef X
    FAIL__COUNT
};

/* The three forms of a read, with the kind label of batchd_resource_requests_total. */
#define READ_FORMS(X)            \
    X(SINGLE, "single") /* {path}/{id} */ \
    X(LIST, "list")     /* {path}?ids= */ \
    X(BATCH, "batch")   /* {path}/_batch */

enum read_form {
#define X(name, label) READ_##name,
    READ_FORMS(X)
#undef X
    READ__FORMS
};


struct resource {
    struct resource_set *set;
    const struct cfg_resource *cfg;
    int stmt;
    /* The key template split around its first {id}; key_split is false when
     * it has several (key_of then expands the template in full). */
    bool key_split;
    str_t key_prefix, key_suffix;
    LIST_HEAD(, wb) wbs;        /* write-backs in flight */
    unsigned n_wbs;
    bool retired;               /* dropped from the config: no routes, finishing work */
    struct batch_table table;
    struct batch_entry *queue_head, **queue_tail;
    unsigned n_queued;
    uv_timer_t window;
    bool window_armed;
    uint64_t *m_hit, *m_miss, *m_absent, *m_pg_queries, *m_degraded, *m_joins, *m_writebacks;
    uint64_t *m_inval_unjoined, *m_invalid_cached, *m_busy;
    uint64_t *m_not_owner;              /* documents hidden from a non-owner */
    uint64_t *m_err[FAIL__COUNT];       /* by enum fail_kind; FAIL_NONE unused */
    uint64_t *m_requests[READ__FORMS];  /* by enum read_form */
    struct metric_hist *m_mget_keys, *m_query_ids;
    /* The near cache (local_cache_bytes > 0), and its counters. */
    bool near_on;
    struct near_cache near;
    uint64_t *m_local_hit, *m_local_miss, *m_local_bypass, *m_local_evictions, *m_local_restarts;
    uint64_t *m_local_drops[NEAR_DROP__COUNT];
};

struct resource_set {
    uv_loop_t *loop;
    const struct config *cfg;
    struct redis_pool *redis;
    struct pg_pool *pg;
    struct resource **res;      /* stable addresses: in-flight work points at them */
    unsigned n;
    uv_check_t check;
    unsigned handles_open;
    bool freeing;
    /* Redis tracking as the near caches see it: trusted only while up.
     * track_gen changes whenever trust was broken (down, up, a flush):
     * a load that began under another generation is not kept locally. */
    bool track_up;
    uint32_t track_gen;
    /* Reads answered from the near cache wait here for the end of the
     * loop iteration, after every invalidation read in it (near_track.c);
     * the idle handle keeps the loop from blocking while any waits. */
    struct read *local_head, **local_tail;
    uv_idle_t idle;
};

/* One flush of one resource: its MGETs, then its misses. */
struct flight {
    struct resource *res;
    unsigned outstanding;
    struct batch_entry *misses;
};

struct chunk {
    struct flight *flight;       /* MGET chunks */
    struct resource *res;
    uint32_t track_gen;          /* the set's when sent (near_fill) */
    uint64_t start_ns;
    uint64_t start_wall_ms;      /* DB chunks: when the read was sent */
    unsigned n;
    struct batch_entry *entries[];
};

/* A client request waiting on its slots. Slot i is either local[i] (a
 * near-cache entry the read holds) or rd.slots[i] (a batch entry). */
struct read {
    struct batch_read rd;
    struct resource *res;
    struct req *r;              /* NULL for resource_fetch reads */
    bool single;
    bool no_near;               /* restarted too often: Redis and PostgreSQL only */
    uint8_t restarts;
    resource_fetch_fn fetch_cb; /* resource_fetch: who gets the outcome */
    void *fetch_ctx;
    struct read *next_local;    /* the set's list of reads waiting for the check phase */
    unsigned n_local;           /* slots taken from the near cache */
    struct near_entry **local;  /* NULL when n_local == 0; &one_local for one id */
    struct near_entry *one_local;
    /* Kept when the read is recycled. */
    struct near_entry **local_buf;
    unsigned local_cap;
};

struct invalidation {
    void (*cb)(void *ctx, int err);
    void *ctx;
    unsigned pending;
    int err;
    struct resource *res;
    uint16_t id_len;
    char id[];
};

/* A write-back in flight, and the invalidations waiting for it to land. */
struct wb_waiter {
    struct invalidation *op;
    unsigned idx;
};

struct wb {
    LIST_ENTRY(wb) link;        /* the resource's write-backs in flight */
    struct resource *res;
    struct wb_waiter *waiters;
    unsigned n_waiters;
    unsigned n;
    struct batch_entry *e[];
};

/* The Redis key of an id, appended to out. */
void resource_key_of(const struct resource *res, const char *id, size_t len, struct buf *out);
/* Wall-clock ms, the unit of tombstones. */
uint64_t resource_wall_ms(void);
/* Caches what a by_ids chunk loaded (found and absent), in one script call
 * that respects tombstones; see cache_writeback.c. */
void resource_write_back(struct resource *res, struct chunk *ch);

/* --- near_track.c: the near cache's side of the read path ------------------------------- */

/* Follows Redis tracking for the set's near caches (resource_set_new and
 * every reconfigure): the key prefixes of the resources that have one. */
void near_track_apply(struct resource_set *s);
/* key changed: every resource whose near cache maps it to an id drops that
 * id, and a load of it in flight is not kept (resources may share keys). */
void near_drop_key(struct resource_set *s, const char *key, size_t len, enum near_drop why);
/* Looks rd's ids up in res's near cache (when it is on and trusted); fills
 * rd->local and returns how many were found (each held). */
unsigned near_lookup(struct resource *res, struct read *rd, const str_t *ids, unsigned n);
/* A read all of whose slots are resolved and some local: answered at the
 * end of this loop iteration. */
void near_defer(struct read *rd);
/* Answers the deferred reads (the set's check callback, first). */
void near_answer_deferred(struct resource_set *s);
/* True when every local slot of rd is still in its near cache; else rd was
 * restarted (its readers get a fresh read) and must not be answered. */
bool near_read_current(struct read *rd);
/* Keeps what a load brought, when the near cache may: e resolved FOUND or
 * ABSENT, by a load sent under generation gen. */
void near_fill(struct resource *res, struct batch_entry *e, uint32_t gen);
/* Drops the read's local slots (their holds). */
void near_read_release(struct read *rd);
/* Near-cache state of a resource: on, off or resized by a (re)load;
 * key_changed: its key template changed (what is held names old keys). */
void near_configure(struct resource *res, bool key_changed);
void near_metrics(struct resource *res);

/* Answers a read whose slots are all resolved (a document, a JSON array,
 * 404 or the failure), then frees it. (resource_answer.c) */
void resource_answer(struct read *rd);
/* Reads are pooled: no allocation per request once warm. */
/* Joins or queues each id for the next flush; answers r when all are in
 * (at once when every id was already resolved). single: answer the one
 * document rather than an array. */
void resource_start_read(struct resource *res, struct req *r, const str_t *ids, unsigned n, bool single);
/* Queues or joins ids for rd (res, r or fetch_cb set); answers at once when
 * all are resolved. Returns -EBUSY (nothing started) past max_ids_in_flight. */
int resource_read_begin(struct resource *res, struct read *rd, const str_t *ids, unsigned n);
/* A resource_fetch read is complete: hands the outcome to its callback. */
void resource_fetch_done(struct read *rd);
struct read *resource_read_get(void);
/* Frees resource_routes.c's decoding scratch (resource_pool_drain). */
void resource_routes_drain(void);
void resource_read_put(struct read *rd);

#endif
