/*
 * metrics: registry and Prometheus text rendering. See metrics.h.
 *
 * With several workers (daemon/master), the master maps one shared region
 * before it forks:
 *
 *   [ group header: n, per worker pid + restarts ][ arena 0 ][ arena 1 ] ...
 *
 * Worker i allocates its whole registry (families, series, label strings,
 * histogram buckets) from arena i. The region sits at the same address in
 * every process (mapped before fork), so the pointers inside an arena are
 * valid in all of them and any worker can walk every other worker's
 * registry to render /metrics. Only the owner writes an arena; a node is
 * filled in before it is linked (release store) and readers follow links
 * with acquire loads, so a reader sees either no node or a whole one.
 * Values are aligned 64-bit words, read without tearing.
 *
 * A worker that replaces a dead one adopts its arena: a series registered
 * again is found there, so counters and histograms carry on from the dead
 * worker's values; gauges restart at 0 and computed gauges stay hidden
 * until their owner registers them again (their function argument pointed
 * into the dead process).
 */
#include "daemon/metrics.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "daemon/log.h"
#include "proto/mem.h"

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_GAUGE_FN, METRIC_HISTOGRAM };

struct series {
    struct series *next;
    char *labels;
    enum metric_type type;
    union {
        uint64_t counter;
        int64_t gauge;
        struct {
            double (*fn)(void *);  /* NULL: not registered (yet) by this worker */
            void *arg;
            double last;           /* fn's last value, for the other workers */
        } gauge_fn;
        struct metric_hist hist;
    } u;
};

struct family {
    struct family *next;
    char *name;
    char *help;
    enum metric_type type;
    struct series *series, **tail;
};

struct registry {
    struct family *families, **tail;
};

/* One worker's part of the shared region. */
struct arena {
    struct registry reg;
    size_t used, cap;         /* bytes of data[] */
    char data[];
};

struct group_slot {
    int pid;                  /* 0 while no worker runs in the slot */
    uint64_t restarts;
};

struct group {
    unsigned n;
    size_t arena_bytes;       /* stride between arenas */
    struct group_slot slots[];
};

/* Per worker: registries are small (hundreds of series); pages are only
 * backed once touched. */
#define ARENA_BYTES (16u << 20)
#define ALIGN 16

static struct registry heap_reg = { NULL, &heap_reg.families };
static struct registry *reg = &heap_reg;
static struct group *group;          /* NULL: one process, the heap registry */
static struct arena *own;            /* this worker's arena */
static int own_id = -1;
/* Series that no longer fit in the arena: kept (their owners hold the
 * pointers) but not rendered. */
static struct registry overflow_reg = { NULL, &overflow_reg.families };
static bool overflowed;

static struct arena *arena_of(unsigned i)
{
    size_t hdr = (sizeof(struct group) + group->n * sizeof(struct group_slot) + 4095) & ~(size_t)4095;
    return (struct arena *)((char *)group + hdr + (size_t)i * group->arena_bytes);
}

static void *m_alloc(size_t n)
{
    if (own == NULL)
        return mem_calloc(1, n);
    size_t need = (n + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    if (own->used + need > own->cap)
        return NULL;
    void *p = own->data + own->used;
    own->used += need;
    return p; /* zero: fresh shared pages, never reused */
}

static char *m_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = m_alloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

static void *link_load(void *const *p)
{
    return __atomic_load_n((void **)p, __ATOMIC_ACQUIRE);
}

static void link_store(void **p, void *v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

const double metrics_latency_bounds[] = { 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                          0.005,   0.01,   0.025,   0.05,   0.1,   0.25,
                                          0.5,     1,      2.5,     5,      10 };
const unsigned metrics_latency_n = sizeof(metrics_latency_bounds) / sizeof(double);

static struct family *family_find(const struct registry *r, const char *name)
{
    for (struct family *f = link_load((void *const *)&r->families); f;
         f = link_load((void *const *)&f->next))
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

static struct family *family_new(struct registry *r, const char *name, const char *help,
                                 enum metric_type type)
{
    struct family *f = m_alloc(sizeof(*f));
    if (f == NULL)
        return NULL;
    f->name = m_strdup(name);
    f->help = m_strdup(help);
    if (f->name == NULL || f->help == NULL)
        return NULL;
    f->type = type;
    f->tail = &f->series;
    link_store((void **)r->tail, f);
    r->tail = &f->next;
    return f;
}

static struct series *series_new(struct family *f, const char *labels, enum metric_type type,
                                 unsigned n_buckets)
{
    struct series *s = m_alloc(sizeof(*s));
    if (s == NULL)
        return NULL;
    s->labels = m_strdup(labels);
    s->type = type;
    if (s->labels == NULL)
        return NULL;
    if (n_buckets && (s->u.hist.counts = m_alloc(n_buckets * sizeof(uint64_t))) == NULL)
        return NULL;
    link_store((void **)f->tail, s);
    f->tail = &s->next;
    return s;
}

static struct series *series_find(const struct family *f, const char *labels)
{
    for (struct series *s = link_load((void *const *)&f->series); s;
         s = link_load((void *const *)&s->next))
        if (strcmp(s->labels, labels) == 0)
            return s;
    return NULL;
}

static struct series *series_in(struct registry *r, const char *name, const char *labels,
                                const char *help, enum metric_type type, unsigned n_buckets)
{
    struct family *f = family_find(r, name);
    if (f == NULL && (f = family_new(r, name, help, type)) == NULL)
        return NULL;
    struct series *s = series_find(f, labels);
    return s ? s : series_new(f, labels, type, n_buckets);
}

static struct series *series_get(const char *name, const char *labels, const char *help,
                                 enum metric_type type, unsigned n_buckets)
{
    const char *l = labels ? labels : "";
    struct series *s = series_in(reg, name, l, help, type, n_buckets);
    if (s == NULL) {
        /* The arena is full: a private series, counted but not rendered. */
        if (!overflowed)
            log_warn("metrics arena full, new series are not reported", "worker=%d name=%s", own_id, name);
        overflowed = true;
        struct arena *a = own;
        own = NULL;
        s = series_in(&overflow_reg, name, l, help, type, n_buckets);
        own = a;
    }
    return s;
}

uint64_t *metrics_counter(const char *name, const char *labels, const char *help)
{
    return &series_get(name, labels, help, METRIC_COUNTER, 0)->u.counter;
}

void metrics_counter_family(const char *name, const char *key, const char *const *labels, unsigned n,
                            const char *help, uint64_t **out)
{
    struct buf l = BUF_INIT;
    for (unsigned i = 0; i < n; i++) {
        buf_reset(&l);
        buf_appendf(&l, "%s=\"%s\"", key, labels[i]);
        out[i] = metrics_counter(name, l.data, help);
    }
    buf_deinit(&l);
}

int64_t *metrics_gauge(const char *name, const char *labels, const char *help)
{
    return &series_get(name, labels, help, METRIC_GAUGE, 0)->u.gauge;
}

void metrics_gauge_fn(const char *name, const char *labels, const char *help,
                      double (*fn)(void *arg), void *arg)
{
    struct series *s = series_get(name, labels, help, METRIC_GAUGE_FN, 0);
    s->u.gauge_fn.fn = fn;
    s->u.gauge_fn.arg = arg;
}

struct metric_hist *metrics_histogram(const char *name, const char *labels, const char *help,
                                      const double *bounds, unsigned n_bounds)
{
    struct series *s = series_get(name, labels, help, METRIC_HISTOGRAM, n_bounds + 1);
    struct metric_hist *h = &s->u.hist;
    h->bounds = bounds; /* also when adopted: the old array was the dead worker's (same binary, same address) */
    h->n_bounds = n_bounds;
    return h;
}

void metrics_observe(struct metric_hist *h, double v)
{
    unsigned i = 0;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

static void append_double(struct buf *out, double v)
{
    if (v == (double)(int64_t)v && v < 1e15 && v > -1e15)
        buf_append_i64(out, (int64_t)v);
    else
        buf_appendf(out, "%.9g", v);
}

/* name+suffix{labels,worker,extra} and a space; each part may be empty. */
static void append_name(struct buf *out, const char *name, const char *suffix, const char *labels,
                        const char *worker, const char *extra)
{
    buf_append_str(out, name);
    buf_append_str(out, suffix);
    const char *parts[3] = { labels, worker, extra };
    bool open = false;
    for (int i = 0; i < 3; i++) {
        if (parts[i] == NULL || parts[i][0] == '\0')
            continue;
        buf_append_char(out, open ? ',' : '{');
        buf_append_str(out, parts[i]);
        open = true;
    }
    if (open)
        buf_append_char(out, '}');
    buf_append_char(out, ' ');
}

static void render_hist(struct buf *out, const char *name, const struct series *s, const char *worker)
{
    const struct metric_hist *h = &s->u.hist;
    uint64_t cum = 0;
    char le[48];
    for (unsigned i = 0; i <= h->n_bounds; i++) {
        cum += __atomic_load_n(&h->counts[i], __ATOMIC_RELAXED);
        if (i < h->n_bounds)
            snprintf(le, sizeof(le), "le=\"%.9g\"", h->bounds[i]);
        else
            snprintf(le, sizeof(le), "le=\"+Inf\"");
        append_name(out, name, "_bucket", s->labels, worker, le);
        buf_append_u64(out, cum);
        buf_append_char(out, '\n');
    }
    append_name(out, name, "_sum", s->labels, worker, NULL);
    append_double(out, h->sum);
    buf_append_char(out, '\n');
    append_name(out, name, "_count", s->labels, worker, NULL);
    buf_append_u64(out, __atomic_load_n(&h->count, __ATOMIC_RELAXED));
    buf_append_char(out, '\n');
}

/* The series of one family in one registry. `mine`: this process owns
 * them (computed gauges are evaluated now); `live`: a worker runs there
 * (a dead worker's gauges are not shown). */
static void render_series(struct buf *out, const struct family *f, const char *worker, bool mine,
                          bool live)
{
    for (struct series *s = link_load((void *const *)&f->series); s;
         s = link_load((void *const *)&s->next)) {
        switch (s->type) {
        case METRIC_COUNTER:
            append_name(out, f->name, "", s->labels, worker, NULL);
            buf_append_u64(out, __atomic_load_n(&s->u.counter, __ATOMIC_RELAXED));
            buf_append_char(out, '\n');
            break;
        case METRIC_GAUGE:
            if (!live)
                break;
            append_name(out, f->name, "", s->labels, worker, NULL);
            buf_append_i64(out, __atomic_load_n(&s->u.gauge, __ATOMIC_RELAXED));
            buf_append_char(out, '\n');
            break;
        case METRIC_GAUGE_FN:
            if (!live || s->u.gauge_fn.fn == NULL)
                break;
            if (mine)
                s->u.gauge_fn.last = s->u.gauge_fn.fn(s->u.gauge_fn.arg);
            append_name(out, f->name, "", s->labels, worker, NULL);
            append_double(out, s->u.gauge_fn.last);
            buf_append_char(out, '\n');
            break;
        case METRIC_HISTOGRAM:
            render_hist(out, f->name, s, worker);
            break;
        }
    }
}

static const char *const type_names[] = { "counter", "gauge", "gauge", "histogram" };

static void render_head(struct buf *out, const struct family *f)
{
    buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, type_names[f->type]);
}

/* Every worker's series, each with worker="i". A family is rendered where
 * it first appears (worker 0's order first), with the series of every
 * worker that has it, so each name has one HELP/TYPE block. */
static void render_group(struct buf *out)
{
    char worker[32];
    for (unsigned i = 0; i < group->n; i++) {
        const struct registry *ri = &arena_of(i)->reg;
        for (struct family *f = link_load((void *const *)&ri->families); f;
             f = link_load((void *const *)&f->next)) {
            bool earlier = false;
            for (unsigned j = 0; j < i && !earlier; j++)
                earlier = family_find(&arena_of(j)->reg, f->name) != NULL;
            if (earlier)
                continue;
            render_head(out, f);
            for (unsigned j = i; j < group->n; j++) {
                const struct family *fj = j == i ? f : family_find(&arena_of(j)->reg, f->name);
                if (fj == NULL)
                    continue;
                snprintf(worker, sizeof(worker), "worker=\"%u\"", j);
                render_series(out, fj, worker, (int)j == own_id,
                              __atomic_load_n(&group->slots[j].pid, __ATOMIC_RELAXED) != 0);
            }
        }
    }
    /* The master's own counts. */
    buf_appendf(out, "# HELP batchd_workers Worker processes configured (workers).\n"
                     "# TYPE batchd_workers gauge\nbatchd_workers %u\n", group->n);
    buf_append_str(out, "# HELP batchd_worker_restarts_total Workers started again by the master "
                        "after one exited.\n# TYPE batchd_worker_restarts_total counter\n");
    for (unsigned j = 0; j < group->n; j++)
        buf_appendf(out, "batchd_worker_restarts_total{worker=\"%u\"} %llu\n", j,
                    (unsigned long long)__atomic_load_n(&group->slots[j].restarts, __ATOMIC_RELAXED));
    buf_append_str(out, "# HELP batchd_worker_up 1 while a worker process runs in the slot.\n"
                        "# TYPE batchd_worker_up gauge\n");
    for (unsigned j = 0; j < group->n; j++)
        buf_appendf(out, "batchd_worker_up{worker=\"%u\"} %d\n", j,
                    __atomic_load_n(&group->slots[j].pid, __ATOMIC_RELAXED) != 0);
}

void metrics_render(struct buf *out)
{
    if (group) {
        render_group(out);
        return;
    }
    for (struct family *f = reg->families; f; f = f->next) {
        render_head(out, f);
        render_series(out, f, NULL, true, true);
    }
}

void metrics_refresh(void)
{
    for (struct family *f = reg->families; f; f = f->next)
        for (struct series *s = f->series; s; s = s->next)
            if (s->type == METRIC_GAUGE_FN && s->u.gauge_fn.fn)
                s->u.gauge_fn.last = s->u.gauge_fn.fn(s->u.gauge_fn.arg);
}

/* --- several workers ---------------------------------------------------------- */

int metrics_group_init(unsigned n)
{
    size_t hdr = (sizeof(struct group) + n * sizeof(struct group_slot) + 4095) & ~(size_t)4095;
    size_t len = hdr + (size_t)n * ARENA_BYTES;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    group = p;
    group->n = n;
    group->arena_bytes = ARENA_BYTES;
    for (unsigned i = 0; i < n; i++) {
        struct arena *a = arena_of(i);
        a->reg.tail = &a->reg.families;
        a->cap = ARENA_BYTES - sizeof(struct arena);
    }
    return 0;
}

void metrics_group_join(unsigned worker)
{
    /* What the master registered before forking stays the master's. */
    metrics_free_all();
    own_id = (int)worker;
    own = arena_of(worker);
    reg = &own->reg;
    /* Adopt what a previous worker in this slot left. */
    reg->tail = &reg->families;
    for (struct family *f = reg->families; f; f = f->next) {
        reg->tail = &f->next;
        f->tail = &f->series;
        for (struct series *s = f->series; s; s = s->next) {
            f->tail = &s->next;
            if (s->type == METRIC_GAUGE)
                s->u.gauge = 0;
            else if (s->type == METRIC_GAUGE_FN)
                s->u.gauge_fn.fn = NULL;
        }
    }
}

void metrics_group_worker_started(unsigned worker, int pid, bool restart)
{
    __atomic_store_n(&group->slots[worker].pid, pid, __ATOMIC_RELAXED);
    if (restart)
        __atomic_add_fetch(&group->slots[worker].restarts, 1, __ATOMIC_RELAXED);
}

void metrics_group_worker_exited(unsigned worker)
{
    __atomic_store_n(&group->slots[worker].pid, 0, __ATOMIC_RELAXED);
}

static void registry_free(struct registry *r)
{
    struct family *f = r->families;
    while (f) {
        struct family *fn = f->next;
        struct series *s = f->series;
        while (s) {
            struct series *sn = s->next;
            if (s->type == METRIC_HISTOGRAM)
                free(s->u.hist.counts);
            free(s->labels);
            free(s);
            s = sn;
        }
        free(f->name);
        free(f->help);
        free(f);
        f = fn;
    }
    r->families = NULL;
    r->tail = &r->families;
}

void metrics_free_all(void)
{
    /* An arena is shared memory: it stays for the worker's successor. */
    registry_free(&heap_reg);
    registry_free(&overflow_reg);
}
