/*
 * connlist: conninfos separated by ';'. See connlist.h.
 */
#include "proto/connlist.h"

#include <stdbool.h>

static bool space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int connlist_split(const char *v, struct connlist_item *out, unsigned max)
{
    size_t i = 0;
    while (space(v[i]))
        i++;
    if (v[i] == '\0')
        return 0;
    unsigned n = 0;
    for (;;) {
        size_t start = i;
        bool quoted = false;
        for (; v[i] != '\0' && (quoted || v[i] != ';'); i++) {
            if (quoted && v[i] == '\\' && v[i + 1] != '\0')
                i++;
            else if (v[i] == '\'')
                quoted = !quoted;
        }
        if (quoted)
            return CONNLIST_OPEN_QUOTE;
        size_t a = start, b = i;
        while (a < b && space(v[a]))
            a++;
        while (b > a && space(v[b - 1]))
            b--;
        if (a == b)
            return CONNLIST_EMPTY_ITEM;
        if (n == max)
            return CONNLIST_TOO_MANY;
        out[n++] = (struct connlist_item){ a, b - a };
        if (v[i] == '\0')
            return (int)n;
        i++; /* the ';' */
    }
}
