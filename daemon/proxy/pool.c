/*
 * pool: the keep-alive connections to the app server. See upstream.h.
 *
 *                    upool_acquire(px)
 *                          │
 *        ┌── idle list ────┼── none idle, < pool_size ──┐── pool full ──> waiting line
 *        │  (LIFO)         │                            │                (FIFO, max_waiting)
 *        ▼                 │                            ▼                      │
 *      BUSY <──────────────┴──────── connected ─── CONNECTING                  │
 *        │  answer complete, reusable                (connect_timeout_ms)      │
 *        └──> IDLE (read: an EOF or a stray byte closes it; idle_timeout_ms) ──┘ next in line
 *
 * Every app connection sits on a stream (daemon/net/stream.h), as client
 * connections do: reading, held-back bytes, pauses, writes and the
 * deferred close are the stream's. One sweep timer (SWEEP_MS) serves the
 * whole pool: the deadlines of requests the app owes progress (oldest
 * first, so the scan stops at the first one not due), connects past
 * connect_timeout_ms, and idle connections past idle_timeout_ms.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/proxy/proxy_int.h"
#include "proto/mem.h"

#define UPSTREAM_HEAD_MAX (64 * 1024)
#define SWEEP_MS 50

static const char *const uc_close_names[] = {
#define X(name, text) text,
    UC_CLOSE_REASONS(X)
#undef X
};

static void next_waiter(struct upstream *u);

/* Connections that count against pool_size: not an upgrade request's. */
static unsigned pooled(const struct upstream *u)
{
    return u->n_conns - u->n_outside;
}

/* --- deadlines --------------------------------------------------------------- */

/* On the list iff linked: tqe_prev is cleared on removal. */
static bool on_deadline(const struct proxy *px)
{
    return px->dl_link.tqe_prev != NULL;
}

void upool_deadline_remove(struct proxy *px)
{
    if (!on_deadline(px))
        return;
    TAILQ_REMOVE(&px->up->deadlines, px, dl_link);
    px->dl_link.tqe_prev = NULL;
}

void upool_deadline_add(struct proxy *px)
{
    struct upstream *u = px->up;
    if (px->state == PX_DONE)
        return;
    assert(px->ops->expired != NULL);
    upool_deadline_remove(px);
    px->deadline_ms = uv_now(u->loop) + (uint64_t)u->cfg->timeout_ms;
    TAILQ_INSERT_TAIL(&u->deadlines, px, dl_link);
}

/* The app made progress (read some of the request, sent some answer): its
 * timeout_ms starts again. Like nginx's proxy_read_timeout, it bounds the
 * silence between two steps, not the whole exchange. */
void upool_deadline_touch(struct proxy *px)
{
    if (on_deadline(px))
        upool_deadline_add(px);
}

/* --- connections ------------------------------------------------------------- */

void upool_close(struct uconn *uc, enum uc_close_reason reason)
{
    stream_close(&uc->s, reason);
}

/* The stream's close_cb: leave the pool's lists, and log why. */
static void uconn_close_cb(struct stream *s, unsigned reason)
{
    struct uconn *uc = (struct uconn *)s;
    if (uc->state == UC_CONNECTING || uc->state == UC_IDLE)
        LIST_REMOVE(uc, link);
    if (uc->state == UC_IDLE)
        uc->up->n_idle--;
    uc->state = UC_CLOSING;
    uc->px = NULL;
    log_debug("app server connection closed", "reason=%s served=%u", uc_close_names[reason], uc->served);
}

static void sweep_closed_cb(uv_handle_t *h)
{
    free(h->data); /* the pool */
}

/* The stream's closed_cb: the memory goes, and its place in the pool. */
static void uconn_closed_cb(struct stream *s)
{
    struct uconn *uc = (struct uconn *)s;
    struct upstream *u = uc->up;
    http_rparser_deinit(&uc->parser);
    if (uc->outside)
        u->n_outside--;
    free(uc);
    u->n_conns--;
    if (!u->freeing)
        next_waiter(u);
    else if (u->n_conns == 0 && !uv_is_closing((uv_handle_t *)&u->sweep))
        uv_close((uv_handle_t *)&u->sweep, sweep_closed_cb);
}

void upool_read_resume(struct uconn *uc)
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

/* Back to the idle list when reusable, else closed. */
static void uconn_release(struct uconn *uc, bool keep)
{
    struct upstream *u = uc->up;
    uc->px = NULL;
    if (!keep || u->freeing || stream_held_any(&uc->s) || uc->outside) {
        upool_close(uc, u->freeing ? UC_CLOSE_POOL_CLOSED : UC_CLOSE_NOT_REUSABLE);
        return;
    }
    stream_resume(&uc->s, STREAM_PAUSE_ALL);
    uc->state = UC_IDLE;
    http_rparser_reset(&uc->parser, false);
    uc->idle_since = uv_now(u->loop);
    uc->served++;
    LIST_INSERT_HEAD(&u->idle, uc, link);
    u->n_idle++;
    /* Keep reading while idle: an EOF means the app closed it. */
    upool_read_resume(uc);
    next_waiter(u);
}

/* A response completed during the last parse: hand the connection back
 * (reusable only when nothing followed the response and the request was
 * sent whole) and end the request. */
static void uconn_after_parse(struct uconn *uc, bool leftover)
{
    struct proxy *px = uc->px;
    uc->complete = false;
    stream_held_drop(&uc->s);
    if (px == NULL) {
        upool_close(uc, UC_CLOSE_CLIENT_GONE);
        return;
    }
    bool keep = uc->keep && !leftover && proxy_body_in(px);
    px->uc = NULL;
    upool_deadline_remove(px);
    uconn_release(uc, keep);
    px->ops->done(px);
}

/* Both rparser tables' complete_cb. Only noted here: the connection is
 * handed back once the parse returns (uconn_parse_cb), since mid-parse a
 * new request could use it; then ops->done runs. */
int upool_complete_cb(struct http_rparser *p, struct http_response *resp)
{
    struct uconn *uc = p->data;
    uc->complete = true;
    uc->keep = resp->keep_alive;
    return HTTP_PARSER_PAUSE;
}

/* Closes the connection and fails its request, if it still has one. */
static void uconn_fail(struct uconn *uc, enum uc_close_reason reason, enum px_error kind)
{
    struct proxy *px = uc->px;
    upool_close(uc, reason);
    if (px) {
        px->uc = NULL;
        px->ops->fail(px, kind);
    }
}

/* The stream's parse_cb: the app's answer, through px->ops->rparser.
 * The connection is handed back only after the parse returns: mid-parse,
 * a new request could use it. */
static size_t uconn_parse_cb(struct stream *s, const char *data, size_t n)
{
    struct uconn *uc = (struct uconn *)s;
    size_t used = http_rparser_execute(&uc->parser, data, n);
    if (uc->complete) {
        uconn_after_parse(uc, used < n);
    } else if (uc->parser.failed) {
        log_warn("bad response from the app server", "err=%s", LOG_Q(uc->parser.error));
        uconn_fail(uc, UC_CLOSE_BAD_RESPONSE, PX_ERR_BAD_RESPONSE);
    }
    return used;
}

/* The stream's eof_cb. */
static void uconn_eof_cb(struct stream *s, int err)
{
    struct uconn *uc = (struct uconn *)s;
    struct proxy *px = uc->px;
    if (uc->state == UC_IDLE) { /* the app closed a kept-alive connection */
        upool_close(uc, UC_CLOSE_APP_CLOSED);
        return;
    }
    if (err == UV_EOF && px && px->answer != PX_ANSWER_NONE) {
        http_rparser_finish(&uc->parser); /* a close-delimited body ends here */
        if (uc->complete) {
            uc->keep = false;
            uconn_after_parse(uc, false);
            return;
        }
    }
    uconn_fail(uc, UC_CLOSE_RESET, PX_ERR_RESET);
}

/* The stream's read_cb. */
static void uconn_read_cb(struct stream *s, const char *data, size_t n)
{
    struct uconn *uc = (struct uconn *)s;
    if (uc->state == UC_IDLE) { /* bytes nobody asked for */
        upool_close(uc, UC_CLOSE_UNEXPECTED_BYTES);
        return;
    }
    struct proxy *px = uc->px;
    if (px) { /* the app has seen the request: no retry from now on */
        if (px->answer == PX_ANSWER_NONE)
            px->answer = PX_ANSWER_ARRIVING;
        upool_deadline_touch(px); /* a sub-request is not on the list: nothing */
    }
    stream_parse(s, data, n);
    stream_read_update(s); /* stops while a pause reason is set */
}

/* The stream's written_cb: the app took some of the request. A failed
 * write shows up on the read side too (EOF or reset). */
static void uconn_written_cb(struct stream *s, int status)
{
    struct proxy *px = ((struct uconn *)s)->px;
    if (px && status == 0 && px->ops->written)
        px->ops->written(px);
}

static void on_connect_cb(uv_connect_t *cr, int status)
{
    struct uconn *uc = cr->data;
    struct upstream *u = uc->up;
    struct proxy *px = uc->px;
    if (uc->state == UC_CLOSING)
        return;
    LIST_REMOVE(uc, link);
    uc->state = UC_BUSY;
    if (status != 0) {
        log_warn("cannot connect to the app server", "addr=%s err=%s", u->cfg->url.addr.text,
                 uv_strerror(status));
        uconn_fail(uc, UC_CLOSE_REFUSED, PX_ERR_REFUSED);
        return;
    }
    (*u->m_connects)++;
    uv_tcp_nodelay(stream_tcp(&uc->s), 1);
    if (px == NULL) { /* its request went away: keep it for the next */
        uconn_release(uc, true);
        return;
    }
    px->ops->ready(px);
}

static struct uconn *uconn_connect(struct upstream *u)
{
    struct uconn *uc = mem_calloc(1, sizeof(*uc));
    uc->up = u;
    uc->state = UC_CONNECTING;
    stream_init(&uc->s, u->loop, &u->kind);
    uc->connect_req.data = uc;
    http_rparser_init(&uc->parser, NULL, UPSTREAM_HEAD_MAX, uc); /* callbacks: uconn_bind */
    u->n_conns++;
    uc->connect_deadline = uv_now(u->loop) + (uint64_t)u->cfg->connect_timeout_ms;
    LIST_INSERT_HEAD(&u->connecting, uc, link);
    int rc = uv_tcp_connect(&uc->connect_req, stream_tcp(&uc->s),
                            (const struct sockaddr *)&u->cfg->url.addr.ss, on_connect_cb);
    if (rc != 0) {
        upool_close(uc, UC_CLOSE_REFUSED);
        return NULL;
    }
    return uc;
}

/* --- handing out connections --------------------------------------------------- */

/* uc serves px: the answer is parsed with px's callbacks. */
static void uconn_bind(struct uconn *uc, struct proxy *px)
{
    uc->px = px;
    px->uc = uc;
    uc->parser.cbs = px->ops->rparser;
}

/* A new connection for px; false when it cannot even start. */
static bool upool_connect_for(struct upstream *u, struct proxy *px)
{
    struct uconn *uc = uconn_connect(u);
    if (uc == NULL)
        return false;
    if (px->upgrade) {
        uc->outside = true;
        u->n_outside++;
    }
    uconn_bind(uc, px);
    px->state = PX_CONNECTING;
    return true;
}

bool upool_retry(struct proxy *px, enum px_error kind)
{
    if (kind != PX_ERR_RESET || px->attempt != PX_ATTEMPT_REUSED || px->answer != PX_ANSWER_NONE)
        return false;
    px->attempt = PX_ATTEMPT_RETRY;
    (*px->up->m_retries)++;
    return upool_connect_for(px->up, px);
}

bool upool_full(const struct upstream *u)
{
    return LIST_EMPTY(&u->idle) && pooled(u) >= (unsigned)u->cfg->pool_size &&
           u->n_waiting >= (unsigned)u->cfg->max_waiting;
}

void upool_acquire(struct upstream *u, struct proxy *px)
{
    if (px->upgrade) {
        /* A connection of its own, never from or back to the pool: the app
         * may switch it to another protocol, and a tunnel must not hold a
         * place the pool's requests need (max_tunnels bounds them). */
        px->attempt = PX_ATTEMPT_FRESH;
        if (!upool_connect_for(u, px))
            px->ops->fail(px, PX_ERR_REFUSED);
        return;
    }
    struct uconn *uc = LIST_FIRST(&u->idle);
    if (uc) {
        LIST_REMOVE(uc, link);
        u->n_idle--;
        uc->state = UC_BUSY;
        uconn_bind(uc, px);
        px->attempt = uc->served > 0 ? PX_ATTEMPT_REUSED : PX_ATTEMPT_FRESH;
        px->ops->ready(px);
        return;
    }
    if (pooled(u) < (unsigned)u->cfg->pool_size) {
        px->attempt = PX_ATTEMPT_FRESH;
        if (!upool_connect_for(u, px))
            px->ops->fail(px, PX_ERR_REFUSED);
        return;
    }
    px->state = PX_WAITING;
    TAILQ_INSERT_TAIL(&u->waiting, px, wait_link);
    u->n_waiting++;
}

void upool_wait_remove(struct upstream *u, struct proxy *px)
{
    TAILQ_REMOVE(&u->waiting, px, wait_link);
    u->n_waiting--;
    px->state = PX_NEW; /* out of the line: PX_WAITING means in it */
}

void upool_leave(struct proxy *px, enum uc_close_reason why)
{
    if (px->state == PX_WAITING)
        upool_wait_remove(px->up, px);
    if (px->uc) {
        struct uconn *uc = px->uc;
        px->uc = NULL;
        upool_close(uc, why);
    }
}

static void next_waiter(struct upstream *u)
{
    struct proxy *px;
    while ((px = TAILQ_FIRST(&u->waiting)) &&
           (!LIST_EMPTY(&u->idle) || pooled(u) < (unsigned)u->cfg->pool_size)) {
        upool_wait_remove(u, px);
        upool_acquire(u, px);
    }
}

/* --- the pool -------------------------------------------------------------------- */

static void sweep_cb(uv_timer_t *t)
{
    struct upstream *u = t->data;
    uint64_t now = uv_now(u->loop);
    /* Oldest first: the deadlines come in order. */
    struct proxy *px;
    while ((px = TAILQ_FIRST(&u->deadlines)) && px->deadline_ms <= now)
        px->ops->expired(px);
    /* A connect the app never answers (SYNs dropped) fails at
     * connect_timeout_ms, not at the request's timeout_ms. Failing one may
     * start another connect: look again from the top. */
    for (;;) {
        struct uconn *uc = LIST_FIRST(&u->connecting);
        while (uc && now < uc->connect_deadline)
            uc = LIST_NEXT(uc, link);
        if (uc == NULL)
            break;
        log_warn("cannot connect to the app server", "addr=%s err=%s", u->cfg->url.addr.text,
                 LOG_Q("connect timed out"));
        uconn_fail(uc, UC_CLOSE_CONNECT_TIMEOUT, PX_ERR_CONNECT_TIMEOUT);
    }
    struct uconn *uc = LIST_FIRST(&u->idle);
    while (uc) {
        struct uconn *next = LIST_NEXT(uc, link);
        if (now - uc->idle_since >= (uint64_t)u->cfg->idle_timeout_ms)
            upool_close(uc, UC_CLOSE_IDLE_TIMEOUT);
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
    LIST_INIT(&u->idle);
    LIST_INIT(&u->connecting);
    TAILQ_INIT(&u->waiting);
    TAILQ_INIT(&u->deadlines);
    u->kind = (struct stream_kind){
        .name = "upstream",
        STREAM_CALLBACKS(uconn),
        /* The limit is the proxy's: it stops reading the client while the
         * body held for the app passes buffer_bytes. */
        .over_limit = STREAM_OVER_LIMIT_NONE,
    };
    proxy_metrics_init(u);
    subrequest_metrics_init(u);
    tunnel_metrics_init();
    tunnel_configure(cfg);
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
    tunnel_configure(cfg);
}

void upstream_free(struct upstream *u)
{
    if (u == NULL)
        return;
    u->freeing = true;
    /* Nobody waits for a pool that is going away (the clients are gone by
     * now; a sub-request's owner may not be). */
    struct proxy *px;
    while ((px = TAILQ_FIRST(&u->waiting)) != NULL) {
        upool_wait_remove(u, px);
        px->ops->fail(px, PX_ERR_REFUSED);
    }
    while (!LIST_EMPTY(&u->idle))
        upool_close(LIST_FIRST(&u->idle), UC_CLOSE_POOL_CLOSED);
    if (u->n_conns == 0)
        uv_close((uv_handle_t *)&u->sweep, sweep_closed_cb);
    /* Otherwise the last connection's close callback closes the sweep timer,
     * whose data is u: the pool is freed with it. */
}
