/*
 * fuzz_sse: libFuzzer harness for the Server-Sent Events encoder and the
 * Redis Stream id and pub/sub message helpers (proto/sse.c).
 *
 *   input: [id_len][event_len][ms/seq bytes x4] id bytes, event bytes, data...
 *
 * Every frame the encoder writes is read back by a strict SSE parser written
 * here from the HTML standard ("9.2.6 Interpreting an event stream"), and
 * must hold exactly one event whose id, type and data are the ones encoded
 * (data with CR and CRLF read as LF, as sse.h says), with nothing else: no
 * retry:, no comment, no unknown field, one blank line at the very end.
 *
 *   - callers' inputs: an id made by sse_id_format, an event name that
 *     passes sse_event_name_valid (or none), any data.
 *   - raw inputs: the fuzzer's bytes as id, event and data. sse_frame_event
 *     itself checks nothing (an id or event holding CR or LF would forge an
 *     extra "retry:" or "id:" line, and an id holding NUL is ignored by the
 *     browser); sse_event_valid is the gate every caller applies to what
 *     comes from Redis. So: whatever the gate accepts must round-trip, and
 *     the gate must agree with a reference written here from sse.h.
 *
 * Also: sse_id_parse against a reference, format/parse round trips and
 * sse_id_cmp order; sse_event_name_valid and sse_idempotency_key_parse
 * against references; pub/sub messages built and parsed back; retry and
 * comment frames.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/sse.h"
#include "tests/fuzz/fuzz.h"

/* --- a strict SSE parser ---------------------------------------------------------------- */

struct sse_parsed {
    unsigned n_events;      /* dispatched */
    struct buf type, data;  /* of the last event dispatched */
    struct buf last_id;     /* the stream's last event id buffer */
    bool id_set;
    unsigned n_retry, n_comments, n_unknown, n_blank;
    uint64_t retry;
    bool blank_not_last;    /* a blank line before the end: two frames */
    bool bad_line_end;      /* a line ended by CR, or no final line end */
    char field_order[16];   /* first letters of the fields, in order */
    size_t n_fields;
};

static void parsed_init(struct sse_parsed *s)
{
    memset(s, 0, sizeof(*s));
}

static void parsed_deinit(struct sse_parsed *s)
{
    buf_deinit(&s->type);
    buf_deinit(&s->data);
    buf_deinit(&s->last_id);
}

static bool all_digits(str_t v)
{
    if (v.len == 0)
        return false;
    for (size_t i = 0; i < v.len; i++)
        if (v.p[i] < '0' || v.p[i] > '9')
            return false;
    return true;
}

static void process_line(struct sse_parsed *s, str_t line, struct buf *type_buf,
                         struct buf *data_buf)
{
    if (line.len == 0) { /* dispatch */
        s->n_blank++;
        if (data_buf->len == 0) {
            buf_reset(type_buf);
            return;
        }
        if (data_buf->data[data_buf->len - 1] == '\n')
            data_buf->len--;
        s->n_events++;
        buf_reset(&s->type);
        buf_reset(&s->data);
        if (type_buf->len)
            buf_append(&s->type, type_buf->data, type_buf->len);
        else
            buf_append_str(&s->type, "message");
        buf_append(&s->data, data_buf->data, data_buf->len);
        buf_reset(type_buf);
        buf_reset(data_buf);
        return;
    }
    if (line.p[0] == ':') {
        s->n_comments++;
        return;
    }
    const char *colon = memchr(line.p, ':', line.len);
    str_t name = colon ? str_make(line.p, (size_t)(colon - line.p)) : line;
    str_t value = colon ? str_make(colon + 1, line.len - name.len - 1) : STR_LIT("");
    if (value.len && value.p[0] == ' ')
        value = str_make(value.p + 1, value.len - 1);
    if (s->n_fields < sizeof(s->field_order) - 1)
        s->field_order[s->n_fields++] = name.len ? name.p[0] : '?';
    if (str_eq(name, STR_LIT("event"))) {
        buf_reset(type_buf);
        buf_append(type_buf, value.p, value.len);
    } else if (str_eq(name, STR_LIT("data"))) {
        buf_append(data_buf, value.p, value.len);
        buf_append_char(data_buf, '\n');
    } else if (str_eq(name, STR_LIT("id"))) {
        if (memchr(value.p, '\0', value.len) == NULL) {
            buf_reset(&s->last_id);
            buf_append(&s->last_id, value.p, value.len);
            s->id_set = true;
        }
    } else if (str_eq(name, STR_LIT("retry"))) {
        s->n_retry++;
        if (all_digits(value))
            (void)str_to_u64(value, &s->retry);
    } else {
        s->n_unknown++;
    }
}

/* Reads a stream as a browser would: lines end at CRLF, LF or CR. */
static void sse_parse(str_t in, struct sse_parsed *s)
{
    struct buf type_buf = BUF_INIT, data_buf = BUF_INIT;
    size_t i = 0;
    while (i < in.len) {
        size_t start = i;
        while (i < in.len && in.p[i] != '\r' && in.p[i] != '\n')
            i++;
        if (i == in.len) { /* an unterminated last line is never processed */
            s->bad_line_end = true;
            break;
        }
        str_t line = str_make(in.p + start, i - start);
        if (in.p[i] == '\r') {
            s->bad_line_end = true; /* legal, but the encoder writes LF only */
            if (i + 1 < in.len && in.p[i + 1] == '\n')
                i++;
        }
        i++;
        if (line.len == 0 && i < in.len)
            s->blank_not_last = true;
        process_line(s, line, &type_buf, &data_buf);
    }
    buf_deinit(&type_buf);
    buf_deinit(&data_buf);
}

/* --- references --------------------------------------------------------------------------- */

/* Data as the browser gets it back: CRLF and CR become LF. */
static void normalise_data(str_t data, struct buf *out)
{
    for (size_t i = 0; i < data.len; i++) {
        if (data.p[i] == '\r') {
            buf_append_char(out, '\n');
            if (i + 1 < data.len && data.p[i + 1] == '\n')
                i++;
        } else {
            buf_append_char(out, data.p[i]);
        }
    }
}

/* 1 to 20 digits, no overflow (str_to_u64 refuses longer runs even of
 * leading zeros; Redis never writes those). */
static bool ref_u64(str_t s, uint64_t *out)
{
    if (!all_digits(s) || s.len > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        unsigned d = (unsigned)(s.p[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool ref_id_parse(str_t s, struct sse_id *out)
{
    const char *dash = memchr(s.p, '-', s.len);
    struct sse_id id = { 0, 0 };
    if (dash == NULL)
        return ref_u64(s, &id.ms) ? (*out = id, true) : false;
    size_t ms_len = (size_t)(dash - s.p);
    if (!ref_u64(str_make(s.p, ms_len), &id.ms) ||
        !ref_u64(str_make(dash + 1, s.len - ms_len - 1), &id.seq))
        return false;
    *out = id;
    return true;
}

static bool ref_event_name_valid(str_t name)
{
    if (name.len < 1 || name.len > 64)
        return false;
    for (size_t i = 0; i < name.len; i++) {
        unsigned char c = (unsigned char)name.p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

/* sse.h: an id "<ms>-<seq>", an empty or valid event name, UTF-8 data. */
static bool ref_event_valid(str_t id, str_t event, str_t data)
{
    struct sse_id tmp;
    return memchr(id.p, '-', id.len) != NULL && ref_id_parse(id, &tmp) &&
           (event.len == 0 || ref_event_name_valid(event)) &&
           fuzz_utf8_valid((const unsigned char *)data.p, data.len);
}

static void check_idempotency_key(str_t v)
{
    str_t key = STR_LIT("untouched"), want = v;
    if (want.len >= 2 && want.p[0] == '"' && want.p[want.len - 1] == '"')
        want = str_make(want.p + 1, want.len - 2);
    bool ok = want.len >= 1 && want.len <= SSE_IDEMPOTENCY_KEY_MAX;
    for (size_t i = 0; ok && i < want.len; i++) {
        unsigned char c = (unsigned char)want.p[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
    }
    CHECK(sse_idempotency_key_parse(v, &key) == ok);
    CHECK(ok ? str_eq(key, want) : str_eq(key, STR_LIT("untouched")));
}

/* --- checks ------------------------------------------------------------------------------- */

/* Frames one event and reads it back: true when it round-trips exactly
 * (a failure is described on stderr). */
static bool frame_round_trips(str_t id, str_t event, str_t data)
{
    struct buf frame = BUF_INIT, want_data = BUF_INIT;
    buf_append_str(&frame, "x"); /* the encoder appends: it must keep what is there */
    sse_frame_event(&frame, id, event, data);
    CHECK(frame.len >= 1 && frame.data[0] == 'x');
    str_t f = str_make(frame.data + 1, frame.len - 1);
    normalise_data(data, &want_data);
    str_t want_type = (event.len == 0) ? STR_LIT("message") : event;

    struct sse_parsed s;
    parsed_init(&s);
    sse_parse(f, &s);
    bool ok = s.n_events == 1 && s.n_blank == 1 && !s.blank_not_last && !s.bad_line_end &&
              s.n_retry == 0 && s.n_comments == 0 && s.n_unknown == 0 && s.id_set &&
              str_eq(buf_str(&s.last_id), id) && str_eq(buf_str(&s.type), want_type) &&
              str_eq(buf_str(&s.data), buf_str(&want_data));
    /* id first, then at most one event, then data lines only. */
    ok = ok && s.field_order[0] == 'i';
    for (size_t i = 1; ok && i < s.n_fields; i++)
        ok = s.field_order[i] == 'd' || (i == 1 && s.field_order[i] == 'e');
    /* An explicit "message" is left out: the default means the same. */
    if (ok && str_eq(event, STR_LIT("message")))
        ok = s.field_order[1] != 'e';
    if (!ok) {
        fuzz_dump("id", id.p, id.len);
        fuzz_dump("event", event.p, event.len);
        fuzz_dump("data", data.p, data.len);
        fuzz_dump("frame", f.p, f.len);
        fprintf(stderr, "parsed: events=%u blank=%u blank_not_last=%d bad_line_end=%d retry=%u "
                "comments=%u unknown=%u id_set=%d fields=%s\n", s.n_events, s.n_blank,
                s.blank_not_last, s.bad_line_end, s.n_retry, s.n_comments, s.n_unknown,
                s.id_set, s.field_order);
    }
    parsed_deinit(&s);
    buf_deinit(&frame);
    buf_deinit(&want_data);
    return ok;
}

static void check_ids(str_t a, str_t b)
{
    struct sse_id ia = { 7, 7 }, ib = { 7, 7 }, ra, rb;
    bool oka = sse_id_parse(a, &ia), okb = sse_id_parse(b, &ib);
    CHECK(oka == ref_id_parse(a, &ra));
    CHECK(okb == ref_id_parse(b, &rb));
    if (oka) {
        CHECK(ia.ms == ra.ms && ia.seq == ra.seq);
        char text[SSE_ID_MAX_LEN + 1];
        size_t n = sse_id_format(ia, text);
        CHECK(n <= SSE_ID_MAX_LEN);
        struct sse_id back;
        CHECK(sse_id_parse(str_make(text, n), &back) && sse_id_cmp(back, ia) == 0);
        /* Canonical text: formatting what was parsed from it gives it back. */
        struct buf again = BUF_INIT;
        char text2[SSE_ID_MAX_LEN + 1];
        buf_append(&again, text2, sse_id_format(back, text2));
        CHECK(str_eq(buf_str(&again), str_make(text, n)));
        buf_deinit(&again);
    } else {
        CHECK(ia.ms == 7 && ia.seq == 7); /* untouched on failure */
    }
    if (oka && okb) {
        int c = sse_id_cmp(ia, ib);
        int want = ia.ms != ib.ms     ? (ia.ms < ib.ms ? -1 : 1)
                   : ia.seq != ib.seq ? (ia.seq < ib.seq ? -1 : 1)
                                      : 0;
        CHECK(c == want);
        CHECK(sse_id_cmp(ib, ia) == -want);
    }
}

static void check_message(str_t id, str_t event, str_t data)
{
    struct buf msg = BUF_INIT;
    sse_message_build(&msg, id, event, data);
    CHECK(msg.len == id.len + event.len + data.len + 2);
    str_t pid, pev, pdata;
    bool ok = sse_message_parse(buf_str(&msg), &pid, &pev, &pdata);
    struct sse_id tmp;
    if (memchr(id.p, '\n', id.len) == NULL && memchr(event.p, '\n', event.len) == NULL) {
        CHECK(ok == (ref_id_parse(id, &tmp) && (event.len == 0 || ref_event_name_valid(event))));
        if (ok)
            CHECK(str_eq(pid, id) && str_eq(pev, event) && str_eq(pdata, data));
    }
    /* What parses is safe to frame, as the pub/sub path does. */
    if (ok) {
        CHECK(sse_id_parse(pid, &tmp));
        CHECK(frame_round_trips(pid, pev, pdata));
    }
    buf_deinit(&msg);
}

static void check_retry_and_comment(uint64_t ms64, str_t text_src)
{
    unsigned ms = (unsigned)ms64;
    struct buf b = BUF_INIT;
    sse_frame_retry(&b, ms);
    struct sse_parsed s;
    parsed_init(&s);
    sse_parse(buf_str(&b), &s);
    CHECK(s.n_events == 0 && s.n_retry == 1 && s.retry == ms && s.n_blank == 1 &&
          !s.blank_not_last && !s.bad_line_end && s.n_unknown == 0 && s.n_comments == 0);
    parsed_deinit(&s);

    /* A comment's text must hold no line break (sse.h); cut it at the first. */
    size_t n = 0;
    while (n < text_src.len && n < 200 && text_src.p[n] != '\r' && text_src.p[n] != '\n' &&
           text_src.p[n] != '\0')
        n++;
    char text[201];
    memcpy(text, text_src.p, n);
    text[n] = '\0';
    buf_reset(&b);
    sse_frame_comment(&b, text);
    parsed_init(&s);
    sse_parse(buf_str(&b), &s);
    CHECK(s.n_events == 0 && s.n_comments == 1 && s.n_blank == 1 && s.n_fields == 0 &&
          !s.blank_not_last && !s.bad_line_end);
    CHECK(b.len == n + 4 && memcmp(b.data, ": ", 2) == 0 && memcmp(b.data + 2, text, n) == 0);
    parsed_deinit(&s);
    buf_deinit(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6)
        return 0;
    /* A heap copy of exactly the bytes used, so reads past the end are caught. */
    size_t n = size - 6;
    char *in = fuzz_copy(data + 6, n);
    size_t id_len = n ? data[0] % (n + 1) : 0;
    size_t ev_len = (n - id_len) ? data[1] % (n - id_len + 1) : 0;
    str_t id = str_make(in, id_len);
    str_t event = str_make(in + id_len, ev_len);
    str_t body = str_make(in + id_len + ev_len, n - id_len - ev_len);
    struct sse_id num = { (uint64_t)data[2] << 40 | (uint64_t)data[3] * 1000003u,
                          (uint64_t)data[4] << 56 | data[5] };

    /* Callers' inputs: always exact. */
    char id_text[SSE_ID_MAX_LEN + 1];
    str_t good_id = str_make(id_text, sse_id_format(num, id_text));
    CHECK(sse_event_name_valid(event) == ref_event_name_valid(event));
    str_t good_event = sse_event_name_valid(event) ? event : STR_NULL;
    CHECK(frame_round_trips(good_id, good_event, body));

    /* Raw fields: what the gate lets through frames exactly. */
    bool valid = sse_event_valid(id, event, body);
    CHECK(valid == ref_event_valid(id, event, body));
    if (valid)
        CHECK(frame_round_trips(id, event, body));
    check_idempotency_key(event);

    check_ids(id, event);
    check_ids(good_id, body);
    check_message(id, event, body);
    /* Not STR_NULL: sse_message_build hands event.p to buf_append, and
     * memcpy from NULL is undefined even for 0 bytes (the daemon never
     * builds a message with no event pointer). */
    check_message(good_id, good_event.p ? good_event : STR_LIT(""), body);
    check_retry_and_comment(num.ms ^ num.seq, body);
    free(in);
    return 0;
}
