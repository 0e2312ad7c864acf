/*
 * fuzz_config: libFuzzer harness for the config file parser, config_load
 * (daemon/config.c, daemon/config_table.c, over inih).
 *
 *   input bytes ──> memfd ──> config_load("/proc/self/fd/N") ──> config or error lines
 *
 * The input is the file. config_load must either return a config and add
 * nothing to the error buffer, or return NULL with at least one error, each
 * on its own line and naming the file and a line that exists ("<file>:<n>: ").
 * The error report stays proportional to the file. A config that loads is
 * loaded a second time: the two must be equal as far
 * as config_restart_needed can tell, and config_keep_restart_settings between
 * them must leave both freeable. AddressSanitizer's leak check covers every
 * path's cleanup.
 *
 * Name resolution. Addresses in the file go through getaddrinfo; a name that
 * is not numeric becomes a DNS query (150-200 ms each on the build machines),
 * which would make fuzzing crawl and send the fuzzer's names to a resolver.
 * So this harness interposes getaddrinfo: numeric hosts and "localhost" are
 * resolved by the real one, any other name fails with EAI_NONAME at once, as
 * an unknown name would. config_load cannot tell the difference.
 */
#include <dlfcn.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/config.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *,
                              struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static getaddrinfo_fn real;
    if (real == NULL) {
        real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
        CHECK(real != NULL);
    }
    struct addrinfo h = { 0 };
    if (hints)
        h = *hints;
    if (node && strcmp(node, "localhost") != 0)
        h.ai_flags |= AI_NUMERICHOST;
    return real(node, service, &h, res);
}

static int fd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fd = memfd_create("fuzz_config", 0);
    CHECK(fd >= 0);
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    return 0;
}

/* Every error line names the file and a line of it: "<path>:<n>: ...". */
static void check_errors(const struct buf *errors, size_t n_lines)
{
    CHECK(errors->len > 0 && errors->data[errors->len - 1] == '\n');
    size_t plen = strlen(path);
    const char *p = errors->data, *end = errors->data + errors->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        CHECK(nl != NULL);
        CHECK((size_t)(nl - p) > plen + 1 && memcmp(p, path, plen) == 0);
        const char *q = p + plen;
        if (*q == ':') {
            char *after;
            unsigned long line = strtoul(q + 1, &after, 10);
            CHECK(after > q + 1 && after[0] == ':' && after[1] == ' ');
            CHECK(line <= n_lines);
        } else {
            CHECK(memcmp(q, ": cannot open", 13) == 0); /* nothing else lacks a line */
        }
        p = nl + 1;
    }
}

static size_t longest_line(const uint8_t *data, size_t size)
{
    size_t longest = 0, cur = 0;
    for (size_t i = 0; i < size; i++) {
        cur = data[i] == '\n' ? 0 : cur + 1;
        longest = cur > longest ? cur : longest;
    }
    return longest;
}

/* An error line that is the loader's own "line is longer than" report:
 * "<path>:<n>: line is longer than ...", not a quoted value holding those
 * words ("<path>:<n>: [batchd] listen = line is longer than...: ..."). */
static bool reports_long_line(const struct buf *errors)
{
    static const char msg[] = ": line is longer than ";
    size_t plen = strlen(path);
    const char *p = errors->data, *end = errors->data + errors->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *q = p + plen + 1; /* past "<path>:" */
        while (q < nl && *q >= '0' && *q <= '9')
            q++;
        if ((size_t)(nl - q) >= sizeof(msg) - 1 && memcmp(q, msg, sizeof(msg) - 1) == 0)
            return true;
        p = nl + 1;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fd < 0)
        LLVMFuzzerInitialize(NULL, NULL);
    CHECK(ftruncate(fd, 0) == 0);
    CHECK(pwrite(fd, data, size, 0) == (ssize_t)size);
    /* Lines as the loader counts them: a last line without '\n' counts. */
    size_t n_lines = 0;
    for (size_t i = 0; i < size; i++)
        n_lines += data[i] == '\n';
    if (size > 0 && data[size - 1] != '\n')
        n_lines++;

    struct buf errors = BUF_INIT;
    struct config *c = config_load(path, &errors);
    if (c == NULL) {
        check_errors(&errors, n_lines);
        /* A line's errors quote at most its value, masked ("***" for a
         * secret of one byte), twice, plus a message: the report grows with
         * the file, no faster. (Masking each secret in turn once made "*"
         * and "**" multiply the asterisks written for the others: 3^k.) */
        CHECK(errors.len <= 8 * size + 512 * (n_lines + 1));
        /* "line is longer than" only for a line that is: a NUL byte is not
         * the end of a line (it once was taken for a cut-off line, and the
         * next line was skipped with it). */
        if (reports_long_line(&errors))
            CHECK(longest_line(data, size) > 8000);
        buf_deinit(&errors);
        return 0;
    }
    CHECK(errors.len == 0);
    CHECK(c->file != NULL && strcmp(c->file, path) == 0);
    /* Cross-section rules config_load promises to have checked. */
    for (unsigned i = 0; i < c->n_resources; i++)
        CHECK(c->has_postgres && c->resources[i].name != NULL);
    for (unsigned i = 0; i < c->n_streams; i++)
        CHECK(c->has_redis && c->streams[i].name != NULL);
    CHECK(c->batchd.listen.len > 0);
    CHECK(c->batchd.max_uri_bytes <= c->batchd.max_header_bytes);

    /* The same file again: the same config. */
    struct config *again = config_load(path, &errors);
    CHECK(again != NULL && errors.len == 0);
    struct buf diff = BUF_INIT;
    if (config_restart_needed(c, again, &diff) != 0) {
        fuzz_dump("config", data, size);
        fprintf(stderr, "differs from itself:\n%s", diff.data);
        abort();
    }
    CHECK(diff.len == 0);
    config_keep_restart_settings(c, again);
    CHECK(config_restart_needed(again, c, &diff) == 0);
    buf_deinit(&diff);
    config_unref(again);
    config_unref(c);
    buf_deinit(&errors);
    return 0;
}
