/*
 * accept: Accept-Encoding (RFC 9110 12.5.3), with no I/O: may the answer
 * be gzip-coded?
 *
 *   Accept-Encoding: br;q=1.0, gzip;q=0.8, *;q=0.1     accept_feed, once a field line
 *                    └ codings, case-insensitive, each with an optional q (0..1, 3 decimals)
 *
 * gzip (or x-gzip) named with q > 0 says yes, named with q = 0 says no
 * whatever "*" says; not named, "*" decides; neither: no. Identity listed
 * with a higher q than gzip's keeps the answer uncoded. An element that
 * does not parse is skipped (it can neither allow nor forbid anything).
 */
#ifndef BATCHD_PROTO_ACCEPT_H
#define BATCHD_PROTO_ACCEPT_H

#include <stdbool.h>

#include "proto/buf.h"

/* q-values in thousandths; -1: not named. */
struct accept_enc {
    int gzip, star, identity;
};

#define ACCEPT_ENC_INIT { -1, -1, -1 }

/* Reads one Accept-Encoding field value (call once per field line; a
 * coding named twice keeps the highest q). */
void accept_feed(struct accept_enc *a, str_t value);
/* What the values fed say about gzip. */
bool accept_gzip(const struct accept_enc *a);

#endif
