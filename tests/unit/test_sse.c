/*
 * test_sse: SSE framing, stream ids and the pub/sub message (proto/sse.h).
 */
#include "unit.h"

#include "proto/sse.h"

static void frame(str_t id, str_t event, str_t data, const char *want)
{
    struct buf b = BUF_INIT;
    sse_frame_event(&b, id, event, data);
    assert_str_eq(buf_str(&b), want);
    buf_deinit(&b);
}

static void test_frames(void **state)
{
    (void)state;
    frame(STR_LIT("1-0"), STR_LIT("note"), STR_LIT("hi"), "id: 1-0\nevent: note\ndata: hi\n\n");
    /* The default type gets no event: line. */
    frame(STR_LIT("1-0"), STR_LIT("message"), STR_LIT("hi"), "id: 1-0\ndata: hi\n\n");
    frame(STR_LIT("1-0"), STR_NULL, STR_LIT("hi"), "id: 1-0\ndata: hi\n\n");
    /* Empty data is one empty data line. */
    frame(STR_LIT("2-1"), STR_NULL, STR_LIT(""), "id: 2-1\ndata: \n\n");
    /* Multi-line data: LF, CRLF and CR all end a line. */
    frame(STR_LIT("3-0"), STR_NULL, STR_LIT("a\nb"), "id: 3-0\ndata: a\ndata: b\n\n");
    frame(STR_LIT("3-0"), STR_NULL, STR_LIT("a\r\nb"), "id: 3-0\ndata: a\ndata: b\n\n");
    frame(STR_LIT("3-0"), STR_NULL, STR_LIT("a\rb"), "id: 3-0\ndata: a\ndata: b\n\n");
    /* Blank lines inside and a trailing line break survive. */
    frame(STR_LIT("4-0"), STR_NULL, STR_LIT("a\n\nb\n"), "id: 4-0\ndata: a\ndata: \ndata: b\ndata: \n\n");
    /* A leading space in data is kept (the reader strips only one). */
    frame(STR_LIT("5-0"), STR_NULL, STR_LIT(" x"), "id: 5-0\ndata:  x\n\n");
}

static void test_retry_and_comment(void **state)
{
    (void)state;
    struct buf b = BUF_INIT;
    sse_frame_retry(&b, 2500);
    sse_frame_comment(&b, "ping");
    assert_str_eq(buf_str(&b), "retry: 2500\n\n: ping\n\n");
    buf_deinit(&b);
}

static void test_ids(void **state)
{
    (void)state;
    struct sse_id a, b;
    assert_true(sse_id_parse(STR_LIT("1732300000000-5"), &a));
    assert_true(a.ms == 1732300000000ULL && a.seq == 5);
    assert_true(sse_id_parse(STR_LIT("42"), &b)); /* ms alone: seq 0 */
    assert_true(b.ms == 42 && b.seq == 0);
    assert_true(sse_id_parse(STR_LIT("18446744073709551615-18446744073709551615"), &a));
    static const char *const bad[] = { "", "-", "1-", "-1", "a-1", "1-b", "1-2-3", "1 -2", "18446744073709551616-0" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(sse_id_parse(str_cstr(bad[i]), &a));
    struct sse_id x = { 5, 1 }, y = { 5, 2 }, z = { 6, 0 };
    assert_true(sse_id_cmp(x, y) < 0 && sse_id_cmp(y, z) < 0 && sse_id_cmp(z, x) > 0);
    assert_int_equal(sse_id_cmp(x, x), 0);
    char out[SSE_ID_MAX_LEN + 1];
    size_t n = sse_id_format((struct sse_id){ 18446744073709551615ULL, 7 }, out);
    assert_str_eq(str_make(out, n), "18446744073709551615-7");
}

static void test_event_names(void **state)
{
    (void)state;
    assert_true(sse_event_name_valid(STR_LIT("note")));
    assert_true(sse_event_name_valid(STR_LIT("a.b:c-d_e9")));
    assert_false(sse_event_name_valid(STR_LIT("")));
    assert_false(sse_event_name_valid(STR_LIT("two words")));
    assert_false(sse_event_name_valid(STR_LIT("new\nline")));
    char long_name[66];
    memset(long_name, 'a', 65);
    long_name[65] = 0;
    assert_false(sse_event_name_valid(str_cstr(long_name)));
}

static void test_message_round_trip(void **state)
{
    (void)state;
    struct buf b = BUF_INIT;
    sse_message_build(&b, STR_LIT("9-1"), STR_LIT("note"), STR_LIT("multi\nline\n"));
    str_t id, event, data;
    assert_true(sse_message_parse(buf_str(&b), &id, &event, &data));
    assert_str_eq(id, "9-1");
    assert_str_eq(event, "note");
    assert_str_eq(data, "multi\nline\n");
    assert_false(sse_message_parse(STR_LIT("9-1"), &id, &event, &data));
    assert_false(sse_message_parse(STR_LIT("9-1\nnote"), &id, &event, &data));
    assert_false(sse_message_parse(STR_LIT("x\nnote\ndata"), &id, &event, &data));
    assert_false(sse_message_parse(STR_LIT("9-1\nbad name\ndata"), &id, &event, &data));
    buf_deinit(&b);
}

/* The same check on the live and the replay path: what a Stream entry
 * written past batchd could hold must not become SSE fields. */
static void test_event_valid(void **state)
{
    (void)state;
    assert_true(sse_event_valid(STR_LIT("1-0"), STR_LIT("note"), STR_LIT("a\nb")));
    assert_true(sse_event_valid(STR_LIT("1-0"), STR_NULL, STR_LIT("")));
    assert_true(sse_event_valid(STR_LIT("1-0"), STR_NULL, STR_LIT("\xc3\xbc")));
    assert_false(sse_event_valid(STR_LIT("1-0"), STR_LIT("x\nid: 424242-0\nretry: 1"), STR_LIT("")));
    assert_false(sse_event_valid(STR_LIT("1-0"), STR_LIT("x\rretry: 1"), STR_LIT("")));
    assert_false(sse_event_valid(STR_LIT("1-0"), STR_NULL, STR_LIT("\xff\xfe")));
    assert_false(sse_event_valid(STR_LIT("1"), STR_NULL, STR_LIT("")));
    assert_false(sse_event_valid(STR_LIT("1-0\nretry: 1"), STR_NULL, STR_LIT("")));
}

static void test_idempotency_key(void **state)
{
    (void)state;
    str_t k;
    assert_true(sse_idempotency_key_parse(STR_LIT("8e03978e-40d5-43e8-bc93-6894a57f9324"), &k));
    assert_str_eq(k, "8e03978e-40d5-43e8-bc93-6894a57f9324");
    assert_true(sse_idempotency_key_parse(STR_LIT("\"abc.1~\""), &k)); /* the sf-string form */
    assert_str_eq(k, "abc.1~");
    char max[SSE_IDEMPOTENCY_KEY_MAX + 2];
    memset(max, 'k', sizeof(max));
    assert_true(sse_idempotency_key_parse(str_make(max, SSE_IDEMPOTENCY_KEY_MAX), &k));
    assert_false(sse_idempotency_key_parse(str_make(max, SSE_IDEMPOTENCY_KEY_MAX + 1), &k));
    static const char *const bad[] = { "", "\"\"", "two words", "a\"b", "x\ny", "\"open", "a,b", "a/b", "\xc3\xbc" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(sse_idempotency_key_parse(str_cstr(bad[i]), &k));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frames),
        cmocka_unit_test(test_retry_and_comment),
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_event_names),
        cmocka_unit_test(test_message_round_trip),
        cmocka_unit_test(test_event_valid),
        cmocka_unit_test(test_idempotency_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
