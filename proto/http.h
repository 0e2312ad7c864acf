/*
 * http: HTTP/1.1 request parsing over llhttp, with limits, and the small
 * pieces of response assembly that need no I/O.
 *
 *   bytes from a socket ──> http_parser_execute ──> begin_cb   (owner gives storage)
 *                                                ├─> head_cb    (route, pick body mode)
 *                                                ├─> body_cb    (streamed bodies only)
 *                                                └─> complete_cb (request is whole)
 *
 * The parser copies the request line and headers into the request's own
 * `head` buffer, so the caller's read buffer may be reused as soon as
 * http_parser_execute returns. It enforces the header, URI and body limits
 * and rejects ambiguous framing (request smuggling) itself, whatever the
 * llhttp version does.
 */
#ifndef BATCHD_PROTO_HTTP_H
#define BATCHD_PROTO_HTTP_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "proto/buf.h"

/* Why a request was rejected; each maps to one status and one JSON code. */
enum http_error {
    HTTP_OK = 0,
    HTTP_ERR_MALFORMED,         /* 400 bad_request */
    HTTP_ERR_FRAMING,           /* 400 ambiguous_length: CL+TE, several CL, bad TE */
    HTTP_ERR_URI_TOO_LONG,      /* 414 uri_too_long */
    HTTP_ERR_HEADERS_TOO_LARGE, /* 431 headers_too_large */
    HTTP_ERR_BODY_TOO_LARGE,    /* 413 body_too_large */
    HTTP_ERR_METHOD,            /* 405 / 501 handled by owner; parser: unknown method -> 501 */
    HTTP_ERR_VERSION,           /* 505 version_not_supported */
    HTTP_ERR_METHOD_NOT_ALLOWED,/* 405 method_not_allowed: TRACE and CONNECT, never forwarded */
    HTTP_ERR__COUNT
};

int http_error_status(enum http_error e);
const char *http_error_code(enum http_error e);

enum http_body_mode {
    HTTP_BODY_BUFFER = 0, /* collect into req->body, bounded by limits->max_body_bytes */
    HTTP_BODY_STREAM,     /* hand each piece to body_cb, no bound here */
    HTTP_BODY_DISCARD,    /* read and drop */
};

struct http_limits {
    size_t max_header_bytes; /* request line + headers as sent on the wire */
    size_t max_uri_bytes;
    size_t max_body_bytes;   /* for HTTP_BODY_BUFFER; 0 means no body allowed */
    unsigned max_headers;
};

/* A header as offsets into http_request.head (the buffer may move while parsing). */
struct http_header {
    uint32_t name_off, name_len;
    uint32_t value_off, value_len;
};

#define HTTP_NO_LENGTH UINT64_MAX

struct http_request {
    struct buf head;            /* URL, then header names and values */
    struct http_header *headers;
    uint32_t n_headers, cap_headers;
    uint32_t url_len;           /* the URL is head.data[0 .. url_len) */
    uint32_t wire_head_bytes;   /* estimate of the head's size on the wire */
    uint8_t method;             /* llhttp_method_t */
    uint8_t version_major, version_minor;
    bool keep_alive;            /* valid after complete_cb */
    bool chunked;
    bool expect_continue;
    uint8_t n_content_length;   /* how many Content-Length fields were sent */
    uint8_t n_transfer_encoding;
    uint64_t content_length;    /* HTTP_NO_LENGTH when absent */
    enum http_body_mode body_mode;
    struct buf body;            /* HTTP_BODY_BUFFER only */
    str_t path, query;          /* set before head_cb; raw (not percent-decoded) */
};

void http_request_init(struct http_request *m);
void http_request_deinit(struct http_request *m);
/* Resets for reuse, keeping buffers' memory. */
void http_request_reset(struct http_request *m);

/* Header i's name and value, of a request or a response (struct
 * http_response has the same head and headers fields). */
static inline str_t http_field_name(const struct buf *head, const struct http_header *h)
{
    return str_make(head->data + h->name_off, h->name_len);
}
static inline str_t http_field_value(const struct buf *head, const struct http_header *h)
{
    return str_make(head->data + h->value_off, h->value_len);
}
#define http_header_name(m, i) http_field_name(&(m)->head, &(m)->headers[i])
#define http_header_value(m, i) http_field_value(&(m)->head, &(m)->headers[i])
/* First header named `name` (case-insensitive); false when absent. */
bool http_request_header(const struct http_request *m, const char *name, str_t *value);
const char *http_method_name(uint8_t method);

struct http_parser;

struct http_parser_cbs {
    /* A new request starts: return storage for it (initialised with
     * http_request_init or reset). The parser fills it until complete_cb. */
    struct http_request *(*begin_cb)(struct http_parser *p);
    /* Request line and headers are whole. Set m->body_mode if not BUFFER.
     * Return 0, an http_error to reject, or HTTP_PARSER_PAUSE to stop here
     * (the body has not been read yet). */
    int (*head_cb)(struct http_parser *p, struct http_request *m);
    /* A piece of a HTTP_BODY_STREAM body. Return 0, an http_error or HTTP_PARSER_PAUSE. */
    int (*body_cb)(struct http_parser *p, struct http_request *m, const char *at, size_t n);
    /* The request is whole. Return 0 or HTTP_PARSER_PAUSE (stop before the next one). */
    int (*complete_cb)(struct http_parser *p, struct http_request *m);
};

#define HTTP_PARSER_PAUSE (-1)

struct http_parser {
    llhttp_t ll;
    const struct http_parser_cbs *cbs;
    const struct http_limits *limits;
    void *data;                  /* owner's pointer */
    struct http_request *req;    /* being parsed; NULL between requests */
    enum http_error error;
    bool in_field;               /* inside a header name (it may span reads) */
    bool paused;
    bool failed;
};

void http_parser_init(struct http_parser *p, const struct http_parser_cbs *cbs,
                      const struct http_limits *limits, void *data);

/* Feeds bytes. Returns how many were consumed: all of them unless the parser
 * paused (see http_parser_resume) or failed (p->error says why; the
 * connection must answer with that error and close). */
size_t http_parser_execute(struct http_parser *p, const char *data, size_t len);
/* Clears a pause so that http_parser_execute continues where it stopped.
 * Call http_parser_execute after it even when no bytes are left over (with
 * len 0 and a non-NULL data): a request paused in head_cb or body_cb at the
 * end of a read has no more bytes to wait for, yet completes only then. */
void http_parser_resume(struct http_parser *p);
/* The peer closed its side: true when a request was cut off mid-way. */
bool http_parser_eof_mid_request(const struct http_parser *p);

/* One llhttp_execute step, shared with the response parser: returns the
 * bytes used (all, or up to where it paused or failed) and sets *paused or
 * *failed. *e is HPE_OK, HPE_PAUSED or the error; nothing runs once *failed. */
size_t http_llhttp_step(llhttp_t *ll, bool *paused, bool *failed, const char *data, size_t len,
                        llhttp_errno_t *e);
/* Resumes a paused llhttp and clears *paused. */
void http_llhttp_resume(llhttp_t *ll, bool *paused);

/* Field-name and field-value rules shared by the request and response
 * parsers. llhttp 8 lets a space through inside a field name ("Host : x"
 * arrives as "Host "; RFC 9112 5.1 says reject), and keeps the spaces and
 * tabs that end a value. */
bool http_token_valid(const char *s, size_t n);
/* The header's value without trailing spaces and tabs (RFC 9110 5.5). */
void http_header_trim(struct http_header *h, const char *head);

/* Upgrade (RFC 9110 7.8). A protocol list, "websocket, foo/2": true when
 * every element is a protocol (a token, optionally "/" and a token) and
 * there is at least one. */
bool http_upgrade_list_valid(str_t list);
/* True when `chosen` (a 101's Upgrade value) is exactly one protocol and
 * `offered` (the request's Upgrade value, valid) lists it; compared
 * case-insensitively. */
bool http_upgrade_offered(str_t offered, str_t chosen);

/* Response helpers. */
const char *http_status_reason(int status);
/* "Sun, 06 Nov 1994 08:49:37 GMT" into out (at least 30 bytes); returns the length. */
size_t http_date_format(time_t t, char *out);

#endif
