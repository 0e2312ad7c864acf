/*
 * proxy: one proxied request, from the client's head to the app's last
 * byte. See upstream.h; the connections are pool.c's.
 *
 *   NEW ─(small body)─> BUFFERING ─┐
 *    └─────────────────────────────┴─> WAITING ─> CONNECTING ─> SENDING ──answer head──┐
 *          (upool_acquire: an idle connection skips straight to SENDING)                │
 *                         RELAYING <── INVALIDATING (2xx to a write: delete first) <───┘
 *                             └──> DONE (also from anywhere: failure, client gone)
 *
 *   beside it: body     NONE | FLOWING <-> PAUSED (app slower) -> DROPPING (early answer) | IN
 *              answer   NONE -> ARRIVING -> RELAYED <-> PAUSED (client slower)
 *              attempt  FRESH | REUSED -> RETRY (once, see below)
 *
 * The request head is built at once; body pieces are written as they come
 * (what the socket does not take is copied: the client's read buffer is
 * shared), re-framed as chunks when the client sent chunks, and wait in
 * the proxy's queue until a connection is ready. The response is parsed
 * with http_rparser; while an invalidation runs, that parser is paused and
 * the rest of the read held by the connection's stream.
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
 * Cost per request: no timer (the pool's sweep checks the deadlines, in
 * arrival order), and no copy of bytes the sockets take at once.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/auth/identity.h"
#include "daemon/cache/list.h"
#include "daemon/http/cors.h"
#include "daemon/http/req.h"
#include "daemon/log.h"
#include "daemon/proxy/proxy_int.h"
#include "proto/http_forward.h"
#include "proto/mem.h"

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

/* --- the request's life ---------------------------------------------------------- */

/* The client's body held for the app: waiting for a connection, or queued
 * on it, with what each piece costs. */
static size_t px_queued(const struct proxy *px)
{
    size_t n = px->q_bytes + px->q_n * PIECE_OVERHEAD;
    if (px->uc)
        n += stream_queued(&px->uc->s) + stream_writes(&px->uc->s) * PIECE_OVERHEAD;
    return n;
}

/* The client's body was paused for the app's sake: read it again. */
static void resume_client(struct proxy *px, struct req *r)
{
    if (px->body == PX_BODY_PAUSED) {
        px->body = PX_BODY_FLOWING;
        req_body_resume(r);
    }
}

/* ... once the body held for the app is down to half of buffer_bytes. */
static void resume_client_if_drained(struct proxy *px)
{
    if (px->body == PX_BODY_PAUSED && px->r && px_queued(px) <= (size_t)px->up->cfg->buffer_bytes / 2)
        resume_client(px, px->r);
}

/* An upgrade request's place under max_tunnels goes back, with how it
 * ended (once). */
static void px_tunnel_settle(struct proxy *px, enum tunnel_result result)
{
    if (px->tunnel_held) {
        px->tunnel_held = false;
        tunnel_settle(result);
    }
}

/* Frees the proxy once nothing refers to it any more: its request, its
 * connection and pending invalidations. */
static void px_maybe_free(struct proxy *px)
{
    if (px->state != PX_DONE || px->r || px->uc || px->inval_pending)
        return;
    px_tunnel_settle(px, TUNNEL_RESULT_FAILED);
    buf_deinit(&px->upgrade_offer);
    upool_deadline_remove(px);
    while (!STAILQ_EMPTY(&px->queue)) { /* never sent */
        struct piece *pc = STAILQ_FIRST(&px->queue);
        STAILQ_REMOVE_HEAD(&px->queue, link);
        free(pc);
    }
    buf_deinit(&px->head);
    list_writes_free(px->list_writes);
    free(px);
}

/* The request is leaving the proxy: a lookup of its principal must not
 * come back to it. */
static void px_forget_identity(struct proxy *px)
{
    identity_cancel(px->idw);
    px->idw = NULL;
    px->id_pending = false;
}

/* The client went away: drop the app connection (its response is unwanted). */
static void client_abort_cb(struct req *r)
{
    struct proxy *px = r->hdata;
    px_forget_identity(px);
    px_tunnel_settle(px, TUNNEL_RESULT_FAILED);
    px->r = NULL;
    upool_leave(px, UC_CLOSE_CLIENT_GONE);
    px->state = PX_DONE;
    px_maybe_free(px);
}

/* Takes the client request from the proxy: its hooks no longer lead here. */
static struct req *px_take_req(struct proxy *px)
{
    struct req *r = px->r;
    px_forget_identity(px);
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
    resume_client(px, r);
    return r;
}

static void px_end_client(struct proxy *px)
{
    bool upgrade = px->upgrade;
    struct req *r = px_take_req(px);
    /* An upgrade the app refused: the connection closes after the answer
     * (r->close_after), and what the client sent after the request, held
     * unread, goes with it: it may be the new protocol's bytes. */
    req_stream_end_reason(r, upgrade ? CONN_CLOSE_UPGRADE_REFUSED : CONN_CLOSE_STREAM_ENDED);
    px_maybe_free(px);
}

static void proxy_response_done(struct proxy *px)
{
    if (px->r == NULL) {
        px->state = PX_DONE;
        px_maybe_free(px);
        return;
    }
    if (!proxy_body_in(px)) {
        /* An early answer: the rest of the body is read and dropped, and the
         * request ended once it is in. A head waiting for a first body
         * piece goes out now. Resume last: it may end the request and free
         * px at once. */
        bool paused = px->body == PX_BODY_PAUSED;
        px->body = PX_BODY_DROPPING;
        struct req *r = px->r;
        if (r->head_pending)
            req_stream_write_copy(r, NULL, 0);
        if (paused)
            req_body_resume(r);
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

static void proxy_fail(struct proxy *px, enum px_error kind)
{
    struct upstream *u = px->up;
    if (px->state == PX_DONE)
        return;
    log_debug("proxied request failed", "kind=%s state=%s body=%s answer=%s attempt=%s",
              px_errors[kind].label, proxy_state_name(px->state), proxy_body_name(px->body),
              proxy_answer_name(px->answer), proxy_attempt_name(px->attempt));
    /* A pooled connection the app had just closed: try once more on a new
     * one. On a new connection the close is the app's answer. */
    if (px->body == PX_BODY_NONE && px->r && method_idempotent(px->r->msg.method) && upool_retry(px, kind))
        return;
    (*u->m_err[kind])++;
    px_tunnel_settle(px, TUNNEL_RESULT_FAILED);
    if (px->uc) {
        upool_close(px->uc, uc_close_for[kind]);
        px->uc = NULL;
    }
    struct req *r = px->r;
    if (r == NULL) {
        px->state = PX_DONE;
        px_maybe_free(px);
        return;
    }
    px_take_req(px);
    if (px->answer >= PX_ANSWER_RELAYED) /* part of it went out: the client can only see it cut */
        req_stream_abort(r, CONN_CLOSE_UPSTREAM_ERROR);
    else
        req_error(r, px_errors[kind].status, px_errors[kind].code);
    px_maybe_free(px);
}

static void proxy_deadline_expired(struct proxy *px)
{
    upool_deadline_remove(px);
    if (px->state == PX_WAITING)
        upool_wait_remove(px->up, px);
    log_warn("app server did not answer in time", "timeout_ms=%lld", (long long)px->up->cfg->timeout_ms);
    proxy_fail(px, PX_ERR_TIMEOUT);
}

/* --- the answer ------------------------------------------------------------------ */

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
    struct buf h = BUF_INIT, cors = BUF_INIT;
    if (r->router && cors_proxied_headers(r->router->cors, r, &cors)) {
        f.drop_cors = true;
        f.extra = cors.data;
        f.extra_len = cors.len;
    }
    http_forward_response(resp, &f, &h);
    buf_deinit(&cors);
    px->resp_frame = !f.body_allowed ? PX_FRAME_NONE : f.chunked ? PX_FRAME_CHUNKED : PX_FRAME_RAW;
    if (f.close_delimited)
        r->close_after = true; /* the body ends when the connection does */
    px->answer = PX_ANSWER_RELAYED;
    req_stream_start_raw(r, resp->status, &h, px->resp_frame == PX_FRAME_CHUNKED);
    buf_deinit(&h);
}

/* One invalidation answered: the head goes out after the last. */
static void inval_settled(struct proxy *px)
{
    if (--px->inval_pending > 0)
        return;
    if (px->state == PX_DONE) { /* the client left meanwhile */
        px_maybe_free(px);
        return;
    }
    upool_deadline_add(px);
    relay_head(px);
    /* Let the parser go on with the body it stopped at. */
    struct uconn *uc = px->uc;
    if (uc) {
        stream_resume(&uc->s, UC_PAUSE_INVALIDATING);
        http_rparser_resume(&uc->parser);
        upool_read_resume(uc);
    }
}

static void inval_done_cb(void *ctx, int err)
{
    struct proxy *px = ctx;
    if (err < 0) {
        (*px->up->m_inval_err)++;
        log_warn("invalidation failed; the entry expires by its TTL", "err=%d", err);
    } else {
        (*px->up->m_inval)++;
    }
    inval_settled(px);
}

/* A list's pages dropped (or not): counted and logged by the list. */
static void list_inval_done_cb(void *ctx, int err)
{
    (void)err;
    inval_settled(ctx);
}

/* The app switched protocols (the parser checked the 101 against what the
 * request offered): the client gets the 101 and both sockets go to a
 * tunnel. The request and px end here; uc's parser stays paused for good
 * (the bytes after the 101 are the tunnel's). */
static void switch_protocols(struct proxy *px, struct uconn *uc)
{
    struct http_forward_resp f = { .upgrade = true };
    struct buf h = BUF_INIT;
    http_forward_response(&uc->parser.resp, &f, &h);
    struct req *r = px->r;
    struct stream *cs = r ? req_upgrade(r, &h) : NULL;
    buf_deinit(&h);
    upool_deadline_remove(px);
    px->uc = NULL;
    uc->px = NULL;
    if (cs == NULL) {
        /* The client left, or batchd is draining: the app's side of a
         * switch no one will use is closed. */
        upool_close(uc, UC_CLOSE_CLIENT_GONE);
        px_tunnel_settle(px, TUNNEL_RESULT_FAILED);
        if (r) {
            px_take_req(px);
            req_error(r, 503, "shutting_down");
        }
        px->state = PX_DONE;
        px_maybe_free(px);
        return;
    }
    /* req_upgrade freed r: nothing of the request may be touched again. */
    px_forget_identity(px);
    px->r = NULL;
    px->state = PX_DONE;
    px->tunnel_held = false; /* the place is the tunnel's now */
    tunnel_start(cs, uc);
    px_maybe_free(px);
}

static int rhead_cb(struct http_rparser *p, struct http_response *resp)
{
    struct uconn *uc = p->data;
    struct proxy *px = uc->px;
    if (px == NULL)
        return HTTP_PARSER_PAUSE;
    if (px->answer == PX_ANSWER_NONE)
        px->answer = PX_ANSWER_ARRIVING;
    px->status = resp->status;
    upool_deadline_remove(px); /* back on once the answer is relayed */
    metrics_observe(px->up->m_latency, (double)(uv_hrtime() - px->start_ns) / 1e9);
    (*px->up->m_status[(resp->status / 100 - 1) % 5])++;
    if (resp->switching) {
        switch_protocols(px, uc);
        return HTTP_PARSER_PAUSE;
    }
    px_tunnel_settle(px, TUNNEL_RESULT_REFUSED);
    if ((px->n_matches || px->list_writes) && resp->status >= 200 && resp->status < 300) {
        /* The write succeeded: delete the cached copies before the client
         * sees the answer, so it reads its own write. */
        px->state = PX_INVALIDATING;
        px->inval_pending = 1; /* held until every invalidation is sent */
        px->inval_pending += list_writes_invalidate(px->list_writes, list_inval_done_cb, px);
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
    upool_deadline_add(px);
    relay_head(px);
    return 0;
}

/* A piece of body, framed as a chunk when `chunked`, in at most 3 iovecs. */
static unsigned frame_piece(const char *data, size_t n, bool chunked, char hex[20], uv_buf_t b[3])
{
    unsigned k = 0;
    if (chunked)
        b[k++] = uv_buf_init(hex, (unsigned)snprintf(hex, 20, "%zx\r\n", n));
    b[k++] = uv_buf_init((char *)data, (unsigned)n);
    if (chunked)
        b[k++] = uv_buf_init((char *)"\r\n", 2);
    return k;
}

static int rbody_cb(struct http_rparser *p, const char *at, size_t n)
{
    struct uconn *uc = p->data;
    struct proxy *px = uc->px;
    if (px == NULL || px->resp_frame == PX_FRAME_NONE || px->state == PX_DONE)
        return 0;
    char hex[20];
    uv_buf_t b[3];
    unsigned k = frame_piece(at, n, px->resp_frame == PX_FRAME_CHUNKED, hex, b);
    if (req_stream_write_copy(px->r, b, k) != 0)
        return HTTP_PARSER_PAUSE; /* the client is gone; client_abort_cb cleans up */
    if (req_stream_queued(px->r) > (size_t)px->up->cfg->buffer_bytes) {
        px->answer = PX_ANSWER_PAUSED; /* the client is slow: stop reading the app */
        upool_deadline_remove(px);      /* the client's write timeout applies now */
        stream_pause(&uc->s, UC_PAUSE_CLIENT);
        return HTTP_PARSER_PAUSE;
    }
    return 0;
}

static const struct http_rparser_cbs proxy_rparser_cbs = {
    .head_cb = rhead_cb,
    .body_cb = rbody_cb,
    .complete_cb = upool_complete_cb,
};

/* The client took some of what was queued: read the app again once the
 * queue is down to half. */
static void client_drain_cb(struct req *r)
{
    struct proxy *px = r->hdata;
    if (px && px->state != PX_DONE && px->answer == PX_ANSWER_PAUSED && px->uc &&
        req_stream_queued(r) <= (size_t)px->up->cfg->buffer_bytes / 2) {
        px->answer = PX_ANSWER_RELAYED;
        upool_deadline_add(px);
        stream_resume(&px->uc->s, UC_PAUSE_CLIENT);
        http_rparser_resume(&px->uc->parser);
        upool_read_resume(px->uc);
    }
}

/* --- the request to the app -------------------------------------------------------- */

/* The head went out on px->uc: body bytes go straight to it. */
static bool px_sending(const struct proxy *px)
{
    return px->uc != NULL && px->uc->state == UC_BUSY && px->state >= PX_SENDING && px->state < PX_DONE;
}

/* Writes to the app: what the socket takes at once is not copied; the rest
 * is (the client's read buffer is shared). Before the connection is ready
 * the bytes wait in the proxy's queue. A failure shows up on the read side
 * (EOF or reset), which fails the request. */
static void px_send(struct proxy *px, const uv_buf_t *bufs, unsigned n)
{
    if (px_sending(px)) {
        (void)stream_write(&px->uc->s, bufs, n, STREAM_COPY, NULL, NULL);
        return;
    }
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    struct piece *pc = mem_alloc(sizeof(*pc) + total);
    pc->len = 0;
    for (unsigned i = 0; i < n; i++) {
        memcpy(pc->data + pc->len, bufs[i].base, bufs[i].len);
        pc->len += bufs[i].len;
    }
    STAILQ_INSERT_TAIL(&px->queue, pc, link);
    px->q_bytes += pc->len;
    px->q_n++;
}

static void proxy_written(struct proxy *px)
{
    upool_deadline_touch(px);
    if (px->uc)
        resume_client_if_drained(px);
}

static void proxy_conn_ready(struct proxy *px)
{
    struct uconn *uc = px->uc;
    http_rparser_reset(&uc->parser, px->r && px->r->msg.method == HTTP_HEAD);
    if (px->upgrade)
        http_rparser_expect_upgrade(&uc->parser, str_make(px->upgrade_offer.data, px->upgrade_offer.len));
    px->state = PX_SENDING;
    uv_buf_t h = uv_buf_init(px->head.data, (unsigned)px->head.len);
    px_send(px, &h, 1);
    while (!STAILQ_EMPTY(&px->queue)) {
        struct piece *pc = STAILQ_FIRST(&px->queue);
        STAILQ_REMOVE_HEAD(&px->queue, link);
        px->q_bytes -= pc->len;
        px->q_n--;
        uv_buf_t b = uv_buf_init(pc->data, (unsigned)pc->len);
        px_send(px, &b, 1);
        free(pc);
    }
    /* The client may have been paused while its body waited for this
     * connection; no write callback will come if all of it went out now. */
    resume_client_if_drained(px);
    upool_read_resume(uc);
}

/* The request goes to the pool: a connection now, or a place in line. */
static void px_start(struct proxy *px)
{
    if (px->id_pending) { /* the head goes once the principal is known */
        px->start_wanted = true;
        return;
    }
    px->state = PX_NEW;
    upool_deadline_add(px);
    upool_acquire(px->up, px);
}

/* --- the client's side ------------------------------------------------------------ */

static int body_cb(struct req *r, const char *data, size_t n)
{
    struct proxy *px = r->hdata;
    if (px == NULL || px->state == PX_DONE || px->body == PX_BODY_DROPPING)
        return 0; /* answered already: the rest is read and dropped */
    px->body_bytes += n;
    int64_t max = px->up->cfg->max_body_bytes;
    if (max > 0 && px->body_bytes > (uint64_t)max) {
        (*px->up->m_err_body)++;
        bool started = px->answer >= PX_ANSWER_RELAYED;
        if (!started) /* a started answer keeps its connection to its end */
            upool_leave(px, UC_CLOSE_BODY_TOO_LARGE);
        px_take_req(px);
        if (started)
            req_stream_abort(r, CONN_CLOSE_BODY_TOO_LARGE);
        else
            req_error(r, 413, "body_too_large");
        px_maybe_free(px);
        return 0;
    }
    char hex[20];
    uv_buf_t b[3];
    px_send(px, b, frame_piece(data, n, px->req_frame == PX_FRAME_CHUNKED, hex, b));
    if (px->state == PX_BUFFERING) {
        if (px->q_bytes + px->q_n * PIECE_OVERHEAD <= (size_t)px->up->cfg->request_buffer_bytes)
            return 0;
        px_start(px); /* larger than the buffer: stream the rest */
        if (px->state == PX_DONE || px->r == NULL)
            return 0;
    }
    if (px_queued(px) > (size_t)px->up->cfg->buffer_bytes) {
        px->body = PX_BODY_PAUSED; /* the app reads slower than the client sends */
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
    bool dropping = px->body == PX_BODY_DROPPING;
    if (px->body != PX_BODY_NONE) /* a bodiless request ends here too */
        px->body = PX_BODY_IN;
    if (px->req_frame == PX_FRAME_CHUNKED && px->state != PX_DONE && !dropping) {
        uv_buf_t b = uv_buf_init((char *)"0\r\n\r\n", 5);
        px_send(px, &b, 1);
    }
    if (px->state == PX_BUFFERING) {
        px_start(px);
        return;
    }
    if (dropping)
        px_end_client(px);
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
        .upgrade = px->upgrade ? str_make(px->upgrade_offer.data, px->upgrade_offer.len) : STR_NULL,
    };
    f.strip_header = identity_forward_header();
    http_forward_request(&r->msg, &f, &px->head);
    if (px->body != PX_BODY_NONE)
        px->req_frame = f.chunked ? PX_FRAME_CHUNKED : PX_FRAME_RAW;
    *u->m_drop_underscore += f.dropped_underscore;
    *u->m_drop_forwarded += f.dropped_forwarded;
}

/* The principal is known (or known to be absent): it goes to the app in
 * forward_principal_header, which build_request_head stripped from what
 * the client sent. */
static void identity_cb(void *ctx, struct req *r)
{
    struct proxy *px = ctx;
    px->idw = NULL;
    px->id_pending = false;
    /* Now, while the client is here: its write counts even if it leaves. */
    px->list_writes = list_set_match_writes(px->up->lists, r->msg.method, r->msg.path, r->principal,
                                            r->principal_len);
    const char *name = identity_forward_header();
    if (name && r->principal && px->head.len >= 4) {
        px->head.len -= 2; /* before the blank line that ends the head */
        buf_appendf(&px->head, "%s: %s\r\n\r\n", name, r->principal);
    }
    if (px->start_wanted && px->state != PX_DONE) {
        px->start_wanted = false;
        px_start(px);
    }
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
    str_t offer = STR_NULL;
    enum tunnel_admit ta = tunnel_admit(r, u->cfg->websocket, &offer);
    if (ta == TUNNEL_ADMIT_REJECTED)
        return; /* answered */
    bool upgrade = ta == TUNNEL_ADMIT_UPGRADE;
    if (!upgrade && upool_full(u)) {
        /* Every connection busy and max_waiting queued already: a bounded
         * wait, not an unbounded pile of requests (and their bodies). */
        (*u->m_err_busy)++;
        req_add_header(r, "Retry-After", "1");
        req_error(r, 503, "upstream_busy");
        return;
    }
    struct proxy *px = mem_calloc(1, sizeof(*px));
    px->ops = &proxy_ops;
    px->r = r;
    px->up = u;
    if (upgrade) {
        px->upgrade = px->tunnel_held = true;
        buf_append(&px->upgrade_offer, offer.p, offer.len);
    }
    px->start_ns = uv_hrtime();
    STAILQ_INIT(&px->queue);
    bool has_body = m->chunked || (m->content_length != HTTP_NO_LENGTH && m->content_length > 0);
    px->body = has_body ? PX_BODY_FLOWING : PX_BODY_NONE;
    if (m->method == HTTP_PUT || m->method == HTTP_PATCH || m->method == HTTP_POST || m->method == HTTP_DELETE)
        px->n_matches = resource_set_match_write(u->resources, m->path, px->matches, MAX_MATCHES);
    build_request_head(px, r);
    r->hdata = px;
    r->abort_cb = client_abort_cb;
    r->body_cb = body_cb;
    r->body_end_cb = body_end_cb;
    r->drain_cb = client_drain_cb;
    /* Who is asking, for the app (forward_principal_header) and for the
     * lists a write invalidates; the head waits for a forward-auth check. */
    bool write = m->method == HTTP_PUT || m->method == HTTP_PATCH || m->method == HTTP_POST ||
                 m->method == HTTP_DELETE;
    if (identity_forward_header() || (write && identity_enabled())) {
        px->id_pending = true;
        px->idw = identity_lookup(r, identity_cb, px);
    }
    int64_t rb = u->cfg->request_buffer_bytes;
    if (has_body && rb > 0 && (m->chunked || m->content_length <= (uint64_t)rb)) {
        /* Like nginx's proxy_request_buffering: a slow client holds no
         * pool connection while it sends a small body. */
        px->state = PX_BUFFERING;
        (*u->m_buffered)++;
        return;
    }
    px_start(px);
}

const struct px_ops proxy_ops = {
    .rparser = &proxy_rparser_cbs,
    .ready = proxy_conn_ready,
    .written = proxy_written,
    .done = proxy_response_done,
    .fail = proxy_fail,
    .expired = proxy_deadline_expired,
};

void upstream_set_lists(struct upstream *u, struct list_set *lists)
{
    u->lists = lists;
}

void upstream_add_routes(struct upstream *u, struct router *rt)
{
    router_set_fallback(rt, proxy_handler, u, ROUTE_AT_HEAD);
}
