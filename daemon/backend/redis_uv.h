/*
 * redis_uv: drives a hiredis async context from the libuv loop.
 *
 * hiredis asks for read and write interest through five hooks. The adapter
 * that ships with hiredis restarts its uv_poll on every request, and libuv
 * turns each restart into an EPOLL_CTL_DEL plus an EPOLL_CTL_ADD; hiredis
 * asks for reads after every read, so a large MGET reply cost two
 * epoll_ctl calls per 16 KiB. This one:
 *
 *   - touches the uv_poll only when the set of events really changes;
 *   - writes a connected context's commands from a uv_idle callback on the
 *     next loop iteration (an active idle handle keeps the loop from
 *     blocking), unless redis_pool_flush wrote them first at the end of
 *     this one, so the poll waits for writability only after a short
 *     write.
 *
 * Before the connection is established, writability is how hiredis learns
 * that the connect finished, so a context that is not connected yet waits
 * on the poll.
 */
#ifndef BATCHD_REDIS_UV_H
#define BATCHD_REDIS_UV_H

#include <hiredis/async.h>
#include <uv.h>

/* Attaches ac to loop (once per context). REDIS_OK, or REDIS_ERR when ac
 * already has an event library or the handles cannot be set up. hiredis
 * detaches it when the context is freed. */
int redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif
