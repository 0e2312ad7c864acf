/*
 * test_http_forward: the heads the proxy writes (proto/http_forward.h).
 *
 *   request bytes ──http_parser──> http_request ──http_forward_request──> head text
 *   answer bytes ──http_rparser──> http_response ──http_forward_response──> head text
 *
 * Each case checks the whole head batchd would send, so a header that
 * leaks through, or a framing header written twice, shows as a mismatch.
 */
#include "unit.h"

#include <stdlib.h>

#include "proto/http_forward.h"

/* --- requests ----------------------------------------------------------------- */

struct rctx {
    struct http_request m;
    bool head_done;
};

static struct http_request *begin_cb(struct http_parser *p)
{
    struct rctx *c = p->data;
    http_request_reset(&c->m);
    return &c->m;
}

static int head_cb(struct http_parser *p, struct http_request *m)
{
    struct rctx *c = p->data;
    c->head_done = true;
    m->body_mode = HTTP_BODY_DISCARD;
    return HTTP_PARSER_PAUSE; /* the head is all the forwarder needs */
}

static int body_cb(struct http_parser *p, struct http_request *m, const char *at, size_t n)
{
    return 0;
}

static int complete_cb(struct http_parser *p, struct http_request *m)
{
    return HTTP_PARSER_PAUSE;
}

static const struct http_parser_cbs rcbs = { begin_cb, head_cb, body_cb, complete_cb };
static const struct http_limits limits = { 16384, 8192, 1 << 20, 100 };

/* Parses `raw`, forwards it with f, and compares the head with `want`. */
static void check_request(const char *raw, struct http_forward_req *f, const char *want)
{
    struct rctx c = { 0 };
    http_request_init(&c.m);
    struct http_parser p;
    http_parser_init(&p, &rcbs, &limits, &c);
    http_parser_execute(&p, raw, strlen(raw));
    assert_false(p.failed);
    assert_true(c.head_done);
    struct buf out = BUF_INIT;
    http_forward_request(&c.m, f, &out);
    assert_str_eq(str_make(out.data, out.len), want);
    buf_deinit(&out);
    http_request_deinit(&c.m);
}

static void request_framing_comes_from_the_parse(void **state)
{
    struct http_forward_req f = { .peer = "10.1.1.1", .default_host = "app:8000" };
    /* Connection names Content-Length: it is batchd's to write, and it stays. */
    check_request("POST /a HTTP/1.1\r\nHost: x\r\nConnection: content-length, x-drop\r\n"
                  "X-Drop: 1\r\nContent-Length: 35\r\n\r\n",
                  &f,
                  "POST /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.1.1\r\n"
                  "X-Forwarded-Proto: http\r\nX-Forwarded-Host: x\r\nVia: 1.1 batchd\r\n"
                  "Content-Length: 35\r\n\r\n");
    assert_false(f.chunked);
    check_request("PUT /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n",
                  &f,
                  "PUT /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.1.1\r\n"
                  "X-Forwarded-Proto: http\r\nX-Forwarded-Host: x\r\nVia: 1.1 batchd\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n");
    assert_true(f.chunked);
}

static void request_host_and_target_are_normalised(void **state)
{
    struct http_forward_req f = { .peer = "10.1.1.1", .default_host = "app:8000" };
    check_request("GET /p?q=1 HTTP/1.0\r\n\r\n", &f,
                  "GET /p?q=1 HTTP/1.1\r\nHost: app:8000\r\nX-Forwarded-For: 10.1.1.1\r\n"
                  "X-Forwarded-Proto: http\r\nX-Forwarded-Host: app:8000\r\nVia: 1.0 batchd\r\n\r\n");
    check_request("GET http://user@h.example:81/p HTTP/1.1\r\nHost: other\r\n\r\n", &f,
                  "GET /p HTTP/1.1\r\nHost: h.example:81\r\nX-Forwarded-For: 10.1.1.1\r\n"
                  "X-Forwarded-Proto: http\r\nX-Forwarded-Host: h.example:81\r\nVia: 1.1 batchd\r\n\r\n");
    check_request("GET / HTTP/1.1\r\nHost: x\r\nConnection: host, via\r\nVia: 1.1 lb\r\n\r\n", &f,
                  "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.1.1\r\nVia: 1.1 lb, 1.1 batchd\r\n"
                  "X-Forwarded-Proto: http\r\nX-Forwarded-Host: x\r\n\r\n");
}

static void request_forwarded_headers_need_a_trusted_peer(void **state)
{
    const char *raw = "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n"
                      "Forwarded: for=1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nX_Auth: y\r\n\r\n";
    struct http_forward_req f = { .peer = "10.1.1.1" };
    check_request(raw, &f,
                  "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.1.1\r\n"
                  "X-Forwarded-Proto: http\r\nX-Forwarded-Host: x\r\nVia: 1.1 batchd\r\n\r\n");
    assert_int_equal(f.dropped_forwarded, 4);
    assert_int_equal(f.dropped_underscore, 1);
    f = (struct http_forward_req){ .peer = "10.1.1.1", .peer_trusted = true, .pass_underscores = true };
    check_request(raw, &f,
                  "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.1.1.1\r\n"
                  "Forwarded: for=1.1.1.1\r\nX_Auth: y\r\n"
                  "X-Forwarded-Proto: https\r\nX-Forwarded-Host: x\r\nVia: 1.1 batchd\r\n\r\n");
    assert_int_equal(f.dropped_forwarded + f.dropped_underscore, 0);
}

/* Parses raw's head and classifies its upgrade. */
static enum http_upgrade classify(const char *raw, str_t *protocols)
{
    struct rctx c = { 0 };
    http_request_init(&c.m);
    struct http_parser p;
    http_parser_init(&p, &rcbs, &limits, &c);
    http_parser_execute(&p, raw, strlen(raw));
    assert_false(p.failed);
    *protocols = STR_NULL;
    enum http_upgrade u = http_request_upgrade(&c.m, protocols);
    if (u == HTTP_UPGRADE_OK) { /* copied out before the request goes */
        static char keep[64];
        assert_true(protocols->len < sizeof(keep));
        memcpy(keep, protocols->p, protocols->len);
        protocols->p = keep;
    }
    http_request_deinit(&c.m);
    return u;
}

static void request_upgrades_are_classified(void **state)
{
    str_t pr;
    assert_int_equal(classify("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n"
                              "Upgrade: websocket\r\n\r\n", &pr), HTTP_UPGRADE_OK);
    assert_str_eq(pr, "websocket");
    assert_int_equal(classify("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo/2, bar\r\n\r\n",
                              &pr), HTTP_UPGRADE_OK);
    assert_str_eq(pr, "foo/2, bar");
    /* Without the connection option it is only a header: dropped as before. */
    assert_int_equal(classify("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n", &pr), HTTP_UPGRADE_NONE);
    assert_int_equal(classify("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n", &pr), HTTP_UPGRADE_NONE);
    assert_int_equal(classify("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                              "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", &pr), HTTP_UPGRADE_H2C);
    assert_int_equal(classify("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket, H2C\r\n\r\n",
                              &pr), HTTP_UPGRADE_H2C);
    assert_int_equal(classify("POST / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", &pr),
                     HTTP_UPGRADE_METHOD);
    assert_int_equal(classify("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                              "Content-Length: 0\r\n\r\n", &pr), HTTP_UPGRADE_BODY);
    assert_int_equal(classify("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n", &pr), HTTP_UPGRADE_BODY);
    assert_int_equal(classify("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", &pr),
                     HTTP_UPGRADE_VERSION);
    assert_int_equal(classify("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                              "Upgrade: foo\r\n\r\n", &pr), HTTP_UPGRADE_MALFORMED);
    assert_int_equal(classify("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: web socket\r\n\r\n",
                              &pr), HTTP_UPGRADE_MALFORMED);
    assert_int_equal(classify("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: a,,b\r\n\r\n", &pr),
                     HTTP_UPGRADE_MALFORMED);
    assert_int_equal(classify("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: a/\r\n\r\n", &pr),
                     HTTP_UPGRADE_MALFORMED);
    /* A 101's choice must be one protocol the request offered. */
    assert_true(http_upgrade_offered(STR_LIT("websocket"), STR_LIT("WebSocket")));
    assert_true(http_upgrade_offered(STR_LIT("foo/2, bar"), STR_LIT("bar")));
    assert_false(http_upgrade_offered(STR_LIT("foo/2, bar"), STR_LIT("foo")));
    assert_false(http_upgrade_offered(STR_LIT("websocket"), STR_LIT("websocket, h2c")));
    assert_false(http_upgrade_offered(STR_LIT("websocket"), STR_LIT("")));
}

static void request_upgrade_is_forwarded_when_asked(void **state)
{
    const char *raw = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
                      "Sec-WebSocket-Key: k\r\n\r\n";
    struct http_forward_req f = { .peer = "10.1.1.1" };
    check_request(raw, &f,
                  "GET /ws HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.1.1\r\nSec-WebSocket-Key: k\r\n"
                  "X-Forwarded-Proto: http\r\nX-Forwarded-Host: x\r\nVia: 1.1 batchd\r\n\r\n");
    f = (struct http_forward_req){ .peer = "10.1.1.1", .upgrade = STR_LIT("websocket") };
    check_request(raw, &f,
                  "GET /ws HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.1.1\r\nSec-WebSocket-Key: k\r\n"
                  "X-Forwarded-Proto: http\r\nX-Forwarded-Host: x\r\nVia: 1.1 batchd\r\n"
                  "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
}

/* --- answers ---------------------------------------------------------------------- */

static int rhead_cb(struct http_rparser *p, struct http_response *r)
{
    *(bool *)p->data = true;
    return HTTP_PARSER_PAUSE;
}

static int rbody_cb(struct http_rparser *p, const char *at, size_t n)
{
    fail(); /* every case stops at the head */
    return 0;
}

static int rcomplete_cb(struct http_rparser *p, struct http_response *r)
{
    return HTTP_PARSER_PAUSE;
}

static const struct http_rparser_cbs acbs = { rhead_cb, rbody_cb, rcomplete_cb };

static void check_answer_to(const char *raw, const char *upgrade, struct http_forward_resp *f,
                            const char *want)
{
    bool head = false;
    struct http_rparser p;
    http_rparser_init(&p, &acbs, 4096, &head);
    http_rparser_reset(&p, f->head_request);
    if (upgrade)
        http_rparser_expect_upgrade(&p, str_cstr(upgrade));
    http_rparser_execute(&p, raw, strlen(raw));
    assert_false(p.failed);
    assert_true(head);
    struct buf out = BUF_INIT;
    http_forward_response(&p.resp, f, &out);
    assert_str_eq(str_make(out.data, out.len), want);
    buf_deinit(&out);
    http_rparser_deinit(&p);
}

static void check_answer(const char *raw, struct http_forward_resp *f, const char *want)
{
    check_answer_to(raw, NULL, f, want);
}

static void switching_answer_keeps_its_upgrade(void **state)
{
    struct http_forward_resp f = { .upgrade = true, .close = true };
    check_answer_to("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade, x-hop\r\n"
                    "X-Hop: 1\r\nSec-WebSocket-Accept: a=\r\nKeep-Alive: 5\r\n\r\n", "websocket", &f,
                    "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: a=\r\nVia: 1.1 batchd\r\n"
                    "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert_false(f.body_allowed || f.chunked || f.close_delimited);
}

static void answer_framing_comes_from_the_parse(void **state)
{
    struct http_forward_resp f = { 0 };
    check_answer("HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello", &f,
                 "HTTP/1.1 200 OK\r\nVia: 1.1 batchd\r\nContent-Length: 5\r\n\r\n");
    assert_true(f.body_allowed && !f.chunked && !f.close_delimited);
    check_answer("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", &f,
                 "HTTP/1.1 200 OK\r\nVia: 1.1 batchd\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_true(f.chunked);
    f = (struct http_forward_resp){ .client_http10 = true };
    check_answer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &f,
                 "HTTP/1.1 200 OK\r\nVia: 1.1 batchd\r\nConnection: close\r\n\r\n");
    assert_true(f.close_delimited && !f.chunked);
}

static void answers_without_a_body(void **state)
{
    struct http_forward_resp f = { 0 };
    check_answer("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"e\"\r\n\r\n", &f,
                 "HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nVia: 1.1 batchd\r\nContent-Length: 5\r\n\r\n");
    assert_false(f.body_allowed);
    check_answer("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", &f,
                 "HTTP/1.1 204 No Content\r\nVia: 1.1 batchd\r\n\r\n");
    assert_false(f.body_allowed || f.chunked);
    f = (struct http_forward_resp){ .head_request = true, .close = true };
    check_answer("HTTP/1.1 200 OK\r\nContent-Length: 99\r\nVia: 1.0 app\r\n\r\n", &f,
                 "HTTP/1.1 200 OK\r\nVia: 1.0 app, 1.1 batchd\r\nContent-Length: 99\r\nConnection: close\r\n\r\n");
    assert_false(f.body_allowed);
    assert_true(http_status_bodyless(100) && http_status_bodyless(103) && !http_status_bodyless(200));
}

static void cors_lines_replace_the_apps(void **state)
{
    static const char extra[] = "Access-Control-Allow-Origin: https://a.example\r\n";
    struct http_forward_resp f = { .extra = extra, .extra_len = sizeof(extra) - 1, .drop_cors = true };
    check_answer("HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\naccess-control-allow-credentials: true\r\n"
                 "Access-Control: kept\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n", &f,
                 "HTTP/1.1 200 OK\r\nAccess-Control: kept\r\nX-A: 1\r\nVia: 1.1 batchd\r\n"
                 "Access-Control-Allow-Origin: https://a.example\r\nContent-Length: 0\r\n\r\n");
    f = (struct http_forward_resp){ 0 };
    check_answer("HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 0\r\n\r\n", &f,
                 "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nVia: 1.1 batchd\r\nContent-Length: 0\r\n\r\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(request_framing_comes_from_the_parse),
        cmocka_unit_test(request_host_and_target_are_normalised),
        cmocka_unit_test(request_forwarded_headers_need_a_trusted_peer),
        cmocka_unit_test(request_upgrades_are_classified),
        cmocka_unit_test(request_upgrade_is_forwarded_when_asked),
        cmocka_unit_test(switching_answer_keeps_its_upgrade),
        cmocka_unit_test(answer_framing_comes_from_the_parse),
        cmocka_unit_test(answers_without_a_body),
        cmocka_unit_test(cors_lines_replace_the_apps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
