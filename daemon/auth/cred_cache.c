/*
 * cred_cache: verdicts on credentials, by SHA-256 digest. See cred_cache.h.
 *
 *   table: digest ──> entry { principal or denied, expires_ms }
 *   order: oldest put first ──> ... ──> newest   (a full cache drops the oldest)
 *
 * The digest is the key, so a lookup never compares credential bytes and
 * memory per entry is the digest plus the principal. Entries past their
 * time are dropped when looked up; a put into a full cache drops the oldest.
 */
#include "daemon/auth/cred_cache.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "daemon/metrics.h"
#include "proto/hashtab.h"
#include "proto/mem.h"

struct cred_entry {
    struct hashtab_node node;       /* key: digest */
    TAILQ_ENTRY(cred_entry) order;  /* oldest first */
    struct cred_key key;
    uint64_t expires_ms;
    bool allowed;
    uint16_t principal_len;
    char principal[];
};

struct cred_cache {
    struct hashtab table;
    TAILQ_HEAD(, cred_entry) order;
    size_t max_entries;
    int64_t *m_entries;
    uint64_t *m_evicted, *m_hit, *m_miss;
};

/* OpenSSL 3 looks the algorithm up by name on every EVP_sha256() init
 * (an "implicit fetch"), which cost more than the hashing here: fetch it
 * once, and reuse one context. */
static EVP_MD *sha256;
static EVP_MD_CTX *sha_ctx;

void cred_key_of(struct cred_key *k, char kind, const char *a, size_t an, const char *b, size_t bn)
{
    if (sha256 == NULL) {
        sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
        sha_ctx = EVP_MD_CTX_new();
    }
    unsigned len = sizeof(k->d);
    /* Lengths go in too, so ("ab","c") and ("a","bc") differ. */
    uint64_t lens[2] = { an, bn };
    if (sha256 == NULL || sha_ctx == NULL || EVP_DigestInit_ex2(sha_ctx, sha256, NULL) != 1 ||
        EVP_DigestUpdate(sha_ctx, &kind, 1) != 1 || EVP_DigestUpdate(sha_ctx, lens, sizeof(lens)) != 1 ||
        EVP_DigestUpdate(sha_ctx, a, an) != 1 || EVP_DigestUpdate(sha_ctx, b, bn) != 1 ||
        EVP_DigestFinal_ex(sha_ctx, k->d, &len) != 1) {
        fprintf(stderr, "batchd: SHA-256 failed (libcrypto)\n");
        abort();
    }
}

void cred_key_cleanup(void)
{
    EVP_MD_CTX_free(sha_ctx);
    EVP_MD_free(sha256);
    sha_ctx = NULL;
    sha256 = NULL;
}

struct cred_cache *cred_cache_new(const char *name, size_t max_entries)
{
    struct cred_cache *c = mem_calloc(1, sizeof(*c));
    hashtab_init(&c->table, 64);
    TAILQ_INIT(&c->order);
    c->max_entries = max_entries ? max_entries : 1;
    char labels[96];
    snprintf(labels, sizeof(labels), "cache=\"%s\"", name);
    c->m_entries = metrics_gauge("batchd_auth_cache_entries", labels, "Credential verdicts remembered.");
    c->m_evicted = metrics_counter("batchd_auth_cache_evictions_total", labels,
                                   "Verdicts dropped before their time because the cache was full (check_cache_entries).");
    snprintf(labels, sizeof(labels), "cache=\"%s\",result=\"hit\"", name);
    c->m_hit = metrics_counter("batchd_auth_cache_lookups_total", labels, "Credential cache lookups.");
    snprintf(labels, sizeof(labels), "cache=\"%s\",result=\"miss\"", name);
    c->m_miss = metrics_counter("batchd_auth_cache_lookups_total", labels, "Credential cache lookups.");
    return c;
}

static void drop(struct cred_cache *c, struct cred_entry *e)
{
    hashtab_remove(&c->table, &e->node);
    TAILQ_REMOVE(&c->order, e, order);
    free(e);
    (*c->m_entries)--;
}

void cred_cache_free(struct cred_cache *c)
{
    if (c == NULL)
        return;
    struct cred_entry *e;
    while ((e = TAILQ_FIRST(&c->order)) != NULL)
        drop(c, e);
    hashtab_deinit(&c->table);
    free(c);
}

void cred_cache_set_max(struct cred_cache *c, size_t max_entries)
{
    c->max_entries = max_entries ? max_entries : 1;
    struct cred_entry *e;
    while (c->table.count > c->max_entries && (e = TAILQ_FIRST(&c->order)) != NULL) {
        drop(c, e);
        (*c->m_evicted)++;
    }
}

static struct cred_entry *find(struct cred_cache *c, const struct cred_key *k)
{
    struct hashtab_node *n = hashtab_find(&c->table, (const char *)k->d, sizeof(k->d));
    return n ? hashtab_entry(n, struct cred_entry, node) : NULL;
}

enum cred_verdict cred_cache_get(struct cred_cache *c, const struct cred_key *k, uint64_t now_ms,
                                 struct buf *principal, uint64_t *expires_ms)
{
    struct cred_entry *e = find(c, k);
    if (e && e->expires_ms <= now_ms) {
        drop(c, e);
        e = NULL;
    }
    if (e == NULL) {
        (*c->m_miss)++;
        return CRED_MISS;
    }
    (*c->m_hit)++;
    if (!e->allowed)
        return CRED_DENIED;
    buf_append(principal, e->principal, e->principal_len);
    if (expires_ms)
        *expires_ms = e->expires_ms;
    return CRED_ALLOWED;
}

void cred_cache_put(struct cred_cache *c, const struct cred_key *k, const char *principal, size_t n,
                    uint64_t expires_ms)
{
    struct cred_entry *e = find(c, k);
    if (e)
        drop(c, e);
    if (n > UINT16_MAX)
        return;
    /* Full: the oldest goes (expired ones are dropped when looked up). */
    while (c->table.count >= c->max_entries && (e = TAILQ_FIRST(&c->order)) != NULL) {
        drop(c, e);
        (*c->m_evicted)++;
    }
    e = mem_alloc(sizeof(*e) + (principal ? n : 0));
    memset(e, 0, sizeof(*e));
    e->key = *k;
    e->expires_ms = expires_ms;
    e->allowed = principal != NULL;
    if (principal) {
        memcpy(e->principal, principal, n);
        e->principal_len = (uint16_t)n;
    }
    hashtab_add(&c->table, &e->node, (const char *)e->key.d, sizeof(e->key.d),
                hashtab_hash((const char *)e->key.d, sizeof(e->key.d)));
    TAILQ_INSERT_TAIL(&c->order, e, order);
    (*c->m_entries)++;
}

size_t cred_cache_size(const struct cred_cache *c)
{
    return c->table.count;
}
