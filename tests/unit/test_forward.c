/*
 * test_forward: forward auth (daemon/auth/forward.c) over sub-requests
 * (daemon/proxy/subrequest.c) and the real [upstream] pool, against an app
 * server the test runs on the same libuv loop over loopback TCP.
 *
 *   forward_check ──> forward.c ──> subrequest ──> pool ──TCP──> test app
 *        ▲                                                       │ answers by the
 *        └────────────── cb (counted, principal kept) <──────────┘ session cookie
 *
 * The app can hold its answers until the test releases them, so "every
 * check arrived while one was in flight" is a fact, not a race. What is
 * checked is what a client would notice: the verdicts, how many checks
 * reached the app, on how many connections, and the exact head it got.
 */
#include "unit.h"

#include <arpa/inet.h>
#include <errno.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "daemon/auth/forward.h"
#include "daemon/metrics.h"
#include "daemon/proxy/subrequest.h"
#include "daemon/proxy/upstream.h"
#include "proto/hashtab.h"

/* --- the app ------------------------------------------------------------------ */

struct app_conn {
    uv_tcp_t tcp;
    struct app *app;
    char in[8192];
    size_t in_len;
};

struct held {
    struct app_conn *c;
    char session[64];
};

struct app {
    uv_tcp_t lst;
    int port;
    unsigned accepts, requests, eofs;
    char last_head[2048];
    bool hold;
    bool lst_closed;
    struct held held[256];
    unsigned n_held;
};

static char huge[SUBREQUEST_BODY_MAX + 2000];

/* The answer to a check, by the value of its session cookie. */
static void answer_for(const char *s, struct buf *out)
{
    const char *ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n";
    if (strncmp(s, "user-", 5) == 0)
        buf_appendf(out, "%sX-Principal: %s\r\n\r\n{}", ok, s + 5);
    else if (strcmp(s, "e401") == 0)
        buf_append_str(out, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
    else if (strcmp(s, "e403") == 0)
        buf_append_str(out, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    else if (strcmp(s, "e500") == 0)
        buf_append_str(out, "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n");
    else if (strcmp(s, "e302") == 0)
        buf_append_str(out, "HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\n\r\n");
    else if (strcmp(s, "noheader") == 0)
        buf_appendf(out, "%s\r\n{}", ok);
    else if (strcmp(s, "empty") == 0)
        buf_appendf(out, "%sX-Principal:\r\n\r\n{}", ok);
    else if (strcmp(s, "twice") == 0)
        buf_appendf(out, "%sX-Principal: alice\r\nX-Principal: mallory\r\n\r\n{}", ok);
    else if (strcmp(s, "ctl") == 0)
        buf_appendf(out, "%sX-Principal: al\x01ice\r\n\r\n{}", ok);
    else if (strcmp(s, "tab") == 0) /* llhttp takes a tab in a value; a principal has none */
        buf_appendf(out, "%sX-Principal: al\tice\r\n\r\n{}", ok);
    else if (strcmp(s, "fold") == 0)
        buf_appendf(out, "%sX-Principal: alice\r\n X-Injected: 1\r\n\r\n{}", ok);
    else if (strcmp(s, "latin1") == 0)
        buf_appendf(out, "%sX-Principal: j\xf6rg\r\n\r\n{}", ok);
    else if (strcmp(s, "utf8") == 0)
        buf_appendf(out, "%sX-Principal: j\xc3\xb6rg\r\n\r\n{}", ok);
    else if (strcmp(s, "bare_cr") == 0)
        buf_appendf(out, "%sX-Principal: alice\rX-Injected: 1\r\n\r\n{}", ok);
    else if (strcmp(s, "long") == 0) {
        buf_appendf(out, "%sX-Principal: ", ok);
        for (int i = 0; i < SUBREQUEST_VALUE_MAX + 1; i++)
            buf_append_char(out, 'a');
        buf_append_str(out, "\r\n\r\n{}");
    } else if (strcmp(s, "max") == 0) {
        buf_appendf(out, "%sX-Principal: ", ok);
        for (int i = 0; i < SUBREQUEST_VALUE_MAX; i++)
            buf_append_char(out, 'm');
        buf_append_str(out, "\r\n\r\n{}");
    } else if (strcmp(s, "huge") == 0) {
        buf_appendf(out, "HTTP/1.1 200 OK\r\nX-Principal: alice\r\nContent-Length: %zu\r\n\r\n", sizeof(huge));
        buf_append(out, huge, sizeof(huge));
    } else if (strcmp(s, "body") == 0) { /* a body under the bound is read and dropped */
        buf_appendf(out, "HTTP/1.1 200 OK\r\nX-Principal: bob\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "%x\r\n", SUBREQUEST_BODY_MAX);
        buf_append(out, huge, SUBREQUEST_BODY_MAX);
        buf_append_str(out, "\r\n0\r\n\r\n");
    } else if (strcmp(s, "close") == 0) {
        buf_appendf(out, "%sConnection: close\r\nX-Principal: carl\r\n\r\n{}", ok);
    } else
        buf_append_str(out, "NOT HTTP\r\n\r\n");
}

static void app_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

static void app_write_cb(uv_write_t *w, int status)
{
    (void)status;
    free(w->data);
    free(w);
}

static void app_answer(struct app_conn *c, const char *session)
{
    struct buf out = BUF_INIT;
    answer_for(session, &out);
    uv_write_t *w = malloc(sizeof(*w));
    w->data = out.data; /* freed in app_write_cb */
    uv_buf_t b = uv_buf_init(out.data, (unsigned)out.len);
    if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, app_write_cb) != 0) {
        free(out.data);
        free(w);
    }
}

static void app_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    struct app_conn *c = h->data;
    b->base = c->in + c->in_len;
    b->len = sizeof(c->in) - c->in_len;
}

static void app_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    struct app_conn *c = s->data;
    struct app *a = c->app;
    if (n < 0) {
        a->eofs++;
        for (unsigned i = 0; i < a->n_held; i++)
            if (a->held[i].c == c)
                a->held[i].c = NULL;
        uv_close((uv_handle_t *)s, app_closed_cb);
        return;
    }
    c->in_len += (size_t)n;
    char *end;
    while ((end = memmem(c->in, c->in_len, "\r\n\r\n", 4)) != NULL) {
        size_t head = (size_t)(end - c->in) + 4;
        snprintf(a->last_head, sizeof(a->last_head), "%.*s", (int)head, c->in);
        a->requests++;
        char session[64] = "";
        const char *p = strstr(a->last_head, "session=");
        if (p)
            sscanf(p + 8, "%63[^;\r\n]", session);
        if (a->hold) {
            a->held[a->n_held].c = c;
            strcpy(a->held[a->n_held++].session, session);
        } else {
            app_answer(c, session);
        }
        memmove(c->in, c->in + head, c->in_len - head);
        c->in_len -= head;
    }
}

static void app_connection_cb(uv_stream_t *l, int status)
{
    struct app *a = l->data;
    assert_int_equal(status, 0);
    struct app_conn *c = calloc(1, sizeof(*c));
    c->app = a;
    uv_tcp_init(l->loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    a->accepts++;
    uv_read_start((uv_stream_t *)&c->tcp, app_alloc_cb, app_read_cb);
}

static void app_release(struct app *a)
{
    a->hold = false;
    for (unsigned i = 0; i < a->n_held; i++)
        if (a->held[i].c)
            app_answer(a->held[i].c, a->held[i].session);
    a->n_held = 0;
}

/* --- the fixture ----------------------------------------------------------------- */

struct got {
    int calls;
    enum forward_result res;
    char principal[SUBREQUEST_VALUE_MAX + 1];
    size_t len;
};

struct fx {
    uv_loop_t loop;
    struct app app;
    struct cfg_upstream ucfg;
    struct cfg_auth acfg;
    struct upstream *up;
    struct forward_auth *f;
};

static void got_cb(void *ctx, enum forward_result res, const char *principal, size_t len)
{
    struct got *g = ctx;
    g->calls++;
    g->res = res;
    assert_true((principal != NULL) == (res == FORWARD_ALLOWED));
    assert_true(len <= SUBREQUEST_VALUE_MAX);
    if (principal)
        memcpy(g->principal, principal, len);
    g->principal[len] = '\0';
    g->len = len;
}

static void run_until_fn(struct fx *f, bool (*pred)(void *), void *arg)
{
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (!pred(arg)) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(200);
        clock_gettime(CLOCK_MONOTONIC, &now);
        assert_true(now.tv_sec - t0.tv_sec < 10);
    }
}

static bool called(void *arg)
{
    return ((struct got *)arg)->calls > 0;
}

struct count_at_least {
    const unsigned *v;
    unsigned want;
};

static bool reached(void *arg)
{
    struct count_at_least *c = arg;
    return *c->v >= c->want;
}

#define RUN_UNTIL_CALLED(f, g) run_until_fn((f), called, (g))
#define RUN_UNTIL_COUNT(f, var, n) run_until_fn((f), reached, &(struct count_at_least){ &(var), (n) })

static uint64_t sub_count(const char *result)
{
    char l[64];
    snprintf(l, sizeof(l), "result=\"%s\"", result);
    return *metrics_counter("batchd_upstream_subrequests_total", l, "");
}

static void check(struct fx *f, const char *cookie, const char *authz, struct got *g)
{
    memset(g, 0, sizeof(*g));
    forward_check(f->f, str_cstr(cookie), authz ? str_cstr(authz) : STR_NULL, got_cb, g);
}

/* Checks cookie and waits for the verdict. */
static enum forward_result verdict(struct fx *f, const char *cookie, struct got *g)
{
    check(f, cookie, NULL, g);
    RUN_UNTIL_CALLED(f, g);
    assert_int_equal(g->calls, 1);
    return g->res;
}

static int fx_setup(struct fx *f, int pool_size, int max_waiting, int64_t cache_ms, int64_t timeout_ms)
{
    assert_int_equal(uv_loop_init(&f->loop), 0);
    struct app *a = &f->app;
    uv_tcp_init(&f->loop, &a->lst);
    a->lst.data = a;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&a->lst, (struct sockaddr *)&sa, 0), 0);
    int len = sizeof(sa);
    assert_int_equal(uv_tcp_getsockname(&a->lst, (struct sockaddr *)&sa, &len), 0);
    a->port = ntohs(sa.sin_port);
    assert_int_equal(uv_listen((uv_stream_t *)&a->lst, 64, app_connection_cb), 0);

    static char host[32];
    snprintf(host, sizeof(host), "127.0.0.1:%d", a->port);
    f->ucfg.url.host = host;
    f->ucfg.url.text = host;
    f->ucfg.url.addr.text = host;
    memcpy(&f->ucfg.url.addr.ss, &sa, sizeof(sa));
    f->ucfg.url.addr.len = sizeof(sa);
    f->ucfg.pool_size = pool_size;
    f->ucfg.max_waiting = max_waiting;
    f->ucfg.connect_timeout_ms = 1000;
    f->ucfg.timeout_ms = 5000;
    f->ucfg.idle_timeout_ms = 60000;
    f->acfg.check_url = "/whoami";
    f->acfg.check_principal_header = "X-Principal";
    f->acfg.check_cache_ms = cache_ms;
    f->acfg.check_cache_entries = 1000;
    f->acfg.check_timeout_ms = timeout_ms;
    f->up = upstream_new(&f->loop, &f->ucfg, NULL);
    f->f = forward_auth_new(&f->loop, &f->acfg, f->up);
    return 0;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    fx_setup(f, 4, 16, 5000, 2000);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    forward_auth_free(f->f);
    upstream_free(f->up);
    if (!f->app.lst_closed)
        uv_close((uv_handle_t *)&f->app.lst, NULL);
    /* The app's connections end when batchd's do (EOF). */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

/* --- tests ------------------------------------------------------------------------ */

static void test_allowed_then_cached(void **state)
{
    struct fx *f = *state;
    struct got g;
    assert_int_equal(verdict(f, "session=user-alice", &g), FORWARD_ALLOWED);
    assert_string_equal(g.principal, "alice");
    /* Cached: the verdict comes before forward_check returns. */
    check(f, "session=user-alice", NULL, &g);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.res, FORWARD_ALLOWED);
    assert_string_equal(g.principal, "alice");
    assert_int_equal(f->app.requests, 1);
}

static void test_the_check_carries_only_host_cookie_authorization(void **state)
{
    struct fx *f = *state;
    struct got g;
    check(f, "a=1; session=user-eve", "Basic ZXZlOng=", &g);
    RUN_UNTIL_CALLED(f, &g);
    char want[256];
    snprintf(want, sizeof(want),
             "GET /whoami HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nCookie: a=1; session=user-eve\r\n"
             "Authorization: Basic ZXZlOng=\r\n\r\n", f->app.port);
    assert_string_equal(f->app.last_head, want);
    assert_string_equal(g.principal, "eve");
}

static void test_single_flight(void **state)
{
    struct fx *f = *state;
    enum { N = 200 };
    struct got *g = calloc(N + 1, sizeof(*g));
    uint64_t joined0 = *metrics_counter("batchd_auth_check_joined_total", "", "");
    f->app.hold = true;
    for (int i = 0; i < N; i++)
        forward_check(f->f, STR_LIT("session=user-sam"), STR_NULL, got_cb, &g[i]);
    forward_check(f->f, STR_LIT("session=user-sue"), STR_NULL, got_cb, &g[N]);
    RUN_UNTIL_COUNT(f, f->app.n_held, 2);
    for (int i = 0; i <= N; i++)
        assert_int_equal(g[i].calls, 0);
    assert_int_equal(*metrics_counter("batchd_auth_check_joined_total", "", "") - joined0, N - 1);
    app_release(&f->app);
    RUN_UNTIL_CALLED(f, &g[N - 1]);
    RUN_UNTIL_CALLED(f, &g[N]);
    for (int i = 0; i < N; i++) {
        assert_int_equal(g[i].calls, 1);
        assert_int_equal(g[i].res, FORWARD_ALLOWED);
        assert_string_equal(g[i].principal, "sam");
    }
    assert_string_equal(g[N].principal, "sue");
    assert_int_equal(f->app.requests, 2);
    free(g);
}

static void test_401_403_cached(void **state)
{
    struct fx *f = *state;
    struct got g;
    assert_int_equal(verdict(f, "session=e401", &g), FORWARD_DENIED);
    assert_int_equal(verdict(f, "session=e403", &g), FORWARD_FORBIDDEN);
    check(f, "session=e401", NULL, &g);
    assert_true(g.calls == 1 && g.res == FORWARD_DENIED);
    check(f, "session=e403", NULL, &g);
    assert_true(g.calls == 1 && g.res == FORWARD_FORBIDDEN);
    assert_int_equal(f->app.requests, 2);
}

/* Every answer that is not a clean verdict: unavailable, and asked again. */
static void test_unusable_answers_not_cached(void **state)
{
    struct fx *f = *state;
    static const char *const bad[] = { "e500", "e302", "noheader", "empty", "twice", "ctl", "tab",
                                       "fold", "latin1", "bare_cr", "long", "huge", "garbage" };
    struct got g;
    uint64_t too_large = sub_count("too_large"), bad_response = sub_count("bad_response");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char cookie[64];
        snprintf(cookie, sizeof(cookie), "session=%s", bad[i]);
        unsigned requests = f->app.requests;
        for (unsigned k = 1; k <= 2; k++) {
            if (verdict(f, cookie, &g) != FORWARD_UNAVAILABLE)
                fail_msg("%s: verdict %d", bad[i], g.res);
            assert_int_equal(f->app.requests, requests + k); /* not cached: asked again */
        }
        /* The pool is fine after it. */
        assert_int_equal(verdict(f, "session=user-ok", &g), FORWARD_ALLOWED);
    }
    assert_int_equal(sub_count("too_large") - too_large, 2);
    /* llhttp refuses a control byte, a bare CR and garbage (twice each);
     * the tab, the fold and the rest are batchd's own checks. */
    assert_int_equal(sub_count("bad_response") - bad_response, 6);
    /* A principal of exactly the bound is fine; a body under it is read and dropped. */
    assert_int_equal(verdict(f, "session=max", &g), FORWARD_ALLOWED);
    assert_int_equal(g.len, SUBREQUEST_VALUE_MAX);
    assert_int_equal(verdict(f, "session=body", &g), FORWARD_ALLOWED);
    assert_string_equal(g.principal, "bob");
    assert_int_equal(verdict(f, "session=utf8", &g), FORWARD_ALLOWED);
    assert_string_equal(g.principal, "j\xc3\xb6rg");
}

static void test_connection_reuse(void **state)
{
    struct fx *f = *state;
    struct got g;
    char cookie[64];
    for (int i = 0; i < 5; i++) {
        snprintf(cookie, sizeof(cookie), "session=user-u%d", i);
        assert_int_equal(verdict(f, cookie, &g), FORWARD_ALLOWED);
    }
    assert_int_equal(f->app.accepts, 1);
    /* Connection: close, and an answer over the body bound: not reused. */
    assert_int_equal(verdict(f, "session=close", &g), FORWARD_ALLOWED);
    assert_int_equal(verdict(f, "session=user-v", &g), FORWARD_ALLOWED);
    assert_int_equal(f->app.accepts, 2);
    assert_int_equal(verdict(f, "session=huge", &g), FORWARD_UNAVAILABLE);
    assert_int_equal(verdict(f, "session=user-w", &g), FORWARD_ALLOWED);
    assert_int_equal(f->app.accepts, 3);
    RUN_UNTIL_COUNT(f, f->app.eofs, 2);
}

static void test_timeout(void **state)
{
    struct fx *f = *state;
    f->acfg.check_timeout_ms = 100;
    forward_auth_configure(f->f, &f->acfg);
    f->app.hold = true;
    struct got g;
    uint64_t t0 = uv_hrtime();
    assert_int_equal(verdict(f, "session=user-slow", &g), FORWARD_UNAVAILABLE);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_true(ms >= 90 && ms < 2000);
    RUN_UNTIL_COUNT(f, f->app.eofs, 1); /* the connection was closed, not pooled */
    f->app.hold = false;
    f->app.n_held = 0;
    assert_int_equal(verdict(f, "session=user-slow", &g), FORWARD_ALLOWED); /* not cached */
}

static void test_app_down(void **state)
{
    struct fx *f = *state;
    uv_close((uv_handle_t *)&f->app.lst, NULL);
    f->app.lst_closed = true;
    struct got g;
    uint64_t refused = sub_count("refused");
    assert_int_equal(verdict(f, "session=user-x", &g), FORWARD_UNAVAILABLE);
    assert_int_equal(verdict(f, "session=user-x", &g), FORWARD_UNAVAILABLE);
    assert_int_equal(sub_count("refused") - refused, 2);
}

static void test_pool_full_and_line(void **state)
{
    struct fx *f = *state;
    f->ucfg.pool_size = 1;
    f->ucfg.max_waiting = 1;
    f->app.hold = true;
    struct got a, b, c;
    check(f, "session=user-a", NULL, &a);
    RUN_UNTIL_COUNT(f, f->app.n_held, 1);
    check(f, "session=user-b", NULL, &b); /* in the pool's line */
    uint64_t full = sub_count("pool_full");
    check(f, "session=user-c", NULL, &c); /* no room: at once */
    assert_true(c.calls == 1 && c.res == FORWARD_UNAVAILABLE);
    assert_int_equal(sub_count("pool_full") - full, 1);
    app_release(&f->app);
    RUN_UNTIL_CALLED(f, &a);
    RUN_UNTIL_CALLED(f, &b);
    assert_string_equal(a.principal, "a");
    assert_string_equal(b.principal, "b");
    assert_int_equal(f->app.accepts, 1);
    assert_int_equal(verdict(f, "session=user-c", &c), FORWARD_ALLOWED); /* not cached */
}

static void test_free_completes_every_waiter_once(void **state)
{
    struct fx *f = *state;
    f->ucfg.pool_size = 1; /* one check on the connection, one in the line */
    f->app.hold = true;
    struct got g[6];
    memset(g, 0, sizeof(g));
    for (int i = 0; i < 5; i++)
        forward_check(f->f, STR_LIT("session=user-a"), STR_NULL, got_cb, &g[i]);
    forward_check(f->f, STR_LIT("session=user-b"), STR_NULL, got_cb, &g[5]);
    RUN_UNTIL_COUNT(f, f->app.n_held, 1);
    forward_auth_free(f->f);
    for (int i = 0; i < 6; i++)
        assert_true(g[i].calls == 1 && g[i].res == FORWARD_UNAVAILABLE);
    RUN_UNTIL_COUNT(f, f->app.eofs, 1); /* the busy connection was closed */
    app_release(&f->app);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    for (int i = 0; i < 6; i++)
        assert_int_equal(g[i].calls, 1);
    f->f = forward_auth_new(&f->loop, &f->acfg, f->up);
}

static void test_no_or_bad_credential(void **state)
{
    struct fx *f = *state;
    struct got g;
    check(f, "", NULL, &g);
    assert_true(g.calls == 1 && g.res == FORWARD_DENIED);
    check(f, "session=user-x\r\nX-Principal: admin", NULL, &g);
    assert_true(g.calls == 1 && g.res == FORWARD_DENIED);
    check(f, "session=user-x", "Basic a\nb", &g);
    assert_true(g.calls == 1 && g.res == FORWARD_DENIED);
    memset(&g, 0, sizeof(g));
    forward_check(f->f, STR_LIT("session=user-x\0b"), STR_NULL, got_cb, &g);
    assert_true(g.calls == 1 && g.res == FORWARD_DENIED);
    /* None went out: by the time a good check is answered, the app has
     * seen that one only, on the one connection. (One turn of the loop
     * right away, as before, was too soon to see a connect.) */
    assert_int_equal(verdict(f, "session=user-y", &g), FORWARD_ALLOWED);
    assert_int_equal(f->app.accepts, 1);
    assert_int_equal(f->app.requests, 1);
}

static void test_reload(void **state)
{
    struct fx *f = *state;
    struct got g;
    assert_int_equal(verdict(f, "session=user-r", &g), FORWARD_ALLOWED);
    forward_auth_configure(f->f, &f->acfg); /* same: the cache stays */
    check(f, "session=user-r", NULL, &g);
    assert_int_equal(g.calls, 1);
    f->acfg.check_url = "/whoami2";
    forward_auth_configure(f->f, &f->acfg); /* another check_url: asked again, there */
    assert_int_equal(verdict(f, "session=user-r", &g), FORWARD_ALLOWED);
    assert_int_equal(f->app.requests, 2);
    assert_memory_equal(f->app.last_head, "GET /whoami2 ", 13);
    f->acfg.check_cache_ms = 0; /* no cache: every check asks */
    forward_auth_configure(f->f, &f->acfg);
    assert_int_equal(verdict(f, "session=user-r", &g), FORWARD_ALLOWED);
    assert_int_equal(verdict(f, "session=user-r", &g), FORWARD_ALLOWED);
    assert_int_equal(f->app.requests, 4);
}

/* A reload to another check_url while a check is in flight: its waiters
 * get the old app's verdict, but a request arriving after the reload asks
 * the new check_url instead of joining it. */
static void test_reload_mid_check_is_not_joined(void **state)
{
    struct fx *f = *state;
    struct got old, later;
    f->app.hold = true;
    check(f, "session=user-m", NULL, &old);
    RUN_UNTIL_COUNT(f, f->app.n_held, 1);
    assert_memory_equal(f->app.last_head, "GET /whoami ", 12);
    f->acfg.check_url = "/whoami2";
    forward_auth_configure(f->f, &f->acfg);
    check(f, "session=user-m", NULL, &later);
    RUN_UNTIL_COUNT(f, f->app.n_held, 2);
    assert_memory_equal(f->app.last_head, "GET /whoami2 ", 13);
    app_release(&f->app);
    RUN_UNTIL_CALLED(f, &old);
    RUN_UNTIL_CALLED(f, &later);
    assert_true(old.res == FORWARD_ALLOWED && later.res == FORWARD_ALLOWED);
    assert_int_equal(f->app.requests, 2);
    /* The new check_url's verdict is the one cached. */
    check(f, "session=user-m", NULL, &later);
    assert_int_equal(later.calls, 1);
    assert_int_equal(f->app.requests, 2);
}

static void test_subrequest_refuses_injection(void **state)
{
    struct fx *f = *state;
    struct subrequest *sr = NULL;
    struct subrequest_header h = { "X-Test", STR_LIT("a\r\nX-Evil: 1") };
    struct subrequest_opts o = { .path = "/whoami", .headers = &h, .n_headers = 1, .timeout_ms = 100 };
    assert_int_equal(subrequest_start(f->up, &o, NULL, NULL, &sr), -EINVAL);
    h = (struct subrequest_header){ "X Bad", STR_LIT("v") };
    assert_int_equal(subrequest_start(f->up, &o, NULL, NULL, &sr), -EINVAL);
    o.n_headers = 0;
    o.path = "/who ami";
    assert_int_equal(subrequest_start(f->up, &o, NULL, NULL, &sr), -EINVAL);
    o.path = "http://x/";
    assert_int_equal(subrequest_start(f->up, &o, NULL, NULL, &sr), -EINVAL);
    assert_null(sr);
    /* Refused before the pool: nothing reached the app (a good check,
     * answered, is the only request it saw). */
    struct got g;
    assert_int_equal(verdict(f, "session=user-z", &g), FORWARD_ALLOWED);
    assert_int_equal(f->app.accepts, 1);
    assert_int_equal(f->app.requests, 1);
}

int main(void)
{
    hashtab_seed_init();
    memset(huge, 'x', sizeof(huge));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_allowed_then_cached, setup, teardown),
        cmocka_unit_test_setup_teardown(test_the_check_carries_only_host_cookie_authorization, setup, teardown),
        cmocka_unit_test_setup_teardown(test_single_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_401_403_cached, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unusable_answers_not_cached, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_app_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_full_and_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_completes_every_waiter_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_or_bad_credential, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_mid_check_is_not_joined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_subrequest_refuses_injection, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    metrics_free_all();
    return rc;
}
