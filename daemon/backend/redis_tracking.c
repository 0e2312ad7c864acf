/*
 * redis_tracking: server-assisted client-side caching on the pub/sub
 * connection (see redis_pool.h for the sequence and why the connection
 * tracks for itself).
 *
 *   handshake: CLIENT ID ──> CLIENT TRACKING on REDIRECT <id> BCAST PREFIX.. ──> (PING) ──> READY
 *   ready:     SUBSCRIBE __redis__:invalidate ──confirmed──> REDIS_TRACK_UP
 *   messages:  [key, key..] ──> REDIS_TRACK_KEY each;  nil ──> REDIS_TRACK_FLUSH
 *   lost:      REDIS_TRACK_DOWN (the near caches empty themselves)
 *
 * A refusal (CLIENT not allowed by an ACL, an unknown subcommand on an old
 * Redis, overlapping prefixes) does not fail the handshake: the connection
 * still carries SSE's channels, and tracking stays down until the next
 * connection asks again.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <string.h>
#include <strings.h>

#include "daemon/backend/redis_cluster.h"
#include "daemon/backend/redis_int.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "proto/buf.h"
#include "proto/mem.h"

static int64_t *m_up;
static uint64_t *m_keys, *m_flushes, *m_lost, *m_refused;

void redis_tracking_report_up(bool up)
{
    *m_up = up;
}

void redis_tracking_init(void)
{
    m_up = metrics_gauge("batchd_redis_tracking_up", "",
                         "1 while Redis client tracking is confirmed (the near cache is trusted only then).");
    m_keys = metrics_counter("batchd_redis_tracking_keys_total", "", "Keys named by Redis invalidation messages.");
    m_flushes = metrics_counter("batchd_redis_tracking_flushes_total", "",
                                "Invalidation messages naming no key (FLUSHALL, FLUSHDB): everything dropped.");
    m_lost = metrics_counter("batchd_redis_tracking_lost_total", "",
                             "Times confirmed tracking was lost (the pub/sub connection went down).");
    m_refused = metrics_counter("batchd_redis_tracking_refused_total", "",
                                "Handshakes in which Redis refused CLIENT ID or CLIENT TRACKING.");
}

static void refused(struct rconn *c, const char *what, const redisReply *reply)
{
    c->track = TRACK_REFUSED;
    (*m_refused)++;
    log_warn("redis refused client tracking: the near cache stays off", "step=%s err=%s hint=%s", what,
             LOG_Q(reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply"),
             LOG_Q("Redis 6+ with CLIENT allowed for batchd's user"));
}

static void tracking_on_cb(void *ctx, const redisReply *reply, int err)
{
    struct rconn *c = ctx;
    if (err < 0 || c->base.state != POOL_HANDSHAKE)
        return; /* torn down meanwhile */
    if (reply->type == REDIS_REPLY_STATUS && strcasecmp(reply->str, "OK") == 0)
        c->track = TRACK_ON;
    else
        refused(c, "CLIENT TRACKING", reply);
    redis_conn_handshake_step(c);
}

static void client_id_cb(void *ctx, const redisReply *reply, int err)
{
    struct rconn *c = ctx;
    if (err < 0 || c->base.state != POOL_HANDSHAKE)
        return;
    struct redis_pool *p = redis_pool_of(c);
    if (reply->type != REDIS_REPLY_INTEGER || p->n_track == 0) {
        if (p->n_track)
            refused(c, "CLIENT ID", reply);
        else
            c->track = TRACK_NONE; /* turned off meanwhile */
        redis_conn_handshake_step(c);
        return;
    }
    char id[24];
    snprintf(id, sizeof(id), "%lld", reply->integer);
    unsigned argc = 6 + 2 * p->n_track;
    const char *stack_argv[6 + 2 * 16];
    size_t stack_lens[6 + 2 * 16];
    const char **argv = argc <= 6 + 2 * 16 ? stack_argv : mem_alloc(argc * sizeof(*argv));
    size_t *lens = argc <= 6 + 2 * 16 ? stack_lens : mem_alloc(argc * sizeof(*lens));
    const char *head[6] = { "CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST" };
    for (unsigned i = 0; i < 6; i++)
        argv[i] = head[i], lens[i] = strlen(head[i]);
    for (unsigned i = 0; i < p->n_track; i++) {
        argv[6 + 2 * i] = "PREFIX", lens[6 + 2 * i] = 6;
        argv[7 + 2 * i] = p->track_prefixes[i], lens[7 + 2 * i] = strlen(p->track_prefixes[i]);
    }
    if (redis_conn_command(c, tracking_on_cb, c, (int)argc, argv, lens) != 0)
        refused(c, "CLIENT TRACKING", NULL);
    if (argv != stack_argv) {
        free(argv);
        free(lens);
    }
    redis_conn_handshake_step(c);
}

void redis_tracking_handshake(struct rconn *c)
{
    struct redis_pool *p = redis_pool_of(c);
    c->track = TRACK_NONE;
    if (p->n_track == 0)
        return;
    const char *argv[2] = { "CLIENT", "ID" };
    size_t lens[2] = { 6, 2 };
    if (redis_conn_command(c, client_id_cb, c, 2, argv, lens) == 0)
        c->track = TRACK_ASKING;
}

void redis_tracking_ready(struct rconn *c)
{
    if (c->track == TRACK_ON)
        redis_sub_send(c, "SUBSCRIBE", REDIS_TRACK_CHANNEL);
}

static void set_up(struct redis_pool *p, bool up)
{
    if (p->track_up == up)
        return;
    p->track_up = up;
    if (!p->member)
        *m_up = up;
    if (!up)
        (*m_lost)++;
    log_info(up ? "redis tracking up" : "redis tracking down", "node=%s prefixes=%u", p->addr, p->n_track);
    if (p->track_fn)
        p->track_fn(p->track_arg, up ? REDIS_TRACK_UP : REDIS_TRACK_DOWN, NULL, 0);
}

void redis_tracking_message(struct rconn *c, const redisReply *kind, const redisReply *msg)
{
    struct redis_pool *p = redis_pool_of(c);
    if (strcasecmp(kind->str, "subscribe") == 0) {
        if (c->track == TRACK_ON && c == p->sub)
            set_up(p, true);
        return;
    }
    if (strcasecmp(kind->str, "message") != 0 || !p->track_up)
        return;
    if (msg->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < msg->elements; i++) {
            const redisReply *k = msg->element[i];
            if (k->type != REDIS_REPLY_STRING)
                continue;
            (*m_keys)++;
            if (p->track_fn)
                p->track_fn(p->track_arg, REDIS_TRACK_KEY, k->str, k->len);
        }
    } else if (msg->type == REDIS_REPLY_NIL) {
        (*m_flushes)++;
        if (p->track_fn)
            p->track_fn(p->track_arg, REDIS_TRACK_FLUSH, NULL, 0);
    } else if (msg->type == REDIS_REPLY_STRING) {
        (*m_keys)++; /* a lone key, as some versions send it */
        if (p->track_fn)
            p->track_fn(p->track_arg, REDIS_TRACK_KEY, msg->str, msg->len);
    }
}

void redis_tracking_lost(struct rconn *c)
{
    c->track = TRACK_NONE;
    set_up(redis_pool_of(c), false);
}

static void free_prefixes(struct redis_pool *p)
{
    for (unsigned i = 0; i < p->n_track; i++)
        free(p->track_prefixes[i]);
    free(p->track_prefixes);
    p->track_prefixes = NULL;
    p->n_track = 0;
}

void redis_tracking_free(struct redis_pool *p)
{
    free_prefixes(p);
    p->track_fn = NULL;
    p->track_up = false;
    if (!p->member)
        *m_up = 0;
}

static bool same_prefixes(const struct redis_pool *p, const char *const *prefixes, unsigned n)
{
    if (n != p->n_track)
        return false;
    for (unsigned i = 0; i < n; i++)
        if (strcmp(prefixes[i], p->track_prefixes[i]) != 0)
            return false;
    return true;
}

void redis_pool_track(struct redis_pool *p, const char *const *prefixes, unsigned n, redis_track_fn fn,
                      void *arg)
{
    if (p->cluster) {
        redis_cluster_track(p->cluster, prefixes, n, fn, arg);
        return;
    }
    if (p->core.freeing)
        return;
    if (fn == NULL) { /* the listener goes: tracking stays as it is, unreported */
        p->track_fn = NULL;
        p->track_arg = NULL;
        return;
    }
    p->track_fn = fn;
    p->track_arg = arg;
    if (same_prefixes(p, prefixes, n)) {
        if (n)
            redis_pubsub_ensure(p);
        return;
    }
    free_prefixes(p);
    p->track_prefixes = n ? mem_alloc(n * sizeof(char *)) : NULL;
    for (unsigned i = 0; i < n; i++)
        p->track_prefixes[i] = mem_strdup(prefixes[i]);
    p->n_track = n;
    struct rconn *c = p->sub;
    if (c && c->ac && c->base.state != POOL_WAITING) {
        /* A subscribed RESP2 connection cannot change its tracking: start
         * over (SSE channels resubscribe and fill their gap). */
        log_info("redis pub/sub reconnects for new tracking prefixes", "prefixes=%u", n);
        redis_conn_break(c, -ECONNRESET, "tracking prefixes changed");
    }
    if (n)
        redis_pubsub_ensure(p);
}

bool redis_pool_pubsub_drain(struct redis_pool *p, size_t max_bytes)
{
    if (p->cluster)
        return redis_cluster_pubsub_drain(p->cluster, max_bytes);
    struct rconn *c = p->sub;
    size_t taken = 0;
    while (c && c->ac && c->base.state == POOL_READY) {
        char b;
        ssize_t n = recv(c->ac->c.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return true;
        if (taken >= max_bytes)
            return false;
        /* Bytes, an end of file or an error: hiredis reads (at most 16 KiB)
         * or notices, and a lost connection reports tracking down. */
        redisAsyncHandleRead(c->ac);
        taken += 16384;
    }
    return true;
}
