/*
 * test_json: string escaping and the validator (proto/jtext.h).
 *
 * Documents are written with explicit lengths so that NUL bytes and invalid
 * UTF-8 can be part of them.
 */
#include "unit.h"

#include <stdlib.h>

#include "proto/jtext.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

struct doc {
    const char *s;
    size_t n;
};
#define DOC(lit) { (lit), sizeof(lit) - 1 }

/* A heap copy of exactly d.n bytes (free it), so that ASan sees any read
 * past the end; a string literal would have its NUL there. */
static char *exact(struct doc d)
{
    char *copy = malloc(d.n ? d.n : 1);
    assert_non_null(copy);
    memcpy(copy, d.s, d.n);
    return copy;
}

/* --- jtext_append_string ------------------------------------------------------ */

static const struct {
    struct doc in;
    const char *want;
} escape_cases[] = {
    { DOC(""), "\"\"" },
    { DOC("abc"), "\"abc\"" },
    { DOC("a\"b\\c"), "\"a\\\"b\\\\c\"" },
    { DOC("/"), "\"/\"" },
    { DOC("\n\r\t\b\f"), "\"\\n\\r\\t\\b\\f\"" },
    { DOC("\x01\x1f"), "\"\\u0001\\u001f\"" },
    { DOC("\x0b\x1b"), "\"\\u000b\\u001b\"" },
    { DOC("a\0b"), "\"a\\u0000b\"" },
    { DOC("\x7f"), "\"\x7f\"" },
    /* Valid UTF-8 passes through, including each length's first and last
     * code point and those next to the surrogate range. */
    { DOC("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"), "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"" },
    { DOC("\xc2\x80\xdf\xbf"), "\"\xc2\x80\xdf\xbf\"" },
    { DOC("\xe0\xa0\x80\xef\xbf\xbf"), "\"\xe0\xa0\x80\xef\xbf\xbf\"" },
    { DOC("\xed\x9f\xbf\xee\x80\x80"), "\"\xed\x9f\xbf\xee\x80\x80\"" },
    { DOC("\xf0\x90\x80\x80\xf4\x8f\xbf\xbf"), "\"\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"" },
    /* Each invalid byte becomes one U+FFFD. */
    { DOC("\x80"), "\"\\ufffd\"" },
    { DOC("a\xc3"), "\"a\\ufffd\"" },              /* truncated at the end */
    { DOC("\xc3("), "\"\\ufffd(\"" },              /* bad continuation */
    { DOC("\xe2\x82"), "\"\\ufffd\\ufffd\"" },     /* truncated 3-byte */
    { DOC("\xc0\x80"), "\"\\ufffd\\ufffd\"" },     /* overlong NUL */
    { DOC("\xc1\xbf"), "\"\\ufffd\\ufffd\"" },     /* overlong 2-byte */
    { DOC("\xe0\x80\xaf"), "\"\\ufffd\\ufffd\\ufffd\"" },           /* overlong 3-byte */
    { DOC("\xf0\x80\x80\xaf"), "\"\\ufffd\\ufffd\\ufffd\\ufffd\"" }, /* overlong 4-byte */
    { DOC("\xed\xa0\x80"), "\"\\ufffd\\ufffd\\ufffd\"" },           /* U+D800 */
    { DOC("\xed\xbf\xbf"), "\"\\ufffd\\ufffd\\ufffd\"" },           /* U+DFFF */
    { DOC("\xf4\x90\x80\x80"), "\"\\ufffd\\ufffd\\ufffd\\ufffd\"" }, /* above U+10FFFF */
    { DOC("\xf5\x80\x80\x80"), "\"\\ufffd\\ufffd\\ufffd\\ufffd\"" },
    { DOC("\xff\xfe"), "\"\\ufffd\\ufffd\"" },
    { DOC("ok\xe2\x82\xacok\x80ok"), "\"ok\xe2\x82\xacok\\ufffdok\"" },
};

static void test_append_string(void **state)
{
    for (size_t i = 0; i < N_ELEMS(escape_cases); i++) {
        struct buf out = BUF_INIT;
        char *in = exact(escape_cases[i].in);
        jtext_append_string(&out, in, escape_cases[i].in.n);
        free(in);
        if (out.len != strlen(escape_cases[i].want) ||
            memcmp(out.data, escape_cases[i].want, out.len) != 0) {
            print_error("case %zu: ", i);
            assert_bytes_eq(out.data, out.len, escape_cases[i].want, strlen(escape_cases[i].want));
        }
        /* Whatever went in, what comes out is a valid JSON document. */
        if (!jtext_valid(out.data, out.len))
            fail_msg("case %zu: output is not valid JSON", i);
        buf_deinit(&out);
    }
}

static void test_append_string_appends(void **state)
{
    struct buf out = BUF_INIT;
    buf_append_str(&out, "{\"k\":");
    jtext_append_string(&out, "v\n", 2);
    buf_append_char(&out, '}');
    assert_string_equal(out.data, "{\"k\":\"v\\n\"}");
    assert_true(jtext_valid(out.data, out.len));
    buf_deinit(&out);
}

static void test_append_string_every_byte(void **state)
{
    /* All 256 byte values in one string: output valid, ASCII printable kept. */
    char in[256];
    for (int i = 0; i < 256; i++)
        in[i] = (char)i;
    struct buf out = BUF_INIT;
    jtext_append_string(&out, in, sizeof(in));
    assert_true(jtext_valid(out.data, out.len));
    assert_non_null(strstr(out.data, "\\u0000\\u0001"));
    assert_non_null(strstr(out.data, " !\\\"#$"));
    assert_non_null(strstr(out.data, "[\\\\]^_`abc"));
    buf_deinit(&out);
}

static void test_utf8_seq_len(void **state)
{
    static const struct {
        struct doc s;
        size_t want;
    } cases[] = {
        { DOC("a"), 1 },
        { DOC("\xc3\xa9"), 2 },
        { DOC("\xe2\x82\xac"), 3 },
        { DOC("\xf0\x9f\x98\x80"), 4 },
        { DOC("\xe2\x82\xac" "rest"), 3 },
        { DOC("\xc3"), 0 },
        { DOC("\xe2\x82"), 0 },
        { DOC("\x80"), 0 },
        { DOC("\xc0\x80"), 0 },
        { DOC("\xed\xa0\x80"), 0 },
        { DOC("\xf4\x90\x80\x80"), 0 },
        { DOC("\xf8\x88\x80\x80\x80"), 0 },
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        char *s = exact(cases[i].s);
        size_t got = jtext_utf8_seq_len((const unsigned char *)s, cases[i].s.n);
        free(s);
        if (got != cases[i].want)
            fail_msg("case %zu: got %zu, want %zu", i, got, cases[i].want);
    }
}

/* --- jtext_valid ---------------------------------------------------------------- */

static const struct doc valid_docs[] = {
    DOC("0"), DOC("-0"), DOC("1"), DOC("-1"), DOC("123"), DOC("1e5"), DOC("1E5"),
    DOC("1e+5"), DOC("1e-5"), DOC("-0.0"), DOC("0.5"), DOC("1.5e10"), DOC("-1.25E-3"),
    DOC("0e0"), DOC("12345678901234567890123456789"), DOC("1e999"),
    DOC("true"), DOC("false"), DOC("null"),
    DOC("\"\""), DOC("\"abc\""), DOC("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\""), DOC("\"\\u0041\""),
    DOC("\"\\uD83D\\uDE00\""), DOC("\"\\u00e9\\u00E9\""), DOC("\"\\u0000\""),
    DOC("\"\xc3\xa9\""), DOC("\"\xf0\x9f\x98\x80\""), DOC("\"\x7f\""), DOC("\"'\""),
    DOC("[]"), DOC("[ ]"), DOC("{}"), DOC("{ }"), DOC("[1,2,3]"), DOC("[1, [2, [3, []]]]"),
    DOC("{\"a\":1}"), DOC("{\"a\":{\"b\":[true,false,null]}}"), DOC("{\"\":0}"),
    DOC("{\"a\":1,\"a\":2}"), DOC("[{}]"), DOC("[[[[[]]]]]"), DOC("[\"a\",{\"b\":\"c\"}]"),
    DOC("[-0,0e0,0E-0,-1.5e+3]"),
    DOC("  1  "), DOC("\t\n\r 1 \r\n\t"), DOC(" [ 1 , 2 ] "), DOC("{ \"a\" : 1 , \"b\" : 2 }"),
    DOC("\n{\n  \"k\": [\n    \"v\"\n  ]\n}\n"),
};

static const struct doc invalid_docs[] = {
    DOC(""), DOC(" "), DOC("\n\t"),
    /* numbers */
    DOC("01"), DOC("-01"), DOC("00"), DOC("1."), DOC(".5"), DOC("-"), DOC("+1"), DOC("1e"),
    DOC("1e+"), DOC("1E-"), DOC("0x10"), DOC("1.e5"), DOC("--1"), DOC("-a"), DOC("1e5.0"),
    DOC("NaN"), DOC("Infinity"), DOC("-Infinity"), DOC("[01]"), DOC("[1.]"), DOC("{\"a\":-}"),
    /* literals */
    DOC("tru"), DOC("truex"), DOC("nul"), DOC("True"), DOC("NULL"), DOC("f"),
    /* strings */
    DOC("\"abc"), DOC("\""), DOC("'abc'"), DOC("\"\\x\""), DOC("\"\\u12\""),
    DOC("\"\\u12G4\""), DOC("\"\\u\""), DOC("\"\\u00e\""), DOC("\"\\\""), DOC("\"\\"),
    DOC("\"\\U0041\""), DOC("\"\\u004"),
    DOC("\"a\tb\""), DOC("\"\x01\""), DOC("\"\x1f\""), DOC("\"a\nb\""), DOC("\"a\0b\""),
    DOC("\"\x80\""), DOC("\"\xc3\""), DOC("\"\xc3(\""), DOC("\"\xc0\x80\""),
    DOC("\"\xed\xa0\x80\""), DOC("\"\xf4\x90\x80\x80\""), DOC("\"\xff\""),
    /* structure */
    DOC("["), DOC("{"), DOC("]"), DOC("}"), DOC("[1,]"), DOC("[,1]"), DOC("[1,,2]"),
    DOC("{\"a\":1,}"), DOC("{,}"), DOC("{\"a\"}"), DOC("{\"a\":}"), DOC("{a:1}"), DOC("{1:1}"),
    DOC("{\"a\" 1}"), DOC("[1 2]"), DOC("[1]]"), DOC("[[1]"), DOC("{\"a\":1]"), DOC("[1}"),
    DOC("{\"a\":1 \"b\":2}"), DOC("[1]x"), DOC("{}{}"),
    /* more than one value, or junk around one */
    DOC("1 2"), DOC("\"a\" \"b\""), DOC("1\0"), DOC("\0" "1"), DOC("\xef\xbb\xbf" "1"),
    DOC("//c\n1"), DOC("\f1"), DOC("\v1"), DOC("\xa0" "1"),
};

static bool valid_exact(struct doc d)
{
    char *copy = exact(d);
    bool ok = jtext_valid(copy, d.n);
    free(copy);
    return ok;
}

static void test_valid_table(void **state)
{
    assert_true(N_ELEMS(valid_docs) >= 40);
    assert_true(N_ELEMS(invalid_docs) >= 40);
    for (size_t i = 0; i < N_ELEMS(valid_docs); i++) {
        if (!valid_exact(valid_docs[i])) {
            print_error("rejected: \"");
            print_escaped(valid_docs[i].s, valid_docs[i].n);
            fail_msg("\" (valid_docs[%zu])", i);
        }
    }
    for (size_t i = 0; i < N_ELEMS(invalid_docs); i++) {
        if (valid_exact(invalid_docs[i])) {
            print_error("accepted: \"");
            print_escaped(invalid_docs[i].s, invalid_docs[i].n);
            fail_msg("\" (invalid_docs[%zu])", i);
        }
    }
}

static void test_valid_respects_length(void **state)
{
    /* Only n bytes are read: a valid prefix of a longer string is judged alone. */
    assert_true(jtext_valid("[1]garbage", 3));
    assert_false(jtext_valid("[1]", 2));
    assert_true(jtext_valid("12", 1));
    assert_false(jtext_valid("\"\\u0041\"", 7));
    assert_false(jtext_valid("true", 3));
}

/* Builds `depth` nested containers: "[[...]]" or {"a":{"a":...{}}}. */
static char *nested(int depth, bool objects, size_t *len)
{
    struct buf b = BUF_INIT;
    for (int i = 0; i < depth; i++)
        buf_append_str(&b, objects ? (i + 1 < depth ? "{\"a\":" : "{") : "[");
    for (int i = 0; i < depth; i++)
        buf_append_char(&b, objects ? '}' : ']');
    *len = b.len;
    return b.data;
}

static void test_valid_depth(void **state)
{
    for (int objects = 0; objects <= 1; objects++) {
        size_t n;
        char *s = nested(JTEXT_MAX_DEPTH, objects, &n);
        assert_true(jtext_valid(s, n));
        free(s);
        s = nested(JTEXT_MAX_DEPTH + 1, objects, &n);
        assert_false(jtext_valid(s, n));
        free(s);
    }
    /* Depth is the current nesting, not how many containers were opened. */
    struct buf b = BUF_INIT;
    buf_append_char(&b, '[');
    for (int i = 0; i < 3 * JTEXT_MAX_DEPTH; i++)
        buf_append_str(&b, i ? ",[[]]" : "[[]]");
    buf_append_char(&b, ']');
    assert_true(jtext_valid(b.data, b.len));
    buf_deinit(&b);
    /* Deeply nested but never closed: rejected without reading past the end. */
    size_t n;
    char *s = nested(JTEXT_MAX_DEPTH, false, &n);
    assert_false(jtext_valid(s, JTEXT_MAX_DEPTH));
    free(s);
}


static void test_valid_cached_agrees(void **state)
{
    (void)state;
    static const char *const docs[] = { "{\"a\":1}", "[1,2,3]", "\"x\"", "{bad", "[1,]", "", "null",
                                        "{\"id\":\"s1\",\"n\":[true,false,null]}", "\"\xff\"" };
    jtext_cache_seed(12345);
    for (int round = 0; round < 3; round++) /* second and third rounds hit the memo */
        for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++)
            assert_int_equal(jtext_valid_cached(docs[i], strlen(docs[i])), jtext_valid(docs[i], strlen(docs[i])));
}

/* More documents than the memo has slots, so pairs fill and evict: an
 * invalid document must never be taken for a remembered valid one. */
static void test_valid_cached_under_eviction(void **state)
{
    (void)state;
    jtext_cache_seed(99);
    char doc[32];
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 100000; i++) {
            bool valid = i % 3 != 0;
            int n = snprintf(doc, sizeof(doc), valid ? "{\"i\":%d}" : "{\"i\":%d", i);
            assert_int_equal(jtext_valid_cached(doc, (size_t)n), valid);
        }
}

static void test_hash_depends_on_every_byte_and_seed(void **state)
{
    (void)state;
    char doc[64];
    for (size_t n = 1; n < sizeof(doc); n++) {
        memset(doc, 'a', n);
        uint64_t h = jtext_hash(doc, n, 7);
        assert_true(h & 1);
        for (size_t i = 0; i < n; i++) {
            doc[i] = 'b';
            assert_true(jtext_hash(doc, n, 7) != h);
            doc[i] = 'a';
        }
        assert_true(jtext_hash(doc, n, 8) != h);
        if (n > 1)
            assert_true(jtext_hash(doc, n - 1, 7) != h);
    }
}

/* field(doc, name) -> the value's text, "" when absent, NULL when malformed. */
static const char *field(const char *doc, const char *name, char *out, size_t cap)
{
    const char *v;
    size_t n;
    int rc = jtext_object_field(doc, strlen(doc), name, strlen(name), &v, &n);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        n = 0;
    assert_true(n < cap);
    memcpy(out, v, n);
    out[n] = '\0';
    return out;
}

static void test_object_field(void **state)
{
    char b[256];
    assert_string_equal(field("{\"id\":\"s1\",\"owner_id\":\"alice\"}", "owner_id", b, sizeof(b)), "\"alice\"");
    assert_string_equal(field(" { \"owner_id\" : 42 , \"x\":1}", "owner_id", b, sizeof(b)), "42");
    /* Nested members of the same name are not the top-level one. */
    assert_string_equal(field("{\"a\":{\"owner_id\":\"mallory\"},\"b\":[\"owner_id\",{\"owner_id\":1}],"
                              "\"owner_id\":\"bob\"}", "owner_id", b, sizeof(b)), "\"bob\"");
    /* Brackets and quotes inside strings do not confuse the skipping. */
    assert_string_equal(field("{\"t\":\"}]{[\\\"\",\"owner_id\":true}", "owner_id", b, sizeof(b)), "true");
    /* An escaped key matches its decoded form; the first match wins. */
    assert_string_equal(field("{\"owner\\u005fid\":\"x\",\"owner_id\":\"y\"}", "owner_id", b, sizeof(b)), "\"x\"");
    assert_string_equal(field("{\"id\":1}", "owner_id", b, sizeof(b)), "");
    assert_string_equal(field("{}", "owner_id", b, sizeof(b)), "");
    assert_null(field("[{\"owner_id\":1}]", "owner_id", b, sizeof(b)));
    assert_null(field("\"owner_id\"", "owner_id", b, sizeof(b)));
    assert_null(field("{\"owner_id\"", "owner_id", b, sizeof(b)));
    assert_null(field("{\"a\":[1,2", "owner_id", b, sizeof(b)));
    assert_null(field("", "owner_id", b, sizeof(b)));
}

static void test_string_equals(void **state)
{
    assert_true(jtext_string_equals("\"alice\"", 7, "alice", 5));
    assert_false(jtext_string_equals("\"alice\"", 7, "alic", 4));
    assert_false(jtext_string_equals("\"alic\"", 6, "alice", 5));
    assert_true(jtext_string_equals("\"a\\\"b\"", 6, "a\"b", 3));
    assert_true(jtext_string_equals("\"\\u00e9\"", 8, "\xc3\xa9", 2));
    assert_true(jtext_string_equals("\"\\ud83d\\ude00\"", 14, "\xf0\x9f\x98\x80", 4));
    assert_false(jtext_string_equals("\"\\ud83d\"", 8, "?", 1));        /* lone surrogate */
    assert_false(jtext_string_equals("\"\\ude00\"", 8, "?", 1));
    assert_true(jtext_string_equals("\"\\u0000\"", 8, "\0", 1));
    assert_false(jtext_string_equals("alice", 5, "alice", 5));         /* not a literal */
    assert_false(jtext_string_equals("\"alice", 6, "alice", 5));       /* unterminated */
    assert_false(jtext_string_equals("\"a\"b\"", 5, "a", 1));          /* bytes after the quote */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_cached_agrees),
        cmocka_unit_test(test_valid_cached_under_eviction),
        cmocka_unit_test(test_hash_depends_on_every_byte_and_seed),
        cmocka_unit_test(test_append_string),
        cmocka_unit_test(test_append_string_appends),
        cmocka_unit_test(test_append_string_every_byte),
        cmocka_unit_test(test_utf8_seq_len),
        cmocka_unit_test(test_valid_table),
        cmocka_unit_test(test_valid_respects_length),
        cmocka_unit_test(test_valid_depth),
        cmocka_unit_test(test_object_field),
        cmocka_unit_test(test_string_equals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
