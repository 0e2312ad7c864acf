/*
 * app: module wiring, signals and the shutdown sequence. See app.h.
 *
 * Shutdown: SIGTERM (or SIGINT) closes the main listener, turns /readyz to
 * 503 and lets requests in flight finish. When the last main-listener
 * connection is gone, or shutdown_grace_ms passes (the rest are then closed
 * by force and the log says how many), every handle is closed and the loop
 * runs dry. A second SIGTERM skips the wait.
 */
#include "daemon/app.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "daemon/http/conn.h"
#include "daemon/http/cors.h"
#include "daemon/http/encode.h"
#include "daemon/sse/events.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/notify.h"
#include "daemon/http/ops.h"
#include "daemon/backend/pg_pool.h"
#include "daemon/backend/redis_pool.h"
#include "daemon/http/req.h"
#include "daemon/cache/list.h"
#include "daemon/cache/resource.h"
#include "daemon/auth/cred_cache.h"
#include "daemon/auth/identity.h"
#include "daemon/auth/jwt.h"
#include "daemon/http/router.h"
#include "daemon/http/server.h"
#include "daemon/proxy/upstream.h"
#include "proto/batch.h"
#include "proto/hashtab.h"
#include "proto/jtext.h"
#include "proto/mem.h"

struct app {
    uv_loop_t loop;
    struct config *cfg;
    struct server server;
    struct redis_pool *redis;
    struct pg_pool *pg;
    struct resource_set *resources;
    struct list_set *lists;
    struct events *events;
    struct upstream *upstream;
    struct identity *identity;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t grace_timer;
    uv_timer_t metrics_timer;   /* workers only: metrics_refresh() every second */
    bool is_worker;
    bool stopping;
    bool finished;
};

static const char *ready_check(void *arg)
{
    struct app *a = arg;
    if (a->stopping)
        return "shutting_down";
    return a->resources ? resource_set_not_ready(a->resources) : NULL;
}

static double gauge_configs(void *arg)
{
    return config_live_count();
}

static void build_routers(struct app *a, struct router **main_rt, struct router **admin_rt)
{
    *main_rt = router_new();
    *admin_rt = router_new();
    if (a->cfg->has_cors)
        (*main_rt)->cors = cors_new(&a->cfg->cors);
    ops_add_routes(a->server.has_admin ? *admin_rt : *main_rt);
    resource_set_add_routes(a->resources, *main_rt);
    list_set_add_routes(a->lists, *main_rt);
    events_add_routes(a->events, *main_rt);
    if (a->upstream)
        upstream_add_routes(a->upstream, *main_rt);
}

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Everything is done or forced: close the rest so the loop returns. */
static void app_finish(struct app *a)
{
    if (a->finished)
        return;
    a->finished = true;
    uv_timer_stop(&a->grace_timer);
    server_close_all(&a->server, CONN_CLOSE_SHUTDOWN);
    server_close(&a->server);
    /* Pools first: their cancelled callbacks still land in the resources
     * and the event hub. */
    pg_pool_free(a->pg);
    redis_pool_free(a->redis);
    resource_set_free(a->resources);
    list_set_free(a->lists); /* after the resources: their fetches answer its pages */
    a->lists = NULL;
    events_free(a->events);
    identity_free(a->identity); /* its forward-auth checks run through the upstream */
    a->identity = NULL;
    upstream_free(a->upstream);
    a->upstream = NULL;
    a->pg = NULL;
    a->redis = NULL;
    a->resources = NULL;
    a->events = NULL;
    close_handle((uv_handle_t *)&a->grace_timer);
    close_handle((uv_handle_t *)&a->sig_term);
    if (a->is_worker)
        close_handle((uv_handle_t *)&a->metrics_timer);
    else
        close_handle((uv_handle_t *)&a->sig_int);
    close_handle((uv_handle_t *)&a->sig_hup);
    notify_close();
}

static void drained_cb(void *arg)
{
    struct app *a = arg;
    log_info("drained", "msg_detail=\"all client connections finished\"");
    app_finish(a);
}

static void grace_cb(uv_timer_t *t)
{
    struct app *a = t->data;
    unsigned left = a->server.main.open;
    log_warn("shutdown grace expired", "forced_connections=%u grace_ms=%lld", left,
             (long long)a->cfg->batchd.shutdown_grace_ms);
    server_close_all(&a->server, CONN_CLOSE_SHUTDOWN_FORCED);
    app_finish(a);
}

static void begin_shutdown(struct app *a, const char *signame)
{
    if (a->stopping) {
        log_warn("second stop signal, exiting now", "signal=%s open_connections=%u", signame,
                 a->server.main.open);
        server_close_all(&a->server, CONN_CLOSE_SHUTDOWN_FORCED);
        app_finish(a);
        return;
    }
    a->stopping = true;
    notify_stopping();
    events_drain(a->events);
    log_info("shutting down", "signal=%s open_connections=%u grace_ms=%lld", signame,
             a->server.main.open, (long long)a->cfg->batchd.shutdown_grace_ms);
    uv_timer_start(&a->grace_timer, grace_cb, (uint64_t)a->cfg->batchd.shutdown_grace_ms, 0);
    server_drain(&a->server, drained_cb, a);
}

/* conf/batchd.ini ships this admin_token and `meson install` copies that
 * file as the live config, so a host that never set its own would accept a
 * token anyone can read. tests/integration/test_secrets.py reads the example
 * file to keep the two in step. */
#define EXAMPLE_ADMIN_TOKEN "change-me"

static void warn_example_token(const struct config *c)
{
    if (c->batchd.admin_token && strcmp(c->batchd.admin_token, EXAMPLE_ADMIN_TOKEN) == 0)
        log_warn("admin_token is the example value from conf/batchd.ini; set your own",
                 "file=%s", LOG_Q(c->file));
}

/* SIGHUP: read and check the whole file first; apply it only when valid.
 * Settings that need a restart keep their running values (and are logged);
 * everything else changes in place, without dropping a connection. */
static void app_reload(struct app *a)
{
    if (a->stopping)
        return;
    notify_reloading();
    struct buf errors = BUF_INIT;
    struct config *next = config_load(a->cfg->file, &errors);
    if (next == NULL) {
        log_lines(LOG_ERROR, "reload rejected", "error", &errors);
        log_error("reload rejected, the running configuration stays", "file=%s", LOG_Q(a->cfg->file));
        buf_deinit(&errors);
        notify_ready();
        return;
    }
    if (identity_reconfigure(a->identity, next, &errors) != 0) {
        log_lines(LOG_ERROR, "reload rejected", "error", &errors);
        log_error("reload rejected, the running configuration stays", "file=%s", LOG_Q(a->cfg->file));
        buf_deinit(&errors);
        config_unref(next);
        notify_ready();
        return;
    }
    buf_deinit(&errors);
    struct buf restart = BUF_INIT;
    if (config_restart_needed(a->cfg, next, &restart))
        log_lines(LOG_WARN, "setting changed but needs restart", "setting", &restart);
    buf_deinit(&restart);
    config_keep_restart_settings(a->cfg, next);

    log_set_level((enum log_level)next->batchd.log_level);
    server_configure(&a->server, &next->batchd);
    if (a->redis)
        redis_pool_configure(a->redis, &next->redis, next->batchd.slow_ms);
    if (a->pg)
        pg_pool_configure(a->pg, &next->postgres, next->batchd.slow_ms);
    resource_set_reconfigure(a->resources, next);
    list_set_reconfigure(a->lists, next);
    events_reconfigure(a->events, next);
    if (a->upstream)
        upstream_configure(a->upstream, &next->upstream, a->resources);
    /* Everything now points into next; what still points into the old
     * config (a removed resource or stream, a publish in flight) holds a
     * reference and frees it last. */
    config_unref(a->cfg);
    a->cfg = next;
    struct router *main_rt, *admin_rt;
    build_routers(a, &main_rt, &admin_rt);
    server_set_routers(&a->server, main_rt, admin_rt);
    log_info("reloaded", "file=%s resources=%u streams=%u", LOG_Q(next->file), next->n_resources,
             next->n_streams);
    warn_example_token(next);
    notify_ready();
}

static void signal_cb(uv_signal_t *h, int signum)
{
    struct app *a = h->data;
    switch (signum) {
    case SIGTERM: begin_shutdown(a, "SIGTERM"); break;
    case SIGINT: begin_shutdown(a, "SIGINT"); break;
    case SIGHUP: app_reload(a); break;
    }
}

static void start_signal(struct app *a, uv_signal_t *h, int signum)
{
    uv_signal_init(&a->loop, h);
    h->data = a;
    uv_signal_start(h, signal_cb, signum);
}

struct config *app_load_config(const char *file, struct buf *errors)
{
    struct config *cfg = config_load(file, errors);
    if (cfg == NULL)
        return NULL;
    /* Key files are read now too, so a bad one fails the check (and the
     * start) with the file named, not the first request. */
    if (cfg->has_auth && (cfg->auth.jwt_secret_file[0] || cfg->auth.jwt_public_keys.n)) {
        struct jwt_keys *keys = jwt_keys_load(&cfg->auth, errors);
        jwt_keys_free(keys);
        if (keys == NULL) {
            config_unref(cfg);
            return NULL;
        }
    }
    return cfg;
}

static void metrics_timer_cb(uv_timer_t *t)
{
    metrics_refresh();
}

int app_run(struct config *cfg, const struct app_worker *w)
{
    struct app *a = mem_calloc(1, sizeof(*a));
    int code = 0;
    a->cfg = cfg;
    a->is_worker = w != NULL;
    if (w)
        log_set_worker((int)w->id);
    log_set_level((enum log_level)cfg->batchd.log_level);
    warn_example_token(cfg);
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&a->loop);

    conn_metrics_init();
    req_metrics_init();
    cors_metrics_init();
    encode_metrics_init();
    metrics_gauge_fn("batchd_configs_in_memory", "",
                     "Configurations in memory: the running one, plus replaced ones that a removed resource or "
                     "stream, or a publish in flight, still uses.",
                     gauge_configs, NULL);
    ops_init(ready_check, a, w ? (int)w->id : -1);

    srandom((unsigned)(uv_hrtime() ^ (uint64_t)getpid()));
    hashtab_seed_init(); /* aborts when getrandom() cannot answer */
    /* The JSON memo's hash is keyed like the hash tables: from getrandom(),
     * not from the clock and pid that seed random() (retry jitter only). */
    uint64_t memo_seed;
    if (getrandom(&memo_seed, sizeof(memo_seed), 0) != (ssize_t)sizeof(memo_seed))
        memo_seed = ((uint64_t)random() << 32) ^ (uint64_t)random() ^ uv_hrtime();
    jtext_cache_seed(memo_seed);
    if (cfg->has_redis)
        a->redis = redis_pool_new(&a->loop, &cfg->redis, cfg->batchd.slow_ms);
    if (cfg->has_postgres)
        a->pg = pg_pool_new(&a->loop, &cfg->postgres, cfg->batchd.slow_ms);
    a->resources = resource_set_new(&a->loop, cfg, a->redis, a->pg);
    a->lists = list_set_new(cfg, a->redis, a->pg, a->resources);
    a->events = events_new(&a->loop, cfg, a->redis);
    if (cfg->has_upstream)
        a->upstream = upstream_new(&a->loop, &cfg->upstream, a->resources);
    if (a->upstream)
        upstream_set_lists(a->upstream, a->lists);
    events_set_resources(a->events, a->resources);
    struct buf id_errors = BUF_INIT;
    a->identity = identity_new(&a->loop, cfg, a->upstream, &id_errors);
    if (a->identity == NULL) { /* a key file changed since main.c read it */
        log_lines(LOG_ERROR, "cannot start", "error", &id_errors);
        buf_deinit(&id_errors);
        code = 1;
        app_finish(a);
        goto run;
    }
    buf_deinit(&id_errors);
    identity_set_current(a->identity);

    uv_timer_init(&a->loop, &a->grace_timer);
    a->grace_timer.data = a;
    start_signal(a, &a->sig_term, SIGTERM);
    start_signal(a, &a->sig_hup, SIGHUP);
    if (w) {
        /* A terminal's Ctrl-C reaches the whole process group: the master
         * turns it into one SIGTERM per worker, so a worker ignores it. */
        signal(SIGINT, SIG_IGN);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGHUP);
        sigaddset(&set, SIGCHLD);
        sigprocmask(SIG_UNBLOCK, &set, NULL); /* a signal sent since the fork lands now */
        notify_init_link(&a->loop, w->link_fd, w->watchdog_usec);
        uv_timer_init(&a->loop, &a->metrics_timer);
        uv_timer_start(&a->metrics_timer, metrics_timer_cb, 1000, 1000);
        uv_unref((uv_handle_t *)&a->metrics_timer);
    } else {
        start_signal(a, &a->sig_int, SIGINT);
        notify_init(&a->loop);
    }

    if (server_init(&a->server, &a->loop, &cfg->batchd, w ? w->main_fd : -1, w ? w->admin_fd : -1) != 0) {
        code = 1;
        app_finish(a);
        goto run;
    }
    struct router *main_rt, *admin_rt;
    build_routers(a, &main_rt, &admin_rt);
    server_set_routers(&a->server, main_rt, admin_rt);
    if (server_start(&a->server) != 0) {
        code = 1;
        app_finish(a);
        goto run;
    }
    log_info("started", "version=%s pid=%d config=%s", BATCHD_VERSION, (int)getpid(),
             LOG_Q(cfg->file));
    notify_ready();

run:
    uv_run(&a->loop, UV_RUN_DEFAULT);
    if (w) {
        /* The loop no longer handles them: a late SIGTERM (the master
         * passing on a second one) must not turn a clean exit into a kill. */
        signal(SIGTERM, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
    }
    int rc = uv_loop_close(&a->loop);
    if (rc != 0)
        log_error("loop closed with handles still open", "err=%s", uv_strerror(rc));
    if (code == 0)
        log_info("stopped", "");
    req_pool_drain();
    encode_deinit();
    batch_pool_drain();
    resource_pool_drain();
    cred_key_cleanup();
    metrics_free_all();
    config_unref(a->cfg);
    free(a);
    return code;
}
