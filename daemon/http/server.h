/*
 * server: the listeners, the set of open connections, and draining.
 *
 *   main listener  (listen)        ──> conns ──> main router (resources, streams, proxy)
 *   admin listener (admin_listen)  ──> conns ──> admin router (/healthz /readyz /metrics)
 *
 * With no admin_listen, the ops routes live on the main router.
 */
#ifndef BATCHD_SERVER_H
#define BATCHD_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <uv.h>

#include "daemon/config.h"
#include "daemon/http/close_reason.h"
#include "daemon/http/router.h"
#include "proto/http.h"

struct conn;

struct listener {
    uv_tcp_t tcp;
    struct server *srv;
    const char *name;           /* "main" or "admin", for logs and metrics */
    struct router *router;      /* the current one; requests hold their own ref */
    unsigned open;              /* connections open on this listener */
    unsigned max_open;
    bool listening;
    int64_t *m_open;
    uint64_t *m_accepted, *m_rejected;
};

struct server {
    uv_loop_t *loop;
    const struct cfg_batchd *cfg;   /* current settings; swapped on reload */
    struct http_limits limits;
    struct listener main, admin;
    bool has_admin;
    bool draining;
    LIST_HEAD(conn_list, conn) conns; /* every open connection */
    void (*drained_cb)(void *arg);
    void *drained_arg;
};

/* Binds the listeners (nothing is accepted until server_start). main_fd and
 * admin_fd, when >= 0, are sockets bound already (by the master of several
 * workers) that the server takes over instead. Returns 0 or a negative
 * errno, having logged what failed. */
int server_init(struct server *s, uv_loop_t *loop, const struct cfg_batchd *cfg, int main_fd,
                int admin_fd) __attribute__((warn_unused_result));
/* A socket bound to `a` with SO_REUSEPORT and listening: the fd, or a
 * negative errno. For the master, which binds one per worker. */
int server_listen_socket(const struct cfg_addr *a) __attribute__((warn_unused_result));
int server_start(struct server *s) __attribute__((warn_unused_result));
/* Takes new reload-safe settings (timeouts, limits). */
void server_configure(struct server *s, const struct cfg_batchd *cfg);
/* Installs routers; the server takes the references passed in. */
void server_set_routers(struct server *s, struct router *main_rt, struct router *admin_rt);

/* Stops accepting on the main listener and drains connections; calls
 * done(arg) once no main-listener connection is left. */
void server_drain(struct server *s, void (*done)(void *arg), void *arg);
/* Closes every remaining connection with the given reason. */
void server_close_all(struct server *s, enum conn_close_reason reason);
/* Closes the listeners. */
void server_close(struct server *s);

/* conn.c bookkeeping */
void server_conn_added(struct server *s, struct conn *c);
void server_conn_removed(struct server *s, struct conn *c);

#endif
