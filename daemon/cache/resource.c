/*
 * resource: coalesced cache-aside reads. See resource.h.
 *
 * A flush takes every queued entry of one resource and sends its keys as
 * MGETs (one per max_batch_keys). The flight object waits for all of them,
 * gathers the misses, and sends those as by_ids executions (again split at
 * max_batch_keys): one of each per flush in the usual case. Entries loaded
 * from PostgreSQL stay joinable until their SET is acknowledged, so a reader
 * arriving in between neither queries again nor misses the cache.
 *
 * A missing row is cached as ABSENT_MARKER for negative_ttl seconds. The
 * marker starts with a NUL byte, so it can never be a JSON document.
 *
 * Invalidation and the race guard. A load whose PostgreSQL read began
 * before a write committed could cache the old row after the write's
 * invalidation. So an invalidation (PURGE, or a write through the proxy):
 *   - marks loads of that id in flight in this process as stale: they
 *     answer their readers but are not cached;
 *   - for a write-back already sent, deletes the key again once Redis has
 *     stored it, and only then reports done;
 *   - deletes the key and leaves a tombstone, batchd:inval:<key> = the
 *     invalidation's wall-clock ms, for query_timeout_ms + 5 s. Write-backs
 *     run WRITEBACK_SCRIPT, which skips a key whose tombstone is not older
 *     than the fill's start (minus CLOCK_SKEW_MS): the guard across batchd
 *     processes and hosts.
 */
#include "daemon/cache/resource.h"
#include "daemon/cache/resource_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/backend/pg_pool.h"
#include "daemon/backend/redis_pool.h"
#include "daemon/http/req.h"
#include "proto/batch.h"
#include "proto/ids.h"
#include "proto/jtext.h"
#include "proto/mem.h"
#include "proto/url.h"

static const double size_bounds[] = { 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000 };

/* --- helpers ---------------------------------------------------------------- */

void resource_key_of(const struct resource *res, const char *id, size_t len, struct buf *out)
{
    if (!res->key_split) {
        url_template_expand(res->cfg->key, "id", str_make(id, len), out);
        return;
    }
    buf_reserve(out, res->key_prefix.len + len + res->key_suffix.len);
    buf_append(out, res->key_prefix.p, res->key_prefix.len);
    buf_append(out, id, len);
    buf_append(out, res->key_suffix.p, res->key_suffix.len);
}

static void key_compile(struct resource *res)
{
    const char *k = res->cfg->key;
    const char *at = strstr(k, "{id}");
    res->key_split = at && strstr(at + 4, "{id}") == NULL;
    if (res->key_split) {
        res->key_prefix = str_make(k, (size_t)(at - k));
        res->key_suffix = str_cstr(at + 4);
    }
}

static uint32_t us_since(uint64_t start_ns)
{
    uint64_t us = (uv_hrtime() - start_ns) / 1000;
    return us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static void answer_all(struct batch_read *done)
{
    while (done) {
        struct batch_read *next = done->next_done;
        resource_answer((struct read *)done);
        done = next;
    }
}

static void queue_push(struct resource *res, struct batch_entry *e)
{
    e->next = NULL;
    *res->queue_tail = e;
    res->queue_tail = &e->next;
    res->n_queued++;
}

/* --- PostgreSQL ---------------------------------------------------------------------- */

static struct batch_entry *chunk_find(struct chunk *ch, const char *id, size_t len)
{
    struct batch_entry *e = batch_table_find(&ch->res->table, id, len);
    if (e && e->owner == ch)
        return e;
    for (unsigned i = 0; i < ch->n; i++) { /* removed from the table meanwhile */
        e = ch->entries[i];
        if (e->owner == ch && e->id_len == len && memcmp(e->id, id, len) == 0)
            return e;
    }
    return NULL;
}

static void db_cb(void *ctx, const PGresult *pgres, int err)
{
    struct chunk *ch = ctx;
    struct resource *res = ch->res;
    struct batch_read *done = NULL;
    uint32_t us = us_since(ch->start_ns);
    if (err != 0) {
        enum fail_kind kind = err == -EIO ? FAIL_QUERY
                            : err == -ECANCELED ? FAIL_SHUTDOWN
                                                : FAIL_DB_UNAVAILABLE;
        (*res->m_err[kind])++;
        if (err == -EIO)
            log_error("by_ids failed", "resource=%s err=%s", res->cfg->name,
                      LOG_Q(pgres ? PQresultErrorMessage(pgres) : "?"));
        for (unsigned i = 0; i < ch->n; i++) {
            struct batch_entry *e = ch->entries[i];
            e->db_us = us;
            batch_entry_resolve(e, BATCH_FAILED, kind, NULL, 0, &done);
            batch_table_remove(&res->table, e); /* a failed load is never cached */
        }
    } else {
        bool shape_ok = PQnfields(pgres) >= 2;
        int rows = shape_ok ? PQntuples(pgres) : 0;
        if (!shape_ok)
            log_error("by_ids must return (id, document)", "resource=%s columns=%d", res->cfg->name,
                      PQnfields(pgres));
        for (int i = 0; i < rows; i++) {
            if (PQgetisnull(pgres, i, 0))
                continue;
            const char *id = PQgetvalue(pgres, i, 0);
            struct batch_entry *e = chunk_find(ch, id, (size_t)PQgetlength(pgres, i, 0));
            if (e == NULL || e->state != BATCH_DB)
                continue; /* not asked for, or a duplicate row */
            e->db_us = us;
            const char *doc = PQgetvalue(pgres, i, 1);
            size_t len = (size_t)PQgetlength(pgres, i, 1);
            if (PQgetisnull(pgres, i, 1)) {
                batch_entry_resolve(e, BATCH_ABSENT, 0, NULL, 0, &done);
            } else if (!jtext_valid(doc, len)) {
                (*res->m_err[FAIL_DOCUMENT])++;
                log_warn("by_ids returned a document that is not JSON", "resource=%s id=%s",
                         res->cfg->name, LOG_Q(e->id));
                batch_entry_resolve(e, BATCH_FAILED, FAIL_DOCUMENT, NULL, 0, &done);
            } else {
                batch_entry_resolve(e, BATCH_FOUND, 0, doc, len, &done);
            }
        }
        for (unsigned i = 0; i < ch->n; i++) {
            struct batch_entry *e = ch->entries[i];
            if (e->state != BATCH_DB)
                continue;
            e->db_us = us;
            batch_entry_resolve(e, shape_ok ? BATCH_ABSENT : BATCH_FAILED, shape_ok ? 0 : FAIL_QUERY,
                                NULL, 0, &done);
        }
        for (unsigned i = 0; i < ch->n; i++)
            if (ch->entries[i]->state == BATCH_DONE && ch->entries[i]->result != BATCH_FAILED)
                near_fill(res, ch->entries[i], ch->track_gen);
        resource_write_back(res, ch);
        if (res->set->redis)
            redis_pool_flush(res->set->redis);
    }
    /* The chunk goes now, and malloc may hand its address to the very next
     * chunk. An entry outlives it (in the table until its write-back lands,
     * and in its readers' slots), so it must not keep that address as its
     * owner: chunk_find would take it for a member of the next chunk that
     * gets the address, give it that chunk's row for the same id (dropped:
     * it is resolved already), and the new chunk's own entry, left without
     * a row, would be answered as ABSENT: a 404 for a row that exists. */
    for (unsigned i = 0; i < ch->n; i++) {
        ch->entries[i]->owner = NULL;
        batch_entry_unref(ch->entries[i]);
    }
    free(ch);
    answer_all(done);
}

static void fail_entries(struct resource *res, struct batch_entry *list, enum fail_kind kind,
                         struct batch_read **done)
{
    while (list) {
        struct batch_entry *next = list->next;
        (*res->m_err[kind])++;
        batch_entry_resolve(list, BATCH_FAILED, kind, NULL, 0, done);
        batch_table_remove(&res->table, list);
        batch_entry_unref(list);
        list = next;
    }
}

/* The MGETs of a flush are all in: query the misses. */
static void flight_db(struct flight *f)
{
    struct resource *res = f->res;
    struct pg_pool *pg = res->set->pg;
    struct batch_read *done = NULL;
    struct batch_entry *e = f->misses;
    if (pg == NULL || !pg_pool_up(pg)) {
        fail_entries(res, e, FAIL_DB_UNAVAILABLE, &done);
        e = NULL;
    }
    while (e) {
        unsigned n = 0;
        for (struct batch_entry *x = e; x && n < (unsigned)res->cfg->max_batch_keys; x = x->next)
            n++;
        struct chunk *ch = mem_alloc(sizeof(*ch) + n * sizeof(ch->entries[0]));
        ch->flight = NULL;
        ch->res = res;
        ch->n = n;
        ch->start_ns = uv_hrtime();
        ch->start_wall_ms = resource_wall_ms();
        ch->track_gen = res->set->track_gen;
        struct buf param = BUF_INIT, key = BUF_INIT;
        /* Read-your-write with replicas: a chunk naming a key written
         * recently reads the primary. Otherwise a replica may answer, up to
         * the recent-write window behind: its rows are then not cached over
         * a tombstone younger than that window (any process's write). */
        bool fresh = false, tracked = pg_pool_tracks_writes(pg);
        for (unsigned i = 0; i < n; i++) {
            struct batch_entry *next = e->next;
            e->next = NULL;
            e->state = BATCH_DB;
            e->owner = ch;
            ch->entries[i] = e; /* takes over the flight's reference */
            ids_pg_array_add(&param, e->id, e->id_len);
            if (tracked && !fresh) {
                buf_reset(&key);
                resource_key_of(res, e->id, e->id_len, &key);
                fresh = pg_pool_written_recently(pg, key.data, key.len);
            }
            e = next;
        }
        buf_deinit(&key);
        if (tracked && !fresh)
            ch->start_wall_ms -= pg_pool_recent_window_ms(&res->set->cfg->postgres);
        ids_pg_array_end(&param);
        metrics_observe(res->m_query_ids, n);
        const char *value = param.data;
        size_t value_len = param.len;
        int rc = pg_pool_read(pg, res->stmt, 1, &value, &value_len, n, fresh, db_cb, ch);
        if (rc == 0) {
            (*res->m_pg_queries)++;
        } else {
            for (unsigned i = 0; i < n; i++) {
                ch->entries[i]->owner = NULL; /* ch is freed below (see db_cb) */
                ch->entries[i]->next = i + 1 < n ? ch->entries[i + 1] : NULL;
            }
            fail_entries(res, ch->entries[0], rc == -EBUSY ? FAIL_BUSY : FAIL_DB_UNAVAILABLE, &done);
            free(ch);
        }
        buf_deinit(&param);
    }
    free(f);
    answer_all(done);
}

/* --- Redis ------------------------------------------------------------------------------ */

static void add_miss(struct flight *f, struct batch_entry *e)
{
    e->next = f->misses;
    f->misses = e;
}

static void mget_cb(void *ctx, const redisReply *reply, int err)
{
    struct chunk *ch = ctx;
    struct flight *f = ch->flight;
    struct resource *res = f->res;
    struct batch_read *done = NULL;
    uint32_t us = us_since(ch->start_ns);
    bool ok = err == 0 && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == ch->n;
    if (!ok && !res->set->freeing) /* refused by a busy Redis: shed, not a miss for PostgreSQL */
        *(err == -EBUSY ? res->m_err[FAIL_BUSY] : res->m_degraded) += ch->n;
    for (unsigned i = 0; i < ch->n; i++) {
        struct batch_entry *e = ch->entries[i];
        e->cache_us = us;
        if (e->state != BATCH_CACHE) {
            batch_entry_unref(e);
            continue;
        }
        const redisReply *el = ok ? reply->element[i] : NULL;
        if (el && el->type == REDIS_REPLY_STRING) {
            if (el->len == ABSENT_LEN && memcmp(el->str, ABSENT_MARKER, ABSENT_LEN) == 0) {
                e->from_cache = true;
                batch_entry_resolve(e, BATCH_ABSENT, 0, NULL, 0, &done);
            } else if (jtext_valid_cached(el->str, el->len)) {
                e->from_cache = true;
                /* The entry keeps the reply alive instead of copying it. */
                batch_entry_resolve_borrowed(e, el->str, el->len, redis_reply_release,
                                             redis_reply_retain(reply), &done);
            } else {
                (*res->m_invalid_cached)++; /* heal it from PostgreSQL */
            }
        }
        if (err == -EBUSY)
            batch_entry_resolve(e, BATCH_FAILED, FAIL_BUSY, NULL, 0, &done);
        else if (e->state == BATCH_DONE)
            near_fill(res, e, ch->track_gen);
        if (e->state == BATCH_DONE) {
            batch_table_remove(&res->table, e);
            batch_entry_unref(e);
        } else {
            add_miss(f, e); /* the flight takes the chunk's reference */
        }
    }
    free(ch);
    answer_all(done);
    if (--f->outstanding == 0)
        flight_db(f);
}

static void resource_flush(struct resource *res)
{
    struct redis_pool *redis = res->set->redis;
    struct batch_entry *e = res->queue_head;
    res->queue_head = NULL;
    res->queue_tail = &res->queue_head;
    res->n_queued = 0;
    if (e == NULL)
        return;
    struct flight *f = mem_calloc(1, sizeof(*f));
    f->res = res;
    f->outstanding = 1; /* held until every MGET is sent */
    bool cache = redis != NULL && redis_pool_up(redis);
    while (e) {
        if (!cache) {
            struct batch_entry *next = e->next;
            if (redis)
                (*res->m_degraded)++;
            batch_entry_ref(e);
            add_miss(f, e);
            e = next;
            continue;
        }
        unsigned n = 0;
        for (struct batch_entry *x = e; x && n < (unsigned)res->cfg->max_batch_keys; x = x->next)
            n++;
        struct chunk *ch = mem_alloc(sizeof(*ch) + n * sizeof(ch->entries[0]));
        ch->flight = f;
        ch->res = res;
        ch->n = n;
        ch->start_ns = uv_hrtime();
        ch->track_gen = res->set->track_gen;
        /* Scratch space reused from flush to flush (one loop, one thread). */
        static struct buf keys;
        static size_t *offs, *lens, cap;
        static const char **argv;
        if (cap < n + 1) {
            cap = n + 1;
            offs = mem_realloc(offs, cap * sizeof(*offs));
            lens = mem_realloc(lens, cap * sizeof(*lens));
            argv = mem_realloc(argv, cap * sizeof(*argv));
        }
        buf_reset(&keys);
        for (unsigned i = 0; i < n; i++) {
            struct batch_entry *next = e->next;
            e->next = NULL;
            e->state = BATCH_CACHE;
            batch_entry_ref(e);
            ch->entries[i] = e;
            offs[i] = keys.len;
            resource_key_of(res, e->id, e->id_len, &keys);
            lens[i + 1] = keys.len - offs[i];
            e = next;
        }
        argv[0] = "MGET";
        lens[0] = 4;
        for (unsigned i = 0; i < n; i++)
            argv[i + 1] = keys.data + offs[i];
        metrics_observe(res->m_mget_keys, n);
        int rc = redis_pool_command(redis, mget_cb, ch, (int)n + 1, argv, lens);
        f->outstanding += rc == 0 || rc == -EBUSY; /* a refused chunk is answered now, by mget_cb */
        if (rc == -EBUSY) {
            mget_cb(ch, NULL, rc);
        } else if (rc != 0) {
            (*res->m_degraded) += n;
            for (unsigned i = 0; i < n; i++)
                add_miss(f, ch->entries[i]);
            free(ch);
        }
    }
    if (cache)
        redis_pool_flush(redis);
    if (--f->outstanding == 0)
        flight_db(f);
}

static void check_cb(uv_check_t *h)
{
    struct resource_set *s = h->data;
    near_answer_deferred(s); /* first: a restarted read queues its ids for the flush below */
    for (unsigned i = 0; i < s->n; i++) {
        struct resource *res = s->res[i];
        if (res->n_queued && res->cfg->batch_window_us == 0)
            resource_flush(res);
    }
}

static void window_cb(uv_timer_t *t)
{
    struct resource *res = t->data;
    res->window_armed = false;
    resource_flush(res);
}

/* --- requests ------------------------------------------------------------------------------- */

int resource_read_begin(struct resource *res, struct read *rd, const str_t *ids, unsigned n)
{
    rd->res = res;
    unsigned local = near_lookup(res, rd, ids, n);
    if (local == n && n > 0) {
        /* All in the near cache: no batch entry, no allocation. */
        batch_read_init_none(&rd->rd, n);
        near_defer(rd);
        return 0;
    }
    /* Checked on arrival: one read may take the count past the limit by at
     * most its own ids, and ids it shares with reads in flight add nothing. */
    if (batch_table_count(&res->table) >= (uint64_t)res->cfg->max_ids_in_flight) {
        near_read_release(rd);
        (*res->m_busy)++;
        return -EBUSY;
    }
    batch_read_init(&rd->rd, n);
    for (unsigned i = 0; i < n; i++) {
        if (local && rd->local[i])
            continue;
        bool created;
        struct batch_entry *e = batch_table_get(&res->table, ids[i].p, ids[i].len, &created);
        if (created)
            queue_push(res, e);
        else
            (*res->m_joins)++;
        batch_read_set(&rd->rd, i, e);
    }
    if (rd->rd.pending == 0) {
        if (local)
            near_defer(rd);
        else
            resource_answer(rd);
        return 0;
    }
    if (res->cfg->batch_window_us > 0 && !res->window_armed && res->n_queued) {
        res->window_armed = true;
        uv_timer_start(&res->window, window_cb, (uint64_t)(res->cfg->batch_window_us + 999) / 1000, 0);
    }
    return 0;
}

void resource_start_read(struct resource *res, struct req *r, const str_t *ids, unsigned n, bool single)
{
    struct read *rd = resource_read_get();
    rd->r = r;
    rd->single = single;
    if (resource_read_begin(res, rd, ids, n) != 0) {
        resource_read_put(rd);
        req_add_header(r, "Retry-After", "1");
        req_error(r, 503, "resource_busy");
    }
}

void resource_fetch(struct resource *res, const str_t *ids, unsigned n, resource_fetch_fn cb, void *ctx)
{
    struct read *rd = resource_read_get();
    rd->fetch_cb = cb;
    rd->fetch_ctx = ctx;
    if (resource_read_begin(res, rd, ids, n) != 0) {
        resource_read_put(rd);
        cb(ctx, NULL, 0, 503);
    }
}

/* --- set ------------------------------------------------------------------------------------------- */

static double gauge_in_flight(void *arg)
{
    return batch_table_count(&((struct resource *)arg)->table);
}

static double gauge_writebacks(void *arg)
{
    return ((struct resource *)arg)->n_wbs;
}

static void resource_metrics(struct resource *res)
{
    char l[160];
    const char *n = res->cfg->name;
    const char *h = "Ids answered, by where the answer came from: hit (Redis), absent (cached as missing), miss (PostgreSQL).";
    const struct { const char *result; uint64_t **slot; } results[] = {
        { "hit", &res->m_hit }, { "miss", &res->m_miss }, { "absent", &res->m_absent },
    };
    for (size_t i = 0; i < sizeof(results) / sizeof(results[0]); i++) {
        snprintf(l, sizeof(l), "resource=\"%s\",result=\"%s\"", n, results[i].result);
        *results[i].slot = metrics_counter("batchd_cache_results_total", l, h);
    }
    snprintf(l, sizeof(l), "resource=\"%s\"", n);
    res->m_pg_queries = metrics_counter("batchd_pg_queries_total", l, "by_ids executions.");
    res->m_degraded = metrics_counter("batchd_cache_degraded_total", l,
                                      "Ids read from PostgreSQL without asking Redis, because Redis was unavailable.");
    res->m_joins = metrics_counter("batchd_singleflight_joins_total", l,
                                   "Ids that joined a load already in flight instead of starting one.");
    res->m_writebacks = metrics_counter("batchd_cache_writebacks_total", l,
                                        "SETs that cache a PostgreSQL result (found or absent).");
    res->m_inval_unjoined = metrics_counter("batchd_invalidation_unjoined_total", l,
                                            "MGETs in flight when an invalidation of one of their ids completed: "
                                            "readers arriving later started a fresh read instead of joining them.");
    metrics_gauge_fn("batchd_batch_ids_in_flight", l,
                     "Distinct ids being read from Redis or PostgreSQL now (each shared by all its readers).",
                     gauge_in_flight, res);
    metrics_gauge_fn("batchd_cache_writebacks_in_flight", l, "Write-back scripts sent to Redis and not answered yet.",
                     gauge_writebacks, res);
    res->m_mget_keys = metrics_histogram("batchd_mget_keys", l, "Keys per MGET.", size_bounds,
                                         sizeof(size_bounds) / sizeof(double));
    res->m_query_ids = metrics_histogram("batchd_by_ids_ids", l, "Ids per by_ids execution.",
                                         size_bounds, sizeof(size_bounds) / sizeof(double));
    res->m_busy = metrics_counter("batchd_resource_busy_total", l,
                                  "Reads answered 503 resource_busy: max_ids_in_flight ids were already queued or being read.");
    near_metrics(res);
    res->m_not_owner = metrics_counter("batchd_resource_not_owner_total", l,
                                       "Documents answered as not found (null in batches) because they belong to someone else (access = owner).");
    const char *eh = "Read problems: cached values that were not JSON (healed), PostgreSQL unavailable, query errors, bad documents, "
                     "a backend over max_pending, shutdown.";
    snprintf(l, sizeof(l), "resource=\"%s\",kind=\"invalid_cached\"", n);
    res->m_invalid_cached = metrics_counter("batchd_resource_errors_total", l, eh);
#define X(name, label)                                                                  \
    snprintf(l, sizeof(l), "resource=\"%s\",kind=\"" label "\"", n);                    \
    res->m_err[FAIL_##name] = metrics_counter("batchd_resource_errors_total", l, eh);
    FAIL_KINDS(X)
#undef X
#define X(name, label)                                                                  \
    snprintf(l, sizeof(l), "resource=\"%s\",kind=\"" label "\"", n);                    \
    res->m_requests[READ_##name] = metrics_counter("batchd_resource_requests_total", l,    \
                                                   "Read requests, by form: /{id}, ?ids=, _batch.");
    READ_FORMS(X)
#undef X
}

static void set_handle_closed(struct resource_set *s)
{
    if (--s->handles_open == 0) {
        for (unsigned i = 0; i < s->n; i++) {
            config_unref(s->res[i]->cfg->owner);
            free(s->res[i]);
        }
        free(s->res);
        free(s);
    }
}

static void check_closed_cb(uv_handle_t *h)
{
    set_handle_closed(h->data);
}

static void window_closed_cb(uv_handle_t *h)
{
    set_handle_closed(((struct resource *)h->data)->set);
}

static void resource_add(struct resource_set *s, const struct cfg_resource *rc)
{
    struct resource *res = mem_calloc(1, sizeof(*res));
    res->set = s;
    res->cfg = rc;
    config_ref(rc->owner);
    res->queue_tail = &res->queue_head;
    LIST_INIT(&res->wbs);
    key_compile(res);
    batch_table_init(&res->table);
    res->stmt = s->pg ? pg_pool_prepare(s->pg, rc->by_ids) : -1;
    uv_timer_init(s->loop, &res->window);
    res->window.data = res;
    uv_unref((uv_handle_t *)&res->window);
    s->handles_open++;
    resource_metrics(res);
    near_configure(res, false);
    if (s->redis == NULL)
        log_warn("resource has no cache", "resource=%s hint=\"add a [redis] section\"", rc->name);
    s->res = mem_realloc(s->res, (s->n + 1) * sizeof(*s->res));
    s->res[s->n++] = res;
}

struct resource_set *resource_set_new(uv_loop_t *loop, const struct config *cfg,
                                      struct redis_pool *redis, struct pg_pool *pg)
{
    struct resource_set *s = mem_calloc(1, sizeof(*s));
    s->loop = loop;
    s->cfg = cfg;
    s->redis = redis;
    s->pg = pg;
    for (unsigned i = 0; i < cfg->n_resources; i++)
        resource_add(s, &cfg->resources[i]);
    uv_check_init(loop, &s->check);
    s->check.data = s;
    s->handles_open++;
    uv_check_start(&s->check, check_cb);
    uv_unref((uv_handle_t *)&s->check);
    s->local_tail = &s->local_head;
    uv_idle_init(loop, &s->idle);
    s->idle.data = s;
    s->handles_open++;
    uv_unref((uv_handle_t *)&s->idle);
    near_track_apply(s);
    return s;
}

void resource_set_reconfigure(struct resource_set *s, const struct config *cfg)
{
    s->cfg = cfg;
    for (unsigned i = 0; i < s->n; i++)
        s->res[i]->retired = true;
    for (unsigned k = 0; k < cfg->n_resources; k++) {
        const struct cfg_resource *rc = &cfg->resources[k];
        struct resource *res = NULL;
        for (unsigned i = 0; i < s->n && res == NULL; i++)
            if (strcmp(s->res[i]->cfg->name, rc->name) == 0)
                res = s->res[i];
        if (res == NULL) {
            resource_add(s, rc);
            log_info("resource added", "resource=%s path=%s", rc->name, rc->path);
            continue;
        }
        /* Same name: new TTLs, limits, key and statement from here on;
         * work in flight finishes with what it started with. */
        bool new_sql = strcmp(res->cfg->by_ids, rc->by_ids) != 0;
        /* What the near cache holds names keys and owners the old way. */
        bool new_key = strcmp(res->cfg->key, rc->key) != 0 || strcmp(res->cfg->owner_field, rc->owner_field) != 0;
        config_ref(rc->owner);
        config_unref(res->cfg->owner);
        res->cfg = rc;
        res->retired = false;
        key_compile(res);
        if (new_sql && s->pg)
            res->stmt = pg_pool_prepare(s->pg, rc->by_ids);
        near_configure(res, new_key);
    }
    for (unsigned i = 0; i < s->n; i++) {
        if (s->res[i]->retired) {
            log_info("resource removed", "resource=%s", s->res[i]->cfg->name);
            near_configure(s->res[i], false);
        }
    }
    near_track_apply(s);
}

const char *resource_set_not_ready(const struct resource_set *s)
{
    if (s->n == 0)
        return NULL;
    if ((s->pg && pg_pool_up(s->pg)) || (s->redis && redis_pool_up(s->redis)))
        return NULL;
    return "no_backend";
}

void resource_set_free(struct resource_set *s)
{
    if (s == NULL)
        return;
    s->freeing = true;
    near_answer_deferred(s);
    if (s->redis)
        redis_pool_track(s->redis, NULL, 0, NULL, NULL); /* no more reports: the set goes */
    for (unsigned i = 0; i < s->n; i++) {
        struct resource *res = s->res[i];
        struct batch_read *done = NULL;
        struct batch_entry *e = res->queue_head;
        res->queue_head = NULL;
        res->queue_tail = &res->queue_head;
        while (e) {
            struct batch_entry *next = e->next;
            batch_entry_resolve(e, BATCH_FAILED, FAIL_SHUTDOWN, NULL, 0, &done);
            e = next;
        }
        answer_all(done);
        if (res->near_on)
            near_deinit(&res->near);
        res->near_on = false;
        batch_table_deinit(&res->table);
        uv_close((uv_handle_t *)&res->window, window_closed_cb);
    }
    uv_close((uv_handle_t *)&s->check, check_closed_cb);
    uv_close((uv_handle_t *)&s->idle, check_closed_cb);
}
