/*
 * buf: a growable byte buffer, and str_t, a borrowed (pointer, length) view.
 *
 * A buf owns its bytes; `data` may move whenever the buffer grows, so keep
 * offsets, not pointers, into a buffer that is still being appended to.
 * The bytes are always followed by a '\0' that is not counted in `len`,
 * so a buf can be handed to functions that want a C string.
 */
#ifndef BATCHD_PROTO_BUF_H
#define BATCHD_PROTO_BUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const char *p;
    size_t len;
} str_t;

#define STR_LIT(s) ((str_t){ (s), sizeof(s) - 1 })
#define STR_NULL ((str_t){ NULL, 0 })

static inline str_t str_make(const char *p, size_t len) { return (str_t){ p, len }; }
static inline str_t str_cstr(const char *s) { return (str_t){ s, strlen(s) }; }
static inline bool str_eq(str_t a, str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}
bool str_eq_ci(str_t a, str_t b);
/* The next non-empty element of a comma-separated header value, without
 * its surrounding spaces and tabs: start with *pos = 0; false at the end. */
bool str_list_next(str_t list, size_t *pos, str_t *item);
/* Case-insensitive search for token `tok` in a comma-separated header value. */
bool str_list_has_token(str_t list, str_t tok);
/* Parses a decimal uint64 that fills all of `s`; 0 on success, -EINVAL otherwise. */
int str_to_u64(str_t s, uint64_t *out);

struct buf {
    char *data;
    size_t len;
    size_t cap;
};

#define BUF_INIT ((struct buf){ NULL, 0, 0 })

void buf_init(struct buf *b);
void buf_deinit(struct buf *b);
/* Makes room for `extra` more bytes (plus the trailing NUL). */
void buf_reserve(struct buf *b, size_t extra);
void buf_append_slow(struct buf *b, const void *p, size_t n);
/* Appends n bytes (inline when they fit: this is on every hot path). */
static inline void buf_append(struct buf *b, const void *p, size_t n)
{
    if (b->cap - b->len > n) {
        memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = '\0';
    } else {
        buf_append_slow(b, p, n);
    }
}
static inline void buf_append_char(struct buf *b, char c)
{
    if (b->cap - b->len > 1) {
        b->data[b->len++] = c;
        b->data[b->len] = '\0';
    } else {
        buf_append_slow(b, &c, 1);
    }
}
void buf_append_str(struct buf *b, const char *s);
void buf_append_u64(struct buf *b, uint64_t v);
void buf_append_i64(struct buf *b, int64_t v);
void buf_appendf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vappendf(struct buf *b, const char *fmt, va_list ap);
/* Empties the buffer but keeps its memory. */
static inline void buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}
/* Removes the first n bytes. */
void buf_consume(struct buf *b, size_t n);
static inline str_t buf_str(const struct buf *b) { return (str_t){ b->data, b->len }; }

/* Formats v in decimal into out (at least 21 bytes); returns the length. */
size_t fmt_u64(char *out, uint64_t v);

#endif
