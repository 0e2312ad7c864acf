/*
 * conn_int: struct conn and what conn.c (the socket side) and
 * conn_pipeline.c (requests and answers in order) share. Private to
 * daemon/http/; see conn.h.
 */
#ifndef BATCHD_CONN_INT_H
#define BATCHD_CONN_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <uv.h>

#include "daemon/http/conn.h"
#include "daemon/http/req.h"
#include "daemon/http/server.h"
#include "daemon/net/stream.h"
#include "proto/http.h"

enum conn_state {
    CONN_OPEN,          /* reading and answering requests */
    CONN_FINISHING,     /* no more requests: closes once the last response is written */
    CONN_LINGERING,     /* write side shut; discarding input briefly so the
                         * client reads our last response before any RST */
    CONN_CLOSING,       /* uv_close issued; freed in the close callback */
    CONN_TUNNEL,        /* the app switched protocols: the stream belongs to a
                         * tunnel (proxy/tunnel.c), which closes it */
};

/* Why reading is stopped (stream pause bits); reading resumes when all
 * are clear. The first CONN_PAUSE_COUNTED are counted in
 * batchd_client_read_pauses_total{reason}. */
#define CONN_PAUSES(X)                                                                    \
    X(PIPELINE, "pipeline")       /* max_pipeline requests queued */                     \
    X(WRITEQ, "write_queue")      /* socket write queue over write_queue_bytes */        \
    X(AT_HEAD, "at_head")         /* a ROUTE_AT_HEAD request waits for its turn */       \
    X(BODY, "body")               /* a streamed body's consumer is full */               \
    X(DONE, "done")               /* the last request is in (Connection: close, drain) */ \
    X(UPGRADE, "upgrade")         /* an upgrade request waits for the app's answer:    \
                                   * what follows it is no HTTP of ours */

enum conn_pause_bit {
#define X(name, label) CONN_PAUSE_BIT_##name,
    CONN_PAUSES(X)
#undef X
    CONN_PAUSE_COUNTED,
};

enum conn_pause {
#define X(name, label) CONN_PAUSE_##name = 1u << CONN_PAUSE_BIT_##name,
    CONN_PAUSES(X)
#undef X
    /* CONN_FINISHING: no further requests are read (a close, not a pause:
     * not counted) */
    CONN_PAUSE_FINISHED = 1u << CONN_PAUSE_COUNTED,
};

enum conn_timer_kind { CONN_TIMER_NONE, CONN_TIMER_HEADER, CONN_TIMER_BODY, CONN_TIMER_IDLE,
                       CONN_TIMER_WRITE, CONN_TIMER_LINGER };

#define CONN_REASON_UNSET CONN_CLOSE__COUNT

TAILQ_HEAD(req_list, req);

struct conn {
    struct stream s;              /* first: the stream's callbacks cast back */
    uv_timer_t timer;
    struct listener *lst;         /* NULL until accepted */
    struct http_parser parser;
    struct req_list pipeline;     /* requests not yet written, oldest first */
    struct req *reading;          /* the request being received, if any */
    struct req *zombie;           /* closed mid-parse: freed once the parser returns */
    uint32_t n_reqs;
    uint8_t state;                /* enum conn_state */
    uint8_t reason;               /* enum conn_close_reason, once decided */
    uint8_t timer_kind;           /* enum conn_timer_kind */
    bool in_parse;                /* inside http_parser_execute or a dispatch */
    bool starting;                /* inside start_deferred */
    bool resume_wanted;           /* progress happened during in_parse */
    bool peer_eof;
    bool draining;                /* server is shutting down */
    bool served_any;
    uint64_t head_deadline;       /* uv_now() ms by which headers must be in */
    uint32_t linger_bytes;
    /* The peer's address, asked of the kernel once (the proxy needs it for
     * every request it forwards) and kept: 28 bytes, not a sockaddr_storage. */
    bool peer_known;
    int peer_rc;                  /* getpeername's result, 0 or a libuv error */
    union {
        struct sockaddr sa;
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } peer;
    struct conn_memo *memo;       /* the last credential proved (conn_memo_*), or NULL */
    LIST_ENTRY(conn) link;        /* the server's list */
};

struct conn_memo {
    uint32_t gen;
    char kind;
    uint16_t cred_len, principal_len;
    uint64_t expires_ms;
    char data[];                  /* cred_len bytes, then principal_len */
};

static inline struct server *conn_srv(const struct conn *c)
{
    return c->lst->srv;
}

/* The oldest request not yet written. */
static inline struct req *conn_head(const struct conn *c)
{
    return TAILQ_FIRST(&c->pipeline);
}

/* --- conn.c, for conn_pipeline.c ------------------------------------------ */

void conn_update_reading(struct conn *c);
void conn_update_timer(struct conn *c);
/* No further requests: closes once the last answer is written. */
void conn_finish(struct conn *c, enum conn_close_reason reason);
/* The last answer is written: FIN, then read and drop for a moment. */
void conn_start_linger(struct conn *c);
/* Writes iovecs in order; a failure closes the connection. cb runs once. */
int conn_write_bufs(struct conn *c, const uv_buf_t *bufs, unsigned n, enum stream_write_mode mode,
                    void (*cb)(void *, int), void *ctx);

/* --- conn_pipeline.c, for conn.c ------------------------------------------ */

extern const struct http_parser_cbs conn_parser_cbs;
void conn_pipeline_metrics_init(void);
/* A new request at the end of the pipeline. */
struct req *conn_req_new(struct conn *c);
/* The parser failed: answer the error in turn, then close. */
void conn_reject(struct conn *c, enum http_error err);
/* Progress was made (an answer, a write, a pause lifted): start what may
 * start, resume parsing and reading. Never re-enters a parse. */
void conn_try_resume(struct conn *c);
/* Writes the answers ready at the front of the pipeline. */
void conn_flush(struct conn *c);
/* The connection is closing: every request goes back to its handler or
 * is freed. */
void conn_release_reqs(struct conn *c);

#endif
