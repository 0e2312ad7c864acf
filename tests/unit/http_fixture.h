/*
 * http_fixture: what the request-parser tests share (test_http.c and
 * test_http_semantics.c): a connection-like driver that feeds bytes in
 * pieces, renders every completed request to text inside complete_cb, and
 * checks every way of splitting the input. Static helpers, included once
 * per test program.
 */
#ifndef BATCHD_TESTS_HTTP_FIXTURE_H
#define BATCHD_TESTS_HTTP_FIXTURE_H

#include "unit.h"

#include <inttypes.h>
#include <stdlib.h>

#include "proto/http.h"

/* Each program uses some of the helpers. */
#pragma GCC diagnostic ignored "-Wunused-function"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_REQS 8

struct ctx {
    struct http_request reqs[MAX_REQS];
    unsigned n_begun, n_heads, n_done;
    struct buf desc[MAX_REQS];    /* one per completed request, made in complete_cb */
    unsigned pause_after;         /* complete_cb pauses after this many (0: never) */
    enum http_body_mode body_mode; /* what head_cb asks for */
    int head_rc;                  /* what head_cb returns */
    struct buf streamed;          /* HTTP_BODY_STREAM bytes */
    unsigned body_calls;
    bool body_pause;              /* body_cb pauses after every piece */
    struct http_request *reuse;   /* when set, begin_cb resets and hands out this one */
};

static const struct http_limits default_limits = {
    .max_header_bytes = 4096,
    .max_uri_bytes = 1024,
    .max_body_bytes = 1024,
    .max_headers = 16,
};

static struct http_request *begin_cb(struct http_parser *p)
{
    struct ctx *c = p->data;
    assert_true(c->n_begun < MAX_REQS);
    if (c->reuse) {
        c->n_begun++;
        http_request_reset(c->reuse);
        return c->reuse;
    }
    return &c->reqs[c->n_begun++];
}

static int head_cb(struct http_parser *p, struct http_request *m)
{
    struct ctx *c = p->data;
    c->n_heads++;
    /* path and query are set before head_cb, and point into the head. */
    assert_true(m->path.len > 0);
    m->body_mode = c->body_mode;
    return c->head_rc;
}

static int body_cb(struct http_parser *p, struct http_request *m, const char *at, size_t n)
{
    struct ctx *c = p->data;
    assert_int_equal(m->body_mode, HTTP_BODY_STREAM);
    /* An empty piece would read as "end of body" to a handler that
     * re-encodes pieces as chunks. */
    assert_true(n > 0);
    buf_append(&c->streamed, at, n);
    c->body_calls++;
    return c->body_pause ? HTTP_PARSER_PAUSE : 0;
}

/* One line per field that a handler reads, headers and body escaped. */
static void describe(const struct http_request *m, struct buf *out)
{
    buf_appendf(out, "%s [%.*s] [%.*s] HTTP/%u.%u ka=%d chunked=%d expect=%d", http_method_name(m->method),
                (int)m->path.len, m->path.p, (int)m->query.len, m->query.p ? m->query.p : "",
                m->version_major, m->version_minor, m->keep_alive, m->chunked,
                m->expect_continue);
    if (m->content_length == HTTP_NO_LENGTH)
        buf_append_str(out, " cl=none\n");
    else
        buf_appendf(out, " cl=%" PRIu64 "\n", m->content_length);
    buf_appendf(out, "url [%.*s]\n", (int)m->url_len, m->head.data);
    for (uint32_t i = 0; i < m->n_headers; i++) {
        str_t k = http_header_name(m, i), v = http_header_value(m, i);
        buf_appendf(out, "h [%.*s]=[%.*s]\n", (int)k.len, k.p, (int)v.len, v.p);
    }
    buf_appendf(out, "body %zu [", m->body.len);
    for (size_t i = 0; i < m->body.len; i++) {
        unsigned char ch = (unsigned char)m->body.data[i];
        if (ch >= 0x20 && ch < 0x7f)
            buf_append_char(out, (char)ch);
        else
            buf_appendf(out, "\\x%02x", ch);
    }
    buf_append_str(out, "]\n");
}

/* path and query are slices of the head's URL (or the literal "/" that an
 * absolute-form target without a path gets): anything else dangles. */
static void check_target_slices(const struct http_request *m)
{
    const char *url = m->head.data, *url_end = m->head.data + m->url_len;
    bool path_in_url = m->path.p >= url && m->path.p + m->path.len <= url_end;
    bool path_is_root = str_eq(m->path, STR_LIT("/"));
    if (!path_in_url && !path_is_root)
        fail_msg("path does not point into the request's URL");
    if (m->query.p != NULL && !(m->query.p >= url && m->query.p + m->query.len <= url_end))
        fail_msg("query does not point into the request's URL");
}

static int complete_cb(struct http_parser *p, struct http_request *m)
{
    struct ctx *c = p->data;
    assert_true(c->n_done < MAX_REQS);
    check_target_slices(m);
    /* Requests complete in the order they began. */
    assert_ptr_equal(m, c->reuse ? c->reuse : &c->reqs[c->n_done]);
    describe(m, &c->desc[c->n_done]);
    c->n_done++;
    return (c->pause_after && c->n_done == c->pause_after) ? HTTP_PARSER_PAUSE : 0;
}

static const struct http_parser_cbs cbs = {
    .begin_cb = begin_cb,
    .head_cb = head_cb,
    .body_cb = body_cb,
    .complete_cb = complete_cb,
};

static struct ctx *ctx_new(void)
{
    struct ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    for (int i = 0; i < MAX_REQS; i++)
        http_request_init(&c->reqs[i]);
    return c;
}

static void ctx_free(struct ctx *c)
{
    for (int i = 0; i < MAX_REQS; i++) {
        http_request_deinit(&c->reqs[i]);
        buf_deinit(&c->desc[i]);
    }
    buf_deinit(&c->streamed);
    free(c);
}

/* One read (see unit_feed): stops at an error or a pause. */
static bool read_piece(void *arg, const char *piece, size_t n, size_t *used)
{
    struct http_parser *p = arg;
    *used = http_parser_execute(p, piece, n);
    assert_true(*used <= n);
    if (*used < n) {
        assert_true(p->failed || p->paused);
        return false;
    }
    return true;
}

/* Feeds in[0..len) in reads ending at the cuts (unit_feed); stops at an
 * error or a pause; returns how many bytes were consumed in all. */
static size_t feed(struct http_parser *p, const char *in, size_t len, const size_t *cuts,
                   size_t n_cuts)
{
    return unit_feed(in, len, cuts, n_cuts, read_piece, p);
}

/* Parses `in` fed at the given cuts and renders everything that was
 * observed — each request, the error, the bytes consumed — to one string. */
static char *parse_render_reuse(const struct http_limits *lim, const char *in, size_t len,
                                const size_t *cuts, size_t n_cuts, enum http_body_mode mode,
                                struct http_request *reuse)
{
    struct ctx *c = ctx_new();
    c->body_mode = mode;
    c->reuse = reuse;
    struct http_parser p;
    http_parser_init(&p, &cbs, lim, c);
    size_t used = feed(&p, in, len, cuts, n_cuts);
    struct buf out = BUF_INIT;
    for (unsigned i = 0; i < c->n_done; i++)
        buf_append(&out, c->desc[i].data, c->desc[i].len);
    buf_appendf(&out, "streamed %zu [%.*s]\n", c->streamed.len, (int)c->streamed.len,
                c->streamed.data ? c->streamed.data : "");
    /* Where a failed parse stopped depends on the split (llhttp reports the
     * end of the span whose callback failed), and the connection is closed
     * anyway: only a successful parse must consume everything. */
    buf_appendf(&out, "begun=%u done=%u error=%d mid=%d\n", c->n_begun, c->n_done, (int)p.error,
                http_parser_eof_mid_request(&p));
    if (p.error == HTTP_OK && !p.paused)
        assert_int_equal(used, len);
    ctx_free(c);
    return out.data;
}

static char *parse_render(const struct http_limits *lim, const char *in, size_t len,
                          const size_t *cuts, size_t n_cuts, enum http_body_mode mode)
{
    return parse_render_reuse(lim, in, len, cuts, n_cuts, mode, NULL);
}

struct render_args {
    const struct http_limits *lim;
    enum http_body_mode mode;
};

static char *render_with(const void *arg, const char *in, size_t len, const size_t *cuts,
                         size_t n_cuts)
{
    const struct render_args *a = arg;
    return parse_render(a->lim, in, len, cuts, n_cuts, a->mode);
}

/* The result of parsing `in` must not depend on how the bytes are split:
 * checks every two-piece split and one byte at a time against a single
 * read. Returns the single-read rendering (free it). */
static char *check_all_splits(const struct http_limits *lim, const char *in,
                              enum http_body_mode mode)
{
    size_t len = strlen(in);
    char *whole = parse_render(lim, in, len, NULL, 0, mode);
    const struct render_args a = { lim, mode };
    unit_check_splits(whole, in, len, 1, false, render_with, &a);
    return whole;
}

/* True when a rendering from parse_render ended with `error`. */
static bool rendered_error(const char *r, enum http_error error)
{
    char want[32];
    snprintf(want, sizeof(want), " error=%d ", (int)error);
    return strstr(r, want) != NULL;
}

/* Parses `in` in one read; returns the parser's error. */
static enum http_error parse_error(const struct http_limits *lim, const char *in, size_t len,
                                   unsigned *n_done)
{
    struct ctx *c = ctx_new();
    struct http_parser p;
    http_parser_init(&p, &cbs, lim, c);
    size_t used = http_parser_execute(&p, in, len);
    if (p.error != HTTP_OK) {
        assert_true(p.failed);
        assert_true(used <= len);
        /* A failed parser takes nothing more. */
        assert_int_equal(http_parser_execute(&p, "GET / HTTP/1.1\r\n", 16), 0);
    }
    if (n_done)
        *n_done = c->n_done;
    enum http_error e = p.error;
    ctx_free(c);
    return e;
}

#define assert_parse_error(lim, in, want)                                                    \
    do {                                                                                     \
        enum http_error got_ = parse_error((lim), (in), strlen(in), NULL);                   \
        if (got_ != (want))                                                                  \
            fail_msg("error %d (%s), want %d (%s) for:\n%s", (int)got_, http_error_code(got_), \
                     (int)(want), http_error_code(want), (in));                              \
    } while (0)


#endif
