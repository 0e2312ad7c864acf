/*
 * config_table: every setting batchd reads, and the parser for each type.
 *
 * To add a setting: add a field to its struct in config.h, a row here, and
 * a commented line to conf/batchd.ini. Nothing else reads the file.
 */
#include "daemon/config_table.h"

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
#include "proto/mem.h"
#include "proto/url.h"

#define KB 1024LL
#define MB (1024LL * 1024)
#define GB (1024LL * 1024 * 1024)

const char *const config_sect_names[SECT__COUNT] = {
    [SECT_BATCHD] = "batchd",     [SECT_REDIS] = "redis",       [SECT_POSTGRES] = "postgres",
    [SECT_UPSTREAM] = "upstream", [SECT_RESOURCE] = "resource", [SECT_STREAM] = "stream",
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

const struct cfg_key config_keys[] = {
    B(listen, CFG_ADDR, 0, 0, "127.0.0.1:8080", false),
    B(admin_listen, CFG_ADDR_OPT, 0, 0, "", false),
    B(reuseport, CFG_BOOL, 0, 0, "no", false),
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

    R(url, CFG_REDIS_URL, 0, 0, "redis://127.0.0.1:6379/0", false),
    R(pool_size, CFG_INT, 1, 256, "4", false),
    R(connect_timeout_ms, CFG_INT, 10, 600000, "2000", true),
    R(command_timeout_ms, CFG_INT, 10, 600000, "2000", true),
    R(ping_interval_ms, CFG_INT, 100, 3600000, "5000", true),
    R(max_pending, CFG_INT, 1, 10000000, "50000", true),

    P(conninfo, CFG_CONNINFO, 0, 0, NULL, false),
    P(pool_size, CFG_INT, 1, 256, "4", false),
    P(connect_timeout_ms, CFG_INT, 10, 600000, "2000", true),
    P(query_timeout_ms, CFG_INT, 10, 3600000, "5000", true),
    P(ping_interval_ms, CFG_INT, 100, 3600000, "5000", true),
    P(max_pending, CFG_INT, 1, 1000000, "1000", true),

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
    case CFG_SQL

void config_key_release(const struct cfg_key *k, void *s)
{
    switch (k->type) {
    case CFG_INT:
    case CFG_BOOL:
    case CFG_LOG_LEVEL:
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

static int parse_int(const char *v, int64_t *out)
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

static int parse_port(const char *s, int *port)
{
    int64_t p;
    if (parse_int(s, &p) != 0 || p < 1 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

/* Splits "host:port" or "[v6]:port". host is written to `host` (cap bytes). */
static int split_host_port(const char *v, char *host, size_t cap, const char **port)
{
    const char *colon;
    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        size_t n = (size_t)(close - v - 1);
        if (n == 0 || n >= cap)
            return -1;
        memcpy(host, v + 1, n);
        host[n] = '\0';
        *port = close + 2;
        return 0;
    }
    colon = strrchr(v, ':');
    if (colon == NULL)
        return -1;
    size_t n = (size_t)(colon - v);
    if (n == 0 || n >= cap)
        return -1;
    memcpy(host, v, n);
    host[n] = '\0';
    *port = colon + 1;
    return 0;
}

static int resolve(const char *host, const char *port, bool passive, struct cfg_addr *a,
                   struct buf *why)
{
    struct addrinfo hints = { 0 }, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    if (strcmp(host, "*") == 0)
        host = "0.0.0.0";
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0 || res == NULL) {
        buf_appendf(why, "cannot resolve host \"%s\" (%s)", host, gai_strerror(rc));
        return -1;
    }
    memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
    a->len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int parse_addr(const char *v, struct cfg_addr *a, struct buf *why)
{
    char host[256];
    const char *port_s;
    int port;
    if (split_host_port(v, host, sizeof(host), &port_s) != 0) {
        buf_append_str(why, "must be host:port, like 127.0.0.1:8080 or [::1]:8080");
        return -1;
    }
    if (parse_port(port_s, &port) != 0) {
        buf_append_str(why, "port must be a number from 1 to 65535");
        return -1;
    }
    if (resolve(host, port_s, true, a, why) != 0)
        return -1;
    a->text = mem_strdup(v);
    return 0;
}

static char *pct_decode_dup(const char *s, size_t n)
{
    struct buf b = BUF_INIT;
    if (url_decode(str_make(s, n), false, &b) != 0) {
        buf_deinit(&b);
        return NULL;
    }
    if (b.data == NULL)
        return mem_strdup("");
    return b.data;
}

/* redis://[[username]:password@]host[:port][/db] */
static int parse_redis_url(const char *v, struct cfg_redis_url *u, struct buf *why)
{
    const char *p = v;
    if (strncmp(p, "redis://", 8) != 0) {
        buf_append_str(why, "must be redis://[:password@]host[:port][/db] (rediss:// and unix sockets are not supported)");
        return -1;
    }
    p += 8;
    const char *at = strrchr(p, '@');
    const char *slash = strchr(at ? at : p, '/');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon == NULL) {
            buf_append_str(why, "credentials must be :password@ or user:password@");
            return -1;
        }
        if (colon > p)
            u->username = pct_decode_dup(p, (size_t)(colon - p));
        u->password = pct_decode_dup(colon + 1, (size_t)(at - colon - 1));
        if ((colon > p && u->username == NULL) || u->password == NULL) {
            buf_append_str(why, "bad percent-escape in credentials");
            return -1;
        }
        p = at + 1;
    }
    size_t hostport_len = slash ? (size_t)(slash - p) : strlen(p);
    char hp[256];
    if (hostport_len == 0 || hostport_len >= sizeof(hp)) {
        buf_append_str(why, "has no host");
        return -1;
    }
    memcpy(hp, p, hostport_len);
    hp[hostport_len] = '\0';
    char host[256];
    const char *port_s;
    u->port = 6379;
    if (split_host_port(hp, host, sizeof(host), &port_s) == 0) {
        if (parse_port(port_s, &u->port) != 0) {
            buf_append_str(why, "port must be a number from 1 to 65535");
            return -1;
        }
    } else {
        if (hp[0] == '[' || strchr(hp, ':')) {
            buf_append_str(why, "has a bad host:port");
            return -1;
        }
        snprintf(host, sizeof(host), "%s", hp);
    }
    u->host = mem_strdup(host);
    u->db = 0;
    if (slash && slash[1] != '\0') {
        int64_t db;
        if (parse_int(slash + 1, &db) != 0 || db < 0 || db > 10000) {
            buf_append_str(why, "database must be a number, like /0");
            return -1;
        }
        u->db = (int)db;
    }
    struct buf t = BUF_INIT;
    buf_appendf(&t, "redis://%s%s%s:%d/%d", u->password ? (u->username ? u->username : "") : "",
                u->password ? ":***@" : "", u->host, u->port, u->db);
    u->text = t.data;
    return 0;
}

/* http://host[:port][/] — no path, no TLS. */
static int parse_http_url(const char *v, struct cfg_http_url *u, struct buf *why)
{
    if (strncmp(v, "https://", 8) == 0) {
        buf_append_str(why, "https upstreams are not supported; batchd is a sidecar on the app host, use http://");
        return -1;
    }
    if (strncmp(v, "http://", 7) != 0) {
        buf_append_str(why, "must be http://host[:port]");
        return -1;
    }
    const char *p = v + 7;
    if (strchr(p, '@')) {
        buf_append_str(why, "must not hold user:password@; batchd sends no credentials upstream");
        return -1;
    }
    size_t n = strcspn(p, "/?#");
    if (p[n] != '\0' && !(p[n] == '/' && p[n + 1] == '\0')) {
        buf_append_str(why, "must not have a path; requests keep theirs");
        return -1;
    }
    char hp[256], host[256], port_buf[8];
    const char *port_s;
    if (n == 0 || n >= sizeof(hp)) {
        buf_append_str(why, "has no host");
        return -1;
    }
    memcpy(hp, p, n);
    hp[n] = '\0';
    if (split_host_port(hp, host, sizeof(host), &port_s) != 0) {
        if (hp[0] == '[' || strchr(hp, ':')) {
            buf_append_str(why, "has a bad host:port");
            return -1;
        }
        snprintf(host, sizeof(host), "%s", hp);
        port_s = "80";
    }
    if (parse_port(port_s, &u->port) != 0) {
        buf_append_str(why, "port must be a number from 1 to 65535");
        return -1;
    }
    snprintf(port_buf, sizeof(port_buf), "%d", u->port);
    if (resolve(host, port_buf, false, &u->addr, why) != 0)
        return -1;
    u->addr.text = mem_strdup(hp);
    u->host = mem_strdup(hp);
    u->text = mem_strdup(v);
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
static int each_item(const char *v, int (*fn)(char *item, void *arg, struct buf *why), void *arg,
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

static int add_tpl(char *item, void *arg, struct buf *why)
{
    struct cfg_list *l = arg;
    if (check_tpl(item, true, true, why) != 0) {
        free(item);
        return -1;
    }
    l->items = mem_realloc(l->items, (l->n + 1) * sizeof(char *));
    l->items[l->n++] = item;
    return 0;
}

static int parse_tpl_list(const char *v, struct cfg_list *l, struct buf *why)
{
    return each_item(v, add_tpl, l, why);
}

/* One "addr" or "addr/bits". */
static int parse_cidr(const char *item, struct cfg_cidr *c, struct buf *why)
{
    char a[INET6_ADDRSTRLEN + 8];
    const char *slash = strchr(item, '/');
    size_t n = slash ? (size_t)(slash - item) : strlen(item);
    if (n == 0 || n >= sizeof(a))
        goto bad;
    memcpy(a, item, n);
    a[n] = '\0';
    memset(c, 0, sizeof(*c));
    if (inet_pton(AF_INET, a, c->addr) == 1) {
        c->family = AF_INET;
        c->bits = 32;
    } else if (inet_pton(AF_INET6, a, c->addr) == 1) {
        c->family = AF_INET6;
        c->bits = 128;
    } else {
        goto bad;
    }
    if (slash) {
        int64_t bits;
        if (parse_int(slash + 1, &bits) != 0 || bits < 0 || bits > (int64_t)c->bits)
            goto bad;
        c->bits = (unsigned)bits;
    }
    return 0;
bad:
    buf_appendf(why, "\"%s\" is not an address or range like 10.0.0.0/8 or ::1", item);
    return -1;
}

static int add_cidr(char *item, void *arg, struct buf *why)
{
    struct cfg_cidrs *l = arg;
    l->items = mem_realloc(l->items, (l->n + 1) * sizeof(*l->items));
    int rc = parse_cidr(item, &l->items[l->n], why);
    free(item);
    if (rc == 0)
        l->n++;
    return rc;
}

static int parse_cidr_list(const char *v, struct cfg_cidrs *l, struct buf *why)
{
    if (each_item(v, add_cidr, l, why) != 0)
        return -1;
    l->text = mem_strdup(v);
    return 0;
}

static bool cidr_has(const struct cfg_cidr *c, const uint8_t *addr)
{
    unsigned full = c->bits / 8, rest = c->bits % 8;
    if (memcmp(c->addr, addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (c->addr[full] & mask) == (addr[full] & mask);
}

bool config_cidrs_match(const struct cfg_cidrs *l, const struct sockaddr *sa)
{
    const uint8_t *v4 = NULL, *v6 = NULL;
    if (sa->sa_family == AF_INET) {
        v4 = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        v6 = a6->s6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6))
            v4 = a6->s6_addr + 12;
    }
    for (unsigned i = 0; i < l->n; i++) {
        const struct cfg_cidr *c = &l->items[i];
        if ((c->family == AF_INET && v4 && cidr_has(c, v4)) || (c->family == AF_INET6 && v6 && cidr_has(c, v6)))
            return true;
    }
    return false;
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
        if (parse_int(v, &x) != 0) {
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
        *FIELD(char *, s, k) = mem_strdup(v);
        return 0;
    case CFG_CONNINFO:
        if (check_conninfo(v, why) != 0)
            return -1;
        *FIELD(char *, s, k) = mem_strdup(v);
        return 0;
    case CFG_ADDR_OPT:
        if (*v == '\0')
            return 0;
        /* fall through */
    case CFG_ADDR:
        return parse_addr(v, FIELD(struct cfg_addr, s, k), why);
    case CFG_REDIS_URL:
        return parse_redis_url(v, FIELD(struct cfg_redis_url, s, k), why);
    case CFG_HTTP_URL:
        return parse_http_url(v, FIELD(struct cfg_http_url, s, k), why);
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
        if (strstr(v, "$1") == NULL) {
            buf_append_str(why, "must use $1, the text[] of ids");
            return -1;
        }
        *FIELD(char *, s, k) = mem_strdup(v);
        return 0;
    case CFG_TPL_LIST:
        return parse_tpl_list(v, FIELD(struct cfg_list, s, k), why);
    case CFG_CIDR_LIST:
        return parse_cidr_list(v, FIELD(struct cfg_cidrs, s, k), why);
    }
    return -1;
}

size_t config_key_size(const struct cfg_key *k)
{
    switch (k->type) {
    case CFG_INT:
    case CFG_LOG_LEVEL:
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
    case CFG_TPL_LIST: {
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
