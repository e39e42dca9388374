/* util: error reporting, checked allocation, files and clocks shared by every module.
 *
 * Contract
 * - Library functions never exit and never print errors themselves. They return 0 on success and
 *   -1 on failure after writing one human-readable sentence into a gp_err (via gp_fail), which
 *   names the file, line and offending value where there is one. Only the CLI prints and exits.
 * - gp_xmalloc/gp_xcalloc are for small host bookkeeping where running out of memory is fatal
 *   anyway; they abort with a message. Large buffers use gp_alloc_or_fail so the caller can turn
 *   an allocation failure into a clear error.
 * - gp_write_atomic writes a whole file through "<path>.tmp.<pid>" then rename(), so a reader never
 *   sees a half-written file and an existing file is only replaced once the new one is complete.
 */
#ifndef GPSDREC_UTIL_H
#define GPSDREC_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define GP_ERR_LEN 1024

typedef struct {
    char msg[GP_ERR_LEN];
} gp_err;

/* Format the error message into e (if e is non-NULL) and return -1. */
int gp_fail(gp_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepend context to an existing message: "ctx: old message". Returns -1. */
int gp_wrap(gp_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void *gp_xmalloc(size_t n);
void *gp_xcalloc(size_t count, size_t size);
void *gp_xrealloc(void *p, size_t n);
char *gp_xstrdup(const char *s);
/* Allocate n bytes (64-byte aligned, zeroed) or fail with a message naming what and how much. */
void *gp_alloc_or_fail(size_t n, const char *what, gp_err *e);
void gp_free_aligned(void *p);

/* Monotonic wall clock in seconds. */
double gp_now(void);

/* Whole-file helpers. gp_read_file returns a malloc'd buffer with a trailing NUL. */
int gp_read_file(const char *path, char **data, size_t *len, gp_err *e);
int gp_write_atomic(const char *path, const void *data, size_t len, gp_err *e);
/* Streaming variant of the above: open "<path>.tmp.<pid>", write, then commit or abort. */
typedef struct {
    FILE *f;
    char *path;
    char *tmp_path;
} gp_atomic_file;
int gp_atomic_open(gp_atomic_file *af, const char *path, gp_err *e);
int gp_atomic_write(gp_atomic_file *af, const void *data, size_t len, gp_err *e);
int gp_atomic_commit(gp_atomic_file *af, gp_err *e); /* fflush, fsync, rename */
void gp_atomic_abort(gp_atomic_file *af);            /* close and unlink the temporary */

/* mkdir -p. */
int gp_mkdirs(const char *path, gp_err *e);
/* Join a directory and a file name into a malloc'd string. */
char *gp_path_join(const char *dir, const char *name);

/* Strict number parsing: the whole string must be consumed, no overflow. 0 on success. */
int gp_parse_i64(const char *s, int64_t *out);
int gp_parse_f64(const char *s, double *out);

/* Levenshtein distance, used to suggest the nearest valid key or command. */
int gp_edit_distance(const char *a, const char *b);

/* Human-readable byte counts ("1.5 GiB") into buf. */
const char *gp_fmt_bytes(double bytes, char *buf, size_t n);

#define GP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define GP_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
