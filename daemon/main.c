/*
 * batchd: a sidecar that batches entity reads through Redis and PostgreSQL
 * and streams session events over SSE. This file reads the command line.
 *
 *   batchd -c FILE       run in the foreground
 *   batchd -t -c FILE    check FILE and exit: 0 when valid, 2 otherwise
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/app.h"
#include "daemon/auth/jwt.h"
#include "daemon/config.h"

#define EXIT_CONFIG 2

static void usage(FILE *out)
{
    fprintf(out,
            "usage: batchd [-t] -c FILE\n"
            "\n"
            "  -c, --config FILE   configuration file (see conf/batchd.ini)\n"
            "  -t, --test          check the configuration and exit (0 valid, 2 invalid)\n"
            "  -h, --help          this help\n"
            "  -v, --version       print the version\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "test", no_argument, NULL, 't' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'v' },
        { NULL, 0, NULL, 0 },
    };
    const char *file = NULL;
    bool test = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:thv", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': file = optarg; break;
        case 't': test = true; break;
        case 'h': usage(stdout); return 0;
        case 'v': printf("batchd %s\n", BATCHD_VERSION); return 0;
        default: usage(stderr); return EXIT_CONFIG;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "batchd: unexpected argument: %s\n", argv[optind]);
        usage(stderr);
        return EXIT_CONFIG;
    }
    if (file == NULL) {
        fprintf(stderr, "batchd: no configuration file; use -c FILE\n");
        usage(stderr);
        return EXIT_CONFIG;
    }

    struct buf errors = BUF_INIT;
    struct config *cfg = config_load(file, &errors);
    if (cfg == NULL) {
        fprintf(stderr, "%s", errors.data ? errors.data : "");
        fprintf(stderr, "batchd: configuration file %s is invalid\n", file);
        buf_deinit(&errors);
        return EXIT_CONFIG;
    }
    /* Key files are read now too, so a bad one fails the check (and the
     * start) with the file named, not the first request. */
    if (cfg->has_auth && (cfg->auth.jwt_secret_file[0] || cfg->auth.jwt_public_keys.n)) {
        struct jwt_keys *keys = jwt_keys_load(&cfg->auth, &errors);
        jwt_keys_free(keys);
        if (keys == NULL) {
            fprintf(stderr, "%s", errors.data ? errors.data : "");
            fprintf(stderr, "batchd: configuration file %s is invalid\n", file);
            buf_deinit(&errors);
            config_unref(cfg);
            return EXIT_CONFIG;
        }
    }
    buf_deinit(&errors);
    if (test) {
        printf("batchd: configuration file %s is valid\n", file);
        config_unref(cfg);
        return 0;
    }
    return app_run(cfg);
}
