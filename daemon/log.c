/* log: logfmt lines on stderr. See log.h. */
#include "daemon/log.h"

#include "proto/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum log_level log_min_level = LOG_INFO;
static int log_worker = -1;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void log_set_level(enum log_level level)
{
    log_min_level = level;
}

void log_set_worker(int worker)
{
    log_worker = worker;
}

void log_lines(enum log_level level, const char *msg, const char *key, const struct buf *b)
{
    const char *p = b->data;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        char line[512];
        snprintf(line, sizeof(line), "%.*s", (int)n, p);
        log_write(level, msg, "%s=%s", key, LOG_Q(line));
        p = nl ? nl + 1 : NULL;
    }
}

int log_level_parse(const char *name, enum log_level *out)
{
    for (int i = 0; i <= LOG_ERROR; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

const char *log_quote(char *dst, size_t cap, const char *s)
{
    size_t o = 0;
    if (s == NULL)
        s = "";
    dst[o++] = '"';
    for (; *s && o + 6 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)c;
        } else if (c == '\n') {
            dst[o++] = '\\';
            dst[o++] = 'n';
        } else if (c < 0x20 || c == 0x7f) {
            dst[o++] = '?';
        } else {
            dst[o++] = (char)c;
        }
    }
    if (*s) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o++] = '"';
    dst[o] = '\0';
    return dst;
}

void log_write(enum log_level level, const char *msg, const char *kvfmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=\"%s\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], msg);
    if (n < 0)
        return;
    size_t len = (size_t)n;
    if (log_worker >= 0 && len < sizeof(line)) {
        int k = snprintf(line + len, sizeof(line) - len, " worker=%d", log_worker);
        if (k > 0)
            len += (size_t)k;
    }
    if (kvfmt && kvfmt[0] && len + 2 < sizeof(line)) {
        line[len++] = ' ';
        va_list ap;
        va_start(ap, kvfmt);
        int k = vsnprintf(line + len, sizeof(line) - len, kvfmt, ap);
        va_end(ap);
        if (k > 0)
            len += (size_t)k;
    }
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w; /* nothing sensible to do when stderr is gone */
}
