/*
 * identity: who is asking. Resolves a request's principal from its
 * credential and gates routes by their `access`.
 *
 *   credential, first found:
 *     Authorization: Bearer <jwt>  ─┐ (JWT configured)
 *     Cookie: <jwt_cookie>=<jwt>   ─┼─> jwt_verify (verdicts cached by digest)
 *     ?access_token=<jwt> (SSE)    ─┘
 *     Cookie / Authorization       ───> forward_check (check_url, forward.h)
 *
 *   identity_gate(r, access, fn): public ──> fn at once, nothing looked at
 *                                 otherwise a principal, then fn; or the answer:
 *     no credential              401 unauthorized   WWW-Authenticate: Bearer
 *     bad / expired token        401 invalid_token  WWW-Authenticate: Bearer error="invalid_token"
 *     the app said 401 / 403     401 unauthorized / 403 forbidden
 *     the check did not answer   503 auth_unavailable, Retry-After: 1
 *
 * The principal lands in r->principal. Tokens are never logged; counters
 * by method and result are in /metrics (batchd_auth_*).
 */
#ifndef BATCHD_IDENTITY_H
#define BATCHD_IDENTITY_H

#include <stdbool.h>
#include <uv.h>

#include "daemon/config.h"
#include "proto/buf.h"

struct req;
struct upstream;
struct identity;

/* Built from cfg's [auth] (NULL without one, and then every gate but
 * public refuses). NULL with errors appended when a key file is bad. */
struct identity *identity_new(uv_loop_t *loop, const struct config *cfg, struct upstream *up,
                              struct buf *errors);
/* A reload: new keys and settings, or -1 with errors and nothing changed
 * (a key file that cannot be used rejects the reload). */
int identity_reconfigure(struct identity *id, const struct config *cfg, struct buf *errors);
/* Completes pending checks (503) and frees. */
void identity_free(struct identity *id);

/* The identity the gates use; app.c sets it at start. */
void identity_set_current(struct identity *id);

typedef void (*identity_fn)(struct req *r, void *data);

/* Calls fn(r, data) once r may go on under `access` (at once for public,
 * and maybe later when a check goes to the app); otherwise answers r. sse:
 * the route is an event stream, where ?access_token= is accepted. */
void identity_gate(struct req *r, enum cfg_access access, bool sse, identity_fn fn, void *data);
/* The same for an event stream's subscribers, where any answer but 200 is
 * final for a browser's EventSource: when the check cannot be answered
 * (503 elsewhere), unavailable(r, data) answers instead (a 200 "retry:"). */
void identity_gate_stream(struct req *r, enum cfg_access access, identity_fn fn,
                          identity_fn unavailable, void *data);

/* Resolves r's principal when it carries a credential, never refusing:
 * cb(ctx, r) runs with r->principal set or NULL (the proxy forwards what it
 * can and leaves refusing to the app). Returns NULL when cb has run
 * already, else a handle: the caller must identity_cancel it if r goes
 * away first (then cb never runs), and drop it when cb runs. */
struct identity_wait;
typedef void (*identity_lookup_fn)(void *ctx, struct req *r);
struct identity_wait *identity_lookup(struct req *r, identity_lookup_fn cb, void *ctx);
void identity_cancel(struct identity_wait *w);

/* True when an [auth] section is configured. */
bool identity_enabled(void);
/* The header the principal is forwarded to the app in (NULL: none). */
const char *identity_forward_header(void);

#endif
