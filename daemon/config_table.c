/*
 * config_table: every setting batchd reads, and the parser for each type.
 *
 * To add a setting: add a field to its struct in config.h, a row here, and
 * a commented line to conf/batchd.ini. Nothing else reads the file.
 */
#include "daemon/config_table.h"

#include <ctype.h>
#include <errno.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/config.h"
#include "daemon/log.h"
#include "proto/connlist.h"
#include "proto/mem.h"
#include "proto/url.h"

#define KB 1024LL
#define MB (1024LL * 1024)
#define GB (1024LL * 1024 * 1024)

const char *const config_sect_names[SECT__COUNT] = {
    [SECT_BATCHD] = "batchd",     [SECT_REDIS] = "redis",       [SECT_POSTGRES] = "postgres",
    [SECT_UPSTREAM] = "upstream", [SECT_RESOURCE] = "resource", [SECT_STREAM] = "stream",
    [SECT_AUTH] = "auth",         [SECT_LIST] = "list",         [SECT_CORS] = "cors",
};

#define B(name, type, min, max, def, reload) \
    { SECT_BATCHD, #name, type, min, max, def, reload, offsetof(struct cfg_batchd, name) }
#define R(name, type, min, max, def, reload) \
    { SECT_REDIS, #name, type, min, max, def, reload, offsetof(struct cfg_redis, name) }
#define P(name, type, min, max, def, reload) \
    { SECT_POSTGRES, #name, type, min, max, def, reload, offsetof(struct cfg_postgres, name) }
#define U(name, type, min, max, def, reload) \
    { SECT_UPSTREAM, #name, type, min, max, def, reload, offsetof(struct cfg_upstream, name) }
#define RS(name, type, min, max, def) \
    { SECT_RESOURCE, #name, type, min, max, def, true, offsetof(struct cfg_resource, name) }
#define ST(name, type, min, max, def) \
    { SECT_STREAM, #name, type, min, max, def, true, offsetof(struct cfg_stream, name) }
#define A(name, type, min, max, def) \
    { SECT_AUTH, #name, type, min, max, def, true, offsetof(struct cfg_auth, name) }
#define L(name, type, min, max, def) \
    { SECT_LIST, #name, type, min, max, def, true, offsetof(struct cfg_listing, name) }
#define C(name, type, min, max, def) \
    { SECT_CORS, #name, type, min, max, def, true, offsetof(struct cfg_cors, name) }

const struct cfg_key config_keys[] = {
    B(listen, CFG_ADDR, 0, 0, "127.0.0.1:8080", false),
    B(admin_listen, CFG_ADDR_OPT, 0, 0, "", false),
    B(reuseport, CFG_BOOL, 0, 0, "no", false),
    B(workers, CFG_INT, 0, 256, "1", false),
    B(max_connections, CFG_INT, 1, 1000000, "10000", true),
    B(header_timeout_ms, CFG_INT, 100, 3600000, "10000", true),
    B(idle_timeout_ms, CFG_INT, 100, 86400000, "60000", true),
    B(max_header_bytes, CFG_INT, 1 * KB, 1 * MB, "16384", true),
    B(max_uri_bytes, CFG_INT, 64, 1 * MB, "8192", true),
    B(max_body_bytes, CFG_INT, 0, 1 * GB, "1048576", true),
    B(max_pipeline, CFG_INT, 1, 1024, "32", true),
    B(write_queue_bytes, CFG_INT, 4 * KB, 1 * GB, "262144", true),
    B(shutdown_grace_ms, CFG_INT, 0, 3600000, "30000", true),
    B(drain_idle_ms, CFG_INT, 0, 60000, "1000", true),
    B(slow_ms, CFG_INT, 0, 3600000, "100", true),
    B(log_level, CFG_LOG_LEVEL, 0, 0, "info", true),
    B(admin_token, CFG_SECRET, 0, 0, "", true),
    B(gzip, CFG_BOOL, 0, 0, "yes", true),
    B(gzip_level, CFG_INT, 1, 9, "1", true),
    B(gzip_min_bytes, CFG_INT, 0, 1 * GB, "1400", true),
    B(etag, CFG_BOOL, 0, 0, "yes", true),

    R(url, CFG_REDIS_URL, 0, 0, "redis://127.0.0.1:6379/0", false),
    R(pool_size, CFG_INT, 1, 256, "4", false),
    R(connect_timeout_ms, CFG_INT, 10, 600000, "2000", true),
    R(command_timeout_ms, CFG_INT, 10, 600000, "2000", true),
    R(ping_interval_ms, CFG_INT, 100, 3600000, "5000", true),
    R(max_pending, CFG_INT, 1, 10000000, "50000", true),
    R(cluster, CFG_BOOL, 0, 0, "no", false),
    R(cluster_refresh_ms, CFG_INT, 100, 3600000, "5000", true),

    P(conninfo, CFG_CONNINFO, 0, 0, NULL, false),
    P(pool_size, CFG_INT, 1, 256, "4", false),
    P(connect_timeout_ms, CFG_INT, 10, 600000, "2000", true),
    P(query_timeout_ms, CFG_INT, 10, 3600000, "5000", true),
    P(ping_interval_ms, CFG_INT, 100, 3600000, "5000", true),
    P(max_pending, CFG_INT, 1, 1000000, "1000", true),
    P(replicas, CFG_CONNINFO_LIST, 0, 0, "", false),
    P(max_replica_lag_ms, CFG_INT, 10, 3600000, "1000", true),
    P(recent_writes_bytes, CFG_INT, 4 * KB, 1 * GB, "1048576", true),

    U(url, CFG_HTTP_URL, 0, 0, NULL, false),
    U(pool_size, CFG_INT, 1, 10000, "64", false),
    U(connect_timeout_ms, CFG_INT, 10, 600000, "2000", true),
    U(timeout_ms, CFG_INT, 10, 3600000, "30000", true),
    U(idle_timeout_ms, CFG_INT, 100, 3600000, "4000", true),
    U(max_body_bytes, CFG_INT, 0, 1024 * GB, "0", true),
    U(buffer_bytes, CFG_INT, 4 * KB, 64 * MB, "262144", true),
    U(max_waiting, CFG_INT, 0, 1000000, "1024", true),
    U(request_buffer_bytes, CFG_INT, 0, 64 * MB, "65536", true),
    U(underscores_in_headers, CFG_BOOL, 0, 0, "no", true),
    U(trusted_proxies, CFG_CIDR_LIST, 0, 0, "", true),
    U(websocket, CFG_BOOL, 0, 0, "yes", true),
    U(tunnel_idle_timeout_ms, CFG_INT, 100, 86400000, "300000", true),
    U(max_tunnels, CFG_INT, 0, 1000000, "1024", true),
    U(tunnel_buffer_bytes, CFG_INT, 4 * KB, 64 * MB, "262144", true),

    RS(path, CFG_PATH, 0, 0, NULL),
    RS(key, CFG_KEY_TPL, 0, 0, NULL),
    RS(ttl, CFG_INT, 1, 31536000, "3600"),
    RS(negative_ttl, CFG_INT, 0, 86400, "30"),
    RS(max_ids, CFG_INT, 1, 100000, "1000"),
    RS(max_batch_keys, CFG_INT, 1, 100000, "1000"),
    RS(batch_window_us, CFG_INT, 0, 1000000, "0"),
    RS(max_ids_in_flight, CFG_INT, 1, 10000000, "50000"),
    RS(by_ids, CFG_SQL, 0, 0, NULL),
    RS(invalidate, CFG_TPL_LIST, 0, 0, ""),
    RS(access, CFG_ACCESS, 0, 0, "public"),
    RS(owner_field, CFG_STR_OPT, 0, 0, ""),
    RS(local_cache_bytes, CFG_INT, 0, 1024 * GB, "0"),

    ST(path, CFG_PATH_TPL, 0, 0, NULL),
    ST(key, CFG_KEY_TPL, 0, 0, NULL),
    ST(max_len, CFG_INT, 1, 10000000, "1000"),
    ST(ping_interval_ms, CFG_INT, 100, 3600000, "15000"),
    ST(retry_ms, CFG_INT, 100, 3600000, "2000"),
    ST(client_queue_bytes, CFG_INT, 4 * KB, 1 * GB, "262144"),
    ST(max_event_bytes, CFG_INT, 1, 16 * MB, "65536"),
    ST(max_sse_clients, CFG_INT, 1, 1000000, "15000"),
    ST(socket_send_buffer_bytes, CFG_INT, 0, 64 * MB, "65536"),
    ST(idempotency_window_ms, CFG_INT, 1000, 86400000, "300000"),
    ST(sync_held_bytes, CFG_INT, 4 * KB, 1 * GB, "1048576"),
    ST(sync_gap_bytes, CFG_INT, 4 * KB, 1 * GB, "1048576"),
    ST(access, CFG_ACCESS, 0, 0, "public"),
    ST(owner_resource, CFG_STR_OPT, 0, 0, ""),
    ST(owners_publish, CFG_BOOL, 0, 0, "no"),

    A(jwt_secret_file, CFG_STR_OPT, 0, 0, ""),
    A(jwt_public_keys, CFG_STR_LIST, 0, 0, ""),
    A(jwt_issuer, CFG_STR_OPT, 0, 0, ""),
    A(jwt_audience, CFG_STR_OPT, 0, 0, ""),
    A(principal_claim, CFG_STR, 0, 0, "sub"),
    A(leeway_s, CFG_INT, 0, 3600, "30"),
    A(max_token_bytes, CFG_INT, 64, 64 * KB, "8192"),
    A(jwt_cookie, CFG_STR_OPT, 0, 0, ""),
    A(query_token, CFG_BOOL, 0, 0, "yes"),
    A(check_url, CFG_STR_OPT, 0, 0, ""),
    A(check_principal_header, CFG_HEADER, 0, 0, "X-Principal"),
    A(check_cache_ms, CFG_INT, 0, 3600000, "5000"),
    A(check_cache_entries, CFG_INT, 1, 10000000, "100000"),
    A(check_timeout_ms, CFG_INT, 10, 600000, "2000"),
    A(forward_principal_header, CFG_HEADER, 0, 0, "X-Principal"),

    L(path, CFG_PATH, 0, 0, NULL),
    L(resource, CFG_STR, 0, 0, NULL),
    L(page_query, CFG_SQL, 0, 0, NULL),
    L(params, CFG_STR_LIST, 0, 0, ""),
    L(default_limit, CFG_INT, 1, 10000, "20"),
    L(max_limit, CFG_INT, 1, 10000, "200"),
    L(ttl, CFG_INT, 0, 86400, "30"),
    L(max_cursor_bytes, CFG_INT, 16, 4096, "512"),
    L(invalidate, CFG_PATH_LIST, 0, 0, ""),
    L(max_pages_in_flight, CFG_INT, 1, 1000000, "1000"),
    L(max_cached_pages, CFG_INT, 1, 100000, "100"),
    C(origins, CFG_ORIGIN_LIST, 0, 0, NULL),
    C(methods, CFG_TOKEN_LIST, 0, 0, "GET, HEAD, POST"),
    C(headers, CFG_TOKEN_LIST, 0, 0, "Authorization, Content-Type, Last-Event-ID, If-None-Match"),
    C(expose_headers, CFG_TOKEN_LIST, 0, 0, "ETag, X-Cache, Server-Timing, Retry-After"),
    C(max_age, CFG_INT, 0, 86400, "600"),
    C(credentials, CFG_BOOL, 0, 0, "no"),
    C(proxied, CFG_BOOL, 0, 0, "no"),
};

const size_t config_n_keys = sizeof(config_keys) / sizeof(config_keys[0]);

/* --- field access ---------------------------------------------------------- */

#define FIELD(type, s, k) ((type *)((char *)(s) + (k)->off))
#define CFIELD(type, s, k) ((const type *)((const char *)(s) + (k)->off))

static void addr_release(struct cfg_addr *a)
{
    free(a->text);
    memset(a, 0, sizeof(*a));
}

static void list_release(struct cfg_list *l)
{
    for (unsigned i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof(*l));
}

/* The types whose value is one malloc'd string (char *). */
#define CFG_CASE_STRINGS                                                                \
    case CFG_STR:                                                                       \
    case CFG_SECRET:                                                                    \
    case CFG_CONNINFO:                                                                  \
    case CFG_PATH:                                                                      \
    case CFG_PATH_TPL:                                                                  \
    case CFG_KEY_TPL:                                                                   \
    case CFG_STR_OPT:                                                                   \
    case CFG_HEADER:                                                                    \
    case CFG_SQL

void config_key_release(const struct cfg_key *k, void *s)
{
    switch (k->type) {
    case CFG_INT:
    case CFG_BOOL:
    case CFG_LOG_LEVEL:
    case CFG_ACCESS:
        break;
    CFG_CASE_STRINGS:
        free(*FIELD(char *, s, k));
        *FIELD(char *, s, k) = NULL;
        break;
    case CFG_ADDR:
    case CFG_ADDR_OPT:
        addr_release(FIELD(struct cfg_addr, s, k));
        break;
    case CFG_REDIS_URL: {
        struct cfg_redis_url *u = FIELD(struct cfg_redis_url, s, k);
        free(u->text);
        free(u->host);
        free(u->password);
        free(u->username);
        for (unsigned i = 0; i < u->n_seeds; i++)
            free(u->seeds[i].host);
        free(u->seeds);
        memset(u, 0, sizeof(*u));
        break;
    }
    case CFG_HTTP_URL: {
        struct cfg_http_url *u = FIELD(struct cfg_http_url, s, k);
        free(u->text);
        free(u->host);
        addr_release(&u->addr);
        memset(u, 0, sizeof(*u));
        break;
    }
    case CFG_TPL_LIST:
    case CFG_STR_LIST:
    case CFG_PATH_LIST:
    case CFG_CONNINFO_LIST:
    case CFG_ORIGIN_LIST:
    case CFG_TOKEN_LIST:
        list_release(FIELD(struct cfg_list, s, k));
        break;
    case CFG_CIDR_LIST: {
        struct cfg_cidrs *l = FIELD(struct cfg_cidrs, s, k);
        free(l->items);
        free(l->text);
        memset(l, 0, sizeof(*l));
        break;
    }
    }
}

/* --- parsers ---------------------------------------------------------------- */

int config_parse_int(const char *v, int64_t *out)
{
    if (*v == '\0')
        return -1;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end != '\0')
        return -1;
    *out = x;
    return 0;
}

static bool tpl_has_id(const char *s)
{
    return strstr(s, "{id}") != NULL;
}

static int check_tpl(const char *v, bool need_id, bool allow_params, struct buf *why)
{
    const char *reason;
    if (!url_template_valid(v, &reason)) {
        buf_appendf(why, "path %s", reason);
        return -1;
    }
    if (need_id && !tpl_has_id(v)) {
        buf_append_str(why, "must contain {id}");
        return -1;
    }
    if (!allow_params && strchr(v, '{')) {
        buf_append_str(why, "must be a plain path like /v1/sessions; {id} is added by batchd");
        return -1;
    }
    return 0;
}

/* Calls fn for each item of a comma- or space-separated list; fn owns the
 * item (a NUL-terminated copy). Stops at the first failure. */
int config_each_item(const char *v, int (*fn)(char *item, void *arg, struct buf *why), void *arg,
                     struct buf *why)
{
    const char *p = v;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        if (*p == '\0')
            break;
        size_t n = strcspn(p, ", \t");
        if (fn(mem_strndup(p, n), arg, why) != 0)
            return -1;
        p += n;
    }
    return 0;
}

static void list_push(struct cfg_list *l, char *item)
{
    l->items = mem_realloc(l->items, (l->n + 1) * sizeof(char *));
    l->items[l->n++] = item;
}

/* List items: templates that must have {id} (a resource's invalidate), any
 * templates (a list's invalidate), or plain words. */
static int add_checked(char *item, bool need_id, void *arg, struct buf *why)
{
    if (check_tpl(item, need_id, true, why) != 0) {
        free(item);
        return -1;
    }
    list_push(arg, item);
    return 0;
}

static int add_tpl(char *item, void *arg, struct buf *why)
{
    return add_checked(item, true, arg, why);
}

static int add_path(char *item, void *arg, struct buf *why)
{
    return add_checked(item, false, arg, why);
}

static int add_word(char *item, void *arg, struct buf *why)
{
    (void)why;
    list_push(arg, item);
    return 0;
}

#define TCHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"

/* A method or header name (RFC 9110 token), or "*" alone. */
static int add_token(char *item, void *arg, struct buf *why)
{
    struct cfg_list *l = arg;
    size_t n = strlen(item);
    bool star = strcmp(item, "*") == 0;
    if (!star && (n > 64 || strspn(item, TCHARS) != n)) {
        buf_appendf(why, "\"%.64s\" is not a method or header name (RFC 9110 token, at most 64 bytes)", item);
        free(item);
        return -1;
    }
    if ((star && l->n) || (l->n && strcmp(l->items[0], "*") == 0)) {
        buf_append_str(why, "\"*\" stands alone");
        free(item);
        return -1;
    }
    list_push(l, item);
    return 0;
}

/* A web origin as browsers send it in Origin (RFC 6454): scheme "://" host
 * [":" port], no path, no user, no trailing '/'; or "*" alone. Kept in
 * lower case (browsers serialise scheme and host so; compared exactly). */
static int add_origin(char *item, void *arg, struct buf *why)
{
    struct cfg_list *l = arg;
    if (strcmp(item, "*") == 0 || (l->n && strcmp(l->items[0], "*") == 0)) {
        if (l->n == 0) {
            list_push(l, item);
            return 0;
        }
        buf_append_str(why, "\"*\" stands alone (any origin) or is left out");
        free(item);
        return -1;
    }
    for (char *p = item; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    const char *sep = strstr(item, "://");
    size_t scheme = sep ? (size_t)(sep - item) : 0;
    const char *host = sep ? sep + 3 : "";
    const char *rb = host[0] == '[' ? strchr(host, ']') : NULL; /* an IPv6 literal */
    size_t hlen = rb ? (size_t)(rb - host) + 1 : host[0] == '[' ? 0 : strcspn(host, ":");
    const char *port = host + hlen;
    bool ok = scheme > 0 && strspn(item, "abcdefghijklmnopqrstuvwxyz0123456789+.-") == scheme &&
              isalpha((unsigned char)item[0]) && strlen(item) <= 255 && hlen > 0 &&
              strspn(host, rb ? "[]:.0123456789abcdef" : "abcdefghijklmnopqrstuvwxyz0123456789-._") >= hlen &&
              (*port == '\0' || (port[1] != '\0' && strspn(port + 1, "0123456789") == strlen(port + 1) &&
                                  strlen(port + 1) <= 5));
    if (!ok || strcmp(item, "null") == 0) {
        buf_appendf(why, "\"%.80s\" is not an origin: scheme://host[:port], like https://app.example.com, with no path (\"null\" is never accepted)", item);
        free(item);
        return -1;
    }
    list_push(l, item);
    return 0;
}

/* An HTTP header name: RFC 9110 token characters, at most 64 of them. */
static int parse_header_name(const char *v, char **out, struct buf *why)
{
    size_t n = strlen(v);
    if (n > 64 || strspn(v, TCHARS) != n) {
        buf_append_str(why, "must be a header name (letters, digits, '-'), at most 64 bytes, or empty for off");
        return -1;
    }
    *out = mem_strdup(v);
    return 0;
}

static int parse_access(const char *v, int64_t *out, struct buf *why)
{
    static const char *const names[] = { [ACCESS_PUBLIC] = "public",
                                         [ACCESS_AUTHENTICATED] = "authenticated",
                                         [ACCESS_OWNER] = "owner" };
    for (int64_t i = 0; i < 3; i++) {
        if (strcmp(v, names[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    buf_append_str(why, "must be public, authenticated or owner");
    return -1;
}


/* pg_pool.c hands the conninfo to libpq as an expanded dbname: a URI or
 * text with '=' is read as connection options, anything else is a database
 * name. Parse it the same way here, so a typo fails the load rather than
 * every connection attempt. The reason may quote the value: config.c masks
 * secrets in it. */
static int check_conninfo(const char *v, struct buf *why)
{
    if (strncmp(v, "postgresql://", 13) != 0 && strncmp(v, "postgres://", 11) != 0 &&
        strchr(v, '=') == NULL)
        return 0;
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(v, &err);
    if (opts != NULL) {
        PQconninfoFree(opts);
        return 0;
    }
    size_t n = err ? strlen(err) : 0;
    while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' '))
        n--;
    buf_appendf(why, "%.*s", (int)n, err ? err : "out of memory");
    PQfreemem(err);
    return -1;
}

/* Most read replicas: each has its own pool and lag check. */
#define MAX_REPLICAS 16

static int parse_conninfo_list(const char *v, struct cfg_list *out, struct buf *why)
{
    struct connlist_item items[MAX_REPLICAS];
    int n = connlist_split(v, items, MAX_REPLICAS);
    if (n == CONNLIST_EMPTY_ITEM) {
        buf_append_str(why, "an empty conninfo between ';' (write \"host=a port=5432; host=b port=5432\")");
        return -1;
    }
    if (n == CONNLIST_TOO_MANY) {
        buf_appendf(why, "at most %d conninfos", MAX_REPLICAS);
        return -1;
    }
    if (n == CONNLIST_OPEN_QUOTE) {
        buf_append_str(why, "a quote that is never closed");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        char *item = mem_strndup(v + items[i].off, items[i].len);
        if (check_conninfo(item, why) != 0) {
            free(item);
            list_release(out);
            return -1;
        }
        list_push(out, item);
    }
    return 0;
}

static int parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = { "yes", "true", "on", "1" };
    static const char *const no[] = { "no", "false", "off", "0" };
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

int config_key_set(const struct cfg_key *k, void *s, const char *v, struct buf *why)
{
    config_key_release(k, s);
    switch (k->type) {
    case CFG_INT: {
        int64_t x;
        if (config_parse_int(v, &x) != 0) {
            buf_append_str(why, "must be a whole number");
            return -1;
        }
        if (x < k->min || x > k->max) {
            buf_appendf(why, "must be between %lld and %lld", (long long)k->min, (long long)k->max);
            return -1;
        }
        *FIELD(int64_t, s, k) = x;
        return 0;
    }
    case CFG_BOOL:
        if (parse_bool(v, FIELD(bool, s, k)) != 0) {
            buf_append_str(why, "must be yes or no");
            return -1;
        }
        return 0;
    case CFG_LOG_LEVEL: {
        enum log_level lvl;
        if (log_level_parse(v, &lvl) != 0) {
            buf_append_str(why, "must be one of debug, info, warn, error");
            return -1;
        }
        *FIELD(int64_t, s, k) = lvl;
        return 0;
    }
    case CFG_STR:
        if (*v == '\0') {
            buf_append_str(why, "must not be empty");
            return -1;
        }
        *FIELD(char *, s, k) = mem_strdup(v);
        return 0;
    case CFG_SECRET:
    case CFG_STR_OPT:
        *FIELD(char *, s, k) = mem_strdup(v);
        return 0;
    case CFG_HEADER:
        return parse_header_name(v, FIELD(char *, s, k), why);
    case CFG_ACCESS:
        return parse_access(v, FIELD(int64_t, s, k), why);
    case CFG_STR_LIST:
        return config_each_item(v, add_word, FIELD(struct cfg_list, s, k), why);
    case CFG_PATH_LIST:
        return config_each_item(v, add_path, FIELD(struct cfg_list, s, k), why);
    case CFG_TOKEN_LIST:
        return config_each_item(v, add_token, FIELD(struct cfg_list, s, k), why);
    case CFG_ORIGIN_LIST:
        return config_each_item(v, add_origin, FIELD(struct cfg_list, s, k), why);
    case CFG_CONNINFO:
        if (check_conninfo(v, why) != 0)
            return -1;
        *FIELD(char *, s, k) = mem_strdup(v);
        return 0;
    case CFG_CONNINFO_LIST:
        return parse_conninfo_list(v, FIELD(struct cfg_list, s, k), why);
    case CFG_ADDR_OPT:
        if (*v == '\0')
            return 0;
        /* fall through */
    case CFG_ADDR:
        return config_parse_addr(v, FIELD(struct cfg_addr, s, k), why);
    case CFG_REDIS_URL:
        return config_parse_redis_url(v, FIELD(struct cfg_redis_url, s, k), why);
    case CFG_HTTP_URL:
        return config_parse_http_url(v, FIELD(struct cfg_http_url, s, k), why);
    case CFG_PATH:
        if (check_tpl(v, false, false, why) != 0)
            return -1;
        if (strcmp(v, "/") == 0) {
            buf_append_str(why, "must not be \"/\"");
            return -1;
        }
        *FIELD(char *, s, k) = mem_strdup(v);
        return 0;
    case CFG_PATH_TPL:
        if (check_tpl(v, true, true, why) != 0)
            return -1;
        *FIELD(char *, s, k) = mem_strdup(v);
        return 0;
    case CFG_KEY_TPL:
        if (!tpl_has_id(v)) {
            buf_append_str(why, "must contain {id}, like session:{id}");
            return -1;
        }
        if (strlen(v) > 256 || strpbrk(v, " \t\r\n")) {
            buf_append_str(why, "must be at most 256 bytes with no spaces");
            return -1;
        }
        *FIELD(char *, s, k) = mem_strdup(v);
        return 0;
    case CFG_SQL:
        if (k->sect == SECT_LIST && (strstr(v, "$1") == NULL || strstr(v, "$2") == NULL || strstr(v, "$3") == NULL)) {
            buf_append_str(why, "must use $1 (the principal), $2 (the cursor, NULL on the first page) and $3 (the limit)");
            return -1;
        }
        if (strstr(v, "$1") == NULL) {
            buf_append_str(why, "must use $1, the text[] of ids");
            return -1;
        }
        *FIELD(char *, s, k) = mem_strdup(v);
        return 0;
    case CFG_TPL_LIST:
        return config_each_item(v, add_tpl, FIELD(struct cfg_list, s, k), why);
    case CFG_CIDR_LIST:
        return config_parse_cidr_list(v, FIELD(struct cfg_cidrs, s, k), why);
    }
    return -1;
}

size_t config_key_size(const struct cfg_key *k)
{
    switch (k->type) {
    case CFG_INT:
    case CFG_LOG_LEVEL:
    case CFG_ACCESS:
        return sizeof(int64_t);
    case CFG_BOOL:
        return sizeof(bool);
    case CFG_ADDR:
    case CFG_ADDR_OPT:
        return sizeof(struct cfg_addr);
    case CFG_REDIS_URL:
        return sizeof(struct cfg_redis_url);
    case CFG_HTTP_URL:
        return sizeof(struct cfg_http_url);
    case CFG_TPL_LIST:
    case CFG_STR_LIST:
    case CFG_PATH_LIST:
    case CFG_CONNINFO_LIST:
    case CFG_ORIGIN_LIST:
    case CFG_TOKEN_LIST:
        return sizeof(struct cfg_list);
    case CFG_CIDR_LIST:
        return sizeof(struct cfg_cidrs);
    default:
        return sizeof(char *);
    }
}

static bool str_same(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

bool config_key_equal(const struct cfg_key *k, const void *a, const void *b)
{
    switch (k->type) {
    case CFG_INT:
    case CFG_LOG_LEVEL:
    case CFG_ACCESS:
        return *CFIELD(int64_t, a, k) == *CFIELD(int64_t, b, k);
    case CFG_BOOL:
        return *CFIELD(bool, a, k) == *CFIELD(bool, b, k);
    CFG_CASE_STRINGS:
        return str_same(*CFIELD(char *, a, k), *CFIELD(char *, b, k));
    case CFG_ADDR:
    case CFG_ADDR_OPT:
        return str_same(CFIELD(struct cfg_addr, a, k)->text, CFIELD(struct cfg_addr, b, k)->text);
    case CFG_REDIS_URL: {
        const struct cfg_redis_url *x = CFIELD(struct cfg_redis_url, a, k);
        const struct cfg_redis_url *y = CFIELD(struct cfg_redis_url, b, k);
        return str_same(x->text, y->text) && str_same(x->password, y->password);
    }
    case CFG_HTTP_URL:
        return str_same(CFIELD(struct cfg_http_url, a, k)->text,
                        CFIELD(struct cfg_http_url, b, k)->text);
    case CFG_TPL_LIST:
    case CFG_STR_LIST:
    case CFG_PATH_LIST:
    case CFG_CONNINFO_LIST:
    case CFG_ORIGIN_LIST:
    case CFG_TOKEN_LIST: {
        const struct cfg_list *x = CFIELD(struct cfg_list, a, k);
        const struct cfg_list *y = CFIELD(struct cfg_list, b, k);
        if (x->n != y->n)
            return false;
        for (unsigned i = 0; i < x->n; i++)
            if (!str_same(x->items[i], y->items[i]))
                return false;
        return true;
    }
    case CFG_CIDR_LIST:
        return str_same(CFIELD(struct cfg_cidrs, a, k)->text, CFIELD(struct cfg_cidrs, b, k)->text);
    }
    return false;
}
