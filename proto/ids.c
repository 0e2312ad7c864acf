/* ids: id validation, id lists and their PostgreSQL array form. See ids.h. */
#include "proto/ids.h"

#include <errno.h>
#include <stdlib.h>

#include "proto/mem.h"

static const uint8_t id_byte[256] = {
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
    ['_'] = 1, ['.'] = 1, [':'] = 1, ['-'] = 1,
};

bool ids_valid(const char *s, size_t n)
{
    if (n == 0 || n > IDS_MAX_LEN)
        return false;
    unsigned ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= id_byte[(unsigned char)s[i]];
    return ok;
}

void id_list_init(struct id_list *l)
{
    *l = (struct id_list){ .bytes = BUF_INIT };
}

void id_list_deinit(struct id_list *l)
{
    buf_deinit(&l->bytes);
    free(l->off);
    free(l->len);
    *l = (struct id_list){ .bytes = BUF_INIT };
}

void id_list_clear(struct id_list *l)
{
    buf_reset(&l->bytes);
    l->n = 0;
}

int id_list_add(struct id_list *l, const char *s, size_t n, unsigned max)
{
    if (!ids_valid(s, n))
        return -EINVAL;
    if (l->n >= max)
        return -E2BIG;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 8;
        l->off = mem_realloc(l->off, l->cap * sizeof(*l->off));
        l->len = mem_realloc(l->len, l->cap * sizeof(*l->len));
    }
    l->off[l->n] = (uint32_t)l->bytes.len;
    l->len[l->n] = (uint8_t)n;
    l->n++;
    buf_append(&l->bytes, s, n);
    return 0;
}

int id_list_add_csv(struct id_list *l, str_t csv, unsigned max)
{
    size_t i = 0;
    for (;;) {
        size_t start = i;
        while (i < csv.len && csv.p[i] != ',')
            i++;
        int rc = id_list_add(l, csv.p + start, i - start, max);
        if (rc != 0)
            return rc;
        if (i == csv.len)
            return 0;
        i++; /* skip ',' */
    }
}

void ids_pg_array_add(struct buf *out, const char *id, size_t len)
{
    buf_reserve(out, len + 4);
    buf_append_char(out, out->len == 0 ? '{' : ',');
    /* Valid ids hold no '"' or '\\', but quoting keeps "NULL" an id. */
    buf_append_char(out, '"');
    buf_append(out, id, len);
    buf_append_char(out, '"');
}

void ids_pg_array_end(struct buf *out)
{
    if (out->len == 0)
        buf_append_char(out, '{');
    buf_append_char(out, '}');
}
