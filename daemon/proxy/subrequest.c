/*
 * subrequest: batchd's own GET to the app. See subrequest.h.
 *
 *   subrequest_start ──upool_acquire──> WAITING ─> CONNECTING ─> SENDING   (px.state,
 *        │                                                          │       the pool's)
 *        │ timer (timeout_ms): TIMEOUT, the line left,               ▼
 *        │ the connection closed             head_cb: status, the wanted header kept
 *        │                                   body_cb: counted and dropped (> 64 KiB:
 *        │                                            TOO_LARGE, the connection closed)
 *        ▼                                   complete: the pool takes the connection
 *      DONE <── cb(ctx, answer) <── sub_end <──────── back (keep-alive) and calls done
 *
 * To the pool a sub-request is a struct proxy (its first member) with no
 * client: px.r stays NULL, px.ops is sub_ops. So the pool's line, states
 * and limits serve it unchanged. It is not on the pool's deadline list,
 * whose order assumes one timeout_ms for every entry: its own timer bounds
 * the whole exchange. Like a proxied GET it is sent again, once, on a new
 * connection when a pooled keep-alive connection closes before any byte
 * of answer (the app may have closed it just as it was picked).
 */
#include "daemon/proxy/subrequest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/proxy/proxy_int.h"
#include "proto/http.h"
#include "proto/mem.h"

struct subrequest {
    struct proxy px;            /* first: the pool's handle (state, connection, line) */
    uv_timer_t timer;           /* timeout_ms, start to the answer's last byte */
    subrequest_fn cb;
    void *ctx;
    char *want;                 /* the answer header to keep, or NULL */
    bool starting;              /* inside subrequest_start: it reports a failure */
    enum subrequest_value value_state;
    uint64_t body_bytes;
    size_t value_len;
    char value[SUBREQUEST_VALUE_MAX];
};

static const char *const result_names[] = {
#define X(name, text) text,
    SUBREQUEST_RESULTS(X)
#undef X
};

const char *subrequest_result_name(enum subrequest_result r)
{
    return result_names[r];
}

void subrequest_metrics_init(struct upstream *u)
{
    metrics_counter_family("batchd_upstream_subrequests_total", "result", result_names, SUBREQUEST__COUNT,
                           "batchd's own requests to the app (forward auth checks), by how they ended.", u->m_sub);
}

/* --- the end ------------------------------------------------------------------- */

static void sub_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

/* Frees sr once its timer is closed. */
static void sub_release(struct subrequest *sr)
{
    buf_deinit(&sr->px.head);
    free(sr->want);
    sr->timer.data = sr;
    uv_close((uv_handle_t *)&sr->timer, sub_closed_cb);
}

/* Lets go of the pool (upool_leave) and of the timer. */
static void sub_let_go(struct subrequest *sr, enum uc_close_reason why)
{
    upool_leave(&sr->px, why);
    uv_timer_stop(&sr->timer);
    sr->px.state = PX_DONE;
}

/* Ends sr: counted, released, then the callback (after the release: it
 * may start another sub-request). */
static void sub_end(struct subrequest *sr, enum subrequest_result result, enum uc_close_reason why)
{
    struct proxy *px = &sr->px;
    if (px->state == PX_DONE)
        return;
    sub_let_go(sr, why);
    (*px->up->m_sub[result])++;
    if (result != SUBREQUEST_ANSWERED)
        log_debug("sub-request failed", "result=%s attempt=%s", result_names[result],
                  proxy_attempt_name(px->attempt));
    if (sr->starting)
        return; /* subrequest_start returns the error; it releases sr */
    char value[SUBREQUEST_VALUE_MAX];
    struct subrequest_answer a = {
        .result = result,
        .status = result == SUBREQUEST_ANSWERED ? px->status : 0,
        .value_state = result == SUBREQUEST_ANSWERED ? sr->value_state : SUBREQUEST_VALUE_ABSENT,
    };
    if (a.value_state == SUBREQUEST_VALUE_OK) {
        memcpy(value, sr->value, sr->value_len);
        a.value = str_make(value, sr->value_len);
    }
    subrequest_fn cb = sr->cb;
    void *ctx = sr->ctx;
    sub_release(sr);
    cb(ctx, &a);
}

static void sub_timeout_cb(uv_timer_t *t)
{
    struct subrequest *sr = t->data;
    log_debug("sub-request timed out", "state=%s answer=%s", proxy_state_name(sr->px.state),
              proxy_answer_name(sr->px.answer));
    sub_end(sr, SUBREQUEST_TIMEOUT, UC_CLOSE_TIMEOUT);
}

void subrequest_cancel(struct subrequest *sr)
{
    if (sr->px.state != PX_DONE)
        sub_let_go(sr, UC_CLOSE_CLIENT_GONE);
    sub_release(sr);
}

/* --- the answer ------------------------------------------------------------------ */

static struct subrequest *sub_of(struct http_rparser *p)
{
    struct uconn *uc = p->data;
    return (struct subrequest *)uc->px; /* px is a subrequest's first member */
}

/* A value batchd may hand on: no control characters (CR and LF included:
 * llhttp refuses them raw, but obs-fold and NUL are not its business). */
static bool value_clean(str_t v)
{
    for (size_t i = 0; i < v.len; i++) {
        unsigned char c = (unsigned char)v.p[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

static void keep_value(struct subrequest *sr, const struct http_response *resp)
{
    sr->value_state = SUBREQUEST_VALUE_ABSENT;
    if (sr->want == NULL)
        return;
    if (resp->folded) { /* llhttp joined lines of a value: not the header it looks like */
        sr->value_state = SUBREQUEST_VALUE_INVALID;
        return;
    }
    str_t want = str_cstr(sr->want);
    for (uint32_t i = 0; i < resp->n_headers; i++) {
        if (!str_eq_ci(http_header_name(resp, i), want))
            continue;
        str_t v = http_header_value(resp, i);
        /* Twice is as bad as garbled: which one would be meant? */
        if (sr->value_state != SUBREQUEST_VALUE_ABSENT || v.len > sizeof(sr->value) || !value_clean(v)) {
            sr->value_state = SUBREQUEST_VALUE_INVALID;
            return;
        }
        memcpy(sr->value, v.p, v.len);
        sr->value_len = v.len;
        sr->value_state = SUBREQUEST_VALUE_OK;
    }
}

static int sub_head_cb(struct http_rparser *p, struct http_response *resp)
{
    struct subrequest *sr = sub_of(p);
    if (sr == NULL)
        return HTTP_PARSER_PAUSE;
    sr->px.answer = PX_ANSWER_ARRIVING;
    sr->px.status = resp->status;
    keep_value(sr, resp);
    return 0;
}

static int sub_body_cb(struct http_rparser *p, const char *at, size_t n)
{
    struct subrequest *sr = sub_of(p);
    if (sr == NULL)
        return HTTP_PARSER_PAUSE;
    sr->body_bytes += n;
    if (sr->body_bytes <= SUBREQUEST_BODY_MAX)
        return 0;
    /* Closing mid-parse is safe: the stream frees nothing before its
     * handles are closed, and drops what this parse leaves. */
    sub_end(sr, SUBREQUEST_TOO_LARGE, UC_CLOSE_ANSWER_TOO_LARGE);
    return HTTP_PARSER_PAUSE;
}

static const struct http_rparser_cbs sub_rparser_cbs = {
    .head_cb = sub_head_cb,
    .body_cb = sub_body_cb,
    .complete_cb = upool_complete_cb, /* then sub_done */
};

/* --- the pool's calls ---------------------------------------------------------- */

static void sub_ready(struct proxy *px)
{
    struct subrequest *sr = (struct subrequest *)px;
    struct uconn *uc = px->uc;
    http_rparser_reset(&uc->parser, false);
    px->state = PX_SENDING;
    px->answer = PX_ANSWER_NONE;
    sr->body_bytes = 0;
    sr->value_state = SUBREQUEST_VALUE_ABSENT;
    /* Copied: a cancel frees the head while the write may still be queued. */
    uv_buf_t b = uv_buf_init(px->head.data, (unsigned)px->head.len);
    (void)stream_write(&uc->s, &b, 1, STREAM_COPY, NULL, NULL); /* a failure shows on the read side */
    upool_read_resume(uc);
}

static void sub_done(struct proxy *px)
{
    sub_end((struct subrequest *)px, SUBREQUEST_ANSWERED, UC_CLOSE_NOT_REUSABLE);
}

static void sub_fail(struct proxy *px, enum px_error kind)
{
    struct subrequest *sr = (struct subrequest *)px;
    if (px->state == PX_DONE)
        return;
    if (upool_retry(px, kind)) /* a GET: safe to send twice */
        return;
    static const enum subrequest_result result_of[PX_ERR__COUNT] = {
        [PX_ERR_REFUSED] = SUBREQUEST_REFUSED,
        [PX_ERR_RESET] = SUBREQUEST_RESET,
        [PX_ERR_TIMEOUT] = SUBREQUEST_TIMEOUT,
        [PX_ERR_BAD_RESPONSE] = SUBREQUEST_BAD_RESPONSE,
        [PX_ERR_CONNECT_TIMEOUT] = SUBREQUEST_CONNECT_TIMEOUT,
    };
    sub_end(sr, result_of[kind], UC_CLOSE_RESET);
}

static const struct px_ops sub_ops = {
    .rparser = &sub_rparser_cbs,
    .ready = sub_ready,
    .done = sub_done,
    .fail = sub_fail,
    /* No .written (the head is all it sends) and no .expired: its own
     * timer bounds it, never the pool's deadline list (see the top). */
};

/* --- the start ------------------------------------------------------------------ */

/* Visible ASCII, no space: the path goes into the request line as is. */
static bool path_valid(const char *p)
{
    if (p == NULL || p[0] != '/')
        return false;
    for (; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return false;
    return true;
}

static int build_head(struct buf *h, const struct upstream *u, const struct subrequest_opts *o)
{
    if (!path_valid(o->path))
        return -EINVAL;
    buf_appendf(h, "GET %s HTTP/1.1\r\nHost: %s\r\n", o->path, u->cfg->url.host);
    for (unsigned i = 0; i < o->n_headers; i++) {
        const struct subrequest_header *x = &o->headers[i];
        /* Refused, not cleaned: a value that needs cleaning is not the one
         * the client sent, and CR/LF would start a header of their own. */
        if (!http_token_valid(x->name, strlen(x->name)) || !value_clean(x->value))
            return -EINVAL;
        buf_appendf(h, "%s: ", x->name);
        buf_append(h, x->value.p, x->value.len);
        buf_append(h, "\r\n", 2);
    }
    buf_append(h, "\r\n", 2);
    return 0;
}

int subrequest_start(struct upstream *u, const struct subrequest_opts *o, subrequest_fn cb, void *ctx,
                     struct subrequest **out)
{
    if (upool_full(u)) {
        (*u->m_sub[SUBREQUEST_POOL_FULL])++;
        return -EBUSY;
    }
    struct subrequest *sr = mem_calloc(1, sizeof(*sr));
    struct proxy *px = &sr->px;
    px->ops = &sub_ops;
    px->up = u;
    px->start_ns = uv_hrtime();
    px->state = PX_NEW;
    STAILQ_INIT(&px->queue);
    if (build_head(&px->head, u, o) != 0) {
        buf_deinit(&px->head);
        free(sr);
        return -EINVAL;
    }
    sr->cb = cb;
    sr->ctx = ctx;
    sr->want = o->want ? mem_strdup(o->want) : NULL;
    uv_timer_init(u->loop, &sr->timer);
    sr->timer.data = sr;
    uv_timer_start(&sr->timer, sub_timeout_cb, o->timeout_ms, 0);
    sr->starting = true;
    upool_acquire(u, px); /* may fail at once: the connect could not start */
    sr->starting = false;
    if (px->state == PX_DONE) {
        sub_release(sr);
        return -ECONNREFUSED;
    }
    *out = sr;
    return 0;
}
