/*
 * list: owner-scoped pages for each [list NAME], served from the cache.
 *
 *   GET {path}?limit=N&after=<cursor>&<param>=v   (a principal: identity_gate)
 *        │ page identity: list, principal, limit, cursor, params
 *        ▼
 *   a page in flight with that identity? ──yes──> join it (single flight)
 *        │ no
 *        ▼
 *   HGET batchd:list:<name>:<principal> <field> ──hit──┐  (ids + next, not expired)
 *        │ miss                                        │
 *        ▼                                             │
 *   page_query($1 principal, $2 cursor, $3 limit + 1, $4... params) ──> ids, next
 *        │ cached with the write script (ttl; skipped after an invalidation)
 *        ▼                                             │
 *   resource_fetch(resource, ids) <────────────────────┘  bodies: the same MGET and
 *        │                                                by_ids as every read
 *        ▼
 *   {"items":[documents...],"next":"<cursor>"|null}
 *
 * A proxied write by a principal that matches a list's `invalidate`
 * templates deletes that principal's pages (the whole hash) before the
 * app's answer is relayed; see list_cache.c for the race guard.
 *
 * The folder's list files:
 *   list.c        requests, the page table (single flight), page_query, answers
 *   list_cache.c  the Redis side: lookups, the write script, invalidation
 *   list_set.c    the lists by name: creation, metrics, reload, the end
 *   list_int.h    what the three share
 */
#ifndef BATCHD_LIST_H
#define BATCHD_LIST_H

#include <stdbool.h>

#include "daemon/config.h"
#include "daemon/http/router.h"
#include "proto/buf.h"

struct redis_pool;
struct pg_pool;
struct resource_set;
struct list_set;

/* Creates the lists of `cfg` (none is fine). redis may be NULL (then no
 * page is cached); lists need pg (config.c checks it). Items are read
 * from `resources`, which must outlive the set. */
struct list_set *list_set_new(const struct config *cfg, struct redis_pool *redis, struct pg_pool *pg,
                              struct resource_set *resources);
/* A reload: lists are matched by name and updated in place; new ones
 * start; removed ones lose their routes and finish their work. `cfg`
 * must outlive the set (or the next reconfigure). */
void list_set_reconfigure(struct list_set *s, const struct config *cfg);
/* Adds every list's route to rt (GET {path}, behind identity_gate). */
void list_set_add_routes(struct list_set *s, struct router *rt);

/* --- invalidation, for the proxy ---------------------------------------------------- */

/* The lists a write by one principal invalidates. Taken when the
 * principal is known, before the request goes to the app: the client may
 * be gone by the time the answer comes, and its write still counts. */
struct list_writes;

/* The lists whose invalidate templates match `path`, for a PUT, PATCH,
 * POST or DELETE (`method`: llhttp's) by `principal`. NULL when none
 * matches, the method is not a write, or principal is NULL. */
struct list_writes *list_set_match_writes(struct list_set *s, unsigned method, str_t path,
                                          const char *principal, size_t len);
/* The write succeeded: drops the principal's pages in each matched list.
 * Pages of that principal loading in this process answer their requests
 * but are not cached, and no later request joins them. cb(ctx, err) runs
 * once for each invalidation that was sent, when Redis has answered (err <
 * 0: it failed, the pages expire by their ttl). Returns how many were sent
 * (the callbacks to wait for); may be 0. Call at most once. */
unsigned list_writes_invalidate(struct list_writes *w, void (*cb)(void *ctx, int err), void *ctx);
void list_writes_free(struct list_writes *w);

/* Releases everything; call after the pools and the resource set have
 * completed their callbacks. Memory goes with the last page in flight. */
void list_set_free(struct list_set *s);

#endif
