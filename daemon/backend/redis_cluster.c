/*
 * redis_cluster: the slot map, one member pool per primary, and routing.
 * See redis_cluster.h.
 *
 *   CLUSTER SLOTS ──> proto/cluster.c ──> apply: nodes made / retired,
 *                                         slot_owner[16384], channels moved
 *   command(key) ──> slot_owner[slot(key)] ──> node pool ──> reply
 *                         ^                                    │ MOVED: resent there, refresh soon
 *                         └────────────────────────────────────┘ ASK: ASKING + resent to that node
 *   MGET k1..kn ──> keys grouped by node ──> one read script a node ──> merged (redis_reply_compose)
 *                                             └ refused (a key it does not serve) ──> one MGET a slot
 *
 * Redis Cluster refuses a multi-key command whose keys are in different
 * slots (CROSSSLOT), also inside a script; Redis 7 lets a script flagged
 * allow-cross-slot-keys read keys of several slots of its node, so a
 * flush sends each node one call of such a read-only script. A part whose
 * node is down or that fails answers nil for its keys: they are misses,
 * read from PostgreSQL, so a dead primary costs latency, not errors.
 */
#include "daemon/backend/redis_cluster.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/backend/redis_cluster_int.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "proto/mem.h"

#define MAX_REDIRECTS 5
#define URGENT_SPACING_MS 100

/* --- metrics --------------------------------------------------------------------- */

static double gauge_nodes(void *arg)
{
    const struct redis_cluster *cl = arg;
    unsigned n = 0;
    for (unsigned i = 0; i < cl->n_nodes; i++)
        n += cl->nodes[i]->primary;
    return n;
}

static double gauge_covered(void *arg)
{
    return ((const struct redis_cluster *)arg)->n_covered;
}

static double gauge_up(void *arg)
{
    return redis_cluster_up(arg);
}

static void metrics_init(struct redis_cluster *cl)
{
    const char *h = "CLUSTER SLOTS refreshes, by result.";
    cl->m_refresh_ok = metrics_counter("batchd_redis_cluster_refreshes_total", "result=\"ok\"", h);
    cl->m_refresh_err = metrics_counter("batchd_redis_cluster_refreshes_total", "result=\"error\"", h);
    cl->m_changes = metrics_counter("batchd_redis_cluster_map_changes_total", "",
                                    "Slot maps applied that moved at least one slot to another node.");
    h = "Redirections followed, by kind.";
    cl->m_moved = metrics_counter("batchd_redis_cluster_redirects_total", "kind=\"moved\"", h);
    cl->m_ask = metrics_counter("batchd_redis_cluster_redirects_total", "kind=\"ask\"", h);
    cl->m_script_fallbacks = metrics_counter(
        "batchd_redis_cluster_read_script_fallbacks_total", "",
        "A node's cross-slot read script refused (a key it does not serve: a slot moving; or a Redis "
        "without script flags): its keys went again as one MGET a slot.");
    cl->m_part_err = metrics_counter("batchd_redis_cluster_mget_part_failures_total", "",
                                     "Per-slot MGETs that failed (node down, timeout, error): their keys "
                                     "were read from PostgreSQL.");
    metrics_gauge_fn("batchd_redis_cluster_primaries", "", "Primaries in the slot map.", gauge_nodes, cl);
    metrics_gauge_fn("batchd_redis_cluster_slots_covered", "", "Slots with a known primary (of 16384).",
                     gauge_covered, cl);
    metrics_gauge_fn("batchd_redis_up", "", "1 when a slot map is known and a primary is ready.", gauge_up, cl);
}

/* --- nodes ----------------------------------------------------------------------------- */

static void node_cfg(struct cnode *n, const struct cfg_redis *cfg)
{
    n->cfg = *cfg;
    n->cfg.url.host = n->host;
    n->cfg.url.port = n->port;
    n->cfg.url.text = n->addr;
    n->cfg.url.seeds = NULL;
    n->cfg.url.n_seeds = 0;
    n->cfg.url.db = 0;
    n->cfg.cluster = false;
}

static struct cnode *node_find(const struct redis_cluster *cl, const char *host, int port)
{
    for (unsigned i = 0; i < cl->n_nodes; i++)
        if (cl->nodes[i]->port == port && strcmp(cl->nodes[i]->host, host) == 0)
            return cl->nodes[i];
    return NULL;
}

static struct cnode *node_get(struct redis_cluster *cl, const char *host, int port)
{
    struct cnode *n = node_find(cl, host, port);
    if (n)
        return n;
    n = mem_calloc(1, sizeof(*n));
    n->cl = cl;
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = port;
    snprintf(n->addr, sizeof(n->addr), "%s:%d", host, port);
    node_cfg(n, cl->cfg);
    char labels[320];
    snprintf(labels, sizeof(labels), "node=\"%s\"", n->addr);
    n->m_up = metrics_gauge("batchd_redis_node_up", labels,
                            "1 while batchd has a ready connection to this cluster node (0 once it left the map).");
    n->pool = redis_node_new(cl->loop, &n->cfg, cl->slow_ms);
    n->pool->core.m_up = n->m_up; /* the pool keeps its node's gauge */
    cl->nodes = mem_realloc(cl->nodes, (cl->n_nodes + 1) * sizeof(*cl->nodes));
    n->idx = cl->n_nodes;
    cl->nodes[cl->n_nodes++] = n;
    redis_cluster_sub_attach(cl, n);
    log_info("redis cluster node added", "node=%s", n->addr);
    return n;
}

static void reap_cb(uv_timer_t *t)
{
    struct redis_cluster *cl = t->data;
    for (unsigned i = 0; i < cl->n_retired; i++) {
        struct cnode *n = cl->retired[i];
        redis_pool_free(n->pool);
        free(n);
    }
    cl->n_retired = 0;
}

/* Out of the map (apply has given its slots to others already): its pool
 * goes on the next tick, not inside its own reply. */
static void node_retire(struct redis_cluster *cl, unsigned i)
{
    struct cnode *n = cl->nodes[i];
    log_info("redis cluster node removed", "node=%s", n->addr);
    redis_cluster_sub_detach(cl, n);
    *n->m_up = 0;
    cl->nodes[i] = cl->nodes[--cl->n_nodes];
    cl->nodes[i]->idx = i;
    cl->retired = mem_realloc(cl->retired, (cl->n_retired + 1) * sizeof(*cl->retired));
    cl->retired[cl->n_retired++] = n;
    uv_timer_start(&cl->reap, reap_cb, 0, 0);
}

struct cnode *redis_cluster_node_of(const struct redis_cluster *cl, unsigned slot)
{
    return cl->slot_owner[slot];
}

/* --- the slot map ------------------------------------------------------------------------ */

static void refresh_now(struct redis_cluster *cl);

static void timer_cb(uv_timer_t *t)
{
    refresh_now(t->data);
}

static void arm(struct redis_cluster *cl)
{
    if (cl->freeing)
        return;
    uint64_t now = uv_now(cl->loop);
    uint64_t every = cl->urgent ? URGENT_SPACING_MS : (uint64_t)cl->cfg->cluster_refresh_ms;
    uint64_t due = cl->last_refresh_ms + every;
    uv_timer_start(&cl->timer, timer_cb, due > now ? due - now : 0, 0);
}

void redis_cluster_refresh_soon(struct redis_cluster *cl, const char *why)
{
    if (cl->freeing || cl->urgent)
        return;
    log_debug("redis cluster refresh asked", "why=%s", LOG_Q(why));
    cl->urgent = true;
    if (!cl->refreshing)
        arm(cl);
}

static void apply(struct redis_cluster *cl, const struct cluster_topology *t)
{
    struct cnode **owner = mem_alloc(t->n_nodes * sizeof(*owner));
    for (unsigned i = 0; i < cl->n_nodes; i++)
        cl->nodes[i]->primary = false;
    for (unsigned i = 0; i < t->n_nodes; i++) {
        owner[i] = node_get(cl, t->nodes[i].host, t->nodes[i].port);
        owner[i]->primary = true;
    }
    unsigned moved = 0, covered = 0;
    for (unsigned s = 0; s < CLUSTER_SLOTS; s++) {
        struct cnode *n = t->slot_node[s] >= 0 ? owner[t->slot_node[s]] : NULL;
        moved += cl->mapped && n != cl->slot_owner[s];
        covered += n != NULL;
        cl->slot_owner[s] = n;
    }
    free(owner);
    for (unsigned i = cl->n_nodes; i-- > 0;)
        if (!cl->nodes[i]->primary)
            node_retire(cl, i);
    bool first = !cl->mapped;
    cl->mapped = true;
    cl->n_covered = covered;
    if (moved)
        (*cl->m_changes)++;
    if (first || moved)
        log_info("redis cluster slot map", "primaries=%u slots_covered=%u slots_moved=%u", t->n_nodes, covered,
                 moved);
    if (covered < CLUSTER_SLOTS)
        log_warn("redis cluster has slots without a primary", "slots_covered=%u", covered);
    redis_cluster_sub_remap(cl, moved > 0);
}

static void slots_cb(void *ctx, const redisReply *reply, int err)
{
    struct cnode *asked = ctx;
    struct redis_cluster *cl = asked->cl;
    if (cl->freeing)
        return;
    cl->refreshing = false;
    const char *why = NULL;
    if (err < 0) {
        why = err == -ETIMEDOUT ? "timeout" : "connection lost";
    } else if (reply->type == REDIS_REPLY_ERROR) {
        why = reply->str;
    } else {
        struct cluster_topology t;
        memset(&t, 0, sizeof(t));
        if (cluster_topology_parse(&t, reply, asked->host, &why) == 0) {
            (*cl->m_refresh_ok)++;
            apply(cl, &t);
            cluster_topology_deinit(&t);
            cl->urgent = cl->n_covered < CLUSTER_SLOTS;
            arm(cl);
            return;
        }
        cluster_topology_deinit(&t);
    }
    (*cl->m_refresh_err)++;
    log_warn("redis cluster refresh failed", "node=%s err=%s", asked->addr, LOG_Q(why));
    cl->urgent = true;
    arm(cl);
}

static void refresh_now(struct redis_cluster *cl)
{
    if (cl->freeing || cl->refreshing)
        return;
    cl->last_refresh_ms = uv_now(cl->loop);
    cl->urgent = false;
    /* A ready node, primaries first, turn by turn. */
    struct cnode *ask = NULL;
    for (unsigned pass = 0; pass < 2 && ask == NULL; pass++)
        for (unsigned k = 0; k < cl->n_nodes && ask == NULL; k++) {
            struct cnode *n = cl->nodes[(cl->refresh_rr + k) % cl->n_nodes];
            if ((pass == 1 || n->primary) && redis_pool_up(n->pool)) {
                ask = n;
                cl->refresh_rr = (cl->refresh_rr + k + 1) % cl->n_nodes;
            }
        }
    if (ask) {
        const char *argv[2] = { "CLUSTER", "SLOTS" };
        size_t lens[2] = { 7, 5 };
        if (redis_node_command(ask->pool, false, slots_cb, ask, 2, argv, lens) == 0) {
            cl->refreshing = true;
            redis_pool_flush(ask->pool);
            return;
        }
    }
    /* Nobody to ask: (re)open the seeds, which then answer. */
    const struct cfg_redis_url *u = &cl->cfg->url;
    for (unsigned i = 0; i < u->n_seeds; i++)
        (void)node_get(cl, u->seeds[i].host, u->seeds[i].port);
    cl->urgent = true;
    arm(cl);
}

/* --- routed commands ----------------------------------------------------------------------- */

struct cmget;

struct ccmd {
    struct redis_cluster *cl;
    redis_reply_fn cb;
    void *ctx;
    struct redis_script *script;    /* NULL: a plain command */
    unsigned slot;
    unsigned redirects;
    struct cnode *sent_to;          /* the node asked last */
    struct cmget *m;                /* a part of a split MGET */
    unsigned first, n;              /* its keys: m->order[first .. first + n) */
    bool read_script;               /* a node's cross-slot read script (argv: "0", keys) */
    int argc;
    const char **argv;
    size_t *lens;
};

/* A split MGET: replies merged into top in request order. */
struct cmget {
    redis_reply_fn cb;
    void *ctx;
    redisReply *top;
    unsigned outstanding, ok;
    int err;
    uint64_t *order;                /* node index << 48 | slot << 32 | key index, sorted */
};

static const redisReply nil_reply = { .type = REDIS_REPLY_NIL };

static struct ccmd *ccmd_new(struct redis_cluster *cl, int argc, const char **argv, const size_t *lens)
{
    size_t bytes = 0;
    for (int i = 0; i < argc; i++)
        bytes += lens[i] + 1;
    struct ccmd *k = mem_alloc(sizeof(*k) + (size_t)argc * (sizeof(char *) + sizeof(size_t)) + bytes);
    memset(k, 0, sizeof(*k));
    k->cl = cl;
    k->argc = argc;
    k->argv = (const char **)(k + 1);
    k->lens = (size_t *)(k->argv + argc);
    char *d = (char *)(k->lens + argc);
    for (int i = 0; i < argc; i++) {
        memcpy(d, argv[i], lens[i]);
        d[lens[i]] = '\0';
        k->argv[i] = d;
        k->lens[i] = lens[i];
        d += lens[i] + 1;
    }
    return k;
}

static void ccmd_cb(void *ctx, const redisReply *reply, int err);
static void read_script_fallback(struct ccmd *k, const redisReply *reply);

static int ccmd_send(struct ccmd *k, struct cnode *n, bool asking)
{
    if (n == NULL)
        return -EAGAIN;
    k->sent_to = n;
    if (k->script)
        return redis_node_script(n->pool, asking, k->script, ccmd_cb, k, k->argc, k->argv, k->lens);
    return redis_node_command(n->pool, asking, ccmd_cb, k, k->argc, k->argv, k->lens);
}

/* err PART_REPLACED: its keys were sent again in other parts. */
#define PART_REPLACED 1

static void part_done(struct ccmd *k, const redisReply *reply, int err)
{
    struct cmget *m = k->m;
    if (err == PART_REPLACED) {
        /* nothing of its own to merge or count */
    } else if (err == 0 && reply->type == REDIS_REPLY_ARRAY && reply->elements == k->n) {
        redis_reply_compose_hold(m->top, reply);
        for (unsigned j = 0; j < k->n; j++)
            m->top->element[(uint32_t)m->order[k->first + j]] = reply->element[j];
        m->ok++;
    } else {
        (*k->cl->m_part_err)++;
        if (m->err == 0)
            m->err = err < 0 ? err : -EIO;
    }
    if (--m->outstanding > 0)
        return;
    if (m->ok)
        m->cb(m->ctx, m->top, 0);
    else
        m->cb(m->ctx, NULL, m->err ? m->err : -EIO);
    redis_reply_put(m->top);
    free(m->order);
    free(m);
}

/* Follows MOVED and ASK; true when the command went out again. */
static bool redirect(struct ccmd *k, const redisReply *reply)
{
    struct redis_cluster *cl = k->cl;
    unsigned slot;
    struct cluster_addr addr;
    enum cluster_redir r = cluster_redirect_parse(reply->str, reply->len, &slot, &addr);
    if (r == CLUSTER_REDIR_NONE) {
        if (strncmp(reply->str, "CLUSTERDOWN", 11) == 0 || strncmp(reply->str, "TRYAGAIN", 8) == 0)
            redis_cluster_refresh_soon(cl, reply->str);
        return false;
    }
    if (k->redirects++ >= MAX_REDIRECTS || slot >= CLUSTER_SLOTS)
        return false;
    /* No host: the node that answered, on another port. */
    struct cnode *n = node_find(cl, addr.host[0] ? addr.host : k->sent_to->host, addr.port);
    if (r == CLUSTER_REDIR_MOVED) {
        /* The map is not patched here: the refresh brings the whole of it,
         * and a change is then seen (and the near cache's trust renewed). */
        (*cl->m_moved)++;
        redis_cluster_refresh_soon(cl, "MOVED");
    } else {
        (*cl->m_ask)++;
    }
    return n && ccmd_send(k, n, r == CLUSTER_REDIR_ASK) == 0;
}

static void ccmd_cb(void *ctx, const redisReply *reply, int err)
{
    struct ccmd *k = ctx;
    struct redis_cluster *cl = k->cl;
    if (!cl->freeing) {
        if (err == 0 && reply->type == REDIS_REPLY_ERROR && k->read_script) {
            read_script_fallback(k, reply);
            part_done(k, NULL, PART_REPLACED);
            free(k);
            return;
        }
        if (err == 0 && reply->type == REDIS_REPLY_ERROR && redirect(k, reply))
            return;
        if (err < 0 && err != -ECANCELED && err != -EBUSY)
            redis_cluster_refresh_soon(cl, "a node failed a command");
    }
    if (k->m)
        part_done(k, reply, err);
    else
        k->cb(k->ctx, reply, err);
    free(k);
}

static int send_keyed(struct redis_cluster *cl, struct ccmd *k)
{
    struct cnode *n = cl->slot_owner[k->slot];
    if (n == NULL)
        redis_cluster_refresh_soon(cl, "a slot without a primary");
    int rc = ccmd_send(k, n, false);
    if (rc == -EAGAIN && n)
        redis_cluster_refresh_soon(cl, "a primary is down");
    if (rc != 0)
        free(k);
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* A read-only script that may read keys of several slots (Redis 7's
 * allow-cross-slot-keys), given as ARGV: one call a node a flush, in place
 * of one MGET a slot. A key not served by that node (a slot moving) fails
 * the whole call; its keys then go as MGETs a slot (mget_slot_parts). */
static struct redis_script read_script = {
    "#!lua flags=no-writes,allow-cross-slot-keys\n"
    "local out = {}\n"
    "for i = 1, #ARGV do out[i] = redis.call('GET', ARGV[i]) end\n"
    "return out\n",
    ""
};

static const char **pargv;
static size_t *plens, pcap;

static void part_args(unsigned n)
{
    if (pcap < n + 1) {
        pcap = n + 1;
        pargv = mem_realloc(pargv, pcap * sizeof(*pargv));
        plens = mem_realloc(plens, pcap * sizeof(*plens));
    }
}

/* Sends keys[0..n) (at positions first.. of m->order, sorted by slot) as
 * one MGET a slot. Returns the error of the last part not sent, or 0. */
static int mget_slot_parts(struct redis_cluster *cl, struct cmget *m, unsigned first, unsigned n,
                           const char *const *keys, const size_t *klens)
{
    int last_err = 0;
    part_args(n);
    for (unsigned i = 0; i < n;) {
        unsigned slot = (unsigned)(m->order[first + i] >> 32) & 0xFFFF, j = i;
        pargv[0] = "MGET";
        plens[0] = 4;
        for (; j < n && ((m->order[first + j] >> 32) & 0xFFFF) == slot; j++) {
            pargv[j - i + 1] = keys[j];
            plens[j - i + 1] = klens[j];
        }
        struct ccmd *k = ccmd_new(cl, (int)(j - i + 1), pargv, plens);
        k->slot = slot;
        k->m = m;
        k->first = first + i;
        k->n = j - i;
        m->outstanding++;
        int rc = send_keyed(cl, k);
        if (rc != 0) {
            m->outstanding--;
            (*cl->m_part_err)++;
            last_err = rc;
        }
        i = j;
    }
    return last_err;
}

/* A node's read script failed with an error: its keys go again, a slot at a time. */
static void read_script_fallback(struct ccmd *k, const redisReply *reply)
{
    struct redis_cluster *cl = k->cl;
    (*cl->m_script_fallbacks)++;
    if (strstr(reply->str, "flag") || strstr(reply->str, "shebang") || strstr(reply->str, "compiling")) {
        if (!cl->no_read_script)
            log_warn("redis cluster: the cross-slot read script is refused; reads go as one MGET a slot",
                     "node=%s err=%s", k->sent_to->addr, LOG_Q(reply->str));
        cl->no_read_script = true;
    } else {
        redis_cluster_refresh_soon(cl, "a node's read script met a key it does not serve");
    }
    (void)mget_slot_parts(cl, k->m, k->first, k->n, k->argv + 1, k->lens + 1);
}

static int mget(struct redis_cluster *cl, redis_reply_fn cb, void *ctx, int argc, const char **argv,
                const size_t *lens)
{
    unsigned n = (unsigned)argc - 1;
    struct cmget *m = mem_calloc(1, sizeof(*m));
    m->cb = cb;
    m->ctx = ctx;
    m->order = mem_alloc(n * sizeof(*m->order));
    /* node index << 48 | slot << 32 | key index: sorted, a node's keys are
     * together and, within them, a slot's (no primary known: last). */
    for (unsigned i = 0; i < n; i++) {
        unsigned slot = cluster_key_slot(argv[i + 1], lens[i + 1]);
        const struct cnode *o = cl->slot_owner[slot];
        uint64_t ni = o ? o->idx : 0xFFFF;
        m->order[i] = ni << 48 | (uint64_t)slot << 32 | i;
    }
    qsort(m->order, n, sizeof(*m->order), cmp_u64);
    unsigned slots = 0, nodes = 0;
    for (unsigned i = 0; i < n; i++) {
        slots += i == 0 || m->order[i] >> 32 != m->order[i - 1] >> 32;
        nodes += i == 0 || m->order[i] >> 48 != m->order[i - 1] >> 48;
    }
    m->top = redis_reply_compose(n, slots + nodes);
    for (unsigned i = 0; i < n; i++)
        m->top->element[i] = (redisReply *)&nil_reply;
    m->outstanding = 1; /* held while sending */
    int last_err = 0;
    static const char **keys;
    static size_t *klens, kcap;
    if (kcap < n) {
        kcap = n;
        keys = mem_realloc(keys, kcap * sizeof(*keys));
        klens = mem_realloc(klens, kcap * sizeof(*klens));
    }
    for (unsigned i = 0; i < n; i++) {
        unsigned idx = (uint32_t)m->order[i];
        keys[i] = argv[idx + 1];
        klens[i] = lens[idx + 1];
    }
    for (unsigned i = 0; i < n;) {
        uint64_t ni = m->order[i] >> 48;
        unsigned j = i;
        while (j < n && m->order[j] >> 48 == ni)
            j++;
        struct cnode *node = ni == 0xFFFF ? NULL : cl->nodes[ni];
        bool one_slot = (m->order[i] >> 32) == (m->order[j - 1] >> 32);
        if (node == NULL || one_slot || cl->no_read_script) {
            int rc = mget_slot_parts(cl, m, i, j - i, keys + i, klens + i);
            last_err = rc ? rc : last_err;
        } else {
            part_args(j - i);
            pargv[0] = "0";
            plens[0] = 1;
            for (unsigned x = i; x < j; x++) {
                pargv[x - i + 1] = keys[x];
                plens[x - i + 1] = klens[x];
            }
            struct ccmd *k = ccmd_new(cl, (int)(j - i + 1), pargv, plens);
            k->m = m;
            k->first = i;
            k->n = j - i;
            k->read_script = true;
            k->sent_to = node;
            m->outstanding++;
            int rc = redis_node_script(node->pool, false, &read_script, ccmd_cb, k, k->argc, k->argv, k->lens);
            if (rc != 0) {
                m->outstanding--;
                free(k);
                /* Its pool is down or busy: the slot parts meet the same. */
                rc = mget_slot_parts(cl, m, i, j - i, keys + i, klens + i);
                last_err = rc ? rc : last_err;
            }
        }
        i = j;
    }
    if (m->outstanding == 1 && m->ok == 0) {
        /* Nothing went out: the caller hears it now, as from one MGET. */
        redis_reply_put(m->top);
        free(m->order);
        free(m);
        return last_err ? last_err : -EAGAIN;
    }
    m->outstanding--;
    return 0;
}

int redis_cluster_command(struct redis_cluster *cl, redis_reply_fn cb, void *ctx, int argc, const char **argv,
                          const size_t *argvlen)
{
    if (argc < 2)
        return -EINVAL; /* every command batchd sends names a key first */
    if (argc > 2 && argvlen[0] == 4 && strncasecmp(argv[0], "MGET", 4) == 0)
        return mget(cl, cb, ctx, argc, argv, argvlen);
    struct ccmd *k = ccmd_new(cl, argc, argv, argvlen);
    k->cb = cb;
    k->ctx = ctx;
    k->slot = cluster_key_slot(argv[1], argvlen[1]);
    return send_keyed(cl, k);
}

int redis_cluster_script(struct redis_cluster *cl, struct redis_script *script, redis_reply_fn cb, void *ctx,
                         int argc, const char **argv, const size_t *argvlen)
{
    long nkeys = argc > 0 ? strtol(argv[0], NULL, 10) : 0;
    if (nkeys < 1 || nkeys >= argc)
        return -EINVAL;
    unsigned slot = cluster_key_slot(argv[1], argvlen[1]);
    for (long i = 2; i <= nkeys; i++)
        if (cluster_key_slot(argv[i], argvlen[i]) != slot) {
            log_error("redis cluster: a script's keys are in different slots", "first=%.*s other=%.*s",
                      (int)argvlen[1], argv[1], (int)argvlen[i], argv[i]);
            return -EINVAL;
        }
    struct ccmd *k = ccmd_new(cl, argc, argv, argvlen);
    k->cb = cb;
    k->ctx = ctx;
    k->script = script;
    k->slot = slot;
    return send_keyed(cl, k);
}

void redis_cluster_flush(struct redis_cluster *cl)
{
    for (unsigned i = 0; i < cl->n_nodes; i++)
        redis_pool_flush(cl->nodes[i]->pool);
}

bool redis_cluster_up(const struct redis_cluster *cl)
{
    if (!cl->mapped || cl->n_covered == 0)
        return false;
    for (unsigned i = 0; i < cl->n_nodes; i++)
        if (cl->nodes[i]->primary && redis_pool_up(cl->nodes[i]->pool))
            return true;
    return false;
}

/* --- life ------------------------------------------------------------------------------------ */

struct redis_cluster *redis_cluster_new(struct redis_pool *router, uv_loop_t *loop, const struct cfg_redis *cfg,
                                        int64_t slow_ms)
{
    struct redis_cluster *cl = mem_calloc(1, sizeof(*cl));
    cl->router = router;
    cl->loop = loop;
    cl->cfg = cfg;
    cl->slow_ms = slow_ms;
    hashtab_init(&cl->chans, 64);
    metrics_init(cl);
    uv_timer_init(loop, &cl->timer);
    cl->timer.data = cl;
    uv_timer_init(loop, &cl->reap);
    cl->reap.data = cl;
    for (unsigned i = 0; i < cfg->url.n_seeds; i++)
        (void)node_get(cl, cfg->url.seeds[i].host, cfg->url.seeds[i].port);
    cl->urgent = true;
    uv_timer_start(&cl->timer, timer_cb, 10, 0); /* once a seed is connected */
    return cl;
}

void redis_cluster_configure(struct redis_cluster *cl, const struct cfg_redis *cfg, int64_t slow_ms)
{
    cl->cfg = cfg;
    cl->slow_ms = slow_ms;
    for (unsigned i = 0; i < cl->n_nodes; i++) {
        node_cfg(cl->nodes[i], cfg);
        redis_pool_configure(cl->nodes[i]->pool, &cl->nodes[i]->cfg, slow_ms);
    }
    if (!cl->refreshing)
        arm(cl);
}

static void cluster_closed_cb(uv_handle_t *h)
{
    struct redis_cluster *cl = h->data;
    if (--cl->handles_open > 0)
        return;
    free(cl->retired);
    free(cl->router); /* callers may still name it until now, like a pool being freed */
    free(cl);
}

void redis_cluster_free(struct redis_cluster *cl)
{
    cl->freeing = true;
    redis_cluster_sub_free(cl);
    for (unsigned i = 0; i < cl->n_nodes; i++) {
        *cl->nodes[i]->m_up = 0;
        redis_pool_free(cl->nodes[i]->pool);
        free(cl->nodes[i]);
    }
    free(cl->nodes);
    cl->nodes = NULL;
    cl->n_nodes = 0;
    reap_cb(&cl->reap);
    cl->handles_open = 2;
    uv_close((uv_handle_t *)&cl->timer, cluster_closed_cb);
    uv_close((uv_handle_t *)&cl->reap, cluster_closed_cb);
}
