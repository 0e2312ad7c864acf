/*
 * config_dump: prints the settings table (config_table.c) for tools, as
 * `batchd --settings`: one JSON object a line, one line a key, in table
 * order. tools/gen-man builds batchd.ini(5) from it and checks
 * conf/batchd.ini against it, so the binary stays the one source of truth
 * for names, types, limits, defaults and what a reload may change.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "daemon/config.h"
#include "daemon/config_table.h"

bool config_sect_named(enum cfg_sect s)
{
    return s == SECT_RESOURCE || s == SECT_STREAM || s == SECT_LIST;
}

/* No default case: -Wswitch names a new type that has no name here yet. */
static const char *type_name(enum cfg_type t)
{
    switch (t) {
    case CFG_INT: return "int";
    case CFG_BOOL: return "bool";
    case CFG_STR: return "string";
    case CFG_SECRET: return "secret";
    case CFG_CONNINFO: return "conninfo";
    case CFG_ADDR: return "address";
    case CFG_ADDR_OPT: return "address-or-empty";
    case CFG_LOG_LEVEL: return "log-level";
    case CFG_REDIS_URL: return "redis-url";
    case CFG_HTTP_URL: return "http-url";
    case CFG_PATH: return "url-path";
    case CFG_PATH_TPL: return "url-path-template";
    case CFG_KEY_TPL: return "redis-key-template";
    case CFG_SQL: return "sql";
    case CFG_TPL_LIST: return "url-path-template-list";
    case CFG_CIDR_LIST: return "cidr-list";
    case CFG_STR_OPT: return "string-or-empty";
    case CFG_STR_LIST: return "list";
    case CFG_PATH_LIST: return "url-path-list";
    case CFG_ACCESS: return "access";
    case CFG_HEADER: return "header-or-empty";
    case CFG_CONNINFO_LIST: return "conninfo-list";
    case CFG_ORIGIN_LIST: return "origin-list";
    case CFG_TOKEN_LIST: return "token-list";
    }
    return "unknown";
}

int config_print_settings(FILE *out)
{
    for (size_t i = 0; i < config_n_keys; i++) {
        const struct cfg_key *k = &config_keys[i];
        bool is_int = k->type == CFG_INT;
        json_t *o = json_pack("{s:s, s:b, s:s, s:s, s:o, s:o, s:o, s:b, s:b}",
                              "section", config_sect_names[k->sect],
                              "named", config_sect_named(k->sect),
                              "name", k->name,
                              "type", type_name(k->type),
                              "default", k->def ? json_string(k->def) : json_null(),
                              "min", is_int ? json_integer(k->min) : json_null(),
                              "max", is_int ? json_integer(k->max) : json_null(),
                              "required", k->def == NULL,
                              "reload", k->reload);
        if (o == NULL)
            return -1;
        char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (line == NULL)
            return -1;
        fprintf(out, "%s\n", line);
        free(line);
    }
    return fflush(out) == 0 ? 0 : -1;
}
