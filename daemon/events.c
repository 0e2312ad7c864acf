/*
 * events: SSE fan-out with lossless resume. See events.h.
 *
 * Channel states:   SUBSCRIBING ──confirmed──> SYNCING ──history read──> LIVE
 *                        ^                      │    ^                     │
 *                        │              failed  v    │ backoff timer       │
 *                        │                   SYNC_WAIT                     │
 *                        └──────────────── pub/sub connection lost ───────┘
 * SYNCING reads the Stream: the newest id the first time (the point from
 * which this channel owes its clients every event), or everything after
 * the last id delivered when coming back after a disconnect. Live messages
 * that arrive meanwhile are held and delivered after that history. A read
 * that fails is retried with backoff (the channel stays subscribed); one
 * overtaken by a lost connection only passes on what it read (sync_gen).
 *
 * Client states:    WAITING (channel not LIVE) ──> REPLAYING (own history
 * read, from Last-Event-ID) ──> LIVE. A client never gets an id that is not
 * greater than the last one it got, which removes every duplicate between
 * history, held and live events.
 *
 * Events are serialised once into a refcounted frame; a client's queue
 * holds references. Queues are written at the end of the loop iteration,
 * one writev per client for all the events of that iteration.
 */
#include "daemon/events.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/auth.h"
#include "daemon/backoff.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/redis_pool.h"
#include "daemon/req.h"
#include "proto/ids.h"
#include "proto/json.h"
#include "proto/mem.h"
#include "proto/sse.h"
#include "proto/url.h"

#define HISTORY_PAGE 500
#define MAX_IOV 64

/* XADD and PUBLISH in one step, so a subscriber never sees an event that is
 * not in the history, nor a history entry that was never published. */
static const char PUBLISH_SCRIPT[] =
    "local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[2], 'data', ARGV[3])\n"
    "redis.call('PUBLISH', KEYS[1], id .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])\n"
    "return id\n";

/* --- events (serialised frames) ------------------------------------------------ */

struct ev {
    uint32_t refs;
    uint32_t len;
    bool has_id;
    struct sse_id id;
    char bytes[];
};

static struct ev *ev_from_buf(const struct buf *b, bool has_id, struct sse_id id)
{
    struct ev *e = mem_alloc(sizeof(*e) + b->len);
    e->refs = 1;
    e->len = (uint32_t)b->len;
    e->has_id = has_id;
    e->id = id;
    memcpy(e->bytes, b->data, b->len);
    return e;
}

static void ev_unref(struct ev *e)
{
    if (--e->refs == 0)
        free(e);
}

/* A queue of event references: two inline slots, then the heap. */
struct evq {
    struct ev **v;
    unsigned n, cap;
    size_t bytes;
    struct ev *in[2];
};

static void evq_push(struct evq *q, struct ev *e)
{
    if (q->n == q->cap) {
        if (q->cap == 0) {
            q->v = q->in;
            q->cap = 2;
        } else {
            unsigned cap = q->cap * 2;
            struct ev **v = mem_alloc(cap * sizeof(*v));
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
}

/* Empties the queue; with unref, drops the references too. */
static void evq_clear(struct evq *q, bool unref)
{
    if (unref)
        for (unsigned i = 0; i < q->n; i++)
            ev_unref(q->v[i]);
    if (q->v != q->in)
        free(q->v);
    q->v = NULL;
    q->n = q->cap = 0;
    q->bytes = 0;
}

/* --- structures ------------------------------------------------------------------ */

enum ch_state { CH_SUBSCRIBING, CH_SYNCING, CH_SYNC_WAIT, CH_LIVE };
enum cl_state { CL_WAITING, CL_REPLAYING, CL_LIVE };

struct stream_def {
    struct events *hub;
    const struct cfg_stream *cfg;
    bool retired;               /* dropped by a reload: no new clients */
    unsigned n_clients;
    uint64_t *m_published, *m_delivered, *m_overflow, *m_replayed, *m_resets, *m_resyncs;
    uint64_t *m_rejected;
};

struct channel {
    struct channel *hnext;
    struct events *hub;
    struct stream_def *def;
    char *key;
    uint32_t hash;
    uint32_t refs;              /* clients + history reads in flight */
    struct sse_client *clients;
    unsigned n_clients;
    enum ch_state state;
    bool have_last;
    struct sse_id last_id;      /* newest id this channel has passed on */
    struct evq held;            /* live events received while SYNCING */
    unsigned sync_gen;          /* bumped by each sync: tells an overtaken one */
    unsigned sync_attempt;      /* backoff state while syncs fail */
    unsigned sync_failures;     /* in this streak: logged once, at the first */
    uint64_t sync_retry_ms;     /* when SYNC_WAIT: loop time of the next try */
};

struct history;

struct sse_client {
    struct sse_client *prev, *next;
    struct sse_client *dirty_next;
    struct channel *ch;
    struct req *r;
    struct history *op;         /* own history read, when REPLAYING */
    enum cl_state state;
    bool dirty;
    bool want_replay;
    bool have_last;
    struct sse_id from;         /* Last-Event-ID */
    struct sse_id last_id;      /* newest id sent */
    struct evq pending;         /* to write at the end of this iteration */
    struct evq held;            /* live events received while REPLAYING */
    uint64_t last_write_ms;
};

/* A paged read of a Stream's history, for a client or for a channel. */
struct history {
    struct channel *ch;         /* holds a reference */
    struct sse_client *cl;      /* NULL for a channel resync, or once the client left */
    bool for_client;
    unsigned outstanding;
    int err;
    char why[96];               /* Redis's error reply, for the log */
    unsigned gen;               /* channel syncs: the channel's sync_gen at start */
    bool reset;
    bool too_far;               /* client reads: the replay would not fit its queue */
    bool have_oldest, have_newest;
    struct sse_id from, oldest, newest;
    struct evq got;             /* entries read, in order */
    unsigned page_len;
};

struct events {
    uv_loop_t *loop;
    const struct config *cfg;
    struct redis_pool *redis;
    struct stream_def **defs;   /* stable addresses: channels point at them */
    unsigned n_defs;
    struct channel **buckets;
    unsigned nbuckets, n_channels;
    struct sse_client *dirty;
    uv_check_t flush;
    uv_timer_t ping;
    uv_timer_t resync;          /* retries failed channel syncs */
    uint64_t resync_due;        /* loop time it fires at, 0 when stopped */
    unsigned handles_open;
    struct redis_script publish_script;
    struct ev *ping_ev;
    bool draining;
    uint64_t *m_publish_errors, *m_history_errors;
};

static uint64_t *m_clients_total;

/* --- channels ------------------------------------------------------------------ */

static uint32_t hash_str(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

static struct channel *channel_find(struct events *h, const char *key, size_t len)
{
    uint32_t hash = hash_str(key, len);
    for (struct channel *c = h->buckets[hash & (h->nbuckets - 1)]; c; c = c->hnext)
        if (c->hash == hash && strlen(c->key) == len && memcmp(c->key, key, len) == 0)
            return c;
    return NULL;
}

static void start_sync(struct channel *ch);

static void channel_grow(struct events *h)
{
    unsigned n = h->nbuckets * 2;
    struct channel **b = mem_calloc(n, sizeof(*b));
    for (unsigned i = 0; i < h->nbuckets; i++) {
        struct channel *c = h->buckets[i];
        while (c) {
            struct channel *next = c->hnext;
            c->hnext = b[c->hash & (n - 1)];
            b[c->hash & (n - 1)] = c;
            c = next;
        }
    }
    free(h->buckets);
    h->buckets = b;
    h->nbuckets = n;
}

static struct channel *channel_get(struct events *h, struct stream_def *def, const char *key)
{
    struct channel *c = channel_find(h, key, strlen(key));
    if (c)
        return c;
    if (h->n_channels >= h->nbuckets * 2)
        channel_grow(h);
    c = mem_calloc(1, sizeof(*c));
    c->hub = h;
    c->def = def;
    c->key = mem_strdup(key);
    c->hash = hash_str(key, strlen(key));
    c->state = CH_SUBSCRIBING;
    c->hnext = h->buckets[c->hash & (h->nbuckets - 1)];
    h->buckets[c->hash & (h->nbuckets - 1)] = c;
    h->n_channels++;
    redis_pool_subscribe(h->redis, key);
    return c;
}

static void channel_unref(struct channel *c)
{
    if (--c->refs > 0)
        return;
    struct events *h = c->hub;
    for (struct channel **pp = &h->buckets[c->hash & (h->nbuckets - 1)]; *pp; pp = &(*pp)->hnext) {
        if (*pp == c) {
            *pp = c->hnext;
            break;
        }
    }
    h->n_channels--;
    if (!h->draining)
        redis_pool_unsubscribe(h->redis, c->key);
    evq_clear(&c->held, true);
    free(c->key);
    free(c);
}

/* --- clients ------------------------------------------------------------------- */

static void client_mark_dirty(struct sse_client *cl)
{
    if (!cl->dirty) {
        cl->dirty = true;
        cl->dirty_next = cl->ch->hub->dirty;
        cl->ch->hub->dirty = cl;
    }
}

static size_t client_queued(const struct sse_client *cl)
{
    return cl->pending.bytes + cl->held.bytes + req_stream_queued(cl->r);
}

/* Takes the client out of its channel and frees it; the request is the
 * caller's to end. */
static void client_detach(struct sse_client *cl)
{
    struct channel *ch = cl->ch;
    if (cl->prev)
        cl->prev->next = cl->next;
    else
        ch->clients = cl->next;
    if (cl->next)
        cl->next->prev = cl->prev;
    ch->n_clients--;
    ch->def->n_clients--;
    if (cl->op)
        cl->op->cl = NULL;
    evq_clear(&cl->pending, true);
    evq_clear(&cl->held, true);
    if (cl->dirty) { /* unlink from the dirty list */
        for (struct sse_client **pp = &ch->hub->dirty; *pp; pp = &(*pp)->dirty_next) {
            if (*pp == cl) {
                *pp = cl->dirty_next;
                break;
            }
        }
    }
    cl->r->hdata = NULL;
    cl->r->abort_cb = NULL;
    free(cl);
    channel_unref(ch);
}

static void client_overflow(struct sse_client *cl)
{
    struct req *r = cl->r;
    struct stream_def *def = cl->ch->def;
    (*def->m_overflow)++;
    log_info("sse client over its queue bound", "stream=%s channel=%s queued_bytes=%zu limit=%lld",
             def->cfg->name, LOG_Q(cl->ch->key), client_queued(cl), (long long)def->cfg->client_queue_bytes);
    client_detach(cl);
    req_stream_abort(r, CONN_CLOSE_SSE_QUEUE_OVERFLOW);
}

/* Gives an event to a client. Returns false when the client was dropped. */
static bool client_offer(struct sse_client *cl, struct ev *e)
{
    if (cl->state == CL_WAITING)
        return true; /* its history read will cover this */
    if (cl->state == CL_LIVE && e->has_id && cl->have_last && sse_id_cmp(e->id, cl->last_id) <= 0)
        return true; /* sent already */
    if (client_queued(cl) + e->len > (size_t)cl->ch->def->cfg->client_queue_bytes) {
        client_overflow(cl);
        return false;
    }
    if (cl->state == CL_REPLAYING) {
        evq_push(&cl->held, e);
        return true;
    }
    evq_push(&cl->pending, e);
    if (e->has_id) {
        cl->last_id = e->id;
        cl->have_last = true;
    }
    client_mark_dirty(cl);
    return true;
}

/* The history read is done: go live, passing on the live events held
 * meanwhile (only those after what was sent). */
static void client_go_live(struct sse_client *cl)
{
    struct evq held = cl->held;
    memset(&cl->held, 0, sizeof(cl->held));
    if (held.v == cl->held.in) { /* the inline slots moved with the copy */
        held.v = held.in;
    }
    cl->state = CL_LIVE;
    for (unsigned i = 0; i < held.n; i++) {
        if (!client_offer(cl, held.v[i])) {
            /* dropped: release what is left */
            evq_clear(&held, true);
            return;
        }
    }
    evq_clear(&held, true);
}

struct sse_write {
    unsigned n;
    struct ev *ev[MAX_IOV];
};

static void write_done_cb(void *ctx, int status)
{
    struct sse_write *w = ctx;
    (void)status;
    for (unsigned i = 0; i < w->n; i++)
        ev_unref(w->ev[i]);
    free(w);
}

/* A write of one event (every client of a fan-out) needs no sse_write:
 * the event is the context. */
static void one_done_cb(void *ctx, int status)
{
    (void)status;
    ev_unref(ctx);
}

/* Hands the client's pending events to the socket in one writev. Returns
 * false when the write failed: the connection, and the client with it,
 * are gone. */
static bool client_flush(struct sse_client *cl, uint64_t now)
{
    struct stream_def *def = cl->ch->def;
    struct req *r = cl->r;
    /* Take the queue first: a failing write frees the client. */
    struct evq q = cl->pending;
    if (q.v == cl->pending.in)
        q.v = q.in;
    memset(&cl->pending, 0, sizeof(cl->pending));
    cl->last_write_ms = now;
    bool alive = true;
    unsigned i = 0;
    while (i < q.n) {
        unsigned n = q.n - i < MAX_IOV ? q.n - i : MAX_IOV;
        struct sse_write *w = NULL;
        if (n > 1) {
            w = mem_alloc(offsetof(struct sse_write, ev) + n * sizeof(struct ev *));
            w->n = n;
        }
        uv_buf_t iov[MAX_IOV];
        for (unsigned k = 0; k < n; k++) {
            struct ev *e = q.v[i + k];
            if (w)
                w->ev[k] = e; /* the write takes the queue's reference */
            iov[k] = uv_buf_init(e->bytes, e->len);
            if (e->has_id)
                (*def->m_delivered)++;
        }
        struct ev *first = q.v[i];
        i += n;
        if (req_stream_write(r, iov, n, w ? write_done_cb : one_done_cb, w ? (void *)w : (void *)first) != 0) {
            alive = false;
            break;
        }
    }
    for (; i < q.n; i++)
        ev_unref(q.v[i]);
    q.n = 0;
    evq_clear(&q, false);
    return alive;
}

static void flush_cb(uv_check_t *hnd)
{
    struct events *h = hnd->data;
    uint64_t now = uv_now(h->loop);
    struct sse_client *cl = h->dirty;
    h->dirty = NULL;
    while (cl) {
        struct sse_client *next = cl->dirty_next;
        cl->dirty = false;
        cl->dirty_next = NULL;
        client_flush(cl, now);
        cl = next;
    }
}

/* --- delivering ------------------------------------------------------------------ */

static void channel_deliver(struct channel *ch, struct ev *e)
{
    if (e->has_id && (!ch->have_last || sse_id_cmp(e->id, ch->last_id) > 0)) {
        ch->last_id = e->id;
        ch->have_last = true;
    }
    struct sse_client *cl = ch->clients;
    while (cl) {
        struct sse_client *next = cl->next;
        client_offer(cl, e);
        cl = next;
    }
}

/* An entry of an XRANGE reply: [id, [field, value, ...]]. */
static struct ev *ev_from_entry(const redisReply *entry)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING || entry->element[1]->type != REDIS_REPLY_ARRAY)
        return NULL;
    str_t id_s = str_make(entry->element[0]->str, entry->element[0]->len);
    struct sse_id id;
    if (!sse_id_parse(id_s, &id))
        return NULL;
    str_t event = STR_NULL, data = STR_LIT("");
    const redisReply *f = entry->element[1];
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (k->len == 5 && memcmp(k->str, "event", 5) == 0)
            event = str_make(v->str, v->len);
        else if (k->len == 4 && memcmp(k->str, "data", 4) == 0)
            data = str_make(v->str, v->len);
    }
    struct buf b = BUF_INIT;
    sse_frame_event(&b, id_s, event, data);
    struct ev *e = ev_from_buf(&b, true, id);
    buf_deinit(&b);
    return e;
}

static void history_finish(struct history *op);
static void history_page(struct history *op);
static void client_start(struct sse_client *cl);

static void history_cmd(struct history *op, redis_reply_fn cb, int argc, const char **argv)
{
    size_t lens[6];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    op->outstanding++;
    if (redis_pool_command(op->ch->hub->redis, cb, op, argc, argv, lens) != 0) {
        op->outstanding--;
        op->err = -EAGAIN;
    }
}

/* Records a read's first failure; Redis's error reply goes to the log. */
static void history_fail(struct history *op, const redisReply *reply, int err)
{
    if (op->err)
        return;
    op->err = err ? err : -EIO;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        snprintf(op->why, sizeof(op->why), "%s", reply->str);
}

static void edge_cb(struct history *op, const redisReply *reply, int err, bool oldest)
{
    if (err == 0 && reply && reply->type == REDIS_REPLY_ARRAY) {
        if (reply->elements > 0) {
            const redisReply *e = reply->element[0];
            struct sse_id id;
            if (e->type == REDIS_REPLY_ARRAY && e->elements > 0 && e->element[0]->type == REDIS_REPLY_STRING &&
                sse_id_parse(str_make(e->element[0]->str, e->element[0]->len), &id)) {
                if (oldest) {
                    op->oldest = id;
                    op->have_oldest = true;
                } else {
                    op->newest = id;
                    op->have_newest = true;
                }
            }
        }
    } else {
        history_fail(op, reply, err);
    }
    if (--op->outstanding == 0)
        history_finish(op);
}

static void oldest_cb(void *ctx, const redisReply *reply, int err)
{
    edge_cb(ctx, reply, err, true);
}

static void newest_cb(void *ctx, const redisReply *reply, int err)
{
    edge_cb(ctx, reply, err, false);
}

static void page_cb(void *ctx, const redisReply *reply, int err)
{
    struct history *op = ctx;
    op->page_len = 0;
    if (err == 0 && reply && reply->type == REDIS_REPLY_ARRAY) {
        op->page_len = (unsigned)reply->elements;
        size_t limit = (size_t)op->ch->def->cfg->client_queue_bytes;
        for (size_t i = 0; i < reply->elements && !op->too_far; i++) {
            struct ev *e = ev_from_entry(reply->element[i]);
            if (e == NULL)
                continue;
            evq_push(&op->got, e);
            ev_unref(e); /* the queue holds it */
            op->from = e->id;
            if (op->cl && client_queued(op->cl) + op->got.bytes > limit) {
                /* Offered, the replay would overflow the client, which
                 * would come back with the same id forever: stop reading,
                 * it gets a reset instead. */
                op->too_far = true;
                evq_clear(&op->got, true);
            }
        }
    } else {
        history_fail(op, reply, err);
    }
    if (--op->outstanding == 0)
        history_finish(op);
}

/* Reads entries after op->from, HISTORY_PAGE at a time. */
static void history_page(struct history *op)
{
    char from[SSE_ID_MAX_LEN + 2] = "(";
    sse_id_format(op->from, from + 1);
    const char *argv[6] = { "XRANGE", op->ch->key, from, "+", "COUNT", "500" };
    history_cmd(op, page_cb, 6, argv);
}

static void history_free(struct history *op)
{
    evq_clear(&op->got, true);
    channel_unref(op->ch);
    free(op);
}

static void client_history_done(struct history *op)
{
    struct sse_client *cl = op->cl;
    struct stream_def *def = op->ch->def;
    cl->op = NULL;
    if (op->err) {
        (*op->ch->hub->m_history_errors)++;
        log_warn("sse history read failed", "stream=%s channel=%s err=%d reply=%s", def->cfg->name,
                 LOG_Q(op->ch->key), op->err, LOG_Q(op->why));
        /* The client reconnects with its Last-Event-ID after retry ms. */
        struct req *r = cl->r;
        client_detach(cl);
        req_stream_end(r);
        return;
    }
    /* Last-Event-ID older than the oldest entry kept: what came between may
     * have been trimmed, so the client must reload its state. So must one
     * too far behind to replay within client_queue_bytes. */
    if (!op->too_far && client_queued(cl) + op->got.bytes > (size_t)def->cfg->client_queue_bytes)
        op->too_far = true; /* live events held meanwhile took the room */
    op->reset = op->too_far || !op->have_oldest || sse_id_cmp(cl->from, op->oldest) < 0;
    cl->state = CL_LIVE;
    if (op->reset) {
        (*def->m_resets)++;
        if (op->too_far)
            log_info("sse resume past client_queue_bytes, reset sent", "stream=%s channel=%s limit=%lld",
                     def->cfg->name, LOG_Q(op->ch->key), (long long)def->cfg->client_queue_bytes);
        char id[SSE_ID_MAX_LEN + 1];
        str_t id_s = op->have_newest ? str_make(id, sse_id_format(op->newest, id)) : STR_NULL;
        struct buf b = BUF_INIT;
        if (id_s.len) {
            sse_frame_event(&b, id_s, STR_LIT("reset"), STR_LIT(""));
        } else {
            buf_append_str(&b, "event: reset\ndata: \n\n");
        }
        struct ev *e = ev_from_buf(&b, op->have_newest, op->newest);
        buf_deinit(&b);
        bool alive = client_offer(cl, e);
        ev_unref(e);
        if (!alive)
            return;
    } else {
        for (unsigned i = 0; i < op->got.n; i++) {
            if (!client_offer(cl, op->got.v[i]))
                return;
            (*def->m_replayed)++;
        }
    }
    client_go_live(cl);
}

static void resync_arm(struct events *h, uint64_t due);

static void channel_sync_done(struct history *op)
{
    struct channel *ch = op->ch;
    struct events *h = ch->hub;
    if (op->gen != ch->sync_gen || ch->state != CH_SYNCING) {
        /* Overtaken by a lost pub/sub connection: the sync its next
         * SUBSCRIBE starts owns the state and reads from the last id. What
         * this one read follows that id without a gap, so pass it on. */
        if (op->err == 0 && op->got.n) {
            (*ch->def->m_resyncs)++;
            for (unsigned i = 0; i < op->got.n; i++)
                channel_deliver(ch, op->got.v[i]);
        }
        return;
    }
    if (op->err) {
        /* Still subscribed: retry the read only, later. Messages that
         * arrive meanwhile are read from the Stream by the retry. */
        (*h->m_history_errors)++;
        if (ch->sync_failures++ == 0)
            log_warn("sse channel sync failed, retrying with backoff", "channel=%s err=%d reply=%s",
                     LOG_Q(ch->key), op->err, LOG_Q(op->why));
        ch->state = CH_SYNC_WAIT;
        ch->sync_retry_ms = uv_now(h->loop) + backoff_next_ms(&ch->sync_attempt);
        resync_arm(h, ch->sync_retry_ms);
        return;
    }
    if (ch->sync_failures) {
        log_info("sse channel sync recovered", "channel=%s failed_attempts=%u", LOG_Q(ch->key),
                 ch->sync_failures);
        ch->sync_failures = 0;
    }
    ch->sync_attempt = 0;
    if (!ch->have_last) { /* first sync: the baseline */
        ch->have_last = true;
        ch->last_id = op->have_newest ? op->newest : (struct sse_id){ 0, 0 };
    } else {
        if (op->got.n)
            (*ch->def->m_resyncs)++;
        for (unsigned i = 0; i < op->got.n; i++)
            channel_deliver(ch, op->got.v[i]);
    }
    ch->state = CH_LIVE;
    struct evq held = ch->held;
    if (held.v == ch->held.in)
        held.v = held.in;
    memset(&ch->held, 0, sizeof(ch->held));
    for (unsigned i = 0; i < held.n; i++)
        channel_deliver(ch, held.v[i]);
    evq_clear(&held, true);
    /* Clients that waited for the channel start now. */
    struct sse_client *cl = ch->clients;
    while (cl) {
        struct sse_client *next = cl->next;
        if (cl->state == CL_WAITING)
            client_start(cl);
        cl = next;
    }
}

static void history_finish(struct history *op)
{
    if (op->err == 0 && !op->too_far && op->page_len == HISTORY_PAGE && (!op->for_client || op->cl)) {
        history_page(op); /* more to read */
        if (op->outstanding)
            return;
    }
    if (op->for_client) {
        if (op->cl)
            client_history_done(op);
    } else {
        channel_sync_done(op);
    }
    history_free(op);
}

static struct history *history_new(struct channel *ch)
{
    struct history *op = mem_calloc(1, sizeof(*op));
    op->ch = ch;
    ch->refs++;
    return op;
}

/* Channel subscribed: read the baseline, or the gap since the last id. */
static void start_sync(struct channel *ch)
{
    ch->state = CH_SYNCING;
    struct history *op = history_new(ch);
    op->gen = ++ch->sync_gen;
    if (ch->have_last) {
        op->from = ch->last_id;
        history_page(op);
    } else {
        const char *argv[6] = { "XREVRANGE", ch->key, "+", "-", "COUNT", "1" };
        history_cmd(op, newest_cb, 6, argv);
    }
    if (op->outstanding == 0) {
        channel_sync_done(op);
        history_free(op);
    }
}

static void resync_cb(uv_timer_t *t)
{
    struct events *h = t->data;
    uint64_t now = uv_now(h->loop), next = 0;
    h->resync_due = 0;
    for (unsigned i = 0; i < h->nbuckets; i++) {
        for (struct channel *c = h->buckets[i]; c; c = c->hnext) {
            if (c->state != CH_SYNC_WAIT)
                continue;
            if (c->sync_retry_ms <= now)
                start_sync(c); /* fails at once without freeing c, or later */
            if (c->state == CH_SYNC_WAIT && (next == 0 || c->sync_retry_ms < next))
                next = c->sync_retry_ms;
        }
    }
    if (next)
        resync_arm(h, next);
}

/* One timer for every channel waiting to retry its sync, set for the
 * earliest; resync_cb looks for the ones due. */
static void resync_arm(struct events *h, uint64_t due)
{
    if (h->draining || (h->resync_due && h->resync_due <= due))
        return;
    uint64_t now = uv_now(h->loop);
    h->resync_due = due;
    uv_timer_start(&h->resync, resync_cb, due > now ? due - now : 0, 0);
}

/* The channel is live: the client reads its own history, or goes live. */
static void client_start(struct sse_client *cl)
{
    if (!cl->want_replay) {
        cl->state = CL_LIVE;
        return;
    }
    cl->state = CL_REPLAYING;
    struct history *op = history_new(cl->ch);
    op->for_client = true;
    op->cl = cl;
    op->from = cl->from;
    cl->op = op;
    cl->last_id = cl->from;
    cl->have_last = true;
    const char *oldest[6] = { "XRANGE", cl->ch->key, "-", "+", "COUNT", "1" };
    const char *newest[6] = { "XREVRANGE", cl->ch->key, "+", "-", "COUNT", "1" };
    history_cmd(op, oldest_cb, 6, oldest);
    history_cmd(op, newest_cb, 6, newest);
    history_page(op);
    if (op->outstanding == 0) {
        client_history_done(op);
        history_free(op);
    }
}

/* --- pub/sub ----------------------------------------------------------------------- */

static void sub_cb(void *arg, enum redis_sub_event kind, const char *chan, size_t chan_len,
                   const char *msg, size_t msg_len)
{
    struct events *h = arg;
    switch (kind) {
    case REDIS_SUB_DOWN:
        /* Clients stay; every channel resubscribes and fills its gap. */
        for (unsigned i = 0; i < h->nbuckets; i++)
            for (struct channel *c = h->buckets[i]; c; c = c->hnext)
                c->state = CH_SUBSCRIBING;
        return;
    case REDIS_SUB_UP:
        return;
    case REDIS_SUB_SUBSCRIBED: {
        struct channel *c = channel_find(h, chan, chan_len);
        if (c && c->state == CH_SUBSCRIBING)
            start_sync(c);
        return;
    }
    case REDIS_SUB_MESSAGE: {
        struct channel *c = channel_find(h, chan, chan_len);
        str_t id_s, event, data;
        struct sse_id id;
        if (c == NULL || c->state == CH_SUBSCRIBING || c->state == CH_SYNC_WAIT)
            return; /* the (next) sync reads it from history */
        if (!sse_message_parse(str_make(msg, msg_len), &id_s, &event, &data) || !sse_id_parse(id_s, &id)) {
            log_warn("malformed event message ignored", "channel=%s", LOG_Q(c->key));
            return;
        }
        struct buf b = BUF_INIT;
        sse_frame_event(&b, id_s, event, data);
        struct ev *e = ev_from_buf(&b, true, id);
        buf_deinit(&b);
        if (c->state == CH_SYNCING)
            evq_push(&c->held, e);
        else
            channel_deliver(c, e);
        ev_unref(e);
        return;
    }
    }
}

/* --- subscribe (GET) ------------------------------------------------------------------ */

static void client_abort_cb(struct req *r)
{
    struct sse_client *cl = r->hdata;
    if (cl)
        client_detach(cl);
}

static int last_event_id(struct req *r, struct sse_id *out, bool *present)
{
    str_t v = req_header(r, "last-event-id");
    struct buf q = BUF_INIT;
    *present = false;
    if (v.p == NULL) {
        str_t rest = r->msg.query, k, val;
        while (url_query_next(&rest, &k, &val)) {
            if (str_eq(k, STR_LIT("last_event_id"))) {
                if (url_decode(val, true, &q) != 0) {
                    buf_deinit(&q);
                    return -EINVAL;
                }
                v = buf_str(&q);
                if (v.p == NULL)
                    v = STR_LIT("");
                break;
            }
        }
    }
    int rc = 0;
    if (v.p != NULL && v.len > 0) {
        *present = true;
        rc = sse_id_parse(v, out) ? 0 : -EINVAL;
    }
    buf_deinit(&q);
    return rc;
}

static void subscribe_handler(struct req *r, void *data)
{
    struct stream_def *def = data;
    struct events *h = def->hub;
    struct buf id = BUF_INIT, key = BUF_INIT;
    struct sse_id from = { 0, 0 };
    bool replay = false;
    if (r->msg.method == HTTP_HEAD) {
        req_error(r, 405, "method_not_allowed");
    } else if (req_param_decoded(r, "id", &id) != 0 || !ids_valid(id.data, id.len)) {
        req_error(r, 400, "invalid_id");
    } else if (last_event_id(r, &from, &replay) != 0) {
        req_error(r, 400, "invalid_last_event_id");
    } else if (h->draining) {
        req_add_header(r, "Retry-After", "1");
        req_error(r, 503, "shutting_down");
    } else if (def->n_clients >= (unsigned)def->cfg->max_sse_clients) {
        (*def->m_rejected)++;
        req_add_header(r, "Retry-After", "1");
        req_error(r, 503, "too_many_streams");
    } else {
        url_template_expand(def->cfg->key, "id", buf_str(&id), &key);
        struct sse_client *cl = mem_calloc(1, sizeof(*cl));
        cl->r = r;
        cl->want_replay = replay;
        cl->from = from;
        cl->last_write_ms = uv_now(h->loop);
        r->hdata = cl;
        r->abort_cb = client_abort_cb;
        req_add_header(r, "Cache-Control", "no-cache");
        req_add_header(r, "X-Accel-Buffering", "no");
        req_stream_start(r, 200, "text/event-stream", false);
        req_stream_compact(r);

        struct channel *ch = channel_get(h, def, key.data);
        ch->refs++;
        cl->ch = ch;
        cl->next = ch->clients;
        if (ch->clients)
            ch->clients->prev = cl;
        ch->clients = cl;
        ch->n_clients++;
        def->n_clients++;
        (*m_clients_total)++;

        /* The first frame sets the browser's reconnect delay, jittered so
         * that a restart does not bring every client back at once. */
        struct buf b = BUF_INIT;
        unsigned base = (unsigned)def->cfg->retry_ms;
        sse_frame_retry(&b, base + (unsigned)(random() % (base + 1)));
        struct ev *e = ev_from_buf(&b, false, (struct sse_id){ 0, 0 });
        buf_deinit(&b);
        evq_push(&cl->pending, e);
        ev_unref(e);
        client_mark_dirty(cl);

        if (ch->state == CH_LIVE)
            client_start(cl);
        else
            cl->state = CL_WAITING;
    }
    buf_deinit(&id);
    buf_deinit(&key);
}

/* --- publish (POST) ---------------------------------------------------------------------- */

struct publish {
    struct req *r;
    struct events *hub;
    struct stream_def *def;
};

static void publish_cb(void *ctx, const redisReply *reply, int err)
{
    struct publish *p = ctx;
    if (err == 0 && reply->type == REDIS_REPLY_STRING) {
        struct buf body = BUF_INIT;
        buf_append_str(&body, "{\"id\":");
        json_append_string(&body, reply->str, reply->len);
        buf_append_str(&body, "}\n");
        (*p->def->m_published)++;
        req_respond_buf(p->r, 201, "application/json", &body);
        buf_deinit(&body);
    } else {
        if (err == 0 && reply && reply->type == REDIS_REPLY_ERROR)
            log_warn("publish failed", "stream=%s err=%s", p->def->cfg->name, LOG_Q(reply->str));
        (*p->hub->m_publish_errors)++;
        req_add_header(p->r, "Retry-After", "1");
        req_error(p->r, 503, "redis_unavailable");
    }
    free(p);
}

static void publish_handler(struct req *r, void *data)
{
    struct stream_def *def = data;
    struct events *h = def->hub;
    if (auth_require(r, h->cfg->batchd.admin_token) != 0)
        return;
    struct buf id = BUF_INIT, event = BUF_INIT;
    str_t rest = r->msg.query, k, v;
    int bad_event = 0;
    while (url_query_next(&rest, &k, &v)) {
        if (str_eq(k, STR_LIT("event"))) {
            buf_reset(&event);
            bad_event = url_decode(v, true, &event) != 0 || !sse_event_name_valid(buf_str(&event));
        }
    }
    const struct buf *body = &r->msg.body;
    if (req_param_decoded(r, "id", &id) != 0 || !ids_valid(id.data, id.len)) {
        req_error(r, 400, "invalid_id");
    } else if (bad_event) {
        req_error(r, 400, "invalid_event_name");
    } else if (body->len > (size_t)def->cfg->max_event_bytes) {
        req_error(r, 413, "event_too_large");
    } else if (!json_utf8_valid(body->data ? body->data : "", body->len)) {
        req_error(r, 400, "invalid_utf8");
    } else {
        struct publish *p = mem_calloc(1, sizeof(*p));
        p->r = r;
        p->hub = h;
        p->def = def;
        struct buf key = BUF_INIT;
        url_template_expand(def->cfg->key, "id", buf_str(&id), &key);
        char maxlen[24];
        snprintf(maxlen, sizeof(maxlen), "%lld", (long long)def->cfg->max_len);
        const char *ev = event.len ? event.data : "message";
        const char *argv[5] = { "1", key.data, maxlen, ev, body->data ? body->data : "" };
        size_t lens[5] = { 1, key.len, strlen(maxlen), strlen(ev), body->len };
        if (redis_pool_script(h->redis, &h->publish_script, publish_cb, p, 5, argv, lens) == 0)
            redis_pool_flush(h->redis);
        else
            publish_cb(p, NULL, -EAGAIN);
        buf_deinit(&key);
    }
    buf_deinit(&id);
    buf_deinit(&event);
}

/* --- pings, drain, lifecycle ---------------------------------------------------------------- */

static void ping_cb(uv_timer_t *t)
{
    struct events *h = t->data;
    uint64_t now = uv_now(h->loop);
    for (unsigned i = 0; i < h->nbuckets; i++) {
        for (struct channel *c = h->buckets[i]; c; c = c->hnext) {
            uint64_t every = (uint64_t)c->def->cfg->ping_interval_ms;
            struct sse_client *cl = c->clients;
            while (cl) {
                struct sse_client *next = cl->next;
                if (now - cl->last_write_ms >= every && cl->pending.n == 0) {
                    cl->last_write_ms = now;
                    evq_push(&cl->pending, h->ping_ev);
                    client_mark_dirty(cl);
                }
                cl = next;
            }
        }
    }
}

void events_drain(struct events *h)
{
    if (h == NULL || h->draining)
        return;
    h->draining = true;
    unsigned n = 0;
    for (unsigned i = 0; i < h->nbuckets; i++) {
        struct channel *c = h->buckets[i];
        while (c) {
            struct channel *cnext = c->hnext;
            c->refs++; /* keep it while its clients leave */
            struct sse_client *cl = c->clients;
            while (cl) {
                struct sse_client *next = cl->next;
                struct req *r = cl->r;
                struct buf b = BUF_INIT;
                sse_frame_retry(&b, (unsigned)c->def->cfg->retry_ms);
                struct ev *e = ev_from_buf(&b, false, (struct sse_id){ 0, 0 });
                buf_deinit(&b);
                evq_push(&cl->pending, e);
                ev_unref(e);
                if (client_flush(cl, uv_now(h->loop))) {
                    client_detach(cl);
                    req_stream_end(r);
                }
                n++;
                cl = next;
            }
            channel_unref(c);
            c = cnext;
        }
    }
    if (n)
        log_info("sse clients told to reconnect", "clients=%u", n);
}

static double gauge_clients(void *arg)
{
    struct events *h = arg;
    unsigned n = 0;
    for (unsigned i = 0; i < h->n_defs; i++)
        n += h->defs[i]->n_clients;
    return n;
}

static double gauge_channels(void *arg)
{
    return ((struct events *)arg)->n_channels;
}

static double gauge_queued(void *arg)
{
    struct events *h = arg;
    size_t n = 0;
    for (unsigned i = 0; i < h->nbuckets; i++)
        for (struct channel *c = h->buckets[i]; c; c = c->hnext)
            for (struct sse_client *cl = c->clients; cl; cl = cl->next)
                n += client_queued(cl);
    return (double)n;
}

static void def_metrics(struct stream_def *d)
{
    char l[128];
    snprintf(l, sizeof(l), "stream=\"%s\"", d->cfg->name);
    d->m_published = metrics_counter("batchd_sse_published_total", l, "Events published through batchd.");
    d->m_delivered = metrics_counter("batchd_sse_delivered_total", l, "Events handed to SSE client sockets.");
    d->m_overflow = metrics_counter("batchd_sse_overflow_disconnects_total", l,
                                    "SSE clients dropped for passing client_queue_bytes.");
    d->m_replayed = metrics_counter("batchd_sse_replayed_total", l,
                                    "Events sent from history to clients resuming with Last-Event-ID.");
    d->m_resets = metrics_counter("batchd_sse_resets_total", l,
                                  "Resumes from an id older than the history kept, or too far behind to "
                                  "replay within client_queue_bytes (event: reset sent).");
    d->m_resyncs = metrics_counter("batchd_sse_resyncs_total", l,
                                   "Channel gaps filled from history after the pub/sub connection came back.");
    d->m_rejected = metrics_counter("batchd_sse_rejected_total", l, "SSE requests refused at max_sse_clients.");
}

static void def_add(struct events *h, const struct cfg_stream *sc)
{
    struct stream_def *d = mem_calloc(1, sizeof(*d));
    d->hub = h;
    d->cfg = sc;
    def_metrics(d);
    h->defs = mem_realloc(h->defs, (h->n_defs + 1) * sizeof(*h->defs));
    h->defs[h->n_defs++] = d;
}

/* The ping timer ticks at a quarter of the shortest ping interval, so a
 * ping is at most that late. */
static void ping_arm(struct events *h)
{
    uint64_t ping_ms = 0;
    for (unsigned i = 0; i < h->n_defs; i++) {
        uint64_t p = (uint64_t)h->defs[i]->cfg->ping_interval_ms;
        if (!h->defs[i]->retired && (ping_ms == 0 || p < ping_ms))
            ping_ms = p;
    }
    uv_timer_stop(&h->ping);
    if (ping_ms) {
        uint64_t tick = ping_ms / 4 ? ping_ms / 4 : 1;
        uv_timer_start(&h->ping, ping_cb, tick, tick);
    }
}

struct events *events_new(uv_loop_t *loop, const struct config *cfg, struct redis_pool *redis)
{
    struct events *h = mem_calloc(1, sizeof(*h));
    h->loop = loop;
    h->cfg = cfg;
    h->redis = redis;
    h->publish_script.src = PUBLISH_SCRIPT;
    h->nbuckets = 256;
    h->buckets = mem_calloc(h->nbuckets, sizeof(*h->buckets));
    struct buf b = BUF_INIT;
    sse_frame_comment(&b, "ping");
    h->ping_ev = ev_from_buf(&b, false, (struct sse_id){ 0, 0 });
    buf_deinit(&b);
    m_clients_total = metrics_counter("batchd_sse_connections_total", "", "SSE streams opened.");
    h->m_publish_errors = metrics_counter("batchd_sse_publish_errors_total", "",
                                          "Publishes that could not reach Redis.");
    h->m_history_errors = metrics_counter("batchd_sse_history_errors_total", "",
                                          "History reads (resume or resync) that failed.");
    metrics_gauge_fn("batchd_sse_clients", "", "SSE clients connected.", gauge_clients, h);
    metrics_gauge_fn("batchd_sse_channels", "", "Channels subscribed (one per stream id with clients).",
                     gauge_channels, h);
    metrics_gauge_fn("batchd_sse_queued_bytes", "",
                     "Bytes waiting for SSE clients: batchd's queues plus the sockets' write queues.",
                     gauge_queued, h);
    for (unsigned i = 0; i < cfg->n_streams; i++)
        def_add(h, &cfg->streams[i]);
    uv_check_init(loop, &h->flush);
    h->flush.data = h;
    uv_check_start(&h->flush, flush_cb);
    uv_unref((uv_handle_t *)&h->flush);
    uv_timer_init(loop, &h->ping);
    h->ping.data = h;
    uv_unref((uv_handle_t *)&h->ping);
    uv_timer_init(loop, &h->resync);
    h->resync.data = h;
    uv_unref((uv_handle_t *)&h->resync);
    h->handles_open = 3;
    ping_arm(h);
    if (h->n_defs && redis)
        redis_pool_pubsub_start(redis, sub_cb, h);
    return h;
}

void events_reconfigure(struct events *h, const struct config *cfg)
{
    h->cfg = cfg;
    for (unsigned i = 0; i < h->n_defs; i++)
        h->defs[i]->retired = true;
    for (unsigned k = 0; k < cfg->n_streams; k++) {
        const struct cfg_stream *sc = &cfg->streams[k];
        struct stream_def *d = NULL;
        for (unsigned i = 0; i < h->n_defs && d == NULL; i++)
            if (strcmp(h->defs[i]->cfg->name, sc->name) == 0)
                d = h->defs[i];
        if (d == NULL) {
            def_add(h, sc);
            continue;
        }
        /* Connected clients keep their channel (and key); the new limits,
         * pings and retry apply to them from now on. */
        d->cfg = sc;
        d->retired = false;
    }
    ping_arm(h);
    if (h->n_defs && h->redis)
        redis_pool_pubsub_start(h->redis, sub_cb, h);
}

void events_add_routes(struct events *h, struct router *rt)
{
    for (unsigned i = 0; i < h->n_defs; i++) {
        struct stream_def *d = h->defs[i];
        if (d->retired)
            continue;
        router_add(rt, ROUTE_M(HTTP_GET), d->cfg->path, subscribe_handler, d, ROUTE_AT_HEAD);
        router_add(rt, ROUTE_M(HTTP_POST), d->cfg->path, publish_handler, d, 0);
    }
}

static void handle_closed_cb(uv_handle_t *hnd)
{
    struct events *h = hnd->data;
    if (--h->handles_open > 0)
        return;
    ev_unref(h->ping_ev);
    free(h->buckets);
    for (unsigned i = 0; i < h->n_defs; i++)
        free(h->defs[i]);
    free(h->defs);
    free(h);
}

void events_free(struct events *h)
{
    if (h == NULL)
        return;
    h->draining = true;
    /* Channels left are held only by reads the pool has cancelled by now. */
    for (unsigned i = 0; i < h->nbuckets; i++) {
        struct channel *c = h->buckets[i];
        while (c) {
            struct channel *next = c->hnext;
            evq_clear(&c->held, true);
            free(c->key);
            free(c);
            c = next;
        }
        h->buckets[i] = NULL;
    }
    uv_close((uv_handle_t *)&h->flush, handle_closed_cb);
    uv_close((uv_handle_t *)&h->ping, handle_closed_cb);
    uv_close((uv_handle_t *)&h->resync, handle_closed_cb);
}
