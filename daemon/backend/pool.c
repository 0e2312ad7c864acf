/*
 * pool: connections, timers, up/down and the pending limit shared by the
 * Redis and PostgreSQL pools. See pool.h (with the folder's diagram).
 *
 * max_pending counts commands, not bytes: what a full queue costs is time
 * (each waits behind the others, and both servers answer one at a time),
 * while a pending command's bytes have mostly left for the socket already
 * and the requests behind it are bounded by the HTTP limits. The pending
 * gauges count the same thing.
 */
#include "daemon/backend/pool.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "daemon/backend/backoff.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "proto/mem.h"

const char *const pool_state_names[] = { "waiting", "connecting", "handshake", "ready", "closed" };

static double gauge_ready(void *arg)
{
    return ((struct pool *)arg)->ready;
}

static double gauge_pending(void *arg)
{
    return ((struct pool *)arg)->pending;
}

static void timer_cb(uv_timer_t *t);

static struct pool_conn *conn_add(struct pool *p, const struct pool_conn_ops *ops)
{
    struct pool_conn *c = mem_calloc(1, p->conn_size);
    c->pool = p;
    c->ops = ops;
    c->index = p->n_all;
    c->state = POOL_WAITING;
    uv_timer_init(p->loop, &c->timer);
    c->timer.data = c;
    p->handles_open++;
    p->conns = mem_realloc(p->conns, (p->n_all + 1) * sizeof(*p->conns));
    p->conns[p->n_all++] = c;
    return c;
}

void pool_init(struct pool *p, uv_loop_t *loop, const struct pool_names *names,
               const struct pool_conn_ops *ops, unsigned n, size_t conn_size,
               struct pool_limits lim, void (*destroy)(struct pool *p))
{
    pool_init_labelled(p, loop, names, NULL, ops, n, conn_size, lim, destroy);
}

void pool_init_labelled(struct pool *p, uv_loop_t *loop, const struct pool_names *names, const char *labels,
                        const struct pool_conn_ops *ops, unsigned n, size_t conn_size,
                        struct pool_limits lim, void (*destroy)(struct pool *p))
{
    p->loop = loop;
    p->destroy = destroy;
    p->conn_size = conn_size;
    p->lim = lim;
    snprintf(p->msg_up, sizeof(p->msg_up), "%s up", names->name);
    snprintf(p->msg_down, sizeof(p->msg_down), "%s down", names->name);
    snprintf(p->msg_closed, sizeof(p->msg_closed), "%s connections closed", names->name);
    snprintf(p->msg_busy, sizeof(p->msg_busy), "%s busy", names->name);
    snprintf(p->msg_unbusy, sizeof(p->msg_unbusy), "%s no longer busy", names->name);
    char metric[64], help[96], lb[160];
    const char *l = labels ? labels : "";
    const char *sep = *l ? "," : "";
    snprintf(lb, sizeof(lb), "backend=\"%s\",%s%sreason=\"busy\"", names->label, l, sep);
    p->m_rejected = metrics_counter("batchd_backend_rejected_total", lb,
                                    "Commands and queries refused because max_pending were awaiting replies "
                                    "(reads and publishes answer 503 backend_busy).");
    snprintf(metric, sizeof(metric), "%s_connects_total", names->metric);
    snprintf(help, sizeof(help), "%s connections established.", names->product);
    p->m_connects = metrics_counter(metric, l, help);
    if (names->member) {
        p->m_up = &p->own_up;
    } else {
        snprintf(metric, sizeof(metric), "%s_up", names->metric);
        p->m_up = metrics_gauge(metric, l, names->up_help);
        snprintf(metric, sizeof(metric), "%s_pool_connections", names->metric);
        snprintf(help, sizeof(help), "%s pool connections by state.", names->product);
        snprintf(lb, sizeof(lb), "%s%sstate=\"ready\"", l, sep);
        metrics_gauge_fn(metric, lb, help, gauge_ready, p);
        metrics_gauge_fn(names->pending, l, names->pending_help, gauge_pending, p);
    }
    for (unsigned i = 0; i < n; i++)
        conn_add(p, ops);
    p->n = n;
}

void pool_start(struct pool *p)
{
    for (unsigned i = 0; i < p->n; i++)
        p->conns[i]->ops->connect(p->conns[i]);
}

void pool_configure(struct pool *p, struct pool_limits lim)
{
    p->lim = lim;
}

struct pool_conn *pool_conn_new(struct pool *p, const struct pool_conn_ops *ops)
{
    return conn_add(p, ops);
}

static void timer_closed_cb(uv_handle_t *h)
{
    struct pool_conn *c = h->data;
    struct pool *p = c->pool;
    if (--p->handles_open == 0)
        p->destroy(p);
}

void pool_close(struct pool *p)
{
    p->freeing = true;
    for (unsigned i = 0; i < p->n_all; i++) {
        struct pool_conn *c = p->conns[i];
        c->state = POOL_CLOSED;
        c->ops->close(c);
        uv_close((uv_handle_t *)&c->timer, timer_closed_cb);
    }
    *p->m_up = 0;
}

void pool_deinit(struct pool *p)
{
    for (unsigned i = 0; i < p->n_all; i++)
        free(p->conns[i]);
    free(p->conns);
    p->conns = NULL;
    p->n = p->n_all = 0;
}

/* --- picking and admitting --------------------------------------------------- */

struct pool_conn *pool_pick(struct pool *p)
{
    struct pool_conn *best = NULL;
    for (unsigned i = 0; i < p->n; i++) {
        struct pool_conn *c = p->conns[i];
        if (c->state == POOL_READY && (best == NULL || c->pending < best->pending))
            best = c;
    }
    return best;
}

int pool_admit(struct pool *p)
{
    if (p->pending < p->lim.max_pending) {
        if (p->busy_logged) {
            p->busy_logged = false;
            log_info(p->msg_unbusy, "pending=%u max_pending=%u rejected=%llu", p->pending,
                     p->lim.max_pending, (unsigned long long)p->busy_rejected);
        }
        return 0;
    }
    (*p->m_rejected)++;
    if (!p->busy_logged) {
        p->busy_logged = true;
        p->busy_rejected = 0;
        log_warn(p->msg_busy, "pending=%u max_pending=%u", p->pending, p->lim.max_pending);
    }
    p->busy_rejected++;
    return -EBUSY;
}

void pool_update_up(struct pool *p, const char *reason)
{
    unsigned ready = 0;
    for (unsigned i = 0; i < p->n; i++)
        ready += p->conns[i]->state == POOL_READY;
    p->ready = ready;
    *p->m_up = ready > 0;
    if (ready > 0 && !p->up_logged) {
        p->up_logged = true;
        if (p->addr)
            log_info(p->msg_up, "addr=%s ready_connections=%u", p->addr, ready);
        else
            log_info(p->msg_up, "ready_connections=%u", ready);
    } else if (ready == 0 && p->up_logged) {
        p->up_logged = false;
        if (p->freeing)
            log_info(p->msg_closed, "reason=%s", LOG_Q(reason));
        else if (p->addr)
            log_warn(p->msg_down, "addr=%s reason=%s", p->addr, LOG_Q(reason));
        else
            log_warn(p->msg_down, "reason=%s", LOG_Q(reason));
    }
}

/* --- connection states and the timer ------------------------------------------ */

void pool_conn_connecting(struct pool_conn *c)
{
    uv_timer_start(&c->timer, timer_cb, c->pool->lim.connect_timeout_ms, 0);
}

void pool_conn_ready(struct pool_conn *c)
{
    c->state = POOL_READY;
    c->attempt = 0;
    c->last_activity_ms = uv_now(c->pool->loop);
    (*c->pool->m_connects)++;
}

void pool_conn_retry(struct pool_conn *c)
{
    if (c->pool->freeing)
        return;
    c->state = POOL_WAITING;
    uv_timer_start(&c->timer, timer_cb, backoff_next_ms(&c->attempt), 0);
}

void pool_conn_arm(struct pool_conn *c)
{
    struct pool *p = c->pool;
    if (c->state != POOL_READY)
        return;
    uint64_t now = uv_now(p->loop), sent, deadline;
    if (c->ops->oldest(c, &sent))
        deadline = sent + p->lim.reply_timeout_ms;
    else
        deadline = c->last_activity_ms + p->lim.ping_interval_ms;
    uv_timer_start(&c->timer, timer_cb, deadline > now ? deadline - now : 0, 0);
}

static void timer_cb(uv_timer_t *t)
{
    struct pool_conn *c = t->data;
    struct pool *p = c->pool;
    switch (c->state) {
    case POOL_WAITING:
        c->ops->connect(c);
        return;
    case POOL_CONNECTING:
    case POOL_HANDSHAKE:
        c->ops->connect_timeout(c);
        return;
    case POOL_READY: {
        uint64_t now = uv_now(p->loop), sent;
        bool waiting = c->ops->oldest(c, &sent);
        if (waiting && now - sent >= p->lim.reply_timeout_ms) {
            c->ops->overdue(c);
            return;
        }
        if (!waiting && now - c->last_activity_ms >= p->lim.ping_interval_ms) {
            c->ops->ping(c);
            if (c->state != POOL_READY)
                return;
        }
        pool_conn_arm(c);
        return;
    }
    case POOL_CLOSED:
        return;
    }
}

/* --- pending ---------------------------------------------------------------------- */

/* Extra connections (Redis pub/sub) carry none of the pool users'
 * commands: their handshake does not count against max_pending. */
static bool counted(const struct pool_conn *c)
{
    return c->index < c->pool->n;
}

void pool_conn_push(struct pool_conn *c)
{
    if (counted(c))
        c->pool->pending++;
    if (c->pending++ == 0)
        pool_conn_arm(c);
}

void pool_conn_pop(struct pool_conn *c)
{
    if (counted(c))
        c->pool->pending--;
    c->pending--;
}

void pool_conn_clear(struct pool_conn *c)
{
    if (counted(c))
        c->pool->pending -= c->pending;
    c->pending = 0;
}
