/*
 * url: percent-decoding, query strings and path templates.
 *
 * A path template is a path whose segments are literals or `{name}`
 * placeholders, e.g. "/v1/sessions/{id}/events". A placeholder matches one
 * whole, non-empty segment. Matching works on the raw path; captured values
 * are raw slices of it, to be percent-decoded by the caller (so an encoded
 * "%2F" stays inside its segment).
 */
#ifndef BATCHD_PROTO_URL_H
#define BATCHD_PROTO_URL_H

#include <stdbool.h>

#include "proto/buf.h"

#define URL_MAX_PARAMS 4

struct url_params {
    unsigned n;
    str_t name[URL_MAX_PARAMS];
    str_t value[URL_MAX_PARAMS]; /* raw slices of the matched path */
};

/* Appends the percent-decoded `src` to `out`. With plus_is_space (query
 * strings), '+' decodes to a space. Returns 0, or -EINVAL on a bad escape
 * (out then holds a partial result). */
int url_decode(str_t src, bool plus_is_space, struct buf *out);

/* The same into out[0..cap): *len gets the bytes decoded. Returns 0,
 * -EINVAL on a bad escape or -E2BIG when the result does not fit (out
 * then holds a partial result). Allocates nothing. */
int url_decode_to(str_t src, bool plus_is_space, char *out, size_t cap, size_t *len);

/* The value of one hex digit, or -1. */
int url_hex_digit(char c);

/* Takes the next "key=value" pair off the front of *rest (raw, undecoded).
 * A pair with no '=' has an empty value. Empty pairs ("a=1&&b=2") are
 * skipped. Returns false when nothing is left. */
bool url_query_next(str_t *rest, str_t *key, str_t *value);

/* Checks a template: starts with '/', no empty segments, placeholders are
 * whole segments named [a-z_]+, at most URL_MAX_PARAMS of them. On error
 * returns false and points *why at a short reason. */
bool url_template_valid(const char *tpl, const char **why);

/* Matches `path` against `tpl`. Returns the number of literal segments
 * (higher is more specific), or -1 when it does not match. */
int url_template_match(const char *tpl, str_t path, struct url_params *params);

/* The value captured for placeholder `name`, or false. */
bool url_params_get(const struct url_params *params, const char *name, str_t *value);

/* Appends `tpl` with every "{name}" replaced by `value` to `out`. */
void url_template_expand(const char *tpl, const char *name, str_t value, struct buf *out);

#endif
