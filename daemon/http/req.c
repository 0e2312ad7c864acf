/*
 * req: requests, responses and their pool. See req.h.
 *
 * Request objects are recycled through a small free list (proto/freelist.h)
 * with their buffers, so a keep-alive request costs no malloc once the
 * process is warm. The list is bounded (REQ_POOL_MAX) and oversized buffers
 * are not kept.
 */
#include "daemon/http/req.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/http/conn.h"
#include "daemon/http/encode.h"
#include "daemon/metrics.h"
#include "proto/freelist.h"
#include "proto/jtext.h"
#include "proto/mem.h"

#define REQ_POOL_MAX 512
#define REQ_KEEP_HEAD_BYTES (16 * 1024)
#define REQ_KEEP_BODY_BYTES (64 * 1024)

static struct freelist pool = FREELIST_INIT(REQ_POOL_MAX);

/* requests by method and status class */
enum { M_GET, M_HEAD, M_POST, M_PUT, M_PATCH, M_DELETE, M_PURGE, M_OPTIONS, M_OTHER, M__COUNT };
static const char *const method_labels[M__COUNT] = { "GET",    "HEAD",  "POST",    "PUT",  "PATCH",
                                                      "DELETE", "PURGE", "OPTIONS", "other" };
/* status classes: 1xx .. 5xx; anything else counts as 5xx */
enum { S_1XX, S_2XX, S_3XX, S_4XX, S_5XX, S__COUNT };
static uint64_t *m_requests[M__COUNT][S__COUNT];
static struct metric_hist *m_duration;

void req_metrics_init(void)
{
    char labels[64];
    for (int m = 0; m < M__COUNT; m++) {
        for (int c = 0; c < S__COUNT; c++) {
            snprintf(labels, sizeof(labels), "method=\"%s\",status=\"%dxx\"", method_labels[m], c + 1);
            m_requests[m][c] = metrics_counter("batchd_http_requests_total", labels,
                                               "HTTP requests answered, by method and status class.");
        }
    }
    m_duration = metrics_histogram("batchd_http_request_duration_seconds", "",
                                   "Time from the first byte of a request to its response being queued.",
                                   metrics_latency_bounds, metrics_latency_n);
}

static int method_index(const struct req *r)
{
    if (!r->head_done)
        return M_OTHER;
    switch (r->msg.method) {
    case HTTP_GET: return M_GET;
    case HTTP_HEAD: return M_HEAD;
    case HTTP_POST: return M_POST;
    case HTTP_PUT: return M_PUT;
    case HTTP_PATCH: return M_PATCH;
    case HTTP_DELETE: return M_DELETE;
    case HTTP_PURGE: return M_PURGE;
    case HTTP_OPTIONS: return M_OPTIONS;
    default: return M_OTHER;
    }
}

static int status_index(int status)
{
    int cls = status / 100 - 1;
    return cls >= S_1XX && cls <= S_5XX ? cls : S_5XX;
}

void req_observe(struct req *r)
{
    (*m_requests[method_index(r)][status_index(r->status)])++;
    metrics_observe(m_duration, (double)(uv_hrtime() - r->start_ns) / 1e9);
}

/* --- pool ---------------------------------------------------------------- */

struct req *req_get(void)
{
    struct req *r = freelist_get(&pool);
    if (r) {
        memset(&r->link, 0, sizeof(r->link)); /* the free list's link */
        return r;
    }
    r = mem_calloc(1, sizeof(*r));
    http_request_init(&r->msg);
    return r;
}

static void release_holds(struct req *r)
{
    for (unsigned i = 0; i < r->n_holds; i++)
        r->holds[i].release(r->holds[i].obj);
    r->n_holds = 0;
    r->n_parts = 0;
}

static void req_destroy(void *p)
{
    struct req *r = p;
    release_holds(r);
    free(r->parts);
    free(r->holds);
    http_request_deinit(&r->msg);
    buf_deinit(&r->body);
    buf_deinit(&r->zbody);
    buf_deinit(&r->head_extra);
    free(r);
}

void req_put(struct req *r)
{
    router_unref(r->router);
    release_holds(r);
    if (r->msg.head.cap > REQ_KEEP_HEAD_BYTES || r->msg.body.cap > REQ_KEEP_BODY_BYTES ||
        r->body.cap > REQ_KEEP_BODY_BYTES || r->zbody.cap > REQ_KEEP_BODY_BYTES ||
        r->head_extra.cap > REQ_KEEP_HEAD_BYTES ||
        pool.len >= pool.max) {
        req_destroy(r);
        return;
    }
    struct http_request msg = r->msg;
    struct buf body = r->body, zbody = r->zbody, extra = r->head_extra;
    uv_buf_t *parts = r->parts;
    struct req_hold *holds = r->holds;
    unsigned cap_parts = r->cap_parts, cap_holds = r->cap_holds;
    http_request_reset(&msg);
    buf_reset(&body);
    buf_reset(&zbody);
    buf_reset(&extra);
    memset(r, 0, offsetof(struct req, head_fixed));
    memset((char *)r + offsetof(struct req, head_fixed) + sizeof(r->head_fixed), 0,
           sizeof(*r) - offsetof(struct req, head_fixed) - sizeof(r->head_fixed));
    r->msg = msg;
    r->body = body;
    r->zbody = zbody;
    r->head_extra = extra;
    r->parts = parts;
    r->holds = holds;
    r->cap_parts = cap_parts;
    r->cap_holds = cap_holds;
    bool kept = freelist_put(&pool, r);
    assert(kept); /* room checked above */
    (void)kept;
}

void req_pool_drain(void)
{
    freelist_drain(&pool, req_destroy);
}

/* --- reading the request ------------------------------------------------- */

str_t req_header(const struct req *r, const char *name)
{
    str_t v = STR_NULL;
    http_request_header(&r->msg, name, &v);
    return v;
}

bool req_param(const struct req *r, const char *name, str_t *value)
{
    return url_params_get(&r->params, name, value);
}

int req_param_decoded(const struct req *r, const char *name, struct buf *out)
{
    str_t raw;
    if (!req_param(r, name, &raw))
        return -EINVAL;
    return url_decode(raw, false, out);
}

int req_peer_addr(const struct req *r, struct sockaddr_storage *ss)
{
    if (r->conn == NULL) {
        memset(ss, 0, sizeof(*ss));
        return UV_ENOTCONN;
    }
    return conn_peer_addr(r->conn, ss);
}

const char *req_peer(const struct req *r, char *out, size_t cap)
{
    if (r->conn == NULL) {
        snprintf(out, cap, "?");
        return out;
    }
    return conn_peer(r->conn, out, cap);
}

bool req_memo_get(const struct req *r, char kind, str_t cred, uint32_t gen, uint64_t now_ms,
                  str_t *principal)
{
    return r->conn != NULL && conn_memo_get(r->conn, kind, cred, gen, now_ms, principal);
}

void req_memo_put(struct req *r, char kind, str_t cred, const char *principal, size_t n,
                  uint32_t gen, uint64_t expires_ms)
{
    if (r->conn != NULL)
        conn_memo_put(r->conn, kind, cred, principal, n, gen, expires_ms);
}

int req_fd(const struct req *r)
{
    return r->conn ? conn_fd(r->conn) : -1;
}

/* --- building the response ----------------------------------------------- */

void req_add_header(struct req *r, const char *name, const char *value)
{
    buf_append_str(&r->head_extra, name);
    buf_append(&r->head_extra, ": ", 2);
    buf_append_str(&r->head_extra, value);
    buf_append(&r->head_extra, "\r\n", 2);
}

void req_add_header_line(struct req *r, const char *line, size_t len)
{
    buf_append(&r->head_extra, line, len);
}

/* The Date header changes once a second; format it once a second. */
static const char *date_now(size_t *len)
{
    static char cached[32];
    static size_t cached_len;
    static time_t cached_sec = -1;
    time_t now = time(NULL);
    if (now != cached_sec) {
        cached_len = http_date_format(now, cached);
        cached_sec = now;
    }
    *len = cached_len;
    return cached;
}

#define PUT(lit) (memcpy(p, lit, sizeof(lit) - 1), p += sizeof(lit) - 1)

/* Status line and the standard headers, without the blank line. */
static void build_head(struct req *r, int64_t content_length, bool chunked)
{
    char *p = r->head_fixed;
    char num[24];
    PUT("HTTP/1.1 ");
    p += fmt_u64(p, (uint64_t)r->status);
    *p++ = ' ';
    const char *reason = http_status_reason(r->status);
    size_t rl = strlen(reason);
    memcpy(p, reason, rl);
    p += rl;
    PUT("\r\nServer: batchd\r\nDate: ");
    size_t dl;
    const char *date = date_now(&dl);
    memcpy(p, date, dl);
    p += dl;
    if (r->content_type) {
        PUT("\r\nContent-Type: ");
        size_t cl = strlen(r->content_type);
        if (cl > 120)
            cl = 120;
        memcpy(p, r->content_type, cl);
        p += cl;
    }
    if (content_length >= 0 && r->status != 204) { /* RFC 9110 8.6: never on a 204 */
        PUT("\r\nContent-Length: ");
        size_t n = fmt_u64(num, (uint64_t)content_length);
        memcpy(p, num, n);
        p += n;
    } else if (chunked) {
        PUT("\r\nTransfer-Encoding: chunked");
    }
    if (r->close_after)
        PUT("\r\nConnection: close");
    else if (r->msg.version_minor == 0 && r->head_done)
        PUT("\r\nConnection: keep-alive");
    PUT("\r\n");
    r->head_fixed_len = (uint32_t)(p - r->head_fixed);
}

unsigned req_gather(struct req *r, uv_buf_t *iov)
{
    /* A 304 says nothing of the length (RFC 9110 8.6: only the 200's
     * length could be sent, and it is not needed). */
    build_head(r, r->status == 304 ? -1 : (int64_t)r->body_len, false);
    buf_append(&r->head_extra, "\r\n", 2);
    unsigned n = 0;
    iov[n++] = uv_buf_init(r->head_fixed, r->head_fixed_len);
    iov[n++] = uv_buf_init(r->head_extra.data, (unsigned)r->head_extra.len);
    if (r->head_only) {
    } else if (r->n_parts) {
        memcpy(iov + n, r->parts, r->n_parts * sizeof(*iov));
        n += r->n_parts;
    } else if (r->body_len > 0) {
        iov[n++] = uv_buf_init((char *)r->body_ptr, (unsigned)r->body_len);
    }
    r->bytes_out = r->head_fixed_len + r->head_extra.len + (r->head_only ? 0 : r->body_len);
    return n;
}

/* --- answering ------------------------------------------------------------ */

static void finish(struct req *r, int status, const char *content_type)
{
    assert(r->state == REQ_HANDLING);
    r->status = status;
    r->content_type = content_type;
    r->state = REQ_READY;
    if (r->conn == NULL) { /* the client left; nobody to answer */
        req_observe(r);
        req_put(r);
        return;
    }
    if (r->encodable)
        encode_answer(r);
    conn_req_ready(r->conn);
}

void req_respond(struct req *r, int status, const char *content_type, const void *body, size_t len)
{
    buf_reset(&r->body);
    buf_append(&r->body, body, len);
    r->body_ptr = r->body.data;
    r->body_len = len;
    finish(r, status, content_type);
}

void req_respond_buf(struct req *r, int status, const char *content_type, struct buf *body)
{
    struct buf old = r->body;
    r->body = *body;
    *body = old;
    buf_reset(body);
    r->body_ptr = r->body.data;
    r->body_len = r->body.len;
    finish(r, status, content_type);
}

void req_respond_body(struct req *r, int status, const char *content_type)
{
    r->body_ptr = r->body.data;
    r->body_len = r->body.len;
    finish(r, status, content_type);
}

void req_respond_static(struct req *r, int status, const char *content_type, const char *body,
                        size_t len)
{
    r->body_ptr = body;
    r->body_len = len;
    finish(r, status, content_type);
}

void req_hold(struct req *r, void (*release)(void *obj), void *obj)
{
    if (r->n_holds == r->cap_holds) {
        r->cap_holds = r->cap_holds ? 2 * r->cap_holds : 8;
        r->holds = mem_realloc(r->holds, r->cap_holds * sizeof(*r->holds));
    }
    r->holds[r->n_holds++] = (struct req_hold){ release, obj };
}

void req_gather_begin(struct req *r, unsigned max_pieces, size_t bytes)
{
    unsigned cap = max_pieces < REQ_MAX_PARTS ? max_pieces : REQ_MAX_PARTS;
    if (cap > r->cap_parts) {
        r->cap_parts = cap < 8 ? 8 : cap;
        r->parts = mem_realloc(r->parts, r->cap_parts * sizeof(*r->parts));
    }
    r->n_parts = 0;
    buf_reset(&r->body);
    buf_reserve(&r->body, bytes); /* runs point into it: it must not move */
    r->body_len = 0;
}

bool req_gather_piece(struct req *r, const char *p, size_t len)
{
    if (len == 0)
        return false;
    r->body_len += len;
    if (len >= REQ_COPY_BELOW && r->n_parts + 2 <= r->cap_parts) {
        r->parts[r->n_parts++] = uv_buf_init((char *)p, (unsigned)len);
        return true;
    }
    assert(r->body.len + len < r->body.cap); /* reserved by req_gather_begin: nothing moves */
    char *end = r->body.data + r->body.len;
    buf_append(&r->body, p, len);
    uv_buf_t *last = r->n_parts ? &r->parts[r->n_parts - 1] : NULL;
    if (last && last->base + last->len == end && end != NULL)
        last->len += (unsigned)len; /* the run goes on */
    else
        r->parts[r->n_parts++] = uv_buf_init(end, (unsigned)len);
    return false;
}

void req_respond_gathered(struct req *r, int status, const char *content_type)
{
    if (r->n_parts == 1 && r->parts[0].base == r->body.data)
        r->n_parts = 0; /* all copied: the plain body */
    r->body_ptr = r->body.data;
    finish(r, status, content_type);
}

void req_error(struct req *r, int status, const char *code)
{
    buf_reset(&r->body);
    buf_append_str(&r->body, "{\"error\":");
    jtext_append_string(&r->body, code, strlen(code));
    buf_append_str(&r->body, "}\n");
    r->body_ptr = r->body.data;
    r->body_len = r->body.len;
    finish(r, status, "application/json");
}

/* --- streaming ----------------------------------------------------------- */

void req_stream_start(struct req *r, int status, const char *content_type, bool chunked)
{
    assert(r->state == REQ_HANDLING);
    assert(r->abort_cb != NULL); /* a stream must be able to let go of its client */
    r->status = status;
    r->content_type = content_type;
    r->state = REQ_STREAMING;
    r->stream_chunked = chunked;
    if (!chunked)
        r->close_after = true; /* the body ends when the connection does */
    if (r->conn == NULL)
        return;
    build_head(r, -1, chunked);
    buf_append(&r->head_extra, "\r\n", 2);
    /* Copied if not written at once: the request may end before a queued
     * write would have finished. */
    uv_buf_t iov[2] = { uv_buf_init(r->head_fixed, r->head_fixed_len),
                        uv_buf_init(r->head_extra.data, (unsigned)r->head_extra.len) };
    conn_write_copy(r->conn, iov, 2);
}

bool req_should_close(const struct req *r)
{
    return r->close_after || (r->conn && conn_draining(r->conn));
}

void req_stream_start_raw(struct req *r, int status, struct buf *head, bool chunked)
{
    assert(r->state == REQ_HANDLING);
    assert(r->abort_cb != NULL);
    r->status = status;
    r->state = REQ_STREAMING;
    r->stream_chunked = chunked;
    if (req_should_close(r))
        r->close_after = true;
    struct buf old = r->head_extra;
    r->head_extra = *head;
    *head = old;
    buf_reset(head);
    r->head_pending = true;
}

/* The pending head first, then bufs, as one write. */
static int req_write(struct req *r, const uv_buf_t *bufs, unsigned n, req_write_fn cb, void *ctx,
                     bool copy)
{
    if (r->conn == NULL) {
        if (cb)
            cb(ctx, UV_ECANCELED);
        return UV_ECANCELED;
    }
    uv_buf_t iov[64];
    unsigned k = 0;
    if (n + (r->head_pending ? 1 : 0) > sizeof(iov) / sizeof(iov[0])) {
        /* Callers pass a handful; more would be a bug, not a short write. */
        if (cb)
            cb(ctx, UV_EINVAL);
        return UV_EINVAL;
    }
    if (r->head_pending) {
        r->head_pending = false;
        if (copy || cb == NULL) {
            iov[k++] = uv_buf_init(r->head_extra.data, (unsigned)r->head_extra.len);
        } else {
            /* The caller's bytes outlive the write, the head might not. */
            uv_buf_t h = uv_buf_init(r->head_extra.data, (unsigned)r->head_extra.len);
            int rc = conn_write_copy(r->conn, &h, 1);
            if (rc != 0) {
                if (cb)
                    cb(ctx, rc);
                return rc;
            }
        }
    }
    for (unsigned i = 0; i < n; i++)
        iov[k++] = bufs[i];
    /* Without a callback nothing tells when the bytes are free: copy what
     * the socket does not take at once. */
    if (copy || cb == NULL)
        return conn_write_copy(r->conn, iov, k);
    return conn_write(r->conn, iov, k, cb, ctx);
}

int req_stream_write(struct req *r, const uv_buf_t *bufs, unsigned n, req_write_fn cb, void *ctx)
{
    return req_write(r, bufs, n, cb, ctx, false);
}

int req_stream_write_copy(struct req *r, const uv_buf_t *bufs, unsigned n)
{
    return req_write(r, bufs, n, NULL, NULL, true);
}

void req_stream_compact(struct req *r)
{
    http_request_deinit(&r->msg);
    http_request_init(&r->msg);
    r->params.n = 0;
    /* head_extra stays: the response head may still be queued for writing. */
}

size_t req_stream_queued(const struct req *r)
{
    return r->conn ? conn_write_queued(r->conn) : 0;
}

void req_stream_end(struct req *r)
{
    req_stream_end_reason(r, CONN_CLOSE_STREAM_ENDED);
}

void req_stream_end_reason(struct req *r, enum conn_close_reason reason)
{
    static const char last_chunk[] = "0\r\n\r\n";
    struct conn *c = r->conn;
    if (c == NULL) {
        req_observe(r);
        req_put(r);
        return;
    }
    if (r->state == REQ_STREAMING && (r->stream_chunked || r->head_pending)) {
        uv_buf_t b = uv_buf_init((char *)last_chunk, sizeof(last_chunk) - 1);
        req_write(r, &b, r->stream_chunked ? 1 : 0, NULL, NULL, true);
    }
    bool close_conn = r->close_after;
    conn_req_stream_done(c, r, close_conn, reason);
}

void req_stream_abort(struct req *r, enum conn_close_reason reason)
{
    struct conn *c = r->conn;
    if (c == NULL) {
        req_observe(r);
        req_put(r);
        return;
    }
    conn_req_abort(c, r, reason);
}

struct stream *req_upgrade(struct req *r, const struct buf *head)
{
    if (r->conn == NULL)
        return NULL;
    return conn_req_upgrade(r->conn, r, head);
}

void req_body_resume(struct req *r)
{
    if (r->conn)
        conn_body_resume(r->conn);
}
