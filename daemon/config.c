/*
 * config: loading and validating the INI file. See config.h.
 *
 * inih splits lines into key/value pairs; it tells the handler neither the
 * line number nor when an empty section starts. So batchd hands inih its own
 * line reader, which counts lines, sees every [section] header (empty ones
 * included), and rejects lines inih would otherwise skip or truncate.
 */
#include "daemon/config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/config_table.h"
#include "proto/mem.h"

#define MAX_LINE 8192

struct sect_seen {
    enum cfg_sect sect;
    int index;              /* into resources/streams; 0 for singletons */
    int line;
    uint64_t keys_seen;     /* bit i = i-th key of this section kind */
};

struct loader {
    const char *file;
    FILE *fp;
    int line;
    struct config *cfg;
    struct buf *errors;
    unsigned n_errors;
    struct sect_seen *secs;
    unsigned n_secs;
    struct sect_seen *cur;  /* NULL before the first section or after a bad one */
    bool cur_bad;           /* inside an unknown or duplicate section: skip its keys */
};

/* Configs loaded and not freed yet (see config_live_count). */
static unsigned live_configs;
static void config_free(struct config *c);

static void error_at(struct loader *ld, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void error_at(struct loader *ld, int line, const char *fmt, ...)
{
    va_list ap;
    buf_appendf(ld->errors, "%s:%d: ", ld->file, line);
    va_start(ap, fmt);
    buf_vappendf(ld->errors, fmt, ap);
    va_end(ap);
    buf_append_char(ld->errors, '\n');
    ld->n_errors++;
}

static void *sect_struct(struct config *c, enum cfg_sect sect, int index)
{
    switch (sect) {
    case SECT_BATCHD: return &c->batchd;
    case SECT_REDIS: return &c->redis;
    case SECT_POSTGRES: return &c->postgres;
    case SECT_UPSTREAM: return &c->upstream;
    case SECT_RESOURCE: return &c->resources[index];
    case SECT_STREAM: return &c->streams[index];
    default: return NULL;
    }
}

static const char *sect_label(struct config *c, enum cfg_sect sect, int index, char *out, size_t cap)
{
    if (sect == SECT_RESOURCE)
        snprintf(out, cap, "[resource %s]", c->resources[index].name);
    else if (sect == SECT_STREAM)
        snprintf(out, cap, "[stream %s]", c->streams[index].name);
    else
        snprintf(out, cap, "[%s]", config_sect_names[sect]);
    return out;
}

static void apply_defaults(struct loader *ld, enum cfg_sect sect, void *s)
{
    struct buf why = BUF_INIT;
    for (size_t i = 0; i < config_n_keys; i++) {
        const struct cfg_key *k = &config_keys[i];
        if (k->sect != sect || k->def == NULL)
            continue;
        if (config_key_set(k, s, k->def, &why) != 0) {
            /* A default that fails its own rule is a bug in the table. */
            fprintf(stderr, "batchd: bad default for %s.%s: %s\n", config_sect_names[sect],
                    k->name, why.data);
            abort();
        }
    }
    buf_deinit(&why);
}

static bool valid_name(const char *s)
{
    if (*s == '\0' || strlen(s) > 64)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-')
            return false;
    return true;
}

/* A "[...]" line: start a section. `inner` is the text between brackets. */
static void begin_section(struct loader *ld, char *inner)
{
    struct config *c = ld->cfg;
    char *name = inner;
    while (isspace((unsigned char)*name))
        name++;
    char *end = name + strlen(name);
    while (end > name && isspace((unsigned char)end[-1]))
        *--end = '\0';
    char *arg = strpbrk(name, " \t");
    if (arg) {
        *arg++ = '\0';
        while (isspace((unsigned char)*arg))
            arg++;
    }

    ld->cur = NULL;
    ld->cur_bad = true;
    int kind = -1;
    for (int i = 0; i < SECT__COUNT; i++)
        if (strcmp(name, config_sect_names[i]) == 0)
            kind = i;
    if (kind < 0) {
        error_at(ld, ld->line, "[%s]: unknown section (expected batchd, redis, postgres, upstream, resource NAME or stream NAME)", name);
        return;
    }
    bool named = kind == SECT_RESOURCE || kind == SECT_STREAM;
    if (named && (arg == NULL || !valid_name(arg))) {
        error_at(ld, ld->line, "[%s]: needs a name of letters, digits, '_' or '-', like [%s sessions]", name, name);
        return;
    }
    if (!named && arg) {
        error_at(ld, ld->line, "[%s %s]: [%s] takes no name", name, arg, name);
        return;
    }
    for (unsigned i = 0; i < ld->n_secs; i++) {
        struct sect_seen *s = &ld->secs[i];
        if ((int)s->sect != kind)
            continue;
        const char *other = kind == SECT_RESOURCE ? c->resources[s->index].name
                          : kind == SECT_STREAM   ? c->streams[s->index].name
                                                  : NULL;
        if (!named || strcmp(other, arg) == 0) {
            error_at(ld, ld->line, "[%s%s%s]: duplicate section (first at line %d)", name,
                     named ? " " : "", named ? arg : "", s->line);
            return;
        }
    }

    int index = 0;
    switch (kind) {
    case SECT_REDIS: c->has_redis = true; break;
    case SECT_POSTGRES: c->has_postgres = true; break;
    case SECT_UPSTREAM: c->has_upstream = true; break;
    case SECT_RESOURCE:
        index = (int)c->n_resources++;
        c->resources = mem_realloc(c->resources, c->n_resources * sizeof(*c->resources));
        memset(&c->resources[index], 0, sizeof(c->resources[index]));
        c->resources[index].name = mem_strdup(arg);
        c->resources[index].line = ld->line;
        break;
    case SECT_STREAM:
        index = (int)c->n_streams++;
        c->streams = mem_realloc(c->streams, c->n_streams * sizeof(*c->streams));
        memset(&c->streams[index], 0, sizeof(c->streams[index]));
        c->streams[index].name = mem_strdup(arg);
        c->streams[index].line = ld->line;
        break;
    default: break;
    }
    apply_defaults(ld, (enum cfg_sect)kind, sect_struct(c, (enum cfg_sect)kind, index));
    ld->secs = mem_realloc(ld->secs, (ld->n_secs + 1) * sizeof(*ld->secs));
    ld->cur = &ld->secs[ld->n_secs++];
    *ld->cur = (struct sect_seen){ (enum cfg_sect)kind, index, ld->line, 0 };
    ld->cur_bad = false;
}

/* inih's fgets-style reader: counts lines and handles [section] lines. */
static char *reader_cb(char *str, int num, void *stream)
{
    struct loader *ld = stream;
    /* Read by hand rather than with fgets, which gives no length: a NUL
     * byte would end the line early for strlen and look like a cut-off
     * line. Config files are small; fgetc per byte is fine. */
    size_t n = 0;
    int ch = EOF;
    bool nul = false;
    while (n + 1 < (size_t)num && (ch = fgetc(ld->fp)) != EOF) {
        nul |= ch == '\0';
        str[n++] = (char)ch;
        if (ch == '\n')
            break;
    }
    if (n == 0)
        return NULL;
    str[n] = '\0';
    ld->line++;
    if (nul) {
        error_at(ld, ld->line, "line contains a NUL byte");
        if (str[n - 1] != '\n')
            while ((ch = fgetc(ld->fp)) != EOF && ch != '\n')
                ;
        str[0] = '\0'; /* inih sees a blank line */
        return str;
    }
    size_t len = n;
    if (str[len - 1] != '\n' && (ch = fgetc(ld->fp)) != EOF && ungetc(ch, ld->fp) != EOF) {
        error_at(ld, ld->line, "line is longer than %d bytes", num - 3);
        while ((ch = fgetc(ld->fp)) != EOF && ch != '\n')
            ;
        str[0] = '\0'; /* inih sees a blank line */
        return str;
    }
    char *p = str;
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '\0' || *p == ';' || *p == '#')
        return str;
    if (*p == '[') {
        char *close = strchr(p, ']');
        if (close == NULL) {
            error_at(ld, ld->line, "section header has no closing ']'");
            ld->cur = NULL;
            ld->cur_bad = true;
            str[0] = '\0';
            return str;
        }
        char inner[256];
        size_t k = (size_t)(close - p - 1);
        if (k >= sizeof(inner))
            k = sizeof(inner) - 1;
        memcpy(inner, p + 1, k);
        inner[k] = '\0';
        begin_section(ld, inner);
        return str;
    }
    if (strpbrk(p, "=:") == NULL) {
        error_at(ld, ld->line, "expected \"key = value\"");
        str[0] = '\0';
    }
    return str;
}

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
static void scrub_secrets(enum cfg_type type, const char *value, struct buf *text)
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

static int handler_cb(void *user, const char *section, const char *name, const char *value)
{
    struct loader *ld = user;
    (void)section; /* the reader already tracks sections, with line numbers */
    if (ld->cur_bad)
        return 1;
    if (ld->cur == NULL) {
        error_at(ld, ld->line, "%s: key outside any section; put it under [batchd] or another section", name);
        return 1;
    }
    struct config *c = ld->cfg;
    enum cfg_sect sect = ld->cur->sect;
    void *s = sect_struct(c, sect, ld->cur->index);
    char label[100];
    sect_label(c, sect, ld->cur->index, label, sizeof(label));

    /* Values may be quoted to keep leading/trailing spaces or a " ;". */
    char vbuf[MAX_LINE];
    size_t vlen = strlen(value);
    if (vlen >= 2 && value[0] == '"' && value[vlen - 1] == '"') {
        memcpy(vbuf, value + 1, vlen - 2);
        vbuf[vlen - 2] = '\0';
        value = vbuf;
    }

    unsigned bit = 0;
    for (size_t i = 0; i < config_n_keys; i++) {
        const struct cfg_key *k = &config_keys[i];
        if (k->sect != sect)
            continue;
        if (strcmp(k->name, name) == 0) {
            if (ld->cur->keys_seen & (1ULL << bit)) {
                error_at(ld, ld->line, "%s %s: duplicate key", label, name);
                return 1;
            }
            ld->cur->keys_seen |= 1ULL << bit;
            struct buf why = BUF_INIT;
            if (config_key_set(k, s, value, &why) != 0) {
                struct buf shown = BUF_INIT;
                config_mask_value(k->type, value, &shown);
                scrub_secrets(k->type, value, &why);
                error_at(ld, ld->line, "%s %s = %s: %s", label, name, shown.data ? shown.data : "",
                         why.data ? why.data : "");
                buf_deinit(&shown);
            }
            buf_deinit(&why);
            return 1;
        }
        bit++;
    }
    error_at(ld, ld->line, "%s %s: unknown key", label, name);
    return 1;
}

static void check_required(struct loader *ld)
{
    struct config *c = ld->cfg;
    for (unsigned i = 0; i < ld->n_secs; i++) {
        struct sect_seen *ss = &ld->secs[i];
        unsigned bit = 0;
        for (size_t k = 0; k < config_n_keys; k++) {
            if (config_keys[k].sect != ss->sect)
                continue;
            if (config_keys[k].def == NULL && !(ss->keys_seen & (1ULL << bit))) {
                char label[100];
                error_at(ld, ss->line, "%s: missing required key %s",
                         sect_label(c, ss->sect, ss->index, label, sizeof(label)), config_keys[k].name);
            }
            bit++;
        }
    }
}

static bool addr_same(const struct cfg_addr *a, const struct cfg_addr *b)
{
    return a->len && a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

static void check_cross(struct loader *ld)
{
    struct config *c = ld->cfg;
    struct cfg_batchd *b = &c->batchd;
    int bline = 1;
    for (unsigned i = 0; i < ld->n_secs; i++)
        if (ld->secs[i].sect == SECT_BATCHD)
            bline = ld->secs[i].line;
    if (addr_same(&b->listen, &b->admin_listen))
        error_at(ld, bline, "[batchd] admin_listen: must differ from listen");
    if (b->max_uri_bytes > b->max_header_bytes)
        error_at(ld, bline, "[batchd] max_uri_bytes: must not exceed max_header_bytes (%lld)",
                 (long long)b->max_header_bytes);

    for (unsigned i = 0; i < c->n_resources; i++) {
        struct cfg_resource *r = &c->resources[i];
        if (!c->has_postgres)
            error_at(ld, r->line, "[resource %s]: needs a [postgres] section, its source of truth", r->name);
        for (unsigned j = 0; j < i; j++)
            if (r->path && c->resources[j].path && strcmp(r->path, c->resources[j].path) == 0)
                error_at(ld, r->line, "[resource %s] path: %s is already used by [resource %s]",
                         r->name, r->path, c->resources[j].name);
        if (r->max_batch_keys < 1 || r->max_ids < 1)
            error_at(ld, r->line, "[resource %s]: max_ids and max_batch_keys must be positive", r->name);
    }
    for (unsigned i = 0; i < c->n_streams; i++) {
        struct cfg_stream *s = &c->streams[i];
        if (!c->has_redis)
            error_at(ld, s->line, "[stream %s]: needs a [redis] section for pub/sub and history", s->name);
        for (unsigned j = 0; j < i; j++)
            if (s->path && c->streams[j].path && strcmp(s->path, c->streams[j].path) == 0)
                error_at(ld, s->line, "[stream %s] path: %s is already used by [stream %s]",
                         s->name, s->path, c->streams[j].name);
        if (s->max_event_bytes > s->client_queue_bytes)
            error_at(ld, s->line, "[stream %s] max_event_bytes: must not exceed client_queue_bytes (%lld), or one event would overflow a client",
                     s->name, (long long)s->client_queue_bytes);
    }
}

struct config *config_load(const char *path, struct buf *errors)
{
    struct loader ld = { 0 };
    ld.file = path;
    ld.errors = errors;
    ld.cfg = mem_calloc(1, sizeof(struct config));
    ld.cfg->refs = 1;
    live_configs++;
    ld.cfg->file = mem_strdup(path);

    ld.fp = fopen(path, "r");
    if (ld.fp == NULL) {
        buf_appendf(errors, "%s: cannot open: %s\n", path, strerror(errno));
        config_free(ld.cfg);
        return NULL;
    }
    /* Debian's libinih exposes its compile-time options as globals. */
    ini_use_stack = false;
    ini_max_line = MAX_LINE;
    ini_initial_alloc = MAX_LINE;
    ini_allow_realloc = false;
    ini_allow_multiline = false;
    ini_stop_on_first_error = false;
    int rc = ini_parse_stream(reader_cb, &ld, handler_cb, &ld);
    fclose(ld.fp);
    if (rc > 0 && ld.n_errors == 0)
        error_at(&ld, rc, "cannot parse this line");
    else if (rc < 0 && ld.n_errors == 0)
        error_at(&ld, 0, "cannot read the file");

    bool has_batchd = false;
    for (unsigned i = 0; i < ld.n_secs; i++)
        has_batchd |= ld.secs[i].sect == SECT_BATCHD;
    if (!has_batchd)
        error_at(&ld, ld.line, "[batchd]: required section is missing");
    else
        check_required(&ld);
    if (ld.n_errors == 0)
        check_cross(&ld);

    free(ld.secs);
    if (ld.n_errors) {
        config_free(ld.cfg);
        return NULL;
    }
    for (unsigned i = 0; i < ld.cfg->n_resources; i++)
        ld.cfg->resources[i].owner = ld.cfg;
    for (unsigned i = 0; i < ld.cfg->n_streams; i++)
        ld.cfg->streams[i].owner = ld.cfg;
    return ld.cfg;
}

static void release_sect(enum cfg_sect sect, void *s)
{
    for (size_t i = 0; i < config_n_keys; i++)
        if (config_keys[i].sect == sect)
            config_key_release(&config_keys[i], s);
}

static void config_free(struct config *c)
{
    live_configs--;
    release_sect(SECT_BATCHD, &c->batchd);
    release_sect(SECT_REDIS, &c->redis);
    release_sect(SECT_POSTGRES, &c->postgres);
    release_sect(SECT_UPSTREAM, &c->upstream);
    for (unsigned i = 0; i < c->n_resources; i++) {
        release_sect(SECT_RESOURCE, &c->resources[i]);
        free(c->resources[i].name);
    }
    for (unsigned i = 0; i < c->n_streams; i++) {
        release_sect(SECT_STREAM, &c->streams[i]);
        free(c->streams[i].name);
    }
    free(c->resources);
    free(c->streams);
    free(c->file);
    free(c);
}

struct config *config_ref(struct config *c)
{
    c->refs++;
    return c;
}

void config_unref(struct config *c)
{
    if (c != NULL && --c->refs == 0)
        config_free(c);
}

unsigned config_live_count(void)
{
    return live_configs;
}

unsigned config_restart_needed(const struct config *old, const struct config *new_, struct buf *out)
{
    unsigned n = 0;
    const bool present[2][SECT_UPSTREAM + 1] = {
        { true, old->has_redis, old->has_postgres, old->has_upstream },
        { true, new_->has_redis, new_->has_postgres, new_->has_upstream },
    };
    for (int sect = SECT_BATCHD; sect <= SECT_UPSTREAM; sect++) {
        if (present[0][sect] != present[1][sect]) {
            buf_appendf(out, "[%s] section %s\n", config_sect_names[sect],
                        present[1][sect] ? "added" : "removed");
            n++;
            continue;
        }
        if (!present[0][sect])
            continue;
        const void *a = sect_struct((struct config *)old, (enum cfg_sect)sect, 0);
        const void *b = sect_struct((struct config *)new_, (enum cfg_sect)sect, 0);
        for (size_t i = 0; i < config_n_keys; i++) {
            const struct cfg_key *k = &config_keys[i];
            if ((int)k->sect != sect || k->reload || config_key_equal(k, a, b))
                continue;
            buf_appendf(out, "[%s] %s\n", config_sect_names[sect], k->name);
            n++;
        }
    }
    return n;
}

/* Swaps n bytes between a and b. */
static void swap_bytes(void *a, void *b, size_t n)
{
    unsigned char *x = a, *y = b;
    for (size_t i = 0; i < n; i++) {
        unsigned char t = x[i];
        x[i] = y[i];
        y[i] = t;
    }
}

void config_keep_restart_settings(struct config *running, struct config *next)
{
    bool *present[2][SECT_UPSTREAM + 1] = {
        { NULL, &running->has_redis, &running->has_postgres, &running->has_upstream },
        { NULL, &next->has_redis, &next->has_postgres, &next->has_upstream },
    };
    for (int sect = SECT_BATCHD; sect <= SECT_UPSTREAM; sect++) {
        void *a = sect_struct(running, (enum cfg_sect)sect, 0);
        void *b = sect_struct(next, (enum cfg_sect)sect, 0);
        if (sect != SECT_BATCHD && *present[0][sect] != *present[1][sect]) {
            /* A section added or removed: the whole of it waits for a restart. */
            size_t size = sect == SECT_REDIS      ? sizeof(struct cfg_redis)
                        : sect == SECT_POSTGRES ? sizeof(struct cfg_postgres)
                                                : sizeof(struct cfg_upstream);
            swap_bytes(a, b, size);
            bool t = *present[0][sect];
            *present[0][sect] = *present[1][sect];
            *present[1][sect] = t;
            continue;
        }
        for (size_t i = 0; i < config_n_keys; i++) {
            const struct cfg_key *k = &config_keys[i];
            if ((int)k->sect != sect || k->reload || config_key_equal(k, a, b))
                continue;
            swap_bytes((char *)a + k->off, (char *)b + k->off, config_key_size(k));
        }
    }
}
