/*
 * master: with `workers` > 1, the parent of that many worker processes,
 * each running app_run on its own loop (nginx's model).
 *
 *   systemd ── SIGTERM, SIGHUP ──> master ── SIGTERM, SIGHUP ──> worker 0 .. N-1
 *      ^                            │   ^                           │
 *      └── READY=1, RELOADING=1 ────┘   └─ READY=1, WATCHDOG=1 ─────┘
 *          STOPPING=1, WATCHDOG=1          (a socketpair per worker)
 *
 * Before forking, the master binds every listener once per worker, each
 * socket with SO_REUSEPORT and listening, so a bad address fails in the
 * master and the kernel spreads new connections over the workers. A worker
 * gets its own socket and closes the others'. The master keeps its copies:
 * when a worker dies its socket stays open, the connections the kernel
 * sends there wait in its backlog and the worker that replaces it (same
 * socket) accepts them: none is refused.
 *
 * The master runs no event loop: it blocks the signals it handles, reads
 * them from a signalfd and polls the workers' notify sockets.
 */
#ifndef BATCHD_MASTER_H
#define BATCHD_MASTER_H

#include "daemon/config.h"

/* The number of worker processes `cfg` asks for: `workers`, or one per
 * online CPU for 0. 1 means no master. */
unsigned master_workers(const struct config *cfg);

/* Binds the listeners, starts `n` workers with `cfg` (taken over) and
 * supervises them until SIGTERM or SIGINT has stopped them all:
 *
 *   a worker that exits is started again after 100 ms, doubling up to 5 s
 *     while it keeps dying within 10 s of its start (counted in
 *     batchd_worker_restarts_total);
 *   SIGHUP checks the file as `batchd -t` does and, when it is valid,
 *     passes SIGHUP to every worker (READY=1 once all have reloaded);
 *   SIGTERM and SIGINT send SIGTERM to every worker and wait for them to
 *     drain (a second one is passed on too, as a worker's "exit now").
 *
 * Returns the exit code: 0 when every worker ended with 0, 1 otherwise or
 * when the start failed (bind, fork). */
int master_run(struct config *cfg, unsigned n);

#endif
