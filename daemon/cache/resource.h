/*
 * resource: cache-aside entity reads for each [resource NAME], coalesced
 * per loop iteration.
 *
 *   GET {path}/{id}, GET {path}?ids=, POST {path}/_batch
 *        │ ids join the batch table (one entry per id in flight)
 *        ▼
 *   uv_check (end of the loop iteration): queued ids ──> one MGET per resource
 *        │ (split at max_batch_keys)                    │
 *        ▼                                              ▼ hits answer at once
 *   misses of the whole flush ──> one by_ids execution ──> rows answer, and are
 *                                                          written back with
 *                                                          SET key doc EX ttl
 *
 * An id already in flight is not loaded again; later readers join it until
 * its write-back is acknowledged. Redis down: reads go to PostgreSQL.
 * PostgreSQL down: hits are served, misses get 503 with Retry-After.
 *
 * The folder (daemon/cache/):
 *   resource_routes.c   the three forms of a read and PURGE, decoded to ids
 *   resource.c          the batch table, flush -> MGET -> by_ids, the set and reload
 *   resource_answer.c   a finished read -> one document, an array, or the error
 *   cache_writeback.c   write-backs, invalidations and their tombstones
 *   resource_int.h      what those four share
 */
#ifndef BATCHD_RESOURCE_H
#define BATCHD_RESOURCE_H

#include <stdbool.h>
#include <uv.h>

#include "daemon/config.h"
#include "daemon/http/router.h"
#include "proto/buf.h"
#include "proto/ids.h"

struct redis_pool;
struct pg_pool;
struct resource_set;

/* Creates the resources of `cfg` (none is fine). redis or pg may be NULL
 * when the section is absent. */
struct resource_set *resource_set_new(uv_loop_t *loop, const struct config *cfg,
                                      struct redis_pool *redis, struct pg_pool *pg);
/* Applies a reloaded config: resources are matched by name and updated in
 * place; new ones start; removed ones lose their routes and finish their
 * work in flight. `cfg` must outlive the set. */
void resource_set_reconfigure(struct resource_set *s, const struct config *cfg);
/* Adds every resource's routes to rt. */
void resource_set_add_routes(struct resource_set *s, struct router *rt);
/* NULL when reads can be served, else a reason for /readyz. */
const char *resource_set_not_ready(const struct resource_set *s);
struct resource;

/* A resource whose `invalidate` template matched a write's path. */
struct resource_match {
    struct resource *res;
    char id[IDS_MAX_LEN + 1];
    size_t id_len;
};

/* The resources whose invalidate templates match path, each with its {id}
 * (percent-decoded, valid). Returns how many were written to out. */
unsigned resource_set_match_write(struct resource_set *s, str_t path, struct resource_match *out,
                                  unsigned max);

/* Deletes the cached entry of id, with the race guard (resource.c): loads
 * in flight are not cached, write-backs in flight are deleted again after
 * they land, and a tombstone stops other processes' fills. cb(ctx, err)
 * runs once every delete is acknowledged (err < 0: Redis unreachable).
 * Returns 0, or a negative errno when nothing could be sent (cb not called). */
int resource_invalidate(struct resource *res, const char *id, size_t id_len,
                        void (*cb)(void *ctx, int err), void *ctx);
/* The same, by resource name (PURGE). */
int resource_set_invalidate(struct resource_set *s, const char *resource, const char *id,
                            size_t id_len, void (*cb)(void *ctx, int err), void *ctx);
/* --- reads from inside batchd (lists, stream owner checks) ----------------------------- */

/* One id's outcome in a resource_fetch. */
struct fetched {
    enum { FETCH_FOUND, FETCH_ABSENT, FETCH_FAILED } result;
    const char *doc;        /* FOUND: the JSON document, valid during the callback */
    size_t doc_len;
    bool from_cache;
};

/* fail: 0, or the HTTP status the failure maps to (503 unavailable or
 * busy, 500 query failed); f[i] for ids[i]. */
typedef void (*resource_fetch_fn)(void *ctx, const struct fetched *f, unsigned n, int fail);

/* Reads ids through the same coalesced path as client reads (they join
 * this loop iteration's MGET and by_ids). cb runs exactly once, maybe
 * before this returns. */
void resource_fetch(struct resource *res, const str_t *ids, unsigned n, resource_fetch_fn cb, void *ctx);
/* The live (not retired) resource of that name, or NULL. */
struct resource *resource_set_find(struct resource_set *s, const char *name);
const struct cfg_resource *resource_cfg(const struct resource *res);

/* Does `doc`'s top-level owner_field name this principal? (a JSON string
 * equal to it, or a number whose text is). False for malformed documents. */
bool resource_owned_by(const struct cfg_resource *cfg, const char *doc, size_t len,
                       const char *principal, size_t principal_len);

/* Frees the recycled read objects and decoding scratch (at exit). */
void resource_pool_drain(void);
/* Releases everything; call after the pools have completed their callbacks. */
void resource_set_free(struct resource_set *s);

#endif
