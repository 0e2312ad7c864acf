/*
 * slot_tag: see slot_tag.h.
 */
#include "proto/slot_tag.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "proto/cluster.h"

/* A key's own hash tag: a '{' followed later by a '}' with something between. */
static int has_tag(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open == NULL)
        return 0;
    size_t rest = len - (size_t)(open - key) - 1;
    const char *close = memchr(open + 1, '}', rest);
    return close != NULL && close > open + 1;
}

/* For each slot, the smallest decimal number whose CRC16 lands in it:
 * found once, on first need (about 10^5 CRCs of a few bytes). */
static uint32_t slot_number[CLUSTER_SLOTS];
static int slot_numbers_ready;

static void slot_numbers_fill(void)
{
    unsigned left = CLUSTER_SLOTS;
    for (uint32_t i = 1; left; i++) {
        char s[16];
        int n = snprintf(s, sizeof(s), "%u", i);
        unsigned slot = cluster_crc16(s, (size_t)n) & (CLUSTER_SLOTS - 1);
        if (slot_number[slot] == 0) {
            slot_number[slot] = i;
            left--;
        }
    }
    slot_numbers_ready = 1;
}

void slot_tag_prefixed(const char *prefix, const char *key, size_t len, struct buf *out)
{
    buf_append_str(out, prefix);
    if (has_tag(key, len)) {
        buf_append(out, key, len);
    } else if (len > 0 && memchr(key, '}', len) == NULL) {
        buf_append_char(out, '{');
        buf_append(out, key, len);
        buf_append_char(out, '}');
    } else {
        if (!slot_numbers_ready)
            slot_numbers_fill();
        buf_appendf(out, "{%u}", slot_number[cluster_key_slot(key, len)]);
        buf_append(out, key, len);
    }
}
