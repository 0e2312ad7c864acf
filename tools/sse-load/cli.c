/*
 * cli: sse-load's command line: options, the --url split into a resolved
 * address, a Host header and the GET/POST target of each channel, and the
 * --sources list. Everything is checked before the first socket is opened.
 */
#include "cli.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/mem.h"
#include "util.h"

#define MAX_SOURCES 65536

static void usage(FILE *out)
{
    fprintf(out,
        "usage: sse-load [options]\n"
        "\n"
        "  --url URL            SSE endpoint, {id} replaced per channel\n"
        "                       (default http://127.0.0.1:8080/v1/sessions/{id}/events)\n"
        "  --clients N          reading SSE clients (default 100)\n"
        "  --channels K         ids PREFIX0 .. PREFIX(K-1), clients round-robin (default 1)\n"
        "  --sources A-B[,..]   IPv4 source addresses to bind, round-robin (default none)\n"
        "  --no-read M          extra clients that connect but never read (default 0)\n"
        "  --events E           events published per channel (default 10)\n"
        "  --rate R             publishes per second in total (default 10); 0 = as fast\n"
        "                       as --inflight allows\n"
        "  --payload BYTES      size of each event's data (default 64; at least the\n"
        "                       ~45 bytes that carry seq and t)\n"
        "  --token TOKEN        bearer token for publishing (default change-me)\n"
        "  --pid PID            report batchd's VmRSS before/after and per client\n"
        "  --connect-rate C     new connections per second (default 5000)\n"
        "  --timeout S          give up waiting for heads or deliveries after S s (default 30)\n"
        "  --reconnect          reconnect closed clients with Last-Event-ID\n"
        "  --json               one JSON object as the summary\n"
        "\n"
        "  --inflight P         publishing connections, one POST in flight each (default 4)\n"
        "  --event-type TYPE    ?event= of each publish, \"\" for none (default load)\n"
        "  --prefix PREFIX      channel id prefix (default s-load-)\n"
        "  --no-read-rcvbuf B   SO_RCVBUF of no-read clients (default: kernel's)\n"
        "  --reconnect-delay MS delay before a reconnect (default: server's retry:, else 100)\n"
        "  -h, --help           this help\n"
        "\n"
        "Exit status: 0 every reading client got every event once, in order, with the\n"
        "right id; 1 otherwise; 2 usage error.\n");
}

static bool parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (*s == '\0' || *s == '-')
        return false;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static bool parse_double(const char *s, double min, double max, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (*s == '\0' || errno || *end != '\0' || !(v >= min && v <= max))
        return false;
    *out = v;
    return true;
}

static int usage_error(const char *what, const char *arg)
{
    if (arg)
        fprintf(stderr, "sse-load: %s: %s\n", what, arg);
    else
        fprintf(stderr, "sse-load: %s\n", what);
    fprintf(stderr, "try 'sse-load --help'\n");
    return CLI_EXIT_USAGE;
}

/* "10.0.0.1-10.0.0.9,10.0.1.1": every address, in order. */
static int parse_sources(struct cli_opts *o, const char *spec)
{
    char *copy = mem_strdup(spec), *save = NULL, *item;
    int rc = 0;

    for (item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *dash = strchr(item, '-');
        struct in_addr a, b;
        uint32_t lo, hi;

        if (dash)
            *dash = '\0';
        if (inet_pton(AF_INET, item, &a) != 1 || (dash && inet_pton(AF_INET, dash + 1, &b) != 1)) {
            rc = -1;
            break;
        }
        lo = ntohl(a.s_addr);
        hi = dash ? ntohl(b.s_addr) : lo;
        if (hi < lo || (uint64_t)o->n_sources + (hi - lo) + 1 > MAX_SOURCES) {
            rc = -1;
            break;
        }
        o->source_addrs = mem_realloc(o->source_addrs, (o->n_sources + (hi - lo) + 1) * sizeof(*o->source_addrs));
        for (uint64_t v = lo; v <= hi; v++) {
            struct sockaddr_in *sa = &o->source_addrs[o->n_sources++];
            memset(sa, 0, sizeof(*sa));
            sa->sin_family = AF_INET;
            sa->sin_addr.s_addr = htonl((uint32_t)v);
        }
    }
    free(copy);
    return rc == 0 && o->n_sources > 0 ? 0 : -1;
}

/* Replaces every "{id}" in tmpl with id. */
static char *subst_id(const char *tmpl, const char *id)
{
    size_t cap = strlen(tmpl) + 1, n = 0;
    char *out;
    const char *p;

    for (p = tmpl; (p = strstr(p, "{id}")) != NULL; p += 4)
        cap += strlen(id);
    out = mem_alloc(cap);
    for (p = tmpl; *p;) {
        if (strncmp(p, "{id}", 4) == 0) {
            memcpy(out + n, id, strlen(id));
            n += strlen(id);
            p += 4;
        } else {
            out[n++] = *p++;
        }
    }
    out[n] = '\0';
    return out;
}

/* http://HOST[:PORT]/PATH: resolves HOST, keeps "HOST:PORT" for Host and
 * builds the GET and POST targets per channel. */
static int parse_url(struct cli_opts *o)
{
    const char *u = o->url, *auth, *slash, *host_end, *port = "80";
    char host[256], portbuf[8], *path_tmpl;
    struct addrinfo hints, *res = NULL;
    size_t hlen;

    if (strncmp(u, "http://", 7) != 0)
        return usage_error("--url must start with http://", u);
    auth = u + 7;
    slash = strchr(auth, '/');
    if (slash == NULL || slash == auth)
        return usage_error("--url needs a host and a path", u);
    o->host = mem_strndup(auth, (size_t)(slash - auth));
    if (auth[0] == '[') {
        host_end = memchr(auth, ']', (size_t)(slash - auth));
        if (host_end == NULL)
            return usage_error("bad IPv6 host in --url", u);
        hlen = (size_t)(host_end - auth - 1);
        memcpy(host, auth + 1, hlen < sizeof(host) ? hlen : 0);
        host_end++;
    } else {
        host_end = memchr(auth, ':', (size_t)(slash - auth));
        if (host_end == NULL)
            host_end = slash;
        hlen = (size_t)(host_end - auth);
        memcpy(host, auth, hlen < sizeof(host) ? hlen : 0);
    }
    if (hlen == 0 || hlen >= sizeof(host))
        return usage_error("bad host in --url", u);
    host[hlen] = '\0';
    if (*host_end == ':') {
        size_t plen = (size_t)(slash - host_end - 1);
        if (plen == 0 || plen >= sizeof(portbuf))
            return usage_error("bad port in --url", u);
        memcpy(portbuf, host_end + 1, plen);
        portbuf[plen] = '\0';
        port = portbuf;
    } else if (host_end != slash) {
        return usage_error("bad host in --url", u);
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = o->sources ? AF_INET : AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
        return usage_error("cannot resolve the --url host", host);
    memcpy(&o->server, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);

    path_tmpl = mem_strdup(slash);
    if (strstr(path_tmpl, "{id}") == NULL && o->channels > 1) {
        free(path_tmpl);
        return usage_error("--channels > 1 needs {id} in --url", u);
    }
    o->get_paths = mem_calloc(o->channels + 1, sizeof(char *));
    o->post_paths = mem_calloc(o->channels + 1, sizeof(char *));
    for (uint32_t i = 0; i < o->channels; i++) {
        char id[256];
        snprintf(id, sizeof(id), "%s%" PRIu32, o->prefix, i);
        o->get_paths[i] = subst_id(path_tmpl, id);
        if (o->event_type[0]) {
            size_t n = strlen(o->get_paths[i]) + strlen(o->event_type) + 8;
            o->post_paths[i] = mem_alloc(n);
            snprintf(o->post_paths[i], n, "%s%cevent=%s", o->get_paths[i],
                     strchr(o->get_paths[i], '?') ? '&' : '?', o->event_type);
        } else {
            o->post_paths[i] = mem_strdup(o->get_paths[i]);
        }
    }
    free(path_tmpl);
    return 0;
}

static bool id_chars_ok(const char *s)
{
    for (; *s; s++)
        if (!(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z') && !(*s >= '0' && *s <= '9') &&
            *s != '_' && *s != '.' && *s != ':' && *s != '-')
            return false;
    return true;
}

int cli_parse(struct cli_opts *o, int argc, char **argv)
{
    enum {
        O_URL = 256, O_CLIENTS, O_CHANNELS, O_SOURCES, O_NO_READ, O_EVENTS, O_RATE, O_PAYLOAD,
        O_TOKEN, O_PID, O_CONNECT_RATE, O_TIMEOUT, O_RECONNECT, O_JSON, O_INFLIGHT,
        O_EVENT_TYPE, O_PREFIX, O_NO_READ_RCVBUF, O_RECONNECT_DELAY,
    };
    static const struct option opts[] = {
        { "url", required_argument, NULL, O_URL },
        { "clients", required_argument, NULL, O_CLIENTS },
        { "channels", required_argument, NULL, O_CHANNELS },
        { "sources", required_argument, NULL, O_SOURCES },
        { "no-read", required_argument, NULL, O_NO_READ },
        { "events", required_argument, NULL, O_EVENTS },
        { "rate", required_argument, NULL, O_RATE },
        { "payload", required_argument, NULL, O_PAYLOAD },
        { "token", required_argument, NULL, O_TOKEN },
        { "pid", required_argument, NULL, O_PID },
        { "connect-rate", required_argument, NULL, O_CONNECT_RATE },
        { "timeout", required_argument, NULL, O_TIMEOUT },
        { "reconnect", no_argument, NULL, O_RECONNECT },
        { "json", no_argument, NULL, O_JSON },
        { "inflight", required_argument, NULL, O_INFLIGHT },
        { "event-type", required_argument, NULL, O_EVENT_TYPE },
        { "prefix", required_argument, NULL, O_PREFIX },
        { "no-read-rcvbuf", required_argument, NULL, O_NO_READ_RCVBUF },
        { "reconnect-delay", required_argument, NULL, O_RECONNECT_DELAY },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    uint64_t v;
    int ch;

    o->url = "http://127.0.0.1:8080/v1/sessions/{id}/events";
    o->clients = 100;
    o->channels = 1;
    o->events = 10;
    o->rate = 10;
    o->payload = 64;
    o->token = "change-me";
    o->connect_rate = 5000;
    o->timeout_s = 30;
    o->inflight = 4;
    o->event_type = "load";
    o->prefix = "s-load-";
    o->reconnect_delay_ms = -1;

    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case O_URL:
            o->url = optarg;
            break;
        case O_CLIENTS:
            if (!parse_u64(optarg, 0, 1000000, &v))
                return usage_error("bad --clients", optarg);
            o->clients = (uint32_t)v;
            break;
        case O_CHANNELS:
            if (!parse_u64(optarg, 1, 1000000, &v))
                return usage_error("bad --channels", optarg);
            o->channels = (uint32_t)v;
            break;
        case O_SOURCES:
            o->sources = optarg;
            break;
        case O_NO_READ:
            if (!parse_u64(optarg, 0, 1000000, &v))
                return usage_error("bad --no-read", optarg);
            o->no_read = (uint32_t)v;
            break;
        case O_EVENTS:
            if (!parse_u64(optarg, 1, 100000000, &v))
                return usage_error("bad --events", optarg);
            o->events = (uint32_t)v;
            break;
        case O_RATE:
            if (!parse_double(optarg, 0, 1e9, &o->rate))
                return usage_error("bad --rate", optarg);
            break;
        case O_PAYLOAD:
            if (!parse_u64(optarg, 0, 64u << 20, &v))
                return usage_error("bad --payload", optarg);
            o->payload = (size_t)v;
            break;
        case O_TOKEN:
            o->token = optarg;
            break;
        case O_PID:
            if (!parse_u64(optarg, 1, INT_MAX, &v))
                return usage_error("bad --pid", optarg);
            o->pid = (long)v;
            break;
        case O_CONNECT_RATE:
            if (!parse_double(optarg, 1, 1e9, &o->connect_rate))
                return usage_error("bad --connect-rate", optarg);
            break;
        case O_TIMEOUT:
            if (!parse_double(optarg, 0.001, 1e6, &o->timeout_s))
                return usage_error("bad --timeout", optarg);
            break;
        case O_RECONNECT:
            o->reconnect = true;
            break;
        case O_JSON:
            o->json = true;
            break;
        case O_INFLIGHT:
            if (!parse_u64(optarg, 1, 1024, &v))
                return usage_error("bad --inflight", optarg);
            o->inflight = (unsigned)v;
            break;
        case O_EVENT_TYPE:
            o->event_type = optarg;
            break;
        case O_PREFIX:
            o->prefix = optarg;
            break;
        case O_NO_READ_RCVBUF:
            if (!parse_u64(optarg, 0, INT_MAX, &v))
                return usage_error("bad --no-read-rcvbuf", optarg);
            o->no_read_rcvbuf = (int)v;
            break;
        case O_RECONNECT_DELAY:
            if (!parse_u64(optarg, 0, 3600000, &v))
                return usage_error("bad --reconnect-delay", optarg);
            o->reconnect_delay_ms = (long)v;
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            return usage_error("unknown option", NULL);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument", argv[optind]);
    if (o->clients == 0 && o->no_read == 0)
        return usage_error("nothing to do: --clients 0 and --no-read 0", NULL);
    if (!id_chars_ok(o->prefix) || !id_chars_ok(o->event_type))
        return usage_error("--prefix and --event-type take [A-Za-z0-9_.:-]", NULL);
    if (strpbrk(o->token, "\r\n") != NULL)
        return usage_error("bad --token", NULL);
    if ((uint64_t)o->channels * o->events > 100000000u)
        return usage_error("--channels x --events is over 100 million", NULL);
    if (o->sources && parse_sources(o, o->sources) != 0)
        return usage_error("bad --sources (want A.B.C.D or A.B.C.D-E.F.G.H, comma-separated)",
                           o->sources);
    if (o->pid) {
        int64_t rss = util_rss_bytes((pid_t)o->pid);
        if (rss < 0) {
            char pid[32];
            snprintf(pid, sizeof(pid), "%ld", o->pid);
            return usage_error("cannot read VmRSS of --pid", pid);
        }
    }
    return parse_url(o);
}

void cli_free(struct cli_opts *o)
{
    for (uint32_t i = 0; o->get_paths && i < o->channels; i++) {
        free(o->get_paths[i]);
        free(o->post_paths[i]);
    }
    free(o->get_paths);
    free(o->post_paths);
    free(o->source_addrs);
    free(o->host);
}
