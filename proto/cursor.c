/*
 * cursor: page cursors and cached pages. See cursor.h.
 *
 * Decoding is strict so that a cursor has exactly one spelling: no
 * padding, no characters outside base64url, and the unused low bits of
 * the last character zero. Two spellings of one cursor would be two
 * cache fields and two single-flight keys for the same page.
 */
#include "proto/cursor.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "proto/b64url.h"
#include "proto/jtext.h"
#include "proto/mem.h"

size_t cursor_encoded_len(size_t len)
{
    return b64url_encoded_len(len + 1); /* the version byte, then the text */
}

bool cursor_text_valid(const char *text, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return jtext_utf8_valid(text, len);
}

void cursor_encode(const char *text, size_t len, struct buf *out)
{
    char stack[256];
    char *raw = len < sizeof(stack) ? stack : mem_alloc(len + 1);
    raw[0] = CURSOR_VERSION;
    memcpy(raw + 1, text, len);
    b64url_encode(raw, len + 1, out);
    if (raw != stack)
        free(raw);
}

int cursor_decode(str_t in, size_t max_len, struct buf *out)
{
    if (in.len > max_len)
        return -E2BIG;
    if (in.len < 2)
        return -EINVAL; /* not even the version byte */
    unsigned char stack[256];
    unsigned char *raw = in.len * 3 / 4 <= sizeof(stack) ? stack : mem_alloc(in.len * 3 / 4);
    ssize_t n = b64url_decode(in.p, in.len, raw);
    int rc = 0;
    if (n < 1 || raw[0] != CURSOR_VERSION || !cursor_text_valid((const char *)raw + 1, (size_t)n - 1))
        rc = -EINVAL;
    else if (out)
        buf_append(out, raw + 1, (size_t)n - 1);
    if (raw != stack)
        free(raw);
    return rc;
}

/* --- a page in the cache ------------------------------------------------------ */

void cursor_page_field(uint32_t query_hash, unsigned limit, str_t cursor, const char *const *names,
                       const str_t *values, unsigned n, struct buf *out)
{
    buf_appendf(out, "%08x %u ", query_hash, limit);
    if (cursor.p)
        buf_append(out, cursor.p, cursor.len);
    else
        buf_append_char(out, '~');
    for (unsigned i = 0; i < n; i++) {
        if (values[i].p == NULL)
            continue;
        buf_append_char(out, ' ');
        buf_append_str(out, names[i]);
        buf_append_char(out, '=');
        buf_append(out, values[i].p, values[i].len);
    }
}

void cursor_page_encode(uint64_t expires_ms, str_t next, const struct id_list *ids, struct buf *out)
{
    buf_append_str(out, "1 ");
    buf_append_u64(out, expires_ms);
    buf_append_char(out, ' ');
    if (next.len)
        buf_append(out, next.p, next.len);
    else
        buf_append_char(out, '~');
    buf_append_char(out, ' ');
    buf_append_u64(out, ids->n);
    for (unsigned i = 0; i < ids->n; i++) {
        str_t id = id_list_get(ids, i);
        buf_append_char(out, ' ');
        buf_append(out, id.p, id.len);
    }
}

/* Takes the next space-separated token off *rest: non-empty, and followed
 * by one space or the end. */
static bool next_token(str_t *rest, str_t *tok)
{
    const char *sp = memchr(rest->p, ' ', rest->len);
    size_t n = sp ? (size_t)(sp - rest->p) : rest->len;
    if (n == 0)
        return false;
    *tok = str_make(rest->p, n);
    rest->p += sp ? n + 1 : n;
    rest->len -= sp ? n + 1 : n;
    if (sp && rest->len == 0)
        return false; /* a trailing space */
    return true;
}

/* A decimal with no sign and no leading zero (so one spelling per number). */
static bool canonical_u64(str_t s, uint64_t *out)
{
    if (s.len > 1 && s.p[0] == '0')
        return false;
    return str_to_u64(s, out) == 0;
}

int cursor_page_decode(str_t v, unsigned max_ids, size_t max_next, uint64_t *expires_ms, struct buf *next,
                       struct id_list *ids)
{
    str_t rest = v, tok;
    uint64_t n;
    if (!next_token(&rest, &tok) || !str_eq(tok, STR_LIT("1")))
        return -EINVAL;
    if (!next_token(&rest, &tok) || !canonical_u64(tok, expires_ms))
        return -EINVAL;
    if (!next_token(&rest, &tok))
        return -EINVAL;
    if (!str_eq(tok, STR_LIT("~"))) {
        /* Handed to a client as it is: it must be a cursor we take back. */
        if (cursor_decode(tok, max_next, NULL) != 0)
            return -EINVAL;
        buf_append(next, tok.p, tok.len);
    }
    if (!next_token(&rest, &tok) || !canonical_u64(tok, &n) || n > max_ids)
        return -EINVAL;
    for (uint64_t i = 0; i < n; i++)
        if (!next_token(&rest, &tok) || id_list_add(ids, tok.p, tok.len, max_ids) != 0)
            return -EINVAL;
    return rest.len == 0 ? 0 : -EINVAL;
}
