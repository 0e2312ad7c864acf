/*
 * http_forward: the heads batchd writes when it proxies, with no I/O.
 *
 *   client request (parsed) ──> http_forward_request ──> head for the app
 *   app answer (parsed)     ──> http_forward_response ──> head for the client
 *
 * The rule both follow: the framing of every forwarded message comes from
 * batchd's own parse, never from the headers it was sent. Content-Length and
 * Transfer-Encoding are never copied; batchd writes the one it will honour.
 * A Connection header may name hop-by-hop headers to drop, but never the
 * framing headers, Host, or a header batchd sets itself.
 */
#ifndef BATCHD_PROTO_HTTP_FORWARD_H
#define BATCHD_PROTO_HTTP_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/buf.h"
#include "proto/http.h"
#include "proto/http_response.h"

/* Whether a request asks to switch protocols, and whether batchd may let
 * it (a tunnel, daemon/proxy/tunnel.c). Only the first is tunnelled; the
 * others are forwarded as plain HTTP with Upgrade dropped, as every
 * request is when tunnels are off. */
#define HTTP_UPGRADES(X)                                                               \
    X(NONE, "none")           /* no Upgrade field, or Connection does not name it */  \
    X(OK, "ok")               /* GET, HTTP/1.1, no body framing, one valid Upgrade */ \
    X(H2C, "h2c")             /* HTTP/2 over cleartext: batchd speaks HTTP/1.1 only */ \
    X(METHOD, "method")       /* not GET */                                           \
    X(BODY, "body")           /* Content-Length or Transfer-Encoding: the bytes after \
                               * the head would be both body and tunnel */            \
    X(VERSION, "version")     /* HTTP/1.0 */                                          \
    X(MALFORMED, "malformed") /* several Upgrade fields, or not a protocol list */

enum http_upgrade {
#define X(name, text) HTTP_UPGRADE_##name,
    HTTP_UPGRADES(X)
#undef X
};

const char *http_upgrade_name(enum http_upgrade u);
/* Classifies m; for HTTP_UPGRADE_OK, *protocols is its Upgrade value. */
enum http_upgrade http_request_upgrade(const struct http_request *m, str_t *protocols);

struct http_forward_req {
    /* in */
    str_t upgrade;              /* non-empty: forward this Upgrade value with
                                 * "Connection: Upgrade" (HTTP_UPGRADE_OK only) */
    const char *peer;           /* the client's address, for X-Forwarded-For */
    bool peer_trusted;          /* keep incoming X-Forwarded-* and Forwarded */
    bool pass_underscores;      /* forward header names containing '_' */
    const char *default_host;   /* Host for a request that has none (HTTP/1.0) */
    const char *proto;          /* X-Forwarded-Proto batchd sets: "http" */
    const char *strip_header;   /* one more header never forwarded (or NULL) */
    /* out */
    bool chunked;               /* body goes as chunks: frame each piece */
    unsigned dropped_underscore;/* header fields dropped for a '_' in the name */
    unsigned dropped_forwarded; /* X-Forwarded-* / Forwarded from an untrusted peer */
};

/* Appends the request head for the app to `out`: origin-form target,
 * HTTP/1.1, one Host (the absolute-form authority when there is one, else
 * the client's Host, else default_host), the body framing batchd parsed
 * (Content-Length: N, or Transfer-Encoding: chunked), X-Forwarded-For
 * (earlier values kept only from a trusted peer, then the peer),
 * X-Forwarded-Proto and -Host, and Via. */
void http_forward_request(const struct http_request *m, struct http_forward_req *f, struct buf *out);

struct http_forward_resp {
    /* in */
    bool upgrade;               /* a 101 the request asked for (resp->switching): its
                                 * Upgrade value goes out with "Connection: Upgrade" */
    bool head_request;          /* the answer is to a HEAD */
    bool client_http10;         /* the client spoke HTTP/1.0 */
    bool close;                 /* say Connection: close */
    const char *extra;          /* header lines ("Name: v\r\n"...) to add, or NULL */
    size_t extra_len;
    bool drop_cors;             /* drop the app's Access-Control-* fields (extra replaces them) */
    /* out */
    bool body_allowed;          /* the client gets body bytes */
    bool chunked;               /* caller frames body pieces as chunks */
    bool close_delimited;       /* the body ends when the connection does */
};

/* True for answers that never have a body whatever their headers say
 * (1xx, 204, 304; RFC 9110 6.4.1). */
bool http_status_bodyless(int status);

/* Appends the answer head for the client to `out`, with the framing batchd
 * will produce: the parsed Content-Length when the app gave one (relayed
 * as is for HEAD and 304), else chunks for HTTP/1.1 or a close-delimited
 * body for HTTP/1.0. Sets the out fields. */
void http_forward_response(const struct http_response *resp, struct http_forward_resp *f,
                           struct buf *out);

#endif
