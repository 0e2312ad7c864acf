/*
 * test_http_semantics: request parsing (proto/http.h) beyond the bytes:
 * pausing and resuming as a connection does, the semantics a handler relies
 * on (keep-alive, header values, Expect, targets, Upgrade, EOF), and the
 * response helpers. The driver is tests/unit/http_fixture.h.
 */
#include "tests/unit/http_fixture.h"

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
