/* sse_queue: per-client SSE output, bounded in real bytes. See sse_queue.h. */
#include "daemon/sse/sse_queue.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#ifdef __linux__
#include <linux/sockios.h>
#endif

#include "daemon/log.h"
#include "daemon/http/req.h"
#include "proto/mem.h"

/* Frames shorter than this are copied into the write's own buffer; longer
 * ones are written from the shared frame. */
#define GATHER_FRAME_MAX 1024
/* iovecs per write: req_stream_write takes 64. */
#define MAX_SEG 63
/* A write request in flight: libuv's uv_write_t and the connection's
 * bookkeeping around it (measured at ~250 bytes), rounded up. */
#define WRITE_OVERHEAD 320

/* --- frames and queues --------------------------------------------------------- */

struct sse_ev *sse_ev_new(const struct buf *b, bool has_id, struct sse_id id)
{
    struct sse_ev *e = mem_alloc(sizeof(*e) + b->len);
    e->refs = 1;
    e->len = (uint32_t)b->len;
    e->has_id = has_id;
    e->id = id;
    memcpy(e->bytes, b->data, b->len);
    return e;
}

struct sse_ev *sse_ev_event(struct sse_id id, str_t id_s, str_t event, str_t data)
{
    if (!sse_event_valid(id_s, event, data))
        return NULL;
    char idt[SSE_ID_MAX_LEN + 1];
    struct buf b = BUF_INIT;
    sse_frame_event(&b, str_make(idt, sse_id_format(id, idt)), event, data);
    struct sse_ev *e = sse_ev_new(&b, true, id);
    buf_deinit(&b);
    return e;
}

void sse_ev_unref(struct sse_ev *e)
{
    if (--e->refs == 0)
        free(e);
}

void sse_evq_push(struct sse_evq *q, struct sse_ev *e)
{
    if (q->n == q->cap) {
        if (q->cap == 0) {
            q->v = q->in;
            q->cap = 2;
        } else {
            unsigned cap = q->cap * 2;
            struct sse_ev **v = mem_alloc(cap * sizeof(*v));
            memcpy(v, q->v, q->n * sizeof(*v));
            if (q->v != q->in)
                free(q->v);
            q->v = v;
            q->cap = cap;
        }
    }
    e->refs++;
    q->v[q->n++] = e;
    q->bytes += e->len;
    q->cost += SSE_EV_COST(e);
}

void sse_evq_clear(struct sse_evq *q, bool unref)
{
    if (unref)
        for (unsigned i = 0; i < q->n; i++)
            sse_ev_unref(q->v[i]);
    if (q->v != q->in)
        free(q->v);
    memset(q, 0, sizeof(*q));
}

void sse_evq_take(struct sse_evq *dst, struct sse_evq *src)
{
    *dst = *src;
    if (src->v == src->in) /* the inline slots moved with the copy */
        dst->v = dst->in;
    memset(src, 0, sizeof(*src));
}

/* Drops the first k entries, whose references the caller took (they may
 * be freed already: their bytes and cost are the caller's to tell). */
static void evq_shift(struct sse_evq *q, unsigned k, size_t bytes, size_t cost)
{
    if (k == q->n) {
        sse_evq_clear(q, false);
        return;
    }
    q->bytes -= bytes;
    q->cost -= cost;
    memmove(q->v, q->v + k, (q->n - k) * sizeof(*q->v));
    q->n -= k;
}

/* --- the client's output ------------------------------------------------------------ */

/* A gathered write: the frames it references, then the copied bytes. */
struct sse_batch {
    unsigned nref;
    struct sse_ev *ref[];
};

struct sse_out *sse_out_new(struct req *r, void *owner, void (*written_cb)(void *owner))
{
    struct sse_out *o = mem_calloc(1, sizeof(*o));
    o->r = r;
    o->owner = owner;
    o->written_cb = written_cb;
    o->sndbuf = SIZE_MAX;
    return o;
}

void sse_out_free(struct sse_out *o)
{
    sse_evq_clear(&o->pending, true);
    if (o->writing) {
        o->owner = NULL; /* out_written_cb frees it */
        return;
    }
    free(o);
}

static int out_fd(const struct sse_out *o)
{
    return req_fd(o->r);
}

void sse_out_socket_setup(struct sse_out *o, int64_t bytes)
{
    int fd = out_fd(o);
    if (fd < 0 || bytes <= 0)
        return;
    int v = (int)bytes;
    socklen_t len = sizeof(v);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v)) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, &len) != 0 || v <= 0) {
        log_debug("sse socket send buffer not capped", "errno=%d", errno);
        return;
    }
    o->sndbuf = (size_t)v; /* what the kernel granted (Linux doubles the request) */
}

/* Bytes the kernel holds for this socket and the peer has not acknowledged. */
static size_t kernel_unsent(const struct sse_out *o)
{
#ifdef SIOCOUTQ
    int fd = out_fd(o), n = 0;
    if (fd >= 0 && ioctl(fd, SIOCOUTQ, &n) == 0 && n > 0)
        return (size_t)n;
#else
    (void)o;
#endif
    return 0;
}

size_t sse_out_queued(const struct sse_out *o, bool kernel)
{
    size_t lib = req_stream_queued(o->r);
    return o->pending.cost + (o->w_cost > lib ? o->w_cost : lib) + (kernel ? kernel_unsent(o) : 0);
}

bool sse_out_fits(const struct sse_out *o, size_t extra, size_t limit)
{
    size_t own = sse_out_queued(o, false) + extra;
    if (own > limit)
        return false;
    if (o->sndbuf != SIZE_MAX && own + o->sndbuf <= limit)
        return true;
    return own + kernel_unsent(o) <= limit;
}

static void out_written_cb(void *ctx, int status)
{
    struct sse_out *o = ctx;
    if (o->w_one) {
        sse_ev_unref(o->w_one);
        o->w_one = NULL;
    }
    if (o->w_batch) {
        for (unsigned i = 0; i < o->w_batch->nref; i++)
            sse_ev_unref(o->w_batch->ref[i]);
        free(o->w_batch);
        o->w_batch = NULL;
    }
    o->writing = false;
    o->w_cost = 0;
    if (o->owner == NULL) {
        free(o);
        return;
    }
    /* A failed write closes the connection, which lets the owner go. */
    if (status == 0 && o->pending.n)
        o->written_cb(o->owner);
}

int sse_out_flush(struct sse_out *o, uint64_t *delivered)
{
    if (o->writing || o->pending.n == 0)
        return 0;
    struct sse_evq *q = &o->pending;
    uv_buf_t iov[MAX_SEG];
    unsigned niov = 0, k = 0;
    size_t taken = 0, taken_cost = 0; /* bytes and cost leaving the queue */
    if (q->n == 1) {
        /* One frame (every client of a fan-out): written from the shared
         * frame, nothing allocated. */
        o->w_one = q->v[0];
        o->w_cost = SSE_EV_COST(o->w_one) + WRITE_OVERHEAD;
        iov[niov++] = uv_buf_init(o->w_one->bytes, o->w_one->len);
        *delivered += o->w_one->has_id;
        taken = o->w_one->len;
        taken_cost = SSE_EV_COST(o->w_one);
        k = 1;
    } else {
        /* Size the batch: runs of small frames become one segment each of
         * the buffer, large frames one segment each. */
        size_t gather = 0;
        unsigned nref = 0, seg = 0;
        bool in_run = false;
        for (; k < q->n; k++) {
            struct sse_ev *e = q->v[k];
            bool small = e->len < GATHER_FRAME_MAX;
            if ((!small || !in_run) && seg == MAX_SEG)
                break;
            taken += e->len;
            taken_cost += SSE_EV_COST(e);
            if (small) {
                seg += !in_run;
                in_run = true;
                gather += e->len;
            } else {
                seg++;
                in_run = false;
                nref++;
            }
        }
        size_t head = sizeof(struct sse_batch) + nref * sizeof(struct sse_ev *);
        struct sse_batch *b = mem_alloc(head + gather);
        char *buf = (char *)b + head, *p = buf;
        b->nref = 0;
        size_t cost = head + gather + WRITE_OVERHEAD + seg * sizeof(uv_buf_t);
        in_run = false;
        for (unsigned i = 0; i < k; i++) {
            struct sse_ev *e = q->v[i];
            if (e->len < GATHER_FRAME_MAX) {
                if (in_run)
                    iov[niov - 1].len += e->len;
                else
                    iov[niov++] = uv_buf_init(p, e->len);
                in_run = true;
                memcpy(p, e->bytes, e->len);
                p += e->len;
                *delivered += e->has_id;
                sse_ev_unref(e);
            } else {
                *delivered += e->has_id;
                b->ref[b->nref++] = e; /* the batch takes the queue's reference */
                cost += SSE_EV_COST(e);
                iov[niov++] = uv_buf_init(e->bytes, e->len);
                in_run = false;
            }
        }
        o->w_batch = b;
        o->w_cost = cost;
    }
    evq_shift(q, k, taken, taken_cost);
    o->writing = true;
    /* The callback may run before this returns; on failure the connection
     * closes, and its abort callback lets the owner (and o) go. */
    return req_stream_write(o->r, iov, niov, out_written_cb, o);
}

int sse_out_finish(struct sse_out *o)
{
    /* Taken first: a failed write lets the owner, and o, go. */
    struct sse_evq q;
    sse_evq_take(&q, &o->pending);
    struct req *r = o->r;
    int rc = 0;
    for (unsigned i = 0; i < q.n && rc == 0;) {
        uv_buf_t iov[MAX_SEG];
        unsigned n = 0;
        for (; i < q.n && n < MAX_SEG; i++)
            iov[n++] = uv_buf_init(q.v[i]->bytes, q.v[i]->len);
        rc = req_stream_write_copy(r, iov, n);
    }
    sse_evq_clear(&q, true);
    return rc;
}
