/*
 * cred: credentials in request headers. See cred.h.
 */
#include "proto/cred.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* RFC 6750 b64token: ALPHA DIGIT "-" "." "_" "~" "+" "/", then "=" padding.
 * A table: tokens are hundreds of bytes and this runs on every request. */
static const uint8_t b64token[256] = {
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1, ['+'] = 1, ['/'] = 1,
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
};

static bool token68(str_t t)
{
    const unsigned char *p = (const unsigned char *)t.p;
    size_t i = 0;
    while (i < t.len && b64token[p[i]])
        i++;
    if (i == 0)
        return false;
    while (i < t.len && p[i] == '=')
        i++;
    return i == t.len;
}

bool cred_bearer(str_t authorization, str_t *token)
{
    str_t a = authorization;
    while (a.len && is_ows(a.p[0])) {
        a.p++;
        a.len--;
    }
    while (a.len && is_ows(a.p[a.len - 1]))
        a.len--;
    if (a.len < 7 || strncasecmp(a.p, "bearer", 6) != 0 || !is_ows(a.p[6]))
        return false;
    str_t t = { a.p + 7, a.len - 7 };
    while (t.len && is_ows(t.p[0])) {
        t.p++;
        t.len--;
    }
    if (!token68(t))
        return false;
    *token = t;
    return true;
}

bool cred_cookie(str_t cookie, str_t name, str_t *value)
{
    const char *p = cookie.p, *end = cookie.p + cookie.len;
    if (name.len == 0 || p == NULL)
        return false;
    while (p < end) {
        while (p < end && (is_ows(*p) || *p == ';'))
            p++;
        const char *pair = p;
        while (p < end && *p != ';')
            p++;
        const char *eq = memchr(pair, '=', (size_t)(p - pair));
        if (eq == NULL)
            continue;
        const char *ne = eq;
        while (ne > pair && is_ows(ne[-1]))
            ne--;
        if ((size_t)(ne - pair) != name.len || memcmp(pair, name.p, name.len) != 0)
            continue;
        const char *v = eq + 1, *ve = p;
        while (v < ve && is_ows(*v))
            v++;
        while (ve > v && is_ows(ve[-1]))
            ve--;
        if (ve - v >= 2 && v[0] == '"' && ve[-1] == '"') {
            v++;
            ve--;
        }
        *value = (str_t){ v, (size_t)(ve - v) };
        return true;
    }
    return false;
}
