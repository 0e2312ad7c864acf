/*
 * test_conneg: proto/accept.c (Accept-Encoding) and proto/etag.c (tags,
 * If-None-Match).
 */
#include "tests/unit/unit.h"

#include <string.h>

#include "proto/accept.h"
#include "proto/etag.h"

static str_t S(const char *s)
{
    return str_make(s, strlen(s));
}

static bool gz(const char *v)
{
    struct accept_enc a = ACCEPT_ENC_INIT;
    accept_feed(&a, S(v));
    return accept_gzip(&a);
}

static void test_accept(void **state)
{
    assert_true(gz("gzip"));
    assert_true(gz("GZip"));
    assert_true(gz("x-gzip"));
    assert_true(gz("*"));
    assert_true(gz("deflate, gzip;q=0.001"));
    assert_true(gz("br;q=1.0, gzip;q=0.8, *;q=0.1"));
    assert_true(gz(" gzip ; Q=1.000 "));
    assert_true(gz("identity;q=0.5, gzip"));
    assert_true(gz("gzip;q=0.5, identity;q=0.5"));
    assert_true(gz("foo;;;, gzip"));            /* a bad element is skipped */
    assert_true(gz("gzip;level=9"));            /* unknown parameter: ignored */
    assert_false(gz(""));
    assert_false(gz("identity"));
    assert_false(gz("br, deflate"));
    assert_false(gz("gzip;q=0"));
    assert_false(gz("gzip;q=0.000"));
    assert_false(gz("*;q=1, gzip;q=0"));       /* named beats * */
    assert_false(gz("gzip;q=0, *"));
    assert_false(gz("*;q=0"));
    assert_false(gz("gzip;q=0.5, identity"));   /* identity preferred */
    assert_false(gz("gzip;q=2"));               /* not a qvalue: the element is skipped */
    assert_false(gz("gzip;q=1.5"));
    assert_false(gz("gzip;q=0.0001"));
    assert_false(gz("gzip;q="));
    assert_false(gz("gzipx"));
    assert_false(gz("gzip junk"));
    /* Several lines add up. */
    struct accept_enc a = ACCEPT_ENC_INIT;
    accept_feed(&a, S("br"));
    assert_false(accept_gzip(&a));
    accept_feed(&a, S("gzip;q=0.1"));
    assert_true(accept_gzip(&a));
}

static enum etag_match inm(const char *v, const char *tag)
{
    return etag_none_match(S(v), S(tag));
}

static void test_none_match(void **state)
{
    const char *t = "\"0123456789abcdef\"";
    assert_int_equal(inm("*", t), ETAG_MATCH);
    assert_int_equal(inm("  *  ", t), ETAG_MATCH);
    assert_int_equal(inm(t, t), ETAG_MATCH);
    assert_int_equal(inm("W/\"0123456789abcdef\"", t), ETAG_MATCH);
    assert_int_equal(inm("\"a\", W/\"b\" ,\"0123456789abcdef\"", t), ETAG_MATCH);
    assert_int_equal(inm(" ,, \"0123456789abcdef\" ,", t), ETAG_MATCH);
    assert_int_equal(inm("\"a\", \"b\"", t), ETAG_NO_MATCH);
    assert_int_equal(inm("\"0123456789abcdef-gz1\"", t), ETAG_NO_MATCH);
    assert_int_equal(inm("\"0123456789ABCDEF\"", t), ETAG_NO_MATCH); /* case matters */
    assert_int_equal(inm("0123456789abcdef", t), ETAG_INVALID);       /* unquoted */
    assert_int_equal(inm("\"0123456789abcdef", t), ETAG_INVALID);     /* unterminated */
    assert_int_equal(inm("\"a\" \"0123456789abcdef\"", t), ETAG_INVALID); /* no comma */
    assert_int_equal(inm("w/\"0123456789abcdef\"", t), ETAG_INVALID); /* W/ is case-sensitive */
    assert_int_equal(inm("*, \"a\"", t), ETAG_INVALID);
    assert_int_equal(inm("", t), ETAG_INVALID);
    assert_int_equal(inm(" , ", t), ETAG_INVALID);
    assert_int_equal(inm("\"a b\"", t), ETAG_INVALID); /* SP is not an etagc */
}

static void test_tags(void **state)
{
    char out[ETAG_MAX];
    size_t n = etag_format(UINT64_C(0x0123456789abcdef), 0, out);
    assert_int_equal(n, 18);
    assert_memory_equal(out, "\"0123456789abcdef\"", n);
    n = etag_format(1, 6, out);
    assert_int_equal(n, 22);
    assert_memory_equal(out, "\"0000000000000001-gz6\"", n);
    /* Stable (tags outlive processes), and sensitive to every byte and the length. */
    char doc[100];
    memset(doc, 'a', sizeof(doc));
    uint64_t h = etag_hash(doc, sizeof(doc));
    assert_true(h == etag_hash(doc, sizeof(doc)));
    for (size_t i = 0; i < sizeof(doc); i++) {
        doc[i] ^= 1;
        assert_true(etag_hash(doc, sizeof(doc)) != h);
        doc[i] ^= 1;
    }
    for (size_t len = 0; len < sizeof(doc); len++)
        assert_true(etag_hash(doc, len) != h);
    assert_true(etag_hash("", 0) != etag_hash("\0", 1));
    /* Pieces in order: [a,b] is not [b,a], nor [ab]. */
    uint64_t a = etag_hash("a", 1), b = etag_hash("b", 1);
    uint64_t ab = etag_mix(etag_mix(ETAG_START, a), b), ba = etag_mix(etag_mix(ETAG_START, b), a);
    assert_true(ab != ba);
    assert_true(ab != etag_mix(ETAG_START, etag_hash("ab", 2)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept),
        cmocka_unit_test(test_none_match),
        cmocka_unit_test(test_tags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
