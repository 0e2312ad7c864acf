/*
 * sse_history: reads of a channel's Redis Stream.
 *
 *   HIST_CLIENT    XRANGE key - + COUNT 1, XREVRANGE key + - COUNT 1 (oldest,
 *                  newest: is Last-Event-ID still in the history?), then
 *                  XRANGE key (from + COUNT 500, page after page
 *   HIST_GAP       XRANGE key (position + COUNT 500, page after page
 *   HIST_POSITION  XREVRANGE key + - COUNT 1 (the newest id)
 *
 * A read holds a reference on its channel. Entries are checked as live
 * messages are (sse_ev_event): one that is not a valid event is dropped
 * and counted. The first failure ends the read; its end goes to the
 * client or the channel that asked (sse_int.h), then it is freed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/backend/redis_pool.h"
#include "daemon/log.h"
#include "daemon/sse/sse_int.h"
#include "proto/mem.h"

static void history_finish(struct sse_history *op);

struct sse_history *sse_history_new(struct sse_channel *ch, enum sse_history_kind kind)
{
    struct sse_history *op = mem_calloc(1, sizeof(*op));
    op->ch = ch;
    op->kind = kind;
    ch->refs++;
    return op;
}

static void history_free(struct sse_history *op)
{
    sse_evq_clear(&op->got, true);
    sse_channel_unref(op->ch);
    free(op);
}

static void history_cmd(struct sse_history *op, redis_reply_fn cb, int argc, const char **argv)
{
    size_t lens[6];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    op->outstanding++;
    if (redis_pool_command(op->ch->hub->redis, cb, op, argc, argv, lens) != 0) {
        op->outstanding--;
        op->err = -EAGAIN;
    }
}

/* Records a read's first failure; Redis's error reply goes to the log. */
static void history_fail(struct sse_history *op, const redisReply *reply, int err)
{
    if (op->err)
        return;
    op->err = err ? err : -EIO;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        snprintf(op->why, sizeof(op->why), "%s", reply->str);
}

static void edge_cb(struct sse_history *op, const redisReply *reply, int err, bool oldest)
{
    if (err == 0 && reply && reply->type == REDIS_REPLY_ARRAY) {
        if (reply->elements > 0) {
            const redisReply *e = reply->element[0];
            struct sse_id id;
            if (e->type == REDIS_REPLY_ARRAY && e->elements > 0 && e->element[0]->type == REDIS_REPLY_STRING &&
                sse_id_parse(str_make(e->element[0]->str, e->element[0]->len), &id)) {
                if (oldest) {
                    op->oldest = id;
                    op->have_oldest = true;
                } else {
                    op->newest = id;
                    op->have_newest = true;
                }
            }
        }
    } else {
        history_fail(op, reply, err);
    }
    if (--op->outstanding == 0)
        history_finish(op);
}

static void oldest_cb(void *ctx, const redisReply *reply, int err)
{
    edge_cb(ctx, reply, err, true);
}

static void newest_cb(void *ctx, const redisReply *reply, int err)
{
    edge_cb(ctx, reply, err, false);
}

/* An entry of an XRANGE reply: [id, [field, value, ...]]. Returns false
 * when it has no id; *out is NULL for an entry that is not a valid event. */
static bool ev_from_entry(const redisReply *entry, struct sse_id *id, struct sse_ev **out)
{
    *out = NULL;
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 || entry->element[0]->type != REDIS_REPLY_STRING)
        return false;
    str_t id_s = str_make(entry->element[0]->str, entry->element[0]->len);
    if (!sse_id_parse(id_s, id))
        return false;
    const redisReply *f = entry->element[1];
    if (f->type != REDIS_REPLY_ARRAY)
        return true;
    str_t event = STR_NULL, data = STR_LIT("");
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (k->len == 5 && memcmp(k->str, "event", 5) == 0)
            event = str_make(v->str, v->len);
        else if (k->len == 4 && memcmp(k->str, "data", 4) == 0)
            data = str_make(v->str, v->len);
    }
    *out = sse_ev_event(*id, id_s, event, data);
    return true;
}

static void page_cb(void *ctx, const redisReply *reply, int err)
{
    struct sse_history *op = ctx;
    op->page_len = 0;
    if (err == 0 && reply && reply->type == REDIS_REPLY_ARRAY) {
        op->page_len = (unsigned)reply->elements;
        for (size_t i = 0; i < reply->elements && !op->too_far; i++) {
            struct sse_ev *e;
            struct sse_id id;
            if (!ev_from_entry(reply->element[i], &id, &e))
                continue;
            op->from = id; /* the next page starts after it, valid or not */
            if (e == NULL) {
                op->n_invalid++;
                continue;
            }
            if (op->kind == HIST_GAP && op->got.n &&
                op->got.cost + SSE_EV_COST(e) > (size_t)op->ch->def->cfg->sync_gap_bytes)
                sse_channel_gap_flush(op);
            sse_evq_push(&op->got, e);
            sse_ev_unref(e); /* the queue holds it */
            if (op->cl && !sse_client_fits(op->cl, op->got.cost)) {
                /* Offered, the replay would overflow the client, which
                 * would come back with the same id forever: stop reading,
                 * it gets a reset instead. */
                op->too_far = true;
                sse_evq_clear(&op->got, true);
            }
        }
    } else {
        history_fail(op, reply, err);
    }
    if (--op->outstanding == 0)
        history_finish(op);
}

/* Reads entries after op->from, SSE_HISTORY_PAGE at a time. */
static void history_page(struct sse_history *op)
{
    char from[SSE_ID_MAX_LEN + 2] = "(";
    sse_id_format(op->from, from + 1);
    const char *argv[6] = { "XRANGE", op->ch->key, from, "+", "COUNT", "500" };
    history_cmd(op, page_cb, 6, argv);
}

void sse_history_start(struct sse_history *op)
{
    const char *key = op->ch->key;
    switch (op->kind) {
    case HIST_CLIENT: {
        const char *oldest[6] = { "XRANGE", key, "-", "+", "COUNT", "1" };
        const char *newest[6] = { "XREVRANGE", key, "+", "-", "COUNT", "1" };
        history_cmd(op, oldest_cb, 6, oldest);
        history_cmd(op, newest_cb, 6, newest);
        history_page(op);
        break;
    }
    case HIST_GAP:
        history_page(op);
        break;
    case HIST_POSITION: {
        const char *argv[6] = { "XREVRANGE", key, "+", "-", "COUNT", "1" };
        history_cmd(op, newest_cb, 6, argv);
        break;
    }
    }
    if (op->outstanding == 0)
        history_finish(op); /* could not be sent: fails */
}

static void history_finish(struct sse_history *op)
{
    if (op->kind != HIST_POSITION && op->err == 0 && !op->too_far && op->page_len == SSE_HISTORY_PAGE &&
        (op->kind != HIST_CLIENT || op->cl)) {
        history_page(op); /* more to read */
        if (op->outstanding)
            return;
    }
    if (op->n_invalid) {
        struct sse_stream *def = op->ch->def;
        *def->m_invalid_history += op->n_invalid;
        log_warn("invalid stream entries dropped", "stream=%s channel=%s entries=%u", def->cfg->name,
                 LOG_Q(op->ch->key), op->n_invalid);
    }
    switch (op->kind) {
    case HIST_CLIENT:
        if (op->cl)
            sse_client_replay_done(op);
        break;
    case HIST_GAP:
        sse_channel_sync_done(op);
        break;
    case HIST_POSITION:
        sse_channel_position_done(op);
        break;
    }
    history_free(op);
}
