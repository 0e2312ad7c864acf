/*
 * config_net: the settings that name places on the network: listen
 * addresses (host:port), redis:// and http:// URLs, and address ranges
 * (CIDR lists). Hosts are resolved at load, so a typo fails the load
 * rather than every connection attempt. Internal to the config module.
 */
#include "daemon/config_table.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/config.h"
#include "proto/mem.h"
#include "proto/url.h"

static int parse_port(const char *s, int *port)
{
    char *end;
    errno = 0;
    long p = strtol(s, &end, 10);
    if (*s == '\0' || errno || *end != '\0' || p < 1 || p > 65535)
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

int config_parse_addr(const char *v, struct cfg_addr *a, struct buf *why)
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
int config_parse_redis_url(const char *v, struct cfg_redis_url *u, struct buf *why)
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
    /* host[:port], or several separated by commas (a cluster's seed nodes). */
    const char *end = p + hostport_len;
    while (p < end || u->n_seeds == 0) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        size_t n = (size_t)((comma ? comma : end) - p);
        while (n && p[0] == ' ')
            p++, n--;
        while (n && p[n - 1] == ' ')
            n--;
        char hp[256], host[256];
        if (n == 0 || n >= sizeof(hp)) {
            buf_append_str(why, u->n_seeds ? "has an empty host between commas" : "has no host");
            return -1;
        }
        if (u->n_seeds == 64) {
            buf_append_str(why, "has more than 64 hosts");
            return -1;
        }
        memcpy(hp, p, n);
        hp[n] = '\0';
        const char *port_s;
        int port = 6379;
        if (split_host_port(hp, host, sizeof(host), &port_s) == 0) {
            if (parse_port(port_s, &port) != 0) {
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
        u->seeds = mem_realloc(u->seeds, (u->n_seeds + 1) * sizeof(*u->seeds));
        u->seeds[u->n_seeds].host = mem_strdup(host);
        u->seeds[u->n_seeds++].port = port;
        p = comma ? comma + 1 : end;
        if (comma && p == end) {
            buf_append_str(why, "has an empty host after a comma");
            return -1;
        }
    }
    u->host = mem_strdup(u->seeds[0].host);
    u->port = u->seeds[0].port;
    u->db = 0;
    if (slash && slash[1] != '\0') {
        int64_t db;
        if (config_parse_int(slash + 1, &db) != 0 || db < 0 || db > 10000) {
            buf_append_str(why, "database must be a number, like /0");
            return -1;
        }
        u->db = (int)db;
    }
    struct buf t = BUF_INIT;
    buf_appendf(&t, "redis://%s%s", u->password ? (u->username ? u->username : "") : "", u->password ? ":***@" : "");
    for (unsigned i = 0; i < u->n_seeds; i++)
        buf_appendf(&t, "%s%s:%d", i ? "," : "", u->seeds[i].host, u->seeds[i].port);
    buf_appendf(&t, "/%d", u->db);
    u->text = t.data;
    return 0;
}

/* http://host[:port][/] — no path, no TLS. */
int config_parse_http_url(const char *v, struct cfg_http_url *u, struct buf *why)
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
        if (config_parse_int(slash + 1, &bits) != 0 || bits < 0 || bits > (int64_t)c->bits)
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

int config_parse_cidr_list(const char *v, struct cfg_cidrs *l, struct buf *why)
{
    if (config_each_item(v, add_cidr, l, why) != 0)
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
