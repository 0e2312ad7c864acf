/*
 * events: SSE fan-out with lossless resume. See events.h.
 *
 * Channel states:   SUBSCRIBING ──confirmed──> SYNCING ──history read──> LIVE
 *                        ^                      │    ^                     │
 *                        │              failed  v    │ backoff timer       │
 *                        │                   SYNC_WAIT                     │
 *                        └──────────────── pub/sub connection lost ───────┘
 *
 * A channel's position is the Stream id from which it owes its clients
 * every event. It is read once (XREVRANGE + - COUNT 1): as soon as a
 * client without Last-Event-ID arrives, in parallel with the SUBSCRIBE, or
 * else by the first sync. SYNCING then reads everything after the position
 * (XRANGE), unless the position itself was read after the confirmation:
 * what follows it arrives live. Live messages that arrive while SYNCING
 * are held and delivered after that history. A read that fails is retried
 * with backoff (the channel stays subscribed); one overtaken by a lost
 * connection only passes on what it read (sync_gen).
 *
 * Client states:
 *   POSITIONING (no Last-Event-ID, channel has no position: no answer yet)
 *        │ position read ──> head, LIVE from the channel's position
 *        └ read failed   ──> 200, "retry:", end (EventSource comes back)
 *   WAITING (Last-Event-ID, channel not LIVE) ──> REPLAYING (own history
 *   read, from Last-Event-ID) ──> LIVE.
 * So every stream starts at a definite position (Last-Event-ID, or the
 * channel's newest id passed on when its 200 goes out) and gets every
 * event after it. A client never gets an id that is not greater than the
 * last one it got, which removes every duplicate between history, held and
 * live events.
 *
 * Events are serialised once into a refcounted frame; a client's queue
 * holds references (sse_queue.h), and is written at the end of the loop
 * iteration, one write per client in flight.
 */
#include "daemon/sse/events.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http/auth.h"
#include "daemon/backend/backoff.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/backend/redis_pool.h"
#include "daemon/http/req.h"
#include "daemon/sse/sse_publish.h"
#include "daemon/sse/sse_queue.h"
#include "proto/hashtab.h"
#include "proto/ids.h"
#include "proto/mem.h"
#include "proto/sse.h"
#include "proto/url.h"

#define HISTORY_PAGE 500

/* --- structures ------------------------------------------------------------------ */

enum ch_state { CH_SUBSCRIBING, CH_SYNCING, CH_SYNC_WAIT, CH_LIVE };
enum cl_state { CL_POSITIONING, CL_WAITING, CL_REPLAYING, CL_LIVE };

/* Why a stream request is answered with a "retry:" and ended at once. */
enum turn_away { TURN_AWAY_OVERLOADED, TURN_AWAY_UNAVAILABLE, TURN_AWAY_SHUTTING_DOWN, TURN_AWAY__COUNT };

struct stream_def {
    struct events *hub;
    const struct cfg_stream *cfg;
    bool retired;               /* dropped by a reload: no new clients */
    unsigned n_clients;
    struct sse_publish_stats pub;
    uint64_t *m_delivered, *m_overflow, *m_replayed, *m_resets, *m_resyncs;
    uint64_t *m_rejected[TURN_AWAY__COUNT];
    uint64_t *m_invalid_live, *m_invalid_history;
};

struct channel {
    struct hashtab_node hnode;  /* in the hub's table, keyed by key */
    struct events *hub;
    struct stream_def *def;
    char *key;
    uint32_t refs;              /* clients + history reads in flight */
    struct sse_client *clients;
    unsigned n_clients;
    enum ch_state state;
    bool have_last;             /* the channel has its position */
    unsigned positioning;       /* position reads in flight */
    struct sse_id last_id;      /* newest id this channel has passed on */
    struct sse_evq held;        /* live events received while SYNCING */
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
    struct sse_out *out;        /* what waits to be written */
    struct history *op;         /* own history read, when REPLAYING */
    bool *gone;                 /* set when the client is freed during a call that may close it */
    enum cl_state state;
    bool dirty;
    bool want_replay;
    bool have_last;
    struct sse_id from;         /* Last-Event-ID */
    struct sse_id last_id;      /* newest id sent */
    struct sse_evq held;        /* live events received while REPLAYING */
    uint64_t last_write_ms;
};

enum hist_kind {
    HIST_CLIENT,                /* a client's replay from its Last-Event-ID */
    HIST_GAP,                   /* a channel's sync: everything after its position */
    HIST_POSITION,              /* a channel's position: the newest id */
};

/* A read of a Stream's history (paged), or of its newest id. */
struct history {
    struct channel *ch;         /* holds a reference */
    struct sse_client *cl;      /* client reads; NULL once the client left */
    enum hist_kind kind;
    unsigned outstanding;
    int err;
    char why[96];               /* Redis's error reply, for the log */
    unsigned gen;               /* channel syncs: the channel's sync_gen at start (0: none) */
    unsigned n_invalid;         /* entries dropped: not valid as events */
    bool reset;
    bool too_far;               /* client reads: the replay would not fit its queue */
    bool have_oldest, have_newest;
    struct sse_id from, oldest, newest;
    struct sse_evq got;         /* entries read, in order */
    unsigned page_len;
};

struct events {
    uv_loop_t *loop;
    const struct config *cfg;
    struct redis_pool *redis;
    struct stream_def **defs;   /* stable addresses: channels point at them */
    unsigned n_defs;
    struct hashtab channels;    /* by key */
    struct sse_client *dirty;
    uv_check_t flush;
    uv_timer_t ping;
    uv_timer_t resync;          /* retries failed channel syncs */
    uint64_t resync_due;        /* loop time it fires at, 0 when stopped */
    unsigned handles_open;
    struct sse_publisher *publisher;
    struct sse_ev *ping_ev;
    bool draining;
    uint64_t *m_history_errors;
};

static uint64_t *m_clients_total;

/* The reconnect delay a stream tells its browser: retry_ms plus up to as
 * much again, so that clients told at one moment do not come back at one. */
static unsigned retry_jittered(const struct cfg_stream *cfg)
{
    unsigned base = (unsigned)cfg->retry_ms;
    return base + (unsigned)(random() % (base + 1));
}

/* --- channels ------------------------------------------------------------------ */

static struct channel *channel_find(struct events *h, const char *key, size_t len)
{
    struct hashtab_node *n = hashtab_find(&h->channels, key, len);
    return n ? hashtab_entry(n, struct channel, hnode) : NULL;
}

/* The next channel of a walk over every channel:
 *   for (hashtab_iter_init(&it, &h->channels); (c = channel_next(&it)) != NULL;)
 * The loop may drop the channel it was given (hashtab.h). */
static struct channel *channel_next(struct hashtab_iter *it)
{
    struct hashtab_node *n = hashtab_iter_next(it);
    return n ? hashtab_entry(n, struct channel, hnode) : NULL;
}

static struct channel *channel_get(struct events *h, struct stream_def *def, const char *key)
{
    size_t len = strlen(key);
    uint32_t hash = hashtab_hash(key, len);
    struct hashtab_node *n = hashtab_find_hashed(&h->channels, key, len, hash);
    if (n)
        return hashtab_entry(n, struct channel, hnode);
    struct channel *c = mem_calloc(1, sizeof(*c));
    c->hub = h;
    c->def = def;
    c->key = mem_strdup(key);
    c->state = CH_SUBSCRIBING;
    hashtab_add(&h->channels, &c->hnode, c->key, len, hash);
    redis_pool_subscribe(h->redis, key);
    return c;
}

static void channel_unref(struct channel *c)
{
    if (--c->refs > 0)
        return;
    struct events *h = c->hub;
    hashtab_remove(&h->channels, &c->hnode);
    if (!h->draining)
        redis_pool_unsubscribe(h->redis, c->key);
    sse_evq_clear(&c->held, true);
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

/* A write finished and frames wait: flush at the end of this iteration. */
static void client_written_cb(void *owner)
{
    client_mark_dirty(owner);
}

/* What the client holds, in bytes; with kernel, its socket's unsent bytes too. */
static size_t client_queued(const struct sse_client *cl, bool kernel)
{
    return sse_out_queued(cl->out, kernel) + cl->held.cost;
}

static bool client_fits(const struct sse_client *cl, size_t extra)
{
    return sse_out_fits(cl->out, cl->held.cost + extra, (size_t)cl->ch->def->cfg->client_queue_bytes);
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
    if (cl->gone)
        *cl->gone = true;
    sse_out_free(cl->out);
    sse_evq_clear(&cl->held, true);
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
             def->cfg->name, LOG_Q(cl->ch->key), client_queued(cl, true), (long long)def->cfg->client_queue_bytes);
    client_detach(cl);
    req_stream_abort(r, CONN_CLOSE_SSE_QUEUE_OVERFLOW);
}

/* Gives an event to a client. Returns false when the client was dropped. */
static bool client_offer(struct sse_client *cl, struct sse_ev *e)
{
    if (cl->state == CL_WAITING || cl->state == CL_POSITIONING)
        return true; /* its history read, or its position, covers this */
    if (cl->state == CL_LIVE && e->has_id && cl->have_last && sse_id_cmp(e->id, cl->last_id) <= 0)
        return true; /* sent already */
    if (!client_fits(cl, SSE_EV_COST(e))) {
        client_overflow(cl);
        return false;
    }
    if (cl->state == CL_REPLAYING) {
        sse_evq_push(&cl->held, e);
        return true;
    }
    sse_out_push(cl->out, e);
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
    struct sse_evq held;
    sse_evq_take(&held, &cl->held);
    cl->state = CL_LIVE;
    for (unsigned i = 0; i < held.n; i++)
        if (!client_offer(cl, held.v[i]))
            break; /* dropped */
    sse_evq_clear(&held, true);
}

/* Starts writing the client's pending frames. Returns false when the write
 * failed: the connection, and the client with it, are gone. */
static bool client_flush(struct sse_client *cl, uint64_t now)
{
    if (cl->out->writing || cl->out->pending.n == 0)
        return true;
    cl->last_write_ms = now;
    return sse_out_flush(cl->out, cl->ch->def->m_delivered) == 0;
}

static void flush_cb(uv_check_t *hnd)
{
    struct events *h = hnd->data;
    uint64_t now = uv_now(h->loop);
    /* A write the socket takes at once may mark its client dirty again
     * (more frames than one write holds): go round until nothing is left. */
    while (h->dirty) {
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
}

static void turn_away_abort_cb(struct req *r)
{
    *(bool *)r->hdata = true;
}

/* Answers a stream request that cannot be served now so that EventSource
 * comes back by itself: a 200 (any other status is final for it) holding
 * a jittered "retry:" (and "event: overloaded" when it is the limit), then
 * the end of the stream. */
static void stream_turn_away(struct req *r, struct stream_def *def, enum turn_away why)
{
    static const enum conn_close_reason reasons[TURN_AWAY__COUNT] = {
        [TURN_AWAY_OVERLOADED] = CONN_CLOSE_SSE_OVERLOADED,
        [TURN_AWAY_UNAVAILABLE] = CONN_CLOSE_SSE_UNAVAILABLE,
        [TURN_AWAY_SHUTTING_DOWN] = CONN_CLOSE_SHUTDOWN,
    };
    (*def->m_rejected[why])++;
    bool gone = false; /* a failed write closes the connection and frees r */
    r->hdata = &gone;
    r->abort_cb = turn_away_abort_cb;
    req_add_header(r, "Cache-Control", "no-cache");
    req_add_header(r, "X-Accel-Buffering", "no");
    req_stream_start(r, 200, "text/event-stream", false);
    struct buf b = BUF_INIT;
    sse_frame_retry(&b, retry_jittered(def->cfg));
    if (why == TURN_AWAY_OVERLOADED)
        buf_append_str(&b, "event: overloaded\ndata: {\"error\":\"too_many_streams\"}\n\n");
    uv_buf_t v = uv_buf_init(b.data, (unsigned)b.len);
    if (!gone)
        (void)req_stream_write_copy(r, &v, 1);
    buf_deinit(&b);
    if (!gone) {
        r->hdata = NULL;
        req_stream_end_reason(r, reasons[why]);
    }
}

/* Sends the response head and the first frame, a jittered "retry:".
 * Returns false when the connection failed and took the client with it. */
static bool client_send_head(struct sse_client *cl)
{
    struct req *r = cl->r;
    bool gone = false;
    cl->gone = &gone;
    req_add_header(r, "Cache-Control", "no-cache");
    req_add_header(r, "X-Accel-Buffering", "no");
    req_stream_start(r, 200, "text/event-stream", false);
    if (gone)
        return false;
    cl->gone = NULL;
    req_stream_compact(r);
    struct buf b = BUF_INIT;
    sse_frame_retry(&b, retry_jittered(cl->ch->def->cfg));
    struct sse_ev *e = sse_ev_new(&b, false, (struct sse_id){ 0, 0 });
    buf_deinit(&b);
    sse_out_push(cl->out, e);
    sse_ev_unref(e);
    client_mark_dirty(cl);
    return true;
}

/* A client without Last-Event-ID starts at the channel's position, the
 * newest id it has passed on: everything the channel passes on from now
 * is after it. */
static void client_begin_live(struct sse_client *cl)
{
    cl->state = CL_LIVE;
    cl->last_id = cl->ch->last_id;
    cl->have_last = true;
    (void)client_send_head(cl);
}

/* --- delivering ------------------------------------------------------------------ */

static void channel_deliver(struct channel *ch, struct sse_ev *e)
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

/* An entry of an XRANGE reply: [id, [field, value, ...]]. Returns false
 * when it has no id; *out is NULL for an entry that is not a valid event. */
static bool ev_from_entry(const redisReply *entry, struct sse_id *id, struct sse_ev **out)
{
    *out = NULL;
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 || entry->element[0]->type != REDIS_REPLY_STRING)
        return false;
    str_t id_s = str_make(entry->element[0]->str, entry->element[0]->len);
    if (!sse_id_parse(id_s, id))
        return false;
    const redisReply *f = entry->element[1];
    if (f->type != REDIS_REPLY_ARRAY)
        return true;
    str_t event = STR_NULL, data = STR_LIT("");
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (k->len == 5 && memcmp(k->str, "event", 5) == 0)
            event = str_make(v->str, v->len);
        else if (k->len == 4 && memcmp(k->str, "data", 4) == 0)
            data = str_make(v->str, v->len);
    }
    *out = sse_ev_event(*id, id_s, event, data);
    return true;
}

/* --- history reads ------------------------------------------------------------------ */

static void history_finish(struct history *op);
static void history_page(struct history *op);
static void client_start(struct sse_client *cl);
static void start_sync(struct channel *ch);
static void resync_arm(struct events *h, uint64_t due);

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
        for (size_t i = 0; i < reply->elements && !op->too_far; i++) {
            struct sse_ev *e;
            struct sse_id id;
            if (!ev_from_entry(reply->element[i], &id, &e))
                continue;
            op->from = id; /* the next page starts after it, valid or not */
            if (e == NULL) {
                op->n_invalid++;
                continue;
            }
            sse_evq_push(&op->got, e);
            sse_ev_unref(e); /* the queue holds it */
            if (op->cl && !client_fits(op->cl, op->got.cost)) {
                /* Offered, the replay would overflow the client, which
                 * would come back with the same id forever: stop reading,
                 * it gets a reset instead. */
                op->too_far = true;
                sse_evq_clear(&op->got, true);
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

static struct history *history_new(struct channel *ch, enum hist_kind kind)
{
    struct history *op = mem_calloc(1, sizeof(*op));
    op->ch = ch;
    op->kind = kind;
    ch->refs++;
    return op;
}

static void history_free(struct history *op)
{
    sse_evq_clear(&op->got, true);
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
    if (!op->too_far && !client_fits(cl, op->got.cost))
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
        struct sse_ev *e = sse_ev_new(&b, op->have_newest, op->newest);
        buf_deinit(&b);
        bool alive = client_offer(cl, e);
        sse_ev_unref(e);
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

/* The channel passes on what it held and goes live; clients waiting to
 * read their own history start. */
static void channel_go_live(struct channel *ch)
{
    ch->state = CH_LIVE;
    struct sse_evq held;
    sse_evq_take(&held, &ch->held);
    for (unsigned i = 0; i < held.n; i++)
        channel_deliver(ch, held.v[i]);
    sse_evq_clear(&held, true);
    struct sse_client *cl = ch->clients;
    while (cl) {
        struct sse_client *next = cl->next;
        if (cl->state == CL_WAITING)
            client_start(cl);
        cl = next;
    }
}

/* A sync failed but the channel is still subscribed: retry the read only,
 * later. Messages that arrive meanwhile are read from the Stream by the
 * retry. */
static void channel_sync_failed(struct channel *ch, struct history *op)
{
    struct events *h = ch->hub;
    if (ch->sync_failures++ == 0)
        log_warn("sse channel sync failed, retrying with backoff", "channel=%s err=%d reply=%s",
                 LOG_Q(ch->key), op->err, LOG_Q(op->why));
    ch->state = CH_SYNC_WAIT;
    ch->sync_retry_ms = uv_now(h->loop) + backoff_next_ms(&ch->sync_attempt);
    resync_arm(h, ch->sync_retry_ms);
}

static void channel_sync_ok(struct channel *ch)
{
    if (ch->sync_failures) {
        log_info("sse channel sync recovered", "channel=%s failed_attempts=%u", LOG_Q(ch->key),
                 ch->sync_failures);
        ch->sync_failures = 0;
    }
    ch->sync_attempt = 0;
}

/* A gap read is done: pass on what it read, then go live. */
static void channel_sync_done(struct history *op)
{
    struct channel *ch = op->ch;
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
        (*ch->hub->m_history_errors)++;
        channel_sync_failed(ch, op);
        return;
    }
    channel_sync_ok(ch);
    if (op->got.n)
        (*ch->def->m_resyncs)++;
    for (unsigned i = 0; i < op->got.n; i++)
        channel_deliver(ch, op->got.v[i]);
    channel_go_live(ch);
}

static void start_gap(struct channel *ch)
{
    struct history *op = history_new(ch, HIST_GAP);
    op->gen = ch->sync_gen;
    op->from = ch->last_id;
    history_page(op);
    if (op->outstanding == 0)
        history_finish(op); /* could not be sent: fails */
}

/* Reads the channel's position. in_sync: as the sync after a confirmed
 * SUBSCRIBE, which then needs no gap read when this read sets it. */
static void channel_read_position(struct channel *ch, bool in_sync)
{
    struct history *op = history_new(ch, HIST_POSITION);
    op->gen = in_sync ? ch->sync_gen : 0;
    ch->positioning++;
    const char *argv[6] = { "XREVRANGE", ch->key, "+", "-", "COUNT", "1" };
    history_cmd(op, newest_cb, 6, argv);
    if (op->outstanding == 0)
        history_finish(op); /* could not be sent: fails */
}

static void channel_position_done(struct history *op)
{
    struct channel *ch = op->ch;
    bool in_sync = op->gen != 0 && op->gen == ch->sync_gen && ch->state == CH_SYNCING;
    ch->positioning--;
    if (op->err == 0) {
        /* Any position read is a valid one: the first to land is kept. */
        bool mine = !ch->have_last;
        if (mine) {
            ch->have_last = true;
            ch->last_id = op->have_newest ? op->newest : (struct sse_id){ 0, 0 };
            struct sse_client *cl = ch->clients;
            while (cl) {
                struct sse_client *next = cl->next;
                if (cl->state == CL_POSITIONING)
                    client_begin_live(cl);
                cl = next;
            }
        }
        if (in_sync) {
            channel_sync_ok(ch);
            if (mine)
                channel_go_live(ch); /* read after the confirmation: what follows arrives live */
            else
                start_gap(ch); /* set earlier: read what came since */
        }
        return;
    }
    (*ch->hub->m_history_errors)++;
    if (in_sync)
        channel_sync_failed(ch, op);
    else
        log_warn("sse channel position read failed", "channel=%s err=%d reply=%s", LOG_Q(ch->key), op->err,
                 LOG_Q(op->why));
    if (ch->have_last || ch->positioning)
        return;
    /* No position to start from: such clients come back after retry ms. */
    struct sse_client *cl = ch->clients;
    while (cl) {
        struct sse_client *next = cl->next;
        if (cl->state == CL_POSITIONING) {
            struct req *r = cl->r;
            struct stream_def *def = ch->def;
            client_detach(cl);
            stream_turn_away(r, def, TURN_AWAY_UNAVAILABLE);
        }
        cl = next;
    }
}

static void history_finish(struct history *op)
{
    if (op->kind != HIST_POSITION && op->err == 0 && !op->too_far && op->page_len == HISTORY_PAGE &&
        (op->kind != HIST_CLIENT || op->cl)) {
        history_page(op); /* more to read */
        if (op->outstanding)
            return;
    }
    if (op->n_invalid) {
        struct stream_def *def = op->ch->def;
        *def->m_invalid_history += op->n_invalid;
        log_warn("invalid stream entries dropped", "stream=%s channel=%s entries=%u", def->cfg->name,
                 LOG_Q(op->ch->key), op->n_invalid);
    }
    switch (op->kind) {
    case HIST_CLIENT:
        if (op->cl)
            client_history_done(op);
        break;
    case HIST_GAP:
        channel_sync_done(op);
        break;
    case HIST_POSITION:
        channel_position_done(op);
        break;
    }
    history_free(op);
}

/* Channel subscribed: read what came after its position, or the position. */
static void start_sync(struct channel *ch)
{
    ch->state = CH_SYNCING;
    ch->sync_gen++;
    if (ch->have_last)
        start_gap(ch);
    else
        channel_read_position(ch, true);
}

static void resync_cb(uv_timer_t *t)
{
    struct events *h = t->data;
    uint64_t now = uv_now(h->loop), next = 0;
    h->resync_due = 0;
    struct hashtab_iter it;
    struct channel *c;
    for (hashtab_iter_init(&it, &h->channels); (c = channel_next(&it)) != NULL;) {
        if (c->state != CH_SYNC_WAIT)
            continue;
        c->refs++; /* a sync failing at once may turn its last clients away */
        if (c->sync_retry_ms <= now)
            start_sync(c);
        if (c->state == CH_SYNC_WAIT && (next == 0 || c->sync_retry_ms < next))
            next = c->sync_retry_ms;
        channel_unref(c);
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

/* The channel is live: a client with Last-Event-ID reads its own history. */
static void client_start(struct sse_client *cl)
{
    cl->state = CL_REPLAYING;
    struct history *op = history_new(cl->ch, HIST_CLIENT);
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
    if (op->outstanding == 0)
        history_finish(op);
}

/* --- pub/sub ----------------------------------------------------------------------- */

static void sub_message(struct events *h, const char *chan, size_t chan_len, const char *msg, size_t msg_len)
{
    struct channel *c = channel_find(h, chan, chan_len);
    str_t id_s, event, data;
    struct sse_id id;
    if (c == NULL || c->state == CH_SUBSCRIBING || c->state == CH_SYNC_WAIT)
        return; /* the (next) sync reads it from history */
    struct sse_ev *e = NULL;
    if (sse_message_parse(str_make(msg, msg_len), &id_s, &event, &data) && sse_id_parse(id_s, &id))
        e = sse_ev_event(id, id_s, event, data);
    if (e == NULL) {
        (*c->def->m_invalid_live)++;
        log_warn("malformed event message ignored", "channel=%s", LOG_Q(c->key));
        return;
    }
    if (c->state == CH_SYNCING)
        sse_evq_push(&c->held, e);
    else
        channel_deliver(c, e);
    sse_ev_unref(e);
}

static void sub_cb(void *arg, enum redis_sub_event kind, const char *chan, size_t chan_len,
                   const char *msg, size_t msg_len)
{
    struct events *h = arg;
    switch (kind) {
    case REDIS_SUB_DOWN: {
        /* Clients stay; every channel resubscribes and fills its gap. */
        struct hashtab_iter it;
        struct channel *c;
        for (hashtab_iter_init(&it, &h->channels); (c = channel_next(&it)) != NULL;)
            c->state = CH_SUBSCRIBING;
        return;
    }
    case REDIS_SUB_UP:
        return;
    case REDIS_SUB_SUBSCRIBED: {
        struct channel *c = channel_find(h, chan, chan_len);
        if (c && c->state == CH_SUBSCRIBING)
            start_sync(c);
        return;
    }
    case REDIS_SUB_MESSAGE:
        sub_message(h, chan, chan_len, msg, msg_len);
        return;
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

/* A new client in its channel: where its stream starts decides when its
 * answer goes out. */
static void client_arrive(struct sse_client *cl)
{
    struct channel *ch = cl->ch;
    if (cl->want_replay) {
        /* From its Last-Event-ID, read once the channel is live. */
        if (!client_send_head(cl))
            return;
        if (ch->state == CH_LIVE)
            client_start(cl);
        else
            cl->state = CL_WAITING;
    } else if (ch->have_last) {
        client_begin_live(cl);
    } else {
        /* No position yet: answer once there is one (a round trip), so a
         * publish sent after the 200 is always after it. */
        cl->state = CL_POSITIONING;
        if (ch->positioning == 0)
            channel_read_position(ch, false);
    }
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
        stream_turn_away(r, def, TURN_AWAY_SHUTTING_DOWN);
    } else if (def->n_clients >= (unsigned)def->cfg->max_sse_clients) {
        stream_turn_away(r, def, TURN_AWAY_OVERLOADED);
    } else {
        url_template_expand(def->cfg->key, "id", buf_str(&id), &key);
        struct sse_client *cl = mem_calloc(1, sizeof(*cl));
        cl->r = r;
        cl->want_replay = replay;
        cl->from = from;
        cl->last_write_ms = uv_now(h->loop);
        cl->out = sse_out_new(r, cl, client_written_cb);
        sse_out_socket_setup(cl->out, def->cfg->socket_send_buffer_bytes);
        r->hdata = cl;
        r->abort_cb = client_abort_cb;

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
        client_arrive(cl);
    }
    buf_deinit(&id);
    buf_deinit(&key);
}

/* --- publish (POST) ---------------------------------------------------------------------- */

static void publish_handler(struct req *r, void *data)
{
    struct stream_def *def = data;
    struct events *h = def->hub;
    if (auth_require(r, h->cfg->batchd.admin_token) != 0)
        return;
    struct buf id = BUF_INIT;
    if (req_param_decoded(r, "id", &id) != 0 || !ids_valid(id.data, id.len))
        req_error(r, 400, "invalid_id");
    else
        sse_publish_handle(h->publisher, r, def->cfg, &def->pub, buf_str(&id));
    buf_deinit(&id);
}

/* --- pings, drain, lifecycle ---------------------------------------------------------------- */

static void ping_cb(uv_timer_t *t)
{
    struct events *h = t->data;
    uint64_t now = uv_now(h->loop);
    struct hashtab_iter it;
    struct channel *c;
    for (hashtab_iter_init(&it, &h->channels); (c = channel_next(&it)) != NULL;) {
        uint64_t every = (uint64_t)c->def->cfg->ping_interval_ms;
        for (struct sse_client *cl = c->clients; cl; cl = cl->next) {
            /* Not before the answer, nor behind a write that has not
             * gone (the connection's write timeout watches that). */
            if (cl->state == CL_POSITIONING || cl->out->writing || cl->out->pending.n ||
                now - cl->last_write_ms < every)
                continue;
            cl->last_write_ms = now;
            sse_out_push(cl->out, h->ping_ev);
            client_mark_dirty(cl);
        }
    }
}

void events_drain(struct events *h)
{
    if (h == NULL || h->draining)
        return;
    h->draining = true;
    unsigned n = 0;
    struct hashtab_iter it;
    struct channel *c;
    for (hashtab_iter_init(&it, &h->channels); (c = channel_next(&it)) != NULL;) {
        c->refs++; /* keep it while its clients leave */
        struct sse_client *cl = c->clients;
        while (cl) {
            struct sse_client *next = cl->next;
            struct req *r = cl->r;
            n++;
            if (cl->state == CL_POSITIONING) {
                client_detach(cl);
                stream_turn_away(r, c->def, TURN_AWAY_SHUTTING_DOWN);
                cl = next;
                continue;
            }
            /* Jittered like the first frame, so that a restart does
             * not bring every browser back at the same moment. */
            struct buf b = BUF_INIT;
            sse_frame_retry(&b, retry_jittered(c->def->cfg));
            struct sse_ev *e = sse_ev_new(&b, false, (struct sse_id){ 0, 0 });
            buf_deinit(&b);
            sse_out_push(cl->out, e);
            sse_ev_unref(e);
            if (sse_out_finish(cl->out) == 0) {
                client_detach(cl);
                req_stream_end(r);
            }
            cl = next;
        }
        channel_unref(c);
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
    return ((struct events *)arg)->channels.count;
}

static double gauge_queued(void *arg)
{
    struct events *h = arg;
    size_t n = 0;
    struct hashtab_iter it;
    struct channel *c;
    for (hashtab_iter_init(&it, &h->channels); (c = channel_next(&it)) != NULL;)
        for (struct sse_client *cl = c->clients; cl; cl = cl->next)
            n += client_queued(cl, true);
    return (double)n;
}

static void def_metrics(struct stream_def *d)
{
    char l[160];
    const char *name = d->cfg->name;
    snprintf(l, sizeof(l), "stream=\"%s\"", name);
    sse_publish_stats_init(&d->pub, name);
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
    static const char *const why[TURN_AWAY__COUNT] = {
        [TURN_AWAY_OVERLOADED] = "max_sse_clients",
        [TURN_AWAY_UNAVAILABLE] = "redis_unavailable",
        [TURN_AWAY_SHUTTING_DOWN] = "shutting_down",
    };
    for (int i = 0; i < TURN_AWAY__COUNT; i++) {
        snprintf(l, sizeof(l), "stream=\"%s\",reason=\"%s\"", name, why[i]);
        d->m_rejected[i] = metrics_counter("batchd_sse_rejected_total", l,
                                           "SSE requests answered with a jittered retry: and an ended "
                                           "stream (EventSource comes back by itself), by reason.");
    }
    const char *help = "Events dropped because their name, id or data could not be sent as SSE, by where "
                       "they came from.";
    snprintf(l, sizeof(l), "stream=\"%s\",source=\"live\"", name);
    d->m_invalid_live = metrics_counter("batchd_sse_invalid_events_total", l, help);
    snprintf(l, sizeof(l), "stream=\"%s\",source=\"history\"", name);
    d->m_invalid_history = metrics_counter("batchd_sse_invalid_events_total", l, help);
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
    h->publisher = sse_publisher_new(redis);
    hashtab_init(&h->channels, 256);
    struct buf b = BUF_INIT;
    sse_frame_comment(&b, "ping");
    h->ping_ev = sse_ev_new(&b, false, (struct sse_id){ 0, 0 });
    buf_deinit(&b);
    m_clients_total = metrics_counter("batchd_sse_connections_total", "", "SSE streams opened.");
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
    sse_ev_unref(h->ping_ev);
    sse_publisher_free(h->publisher);
    hashtab_deinit(&h->channels);
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
    struct hashtab_iter it;
    struct channel *c;
    for (hashtab_iter_init(&it, &h->channels); (c = channel_next(&it)) != NULL;) {
        hashtab_remove(&h->channels, &c->hnode);
        sse_evq_clear(&c->held, true);
        free(c->key);
        free(c);
    }
    uv_close((uv_handle_t *)&h->flush, handle_closed_cb);
    uv_close((uv_handle_t *)&h->ping, handle_closed_cb);
    uv_close((uv_handle_t *)&h->resync, handle_closed_cb);
}
