/*
 * sse_access: who may subscribe to, or publish on, a stream whose access
 * is not public.
 *
 *   GET/POST {path} ──identity_gate──> principal ──access = owner──> resource_fetch(owner_resource, {id})
 *                        │ 401/403/503                               │ found, owner_field = principal ──> go on
 *                        ▼                                           ▼ anything else ──> 404 not_found
 *
 * The owner lookup is an ordinary coalesced read: it joins the loop
 * iteration's MGET with every other read of that resource, and its
 * document is cached once for everybody. Someone else's stream answers
 * 404, as a missing one does, so existence does not leak.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/auth/identity.h"
#include "daemon/cache/resource.h"
#include "daemon/http/req.h"
#include "daemon/sse/sse_int.h"
#include "proto/ids.h"
#include "proto/mem.h"

struct access_check {
    struct req *r;
    struct sse_stream *def;
    sse_access_fn fn;
    uint16_t id_len;
    char id[IDS_MAX_LEN + 1];
};

static void go_on(struct access_check *a)
{
    struct req *r = a->r;
    struct sse_stream *def = a->def;
    sse_access_fn fn = a->fn;
    char id[IDS_MAX_LEN + 1];
    size_t n = a->id_len;
    memcpy(id, a->id, n + 1);
    free(a);
    fn(r, def, str_make(id, n));
}

static void owner_cb(void *ctx, const struct fetched *f, unsigned n, int fail)
{
    struct access_check *a = ctx;
    struct req *r = a->r;
    if (r->conn == NULL) { /* gone while its owner was looked up */
        free(a);
        req_error(r, 499, "client_closed");
        return;
    }
    if (fail || n != 1) {
        free(a);
        req_add_header(r, "Retry-After", "1");
        req_error(r, 503, fail == 500 ? "owner_lookup_failed" : "db_unavailable");
        return;
    }
    struct resource *res = resource_set_find(a->def->hub->resources, a->def->cfg->owner_resource);
    if (res == NULL || f[0].result != FETCH_FOUND ||
        !resource_owned_by(resource_cfg(res), f[0].doc, f[0].doc_len, r->principal, r->principal_len)) {
        (*a->def->m_not_owner)++;
        free(a);
        req_error(r, 404, "not_found");
        return;
    }
    go_on(a);
}

static void allowed_cb(struct req *r, void *data)
{
    struct access_check *a = data;
    if (a->def->cfg->access != ACCESS_OWNER) {
        go_on(a);
        return;
    }
    struct resource *res = resource_set_find(a->def->hub->resources, a->def->cfg->owner_resource);
    if (res == NULL) { /* a reload removed it: refuse rather than guess */
        free(a);
        req_error(r, 404, "not_found");
        return;
    }
    str_t id = str_make(a->id, a->id_len);
    resource_fetch(res, &id, 1, owner_cb, a);
}

void sse_access_check(struct req *r, struct sse_stream *def, str_t id, bool sse, sse_access_fn fn)
{
    if (def->cfg->access == ACCESS_PUBLIC) {
        fn(r, def, id);
        return;
    }
    struct access_check *a = mem_alloc(sizeof(*a));
    a->r = r;
    a->def = def;
    a->fn = fn;
    a->id_len = (uint16_t)id.len;
    memcpy(a->id, id.p, id.len);
    a->id[id.len] = '\0';
    identity_gate(r, (enum cfg_access)def->cfg->access, sse, allowed_cb, a);
}
