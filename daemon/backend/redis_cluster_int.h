/*
 * redis_cluster_int: what redis_cluster.c (topology, routing) and
 * redis_cluster_sub.c (sharded pub/sub, tracking) share.
 */
#ifndef BATCHD_REDIS_CLUSTER_INT_H
#define BATCHD_REDIS_CLUSTER_INT_H

#include "daemon/backend/redis_cluster.h"
#include "daemon/backend/redis_int.h"
#include "proto/cluster.h"
#include "proto/hashtab.h"

/* A primary (or, before the first slot map, a seed). */
struct cnode {
    struct redis_cluster *cl;
    struct redis_pool *pool;
    struct cfg_redis cfg;       /* the cluster's settings with this node's host and port */
    char host[256];
    int port;
    char addr[280];             /* host:port */
    bool primary;               /* owns slots in the current map */
    bool track_up;              /* its tracking is confirmed */
    unsigned idx;               /* its place in the cluster's nodes[] */
    int64_t *m_up;              /* batchd_redis_node_up{node="host:port"} */
};

/* An SSE channel: the node it is subscribed on. */
struct cchan {
    struct hashtab_node hnode;
    char *name;
    struct cnode *node;         /* NULL while its slot has no known primary */
};

struct redis_cluster {
    struct redis_pool *router;
    uv_loop_t *loop;
    const struct cfg_redis *cfg;
    int64_t slow_ms;
    struct cnode **nodes;
    unsigned n_nodes;
    struct cnode *slot_owner[CLUSTER_SLOTS];  /* NULL: no primary known */
    unsigned n_covered;
    struct cnode **retired;     /* left the map: freed on the next tick (not inside their own replies) */
    unsigned n_retired;
    uv_timer_t reap;
    bool mapped;                /* a slot map has been applied */
    uv_timer_t timer;           /* periodic refresh, and the 100 ms spacing of urgent ones */
    bool refreshing;            /* a CLUSTER SLOTS is out */
    bool urgent;                /* refresh as soon as allowed */
    uint64_t last_refresh_ms;
    unsigned refresh_rr;        /* the next node to ask */
    bool freeing;
    unsigned handles_open;
    /* pub/sub */
    redis_message_fn sub_fn;
    void *sub_arg;
    struct hashtab chans;
    /* tracking */
    char **prefixes;
    unsigned n_prefixes;
    redis_track_fn track_fn;
    void *track_arg;
    bool track_up;
    /* metrics */
    bool no_read_script;        /* Redis refused the cross-slot read script: MGETs a slot only */
    uint64_t *m_refresh_ok, *m_refresh_err, *m_moved, *m_ask, *m_part_err, *m_changes, *m_script_fallbacks;
};

/* redis_cluster.c */
/* Asks for a new slot map soon (at most every 100 ms). */
void redis_cluster_refresh_soon(struct redis_cluster *cl, const char *why);
/* The primary serving slot, or NULL. */
struct cnode *redis_cluster_node_of(const struct redis_cluster *cl, unsigned slot);

/* redis_cluster_sub.c */
/* A node pool was made: give it the pub/sub and tracking the router has. */
void redis_cluster_sub_attach(struct redis_cluster *cl, struct cnode *n);
/* The slot map changed (or a node goes): move channels, recheck tracking. */
void redis_cluster_sub_remap(struct redis_cluster *cl, bool slots_moved);
/* A node is about to be freed. */
void redis_cluster_sub_detach(struct redis_cluster *cl, struct cnode *n);
void redis_cluster_sub_free(struct redis_cluster *cl);

#endif
