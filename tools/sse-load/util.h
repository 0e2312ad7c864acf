/*
 * util: allocation that never returns NULL, clocks, and reading a process's
 * resident set size. Shared by every module of sse-load.
 */
#ifndef SSE_LOAD_UTIL_H
#define SSE_LOAD_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Allocation failure prints the size asked for and aborts. */
void *util_alloc(size_t n);
void *util_calloc(size_t count, size_t size);
void *util_realloc(void *p, size_t n);
char *util_strdup(const char *s);
char *util_strndup(const char *s, size_t n);

/* CLOCK_MONOTONIC in nanoseconds: for durations and deadlines. */
uint64_t util_mono_ns(void);

/* CLOCK_REALTIME in nanoseconds: the clock the event payload carries, so a
 * receive time can be compared with a publish time across processes. */
uint64_t util_real_ns(void);

/* VmRSS of process `pid` (0 = this process) in bytes, or a negative errno
 * when /proc/PID/status cannot be read or has no VmRSS line. */
int64_t util_rss_bytes(pid_t pid) __attribute__((warn_unused_result));

#endif
