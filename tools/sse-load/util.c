/*
 * util: see util.h.
 */
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void out_of_memory(size_t n)
{
    fprintf(stderr, "sse-load: out of memory (asked for %zu bytes)\n", n);
    abort();
}

void *util_alloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        out_of_memory(n);
    return p;
}

void *util_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (p == NULL)
        out_of_memory(count * size);
    return p;
}

void *util_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        out_of_memory(n);
    return q;
}

char *util_strndup(const char *s, size_t n)
{
    char *p = util_alloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *util_strdup(const char *s)
{
    return util_strndup(s, strlen(s));
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
