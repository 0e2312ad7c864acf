/*
 * publisher: see publisher.h.
 *
 * A connection goes IDLE ─connect─▶ CONNECTING ─▶ READY ⇄ BUSY (one POST
 * in flight) and back to IDLE through CLOSING when the server closes it,
 * answers "Connection: close", or fails. A queued event on an IDLE
 * connection reconnects it.
 */
#include "publisher.h"

#include <assert.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/mem.h"
#include "http_resp.h"
#include "payload.h"
#include "util.h"

#define BODY_KEEP 256          /* enough for {"id":"..."}; the rest is counted only */

enum pub_conn_state {
    PUB_IDLE,
    PUB_CONNECTING,
    PUB_READY,
    PUB_BUSY,
    PUB_CLOSING,
};

struct pub_item {
    uint32_t channel;
    uint32_t seq;
};

struct pub_conn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    struct publisher *pub;
    uint8_t state;                /* enum pub_conn_state */
    bool writing;                 /* write_req in flight: buf is in use */
    struct http_resp resp;
    struct pub_item cur;          /* the POST in flight, when BUSY */
    uint64_t cur_t;
    struct pub_item *queue;       /* FIFO: [head, tail) */
    size_t head, tail, cap;
    char *buf;                    /* request being written */
    size_t buf_cap;
    size_t body_len;
    char body[BODY_KEEP];
};

struct publisher {
    const struct publisher_conf *conf;
    struct pub_conn *conns;
    unsigned n;
    unsigned open_handles;
    size_t pending;
    bool closing;
};


static void kick(struct pub_conn *pc);

/* Pops the first queued event into cur. */
static void take_next(struct pub_conn *pc)
{
    assert(pc->head < pc->tail);
    pc->cur = pc->queue[pc->head++];
    if (pc->head == pc->tail)
        pc->head = pc->tail = 0;
}

/* --- answers -------------------------------------------------------------- */

static void answer(struct pub_conn *pc, int status, const char *reason, const char *id)
{
    struct publisher *p = pc->pub;
    struct publisher_answer a = { status, reason, id, pc->cur_t };
    struct pub_item it = pc->cur;

    assert(p->pending > 0);
    p->pending--;
    /* Last: the callback may submit more events. */
    p->conf->on_answer_cb(p->conf->ctx, it.channel, it.seq, &a);
}

/* Finds "id":"..." in a small JSON object; NUL-terminates it in place. */
static const char *body_id(char *body, size_t n)
{
    char *s, *end = body + n, *q;

    body[n < BODY_KEEP ? n : BODY_KEEP - 1] = '\0';
    s = strstr(body, "\"id\"");
    if (s == NULL)
        return NULL;
    s += 4;
    while (s < end && (*s == ' ' || *s == ':'))
        s++;
    if (s >= end || *s != '"')
        return NULL;
    s++;
    q = memchr(s, '"', (size_t)(end - s));
    if (q == NULL || q == s)
        return NULL;
    *q = '\0';
    return s;
}

/* --- connection lifecycle --------------------------------------------------- */

#define conn_of(handle) \
    ((struct pub_conn *)((char *)(handle) - offsetof(struct pub_conn, tcp)))

/* Releases the publisher once publisher_close() has begun and no handle is
 * open any more. */
static void publisher_free(struct publisher *p)
{
    for (unsigned i = 0; i < p->n; i++) {
        free(p->conns[i].queue);
        free(p->conns[i].buf);
    }
    free(p->conns);
    free(p);
}

static void close_cb(uv_handle_t *h)
{
    struct pub_conn *pc = conn_of(h);
    struct publisher *p = pc->pub;

    pc->state = PUB_IDLE;
    p->open_handles--;
    if (p->closing) {
        if (p->open_handles == 0)
            publisher_free(p);
        return;
    }
    kick(pc);
}

/* Closes the connection; the POST in flight, if any, fails with `reason`. */
static void conn_close(struct pub_conn *pc, const char *reason)
{
    if (pc->state == PUB_IDLE || pc->state == PUB_CLOSING)
        return;
    if (pc->state == PUB_BUSY) {
        pc->state = PUB_CLOSING;
        answer(pc, 0, reason ? reason : "conn_lost", NULL);
    }
    pc->state = PUB_CLOSING;
    uv_close((uv_handle_t *)&pc->tcp, close_cb);
}

static void send_next(struct pub_conn *pc);

static int on_head_cb(void *ctx, const struct http_resp *r)
{
    struct pub_conn *pc = ctx;

    (void)r;
    pc->body_len = 0;
    return 0;
}

static int on_body_cb(void *ctx, const char *data, size_t n)
{
    struct pub_conn *pc = ctx;
    size_t room = BODY_KEEP - 1 - pc->body_len;

    if (n > room)
        n = room;
    memcpy(pc->body + pc->body_len, data, n);
    pc->body_len += n;
    return 0;
}

static int on_done_cb(void *ctx, const struct http_resp *r)
{
    struct pub_conn *pc = ctx;
    /* A body ended by the close cannot be followed by another answer. */
    bool close = (r->flags & HTTP_RESP_CONN_CLOSE) != 0 ||
                 !(r->flags & (HTTP_RESP_CHUNKED | HTTP_RESP_HAS_LENGTH));
    const char *id = NULL;
    char reason[32];

    if (pc->state != PUB_BUSY) {
        conn_close(pc, NULL);
        return 1;
    }
    if (r->status == 201) {
        id = body_id(pc->body, pc->body_len);
        pc->state = PUB_READY;
        answer(pc, r->status, id ? NULL : "no_id_in_answer", id);
    } else {
        snprintf(reason, sizeof(reason), "http_%u", (unsigned)r->status);
        pc->state = PUB_READY;
        answer(pc, r->status, reason, NULL);
    }
    http_resp_init(&pc->resp);
    if (close || pc->pub->closing) {
        conn_close(pc, NULL);
        return 1;
    }
    send_next(pc);
    return 0;
}

static const struct http_resp_cbs resp_cbs = {
    .on_head_cb = on_head_cb,
    .on_body_cb = on_body_cb,
    .on_done_cb = on_done_cb,
};

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct pub_conn *pc = conn_of(s);
    size_t off = 0;

    if (nread < 0) {
        if (nread == UV_EOF && pc->state == PUB_BUSY &&
            http_resp_eof(&pc->resp, &resp_cbs, pc) == 0)
            return;  /* a body ended by the close: answered in on_done_cb */
        conn_close(pc, nread == UV_EOF ? "conn_lost" : uv_err_name((int)nread));
        return;
    }
    /* More than one response may arrive in one read only if the server
     * sent one we did not ask for; on_done_cb catches that. */
    while (off < (size_t)nread && (pc->state == PUB_BUSY || pc->state == PUB_READY)) {
        ssize_t rc = http_resp_execute(&pc->resp, &resp_cbs, pc, buf->base + off,
                                       (size_t)nread - off);
        if (rc < 0) {
            conn_close(pc, "bad_http");
            return;
        }
        if (rc == 0)
            break;
        off += (size_t)rc;
    }
}

static void write_cb(uv_write_t *req, int status)
{
    struct pub_conn *pc = req->data;

    pc->writing = false;
    if (status < 0) {
        conn_close(pc, uv_err_name(status));
        return;
    }
    if (pc->state == PUB_READY)
        send_next(pc);  /* the answer came before the write callback */
}

static void send_next(struct pub_conn *pc)
{
    const struct publisher_conf *conf = pc->pub->conf;
    size_t body_len, head_len;
    uv_buf_t b;
    int rc;

    if (pc->state != PUB_READY || pc->writing || pc->head == pc->tail || pc->pub->closing)
        return;
    take_next(pc);
    pc->state = PUB_BUSY;
    pc->cur_t = util_real_ns();
    body_len = payload_min_size(pc->cur.seq, pc->cur_t);
    if (conf->payload > body_len)
        body_len = conf->payload;
    head_len = (size_t)snprintf(pc->buf, pc->buf_cap,
                                "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                                "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                                conf->paths[pc->cur.channel], conf->host, conf->token, body_len);
    assert(head_len + body_len <= pc->buf_cap);
    payload_format(pc->buf + head_len, conf->payload, pc->cur.seq, pc->cur_t);
    b = uv_buf_init(pc->buf, (unsigned)(head_len + body_len));
    pc->write_req.data = pc;
    rc = uv_write(&pc->write_req, (uv_stream_t *)&pc->tcp, &b, 1, write_cb);
    if (rc < 0) {
        conn_close(pc, uv_err_name(rc));
        return;
    }
    pc->writing = true;
}

/* Fails the first queued event, so a dead server ends the run, and closes;
 * close_cb tries the next one. */
static void connect_failed(struct pub_conn *pc, int err)
{
    take_next(pc);
    pc->cur_t = 0;
    pc->state = PUB_BUSY;
    conn_close(pc, uv_err_name(err));
}

static void connect_cb(uv_connect_t *req, int status)
{
    struct pub_conn *pc = req->data;
    int rc;

    if (status == UV_ECANCELED)
        return;
    if (status < 0) {
        connect_failed(pc, status);
        return;
    }
    rc = uv_read_start((uv_stream_t *)&pc->tcp, util_read_alloc_cb, read_cb);
    if (rc < 0) {
        connect_failed(pc, rc);
        return;
    }
    pc->state = PUB_READY;
    send_next(pc);
}

static void kick(struct pub_conn *pc)
{
    struct publisher *p = pc->pub;
    int rc;

    if (p->closing || pc->head == pc->tail)
        return;
    if (pc->state == PUB_READY) {
        send_next(pc);
        return;
    }
    if (pc->state != PUB_IDLE)
        return;
    rc = uv_tcp_init(p->conf->loop, &pc->tcp);
    if (rc < 0) {
        /* No socket (EMFILE): nothing here can succeed, fail the queue. */
        while (pc->head < pc->tail) {
            take_next(pc);
            pc->cur_t = 0;
            answer(pc, 0, uv_err_name(rc), NULL);
        }
        return;
    }
    p->open_handles++;
    pc->state = PUB_CONNECTING;
    http_resp_init(&pc->resp);
    (void)uv_tcp_nodelay(&pc->tcp, 1);
    pc->connect_req.data = pc;
    rc = uv_tcp_connect(&pc->connect_req, &pc->tcp, p->conf->server, connect_cb);
    if (rc < 0)
        connect_failed(pc, rc);
}
/* --- public --------------------------------------------------------------- */

struct publisher *publisher_new(const struct publisher_conf *conf)
{
    struct publisher *p = mem_calloc(1, sizeof(*p));
    size_t longest = 0;

    assert(conf->connections > 0);
    for (unsigned i = 0; conf->paths[i] != NULL; i++)
        if (strlen(conf->paths[i]) > longest)
            longest = strlen(conf->paths[i]);
    p->conf = conf;
    p->n = conf->connections;
    p->conns = mem_calloc(p->n, sizeof(*p->conns));
    for (unsigned i = 0; i < p->n; i++) {
        struct pub_conn *pc = &p->conns[i];
        pc->pub = p;
        pc->state = PUB_IDLE;
        pc->buf_cap = 256 + longest + strlen(conf->host) + strlen(conf->token) +
                      conf->payload + PAYLOAD_HEAD_MAX + 16;
        pc->buf = mem_alloc(pc->buf_cap);
    }
    return p;
}

void publisher_submit(struct publisher *p, uint32_t channel, uint32_t seq)
{
    struct pub_conn *pc = &p->conns[channel % p->n];

    if (pc->tail == pc->cap) {
        pc->cap = pc->cap ? pc->cap * 2 : 64;
        pc->queue = mem_realloc(pc->queue, pc->cap * sizeof(*pc->queue));
    }
    pc->queue[pc->tail++] = (struct pub_item){ channel, seq };
    p->pending++;
    kick(pc);
}

size_t publisher_pending(const struct publisher *p)
{
    return p->pending;
}

void publisher_close(struct publisher *p)
{
    p->closing = true;
    for (unsigned i = 0; i < p->n; i++) {
        struct pub_conn *pc = &p->conns[i];
        if (pc->state != PUB_IDLE && pc->state != PUB_CLOSING) {
            pc->state = PUB_CLOSING;
            uv_close((uv_handle_t *)&pc->tcp, close_cb);
        }
    }
    if (p->open_handles == 0)
        publisher_free(p);
}
