/*
 * http_resp: see http_resp.h.
 *
 * Head lines are collected (prefix only) up to LF; a CR before the LF is
 * dropped. The body is handed to on_body_cb in the pieces it arrived in,
 * chunk framing removed.
 */
#include "http_resp.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "proto/url.h"

void http_resp_init(struct http_resp *r)
{
    memset(r, 0, sizeof(*r));
    r->state = HTTP_RESP_STATUS_LINE;
}

static bool has_prefix_ci(const char *s, size_t n, const char *lit, size_t *after)
{
    size_t l = strlen(lit);

    if (n < l || strncasecmp(s, lit, l) != 0)
        return false;
    *after = l;
    return true;
}

/* Value of a header line after "name:", trimmed of leading blanks. */
static const char *header_value(const char *s, size_t n, size_t off, size_t *len)
{
    while (off < n && (s[off] == ' ' || s[off] == '\t'))
        off++;
    *len = n - off;
    return s + off;
}

static bool contains_ci(const char *s, size_t n, const char *word)
{
    size_t l = strlen(word);

    for (size_t i = 0; i + l <= n; i++)
        if (strncasecmp(s + i, word, l) == 0)
            return true;
    return false;
}

static int status_line(struct http_resp *r, const char *s, size_t n)
{
    unsigned status = 0;

    if (n < 12 || memcmp(s, "HTTP/1.", 7) != 0 || s[8] != ' ')
        return -EPROTO;
    for (size_t i = 9; i < 12; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EPROTO;
        status = status * 10 + (unsigned)(s[i] - '0');
    }
    if (n > 12 && s[12] != ' ')
        return -EPROTO;
    r->status = (uint16_t)status;
    if (s[7] == '0')
        r->flags |= HTTP_RESP_CONN_CLOSE;
    r->state = HTTP_RESP_HEADER_LINE;
    return 0;
}

static int header_line(struct http_resp *r, const char *s, size_t n)
{
    size_t off, vlen;
    const char *v;

    if (has_prefix_ci(s, n, "content-length:", &off)) {
        uint64_t len = 0;
        v = header_value(s, n, off, &vlen);
        if (vlen == 0 || vlen > 18)
            return -EPROTO;
        for (size_t i = 0; i < vlen; i++) {
            if (v[i] < '0' || v[i] > '9')
                return -EPROTO;
            len = len * 10 + (uint64_t)(v[i] - '0');
        }
        r->remaining = len;
        r->flags |= HTTP_RESP_HAS_LENGTH;
    } else if (has_prefix_ci(s, n, "transfer-encoding:", &off)) {
        v = header_value(s, n, off, &vlen);
        if (contains_ci(v, vlen, "chunked"))
            r->flags |= HTTP_RESP_CHUNKED;
    } else if (has_prefix_ci(s, n, "content-type:", &off)) {
        v = header_value(s, n, off, &vlen);
        if (vlen >= 17 && strncasecmp(v, "text/event-stream", 17) == 0)
            r->flags |= HTTP_RESP_EVENT_STREAM;
    } else if (has_prefix_ci(s, n, "connection:", &off)) {
        v = header_value(s, n, off, &vlen);
        if (contains_ci(v, vlen, "close"))
            r->flags |= HTTP_RESP_CONN_CLOSE;
    }
    return 0;
}

/* The blank line after the headers: choose how the body is framed. */
static int end_of_head(struct http_resp *r, const struct http_resp_cbs *cbs, void *ctx)
{
    if (r->status >= 100 && r->status < 200) {
        r->state = HTTP_RESP_STATUS_LINE;
        r->flags = 0;
        r->remaining = 0;
        return 0;
    }
    if (r->status == 204 || r->status == 304)
        r->state = HTTP_RESP_DONE;
    else if (r->flags & HTTP_RESP_CHUNKED)
        r->state = HTTP_RESP_CHUNK_SIZE;
    else if (r->flags & HTTP_RESP_HAS_LENGTH)
        r->state = r->remaining ? HTTP_RESP_BODY_LENGTH : HTTP_RESP_DONE;
    else
        r->state = HTTP_RESP_BODY_UNTIL_CLOSE;
    if (cbs->on_head_cb(ctx, r) != 0)
        return 1;
    if (r->state == HTTP_RESP_DONE)
        return cbs->on_done_cb(ctx, r) != 0 ? 1 : 0;
    return 0;
}

/* A complete head or trailer line in r->line. Returns <0 error, 1 stop. */
static int line_done(struct http_resp *r, const struct http_resp_cbs *cbs, void *ctx)
{
    size_t n = r->kept;

    /* A CR is the line's last byte only when the whole line was kept. */
    if (n > 0 && r->line[n - 1] == '\r' && !(r->flags & HTTP_RESP_CUT))
        n--;
    r->kept = 0;
    r->flags &= (uint8_t)~HTTP_RESP_CUT;
    switch (r->state) {
    case HTTP_RESP_STATUS_LINE:
        return status_line(r, r->line, n);
    case HTTP_RESP_HEADER_LINE:
        if (n == 0)
            return end_of_head(r, cbs, ctx);
        return header_line(r, r->line, n);
    case HTTP_RESP_TRAILER_LINE:
        if (n == 0) {
            r->state = HTTP_RESP_DONE;
            return cbs->on_done_cb(ctx, r) != 0 ? 1 : 0;
        }
        return 0;
    default:
        return -EPROTO;
    }
}

ssize_t http_resp_execute(struct http_resp *r, const struct http_resp_cbs *cbs,
                          void *ctx, const char *p, size_t n)
{
    const char *s = p, *end = p + n;
    int rc;

    while (s < end) {
        switch (r->state) {
        case HTTP_RESP_STATUS_LINE:
        case HTTP_RESP_HEADER_LINE:
        case HTTP_RESP_TRAILER_LINE: {
            const char *lf = memchr(s, '\n', (size_t)(end - s));
            const char *stop = lf ? lf : end;
            size_t take = (size_t)(stop - s);
            size_t room = HTTP_RESP_LINE_KEEP - r->kept;

            if ((size_t)r->head_bytes + take + 1 > HTTP_RESP_MAX_HEAD)
                return -E2BIG;
            r->head_bytes = (uint16_t)(r->head_bytes + take + (lf ? 1 : 0));
            if (take > room) {
                r->flags |= HTTP_RESP_CUT;
                take = room;
            }
            memcpy(r->line + r->kept, s, take);
            r->kept = (uint8_t)(r->kept + take);
            s = stop;
            if (lf == NULL)
                break;
            s++;
            rc = line_done(r, cbs, ctx);
            if (rc < 0)
                return rc;
            if (rc > 0 || r->state == HTTP_RESP_DONE)
                return s - p;
            break;
        }
        case HTTP_RESP_BODY_UNTIL_CLOSE:
            if (cbs->on_body_cb(ctx, s, (size_t)(end - s)) != 0)
                return n;
            s = end;
            break;
        case HTTP_RESP_BODY_LENGTH:
        case HTTP_RESP_CHUNK_DATA: {
            size_t take = (size_t)(end - s);
            if (take > r->remaining)
                take = (size_t)r->remaining;
            r->remaining -= take;
            s += take;
            if (r->remaining == 0)
                r->state = r->state == HTTP_RESP_CHUNK_DATA ? HTTP_RESP_CHUNK_DATA_END
                                                            : HTTP_RESP_DONE;
            if (cbs->on_body_cb(ctx, s - take, take) != 0)
                return s - p;
            if (r->state == HTTP_RESP_DONE) {
                cbs->on_done_cb(ctx, r);
                return s - p;
            }
            break;
        }
        case HTTP_RESP_CHUNK_SIZE: {
            int d = url_hex_digit(*s);
            if (d >= 0) {
                if (r->remaining >> 56)
                    return -EPROTO;
                r->remaining = r->remaining * 16 + (uint64_t)d;
                r->flags |= HTTP_RESP_DIGIT;
                s++;
                break;
            }
            if (!(r->flags & HTTP_RESP_DIGIT))
                return -EPROTO;
            if (*s == ';' || *s == ' ' || *s == '\t' || *s == '\r') {
                r->state = HTTP_RESP_CHUNK_EXT;
                s++;
                break;
            }
            if (*s != '\n')
                return -EPROTO;
            r->state = HTTP_RESP_CHUNK_EXT;  /* which consumes this LF */
            break;
        }
        case HTTP_RESP_CHUNK_EXT:
            if (*s++ != '\n')
                break;
            r->flags &= (uint8_t)~HTTP_RESP_DIGIT;
            if (r->remaining == 0) {
                r->state = HTTP_RESP_TRAILER_LINE;
                r->kept = 0;
            } else {
                r->state = HTTP_RESP_CHUNK_DATA;
            }
            break;
        case HTTP_RESP_CHUNK_DATA_END:
            if (*s == '\r') {
                s++;
                break;
            }
            if (*s != '\n')
                return -EPROTO;
            s++;
            r->state = HTTP_RESP_CHUNK_SIZE;
            r->remaining = 0;
            break;
        case HTTP_RESP_DONE:
            return s - p;
        }
    }
    return n;
}

int http_resp_eof(struct http_resp *r, const struct http_resp_cbs *cbs, void *ctx)
{
    if (r->state != HTTP_RESP_BODY_UNTIL_CLOSE)
        return -EPIPE;
    r->state = HTTP_RESP_DONE;
    cbs->on_done_cb(ctx, r);
    return 0;
}
