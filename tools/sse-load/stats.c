/*
 * stats: see stats.h.
 *
 * Bucket index of v: v itself below 2^SUB_BITS; otherwise with
 * shift = msb(v) - SUB_BITS + 1, index = shift * HALF + (v >> shift), where
 * (v >> shift) lies in [HALF, 2 * HALF). Indexes are contiguous: the first
 * shifted bucket (shift 1, v = 128) is index 128.
 */
#include "stats.h"

#include <string.h>

static unsigned bucket_of(uint64_t v)
{
    unsigned shift;

    if (v < (1u << STATS_SUB_BITS))
        return (unsigned)v;
    shift = (unsigned)(63 - __builtin_clzll(v)) - STATS_SUB_BITS + 1;
    return shift * STATS_HALF + (unsigned)(v >> shift);
}

/* Midpoint of the values that fall into bucket i. */
static uint64_t bucket_mid(unsigned i)
{
    unsigned shift;
    uint64_t m;

    if (i < (1u << STATS_SUB_BITS))
        return i;
    shift = i / STATS_HALF - 1;
    m = i - shift * STATS_HALF;
    return (m << shift) + ((1ull << shift) >> 1);
}

void stats_hist_init(struct stats_hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

void stats_hist_add(struct stats_hist *h, uint64_t v)
{
    h->buckets[bucket_of(v)]++;
    h->count++;
    h->sum += (double)v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

uint64_t stats_hist_quantile(const struct stats_hist *h, double q)
{
    uint64_t rank, seen = 0, v;
    unsigned i;

    if (h->count == 0)
        return 0;
    if (q <= 0)
        return h->min;
    if (q >= 1)
        return h->max;
    rank = (uint64_t)(q * (double)h->count);
    if ((double)rank < q * (double)h->count)
        rank++;
    if (rank == 0)
        rank = 1;
    for (i = 0; i < STATS_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank)
            break;
    }
    v = bucket_mid(i);
    if (v < h->min)
        v = h->min;
    if (v > h->max)
        v = h->max;
    return v;
}

double stats_hist_mean(const struct stats_hist *h)
{
    return h->count ? h->sum / (double)h->count : 0;
}
