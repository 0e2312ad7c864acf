/*
 * pg_int: what pg_pool.c (connections, the pipeline, results) and
 * pg_query.c (statements, reads routed to replicas, the record of recent
 * writes) share; everyone else uses pg_pool.h.
 */
#ifndef BATCHD_PG_INT_H
#define BATCHD_PG_INT_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "daemon/backend/pg_pool.h"
#include "daemon/backend/pool.h"

enum pgq_kind { Q_USER, Q_SETUP, Q_PREPARE, Q_PING, Q_SQL };

struct pgq {
    STAILQ_ENTRY(pgq) link;
    enum pgq_kind kind;
    int stmt;
    unsigned nparams;
    char *params;               /* the values back to back, each NUL-terminated */
    int *lengths;               /* [nparams]; -1 for SQL NULL */
    unsigned batch;
    bool retried;
    struct pg_pool *fallback;   /* a replica's read: the primary, to retry it on */
    const char *sql;            /* Q_SQL: static text */
    pg_result_fn cb;
    void *ctx;
    PGresult *result;
    uint64_t start_ns, start_ms;
};

/* The core's part (state, pending, timer, backoff, last activity) comes first. */
struct pconn {
    struct pool_conn base;
    PGconn *pg;
    uv_poll_t *poll;
    int fd;
    int poll_events;
    STAILQ_HEAD(pgq_list, pgq) queue;   /* sent, results awaited: oldest first */
    bool *prepared;            /* [n_stmts]: PREPARE sent here and not failed */
};

struct stmt {
    char *sql;
    unsigned nparams;           /* 0: one text[] (pg_pool_prepare); else untyped */
    char name[24];
};

struct pg_pool {
    struct pool core;           /* first: the connections are core.conns */
    const struct cfg_postgres *cfg;
    const char *conninfo;       /* cfg->conninfo, or a replica's of cfg->replicas */
    int replica;                /* index in cfg->replicas; -1 for the primary */
    struct pg_replicas *replicas; /* the primary's, when replicas are configured */
    struct stmt *stmts;
    unsigned n_stmts;
    char *labels, *addr;        /* a replica's metric labels and address (owned) */
};

static inline struct pconn *conn_at(const struct pg_pool *p, unsigned i)
{
    return (struct pconn *)p->core.conns[i];
}

/* A query of kind, zeroed but for its kind and start time. */
struct pgq *pg_query_new(enum pgq_kind kind);
void pg_query_free(struct pgq *q);
/* Queues q on the least busy READY connection: 0, or -EAGAIN. */
int pg_query_dispatch(struct pg_pool *p, struct pgq *q);

#endif
