/*
 * sse_handlers: the two routes of a stream's path.
 *
 *   GET  {path}  id, Last-Event-ID (header or ?last_event_id=) checked, then
 *                access (sse_access.c); then a client (sse_client.c), or a
 *                200 "retry:" when draining or at max_sse_clients
 *   POST {path}  the admin token, or (owners_publish) the owner; id checked;
 *                then sse_publish.h
 */
#include <errno.h>

#include "daemon/http/auth.h"
#include "daemon/http/req.h"
#include "daemon/sse/sse_int.h"
#include "proto/ids.h"
#include "proto/url.h"

static int last_event_id(struct req *r, struct sse_id *out, bool *present)
{
    str_t v = req_header(r, "last-event-id");
    struct buf q = BUF_INIT;
    *present = false;
    if (v.p == NULL) {
        str_t rest = r->msg.query, k, val;
        while (url_query_next(&rest, &k, &val)) {
            if (str_eq(k, STR_LIT("last_event_id"))) {
                if (url_decode(val, true, &q) != 0) {
                    buf_deinit(&q);
                    return -EINVAL;
                }
                v = buf_str(&q);
                if (v.p == NULL)
                    v = STR_LIT("");
                break;
            }
        }
    }
    int rc = 0;
    if (v.p != NULL && v.len > 0) {
        *present = true;
        rc = sse_id_parse(v, out) ? 0 : -EINVAL;
    }
    buf_deinit(&q);
    return rc;
}

/* Access granted (or public): the client joins its channel. */
void sse_subscribe_granted(struct req *r, struct sse_stream *def, str_t id)
{
    struct sse_id from = { 0, 0 };
    bool replay = false;
    if (last_event_id(r, &from, &replay) != 0) {
        req_error(r, 400, "invalid_last_event_id");
    } else if (def->hub->draining || def->retired) {
        sse_turn_away(r, def, TURN_AWAY_SHUTTING_DOWN);
    } else if (def->n_clients >= (unsigned)def->cfg->max_sse_clients) {
        sse_turn_away(r, def, TURN_AWAY_OVERLOADED);
    } else {
        struct buf key = BUF_INIT;
        url_template_expand(def->cfg->key, "id", id, &key);
        sse_client_new(def, r, key.data, replay, from);
        buf_deinit(&key);
    }
}

void sse_subscribe_handler(struct req *r, void *data)
{
    struct sse_stream *def = data;
    struct buf id = BUF_INIT;
    struct sse_id from = { 0, 0 };
    bool replay = false;
    if (r->msg.method == HTTP_HEAD) {
        req_error(r, 405, "method_not_allowed");
    } else if (req_param_decoded(r, "id", &id) != 0 || !ids_valid(id.data, id.len)) {
        req_error(r, 400, "invalid_id");
    } else if (last_event_id(r, &from, &replay) != 0) {
        req_error(r, 400, "invalid_last_event_id");
    } else if (def->hub->draining) {
        sse_turn_away(r, def, TURN_AWAY_SHUTTING_DOWN);
    } else if (def->n_clients >= (unsigned)def->cfg->max_sse_clients) {
        sse_turn_away(r, def, TURN_AWAY_OVERLOADED);
    } else {
        sse_access_check(r, def, buf_str(&id), true);
    }
    buf_deinit(&id);
}

void sse_publish_granted(struct req *r, struct sse_stream *def, str_t id)
{
    sse_publish_handle(def->hub->publisher, r, def->cfg, &def->pub, id);
}

void sse_publish_handler(struct req *r, void *data)
{
    struct sse_stream *def = data;
    struct events *h = def->hub;
    /* The admin token publishes anywhere; with owners_publish, so does the
     * owner of {id} (after the same checks as a subscriber). */
    bool admin = auth_admin_ok(r, h->cfg->batchd.admin_token);
    if (!admin && !def->cfg->owners_publish && auth_require(r, h->cfg->batchd.admin_token) != 0)
        return;
    struct buf id = BUF_INIT;
    if (req_param_decoded(r, "id", &id) != 0 || !ids_valid(id.data, id.len))
        req_error(r, 400, "invalid_id");
    else if (admin)
        sse_publish_granted(r, def, buf_str(&id));
    else
        sse_access_check(r, def, buf_str(&id), false);
    buf_deinit(&id);
}
