/*
 * pg_pool: libpq connections in pipeline mode, driven by uv_poll.
 * See pg_pool.h.
 *
 * Per connection the queries in flight form a FIFO. In pipeline mode the
 * server answers each (query, Sync) pair with the query's result, a NULL
 * from PQgetResult, and a PGRES_PIPELINE_SYNC; the FIFO head completes on
 * its SYNC. Internal work (SET statement_timeout, PREPARE, the SELECT 1
 * health check) travels through the same FIFO.
 *
 * The uv_poll handle is closed before PQfinish closes the socket under it,
 * and is heap-allocated because it outlives the connection attempt until
 * its close callback.
 *
 * A replica's pool is a pg_pool too (pg_replicas.c owns them and picks
 * one per read). A read sent to a replica carries the primary as its
 * fallback: if the replica fails it in a way that says nothing about the
 * query (connection lost, deadline, shutdown, a conflict with recovery),
 * it is sent to the primary instead of failing.
 */
#include "daemon/backend/pg_pool.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "daemon/backend/pg_int.h"
#include "daemon/backend/pg_replicas.h"
#include "daemon/backend/pool.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "proto/mem.h"

#define DEADLINE_GRACE_MS 1000
#define TEXTARRAYOID 1009

static uint64_t *m_err_timeout, *m_err_conn, *m_err_query, *m_retries, *m_slow;
static struct metric_hist *m_latency;

static const struct pool_names names = { "postgres", "postgres", "batchd_pg", "PostgreSQL",
                                         "1 when a PostgreSQL connection is ready.",
                                         "batchd_pg_pending_queries", "PostgreSQL queries in flight.", false };

static struct pg_pool *pool_of(const struct pconn *c)
{
    return (struct pg_pool *)c->base.pool;
}

static void metrics_init(void)
{
    const char *h = "PostgreSQL query failures: timeout, connection lost, or a server error.";
    m_err_timeout = metrics_counter("batchd_pg_errors_total", "kind=\"timeout\"", h);
    m_err_conn = metrics_counter("batchd_pg_errors_total", "kind=\"connection\"", h);
    m_err_query = metrics_counter("batchd_pg_errors_total", "kind=\"query\"", h);
    m_retries = metrics_counter("batchd_pg_retries_total", "",
                                "Queries retried on another connection after theirs died.");
    m_slow = metrics_counter("batchd_pg_slow_queries_total", "", "PostgreSQL queries slower than slow_ms.");
    m_latency = metrics_histogram("batchd_pg_query_duration_seconds", "",
                                  "Time from sending a PostgreSQL query to its result.",
                                  metrics_latency_bounds, metrics_latency_n);
}

static uint64_t now_ms(struct pg_pool *p)
{
    return uv_now(p->core.loop);
}

void pg_query_free(struct pgq *q)
{
    if (q->result)
        PQclear(q->result);
    free(q->params);
    free(q->lengths);
    free(q);
}

/* --- connection lifecycle ------------------------------------------------------- */

static void pconn_connect(struct pconn *c);
static void on_poll_cb(uv_poll_t *h, int status, int events);

static void poll_closed_cb(uv_handle_t *h)
{
    free(h);
}

static void poll_close(struct pconn *c)
{
    if (c->poll) {
        uv_close((uv_handle_t *)c->poll, poll_closed_cb);
        c->poll = NULL;
    }
    c->fd = -1;
    c->poll_events = 0;
}

static void poll_want(struct pconn *c, int events)
{
    int fd = PQsocket(c->pg);
    if (fd != c->fd) { /* libpq may move to another socket (another host) */
        poll_close(c);
        c->poll = mem_alloc(sizeof(*c->poll));
        if (uv_poll_init(c->base.pool->loop, c->poll, fd) != 0) {
            free(c->poll);
            c->poll = NULL;
            return;
        }
        c->poll->data = c;
        c->fd = fd;
    }
    if (events != c->poll_events) {
        c->poll_events = events;
        uv_poll_start(c->poll, events, on_poll_cb);
    }
}

static void complete(struct pconn *c, struct pgq *q, int err);

/* Tears the connection down. Pending user queries are retried once on
 * another connection when the connection was lost (not on a timeout). */
static void pconn_fail(struct pconn *c, int err, const char *why)
{
    struct pg_pool *p = pool_of(c);
    /* `why` may be PQerrorMessage(), which PQfinish frees: copy it first. */
    char reason[200];
    snprintf(reason, sizeof(reason), "%s", why ? why : "");
    reason[strcspn(reason, "\n")] = '\0';
    bool was_ready = c->base.state == POOL_READY;
    if (c->base.state != POOL_CLOSED)
        c->base.state = POOL_WAITING;
    poll_close(c);
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    for (unsigned i = 0; i < p->n_stmts; i++)
        c->prepared[i] = false; /* a new session has no prepared statements */
    struct pgq_list lost = STAILQ_HEAD_INITIALIZER(lost);
    STAILQ_CONCAT(&lost, &c->queue);
    pool_conn_clear(&c->base);
    if (was_ready || c->base.state == POOL_CLOSED)
        log_debug("postgres connection lost", "conn=%u reason=%s", c->base.index, LOG_Q(reason));
    pool_update_up(&p->core, reason);
    struct pgq *q;
    while ((q = STAILQ_FIRST(&lost)) != NULL) {
        STAILQ_REMOVE_HEAD(&lost, link);
        if (q->result) {
            PQclear(q->result);
            q->result = NULL;
        }
        if (q->kind == Q_USER && err == -ECONNRESET && !q->retried && !p->core.freeing) {
            q->retried = true;
            (*m_retries)++;
            if (pg_query_dispatch(p, q) == 0)
                continue;
        }
        if (q->kind == Q_USER || q->kind == Q_SQL)
            complete(c, q, err);
        else
            pg_query_free(q);
    }
    pool_conn_retry(&c->base);
}

/* --- sending ------------------------------------------------------------------------ */

static void pconn_flush(struct pconn *c)
{
    int rc = PQflush(c->pg);
    if (rc < 0) {
        pconn_fail(c, -ECONNRESET, PQerrorMessage(c->pg));
        return;
    }
    poll_want(c, UV_READABLE | (rc == 1 ? UV_WRITABLE : 0));
}

static void enqueue(struct pconn *c, struct pgq *q)
{
    STAILQ_INSERT_TAIL(&c->queue, q, link);
    pool_conn_push(&c->base);
}

struct pgq *pg_query_new(enum pgq_kind kind)
{
    struct pgq *q = mem_calloc(1, sizeof(*q));
    q->kind = kind;
    q->start_ns = uv_hrtime();
    return q;
}

/* Pipelines PREPARE of statement `stmt`. It counts as prepared from now
 * on, so queries sent behind it do not prepare it again; if it fails,
 * finish_head clears the flag and the next query using it sends it again
 * (by_ids may read a table that a migration creates after batchd starts). */
static int send_prepare(struct pconn *c, int stmt)
{
    struct pg_pool *p = pool_of(c);
    struct stmt *s = &p->stmts[stmt];
    Oid types[1] = { TEXTARRAYOID };
    int ok = s->nparams == 0 ? PQsendPrepare(c->pg, s->name, s->sql, 1, types)
                             : PQsendPrepare(c->pg, s->name, s->sql, (int)s->nparams, NULL);
    if (!ok || !PQpipelineSync(c->pg))
        return -EIO;
    struct pgq *q = pg_query_new(Q_PREPARE);
    q->stmt = stmt;
    q->start_ms = now_ms(p);
    enqueue(c, q);
    c->prepared[stmt] = true;
    return 0;
}

static int send_query(struct pconn *c, struct pgq *q)
{
    struct pg_pool *p = pool_of(c);
    if (q->kind == Q_USER && !c->prepared[q->stmt] && send_prepare(c, q->stmt) != 0)
        return -EIO;
    int ok;
    if (q->kind == Q_PING || q->kind == Q_SQL) {
        ok = PQsendQueryParams(c->pg, q->kind == Q_PING ? "SELECT 1" : q->sql, 0, NULL, NULL, NULL, NULL, 0);
    } else {
        const char *values[PG_POOL_MAX_PARAMS];
        const char *v = q->params;
        for (unsigned i = 0; i < q->nparams; i++) {
            values[i] = q->lengths[i] < 0 ? NULL : v;
            if (q->lengths[i] >= 0)
                v += q->lengths[i] + 1;
        }
        /* Text format throughout (formats NULL), so lengths are ignored
         * and the values go as the NUL-terminated strings they are. */
        ok = PQsendQueryPrepared(c->pg, p->stmts[q->stmt].name, (int)q->nparams, values, q->lengths,
                                 NULL, 0);
    }
    if (!ok || !PQpipelineSync(c->pg))
        return -EIO;
    q->start_ms = now_ms(p);
    enqueue(c, q);
    return 0;
}

int pg_query_dispatch(struct pg_pool *p, struct pgq *q)
{
    struct pconn *best = (struct pconn *)pool_pick(&p->core);
    if (best == NULL)
        return -EAGAIN;
    if (send_query(best, q) != 0) {
        pconn_fail(best, -ECONNRESET, PQerrorMessage(best->pg));
        return pg_query_dispatch(p, q);
    }
    pconn_flush(best);
    return 0;
}

/* --- receiving ------------------------------------------------------------------------ */

/* A replica's failure that says nothing about the query itself: the
 * connection went (or the replica is shutting down), the deadline passed,
 * or the query conflicted with recovery (SQLSTATE class 40 on a standby). */
static bool replica_failure(int err, const PGresult *res)
{
    if (err == -ECONNRESET || err == -ETIMEDOUT)
        return true;
    if (err != -EIO || res == NULL)
        return false;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return state && (strncmp(state, "40", 2) == 0 || strncmp(state, "57P0", 4) == 0);
}

static void complete(struct pconn *c, struct pgq *q, int err)
{
    struct pg_pool *p = pool_of(c);
    if (q->fallback && !q->fallback->core.freeing && replica_failure(err, q->result)) {
        struct pg_pool *primary = q->fallback;
        log_debug("postgres replica read failed; sent to the primary", "replica=%d err=%d", p->replica, err);
        q->fallback = NULL;
        q->retried = false;
        if (q->result) {
            PQclear(q->result);
            q->result = NULL;
        }
        pg_replicas_fell_back(primary->replicas);
        if (pg_query_dispatch(primary, q) == 0) /* not admitted: a retry of work that was */
            return;
        err = -ECONNRESET; /* the primary cannot take it either */
    }
    uint64_t ns = uv_hrtime() - q->start_ns;
    metrics_observe(m_latency, (double)ns / 1e9);
    if (err == -ETIMEDOUT)
        (*m_err_timeout)++;
    else if (err == -EIO)
        (*m_err_query)++;
    else if (err < 0)
        (*m_err_conn)++;
    if (p->core.lim.slow_ms > 0 && ns / 1000000 >= (uint64_t)p->core.lim.slow_ms) {
        (*m_slow)++;
        char sql[160];
        snprintf(sql, sizeof(sql), "%s",
                 q->kind == Q_SQL ? q->sql : q->stmt < (int)p->n_stmts ? p->stmts[q->stmt].sql : "?");
        log_warn("slow postgres query", "statement=%s batch=%u duration_ms=%.1f err=%d", LOG_Q(sql),
                 q->batch, (double)ns / 1e6, err);
    }
    if (q->cb)
        q->cb(q->ctx, err == 0 || err == -EIO ? q->result : NULL, err);
    pg_query_free(q);
}

static int result_error(const PGresult *res)
{
    switch (PQresultStatus(res)) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
        return 0;
    default:
        return -EIO;
    }
}

/* One query's results are in (its SYNC arrived). */
static void finish_head(struct pconn *c)
{
    struct pgq *q = STAILQ_FIRST(&c->queue);
    STAILQ_REMOVE_HEAD(&c->queue, link);
    pool_conn_pop(&c->base);
    int err = q->result ? result_error(q->result) : -EIO;
    switch (q->kind) {
    case Q_USER:
    case Q_SQL:
        complete(c, q, err);
        return;
    case Q_SETUP:
        if (err) {
            log_error("postgres connection setup failed", "conn=%u err=%s", c->base.index,
                      LOG_Q(q->result ? PQresultErrorMessage(q->result) : "no result"));
            pg_query_free(q);
            pconn_fail(c, -ECONNRESET, "setup failed");
            return;
        }
        break;
    case Q_PREPARE:
        if (err) {
            c->prepared[q->stmt] = false;
            log_error("cannot prepare statement", "conn=%u statement=%s err=%s", c->base.index,
                      LOG_Q(pool_of(c)->stmts[q->stmt].sql),
                      LOG_Q(q->result ? PQresultErrorMessage(q->result) : "no result"));
        }
        break;
    case Q_PING:
        if (err) {
            pg_query_free(q);
            pconn_fail(c, -ECONNRESET, "health check failed");
            return;
        }
        break;
    }
    pg_query_free(q);
}

static void read_results(struct pconn *c)
{
    if (!PQconsumeInput(c->pg)) {
        pconn_fail(c, -ECONNRESET, PQerrorMessage(c->pg));
        return;
    }
    c->base.last_activity_ms = now_ms(pool_of(c));
    bool progressed = false;
    while (!STAILQ_EMPTY(&c->queue) && c->base.state == POOL_READY) {
        if (PQisBusy(c->pg))
            break;
        PGresult *res = PQgetResult(c->pg);
        if (res == NULL)
            continue; /* end of this query's results; its SYNC comes next */
        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            finish_head(c);
            progressed = true;
            continue;
        }
        struct pgq *head = STAILQ_FIRST(&c->queue);
        if (head->result == NULL)
            head->result = res;
        else
            PQclear(res);
    }
    if (c->base.state == POOL_READY && PQstatus(c->pg) == CONNECTION_BAD) {
        pconn_fail(c, -ECONNRESET, PQerrorMessage(c->pg));
        return;
    }
    if (progressed)
        pool_conn_arm(&c->base);
}

/* --- connecting ------------------------------------------------------------------------- */

static void notice_cb(void *arg, const char *message)
{
    (void)arg;
    log_debug("postgres notice", "msg_text=%s", LOG_Q(message));
}

static void on_connected(struct pconn *c)
{
    struct pg_pool *p = pool_of(c);
    if (PQsetnonblocking(c->pg, 1) != 0 || !PQenterPipelineMode(c->pg)) {
        pconn_fail(c, -ECONNRESET, "cannot enter pipeline mode");
        return;
    }
    PQsetNoticeProcessor(c->pg, notice_cb, NULL);
    pool_conn_ready(&c->base);
    char sql[64];
    snprintf(sql, sizeof(sql), "SET statement_timeout = %lld", (long long)p->cfg->query_timeout_ms);
    if (!PQsendQueryParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 0) || !PQpipelineSync(c->pg)) {
        pconn_fail(c, -ECONNRESET, PQerrorMessage(c->pg));
        return;
    }
    struct pgq *q = pg_query_new(Q_SETUP);
    q->start_ms = now_ms(p);
    enqueue(c, q);
    for (unsigned i = 0; i < p->n_stmts; i++) {
        if (send_prepare(c, (int)i) != 0) {
            pconn_fail(c, -ECONNRESET, PQerrorMessage(c->pg));
            return;
        }
    }
    log_debug("postgres connection ready", "conn=%u", c->base.index);
    pool_update_up(&p->core, "ready");
    pconn_flush(c);
}

static void continue_connect(struct pconn *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        poll_want(c, UV_READABLE);
        break;
    case PGRES_POLLING_WRITING:
        poll_want(c, UV_WRITABLE);
        break;
    case PGRES_POLLING_OK:
        on_connected(c);
        break;
    default: {
        char err[256];
        snprintf(err, sizeof(err), "%s", PQerrorMessage(c->pg));
        err[strcspn(err, "\n")] = '\0';
        log_debug("postgres connect failed", "conn=%u err=%s", c->base.index, LOG_Q(err));
        pconn_fail(c, -ECONNRESET, err);
    }
    }
}

static void on_poll_cb(uv_poll_t *h, int status, int events)
{
    struct pconn *c = h->data;
    if (status < 0) {
        pconn_fail(c, -ECONNRESET, uv_strerror(status));
        return;
    }
    if (c->base.state == POOL_CONNECTING) {
        continue_connect(c);
        return;
    }
    if (c->base.state != POOL_READY)
        return;
    if (events & UV_WRITABLE) {
        pconn_flush(c);
        if (c->base.state != POOL_READY)
            return;
    }
    if (events & UV_READABLE)
        read_results(c);
}

static void pconn_connect(struct pconn *c)
{
    struct pg_pool *p = pool_of(c);
    /* application_name first: the user's conninfo (expanded from dbname)
     * may override it. */
    const char *keys[] = { "application_name", "dbname", NULL };
    const char *vals[] = { "batchd", p->conninfo, NULL };
    c->base.state = POOL_CONNECTING;
    c->fd = -1;
    c->pg = PQconnectStartParams(keys, vals, 1);
    if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD) {
        pconn_fail(c, -ECONNRESET, c->pg ? PQerrorMessage(c->pg) : "out of memory");
        return;
    }
    pool_conn_connecting(&c->base);
    continue_connect(c);
}

/* --- what the pool core asks: connect, timeouts, pings, close ------------------------ */

static void conn_connect_cb(struct pool_conn *pc)
{
    pconn_connect((struct pconn *)pc);
}

static void conn_connect_timeout_cb(struct pool_conn *pc)
{
    log_debug("postgres connect timeout", "conn=%u", pc->index);
    pconn_fail((struct pconn *)pc, -ETIMEDOUT, "connect timeout");
}

static bool conn_oldest_cb(const struct pool_conn *pc, uint64_t *sent_ms)
{
    const struct pconn *c = (const struct pconn *)pc;
    const struct pgq *head = STAILQ_FIRST(&c->queue);
    if (head == NULL)
        return false;
    *sent_ms = head->start_ms;
    return true;
}

static void conn_overdue_cb(struct pool_conn *pc)
{
    log_warn("postgres query deadline passed", "conn=%u pending=%u", pc->index, pc->pending);
    pconn_fail((struct pconn *)pc, -ETIMEDOUT, "query deadline");
}

static void conn_ping_cb(struct pool_conn *pc)
{
    struct pconn *c = (struct pconn *)pc;
    struct pgq *q = pg_query_new(Q_PING);
    if (send_query(c, q) != 0) {
        pg_query_free(q);
        pconn_fail(c, -ECONNRESET, "cannot send health check");
        return;
    }
    pconn_flush(c);
}

static void conn_close_cb(struct pool_conn *pc)
{
    pconn_fail((struct pconn *)pc, -ECANCELED, "shutdown");
}

/* In pool.h's order: connect, connect_timeout, oldest, overdue, ping, close. */
static const struct pool_conn_ops conn_ops = { conn_connect_cb, conn_connect_timeout_cb, conn_oldest_cb,
                                               conn_overdue_cb, conn_ping_cb, conn_close_cb };

/* --- API ------------------------------------------------------------------------------------- */

/* The client-side deadline: the server's statement_timeout, plus a grace. */
static struct pool_limits limits_of(const struct cfg_postgres *cfg, int64_t slow_ms)
{
    return (struct pool_limits){
        .connect_timeout_ms = (uint64_t)cfg->connect_timeout_ms,
        .reply_timeout_ms = (uint64_t)cfg->query_timeout_ms + DEADLINE_GRACE_MS,
        .ping_interval_ms = (uint64_t)cfg->ping_interval_ms,
        .slow_ms = slow_ms,
        .max_pending = (unsigned)cfg->max_pending,
    };
}

static void pool_destroy_cb(struct pool *core)
{
    struct pg_pool *p = (struct pg_pool *)core;
    for (unsigned i = 0; i < p->n_stmts; i++)
        free(p->stmts[i].sql);
    free(p->stmts);
    for (unsigned i = 0; i < core->n; i++)
        free(conn_at(p, i)->prepared);
    pool_deinit(core);
    free(p->labels);
    free(p->addr);
    free(p);
}

/* "host:port" of a conninfo, for logs; NULL when it names several hosts. */
static char *addr_of(const char *conninfo)
{
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    if (opts == NULL)
        return NULL;
    const char *host = NULL, *port = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "host") == 0 && o->val && *o->val)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0 && o->val && *o->val && host == NULL)
            host = o->val;
        else if (strcmp(o->keyword, "port") == 0 && o->val && *o->val)
            port = o->val;
    }
    char buf[300];
    snprintf(buf, sizeof(buf), "%s:%s", host ? host : "localhost", port ? port : "5432");
    PQconninfoFree(opts);
    return mem_strdup(buf);
}

static struct pg_pool *pool_new(uv_loop_t *loop, const struct cfg_postgres *cfg, int replica,
                                const struct pool_names *nm, const char *labels, int64_t slow_ms)
{
    struct pg_pool *p = mem_calloc(1, sizeof(*p));
    p->cfg = cfg;
    p->replica = replica;
    p->conninfo = replica < 0 ? cfg->conninfo : cfg->replicas.items[replica];
    pool_init_labelled(&p->core, loop, nm, labels, &conn_ops, (unsigned)cfg->pool_size, sizeof(struct pconn),
              limits_of(cfg, slow_ms), pool_destroy_cb);
    metrics_init();
    for (unsigned i = 0; i < p->core.n; i++) {
        conn_at(p, i)->fd = -1;
        STAILQ_INIT(&conn_at(p, i)->queue);
    }
    return p;
}

struct pg_pool *pg_pool_new(uv_loop_t *loop, const struct cfg_postgres *cfg, int64_t slow_ms)
{
    struct pg_pool *p = pool_new(loop, cfg, -1, &names, NULL, slow_ms);
    pool_start(&p->core);
    if (cfg->replicas.n > 0)
        p->replicas = pg_replicas_new(p, loop, cfg, slow_ms);
    return p;
}

struct pg_pool *pg_pool_new_replica(uv_loop_t *loop, const struct cfg_postgres *cfg, unsigned index,
                                    int64_t slow_ms)
{
    char labels[32];
    snprintf(labels, sizeof(labels), "replica=\"%u\"", index);
    const struct pool_names nm = { "postgres replica", "postgres_replica", "batchd_pg_replica",
                                   "PostgreSQL replica", "1 when a connection to this PostgreSQL replica is ready.",
                                   "batchd_pg_replica_pending_queries", "Queries in flight on this replica.", false };
    struct pg_pool *p = pool_new(loop, cfg, (int)index, &nm, labels, slow_ms);
    p->labels = mem_strdup(labels);
    p->addr = addr_of(p->conninfo);
    p->core.addr = p->addr;
    pool_start(&p->core);
    return p;
}

const char *pg_pool_addr(const struct pg_pool *p)
{
    return p->addr ? p->addr : "primary";
}

unsigned pg_pool_pending(const struct pg_pool *p)
{
    return p->core.pending;
}

void pg_pool_configure(struct pg_pool *p, const struct cfg_postgres *cfg, int64_t slow_ms)
{
    p->cfg = cfg;
    /* replicas and conninfo are restart-only: the reload kept their values */
    p->conninfo = p->replica < 0 ? cfg->conninfo : cfg->replicas.items[p->replica];
    pool_configure(&p->core, limits_of(cfg, slow_ms));
    if (p->replicas)
        pg_replicas_configure(p->replicas, cfg, slow_ms);
}

bool pg_pool_up(const struct pg_pool *p)
{
    return p->core.ready > 0;
}

void pg_pool_free(struct pg_pool *p)
{
    if (p == NULL)
        return;
    /* The replicas first: their reads fall back to a primary still here. */
    if (p->replicas)
        pg_replicas_free(p->replicas);
    p->replicas = NULL;
    pool_close(&p->core);
}
