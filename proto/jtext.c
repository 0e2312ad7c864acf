/* jtext: JSON string escaping and validation without allocation. See jtext.h. */
#include "proto/jtext.h"

#include <stdint.h>
#include <string.h>

size_t jtext_utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2; cp = c & 0x1F; min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3; cp = c & 0x0F; min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4; cp = c & 0x07; min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

bool jtext_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t len = jtext_utf8_seq_len(u + i, n - i);
        if (len == 0)
            return false;
        i += len;
    }
    return true;
}

void jtext_append_string(struct buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    buf_reserve(out, n + 2);
    buf_append_char(out, '"');
    size_t i = 0;
    while (i < n) {
        /* Copy the longest run that needs no escaping in one go. */
        size_t run = i;
        while (run < n && u[run] >= 0x20 && u[run] < 0x80 && u[run] != '"' && u[run] != '\\')
            run++;
        if (run > i) {
            buf_append(out, s + i, run - i);
            i = run;
            continue;
        }
        unsigned char c = u[i];
        if (c >= 0x80) {
            size_t len = jtext_utf8_seq_len(u + i, n - i);
            if (len == 0) {
                buf_append(out, "\\ufffd", 6);
                i++;
            } else {
                buf_append(out, s + i, len);
                i += len;
            }
            continue;
        }
        switch (c) {
        case '"': buf_append(out, "\\\"", 2); break;
        case '\\': buf_append(out, "\\\\", 2); break;
        case '\n': buf_append(out, "\\n", 2); break;
        case '\r': buf_append(out, "\\r", 2); break;
        case '\t': buf_append(out, "\\t", 2); break;
        case '\b': buf_append(out, "\\b", 2); break;
        case '\f': buf_append(out, "\\f", 2); break;
        default: {
            char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            buf_append(out, esc, 6);
        }
        }
        i++;
    }
    buf_append_char(out, '"');
}

/* --- validation ------------------------------------------------------------- */

struct cursor {
    const unsigned char *s;
    size_t n, i;
};

static inline void skip_ws(struct cursor *c)
{
    while (c->i < c->n) {
        unsigned char ch = c->s[c->i];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r')
            return;
        c->i++;
    }
}

static inline bool is_hex(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static inline bool is_digit(unsigned char ch)
{
    return ch >= '0' && ch <= '9';
}

/* 1 for bytes that may appear in a string as they are: printable ASCII
 * other than '"' and '\\'. Strings are most of a document and this runs on
 * every cache hit, so the common bytes cost one table load each. */
static const uint8_t plain_byte[256] = {
    [0x20] = 1, [0x21] = 1, [0x23 ... 0x5b] = 1, [0x5d ... 0x7f] = 1,
};

/* c->i is at the opening quote. */
static bool scan_string(struct cursor *c)
{
    const unsigned char *p = c->s + c->i + 1, *end = c->s + c->n;
    for (;;) {
        while (end - p >= 4 && plain_byte[p[0]] && plain_byte[p[1]] && plain_byte[p[2]] &&
               plain_byte[p[3]])
            p += 4;
        while (p < end && plain_byte[*p])
            p++;
        if (p >= end)
            return false;
        unsigned char ch = *p;
        if (ch == '"') {
            c->i = (size_t)(p + 1 - c->s);
            return true;
        }
        if (ch < 0x20)
            return false;
        if (ch == '\\') {
            if (++p >= end)
                return false;
            ch = *p;
            if (ch == 'u') {
                if (end - p < 5)
                    return false;
                for (int k = 1; k <= 4; k++)
                    if (!is_hex(p[k]))
                        return false;
                p += 5;
                continue;
            }
            if (ch != '"' && ch != '\\' && ch != '/' && ch != 'b' && ch != 'f' && ch != 'n' &&
                ch != 'r' && ch != 't')
                return false;
            p++;
            continue;
        }
        /* ch >= 0x80 */
        size_t len = jtext_utf8_seq_len(p, (size_t)(end - p));
        if (len == 0)
            return false;
        p += len;
    }
}

static bool scan_digits(struct cursor *c)
{
    size_t start = c->i;
    while (c->i < c->n && is_digit(c->s[c->i]))
        c->i++;
    return c->i > start;
}

static bool scan_number(struct cursor *c)
{
    if (c->s[c->i] == '-')
        c->i++;
    if (c->i >= c->n)
        return false;
    if (c->s[c->i] == '0')
        c->i++;
    else if (!scan_digits(c))
        return false;
    if (c->i < c->n && c->s[c->i] == '.') {
        c->i++;
        if (!scan_digits(c))
            return false;
    }
    if (c->i < c->n && (c->s[c->i] == 'e' || c->s[c->i] == 'E')) {
        c->i++;
        if (c->i < c->n && (c->s[c->i] == '+' || c->s[c->i] == '-'))
            c->i++;
        if (!scan_digits(c))
            return false;
    }
    return true;
}

static bool scan_literal(struct cursor *c, const char *lit, size_t len)
{
    if (c->n - c->i < len || memcmp(c->s + c->i, lit, len) != 0)
        return false;
    c->i += len;
    return true;
}

bool jtext_valid(const char *s, size_t n)
{
    struct cursor c = { (const unsigned char *)s, n, 0 };
    char stack[JTEXT_MAX_DEPTH]; /* '{' or '[' for each open container */
    int depth = 0;

value:
    skip_ws(&c);
    if (c.i >= c.n)
        return false;
    switch (c.s[c.i]) {
    case '{':
        if (depth == JTEXT_MAX_DEPTH)
            return false;
        stack[depth++] = '{';
        c.i++;
        skip_ws(&c);
        if (c.i < c.n && c.s[c.i] == '}') {
            c.i++;
            depth--;
            goto after;
        }
        goto key;
    case '[':
        if (depth == JTEXT_MAX_DEPTH)
            return false;
        stack[depth++] = '[';
        c.i++;
        skip_ws(&c);
        if (c.i < c.n && c.s[c.i] == ']') {
            c.i++;
            depth--;
            goto after;
        }
        goto value;
    case '"':
        if (!scan_string(&c))
            return false;
        goto after;
    case 't':
        if (!scan_literal(&c, "true", 4))
            return false;
        goto after;
    case 'f':
        if (!scan_literal(&c, "false", 5))
            return false;
        goto after;
    case 'n':
        if (!scan_literal(&c, "null", 4))
            return false;
        goto after;
    default:
        if (c.s[c.i] == '-' || is_digit(c.s[c.i])) {
            if (!scan_number(&c))
                return false;
            goto after;
        }
        return false;
    }

key:
    skip_ws(&c);
    if (c.i >= c.n || c.s[c.i] != '"' || !scan_string(&c))
        return false;
    skip_ws(&c);
    if (c.i >= c.n || c.s[c.i] != ':')
        return false;
    c.i++;
    goto value;

after:
    skip_ws(&c);
    if (depth == 0)
        return c.i == c.n;
    if (c.i >= c.n)
        return false;
    switch (c.s[c.i]) {
    case ',':
        c.i++;
        if (stack[depth - 1] == '{')
            goto key;
        goto value;
    case '}':
    case ']':
        if ((c.s[c.i] == '}') != (stack[depth - 1] == '{'))
            return false;
        c.i++;
        depth--;
        goto after;
    default:
        return false;
    }
}

/* --- memo of valid documents ------------------------------------------------ */

#define MEMO_SLOTS (1u << 15) /* 256 KiB of hashes */

static uint64_t memo[MEMO_SLOTS];
static uint64_t memo_seed = 0x9e3779b97f4a7c15ULL;

void jtext_cache_seed(uint64_t seed)
{
    memo_seed = seed | 1;
    memset(memo, 0, sizeof(memo));
}

static inline uint64_t mix(uint64_t h, uint64_t w)
{
    h ^= w;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 32;
    return h;
}

uint64_t jtext_hash(const char *s, size_t n, uint64_t seed)
{
    uint64_t h = seed ^ ((uint64_t)n * 0xc4ceb9fe1a85ec53ULL);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = mix(h, w);
    }
    if (i < n) {
        uint64_t w = 0;
        memcpy(&w, s + i, n - i);
        h = mix(h, w ^ ((uint64_t)(n - i) << 56));
    }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 31;
    return h | 1; /* 0 marks an empty slot */
}

bool jtext_valid_cached(const char *s, size_t n)
{
    uint64_t h = jtext_hash(s, n, memo_seed);
    /* Two-way: a document may sit in either slot of its pair, so two
     * documents whose hashes share a pair do not keep evicting each other. */
    uint64_t *pair = &memo[h & (MEMO_SLOTS - 2)];
    if (pair[0] == h || pair[1] == h)
        return true;
    if (!jtext_valid(s, n))
        return false;
    pair[1] = pair[0];
    pair[0] = h;
    return true;
}
