/* stream_io: held-back input and try-then-queue writes. See stream_io.h. */
#include "daemon/net/stream_io.h"

#include <stdlib.h>
#include <string.h>

#include "proto/mem.h"

void stream_held_drop(struct stream_held *h)
{
    free(h->data);
    h->data = NULL;
    h->len = h->off = 0;
}

void stream_held_account(struct stream_held *h, const char *data, size_t n, size_t used, bool from_held,
                         bool keep)
{
    if (from_held) {
        h->off += (uint32_t)used;
        if (h->off >= h->len)
            stream_held_drop(h);
        return;
    }
    if (used >= n || !keep)
        return;
    h->len = (uint32_t)(n - used);
    h->off = 0;
    h->data = mem_alloc(h->len);
    memcpy(h->data, data + used, h->len);
}

ssize_t stream_try_write(uv_stream_t *s, size_t queued, const uv_buf_t *bufs, unsigned n)
{
    if (queued != 0)
        return 0;
    int rc = uv_try_write(s, bufs, n);
    if (rc == UV_EAGAIN || rc == UV_ENOSYS)
        return 0;
    return rc;
}

unsigned stream_rest(const uv_buf_t *bufs, unsigned n, size_t skip, uv_buf_t *out)
{
    unsigned k = 0;
    for (unsigned i = 0; i < n; i++) {
        if (skip >= bufs[i].len) {
            skip -= bufs[i].len;
            continue;
        }
        out[k++] = uv_buf_init(bufs[i].base + skip, (unsigned)(bufs[i].len - skip));
        skip = 0;
    }
    return k;
}

size_t stream_copy_rest(const uv_buf_t *bufs, unsigned n, size_t skip, char *dst)
{
    size_t off = 0;
    for (unsigned i = 0; i < n; i++) {
        if (skip >= bufs[i].len) {
            skip -= bufs[i].len;
            continue;
        }
        memcpy(dst + off, bufs[i].base + skip, bufs[i].len - skip);
        off += bufs[i].len - skip;
        skip = 0;
    }
    return off;
}
