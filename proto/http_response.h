/*
 * http_response: HTTP/1.x response parsing over llhttp, for the upstream
 * side of the proxy. Like the request parser, it copies the status line
 * and headers into the response's own buffer, bounds them, and hands the
 * body over in pieces.
 *
 *   bytes from the app server ──> http_rparser_execute ──> head_cb (status, headers)
 *                                                     ├─> body_cb (decoded pieces)
 *                                                     └─> complete_cb
 */
#ifndef BATCHD_PROTO_HTTP_RESPONSE_H
#define BATCHD_PROTO_HTTP_RESPONSE_H

#include <llhttp.h>
#include <stdbool.h>
#include <stdint.h>

#include "proto/buf.h"
#include "proto/http.h"

struct http_response {
    int status;
    uint8_t version_minor;
    bool chunked;
    bool keep_alive;            /* valid after complete_cb */
    bool folded;                /* a header value was continued on a line of its own
                                 * (obs-fold): llhttp joins it with a space */
    bool switching;             /* a 101 to an upgrade the request asked for */
    uint64_t content_length;    /* HTTP_NO_LENGTH when absent */
    struct buf head;            /* reason phrase, then header names and values */
    uint32_t reason_len;        /* head.data[0 .. reason_len) */
    struct http_header *headers;
    uint32_t n_headers, cap_headers;
};

void http_response_init(struct http_response *r);
void http_response_deinit(struct http_response *r);
/* Header i: http_header_name(r, i) and http_header_value(r, i) (proto/http.h). */
bool http_response_header(const struct http_response *r, const char *name, str_t *value);

struct http_rparser;

struct http_rparser_cbs {
    /* Status line and headers are in. Return 0 or HTTP_PARSER_PAUSE. */
    int (*head_cb)(struct http_rparser *p, struct http_response *r);
    /* A piece of the decoded body. Return 0 or HTTP_PARSER_PAUSE. */
    int (*body_cb)(struct http_rparser *p, const char *at, size_t n);
    /* The response is whole (1xx responses are skipped before head_cb,
     * except an expected 101: see http_rparser_expect_upgrade). */
    int (*complete_cb)(struct http_rparser *p, struct http_response *r);
};

struct http_rparser {
    llhttp_t ll;
    const struct http_rparser_cbs *cbs;
    void *data;
    struct http_response resp;
    size_t max_head_bytes;
    size_t head_bytes;
    bool head_request;          /* answer to HEAD: no body whatever the headers say */
    bool in_field;
    bool in_value;              /* a piece of the current value came already */
    bool value_at_end;          /* ... and ended where its read did */
    const char *value_end;      /* where that piece ended */
    const char *exec_begin, *exec_end; /* the bytes of the current execute */
    uint64_t execs, value_exec; /* executes so far; the one of that piece */
    bool interim;               /* a 1xx being skipped */
    bool upgrade_asked;         /* the request offered upgrade_offer */
    struct buf upgrade_offer;   /* its Upgrade value, copied */
    bool paused;
    bool failed;
    const char *error;
};

void http_rparser_init(struct http_rparser *p, const struct http_rparser_cbs *cbs,
                       size_t max_head_bytes, void *data);
void http_rparser_deinit(struct http_rparser *p);
/* Prepares for the next response on a kept-alive connection. */
void http_rparser_reset(struct http_rparser *p, bool head_request);
/* The request this parser reads the answer to asked to switch to one of
 * `protocols` (its Upgrade value, copied here; cleared by reset). Then a
 * 101 with no Content-Length or Transfer-Encoding and one Upgrade field
 * naming exactly one of those protocols is the final answer: head_cb gets
 * it with resp->switching set and must return HTTP_PARSER_PAUSE; the bytes
 * after its head are the new protocol's, never parsed here. Any other 101
 * fails the parse ("101 to a request that did not ask", "101 with a body",
 * "101 to a protocol not offered"), as does every 101 when the request did
 * not ask. */
void http_rparser_expect_upgrade(struct http_rparser *p, str_t protocols);
/* Feeds bytes; returns how many were consumed (all unless paused or failed). */
size_t http_rparser_execute(struct http_rparser *p, const char *data, size_t len);
void http_rparser_resume(struct http_rparser *p);
/* The server closed: completes a close-delimited body, or fails. */
void http_rparser_finish(struct http_rparser *p);

#endif
