/* sse: Server-Sent Events framing and Redis Stream ids. See sse.h. */
#include "proto/sse.h"

#include <string.h>

#include "proto/jtext.h"

bool sse_id_parse(str_t s, struct sse_id *out)
{
    const char *dash = memchr(s.p, '-', s.len);
    str_t ms = dash ? str_make(s.p, (size_t)(dash - s.p)) : s;
    struct sse_id id = { 0, 0 };
    if (str_to_u64(ms, &id.ms) != 0)
        return false;
    if (dash && str_to_u64(str_make(dash + 1, s.len - ms.len - 1), &id.seq) != 0)
        return false;
    *out = id;
    return true;
}

int sse_id_cmp(struct sse_id a, struct sse_id b)
{
    if (a.ms != b.ms)
        return a.ms < b.ms ? -1 : 1;
    if (a.seq != b.seq)
        return a.seq < b.seq ? -1 : 1;
    return 0;
}

size_t sse_id_format(struct sse_id id, char *out)
{
    size_t n = fmt_u64(out, id.ms);
    out[n++] = '-';
    n += fmt_u64(out + n, id.seq);
    return n;
}

bool sse_event_name_valid(str_t name)
{
    if (name.len == 0 || name.len > 64)
        return false;
    for (size_t i = 0; i < name.len; i++) {
        char c = name.p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

bool sse_event_valid(str_t id, str_t event, str_t data)
{
    struct sse_id tmp;
    return id.len && memchr(id.p, '-', id.len) != NULL && sse_id_parse(id, &tmp) &&
           (event.len == 0 || sse_event_name_valid(event)) && jtext_utf8_valid(data.p ? data.p : "", data.len);
}

static bool is_tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

bool sse_idempotency_key_parse(str_t v, str_t *key)
{
    if (v.len >= 2 && v.p[0] == '"' && v.p[v.len - 1] == '"')
        v = str_make(v.p + 1, v.len - 2);
    if (v.len == 0 || v.len > SSE_IDEMPOTENCY_KEY_MAX)
        return false;
    for (size_t i = 0; i < v.len; i++)
        if (!is_tchar(v.p[i]))
            return false;
    *key = v;
    return true;
}

void sse_frame_event(struct buf *out, str_t id, str_t event, str_t data)
{
    buf_reserve(out, id.len + event.len + data.len + 32);
    buf_append(out, "id: ", 4);
    buf_append(out, id.p, id.len);
    buf_append_char(out, '\n');
    if (event.len && !str_eq(event, STR_LIT("message"))) {
        buf_append(out, "event: ", 7);
        buf_append(out, event.p, event.len);
        buf_append_char(out, '\n');
    }
    size_t i = 0;
    for (;;) {
        size_t start = i;
        while (i < data.len && data.p[i] != '\n' && data.p[i] != '\r')
            i++;
        buf_append(out, "data: ", 6);
        buf_append(out, data.p + start, i - start);
        buf_append_char(out, '\n');
        if (i >= data.len)
            break;
        if (data.p[i] == '\r' && i + 1 < data.len && data.p[i + 1] == '\n')
            i++;
        i++;
        if (i == data.len) { /* a trailing line break: one more, empty, line */
            buf_append(out, "data: \n", 7);
            break;
        }
    }
    buf_append_char(out, '\n');
}

void sse_frame_retry(struct buf *out, unsigned ms)
{
    buf_append(out, "retry: ", 7);
    buf_append_u64(out, ms);
    buf_append(out, "\n\n", 2);
}

void sse_frame_comment(struct buf *out, const char *text)
{
    buf_append(out, ": ", 2);
    buf_append_str(out, text);
    buf_append(out, "\n\n", 2);
}

void sse_message_build(struct buf *out, str_t id, str_t event, str_t data)
{
    buf_append(out, id.p, id.len);
    buf_append_char(out, '\n');
    buf_append(out, event.p, event.len);
    buf_append_char(out, '\n');
    buf_append(out, data.p, data.len);
}

bool sse_message_parse(str_t msg, str_t *id, str_t *event, str_t *data)
{
    const char *nl1 = memchr(msg.p, '\n', msg.len);
    if (nl1 == NULL)
        return false;
    const char *rest = nl1 + 1;
    size_t rest_len = msg.len - (size_t)(rest - msg.p);
    const char *nl2 = memchr(rest, '\n', rest_len);
    if (nl2 == NULL)
        return false;
    *id = str_make(msg.p, (size_t)(nl1 - msg.p));
    *event = str_make(rest, (size_t)(nl2 - rest));
    *data = str_make(nl2 + 1, msg.len - (size_t)(nl2 + 1 - msg.p));
    struct sse_id tmp;
    return sse_id_parse(*id, &tmp) && (event->len == 0 || sse_event_name_valid(*event));
}
