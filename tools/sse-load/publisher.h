/*
 * publisher: publishes events over a few keep-alive HTTP/1.1 connections.
 *
 *   main ──publisher_submit(ch, seq)──▶ queue of conn (ch % n) ──POST──▶ batchd
 *        ◀──────────── on_answer_cb(ch, seq, status, id) ◀──201 {"id":..}──
 *
 * Each connection has one POST in flight at a time and a channel always
 * uses the same connection, so a channel's events are appended in seq order
 * and the stream ids batchd hands out increase with seq. A POST is never
 * retried (it is not idempotent): a lost connection fails the POST in
 * flight, and the next one reconnects.
 */
#ifndef SSE_LOAD_PUBLISHER_H
#define SSE_LOAD_PUBLISHER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct publisher_answer {
    int status;             /* HTTP status, 0 when there was no response */
    const char *reason;     /* NULL on 201 with an id; else why it failed */
    const char *id;         /* the stream id from the body, NUL-terminated */
    uint64_t t_ns;          /* the payload's t: CLOCK_REALTIME at the write */
};

struct publisher_conf {
    uv_loop_t *loop;
    const struct sockaddr *server;
    const char *host;                 /* Host header */
    const char *const *paths;         /* request target per channel, query included */
    const char *token;                /* bearer token */
    size_t payload;                   /* event data size, see payload.h */
    unsigned connections;
    /* Runs once per submitted event, in submit order per channel. `a` and
     * its strings are valid during the call only. */
    void (*on_answer_cb)(void *ctx, uint32_t channel, uint32_t seq,
                         const struct publisher_answer *a);
    void *ctx;
};

struct publisher;

/* conf must outlive the publisher. */
struct publisher *publisher_new(const struct publisher_conf *conf);

/* Queues event `seq` of `channel`; it is sent when its connection is free. */
void publisher_submit(struct publisher *p, uint32_t channel, uint32_t seq);

/* POSTs submitted and not answered yet. */
size_t publisher_pending(const struct publisher *p);

/* Closes every connection and frees p once the handles are closed. Queued
 * events are dropped without an answer. */
void publisher_close(struct publisher *p);

#endif
