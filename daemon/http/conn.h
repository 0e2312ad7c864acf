/*
 * conn: one client connection, from accept to close. The HTTP front:
 *
 *   server (listeners, the connection list, draining)
 *     └─ accept ─> conn.c: the socket side, on a stream (net/stream.h):
 *                  when to read, timeouts, writes, linger, close
 *                    │  bytes                       ▲ iovecs, in order
 *                    ▼                              │
 *                  conn_pipeline.c: parser callbacks, the request queue
 *                  (pipeline), which request may start, answers in order
 *                    │ route fn                     ▲ req_respond / req_stream_*
 *                    ▼                              │
 *                  router ─> handlers (cache/, sse/, proxy/, ops) ─ req.c
 *
 * The connection reads into the stream's shared buffer, parses, and queues
 * requests in arrival order. Responses go out in that order, gathered into
 * one writev when several are ready. It stops reading when the pipeline
 * holds max_pipeline requests or the socket's write queue passes
 * write_queue_bytes, and resumes as they drain.
 *
 * A connection is never freed inside its own read or write path: closing
 * marks it and starts uv_close on its handles; the memory goes in the last
 * close callback.
 *
 * struct conn is private to daemon/http/ (conn_int.h); handlers see only
 * struct req and the close reasons.
 */
#ifndef BATCHD_CONN_H
#define BATCHD_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#include "daemon/http/close_reason.h"
#include "proto/buf.h"

struct conn;
struct req;
struct cfg_batchd;
struct listener;

/* Accepts a pending connection on the listener and starts reading.
 * Returns 0 or a negative libuv error. */
int conn_accept(struct listener *lst);
/* Accepts, answers 503 too_many_connections and closes. */
int conn_accept_busy(struct listener *lst);

void conn_close(struct conn *c, enum conn_close_reason reason);
/* Shutdown: idle connections close now, busy ones after their current
 * request, with Connection: close. */
void conn_drain(struct conn *c);
void conn_metrics_init(void);
/* Takes reload-safe settings (write_queue_bytes). */
void conn_configure(const struct cfg_batchd *cfg);

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
/* req_upgrade's work (req.h): the connection becomes a tunnel's stream. */
struct stream *conn_req_upgrade(struct conn *c, struct req *r, const struct buf *head);
/* True once the server is shutting down. */
bool conn_draining(const struct conn *c);
/* The peer's address (0 or a negative libuv error), as text ("?" when
 * unknown), and the socket's descriptor (-1 when none). */
int conn_peer_addr(const struct conn *c, struct sockaddr_storage *ss);

/* The last credential a connection's requests proved, kept by identity.c so
 * that a keep-alive client's token is verified (and hashed) once, not on
 * every request: the credential's bytes, the principal, until when, and
 * the identity generation (a reload) it belongs to. Credentials longer
 * than CONN_MEMO_MAX are not kept. */
#define CONN_MEMO_MAX 2048
bool conn_memo_get(const struct conn *c, char kind, str_t cred, uint32_t gen, uint64_t now_ms,
                   str_t *principal);
void conn_memo_put(struct conn *c, char kind, str_t cred, const char *principal, size_t n,
                   uint32_t gen, uint64_t expires_ms);
const char *conn_peer(const struct conn *c, char *out, size_t cap);
int conn_fd(const struct conn *c);

#endif
