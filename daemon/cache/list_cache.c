/*
 * list_cache: the Redis side of lists, and their invalidation.
 *
 * One hash per (list, principal), batchd:list:<name>:<principal> (list
 * names have no ':'), one field per page (proto/cursor.h): a write by the
 * principal drops all of its pages with one DEL, and a page's own expiry
 * (in its value, checked here) is exact although the hash's PEXPIRE is
 * pushed on by every page written.
 *
 *   lookup      HGET key field ──> list_page_cached
 *   store       STORE_SCRIPT: nothing when the hash's tombstone is not older than the
 *               page's query; a hash holding max_cached_pages pages is emptied first;
 *               HSET key field value; PEXPIRE key, at least ttl
 *   invalidate  DROP_SCRIPT: DEL key, then the tombstone: HSET key !inval <now ms>,
 *               PEXPIRE key query_timeout_ms + 5 s
 *
 * The race guard: a page_query that started before a write committed may
 * return the old ids, and must not cache them after the write's
 * invalidation. So an invalidation
 *   - marks that principal's pages loading in this process stale (they
 *     answer their requests, are not cached) and unjoinable (a request
 *     arriving later starts its own load), before anything is sent;
 *   - leaves a tombstone in the hash itself. The store script runs
 *     atomically on the same key and skips a page whose query started
 *     (minus LIST_CLOCK_SKEW_MS) before the tombstone's time, so a store
 *     already on its way, from this process or any other, cannot land
 *     after the DEL. The tombstone lives longer than any page_query can
 *     run (statement_timeout is query_timeout_ms).
 * Across hosts this needs clocks within LIST_CLOCK_SKEW_MS (NTP), like the
 * resources' tombstones. What remains: a lookup (HGET) another process
 * sent before the DEL landed may answer its readers with the old page, as
 * a reader concurrent with the write.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/backend/pg_pool.h"
#include "daemon/backend/redis_pool.h"
#include "daemon/cache/list_int.h"
#include "daemon/log.h"
#include "proto/cursor.h"
#include "proto/http.h"
#include "proto/mem.h"
#include "proto/url.h"

/* KEYS[1] the hash; ARGV: field, value, ttl ms, max pages, query start ms
 * (minus the skew). Returns -1 (invalidated since), 0 (stored) or 1
 * (stored into a hash emptied at max pages). Anything that is not a hash
 * at the key (written by someone else) is replaced. */
static const char STORE_SCRIPT[] =
    "local k = KEYS[1]\n"
    "local t = redis.call('TYPE', k)['ok']\n"
    "if t ~= 'hash' and t ~= 'none' then redis.call('DEL', k) end\n"
    "local tomb = redis.call('HGET', k, '" LIST_TOMBSTONE_FIELD "')\n"
    "local tn = tomb and tonumber(tomb)\n"
    "if tn and tn >= tonumber(ARGV[5]) then return -1 end\n"
    "local reset = 0\n"
    "local n = redis.call('HLEN', k)\n"
    "if tomb then n = n - 1 end\n"
    "if n >= tonumber(ARGV[4]) and redis.call('HEXISTS', k, ARGV[1]) == 0 then\n"
    "  redis.call('DEL', k)\n"
    "  if tomb then redis.call('HSET', k, '" LIST_TOMBSTONE_FIELD "', tomb) end\n"
    "  reset = 1\n"
    "end\n"
    "redis.call('HSET', k, ARGV[1], ARGV[2])\n"
    "if redis.call('PTTL', k) < tonumber(ARGV[3]) then redis.call('PEXPIRE', k, ARGV[3]) end\n"
    "return reset\n";

/* KEYS[1] the hash; ARGV: now ms, tombstone ttl ms. */
static const char DROP_SCRIPT[] =
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('HSET', KEYS[1], '" LIST_TOMBSTONE_FIELD "', ARGV[1])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
    "return 1\n";

static struct redis_script store_script = { STORE_SCRIPT, "" };
static struct redis_script drop_script = { DROP_SCRIPT, "" };

void list_cache_key(const struct listing *l, str_t principal, struct buf *out)
{
    buf_append_str(out, LIST_KEY_PREFIX);
    buf_append_str(out, l->cfg->name);
    buf_append_char(out, ':');
    buf_append(out, principal.p, principal.len);
}

/* --- lookups and stores ------------------------------------------------------------ */

static void lookup_cb(void *ctx, const redisReply *reply, int err)
{
    struct page *p = ctx;
    str_t v = STR_NULL;
    if (err == 0 && reply && reply->type == REDIS_REPLY_STRING)
        v = str_make(reply->str, reply->len);
    /* nil, or an error reply (a key of another type): a miss; the store
     * replaces what is there. */
    list_page_cached(p, v, err);
    list_page_unref(p); /* the lookup's */
}

int list_cache_lookup(struct page *p)
{
    struct buf key = BUF_INIT;
    list_cache_key(p->list, page_principal(p), &key);
    str_t field = page_field(p);
    const char *argv[3] = { "HGET", key.data, field.p };
    size_t lens[3] = { 4, key.len, field.len };
    int rc = redis_pool_command(p->list->set->redis, lookup_cb, p, 3, argv, lens);
    if (rc == 0)
        p->refs++;
    buf_deinit(&key);
    return rc;
}

static void store_cb(void *ctx, const redisReply *reply, int err)
{
    struct page *p = ctx;
    struct listing *l = p->list;
    if (err == 0 && reply && reply->type == REDIS_REPLY_INTEGER) {
        if (reply->integer < 0) {
            (*l->m_wb_skipped)++;
        } else {
            (*l->m_writebacks)++;
            *l->m_resets += reply->integer == 1;
        }
    } else if (!l->set->freeing) {
        (*l->m_err[LERR_CACHE_WRITE])++; /* the next reader loads it again */
    }
    list_page_stored(p);
}

void list_cache_store(struct page *p)
{
    struct listing *l = p->list;
    struct buf key = BUF_INIT, value = BUF_INIT;
    list_cache_key(l, page_principal(p), &key);
    cursor_page_encode(list_wall_ms() + (uint64_t)l->cfg->ttl * 1000, buf_str(&p->next), &p->ids, &value);
    char ttl[24], max[24], start[24];
    size_t ttl_n = fmt_u64(ttl, (uint64_t)l->cfg->ttl * 1000);
    size_t max_n = fmt_u64(max, (uint64_t)l->cfg->max_cached_pages);
    size_t start_n = fmt_u64(start, p->start_wall_ms > LIST_CLOCK_SKEW_MS ? p->start_wall_ms - LIST_CLOCK_SKEW_MS : 0);
    str_t field = page_field(p);
    const char *argv[7] = { "1", key.data, field.p, value.data, ttl, max, start };
    size_t lens[7] = { 1, key.len, field.len, value.len, ttl_n, max_n, start_n };
    if (redis_pool_script(l->set->redis, &store_script, store_cb, p, 7, argv, lens) != 0) {
        (*l->m_err[LERR_CACHE_WRITE])++; /* busy or down: answered, not cached */
        list_page_stored(p);
    }
    buf_deinit(&key);
    buf_deinit(&value);
}

/* --- invalidation ------------------------------------------------------------------- */

struct drop {
    struct listing *l;
    void (*cb)(void *ctx, int err);
    void *ctx;
};

static void drop_cb(void *ctx, const redisReply *reply, int err)
{
    struct drop *d = ctx;
    if (err == 0 && reply && reply->type == REDIS_REPLY_ERROR)
        err = -EIO;
    (*(err < 0 ? d->l->m_inval_err : d->l->m_inval))++;
    if (err < 0)
        log_warn("list invalidation failed; the pages expire by their ttl", "list=%s err=%d", d->l->cfg->name, err);
    d->cb(d->ctx, err);
    free(d);
}

/* Drops the principal's pages: in this process at once, in Redis with
 * DROP_SCRIPT. 0 when the script was sent (cb will run), -ENOENT when this
 * list caches nothing, or the error sending it. */
static int list_invalidate(struct listing *l, str_t principal, void (*cb)(void *ctx, int err), void *ctx)
{
    struct list_set *s = l->set;
    list_forget_principal(l, principal.p, principal.len);
    struct buf key = BUF_INIT;
    list_cache_key(l, principal, &key);
    /* Replicas: the principal's pages read the primary for a while. */
    pg_pool_note_write(s->pg, key.data, key.len);
    if (l->cfg->ttl == 0 || s->redis == NULL) {
        buf_deinit(&key);
        return -ENOENT;
    }
    char now[24], ttl[24];
    size_t now_n = fmt_u64(now, list_wall_ms());
    /* With replicas the tombstone outlives the recent-write window (list.c). */
    uint64_t life = (uint64_t)s->cfg->postgres.query_timeout_ms + LIST_TOMBSTONE_EXTRA_MS;
    uint64_t window = pg_pool_recent_window_ms(&s->cfg->postgres) + LIST_TOMBSTONE_EXTRA_MS;
    size_t ttl_n = fmt_u64(ttl, window > life ? window : life);
    const char *argv[4] = { "1", key.data, now, ttl };
    size_t lens[4] = { 1, key.len, now_n, ttl_n };
    struct drop *d = mem_alloc(sizeof(*d));
    *d = (struct drop){ l, cb, ctx };
    int rc = redis_pool_script(s->redis, &drop_script, drop_cb, d, 4, argv, lens);
    if (rc != 0) {
        free(d);
        (*l->m_inval_err)++;
        log_warn("list invalidation failed; the pages expire by their ttl", "list=%s err=%d", l->cfg->name, rc);
    } else {
        redis_pool_flush(s->redis);
    }
    buf_deinit(&key);
    return rc;
}

struct list_writes {
    unsigned n;
    struct listing **lists;
    uint16_t len;
    char principal[];
};

struct list_writes *list_set_match_writes(struct list_set *s, unsigned method, str_t path,
                                          const char *principal, size_t len)
{
    if (s == NULL || principal == NULL || s->n == 0 || len > UINT16_MAX ||
        (method != HTTP_PUT && method != HTTP_PATCH && method != HTTP_POST && method != HTTP_DELETE))
        return NULL;
    struct list_writes *w = NULL;
    for (unsigned i = 0; i < s->n; i++) {
        struct listing *l = s->lists[i];
        if (l->retired)
            continue;
        for (unsigned k = 0; k < l->cfg->invalidate.n; k++) {
            struct url_params params;
            if (url_template_match(l->cfg->invalidate.items[k], path, &params) < 0)
                continue;
            if (w == NULL) {
                w = mem_alloc(sizeof(*w) + len + 1);
                w->n = 0;
                w->lists = mem_alloc(s->n * sizeof(*w->lists));
                w->len = (uint16_t)len;
                memcpy(w->principal, principal, len);
                w->principal[len] = '\0';
            }
            w->lists[w->n++] = l;
            break; /* one match per list */
        }
    }
    return w;
}

unsigned list_writes_invalidate(struct list_writes *w, void (*cb)(void *ctx, int err), void *ctx)
{
    unsigned sent = 0;
    for (unsigned i = 0; w && i < w->n; i++)
        sent += list_invalidate(w->lists[i], str_make(w->principal, w->len), cb, ctx) == 0;
    return sent;
}

void list_writes_free(struct list_writes *w)
{
    if (w == NULL)
        return;
    free(w->lists);
    free(w);
}
