/*
 * accept: Accept-Encoding. See accept.h.
 */
#include "proto/accept.h"

static bool ows(char c)
{
    return c == ' ' || c == '\t';
}

/* qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), in
 * thousandths; -1 when it is not one. */
static int qvalue(str_t s)
{
    if (s.len == 0 || s.len > 5 || (s.p[0] != '0' && s.p[0] != '1'))
        return -1;
    int q = (s.p[0] - '0') * 1000;
    if (s.len == 1)
        return q;
    if (s.p[1] != '.')
        return -1;
    int scale = 100;
    for (size_t i = 2; i < s.len; i++, scale /= 10) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return -1;
        q += (s.p[i] - '0') * scale;
    }
    return q > 1000 ? -1 : q;
}

static void note(int *slot, int q)
{
    if (q > *slot)
        *slot = q;
}

void accept_feed(struct accept_enc *a, str_t v)
{
    size_t pos = 0;
    str_t el;
    while (str_list_next(v, &pos, &el)) {
        /* one element: coding *( OWS ";" OWS param ), OWS trimmed */
        const char *s = el.p;
        size_t j = 0, end = el.len;
        while (j < end && s[j] != ';' && !ows(s[j]))
            j++;
        str_t coding = str_make(s, j);
        int q = 1000;
        bool bad = coding.len == 0;
        while (!bad && j < end) {
            while (j < end && ows(s[j]))
                j++;
            if (s[j] != ';') { /* j < end: the element ends in no OWS */
                bad = true;
                break;
            }
            j++;
            while (j < end && ows(s[j]))
                j++;
            size_t ps = j;
            while (j < end && s[j] != ';' && !ows(s[j]))
                j++;
            str_t param = str_make(s + ps, j - ps);
            if (param.len >= 2 && (param.p[0] | 0x20) == 'q' && param.p[1] == '=') {
                q = qvalue(str_make(param.p + 2, param.len - 2));
                bad = q < 0;
            }
            /* other parameters are not in the grammar; ignored */
        }
        if (bad)
            continue;
        if (str_eq_ci(coding, STR_LIT("gzip")) || str_eq_ci(coding, STR_LIT("x-gzip")))
            note(&a->gzip, q);
        else if (str_eq(coding, STR_LIT("*")))
            note(&a->star, q);
        else if (str_eq_ci(coding, STR_LIT("identity")))
            note(&a->identity, q);
    }
}

bool accept_gzip(const struct accept_enc *a)
{
    int q = a->gzip >= 0 ? a->gzip : a->star >= 0 ? a->star : 0;
    return q > 0 && q >= a->identity;
}
