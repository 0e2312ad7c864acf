/*
 * sse-load: a load generator for batchd's Server-Sent Events endpoint.
 *
 *                 ┌── N reading clients ──GET .../events (SSE)──┐
 *   sse-load ─────┼── M no-read clients ──GET, never read ──────┼──▶ batchd
 *                 └── publisher (4 conns) ──POST .../events ─────┘
 *
 * Phases: CONNECT (open every client at --connect-rate, wait for each
 * response head), PUBLISH (POST --events per channel at --rate, wait until
 * every reading client has every event or --timeout passes), DRAIN (no-read
 * clients read what is left, to learn which ones batchd had closed), then
 * the report. This file holds the command line, the phases, and the
 * bookkeeping of what each client received.
 *
 * Exit status: 0 when every reading client got every event exactly once, in
 * order, with the id its POST returned; 1 otherwise; 2 on a usage error.
 */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "proto/mem.h"
#include "cli.h"
#include "publisher.h"
#include "sse_client.h"
#include "stats.h"
#include "util.h"

#define EXIT_PASS 0
#define EXIT_FAIL 1

#define TICK_MS 1
#define CHECK_EVERY_MS 10
#define DRAIN_IDLE_MS 1000
#define DEFAULT_RECONNECT_MS 100
#define MAX_REASONS 48

/* --- bookkeeping ------------------------------------------------------------ */

enum client_fate {
    FATE_PENDING,     /* initial connect not finished */
    FATE_LIVE,        /* got its head at least once; connected or reconnecting */
    FATE_FAILED,      /* the initial connect failed */
    FATE_DEAD,        /* closed after its head and will not reconnect */
};

struct load_client {
    struct sse_client sse;
    uint64_t *seen;               /* seq bitmap, --events bits; NULL until needed */
    struct load_client *next;     /* connect queue */
    uint64_t due_ms;              /* earliest (re)connect time */
    uint32_t unique;              /* seqs received at least once */
    uint32_t dups;
    uint32_t ooo;
    uint32_t max_seq1;            /* highest seq received + 1 */
    uint32_t reconnects;
    uint8_t fate;                 /* enum client_fate */
    bool up;                      /* ready on the current connection */
};

enum slot_state { SLOT_UNSENT, SLOT_SUBMITTED, SLOT_OK, SLOT_FAILED };

/* An SSE id that arrived before its POST was answered, with how many
 * clients saw it; checked when the answer comes. */
struct early_id {
    struct early_id *next;
    uint32_t count;
    char id[];
};

/* One published event: channel c, seq s is slots[c * events + s]. */
struct slot {
    char *id;                     /* from the POST answer */
    struct early_id *early;
    uint8_t state;                /* enum slot_state */
};

struct reasons {
    unsigned n;
    struct { char name[72]; uint64_t count; } r[MAX_REASONS];
};

enum run_phase { PHASE_CONNECT, PHASE_PUBLISH, PHASE_DRAIN, PHASE_DONE };

struct run {
    struct cli_opts o;
    uv_loop_t *loop;
    uv_timer_t tick;
    uv_signal_t sigint;
    uint8_t phase;

    /* target */
    uint32_t next_source;
    struct sse_client_conf cconf;
    struct sse_client_cbs ccbs;
    struct publisher_conf pconf;
    struct publisher *pub;

    /* clients: [0, clients) read, [clients, clients + no_read) never read */
    struct load_client *lc;
    uint32_t n_lc;
    struct load_client *q_head, *q_tail;
    double tokens;
    uint64_t last_tick_ms;

    /* CONNECT */
    uint32_t pending;             /* initial connects not yet ready or failed */
    uint32_t connected_read, connected_no_read;
    uint64_t connect_start_ms, last_start_ms, connect_end_ms;
    struct reasons connect_fail;

    /* PUBLISH */
    struct slot *slots;
    uint64_t **ok_bits;           /* per channel: seqs whose POST got 201 */
    uint32_t *ok_count;
    uint64_t total, submitted, answered, published_ok;
    struct reasons publish_fail;
    uint64_t publish_start_ms, all_answered_ms;
    uint64_t progress_ms;         /* last answer, or a submit onto an idle publisher */
    uint64_t first_publish_real, last_publish_real, last_delivery_real;
    bool timed_out, stalled, interrupted;
    uint64_t last_check_ms, changes, checked_changes;

    /* deliveries */
    struct stats_hist lat;
    uint64_t deliveries, unique_total, dups_total, ooo_total;
    uint64_t id_mismatch, id_missing, type_mismatch, bad_seq, stale;
    uint64_t resets, other_events, negative_latency;
    struct reasons disconnects;   /* reading clients, after their head */
    uint64_t reconnects;

    /* DRAIN */
    uint64_t drain_start_ms, drain_bytes, drain_change_ms;
    uint64_t no_read_eof, no_read_rst, no_read_other, no_read_open;

    /* memory */
    int64_t rss_start, rss_connected, rss_end, self_rss;

    uint64_t run_start_real;
};

static struct run R;

/* --- small helpers ---------------------------------------------------------- */

static uint64_t now_ms(void)
{
    return util_mono_ns() / 1000000u;
}

static void reasons_add(struct reasons *rs, const char *name)
{
    unsigned i;

    for (i = 0; i < rs->n; i++)
        if (strcmp(rs->r[i].name, name) == 0)
            break;
    if (i == rs->n) {
        if (rs->n == MAX_REASONS)
            i = MAX_REASONS - 1;  /* the last slot, "other", collects the overflow */
        else
            snprintf(rs->r[i].name, sizeof(rs->r[i].name), "%s",
                     rs->n++ == MAX_REASONS - 1 ? "other" : name);
    }
    rs->r[i].count++;
}

static uint64_t reasons_total(const struct reasons *rs)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < rs->n; i++)
        t += rs->r[i].count;
    return t;
}

/* "ECONNREFUSED", "http_503", "eof": what a failure is counted as. */
static void close_reason_name(const struct sse_client *c, char *buf, size_t n)
{
    switch (c->close_reason) {
    case SSE_CLOSE_CONNECT:
    case SSE_CLOSE_WRITE:
    case SSE_CLOSE_READ:
        snprintf(buf, n, "%s", uv_err_name(c->close_err));
        break;
    case SSE_CLOSE_HTTP_STATUS:
        snprintf(buf, n, "http_%d", c->close_err);
        break;
    default:
        snprintf(buf, n, "%s", sse_client_reason_name(c->close_reason));
        break;
    }
}

static size_t bitmap_words(void)
{
    return (R.o.events + 63) / 64;
}

static bool bit_test(const uint64_t *b, uint32_t i)
{
    return (b[i / 64] >> (i % 64)) & 1;
}

static void bit_set(uint64_t *b, uint32_t i)
{
    b[i / 64] |= 1ull << (i % 64);
}

/* Seqs of `lc` that were both received and published successfully. */
static uint32_t received_ok(const struct load_client *lc)
{
    const uint64_t *ok = R.ok_bits[lc->sse.channel];
    uint32_t n = 0;

    if (lc->seen == NULL)
        return 0;
    if (R.ok_count[lc->sse.channel] == R.o.events)
        return lc->unique;
    for (size_t w = 0; w < bitmap_words(); w++)
        n += (uint32_t)__builtin_popcountll(lc->seen[w] & ok[w]);
    return n;
}

/* --- connecting -------------------------------------------------------------- */

static void queue_push(struct load_client *lc, uint64_t due_ms)
{
    lc->due_ms = due_ms;
    lc->next = NULL;
    if (R.q_tail)
        R.q_tail->next = lc;
    else
        R.q_head = lc;
    R.q_tail = lc;
}

static struct load_client *queue_pop(void)
{
    struct load_client *lc = R.q_head;

    if (lc) {
        R.q_head = lc->next;
        if (R.q_head == NULL)
            R.q_tail = NULL;
        lc->next = NULL;
    }
    return lc;
}

static void start_connect(struct load_client *lc)
{
    const struct sockaddr *src = NULL;
    char name[48];
    int rc;

    if (R.o.n_sources > 0)
        src = (const struct sockaddr *)&R.o.source_addrs[R.next_source++ % R.o.n_sources];
    lc->up = false;
    rc = sse_client_connect(&lc->sse, src);
    if (rc == 0)
        return;
    /* No socket at all (EMFILE): counted like a failed connect. */
    snprintf(name, sizeof(name), "%s", uv_err_name(rc));
    if (lc->fate == FATE_PENDING) {
        lc->fate = FATE_FAILED;
        reasons_add(&R.connect_fail, name);
        R.pending--;
    } else {
        char buf[64];
        snprintf(buf, sizeof(buf), "reconnect_%s", name);
        reasons_add(&R.disconnects, buf);
        lc->fate = FATE_DEAD;
    }
    R.changes++;
}

static void pace_connects(uint64_t now)
{
    double burst = R.o.connect_rate / 100.0;

    if (burst < 1)
        burst = 1;
    R.tokens += (double)(now - R.last_tick_ms) * R.o.connect_rate / 1000.0;
    if (R.tokens > burst)
        R.tokens = burst;
    while (R.tokens >= 1 && R.q_head != NULL && R.q_head->due_ms <= now) {
        struct load_client *lc = queue_pop();
        R.tokens -= 1;
        if (lc->fate == FATE_PENDING)
            R.last_start_ms = now;
        start_connect(lc);
    }
}

/* --- client callbacks ----------------------------------------------------------- */

#define lc_of(c) ((struct load_client *)((char *)(c) - offsetof(struct load_client, sse)))

static void on_ready_cb(struct sse_client *c)
{
    struct load_client *lc = lc_of(c);

    lc->up = true;
    if (lc->fate == FATE_PENDING) {
        lc->fate = FATE_LIVE;
        R.pending--;
        if (c->no_read)
            R.connected_no_read++;
        else
            R.connected_read++;
    }
    R.changes++;
}

/* The id a client got for a seq must be the one the POST of that seq
 * returned. */
static void check_id(const struct sse_event *ev, struct slot *s)
{
    struct early_id *e;

    if (!ev->own_id || ev->id_cut) {
        R.id_missing++;
        return;
    }
    if (s->state == SLOT_OK) {
        if (strcmp(s->id, ev->id) != 0)
            R.id_mismatch++;
        return;
    }
    /* The event beat its POST's answer: remember the id until it comes. */
    for (e = s->early; e != NULL; e = e->next)
        if (strcmp(e->id, ev->id) == 0)
            break;
    if (e == NULL) {
        size_t n = strlen(ev->id);
        e = mem_alloc(sizeof(*e) + n + 1);
        memcpy(e->id, ev->id, n + 1);
        e->count = 0;
        e->next = s->early;
        s->early = e;
    }
    e->count++;
}

static void on_event_cb(struct sse_client *c, const struct sse_event *ev)
{
    struct load_client *lc = lc_of(c);
    uint32_t seq;

    if (!ev->payload) {
        if (ev->type == SSE_EVENT_RESET)
            R.resets++;
        else
            R.other_events++;
        return;
    }
    if (ev->t < R.run_start_real) {
        R.stale++;  /* published by an earlier run on the same channel */
        return;
    }
    if (ev->seq >= R.o.events) {
        R.bad_seq++;
        return;
    }
    seq = (uint32_t)ev->seq;
    R.deliveries++;
    R.changes++;
    if (ev->type != (R.o.event_type[0] ? SSE_EVENT_EXPECTED : SSE_EVENT_MESSAGE))
        R.type_mismatch++;
    if (lc->seen == NULL)
        lc->seen = mem_calloc(bitmap_words(), sizeof(uint64_t));
    if (bit_test(lc->seen, seq)) {
        lc->dups++;
        R.dups_total++;
        return;
    }
    bit_set(lc->seen, seq);
    lc->unique++;
    R.unique_total++;
    if (seq + 1 < lc->max_seq1) {
        lc->ooo++;
        R.ooo_total++;
    } else {
        lc->max_seq1 = seq + 1;
    }
    if (ev->recv_ns >= ev->t) {
        stats_hist_add(&R.lat, ev->recv_ns - ev->t);
    } else {
        stats_hist_add(&R.lat, 0);
        R.negative_latency++;
    }
    if (ev->recv_ns > R.last_delivery_real)
        R.last_delivery_real = ev->recv_ns;
    check_id(ev, &R.slots[(size_t)c->channel * R.o.events + seq]);
}

static void on_closed_cb(struct sse_client *c)
{
    struct load_client *lc = lc_of(c);
    char name[48], buf[64];
    uint64_t delay;

    R.changes++;
    if (R.phase == PHASE_DONE)
        return;
    close_reason_name(c, name, sizeof(name));
    if (lc->fate == FATE_PENDING) {
        lc->fate = FATE_FAILED;
        reasons_add(&R.connect_fail, name);
        R.pending--;
        return;
    }
    if (c->no_read) {
        if (R.phase == PHASE_DRAIN && c->close_reason == SSE_CLOSE_EOF)
            R.no_read_eof++;
        else if (R.phase == PHASE_DRAIN && c->close_reason == SSE_CLOSE_RESET)
            R.no_read_rst++;
        else
            R.no_read_other++;
        lc->fate = FATE_DEAD;
        return;
    }
    if (lc->up) {
        reasons_add(&R.disconnects, name);
    } else {
        snprintf(buf, sizeof(buf), "reconnect_%s", name);
        reasons_add(&R.disconnects, buf);
    }
    lc->up = false;
    if (!R.o.reconnect || (R.phase != PHASE_PUBLISH && R.phase != PHASE_CONNECT)) {
        lc->fate = FATE_DEAD;
        return;
    }
    if (R.o.reconnect_delay_ms >= 0)
        delay = (uint64_t)R.o.reconnect_delay_ms;
    else
        delay = c->retry_ms ? c->retry_ms : DEFAULT_RECONNECT_MS;
    lc->reconnects++;
    R.reconnects++;
    queue_push(lc, now_ms() + delay);
}

/* --- publishing ----------------------------------------------------------------- */

static void on_answer_cb(void *ctx, uint32_t channel, uint32_t seq,
                         const struct publisher_answer *a)
{
    struct slot *s = &R.slots[(size_t)channel * R.o.events + seq];
    struct early_id *e, *next;

    (void)ctx;
    R.answered++;
    R.changes++;
    R.progress_ms = now_ms();
    if (a->t_ns != 0 && (R.first_publish_real == 0 || a->t_ns < R.first_publish_real))
        R.first_publish_real = a->t_ns;
    if (a->t_ns > R.last_publish_real)
        R.last_publish_real = a->t_ns;
    if (a->reason == NULL) {
        s->state = SLOT_OK;
        s->id = mem_strdup(a->id);
        R.published_ok++;
        R.ok_count[channel]++;
        bit_set(R.ok_bits[channel], seq);
    } else {
        s->state = SLOT_FAILED;
        reasons_add(&R.publish_fail, a->reason);
    }
    for (e = s->early; e != NULL; e = next) {
        next = e->next;
        if (s->state != SLOT_OK || strcmp(e->id, s->id) != 0)
            R.id_mismatch += e->count;
        free(e);
    }
    s->early = NULL;
    if (R.answered == R.total)
        R.all_answered_ms = R.progress_ms;
}

static void pace_publishes(uint64_t now)
{
    uint64_t due = R.total;

    if (R.o.rate > 0) {
        double d = floor((double)(now - R.publish_start_ms) * R.o.rate / 1000.0) + 1;
        if (d < (double)R.total)
            due = (uint64_t)d;
    }
    while (R.submitted < due) {
        uint32_t seq = (uint32_t)(R.submitted / R.o.channels);
        uint32_t ch = (uint32_t)(R.submitted % R.o.channels);
        R.slots[(size_t)ch * R.o.events + seq].state = SLOT_SUBMITTED;
        if (R.submitted == R.answered)
            R.progress_ms = now;  /* the stall clock starts with the first wait */
        R.submitted++;
        publisher_submit(R.pub, ch, seq);
    }
}

/* True when no reading client can still receive an event it lacks. */
static bool all_delivered(void)
{
    for (uint32_t i = 0; i < R.o.clients; i++) {
        const struct load_client *lc = &R.lc[i];
        if (lc->fate == FATE_FAILED || lc->fate == FATE_DEAD)
            continue;
        if (received_ok(lc) < R.ok_count[lc->sse.channel])
            return false;
    }
    return true;
}

/* --- phases ----------------------------------------------------------------------- */

static void finish(void);

static int64_t rss_of_target(void)
{
    return R.o.pid ? util_rss_bytes((pid_t)R.o.pid) : -1;
}

static void start_publish(uint64_t now)
{
    R.connect_end_ms = now;
    R.rss_connected = rss_of_target();
    R.phase = PHASE_PUBLISH;
    R.publish_start_ms = now;
    R.progress_ms = now;
    R.pub = publisher_new(&R.pconf);
    pace_publishes(now);
}

static void start_drain(uint64_t now)
{
    if (R.connect_end_ms == 0)
        R.connect_end_ms = now;
    R.rss_end = rss_of_target();
    R.self_rss = util_rss_bytes(0);
    if (R.pub != NULL) {
        publisher_close(R.pub);
        R.pub = NULL;
    }
    R.phase = PHASE_DRAIN;
    R.drain_start_ms = now;
    R.drain_change_ms = now;
    for (uint32_t i = R.o.clients; i < R.n_lc; i++)
        sse_client_drain(&R.lc[i].sse);
    if (R.o.no_read == 0)
        finish();
}

static void drain_check(uint64_t now)
{
    uint64_t bytes = 0;
    bool open = false;

    for (uint32_t i = R.o.clients; i < R.n_lc; i++) {
        const struct sse_client *c = &R.lc[i].sse;
        bytes += c->bytes_in;
        if (c->state == SSE_CLIENT_DRAINING)
            open = true;
    }
    if (bytes != R.drain_bytes) {
        R.drain_bytes = bytes;
        R.drain_change_ms = now;
    }
    if (!open || now - R.drain_change_ms >= DRAIN_IDLE_MS ||
        now - R.drain_start_ms >= (uint64_t)(R.o.timeout_s * 1000))
        finish();
}

static void tick_cb(uv_timer_t *t)
{
    uint64_t now = now_ms();
    uint64_t timeout_ms = (uint64_t)(R.o.timeout_s * 1000);

    (void)t;
    if (R.phase == PHASE_CONNECT || R.phase == PHASE_PUBLISH)
        pace_connects(now);
    R.last_tick_ms = now;
    switch (R.phase) {
    case PHASE_CONNECT:
        if (R.pending == 0 && R.q_head == NULL) {
            start_publish(now);
        } else if (R.q_head == NULL && now - R.last_start_ms >= timeout_ms) {
            /* Heads still missing: give up on them. */
            for (uint32_t i = 0; i < R.n_lc; i++)
                if (R.lc[i].fate == FATE_PENDING)
                    sse_client_close(&R.lc[i].sse, SSE_CLOSE_HEAD_TIMEOUT, 0);
        }
        break;
    case PHASE_PUBLISH:
        pace_publishes(now);
        if (now - R.last_check_ms < CHECK_EVERY_MS)
            break;
        R.last_check_ms = now;
        if (R.answered == R.total) {
            if (R.changes != R.checked_changes) {
                R.checked_changes = R.changes;
                if (all_delivered()) {
                    start_drain(now);
                    break;
                }
            }
            if (now - R.all_answered_ms >= timeout_ms) {
                R.timed_out = true;
                start_drain(now);
            }
        } else if (R.submitted > R.answered && now - R.progress_ms >= timeout_ms) {
            /* A POST has waited --timeout for its answer. */
            R.stalled = true;
            start_drain(now);
        }
        break;
    case PHASE_DRAIN:
        if (now - R.last_check_ms >= CHECK_EVERY_MS * 10) {
            R.last_check_ms = now;
            drain_check(now);
        }
        break;
    default:
        break;
    }
}

static void sigint_cb(uv_signal_t *s, int signum)
{
    (void)s;
    (void)signum;
    R.interrupted = true;
    if (R.phase == PHASE_CONNECT || R.phase == PHASE_PUBLISH) {
        if (R.phase == PHASE_CONNECT)
            R.rss_connected = rss_of_target();
        start_drain(now_ms());
    } else if (R.phase == PHASE_DRAIN) {
        finish();
    }
}

/* --- report --------------------------------------------------------------------- */

struct summary {
    uint64_t expected, received, missing, complete;
    uint32_t worst_missing, worst_missing_client, worst_dups, worst_dups_client;
    uint64_t unverified, reading_ooo_clients;
    double delivery_s, rate;
    double p50, p99, max, mean;
    bool pass;
};

static void summarize(struct summary *s)
{
    memset(s, 0, sizeof(*s));
    for (uint32_t i = 0; i < R.o.clients; i++) {
        const struct load_client *lc = &R.lc[i];
        uint32_t ok = R.ok_count[lc->sse.channel];
        uint32_t got = received_ok(lc);
        uint32_t miss = ok - got;

        s->expected += ok;
        s->received += got;
        s->missing += miss;
        if (lc->fate != FATE_FAILED && lc->fate != FATE_PENDING && miss == 0 &&
            lc->dups == 0 && lc->ooo == 0)
            s->complete++;
        if (miss > s->worst_missing) {
            s->worst_missing = miss;
            s->worst_missing_client = i;
        }
        if (lc->dups > s->worst_dups) {
            s->worst_dups = lc->dups;
            s->worst_dups_client = i;
        }
    }
    for (uint64_t i = 0; i < (uint64_t)R.o.channels * R.o.events; i++)
        for (struct early_id *e = R.slots[i].early; e != NULL; e = e->next)
            s->unverified += e->count;
    if (R.first_publish_real && R.last_delivery_real > R.first_publish_real) {
        s->delivery_s = (double)(R.last_delivery_real - R.first_publish_real) / 1e9;
        s->rate = (double)R.unique_total / s->delivery_s;
    }
    s->p50 = (double)stats_hist_quantile(&R.lat, 0.50) / 1e6;
    s->p99 = (double)stats_hist_quantile(&R.lat, 0.99) / 1e6;
    s->max = (double)R.lat.max / 1e6;
    s->mean = stats_hist_mean(&R.lat) / 1e6;
    s->pass = reasons_total(&R.connect_fail) == 0 && R.published_ok == R.total &&
              s->missing == 0 && R.dups_total == 0 && R.ooo_total == 0 &&
              R.id_mismatch == 0 && R.id_missing == 0 && s->unverified == 0 &&
              R.type_mismatch == 0 && R.bad_seq == 0 && s->expected > 0;
}

static void print_reasons_text(const struct reasons *rs)
{
    if (rs->n == 0)
        return;
    printf(" (");
    for (unsigned i = 0; i < rs->n; i++)
        printf("%s%s %" PRIu64, i ? ", " : "", rs->r[i].name, rs->r[i].count);
    printf(")");
}

static void print_json_reasons(const char *key, const struct reasons *rs)
{
    printf("\"%s\":{", key);
    for (unsigned i = 0; i < rs->n; i++)
        printf("%s\"%s\":%" PRIu64, i ? "," : "", rs->r[i].name, rs->r[i].count);
    printf("}");
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

static void print_rss_json(const char *key, int64_t v)
{
    if (v >= 0)
        printf(",\"%s\":%" PRId64, key, v);
    else
        printf(",\"%s\":null", key);
}

static void report_json(const struct summary *s)
{
    uint32_t conn = R.connected_read + R.connected_no_read;

    printf("{\"url\":");
    print_json_string(R.o.url);
    printf(",\"clients\":%" PRIu32 ",\"no_read\":%" PRIu32 ",\"channels\":%" PRIu32
           ",\"events\":%" PRIu32 ",\"rate\":%g,\"payload\":%zu",
           R.o.clients, R.o.no_read, R.o.channels, R.o.events, R.o.rate, R.o.payload);
    printf(",\"connected\":%" PRIu32 ",\"connected_no_read\":%" PRIu32
           ",\"connect_failed\":%" PRIu64 ",",
           R.connected_read, R.connected_no_read, reasons_total(&R.connect_fail));
    print_json_reasons("connect_failures", &R.connect_fail);
    printf(",\"connect_s\":%.3f", (double)(R.connect_end_ms - R.connect_start_ms) / 1e3);
    print_rss_json("rss_start", R.rss_start);
    print_rss_json("rss_connected", R.rss_connected);
    print_rss_json("rss_end", R.rss_end);
    if (R.rss_start >= 0 && R.rss_connected >= 0 && conn > 0)
        printf(",\"rss_per_client\":%.0f", (double)(R.rss_connected - R.rss_start) / conn);
    else
        printf(",\"rss_per_client\":null");
    print_rss_json("self_rss", R.self_rss);
    printf(",\"published\":%" PRIu64 ",\"publish_failed\":%" PRIu64 ",\"unpublished\":%" PRIu64
           ",", R.published_ok, R.answered - R.published_ok, R.total - R.answered);
    print_json_reasons("publish_failures", &R.publish_fail);
    printf(",\"deliveries_expected\":%" PRIu64 ",\"deliveries_received\":%" PRIu64
           ",\"events_received\":%" PRIu64 ",\"missing\":%" PRIu64
           ",\"missing_worst\":%" PRIu32 ",\"duplicates\":%" PRIu64
           ",\"duplicates_worst\":%" PRIu32 ",\"out_of_order\":%" PRIu64
           ",\"id_mismatches\":%" PRIu64 ",\"id_missing\":%" PRIu64
           ",\"id_unverified\":%" PRIu64 ",\"type_mismatches\":%" PRIu64
           ",\"bad_seq\":%" PRIu64 ",\"stale\":%" PRIu64 ",\"resets\":%" PRIu64
           ",\"other_events\":%" PRIu64 ",\"clients_complete\":%" PRIu64,
           s->expected, s->received, R.deliveries, s->missing, s->worst_missing,
           R.dups_total, s->worst_dups, R.ooo_total, R.id_mismatch, R.id_missing,
           s->unverified, R.type_mismatch, R.bad_seq, R.stale, R.resets, R.other_events,
           s->complete);
    printf(",\"latency_ms\":{\"p50\":%.3f,\"p99\":%.3f,\"max\":%.3f,\"mean\":%.3f}",
           s->p50, s->p99, s->max, s->mean);
    printf(",\"delivery_s\":%.3f,\"deliveries_per_s\":%.0f", s->delivery_s, s->rate);
    printf(",\"reading_disconnects\":%" PRIu64 ",", reasons_total(&R.disconnects));
    print_json_reasons("reading_disconnect_reasons", &R.disconnects);
    printf(",\"reconnects\":%" PRIu64, R.reconnects);
    printf(",\"no_read_disconnected\":%" PRIu64 ",\"no_read_eof\":%" PRIu64
           ",\"no_read_rst\":%" PRIu64 ",\"no_read_open\":%" PRIu64
           ",\"no_read_other\":%" PRIu64,
           R.no_read_eof + R.no_read_rst, R.no_read_eof, R.no_read_rst, R.no_read_open,
           R.no_read_other);
    printf(",\"timed_out\":%s,\"stalled\":%s,\"interrupted\":%s,\"pass\":%s}\n",
           R.timed_out ? "true" : "false", R.stalled ? "true" : "false",
           R.interrupted ? "true" : "false", s->pass ? "true" : "false");
}

static void print_mib(int64_t v)
{
    if (v >= 0)
        printf("%.1f MiB", (double)v / 1048576.0);
    else
        printf("n/a");
}

static void report_text(const struct summary *s)
{
    uint32_t conn = R.connected_read + R.connected_no_read;

    printf("sse-load %s\n", R.o.url);
    printf("  setup        %" PRIu32 " clients + %" PRIu32 " no-read on %" PRIu32
           " channels; %" PRIu32 " events/channel at %g/s, %zu-byte payload\n",
           R.o.clients, R.o.no_read, R.o.channels, R.o.events, R.o.rate, R.o.payload);
    printf("  connected    %" PRIu32 "/%" PRIu32 " reading, %" PRIu32 "/%" PRIu32
           " no-read in %.2f s; failed %" PRIu64,
           R.connected_read, R.o.clients, R.connected_no_read, R.o.no_read,
           (double)(R.connect_end_ms - R.connect_start_ms) / 1e3,
           reasons_total(&R.connect_fail));
    print_reasons_text(&R.connect_fail);
    printf("\n");
    if (R.o.pid) {
        printf("  server RSS   start ");
        print_mib(R.rss_start);
        printf(", connected ");
        print_mib(R.rss_connected);
        printf(", end ");
        print_mib(R.rss_end);
        if (R.rss_start >= 0 && R.rss_connected >= 0 && conn > 0)
            printf("; %.0f bytes/client", (double)(R.rss_connected - R.rss_start) / conn);
        printf("\n");
    }
    printf("  sse-load RSS ");
    print_mib(R.self_rss);
    printf("\n");
    printf("  published    %" PRIu64 "/%" PRIu64 " ok, failed %" PRIu64,
           R.published_ok, R.total, R.answered - R.published_ok);
    print_reasons_text(&R.publish_fail);
    if (R.total > R.answered)
        printf(", never answered/sent %" PRIu64, R.total - R.answered);
    if (R.last_publish_real > R.first_publish_real)
        printf(" over %.2f s (%.1f/s)",
               (double)(R.last_publish_real - R.first_publish_real) / 1e9,
               (double)(R.answered - 1) * 1e9 /
                   (double)(R.last_publish_real - R.first_publish_real));
    printf("\n");
    printf("  deliveries   expected %" PRIu64 ", received %" PRIu64 " (%" PRIu64
           " events incl. duplicates); clients complete %" PRIu64 "/%" PRIu32 "\n",
           s->expected, s->received, R.deliveries, s->complete, R.o.clients);
    printf("  missing      %" PRIu64, s->missing);
    if (s->worst_missing)
        printf(" (worst: client %" PRIu32 " missed %" PRIu32 ")", s->worst_missing_client,
               s->worst_missing);
    printf("\n  duplicates   %" PRIu64, R.dups_total);
    if (s->worst_dups)
        printf(" (worst: client %" PRIu32 " got %" PRIu32 ")", s->worst_dups_client,
               s->worst_dups);
    printf("\n");
    printf("  out of order %" PRIu64 "\n", R.ooo_total);
    printf("  id mismatch  %" PRIu64 " (missing id %" PRIu64 ", unverified %" PRIu64 ")\n",
           R.id_mismatch, R.id_missing, s->unverified);
    if (R.type_mismatch || R.bad_seq || R.stale || R.resets || R.other_events)
        printf("  other        type mismatches %" PRIu64 ", bad seq %" PRIu64
               ", stale %" PRIu64 ", reset events %" PRIu64 ", other events %" PRIu64 "\n",
               R.type_mismatch, R.bad_seq, R.stale, R.resets, R.other_events);
    printf("  latency      p50 %.3f ms, p99 %.3f ms, max %.3f ms (mean %.3f)\n",
           s->p50, s->p99, s->max, s->mean);
    printf("  throughput   %.0f deliveries/s over %.3f s (first publish to last delivery)\n",
           s->rate, s->delivery_s);
    printf("  disconnects  reading %" PRIu64, reasons_total(&R.disconnects));
    print_reasons_text(&R.disconnects);
    printf(", reconnects %" PRIu64 "\n", R.reconnects);
    if (R.o.no_read)
        printf("  no-read      %" PRIu64 "/%" PRIu32 " disconnected by server (eof %" PRIu64
               ", rst %" PRIu64 "), %" PRIu64 " still open, %" PRIu64 " other\n",
               R.no_read_eof + R.no_read_rst, R.connected_no_read, R.no_read_eof,
               R.no_read_rst, R.no_read_open, R.no_read_other);
    printf("  result       %s%s%s%s\n", s->pass ? "PASS" : "FAIL",
           R.timed_out ? " (delivery timed out)" : "",
           R.stalled ? " (publishing stalled)" : "", R.interrupted ? " (interrupted)" : "");
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h) && h->type != UV_TCP)
        uv_close(h, NULL);
}

static int exit_code;

/* Ends the run: report, then close every handle; main() returns after. */
static void finish(void)
{
    struct summary s;

    if (R.phase == PHASE_DONE)
        return;
    for (uint32_t i = R.o.clients; i < R.n_lc; i++)
        if (R.lc[i].sse.state == SSE_CLIENT_DRAINING || R.lc[i].sse.state == SSE_CLIENT_SILENT)
            R.no_read_open++;
    R.phase = PHASE_DONE;
    summarize(&s);
    if (R.o.json)
        report_json(&s);
    else
        report_text(&s);
    fflush(stdout);
    exit_code = s.pass ? EXIT_PASS : EXIT_FAIL;

    if (R.pub != NULL) {
        publisher_close(R.pub);
        R.pub = NULL;
    }
    for (uint32_t i = 0; i < R.n_lc; i++)
        sse_client_close(&R.lc[i].sse, SSE_CLOSE_LOCAL, 0);
    uv_walk(R.loop, close_walk_cb, NULL);
}

/* Soft limit up to the hard one: 15,000 sockets need it. */
static void raise_nofile(uint64_t need)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && need > rl.rlim_cur)
        fprintf(stderr, "sse-load: warning: %" PRIu64 " sockets wanted, open-file limit %llu;"
                        " expect EMFILE failures\n", need, (unsigned long long)rl.rlim_cur);
}

/* --- setup / teardown ------------------------------------------------------- */

static void setup(void)
{
    uint64_t words;

    R.run_start_real = util_real_ns();
    stats_hist_init(&R.lat);
    R.total = (uint64_t)R.o.channels * R.o.events;
    R.slots = mem_calloc(R.total, sizeof(*R.slots));
    R.ok_count = mem_calloc(R.o.channels, sizeof(*R.ok_count));
    R.ok_bits = mem_calloc(R.o.channels, sizeof(*R.ok_bits));
    words = bitmap_words();
    for (uint32_t i = 0; i < R.o.channels; i++)
        R.ok_bits[i] = mem_calloc(words, sizeof(uint64_t));

    R.ccbs.on_ready_cb = on_ready_cb;
    R.ccbs.on_event_cb = on_event_cb;
    R.ccbs.on_closed_cb = on_closed_cb;
    R.cconf.loop = R.loop;
    R.cconf.server = (const struct sockaddr *)&R.o.server;
    R.cconf.host = R.o.host;
    R.cconf.paths = (const char *const *)R.o.get_paths;
    R.cconf.event_type = R.o.event_type[0] ? R.o.event_type : NULL;
    R.cconf.no_read_rcvbuf = R.o.no_read_rcvbuf;
    R.cconf.cbs = &R.ccbs;

    R.pconf.loop = R.loop;
    R.pconf.server = (const struct sockaddr *)&R.o.server;
    R.pconf.host = R.o.host;
    R.pconf.paths = (const char *const *)R.o.post_paths;
    R.pconf.token = R.o.token;
    R.pconf.payload = R.o.payload;
    R.pconf.connections = R.o.inflight < R.o.channels ? R.o.inflight : R.o.channels;
    R.pconf.on_answer_cb = on_answer_cb;

    R.n_lc = R.o.clients + R.o.no_read;
    R.lc = mem_calloc(R.n_lc, sizeof(*R.lc));
    for (uint32_t i = 0; i < R.n_lc; i++) {
        struct load_client *lc = &R.lc[i];
        bool no_read = i >= R.o.clients;
        uint32_t idx = no_read ? i - R.o.clients : i;
        sse_client_init(&lc->sse, &R.cconf, idx % R.o.channels, no_read);
        lc->fate = FATE_PENDING;
        queue_push(lc, 0);
    }
    R.pending = R.n_lc;
}

static void teardown(void)
{
    for (uint32_t i = 0; i < R.n_lc; i++)
        free(R.lc[i].seen);
    free(R.lc);
    for (uint64_t i = 0; i < R.total; i++) {
        struct early_id *e, *next;
        for (e = R.slots[i].early; e != NULL; e = next) {
            next = e->next;
            free(e);
        }
        free(R.slots[i].id);
    }
    free(R.slots);
    for (uint32_t i = 0; i < R.o.channels; i++)
        free(R.ok_bits[i]);
    free(R.ok_bits);
    free(R.ok_count);
    cli_free(&R.o);
}

int main(int argc, char **argv)
{
    int rc;

    rc = cli_parse(&R.o, argc, argv);
    if (rc != 0)
        return rc < 0 ? EXIT_PASS : rc;
    raise_nofile((uint64_t)R.o.clients + R.o.no_read + R.o.inflight + 32);
    R.loop = uv_default_loop();
    setup();

    R.rss_start = rss_of_target();
    R.connect_start_ms = now_ms();
    R.last_tick_ms = R.connect_start_ms;
    R.last_start_ms = R.connect_start_ms;
    R.tokens = 1;
    uv_timer_init(R.loop, &R.tick);
    uv_timer_start(&R.tick, tick_cb, 0, TICK_MS);
    uv_signal_init(R.loop, &R.sigint);
    uv_signal_start(&R.sigint, sigint_cb, SIGINT);

    uv_run(R.loop, UV_RUN_DEFAULT);

    rc = uv_loop_close(R.loop);
    if (rc != 0)
        fprintf(stderr, "sse-load: loop still busy at exit: %s\n", uv_err_name(rc));
    teardown();
    return exit_code;
}
