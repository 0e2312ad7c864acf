/*
 * cred: finding a credential in a request's headers, with no I/O.
 *
 *   Authorization: Bearer <token>          cred_bearer
 *   Cookie: a=1; <name>=<value>; b=2       cred_cookie
 *
 * Both return slices of the header value; nothing is copied or decoded.
 */
#ifndef BATCHD_PROTO_CRED_H
#define BATCHD_PROTO_CRED_H

#include <stdbool.h>

#include "proto/buf.h"

/* The token of "Bearer <token>" (the scheme case-insensitive, RFC 6750's
 * token68 characters, optional spaces around it). False for any other
 * scheme, an empty token or a token with other bytes. */
bool cred_bearer(str_t authorization, str_t *token);

/* The value of the first cookie called `name` in a Cookie header
 * (RFC 6265 cookie-string; a value in double quotes loses them). False
 * when there is none. Pairs without '=' are skipped. */
bool cred_cookie(str_t cookie, str_t name, str_t *value);

#endif
