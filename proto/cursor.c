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
#include <string.h>

#include "proto/jtext.h"

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

size_t cursor_encoded_len(size_t len)
{
    size_t n = len + 1; /* the version byte */
    return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
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

static void encode_group(const unsigned char *in, size_t n, char *out)
{
    uint32_t v = (uint32_t)in[0] << 16 | (n > 1 ? (uint32_t)in[1] << 8 : 0) | (n > 2 ? in[2] : 0);
    out[0] = B64URL[v >> 18 & 63];
    out[1] = B64URL[v >> 12 & 63];
    if (n > 1)
        out[2] = B64URL[v >> 6 & 63];
    if (n > 2)
        out[3] = B64URL[v & 63];
}

void cursor_encode(const char *text, size_t len, struct buf *out)
{
    buf_reserve(out, cursor_encoded_len(len));
    unsigned char g[3];
    size_t k = 0;
    char enc[4];
    g[k++] = CURSOR_VERSION;
    for (size_t i = 0; i <= len; i++) {
        if (k == 3 || i == len) {
            if (k > 0) {
                encode_group(g, k, enc);
                buf_append(out, enc, k + 1);
            }
            k = 0;
        }
        if (i < len)
            g[k++] = (unsigned char)text[i];
    }
}

int cursor_decode(str_t in, size_t max_len, struct buf *out)
{
    if (in.len > max_len)
        return -E2BIG;
    if (in.len % 4 == 1 || in.len < 2)
        return -EINVAL; /* no whole byte in the last character, or no version byte */
    size_t start = out->len;
    uint32_t acc = 0;
    unsigned bits = 0;
    bool version = false;
    for (size_t i = 0; i < in.len; i++) {
        int v = b64_value((unsigned char)in.p[i]);
        if (v < 0)
            return -EINVAL;
        acc = (acc << 6 | (uint32_t)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            unsigned char byte = (unsigned char)(acc >> bits);
            if (!version) {
                if (byte != CURSOR_VERSION)
                    return -EINVAL;
                version = true;
            } else {
                buf_append_char(out, (char)byte);
            }
        }
    }
    if (acc & ((1u << bits) - 1))
        return -EINVAL; /* the leftover bits of the last character must be zero */
    if (out->len > start && !cursor_text_valid(out->data + start, out->len - start))
        return -EINVAL;
    return 0;
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
        struct buf text = BUF_INIT;
        int rc = cursor_decode(tok, max_next, &text);
        buf_deinit(&text);
        if (rc != 0)
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
