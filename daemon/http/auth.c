/* auth: bearer-token check for admin operations. See auth.h. */
#include "daemon/http/auth.h"

#include <string.h>
#include <strings.h>

#include "daemon/metrics.h"
#include "daemon/http/req.h"

/* Compares without an early exit, so response time does not reveal how
 * much of a guess was right. The length difference is folded in too. */
static int ct_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen > blen ? alen : blen;
    unsigned char diff = (unsigned char)(alen != blen);
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < alen ? (unsigned char)a[i] : 0;
        unsigned char y = i < blen ? (unsigned char)b[i] : 0;
        diff |= x ^ y;
    }
    return diff == 0;
}

bool auth_admin_ok(const struct req *r, const char *token)
{
    static const char prefix[] = "Bearer ";
    str_t h = req_header(r, "authorization");
    return token != NULL && token[0] != '\0' && h.p != NULL && h.len >= sizeof(prefix) - 1 &&
           strncasecmp(h.p, prefix, sizeof(prefix) - 1) == 0 &&
           ct_equal(h.p + sizeof(prefix) - 1, h.len - (sizeof(prefix) - 1), token, strlen(token));
}

int auth_require(struct req *r, const char *token)
{
    static uint64_t *m_denied;
    if (m_denied == NULL)
        m_denied = metrics_counter("batchd_auth_denied_total", "",
                                   "Admin requests refused for a missing or wrong token.");
    if (token == NULL || token[0] == '\0') {
        (*m_denied)++;
        req_error(r, 403, "admin_token_not_configured");
        return -1;
    }
    str_t h = req_header(r, "authorization");
    static const char prefix[] = "Bearer ";
    if (h.p == NULL || h.len < sizeof(prefix) - 1 ||
        strncasecmp(h.p, prefix, sizeof(prefix) - 1) != 0 ||
        !ct_equal(h.p + sizeof(prefix) - 1, h.len - (sizeof(prefix) - 1), token, strlen(token))) {
        (*m_denied)++;
        req_add_header(r, "WWW-Authenticate", "Bearer");
        req_error(r, 401, "unauthorized");
        return -1;
    }
    return 0;
}
