/*
 * ops: /healthz, /readyz and /metrics.
 *
 * /healthz answers 200 while the loop runs. /readyz asks the readiness
 * check installed by the app (shutting down, or no backend able to answer)
 * and answers 200 or 503 with the reason. /metrics renders the registry.
 */
#ifndef BATCHD_OPS_H
#define BATCHD_OPS_H

#include "daemon/http/router.h"

/* Returns NULL when ready, or a short reason ("shutting_down"). */
typedef const char *(*ops_ready_fn)(void *arg);

/* worker: the worker's number under a master (/healthz then names it and
 * its pid), or -1 for a process of its own. */
void ops_init(ops_ready_fn ready, void *arg, int worker);
void ops_add_routes(struct router *rt);

#endif
