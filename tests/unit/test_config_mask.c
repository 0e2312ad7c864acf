/*
 * test_config_mask: config_mask_value (daemon/config.c), the one place that
 * decides what of a config value may be printed. The integration tests in
 * tests/integration/test_secrets.py check the printed errors and logs; this
 * covers the value shapes one by one.
 */
#include "unit.h"

#include <stdlib.h>

#include "daemon/config_table.h"

static void check(enum cfg_type type, const char *value, const char *want)
{
    struct buf out = BUF_INIT;
    config_mask_value(type, value, &out);
    assert_str_eq(str_make(out.data, out.len), want);
    buf_deinit(&out);
}

static void test_secret_is_masked_whole(void **state)
{
    (void)state;
    check(CFG_SECRET, "change-me", "***");
    check(CFG_SECRET, "", "***");
    check(CFG_SECRET, "a=b c", "***");
}

static void test_other_types_print_as_written(void **state)
{
    (void)state;
    check(CFG_INT, "42", "42");
    check(CFG_STR, "password=x", "password=x");
    check(CFG_ADDR, "127.0.0.1:8080", "127.0.0.1:8080");
}

static void test_redis_url(void **state)
{
    (void)state;
    check(CFG_REDIS_URL, "redis://user:S3cretPw@127.0.0.1:notaport/0",
          "redis://user:***@127.0.0.1:notaport/0");
    check(CFG_REDIS_URL, "redis://:pw@h:6379/0", "redis://:***@h:6379/0");
    /* The password may hold '/' and '@': the last '@' ends it. */
    check(CFG_REDIS_URL, "redis://:p/w@x@h:1/0", "redis://:***@h:1/0");
    /* No ':' in the userinfo: all of it may be a password. */
    check(CFG_REDIS_URL, "redis://tokenonly@h", "redis://***@h");
    check(CFG_REDIS_URL, "redis://h:6379/0", "redis://h:6379/0");
    /* A missing scheme is still masked. */
    check(CFG_REDIS_URL, "user:pw@h:1", "user:***@h:1");
    check(CFG_REDIS_URL, "", "");
}

static void test_http_url(void **state)
{
    (void)state;
    check(CFG_HTTP_URL, "http://u:pass@app:8000", "http://u:***@app:8000");
    check(CFG_HTTP_URL, "http://app:8000/?x=1&password=zz&api_token=t#f",
          "http://app:8000/?x=1&password=***&api_token=***#f");
    check(CFG_HTTP_URL, "http://app:8000", "http://app:8000");
}

static void test_conninfo_keywords(void **state)
{
    (void)state;
    check(CFG_CONNINFO, "host=h password=S3cretPw user=u", "host=h password=*** user=u");
    check(CFG_CONNINFO, "password = 'a b\\' c' host=h", "password = *** host=h");
    check(CFG_CONNINFO, "password=p\\ q host=h", "password=*** host=h");
    check(CFG_CONNINFO, "password='unterminated host=h", "password=***");
    check(CFG_CONNINFO, "sslpassword=x dbname=app", "sslpassword=*** dbname=app");
    /* Malformed: a missing '=' after password still hides the next word ... */
    check(CFG_CONNINFO, "password S3cretPw host=h", "password *** host=h");
    /* ... a stray word may be a password without its key ... */
    check(CFG_CONNINFO, "host=h S3cretPw", "host=h ***");
    /* ... and does not swallow the key after it. */
    check(CFG_CONNINFO, "hostx password=y", "*** password=***");
    /* A dbname holding a conninfo is expanded by libpq: hide all of it. */
    check(CFG_CONNINFO, "dbname='host=h password=x' user=u", "dbname=*** user=u");
    check(CFG_CONNINFO, "dbname=app user=u", "dbname=app user=u");
    check(CFG_CONNINFO, "mydb", "mydb");
}

static void test_conninfo_uri(void **state)
{
    (void)state;
    check(CFG_CONNINFO, "postgresql://app:S3cretPw@127.0.0.1:5432/app",
          "postgresql://app:***@127.0.0.1:5432/app");
    check(CFG_CONNINFO, "postgres://h/db?sslmode=require&password=x",
          "postgres://h/db?sslmode=require&password=***");
    check(CFG_CONNINFO, "postgresql://h1,h2/db", "postgresql://h1,h2/db");
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
