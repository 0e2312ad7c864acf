/* redis_uv: hiredis async contexts on the libuv loop. See redis_uv.h. */
#include "daemon/backend/redis_uv.h"

#include <stdbool.h>
#include <stdlib.h>

struct redis_uv {
    uv_poll_t poll;
    uv_idle_t idle;
    redisAsyncContext *ac; /* NULL once hiredis let go of it */
    int want;              /* UV_READABLE | UV_WRITABLE, as the poll should wait for */
    int polling;           /* what the poll was last started with */
    bool idle_write;       /* a write is due in the idle callback */
    bool in_idle_write;    /* inside that write */
    int open;              /* handles not closed yet */
};

static void poll_cb(uv_poll_t *h, int status, int events)
{
    struct redis_uv *u = h->data;
    /* On an error hiredis learns of it from the read or write it tries. */
    if (status < 0)
        events = u->polling;
    if (u->ac && (events & UV_READABLE))
        redisAsyncHandleRead(u->ac);
    if (u->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(u->ac);
}

static void apply(struct redis_uv *u)
{
    if (u->want == u->polling || u->ac == NULL)
        return;
    if (u->want == 0)
        uv_poll_stop(&u->poll);
    else
        uv_poll_start(&u->poll, u->want, poll_cb);
    u->polling = u->want;
}

static void idle_cb(uv_idle_t *h)
{
    struct redis_uv *u = h->data;
    uv_idle_stop(&u->idle);
    if (!u->idle_write || u->ac == NULL)
        return;
    u->idle_write = false;
    u->in_idle_write = true;
    redisAsyncHandleWrite(u->ac); /* may free the context: see on_cleanup */
    u->in_idle_write = false;
}

static void on_add_read(void *data)
{
    struct redis_uv *u = data;
    u->want |= UV_READABLE;
    apply(u);
}

static void on_del_read(void *data)
{
    struct redis_uv *u = data;
    u->want &= ~UV_READABLE;
    apply(u);
}

static void on_add_write(void *data)
{
    struct redis_uv *u = data;
    /* Not connected: writability reports the connect. Called back from a
     * write that did not finish: the socket buffer is full, so wait. */
    if (!(u->ac->c.flags & REDIS_CONNECTED) || u->in_idle_write || (u->want & UV_WRITABLE)) {
        u->want |= UV_WRITABLE;
        apply(u);
        return;
    }
    if (!u->idle_write) {
        u->idle_write = true;
        uv_idle_start(&u->idle, idle_cb);
    }
}

static void on_del_write(void *data)
{
    struct redis_uv *u = data;
    if (u->idle_write) {
        u->idle_write = false;
        uv_idle_stop(&u->idle);
    }
    u->want &= ~UV_WRITABLE;
    apply(u);
}

static void on_close(uv_handle_t *h)
{
    struct redis_uv *u = h->data;
    if (--u->open == 0)
        free(u);
}

static void on_cleanup(void *data)
{
    struct redis_uv *u = data;
    u->ac->ev.data = NULL;
    u->ac = NULL;
    u->idle_write = false;
    uv_close((uv_handle_t *)&u->poll, on_close);
    uv_close((uv_handle_t *)&u->idle, on_close);
}

int redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    if (ac->ev.data != NULL)
        return REDIS_ERR;
    struct redis_uv *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return REDIS_ERR;
    if (uv_poll_init_socket(loop, &u->poll, ac->c.fd) != 0) {
        free(u);
        return REDIS_ERR;
    }
    uv_idle_init(loop, &u->idle);
    u->poll.data = u;
    u->idle.data = u;
    u->ac = ac;
    u->open = 2;
    ac->ev.data = u;
    ac->ev.addRead = on_add_read;
    ac->ev.delRead = on_del_read;
    ac->ev.addWrite = on_add_write;
    ac->ev.delWrite = on_del_write;
    ac->ev.cleanup = on_cleanup;
    return REDIS_OK;
}
