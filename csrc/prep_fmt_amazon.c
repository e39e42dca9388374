/* prep_fmt_amazon: Amazon review lines and product metadata (2014 and 2018 releases).
 *
 * Metadata first: asin -> category key, where the key is the category path joined with "&&"
 * (2018 `category`: the list; 2014 `categories`: its first path, as x[0] in the official
 * preprocessing_amazon_elec.py), then ' ', ',', ':', '#' removed (the scripts' str.replace
 * '[ ,:#]'). A 2018 line also gets the food script's literal "true"->"True", "false"->"False"
 * (it rewrites the raw line before eval). The first metadata line of an asin wins; later ones
 * are counted as duplicates. Then reviews: `reviewerID`, `asin`, `unixReviewTime`; a review of
 * an asin without metadata is dropped and counted (the official item map comes from the
 * metadata, so such an item could only be unknown). */
#include <stdlib.h>

#include "prep_internal.h"

#define CAT_MAX 8192

typedef struct {
    prep_events *ev;
    int phase; /* 0 metadata, 1 reviews */
    gp_err err;
    int failed;
} amazon_ctx;

typedef struct {
    prep_lit_value asin, user, time, category, categories;
    int has_asin, has_user, has_time, has_category, has_categories;
} fields;

static int on_member(void *ctx, const char *key, size_t klen, const prep_lit_value *v)
{
    fields *f = ctx;
#define KEY(name) (klen == sizeof(name) - 1 && memcmp(key, name, klen) == 0)
    if (KEY("asin"))
        f->asin = *v, f->has_asin = 1;
    else if (KEY("reviewerID"))
        f->user = *v, f->has_user = 1;
    else if (KEY("unixReviewTime"))
        f->time = *v, f->has_time = 1;
    else if (KEY("category"))
        f->category = *v, f->has_category = 1;
    else if (KEY("categories"))
        f->categories = *v, f->has_categories = 1;
#undef KEY
    return 0;
}

typedef struct {
    char *buf;
    size_t len;
    int bad; /* an element that is not a string, or too long */
    int first_only;
    int count;
} path_builder;

static int on_path_elem(void *ctx, const prep_lit_value *v)
{
    path_builder *b = ctx;
    if (v->type != PREP_LIT_STRING) {
        b->bad = 1;
        return 1;
    }
    size_t need = (size_t)(v->end - v->begin) * 2 + 4 + 2;
    if (b->len + need >= CAT_MAX) {
        b->bad = 2;
        return 1;
    }
    if (b->count++)
        b->buf[b->len++] = '&', b->buf[b->len++] = '&';
    long n = prep_lit_decode(v, b->buf + b->len);
    if (n < 0) {
        b->bad = 3;
        return 1;
    }
    b->len += (size_t)n;
    return 0;
}

static int on_first_path(void *ctx, const prep_lit_value *v)
{
    path_builder *b = ctx;
    if (v->type != PREP_LIT_LIST) {
        b->bad = 1;
        return 1;
    }
    const char *err = NULL;
    if (prep_lit_elements(v, on_path_elem, b, &err) < 0)
        b->bad = 3;
    return 1; /* only the first path */
}

/* In place: literal replace of every "from" by "to" (same length). */
static void replace_same_len(char *s, size_t n, const char *from, const char *to)
{
    size_t k = strlen(from);
    for (size_t i = 0; i + k <= n;) {
        if (memcmp(s + i, from, k) == 0) {
            memcpy(s + i, to, k);
            i += k;
        } else {
            i++;
        }
    }
}

/* Builds the cleaned category key; returns its length, or -1 (a message in *why). */
static long category_key(const fields *f, char *out, const char **why)
{
    path_builder b = {out, 0, 0, 0, 0};
    const char *err = NULL;
    int v2018 = f->has_category;
    const prep_lit_value *v = v2018 ? &f->category : &f->categories;
    if (v->type != PREP_LIT_LIST) {
        *why = v2018 ? "\"category\" is not a list" : "\"categories\" is not a list";
        return -1;
    }
    if (v2018)
        prep_lit_elements(v, on_path_elem, &b, &err);
    else
        prep_lit_elements(v, on_first_path, &b, &err);
    if (b.bad || err) {
        *why = b.bad == 2 ? "category path longer than 8 KiB"
               : b.bad == 3 ? "bad escape in a category"
                            : "category path is not a list of strings";
        return -1;
    }
    if (v2018) {
        replace_same_len(out, b.len, "true", "True");
        replace_same_len(out, b.len, "false", "False");
    }
    size_t o = 0;
    for (size_t i = 0; i < b.len; i++)
        if (out[i] != ' ' && out[i] != ',' && out[i] != ':' && out[i] != '#')
            out[o++] = out[i];
    return (long)o;
}

#define REJECT(reason, ...)                                                                                    \
    do {                                                                                                       \
        if (prep_reject(&w->rej, ev->o->on_error, reason, p->path, line_no, line, len, __VA_ARGS__))          \
            return 1;                                                                                          \
        return 0;                                                                                              \
    } while (0)

static int decode_key(const prep_lit_value *v, char *buf, size_t cap, size_t *n)
{
    if (v->type != PREP_LIT_STRING || (size_t)(v->end - v->begin) * 2 + 4 > cap)
        return -1;
    long k = prep_lit_decode(v, buf);
    if (k <= 0)
        return -1;
    *n = (size_t)k;
    return 0;
}

static int parse_line(amazon_ctx *a, prep_worker *w, const prep_piece *p, uint64_t line_no, const char *line,
                      size_t len, char *scratch)
{
    prep_events *ev = a->ev;
    fields f;
    memset(&f, 0, sizeof f);
    prep_lit l = {line, line + len, 0, NULL, NULL};
    if (prep_lit_members(&l, on_member, &f) != 0)
        REJECT(PREP_ERR_JSON, "%s at byte %lld%s", l.err, (long long)(l.err_at - line + 1),
               p->last_unterminated ? " (last line, no newline at the end: is the file truncated?)" : "");
    char asin[512];
    size_t asin_n;
    if (!f.has_asin)
        REJECT(PREP_ERR_FIELD, "no \"asin\"");
    if (decode_key(&f.asin, asin, sizeof asin, &asin_n) != 0)
        REJECT(PREP_ERR_FIELD, "\"asin\" is not a non-empty string of at most 250 bytes");
    if (a->phase == 0) {
        if (!f.has_category && !f.has_categories)
            REJECT(PREP_ERR_FIELD, "no \"category\" (2018) or \"categories\" (2014)");
        const char *why = NULL;
        long cl = category_key(&f, scratch, &why);
        if (cl < 0)
            REJECT(PREP_ERR_FIELD, "%s", why);
        uint32_t item = prep_key_put_str(ev->items, asin, asin_n);
        uint32_t cate = prep_key_put_str(ev->cates, scratch, (size_t)cl);
        if (item == PREP_NO_ID || cate == PREP_NO_ID || prep_rows_push(&w->rows, item, cate, 0, (int64_t)line_no) != 0) {
            w->oom = 1;
            return 1;
        }
        return 0;
    }
    if (!f.has_user)
        REJECT(PREP_ERR_FIELD, "no \"reviewerID\"");
    if (!f.has_time)
        REJECT(PREP_ERR_FIELD, "no \"unixReviewTime\"");
    char user[512];
    size_t user_n;
    if (decode_key(&f.user, user, sizeof user, &user_n) != 0)
        REJECT(PREP_ERR_FIELD, "\"reviewerID\" is not a non-empty string of at most 250 bytes");
    if (f.time.type != PREP_LIT_NUMBER)
        REJECT(PREP_ERR_TIME, "\"unixReviewTime\" is not a number");
    int64_t t;
    int r = prep_parse_i64(f.time.begin, (size_t)(f.time.end - f.time.begin), &t);
    if (r == -1)
        REJECT(PREP_ERR_TIME, "\"unixReviewTime\" %.*s is not an integer", (int)(f.time.end - f.time.begin > 40 ? 40 : f.time.end - f.time.begin),
               f.time.begin);
    if (r == -2)
        REJECT(PREP_ERR_TIME_RANGE, "\"unixReviewTime\" %.*s does not fit 64 bits",
               (int)(f.time.end - f.time.begin > 40 ? 40 : f.time.end - f.time.begin), f.time.begin);
    uint32_t item = prep_key_get_str(ev->items, asin, asin_n);
    if (item == PREP_NO_ID || item >= ev->meta_cate_n || ev->meta_cate[item] == PREP_NO_ID) {
        prep_reject(&w->rej, PREP_SKIP, PREP_FILT_NO_META, p->path, line_no, line, len, "asin %.*s", (int)asin_n, asin);
        return 0;
    }
    if (t < ev->o->time_min || t > ev->o->time_max) {
        prep_reject(&w->rej, PREP_SKIP, PREP_FILT_TIME, p->path, line_no, line, len, "timestamp %lld", (long long)t);
        return 0;
    }
    uint32_t uid = prep_key_put_str(ev->users, user, user_n);
    if (uid == PREP_NO_ID || prep_rows_push(&w->rows, uid, item, PREP_NO_ID, t) != 0) {
        w->oom = 1;
        return 1;
    }
    return 0;
}

static void parse_piece(void *ctx, int worker, const prep_piece *p)
{
    amazon_ctx *a = ctx;
    prep_worker *w = &a->ev->w[worker];
    char *scratch = malloc(CAT_MAX + 16);
    if (!scratch) {
        w->oom = 1;
        return;
    }
    const char *cur = p->begin, *line;
    size_t len;
    uint64_t line_no = p->first_line;
    for (; prep_next_line(&cur, p->end, &line, &len); line_no++) {
        w->lines++;
        if (len == 0) {
            w->rej.blank++;
            continue;
        }
        if (parse_line(a, w, p, line_no, line, len, scratch))
            break;
    }
    free(scratch);
}

/* Metadata blocks: apply (item, category) in input order, so the first description wins. */
static int meta_block_end(void *ctx, gp_err *e)
{
    amazon_ctx *a = ctx;
    prep_events *ev = a->ev;
    for (int t = 0; t < ev->workers; t++) {
        prep_worker *w = &ev->w[t];
        if (w->oom && !ev->rej.failed)
            return gp_fail(e, "prep: out of memory while parsing %s", ev->o->meta);
        for (uint64_t r = 0; r < w->rows.n; r++) {
            uint32_t item = w->rows.user[r], cate = w->rows.item[r];
            if (item < ev->meta_cate_n && ev->meta_cate[item] != PREP_NO_ID) {
                prep_reject(&w->rej, PREP_SKIP, PREP_FILT_DUP_META, ev->o->meta, (uint64_t)w->rows.time[r], NULL, 0,
                            "an asin described on an earlier line");
                continue;
            }
            if (prep_events_set_meta(ev, item, cate, e) != 0)
                return -1;
        }
        prep_rejects_merge(&ev->rej, &w->rej);
        ev->lines += w->lines;
        if (ev->rej.failed)
            break;
    }
    return prep_events_check(ev, e);
}

int prep_parse_amazon(prep_events *ev, gp_err *e)
{
    amazon_ctx a;
    memset(&a, 0, sizeof a);
    a.ev = ev;
    uint64_t lines;
    prep_line_handler meta = {&a, NULL, prep_events_block_begin, parse_piece, meta_block_end};
    if (prep_read_lines(ev->o->meta, ev->workers, ev->o->block_bytes, &meta, &lines, e) != 0)
        return -1;
    a.phase = 1;
    prep_line_handler reviews = {&a, NULL, prep_events_block_begin, parse_piece, prep_events_block_end};
    return prep_read_lines(ev->o->input, ev->workers, ev->o->block_bytes, &reviews, &lines, e);
}
