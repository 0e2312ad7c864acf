/*
 * tunnel: a client connection and an app connection joined byte for byte
 * once the app switched protocols (101 to an upgrade request: WebSocket or
 * any other protocol the request offered).
 *
 *   client ──(held bytes first)──> read ─┐          ┌─ read <── app (bytes after the 101 first)
 *                                        ▼          ▼
 *              the app's stream: write queue    the client's stream: write queue
 *                 over tunnel_buffer_bytes: stop reading the side that fills it,
 *                 until that queue is down to half
 *   EOF on one side ──> shutdown(write) on the other; both done and flushed ──> close
 *   no byte either way for tunnel_idle_timeout_ms, an error, shutdown ──> close both
 *
 * Both sockets stay on their streams (net/stream.h); the tunnel takes them
 * over by switching each stream's kind to its own, and passes the close
 * on to the kind it replaced (http/conn, proxy/pool), which logs, counts
 * and frees its connection as ever. Every stream_close on the client's
 * stream names a conn_close_reason and on the app's a uc_close_reason, so
 * a close from outside (the server's shutdown deadline) reads right; the
 * tunnel's own reason is counted in batchd_tunnel_closes_total.
 *
 * One timer per tunnel, a companion of the app's stream: it fires at the
 * idle deadline and looks at the last activity, so bytes cost no timer
 * restart.
 */
#include <stdlib.h>

#include "daemon/http/close_reason.h"
#include "daemon/http/req.h"
#include "daemon/log.h"
#include "daemon/proxy/proxy_int.h"
#include "proto/http_forward.h"
#include "proto/mem.h"

enum tunnel_side { SIDE_CLIENT, SIDE_APP };

/* Why a tunnel closed. */
#define TUNNEL_CLOSE_REASONS(X)                                                          \
    X(CLIENT_CLOSED, "client_closed") /* both sides closed; the client first */          \
    X(APP_CLOSED, "app_closed")       /* both sides closed; the app first */             \
    X(CLIENT_ERROR, "client_error")   /* reading from or writing to the client failed */ \
    X(APP_ERROR, "app_error")         /* ... the app */                                  \
    X(IDLE_TIMEOUT, "idle_timeout")   /* no byte either way for tunnel_idle_timeout_ms */ \
    X(SHUTDOWN, "shutdown")           /* batchd stopped (at shutdown_grace_ms) */

enum tunnel_close_reason {
#define X(name, text) TUNNEL_CLOSE_##name,
    TUNNEL_CLOSE_REASONS(X)
#undef X
    TUNNEL_CLOSE__COUNT
};

/* Pause bits of a tunnel's streams. */
enum tunnel_pause {
    TUNNEL_PAUSE_FULL = 1u << 0, /* the other side's queue passed tunnel_buffer_bytes;
                                  * counted in batchd_tunnel_pauses_total{side} */
    TUNNEL_PAUSE_EOF = 1u << 1,  /* this side sent its FIN: nothing more to read */
};

struct tunnel {
    struct stream *side[2];                 /* by enum tunnel_side */
    const struct stream_kind *orig[2];      /* the kinds they had: closes go on to them */
    uv_timer_t timer;                       /* idle; the app stream's companion */
    uint64_t last_active, start_ms;
    uint64_t bytes[2];                      /* forwarded from side i to the other */
    bool eof[2];
    int first_eof;                          /* the side that closed first, or -1 */
    bool closing;
    unsigned streams;                       /* not closed yet */
};

static const char *const close_names[] = {
#define X(name, text) text,
    TUNNEL_CLOSE_REASONS(X)
#undef X
};
static const char *const result_names[] = {
#define X(name, text) text,
    TUNNEL_RESULTS(X)
#undef X
};

/* Settings (tunnel_configure) and counts: one set per process. */
static struct {
    uint64_t idle_ms;
    size_t buffer_bytes;
    unsigned max;
} conf;
static unsigned n_open, n_pending;
static uint64_t *m_result[TUNNEL_RESULT_STRIPPED + 1];
static uint64_t *m_close[TUNNEL_CLOSE__COUNT];
static uint64_t *m_bytes[2];
static struct stream_kind kinds[2];

static inline struct tunnel *tunnel_of(const struct stream *s)
{
    return s->owner;
}

static inline enum tunnel_side side_of(const struct tunnel *t, const struct stream *s)
{
    return t->side[SIDE_CLIENT] == s ? SIDE_CLIENT : SIDE_APP;
}

static uv_loop_t *loop_of(const struct tunnel *t)
{
    return t->timer.loop;
}

/* --- closing ------------------------------------------------------------------ */

/* Closes both sides (once): the client's stream with tunnel_closed, the
 * app's with its tunnel_closed; each kind's close_cb passes that on. */
static void tunnel_close(struct tunnel *t, enum tunnel_close_reason reason)
{
    if (t->closing)
        return;
    t->closing = true;
    n_open--;
    (*m_close[reason])++;
    enum log_level lvl = reason == TUNNEL_CLOSE_CLIENT_CLOSED || reason == TUNNEL_CLOSE_APP_CLOSED
                             ? LOG_DEBUG
                             : LOG_INFO;
    if (lvl >= log_min_level)
        log_write(lvl, "tunnel closed", "reason=%s client_to_app=%llu app_to_client=%llu duration_ms=%llu",
                  close_names[reason], (unsigned long long)t->bytes[SIDE_CLIENT],
                  (unsigned long long)t->bytes[SIDE_APP],
                  (unsigned long long)(uv_now(loop_of(t)) - t->start_ms));
    stream_close(t->side[SIDE_CLIENT], CONN_CLOSE_TUNNEL_CLOSED);
    stream_close(t->side[SIDE_APP], UC_CLOSE_TUNNEL_CLOSED);
}

static enum tunnel_close_reason error_of(enum tunnel_side side)
{
    return side == SIDE_CLIENT ? TUNNEL_CLOSE_CLIENT_ERROR : TUNNEL_CLOSE_APP_ERROR;
}

/* The streams' close_cb. A close the tunnel did not start (the server's
 * shutdown deadline on the client's stream, a failed write or shutdown)
 * closes the tunnel too; then the replaced kind's close_cb runs with the
 * reason in its own terms. */
static void tunnel_close_cb(struct stream *s, unsigned why)
{
    struct tunnel *t = tunnel_of(s);
    enum tunnel_side side = side_of(t, s);
    if (!t->closing) {
        bool shutdown = side == SIDE_CLIENT &&
                        (why == CONN_CLOSE_SHUTDOWN || why == CONN_CLOSE_SHUTDOWN_FORCED);
        tunnel_close(t, shutdown ? TUNNEL_CLOSE_SHUTDOWN : error_of(side));
    }
    t->orig[side]->close_cb(s, why);
}

/* The streams' closed_cb: the connection's memory goes with its kind's
 * closed_cb; the tunnel's after both. */
static void tunnel_closed_cb(struct stream *s)
{
    struct tunnel *t = tunnel_of(s);
    t->orig[side_of(t, s)]->closed_cb(s);
    if (--t->streams == 0)
        free(t);
}

/* Both sides sent their FIN and everything is written: done. */
static void tunnel_check_done(struct tunnel *t)
{
    if (t->closing || !t->eof[SIDE_CLIENT] || !t->eof[SIDE_APP])
        return;
    if (stream_writes(t->side[SIDE_CLIENT]) > 0 || stream_writes(t->side[SIDE_APP]) > 0)
        return; /* the last written_cb looks again */
    tunnel_close(t, t->first_eof == SIDE_APP ? TUNNEL_CLOSE_APP_CLOSED : TUNNEL_CLOSE_CLIENT_CLOSED);
}

/* --- bytes ------------------------------------------------------------------------ */

/* The streams' parse_cb: bytes read from one side (or held from before the
 * switch) go to the other. All are taken: past tunnel_buffer_bytes queued
 * there, this side stops being read, so at most one read (64 KiB) more
 * than the limit waits. */
static size_t tunnel_parse_cb(struct stream *s, const char *data, size_t n)
{
    struct tunnel *t = tunnel_of(s);
    if (t->closing || n == 0)
        return n;
    enum tunnel_side side = side_of(t, s);
    struct stream *peer = t->side[!side];
    t->last_active = uv_now(loop_of(t));
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
    if (stream_write(peer, &b, 1, STREAM_COPY, NULL, NULL) < 0) {
        tunnel_close(t, error_of(!side));
        return n;
    }
    t->bytes[side] += n;
    *m_bytes[side] += n;
    if (stream_queued(peer) > conf.buffer_bytes)
        stream_pause(s, TUNNEL_PAUSE_FULL);
    return n;
}

/* The streams' read_cb. */
static void tunnel_read_cb(struct stream *s, const char *data, size_t n)
{
    stream_parse(s, data, n);
    stream_read_update(s);
}

/* The streams' written_cb: a queued write to side s finished. Progress;
 * the other side is read again once s's queue is down to half. */
static void tunnel_written_cb(struct stream *s, int status)
{
    struct tunnel *t = tunnel_of(s);
    enum tunnel_side side = side_of(t, s);
    if (status < 0) {
        tunnel_close(t, error_of(side));
        return;
    }
    t->last_active = uv_now(loop_of(t));
    struct stream *peer = t->side[!side];
    if (stream_paused(peer, TUNNEL_PAUSE_FULL) && stream_queued(s) <= conf.buffer_bytes / 2) {
        stream_resume(peer, TUNNEL_PAUSE_FULL);
        stream_read_update(peer);
    }
    tunnel_check_done(t);
}

/* The streams' eof_cb: a FIN is passed on as one (the other side may still
 * answer: a half-closed WebSocket or raw protocol), an error closes. */
static void tunnel_eof_cb(struct stream *s, int err)
{
    struct tunnel *t = tunnel_of(s);
    enum tunnel_side side = side_of(t, s);
    if (t->closing)
        return;
    if (err != UV_EOF) {
        tunnel_close(t, error_of(side));
        return;
    }
    if (t->eof[side])
        return;
    t->eof[side] = true;
    if (t->first_eof < 0)
        t->first_eof = side;
    stream_pause(s, TUNNEL_PAUSE_EOF);
    stream_read_update(s);
    struct stream *peer = t->side[!side];
    unsigned why = !side == SIDE_CLIENT ? CONN_CLOSE_WRITE_ERROR : UC_CLOSE_RESET;
    if (stream_shutdown(peer, why) != 0) {
        tunnel_close(t, error_of(!side));
        return;
    }
    tunnel_check_done(t);
}

static void idle_cb(uv_timer_t *timer)
{
    struct tunnel *t = timer->data;
    uint64_t now = uv_now(loop_of(t));
    if (now - t->last_active >= conf.idle_ms) {
        tunnel_close(t, TUNNEL_CLOSE_IDLE_TIMEOUT);
        return;
    }
    uv_timer_start(&t->timer, idle_cb, t->last_active + conf.idle_ms - now, 0);
}

/* --- starting ---------------------------------------------------------------------- */

void tunnel_start(struct stream *client, struct uconn *uc)
{
    struct stream *app = &uc->s;
    if (stream_closing(client)) { /* the 101 could not be written: the client is gone */
        n_pending--;
        (*m_result[TUNNEL_RESULT_FAILED])++;
        upool_close(uc, UC_CLOSE_CLIENT_GONE);
        return;
    }
    n_pending--;
    n_open++;
    (*m_result[TUNNEL_RESULT_SWITCHED])++;
    struct tunnel *t = mem_calloc(1, sizeof(*t));
    t->side[SIDE_CLIENT] = client;
    t->side[SIDE_APP] = app;
    t->first_eof = -1;
    t->streams = 2;
    for (int i = 0; i < 2; i++) {
        struct stream *s = t->side[i];
        t->orig[i] = s->kind;
        s->kind = &kinds[i];
        s->owner = t;
        stream_resume(s, STREAM_PAUSE_ALL); /* the HTTP owners' reasons mean nothing here */
    }
    uv_timer_init(app->tcp.loop, &t->timer);
    t->timer.data = t;
    stream_attach(app, (uv_handle_t *)&t->timer);
    t->start_ms = t->last_active = uv_now(app->tcp.loop);
    uv_timer_start(&t->timer, idle_cb, conf.idle_ms, 0);
    str_t proto = STR_NULL;
    (void)http_response_header(&uc->parser.resp, "upgrade", &proto);
    log_debug("tunnel open", "protocol=%.*s open=%u", (int)proto.len, proto.p ? proto.p : "", n_open);
    /* What each side sent before the switch goes first: the client's bytes
     * after its request head, the app's after the 101. A parse running on
     * the app's stream (this is its head_cb) takes its leftover once it
     * returns. */
    stream_parse_held(client);
    if (!t->closing)
        stream_parse_held(app);
    if (!t->closing) {
        stream_read_update(client);
        stream_read_update(app);
    }
}

/* --- places, settings, metrics ------------------------------------------------------ */

enum tunnel_admit tunnel_admit(struct req *r, bool websocket, str_t *offer)
{
    enum http_upgrade up = http_request_upgrade(&r->msg, offer);
    if (up == HTTP_UPGRADE_NONE)
        return TUNNEL_ADMIT_PLAIN;
    if (up != HTTP_UPGRADE_OK || !websocket) {
        (*m_result[TUNNEL_RESULT_STRIPPED])++; /* forwarded as plain HTTP, as ever */
        log_debug("upgrade not tunnelled", "why=%s websocket=%s", http_upgrade_name(up),
                  websocket ? "yes" : "no");
        return TUNNEL_ADMIT_PLAIN;
    }
    r->upgrade = true;
    r->close_after = true;
    if (n_open + n_pending >= conf.max) {
        (*m_result[TUNNEL_RESULT_REJECTED])++;
        req_add_header(r, "Retry-After", "1");
        req_error(r, 503, "too_many_tunnels");
        return TUNNEL_ADMIT_REJECTED;
    }
    n_pending++;
    return TUNNEL_ADMIT_UPGRADE;
}

void tunnel_settle(enum tunnel_result result)
{
    n_pending--;
    (*m_result[result])++;
}

void tunnel_configure(const struct cfg_upstream *cfg)
{
    conf.idle_ms = (uint64_t)cfg->tunnel_idle_timeout_ms;
    conf.buffer_bytes = (size_t)cfg->tunnel_buffer_bytes;
    conf.max = (unsigned)cfg->max_tunnels;
}

static double gauge_open(void *arg)
{
    (void)arg;
    return n_open;
}

void tunnel_metrics_init(void)
{
    static const char *const side_names[2] = { "client", "app" };
    static const char *const dir_names[2] = { "client_to_app", "app_to_client" };
    metrics_counter_family("batchd_tunnels_total", "result", result_names, TUNNEL_RESULT_STRIPPED + 1,
                           "Upgrade requests to the app, by how they ended.", m_result);
    metrics_counter_family("batchd_tunnel_closes_total", "reason", close_names, TUNNEL_CLOSE__COUNT,
                           "Tunnels closed, by reason.", m_close);
    metrics_counter_family("batchd_tunnel_bytes_total", "direction", dir_names, 2,
                           "Bytes relayed by tunnels, by direction.", m_bytes);
    metrics_gauge_fn("batchd_tunnels_active", "", "Tunnels open (the app answered 101).", gauge_open, NULL);
    for (int i = 0; i < 2; i++) {
        kinds[i] = (struct stream_kind){
            .name = i == SIDE_CLIENT ? "tunnel_client" : "tunnel_app",
            STREAM_CALLBACKS(tunnel),
            /* The tunnel watches the queues itself: it pauses the other side. */
            .over_limit = STREAM_OVER_LIMIT_NONE,
        };
        uint64_t *m[1];
        metrics_counter_family("batchd_tunnel_pauses_total", "side", &side_names[i], 1,
                               "Times a tunnel stopped reading one side because the other side's queue passed tunnel_buffer_bytes.",
                               m);
        kinds[i].m_pauses[__builtin_ctz(TUNNEL_PAUSE_FULL)] = m[0];
    }
}
