/*
 * redis_pool: pool_size hiredis async connections on the libuv loop, plus
 * one dedicated pub/sub connection on request.
 *
 *   redis_pool_command ──> least-busy READY conn ──> hiredis ──> redis-server
 *         cb(ctx, reply, err) <── exactly once: reply, timeout or disconnect
 *
 * Each connection: connect (connect_timeout_ms) -> AUTH/SELECT/PING
 * handshake -> READY. A reply overdue by command_timeout_ms marks the
 * connection broken; so does a failed PING (sent every ping_interval_ms
 * when idle). A broken connection completes all its pending callbacks with
 * an error and reconnects after 100 ms doubling to 5 s, with full jitter.
 * Commands issued in one loop iteration leave in one write (pipelining).
 * At most max_pending commands await replies, over all connections; more
 * are refused with -EBUSY (pool.h).
 */
#ifndef BATCHD_REDIS_POOL_H
#define BATCHD_REDIS_POOL_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/config.h"

struct redis_pool;

/* A reply, or err < 0 (-ETIMEDOUT, -ECONNRESET, -ECANCELED) with reply
 * NULL. An error reply from Redis arrives as a reply of type
 * REDIS_REPLY_ERROR with err 0. The reply is valid only during the call. */
typedef void (*redis_reply_fn)(void *ctx, const redisReply *reply, int err);

/* What the pub/sub connection reports. */
enum redis_sub_event {
    REDIS_SUB_MESSAGE,     /* a message on channel */
    REDIS_SUB_SUBSCRIBED,  /* channel's SUBSCRIBE is confirmed: messages flow from here on */
    REDIS_SUB_DOWN,        /* the connection dropped: no channel is subscribed */
    REDIS_SUB_UP,          /* reconnected; every channel's SUBSCRIBE has been sent again */
    REDIS_SUB_LOST,        /* channel alone is no longer subscribed (a cluster: its node went
                              down or its slot moved); SUBSCRIBED follows once it is again */
};

/* channel/message are valid only during the call; message only for
 * REDIS_SUB_MESSAGE, channel for MESSAGE, SUBSCRIBED and LOST. */
typedef void (*redis_message_fn)(void *arg, enum redis_sub_event ev, const char *channel,
                                 size_t channel_len, const char *message, size_t message_len);

/* Starts connecting at once. Commands slower than slow_ms are logged. */
struct redis_pool *redis_pool_new(uv_loop_t *loop, const struct cfg_redis *cfg, int64_t slow_ms);
/* Takes reload-safe settings (timeouts, ping interval, slow_ms). */
void redis_pool_configure(struct redis_pool *p, const struct cfg_redis *cfg, int64_t slow_ms);
/* Completes pending commands with -ECANCELED and frees the pool once its
 * handles are closed (the loop must run on). */
void redis_pool_free(struct redis_pool *p);

/* Sends a command. Returns 0 (cb will run exactly once); or, and cb is not
 * called, -EAGAIN when no connection is READY, -EBUSY when max_pending
 * commands await their replies already. argv is copied. */
int redis_pool_command(struct redis_pool *p, redis_reply_fn cb, void *ctx, int argc,
                       const char **argv, const size_t *argvlen)
    __attribute__((warn_unused_result));
/* A Lua script run with EVALSHA: loaded with SCRIPT LOAD on first use and
 * again when Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH). */
struct redis_script {
    const char *src;
    char sha[48];               /* empty until loaded */
};

/* EVALSHA script argv... (argv starts with numkeys). Same contract as
 * redis_pool_command (-EBUSY included); the first key is shown in the slow
 * log. An error of -EAGAIN in the callback means the script never ran (no
 * connection for it, or its SCRIPT LOAD failed); any other error came after
 * the EVALSHA was sent, so the script may have run. */
int redis_pool_script(struct redis_pool *p, struct redis_script *script, redis_reply_fn cb, void *ctx,
                      int argc, const char **argv, const size_t *argvlen)
    __attribute__((warn_unused_result));

/* Keeps a reply given to a redis_reply_fn (the top-level one) valid after
 * the callback returns, strings included; each retain needs one release. */
void *redis_reply_retain(const redisReply *reply);
void redis_reply_release(void *ref);

/* Writes commands queued so far now rather than on the next poll. */
void redis_pool_flush(struct redis_pool *p);

/* True when at least one command connection is READY (a cluster: a slot
 * map is known and a primary is ready). */
bool redis_pool_up(const struct redis_pool *p);
/* True when the pool routes over a Redis Cluster ([redis] cluster = yes):
 * a script's keys must then share a slot. */
bool redis_pool_is_cluster(const struct redis_pool *p);

/* Starts the pub/sub connection; messages and its state go to fn(arg). */
void redis_pool_pubsub_start(struct redis_pool *p, redis_message_fn fn, void *arg);
/* SUBSCRIBE / UNSUBSCRIBE a channel on the pub/sub connection. Channels are
 * remembered and subscribed again after a reconnect. Subscribing to a
 * channel held already does nothing (no second SUBSCRIBE, no confirmation). */
void redis_pool_subscribe(struct redis_pool *p, const char *channel);
void redis_pool_unsubscribe(struct redis_pool *p, const char *channel);
bool redis_pool_pubsub_up(const struct redis_pool *p);

/* --- server-assisted client-side caching (Redis 6+, RESP2) ------------------------------
 *
 * The pub/sub connection, during its handshake, asks for its own id and turns
 * tracking on with itself as the redirect target, in broadcast mode for the
 * key prefixes given:
 *
 *   CLIENT ID ──> n;  CLIENT TRACKING on REDIRECT n BCAST PREFIX p1 PREFIX p2 ..;  PING
 *   then SUBSCRIBE __redis__:invalidate: its confirmation is REDIS_TRACK_UP
 *
 * Tracking and its messages share one connection, so they live and die
 * together: a lost connection (Redis restarted, CLIENT KILL, a timeout) is
 * REDIS_TRACK_DOWN, and Redis, which forgets a closed connection's tracking
 * without a word, cannot leave batchd trusting a tracker that is gone.
 * CLIENT TRACKING refused (an old Redis, an ACL): tracking stays down, and
 * the connection serves pub/sub as before. */
enum redis_track_event {
    REDIS_TRACK_UP,    /* confirmed: every change from here on is announced */
    REDIS_TRACK_DOWN,  /* lost: changes may go unannounced until the next UP */
    REDIS_TRACK_KEY,   /* key[0..len) changed (or expired, or was evicted) */
    REDIS_TRACK_FLUSH, /* FLUSHALL / FLUSHDB: every key changed */
};

typedef void (*redis_track_fn)(void *arg, enum redis_track_event ev, const char *key, size_t len);

/* Tracks the prefixes (copied; n == 0: none), reporting to fn(arg); fn
 * NULL only stops the reports (the listener is going away). A new
 * set reconnects the pub/sub connection (Redis cannot change a subscribed
 * RESP2 connection's tracking), which SSE channels survive by resyncing. */
void redis_pool_track(struct redis_pool *p, const char *const *prefixes, unsigned n, redis_track_fn fn,
                      void *arg);
/* Reads what is waiting on the pub/sub connection now (its messages and
 * invalidations are handled before this returns), up to about max_bytes:
 * hiredis reads 16 KiB per readable event, so a backlog would otherwise
 * be handled over several loop iterations. Returns false when more was
 * waiting than that; true when nothing is (or the connection is down). */
bool redis_pool_pubsub_drain(struct redis_pool *p, size_t max_bytes);

#endif
