/*
 * metrics: a process-wide registry rendered in Prometheus text format.
 *
 * Modules register each series once at start-up and keep the returned
 * pointer; the hot path is then a plain increment with no lookup. A series
 * is a metric name plus a label set written as Prometheus text, for example
 * `reason="header_timeout"`. Series that share a name are rendered under one
 * HELP/TYPE block in registration order.
 *
 * With several workers the registries live in memory shared by the group
 * (metrics_group_*), and /metrics on any worker renders every worker's
 * series, each with a `worker="i"` label.
 */
#ifndef BATCHD_METRICS_H
#define BATCHD_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/buf.h"

struct metric_hist {
    const double *bounds;   /* upper bounds, ascending; +Inf is implicit */
    unsigned n_bounds;
    uint64_t *counts;       /* n_bounds + 1 buckets (not cumulative) */
    double sum;
    uint64_t count;
};

/* A counter; increment the returned value. Calling again with the same name
 * and labels returns the same pointer. */
uint64_t *metrics_counter(const char *name, const char *labels, const char *help);
/* One counter per label value: out[i] is name{key="labels[i]"}, for a
 * module's table of reasons or results. */
void metrics_counter_family(const char *name, const char *key, const char *const *labels, unsigned n,
                            const char *help, uint64_t **out);
/* A gauge the owner sets. */
int64_t *metrics_gauge(const char *name, const char *labels, const char *help);
/* A gauge computed at scrape time by fn(arg). */
void metrics_gauge_fn(const char *name, const char *labels, const char *help,
                      double (*fn)(void *arg), void *arg);
/* A histogram with the given bucket bounds (the array must outlive it). */
struct metric_hist *metrics_histogram(const char *name, const char *labels, const char *help,
                                      const double *bounds, unsigned n_bounds);
void metrics_observe(struct metric_hist *h, double v);

/* Latency buckets in seconds, 50 µs to 10 s, shared by the duration histograms. */
extern const double metrics_latency_bounds[];
extern const unsigned metrics_latency_n;

void metrics_render(struct buf *out);

/* Evaluates this process's computed gauges so that the other workers render
 * fresh values (they cannot call another process's functions): a worker
 * calls it every second. */
void metrics_refresh(void);

/* Master, before forking: maps the region shared by `n` workers. 0 or a
 * negative errno. */
int metrics_group_init(unsigned n) __attribute__((warn_unused_result));
/* Worker `worker`, first thing after fork: its series live in its part of
 * the shared region, continuing a previous worker's counters there. */
void metrics_group_join(unsigned worker);
/* Master: a worker runs in the slot now (restart: it replaces one that
 * exited, counted in batchd_worker_restarts_total), or none does. */
void metrics_group_worker_started(unsigned worker, int pid, bool restart);
void metrics_group_worker_exited(unsigned worker);
/* Frees the registry (at exit, so leak checkers see a clean heap). */
void metrics_free_all(void);

#endif
