/*
 * connlist: a list of PostgreSQL connection strings separated by ';'
 * ([postgres] replicas). A ';' inside a single-quoted conninfo value
 * (password='a;b', with libpq's \' and \\ escapes) does not separate.
 * No I/O; the items are then checked by libpq's own parser.
 */
#ifndef BATCHD_PROTO_CONNLIST_H
#define BATCHD_PROTO_CONNLIST_H

#include <stddef.h>

struct connlist_item {
    size_t off, len;    /* into the value, spaces around it trimmed */
};

/* Why connlist_split refused a value. */
enum connlist_error {
    CONNLIST_EMPTY_ITEM = -1,   /* ";;", a leading or trailing ';' */
    CONNLIST_TOO_MANY = -2,     /* more than max items */
    CONNLIST_OPEN_QUOTE = -3,   /* a quote that never closes */
};

/* Splits v into out[0..n); returns n (0 for a value of only spaces) or a
 * negative enum connlist_error. */
int connlist_split(const char *v, struct connlist_item *out, unsigned max);

#endif
