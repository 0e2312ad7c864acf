/* metrics: registry and Prometheus text rendering. See metrics.h. */
#include "daemon/metrics.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
            double (*fn)(void *);
            void *arg;
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

static struct family *families, **families_tail = &families;

const double metrics_latency_bounds[] = { 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                          0.005,   0.01,   0.025,   0.05,   0.1,   0.25,
                                          0.5,     1,      2.5,     5,      10 };
const unsigned metrics_latency_n = sizeof(metrics_latency_bounds) / sizeof(double);

static struct family *family_get(const char *name, const char *help, enum metric_type type)
{
    for (struct family *f = families; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    struct family *f = mem_calloc(1, sizeof(*f));
    f->name = mem_strdup(name);
    f->help = mem_strdup(help);
    f->type = type;
    f->tail = &f->series;
    *families_tail = f;
    families_tail = &f->next;
    return f;
}

static struct series *series_get(const char *name, const char *labels, const char *help,
                                 enum metric_type type)
{
    struct family *f = family_get(name, help, type);
    const char *l = labels ? labels : "";
    for (struct series *s = f->series; s; s = s->next)
        if (strcmp(s->labels, l) == 0)
            return s;
    struct series *s = mem_calloc(1, sizeof(*s));
    s->labels = mem_strdup(l);
    s->type = type;
    *f->tail = s;
    f->tail = &s->next;
    return s;
}

uint64_t *metrics_counter(const char *name, const char *labels, const char *help)
{
    return &series_get(name, labels, help, METRIC_COUNTER)->u.counter;
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
    return &series_get(name, labels, help, METRIC_GAUGE)->u.gauge;
}

void metrics_gauge_fn(const char *name, const char *labels, const char *help,
                      double (*fn)(void *arg), void *arg)
{
    struct series *s = series_get(name, labels, help, METRIC_GAUGE_FN);
    s->u.gauge_fn.fn = fn;
    s->u.gauge_fn.arg = arg;
}

struct metric_hist *metrics_histogram(const char *name, const char *labels, const char *help,
                                      const double *bounds, unsigned n_bounds)
{
    struct series *s = series_get(name, labels, help, METRIC_HISTOGRAM);
    struct metric_hist *h = &s->u.hist;
    if (h->counts == NULL) {
        h->bounds = bounds;
        h->n_bounds = n_bounds;
        h->counts = mem_calloc(n_bounds + 1, sizeof(uint64_t));
    }
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

static void append_name(struct buf *out, const char *name, const char *suffix,
                        const char *labels, const char *extra)
{
    buf_append_str(out, name);
    buf_append_str(out, suffix);
    bool has_labels = labels[0] != '\0';
    if (has_labels || extra) {
        buf_append_char(out, '{');
        buf_append_str(out, labels);
        if (extra) {
            if (has_labels)
                buf_append_char(out, ',');
            buf_append_str(out, extra);
        }
        buf_append_char(out, '}');
    }
    buf_append_char(out, ' ');
}

static void render_hist(struct buf *out, const char *name, const struct series *s)
{
    const struct metric_hist *h = &s->u.hist;
    uint64_t cum = 0;
    char le[48];
    for (unsigned i = 0; i <= h->n_bounds; i++) {
        cum += h->counts[i];
        if (i < h->n_bounds)
            snprintf(le, sizeof(le), "le=\"%.9g\"", h->bounds[i]);
        else
            snprintf(le, sizeof(le), "le=\"+Inf\"");
        append_name(out, name, "_bucket", s->labels, le);
        buf_append_u64(out, cum);
        buf_append_char(out, '\n');
    }
    append_name(out, name, "_sum", s->labels, NULL);
    append_double(out, h->sum);
    buf_append_char(out, '\n');
    append_name(out, name, "_count", s->labels, NULL);
    buf_append_u64(out, h->count);
    buf_append_char(out, '\n');
}

void metrics_render(struct buf *out)
{
    static const char *const type_names[] = { "counter", "gauge", "gauge", "histogram" };
    for (struct family *f = families; f; f = f->next) {
        buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                    type_names[f->type]);
        for (struct series *s = f->series; s; s = s->next) {
            switch (s->type) {
            case METRIC_COUNTER:
                append_name(out, f->name, "", s->labels, NULL);
                buf_append_u64(out, s->u.counter);
                buf_append_char(out, '\n');
                break;
            case METRIC_GAUGE:
                append_name(out, f->name, "", s->labels, NULL);
                buf_append_i64(out, s->u.gauge);
                buf_append_char(out, '\n');
                break;
            case METRIC_GAUGE_FN:
                append_name(out, f->name, "", s->labels, NULL);
                append_double(out, s->u.gauge_fn.fn(s->u.gauge_fn.arg));
                buf_append_char(out, '\n');
                break;
            case METRIC_HISTOGRAM:
                render_hist(out, f->name, s);
                break;
            }
        }
    }
}

void metrics_free_all(void)
{
    struct family *f = families;
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
    families = NULL;
    families_tail = &families;
}
