/*
 * sse_client: one SSE subscriber connection of sse-load.
 *
 *   main ──sse_client_connect──▶ sse_client ──GET /v1/sessions/{id}/events──▶ batchd
 *        ◀──on_ready, on_event, on_closed──      ◀──200 text/event-stream─────
 *
 * A client reads into one buffer shared by every connection (the loop has
 * one thread and the parsers copy what they keep), so an idle stream costs
 * the size of this struct and nothing more. The response head and the SSE
 * body are parsed incrementally: a frame may be split at any byte.
 *
 * A --no-read client connects and sends its request but never reads the
 * socket, so batchd's queue for it fills; sse_client_drain later reads and
 * discards to learn whether batchd had closed it.
 */
#ifndef SSE_LOAD_SSE_CLIENT_H
#define SSE_LOAD_SSE_CLIENT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "http_resp.h"
#include "sse_parse.h"

/* Longest event id kept, with its NUL. A Redis Stream id is at most 41. */
#define SSE_CLIENT_ID_MAX 48

enum sse_client_state {
    SSE_CLIENT_IDLE,          /* no socket: before connecting, after on_closed */
    SSE_CLIENT_CONNECTING,
    SSE_CLIENT_WAITING_HEAD,  /* request sent, response head incomplete */
    SSE_CLIENT_STREAMING,     /* 200 text/event-stream, parsing events */
    SSE_CLIENT_SILENT,        /* no-read client: request sent, never reads */
    SSE_CLIENT_DRAINING,      /* no-read client, reading and discarding */
    SSE_CLIENT_CLOSING,       /* uv_close called, on_closed to come */
};

#define SSE_CLOSE_REASONS(X)                      \
    X(SSE_CLOSE_NONE, "none")                     \
    X(SSE_CLOSE_CONNECT, "connect_error")         \
    X(SSE_CLOSE_WRITE, "write_error")             \
    X(SSE_CLOSE_EOF_BEFORE_HEAD, "eof_before_head") \
    X(SSE_CLOSE_EOF, "eof")                       \
    X(SSE_CLOSE_RESET, "reset")                   \
    X(SSE_CLOSE_READ, "read_error")               \
    X(SSE_CLOSE_BAD_HTTP, "bad_http")             \
    X(SSE_CLOSE_HTTP_STATUS, "http_status")       \
    X(SSE_CLOSE_NOT_EVENT_STREAM, "not_event_stream") \
    X(SSE_CLOSE_STREAM_END, "stream_end")         \
    X(SSE_CLOSE_HEAD_TIMEOUT, "head_timeout")     \
    X(SSE_CLOSE_LOCAL, "local")

enum sse_close_reason {
#define X(name, text) name,
    SSE_CLOSE_REASONS(X)
#undef X
    SSE_CLOSE__COUNT
};

enum sse_event_type {
    SSE_EVENT_MESSAGE,        /* no event: field, or "message" */
    SSE_EVENT_EXPECTED,       /* the type sse-load publishes with */
    SSE_EVENT_RESET,          /* "reset" */
    SSE_EVENT_OTHER,
};

/* One dispatched event. Pointers are valid during on_event only. */
struct sse_event {
    const char *id;           /* the last event id at dispatch, NUL-terminated */
    bool own_id;              /* the event carried its own id: field */
    bool id_cut;              /* the id was longer than SSE_CLIENT_ID_MAX - 1 */
    bool payload;             /* the first data line parsed as a payload */
    uint8_t type;             /* enum sse_event_type */
    uint32_t data_lines;
    uint64_t seq, t;          /* from the payload */
    uint64_t recv_ns;         /* CLOCK_REALTIME when the read completed */
};

struct sse_client;

struct sse_client_cbs {
    /* The client can stream: a reading client got "200 text/event-stream";
     * a no-read client has sent its request. */
    void (*on_ready_cb)(struct sse_client *c);
    /* An event was dispatched (events without data are not, per the SSE
     * rules). The callback may call sse_client_close. */
    void (*on_event_cb)(struct sse_client *c, const struct sse_event *ev);
    /* The socket is closed and the client is IDLE again: close_reason and
     * close_err say why. The callback may connect it again. */
    void (*on_closed_cb)(struct sse_client *c);
};

/* Shared by all clients; must outlive them. */
struct sse_client_conf {
    uv_loop_t *loop;
    const struct sockaddr *server;
    const char *host;                 /* Host header */
    const char *const *paths;         /* request target per channel */
    const char *event_type;           /* expected event: type, NULL for none */
    int no_read_rcvbuf;               /* SO_RCVBUF for no-read clients, 0 = default */
    const struct sse_client_cbs *cbs;
};

struct sse_client {
    uv_tcp_t tcp;
    const struct sse_client_conf *conf;
    struct http_resp resp;
    struct sse_parse sse;
    uint64_t bytes_in;
    uint32_t channel;
    uint32_t retry_ms;                /* last retry: field, 0 when none */
    int32_t close_err;                /* uv error, or the HTTP status */
    uint8_t state;                    /* enum sse_client_state */
    uint8_t close_reason;             /* enum sse_close_reason */
    bool no_read;
    /* the event being assembled */
    bool ev_own_id, ev_id_cut, ev_payload;
    uint8_t ev_type;
    uint32_t ev_data_lines;
    uint64_t ev_seq, ev_t;
    char id_buf[SSE_CLIENT_ID_MAX];   /* SSE "last event ID buffer" */
    char last_id[SSE_CLIENT_ID_MAX];  /* id of the last dispatched event */
};

void sse_client_init(struct sse_client *c, const struct sse_client_conf *conf,
                     uint32_t channel, bool no_read);

/* Opens a connection from `source` (NULL: any) and subscribes, sending
 * Last-Event-ID when the client has seen an id. Returns a negative uv error
 * only when no socket could be created (the client stays IDLE and no
 * callback runs); every later failure arrives through on_closed_cb. */
int sse_client_connect(struct sse_client *c, const struct sockaddr *source)
    __attribute__((warn_unused_result));

/* Closes the connection; on_closed_cb runs from the loop. The first reason
 * given wins. No-op when IDLE or already closing. */
void sse_client_close(struct sse_client *c, enum sse_close_reason why, int err);

/* A SILENT client starts reading and discarding; it closes with
 * SSE_CLOSE_EOF or SSE_CLOSE_RESET when the server has closed it. */
void sse_client_drain(struct sse_client *c);

const char *sse_client_reason_name(enum sse_close_reason why);

#endif
