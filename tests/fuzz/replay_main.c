/*
 * replay_main: runs a libFuzzer harness over committed inputs without
 * libFuzzer, so that the normal gcc build replays every corpus.
 *
 *   replay_<name> DIR_OR_FILE...  ──> LLVMFuzzerTestOneInput(bytes of each file)
 *
 *   parent ── fork ──> child: inputs i, i+1, ... (writes the index it is at)
 *      └── child died at input k: report k, fork again from k + 1
 *
 * Directories are read one level deep, in name order, so a failure names
 * the same file on every machine. Each input is passed as a heap copy of
 * exactly its size, as libFuzzer does, so AddressSanitizer sees a read one
 * byte past the end.
 *
 * A harness reports a broken invariant by aborting. The inputs run in a
 * child process, which tells the parent, through a shared page, which input
 * it is at; when the child dies, the parent names that input and goes on
 * with the next one in a new child. So one failing input hides no other,
 * at the cost of one process per failure, not one per input. A leak found
 * by LeakSanitizer when a child exits is reported for the inputs that child
 * ran. Exits 1 if anything failed. Arguments starting with '-' (libFuzzer
 * flags) are ignored.
 */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional in a harness: weak, so it is NULL when the harness has none. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

struct paths {
    char **v;
    size_t n, cap;
};

static void die(const char *what)
{
    fprintf(stderr, "replay: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void paths_add(struct paths *ps, const char *dir, const char *name)
{
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? ps->cap * 2 : 64;
        ps->v = realloc(ps->v, ps->cap * sizeof(*ps->v));
        if (ps->v == NULL)
            die("realloc");
    }
    size_t len = (dir ? strlen(dir) + 1 : 0) + strlen(name) + 1;
    char *p = malloc(len);
    if (p == NULL)
        die("malloc");
    if (dir)
        snprintf(p, len, "%s/%s", dir, name);
    else
        snprintf(p, len, "%s", name);
    ps->v[ps->n++] = p;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds the regular files of dir, in name order. */
static int add_dir(struct paths *ps, const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    size_t first = ps->n;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        struct stat st;
        if (de->d_name[0] == '.')
            continue;
        paths_add(ps, dir, de->d_name);
        if (stat(ps->v[ps->n - 1], &st) != 0 || !S_ISREG(st.st_mode))
            free(ps->v[--ps->n]);
    }
    closedir(d);
    qsort(ps->v + first, ps->n - first, sizeof(*ps->v), cmp_names);
    return 0;
}

/* Reads path into a malloc'd buffer of exactly its size (1 byte when empty). */
static uint8_t *read_file(const char *path, size_t *out_len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, len = 0;
    uint8_t *data = malloc(cap);
    for (size_t n = 1; data != NULL && n > 0; len += n) {
        if (len == cap) {
            uint8_t *bigger = realloc(data, cap *= 2);
            if (bigger == NULL) {
                free(data);
                data = NULL;
                break;
            }
            data = bigger;
        }
        n = fread(data + len, 1, cap - len, f);
    }
    bool bad = data == NULL || ferror(f);
    fclose(f);
    if (bad) {
        free(data);
        return NULL;
    }
    /* The exact-size copy is what lets ASan catch an overread. */
    uint8_t *exact = malloc(len ? len : 1);
    if (exact != NULL)
        memcpy(exact, data, len);
    free(data);
    *out_len = len;
    return exact;
}

/* The child: runs inputs from `from` on, publishing the index of each
 * before it runs, and ps->n once all are done. */
static void run_inputs(const struct paths *ps, size_t from, volatile size_t *at)
{
    for (size_t i = from; i < ps->n; i++) {
        *at = i;
        size_t len;
        uint8_t *data = read_file(ps->v[i], &len);
        if (data == NULL) {
            fprintf(stderr, "replay: cannot read %s: %s\n", ps->v[i], strerror(errno));
            exit(3);
        }
        LLVMFuzzerTestOneInput(data, len);
        free(data);
    }
    *at = ps->n;
    exit(0); /* atexit handlers run: LeakSanitizer checks what this child ran */
}

static void describe(int status, char *out, size_t cap)
{
    if (WIFSIGNALED(status))
        snprintf(out, cap, "signal %d", WTERMSIG(status));
    else
        snprintf(out, cap, "exit %d", WEXITSTATUS(status));
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    struct paths ps = { 0 };
    int rc = 0, n_args = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (argv[i][0] == '-')
            continue;
        n_args++;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            rc = 1;
        } else if (S_ISDIR(st.st_mode)) {
            if (add_dir(&ps, argv[i]) != 0)
                rc = 1;
        } else {
            paths_add(&ps, NULL, argv[i]);
        }
    }
    if (n_args == 0) {
        fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]);
        return 2;
    }
    /* An empty corpus directory is a mistake in the build, not a pass. */
    if (ps.n == 0) {
        fprintf(stderr, "replay: no inputs found\n");
        return 1;
    }

    volatile size_t *at = mmap(NULL, sizeof(*at), PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (at == MAP_FAILED)
        die("mmap");
    size_t from = 0, n_failed = 0;
    while (from < ps.n) {
        *at = from;
        fflush(NULL); /* or the child's exit would write buffered output again */
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0)
            run_inputs(&ps, from, at);
        int status;
        while (waitpid(pid, &status, 0) < 0)
            if (errno != EINTR)
                die("waitpid");
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            break;
        char how[32];
        describe(status, how, sizeof(how));
        n_failed++;
        if (*at >= ps.n) { /* all ran: the failure came at exit, a leak */
            fprintf(stderr, "replay: FAILED at exit (%s) after %s .. %s\n", how, ps.v[from],
                    ps.v[ps.n - 1]);
            break;
        }
        fprintf(stderr, "replay: FAILED %s (%s)\n", ps.v[*at], how);
        from = *at + 1;
    }
    if (n_failed)
        rc = 1;
    printf("replay: %zu inputs, %zu failed\n", ps.n, n_failed);
    for (size_t i = 0; i < ps.n; i++)
        free(ps.v[i]);
    free(ps.v);
    return rc;
}
