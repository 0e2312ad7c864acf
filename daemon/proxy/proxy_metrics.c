/*
 * proxy_metrics: the upstream's series in /metrics, and the names of a
 * proxied request's states for the logs. Split from proxy.c, which keeps
 * the request's state machine.
 */
#include <stdio.h>

#include "daemon/metrics.h"
#include "daemon/proxy/proxy_int.h"

#define X(name, label, status, code) [PX_ERR_##name] = label,
static const char *const err_labels[PX_ERR__COUNT] = { PX_ERRORS(X) };
#undef X

#define X(name, text) text,
static const char *const state_names[] = { PX_STATES(X) };
static const char *const body_names[] = { PX_BODY_STATES(X) };
static const char *const answer_names[] = { PX_ANSWER_STATES(X) };
static const char *const attempt_names[] = { PX_ATTEMPTS(X) };
#undef X

const char *proxy_state_name(enum px_state s) { return state_names[s]; }
const char *proxy_body_name(enum px_body b) { return body_names[b]; }
const char *proxy_answer_name(enum px_answer a) { return answer_names[a]; }
const char *proxy_attempt_name(enum px_attempt a) { return attempt_names[a]; }

/* --- metrics ------------------------------------------------------------------ */

static double gauge_idle(void *arg)
{
    return ((struct upstream *)arg)->n_idle;
}

static double gauge_busy(void *arg)
{
    struct upstream *u = arg;
    return u->n_conns - u->n_idle - u->n_outside;
}

static double gauge_outside(void *arg)
{
    return ((struct upstream *)arg)->n_outside;
}

static double gauge_waiting(void *arg)
{
    return ((struct upstream *)arg)->n_waiting;
}

void proxy_metrics_init(struct upstream *u)
{
    char l[32];
    for (int i = 0; i < 5; i++) {
        snprintf(l, sizeof(l), "status=\"%dxx\"", i + 1);
        u->m_status[i] = metrics_counter("batchd_upstream_responses_total", l,
                                         "Responses from the app server, by status class.");
    }
    const char *h = "Proxied requests that failed: refused, reset, timeout, bad_response.";
    for (int i = 0; i < PX_ERR__COUNT; i++) {
        snprintf(l, sizeof(l), "kind=\"%s\"", err_labels[i]);
        u->m_err[i] = metrics_counter("batchd_upstream_errors_total", l, h);
    }
    u->m_err_busy = metrics_counter("batchd_upstream_errors_total", "kind=\"pool_full\"", h);
    u->m_err_body = metrics_counter("batchd_upstream_errors_total", "kind=\"body_too_large\"", h);
    const char *ph = "Times one side of a proxied request stopped being read because the other side's queue passed buffer_bytes.";
    u->m_pause_req = metrics_counter("batchd_upstream_pauses_total", "side=\"client_body\"", ph);
    /* Counted by the app connection's stream as it pauses. */
    u->kind.m_pauses[__builtin_ctz(UC_PAUSE_CLIENT)] =
        metrics_counter("batchd_upstream_pauses_total", "side=\"app_response\"", ph);
    u->m_connects = metrics_counter("batchd_upstream_connects_total", "", "Connections opened to the app server.");
    u->m_retries = metrics_counter("batchd_upstream_retries_total", "",
                                   "Requests retried on a fresh connection after a reused one failed.");
    u->m_inval = metrics_counter("batchd_invalidations_total", "",
                                 "Cache entries deleted because a write through the proxy succeeded.");
    u->m_inval_err = metrics_counter("batchd_invalidation_errors_total", "",
                                     "Invalidations that could not reach Redis (the entry expires by TTL).");
    const char *dh = "Request header fields not forwarded to the app: names with '_' "
                     "(underscores_in_headers = no), X-Forwarded-* and Forwarded from peers outside trusted_proxies.";
    u->m_drop_underscore = metrics_counter("batchd_upstream_headers_dropped_total", "reason=\"underscore\"", dh);
    u->m_drop_forwarded = metrics_counter("batchd_upstream_headers_dropped_total", "reason=\"untrusted_forwarded\"", dh);
    u->m_buffered = metrics_counter("batchd_upstream_buffered_bodies_total", "",
                                    "Request bodies read whole (request_buffer_bytes) before a pool connection was taken.");
    u->m_latency = metrics_histogram("batchd_upstream_response_seconds", "",
                                     "Time from receiving a request to the app server's response head.",
                                     metrics_latency_bounds, metrics_latency_n);
    metrics_gauge_fn("batchd_upstream_connections", "state=\"idle\"", "Connections to the app server.",
                     gauge_idle, u);
    metrics_gauge_fn("batchd_upstream_connections", "state=\"busy\"", "Connections to the app server.",
                     gauge_busy, u);
    metrics_gauge_fn("batchd_upstream_connections", "state=\"upgrade\"", "Connections to the app server.",
                     gauge_outside, u);
    metrics_gauge_fn("batchd_upstream_waiting", "", "Requests waiting for a free pool connection.",
                     gauge_waiting, u);
}
