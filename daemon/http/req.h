/*
 * req: one HTTP request and its response, as handlers see them.
 *
 * Life of a request:
 *
 *   RECEIVING ──(head + body in)──> HANDLING ──req_respond()──> READY ──written──> freed
 *                                      │
 *                                      └─req_stream_start()──> STREAMING ──req_stream_end()──> freed
 *
 * The connection owns the request until the handler is called; from then
 * until req_respond/req_stream_end the handler owns it. If the client goes
 * away meanwhile:
 *   - with an abort_cb set, the connection calls it and then frees the
 *     request: the handler must drop every pointer to it inside abort_cb;
 *   - without one, the request is orphaned (r->conn == NULL) and freed when
 *     the handler responds. Batched reads work this way: they answer
 *     whoever is still there.
 *
 * Responses are written in request order however the handlers finish.
 */
#ifndef BATCHD_REQ_H
#define BATCHD_REQ_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <uv.h>

#include "daemon/http/close_reason.h"
#include "daemon/http/router.h"
#include "proto/buf.h"
#include "proto/http.h"
#include "proto/url.h"

struct conn;

/* The longest principal a request carries (JWT and forward auth both
 * refuse longer ones). */
#define REQ_MAX_PRINCIPAL 256

enum req_state {
    REQ_RECEIVING,
    REQ_HANDLING,
    REQ_READY,
    REQ_STREAMING,
    REQ_WRITING,    /* handed to the socket; freed when the write completes */
};

/* A reference an answer holds on memory its parts point at (a near-cache
 * entry, a batch entry): released when the request is, after the socket
 * has taken the bytes. */
struct req_hold {
    void (*release)(void *obj);
    void *obj;
};

/* The most iovecs one answer's body may have; more pieces are copied
 * (req_gather_piece). */
#define REQ_MAX_PARTS 1000

typedef void (*req_abort_fn)(struct req *r);
/* A piece of a streamed request body (ROUTE_AT_HEAD routes). Return 0, or
 * HTTP_PARSER_PAUSE to stop reading until req_body_resume(). */
typedef int (*req_body_fn)(struct req *r, const char *data, size_t n);
/* The streamed request body is complete. */
typedef void (*req_body_end_fn)(struct req *r);
/* A stream write has left batchd (or failed, status < 0). */
typedef void (*req_write_fn)(void *ctx, int status);

struct req {
    /* First: a spare request's link in the free list overwrites it. */
    TAILQ_ENTRY(req) link;      /* the connection's pipeline, oldest first */
    struct http_request msg;
    struct conn *conn;          /* opaque; NULL once the client is gone */
    enum req_state state;
    bool head_only;             /* HEAD: send headers, no body */
    bool close_after;           /* answer with Connection: close, then close */
    bool body_done;             /* all of the request body has been read */
    bool continue_sent;         /* "100 Continue" went out */
    bool head_done;             /* request line and headers are in */
    bool stream_chunked;        /* streamed response uses chunked framing */
    bool head_pending;          /* a streamed head not written yet (goes with the first piece) */
    bool deferred;              /* read in full, waiting for the answers ahead of it */
    bool upgrade;               /* asks to switch protocols and may: once read, nothing
                                 * after it is parsed as HTTP (the handler sets it, with
                                 * close_after for the answers that do not switch) */
    const struct route *route;
    struct router *router;      /* reference held while the request lives */
    struct url_params params;
    uint64_t allowed_methods;   /* for a 405: what the path accepts */
    uint64_t start_ns;
    /* Who is asking, once daemon/auth/identity.c has verified it: NULL
     * before, or when the request carries no valid credential; else it
     * points at principal_buf (no allocation per request). */
    char *principal;
    uint16_t principal_len;
    bool identity_done;         /* resolved (principal may still be NULL) */
    char principal_buf[REQ_MAX_PRINCIPAL + 1];

    /* response */
    int status;
    const char *content_type;   /* static string */
    char head_fixed[320];       /* status line and standard headers */
    uint32_t head_fixed_len;
    struct buf head_extra;      /* headers added by the handler */
    struct buf body;            /* owned body */
    const char *body_ptr;       /* body to send: body.data or static bytes */
    size_t body_len;
    /* A body gathered from memory the request holds rather than copied
     * (req_gather_*): n_parts iovecs in parts; the arrays are kept
     * with a recycled request, so a warm one allocates nothing. */
    uv_buf_t *parts;
    unsigned n_parts, cap_parts;
    struct req_hold *holds;
    unsigned n_holds, cap_holds;
    uint64_t bytes_out;         /* response bytes, for access logs/metrics */
    /* batchd's own documents (req_encodable): the answer may be gzip-coded,
     * get an ETag, or become a 304 (daemon/http/encode.c). */
    bool encodable;
    bool tagged;                /* tag holds the answer's hash (etag_mix of its pieces) */
    uint64_t tag;
    struct buf zbody;           /* the other body buffer: a coded body is written here,
                                 * then swapped with body (both recycled) */

    /* handler hooks */
    void *hdata;
    req_abort_fn abort_cb;
    req_body_fn body_cb;
    req_body_end_fn body_end_cb;
    /* A queued write of this streamed response finished: a producer that
     * paused because the client fell behind checks req_stream_queued. */
    void (*drain_cb)(struct req *r);
};

/* --- reading the request --------------------------------------------------- */

/* A request header's value, or an empty str_t with .p == NULL. */
str_t req_header(const struct req *r, const char *name);
/* The captured path parameter, raw (percent-encoded). */
bool req_param(const struct req *r, const char *name, str_t *value);
/* Percent-decodes a path parameter into out (appending). -EINVAL on bad escapes. */
int req_param_decoded(const struct req *r, const char *name, struct buf *out);
/* The client's address; 0 or a negative libuv error. */
int req_peer_addr(const struct req *r, struct sockaddr_storage *ss);
/* The client's address as text, "?" when unknown. */
const char *req_peer(const struct req *r, char *out, size_t cap);
/* The connection's credential memo (conn.h): false once the client is gone. */
bool req_memo_get(const struct req *r, char kind, str_t cred, uint32_t gen, uint64_t now_ms,
                  str_t *principal);
void req_memo_put(struct req *r, char kind, str_t cred, const char *principal, size_t n,
                  uint32_t gen, uint64_t expires_ms);
/* The client socket's file descriptor, -1 once the client is gone. */
int req_fd(const struct req *r);

/* --- answering ------------------------------------------------------------- */

/* Adds a response header. Call before req_respond/req_stream_start.
 * Content-Length, Date, Connection and Server are set by batchd. */
void req_add_header(struct req *r, const char *name, const char *value);

/* The same with the whole line given, "Name: value\r\n" (a literal, for
 * the hot paths). */
void req_add_header_line(struct req *r, const char *line, size_t len);
#define REQ_HEADER_LINE(r, lit) req_add_header_line((r), lit, sizeof(lit) - 1)

/* Completes the request. The body is copied. content_type must be a string
 * that outlives the request (a literal). */
void req_respond(struct req *r, int status, const char *content_type, const void *body,
                 size_t len);
/* Same, taking over `body`'s memory (body is left empty). */
void req_respond_buf(struct req *r, int status, const char *content_type, struct buf *body);
/* Same, with the body the handler built in r->body (whose memory is
 * recycled with the request: no allocation in the common case). */
void req_respond_body(struct req *r, int status, const char *content_type);
/* Same, with bytes that outlive the request (string literals). */
void req_respond_static(struct req *r, int status, const char *content_type, const char *body,
                       size_t len);
/* Answers gathered rather than copied (h2o-style), piece by piece:
 * req_gather_begin reserves for the whole body (`bytes`) and at most
 * max_pieces pieces; req_gather_piece either points an iovec at the bytes
 * and returns true (they must then stay valid while the request lives:
 * the caller takes a req_hold on what keeps them, released once when the
 * request is), or copies them into the request's recycled body buffer and
 * returns false (pieces under REQ_COPY_BELOW, whose iovec costs the kernel
 * more than the copy; and any piece once max_pieces are used).
 * req_respond_gathered completes the request. */
void req_gather_begin(struct req *r, unsigned max_pieces, size_t bytes);
/* Pieces shorter than this are copied, run by run, into the request's own
 * (recycled) buffer instead of going out as iovecs of their own: the
 * kernel spends more per iovec than copying that many bytes costs.
 * Measured on loopback TCP (writev vs memcpy + write, per answer): 52
 * pieces of 150 bytes 9.4 vs 5.9 us, 10 of 1,000 bytes 12.7 vs 10.8 us,
 * 10 of 2,000 16.9 vs 15.2 us; from 4 KiB on, writev is as fast or faster. */
#define REQ_COPY_BELOW 2048
bool req_gather_piece(struct req *r, const char *p, size_t len);
void req_respond_gathered(struct req *r, int status, const char *content_type);
void req_hold(struct req *r, void (*release)(void *obj), void *obj);
/* Marks the 200 answer about to be given as batchd's own representation
 * of documents (entity, batch, list): it may then be gzip-coded, tagged
 * and answered 304 (daemon/http/encode.h). Call before req_respond*.
 * `tagged`: `tag` is the answer's hash, built by the caller from memoized
 * piece hashes (proto/etag.h); otherwise the body is hashed. */
static inline void req_encodable(struct req *r, bool tagged, uint64_t tag)
{
    r->encodable = true;
    r->tagged = tagged;
    r->tag = tag;
}
/* {"error":"code"} with the status. */
void req_error(struct req *r, int status, const char *code);

/* Starts a response whose body follows in pieces, with no Content-Length
 * (e.g. SSE). Only for ROUTE_AT_HEAD routes. With `chunked`, pieces are
 * framed with Transfer-Encoding: chunked. */
void req_stream_start(struct req *r, int status, const char *content_type, bool chunked);
/* Starts a stream with raw head bytes (a proxied head) instead of building
 * one. With `chunked`, the head says Transfer-Encoding: chunked and the
 * caller frames the pieces (req_stream_end writes the last chunk). The head
 * goes out with the first piece, or at the end: one write for a small
 * answer. */
void req_stream_start_raw(struct req *r, int status, struct buf *head, bool chunked);
/* True when this response must say Connection: close (the client asked,
 * HTTP/1.0 without keep-alive, or batchd is draining). */
bool req_should_close(const struct req *r);
/* Queues bytes on the socket. The bytes must stay valid until cb runs
 * (cb may be NULL for bytes that live as long as the request). Returns 0, or
 * a negative errno when the connection is gone. */
int req_stream_write(struct req *r, const uv_buf_t *bufs, unsigned n, req_write_fn cb, void *ctx);
/* Frees the request's line, headers and body once a long-lived stream no
 * longer needs them (path parameters and headers are gone afterwards). */
void req_stream_compact(struct req *r);
/* req_stream_write for bytes the caller reuses at once (a shared read
 * buffer): what the socket does not take now is copied. */
int req_stream_write_copy(struct req *r, const uv_buf_t *bufs, unsigned n);
/* Bytes queued for this client and not yet taken by the kernel. */
size_t req_stream_queued(const struct req *r);
/* Ends the response (a last chunk for chunked ones) and frees the request. */
void req_stream_end(struct req *r);
/* The same, naming why when the connection closes after it (unchunked
 * streams end with their connection), for the log and /metrics. */
void req_stream_end_reason(struct req *r, enum conn_close_reason reason);
/* Ends the response and closes the connection at once with the reason. */
void req_stream_abort(struct req *r, enum conn_close_reason reason);

/* The app switched protocols for an upgrade request (r->upgrade, read in
 * full, the only one on its connection): the connection writes `head` (the
 * 101), frees r, stops being HTTP and returns its stream, whose owner the
 * caller becomes (it switches the stream's kind; the stream's held bytes
 * are what the client sent after the request). The client's memory stays
 * until the stream's closed_cb, which the caller must pass on to the kind
 * it replaced, as close_cb (with a conn_close_reason). NULL when the
 * connection cannot switch (draining, closing): r is untouched then.
 * The returned stream may be closing already (the write failed): the
 * caller then lets it go. */
struct stream *req_upgrade(struct req *r, const struct buf *head);

/* Streamed request bodies: resume reading after body_cb paused. */
void req_body_resume(struct req *r);

/* --- for conn.c ------------------------------------------------------------ */

struct req *req_get(void);
/* Frees the request, or parks it for reuse. */
void req_put(struct req *r);
/* Drops the parked requests (at exit). */
void req_pool_drain(void);
/* Builds the response head (now, so that Connection: close reflects the
 * connection's latest state) and points iov at head and body. Returns the
 * number of iovecs used (req_iov_count). */
unsigned req_gather(struct req *r, uv_buf_t *iov);
/* How many iovecs req_gather will use: at most REQ_MAX_PARTS + 2. */
static inline unsigned req_iov_count(const struct req *r)
{
    return 2 + (r->head_only ? 0 : r->n_parts ? r->n_parts : 1);
}
/* Accounts a finished response in /metrics. */
void req_observe(struct req *r);
void req_metrics_init(void);

#endif
