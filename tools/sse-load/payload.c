/*
 * payload: see payload.h.
 */
#include "payload.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define PAD_OPEN ",\"pad\":\""
#define PAD_CLOSE "\"}"

static size_t head_format(char *buf, size_t cap, uint64_t seq, uint64_t t)
{
    int n = snprintf(buf, cap, "{\"seq\":%" PRIu64 ",\"t\":%" PRIu64 PAD_OPEN, seq, t);
    return (size_t)n;
}

size_t payload_min_size(uint64_t seq, uint64_t t)
{
    char tmp[PAYLOAD_HEAD_MAX + sizeof(PAD_OPEN)];
    return head_format(tmp, sizeof(tmp), seq, t) + strlen(PAD_CLOSE);
}

size_t payload_format(char *buf, size_t size, uint64_t seq, uint64_t t)
{
    char head[PAYLOAD_HEAD_MAX + sizeof(PAD_OPEN)];
    size_t h = head_format(head, sizeof(head), seq, t);
    size_t min = h + strlen(PAD_CLOSE);
    size_t pad = size > min ? size - min : 0;

    memcpy(buf, head, h);
    memset(buf + h, 'x', pad);
    memcpy(buf + h + pad, PAD_CLOSE, strlen(PAD_CLOSE));
    return min + pad;
}

/* Reads decimal digits at *p; false when there are none or they overflow. */
static bool read_u64(const char **p, const char *end, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;

    if (s == end || *s < '0' || *s > '9')
        return false;
    for (; s < end && *s >= '0' && *s <= '9'; s++) {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *p = s;
    *out = v;
    return true;
}

static bool expect(const char **p, const char *end, const char *lit)
{
    size_t n = strlen(lit);

    if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0)
        return false;
    *p += n;
    return true;
}

bool payload_parse(const char *p, size_t n, uint64_t *seq, uint64_t *t)
{
    const char *end = p + n;

    if (!expect(&p, end, "{\"seq\":") || !read_u64(&p, end, seq))
        return false;
    if (!expect(&p, end, ",\"t\":") || !read_u64(&p, end, t))
        return false;
    /* The digits must end inside the prefix, or t could be cut short. */
    return p < end && (*p == ',' || *p == '}');
}
