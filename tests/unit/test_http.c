/*
 * test_http: request parsing (proto/http.h) as a connection drives it.
 *
 *   test ──bytes, in pieces──> http_parser_execute ──> begin_cb    (hands out reqs[i])
 *                                                  ├─> head_cb     (counts, picks body mode)
 *                                                  ├─> body_cb     (collects streamed bodies)
 *                                                  └─> complete_cb (writes a description)
 *
 * Every completed request is rendered to text inside complete_cb, while the
 * parser still owns it, so a request that parses differently when the bytes
 * arrive in other pieces shows up as a text mismatch naming the split.
 */
#include "unit.h"

#include <inttypes.h>
#include <stdlib.h>

#include "proto/http.h"

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

/* --- the happy path, split every way -------------------------------------------- */

static const char simple_get[] = "GET /v1/items/42?x=1&y=two HTTP/1.1\r\n"
                                 "Host: example.com\r\n"
                                 "User-Agent: test/1.0\r\n"
                                 "Accept: */*\r\n"
                                 "X-Long-Header-Name-For-Splitting: some value with spaces\r\n"
                                 "\r\n";

static void test_simple_get(void **state)
{
    struct ctx *c = ctx_new();
    struct http_parser p;
    http_parser_init(&p, &cbs, &default_limits, c);
    size_t len = strlen(simple_get);
    assert_int_equal(http_parser_execute(&p, simple_get, len), len);
    assert_int_equal(p.error, HTTP_OK);
    assert_int_equal(c->n_done, 1);
    assert_int_equal(c->n_heads, 1);
    const struct http_request *m = &c->reqs[0];
    assert_int_equal(m->method, HTTP_GET);
    assert_string_equal(http_method_name(m->method), "GET");
    assert_str_eq(m->path, "/v1/items/42");
    assert_str_eq(m->query, "x=1&y=two");
    assert_int_equal(m->version_major, 1);
    assert_int_equal(m->version_minor, 1);
    assert_true(m->keep_alive);
    assert_false(m->chunked);
    assert_int_equal(m->content_length, HTTP_NO_LENGTH);
    assert_int_equal(m->body.len, 0);
    assert_int_equal(m->n_headers, 4);
    static const char *const names[] = { "Host", "User-Agent", "Accept",
                                         "X-Long-Header-Name-For-Splitting" };
    static const char *const values[] = { "example.com", "test/1.0", "*/*",
                                          "some value with spaces" };
    for (uint32_t i = 0; i < 4; i++) {
        assert_str_eq(http_header_name(m, i), names[i]);
        assert_str_eq(http_header_value(m, i), values[i]);
    }
    assert_false(http_parser_eof_mid_request(&p));
    ctx_free(c);
}

static void test_simple_get_every_split(void **state)
{
    char *whole = check_all_splits(&default_limits, simple_get, HTTP_BODY_BUFFER);
    /* The single read itself is right (so equal splits are right too). */
    assert_non_null(strstr(whole, "GET [/v1/items/42] [x=1&y=two] HTTP/1.1 ka=1"));
    assert_non_null(strstr(whole, "h [X-Long-Header-Name-For-Splitting]=[some value with spaces]"));
    assert_non_null(strstr(whole, "begun=1 done=1 error=0"));
    free(whole);
}

static const char pipelined[] = "GET /one HTTP/1.1\r\nHost: h\r\n\r\n"
                                "POST /two?a=b HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n"
                                "Content-Type: text/plain\r\n\r\n"
                                "hello world"
                                "DELETE /three HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";

static void test_pipelined(void **state)
{
    struct ctx *c = ctx_new();
    struct http_parser p;
    http_parser_init(&p, &cbs, &default_limits, c);
    size_t len = strlen(pipelined);
    assert_int_equal(http_parser_execute(&p, pipelined, len), len);
    assert_int_equal(p.error, HTTP_OK);
    assert_int_equal(c->n_done, 3);
    assert_int_equal(c->reqs[0].method, HTTP_GET);
    assert_str_eq(c->reqs[0].path, "/one");
    assert_int_equal(c->reqs[0].body.len, 0);
    assert_true(c->reqs[0].keep_alive);
    assert_int_equal(c->reqs[1].method, HTTP_POST);
    assert_str_eq(c->reqs[1].path, "/two");
    assert_str_eq(c->reqs[1].query, "a=b");
    assert_int_equal(c->reqs[1].content_length, 11);
    assert_bytes_eq(c->reqs[1].body.data, c->reqs[1].body.len, "hello world", 11);
    assert_true(c->reqs[1].keep_alive);
    assert_int_equal(c->reqs[2].method, HTTP_DELETE);
    assert_str_eq(c->reqs[2].path, "/three");
    assert_int_equal(c->reqs[2].body.len, 0);
    assert_false(c->reqs[2].keep_alive);
    ctx_free(c);

    char *whole = check_all_splits(&default_limits, pipelined, HTTP_BODY_BUFFER);
    assert_non_null(strstr(whole, "body 11 [hello world]"));
    assert_non_null(strstr(whole, "begun=3 done=3 error=0"));
    free(whole);
}

static const char chunked_post[] = "POST /upload HTTP/1.1\r\n"
                                   "Host: h\r\n"
                                   "Transfer-Encoding: chunked\r\n"
                                   "\r\n"
                                   "5;name=value\r\nhello\r\n"
                                   "1\r\n \r\n"
                                   "a;x;y=\"quoted\"\r\n0123456789\r\n"
                                   "10\r\nABCDEFGHIJKLMNOP\r\n"
                                   "0\r\n\r\n"
                                   "GET /after HTTP/1.1\r\nHost: h\r\n\r\n";

static void test_chunked_body(void **state)
{
    const char *want = "hello 0123456789ABCDEFGHIJKLMNOP";
    struct ctx *c = ctx_new();
    struct http_parser p;
    http_parser_init(&p, &cbs, &default_limits, c);
    size_t len = strlen(chunked_post);
    assert_int_equal(http_parser_execute(&p, chunked_post, len), len);
    assert_int_equal(p.error, HTTP_OK);
    assert_int_equal(c->n_done, 2);
    assert_true(c->reqs[0].chunked);
    assert_int_equal(c->reqs[0].content_length, HTTP_NO_LENGTH);
    assert_bytes_eq(c->reqs[0].body.data, c->reqs[0].body.len, want, strlen(want));
    assert_str_eq(c->reqs[1].path, "/after");
    ctx_free(c);

    char *whole = check_all_splits(&default_limits, chunked_post, HTTP_BODY_BUFFER);
    assert_non_null(strstr(whole, "body 32 [hello 0123456789ABCDEFGHIJKLMNOP]"));
    free(whole);
    /* Streamed, the same bytes reach body_cb, whatever the split. */
    whole = check_all_splits(&default_limits, chunked_post, HTTP_BODY_STREAM);
    assert_non_null(strstr(whole, "streamed 32 [hello 0123456789ABCDEFGHIJKLMNOP]"));
    free(whole);
}

static void test_chunked_trailers(void **state)
{
    /* Trailer fields arrive after head_cb has seen path and query; they must
     * not move or change what the handler was given. */
    static const char in[] =
        "POST /upload/session?q=1 HTTP/1.1\r\n"
        "Host: h\r\n"
        "Transfer-Encoding: chunked\r\n"
        "\r\n"
        "3\r\nabc\r\n"
        "0\r\n"
        "X-Trailer-One: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
        "X-Trailer-Two: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n"
        "X-Trailer-Three: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\r\n"
        "Host: smuggled\r\n"
        "\r\n";
    char *whole = check_all_splits(&default_limits, in, HTTP_BODY_BUFFER);
    assert_non_null(strstr(whole, "POST [/upload/session] [q=1] HTTP/1.1"));
    assert_non_null(strstr(whole, "body 3 [abc]"));
    assert_non_null(strstr(whole, "begun=1 done=1 error=0"));
    /* The header list is the head's: a trailer cannot add a second Host. */
    assert_null(strstr(whole, "smuggled"));
    free(whole);
}

static void test_request_reset_reuse(void **state)
{
    /* One request object reset for each request, as a connection may reuse
     * it: the old bytes left in its buffers must not leak into the next. */
    struct http_request m;
    http_request_init(&m);
    size_t len = strlen(chunked_post);
    char *fresh = parse_render(&default_limits, chunked_post, len, NULL, 0, HTTP_BODY_BUFFER);
    size_t cut = 70;
    char *reused = parse_render_reuse(&default_limits, chunked_post, len, &cut, 1,
                                      HTTP_BODY_BUFFER, &m);
    assert_string_equal(reused, fresh);
    free(reused);
    /* The second request reused the first one's memory. */
    assert_non_null(m.head.data);
    assert_str_eq(m.path, "/after");
    assert_int_equal(m.body.len, 0);
    assert_non_null(m.body.data);
    size_t head_cap = m.head.cap;
    http_request_reset(&m);
    assert_int_equal(m.head.cap, head_cap);
    assert_int_equal(m.n_headers, 0);
    assert_int_equal(m.content_length, HTTP_NO_LENGTH);
    assert_int_equal(m.url_len, 0);
    http_request_deinit(&m);
    free(fresh);
}

/* --- limits ------------------------------------------------------------------ */

static const struct http_limits small_limits = {
    .max_header_bytes = 1024,
    .max_uri_bytes = 256,
    .max_body_bytes = 64,
    .max_headers = 8,
};

static char *make_request(const char *method, size_t uri_len, unsigned extra_headers,
                          size_t value_len, const char *tail)
{
    struct buf b = BUF_INIT;
    buf_appendf(&b, "%s /", method);
    for (size_t i = 1; i < uri_len; i++)
        buf_append_char(&b, (char)('a' + i % 26));
    buf_append_str(&b, " HTTP/1.1\r\nHost: h\r\n");
    for (unsigned i = 0; i < extra_headers; i++) {
        buf_appendf(&b, "X-H%u: ", i);
        for (size_t k = 0; k < value_len; k++)
            buf_append_char(&b, 'v');
        buf_append_str(&b, "\r\n");
    }
    buf_append_str(&b, tail);
    return b.data;
}

static void test_limit_uri(void **state)
{
    char *ok = make_request("GET", 256, 0, 0, "\r\n");
    char *big = make_request("GET", 257, 0, 0, "\r\n");
    char *huge = make_request("GET", 5000, 0, 0, "\r\n");
    assert_parse_error(&small_limits, ok, HTTP_OK);
    assert_parse_error(&small_limits, big, HTTP_ERR_URI_TOO_LONG);
    assert_parse_error(&small_limits, huge, HTTP_ERR_URI_TOO_LONG);
    /* Also when the URI arrives a byte at a time. */
    char *r = check_all_splits(&small_limits, big, HTTP_BODY_BUFFER);
    assert_true(rendered_error(r, HTTP_ERR_URI_TOO_LONG));
    assert_non_null(strstr(r, "done=0"));
    free(r);
    free(ok);
    free(big);
    free(huge);
}

static void test_limit_header_bytes(void **state)
{
    /* One huge header value. */
    char *one = make_request("GET", 1, 1, 1100, "\r\n");
    assert_parse_error(&small_limits, one, HTTP_ERR_HEADERS_TOO_LARGE);
    /* Several headers that fit the count but not the byte budget. */
    char *many = make_request("GET", 1, 7, 150, "\r\n");
    assert_parse_error(&small_limits, many, HTTP_ERR_HEADERS_TOO_LARGE);
    /* Well under the budget. */
    char *fits = make_request("GET", 1, 7, 100, "\r\n");
    assert_parse_error(&small_limits, fits, HTTP_OK);
    free(one);
    free(many);
    free(fits);
}

static void test_limit_header_count(void **state)
{
    char *at_limit = make_request("GET", 1, 7, 1, "\r\n"); /* Host + 7 = 8 */
    char *over = make_request("GET", 1, 8, 1, "\r\n");     /* Host + 8 = 9 */
    assert_parse_error(&small_limits, at_limit, HTTP_OK);
    assert_parse_error(&small_limits, over, HTTP_ERR_HEADERS_TOO_LARGE);
    free(at_limit);
    free(over);
}

static void test_limit_content_length(void **state)
{
    /* Rejected at the head, before any body byte arrives. */
    static const char head[] = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 65\r\n\r\n";
    unsigned done = 99;
    assert_int_equal(parse_error(&small_limits, head, strlen(head), &done),
                     HTTP_ERR_BODY_TOO_LARGE);
    assert_int_equal(done, 0);
    static const char huge[] =
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\n";
    assert_int_equal(parse_error(&small_limits, huge, strlen(huge), NULL), HTTP_ERR_BODY_TOO_LARGE);

    /* Exactly the limit is fine. */
    struct buf b = BUF_INIT;
    buf_append_str(&b, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 64\r\n\r\n");
    for (int i = 0; i < 64; i++)
        buf_append_char(&b, 'b');
    assert_int_equal(parse_error(&small_limits, b.data, b.len, &done), HTTP_OK);
    assert_int_equal(done, 1);
    buf_deinit(&b);

    /* max_body_bytes 0: no body at all, but an empty one is fine. */
    struct http_limits none = small_limits;
    none.max_body_bytes = 0;
    assert_parse_error(&none, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx",
                       HTTP_ERR_BODY_TOO_LARGE);
    assert_parse_error(&none, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", HTTP_OK);
}

static void test_limit_chunked_body(void **state)
{
    /* 40 + 30 bytes of chunks against a 64-byte limit. */
    struct buf b = BUF_INIT;
    buf_append_str(&b, "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n28\r\n");
    for (int i = 0; i < 40; i++)
        buf_append_char(&b, 'a');
    buf_append_str(&b, "\r\n1e\r\n");
    for (int i = 0; i < 30; i++)
        buf_append_char(&b, 'b');
    buf_append_str(&b, "\r\n0\r\n\r\n");
    unsigned done = 99;
    assert_int_equal(parse_error(&small_limits, b.data, b.len, &done), HTTP_ERR_BODY_TOO_LARGE);
    assert_int_equal(done, 0);
    char *r = check_all_splits(&small_limits, b.data, HTTP_BODY_BUFFER);
    assert_true(rendered_error(r, HTTP_ERR_BODY_TOO_LARGE));
    assert_non_null(strstr(r, "done=0"));
    free(r);
    buf_deinit(&b);
}

static void test_limit_stream_is_unbounded(void **state)
{
    /* A streamed body is the owner's to bound: 1000 bytes over a 64-byte limit. */
    struct buf b = BUF_INIT;
    buf_append_str(&b, "PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n");
    for (int i = 0; i < 1000; i++)
        buf_append_char(&b, (char)('0' + i % 10));
    struct ctx *c = ctx_new();
    c->body_mode = HTTP_BODY_STREAM;
    struct http_parser p;
    http_parser_init(&p, &cbs, &small_limits, c);
    size_t cuts[] = { b.len - 1000, b.len - 500, b.len - 1 };
    assert_int_equal(feed(&p, b.data, b.len, cuts, N_ELEMS(cuts)), b.len);
    assert_int_equal(p.error, HTTP_OK);
    assert_int_equal(c->n_done, 1);
    assert_int_equal(c->reqs[0].body.len, 0);
    assert_bytes_eq(c->streamed.data, c->streamed.len, b.data + b.len - 1000, 1000);
    assert_true(c->body_calls >= 3);
    ctx_free(c);

    /* Discarded, the body is consumed and dropped. */
    c = ctx_new();
    c->body_mode = HTTP_BODY_DISCARD;
    http_parser_init(&p, &cbs, &small_limits, c);
    assert_int_equal(http_parser_execute(&p, b.data, b.len), b.len);
    assert_int_equal(c->n_done, 1);
    assert_int_equal(c->reqs[0].body.len, 0);
    assert_int_equal(c->streamed.len, 0);
    ctx_free(c);
    buf_deinit(&b);
}

/* --- smuggling ------------------------------------------------------------------ */

static void test_framing(void **state)
{
    static const char *const cases[] = {
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        "0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        "POST /x HTTP/1.1\r\nHost: h\r\ncontent-length: 3\r\nCONTENT-LENGTH: 3\r\n\r\nabc",
        "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        unsigned done = 99;
        enum http_error e = parse_error(&default_limits, cases[i], strlen(cases[i]), &done);
        if (e != HTTP_ERR_FRAMING)
            fail_msg("case %zu: error %s, want ambiguous_length:\n%s", i, http_error_code(e),
                     cases[i]);
        assert_int_equal(done, 0);
    }
}

static void test_framing_many_transfer_encodings(void **state)
{
    /* 256 Transfer-Encoding fields must not count back to "none". */
    struct http_limits lim = default_limits;
    lim.max_headers = 1000;
    lim.max_header_bytes = 64 * 1024;
    struct buf b = BUF_INIT;
    buf_append_str(&b, "POST /x HTTP/1.1\r\nHost: h\r\n");
    for (int i = 0; i < 256; i++)
        buf_append_str(&b, "Transfer-Encoding: chunked\r\n");
    buf_append_str(&b, "\r\n0\r\n\r\n");
    assert_int_equal(parse_error(&lim, b.data, b.len, NULL), HTTP_ERR_FRAMING);
    buf_reset(&b);
    buf_append_str(&b, "POST /x HTTP/1.1\r\nHost: h\r\n");
    for (int i = 0; i < 256; i++)
        buf_append_str(&b, "Transfer-Encoding: gzip\r\n");
    buf_append_str(&b, "\r\nabc");
    assert_int_equal(parse_error(&lim, b.data, b.len, NULL), HTTP_ERR_FRAMING);
    buf_deinit(&b);
}

/* --- malformed requests ------------------------------------------------------------ */

static void test_malformed(void **state)
{
    static const char *const cases[] = {
        /* request line */
        "\x01\x02\x03\r\n\r\n",
        "GET\r\n\r\n",
        "GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n",
        "GET / HTTX/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.x\r\nHost: h\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET example.com/x HTTP/1.1\r\nHost: h\r\n\r\n",
        /* header tokens */
        "GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX(y): 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX\x01Y: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\n: empty-name\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: good\r\nHost : evil\r\n\r\n", /* RFC 9112 5.1 */
        "GET / HTTP/1.1\r\nHost: h\r\nX-A : 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\n:x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\001b\r\n\r\n",
        /* Host */
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Host: h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nhOsT: a\r\n\r\n",
        /* Content-Length */
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        /* chunk framing */
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n",
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        unsigned done = 99;
        enum http_error e = parse_error(&default_limits, cases[i], strlen(cases[i]), &done);
        if (e != HTTP_ERR_MALFORMED)
            fail_msg("case %zu: error %s, want bad_request:\n%s", i, http_error_code(e), cases[i]);
        assert_int_equal(done, 0);
    }
}

static void test_version(void **state)
{
    /* llhttp knows versions 0.9, 1.x and 2.0 (505 from batchd); other
     * digits are a malformed request line (400). */
    static const struct {
        const char *req;
        enum http_error want;
    } cases[] = {
        { "GET / HTTP/2.0\r\nHost: h\r\n\r\n", HTTP_ERR_VERSION },
        { "GET / HTTP/0.9\r\nHost: h\r\n\r\n", HTTP_ERR_VERSION },
        { "GET /\r\n\r\n", HTTP_ERR_VERSION }, /* HTTP/0.9 style, no version */
        { "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HTTP_ERR_VERSION },
        { "GET / HTTP/3.0\r\nHost: h\r\n\r\n", HTTP_ERR_MALFORMED },
        { "GET / HTTP/1.2\r\nHost: h\r\n\r\n", HTTP_ERR_MALFORMED },
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        unsigned done = 99;
        enum http_error e = parse_error(&default_limits, cases[i].req, strlen(cases[i].req), &done);
        if (e != cases[i].want)
            fail_msg("case %zu: error %s, want %s:\n%s", i, http_error_code(e), http_error_code(cases[i].want),
                     cases[i].req);
        assert_int_equal(done, 0);
    }
    /* HTTP/1.0 needs no Host. */
    assert_parse_error(&default_limits, "GET / HTTP/1.0\r\n\r\n", HTTP_OK);
}

/* --- pausing ---------------------------------------------------------------------- */

static void test_pause_between_requests(void **state)
{
    static const char first[] = "POST /first HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab";
    static const char second[] = "GET /second HTTP/1.1\r\nHost: h\r\n\r\n";
    char in[sizeof(first) + sizeof(second)];
    size_t len = (size_t)snprintf(in, sizeof(in), "%s%s", first, second);

    struct ctx *c = ctx_new();
    c->pause_after = 1;
    struct http_parser p;
    http_parser_init(&p, &cbs, &default_limits, c);
    size_t used = http_parser_execute(&p, in, len);
    assert_int_equal(used, strlen(first));
    assert_true(p.paused);
    assert_false(p.failed);
    assert_int_equal(p.error, HTTP_OK);
    assert_int_equal(c->n_done, 1);
    assert_int_equal(c->n_begun, 1); /* the second has not started */
    assert_false(http_parser_eof_mid_request(&p));

    http_parser_resume(&p);
    assert_false(p.paused);
    assert_int_equal(http_parser_execute(&p, in + used, len - used), len - used);
    assert_int_equal(p.error, HTTP_OK);
    assert_int_equal(c->n_done, 2);
    assert_str_eq(c->reqs[0].path, "/first");
    assert_bytes_eq(c->reqs[0].body.data, c->reqs[0].body.len, "ab", 2);
    assert_str_eq(c->reqs[1].path, "/second");
    ctx_free(c);
}

static void test_pause_at_head(void **state)
{
    /* head_cb pausing stops before the body: nothing of it is consumed. */
    static const char in[] = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
    size_t len = strlen(in);
    struct ctx *c = ctx_new();
    c->head_rc = HTTP_PARSER_PAUSE;
    struct http_parser p;
    http_parser_init(&p, &cbs, &default_limits, c);
    size_t used = http_parser_execute(&p, in, len);
    assert_true(p.paused);
    assert_int_equal(used, len - 5);
    assert_int_equal(c->n_done, 0);
    assert_true(http_parser_eof_mid_request(&p));
    c->head_rc = 0;
    http_parser_resume(&p);
    assert_int_equal(http_parser_execute(&p, in + used, len - used), len - used);
    assert_int_equal(c->n_done, 1);
    assert_bytes_eq(c->reqs[0].body.data, c->reqs[0].body.len, "hello", 5);
    ctx_free(c);
}

static void test_resume_then_execute_empty(void **state)
{
    /* Paused in head_cb on the last byte of a read: the request has no body
     * and no more bytes will come, so an empty execute must complete it. */
    static const char get[] = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
    struct ctx *c = ctx_new();
    c->head_rc = HTTP_PARSER_PAUSE;
    struct http_parser p;
    http_parser_init(&p, &cbs, &default_limits, c);
    assert_int_equal(http_parser_execute(&p, get, strlen(get)), strlen(get));
    assert_true(p.paused);
    assert_int_equal(c->n_done, 0);
    http_parser_resume(&p);
    assert_int_equal(http_parser_execute(&p, "", 0), 0);
    assert_int_equal(c->n_done, 1);
    assert_false(p.paused);
    assert_false(http_parser_eof_mid_request(&p));
    ctx_free(c);

    /* Paused in body_cb on the last body byte: the same. */
    static const char post[] = "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
    c = ctx_new();
    c->body_mode = HTTP_BODY_STREAM;
    c->body_pause = true;
    http_parser_init(&p, &cbs, &default_limits, c);
    assert_int_equal(http_parser_execute(&p, post, strlen(post)), strlen(post));
    assert_true(p.paused);
    assert_int_equal(c->n_done, 0);
    assert_bytes_eq(c->streamed.data, c->streamed.len, "hello", 5);
    http_parser_resume(&p);
    assert_int_equal(http_parser_execute(&p, "", 0), 0);
    assert_int_equal(c->n_done, 1);
    assert_int_equal(c->body_calls, 1);
    ctx_free(c);
}

static void test_stream_never_empty_piece(void **state)
{
    /* Empty reads in the middle of a streamed body (as after a resume with
     * nothing pending) hand body_cb nothing, not an empty piece. */
    static const char post[] = "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
    size_t head = strlen(post) - 5;
    struct ctx *c = ctx_new();
    c->body_mode = HTTP_BODY_STREAM;
    struct http_parser p;
    http_parser_init(&p, &cbs, &default_limits, c);
    assert_int_equal(http_parser_execute(&p, post, head), head);
    assert_int_equal(http_parser_execute(&p, "", 0), 0);
    assert_int_equal(http_parser_execute(&p, post + head, 2), 2);
    assert_int_equal(http_parser_execute(&p, "", 0), 0);
    assert_int_equal(http_parser_execute(&p, post + head + 2, 3), 3);
    assert_int_equal(c->n_done, 1);
    assert_bytes_eq(c->streamed.data, c->streamed.len, "hello", 5);
    assert_int_equal(c->body_calls, 2);
    ctx_free(c);
}

static void test_head_cb_rejects(void **state)
{
    struct ctx *c = ctx_new();
    c->head_rc = HTTP_ERR_METHOD;
    struct http_parser p;
    http_parser_init(&p, &cbs, &default_limits, c);
    static const char in[] = "GET /pot HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_true(http_parser_execute(&p, in, strlen(in)) < strlen(in));
    assert_int_equal(c->n_begun, 1); /* the next request is not read */
    assert_true(p.failed);
    assert_int_equal(p.error, HTTP_ERR_METHOD);
    assert_int_equal(http_error_status(p.error), 501);
    assert_int_equal(c->n_done, 0);
    ctx_free(c);
}

/* --- semantics a handler relies on ------------------------------------------------------ */

static const struct http_request *parse_one(struct ctx *c, const char *in)
{
    struct http_parser p;
    http_parser_init(&p, &cbs, &default_limits, c);
    size_t len = strlen(in);
    assert_int_equal(http_parser_execute(&p, in, len), len);
    assert_int_equal(p.error, HTTP_OK);
    assert_int_equal(c->n_done, 1);
    return &c->reqs[0];
}

static void test_keep_alive(void **state)
{
    static const struct {
        const char *in;
        bool keep_alive;
    } cases[] = {
        { "GET / HTTP/1.1\r\nHost: h\r\n\r\n", true },
        { "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", true },
        { "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false },
        { "GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n", false },
        { "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", true },
        { "GET / HTTP/1.0\r\n\r\n", false },
        { "HEAD / HTTP/1.0\r\n\r\n", false },
        { "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true },
        { "GET / HTTP/1.0\r\nConnection: close\r\n\r\n", false },
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        struct ctx *c = ctx_new();
        const struct http_request *m = parse_one(c, cases[i].in);
        if (m->keep_alive != cases[i].keep_alive)
            fail_msg("keep_alive %d for:\n%s", m->keep_alive, cases[i].in);
        ctx_free(c);
    }
    /* A HEAD request has no body: the next request follows right after. */
    struct ctx *c = ctx_new();
    struct http_parser p;
    http_parser_init(&p, &cbs, &default_limits, c);
    static const char two[] = "HEAD /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_int_equal(http_parser_execute(&p, two, strlen(two)), strlen(two));
    assert_int_equal(c->n_done, 2);
    assert_int_equal(c->reqs[0].method, HTTP_HEAD);
    assert_str_eq(c->reqs[1].path, "/b");
    ctx_free(c);
}

static void test_header_values(void **state)
{
    struct ctx *c = ctx_new();
    const struct http_request *m = parse_one(c, "GET / HTTP/1.1\r\n"
                                                "Host: h\r\n"
                                                "X-Trailing: value   \t \r\n"
                                                "X-Leading:    lead\r\n"
                                                "X-Empty:\r\n"
                                                "X-Blank:    \r\n"
                                                "X-Inner: a  b\r\n"
                                                "X-Dup: first\r\n"
                                                "x-dup: second\r\n"
                                                "\r\n");
    str_t v;
    assert_true(http_request_header(m, "X-Trailing", &v));
    assert_str_eq(v, "value");
    assert_true(http_request_header(m, "X-Leading", &v));
    assert_str_eq(v, "lead");
    assert_true(http_request_header(m, "X-Empty", &v));
    assert_int_equal(v.len, 0);
    assert_true(http_request_header(m, "X-Blank", &v));
    assert_int_equal(v.len, 0);
    assert_true(http_request_header(m, "X-Inner", &v));
    assert_str_eq(v, "a  b");
    /* Case-insensitive lookup, first of a repeated name. */
    assert_true(http_request_header(m, "x-dup", &v));
    assert_str_eq(v, "first");
    assert_true(http_request_header(m, "HOST", &v));
    assert_str_eq(v, "h");
    assert_true(http_request_header(m, "host", &v));
    assert_false(http_request_header(m, "X-Missing", &v));
    assert_false(http_request_header(m, "X-Dupe", &v));
    assert_false(http_request_header(m, "X-Du", &v));
    assert_int_equal(m->n_headers, 8);
    ctx_free(c);
    /* An empty value split at every byte boundary stays empty. */
    char *r = check_all_splits(&default_limits, "GET / HTTP/1.1\r\nX-E:\r\nHost: h\r\nX-F: \r\n\r\n",
                               HTTP_BODY_BUFFER);
    assert_non_null(strstr(r, "h [X-E]=[]\nh [Host]=[h]\nh [X-F]=[]\n"));
    free(r);
}

static void test_expect_continue(void **state)
{
    struct ctx *c = ctx_new();
    const struct http_request *m = parse_one(
        c, "PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\nz");
    assert_true(m->expect_continue);
    assert_int_equal(m->content_length, 1);
    ctx_free(c);
    c = ctx_new();
    m = parse_one(c, "PUT /x HTTP/1.1\r\nHost: h\r\nExpect: something-else\r\n\r\n");
    assert_false(m->expect_continue);
    ctx_free(c);
    c = ctx_new();
    m = parse_one(c, "PUT /x HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_false(m->expect_continue);
    ctx_free(c);
}

static void test_targets(void **state)
{
    static const struct {
        const char *target, *path, *query;
        bool has_query;
    } cases[] = {
        { "/", "/", "", false },
        { "/p", "/p", "", false },
        { "/p?", "/p", "", true },
        { "/p?q", "/p", "q", true },
        { "/p?a=1&b=2", "/p", "a=1&b=2", true },
        { "/p?q#frag", "/p", "q", true },
        { "/p#frag", "/p", "", false },
        { "/a%2Fb/c", "/a%2Fb/c", "", false },
        { "http://h/p?q", "/p", "q", true },
        { "http://h:8080/a/b", "/a/b", "", false },
        { "http://h", "/", "", false },
        { "http://h?q", "/", "q", true },
        { "https://user@h/p", "/p", "", false },
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        char in[256];
        snprintf(in, sizeof(in), "GET %s HTTP/1.1\r\nHost: h\r\n\r\n", cases[i].target);
        struct ctx *c = ctx_new();
        const struct http_request *m = parse_one(c, in);
        if (!str_eq(m->path, str_cstr(cases[i].path)) ||
            !str_eq(m->query, str_cstr(cases[i].query)) ||
            (m->query.p != NULL) != cases[i].has_query)
            fail_msg("target %s: path [%.*s] query [%.*s] (%s)", cases[i].target,
                     (int)m->path.len, m->path.p, (int)m->query.len,
                     m->query.p ? m->query.p : "", m->query.p ? "set" : "null");
        assert_int_equal(m->url_len, strlen(cases[i].target));
        ctx_free(c);
    }
    struct ctx *c = ctx_new();
    const struct http_request *m = parse_one(c, "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_str_eq(m->path, "*");
    assert_int_equal(m->method, HTTP_OPTIONS);
    ctx_free(c);
}

static void test_upgrade_is_plain_request(void **state)
{
    /* An Upgrade request is parsed as a plain request and parsing goes on. */
    static const char in[] = "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                             "Upgrade: websocket\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n";
    struct ctx *c = ctx_new();
    struct http_parser p;
    http_parser_init(&p, &cbs, &default_limits, c);
    assert_int_equal(http_parser_execute(&p, in, strlen(in)), strlen(in));
    assert_int_equal(p.error, HTTP_OK);
    assert_int_equal(c->n_done, 2);
    assert_str_eq(c->reqs[1].path, "/next");
    ctx_free(c);
}

static void test_eof_mid_request(void **state)
{
    struct ctx *c = ctx_new();
    struct http_parser p;
    http_parser_init(&p, &cbs, &default_limits, c);
    assert_false(http_parser_eof_mid_request(&p));
    static const char in[] = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab";
    assert_int_equal(http_parser_execute(&p, in, 5), 5);
    assert_true(http_parser_eof_mid_request(&p));
    assert_int_equal(http_parser_execute(&p, in + 5, strlen(in) - 5), strlen(in) - 5);
    assert_true(http_parser_eof_mid_request(&p)); /* body still short */
    assert_int_equal(http_parser_execute(&p, "cd", 2), 2);
    assert_false(http_parser_eof_mid_request(&p));
    assert_int_equal(c->n_done, 1);
    ctx_free(c);
}

/* --- response helpers ------------------------------------------------------------------ */

static void test_date_format(void **state)
{
    char out[64];
    memset(out, 'X', sizeof(out));
    assert_int_equal(http_date_format(784111777, out), 29);
    assert_string_equal(out, "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_int_equal(http_date_format(0, out), 29);
    assert_string_equal(out, "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_int_equal(http_date_format(951782400, out), 29); /* leap day 2000 */
    assert_string_equal(out, "Tue, 29 Feb 2000 00:00:00 GMT");
    assert_int_equal(http_date_format(1704067199, out), 29);
    assert_string_equal(out, "Sun, 31 Dec 2023 23:59:59 GMT");
}

static void test_status_reason_and_errors(void **state)
{
    assert_string_equal(http_status_reason(200), "OK");
    assert_string_equal(http_status_reason(204), "No Content");
    assert_string_equal(http_status_reason(404), "Not Found");
    assert_string_equal(http_status_reason(413), "Content Too Large");
    assert_string_equal(http_status_reason(414), "URI Too Long");
    assert_string_equal(http_status_reason(431), "Request Header Fields Too Large");
    assert_string_equal(http_status_reason(503), "Service Unavailable");
    assert_string_equal(http_status_reason(505), "HTTP Version Not Supported");
    assert_string_equal(http_status_reason(999), "Unknown");
    assert_string_equal(http_status_reason(-1), "Unknown");

    static const struct {
        enum http_error e;
        int status;
        const char *code;
    } errs[] = {
        { HTTP_ERR_MALFORMED, 400, "bad_request" },
        { HTTP_ERR_FRAMING, 400, "ambiguous_length" },
        { HTTP_ERR_URI_TOO_LONG, 414, "uri_too_long" },
        { HTTP_ERR_HEADERS_TOO_LARGE, 431, "headers_too_large" },
        { HTTP_ERR_BODY_TOO_LARGE, 413, "body_too_large" },
        { HTTP_ERR_METHOD, 501, "method_not_implemented" },
        { HTTP_ERR_VERSION, 505, "version_not_supported" },
        { HTTP_ERR__COUNT, 500, "internal" },
    };
    for (size_t i = 0; i < N_ELEMS(errs); i++) {
        assert_int_equal(http_error_status(errs[i].e), errs[i].status);
        assert_string_equal(http_error_code(errs[i].e), errs[i].code);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_simple_get_every_split),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_chunked_body),
        cmocka_unit_test(test_chunked_trailers),
        cmocka_unit_test(test_request_reset_reuse),
        cmocka_unit_test(test_limit_uri),
        cmocka_unit_test(test_limit_header_bytes),
        cmocka_unit_test(test_limit_header_count),
        cmocka_unit_test(test_limit_content_length),
        cmocka_unit_test(test_limit_chunked_body),
        cmocka_unit_test(test_limit_stream_is_unbounded),
        cmocka_unit_test(test_framing),
        cmocka_unit_test(test_framing_many_transfer_encodings),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_pause_between_requests),
        cmocka_unit_test(test_pause_at_head),
        cmocka_unit_test(test_resume_then_execute_empty),
        cmocka_unit_test(test_stream_never_empty_piece),
        cmocka_unit_test(test_head_cb_rejects),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_header_values),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_targets),
        cmocka_unit_test(test_upgrade_is_plain_request),
        cmocka_unit_test(test_eof_mid_request),
        cmocka_unit_test(test_date_format),
        cmocka_unit_test(test_status_reason_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
