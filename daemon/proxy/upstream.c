/*
 * upstream: reverse proxy with a keep-alive pool. See upstream.h.
 *
 * A proxied request (struct proxy) runs:
 *
 *   WAIT_CONN ──conn──> SENDING ──response head──> [INVALIDATING] ──> RELAYING ──> done
 *
 * The request head is built at once; body pieces are copied (the client's
 * read buffer is shared) and written as they come, re-framed as chunks when
 * the client sent chunks. The response is parsed with http_rparser; while
 * an invalidation runs, that parser is paused and the rest of the read kept.
 *
 * A request is retried once, on a fresh connection, only when the app
 * server may simply have closed an idle connection just as it was picked:
 * the connection came from the keep-alive pool, it failed before any
 * response byte, the request has no body, and its method is idempotent
 * (GET, HEAD, OPTIONS, PUT, DELETE, TRACE). Otherwise the app may have
 * acted on the request before it closed, and sending it again could run a
 * write twice: the client gets a 502.
 *
 * The client request is ended only after its body has been read in full,
 * even when the app answers early, so the connection never frees a request
 * its parser still holds. After an early answer the rest of the body is
 * read and dropped (a paused client is read again) and the app connection
 * is closed, not pooled: it may be mid-body.
 *
 * Cost per request: no timer (one pool-wide sweep checks the deadlines of
 * requests waiting for their answer, in arrival order), and no copy of
 * bytes the sockets take at once (uv_try_write; only the rest is copied).
 * App connections sit on the stream layer (daemon/net/stream.h), as client
 * connections do.
 */
#include "daemon/proxy/upstream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/http/req.h"
#include "daemon/cache/resource.h"
#include "daemon/net/stream.h"
#include "proto/http_forward.h"
#include "proto/http_response.h"
#include "proto/mem.h"

#define UPSTREAM_HEAD_MAX (64 * 1024)
#define SWEEP_MS 50
#define MAX_MATCHES 4
/* What one piece of body on its way costs besides its bytes (the piece,
 * its uv_write_t, the allocator's header). Counted against the buffers, so
 * a body of one-byte chunks cannot hold 50 times its size. */
#define PIECE_OVERHEAD 256

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
    X(NOT_REUSABLE, "not_reusable")         /* Connection: close, bytes after the
                                             * answer, or a body not sent whole */   \
    X(CLIENT_GONE, "client_gone")                                                    \
    X(BODY_TOO_LARGE, "body_too_large")     /* the client's body, mid-stream */      \
    X(POOL_CLOSED, "pool_closed")

enum uc_close_reason {
#define X(name, text) UC_CLOSE_##name,
    UC_CLOSE_REASONS(X)
#undef X
};

static const char *const uc_close_names[] = {
#define X(name, text) text,
    UC_CLOSE_REASONS(X)
#undef X
};

/* Pause reasons of an app connection's stream. */
enum uc_pause {
    UC_PAUSE_INVALIDATING = 1u << 0, /* the answer head waits for cache deletes */
    UC_PAUSE_CLIENT = 1u << 1,       /* the client's queue passed buffer_bytes; counted in
                                      * batchd_upstream_pauses_total{side="app_response"} */
};

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

static const struct {
    const char *label;
    int status;
    const char *code;
} px_errors[PX_ERR__COUNT] = {
#define X(name, label, status, code) [PX_ERR_##name] = { label, status, code },
    PX_ERRORS(X)
#undef X
};
/* The app connection a failure closes, and why. */
static const enum uc_close_reason uc_close_for[PX_ERR__COUNT] = {
    [PX_ERR_REFUSED] = UC_CLOSE_REFUSED,
    [PX_ERR_RESET] = UC_CLOSE_RESET,
    [PX_ERR_TIMEOUT] = UC_CLOSE_TIMEOUT,
    [PX_ERR_BAD_RESPONSE] = UC_CLOSE_BAD_RESPONSE,
    [PX_ERR_CONNECT_TIMEOUT] = UC_CLOSE_CONNECT_TIMEOUT,
};
enum px_state { PX_WAIT_CONN, PX_SENDING, PX_INVALIDATING, PX_RELAYING, PX_DONE };

struct proxy;

struct uconn {
    struct stream s;            /* first: the stream's callbacks cast back */
    uv_connect_t connect_req;
    struct upstream *up;
    struct proxy *px;
    enum uc_state state;
    struct http_rparser parser;
    uint64_t idle_since;
    unsigned served;            /* times put back in the idle list */
    bool complete;              /* complete_cb ran during this parse */
    bool keep;                  /* ... and the connection may be reused */
    struct uconn *next;         /* idle list */
    struct uconn *cnext;        /* connecting list */
    uint64_t connect_deadline;  /* while connecting */
};

/* A piece of body waiting for the connection, owning its bytes. */
struct piece {
    struct piece *next;
    size_t len;
    char data[];
};

struct proxy {
    struct req *r;
    struct upstream *up;
    struct uconn *uc;
    enum px_state state;
    struct buf head;            /* request head for the app */
    struct piece *q_head, *q_tail; /* body waiting for the connection */
    size_t q_bytes;
    uint64_t body_bytes;
    bool req_chunked;           /* re-chunk the request body */
    bool req_has_body;
    bool req_body_done;
    bool head_sent;
    bool client_paused;         /* we paused the client's body */
    bool resp_chunked;          /* re-chunk the response to the client */
    bool resp_started;
    bool resp_body_allowed;
    bool end_pending;           /* response done, waiting for the request body */
    bool retried;
    bool conn_reused;           /* uc was picked from the idle list (served > 0) */
    bool got_response_byte;     /* any byte of the answer, 1xx included */
    bool upstream_paused;       /* response reading stopped for the client */
    bool buffering;             /* reading a small body whole before taking a connection */
    unsigned inval_pending;
    unsigned pieces;            /* pieces queued */
    int status;
    unsigned n_matches;
    struct resource_match matches[MAX_MATCHES];
    uint64_t start_ns;
    uint64_t deadline_ms;       /* answer head due by then */
    struct proxy *dl_prev, *dl_next; /* the pool's deadline list, oldest first */
    bool on_deadline;
    struct proxy *wait_next;
};

struct upstream {
    uv_loop_t *loop;
    const struct cfg_upstream *cfg;
    struct resource_set *resources;
    struct uconn *idle;
    struct uconn *connecting;   /* connects in progress, for connect_timeout_ms */
    unsigned n_conns, n_idle;
    struct proxy *wait_head, *wait_tail;
    unsigned n_waiting;
    struct proxy *dl_head, *dl_tail; /* waiting for an answer head */
    uv_timer_t sweep;
    bool freeing;
    struct stream_kind kind;    /* of the app connections */
    uint64_t *m_status[5];
    uint64_t *m_err[PX_ERR__COUNT], *m_err_body;
    uint64_t *m_err_busy, *m_connects, *m_retries;
    uint64_t *m_pause_req, *m_pause_resp;
    uint64_t *m_inval, *m_inval_err;
    uint64_t *m_drop_underscore, *m_drop_forwarded, *m_buffered;
    struct metric_hist *m_latency;
};

/* --- metrics ------------------------------------------------------------------ */

static double gauge_idle(void *arg)
{
    return ((struct upstream *)arg)->n_idle;
}

static double gauge_busy(void *arg)
{
    struct upstream *u = arg;
    return u->n_conns - u->n_idle;
}

static double gauge_waiting(void *arg)
{
    return ((struct upstream *)arg)->n_waiting;
}

static void metrics_init(struct upstream *u)
{
    char l[32];
    for (int i = 0; i < 5; i++) {
        snprintf(l, sizeof(l), "status=\"%dxx\"", i + 1);
        u->m_status[i] = metrics_counter("batchd_upstream_responses_total", l,
                                         "Responses from the app server, by status class.");
    }
    const char *h = "Proxied requests that failed: refused, reset, timeout, bad_response.";
    for (int i = 0; i < PX_ERR__COUNT; i++) {
        snprintf(l, sizeof(l), "kind=\"%s\"", px_errors[i].label);
        u->m_err[i] = metrics_counter("batchd_upstream_errors_total", l, h);
    }
    u->m_err_busy = metrics_counter("batchd_upstream_errors_total", "kind=\"pool_full\"", h);
    u->m_err_body = metrics_counter("batchd_upstream_errors_total", "kind=\"body_too_large\"", h);
    const char *ph = "Times one side of a proxied request stopped being read because the other side's queue passed buffer_bytes.";
    u->m_pause_req = metrics_counter("batchd_upstream_pauses_total", "side=\"client_body\"", ph);
    u->m_pause_resp = metrics_counter("batchd_upstream_pauses_total", "side=\"app_response\"", ph);
    u->kind.m_pauses[__builtin_ctz(UC_PAUSE_CLIENT)] = u->m_pause_resp;
    u->m_connects = metrics_counter("batchd_upstream_connects_total", "", "Connections opened to the app server.");
    u->m_retries = metrics_counter("batchd_upstream_retries_total", "",
                                   "Requests retried on a fresh connection after a reused one failed.");
    u->m_inval = metrics_counter("batchd_invalidations_total", "",
                                 "Cache entries deleted because a write through the proxy succeeded.");
    u->m_inval_err = metrics_counter("batchd_invalidation_errors_total", "",
                                     "Invalidations that could not reach Redis (the entry expires by TTL).");
    const char *dh = "Request header fields not forwarded to the app: names with '_' "
                     "(underscores_in_headers = no), X-Forwarded-* and Forwarded from peers outside trusted_proxies.";
    u->m_drop_underscore = metrics_counter("batchd_upstream_headers_dropped_total", "reason=\"underscore\"", dh);
    u->m_drop_forwarded = metrics_counter("batchd_upstream_headers_dropped_total", "reason=\"untrusted_forwarded\"", dh);
    u->m_buffered = metrics_counter("batchd_upstream_buffered_bodies_total", "",
                                    "Request bodies read whole (request_buffer_bytes) before a pool connection was taken.");
    u->m_latency = metrics_histogram("batchd_upstream_response_seconds", "",
                                     "Time from receiving a request to the app server's response head.",
                                     metrics_latency_bounds, metrics_latency_n);
    metrics_gauge_fn("batchd_upstream_connections", "state=\"idle\"", "Connections to the app server.",
                     gauge_idle, u);
    metrics_gauge_fn("batchd_upstream_connections", "state=\"busy\"", "Connections to the app server.",
                     gauge_busy, u);
    metrics_gauge_fn("batchd_upstream_waiting", "", "Requests waiting for a free pool connection.",
                     gauge_waiting, u);
}

static void px_maybe_free(struct proxy *px);
static void deadline_remove(struct proxy *px);

/* The client's body held for the app: waiting for a connection, or queued
 * on it, with what each piece costs. */
static size_t px_queued(const struct proxy *px)
{
    size_t n = px->q_bytes + px->pieces * PIECE_OVERHEAD;
    if (px->uc)
        n += stream_queued(&px->uc->s) + stream_writes(&px->uc->s) * PIECE_OVERHEAD;
    return n;
}
static void deadline_add(struct proxy *px);

/* The app made progress (read some of the request, sent some answer): its
 * timeout_ms starts again. Like nginx's proxy_read_timeout, it bounds the
 * silence between two steps, not the whole exchange. */
static void deadline_touch(struct proxy *px)
{
    if (px->on_deadline) {
        deadline_remove(px);
        deadline_add(px);
    }
}

/* --- connections -------------------------------------------------------------------- */

static void uconn_read_start(struct uconn *uc);
static void px_conn_ready(struct proxy *px);
static void px_fail(struct proxy *px, enum px_error kind);
static void upstream_next_waiter(struct upstream *u);
static void px_start(struct proxy *px);

static void sweep_closed_cb(uv_handle_t *h)
{
    free(h->data); /* the pool */
}

/* The stream's closed_cb. */
static void uconn_closed_cb(struct stream *s)
{
    struct uconn *uc = (struct uconn *)s;
    struct upstream *u = uc->up;
    http_rparser_deinit(&uc->parser);
    free(uc);
    u->n_conns--;
    if (!u->freeing)
        upstream_next_waiter(u);
    else if (u->n_conns == 0 && !uv_is_closing((uv_handle_t *)&u->sweep))
        uv_close((uv_handle_t *)&u->sweep, sweep_closed_cb);
}

static void connecting_remove(struct uconn *uc)
{
    for (struct uconn **pp = &uc->up->connecting; *pp; pp = &(*pp)->cnext) {
        if (*pp == uc) {
            *pp = uc->cnext;
            break;
        }
    }
}

static void uconn_close(struct uconn *uc, enum uc_close_reason reason)
{
    stream_close(&uc->s, reason);
}

/* The stream's close_cb: leave the pool's lists, and log why. */
static void uconn_close_cb(struct stream *s, unsigned reason)
{
    struct uconn *uc = (struct uconn *)s;
    if (uc->state == UC_CONNECTING)
        connecting_remove(uc);
    if (uc->state == UC_IDLE) {
        struct upstream *u = uc->up;
        for (struct uconn **pp = &u->idle; *pp; pp = &(*pp)->next) {
            if (*pp == uc) {
                *pp = uc->next;
                u->n_idle--;
                break;
            }
        }
    }
    uc->state = UC_CLOSING;
    uc->px = NULL;
    log_debug("app server connection closed", "reason=%s served=%u", uc_close_names[reason], uc->served);
}

static void uconn_release(struct uconn *uc, bool keep)
{
    struct upstream *u = uc->up;
    uc->px = NULL;
    if (!keep || u->freeing || stream_held_any(&uc->s)) {
        uconn_close(uc, u->freeing ? UC_CLOSE_POOL_CLOSED : UC_CLOSE_NOT_REUSABLE);
        return;
    }
    stream_resume(&uc->s, STREAM_PAUSE_ALL);
    uc->state = UC_IDLE;
    http_rparser_reset(&uc->parser, false);
    uc->idle_since = uv_now(u->loop);
    uc->served++;
    uc->next = u->idle;
    u->idle = uc;
    u->n_idle++;
    /* Keep reading while idle: an EOF means the app closed it. */
    uconn_read_start(uc);
    upstream_next_waiter(u);
}

/* --- response parsing ------------------------------------------------------------------ */

static void relay_head(struct proxy *px);

static void inval_done_cb(void *ctx, int err)
{
    struct proxy *px = ctx;
    if (err < 0) {
        (*px->up->m_inval_err)++;
        log_warn("invalidation failed; the entry expires by its TTL", "err=%d", err);
    } else {
        (*px->up->m_inval)++;
    }
    if (--px->inval_pending > 0)
        return;
    if (px->state == PX_DONE) { /* the client left meanwhile */
        px_maybe_free(px);
        return;
    }
    deadline_add(px);
    relay_head(px);
    /* Let the parser go on with the body it stopped at. */
    struct uconn *uc = px->uc;
    if (uc) {
        stream_resume(&uc->s, UC_PAUSE_INVALIDATING);
        http_rparser_resume(&uc->parser);
        uconn_read_start(uc);
    }
}

static int rhead_cb(struct http_rparser *p, struct http_response *resp)
{
    struct uconn *uc = p->data;
    struct proxy *px = uc->px;
    if (px == NULL)
        return HTTP_PARSER_PAUSE;
    px->got_response_byte = true;
    px->status = resp->status;
    deadline_remove(px); /* back on once the answer is relayed */
    metrics_observe(px->up->m_latency, (double)(uv_hrtime() - px->start_ns) / 1e9);
    (*px->up->m_status[(resp->status / 100 - 1) % 5])++;
    if (px->n_matches && resp->status >= 200 && resp->status < 300) {
        /* The write succeeded: delete the cached copies before the client
         * sees the answer, so it reads its own write. */
        px->state = PX_INVALIDATING;
        px->inval_pending = 1; /* held until every invalidation is sent */
        for (unsigned i = 0; i < px->n_matches; i++) {
            struct resource_match *m = &px->matches[i];
            px->inval_pending++;
            if (resource_invalidate(m->res, m->id, m->id_len, inval_done_cb, px) != 0) {
                px->inval_pending--;
                (*px->up->m_inval_err)++;
                log_warn("invalidation failed; the entry expires by its TTL", "err=%s", "redis_unavailable");
            }
        }
        if (--px->inval_pending > 0) {
            stream_pause(&uc->s, UC_PAUSE_INVALIDATING);
            return HTTP_PARSER_PAUSE; /* relayed from inval_done_cb */
        }
    }
    deadline_add(px);
    relay_head(px);
    return 0;
}


static int rbody_cb(struct http_rparser *p, const char *at, size_t n)
{
    struct uconn *uc = p->data;
    struct proxy *px = uc->px;
    if (px == NULL || !px->resp_body_allowed || px->state == PX_DONE)
        return 0;
    char hex[20];
    uv_buf_t b[3];
    unsigned k = 0;
    if (px->resp_chunked)
        b[k++] = uv_buf_init(hex, (unsigned)snprintf(hex, sizeof(hex), "%zx\r\n", n));
    b[k++] = uv_buf_init((char *)at, (unsigned)n);
    if (px->resp_chunked)
        b[k++] = uv_buf_init((char *)"\r\n", 2);
    if (req_stream_write_copy(px->r, b, k) != 0)
        return HTTP_PARSER_PAUSE; /* the client is gone; client_abort_cb cleans up */
    if (req_stream_queued(px->r) > (size_t)px->up->cfg->buffer_bytes) {
        px->upstream_paused = true; /* the client is slow: stop reading the app */
        deadline_remove(px);       /* the client's write timeout applies now */
        stream_pause(&uc->s, UC_PAUSE_CLIENT);
        return HTTP_PARSER_PAUSE;
    }
    return 0;
}

static void px_response_done(struct proxy *px);

static int rcomplete_cb(struct http_rparser *p, struct http_response *resp)
{
    struct uconn *uc = p->data;
    /* Finished after the parse returns (uconn_after_parse): releasing the
     * connection here would let a new request use it mid-parse. */
    uc->complete = true;
    uc->keep = resp->keep_alive;
    return HTTP_PARSER_PAUSE;
}

static const struct http_rparser_cbs rparser_cbs = {
    .head_cb = rhead_cb,
    .body_cb = rbody_cb,
    .complete_cb = rcomplete_cb,
};

/* A response completed during the last parse: hand the connection back
 * (reusable only when nothing followed the response) and end the request. */
static void uconn_after_parse(struct uconn *uc, bool leftover)
{
    struct proxy *px = uc->px;
    uc->complete = false;
    stream_held_drop(&uc->s);
    if (px == NULL) {
        uconn_close(uc, UC_CLOSE_CLIENT_GONE);
        return;
    }
    bool keep = uc->keep && !leftover && px->req_body_done;
    px->uc = NULL;
    deadline_remove(px);
    uconn_release(uc, keep);
    px_response_done(px);
}

/* The stream's parse_cb: the app's answer. */
static size_t uconn_parse_cb(struct stream *s, const char *data, size_t n)
{
    struct uconn *uc = (struct uconn *)s;
    size_t used = http_rparser_execute(&uc->parser, data, n);
    if (uc->complete) {
        uconn_after_parse(uc, used < n);
        return used;
    }
    if (uc->parser.failed) {
        struct proxy *px = uc->px;
        log_warn("bad response from the app server", "err=%s", LOG_Q(uc->parser.error));
        uconn_close(uc, UC_CLOSE_BAD_RESPONSE);
        if (px) {
            px->uc = NULL;
            px_fail(px, PX_ERR_BAD_RESPONSE);
        }
    }
    return used;
}

/* The stream's eof_cb. */
static void uconn_eof_cb(struct stream *s, int err)
{
    struct uconn *uc = (struct uconn *)s;
    struct proxy *px = uc->px;
    if (uc->state == UC_IDLE) { /* the app closed a kept-alive connection */
        uconn_close(uc, UC_CLOSE_APP_CLOSED);
        return;
    }
    if (err == UV_EOF && px && px->got_response_byte) {
        http_rparser_finish(&uc->parser); /* a close-delimited body ends here */
        if (uc->complete) {
            uc->keep = false;
            uconn_after_parse(uc, false);
            return;
        }
    }
    uconn_close(uc, UC_CLOSE_RESET);
    if (px) {
        px->uc = NULL;
        px_fail(px, PX_ERR_RESET);
    }
}

/* The stream's read_cb. */
static void uconn_read_cb(struct stream *s, const char *data, size_t n)
{
    struct uconn *uc = (struct uconn *)s;
    if (uc->state == UC_IDLE) { /* bytes nobody asked for */
        uconn_close(uc, UC_CLOSE_UNEXPECTED_BYTES);
        return;
    }
    struct proxy *px = uc->px;
    if (px) {
        px->got_response_byte = true; /* the app has seen the request: no retry */
        deadline_touch(px);
    }
    stream_parse(s, data, n);
    stream_read_update(s); /* stops while a pause reason is set */
}

static void uconn_read_start(struct uconn *uc)
{
    if (uc->state == UC_CLOSING)
        return;
    /* Parse what was held back first. With nothing held back, a parser
     * resumed after pausing on the last byte of a read (a bodiless head
     * while invalidating, the last body piece for a slow client) still
     * has a response to finish, which llhttp does only when it next runs. */
    if (uc->state == UC_BUSY && uc->px && !stream_paused(&uc->s, STREAM_PAUSE_ALL))
        stream_parse_held(&uc->s);
    stream_read_update(&uc->s);
}

static void on_connect_cb(uv_connect_t *cr, int status)
{
    struct uconn *uc = cr->data;
    struct upstream *u = uc->up;
    struct proxy *px = uc->px;
    if (uc->state == UC_CLOSING)
        return;
    connecting_remove(uc);
    if (status != 0) {
        log_warn("cannot connect to the app server", "addr=%s err=%s", u->cfg->url.addr.text,
                 uv_strerror(status));
        uc->state = UC_BUSY; /* out of the connecting list */
        uconn_close(uc, UC_CLOSE_REFUSED);
        if (px) {
            px->uc = NULL;
            px_fail(px, PX_ERR_REFUSED);
        }
        return;
    }
    (*u->m_connects)++;
    uv_tcp_nodelay(stream_tcp(&uc->s), 1);
    uc->state = UC_BUSY;
    if (px == NULL) { /* its request went away: keep it for the next */
        uconn_release(uc, true);
        return;
    }
    px_conn_ready(px);
}

static struct uconn *uconn_connect(struct upstream *u)
{
    struct uconn *uc = mem_calloc(1, sizeof(*uc));
    uc->up = u;
    uc->state = UC_CONNECTING;
    stream_init(&uc->s, u->loop, &u->kind);
    uc->connect_req.data = uc;
    http_rparser_init(&uc->parser, &rparser_cbs, UPSTREAM_HEAD_MAX, uc);
    u->n_conns++;
    uc->connect_deadline = uv_now(u->loop) + (uint64_t)u->cfg->connect_timeout_ms;
    uc->cnext = u->connecting;
    u->connecting = uc;
    int rc = uv_tcp_connect(&uc->connect_req, stream_tcp(&uc->s), (const struct sockaddr *)&u->cfg->url.addr.ss,
                            on_connect_cb);
    if (rc != 0) {
        uconn_close(uc, UC_CLOSE_REFUSED);
        return NULL;
    }
    return uc;
}

/* --- proxy lifecycle ----------------------------------------------------------------------- */

static void deadline_remove(struct proxy *px)
{
    if (!px->on_deadline)
        return;
    struct upstream *u = px->up;
    if (px->dl_prev)
        px->dl_prev->dl_next = px->dl_next;
    else
        u->dl_head = px->dl_next;
    if (px->dl_next)
        px->dl_next->dl_prev = px->dl_prev;
    else
        u->dl_tail = px->dl_prev;
    px->dl_prev = px->dl_next = NULL;
    px->on_deadline = false;
}

static void deadline_add(struct proxy *px)
{
    struct upstream *u = px->up;
    if (px->state == PX_DONE)
        return;
    deadline_remove(px);
    px->deadline_ms = uv_now(u->loop) + (uint64_t)u->cfg->timeout_ms;
    px->dl_prev = u->dl_tail;
    px->dl_next = NULL;
    if (u->dl_tail)
        u->dl_tail->dl_next = px;
    else
        u->dl_head = px;
    u->dl_tail = px;
    px->on_deadline = true;
}

/* Frees the proxy once nothing refers to it any more: its request, its
 * connection, pending invalidations and pieces being written. */
static void px_maybe_free(struct proxy *px)
{
    if (px->state != PX_DONE || px->r || px->uc || px->inval_pending)
        return;
    deadline_remove(px);
    struct piece *pc = px->q_head; /* never sent */
    while (pc) {
        struct piece *next = pc->next;
        free(pc);
        pc = next;
    }
    buf_deinit(&px->head);
    free(px);
}

static void wait_remove(struct upstream *u, struct proxy *px)
{
    for (struct proxy **pp = &u->wait_head; *pp; pp = &(*pp)->wait_next) {
        if (*pp == px) {
            *pp = px->wait_next;
            if (u->wait_tail == px) {
                u->wait_tail = NULL;
                for (struct proxy *q = u->wait_head; q; q = q->wait_next)
                    u->wait_tail = q;
            }
            u->n_waiting--;
            return;
        }
    }
}

/* The client went away: drop the app connection (its response is unwanted). */
static void client_abort_cb(struct req *r)
{
    struct proxy *px = r->hdata;
    px->r = NULL;
    if (px->state == PX_WAIT_CONN)
        wait_remove(px->up, px);
    if (px->uc) {
        uconn_close(px->uc, UC_CLOSE_CLIENT_GONE);
        px->uc = NULL;
    }
    px->state = PX_DONE;
    px_maybe_free(px);
}

/* Takes the client request from the proxy: its hooks no longer lead here. */
static struct req *px_take_req(struct proxy *px)
{
    struct req *r = px->r;
    px->r = NULL;
    px->state = PX_DONE;
    r->hdata = NULL;
    r->abort_cb = NULL;
    r->body_cb = NULL;
    r->body_end_cb = NULL;
    r->drain_cb = NULL;
    /* With the hooks gone the rest of the body is read and dropped; if it
     * was paused for the app's sake, read it again: an answer is held
     * until the body is in, so it would never go out. */
    if (px->client_paused) {
        px->client_paused = false;
        req_body_resume(r);
    }
    return r;
}

static void px_end_client(struct proxy *px)
{
    struct req *r = px_take_req(px);
    req_stream_end(r);
    px_maybe_free(px);
}

static void px_response_done(struct proxy *px)
{
    if (px->r == NULL) {
        px->state = PX_DONE;
        px_maybe_free(px);
        return;
    }
    if (!px->req_body_done) {
        /* An early answer: the rest of the body is read and dropped, and the
         * request ended once it is in. A head waiting for a first body
         * piece goes out now. Resume last: it may end the request and free
         * px at once. */
        px->end_pending = true;
        struct req *r = px->r;
        if (r->head_pending)
            req_stream_write_copy(r, NULL, 0);
        if (px->client_paused) {
            px->client_paused = false;
            req_body_resume(r);
        }
        return;
    }
    px_end_client(px);
}

/* Safe to send again (RFC 9110 9.2.2): the app ends in the same state
 * whether it ran once or twice. */
static bool method_idempotent(unsigned method)
{
    switch (method) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_PUT:
    case HTTP_DELETE:
    case HTTP_TRACE:
        return true;
    default:
        return false;
    }
}

static void px_fail(struct proxy *px, enum px_error kind)
{
    struct upstream *u = px->up;
    if (px->state == PX_DONE)
        return;
    /* A pooled connection the app had just closed: try once more on a new
     * one. On a new connection the close is the app's answer. */
    if (kind == PX_ERR_RESET && px->conn_reused && !px->got_response_byte && !px->retried && !px->req_has_body &&
        px->r && method_idempotent(px->r->msg.method)) {
        px->retried = true;
        px->conn_reused = false;
        (*u->m_retries)++;
        px->head_sent = false;
        px->state = PX_WAIT_CONN;
        struct uconn *uc = uconn_connect(u);
        if (uc) {
            uc->px = px;
            px->uc = uc;
            return;
        }
    }
    (*u->m_err[kind])++;
    if (px->uc) {
        uconn_close(px->uc, uc_close_for[kind]);
        px->uc = NULL;
    }
    struct req *r = px->r;
    if (r == NULL) {
        px->state = PX_DONE;
        px_maybe_free(px);
        return;
    }
    px_take_req(px);
    if (px->resp_started) {
        /* Part of the answer went out: the client can only see it cut. */
        req_stream_abort(r, CONN_CLOSE_UPSTREAM_ERROR);
        px_maybe_free(px);
        return;
    }
    req_error(r, px_errors[kind].status, px_errors[kind].code);
    px_maybe_free(px);
}

static void px_timeout(struct proxy *px)
{
    deadline_remove(px);
    if (px->state == PX_WAIT_CONN)
        wait_remove(px->up, px);
    log_warn("app server did not answer in time", "timeout_ms=%lld", (long long)px->up->cfg->timeout_ms);
    px_fail(px, PX_ERR_TIMEOUT);
}

/* --- sending the request ---------------------------------------------------------------------- */

/* The stream's written_cb: the app took some of the request. */
static void uconn_written_cb(struct stream *s, int status)
{
    struct proxy *px = ((struct uconn *)s)->px;
    if (px == NULL || status != 0)
        return; /* a failed write shows up on the read side too (EOF or reset) */
    deadline_touch(px);
    if (px->client_paused && px->r && px->uc && px_queued(px) <= (size_t)px->up->cfg->buffer_bytes / 2) {
        px->client_paused = false;
        req_body_resume(px->r);
    }
}

static void queue_piece(struct proxy *px, struct piece *pc)
{
    if (px->q_tail)
        px->q_tail->next = pc;
    else
        px->q_head = pc;
    px->q_tail = pc;
    px->q_bytes += pc->len;
    px->pieces++;
}

/* Writes to the app: what the socket takes at once is not copied; the rest
 * is (the client's read buffer is shared). Before the connection is ready
 * the bytes wait in the proxy's queue. A failure shows up on the read side
 * (EOF or reset), which fails the request. */
static void uconn_send(struct proxy *px, const uv_buf_t *bufs, unsigned n)
{
    struct uconn *uc = px->uc;
    if (uc != NULL && uc->state == UC_BUSY && px->head_sent) {
        (void)stream_write(&uc->s, bufs, n, STREAM_COPY, NULL, NULL);
        return;
    }
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    struct piece *pc = mem_alloc(sizeof(*pc) + total);
    pc->next = NULL;
    pc->len = 0;
    for (unsigned i = 0; i < n; i++) {
        memcpy(pc->data + pc->len, bufs[i].base, bufs[i].len);
        pc->len += bufs[i].len;
    }
    queue_piece(px, pc);
}

/* A body piece, framed as a chunk when the client sent chunks. */
static void send_body(struct proxy *px, const char *data, size_t n, bool chunked)
{
    char hex[20];
    uv_buf_t b[3];
    unsigned k = 0;
    if (chunked)
        b[k++] = uv_buf_init(hex, (unsigned)snprintf(hex, sizeof(hex), "%zx\r\n", n));
    b[k++] = uv_buf_init((char *)data, (unsigned)n);
    if (chunked)
        b[k++] = uv_buf_init((char *)"\r\n", 2);
    uconn_send(px, b, k);
}

static void px_conn_ready(struct proxy *px)
{
    struct uconn *uc = px->uc;
    http_rparser_reset(&uc->parser, px->r && px->r->msg.method == HTTP_HEAD);
    px->state = PX_SENDING;
    px->head_sent = true;
    uv_buf_t h = uv_buf_init(px->head.data, (unsigned)px->head.len);
    uconn_send(px, &h, 1);
    struct piece *q = px->q_head;
    px->q_head = px->q_tail = NULL;
    px->q_bytes = 0;
    px->pieces = 0;
    while (q) {
        struct piece *next = q->next;
        uv_buf_t b = uv_buf_init(q->data, (unsigned)q->len);
        uconn_send(px, &b, 1);
        free(q);
        q = next;
    }
    /* The client may have been paused while its body waited for this
     * connection; no write callback will come if all of it went out now. */
    if (px->client_paused && px->r && px_queued(px) <= (size_t)px->up->cfg->buffer_bytes / 2) {
        px->client_paused = false;
        req_body_resume(px->r);
    }
    uconn_read_start(uc);
}

static void upstream_acquire(struct upstream *u, struct proxy *px)
{
    if (u->idle) {
        struct uconn *uc = u->idle;
        u->idle = uc->next;
        u->n_idle--;
        uc->next = NULL;
        uc->state = UC_BUSY;
        uc->px = px;
        px->uc = uc;
        px->conn_reused = uc->served > 0;
        px_conn_ready(px);
        return;
    }
    if (u->n_conns < (unsigned)u->cfg->pool_size) {
        struct uconn *uc = uconn_connect(u);
        if (uc == NULL) {
            px_fail(px, PX_ERR_REFUSED);
            return;
        }
        uc->px = px;
        px->uc = uc;
        px->conn_reused = false;
        return;
    }
    px->wait_next = NULL;
    if (u->wait_tail)
        u->wait_tail->wait_next = px;
    else
        u->wait_head = px;
    u->wait_tail = px;
    u->n_waiting++;
}

static void upstream_next_waiter(struct upstream *u)
{
    while (u->wait_head && (u->idle || u->n_conns < (unsigned)u->cfg->pool_size)) {
        struct proxy *px = u->wait_head;
        u->wait_head = px->wait_next;
        if (u->wait_head == NULL)
            u->wait_tail = NULL;
        u->n_waiting--;
        upstream_acquire(u, px);
    }
}

/* --- client side -------------------------------------------------------------------------------- */

static int body_cb(struct req *r, const char *data, size_t n)
{
    struct proxy *px = r->hdata;
    if (px == NULL || px->state == PX_DONE || px->end_pending)
        return 0; /* answered already: the rest is read and dropped */
    px->body_bytes += n;
    int64_t max = px->up->cfg->max_body_bytes;
    if (max > 0 && px->body_bytes > (uint64_t)max) {
        (*px->up->m_err_body)++;
        if (!px->resp_started && px->uc) {
            uconn_close(px->uc, UC_CLOSE_BODY_TOO_LARGE);
            px->uc = NULL;
        }
        if (px->state == PX_WAIT_CONN)
            wait_remove(px->up, px);
        px_take_req(px);
        if (px->resp_started)
            req_stream_abort(r, CONN_CLOSE_BODY_TOO_LARGE);
        else
            req_error(r, 413, "body_too_large");
        px_maybe_free(px);
        return 0;
    }
    send_body(px, data, n, px->req_chunked);
    if (px->buffering) {
        if (px->q_bytes + px->pieces * PIECE_OVERHEAD <= (size_t)px->up->cfg->request_buffer_bytes)
            return 0;
        px_start(px); /* larger than the buffer: stream the rest */
        if (px->state == PX_DONE || px->r == NULL)
            return 0;
    }
    if (px_queued(px) > (size_t)px->up->cfg->buffer_bytes) {
        px->client_paused = true; /* the app reads slower than the client sends */
        (*px->up->m_pause_req)++;
        return HTTP_PARSER_PAUSE;
    }
    return 0;
}

static void body_end_cb(struct req *r)
{
    struct proxy *px = r->hdata;
    if (px == NULL)
        return;
    px->req_body_done = true;
    if (px->req_chunked && px->state != PX_DONE && !px->end_pending) {
        uv_buf_t b = uv_buf_init((char *)"0\r\n\r\n", 5);
        uconn_send(px, &b, 1);
    }
    if (px->buffering && px->state != PX_DONE) {
        px_start(px);
        return;
    }
    if (px->end_pending)
        px_end_client(px);
}

/* The client took some of what was queued: read the app again once the
 * queue is down to half. */
static void client_drain_cb(struct req *r)
{
    struct proxy *px = r->hdata;
    if (px && px->state != PX_DONE && px->upstream_paused && px->uc &&
        req_stream_queued(r) <= (size_t)px->up->cfg->buffer_bytes / 2) {
        px->upstream_paused = false;
        deadline_add(px);
        stream_resume(&px->uc->s, UC_PAUSE_CLIENT);
        http_rparser_resume(&px->uc->parser);
        uconn_read_start(px->uc);
    }
}

static void relay_head(struct proxy *px)
{
    struct req *r = px->r;
    struct http_response *resp = px->uc ? &px->uc->parser.resp : NULL;
    if (r == NULL || resp == NULL)
        return;
    px->state = PX_RELAYING;
    struct http_forward_resp f = {
        .head_request = r->msg.method == HTTP_HEAD,
        .client_http10 = r->msg.version_minor == 0,
        .close = req_should_close(r),
    };
    struct buf h = BUF_INIT;
    http_forward_response(resp, &f, &h);
    px->resp_body_allowed = f.body_allowed;
    px->resp_chunked = f.chunked;
    if (f.close_delimited)
        r->close_after = true; /* the body ends when the connection does */
    px->resp_started = true;
    req_stream_start_raw(r, resp->status, &h, px->resp_chunked);
    buf_deinit(&h);
}

static void build_request_head(struct proxy *px, struct req *r)
{
    struct upstream *u = px->up;
    char peer[64];
    struct sockaddr_storage ss;
    bool trusted = u->cfg->trusted_proxies.n > 0 && req_peer_addr(r, &ss) == 0 &&
                   config_cidrs_match(&u->cfg->trusted_proxies, (const struct sockaddr *)&ss);
    struct http_forward_req f = {
        .peer = req_peer(r, peer, sizeof(peer)),
        .peer_trusted = trusted,
        .pass_underscores = u->cfg->underscores_in_headers,
        .default_host = u->cfg->url.host,
        .proto = "http",
    };
    http_forward_request(&r->msg, &f, &px->head);
    px->req_chunked = f.chunked;
    *u->m_drop_underscore += f.dropped_underscore;
    *u->m_drop_forwarded += f.dropped_forwarded;
}

/* The request goes to the pool: a connection now, or a place in line. */
static void px_start(struct proxy *px)
{
    px->buffering = false;
    deadline_add(px);
    upstream_acquire(px->up, px);
}

static void proxy_handler(struct req *r, void *data)
{
    struct upstream *u = data;
    const struct http_request *m = &r->msg;
    int64_t max = u->cfg->max_body_bytes;
    if (max > 0 && m->content_length != HTTP_NO_LENGTH && m->content_length > (uint64_t)max) {
        (*u->m_err_body)++;
        req_error(r, 413, "body_too_large");
        return;
    }
    if (u->idle == NULL && u->n_conns >= (unsigned)u->cfg->pool_size && u->n_waiting >= (unsigned)u->cfg->max_waiting) {
        /* Every connection busy and max_waiting queued already: a bounded
         * wait, not an unbounded pile of requests (and their bodies). */
        (*u->m_err_busy)++;
        req_add_header(r, "Retry-After", "1");
        req_error(r, 503, "upstream_busy");
        return;
    }
    struct proxy *px = mem_calloc(1, sizeof(*px));
    px->r = r;
    px->up = u;
    px->start_ns = uv_hrtime();
    px->req_has_body = m->chunked || (m->content_length != HTTP_NO_LENGTH && m->content_length > 0);
    px->req_body_done = !px->req_has_body;
    if (m->method == HTTP_PUT || m->method == HTTP_PATCH || m->method == HTTP_POST || m->method == HTTP_DELETE)
        px->n_matches = resource_set_match_write(u->resources, m->path, px->matches, MAX_MATCHES);
    build_request_head(px, r);
    r->hdata = px;
    r->abort_cb = client_abort_cb;
    r->body_cb = body_cb;
    r->body_end_cb = body_end_cb;
    r->drain_cb = client_drain_cb;
    px->state = PX_WAIT_CONN;
    int64_t rb = u->cfg->request_buffer_bytes;
    if (px->req_has_body && rb > 0 && (m->chunked || m->content_length <= (uint64_t)rb)) {
        /* Like nginx's proxy_request_buffering: a slow client holds no
         * pool connection while it sends a small body. */
        px->buffering = true;
        (*u->m_buffered)++;
        return;
    }
    px_start(px);
}

/* --- pool --------------------------------------------------------------------------------------------- */

static void sweep_cb(uv_timer_t *t)
{
    struct upstream *u = t->data;
    uint64_t now = uv_now(u->loop);
    /* Oldest first: the deadlines come in order. */
    while (u->dl_head && u->dl_head->deadline_ms <= now)
        px_timeout(u->dl_head);
    /* A connect the app never answers (SYNs dropped) fails at
     * connect_timeout_ms, not at the request's timeout_ms. Failing one may
     * start another connect: look again from the top. */
    for (;;) {
        struct uconn *uc = u->connecting;
        while (uc && now < uc->connect_deadline)
            uc = uc->cnext;
        if (uc == NULL)
            break;
        struct proxy *px = uc->px;
        log_warn("cannot connect to the app server", "addr=%s err=%s", u->cfg->url.addr.text,
                 LOG_Q("connect timed out"));
        uconn_close(uc, UC_CLOSE_CONNECT_TIMEOUT);
        if (px) {
            px->uc = NULL;
            px_fail(px, PX_ERR_CONNECT_TIMEOUT);
        }
    }
    struct uconn *uc = u->idle;
    while (uc) {
        struct uconn *next = uc->next;
        if (now - uc->idle_since >= (uint64_t)u->cfg->idle_timeout_ms)
            uconn_close(uc, UC_CLOSE_IDLE_TIMEOUT);
        uc = next;
    }
}

struct upstream *upstream_new(uv_loop_t *loop, const struct cfg_upstream *cfg,
                              struct resource_set *resources)
{
    struct upstream *u = mem_calloc(1, sizeof(*u));
    u->loop = loop;
    u->cfg = cfg;
    u->resources = resources;
    u->kind = (struct stream_kind){
        .name = "upstream",
        STREAM_CALLBACKS(uconn),
        /* The limit is the proxy's: body_cb stops reading the client
         * while px_queued passes buffer_bytes. */
        .over_limit = STREAM_OVER_LIMIT_NONE,
    };
    metrics_init(u);
    uv_timer_init(loop, &u->sweep);
    u->sweep.data = u;
    uv_timer_start(&u->sweep, sweep_cb, SWEEP_MS, SWEEP_MS);
    uv_unref((uv_handle_t *)&u->sweep);
    return u;
}

void upstream_configure(struct upstream *u, const struct cfg_upstream *cfg,
                        struct resource_set *resources)
{
    u->cfg = cfg;
    u->resources = resources;
}

void upstream_add_routes(struct upstream *u, struct router *rt)
{
    router_set_fallback(rt, proxy_handler, u, ROUTE_AT_HEAD);
}

void upstream_free(struct upstream *u)
{
    if (u == NULL)
        return;
    u->freeing = true;
    while (u->idle)
        uconn_close(u->idle, UC_CLOSE_POOL_CLOSED);
    if (u->n_conns == 0)
        uv_close((uv_handle_t *)&u->sweep, sweep_closed_cb);
    /* Otherwise the last connection's close callback closes the sweep timer,
     * whose data is u: the pool is freed with it. */
}
