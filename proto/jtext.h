/*
 * jtext: JSON as text, the two JSON jobs on batchd's hot path, with no
 * allocation. (Its prefix is jtext_, not json_: that namespace is
 * jansson's, which the daemon uses for request bodies.)
 *
 * jtext_append_string writes a quoted, escaped JSON string. jtext_valid checks
 * that bytes are one complete RFC 8259 JSON text, which is how a cached
 * value is trusted before it is sent verbatim. Parsing request bodies into
 * values is left to jansson (daemon side); this file never builds a tree.
 */
#ifndef BATCHD_PROTO_JTEXT_H
#define BATCHD_PROTO_JTEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/buf.h"

/* Nesting deeper than this is rejected by jtext_valid. */
#define JTEXT_MAX_DEPTH 256

/* Appends s as a JSON string literal with quotes. Control characters are
 * escaped; invalid UTF-8 bytes become U+FFFD, so the output is always valid. */
void jtext_append_string(struct buf *out, const char *s, size_t n);

/* True when s[0..n) is exactly one JSON value, optionally surrounded by
 * whitespace, with valid UTF-8 in its strings. */
bool jtext_valid(const char *s, size_t n);

/* jtext_valid with a memo: documents already found valid are recognised by
 * a seeded 64-bit hash of their bytes (about one instruction per byte
 * instead of six). Redis hands back the same documents over and over; a
 * wrong "valid" would need a 64-bit collision with a document seen before.
 * Invalid documents are never remembered. */
bool jtext_valid_cached(const char *s, size_t n);
/* Seeds the memo's hash (call once at start with a random value). */
void jtext_cache_seed(uint64_t seed);
/* The hash itself, exposed for tests. */
uint64_t jtext_hash(const char *s, size_t n, uint64_t seed);

/* Finds the member `name` of the top-level object s[0..n) (keys compared
 * after decoding their escapes; the first match wins) and points *val at
 * its value's text (a string with its quotes). Returns 1 found, 0 absent,
 * -1 when s is not an object or is malformed on the way. */
int jtext_object_field(const char *s, size_t n, const char *name, size_t name_len,
                       const char **val, size_t *val_len);

/* True when q[0..qn), a JSON string literal with its quotes, decodes to
 * exactly s[0..n). */
bool jtext_string_equals(const char *q, size_t qn, const char *s, size_t n);

/* True when the JSON value v[0..vn) (a string with its quotes, or a
 * number's text) names s[0..n): a string that decodes to it, or a number
 * whose text is it (owner_id 42 names principal "42"). */
bool jtext_value_names(const char *v, size_t vn, const char *s, size_t n);

/* True when s[0..n) is valid UTF-8 (no overlongs, no surrogates). */
bool jtext_utf8_valid(const char *s, size_t n);

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is invalid. */
size_t jtext_utf8_seq_len(const unsigned char *s, size_t n);

#endif
