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
 */
#ifndef BATCHD_RESOURCE_H
#define BATCHD_RESOURCE_H

#include <stdbool.h>
#include <uv.h>

#include "daemon/config.h"
#include "daemon/router.h"

struct redis_pool;
struct pg_pool;
struct resource_set;

/* Creates the resources of `cfg` (none is fine). redis or pg may be NULL
 * when the section is absent. */
struct resource_set *resource_set_new(uv_loop_t *loop, const struct config *cfg,
                                      struct redis_pool *redis, struct pg_pool *pg);
/* Adds every resource's routes to rt. */
void resource_set_add_routes(struct resource_set *s, struct router *rt);
/* NULL when reads can be served, else a reason for /readyz. */
const char *resource_set_not_ready(const struct resource_set *s);
/* Removes the cached entry of `id` in `resource` (by name), the shared path
 * of PURGE and write-through invalidation. cb(ctx, err) runs once the
 * delete is acknowledged; err < 0 when Redis could not be reached. */
int resource_set_invalidate(struct resource_set *s, const char *resource, const char *id,
                            size_t id_len, void (*cb)(void *ctx, int err), void *ctx);
/* Releases everything; call after the pools have completed their callbacks. */
void resource_set_free(struct resource_set *s);

#endif
