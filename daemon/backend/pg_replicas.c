/*
 * pg_replicas: read replicas, their lag checks, the pick, and the record
 * of recent writes. See pg_replicas.h.
 *
 * The lag check. `now() - pg_last_xact_replay_timestamp()` alone grows
 * while the primary is idle (nothing new to replay), so a replica that has
 * replayed everything it received from a running WAL receiver counts as
 * 0 ms behind; otherwise (replaying a backlog, replay paused, no receiver)
 * the age of the last transaction it replayed is its lag, an upper bound.
 * No replay timestamp yet: unknown, not used. Not in recovery (promoted,
 * or a primary named by mistake): not used, logged, since it no longer
 * follows the primary's writes.
 *
 * Why a write is "recent" for max_replica_lag_ms + 2 ping intervals + 1 s:
 * a replica is used when a check sent at most 2 ping intervals ago measured
 * it under max_replica_lag_ms behind; so it holds every commit older than
 * that sum, and the second covers WAL still on its way to a receiver that
 * looked caught up.
 */
#include "daemon/backend/pg_replicas.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/backend/pg_pool.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "proto/mem.h"
#include "proto/recent.h"

#define TRANSIT_SLACK_MS 1000

static const char LAG_SQL[] =
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() "
    "AND EXISTS (SELECT FROM pg_stat_wal_receiver) THEN 0 "
    "ELSE (extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000)::bigint END";

/* Why a replica gets no reads, or REPLICA_OK. */
#define REPLICA_STATES(X)                                                             \
    X(OK, "ok")                                                                       \
    X(DOWN, "down")                 /* no connection ready */                         \
    X(UNCHECKED, "lag_unknown")     /* no recent check, or no replay timestamp yet */ \
    X(CHECK_FAILED, "check_failed") /* the lag check itself failed */                 \
    X(NOT_STANDBY, "not_in_recovery")                                                 \
    X(BEHIND, "too_far_behind")

enum replica_state {
#define X(name, label) REPLICA_##name,
    REPLICA_STATES(X)
#undef X
};

static const char *const state_names[] = {
#define X(name, label) label,
    REPLICA_STATES(X)
#undef X
};

/* Why a read went to the primary. */
enum primary_why { WHY_RECENT_WRITE, WHY_RECENT_FULL, WHY_NO_REPLICA, WHY_REPLICA_FAILED, WHY__COUNT };
static const char *const why_names[WHY__COUNT] = { "recent_write", "recent_full", "no_replica", "replica_failed" };

struct replica {
    struct pg_replicas *set;
    struct pg_pool *pool;
    unsigned index;
    enum replica_state logged;  /* the state last logged */
    bool checking;              /* a lag check in flight */
    bool check_failed;          /* the last one failed */
    bool in_recovery;
    int64_t lag_ms;             /* last measured; -1 unknown */
    uint64_t checked_ms;        /* when the last good check was sent; 0: none */
    uint64_t sent_ms;           /* when the one in flight was sent */
};

struct pg_replicas {
    uv_loop_t *loop;
    struct pg_pool *primary;
    const struct cfg_postgres *cfg;
    struct replica *r;
    unsigned n, next;           /* next: where the pick starts (round robin among equals) */
    uv_timer_t timer;
    bool freeing;
    struct recent recent;
    bool full_logged;
    uint64_t *m_target[2];      /* [0] primary, [1] replica */
    uint64_t *m_why[WHY__COUNT];
    uint64_t *m_full;
    int64_t *m_limit;
};

static uint64_t now_ms(const struct pg_replicas *s)
{
    return uv_now(s->loop);
}

uint64_t pg_replicas_window_ms(const struct cfg_postgres *cfg)
{
    return (uint64_t)cfg->max_replica_lag_ms + 2 * (uint64_t)cfg->ping_interval_ms + TRANSIT_SLACK_MS;
}

static enum replica_state state_of(const struct replica *rep, uint64_t now)
{
    const struct cfg_postgres *cfg = rep->set->cfg;
    if (!pg_pool_up(rep->pool))
        return REPLICA_DOWN;
    bool fresh = rep->checked_ms != 0 && now - rep->checked_ms <= 2 * (uint64_t)cfg->ping_interval_ms;
    if (!fresh)
        return rep->check_failed ? REPLICA_CHECK_FAILED : REPLICA_UNCHECKED;
    if (!rep->in_recovery)
        return REPLICA_NOT_STANDBY;
    if (rep->lag_ms < 0)
        return REPLICA_UNCHECKED;
    if (rep->lag_ms >= cfg->max_replica_lag_ms)
        return REPLICA_BEHIND;
    return REPLICA_OK;
}

/* Logs a change of state: "postgres replica used" / "... not used" with
 * the reason by name. */
static void evaluate(struct replica *rep)
{
    enum replica_state st = state_of(rep, now_ms(rep->set));
    if (st == rep->logged)
        return;
    const char *addr = pg_pool_addr(rep->pool);
    if (st == REPLICA_OK)
        log_info("postgres replica used", "replica=%u addr=%s lag_ms=%lld", rep->index, addr,
                 (long long)rep->lag_ms);
    else if (st == REPLICA_NOT_STANDBY)
        log_warn("postgres replica not used", "replica=%u addr=%s reason=%s detail=%s", rep->index, addr,
                 state_names[st], LOG_Q("pg_is_in_recovery() is false: promoted, or not a standby"));
    else
        log_warn("postgres replica not used", "replica=%u addr=%s reason=%s lag_ms=%lld max_replica_lag_ms=%lld",
                 rep->index, addr, state_names[st], (long long)rep->lag_ms,
                 (long long)rep->set->cfg->max_replica_lag_ms);
    rep->logged = st;
}

static void check_cb(void *ctx, const PGresult *res, int err)
{
    struct replica *rep = ctx;
    rep->checking = false;
    if (rep->set->freeing)
        return;
    if (err != 0 || PQntuples(res) != 1 || PQnfields(res) != 2) {
        if (!rep->check_failed && err != -ECONNRESET && err != -ECANCELED)
            log_warn("postgres replica lag check failed", "replica=%u addr=%s err=%d detail=%s", rep->index,
                     pg_pool_addr(rep->pool), err,
                     LOG_Q(res ? PQresultErrorMessage(res) : "no result"));
        rep->check_failed = true;
    } else {
        rep->check_failed = false;
        rep->in_recovery = PQgetvalue(res, 0, 0)[0] == 't';
        rep->lag_ms = PQgetisnull(res, 0, 1) ? -1 : strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        if (rep->lag_ms < -1)
            rep->lag_ms = 0; /* the replica's clock is behind its last commit's: caught up */
        rep->checked_ms = rep->sent_ms;
    }
    evaluate(rep);
}

static void check(struct replica *rep)
{
    if (rep->checking || !pg_pool_up(rep->pool))
        return;
    rep->sent_ms = now_ms(rep->set);
    if (pg_pool_exec_sql(rep->pool, LAG_SQL, check_cb, rep) == 0)
        rep->checking = true;
}

static void timer_cb(uv_timer_t *t)
{
    struct pg_replicas *s = t->data;
    for (unsigned i = 0; i < s->n; i++) {
        evaluate(&s->r[i]);
        check(&s->r[i]);
    }
}

/* --- metrics ----------------------------------------------------------------- */

static double gauge_lag(void *arg)
{
    const struct replica *rep = arg;
    return rep->lag_ms < 0 ? -1 : (double)rep->lag_ms / 1000.0;
}

static double gauge_eligible(void *arg)
{
    const struct replica *rep = arg;
    return state_of(rep, now_ms(rep->set)) == REPLICA_OK;
}

static double gauge_recent_bytes(void *arg)
{
    return (double)((struct pg_replicas *)arg)->recent.bytes;
}

static double gauge_recent_entries(void *arg)
{
    return recent_count(&((struct pg_replicas *)arg)->recent);
}

static void metrics_init(struct pg_replicas *s)
{
    const char *th = "Reads (by_ids, page_query) by where they ran, with [postgres] replicas.";
    s->m_target[0] = metrics_counter("batchd_pg_reads_total", "target=\"primary\"", th);
    s->m_target[1] = metrics_counter("batchd_pg_reads_total", "target=\"replica\"", th);
    metrics_counter_family("batchd_pg_primary_reads_total", "reason", why_names, WHY__COUNT,
                           "Reads sent to the primary: they name a key written recently (or the record of "
                           "recent writes is full), no replica was eligible, or a replica failed them.",
                           s->m_why);
    s->m_full = metrics_counter("batchd_pg_recent_writes_full_total", "",
                                "Writes not recorded because recent_writes_bytes was reached (every read then "
                                "goes to the primary for max_replica_lag_ms + 2 ping intervals + 1 s).");
    s->m_limit = metrics_gauge("batchd_pg_recent_writes_limit_bytes", "", "recent_writes_bytes.");
    metrics_gauge_fn("batchd_pg_recent_writes_bytes", "", "Bytes held by the record of recently written keys.",
                     gauge_recent_bytes, s);
    metrics_gauge_fn("batchd_pg_recent_writes_entries", "", "Keys in the record of recently written keys.",
                     gauge_recent_entries, s);
    char lb[48];
    for (unsigned i = 0; i < s->n; i++) {
        snprintf(lb, sizeof(lb), "replica=\"%u\"", i);
        metrics_gauge_fn("batchd_pg_replica_lag_seconds", lb,
                         "Replay lag the last check measured on the replica (-1: unknown).", gauge_lag, &s->r[i]);
        metrics_gauge_fn("batchd_pg_replica_eligible", lb,
                         "1 when the replica gets reads: up, in recovery, checked recently, under max_replica_lag_ms.",
                         gauge_eligible, &s->r[i]);
    }
}

/* --- API ---------------------------------------------------------------------- */

struct pg_replicas *pg_replicas_new(struct pg_pool *primary, uv_loop_t *loop, const struct cfg_postgres *cfg,
                                    int64_t slow_ms)
{
    struct pg_replicas *s = mem_calloc(1, sizeof(*s));
    s->loop = loop;
    s->primary = primary;
    s->cfg = cfg;
    s->n = cfg->replicas.n;
    s->r = mem_calloc(s->n, sizeof(*s->r));
    recent_init(&s->recent, (size_t)cfg->recent_writes_bytes, pg_replicas_window_ms(cfg));
    for (unsigned i = 0; i < s->n; i++) {
        struct replica *rep = &s->r[i];
        rep->set = s;
        rep->index = i;
        rep->lag_ms = -1;
        rep->logged = REPLICA_UNCHECKED; /* "not used" is logged when it goes down, not at start */
        rep->pool = pg_pool_new_replica(loop, cfg, i, slow_ms);
    }
    metrics_init(s);
    *s->m_limit = cfg->recent_writes_bytes;
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    uv_timer_start(&s->timer, timer_cb, (uint64_t)cfg->ping_interval_ms, (uint64_t)cfg->ping_interval_ms);
    return s;
}

void pg_replicas_configure(struct pg_replicas *s, const struct cfg_postgres *cfg, int64_t slow_ms)
{
    bool new_interval = cfg->ping_interval_ms != s->cfg->ping_interval_ms;
    s->cfg = cfg;
    recent_configure(&s->recent, (size_t)cfg->recent_writes_bytes, pg_replicas_window_ms(cfg));
    *s->m_limit = cfg->recent_writes_bytes;
    for (unsigned i = 0; i < s->n; i++)
        pg_pool_configure(s->r[i].pool, cfg, slow_ms);
    if (new_interval)
        uv_timer_start(&s->timer, timer_cb, (uint64_t)cfg->ping_interval_ms, (uint64_t)cfg->ping_interval_ms);
}

static void timer_closed_cb(uv_handle_t *h)
{
    struct pg_replicas *s = h->data;
    recent_deinit(&s->recent);
    free(s->r);
    free(s);
}

void pg_replicas_free(struct pg_replicas *s)
{
    s->freeing = true;
    /* Closing a pool completes its queries at once (check_cb sees freeing). */
    for (unsigned i = 0; i < s->n; i++)
        pg_pool_free(s->r[i].pool);
    uv_close((uv_handle_t *)&s->timer, timer_closed_cb);
}

void pg_replicas_prepare(struct pg_replicas *s, const char *sql, unsigned nparams, int id)
{
    for (unsigned i = 0; i < s->n; i++) {
        int rid = pg_pool_prepare_n(s->r[i].pool, sql, nparams);
        if (rid != id) { /* the replicas register exactly what the primary does, in order */
            log_error("postgres replica statement ids diverged", "replica=%u id=%d primary_id=%d", i, rid, id);
            abort();
        }
    }
}

struct pg_pool *pg_replicas_pick(struct pg_replicas *s, bool fresh)
{
    uint64_t now = now_ms(s);
    if (fresh) {
        (*s->m_why[recent_full(&s->recent, now) ? WHY_RECENT_FULL : WHY_RECENT_WRITE])++;
        return NULL;
    }
    struct replica *best = NULL;
    for (unsigned k = 0; k < s->n; k++) {
        struct replica *rep = &s->r[(s->next + k) % s->n];
        if (state_of(rep, now) != REPLICA_OK)
            continue;
        if (best == NULL || pg_pool_pending(rep->pool) < pg_pool_pending(best->pool))
            best = rep;
    }
    if (best == NULL) {
        (*s->m_why[WHY_NO_REPLICA])++;
        return NULL;
    }
    s->next = (best->index + 1) % s->n;
    return best->pool;
}

void pg_replicas_sent(struct pg_replicas *s, bool replica)
{
    (*s->m_target[replica])++;
}

void pg_replicas_fell_back(struct pg_replicas *s)
{
    (*s->m_why[WHY_REPLICA_FAILED])++;
}

void pg_replicas_note_write(struct pg_replicas *s, const char *key, size_t len)
{
    uint64_t now = now_ms(s);
    bool was_full = recent_full(&s->recent, now);
    if (recent_note(&s->recent, key, len, now) == 0)
        return;
    (*s->m_full)++;
    if (!was_full)
        log_warn("recent writes record full: every read goes to the primary until entries age out",
                 "recent_writes_bytes=%lld entries=%u window_ms=%llu", (long long)s->cfg->recent_writes_bytes,
                 recent_count(&s->recent), (unsigned long long)s->recent.window_ms);
}

bool pg_replicas_recent(struct pg_replicas *s, const char *key, size_t len)
{
    return recent_has(&s->recent, key, len, now_ms(s));
}
