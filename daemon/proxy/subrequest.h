/*
 * subrequest: batchd's own GET to the app, over the [upstream] pool, such
 * as forward auth's check_url (daemon/auth/forward.c).
 *
 *   subrequest_start(path, headers) ──> pool: idle connection, a new one,
 *        │                              or a place in its line (max_waiting)
 *        │ head out; the answer parsed with proto/http_response:
 *        │   status, one named header kept (bounded), body read and dropped
 *        ▼
 *   cb(ctx, result) once: answered, or the reason it was not
 *
 * It shares the proxied requests' pool and limits (pool_size,
 * max_waiting, connect_timeout_ms) but has its own deadline, timeout_ms,
 * from start to the answer's last byte, waiting in line included. A
 * connection goes back to the pool only after a whole keep-alive answer;
 * otherwise it is closed, with the reason logged. Counted by result in
 * batchd_upstream_subrequests_total.
 */
#ifndef BATCHD_SUBREQUEST_H
#define BATCHD_SUBREQUEST_H

#include <stdint.h>

#include "proto/buf.h"

/* The kept header's value is at most this long; a longer one is INVALID. */
#define SUBREQUEST_VALUE_MAX 256
/* An answer body past this is an error (TOO_LARGE); the connection closes. */
#define SUBREQUEST_BODY_MAX (64 * 1024)

/* How a sub-request ended: the metric label. */
#define SUBREQUEST_RESULTS(X)                                                                  \
    X(ANSWERED, "answered")               /* status and header below are set */               \
    X(POOL_FULL, "pool_full")             /* subrequest_start said -EBUSY: no callback */     \
    X(REFUSED, "refused")                 /* the connect failed */                            \
    X(CONNECT_TIMEOUT, "connect_timeout") /* connect_timeout_ms */                            \
    X(RESET, "reset")                     /* closed or reset before a whole answer */         \
    X(TIMEOUT, "timeout")                 /* no whole answer within timeout_ms */             \
    X(BAD_RESPONSE, "bad_response")       /* not HTTP/1.x, or a head too large */             \
    X(TOO_LARGE, "too_large")             /* a body over SUBREQUEST_BODY_MAX */

enum subrequest_result {
#define X(name, text) SUBREQUEST_##name,
    SUBREQUEST_RESULTS(X)
#undef X
    SUBREQUEST__COUNT
};

const char *subrequest_result_name(enum subrequest_result r);

enum subrequest_value {
    SUBREQUEST_VALUE_ABSENT,  /* no such header in the answer */
    SUBREQUEST_VALUE_OK,      /* once, <= SUBREQUEST_VALUE_MAX bytes, no control characters */
    SUBREQUEST_VALUE_INVALID, /* more than once, too long, control characters, or an
                               * answer with a folded header line (obs-fold) */
};

struct subrequest_answer {
    enum subrequest_result result;
    int status;                 /* when ANSWERED */
    enum subrequest_value value_state;
    str_t value;                /* when VALUE_OK: valid during the callback only */
};

typedef void (*subrequest_fn)(void *ctx, const struct subrequest_answer *a);

/* A request header; its value is the caller's until subrequest_start
 * returns (the head is built at once). */
struct subrequest_header {
    const char *name;
    str_t value;
};

struct subrequest_opts {
    const char *path;           /* origin form, "/api/auth/whoami" */
    const struct subrequest_header *headers;
    unsigned n_headers;         /* sent after Host, which comes from [upstream] url */
    const char *want;           /* the answer header to return (NULL: none) */
    uint64_t timeout_ms;
};

struct upstream;
struct subrequest;

/* Starts GET o->path. On 0, *out is set and cb(ctx, answer) runs exactly
 * once, never before this returns, unless subrequest_cancel comes first.
 * Otherwise no callback: -EINVAL, a path, header name or value that could
 * not go out as it is (CR, LF, NUL and other control characters are
 * refused, never stripped); -EBUSY, every pool connection busy and
 * max_waiting in line (counted as pool_full); -ECONNREFUSED, the connect
 * could not even start. */
int subrequest_start(struct upstream *u, const struct subrequest_opts *o, subrequest_fn cb, void *ctx,
                     struct subrequest **out) __attribute__((warn_unused_result));

/* The callback will not run. A connection it holds is closed (the answer
 * is unwanted), a place in the pool's line given up. */
void subrequest_cancel(struct subrequest *sr);

#endif
