/*
 * sse_client: one GET of a stream, from its answer to its end.
 *
 * Client states:
 *   POSITIONING (no Last-Event-ID, channel has no position: no answer yet)
 *        │ position read ──> head, LIVE from the channel's position
 *        └ read failed   ──> 200, "retry:", end (EventSource comes back)
 *   WAITING (Last-Event-ID, channel not LIVE) ──> REPLAYING (own history
 *   read, from Last-Event-ID) ──> LIVE.
 *
 * A client never gets an id that is not greater than the last one it got,
 * which removes every duplicate between history, held and live events.
 * What it is offered goes to its queue (sse_queue.h), bounded by
 * client_queue_bytes; it is marked dirty and written at the end of the
 * loop iteration, one write in flight per client.
 */
#include <stdlib.h>

#include "daemon/http/req.h"
#include "daemon/log.h"
#include "daemon/sse/sse_int.h"
#include "proto/mem.h"

unsigned sse_retry_jittered(const struct cfg_stream *cfg)
{
    unsigned base = (unsigned)cfg->retry_ms;
    return base + (unsigned)(random() % (base + 1));
}

void sse_client_mark_dirty(struct sse_client *cl)
{
    if (!cl->dirty) {
        cl->dirty = true;
        TAILQ_INSERT_TAIL(&cl->ch->hub->dirty, cl, dirty_link);
    }
}

/* A write finished and frames wait: flush at the end of this iteration. */
static void client_written_cb(void *owner)
{
    sse_client_mark_dirty(owner);
}

size_t sse_client_queued(const struct sse_client *cl, bool kernel)
{
    return sse_out_queued(cl->out, kernel) + cl->held.cost;
}

bool sse_client_fits(const struct sse_client *cl, size_t extra)
{
    return sse_out_fits(cl->out, cl->held.cost + extra, (size_t)cl->ch->def->cfg->client_queue_bytes);
}

void sse_client_detach(struct sse_client *cl)
{
    struct sse_channel *ch = cl->ch;
    LIST_REMOVE(cl, link);
    ch->def->n_clients--;
    if (cl->op)
        cl->op->cl = NULL;
    if (cl->gone)
        *cl->gone = true;
    sse_out_free(cl->out);
    sse_evq_clear(&cl->held, true);
    if (cl->dirty)
        TAILQ_REMOVE(&ch->hub->dirty, cl, dirty_link);
    cl->r->hdata = NULL;
    cl->r->abort_cb = NULL;
    free(cl);
    sse_channel_unref(ch);
}

static void client_overflow(struct sse_client *cl)
{
    struct req *r = cl->r;
    struct sse_stream *def = cl->ch->def;
    (*def->m_overflow)++;
    log_info("sse client over its queue bound", "stream=%s channel=%s queued_bytes=%zu limit=%lld",
             def->cfg->name, LOG_Q(cl->ch->key), sse_client_queued(cl, true),
             (long long)def->cfg->client_queue_bytes);
    sse_client_detach(cl);
    req_stream_abort(r, CONN_CLOSE_SSE_QUEUE_OVERFLOW);
}

bool sse_client_offer(struct sse_client *cl, struct sse_ev *e)
{
    if (cl->state == CL_WAITING || cl->state == CL_POSITIONING)
        return true; /* its history read, or its position, covers this */
    if (cl->state == CL_LIVE && e->has_id && cl->have_last && sse_id_cmp(e->id, cl->last_id) <= 0)
        return true; /* sent already */
    if (!sse_client_fits(cl, SSE_EV_COST(e))) {
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
    sse_client_mark_dirty(cl);
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
        if (!sse_client_offer(cl, held.v[i]))
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

void sse_client_flush_dirty(struct events *h)
{
    uint64_t now = uv_now(h->loop);
    /* A write the socket takes at once may mark its client dirty again
     * (more frames than one write holds): it goes to the back of the list,
     * which is done when nothing is left. */
    struct sse_client *cl;
    while ((cl = TAILQ_FIRST(&h->dirty)) != NULL) {
        TAILQ_REMOVE(&h->dirty, cl, dirty_link);
        cl->dirty = false;
        client_flush(cl, now);
    }
}

static void turn_away_abort_cb(struct req *r)
{
    *(bool *)r->hdata = true;
}

/* A 200 (any other status is final for EventSource) holding a jittered
 * "retry:" (and "event: overloaded" when it is the limit), then the end of
 * the stream. */
void sse_turn_away(struct req *r, struct sse_stream *def, enum sse_turn_away why)
{
    static const enum conn_close_reason reasons[TURN_AWAY__COUNT] = {
        [TURN_AWAY_OVERLOADED] = CONN_CLOSE_SSE_OVERLOADED,
        [TURN_AWAY_UNAVAILABLE] = CONN_CLOSE_SSE_UNAVAILABLE,
        [TURN_AWAY_SHUTTING_DOWN] = CONN_CLOSE_SHUTDOWN,
        [TURN_AWAY_OWNER_UNAVAILABLE] = CONN_CLOSE_SSE_UNAVAILABLE,
        [TURN_AWAY_AUTH_UNAVAILABLE] = CONN_CLOSE_SSE_UNAVAILABLE,
    };
    (*def->m_rejected[why])++;
    bool gone = false; /* a failed write closes the connection and frees r */
    r->hdata = &gone;
    r->abort_cb = turn_away_abort_cb;
    req_add_header(r, "Cache-Control", "no-cache");
    req_add_header(r, "X-Accel-Buffering", "no");
    req_stream_start(r, 200, "text/event-stream", false);
    struct buf b = BUF_INIT;
    sse_frame_retry(&b, sse_retry_jittered(def->cfg));
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

/* Queues a frame of its own (a retry:, a reset) for the client. */
static void client_push_frame(struct sse_client *cl, const struct buf *b)
{
    struct sse_ev *e = sse_ev_new(b, false, (struct sse_id){ 0, 0 });
    sse_out_push(cl->out, e);
    sse_ev_unref(e);
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
    sse_frame_retry(&b, sse_retry_jittered(cl->ch->def->cfg));
    client_push_frame(cl, &b);
    buf_deinit(&b);
    sse_client_mark_dirty(cl);
    return true;
}

/* A client without Last-Event-ID starts at the channel's position, the
 * newest id it has passed on: everything the channel passes on from now
 * is after it. */
void sse_client_begin_live(struct sse_client *cl)
{
    cl->state = CL_LIVE;
    cl->last_id = cl->ch->last_id;
    cl->have_last = true;
    (void)client_send_head(cl);
}

void sse_client_start_replay(struct sse_client *cl)
{
    cl->state = CL_REPLAYING;
    struct sse_history *op = sse_history_new(cl->ch, HIST_CLIENT);
    op->cl = cl;
    op->from = cl->from;
    cl->op = op;
    cl->last_id = cl->from;
    cl->have_last = true;
    sse_history_start(op);
}

/* "event: reset" carrying the newest id (when the Stream has one). */
static bool client_send_reset(struct sse_client *cl, const struct sse_history *op)
{
    char id[SSE_ID_MAX_LEN + 1];
    str_t id_s = op->have_newest ? str_make(id, sse_id_format(op->newest, id)) : STR_NULL;
    struct buf b = BUF_INIT;
    if (id_s.len)
        sse_frame_event(&b, id_s, STR_LIT("reset"), STR_LIT(""));
    else
        buf_append_str(&b, "event: reset\ndata: \n\n");
    struct sse_ev *e = sse_ev_new(&b, op->have_newest, op->newest);
    buf_deinit(&b);
    bool alive = sse_client_offer(cl, e);
    sse_ev_unref(e);
    return alive;
}

void sse_client_replay_done(struct sse_history *op)
{
    struct sse_client *cl = op->cl;
    struct sse_stream *def = op->ch->def;
    cl->op = NULL;
    if (op->err) {
        (*op->ch->hub->m_history_errors)++;
        log_warn("sse history read failed", "stream=%s channel=%s err=%d reply=%s", def->cfg->name,
                 LOG_Q(op->ch->key), op->err, LOG_Q(op->why));
        /* The client reconnects with its Last-Event-ID after retry ms. */
        struct req *r = cl->r;
        sse_client_detach(cl);
        req_stream_end(r);
        return;
    }
    /* Last-Event-ID older than the oldest entry kept: what came between may
     * have been trimmed, so the client must reload its state. So must one
     * too far behind to replay within client_queue_bytes. */
    bool too_far = op->too_far || !sse_client_fits(cl, op->got.cost); /* held live events took the room */
    bool reset = too_far || !op->have_oldest || sse_id_cmp(cl->from, op->oldest) < 0;
    cl->state = CL_LIVE;
    if (reset) {
        (*def->m_resets)++;
        if (too_far)
            log_info("sse resume past client_queue_bytes, reset sent", "stream=%s channel=%s limit=%lld",
                     def->cfg->name, LOG_Q(op->ch->key), (long long)def->cfg->client_queue_bytes);
        if (!client_send_reset(cl, op))
            return;
    } else {
        for (unsigned i = 0; i < op->got.n; i++) {
            if (!sse_client_offer(cl, op->got.v[i]))
                return;
            (*def->m_replayed)++;
        }
    }
    client_go_live(cl);
}

void sse_client_drain(struct sse_client *cl)
{
    struct req *r = cl->r;
    if (cl->state == CL_POSITIONING) { /* not answered yet */
        struct sse_stream *def = cl->ch->def;
        sse_client_detach(cl);
        sse_turn_away(r, def, TURN_AWAY_SHUTTING_DOWN);
        return;
    }
    /* Jittered like the first frame, so that a restart does not bring
     * every browser back at the same moment. */
    struct buf b = BUF_INIT;
    sse_frame_retry(&b, sse_retry_jittered(cl->ch->def->cfg));
    client_push_frame(cl, &b);
    buf_deinit(&b);
    if (sse_out_finish(cl->out) == 0) {
        sse_client_detach(cl);
        req_stream_end(r);
    }
}

/* --- arriving ------------------------------------------------------------------------- */

static void client_abort_cb(struct req *r)
{
    struct sse_client *cl = r->hdata;
    if (cl)
        sse_client_detach(cl);
}

/* A new client in its channel: where its stream starts decides when its
 * answer goes out. */
static void client_arrive(struct sse_client *cl)
{
    struct sse_channel *ch = cl->ch;
    if (cl->want_replay) {
        /* From its Last-Event-ID, read once the channel is live. */
        if (!client_send_head(cl))
            return;
        if (ch->state == CH_LIVE)
            sse_client_start_replay(cl);
        else
            cl->state = CL_WAITING;
    } else if (ch->have_last) {
        sse_client_begin_live(cl);
    } else {
        /* No position yet: answer once there is one (a round trip), so a
         * publish sent after the 200 is always after it. */
        cl->state = CL_POSITIONING;
        if (ch->positioning == 0)
            sse_channel_read_position(ch, false);
    }
}

void sse_client_new(struct sse_stream *def, struct req *r, const char *key, bool want_replay, struct sse_id from)
{
    struct events *h = def->hub;
    struct sse_client *cl = mem_calloc(1, sizeof(*cl));
    cl->r = r;
    cl->want_replay = want_replay;
    cl->from = from;
    cl->last_write_ms = uv_now(h->loop);
    cl->out = sse_out_new(r, cl, client_written_cb);
    sse_out_socket_setup(cl->out, def->cfg->socket_send_buffer_bytes);
    r->hdata = cl;
    r->abort_cb = client_abort_cb;

    struct sse_channel *ch = sse_channel_get(h, def, key);
    ch->refs++;
    cl->ch = ch;
    LIST_INSERT_HEAD(&ch->clients, cl, link);
    def->n_clients++;
    (*h->m_clients_total)++;
    client_arrive(cl);
}
