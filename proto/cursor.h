/*
 * cursor: the opaque cursors of [list] pages, and how a page is kept in
 * the cache. No I/O.
 *
 *   page_query's cursor column        "2026-01-01 00:00:00+00 s42"
 *        │ cursor_encode: version byte + the text, base64url, no padding
 *        ▼
 *   {"next":"ATIwMjYtMDEt…"}  ──client──>  ?after=ATIwMjYtMDEt…
 *        │ cursor_decode: canonical base64url, version, length, text rules
 *        ▼
 *   $2 of the next page_query         "2026-01-01 00:00:00+00 s42"   (or 400)
 *
 * The cursor is opaque so that clients do not build one, and versioned so
 * that its form can change; it is not signed: a client can only ask for its
 * own rows ($1 is its principal), and the text goes as a bound parameter.
 *
 * A page in the cache is one field of a Redis hash per (list, principal):
 *
 *   field  "<query hash> <limit> <cursor|~>[ <param>=<value>]..."
 *   value  "1 <expires ms> <next cursor|~> <n> <id> ... <id>"
 *
 * Every part has an alphabet without the separators (base64url, ids,
 * digits, parameter names), so each page has one field and each field one
 * meaning. The query hash keeps pages of a changed page_query apart.
 */
#ifndef BATCHD_PROTO_CURSOR_H
#define BATCHD_PROTO_CURSOR_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/buf.h"
#include "proto/ids.h"

#define CURSOR_VERSION 1

/* Length of the encoding of a text of `len` bytes. */
size_t cursor_encoded_len(size_t len);
/* A cursor text batchd hands out and takes back: valid UTF-8 with no
 * control bytes (< 0x20, 0x7f), so never a NUL. */
bool cursor_text_valid(const char *text, size_t len);
/* Appends the cursor for text[0..len) to out. */
void cursor_encode(const char *text, size_t len, struct buf *out);
/* Appends the text of cursor `in` to out (NULL: only checks it). Returns
 * 0; -E2BIG when `in` is longer than max_len bytes; -EINVAL when it is not
 * canonical unpadded base64url, its version is not CURSOR_VERSION, or its
 * text is not cursor_text_valid (out is then unchanged). */
int cursor_decode(str_t in, size_t max_len, struct buf *out);

/* --- a page in the cache ------------------------------------------------------ */

/* Appends the field of a page: its query's hash, limit, cursor as the
 * client sent it (.p NULL: the first page), and the declared parameters
 * present (values[i].p NULL: absent), names[i] = values[i] in order.
 * Values must be valid ids and names words ([A-Za-z0-9_]). */
void cursor_page_field(uint32_t query_hash, unsigned limit, str_t cursor, const char *const *names,
                    const str_t *values, unsigned n, struct buf *out);

/* Appends the cached value of a page: its ids (valid ids), the next cursor
 * (.len 0: the last page) and when it stops counting (wall-clock ms). */
void cursor_page_encode(uint64_t expires_ms, str_t next, const struct id_list *ids, struct buf *out);

/* Reads a cached value, which anyone with access to Redis may have
 * written. Returns 0 with the ids appended to `ids` (empty on entry), the
 * next cursor to `next` (empty for the last page) and *expires_ms; or
 * -EINVAL when v is not exactly what cursor_page_encode writes for at most
 * max_ids ids and a next cursor of at most max_next bytes. */
int cursor_page_decode(str_t v, unsigned max_ids, size_t max_next, uint64_t *expires_ms, struct buf *next,
                    struct id_list *ids);

#endif
