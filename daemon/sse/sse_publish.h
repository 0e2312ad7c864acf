/*
 * sse_publish: POST to a stream's path stores one event in its Redis Stream
 * and publishes it, in one Lua script, once per Idempotency-Key.
 *
 *   POST ──EVALSHA──> key seen in the window? ──yes──> its first id (stores nothing)
 *                        │ no
 *                        v
 *                     XADD key MAXLEN ~ n * event T data D ; PUBLISH key "id\nT\nD"
 *                     SET batchd:idem:{key}:<k> "<id> <sha1(T, D)>" PX window
 *
 * The check and the store are one script, so a retry is stored once even
 * when it reaches another batchd process. Answers:
 *   201 {"id"}                     stored (a retry with the same key: the first id,
 *                                  and Idempotent-Replayed: true)
 *   503 redis_unavailable          the script never ran: safe to retry (Retry-After)
 *   502/504 publish_outcome_unknown  Redis went away (504: timed out) after the
 *                                  script was sent; it may have run. Retry with the
 *                                  same Idempotency-Key.
 *   422 idempotency_key_reused     the key came with another event or data
 *   400 invalid_idempotency_key
 */
#ifndef BATCHD_SSE_PUBLISH_H
#define BATCHD_SSE_PUBLISH_H

#include <stdint.h>

#include "daemon/config.h"
#include "proto/buf.h"

struct req;
struct redis_pool;
struct sse_publisher;

/* Per stream counters, in /metrics with stream="name". */
struct sse_publish_stats {
    uint64_t *published;        /* stored (first time) */
    uint64_t *replayed;         /* answered from an Idempotency-Key */
};

struct sse_publisher *sse_publisher_new(struct redis_pool *redis);
void sse_publisher_free(struct sse_publisher *p);
void sse_publish_stats_init(struct sse_publish_stats *st, const char *stream);

/* Answers a publish to `id` (its path parameter, decoded and valid) of
 * stream cfg; the caller checked the token. cfg and st must outlive the
 * request (a reload keeps replaced configurations). */
void sse_publish_handle(struct sse_publisher *p, struct req *r, const struct cfg_stream *cfg,
                        const struct sse_publish_stats *st, str_t id);

#endif
