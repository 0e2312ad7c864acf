/*
 * test_http_response: upstream response parsing (proto/http_response.h) as
 * the proxy drives it.
 *
 *   test ──bytes, in pieces──> http_rparser_execute ──> head_cb     (may pause)
 *                                                  ├─> body_cb     (collects the body)
 *                                                  └─> complete_cb (writes a description, pauses)
 *
 * Like daemon/proxy/pool.c, complete_cb pauses and the driver then resets the
 * parser for the next response on the connection; a pause in head_cb is
 * resumed and the rest of the piece fed again. Every completed response is
 * rendered to text, so one that parses differently when its bytes arrive in
 * other pieces shows up as a text mismatch naming the split.
 */
#include "unit.h"

#include <inttypes.h>
#include <stdlib.h>

#include "proto/http_response.h"

#define MAX_RESPS 4
#define HEAD_MAX 4096

struct ctx {
    unsigned n_heads, n_done;
    struct buf desc;             /* every completed response, in order */
    struct buf body;             /* the current response's body */
    bool pause_head;             /* head_cb pauses */
    bool head_request[MAX_RESPS]; /* the request each response answers was a HEAD */
};

static int head_cb(struct http_rparser *p, struct http_response *r)
{
    struct ctx *c = p->data;
    assert_true(r->status >= 200); /* 1xx never reach here */
    c->n_heads++;
    buf_reset(&c->body);
    return c->pause_head ? HTTP_PARSER_PAUSE : 0;
}

static int body_cb(struct http_rparser *p, const char *at, size_t n)
{
    struct ctx *c = p->data;
    assert_true(n > 0);
    buf_append(&c->body, at, n);
    return 0;
}

static int complete_cb(struct http_rparser *p, struct http_response *r)
{
    struct ctx *c = p->data;
    assert_true(c->n_done < MAX_RESPS);
    assert_int_equal(c->n_done + 1, c->n_heads);
    struct buf *out = &c->desc;
    buf_appendf(out, "%d [%.*s] HTTP/1.%u ka=%d chunked=%d", r->status, (int)r->reason_len,
                r->head.data ? r->head.data : "", r->version_minor, r->keep_alive, r->chunked);
    if (r->content_length == HTTP_NO_LENGTH)
        buf_append_str(out, " cl=none\n");
    else
        buf_appendf(out, " cl=%" PRIu64 "\n", r->content_length);
    for (uint32_t i = 0; i < r->n_headers; i++) {
        str_t k = http_header_name(r, i), v = http_header_value(r, i);
        buf_appendf(out, "h [%.*s]=[%.*s]\n", (int)k.len, k.p, (int)v.len, v.p);
    }
    buf_appendf(out, "body %zu [%.*s]\n", c->body.len, (int)c->body.len,
                c->body.data ? c->body.data : "");
    if (r->folded) /* so every other test checks, at every split, that nothing else reads as one */
        buf_append_str(out, "folded\n");
    c->n_done++;
    return HTTP_PARSER_PAUSE; /* as the proxy does: it resets before the next one */
}

static const struct http_rparser_cbs cbs = {
    .head_cb = head_cb,
    .body_cb = body_cb,
    .complete_cb = complete_cb,
};

struct feed_args {
    struct http_rparser *p;
    struct ctx *c;
};

/* One read (see unit_feed). A pause in head_cb is resumed; a pause after a
 * response resets the parser for the next one. Stops at an error. */
static bool read_piece(void *arg, const char *piece, size_t n, size_t *used)
{
    struct http_rparser *p = ((struct feed_args *)arg)->p;
    struct ctx *c = ((struct feed_args *)arg)->c;
    size_t off = 0;
    for (;;) {
        unsigned done_before = c->n_done;
        size_t step = http_rparser_execute(p, piece + off, n - off);
        assert_true(step <= n - off);
        off += step;
        if (p->failed || !p->paused)
            break;
        bool completed = c->n_done > done_before;
        if (completed)
            http_rparser_reset(p, c->n_done < MAX_RESPS && c->head_request[c->n_done]);
        else
            http_rparser_resume(p);
        /* Resumed on the piece's last byte: run again on no bytes, as
         * the proxy does, to finish a response that has no more. */
        if (off == n && completed)
            break;
    }
    *used = off;
    return !p->failed;
}

/* Feeds in[0..len) in reads ending at the cuts (unit_feed); returns the
 * bytes consumed. */
static size_t feed(struct http_rparser *p, struct ctx *c, const char *in, size_t len,
                   const size_t *cuts, size_t n_cuts)
{
    struct feed_args a = { p, c };
    return unit_feed(in, len, cuts, n_cuts, read_piece, &a);
}

static struct ctx *ctx_new(void)
{
    struct ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    return c;
}

static void ctx_free(struct ctx *c)
{
    buf_deinit(&c->desc);
    buf_deinit(&c->body);
    free(c);
}

/* Parses `in` fed at the given cuts, then (with `eof`) the server's close,
 * and renders what was observed to one string (free it). */
static char *parse_render(const char *in, size_t len, const size_t *cuts, size_t n_cuts,
                          const struct ctx *setup, bool eof)
{
    struct ctx *c = ctx_new();
    c->pause_head = setup->pause_head;
    memcpy(c->head_request, setup->head_request, sizeof(c->head_request));
    struct http_rparser p;
    http_rparser_init(&p, &cbs, HEAD_MAX, c);
    http_rparser_reset(&p, c->head_request[0]);
    size_t used = feed(&p, c, in, len, cuts, n_cuts);
    if (eof)
        http_rparser_finish(&p);
    struct buf out = BUF_INIT;
    buf_append(&out, c->desc.data ? c->desc.data : "", c->desc.len);
    buf_appendf(&out, "heads=%u done=%u failed=%d error=%s\n", c->n_heads, c->n_done, p.failed,
                p.error ? p.error : "-");
    if (!p.failed)
        assert_int_equal(used, len);
    http_rparser_deinit(&p);
    ctx_free(c);
    return out.data;
}

struct render_args {
    const struct ctx *setup;
    bool eof;
};

static char *render_with(const void *arg, const char *in, size_t len, const size_t *cuts,
                         size_t n_cuts)
{
    const struct render_args *a = arg;
    return parse_render(in, len, cuts, n_cuts, a->setup, a->eof);
}

/* The result must not depend on how the bytes are split: checks every
 * two-piece split (empty pieces too) and one byte at a time against a
 * single read, and the single read against `want`. */
static void check_all_splits(const char *in, const struct ctx *setup, bool eof, const char *want)
{
    size_t len = strlen(in);
    char *whole = parse_render(in, len, NULL, 0, setup, eof);
    if (strcmp(whole, want) != 0)
        fail_msg("one read:\n%s--- want:\n%s", whole, want);
    const struct render_args a = { setup, eof };
    unit_check_splits(whole, in, len, 0, true, render_with, &a);
    free(whole);
}

static const struct ctx plain; /* no pauses, no HEAD */

/* --- tests ------------------------------------------------------------------------ */

static void test_content_length_every_split(void **state)
{
    check_all_splits("HTTP/1.1 200 OK\r\n"
                     "Content-Type: text/plain\r\n"
                     "X-Long-Header-Name-For-Splitting: some value\r\n"
                     "Content-Length: 11\r\n"
                     "\r\n"
                     "hello world",
                     &plain, false,
                     "200 [OK] HTTP/1.1 ka=1 chunked=0 cl=11\n"
                     "h [Content-Type]=[text/plain]\n"
                     "h [X-Long-Header-Name-For-Splitting]=[some value]\n"
                     "h [Content-Length]=[11]\n"
                     "body 11 [hello world]\n"
                     "heads=1 done=1 failed=0 error=-\n");
}

static void test_keep_alive_responses_in_a_row(void **state)
{
    /* Two answers in one read, as a pipelining app might send them. */
    check_all_splits("HTTP/1.1 204 No Content\r\n\r\n"
                     "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
                     &plain, false,
                     "204 [No Content] HTTP/1.1 ka=1 chunked=0 cl=none\n"
                     "body 0 []\n"
                     "200 [OK] HTTP/1.0 ka=0 chunked=0 cl=2\n"
                     "h [Content-Length]=[2]\n"
                     "body 2 [hi]\n"
                     "heads=2 done=2 failed=0 error=-\n");
}

static void test_chunked_body(void **state)
{
    check_all_splits("HTTP/1.1 200 OK\r\n"
                     "Transfer-Encoding: chunked\r\n"
                     "\r\n"
                     "5\r\nhello\r\n"
                     "6;ext=1\r\n world\r\n"
                     "0\r\n"
                     "X-Trailer: t\r\n"
                     "\r\n",
                     &plain, false,
                     "200 [OK] HTTP/1.1 ka=1 chunked=1 cl=none\n"
                     "h [Transfer-Encoding]=[chunked]\n"
                     /* Trailer fields join the list after head_cb; the
                      * proxy has relayed the head by then and drops them. */
                     "h [X-Trailer]=[t]\n"
                     "body 11 [hello world]\n"
                     "heads=1 done=1 failed=0 error=-\n");
}

static void test_interim_responses_skipped(void **state)
{
    /* Nothing of a 1xx leaks into the final answer's status or headers. */
    check_all_splits("HTTP/1.1 100 Continue\r\n\r\n"
                     "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                     "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
                     &plain, false,
                     "201 [Created] HTTP/1.1 ka=1 chunked=0 cl=2\n"
                     "h [Content-Length]=[2]\n"
                     "body 2 [ok]\n"
                     "heads=1 done=1 failed=0 error=-\n");
}

static const char head_then_get[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                                    "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc";
static const char head_then_get_want[] = "200 [OK] HTTP/1.1 ka=1 chunked=0 cl=5\n"
                                         "h [Content-Length]=[5]\n"
                                         "body 0 []\n"
                                         "404 [Not Found] HTTP/1.1 ka=1 chunked=0 cl=3\n"
                                         "h [Content-Length]=[3]\n"
                                         "body 3 [abc]\n"
                                         "heads=2 done=2 failed=0 error=-\n";

static void test_head_response_has_no_body(void **state)
{
    /* Content-Length on a HEAD answer is what a GET would get: no body
     * follows, and the next bytes are the next response. */
    struct ctx setup = { .head_request = { true, false } };
    check_all_splits(head_then_get, &setup, false, head_then_get_want);
}

static void test_head_response_paused_in_head_cb(void **state)
{
    /* The proxy pauses in head_cb while it invalidates, or when its client
     * left. After the resume, the HEAD answer must still end at its head. */
    struct ctx setup = { .pause_head = true, .head_request = { true, false } };
    check_all_splits(head_then_get, &setup, false, head_then_get_want);
}

static void test_head_response_paused_step_by_step(void **state)
{
    /* The same, by hand: what is consumed where. */
    size_t head1 = strlen("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    size_t len = strlen(head_then_get);
    struct ctx *c = ctx_new();
    c->pause_head = true;
    struct http_rparser p;
    http_rparser_init(&p, &cbs, HEAD_MAX, c);
    http_rparser_reset(&p, true);
    assert_int_equal(http_rparser_execute(&p, head_then_get, head1), head1);
    assert_true(p.paused);
    assert_int_equal(c->n_heads, 1);
    assert_int_equal(c->n_done, 0);
    /* Resumed with nothing more read: the HEAD answer is whole. */
    http_rparser_resume(&p);
    assert_int_equal(http_rparser_execute(&p, "", 0), 0);
    assert_false(p.failed);
    assert_int_equal(c->n_done, 1);
    assert_true(p.paused); /* complete_cb paused */
    http_rparser_reset(&p, false);
    c->pause_head = false;
    assert_int_equal(http_rparser_execute(&p, head_then_get + head1, len - head1), len - head1);
    assert_false(p.failed);
    assert_int_equal(c->n_done, 2);
    assert_string_equal(c->desc.data, "200 [OK] HTTP/1.1 ka=1 chunked=0 cl=5\n"
                                      "h [Content-Length]=[5]\n"
                                      "body 0 []\n"
                                      "404 [Not Found] HTTP/1.1 ka=1 chunked=0 cl=3\n"
                                      "h [Content-Length]=[3]\n"
                                      "body 3 [abc]\n");
    http_rparser_deinit(&p);
    ctx_free(c);
}

static void test_body_until_eof(void **state)
{
    /* Neither length nor chunks: the body ends when the server closes, and
     * the connection is not kept. */
    check_all_splits("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
                     &plain, true,
                     "200 [OK] HTTP/1.1 ka=0 chunked=0 cl=none\n"
                     "h [Content-Type]=[text/plain]\n"
                     "body 13 [until the end]\n"
                     "heads=1 done=1 failed=0 error=-\n");
}

static void test_eof_mid_response_fails(void **state)
{
    struct ctx *c = ctx_new();
    struct http_rparser p;
    http_rparser_init(&p, &cbs, HEAD_MAX, c);
    static const char cut[] = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort";
    assert_int_equal(http_rparser_execute(&p, cut, strlen(cut)), strlen(cut));
    http_rparser_finish(&p);
    assert_true(p.failed);
    assert_string_equal(p.error, "connection closed mid-response");
    assert_int_equal(c->n_done, 0);
    /* A failed parser takes nothing more. */
    assert_int_equal(http_rparser_execute(&p, "HTTP/1.1 200 OK\r\n", 17), 0);
    http_rparser_deinit(&p);
    ctx_free(c);
}

static void test_head_too_large(void **state)
{
    struct ctx *c = ctx_new();
    struct http_rparser p;
    http_rparser_init(&p, &cbs, 64, c);
    static const char big[] = "HTTP/1.1 200 OK\r\n"
                              "X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    http_rparser_execute(&p, big, strlen(big));
    assert_true(p.failed);
    assert_string_equal(p.error, "response head too large");
    assert_int_equal(c->n_heads, 0);
    http_rparser_deinit(&p);
    ctx_free(c);
}

/* The field rules the request parser applies hold for answers too: a
 * value's trailing spaces and tabs are not part of it, at any split. */
static void test_value_trailing_whitespace_trimmed(void **state)
{
    check_all_splits("HTTP/1.1 200 OK\r\n"
                     "X-T: v \t \r\n"
                     "X-Empty:   \r\n"
                     "Content-Length: 0\r\n"
                     "\r\n",
                     &plain, false,
                     "200 [OK] HTTP/1.1 ka=1 chunked=0 cl=0\n"
                     "h [X-T]=[v]\n"
                     "h [X-Empty]=[]\n"
                     "h [Content-Length]=[0]\n"
                     "body 0 []\n"
                     "heads=1 done=1 failed=0 error=-\n");
}

/* obs-fold: llhttp 8 takes a value continued on the next line (which
 * starts with SP or HTAB) and joins it with that whitespace; the answer
 * says so, at any split, so that a caller can refuse it. A value split by
 * reads alone, or a fold of an empty first line, is not flagged (the
 * latter is just the value, RFC 9112 5.2). */
static void test_obs_fold_flagged(void **state)
{
    check_all_splits("HTTP/1.1 200 OK\r\n"
                     "X-Principal: alice\r\n X-Injected: 1\r\n"
                     "Content-Length: 0\r\n"
                     "\r\n",
                     &plain, false,
                     "200 [OK] HTTP/1.1 ka=1 chunked=0 cl=0\n"
                     "h [X-Principal]=[alice X-Injected: 1]\n"
                     "h [Content-Length]=[0]\n"
                     "body 0 []\n"
                     "folded\n"
                     "heads=1 done=1 failed=0 error=-\n");
    check_all_splits("HTTP/1.1 200 OK\r\n"
                     "X-A: a\r\n\tb\r\n"
                     "Content-Length: 0\r\n"
                     "\r\n"
                     "HTTP/1.1 204 No Content\r\n"
                     "X-B: plain value\r\n"
                     "\r\n",
                     &plain, false,
                     "200 [OK] HTTP/1.1 ka=1 chunked=0 cl=0\n"
                     "h [X-A]=[a\tb]\n"
                     "h [Content-Length]=[0]\n"
                     "body 0 []\n"
                     "folded\n"
                     "204 [No Content] HTTP/1.1 ka=1 chunked=0 cl=none\n"
                     "h [X-B]=[plain value]\n"
                     "body 0 []\n"
                     "heads=2 done=2 failed=0 error=-\n");
}

/* A header name that is not a token ("Bad Name", which llhttp 8 lets
 * through) fails the answer: the proxy would relay it to the client. */
static void test_bad_header_name_fails(void **state)
{
    struct ctx *c = ctx_new();
    struct http_rparser p;
    http_rparser_init(&p, &cbs, HEAD_MAX, c);
    static const char bad[] = "HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n";
    http_rparser_execute(&p, bad, strlen(bad));
    assert_true(p.failed);
    /* llhttp's strict mode (how batchd builds it) refuses it first; batchd's
     * own check stands behind it for a non-strict system llhttp. */
    assert_true(strcmp(p.error, "bad header name") == 0 || strcmp(p.error, "HPE_INVALID_HEADER_TOKEN") == 0);
    assert_int_equal(c->n_heads, 0);
    http_rparser_deinit(&p);
    ctx_free(c);
}

/* --- 101: the end of HTTP on the connection ------------------------------- */

struct sw {
    int heads;
    bool switching;
};

static int sw_head_cb(struct http_rparser *p, struct http_response *r)
{
    struct sw *w = p->data;
    w->heads++;
    w->switching = r->switching;
    return HTTP_PARSER_PAUSE; /* as the proxy does: the tunnel takes the bytes after */
}

static int sw_body_cb(struct http_rparser *p, const char *at, size_t n)
{
    fail(); /* a 101 has no body */
    return 0;
}

static const struct http_rparser_cbs sw_cbs = { sw_head_cb, sw_body_cb, complete_cb };

/* Feeds `in` byte by byte when `bytewise`, else at once; returns the bytes
 * consumed when the head pauses (or -1 when the parse failed, with *err). */
static long switch_at(const char *in, const char *offer, bool bytewise, const char **err, struct sw *w)
{
    struct http_rparser p;
    http_rparser_init(&p, &sw_cbs, HEAD_MAX, w);
    http_rparser_reset(&p, false);
    if (offer)
        http_rparser_expect_upgrade(&p, str_cstr(offer));
    size_t len = strlen(in), off = 0;
    while (off < len && !p.failed && !p.paused)
        off += http_rparser_execute(&p, in + off, bytewise ? 1 : len - off);
    long rc = p.failed ? -1 : (long)off;
    *err = p.error;
    http_rparser_deinit(&p);
    return rc;
}

static void test_switching_protocols(void **state)
{
    const char *ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi";
    size_t head = strlen(ok) - 4;
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        struct sw w = { 0 };
        const char *err;
        assert_int_equal(switch_at(ok, "websocket", bytewise, &err, &w), (long)head);
        assert_true(w.switching);
        assert_int_equal(w.heads, 1);
        /* A 100 before it is skipped as ever. */
        w = (struct sw){ 0 };
        char both[256];
        snprintf(both, sizeof(both), "HTTP/1.1 100 Continue\r\n\r\n%s", ok);
        assert_int_equal(switch_at(both, "websocket", bytewise, &err, &w), (long)(head + 25));
        assert_true(w.switching);
    }
    static const struct {
        const char *in, *offer, *err;
    } bad[] = {
        /* The request did not ask: never a tunnel, whatever the 101 says. */
        { "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", NULL,
          "101 to a request that did not ask to upgrade" },
        { "HTTP/1.1 101 Switching Protocols\r\n\r\n", NULL, "101 to a request that did not ask to upgrade" },
        { "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n", "websocket",
          "101 with a body" },
        { "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
          "websocket", "101 with a body" },
        { "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "websocket", "101 to a protocol not offered" },
        { "HTTP/1.1 101 Switching Protocols\r\n\r\n", "websocket", "101 to a protocol not offered" },
        { "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nUpgrade: websocket\r\n\r\n", "websocket",
          "101 to a protocol not offered" },
        { "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo, bar\r\n\r\n", "foo, bar", "101 to a protocol not offered" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sw w = { 0 };
        const char *err = NULL;
        assert_int_equal(switch_at(bad[i].in, bad[i].offer, false, &err, &w), -1);
        assert_int_equal(w.heads, 0);
        assert_non_null(err);
        if (strcmp(err, bad[i].err) != 0)
            fail_msg("case %zu: %s, want %s", i, err, bad[i].err);
    }
    /* Asked, but the app answers as HTTP: a plain answer, parsed as ever. */
    struct sw w = { 0 };
    const char *err;
    const char *refused = "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(switch_at(refused, "websocket", false, &err, &w), (long)strlen(refused));
    assert_false(w.switching);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_length_every_split),
        cmocka_unit_test(test_keep_alive_responses_in_a_row),
        cmocka_unit_test(test_chunked_body),
        cmocka_unit_test(test_interim_responses_skipped),
        cmocka_unit_test(test_head_response_has_no_body),
        cmocka_unit_test(test_head_response_paused_in_head_cb),
        cmocka_unit_test(test_head_response_paused_step_by_step),
        cmocka_unit_test(test_body_until_eof),
        cmocka_unit_test(test_eof_mid_response_fails),
        cmocka_unit_test(test_head_too_large),
        cmocka_unit_test(test_value_trailing_whitespace_trimmed),
        cmocka_unit_test(test_bad_header_name_fails),
        cmocka_unit_test(test_obs_fold_flagged),
        cmocka_unit_test(test_switching_protocols),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
