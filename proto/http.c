/*
 * http: request parsing glue over llhttp. See http.h.
 *
 * llhttp delivers the URL, header names and header values as spans that may
 * be split across reads. Each span is appended to the request's `head`
 * buffer and recorded as offsets, so nothing points into the caller's read
 * buffer after http_parser_execute returns.
 */
#include "proto/http.h"

#include <stdio.h>
#include <string.h>

#include "proto/mem.h"

#include <stdlib.h>

/* Request line overhead ("GET " + " HTTP/1.1\r\n") and per-header ": " + CRLF,
 * so max_header_bytes bounds roughly what the client sent. */
#define WIRE_LINE_OVERHEAD 16
#define WIRE_HEADER_OVERHEAD 4

static const struct {
    int status;
    const char *code;
} error_table[HTTP_ERR__COUNT] = {
    [HTTP_OK] = { 200, "ok" },
    [HTTP_ERR_MALFORMED] = { 400, "bad_request" },
    [HTTP_ERR_FRAMING] = { 400, "ambiguous_length" },
    [HTTP_ERR_URI_TOO_LONG] = { 414, "uri_too_long" },
    [HTTP_ERR_HEADERS_TOO_LARGE] = { 431, "headers_too_large" },
    [HTTP_ERR_BODY_TOO_LARGE] = { 413, "body_too_large" },
    [HTTP_ERR_METHOD] = { 501, "method_not_implemented" },
    [HTTP_ERR_VERSION] = { 505, "version_not_supported" },
    [HTTP_ERR_METHOD_NOT_ALLOWED] = { 405, "method_not_allowed" },
};

int http_error_status(enum http_error e)
{
    return (e < HTTP_ERR__COUNT) ? error_table[e].status : 500;
}

const char *http_error_code(enum http_error e)
{
    return (e < HTTP_ERR__COUNT) ? error_table[e].code : "internal";
}

void http_request_init(struct http_request *m)
{
    memset(m, 0, sizeof(*m));
    m->content_length = HTTP_NO_LENGTH;
}

void http_request_deinit(struct http_request *m)
{
    buf_deinit(&m->head);
    buf_deinit(&m->body);
    free(m->headers);
    memset(m, 0, sizeof(*m));
}

void http_request_reset(struct http_request *m)
{
    struct buf head = m->head, body = m->body;
    struct http_header *headers = m->headers;
    uint32_t cap = m->cap_headers;
    memset(m, 0, sizeof(*m));
    m->head = head;
    m->body = body;
    m->headers = headers;
    m->cap_headers = cap;
    buf_reset(&m->head);
    buf_reset(&m->body);
    m->content_length = HTTP_NO_LENGTH;
}

bool http_request_header(const struct http_request *m, const char *name, str_t *value)
{
    str_t want = str_cstr(name);
    for (uint32_t i = 0; i < m->n_headers; i++) {
        if (str_eq_ci(http_header_name(m, i), want)) {
            *value = http_header_value(m, i);
            return true;
        }
    }
    return false;
}

const char *http_method_name(uint8_t method)
{
    return llhttp_method_name((llhttp_method_t)method);
}

/* --- llhttp callbacks ------------------------------------------------------ */

static inline struct http_parser *parser_of(llhttp_t *ll)
{
    return (struct http_parser *)ll->data;
}

static int fail(struct http_parser *p, enum http_error e)
{
    p->error = e;
    llhttp_set_error_reason(&p->ll, http_error_code(e));
    return HPE_USER;
}

static int count_wire(struct http_parser *p, size_t n)
{
    struct http_request *m = p->req;
    m->wire_head_bytes += (uint32_t)n;
    if (m->wire_head_bytes > p->limits->max_header_bytes)
        return fail(p, HTTP_ERR_HEADERS_TOO_LARGE);
    return 0;
}

static int on_message_begin(llhttp_t *ll)
{
    struct http_parser *p = parser_of(ll);
    p->req = p->cbs->begin_cb(p);
    p->req->wire_head_bytes = WIRE_LINE_OVERHEAD;
    p->in_field = false;
    return 0;
}

static int on_url(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = parser_of(ll);
    struct http_request *m = p->req;
    if ((size_t)m->url_len + n > p->limits->max_uri_bytes)
        return fail(p, HTTP_ERR_URI_TOO_LONG);
    if (count_wire(p, n))
        return HPE_USER;
    /* llhttp 8 lets a TAB and bytes >= 0x80 through in a target; RFC 3986
     * has neither, and a server behind batchd may read them differently. */
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)at[i];
        if (ch <= 0x20 || ch >= 0x7f)
            return fail(p, HTTP_ERR_MALFORMED);
    }
    buf_append(&m->head, at, n);
    m->url_len += (uint32_t)n;
    return 0;
}

/* Trailer fields (after the last chunk) count against max_header_bytes but
 * are not stored: head_cb has already been given path, query and route
 * parameters as slices of `head`, and appending could move it under them. */
static inline bool in_trailer(const struct http_parser *p)
{
    return (p->ll.flags & F_TRAILING) != 0;
}

/* RFC 9110 tchar, as a table: checked for every byte of every name. */
static const bool tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1,
    ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
    ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1,
    ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
    ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

bool http_token_valid(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!tchar[(unsigned char)s[i]])
            return false;
    return true;
}

void http_header_trim(struct http_header *h, const char *head)
{
    while (h->value_len > 0 && (head[h->value_off + h->value_len - 1] == ' ' ||
                                head[h->value_off + h->value_len - 1] == '\t'))
        h->value_len--;
}

static int on_header_field(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = parser_of(ll);
    struct http_request *m = p->req;
    if (in_trailer(p)) {
        bool first = !p->in_field;
        p->in_field = true;
        if (first && count_wire(p, WIRE_HEADER_OVERHEAD))
            return HPE_USER;
        return count_wire(p, n);
    }
    if (!p->in_field) { /* a new header; otherwise a name split across reads */
        if (m->n_headers >= p->limits->max_headers)
            return fail(p, HTTP_ERR_HEADERS_TOO_LARGE);
        if (m->n_headers == m->cap_headers) {
            m->cap_headers = m->cap_headers ? m->cap_headers * 2 : 16;
            m->headers = mem_realloc(m->headers, m->cap_headers * sizeof(*m->headers));
        }
        struct http_header *h = &m->headers[m->n_headers++];
        h->name_off = (uint32_t)m->head.len;
        h->name_len = 0;
        h->value_off = (uint32_t)m->head.len;
        h->value_len = 0;
        p->in_field = true;
        if (count_wire(p, WIRE_HEADER_OVERHEAD))
            return HPE_USER;
    }
    if (count_wire(p, n))
        return HPE_USER;
    buf_append(&m->head, at, n);
    m->headers[m->n_headers - 1].name_len += (uint32_t)n;
    return 0;
}

static int on_header_field_complete(llhttp_t *ll)
{
    struct http_parser *p = parser_of(ll);
    struct http_request *m = p->req;
    if (!p->in_field)
        return fail(p, HTTP_ERR_MALFORMED);
    p->in_field = false;
    if (in_trailer(p))
        return 0;
    struct http_header *h = &m->headers[m->n_headers - 1];
    if (!http_token_valid(m->head.data + h->name_off, h->name_len)) /* also ": value" (empty) */
        return fail(p, HTTP_ERR_MALFORMED);
    /* An empty value gets no on_header_value call, so start it here. */
    h->value_off = (uint32_t)m->head.len;
    return 0;
}

static int on_header_value(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = parser_of(ll);
    struct http_request *m = p->req;
    if (count_wire(p, n))
        return HPE_USER;
    if (in_trailer(p))
        return 0;
    buf_append(&m->head, at, n);
    m->headers[m->n_headers - 1].value_len += (uint32_t)n;
    return 0;
}

static int on_header_value_complete(llhttp_t *ll)
{
    struct http_parser *p = parser_of(ll);
    struct http_request *m = p->req;
    if (in_trailer(p))
        return 0;
    http_header_trim(&m->headers[m->n_headers - 1], m->head.data);
    str_t name = http_header_name(m, m->n_headers - 1);
    if (str_eq_ci(name, STR_LIT("content-length"))) {
        if (++m->n_content_length > 1)
            return fail(p, HTTP_ERR_FRAMING);
    } else if (str_eq_ci(name, STR_LIT("transfer-encoding"))) {
        if (m->n_transfer_encoding < UINT8_MAX) /* 256 must not wrap to "none" */
            m->n_transfer_encoding++;
    } else if (str_eq_ci(name, STR_LIT("expect"))) {
        if (str_eq_ci(http_header_value(m, m->n_headers - 1), STR_LIT("100-continue")))
            m->expect_continue = true;
    }
    return 0;
}

/* Splits the request target into path and query. Accepts origin-form
 * ("/p?q"), absolute-form ("http://h/p?q") and asterisk-form ("*"). */
static int split_target(struct http_request *m)
{
    const char *u = m->head.data;
    size_t n = m->url_len, i = 0;
    if (n == 0)
        return -1;
    if (u[0] != '/' && !(n == 1 && u[0] == '*')) {
        const char *sep = memmem(u, n, "://", 3);
        if (sep == NULL)
            return -1;
        i = (size_t)(sep - u) + 3;
        while (i < n && u[i] != '/' && u[i] != '?')
            i++;
        if (i == n) { /* "http://host" means "/" */
            m->path = STR_LIT("/");
            m->query = STR_NULL;
            return 0;
        }
    }
    size_t start = i;
    while (i < n && u[i] != '?' && u[i] != '#')
        i++;
    m->path = str_make(u + start, i - start);
    if (m->path.len == 0)
        m->path = STR_LIT("/");
    if (i < n && u[i] == '?') {
        size_t qs = ++i;
        while (i < n && u[i] != '#')
            i++;
        m->query = str_make(u + qs, i - qs);
    } else {
        m->query = STR_NULL;
    }
    return 0;
}

static int on_headers_complete(llhttp_t *ll)
{
    struct http_parser *p = parser_of(ll);
    struct http_request *m = p->req;
    m->method = ll->method;
    m->version_major = ll->http_major;
    m->version_minor = ll->http_minor;
    if (m->version_major != 1)
        return fail(p, HTTP_ERR_VERSION);
    /* Smuggling guard, independent of llhttp's own checks. */
    if (m->n_content_length > 0 && m->n_transfer_encoding > 0)
        return fail(p, HTTP_ERR_FRAMING);
    if (m->n_transfer_encoding > 1)
        return fail(p, HTTP_ERR_FRAMING);
    m->chunked = (ll->flags & F_CHUNKED) != 0;
    if (m->n_transfer_encoding == 1 && !m->chunked)
        return fail(p, HTTP_ERR_FRAMING);
    /* "gzip, chunked" is chunked to llhttp, but batchd would forward the
     * body as plain chunks and lose the gzip: only "chunked" itself. */
    str_t te;
    if (m->chunked && http_request_header(m, "transfer-encoding", &te) && !str_eq_ci(te, STR_LIT("chunked")))
        return fail(p, HTTP_ERR_FRAMING);
    /* "Content-Length: 18446744073709551615" would read as HTTP_NO_LENGTH
     * (no body) while llhttp goes on to read that many body bytes. */
    if ((ll->flags & F_CONTENT_LENGTH) && ll->content_length == HTTP_NO_LENGTH)
        return fail(p, HTTP_ERR_BODY_TOO_LARGE);
    m->content_length = (ll->flags & F_CONTENT_LENGTH) ? ll->content_length : HTTP_NO_LENGTH;
    /* TRACE would echo credentials back to a script; CONNECT asks for a
     * tunnel. batchd forwards neither, and after a CONNECT the bytes that
     * follow are not HTTP: the connection closes after the 405. */
    if (m->method == HTTP_TRACE || m->method == HTTP_CONNECT)
        return fail(p, HTTP_ERR_METHOD_NOT_ALLOWED);
    if (split_target(m) != 0)
        return fail(p, HTTP_ERR_MALFORMED);
    if (m->version_minor >= 1) {
        int hosts = 0;
        for (uint32_t i = 0; i < m->n_headers; i++)
            hosts += str_eq_ci(http_header_name(m, i), STR_LIT("host"));
        if (hosts != 1)
            return fail(p, HTTP_ERR_MALFORMED);
    }
    /* batchd speaks no other protocol on this connection: a request asking
     * to upgrade is answered as a plain HTTP/1.1 request. */
    ll->upgrade = 0;

    m->body_mode = HTTP_BODY_BUFFER;
    int rc = p->cbs->head_cb(p, m);
    if (rc > 0)
        return fail(p, (enum http_error)rc);
    if (m->body_mode == HTTP_BODY_BUFFER && m->content_length != HTTP_NO_LENGTH &&
        m->content_length > p->limits->max_body_bytes)
        return fail(p, HTTP_ERR_BODY_TOO_LARGE);
    if (rc == HTTP_PARSER_PAUSE)
        return HPE_PAUSED;
    return 0;
}

static int on_body(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = parser_of(ll);
    struct http_request *m = p->req;
    /* llhttp flushes an open body span at the end of every execute, so an
     * execute with no bytes inside a body reports an empty piece. */
    if (n == 0)
        return 0;
    switch (m->body_mode) {
    case HTTP_BODY_BUFFER:
        if (m->body.len + n > p->limits->max_body_bytes)
            return fail(p, HTTP_ERR_BODY_TOO_LARGE);
        buf_append(&m->body, at, n);
        return 0;
    case HTTP_BODY_STREAM: {
        int rc = p->cbs->body_cb(p, m, at, n);
        if (rc > 0)
            return fail(p, (enum http_error)rc);
        return rc == HTTP_PARSER_PAUSE ? HPE_PAUSED : 0;
    }
    case HTTP_BODY_DISCARD:
        return 0;
    }
    return 0;
}

/* Chunk extensions are read and dropped, but they count against
 * max_header_bytes like trailers: otherwise a body of empty chunks with
 * megabytes of extensions would be read without any bound. */
static int on_chunk_extension(llhttp_t *ll, const char *at, size_t n)
{
    (void)at;
    return count_wire(parser_of(ll), n);
}

static int on_message_complete(llhttp_t *ll)
{
    struct http_parser *p = parser_of(ll);
    struct http_request *m = p->req;
    m->keep_alive = llhttp_should_keep_alive(ll) != 0;
    p->req = NULL;
    int rc = p->cbs->complete_cb(p, m);
    return rc == HTTP_PARSER_PAUSE ? HPE_PAUSED : 0;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_extension_name = on_chunk_extension,
    .on_chunk_extension_value = on_chunk_extension,
    .on_message_complete = on_message_complete,
};

void http_parser_init(struct http_parser *p, const struct http_parser_cbs *cbs,
                      const struct http_limits *limits, void *data)
{
    memset(p, 0, sizeof(*p));
    llhttp_init(&p->ll, HTTP_REQUEST, &settings);
    p->ll.data = p;
    p->cbs = cbs;
    p->limits = limits;
    p->data = data;
}

static enum http_error map_llhttp_error(llhttp_errno_t e)
{
    switch (e) {
    case HPE_UNEXPECTED_CONTENT_LENGTH:
    case HPE_INVALID_TRANSFER_ENCODING:
        return HTTP_ERR_FRAMING;
    case HPE_PAUSED_H2_UPGRADE:
        return HTTP_ERR_VERSION;
    default:
        return HTTP_ERR_MALFORMED;
    }
}

size_t http_llhttp_step(llhttp_t *ll, bool *paused, bool *failed, const char *data, size_t len,
                        llhttp_errno_t *e)
{
    if (*failed) {
        *e = HPE_OK;
        return 0;
    }
    *e = llhttp_execute(ll, data, len);
    if (*e == HPE_OK)
        return len;
    if (*e == HPE_PAUSED)
        *paused = true;
    else
        *failed = true;
    const char *pos = llhttp_get_error_pos(ll);
    return (pos >= data && pos <= data + len) ? (size_t)(pos - data) : 0;
}

void http_llhttp_resume(llhttp_t *ll, bool *paused)
{
    if (*paused) {
        llhttp_resume(ll);
        *paused = false;
    }
}

size_t http_parser_execute(struct http_parser *p, const char *data, size_t len)
{
    llhttp_errno_t e;
    size_t used = http_llhttp_step(&p->ll, &p->paused, &p->failed, data, len, &e);
    if (e != HPE_OK && e != HPE_PAUSED && p->error == HTTP_OK)
        p->error = map_llhttp_error(e);
    return used;
}

void http_parser_resume(struct http_parser *p)
{
    http_llhttp_resume(&p->ll, &p->paused);
}

bool http_parser_eof_mid_request(const struct http_parser *p)
{
    return p->req != NULL;
}

/* --- upgrade --------------------------------------------------------------- */

/* Calls fn on each element of a comma-separated list, trimmed; an empty
 * element (",,") counts as one. Stops when fn returns false. */
static bool list_each(str_t list, bool (*fn)(str_t el, void *arg), void *arg)
{
    size_t i = 0;
    for (;;) {
        size_t start = i;
        while (i < list.len && list.p[i] != ',')
            i++;
        size_t end = i;
        while (start < end && (list.p[start] == ' ' || list.p[start] == '\t'))
            start++;
        while (end > start && (list.p[end - 1] == ' ' || list.p[end - 1] == '\t'))
            end--;
        if (!fn(str_make(list.p + start, end - start), arg))
            return false;
        if (i >= list.len)
            return true;
        i++; /* the comma */
    }
}

static bool protocol_valid(str_t el, void *arg)
{
    (void)arg;
    const char *slash = memchr(el.p, '/', el.len);
    if (slash == NULL)
        return http_token_valid(el.p, el.len);
    size_t n = (size_t)(slash - el.p);
    return http_token_valid(el.p, n) && http_token_valid(slash + 1, el.len - n - 1);
}

bool http_upgrade_list_valid(str_t list)
{
    return list.len > 0 && list_each(list, protocol_valid, NULL);
}

static bool differs(str_t el, void *arg)
{
    return !str_eq_ci(el, *(const str_t *)arg);
}

bool http_upgrade_offered(str_t offered, str_t chosen)
{
    if (!http_upgrade_list_valid(chosen) || memchr(chosen.p, ',', chosen.len))
        return false;
    while (chosen.len > 0 && (chosen.p[0] == ' ' || chosen.p[0] == '\t'))
        chosen = str_make(chosen.p + 1, chosen.len - 1);
    /* list_each stops (false) at the element equal to chosen */
    return !list_each(offered, differs, &chosen);
}

/* --- response helpers ------------------------------------------------------ */

const char *http_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

size_t http_date_format(time_t t, char *out)
{
    static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    struct tm tm;
    gmtime_r(&t, &tm);
    int n = snprintf(out, 30, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday],
                     tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour,
                     tm.tm_min, tm.tm_sec);
    return n > 0 ? (size_t)n : 0;
}
