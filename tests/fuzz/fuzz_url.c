/*
 * fuzz_url: libFuzzer harness for proto/url.c.
 *
 * The input is used as a percent-encoded string, a query string, a request
 * path matched against a fixed set of route templates, and (up to its first
 * NUL) as a template itself. Each answer is compared with a small, obviously
 * correct reference written here from the contract in url.h; a difference,
 * or a slice that points outside the input, aborts.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/url.h"
#include "tests/fuzz/fuzz.h"

static const char *const templates[] = {
    "/",
    "/healthz",
    "/v1/sessions",
    "/v1/sessions/new",
    "/v1/sessions/{id}",
    "/v1/sessions/{id}/events",
    "/v1/{kind}/{id}",
    "/{a}/{b}/{c}/{d}",
    "/{a}/x/{b}",
};

static bool within(str_t s, const char *base, size_t n)
{
    return s.len == 0 ? (s.p == NULL || (s.p >= base && s.p <= base + n))
                      : (s.p >= base && s.p + s.len <= base + n);
}

static int hexv(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
        return (c | 0x20) - 'a' + 10;
    return -1;
}

/* --- decode ------------------------------------------------------------------- */

static void check_decode(str_t in, bool plus)
{
    struct buf out = BUF_INIT, ref = BUF_INIT;
    int rc = url_decode(in, plus, &out);
    bool ref_ok = true;
    for (size_t i = 0; i < in.len; i++) {
        if (in.p[i] == '%') {
            if (i + 2 >= in.len) {
                ref_ok = false;
                break;
            }
            int hi = hexv(in.p[i + 1]), lo = hexv(in.p[i + 2]);
            if (hi < 0 || lo < 0) {
                ref_ok = false;
                break;
            }
            buf_append_char(&ref, (char)(hi * 16 + lo));
            i += 2;
        } else {
            buf_append_char(&ref, plus && in.p[i] == '+' ? ' ' : in.p[i]);
        }
    }
    CHECK(rc == 0 || rc == -EINVAL);
    CHECK((rc == 0) == ref_ok);
    if (rc == 0) {
        CHECK(out.len == ref.len);
        CHECK(out.len == 0 || memcmp(out.data, ref.data, out.len) == 0);
        CHECK(out.len <= in.len);
        /* Encoding every byte and decoding again gives the same bytes. */
        struct buf enc = BUF_INIT, back = BUF_INIT;
        for (size_t i = 0; i < out.len; i++)
            buf_appendf(&enc, "%%%02X", (unsigned char)out.data[i]);
        CHECK(url_decode(buf_str(&enc), plus, &back) == 0);
        CHECK(back.len == out.len && (out.len == 0 || memcmp(back.data, out.data, out.len) == 0));
        buf_deinit(&enc);
        buf_deinit(&back);
    }
    buf_deinit(&out);
    buf_deinit(&ref);
}

/* --- query -------------------------------------------------------------------- */

static void check_query(str_t in)
{
    /* Reference: split on '&', skip empty pieces, split each at the first '='. */
    size_t ref_pairs = 0, start = 0;
    for (size_t i = 0; i <= in.len; i++) {
        if (i == in.len || in.p[i] == '&') {
            ref_pairs += i > start;
            start = i + 1;
        }
    }
    str_t rest = in, k, v;
    size_t pairs = 0;
    const char *last_end = in.p;
    while (url_query_next(&rest, &k, &v)) {
        pairs++;
        CHECK(pairs <= ref_pairs);
        CHECK(within(k, in.p, in.len) && within(v, in.p, in.len));
        CHECK(memchr(k.p, '&', k.len) == NULL && memchr(k.p, '=', k.len) == NULL);
        CHECK(memchr(v.p, '&', v.len) == NULL);
        /* The pair is exactly key, optional "=value", up to a '&' or the end. */
        bool has_eq = v.p == k.p + k.len + 1;
        if (has_eq)
            CHECK(k.p[k.len] == '=');
        else
            CHECK(v.p == k.p + k.len && v.len == 0);
        const char *end = has_eq ? v.p + v.len : k.p + k.len;
        CHECK(end > k.p);                      /* empty pairs are skipped */
        CHECK(k.p >= last_end);                /* pairs come in order */
        CHECK(k.p == in.p || k.p[-1] == '&');  /* and start after a '&' */
        CHECK(end == in.p + in.len || *end == '&');
        last_end = end;
        CHECK(within(rest, in.p, in.len));
    }
    CHECK(pairs == ref_pairs);
    CHECK(rest.len == 0);
}

/* --- templates ---------------------------------------------------------------- */

/* Templates come from inputs under 1024 bytes: at most 512 segments. */
#define N_SEGS 1024

/* Splits "/a/b" into segments; false when s does not start with '/'. */
static bool split_segments(str_t s, str_t *segs, size_t max, size_t *n)
{
    if (s.len == 0 || s.p[0] != '/')
        return false;
    *n = 0;
    size_t start = 1;
    for (size_t i = 1; i <= s.len; i++) {
        if (i == s.len || s.p[i] == '/') {
            if (*n == max)
                return false;
            segs[(*n)++] = str_make(s.p + start, i - start);
            start = i + 1;
        }
    }
    return true;
}

static bool ref_is_placeholder(str_t seg)
{
    return seg.len >= 3 && seg.p[0] == '{' && seg.p[seg.len - 1] == '}';
}

/* The contract of url_template_match, written out directly. */
static int ref_match(const char *tpl, str_t path, str_t *names, str_t *values, unsigned *nv)
{
    static str_t tsegs[N_SEGS], psegs[4096];
    size_t nt, np;
    *nv = 0;
    if (strcmp(tpl, "/") == 0)
        return (path.len == 1 && path.p[0] == '/') ? 1 : -1;
    if (!split_segments(str_cstr(tpl), tsegs, N_SEGS, &nt))
        return -1;
    if (!split_segments(path, psegs, 4096, &np) || np != nt)
        return -1;
    int literals = 0;
    for (size_t i = 0; i < nt; i++) {
        if (ref_is_placeholder(tsegs[i])) {
            if (psegs[i].len == 0 || *nv == URL_MAX_PARAMS)
                return -1;
            names[*nv] = str_make(tsegs[i].p + 1, tsegs[i].len - 2);
            values[(*nv)++] = psegs[i];
        } else {
            if (!str_eq(tsegs[i], psegs[i]))
                return -1;
            literals++;
        }
    }
    return literals;
}

static void check_match(const char *tpl, str_t path)
{
    struct url_params params;
    str_t names[URL_MAX_PARAMS], values[URL_MAX_PARAMS];
    unsigned nv;
    int rc = url_template_match(tpl, path, &params);
    int ref = ref_match(tpl, path, names, values, &nv);
    if (rc != ref) {
        fprintf(stderr, "fuzz_url: match(\"%s\", \"%.*s\") = %d, reference %d\n", tpl,
                (int)path.len, path.p, rc, ref);
        abort();
    }
    if (rc < 0)
        return;
    CHECK(params.n == nv);
    for (unsigned i = 0; i < nv; i++) {
        CHECK(str_eq(params.name[i], names[i]));
        CHECK(str_eq(params.value[i], values[i]));
        CHECK(params.value[i].len > 0 && within(params.value[i], path.p, path.len));
        CHECK(memchr(params.value[i].p, '/', params.value[i].len) == NULL);
        /* url_params_get gives the first capture of that name. */
        char *name = malloc(names[i].len + 1);
        CHECK(name != NULL);
        memcpy(name, names[i].p, names[i].len);
        name[names[i].len] = '\0';
        str_t got;
        CHECK(url_params_get(&params, name, &got));
        free(name);
        unsigned first = 0;
        while (!str_eq(names[first], names[i]))
            first++;
        CHECK(str_eq(got, values[first]));
    }
}

/* The contract of url_template_valid, written out directly. */
static bool ref_valid(const char *tpl)
{
    static str_t segs[N_SEGS];
    size_t n;
    if (strcmp(tpl, "/") == 0)
        return true;
    if (!split_segments(str_cstr(tpl), segs, N_SEGS, &n))
        return false;
    unsigned params = 0;
    for (size_t i = 0; i < n; i++) {
        str_t s = segs[i];
        if (s.len == 0)
            return false;
        if (ref_is_placeholder(s)) {
            for (size_t j = 1; j + 1 < s.len; j++)
                if (!((s.p[j] >= 'a' && s.p[j] <= 'z') || s.p[j] == '_'))
                    return false;
            if (++params > URL_MAX_PARAMS)
                return false;
            continue;
        }
        for (size_t j = 0; j < s.len; j++) {
            unsigned char c = (unsigned char)s.p[j];
            if (c == '{' || c == '}' || c == '?' || c == '#' || c == '%' || c <= 0x20)
                return false;
        }
    }
    return true;
}

static void ref_expand(const char *tpl, const char *name, str_t value, struct buf *out)
{
    char pat[80];
    snprintf(pat, sizeof(pat), "{%s}", name);
    const char *p = tpl, *hit;
    while ((hit = strstr(p, pat)) != NULL) {
        buf_append(out, p, (size_t)(hit - p));
        buf_append(out, value.p, value.len);
        p = hit + strlen(pat);
    }
    buf_append_str(out, p);
}

static void check_template(const char *tpl)
{
    const char *why = NULL;
    bool ok = url_template_valid(tpl, &why);
    if (ok != ref_valid(tpl)) {
        fprintf(stderr, "fuzz_url: url_template_valid(\"%s\") = %d\n", tpl, ok);
        abort();
    }
    CHECK(ok || (why != NULL && why[0] != '\0'));

    /* Expansion agrees with plain search-and-replace, for "id" and for the
     * template's own first placeholder name. */
    char first[64] = "id";
    const char *open = strchr(tpl, '{'), *close = open ? strchr(open, '}') : NULL;
    if (open && close && (size_t)(close - open - 1) < sizeof(first)) {
        memcpy(first, open + 1, (size_t)(close - open - 1));
        first[close - open - 1] = '\0';
    }
    const char *names[] = { "id", first };
    for (int i = 0; i < 2; i++) {
        struct buf got = BUF_INIT, want = BUF_INIT;
        url_template_expand(tpl, names[i], STR_LIT("V"), &got);
        ref_expand(tpl, names[i], STR_LIT("V"), &want);
        CHECK(got.len == want.len && (got.len == 0 || memcmp(got.data, want.data, got.len) == 0));
        buf_deinit(&got);
        buf_deinit(&want);
    }

    if (!ok)
        return;
    /* A valid template matches the path made by filling its placeholders. */
    struct buf path = BUF_INIT;
    unsigned n_ph = 0;
    int literals = 0;
    static str_t segs[N_SEGS];
    size_t n = 0;
    if (strcmp(tpl, "/") != 0)
        CHECK(split_segments(str_cstr(tpl), segs, N_SEGS, &n));
    for (size_t i = 0; i < n; i++) {
        buf_append_char(&path, '/');
        if (ref_is_placeholder(segs[i]))
            buf_appendf(&path, "v%u", n_ph++);
        else {
            buf_append(&path, segs[i].p, segs[i].len);
            literals++;
        }
    }
    if (n == 0)
        buf_append_char(&path, '/');
    struct url_params params;
    int rc = url_template_match(tpl, buf_str(&path), &params);
    CHECK(rc == (n == 0 ? 1 : literals));
    CHECK(params.n == n_ph);
    check_match(tpl, buf_str(&path));
    buf_deinit(&path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A heap copy of exactly `size` bytes, so reads past the end are caught. */
    char *in = fuzz_copy(data, size);
    str_t s = str_make(in, size);

    check_decode(s, false);
    check_decode(s, true);
    check_query(s);
    for (size_t i = 0; i < sizeof(templates) / sizeof(templates[0]); i++)
        check_match(templates[i], s);

    if (size < 1024) {
        char *tpl = malloc(size + 1);
        if (tpl != NULL) {
            memcpy(tpl, data, size);
            tpl[size] = '\0';
            check_template(tpl); /* up to the first NUL */
            free(tpl);
        }
    }
    free(in);
    return 0;
}
