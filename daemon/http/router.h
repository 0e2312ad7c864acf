/*
 * router: method + path template -> handler.
 *
 * A router is built once (at start-up or on SIGHUP) and then only read.
 * Requests in flight hold a reference, so a reload can swap routers without
 * pulling a route out from under a running handler.
 *
 * Matching: among the routes whose template matches the path, the one with
 * the most literal segments wins ("/v1/sessions/_batch" beats
 * "/v1/sessions/{id}"); ties go to the first added. A path that matches
 * only with other methods goes to the fallback when there is one, and
 * otherwise gives ROUTER_BAD_METHOD and the allowed set.
 */
#ifndef BATCHD_ROUTER_H
#define BATCHD_ROUTER_H

#include <stdint.h>

#include "proto/buf.h"
#include "proto/url.h"

struct req;
typedef void (*route_fn)(struct req *r, void *data);

#define ROUTE_M(method) (1ULL << (method))

enum route_flags {
    /* The handler runs as soon as the head is in, alone at the front of the
     * connection's pipeline, and takes the body as it arrives (req_body_*).
     * Used by the proxy and by long-lived streams. */
    ROUTE_AT_HEAD = 1u << 0,
};

struct route {
    uint64_t methods;      /* ROUTE_M bits; GET implies HEAD */
    char *pattern;
    size_t prefix_len;     /* the pattern's bytes before its first '{': a path must start with them */
    size_t pattern_len;    /* == prefix_len: a literal pattern, matched by equality */
    route_fn fn;
    void *data;
    unsigned flags;
};

enum router_result { ROUTER_FOUND, ROUTER_NOT_FOUND, ROUTER_BAD_METHOD };

struct cors;

struct router {
    struct route *routes;
    unsigned n;
    struct route fallback;  /* fn NULL: unmatched requests get 404 */
    struct cors *cors;      /* the [cors] policy of this router's requests, or NULL (owned) */
    unsigned refs;
};

struct router *router_new(void);
void router_add(struct router *rt, uint64_t methods, const char *pattern, route_fn fn, void *data,
                unsigned flags);
/* The route for requests no pattern matches (the upstream proxy). */
void router_set_fallback(struct router *rt, route_fn fn, void *data, unsigned flags);

/* On ROUTER_FOUND *route is set (possibly to the fallback) and params hold
 * the captures. On ROUTER_BAD_METHOD *allowed holds the methods that would
 * match. */
enum router_result router_match(const struct router *rt, uint8_t method, str_t path,
                                const struct route **route, struct url_params *params,
                                uint64_t *allowed);

/* Appends "GET, HEAD, POST" for an Allow header. */
void router_format_allow(uint64_t methods, struct buf *out);

struct router *router_ref(struct router *rt);
void router_unref(struct router *rt);

#endif
