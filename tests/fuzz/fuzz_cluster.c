/*
 * fuzz_cluster: proto/cluster.h over any bytes.
 *
 *   input ──redisReader──> replies ──cluster_topology_parse──> topology ✓ against the reply
 *     │                       └── error/status text ──cluster_redirect_parse──> ✓
 *     ├──cluster_redirect_parse──> ✓ invariants, and its own output parses the same
 *     └──cluster_key_slot──> ✓ against a bitwise CRC16 and a hash tag rule written apart
 *
 * Each reply is parsed twice, with and without an asked host; a topology
 * must agree with the reply it came from slot by slot, hold distinct
 * primaries and count its covered slots right. A rejected reply leaves an
 * empty topology and a reason.
 */
#include <errno.h>
#include <hiredis/hiredis.h>

#include "proto/cluster.h"
#include "tests/fuzz/fuzz.h"

/* hiredis 0.14 allocates an array's element vector as soon as it reads
 * "*<count>", with no limit: a header of 2^31 - 1 elements would ask for
 * 16 GiB. The fuzzer bounds arrays (a failed create is the reader's
 * out-of-memory error); a CLUSTER SLOTS reply has at most 16384 entries. */
#define MAX_ARRAY 65536
static redisReplyObjectFunctions bounded;
static void *(*create_array)(const redisReadTask *, int);

static void *bounded_create_array(const redisReadTask *task, int elements)
{
    if (elements > MAX_ARRAY)
        return NULL;
    return create_array(task, elements);
}

static redisReader *reader_new(void)
{
    redisReader *rd = redisReaderCreate();
    CHECK(rd != NULL);
    if (create_array == NULL) {
        bounded = *rd->fn;
        create_array = bounded.createArray;
        bounded.createArray = bounded_create_array;
    }
    rd->fn = &bounded;
    return rd;
}

/* --- references ------------------------------------------------------------------------------- */

static uint16_t ref_crc16(const unsigned char *p, size_t n)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (uint16_t)((crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

static unsigned ref_slot(const unsigned char *k, size_t n)
{
    size_t open = 0;
    while (open < n && k[open] != '{')
        open++;
    if (open < n) {
        size_t close = open + 1;
        while (close < n && k[close] != '}')
            close++;
        if (close < n && close > open + 1)
            return ref_crc16(k + open + 1, close - open - 1) % 16384;
    }
    return ref_crc16(k, n) % 16384;
}

static bool addr_ok(const struct cluster_addr *a, bool empty_host_ok)
{
    size_t n = strnlen(a->host, sizeof(a->host));
    if (n == sizeof(a->host) || (n == 0 && !empty_host_ok) || a->port < 1 || a->port > 65535)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)a->host[i] <= 0x20 || a->host[i] == 0x7f)
            return false;
    return true;
}

/* --- topology --------------------------------------------------------------------------------- */

/* The host the parser must have taken for a node of the reply. */
static void want_host(const redisReply *node, const char *asked, char *out, size_t cap)
{
    const redisReply *h = node->element[0];
    if (h->type == REDIS_REPLY_NIL || h->len == 0 || (h->len == 1 && h->str[0] == '?'))
        snprintf(out, cap, "%s", asked);
    else {
        CHECK(h->len < cap);
        memcpy(out, h->str, h->len);
        out[h->len] = '\0';
    }
}

static void check_topology(const redisReply *r, const char *asked)
{
    struct cluster_topology t;
    const char *why = NULL;
    int rc = cluster_topology_parse(&t, r, asked, &why);
    if (rc != 0) {
        CHECK(rc == -EINVAL && why != NULL && why[0] != '\0');
        CHECK(t.nodes == NULL && t.replicas == NULL && t.n_nodes == 0 && t.n_covered == 0 &&
              t.n_replicas == 0);
        for (unsigned s = 0; s < CLUSTER_SLOTS; s++)
            CHECK(t.slot_node[s] == -1);
        cluster_topology_deinit(&t);
        return;
    }
    CHECK(r->type == REDIS_REPLY_ARRAY);
    CHECK(t.n_nodes + t.n_replicas <= CLUSTER_MAX_NODES);
    unsigned covered = 0, replicas = 0;
    for (unsigned s = 0; s < CLUSTER_SLOTS; s++) {
        CHECK(t.slot_node[s] >= -1 && t.slot_node[s] < (int)t.n_nodes);
        covered += t.slot_node[s] >= 0;
    }
    CHECK(covered == t.n_covered);
    for (unsigned i = 0; i < t.n_nodes; i++) {
        CHECK(addr_ok(&t.nodes[i], false));
        CHECK(cluster_topology_find(&t, &t.nodes[i]) == (int)i);
        const struct cluster_replicas *rs = &t.replicas[i];
        replicas += rs->n;
        for (unsigned k = 0; k < rs->n; k++) {
            CHECK(addr_ok(&rs->addrs[k], false));
            for (unsigned j = 0; j < k; j++)
                CHECK(!cluster_addr_eq(&rs->addrs[j], &rs->addrs[k]));
        }
    }
    CHECK(replicas == t.n_replicas);
    /* Every entry's range points at its primary; the ranges add up. */
    unsigned in_ranges = 0;
    char host[256];
    for (size_t e = 0; e < r->elements; e++) {
        const redisReply *en = r->element[e];
        long long start = en->element[0]->integer, end = en->element[1]->integer;
        in_ranges += (unsigned)(end - start + 1);
        want_host(en->element[2], asked, host, sizeof(host));
        const struct cluster_addr *p = &t.nodes[t.slot_node[start]];
        CHECK(strcmp(p->host, host) == 0 && p->port == en->element[2]->element[1]->integer);
        CHECK(t.slot_node[end] == t.slot_node[start]);
        for (size_t k = 3; k < en->elements; k++) {
            struct cluster_addr ra = { .port = (int)en->element[k]->element[1]->integer };
            want_host(en->element[k], asked, ra.host, sizeof(ra.host));
            const struct cluster_replicas *rs = &t.replicas[t.slot_node[start]];
            bool found = false;
            for (unsigned j = 0; j < rs->n && !found; j++)
                found = cluster_addr_eq(&rs->addrs[j], &ra);
            CHECK(found);
        }
    }
    CHECK(in_ranges == t.n_covered);
    cluster_topology_deinit(&t);
    CHECK(t.nodes == NULL && t.n_nodes == 0);
}

/* --- redirections ----------------------------------------------------------------------------- */

static void check_redirect(const char *s, size_t n)
{
    char *copy = fuzz_copy(s, n);
    unsigned slot = 12345;
    struct cluster_addr a = { .host = "x", .port = 7 };
    enum cluster_redir k = cluster_redirect_parse(copy, n, &slot, &a);
    free(copy);
    if (k == CLUSTER_REDIR_NONE) {
        CHECK(slot == 0 && a.host[0] == '\0' && a.port == 0);
        return;
    }
    CHECK(k == CLUSTER_REDIR_MOVED || k == CLUSTER_REDIR_ASK);
    CHECK(slot < CLUSTER_SLOTS && addr_ok(&a, true));
    /* Its own rendering parses to the same. */
    char text[300];
    int len = snprintf(text, sizeof(text), "%s %u %s:%d", k == CLUSTER_REDIR_MOVED ? "MOVED" : "ASK",
                       slot, a.host, a.port);
    CHECK(len > 0 && (size_t)len < sizeof(text));
    unsigned slot2;
    struct cluster_addr a2;
    CHECK(cluster_redirect_parse(text, (size_t)len, &slot2, &a2) == k);
    CHECK(slot2 == slot && cluster_addr_eq(&a, &a2));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned slot = cluster_key_slot((const char *)data, size);
    CHECK(slot < CLUSTER_SLOTS && slot == ref_slot(data, size));
    CHECK(cluster_crc16((const char *)data, size) == ref_crc16(data, size));
    check_redirect((const char *)data, size);

    redisReader *rd = reader_new();
    char *copy = fuzz_copy(data, size);
    if (redisReaderFeed(rd, copy, size) == REDIS_OK) {
        for (int i = 0; i < 16; i++) {
            void *reply = NULL;
            if (redisReaderGetReply(rd, &reply) != REDIS_OK || reply == NULL)
                break;
            redisReply *r = reply;
            check_topology(r, "asked.example");
            check_topology(r, NULL);
            if (r->type == REDIS_REPLY_ERROR || r->type == REDIS_REPLY_STATUS ||
                r->type == REDIS_REPLY_STRING)
                check_redirect(r->str, r->len);
            freeReplyObject(r);
        }
    }
    free(copy);
    redisReaderFree(rd);
    return 0;
}
