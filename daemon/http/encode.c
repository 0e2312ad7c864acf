/*
 * encode: gzip, ETags and 304s for batchd's own answers. See encode.h.
 *
 * The identity body is either one run of bytes (body_ptr) or gathered
 * iovecs over held documents (parts, see req_gather_*). Deflate reads the
 * pieces in place, one after the other, into the request's second
 * recycled buffer (zbody), which then becomes the body: no copy of the
 * identity answer and, once warm, no allocation. The z_stream (~270 KB
 * with its window and hash tables) is made once per process and reset per
 * answer; deflateInit per answer would allocate and clear that each time.
 */
#include "daemon/http/encode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "daemon/config.h"
#include "daemon/http/req.h"
#include "daemon/metrics.h"
#include "proto/accept.h"
#include "proto/etag.h"

static struct {
    bool gzip, etag;
    int level;
    size_t min_bytes;
} conf = { false, false, 1, 1400 };

static z_stream zs;
static int zs_level; /* 0: not made yet */

enum { SKIP_SMALL, SKIP_NOT_ACCEPTED, SKIP__COUNT };
static const char *const skip_labels[SKIP__COUNT] = { "below_min_bytes", "not_accepted" };
static uint64_t *m_gzip, *m_bytes_in, *m_bytes_out, *m_skipped[SKIP__COUNT], *m_not_modified;

void encode_configure(const struct cfg_batchd *cfg)
{
    conf.gzip = cfg->gzip;
    conf.etag = cfg->etag;
    conf.level = (int)cfg->gzip_level;
    conf.min_bytes = (size_t)cfg->gzip_min_bytes;
}

void encode_metrics_init(void)
{
    m_gzip = metrics_counter("batchd_http_gzip_answers_total", "",
                             "Answers of batchd's own (entity, batch, list) sent gzip-coded.");
    m_bytes_in = metrics_counter("batchd_http_gzip_bytes_in_total", "",
                                 "Bytes of those answers before compression.");
    m_bytes_out = metrics_counter("batchd_http_gzip_bytes_out_total", "",
                                  "Bytes of those answers as sent, compressed (in - out: bandwidth saved).");
    metrics_counter_family("batchd_http_gzip_skipped_total", "reason", skip_labels, SKIP__COUNT,
                           "Answers sent uncoded: below gzip_min_bytes, or gzip not accepted by the client.",
                           m_skipped);
    m_not_modified = metrics_counter("batchd_http_not_modified_total", "",
                                     "304 Not Modified answers to If-None-Match.");
}

bool encode_etag_on(void)
{
    return conf.etag;
}

void encode_deinit(void)
{
    if (zs_level)
        deflateEnd(&zs);
    zs_level = 0;
}

/* The process's z_stream at `level`, ready for a new answer. */
static z_stream *stream_at(int level)
{
    if (zs_level == level) {
        deflateReset(&zs);
        return &zs;
    }
    encode_deinit();
    memset(&zs, 0, sizeof(zs));
    /* windowBits 15 + 16: a gzip wrapper (header with mtime 0, so the
     * output depends on the input and the level only: the -gzN tag holds). */
    if (deflateInit2(&zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        fprintf(stderr, "batchd: out of memory (deflateInit2)\n");
        abort();
    }
    zs_level = level;
    return &zs;
}

static void deflate_piece(z_stream *z, const char *p, size_t n)
{
    z->next_in = (Bytef *)p;
    z->avail_in = (uInt)n;
    int rc = deflate(z, Z_NO_FLUSH);
    /* avail_out is deflateBound of the whole answer: it never runs out. */
    if (rc != Z_OK || z->avail_in != 0) {
        fprintf(stderr, "batchd: deflate failed (%d)\n", rc);
        abort();
    }
}

/* Replaces r's identity body by its gzip coding. */
static void deflate_answer(struct req *r)
{
    z_stream *z = stream_at(conf.level);
    size_t cap = deflateBound(z, (uLong)r->body_len);
    buf_reset(&r->zbody);
    buf_reserve(&r->zbody, cap);
    z->next_out = (Bytef *)r->zbody.data;
    z->avail_out = (uInt)cap;
    if (r->n_parts) {
        for (unsigned i = 0; i < r->n_parts; i++)
            deflate_piece(z, r->parts[i].base, r->parts[i].len);
    } else {
        deflate_piece(z, r->body_ptr, r->body_len);
    }
    if (deflate(z, Z_FINISH) != Z_STREAM_END) {
        fprintf(stderr, "batchd: deflate did not finish\n");
        abort();
    }
    r->zbody.len = cap - z->avail_out;
    *m_bytes_in += r->body_len;
    *m_bytes_out += r->zbody.len;
    (*m_gzip)++;
    /* The identity bytes (r->body's runs, the held documents) are not
     * sent any more; the holds go with the request as before. */
    struct buf identity = r->body;
    r->body = r->zbody;
    r->zbody = identity;
    r->body_ptr = r->body.data;
    r->body_len = r->body.len;
    r->n_parts = 0;
    REQ_HEADER_LINE(r, "Content-Encoding: gzip\r\n");
}

static uint64_t body_hash(const struct req *r)
{
    if (r->n_parts == 0)
        return etag_mix(ETAG_START, etag_hash(r->body_ptr, r->body_len));
    /* A gathered answer its handler did not tag: each iovec a piece. The
     * split follows the pieces' sizes, so equal answers split alike. */
    uint64_t acc = ETAG_START;
    for (unsigned i = 0; i < r->n_parts; i++)
        acc = etag_mix(acc, etag_hash(r->parts[i].base, r->parts[i].len));
    return acc;
}

/* Every field line named `name`, fed to fn. */
#define EACH_HEADER(r, name, v) \
    for (uint32_t i_ = 0; i_ < (r)->msg.n_headers; i_++) \
        if (str_eq_ci(http_header_name(&(r)->msg, i_), str_make(name, sizeof(name) - 1)) && \
            ((v) = http_header_value(&(r)->msg, i_), true))

void encode_answer(struct req *r)
{
    if (r->status != 200 || (!conf.gzip && !conf.etag))
        return;
    bool gz = false;
    str_t v;
    if (conf.gzip) {
        /* The answer depends on Accept-Encoding whether or not it is coded. */
        REQ_HEADER_LINE(r, "Vary: Accept-Encoding\r\n");
        struct accept_enc ae = ACCEPT_ENC_INIT;
        EACH_HEADER(r, "accept-encoding", v)
            accept_feed(&ae, v);
        if (!accept_gzip(&ae))
            (*m_skipped[SKIP_NOT_ACCEPTED])++;
        else if (r->body_len < conf.min_bytes)
            (*m_skipped[SKIP_SMALL])++;
        else
            gz = true;
    }
    if (conf.etag) {
        uint64_t h = r->tagged ? r->tag : body_hash(r);
        char line[8 + ETAG_MAX + 2] = "ETag: ";
        size_t n = 6;
        size_t tn = etag_format(h, gz ? conf.level : 0, line + n);
        str_t tag = str_make(line + n, tn);
        n += tn;
        line[n++] = '\r';
        line[n++] = '\n';
        req_add_header_line(r, line, n);
        bool match = false;
        EACH_HEADER(r, "if-none-match", v)
            match = match || etag_none_match(v, tag) == ETAG_MATCH;
        if (match) {
            /* RFC 9110 15.4.5: the ETag and Vary a 200 would carry, no
             * content and no other representation metadata. */
            (*m_not_modified)++;
            r->status = 304;
            r->content_type = NULL;
            r->body_len = 0;
            r->n_parts = 0;
            return;
        }
    }
    if (gz)
        deflate_answer(r);
}
