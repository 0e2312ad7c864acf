/*
 * conn: one client connection, from accept to close. See conn.h.
 *
 * The socket side (reading into the shared buffer, held-back bytes, pause
 * bits, writes and their queue limit, deferred close) is the stream's
 * (daemon/net/stream.h); this file decides when to read, what to parse and
 * when to close.
 *
 * Re-entrancy. Handlers run from parser callbacks and may answer at once;
 * answering may pop requests and want to resume parsing. Parsing is never
 * re-entered: progress made during http_parser_execute sets resume_wanted,
 * and the outer caller resumes when execute returns.
 */
#include "daemon/http/conn.h"

#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/http/req.h"
#include "daemon/http/server.h"
#include "proto/mem.h"

#define MAX_IOV STREAM_MAX_IOV
#define LINGER_MS 2000
#define LINGER_MAX_BYTES (1024 * 1024)
#define REASON_UNSET CONN_CLOSE__COUNT

static const char *const reason_names[] = {
#define X(name, text) text,
    CONN_CLOSE_REASONS(X)
#undef X
};

static uint64_t *m_closed[CONN_CLOSE__COUNT];
static uint64_t *m_deferred;

/* The stream callbacks, defined below. */
static void conn_read_cb(struct stream *s, const char *data, size_t n);
static size_t conn_parse_cb(struct stream *s, const char *data, size_t n);
static void conn_eof_cb(struct stream *s, int err);
static void conn_written_cb(struct stream *s, int status);
static void conn_close_cb(struct stream *s, unsigned why);
static void conn_closed_cb(struct stream *s);

/* Client sockets: past write_queue_bytes queued, stop reading (and so
 * parsing) until the queue is down to half. */
static struct stream_kind conn_kind = {
    .name = "client",
    STREAM_CALLBACKS(conn),
    .over_limit = STREAM_OVER_LIMIT_PAUSE,
    .limit_pause = CONN_PAUSE_WRITEQ,
};

void conn_metrics_init(void)
{
    char labels[64];
    for (int i = 0; i < CONN_CLOSE__COUNT; i++) {
        snprintf(labels, sizeof(labels), "reason=\"%s\"", reason_names[i]);
        m_closed[i] = metrics_counter("batchd_connections_closed_total", labels,
                                      "Client connections closed, by reason.");
    }
    conn_kind.m_bytes_in = metrics_counter("batchd_client_bytes_total", "direction=\"in\"",
                                           "Bytes read from and written to clients.");
    conn_kind.m_bytes_out = metrics_counter("batchd_client_bytes_total", "direction=\"out\"",
                                            "Bytes read from and written to clients.");
    m_deferred = metrics_counter("batchd_pipeline_deferred_total", "",
                                 "Pipelined requests held until the answers ahead of them were ready.");
    static const char *const pause_names[CONN_PAUSE_COUNTED] = { "pipeline", "write_queue", "at_head",
                                                                 "body", "done" };
    for (int i = 0; i < CONN_PAUSE_COUNTED; i++) {
        snprintf(labels, sizeof(labels), "reason=\"%s\"", pause_names[i]);
        conn_kind.m_pauses[i] = metrics_counter("batchd_client_read_pauses_total", labels,
                                                "Times reading from a client stopped, by reason.");
    }
}

void conn_configure(const struct cfg_batchd *cfg)
{
    conn_kind.write_limit = (size_t)cfg->write_queue_bytes;
}

static inline struct server *srv_of(const struct conn *c)
{
    return c->lst->srv;
}

static inline struct req *req_of(struct http_request *m)
{
    return (struct req *)((char *)m - offsetof(struct req, msg));
}

size_t conn_write_queued(const struct conn *c)
{
    return stream_queued(&c->s);
}

static void conn_update_reading(struct conn *c);
static void conn_update_timer(struct conn *c);
static void conn_try_resume(struct conn *c);
static void conn_finish(struct conn *c, enum conn_close_reason reason);
static void conn_flush(struct conn *c);

static void set_pause(struct conn *c, enum conn_pause why)
{
    stream_pause(&c->s, why);
}

/* --- pipeline queue -------------------------------------------------------- */

static void enqueue(struct conn *c, struct req *r)
{
    r->next = NULL;
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    c->n_reqs++;
}

static struct req *dequeue(struct conn *c)
{
    struct req *r = c->head;
    c->head = r->next;
    if (c->head == NULL)
        c->tail = NULL;
    r->next = NULL;
    c->n_reqs--;
    return r;
}

/* --- parser callbacks ------------------------------------------------------ */

static void dispatch(struct conn *c, struct req *r)
{
    r->state = REQ_HANDLING;
    if (r->route == NULL) {
        if (r->allowed_methods) {
            struct buf allow = BUF_INIT;
            router_format_allow(r->allowed_methods, &allow);
            req_add_header(r, "Allow", allow.data);
            buf_deinit(&allow);
            req_error(r, 405, "method_not_allowed");
        } else {
            req_error(r, 404, "not_found");
        }
        return;
    }
    r->route->fn(r, r->route->data);
}

static void maybe_continue(struct conn *c, struct req *r)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    const struct http_request *m = &r->msg;
    if (!m->expect_continue || r->continue_sent || m->version_minor == 0)
        return;
    if (m->content_length == 0 || (m->content_length == HTTP_NO_LENGTH && !m->chunked))
        return;
    r->continue_sent = true;
    uv_buf_t b = uv_buf_init((char *)cont, sizeof(cont) - 1);
    conn_write(c, &b, 1, NULL, NULL);
}

static struct http_request *begin_cb(struct http_parser *p)
{
    struct conn *c = p->data;
    struct req *r = req_alloc();
    r->conn = c;
    r->router = router_ref(c->lst->router);
    r->start_ns = uv_hrtime();
    enqueue(c, r);
    c->reading = r;
    c->head_deadline = uv_now(srv_of(c)->loop) + (uint64_t)srv_of(c)->cfg->header_timeout_ms;
    return &r->msg;
}

static int head_cb(struct http_parser *p, struct http_request *m)
{
    struct conn *c = p->data;
    struct req *r = req_of(m);
    r->head_only = m->method == HTTP_HEAD;
    r->head_done = true;
    uint64_t allowed = 0;
    enum router_result rr = router_match(r->router, m->method, m->path, &r->route, &r->params,
                                         &allowed);
    if (rr != ROUTER_FOUND) {
        r->route = NULL;
        r->allowed_methods = rr == ROUTER_BAD_METHOD ? allowed : 0;
        if (r == c->head)
            maybe_continue(c, r);
        return 0;
    }
    if (r->route->flags & ROUTE_AT_HEAD) {
        m->body_mode = HTTP_BODY_STREAM;
        if (r != c->head) {
            set_pause(c, CONN_PAUSE_AT_HEAD);
            return HTTP_PARSER_PAUSE;
        }
        maybe_continue(c, r);
        dispatch(c, r);
        if (c->state != CONN_OPEN && c->state != CONN_FINISHING)
            return HTTP_PARSER_PAUSE;
        return 0;
    }
    if (r == c->head)
        maybe_continue(c, r);
    return 0;
}

static int body_cb(struct http_parser *p, struct http_request *m, const char *at, size_t n)
{
    struct conn *c = p->data;
    struct req *r = req_of(m);
    if (r->body_cb == NULL)
        return 0; /* the handler does not want it: drop */
    int rc = r->body_cb(r, at, n);
    if (c->state == CONN_CLOSING)
        return HTTP_PARSER_PAUSE;
    if (rc == HTTP_PARSER_PAUSE)
        set_pause(c, CONN_PAUSE_BODY);
    return rc;
}

/* Bytes of answers this connection holds: the socket's queue, and the
 * answers ready behind one that is not. */
static size_t answers_queued(const struct conn *c)
{
    size_t n = conn_write_queued(c);
    for (const struct req *q = c->head; q && q->state == REQ_READY; q = q->next)
        n += q->body_len + q->head_extra.len + q->head_fixed_len;
    return n;
}

/* A pipelined request starts once every request ahead of it is answered,
 * and while the answers held for the client are within write_queue_bytes.
 * So a request behind a write never reads what the write replaces
 * (RFC 9112 9.3.2), and a client that sends many requests and reads no
 * answers costs at most one answer beyond the bound. Like nginx, batchd
 * thus works on one request of a connection at a time; coalescing happens
 * across connections. */
static bool may_start(const struct conn *c, const struct req *r)
{
    for (const struct req *q = c->head; q != r; q = q->next)
        if (q->state != REQ_READY)
            return false;
    return answers_queued(c) <= (size_t)srv_of(c)->cfg->write_queue_bytes;
}

/* Starts the deferred requests whose turn has come, oldest first. */
static void start_deferred(struct conn *c)
{
    if (c->starting)
        return; /* the loop below looks again after each start */
    c->starting = true;
    while (c->state == CONN_OPEN || c->state == CONN_FINISHING) {
        struct req *r = c->head;
        while (r && r->state == REQ_READY)
            r = r->next;
        if (r == NULL || !r->deferred || !may_start(c, r))
            break;
        r->deferred = false;
        dispatch(c, r);
    }
    c->starting = false;
}

static int complete_cb(struct http_parser *p, struct http_request *m)
{
    struct conn *c = p->data;
    struct req *r = req_of(m);
    c->reading = NULL;
    c->served_any = true;
    r->body_done = true;
    bool last = !m->keep_alive || c->draining;
    if (last) {
        r->close_after = true;
        if (c->state == CONN_OPEN) /* else conn_finish stopped reading already: no pause */
            set_pause(c, CONN_PAUSE_DONE);
    }
    /* The handler may answer, and the request be written and freed, before
     * this returns: r is not touched after this point. */
    if (r->state == REQ_RECEIVING && !may_start(c, r)) {
        r->deferred = true;
        (*m_deferred)++;
    } else if (r->state == REQ_RECEIVING)
        dispatch(c, r);
    else if (r->state == REQ_READY)
        conn_flush(c); /* answered from its head; writable now that it is read */
    else if (r->body_end_cb)
        r->body_end_cb(r);
    if (c->state == CONN_CLOSING || last)
        return HTTP_PARSER_PAUSE;
    if (c->n_reqs >= (uint32_t)srv_of(c)->cfg->max_pipeline) {
        set_pause(c, CONN_PAUSE_PIPELINE);
        return HTTP_PARSER_PAUSE;
    }
    /* The client is not reading its answers: parse no further ahead. */
    if (stream_paused(&c->s, CONN_PAUSE_WRITEQ))
        return HTTP_PARSER_PAUSE;
    return 0;
}

static const struct http_parser_cbs parser_cbs = {
    .begin_cb = begin_cb,
    .head_cb = head_cb,
    .body_cb = body_cb,
    .complete_cb = complete_cb,
};

/* --- rejecting bad requests ------------------------------------------------ */

static enum conn_close_reason reason_for(enum http_error e)
{
    switch (e) {
    case HTTP_ERR_FRAMING: return CONN_CLOSE_AMBIGUOUS_LENGTH;
    case HTTP_ERR_URI_TOO_LONG: return CONN_CLOSE_URI_TOO_LONG;
    case HTTP_ERR_HEADERS_TOO_LARGE: return CONN_CLOSE_HEADERS_TOO_LARGE;
    case HTTP_ERR_BODY_TOO_LARGE: return CONN_CLOSE_BODY_TOO_LARGE;
    case HTTP_ERR_VERSION: return CONN_CLOSE_VERSION_NOT_SUPPORTED;
    case HTTP_ERR_METHOD_NOT_ALLOWED: return CONN_CLOSE_METHOD_NOT_ALLOWED;
    default: return CONN_CLOSE_BAD_REQUEST;
    }
}

/* The parser failed: answer with the error after the requests before it,
 * then close. A request a handler already owns cannot be answered twice,
 * so then the connection just closes. */
static void conn_reject(struct conn *c, enum http_error err)
{
    enum conn_close_reason reason = reason_for(err);
    struct req *r = c->reading;
    c->reading = NULL;
    if (r != NULL && r->state == REQ_HANDLING && r->abort_cb && r == c->head) {
        /* A streamed body went bad (a broken chunk, say) before the handler
         * answered: take the request back from it, and answer the error. */
        r->abort_cb(r);
        r->hdata = NULL;
        r->abort_cb = NULL;
        r->body_cb = NULL;
        r->body_end_cb = NULL;
        r->drain_cb = NULL;
        buf_reset(&r->head_extra);
        r->state = REQ_RECEIVING;
    }
    if (r != NULL && r->state != REQ_RECEIVING) {
        conn_close(c, reason);
        return;
    }
    if (r == NULL) {
        r = req_alloc();
        r->conn = c;
        r->router = router_ref(c->lst->router);
        r->start_ns = uv_hrtime();
        enqueue(c, r);
    }
    log_debug("request rejected", "peer=%s status=%d error=%s",
              req_peer(r, (char[64]){ 0 }, 64), http_error_status(err), http_error_code(err));
    r->head_only = false;
    r->close_after = true;
    r->deferred = false;
    r->state = REQ_HANDLING;
    c->reason = (uint8_t)reason;
    conn_finish(c, reason);
    if (err == HTTP_ERR_METHOD_NOT_ALLOWED)
        req_add_header(r, "Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
    req_error(r, http_error_status(err), http_error_code(err));
}

/* --- feeding the parser ---------------------------------------------------- */

/* The stream's parse_cb: bytes from a read or from the held ones. */
static size_t conn_parse_cb(struct stream *s, const char *data, size_t n)
{
    struct conn *c = (struct conn *)s;
    c->in_parse = true;
    size_t used = http_parser_execute(&c->parser, data, n);
    c->in_parse = false;
    if (c->zombie) {
        req_release(c->zombie);
        c->zombie = NULL;
    }
    if (c->state == CONN_CLOSING)
        return used;
    if (c->parser.failed) {
        if (c->state == CONN_OPEN)
            conn_reject(c, c->parser.error);
        stream_held_drop(s);
        return used;
    }
    /* Bytes after a "Connection: close" request are not read. */
    if (stream_paused(s, CONN_PAUSE_DONE | CONN_PAUSE_FINISHED))
        stream_held_drop(s);
    return used;
}

static void conn_try_resume(struct conn *c)
{
    if (c->in_parse) {
        c->resume_wanted = true;
        return;
    }
    const struct cfg_batchd *cfg = srv_of(c)->cfg;
    do {
        c->resume_wanted = false;
        c->in_parse = true; /* a handler may answer at once: resume afterwards */
        start_deferred(c);
        c->in_parse = false;
        if (c->zombie) { /* closed meanwhile; the paused parser holds it no more */
            req_release(c->zombie);
            c->zombie = NULL;
        }
        if (c->state != CONN_OPEN)
            break;
        if (stream_paused(&c->s, CONN_PAUSE_PIPELINE) && c->n_reqs < (uint32_t)cfg->max_pipeline)
            stream_resume(&c->s, CONN_PAUSE_PIPELINE);
        stream_limit_update(&c->s); /* CONN_PAUSE_WRITEQ */
        if (stream_paused(&c->s, CONN_PAUSE_AT_HEAD) && c->reading && c->reading == c->head) {
            stream_resume(&c->s, CONN_PAUSE_AT_HEAD);
            struct req *r = c->reading;
            c->in_parse = true; /* the handler may answer; resume afterwards */
            maybe_continue(c, r);
            dispatch(c, r);
            c->in_parse = false;
            if (c->state != CONN_OPEN)
                break;
        }
        /* Parse what was held back, or nothing: a request paused on the
         * last byte of a read completes only on the next execute call. */
        if (c->parser.paused && !stream_paused(&c->s, STREAM_PAUSE_ALL)) {
            http_parser_resume(&c->parser);
            stream_parse_held(&c->s);
        }
    } while (c->resume_wanted);
    conn_update_reading(c);
    conn_update_timer(c);
}

void conn_body_resume(struct conn *c)
{
    stream_resume(&c->s, CONN_PAUSE_BODY);
    conn_try_resume(c);
}

/* --- reading ----------------------------------------------------------------- */

static void on_eof(struct conn *c)
{
    c->peer_eof = true;
    if (c->state != CONN_OPEN) {
        conn_close(c, CONN_CLOSE_PEER_CLOSED);
        return;
    }
    /* A request cut off mid-way, nothing in flight, or a stream the client
     * left: nothing more to say. */
    if (c->reading || c->n_reqs == 0 || c->head->state == REQ_STREAMING) {
        conn_close(c, CONN_CLOSE_PEER_CLOSED);
        return;
    }
    /* Half-closed after sending requests: answer them, then close. */
    conn_finish(c, CONN_CLOSE_PEER_CLOSED);
}

static void conn_eof_cb(struct stream *s, int err)
{
    struct conn *c = (struct conn *)s;
    if (err == UV_EOF)
        on_eof(c);
    else
        conn_close(c, CONN_CLOSE_READ_ERROR);
}

static void conn_read_cb(struct stream *s, const char *data, size_t n)
{
    struct conn *c = (struct conn *)s;
    if (c->state == CONN_LINGERING) {
        c->linger_bytes += (uint32_t)n;
        if (c->linger_bytes > LINGER_MAX_BYTES)
            conn_close(c, (enum conn_close_reason)c->reason);
        return;
    }
    if (c->state != CONN_OPEN)
        return;
    stream_parse(s, data, n);
    if (c->state == CONN_CLOSING)
        return;
    if (c->resume_wanted)
        conn_try_resume(c);
    else {
        conn_update_reading(c);
        conn_update_timer(c);
    }
}

/* Reads while open with no pause reason and nothing held, and while
 * lingering (every reason cleared then). */
static void conn_update_reading(struct conn *c)
{
    /* Time batchd spent not reading is not the client's: a request head
     * cut off by a pause gets a fresh header_timeout. */
    if (stream_read_update(&c->s) && c->reading && !c->reading->head_done && c->state == CONN_OPEN)
        c->head_deadline = uv_now(srv_of(c)->loop) + (uint64_t)srv_of(c)->cfg->header_timeout_ms;
}

/* --- timers ------------------------------------------------------------------ */

static void on_timer_cb(uv_timer_t *t)
{
    struct conn *c = t->data;
    switch ((enum conn_timer_kind)c->timer_kind) {
    case CONN_TIMER_HEADER:
        conn_close(c, CONN_CLOSE_HEADER_TIMEOUT);
        break;
    case CONN_TIMER_BODY:
        conn_close(c, CONN_CLOSE_BODY_TIMEOUT);
        break;
    case CONN_TIMER_IDLE:
        conn_close(c, c->draining ? CONN_CLOSE_SHUTDOWN : CONN_CLOSE_IDLE_TIMEOUT);
        break;
    case CONN_TIMER_WRITE:
        conn_close(c, CONN_CLOSE_WRITE_TIMEOUT);
        break;
    case CONN_TIMER_LINGER:
        conn_close(c, (enum conn_close_reason)c->reason);
        break;
    case CONN_TIMER_NONE:
        break;
    }
}

static void timer_set(struct conn *c, enum conn_timer_kind kind, uint64_t ms)
{
    c->timer_kind = (uint8_t)kind;
    if (kind == CONN_TIMER_NONE)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timer_cb, ms, 0);
}

/* Picks the one timeout that applies now. Called after every change. */
static void conn_update_timer(struct conn *c)
{
    if (c->state == CONN_CLOSING || c->state == CONN_LINGERING)
        return;
    const struct cfg_batchd *cfg = srv_of(c)->cfg;
    uint64_t now = uv_now(srv_of(c)->loop);
    uint64_t idle = (uint64_t)cfg->idle_timeout_ms;
    if (stream_writes(&c->s) > 0) {
        /* Only a finished write is progress (on_write_cb restarts the
         * clock): more bytes queued behind a peer that reads nothing, an
         * SSE ping say, must not keep it alive. */
        if (c->timer_kind != CONN_TIMER_WRITE)
            timer_set(c, CONN_TIMER_WRITE, idle);
    } else if (c->reading && !c->reading->head_done) {
        timer_set(c, CONN_TIMER_HEADER, c->head_deadline > now ? c->head_deadline - now : 0);
    } else if (c->reading && c->reading->state == REQ_RECEIVING) {
        timer_set(c, CONN_TIMER_BODY, idle);
    } else if (c->n_reqs == 0 && c->state == CONN_OPEN) {
        if (c->draining) /* set once by conn_drain: a request on its way still gets in */
            return;
        if (c->served_any)
            timer_set(c, CONN_TIMER_IDLE, idle);
        else
            timer_set(c, CONN_TIMER_HEADER, c->head_deadline > now ? c->head_deadline - now : 0);
    } else {
        timer_set(c, CONN_TIMER_NONE, 0);
    }
}

/* --- writing ----------------------------------------------------------------- */

/* The write callback of a batch of answers: frees the requests whose
 * buffers it used, chained through their links. */
static void release_batch_cb(void *ctx, int status)
{
    (void)status;
    struct req *r = ctx;
    while (r) {
        struct req *next = r->next;
        req_release(r);
        r = next;
    }
}

static void start_linger(struct conn *c);

/* The stream's written_cb: a queued write finished. */
static void conn_written_cb(struct stream *s, int status)
{
    struct conn *c = (struct conn *)s;
    if (status < 0) {
        conn_close(c, CONN_CLOSE_WRITE_ERROR);
        return;
    }
    if (stream_writes(s) > 0 && c->timer_kind == CONN_TIMER_WRITE)
        timer_set(c, CONN_TIMER_WRITE, (uint64_t)srv_of(c)->cfg->idle_timeout_ms);
    if (c->state == CONN_FINISHING && stream_writes(s) == 0 && c->head == NULL) {
        start_linger(c);
        return;
    }
    if (c->head && c->head->state == REQ_STREAMING && c->head->drain_cb)
        c->head->drain_cb(c->head);
    if (c->state == CONN_OPEN || c->state == CONN_FINISHING)
        conn_try_resume(c);
}

/* Writes bufs in order with every earlier write; cb runs once. A failed
 * write closes the connection. */
static int write_bufs(struct conn *c, const uv_buf_t *bufs, unsigned n, enum stream_write_mode mode,
                      void (*cb)(void *, int), void *ctx)
{
    if (c->state == CONN_CLOSING || c->state == CONN_LINGERING) {
        if (cb)
            cb(ctx, UV_ECANCELED);
        return UV_ECANCELED;
    }
    int rc = stream_write(&c->s, bufs, n, mode, cb, ctx);
    if (rc < 0)
        conn_close(c, CONN_CLOSE_WRITE_ERROR);
    return rc;
}

static int write_checked(struct conn *c, const uv_buf_t *bufs, unsigned n, void (*cb)(void *, int),
                         void *ctx, enum stream_write_mode mode)
{
    if (n > MAX_IOV) {
        /* Callers pass a handful; more would be a bug. */
        if (cb)
            cb(ctx, UV_EINVAL);
        return UV_EINVAL;
    }
    int rc = write_bufs(c, bufs, n, mode, cb, ctx);
    if (rc == 0 && c->state == CONN_OPEN && !c->in_parse) {
        conn_update_reading(c);
        conn_update_timer(c);
    }
    return rc;
}

int conn_write(struct conn *c, const uv_buf_t *bufs, unsigned n, void (*cb)(void *, int), void *ctx)
{
    return write_checked(c, bufs, n, cb, ctx, STREAM_KEEP);
}

int conn_write_copy(struct conn *c, const uv_buf_t *bufs, unsigned n)
{
    return write_checked(c, bufs, n, NULL, NULL, STREAM_COPY);
}

/* Writes every response that is ready at the front of the pipeline, in one
 * writev per batch. */
static void conn_flush(struct conn *c)
{
    /* A request still being read is not written (and freed) yet: the
     * parser holds it until complete_cb. */
    while (c->head && c->head->state == REQ_READY && c->head != c->reading &&
           (c->state == CONN_OPEN || c->state == CONN_FINISHING)) {
        uv_buf_t iov[MAX_IOV];
        unsigned n = 0;
        struct req *batch = NULL, **tail = &batch;
        bool last = false;
        while (c->head && c->head->state == REQ_READY && c->head != c->reading && n + 3 <= MAX_IOV) {
            struct req *r = dequeue(c);
            r->state = REQ_WRITING;
            if (c->draining && c->head == NULL && c->reading == NULL)
                r->close_after = true;
            n += req_gather(r, iov + n);
            req_observe(r);
            *tail = r;
            tail = &r->next;
            if (r->close_after) {
                last = true;
                break;
            }
        }
        if (last) {
            conn_finish(c, c->reason != REASON_UNSET ? (enum conn_close_reason)c->reason
                           : c->draining            ? CONN_CLOSE_SHUTDOWN
                                                    : CONN_CLOSE_CONNECTION_CLOSE);
            /* Anything queued after a closing response will never be sent. */
            while (c->head) {
                struct req *r = dequeue(c);
                if (r->state == REQ_HANDLING && !r->abort_cb)
                    r->conn = NULL;
                else
                    req_release(r);
            }
            c->reading = NULL;
        }
        if (write_bufs(c, iov, n, STREAM_KEEP, release_batch_cb, batch) != 0)
            return;
    }
    if (c->state == CONN_FINISHING && c->head == NULL && stream_writes(&c->s) == 0) {
        start_linger(c);
        return;
    }
    conn_try_resume(c);
}

void conn_req_ready(struct conn *c)
{
    conn_flush(c);
}

void conn_req_stream_done(struct conn *c, struct req *r, bool close_conn,
                          enum conn_close_reason reason)
{
    if (c->head == r)
        dequeue(c);
    req_observe(r);
    req_release(r);
    if (close_conn) {
        if (c->reason == REASON_UNSET)
            c->reason = (uint8_t)reason;
        conn_finish(c, reason);
    }
    conn_flush(c);
}

/* --- closing ------------------------------------------------------------------- */

/* The stream's closed_cb: the socket and the timer are closed. */
static void conn_closed_cb(struct stream *s)
{
    struct conn *c = (struct conn *)s;
    if (c->lst) /* NULL when the accept failed */
        server_conn_removed(srv_of(c), c);
    free(c);
}

/* Our last response is written: send FIN, and keep reading (and dropping)
 * for a moment so that unread input does not turn our close into an RST
 * that could destroy the response on its way to the client. */
static void start_linger(struct conn *c)
{
    if (c->peer_eof) {
        conn_close(c, (enum conn_close_reason)c->reason);
        return;
    }
    c->state = CONN_LINGERING;
    if (stream_shutdown(&c->s, c->reason) != 0) {
        conn_close(c, (enum conn_close_reason)c->reason);
        return;
    }
    stream_resume(&c->s, STREAM_PAUSE_ALL); /* read and drop */
    conn_update_reading(c);
    timer_set(c, CONN_TIMER_LINGER, LINGER_MS);
}

static void conn_finish(struct conn *c, enum conn_close_reason reason)
{
    if (c->state != CONN_OPEN)
        return;
    if (c->reason == REASON_UNSET)
        c->reason = (uint8_t)reason;
    c->state = CONN_FINISHING;
    stream_pause(&c->s, CONN_PAUSE_FINISHED);
    stream_held_drop(&c->s);
    conn_update_reading(c);
    conn_update_timer(c);
}

static enum log_level close_log_level(enum conn_close_reason reason)
{
    switch (reason) {
    case CONN_CLOSE_PEER_CLOSED:
    case CONN_CLOSE_IDLE_TIMEOUT:
    case CONN_CLOSE_CONNECTION_CLOSE:
    case CONN_CLOSE_SHUTDOWN:
    case CONN_CLOSE_STREAM_ENDED:
        return LOG_DEBUG;
    default:
        return LOG_INFO;
    }
}

/* A close that was planned (Connection: close, drain, a 4xx) keeps its
 * reason, unless the end comes otherwise: a failed or stuck write, a read
 * error, or the shutdown deadline say more about the connection. */
static bool overrides_planned(enum conn_close_reason reason)
{
    return reason == CONN_CLOSE_WRITE_ERROR || reason == CONN_CLOSE_WRITE_TIMEOUT ||
           reason == CONN_CLOSE_READ_ERROR || reason == CONN_CLOSE_SHUTDOWN_FORCED;
}

void conn_close(struct conn *c, enum conn_close_reason reason)
{
    stream_close(&c->s, reason);
}

/* The stream's close_cb: name the reason, count and log it, and hand the
 * requests back. The stream closes the socket and the timer next. */
static void conn_close_cb(struct stream *s, unsigned why)
{
    struct conn *c = (struct conn *)s;
    if (c->lst == NULL) /* the accept failed: nothing was open */
        return;
    enum conn_close_reason reason = (enum conn_close_reason)why;
    if (c->reason == REASON_UNSET || overrides_planned(reason))
        c->reason = (uint8_t)reason;
    reason = (enum conn_close_reason)c->reason;
    c->state = CONN_CLOSING;
    (*m_closed[reason])++;
    enum log_level lvl = close_log_level(reason);
    if (lvl >= log_min_level) {
        char peer[64];
        log_write(lvl, "connection closed", "reason=%s listener=%s peer=%s requests_in_flight=%u",
                  reason_names[reason], c->lst->name, stream_peer(s, peer, sizeof(peer)), c->n_reqs);
    }
    /* Hand every request back: handlers that can abort do so, the others
     * finish orphaned and free the request when they answer. */
    struct req *r = c->head;
    struct req *parsing = c->in_parse ? c->reading : NULL;
    c->head = c->tail = NULL;
    c->n_reqs = 0;
    c->reading = NULL;
    while (r) {
        struct req *next = r->next;
        r->next = NULL;
        bool keep = false;
        if (r->state == REQ_HANDLING || r->state == REQ_STREAMING) {
            r->conn = NULL;
            if (r->abort_cb)
                r->abort_cb(r);
            else
                keep = true; /* orphaned: freed when its handler answers */
        }
        if (!keep) {
            if (r == parsing)
                c->zombie = r; /* the parser's callbacks still hold it */
            else
                req_release(r);
        }
        r = next;
    }
    uv_timer_stop(&c->timer);
}

void conn_drain(struct conn *c)
{
    c->draining = true;
    if (c->state != CONN_OPEN)
        return;
    if (c->n_reqs == 0) {
        /* An idle connection may have a request on the wire already: closing
         * now would answer it with EOF, and a client cannot tell whether a
         * POST ran. Keep reading for drain_idle_ms; a request that arrives
         * is answered with Connection: close. */
        int64_t wait = srv_of(c)->cfg->drain_idle_ms;
        if (wait <= 0 || c->peer_eof) {
            conn_close(c, CONN_CLOSE_SHUTDOWN);
            return;
        }
        timer_set(c, CONN_TIMER_IDLE, (uint64_t)wait);
        return;
    }
    if (c->reading == NULL) {
        /* The last request queued gets "Connection: close". */
        c->tail->close_after = true;
        conn_finish(c, CONN_CLOSE_SHUTDOWN);
    }
    /* Otherwise complete_cb marks the request being read as the last. */
}

/* --- accepting --------------------------------------------------------------- */

static struct conn *conn_new(struct listener *lst, int *err)
{
    struct server *s = lst->srv;
    struct conn *c = mem_calloc(1, sizeof(*c));
    stream_init(&c->s, s->loop, &conn_kind);
    int rc = stream_accept(&c->s, (uv_stream_t *)&lst->tcp);
    if (rc != 0) {
        /* c->lst stays NULL: the close is neither logged nor counted (the
         * listener logs the failed accept). */
        c->state = CONN_CLOSING;
        stream_close(&c->s, CONN_CLOSE_READ_ERROR);
        *err = rc;
        return NULL;
    }
    uv_timer_init(s->loop, &c->timer);
    c->timer.data = c;
    stream_attach(&c->s, (uv_handle_t *)&c->timer);
    c->lst = lst;
    c->reason = REASON_UNSET;
    c->state = CONN_OPEN;
    http_parser_init(&c->parser, &parser_cbs, &s->limits, c);
    c->head_deadline = uv_now(s->loop) + (uint64_t)s->cfg->header_timeout_ms;
    server_conn_added(s, c);
    return c;
}

int conn_accept(struct listener *lst)
{
    int err = 0;
    struct conn *c = conn_new(lst, &err);
    if (c == NULL)
        return err;
    conn_update_reading(c);
    conn_update_timer(c);
    return 0;
}

int conn_accept_busy(struct listener *lst)
{
    int err = 0;
    struct conn *c = conn_new(lst, &err);
    if (c == NULL)
        return err;
    struct req *r = req_alloc();
    r->conn = c;
    r->router = router_ref(lst->router);
    r->start_ns = uv_hrtime();
    r->close_after = true;
    r->state = REQ_HANDLING;
    enqueue(c, r);
    c->reason = CONN_CLOSE_TOO_MANY_CONNECTIONS;
    conn_finish(c, CONN_CLOSE_TOO_MANY_CONNECTIONS);
    req_add_header(r, "Retry-After", "1");
    req_error(r, 503, "too_many_connections");
    return 0;
}

void conn_req_abort(struct conn *c, struct req *r, enum conn_close_reason reason)
{
    if (c->head == r)
        dequeue(c);
    req_observe(r);
    if (c->reading == r) {
        c->reading = NULL;
        if (c->in_parse)
            c->zombie = r; /* released when the parser returns */
        else
            req_release(r);
    } else {
        req_release(r);
    }
    conn_close(c, reason);
}
