/*
 * cred_cache: verdicts on credentials, remembered for a while.
 *
 *   credential bytes ──SHA-256──> key ──> { principal, or "denied" ; expires }
 *
 * A verified JWT is remembered until it expires (at most a few minutes), a
 * forward-auth answer for check_cache_ms. Only the digest is kept, never
 * the credential. At most max_entries; a full cache drops its oldest entry
 * (counted in batchd_auth_cache_evictions_total). Time is the caller's
 * (loop) milliseconds.
 */
#ifndef BATCHD_CRED_CACHE_H
#define BATCHD_CRED_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "proto/buf.h"

struct cred_key {
    uint8_t d[32];
};

/* The key of a credential: a kind byte ('j' JWT, 'f' forward auth) and up
 * to two parts (Cookie and Authorization for forward auth). */
void cred_key_of(struct cred_key *k, char kind, const char *a, size_t an, const char *b, size_t bn);
/* Frees the digest state cred_key_of keeps (at exit). */
void cred_key_cleanup(void);

struct cred_cache;

/* `name` labels the cache's metrics (batchd_auth_cache_*{cache="name"}). */
struct cred_cache *cred_cache_new(const char *name, size_t max_entries);
void cred_cache_free(struct cred_cache *c);
void cred_cache_set_max(struct cred_cache *c, size_t max_entries);

enum cred_verdict { CRED_MISS, CRED_ALLOWED, CRED_DENIED };

/* On CRED_ALLOWED the principal is appended to `principal`, and the
 * verdict's expiry is stored in *expires_ms when that is not NULL. */
enum cred_verdict cred_cache_get(struct cred_cache *c, const struct cred_key *k, uint64_t now_ms,
                                 struct buf *principal, uint64_t *expires_ms);
/* principal NULL: remember a denial. An entry for k is replaced. */
void cred_cache_put(struct cred_cache *c, const struct cred_key *k, const char *principal, size_t n,
                    uint64_t expires_ms);
size_t cred_cache_size(const struct cred_cache *c);

#endif
