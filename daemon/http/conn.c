/*
 * conn: one client connection's socket side, from accept to close. See
 * conn.h; the requests and their answers are conn_pipeline.c's.
 *
 *   accept ──> OPEN ──(last answer queued)──> FINISHING ──(written)──> LINGERING
 *                │                                                        │
 *                └──(error, timeout, peer gone)──> CLOSING <──(2 s, EOF)──┘
 *
 * The mechanics (the shared read buffer, held-back bytes, pause bits,
 * writes and their queue limit, deferred close) are the stream's
 * (daemon/net/stream.h); this file decides when to read, what to parse,
 * which timeout applies and why the connection closes.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/http/conn_int.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "proto/mem.h"

#define MAX_IOV STREAM_MAX_IOV
#define LINGER_MS 2000
#define LINGER_MAX_BYTES (1024 * 1024)

static const char *const reason_names[] = {
#define X(name, text) text,
    CONN_CLOSE_REASONS(X)
#undef X
};

static uint64_t *m_closed[CONN_CLOSE__COUNT];

size_t conn_write_queued(const struct conn *c)
{
    return stream_queued(&c->s);
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
        req_put(c->zombie);
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
    if (c->reading || c->n_reqs == 0 || conn_head(c)->state == REQ_STREAMING) {
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
void conn_update_reading(struct conn *c)
{
    if (c->state == CONN_TUNNEL)
        return;
    /* Time batchd spent not reading is not the client's: a request head
     * cut off by a pause gets a fresh header_timeout. */
    if (stream_read_update(&c->s) && c->reading && !c->reading->head_done && c->state == CONN_OPEN)
        c->head_deadline = uv_now(conn_srv(c)->loop) + (uint64_t)conn_srv(c)->cfg->header_timeout_ms;
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
void conn_update_timer(struct conn *c)
{
    if (c->state == CONN_CLOSING || c->state == CONN_LINGERING || c->state == CONN_TUNNEL)
        return;
    const struct cfg_batchd *cfg = conn_srv(c)->cfg;
    uint64_t now = uv_now(conn_srv(c)->loop);
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

/* The stream's written_cb: a queued write finished. */
static void conn_written_cb(struct stream *s, int status)
{
    struct conn *c = (struct conn *)s;
    if (status < 0) {
        conn_close(c, CONN_CLOSE_WRITE_ERROR);
        return;
    }
    if (stream_writes(s) > 0 && c->timer_kind == CONN_TIMER_WRITE)
        timer_set(c, CONN_TIMER_WRITE, (uint64_t)conn_srv(c)->cfg->idle_timeout_ms);
    struct req *head = conn_head(c);
    if (c->state == CONN_FINISHING && stream_writes(s) == 0 && head == NULL) {
        conn_start_linger(c);
        return;
    }
    if (head && head->state == REQ_STREAMING && head->drain_cb)
        head->drain_cb(head);
    if (c->state == CONN_OPEN || c->state == CONN_FINISHING)
        conn_try_resume(c);
}

/* Writes bufs in order with every earlier write; cb runs once. A failed
 * write closes the connection. */
int conn_write_bufs(struct conn *c, const uv_buf_t *bufs, unsigned n, enum stream_write_mode mode,
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
    int rc = conn_write_bufs(c, bufs, n, mode, cb, ctx);
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

/* --- the credential memo ------------------------------------------------------------ */

bool conn_memo_get(const struct conn *c, char kind, str_t cred, uint32_t gen, uint64_t now_ms,
                   str_t *principal)
{
    const struct conn_memo *m = c->memo;
    if (m == NULL || m->kind != kind || m->gen != gen || m->expires_ms <= now_ms ||
        m->cred_len != cred.len || memcmp(m->data, cred.p, cred.len) != 0)
        return false;
    *principal = str_make(m->data + m->cred_len, m->principal_len);
    return true;
}

void conn_memo_put(struct conn *c, char kind, str_t cred, const char *principal, size_t n,
                   uint32_t gen, uint64_t expires_ms)
{
    if (cred.len > CONN_MEMO_MAX || n > UINT16_MAX)
        return;
    struct conn_memo *m = c->memo;
    if (m == NULL || m->cred_len + m->principal_len < cred.len + n) {
        free(m);
        m = mem_alloc(sizeof(*m) + cred.len + n);
        c->memo = m;
    }
    m->gen = gen;
    m->kind = kind;
    m->cred_len = (uint16_t)cred.len;
    m->principal_len = (uint16_t)n;
    m->expires_ms = expires_ms;
    memcpy(m->data, cred.p, cred.len);
    memcpy(m->data + cred.len, principal, n);
}

/* --- closing ------------------------------------------------------------------- */

/* The stream's closed_cb: the socket and the timer are closed. */
static void conn_closed_cb(struct stream *s)
{
    struct conn *c = (struct conn *)s;
    if (c->lst) /* NULL when the accept failed */
        server_conn_removed(conn_srv(c), c);
    free(c->memo);
    free(c);
}

/* Our last response is written: send FIN, and keep reading (and dropping)
 * for a moment so that unread input does not turn our close into an RST
 * that could destroy the response on its way to the client. */
void conn_start_linger(struct conn *c)
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

void conn_finish(struct conn *c, enum conn_close_reason reason)
{
    if (c->state != CONN_OPEN)
        return;
    if (c->reason == CONN_REASON_UNSET)
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
    case CONN_CLOSE_TUNNEL_CLOSED: /* the tunnel logs its own reason */
    case CONN_CLOSE_UPGRADE_REFUSED:
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
    if (c->reason == CONN_REASON_UNSET || overrides_planned(reason))
        c->reason = (uint8_t)reason;
    reason = (enum conn_close_reason)c->reason;
    c->state = CONN_CLOSING;
    (*m_closed[reason])++;
    enum log_level lvl = close_log_level(reason);
    if (lvl >= log_min_level) {
        char peer[64];
        log_write(lvl, "connection closed", "reason=%s listener=%s peer=%s requests_in_flight=%u",
                  reason_names[reason], c->lst->name, conn_peer(c, peer, sizeof(peer)), c->n_reqs);
    }
    conn_release_reqs(c);
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
        int64_t wait = conn_srv(c)->cfg->drain_idle_ms;
        if (wait <= 0 || c->peer_eof) {
            conn_close(c, CONN_CLOSE_SHUTDOWN);
            return;
        }
        timer_set(c, CONN_TIMER_IDLE, (uint64_t)wait);
        return;
    }
    if (c->reading == NULL) {
        /* The last request queued gets "Connection: close". */
        TAILQ_LAST(&c->pipeline, req_list)->close_after = true;
        conn_finish(c, CONN_CLOSE_SHUTDOWN);
    }
    /* Otherwise complete_cb marks the request being read as the last. */
}

/* --- the kind ------------------------------------------------------------------ */

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
    conn_pipeline_metrics_init();
    static const char *const pause_names[CONN_PAUSE_COUNTED] = {
#define X(name, label) label,
        CONN_PAUSES(X)
#undef X
    };
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

/* --- accepting --------------------------------------------------------------- */

static struct conn *conn_new(struct listener *lst, int *err)
{
    struct server *s = lst->srv;
    struct conn *c = mem_calloc(1, sizeof(*c));
    TAILQ_INIT(&c->pipeline);
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
    c->reason = CONN_REASON_UNSET;
    c->state = CONN_OPEN;
    http_parser_init(&c->parser, &conn_parser_cbs, &s->limits, c);
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
    struct req *r = conn_req_new(c);
    r->close_after = true;
    r->state = REQ_HANDLING;
    c->reason = CONN_CLOSE_TOO_MANY_CONNECTIONS;
    conn_finish(c, CONN_CLOSE_TOO_MANY_CONNECTIONS);
    req_add_header(r, "Retry-After", "1");
    req_error(r, 503, "too_many_connections");
    return 0;
}

/* --- for req.c ------------------------------------------------------------------ */

bool conn_draining(const struct conn *c)
{
    return c->draining;
}

/* The peer's address, from the kernel on the first call only. */
static int peer_of(const struct conn *cc)
{
    struct conn *c = (struct conn *)cc; /* a cache: the address never changes */
    if (!c->peer_known) {
        struct sockaddr_storage ss;
        c->peer_rc = stream_peer_addr(&c->s, &ss);
        if (c->peer_rc == 0 && ss.ss_family == AF_INET6)
            memcpy(&c->peer.v6, &ss, sizeof(c->peer.v6));
        else if (c->peer_rc == 0 && ss.ss_family == AF_INET)
            memcpy(&c->peer.v4, &ss, sizeof(c->peer.v4));
        else if (c->peer_rc == 0)
            c->peer_rc = UV_EAFNOSUPPORT;
        c->peer_known = true;
    }
    return c->peer_rc;
}

int conn_peer_addr(const struct conn *c, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    int rc = peer_of(c);
    if (rc == 0)
        memcpy(ss, &c->peer, c->peer.sa.sa_family == AF_INET6 ? sizeof(c->peer.v6) : sizeof(c->peer.v4));
    return rc;
}

const char *conn_peer(const struct conn *c, char *out, size_t cap)
{
    snprintf(out, cap, "?");
    if (peer_of(c) != 0)
        return out;
    if (c->peer.sa.sa_family == AF_INET6)
        uv_ip6_name(&c->peer.v6, out, cap);
    else
        uv_ip4_name(&c->peer.v4, out, cap);
    return out;
}

int conn_fd(const struct conn *c)
{
    return stream_fd(&c->s);
}
