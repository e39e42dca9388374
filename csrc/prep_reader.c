/* prep_reader: streams a text file in large blocks and parses each block on every worker.
 *
 * A block holds whole lines only (the tail after its last newline waits for the next block), so
 * line numbers are known before parsing: each piece's newlines are counted first and prefix-summed.
 * Plain read() rather than mmap: stdin and pipes work (`zcat x.gz | gpsdrec prep --input -`) and
 * the input never counts towards the resident memory. */
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prep_internal.h"

#define PREP_MAX_LINE ((size_t)1 << 30)

static uint64_t count_newlines(const char *p, const char *end)
{
    uint64_t n = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        n++;
        p = nl + 1;
    }
    return n;
}

/* Reads until buf holds `want` bytes or the input ends. */
static int fill(int fd, const char *path, char *buf, size_t *len, size_t want, int *eof, gp_err *e)
{
    while (*len < want && !*eof) {
        ssize_t got = read(fd, buf + *len, want - *len);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return gp_fail(e, "%s: read failed: %s", path, strerror(errno));
        }
        if (got == 0)
            *eof = 1;
        *len += (size_t)got;
    }
    return 0;
}

int prep_read_lines(const char *path, int workers, size_t block_bytes, const prep_line_handler *h, uint64_t *n_lines,
                    gp_err *e)
{
    *n_lines = 0;
    if (workers < 1)
        workers = 1;
    if (block_bytes < 4096)
        block_bytes = 4096;
    int is_stdin = strcmp(path, "-") == 0;
    int fd = is_stdin ? 0 : open(path, O_RDONLY);
    if (fd < 0)
        return gp_fail(e, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = block_bytes;
    char *buf = malloc(cap);
    prep_piece *pieces = calloc((size_t)workers, sizeof *pieces);
    uint64_t *piece_lines = calloc((size_t)workers, sizeof *piece_lines);
    int rc = 0, eof = 0;
    size_t len = 0;
    uint64_t line_no = 1, total_bytes = 0;
    if (!buf || !pieces || !piece_lines) {
        rc = gp_fail(e, "%s: out of memory for a %zu-byte read buffer", path, cap);
        goto done;
    }
    for (;;) {
        if ((rc = fill(fd, path, buf, &len, cap, &eof, e)) != 0)
            goto done;
        if (len == 0)
            break;
        /* Whole lines only: cut after the last newline, or take everything at the end of input. */
        size_t cut = len;
        if (!eof) {
            const char *nl = memrchr(buf, '\n', len);
            if (!nl) {
                if (cap >= PREP_MAX_LINE) {
                    rc = gp_fail(e, "%s:%llu: line longer than %zu bytes", path, (unsigned long long)line_no, PREP_MAX_LINE);
                    goto done;
                }
                char *bigger = realloc(buf, cap * 2);
                if (!bigger) {
                    rc = gp_fail(e, "%s:%llu: out of memory for a line longer than %zu bytes", path,
                                 (unsigned long long)line_no, cap);
                    goto done;
                }
                buf = bigger;
                cap *= 2;
                continue;
            }
            cut = (size_t)(nl - buf) + 1;
        }
        /* Pieces of about equal size, each ending after a newline. */
        const char *end = buf + cut;
        const char *p = buf;
        if (h->header && line_no == 1) {
            const char *line = buf;
            size_t n = 0;
            const char *cur = buf;
            prep_next_line(&cur, end, &line, &n);
            if ((rc = h->header(h->ctx, line, n, e)) != 0)
                goto done;
            p = cur;
            line_no = 2;
            total_bytes += (size_t)(cur - buf);
        }
        const size_t start = (size_t)(p - buf);
        for (int t = 0; t < workers; t++) {
            const char *stop = t == workers - 1 ? end : buf + start + (size_t)((double)(cut - start) * (t + 1) / workers);
            if (stop < p)
                stop = p;
            if (stop < end && t < workers - 1) {
                if (stop > buf && stop[-1] == '\n') {
                    /* already at a line start */
                } else {
                    const char *nl = memchr(stop, '\n', (size_t)(end - stop));
                    stop = nl ? nl + 1 : end;
                }
            }
            pieces[t].path = path;
            pieces[t].begin = p;
            pieces[t].end = stop;
            pieces[t].last_unterminated = 0;
            p = stop;
        }
#pragma omp parallel for num_threads(workers) schedule(static, 1)
        for (int t = 0; t < workers; t++)
            piece_lines[t] = count_newlines(pieces[t].begin, pieces[t].end);
        uint64_t block_lines = 0;
        for (int t = 0; t < workers; t++) {
            if (t == workers - 1 && eof && cut > 0 && buf[cut - 1] != '\n') {
                piece_lines[t]++;
                pieces[t].last_unterminated = 1;
            }
            pieces[t].first_line = line_no + block_lines;
            block_lines += piece_lines[t];
        }
        if (h->block_begin && (rc = h->block_begin(h->ctx, block_lines, cut, e)) != 0)
            goto done;
#pragma omp parallel for num_threads(workers) schedule(static, 1)
        for (int t = 0; t < workers; t++)
            if (pieces[t].begin < pieces[t].end)
                h->parse(h->ctx, t, &pieces[t]);
        if (h->block_end && (rc = h->block_end(h->ctx, e)) != 0)
            goto done;
        line_no += block_lines;
        total_bytes += cut - start;
        memmove(buf, buf + cut, len - cut);
        len -= cut;
        if (eof && len == 0)
            break;
    }
    if (total_bytes == 0)
        rc = gp_fail(e, "%s: empty input (no lines)", path);
done:
    *n_lines = line_no - 1;
    free(buf);
    free(pieces);
    free(piece_lines);
    if (!is_stdin)
        close(fd);
    return rc;
}
