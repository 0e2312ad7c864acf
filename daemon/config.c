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
    int index;              /* into resources/streams/lists; 0 for singletons */
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
    case SECT_AUTH: return &c->auth;
    case SECT_LIST: return &c->lists[index];
    case SECT_CORS: return &c->cors;
    default: return NULL;
    }
}

static const char *sect_label(struct config *c, enum cfg_sect sect, int index, char *out, size_t cap)
{
    if (sect == SECT_RESOURCE)
        snprintf(out, cap, "[resource %s]", c->resources[index].name);
    else if (sect == SECT_STREAM)
        snprintf(out, cap, "[stream %s]", c->streams[index].name);
    else if (sect == SECT_LIST)
        snprintf(out, cap, "[list %s]", c->lists[index].name);
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
        error_at(ld, ld->line, "[%s]: unknown section (expected batchd, redis, postgres, upstream, auth, cors, resource NAME, stream NAME or list NAME)", name);
        return;
    }
    bool named = config_sect_named(kind);
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
                          : kind == SECT_LIST     ? c->lists[s->index].name
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
    case SECT_AUTH: c->has_auth = true; break;
    case SECT_CORS: c->has_cors = true; break;
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
    case SECT_LIST:
        index = (int)c->n_lists++;
        c->lists = mem_realloc(c->lists, c->n_lists * sizeof(*c->lists));
        memset(&c->lists[index], 0, sizeof(c->lists[index]));
        c->lists[index].name = mem_strdup(arg);
        c->lists[index].line = ld->line;
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
                config_scrub_secrets(k->type, value, &why);
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

static const struct cfg_resource *find_resource(const struct config *c, const char *name)
{
    for (unsigned i = 0; name && i < c->n_resources; i++)
        if (strcmp(c->resources[i].name, name) == 0)
            return &c->resources[i];
    return NULL;
}

static bool word_ok(const char *s)
{
    if (*s == '\0' || strlen(s) > 64)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_')
            return false;
    return true;
}

/* [auth], access = ..., and [list] sections: what each needs from the others. */
static void check_access(struct loader *ld)
{
    struct config *c = ld->cfg;
    const struct cfg_auth *a = &c->auth;
    bool jwt = a->jwt_secret_file[0] || a->jwt_public_keys.n;
    bool forward = a->check_url[0] != '\0';
    int aline = 1;
    for (unsigned i = 0; i < ld->n_secs; i++)
        if (ld->secs[i].sect == SECT_AUTH)
            aline = ld->secs[i].line;
    if (c->has_auth && !jwt && !forward)
        error_at(ld, aline, "[auth]: set jwt_secret_file or jwt_public_keys (JWTs), check_url (forward auth), or both");
    if (forward && (a->check_url[0] != '/' || strpbrk(a->check_url, " \t\r\n#")))
        error_at(ld, aline, "[auth] check_url: must be a path on [upstream], like /api/auth/whoami");
    if (forward && !c->has_upstream)
        error_at(ld, aline, "[auth] check_url: needs an [upstream] section, the app that answers it");
    if (forward && a->check_principal_header[0] == '\0')
        error_at(ld, aline, "[auth] check_principal_header: must be set when check_url is");
    if (a->jwt_cookie[0] && strpbrk(a->jwt_cookie, " \t;,=\"\r\n"))
        error_at(ld, aline, "[auth] jwt_cookie: must be a cookie name");

    for (unsigned i = 0; i < c->n_resources; i++) {
        const struct cfg_resource *r = &c->resources[i];
        if (r->access != ACCESS_PUBLIC && !c->has_auth)
            error_at(ld, r->line, "[resource %s] access: %s needs an [auth] section", r->name,
                     r->access == ACCESS_OWNER ? "owner" : "authenticated");
        if (r->access == ACCESS_OWNER && r->owner_field[0] == '\0')
            error_at(ld, r->line, "[resource %s] owner_field: required with access = owner (the top-level field naming the owner)", r->name);
        if (r->local_cache_bytes > 0 && r->local_cache_bytes < 65536)
            error_at(ld, r->line, "[resource %s] local_cache_bytes: 0 (off) or at least 65536", r->name);
        const char *at = strstr(r->key, "{id}");
        if (r->local_cache_bytes > 0 && (at == NULL || strstr(at + 4, "{id}") != NULL))
            error_at(ld, r->line, "[resource %s] local_cache_bytes needs a key with exactly one {id} (invalidations name keys)", r->name);
        if (r->local_cache_bytes > 0 && !c->has_redis)
            error_at(ld, r->line, "[resource %s] local_cache_bytes: the near cache needs a [redis] section (Redis tells it what changed)", r->name);
    }
    for (unsigned i = 0; i < c->n_streams; i++) {
        const struct cfg_stream *s = &c->streams[i];
        if (s->access != ACCESS_PUBLIC && !c->has_auth)
            error_at(ld, s->line, "[stream %s] access: %s needs an [auth] section", s->name,
                     s->access == ACCESS_OWNER ? "owner" : "authenticated");
        const struct cfg_resource *r = find_resource(c, s->owner_resource);
        if (s->access == ACCESS_OWNER && r == NULL)
            error_at(ld, s->line, "[stream %s] owner_resource: access = owner needs the name of a [resource] whose {id} document owns the stream", s->name);
        else if (s->access == ACCESS_OWNER && r->owner_field[0] == '\0')
            error_at(ld, s->line, "[stream %s] owner_resource: [resource %s] has no owner_field", s->name, r->name);
        if (s->owners_publish && s->access != ACCESS_OWNER)
            error_at(ld, s->line, "[stream %s] owners_publish: needs access = owner", s->name);
    }
    for (unsigned i = 0; i < c->n_lists; i++) {
        const struct cfg_listing *l = &c->lists[i];
        if (!c->has_auth)
            error_at(ld, l->line, "[list %s]: needs an [auth] section (its pages belong to the principal)", l->name);
        if (!c->has_postgres)
            error_at(ld, l->line, "[list %s]: needs a [postgres] section for page_query", l->name);
        if (l->ttl > 0 && !c->has_redis)
            error_at(ld, l->line, "[list %s] ttl: caching pages needs a [redis] section (or ttl = 0)", l->name);
        if (find_resource(c, l->resource) == NULL)
            error_at(ld, l->line, "[list %s] resource: no [resource %s]", l->name, l->resource);
        if (l->default_limit > l->max_limit)
            error_at(ld, l->line, "[list %s] default_limit: must not exceed max_limit (%lld)", l->name,
                     (long long)l->max_limit);
        if (l->params.n > 16)
            error_at(ld, l->line, "[list %s] params: at most 16", l->name);
        for (unsigned k = 0; k < l->params.n; k++) {
            const char *p = l->params.items[k];
            if (!word_ok(p) || strcmp(p, "limit") == 0 || strcmp(p, "after") == 0 ||
                strcmp(p, "access_token") == 0)
                error_at(ld, l->line, "[list %s] params: \"%s\" must be letters, digits or '_', and not limit, after or access_token",
                         l->name, p);
        }
        for (unsigned j = 0; j < c->n_resources; j++)
            if (l->path && c->resources[j].path && strcmp(l->path, c->resources[j].path) == 0)
                error_at(ld, l->line, "[list %s] path: %s is already used by [resource %s]", l->name,
                         l->path, c->resources[j].name);
        for (unsigned j = 0; j < i; j++)
            if (l->path && c->lists[j].path && strcmp(l->path, c->lists[j].path) == 0)
                error_at(ld, l->line, "[list %s] path: %s is already used by [list %s]", l->name,
                         l->path, c->lists[j].name);
    }
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
    if (c->has_redis) {
        int rline = 1;
        for (unsigned i = 0; i < ld->n_secs; i++)
            if (ld->secs[i].sect == SECT_REDIS)
                rline = ld->secs[i].line;
        const struct cfg_redis_url *u = &c->redis.url;
        if (u->n_seeds > 1 && !c->redis.cluster)
            error_at(ld, rline, "[redis] url: several hosts are a cluster's seed nodes; set cluster = yes");
        if (c->redis.cluster && u->db != 0)
            error_at(ld, rline, "[redis] url: a Redis Cluster has only database 0 (url ends in /%d)", u->db);
    }

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
    check_access(ld);
    int cline = 0;
    for (unsigned i = 0; i < ld->n_secs; i++)
        if (ld->secs[i].sect == SECT_CORS)
            cline = ld->secs[i].line;
    if (c->has_cors && c->cors.credentials && c->cors.origins.n &&
        strcmp(c->cors.origins.items[0], "*") == 0)
        error_at(ld, cline, "[cors] origins: \"*\" cannot go with credentials = yes (browsers refuse it); list the origins");
    if (c->has_cors && c->cors.credentials && c->cors.headers.n &&
        strcmp(c->cors.headers.items[0], "*") == 0)
        error_at(ld, cline, "[cors] headers: \"*\" cannot go with credentials = yes (browsers read it as a header named *); list the headers");
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

    /* [auth] may be absent: its fields still hold their defaults ("" for off). */
    apply_defaults(&ld, SECT_AUTH, &ld.cfg->auth);
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
    for (unsigned i = 0; i < ld.cfg->n_lists; i++)
        ld.cfg->lists[i].owner = ld.cfg;
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
    release_sect(SECT_AUTH, &c->auth);
    release_sect(SECT_CORS, &c->cors);
    for (unsigned i = 0; i < c->n_lists; i++) {
        release_sect(SECT_LIST, &c->lists[i]);
        free(c->lists[i].name);
    }
    free(c->resources);
    free(c->streams);
    free(c->lists);
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
