/*
 * ids: entity ids as clients send them.
 *
 * An id is 1 to IDS_MAX_LEN bytes of [A-Za-z0-9_.:-]. That is strict on
 * purpose: an id becomes part of a Redis key and of a PostgreSQL array
 * literal, and this alphabet needs no escaping in either.
 */
#ifndef BATCHD_PROTO_IDS_H
#define BATCHD_PROTO_IDS_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/buf.h"

#define IDS_MAX_LEN 128

bool ids_valid(const char *s, size_t n);

/* A list of ids in request order; duplicates are kept. */
struct id_list {
    struct buf bytes;       /* ids back to back */
    uint32_t *off;
    uint8_t *len;
    unsigned n, cap;
};

void id_list_init(struct id_list *l);
void id_list_deinit(struct id_list *l);
/* Empties the list, keeping its memory for the next use. */
void id_list_clear(struct id_list *l);
/* Appends one id. Returns 0, -EINVAL when it is not a valid id, or -E2BIG
 * when the list already holds `max`. */
int id_list_add(struct id_list *l, const char *s, size_t n, unsigned max);
/* Appends each element of "a,b,c" (already percent-decoded). An empty
 * element ("a,,b", a trailing comma) is -EINVAL. */
int id_list_add_csv(struct id_list *l, str_t csv, unsigned max);
static inline str_t id_list_get(const struct id_list *l, unsigned i)
{
    return str_make(l->bytes.data + l->off[i], l->len[i]);
}

/* A PostgreSQL text[] literal, {"a","b"}, built id by id into an empty
 * buffer: ids_pg_array_add for each (valid) id, then ids_pg_array_end. */
void ids_pg_array_add(struct buf *out, const char *id, size_t len);
void ids_pg_array_end(struct buf *out);

#endif
