/*
 * test_stream: the stream layer (daemon/net/stream.h) on real loopback TCP
 * sockets: a libuv listener accepts into a stream, and the test plays the
 * peer with a plain socket it reads and writes itself.
 *
 * What is checked is what an owner relies on: bytes a paused parser leaves
 * are held and parsed first on resume, a pause is counted once per reason,
 * the write limit's action (pause reading until the queue halves, or close
 * with the kind's reason), every byte written arrives in order, and the
 * memory is released only in the last close callback.
 */
#include "unit.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "daemon/net/stream.h"

#define PAUSE_PARSER (1u << 0)
#define PAUSE_WRITEQ (1u << 1)
#define PAUSE_QUIET (1u << 2) /* no counter */
#define REASON_TEST 7
#define BIG (4u * 1024 * 1024)

struct fx {
    uv_loop_t loop;
    uv_tcp_t lst;
    uv_timer_t timer;           /* the stream's companion */
    struct stream s;
    struct stream_kind kind;
    int peer;
    bool accepted;
    /* parse_cb */
    char got[64];
    size_t got_len, take;       /* take: bytes parse_cb accepts per call */
    bool drop_rest, reparse;
    int parse_depth, parse_max_depth, parses;
    /* the other callbacks */
    int eof, close_calls, closed_calls, written_calls, write_cbs, write_status;
    unsigned close_reason;
    uint64_t m_pauses[2], bytes_in, bytes_out;
};

static struct fx *fx_of(struct stream *s)
{
    return (struct fx *)((char *)s - offsetof(struct fx, s));
}

static void t_read_cb(struct stream *s, const char *data, size_t n)
{
    stream_parse(s, data, n);
    stream_read_update(s);
}

static size_t t_parse_cb(struct stream *s, const char *data, size_t n)
{
    struct fx *f = fx_of(s);
    f->parses++;
    if (++f->parse_depth > f->parse_max_depth)
        f->parse_max_depth = f->parse_depth;
    size_t k = n < f->take ? n : f->take;
    memcpy(f->got + f->got_len, data, k);
    f->got_len += k;
    if (f->reparse) {
        f->reparse = false;
        stream_parse_held(s); /* runs after this parse, not inside it */
    }
    if (k < n) {
        if (f->drop_rest)
            stream_held_drop(s);
        else
            stream_pause(s, PAUSE_PARSER);
    }
    f->parse_depth--;
    return k;
}

static void t_eof_cb(struct stream *s, int err)
{
    fx_of(s)->eof = err;
}

static void t_written_cb(struct stream *s, int status)
{
    (void)status;
    fx_of(s)->written_calls++;
}

static void t_close_cb(struct stream *s, unsigned reason)
{
    struct fx *f = fx_of(s);
    f->close_calls++;
    f->close_reason = reason;
}

static void t_closed_cb(struct stream *s)
{
    fx_of(s)->closed_calls++;
}

static void write_cb(void *ctx, int status)
{
    struct fx *f = ctx;
    f->write_cbs++;
    f->write_status = status;
}

static void on_connection_cb(uv_stream_t *l, int status)
{
    struct fx *f = l->data;
    assert_int_equal(status, 0);
    assert_int_equal(stream_accept(&f->s, l), 0);
    f->accepted = true;
}

/* Runs the loop until *flag is set or, with a sink, until `want` bytes
 * of the peer's input are in it; fails after 10 s. */
static void run_until(struct fx *f, const int *flag, char *sink, size_t *sunk, size_t want)
{
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (flag ? !*flag : *sunk < want) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        if (sink) {
            ssize_t n = read(f->peer, sink + *sunk, want - *sunk);
            if (n > 0)
                *sunk += (size_t)n;
        } else {
            usleep(1000);
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        assert_true(now.tv_sec - t0.tv_sec < 10);
    }
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->kind = (struct stream_kind){
        .name = "test",
        STREAM_CALLBACKS(t),
        .m_bytes_in = &f->bytes_in,
        .m_bytes_out = &f->bytes_out,
        .m_pauses = { &f->m_pauses[0], &f->m_pauses[1] },
    };
    f->take = SIZE_MAX;
    uv_tcp_init(&f->loop, &f->lst);
    f->lst.data = f;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&f->lst, (struct sockaddr *)&sa, 0), 0);
    int len = sizeof(sa);
    assert_int_equal(uv_tcp_getsockname(&f->lst, (struct sockaddr *)&sa, &len), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&f->lst, 8, on_connection_cb), 0);
    stream_init(&f->s, &f->loop, &f->kind);
    uv_timer_init(&f->loop, &f->timer);
    stream_attach(&f->s, (uv_handle_t *)&f->timer);
    f->peer = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(f->peer, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    assert_int_equal(connect(f->peer, (struct sockaddr *)&sa, sizeof(sa)), 0);
    fcntl(f->peer, F_SETFL, O_NONBLOCK);
    while (!f->accepted)
        uv_run(&f->loop, UV_RUN_ONCE);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    stream_close(&f->s, 0);
    uv_close((uv_handle_t *)&f->lst, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->closed_calls, 1);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    close(f->peer);
    free(f);
    return 0;
}

static void peer_send(struct fx *f, const char *text)
{
    assert_int_equal(write(f->peer, text, strlen(text)), (ssize_t)strlen(text));
}

/* A parser that pauses leaves bytes: they are held (reading stops) and
 * parsed first once resumed, before anything read later. */
static void test_held_bytes_parsed_on_resume(void **state)
{
    struct fx *f = *state;
    f->take = 5;
    stream_read_update(&f->s);
    peer_send(f, "hello world");
    run_until(f, &f->parses, NULL, NULL, 0);
    assert_bytes_eq(f->got, f->got_len, "hello", 5);
    assert_true(stream_held_any(&f->s));
    assert_true(stream_paused(&f->s, PAUSE_PARSER));
    assert_int_equal(f->bytes_in, 11);
    /* Held bytes stop reading whatever the pause bits say. */
    assert_false(stream_read_update(&f->s));
    assert_false(f->s.reading);

    f->take = SIZE_MAX;
    stream_resume(&f->s, PAUSE_PARSER);
    stream_parse_held(&f->s);
    assert_bytes_eq(f->got, f->got_len, "hello world", 11);
    assert_false(stream_held_any(&f->s));
    assert_true(stream_read_update(&f->s));
    assert_true(f->s.reading);
    assert_int_equal(f->m_pauses[0], 1);
}

/* A pause is counted when it starts, not while it lasts; a bit without a
 * counter stops reading all the same. */
static void test_pause_counted_once_per_reason(void **state)
{
    struct fx *f = *state;
    stream_pause(&f->s, PAUSE_PARSER);
    stream_pause(&f->s, PAUSE_PARSER);
    stream_pause(&f->s, PAUSE_QUIET);
    assert_int_equal(f->m_pauses[0], 1);
    assert_int_equal(f->m_pauses[1], 0);
    assert_false(stream_read_update(&f->s));
    stream_resume(&f->s, PAUSE_PARSER);
    assert_false(stream_read_update(&f->s)); /* PAUSE_QUIET still set */
    stream_resume(&f->s, PAUSE_QUIET);
    assert_true(stream_read_update(&f->s));
    stream_pause(&f->s, PAUSE_PARSER);
    assert_int_equal(f->m_pauses[0], 2);
}

/* Dropping the held bytes during a parse drops that parse's leftover too,
 * and a parse asked for during a parse runs after it, not inside. */
static void test_drop_and_reparse_during_parse(void **state)
{
    struct fx *f = *state;
    f->take = 3;
    f->drop_rest = true;
    f->reparse = true;
    stream_read_update(&f->s);
    peer_send(f, "abcdef");
    run_until(f, &f->parses, NULL, NULL, 0);
    assert_false(stream_held_any(&f->s));
    assert_int_equal(f->parses, 2);       /* the read, then the deferred empty parse */
    assert_int_equal(f->parse_max_depth, 1);
    assert_bytes_eq(f->got, f->got_len, "abc", 3);
}

/* A small write goes out at once: no queue, its callback before return. */
static void test_small_write_not_queued(void **state)
{
    struct fx *f = *state;
    uv_buf_t b[2] = { uv_buf_init((char *)"ab", 2), uv_buf_init((char *)"cd", 2) };
    assert_int_equal(stream_write(&f->s, b, 2, STREAM_KEEP, write_cb, f), 0);
    assert_int_equal(f->write_cbs, 1);
    assert_int_equal(f->write_status, 0);
    assert_int_equal(stream_writes(&f->s), 0);
    assert_int_equal(f->bytes_out, 4);
    char buf[4];
    size_t got = 0;
    run_until(f, NULL, buf, &got, sizeof(buf));
    assert_bytes_eq(buf, got, "abcd", 4);
}

static char *big_buffer(void)
{
    char *p = malloc(BIG);
    for (size_t i = 0; i < BIG; i++)
        p[i] = (char)(i * 7 + i / 4096);
    return p;
}

/* Writes BIG bytes through a small send buffer to a peer that reads
 * nothing yet, with a 64 KiB limit and the given action. */
static char *write_over_limit(struct fx *f, enum stream_over_limit action, enum stream_write_mode mode)
{
    f->kind.write_limit = 64 * 1024;
    f->kind.over_limit = action;
    f->kind.limit_pause = PAUSE_WRITEQ;
    f->kind.limit_reason = REASON_TEST;
    int small = 4096;
    setsockopt(stream_fd(&f->s), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    char *data = big_buffer();
    uv_buf_t b = uv_buf_init(data, BIG);
    assert_int_equal(stream_write(&f->s, &b, 1, mode, write_cb, f), 0);
    return data;
}

/* Past the limit, STREAM_OVER_LIMIT_PAUSE stops reading under its own
 * counted reason, and lifts it once the peer has read the queue down. */
static void test_write_limit_pauses_reading(void **state)
{
    struct fx *f = *state;
    stream_read_update(&f->s);
    char *data = write_over_limit(f, STREAM_OVER_LIMIT_PAUSE, STREAM_COPY);
    memset(data, 0, BIG); /* copied: the caller's bytes are free */
    assert_true(stream_queued(&f->s) > f->kind.write_limit);
    assert_int_equal(stream_writes(&f->s), 1);
    assert_true(stream_paused(&f->s, PAUSE_WRITEQ));
    assert_int_equal(f->m_pauses[1], 1);
    assert_false(stream_read_update(&f->s));
    assert_int_equal(f->write_cbs, 0);

    char *sink = malloc(BIG);
    size_t sunk = 0;
    run_until(f, &f->write_cbs, sink, &sunk, BIG);
    assert_int_equal(f->write_status, 0);
    assert_int_equal(f->written_calls, 1);
    assert_false(stream_paused(&f->s, PAUSE_WRITEQ));
    assert_true(stream_read_update(&f->s));
    run_until(f, NULL, sink, &sunk, BIG);
    char *want = big_buffer();
    assert_memory_equal(sink, want, BIG);
    assert_int_equal(f->bytes_out, BIG);
    free(want);
    free(sink);
    free(data);
}

/* STREAM_OVER_LIMIT_CLOSE closes with the kind's reason at once; the
 * queued write is cancelled and the memory is the owner's again only when
 * both handles (socket and companion timer) are closed. */
static void test_write_limit_closes(void **state)
{
    struct fx *f = *state;
    char *data = write_over_limit(f, STREAM_OVER_LIMIT_CLOSE, STREAM_KEEP);
    uv_buf_t b = uv_buf_init(data, BIG);
    assert_int_equal(f->close_calls, 1);
    assert_int_equal(f->close_reason, REASON_TEST);
    assert_true(stream_closing(&f->s));
    assert_int_equal(f->closed_calls, 0);
    /* Closed streams take no more writes. */
    assert_int_equal(stream_write(&f->s, &b, 1, STREAM_KEEP, NULL, NULL), UV_ECANCELED);
    run_until(f, &f->closed_calls, NULL, NULL, 0);
    assert_int_equal(f->write_cbs, 1);
    assert_int_equal(f->write_status, UV_ECANCELED);
    assert_int_equal(f->written_calls, 0); /* not after close */
    assert_true(uv_is_closing((uv_handle_t *)&f->timer));
    stream_close(&f->s, 0); /* once only */
    assert_int_equal(f->close_calls, 1);
    free(data);
}

static void test_peer_close_is_eof(void **state)
{
    struct fx *f = *state;
    stream_read_update(&f->s);
    shutdown(f->peer, SHUT_WR);
    run_until(f, &f->eof, NULL, NULL, 0);
    assert_int_equal(f->eof, UV_EOF);
    struct sockaddr_storage ss;
    assert_int_equal(stream_peer_addr(&f->s, &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(((struct sockaddr_in *)&ss)->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_held_bytes_parsed_on_resume), T(test_pause_counted_once_per_reason),
        T(test_drop_and_reparse_during_parse), T(test_small_write_not_queued),
        T(test_write_limit_pauses_reading), T(test_write_limit_closes), T(test_peer_close_is_eof),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
