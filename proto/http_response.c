/* http_response: upstream response parsing over llhttp. See http_response.h. */
#include "proto/http_response.h"

#include <stdlib.h>
#include <string.h>

#include "proto/mem.h"

void http_response_init(struct http_response *r)
{
    memset(r, 0, sizeof(*r));
    r->content_length = HTTP_NO_LENGTH;
}

void http_response_deinit(struct http_response *r)
{
    buf_deinit(&r->head);
    free(r->headers);
    memset(r, 0, sizeof(*r));
}

static void response_reset(struct http_response *r)
{
    struct buf head = r->head;
    struct http_header *h = r->headers;
    uint32_t cap = r->cap_headers;
    memset(r, 0, sizeof(*r));
    r->head = head;
    r->headers = h;
    r->cap_headers = cap;
    buf_reset(&r->head);
    r->content_length = HTTP_NO_LENGTH;
}

bool http_response_header(const struct http_response *r, const char *name, str_t *value)
{
    str_t want = str_cstr(name);
    for (uint32_t i = 0; i < r->n_headers; i++) {
        if (str_eq_ci(http_header_name(r, i), want)) {
            *value = http_header_value(r, i);
            return true;
        }
    }
    return false;
}

static inline struct http_rparser *parser_of(llhttp_t *ll)
{
    return (struct http_rparser *)ll->data;
}

static int fail(struct http_rparser *p, const char *why)
{
    p->error = why;
    return HPE_USER;
}

static int count(struct http_rparser *p, size_t n)
{
    p->head_bytes += n;
    return p->head_bytes > p->max_head_bytes ? fail(p, "response head too large") : 0;
}

static int on_message_begin(llhttp_t *ll)
{
    struct http_rparser *p = parser_of(ll);
    response_reset(&p->resp);
    p->head_bytes = 0;
    p->in_field = false;
    p->in_value = false;
    return 0;
}

static int on_status(llhttp_t *ll, const char *at, size_t n)
{
    struct http_rparser *p = parser_of(ll);
    if (count(p, n))
        return HPE_USER;
    buf_append(&p->resp.head, at, n);
    p->resp.reason_len += (uint32_t)n;
    return 0;
}

static int on_header_field(llhttp_t *ll, const char *at, size_t n)
{
    struct http_rparser *p = parser_of(ll);
    struct http_response *r = &p->resp;
    /* The ": " and CRLF count once per field, not once per piece of a name
     * split across reads: the limit must not depend on how bytes arrive. */
    if (count(p, n + (p->in_field ? 0 : 4)))
        return HPE_USER;
    if (!p->in_field) {
        if (r->n_headers >= 200)
            return fail(p, "too many response headers");
        if (r->n_headers == r->cap_headers) {
            r->cap_headers = r->cap_headers ? r->cap_headers * 2 : 16;
            r->headers = mem_realloc(r->headers, r->cap_headers * sizeof(*r->headers));
        }
        struct http_header *h = &r->headers[r->n_headers++];
        h->name_off = h->value_off = (uint32_t)r->head.len;
        h->name_len = h->value_len = 0;
        p->in_field = true;
    }
    buf_append(&r->head, at, n);
    r->headers[r->n_headers - 1].name_len += (uint32_t)n;
    return 0;
}

static int on_header_field_complete(llhttp_t *ll)
{
    struct http_rparser *p = parser_of(ll);
    struct http_response *r = &p->resp;
    struct http_header *h = &r->headers[r->n_headers - 1];
    if (!p->in_field || !http_token_valid(r->head.data + h->name_off, h->name_len))
        return fail(p, "bad header name"); /* relayed as is, it would reach the client */
    h->value_off = (uint32_t)r->head.len;
    p->in_field = false;
    p->in_value = false;
    return 0;
}

/* llhttp 8 takes obs-fold (RFC 9112 5.2: a value going on in a line that
 * starts with SP or HTAB) and hands the value over in pieces with the CRLF
 * between them skipped. Pieces of one value that are not contiguous in the
 * input are that: in one read, a gap between them; across reads, a piece
 * that ended before its read did, or one that does not start its read. */
static bool value_piece_folded(const struct http_rparser *p, const char *at)
{
    if (!p->in_value)
        return false;
    if (p->value_exec == p->execs)
        return at != p->value_end;
    return !p->value_at_end || at != p->exec_begin;
}

static int on_header_value(llhttp_t *ll, const char *at, size_t n)
{
    struct http_rparser *p = parser_of(ll);
    struct http_response *r = &p->resp;
    if (count(p, n))
        return HPE_USER;
    if (value_piece_folded(p, at))
        r->folded = true;
    p->in_value = true;
    p->value_end = at + n;
    p->value_at_end = at + n == p->exec_end;
    p->value_exec = p->execs;
    buf_append(&r->head, at, n);
    r->headers[r->n_headers - 1].value_len += (uint32_t)n;
    return 0;
}

static int on_header_value_complete(llhttp_t *ll)
{
    struct http_rparser *p = parser_of(ll);
    struct http_response *r = &p->resp;
    http_header_trim(&r->headers[r->n_headers - 1], r->head.data);
    return 0;
}

/* A 101 is the end of HTTP on this connection: only for a request that
 * asked, to a protocol it offered, and never with a body's framing (RFC
 * 9110 8.6: no Content-Length in a 1xx). Anything else would let the app
 * turn a connection batchd still reads as HTTP into a tunnel. */
static int switching_head(struct http_rparser *p, struct http_response *r)
{
    llhttp_t *ll = &p->ll;
    if (!p->upgrade_asked)
        return fail(p, "101 to a request that did not ask to upgrade");
    if ((ll->flags & (F_CHUNKED | F_CONTENT_LENGTH | F_TRANSFER_ENCODING)) ||
        http_response_header(r, "content-length", &(str_t){ 0 }) ||
        http_response_header(r, "transfer-encoding", &(str_t){ 0 }))
        return fail(p, "101 with a body");
    str_t chosen = STR_NULL;
    unsigned n = 0;
    for (uint32_t i = 0; i < r->n_headers; i++) {
        if (str_eq_ci(http_header_name(r, i), STR_LIT("upgrade"))) {
            chosen = http_header_value(r, i);
            n++;
        }
    }
    str_t offered = str_make(p->upgrade_offer.data, p->upgrade_offer.len);
    if (n != 1 || !http_upgrade_offered(offered, chosen))
        return fail(p, "101 to a protocol not offered");
    p->interim = false;
    r->switching = true;
    ll->flags |= F_SKIPBODY;
    int rc = p->cbs->head_cb(p, r);
    return rc == HTTP_PARSER_PAUSE ? HPE_PAUSED : 0;
}

static int on_headers_complete(llhttp_t *ll)
{
    struct http_rparser *p = parser_of(ll);
    struct http_response *r = &p->resp;
    r->status = ll->status_code;
    r->version_minor = ll->http_minor;
    if (r->status < 100)
        return fail(p, "bad status code"); /* llhttp 8 takes "42"; relayed, a client could not */
    if (r->status == 101)
        return switching_head(p, r);
    if (r->status >= 100 && r->status < 200) {
        p->interim = true; /* 100 Continue and friends: not relayed */
        ll->flags |= F_SKIPBODY;
        return 0;
    }
    p->interim = false;
    r->chunked = (ll->flags & F_CHUNKED) != 0;
    /* "Content-Length: 18446744073709551615" would read as HTTP_NO_LENGTH
     * (no length: chunked or close-delimited) while llhttp reads that many
     * body bytes. */
    if ((ll->flags & F_CONTENT_LENGTH) && ll->content_length == HTTP_NO_LENGTH)
        return fail(p, "content length too large");
    /* batchd relays bodies decoded from chunks only: another transfer
     * coding ("gzip, chunked") would reach the client undeclared. */
    str_t te;
    if (http_response_header(r, "transfer-encoding", &te) && !(r->chunked && str_eq_ci(te, STR_LIT("chunked"))))
        return fail(p, "unsupported transfer coding");
    r->content_length = (ll->flags & F_CONTENT_LENGTH) ? ll->content_length : HTTP_NO_LENGTH;
    /* A HEAD answer, a 204 and a 304 have no body, whatever Content-Length
     * says (RFC 9110 6.4.1; llhttp 8 reads a 304's Content-Length as a body
     * length and would wait for bytes that never come). Set the flag that
     * returning 1 would set, before head_cb may pause: llhttp resumes at
     * after_headers_complete, which reads only the flag, so a paused
     * bodiless answer would otherwise take the next response as its body. */
    if (p->head_request || r->status == 204 || r->status == 304)
        ll->flags |= F_SKIPBODY;
    int rc = p->cbs->head_cb(p, r);
    if (rc == HTTP_PARSER_PAUSE)
        return HPE_PAUSED;
    return 0;
}

static int on_body(llhttp_t *ll, const char *at, size_t n)
{
    struct http_rparser *p = parser_of(ll);
    if (n == 0)
        return 0;
    return p->cbs->body_cb(p, at, n) == HTTP_PARSER_PAUSE ? HPE_PAUSED : 0;
}

static int on_message_complete(llhttp_t *ll)
{
    struct http_rparser *p = parser_of(ll);
    if (p->interim) {
        p->interim = false;
        return 0;
    }
    p->resp.keep_alive = llhttp_should_keep_alive(ll) != 0;
    return p->cbs->complete_cb(p, &p->resp) == HTTP_PARSER_PAUSE ? HPE_PAUSED : 0;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void http_rparser_init(struct http_rparser *p, const struct http_rparser_cbs *cbs,
                       size_t max_head_bytes, void *data)
{
    memset(p, 0, sizeof(*p));
    llhttp_init(&p->ll, HTTP_RESPONSE, &settings);
    p->ll.data = p;
    p->cbs = cbs;
    p->data = data;
    p->max_head_bytes = max_head_bytes;
    http_response_init(&p->resp);
}

void http_rparser_deinit(struct http_rparser *p)
{
    buf_deinit(&p->upgrade_offer);
    http_response_deinit(&p->resp);
}

void http_rparser_reset(struct http_rparser *p, bool head_request)
{
    llhttp_reset(&p->ll);
    p->ll.data = p;
    p->head_request = head_request;
    p->paused = p->failed = p->interim = p->upgrade_asked = false;
    p->error = NULL;
}

void http_rparser_expect_upgrade(struct http_rparser *p, str_t protocols)
{
    buf_reset(&p->upgrade_offer);
    buf_append(&p->upgrade_offer, protocols.p, protocols.len);
    p->upgrade_asked = true;
}

size_t http_rparser_execute(struct http_rparser *p, const char *data, size_t len)
{
    llhttp_errno_t e;
    p->execs++;
    p->exec_begin = data;
    p->exec_end = data + len;
    size_t used = http_llhttp_step(&p->ll, &p->paused, &p->failed, data, len, &e);
    if (e != HPE_OK && e != HPE_PAUSED && p->error == NULL)
        p->error = llhttp_errno_name(e);
    return used;
}

void http_rparser_resume(struct http_rparser *p)
{
    http_llhttp_resume(&p->ll, &p->paused);
}

void http_rparser_finish(struct http_rparser *p)
{
    if (p->failed)
        return;
    llhttp_errno_t e = llhttp_finish(&p->ll);
    if (e != HPE_OK && e != HPE_PAUSED) {
        p->failed = true;
        if (p->error == NULL)
            p->error = "connection closed mid-response";
    }
}
