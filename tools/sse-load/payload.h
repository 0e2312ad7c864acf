/*
 * payload: the event data sse-load publishes and expects back, one line:
 *
 *   {"seq":17,"t":1732300000123456789,"pad":"xxxx..."}
 *
 * seq counts per channel from 0; t is CLOCK_REALTIME in ns when the POST
 * was written; pad fills the data up to the requested size. The fields that
 * matter come first, so a receiver can read them from a line's first bytes
 * without keeping the whole line.
 */
#ifndef SSE_LOAD_PAYLOAD_H
#define SSE_LOAD_PAYLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest prefix payload_parse needs to see. */
#define PAYLOAD_HEAD_MAX 56

/* Smallest payload that can carry (seq, t): the size with an empty pad. */
size_t payload_min_size(uint64_t seq, uint64_t t);

/* Writes a payload of exactly max(size, payload_min_size(seq, t)) bytes to
 * buf, which must hold that many; returns the length. No NUL is written. */
size_t payload_format(char *buf, size_t size, uint64_t seq, uint64_t t);

/* Reads seq and t from the first n bytes of a data line (n may be a
 * prefix of the line). False when the line is not a payload. */
bool payload_parse(const char *p, size_t n, uint64_t *seq, uint64_t *t);

#endif
