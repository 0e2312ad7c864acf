/*
 * test_config_mask: config_mask_value (daemon/config.c), the one place that
 * decides what of a config value may be printed. The integration tests in
 * tests/integration/test_secrets.py check the printed errors and logs; this
 * covers the value shapes one by one.
 */
#include "unit.h"

#include <stdlib.h>

#include "daemon/config_table.h"

struct mask_case {
    enum cfg_type type;
    const char *value;
    const char *want; /* what config_mask_value prints for it */
};

/* Each case in turn: what config_mask_value prints must be its want. A
 * failure names the case's value before the two strings. */
static void check_cases(const struct mask_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct buf out = BUF_INIT;
        config_mask_value(cases[i].type, cases[i].value, &out);
        str_t got = str_make(out.data, out.len);
        if (!str_eq(got, str_cstr(cases[i].want)))
            print_error("value \"%s\":\n", cases[i].value);
        assert_str_eq(got, cases[i].want);
        buf_deinit(&out);
    }
}

#define CHECK_CASES(cases) check_cases((cases), sizeof(cases) / sizeof((cases)[0]))

static void test_secret_is_masked_whole(void **state)
{
    (void)state;
    static const struct mask_case cases[] = {
        { CFG_SECRET, "change-me", "***" },
        { CFG_SECRET, "", "***" },
        { CFG_SECRET, "a=b c", "***" },
    };
    CHECK_CASES(cases);
}

static void test_other_types_print_as_written(void **state)
{
    (void)state;
    static const struct mask_case cases[] = {
        { CFG_INT, "42", "42" },
        { CFG_STR, "password=x", "password=x" },
        { CFG_ADDR, "127.0.0.1:8080", "127.0.0.1:8080" },
    };
    CHECK_CASES(cases);
}

static void test_redis_url(void **state)
{
    (void)state;
    static const struct mask_case cases[] = {
        { CFG_REDIS_URL, "redis://user:S3cretPw@127.0.0.1:notaport/0",
          "redis://user:***@127.0.0.1:notaport/0" },
        { CFG_REDIS_URL, "redis://:pw@h:6379/0", "redis://:***@h:6379/0" },
        /* The password may hold '/' and '@': the last '@' ends it. */
        { CFG_REDIS_URL, "redis://:p/w@x@h:1/0", "redis://:***@h:1/0" },
        /* No ':' in the userinfo: all of it may be a password. */
        { CFG_REDIS_URL, "redis://tokenonly@h", "redis://***@h" },
        { CFG_REDIS_URL, "redis://h:6379/0", "redis://h:6379/0" },
        /* A missing scheme is still masked. */
        { CFG_REDIS_URL, "user:pw@h:1", "user:***@h:1" },
        { CFG_REDIS_URL, "", "" },
    };
    CHECK_CASES(cases);
}

static void test_http_url(void **state)
{
    (void)state;
    static const struct mask_case cases[] = {
        { CFG_HTTP_URL, "http://u:pass@app:8000", "http://u:***@app:8000" },
        { CFG_HTTP_URL, "http://app:8000/?x=1&password=zz&api_token=t#f",
          "http://app:8000/?x=1&password=***&api_token=***#f" },
        { CFG_HTTP_URL, "http://app:8000", "http://app:8000" },
    };
    CHECK_CASES(cases);
}

static void test_conninfo_keywords(void **state)
{
    (void)state;
    static const struct mask_case cases[] = {
        { CFG_CONNINFO, "host=h password=S3cretPw user=u", "host=h password=*** user=u" },
        { CFG_CONNINFO, "password = 'a b\\' c' host=h", "password = *** host=h" },
        { CFG_CONNINFO, "password=p\\ q host=h", "password=*** host=h" },
        { CFG_CONNINFO, "password='unterminated host=h", "password=***" },
        { CFG_CONNINFO, "sslpassword=x dbname=app", "sslpassword=*** dbname=app" },
        /* Malformed: a missing '=' after password still hides the next word ... */
        { CFG_CONNINFO, "password S3cretPw host=h", "password *** host=h" },
        /* ... a stray word may be a password without its key ... */
        { CFG_CONNINFO, "host=h S3cretPw", "host=h ***" },
        /* ... and does not swallow the key after it. */
        { CFG_CONNINFO, "hostx password=y", "*** password=***" },
        /* A dbname holding a conninfo is expanded by libpq: hide all of it. */
        { CFG_CONNINFO, "dbname='host=h password=x' user=u", "dbname=*** user=u" },
        { CFG_CONNINFO, "dbname=app user=u", "dbname=app user=u" },
        { CFG_CONNINFO, "mydb", "mydb" },
    };
    CHECK_CASES(cases);
}

static void test_conninfo_uri(void **state)
{
    (void)state;
    static const struct mask_case cases[] = {
        { CFG_CONNINFO, "postgresql://app:S3cretPw@127.0.0.1:5432/app",
          "postgresql://app:***@127.0.0.1:5432/app" },
        { CFG_CONNINFO, "postgres://h/db?sslmode=require&password=x",
          "postgres://h/db?sslmode=require&password=***" },
        { CFG_CONNINFO, "postgresql://h1,h2/db", "postgresql://h1,h2/db" },
    };
    CHECK_CASES(cases);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secret_is_masked_whole),
        cmocka_unit_test(test_other_types_print_as_written),
        cmocka_unit_test(test_redis_url),
        cmocka_unit_test(test_http_url),
        cmocka_unit_test(test_conninfo_keywords),
        cmocka_unit_test(test_conninfo_uri),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
