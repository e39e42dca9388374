/* prep_fmt_delim: delimited interaction rows: Taobao UserBehavior CSV, MovieLens u.data (TAB) /
 * ratings.dat ("::"), and a generic CSV/TSV whose columns are named on the command line.
 *
 * A line is split on the separator (CSV fields may be double-quoted, with "" for a quote; a
 * quoted field never spans lines), every needed field checked (ids, timestamp, rating) before any
 * key is added to a map, so a rejected line leaves no trace but its count. */
#include <math.h>
#include <stdlib.h>
#include <strings.h>

#include "prep_internal.h"

#define MAX_FIELDS 1024

enum { COL_USER, COL_ITEM, COL_TIME, COL_CATE, COL_BEHAVIOR, COL_RATING, N_COLS };
static const char *const col_names[N_COLS] = {"user", "item", "time", "category", "behavior", "rating"};

typedef struct {
    prep_events *ev;
    char delim[3];
    size_t dlen;
    int quoted;
    int exact_fields;       /* > 0: every line must have exactly this many fields */
    int col[N_COLS];        /* 0-based field index, -1 = absent */
    const char *col_spec[N_COLS];
    int min_fields;         /* 1 + the largest needed index */
    char **keep_behaviors;  /* NULL = keep all */
    int n_keep;
    int check_rating;
} delim_ctx;

typedef struct {
    const char *p;
    size_t n;
} field;

/* Per-worker memo of integer keys already mapped: the last user (a user's rows usually come
 * together) and a small direct-mapped table for categories (few distinct values). Provisional ids
 * never change once given, so a remembered id stays right. */
#define CATE_MEMO 1024
typedef struct {
    int64_t user_key;
    uint32_t user_id;
    int64_t cate_key[CATE_MEMO];
    uint32_t cate_id[CATE_MEMO];
} key_memo;

static uint32_t memo_put(key_memo *km, int k, prep_keymap *m, int64_t key)
{
    if (k == 0) {
        if (km->user_id != PREP_NO_ID && km->user_key == key)
            return km->user_id;
        km->user_key = key;
        return km->user_id = prep_key_put_int(m, key);
    }
    if (k == 2) {
        uint32_t slot = (uint32_t)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> 54);
        if (km->cate_id[slot] != PREP_NO_ID && km->cate_key[slot] == key)
            return km->cate_id[slot];
        km->cate_key[slot] = key;
        return km->cate_id[slot] = prep_key_put_int(m, key);
    }
    return prep_key_put_int(m, key);
}

/* Splits a line; quoted fields are unescaped into scratch. Returns the field count, -1 on bad
 * quoting, or -2 when there are more than MAX_FIELDS. */
static int split_line(const delim_ctx *d, const char *line, size_t len, field *f, char *scratch)
{
    int n = 0;
    size_t i = 0, sc = 0;
    const char c0 = d->delim[0];
    for (;;) {
        if (n == MAX_FIELDS)
            return -2;
        if (d->quoted && i < len && line[i] == '"') {
            size_t start = sc;
            i++;
            for (;;) {
                if (i >= len)
                    return -1; /* unterminated */
                if (line[i] == '"') {
                    if (i + 1 < len && line[i + 1] == '"') {
                        scratch[sc++] = '"';
                        i += 2;
                        continue;
                    }
                    i++;
                    break;
                }
                scratch[sc++] = line[i++];
            }
            f[n].p = scratch + start;
            f[n].n = sc - start;
            n++;
            if (i == len)
                return n;
            if (!(line[i] == c0 && (d->dlen == 1 || (i + 1 < len && line[i + 1] == d->delim[1]))))
                return -1; /* text after the closing quote */
            i += d->dlen;
            continue;
        }
        size_t start = i;
        for (;;) {
            const char *hit = memchr(line + i, c0, len - i);
            if (!hit) {
                i = len;
                break;
            }
            i = (size_t)(hit - line);
            if (d->dlen == 1 || (i + 1 < len && line[i + 1] == d->delim[1]))
                break;
            i++;
        }
        f[n].p = line + start;
        f[n].n = i - start;
        n++;
        if (d->quoted && memchr(f[n - 1].p, '"', f[n - 1].n))
            return -1; /* a quote inside an unquoted field */
        if (i >= len)
            return n;
        i += d->dlen;
        if (i == len) { /* a trailing separator: one more, empty field */
            if (n == MAX_FIELDS)
                return -2;
            f[n].p = line + len;
            f[n].n = 0;
            return n + 1;
        }
    }
}

#define REJECT(reason, ...)                                                                              \
    do {                                                                                                 \
        if (prep_reject(&w->rej, o->on_error, reason, p->path, line_no, line, len, __VA_ARGS__))        \
            return 1;                                                                                    \
        return 0;                                                                                        \
    } while (0)

/* One line; returns 1 when parsing must stop (abort mode). */
/* A checked row of integer keys waiting for its insertion (see parse_piece). */
typedef struct {
    int64_t key[3];
    int64_t time;
} pending;

static int insert_pending(const delim_ctx *d, prep_worker *w, key_memo *km, const pending *pd)
{
    prep_events *ev = d->ev;
    uint32_t user = memo_put(km, 0, ev->users, pd->key[0]);
    uint32_t item = prep_key_put_int(ev->items, pd->key[1]);
    uint32_t cate = d->col[COL_CATE] >= 0 ? memo_put(km, 2, ev->cates, pd->key[2]) : PREP_NO_ID;
    if (user == PREP_NO_ID || item == PREP_NO_ID || (d->col[COL_CATE] >= 0 && cate == PREP_NO_ID) ||
        prep_rows_push(&w->rows, user, item, cate, pd->time) != 0) {
        w->oom = 1;
        return 1;
    }
    return 0;
}

/* Returns 1 to stop, 2 when the row went to *out (all_int mode) instead of the maps, else 0. */
static int parse_one(const delim_ctx *d, prep_worker *w, const prep_piece *p, uint64_t line_no, const char *line,
                     size_t len, field *f, char *scratch, key_memo *km, pending *out)
{
    const prep_opts *o = d->ev->o;
    prep_events *ev = d->ev;
    int nf = split_line(d, line, len, f, scratch);
    if (nf == -1)
        REJECT(PREP_ERR_QUOTE, "unterminated quote or text after a closing quote");
    if (nf == -2)
        REJECT(PREP_ERR_FIELDS, "more than %d fields", MAX_FIELDS);
    if (d->exact_fields && nf != d->exact_fields)
        REJECT(PREP_ERR_FIELDS, "%d field%s where %d are expected%s", nf, nf == 1 ? "" : "s", d->exact_fields,
               p->last_unterminated ? " (last line, no newline at the end: is the file truncated?)" : "");
    if (nf < d->min_fields)
        REJECT(PREP_ERR_FIELDS, "missing column: %d field%s where at least %d are needed%s", nf, nf == 1 ? "" : "s",
               d->min_fields, p->last_unterminated ? " (last line, no newline at the end: is the file truncated?)" : "");

    int64_t key[3] = {0, 0, 0};
    const int cols3[3] = {COL_USER, COL_ITEM, COL_CATE};
    prep_keymap *maps[3] = {ev->users, ev->items, ev->cates};
    for (int k = 0; k < 3; k++) {
        int c = d->col[cols3[k]];
        if (c < 0)
            continue;
        const field *fl = &f[c];
        if (fl->n == 0)
            REJECT(PREP_ERR_ID, "empty %s id (field %d)", col_names[cols3[k]], c + 1);
        if (prep_keymap_kind(maps[k]) == PREP_KEY_INT) {
            int r = prep_parse_i64(fl->p, fl->n, &key[k]);
            if (r == -1)
                REJECT(PREP_ERR_ID, "%s id \"%.*s\" (field %d) is not an integer%s", col_names[cols3[k]],
                       (int)(fl->n > 40 ? 40 : fl->n), fl->p, c + 1,
                       line_no == 1 ? " (a header line? the csv format takes --header)" : "");
            if (r == -2 || key[k] < 0 || key[k] > PREP_MAX_INT_KEY)
                REJECT(PREP_ERR_ID_RANGE, "%s id %.*s (field %d) outside 0..2^63-2", col_names[cols3[k]],
                       (int)(fl->n > 40 ? 40 : fl->n), fl->p, c + 1);
        }
    }
    int64_t t;
    {
        const field *fl = &f[d->col[COL_TIME]];
        int r = prep_parse_i64(fl->p, fl->n, &t);
        if (r == -1)
            REJECT(PREP_ERR_TIME, "timestamp \"%.*s\" (field %d) is not an integer", (int)(fl->n > 40 ? 40 : fl->n),
                   fl->p, d->col[COL_TIME] + 1);
        if (r == -2)
            REJECT(PREP_ERR_TIME_RANGE, "timestamp %.*s (field %d) does not fit 64 bits", (int)(fl->n > 40 ? 40 : fl->n),
                   fl->p, d->col[COL_TIME] + 1);
    }
    double rating = 0;
    if (d->check_rating) {
        const field *fl = &f[d->col[COL_RATING]];
        if (prep_parse_f64(fl->p, fl->n, &rating) != 0)
            REJECT(PREP_ERR_RATING, "rating \"%.*s\" (field %d) is not a number", (int)(fl->n > 40 ? 40 : fl->n), fl->p,
                   d->col[COL_RATING] + 1);
    }
    /* Filters, after every error check. */
    if (d->keep_behaviors) {
        const field *fl = &f[d->col[COL_BEHAVIOR]];
        int keep = 0;
        for (int i = 0; i < d->n_keep && !keep; i++)
            keep = strlen(d->keep_behaviors[i]) == fl->n && memcmp(d->keep_behaviors[i], fl->p, fl->n) == 0;
        if (!keep) {
            prep_reject(&w->rej, PREP_SKIP, PREP_FILT_BEHAVIOR, p->path, line_no, line, len, "behaviour \"%.*s\"",
                        (int)(fl->n > 40 ? 40 : fl->n), fl->p);
            return 0;
        }
    }
    if (d->check_rating && !(rating >= o->min_rating)) {
        prep_reject(&w->rej, PREP_SKIP, PREP_FILT_RATING, p->path, line_no, line, len, "rating %g < %g", rating,
                    o->min_rating);
        return 0;
    }
    if (t < o->time_min || t > o->time_max) {
        prep_reject(&w->rej, PREP_SKIP, PREP_FILT_TIME, p->path, line_no, line, len, "timestamp %lld", (long long)t);
        return 0;
    }
    if (out) {
        memcpy(out->key, key, sizeof key);
        out->time = t;
        return 2;
    }
    uint32_t id[3] = {0, 0, PREP_NO_ID};
    for (int k = 0; k < 3; k++) {
        int c = d->col[cols3[k]];
        if (c < 0)
            continue;
        id[k] = prep_keymap_kind(maps[k]) == PREP_KEY_INT ? memo_put(km, k, maps[k], key[k])
                                                          : prep_key_put_str(maps[k], f[c].p, f[c].n);
        if (id[k] == PREP_NO_ID) {
            w->oom = 1;
            return 1;
        }
    }
    if (prep_rows_push(&w->rows, id[0], id[1], id[2], t) != 0) {
        w->oom = 1;
        return 1;
    }
    return 0;
}

static void parse_piece(void *ctx, int worker, const prep_piece *p)
{
    const delim_ctx *d = ctx;
    prep_worker *w = &d->ev->w[worker];
    field *f = malloc(MAX_FIELDS * sizeof *f);
    size_t scratch_cap = 4096;
    char *scratch = malloc(scratch_cap);
    key_memo *km = malloc(sizeof *km);
    if (!f || !scratch || !km) {
        w->oom = 1;
        free(f);
        free(scratch);
        free(km);
        return;
    }
    km->user_id = PREP_NO_ID;
    for (int i = 0; i < CATE_MEMO; i++)
        km->cate_id[i] = PREP_NO_ID;
    /* With integer keys, rows wait in a short ring: a row's item slot is prefetched when it is
     * parsed and looked up PIPE rows later, so the cache miss overlaps the parsing in between.
     * Rows still leave in input order. */
    enum { PIPE = 8 };
    pending ring[PIPE];
    unsigned head = 0, count = 0;
    prep_events *ev = d->ev;
    const int all_int = prep_keymap_kind(ev->users) == PREP_KEY_INT && prep_keymap_kind(ev->items) == PREP_KEY_INT &&
                        (d->col[COL_CATE] < 0 || prep_keymap_kind(ev->cates) == PREP_KEY_INT);
    const char *cur = p->begin, *line;
    size_t len;
    uint64_t line_no = p->first_line;
    int stop = 0;
    for (; !stop && prep_next_line(&cur, p->end, &line, &len); line_no++) {
        w->lines++;
        if (len == 0) {
            w->rej.blank++;
            continue;
        }
        if (len > scratch_cap) {
            free(scratch);
            scratch_cap = len;
            scratch = malloc(scratch_cap);
            if (!scratch) {
                w->oom = 1;
                break;
            }
        }
        pending *slot = all_int ? &ring[(head + count) % PIPE] : NULL;
        int r = parse_one(d, w, p, line_no, line, len, f, scratch, km, slot);
        if (r == 1)
            stop = 1;
        if (r != 2)
            continue;
        prep_key_prefetch_int(ev->items, slot->key[1]);
        if (++count == PIPE) {
            stop = insert_pending(d, w, km, &ring[head]);
            head = (head + 1) % PIPE;
            count--;
        }
    }
    while (count && !w->oom) {
        insert_pending(d, w, km, &ring[head]);
        head = (head + 1) % PIPE;
        count--;
    }
    free(f);
    free(scratch);
    free(km);
}

/* Column spec: a 1-based number, or a header name. */
static int resolve_numeric_cols(delim_ctx *d, gp_err *e)
{
    for (int c = 0; c < N_COLS; c++) {
        if (!d->col_spec[c])
            continue;
        int64_t v;
        if (prep_parse_i64(d->col_spec[c], strlen(d->col_spec[c]), &v) == 0) {
            if (v < 1 || v > MAX_FIELDS)
                return gp_fail(e, "prep: %s column %lld out of 1..%d", col_names[c], (long long)v, MAX_FIELDS);
            d->col[c] = (int)v - 1;
        } else if (!d->ev->o->header) {
            return gp_fail(e, "prep: %s column \"%s\" is a name, but the input has no header (give --header, or the "
                              "1-based column number)",
                           col_names[c], d->col_spec[c]);
        }
    }
    return 0;
}

static int header_cb(void *ctx, const char *line, size_t len, gp_err *e)
{
    delim_ctx *d = ctx;
    field *f = malloc(MAX_FIELDS * sizeof *f);
    char *scratch = malloc(len + 1);
    int nf = f && scratch ? split_line(d, line, len, f, scratch) : -3;
    int rc = 0;
    if (nf < 0) {
        rc = gp_fail(e, "%s:1: cannot split the header line", d->ev->o->input);
        goto out;
    }
    for (int c = 0; c < N_COLS && rc == 0; c++) {
        if (!d->col_spec[c] || d->col[c] >= 0)
            continue;
        const char *name = d->col_spec[c];
        for (int k = 0; k < nf; k++)
            if (strlen(name) == f[k].n && memcmp(name, f[k].p, f[k].n) == 0) {
                d->col[c] = k;
                break;
            }
        if (d->col[c] < 0) {
            char q[200];
            prep_quote_text(q, sizeof q, line, len);
            rc = gp_fail(e, "%s:1: missing column: the header has no column named \"%s\" (for the %s) in \"%s\"",
                         d->ev->o->input, name, col_names[c], q);
        }
    }
    d->min_fields = 0;
    for (int c = 0; c < N_COLS; c++)
        if (d->col[c] + 1 > d->min_fields)
            d->min_fields = d->col[c] + 1;
out:
    free(f);
    free(scratch);
    return rc;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

int prep_parse_delimited(prep_events *ev, gp_err *e)
{
    const prep_opts *o = ev->o;
    delim_ctx d;
    memset(&d, 0, sizeof d);
    d.ev = ev;
    for (int c = 0; c < N_COLS; c++)
        d.col[c] = -1;
    const char *delim = o->delim;
    switch (o->format) {
    case PREP_FMT_TAOBAO:
        delim = delim ? delim : ",";
        d.exact_fields = 5;
        d.col[COL_USER] = 0, d.col[COL_ITEM] = 1, d.col[COL_CATE] = 2, d.col[COL_BEHAVIOR] = 3, d.col[COL_TIME] = 4;
        break;
    case PREP_FMT_MOVIELENS:
        delim = delim ? delim : (ends_with(o->input, ".dat") ? "::" : "\t");
        d.exact_fields = 4;
        d.col[COL_USER] = 0, d.col[COL_ITEM] = 1, d.col[COL_RATING] = 2, d.col[COL_TIME] = 3;
        break;
    default:
        delim = delim ? delim : (ends_with(o->input, ".tsv") ? "\t" : ",");
        d.quoted = 1;
        d.col_spec[COL_USER] = o->col_user;
        d.col_spec[COL_ITEM] = o->col_item;
        d.col_spec[COL_TIME] = o->col_time;
        d.col_spec[COL_CATE] = o->col_cate;
        d.col_spec[COL_BEHAVIOR] = o->col_behavior;
        d.col_spec[COL_RATING] = o->col_rating;
        if (resolve_numeric_cols(&d, e) != 0)
            return -1;
        break;
    }
    snprintf(d.delim, sizeof d.delim, "%s", delim);
    d.dlen = strlen(d.delim);
    for (int c = 0; c < N_COLS; c++)
        if (d.col[c] + 1 > d.min_fields)
            d.min_fields = d.col[c] + 1;
    if (o->behaviors) {
        if (o->format == PREP_FMT_MOVIELENS || (o->format == PREP_FMT_CSV && !o->col_behavior))
            return gp_fail(e, "prep: a behaviour filter needs a behaviour column (taobao, or csv with --behavior-col)");
        char *list = gp_xstrdup(o->behaviors);
        d.keep_behaviors = gp_xcalloc(strlen(list) + 1, sizeof *d.keep_behaviors);
        for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ","))
            d.keep_behaviors[d.n_keep++] = tok;
        if (d.n_keep == 0) {
            free(list);
            free(d.keep_behaviors);
            return gp_fail(e, "prep: the behaviour filter \"%s\" names no behaviour", o->behaviors);
        }
    }
    d.check_rating = d.col[COL_RATING] >= 0 || (o->format == PREP_FMT_CSV && o->col_rating);
    d.check_rating = d.check_rating && !isnan(o->min_rating);
    if (!isnan(o->min_rating) && o->format != PREP_FMT_MOVIELENS && !(o->format == PREP_FMT_CSV && o->col_rating)) {
        free(d.keep_behaviors ? d.keep_behaviors[0] : NULL);
        free(d.keep_behaviors);
        return gp_fail(e, "prep: min_rating needs a rating column (movielens, or csv with --rating-col)");
    }
    prep_line_handler h = {&d, o->format == PREP_FMT_CSV && o->header ? header_cb : NULL, prep_events_block_begin,
                           parse_piece, prep_events_block_end};
    if (o->format == PREP_FMT_CSV && !o->header) {
        for (int c = 0; c < N_COLS; c++)
            if (d.col_spec[c] && d.col[c] < 0) {
                free(d.keep_behaviors ? d.keep_behaviors[0] : NULL);
                free(d.keep_behaviors);
                return gp_fail(e, "prep: %s column \"%s\" not resolved", col_names[c], d.col_spec[c]);
            }
    }
    uint64_t lines = 0;
    int rc = prep_read_lines(o->input, ev->workers, o->block_bytes, &h, &lines, e);
    free(d.keep_behaviors ? d.keep_behaviors[0] : NULL);
    free(d.keep_behaviors);
    if (o->format == PREP_FMT_CSV && o->header)
        ev->lines++; /* the header */
    return rc;
}
