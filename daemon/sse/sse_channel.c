/*
 * sse_channel: one Redis key with clients, its shared SUBSCRIBE, and the
 * sync that makes it lossless.
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
 * Both buffers of a sync have a byte limit, and passing it loses nothing:
 *   held live events  > sync_held_bytes: dropped, and so is what arrives
 *                       until the read is done; then the channel reads
 *                       from what it passed on again (the Stream has them)
 *   the gap read      > sync_gap_bytes: what it read so far is passed on
 *                       (it follows the position, what comes next follows
 *                       it), and it reads on
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/backend/backoff.h"
#include "daemon/backend/redis_pool.h"
#include "daemon/log.h"
#include "daemon/sse/sse_int.h"
#include "proto/mem.h"

static void resync_arm(struct events *h, uint64_t due);

struct sse_channel *sse_channel_find(struct events *h, const char *key, size_t len)
{
    struct hashtab_node *n = hashtab_find(&h->channels, key, len);
    return n ? hashtab_entry(n, struct sse_channel, hnode) : NULL;
}

struct sse_channel *sse_channel_next(struct hashtab_iter *it)
{
    struct hashtab_node *n = hashtab_iter_next(it);
    return n ? hashtab_entry(n, struct sse_channel, hnode) : NULL;
}

struct sse_channel *sse_channel_get(struct events *h, struct sse_stream *def, const char *key)
{
    size_t len = strlen(key);
    uint32_t hash = hashtab_hash(key, len);
    struct hashtab_node *n = hashtab_find_hashed(&h->channels, key, len, hash);
    if (n)
        return hashtab_entry(n, struct sse_channel, hnode);
    struct sse_channel *c = mem_calloc(1, sizeof(*c));
    c->hub = h;
    c->def = def;
    c->key = mem_strdup(key);
    c->state = CH_SUBSCRIBING;
    LIST_INIT(&c->clients);
    hashtab_add(&h->channels, &c->hnode, c->key, len, hash);
    redis_pool_subscribe(h->redis, key);
    return c;
}

void sse_channel_unref(struct sse_channel *c)
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

void sse_channel_deliver(struct sse_channel *ch, struct sse_ev *e)
{
    if (e->has_id && (!ch->have_last || sse_id_cmp(e->id, ch->last_id) > 0)) {
        ch->last_id = e->id;
        ch->have_last = true;
    }
    struct sse_client *cl, *next;
    for (cl = LIST_FIRST(&ch->clients); cl; cl = next) {
        next = LIST_NEXT(cl, link);
        sse_client_offer(cl, e);
    }
}

/* A live event while the channel syncs: held until the sync is done, up to
 * sync_held_bytes. Past that the held events are dropped, and so is what
 * arrives until the sync ends: the Stream has them all, and the sync reads
 * it again before going live (channel_sync_end). */
static void channel_hold(struct sse_channel *c, struct sse_ev *e)
{
    const struct cfg_stream *cfg = c->def->cfg;
    if (c->held.cost + SSE_EV_COST(e) <= (size_t)cfg->sync_held_bytes) {
        sse_evq_push(&c->held, e);
        return;
    }
    (*c->def->m_held_overflows)++;
    log_info("sse channel held events over sync_held_bytes, dropped: read again from the stream",
             "stream=%s channel=%s held_bytes=%zu limit=%lld", cfg->name, LOG_Q(c->key),
             c->held.cost + SSE_EV_COST(e), (long long)cfg->sync_held_bytes);
    sse_evq_clear(&c->held, true);
    c->held_dropped = true;
}

void sse_channel_message(struct events *h, const char *chan, size_t chan_len, const char *msg, size_t msg_len)
{
    struct sse_channel *c = sse_channel_find(h, chan, chan_len);
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
    if (c->state != CH_SYNCING)
        sse_channel_deliver(c, e);
    else if (!c->held_dropped)
        channel_hold(c, e);
    /* else: dropped, the sync reads it from the Stream */
    sse_ev_unref(e);
}

/* --- the sync ------------------------------------------------------------------------ */

/* The channel passes on what it held and goes live; clients waiting to
 * read their own history start. */
static void channel_go_live(struct sse_channel *ch)
{
    ch->state = CH_LIVE;
    struct sse_evq held;
    sse_evq_take(&held, &ch->held);
    for (unsigned i = 0; i < held.n; i++)
        sse_channel_deliver(ch, held.v[i]);
    sse_evq_clear(&held, true);
    struct sse_client *cl, *next;
    for (cl = LIST_FIRST(&ch->clients); cl; cl = next) {
        next = LIST_NEXT(cl, link);
        if (cl->state == CL_WAITING)
            sse_client_start_replay(cl);
    }
}

/* A sync failed but the channel is still subscribed: retry the read only,
 * later. Messages that arrive meanwhile are read from the Stream by the
 * retry. */
static void channel_sync_failed(struct sse_channel *ch, struct sse_history *op)
{
    struct events *h = ch->hub;
    if (ch->sync_failures++ == 0)
        log_warn("sse channel sync failed, retrying with backoff", "channel=%s err=%d reply=%s",
                 LOG_Q(ch->key), op->err, LOG_Q(op->why));
    ch->state = CH_SYNC_WAIT;
    ch->sync_retry_ms = uv_now(h->loop) + backoff_next_ms(&ch->sync_attempt);
    resync_arm(h, ch->sync_retry_ms);
}

static void channel_sync_ok(struct sse_channel *ch)
{
    if (ch->sync_failures) {
        log_info("sse channel sync recovered", "channel=%s failed_attempts=%u", LOG_Q(ch->key),
                 ch->sync_failures);
        ch->sync_failures = 0;
    }
    ch->sync_attempt = 0;
}

/* Passes on what a gap read got (the gap counts once, however many parts
 * it is passed on in). */
static void channel_deliver_gap(struct sse_channel *ch, struct sse_history *op)
{
    if (op->got.n == 0)
        return;
    if (!op->passed_on)
        (*ch->def->m_resyncs)++;
    op->passed_on = true;
    for (unsigned i = 0; i < op->got.n; i++)
        sse_channel_deliver(ch, op->got.v[i]);
}

/* What was read follows the position without a gap, and what is read next
 * follows it: it can go out now, in order. Clients that are not live yet
 * ignore it or hold it as they would at the end. */
void sse_channel_gap_flush(struct sse_history *op)
{
    struct sse_channel *ch = op->ch;
    const struct cfg_stream *cfg = ch->def->cfg;
    (*ch->def->m_gap_flushes)++;
    if (!op->passed_on)
        log_info("sse channel gap read over sync_gap_bytes, passed on in parts", "stream=%s channel=%s limit=%lld",
                 cfg->name, LOG_Q(ch->key), (long long)cfg->sync_gap_bytes);
    channel_deliver_gap(ch, op);
    sse_evq_clear(&op->got, true);
}

static void channel_read_gap(struct sse_channel *ch);

/* The sync has read up to now: go live, unless live events were dropped
 * meanwhile (sync_held_bytes); then read again from what was passed on. */
static void channel_sync_end(struct sse_channel *ch)
{
    if (ch->held_dropped) {
        ch->held_dropped = false;
        channel_read_gap(ch);
        return;
    }
    channel_go_live(ch);
}

void sse_channel_sync_done(struct sse_history *op)
{
    struct sse_channel *ch = op->ch;
    if (op->gen != ch->sync_gen || ch->state != CH_SYNCING) {
        /* Overtaken by a lost pub/sub connection: the sync its next
         * SUBSCRIBE starts owns the state and reads from the last id. What
         * this one read follows that id without a gap, so pass it on. */
        if (op->err == 0)
            channel_deliver_gap(ch, op);
        return;
    }
    if (op->err) {
        (*ch->hub->m_history_errors)++;
        channel_sync_failed(ch, op);
        return;
    }
    channel_sync_ok(ch);
    channel_deliver_gap(ch, op);
    channel_sync_end(ch);
}

/* Reads everything after the channel's position. */
static void channel_read_gap(struct sse_channel *ch)
{
    struct sse_history *op = sse_history_new(ch, HIST_GAP);
    op->gen = ch->sync_gen;
    op->from = ch->last_id;
    sse_history_start(op);
}

void sse_channel_read_position(struct sse_channel *ch, bool in_sync)
{
    struct sse_history *op = sse_history_new(ch, HIST_POSITION);
    op->gen = in_sync ? ch->sync_gen : 0;
    ch->positioning++;
    sse_history_start(op);
}

void sse_channel_position_done(struct sse_history *op)
{
    struct sse_channel *ch = op->ch;
    bool in_sync = op->gen != 0 && op->gen == ch->sync_gen && ch->state == CH_SYNCING;
    struct sse_client *cl, *next;
    ch->positioning--;
    if (op->err == 0) {
        /* Any position read is a valid one: the first to land is kept. */
        bool mine = !ch->have_last;
        if (mine) {
            ch->have_last = true;
            ch->last_id = op->have_newest ? op->newest : (struct sse_id){ 0, 0 };
            for (cl = LIST_FIRST(&ch->clients); cl; cl = next) {
                next = LIST_NEXT(cl, link);
                if (cl->state == CL_POSITIONING)
                    sse_client_begin_live(cl);
            }
        }
        if (in_sync) {
            channel_sync_ok(ch);
            if (mine)
                channel_sync_end(ch); /* read after the confirmation: what follows arrives live */
            else
                channel_read_gap(ch); /* set earlier: read what came since */
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
    for (cl = LIST_FIRST(&ch->clients); cl; cl = next) {
        next = LIST_NEXT(cl, link);
        if (cl->state == CL_POSITIONING) {
            struct req *r = cl->r;
            sse_client_detach(cl);
            sse_turn_away(r, ch->def, TURN_AWAY_UNAVAILABLE);
        }
    }
}

void sse_channel_sync(struct sse_channel *ch)
{
    ch->state = CH_SYNCING;
    ch->sync_gen++;
    ch->held_dropped = false; /* this sync reads from the position on: it covers them */
    if (ch->have_last)
        channel_read_gap(ch);
    else
        sse_channel_read_position(ch, true);
}

/* --- retrying failed syncs ------------------------------------------------------------- */

static void resync_cb(uv_timer_t *t)
{
    struct events *h = t->data;
    uint64_t now = uv_now(h->loop), next = 0;
    h->resync_due = 0;
    struct hashtab_iter it;
    struct sse_channel *c;
    for (hashtab_iter_init(&it, &h->channels); (c = sse_channel_next(&it)) != NULL;) {
        if (c->state != CH_SYNC_WAIT)
            continue;
        c->refs++; /* a sync failing at once may turn its last clients away */
        if (c->sync_retry_ms <= now)
            sse_channel_sync(c);
        if (c->state == CH_SYNC_WAIT && (next == 0 || c->sync_retry_ms < next))
            next = c->sync_retry_ms;
        sse_channel_unref(c);
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
