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
    uint8_t track;               /* pub/sub: enum redis_conn_track */
};

/* Where the pub/sub connection's tracking handshake is. */
enum redis_conn_track {
    TRACK_NONE,      /* not asked for */
    TRACK_ASKING,    /* CLIENT ID / CLIENT TRACKING sent */
    TRACK_ON,        /* CLIENT TRACKING said OK: SUBSCRIBE __redis__:invalidate next */
    TRACK_REFUSED,   /* Redis refused: pub/sub only */
};

struct redis_pool {
    struct pool core;           /* first: the connections are core.conns */
    const struct cfg_redis *cfg;
    struct rconn *sub;          /* pub/sub connection, NULL until started */
    redis_message_fn sub_fn;
    void *sub_arg;
    LIST_HEAD(channel_list, channel) channels;  /* subscribed, newest first */
    char addr[280];             /* host:port, for the up/down log */
    char **track_prefixes;      /* redis_pool_track's prefixes */
    unsigned n_track;
    redis_track_fn track_fn;
    void *track_arg;
    bool track_up;              /* __redis__:invalidate confirmed on a tracking connection */
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
/* Sends a command on c itself (handshake steps); redis_pool_command's contract. */
int redis_conn_command(struct rconn *c, redis_reply_fn cb, void *ctx, int argc, const char **argv,
                       const size_t *argvlen);
/* A handshake command answered: READY once none is left. */
void redis_conn_handshake_step(struct rconn *c);
/* Starts the pub/sub connection if it is not there yet. */
void redis_pubsub_ensure(struct redis_pool *p);
/* SUBSCRIBE / UNSUBSCRIBE on the pub/sub connection, when it is READY. */
void redis_sub_send(struct rconn *c, const char *verb, const char *channel);

/* --- redis_pubsub.c -------------------------------------------------------- */

/* Registers its metrics (with the pool). */
void redis_pubsub_init(void);
/* The pub/sub connection finished its handshake: subscribe everything. */
void redis_pubsub_ready(struct rconn *c);
/* It is gone; was_ready: it had been READY. */
void redis_pubsub_lost(struct rconn *c, bool was_ready, const char *reason);
/* Forgets every channel and the message callback (redis_pool_free). */
void redis_pubsub_free(struct redis_pool *p);

/* --- redis_tracking.c ------------------------------------------------------ */

#define REDIS_TRACK_CHANNEL "__redis__:invalidate"

void redis_tracking_init(void);
/* The pub/sub connection is connected: ask for tracking (before its PING). */
void redis_tracking_handshake(struct rconn *c);
/* It is READY: subscribe to the invalidation channel when tracking is on. */
void redis_tracking_ready(struct rconn *c);
/* A message or confirmation on REDIS_TRACK_CHANNEL. */
void redis_tracking_message(struct rconn *c, const redisReply *kind, const redisReply *msg);
/* The pub/sub connection is gone. */
void redis_tracking_lost(struct rconn *c);
void redis_tracking_free(struct redis_pool *p);

/* --- redis_reply.c --------------------------------------------------------- */

/* hiredis reader functions that build each reply in its own arena. */
extern redisReplyObjectFunctions redis_reply_fns;
/* Frees the spare arena blocks (redis_pool_free). */
void redis_reply_drain(void);

#endif
