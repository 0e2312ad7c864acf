/*
 * list: owner-scoped pages. See list.h.
 *
 * A request becomes a page identity (principal, limit, cursor, declared
 * params), the key of the list's page table, so identical requests in
 * flight share one HGET and one page_query:
 *
 *   request ──> page table ──new──> PAGE_CACHE (HGET) ──miss──> PAGE_DB (page_query)
 *                   │ joinable            │ hit                       │ rows
 *                   └───── joins ────────>└─────> PAGE_DONE <─────────┘
 *                                                  │ ids + next cursor
 *                       the waiters so far ──> one resource_fetch ──> one body, each answered
 *
 * A page loaded from PostgreSQL stays joinable until its ids are cached
 * (the write script answered), so a request in between needs no query;
 * one that joins a done page gets its ids at once and fetches its own
 * bodies. The cache holds ids only: documents stay cached once, in the
 * resource, shared by every reader, and a list never serves a body older
 * than the resource would.
 *
 * A page's items are the first `limit` of the limit + 1 rows page_query
 * returns; the extra row only says that there is a next page, whose
 * cursor is the cursor column of the last item shown. Items whose document
 * is gone (deleted since) are left out, and so, when the resource has
 * access = owner, are documents the principal does not own.
 */
#include "daemon/cache/list.h"
#include "daemon/cache/list_int.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/auth/identity.h"
#include "daemon/backend/pg_pool.h"
#include "daemon/backend/redis_pool.h"
#include "daemon/cache/resource.h"
#include "daemon/http/encode.h"
#include "daemon/http/req.h"
#include "daemon/log.h"
#include "proto/cursor.h"
#include "proto/etag.h"
#include "proto/jtext.h"
#include "proto/mem.h"
#include "proto/url.h"

/* --- answers ----------------------------------------------------------------------- */

static bool busy_code(const char *code)
{
    return strcmp(code, "list_busy") == 0 || strcmp(code, "backend_busy") == 0 ||
           strcmp(code, "resource_busy") == 0;
}

static void respond_error(struct listing *l, struct req *r, int status, const char *code)
{
    enum list_result res = status == 400 ? LIST_INVALID
                         : status == 500 ? LIST_ERROR
                         : busy_code(code) ? LIST_BUSY
                                           : LIST_UNAVAILABLE;
    (*l->m_requests[res])++;
    if (status == 503)
        req_add_header(r, "Retry-After", "1");
    req_error(r, status, code);
}

/* Frees one answered waiter; returns the next. */
static struct waiter *waiter_done(struct listing *l, struct waiter *w)
{
    struct waiter *next = w->next;
    free(w);
    l->n_waiters--;
    return next;
}

/* The bodies of one page, for the requests that waited on it together. */
struct answer {
    struct page *page;
    struct resource *res;
    struct waiter *waiters;
};

static void answer_body(struct answer *a, const struct fetched *f, unsigned n, struct buf *body)
{
    struct page *p = a->page;
    struct listing *l = p->list;
    const struct cfg_resource *rc = a->res ? resource_cfg(a->res) : NULL;
    bool owner = rc && rc->access == ACCESS_OWNER;
    str_t who = page_principal(p);
    buf_append_str(body, "{\"items\":[");
    bool first = true;
    for (unsigned i = 0; i < n; i++) {
        if (f[i].result != FETCH_FOUND) {
            (*l->m_absent)++;
            continue;
        }
        if (owner && !resource_owned_by(rc, f[i].doc, f[i].doc_len, who.p, who.len)) {
            (*l->m_not_owner)++; /* page_query returned someone else's row */
            continue;
        }
        if (!first)
            buf_append_char(body, ',');
        first = false;
        buf_append(body, f[i].doc, f[i].doc_len);
    }
    buf_append_str(body, "],\"next\":");
    if (p->next.len)
        jtext_append_string(body, p->next.data, p->next.len);
    else
        buf_append_str(body, "null");
    buf_append_str(body, "}\n");
}

static void fetch_cb(void *ctx, const struct fetched *f, unsigned n, int fail)
{
    struct answer *a = ctx;
    struct page *p = a->page;
    struct listing *l = p->list;
    struct buf body = BUF_INIT;
    uint64_t tag = 0;
    bool tag_on = false;
    if (fail == 0) {
        answer_body(a, f, n, &body);
        tag_on = encode_etag_on(); /* hashed once for every waiter */
        if (tag_on)
            tag = etag_mix(ETAG_START, etag_hash(body.data, body.len));
    }
    /* resource_fetch: 503 with no outcomes is the resource's max_ids_in_flight. */
    const char *code = fail == 500 ? "query_failed" : f == NULL && n == 0 ? "resource_busy" : "db_unavailable";
    if (a->res == NULL)
        code = "db_unavailable";
    struct waiter *w = a->waiters;
    while (w) {
        struct waiter *next = w->next;
        if (fail) {
            respond_error(l, w->r, fail == 500 ? 500 : 503, code);
        } else {
            (*l->m_requests[LIST_OK])++;
            req_add_header(w->r, "Cache-Control", "private");
            req_add_header(w->r, "X-Cache", p->from_cache ? "hit" : "miss");
            req_encodable(w->r, tag_on, tag);
            if (next) /* a copy each; the last one takes the body */
                req_respond(w->r, 200, "application/json", body.data, body.len);
            else
                req_respond_buf(w->r, 200, "application/json", &body);
        }
        w = waiter_done(l, w);
    }
    buf_deinit(&body);
    list_page_unref(p);
    free(a);
}

/* Answers the waiters w of a page whose ids are known. */
static void answer_start(struct page *p, struct waiter *w)
{
    struct listing *l = p->list;
    struct answer *a = mem_alloc(sizeof(*a));
    a->page = p;
    a->waiters = w;
    a->res = resource_set_find(l->set->resources, l->cfg->resource);
    p->refs++;
    unsigned n = p->ids.n;
    if (n == 0 || a->res == NULL) { /* no resource: a reload removed it, and this list too */
        fetch_cb(a, NULL, 0, n == 0 ? 0 : 503);
        return;
    }
    str_t stack[256];
    str_t *ids = n <= 256 ? stack : mem_alloc(n * sizeof(*ids));
    for (unsigned i = 0; i < n; i++)
        ids[i] = id_list_get(&p->ids, i);
    resource_fetch(a->res, ids, n, fetch_cb, a);
    if (ids != stack)
        free(ids);
}

/* --- the page table --------------------------------------------------------------- */

void list_page_unref(struct page *p)
{
    if (--p->refs > 0)
        return;
    struct list_set *s = p->list->set;
    id_list_deinit(&p->ids);
    buf_deinit(&p->next);
    buf_deinit(&p->tkey);
    buf_deinit(&p->args);
    free(p);
    if (--s->n_pages == 0 && s->freeing)
        list_set_destroy(s);
}

/* Takes p out of the table: nobody joins it from now on. */
static void page_unjoin(struct page *p)
{
    struct list_owner *o = p->owner;
    if (o == NULL)
        return;
    struct listing *l = p->list;
    hashtab_remove(&l->pages, &p->hnode);
    LIST_REMOVE(p, owner_link);
    p->owner = NULL;
    if (LIST_EMPTY(&o->pages)) {
        hashtab_remove(&l->owners, &o->hnode);
        free(o);
    }
    list_page_unref(p); /* the table's */
}

void list_forget_principal(struct listing *l, const char *principal, size_t len)
{
    struct hashtab_node *n = hashtab_find(&l->owners, principal, len);
    if (n == NULL)
        return;
    struct list_owner *o = hashtab_entry(n, struct list_owner, hnode);
    struct page *p;
    /* page_unjoin frees the owner with its last page. */
    while (o && (p = LIST_FIRST(&o->pages)) != NULL) {
        p->stale = true;
        bool last = LIST_NEXT(p, owner_link) == NULL;
        page_unjoin(p);
        if (last)
            o = NULL;
    }
}

static void loading_done(struct page *p)
{
    if (p->state != PAGE_DONE) {
        p->state = PAGE_DONE;
        p->list->n_loading--;
    }
}

static struct waiter *take_waiters(struct page *p)
{
    struct waiter *w = p->waiters;
    p->waiters = NULL;
    p->waiters_tail = &p->waiters;
    return w;
}

/* Answers p's waiters with the failure. p may be freed here. */
static void page_fail(struct page *p, int status, const char *code)
{
    struct listing *l = p->list;
    loading_done(p);
    struct waiter *w = take_waiters(p);
    page_unjoin(p);
    while (w) {
        respond_error(l, w->r, status, code);
        w = waiter_done(l, w);
    }
}

/* The ids are known: cache them (a page from PostgreSQL), answer. */
static void page_resolve(struct page *p)
{
    struct listing *l = p->list;
    loading_done(p);
    (*(p->from_cache ? l->m_pages_cache : l->m_pages_db))++;
    struct waiter *w = take_waiters(p);
    p->refs++; /* held across the store, which may answer at once */
    bool cacheable = !p->from_cache && l->cfg->ttl > 0 && l->set->redis;
    if (cacheable && p->stale)
        (*l->m_wb_skipped)++; /* invalidated while its query ran */
    if (cacheable && !p->stale && p->owner) {
        p->refs++;
        list_cache_store(p);
    } else {
        page_unjoin(p);
    }
    if (w)
        answer_start(p, w);
    list_page_unref(p);
}

void list_page_stored(struct page *p)
{
    page_unjoin(p);
    list_page_unref(p); /* the store's */
}

/* --- PostgreSQL --------------------------------------------------------------------- */

/* A failed page_query: a data exception (SQLSTATE class 22, like a cast
 * of the cursor or a param that fails) is the request's fault, and says
 * nothing about the query to the client; anything else is 500. */
static void query_failed(struct page *p, const PGresult *res)
{
    struct listing *l = p->list;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    bool params = false;
    for (unsigned i = 1; i < p->nparams - 2; i++)
        params |= p->arg_len[i] >= 0;
    if (state && strncmp(state, "22", 2) == 0 && (p->arg_len[0] >= 0 || params)) {
        log_debug("page_query refused a value", "list=%s sqlstate=%s", l->cfg->name, state);
        page_fail(p, 400, p->arg_len[0] >= 0 ? "invalid_cursor" : "invalid_param");
        return;
    }
    (*l->m_err[LERR_QUERY])++;
    log_error("page_query failed", "list=%s sqlstate=%s err=%s", l->cfg->name, state ? state : "?",
              LOG_Q(res ? PQresultErrorMessage(res) : "?"));
    page_fail(p, 500, "query_failed");
}

/* The rows of a page: ids of the first `limit`, and the next cursor when
 * there is a row after them. 0, or -1 when the page cannot be served. */
static int take_rows(struct page *p, const PGresult *res)
{
    struct listing *l = p->list;
    int rows = PQntuples(res);
    if (PQnfields(res) < 2) {
        (*l->m_err[LERR_SHAPE])++;
        log_error("page_query must return (id, cursor)", "list=%s columns=%d", l->cfg->name, PQnfields(res));
        return -1;
    }
    unsigned shown = rows > (int)p->limit ? p->limit : (unsigned)rows;
    for (unsigned i = 0; i < shown; i++) {
        const char *id = PQgetvalue(res, (int)i, 0);
        size_t len = (size_t)PQgetlength(res, (int)i, 0);
        if (PQgetisnull(res, (int)i, 0) || id_list_add(&p->ids, id, len, p->limit) != 0) {
            (*l->m_err[LERR_SHAPE])++;
            log_warn("page_query returned a row without a valid id; left out", "list=%s row=%u", l->cfg->name, i);
        }
    }
    if (rows <= (int)p->limit)
        return 0;
    int last = (int)p->limit - 1;
    const char *c = PQgetvalue(res, last, 1);
    size_t len = (size_t)PQgetlength(res, last, 1);
    if (PQgetisnull(res, last, 1)) {
        (*l->m_err[LERR_SHAPE])++;
        log_error("page_query returned a NULL cursor for the last item of a page", "list=%s", l->cfg->name);
        return -1;
    }
    if (!cursor_text_valid(c, len) || cursor_encoded_len(len) > (size_t)l->cfg->max_cursor_bytes) {
        (*l->m_err[LERR_CURSOR_COLUMN])++;
        log_error("page_query's cursor column must be UTF-8 text without control characters, "
                  "its cursor at most max_cursor_bytes", "list=%s length=%zu", l->cfg->name, len);
        return -1;
    }
    cursor_encode(c, len, &p->next);
    return 0;
}

static void query_cb(void *ctx, const PGresult *res, int err)
{
    struct page *p = ctx;
    struct listing *l = p->list;
    metrics_observe(l->m_query_s, (double)(uv_hrtime() - p->start_ns) / 1e9);
    if (err == -EIO)
        query_failed(p, res);
    else if (err == -ECANCELED)
        page_fail(p, 503, "shutting_down");
    else if (err < 0)
        page_fail(p, 503, "db_unavailable");
    else if (take_rows(p, res) != 0)
        page_fail(p, 500, "query_failed");
    else
        page_resolve(p);
    list_page_unref(p); /* the query's */
}

static void page_query(struct page *p)
{
    struct listing *l = p->list;
    struct pg_pool *pg = l->set->pg;
    if (pg == NULL || !pg_pool_up(pg)) {
        page_fail(p, 503, "db_unavailable");
        return;
    }
    const char *values[3 + LIST_MAX_PARAMS];
    size_t lens[3 + LIST_MAX_PARAMS];
    str_t who = page_principal(p);
    char limit[24];
    values[0] = who.p;
    lens[0] = who.len;
    lens[2] = fmt_u64(limit, (uint64_t)p->limit + 1);
    values[2] = limit;
    /* args: the cursor text ($2), then the params ($4...), back to back. */
    size_t off = 0;
    for (unsigned i = 0; i + 2 < p->nparams; i++) {
        unsigned slot = i == 0 ? 1 : i + 2;
        values[slot] = p->arg_len[i] < 0 ? NULL : p->args.data + off;
        lens[slot] = p->arg_len[i] < 0 ? 0 : (size_t)p->arg_len[i];
        off += lens[slot];
    }
    p->state = PAGE_DB;
    p->start_ns = uv_hrtime();
    p->start_wall_ms = list_wall_ms();
    /* Replicas: after the principal's write its pages read the primary;
     * a page a replica answered is not cached over a tombstone younger
     * than the recent-write window (any process's write). */
    bool fresh = false;
    if (pg_pool_tracks_writes(pg)) {
        struct buf key = BUF_INIT;
        list_cache_key(l, who, &key);
        fresh = pg_pool_written_recently(pg, key.data, key.len);
        buf_deinit(&key);
        if (!fresh)
            p->start_wall_ms -= pg_pool_recent_window_ms(&l->set->cfg->postgres);
    }
    int rc = pg_pool_read(pg, p->stmt, p->nparams, values, lens, p->limit, fresh, query_cb, p);
    if (rc == 0)
        p->refs++;
    else
        page_fail(p, 503, rc == -EBUSY ? "backend_busy" : "db_unavailable");
}

/* --- Redis's answer ------------------------------------------------------------------ */

void list_page_cached(struct page *p, str_t v, int err)
{
    struct listing *l = p->list;
    if (err == -EBUSY) {
        page_fail(p, 503, "backend_busy"); /* not sent on to PostgreSQL, like resource reads */
        return;
    }
    if (err == -ECANCELED) {
        page_fail(p, 503, "shutting_down");
        return;
    }
    if (err < 0) {
        (*l->m_degraded)++;
    } else if (v.p) {
        uint64_t expires;
        int rc = cursor_page_decode(v, p->limit, (size_t)l->cfg->max_cursor_bytes, &expires, &p->next, &p->ids);
        if (rc == 0 && expires > list_wall_ms()) {
            p->from_cache = true;
            page_resolve(p);
            return;
        }
        if (rc != 0)
            (*l->m_err[LERR_INVALID_CACHED])++; /* the write-back replaces it */
        id_list_deinit(&p->ids);
        id_list_init(&p->ids);
        buf_reset(&p->next);
    }
    page_query(p);
}

static void page_load(struct page *p)
{
    struct listing *l = p->list;
    struct redis_pool *redis = l->set->redis;
    l->n_loading++;
    p->state = PAGE_CACHE;
    if (l->cfg->ttl > 0 && redis) {
        int rc = redis_pool_up(redis) ? list_cache_lookup(p) : -EAGAIN;
        if (rc == 0)
            return;
        if (rc == -EBUSY) {
            page_fail(p, 503, "backend_busy");
            return;
        }
        (*l->m_degraded)++;
    }
    page_query(p);
}

/* --- requests ------------------------------------------------------------------------ */

/* What a request asks for, decoded from its query string. */
struct ask {
    unsigned limit;
    bool has_cursor;
    struct buf cursor;          /* as sent (percent-decoded): canonical, so part of the field */
    struct buf cursor_text;
    size_t param_len[LIST_MAX_PARAMS];
    bool has_param[LIST_MAX_PARAMS];
    char param[LIST_MAX_PARAMS][IDS_MAX_LEN];
};

/* 0, or the 400 code. A repeated parameter: the last one counts. */
static const char *parse_ask(const struct listing *l, const struct req *r, struct ask *a)
{
    const struct cfg_listing *c = l->cfg;
    str_t rest = r->msg.query, k, v;
    struct buf key = BUF_INIT, val = BUF_INIT;
    const char *bad = NULL;
    a->limit = (unsigned)c->default_limit;
    while (bad == NULL && url_query_next(&rest, &k, &v)) {
        buf_reset(&key);
        buf_reset(&val);
        if (url_decode(k, true, &key) != 0)
            continue; /* not a parameter batchd knows */
        if (str_eq(buf_str(&key), STR_LIT("limit"))) {
            size_t digits = url_decode(v, true, &val) == 0 ? strspn(val.data ? val.data : "", "0123456789") : 0;
            if (digits == 0 || digits != val.len) {
                bad = "invalid_limit";
                continue;
            }
            const char *d = val.data + strspn(val.data, "0");
            /* Over max_limit is capped, however long the number. */
            uint64_t n = strlen(d) > 9 ? UINT64_MAX : strtoull(d, NULL, 10);
            if (n == 0)
                bad = "invalid_limit";
            a->limit = n > (uint64_t)c->max_limit ? (unsigned)c->max_limit : (unsigned)n;
        } else if (str_eq(buf_str(&key), STR_LIT("after"))) {
            buf_reset(&a->cursor);
            buf_reset(&a->cursor_text);
            a->has_cursor = true;
            if (url_decode(v, true, &a->cursor) != 0 ||
                cursor_decode(buf_str(&a->cursor), (size_t)c->max_cursor_bytes, &a->cursor_text) != 0)
                bad = "invalid_cursor";
        } else {
            for (unsigned i = 0; i < c->params.n; i++) {
                if (!str_eq(buf_str(&key), str_cstr(c->params.items[i])))
                    continue;
                size_t n = 0;
                if (url_decode_to(v, true, a->param[i], IDS_MAX_LEN, &n) != 0 || !ids_valid(a->param[i], n))
                    bad = "invalid_param";
                a->has_param[i] = true;
                a->param_len[i] = n;
            }
        }
    }
    buf_deinit(&key);
    buf_deinit(&val);
    return bad;
}

/* Takes *tkey (left empty). */
static struct page *page_new(struct listing *l, struct req *r, const struct ask *a, struct buf *tkey,
                             size_t field_off)
{
    struct list_set *s = l->set;
    struct page *p = mem_calloc(1, sizeof(*p));
    p->list = l;
    p->refs = 1; /* the table's */
    p->stmt = l->stmt;
    p->nparams = l->nparams;
    p->limit = a->limit;
    p->waiters_tail = &p->waiters;
    id_list_init(&p->ids);
    p->tkey = *tkey;
    *tkey = BUF_INIT;
    p->field_off = field_off;
    p->arg_len[0] = a->has_cursor ? (int32_t)a->cursor_text.len : -1;
    if (a->has_cursor)
        buf_append(&p->args, a->cursor_text.data ? a->cursor_text.data : "", a->cursor_text.len);
    for (unsigned i = 0; i + 3 < p->nparams; i++) {
        p->arg_len[i + 1] = a->has_param[i] ? (int32_t)a->param_len[i] : -1;
        if (a->has_param[i])
            buf_append(&p->args, a->param[i], a->param_len[i]);
    }
    s->n_pages++;
    /* Into the table, and under its principal for invalidations. */
    hashtab_add(&l->pages, &p->hnode, p->tkey.data, p->tkey.len, hashtab_hash(p->tkey.data, p->tkey.len));
    struct hashtab_node *n = hashtab_find(&l->owners, r->principal, r->principal_len);
    struct list_owner *o;
    if (n) {
        o = hashtab_entry(n, struct list_owner, hnode);
    } else {
        o = mem_alloc(sizeof(*o) + r->principal_len + 1);
        o->len = r->principal_len;
        memcpy(o->principal, r->principal, r->principal_len);
        o->principal[o->len] = '\0';
        LIST_INIT(&o->pages);
        hashtab_add(&l->owners, &o->hnode, o->principal, o->len, hashtab_hash(o->principal, o->len));
    }
    LIST_INSERT_HEAD(&o->pages, p, owner_link);
    p->owner = o;
    return p;
}

static void add_waiter(struct page *p, struct req *r)
{
    struct waiter *w = mem_alloc(sizeof(*w));
    w->next = NULL;
    w->r = r;
    *p->waiters_tail = w;
    p->waiters_tail = &w->next;
    p->list->n_waiters++;
}


/* The principal is known (identity_gate). */
static void page_allowed(struct req *r, void *data)
{
    struct listing *l = data;
    const struct cfg_listing *c = l->cfg;
    if (r->principal == NULL) { /* the gate lets none through; keep it so */
        req_add_header(r, "WWW-Authenticate", "Bearer");
        req_error(r, 401, "unauthorized");
        return;
    }
    struct ask a;
    memset(&a, 0, offsetof(struct ask, param));
    const char *bad = parse_ask(l, r, &a);
    if (bad) {
        respond_error(l, r, 400, bad);
        goto out;
    }
    /* The table key: the principal (length first, so that it cannot run
     * into the field), then the cache field. */
    struct buf tkey = BUF_INIT;
    uint16_t plen = r->principal_len;
    buf_append(&tkey, &plen, 2);
    buf_append(&tkey, r->principal, plen);
    size_t field_off = tkey.len;
    str_t values[LIST_MAX_PARAMS];
    for (unsigned i = 0; i < c->params.n; i++)
        values[i] = a.has_param[i] ? str_make(a.param[i], a.param_len[i]) : STR_NULL;
    cursor_page_field(l->query_hash, a.limit, a.has_cursor ? buf_str(&a.cursor) : STR_NULL,
                      (const char *const *)c->params.items, values, c->params.n, &tkey);
    struct hashtab_node *n = hashtab_find(&l->pages, tkey.data, tkey.len);
    if (l->n_waiters >= LIST_MAX_WAITERS) {
        (*l->m_waiters_full)++;
        respond_error(l, r, 503, "list_busy");
    } else if (n) {
        struct page *p = hashtab_entry(n, struct page, hnode);
        (*l->m_joins)++;
        if (p->state == PAGE_DONE) {
            add_waiter(p, r);
            answer_start(p, take_waiters(p));
        } else {
            add_waiter(p, r);
        }
    } else if (l->n_loading >= (unsigned)c->max_pages_in_flight) {
        (*l->m_busy)++;
        respond_error(l, r, 503, "list_busy");
    } else {
        struct page *p = page_new(l, r, &a, &tkey, field_off);
        add_waiter(p, r);
        page_load(p);
    }
    buf_deinit(&tkey);
out:
    buf_deinit(&a.cursor);
    buf_deinit(&a.cursor_text);
}

static void handle_page(struct req *r, void *data)
{
    identity_gate(r, ACCESS_AUTHENTICATED, false, page_allowed, data);
}

void list_set_add_routes(struct list_set *s, struct router *rt)
{
    for (unsigned i = 0; i < s->n; i++)
        if (!s->lists[i]->retired)
            router_add(rt, ROUTE_M(HTTP_GET), s->lists[i]->cfg->path, handle_page, s->lists[i], 0);
}
