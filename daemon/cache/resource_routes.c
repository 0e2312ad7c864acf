/*
 * resource_routes: the HTTP side of entity reads. Each of the three forms
 * of a read (GET {path}/{id}, GET {path}?ids=a,b, POST {path}/_batch) is
 * checked and decoded here into a list of ids for resource_start_read;
 * PURGE {path}/{id} and the proxy's write matching find the resource and
 * id an invalidation is for.
 */
#include "daemon/cache/resource.h"
#include "daemon/cache/resource_int.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/auth/identity.h"
#include "daemon/http/auth.h"
#include "daemon/http/req.h"
#include "proto/ids.h"
#include "proto/jtext.h"
#include "proto/mem.h"
#include "proto/url.h"

static void start_list_read(struct resource *res, struct req *r, const struct id_list *ids)
{
    str_t stack[64];
    str_t *v = ids->n <= 64 ? stack : mem_alloc(ids->n * sizeof(*v));
    for (unsigned i = 0; i < ids->n; i++)
        v[i] = id_list_get(ids, i);
    resource_start_read(res, r, v, ids->n, false);
    if (v != stack)
        free(v);
}

static void bad_ids(struct req *r, int rc)
{
    req_error(r, 400, rc == -E2BIG ? "too_many_ids" : "invalid_id");
}

static void handle_single_allowed(struct req *r, void *data)
{
    struct resource *res = data;
    str_t raw;
    char id[IDS_MAX_LEN];
    size_t n;
    /* Decoded on the stack: a single read allocates nothing here. */
    if (!req_param(r, "id", &raw) || url_decode_to(raw, false, id, sizeof(id), &n) != 0 || !ids_valid(id, n)) {
        bad_ids(r, -EINVAL);
        return;
    }
    str_t one = str_make(id, n);
    resource_start_read(res, r, &one, 1, true);
}

struct list_scratch;
static void resource_routes_drain_one(struct list_scratch *sc);

/* What decoding ?ids= needs, kept from request to request (one loop, one
 * thread): a warm list read allocates nothing. Answering can resume the
 * connection's parser and so run this handler again before it returns:
 * that inner call uses memory of its own. */
static struct list_scratch {
    struct id_list ids;
    struct buf key, val;
    bool busy;
} scratch; /* all zero: empty lists and buffers */

#define SCRATCH_KEEP_BYTES (64 * 1024)

static void resource_routes_drain_one(struct list_scratch *sc)
{
    id_list_deinit(&sc->ids);
    buf_deinit(&sc->key);
    buf_deinit(&sc->val);
}

void resource_routes_drain(void)
{
    resource_routes_drain_one(&scratch);
}

static void handle_list_allowed(struct req *r, void *data)
{
    struct resource *res = data;
    struct list_scratch own;
    memset(&own, 0, sizeof(own));
    struct list_scratch *sc = scratch.busy ? &own : &scratch;
    sc->busy = true;
    id_list_clear(&sc->ids);
    str_t rest = r->msg.query, k, v;
    bool seen = false;
    int rc = 0;
    while (rc == 0 && url_query_next(&rest, &k, &v)) {
        if (!str_eq(k, STR_LIT("ids"))) { /* the usual spelling needs no decoding */
            buf_reset(&sc->key);
            if (url_decode(k, true, &sc->key) != 0 || !str_eq(buf_str(&sc->key), STR_LIT("ids")))
                continue;
        }
        seen = true;
        if (memchr(v.p, '%', v.len) == NULL && memchr(v.p, '+', v.len) == NULL) {
            /* Nothing to decode: the ids are read where they are. */
            rc = id_list_add_csv(&sc->ids, v, (unsigned)res->cfg->max_ids);
            continue;
        }
        buf_reset(&sc->val);
        rc = url_decode(v, true, &sc->val) != 0 ? -EINVAL
                                                 : id_list_add_csv(&sc->ids, buf_str(&sc->val), (unsigned)res->cfg->max_ids);
    }
    if (rc != 0)
        bad_ids(r, rc);
    else if (!seen)
        req_error(r, 400, "missing_ids");
    else
        start_list_read(res, r, &sc->ids);
    sc->busy = false;
    if (sc == &own || sc->ids.bytes.cap + sc->key.cap + sc->val.cap > SCRATCH_KEEP_BYTES)
        resource_routes_drain_one(sc);
}

static void handle_batch_allowed(struct req *r, void *data)
{
    struct resource *res = data;
    json_error_t jerr;
    json_t *doc = json_loadb(r->msg.body.data ? r->msg.body.data : "", r->msg.body.len, 0, &jerr);
    json_t *arr = doc ? json_object_get(doc, "ids") : NULL;
    if (doc == NULL || !json_is_object(doc)) {
        req_error(r, 400, "bad_json");
    } else if (!json_is_array(arr)) {
        req_error(r, 400, "missing_ids");
    } else {
        struct id_list ids;
        id_list_init(&ids);
        int rc = 0;
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v) {
            if (!json_is_string(v)) {
                rc = -EINVAL;
                break;
            }
            rc = id_list_add(&ids, json_string_value(v), json_string_length(v), (unsigned)res->cfg->max_ids);
            if (rc != 0)
                break;
        }
        if (rc != 0)
            bad_ids(r, rc);
        else if (ids.n == 0)
            req_error(r, 400, "missing_ids");
        else
            start_list_read(res, r, &ids);
        id_list_deinit(&ids);
    }
    json_decref(doc);
}

struct purge {
    struct req *r;
    char id[IDS_MAX_LEN + 1];
};

static void purge_done_cb(void *ctx, int err)
{
    struct purge *p = ctx;
    if (err < 0) {
        req_add_header(p->r, "Retry-After", "1");
        req_error(p->r, 503, "cache_unavailable");
    } else {
        struct buf body = BUF_INIT;
        buf_append_str(&body, "{\"purged\":");
        jtext_append_string(&body, p->id, strlen(p->id));
        buf_append_str(&body, "}\n");
        req_respond_buf(p->r, 200, "application/json", &body);
        buf_deinit(&body);
    }
    free(p);
}

static void handle_purge(struct req *r, void *data)
{
    struct resource *res = data;
    if (auth_require(r, res->set->cfg->batchd.admin_token) != 0)
        return;
    str_t raw;
    char id[IDS_MAX_LEN];
    size_t n;
    if (!req_param(r, "id", &raw) || url_decode_to(raw, false, id, sizeof(id), &n) != 0 || !ids_valid(id, n)) {
        req_error(r, 400, "invalid_id");
        return;
    }
    struct purge *p = mem_calloc(1, sizeof(*p));
    p->r = r;
    memcpy(p->id, id, n);
    if (resource_set_invalidate(res->set, res->cfg->name, id, n, purge_done_cb, p) != 0)
        purge_done_cb(p, -EAGAIN);
}

/* --- lookups for PURGE and the proxy ------------------------------------------------------ */

struct resource *resource_set_find(struct resource_set *s, const char *name)
{
    for (unsigned i = 0; s && i < s->n; i++)
        if (!s->res[i]->retired && strcmp(s->res[i]->cfg->name, name) == 0)
            return s->res[i];
    return NULL;
}

const struct cfg_resource *resource_cfg(const struct resource *res)
{
    return res->cfg;
}

int resource_set_invalidate(struct resource_set *s, const char *resource, const char *id,
                            size_t id_len, void (*cb)(void *ctx, int err), void *ctx)
{
    for (unsigned i = 0; i < s->n; i++)
        if (!s->res[i]->retired && strcmp(s->res[i]->cfg->name, resource) == 0)
            return resource_invalidate(s->res[i], id, id_len, cb, ctx);
    return -ENOENT;
}

unsigned resource_set_match_write(struct resource_set *s, str_t path, struct resource_match *out,
                                  unsigned max)
{
    unsigned n = 0;
    if (s == NULL)
        return 0;
    for (unsigned i = 0; i < s->n && n < max; i++) {
        if (s->res[i]->retired)
            continue;
        const struct cfg_list *l = &s->res[i]->cfg->invalidate;
        for (unsigned k = 0; k < l->n && n < max; k++) {
            struct url_params params;
            str_t raw;
            if (url_template_match(l->items[k], path, &params) < 0 || !url_params_get(&params, "id", &raw))
                continue;
            size_t len;
            if (url_decode_to(raw, false, out[n].id, IDS_MAX_LEN, &len) == 0 && ids_valid(out[n].id, len)) {
                out[n].res = s->res[i];
                out[n].id[len] = '\0';
                out[n].id_len = len;
                n++;
            }
            break; /* one match per resource */
        }
    }
    return n;
}

/* Each read is counted, then goes through the resource's access gate
 * (public: straight on; otherwise a principal first, daemon/auth/). */
#define GATED(name, form)                                                         \
    static void name(struct req *r, void *data)                                   \
    {                                                                             \
        struct resource *res = data;                                              \
        (*res->m_requests[form])++;                                               \
        identity_gate(r, (enum cfg_access)res->cfg->access, false, name##_allowed, res); \
    }
GATED(handle_single, READ_SINGLE)
GATED(handle_list, READ_LIST)
GATED(handle_batch, READ_BATCH)
#undef GATED

void resource_set_add_routes(struct resource_set *s, struct router *rt)
{
    for (unsigned i = 0; i < s->n; i++) {
        struct resource *res = s->res[i];
        if (res->retired)
            continue;
        struct buf p = BUF_INIT;
        buf_appendf(&p, "%s/{id}", res->cfg->path);
        router_add(rt, ROUTE_M(HTTP_GET), p.data, handle_single, res, 0);
        router_add(rt, ROUTE_M(HTTP_PURGE), p.data, handle_purge, res, 0);
        buf_reset(&p);
        buf_appendf(&p, "%s/_batch", res->cfg->path);
        router_add(rt, ROUTE_M(HTTP_POST), p.data, handle_batch, res, 0);
        router_add(rt, ROUTE_M(HTTP_GET), res->cfg->path, handle_list, res, 0);
        buf_deinit(&p);
    }
}
