/*
 * http_resp: an incremental HTTP/1.1 response parser with no I/O, just big
 * enough for sse-load: the status, the four headers it acts on, and a body
 * framed by Content-Length, chunked encoding or the end of the connection.
 *
 * Like sse_parse it keeps only a short prefix of each head line, so a
 * parser costs under 80 bytes and a head may be split anywhere.
 */
#ifndef SSE_LOAD_HTTP_RESP_H
#define SSE_LOAD_HTTP_RESP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define HTTP_RESP_LINE_KEEP 48
#define HTTP_RESP_MAX_HEAD 16384

enum http_resp_state {
    HTTP_RESP_STATUS_LINE,
    HTTP_RESP_HEADER_LINE,
    HTTP_RESP_BODY_UNTIL_CLOSE,
    HTTP_RESP_BODY_LENGTH,
    HTTP_RESP_CHUNK_SIZE,
    HTTP_RESP_CHUNK_EXT,
    HTTP_RESP_CHUNK_DATA,
    HTTP_RESP_CHUNK_DATA_END,
    HTTP_RESP_TRAILER_LINE,
    HTTP_RESP_DONE,
};

/* flags */
#define HTTP_RESP_CHUNKED 0x01      /* Transfer-Encoding: chunked */
#define HTTP_RESP_HAS_LENGTH 0x02   /* Content-Length seen */
#define HTTP_RESP_CONN_CLOSE 0x04   /* Connection: close, or HTTP/1.0 */
#define HTTP_RESP_EVENT_STREAM 0x08 /* Content-Type: text/event-stream */
#define HTTP_RESP_DIGIT 0x10        /* internal: a chunk size digit seen */
#define HTTP_RESP_CUT 0x20          /* internal: line longer than line[] */

struct http_resp {
    uint64_t remaining;         /* body or chunk bytes still to come */
    uint16_t status;
    uint16_t head_bytes;
    uint8_t state;              /* enum http_resp_state */
    uint8_t flags;
    uint8_t kept;
    char line[HTTP_RESP_LINE_KEEP];
};

/* Each callback returns 0 to go on or nonzero to stop http_resp_execute
 * at once (the connection is being closed). */
struct http_resp_cbs {
    int (*on_head_cb)(void *ctx, const struct http_resp *r);
    int (*on_body_cb)(void *ctx, const char *p, size_t n);
    int (*on_done_cb)(void *ctx, const struct http_resp *r);
};

void http_resp_init(struct http_resp *r);

/* Feeds n bytes. Returns the bytes consumed: n, or fewer when a callback
 * stopped the parser or the response ended (state HTTP_RESP_DONE); or
 * -EPROTO for a malformed response, -E2BIG for a head over
 * HTTP_RESP_MAX_HEAD. 1xx interim responses are skipped. */
ssize_t http_resp_execute(struct http_resp *r, const struct http_resp_cbs *cbs,
                          void *ctx, const char *p, size_t n)
    __attribute__((warn_unused_result));

/* The peer closed the connection. A body framed by the close ends here
 * (on_done_cb runs, returns 0); anything else is cut short: -EPIPE. */
int http_resp_eof(struct http_resp *r, const struct http_resp_cbs *cbs, void *ctx)
    __attribute__((warn_unused_result));

#endif
