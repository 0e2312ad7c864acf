/*
 * test_cluster: Redis Cluster's key slots (CRC16 and hash tags) against
 * values a real redis-server computed, CLUSTER SLOTS replies (built with
 * hiredis' redisReader from RESP text, as the daemon receives them) and
 * every way one is rejected, and MOVED/ASK redirections.
 */
#include "unit.h"

#include <errno.h>

#include "proto/buf.h"
#include "proto/cluster.h"

/* --- slots ------------------------------------------------------------------------------------ */

static void test_crc16_check_value(void **state)
{
    /* The check value of CRC16/XMODEM, also the one in the Redis Cluster
     * specification's CRC16 section. */
    assert_int_equal(cluster_crc16("123456789", 9), 0x31C3);
    assert_int_equal(cluster_crc16("", 0), 0);
    assert_int_equal(cluster_crc16("A", 1), 0x58E5);
}

/* CLUSTER KEYSLOT from redis-server 7.0.15 (Debian 12), cluster-enabled,
 * no slots assigned: `redis-cli -p P cluster keyslot KEY`. */
static const struct {
    const char *key;
    unsigned slot;
} redis_slots[] = {
    { "123456789", 12739 },
    { "foo", 12182 },
    { "bar", 5061 },
    { "hello", 866 },
    { "", 0 },
    { "{}", 15257 },                 /* empty tag: the whole key */
    { "{", 4092 },                   /* no '}' */
    { "}", 12090 },
    { "a{}b{c}", 7353 },             /* the first tag is empty: whole key, not "c" */
    { "{user1000}.following", 3443 },
    { "{user1000}.followers", 3443 },
    { "user1000", 3443 },
    { "foo{}{bar}", 8363 },
    { "foo{{bar}}zap", 4015 },       /* tag "{bar" */
    { "foo{bar}{zap}", 5061 },       /* first tag only: "bar" */
    { "{a", 10276 },
    { "a}b{", 6027 },
    { "{{}}", 4092 },                /* tag "{" */
    { "key:1", 6657 },
    { "session:{42}:x", 8000 },
    { "42", 8000 },
    { "\xc3\xa9", 10180 },           /* "é" in UTF-8 */
};

static void test_slots_match_redis(void **state)
{
    for (size_t i = 0; i < sizeof(redis_slots) / sizeof(redis_slots[0]); i++) {
        const char *k = redis_slots[i].key;
        unsigned got = cluster_key_slot(k, strlen(k));
        if (got != redis_slots[i].slot)
            print_error("key \"%s\": slot %u, redis says %u\n", k, got, redis_slots[i].slot);
        assert_int_equal(got, redis_slots[i].slot);
    }
}

static unsigned slot_of(const char *key)
{
    return cluster_key_slot(key, strlen(key));
}

static void test_hash_tags(void **state)
{
    assert_int_equal(slot_of("{user1000}.following"), slot_of("user1000"));
    assert_int_equal(slot_of("x{tag}y"), slot_of("tag"));
    assert_int_equal(slot_of("foo{bar}{zap}"), slot_of("bar"));
    assert_int_equal(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    assert_int_equal(slot_of("{{}}"), slot_of("{"));
    /* Empty or unclosed tags hash the whole key. */
    assert_int_equal(slot_of("{}"), cluster_crc16("{}", 2) & 16383);
    assert_int_equal(slot_of("a{}b{c}"), cluster_crc16("a{}b{c}", 7) & 16383);
    assert_int_equal(slot_of("{"), cluster_crc16("{", 1) & 16383);
    assert_int_equal(slot_of("ab{cd"), cluster_crc16("ab{cd", 5) & 16383);
    /* Lengths, not NULs, end keys and tags; nothing past len is read. */
    assert_int_equal(cluster_key_slot("a\0{b}", 5), slot_of("b"));
    assert_int_equal(cluster_key_slot("{b\0c}", 5), cluster_crc16("b\0c", 3) & 16383);
    assert_int_equal(cluster_key_slot("{ab}", 3), slot_of("{ab"));
    assert_int_equal(cluster_key_slot("{ab}", 0), 0);
}

/* --- CLUSTER SLOTS ---------------------------------------------------------------------------- */

/* The reply parsed from RESP text, which must hold exactly one. */
static redisReply *reply_of(const char *resp, size_t len)
{
    redisReader *rd = redisReaderCreate();
    assert_non_null(rd);
    assert_int_equal(redisReaderFeed(rd, resp, len), REDIS_OK);
    void *r = NULL;
    assert_int_equal(redisReaderGetReply(rd, &r), REDIS_OK);
    assert_non_null(r);
    redisReaderFree(rd);
    return r;
}

static int parse_text(struct cluster_topology *t, const char *resp, const char *asked,
                      const char **why)
{
    redisReply *r = reply_of(resp, strlen(resp));
    *why = NULL;
    int rc = cluster_topology_parse(t, r, asked, why);
    freeReplyObject(r);
    return rc;
}

static void assert_addr(const struct cluster_addr *a, const char *host, int port)
{
    assert_string_equal(a->host, host);
    assert_int_equal(a->port, port);
}

/* Redis 7.0's reply for 3 primaries with a replica each: node ids and an
 * empty metadata array after host and port. */
static const char three_primaries[] =
    "*3\r\n"
    "*4\r\n:0\r\n:5460\r\n"
    "*4\r\n$9\r\n127.0.0.1\r\n:30001\r\n$2\r\nn1\r\n*0\r\n"
    "*4\r\n$9\r\n127.0.0.1\r\n:30005\r\n$2\r\nn5\r\n*0\r\n"
    "*4\r\n:5461\r\n:10922\r\n"
    "*4\r\n$9\r\n127.0.0.1\r\n:30002\r\n$2\r\nn2\r\n*0\r\n"
    "*4\r\n$9\r\n127.0.0.1\r\n:30006\r\n$2\r\nn6\r\n*0\r\n"
    "*4\r\n:10923\r\n:16383\r\n"
    "*4\r\n$9\r\n127.0.0.1\r\n:30003\r\n$2\r\nn3\r\n"
    "*2\r\n$8\r\nhostname\r\n$5\r\nhost3\r\n"   /* Redis 7 metadata, ignored */
    "*4\r\n$9\r\n127.0.0.1\r\n:30004\r\n$2\r\nn4\r\n*0\r\n";

static void test_topology_three_primaries(void **state)
{
    struct cluster_topology t;
    const char *why;
    assert_int_equal(parse_text(&t, three_primaries, "10.0.0.1", &why), 0);
    assert_int_equal(t.n_nodes, 3);
    assert_int_equal(t.n_covered, CLUSTER_SLOTS);
    assert_int_equal(t.n_replicas, 3);
    assert_addr(&t.nodes[0], "127.0.0.1", 30001);
    assert_addr(&t.nodes[1], "127.0.0.1", 30002);
    assert_addr(&t.nodes[2], "127.0.0.1", 30003);
    assert_int_equal(t.replicas[0].n, 1);
    assert_addr(&t.replicas[0].addrs[0], "127.0.0.1", 30005);
    assert_addr(&t.replicas[2].addrs[0], "127.0.0.1", 30004);
    assert_int_equal(t.slot_node[0], 0);
    assert_int_equal(t.slot_node[5460], 0);
    assert_int_equal(t.slot_node[5461], 1);
    assert_int_equal(t.slot_node[10922], 1);
    assert_int_equal(t.slot_node[10923], 2);
    assert_int_equal(t.slot_node[16383], 2);
    struct cluster_addr a = { .host = "127.0.0.1", .port = 30002 };
    assert_int_equal(cluster_topology_find(&t, &a), 1);
    a.port = 30005;
    assert_int_equal(cluster_topology_find(&t, &a), -1);
    cluster_topology_deinit(&t);
    assert_int_equal(t.n_nodes, 0);
    assert_null(t.nodes);
    cluster_topology_deinit(&t); /* twice is harmless */
}

static void test_topology_ranges_share_a_primary(void **state)
{
    /* After a slot moved: one primary owns several ranges, listed with
     * the same replica each time; slot 100 is uncovered. Redis 6's nodes
     * are [host, port, id], Redis 3's [host, port]. */
    const char *resp = "*4\r\n"
                       "*4\r\n:0\r\n:99\r\n*2\r\n$1\r\na\r\n:1\r\n*3\r\n$1\r\nr\r\n:9\r\n$1\r\nx\r\n"
                       "*3\r\n:101\r\n:200\r\n*2\r\n$1\r\nb\r\n:2\r\n"
                       "*4\r\n:201\r\n:201\r\n*2\r\n$1\r\na\r\n:1\r\n*2\r\n$1\r\nr\r\n:9\r\n"
                       "*5\r\n:202\r\n:202\r\n*2\r\n$1\r\nb\r\n:2\r\n*2\r\n$1\r\ns\r\n:8\r\n"
                       "*2\r\n$1\r\nt\r\n:7\r\n";
    struct cluster_topology t;
    const char *why;
    assert_int_equal(parse_text(&t, resp, NULL, &why), 0);
    assert_int_equal(t.n_nodes, 2);
    assert_int_equal(t.n_covered, 100 + 100 + 1 + 1);
    assert_int_equal(t.slot_node[99], 0);
    assert_int_equal(t.slot_node[100], -1);
    assert_int_equal(t.slot_node[101], 1);
    assert_int_equal(t.slot_node[201], 0);
    assert_int_equal(t.slot_node[202], 1);
    assert_int_equal(t.slot_node[203], -1);
    assert_int_equal(t.n_replicas, 3);
    assert_int_equal(t.replicas[0].n, 1);
    assert_addr(&t.replicas[0].addrs[0], "r", 9);
    assert_int_equal(t.replicas[1].n, 2);
    assert_addr(&t.replicas[1].addrs[1], "t", 7);
    cluster_topology_deinit(&t);

    /* No slots assigned yet: an empty array. */
    assert_int_equal(parse_text(&t, "*0\r\n", NULL, &why), 0);
    assert_int_equal(t.n_nodes, 0);
    assert_int_equal(t.n_covered, 0);
    assert_int_equal(t.slot_node[0], -1);
    cluster_topology_deinit(&t);
}

static void test_topology_unknown_host_is_the_asked_one(void **state)
{
    /* "" (Redis before 7 for a node that does not know its address), "?"
     * (Redis 7, hostname endpoints with no hostname) and nil (Redis 7,
     * cluster-preferred-endpoint-type unknown-endpoint). */
    const char *resp = "*3\r\n"
                       "*3\r\n:0\r\n:0\r\n*2\r\n$0\r\n\r\n:1\r\n"
                       "*3\r\n:1\r\n:1\r\n*2\r\n$1\r\n?\r\n:2\r\n"
                       "*4\r\n:2\r\n:2\r\n*2\r\n$-1\r\n:3\r\n*2\r\n$0\r\n\r\n:4\r\n";
    struct cluster_topology t;
    const char *why;
    assert_int_equal(parse_text(&t, resp, "seed.example", &why), 0);
    assert_int_equal(t.n_nodes, 3);
    assert_addr(&t.nodes[0], "seed.example", 1);
    assert_addr(&t.nodes[1], "seed.example", 2);
    assert_addr(&t.nodes[2], "seed.example", 3);
    assert_addr(&t.replicas[2].addrs[0], "seed.example", 4);
    cluster_topology_deinit(&t);

    assert_int_equal(parse_text(&t, resp, NULL, &why), -EINVAL);
    assert_string_equal(why, "node host unknown and no asked host");
    assert_int_equal(parse_text(&t, resp, "", &why), -EINVAL);
    assert_string_equal(why, "node host unknown and no asked host");
    assert_int_equal(t.n_nodes, 0);
}

/* RESP text and its length, which counts any NUL in it. */
#define RESP(s) s, sizeof(s) - 1

static const struct {
    const char *resp;
    size_t len;
    const char *why;
} bad_replies[] = {
    { RESP("+OK\r\n"), "reply is not an array" },
    { RESP("-ERR This instance has cluster support disabled\r\n"), "reply is not an array" },
    { RESP(":1\r\n"), "reply is not an array" },
    { RESP("$-1\r\n"), "reply is not an array" },
    { RESP("*-1\r\n"), "reply is not an array" },
    { RESP("*1\r\n:1\r\n"), "entry is not an array of start, end and primary" },
    { RESP("*1\r\n*2\r\n:0\r\n:1\r\n"), "entry is not an array of start, end and primary" },
    { RESP("*1\r\n*-1\r\n"), "entry is not an array of start, end and primary" },
    { RESP("*1\r\n*3\r\n$1\r\n0\r\n:1\r\n*2\r\n$1\r\na\r\n:1\r\n"),
      "slot range bound is not an integer in 0..16383" },
    { RESP("*1\r\n*3\r\n:0\r\n+1\r\n*2\r\n$1\r\na\r\n:1\r\n"),
      "slot range bound is not an integer in 0..16383" },
    { RESP("*1\r\n*3\r\n:-1\r\n:1\r\n*2\r\n$1\r\na\r\n:1\r\n"),
      "slot range bound is not an integer in 0..16383" },
    { RESP("*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\na\r\n:1\r\n"),
      "slot range bound is not an integer in 0..16383" },
    { RESP("*1\r\n*3\r\n:0\r\n:9223372036854775807\r\n*2\r\n$1\r\na\r\n:1\r\n"),
      "slot range bound is not an integer in 0..16383" },
    { RESP("*1\r\n*3\r\n:5\r\n:4\r\n*2\r\n$1\r\na\r\n:1\r\n"), "slot range starts after its end" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n$1\r\na\r\n"), "node is not an array of host and port" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n*1\r\n$1\r\na\r\n"), "node is not an array of host and port" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n*-1\r\n"), "node is not an array of host and port" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n:1\r\n:1\r\n"), "node host is not a string" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n+a\r\n:1\r\n"), "node host is not a string" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n*0\r\n:1\r\n"), "node host is not a string" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$3\r\na b\r\n:1\r\n"),
      "node host too long or holds invalid bytes" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$3\r\na\0b\r\n:1\r\n"),
      "node host too long or holds invalid bytes" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$3\r\na\nb\r\n:1\r\n"),
      "node host too long or holds invalid bytes" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\na\r\n:0\r\n"), "node port is not an integer in 1..65535" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\na\r\n:65536\r\n"),
      "node port is not an integer in 1..65535" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\na\r\n:-6379\r\n"),
      "node port is not an integer in 1..65535" },
    { RESP("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\na\r\n$4\r\n6379\r\n"),
      "node port is not an integer in 1..65535" },
    { RESP("*2\r\n*3\r\n:0\r\n:10\r\n*2\r\n$1\r\na\r\n:1\r\n*3\r\n:10\r\n:20\r\n*2\r\n$1\r\nb\r\n:1\r\n"),
      "overlapping slot ranges" },
    { RESP("*2\r\n*3\r\n:0\r\n:10\r\n*2\r\n$1\r\na\r\n:1\r\n*3\r\n:3\r\n:3\r\n*2\r\n$1\r\na\r\n:1\r\n"),
      "overlapping slot ranges" },
    { RESP("*1\r\n*4\r\n:0\r\n:1\r\n*2\r\n$1\r\na\r\n:1\r\n:7\r\n"), "node is not an array of host and port" },
    { RESP("*1\r\n*4\r\n:0\r\n:1\r\n*2\r\n$1\r\na\r\n:1\r\n*2\r\n$1\r\nr\r\n:0\r\n"),
      "node port is not an integer in 1..65535" },
    /* A good entry, then a bad one: the first one's node is freed. */
    { RESP("*2\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\na\r\n:1\r\n*3\r\n:2\r\n:1\r\n*2\r\n$1\r\nb\r\n:1\r\n"),
      "slot range starts after its end" },
};

static void test_topology_rejections(void **state)
{
    for (size_t i = 0; i < sizeof(bad_replies) / sizeof(bad_replies[0]); i++) {
        redisReply *r = reply_of(bad_replies[i].resp, bad_replies[i].len);
        struct cluster_topology t;
        const char *why = NULL;
        int rc = cluster_topology_parse(&t, r, "asked", &why);
        freeReplyObject(r);
        if (rc != -EINVAL || why == NULL || strcmp(why, bad_replies[i].why) != 0)
            print_error("case %zu: rc %d, why \"%s\", want \"%s\"\n", i, rc, why ? why : "(null)",
                        bad_replies[i].why);
        assert_int_equal(rc, -EINVAL);
        assert_string_equal(why, bad_replies[i].why);
        assert_int_equal(t.n_nodes, 0);
        assert_int_equal(t.n_covered, 0);
        assert_null(t.nodes);
        cluster_topology_deinit(&t);
    }
    /* No reply at all. */
    struct cluster_topology t;
    const char *why = NULL;
    assert_int_equal(cluster_topology_parse(&t, NULL, NULL, &why), -EINVAL);
    assert_string_equal(why, "reply is not an array");
}

static void test_topology_host_length(void **state)
{
    char host[300];
    memset(host, 'h', sizeof(host));
    struct buf b = BUF_INIT;
    for (int len = 255; len <= 256; len++) {
        buf_reset(&b);
        buf_appendf(&b, "*1\r\n*3\r\n:0\r\n:0\r\n*2\r\n$%d\r\n%.*s\r\n:1\r\n", len, len, host);
        redisReply *r = reply_of(b.data, b.len);
        struct cluster_topology t;
        const char *why = NULL;
        int rc = cluster_topology_parse(&t, r, NULL, &why);
        freeReplyObject(r);
        if (len == 255) {
            assert_int_equal(rc, 0);
            assert_int_equal(strlen(t.nodes[0].host), 255);
        } else {
            assert_int_equal(rc, -EINVAL);
            assert_string_equal(why, "node host too long or holds invalid bytes");
        }
        cluster_topology_deinit(&t);
    }
    buf_deinit(&b);
}

/* n primaries of one slot each, the last one with `replicas` replicas. */
static int parse_many(unsigned n, unsigned replicas, const char **why)
{
    struct buf b = BUF_INIT;
    buf_appendf(&b, "*%u\r\n", n);
    for (unsigned i = 0; i < n; i++) {
        unsigned nr = i + 1 == n ? replicas : 0;
        buf_appendf(&b, "*%u\r\n:%u\r\n:%u\r\n*2\r\n$1\r\np\r\n:%u\r\n", 3 + nr, i, i, 1 + i);
        for (unsigned k = 0; k < nr; k++)
            buf_appendf(&b, "*2\r\n$1\r\nr\r\n:%u\r\n", 1 + k);
    }
    redisReply *r = reply_of(b.data, b.len);
    buf_deinit(&b);
    struct cluster_topology t;
    int rc = cluster_topology_parse(&t, r, NULL, why);
    freeReplyObject(r);
    if (rc == 0)
        assert_int_equal(t.n_nodes + t.n_replicas, n + replicas);
    cluster_topology_deinit(&t);
    return rc;
}

static void test_topology_node_limit(void **state)
{
    const char *why = NULL;
    assert_int_equal(parse_many(CLUSTER_MAX_NODES, 0, &why), 0);
    assert_int_equal(parse_many(CLUSTER_MAX_NODES + 1, 0, &why), -EINVAL);
    assert_string_equal(why, "too many nodes");
    assert_int_equal(parse_many(CLUSTER_MAX_NODES - 3, 3, &why), 0);
    assert_int_equal(parse_many(CLUSTER_MAX_NODES - 3, 4, &why), -EINVAL);
    assert_string_equal(why, "too many nodes");
}

/* --- MOVED / ASK ------------------------------------------------------------------------------ */

static enum cluster_redir redir(const char *s, unsigned *slot, struct cluster_addr *a)
{
    /* A heap copy of exactly the text: no reading past its end. */
    size_t n = strlen(s);
    char *copy = test_malloc(n ? n : 1);
    memcpy(copy, s, n);
    enum cluster_redir k = cluster_redirect_parse(copy, n, slot, a);
    test_free(copy);
    return k;
}

static void test_redirects(void **state)
{
    unsigned slot;
    struct cluster_addr a;
    assert_int_equal(redir("MOVED 3999 127.0.0.1:6381", &slot, &a), CLUSTER_REDIR_MOVED);
    assert_int_equal(slot, 3999);
    assert_addr(&a, "127.0.0.1", 6381);
    assert_int_equal(redir("ASK 3999 127.0.0.1:6381", &slot, &a), CLUSTER_REDIR_ASK);
    assert_int_equal(slot, 3999);
    assert_addr(&a, "127.0.0.1", 6381);
    assert_int_equal(redir("MOVED 0 redis-7.example.com:1", &slot, &a), CLUSTER_REDIR_MOVED);
    assert_int_equal(slot, 0);
    assert_addr(&a, "redis-7.example.com", 1);
    assert_int_equal(redir("ASK 16383 h:65535", &slot, &a), CLUSTER_REDIR_ASK);
    assert_int_equal(slot, 16383);
    assert_addr(&a, "h", 65535);
    /* IPv6 as Redis prints it, without brackets: the last ':' counts. */
    assert_int_equal(redir("MOVED 12 ::1:7000", &slot, &a), CLUSTER_REDIR_MOVED);
    assert_addr(&a, "::1", 7000);
    assert_int_equal(redir("MOVED 12 fe80::1:2:3:7001", &slot, &a), CLUSTER_REDIR_MOVED);
    assert_addr(&a, "fe80::1:2:3", 7001);
    /* The node that answered: empty, or "?" from Redis 7. */
    assert_int_equal(redir("MOVED 5 :7002", &slot, &a), CLUSTER_REDIR_MOVED);
    assert_addr(&a, "", 7002);
    assert_int_equal(redir("ASK 5 ?:7003", &slot, &a), CLUSTER_REDIR_ASK);
    assert_addr(&a, "", 7003);
}

static const char *const bad_redirects[] = {
    "", "MOVED", "MOVED ", "ASK", "ASK ", "moved 1 h:1", "MOVED\t1 h:1", "ASKING",
    "ERR unknown command", "CLUSTERDOWN The cluster is down", "TRYAGAIN Multiple keys request",
    "MOVED 16384 h:1", "MOVED -1 h:1", "MOVED +1 h:1", "MOVED 000001 h:1", "MOVED 1x h:1",
    "MOVED  1 h:1", "MOVED 1  h:1", "MOVED 1", "MOVED 1 ", "MOVED 1 h", "MOVED 1 h:",
    "MOVED 1 h:0", "MOVED 1 h:65536", "MOVED 1 h:123456", "MOVED 1 h:-1", "MOVED 1 h:1 ",
    "MOVED 1 h:1x", "MOVED 1 h:+1", "MOVED 1 a b:1", "MOVED 1 a\tb:1", "MOVED 1 a\x7f:1",
    "ASK 99999 h:1", "ASK 1 h:99999",
};

static void test_redirect_rejections(void **state)
{
    for (size_t i = 0; i < sizeof(bad_redirects) / sizeof(bad_redirects[0]); i++) {
        unsigned slot = 99;
        struct cluster_addr a = { .host = "x", .port = 9 };
        enum cluster_redir k = redir(bad_redirects[i], &slot, &a);
        if (k != CLUSTER_REDIR_NONE)
            print_error("\"%s\" parsed as %d\n", bad_redirects[i], k);
        assert_int_equal(k, CLUSTER_REDIR_NONE);
        assert_int_equal(slot, 0);
        assert_addr(&a, "", 0);
    }
    /* A NUL in the host, and hosts of 255 and 256 bytes. */
    unsigned slot;
    struct cluster_addr a;
    assert_int_equal(cluster_redirect_parse("MOVED 1 a\0b:1", 13, &slot, &a), CLUSTER_REDIR_NONE);
    char text[300];
    for (int len = 255; len <= 256; len++) {
        int n = snprintf(text, sizeof(text), "MOVED 7 %.*s:80", len,
                         "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh"
                         "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh"
                         "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh"
                         "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh");
        enum cluster_redir want = len == 255 ? CLUSTER_REDIR_MOVED : CLUSTER_REDIR_NONE;
        assert_int_equal(cluster_redirect_parse(text, (size_t)n, &slot, &a), want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16_check_value),
        cmocka_unit_test(test_slots_match_redis),
        cmocka_unit_test(test_hash_tags),
        cmocka_unit_test(test_topology_three_primaries),
        cmocka_unit_test(test_topology_ranges_share_a_primary),
        cmocka_unit_test(test_topology_unknown_host_is_the_asked_one),
        cmocka_unit_test(test_topology_rejections),
        cmocka_unit_test(test_topology_host_length),
        cmocka_unit_test(test_topology_node_limit),
        cmocka_unit_test(test_redirects),
        cmocka_unit_test(test_redirect_rejections),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
