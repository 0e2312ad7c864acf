/*
 * redis_cluster: Redis Cluster behind the redis_pool API ([redis] cluster = yes).
 *
 *   redis_pool_command(MGET k1..kn) ──> one read-only script call a primary
 *        │                               (a GET a key; one MGET a slot while a slot moves)
 *        └─ merged in request order <── replies, MOVED / ASK followed
 *   redis_pool_command(GET k) / _script(k, ...) ──> the primary of k's slot
 *   redis_pool_subscribe(ch) ──> SSUBSCRIBE on ch's node (redis_cluster_sub.c)
 *   redis_pool_track(...) ──> CLIENT TRACKING BCAST on every primary
 *
 * The router is a struct redis_pool with no connections of its own; each
 * primary is a member pool (redis_node_new) with its own connections,
 * pings, reconnects and pub/sub connection. The slot map comes from
 * CLUSTER SLOTS, asked of a reachable node at start, every
 * cluster_refresh_ms, and at once (at most every 100 ms) on MOVED, a
 * lost node or an uncovered slot. Seeds in [redis] url are asked when no
 * known node answers.
 *
 * A script's keys must share a slot (batchd names its tombstones and
 * idempotency keys so); commands name their key first.
 */
#ifndef BATCHD_REDIS_CLUSTER_H
#define BATCHD_REDIS_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/backend/redis_pool.h"

struct redis_cluster;

struct redis_cluster *redis_cluster_new(struct redis_pool *router, uv_loop_t *loop, const struct cfg_redis *cfg,
                                        int64_t slow_ms);
void redis_cluster_configure(struct redis_cluster *cl, const struct cfg_redis *cfg, int64_t slow_ms);
void redis_cluster_free(struct redis_cluster *cl);

int redis_cluster_command(struct redis_cluster *cl, redis_reply_fn cb, void *ctx, int argc, const char **argv,
                          const size_t *argvlen) __attribute__((warn_unused_result));
int redis_cluster_script(struct redis_cluster *cl, struct redis_script *script, redis_reply_fn cb, void *ctx,
                         int argc, const char **argv, const size_t *argvlen)
    __attribute__((warn_unused_result));
void redis_cluster_flush(struct redis_cluster *cl);
/* A slot map is known and at least one primary has a READY connection
 * (reads of a slot whose primary is down go to PostgreSQL). */
bool redis_cluster_up(const struct redis_cluster *cl);

/* redis_cluster_sub.c */
void redis_cluster_pubsub_start(struct redis_cluster *cl, redis_message_fn fn, void *arg);
void redis_cluster_subscribe(struct redis_cluster *cl, const char *channel, bool on);
bool redis_cluster_pubsub_up(const struct redis_cluster *cl);
void redis_cluster_track(struct redis_cluster *cl, const char *const *prefixes, unsigned n, redis_track_fn fn,
                         void *arg);
bool redis_cluster_pubsub_drain(struct redis_cluster *cl, size_t max_bytes);

#endif
