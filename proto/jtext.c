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

/* --- one member of an object ------------------------------------------------- */

static unsigned hex_val(unsigned char ch)
{
    return ch <= '9' ? (unsigned)(ch - '0') : (unsigned)((ch | 0x20) - 'a' + 10);
}

/* Decodes the next character of a string literal at q[*i] (after the
 * opening quote) into out (1 to 4 bytes). Returns the byte count, 0 at the
 * closing quote, -1 when malformed. */
static int next_char(const unsigned char *q, size_t n, size_t *i, unsigned char out[4])
{
    if (*i >= n)
        return -1;
    unsigned char ch = q[(*i)++];
    if (ch == '"')
        return 0;
    if (ch != '\\') {
        out[0] = ch;
        return 1;
    }
    if (*i >= n)
        return -1;
    ch = q[(*i)++];
    switch (ch) {
    case '"': case '\\': case '/': out[0] = ch; return 1;
    case 'b': out[0] = '\b'; return 1;
    case 'f': out[0] = '\f'; return 1;
    case 'n': out[0] = '\n'; return 1;
    case 'r': out[0] = '\r'; return 1;
    case 't': out[0] = '\t'; return 1;
    case 'u': break;
    default: return -1;
    }
    uint32_t cp = 0;
    for (int round = 0; round < 2; round++) {
        if (n - *i < 4)
            return -1;
        uint32_t u = 0;
        for (int k = 0; k < 4; k++) {
            if (!is_hex(q[*i + k]))
                return -1;
            u = u << 4 | hex_val(q[*i + k]);
        }
        *i += 4;
        if (round == 1) {
            if (u < 0xdc00 || u > 0xdfff)
                return -1;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (u - 0xdc00);
            break;
        }
        cp = u;
        if (u < 0xd800 || u > 0xdbff)
            break;
        /* A high surrogate: its pair must follow as another \u escape. */
        if (n - *i < 2 || q[*i] != '\\' || q[*i + 1] != 'u')
            return -1;
        *i += 2;
    }
    if (cp >= 0xdc00 && cp <= 0xdfff)
        return -1;
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xc0 | cp >> 6);
        out[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xe0 | cp >> 12);
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (unsigned char)(0xf0 | cp >> 18);
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

bool jtext_string_equals(const char *q, size_t qn, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)q;
    if (qn < 2 || u[0] != '"')
        return false;
    size_t i = 1, at = 0;
    unsigned char ch[4];
    int k;
    while ((k = next_char(u, qn, &i, ch)) > 0) {
        if (n - at < (size_t)k || memcmp(s + at, ch, (size_t)k) != 0)
            return false;
        at += (size_t)k;
    }
    return k == 0 && i == qn && at == n;
}

/* Moves c past one value (c->i at its first byte). Containers are skipped
 * by counting brackets outside strings. */
static bool skip_value(struct cursor *c)
{
    if (c->i >= c->n)
        return false;
    unsigned char ch = c->s[c->i];
    if (ch == '"')
        return scan_string(c);
    if (ch != '{' && ch != '[') { /* a number or literal: up to what may follow a value */
        static const uint8_t ends[256] = { [','] = 1, ['}'] = 1, [']'] = 1, [' '] = 1,
                                           ['\t'] = 1, ['\r'] = 1, ['\n'] = 1 };
        size_t start = c->i;
        while (c->i < c->n && !ends[c->s[c->i]])
            c->i++;
        return c->i > start;
    }
    size_t depth = 0;
    while (c->i < c->n) {
        ch = c->s[c->i];
        if (ch == '"') {
            if (!scan_string(c))
                return false;
            continue;
        }
        c->i++;
        if (ch == '{' || ch == '[')
            depth++;
        else if ((ch == '}' || ch == ']') && --depth == 0)
            return true;
    }
    return false;
}

int jtext_object_field(const char *s, size_t n, const char *name, size_t name_len,
                       const char **val, size_t *val_len)
{
    struct cursor c = { (const unsigned char *)s, n, 0 };
    skip_ws(&c);
    if (c.i >= c.n || c.s[c.i] != '{')
        return -1;
    c.i++;
    skip_ws(&c);
    if (c.i < c.n && c.s[c.i] == '}')
        return 0;
    for (;;) {
        skip_ws(&c);
        size_t key = c.i;
        if (c.i >= c.n || c.s[c.i] != '"' || !scan_string(&c))
            return -1;
        /* Keys are plain text nearly always: compare the bytes, and decode
         * escapes only for a key that has some. */
        size_t klen = c.i - key - 2;
        bool match = memchr(s + key + 1, '\\', klen) == NULL
                         ? klen == name_len && memcmp(s + key + 1, name, name_len) == 0
                         : jtext_string_equals(s + key, c.i - key, name, name_len);
        skip_ws(&c);
        if (c.i >= c.n || c.s[c.i] != ':')
            return -1;
        c.i++;
        skip_ws(&c);
        size_t start = c.i;
        if (!skip_value(&c))
            return -1;
        if (match) {
            *val = s + start;
            *val_len = c.i - start;
            return 1;
        }
        skip_ws(&c);
        if (c.i < c.n && c.s[c.i] == ',') {
            c.i++;
            continue;
        }
        return c.i < c.n && c.s[c.i] == '}' ? 0 : -1;
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

bool jtext_value_names(const char *v, size_t vn, const char *s, size_t n)
{
    if (vn == 0)
        return false;
    if (v[0] == '"')
        return jtext_string_equals(v, vn, s, n);
    return (v[0] == '-' || (v[0] >= '0' && v[0] <= '9')) && vn == n && memcmp(v, s, n) == 0;
}
