/*
 * sse_parse: see sse_parse.h.
 */
#include "sse_parse.h"

#include <string.h>

void sse_parse_init(struct sse_parse *p)
{
    p->len = 0;
    p->kept = 0;
    p->cr = false;
}

static void keep(struct sse_parse *p, const char *s, size_t n)
{
    size_t room = SSE_PARSE_KEEP - p->kept;

    if (n > room)
        n = room;
    memcpy(p->line + p->kept, s, n);
    p->kept = (uint8_t)(p->kept + n);
}

/* First CR or LF in [s, end), or end. Two memchr calls beat a byte loop on
 * long data lines. */
static const char *find_eol(const char *s, const char *end)
{
    const char *lf = memchr(s, '\n', (size_t)(end - s));
    const char *cr = memchr(s, '\r', (size_t)((lf ? lf : end) - s));

    if (cr != NULL)
        return cr;
    return lf ? lf : end;
}

size_t sse_parse_execute(struct sse_parse *p, const char *data, size_t n,
                         sse_parse_line_cb cb, void *ctx)
{
    const char *s = data, *end = data + n;

    while (s < end) {
        const char *eol;
        int rc;

        if (p->cr) {
            p->cr = false;
            if (*s == '\n') {
                s++;
                continue;
            }
        }
        eol = find_eol(s, end);
        keep(p, s, (size_t)(eol - s));
        p->len += (uint32_t)(eol - s);
        if (eol == end)
            break;
        p->cr = *eol == '\r';
        s = eol + 1;
        rc = cb(ctx, p->line, p->kept, p->len);
        p->len = 0;
        p->kept = 0;
        if (rc != 0)
            return (size_t)(s - data);
    }
    return n;
}

void sse_parse_field(const char *line, size_t kept, size_t len, struct sse_field *f)
{
    const char *colon = memchr(line, ':', kept);
    size_t off;

    memset(f, 0, sizeof(*f));
    f->name = line;
    if (colon == NULL) {
        f->name_len = kept;
        f->name_cut = kept < len;
        f->value = line + kept;
        return;
    }
    f->comment = colon == line;
    f->name_len = (size_t)(colon - line);
    off = f->name_len + 1;
    if (off < kept && line[off] == ' ')
        off++;
    else if (off == kept && off < len)
        off++;  /* the byte after ':' was not kept; assume it is the space */
    f->value = line + (off < kept ? off : kept);
    f->value_kept = off < kept ? kept - off : 0;
    f->value_len = len - off;
}
