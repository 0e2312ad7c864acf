/*
 * sse_parse: incremental line splitting for a text/event-stream body, with
 * no I/O.
 *
 * Bytes arrive in arbitrary pieces (a line, or its CR LF, may be split
 * across reads). The parser keeps only the first SSE_PARSE_KEEP bytes of
 * the current line and counts the rest, so memory per stream is constant
 * however long a data line is. Lines end with CR LF, LF or CR, as the SSE
 * specification allows.
 */
#ifndef SSE_LOAD_SSE_PARSE_H
#define SSE_LOAD_SSE_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SSE_PARSE_KEEP 80

struct sse_parse {
    uint32_t len;               /* bytes of the current line so far */
    uint8_t kept;               /* of which stored in line[] */
    bool cr;                    /* last line ended with CR: skip one LF */
    char line[SSE_PARSE_KEEP];
};

/* Called once per complete line (without its terminator). `line` holds the
 * first `kept` bytes of a line `len` bytes long. Nonzero stops parsing. */
typedef int (*sse_parse_line_cb)(void *ctx, const char *line, size_t kept, size_t len);

/* One "field: value" line split per the SSE rules. Pointers are into the
 * line passed to sse_parse_field. */
struct sse_field {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_kept;          /* bytes of the value available */
    size_t value_len;           /* its full length */
    bool comment;               /* line starts with ':' */
    bool name_cut;              /* the name did not fit in the kept prefix */
};

void sse_parse_init(struct sse_parse *p);

/* Feeds n bytes; calls cb for each line completed. Returns the bytes
 * consumed: n, or fewer when cb stopped the parser (the rest is unread). */
size_t sse_parse_execute(struct sse_parse *p, const char *data, size_t n,
                         sse_parse_line_cb cb, void *ctx);

/* Splits a non-empty line into field name and value: the name runs to the
 * first ':', one space after it is dropped; a line without ':' is a name
 * with an empty value. */
void sse_parse_field(const char *line, size_t kept, size_t len, struct sse_field *f);

#endif
