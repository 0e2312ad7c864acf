/*
 * stream_io: the socket mechanics client connections (conn.c) and app
 * server connections (upstream.c) share.
 *
 *   read ──> parser ──(paused: the rest)──> held ──(resumed)──> parser
 *   write ──> uv_try_write ──(what the socket did not take)──> copy / iovecs ──> uv_write
 *
 * Both sides read into one static buffer and parse at once, so bytes a
 * paused parser did not take must be copied before the buffer is reused;
 * and both write without a copy whatever the socket takes at once.
 */
#ifndef BATCHD_STREAM_IO_H
#define BATCHD_STREAM_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Input a paused parser has not taken yet. */
struct stream_held {
    char *data;
    uint32_t len, off;
};

static inline bool stream_held_any(const struct stream_held *h)
{
    return h->data != NULL;
}

/* The next bytes to feed after a resume (valid while h is untouched). */
static inline const char *stream_held_next(const struct stream_held *h, size_t *n)
{
    *n = h->len - h->off;
    return h->data + h->off;
}

/* After a parse of n bytes that used `used`: bytes that came from h are
 * consumed; bytes from a read buffer that were not used are copied into
 * h when keep is set (the parser paused), dropped otherwise. */
void stream_held_account(struct stream_held *h, const char *data, size_t n, size_t used, bool from_held,
                         bool keep);
void stream_held_drop(struct stream_held *h);

/* Writes what the socket takes now, only when nothing is queued before it
 * (queued != 0 keeps the order). Returns the bytes written, 0 when the
 * socket would block, or a negative libuv error. */
ssize_t stream_try_write(uv_stream_t *s, size_t queued, const uv_buf_t *bufs, unsigned n);

/* The iovecs of bufs from byte `skip` on, into out (at most n); returns
 * how many. */
unsigned stream_rest(const uv_buf_t *bufs, unsigned n, size_t skip, uv_buf_t *out);

/* Copies bufs from byte `skip` on into dst, which has room for the rest;
 * returns the bytes copied. */
size_t stream_copy_rest(const uv_buf_t *bufs, unsigned n, size_t skip, char *dst);

#endif
