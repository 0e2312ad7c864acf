/*
 * pg_pool: pool_size libpq connections in pipeline mode on the libuv loop.
 *
 *   pg_pool_exec ──> least-busy READY conn ──> PQsendQueryPrepared + Sync ──> postgres
 *         cb(ctx, res, err) <── exactly once: result, error, timeout, lost
 *
 * Connections are opened with PQconnectStartParams/PQconnectPoll and watched
 * with uv_poll on PQsocket(). Each one sets statement_timeout from
 * query_timeout_ms and prepares every registered statement; a PREPARE
 * that fails is sent again before the statement's next use. Several
 * queries are in flight per connection, each followed by its own sync
 * point so one failure cannot abort the next. A client-side deadline
 * (query_timeout_ms + 1 s) catches a server that stops answering. A query
 * on a connection that dies is retried once on another; a connection idle
 * for ping_interval_ms runs SELECT 1. Reconnects back off 100 ms to 5 s
 * with full jitter. At most max_pending queries are in flight over all
 * connections; more are refused with -EBUSY (pool.h).
 *
 * Statements take one text[] (pg_pool_prepare: by_ids) or n parameters
 * whose types the server infers (pg_pool_prepare_n: a list's page_query).
 *
 * With [postgres] replicas, the primary's pool owns one pool per replica
 * (pg_replicas.c): pg_pool_read sends a read to a replica that is up and
 * was measured under max_replica_lag_ms, unless the caller says the read
 * must be fresh; a replica failing it sends it on to the primary.
 */
#ifndef BATCHD_PG_POOL_H
#define BATCHD_PG_POOL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/config.h"

struct pg_pool;

/* err == 0: res is the result (PGRES_TUPLES_OK or PGRES_COMMAND_OK).
 * err == -EIO: the server reported an error; res holds it.
 * err < 0 otherwise (-ETIMEDOUT, -ECONNRESET, -ECANCELED): res is NULL.
 * res is valid only during the call. */
typedef void (*pg_result_fn)(void *ctx, const PGresult *res, int err);

struct pg_pool *pg_pool_new(uv_loop_t *loop, const struct cfg_postgres *cfg, int64_t slow_ms);
void pg_pool_configure(struct pg_pool *p, const struct cfg_postgres *cfg, int64_t slow_ms);
/* Completes pending queries with -ECANCELED; memory goes once handles close. */
void pg_pool_free(struct pg_pool *p);

/* Registers a statement taking one text[] parameter; every connection
 * prepares it at connect or before its first use there. Returns its id. */
int pg_pool_prepare(struct pg_pool *p, const char *sql);

/* Most parameters a statement of pg_pool_prepare_n may take. */
#define PG_POOL_MAX_PARAMS 32

/* Registers a statement taking nparams (1..PG_POOL_MAX_PARAMS) parameters
 * whose types PostgreSQL infers from the statement (cast where it cannot:
 * `$2::text IS NULL`); values are sent as text. Prepared like the above.
 * Returns its id. */
int pg_pool_prepare_n(struct pg_pool *p, const char *sql, unsigned nparams);

/* Runs statement `stmt` with one parameter (copied). `batch` is only for
 * the slow log. Returns 0 (cb will run exactly once); or, and cb is not
 * called, -EAGAIN when no connection is READY, -EBUSY when max_pending
 * queries await their results already. */
int pg_pool_exec(struct pg_pool *p, int stmt, const char *param, size_t param_len, unsigned batch,
                 pg_result_fn cb, void *ctx) __attribute__((warn_unused_result));

/* The same with n parameters in text form, values[i] of lengths[i] bytes,
 * or SQL NULL where values[i] is NULL. n must be the statement's count.
 * The values are copied; retries, deadlines and max_pending as above. */
int pg_pool_exec_params(struct pg_pool *p, int stmt, unsigned n, const char *const *values,
                        const size_t *lengths, unsigned batch, pg_result_fn cb, void *ctx)
    __attribute__((warn_unused_result));

/* A read (by_ids, page_query) that a replica may answer: with replicas
 * configured and `fresh` false, an eligible replica runs it, else the
 * primary; a replica's connection loss, deadline or recovery conflict
 * sends it on to the primary. Same contract as pg_pool_exec_params. */
int pg_pool_read(struct pg_pool *p, int stmt, unsigned n, const char *const *values, const size_t *lengths,
                 unsigned batch, bool fresh, pg_result_fn cb, void *ctx) __attribute__((warn_unused_result));

/* Read-your-write with replicas: `key` (a cache key, a list's hash) was
 * just written; pg_pool_written_recently is true for it during
 * pg_pool_recent_window_ms, and the caller then reads with fresh = true.
 * No-ops (false) without replicas. */
void pg_pool_note_write(struct pg_pool *p, const char *key, size_t len);
bool pg_pool_written_recently(struct pg_pool *p, const char *key, size_t len);
/* True when the pool keeps that record (replicas configured). */
bool pg_pool_tracks_writes(const struct pg_pool *p);
/* How long a write counts as recent: max_replica_lag_ms + 2 ping intervals
 * + 1 s; 0 without replicas. */
uint64_t pg_pool_recent_window_ms(const struct cfg_postgres *cfg);

/* For pg_replicas.c: a replica's pool (metrics labelled replica="index",
 * logs "postgres replica up/down addr=host:port"); its address or
 * "primary"; its queries in flight; and a statement run as plain text
 * (static `sql`), not admitted against max_pending and not retried. */
struct pg_pool *pg_pool_new_replica(uv_loop_t *loop, const struct cfg_postgres *cfg, unsigned index,
                                    int64_t slow_ms);
const char *pg_pool_addr(const struct pg_pool *p);
unsigned pg_pool_pending(const struct pg_pool *p);
int pg_pool_exec_sql(struct pg_pool *p, const char *sql, pg_result_fn cb, void *ctx)
    __attribute__((warn_unused_result));

bool pg_pool_up(const struct pg_pool *p);

#endif
