/*
 * redis_int: what the Redis pool's three files share; everyone else uses
 * redis_pool.h.
 *
 *   redis_pool.c    connections (connect, handshake, break), commands, scripts
 *   redis_pubsub.c  the pub/sub connection: channels, heartbeat, messages
 *   redis_reply.c   reply objects, one arena per reply
 */
#ifndef BATCHD_REDIS_INT_H
#define BATCHD_REDIS_INT_H

#include <hiredis/async.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "daemon/backend/pool.h"
#include "daemon/backend/redis_pool.h"

struct rcmd;
struct channel;

/* One connection; the core's part (state, pending, timer, backoff, last
 * reply) comes first. */
struct rconn {
    struct pool_conn base;
    bool pubsub;
    redisAsyncContext *ac;
    TAILQ_HEAD(rcmd_list, rcmd) cmds;   /* sent, replies awaited: oldest first */
    int fail_err;           /* error given to callbacks when the connection dies */
    uint64_t heartbeat_sent_ms;  /* pub/sub: 0 when none outstanding */
};

struct redis_pool {
    struct pool core;           /* first: the connections are core.conns */
    const struct cfg_redis *cfg;
    struct rconn *sub;          /* pub/sub connection, NULL until started */
    redis_message_fn sub_fn;
    void *sub_arg;
    LIST_HEAD(channel_list, channel) channels;  /* subscribed, newest first */
    char addr[280];             /* host:port, for the up/down log */
};

static inline struct redis_pool *redis_pool_of(const struct rconn *c)
{
    return (struct redis_pool *)c->base.pool;
}

/* --- redis_pool.c: connection steps the pub/sub connection shares ---------- */

/* pool_conn_ops entries. */
void redis_conn_connect_cb(struct pool_conn *pc);
void redis_conn_connect_timeout_cb(struct pool_conn *pc);
void redis_conn_close_cb(struct pool_conn *pc);
/* Breaks a live connection on our side: pending callbacks run now with err. */
void redis_conn_break(struct rconn *c, int err, const char *reason);
/* Counts a command sent outside the pool's queue (SUBSCRIBE, UNSUBSCRIBE). */
void redis_count_command(const char *name, size_t len);

/* --- redis_pubsub.c -------------------------------------------------------- */

/* Registers its metrics (with the pool). */
void redis_pubsub_init(void);
/* The pub/sub connection finished its handshake: subscribe everything. */
void redis_pubsub_ready(struct rconn *c);
/* It is gone; was_ready: it had been READY. */
void redis_pubsub_lost(struct rconn *c, bool was_ready, const char *reason);
/* Forgets every channel and the message callback (redis_pool_free). */
void redis_pubsub_free(struct redis_pool *p);

/* --- redis_reply.c --------------------------------------------------------- */

/* hiredis reader functions that build each reply in its own arena. */
extern redisReplyObjectFunctions redis_reply_fns;
/* Frees the spare arena blocks (redis_pool_free). */
void redis_reply_drain(void);

#endif
