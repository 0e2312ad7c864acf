/*
 * resource_answer: turns a completed read into its HTTP answer (one
 * document, a JSON array in request order with null for missing, or the
 * failure), with X-Cache and Server-Timing; and the pool of reads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http/encode.h"
#include "daemon/http/req.h"
#include "daemon/cache/near.h"
#include "daemon/cache/resource_int.h"
#include "proto/etag.h"
#include "proto/jtext.h"
#include "proto/freelist.h"
#include "proto/mem.h"

/* Reads are recycled: a hot path allocates none once warm. */
static struct freelist spare_reads = FREELIST_INIT(1024);

struct read *resource_read_get(void)
{
    struct read *rd = freelist_get(&spare_reads);
    if (rd) {
        struct near_entry **buf = rd->local_buf;
        unsigned cap = rd->local_cap;
        memset(rd, 0, sizeof(*rd));
        rd->local_buf = buf;
        rd->local_cap = cap;
        return rd;
    }
    return mem_calloc(1, sizeof(*rd));
}

static void read_free(void *p)
{
    struct read *rd = p;
    free(rd->local_buf);
    free(rd);
}

void resource_read_put(struct read *rd)
{
    if (rd->local_cap > 1024 || !freelist_put(&spare_reads, rd))
        read_free(rd);
}

void resource_pool_drain(void)
{
    freelist_drain(&spare_reads, read_free);
    resource_routes_drain();
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
    return principal != NULL &&
           jtext_object_field(doc, len, cfg->owner_field, strlen(cfg->owner_field), &v, &vn) == 1 &&
           jtext_value_names(v, vn, principal, principal_len);
}

/* --- slots ----------------------------------------------------------------------- */

/* Slot i of a read, wherever it was answered from. */
struct slot {
    enum batch_result result;
    int err;
    const char *doc;
    size_t len;
    bool local;                 /* from the near cache */
    bool from_cache;            /* Redis or the near cache */
    uint32_t cache_us, db_us;
};

static struct slot slot_at(const struct read *rd, unsigned i)
{
    const struct near_entry *l = rd->local ? rd->local[i] : NULL;
    if (l)
        return (struct slot){ l->absent ? BATCH_ABSENT : BATCH_FOUND, 0, l->data, l->doc_len, true, true, 0, 0 };
    const struct batch_entry *e = rd->rd.slots[i];
    return (struct slot){ e->result, e->err, e->doc, e->doc_len, false, e->from_cache, e->cache_us, e->db_us };
}

/* Under access = owner, may the asker see slot i? (A near-cache entry
 * found its owner field when it was stored; a batch entry is scanned.) */
static bool visible(const struct read *rd, const struct req *r, unsigned i, const struct slot *sl)
{
    if (sl->result != BATCH_FOUND)
        return false;
    if (rd->res->cfg->access != ACCESS_OWNER)
        return true;
    if (sl->local)
        return near_entry_owned_by(rd->local[i], r->principal, r->principal_len);
    return resource_owned_by(rd->res->cfg, sl->doc, sl->len, r->principal, r->principal_len);
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
        struct slot sl = slot_at(rd, i);
        f[i] = (struct fetched){ FETCH_ABSENT, NULL, 0, sl.from_cache };
        if (sl.result == BATCH_FOUND) {
            f[i].result = FETCH_FOUND;
            f[i].doc = sl.doc;
            f[i].doc_len = sl.len;
        } else if (sl.result == BATCH_FAILED) {
            f[i].result = FETCH_FAILED;
            int status = sl.err == FAIL_QUERY || sl.err == FAIL_DOCUMENT ? 500 : 503;
            if (status > fail)
                fail = status;
        }
    }
    rd->fetch_cb(rd->fetch_ctx, f, n, fail);
    if (n > 64)
        free(f);
    near_read_release(rd);
    batch_read_release(&rd->rd);
    resource_read_put(rd);
}

static void entry_release(void *e)
{
    batch_entry_unref(e);
}

/* Adds slot i's document (and a ',' after it when `comma`) to the answer:
 * pointed at and held until its bytes are written, or copied (small ones,
 * req_gather_piece). A near-cache document carries its ',' along. */
static void piece_of(struct read *rd, struct req *r, unsigned i, const struct slot *sl, bool comma)
{
    if (sl->local) {
        struct near_entry *l = rd->local[i];
        if (req_gather_piece(r, l->data, l->doc_len + comma)) {
            rd->local[i] = NULL; /* the read's reference becomes the request's */
            rd->n_local--;
            req_hold(r, near_entry_release, l);
        }
        return;
    }
    struct batch_entry *e = rd->rd.slots[i];
    if (req_gather_piece(r, e->doc, e->doc_len)) {
        batch_entry_ref(e);
        req_hold(r, entry_release, e);
    }
    if (comma)
        req_gather_piece(r, ",", 1);
}

/* --- ETags ------------------------------------------------------------------------ */

/* Slot i's document hash, computed once per cached document (near-cache
 * entry) or per loaded one (batch entry, shared by that flush's readers). */
static uint64_t slot_hash(struct read *rd, unsigned i, const struct slot *sl)
{
    struct near_entry *l = sl->local ? rd->local[i] : NULL;
    if (l) {
        if (!l->tagged) {
            l->tag = etag_hash(l->data, l->doc_len);
            l->tagged = true;
        }
        return l->tag;
    }
    struct batch_entry *e = rd->rd.slots[i];
    if (!e->tagged) {
        e->tag = etag_hash(e->doc, e->doc_len);
        e->tagged = true;
    }
    return e->tag;
}

/* The answer's tag, over its pieces "[" doc|null ("," doc|null)* "]" as
 * proto/etag.h says: the same wherever each document came from. */
static uint64_t batch_tag(struct read *rd, const bool *vis, unsigned n)
{
    static uint64_t h_open, h_close, h_comma, h_null;
    if (h_open == 0) {
        h_open = etag_hash("[", 1);
        h_close = etag_hash("]", 1);
        h_comma = etag_hash(",", 1);
        h_null = etag_hash("null", 4);
    }
    uint64_t acc = etag_mix(ETAG_START, h_open);
    for (unsigned i = 0; i < n; i++) {
        if (i)
            acc = etag_mix(acc, h_comma);
        if (vis[i]) {
            struct slot sl = slot_at(rd, i);
            acc = etag_mix(acc, slot_hash(rd, i, &sl));
        } else {
            acc = etag_mix(acc, h_null);
        }
    }
    return etag_mix(acc, h_close);
}

void resource_answer(struct read *rd)
{
    if (rd->n_local && !near_read_current(rd))
        return; /* a local slot was invalidated meanwhile: restarted */
    if (rd->fetch_cb) {
        resource_fetch_done(rd);
        return;
    }
    struct resource *res = rd->res;
    struct req *r = rd->r;
    unsigned n = rd->rd.n;
    /* Under access = owner someone else's document must look exactly like
     * a missing one: it is hidden, and X-Cache and Server-Timing describe
     * only the documents shown (none at all on a 404), so whether it was
     * cached says nothing either. */
    bool owner = res->cfg->access == ACCESS_OWNER;
    /* Whether each slot is shown, found once (the owner check may scan the
     * document). */
    bool vis_stack[64];
    bool *vis = n <= 64 ? vis_stack : mem_alloc(n * sizeof(bool));
    enum fail_kind fail = FAIL_NONE;
    uint32_t cache_us = 0, db_us = 0;
    bool used_cache = false, used_db = false, all_cached = true, all_local = true;
    unsigned shown = 0;
    for (unsigned i = 0; i < n; i++) {
        struct slot sl = slot_at(rd, i);
        vis[i] = visible(rd, r, i, &sl);
        if (sl.result == BATCH_FAILED) {
            if (fail == FAIL_NONE || sl.err > (int)fail)
                fail = (enum fail_kind)sl.err;
            continue;
        }
        if (sl.local)
            ; /* counted in batchd_local_cache_results_total */
        else if (!sl.from_cache)
            (*res->m_miss)++;
        else if (sl.result == BATCH_ABSENT)
            (*res->m_absent)++;
        else
            (*res->m_hit)++;
        if (owner && !vis[i]) {
            if (sl.result == BATCH_FOUND)
                (*res->m_not_owner)++;
            continue;
        }
        shown++;
        if (sl.local)
            continue;
        all_local = false;
        if (sl.cache_us) {
            used_cache = true;
            if (sl.cache_us > cache_us)
                cache_us = sl.cache_us;
        }
        if (!sl.from_cache) {
            all_cached = false;
            used_db = true;
            if (sl.db_us > db_us)
                db_us = sl.db_us;
        }
    }
    if (fail == FAIL_NONE && shown) {
        if (all_local)
            REQ_HEADER_LINE(r, "X-Cache: local\r\n");
        else if (all_cached)
            REQ_HEADER_LINE(r, "X-Cache: hit\r\n");
        else
            REQ_HEADER_LINE(r, "X-Cache: miss\r\n");
        if (!all_local)
            append_timing(r, cache_us, db_us, used_cache, used_db);
    }
    if (fail != FAIL_NONE) {
        answer_failure(res, r, fail);
    } else if (rd->single) {
        struct slot sl = slot_at(rd, 0);
        if (vis[0]) {
            if (encode_etag_on()) /* computed before piece_of moves a near entry to the request */
                req_encodable(r, true, etag_mix(ETAG_START, slot_hash(rd, 0, &sl)));
            else
                req_encodable(r, false, 0);
            req_gather_begin(r, 1, sl.len);
            piece_of(rd, r, 0, &sl, false);
            req_respond_gathered(r, 200, "application/json");
        } else {
            req_error(r, 404, "not_found");
        }
    } else {
        /* [doc,doc,null,doc]: pieces over the documents (the small ones
         * copied, see req_gather_piece). */
        size_t bytes = 2;
        unsigned large = 0;
        for (unsigned i = 0; i < n; i++) {
            size_t len = vis[i] ? slot_at(rd, i).len : 4;
            bytes += len + 1;
            large += len + 1 >= REQ_COPY_BELOW;
        }
        bool tag_on = encode_etag_on();
        req_encodable(r, tag_on, tag_on ? batch_tag(rd, vis, n) : 0);
        req_gather_begin(r, 2 * large + 2, bytes);
        req_gather_piece(r, "[", 1);
        for (unsigned i = 0; i < n; i++) {
            bool comma = i + 1 < n;
            if (vis[i]) {
                struct slot sl = slot_at(rd, i);
                piece_of(rd, r, i, &sl, comma);
            } else {
                req_gather_piece(r, "null,", comma ? 5 : 4);
            }
        }
        req_gather_piece(r, "]", 1);
        req_respond_gathered(r, 200, "application/json");
    }
    if (vis != vis_stack)
        free(vis);
    near_read_release(rd);
    batch_read_release(&rd->rd);
    resource_read_put(rd);
}
