/*
 * proxy_int: what pool.c (app server connections), proxy.c (one proxied
 * request) and subrequest.c (batchd's own requests to the app) share.
 * Private to daemon/proxy/; see upstream.h.
 *
 *   proxy.c ┐                       ┌─ px->ops->ready ──────────> proxy.c
 *           ├─upool_acquire─> pool.c┤  <- done / fail / expired    or
 *   subrequest.c ┘                  └─ parser: px->ops->rparser    subrequest.c
 *
 * A request's state is one main state plus a named sub-state per
 * direction; each has a name for the logs.
 */
#ifndef BATCHD_PROXY_INT_H
#define BATCHD_PROXY_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <uv.h>

#include "daemon/cache/resource.h"
#include "daemon/config.h"
#include "daemon/metrics.h"
#include "daemon/net/stream.h"
#include "daemon/proxy/subrequest.h"
#include "daemon/proxy/upstream.h"
#include "proto/buf.h"
#include "proto/http_response.h"

#define MAX_MATCHES 4
/* What one piece of body on its way costs besides its bytes (the piece or
 * the queued write, the allocator's header). Counted against the buffers,
 * so a body of one-byte chunks cannot hold 50 times its size. */
#define PIECE_OVERHEAD 256

/* --- one proxied request --------------------------------------------------- */

/* Why a proxied request failed: the metric label, the status and error
 * code the client gets (unless part of the answer went out already). */
#define PX_ERRORS(X)                                                              \
    X(REFUSED, "refused", 502, "upstream_unavailable")                            \
    X(RESET, "reset", 502, "upstream_unavailable")     /* closed or reset */      \
    X(TIMEOUT, "timeout", 504, "upstream_timeout")     /* silent for timeout_ms */ \
    X(BAD_RESPONSE, "bad_response", 502, "bad_upstream_response")                 \
    X(CONNECT_TIMEOUT, "connect_timeout", 502, "upstream_unavailable")

enum px_error {
#define X(name, label, status, code) PX_ERR_##name,
    PX_ERRORS(X)
#undef X
    PX_ERR__COUNT
};

/* The exchange, in order. */
#define PX_STATES(X)                                                                      \
    X(NEW, "new")                   /* not in the pool's hands: not asked yet, or just    \
                                     * out of its line */                                 \
    X(BUFFERING, "buffering")       /* a small body is read whole before a connection is  \
                                     * asked for (request_buffer_bytes) */                \
    X(WAITING, "waiting")           /* in the pool's line for a connection */             \
    X(CONNECTING, "connecting")     /* a new connection is on its way */                  \
    X(SENDING, "sending")           /* the head went out; the answer's head is awaited */ \
    X(INVALIDATING, "invalidating") /* a 2xx to a write: cache deletes run before the     \
                                     * head is relayed */                                 \
    X(RELAYING, "relaying")         /* the answer's head went to the client */            \
    X(DONE, "done")                 /* answered, failed or left: freed once nothing       \
                                     * refers to it */

/* The client's request body. */
#define PX_BODY_STATES(X)                                                                 \
    X(NONE, "none")         /* the request has no body */                                 \
    X(FLOWING, "flowing")   /* pieces go to the app, or wait for its connection */        \
    X(PAUSED, "paused")     /* the app's side passed buffer_bytes: the client is not read */ \
    X(DROPPING, "dropping") /* answered early: the rest is read and dropped, then the     \
                             * request ends */                                            \
    X(IN, "in")             /* all of it is in */

/* The app's answer. */
#define PX_ANSWER_STATES(X)                                                               \
    X(NONE, "none")         /* no byte yet: the app may not have seen the request */      \
    X(ARRIVING, "arriving") /* bytes came; the head is not relayed yet */                 \
    X(RELAYED, "relayed")   /* the head went to the client; the body follows */           \
    X(PAUSED, "paused")     /* the client's queue passed buffer_bytes: the app is not read */

/* Which try this is (a request is sent again at most once). */
#define PX_ATTEMPTS(X)                                                                    \
    X(FRESH, "fresh")       /* on a new connection: a close is the app's answer */        \
    X(REUSED, "reused")     /* on a pooled keep-alive connection the app may just have    \
                             * closed: may be retried */                                  \
    X(RETRY, "retry")       /* the one retry, on a new connection */

enum px_state {
#define X(name, text) PX_##name,
    PX_STATES(X)
#undef X
};
enum px_body {
#define X(name, text) PX_BODY_##name,
    PX_BODY_STATES(X)
#undef X
};
enum px_answer {
#define X(name, text) PX_ANSWER_##name,
    PX_ANSWER_STATES(X)
#undef X
};
enum px_attempt {
#define X(name, text) PX_ATTEMPT_##name,
    PX_ATTEMPTS(X)
#undef X
};

/* How a body is framed on its way. */
enum px_frame {
    PX_FRAME_NONE,    /* no body */
    PX_FRAME_RAW,     /* as it comes (Content-Length, or until close) */
    PX_FRAME_CHUNKED, /* every piece a chunk: batchd frames it */
};

/* A piece of body waiting for the connection, owning its bytes. */
struct piece {
    STAILQ_ENTRY(piece) link;
    size_t len;
    char data[];
};

struct proxy;

/* What the pool calls on the request a connection serves: a proxied
 * request (proxy.c, proxy_ops) or a sub-request (subrequest.c). */
struct px_ops {
    const struct http_rparser_cbs *rparser; /* parses the answer; p->data is the uconn */
    /* px->uc is connected and px's: send the head and the queued body. */
    void (*ready)(struct proxy *px);
    /* A queued write to the app finished (optional). */
    void (*written)(struct proxy *px);
    /* The answer is complete and px's connection handed back. */
    void (*done)(struct proxy *px);
    /* px's connection failed (px->uc is NULL already), or it could not get one. */
    void (*fail)(struct proxy *px, enum px_error kind);
    /* px's deadline on the pool's list passed (only a px with one goes
     * on the list). */
    void (*expired)(struct proxy *px);
};

struct proxy {
    const struct px_ops *ops;
    struct req *r;              /* NULL once the client is gone or answered */
    struct upstream *up;
    struct uconn *uc;           /* the app connection, while it has one */
    enum px_state state;
    enum px_body body;
    enum px_answer answer;
    enum px_attempt attempt;
    enum px_frame req_frame;    /* the body to the app */
    enum px_frame resp_frame;   /* the answer's body to the client */
    struct buf head;            /* request head for the app */
    STAILQ_HEAD(, piece) queue; /* body waiting for the connection */
    size_t q_bytes;
    unsigned q_n;
    uint64_t body_bytes;
    unsigned inval_pending;
    int status;
    unsigned n_matches;
    struct resource_match matches[MAX_MATCHES];
    struct list_writes *list_writes; /* the lists this write by its principal invalidates */
    uint64_t start_ns;
    struct identity_wait *idw;  /* the principal being looked up (forward auth) */
    bool id_pending;            /* ... so the head waits: no principal header yet */
    bool start_wanted;          /* px_start was called while id_pending */
    bool upgrade;               /* forwarded with its Upgrade: on a connection of its own,
                                 * and a 101 may turn it into a tunnel (tunnel.c) */
    bool tunnel_held;           /* holds a place under max_tunnels (tunnel_reserve) */
    struct buf upgrade_offer;   /* the protocols it offered, for the answer's parser */
    uint64_t deadline_ms;       /* the app must make progress by then */
    TAILQ_ENTRY(proxy) wait_link; /* the pool's line, while PX_WAITING */
    TAILQ_ENTRY(proxy) dl_link;   /* the pool's deadline list, oldest first */
};

/* Named for the logs. */
const char *proxy_state_name(enum px_state s);
const char *proxy_body_name(enum px_body b);
const char *proxy_answer_name(enum px_answer a);
const char *proxy_attempt_name(enum px_attempt a);

/* The whole request body has been read (or there is none). */
static inline bool proxy_body_in(const struct proxy *px)
{
    return px->body == PX_BODY_NONE || px->body == PX_BODY_IN;
}

/* --- app server connections ------------------------------------------------ */

enum uc_state { UC_CONNECTING, UC_IDLE, UC_BUSY, UC_CLOSING };

/* Why an app connection closed, for the log. */
#define UC_CLOSE_REASONS(X)                                                          \
    X(APP_CLOSED, "app_closed")             /* EOF or an error while idle */         \
    X(UNEXPECTED_BYTES, "unexpected_bytes") /* bytes while idle */                   \
    X(IDLE_TIMEOUT, "idle_timeout")                                                  \
    X(REFUSED, "refused")                   /* the connect failed */                 \
    X(CONNECT_TIMEOUT, "connect_timeout")                                            \
    X(RESET, "reset")                       /* EOF or an error mid-exchange */       \
    X(BAD_RESPONSE, "bad_response")                                                  \
    X(TIMEOUT, "timeout")                   /* the app was silent for timeout_ms */  \
    X(NOT_REUSABLE, "not_reusable")         /* Connection: close, bytes after the    \
                                             * answer, or a body not sent whole */   \
    X(CLIENT_GONE, "client_gone")           /* or a sub-request was cancelled */     \
    X(ANSWER_TOO_LARGE, "answer_too_large") /* a sub-request's answer body */        \
    X(BODY_TOO_LARGE, "body_too_large")     /* the client's body, mid-stream */      \
    X(POOL_CLOSED, "pool_closed")                                                    \
    X(TUNNEL_CLOSED, "tunnel_closed")       /* was a tunnel: see                     \
                                             * batchd_tunnel_closes_total */

enum uc_close_reason {
#define X(name, text) UC_CLOSE_##name,
    UC_CLOSE_REASONS(X)
#undef X
};

/* Pause reasons of an app connection's stream. */
enum uc_pause {
    UC_PAUSE_INVALIDATING = 1u << 0, /* the answer head waits for cache deletes */
    UC_PAUSE_CLIENT = 1u << 1,       /* the client's queue passed buffer_bytes; counted in
                                      * batchd_upstream_pauses_total{side="app_response"} */
};

struct uconn {
    struct stream s;            /* first: the stream's callbacks cast back */
    uv_connect_t connect_req;
    struct upstream *up;
    struct proxy *px;           /* the request it serves, while busy */
    enum uc_state state;
    struct http_rparser parser;
    uint64_t idle_since;
    unsigned served;            /* times put back in the idle list */
    bool complete;              /* complete_cb ran during this parse */
    bool keep;                  /* ... and the connection may be reused */
    bool outside;               /* an upgrade request's own: not counted in pool_size,
                                 * never pooled */
    LIST_ENTRY(uconn) link;     /* the idle or the connecting list */
    uint64_t connect_deadline;  /* while connecting */
};

LIST_HEAD(uconn_list, uconn);
TAILQ_HEAD(proxy_list, proxy);

struct upstream {
    uv_loop_t *loop;
    const struct cfg_upstream *cfg;
    struct resource_set *resources;
    struct list_set *lists;
    struct uconn_list idle;     /* most recently used first */
    struct uconn_list connecting; /* connects in progress, for connect_timeout_ms */
    unsigned n_conns, n_idle;
    unsigned n_outside;         /* of n_conns, upgrade requests' and tunnels' */
    struct proxy_list waiting;  /* requests in line for a connection, oldest first */
    unsigned n_waiting;
    struct proxy_list deadlines; /* requests the app owes progress, oldest first */
    uv_timer_t sweep;
    bool freeing;
    struct stream_kind kind;    /* of the app connections */
    uint64_t *m_status[5];      /* by status class, 1xx..5xx */
    uint64_t *m_err[PX_ERR__COUNT], *m_err_body;
    uint64_t *m_err_busy, *m_connects, *m_retries;
    uint64_t *m_pause_req;
    uint64_t *m_inval, *m_inval_err;
    uint64_t *m_drop_underscore, *m_drop_forwarded, *m_buffered;
    uint64_t *m_sub[SUBREQUEST__COUNT]; /* sub-requests by result */
    struct metric_hist *m_latency;
};

/* --- pool.c, for proxy.c (upool_: the app-server pool; pool_ is backend/) -- */

/* A connection for px now (idle, then proxy_conn_ready), on its way
 * (PX_CONNECTING), or a place in line (PX_WAITING). */
void upool_acquire(struct upstream *u, struct proxy *px);
/* The one retry: a pooled keep-alive connection failed with RESET before
 * any byte of answer (the app may have closed it just as it was picked).
 * True when px is on its way again on a new connection (PX_CONNECTING);
 * false when that does not apply or the connect cannot start. The caller
 * decides first whether its request may be sent twice. */
bool upool_retry(struct proxy *px, enum px_error kind);
/* Every connection busy and max_waiting requests in line already. */
bool upool_full(const struct upstream *u);
/* Leaves the line (PX_WAITING only). */
void upool_wait_remove(struct upstream *u, struct proxy *px);
/* px lets go of the pool: out of its line, and its connection, if it has
 * one, closed with `why` (one the pool took back is not px's any more). */
void upool_leave(struct proxy *px, enum uc_close_reason why);
void upool_close(struct uconn *uc, enum uc_close_reason reason);
/* The complete_cb of px->ops->rparser, proxied or not: notes the end of
 * the answer; the pool hands the connection back and calls ops->done. */
int upool_complete_cb(struct http_rparser *p, struct http_response *resp);
/* Parses what the connection held back and reads again, unless paused. */
void upool_read_resume(struct uconn *uc);
/* The app's progress deadline: (re)started now, stopped. */
void upool_deadline_add(struct proxy *px);
void upool_deadline_remove(struct proxy *px);
/* The app made progress: its timeout_ms starts again, if running. */
void upool_deadline_touch(struct proxy *px);

/* --- proxy.c and subrequest.c, for pool.c ---------------------------------- */

extern const struct px_ops proxy_ops;

/* --- tunnel.c, for proxy.c and pool.c ---------------------------------------- */

/* How an upgrade request ended, for batchd_tunnels_total{result}. */
#define TUNNEL_RESULTS(X)                                                                \
    X(SWITCHED, "switched")     /* the app answered 101: a tunnel */                     \
    X(REFUSED, "refused")       /* the app answered otherwise: relayed, then closed */  \
    X(FAILED, "failed")         /* no answer (connect, reset, timeout, a bad 101),      \
                                 * or the client left first */                          \
    X(REJECTED, "rejected")     /* over max_tunnels: 503 too_many_tunnels */            \
    X(STRIPPED, "stripped")     /* not eligible (h2c, a body, not GET, HTTP/1.0) or     \
                                 * websocket = no: forwarded as plain HTTP */

enum tunnel_result {
#define X(name, text) TUNNEL_RESULT_##name,
    TUNNEL_RESULTS(X)
#undef X
};

void tunnel_metrics_init(void);
/* Takes reload-safe settings (websocket, limits); open tunnels follow the
 * new idle timeout and buffer limit. */
void tunnel_configure(const struct cfg_upstream *cfg);
enum tunnel_admit {
    TUNNEL_ADMIT_PLAIN,    /* no upgrade, or one not tunnelled: Upgrade is dropped */
    TUNNEL_ADMIT_UPGRADE,  /* forwarded with its Upgrade (*offer); holds a place under
                            * max_tunnels until tunnel_settle or tunnel_start */
    TUNNEL_ADMIT_REJECTED, /* over max_tunnels: answered 503 too_many_tunnels */
};
/* Decides what becomes of a proxied request's Upgrade (http_request_upgrade,
 * `websocket`). For an upgrade, the client connection is not read as HTTP
 * after the request (r->upgrade) and closes unless the app switches
 * (r->close_after). */
enum tunnel_admit tunnel_admit(struct req *r, bool websocket, str_t *offer);
/* The reserved place is given back with the request's result. */
void tunnel_settle(enum tunnel_result result);
/* The app switched: client (from req_upgrade) and uc's stream become a
 * tunnel, which owns both from now on and closes them. The reserved
 * place becomes an open tunnel. */
void tunnel_start(struct stream *client, struct uconn *uc);
void proxy_metrics_init(struct upstream *u);
void subrequest_metrics_init(struct upstream *u);

#endif
