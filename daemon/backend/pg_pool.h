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

bool pg_pool_up(const struct pg_pool *p);

#endif
