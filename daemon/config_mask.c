/*
 * config_mask: secrets in printed values. Every config value batchd prints
 * (because it is malformed) goes through config_mask_value, and a parser's
 * reason is scrubbed with config_scrub_secrets. Internal to the config module.
 */
#include "daemon/config_table.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/mem.h"

/* --- secrets in printed values ------------------------------------------------
 *
 * Every value the loader prints goes through config_mask_value, and the
 * reason a parser gave is scrubbed of the same secrets (it may quote part of
 * the value). The secret parts of a value depend on its type:
 *   CFG_SECRET     all of it
 *   URL types      the password in user:password@ (all the userinfo when it
 *                  has no ':'), and password-like query parameters
 *   CFG_CONNINFO   password= and sslpassword= values, quoted or not, a
 *                  dbname holding a nested conninfo, or the URL rules for a
 *                  postgresql:// URI
 * A value is printed because it is malformed, so the scanners err towards
 * masking too much rather than trusting a parse that would give up early.
 */

struct spans {
    struct {
        size_t off, len;
    } *v;
    unsigned n;
};

static void span_add(struct spans *s, size_t off, size_t len)
{
    s->v = mem_realloc(s->v, (s->n + 1) * sizeof(*s->v));
    s->v[s->n].off = off;
    s->v[s->n].len = len;
    s->n++;
}

/* Case-insensitive: does p[0..n) contain `word`? */
static bool has_word_ci(const char *p, size_t n, const char *word)
{
    size_t w = strlen(word);
    for (size_t i = 0; i + w <= n; i++)
        if (strncasecmp(p + i, word, w) == 0)
            return true;
    return false;
}

/* A parameter whose value is a credential: password, sslpassword, pwd, token... */
static bool secret_name(const char *p, size_t n)
{
    return has_word_ci(p, n, "pass") || has_word_ci(p, n, "pwd") || has_word_ci(p, n, "secret") ||
           has_word_ci(p, n, "token");
}

/* libpq expands a dbname that is itself a conninfo or a URI. */
static bool nested_conninfo(const char *key, size_t klen, const char *val, size_t vlen)
{
    return klen == 6 && memcmp(key, "dbname", 6) == 0 &&
           (memchr(val, '=', vlen) != NULL || has_word_ci(val, vlen, "://"));
}

/* name=value&name=value from q to the end or '#'. */
static void query_spans(const char *v, const char *q, struct spans *s)
{
    while (*q && *q != '#') {
        size_t n = strcspn(q, "&#");
        const char *eq = memchr(q, '=', n);
        if (eq && (secret_name(q, (size_t)(eq - q)) ||
                   nested_conninfo(q, (size_t)(eq - q), eq + 1, n - (size_t)(eq + 1 - q))))
            span_add(s, (size_t)(eq + 1 - v), n - (size_t)(eq + 1 - q));
        q += n;
        if (*q == '&')
            q++;
    }
}

static void url_spans(const char *v, struct spans *s)
{
    const char *sep = strstr(v, "://");
    const char *auth = sep ? sep + 3 : v; /* no scheme: a typo, still mask user:pw@ */
    const char *rest = auth;
    /* The last '@', as parse_redis_url reads it: a password may hold '/' or '@'. */
    const char *at = strrchr(auth, '@');
    if (at) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        const char *from = colon ? colon + 1 : auth;
        span_add(s, (size_t)(from - v), (size_t)(at - from));
        rest = at + 1;
    }
    const char *q = strchr(rest, '?');
    if (q)
        query_spans(v, q + 1, s);
}

/* End of one libpq conninfo value: 'quoted \' text' or a word, with \ escapes. */
static const char *conninfo_value_end(const char *p)
{
    if (*p == '\'') {
        for (p++; *p && *p != '\''; p++)
            if (*p == '\\' && p[1])
                p++;
        return *p ? p + 1 : p;
    }
    for (; *p && !isspace((unsigned char)*p); p++)
        if (*p == '\\' && p[1])
            p++;
    return p;
}

/* key = value pairs separated by spaces, as libpq reads them. */
static void conninfo_spans(const char *v, struct spans *s)
{
    const char *p = v;
    while (*p) {
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0')
            break;
        const char *key = p;
        while (*p && *p != '=' && !isspace((unsigned char)*p))
            p++;
        size_t klen = (size_t)(p - key);
        while (isspace((unsigned char)*p))
            p++;
        bool secret = secret_name(key, klen);
        if (*p != '=' && !secret) {
            /* A word with no '=': libpq rejects it, quoting it. It may be a
             * password whose key was forgotten. The next word is a key. */
            span_add(s, (size_t)(key - v), klen);
            continue;
        }
        if (*p == '=') /* "password secret" (no '=') still masks the next word */
            for (p++; isspace((unsigned char)*p); p++)
                ;
        const char *val = p;
        p = conninfo_value_end(p);
        size_t vlen = (size_t)(p - val);
        if (secret || nested_conninfo(key, klen, val, vlen))
            span_add(s, (size_t)(val - v), vlen);
    }
}

static bool is_pg_uri(const char *v)
{
    return strncmp(v, "postgresql://", 13) == 0 || strncmp(v, "postgres://", 11) == 0;
}

/* The secret parts of `v`, in order, not overlapping. */
static void find_secrets(enum cfg_type type, const char *v, struct spans *s)
{
    switch (type) {
    case CFG_SECRET:
        span_add(s, 0, strlen(v));
        break;
    case CFG_REDIS_URL:
    case CFG_HTTP_URL:
        url_spans(v, s);
        break;
    case CFG_CONNINFO:
        if (is_pg_uri(v))
            url_spans(v, s);
        else if (strchr(v, '=')) /* otherwise libpq reads it as a database name */
            conninfo_spans(v, s);
        break;
    case CFG_CONNINFO_LIST: {
        /* Each ';'-separated piece as a conninfo. A ';' inside a quoted
         * password splits it here too; the pieces are then masked as
         * malformed conninfos are (words without '=' included). */
        size_t at = 0;
        while (v[at] != '\0') {
            at += strspn(v + at, " \t"); /* a URI is recognised by its start */
            size_t n = strcspn(v + at, ";");
            char *piece = mem_strndup(v + at, n);
            struct spans sub = { 0 };
            find_secrets(CFG_CONNINFO, piece, &sub);
            for (unsigned i = 0; i < sub.n; i++)
                span_add(s, at + sub.v[i].off, sub.v[i].len);
            free(sub.v);
            free(piece);
            at += n + (v[at + n] == ';');
        }
        break;
    }
    default:
        break;
    }
}

void config_mask_value(enum cfg_type type, const char *value, struct buf *out)
{
    struct spans s = { 0 };
    find_secrets(type, value, &s);
    size_t at = 0;
    for (unsigned i = 0; i < s.n; i++) {
        buf_append(out, value + at, s.v[i].off - at);
        buf_append_str(out, "***");
        at = s.v[i].off + s.v[i].len;
    }
    buf_append_str(out, value + at);
    free(s.v);
}

/* Replaces every copy of needle[0..n) in b with "***". */
/* A parser's reason may quote part of the value (cannot resolve host
 * "user:pw@h"): remove the value's secrets from it too, in one pass over
 * the text, so that "***" written for one secret is never searched for
 * another (secrets "*" and "**" would otherwise multiply it). */
void config_scrub_secrets(enum cfg_type type, const char *value, struct buf *text)
{
    struct spans s = { 0 };
    find_secrets(type, value, &s);
    for (unsigned k = 0; k < s.n; k++) { /* quoted: the secret is inside the quotes */
        const char *sec = value + s.v[k].off;
        if (s.v[k].len >= 2 && sec[0] == '\'' && sec[s.v[k].len - 1] == '\'') {
            s.v[k].off++;
            s.v[k].len -= 2;
        }
    }
    struct buf out = BUF_INIT;
    bool changed = false;
    for (size_t i = 0; i < text->len;) {
        size_t hit = 0;
        for (unsigned k = 0; k < s.n; k++) {
            size_t n = s.v[k].len;
            if (n > hit && i + n <= text->len && memcmp(text->data + i, value + s.v[k].off, n) == 0)
                hit = n; /* the longest secret that starts here */
        }
        if (hit) {
            buf_append_str(&out, "***");
            i += hit;
            changed = true;
        } else {
            buf_append_char(&out, text->data[i++]);
        }
    }
    if (changed) {
        buf_deinit(text);
        *text = out;
    } else {
        buf_deinit(&out);
    }
    free(s.v);
}

