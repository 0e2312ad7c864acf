/* router: method + path template -> handler. See router.h. */
#include "daemon/http/router.h"

#include <llhttp.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http/cors.h"
#include "proto/mem.h"

struct router *router_new(void)
{
    struct router *rt = mem_calloc(1, sizeof(*rt));
    rt->refs = 1;
    return rt;
}

void router_add(struct router *rt, uint64_t methods, const char *pattern, route_fn fn, void *data,
                unsigned flags)
{
    rt->routes = mem_realloc(rt->routes, (rt->n + 1) * sizeof(*rt->routes));
    struct route *r = &rt->routes[rt->n++];
    if (methods & ROUTE_M(HTTP_GET))
        methods |= ROUTE_M(HTTP_HEAD);
    *r = (struct route){ methods, mem_strdup(pattern), strcspn(pattern, "{"), strlen(pattern), fn, data, flags };
}

/* A cheap first test: the literal start of the pattern (all of it, and
 * nothing more, for a pattern without parameters). */
static bool starts_like(const struct route *r, str_t path)
{
    if (r->prefix_len == r->pattern_len && path.len != r->pattern_len)
        return false;
    return path.len >= r->prefix_len && memcmp(path.p, r->pattern, r->prefix_len) == 0;
}

void router_set_fallback(struct router *rt, route_fn fn, void *data, unsigned flags)
{
    rt->fallback = (struct route){ ~0ULL, NULL, 0, 0, fn, data, flags };
}

enum router_result router_match(const struct router *rt, uint8_t method, str_t path,
                                const struct route **route, struct url_params *params,
                                uint64_t *allowed)
{
    const struct route *best = NULL;
    int best_score = -1;
    struct url_params tmp;
    /* Routes for this method first: the usual request needs no more. */
    for (unsigned i = 0; i < rt->n; i++) {
        const struct route *r = &rt->routes[i];
        if (!(r->methods & ROUTE_M(method)) || !starts_like(r, path))
            continue;
        int score = url_template_match(r->pattern, path, &tmp);
        if (score > best_score) {
            best = r;
            best_score = score;
            *params = tmp;
        }
    }
    if (best) {
        *route = best;
        return ROUTER_FOUND;
    }
    if (rt->fallback.fn) {
        /* "Anything else" includes other methods on batchd's own paths: the
         * app may accept PUT /v1/sessions/{id} while batchd serves the GET. */
        params->n = 0;
        *route = &rt->fallback;
        return ROUTER_FOUND;
    }
    uint64_t path_methods = 0;
    for (unsigned i = 0; i < rt->n; i++) {
        const struct route *r = &rt->routes[i];
        if (starts_like(r, path) && url_template_match(r->pattern, path, &tmp) >= 0)
            path_methods |= r->methods;
    }
    if (path_methods) {
        *allowed = path_methods;
        return ROUTER_BAD_METHOD;
    }
    return ROUTER_NOT_FOUND;
}

void router_format_allow(uint64_t methods, struct buf *out)
{
    bool first = true;
    for (unsigned m = 0; m < 64; m++) {
        if (!(methods & (1ULL << m)))
            continue;
        const char *name = llhttp_method_name((llhttp_method_t)m);
        if (name == NULL || name[0] == '<')
            continue;
        if (!first)
            buf_append_str(out, ", ");
        buf_append_str(out, name);
        first = false;
    }
}

struct router *router_ref(struct router *rt)
{
    rt->refs++;
    return rt;
}

void router_unref(struct router *rt)
{
    if (rt == NULL || --rt->refs > 0)
        return;
    for (unsigned i = 0; i < rt->n; i++)
        free(rt->routes[i].pattern);
    free(rt->routes);
    cors_free(rt->cors);
    free(rt);
}
