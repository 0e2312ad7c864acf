/*
 * identity: who is asking, and the gate in front of routes that care.
 * See identity.h for the credential order and the answers.
 *
 *   identity_gate ──public──> fn
 *        │
 *        ▼ resolve(r)
 *   bearer / cookie / ?access_token ──> jwt cache ──hit──> principal
 *        │                               │miss
 *        │                               ▼
 *        │                           jwt_verify ──ok──> principal (cached until exp, <= 5 min)
 *        │   (before all that: the connection's memo of its last token, conn.h)
 *        │                                      └─no──> 401 invalid_token
 *        ▼ (no JWT source; Cookie or Authorization present, check_url set)
 *   forward_check ──(maybe later)──> principal | 401 | 403 | 503
 *
 * One identity lives for the process; a reload reconfigures it (new keys,
 * an emptied JWT cache, forward auth's new settings) or is refused when a
 * key file is bad. Requests waiting on a check hold a `struct identity_wait`; when
 * the client has gone meanwhile (r->conn == NULL) the answer only frees it.
 */
#include "daemon/auth/identity.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/auth/cred_cache.h"
#include "daemon/auth/forward.h"
#include "daemon/auth/jwt.h"
#include "daemon/http/req.h"
#include "daemon/log.h"
#include "daemon/proxy/subrequest.h"
#include "daemon/metrics.h"
#include "proto/cred.h"
#include "proto/mem.h"
#include "proto/url.h"

/* A verified token is trusted this long at most without verifying again. */
#define JWT_CACHE_MAX_MS (5 * 60 * 1000)

/* How a resolution ended, with the reason label of batchd_auth_rejected_total. */
#define ID_RESULTS(X)                          \
    X(OK, "ok")                                \
    X(MISSING, "missing_credential")           \
    X(INVALID, "invalid_token")                \
    X(DENIED, "denied")                        \
    X(FORBIDDEN, "forbidden")                  \
    X(UNAVAILABLE, "auth_unavailable")

enum id_result {
#define X(name, label) ID_##name,
    ID_RESULTS(X)
#undef X
    ID__COUNT
};

struct identity {
    uv_loop_t *loop;
    bool configured;                /* an [auth] section */
    const struct cfg_auth *cfg;     /* in the running config */
    struct jwt_keys *keys;          /* NULL: no JWT verification */
    struct cred_cache *jwt_cache;
    struct forward_auth *fwd;       /* NULL: no check_url */
    struct upstream *up;
    uint32_t gen;                   /* bumped by every reload: older memos are void */
    uint64_t *m_result[ID__COUNT];
    uint64_t *m_jwt[JWT__COUNT];
    uint64_t *m_method_jwt, *m_method_forward;
    uint64_t *m_memo_hits;
};

static struct identity *current;

typedef void (*resolved_fn)(struct req *r, enum id_result res, void *ctx);

/* A request being resolved: on the caller's stack, or copied to the heap
 * while forward auth is asked. */
struct identity_wait {
    struct req *r;
    resolved_fn done;
    identity_fn fn;             /* identity_gate */
    identity_fn unavailable;    /* identity_gate_stream: answers ID_UNAVAILABLE */
    void *data;
    identity_lookup_fn lookup;  /* identity_lookup */
    void *ctx;
    bool cancelled;             /* identity_cancel: r may be gone, answer nobody */
};

/* --- set-up --------------------------------------------------------------------------- */

static void metrics_init(struct identity *id)
{
    static const char *const labels[ID__COUNT] = {
#define X(name, label) label,
        ID_RESULTS(X)
#undef X
    };
    metrics_counter_family("batchd_auth_requests_total", "result", labels, ID__COUNT,
                           "Requests whose principal was asked for, by outcome.", id->m_result);
    /* From 1: JWT_OK is no refusal. */
    metrics_counter_family("batchd_auth_jwt_rejected_total", "reason", jwt_result_labels + 1, JWT__COUNT - 1,
                           "Bearer tokens refused, by why (the request got 401 invalid_token).", id->m_jwt + 1);
    id->m_method_jwt = metrics_counter("batchd_auth_verifications_total", "method=\"jwt\"",
                                       "Credentials verified (not answered from a cache), by method.");
    id->m_method_forward = metrics_counter("batchd_auth_verifications_total", "method=\"forward\"",
                                           "Credentials verified (not answered from a cache), by method.");
    id->m_memo_hits = metrics_counter("batchd_auth_connection_memo_hits_total", "",
                                      "Requests whose token was the one their keep-alive connection proved last "
                                      "(no hashing, no cache lookup).");
}

/* Loads cfg's keys into a fresh set; on failure leaves id as it was. */
static int apply(struct identity *id, const struct config *cfg, struct buf *errors)
{
    const struct cfg_auth *a = &cfg->auth;
    struct jwt_keys *keys = NULL;
    if (cfg->has_auth && (a->jwt_secret_file[0] || a->jwt_public_keys.n)) {
        size_t before = errors->len;
        keys = jwt_keys_load(a, errors);
        if (keys == NULL) {
            if (errors->len == before)
                buf_append_str(errors, "[auth]: no JWT key could be loaded\n");
            return -1;
        }
    }
    jwt_keys_free(id->keys);
    id->keys = keys;
    /* Keys may have been rotated out: nothing verified before counts. */
    cred_cache_free(id->jwt_cache);
    id->jwt_cache = cred_cache_new("jwt", (size_t)a->check_cache_entries);
    bool forward = cfg->has_auth && a->check_url[0] != '\0' && id->up != NULL;
    if (forward && id->fwd)
        forward_auth_configure(id->fwd, a);
    else if (forward)
        id->fwd = forward_auth_new(id->loop, a, id->up);
    else if (id->fwd) {
        forward_auth_free(id->fwd);
        id->fwd = NULL;
    }
    id->configured = cfg->has_auth;
    id->cfg = a;
    id->gen++;
    return 0;
}

struct identity *identity_new(uv_loop_t *loop, const struct config *cfg, struct upstream *up,
                              struct buf *errors)
{
    struct identity *id = mem_calloc(1, sizeof(*id));
    id->loop = loop;
    id->up = up;
    metrics_init(id);
    if (apply(id, cfg, errors) != 0) {
        identity_free(id);
        return NULL;
    }
    return id;
}

int identity_reconfigure(struct identity *id, const struct config *cfg, struct buf *errors)
{
    return apply(id, cfg, errors);
}

void identity_free(struct identity *id)
{
    if (id == NULL)
        return;
    if (current == id)
        current = NULL;
    if (id->fwd)
        forward_auth_free(id->fwd);
    jwt_keys_free(id->keys);
    cred_cache_free(id->jwt_cache);
    free(id);
}

void identity_set_current(struct identity *id)
{
    current = id;
}

bool identity_enabled(void)
{
    return current != NULL && current->configured;
}

const char *identity_forward_header(void)
{
    if (current == NULL || !current->configured || current->cfg->forward_principal_header[0] == '\0')
        return NULL;
    return current->cfg->forward_principal_header;
}

/* --- resolving ---------------------------------------------------------------------------- */

_Static_assert(JWT_MAX_PRINCIPAL <= REQ_MAX_PRINCIPAL, "a JWT principal fits in a request");
_Static_assert(SUBREQUEST_VALUE_MAX <= REQ_MAX_PRINCIPAL, "a forward-auth principal fits in a request");

/* n is at most REQ_MAX_PRINCIPAL: jwt.c and forward.c refuse longer ones. */
static void set_principal(struct req *r, const char *p, size_t n)
{
    memcpy(r->principal_buf, p, n);
    r->principal_buf[n] = '\0';
    r->principal = r->principal_buf;
    r->principal_len = (uint16_t)n;
}

static int64_t wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

static enum id_result check_jwt(struct identity *id, struct req *r, str_t token)
{
    uint64_t now = uv_now(id->loop);
    str_t known;
    /* A keep-alive client sends the same token request after request. */
    if (req_memo_get(r, 'j', token, id->gen, now, &known)) {
        (*id->m_memo_hits)++;
        set_principal(r, known.p, known.len);
        return ID_OK;
    }
    struct cred_key k;
    cred_key_of(&k, 'j', token.p, token.len, NULL, 0);
    struct buf p = BUF_INIT;
    enum id_result res = ID_INVALID;
    uint64_t until = 0;
    if (cred_cache_get(id->jwt_cache, &k, now, &p, &until) == CRED_ALLOWED) {
        res = ID_OK;
    } else {
        (*id->m_method_jwt)++;
        int64_t exp = INT64_MAX, t = wall_s();
        enum jwt_result jr = jwt_verify(id->keys, id->cfg, token.p, token.len, t, &p, &exp);
        if (jr == JWT_OK) {
            res = ID_OK;
            uint64_t ttl = JWT_CACHE_MAX_MS;
            if (exp != INT64_MAX) {
                int64_t left = exp + id->cfg->leeway_s - t;
                ttl = left <= 0 ? 0 : (uint64_t)left * 1000 < ttl ? (uint64_t)left * 1000 : ttl;
            }
            until = now + ttl;
            if (ttl > 0)
                cred_cache_put(id->jwt_cache, &k, p.data, p.len, until);
        } else {
            (*id->m_jwt[jr])++;
        }
    }
    if (res == ID_OK) {
        set_principal(r, p.data, p.len);
        if (until > now)
            req_memo_put(r, 'j', token, p.data, p.len, id->gen, until);
    }
    buf_deinit(&p);
    return res;
}

/* The JWT the request carries, if batchd verifies JWTs: the bearer token,
 * else the jwt_cookie, else (SSE) ?access_token=, percent-decoded into tmp.
 * 1 found, 0 none, -1 an access_token that is not even text. */
static int find_jwt(struct identity *id, struct req *r, bool sse, struct buf *tmp, str_t *token)
{
    if (id->keys == NULL)
        return 0;
    str_t authz = req_header(r, "authorization");
    if (authz.p && cred_bearer(authz, token))
        return 1;
    const char *name = id->cfg->jwt_cookie;
    str_t cookie = req_header(r, "cookie");
    if (name[0] && cookie.p && cred_cookie(cookie, str_make(name, strlen(name)), token) && token->len)
        return 1;
    if (sse && id->cfg->query_token) {
        str_t rest = r->msg.query, k, v;
        while (url_query_next(&rest, &k, &v)) {
            if (!str_eq(k, STR_LIT("access_token")))
                continue;
            if (url_decode(v, true, tmp) != 0 || tmp->len == 0)
                return -1;
            *token = buf_str(tmp);
            return 1;
        }
    }
    return 0;
}

static void forward_cb(void *ctx, enum forward_result fr, const char *principal, size_t len)
{
    struct identity_wait *w = ctx;
    if (!w->cancelled) {
        enum id_result res = fr == FORWARD_ALLOWED     ? ID_OK
                           : fr == FORWARD_DENIED      ? ID_DENIED
                           : fr == FORWARD_FORBIDDEN   ? ID_FORBIDDEN
                                                       : ID_UNAVAILABLE;
        if (res == ID_OK)
            set_principal(w->r, principal, len);
        w->r->identity_done = true;
        w->done(w->r, res, w);
    }
    free(w);
}

/* header.payload.signature: exactly two dots. */
static bool jwt_shaped(str_t t)
{
    unsigned dots = 0;
    for (size_t i = 0; i < t.len; i++)
        dots += t.p[i] == '.';
    return dots == 2;
}

/* Resolves r: w->done(r, result, w) runs once. Most credentials are
 * decided now, with the caller's w (on its stack: nothing allocated); a
 * forward-auth check gets a heap copy, freed after its done, which is
 * returned while the check runs (NULL once done has run). */
static struct identity_wait *resolve(struct req *r, bool sse, struct identity_wait *w)
{
    struct identity *id = current;
    enum id_result res = ID_MISSING;
    if (r->identity_done) {
        w->done(r, r->principal ? ID_OK : ID_MISSING, w);
        return NULL;
    }
    if (id != NULL && id->configured) {
        struct buf tmp = BUF_INIT;
        str_t token;
        int found = find_jwt(id, r, sse, &tmp, &token);
        /* A bearer token that is not even shaped like a JWT (an app's own
         * API token) is the app's to judge when forward auth is configured. */
        if (found > 0 && id->fwd && !jwt_shaped(token))
            found = 0;
        if (found > 0)
            res = check_jwt(id, r, token);
        else if (found < 0)
            res = ID_INVALID;
        buf_deinit(&tmp);
        str_t cookie = STR_NULL, authz = STR_NULL;
        if (res == ID_MISSING && id->fwd) {
            cookie = req_header(r, "cookie");
            authz = req_header(r, "authorization");
        }
        if (cookie.p || authz.p) {
            (*id->m_method_forward)++;
            struct identity_wait *h = mem_alloc(sizeof(*h));
            *h = *w;
            forward_check(id->fwd, cookie, authz, forward_cb, h);
            return r->identity_done ? NULL : h; /* a cached verdict answered at once */
        }
    }
    r->identity_done = true;
    w->done(r, res, w);
    return NULL;
}

/* --- the gate ------------------------------------------------------------------------------ */

static void refuse(struct req *r, enum id_result res)
{
    switch (res) {
    case ID_INVALID:
        req_add_header(r, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        req_error(r, 401, "invalid_token");
        break;
    case ID_FORBIDDEN:
        req_error(r, 403, "forbidden");
        break;
    case ID_UNAVAILABLE:
        req_add_header(r, "Retry-After", "1");
        req_error(r, 503, "auth_unavailable");
        break;
    default:
        req_add_header(r, "WWW-Authenticate", "Bearer");
        req_error(r, 401, "unauthorized");
        break;
    }
}

static void gate_done(struct req *r, enum id_result res, void *ctx)
{
    const struct identity_wait *w = ctx;
    if (current)
        (*current->m_result[res])++;
    if (r->conn == NULL) /* the client went away while a check ran */
        req_error(r, 499, "client_closed");
    else if (res == ID_UNAVAILABLE && w->unavailable)
        w->unavailable(r, w->data);
    else if (res != ID_OK)
        refuse(r, res);
    else
        w->fn(r, w->data);
}

static void gate(struct req *r, enum cfg_access access, bool sse, identity_fn fn, identity_fn unavailable,
                 void *data)
{
    if (access == ACCESS_PUBLIC) {
        fn(r, data);
        return;
    }
    struct identity_wait w = { .r = r, .done = gate_done, .fn = fn, .unavailable = unavailable, .data = data };
    resolve(r, sse, &w);
}

void identity_gate(struct req *r, enum cfg_access access, bool sse, identity_fn fn, void *data)
{
    gate(r, access, sse, fn, NULL, data);
}

void identity_gate_stream(struct req *r, enum cfg_access access, identity_fn fn,
                          identity_fn unavailable, void *data)
{
    gate(r, access, true, fn, unavailable, data);
}

static void lookup_done(struct req *r, enum id_result res, void *ctx)
{
    const struct identity_wait *w = ctx;
    if (current && res != ID_MISSING)
        (*current->m_result[res])++;
    w->lookup(w->ctx, r);
}

struct identity_wait *identity_lookup(struct req *r, identity_lookup_fn cb, void *ctx)
{
    struct identity_wait w = { .r = r, .done = lookup_done, .lookup = cb, .ctx = ctx };
    return resolve(r, false, &w);
}

void identity_cancel(struct identity_wait *w)
{
    if (w)
        w->cancelled = true;
}
