/*
 * auth: the admin bearer token that guards PURGE and event publishing.
 */
#ifndef BATCHD_AUTH_H
#define BATCHD_AUTH_H

#include <stdbool.h>

struct req;

/* Checks "Authorization: Bearer <token>" against `token` in constant time.
 * Returns 0 when it matches; otherwise answers the request (401, or 403
 * when no admin_token is configured) and returns -1. */
int auth_require(struct req *r, const char *token);
/* The same check without answering: true when r carries the admin token. */
bool auth_admin_ok(const struct req *r, const char *token);

#endif
