/*
 * cli: sse-load's command line. cli_parse fills a cli_opts from argv,
 * checks every value, resolves the --url host and builds each channel's
 * request targets, so the rest of the program starts from valid input.
 */
#ifndef SSE_LOAD_CLI_H
#define SSE_LOAD_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define CLI_EXIT_USAGE 2

struct cli_opts {
    /* as given (see usage() in cli.c for meanings and defaults) */
    const char *url;
    uint32_t clients;
    uint32_t channels;
    const char *sources;
    uint32_t no_read;
    uint32_t events;
    double rate;
    size_t payload;
    const char *token;
    long pid;
    double connect_rate;
    double timeout_s;
    bool reconnect;
    bool json;
    unsigned inflight;
    const char *event_type;           /* "" for none */
    const char *prefix;
    int no_read_rcvbuf;
    long reconnect_delay_ms;          /* -1: the server's retry:, else 100 ms */

    /* derived; owned by the struct, released by cli_free */
    struct sockaddr_storage server;
    char *host;                       /* "HOST[:PORT]" for the Host header */
    char **get_paths;                 /* per channel: the SSE request target */
    char **post_paths;                /* per channel: the same with ?event=TYPE */
    struct sockaddr_in *source_addrs; /* --sources expanded, in order */
    uint32_t n_sources;
};

/* Parses argv into o (which must be zeroed). Returns 0 to run, -1 after
 * printing --help (exit 0), or CLI_EXIT_USAGE after printing why to
 * stderr. */
int cli_parse(struct cli_opts *o, int argc, char **argv) __attribute__((warn_unused_result));

void cli_free(struct cli_opts *o);

#endif
