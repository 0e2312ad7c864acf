/*
 * fuzz_http_response: libFuzzer harness for the upstream response parser
 * (proto/http_response.c), driven the way daemon/proxy/pool.c drives it.
 *
 *   input: [opts][cut1][cut2][cut3] bytes from the app server...
 *
 *   opts bit k (k < 5)  response k answers a HEAD request
 *   opts bit 5          head_cb pauses (resumed by the driver)
 *   opts bit 6          body_cb pauses on every other piece
 *   opts bit 7          a 256-byte head limit instead of 8 KB
 *
 * complete_cb always pauses and the driver resets the parser for the next
 * response (with that response's HEAD flag), then goes on with the bytes
 * left over, as the proxy would on a connection it kept. At the end the
 * server "closes": http_rparser_finish.
 *
 * The bytes are parsed three ways: one read without pauses; reads split at
 * the three cut points with the pauses opts asks for; and (short inputs)
 * one byte per read with those pauses. Each way must observe the same
 * responses and fail alike (see compare() for the one difference allowed).
 * Within each, every callback checks the contract:
 *   - consumed <= offered, and all of it unless paused or failed;
 *   - 1xx answers never reach head_cb;
 *   - head fields: names are tokens, values hold no CR/LF and no trailing
 *     blank, offsets stay inside the head buffer, at most one Content-Length,
 *     never Content-Length with chunked;
 *   - body bytes never exceed a declared Content-Length, and equal it when
 *     the response completes;
 *   - a response with no body by definition (1xx, 204, 304, an answer to
 *     HEAD) delivers no body bytes, whatever its Content-Length says;
 *   - a close-delimited body never leaves the connection kept alive.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http_response.h"
#include "tests/fuzz/fuzz.h"

#define N_HEAD_FLAGS 5

struct opts {
    uint8_t head_mask;  /* bit k: response k answers a HEAD */
    bool pause_head;
    bool pause_body;
    size_t max_head;
};

enum phase {
    PH_BETWEEN,         /* no response head seen since the last completion */
    PH_BODY,            /* head_cb ran, complete_cb not yet */
};

struct run {
    struct opts o;
    enum phase phase;
    unsigned n_heads, n_done, n_body_calls;
    bool just_completed;    /* complete_cb paused: reset before going on */
    bool head_request;      /* the response being read answers a HEAD */
    bool bodyless;          /* ... or has no body by its status */
    uint64_t content_length;
    uint64_t body_len;
    uint32_t n_head_fields; /* headers when head_cb ran (trailers follow) */
    struct buf head_snap;   /* the head buffer when head_cb ran */
    struct buf log;         /* everything observed, compared across runs */
};

static bool is_bodyless_status(int status)
{
    return (status >= 100 && status < 200) || status == 204 || status == 304;
}

static bool head_flag(const struct run *r, unsigned k)
{
    return k < N_HEAD_FLAGS && (r->o.head_mask >> k & 1);
}

/* A run of decimal digits (leading zeros allowed, as llhttp allows them),
 * or HTTP_NO_LENGTH when v is not one or overflows. */
static uint64_t decimal_value(str_t v)
{
    uint64_t x = 0;
    if (v.len == 0)
        return HTTP_NO_LENGTH;
    for (size_t i = 0; i < v.len; i++) {
        unsigned d = (unsigned)(v.p[i] - '0');
        if (v.p[i] < '0' || v.p[i] > '9' || x > (UINT64_MAX - d) / 10)
            return HTTP_NO_LENGTH;
        x = x * 10 + d;
    }
    return x;
}

/* The fields of the head are headers[0 .. n_head); after them come the
 * trailer fields of a chunked body, which the parser appends as it reads
 * them. Both are checked for shape; framing only from the head's. */
static void check_fields(const struct http_response *resp, uint32_t n_head)
{
    CHECK(resp->reason_len <= resp->head.len);
    CHECK(n_head <= resp->n_headers && resp->n_headers <= resp->cap_headers);
    unsigned n_cl = 0;
    for (uint32_t i = 0; i < resp->n_headers; i++) {
        const struct http_header *h = &resp->headers[i];
        CHECK((size_t)h->name_off + h->name_len <= resp->head.len);
        CHECK((size_t)h->value_off + h->value_len <= resp->head.len);
        CHECK(h->name_off >= resp->reason_len);
        str_t k = http_header_name(resp, i), v = http_header_value(resp, i);
        CHECK(http_token_valid(k.p, k.len));
        CHECK(memchr(v.p, '\r', v.len) == NULL && memchr(v.p, '\n', v.len) == NULL);
        CHECK(v.len == 0 || (v.p[v.len - 1] != ' ' && v.p[v.len - 1] != '\t'));
        if (i < n_head && str_eq_ci(k, STR_LIT("content-length"))) {
            n_cl++;
            /* llhttp reads the value it saw; the stored one must agree. */
            CHECK(decimal_value(v) == resp->content_length);
        }
    }
    CHECK(n_cl <= 1);
    CHECK(!(resp->chunked && resp->content_length != HTTP_NO_LENGTH));
    /* "Content-Length: 18446744073709551615" must not be stored as
     * HTTP_NO_LENGTH (no length) while llhttp reads that many bytes. */
    CHECK(n_cl == 0 || resp->chunked || resp->content_length != HTTP_NO_LENGTH);
}

static int head_cb(struct http_rparser *p, struct http_response *resp)
{
    struct run *r = p->data;
    CHECK(r->phase == PH_BETWEEN);
    CHECK(!(resp->status >= 100 && resp->status < 200)); /* interim: skipped */
    CHECK(resp->status >= 0 && resp->status <= 999);
    /* llhttp 8 takes 1 to 3 digits ("HTTP/1.1 2 OK" is status 2); RFC 9112
     * says 3, and below 100 there is no class. */
    CHECK(resp->status >= 100);
    CHECK(p->head_request == head_flag(r, r->n_done));
    check_fields(resp, resp->n_headers);
    r->phase = PH_BODY;
    r->n_heads++;
    r->head_request = p->head_request;
    r->bodyless = p->head_request || is_bodyless_status(resp->status);
    r->content_length = resp->content_length;
    r->body_len = 0;
    r->n_body_calls = 0;
    r->n_head_fields = resp->n_headers;
    buf_reset(&r->head_snap);
    buf_append(&r->head_snap, resp->head.data ? resp->head.data : "", resp->head.len);

    struct buf *log = &r->log;
    buf_appendf(log, "#%u %d [", r->n_done, resp->status);
    fuzz_log_bytes(log, resp->head.data, resp->reason_len);
    buf_appendf(log, "] 1.%u head=%d ch=%d cl=%lld\n", resp->version_minor, r->head_request,
                resp->chunked,
                resp->content_length == HTTP_NO_LENGTH ? -1LL : (long long)resp->content_length);
    for (uint32_t i = 0; i < resp->n_headers; i++)
        fuzz_log_field(log, http_header_name(resp, i), http_header_value(resp, i));
    buf_append_str(log, "body: ");
    return r->o.pause_head ? HTTP_PARSER_PAUSE : 0;
}

static int body_cb(struct http_rparser *p, const char *at, size_t n)
{
    struct run *r = p->data;
    CHECK(n > 0);
    /* Not outside a response: a 1xx is bodiless even with a Content-Length. */
    CHECK(r->phase == PH_BODY);
    CHECK(!r->head_request); /* an answer to HEAD never has a body */
    CHECK(!r->bodyless);
    r->body_len += n;
    if (r->content_length != HTTP_NO_LENGTH)
        CHECK(r->body_len <= r->content_length);
    r->n_body_calls++;
    fuzz_log_bytes(&r->log, at, n);
    return (r->o.pause_body && r->n_body_calls % 2 == 1) ? HTTP_PARSER_PAUSE : 0;
}

static int complete_cb(struct http_rparser *p, struct http_response *resp)
{
    struct run *r = p->data;
    CHECK(r->phase == PH_BODY);
    CHECK(!r->just_completed);
    /* The head as head_cb saw it is still there: trailers only add. */
    CHECK(resp->n_headers >= r->n_head_fields && resp->head.len >= r->head_snap.len);
    CHECK(r->head_snap.len == 0 ||
          memcmp(resp->head.data, r->head_snap.data, r->head_snap.len) == 0);
    check_fields(resp, r->n_head_fields);
    if (r->content_length != HTTP_NO_LENGTH && !r->bodyless)
        CHECK(r->body_len == r->content_length);
    if (r->bodyless)
        CHECK(r->body_len == 0);
    bool close_delimited = !r->bodyless && !resp->chunked && r->content_length == HTTP_NO_LENGTH;
    if (close_delimited)
        CHECK(!resp->keep_alive);

    buf_appendf(&r->log, "\nbody(%llu) ka=%d\n", (unsigned long long)r->body_len,
                resp->keep_alive);
    for (uint32_t i = r->n_head_fields; i < resp->n_headers; i++) {
        buf_append_str(&r->log, "trailer ");
        fuzz_log_field(&r->log, http_header_name(resp, i), http_header_value(resp, i));
    }
    r->phase = PH_BETWEEN;
    r->n_done++;
    r->just_completed = true;
    return HTTP_PARSER_PAUSE; /* as the proxy does: it resets before the next one */
}

static const struct http_rparser_cbs cbs = {
    .head_cb = head_cb,
    .body_cb = body_cb,
    .complete_cb = complete_cb,
};

/* Feeds one read: resumes after a pause in head_cb or body_cb, resets after
 * a completed response, and goes on with what is left of the read. After a
 * resume at the read's last byte, execute runs once more on no bytes: a
 * response paused in head_cb with no body completes only then. Says
 * whether the parser is still good for the next read. */
static bool feed(void *parser, const char *in, size_t n)
{
    struct http_rparser *p = parser;
    struct run *r = p->data;
    size_t off = 0, spins = 0;
    for (;;) {
        size_t used = http_rparser_execute(p, in + off, n - off);
        if (!fuzz_paused(used, p->failed, p->paused, n, &off, &spins))
            break;
        if (r->just_completed) {
            r->just_completed = false;
            http_rparser_reset(p, head_flag(r, r->n_done));
            CHECK(!p->paused && !p->failed);
            if (off == n)
                break;
        } else {
            http_rparser_resume(p);
            CHECK(!p->paused);
        }
    }
    return !p->failed;
}

struct result {
    char *log;              /* the responses observed and their count */
    bool failed;
    const char *error;      /* static strings: llhttp's or the parser's */
};

/* Parses data in reads ending at cuts[0..n_cuts) and then size (free the
 * log). */
static struct result parse(const struct opts *o, const uint8_t *data, size_t size,
                           const size_t *cuts, size_t n_cuts)
{
    struct run *r = calloc(1, sizeof(*r));
    CHECK(r != NULL);
    r->o = *o;
    struct http_rparser p;
    http_rparser_init(&p, &cbs, o->max_head, r);
    http_rparser_reset(&p, head_flag(r, 0));
    fuzz_reads(data, size, cuts, n_cuts, feed, &p);
    bool failed_before = p.failed;
    http_rparser_finish(&p);
    if (r->just_completed) { /* finish completed a close-delimited body */
        r->just_completed = false;
        CHECK(!failed_before && !p.failed);
    }
    /* Whatever ended, nothing is still being read. */
    if (!p.failed)
        CHECK(r->phase == PH_BETWEEN);
    CHECK(p.failed == (p.error != NULL));
    CHECK(r->n_done == r->n_heads - (r->phase == PH_BODY));
    if (p.failed)
        CHECK(http_rparser_execute(&p, "HTTP/1.1 200 OK\r\n", 17) == 0);
    buf_appendf(&r->log, "\nheads=%u done=%u failed=%d", r->n_heads, r->n_done, p.failed);
    struct result out = { r->log.data, p.failed, p.error };
    http_rparser_deinit(&p);
    buf_deinit(&r->head_snap);
    free(r);
    return out;
}

static bool is_head_limit(const char *error)
{
    return error != NULL && strcmp(error, "response head too large") == 0;
}

/* The same responses, and the same failure. Like fuzz_http, one difference
 * is allowed: which error rejected a response that both rejected, when one
 * of them is the head limit. The limit is checked as llhttp hands over a
 * span, and it hands over the partial span at the end of every read, while
 * syntax is checked byte by byte: a head both too long and malformed
 * further on fails either way, by either rule, depending on the reads. */
static void compare(const char *what, struct result whole, struct result other,
                    const uint8_t *data, size_t size)
{
    bool same_error = (whole.error == NULL && other.error == NULL) ||
                      (whole.error && other.error && strcmp(whole.error, other.error) == 0) ||
                      (whole.failed && other.failed &&
                       (is_head_limit(whole.error) || is_head_limit(other.error)));
    if (strcmp(whole.log, other.log) == 0 && same_error)
        return;
    fprintf(stderr, "fuzz_http_response: %s differs from one read\n--- one read (error %s):\n%s\n"
            "--- %s (error %s):\n%s\n", what, whole.error ? whole.error : "-", whole.log, what,
            other.error ? other.error : "-", other.log);
    fuzz_dump("input", data, size);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    struct opts o = {
        .head_mask = data[0] & 0x1f,
        .pause_head = data[0] & 0x20,
        .pause_body = data[0] & 0x40,
        .max_head = (data[0] & 0x80) ? 256 : 8192,
    };
    size_t cuts[3];
    const uint8_t *in = data + 4;
    size_t n = size - 4;
    for (int i = 0; i < 3; i++)
        cuts[i] = (size_t)data[1 + i] * n / 255;
    /* In order, as reads arrive. */
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (cuts[j] < cuts[i]) {
                size_t t = cuts[i];
                cuts[i] = cuts[j];
                cuts[j] = t;
            }

    struct opts plain = o;
    plain.pause_head = plain.pause_body = false;
    struct result whole = parse(&plain, in, n, NULL, 0);
    struct result split = parse(&o, in, n, cuts, 3);
    compare("split reads with pauses", whole, split, data, size);
    free(split.log);
    if (n <= 256) {
        size_t every[256];
        for (size_t i = 0; i < n; i++)
            every[i] = i + 1;
        struct result bytewise = parse(&o, in, n, every, n);
        compare("one byte per read", whole, bytewise, data, size);
        free(bytewise.log);
    }
    free(whole.log);
    return 0;
}
