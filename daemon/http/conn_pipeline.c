/*
 * conn_pipeline: a connection's requests and answers, in order. See conn.h.
 *
 *   parser ──begin──> pipeline: [req]─[req]─[req]   (oldest first)
 *          ──head───> route; a ROUTE_AT_HEAD handler runs now if first
 *          ──done───> dispatch now, or deferred until the answers ahead
 *                     are ready and fit in write_queue_bytes
 *   answers READY at the front ──> one writev per batch ──> conn.c
 *
 * Re-entrancy. Handlers run from parser callbacks and may answer at once;
 * answering may pop requests and want to resume parsing. Parsing is never
 * re-entered: progress made during http_parser_execute sets resume_wanted,
 * and the outer caller resumes when execute returns.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/http/conn_int.h"
#include "daemon/http/cors.h"
#include "daemon/log.h"
#include "daemon/metrics.h"

#define MAX_IOV STREAM_MAX_IOV
_Static_assert(REQ_MAX_PARTS + 2 <= MAX_IOV, "an answer's iovecs fit one write");

static inline struct req *req_of(struct http_request *m)
{
    return (struct req *)((char *)m - offsetof(struct req, msg));
}

/* --- the pipeline ----------------------------------------------------------- */

struct req *conn_req_new(struct conn *c)
{
    struct req *r = req_get();
    r->conn = c;
    r->router = router_ref(c->lst->router);
    r->start_ns = uv_hrtime();
    TAILQ_INSERT_TAIL(&c->pipeline, r, link);
    c->n_reqs++;
    return r;
}

static struct req *dequeue(struct conn *c)
{
    struct req *r = TAILQ_FIRST(&c->pipeline);
    TAILQ_REMOVE(&c->pipeline, r, link);
    c->n_reqs--;
    return r;
}

static void dispatch(struct req *r)
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

/* Bytes of answers this connection holds: the socket's queue, and the
 * answers ready behind one that is not. */
static size_t answers_queued(const struct conn *c)
{
    size_t n = conn_write_queued(c);
    for (const struct req *q = conn_head(c); q && q->state == REQ_READY; q = TAILQ_NEXT(q, link))
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
    for (const struct req *q = conn_head(c); q != r; q = TAILQ_NEXT(q, link))
        if (q->state != REQ_READY)
            return false;
    return answers_queued(c) <= (size_t)conn_srv(c)->cfg->write_queue_bytes;
}

/* Starts the deferred requests whose turn has come, oldest first. */
static void start_deferred(struct conn *c)
{
    if (c->starting)
        return; /* the loop below looks again after each start */
    c->starting = true;
    while (c->state == CONN_OPEN || c->state == CONN_FINISHING) {
        struct req *r = conn_head(c);
        while (r && r->state == REQ_READY)
            r = TAILQ_NEXT(r, link);
        if (r == NULL || !r->deferred || !may_start(c, r))
            break;
        r->deferred = false;
        dispatch(r);
    }
    c->starting = false;
}

/* --- parser callbacks ------------------------------------------------------ */

static uint64_t *m_deferred;

void conn_pipeline_metrics_init(void)
{
    m_deferred = metrics_counter("batchd_pipeline_deferred_total", "",
                                 "Pipelined requests held until the answers ahead of them were ready.");
}

static struct http_request *begin_cb(struct http_parser *p)
{
    struct conn *c = p->data;
    struct req *r = conn_req_new(c);
    c->reading = r;
    c->head_deadline = uv_now(conn_srv(c)->loop) + (uint64_t)conn_srv(c)->cfg->header_timeout_ms;
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
    if (r->router->cors)
        rr = cors_route(r->router->cors, r->router, r, rr);
    if (rr != ROUTER_FOUND) {
        r->route = NULL;
        r->allowed_methods = rr == ROUTER_BAD_METHOD ? allowed : 0;
        if (r == conn_head(c))
            maybe_continue(c, r);
        return 0;
    }
    if (r->route->flags & ROUTE_AT_HEAD) {
        m->body_mode = HTTP_BODY_STREAM;
        if (r != conn_head(c)) {
            stream_pause(&c->s, CONN_PAUSE_AT_HEAD);
            return HTTP_PARSER_PAUSE;
        }
        maybe_continue(c, r);
        dispatch(r);
        if (c->state != CONN_OPEN && c->state != CONN_FINISHING)
            return HTTP_PARSER_PAUSE;
        return 0;
    }
    if (r == conn_head(c))
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
        stream_pause(&c->s, CONN_PAUSE_BODY);
    return rc;
}

static int complete_cb(struct http_parser *p, struct http_request *m)
{
    struct conn *c = p->data;
    struct req *r = req_of(m);
    c->reading = NULL;
    c->served_any = true;
    r->body_done = true;
    bool last = !m->keep_alive || c->draining;
    /* After an upgrade request the client may send the new protocol at
     * once: those bytes are held, unparsed, for the tunnel, or dropped
     * with the connection when the app does not switch. */
    bool upgrade = r->upgrade;
    if (last) {
        r->close_after = true;
        if (c->state == CONN_OPEN) /* else conn_finish stopped reading already: no pause */
            stream_pause(&c->s, CONN_PAUSE_DONE);
    }
    /* The handler may answer, and the request be written and freed, before
     * this returns: r is not touched after this point. */
    if (r->state == REQ_RECEIVING && !may_start(c, r)) {
        r->deferred = true;
        (*m_deferred)++;
    } else if (r->state == REQ_RECEIVING)
        dispatch(r);
    else if (r->state == REQ_READY)
        conn_flush(c); /* answered from its head; writable now that it is read */
    else if (r->body_end_cb)
        r->body_end_cb(r);
    if (c->state == CONN_CLOSING || last)
        return HTTP_PARSER_PAUSE;
    if (upgrade) {
        if (c->state == CONN_OPEN)
            stream_pause(&c->s, CONN_PAUSE_UPGRADE);
        return HTTP_PARSER_PAUSE;
    }
    if (c->n_reqs >= (uint32_t)conn_srv(c)->cfg->max_pipeline) {
        stream_pause(&c->s, CONN_PAUSE_PIPELINE);
        return HTTP_PARSER_PAUSE;
    }
    /* The client is not reading its answers: parse no further ahead. */
    if (stream_paused(&c->s, CONN_PAUSE_WRITEQ))
        return HTTP_PARSER_PAUSE;
    return 0;
}

const struct http_parser_cbs conn_parser_cbs = {
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
void conn_reject(struct conn *c, enum http_error err)
{
    enum conn_close_reason reason = reason_for(err);
    struct req *r = c->reading;
    c->reading = NULL;
    if (r != NULL && r->state == REQ_HANDLING && r->abort_cb && r == conn_head(c)) {
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
    if (r == NULL)
        r = conn_req_new(c);
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

/* --- resuming ---------------------------------------------------------------- */

void conn_try_resume(struct conn *c)
{
    if (c->in_parse) {
        c->resume_wanted = true;
        return;
    }
    const struct cfg_batchd *cfg = conn_srv(c)->cfg;
    do {
        c->resume_wanted = false;
        c->in_parse = true; /* a handler may answer at once: resume afterwards */
        start_deferred(c);
        c->in_parse = false;
        if (c->zombie) { /* closed meanwhile; the paused parser holds it no more */
            req_put(c->zombie);
            c->zombie = NULL;
        }
        if (c->state != CONN_OPEN)
            break;
        if (stream_paused(&c->s, CONN_PAUSE_PIPELINE) && c->n_reqs < (uint32_t)cfg->max_pipeline)
            stream_resume(&c->s, CONN_PAUSE_PIPELINE);
        stream_limit_update(&c->s); /* CONN_PAUSE_WRITEQ */
        if (stream_paused(&c->s, CONN_PAUSE_AT_HEAD) && c->reading && c->reading == conn_head(c)) {
            stream_resume(&c->s, CONN_PAUSE_AT_HEAD);
            struct req *r = c->reading;
            c->in_parse = true; /* the handler may answer; resume afterwards */
            maybe_continue(c, r);
            dispatch(r);
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

/* --- answering ----------------------------------------------------------------- */

/* The write callback of a batch of answers: frees the requests whose
 * buffers it used. The batch is chained through the requests' links, out
 * of any pipeline by now, and only walked forward. */
static void release_batch_cb(void *ctx, int status)
{
    (void)status;
    struct req *r = ctx;
    while (r) {
        struct req *next = TAILQ_NEXT(r, link);
        req_put(r);
        r = next;
    }
}

/* Writes every response that is ready at the front of the pipeline, in one
 * writev per batch. */
void conn_flush(struct conn *c)
{
    /* A request still being read is not written (and freed) yet: the
     * parser holds it until complete_cb. */
    while (conn_head(c) && conn_head(c)->state == REQ_READY && conn_head(c) != c->reading &&
           (c->state == CONN_OPEN || c->state == CONN_FINISHING)) {
        uv_buf_t iov[MAX_IOV];
        unsigned n = 0;
        struct req_list batch = TAILQ_HEAD_INITIALIZER(batch);
        bool last = false;
        while (conn_head(c) && conn_head(c)->state == REQ_READY && conn_head(c) != c->reading &&
               n + req_iov_count(conn_head(c)) <= MAX_IOV) {
            struct req *r = dequeue(c);
            r->state = REQ_WRITING;
            if (c->draining && conn_head(c) == NULL && c->reading == NULL)
                r->close_after = true;
            n += req_gather(r, iov + n);
            req_observe(r);
            TAILQ_INSERT_TAIL(&batch, r, link);
            if (r->close_after) {
                last = true;
                break;
            }
        }
        if (last) {
            conn_finish(c, c->reason != CONN_REASON_UNSET ? (enum conn_close_reason)c->reason
                           : c->draining                 ? CONN_CLOSE_SHUTDOWN
                                                         : CONN_CLOSE_CONNECTION_CLOSE);
            /* Anything queued after a closing response will never be sent. */
            while (conn_head(c)) {
                struct req *r = dequeue(c);
                if (r->state == REQ_HANDLING && !r->abort_cb)
                    r->conn = NULL;
                else
                    req_put(r);
            }
            c->reading = NULL;
        }
        if (conn_write_bufs(c, iov, n, STREAM_KEEP, release_batch_cb, TAILQ_FIRST(&batch)) != 0)
            return;
    }
    if (c->state == CONN_FINISHING && conn_head(c) == NULL && stream_writes(&c->s) == 0) {
        conn_start_linger(c);
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
    if (conn_head(c) == r)
        dequeue(c);
    req_observe(r);
    req_put(r);
    if (close_conn) {
        if (c->reason == CONN_REASON_UNSET)
            c->reason = (uint8_t)reason;
        conn_finish(c, reason);
    }
    conn_flush(c);
}

struct stream *conn_req_upgrade(struct conn *c, struct req *r, const struct buf *head)
{
    if (c->state != CONN_OPEN || c->draining || !r->upgrade || conn_head(c) != r || c->n_reqs != 1 ||
        c->reading != NULL || !r->body_done)
        return NULL;
    dequeue(c);
    r->status = 101;
    r->bytes_out = head->len;
    req_observe(r);
    req_put(r);
    c->state = CONN_TUNNEL;
    uv_timer_stop(&c->timer);
    c->timer_kind = CONN_TIMER_NONE;
    /* Copied: the caller's buffer goes when this returns. A failure closes
     * the connection (still its own kind): the caller sees it closing. */
    uv_buf_t b = uv_buf_init(head->data, (unsigned)head->len);
    (void)conn_write_bufs(c, &b, 1, STREAM_COPY, NULL, NULL);
    return &c->s;
}

void conn_req_abort(struct conn *c, struct req *r, enum conn_close_reason reason)
{
    if (conn_head(c) == r)
        dequeue(c);
    req_observe(r);
    if (c->reading == r) {
        c->reading = NULL;
        if (c->in_parse)
            c->zombie = r; /* released when the parser returns */
        else
            req_put(r);
    } else {
        req_put(r);
    }
    conn_close(c, reason);
}

/* Hand every request back: handlers that can abort do so, the others
 * finish orphaned and free the request when they answer. */
void conn_release_reqs(struct conn *c)
{
    struct req *parsing = c->in_parse ? c->reading : NULL;
    c->reading = NULL;
    while (conn_head(c)) {
        struct req *r = dequeue(c);
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
                req_put(r);
        }
    }
}
