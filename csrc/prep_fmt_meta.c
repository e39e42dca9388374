/* prep_fmt_meta: item -> category files: MovieLens u.item (genre flags, names from u.genre beside
 * it) and movies.dat (`id::title::A|B`), and the generic `item,category` CSV. Small files, parsed
 * on one worker, before the interactions. */
#include <stdio.h>
#include <stdlib.h>

#include "prep_internal.h"

#define ML_MAX_GENRES 64

typedef struct {
    prep_events *ev;
    int kind; /* 0 u.item, 1 movies.dat, 2 item,category csv */
    char *genre[ML_MAX_GENRES];
    int n_genres;
    gp_err err;
    int failed;
} meta_ctx;

#define REJECT(reason, ...)                                                                                  \
    do {                                                                                                     \
        if (prep_reject(&w->rej, ev->o->on_error, reason, p->path, line_no, line, len, __VA_ARGS__))        \
            return 1;                                                                                        \
        return 0;                                                                                            \
    } while (0)

/* Splits on a separator (no quoting); returns the count (at most max). */
static int split(const char *s, size_t n, const char *sep, const char **f, size_t *fl, int max)
{
    size_t sl = strlen(sep);
    int k = 0;
    size_t start = 0;
    for (size_t i = 0; k < max;) {
        if (i + sl <= n && memcmp(s + i, sep, sl) == 0) {
            f[k] = s + start;
            fl[k++] = i - start;
            i += sl;
            start = i;
        } else if (i >= n) {
            f[k] = s + start;
            fl[k++] = n - start;
            break;
        } else {
            i++;
        }
    }
    return k;
}

static int item_id(meta_ctx *m, prep_worker *w, const prep_piece *p, uint64_t line_no, const char *line, size_t len,
                   const char *s, size_t n, uint32_t *id)
{
    prep_events *ev = m->ev;
    if (n == 0)
        REJECT(PREP_ERR_ID, "empty item id");
    if (prep_keymap_kind(ev->items) == PREP_KEY_INT) {
        int64_t v;
        int r = prep_parse_i64(s, n, &v);
        if (r == -1)
            REJECT(PREP_ERR_ID, "item id \"%.*s\" is not an integer", (int)(n > 40 ? 40 : n), s);
        if (r == -2 || v < 0 || v > PREP_MAX_INT_KEY)
            REJECT(PREP_ERR_ID_RANGE, "item id %.*s outside 0..2^63-2", (int)(n > 40 ? 40 : n), s);
        *id = prep_key_put_int(ev->items, v);
    } else {
        *id = prep_key_put_str(ev->items, s, n);
    }
    if (*id == PREP_NO_ID) {
        w->oom = 1;
        return 1;
    }
    return -1; /* ok */
}

/* Returns 1 to stop. */
static int parse_meta_line(meta_ctx *m, prep_worker *w, const prep_piece *p, uint64_t line_no, const char *line,
                           size_t len)
{
    prep_events *ev = m->ev;
    const char *f[ML_MAX_GENRES + 8];
    size_t fl[ML_MAX_GENRES + 8];
    int nf;
    char cat[4096];
    size_t cl = 0;
    uint32_t item;
    int r;
    if (m->kind == 0) {
        nf = split(line, len, "|", f, fl, ML_MAX_GENRES + 8);
        if (nf != 5 + m->n_genres)
            REJECT(PREP_ERR_FIELDS, "%d fields where u.item has %d (5 + %d genre flags)", nf, 5 + m->n_genres, m->n_genres);
        for (int g = 0; g < m->n_genres; g++)
            if (fl[5 + g] != 1 || (f[5 + g][0] != '0' && f[5 + g][0] != '1'))
                REJECT(PREP_ERR_FIELDS, "genre flag %d is \"%.*s\", not 0 or 1", g, (int)(fl[5 + g] > 20 ? 20 : fl[5 + g]),
                       f[5 + g]);
        if ((r = item_id(m, w, p, line_no, line, len, f[0], fl[0], &item)) >= 0)
            return r;
        for (int g = 0; g < m->n_genres; g++) {
            if (f[5 + g][0] != '1')
                continue;
            size_t gl = strlen(m->genre[g]);
            if (cl && cl + 1 < sizeof cat)
                cat[cl++] = '|';
            if (cl + gl < sizeof cat) {
                memcpy(cat + cl, m->genre[g], gl);
                cl += gl;
            }
            if (ev->o->genre == PREP_GENRE_FIRST)
                break;
        }
    } else if (m->kind == 1) {
        nf = split(line, len, "::", f, fl, 4);
        if (nf != 3)
            REJECT(PREP_ERR_FIELDS, "%d fields where movies.dat has 3 (id::title::genres)", nf);
        if ((r = item_id(m, w, p, line_no, line, len, f[0], fl[0], &item)) >= 0)
            return r;
        size_t n = fl[2];
        if (ev->o->genre == PREP_GENRE_FIRST) {
            const char *bar = memchr(f[2], '|', n);
            if (bar)
                n = (size_t)(bar - f[2]);
        }
        cl = n < sizeof cat ? n : sizeof cat - 1;
        memcpy(cat, f[2], cl);
        if (cl == 18 && memcmp(cat, "(no genres listed)", 18) == 0)
            cl = 0;
    } else {
        nf = split(line, len, ",", f, fl, 3);
        if (nf != 2)
            REJECT(PREP_ERR_FIELDS, "%d fields where item,category lines have 2", nf);
        if (fl[1] == 0)
            REJECT(PREP_ERR_ID, "empty category");
        if ((r = item_id(m, w, p, line_no, line, len, f[0], fl[0], &item)) >= 0)
            return r;
        cl = fl[1] < sizeof cat ? fl[1] : sizeof cat - 1;
        memcpy(cat, f[1], cl);
    }
    if (item < ev->meta_cate_n && ev->meta_cate[item] != PREP_NO_ID) {
        prep_reject(&w->rej, PREP_SKIP, PREP_FILT_DUP_META, p->path, line_no, line, len, "item described again");
        return 0;
    }
    uint32_t cate = PREP_META_NONE;
    if (cl) {
        cate = prep_key_put_str(ev->cates, cat, cl);
        if (cate == PREP_NO_ID) {
            w->oom = 1;
            return 1;
        }
    }
    if (prep_events_set_meta(ev, item, cate, &m->err) != 0) {
        m->failed = 1;
        return 1;
    }
    return 0;
}

static void parse_piece(void *ctx, int worker, const prep_piece *p)
{
    meta_ctx *m = ctx;
    prep_worker *w = &m->ev->w[worker];
    const char *cur = p->begin, *line;
    size_t len;
    uint64_t line_no = p->first_line;
    for (; prep_next_line(&cur, p->end, &line, &len); line_no++) {
        w->lines++;
        if (len == 0) {
            w->rej.blank++;
            continue;
        }
        if (parse_meta_line(m, w, p, line_no, line, len))
            break;
    }
}

static int block_end(void *ctx, gp_err *e)
{
    meta_ctx *m = ctx;
    if (m->failed)
        return gp_fail(e, "%s", m->err.msg);
    return prep_events_block_end(m, e);
}

/* u.genre: `name|index` lines; index k names flag k of u.item. */
static int read_genres(meta_ctx *m, const char *item_path, gp_err *e)
{
    const char *slash = strrchr(item_path, '/');
    size_t dir = slash ? (size_t)(slash - item_path) + 1 : 0;
    char *path = gp_xmalloc(dir + 8);
    memcpy(path, item_path, dir);
    memcpy(path + dir, "u.genre", 8);
    char *text = NULL;
    size_t n = 0;
    gp_err ignore;
    if (gp_read_file(path, &text, &n, &ignore) != 0) {
        /* No u.genre: the 19 flags of MovieLens 100K are named by their index. */
        m->n_genres = 19;
        for (int g = 0; g < 19; g++) {
            char name[16];
            snprintf(name, sizeof name, "genre%d", g);
            m->genre[g] = gp_xstrdup(name);
        }
        free(path);
        return 0;
    }
    const char *cur = text, *line;
    size_t len;
    uint64_t line_no = 0;
    int rc = 0;
    while (rc == 0 && prep_next_line(&cur, text + n, &line, &len)) {
        line_no++;
        if (len == 0)
            continue;
        const char *bar = memrchr(line, '|', len);
        int64_t idx;
        if (!bar || prep_parse_i64(bar + 1, (size_t)(line + len - bar - 1), &idx) != 0 || idx < 0 ||
            idx >= ML_MAX_GENRES || m->genre[idx]) {
            char q[200];
            prep_quote_text(q, sizeof q, line, len);
            rc = gp_fail(e, "%s:%llu: expected `name|index` with a new index below %d in \"%s\"", path,
                         (unsigned long long)line_no, ML_MAX_GENRES, q);
            break;
        }
        size_t nl = (size_t)(bar - line);
        m->genre[idx] = gp_xmalloc(nl + 1);
        memcpy(m->genre[idx], line, nl);
        m->genre[idx][nl] = 0;
        if (idx + 1 > m->n_genres)
            m->n_genres = (int)idx + 1;
    }
    for (int g = 0; rc == 0 && g < m->n_genres; g++)
        if (!m->genre[g])
            rc = gp_fail(e, "%s: genre index %d missing", path, g);
    free(text);
    free(path);
    return rc;
}

static int parse_meta_file(prep_events *ev, int kind, const char *path, gp_err *e)
{
    meta_ctx m;
    memset(&m, 0, sizeof m);
    m.ev = ev;
    m.kind = kind;
    int rc = kind == 0 ? read_genres(&m, path, e) : 0;
    if (rc == 0) {
        prep_line_handler h = {&m, NULL, prep_events_block_begin, parse_piece, block_end};
        uint64_t lines = 0;
        /* one worker: metadata files are small and set_meta is serial */
        int saved = ev->workers;
        ev->workers = 1;
        rc = prep_read_lines(path, 1, ev->o->block_bytes, &h, &lines, e);
        ev->workers = saved;
    }
    for (int g = 0; g < ML_MAX_GENRES; g++)
        free(m.genre[g]);
    return rc;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

int prep_parse_movielens_items(prep_events *ev, gp_err *e)
{
    return parse_meta_file(ev, ends_with(ev->o->meta, ".dat") ? 1 : 0, ev->o->meta, e);
}

int prep_parse_item_cate_csv(prep_events *ev, gp_err *e) { return parse_meta_file(ev, 2, ev->o->meta, e); }
