/*
 * config: the INI file, parsed with inih into typed structs.
 *
 * Every key is a row in one table (config_table.c): section, name, type,
 * min/max, default, whether SIGHUP may change it, and the field it sets.
 * config_load reports every problem it finds, each naming the file, line,
 * section, key and the rule broken, and returns NULL if there was any.
 */
#ifndef BATCHD_CONFIG_H
#define BATCHD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "proto/buf.h"

struct cfg_addr {
    char *text;                 /* as written, for logs */
    struct sockaddr_storage ss;
    socklen_t len;
};

struct cfg_redis_seed {
    char *host;
    int port;
};

struct cfg_redis_url {
    char *text;                 /* with any password masked */
    char *host;                 /* the first host:port */
    int port;
    struct cfg_redis_seed *seeds; /* every host:port written (a cluster's seed nodes); [0] is host:port */
    unsigned n_seeds;
    char *password;             /* NULL when none */
    char *username;             /* NULL when none (Redis 6 ACL user) */
    int db;
};

struct cfg_http_url {
    char *text;
    char *host;                 /* for the Host header */
    int port;
    struct cfg_addr addr;       /* resolved at load */
};

struct cfg_list {
    char **items;
    unsigned n;
};

/* Address ranges, "10.0.0.0/8, ::1". */
struct cfg_cidr {
    int family;                 /* AF_INET or AF_INET6 */
    unsigned bits;
    uint8_t addr[16];
};

struct cfg_cidrs {
    struct cfg_cidr *items;
    unsigned n;
    char *text;                 /* as written, for logs */
};

/* True when `sa` (IPv4, IPv6 or IPv4-mapped IPv6) is inside one of the ranges. */
bool config_cidrs_match(const struct cfg_cidrs *l, const struct sockaddr *sa);

struct cfg_batchd {
    struct cfg_addr listen;
    struct cfg_addr admin_listen;   /* len == 0 when not set */
    bool reuseport;
    int64_t workers;                /* 0: one per CPU; 1: one process, no master */
    int64_t max_connections;
    int64_t header_timeout_ms;
    int64_t idle_timeout_ms;
    int64_t max_header_bytes;
    int64_t max_uri_bytes;
    int64_t max_body_bytes;
    int64_t max_pipeline;
    int64_t write_queue_bytes;
    int64_t shutdown_grace_ms;
    int64_t drain_idle_ms;          /* idle keep-alive connections stay this long after SIGTERM */
    int64_t slow_ms;
    int64_t log_level;              /* enum log_level */
    char *admin_token;              /* "" when not set */
    bool gzip;                      /* gzip batchd's own answers when the client accepts it */
    int64_t gzip_level;             /* deflate level, 1..9 */
    int64_t gzip_min_bytes;         /* smaller answers go uncoded */
    bool etag;                      /* ETag on batchd's own answers, 304 on If-None-Match */
};

struct cfg_redis {
    struct cfg_redis_url url;
    int64_t pool_size;
    int64_t connect_timeout_ms;
    int64_t command_timeout_ms;
    int64_t ping_interval_ms;
    int64_t max_pending;            /* commands awaiting replies, all connections; more: -EBUSY */
    bool cluster;                   /* Redis Cluster: url holds seed nodes; slots routed by batchd */
    int64_t cluster_refresh_ms;     /* CLUSTER SLOTS asked this often (and at once on MOVED) */
};

struct cfg_postgres {
    char *conninfo;
    int64_t pool_size;
    int64_t connect_timeout_ms;
    int64_t query_timeout_ms;
    int64_t ping_interval_ms;
    int64_t max_pending;            /* queries awaiting results, all connections; more: -EBUSY */
    struct cfg_list replicas;       /* read replicas' conninfos (';'-separated in the file) */
    int64_t max_replica_lag_ms;     /* replicas further behind get no reads */
    int64_t recent_writes_bytes;    /* bound of the record of keys written recently */
};

struct cfg_upstream {
    struct cfg_http_url url;
    int64_t pool_size;
    int64_t connect_timeout_ms;
    int64_t timeout_ms;
    int64_t idle_timeout_ms;        /* keep-alive connections idle this long are closed */
    int64_t max_body_bytes;         /* 0 = no limit (bodies are streamed) */
    int64_t buffer_bytes;           /* per direction, before reading pauses */
    int64_t max_waiting;            /* requests queued for a busy pool; more: 503 */
    int64_t request_buffer_bytes;   /* bodies up to this are read whole before a connection is taken */
    bool underscores_in_headers;    /* forward header names with '_' (dropped otherwise) */
    struct cfg_cidrs trusted_proxies; /* peers whose X-Forwarded-* are kept */
    bool websocket;                 /* Upgrade requests may become tunnels (proxy/tunnel.c) */
    int64_t tunnel_idle_timeout_ms; /* a tunnel with no byte either way this long is closed */
    int64_t max_tunnels;            /* tunnels open or being set up; more: 503 */
    int64_t tunnel_buffer_bytes;    /* per direction, before the tunnel stops reading a side */
};

struct config;

/* Who may read a resource or subscribe to a stream. */
enum cfg_access {
    ACCESS_PUBLIC,          /* anyone who can reach batchd (no credential looked at) */
    ACCESS_AUTHENTICATED,   /* any verified principal */
    ACCESS_OWNER,           /* the principal named by the document's owner_field */
};

/* [auth]: who is asking. JWTs verified by batchd, or forward auth through
 * the app (check_url). Empty strings mean "not set". */
struct cfg_auth {
    char *jwt_secret_file;          /* HS256 */
    struct cfg_list jwt_public_keys;/* PEM files, RS256/ES256, picked by kid */
    char *jwt_issuer;               /* required iss when set */
    char *jwt_audience;             /* required in aud when set */
    char *principal_claim;
    int64_t leeway_s;
    int64_t max_token_bytes;
    char *jwt_cookie;               /* the token may come from this cookie */
    bool query_token;               /* on SSE routes, ?access_token= */
    char *check_url;                /* forward auth: path on [upstream] */
    char *check_principal_header;   /* in the app's 2xx answer */
    int64_t check_cache_ms;
    int64_t check_cache_entries;
    int64_t check_timeout_ms;
    char *forward_principal_header; /* set on proxied requests; always removed from clients' */
};

struct cfg_resource {
    struct config *owner;   /* the config this section is part of (see config_ref) */
    char *name;
    int line;
    char *path;
    char *key;
    int64_t ttl;
    int64_t negative_ttl;
    int64_t max_ids;
    int64_t max_batch_keys;
    int64_t batch_window_us;
    int64_t max_ids_in_flight;  /* distinct ids queued or being read; more: 503 resource_busy */
    char *by_ids;
    struct cfg_list invalidate;
    int64_t access;             /* enum cfg_access */
    char *owner_field;          /* top-level field of the document naming its owner */
    int64_t local_cache_bytes;  /* near cache bound (bookkeeping included); 0: off */
};

struct cfg_stream {
    struct config *owner;   /* the config this section is part of (see config_ref) */
    char *name;
    int line;
    char *path;
    char *key;
    int64_t max_len;
    int64_t ping_interval_ms;
    int64_t retry_ms;
    int64_t client_queue_bytes;
    int64_t max_event_bytes;
    int64_t max_sse_clients;
    int64_t socket_send_buffer_bytes;   /* SO_SNDBUF of SSE sockets; 0: the kernel's default */
    int64_t idempotency_window_ms;      /* how long a publish's Idempotency-Key is remembered */
    int64_t sync_held_bytes;            /* live events a syncing channel holds; past it: re-read */
    int64_t sync_gap_bytes;             /* a channel's gap read held before passing it on */
    int64_t access;                     /* enum cfg_access */
    char *owner_resource;               /* access = owner: the resource whose {id} document owns it */
    bool owners_publish;                /* the owner may publish, not only the admin token */
};

/* [list NAME]: owner-scoped pages, ids from page_query, bodies from a resource. */
struct cfg_listing {
    struct config *owner;   /* the config this section is part of (see config_ref) */
    char *name;
    int line;
    char *path;
    char *resource;             /* the [resource] the items are read from */
    char *page_query;           /* $1 principal, $2 cursor, $3 limit + 1, $4... params */
    struct cfg_list params;     /* query-string filters, passed as $4... */
    int64_t default_limit;
    int64_t max_limit;
    int64_t ttl;                /* a page's ids cached in Redis; 0: not cached */
    int64_t max_cursor_bytes;   /* a cursor as the client sends it (longer: 400) */
    struct cfg_list invalidate; /* the principal's proxied writes that drop its pages */
    int64_t max_pages_in_flight;/* distinct pages loading at once; more: 503 list_busy */
    int64_t max_cached_pages;   /* pages kept per principal; a full hash is emptied first */
};

/* [cors]: which web pages on other origins may read batchd's answers
 * (daemon/http/cors.c). */
struct cfg_cors {
    struct cfg_list origins;        /* exact origins, lower case; or the one item "*" */
    struct cfg_list methods;        /* Access-Control-Allow-Methods */
    struct cfg_list headers;        /* request headers a page may send; "*": any */
    struct cfg_list expose_headers; /* answer headers a page may read */
    int64_t max_age;                /* seconds a preflight may be cached */
    bool credentials;               /* cookies / Authorization from the page */
    bool proxied;                   /* also for the app's routes (else left to the app) */
};

struct config {
    char *file;
    struct cfg_batchd batchd;
    bool has_redis, has_postgres, has_upstream;
    struct cfg_redis redis;
    struct cfg_postgres postgres;
    struct cfg_upstream upstream;
    struct cfg_resource *resources;
    unsigned n_resources;
    struct cfg_stream *streams;
    unsigned n_streams;
    bool has_auth;
    struct cfg_auth auth;
    struct cfg_listing *lists;
    unsigned n_lists;
    bool has_cors;
    struct cfg_cors cors;
    unsigned refs;      /* holders: the app (while running), routers, resources, streams */
};

/* Parses and validates `path`. On failure returns NULL and appends one line
 * per problem to `errors`. A loaded config has one reference, the caller's.
 *
 * A reload replaces the running config, but requests in flight (through
 * their router), and resources and streams a reload removed, still point
 * into the one they started with; each such holder takes a reference and
 * the config is freed when the last one goes. */
struct config *config_load(const char *path, struct buf *errors);
struct config *config_ref(struct config *c);
void config_unref(struct config *c);
/* Configs in memory now (the running one and replaced ones still held). */
unsigned config_live_count(void);

/* Appends a line for every setting that differs between `old` and `new` but
 * cannot change without a restart; returns how many there were. */
unsigned config_restart_needed(const struct config *old, const struct config *new_,
                               struct buf *out);

/* For a reload: settings of `next` that need a restart take the running
 * values (the two swap), so the process keeps running as it was started
 * while everything reloadable comes from `next`. Use after
 * config_restart_needed has reported the differences. */
void config_keep_restart_settings(struct config *running, struct config *next);

/* Prints every setting of the table as one JSON object a line (section,
 * named, name, type, default, min, max, required, reload): what
 * `batchd --settings` shows. Returns 0, or -1 when writing failed.
 * (config_dump.c) */
int config_print_settings(FILE *out);

#endif
