/*
 * fuzz_jwt: libFuzzer harness for the JWT verifier, jwt_verify
 * (daemon/auth/jwt.c over libjwt).
 *
 *   input                                ──> the token, as is ──────────┐
 *   "!" header-JSON "\n" payload-JSON    ──> base64url, "." joined,     ├─> jwt_verify
 *        [ "\n" signature-text ]              + HMAC-SHA256 (the secret) │
 *                                             or the signature given ───┘
 *
 * Keys: the HS256 secret, rsa-a.pem and ec-p256.pem of tests/fixtures/jwt;
 * iss and aud are required. A raw token needs a signature the fuzzer cannot
 * make, so it explores the shape checks (and the committed valid tokens);
 * a "!" input is signed here, which opens the header rules, the claims and
 * the principal to it, and with its own signature text it reaches libjwt's
 * RSA and EC signature decoding.
 *
 * Invariants: a result in range; on "ok" a principal of 1..JWT_MAX_PRINCIPAL
 * bytes of UTF-8 with no control characters, an expiry not yet past, and
 * libjwt agreeing, with one of the keys, that the token is signed and whose
 * it is (its "sub"); on anything else nothing written. A "!" input refused
 * as a bad signature must be one libjwt refuses with the secret too (so the
 * secret was not skipped for a token it signed).
 */
#include <jansson.h>
#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/auth/jwt.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);

#define NOW 1700000000LL
#define LEEWAY 30
#define N_KEYS 3

static const char *const key_files[N_KEYS] = { "hs256.secret", "rsa-a.pem", "ec-p256.pem" };
/* The one algorithm each key may verify. */
static const jwt_alg_t key_alg[N_KEYS] = { JWT_ALG_HS256, JWT_ALG_RS256, JWT_ALG_ES256 };
static struct {
    char path[N_KEYS][512];
    char *pems[N_KEYS - 1];
    unsigned char *text[N_KEYS];  /* for libjwt's own opinion */
    size_t len[N_KEYS];
    struct cfg_auth a;
    struct jwt_keys *k;
} env;

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    unsigned char *p = calloc(1, 8192);
    CHECK(p != NULL);
    *len = fread(p, 1, 8191, f);
    fclose(f);
    return p;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    for (int i = 0; i < N_KEYS; i++) {
        snprintf(env.path[i], sizeof(env.path[i]), "%s/%s", JWT_FIXTURES, key_files[i]);
        env.text[i] = read_all(env.path[i], &env.len[i]);
        if (i > 0)
            env.pems[i - 1] = env.path[i];
    }
    env.len[0]--; /* the secret file's newline */
    env.a = (struct cfg_auth){
        .jwt_secret_file = env.path[0],
        .jwt_public_keys = { env.pems, N_KEYS - 1 },
        .jwt_issuer = "https://issuer.test",
        .jwt_audience = "batchd",
        .principal_claim = "sub",
        .leeway_s = LEEWAY,
        .max_token_bytes = 8192,
    };
    struct buf errors = BUF_INIT;
    env.k = jwt_keys_load(&env.a, &errors);
    if (env.k == NULL)
        fprintf(stderr, "fuzz_jwt: %s", errors.data ? errors.data : "no keys\n");
    CHECK(env.k != NULL && jwt_keys_count(env.k) == N_KEYS);
    buf_deinit(&errors);
    return 0;
}

static void b64url_append(struct buf *b, const void *p, size_t n)
{
    char *enc = malloc(4 * (n / 3 + 1) + 1);
    CHECK(enc != NULL);
    EVP_EncodeBlock((unsigned char *)enc, p, (int)n);
    for (char *c = enc; *c && *c != '='; c++)
        buf_append_char(b, *c == '+' ? '-' : *c == '/' ? '_' : *c);
    free(enc);
}

/* "!" header "\n" payload ["\n" signature]: the token, signed with the
 * secret unless the signature is given. */
static void build_signed(struct buf *t, const char *in, size_t n)
{
    const char *nl = memchr(in, '\n', n);
    size_t hn = nl ? (size_t)(nl - in) : n;
    const char *payload = nl ? nl + 1 : in + n;
    size_t pn = (size_t)(in + n - payload);
    const char *nl2 = memchr(payload, '\n', pn);
    if (nl2)
        pn = (size_t)(nl2 - payload);
    b64url_append(t, in, hn);
    buf_append_char(t, '.');
    b64url_append(t, payload, pn);
    buf_append_char(t, '.');
    if (nl2) {
        buf_append(t, nl2 + 1, (size_t)(in + n - nl2 - 1));
        return;
    }
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned mac_len = 0;
    /* The signing input is what comes before the second '.'. */
    CHECK(HMAC(EVP_sha256(), env.text[0], (int)env.len[0], (unsigned char *)t->data, t->len - 1,
               mac, &mac_len) != NULL);
    b64url_append(t, mac, mac_len);
}

/* libjwt, on its own, accepts token with key i and that key's algorithm. */
static jwt_t *libjwt_decode(const struct buf *token, int i)
{
    jwt_t *jwt = NULL;
    if (token->data == NULL || strlen(token->data) != token->len ||
        jwt_decode(&jwt, token->data, env.text[i], (int)env.len[i]) != 0)
        return NULL;
    if (jwt_get_alg(jwt) != key_alg[i]) {
        jwt_free(jwt);
        return NULL;
    }
    return jwt;
}

/* An accepted token: libjwt takes it with one of the keys under that key's
 * algorithm (never an RSA key's PEM text as an HMAC secret), and its "sub"
 * is the principal we gave. */
static void check_accepted(const struct buf *token, const struct buf *principal)
{
    jwt_t *jwt = NULL;
    for (int i = 0; i < N_KEYS && jwt == NULL; i++)
        jwt = libjwt_decode(token, i);
    CHECK(jwt != NULL);
    char *sub_text = jwt_get_grants_json(jwt, "sub");
    CHECK(sub_text != NULL);
    json_t *sub = json_loads(sub_text, JSON_DECODE_ANY, NULL);
    CHECK(sub != NULL);
    char num[24];
    const char *want = num;
    if (json_is_string(sub))
        want = json_string_value(sub);
    else if (json_is_integer(sub))
        snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(sub));
    else
        CHECK(!"principal from neither a string nor an integer");
    if (strcmp(want, principal->data) != 0) {
        fuzz_dump("libjwt's sub", want, strlen(want));
        fuzz_dump("principal", principal->data, principal->len);
        CHECK(!"principal differs from libjwt's sub");
    }
    json_decref(sub);
    free(sub_text);
    jwt_free(jwt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool sign = size > 0 && data[0] == '!';
    struct buf token = BUF_INIT, principal = BUF_INIT;
    if (sign)
        build_signed(&token, (const char *)data + 1, size - 1);
    else
        buf_append(&token, data, size);
    char *exact = fuzz_copy(token.data, token.len);  /* no NUL after it */
    int64_t expires = -1;
    enum jwt_result r = jwt_verify(env.k, &env.a, exact, token.len, NOW, &principal, &expires);
    free(exact);

    CHECK((unsigned)r < JWT__COUNT && jwt_result_labels[r] != NULL);
    if (r == JWT_OK) {
        CHECK(principal.len >= 1 && principal.len <= JWT_MAX_PRINCIPAL);
        CHECK(fuzz_utf8_valid((const unsigned char *)principal.data, principal.len));
        for (size_t i = 0; i < principal.len; i++)
            CHECK((unsigned char)principal.data[i] >= 0x20 && principal.data[i] != 0x7f);
        CHECK(expires > NOW - LEEWAY);
        check_accepted(&token, &principal);
    } else {
        CHECK(principal.len == 0 && expires == -1);
    }
    if (sign && r == JWT_BAD_SIGNATURE) {
        jwt_t *jwt = libjwt_decode(&token, 0);
        CHECK(jwt == NULL);
    }
    buf_deinit(&principal);
    buf_deinit(&token);
    return 0;
}
