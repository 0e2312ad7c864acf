/*
 * stream: the socket under every connection, client (http/conn) or app
 * server (proxy/pool). In the spirit of PgBouncer's sbuf and h2o's
 * h2o_socket_t: the protocol module above it parses and decides; the
 * stream reads, holds back, writes, queues, pauses and closes.
 *
 *              owner: parser, states, timers (conn, uconn)
 *        kind->read_cb ▲  │ stream_parse · stream_write · stream_pause · stream_close
 *     ┌────────────────┼──▼───────────────────────────────────────────────┐
 *     │ read ──> shared buffer ──> kind->parse_cb ──(left, paused)──> held │
 *     │ pause bits, a counter per reason: reading runs while none is set   │
 *     │ write ──> uv_try_write ──(the rest: copied or kept)──> uv_write    │
 *     │   queue over kind->write_limit ──> the kind's named action         │
 *     │ close(reason) ──> kind->close_cb logs it ──> uv_close ──> closed_cb│
 *     └────────────────────────────────────────────────────────────────────┘
 *
 * Reading. Every stream reads into one static buffer (one thread; the
 * owner parses at once and its parser copies what it keeps), so an idle
 * connection holds no read buffer. Bytes a paused parser did not take are
 * copied to the stream's held bytes and parsed first on resume.
 *
 * Writing. What the socket takes at once is never copied; the rest waits
 * in libuv, either copied (STREAM_COPY) or as the caller's iovecs
 * (STREAM_KEEP: the bytes stay valid until the write's callback runs).
 *
 * Closing. stream_close stops reading, drops the held bytes and starts
 * uv_close on the socket (and on one companion handle, such as the owner's
 * timer); kind->closed_cb runs once every handle is closed, and only then
 * may the owner free the memory. Nothing is freed inside the stream's own
 * callbacks.
 */
#ifndef BATCHD_STREAM_H
#define BATCHD_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Buffers one stream_write takes at most. */
#define STREAM_MAX_IOV 1024
/* Pause reasons are bits 0..STREAM_PAUSE_REASONS-1, named by the owner. */
#define STREAM_PAUSE_REASONS 16
#define STREAM_PAUSE_ALL 0xffffu

struct stream;

/* What happens when a write leaves more than kind->write_limit bytes
 * queued. */
enum stream_over_limit {
    STREAM_OVER_LIMIT_NONE,  /* nothing here: the owner watches stream_queued() (the proxy
                              * stops reading the other side) */
    STREAM_OVER_LIMIT_PAUSE, /* stop reading (pause bit limit_pause) until the queue is down
                              * to half the limit */
    STREAM_OVER_LIMIT_CLOSE, /* close with limit_reason */
};

enum stream_write_mode {
    STREAM_KEEP, /* queued bytes stay the caller's, valid until the write's callback */
    STREAM_COPY, /* queued bytes are copied: the caller may reuse them on return */
};

/* A write finished: 0, or a negative libuv error (UV_ECANCELED when the
 * stream closed first). */
typedef void (*stream_write_cb)(void *ctx, int status);

/* One per kind of connection: the owner's callbacks, counters and limit.
 * Streams point at it; the owner may change the limit (a reload) and the
 * change applies to every stream of the kind. */
struct stream_kind {
    const char *name; /* "client", "upstream": for logs */
    /* Bytes arrived (counted in m_bytes_in already). The owner parses them
     * with stream_parse, or drops them. */
    void (*read_cb)(struct stream *s, const char *data, size_t n);
    /* Runs the owner's parser over bytes from stream_parse or
     * stream_parse_held; returns how many it took. What it leaves is held
     * for the next stream_parse_held, unless it called stream_held_drop. */
    size_t (*parse_cb)(struct stream *s, const char *data, size_t n);
    /* The peer closed (UV_EOF) or reading failed (another libuv error). */
    void (*eof_cb)(struct stream *s, int err);
    /* A queued write finished, after its own callback (NULL: not wanted).
     * Not called once the stream is closing. */
    void (*written_cb)(struct stream *s, int status);
    /* stream_close was called: log the reason and let go of what the owner
     * holds. The memory stays until closed_cb. */
    void (*close_cb)(struct stream *s, unsigned reason);
    /* Every handle is closed: the owner frees the memory now. */
    void (*closed_cb)(struct stream *s);
    uint64_t *m_bytes_in, *m_bytes_out;        /* or NULL */
    uint64_t *m_pauses[STREAM_PAUSE_REASONS];  /* by pause bit; NULL: not counted */
    size_t write_limit;                        /* 0: no limit */
    enum stream_over_limit over_limit;
    uint16_t limit_pause;                      /* for STREAM_OVER_LIMIT_PAUSE */
    unsigned limit_reason;                     /* for STREAM_OVER_LIMIT_CLOSE */
};

/* Fills a kind's callbacks from one prefix: p_read_cb, p_parse_cb, p_eof_cb,
 * p_written_cb, p_close_cb and p_closed_cb. */
#define STREAM_CALLBACKS(p)                                                              \
    .read_cb = p##_read_cb, .parse_cb = p##_parse_cb, .eof_cb = p##_eof_cb,               \
    .written_cb = p##_written_cb, .close_cb = p##_close_cb, .closed_cb = p##_closed_cb

struct stream {
    uv_tcp_t tcp;               /* first: libuv's callbacks find the stream from it */
    const struct stream_kind *kind; /* the owner may switch it (a tunnel takes over) */
    void *owner;                /* for owners that do not embed the stream, or NULL */
    uv_handle_t *companion;     /* closed with the stream, or NULL */
    char *held;                 /* input the parser has not taken yet */
    uint32_t held_len, held_off;
    char *held_dead;            /* dropped during a parse: freed when the parse returns */
    uint32_t writes;            /* uv_write requests in flight */
    uint16_t pause;             /* the owner's pause reason bits */
    uint8_t handles;            /* handles not closed yet */
    bool closing;
    bool reading;               /* uv_read_start is on */
    bool in_parse;              /* inside kind->parse_cb */
    bool parse_again;           /* stream_parse_held during a parse: runs after it */
    bool discard;               /* the current parse's leftover is dropped */
};

/* Sets up the socket handle on loop; the stream does not read until
 * stream_read_update says so. */
void stream_init(struct stream *s, uv_loop_t *loop, const struct stream_kind *kind);
/* Accepts a pending connection of listener into s (with TCP_NODELAY).
 * Returns 0 or a negative libuv error; on error, close s. */
int stream_accept(struct stream *s, uv_stream_t *listener);
/* A handle closed together with the stream (the owner's timer); its data
 * pointer is taken over at close. */
static inline void stream_attach(struct stream *s, uv_handle_t *companion)
{
    s->companion = companion;
}
static inline uv_tcp_t *stream_tcp(struct stream *s)
{
    return &s->tcp;
}

/* --- reading --------------------------------------------------------------- */

/* Stops reading for `why` (one bit); counted in kind->m_pauses when it
 * was not set. Takes effect at the next stream_read_update. */
void stream_pause(struct stream *s, unsigned why);
/* Clears reasons (any bits). */
static inline void stream_resume(struct stream *s, unsigned why)
{
    s->pause &= (uint16_t)~why;
}
static inline bool stream_paused(const struct stream *s, unsigned why)
{
    return (s->pause & why) != 0;
}
/* Reads while open, with no pause reason and nothing held; starts or
 * stops reading to match. True when reading started now. */
bool stream_read_update(struct stream *s);

/* Runs kind->parse_cb over bytes from read_cb and holds what it leaves. */
void stream_parse(struct stream *s, const char *data, size_t n);
/* Runs kind->parse_cb over the held bytes, or over none when nothing is
 * held: a parser paused on the last byte of a read finishes that message
 * only when it runs again. During a parse of the same stream it runs once
 * that parse returns. */
void stream_parse_held(struct stream *s);
static inline bool stream_held_any(const struct stream *s)
{
    return s->held != NULL;
}
/* Drops the held bytes and, during a parse, what that parse leaves. */
void stream_held_drop(struct stream *s);

/* --- writing --------------------------------------------------------------- */

/* Writes bufs (at most STREAM_MAX_IOV) after everything written before.
 * cb (may be NULL) runs exactly once, possibly before this returns.
 * Returns 0, or a negative libuv error once cb has run with it: the owner
 * decides what a failed write means. Past kind->write_limit, the kind's
 * action applies. */
int stream_write(struct stream *s, const uv_buf_t *bufs, unsigned n, enum stream_write_mode mode,
                 stream_write_cb cb, void *ctx);
/* Bytes libuv holds for the socket, not yet taken by the kernel. */
static inline size_t stream_queued(const struct stream *s)
{
    return s->tcp.write_queue_size;
}
/* Writes queued and not finished. */
static inline unsigned stream_writes(const struct stream *s)
{
    return s->writes;
}
/* STREAM_OVER_LIMIT_PAUSE: clears the pause once the queue is down to half
 * the limit (done after every finished write too). */
static inline void stream_limit_update(struct stream *s)
{
    const struct stream_kind *k = s->kind;
    if (k->over_limit == STREAM_OVER_LIMIT_PAUSE && (s->pause & k->limit_pause) &&
        stream_queued(s) <= k->write_limit / 2)
        stream_resume(s, k->limit_pause);
}
/* Sends FIN once the queued writes are out; a failure closes the stream
 * with `reason`. Returns 0 or a negative libuv error. */
int stream_shutdown(struct stream *s, unsigned reason);

/* --- closing --------------------------------------------------------------- */

/* Closes once (later calls do nothing): kind->close_cb(s, reason), then
 * uv_close on every handle; kind->closed_cb when the last one is closed. */
void stream_close(struct stream *s, unsigned reason);
static inline bool stream_closing(const struct stream *s)
{
    return s->closing;
}

/* The peer's address; 0 or a negative libuv error. */
int stream_peer_addr(const struct stream *s, struct sockaddr_storage *ss);
/* The socket's file descriptor, or -1. */
int stream_fd(const struct stream *s);

#endif
