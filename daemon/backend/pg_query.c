/*
 * pg_query: the statements a pool prepares and the queries sent with them,
 * reads routed to a replica with the primary as their fallback, and the
 * record of keys written recently (pg_replicas.c). See pg_pool.h.
 *
 *   pg_pool_read(fresh) ──> pg_replicas_pick ──> a replica (fallback: the primary)
 *                                         └──> none eligible, or fresh: the primary
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/backend/pg_int.h"
#include "daemon/backend/pg_replicas.h"
#include "proto/mem.h"

static int prepare(struct pg_pool *p, const char *sql, unsigned nparams)
{
    for (unsigned i = 0; i < p->n_stmts; i++)
        if (strcmp(p->stmts[i].sql, sql) == 0 && p->stmts[i].nparams == nparams)
            return (int)i; /* a reload that keeps by_ids */
    p->stmts = mem_realloc(p->stmts, (p->n_stmts + 1) * sizeof(*p->stmts));
    for (unsigned i = 0; i < p->core.n; i++) {
        struct pconn *c = conn_at(p, i);
        c->prepared = mem_realloc(c->prepared, (p->n_stmts + 1) * sizeof(*c->prepared));
        c->prepared[p->n_stmts] = false; /* prepared before its first use there */
    }
    struct stmt *s = &p->stmts[p->n_stmts];
    s->sql = mem_strdup(sql);
    s->nparams = nparams;
    snprintf(s->name, sizeof(s->name), "batchd_%u", p->n_stmts);
    return (int)p->n_stmts++;
}

int pg_pool_prepare(struct pg_pool *p, const char *sql)
{
    return pg_pool_prepare_n(p, sql, 0);
}

int pg_pool_prepare_n(struct pg_pool *p, const char *sql, unsigned nparams)
{
    assert(nparams <= PG_POOL_MAX_PARAMS);
    int id = prepare(p, sql, nparams);
    /* The replicas register it too, under the same id: a read is the
     * same statement number wherever it runs. */
    if (p->replicas)
        pg_replicas_prepare(p->replicas, sql, nparams, id);
    return id;
}

int pg_pool_exec(struct pg_pool *p, int stmt, const char *param, size_t param_len, unsigned batch,
                 pg_result_fn cb, void *ctx)
{
    assert(p->stmts[stmt].nparams == 0);
    return pg_pool_exec_params(p, stmt, 1, &param, &param_len, batch, cb, ctx);
}

static int exec_on(struct pg_pool *p, struct pg_pool *fallback, int stmt, unsigned n,
                   const char *const *values, const size_t *lengths, unsigned batch, pg_result_fn cb,
                   void *ctx)
{
    assert(stmt >= 0 && (unsigned)stmt < p->n_stmts);
    assert(n == (p->stmts[stmt].nparams ? p->stmts[stmt].nparams : 1));
    if (p->core.ready == 0)
        return -EAGAIN;
    int rc = pool_admit(&p->core);
    if (rc != 0)
        return rc;
    struct pgq *q = pg_query_new(Q_USER);
    q->stmt = stmt;
    /* One block for the values, each followed by a NUL (libpq's text
     * parameters are C strings; a value with a NUL inside is cut there,
     * as PostgreSQL's text cannot hold one anyway). */
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += values[i] ? lengths[i] + 1 : 0;
    q->nparams = n;
    q->params = mem_alloc(total ? total : 1);
    q->lengths = mem_alloc(n * sizeof(*q->lengths));
    char *w = q->params;
    for (unsigned i = 0; i < n; i++) {
        if (values[i] == NULL) {
            q->lengths[i] = -1;
            continue;
        }
        assert(lengths[i] < INT32_MAX);
        memcpy(w, values[i], lengths[i]);
        w[lengths[i]] = '\0';
        w += lengths[i] + 1;
        q->lengths[i] = (int)lengths[i];
    }
    q->batch = batch;
    q->cb = cb;
    q->ctx = ctx;
    q->fallback = fallback;
    rc = pg_query_dispatch(p, q);
    if (rc != 0) {
        q->cb = NULL;
        pg_query_free(q);
    }
    return rc;
}

int pg_pool_exec_params(struct pg_pool *p, int stmt, unsigned n, const char *const *values,
                        const size_t *lengths, unsigned batch, pg_result_fn cb, void *ctx)
{
    return exec_on(p, NULL, stmt, n, values, lengths, batch, cb, ctx);
}

int pg_pool_read(struct pg_pool *p, int stmt, unsigned n, const char *const *values, const size_t *lengths,
                 unsigned batch, bool fresh, pg_result_fn cb, void *ctx)
{
    struct pg_pool *replica = p->replicas ? pg_replicas_pick(p->replicas, fresh) : NULL;
    if (replica && exec_on(replica, p, stmt, n, values, lengths, batch, cb, ctx) == 0) {
        pg_replicas_sent(p->replicas, true);
        return 0;
    }
    /* No replica, or the one picked could not take it (busy, just lost). */
    int rc = exec_on(p, NULL, stmt, n, values, lengths, batch, cb, ctx);
    if (rc == 0 && p->replicas)
        pg_replicas_sent(p->replicas, false);
    return rc;
}

int pg_pool_exec_sql(struct pg_pool *p, const char *sql, pg_result_fn cb, void *ctx)
{
    struct pgq *q = pg_query_new(Q_SQL);
    q->stmt = -1;
    q->sql = sql;
    q->cb = cb;
    q->ctx = ctx;
    int rc = pg_query_dispatch(p, q);
    if (rc != 0) {
        q->cb = NULL;
        pg_query_free(q);
    }
    return rc;
}

void pg_pool_note_write(struct pg_pool *p, const char *key, size_t len)
{
    if (p && p->replicas)
        pg_replicas_note_write(p->replicas, key, len);
}

bool pg_pool_written_recently(struct pg_pool *p, const char *key, size_t len)
{
    return p && p->replicas && pg_replicas_recent(p->replicas, key, len);
}

bool pg_pool_tracks_writes(const struct pg_pool *p)
{
    return p && p->replicas;
}

uint64_t pg_pool_recent_window_ms(const struct cfg_postgres *cfg)
{
    return cfg->replicas.n ? pg_replicas_window_ms(cfg) : 0;
}

