/*
 * pool: the core the Redis and PostgreSQL pools share. This is daemon/backend/:
 *
 *   cache/, sse/ ──> redis_pool: commands, scripts ────┐
 *                    ├─ redis_reply: one arena a reply │
 *                    └─ redis_pubsub: SUBSCRIBE conn   ├──> pool (the core, this file):
 *   cache/ ─────────> pg_pool: libpq pipeline ─────────┘    connections and their timer,
 *                                                           up/down, backoff, least-busy
 *   redis_uv: hiredis on the libuv loop                     pick, max_pending, close, free
 *   backoff.h: reconnect delays
 *
 * A backend embeds struct pool first in its pool struct and struct
 * pool_conn first in its connection struct (the core allocates those at
 * conn_size). Each connection has one timer, which the core drives from the
 * connection's state:
 *
 *   WAITING ──backoff──> CONNECTING ──(HANDSHAKE)──> READY ──lost──> WAITING
 *                │ connect_timeout_ms                │ the oldest reply later than
 *                └──> ops->connect_timeout           │ reply_timeout_ms: ops->overdue;
 *                                                    │ idle for ping_interval_ms: ops->ping
 *
 * What counts as a reply, a ping and a break is the backend's; the core
 * only keeps time, counts, logs the pool going up and down, and picks.
 */
#ifndef BATCHD_POOL_H
#define BATCHD_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum pool_conn_state {
    POOL_WAITING,     /* not connected; the timer reconnects */
    POOL_CONNECTING,  /* connect in progress */
    POOL_HANDSHAKE,   /* Redis: AUTH / SELECT / PING sent */
    POOL_READY,
    POOL_CLOSED,      /* the pool is being freed */
};

/* "waiting", "connecting", ... by state, for logs. */
extern const char *const pool_state_names[];

struct pool_conn;

/* What the core asks of a connection; the pointers stay valid for its life. */
struct pool_conn_ops {
    /* WAITING: the backoff delay is over; start connecting. */
    void (*connect)(struct pool_conn *c);
    /* CONNECTING / HANDSHAKE for connect_timeout_ms: give up on it. */
    void (*connect_timeout)(struct pool_conn *c);
    /* The time the oldest reply awaited was asked for; false when none is. */
    bool (*oldest)(const struct pool_conn *c, uint64_t *sent_ms);
    /* READY, and that reply is reply_timeout_ms late: break the connection. */
    void (*overdue)(struct pool_conn *c);
    /* READY, nothing awaited and no reply for ping_interval_ms. */
    void (*ping)(struct pool_conn *c);
    /* pool_close: drop the connection (its state is CLOSED already); the
     * core closes the timer after this returns. */
    void (*close)(struct pool_conn *c);
};

struct pool_conn {
    struct pool *pool;
    const struct pool_conn_ops *ops;
    unsigned index;               /* 0..n-1 for the pool's own; extra ones follow */
    enum pool_conn_state state;
    unsigned pending;             /* commands sent or queued, replies not yet in */
    unsigned attempt;             /* failed connects since the last success: the backoff step */
    uint64_t last_activity_ms;    /* the last reply: a ping is due ping_interval_ms after it */
    uv_timer_t timer;
};

/* Names of one backend: log messages and metrics. */
struct pool_names {
    const char *name;             /* "redis": logs "redis up", "redis down", "redis busy" */
    const char *label;            /* batchd_backend_rejected_total{backend=label} */
    const char *metric;           /* "batchd_redis": <metric>_up, _pool_connections, _connects_total */
    const char *product;          /* "Redis", in the metrics' help */
    const char *up_help;
    const char *pending, *pending_help;   /* the gauge of replies awaited */
    bool member;                  /* one of a group (a cluster's nodes): the group reports up,
                                     connections and pending; this pool registers no gauges */
};

/* The limits a reload may change. */
struct pool_limits {
    uint64_t connect_timeout_ms;
    uint64_t reply_timeout_ms;
    uint64_t ping_interval_ms;
    int64_t slow_ms;              /* replies slower than this are logged (0: none) */
    unsigned max_pending;         /* pool_admit refuses at this many pending */
};

struct pool {
    uv_loop_t *loop;
    /* Frees the backend's part once every timer has closed; it must call
     * pool_deinit, then free the struct that holds this one. */
    void (*destroy)(struct pool *p);
    struct pool_conn **conns;     /* the pool's n, then extra ones (Redis pub/sub) */
    unsigned n, n_all;
    size_t conn_size;
    unsigned ready;               /* of the n, READY when last counted */
    unsigned pending;             /* sum of the n's pending */
    struct pool_limits lim;
    const char *addr;             /* "host:port" in up/down logs, or NULL */
    bool up_logged, busy_logged, freeing;
    unsigned handles_open;
    uint64_t busy_rejected;       /* refusals since the pool became busy */
    int64_t *m_up;
    int64_t own_up;               /* m_up's target for a member pool */
    uint64_t *m_connects, *m_rejected;
    char msg_up[32], msg_down[32], msg_closed[48], msg_busy[32], msg_unbusy[40];
};

/* Sets up p with n connections of conn_size bytes each (zeroed, then their
 * pool_conn part set: WAITING, timer initialised) and registers the
 * metrics. Nothing connects until pool_start. */
void pool_init(struct pool *p, uv_loop_t *loop, const struct pool_names *names,
               const struct pool_conn_ops *ops, unsigned n, size_t conn_size,
               struct pool_limits lim, void (*destroy)(struct pool *p));
/* The same, with `labels` (replica="0") on each of those metrics: one
 * backend with several pools. */
void pool_init_labelled(struct pool *p, uv_loop_t *loop, const struct pool_names *names, const char *labels,
                        const struct pool_conn_ops *ops, unsigned n, size_t conn_size,
                        struct pool_limits lim, void (*destroy)(struct pool *p));
/* Asks every one of the pool's n connections to connect now. */
void pool_start(struct pool *p);
/* Takes a reload's limits. */
void pool_configure(struct pool *p, struct pool_limits lim);
/* One more connection outside the n (not picked, not counted up or
 * pending), allocated at conn_size like the others and freed with them. */
struct pool_conn *pool_conn_new(struct pool *p, const struct pool_conn_ops *ops);
/* Marks the pool freeing, closes every connection (ops->close) and its
 * timer; p->destroy runs once the last timer has closed. */
void pool_close(struct pool *p);
/* Frees the connections and their array (from p->destroy). */
void pool_deinit(struct pool *p);

/* The READY connection of the n with the fewest pending, or NULL. */
struct pool_conn *pool_pick(struct pool *p);
/* Admission of a user's command or query: 0, or -EBUSY when max_pending
 * are pending already (counted in batchd_backend_rejected_total; "<name>
 * busy" is logged once, "<name> no longer busy" at the next admission).
 * Work the pool makes itself (handshakes, pings, PREPARE, a script's
 * SCRIPT LOAD follow-up, a retry) is not admitted: it continues work that
 * was, or keeps the connection alive. */
int pool_admit(struct pool *p) __attribute__((warn_unused_result));
/* Recounts READY connections; logs "<name> up" / "<name> down" on a change. */
void pool_update_up(struct pool *p, const char *reason);

/* Connection state changes. */
/* The backend set CONNECTING: the connect timeout starts. */
void pool_conn_connecting(struct pool_conn *c);
/* Now READY: the backoff restarts, and the connect is counted. */
void pool_conn_ready(struct pool_conn *c);
/* Lost: WAITING, and the connect is retried after the backoff delay
 * (unless the pool is being freed). */
void pool_conn_retry(struct pool_conn *c);
/* (Re)starts the timer for the next deadline of a READY connection. */
void pool_conn_arm(struct pool_conn *c);

/* A command sent or queued on c, awaiting its reply. */
void pool_conn_push(struct pool_conn *c);
/* One reply in (or one command given up). */
void pool_conn_pop(struct pool_conn *c);
/* Every pending command given up at once. */
void pool_conn_clear(struct pool_conn *c);

#endif
