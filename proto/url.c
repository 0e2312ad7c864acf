/* url: percent-decoding, query strings and path templates. See url.h. */
#include "proto/url.h"

#include <errno.h>
#include <string.h>

int url_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int url_decode_to(str_t src, bool plus_is_space, char *out, size_t cap, size_t *len)
{
    size_t n = 0;
    int rc = 0;
    for (size_t i = 0; i < src.len; i++) {
        char c = src.p[i];
        if (c == '+' && plus_is_space) {
            c = ' ';
        } else if (c == '%') {
            int hi = i + 2 < src.len ? url_hex_digit(src.p[i + 1]) : -1;
            int lo = hi >= 0 ? url_hex_digit(src.p[i + 2]) : -1;
            if (lo < 0) {
                rc = -EINVAL;
                break;
            }
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (n == cap) {
            rc = -E2BIG;
            break;
        }
        out[n++] = c;
    }
    *len = n;
    return rc;
}

int url_decode(str_t src, bool plus_is_space, struct buf *out)
{
    /* Decoding never lengthens: src.len bytes of room are enough. */
    buf_reserve(out, src.len);
    size_t n;
    int rc = url_decode_to(src, plus_is_space, out->data + out->len, src.len, &n);
    out->len += n;
    out->data[out->len] = '\0';
    return rc;
}

bool url_query_next(str_t *rest, str_t *key, str_t *value)
{
    while (rest->len > 0) {
        const char *amp = memchr(rest->p, '&', rest->len);
        size_t n = amp ? (size_t)(amp - rest->p) : rest->len;
        str_t pair = str_make(rest->p, n);
        rest->p += amp ? n + 1 : n;
        rest->len -= amp ? n + 1 : n;
        if (pair.len == 0)
            continue;
        const char *eq = memchr(pair.p, '=', pair.len);
        if (eq) {
            *key = str_make(pair.p, (size_t)(eq - pair.p));
            *value = str_make(eq + 1, pair.len - key->len - 1);
        } else {
            *key = pair;
            *value = str_make(pair.p + pair.len, 0);
        }
        return true;
    }
    return false;
}

/* Next segment of a path starting at *pos (which points at a '/'). */
static bool next_segment(str_t s, size_t *pos, str_t *seg)
{
    if (*pos >= s.len || s.p[*pos] != '/')
        return false;
    size_t start = ++*pos;
    while (*pos < s.len && s.p[*pos] != '/')
        (*pos)++;
    *seg = str_make(s.p + start, *pos - start);
    return true;
}

static bool is_placeholder(str_t seg)
{
    return seg.len >= 3 && seg.p[0] == '{' && seg.p[seg.len - 1] == '}';
}

bool url_template_valid(const char *tpl, const char **why)
{
    str_t t = str_cstr(tpl);
    if (t.len == 0 || t.p[0] != '/') {
        *why = "must start with '/'";
        return false;
    }
    if (t.len == 1)
        return true;
    size_t pos = 0;
    unsigned params = 0;
    str_t seg;
    while (next_segment(t, &pos, &seg)) {
        if (seg.len == 0) {
            *why = "has an empty segment (\"//\" or a trailing '/')";
            return false;
        }
        bool open = memchr(seg.p, '{', seg.len) != NULL;
        bool close = memchr(seg.p, '}', seg.len) != NULL;
        if (!open && !close) {
            for (size_t i = 0; i < seg.len; i++) {
                char c = seg.p[i];
                if (c == '?' || c == '#' || c == ' ' || c == '%' || (unsigned char)c < 0x21) {
                    *why = "has a character that is not allowed in a path ('?', '#', '%', space)";
                    return false;
                }
            }
            continue;
        }
        if (!is_placeholder(seg)) {
            *why = "has a placeholder that is not a whole segment, like /{id}/";
            return false;
        }
        for (size_t i = 1; i + 1 < seg.len; i++) {
            char c = seg.p[i];
            if (!((c >= 'a' && c <= 'z') || c == '_')) {
                *why = "has a placeholder name that is not [a-z_]+";
                return false;
            }
        }
        if (++params > URL_MAX_PARAMS) {
            *why = "has too many placeholders";
            return false;
        }
    }
    return true;
}

int url_template_match(const char *tpl, str_t path, struct url_params *params)
{
    str_t t = str_cstr(tpl);
    params->n = 0;
    if (t.len == 1 && t.p[0] == '/')
        return (path.len == 1 && path.p[0] == '/') ? 1 : -1;
    size_t tp = 0, pp = 0;
    int literals = 0;
    str_t tseg, pseg;
    while (next_segment(t, &tp, &tseg)) {
        if (!next_segment(path, &pp, &pseg))
            return -1;
        if (is_placeholder(tseg)) {
            if (pseg.len == 0 || params->n >= URL_MAX_PARAMS)
                return -1;
            params->name[params->n] = str_make(tseg.p + 1, tseg.len - 2);
            params->value[params->n] = pseg;
            params->n++;
        } else {
            if (!str_eq(tseg, pseg))
                return -1;
            literals++;
        }
    }
    return pp == path.len ? literals : -1;
}

bool url_params_get(const struct url_params *params, const char *name, str_t *value)
{
    str_t want = str_cstr(name);
    for (unsigned i = 0; i < params->n; i++) {
        if (str_eq(params->name[i], want)) {
            *value = params->value[i];
            return true;
        }
    }
    return false;
}

void url_template_expand(const char *tpl, const char *name, str_t value, struct buf *out)
{
    size_t nlen = strlen(name);
    const char *p = tpl;
    for (;;) {
        const char *open = strchr(p, '{');
        if (open == NULL || strncmp(open + 1, name, nlen) != 0 || open[1 + nlen] != '}') {
            if (open == NULL) {
                buf_append_str(out, p);
                return;
            }
            buf_append(out, p, (size_t)(open - p) + 1);
            p = open + 1;
            continue;
        }
        buf_append(out, p, (size_t)(open - p));
        buf_append(out, value.p, value.len);
        p = open + nlen + 2;
    }
}
