/*
 * notify: the sd_notify protocol without libsystemd. See notify.h.
 *
 * The socket is opened once and every message goes out with sendto() to
 * the address, not over connect(): when systemd re-executes itself it binds
 * $NOTIFY_SOCKET again, and a connected socket would still point at the
 * old one. The socket is non-blocking, so a full receive queue costs a
 * counted EAGAIN instead of a stalled loop.
 */
#include "daemon/notify.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "daemon/log.h"
#include "daemon/metrics.h"

enum notify_state {
    NOTIFY_OFF,       /* no NOTIFY_SOCKET, or closed: nothing is sent */
    NOTIFY_ON,        /* socket open */
    NOTIFY_BROKEN,    /* NOTIFY_SOCKET set but unusable: every message is an error */
};

/* The longest message: STATUS text beyond this is cut. */
#define NOTIFY_MSG_MAX 1024

static enum notify_state state = NOTIFY_OFF;
static int sock_fd = -1;
static struct sockaddr_un addr;
static socklen_t addr_len;
static bool failing;               /* the last send failed (already logged) */
static uint64_t errors_unregistered;
static uint64_t *m_errors = &errors_unregistered;

static uv_timer_t watchdog_timer;
static bool watchdog_on;

static void send_failed(const char *why)
{
    (*m_errors)++;
    if (!failing)
        log_warn("systemd notify failed", "socket=%s err=%s", LOG_Q(getenv("NOTIFY_SOCKET")),
                 LOG_Q(why));
    failing = true;
}

static void notify_send(const char *msg, size_t len)
{
    switch (state) {
    case NOTIFY_OFF: return;
    case NOTIFY_BROKEN: send_failed("socket unusable"); return;
    case NOTIFY_ON: break;
    }
    /* addr_len 0: a worker's link to its master, already connected. */
    ssize_t n = addr_len ? sendto(sock_fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT,
                                  (const struct sockaddr *)&addr, addr_len)
                         : send(sock_fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
        send_failed(strerror(errno));
        return;
    }
    if (failing)
        log_info("systemd notify works again", "");
    failing = false;
}

static void watchdog_cb(uv_timer_t *t)
{
    notify_watchdog();
}

/* Parses a positive decimal; 0 when s is not one. */
static uint64_t parse_u64(const char *s)
{
    char *end;
    if (s == NULL || *s < '0' || *s > '9')
        return 0;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return 0;
    return (uint64_t)v;
}

/* Fills addr from NOTIFY_SOCKET: 0, or a reason it cannot be used. */
static const char *set_address(const char *name)
{
    size_t n = strlen(name);
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    if (name[0] == '@') {
        /* Abstract: a leading NUL, then the name with no terminator. */
        if (n > sizeof(addr.sun_path))
            return "name too long";
        memcpy(addr.sun_path + 1, name + 1, n - 1);
        addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
        return NULL;
    }
    if (name[0] != '/')
        return "not an absolute path or an @abstract name";
    if (n >= sizeof(addr.sun_path))
        return "path too long";
    memcpy(addr.sun_path, name, n + 1);
    addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return NULL;
}

uint64_t notify_watchdog_usec(void)
{
    const char *usec_s = getenv("WATCHDOG_USEC");
    const char *pid_s = getenv("WATCHDOG_PID");
    if (usec_s == NULL)
        return 0;
    uint64_t usec = parse_u64(usec_s);
    if (usec == 0) {
        log_warn("systemd watchdog off: bad WATCHDOG_USEC", "value=%s", LOG_Q(usec_s));
        return 0;
    }
    /* WATCHDOG_PID names the process systemd watches; a child that
     * inherited the environment must not ping for its parent. */
    if (pid_s != NULL && parse_u64(pid_s) != (uint64_t)getpid()) {
        log_info("systemd watchdog is for another process", "watchdog_pid=%s pid=%d",
                 LOG_Q(pid_s), (int)getpid());
        return 0;
    }
    return usec;
}

static void watchdog_start(uv_loop_t *loop, uint64_t usec)
{
    if (usec == 0)
        return;
    /* Half the timeout, as sd_watchdog_enabled(3) advises. */
    uint64_t interval_ms = usec / 2000;
    if (interval_ms == 0)
        interval_ms = 1;
    uv_timer_init(loop, &watchdog_timer);
    uv_timer_start(&watchdog_timer, watchdog_cb, interval_ms, interval_ms);
    /* Only a ping: it must never be what keeps the loop running. */
    uv_unref((uv_handle_t *)&watchdog_timer);
    watchdog_on = true;
    log_info("systemd watchdog on", "timeout_ms=%" PRIu64 " interval_ms=%" PRIu64, usec / 1000,
             interval_ms);
}

void notify_init(uv_loop_t *loop)
{
    /* Registered even without systemd, so the series always exists. */
    m_errors = metrics_counter("batchd_notify_errors_total", "",
                               "Messages to systemd (NOTIFY_SOCKET) that could not be sent.");
    const char *name = getenv("NOTIFY_SOCKET");
    if (name == NULL || name[0] == '\0')
        return;
    const char *why = set_address(name);
    if (why == NULL) {
        sock_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (sock_fd < 0)
            why = strerror(errno);
    }
    if (why != NULL) {
        /* systemd waits for READY=1 and will time the start out. */
        log_warn("systemd notify socket unusable", "socket=%s err=%s", LOG_Q(name), LOG_Q(why));
        state = NOTIFY_BROKEN;
        failing = true;  /* logged just now */
        return;
    }
    state = NOTIFY_ON;
    log_debug("systemd notify on", "socket=%s", LOG_Q(name));
    if (loop)
        watchdog_start(loop, notify_watchdog_usec());
}

void notify_init_link(uv_loop_t *loop, int fd, uint64_t watchdog_usec)
{
    m_errors = metrics_counter("batchd_notify_errors_total", "",
                               "Messages to systemd (NOTIFY_SOCKET) that could not be sent.");
    sock_fd = fd;
    addr_len = 0;
    state = NOTIFY_ON;
    watchdog_start(loop, watchdog_usec);
}

void notify_watchdog(void)
{
    static const char msg[] = "WATCHDOG=1";
    notify_send(msg, sizeof(msg) - 1);
}

void notify_ready(void)
{
    char msg[64];
    int n = snprintf(msg, sizeof(msg), "READY=1\nSTATUS=Ready, pid %d", (int)getpid());
    notify_send(msg, (size_t)n);
}

void notify_reloading(void)
{
    struct timespec ts;
    char msg[64];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t usec = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    int n = snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, usec);
    notify_send(msg, (size_t)n);
}

void notify_stopping(void)
{
    static const char msg[] = "STOPPING=1\nSTATUS=Shutting down, draining connections";
    notify_send(msg, sizeof(msg) - 1);
}

void notify_status(const char *fmt, ...)
{
    char msg[NOTIFY_MSG_MAX];
    static const char prefix[] = "STATUS=";
    memcpy(msg, prefix, sizeof(prefix) - 1);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg + sizeof(prefix) - 1, sizeof(msg) - (sizeof(prefix) - 1), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = sizeof(prefix) - 1 + (size_t)n;
    if (len > sizeof(msg) - 1)
        len = sizeof(msg) - 1;
    for (size_t i = sizeof(prefix) - 1; i < len; i++)
        if (msg[i] == '\n')
            msg[i] = ' ';
    notify_send(msg, len);
}

void notify_close(void)
{
    if (watchdog_on) {
        uv_timer_stop(&watchdog_timer);
        uv_close((uv_handle_t *)&watchdog_timer, NULL);
        watchdog_on = false;
    }
    if (sock_fd >= 0)
        close(sock_fd);
    sock_fd = -1;
    state = NOTIFY_OFF;
    failing = false;
    m_errors = &errors_unregistered;
}
