/*
 * test_url: percent-decoding, query iteration and path templates (proto/url.h).
 */
#include "unit.h"

#include <errno.h>

#include "proto/url.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* --- url_decode ---------------------------------------------------------------- */

static void test_decode_good(void **state)
{
    static const struct {
        const char *in;
        bool plus;
        const char *out;
        size_t out_len;
    } cases[] = {
        { "", false, "", 0 },
        { "plain", false, "plain", 5 },
        { "a%20b", false, "a b", 3 },
        { "%41%42c", false, "ABc", 3 },
        { "%2f%2F", false, "//", 2 },
        { "%e2%82%ac", false, "\xe2\x82\xac", 3 },
        { "%ff", false, "\xff", 1 },
        { "x%00y", false, "x\0y", 3 },
        { "a+b", false, "a+b", 3 },
        { "a+b", true, "a b", 3 },
        { "%2B+", true, "+ ", 2 },
        { "%25", false, "%", 1 },
        { "%2525", false, "%25", 3 },
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        struct buf out = BUF_INIT;
        int rc = url_decode(str_cstr(cases[i].in), cases[i].plus, &out);
        if (rc != 0)
            fail_msg("url_decode(\"%s\") = %d", cases[i].in, rc);
        assert_bytes_eq(out.data, out.len, cases[i].out, cases[i].out_len);
        buf_deinit(&out);
    }
}

static void test_decode_appends(void **state)
{
    struct buf out = BUF_INIT;
    buf_append_str(&out, "pre:");
    assert_int_equal(url_decode(STR_LIT("a%2Cb"), false, &out), 0);
    assert_string_equal(out.data, "pre:a,b");
    buf_deinit(&out);
}

static void test_decode_bad_escapes(void **state)
{
    static const char *const bad[] = {
        "%", "%4", "%zz", "%4g", "%g4", "a%", "ab%2", "%%41", "%+1", "%-1", "% 1", "ok%0",
    };
    for (size_t i = 0; i < N_ELEMS(bad); i++) {
        struct buf out = BUF_INIT;
        int rc = url_decode(str_cstr(bad[i]), true, &out);
        if (rc != -EINVAL)
            fail_msg("url_decode(\"%s\") = %d, want -EINVAL", bad[i], rc);
        buf_deinit(&out);
    }
    /* The view's length bounds it: "%41" cut to "%4" is a bad escape. */
    struct buf out = BUF_INIT;
    assert_int_equal(url_decode(str_make("%41", 2), false, &out), -EINVAL);
    buf_deinit(&out);
}

/* --- url_query_next ----------------------------------------------------------- */

/* Iterates `query` and renders it as "k=v|k=v|..." for comparison. */
static void render_query(const char *query, struct buf *out)
{
    str_t rest = str_cstr(query), k, v;
    while (url_query_next(&rest, &k, &v)) {
        /* Raw slices of the input, never reaching past it. */
        assert_true(k.p >= query && k.p + k.len <= query + strlen(query));
        assert_true(v.p >= query && v.p + v.len <= query + strlen(query));
        assert_null(memchr(k.p, '&', k.len));
        assert_null(memchr(v.p, '&', v.len));
        buf_append(out, k.p, k.len);
        buf_append_char(out, '=');
        buf_append(out, v.p, v.len);
        buf_append_char(out, '|');
    }
    assert_int_equal(rest.len, 0);
    if (out->data == NULL)
        buf_append_str(out, "");
}

/* url_decode_to: the same decoding into a fixed buffer, and its bound. */
static void test_decode_to_fixed_buffer(void **state)
{
    (void)state;
    char out[4];
    size_t n;
    assert_int_equal(url_decode_to(STR_LIT("s%31"), false, out, sizeof(out), &n), 0);
    assert_bytes_eq(out, n, "s1", 2);
    assert_int_equal(url_decode_to(STR_LIT("a+%41"), true, out, sizeof(out), &n), 0);
    assert_bytes_eq(out, n, "a A", 3);
    /* Exactly full fits; one byte more does not, escaped or not. */
    assert_int_equal(url_decode_to(STR_LIT("abcd"), false, out, sizeof(out), &n), 0);
    assert_int_equal(n, 4);
    assert_int_equal(url_decode_to(STR_LIT("abcde"), false, out, sizeof(out), &n), -E2BIG);
    assert_int_equal(n, 4);
    assert_int_equal(url_decode_to(STR_LIT("abcd%41"), false, out, sizeof(out), &n), -E2BIG);
    assert_int_equal(url_decode_to(STR_LIT("ab%4"), false, out, sizeof(out), &n), -EINVAL);
    assert_int_equal(url_decode_to(STR_LIT("%zz"), false, out, sizeof(out), &n), -EINVAL);
    assert_int_equal(url_decode_to(STR_LIT(""), false, out, 0, &n), 0);
    assert_int_equal(n, 0);
}

static void test_query_next(void **state)
{
    static const struct {
        const char *query, *want;
    } cases[] = {
        { "", "" },
        { "a=1", "a=1|" },
        { "a=1&b=2&a=3", "a=1|b=2|a=3|" },      /* repeated keys, in order */
        { "a=1&&b=2", "a=1|b=2|" },              /* empty pair skipped */
        { "&&&", "" },
        { "&a=1&", "a=1|" },
        { "flag", "flag=|" },                    /* no '=' gives an empty value */
        { "flag&x=", "flag=|x=|" },              /* empty value */
        { "=v", "=v|" },                         /* empty key is kept */
        { "a=b=c", "a=b=c|" },                   /* only the first '=' splits */
        { "q=a%20b+c", "q=a%20b+c|" },           /* raw, undecoded */
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        struct buf out = BUF_INIT;
        render_query(cases[i].query, &out);
        if (strcmp(out.data, cases[i].want) != 0)
            fail_msg("query \"%s\": got \"%s\", want \"%s\"", cases[i].query, out.data,
                     cases[i].want);
        buf_deinit(&out);
    }
}

static void test_query_key_without_equals(void **state)
{
    str_t rest = STR_LIT("debug&limit=10"), k, v;
    assert_true(url_query_next(&rest, &k, &v));
    assert_str_eq(k, "debug");
    assert_int_equal(v.len, 0);
    assert_true(url_query_next(&rest, &k, &v));
    assert_str_eq(k, "limit");
    assert_str_eq(v, "10");
    assert_false(url_query_next(&rest, &k, &v));
    assert_false(url_query_next(&rest, &k, &v)); /* stays exhausted */
}

/* --- url_template_valid ------------------------------------------------------ */

static void test_template_valid_good(void **state)
{
    static const char *const good[] = {
        "/",
        "/healthz",
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/events",
        "/v1/{a}/{b}/{c}/{d}",
        "/a/{snake_case}/b",
        "/a-b.c~d_e/x:y@z",
    };
    for (size_t i = 0; i < N_ELEMS(good); i++) {
        const char *why = NULL;
        if (!url_template_valid(good[i], &why))
            fail_msg("\"%s\" rejected: %s", good[i], why);
    }
}

static void test_template_valid_bad(void **state)
{
    static const struct {
        const char *tpl, *why; /* a word the reason must contain */
    } bad[] = {
        { "", "start" },
        { "v1/x", "start" },
        { "{id}", "start" },
        { "//", "empty" },
        { "/a//b", "empty" },
        { "/a/", "empty" },
        { "/a/{id", "whole segment" },
        { "/a/id}", "whole segment" },
        { "/a/x{id}", "whole segment" },
        { "/a/{id}x", "whole segment" },
        { "/a/{}", "whole segment" },
        { "/a/{{id}}", "name" },
        { "/a/{ID}", "name" },
        { "/a/{i-d}", "name" },
        { "/a/{id1}", "name" },
        { "/{a}/{b}/{c}/{d}/{e}", "too many" },
        { "/a?b", "not allowed" },
        { "/a#b", "not allowed" },
        { "/a b", "not allowed" },
        { "/a%20", "not allowed" },
        { "/a\tb", "not allowed" },
    };
    for (size_t i = 0; i < N_ELEMS(bad); i++) {
        const char *why = NULL;
        if (url_template_valid(bad[i].tpl, &why))
            fail_msg("\"%s\" accepted", bad[i].tpl);
        assert_non_null(why);
        if (strstr(why, bad[i].why) == NULL)
            fail_msg("\"%s\": reason \"%s\" does not mention \"%s\"", bad[i].tpl, why, bad[i].why);
    }
}

/* --- url_template_match ------------------------------------------------------ */

static void test_match_literal(void **state)
{
    struct url_params params;
    assert_int_equal(url_template_match("/v1/sessions", STR_LIT("/v1/sessions"), &params), 2);
    assert_int_equal(params.n, 0);
    assert_int_equal(url_template_match("/v1/sessions", STR_LIT("/v1/sessions/"), &params), -1);
    assert_int_equal(url_template_match("/v1/sessions", STR_LIT("/v1/session"), &params), -1);
    assert_int_equal(url_template_match("/v1/sessions", STR_LIT("/v1/sessionsx"), &params), -1);
    assert_int_equal(url_template_match("/v1/sessions", STR_LIT("/v1/sessions/x"), &params), -1);
    assert_int_equal(url_template_match("/v1/sessions", STR_LIT("/v1"), &params), -1);
    assert_int_equal(url_template_match("/v1/sessions", STR_LIT("/V1/sessions"), &params), -1);
    assert_int_equal(url_template_match("/v1/sessions", STR_LIT("v1/sessions"), &params), -1);
    assert_int_equal(url_template_match("/v1/sessions", STR_LIT(""), &params), -1);
    assert_true(url_template_match("/", STR_LIT("/"), &params) >= 0);
    assert_int_equal(url_template_match("/", STR_LIT("/a"), &params), -1);
    assert_int_equal(url_template_match("/", STR_LIT(""), &params), -1);
    assert_int_equal(url_template_match("/a", STR_LIT("/"), &params), -1);
}

static void test_match_placeholder(void **state)
{
    struct url_params params;
    str_t v;
    assert_int_equal(url_template_match("/v1/sessions/{id}", STR_LIT("/v1/sessions/abc"), &params),
                     2);
    assert_int_equal(params.n, 1);
    assert_str_eq(params.name[0], "id");
    assert_str_eq(params.value[0], "abc");
    assert_true(url_params_get(&params, "id", &v));
    assert_str_eq(v, "abc");
    assert_false(url_params_get(&params, "i", &v));
    assert_false(url_params_get(&params, "idx", &v));

    /* An empty segment is not a value; a trailing slash is one more segment. */
    assert_int_equal(url_template_match("/v1/sessions/{id}", STR_LIT("/v1/sessions/"), &params), -1);
    assert_int_equal(url_template_match("/v1/sessions/{id}", STR_LIT("/v1/sessions"), &params), -1);
    assert_int_equal(url_template_match("/v1/sessions/{id}", STR_LIT("/v1/sessions//"), &params),
                     -1);
    assert_int_equal(url_template_match("/v1/sessions/{id}", STR_LIT("/v1/sessions/a/"), &params),
                     -1);
    assert_int_equal(url_template_match("/v1/sessions/{id}", STR_LIT("/v1/sessions/a/b"), &params),
                     -1);
    assert_int_equal(url_template_match("/{id}/x", STR_LIT("//x"), &params), -1);

    /* An encoded slash stays inside its segment, raw. */
    assert_int_equal(url_template_match("/v1/sessions/{id}/events",
                                        STR_LIT("/v1/sessions/a%2Fb/events"), &params),
                     3);
    assert_true(url_params_get(&params, "id", &v));
    assert_str_eq(v, "a%2Fb");
}

static void test_match_several_params(void **state)
{
    struct url_params params;
    str_t v;
    assert_int_equal(url_template_match("/{a}/x/{b}/{c}/{d}", STR_LIT("/1/x/22/333/4444"), &params),
                     1);
    assert_int_equal(params.n, 4);
    static const char *const names[] = { "a", "b", "c", "d" };
    static const char *const values[] = { "1", "22", "333", "4444" };
    for (int i = 0; i < 4; i++) {
        assert_true(url_params_get(&params, names[i], &v));
        assert_str_eq(v, values[i]);
    }
    assert_false(url_params_get(&params, "x", &v));
    assert_int_equal(url_template_match("/{a}/x/{b}", STR_LIT("/1/y/2"), &params), -1);
}

static void test_match_specificity(void **state)
{
    /* A router picks the highest count: the literal "new" beats {id}. */
    struct url_params params;
    str_t path = STR_LIT("/v1/sessions/new");
    int lit = url_template_match("/v1/sessions/new", path, &params);
    int ph = url_template_match("/v1/sessions/{id}", path, &params);
    int two = url_template_match("/v1/{kind}/{id}", path, &params);
    assert_int_equal(lit, 3);
    assert_int_equal(ph, 2);
    assert_int_equal(two, 1);
    assert_true(lit > ph && ph > two);
    assert_int_equal(url_template_match("/v1/sessions/new", STR_LIT("/v1/sessions/old"), &params),
                     -1);
}

/* --- url_template_expand ----------------------------------------------------- */

static void test_expand(void **state)
{
    static const struct {
        const char *tpl, *name, *value, *want;
    } cases[] = {
        { "session:{id}", "id", "abc", "session:abc" },
        { "{id}", "id", "x", "x" },
        { "{id}:{id}", "id", "x", "x:x" },
        { "s:{other}:{id}", "id", "42", "s:{other}:42" },
        { "s:{idx}:{i}", "id", "42", "s:{idx}:{i}" },
        { "a{{id}}b", "id", "X", "a{X}b" },
        { "open{id", "id", "X", "open{id" },
        { "trailing{", "id", "X", "trailing{" },
        { "no placeholders", "id", "X", "no placeholders" },
        { "", "id", "X", "" },
        { "session:{id}", "id", "", "session:" },
        { "k:{id}", "id", "{id}", "k:{id}" }, /* the value is not expanded again */
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        struct buf out = BUF_INIT;
        buf_append_str(&out, ">");
        url_template_expand(cases[i].tpl, cases[i].name, str_cstr(cases[i].value), &out);
        if (strcmp(out.data + 1, cases[i].want) != 0 || out.data[0] != '>')
            fail_msg("expand(\"%s\", %s=\"%s\") = \"%s\", want \"%s\"", cases[i].tpl,
                     cases[i].name, cases[i].value, out.data + 1, cases[i].want);
        assert_int_equal(out.len, 1 + strlen(cases[i].want));
        buf_deinit(&out);
    }
    /* A value with bytes past its length: only `len` bytes are used. */
    struct buf out = BUF_INIT;
    url_template_expand("k:{id}", "id", str_make("abcdef", 3), &out);
    assert_string_equal(out.data, "k:abc");
    buf_deinit(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_good),
        cmocka_unit_test(test_decode_appends),
        cmocka_unit_test(test_decode_bad_escapes),
        cmocka_unit_test(test_decode_to_fixed_buffer),
        cmocka_unit_test(test_query_next),
        cmocka_unit_test(test_query_key_without_equals),
        cmocka_unit_test(test_template_valid_good),
        cmocka_unit_test(test_template_valid_bad),
        cmocka_unit_test(test_match_literal),
        cmocka_unit_test(test_match_placeholder),
        cmocka_unit_test(test_match_several_params),
        cmocka_unit_test(test_match_specificity),
        cmocka_unit_test(test_expand),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
