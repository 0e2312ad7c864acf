/*
 * server: listeners, the connection set, and draining. See server.h.
 */
#include "daemon/http/server.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/http/conn_int.h"
#include "daemon/http/encode.h"
#include "daemon/log.h"
#include "daemon/metrics.h"

#define ADMIN_MAX_CONNECTIONS 128
#define LISTEN_BACKLOG 4096

static uint64_t *m_accept_errors;

static void apply_limits(struct server *s, const struct cfg_batchd *cfg)
{
    s->cfg = cfg;
    s->limits.max_header_bytes = (size_t)cfg->max_header_bytes;
    s->limits.max_uri_bytes = (size_t)cfg->max_uri_bytes;
    s->limits.max_body_bytes = (size_t)cfg->max_body_bytes;
    s->limits.max_headers = 100;
    s->main.max_open = (unsigned)cfg->max_connections;
    conn_configure(cfg);
    encode_configure(cfg);
}

/* libuv 1.44 has no SO_REUSEPORT flag, so the socket is made here. */
static int bind_socket(const struct cfg_addr *a, bool reuseport)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

int server_listen_socket(const struct cfg_addr *a)
{
    int fd = bind_socket(a, true);
    if (fd >= 0 && listen(fd, LISTEN_BACKLOG) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* fd >= 0: a socket bound (and listening) already, taken over. */
static int listener_init(struct server *s, struct listener *l, const char *name,
                         const struct cfg_addr *a, bool reuseport, int fd)
{
    l->srv = s;
    l->name = name;
    char labels[64];
    snprintf(labels, sizeof(labels), "listener=\"%s\"", name);
    l->m_open = metrics_gauge("batchd_connections_open", labels, "Client connections open now.");
    l->m_accepted = metrics_counter("batchd_connections_accepted_total", labels,
                                    "Client connections accepted.");
    l->m_rejected = metrics_counter("batchd_connections_rejected_total", labels,
                                    "Connections answered 503 because the listener was full.");
    if (fd < 0)
        fd = bind_socket(a, reuseport);
    if (fd < 0) {
        log_error("cannot bind", "listener=%s addr=%s err=%s", name, a->text, LOG_Q(strerror(-fd)));
        return fd;
    }
    uv_tcp_init(s->loop, &l->tcp);
    l->tcp.data = l;
    int rc = uv_tcp_open(&l->tcp, fd);
    if (rc != 0) {
        close(fd);
        log_error("cannot open listener", "listener=%s err=%s", name, uv_strerror(rc));
        return rc;
    }
    l->listening = true;
    return 0;
}

static void raise_fd_limit(const struct cfg_batchd *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Pools, listeners, the admin side and a margin for lingering closes. */
    rlim_t need = (rlim_t)cfg->max_connections + ADMIN_MAX_CONNECTIONS + 512;
    if (rl.rlim_cur < need)
        log_warn("open file limit below max_connections", "limit=%llu max_connections=%lld "
                 "hint=\"raise LimitNOFILE or lower max_connections; accept will fail with EMFILE before 503s start\"",
                 (unsigned long long)rl.rlim_cur, (long long)cfg->max_connections);
}

int server_init(struct server *s, uv_loop_t *loop, const struct cfg_batchd *cfg, int main_fd,
                int admin_fd)
{
    memset(s, 0, sizeof(*s));
    s->loop = loop;
    LIST_INIT(&s->conns);
    apply_limits(s, cfg);
    s->admin.max_open = ADMIN_MAX_CONNECTIONS;
    m_accept_errors = metrics_counter("batchd_accept_errors_total", "",
                                      "accept() failures, such as EMFILE when out of file descriptors.");
    raise_fd_limit(cfg);
    int rc = listener_init(s, &s->main, "main", &cfg->listen, cfg->reuseport, main_fd);
    if (rc != 0)
        return rc;
    if (cfg->admin_listen.len) {
        s->has_admin = true;
        rc = listener_init(s, &s->admin, "admin", &cfg->admin_listen, cfg->reuseport, admin_fd);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static void on_connection_cb(uv_stream_t *ls, int status)
{
    struct listener *l = ls->data;
    if (status < 0) {
        (*m_accept_errors)++;
        log_warn("accept failed", "listener=%s err=%s", l->name, uv_strerror(status));
        return;
    }
    int rc;
    if (l->open >= l->max_open) {
        (*l->m_rejected)++;
        rc = conn_accept_busy(l);
    } else {
        (*l->m_accepted)++;
        rc = conn_accept(l);
    }
    if (rc != 0) {
        (*m_accept_errors)++;
        log_warn("accept failed", "listener=%s err=%s", l->name, uv_strerror(rc));
    }
}

static int listener_start(struct listener *l)
{
    int rc = uv_listen((uv_stream_t *)&l->tcp, LISTEN_BACKLOG, on_connection_cb);
    if (rc != 0) {
        log_error("cannot listen", "listener=%s err=%s", l->name, uv_strerror(rc));
        return rc;
    }
    return 0;
}

int server_start(struct server *s)
{
    int rc = listener_start(&s->main);
    if (rc == 0 && s->has_admin)
        rc = listener_start(&s->admin);
    if (rc == 0)
        log_info("listening", "addr=%s admin=%s max_connections=%lld", s->cfg->listen.text,
                 s->has_admin ? s->cfg->admin_listen.text : "-", (long long)s->cfg->max_connections);
    return rc;
}

void server_configure(struct server *s, const struct cfg_batchd *cfg)
{
    apply_limits(s, cfg);
}

void server_set_routers(struct server *s, struct router *main_rt, struct router *admin_rt)
{
    router_unref(s->main.router);
    s->main.router = main_rt;
    if (s->has_admin) {
        router_unref(s->admin.router);
        s->admin.router = admin_rt;
    } else {
        router_unref(admin_rt);
    }
}

void server_conn_added(struct server *s, struct conn *c)
{
    LIST_INSERT_HEAD(&s->conns, c, link);
    c->lst->open++;
    (*c->lst->m_open)++;
}

void server_conn_removed(struct server *s, struct conn *c)
{
    LIST_REMOVE(c, link);
    c->lst->open--;
    (*c->lst->m_open)--;
    if (s->draining && s->main.open == 0 && s->drained_cb) {
        void (*cb)(void *) = s->drained_cb;
        s->drained_cb = NULL;
        cb(s->drained_arg);
    }
}

static void close_listener(struct listener *l)
{
    if (l->listening) {
        l->listening = false;
        uv_close((uv_handle_t *)&l->tcp, NULL);
    }
}

void server_drain(struct server *s, void (*done)(void *arg), void *arg)
{
    s->draining = true;
    s->drained_cb = done;
    s->drained_arg = arg;
    close_listener(&s->main);
    /* A connection leaves the list only in its close callback, never
     * during conn_drain or conn_close: LIST_FOREACH is safe. */
    struct conn *c;
    LIST_FOREACH(c, &s->conns, link) {
        if (c->lst == &s->main)
            conn_drain(c);
    }
    if (s->main.open == 0 && s->drained_cb) {
        s->drained_cb = NULL;
        done(arg);
    }
}

void server_close_all(struct server *s, enum conn_close_reason reason)
{
    struct conn *c;
    LIST_FOREACH(c, &s->conns, link)
        conn_close(c, reason);
}

void server_close(struct server *s)
{
    close_listener(&s->main);
    close_listener(&s->admin);
    router_unref(s->main.router);
    router_unref(s->admin.router);
    s->main.router = s->admin.router = NULL;
}
