#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int gp_fail(gp_err *e, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int gp_wrap(gp_err *e, const char *fmt, ...)
{
    if (!e)
        return -1;
    char prefix[GP_ERR_LEN], old[GP_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(e->msg, sizeof e->msg, "%s: %s", prefix, old);
    return -1;
}

static void out_of_memory(size_t n)
{
    fprintf(stderr, "gpsdrec: fatal: out of memory allocating %zu bytes\n", n);
    abort();
}

void *gp_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        out_of_memory(n);
    return p;
}

void *gp_xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        out_of_memory(count * size);
    return p;
}

void *gp_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        out_of_memory(n);
    return q;
}

char *gp_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = gp_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

void *gp_alloc_or_fail(size_t n, const char *what, gp_err *e)
{
    void *p = NULL;
    size_t rounded = (n + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0) {
        char buf[32];
        gp_fail(e, "out of memory allocating %s for %s", gp_fmt_bytes((double)n, buf, sizeof buf), what);
        return NULL;
    }
    memset(p, 0, rounded ? rounded : 64);
    return p;
}

void gp_free_aligned(void *p) { free(p); }

double gp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int gp_read_file(const char *path, char **data, size_t *len, gp_err *e)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return gp_fail(e, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = gp_xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            buf = gp_xrealloc(buf, cap);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return gp_fail(e, "%s: read error", path);
    }
    buf[n] = '\0';
    *data = buf;
    if (len)
        *len = n;
    return 0;
}

int gp_atomic_open(gp_atomic_file *af, const char *path, gp_err *e)
{
    memset(af, 0, sizeof *af);
    size_t n = strlen(path) + 32;
    af->path = gp_xstrdup(path);
    af->tmp_path = gp_xmalloc(n);
    snprintf(af->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp_path, "wb");
    if (!af->f) {
        int rc = gp_fail(e, "%s: cannot create temporary file %s: %s", path, af->tmp_path, strerror(errno));
        free(af->path);
        free(af->tmp_path);
        memset(af, 0, sizeof *af);
        return rc;
    }
    return 0;
}

int gp_atomic_write(gp_atomic_file *af, const void *data, size_t len, gp_err *e)
{
    if (len && fwrite(data, 1, len, af->f) != len)
        return gp_fail(e, "%s: write failed: %s", af->tmp_path, strerror(errno));
    return 0;
}

void gp_atomic_abort(gp_atomic_file *af)
{
    if (af->f)
        fclose(af->f);
    if (af->tmp_path)
        unlink(af->tmp_path);
    free(af->path);
    free(af->tmp_path);
    memset(af, 0, sizeof *af);
}

int gp_atomic_commit(gp_atomic_file *af, gp_err *e)
{
    int rc = 0;
    if (fflush(af->f) != 0 || fsync(fileno(af->f)) != 0)
        rc = gp_fail(e, "%s: flush failed: %s", af->tmp_path, strerror(errno));
    if (fclose(af->f) != 0 && rc == 0)
        rc = gp_fail(e, "%s: close failed: %s", af->tmp_path, strerror(errno));
    af->f = NULL;
    if (rc == 0 && rename(af->tmp_path, af->path) != 0)
        rc = gp_fail(e, "%s: cannot rename %s into place: %s", af->path, af->tmp_path, strerror(errno));
    if (rc != 0) {
        gp_atomic_abort(af);
        return rc;
    }
    free(af->path);
    free(af->tmp_path);
    memset(af, 0, sizeof *af);
    return 0;
}

int gp_write_atomic(const char *path, const void *data, size_t len, gp_err *e)
{
    gp_atomic_file af;
    if (gp_atomic_open(&af, path, e) != 0)
        return -1;
    if (gp_atomic_write(&af, data, len, e) != 0) {
        gp_atomic_abort(&af);
        return -1;
    }
    return gp_atomic_commit(&af, e);
}

int gp_mkdirs(const char *path, gp_err *e)
{
    if (!path || !*path)
        return 0;
    char *p = gp_xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            int rc = gp_fail(e, "cannot create directory %s: %s", p, strerror(errno));
            free(p);
            return rc;
        }
        *s = '/';
    }
    int rc = 0;
    if (mkdir(p, 0777) != 0 && errno != EEXIST)
        rc = gp_fail(e, "cannot create directory %s: %s", p, strerror(errno));
    else {
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode))
            rc = gp_fail(e, "%s exists and is not a directory", p);
    }
    free(p);
    return rc;
}

char *gp_path_join(const char *dir, const char *name)
{
    if (!dir || !*dir)
        return gp_xstrdup(name);
    size_t n = strlen(dir) + strlen(name) + 2;
    char *out = gp_xmalloc(n);
    size_t dl = strlen(dir);
    snprintf(out, n, "%s%s%s", dir, dir[dl - 1] == '/' ? "" : "/", name);
    return out;
}

int gp_parse_i64(const char *s, int64_t *out)
{
    if (!s || !*s)
        return -1;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return -1;
    *out = (int64_t)v;
    return 0;
}

int gp_parse_f64(const char *s, double *out)
{
    if (!s || !*s)
        return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int gp_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    int *row = gp_xmalloc((lb + 1) * sizeof *row);
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            int best = diag + cost;
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    int d = row[lb];
    free(row);
    return d;
}

const char *gp_fmt_bytes(double bytes, char *buf, size_t n)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) {
        bytes /= 1024.0;
        u++;
    }
    snprintf(buf, n, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
    return buf;
}
