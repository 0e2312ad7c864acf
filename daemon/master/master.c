/*
 * master: forks the workers, restarts them, passes signals on and speaks
 * to systemd for the group. See master.h.
 *
 * Worker slots: a slot owns its listening sockets for the master's whole
 * life; the processes in it come and go.
 *
 *   SLOT_STARTING ──READY=1──> SLOT_READY
 *        ^                         │ exits (not stopping)
 *        └── backoff ── SLOT_WAITING <┘
 *   any state ── SIGTERM, exit ──> SLOT_DONE
 */
#include "daemon/master/master.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon/app.h"
#include "daemon/http/server.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/notify.h"
#include "proto/mem.h"

#define MAX_WORKERS 256
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define STABLE_MS 10000 /* a worker that lived this long restarts with the least delay */

enum slot_state {
    SLOT_STARTING, /* forked, no READY=1 yet */
    SLOT_READY,
    SLOT_WAITING,  /* no process: the next one starts at restart_at */
    SLOT_DONE,     /* stopping, and its process has exited (or never will run) */
};

struct slot {
    unsigned id;
    enum slot_state state;
    pid_t pid;             /* 0 when no process runs */
    int main_fd, admin_fd; /* listening sockets, kept across restarts; -1 */
    int link_fd;           /* the master's end of the notify socketpair; -1 */
    bool link_hup;         /* the worker end is gone: not polled until reaped */
    uint64_t started_ms, restart_at_ms;
    unsigned backoff_ms;
    bool reload_pending;   /* SIGHUP sent, its READY=1 not seen */
    bool reload_seen;      /* RELOADING=1 seen since that SIGHUP */
    bool pinged;           /* WATCHDOG=1 since the master last sent one */
};

/* Static so that what a worker inherits stays reachable (leak checkers). */
static struct master {
    struct config *cfg;
    unsigned n;
    struct slot *slots;
    int sig_fd;
    pid_t pid;
    uint64_t watchdog_usec;
    bool ready_sent, reloading, stopping;
    int code;
} m = { .sig_fd = -1 };

unsigned master_workers(const struct config *cfg)
{
    int64_t n = cfg->batchd.workers;
    if (n == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus > 0 ? cpus : 1;
    }
    return n > MAX_WORKERS ? MAX_WORKERS : (unsigned)n;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void status_ready(void)
{
    notify_status("Ready, %u workers, master pid %d", m.n, (int)m.pid);
}

/* --- the worker side of fork -------------------------------------------------- */

static __attribute__((noreturn)) void worker_main(unsigned id, int link)
{
    struct app_worker w = {
        .id = id,
        .main_fd = m.slots[id].main_fd,
        .admin_fd = m.slots[id].admin_fd,
        .link_fd = link,
        .watchdog_usec = m.watchdog_usec,
    };
    /* Only this worker's sockets stay open. */
    close_fd(&m.sig_fd);
    for (unsigned i = 0; i < m.n; i++) {
        struct slot *t = &m.slots[i];
        close_fd(&t->link_fd);
        if (i != id) {
            close_fd(&t->main_fd);
            close_fd(&t->admin_fd);
        }
    }
    notify_close(); /* the master's NOTIFY_SOCKET */
    /* A master killed with SIGKILL leaves no worker behind: they drain. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != m.pid)
        _exit(1);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    metrics_group_join(id);
    struct config *cfg = m.cfg; /* app_run takes this reference over */
    m.cfg = NULL;
    free(m.slots);
    m.slots = NULL;
    exit(app_run(cfg, &w));
}

/* --- supervision ----------------------------------------------------------------- */

static int spawn(struct slot *s, bool restart)
{
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) != 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int err = -errno;
        close(pair[0]);
        close(pair[1]);
        return err;
    }
    if (pid == 0) {
        close(pair[0]);
        worker_main(s->id, pair[1]);
    }
    close(pair[1]);
    s->link_fd = pair[0];
    s->link_hup = false;
    s->pid = pid;
    s->state = SLOT_STARTING;
    s->started_ms = now_ms();
    s->pinged = false;
    metrics_group_worker_started(s->id, (int)pid, restart);
    log_info(restart ? "worker restarted" : "worker started", "worker_id=%u worker_pid=%d", s->id, (int)pid);
    return 0;
}

static void begin_stop(const char *why);

static void spawn_or_stop(struct slot *s, bool restart)
{
    int rc = spawn(s, restart);
    if (rc == 0)
        return;
    log_error("cannot start a worker, stopping", "worker_id=%u err=%s", s->id, LOG_Q(strerror(-rc)));
    m.code = 1;
    s->state = SLOT_DONE;
    begin_stop("fork_failed");
}

static bool all_in(enum slot_state st)
{
    for (unsigned i = 0; i < m.n; i++)
        if (m.slots[i].state != st)
            return false;
    return true;
}

static void reload_check(void)
{
    if (!m.reloading)
        return;
    for (unsigned i = 0; i < m.n; i++)
        if (m.slots[i].reload_pending)
            return;
    m.reloading = false;
    log_info("workers reloaded", "workers=%u", m.n);
    notify_ready();
    status_ready();
}

static void on_ready(struct slot *s)
{
    if (s->state == SLOT_STARTING) {
        s->state = SLOT_READY;
        log_debug("worker ready", "worker_id=%u worker_pid=%d", s->id, (int)s->pid);
    }
    if (s->reload_pending && s->reload_seen) {
        s->reload_pending = false;
        reload_check();
    }
    if (!m.ready_sent && !m.stopping && all_in(SLOT_READY)) {
        m.ready_sent = true;
        log_info("workers ready", "workers=%u pid=%d", m.n, (int)m.pid);
        notify_ready();
        status_ready();
    } else if (m.ready_sent && !m.reloading && !m.stopping && all_in(SLOT_READY)) {
        status_ready(); /* after a restart */
    }
}

/* WATCHDOG=1 goes to systemd once every running worker has pinged since
 * the last one: a worker whose loop hangs stops the pings. */
static void on_ping(struct slot *s)
{
    s->pinged = true;
    for (unsigned i = 0; i < m.n; i++)
        if (m.slots[i].state == SLOT_READY && !m.slots[i].pinged)
            return;
    notify_watchdog();
    for (unsigned i = 0; i < m.n; i++)
        m.slots[i].pinged = false;
}

/* The worker's datagrams: the sd_notify format, one assignment a line. */
static void read_link(struct slot *s)
{
    char msg[1025];
    ssize_t n;
    while ((n = recv(s->link_fd, msg, sizeof(msg) - 1, MSG_DONTWAIT)) > 0) {
        msg[n] = '\0';
        for (char *line = strtok(msg, "\n"); line; line = strtok(NULL, "\n")) {
            if (strcmp(line, "READY=1") == 0)
                on_ready(s);
            else if (strcmp(line, "RELOADING=1") == 0)
                s->reload_seen = true;
            else if (strcmp(line, "WATCHDOG=1") == 0)
                on_ping(s);
        }
    }
}

static void describe_status(int status, char *out, size_t cap)
{
    if (WIFEXITED(status)) {
        snprintf(out, cap, "exit_code=%d", WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        const char *name = sigabbrev_np(WTERMSIG(status));
        snprintf(out, cap, "signal=SIG%s%s", name ? name : "?", WCOREDUMP(status) ? " core_dumped=yes" : "");
    } else {
        snprintf(out, cap, "status=%d", status);
    }
}

static void reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        struct slot *s = NULL;
        for (unsigned i = 0; i < m.n && s == NULL; i++)
            if (m.slots[i].pid == pid)
                s = &m.slots[i];
        if (s == NULL)
            continue;
        read_link(s); /* a READY=1 or RELOADING=1 sent just before */
        close_fd(&s->link_fd);
        s->pid = 0;
        metrics_group_worker_exited(s->id);
        char how[64];
        describe_status(status, how, sizeof(how));
        bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (s->reload_pending) {
            s->reload_pending = false;
            reload_check();
        }
        if (m.stopping) {
            if (clean) {
                log_info("worker stopped", "worker_id=%u worker_pid=%d %s", s->id, (int)pid, how);
            } else {
                log_error("worker stopped badly", "worker_id=%u worker_pid=%d %s", s->id, (int)pid, how);
                m.code = 1;
            }
            s->state = SLOT_DONE;
            continue;
        }
        uint64_t now = now_ms();
        if (now - s->started_ms >= STABLE_MS || s->backoff_ms == 0)
            s->backoff_ms = BACKOFF_MIN_MS;
        log_error("worker exited, restarting it", "worker_id=%u worker_pid=%d %s lived_ms=%llu delay_ms=%u",
                  s->id, (int)pid, how, (unsigned long long)(now - s->started_ms), s->backoff_ms);
        notify_status("Worker %u (pid %d) exited (%s), restarting", s->id, (int)pid, how);
        s->state = SLOT_WAITING;
        s->restart_at_ms = now + s->backoff_ms;
        s->backoff_ms = s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms * 2;
    }
}

static void begin_stop(const char *why)
{
    if (m.stopping) {
        log_warn("second stop signal, passing it on", "signal=%s", why);
        for (unsigned i = 0; i < m.n; i++)
            if (m.slots[i].pid)
                kill(m.slots[i].pid, SIGTERM);
        return;
    }
    m.stopping = true;
    notify_stopping();
    log_info("stopping workers", "signal=%s workers=%u", why, m.n);
    for (unsigned i = 0; i < m.n; i++) {
        struct slot *s = &m.slots[i];
        /* The master's copies: the sockets close once the workers' go. */
        close_fd(&s->main_fd);
        close_fd(&s->admin_fd);
        if (s->pid)
            kill(s->pid, SIGTERM);
        else
            s->state = SLOT_DONE;
    }
}

static void reload(void)
{
    if (m.stopping)
        return;
    notify_reloading();
    struct buf errors = BUF_INIT;
    struct config *next = app_load_config(m.cfg->file, &errors);
    if (next == NULL) {
        log_lines(LOG_ERROR, "reload rejected", "error", &errors);
        log_error("reload rejected, the running configuration stays", "file=%s", LOG_Q(m.cfg->file));
        buf_deinit(&errors);
        notify_ready();
        return;
    }
    buf_deinit(&errors);
    /* The workers log what waits for a restart; the master keeps the same
     * values, so a worker started later runs what the others run. */
    config_keep_restart_settings(m.cfg, next);
    log_set_level((enum log_level)next->batchd.log_level);
    config_unref(m.cfg);
    m.cfg = next;
    m.reloading = true;
    for (unsigned i = 0; i < m.n; i++) {
        struct slot *s = &m.slots[i];
        if (s->pid == 0)
            continue; /* starts later with the new file */
        s->reload_pending = true;
        s->reload_seen = false;
        kill(s->pid, SIGHUP);
    }
    log_info("reloading workers", "file=%s", LOG_Q(m.cfg->file));
    reload_check();
}

static void read_signals(void)
{
    struct signalfd_siginfo si;
    while (read(m.sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        switch (si.ssi_signo) {
        case SIGCHLD: reap(); break;
        case SIGTERM: begin_stop("SIGTERM"); break;
        case SIGINT: begin_stop("SIGINT"); break;
        case SIGHUP: reload(); break;
        }
    }
}

static void restart_due(void)
{
    uint64_t now = now_ms();
    for (unsigned i = 0; i < m.n && !m.stopping; i++) {
        struct slot *s = &m.slots[i];
        if (s->state == SLOT_WAITING && s->restart_at_ms <= now)
            spawn_or_stop(s, true);
    }
}

/* Milliseconds until the next restart is due, or -1. */
static int poll_timeout(void)
{
    if (m.stopping)
        return -1;
    uint64_t now = now_ms(), next = UINT64_MAX;
    for (unsigned i = 0; i < m.n; i++)
        if (m.slots[i].state == SLOT_WAITING && m.slots[i].restart_at_ms < next)
            next = m.slots[i].restart_at_ms;
    if (next == UINT64_MAX)
        return -1;
    return next <= now ? 0 : (int)(next - now);
}

static void supervise(void)
{
    struct pollfd *pfd = mem_calloc(m.n + 1, sizeof(*pfd));
    struct slot **who = mem_calloc(m.n + 1, sizeof(*who));
    while (!all_in(SLOT_DONE)) {
        unsigned k = 0;
        pfd[k++] = (struct pollfd){ .fd = m.sig_fd, .events = POLLIN };
        for (unsigned i = 0; i < m.n; i++) {
            struct slot *s = &m.slots[i];
            if (s->link_fd >= 0 && !s->link_hup) {
                who[k] = s;
                pfd[k++] = (struct pollfd){ .fd = s->link_fd, .events = POLLIN };
            }
        }
        int rc = poll(pfd, k, poll_timeout());
        if (rc < 0 && errno != EINTR) {
            log_error("poll failed", "err=%s", LOG_Q(strerror(errno)));
            break;
        }
        for (unsigned j = 1; rc > 0 && j < k; j++) {
            if (pfd[j].revents & POLLIN)
                read_link(who[j]);
            else if (pfd[j].revents & (POLLHUP | POLLERR))
                who[j]->link_hup = true; /* until SIGCHLD says it exited */
        }
        if (rc > 0 && (pfd[0].revents & POLLIN))
            read_signals();
        restart_due();
    }
    free(who);
    free(pfd);
}

/* --- start and end ------------------------------------------------------------- */

static int bind_all(void)
{
    const struct cfg_batchd *c = &m.cfg->batchd;
    for (unsigned i = 0; i < m.n; i++) {
        struct slot *s = &m.slots[i];
        s->main_fd = server_listen_socket(&c->listen);
        if (s->main_fd < 0) {
            log_error("cannot bind", "listener=main addr=%s err=%s", c->listen.text, LOG_Q(strerror(-s->main_fd)));
            return -1;
        }
        if (c->admin_listen.len == 0)
            continue;
        s->admin_fd = server_listen_socket(&c->admin_listen);
        if (s->admin_fd < 0) {
            log_error("cannot bind", "listener=admin addr=%s err=%s", c->admin_listen.text,
                      LOG_Q(strerror(-s->admin_fd)));
            return -1;
        }
    }
    return 0;
}

int master_run(struct config *cfg, unsigned n)
{
    m.cfg = cfg;
    m.n = n;
    m.pid = getpid();
    log_set_level((enum log_level)cfg->batchd.log_level);
    signal(SIGPIPE, SIG_IGN);
    /* Blocked from here on; a worker unblocks them once its loop handles them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    m.sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    m.slots = mem_calloc(n, sizeof(*m.slots));
    for (unsigned i = 0; i < n; i++) {
        m.slots[i] = (struct slot){ .id = i, .state = SLOT_DONE, .main_fd = -1, .admin_fd = -1, .link_fd = -1 };
    }
    notify_init(NULL);
    m.watchdog_usec = notify_watchdog_usec();
    int rc = metrics_group_init(n);
    if (m.sig_fd < 0 || rc != 0) {
        log_error("cannot start the master", "err=%s", LOG_Q(strerror(m.sig_fd < 0 ? errno : -rc)));
        m.code = 1;
        goto out;
    }
    if (bind_all() != 0) {
        m.code = 1;
        goto out;
    }
    log_info("master started", "version=%s pid=%d workers=%u config=%s", BATCHD_VERSION, (int)m.pid, n,
             LOG_Q(cfg->file));
    for (unsigned i = 0; i < n; i++)
        m.slots[i].state = SLOT_WAITING; /* not DONE: begin_stop must see them */
    for (unsigned i = 0; i < n && !m.stopping; i++)
        spawn_or_stop(&m.slots[i], false);
    supervise();

out:
    for (unsigned i = 0; i < n; i++) {
        close_fd(&m.slots[i].main_fd);
        close_fd(&m.slots[i].admin_fd);
        close_fd(&m.slots[i].link_fd);
    }
    close_fd(&m.sig_fd);
    notify_close();
    metrics_free_all(); /* the master's own (notify errors); the shared region goes with the process */
    free(m.slots);
    m.slots = NULL;
    config_unref(m.cfg);
    m.cfg = NULL;
    log_info("stopped", "workers=%u exit_code=%d", n, m.code);
    return m.code;
}
