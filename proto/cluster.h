/*
 * cluster: what batchd needs to know of Redis Cluster, with no I/O.
 *
 *   key ──cluster_key_slot──> slot ──topology.slot_node──> primary's address
 *   CLUSTER SLOTS reply ──cluster_topology_parse──> topology
 *   "-MOVED 3999 10.0.0.2:6379" ──cluster_redirect_parse──> slot + address
 *
 * daemon/backend/redis_cluster.c asks a seed node for CLUSTER SLOTS, keeps
 * the topology, sends each key to its slot's primary and follows MOVED (the
 * slot lives elsewhere now: refresh the topology) and ASK (this one command
 * only, after ASKING) redirections.
 */
#ifndef BATCHD_PROTO_CLUSTER_H
#define BATCHD_PROTO_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

/* CRC16-CCITT (XMODEM: poly 0x1021, init 0), as Redis Cluster uses it. */
uint16_t cluster_crc16(const char *p, size_t len);

#define CLUSTER_SLOTS 16384
/* At most this many distinct nodes, primaries and replicas together, in a
 * topology (Redis Cluster's own recommended limit is 1000). */
#define CLUSTER_MAX_NODES 1024

/* The slot of a key: CRC16 of the key, or of the part between the first
 * '{' and the next '}' when that part is non-empty (Redis' hash tag rule),
 * mod 16384. */
unsigned cluster_key_slot(const char *key, size_t len);

/* A node address as Redis reports it: host is NUL-terminated, 1 to 255
 * bytes with no control byte or space (but "" in a redirection from the
 * node that answered, see cluster_redirect_parse). */
struct cluster_addr {
    char host[256];
    int port;
};

bool cluster_addr_eq(const struct cluster_addr *a, const struct cluster_addr *b);

/* A primary's replicas, as CLUSTER SLOTS lists them (for information:
 * batchd reads from primaries). */
struct cluster_replicas {
    struct cluster_addr *addrs; /* distinct, in the order first seen */
    unsigned n;
};

/* A topology: for each slot, the index of its primary in nodes[], or -1
 * when uncovered; plus each primary's replicas (for information). */
struct cluster_topology {
    struct cluster_addr *nodes;  /* primaries, distinct, in the order first seen */
    unsigned n_nodes;
    int16_t slot_node[CLUSTER_SLOTS];
    unsigned n_covered;          /* slots with a primary */
    struct cluster_replicas *replicas; /* replicas[i]: those of nodes[i] */
    unsigned n_replicas;         /* over all primaries */
};

/* Parses a CLUSTER SLOTS reply (RESP2: an array of [start, end, primary,
 * replica...], each node an array [host, port, id?, metadata?...]) into *t,
 * which need not be initialised. Returns 0 (call cluster_topology_deinit
 * later), or -EINVAL with a short reason in *why (a static string) when the
 * reply is malformed: not an array, ranges out of 0..16383 or start > end,
 * a missing host, a port out of 1..65535, wrong element types, overlapping
 * ranges, more than CLUSTER_MAX_NODES distinct nodes. *t is then empty
 * (deinit is harmless). A host that is empty, "?" or nil (Redis 7 says so
 * when it does not know its own endpoint) means "the node you asked":
 * asked_host replaces it (-EINVAL when asked_host is NULL or ""). Extra
 * elements (node ids, Redis 7's hostname metadata) are ignored. The reply
 * stays the caller's: nothing in *t points into it. */
int cluster_topology_parse(struct cluster_topology *t, const redisReply *r,
                           const char *asked_host, const char **why)
    __attribute__((warn_unused_result));
void cluster_topology_deinit(struct cluster_topology *t);

/* The index in t->nodes of the primary at addr, or -1. */
int cluster_topology_find(const struct cluster_topology *t, const struct cluster_addr *addr);

/* Parses a redirection error reply's text (without the '-'): "MOVED 3999
 * 127.0.0.1:6381" or "ASK 3999 127.0.0.1:6381". The host may be an IPv6
 * literal without brackets, as Redis prints it (the last ':' separates the
 * port); an empty host or "?" means the node that answered and is given as
 * "" in addr->host. Returns CLUSTER_REDIR_MOVED / CLUSTER_REDIR_ASK with
 * *slot and *addr filled, or CLUSTER_REDIR_NONE (slot 0 and an empty addr)
 * when the text is neither, or is malformed: a slot out of 0..16383, a port
 * out of 1..65535, a host longer than 255 bytes or holding a space or a
 * control byte, anything after the port. */
enum cluster_redir { CLUSTER_REDIR_NONE, CLUSTER_REDIR_MOVED, CLUSTER_REDIR_ASK };
enum cluster_redir cluster_redirect_parse(const char *s, size_t len, unsigned *slot,
                                          struct cluster_addr *addr);

#endif
