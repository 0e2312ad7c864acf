/*
 * forward: forward auth for apps with cookie sessions, in the manner of
 * nginx auth_request and Traefik ForwardAuth.
 *
 *   forward_check(cookie, authorization)
 *        │ cred_cache hit ──> cb at once
 *        │ a check for the same credential in flight ──> wait for it (single flight)
 *        ▼
 *   GET check_url (through [upstream]) with the client's Cookie and Authorization
 *        │ 2xx + check_principal_header ──> allowed (cached check_cache_ms)
 *        │ 401 / 403                    ──> denied  (cached check_cache_ms)
 *        ▼ anything else, timeout (check_timeout_ms), app down ──> unavailable (not cached)
 *   cb(ctx, result, principal) for every waiter, exactly once
 */
#ifndef BATCHD_FORWARD_H
#define BATCHD_FORWARD_H

#include <stddef.h>
#include <uv.h>

#include "daemon/config.h"
#include "proto/buf.h"

struct upstream;   /* daemon/proxy/upstream.h: the [upstream] the checks go through */

enum forward_result {
    FORWARD_ALLOWED,
    FORWARD_DENIED,        /* the app said 401 */
    FORWARD_FORBIDDEN,     /* the app said 403 */
    FORWARD_UNAVAILABLE,   /* no answer, or one that is neither: 503 */
};

/* principal is valid only during the call (NULL unless ALLOWED). */
typedef void (*forward_fn)(void *ctx, enum forward_result res, const char *principal, size_t len);

struct forward_auth;

struct forward_auth *forward_auth_new(uv_loop_t *loop, const struct cfg_auth *a, struct upstream *up);
/* A reload: new settings (the cache is kept when check_url is unchanged). */
void forward_auth_configure(struct forward_auth *f, const struct cfg_auth *a);
/* Completes every waiter with FORWARD_UNAVAILABLE. */
void forward_auth_free(struct forward_auth *f);

/* cb runs exactly once: maybe before this returns (a cached verdict). */
void forward_check(struct forward_auth *f, str_t cookie, str_t authorization, forward_fn cb, void *ctx);

#endif
