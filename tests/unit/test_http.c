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
#include "tests/unit/http_fixture.h"

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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
