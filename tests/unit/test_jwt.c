/*
 * test_jwt: the JWT verifier (daemon/auth/jwt.h) against tokens minted here
 * with libjwt and the keys in tests/fixtures/jwt (see its README).
 *
 *   mint (libjwt, private keys / the secret) ──> jwt_verify ──> result, principal
 *   hand (header JSON, payload JSON, HMAC here) ──┘  for what libjwt will not mint
 *
 * Covers each algorithm and key choice (kid, no kid, unknown kid), the
 * refusals that matter (alg none, an HS256 token keyed with an RSA public
 * key's PEM text, an alg that does not fit the key), exp/nbf with leeway,
 * iss, aud, the principal's rules, malformed input, and key loading errors.
 */
#include "unit.h"

#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "daemon/auth/jwt.h"

#define NOW 1700000000LL
#define LEEWAY 30
#define SECRET "batchd-test-hs256-secret-0123456789abcdef"

/* --- fixtures ----------------------------------------------------------------- */

static char *fixture_path(const char *name)
{
    static char path[8][512];
    static unsigned next;
    char *p = path[next++ % 8];
    snprintf(p, sizeof(path[0]), "%s/%s", JWT_FIXTURES, name);
    return p;
}

static char *fixture_text(const char *name, size_t *len)
{
    FILE *f = fopen(fixture_path(name), "rb");
    assert_non_null(f);
    char *text = calloc(1, 16384);
    assert_non_null(text);
    *len = fread(text, 1, 16383, f);
    fclose(f);
    return text;
}

struct env {
    struct cfg_auth a;
    char paths[8][512];
    char *items[8];
    struct jwt_keys *k;
    struct buf errors, principal;
    int64_t expires;
};

/* The config of a test: secret (a fixture name, or NULL) and the fixture
 * names of the PEM files, NULL-terminated; loaded into e->k. */
static void env_load(struct env *e, const char *secret, const char *const *pems)
{
    memset(e, 0, sizeof(*e));
    e->a.jwt_issuer = "";
    e->a.jwt_audience = "";
    e->a.principal_claim = "sub";
    e->a.leeway_s = LEEWAY;
    e->a.max_token_bytes = 8192;
    if (secret) {
        snprintf(e->paths[7], sizeof(e->paths[7]), "%s", fixture_path(secret));
        e->a.jwt_secret_file = e->paths[7];
    }
    for (unsigned i = 0; pems && pems[i]; i++) {
        snprintf(e->paths[i], sizeof(e->paths[i]), "%s", fixture_path(pems[i]));
        e->items[i] = e->paths[i];
        e->a.jwt_public_keys.n = i + 1;
    }
    e->a.jwt_public_keys.items = e->items;
    e->k = jwt_keys_load(&e->a, &e->errors);
}

static void env_free(struct env *e)
{
    jwt_keys_free(e->k);
    buf_deinit(&e->errors);
    buf_deinit(&e->principal);
}

static const char *const all_pems[] = { "rsa-a.pem", "rsa-b.pem", "ec-p256.pem", NULL };
static const char *const rsa_pems[] = { "rsa-a.pem", "rsa-b.pem", NULL };

/* Verifies token (and frees it) at NOW; the principal lands in
 * e->principal, emptied first. */
static enum jwt_result run(struct env *e, char *token)
{
    assert_non_null(token);
    buf_reset(&e->principal);
    e->expires = -1;
    enum jwt_result r =
        jwt_verify(e->k, &e->a, token, strlen(token), NOW, &e->principal, &e->expires);
    free(token);
    return r;
}

#define assert_ok_as(e, token, who)                        \
    do {                                                   \
        assert_int_equal(run((e), (token)), JWT_OK);       \
        assert_string_equal((e)->principal.data, (who));   \
    } while (0)

/* --- minting -------------------------------------------------------------------- */

/* A token for the claims (JSON, printf-style), signed by libjwt. */
static char *vmint(jwt_alg_t alg, const void *key, size_t key_len, const char *kid,
                   const char *fmt, va_list ap)
{
    char claims[12000];
    vsnprintf(claims, sizeof(claims), fmt, ap);
    jwt_t *jwt = NULL;
    assert_int_equal(jwt_new(&jwt), 0);
    assert_int_equal(jwt_add_grants_json(jwt, claims), 0);
    if (kid)
        assert_int_equal(jwt_add_header(jwt, "kid", kid), 0);
    assert_int_equal(jwt_set_alg(jwt, alg, key, (int)key_len), 0);
    char *token = jwt_encode_str(jwt);
    assert_non_null(token);
    jwt_free(jwt);
    return token;
}

static char *mint_hs(const char *secret, const char *kid, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *t = vmint(JWT_ALG_HS256, secret, strlen(secret), kid, fmt, ap);
    va_end(ap);
    return t;
}

/* The common case: HS256 with the configured secret, no kid. */
static char *hs(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *t = vmint(JWT_ALG_HS256, SECRET, strlen(SECRET), NULL, fmt, ap);
    va_end(ap);
    return t;
}

/* Signed with the private key in fixture `key` (or, for HS256, with that
 * file's bytes as the HMAC secret). */
static char *mint_file(jwt_alg_t alg, const char *key, const char *kid, const char *fmt, ...)
{
    size_t len;
    char *pem = fixture_text(key, &len);
    va_list ap;
    va_start(ap, fmt);
    char *t = vmint(alg, pem, len, kid, fmt, ap);
    va_end(ap);
    free(pem);
    return t;
}

static void b64url_append(struct buf *b, const void *p, size_t n)
{
    char *enc = calloc(1, 4 * (n / 3 + 1) + 1);
    assert_non_null(enc);
    EVP_EncodeBlock((unsigned char *)enc, p, (int)n);
    for (char *c = enc; *c && *c != '='; c++)
        buf_append_char(b, *c == '+' ? '-' : *c == '/' ? '_' : *c);
    free(enc);
}

/* A token built by hand: header and payload JSON as given, and the
 * signature base64url(HMAC-SHA256(SECRET)) when sign, else `sig`. */
static char *hand(const char *header, const char *payload, bool sign, const char *sig)
{
    struct buf b = BUF_INIT;
    b64url_append(&b, header, strlen(header));
    buf_append_char(&b, '.');
    b64url_append(&b, payload, strlen(payload));
    unsigned char mac[32];
    unsigned mac_len = sizeof(mac);
    assert_non_null(HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)b.data,
                         b.len, mac, &mac_len));
    buf_append_char(&b, '.');
    if (sign)
        b64url_append(&b, mac, mac_len);
    else
        buf_append_str(&b, sig);
    return b.data;
}

#define HS_HEADER "{\"alg\":\"HS256\"}"

/* The result of verifying token (freed). */
#define assert_result(e, token, want) assert_int_equal(run((e), (token)), (want))

/* --- loading ---------------------------------------------------------------------- */

static void test_labels(void **state)
{
    (void)state;
    assert_string_equal(jwt_result_labels[JWT_OK], "ok");
    assert_string_equal(jwt_result_labels[JWT_BAD_ALGORITHM], "bad_algorithm");
    assert_string_equal(jwt_result_labels[JWT_NO_PRINCIPAL], "no_principal");
    for (int i = 0; i < JWT__COUNT; i++)
        assert_non_null(jwt_result_labels[i]);
}

static void test_load_all(void **state)
{
    (void)state;
    struct env e;
    env_load(&e, "hs256.secret", all_pems);
    assert_non_null(e.k);
    assert_int_equal(e.errors.len, 0);
    assert_int_equal(jwt_keys_count(e.k), 4);
    env_free(&e);

    /* Nothing configured: no keys, and no error either. */
    env_load(&e, NULL, NULL);
    assert_null(e.k);
    assert_int_equal(e.errors.len, 0);
    assert_int_equal(jwt_keys_count(e.k), 0);
    env_free(&e);
}

/* Loading fails with exactly one error line, naming the file and saying `what`. */
static void expect_load_error(const char *secret, const char *pem, const char *file,
                              const char *what)
{
    const char *pems[] = { "rsa-a.pem", pem, NULL };
    struct env e;
    env_load(&e, secret, pems);
    assert_null(e.k);
    char want[600];
    snprintf(want, sizeof(want), "%s: ", fixture_path(file));
    if (strncmp(e.errors.data, want, strlen(want)) != 0 || !strstr(e.errors.data, what) ||
        strchr(e.errors.data, '\n') != e.errors.data + e.errors.len - 1)
        fail_msg("errors \"%s\", want one line \"%s...%s...\"", e.errors.data, want, what);
    env_free(&e);
}

static void test_load_errors(void **state)
{
    (void)state;
    expect_load_error(NULL, "missing.pem", "missing.pem", "cannot open: No such file");
    expect_load_error("missing.secret", NULL, "missing.secret", "cannot open");
    expect_load_error(NULL, "ec-p384.pem", "ec-p384.pem", "unsupported key type EC secp384r1");
    expect_load_error(NULL, "ed25519.pem", "ed25519.pem", "unsupported key type ED25519");
    expect_load_error("empty.secret", NULL, "empty.secret", "empty HS256 secret");
    expect_load_error(NULL, "hs256.secret", "hs256.secret", "not a PEM public key");
    expect_load_error(NULL, "rsa-b.key", "rsa-b.key", "a private key");
    expect_load_error(NULL, "rsa-a.pem", "rsa-a.pem", "key id \"rsa-a\" is also");

    /* Every problem is reported, not just the first. */
    const char *pems[] = { "ec-p384.pem", "rsa-a.pem", "ed25519.pem", "missing.pem", NULL };
    struct env e;
    env_load(&e, "empty.secret", pems);
    assert_null(e.k);
    unsigned lines = 0;
    for (size_t i = 0; i < e.errors.len; i++)
        lines += e.errors.data[i] == '\n';
    assert_int_equal(lines, 4);
    env_free(&e);
}

/* --- algorithms and keys ---------------------------------------------------------- */

static void test_hs256(void **state)
{
    (void)state;
    /* The secret file ends in a newline that is not part of the secret. */
    size_t len;
    char *text = fixture_text("hs256.secret", &len);
    assert_string_equal(text, SECRET "\n");
    free(text);

    struct env e;
    env_load(&e, "hs256.secret", all_pems);
    assert_ok_as(&e, hs("{\"sub\":\"alice\",\"exp\":%lld}", NOW + 60), "alice");
    assert_int_equal(e.expires, NOW + 60);
    /* The secret is the one HS256 key, whatever kid the issuer put in. */
    assert_ok_as(&e, mint_hs(SECRET, "hmac-1", "{\"sub\":\"alice\"}"), "alice");
    assert_int_equal(e.expires, INT64_MAX);
    assert_result(&e, mint_hs("another secret", NULL, "{\"sub\":\"alice\"}"), JWT_BAD_SIGNATURE);
    assert_result(&e, mint_hs(SECRET "\n", NULL, "{\"sub\":\"alice\"}"), JWT_BAD_SIGNATURE);
    env_free(&e);
}

static void test_rs256_es256(void **state)
{
    (void)state;
    struct env e;
    env_load(&e, NULL, all_pems);
    const char *c = "{\"sub\":\"bob\"}";
    assert_ok_as(&e, mint_file(JWT_ALG_RS256, "rsa-a.key", "rsa-a", c), "bob");
    assert_ok_as(&e, mint_file(JWT_ALG_RS256, "rsa-b.key", "rsa-b", c), "bob");
    /* No kid: every RSA key is tried, in order. */
    assert_ok_as(&e, mint_file(JWT_ALG_RS256, "rsa-a.key", NULL, c), "bob");
    assert_ok_as(&e, mint_file(JWT_ALG_RS256, "rsa-b.key", NULL, c), "bob");
    assert_ok_as(&e, mint_file(JWT_ALG_ES256, "ec-p256.key", "ec-p256", c), "bob");
    assert_ok_as(&e, mint_file(JWT_ALG_ES256, "ec-p256.key", NULL, c), "bob");
    env_free(&e);
}

static void test_wrong_key(void **state)
{
    (void)state;
    struct env e;
    env_load(&e, NULL, all_pems);
    const char *c = "{\"sub\":\"bob\"}";
    /* kid a, signed by b. */
    assert_result(&e, mint_file(JWT_ALG_RS256, "rsa-b.key", "rsa-a", c), JWT_BAD_SIGNATURE);
    assert_result(&e, mint_file(JWT_ALG_RS256, "rsa-a.key", "rsa-c", c), JWT_UNKNOWN_KEY);
    env_free(&e);

    /* No kid and no configured key signed it. */
    const char *only_a[] = { "rsa-a.pem", NULL };
    env_load(&e, NULL, only_a);
    assert_result(&e, mint_file(JWT_ALG_RS256, "rsa-b.key", NULL, c), JWT_BAD_SIGNATURE);
    /* ES256, but no EC key at all. */
    assert_result(&e, mint_file(JWT_ALG_ES256, "ec-p256.key", NULL, c), JWT_BAD_ALGORITHM);
    env_free(&e);
}

static void test_alg_none(void **state)
{
    (void)state;
    struct env e;
    env_load(&e, "hs256.secret", all_pems);
    struct buf t = BUF_INIT;
    buf_append_str(&t, "eyJhbGciOiJub25lIn0.");
    b64url_append(&t, "{\"sub\":\"mallory\"}", 17);
    buf_append_str(&t, ".");
    assert_result(&e, t.data, JWT_BAD_ALGORITHM);
    assert_int_equal(e.principal.len, 0);
    const char *m = "{\"sub\":\"m\"}";
    assert_result(&e, hand("{\"alg\":\"none\",\"kid\":\"rsa-a\"}", m, false, ""),
                  JWT_BAD_ALGORITHM);
    /* Only the exact names: libjwt itself would take "hs256". */
    assert_result(&e, hand("{\"alg\":\"hs256\"}", m, true, NULL), JWT_BAD_ALGORITHM);
    assert_result(&e, hand("{\"alg\":\"HS512\"}", m, true, NULL), JWT_BAD_ALGORITHM);
    assert_result(&e, hand(HS_HEADER, "{\"sub\":\"m\"}", true, NULL), JWT_OK);
    env_free(&e);
}

/* The classic: an HS256 token whose HMAC secret is the RSA public key's PEM
 * text, which every verifier has. libjwt alone would accept it. */
static void test_hs256_keyed_with_rsa_public_key(void **state)
{
    (void)state;
    struct env e;
    env_load(&e, NULL, rsa_pems);
    const char *c = "{\"sub\":\"admin\"}";
    assert_result(&e, mint_file(JWT_ALG_HS256, "rsa-a.pem", NULL, c), JWT_BAD_ALGORITHM);
    assert_result(&e, mint_file(JWT_ALG_HS256, "rsa-a.pem", "rsa-a", c), JWT_BAD_ALGORITHM);
    env_free(&e);

    /* With a secret configured too, the secret is the only HMAC key. */
    env_load(&e, "hs256.secret", rsa_pems);
    assert_result(&e, mint_file(JWT_ALG_HS256, "rsa-a.pem", "rsa-a", c), JWT_BAD_SIGNATURE);
    env_free(&e);

    /* And the libjwt claim holds: it does take such a token on its own. */
    size_t len;
    char *pem = fixture_text("rsa-a.pem", &len);
    char *t = mint_file(JWT_ALG_HS256, "rsa-a.pem", NULL, c);
    jwt_t *jwt = NULL;
    assert_int_equal(jwt_decode(&jwt, t, (unsigned char *)pem, (int)len), 0);
    jwt_free(jwt);
    free(t);
    free(pem);
}

static void test_alg_must_fit_key(void **state)
{
    (void)state;
    struct env e;
    env_load(&e, "hs256.secret", all_pems);
    const char *c = "{\"sub\":\"bob\"}";
    assert_result(&e, mint_file(JWT_ALG_ES256, "ec-p256.key", "rsa-a", c), JWT_BAD_ALGORITHM);
    assert_result(&e, mint_file(JWT_ALG_RS256, "rsa-a.key", "ec-p256", c), JWT_BAD_ALGORITHM);
    /* RS384 is RSA, but not an algorithm batchd takes. */
    assert_result(&e, mint_file(JWT_ALG_RS384, "rsa-a.key", "rsa-a", c), JWT_BAD_ALGORITHM);
    env_free(&e);
}

/* --- claims ------------------------------------------------------------------------ */

static void test_exp_nbf(void **state)
{
    (void)state;
    struct env e;
    env_load(&e, "hs256.secret", NULL);
    const char *exp = "{\"sub\":\"a\",\"exp\":%lld}", *nbf = "{\"sub\":\"a\",\"nbf\":%lld}";
    assert_result(&e, hs(exp, NOW - LEEWAY - 1), JWT_EXPIRED);
    assert_result(&e, hs(exp, NOW - LEEWAY), JWT_EXPIRED);
    assert_ok_as(&e, hs(exp, NOW - LEEWAY + 1), "a");
    assert_int_equal(e.expires, NOW - LEEWAY + 1);
    assert_result(&e, hs(nbf, NOW + LEEWAY + 1), JWT_NOT_YET_VALID);
    assert_ok_as(&e, hs(nbf, NOW + LEEWAY), "a");

    /* exp and nbf are NumericDates or nothing. */
    assert_result(&e, hand(HS_HEADER, "{\"sub\":\"a\",\"exp\":\"2099\"}", true, NULL),
                  JWT_MALFORMED);
    assert_result(&e, hand(HS_HEADER, "{\"sub\":\"a\",\"nbf\":null}", true, NULL), JWT_MALFORMED);
    /* A fractional exp counts up to the next second. */
    assert_ok_as(&e, hand(HS_HEADER, "{\"sub\":\"a\",\"exp\":1699999970.5}", true, NULL), "a");
    assert_int_equal(e.expires, NOW - LEEWAY + 1);
    assert_result(&e, hand(HS_HEADER, "{\"sub\":\"a\",\"exp\":-1e300}", true, NULL), JWT_EXPIRED);
    assert_ok_as(&e, hand(HS_HEADER, "{\"sub\":\"a\",\"exp\":1e300}", true, NULL), "a");
    assert_int_equal(e.expires, INT64_MAX);
    env_free(&e);
}

static void test_iss_aud(void **state)
{
    (void)state;
    struct env e;
    env_load(&e, "hs256.secret", NULL);
    e.a.jwt_issuer = "https://auth.example.com";
    assert_ok_as(&e, hs("{\"sub\":\"a\",\"iss\":\"https://auth.example.com\"}"), "a");
    assert_result(&e, hs("{\"sub\":\"a\",\"iss\":\"https://evil.example.com\"}"), JWT_BAD_ISSUER);
    assert_result(&e, hs("{\"sub\":\"a\"}"), JWT_BAD_ISSUER);
    e.a.jwt_issuer = "";

    e.a.jwt_audience = "batchd";
    assert_ok_as(&e, hs("{\"sub\":\"a\",\"aud\":\"batchd\"}"), "a");
    assert_ok_as(&e, hs("{\"sub\":\"a\",\"aud\":[\"app\",\"batchd\"]}"), "a");
    assert_result(&e, hs("{\"sub\":\"a\",\"aud\":\"app\"}"), JWT_BAD_AUDIENCE);
    assert_result(&e, hs("{\"sub\":\"a\",\"aud\":[\"app\",\"batchd2\"]}"), JWT_BAD_AUDIENCE);
    assert_result(&e, hs("{\"sub\":\"a\",\"aud\":[]}"), JWT_BAD_AUDIENCE);
    assert_result(&e, hs("{\"sub\":\"a\"}"), JWT_BAD_AUDIENCE);
    e.a.jwt_audience = "";
    /* Not configured: not looked at. */
    assert_ok_as(&e, hs("{\"sub\":\"a\",\"aud\":7,\"iss\":[]}"), "a");
    env_free(&e);
}

static void test_principal(void **state)
{
    (void)state;
    struct env e;
    env_load(&e, "hs256.secret", NULL);
    assert_result(&e, hs("{\"name\":\"a\"}"), JWT_NO_PRINCIPAL);
    assert_ok_as(&e, hs("{\"sub\":42}"), "42");
    assert_ok_as(&e, hs("{\"sub\":-7}"), "-7");
    assert_ok_as(&e, hs("{\"sub\":\"zo\\u00eb\"}"), "zo\xc3\xab");
    assert_result(&e, hs("{\"sub\":\"a\\nb\"}"), JWT_NO_PRINCIPAL);
    assert_result(&e, hs("{\"sub\":\"a\\u007fb\"}"), JWT_NO_PRINCIPAL);
    assert_result(&e, hs("{\"sub\":\"\"}"), JWT_NO_PRINCIPAL);
    assert_result(&e, hs("{\"sub\":4.2}"), JWT_NO_PRINCIPAL);
    assert_result(&e, hs("{\"sub\":true}"), JWT_NO_PRINCIPAL);
    assert_result(&e, hs("{\"sub\":[\"a\"]}"), JWT_NO_PRINCIPAL);

    char longest[JWT_MAX_PRINCIPAL + 2];
    memset(longest, 'p', JWT_MAX_PRINCIPAL);
    longest[JWT_MAX_PRINCIPAL] = '\0';
    assert_ok_as(&e, hs("{\"sub\":\"%s\"}", longest), longest);
    strcat(longest, "p");
    assert_result(&e, hs("{\"sub\":\"%s\"}", longest), JWT_NO_PRINCIPAL);

    e.a.principal_claim = "uid";
    assert_ok_as(&e, hs("{\"sub\":\"a\",\"uid\":\"u-9\"}"), "u-9");
    assert_result(&e, hs("{\"sub\":\"a\"}"), JWT_NO_PRINCIPAL);
    env_free(&e);
}

/* The principal is appended on success only; *expires only set then. */
static void test_outputs_on_refusal(void **state)
{
    (void)state;
    struct env e;
    env_load(&e, "hs256.secret", NULL);
    char *t = hs("{\"sub\":\"a\",\"exp\":%lld}", NOW - 3600);
    int64_t expires = 5;
    buf_append_str(&e.principal, "x");
    assert_int_equal(jwt_verify(e.k, &e.a, t, strlen(t), NOW, &e.principal, &expires), JWT_EXPIRED);
    assert_string_equal(e.principal.data, "x");
    assert_int_equal(expires, 5);
    free(t);
    t = hs("{\"sub\":\"a\",\"exp\":%lld}", NOW + 1);
    assert_int_equal(jwt_verify(e.k, &e.a, t, strlen(t), NOW, &e.principal, &expires), JWT_OK);
    assert_string_equal(e.principal.data, "xa");
    assert_int_equal(expires, NOW + 1);
    free(t);
    env_free(&e);
}

/* --- malformed ----------------------------------------------------------------------- */

static void test_malformed(void **state)
{
    (void)state;
    struct env e;
    env_load(&e, "hs256.secret", all_pems);
    static const char *const bad[] = {
        "", ".", "..", "abc", "eyJhbGciOiJIUzI1NiJ9.e30", "eyJhbGciOiJIUzI1NiJ9..c2ln",
        ".e30.c2ln", "eyJhbGciOiJIUzI1NiJ9.e30.c2ln.x", "ey!hbGciOiJIUzI1NiJ9.e30.c2ln",
        "eyJhbGciOiJIUzI1NiJ9=.e30.c2ln", "eyJhbGciOiJIUzI1NiJ9.e30=.c2ln",
        " eyJhbGciOiJIUzI1NiJ9.e30.c2ln", "eyJhbGciOiJIUzI1NiJ9.e30.c2ln\n",
        "eyJhbGciOiJIUzI1NiJ9.e30.c2l n", "eyJhbGciOiJIUzI1NiJ9.e30.c2lu+/",
        "aGVsbG8.e30.c2ln",             /* header "hello" */
        "WzFd.e30.c2ln",                /* header [1] */
        "eyJhbGciOiJIUzI1NiJ9.aGVsbG8.c2ln", /* payload "hello" */
        "eyJhbGciOiJIUzI1NiJ9.e31.c2ln",     /* non-zero bits after the last byte */
        "eyJhbGciOiJIUzI1NiJ9.e.c2ln",       /* 1 char: no whole byte */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t exp;
        enum jwt_result r = jwt_verify(e.k, &e.a, bad[i], strlen(bad[i]), NOW, &e.principal, &exp);
        if (r != JWT_MALFORMED)
            fail_msg("\"%s\": %s, want malformed", bad[i], jwt_result_labels[r]);
    }
    /* A NUL inside is not the end of the token. */
    char *t = hs("{\"sub\":\"a\"}");
    size_t n = strlen(t);
    t[5] = '\0';
    assert_int_equal(jwt_verify(e.k, &e.a, t, n, NOW, &e.principal, &e.expires), JWT_MALFORMED);
    free(t);

    /* Headers libjwt would take differently, or not at all, validly signed. */
    const char *p = "{\"sub\":\"a\"}";
    assert_result(&e, hand("{\"alg\":\"HS256\",\"alg\":\"none\"}", p, true, NULL), JWT_MALFORMED);
    assert_result(&e, hand("{\"alg\":\"HS256\",\"typ\":\"at+jwt\"}", p, true, NULL), JWT_MALFORMED);
    assert_ok_as(&e, hand("{\"alg\":\"HS256\",\"typ\":\"jwt\"}", p, true, NULL), "a");
    assert_result(&e, hand("{\"alg\":\"HS256\",\"crit\":[\"b64\"],\"b64\":false}", p, true, NULL),
                  JWT_MALFORMED);
    assert_result(&e, hand("{\"alg\":\"HS256\",\"kid\":7}", p, true, NULL), JWT_MALFORMED);
    assert_result(&e, hand("{\"kid\":\"rsa-a\"}", p, true, NULL), JWT_MALFORMED);
    assert_result(&e, hand(HS_HEADER, "[\"sub\"]", true, NULL), JWT_MALFORMED);
    assert_result(&e, hand(HS_HEADER, p, false, ""), JWT_BAD_SIGNATURE);
    assert_result(&e, hand("{\"alg\":\"RS256\"}", p, false, ""), JWT_BAD_SIGNATURE);
    env_free(&e);
}

static void test_max_token_bytes(void **state)
{
    (void)state;
    struct env e;
    env_load(&e, "hs256.secret", NULL);
    char pad[6800];
    memset(pad, 'x', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    /* About 9 KB once base64url-encoded. */
    char *t = hs("{\"sub\":\"a\",\"pad\":\"%s\"}", pad);
    size_t n = strlen(t);
    assert_true(n > 9000 && n < 9300);
    char *copy = strdup(t);
    assert_result(&e, t, JWT_MALFORMED);
    e.a.max_token_bytes = (int64_t)n;
    assert_ok_as(&e, copy, "a");
    env_free(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_labels),
        cmocka_unit_test(test_load_all),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_hs256),
        cmocka_unit_test(test_rs256_es256),
        cmocka_unit_test(test_wrong_key),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_hs256_keyed_with_rsa_public_key),
        cmocka_unit_test(test_alg_must_fit_key),
        cmocka_unit_test(test_exp_nbf),
        cmocka_unit_test(test_iss_aud),
        cmocka_unit_test(test_principal),
        cmocka_unit_test(test_outputs_on_refusal),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_max_token_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
