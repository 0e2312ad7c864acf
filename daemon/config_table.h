/*
 * config_table: the table of every setting, and how each type is parsed.
 * Internal to the config module (config.c and config_table.c).
 */
#ifndef BATCHD_CONFIG_TABLE_H
#define BATCHD_CONFIG_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/buf.h"

enum cfg_sect { SECT_BATCHD, SECT_REDIS, SECT_POSTGRES, SECT_UPSTREAM, SECT_RESOURCE, SECT_STREAM,
                SECT_AUTH, SECT_LIST, SECT_CORS, SECT__COUNT };

enum cfg_type {
    CFG_INT,
    CFG_BOOL,
    CFG_STR,        /* any non-empty text */
    CFG_SECRET,     /* text never logged; may be empty */
    CFG_CONNINFO,   /* libpq conninfo or URI; logged with its passwords masked */
    CFG_ADDR,       /* host:port to listen on */
    CFG_ADDR_OPT,   /* same, or empty for "off" */
    CFG_LOG_LEVEL,
    CFG_REDIS_URL,
    CFG_HTTP_URL,
    CFG_PATH,       /* literal URL path prefix, "/v1/sessions" */
    CFG_PATH_TPL,   /* URL path template with {id} */
    CFG_KEY_TPL,    /* Redis key template with {id} */
    CFG_SQL,        /* a statement taking $1 */
    CFG_TPL_LIST,   /* comma-separated URL path templates with {id} */
    CFG_CIDR_LIST,  /* comma-separated addresses or ranges, "127.0.0.1, 10.0.0.0/8, ::1" */
    CFG_STR_OPT,    /* text, may be empty for "not set" */
    CFG_STR_LIST,   /* comma-separated words (file paths, names) */
    CFG_PATH_LIST,  /* comma-separated URL path templates, {id} optional */
    CFG_ACCESS,     /* public | authenticated | owner (enum cfg_access) */
    CFG_HEADER,     /* an HTTP header name, or empty for "off" */
    CFG_CONNINFO_LIST, /* conninfos separated by ';' (struct cfg_list), each as CFG_CONNINFO */
    CFG_ORIGIN_LIST,   /* web origins, "https://app.example.com, http://localhost:3000", or "*" */
    CFG_TOKEN_LIST,    /* HTTP tokens (method or header names), "GET, POST"; "*" allowed */
};

struct cfg_key {
    enum cfg_sect sect;
    const char *name;
    enum cfg_type type;
    int64_t min, max;     /* CFG_INT only */
    const char *def;      /* NULL: required when the section is present */
    bool reload;          /* SIGHUP may change it without a restart */
    size_t off;           /* field in the section's struct */
};

extern const struct cfg_key config_keys[];
extern const size_t config_n_keys;
extern const char *const config_sect_names[SECT__COUNT];
/* True for sections that take a name: [resource NAME]. (config_dump.c) */
bool config_sect_named(enum cfg_sect s);

/* Parses `value` into the key's field of `sect_struct`, releasing what was
 * there. Returns 0, or -1 with the rule that was broken appended to `why`. */
int config_key_set(const struct cfg_key *k, void *sect_struct, const char *value, struct buf *why);
/* Frees what the key's field owns. */
void config_key_release(const struct cfg_key *k, void *sect_struct);
/* Bytes the key's field takes in its struct. */
size_t config_key_size(const struct cfg_key *k);
/* True when the key's field holds the same value in both structs. */
bool config_key_equal(const struct cfg_key *k, const void *a, const void *b);

/* Appends `value`, as written for a key of `type`, to `out` with its secrets
 * replaced by "***": all of a CFG_SECRET, the password of a URL's
 * user:password@ and of password-like query parameters, a conninfo's
 * password= values. Use it for every value that is printed. (config_mask.c) */
void config_mask_value(enum cfg_type type, const char *value, struct buf *out);
/* Replaces the secrets of `value` (as config_mask_value finds them) wherever
 * they appear in `text`, a parser's reason that may quote the value. */
void config_scrub_secrets(enum cfg_type type, const char *value, struct buf *text);

/* A whole number; -1 when v is not one. */
int config_parse_int(const char *v, int64_t *out);
/* Calls fn for each item of a comma- or space-separated list; fn owns the
 * item (a NUL-terminated copy). Stops at the first failure. */
int config_each_item(const char *v, int (*fn)(char *item, void *arg, struct buf *why), void *arg,
                     struct buf *why);

/* Network values (config_net.c). Each returns 0, or -1 with the rule that
 * was broken appended to `why`. */
struct cfg_addr;
struct cfg_redis_url;
struct cfg_http_url;
struct cfg_cidrs;
int config_parse_addr(const char *v, struct cfg_addr *a, struct buf *why);
int config_parse_redis_url(const char *v, struct cfg_redis_url *u, struct buf *why);
int config_parse_http_url(const char *v, struct cfg_http_url *u, struct buf *why);
int config_parse_cidr_list(const char *v, struct cfg_cidrs *l, struct buf *why);

#endif
