/*
 * fuzz_ids: libFuzzer harness for id lists (proto/ids.c) and the coalesced
 * read bookkeeping (proto/batch.c).
 *
 *   input: [max][flags] csv of ids \0 operations (two bytes each)...
 *
 * The csv goes through id_list_add_csv (with a limit of `max` ids) and,
 * element by element, id_list_add and ids_valid; each is compared with a
 * reference written here, and the ids that made it in become a PostgreSQL
 * array literal that must be exactly {"a","b"}.
 *
 * Then the valid ids (or, with flags bit 1, the raw csv elements, up to 1000
 * bytes each) feed batch.c: the operations open reads over runs of ids
 * (duplicates included), resolve, re-resolve and un-table entries, release
 * reads and look ids up, in any order. A model kept here predicts, after
 * every step: which entry each lookup finds, whether a get creates one, each
 * entry's reference count, waiter count and state, each read's pending
 * count and slots, and which reads a resolve hands back as done. Every read
 * is reported done at most once, and then each of its slots holds a resolved
 * entry for exactly the id asked for in that slot. Borrowed documents are
 * released exactly once, when their entry goes.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/batch.h"
#include "proto/ids.h"
#include "tests/fuzz/fuzz.h"

#define MAX_READS 24
#define MAX_SLOTS 6
#define MAX_ENTRIES 256
#define MAX_OPS 256
#define MAX_RAW_ID 1000
#define MAX_IDS 128         /* past 64, so that the table grows */

/* --- id lists ------------------------------------------------------------------------------ */

static bool ref_valid(const char *s, size_t n)
{
    if (n < 1 || n > IDS_MAX_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

/* Steps through the comma-separated elements of csv, empty ones included
 * (as id_list_add_csv sees them): for (size_t pos = 0; next_element(csv, &pos, &el);) */
static bool next_element(str_t csv, size_t *pos, str_t *el)
{
    if (*pos > csv.len)
        return false;
    size_t i = *pos;
    while (i < csv.len && csv.p[i] != ',')
        i++;
    *el = str_make(csv.p + *pos, i - *pos);
    *pos = i + 1;
    return true;
}

static void check_same_list(const struct id_list *l, const str_t *want, unsigned n)
{
    CHECK(l->n == n);
    for (unsigned i = 0; i < n; i++)
        CHECK(str_eq(id_list_get(l, i), want[i]));
}

static void check_pg_array(const struct id_list *l)
{
    struct buf got = BUF_INIT, want = BUF_INIT;
    for (unsigned i = 0; i < l->n; i++) {
        str_t id = id_list_get(l, i);
        ids_pg_array_add(&got, id.p, id.len);
    }
    ids_pg_array_end(&got);
    buf_append_char(&want, '{');
    for (unsigned i = 0; i < l->n; i++) {
        str_t id = id_list_get(l, i);
        if (i)
            buf_append_char(&want, ',');
        buf_append_char(&want, '"');
        buf_append(&want, id.p, id.len);
        buf_append_char(&want, '"');
    }
    buf_append_char(&want, '}');
    CHECK(str_eq(buf_str(&got), buf_str(&want)));
    /* Nothing in it can end an element or escape: only the quotes added. */
    CHECK(memchr(got.data, '\\', got.len) == NULL);
    buf_deinit(&got);
    buf_deinit(&want);
}

/* Returns, in *valid, every valid element up to max (what the batch uses). */
static void check_lists(str_t csv, unsigned max, struct id_list *valid)
{
    /* References: for id_list_add_csv, the elements up to the first invalid
     * one or the limit; for id_list_add on each element, going on past
     * errors, the valid ones up to the limit. */
    str_t *ref_csv = malloc((csv.len + 1) * sizeof(*ref_csv));
    str_t *ref_each = malloc((csv.len + 1) * sizeof(*ref_each));
    CHECK(ref_csv != NULL && ref_each != NULL);
    unsigned n_csv = 0, n_each = 0;
    int want_rc = 0;
    str_t el;
    for (size_t pos = 0; next_element(csv, &pos, &el);) {
        bool ok = ref_valid(el.p, el.len);
        if (want_rc == 0) {
            if (!ok)
                want_rc = -EINVAL;
            else if (n_csv >= max)
                want_rc = -E2BIG;
            else
                ref_csv[n_csv++] = el;
        }
        CHECK(ids_valid(el.p, el.len) == ok);
        int want = !ok ? -EINVAL : n_each >= max ? -E2BIG : 0;
        CHECK(id_list_add(valid, el.p, el.len, max) == want);
        if (want == 0)
            ref_each[n_each++] = el;
    }
    struct id_list got;
    id_list_init(&got);
    CHECK(id_list_add_csv(&got, csv, max) == want_rc);
    check_same_list(&got, ref_csv, n_csv);
    check_same_list(valid, ref_each, n_each);
    check_pg_array(&got);
    check_pg_array(valid);
    id_list_deinit(&got);
    free(ref_csv);
    free(ref_each);
}

/* --- batch model ----------------------------------------------------------------------------- */

/* The ids the batch operations draw from. */
struct id_set {
    str_t ids[MAX_IDS];
    unsigned n;
};

struct m_entry {
    struct batch_entry *e;      /* NULL once freed */
    str_t id;
    bool in_table, done, borrowed;
    enum batch_result result;
    char doc[8];
    size_t doc_len;
    unsigned slot_refs;         /* slots of live reads pointing here */
    unsigned waiting;           /* of those, set while the entry was not done */
    unsigned borrow_serial;
};

struct m_read {
    struct batch_read rd;       /* batch.c keeps pointers to it: never moves */
    unsigned n;
    str_t ids[MAX_SLOTS];
    unsigned ent[MAX_SLOTS];    /* model entry of each slot */
    unsigned pending;
    bool live, reported;
};

struct ctx {
    struct batch_table t;
    struct m_entry ents[MAX_ENTRIES];
    unsigned n_ents;
    struct m_read reads[MAX_READS];
    unsigned n_reads;
    bool release_on_report;
    unsigned n_borrowed, n_released;
    bool released[MAX_ENTRIES + MAX_OPS];
};

struct borrowed_doc {
    struct ctx *c;
    unsigned serial;
    char doc[8];
};

static void borrowed_release_cb(void *ref)
{
    struct borrowed_doc *b = ref;
    CHECK(b->serial < b->c->n_borrowed);
    CHECK(!b->c->released[b->serial]);
    b->c->released[b->serial] = true;
    b->c->n_released++;
    free(b);
}

static int joinable(const struct ctx *c, str_t id)
{
    for (unsigned i = 0; i < c->n_ents; i++)
        if (c->ents[i].e && c->ents[i].in_table && str_eq(c->ents[i].id, id))
            return (int)i;
    return -1;
}

/* The entry's last reference went: batch.c freed it (and its document). */
static void maybe_freed(struct ctx *c, struct m_entry *m)
{
    if (m->e == NULL || m->in_table || m->slot_refs > 0)
        return;
    m->e = NULL;
    if (m->borrowed)
        CHECK(c->released[m->borrow_serial]);
}

static void check_model(const struct ctx *c)
{
    unsigned in_table = 0;
    for (unsigned i = 0; i < c->n_ents; i++) {
        const struct m_entry *m = &c->ents[i];
        if (m->e == NULL)
            continue;
        const struct batch_entry *e = m->e;
        in_table += m->in_table;
        CHECK(e->refs == m->in_table + m->slot_refs);
        CHECK(e->in_table == m->in_table);
        CHECK((e->state == BATCH_DONE) == m->done);
        CHECK(e->n_waiters == (m->done ? 0 : m->waiting));
        CHECK(e->id_len == m->id.len && memcmp(e->id, m->id.p, m->id.len) == 0 &&
              e->id[e->id_len] == '\0');
        if (m->done) {
            CHECK(e->result == m->result);
            if (m->result == BATCH_FOUND)
                CHECK(e->doc_len == m->doc_len && memcmp(e->doc, m->doc, m->doc_len) == 0);
        }
        if (m->in_table) {
            CHECK(batch_table_find(&c->t, m->id.p, m->id.len) == e);
        }
    }
    CHECK(batch_table_count(&c->t) == in_table);
    for (unsigned r = 0; r < c->n_reads; r++) {
        const struct m_read *mr = &c->reads[r];
        if (!mr->live)
            continue;
        CHECK(mr->rd.n == mr->n && mr->rd.pending == mr->pending);
        for (unsigned i = 0; i < mr->n; i++)
            CHECK(mr->rd.slots[i] == c->ents[mr->ent[i]].e);
    }
}

static void release_read(struct ctx *c, struct m_read *mr)
{
    batch_read_release(&mr->rd);
    mr->live = false;
    for (unsigned i = 0; i < mr->n; i++) {
        struct m_entry *m = &c->ents[mr->ent[i]];
        m->slot_refs--;
        if (!m->done)
            m->waiting--;
    }
    for (unsigned i = 0; i < mr->n; i++)
        maybe_freed(c, &c->ents[mr->ent[i]]);
}

/* A read is done: the owner answers it from its slots. */
static void on_read_done(struct ctx *c, struct m_read *mr)
{
    CHECK(mr->live && !mr->reported && mr->pending == 0);
    mr->reported = true;
    for (unsigned i = 0; i < mr->n; i++) {
        const struct batch_entry *e = mr->rd.slots[i];
        CHECK(e != NULL && e->state == BATCH_DONE);
        CHECK(e->id_len == mr->ids[i].len && memcmp(e->id, mr->ids[i].p, e->id_len) == 0);
    }
    if (c->release_on_report)
        release_read(c, mr);
}

static void op_new_read(struct ctx *c, const struct id_set *ids, unsigned arg, unsigned *cursor)
{
    if (c->n_reads == MAX_READS || ids->n == 0)
        return;
    struct m_read *mr = &c->reads[c->n_reads++];
    mr->n = 1 + arg % MAX_SLOTS;
    mr->pending = 0;
    mr->live = true;
    batch_read_init(&mr->rd, mr->n);
    for (unsigned i = 0; i < mr->n; i++) {
        /* Runs of ids in list order; bit 7 repeats the first id. */
        str_t id = (i > 0 && (arg & 0x80)) ? mr->ids[0] : ids->ids[(*cursor)++ % ids->n];
        mr->ids[i] = id;
        int j = joinable(c, id);
        bool created;
        struct batch_entry *e = batch_table_get(&c->t, id.p, id.len, &created);
        CHECK(created == (j < 0));
        if (created) {
            CHECK(c->n_ents < MAX_ENTRIES);
            j = (int)c->n_ents++;
            c->ents[j] = (struct m_entry){ .e = e, .id = id, .in_table = true };
            CHECK(e->state == BATCH_QUEUED);
        }
        CHECK(e == c->ents[j].e);
        batch_read_set(&mr->rd, i, e);
        mr->ent[i] = (unsigned)j;
        c->ents[j].slot_refs++;
        if (!c->ents[j].done) {
            c->ents[j].waiting++;
            mr->pending++;
        }
    }
    check_model(c);
    if (mr->pending == 0) /* every id was resolved already: answered at once */
        on_read_done(c, mr);
}

/* Whether m is live, done as asked (want_done < 0: either way) and, when
 * asked, in the table. */
static bool entry_matches(const struct m_entry *m, int want_done, bool want_in_table)
{
    return m->e && (want_done < 0 || m->done == (want_done != 0)) &&
           (!want_in_table || m->in_table);
}

/* The n-th (modulo their number) entry that matches, or NULL. */
static struct m_entry *pick_entry(struct ctx *c, unsigned n, int want_done, bool want_in_table)
{
    unsigned count = 0;
    for (unsigned i = 0; i < c->n_ents; i++)
        count += entry_matches(&c->ents[i], want_done, want_in_table);
    if (count == 0)
        return NULL;
    n %= count;
    for (unsigned i = 0; i < c->n_ents; i++)
        if (entry_matches(&c->ents[i], want_done, want_in_table) && n-- == 0)
            return &c->ents[i];
    return NULL;
}

static void op_resolve(struct ctx *c, unsigned arg, bool again)
{
    struct m_entry *m = pick_entry(c, arg >> 2, again ? 1 : 0, false);
    if (m == NULL)
        return;
    unsigned kind = arg & 3;
    char doc[8];
    size_t doc_len = arg % sizeof(doc);
    for (size_t i = 0; i < doc_len; i++)
        doc[i] = (char)('a' + (arg + i) % 26);
    struct batch_read *done = NULL;

    /* Which reads this completes: those waiting on m with nothing else pending. */
    bool expect[MAX_READS] = { false };
    if (!again) {
        for (unsigned r = 0; r < c->n_reads; r++) {
            struct m_read *mr = &c->reads[r];
            if (!mr->live)
                continue;
            unsigned here = 0;
            for (unsigned i = 0; i < mr->n; i++)
                here += &c->ents[mr->ent[i]] == m;
            if (here == 0 || mr->pending == 0)
                continue;
            CHECK(mr->pending >= here);
            mr->pending -= here;
            expect[r] = mr->pending == 0;
        }
    }

    if (kind == 3) {
        struct borrowed_doc *b = malloc(sizeof(*b));
        CHECK(b != NULL && c->n_borrowed < MAX_ENTRIES + MAX_OPS);
        unsigned serial = c->n_borrowed++;
        *b = (struct borrowed_doc){ .c = c, .serial = serial };
        memcpy(b->doc, doc, doc_len);
        batch_entry_resolve_borrowed(m->e, b->doc, doc_len, borrowed_release_cb, b, &done);
        if (again) { /* already resolved: the document goes back at once */
            CHECK(c->released[serial]);
        } else {
            CHECK(!c->released[serial]);
            m->borrowed = true;
            m->borrow_serial = serial;
        }
    } else {
        enum batch_result res = kind == 0 ? BATCH_FOUND : kind == 1 ? BATCH_ABSENT : BATCH_FAILED;
        batch_entry_resolve(m->e, res, res == BATCH_FAILED ? -EIO : 0, doc, doc_len, &done);
        if (!again) {
            m->result = res;
            if (res == BATCH_FOUND) {
                memcpy(m->doc, doc, doc_len);
                m->doc_len = doc_len;
            }
        }
    }
    if (!again) {
        if (kind == 3) {
            m->result = BATCH_FOUND;
            memcpy(m->doc, doc, doc_len);
            m->doc_len = doc_len;
        }
        m->done = true;
        m->waiting = 0;
    }

    /* The done list is exactly the expected reads, each once. */
    bool seen[MAX_READS] = { false };
    unsigned n_done = 0;
    for (struct batch_read *rd = done; rd; rd = rd->next_done) {
        CHECK(++n_done <= MAX_READS);
        struct m_read *mr = (struct m_read *)((char *)rd - offsetof(struct m_read, rd));
        unsigned r = (unsigned)(mr - c->reads);
        CHECK(r < c->n_reads && &c->reads[r].rd == rd);
        CHECK(expect[r] && !seen[r]);
        seen[r] = true;
    }
    for (unsigned r = 0; r < c->n_reads; r++)
        CHECK(seen[r] == expect[r]);
    check_model(c);
    for (unsigned r = 0; r < c->n_reads; r++)
        if (seen[r])
            on_read_done(c, &c->reads[r]);
}

static void op_remove(struct ctx *c, unsigned arg)
{
    struct m_entry *m = pick_entry(c, arg, -1, true);
    if (m == NULL)
        return;
    batch_table_remove(&c->t, m->e);
    m->in_table = false;
    maybe_freed(c, m);
    CHECK(batch_table_find(&c->t, m->id.p, m->id.len) == NULL);
}

static void op_release(struct ctx *c, unsigned arg)
{
    unsigned live = 0;
    for (unsigned r = 0; r < c->n_reads; r++)
        live += c->reads[r].live;
    if (live == 0)
        return;
    unsigned n = arg % live;
    for (unsigned r = 0; r < c->n_reads; r++)
        if (c->reads[r].live && n-- == 0) {
            release_read(c, &c->reads[r]);
            return;
        }
}

static void op_find(struct ctx *c, const struct id_set *ids, unsigned arg)
{
    if (ids->n == 0)
        return;
    str_t id = ids->ids[arg % ids->n];
    int j = joinable(c, id);
    struct batch_entry *e = batch_table_find(&c->t, id.p, id.len);
    CHECK(e == (j < 0 ? NULL : c->ents[j].e));
}

static void run_batch(const struct id_set *ids, bool release_on_report, const uint8_t *ops,
                      size_t n_ops)
{
    struct ctx *c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    c->release_on_report = release_on_report;
    batch_table_init(&c->t);
    unsigned cursor = 0;
    for (size_t k = 0; k + 1 < n_ops && k / 2 < MAX_OPS; k += 2) {
        unsigned op = ops[k] % 8, arg = ops[k + 1];
        switch (op) {
        case 0:
        case 1: op_new_read(c, ids, arg, &cursor); break;
        case 2:
        case 3: op_resolve(c, arg, false); break;
        case 4: op_resolve(c, arg, true); break;
        case 5: op_remove(c, arg); break;
        case 6: op_release(c, arg); break;
        case 7: op_find(c, ids, arg); break;
        }
        check_model(c);
    }
    /* Teardown: reads first, then the table; every entry and every borrowed
     * document must then be gone. */
    for (unsigned r = 0; r < c->n_reads; r++)
        if (c->reads[r].live)
            release_read(c, &c->reads[r]);
    check_model(c);
    batch_table_deinit(&c->t);
    for (unsigned i = 0; i < c->n_ents; i++) {
        c->ents[i].in_table = false;
        maybe_freed(c, &c->ents[i]);
        CHECK(c->ents[i].e == NULL);
    }
    CHECK(c->n_released == c->n_borrowed);
    batch_pool_drain();
    free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    unsigned max = 1 + data[0] % MAX_IDS;
    bool release_on_report = data[1] & 1, raw = data[1] & 2;
    const uint8_t *rest = data + 2;
    size_t n = size - 2;
    const uint8_t *nul = memchr(rest, '\0', n);
    size_t csv_len = nul ? (size_t)(nul - rest) : n;
    /* A heap copy of exactly the csv, so reads past the end are caught. */
    char *csv = malloc(csv_len ? csv_len : 1);
    CHECK(csv != NULL);
    memcpy(csv, rest, csv_len);

    struct id_list valid;
    id_list_init(&valid);
    check_lists(str_make(csv, csv_len), max, &valid);

    /* batch.c takes any bytes; the daemon gives it valid ids only, but long
     * raw ones reach its unpooled entries. */
    struct id_set set = { .n = 0 };
    if (raw) {
        str_t el;
        str_t all = str_make(csv, csv_len);
        for (size_t pos = 0; next_element(all, &pos, &el) && set.n < MAX_IDS;)
            if (el.len <= MAX_RAW_ID)
                set.ids[set.n++] = el;
    } else {
        for (unsigned i = 0; i < valid.n && set.n < MAX_IDS; i++)
            set.ids[set.n++] = id_list_get(&valid, i);
    }
    run_batch(&set, release_on_report, nul ? nul + 1 : rest + n, nul ? n - csv_len - 1 : 0);
    id_list_deinit(&valid);
    free(csv);
    return 0;
}
