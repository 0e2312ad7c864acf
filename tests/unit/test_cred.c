/*
 * test_cred: proto/cred.c, a bearer token and a cookie out of header values.
 */
#include "tests/unit/unit.h"

#include <string.h>

#include "proto/b64url.h"
#include "proto/cred.h"

static str_t S(const char *s)
{
    return str_make(s, strlen(s));
}

static const char *bearer(const char *h, char *out)
{
    str_t t;
    if (!cred_bearer(S(h), &t))
        return NULL;
    memcpy(out, t.p, t.len);
    out[t.len] = '\0';
    return out;
}

static const char *cookie(const char *h, const char *name, char *out)
{
    str_t v;
    if (!cred_cookie(S(h), S(name), &v))
        return NULL;
    memcpy(out, v.p, v.len);
    out[v.len] = '\0';
    return out;
}

static void test_bearer(void **state)
{
    char b[128];
    assert_string_equal(bearer("Bearer abc.def.ghi", b), "abc.def.ghi");
    assert_string_equal(bearer("bearer   a-b_c~d+e/f==  ", b), "a-b_c~d+e/f==");
    assert_string_equal(bearer("  BEARER\tx", b), "x");
    assert_null(bearer("Basic dXNlcjpwdw==", b));
    assert_null(bearer("Bearer", b));
    assert_null(bearer("Bearer ", b));
    assert_null(bearer("Bearerx abc", b));
    assert_null(bearer("Bearer a b", b));         /* two tokens */
    assert_null(bearer("Bearer a,b", b));
    assert_null(bearer("Bearer ==", b));          /* padding only */
    assert_null(bearer("Bearer a=b", b));         /* '=' only at the end */
    assert_null(bearer("", b));
    str_t t, nul = { "Bearer a\0b", 10 };
    assert_false(cred_bearer(nul, &t));
}

static void test_cookie(void **state)
{
    char b[128];
    assert_string_equal(cookie("batchd_token=abc", "batchd_token", b), "abc");
    assert_string_equal(cookie("a=1; batchd_token=abc; b=2", "batchd_token", b), "abc");
    assert_string_equal(cookie("a=1;batchd_token = \"q v\" ;b=2", "batchd_token", b), "q v");
    assert_string_equal(cookie("x_batchd_token=no; batchd_token=yes", "batchd_token", b), "yes");
    assert_string_equal(cookie("batchd_token=first; batchd_token=second", "batchd_token", b), "first");
    assert_string_equal(cookie("junk; batchd_token=", "batchd_token", b), "");
    assert_null(cookie("batchd_tokenx=1; xbatchd_token=2", "batchd_token", b));
    assert_null(cookie("", "batchd_token", b));
    assert_null(cookie("batchd_token", "batchd_token", b));
    str_t v;
    assert_false(cred_cookie(S("a=1"), S(""), &v));
    assert_false(cred_cookie(STR_NULL, S("a"), &v));
}

static void test_b64url(void **state)
{
    /* RFC 4648's vectors, unpadded, and the two characters base64url differs in. */
    const char *plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar", "\xfb\xff" };
    const char *coded[] = { "", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy", "-_8" };
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
        struct buf b = BUF_INIT;
        b64url_encode(plain[i], strlen(plain[i]), &b);
        assert_int_equal(b.len, strlen(coded[i]));
        assert_memory_equal(b.len ? b.data : "", coded[i], b.len);
        assert_int_equal(b64url_encoded_len(strlen(plain[i])), strlen(coded[i]));
        unsigned char out[16];
        assert_int_equal(b64url_decode(coded[i], strlen(coded[i]), out), (ssize_t)strlen(plain[i]));
        assert_memory_equal(out, plain[i], strlen(plain[i]));
        buf_deinit(&b);
    }
    unsigned char out[16];
    assert_int_equal(b64url_decode("Zh", 2, out), -1);     /* bits after the last byte */
    assert_int_equal(b64url_decode("Zm9vY", 5, out), -1);  /* a lone character */
    assert_int_equal(b64url_decode("Zg==", 4, out), -1);   /* padding */
    assert_int_equal(b64url_decode("+/8", 3, out), -1);    /* base64, not base64url */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bearer),
        cmocka_unit_test(test_cookie),
        cmocka_unit_test(test_b64url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
