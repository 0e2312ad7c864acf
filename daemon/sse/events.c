/*
 * events: SSE fan-out with lossless resume. See events.h; the pieces of
 * daemon/sse/ share sse_int.h.
 *
 *      GET {path}                          POST {path}
 *          │                                   │
 *          v                                   v
 *   sse_handlers: id, Last-Event-ID, limits, token
 *          │                                   │
 *          v                                   v
 *   sse_client: one per GET                sse_publish ──> XADD + PUBLISH (Redis),
 *   head, state, its queue (sse_queue),                    once per Idempotency-Key
 *   flushed at the end of the iteration
 *          │ joins          ^ offer(frame)
 *          v                │
 *   sse_channel: one per key, one SUBSCRIBE <── messages ── events <── Redis pub/sub
 *   position, sync state, held events
 *          │ reads          ^ entries
 *          v                │
 *   sse_history: XRANGE / XREVRANGE ──> Redis Stream
 *
 *   events (this file): the hub. Streams from the config, the channel
 *   table, the pub/sub callback, the end-of-iteration flush, pings, drain
 *   on shutdown, metrics, reload.
 *
 * Every stream starts at a definite position (Last-Event-ID, or the
 * channel's newest id passed on when its 200 goes out) and gets every
 * event after it, once, in order: from history, from events held while a
 * sync runs, or live. Events are serialised once into a refcounted frame;
 * a client's queue holds references and is written at the end of the loop
 * iteration, one write per client in flight.
 */
#include "daemon/sse/events.h"

#include <stdlib.h>
#include <string.h>

#include "daemon/backend/redis_pool.h"
#include "daemon/http/req.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/sse/sse_int.h"
#include "proto/mem.h"

static void flush_cb(uv_check_t *hnd)
{
    sse_client_flush_dirty(hnd->data);
}

static void sub_cb(void *arg, enum redis_sub_event kind, const char *chan, size_t chan_len,
                   const char *msg, size_t msg_len)
{
    struct events *h = arg;
    switch (kind) {
    case REDIS_SUB_DOWN: {
        /* Clients stay; every channel resubscribes and fills its gap. */
        struct hashtab_iter it;
        struct sse_channel *c;
        for (hashtab_iter_init(&it, &h->channels); (c = sse_channel_next(&it)) != NULL;)
            c->state = CH_SUBSCRIBING;
        return;
    }
    case REDIS_SUB_UP:
        return;
    case REDIS_SUB_LOST: {
        struct sse_channel *c = sse_channel_find(h, chan, chan_len);
        if (c)
            c->state = CH_SUBSCRIBING; /* resubscribed elsewhere; its gap is filled then */
        return;
    }
    case REDIS_SUB_SUBSCRIBED: {
        struct sse_channel *c = sse_channel_find(h, chan, chan_len);
        if (c && c->state == CH_SUBSCRIBING)
            sse_channel_sync(c);
        return;
    }
    case REDIS_SUB_MESSAGE:
        sse_channel_message(h, chan, chan_len, msg, msg_len);
        return;
    }
}

/* --- pings, drain ---------------------------------------------------------------------- */

static void ping_cb(uv_timer_t *t)
{
    struct events *h = t->data;
    uint64_t now = uv_now(h->loop);
    struct hashtab_iter it;
    struct sse_channel *c;
    for (hashtab_iter_init(&it, &h->channels); (c = sse_channel_next(&it)) != NULL;) {
        uint64_t every = (uint64_t)c->def->cfg->ping_interval_ms;
        struct sse_client *cl;
        LIST_FOREACH(cl, &c->clients, link) {
            /* Not before the answer, nor behind a write that has not
             * gone (the connection's write timeout watches that). */
            if (cl->state == CL_POSITIONING || cl->out->writing || cl->out->pending.n ||
                now - cl->last_write_ms < every)
                continue;
            cl->last_write_ms = now;
            sse_out_push(cl->out, h->ping_ev);
            sse_client_mark_dirty(cl);
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
    struct sse_channel *c;
    for (hashtab_iter_init(&it, &h->channels); (c = sse_channel_next(&it)) != NULL;) {
        c->refs++; /* keep it while its clients leave */
        struct sse_client *cl, *next;
        for (cl = LIST_FIRST(&c->clients); cl; cl = next) {
            next = LIST_NEXT(cl, link);
            n++;
            sse_client_drain(cl);
        }
        sse_channel_unref(c);
    }
    if (n)
        log_info("sse clients told to reconnect", "clients=%u", n);
}

/* --- metrics, lifecycle ------------------------------------------------------------------ */

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
    struct sse_channel *c;
    struct sse_client *cl;
    for (hashtab_iter_init(&it, &h->channels); (c = sse_channel_next(&it)) != NULL;)
        LIST_FOREACH(cl, &c->clients, link)
            n += sse_client_queued(cl, true);
    return (double)n;
}

static void def_metrics(struct sse_stream *d)
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
        [TURN_AWAY_OWNER_UNAVAILABLE] = "owner_unavailable",
        [TURN_AWAY_AUTH_UNAVAILABLE] = "auth_unavailable",
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
    snprintf(l, sizeof(l), "stream=\"%s\"", name);
    d->m_held_overflows = metrics_counter("batchd_sse_sync_held_overflows_total", l,
                                          "Live events held while a channel synced that passed "
                                          "sync_held_bytes: dropped, and read again from the Stream.");
    d->m_gap_flushes = metrics_counter("batchd_sse_sync_gap_flushes_total", l,
                                       "Times a channel's gap read held sync_gap_bytes and passed on what "
                                       "it had read before reading on.");
    d->m_not_owner = metrics_counter("batchd_sse_not_owner_total", l,
                                     "Subscribes and publishes answered 404: the stream's owner_resource document "
                                     "is missing or belongs to someone else (access = owner).");
}

static void def_add(struct events *h, const struct cfg_stream *sc)
{
    struct sse_stream *d = mem_calloc(1, sizeof(*d));
    d->hub = h;
    d->cfg = sc;
    config_ref(sc->owner);
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
    TAILQ_INIT(&h->dirty);
    h->m_clients_total = metrics_counter("batchd_sse_connections_total", "", "SSE streams opened.");
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

void events_set_resources(struct events *h, struct resource_set *resources)
{
    h->resources = resources;
}

void events_reconfigure(struct events *h, const struct config *cfg)
{
    h->cfg = cfg;
    for (unsigned i = 0; i < h->n_defs; i++)
        h->defs[i]->retired = true;
    for (unsigned k = 0; k < cfg->n_streams; k++) {
        const struct cfg_stream *sc = &cfg->streams[k];
        struct sse_stream *d = NULL;
        for (unsigned i = 0; i < h->n_defs && d == NULL; i++)
            if (strcmp(h->defs[i]->cfg->name, sc->name) == 0)
                d = h->defs[i];
        if (d == NULL) {
            def_add(h, sc);
            continue;
        }
        /* Connected clients keep their channel (and key); the new limits,
         * pings and retry apply to them from now on. */
        config_ref(sc->owner);
        config_unref(d->cfg->owner);
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
        struct sse_stream *d = h->defs[i];
        if (d->retired)
            continue;
        router_add(rt, ROUTE_M(HTTP_GET), d->cfg->path, sse_subscribe_handler, d, ROUTE_AT_HEAD);
        router_add(rt, ROUTE_M(HTTP_POST), d->cfg->path, sse_publish_handler, d, 0);
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
    for (unsigned i = 0; i < h->n_defs; i++) {
        config_unref(h->defs[i]->cfg->owner);
        free(h->defs[i]);
    }
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
    struct sse_channel *c;
    for (hashtab_iter_init(&it, &h->channels); (c = sse_channel_next(&it)) != NULL;) {
        hashtab_remove(&h->channels, &c->hnode);
        sse_evq_clear(&c->held, true);
        free(c->key);
        free(c);
    }
    uv_close((uv_handle_t *)&h->flush, handle_closed_cb);
    uv_close((uv_handle_t *)&h->ping, handle_closed_cb);
    uv_close((uv_handle_t *)&h->resync, handle_closed_cb);
}
