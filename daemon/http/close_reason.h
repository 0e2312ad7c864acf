/*
 * close_reason: why a client connection closed. Each reason is logged by
 * name with the close and counted in
 * batchd_connections_closed_total{reason}. Handlers that end a stream or
 * give up on a client name one of these (req_stream_end_reason,
 * req_stream_abort); they need nothing else of the connection.
 */
#ifndef BATCHD_CLOSE_REASON_H
#define BATCHD_CLOSE_REASON_H

#define CONN_CLOSE_REASONS(X)                                                   \
    X(PEER_CLOSED, "peer_closed")                 /* client closed first */      \
    X(READ_ERROR, "read_error")                                                \
    X(WRITE_ERROR, "write_error")                                              \
    X(HEADER_TIMEOUT, "header_timeout")           /* slowloris guard */          \
    X(BODY_TIMEOUT, "body_timeout")                                            \
    X(IDLE_TIMEOUT, "idle_timeout")               /* keep-alive idle */          \
    X(WRITE_TIMEOUT, "write_timeout")             /* client stopped reading */   \
    X(CONNECTION_CLOSE, "connection_close")       /* "Connection: close"/1.0 */ \
    X(BAD_REQUEST, "bad_request")                                              \
    X(AMBIGUOUS_LENGTH, "ambiguous_length")       /* smuggling guard */          \
    X(URI_TOO_LONG, "uri_too_long")                                            \
    X(HEADERS_TOO_LARGE, "headers_too_large")                                  \
    X(BODY_TOO_LARGE, "body_too_large")                                        \
    X(VERSION_NOT_SUPPORTED, "version_not_supported")                          \
    X(METHOD_NOT_ALLOWED, "method_not_allowed")   /* TRACE, CONNECT */           \
    X(TOO_MANY_CONNECTIONS, "too_many_connections")                            \
    X(SHUTDOWN, "shutdown")                                                    \
    X(SHUTDOWN_FORCED, "shutdown_forced")                                      \
    X(SSE_QUEUE_OVERFLOW, "sse_queue_overflow")                                \
    X(SSE_OVERLOADED, "sse_overloaded")           /* over max_sse_clients */     \
    X(SSE_UNAVAILABLE, "sse_unavailable")         /* no position or owner yet */ \
    X(UPSTREAM_ERROR, "upstream_error")                                        \
    X(STREAM_ENDED, "stream_ended")                                            \
    X(UPGRADE_REFUSED, "upgrade_refused")         /* the app did not switch */   \
    X(TUNNEL_CLOSED, "tunnel_closed")             /* was a tunnel: see         \
                                                   * batchd_tunnel_closes_total */

enum conn_close_reason {
#define X(name, text) CONN_CLOSE_##name,
    CONN_CLOSE_REASONS(X)
#undef X
    CONN_CLOSE__COUNT
};

#endif
