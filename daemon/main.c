/*
 * batchd: a sidecar that batches entity reads through Redis and PostgreSQL
 * and streams session events over SSE. This file reads the command line.
 *
 *   batchd -c FILE       run in the foreground
 *   batchd -t -c FILE    check FILE and exit: 0 when valid, 2 otherwise
 *   batchd --settings    print the settings table (JSON lines) for tools
 *
 * With workers = 1 (the default) the process runs app_run itself; with
 * more it becomes the master of that many workers (daemon/master).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/app.h"
#include "daemon/config.h"
#include "daemon/master/master.h"

#define EXIT_CONFIG 2

static void usage(FILE *out)
{
    fprintf(out,
            "usage: batchd [-t] -c FILE\n"
            "       batchd --settings\n"
            "\n"
            "  -c, --config FILE   configuration file (see conf/batchd.ini)\n"
            "  -t, --test          check the configuration and exit (0 valid, 2 invalid)\n"
            "  -h, --help          this help\n"
            "  -v, --version       print the version\n"
            "      --settings      print every setting (one JSON object a line) and exit\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "test", no_argument, NULL, 't' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'v' },
        { "settings", no_argument, NULL, 'S' }, /* long only: for tools, not people */
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
        case 'S': return config_print_settings(stdout) == 0 ? 0 : 1;
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
    struct config *cfg = app_load_config(file, &errors);
    if (cfg == NULL) {
        fprintf(stderr, "%s", errors.data ? errors.data : "");
        fprintf(stderr, "batchd: configuration file %s is invalid\n", file);
        buf_deinit(&errors);
        return EXIT_CONFIG;
    }
    buf_deinit(&errors);
    if (test) {
        printf("batchd: configuration file %s is valid\n", file);
        config_unref(cfg);
        return 0;
    }
    unsigned workers = master_workers(cfg);
    if (workers > 1)
        return master_run(cfg, workers);
    return app_run(cfg, NULL);
}
