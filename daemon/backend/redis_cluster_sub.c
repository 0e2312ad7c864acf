/*
 * redis_cluster_sub: pub/sub and client tracking over a cluster's primaries.
 *
 *   redis_pool_subscribe(ch) ──> chans[ch].node = primary of slot(ch) ──> SSUBSCRIBE there
 *   node pool: SMESSAGE / SSUBSCRIBE / SUNSUBSCRIBE / DOWN ──> node_sub_cb ──> the SSE layer
 *   a slot map change ──> remap: channels whose slot moved leave the old node
 *                          (SUNSUBSCRIBE), join the new one, and are reported
 *                          LOST (the SSE layer refills their gap once SUBSCRIBED)
 *
 *   redis_pool_track(prefixes) ──> CLIENT TRACKING BCAST on every primary's
 *   pub/sub connection; tracking is up only while the map covers every slot
 *   and every primary confirms it; a map that moves slots reports DOWN then
 *   UP, so whatever was read before the move is not trusted after it.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/backend/redis_cluster_int.h"
#include "daemon/log.h"
#include "proto/mem.h"

static struct cchan *chan_find(const struct redis_cluster *cl, const char *name, size_t len)
{
    struct hashtab_node *h = hashtab_find(&cl->chans, name, len);
    return h ? hashtab_entry(h, struct cchan, hnode) : NULL;
}

static void report_lost(struct redis_cluster *cl, struct cchan *cc)
{
    if (cl->sub_fn)
        cl->sub_fn(cl->sub_arg, REDIS_SUB_LOST, cc->name, strlen(cc->name), NULL, 0);
}

/* --- tracking -------------------------------------------------------------------------- */

static void track_set(struct redis_cluster *cl, bool up)
{
    if (cl->track_up == up)
        return;
    cl->track_up = up;
    redis_tracking_report_up(up);
    log_info(up ? "redis cluster tracking up" : "redis cluster tracking down", "primaries=%u", cl->n_nodes);
    if (cl->track_fn)
        cl->track_fn(cl->track_arg, up ? REDIS_TRACK_UP : REDIS_TRACK_DOWN, NULL, 0);
}

/* bump: the slots moved, so what came before is not trusted. */
static void track_recheck(struct redis_cluster *cl, bool bump)
{
    bool up = cl->n_prefixes > 0 && cl->mapped && cl->n_covered == CLUSTER_SLOTS;
    for (unsigned i = 0; i < cl->n_nodes && up; i++)
        if (cl->nodes[i]->primary && !cl->nodes[i]->track_up)
            up = false;
    if (bump)
        track_set(cl, false);
    track_set(cl, up);
}

static void node_track_cb(void *arg, enum redis_track_event ev, const char *key, size_t len)
{
    struct cnode *n = arg;
    struct redis_cluster *cl = n->cl;
    if (cl->freeing)
        return;
    switch (ev) {
    case REDIS_TRACK_UP:
    case REDIS_TRACK_DOWN:
        n->track_up = ev == REDIS_TRACK_UP;
        track_recheck(cl, false);
        return;
    case REDIS_TRACK_KEY:
    case REDIS_TRACK_FLUSH:
        if (cl->track_up && cl->track_fn)
            cl->track_fn(cl->track_arg, ev, key, len);
        return;
    }
}

void redis_cluster_track(struct redis_cluster *cl, const char *const *prefixes, unsigned n, redis_track_fn fn,
                         void *arg)
{
    if (cl->freeing)
        return;
    if (fn == NULL) { /* the listener goes: reports stop, tracking stays */
        cl->track_fn = NULL;
        cl->track_arg = NULL;
        return;
    }
    cl->track_fn = fn;
    cl->track_arg = arg;
    for (unsigned i = 0; i < cl->n_prefixes; i++)
        free(cl->prefixes[i]);
    free(cl->prefixes);
    cl->prefixes = n ? mem_alloc(n * sizeof(char *)) : NULL;
    for (unsigned i = 0; i < n; i++)
        cl->prefixes[i] = mem_strdup(prefixes[i]);
    cl->n_prefixes = n;
    for (unsigned i = 0; i < cl->n_nodes; i++)
        redis_pool_track(cl->nodes[i]->pool, prefixes, n, node_track_cb, cl->nodes[i]);
    track_recheck(cl, false);
}

/* --- pub/sub ---------------------------------------------------------------------------- */

static void node_sub_cb(void *arg, enum redis_sub_event ev, const char *chan, size_t chan_len, const char *msg,
                        size_t msg_len)
{
    struct cnode *n = arg;
    struct redis_cluster *cl = n->cl;
    if (cl->freeing || cl->sub_fn == NULL)
        return;
    struct cchan *cc;
    switch (ev) {
    case REDIS_SUB_MESSAGE:
    case REDIS_SUB_SUBSCRIBED:
        cc = chan_find(cl, chan, chan_len);
        if (cc && cc->node == n) /* not a late word from a node the channel left */
            cl->sub_fn(cl->sub_arg, ev, chan, chan_len, msg, msg_len);
        return;
    case REDIS_SUB_DOWN: {
        redis_pubsub_report_up(false);
        struct hashtab_iter it;
        struct hashtab_node *h;
        for (hashtab_iter_init(&it, &cl->chans); (h = hashtab_iter_next(&it)) != NULL;) {
            cc = hashtab_entry(h, struct cchan, hnode);
            if (cc->node == n)
                report_lost(cl, cc); /* the node pool subscribes it again when back */
        }
        redis_cluster_refresh_soon(cl, "a node's pub/sub connection dropped");
        return;
    }
    case REDIS_SUB_UP:
        redis_pubsub_report_up(redis_cluster_pubsub_up(cl));
        return;
    case REDIS_SUB_LOST:
        cc = chan_find(cl, chan, chan_len);
        if (cc && cc->node == n) {
            cc->node = NULL; /* the node forgot it; the next map places it */
            report_lost(cl, cc);
        }
        redis_cluster_refresh_soon(cl, "a shard channel's slot moved");
        return;
    }
}

void redis_cluster_pubsub_start(struct redis_cluster *cl, redis_message_fn fn, void *arg)
{
    cl->sub_fn = fn;
    cl->sub_arg = arg;
    for (unsigned i = 0; i < cl->n_nodes; i++)
        redis_pool_pubsub_start(cl->nodes[i]->pool, node_sub_cb, cl->nodes[i]);
}

void redis_cluster_subscribe(struct redis_cluster *cl, const char *channel, bool on)
{
    if (cl->freeing)
        return;
    size_t len = strlen(channel);
    struct cchan *cc = chan_find(cl, channel, len);
    if (on) {
        if (cc)
            return;
        cc = mem_calloc(1, sizeof(*cc));
        cc->name = mem_strdup(channel);
        hashtab_add(&cl->chans, &cc->hnode, cc->name, len, hashtab_hash(cc->name, len));
        cc->node = redis_cluster_node_of(cl, cluster_key_slot(channel, len));
        if (cc->node)
            redis_pool_subscribe(cc->node->pool, channel);
        else
            redis_cluster_refresh_soon(cl, "a channel's slot has no primary");
        return;
    }
    if (cc == NULL)
        return;
    if (cc->node)
        redis_pool_unsubscribe(cc->node->pool, channel);
    hashtab_remove(&cl->chans, &cc->hnode);
    free(cc->name);
    free(cc);
}

bool redis_cluster_pubsub_up(const struct redis_cluster *cl)
{
    if (!cl->mapped)
        return false;
    for (unsigned i = 0; i < cl->n_nodes; i++)
        if (cl->nodes[i]->primary && !redis_pool_pubsub_up(cl->nodes[i]->pool))
            return false;
    return true;
}

bool redis_cluster_pubsub_drain(struct redis_cluster *cl, size_t max_bytes)
{
    bool all = true;
    for (unsigned i = 0; i < cl->n_nodes; i++)
        if (cl->nodes[i]->primary && !redis_pool_pubsub_drain(cl->nodes[i]->pool, max_bytes))
            all = false;
    return all;
}

/* --- the cluster's side ------------------------------------------------------------------ */

void redis_cluster_sub_attach(struct redis_cluster *cl, struct cnode *n)
{
    if (cl->sub_fn)
        redis_pool_pubsub_start(n->pool, node_sub_cb, n);
    if (cl->track_fn && cl->n_prefixes)
        redis_pool_track(n->pool, (const char *const *)cl->prefixes, cl->n_prefixes, node_track_cb, n);
}

void redis_cluster_sub_remap(struct redis_cluster *cl, bool slots_moved)
{
    struct hashtab_iter it;
    struct hashtab_node *h;
    unsigned moved = 0;
    for (hashtab_iter_init(&it, &cl->chans); (h = hashtab_iter_next(&it)) != NULL;) {
        struct cchan *cc = hashtab_entry(h, struct cchan, hnode);
        struct cnode *owner = redis_cluster_node_of(cl, cluster_key_slot(cc->name, strlen(cc->name)));
        if (owner == cc->node)
            continue;
        struct cnode *was = cc->node;
        if (was)
            redis_pool_unsubscribe(was->pool, cc->name);
        cc->node = owner;
        if (owner)
            redis_pool_subscribe(owner->pool, cc->name);
        if (was)
            report_lost(cl, cc);
        moved++;
    }
    if (moved)
        log_info("redis cluster channels moved", "channels=%u", moved);
    track_recheck(cl, slots_moved);
}

void redis_cluster_sub_detach(struct redis_cluster *cl, struct cnode *n)
{
    struct hashtab_iter it;
    struct hashtab_node *h;
    for (hashtab_iter_init(&it, &cl->chans); (h = hashtab_iter_next(&it)) != NULL;) {
        struct cchan *cc = hashtab_entry(h, struct cchan, hnode);
        if (cc->node == n) {
            cc->node = NULL;
            report_lost(cl, cc);
        }
    }
    n->track_up = false;
}

void redis_cluster_sub_free(struct redis_cluster *cl)
{
    struct hashtab_iter it;
    struct hashtab_node *h;
    for (hashtab_iter_init(&it, &cl->chans); (h = hashtab_iter_next(&it)) != NULL;) {
        struct cchan *cc = hashtab_entry(h, struct cchan, hnode);
        free(cc->name);
        free(cc);
    }
    hashtab_deinit(&cl->chans);
    for (unsigned i = 0; i < cl->n_prefixes; i++)
        free(cl->prefixes[i]);
    free(cl->prefixes);
    cl->prefixes = NULL;
    cl->n_prefixes = 0;
    cl->sub_fn = NULL;
    cl->track_fn = NULL;
    redis_tracking_report_up(false);
    redis_pubsub_report_up(false);
}
