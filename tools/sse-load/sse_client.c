/*
 * sse_client: see sse_client.h.
 *
 * Reading path, all inside one read callback:
 *
 *   read_cb ─▶ http_resp_execute ─▶ on_head_cb (status, Content-Type)
 *                                └▶ on_body_cb ─▶ sse_parse_execute ─▶ line_cb
 *                                                       (blank line) ─▶ dispatch ─▶ on_event_cb
 *
 * Any step may close the client; each one checks the state afterwards and
 * stops, and the memory is only released by the owner after on_closed_cb.
 */
#include "sse_client.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/mem.h"
#include "payload.h"
#include "util.h"

#define MAX_RETRY_MS 3600000u

static uint64_t read_now_ns;  /* realtime clock of the current read, 0 = unread */

static const char *const reason_names[] = {
#define X(name, text) text,
    SSE_CLOSE_REASONS(X)
#undef X
};

struct write_req {
    uv_write_t req;
    char data[];
};

#define client_of(handle) \
    ((struct sse_client *)((char *)(handle) - offsetof(struct sse_client, tcp)))

const char *sse_client_reason_name(enum sse_close_reason why)
{
    return why < SSE_CLOSE__COUNT ? reason_names[why] : "?";
}

static void event_reset(struct sse_client *c)
{
    c->ev_own_id = false;
    c->ev_id_cut = false;
    c->ev_payload = false;
    c->ev_type = SSE_EVENT_MESSAGE;
    c->ev_data_lines = 0;
    c->ev_seq = 0;
    c->ev_t = 0;
}

void sse_client_init(struct sse_client *c, const struct sse_client_conf *conf,
                     uint32_t channel, bool no_read)
{
    memset(c, 0, sizeof(*c));
    c->conf = conf;
    c->channel = channel;
    c->no_read = no_read;
    c->state = SSE_CLIENT_IDLE;
    c->close_reason = SSE_CLOSE_NONE;
}

static void close_cb(uv_handle_t *h)
{
    struct sse_client *c = client_of(h);

    c->state = SSE_CLIENT_IDLE;
    c->conf->cbs->on_closed_cb(c);
}

void sse_client_close(struct sse_client *c, enum sse_close_reason why, int err)
{
    if (c->state == SSE_CLIENT_IDLE || c->state == SSE_CLIENT_CLOSING)
        return;
    c->close_reason = (uint8_t)why;
    c->close_err = err;
    c->state = SSE_CLIENT_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, close_cb);
}

/* --- parsing ------------------------------------------------------------ */

static bool value_is(const struct sse_field *f, const char *lit)
{
    size_t n = strlen(lit);
    return f->value_len == n && f->value_kept == n && memcmp(f->value, lit, n) == 0;
}

static bool name_is(const struct sse_field *f, const char *lit)
{
    size_t n = strlen(lit);
    return !f->name_cut && f->name_len == n && memcmp(f->name, lit, n) == 0;
}

static void dispatch(struct sse_client *c)
{
    struct sse_event ev;

    /* The SSE rules: the last event id is updated even when the event has
     * no data, and an event without data is not dispatched. */
    memcpy(c->last_id, c->id_buf, sizeof(c->last_id));
    if (c->ev_data_lines == 0) {
        event_reset(c);
        return;
    }
    if (read_now_ns == 0)
        read_now_ns = util_real_ns();
    ev.id = c->id_buf;
    ev.own_id = c->ev_own_id;
    ev.id_cut = c->ev_id_cut;
    ev.payload = c->ev_payload;
    ev.type = c->ev_type;
    ev.data_lines = c->ev_data_lines;
    ev.seq = c->ev_seq;
    ev.t = c->ev_t;
    ev.recv_ns = read_now_ns;
    event_reset(c);
    c->conf->cbs->on_event_cb(c, &ev);
}

static void field(struct sse_client *c, const struct sse_field *f)
{
    if (name_is(f, "data")) {
        if (c->ev_data_lines++ == 0)
            c->ev_payload = payload_parse(f->value, f->value_kept, &c->ev_seq, &c->ev_t);
        else
            c->ev_payload = false;  /* a payload is one line */
    } else if (name_is(f, "id")) {
        size_t n = f->value_kept;
        if (memchr(f->value, '\0', n) != NULL)
            return;  /* ignored, per the SSE rules */
        c->ev_own_id = true;
        c->ev_id_cut = f->value_len > SSE_CLIENT_ID_MAX - 1;
        if (n > SSE_CLIENT_ID_MAX - 1)
            n = SSE_CLIENT_ID_MAX - 1;
        memcpy(c->id_buf, f->value, n);
        c->id_buf[n] = '\0';
    } else if (name_is(f, "event")) {
        const char *want = c->conf->event_type;
        if (want != NULL && value_is(f, want))
            c->ev_type = SSE_EVENT_EXPECTED;
        else if (value_is(f, "message"))
            c->ev_type = SSE_EVENT_MESSAGE;
        else if (value_is(f, "reset"))
            c->ev_type = SSE_EVENT_RESET;
        else
            c->ev_type = SSE_EVENT_OTHER;
    } else if (name_is(f, "retry")) {
        uint64_t ms = 0;
        if (f->value_len == 0 || f->value_len != f->value_kept || f->value_len > 10)
            return;
        for (size_t i = 0; i < f->value_len; i++) {
            if (f->value[i] < '0' || f->value[i] > '9')
                return;
            ms = ms * 10 + (uint64_t)(f->value[i] - '0');
        }
        c->retry_ms = (uint32_t)(ms > MAX_RETRY_MS ? MAX_RETRY_MS : ms);
    }
}

static int line_cb(void *ctx, const char *line, size_t kept, size_t len)
{
    struct sse_client *c = ctx;
    struct sse_field f;

    if (len == 0) {
        dispatch(c);
    } else {
        sse_parse_field(line, kept, len, &f);
        if (!f.comment)
            field(c, &f);
    }
    return c->state == SSE_CLIENT_STREAMING ? 0 : 1;
}

static int on_head_cb(void *ctx, const struct http_resp *r)
{
    struct sse_client *c = ctx;

    if (r->status != 200) {
        sse_client_close(c, SSE_CLOSE_HTTP_STATUS, r->status);
        return 1;
    }
    if (!(r->flags & HTTP_RESP_EVENT_STREAM)) {
        sse_client_close(c, SSE_CLOSE_NOT_EVENT_STREAM, r->status);
        return 1;
    }
    c->state = SSE_CLIENT_STREAMING;
    c->conf->cbs->on_ready_cb(c);
    return c->state == SSE_CLIENT_STREAMING ? 0 : 1;
}

static int on_body_cb(void *ctx, const char *p, size_t n)
{
    struct sse_client *c = ctx;

    sse_parse_execute(&c->sse, p, n, line_cb, c);
    return c->state == SSE_CLIENT_STREAMING ? 0 : 1;
}

static int on_done_cb(void *ctx, const struct http_resp *r)
{
    struct sse_client *c = ctx;

    (void)r;
    sse_client_close(c, SSE_CLOSE_STREAM_END, 0);
    return 1;
}

static const struct http_resp_cbs resp_cbs = {
    .on_head_cb = on_head_cb,
    .on_body_cb = on_body_cb,
    .on_done_cb = on_done_cb,
};

/* --- I/O ------------------------------------------------------------------ */

/* libuv reports a reset as UV_EOF when POLLHUP comes with the last data
 * (uv__stream_io), so ask the socket: a reset leaves SO_ERROR set or the
 * connection in TCP_CLOSE, a FIN leaves it in TCP_CLOSE_WAIT. */
static bool was_reset(struct sse_client *c)
{
    struct tcp_info ti;
    socklen_t len = sizeof(int);
    uv_os_fd_t fd;
    int err = 0;

    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0)
        return false;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == ECONNRESET)
        return true;
    len = sizeof(ti);
    return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && ti.tcpi_state == TCP_CLOSE;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct sse_client *c = client_of(s);
    ssize_t rc;

    if (nread < 0) {
        if (nread == UV_EOF && was_reset(c))
            nread = UV_ECONNRESET;
        if (nread == UV_EOF)
            sse_client_close(c, c->state == SSE_CLIENT_WAITING_HEAD ? SSE_CLOSE_EOF_BEFORE_HEAD
                                                                    : SSE_CLOSE_EOF, 0);
        else if (nread == UV_ECONNRESET)
            sse_client_close(c, SSE_CLOSE_RESET, (int)nread);
        else
            sse_client_close(c, SSE_CLOSE_READ, (int)nread);
        return;
    }
    c->bytes_in += (uint64_t)nread;
    if (nread == 0 || c->state == SSE_CLIENT_DRAINING)
        return;
    read_now_ns = 0;
    rc = http_resp_execute(&c->resp, &resp_cbs, c, buf->base, (size_t)nread);
    if (rc < 0)
        sse_client_close(c, SSE_CLOSE_BAD_HTTP, (int)rc);
    else if (c->state == SSE_CLIENT_STREAMING && (size_t)rc < (size_t)nread)
        sse_client_close(c, SSE_CLOSE_BAD_HTTP, 0);  /* bytes after the response */
}

static void request_written(struct sse_client *c)
{
    if (c->no_read) {
        c->state = SSE_CLIENT_SILENT;
        c->conf->cbs->on_ready_cb(c);
    }
}

static void write_cb(uv_write_t *req, int status)
{
    struct sse_client *c = req->data;

    free(req);
    if (status < 0) {
        sse_client_close(c, SSE_CLOSE_WRITE, status);
        return;
    }
    if (c->state == SSE_CLIENT_CONNECTING)
        request_written(c);
}

static void send_request(struct sse_client *c)
{
    const char *path = c->conf->paths[c->channel];
    size_t cap = strlen(path) + strlen(c->conf->host) + SSE_CLIENT_ID_MAX + 160;
    char stack[1024];
    char *req = cap <= sizeof(stack) ? stack : mem_alloc(cap);
    int n, rc;
    uv_buf_t b;

    if (c->last_id[0] != '\0')
        n = snprintf(req, cap,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\nLast-Event-ID: %s\r\n\r\n",
                     path, c->conf->host, c->last_id);
    else
        n = snprintf(req, cap,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n\r\n",
                     path, c->conf->host);
    assert(n > 0 && (size_t)n < cap);
    b = uv_buf_init(req, (unsigned)n);
    rc = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (rc == UV_EAGAIN)
        rc = 0;
    if (rc < 0) {
        sse_client_close(c, SSE_CLOSE_WRITE, rc);
    } else if (rc == n) {
        request_written(c);
    } else {
        /* The rest is copied: the write request owns it until write_cb. */
        struct write_req *w = mem_alloc(sizeof(*w) + (size_t)(n - rc));
        memcpy(w->data, req + rc, (size_t)(n - rc));
        w->req.data = c;
        b = uv_buf_init(w->data, (unsigned)(n - rc));
        rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
        if (rc < 0) {
            free(w);
            sse_client_close(c, SSE_CLOSE_WRITE, rc);
        }
    }
    if (req != stack)
        free(req);
}

static void connect_cb(uv_connect_t *req, int status)
{
    struct sse_client *c = req->data;
    int rc;

    free(req);
    if (status < 0) {
        sse_client_close(c, SSE_CLOSE_CONNECT, status);
        return;
    }
    if (!c->no_read) {
        c->state = SSE_CLIENT_WAITING_HEAD;
        rc = uv_read_start((uv_stream_t *)&c->tcp, util_read_alloc_cb, read_cb);
        if (rc < 0) {
            sse_client_close(c, SSE_CLOSE_READ, rc);
            return;
        }
    }
    send_request(c);
}

int sse_client_connect(struct sse_client *c, const struct sockaddr *source)
{
    const struct sse_client_conf *conf = c->conf;
    uv_connect_t *req;
    uv_os_fd_t fd;
    int rc;

    assert(c->state == SSE_CLIENT_IDLE);
    rc = uv_tcp_init_ex(conf->loop, &c->tcp, conf->server->sa_family);
    if (rc < 0)
        return rc;
    c->state = SSE_CLIENT_CONNECTING;
    c->close_reason = SSE_CLOSE_NONE;
    c->close_err = 0;
    http_resp_init(&c->resp);
    sse_parse_init(&c->sse);
    event_reset(c);
    /* A half-read event is dropped with its connection; the id buffer goes
     * back to the last dispatched id, which is what Last-Event-ID sends. */
    memcpy(c->id_buf, c->last_id, sizeof(c->id_buf));

    if (source != NULL) {
#ifdef IP_BIND_ADDRESS_NO_PORT
        /* Choose the port at connect time, by the whole 4-tuple: without
         * this each bind takes a port for good and 28k is the ceiling. */
        int one = 1;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
#endif
        rc = uv_tcp_bind(&c->tcp, source, 0);
        if (rc < 0)
            goto fail;
    }
    if (c->no_read && conf->no_read_rcvbuf > 0 && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &conf->no_read_rcvbuf,
                         sizeof(conf->no_read_rcvbuf));
    req = mem_alloc(sizeof(*req));
    req->data = c;
    rc = uv_tcp_connect(req, &c->tcp, conf->server, connect_cb);
    if (rc < 0) {
        free(req);
        goto fail;
    }
    return 0;

fail:
    sse_client_close(c, SSE_CLOSE_CONNECT, rc);
    return 0;
}

void sse_client_drain(struct sse_client *c)
{
    int rc;

    if (c->state != SSE_CLIENT_SILENT)
        return;
    c->state = SSE_CLIENT_DRAINING;
    rc = uv_read_start((uv_stream_t *)&c->tcp, util_read_alloc_cb, read_cb);
    if (rc < 0)
        sse_client_close(c, SSE_CLOSE_READ, rc);
}
