/*
 * events: Server-Sent Events for each [stream NAME], fanned out from one
 * Redis subscription per channel, resumable from a Redis Stream.
 *
 *   POST {path} ──EVALSHA──> XADD key MAXLEN ~ n * event T data D ; PUBLISH key "id\nT\nD"
 *                            (once per Idempotency-Key: sse_publish.h)
 *
 *   redis pub/sub ──> channel (one per key) ──> event serialised once ──> every client's queue
 *                                                (refcounted)               │ flushed once per
 *   GET {path} ──> client ── Last-Event-ID? ──> XRANGE key (id + ──────────>│ loop iteration
 *                         └─ else: the channel's position (its newest id),
 *                            read before the 200 when it has none yet
 *
 * A client's queue (frames with their bookkeeping, the write in flight and
 * the kernel's unsent bytes: sse_queue.h) is bounded by client_queue_bytes;
 * past it the client is dropped (sse_queue_overflow) and resumes from
 * history with Last-Event-ID; a resume whose replay would not fit gets
 * "event: reset" instead. When the pub/sub connection drops, clients stay
 * connected; each channel is subscribed again and its gap is read from the
 * Stream, so no event that reached the Stream is lost, and none is sent
 * twice (ids only go up, per client). What a channel holds while it reads
 * its gap is bounded too (sync_held_bytes, sync_gap_bytes: sse_channel.c).
 * A request that cannot be served now
 * (max_sse_clients, no position, draining) gets a 200 with a jittered
 * "retry:" and an ended stream, so that EventSource comes back.
 */
#ifndef BATCHD_EVENTS_H
#define BATCHD_EVENTS_H

#include <uv.h>

#include "daemon/config.h"
#include "daemon/http/router.h"

struct redis_pool;
struct events;

/* Creates the hub for cfg's streams (none is fine). redis may be NULL only
 * when there are no streams. Starts the pool's pub/sub connection. */
struct events *events_new(uv_loop_t *loop, const struct config *cfg, struct redis_pool *redis);
/* Applies a reloaded config: streams are matched by name and updated in
 * place (connected clients stay); removed ones take no new clients.
 * `cfg` must outlive the hub. */
void events_reconfigure(struct events *h, const struct config *cfg);
/* Where access = owner streams look up their owner_resource documents. */
struct resource_set;
void events_set_resources(struct events *h, struct resource_set *resources);
void events_add_routes(struct events *h, struct router *rt);
/* Shutdown: every client gets a last "retry:" (jittered) and its stream ends. */
void events_drain(struct events *h);
/* Frees the hub; clients must be gone (after the server closed them). */
void events_free(struct events *h);

#endif
