/*
 * forward: forward auth through the app's check_url. See forward.h.
 *
 *   forward_check(cookie, authorization)
 *     key = SHA-256('f', cookie, authorization)
 *       │ cred_cache: allowed / denied / forbidden ──> cb at once
 *       │ pending[key]: a check in flight (this check_url's) ──> one more waiter
 *       ▼
 *     a check: subrequest GET check_url (proxy/subrequest.h), Cookie and
 *     Authorization as the client sent them, nothing else of the client's
 *       │ 2xx + one clean principal header ──> allowed  ─┐ cached for
 *       │ 401 ──> denied,  403 ──> forbidden            ─┘ check_cache_ms
 *       ▼ anything else, no answer ──> unavailable (not cached)
 *     every waiter's cb, in arrival order, exactly once
 *
 * Bounds. Checks in flight are bounded by the [upstream] pool they go
 * through: a sub-request that finds pool_size connections busy and
 * max_waiting in line fails at once (unavailable). Waiters on all checks
 * together: at most MAX_WAITERS (each is a few words, and stands for a
 * client request, itself bounded by max_connections); more: unavailable.
 *
 * cred_cache knows two verdicts, a principal or "denied". A 403 is
 * remembered as the principal FORBIDDEN_MARK, which no app can send: a
 * principal with a NUL is refused (subrequest.c takes no control bytes).
 */
#include "daemon/auth/forward.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "daemon/auth/cred_cache.h"
#include "daemon/auth/jwt.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/proxy/subrequest.h"
#include "proto/hashtab.h"
#include "proto/mem.h"

#define MAX_WAITERS 65536
/* A principal comes whole through a sub-request, and fits from_cache's copy. */
_Static_assert(SUBREQUEST_VALUE_MAX >= JWT_MAX_PRINCIPAL, "a principal fits a sub-request's value");
static const char FORBIDDEN_MARK[] = "\0forbidden";

/* A request waiting for a check's verdict. */
struct fwd_waiter {
    STAILQ_ENTRY(fwd_waiter) link;
    forward_fn cb;
    void *ctx;
};

STAILQ_HEAD(fwd_waiters, fwd_waiter);

/* One credential being checked. */
struct fwd_check {
    struct hashtab_node node;   /* in pending while gen is f->gen; key: the digest */
    LIST_ENTRY(fwd_check) link; /* in f->checks until answered */
    struct cred_key key;
    struct forward_auth *f;
    struct subrequest *sr;
    struct fwd_waiters waiters; /* arrival order */
    unsigned gen;               /* f->gen at the start: an older check_url's verdict is
                                 * neither cached nor joined */
    uint64_t start_ns;
};

struct forward_auth {
    uv_loop_t *loop;
    struct upstream *up;
    char *check_url;
    char *principal_header;
    int64_t cache_ms;
    int64_t timeout_ms;
    struct cred_cache *cache;
    struct hashtab pending;     /* digest ──> fwd_check, this gen's: new requests join */
    LIST_HEAD(, fwd_check) checks; /* every check in flight, older gens' too */
    unsigned gen;               /* bumped when check_url or the header changes */
    bool failing;               /* the last check was unavailable (logged once per change) */
    uint64_t n_failed;          /* unavailable checks since failing began */
    struct buf scratch;         /* a cached principal, on its way to the stack */
    uint64_t *m_result[FORWARD_UNAVAILABLE + 1];
    uint64_t *m_joined, *m_waiters_full;
    int64_t *m_in_flight;
    int64_t *m_waiting;         /* waiters over all checks: MAX_WAITERS bounds it */
    struct metric_hist *m_duration;
};

static const char *const result_labels[] = {
    [FORWARD_ALLOWED] = "allowed",
    [FORWARD_DENIED] = "denied",
    [FORWARD_FORBIDDEN] = "forbidden",
    [FORWARD_UNAVAILABLE] = "unavailable",
};

static void settings_take(struct forward_auth *f, const struct cfg_auth *a)
{
    free(f->check_url);
    free(f->principal_header);
    f->check_url = mem_strdup(a->check_url ? a->check_url : "");
    f->principal_header = mem_strdup(a->check_principal_header ? a->check_principal_header : "");
    f->cache_ms = a->check_cache_ms;
    f->timeout_ms = a->check_timeout_ms;
}

struct forward_auth *forward_auth_new(uv_loop_t *loop, const struct cfg_auth *a, struct upstream *up)
{
    struct forward_auth *f = mem_calloc(1, sizeof(*f));
    f->loop = loop;
    f->up = up;
    settings_take(f, a);
    f->cache = cred_cache_new("forward", (size_t)a->check_cache_entries);
    hashtab_init(&f->pending, 64);
    LIST_INIT(&f->checks);
    metrics_counter_family("batchd_auth_checks_total", "result", result_labels, FORWARD_UNAVAILABLE + 1,
                           "Forward auth checks (cache misses, one per credential in flight), by verdict.",
                           f->m_result);
    f->m_joined = metrics_counter("batchd_auth_check_joined_total", "",
                                  "Requests that waited for a forward auth check already in flight for the same credential.");
    f->m_waiters_full = metrics_counter("batchd_auth_check_waiters_full_total", "",
                                        "Requests answered unavailable because too many were waiting for checks.");
    f->m_in_flight = metrics_gauge("batchd_auth_checks_in_flight", "", "Forward auth checks waiting for the app.");
    f->m_waiting = metrics_gauge("batchd_auth_check_waiters", "", "Requests waiting for forward auth checks.");
    f->m_duration = metrics_histogram("batchd_auth_check_seconds", "",
                                      "Time from sending a forward auth check to its verdict.",
                                      metrics_latency_bounds, metrics_latency_n);
    return f;
}

void forward_auth_configure(struct forward_auth *f, const struct cfg_auth *a)
{
    bool other_app = strcmp(f->check_url, a->check_url ? a->check_url : "") != 0 ||
                     strcasecmp(f->principal_header, a->check_principal_header ? a->check_principal_header : "") != 0;
    /* A shorter check_cache_ms must bound what is cached already, too. */
    bool shorter = a->check_cache_ms < f->cache_ms;
    settings_take(f, a);
    if (other_app || shorter) {
        cred_cache_free(f->cache);
        f->cache = cred_cache_new("forward", (size_t)a->check_cache_entries);
    } else {
        cred_cache_set_max(f->cache, (size_t)a->check_cache_entries);
    }
    if (other_app) {
        /* Checks in flight asked the old app: their waiters get its
         * verdict, but a new request must not join them. */
        struct fwd_check *c;
        LIST_FOREACH(c, &f->checks, link)
            if (c->gen == f->gen)
                hashtab_remove(&f->pending, &c->node);
        f->gen++;
    }
}

/* --- verdicts -------------------------------------------------------------------- */

/* Runs every waiter of c's, in order, with the verdict; frees c first
 * (a callback may start a new check). */
static void check_finish(struct fwd_check *c, enum forward_result res, const char *principal, size_t len)
{
    struct forward_auth *f = c->f;
    struct fwd_waiters w;
    STAILQ_INIT(&w);
    STAILQ_CONCAT(&w, &c->waiters);
    free(c);
    struct fwd_waiter *x;
    while ((x = STAILQ_FIRST(&w)) != NULL) {
        STAILQ_REMOVE_HEAD(&w, link);
        (*f->m_waiting)--;
        forward_fn cb = x->cb;
        void *ctx = x->ctx;
        free(x);
        cb(ctx, res, principal, len);
    }
}

/* Logs once when checks start failing and once when they answer again. */
static void note_health(struct forward_auth *f, bool ok, const char *why, int status)
{
    if (ok && f->failing) {
        log_info("forward auth checks answer again", "check_url=%s failed=%llu", LOG_Q(f->check_url),
                 (unsigned long long)f->n_failed);
        f->failing = false;
    } else if (!ok) {
        if (!f->failing)
            log_warn("forward auth checks failing: requests get 503 auth_unavailable",
                     "check_url=%s reason=%s status=%d", LOG_Q(f->check_url), why, status);
        else
            log_debug("forward auth check failed", "reason=%s status=%d", why, status);
        if (!f->failing)
            f->n_failed = 0;
        f->failing = true;
        f->n_failed++;
    }
}

/* What the app's answer means. *why names an unavailable one. */
static enum forward_result verdict_of(const struct subrequest_answer *a, const char **why)
{
    *why = subrequest_result_name(a->result);
    if (a->result != SUBREQUEST_ANSWERED)
        return FORWARD_UNAVAILABLE;
    if (a->status == 401)
        return FORWARD_DENIED;
    if (a->status == 403)
        return FORWARD_FORBIDDEN;
    if (a->status < 200 || a->status > 299) {
        *why = "status";
        return FORWARD_UNAVAILABLE;
    }
    /* A 2xx names who it is, once, cleanly; an empty name is no one. The
     * rules are a JWT principal's (jwt.h). */
    if (a->value_state == SUBREQUEST_VALUE_ABSENT) {
        *why = "no_principal_header";
        return FORWARD_UNAVAILABLE;
    }
    if (a->value_state != SUBREQUEST_VALUE_OK || !jwt_principal_valid(a->value.p, a->value.len)) {
        *why = "bad_principal_header";
        return FORWARD_UNAVAILABLE;
    }
    return FORWARD_ALLOWED;
}

static void check_answered_cb(void *ctx, const struct subrequest_answer *a)
{
    struct fwd_check *c = ctx;
    struct forward_auth *f = c->f;
    c->sr = NULL;
    LIST_REMOVE(c, link);
    if (c->gen == f->gen)
        hashtab_remove(&f->pending, &c->node);
    (*f->m_in_flight)--;
    metrics_observe(f->m_duration, (double)(uv_hrtime() - c->start_ns) / 1e9);
    const char *why;
    enum forward_result res = verdict_of(a, &why);
    (*f->m_result[res])++;
    note_health(f, res != FORWARD_UNAVAILABLE, why, a->result == SUBREQUEST_ANSWERED ? a->status : 0);
    if (res != FORWARD_UNAVAILABLE && f->cache_ms > 0 && c->gen == f->gen) {
        uint64_t until = uv_now(f->loop) + (uint64_t)f->cache_ms;
        if (res == FORWARD_ALLOWED)
            cred_cache_put(f->cache, &c->key, a->value.p, a->value.len, until);
        else if (res == FORWARD_FORBIDDEN)
            cred_cache_put(f->cache, &c->key, FORBIDDEN_MARK, sizeof(FORBIDDEN_MARK) - 1, until);
        else
            cred_cache_put(f->cache, &c->key, NULL, 0, until);
    }
    if (res == FORWARD_ALLOWED)
        check_finish(c, res, a->value.p, a->value.len); /* a->value lives through the callback */
    else
        check_finish(c, res, NULL, 0);
}

/* --- checks ------------------------------------------------------------------------ */

/* A verdict from the cache: true when there was one (cb has run). */
static bool from_cache(struct forward_auth *f, const struct cred_key *k, forward_fn cb, void *ctx)
{
    if (f->cache_ms <= 0)
        return false;
    buf_reset(&f->scratch);
    enum cred_verdict v = cred_cache_get(f->cache, k, uv_now(f->loop), &f->scratch, NULL);
    if (v == CRED_MISS)
        return false;
    if (v == CRED_DENIED) {
        cb(ctx, FORWARD_DENIED, NULL, 0);
        return true;
    }
    if (f->scratch.len > 0 && f->scratch.data[0] == '\0') {
        cb(ctx, FORWARD_FORBIDDEN, NULL, 0);
        return true;
    }
    /* On the stack: the callback may check again, and scratch with it. */
    char principal[SUBREQUEST_VALUE_MAX];
    size_t n = f->scratch.len < sizeof(principal) ? f->scratch.len : sizeof(principal);
    memcpy(principal, f->scratch.data, n);
    cb(ctx, FORWARD_ALLOWED, principal, n);
    return true;
}

static void add_waiter(struct forward_auth *f, struct fwd_check *c, forward_fn cb, void *ctx)
{
    struct fwd_waiter *w = mem_alloc(sizeof(*w));
    w->cb = cb;
    w->ctx = ctx;
    STAILQ_INSERT_TAIL(&c->waiters, w, link);
    (*f->m_waiting)++;
}

/* Sends the check for credential k; NULL when it could not go out (*why). */
static struct fwd_check *check_start(struct forward_auth *f, const struct cred_key *k, str_t cookie,
                                     str_t authorization, enum forward_result *res, const char **why)
{
    struct subrequest_header h[2];
    unsigned n = 0;
    if (cookie.len)
        h[n++] = (struct subrequest_header){ "Cookie", cookie };
    if (authorization.len)
        h[n++] = (struct subrequest_header){ "Authorization", authorization };
    struct subrequest_opts o = {
        .path = f->check_url,
        .headers = h,
        .n_headers = n,
        .want = f->principal_header,
        .timeout_ms = (uint64_t)f->timeout_ms,
    };
    struct fwd_check *c = mem_calloc(1, sizeof(*c));
    c->key = *k;
    c->f = f;
    c->gen = f->gen;
    c->start_ns = uv_hrtime();
    STAILQ_INIT(&c->waiters);
    int rc = subrequest_start(f->up, &o, check_answered_cb, c, &c->sr);
    if (rc == 0) {
        hashtab_add(&f->pending, &c->node, (const char *)c->key.d, sizeof(c->key.d),
                    hashtab_hash((const char *)c->key.d, sizeof(c->key.d)));
        LIST_INSERT_HEAD(&f->checks, c, link);
        (*f->m_in_flight)++;
        return c;
    }
    free(c);
    /* A credential that cannot go out in a header as it is (control
     * bytes: llhttp let a tab through, say) is no credential. */
    *res = rc == -EINVAL ? FORWARD_DENIED : FORWARD_UNAVAILABLE;
    *why = rc == -EBUSY ? "pool_full" : rc == -EINVAL ? "bad_credential" : "refused";
    return NULL;
}

void forward_check(struct forward_auth *f, str_t cookie, str_t authorization, forward_fn cb, void *ctx)
{
    if (cookie.len == 0 && authorization.len == 0) {
        cb(ctx, FORWARD_DENIED, NULL, 0); /* nothing to ask the app about */
        return;
    }
    if (f->up == NULL || f->check_url[0] == '\0') {
        cb(ctx, FORWARD_UNAVAILABLE, NULL, 0); /* the config check makes this unreachable */
        return;
    }
    struct cred_key k;
    cred_key_of(&k, 'f', cookie.p, cookie.len, authorization.p, authorization.len);
    if (from_cache(f, &k, cb, ctx))
        return;
    if (*f->m_waiting >= MAX_WAITERS) {
        (*f->m_waiters_full)++;
        cb(ctx, FORWARD_UNAVAILABLE, NULL, 0);
        return;
    }
    struct hashtab_node *node = hashtab_find(&f->pending, (const char *)k.d, sizeof(k.d));
    if (node) {
        (*f->m_joined)++;
        add_waiter(f, hashtab_entry(node, struct fwd_check, node), cb, ctx);
        return;
    }
    enum forward_result res;
    const char *why;
    struct fwd_check *c = check_start(f, &k, cookie, authorization, &res, &why);
    if (c == NULL) {
        (*f->m_result[res])++;
        if (res == FORWARD_UNAVAILABLE)
            note_health(f, false, why, 0);
        cb(ctx, res, NULL, 0);
        return;
    }
    add_waiter(f, c, cb, ctx);
}

void forward_auth_free(struct forward_auth *f)
{
    if (f == NULL)
        return;
    /* Out of the table and the list first: a waiter's callback must find
     * nothing pending. */
    LIST_HEAD(, fwd_check) all = LIST_HEAD_INITIALIZER(all);
    struct fwd_check *c;
    while ((c = LIST_FIRST(&f->checks)) != NULL) {
        LIST_REMOVE(c, link);
        if (c->gen == f->gen)
            hashtab_remove(&f->pending, &c->node);
        subrequest_cancel(c->sr);
        (*f->m_in_flight)--;
        (*f->m_result[FORWARD_UNAVAILABLE])++;
        LIST_INSERT_HEAD(&all, c, link);
    }
    while ((c = LIST_FIRST(&all)) != NULL) {
        LIST_REMOVE(c, link);
        check_finish(c, FORWARD_UNAVAILABLE, NULL, 0);
    }
    hashtab_deinit(&f->pending);
    cred_cache_free(f->cache);
    buf_deinit(&f->scratch);
    free(f->check_url);
    free(f->principal_header);
    free(f);
}
