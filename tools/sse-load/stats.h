/*
 * stats: a log-linear latency histogram (HdrHistogram's layout, simplified).
 *
 * Values below 128 are counted exactly; above that every power of two is
 * split into 64 buckets, so a reported percentile is within 1.6% of the
 * true value. Fixed size (about 30 KiB), no allocation after init, O(1) add.
 */
#ifndef SSE_LOAD_STATS_H
#define SSE_LOAD_STATS_H

#include <stdint.h>

#define STATS_SUB_BITS 7
#define STATS_HALF (1u << (STATS_SUB_BITS - 1))
#define STATS_BUCKETS ((64 - STATS_SUB_BITS + 1) * STATS_HALF + STATS_HALF)

struct stats_hist {
    uint64_t count;
    uint64_t min;
    uint64_t max;
    double sum;
    uint64_t buckets[STATS_BUCKETS];
};

void stats_hist_init(struct stats_hist *h);

/* Counts one value (any unit; sse-load uses nanoseconds). */
void stats_hist_add(struct stats_hist *h, uint64_t v);

/* The value at quantile q (0..1): the midpoint of the bucket holding the
 * ceil(q * count)-th smallest value, clamped to [min, max]. 0 when empty. */
uint64_t stats_hist_quantile(const struct stats_hist *h, double q);

/* Arithmetic mean, 0 when empty. */
double stats_hist_mean(const struct stats_hist *h);

#endif
