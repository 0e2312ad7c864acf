/*
 * app: wires the modules together and runs the loop.
 *
 *   main ──> app_run ──> server (listeners, conns) ──> routers ──> ops, resources, streams, proxy
 *              │
 *              └── signals: SIGTERM/SIGINT drain then exit, SIGHUP reload
 */
#ifndef BATCHD_APP_H
#define BATCHD_APP_H

#include "daemon/config.h"

/* Runs batchd with `cfg` (taken over) until it is told to stop. Returns the
 * process exit code. */
int app_run(struct config *cfg);

#endif
