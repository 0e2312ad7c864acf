/*
 * etag: strong entity tags for batchd's own answers, and If-None-Match.
 *
 *   document bytes ──etag_hash──> 64-bit piece hash (memoized per cached document)
 *   "[" doc "," doc "]" ──etag_mix, piece by piece──> answer hash ──etag_format──> "<16 hex>[-gzN]"
 *
 * The tag is a hash of the answer's pieces in order, so identical answers
 * get identical tags wherever their documents came from (Redis, PostgreSQL,
 * the near cache), and a cached document's hash is computed once. The
 * same bytes split into other pieces would get another tag: harmless (a
 * 304 missed), since a strong tag only promises that equal tags mean equal
 * bytes. The gzip representation's tag is the identity one with "-gz" and
 * the deflate level appended: its bytes are a function of those.
 *
 * etag_hash is a fast non-cryptographic hash (128-bit multiply folded to
 * 64 bits, 16 bytes a step): accidental collisions are ~2^-64, but someone
 * who can write documents could craft two with one tag (the cost: a client
 * holding one keeps it when it becomes the other).
 */
#ifndef BATCHD_PROTO_ETAG_H
#define BATCHD_PROTO_ETAG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/buf.h"

/* The hash of n bytes (also of their length). */
uint64_t etag_hash(const void *p, size_t n);

/* An answer's hash, built from its pieces' hashes in order. */
#define ETAG_START UINT64_C(0x243f6a8885a308d3)
uint64_t etag_mix(uint64_t acc, uint64_t piece_hash);

/* Longest tag etag_format writes: quotes, 16 hex digits, "-gz9". */
#define ETAG_MAX 24
/* Writes the quoted tag (no NUL) into out and returns its length.
 * gzip_level 0: the identity representation; 1..9: gzip at that level. */
size_t etag_format(uint64_t hash, int gzip_level, char out[ETAG_MAX]);

enum etag_match {
    ETAG_NO_MATCH,
    ETAG_MATCH,         /* "*" or a tag equal to ours by the weak comparison */
    ETAG_INVALID,       /* not an If-None-Match value: ignored */
};
/* One If-None-Match field value ("*" or a comma-separated list of
 * [W/]"opaque" tags, RFC 9110 13.1.2) against our tag (quoted, as
 * etag_format wrote it). Weak comparison: W/ is ignored on both sides. */
enum etag_match etag_none_match(str_t value, str_t tag);

#endif
