/*
 * sse_access: who may subscribe to, or publish on, a stream whose access
 * is not public.
 *
 *   GET/POST {path} ──identity_gate──> principal ──access = owner──> resource_fetch(owner_resource, {id})
 *                        │ 401/403/503                               │ found, owner_field = principal ──> go on
 *                        ▼                                           │ not read: GET 200 "retry:", POST 503
 *                                                                    ▼ anything else ──> 404 not_found
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
#include "proto/url.h"

/* An owner lookup in flight (allocated only once the principal is known). */
struct access_check {
    struct req *r;
    struct sse_stream *def;
    bool subscribe;
    uint16_t id_len;
    char id[IDS_MAX_LEN + 1];
};

static void granted(struct req *r, struct sse_stream *def, bool subscribe, str_t id)
{
    if (subscribe)
        sse_subscribe_granted(r, def, id);
    else
        sse_publish_granted(r, def, id);
}

static void owner_cb(void *ctx, const struct fetched *f, unsigned n, int fail)
{
    struct access_check *a = ctx;
    struct req *r = a->r;
    struct sse_stream *def = a->def;
    if (r->conn == NULL) { /* gone while its owner was looked up */
        free(a);
        req_error(r, 499, "client_closed");
        return;
    }
    struct resource *res = resource_set_find(def->hub->resources, def->cfg->owner_resource);
    if ((fail || n != 1) && a->subscribe) {
        /* Any status but 200 is final for EventSource: a browser that met
         * a restarting batchd (listening before its backends are up) would
         * never come back. A 200 "retry:" brings it back. */
        free(a);
        sse_turn_away(r, def, TURN_AWAY_OWNER_UNAVAILABLE);
    } else if (fail || n != 1) {
        free(a);
        req_add_header(r, "Retry-After", "1");
        req_error(r, 503, fail == 500 ? "owner_lookup_failed" : "db_unavailable");
    } else if (res == NULL || f[0].result != FETCH_FOUND ||
               !resource_owned_by(resource_cfg(res), f[0].doc, f[0].doc_len, r->principal, r->principal_len)) {
        (*def->m_not_owner)++;
        free(a);
        req_error(r, 404, "not_found");
    } else {
        char id[IDS_MAX_LEN + 1];
        size_t len = a->id_len;
        bool subscribe = a->subscribe;
        memcpy(id, a->id, len);
        free(a);
        granted(r, def, subscribe, str_make(id, len));
    }
}

/* The principal is known: for access = owner, look up the owner. */
static void allowed(struct req *r, struct sse_stream *def, bool subscribe)
{
    char id[IDS_MAX_LEN];
    str_t raw;
    size_t len;
    /* The handler checked {id} before the gate; decode it again here. */
    if (!req_param(r, "id", &raw) || url_decode_to(raw, false, id, sizeof(id), &len) != 0 ||
        !ids_valid(id, len)) {
        req_error(r, 400, "invalid_id");
        return;
    }
    if (def->cfg->access != ACCESS_OWNER) {
        granted(r, def, subscribe, str_make(id, len));
        return;
    }
    struct resource *res = resource_set_find(def->hub->resources, def->cfg->owner_resource);
    if (res == NULL) { /* a reload removed it: refuse rather than guess */
        req_error(r, 404, "not_found");
        return;
    }
    struct access_check *a = mem_alloc(sizeof(*a));
    a->r = r;
    a->def = def;
    a->subscribe = subscribe;
    a->id_len = (uint16_t)len;
    memcpy(a->id, id, len);
    a->id[len] = '\0';
    str_t one = str_make(a->id, len);
    resource_fetch(res, &one, 1, owner_cb, a);
}

static void allowed_subscribe(struct req *r, void *data)
{
    allowed(r, data, true);
}

static void allowed_publish(struct req *r, void *data)
{
    allowed(r, data, false);
}

/* Forward auth could not answer: a subscriber is told to come back (a
 * non-200 would be final for EventSource), as for owner_unavailable. */
static void auth_unavailable(struct req *r, void *data)
{
    sse_turn_away(r, data, TURN_AWAY_AUTH_UNAVAILABLE);
}

void sse_access_check(struct req *r, struct sse_stream *def, str_t id, bool subscribe)
{
    if (def->cfg->access == ACCESS_PUBLIC) {
        granted(r, def, subscribe, id);
        return;
    }
    if (subscribe)
        identity_gate_stream(r, (enum cfg_access)def->cfg->access, allowed_subscribe,
                             auth_unavailable, def);
    else
        identity_gate(r, (enum cfg_access)def->cfg->access, false, allowed_publish, def);
}
