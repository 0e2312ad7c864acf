/*
 * redis_pool: hiredis async connections with timeouts, pings and reconnects,
 * on the pool core (pool.h). See redis_pool.h.
 *
 *   redis_pool_command / _script ──> pick ──> rconn: cmds FIFO ──> hiredis ──> redis-server
 *        cb(ctx, reply, err) <── on_reply_cb <── reply built by redis_reply.c
 *   redis_pool_subscribe ──> redis_pubsub.c (its own connection, same connect/handshake)
 *
 * Every command is tracked in a FIFO per connection (replies come back in
 * order), so its age can be checked against command_timeout_ms and each
 * callback can be guaranteed to run once: when a connection breaks, hiredis
 * runs the pending callbacks with a NULL reply, and the FIFO turns each into
 * an error with the reason the connection died.
 */
#include "daemon/backend/redis_pool.h"

#include <errno.h>
#include <hiredis/async.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/backend/redis_cluster.h"
#include "daemon/backend/redis_int.h"
#include "daemon/backend/redis_uv.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "proto/mem.h"

struct rcmd {
    TAILQ_ENTRY(rcmd) link;
    struct rconn *conn;
    redis_reply_fn cb;
    void *ctx;
    uint64_t start_ns;
    uint64_t start_ms;
    unsigned cmd;       /* index into cmd_names */
    unsigned nargs;
    char first_arg[48]; /* for the slow log */
};

/* --- metrics ----------------------------------------------------------- */

static const char *const cmd_names[] = { "GET",  "MGET",   "SET",    "DEL",     "PING",        "AUTH",
                                         "SELECT", "EVALSHA", "EVAL", "SCRIPT", "XADD",   "XRANGE",
                                         "XREVRANGE", "PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE", "CLIENT", "HGET",
                                         "SPUBLISH", "SSUBSCRIBE", "SUNSUBSCRIBE", "CLUSTER", "ASKING",
                                         "other" };
#define N_CMDS (sizeof(cmd_names) / sizeof(cmd_names[0]))

static uint64_t *m_cmds[N_CMDS];
static uint64_t *m_err_timeout, *m_err_conn, *m_err_reply, *m_slow;
static struct metric_hist *m_latency;

static const struct pool_names names = { "redis", "redis", "batchd_redis", "Redis",
                                         "1 when a Redis command connection is ready.",
                                         "batchd_redis_pending_replies", "Redis replies outstanding.", false };
/* A cluster node's: the cluster reports the group's gauges. */
static const struct pool_names member_names = { "redis node", "redis", "batchd_redis", "Redis", NULL, NULL,
                                                NULL, true };

static void metrics_init(void)
{
    char labels[64];
    for (unsigned i = 0; i < N_CMDS; i++) {
        snprintf(labels, sizeof(labels), "cmd=\"%s\"", cmd_names[i]);
        m_cmds[i] = metrics_counter("batchd_redis_commands_total", labels, "Redis commands sent, by command.");
    }
    const char *h = "Redis command failures: timeout, connection lost, or an error reply.";
    m_err_timeout = metrics_counter("batchd_redis_errors_total", "kind=\"timeout\"", h);
    m_err_conn = metrics_counter("batchd_redis_errors_total", "kind=\"connection\"", h);
    m_err_reply = metrics_counter("batchd_redis_errors_total", "kind=\"reply\"", h);
    m_slow = metrics_counter("batchd_redis_slow_commands_total", "", "Redis commands slower than slow_ms.");
    m_latency = metrics_histogram("batchd_redis_command_duration_seconds", "",
                                  "Time from sending a Redis command to its reply.",
                                  metrics_latency_bounds, metrics_latency_n);
}

static unsigned cmd_index(const char *name, size_t len)
{
    for (unsigned i = 0; i + 1 < N_CMDS; i++)
        if (strlen(cmd_names[i]) == len && strncasecmp(cmd_names[i], name, len) == 0)
            return i;
    return N_CMDS - 1;
}

/* --- connection lifecycle ------------------------------------------------------ */

/* The connection is gone (ac already freed or being freed by hiredis). */
static void rconn_lost(struct rconn *c, const char *reason)
{
    struct redis_pool *p = redis_pool_of(c);
    bool was_ready = c->base.state == POOL_READY;
    c->ac = NULL;
    c->heartbeat_sent_ms = 0;
    if (c->base.state != POOL_CLOSED)
        c->base.state = POOL_WAITING;
    log_debug("redis connection lost", "conn=%u pubsub=%d state=%s reason=%s", c->base.index, c->pubsub,
              pool_state_names[c->base.state], LOG_Q(reason));
    if (c->pubsub)
        redis_pubsub_lost(c, was_ready, reason);
    else
        pool_update_up(&p->core, reason);
    pool_conn_retry(&c->base);
}

/* Pending callbacks run from inside redisAsyncFree, with c->fail_err. */
void redis_conn_break(struct rconn *c, int err, const char *reason)
{
    redisAsyncContext *ac = c->ac;
    if (ac == NULL)
        return;
    c->fail_err = err;
    enum pool_conn_state old = c->base.state;
    c->base.state = POOL_WAITING; /* nothing new is routed here from the callbacks */
    ac->data = NULL;              /* our disconnect callback ignores it */
    redisAsyncFree(ac);
    c->base.state = old;
    rconn_lost(c, reason);
}

static void on_disconnect_cb(const redisAsyncContext *ac, int status)
{
    struct rconn *c = ac->data;
    if (c == NULL)
        return; /* we freed it ourselves */
    rconn_lost(c, status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr : "error"));
}

/* --- commands ------------------------------------------------------------------- */

static void finish_cmd(struct rconn *c, struct rcmd *k, const redisReply *reply, int err)
{
    struct redis_pool *p = redis_pool_of(c);
    uint64_t ns = uv_hrtime() - k->start_ns;
    metrics_observe(m_latency, (double)ns / 1e9);
    if (err == -ETIMEDOUT)
        (*m_err_timeout)++;
    else if (err < 0)
        (*m_err_conn)++;
    else if (reply && reply->type == REDIS_REPLY_ERROR)
        (*m_err_reply)++;
    if (p->core.lim.slow_ms > 0 && ns / 1000000 >= (uint64_t)p->core.lim.slow_ms) {
        (*m_slow)++;
        log_warn("slow redis command", "cmd=%s args=%u first=%s duration_ms=%.1f err=%d",
                 cmd_names[k->cmd], k->nargs, LOG_Q(k->first_arg), (double)ns / 1e6, err);
    }
    if (k->cb)
        k->cb(k->ctx, reply, err);
    free(k);
}

/* hiredis callback: replies arrive in order, so this is the FIFO head. */
static void on_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    struct rcmd *k = privdata;
    struct rconn *c = k->conn;
    (void)ac;
    TAILQ_REMOVE(&c->cmds, k, link);
    pool_conn_pop(&c->base);
    const redisReply *reply = r;
    if (reply != NULL)
        c->base.last_activity_ms = uv_now(c->base.pool->loop);
    finish_cmd(c, k, reply, reply ? 0 : (c->fail_err ? c->fail_err : -ECONNRESET));
    if (reply != NULL)
        pool_conn_arm(&c->base);
}

/* Sends an already RESP-formatted command; `name` names it for metrics and
 * `first` (may be empty) for the slow log. */
static int send_formatted(struct rconn *c, redis_reply_fn cb, void *ctx, const char *cmd, size_t len,
                          str_t name, unsigned nargs, str_t first)
{
    struct rcmd *k = mem_alloc(sizeof(*k));
    k->conn = c;
    k->cb = cb;
    k->ctx = ctx;
    k->start_ns = uv_hrtime();
    k->start_ms = uv_now(c->base.pool->loop);
    k->cmd = cmd_index(name.p, name.len);
    k->nargs = nargs;
    size_t n = first.len < sizeof(k->first_arg) - 1 ? first.len : sizeof(k->first_arg) - 1;
    if (strcmp(cmd_names[k->cmd], "AUTH") == 0)
        n = 0; /* its argument is the password (or the ACL user): never in the slow log */
    if (n)
        memcpy(k->first_arg, first.p, n);
    k->first_arg[n] = '\0';
    if (redisAsyncFormattedCommand(c->ac, on_reply_cb, k, cmd, len) != REDIS_OK) {
        free(k);
        return -EIO;
    }
    (*m_cmds[k->cmd])++;
    TAILQ_INSERT_TAIL(&c->cmds, k, link);
    pool_conn_push(&c->base);
    return 0;
}

static void resp_args(struct buf *out, int argc, const char **argv, const size_t *argvlen)
{
    for (int i = 0; i < argc; i++) {
        buf_append_char(out, '$');
        buf_append_u64(out, argvlen[i]);
        buf_append(out, "\r\n", 2);
        buf_append(out, argv[i], argvlen[i]);
        buf_append(out, "\r\n", 2);
    }
}

static int send_cmd(struct rconn *c, redis_reply_fn cb, void *ctx, int argc, const char **argv,
                    const size_t *argvlen)
{
    /* RESP formatted here: hiredis's printf-style formatter was a visible
     * share of the profile for 50-key MGETs. */
    static struct buf resp;
    buf_reset(&resp);
    buf_append_char(&resp, '*');
    buf_append_u64(&resp, (uint64_t)argc);
    buf_append(&resp, "\r\n", 2);
    resp_args(&resp, argc, argv, argvlen);
    int rc = send_formatted(c, cb, ctx, resp.data, resp.len, str_make(argv[0], argvlen[0]),
                            (unsigned)argc - 1, argc > 1 ? str_make(argv[1], argvlen[1]) : STR_NULL);
    if (resp.cap > 1024 * 1024)
        buf_deinit(&resp); /* do not hold on to a rare huge command */
    return rc;
}

int redis_conn_command(struct rconn *c, redis_reply_fn cb, void *ctx, int argc, const char **argv,
                       const size_t *argvlen)
{
    return send_cmd(c, cb, ctx, argc, argv, argvlen);
}

static struct rconn *pick(struct redis_pool *p)
{
    return (struct rconn *)pool_pick(&p->core);
}

/* --- scripts ------------------------------------------------------------------ */

struct scall {
    struct redis_pool *pool;
    struct redis_script *script;
    redis_reply_fn cb;
    void *ctx;
    struct buf tail;            /* the arguments, RESP-encoded */
    int argc;
    char first[48];             /* first key, for the slow log */
    bool retried;
    bool asking;                /* after an ASK redirect: ASKING before EVALSHA */
};

static int scall_send(struct scall *sc);

static void scall_finish(struct scall *sc, const redisReply *reply, int err)
{
    sc->cb(sc->ctx, reply, err);
    buf_deinit(&sc->tail);
    free(sc);
}

static void script_load_cb(void *ctx, const redisReply *reply, int err)
{
    struct scall *sc = ctx;
    if (err == 0 && reply->type == REDIS_REPLY_STRING && reply->len < sizeof(sc->script->sha)) {
        memcpy(sc->script->sha, reply->str, reply->len);
        sc->script->sha[reply->len] = '\0';
        if (scall_send(sc) == 0)
            return;
        err = -EAGAIN;
    }
    /* The script itself was never sent, whatever became of its SCRIPT
     * LOAD: callers that must not run it twice may retry (-EAGAIN). */
    if (err < 0)
        err = -EAGAIN;
    scall_finish(sc, err ? NULL : reply, err);
}

static void script_call_cb(void *ctx, const redisReply *reply, int err)
{
    struct scall *sc = ctx;
    if (err == 0 && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0 &&
        !sc->retried) {
        /* Redis restarted, or SCRIPT FLUSH: load it again and retry once. */
        sc->retried = true;
        sc->script->sha[0] = '\0';
        if (scall_send(sc) == 0)
            return;
        err = -EAGAIN;
        reply = NULL;
    }
    scall_finish(sc, reply, err);
}

static int scall_send(struct scall *sc)
{
    struct rconn *c = pick(sc->pool);
    if (c == NULL)
        return -EAGAIN;
    struct redis_script *s = sc->script;
    if (s->sha[0] == '\0') {
        const char *argv[3] = { "SCRIPT", "LOAD", s->src };
        size_t lens[3] = { 6, 4, strlen(s->src) };
        return send_cmd(c, script_load_cb, sc, 3, argv, lens);
    }
    if (sc->asking) {
        const char *argv[1] = { "ASKING" };
        size_t lens[1] = { 6 };
        if (send_cmd(c, NULL, NULL, 1, argv, lens) != 0)
            return -EIO;
    }
    static struct buf cmd;
    buf_reset(&cmd);
    buf_appendf(&cmd, "*%d\r\n$7\r\nEVALSHA\r\n$%zu\r\n%s\r\n", sc->argc + 2, strlen(s->sha), s->sha);
    buf_append(&cmd, sc->tail.data, sc->tail.len);
    int rc = send_formatted(c, script_call_cb, sc, cmd.data, cmd.len, STR_LIT("EVALSHA"),
                            (unsigned)sc->argc + 1, str_cstr(sc->first));
    if (cmd.cap > 1024 * 1024)
        buf_deinit(&cmd);
    return rc;
}

int redis_pool_script(struct redis_pool *p, struct redis_script *script, redis_reply_fn cb, void *ctx,
                      int argc, const char **argv, const size_t *argvlen)
{
    if (p->cluster)
        return redis_cluster_script(p->cluster, script, cb, ctx, argc, argv, argvlen);
    return redis_node_script(p, false, script, cb, ctx, argc, argv, argvlen);
}

int redis_node_script(struct redis_pool *p, bool asking, struct redis_script *script, redis_reply_fn cb,
                      void *ctx, int argc, const char **argv, const size_t *argvlen)
{
    /* Admitted once: its SCRIPT LOAD and NOSCRIPT follow-ups continue it. */
    int rc = pick(p) ? pool_admit(&p->core) : -EAGAIN;
    if (rc != 0)
        return rc;
    struct scall *sc = mem_calloc(1, sizeof(*sc));
    sc->pool = p;
    sc->script = script;
    sc->cb = cb;
    sc->ctx = ctx;
    sc->argc = argc;
    sc->asking = asking;
    resp_args(&sc->tail, argc, argv, argvlen);
    if (argc > 1)
        snprintf(sc->first, sizeof(sc->first), "%.*s", (int)argvlen[1], argv[1]);
    rc = scall_send(sc);
    if (rc != 0) {
        buf_deinit(&sc->tail);
        free(sc);
    }
    return rc;
}

int redis_pool_command(struct redis_pool *p, redis_reply_fn cb, void *ctx, int argc,
                       const char **argv, const size_t *argvlen)
{
    if (p->cluster)
        return redis_cluster_command(p->cluster, cb, ctx, argc, argv, argvlen);
    return redis_node_command(p, false, cb, ctx, argc, argv, argvlen);
}

int redis_node_command(struct redis_pool *p, bool asking, redis_reply_fn cb, void *ctx, int argc,
                       const char **argv, const size_t *argvlen)
{
    struct rconn *c = pick(p);
    int rc = c ? pool_admit(&p->core) : -EAGAIN;
    if (rc != 0)
        return rc;
    if (asking) {
        const char *a[1] = { "ASKING" };
        size_t l[1] = { 6 };
        if (send_cmd(c, NULL, NULL, 1, a, l) != 0)
            return -EIO;
    }
    return send_cmd(c, cb, ctx, argc, argv, argvlen);
}

void redis_pool_flush(struct redis_pool *p)
{
    if (p->cluster) {
        redis_cluster_flush(p->cluster);
        return;
    }
    for (unsigned i = 0; i < p->core.n; i++) {
        struct rconn *c = (struct rconn *)p->core.conns[i];
        if (c->base.state == POOL_READY && c->base.pending > 0 && c->ac)
            redisAsyncHandleWrite(c->ac);
    }
}

bool redis_pool_is_cluster(const struct redis_pool *p)
{
    return p->cluster != NULL;
}

bool redis_pool_up(const struct redis_pool *p)
{
    if (p->cluster)
        return redis_cluster_up(p->cluster);
    return p->core.ready > 0;
}

/* --- handshake -------------------------------------------------------------------- */

static void handshake_step_cb(void *ctx, const redisReply *reply, int err);

static void handshake_done(struct rconn *c)
{
    pool_conn_ready(&c->base);
    log_debug("redis connection ready", "conn=%u pubsub=%d", c->base.index, c->pubsub);
    if (c->pubsub)
        redis_pubsub_ready(c);
    else
        pool_update_up(c->base.pool, "ready");
    pool_conn_arm(&c->base);
}

/* The last handshake command's reply decides; earlier ones fail it too. */
static void handshake_step_cb(void *ctx, const redisReply *reply, int err)
{
    struct rconn *c = ctx;
    if (c->base.state != POOL_HANDSHAKE)
        return;
    if (err < 0)
        return; /* the connection is already being torn down */
    if (reply->type == REDIS_REPLY_ERROR) {
        log_warn("redis handshake failed", "conn=%u err=%s", c->base.index, LOG_Q(reply->str));
        redis_conn_break(c, -ECONNREFUSED, reply->str);
        return;
    }
    redis_conn_handshake_step(c);
}

void redis_conn_handshake_step(struct rconn *c)
{
    if (c->base.state == POOL_HANDSHAKE && c->base.pending == 0)
        handshake_done(c);
}

static void on_connect_cb(const redisAsyncContext *ac, int status)
{
    struct rconn *c = ac->data;
    if (c == NULL)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this returns. */
        c->ac = NULL;
        rconn_lost(c, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    const struct cfg_redis_url *u = &redis_pool_of(c)->cfg->url;
    c->base.state = POOL_HANDSHAKE;
    if (u->password) {
        const char *argv[3] = { "AUTH", u->username ? u->username : u->password, u->password };
        size_t lens[3] = { 4, strlen(argv[1]), strlen(argv[2]) };
        (void)send_cmd(c, handshake_step_cb, c, u->username ? 3 : 2, argv, lens);
    }
    if (u->db != 0 && !c->pubsub) {
        char db[16];
        snprintf(db, sizeof(db), "%d", u->db);
        const char *argv[2] = { "SELECT", db };
        size_t lens[2] = { 6, strlen(db) };
        (void)send_cmd(c, handshake_step_cb, c, 2, argv, lens);
    }
    if (c->pubsub)
        redis_tracking_handshake(c);
    const char *argv[1] = { "PING" };
    size_t lens[1] = { 4 };
    (void)send_cmd(c, handshake_step_cb, c, 1, argv, lens);
}

static void rconn_connect(struct rconn *c)
{
    struct redis_pool *p = redis_pool_of(c);
    const struct cfg_redis_url *u = &p->cfg->url;
    c->base.state = POOL_CONNECTING;
    c->fail_err = -ECONNRESET;
    redisAsyncContext *ac = redisAsyncConnect(u->host, u->port);
    if (ac == NULL || ac->err) {
        log_debug("redis connect failed", "conn=%u err=%s", c->base.index, LOG_Q(ac ? ac->errstr : "oom"));
        if (ac)
            redisAsyncFree(ac);
        rconn_lost(c, "connect failed");
        return;
    }
    ac->data = c;
    ac->c.reader->fn = &redis_reply_fns;
    /* hiredis frees an idle read buffer above 16 KiB and grows it again for
     * the next large reply; keep up to 1 MiB per connection instead. */
    ac->c.reader->maxbuf = 1024 * 1024;
    if (c->pubsub && p->member)
        ac->c.reader->privdata = &redis_reply_sharded_mark;
    if (redis_uv_attach(ac, p->core.loop) != REDIS_OK) {
        ac->data = NULL;
        redisAsyncFree(ac);
        rconn_lost(c, "attach failed");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect_cb);
    redisAsyncSetDisconnectCallback(ac, on_disconnect_cb);
    c->ac = ac;
    pool_conn_connecting(&c->base);
}

/* --- what the pool core asks: connect, timeouts, pings, close ------------------------ */

void redis_conn_connect_cb(struct pool_conn *pc)
{
    rconn_connect((struct rconn *)pc);
}

void redis_conn_connect_timeout_cb(struct pool_conn *pc)
{
    struct rconn *c = (struct rconn *)pc;
    if (c->ac)
        redis_conn_break(c, -ETIMEDOUT, "connect timeout");
    else
        rconn_lost(c, "connect timeout");
}

static bool conn_oldest_cb(const struct pool_conn *pc, uint64_t *sent_ms)
{
    const struct rcmd *k = TAILQ_FIRST(&((const struct rconn *)pc)->cmds);
    if (k == NULL)
        return false;
    *sent_ms = k->start_ms;
    return true;
}

static void conn_overdue_cb(struct pool_conn *pc)
{
    struct rconn *c = (struct rconn *)pc;
    log_warn("redis reply timeout", "conn=%u pending=%u timeout_ms=%lld", pc->index, pc->pending,
             (long long)redis_pool_of(c)->cfg->command_timeout_ms);
    redis_conn_break(c, -ETIMEDOUT, "reply timeout");
}

static void ping_cb(void *ctx, const redisReply *reply, int err)
{
    (void)ctx;
    (void)reply;
    (void)err; /* a failed PING breaks the connection through its timeout */
}

static void conn_ping_cb(struct pool_conn *pc)
{
    const char *argv[1] = { "PING" };
    size_t lens[1] = { 4 };
    (void)send_cmd((struct rconn *)pc, ping_cb, NULL, 1, argv, lens);
}

void redis_conn_close_cb(struct pool_conn *pc)
{
    struct rconn *c = (struct rconn *)pc;
    if (c->ac) {
        redisAsyncContext *ac = c->ac;
        c->fail_err = -ECANCELED;
        ac->data = NULL;
        c->ac = NULL;
        redisAsyncFree(ac);
    }
}

/* In pool.h's order: connect, connect_timeout, oldest, overdue, ping, close. */
static const struct pool_conn_ops conn_ops = { redis_conn_connect_cb, redis_conn_connect_timeout_cb,
                                               conn_oldest_cb, conn_overdue_cb, conn_ping_cb,
                                               redis_conn_close_cb };

void redis_count_command(const char *name, size_t len)
{
    (*m_cmds[cmd_index(name, len)])++;
}

/* --- pool ---------------------------------------------------------------------------- */

static struct pool_limits limits_of(const struct cfg_redis *cfg, int64_t slow_ms)
{
    return (struct pool_limits){
        .connect_timeout_ms = (uint64_t)cfg->connect_timeout_ms,
        .reply_timeout_ms = (uint64_t)cfg->command_timeout_ms,
        .ping_interval_ms = (uint64_t)cfg->ping_interval_ms,
        .slow_ms = slow_ms,
        .max_pending = (unsigned)cfg->max_pending,
    };
}

static void pool_destroy_cb(struct pool *core)
{
    pool_deinit(core);
    free((struct redis_pool *)core);
}

static struct redis_pool *pool_new(uv_loop_t *loop, const struct cfg_redis *cfg, int64_t slow_ms, bool member)
{
    struct redis_pool *p = mem_calloc(1, sizeof(*p));
    p->cfg = cfg;
    p->member = member;
    snprintf(p->addr, sizeof(p->addr), "%s:%d", cfg->url.host, cfg->url.port);
    p->core.addr = p->addr;
    pool_init(&p->core, loop, member ? &member_names : &names, &conn_ops, (unsigned)cfg->pool_size,
              sizeof(struct rconn), limits_of(cfg, slow_ms), pool_destroy_cb);
    metrics_init();
    redis_pubsub_init();
    redis_tracking_init();
    LIST_INIT(&p->channels);
    for (unsigned i = 0; i < p->core.n; i++)
        TAILQ_INIT(&((struct rconn *)p->core.conns[i])->cmds);
    pool_start(&p->core);
    return p;
}

struct redis_pool *redis_pool_new(uv_loop_t *loop, const struct cfg_redis *cfg, int64_t slow_ms)
{
    if (!cfg->cluster)
        return pool_new(loop, cfg, slow_ms, false);
    metrics_init();
    redis_pubsub_init();
    redis_tracking_init();
    struct redis_pool *p = mem_calloc(1, sizeof(*p));
    p->cfg = cfg;
    p->cluster = redis_cluster_new(p, loop, cfg, slow_ms);
    return p;
}

struct redis_pool *redis_node_new(uv_loop_t *loop, const struct cfg_redis *cfg, int64_t slow_ms)
{
    return pool_new(loop, cfg, slow_ms, true);
}

void redis_pool_configure(struct redis_pool *p, const struct cfg_redis *cfg, int64_t slow_ms)
{
    if (p->cluster) {
        p->cfg = cfg;
        redis_cluster_configure(p->cluster, cfg, slow_ms);
        return;
    }
    p->cfg = cfg;
    pool_configure(&p->core, limits_of(cfg, slow_ms));
}

void redis_pool_free(struct redis_pool *p)
{
    if (p == NULL)
        return;
    if (p->cluster) {
        redis_cluster_free(p->cluster); /* frees its nodes, and this shell once its handles close */
        return;
    }
    redis_reply_drain();
    p->core.freeing = true;
    redis_pubsub_free(p);
    redis_tracking_free(p);
    pool_close(&p->core);
}
