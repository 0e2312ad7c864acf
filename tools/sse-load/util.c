/*
 * util: see util.h.
 */
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <time.h>

#define READ_BUF_SIZE (64 * 1024)

static char read_buf[READ_BUF_SIZE];

void util_read_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    buf->base = read_buf;
    buf->len = sizeof(read_buf);
}

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t util_mono_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

uint64_t util_real_ns(void)
{
    return clock_ns(CLOCK_REALTIME);
}

int64_t util_rss_bytes(pid_t pid)
{
    char path[64], line[256];
    int64_t rss = -ENOENT;
    FILE *f;

    if (pid == 0)
        snprintf(path, sizeof(path), "/proc/self/status");
    else
        snprintf(path, sizeof(path), "/proc/%ld/status", (long)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -errno;
    while (fgets(line, sizeof(line), f) != NULL) {
        long long kb;
        if (sscanf(line, "VmRSS: %lld kB", &kb) == 1) {
            rss = (int64_t)kb * 1024;
            break;
        }
    }
    fclose(f);
    return rss;
}
