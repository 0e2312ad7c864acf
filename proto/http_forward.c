/* http_forward: request and answer heads for the proxy. See http_forward.h. */
#include "proto/http_forward.h"

#include <string.h>

/* Never forwarded either way: they describe this hop's connection
 * (RFC 9110 7.6.1, and Proxy-Authenticate 11.7.1), or batchd writes its own
 * (framing). */
static const char *const hop_headers[] = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
    "proxy-authenticate", "transfer-encoding", "content-length",
};

/* A Connection header may not name these: they frame the message, route
 * it, or are written by batchd itself. */
static const char *const protected_headers[] = {
    "content-length", "transfer-encoding", "host", "x-forwarded-for", "x-forwarded-proto",
    "x-forwarded-host", "via", "forwarded",
};

static bool in_list(str_t name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (str_eq_ci(name, str_cstr(list[i])))
            return true;
    return false;
}

#define IN(name, list) in_list(name, list, sizeof(list) / sizeof(list[0]))

/* The Connection fields of a message: the first MAX_CONN_FIELDS kept at
 * hand, and for a message with more, the message itself to scan (every
 * field counts, however many were sent). */
#define MAX_CONN_FIELDS 8

struct conn_fields {
    str_t v[MAX_CONN_FIELDS];
    unsigned n;
    bool more;
    const struct http_request *req;
    const struct http_response *resp;
};

static void conn_fields_add(struct conn_fields *c, str_t v)
{
    if (c->n < MAX_CONN_FIELDS)
        c->v[c->n++] = v;
    else
        c->more = true;
}

static bool named_in_connection(str_t name, const struct conn_fields *c)
{
    if (IN(name, protected_headers))
        return false;
    for (unsigned i = 0; i < c->n; i++)
        if (str_list_has_token(c->v[i], name))
            return true;
    if (!c->more)
        return false;
    uint32_t n = c->req ? c->req->n_headers : c->resp->n_headers;
    for (uint32_t i = 0; i < n; i++) {
        str_t k = c->req ? http_header_name(c->req, i) : http_header_name(c->resp, i);
        str_t v = c->req ? http_header_value(c->req, i) : http_header_value(c->resp, i);
        if (str_eq_ci(k, STR_LIT("connection")) && str_list_has_token(v, name))
            return true;
    }
    return false;
}

static void add_field(struct buf *h, str_t n, str_t v)
{
    buf_append(h, n.p, n.len);
    buf_append(h, ": ", 2);
    buf_append(h, v.p, v.len);
    buf_append(h, "\r\n", 2);
}

/* The authority of an absolute-form target ("http://host:port/p"), or an
 * empty str_t. */
static str_t target_authority(const struct http_request *m)
{
    const char *u = m->head.data;
    size_t n = m->url_len;
    if (n == 0 || u[0] == '/' || u[0] == '*')
        return STR_NULL;
    const char *sep = memmem(u, n, "://", 3);
    if (sep == NULL)
        return m->method == HTTP_CONNECT ? str_make(u, n) : STR_NULL;
    size_t start = (size_t)(sep - u) + 3, i = start;
    while (i < n && u[i] != '/' && u[i] != '?' && u[i] != '#')
        i++;
    str_t a = str_make(u + start, i - start);
    /* userinfo is never forwarded */
    const char *at = memchr(a.p, '@', a.len);
    if (at)
        a = str_make(at + 1, a.len - (size_t)(at + 1 - a.p));
    return a;
}

static bool is_forwarding_header(str_t n)
{
    return str_eq_ci(n, STR_LIT("x-forwarded-for")) || str_eq_ci(n, STR_LIT("x-forwarded-proto")) ||
           str_eq_ci(n, STR_LIT("x-forwarded-host")) || str_eq_ci(n, STR_LIT("forwarded"));
}

const char *http_upgrade_name(enum http_upgrade u)
{
    static const char *const names[] = {
#define X(name, text) text,
        HTTP_UPGRADES(X)
#undef X
    };
    return names[u];
}

enum http_upgrade http_request_upgrade(const struct http_request *m, str_t *protocols)
{
    str_t up = STR_NULL;
    unsigned n_up = 0;
    bool conn_upgrade = false;
    for (uint32_t i = 0; i < m->n_headers; i++) {
        str_t n = http_header_name(m, i), v = http_header_value(m, i);
        if (str_eq_ci(n, STR_LIT("upgrade"))) {
            up = v;
            n_up++;
        } else if (str_eq_ci(n, STR_LIT("connection")) && str_list_has_token(v, STR_LIT("upgrade"))) {
            conn_upgrade = true;
        }
    }
    if (n_up == 0 || !conn_upgrade)
        return HTTP_UPGRADE_NONE;
    if (n_up > 1 || !http_upgrade_list_valid(up))
        return HTTP_UPGRADE_MALFORMED;
    if (str_list_has_token(up, STR_LIT("h2c")))
        return HTTP_UPGRADE_H2C;
    if (m->version_minor == 0)
        return HTTP_UPGRADE_VERSION;
    if (m->method != HTTP_GET)
        return HTTP_UPGRADE_METHOD;
    if (m->n_content_length > 0 || m->n_transfer_encoding > 0)
        return HTTP_UPGRADE_BODY;
    *protocols = up;
    return HTTP_UPGRADE_OK;
}

void http_forward_request(const struct http_request *m, struct http_forward_req *f, struct buf *out)
{
    struct conn_fields conn = { .req = m };
    str_t host = target_authority(m), xfp = STR_NULL, xfh = STR_NULL;
    bool via_seen = false;
    for (uint32_t i = 0; i < m->n_headers; i++) {
        str_t n = http_header_name(m, i);
        if (str_eq_ci(n, STR_LIT("connection")))
            conn_fields_add(&conn, http_header_value(m, i));
        else if (host.len == 0 && str_eq_ci(n, STR_LIT("host")))
            host = http_header_value(m, i);
    }
    if (host.len == 0 && f->default_host)
        host = str_cstr(f->default_host);
    f->chunked = m->chunked;
    f->dropped_underscore = f->dropped_forwarded = 0;

    buf_reserve(out, m->head.len + 4 * m->n_headers + 200);
    buf_append_str(out, http_method_name(m->method));
    buf_append_char(out, ' ');
    if (m->method == HTTP_OPTIONS && m->path.len == 1 && m->url_len == 1 && m->head.data[0] == '*')
        buf_append_char(out, '*');
    else
        buf_append(out, m->path.p, m->path.len);
    if (m->query.p) {
        buf_append_char(out, '?');
        buf_append(out, m->query.p, m->query.len);
    }
    buf_append_str(out, " HTTP/1.1\r\nHost: ");
    buf_append(out, host.p, host.len);
    buf_append(out, "\r\n", 2);

    /* X-Forwarded-For: the earlier hops' values, in order, when the peer is
     * trusted to have written them; then the peer. */
    buf_append_str(out, "X-Forwarded-For: ");
    for (uint32_t i = 0; i < m->n_headers; i++) {
        str_t n = http_header_name(m, i), v = http_header_value(m, i);
        if (!str_eq_ci(n, STR_LIT("x-forwarded-for")))
            continue;
        if (!f->peer_trusted) {
            f->dropped_forwarded++;
            continue;
        }
        if (v.len == 0)
            continue;
        buf_append(out, v.p, v.len);
        buf_append(out, ", ", 2);
    }
    buf_append_str(out, f->peer ? f->peer : "unknown");
    buf_append(out, "\r\n", 2);

    for (uint32_t i = 0; i < m->n_headers; i++) {
        str_t n = http_header_name(m, i), v = http_header_value(m, i);
        if (IN(n, hop_headers) || str_eq_ci(n, STR_LIT("host")) || named_in_connection(n, &conn))
            continue;
        if (f->strip_header && str_eq_ci(n, str_cstr(f->strip_header)))
            continue;
        if (str_eq_ci(n, STR_LIT("expect")) || str_eq_ci(n, STR_LIT("x-forwarded-for")))
            continue; /* batchd answered 100-continue itself; XFF is written above */
        if (is_forwarding_header(n)) {
            if (!f->peer_trusted) {
                f->dropped_forwarded++;
                continue;
            }
            if (str_eq_ci(n, STR_LIT("x-forwarded-proto"))) {
                if (xfp.p == NULL)
                    xfp = v;
                continue;
            }
            if (str_eq_ci(n, STR_LIT("x-forwarded-host"))) {
                if (xfh.p == NULL)
                    xfh = v;
                continue;
            }
        }
        if (!f->pass_underscores && memchr(n.p, '_', n.len)) {
            /* "X_User" and "X-User" may reach the app as the same CGI-style
             * variable: the one the client chose could shadow a trusted one. */
            f->dropped_underscore++;
            continue;
        }
        if (str_eq_ci(n, STR_LIT("via"))) {
            buf_append_str(out, "Via: ");
            buf_append(out, v.p, v.len);
            buf_append_str(out, m->version_minor == 0 ? ", 1.0 batchd\r\n" : ", 1.1 batchd\r\n");
            via_seen = true;
            continue;
        }
        add_field(out, n, v);
    }
    buf_append_str(out, "X-Forwarded-Proto: ");
    if (xfp.p)
        buf_append(out, xfp.p, xfp.len);
    else
        buf_append_str(out, f->proto ? f->proto : "http");
    buf_append_str(out, "\r\nX-Forwarded-Host: ");
    if (xfh.p)
        buf_append(out, xfh.p, xfh.len);
    else
        buf_append(out, host.p, host.len);
    buf_append(out, "\r\n", 2);
    if (!via_seen)
        buf_append_str(out, m->version_minor == 0 ? "Via: 1.0 batchd\r\n" : "Via: 1.1 batchd\r\n");
    if (f->upgrade.len > 0) {
        buf_append_str(out, "Connection: Upgrade\r\nUpgrade: ");
        buf_append(out, f->upgrade.p, f->upgrade.len);
        buf_append(out, "\r\n", 2);
    }
    if (f->chunked) {
        buf_append_str(out, "Transfer-Encoding: chunked\r\n");
    } else if (m->content_length != HTTP_NO_LENGTH &&
               (m->content_length > 0 || m->method == HTTP_POST || m->method == HTTP_PUT ||
                m->method == HTTP_PATCH)) {
        buf_append_str(out, "Content-Length: ");
        buf_append_u64(out, m->content_length);
        buf_append(out, "\r\n", 2);
    }
    buf_append(out, "\r\n", 2);
}

bool http_status_bodyless(int status)
{
    return (status >= 100 && status < 200) || status == 204 || status == 304;
}

void http_forward_response(const struct http_response *resp, struct http_forward_resp *f,
                           struct buf *out)
{
    int status = resp->status;
    f->body_allowed = !(f->head_request || http_status_bodyless(status));
    bool has_length = resp->content_length != HTTP_NO_LENGTH && !resp->chunked;
    bool needs_framing = f->body_allowed && !has_length;
    f->chunked = needs_framing && !f->client_http10;
    f->close_delimited = needs_framing && f->client_http10;
    bool close = f->close || f->close_delimited;

    struct conn_fields conn = { .resp = resp };
    for (uint32_t i = 0; i < resp->n_headers; i++)
        if (str_eq_ci(http_header_name(resp, i), STR_LIT("connection")))
            conn_fields_add(&conn, http_header_value(resp, i));

    buf_reserve(out, resp->head.len + 4 * resp->n_headers + 96);
    buf_append_str(out, "HTTP/1.1 ");
    buf_append_u64(out, (uint64_t)status);
    buf_append_char(out, ' ');
    if (resp->reason_len) /* no reason and no header: head.data is NULL */
        buf_append(out, resp->head.data, resp->reason_len);
    buf_append(out, "\r\n", 2);
    bool via = false;
    for (uint32_t i = 0; i < resp->n_headers; i++) {
        str_t n = http_header_name(resp, i), v = http_header_value(resp, i);
        if (IN(n, hop_headers) || named_in_connection(n, &conn))
            continue;
        if (f->drop_cors && n.len >= 15 && str_eq_ci((str_t){ n.p, 15 }, STR_LIT("access-control-")))
            continue;
        if (str_eq_ci(n, STR_LIT("via"))) {
            buf_append_str(out, "Via: ");
            buf_append(out, v.p, v.len);
            buf_append_str(out, ", 1.1 batchd\r\n");
            via = true;
            continue;
        }
        add_field(out, n, v);
    }
    if (!via)
        buf_append_str(out, "Via: 1.1 batchd\r\n");
    if (f->extra_len)
        buf_append(out, f->extra, f->extra_len);
    if (f->chunked) {
        buf_append_str(out, "Transfer-Encoding: chunked\r\n");
    } else if (has_length && status >= 200 && status != 204) {
        /* The body's length, or for HEAD and 304 the length a GET would
         * get: metadata a client may use, never a promise of bytes here. */
        buf_append_str(out, "Content-Length: ");
        buf_append_u64(out, resp->content_length);
        buf_append(out, "\r\n", 2);
    }
    str_t up;
    if (f->upgrade && status == 101 && http_response_header(resp, "upgrade", &up)) {
        /* The connection goes on as the tunnel: no close, no keep-alive. */
        buf_append_str(out, "Connection: Upgrade\r\nUpgrade: ");
        buf_append(out, up.p, up.len);
        buf_append(out, "\r\n", 2);
    } else if (close)
        buf_append_str(out, "Connection: close\r\n");
    else if (f->client_http10)
        buf_append_str(out, "Connection: keep-alive\r\n");
    buf_append(out, "\r\n", 2);
}
