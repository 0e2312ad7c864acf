/*
 * backoff: reconnect delays shared by the Redis and PostgreSQL pools.
 *
 * 100 ms doubling per failed attempt up to 5 s, with full jitter (a random
 * delay from 0 to that cap), so a fleet of sidecars that lost the same
 * server does not come back in step.
 */
#ifndef BATCHD_BACKOFF_H
#define BATCHD_BACKOFF_H

#include <stdint.h>
#include <stdlib.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

/* The delay before attempt number *attempt (0 first), which it advances. */
static inline uint64_t backoff_next_ms(unsigned *attempt)
{
    unsigned shift = *attempt < 6 ? *attempt : 6;
    uint64_t cap = (uint64_t)BACKOFF_MIN_MS << shift;
    if (cap > BACKOFF_MAX_MS)
        cap = BACKOFF_MAX_MS;
    (*attempt)++;
    return (uint64_t)random() % (cap + 1);
}

#endif
