/*
 * fuzz_forward: libFuzzer harness for the heads batchd writes when it
 * proxies (proto/http_forward.c).
 *
 *   input: [opts] bytes from a client (opts bit 0 clear) or the app (set)
 *
 *   client bytes ──http_parser──> request ──http_forward_request──> head ──fresh http_parser──> checks
 *   app bytes ────http_rparser──> answer ──http_forward_response─> head ──fresh http_rparser─> checks
 *
 * Request opts: bit 1 peer trusted, bit 2 pass underscores, bit 3 a default
 * Host (else an empty one), bits 4-5 a header to strip, bit 6 stream the
 * body (else buffer it), bit 7 a peer address. Answer opts: bit 1 the
 * request was HEAD, bit 2 the client spoke HTTP/1.0, bit 3 batchd closes.
 *
 * Every head produced must parse, alone, as exactly one complete head: the
 * fresh parser takes all of it, sees one head and fails nothing. Then:
 *   - one Host (the target's authority, else the client's Host, else the
 *     default), one X-Forwarded-For ending with the peer, batchd's Via
 *     entry last;
 *   - framing from batchd's own parse: Transfer-Encoding: chunked iff
 *     f.chunked iff the request was chunked, else the parsed Content-Length
 *     (or none for an empty body); never both, never two of either;
 *   - an upgrade request (http_request_upgrade OK) goes with one
 *     "Connection: Upgrade" and its Upgrade value, and reads as the same
 *     upgrade again; any other never reads as an upgrade request;
 *   - method, path and query as parsed; no hop-by-hop header, none the
 *     Connection header named, none with '_' unless asked, not the stripped
 *     one, no X-Forwarded-* or Forwarded from an untrusted peer;
 *   - for an answer: the status and reason as parsed; chunked only to an
 *     HTTP/1.1 client and only with a body; the app's Content-Length when it
 *     gave one; a close-delimited body says Connection: close.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http_forward.h"
#include "tests/fuzz/fuzz.h"

static const struct http_limits client_limits = {
    .max_header_bytes = 4096,
    .max_uri_bytes = 1024,
    .max_body_bytes = 1024,
    .max_headers = 40,
};

/* The forwarded head is larger than the one received: room for that. */
static const struct http_limits reparse_limits = {
    .max_header_bytes = 1 << 20,
    .max_uri_bytes = 1 << 20,
    .max_body_bytes = 0,
    .max_headers = 1000,
};

static const char *const strip_choices[4] = { NULL, "x-api-key", "cookie", "authorization" };
static const char *const hop_by_hop[] = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
    "proxy-authenticate",
};
/* Connection may not name these away (http_forward.h). */
static const char *const protected_names[] = {
    "content-length", "transfer-encoding", "host", "x-forwarded-for", "x-forwarded-proto",
    "x-forwarded-host", "via", "forwarded",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static bool name_in(str_t n, const char *const *list, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (str_eq_ci(n, str_cstr(list[i])))
            return true;
    return false;
}

typedef str_t (*field_fn)(const void *msg, uint32_t i);

/* Which Connection field of the message (0 for the first) names tok as
 * hop-by-hop, or -1. Protected names never count. */
static int connection_naming(const void *msg, uint32_t n, field_fn name, field_fn value, str_t tok)
{
    if (name_in(tok, protected_names, COUNT(protected_names)))
        return -1;
    int k = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!str_eq_ci(name(msg, i), STR_LIT("connection")))
            continue;
        if (str_list_has_token(value(msg, i), tok))
            return k;
        k++;
    }
    return -1;
}

/* A field named by any Connection field of the message (a 9th one too:
 * http_forward.c keeps 8 at hand) is not forwarded. */
static void check_not_named(const void *msg, uint32_t n, field_fn name, field_fn value, str_t tok)
{
    CHECK(connection_naming(msg, n, name, value, tok) < 0);
}

static bool ends_with(str_t s, const char *tail)
{
    size_t n = strlen(tail);
    return s.len >= n && memcmp(s.p + s.len - n, tail, n) == 0;
}

/* The forwarder appends: out starts with a byte of the caller's, which it
 * must keep. */
static void start_head(struct buf *out)
{
    buf_reset(out);
    buf_append_str(out, "x");
}

/* What the forwarder wrote after start_head, as a heap copy of exactly the
 * head (free it), so that a parse past its end is caught. */
static char *forwarded_head(const struct buf *out, size_t *len)
{
    CHECK(out->data[0] == 'x');
    *len = out->len - 1;
    return fuzz_copy(out->data + 1, *len);
}

/* The forwarded head did not re-parse as exactly one head: says how. */
static void reparse_failed(const char *head, size_t len, size_t used, bool failed,
                           const char *error, unsigned heads)
{
    fuzz_dump("forwarded head", head, len);
    fprintf(stderr, "re-parse: used %zu of %zu, failed=%d (%s), heads=%u", used, len, failed,
            error, heads);
}

static str_t req_name(const void *m, uint32_t i) { return http_header_name((const struct http_request *)m, i); }
static str_t req_value(const void *m, uint32_t i) { return http_header_value((const struct http_request *)m, i); }
static str_t resp_name(const void *r, uint32_t i) { return http_header_name((const struct http_response *)r, i); }
static str_t resp_value(const void *r, uint32_t i) { return http_header_value((const struct http_response *)r, i); }

/* --- requests ------------------------------------------------------------------------------ */

struct req_ctx {
    uint8_t opts;
    struct http_request msgs[2];
    unsigned n_begun;
    struct buf out;                 /* the forwarded head */
    /* the re-parse */
    const struct http_request *orig;
    const struct http_forward_req *f;
    struct http_request again;
    unsigned again_heads, again_begun, again_done;
};

static struct http_request *again_begin_cb(struct http_parser *p)
{
    struct req_ctx *c = p->data;
    c->again_begun++;
    http_request_reset(&c->again);
    return &c->again;
}

/* The authority an absolute-form target names, without userinfo. */
static str_t authority_of(const struct http_request *m)
{
    str_t u = str_make(m->head.data, m->url_len);
    if (u.len == 0 || u.p[0] == '/' || u.p[0] == '*')
        return STR_NULL;
    const char *sep = memmem(u.p, u.len, "://", 3);
    if (sep == NULL)
        return STR_NULL;
    size_t start = (size_t)(sep - u.p) + 3, i = start;
    while (i < u.len && u.p[i] != '/' && u.p[i] != '?' && u.p[i] != '#')
        i++;
    str_t a = str_make(u.p + start, i - start);
    const char *at = memchr(a.p, '@', a.len);
    return at ? str_make(at + 1, a.len - (size_t)(at + 1 - a.p)) : a;
}

static int again_head_cb(struct http_parser *p, struct http_request *m)
{
    struct req_ctx *c = p->data;
    const struct http_request *o = c->orig;
    const struct http_forward_req *f = c->f;
    c->again_heads++;
    m->body_mode = HTTP_BODY_DISCARD;

    CHECK(m->method == o->method);
    CHECK(m->version_major == 1 && m->version_minor == 1);
    CHECK(str_eq(m->path, o->path));
    CHECK((m->query.p == NULL) == (o->query.p == NULL) && str_eq(m->query, o->query));

    /* Framing: batchd's parse, nothing else. */
    CHECK(m->n_content_length <= 1 && m->n_transfer_encoding <= 1);
    CHECK(!(m->n_content_length && m->n_transfer_encoding));
    CHECK(f->chunked == o->chunked && m->chunked == f->chunked);
    uint64_t want_len = o->content_length == HTTP_NO_LENGTH ? 0 : o->content_length;
    uint64_t got_len = m->content_length == HTTP_NO_LENGTH ? 0 : m->content_length;
    if (!f->chunked)
        CHECK(got_len == want_len);
    else
        CHECK(m->n_content_length == 0);

    /* The target's authority, else the first non-empty Host (HTTP/1.0 may
     * send several), else the default. */
    str_t host = authority_of(o);
    for (uint32_t i = 0; i < o->n_headers && host.len == 0; i++)
        if (str_eq_ci(http_header_name(o, i), STR_LIT("host")))
            host = http_header_value(o, i);
    if (host.len == 0 && f->default_host)
        host = str_cstr(f->default_host);
    unsigned n_host = 0, n_xff = 0, n_via = 0, n_xfp = 0, n_xfh = 0, n_up = 0, n_conn = 0;
    str_t last_via = STR_NULL;
    for (uint32_t i = 0; i < m->n_headers; i++) {
        str_t n = http_header_name(m, i), v = http_header_value(m, i);
        if (str_eq_ci(n, STR_LIT("host"))) {
            n_host++;
            CHECK(str_eq(v, host));
        } else if (str_eq_ci(n, STR_LIT("x-forwarded-for"))) {
            n_xff++;
            str_t peer = str_cstr(f->peer ? f->peer : "unknown");
            CHECK(v.len >= peer.len && memcmp(v.p + v.len - peer.len, peer.p, peer.len) == 0);
            if (!f->peer_trusted)
                CHECK(v.len == peer.len);
        } else if (str_eq_ci(n, STR_LIT("via"))) {
            n_via++;
            last_via = v;
        } else if (str_eq_ci(n, STR_LIT("x-forwarded-proto"))) {
            n_xfp++;
            if (!f->peer_trusted)
                CHECK(str_eq(v, str_cstr(f->proto)));
        } else if (str_eq_ci(n, STR_LIT("x-forwarded-host"))) {
            n_xfh++;
            if (!f->peer_trusted)
                CHECK(str_eq(v, host));
        } else if (str_eq_ci(n, STR_LIT("forwarded"))) {
            CHECK(f->peer_trusted);
        } else if (str_eq_ci(n, STR_LIT("transfer-encoding"))) {
            CHECK(str_eq(v, STR_LIT("chunked")));
        } else if (f->upgrade.len && str_eq_ci(n, STR_LIT("upgrade"))) {
            n_up++;
            CHECK(str_eq(v, f->upgrade));
        } else if (f->upgrade.len && str_eq_ci(n, STR_LIT("connection"))) {
            n_conn++;
            CHECK(str_eq(v, STR_LIT("Upgrade")));
        } else if (!str_eq_ci(n, STR_LIT("content-length"))) {
            CHECK(!name_in(n, hop_by_hop, COUNT(hop_by_hop)));
            CHECK(!str_eq_ci(n, STR_LIT("expect")));
            check_not_named(o, o->n_headers, req_name, req_value, n);
            CHECK(f->strip_header == NULL || !str_eq_ci(n, str_cstr(f->strip_header)));
            CHECK(f->pass_underscores || memchr(n.p, '_', n.len) == NULL);
        }
    }
    CHECK(n_host == 1 && n_xff == 1 && n_xfp == 1 && n_xfh == 1);
    str_t again_offer = STR_NULL;
    enum http_upgrade up = http_request_upgrade(m, &again_offer);
    if (f->upgrade.len) {
        CHECK(n_up == 1 && n_conn == 1);
        CHECK(up == HTTP_UPGRADE_OK && str_eq(again_offer, f->upgrade));
    } else {
        CHECK(up == HTTP_UPGRADE_NONE);
    }
    /* Via may be sent as several fields; batchd's entry ends the list. */
    CHECK(n_via >= 1 && ends_with(last_via, o->version_minor == 0 ? "1.0 batchd" : "1.1 batchd"));
    if (f->peer_trusted)
        CHECK(f->dropped_forwarded == 0);
    if (f->pass_underscores)
        CHECK(f->dropped_underscore == 0);
    unsigned underscored = 0;
    for (uint32_t i = 0; i < o->n_headers; i++)
        underscored += memchr(http_header_name(o, i).p, '_', http_header_name(o, i).len) != NULL;
    CHECK(f->dropped_underscore <= underscored);
    return 0;
}

static int again_body_cb(struct http_parser *p, struct http_request *m, const char *at, size_t n)
{
    CHECK(false); /* only a head was given, and the body is discarded */
    return 0;
}

static int again_complete_cb(struct http_parser *p, struct http_request *m)
{
    struct req_ctx *c = p->data;
    c->again_done++;
    /* Complete on the head alone: only when no body follows. */
    CHECK(!m->chunked && (m->content_length == HTTP_NO_LENGTH || m->content_length == 0));
    return 0;
}

static const struct http_parser_cbs again_cbs = {
    .begin_cb = again_begin_cb,
    .head_cb = again_head_cb,
    .body_cb = again_body_cb,
    .complete_cb = again_complete_cb,
};

static struct http_request *req_begin_cb(struct http_parser *p)
{
    struct req_ctx *c = p->data;
    struct http_request *m = &c->msgs[c->n_begun++ % 2];
    http_request_reset(m);
    return m;
}

static int req_head_cb(struct http_parser *p, struct http_request *m)
{
    struct req_ctx *c = p->data;
    uint8_t o = c->opts;
    struct http_forward_req f = {
        .peer = (o & 0x80) ? "192.0.2.1" : NULL,
        .peer_trusted = o & 0x02,
        .pass_underscores = o & 0x04,
        /* Never NULL, as in the daemon: with no Host at all the forwarder
         * would append host.p == NULL (memcpy from NULL, undefined). */
        .default_host = (o & 0x08) ? "app.internal:8000" : "",
        .proto = "http",
        .strip_header = strip_choices[(o >> 4) & 3],
    };
    str_t offer = STR_NULL; /* as the daemon does with websocket = yes */
    if (http_request_upgrade(m, &offer) == HTTP_UPGRADE_OK)
        f.upgrade = offer;
    start_head(&c->out);
    http_forward_request(m, &f, &c->out);
    size_t len;
    char *head = forwarded_head(&c->out, &len);
    c->orig = m;
    c->f = &f;
    c->again_heads = c->again_begun = c->again_done = 0;
    struct http_parser again;
    http_parser_init(&again, &again_cbs, &reparse_limits, c);
    size_t used = http_parser_execute(&again, head, len);
    if (again.failed || used != len || c->again_heads != 1 || c->again_begun != 1) {
        reparse_failed(head, len, used, again.failed, http_error_code(again.error),
                       c->again_heads);
        fprintf(stderr, " begun=%u\n", c->again_begun);
        abort();
    }
    CHECK(c->again_done <= 1);
    free(head);
    m->body_mode = (o & 0x40) ? HTTP_BODY_STREAM : HTTP_BODY_BUFFER;
    return 0;
}

static int req_body_cb(struct http_parser *p, struct http_request *m, const char *at, size_t n)
{
    return 0;
}

static int req_complete_cb(struct http_parser *p, struct http_request *m)
{
    return 0;
}

static const struct http_parser_cbs req_cbs = {
    .begin_cb = req_begin_cb,
    .head_cb = req_head_cb,
    .body_cb = req_body_cb,
    .complete_cb = req_complete_cb,
};

static void fuzz_request(uint8_t opts, const char *in, size_t n)
{
    struct req_ctx *c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    c->opts = opts;
    http_request_init(&c->msgs[0]);
    http_request_init(&c->msgs[1]);
    http_request_init(&c->again);
    struct http_parser p;
    http_parser_init(&p, &req_cbs, &client_limits, c);
    CHECK(http_parser_execute(&p, in, n) <= n);
    http_request_deinit(&c->msgs[0]);
    http_request_deinit(&c->msgs[1]);
    http_request_deinit(&c->again);
    buf_deinit(&c->out);
    free(c);
}

/* --- answers ------------------------------------------------------------------------------- */

struct resp_ctx {
    uint8_t opts;
    bool completed;
    struct buf out;
    const struct http_response *orig;
    const struct http_forward_resp *f;
    unsigned again_heads;
};

static int again_rhead_cb(struct http_rparser *p, struct http_response *r)
{
    struct resp_ctx *c = p->data;
    const struct http_response *o = c->orig;
    const struct http_forward_resp *f = c->f;
    c->again_heads++;
    CHECK(r->status == o->status && r->version_minor == 1);
    /* llhttp 8 takes "HTTP/1.1 20 x"; the response parser must not, or the
     * answer would go out with no Content-Length (sent from 200 up only). */
    CHECK(o->status >= 100);
    CHECK(r->reason_len == o->reason_len &&
          (o->reason_len == 0 || memcmp(r->head.data, o->head.data, o->reason_len) == 0));
    CHECK(f->body_allowed == !(f->head_request || http_status_bodyless(o->status)));
    CHECK(!(f->chunked && f->close_delimited));
    CHECK(!f->chunked || (f->body_allowed && !f->client_http10));
    CHECK(r->chunked == f->chunked);
    bool has_length = o->content_length != HTTP_NO_LENGTH && !o->chunked;
    if (f->body_allowed && has_length)
        CHECK(r->content_length == o->content_length && !f->close_delimited);
    if (f->body_allowed && !has_length)
        CHECK(f->chunked || f->close_delimited);
    if (f->close_delimited || f->chunked)
        CHECK(r->content_length == HTTP_NO_LENGTH);
    if (!f->body_allowed)
        CHECK(r->content_length == HTTP_NO_LENGTH || r->content_length == o->content_length);

    unsigned n_cl = 0, n_te = 0, n_via = 0, n_conn = 0;
    str_t last_via = STR_NULL;
    bool says_close = false;
    for (uint32_t i = 0; i < r->n_headers; i++) {
        str_t n = http_header_name(r, i), v = http_header_value(r, i);
        if (str_eq_ci(n, STR_LIT("content-length"))) {
            n_cl++;
        } else if (str_eq_ci(n, STR_LIT("transfer-encoding"))) {
            n_te++;
            CHECK(str_eq(v, STR_LIT("chunked")));
        } else if (str_eq_ci(n, STR_LIT("via"))) {
            n_via++;
            last_via = v;
        } else if (str_eq_ci(n, STR_LIT("connection"))) {
            n_conn++;
            says_close = str_eq(v, STR_LIT("close"));
            CHECK(says_close || str_eq(v, STR_LIT("keep-alive")));
        } else {
            CHECK(!name_in(n, hop_by_hop, COUNT(hop_by_hop)));
            check_not_named(o, o->n_headers, resp_name, resp_value, n);
        }
    }
    CHECK(n_cl <= 1 && n_te <= 1 && !(n_cl && n_te) && n_conn <= 1);
    CHECK(n_via >= 1 && ends_with(last_via, "1.1 batchd"));
    if (f->close || f->close_delimited)
        CHECK(says_close);
    return 0;
}

static int again_rbody_cb(struct http_rparser *p, const char *at, size_t n)
{
    CHECK(false); /* only a head was given */
    return 0;
}

static int again_rcomplete_cb(struct http_rparser *p, struct http_response *r)
{
    /* Complete on the head alone: only when no body follows. */
    struct resp_ctx *c = p->data;
    CHECK(!c->f->body_allowed || r->content_length == 0);
    return 0;
}

static const struct http_rparser_cbs again_rcbs = {
    .head_cb = again_rhead_cb,
    .body_cb = again_rbody_cb,
    .complete_cb = again_rcomplete_cb,
};

static int resp_head_cb(struct http_rparser *p, struct http_response *r)
{
    struct resp_ctx *c = p->data;
    uint8_t o = c->opts;
    struct http_forward_resp f = {
        .head_request = o & 0x02,
        .client_http10 = o & 0x04,
        .close = o & 0x08,
    };
    start_head(&c->out);
    http_forward_response(r, &f, &c->out);
    size_t len;
    char *head = forwarded_head(&c->out, &len);
    c->orig = r;
    c->f = &f;
    c->again_heads = 0;
    struct http_rparser again;
    http_rparser_init(&again, &again_rcbs, 1 << 20, c);
    http_rparser_reset(&again, f.head_request);
    size_t used = http_rparser_execute(&again, head, len);
    if (again.failed || used != len || c->again_heads != 1) {
        reparse_failed(head, len, used, again.failed, again.error ? again.error : "-",
                       c->again_heads);
        fprintf(stderr, "\n");
        abort();
    }
    http_rparser_deinit(&again);
    free(head);
    return 0;
}

static int resp_body_cb(struct http_rparser *p, const char *at, size_t n)
{
    return 0;
}

static int resp_complete_cb(struct http_rparser *p, struct http_response *r)
{
    struct resp_ctx *c = p->data;
    c->completed = true;
    return HTTP_PARSER_PAUSE;
}

static const struct http_rparser_cbs resp_cbs = {
    .head_cb = resp_head_cb,
    .body_cb = resp_body_cb,
    .complete_cb = resp_complete_cb,
};

static void fuzz_response(uint8_t opts, const char *in, size_t n)
{
    struct resp_ctx *c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    c->opts = opts;
    struct http_rparser p;
    http_rparser_init(&p, &resp_cbs, 8192, c);
    http_rparser_reset(&p, opts & 0x02);
    size_t off = 0;
    /* Answers on one connection: reset after each, as the proxy does. */
    for (unsigned k = 0; k < 8 && !p.failed; k++) {
        size_t used = http_rparser_execute(&p, in + off, n - off);
        CHECK(used <= n - off);
        off += used;
        if (!c->completed)
            break;
        c->completed = false;
        http_rparser_reset(&p, opts & 0x02);
        if (off == n)
            break;
    }
    http_rparser_finish(&p);
    http_rparser_deinit(&p);
    buf_deinit(&c->out);
    free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* A heap copy of exactly the bytes, so reads past the end are caught. */
    size_t n = size - 1;
    char *in = fuzz_copy(data + 1, n);
    if (data[0] & 1)
        fuzz_response(data[0], in, n);
    else
        fuzz_request(data[0], in, n);
    free(in);
    return 0;
}
