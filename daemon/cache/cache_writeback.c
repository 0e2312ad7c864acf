/*
 * cache_writeback: the write side of the cache. See resource.c's header for
 * the race guard this implements:
 *
 *   by_ids rows ──> resource_write_back ──> WRITEBACK_SCRIPT (skips tombstoned keys)
 *   a write / PURGE ──> resource_invalidate ──> INVALIDATE_SCRIPT (DEL + tombstone)
 *                                          └──> a write-back in flight: DEL again once it lands
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/backend/pg_pool.h"
#include "daemon/backend/redis_pool.h"
#include "daemon/cache/resource_int.h"
#include "proto/cluster.h"
#include "proto/mem.h"

static const char WRITEBACK_SCRIPT[] =
    "local n = #KEYS / 2\n"
    "local start = tonumber(ARGV[1])\n"
    "local written = 0\n"
    "for i = 1, n do\n"
    "  local t = redis.call('GET', KEYS[n + i])\n"
    "  if not t or tonumber(t) < start then\n"
    "    redis.call('SET', KEYS[i], ARGV[2 * i], 'EX', ARGV[2 * i + 1])\n"
    "    written = written + 1\n"
    "  end\n"
    "end\n"
    "return written\n";

static const char INVALIDATE_SCRIPT[] =
    "redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])\n"
    "return redis.call('DEL', KEYS[1])\n";

static struct redis_script writeback_script = { WRITEBACK_SCRIPT, "" };
static struct redis_script invalidate_script = { INVALIDATE_SCRIPT, "" };

uint64_t resource_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* --- invalidation ------------------------------------------------------------------- */

static void inval_part_done(struct invalidation *op, int err)
{
    if (err < 0 && op->err == 0)
        op->err = err;
    if (--op->pending == 0) {
        /* An MGET of this id sent while the delete was on its way may have
         * read the old value. Its readers asked before the write was
         * answered and may have it; nobody who asks from now on may join
         * it. (A PostgreSQL load started after the invalidation began reads
         * the committed write, and stays joinable.) */
        struct resource *res = op->res;
        struct batch_entry *e = res->set->freeing ? NULL : batch_table_find(&res->table, op->id, op->id_len);
        if (e && e->state == BATCH_CACHE) {
            e->no_near = true;
            batch_table_remove(&res->table, e);
            (*res->m_inval_unjoined)++;
        }
        if (op->cb)
            op->cb(op->ctx, op->err);
        free(op);
    }
}

static void inval_script_cb(void *ctx, const redisReply *reply, int err)
{
    if (err == 0 && reply && reply->type == REDIS_REPLY_ERROR)
        err = -EIO;
    inval_part_done(ctx, err);
}

/* Deletes the key and leaves the tombstone; counts as one part of op. */
static int send_invalidate(struct resource *res, const char *id, size_t len, struct invalidation *op)
{
    struct buf key = BUF_INIT, tomb = BUF_INIT;
    resource_key_of(res, id, len, &key);
    resource_tomb_key(key.data, key.len, &tomb);
    char now[24], ttl[24];
    snprintf(now, sizeof(now), "%llu", (unsigned long long)resource_wall_ms());
    /* With replicas a tombstone also outlives the recent-write window:
     * replica reads are not cached over a younger one (resource.c). */
    const struct cfg_postgres *pgc = &res->set->cfg->postgres;
    uint64_t life = (uint64_t)pgc->query_timeout_ms + TOMBSTONE_EXTRA_MS;
    uint64_t window = pg_pool_recent_window_ms(pgc);
    snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)(window + TOMBSTONE_EXTRA_MS > life ? window + TOMBSTONE_EXTRA_MS : life));
    const char *argv[5] = { "2", key.data, tomb.data, now, ttl };
    size_t lens[5] = { 1, key.len, tomb.len, strlen(now), strlen(ttl) };
    op->pending++;
    int rc = redis_pool_script(res->set->redis, &invalidate_script, inval_script_cb, op, 5, argv, lens);
    if (rc != 0)
        op->pending--;
    buf_deinit(&key);
    buf_deinit(&tomb);
    return rc;
}

int resource_invalidate(struct resource *res, const char *id, size_t id_len,
                        void (*cb)(void *ctx, int err), void *ctx)
{
    struct buf key = BUF_INIT;
    resource_key_of(res, id, id_len, &key);
    /* Replicas: reads naming this key go to the primary for a while (with
     * or without a cache to drop). */
    pg_pool_note_write(res->set->pg, key.data, key.len);
    if (res->set->redis == NULL) {
        buf_deinit(&key);
        return -ENOENT;
    }
    struct invalidation *op = mem_calloc(1, sizeof(*op) + id_len + 1);
    op->cb = cb;
    op->ctx = ctx;
    op->res = res;
    op->id_len = (uint16_t)id_len;
    memcpy(op->id, id, id_len);
    op->pending = 1; /* held while the parts are being sent */
    /* The near caches forget it at once (every resource that has this
     * key): read-your-write needs no message. */
    near_drop_key(res->set, key.data, key.len, NEAR_DROP_WRITE);
    buf_deinit(&key);
    /* Loads in flight may carry the old row: answer, but do not cache. */
    struct batch_entry *e = batch_table_find(&res->table, id, id_len);
    if (e && e->state != BATCH_QUEUED) {
        e->stale = true;
        batch_table_remove(&res->table, e);
    }
    /* A write-back already sent may land after the delete: delete again
     * when it has, and finish only then. */
    struct wb *w;
    LIST_FOREACH(w, &res->wbs, link) {
        for (unsigned i = 0; i < w->n; i++) {
            if (w->e[i]->id_len != id_len || memcmp(w->e[i]->id, id, id_len) != 0)
                continue;
            w->waiters = mem_realloc(w->waiters, (w->n_waiters + 1) * sizeof(*w->waiters));
            w->waiters[w->n_waiters++] = (struct wb_waiter){ op, i };
            op->pending++;
        }
    }
    int rc = send_invalidate(res, id, id_len, op);
    if (rc != 0 && op->pending == 1) {
        free(op); /* nothing sent: the caller hears it from the return value */
        return rc;
    }
    if (rc != 0)
        op->err = rc;
    inval_part_done(op, 0);
    redis_pool_flush(res->set->redis);
    return 0;
}

/* --- write-back ------------------------------------------------------------------ */

static void writeback_cb(void *ctx, const redisReply *reply, int err)
{
    struct wb *w = ctx;
    struct resource *res = w->res;
    (void)reply;
    (void)err; /* written or not, the next reader asks Redis again */
    LIST_REMOVE(w, link);
    res->n_wbs--;
    for (unsigned i = 0; i < w->n; i++)
        if (!res->set->freeing)
            batch_table_remove(&res->table, w->e[i]);
    for (unsigned k = 0; k < w->n_waiters; k++) {
        struct wb_waiter *wt = &w->waiters[k];
        struct batch_entry *e = w->e[wt->idx];
        /* The second delete becomes a part of its own; then the waiter's
         * part is done. */
        int rc = send_invalidate(res, e->id, e->id_len, wt->op);
        inval_part_done(wt->op, rc);
    }
    if (w->n_waiters && res->set->redis)
        redis_pool_flush(res->set->redis);
    for (unsigned i = 0; i < w->n; i++)
        batch_entry_unref(w->e[i]);
    free(w->waiters);
    free(w);
}

/* One script call for entries es[0..n) (their keys share a slot on a cluster). */
static void write_back_send(struct resource *res, struct batch_entry **es, unsigned n, uint64_t start_wall_ms)
{
    struct redis_pool *redis = res->set->redis;
    struct wb *w = mem_calloc(1, sizeof(*w) + n * sizeof(w->e[0]));
    w->res = res;
    struct buf keys = BUF_INIT, ttls = BUF_INIT;
    size_t *koff = mem_alloc(2 * n * sizeof(size_t)), *toff = mem_alloc(n * sizeof(size_t));
    for (unsigned i = 0; i < n; i++) {
        struct batch_entry *e = es[i];
        batch_entry_ref(e);
        koff[w->n] = keys.len;
        resource_key_of(res, e->id, e->id_len, &keys);
        buf_append_char(&keys, '\0');
        toff[w->n] = ttls.len;
        buf_append_i64(&ttls, e->result == BATCH_FOUND ? res->cfg->ttl : res->cfg->negative_ttl);
        buf_append_char(&ttls, '\0');
        w->e[w->n++] = e;
    }
    size_t key_bytes = keys.len; /* appending may move keys.data: copy from a stable snapshot */
    char *snapshot = mem_alloc(key_bytes ? key_bytes : 1);
    memcpy(snapshot, keys.data, key_bytes);
    for (unsigned i = 0; i < n; i++) {
        koff[n + i] = keys.len;
        const char *k = snapshot + koff[i];
        resource_tomb_key(k, strlen(k), &keys);
        buf_append_char(&keys, '\0');
    }
    free(snapshot);
    char nkeys[16], start[24];
    snprintf(nkeys, sizeof(nkeys), "%u", 2 * n);
    snprintf(start, sizeof(start), "%llu", (unsigned long long)(start_wall_ms - CLOCK_SKEW_MS));
    unsigned argc = 2 + 2 * n + 2 * n;
    const char **argv = mem_alloc(argc * sizeof(char *));
    size_t *lens = mem_alloc(argc * sizeof(size_t));
    unsigned a = 0;
    argv[a] = nkeys, lens[a++] = strlen(nkeys);
    for (unsigned i = 0; i < 2 * n; i++)
        argv[a] = keys.data + koff[i], lens[a++] = strlen(keys.data + koff[i]);
    argv[a] = start, lens[a++] = strlen(start);
    for (unsigned i = 0; i < n; i++) {
        struct batch_entry *e = w->e[i];
        argv[a] = e->result == BATCH_FOUND ? e->doc : ABSENT_MARKER;
        lens[a++] = e->result == BATCH_FOUND ? e->doc_len : ABSENT_LEN;
        argv[a] = ttls.data + toff[i], lens[a++] = strlen(ttls.data + toff[i]);
    }
    if (redis_pool_script(redis, &writeback_script, writeback_cb, w, (int)argc, argv, lens) == 0) {
        (*res->m_writebacks) += n;
        LIST_INSERT_HEAD(&res->wbs, w, link);
        res->n_wbs++;
    } else {
        for (unsigned i = 0; i < w->n; i++) {
            batch_table_remove(&res->table, w->e[i]);
            batch_entry_unref(w->e[i]);
        }
        free(w);
    }
    free(argv);
    free(lens);
    free(koff);
    free(toff);
    buf_deinit(&keys);
    buf_deinit(&ttls);
}

struct slot_entry {
    unsigned slot;
    unsigned i;
    struct batch_entry *e;
};

static int cmp_slot_entry(const void *a, const void *b)
{
    const struct slot_entry *x = a, *y = b;
    if (x->slot != y->slot)
        return x->slot < y->slot ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

/* Caches the rows (and absences) a by_ids chunk loaded, in one script call
 * that respects invalidation tombstones (on a cluster, one per slot: a
 * script's keys must share one). The entries stay joinable until Redis
 * acknowledges, so a reader in between gets them without a query. */
void resource_write_back(struct resource *res, struct chunk *ch)
{
    struct redis_pool *redis = res->set->redis;
    struct batch_entry **es = mem_alloc((ch->n ? ch->n : 1) * sizeof(*es));
    unsigned n = 0;
    for (unsigned i = 0; i < ch->n; i++) {
        struct batch_entry *e = ch->entries[i];
        int64_t ttl = e->result == BATCH_FOUND ? res->cfg->ttl : res->cfg->negative_ttl;
        if (e->state == BATCH_DONE && e->result != BATCH_FAILED && !e->stale && ttl > 0 && e->in_table &&
            redis != NULL)
            es[n++] = e;
        else
            batch_table_remove(&res->table, e);
    }
    if (n && !redis_pool_is_cluster(redis)) {
        write_back_send(res, es, n, ch->start_wall_ms);
    } else if (n) {
        struct slot_entry *se = mem_alloc(n * sizeof(*se));
        struct buf key = BUF_INIT;
        for (unsigned i = 0; i < n; i++) {
            buf_reset(&key);
            resource_key_of(res, es[i]->id, es[i]->id_len, &key);
            se[i] = (struct slot_entry){ cluster_key_slot(key.data, key.len), i, es[i] };
        }
        buf_deinit(&key);
        qsort(se, n, sizeof(*se), cmp_slot_entry);
        for (unsigned i = 0, j; i < n; i = j) {
            for (j = i; j < n && se[j].slot == se[i].slot; j++)
                es[j - i] = se[j].e;
            write_back_send(res, es, j - i, ch->start_wall_ms);
        }
        free(se);
    }
    free(es);
}
