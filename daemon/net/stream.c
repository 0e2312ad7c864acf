/*
 * stream: reading, held-back input, try-then-queue writes, pauses, the
 * write limit and deferred close. See stream.h.
 *
 * Re-entrancy. The owner's parse_cb may, through its handlers, ask for a
 * parse of the same stream again (a pooled app connection handed to the
 * next request while its last answer is being parsed): that parse runs
 * when the current one returns, never inside it. Held bytes dropped during
 * a parse (the parser may still be reading them) are freed when it
 * returns.
 */
#include "daemon/net/stream.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/mem.h"

#define READ_BUF_SIZE (64 * 1024) /* bytes per read callback */

static char read_buf[READ_BUF_SIZE];

/* A write libuv holds: the caller's callback and, for STREAM_COPY, the
 * bytes. One allocation per queued write. */
struct stream_wreq {
    uv_write_t wr;              /* first: the write callback gets it back */
    stream_write_cb cb;
    void *ctx;
    size_t bytes;
    char data[];
};

void stream_init(struct stream *s, uv_loop_t *loop, const struct stream_kind *kind)
{
    s->kind = kind;
    uv_tcp_init(loop, &s->tcp);
    s->tcp.data = s;
}

int stream_accept(struct stream *s, uv_stream_t *listener)
{
    int rc = uv_accept(listener, (uv_stream_t *)&s->tcp);
    if (rc == 0)
        uv_tcp_nodelay(&s->tcp, 1);
    return rc;
}

void stream_pause(struct stream *s, unsigned why)
{
    assert(why != 0 && (why & (why - 1)) == 0 && why <= STREAM_PAUSE_ALL);
    if (s->pause & why)
        return;
    s->pause |= (uint16_t)why;
    uint64_t *m = s->kind->m_pauses[__builtin_ctz(why)];
    if (m)
        (*m)++;
}

/* --- reading ----------------------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    b->base = read_buf;
    b->len = sizeof(read_buf);
}

static void on_read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *b)
{
    struct stream *s = (struct stream *)h;
    if (nread == 0)
        return;
    if (nread < 0) {
        s->kind->eof_cb(s, (int)nread);
        return;
    }
    if (s->kind->m_bytes_in)
        *s->kind->m_bytes_in += (uint64_t)nread;
    s->kind->read_cb(s, b->base, (size_t)nread);
}

bool stream_read_update(struct stream *s)
{
    bool want = !s->closing && s->pause == 0 && s->held == NULL;
    if (want && !s->reading) {
        if (uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, on_read_cb) == 0)
            s->reading = true;
        return true;
    }
    if (!want && s->reading) {
        uv_read_stop((uv_stream_t *)&s->tcp);
        s->reading = false;
    }
    return false;
}

void stream_held_drop(struct stream *s)
{
    if (s->in_parse) {
        s->discard = true;
        if (s->held) /* the parser may still be reading it */
            s->held_dead = s->held;
    } else {
        free(s->held);
    }
    s->held = NULL;
    s->held_len = s->held_off = 0;
}

/* One run of the owner's parser; what it leaves of bytes from a read is
 * copied, since the read buffer is reused. */
static void parse_once(struct stream *s, const char *data, size_t n, bool from_held)
{
    s->in_parse = true;
    s->discard = false;
    size_t used = s->kind->parse_cb(s, data, n);
    s->in_parse = false;
    if (s->held_dead) {
        free(s->held_dead);
        s->held_dead = NULL;
    }
    if (s->discard || s->closing) {
        s->discard = false;
        return;
    }
    if (from_held) {
        s->held_off += (uint32_t)used;
        if (s->held_off >= s->held_len)
            stream_held_drop(s);
        return;
    }
    if (used >= n)
        return;
    assert(s->held == NULL); /* reading stops while bytes are held */
    s->held_len = (uint32_t)(n - used);
    s->held_off = 0;
    s->held = mem_alloc(s->held_len);
    memcpy(s->held, data + used, s->held_len);
}

/* Parses asked for during the last one. */
static void parse_deferred(struct stream *s)
{
    while (s->parse_again && !s->closing) {
        s->parse_again = false;
        if (s->held)
            parse_once(s, s->held + s->held_off, s->held_len - s->held_off, true);
        else
            parse_once(s, "", 0, false);
    }
    s->parse_again = false;
}

void stream_parse(struct stream *s, const char *data, size_t n)
{
    assert(!s->in_parse); /* read callbacks do not nest */
    parse_once(s, data, n, false);
    parse_deferred(s);
}

void stream_parse_held(struct stream *s)
{
    s->parse_again = true;
    if (!s->in_parse)
        parse_deferred(s);
}

/* --- writing ----------------------------------------------------------------- */

/* The bytes of bufs from byte `skip` on: as iovecs into out, or, with
 * `copy`, copied there and described by out[0]. Returns the iovec count. */
static unsigned rest_of(const uv_buf_t *bufs, unsigned n, size_t skip, uv_buf_t *out, char *copy)
{
    unsigned k = 0;
    size_t off = 0;
    for (unsigned i = 0; i < n; i++) {
        if (skip >= bufs[i].len) {
            skip -= bufs[i].len;
            continue;
        }
        char *p = bufs[i].base + skip;
        size_t len = bufs[i].len - skip;
        skip = 0;
        if (copy) {
            memcpy(copy + off, p, len);
            off += len;
        } else {
            out[k++] = uv_buf_init(p, (unsigned)len);
        }
    }
    if (copy) {
        out[0] = uv_buf_init(copy, (unsigned)off);
        k = 1;
    }
    return k;
}

static void on_write_cb(uv_write_t *wr, int status)
{
    struct stream_wreq *w = (struct stream_wreq *)wr;
    struct stream *s = (struct stream *)wr->handle;
    s->writes--;
    if (status == 0 && s->kind->m_bytes_out)
        *s->kind->m_bytes_out += w->bytes;
    if (w->cb)
        w->cb(w->ctx, status);
    free(w);
    if (s->closing)
        return;
    stream_limit_update(s);
    if (s->kind->written_cb)
        s->kind->written_cb(s, status);
}

int stream_write(struct stream *s, const uv_buf_t *bufs, unsigned n, enum stream_write_mode mode,
                 stream_write_cb cb, void *ctx)
{
    assert(n <= STREAM_MAX_IOV);
    if (s->closing) {
        if (cb)
            cb(ctx, UV_ECANCELED);
        return UV_ECANCELED;
    }
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    /* libuv takes nothing here while earlier writes are queued, so the
     * order holds. */
    int rc = uv_try_write((uv_stream_t *)&s->tcp, bufs, n);
    if (rc == UV_EAGAIN || rc == UV_ENOSYS)
        rc = 0;
    if (rc < 0) {
        if (cb)
            cb(ctx, rc);
        return rc;
    }
    const struct stream_kind *k = s->kind;
    if (k->m_bytes_out)
        *k->m_bytes_out += (uint64_t)rc;
    size_t rest = total - (size_t)rc;
    if (rest == 0) {
        if (cb)
            cb(ctx, 0);
        return 0;
    }
    struct stream_wreq *w = mem_alloc(sizeof(*w) + (mode == STREAM_COPY ? rest : 0));
    w->cb = cb;
    w->ctx = ctx;
    w->bytes = rest;
    uv_buf_t iov[STREAM_MAX_IOV];
    unsigned niov = rest_of(bufs, n, (size_t)rc, iov, mode == STREAM_COPY ? w->data : NULL);
    rc = uv_write(&w->wr, (uv_stream_t *)&s->tcp, iov, niov, on_write_cb);
    if (rc < 0) {
        free(w);
        if (cb)
            cb(ctx, rc);
        return rc;
    }
    s->writes++;
    if (k->write_limit > 0 && stream_queued(s) > k->write_limit) {
        if (k->over_limit == STREAM_OVER_LIMIT_PAUSE)
            stream_pause(s, k->limit_pause);
        else if (k->over_limit == STREAM_OVER_LIMIT_CLOSE)
            stream_close(s, k->limit_reason);
    }
    return 0;
}

struct stream_shutdown_req {
    uv_shutdown_t req;          /* first: the callback gets it back */
    unsigned reason;
};

static void on_shutdown_cb(uv_shutdown_t *req, int status)
{
    struct stream *s = (struct stream *)req->handle;
    unsigned reason = ((struct stream_shutdown_req *)req)->reason;
    free(req);
    if (status < 0 && status != UV_ECANCELED && !s->closing)
        stream_close(s, reason);
}

int stream_shutdown(struct stream *s, unsigned reason)
{
    struct stream_shutdown_req *sr = mem_alloc(sizeof(*sr));
    sr->reason = reason;
    int rc = uv_shutdown(&sr->req, (uv_stream_t *)&s->tcp, on_shutdown_cb);
    if (rc != 0)
        free(sr);
    return rc;
}

/* --- closing ----------------------------------------------------------------- */

static void on_close_cb(uv_handle_t *h)
{
    struct stream *s = h->data;
    if (--s->handles == 0)
        s->kind->closed_cb(s);
}

void stream_close(struct stream *s, unsigned reason)
{
    if (s->closing)
        return;
    s->closing = true;
    s->kind->close_cb(s, reason);
    if (s->reading) {
        uv_read_stop((uv_stream_t *)&s->tcp);
        s->reading = false;
    }
    stream_held_drop(s);
    s->handles = s->companion ? 2 : 1;
    s->tcp.data = s;
    uv_close((uv_handle_t *)&s->tcp, on_close_cb);
    if (s->companion) {
        s->companion->data = s;
        uv_close(s->companion, on_close_cb);
    }
}

int stream_peer_addr(const struct stream *s, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    int len = sizeof(*ss);
    return uv_tcp_getpeername(&s->tcp, (struct sockaddr *)ss, &len);
}

int stream_fd(const struct stream *s)
{
    uv_os_fd_t fd;
    if (uv_fileno((const uv_handle_t *)&s->tcp, &fd) != 0)
        return -1;
    return fd;
}
