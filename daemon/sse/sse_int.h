/*
 * sse_int: what the pieces of daemon/sse/ share (the picture is in
 * events.c): the hub, the streams, channels with their sync state, clients
 * and history reads, and the calls between them. Internal to daemon/sse/;
 * everyone else uses events.h.
 */
#ifndef BATCHD_SSE_INT_H
#define BATCHD_SSE_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <uv.h>

#include "daemon/config.h"
#include "daemon/sse/events.h"
#include "daemon/sse/sse_publish.h"
#include "daemon/sse/sse_queue.h"
#include "proto/hashtab.h"
#include "proto/sse.h"

struct req;
struct sse_history;

/* Entries per XRANGE page of a history read. */
#define SSE_HISTORY_PAGE 500

enum sse_ch_state { CH_SUBSCRIBING, CH_SYNCING, CH_SYNC_WAIT, CH_LIVE };
enum sse_cl_state { CL_POSITIONING, CL_WAITING, CL_REPLAYING, CL_LIVE };

/* Why a stream request is answered with a "retry:" and ended at once.
 * OWNER_UNAVAILABLE: access = owner and the owner_resource document could
 * not be read (Redis and PostgreSQL unreachable, busy, or the query failed). */
enum sse_turn_away {
    TURN_AWAY_OVERLOADED,
    TURN_AWAY_UNAVAILABLE,
    TURN_AWAY_SHUTTING_DOWN,
    TURN_AWAY_OWNER_UNAVAILABLE,
    TURN_AWAY_AUTH_UNAVAILABLE,     /* forward auth's check did not answer */
    TURN_AWAY__COUNT
};

/* One [stream NAME]: its config and counters. */
struct sse_stream {
    struct events *hub;
    const struct cfg_stream *cfg;
    bool retired;               /* dropped by a reload: no new clients */
    unsigned n_clients;
    struct sse_publish_stats pub;
    uint64_t *m_delivered, *m_overflow, *m_replayed, *m_resets, *m_resyncs;
    uint64_t *m_rejected[TURN_AWAY__COUNT];
    uint64_t *m_invalid_live, *m_invalid_history;
    uint64_t *m_held_overflows, *m_gap_flushes;
    uint64_t *m_not_owner;      /* subscribes/publishes refused: not the owner (access = owner) */
};

/* One Redis key with clients: one SUBSCRIBE, shared. */
struct sse_channel {
    struct hashtab_node hnode;  /* in the hub's table, keyed by key */
    struct events *hub;
    struct sse_stream *def;
    char *key;
    uint32_t refs;              /* clients + history reads in flight */
    LIST_HEAD(, sse_client) clients;
    enum sse_ch_state state;
    bool have_last;             /* the channel has its position */
    unsigned positioning;       /* position reads in flight */
    struct sse_id last_id;      /* newest id this channel has passed on */
    struct sse_evq held;        /* live events received while SYNCING, up to sync_held_bytes */
    bool held_dropped;          /* held events passed the limit and were dropped: this sync
                                 * reads the Stream again before it goes live */
    unsigned sync_gen;          /* bumped by each sync: tells an overtaken one */
    unsigned sync_attempt;      /* backoff state while syncs fail */
    unsigned sync_failures;     /* in this streak: logged once, at the first */
    uint64_t sync_retry_ms;     /* when SYNC_WAIT: loop time of the next try */
};

/* One GET of a stream. */
struct sse_client {
    LIST_ENTRY(sse_client) link;        /* the channel's clients */
    TAILQ_ENTRY(sse_client) dirty_link; /* the hub's clients to flush, while dirty */
    struct sse_channel *ch;
    struct req *r;
    struct sse_out *out;        /* what waits to be written */
    struct sse_history *op;     /* own history read, when REPLAYING */
    bool *gone;                 /* set when the client is freed during a call that may close it */
    enum sse_cl_state state;
    bool dirty;
    bool want_replay;
    bool have_last;
    struct sse_id from;         /* Last-Event-ID */
    struct sse_id last_id;      /* newest id sent */
    struct sse_evq held;        /* live events received while REPLAYING */
    uint64_t last_write_ms;
};

enum sse_history_kind {
    HIST_CLIENT,                /* a client's replay from its Last-Event-ID */
    HIST_GAP,                   /* a channel's sync: everything after its position */
    HIST_POSITION,              /* a channel's position: the newest id */
};

/* A read of a Stream's history (paged), or of its newest id. */
struct sse_history {
    struct sse_channel *ch;     /* holds a reference */
    struct sse_client *cl;      /* client reads; NULL once the client left */
    enum sse_history_kind kind;
    unsigned outstanding;
    int err;
    char why[96];               /* Redis's error reply, for the log */
    unsigned gen;               /* channel syncs: the channel's sync_gen at start (0: none) */
    unsigned n_invalid;         /* entries dropped: not valid as events */
    bool too_far;               /* client reads: the replay would not fit its queue */
    bool have_oldest, have_newest;
    struct sse_id from, oldest, newest;
    struct sse_evq got;         /* entries read, in order (a gap read's: up to sync_gap_bytes) */
    bool passed_on;             /* a gap read passed on part of what it read already */
    unsigned page_len;
};

/* The hub: every stream and channel of the process. */
struct events {
    uv_loop_t *loop;
    const struct config *cfg;
    struct redis_pool *redis;
    struct sse_stream **defs;   /* stable addresses: channels point at them */
    unsigned n_defs;
    struct hashtab channels;    /* struct sse_channel, by key */
    TAILQ_HEAD(, sse_client) dirty; /* clients with frames to write this iteration */
    uv_check_t flush;
    uv_timer_t ping;
    uv_timer_t resync;          /* retries failed channel syncs */
    uint64_t resync_due;        /* loop time it fires at, 0 when stopped */
    unsigned handles_open;
    struct sse_publisher *publisher;
    struct sse_ev *ping_ev;
    struct resource_set *resources;  /* for access = owner's owner_resource */
    bool draining;
    uint64_t *m_clients_total;
    uint64_t *m_history_errors;
};

/* --- sse_access.c: access = authenticated | owner ------------------------------------ */

/* Goes on with sse_subscribe_granted / sse_publish_granted once r may use
 * def's stream {id} (at once when it is public; id is the decoded {id}),
 * else answers r (401/403/404/503). Nothing is allocated until the
 * principal is known. */
void sse_access_check(struct req *r, struct sse_stream *def, str_t id, bool subscribe);
/* (sse_handlers.c) */
void sse_subscribe_granted(struct req *r, struct sse_stream *def, str_t id);
void sse_publish_granted(struct req *r, struct sse_stream *def, str_t id);

/* --- sse_channel.c: channels and their sync state machine -------------------------- */

struct sse_channel *sse_channel_find(struct events *h, const char *key, size_t len);
/* The channel named key, created (and subscribed) when there is none. */
struct sse_channel *sse_channel_get(struct events *h, struct sse_stream *def, const char *key);
/* The next channel of a walk over every channel:
 *   for (hashtab_iter_init(&it, &h->channels); (c = sse_channel_next(&it)) != NULL;)
 * The loop may drop the channel it was given (hashtab.h). */
struct sse_channel *sse_channel_next(struct hashtab_iter *it);
/* Drops a reference; the last one frees the channel and unsubscribes. */
void sse_channel_unref(struct sse_channel *c);
/* Passes an event on to every client (it may drop some). */
void sse_channel_deliver(struct sse_channel *ch, struct sse_ev *e);
/* A message from pub/sub for chan. */
void sse_channel_message(struct events *h, const char *chan, size_t chan_len, const char *msg, size_t msg_len);
/* The SUBSCRIBE is confirmed: read what came after the position (or the
 * position), then go live. */
void sse_channel_sync(struct sse_channel *ch);
/* Reads the channel's position. in_sync: as the sync after a confirmed
 * SUBSCRIBE, which then needs no gap read when this read sets it. */
void sse_channel_read_position(struct sse_channel *ch, bool in_sync);
/* A gap read holds sync_gap_bytes: passes on what it read so far, so that
 * it can read on. */
void sse_channel_gap_flush(struct sse_history *op);
/* History reads of a channel are done (sse_history.c calls these). */
void sse_channel_sync_done(struct sse_history *op);
void sse_channel_position_done(struct sse_history *op);

/* --- sse_client.c: clients ---------------------------------------------------------- */

/* A new client of def on channel key: joins it, and answers now or once
 * its start is known. */
void sse_client_new(struct sse_stream *def, struct req *r, const char *key, bool want_replay, struct sse_id from);
/* Takes the client out of its channel and frees it; the request is the
 * caller's to end. */
void sse_client_detach(struct sse_client *cl);
/* Gives an event to a client. Returns false when the client was dropped. */
bool sse_client_offer(struct sse_client *cl, struct sse_ev *e);
/* Writes at the end of this loop iteration. */
void sse_client_mark_dirty(struct sse_client *cl);
/* Starts the writes of every dirty client (the hub's check handle). */
void sse_client_flush_dirty(struct events *h);
/* What the client holds, in bytes; with kernel, its socket's unsent bytes too. */
size_t sse_client_queued(const struct sse_client *cl, bool kernel);
/* True when extra more bytes keep the client within client_queue_bytes. */
bool sse_client_fits(const struct sse_client *cl, size_t extra);
/* No Last-Event-ID: starts live at the channel's position and answers. */
void sse_client_begin_live(struct sse_client *cl);
/* The channel is live: a client with Last-Event-ID reads its own history. */
void sse_client_start_replay(struct sse_client *cl);
/* Its history read is done (sse_history.c calls this). */
void sse_client_replay_done(struct sse_history *op);
/* Shutdown: a last jittered "retry:", then the stream ends. */
void sse_client_drain(struct sse_client *cl);
/* Answers a stream request that cannot be served now with a 200 holding a
 * jittered "retry:", then ends it (EventSource comes back by itself). */
void sse_turn_away(struct req *r, struct sse_stream *def, enum sse_turn_away why);
/* The reconnect delay a stream tells its browser: retry_ms plus up to as
 * much again, so that clients told at one moment do not come back at one. */
unsigned sse_retry_jittered(const struct cfg_stream *cfg);

/* --- sse_history.c: reads of a Stream ---------------------------------------------- */

/* A read of kind for ch (it takes a reference); the caller sets what the
 * kind needs (cl, from, gen), then starts it. */
struct sse_history *sse_history_new(struct sse_channel *ch, enum sse_history_kind kind);
/* Sends the read's commands. Its end goes to sse_client_replay_done,
 * sse_channel_sync_done or sse_channel_position_done, then it is freed;
 * when nothing could be sent that happens before this returns. */
void sse_history_start(struct sse_history *op);

/* --- sse_handlers.c: the routes ----------------------------------------------------- */

void sse_subscribe_handler(struct req *r, void *data);
void sse_publish_handler(struct req *r, void *data);

#endif
