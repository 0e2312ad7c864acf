/*
 * notify: tells systemd about batchd's state with the sd_notify protocol,
 * spoken directly (no libsystemd): one datagram per message on an AF_UNIX
 * SOCK_DGRAM socket to $NOTIFY_SOCKET, a path or, with a leading '@', a
 * name in the Linux abstract namespace.
 *
 *   app ── notify_ready() ────────> "READY=1\nSTATUS=..."  ──> $NOTIFY_SOCKET
 *   loop ─ watchdog timer ────────> "WATCHDOG=1"           ──>   (systemd)
 *
 * Without NOTIFY_SOCKET every call here does nothing, so batchd runs the
 * same from a shell. A message that cannot be sent is counted in
 * batchd_notify_errors_total and logged (warn) once, when sending starts
 * to fail; it is never fatal. Sends never block the loop.
 */
#ifndef BATCHD_NOTIFY_H
#define BATCHD_NOTIFY_H

#include <uv.h>

/* Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID and opens the socket.
 * When WATCHDOG_USEC is set and WATCHDOG_PID is unset or names this
 * process, starts an unref'd timer on loop that sends WATCHDOG=1 every
 * WATCHDOG_USEC/2: the pings come from the loop, so they stop when it
 * hangs. Call once, before the listeners open; the environment is left
 * as it is. With loop NULL (the master of several workers) there is no
 * timer: the master sends notify_watchdog() itself. */
void notify_init(uv_loop_t *loop);

/* A worker of a master: every message goes to fd (a connected datagram
 * socket whose other end the master reads), in the same format; the master
 * speaks to systemd for the group. With watchdog_usec, pings as above. The
 * fd is closed by notify_close. */
void notify_init_link(uv_loop_t *loop, int fd, uint64_t watchdog_usec);

/* WATCHDOG_USEC when it applies to this process (WATCHDOG_PID unset or
 * ours), else 0; logs why not. */
uint64_t notify_watchdog_usec(void);

/* WATCHDOG=1. */
void notify_watchdog(void);

/* READY=1 with a STATUS line: the listeners are up (or, later, a reload
 * has finished). */
void notify_ready(void);

/* RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC in µs, which systemd
 * 253+ requires for Type=notify-reload). Send notify_ready() when the
 * reload is done. */
void notify_reloading(void);

/* STOPPING=1: shutdown has begun. */
void notify_stopping(void);

/* STATUS=<text>, the line `systemctl status` shows. A newline in the text
 * is replaced by a space so it cannot add other assignments. */
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Stops the watchdog timer (uv_close: the loop must run once more) and
 * closes the socket. Safe when notify_init did nothing, and twice. */
void notify_close(void);

#endif
