/*
 * jwt: bearer tokens verified with Debian's libjwt (no crypto of our own).
 *
 *   token ──> header (alg, kid) ──> the key: by kid, else every key of the
 *                                   header's algorithm family, in config order
 *         ──> alg must match the key's type (HS256 only with the secret file;
 *             RS256 only with RSA keys; ES256 only with EC P-256 keys;
 *             "none" and everything else refused)
 *         ──> libjwt verifies the signature ──> exp, nbf (with leeway), iss,
 *             aud ──> the principal claim (a string, or an integer as text)
 *
 * libjwt 1.10 takes the algorithm from the token's own header, so the
 * match above is what stops an HS256 token "signed" with an RSA public
 * key's PEM text as the HMAC secret.
 */
#ifndef BATCHD_JWT_H
#define BATCHD_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/config.h"
#include "proto/buf.h"

/* Why a token was refused, with the reason label of
 * batchd_auth_rejected_total. */
#define JWT_RESULTS(X)                       \
    X(OK, "ok")                              \
    X(MALFORMED, "malformed")                \
    X(UNKNOWN_KEY, "unknown_key")            \
    X(BAD_ALGORITHM, "bad_algorithm")        \
    X(BAD_SIGNATURE, "bad_signature")        \
    X(EXPIRED, "expired")                    \
    X(NOT_YET_VALID, "not_yet_valid")        \
    X(BAD_ISSUER, "bad_issuer")              \
    X(BAD_AUDIENCE, "bad_audience")          \
    X(NO_PRINCIPAL, "no_principal")

enum jwt_result {
#define X(name, label) JWT_##name,
    JWT_RESULTS(X)
#undef X
    JWT__COUNT
};

extern const char *const jwt_result_labels[JWT__COUNT];

/* A principal is 1..JWT_MAX_PRINCIPAL bytes of UTF-8 with no control
 * characters (it goes into headers, Redis keys and SQL parameters). */
#define JWT_MAX_PRINCIPAL 256

/* The rule above, for every way a principal arrives (a claim, forward
 * auth's answer header). */
bool jwt_principal_valid(const char *p, size_t n);

struct jwt_keys;

/* Reads jwt_secret_file and jwt_public_keys of `a`. A PEM file's key id
 * ("kid") is its file name without the directory and a ".pem" suffix.
 * Returns NULL when none is configured or on error; errors get one line per
 * problem naming the file (unreadable, empty secret, not a public key,
 * unsupported key type). */
struct jwt_keys *jwt_keys_load(const struct cfg_auth *a, struct buf *errors);
void jwt_keys_free(struct jwt_keys *k);
/* Keys loaded (the secret counts as one). */
unsigned jwt_keys_count(const struct jwt_keys *k);

/* Verifies token[0..len) at time now_s (Unix seconds). On JWT_OK the
 * principal is appended to `principal` and *expires_s is the token's exp
 * (INT64_MAX when it has none). */
enum jwt_result jwt_verify(const struct jwt_keys *k, const struct cfg_auth *a, const char *token,
                           size_t len, int64_t now_s, struct buf *principal, int64_t *expires_s);

#endif
