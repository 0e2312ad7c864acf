/*
 * log: logfmt lines on stderr.
 *
 *   ts=2026-11-22T21:36:00.123Z level=info msg="listening" addr=127.0.0.1:8080
 *
 * `msg` is a fixed, greppable phrase; the details go in key=value pairs
 * formatted by the caller. Wrap any value that may hold spaces or quotes in
 * LOG_Q() so the line stays machine-readable. Each line is one write(2).
 */
#ifndef BATCHD_LOG_H
#define BATCHD_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

extern enum log_level log_min_level;

void log_set_level(enum log_level level);
/* 0 and *out set, or -1 for an unknown name. */
int log_level_parse(const char *name, enum log_level *out);

void log_write(enum log_level level, const char *msg, const char *kvfmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Every later line carries worker=N (a worker process of the master). */
void log_set_worker(int worker);

struct buf;
/* Logs each line of `b` as one entry: msg, then key="the line". */
void log_lines(enum log_level level, const char *msg, const char *key, const struct buf *b);

/* Quotes s for a logfmt value into dst (truncating long values with "...").
 * Returns dst. */
const char *log_quote(char *dst, size_t cap, const char *s);
#define LOG_Q(s) log_quote((char[256]){ 0 }, 256, (s))

#define log_at(level, msg, ...)                        \
    do {                                               \
        if ((level) >= log_min_level)                  \
            log_write((level), (msg), __VA_ARGS__);    \
    } while (0)
#define log_debug(msg, ...) log_at(LOG_DEBUG, msg, __VA_ARGS__)
#define log_info(msg, ...) log_at(LOG_INFO, msg, __VA_ARGS__)
#define log_warn(msg, ...) log_at(LOG_WARN, msg, __VA_ARGS__)
#define log_error(msg, ...) log_at(LOG_ERROR, msg, __VA_ARGS__)

#endif
