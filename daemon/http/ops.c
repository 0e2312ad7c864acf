/* ops: health, readiness and metrics endpoints. See ops.h. */
#include "daemon/http/ops.h"

#include <llhttp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/metrics.h"
#include "daemon/http/req.h"
#include "proto/jtext.h"

static ops_ready_fn ready_fn;
static void *ready_arg;
static time_t start_time;
static int worker_id = -1;

static double rss_bytes(void *arg)
{
    (void)arg;
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return (double)rss * (double)sysconf(_SC_PAGESIZE);
}

static double start_seconds(void *arg)
{
    (void)arg;
    return (double)start_time;
}

void ops_init(ops_ready_fn ready, void *arg, int worker)
{
    worker_id = worker;
    ready_fn = ready;
    ready_arg = arg;
    start_time = time(NULL);
    *metrics_gauge("batchd_build_info", "version=\"" BATCHD_VERSION "\"",
                   "Always 1; the label carries the version.") = 1;
    metrics_gauge_fn("process_resident_memory_bytes", "", "Resident memory size in bytes.",
                     rss_bytes, NULL);
    metrics_gauge_fn("process_start_time_seconds", "", "Start time since the Unix epoch.",
                     start_seconds, NULL);
}

static void healthz(struct req *r, void *data)
{
    (void)data;
    static const char body[] = "{\"status\":\"ok\"}\n";
    if (worker_id < 0) {
        req_respond_static(r, 200, "application/json", body, sizeof(body) - 1);
        return;
    }
    /* Several workers: say which one answered. */
    struct buf b = BUF_INIT;
    buf_appendf(&b, "{\"status\":\"ok\",\"worker\":%d,\"pid\":%d}\n", worker_id, (int)getpid());
    req_respond_buf(r, 200, "application/json", &b);
    buf_deinit(&b);
}

static void readyz(struct req *r, void *data)
{
    (void)data;
    const char *why = ready_fn ? ready_fn(ready_arg) : NULL;
    if (why == NULL) {
        static const char body[] = "{\"status\":\"ready\"}\n";
        req_respond_static(r, 200, "application/json", body, sizeof(body) - 1);
        return;
    }
    struct buf b = BUF_INIT;
    buf_append_str(&b, "{\"status\":\"not_ready\",\"reason\":");
    jtext_append_string(&b, why, strlen(why));
    buf_append_str(&b, "}\n");
    req_add_header(r, "Retry-After", "1");
    req_respond_buf(r, 503, "application/json", &b);
    buf_deinit(&b);
}

static void metrics(struct req *r, void *data)
{
    (void)data;
    struct buf b = BUF_INIT;
    metrics_render(&b);
    req_respond_buf(r, 200, "text/plain; version=0.0.4; charset=utf-8", &b);
    buf_deinit(&b);
}

void ops_add_routes(struct router *rt)
{
    router_add(rt, ROUTE_M(HTTP_GET), "/healthz", healthz, NULL, 0);
    router_add(rt, ROUTE_M(HTTP_GET), "/readyz", readyz, NULL, 0);
    router_add(rt, ROUTE_M(HTTP_GET), "/metrics", metrics, NULL, 0);
}
