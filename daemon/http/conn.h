/*
 * conn: one client connection, from accept to close.
 *
 *            socket                                   handlers
 *   read ──> http_parser ──> req queue (pipeline) ──> route fn ──┐
 *                                 │                              │ req_respond
 *   write <── iovecs, in order <──┘<─────────────────────────────┘
 *
 * The connection reads into one shared buffer, parses, and queues requests
 * in arrival order. Responses go out in that order, gathered into one
 * writev when several are ready. It stops reading when the pipeline holds
 * max_pipeline requests or the socket's write queue passes
 * write_queue_bytes, and resumes as they drain.
 *
 * A connection is never freed inside its own read or write path: closing
 * marks it and starts uv_close on its handles; the memory goes in the last
 * close callback.
 */
#ifndef BATCHD_CONN_H
#define BATCHD_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/net/stream.h"
#include "proto/http.h"

struct req;
struct cfg_batchd;
struct server;
struct listener;

#define CONN_CLOSE_REASONS(X)                                                   \
    X(PEER_CLOSED, "peer_closed")                 /* client closed first */      \
    X(READ_ERROR, "read_error")                                                \
    X(WRITE_ERROR, "write_error")                                              \
    X(HEADER_TIMEOUT, "header_timeout")           /* slowloris guard */          \
    X(BODY_TIMEOUT, "body_timeout")                                            \
    X(IDLE_TIMEOUT, "idle_timeout")               /* keep-alive idle */          \
    X(WRITE_TIMEOUT, "write_timeout")             /* client stopped reading */   \
    X(CONNECTION_CLOSE, "connection_close")       /* "Connection: close"/1.0 */ \
    X(BAD_REQUEST, "bad_request")                                              \
    X(AMBIGUOUS_LENGTH, "ambiguous_length")       /* smuggling guard */          \
    X(URI_TOO_LONG, "uri_too_long")                                            \
    X(HEADERS_TOO_LARGE, "headers_too_large")                                  \
    X(BODY_TOO_LARGE, "body_too_large")                                        \
    X(VERSION_NOT_SUPPORTED, "version_not_supported")                          \
    X(METHOD_NOT_ALLOWED, "method_not_allowed")   /* TRACE, CONNECT */           \
    X(TOO_MANY_CONNECTIONS, "too_many_connections")                            \
    X(SHUTDOWN, "shutdown")                                                    \
    X(SHUTDOWN_FORCED, "shutdown_forced")                                      \
    X(SSE_QUEUE_OVERFLOW, "sse_queue_overflow")                                \
    X(SSE_OVERLOADED, "sse_overloaded")           /* over max_sse_clients */     \
    X(SSE_UNAVAILABLE, "sse_unavailable")         /* no Stream position yet */   \
    X(UPSTREAM_ERROR, "upstream_error")                                        \
    X(STREAM_ENDED, "stream_ended")

enum conn_close_reason {
#define X(name, text) CONN_CLOSE_##name,
    CONN_CLOSE_REASONS(X)
#undef X
    CONN_CLOSE__COUNT
};

enum conn_state {
    CONN_OPEN,          /* reading and answering requests */
    CONN_FINISHING,     /* no more requests: closes once the last response is written */
    CONN_LINGERING,     /* write side shut; discarding input briefly so the
                         * client reads our last response before any RST */
    CONN_CLOSING,       /* uv_close issued; freed in the close callback */
};

/* Why reading is stopped (stream pause bits); reading resumes when all
 * are clear. Each but the last is counted in
 * batchd_client_read_pauses_total{reason}. */
enum conn_pause {
    CONN_PAUSE_PIPELINE = 1u << 0, /* max_pipeline requests queued */
    CONN_PAUSE_WRITEQ = 1u << 1,   /* socket write queue over write_queue_bytes */
    CONN_PAUSE_AT_HEAD = 1u << 2,  /* a ROUTE_AT_HEAD request waits for its turn */
    CONN_PAUSE_BODY = 1u << 3,     /* a streamed body's consumer is full */
    CONN_PAUSE_DONE = 1u << 4,     /* the last request is in (Connection: close, draining) */
    CONN_PAUSE_FINISHED = 1u << 5, /* CONN_FINISHING: no further requests are read */
};
#define CONN_PAUSE_COUNTED 5

enum conn_timer_kind { CONN_TIMER_NONE, CONN_TIMER_HEADER, CONN_TIMER_BODY, CONN_TIMER_IDLE,
                       CONN_TIMER_WRITE, CONN_TIMER_LINGER };

struct conn {
    struct stream s;              /* first: the stream's callbacks cast back */
    uv_timer_t timer;
    struct listener *lst;
    struct http_parser parser;
    struct req *head, *tail;      /* pipeline: requests not yet written */
    struct req *reading;          /* the request being received, if any */
    struct req *zombie;           /* closed mid-parse: freed once the parser returns */
    uint32_t n_reqs;
    uint8_t state;                /* enum conn_state */
    uint8_t reason;               /* enum conn_close_reason, once decided */
    uint8_t timer_kind;           /* enum conn_timer_kind */
    bool in_parse;                /* inside http_parser_execute */
    bool starting;                /* inside start_deferred */
    bool resume_wanted;           /* progress happened during in_parse */
    bool peer_eof;
    bool draining;                /* server is shutting down */
    bool served_any;
    uint64_t head_deadline;       /* uv_now() ms by which headers must be in */
    uint32_t linger_bytes;
    struct conn *prev, *next;     /* the server's list */
};

/* Accepts a pending connection on the listener and starts reading.
 * Returns 0 or a negative libuv error. */
int conn_accept(struct listener *lst);
/* Accepts, answers 503 too_many_connections and closes. */
int conn_accept_busy(struct listener *lst);

void conn_close(struct conn *c, enum conn_close_reason reason);
/* Shutdown: idle connections close now, busy ones after their current
 * request, with Connection: close. */
void conn_drain(struct conn *c);

/* --- for req.c ------------------------------------------------------------- */

/* A request's response became READY: write what can be written. */
void conn_req_ready(struct conn *c);
/* A streaming request ended; the next request may proceed. */
void conn_req_stream_done(struct conn *c, struct req *r, bool close_conn,
                          enum conn_close_reason reason);
/* A streaming request gives up: drop it and close the connection now. */
void conn_req_abort(struct conn *c, struct req *r, enum conn_close_reason reason);
/* Writes bytes now (or queues them in libuv), in order with all earlier
 * writes. cb runs exactly once, possibly before this returns, with 0 or a
 * negative libuv error. */
int conn_write(struct conn *c, const uv_buf_t *bufs, unsigned n, void (*cb)(void *, int),
               void *ctx);
/* The same, for bytes the caller reuses at once (a shared read buffer):
 * what the socket does not take now is copied. */
int conn_write_copy(struct conn *c, const uv_buf_t *bufs, unsigned n);
size_t conn_write_queued(const struct conn *c);
void conn_body_resume(struct conn *c);
void conn_metrics_init(void);
/* Takes reload-safe settings (write_queue_bytes). */
void conn_configure(const struct cfg_batchd *cfg);

#endif
