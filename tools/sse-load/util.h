/*
 * util: clocks, the read buffer every connection reads into, and reading a
 * process's resident set size. Shared by every module of sse-load.
 * Allocation that never returns NULL is proto/mem.h's (mem_alloc & co.).
 */
#ifndef SSE_LOAD_UTIL_H
#define SSE_LOAD_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

/* CLOCK_MONOTONIC in nanoseconds: for durations and deadlines. */
uint64_t util_mono_ns(void);

/* CLOCK_REALTIME in nanoseconds: the clock the event payload carries, so a
 * receive time can be compared with a publish time across processes. */
uint64_t util_real_ns(void);

/* VmRSS of process `pid` (0 = this process) in bytes, or a negative errno
 * when /proc/PID/status cannot be read or has no VmRSS line. */
/* The libuv alloc_cb of every stream sse-load reads: it lends the one
 * static read buffer (64 KiB) of the process. Safe because there is one
 * loop in one thread and every read_cb consumes the bytes before it
 * returns. */
void util_read_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

int64_t util_rss_bytes(pid_t pid) __attribute__((warn_unused_result));

#endif
