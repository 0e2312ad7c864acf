/*
 * list_set: the lists of a config, by name: creation, metrics, reload and
 * the end. See list.h.
 *
 *   list_set_new ──> a listing per [list NAME] (page_query prepared, its hash)
 *   SIGHUP ──> list_set_reconfigure: same name, updated in place; new ones added;
 *              removed ones retired (no routes; their pages in flight finish)
 *   exit ──> list_set_free: memory goes with the last page still referenced
 */
#include "daemon/cache/list.h"
#include "daemon/cache/list_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/backend/pg_pool.h"
#include "daemon/log.h"
#include "proto/mem.h"

static double gauge_waiters(void *arg)
{
    return ((struct listing *)arg)->n_waiters;
}

static double gauge_loading(void *arg)
{
    return ((struct listing *)arg)->n_loading;
}

static void list_metrics(struct listing *l)
{
    char lb[160];
    const char *n = l->cfg->name;
#define X(name, label)                                                                           \
    snprintf(lb, sizeof(lb), "list=\"%s\",result=\"" label "\"", n);                             \
    l->m_requests[LIST_##name] = metrics_counter("batchd_list_requests_total", lb,               \
                                                 "Page requests answered, by result (401s are counted by batchd_auth_*).");
    LIST_RESULTS(X)
#undef X
#define X(name, label)                                                                           \
    snprintf(lb, sizeof(lb), "list=\"%s\",kind=\"" label "\"", n);                               \
    l->m_err[LERR_##name] = metrics_counter("batchd_list_errors_total", lb,                      \
                                            "Page problems: page_query failures, rows or cursors it returned that "  \
                                            "cannot be served, cached pages that did not parse, pages not cached.");
    LIST_ERRORS(X)
#undef X
    const char *ph = "Pages loaded, by where their ids came from (joined requests not counted).";
    snprintf(lb, sizeof(lb), "list=\"%s\",source=\"cache\"", n);
    l->m_pages_cache = metrics_counter("batchd_list_pages_total", lb, ph);
    snprintf(lb, sizeof(lb), "list=\"%s\",source=\"db\"", n);
    l->m_pages_db = metrics_counter("batchd_list_pages_total", lb, ph);
    const char *dh = "Items left out of a page: their document is gone, or (access = owner) not the principal's.";
    snprintf(lb, sizeof(lb), "list=\"%s\",reason=\"absent\"", n);
    l->m_absent = metrics_counter("batchd_list_items_dropped_total", lb, dh);
    snprintf(lb, sizeof(lb), "list=\"%s\",reason=\"not_owner\"", n);
    l->m_not_owner = metrics_counter("batchd_list_items_dropped_total", lb, dh);
    snprintf(lb, sizeof(lb), "list=\"%s\"", n);
    l->m_joins = metrics_counter("batchd_list_singleflight_joins_total", lb,
                                 "Page requests that joined an identical page in flight instead of loading it.");
    l->m_busy = metrics_counter("batchd_list_busy_total", lb,
                                "Page requests answered 503 list_busy: max_pages_in_flight pages were loading.");
    l->m_inval = metrics_counter("batchd_list_invalidations_total", lb,
                                 "A principal's cached pages dropped after its write through the proxy.");
    l->m_inval_err = metrics_counter("batchd_list_invalidation_errors_total", lb,
                                     "Page invalidations Redis did not confirm (the pages expire by their ttl).");
    l->m_writebacks = metrics_counter("batchd_list_writebacks_total", lb, "Pages written to the cache.");
    l->m_wb_skipped = metrics_counter("batchd_list_writebacks_skipped_total", lb,
                                      "Pages not cached because the principal's pages were invalidated after "
                                      "their query started (in Redis: by any process).");
    l->m_resets = metrics_counter("batchd_list_cache_resets_total", lb,
                                  "Principals' page hashes emptied because they held max_cached_pages pages.");
    l->m_degraded = metrics_counter("batchd_list_cache_degraded_total", lb,
                                    "Pages read from PostgreSQL without asking Redis, because Redis was unavailable.");
    l->m_query_s = metrics_histogram("batchd_list_page_query_duration_seconds", lb,
                                     "page_query executions, from sending to the result.", metrics_latency_bounds,
                                     metrics_latency_n);
    metrics_gauge_fn("batchd_list_pages_in_flight", lb, "Pages reading Redis or PostgreSQL now (max_pages_in_flight).",
                     gauge_loading, l);
    metrics_gauge_fn("batchd_list_waiters", lb, "Requests waiting on pages being read (at most 65536 per list).",
                     gauge_waiters, l);
    l->m_waiters_full = metrics_counter("batchd_list_waiters_full_total", lb,
                                        "Page requests answered 503 list_busy because 65536 requests were waiting "
                                        "on this list's pages already.");
}

/* The query's hash in cache fields: a page of another page_query (after a
 * reload, or in a process still running the old config) is another page.
 * A fixed key, so that every process computes the same. */
static void list_compile(struct listing *l)
{
    static const uint8_t key[16] = { 'b', 'a', 't', 'c', 'h', 'd', ':', 'l', 'i', 's', 't' };
    struct buf b = BUF_INIT;
    buf_append_str(&b, l->cfg->page_query);
    for (unsigned i = 0; i < l->cfg->params.n; i++) {
        buf_append_char(&b, '\n');
        buf_append_str(&b, l->cfg->params.items[i]);
    }
    l->query_hash = (uint32_t)hashtab_siphash24(key, b.data, b.len);
    buf_deinit(&b);
    l->nparams = 3 + l->cfg->params.n;
    l->stmt = l->set->pg ? pg_pool_prepare_n(l->set->pg, l->cfg->page_query, l->nparams) : -1;
}

static void list_add(struct list_set *s, const struct cfg_listing *lc)
{
    struct listing *l = mem_calloc(1, sizeof(*l));
    l->set = s;
    l->cfg = lc;
    config_ref(lc->owner);
    hashtab_init(&l->pages, 16);
    hashtab_init(&l->owners, 16);
    list_compile(l);
    list_metrics(l);
    s->lists = mem_realloc(s->lists, (s->n + 1) * sizeof(*s->lists));
    s->lists[s->n++] = l;
}

struct list_set *list_set_new(const struct config *cfg, struct redis_pool *redis, struct pg_pool *pg,
                              struct resource_set *resources)
{
    struct list_set *s = mem_calloc(1, sizeof(*s));
    s->cfg = cfg;
    s->redis = redis;
    s->pg = pg;
    s->resources = resources;
    for (unsigned i = 0; i < cfg->n_lists; i++)
        list_add(s, &cfg->lists[i]);
    return s;
}

void list_set_reconfigure(struct list_set *s, const struct config *cfg)
{
    s->cfg = cfg;
    unsigned n_before = s->n;
    bool *was_live = mem_alloc(n_before + 1);
    for (unsigned i = 0; i < n_before; i++) {
        was_live[i] = !s->lists[i]->retired;
        s->lists[i]->retired = true;
    }
    for (unsigned k = 0; k < cfg->n_lists; k++) {
        const struct cfg_listing *lc = &cfg->lists[k];
        struct listing *l = NULL;
        for (unsigned i = 0; i < s->n && l == NULL; i++)
            if (strcmp(s->lists[i]->cfg->name, lc->name) == 0)
                l = s->lists[i];
        if (l == NULL) {
            list_add(s, lc);
            log_info("list added", "list=%s path=%s", lc->name, lc->path);
            continue;
        }
        /* Pages in flight keep the statement they started with. */
        config_ref(lc->owner);
        config_unref(l->cfg->owner);
        l->cfg = lc;
        l->retired = false;
        list_compile(l);
    }
    for (unsigned i = 0; i < n_before; i++)
        if (s->lists[i]->retired && was_live[i]) /* not again at every reload after */
            log_info("list removed", "list=%s", s->lists[i]->cfg->name);
    free(was_live);
}

void list_set_destroy(struct list_set *s)
{
    for (unsigned i = 0; i < s->n; i++) {
        struct listing *l = s->lists[i];
        hashtab_deinit(&l->pages);
        hashtab_deinit(&l->owners);
        config_unref(l->cfg->owner);
        free(l);
    }
    free(s->lists);
    free(s);
}

void list_set_free(struct list_set *s)
{
    if (s == NULL)
        return;
    /* The pools have failed what was in flight; what is left in a table
     * waits for nothing more. (freeing is set after: no page freed here
     * may free the set under this loop.) */
    for (unsigned i = 0; i < s->n; i++) {
        struct listing *l = s->lists[i];
        struct hashtab_iter it;
        struct hashtab_node *n;
        hashtab_iter_init(&it, &l->owners);
        while ((n = hashtab_iter_next(&it)) != NULL) {
            struct list_owner *o = hashtab_entry(n, struct list_owner, hnode);
            list_forget_principal(l, o->principal, o->len);
        }
    }
    s->freeing = true;
    if (s->n_pages == 0)
        list_set_destroy(s);
}
