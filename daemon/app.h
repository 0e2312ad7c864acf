/*
 * app: wires the modules together and runs the loop.
 *
 *   main ──> app_run ──> server (listeners, conns) ──> routers ──> ops, resources, streams, proxy
 *              │
 *              └── signals: SIGTERM/SIGINT drain then exit, SIGHUP reload
 */
#ifndef BATCHD_APP_H
#define BATCHD_APP_H

#include <stdint.h>

#include "daemon/config.h"

/* What the master (daemon/master) hands one of its workers. */
struct app_worker {
    unsigned id;                /* 0 .. workers-1: the `worker` label and log field */
    int main_fd, admin_fd;      /* listening sockets bound by the master; admin_fd -1 when none */
    int link_fd;                /* datagram socket to the master, for notify messages */
    uint64_t watchdog_usec;     /* 0: no watchdog pings */
};

/* Reads and checks `file` as `batchd -t` does, key files included. NULL
 * with the reasons appended to errors when it is not valid. */
struct config *app_load_config(const char *file, struct buf *errors);

/* Runs batchd with `cfg` (taken over) until it is told to stop. Returns the
 * process exit code. `worker` is NULL for a process of its own; for a
 * worker, the listeners and the notify link come from the master, SIGINT
 * is left to the master (which sends SIGTERM), and the signals the master
 * blocked are unblocked once their handlers are in place. */
int app_run(struct config *cfg, const struct app_worker *worker);

#endif
