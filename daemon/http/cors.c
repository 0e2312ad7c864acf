/*
 * cors: the [cors] policy, preflights and the headers on answers. See cors.h.
 *
 * The header lines that never change are built once with the policy, so an
 * answer costs one Origin lookup and a few appends. Refusals are counted
 * and never change the answer to a real request: the browser is what keeps
 * the page from reading it (batchd cannot tell a page from curl), so a
 * refused origin simply gets no Access-Control-* headers.
 */
#include "daemon/http/cors.h"

#include <llhttp.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http/req.h"
#include "daemon/metrics.h"
#include "proto/mem.h"

struct cors {
    struct cfg_list origins;    /* copies, lower case */
    bool any_origin;            /* origins = *: "Access-Control-Allow-Origin: *" */
    bool any_header;            /* headers = * */
    bool credentials;
    bool proxied;
    uint64_t methods;           /* ROUTE_M bits of [cors] methods */
    struct cfg_list headers;    /* lower case, for the preflight check */
    struct buf fixed;           /* Allow-Credentials and Expose-Headers lines, for every answer */
    struct buf preflight;       /* Allow-Methods, Allow-Headers and Max-Age lines */
    struct route route;         /* the preflight handler, data = this policy */
};

enum cors_preflight_result { PF_ALLOWED, PF_ORIGIN, PF_METHOD, PF_HEADERS, PF__COUNT };
static const char *const pf_labels[PF__COUNT] = { "allowed", "origin_refused", "method_refused",
                                                  "headers_refused" };
static const char *const pf_codes[PF__COUNT] = { NULL, "cors_origin_not_allowed",
                                                 "cors_method_not_allowed", "cors_header_not_allowed" };
enum cors_request_result { RQ_ALLOWED, RQ_REFUSED, RQ__COUNT };
static const char *const rq_labels[RQ__COUNT] = { "allowed", "origin_refused" };

static uint64_t *m_preflight[PF__COUNT];
static uint64_t *m_request[RQ__COUNT];

void cors_metrics_init(void)
{
    metrics_counter_family("batchd_cors_preflights_total", "result", pf_labels, PF__COUNT,
                           "CORS preflights batchd answered, by result (refusals get 403).",
                           m_preflight);
    metrics_counter_family("batchd_cors_requests_total", "result", rq_labels, RQ__COUNT,
                           "Requests with an Origin header that batchd answered or relayed under [cors], "
                           "by whether the origin may read the answer.",
                           m_request);
}

/* --- the policy ------------------------------------------------------------ */

/* The method named `name` (case-sensitive, as methods are), or -1. */
static int method_number(str_t name)
{
    for (int m = 0; m < 64; m++) {
        const char *s = llhttp_method_name((llhttp_method_t)m);
        if (s == NULL || s[0] == '<')
            continue;
        if (strlen(s) == name.len && memcmp(s, name.p, name.len) == 0)
            return m;
    }
    return -1;
}

static void copy_list(struct cfg_list *to, const struct cfg_list *from, bool lower)
{
    to->n = from->n;
    to->items = mem_calloc(from->n ? from->n : 1, sizeof(char *));
    for (unsigned i = 0; i < from->n; i++) {
        to->items[i] = mem_strdup(from->items[i]);
        for (char *p = to->items[i]; lower && *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
    }
}

static void append_joined(struct buf *b, const char *name, const struct cfg_list *l)
{
    if (l->n == 0)
        return;
    buf_append_str(b, name);
    buf_append_str(b, ": ");
    for (unsigned i = 0; i < l->n; i++) {
        if (i)
            buf_append_str(b, ", ");
        buf_append_str(b, l->items[i]);
    }
    buf_append_str(b, "\r\n");
}

static void preflight_cb(struct req *r, void *data);

struct cors *cors_new(const struct cfg_cors *cfg)
{
    struct cors *c = mem_calloc(1, sizeof(*c));
    copy_list(&c->origins, &cfg->origins, true);
    c->any_origin = cfg->origins.n == 1 && strcmp(cfg->origins.items[0], "*") == 0;
    c->any_header = cfg->headers.n == 1 && strcmp(cfg->headers.items[0], "*") == 0;
    c->credentials = cfg->credentials;
    c->proxied = cfg->proxied;
    for (unsigned i = 0; i < cfg->methods.n; i++) {
        if (strcmp(cfg->methods.items[i], "*") == 0) {
            c->methods = ~0ULL;
            continue;
        }
        int m = method_number(str_cstr(cfg->methods.items[i]));
        if (m >= 0)
            c->methods |= ROUTE_M(m);
    }
    copy_list(&c->headers, &cfg->headers, true);
    if (c->credentials)
        buf_append_str(&c->fixed, "Access-Control-Allow-Credentials: true\r\n");
    append_joined(&c->fixed, "Access-Control-Expose-Headers", &cfg->expose_headers);
    append_joined(&c->preflight, "Access-Control-Allow-Methods", &cfg->methods);
    append_joined(&c->preflight, "Access-Control-Allow-Headers", &cfg->headers);
    buf_appendf(&c->preflight, "Access-Control-Max-Age: %lld\r\n", (long long)cfg->max_age);
    c->route = (struct route){ ~0ULL, NULL, 0, 0, preflight_cb, c, 0 };
    return c;
}

static void free_list(struct cfg_list *l)
{
    for (unsigned i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
}

void cors_free(struct cors *c)
{
    if (c == NULL)
        return;
    free_list(&c->origins);
    free_list(&c->headers);
    buf_deinit(&c->fixed);
    buf_deinit(&c->preflight);
    free(c);
}

/* --- matching -------------------------------------------------------------- */

/* `s` is one of the list's items, compared without regard to case. */
static bool in_list(const struct cfg_list *l, str_t s)
{
    for (unsigned i = 0; i < l->n; i++)
        if (str_eq_ci(str_cstr(l->items[i]), s))
            return true;
    return false;
}

static bool origin_allowed(const struct cors *c, str_t origin)
{
    return origin.len > 0 && (c->any_origin || in_list(&c->origins, origin));
}

static bool header_allowed(const struct cors *c, str_t name)
{
    return c->any_header || in_list(&c->headers, name);
}

/* Every name in Access-Control-Request-Headers ("content-type,authorization"). */
static bool headers_allowed(const struct cors *c, str_t list)
{
    size_t pos = 0;
    str_t name;
    while (str_list_next(list, &pos, &name))
        if (!header_allowed(c, name))
            return false;
    return true;
}

/* Access-Control-Allow-Origin (and Vary: Origin when the answer depends on it). */
static void add_origin_lines(const struct cors *c, str_t origin, struct buf *out)
{
    if (c->any_origin && !c->credentials) {
        buf_append_str(out, "Access-Control-Allow-Origin: *\r\n");
        return;
    }
    buf_append_str(out, "Access-Control-Allow-Origin: ");
    buf_append(out, origin.p, origin.len);
    buf_append_str(out, "\r\n");
}

/* --- preflights ------------------------------------------------------------ */

static void preflight_cb(struct req *r, void *data)
{
    const struct cors *c = data;
    str_t origin = req_header(r, "origin");
    str_t method = req_header(r, "access-control-request-method");
    str_t headers = req_header(r, "access-control-request-headers");
    enum cors_preflight_result res = PF_ALLOWED;
    int m = method_number(method);
    if (!origin_allowed(c, origin))
        res = PF_ORIGIN;
    else if (m < 0 || !(c->methods & ROUTE_M(m)))
        res = PF_METHOD;
    else if (!headers_allowed(c, headers))
        res = PF_HEADERS;
    (*m_preflight[res])++;
    REQ_HEADER_LINE(r, "Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n");
    if (res != PF_ALLOWED) {
        req_error(r, 403, pf_codes[res]);
        return;
    }
    add_origin_lines(c, origin, &r->head_extra);
    buf_append(&r->head_extra, c->fixed.data, c->fixed.len);
    buf_append(&r->head_extra, c->preflight.data, c->preflight.len);
    req_respond_static(r, 204, NULL, "", 0);
}

static bool is_preflight(const struct req *r)
{
    return r->msg.method == HTTP_OPTIONS && req_header(r, "origin").p != NULL &&
           req_header(r, "access-control-request-method").p != NULL;
}

/* True when batchd, not the app, answers `method` on r's path: a route of
 * its own takes it, or nothing does and batchd answers 404/405 itself. */
static bool batchd_answers(const struct router *rt, const struct req *r, int method)
{
    const struct route *route = NULL;
    struct url_params params;
    uint64_t allowed = 0;
    if (method < 0) /* an unknown method goes where OPTIONS would */
        method = HTTP_OPTIONS;
    enum router_result rr = router_match(rt, (uint8_t)method, r->msg.path, &route, &params, &allowed);
    return rr != ROUTER_FOUND || route != &rt->fallback;
}

enum router_result cors_route(const struct cors *c, const struct router *rt, struct req *r,
                              enum router_result rr)
{
    if (is_preflight(r)) {
        int m = method_number(req_header(r, "access-control-request-method"));
        if (c->proxied || batchd_answers(rt, r, m)) {
            r->route = &c->route;
            r->params.n = 0;
            return ROUTER_FOUND;
        }
        return rr;
    }
    if (rr == ROUTER_FOUND && r->route == &rt->fallback)
        return rr; /* the app's answer: relay_head asks cors_proxied_headers */
    str_t origin = req_header(r, "origin");
    bool ok = origin_allowed(c, origin);
    if (origin.p)
        (*m_request[ok ? RQ_ALLOWED : RQ_REFUSED])++;
    if (!(c->any_origin && !c->credentials))
        REQ_HEADER_LINE(r, "Vary: Origin\r\n");
    if (!ok)
        return rr;
    add_origin_lines(c, origin, &r->head_extra);
    buf_append(&r->head_extra, c->fixed.data, c->fixed.len);
    return rr;
}

bool cors_proxied_headers(const struct cors *c, const struct req *r, struct buf *lines)
{
    if (c == NULL || !c->proxied)
        return false;
    str_t origin = req_header(r, "origin");
    bool ok = origin_allowed(c, origin);
    if (origin.p)
        (*m_request[ok ? RQ_ALLOWED : RQ_REFUSED])++;
    if (!(c->any_origin && !c->credentials))
        buf_append_str(lines, "Vary: Origin\r\n");
    if (ok) {
        add_origin_lines(c, origin, lines);
        buf_append(lines, c->fixed.data, c->fixed.len);
    }
    return true;
}
