#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"
#include "util.h"

typedef struct {
    const char *name, *file;
    test_fn fn;
} test_entry;

static test_entry *tests;
static int n_tests, cap_tests;
static int current_failures;
static const char *current_name;
static char tmp_dir[512];

void test_register(const char *name, const char *file, test_fn fn)
{
    if (n_tests == cap_tests) {
        cap_tests = cap_tests ? 2 * cap_tests : 64;
        tests = gp_xrealloc(tests, (size_t)cap_tests * sizeof *tests);
    }
    tests[n_tests++] = (test_entry){name, file, fn};
}

void test_failure(const char *file, int line, const char *fmt, ...)
{
    current_failures++;
    if (current_failures > 20)
        return; /* one broken loop should not bury the rest of the report */
    fprintf(stderr, "  FAIL %s (%s:%d): ", current_name, file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void test_check_failed(const char *file, int line, const char *kind, const char *cond, const char *fmt, ...)
{
    current_failures++;
    if (current_failures > 20)
        return;
    fprintf(stderr, "  FAIL %s (%s:%d): %s(%s) ", current_name, file, line, kind, cond);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

const char *test_shared_dir(void)
{
    const char *s = getenv("GPSDREC_SHARED");
    return s && *s ? s : "../shared";
}

const char *test_binary(void)
{
    const char *s = getenv("GPSDREC_BIN");
    return s && *s ? s : "./gpsdrec";
}

static void remove_tmp(void)
{
    if (tmp_dir[0] && !getenv("GPSDREC_KEEP_TMP")) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "warning: could not remove %s\n", tmp_dir);
    }
}

int test_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

const char *test_tmp_dir(void)
{
    if (!tmp_dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmp_dir, sizeof tmp_dir, "%s/gpsdrec-test-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmp_dir)) {
            perror("mkdtemp");
            exit(2);
        }
        atexit(remove_tmp);
    }
    return tmp_dir;
}

int test_run_capture(const char *cmd, char **output)
{
    char full[8192];
    snprintf(full, sizeof full, "(%s) 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) {
        *output = gp_xstrdup("");
        return -1;
    }
    size_t cap = 4096, n = 0;
    char *buf = gp_xmalloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += got;
        if (n + 1 >= cap) {
            cap *= 2;
            buf = gp_xrealloc(buf, cap);
        }
    }
    buf[n] = '\0';
    int status = pclose(p);
    *output = buf;
    if (status == -1)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* Arguments select tests whose name contains them; an argument starting with '-' excludes. */
static int selected(const char *name, int argc, char **argv)
{
    int any_include = 0, included = 0;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-') {
            if (strstr(name, argv[i] + 1))
                return 0;
        } else {
            any_include = 1;
            included |= strstr(name, argv[i]) != NULL;
        }
    }
    return !any_include || included;
}

int main(int argc, char **argv)
{
    int passed = 0, failed = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < n_tests; i++) {
        if (!selected(tests[i].name, argc, argv))
            continue;
        current_name = tests[i].name;
        current_failures = 0;
        double t0 = gp_now();
        tests[i].fn();
        double dt = gp_now() - t0;
        if (current_failures == 0) {
            passed++;
            printf("ok   %-48s %7.2fs\n", tests[i].name, dt);
        } else {
            failed++;
            printf("FAIL %-48s %7.2fs (%d failed checks)\n", tests[i].name, dt, current_failures);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : (passed ? 0 : 1);
}
