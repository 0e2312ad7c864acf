/*
 * sse: Server-Sent Events framing, Redis Stream ids, and the pub/sub
 * message batchd publishes for each event.
 *
 *   frame:    id: 1732300000000-0\n
 *             event: note\n            (left out for the default "message")
 *             data: first line\n
 *             data: second line\n
 *             \n
 *
 * Data lines end at LF, CRLF or CR (the SSE grammar allows all three), so
 * data holding CR or CRLF reaches the browser with LF in their place; LF
 * round-trips exactly.
 */
#ifndef BATCHD_PROTO_SSE_H
#define BATCHD_PROTO_SSE_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/buf.h"

/* A Redis Stream entry id, "<ms>-<seq>". */
struct sse_id {
    uint64_t ms, seq;
};

#define SSE_ID_MAX_LEN 41 /* two 20-digit numbers and '-' */

/* Parses "<ms>-<seq>" (or "<ms>", meaning seq 0). */
bool sse_id_parse(str_t s, struct sse_id *out);
int sse_id_cmp(struct sse_id a, struct sse_id b);
/* Writes the id as text into out (SSE_ID_MAX_LEN + 1 bytes); returns its length. */
size_t sse_id_format(struct sse_id id, char *out);

/* Event type names: 1-64 bytes of [A-Za-z0-9_.:-]. */
bool sse_event_name_valid(str_t name);
/* What may become a frame, from pub/sub or from a Stream entry alike: an
 * id "<ms>-<seq>", an empty or valid event name, and UTF-8 data. Anything
 * else could forge fields (a line break in a name) or garble the stream. */
bool sse_event_valid(str_t id, str_t event, str_t data);

#define SSE_IDEMPOTENCY_KEY_MAX 128
/* An Idempotency-Key header value: 1-128 token characters (RFC 9110
 * tchar), optionally as a quoted string ("..."), the structured-field form
 * of draft-ietf-httpapi-idempotency-key-header. Sets *key to the bare key. */
bool sse_idempotency_key_parse(str_t value, str_t *key);

/* Appends a complete event frame. An empty or "message" event gets no
 * event: line. Empty data still produces one "data:" line. */
void sse_frame_event(struct buf *out, str_t id, str_t event, str_t data);
/* "retry: <ms>\n\n" */
void sse_frame_retry(struct buf *out, unsigned ms);
/* ": <text>\n\n" (a comment; text must hold no line break) */
void sse_frame_comment(struct buf *out, const char *text);

/* The pub/sub message for an event: "<id>\n<event>\n<data>". */
void sse_message_build(struct buf *out, str_t id, str_t event, str_t data);
/* Splits a pub/sub message; false when it is malformed. */
bool sse_message_parse(str_t msg, str_t *id, str_t *event, str_t *data);

#endif
