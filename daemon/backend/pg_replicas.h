/*
 * pg_replicas: [postgres] replicas, the read replicas of the primary's
 * pool. Internal to daemon/backend (pg_pool.c calls it); the cache sees
 * only pg_pool_read and the recent-writes calls of pg_pool.h.
 *
 *   pg_pool_read ──> pick: fresh? ──yes──> primary   (reason recent_write / recent_full)
 *                      │ no eligible replica ───────> primary   (reason no_replica)
 *                      └─> the eligible replica with the fewest queries in flight
 *                            │ connection lost, deadline, recovery conflict
 *                            └──────────────────────> primary   (reason replica_failed)
 *
 * One pg_pool per replica (pool_size connections each). Every
 * ping_interval_ms each replica that is up runs the lag check (LAG_SQL in
 * pg_replicas.c). A replica is eligible when its pool is up, it is in
 * recovery, and its last check, sent within the last 2 ping intervals,
 * measured a lag under max_replica_lag_ms.
 */
#ifndef BATCHD_PG_REPLICAS_H
#define BATCHD_PG_REPLICAS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/config.h"

struct pg_pool;
struct pg_replicas;

/* Opens a pool per cfg->replicas item and starts the lag checks. */
struct pg_replicas *pg_replicas_new(struct pg_pool *primary, uv_loop_t *loop, const struct cfg_postgres *cfg,
                                    int64_t slow_ms);
/* A reload's limits (max_replica_lag_ms, recent_writes_bytes, timeouts). */
void pg_replicas_configure(struct pg_replicas *r, const struct cfg_postgres *cfg, int64_t slow_ms);
/* Closes the replicas' pools (their reads complete with -ECANCELED). */
void pg_replicas_free(struct pg_replicas *r);

/* Registers statement `id` of the primary on every replica (same id). */
void pg_replicas_prepare(struct pg_replicas *r, const char *sql, unsigned nparams, int id);
/* The replica a read goes to, or NULL for the primary; counts the reason. */
struct pg_pool *pg_replicas_pick(struct pg_replicas *r, bool fresh);
/* A read was sent to a replica (true) or the primary (false). */
void pg_replicas_sent(struct pg_replicas *r, bool replica);
/* A replica could not run a read it was given; it goes to the primary. */
void pg_replicas_fell_back(struct pg_replicas *r);

/* The record of keys written recently (proto/recent.h). */
void pg_replicas_note_write(struct pg_replicas *r, const char *key, size_t len);
bool pg_replicas_recent(struct pg_replicas *r, const char *key, size_t len);
uint64_t pg_replicas_window_ms(const struct cfg_postgres *cfg);

#endif
