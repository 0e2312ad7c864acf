/* sse_publish: store and publish one event, once per key. See sse_publish.h. */
#include "daemon/sse/sse_publish.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/config.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/backend/redis_pool.h"
#include "daemon/http/req.h"
#include "proto/jtext.h"
#include "proto/mem.h"
#include "proto/slot_tag.h"
#include "proto/sse.h"
#include "proto/url.h"

/* KEYS[1] the Stream, KEYS[2] the idempotency key (when the request has
 * one); ARGV: max_len, event, data, window ms. XADD and PUBLISH in one
 * step, so a subscriber never sees an event that is not in the history,
 * nor a history entry that was never published. The key stores the id
 * and a digest of what was published, so that reusing a key for another
 * event is an error rather than a silent loss. */
#define PUBLISH_SCRIPT_WITH(publish) \
    "local digest\n" \
    "if KEYS[2] then\n" \
    "  digest = redis.sha1hex(ARGV[2] .. '\\n' .. ARGV[3])\n" \
    "  local seen = redis.call('GET', KEYS[2])\n" \
    "  if seen then\n" \
    "    local id, d = string.match(seen, '^(%S+) (%x+)$')\n" \
    "    if id and d == digest then return {'replay', id} end\n" \
    "    return {'conflict', ''}\n" \
    "  end\n" \
    "end\n" \
    "local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[2], 'data', ARGV[3])\n" \
    "redis.call('" publish "', KEYS[1], id .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])\n" \
    "if KEYS[2] then redis.call('SET', KEYS[2], id .. ' ' .. digest, 'PX', ARGV[4]) end\n" \
    "return {'new', id}\n"
static const char PUBLISH_SCRIPT[] = PUBLISH_SCRIPT_WITH("PUBLISH");
/* A cluster: the event goes to the Stream's shard channel (SSUBSCRIBE). */
static const char SPUBLISH_SCRIPT[] = PUBLISH_SCRIPT_WITH("SPUBLISH");

struct sse_publisher {
    struct redis_pool *redis;
    struct redis_script script;
    /* Failures by what the client may do: retry freely, or only with a key. */
    uint64_t *m_not_sent, *m_rejected, *m_unknown;
};

struct publish {
    struct req *r;
    struct sse_publisher *pub;
    const struct cfg_stream *cfg;
    const struct sse_publish_stats *st;
};

struct sse_publisher *sse_publisher_new(struct redis_pool *redis)
{
    struct sse_publisher *p = mem_calloc(1, sizeof(*p));
    p->redis = redis;
    p->script.src = redis && redis_pool_is_cluster(redis) ? SPUBLISH_SCRIPT : PUBLISH_SCRIPT;
    const char *help = "Publishes that failed: not_sent (the script never ran, 503), rejected (an error "
                       "reply, 503), unknown (Redis went away after the script was sent, 502/504).";
    p->m_not_sent = metrics_counter("batchd_sse_publish_errors_total", "outcome=\"not_sent\"", help);
    p->m_rejected = metrics_counter("batchd_sse_publish_errors_total", "outcome=\"rejected\"", help);
    p->m_unknown = metrics_counter("batchd_sse_publish_errors_total", "outcome=\"unknown\"", help);
    return p;
}

void sse_publisher_free(struct sse_publisher *p)
{
    free(p);
}

void sse_publish_stats_init(struct sse_publish_stats *st, const char *stream)
{
    char l[128];
    snprintf(l, sizeof(l), "stream=\"%s\"", stream);
    st->published = metrics_counter("batchd_sse_published_total", l, "Events published through batchd.");
    st->replayed = metrics_counter("batchd_sse_publish_replays_total", l,
                                   "Publishes answered with the id stored under their Idempotency-Key.");
}

static bool reply_str(const redisReply *r, const char *s)
{
    return r->type == REDIS_REPLY_STRING && r->len == strlen(s) && memcmp(r->str, s, r->len) == 0;
}

static void publish_cb(void *ctx, const redisReply *reply, int err)
{
    struct publish *p = ctx;
    struct req *r = p->r;
    const redisReply *kind = NULL, *id = NULL;
    if (err == 0 && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[1]->type == REDIS_REPLY_STRING) {
        kind = reply->element[0];
        id = reply->element[1];
    }
    if (kind && (reply_str(kind, "new") || reply_str(kind, "replay"))) {
        struct buf body = BUF_INIT;
        buf_append_str(&body, "{\"id\":");
        jtext_append_string(&body, id->str, id->len);
        buf_append_str(&body, "}\n");
        if (reply_str(kind, "new")) {
            (*p->st->published)++;
        } else {
            (*p->st->replayed)++;
            req_add_header(r, "Idempotent-Replayed", "true");
        }
        req_respond_buf(r, 201, "application/json", &body);
        buf_deinit(&body);
    } else if (kind && reply_str(kind, "conflict")) {
        req_error(r, 422, "idempotency_key_reused");
    } else if (err == -EAGAIN || err == -EBUSY || (err == 0 && reply->type == REDIS_REPLY_ERROR)) {
        /* Not stored: with no connection the script never ran; an error
         * reply comes from its first write (XADD), before anything changed. */
        if (err == 0) {
            (*p->pub->m_rejected)++;
            log_warn("publish failed", "stream=%s err=%s", p->cfg->name, LOG_Q(reply->str));
        } else {
            (*p->pub->m_not_sent)++;
        }
        req_add_header(r, "Retry-After", "1");
        req_error(r, 503, err == -EBUSY ? "backend_busy" : "redis_unavailable");
    } else {
        (*p->pub->m_unknown)++;
        log_warn("publish outcome unknown", "stream=%s err=%d", p->cfg->name, err);
        req_error(r, err == -ETIMEDOUT ? 504 : 502, "publish_outcome_unknown");
    }
    config_unref(p->cfg->owner);
    free(p);
}

void sse_publish_handle(struct sse_publisher *pub, struct req *r, const struct cfg_stream *cfg,
                        const struct sse_publish_stats *st, str_t id)
{
    struct buf event = BUF_INIT;
    str_t rest = r->msg.query, k, v, idem = STR_NULL;
    int bad_event = 0;
    while (url_query_next(&rest, &k, &v)) {
        if (str_eq(k, STR_LIT("event"))) {
            buf_reset(&event);
            bad_event = url_decode(v, true, &event) != 0 || !sse_event_name_valid(buf_str(&event));
        }
    }
    str_t idem_hdr = req_header(r, "idempotency-key");
    const struct buf *body = &r->msg.body;
    if (bad_event) {
        req_error(r, 400, "invalid_event_name");
    } else if (idem_hdr.p && !sse_idempotency_key_parse(idem_hdr, &idem)) {
        req_error(r, 400, "invalid_idempotency_key");
    } else if (body->len > (size_t)cfg->max_event_bytes) {
        req_error(r, 413, "event_too_large");
    } else if (!jtext_utf8_valid(body->data ? body->data : "", body->len)) {
        req_error(r, 400, "invalid_utf8");
    } else {
        struct publish *p = mem_calloc(1, sizeof(*p));
        *p = (struct publish){ .r = r, .pub = pub, .cfg = cfg, .st = st };
        config_ref(cfg->owner); /* a reload may replace the config before the reply */
        struct buf key = BUF_INIT, ikey = BUF_INIT;
        url_template_expand(cfg->key, "id", id, &key);
        /* batchd:idem:{<stream key>}:<key>, in the Stream's slot. */
        if (idem.len) {
            slot_tag_prefixed("batchd:idem:", key.data, key.len, &ikey);
            buf_appendf(&ikey, ":%.*s", (int)idem.len, idem.p);
        }
        char maxlen[24], window[24];
        snprintf(maxlen, sizeof(maxlen), "%lld", (long long)cfg->max_len);
        snprintf(window, sizeof(window), "%lld", (long long)cfg->idempotency_window_ms);
        const char *ev = event.len ? event.data : "message";
        const char *argv[7];
        size_t lens[7];
        int argc = 0;
        const char *vals[7] = { idem.len ? "2" : "1", key.data, ikey.data, maxlen, ev,
                                body->data ? body->data : "", window };
        size_t vlens[7] = { 1, key.len, ikey.len, strlen(maxlen), strlen(ev), body->len, strlen(window) };
        for (int i = 0; i < 7; i++) {
            if (i == 2 && !idem.len)
                continue; /* no second key */
            argv[argc] = vals[i];
            lens[argc++] = vlens[i];
        }
        int rc = redis_pool_script(pub->redis, &pub->script, publish_cb, p, argc, argv, lens);
        if (rc == 0)
            redis_pool_flush(pub->redis);
        else
            publish_cb(p, NULL, rc);
        buf_deinit(&key);
        buf_deinit(&ikey);
    }
    buf_deinit(&event);
}
