/*
 * sse_queue: what an SSE client has waiting to be written, in real bytes.
 *
 *   frame (serialised once, refcounted, shared by every client)
 *      │ sse_out_push: a reference, costed at frame + bookkeeping
 *      v
 *   pending ──sse_out_flush──> one write in flight per client: small frames
 *      │                       copied into one buffer, large ones referenced
 *      v
 *   libuv write queue ──> kernel send buffer (SO_SNDBUF capped; its unsent
 *                         bytes read with SIOCOUTQ)
 *
 * While a write is in flight, new frames wait in `pending` (one pointer
 * each) instead of becoming write requests of their own (a libuv write
 * request is ~250 bytes, five times a small event). sse_out_queued() is
 * what the client costs: every queued frame with its bookkeeping, the write
 * in flight, and what the kernel holds unsent.
 */
#ifndef BATCHD_SSE_QUEUE_H
#define BATCHD_SSE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/buf.h"
#include "proto/sse.h"

struct req;

/* A serialised frame. has_id: an event with a Stream id (not a retry,
 * comment or id-less reset). */
struct sse_ev {
    uint32_t refs;
    uint32_t len;
    bool has_id;
    struct sse_id id;
    char bytes[];
};

/* What one queued reference costs: the frame, its header and malloc's
 * rounding, and the queue slot (twice: arrays grow by doubling). Charged in
 * full to every client holding it, which is what it costs once the others
 * have written it. */
#define SSE_EV_OVERHEAD (sizeof(struct sse_ev) + 16 + 2 * sizeof(void *))
#define SSE_EV_COST(e) ((size_t)(e)->len + SSE_EV_OVERHEAD)

/* Copies b's bytes into a new frame holding one reference. */
struct sse_ev *sse_ev_new(const struct buf *b, bool has_id, struct sse_id id);
void sse_ev_unref(struct sse_ev *e);
/* The frame of an event, or NULL when it is not valid as one
 * (sse_event_valid): the same rules for pub/sub messages and Stream
 * entries, since either may have been written past batchd. The id line is
 * written from the parsed id. */
struct sse_ev *sse_ev_event(struct sse_id id, str_t id_s, str_t event, str_t data);

/* A queue of frame references: two inline slots, then the heap. */
struct sse_evq {
    struct sse_ev **v;
    unsigned n, cap;
    size_t bytes;               /* frame bytes */
    size_t cost;                /* what they cost (SSE_EV_COST each) */
    struct sse_ev *in[2];
};

/* Appends a reference (the queue takes one of its own). */
void sse_evq_push(struct sse_evq *q, struct sse_ev *e);
/* Empties the queue; with unref, drops its references too. */
void sse_evq_clear(struct sse_evq *q, bool unref);
/* Moves src's entries into an empty dst; src is left empty. */
void sse_evq_take(struct sse_evq *dst, struct sse_evq *src);

struct sse_batch;

/* The output side of one SSE client. Allocated apart from its owner: a
 * write in flight may outlive the owner, and then frees it. */
struct sse_out {
    struct req *r;
    void *owner;                /* NULL once the owner let go */
    /* A write finished while frames wait: the owner schedules a flush. */
    void (*written_cb)(void *owner);
    struct sse_evq pending;
    bool writing;
    struct sse_ev *w_one;       /* the write in flight: one frame by reference, */
    struct sse_batch *w_batch;  /* or a gathered batch */
    size_t w_cost;
    size_t sndbuf;              /* the kernel's send buffer as it reports it; SIZE_MAX when not capped */
};

struct sse_out *sse_out_new(struct req *r, void *owner, void (*written_cb)(void *owner));
/* The owner lets go: pending frames are dropped; the memory goes now, or
 * when the write in flight completes. */
void sse_out_free(struct sse_out *o);
/* Caps the socket's SO_SNDBUF at bytes (0: leave the kernel's default,
 * which grows up to tcp_wmem's maximum). */
void sse_out_socket_setup(struct sse_out *o, int64_t bytes);

static inline void sse_out_push(struct sse_out *o, struct sse_ev *e)
{
    sse_evq_push(&o->pending, e);
}

/* Bytes this client holds: pending frames with their bookkeeping, the
 * write in flight (or libuv's queue, if larger), and with `kernel` the
 * socket's unsent bytes (one ioctl). */
size_t sse_out_queued(const struct sse_out *o, bool kernel);
/* True when `extra` more bytes keep the client within limit, kernel
 * buffer included. Asks the kernel only when a full send buffer would not
 * fit: a client that keeps up costs no system call. */
bool sse_out_fits(const struct sse_out *o, size_t extra, size_t limit);

/* Starts writing the pending frames unless a write is in flight (its
 * completion asks for the next flush). *delivered counts the frames with
 * an id handed over. Returns 0, or a negative errno when the connection
 * failed: the owner may be gone by then (its abort callback ran), so the
 * caller must not touch it. */
int sse_out_flush(struct sse_out *o, uint64_t *delivered) __attribute__((warn_unused_result));
/* Hands every pending frame to the socket now, behind the write in flight
 * (copied: the queue lets go of them). For a stream's last words before it
 * ends. Returns 0, or a negative errno when the connection failed (the
 * owner may be gone, as with sse_out_flush). */
int sse_out_finish(struct sse_out *o) __attribute__((warn_unused_result));

#endif
