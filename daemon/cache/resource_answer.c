/*
 * resource_answer: turns a completed read into its HTTP answer (one
 * document, a JSON array in request order with null for missing, or the
 * failure), with X-Cache and Server-Timing; and the pool of reads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http/req.h"
#include "daemon/cache/resource_int.h"
#include "proto/jtext.h"
#include "proto/freelist.h"
#include "proto/mem.h"

/* Reads are recycled: a hot path allocates none once warm. */
static struct freelist spare_reads = FREELIST_INIT(1024);

struct read *resource_read_get(void)
{
    struct read *rd = freelist_get(&spare_reads);
    if (rd) {
        memset(rd, 0, sizeof(*rd));
        return rd;
    }
    return mem_calloc(1, sizeof(*rd));
}

void resource_read_put(struct read *rd)
{
    if (!freelist_put(&spare_reads, rd))
        free(rd);
}

void resource_pool_drain(void)
{
    freelist_drain(&spare_reads, NULL);
}

/* --- answering ---------------------------------------------------------------- */

/* "12.345" for a duration in µs, without printf's floating point. */
static size_t fmt_ms(char *out, uint32_t us)
{
    size_t n = fmt_u64(out, us / 1000);
    out[n++] = '.';
    out[n++] = (char)('0' + (us / 100) % 10);
    out[n++] = (char)('0' + (us / 10) % 10);
    out[n++] = (char)('0' + us % 10);
    out[n] = '\0';
    return n;
}

static void append_timing(struct req *r, uint32_t cache_us, uint32_t db_us, bool used_cache, bool used_db)
{
    char v[96];
    size_t n = 0;
    if (used_cache) {
        memcpy(v, "cache;dur=", 10);
        n = 10 + fmt_ms(v + 10, cache_us);
    }
    if (used_db) {
        if (n) {
            v[n++] = ',';
            v[n++] = ' ';
        }
        memcpy(v + n, "db;dur=", 7);
        n += 7;
        n += fmt_ms(v + n, db_us);
    }
    if (n) {
        v[n] = '\0';
        req_add_header(r, "Server-Timing", v);
    }
}

static void answer_failure(struct resource *res, struct req *r, enum fail_kind kind)
{
    switch (kind) {
    case FAIL_QUERY:
        req_error(r, 500, "query_failed");
        break;
    case FAIL_DOCUMENT:
        req_error(r, 500, "invalid_document");
        break;
    default:
        req_add_header(r, "Retry-After", "1");
        req_error(r, 503, kind == FAIL_SHUTDOWN ? "shutting_down"
                          : kind == FAIL_BUSY   ? "backend_busy"
                                                : "db_unavailable");
        break;
    }
    (void)res;
}

/* --- owners ---------------------------------------------------------------------- */

bool resource_owned_by(const struct cfg_resource *cfg, const char *doc, size_t len,
                       const char *principal, size_t principal_len)
{
    const char *v;
    size_t vn;
    if (principal == NULL || jtext_object_field(doc, len, cfg->owner_field, strlen(cfg->owner_field), &v, &vn) != 1)
        return false;
    if (v[0] == '"')
        return jtext_string_equals(v, vn, principal, principal_len);
    /* A number names its owner by its text: owner_id 42 is principal "42". */
    return (v[0] == '-' || (v[0] >= '0' && v[0] <= '9')) && vn == principal_len &&
           memcmp(v, principal, vn) == 0;
}

/* Under access = owner, may the asker see this slot's document? */
static bool visible(const struct resource *res, const struct req *r, const struct batch_entry *e)
{
    return e->result == BATCH_FOUND &&
           (res->cfg->access != ACCESS_OWNER ||
            resource_owned_by(res->cfg, e->doc, e->doc_len, r->principal, r->principal_len));
}

/* --- reads from inside batchd ------------------------------------------------------ */

void resource_fetch_done(struct read *rd)
{
    unsigned n = rd->rd.n;
    struct fetched stack[64];
    struct fetched *f = n <= 64 ? stack : mem_alloc(n * sizeof(*f));
    if (n == 0)
        f = NULL;
    int fail = 0;
    for (unsigned i = 0; i < n; i++) {
        struct batch_entry *e = rd->rd.slots[i];
        f[i] = (struct fetched){ FETCH_ABSENT, NULL, 0, e->from_cache };
        if (e->result == BATCH_FOUND) {
            f[i].result = FETCH_FOUND;
            f[i].doc = e->doc;
            f[i].doc_len = e->doc_len;
        } else if (e->result == BATCH_FAILED) {
            f[i].result = FETCH_FAILED;
            int status = e->err == FAIL_QUERY || e->err == FAIL_DOCUMENT ? 500 : 503;
            if (status > fail)
                fail = status;
        }
    }
    rd->fetch_cb(rd->fetch_ctx, f, n, fail);
    if (n > 64)
        free(f);
    batch_read_release(&rd->rd);
    resource_read_put(rd);
}

void resource_answer(struct read *rd)
{
    if (rd->fetch_cb) {
        resource_fetch_done(rd);
        return;
    }
    struct resource *res = rd->res;
    struct req *r = rd->r;
    /* Under access = owner someone else's document must look exactly like
     * a missing one: it is hidden, and X-Cache and Server-Timing describe
     * only the documents shown (none at all on a 404), so whether it was
     * cached says nothing either. */
    bool owner = res->cfg->access == ACCESS_OWNER;
    /* Whether each slot is shown, found once (the owner check scans the
     * document). */
    bool vis_stack[64];
    bool *vis = rd->rd.n <= 64 ? vis_stack : mem_alloc(rd->rd.n * sizeof(bool));
    enum fail_kind fail = FAIL_NONE;
    uint32_t cache_us = 0, db_us = 0;
    bool used_cache = false, used_db = false, all_cached = true;
    unsigned shown = 0;
    for (unsigned i = 0; i < rd->rd.n; i++) {
        struct batch_entry *e = rd->rd.slots[i];
        vis[i] = visible(res, r, e);
        if (e->result == BATCH_FAILED) {
            if (fail == FAIL_NONE || e->err > (int)fail)
                fail = (enum fail_kind)e->err;
            continue;
        }
        if (!e->from_cache)
            (*res->m_miss)++;
        else if (e->result == BATCH_ABSENT)
            (*res->m_absent)++;
        else
            (*res->m_hit)++;
        if (owner && !vis[i]) {
            if (e->result == BATCH_FOUND)
                (*res->m_not_owner)++;
            continue;
        }
        shown++;
        if (e->cache_us) {
            used_cache = true;
            if (e->cache_us > cache_us)
                cache_us = e->cache_us;
        }
        if (!e->from_cache) {
            all_cached = false;
            used_db = true;
            if (e->db_us > db_us)
                db_us = e->db_us;
        }
    }
    if (fail != FAIL_NONE) {
        answer_failure(res, r, fail);
    } else if (rd->single) {
        struct batch_entry *e = rd->rd.slots[0];
        if (shown) {
            req_add_header(r, "X-Cache", all_cached ? "hit" : "miss");
            append_timing(r, cache_us, db_us, used_cache, used_db);
        }
        if (vis[0])
            req_respond(r, 200, "application/json", e->doc, e->doc_len);
        else
            req_error(r, 404, "not_found");
    } else {
        /* Built in the request's own (recycled) body buffer. */
        struct buf *body = &r->body;
        size_t total = 2;
        for (unsigned i = 0; i < rd->rd.n; i++)
            total += (rd->rd.slots[i]->result == BATCH_FOUND ? rd->rd.slots[i]->doc_len : 4) + 1;
        buf_reset(body);
        buf_reserve(body, total);
        char *p = body->data;
        *p++ = '[';
        for (unsigned i = 0; i < rd->rd.n; i++) {
            struct batch_entry *e = rd->rd.slots[i];
            if (i)
                *p++ = ',';
            if (vis[i]) {
                memcpy(p, e->doc, e->doc_len);
                p += e->doc_len;
            } else {
                memcpy(p, "null", 4);
                p += 4;
            }
        }
        *p++ = ']';
        body->len = (size_t)(p - body->data);
        body->data[body->len] = '\0';
        if (shown) {
            req_add_header(r, "X-Cache", all_cached ? "hit" : "miss");
            append_timing(r, cache_us, db_us, used_cache, used_db);
        }
        req_respond_body(r, 200, "application/json");
    }
    if (vis != vis_stack)
        free(vis);
    batch_read_release(&rd->rd);
    resource_read_put(rd);
}
