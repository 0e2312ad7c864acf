/*
 * near_track: the near cache's side of the read path, and what keeps it
 * coherent with Redis.
 *
 *   read ──> near_lookup: every id found locally? ──yes──> near_defer ──(end of the
 *      │                                                    loop iteration)──> answer
 *      └─ the missing ids ──> the coalesced MGET / by_ids path (resource.c)
 *                               └─ near_fill: what they bring is kept, when it may be
 *
 *   Redis tracking (redis_tracking.c) ──> track_cb:
 *      UP      trust from here on (the caches are empty)
 *      KEY     drop that id's entry; a load of it in flight is not kept (no_near)
 *      FLUSH   drop everything
 *      DOWN    drop everything and bypass the caches until the next UP
 *
 * Two races, and how they are closed:
 *   - A load sent before a change may answer after it: an invalidation that
 *     arrives while the load is in flight marks its entry no_near, and one
 *     that arrives after it finds and drops what it stored. A load sent
 *     while tracking was down, or before a flush, carries an older
 *     track_gen and is not kept at all.
 *   - A read and an invalidation read in the same loop iteration: local
 *     answers wait for the check phase, which runs after every socket of
 *     the iteration was read, and an entry dropped by then restarts the
 *     read on the ordinary path instead of being served.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/backend/redis_pool.h"
#include "daemon/cache/resource_int.h"
#include "daemon/http/req.h"
#include "daemon/log.h"
#include "proto/mem.h"

/* --- coherence ----------------------------------------------------------------- */

static void clear_all(struct resource_set *s, enum near_drop why)
{
    for (unsigned i = 0; i < s->n; i++)
        if (s->res[i]->near_on)
            near_clear(&s->res[i]->near, why);
}

static bool id_of_key(const struct resource *res, const char *key, size_t len, str_t *id)
{
    size_t pl = res->key_prefix.len, sl = res->key_suffix.len;
    if (len < pl + sl || memcmp(key, res->key_prefix.p, pl) != 0 || memcmp(key + len - sl, res->key_suffix.p, sl) != 0)
        return false;
    *id = str_make(key + pl, len - pl - sl);
    return true;
}

static void track_cb(void *arg, enum redis_track_event ev, const char *key, size_t len)
{
    struct resource_set *s = arg;
    switch (ev) {
    case REDIS_TRACK_UP:
        s->track_up = true;
        s->track_gen++;
        return;
    case REDIS_TRACK_DOWN:
        s->track_up = false;
        s->track_gen++;
        clear_all(s, NEAR_DROP_TRACKING);
        return;
    case REDIS_TRACK_FLUSH:
        s->track_gen++;
        clear_all(s, NEAR_DROP_FLUSH);
        return;
    case REDIS_TRACK_KEY:
        near_drop_key(s, key, len, NEAR_DROP_REDIS);
        return;
    }
}

void near_drop_key(struct resource_set *s, const char *key, size_t len, enum near_drop why)
{
    for (unsigned i = 0; i < s->n; i++) {
        struct resource *res = s->res[i];
        str_t id;
        if (!res->near_on || !id_of_key(res, key, len, &id))
            continue;
        near_drop(&res->near, id.p, id.len, why);
        struct batch_entry *e = batch_table_find(&res->table, id.p, id.len);
        if (e && e->state != BATCH_QUEUED) /* a queued one has not read anything yet */
            e->no_near = true;
    }
}

static int by_length(const void *a, const void *b)
{
    size_t la = strlen(*(char *const *)a), lb = strlen(*(char *const *)b);
    return la < lb ? -1 : la > lb ? 1 : strcmp(*(char *const *)a, *(char *const *)b);
}

void near_track_apply(struct resource_set *s)
{
    if (s->redis == NULL)
        return;
    char **pre = mem_alloc((s->n + 1) * sizeof(char *));
    unsigned n = 0;
    for (unsigned i = 0; i < s->n; i++)
        if (s->res[i]->near_on)
            pre[n++] = mem_strndup(s->res[i]->key_prefix.p, s->res[i]->key_prefix.len);
    /* Redis refuses overlapping prefixes; the shortest of each family
     * covers the others. */
    qsort(pre, n, sizeof(char *), by_length);
    unsigned k = 0;
    for (unsigned i = 0; i < n; i++) {
        bool covered = false;
        for (unsigned j = 0; j < k && !covered; j++)
            covered = strncmp(pre[i], pre[j], strlen(pre[j])) == 0;
        if (covered)
            free(pre[i]);
        else
            pre[k++] = pre[i];
    }
    redis_pool_track(s->redis, (const char *const *)pre, k, track_cb, s);
    for (unsigned i = 0; i < k; i++)
        free(pre[i]);
    free(pre);
}

/* --- reads ---------------------------------------------------------------------- */

unsigned near_lookup(struct resource *res, struct read *rd, const str_t *ids, unsigned n)
{
    rd->n_local = 0;
    rd->local = NULL;
    if (!res->near_on || rd->no_near || n == 0)
        return 0;
    if (!res->set->track_up) {
        *res->m_local_bypass += n;
        return 0;
    }
    uint64_t now = uv_now(res->set->loop);
    unsigned found = 0;
    for (unsigned i = 0; i < n; i++) {
        struct near_entry *e = near_find(&res->near, ids[i].p, ids[i].len, now);
        if (e == NULL)
            continue;
        if (rd->local == NULL) {
            if (n == 1) {
                rd->local = &rd->one_local;
            } else {
                if (rd->local_cap < n) {
                    free(rd->local_buf);
                    rd->local_cap = n < 16 ? 16 : n;
                    rd->local_buf = mem_alloc(rd->local_cap * sizeof(*rd->local_buf));
                }
                rd->local = rd->local_buf;
            }
            memset(rd->local, 0, n * sizeof(*rd->local));
        }
        near_entry_ref(e);
        rd->local[i] = e;
        found++;
    }
    *res->m_local_hit += found;
    *res->m_local_miss += n - found;
    rd->n_local = found;
    return found;
}

void near_read_release(struct read *rd)
{
    for (unsigned i = 0; rd->local && i < rd->rd.n; i++)
        if (rd->local[i])
            near_entry_release(rd->local[i]);
    rd->local = NULL;
    rd->n_local = 0;
}

/* Only there to keep the loop from blocking in poll while reads wait. */
static void idle_cb(uv_idle_t *h)
{
    (void)h;
}

void near_defer(struct read *rd)
{
    struct resource_set *s = rd->res->set;
    rd->next_local = NULL;
    *s->local_tail = rd;
    s->local_tail = &rd->next_local;
    if (!uv_is_active((uv_handle_t *)&s->idle))
        uv_idle_start(&s->idle, idle_cb);
}

void near_answer_deferred(struct resource_set *s)
{
    struct read *rd;
    while ((rd = s->local_head) != NULL) {
        s->local_head = rd->next_local;
        if (s->local_head == NULL)
            s->local_tail = &s->local_head;
        resource_answer(rd);
    }
    uv_idle_stop(&s->idle);
}

/* Some local slot was dropped after it was found: that read starts over
 * on the ordinary path for all its ids (a few times at most: then it
 * leaves the near cache out). */
static void restart(struct read *rd)
{
    unsigned n = rd->rd.n;
    str_t stack[64];
    str_t *ids = n <= 64 ? stack : mem_alloc(n * sizeof(*ids));
    for (unsigned i = 0; i < n; i++) {
        const struct near_entry *l = rd->local ? rd->local[i] : NULL;
        const struct batch_entry *e = l ? NULL : rd->rd.slots[i];
        ids[i] = l ? str_make(near_entry_id(l), l->id_len) : str_make(e->id, e->id_len);
    }
    (*rd->res->m_local_restarts)++;
    struct read *nr = resource_read_get();
    nr->r = rd->r;
    nr->single = rd->single;
    nr->fetch_cb = rd->fetch_cb;
    nr->fetch_ctx = rd->fetch_ctx;
    nr->restarts = (uint8_t)(rd->restarts + 1);
    nr->no_near = nr->restarts >= 3;
    struct resource *res = rd->res;
    int rc = resource_read_begin(res, nr, ids, n); /* ids point into rd's entries: rd goes after */
    near_read_release(rd);
    batch_read_release(&rd->rd);
    resource_read_put(rd);
    if (ids != stack)
        free(ids);
    if (rc != 0) {
        resource_fetch_fn cb = nr->fetch_cb;
        void *ctx = nr->fetch_ctx;
        struct req *r = nr->r;
        resource_read_put(nr);
        if (cb) {
            cb(ctx, NULL, 0, 503);
        } else {
            req_add_header(r, "Retry-After", "1");
            req_error(r, 503, "resource_busy");
        }
    }
}

bool near_read_current(struct read *rd)
{
    for (unsigned i = 0; rd->n_local && i < rd->rd.n; i++) {
        if (rd->local[i] && !rd->local[i]->in_table) {
            restart(rd);
            return false;
        }
    }
    return true;
}

void near_fill(struct resource *res, struct batch_entry *e, uint32_t gen)
{
    struct resource_set *s = res->set;
    if (!res->near_on || !s->track_up || gen != s->track_gen || e->stale || e->no_near || !e->in_table)
        return;
    const struct cfg_resource *cfg = res->cfg;
    uint64_t now = uv_now(s->loop);
    const char *owner = cfg->owner_field[0] ? cfg->owner_field : NULL;
    if (e->result == BATCH_FOUND)
        near_put(&res->near, e->id, e->id_len, e->doc, e->doc_len, now, (uint64_t)cfg->ttl * 1000, owner);
    else if (e->result == BATCH_ABSENT && cfg->negative_ttl > 0)
        near_put(&res->near, e->id, e->id_len, NULL, 0, now, (uint64_t)cfg->negative_ttl * 1000, NULL);
}

/* --- configuration and metrics ------------------------------------------------------- */

void near_configure(struct resource *res, bool key_changed)
{
    size_t want = res->retired ? 0 : (size_t)res->cfg->local_cache_bytes;
    if ((want != 0) != res->near_on || key_changed)
        res->set->track_gen++; /* loads in flight were sent for the old arrangement */
    if (res->near_on && (want == 0 || key_changed)) {
        near_deinit(&res->near);
        res->near_on = false;
    }
    if (want && !res->near_on) {
        near_init(&res->near, want, res->m_local_evictions, res->m_local_drops);
        res->near_on = true;
    } else if (want) {
        near_set_limit(&res->near, want);
    }
}

static double gauge_bytes(void *arg)
{
    const struct resource *res = arg;
    return res->near_on ? (double)res->near.bytes : 0;
}

static double gauge_entries(void *arg)
{
    const struct resource *res = arg;
    return res->near_on ? res->near.ht.count : 0;
}

static double gauge_limit(void *arg)
{
    const struct resource *res = arg;
    return res->near_on ? (double)res->near.limit : 0;
}

void near_metrics(struct resource *res)
{
    char l[200];
    const char *n = res->cfg->name;
    snprintf(l, sizeof(l), "resource=\"%s\"", n);
    metrics_gauge_fn("batchd_local_cache_bytes", l,
                     "Bytes the near cache holds, bookkeeping included (entries as allocated, and its table).",
                     gauge_bytes, res);
    metrics_gauge_fn("batchd_local_cache_entries", l, "Documents (and absent markers) in the near cache.",
                     gauge_entries, res);
    metrics_gauge_fn("batchd_local_cache_limit_bytes", l, "local_cache_bytes: the near cache's bound (0: off).",
                     gauge_limit, res);
    res->m_local_restarts = metrics_counter("batchd_local_cache_restarts_total", l,
                                            "Reads found in the near cache whose entry was invalidated before the answer went "
                                            "out: they were read again from Redis.");
    res->m_local_evictions = metrics_counter("batchd_local_cache_evictions_total", l,
                                             "Entries evicted to stay within local_cache_bytes.");
    const char *h = "Ids looked up in the near cache: hit, miss, or bypass (Redis tracking not confirmed: not trusted).";
    const struct { const char *result; uint64_t **slot; } results[] = {
        { "hit", &res->m_local_hit }, { "miss", &res->m_local_miss }, { "bypass", &res->m_local_bypass },
    };
    for (size_t i = 0; i < sizeof(results) / sizeof(results[0]); i++) {
        snprintf(l, sizeof(l), "resource=\"%s\",result=\"%s\"", n, results[i].result);
        *results[i].slot = metrics_counter("batchd_local_cache_results_total", l, h);
    }
    h = "Near-cache entries dropped: redis (an invalidation message), write (a write through batchd), "
        "flush (FLUSHALL/FLUSHDB), tracking (tracking lost), config (a reload).";
#define X(name, label)                                                                        \
    snprintf(l, sizeof(l), "resource=\"%s\",source=\"" label "\"", n);                        \
    res->m_local_drops[NEAR_DROP_##name] = metrics_counter("batchd_local_cache_invalidations_total", l, h);
    NEAR_DROPS(X)
#undef X
}
