/*
 * redis_pubsub: the pool's one pub/sub connection. See redis_pool.h.
 *
 *   redis_pool_subscribe ──> channels (remembered) ──SUBSCRIBE──> redis-server
 *   fn(arg, MESSAGE | SUBSCRIBED | DOWN | UP) <── messages, confirmations, state
 *
 * The connection never carries ordinary commands: hiredis 0.14 hands any
 * reply to a pending ordinary callback first, so a message could land in a
 * PING's callback. Its health check is a SUBSCRIBE to a private heartbeat
 * channel, whose confirmation is routed by channel name. It connects,
 * handshakes and breaks like the command connections (redis_pool.c); only
 * its deadline, ping and what it reports differ.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/backend/redis_cluster.h"
#include "daemon/backend/redis_int.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "proto/mem.h"

#define HEARTBEAT_CHANNEL "__batchd:heartbeat"

struct channel {
    LIST_ENTRY(channel) link;
    char *name;
};

static int64_t *m_pubsub_up;

void redis_pubsub_report_up(bool up)
{
    *m_pubsub_up = up;
}

void redis_pubsub_init(void)
{
    m_pubsub_up = metrics_gauge("batchd_redis_pubsub_up", "", "1 when the pub/sub connection is ready.");
}

static struct channel *channel_find(struct redis_pool *p, const char *name, size_t len)
{
    struct channel *ch;
    LIST_FOREACH(ch, &p->channels, link)
        if (strlen(ch->name) == len && memcmp(ch->name, name, len) == 0)
            return ch;
    return NULL;
}

static void channel_forget(struct channel *ch)
{
    LIST_REMOVE(ch, link);
    free(ch->name);
    free(ch);
}

/* A cluster node's sharded push. Redis unsubscribes a shard channel by
 * itself when its slot leaves the node: the channel is forgotten here (a
 * reconnect must not subscribe it again) and reported lost. */
static void sharded_push(struct redis_pool *p, const redisReply *kind, const redisReply *chan,
                         const redisReply *msg)
{
    if (strcasecmp(kind->str, "smessage") == 0) {
        if (p->sub_fn && msg->type == REDIS_REPLY_STRING)
            p->sub_fn(p->sub_arg, REDIS_SUB_MESSAGE, chan->str, chan->len, msg->str, msg->len);
    } else if (strcasecmp(kind->str, "ssubscribe") == 0) {
        if (p->sub_fn && channel_find(p, chan->str, chan->len))
            p->sub_fn(p->sub_arg, REDIS_SUB_SUBSCRIBED, chan->str, chan->len, NULL, 0);
    } else { /* sunsubscribe */
        struct channel *ch = channel_find(p, chan->str, chan->len);
        if (ch == NULL)
            return; /* one we asked to leave */
        channel_forget(ch);
        log_info("redis shard channel unsubscribed by the server (its slot moved)", "node=%s channel=%.*s",
                 p->addr, (int)chan->len, chan->str);
        if (p->sub_fn)
            p->sub_fn(p->sub_arg, REDIS_SUB_LOST, chan->str, chan->len, NULL, 0);
    }
}

static void on_sub_message_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    struct rconn *c = privdata;
    struct redis_pool *p = redis_pool_of(c);
    redisReply *reply = r;
    (void)ac;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
        return;
    const redisReply *kind = reply->element[0], *chan = reply->element[1], *msg = reply->element[2];
    if (kind->type != REDIS_REPLY_STRING || chan->type != REDIS_REPLY_STRING)
        return;
    c->base.last_activity_ms = uv_now(p->core.loop);
    if (chan->len == sizeof(REDIS_TRACK_CHANNEL) - 1 && memcmp(chan->str, REDIS_TRACK_CHANNEL, chan->len) == 0) {
        redis_tracking_message(c, kind, msg);
        return;
    }
    bool heartbeat = chan->len == sizeof(HEARTBEAT_CHANNEL) - 1 &&
                     memcmp(chan->str, HEARTBEAT_CHANNEL, chan->len) == 0;
    if (heartbeat) {
        c->heartbeat_sent_ms = 0;
        pool_conn_arm(&c->base);
        return;
    }
    const redisReply *real = redis_reply_sharded_channel(chan);
    if (real) {
        sharded_push(p, kind, real, msg);
        return;
    }
    if (p->sub_fn == NULL || p->member)
        return;
    if (strcasecmp(kind->str, "message") == 0 && msg->type == REDIS_REPLY_STRING)
        p->sub_fn(p->sub_arg, REDIS_SUB_MESSAGE, chan->str, chan->len, msg->str, msg->len);
    else if (strcasecmp(kind->str, "subscribe") == 0)
        p->sub_fn(p->sub_arg, REDIS_SUB_SUBSCRIBED, chan->str, chan->len, NULL, 0);
}

/* SSUBSCRIBE / SUNSUBSCRIBE go out with no callback queued: hiredis 0.14
 * would file one it never uses. Their confirmations, pushes and messages
 * reach on_sub_message_cb through REDIS_SHARDED_CHANNEL; an error (MOVED:
 * the slot is elsewhere) makes hiredis drop the connection, and the
 * cluster finds the channel's node again. */
static void sub_send_sharded(struct rconn *c, const char *verb, const char *channel)
{
    if (c->base.state != POOL_READY || c->ac == NULL)
        return;

    static struct buf cmd;
    buf_reset(&cmd);
    buf_appendf(&cmd, "*2\r\n$%zu\r\n%s\r\n$%zu\r\n", strlen(verb), verb, strlen(channel));
    buf_append_str(&cmd, channel);
    buf_append(&cmd, "\r\n", 2);
    if (redisAppendFormattedCommand(&c->ac->c, cmd.data, cmd.len) == REDIS_OK)
        redis_count_command(verb, strlen(verb));
    redisAsyncHandleWrite(c->ac);
}

void redis_sub_send(struct rconn *c, const char *verb, const char *channel)
{
    if (c->base.state != POOL_READY || c->ac == NULL)
        return;

    const char *argv[2] = { verb, channel };
    size_t lens[2] = { strlen(verb), strlen(channel) };
    if (redisAsyncCommandArgv(c->ac, on_sub_message_cb, c, 2, argv, lens) == REDIS_OK)
        redis_count_command(verb, lens[0]);
}

/* A channel of the caller's: sharded on a cluster's node. */
static void sub_channel(struct rconn *c, bool on, const char *channel)
{
    if (redis_pool_of(c)->member)
        sub_send_sharded(c, on ? "SSUBSCRIBE" : "SUNSUBSCRIBE", channel);
    else
        redis_sub_send(c, on ? "SUBSCRIBE" : "UNSUBSCRIBE", channel);
}

/* --- what the pool core asks: the heartbeat is this connection's reply ------------ */

static bool sub_oldest_cb(const struct pool_conn *pc, uint64_t *sent_ms)
{
    const struct rconn *c = (const struct rconn *)pc;
    *sent_ms = c->heartbeat_sent_ms;
    return c->heartbeat_sent_ms != 0;
}

static void sub_overdue_cb(struct pool_conn *pc)
{
    redis_conn_break((struct rconn *)pc, -ETIMEDOUT, "heartbeat timeout");
}

static void sub_ping_cb(struct pool_conn *pc)
{
    struct rconn *c = (struct rconn *)pc;
    c->heartbeat_sent_ms = uv_now(pc->pool->loop);
    redis_sub_send(c, "SUBSCRIBE", HEARTBEAT_CHANNEL);
}

/* In pool.h's order: connect, connect_timeout, oldest, overdue, ping, close. */
static const struct pool_conn_ops sub_ops = { redis_conn_connect_cb, redis_conn_connect_timeout_cb,
                                              sub_oldest_cb, sub_overdue_cb, sub_ping_cb,
                                              redis_conn_close_cb };

/* --- state ------------------------------------------------------------------------ */

void redis_pubsub_ready(struct rconn *c)
{
    struct redis_pool *p = redis_pool_of(c);
    if (!p->member)
        *m_pubsub_up = 1;
    redis_sub_send(c, "SUBSCRIBE", HEARTBEAT_CHANNEL);
    if (p->member)
        redis_sub_send(c, "SUBSCRIBE", REDIS_SHARDED_CHANNEL);
    redis_tracking_ready(c);
    struct channel *ch;
    unsigned n = 0;
    LIST_FOREACH(ch, &p->channels, link) {
        sub_channel(c, true, ch->name);
        n++;
    }
    if (c->ac)
        redisAsyncHandleWrite(c->ac);
    log_info("redis pub/sub up", "channels=%u", n);
    if (p->sub_fn)
        p->sub_fn(p->sub_arg, REDIS_SUB_UP, NULL, 0, NULL, 0);
}

void redis_pubsub_lost(struct rconn *c, bool was_ready, const char *reason)
{
    struct redis_pool *p = redis_pool_of(c);
    if (!p->member)
        *m_pubsub_up = 0;
    redis_tracking_lost(c);
    if (was_ready && p->sub_fn)
        p->sub_fn(p->sub_arg, REDIS_SUB_DOWN, NULL, 0, NULL, 0);
    if (was_ready)
        log_warn("redis pub/sub down", "reason=%s", LOG_Q(reason));
}

void redis_pubsub_free(struct redis_pool *p)
{
    struct channel *ch;
    while ((ch = LIST_FIRST(&p->channels)) != NULL) {
        LIST_REMOVE(ch, link);
        free(ch->name);
        free(ch);
    }
    p->sub_fn = NULL;
    if (!p->member)
        *m_pubsub_up = 0;
}

/* --- API -------------------------------------------------------------------------- */

void redis_pool_pubsub_start(struct redis_pool *p, redis_message_fn fn, void *arg)
{
    if (p->cluster) {
        redis_cluster_pubsub_start(p->cluster, fn, arg);
        return;
    }
    p->sub_fn = fn;
    p->sub_arg = arg;
    redis_pubsub_ensure(p);
}

void redis_pubsub_ensure(struct redis_pool *p)
{
    if (p->sub || p->core.freeing)
        return;
    struct rconn *c = (struct rconn *)pool_conn_new(&p->core, &sub_ops);
    c->pubsub = true;
    TAILQ_INIT(&c->cmds);
    p->sub = c;
    redis_conn_connect_cb(&c->base);
}

void redis_pool_subscribe(struct redis_pool *p, const char *channel)
{
    if (p->cluster) {
        redis_cluster_subscribe(p->cluster, channel, true);
        return;
    }
    /* Callbacks completed by redis_pool_free (a history read cut off by
     * shutdown, say) may ask for a channel: there is no connection to
     * come, and the channel list is gone already. */
    if (p->core.freeing)
        return;
    /* One entry per name: a second one would be subscribed again after
     * every reconnect, and outlive the one unsubscribe. */
    struct channel *ch;
    LIST_FOREACH(ch, &p->channels, link)
        if (strcmp(ch->name, channel) == 0)
            return;
    ch = mem_calloc(1, sizeof(*ch));
    ch->name = mem_strdup(channel);
    LIST_INSERT_HEAD(&p->channels, ch, link);
    if (p->sub) {
        sub_channel(p->sub, true, channel);
        if (p->sub->ac && p->sub->base.state == POOL_READY)
            redisAsyncHandleWrite(p->sub->ac);
    }
}

void redis_pool_unsubscribe(struct redis_pool *p, const char *channel)
{
    if (p->cluster) {
        redis_cluster_subscribe(p->cluster, channel, false);
        return;
    }
    if (p->core.freeing)
        return;
    struct channel *ch;
    LIST_FOREACH(ch, &p->channels, link) {
        if (strcmp(ch->name, channel) == 0) {
            channel_forget(ch);
            break;
        }
    }
    if (p->sub)
        sub_channel(p->sub, false, channel);
}

bool redis_pool_pubsub_up(const struct redis_pool *p)
{
    if (p->cluster)
        return redis_cluster_pubsub_up(p->cluster);
    return p->sub && p->sub->base.state == POOL_READY;
}
