/*
 * upstream: the reverse proxy to the application server.
 *
 *   client ──req──> batchd ──keep-alive pool (pool_size)──> app server
 *          <──────── response head + body, streamed ────────
 *
 *   daemon/proxy/
 *     proxy.c       one proxied request: the handler, the head and body to the
 *                   app, the answer back, invalidation, failures and the retry
 *       │ upool_acquire       ▲ proxy_conn_ready / _response_done / _fail
 *       ▼                    │
 *     pool.c        app server connections on streams (net/stream.h):
 *                   connect, idle list, waiting line, deadline sweep
 *     proxy_int.h   what the two share; head rewriting is proto/http_forward
 *
 * Requests no batchd route owns are forwarded. Bodies stream both ways and
 * are never held whole: reading one side stops while the other side's
 * write queue is over buffer_bytes. Hop-by-hop headers are dropped;
 * X-Forwarded-For, X-Forwarded-Proto and Via are added. A PUT, PATCH, POST
 * or DELETE to a path a resource lists under `invalidate` that is answered
 * 2xx first deletes that cache entry, then relays the answer.
 *
 * Errors: 502 upstream_unavailable (refused, reset), 504 upstream_timeout
 * (no response head within timeout_ms), 502 bad_upstream_response. A
 * request the app closed on without a byte of answer is sent again, once,
 * only when it went over a pooled keep-alive connection, has no body and
 * an idempotent method; any other is sent at most once.
 */
#ifndef BATCHD_UPSTREAM_H
#define BATCHD_UPSTREAM_H

#include <uv.h>

#include "daemon/config.h"
#include "daemon/http/router.h"

struct upstream;
struct resource_set;
struct list_set;

struct upstream *upstream_new(uv_loop_t *loop, const struct cfg_upstream *cfg,
                              struct resource_set *resources);
/* Takes reload-safe settings (timeouts, buffer and body limits). */
void upstream_configure(struct upstream *u, const struct cfg_upstream *cfg,
                        struct resource_set *resources);
/* The lists whose pages a principal's writes drop (list.h); NULL: none. */
void upstream_set_lists(struct upstream *u, struct list_set *lists);
/* Makes the proxy the router's fallback. */
void upstream_add_routes(struct upstream *u, struct router *rt);
/* Closes idle connections; busy ones close with their requests. Frees the
 * pool once every handle is closed. */
void upstream_free(struct upstream *u);

#endif
