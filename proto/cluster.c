/* cluster: key slots, CLUSTER SLOTS replies and MOVED/ASK redirections. See cluster.h. */
#include "proto/cluster.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "proto/mem.h"

/* The CRC16 of each byte value, computed from the polynomial when the
 * program loads (a constructor, so no thread ever sees it half built). */
static uint16_t crc16_table[256];

__attribute__((constructor)) static void crc16_table_init(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint16_t c = (uint16_t)(i << 8);
        for (int bit = 0; bit < 8; bit++)
            c = (uint16_t)((c & 0x8000) ? (c << 1) ^ 0x1021 : c << 1);
        crc16_table[i] = c;
    }
}

uint16_t cluster_crc16(const char *p, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++)
        crc = (uint16_t)((crc << 8) ^ crc16_table[((crc >> 8) ^ (unsigned char)p[i]) & 0xff]);
    return crc;
}

unsigned cluster_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open != NULL) {
        const char *tag = open + 1;
        const char *close = memchr(tag, '}', len - (size_t)(tag - key));
        if (close != NULL && close > tag)
            return cluster_crc16(tag, (size_t)(close - tag)) & (CLUSTER_SLOTS - 1);
    }
    return cluster_crc16(key, len) & (CLUSTER_SLOTS - 1);
}

bool cluster_addr_eq(const struct cluster_addr *a, const struct cluster_addr *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

/* A host as it may appear in an address: no space, no control byte (it
 * goes to getaddrinfo and into log lines). */
static bool host_valid(const char *s, size_t n)
{
    if (n >= sizeof(((struct cluster_addr *)0)->host))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

/* --- CLUSTER SLOTS ---------------------------------------------------------------------------- */

static bool int_in(const redisReply *e, long long lo, long long hi, long long *out)
{
    if (e == NULL || e->type != REDIS_REPLY_INTEGER || e->integer < lo || e->integer > hi)
        return false;
    *out = e->integer;
    return true;
}

/* One node of an entry: [host, port, id?, metadata?...]. */
static int parse_addr(const redisReply *node, const char *asked_host, struct cluster_addr *out,
                      const char **why)
{
    if (node == NULL || node->type != REDIS_REPLY_ARRAY || node->elements < 2) {
        *why = "node is not an array of host and port";
        return -EINVAL;
    }
    const redisReply *h = node->element[0];
    const char *host;
    size_t host_len;
    if (h == NULL || (h->type != REDIS_REPLY_STRING && h->type != REDIS_REPLY_NIL)) {
        *why = "node host is not a string";
        return -EINVAL;
    }
    if (h->type == REDIS_REPLY_NIL || h->len == 0 || (h->len == 1 && h->str[0] == '?')) {
        if (asked_host == NULL || asked_host[0] == '\0') {
            *why = "node host unknown and no asked host";
            return -EINVAL;
        }
        host = asked_host;
        host_len = strlen(asked_host);
    } else {
        host = h->str;
        host_len = h->len;
    }
    if (!host_valid(host, host_len)) {
        *why = "node host too long or holds invalid bytes";
        return -EINVAL;
    }
    long long port;
    if (!int_in(node->element[1], 1, 65535, &port)) {
        *why = "node port is not an integer in 1..65535";
        return -EINVAL;
    }
    memcpy(out->host, host, host_len);
    out->host[host_len] = '\0';
    out->port = (int)port;
    return 0;
}

int cluster_topology_find(const struct cluster_topology *t, const struct cluster_addr *addr)
{
    for (unsigned i = 0; i < t->n_nodes; i++)
        if (cluster_addr_eq(&t->nodes[i], addr))
            return (int)i;
    return -1;
}

/* The index of the primary at addr, added when new; -1 past the limit. */
static int primary_index(struct cluster_topology *t, const struct cluster_addr *addr,
                         unsigned *cap)
{
    int i = cluster_topology_find(t, addr);
    if (i >= 0)
        return i;
    if (t->n_nodes + t->n_replicas >= CLUSTER_MAX_NODES)
        return -1;
    if (t->n_nodes == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        t->nodes = mem_realloc(t->nodes, *cap * sizeof(*t->nodes));
        t->replicas = mem_realloc(t->replicas, *cap * sizeof(*t->replicas));
    }
    t->nodes[t->n_nodes] = *addr;
    t->replicas[t->n_nodes] = (struct cluster_replicas){ .addrs = NULL };
    return (int)t->n_nodes++;
}

/* Adds a replica to a primary unless it is listed already; -1 past the limit. */
static int replica_add(struct cluster_topology *t, struct cluster_replicas *rs,
                       const struct cluster_addr *addr)
{
    for (unsigned i = 0; i < rs->n; i++)
        if (cluster_addr_eq(&rs->addrs[i], addr))
            return 0;
    if (t->n_nodes + t->n_replicas >= CLUSTER_MAX_NODES)
        return -1;
    /* Power-of-two capacity, implied by n. */
    if ((rs->n & (rs->n - 1)) == 0)
        rs->addrs = mem_realloc(rs->addrs, (rs->n ? rs->n * 2 : 1) * sizeof(*rs->addrs));
    rs->addrs[rs->n++] = *addr;
    t->n_replicas++;
    return 0;
}

static int parse_entry(struct cluster_topology *t, const redisReply *e, const char *asked_host,
                       unsigned *cap, const char **why)
{
    if (e == NULL || e->type != REDIS_REPLY_ARRAY || e->elements < 3) {
        *why = "entry is not an array of start, end and primary";
        return -EINVAL;
    }
    long long start, end;
    if (!int_in(e->element[0], 0, CLUSTER_SLOTS - 1, &start) ||
        !int_in(e->element[1], 0, CLUSTER_SLOTS - 1, &end)) {
        *why = "slot range bound is not an integer in 0..16383";
        return -EINVAL;
    }
    if (start > end) {
        *why = "slot range starts after its end";
        return -EINVAL;
    }
    struct cluster_addr addr;
    int rc = parse_addr(e->element[2], asked_host, &addr, why);
    if (rc != 0)
        return rc;
    int idx = primary_index(t, &addr, cap);
    if (idx < 0) {
        *why = "too many nodes";
        return -EINVAL;
    }
    for (long long s = start; s <= end; s++) {
        if (t->slot_node[s] != -1) {
            *why = "overlapping slot ranges";
            return -EINVAL;
        }
        t->slot_node[s] = (int16_t)idx;
    }
    t->n_covered += (unsigned)(end - start + 1);
    for (size_t k = 3; k < e->elements; k++) {
        rc = parse_addr(e->element[k], asked_host, &addr, why);
        if (rc != 0)
            return rc;
        if (replica_add(t, &t->replicas[idx], &addr) != 0) {
            *why = "too many nodes";
            return -EINVAL;
        }
    }
    return 0;
}

static void topology_empty(struct cluster_topology *t)
{
    t->nodes = NULL;
    t->replicas = NULL;
    t->n_nodes = t->n_covered = t->n_replicas = 0;
    memset(t->slot_node, 0xff, sizeof(t->slot_node)); /* every slot -1 */
}

int cluster_topology_parse(struct cluster_topology *t, const redisReply *r,
                           const char *asked_host, const char **why)
{
    topology_empty(t);
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        *why = "reply is not an array";
        return -EINVAL;
    }
    unsigned cap = 0;
    for (size_t i = 0; i < r->elements; i++) {
        int rc = parse_entry(t, r->element[i], asked_host, &cap, why);
        if (rc != 0) {
            cluster_topology_deinit(t);
            return rc;
        }
    }
    return 0;
}

void cluster_topology_deinit(struct cluster_topology *t)
{
    for (unsigned i = 0; i < t->n_nodes; i++)
        free(t->replicas[i].addrs);
    free(t->replicas);
    free(t->nodes);
    topology_empty(t);
}

/* --- MOVED / ASK ------------------------------------------------------------------------------ */

/* Reads 1 to 5 decimal digits at s[*i..len) into *v. */
static bool read_number(const char *s, size_t len, size_t *i, unsigned *v)
{
    size_t start = *i;
    unsigned n = 0;
    while (*i < len && s[*i] >= '0' && s[*i] <= '9' && *i - start < 5)
        n = n * 10 + (unsigned)(s[(*i)++] - '0');
    *v = n;
    return *i > start && (*i == len || s[*i] < '0' || s[*i] > '9');
}

enum cluster_redir cluster_redirect_parse(const char *s, size_t len, unsigned *slot,
                                          struct cluster_addr *addr)
{
    enum cluster_redir kind;
    size_t i;
    *slot = 0;
    addr->host[0] = '\0';
    addr->port = 0;
    if (len >= 6 && memcmp(s, "MOVED ", 6) == 0)
        kind = CLUSTER_REDIR_MOVED, i = 6;
    else if (len >= 4 && memcmp(s, "ASK ", 4) == 0)
        kind = CLUSTER_REDIR_ASK, i = 4;
    else
        return CLUSTER_REDIR_NONE;

    unsigned n_slot, port;
    if (!read_number(s, len, &i, &n_slot) || n_slot >= CLUSTER_SLOTS || i == len || s[i] != ' ')
        return CLUSTER_REDIR_NONE;
    i++;
    const char *endpoint = s + i;
    size_t ep_len = len - i;
    const char *colon = NULL;
    for (size_t k = ep_len; k > 0; k--)
        if (endpoint[k - 1] == ':') {
            colon = endpoint + k - 1;
            break;
        }
    if (colon == NULL)
        return CLUSTER_REDIR_NONE;
    size_t host_len = (size_t)(colon - endpoint);
    size_t p = (size_t)(colon + 1 - s);
    if (!host_valid(endpoint, host_len) || !read_number(s, len, &p, &port) || p != len ||
        port < 1 || port > 65535)
        return CLUSTER_REDIR_NONE;

    if (host_len == 1 && endpoint[0] == '?')
        host_len = 0;
    memcpy(addr->host, endpoint, host_len);
    addr->host[host_len] = '\0';
    addr->port = (int)port;
    *slot = n_slot;
    return kind;
}
