/*
 * jwt: bearer tokens checked with libjwt, which does all the cryptography;
 * this file decides which key and which algorithm a token may use. See jwt.h.
 *
 *   "header.payload.signature"
 *      │  shape: <= max_token_bytes, three base64url segments
 *      ├─ header  (decoded here, strictly) ──> alg, kid, typ, crit
 *      ├─ payload (decoded here, strictly) ──> the claims
 *      ├─ candidate keys: HS256 ──> the secret file
 *      │                  RS256 / ES256 ──> the PEM key named by kid, else
 *      │                                    every key of that type in order
 *      ├─ libjwt jwt_decode(token, that key) ──> jwt_get_alg must be the
 *      │                                         alg the key was chosen for
 *      └─ claims: exp, nbf (leeway), iss, aud ──> the principal
 *
 * libjwt 1.10 trusts the header's alg and would happily use an RSA public
 * key's PEM text as an HMAC secret, so a key is only ever handed to it with
 * the one algorithm its type allows. The header and payload are decoded
 * here first, too: so that a token that is not a JWT at all is "malformed"
 * whichever key is tried, and because libjwt 1.10 writes one byte past a
 * malloc(0) on an empty segment, which the shape check rules out.
 *
 * Keys are classified once, at load, with libcrypto (RSA; EC on P-256) and
 * kept as the PEM text jwt_decode wants. Nothing here logs a token.
 */
#include "daemon/auth/jwt.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <jwt.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "proto/b64url.h"
#include "proto/jtext.h"
#include "proto/mem.h"

const char *const jwt_result_labels[JWT__COUNT] = {
#define X(name, label) [JWT_##name] = label,
    JWT_RESULTS(X)
#undef X
};

/* A key file larger than this is a mistake (a PEM public key is < 2 KB). */
#define KEY_FILE_MAX (64 * 1024)

enum key_type { KEY_SECRET, KEY_RSA, KEY_EC_P256 };

struct jwt_key {
    enum key_type type;
    char *kid;              /* NULL for the secret */
    const char *path;       /* for duplicate kid errors, only while loading */
    unsigned char *data;    /* the secret's bytes, or the PEM text */
    size_t len;
};

struct jwt_keys {
    struct jwt_key *v;
    unsigned n;
};

/* --- loading ---------------------------------------------------------------- */

/* Reads all of path into a new buffer (*out, *len; free it with
 * cleanse_free). On error appends a line naming the file. */
static int read_key_file(const char *path, unsigned char **out, size_t *len, struct buf *errors)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        buf_appendf(errors, "%s: cannot open: %s\n", path, strerror(err));
        return -err;
    }
    /* Read into one buffer of the limit: growing by realloc would leave
     * copies of a secret behind in freed memory. */
    unsigned char *data = mem_alloc(KEY_FILE_MAX + 1);
    size_t n = 0;
    int rc = 0;
    while (n <= KEY_FILE_MAX) {
        ssize_t got = read(fd, data + n, KEY_FILE_MAX + 1 - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            rc = -errno;
            buf_appendf(errors, "%s: cannot read: %s\n", path, strerror(-rc));
            break;
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    close(fd);
    if (rc == 0 && n > KEY_FILE_MAX) {
        rc = -EFBIG;
        buf_appendf(errors, "%s: larger than %d KB, not a key\n", path, KEY_FILE_MAX / 1024);
    }
    if (rc == 0) {
        *out = mem_alloc(n + 1);
        memcpy(*out, data, n);
        (*out)[n] = '\0';
        *len = n;
    }
    OPENSSL_cleanse(data, n);
    free(data);
    return rc;
}

static void cleanse_free(unsigned char *p, size_t n)
{
    if (p)
        OPENSSL_cleanse(p, n);
    free(p);
}

static int load_secret(struct jwt_key *key, const char *path, struct buf *errors)
{
    unsigned char *data;
    size_t len, n;
    if (read_key_file(path, &data, &len, errors) != 0)
        return -1;
    /* One trailing newline is the editor's, not the secret's. */
    n = len;
    if (n > 0 && data[n - 1] == '\n')
        n--;
    if (n > 0 && data[n - 1] == '\r')
        n--;
    if (n == 0) {
        buf_appendf(errors, "%s: empty HS256 secret\n", path);
        cleanse_free(data, len);
        return -1;
    }
    *key = (struct jwt_key){ .type = KEY_SECRET, .path = path, .data = data, .len = n };
    return 0;
}

/* Sets *type from the key's kind, or appends why it cannot be used. */
static int classify_pem(const char *path, const unsigned char *pem, size_t len,
                        enum key_type *type, struct buf *errors)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    char curve[64] = "";
    int rc = -1;
    if (pkey == NULL) {
        if (memmem(pem, len, "PRIVATE KEY-----", 16) != NULL)
            buf_appendf(errors, "%s: a private key, not a PEM public key "
                                "(give the public half: openssl pkey -pubout)\n", path);
        else
            buf_appendf(errors, "%s: not a PEM public key (-----BEGIN PUBLIC KEY-----)\n", path);
        goto out;
    }
    switch (EVP_PKEY_get_base_id(pkey)) {
    case EVP_PKEY_RSA:
        *type = KEY_RSA;
        rc = 0;
        break;
    case EVP_PKEY_EC:
        if (EVP_PKEY_get_group_name(pkey, curve, sizeof(curve), NULL) != 1)
            buf_appendf(errors, "%s: EC key without a named curve (ES256 needs P-256)\n", path);
        else if (strcmp(curve, SN_X9_62_prime256v1) != 0)
            buf_appendf(errors, "%s: unsupported key type EC %s (ES256 needs P-256)\n", path,
                        curve);
        else {
            *type = KEY_EC_P256;
            rc = 0;
        }
        break;
    default: {
        const char *name = OBJ_nid2sn(EVP_PKEY_get_base_id(pkey));
        buf_appendf(errors, "%s: unsupported key type %s (RSA or EC P-256)\n", path,
                    name ? name : "unknown");
        break;
    }
    }
out:
    EVP_PKEY_free(pkey);
    BIO_free(bio);
    ERR_clear_error(); /* leave nothing queued for the next libcrypto user */
    return rc;
}

/* "/etc/batchd/jwt-a.pem" ──> "jwt-a" */
static char *kid_of(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(base);
    if (n >= 4 && strcmp(base + n - 4, ".pem") == 0)
        n -= 4;
    return mem_strndup(base, n);
}

static const struct jwt_key *find_kid(const struct jwt_keys *k, const char *kid)
{
    for (unsigned i = 0; i < k->n; i++)
        if (k->v[i].kid && strcmp(k->v[i].kid, kid) == 0)
            return &k->v[i];
    return NULL;
}

static int load_pem(struct jwt_keys *k, const char *path, struct buf *errors)
{
    struct jwt_key *key = &k->v[k->n];
    char *kid = kid_of(path);
    const struct jwt_key *dup = find_kid(k, kid);
    int rc = -1;
    if (*kid == '\0') {
        buf_appendf(errors, "%s: no key id: the file name (without .pem) is the kid\n", path);
    } else if (dup) {
        buf_appendf(errors, "%s: key id \"%s\" is also %s's\n", path, kid, dup->path);
    } else if (read_key_file(path, &key->data, &key->len, errors) == 0) {
        rc = classify_pem(path, key->data, key->len, &key->type, errors);
        if (rc != 0)
            cleanse_free(key->data, key->len);
    }
    if (rc != 0) {
        free(kid);
        memset(key, 0, sizeof(*key));
        return rc;
    }
    key->kid = kid;
    key->path = path;
    k->n++;
    return 0;
}

struct jwt_keys *jwt_keys_load(const struct cfg_auth *a, struct buf *errors)
{
    bool secret = a->jwt_secret_file && a->jwt_secret_file[0];
    unsigned n = (secret ? 1 : 0) + a->jwt_public_keys.n;
    if (n == 0)
        return NULL;
    struct jwt_keys *k = mem_calloc(1, sizeof(*k));
    k->v = mem_calloc(n, sizeof(*k->v));
    bool failed = false;
    if (secret) {
        if (load_secret(&k->v[0], a->jwt_secret_file, errors) == 0)
            k->n++;
        else
            failed = true;
    }
    for (unsigned i = 0; i < a->jwt_public_keys.n; i++)
        if (load_pem(k, a->jwt_public_keys.items[i], errors) != 0)
            failed = true;
    if (failed) {
        jwt_keys_free(k);
        return NULL;
    }
    return k;
}

void jwt_keys_free(struct jwt_keys *k)
{
    if (k == NULL)
        return;
    for (unsigned i = 0; i < k->n; i++) {
        cleanse_free(k->v[i].data, k->v[i].len);
        free(k->v[i].kid);
    }
    free(k->v);
    free(k);
}

unsigned jwt_keys_count(const struct jwt_keys *k)
{
    return k ? k->n : 0;
}

/* --- the token's shape ------------------------------------------------------- */

/* What the header and payload say, before any key is tried. */
struct token {
    json_t *header, *claims;
    enum key_type key_type;     /* the only type alg may be verified with */
    jwt_alg_t alg;
    const char *kid;            /* in header; NULL when absent */
    char *text;                 /* NUL-terminated copy, for jwt_decode */
};

/* A segment's JSON object, or NULL. Duplicate names are refused, so there
 * is no question of which "alg" libjwt's parser would pick. */
static json_t *segment_object(const char *s, size_t n)
{
    unsigned char *raw = mem_alloc(n * 3 / 4 + 1);
    ssize_t len = b64url_decode(s, n, raw);
    json_t *j = len > 0 ? json_loadb((const char *)raw, (size_t)len, JSON_REJECT_DUPLICATES, NULL)
                        : NULL;
    free(raw);
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* Only these three; "none", HS384, RS512, "hs256" ... are refused. */
static const struct {
    const char *name;
    jwt_alg_t alg;
    enum key_type type;
} algs[] = {
    { "HS256", JWT_ALG_HS256, KEY_SECRET },
    { "RS256", JWT_ALG_RS256, KEY_RSA },
    { "ES256", JWT_ALG_ES256, KEY_EC_P256 },
};

static int alg_of(const char *name, jwt_alg_t *alg, enum key_type *type)
{
    for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
        if (strcmp(name, algs[i].name) == 0) {
            *alg = algs[i].alg;
            *type = algs[i].type;
            return 0;
        }
    }
    return -1;
}

static enum jwt_result read_header(struct token *t)
{
    json_t *alg = json_object_get(t->header, "alg");
    json_t *kid = json_object_get(t->header, "kid");
    json_t *typ = json_object_get(t->header, "typ");
    if (!json_is_string(alg) || (kid && !json_is_string(kid)))
        return JWT_MALFORMED;
    /* crit names extensions the token needs understood; we know none. */
    if (json_object_get(t->header, "crit"))
        return JWT_MALFORMED;
    /* libjwt 1.10 refuses any typ but "JWT" (as a bad signature). */
    if (typ && (!json_is_string(typ) || strcasecmp(json_string_value(typ), "JWT") != 0))
        return JWT_MALFORMED;
    if (alg_of(json_string_value(alg), &t->alg, &t->key_type) != 0)
        return JWT_BAD_ALGORITHM;
    t->kid = kid ? json_string_value(kid) : NULL;
    return JWT_OK;
}

static enum jwt_result token_parse(struct token *t, const char *s, size_t len, int64_t max)
{
    if (len == 0 || (max > 0 && len > (uint64_t)max))
        return JWT_MALFORMED;
    const char *dot1 = memchr(s, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - s)) : NULL;
    if (dot2 == NULL)
        return JWT_MALFORMED;
    size_t hn = (size_t)(dot1 - s), pn = (size_t)(dot2 - dot1 - 1);
    size_t sn = len - (size_t)(dot2 + 1 - s);
    /* Base64url has no '.', so a third dot fails here too. */
    if (hn == 0 || pn == 0 || !b64url_valid(s, hn) || !b64url_valid(dot1 + 1, pn) ||
        !b64url_valid(dot2 + 1, sn))
        return JWT_MALFORMED;
    t->header = segment_object(s, hn);
    if (t->header == NULL)
        return JWT_MALFORMED;
    enum jwt_result r = read_header(t);
    if (r != JWT_OK)
        return r;
    t->claims = segment_object(dot1 + 1, pn);
    if (t->claims == NULL)
        return JWT_MALFORMED;
    /* libjwt 1.10 would write a byte past an empty RS/ES signature's buffer. */
    if (sn == 0)
        return JWT_BAD_SIGNATURE;
    t->text = mem_strndup(s, len);
    return JWT_OK;
}

static void token_clear(struct token *t)
{
    json_decref(t->header);
    json_decref(t->claims);
    free(t->text);
}

/* --- the signature ------------------------------------------------------------ */

static bool signed_by(const struct token *t, const struct jwt_key *key)
{
    jwt_t *jwt = NULL;
    bool ok = jwt_decode(&jwt, t->text, key->data, (int)key->len) == 0 &&
              jwt_get_alg(jwt) == t->alg;
    jwt_free(jwt);
    ERR_clear_error();
    return ok;
}

/* The kid picks among the PEM keys. The secret has no kid, and as the only
 * HS256 key it is used whatever an HS256 token's kid says (some issuers
 * name their HMAC keys): no kid can make a PEM key an HMAC secret. */
static enum jwt_result verify_signature(const struct jwt_keys *k, const struct token *t)
{
    if (t->kid && t->key_type != KEY_SECRET) {
        const struct jwt_key *key = find_kid(k, t->kid);
        if (key == NULL)
            return JWT_UNKNOWN_KEY;
        if (key->type != t->key_type)
            return JWT_BAD_ALGORITHM;
        return signed_by(t, key) ? JWT_OK : JWT_BAD_SIGNATURE;
    }
    bool tried = false;
    for (unsigned i = 0; i < k->n; i++) {
        if (k->v[i].type != t->key_type)
            continue;
        tried = true;
        if (signed_by(t, &k->v[i]))
            return JWT_OK;
    }
    return tried ? JWT_BAD_SIGNATURE : JWT_BAD_ALGORITHM;
}

/* --- claims ------------------------------------------------------------------- */

static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

/* A NumericDate (RFC 7519): seconds, maybe fractional, rounded up (now is
 * whole seconds, so "now >= 10.5" is "now >= 11"). -1 if not a number. */
static int numeric_date(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (!json_is_real(v))
        return -1;
    double d = ceil(json_real_value(v));
    if (d >= 9.2e18)
        *out = INT64_MAX;
    else if (d <= -9.2e18)
        *out = INT64_MIN;
    else
        *out = (int64_t)d;
    return 0;
}

static bool aud_has(const json_t *aud, const char *want)
{
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0;
    size_t i;
    const json_t *v;
    json_array_foreach(aud, i, v)
        if (json_is_string(v) && strcmp(json_string_value(v), want) == 0)
            return true;
    return false;
}

static enum jwt_result check_claims(const struct cfg_auth *a, const json_t *c, int64_t now,
                                    int64_t *expires)
{
    const json_t *exp = json_object_get(c, "exp"), *nbf = json_object_get(c, "nbf");
    const json_t *iss = json_object_get(c, "iss"), *aud = json_object_get(c, "aud");
    int64_t t;
    *expires = INT64_MAX;
    if (exp) {
        if (numeric_date(exp, &t) != 0)
            return JWT_MALFORMED;
        if (sat_add(now, -a->leeway_s) >= t)
            return JWT_EXPIRED;
        *expires = t;
    }
    if (nbf) {
        if (numeric_date(nbf, &t) != 0)
            return JWT_MALFORMED;
        if (sat_add(now, a->leeway_s) < t)
            return JWT_NOT_YET_VALID;
    }
    if (a->jwt_issuer && a->jwt_issuer[0] &&
        (!json_is_string(iss) || strcmp(json_string_value(iss), a->jwt_issuer) != 0))
        return JWT_BAD_ISSUER;
    if (a->jwt_audience && a->jwt_audience[0] && !aud_has(aud, a->jwt_audience))
        return JWT_BAD_AUDIENCE;
    return JWT_OK;
}

static bool has_control(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return true;
    return false;
}

bool jwt_principal_valid(const char *p, size_t n)
{
    return n > 0 && n <= JWT_MAX_PRINCIPAL && jtext_utf8_valid(p, n) && !has_control(p, n);
}

static enum jwt_result take_principal(const struct cfg_auth *a, const json_t *c,
                                      struct buf *principal)
{
    const json_t *v = json_object_get(c, a->principal_claim ? a->principal_claim : "sub");
    char num[24];
    const char *p;
    size_t n;
    if (json_is_string(v)) {
        p = json_string_value(v);
        n = json_string_length(v);
    } else if (json_is_integer(v)) {
        n = (size_t)snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
        p = num;
    } else {
        return JWT_NO_PRINCIPAL;
    }
    if (!jwt_principal_valid(p, n))
        return JWT_NO_PRINCIPAL;
    buf_append(principal, p, n);
    return JWT_OK;
}

enum jwt_result jwt_verify(const struct jwt_keys *k, const struct cfg_auth *a, const char *token,
                           size_t len, int64_t now_s, struct buf *principal, int64_t *expires_s)
{
    struct token t = { 0 };
    int64_t expires;
    enum jwt_result r = token_parse(&t, token, len, a->max_token_bytes);
    if (r == JWT_OK)
        r = k ? verify_signature(k, &t) : JWT_UNKNOWN_KEY;
    if (r == JWT_OK)
        r = check_claims(a, t.claims, now_s, &expires);
    if (r == JWT_OK)
        r = take_principal(a, t.claims, principal);
    if (r == JWT_OK)
        *expires_s = expires;
    token_clear(&t);
    return r;
}
