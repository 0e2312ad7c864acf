/*
 * fuzz_http: libFuzzer harness for the request parser (proto/http.c).
 *
 * Input: byte 0 picks where the rest is split in two reads; bytes 1.. are
 * what a client sent. The bytes are parsed three ways — one read, two reads
 * split there, and (for short inputs) one byte per read — and each way must
 * observe exactly the same requests, and fail or not alike. Every completed
 * request is also checked against the limits and invariants that a handler
 * relies on. Any disagreement or broken invariant aborts.
 *
 * One difference is allowed: the error code, when one of the two is a size
 * limit. Limits are checked when llhttp hands over a span (URL, header name
 * or value, body piece), and it hands over the partial span at the end of
 * every read; syntax is checked byte by byte. So for a request that is both
 * too long and malformed further on, one read reports bad_request and many
 * small reads report the limit. Either way it is rejected and nothing of it
 * reaches the handler.
 *
 * Requests alternate between the three body modes, and the callbacks pause
 * at fixed points that the driver resumes from, as a connection would.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http.h"
#include "tests/fuzz/fuzz.h"

#define POOL 4 /* request objects, reset and reused in turn */

static const struct http_limits limits = {
    .max_header_bytes = 768,
    .max_uri_bytes = 160,
    .max_body_bytes = 200,
    .max_headers = 12,
};

struct run {
    struct http_request pool[POOL];
    unsigned n_begun, n_done;
    struct buf log;      /* everything observed, compared across runs */
    struct buf streamed; /* the streamed body of the request being read */
};

static bool is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool in_url(const struct http_request *m, str_t s)
{
    return s.p >= m->head.data && s.p + s.len <= m->head.data + m->url_len;
}

static struct http_request *begin_cb(struct http_parser *p)
{
    struct run *r = p->data;
    struct http_request *m = &r->pool[r->n_begun % POOL];
    http_request_reset(m);
    r->n_begun++;
    buf_reset(&r->streamed);
    return m;
}

static int head_cb(struct http_parser *p, struct http_request *m)
{
    struct run *r = p->data;
    CHECK(m->path.len > 0);
    CHECK(in_url(m, m->path) || str_eq(m->path, STR_LIT("/")));
    CHECK(m->query.p == NULL || in_url(m, m->query));
    CHECK(m->url_len > 0 && m->url_len <= limits.max_uri_bytes);
    CHECK(m->wire_head_bytes <= limits.max_header_bytes);
    CHECK(m->version_major == 1);
    CHECK(m->n_headers <= limits.max_headers);
    CHECK(m->n_content_length <= 1);
    CHECK(m->n_transfer_encoding <= 1);
    CHECK(!(m->chunked && m->content_length != HTTP_NO_LENGTH));
    CHECK(m->n_transfer_encoding == 0 || m->chunked);
    unsigned hosts = 0;
    for (uint32_t i = 0; i < m->n_headers; i++) {
        const struct http_header *h = &m->headers[i];
        CHECK(h->name_len > 0);
        CHECK((size_t)h->name_off + h->name_len <= m->head.len);
        CHECK((size_t)h->value_off + h->value_len <= m->head.len);
        str_t k = http_header_name(m, i), v = http_header_value(m, i);
        for (size_t j = 0; j < k.len; j++)
            CHECK(is_tchar((unsigned char)k.p[j]));
        CHECK(memchr(v.p, '\r', v.len) == NULL && memchr(v.p, '\n', v.len) == NULL);
        CHECK(v.len == 0 || (v.p[v.len - 1] != ' ' && v.p[v.len - 1] != '\t'));
        hosts += str_eq_ci(k, STR_LIT("host"));
    }
    if (m->version_minor >= 1)
        CHECK(hosts == 1);
    /* Body modes rotate per request; every fourth head pauses. */
    m->body_mode = (enum http_body_mode)((r->n_begun - 1) % 3);
    return (r->n_begun % 4 == 0) ? HTTP_PARSER_PAUSE : 0;
}

static int body_cb(struct http_parser *p, struct http_request *m, const char *at, size_t n)
{
    struct run *r = p->data;
    CHECK(m->body_mode == HTTP_BODY_STREAM);
    CHECK(n > 0);
    buf_append(&r->streamed, at, n);
    return 0;
}

static int complete_cb(struct http_parser *p, struct http_request *m)
{
    struct run *r = p->data;
    /* What head_cb saw must still hold: nothing may have moved the head. */
    CHECK(m->path.len > 0);
    CHECK(in_url(m, m->path) || str_eq(m->path, STR_LIT("/")));
    CHECK(m->query.p == NULL || in_url(m, m->query));
    CHECK(m->n_headers <= limits.max_headers);
    str_t body = STR_NULL;
    switch (m->body_mode) {
    case HTTP_BODY_BUFFER:
        CHECK(m->body.len <= limits.max_body_bytes);
        body = buf_str(&m->body);
        break;
    case HTTP_BODY_STREAM:
        CHECK(m->body.len == 0);
        body = buf_str(&r->streamed);
        break;
    case HTTP_BODY_DISCARD:
        CHECK(m->body.len == 0);
        break;
    }
    if (m->content_length != HTTP_NO_LENGTH && m->body_mode != HTTP_BODY_DISCARD)
        CHECK(body.len == m->content_length);
    if (m->content_length == HTTP_NO_LENGTH && !m->chunked)
        CHECK(body.len == 0);
    /* HTTP/1.0 keeps the connection only when asked to. */
    str_t conn;
    if (m->version_minor == 0 && !http_request_header(m, "connection", &conn))
        CHECK(!m->keep_alive);

    struct buf *log = &r->log;
    buf_appendf(log, "#%u %s ", r->n_done, http_method_name(m->method));
    fuzz_log_bytes(log, m->head.data, m->url_len);
    buf_append_str(log, " path=");
    fuzz_log_bytes(log, m->path.p, m->path.len);
    buf_appendf(log, " query=%s", m->query.p ? "" : "(none)");
    fuzz_log_bytes(log, m->query.p, m->query.len);
    buf_appendf(log, " %u.%u ka=%d ch=%d ex=%d cl=%llu wire=%u\n", m->version_major,
                m->version_minor, m->keep_alive, m->chunked, m->expect_continue,
                (unsigned long long)m->content_length, m->wire_head_bytes);
    for (uint32_t i = 0; i < m->n_headers; i++)
        fuzz_log_field(log, http_header_name(m, i), http_header_value(m, i));
    buf_appendf(log, "body(%zu) ", body.len);
    fuzz_log_bytes(log, body.p, body.len);
    buf_append_char(log, '\n');
    r->n_done++;
    return (r->n_done % 2 == 1) ? HTTP_PARSER_PAUSE : 0;
}

static const struct http_parser_cbs cbs = {
    .begin_cb = begin_cb,
    .head_cb = head_cb,
    .body_cb = body_cb,
    .complete_cb = complete_cb,
};

/* Feeds in[0..n) as one read, resuming after every pause like a connection.
 * After a resume, execute runs again even with no bytes left: a request
 * paused in head_cb or body_cb at the end of a read completes only then.
 * Says whether the parser is still good for the next read. */
static bool feed(void *parser, const char *in, size_t n)
{
    struct http_parser *p = parser;
    size_t pos = 0, pauses = 0;
    while (!p->failed) {
        size_t used = http_parser_execute(p, in + pos, n - pos);
        if (!fuzz_paused(used, p->failed, p->paused, n, &pos, &pauses))
            break;
        http_parser_resume(p);
    }
    return !p->failed;
}

struct result {
    char *log;
    enum http_error error;
};

/* Parses data in pieces ending at cuts[0..n_cuts) and then size. */
static struct result parse(const uint8_t *data, size_t size, const size_t *cuts, size_t n_cuts)
{
    struct run *r = calloc(1, sizeof(*r));
    CHECK(r != NULL);
    for (int i = 0; i < POOL; i++)
        http_request_init(&r->pool[i]);
    struct http_parser p;
    http_parser_init(&p, &cbs, &limits, r);
    fuzz_reads(data, size, cuts, n_cuts, feed, &p);
    if (p.failed) {
        CHECK(p.error != HTTP_OK);
        CHECK(http_parser_execute(&p, "GET / HTTP/1.1\r\n", 16) == 0);
    } else {
        CHECK(p.error == HTTP_OK);
    }
    buf_appendf(&r->log, "begun=%u done=%u failed=%d", r->n_begun, r->n_done, p.failed);
    /* Mid-request is only comparable when nothing failed. */
    if (!p.failed)
        buf_appendf(&r->log, " mid=%d", http_parser_eof_mid_request(&p));
    struct result out = { r->log.data, p.error };
    for (int i = 0; i < POOL; i++)
        http_request_deinit(&r->pool[i]);
    buf_deinit(&r->streamed);
    free(r);
    return out;
}

static bool is_limit(enum http_error e)
{
    return e == HTTP_ERR_URI_TOO_LONG || e == HTTP_ERR_HEADERS_TOO_LARGE ||
           e == HTTP_ERR_BODY_TOO_LARGE;
}

static void compare(const char *what, struct result a, struct result b)
{
    bool same_error = a.error == b.error || is_limit(a.error) || is_limit(b.error);
    if (strcmp(a.log, b.log) != 0 || !same_error) {
        fprintf(stderr,
                "fuzz_http: %s differs from one read\n--- one read (error %s):\n%s\n"
                "--- %s (error %s):\n%s\n",
                what, http_error_code(a.error), a.log, what, http_error_code(b.error), b.log);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t cut = (size_t)data[0] * (size - 1) / 255;
    data++;
    size--;

    struct result whole = parse(data, size, NULL, 0);
    struct result split = parse(data, size, &cut, 1);
    compare("two reads", whole, split);
    free(split.log);
    if (size <= 512) {
        size_t cuts[512];
        for (size_t i = 0; i < size; i++)
            cuts[i] = i + 1;
        struct result bytewise = parse(data, size, cuts, size);
        compare("one byte per read", whole, bytewise);
        free(bytewise.log);
    }
    free(whole.log);
    return 0;
}
