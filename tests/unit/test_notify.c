/*
 * test_notify: the sd_notify messages (daemon/notify.h) as a receiver sees
 * them, on a real AF_UNIX datagram socket bound in a temporary directory.
 *
 * The integration tests cover READY/STOPPING/WATCHDOG from a running
 * daemon; this covers what the daemon does not send yet (RELOADING, whose
 * MONOTONIC_USEC must be CLOCK_MONOTONIC now) and the STATUS escaping.
 */
#include "unit.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/notify.h"

struct receiver {
    char dir[64];
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int fd;
    uv_loop_t loop;
};

/* Binds a receiving socket, points NOTIFY_SOCKET at it and runs notify_init. */
static int setup(void **state)
{
    struct receiver *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    snprintf(r->dir, sizeof(r->dir), "/tmp/test_notify.XXXXXX");
    assert_non_null(mkdtemp(r->dir));
    snprintf(r->path, sizeof(r->path), "%s/notify.sock", r->dir);
    r->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(r->fd >= 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, r->path, sizeof(r->path));
    assert_int_equal(bind(r->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    struct timeval tv = { .tv_sec = 2 };
    setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setenv("NOTIFY_SOCKET", r->path, 1);
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    assert_int_equal(uv_loop_init(&r->loop), 0);
    notify_init(&r->loop);
    *state = r;
    return 0;
}

static int teardown(void **state)
{
    struct receiver *r = *state;
    notify_close();
    uv_run(&r->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&r->loop), 0);
    close(r->fd);
    unlink(r->path);
    rmdir(r->dir);
    unsetenv("NOTIFY_SOCKET");
    metrics_free_all();
    free(r);
    return 0;
}

/* The next datagram, NUL-terminated; fails the test after 2 s without one. */
static size_t recv_msg(struct receiver *r, char *out, size_t cap)
{
    ssize_t n = recv(r->fd, out, cap - 1, 0);
    if (n < 0) {
        fail_msg("no datagram: %s", strerror(errno));
        return 0;   /* not reached: fail_msg jumps out */
    }
    out[n] = '\0';
    return (size_t)n;
}

static uint64_t now_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void test_reloading_carries_monotonic_usec(void **state)
{
    struct receiver *r = *state;
    char msg[256];
    uint64_t before = now_usec();
    notify_reloading();
    uint64_t after = now_usec();
    recv_msg(r, msg, sizeof(msg));

    uint64_t usec = 0;
    int used = 0;
    int got = sscanf(msg, "RELOADING=1\nMONOTONIC_USEC=%" SCNu64 "%n", &usec, &used);
    if (got != 1 || msg[used] != '\0')
        fail_msg("unexpected message \"%s\"", msg);
    assert_true(usec >= before);
    assert_true(usec <= after);
}

static void test_ready_and_stopping(void **state)
{
    struct receiver *r = *state;
    char msg[256], want[64];
    notify_ready();
    size_t n = recv_msg(r, msg, sizeof(msg));
    snprintf(want, sizeof(want), "READY=1\nSTATUS=Ready, pid %d", (int)getpid());
    assert_bytes_eq(msg, n, want, strlen(want));

    notify_stopping();
    recv_msg(r, msg, sizeof(msg));
    assert_true(strncmp(msg, "STOPPING=1\n", 11) == 0 || strcmp(msg, "STOPPING=1") == 0);
}

static void test_status_cannot_inject_assignments(void **state)
{
    struct receiver *r = *state;
    char msg[256];
    notify_status("loaded %d resources\nREADY=1", 3);
    size_t n = recv_msg(r, msg, sizeof(msg));
    const char want[] = "STATUS=loaded 3 resources READY=1";
    assert_bytes_eq(msg, n, want, sizeof(want) - 1);
}

static void test_long_status_is_cut(void **state)
{
    struct receiver *r = *state;
    char big[4000], msg[8192];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    notify_status("%s", big);
    size_t n = recv_msg(r, msg, sizeof(msg));
    assert_true(n > 100 && n < sizeof(big));
    assert_true(strncmp(msg, "STATUS=xxx", 10) == 0);
    assert_null(memchr(msg, '\n', n));
}

/* batchd_notify_errors_total as rendered in /metrics. */
static long errors_total(void)
{
    struct buf out = BUF_INIT;
    metrics_render(&out);
    const char *p = strstr(out.data, "\nbatchd_notify_errors_total ");
    long v = p ? strtol(p + strlen("\nbatchd_notify_errors_total "), NULL, 10) : -1;
    buf_deinit(&out);
    return v;
}

static void test_send_errors_are_counted(void **state)
{
    struct receiver *r = *state;
    assert_int_equal(errors_total(), 0);
    /* The receiver goes away: every message is now an error, none fatal. */
    close(r->fd);
    unlink(r->path);
    r->fd = -1;
    notify_ready();
    notify_stopping();
    assert_int_equal(errors_total(), 2);
}

int main(void)
{
    log_set_level(LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reloading_carries_monotonic_usec, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ready_and_stopping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_cannot_inject_assignments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_status_is_cut, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_errors_are_counted, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
