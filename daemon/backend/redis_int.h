/*
 * redis_int: what the Redis pool's three files share; everyone else uses
 * redis_pool.h.
 *
 *   redis_pool.c    connections (connect, handshake, break), commands, scripts
 *   redis_pubsub.c  the pub/sub connection: channels, heartbeat, messages
 *   redis_reply.c   reply objects, one arena per reply
 *   redis_tracking.c CLIENT TRACKING on the pub/sub connection
 *   redis_cluster.c  Redis Cluster: topology, one node pool per primary, routing
 *   redis_cluster_sub.c  sharded pub/sub and tracking over the cluster's nodes
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
struct redis_cluster;

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
    bool member;                /* a cluster's node: sharded pub/sub, no process-wide gauges */
    struct redis_cluster *cluster;  /* cluster = yes: this pool only routes (no connections) */
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

/* A cluster node's pool (member): its own connections, sharded pub/sub. */
struct redis_pool *redis_node_new(uv_loop_t *loop, const struct cfg_redis *cfg, int64_t slow_ms);
/* redis_pool_command / _script on a node, after an ASK redirect when
 * asking: ASKING goes first on the same connection. */
int redis_node_command(struct redis_pool *p, bool asking, redis_reply_fn cb, void *ctx, int argc,
                       const char **argv, const size_t *argvlen) __attribute__((warn_unused_result));
int redis_node_script(struct redis_pool *p, bool asking, struct redis_script *script, redis_reply_fn cb,
                      void *ctx, int argc, const char **argv, const size_t *argvlen)
    __attribute__((warn_unused_result));

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

/* A node's pub/sub connection: sharded messages are reported under this
 * channel, which it SUBSCRIBEs, so hiredis 0.14 (which knows no SSUBSCRIBE)
 * routes them to its callback; the real channel rides along (redis_reply.c). */
#define REDIS_SHARDED_CHANNEL "__batchd:sharded"
/* The pub/sub gauges, set by the pool or, for a cluster, its router. */
void redis_pubsub_report_up(bool up);
void redis_tracking_report_up(bool up);

/* hiredis reader functions that build each reply in its own arena. */
extern redisReplyObjectFunctions redis_reply_fns;
/* Frees the spare arena blocks (redis_pool_free). */
void redis_reply_drain(void);
/* The reader of a sharded pub/sub connection (redis_reply_fns mark its
 * sharded pushes): its reader's privdata. */
extern char redis_reply_sharded_mark;
/* A sharded push's real channel (the reply's element[1] says
 * REDIS_SHARDED_CHANNEL): NULL for any other reply. */
const redisReply *redis_reply_sharded_channel(const redisReply *chan);
/* An array of `elements` whose element pointers the caller sets to
 * elements of part replies, each part held with _compose_hold (at most
 * max_parts); it has one reference, dropped with redis_reply_put. */
redisReply *redis_reply_compose(size_t elements, unsigned max_parts);
void redis_reply_compose_hold(redisReply *top, const redisReply *part);
void redis_reply_put(redisReply *top);

#endif
