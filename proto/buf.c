/* buf: growable byte buffer and str_t helpers. See buf.h. */
#include "proto/buf.h"

#include <errno.h>
#include <stdio.h>

#include "proto/mem.h"

#include <stdlib.h>

static inline char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}

bool str_eq_ci(str_t a, str_t b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++)
        if (lower(a.p[i]) != lower(b.p[i]))
            return false;
    return true;
}

bool str_list_next(str_t list, size_t *pos, str_t *item)
{
    size_t i = *pos;
    while (i < list.len) {
        while (i < list.len && (list.p[i] == ' ' || list.p[i] == '\t' || list.p[i] == ','))
            i++;
        size_t start = i;
        while (i < list.len && list.p[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (list.p[end - 1] == ' ' || list.p[end - 1] == '\t'))
            end--;
        if (end > start) {
            *pos = i;
            *item = str_make(list.p + start, end - start);
            return true;
        }
    }
    *pos = i;
    return false;
}

bool str_list_has_token(str_t list, str_t tok)
{
    size_t pos = 0;
    str_t item;
    while (str_list_next(list, &pos, &item))
        if (str_eq_ci(item, tok))
            return true;
    return false;
}

int str_to_u64(str_t s, uint64_t *out)
{
    if (s.len == 0 || s.len > 20)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return -EINVAL;
        unsigned d = (unsigned)(s.p[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

void buf_init(struct buf *b)
{
    *b = BUF_INIT;
}

void buf_deinit(struct buf *b)
{
    free(b->data);
    *b = BUF_INIT;
}

void buf_reserve(struct buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->data = mem_realloc(b->data, cap);
    b->cap = cap;
}

void buf_append_slow(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void buf_append_str(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

size_t fmt_u64(char *out, uint64_t v)
{
    char tmp[21];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
}

void buf_append_u64(struct buf *b, uint64_t v)
{
    buf_reserve(b, 21);
    b->len += fmt_u64(b->data + b->len, v);
}

void buf_append_i64(struct buf *b, int64_t v)
{
    if (v < 0) {
        buf_append_char(b, '-');
        buf_append_u64(b, (uint64_t)0 - (uint64_t)v);
    } else {
        buf_append_u64(b, (uint64_t)v);
    }
}

void buf_vappendf(struct buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    buf_reserve(b, 128);
    int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    if (n >= 0 && (size_t)n >= b->cap - b->len) {
        buf_reserve(b, (size_t)n);
        n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap2);
    }
    va_end(ap2);
    if (n > 0)
        b->len += (size_t)n;
    b->data[b->len] = '\0';
}

void buf_appendf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    buf_vappendf(b, fmt, ap);
    va_end(ap);
}

void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}
