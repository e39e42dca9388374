/* prep_fmt_seq: sequence files, one user per line `user item item ...` (whitespace-separated), as
 * the S3-Rec / TiCoSeRec releases of Amazon Beauty are; an optional time file of the same shape
 * (`user t1 t2 ...`, line k and token j giving the time of the same interaction) and an optional
 * JSON object mapping items to attribute lists (category = the first attribute, or all joined).
 *
 * Without a time file an interaction's time is its line number, so the protocol's split by last
 * time puts the last lines' users in the test split and order within a line is kept. The files
 * are read whole; lines are parsed in blocks by every worker. */
#include <stdlib.h>

#include "json.h"
#include "prep_internal.h"

typedef struct {
    prep_events *ev;
    const char *seq, *seq_end, *tim, *tim_end;
    const char **line_seq, **line_tim; /* per block: start of each line */
    uint64_t block_first;              /* 0-based index of the block's first line */
    uint64_t block_lines;
} seq_ctx;

#define REJECT(reason, path, ln, text, tlen, ...)                                                          \
    do {                                                                                                   \
        if (prep_reject(&w->rej, ev->o->on_error, reason, path, ln, text, tlen, __VA_ARGS__))             \
            return 1;                                                                                      \
        return 0;                                                                                          \
    } while (0)

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

static int next_token(const char **p, const char *end, const char **tok, size_t *n)
{
    const char *s = *p;
    while (s < end && is_space(*s))
        s++;
    if (s >= end)
        return 0;
    const char *t = s;
    while (t < end && !is_space(*t))
        t++;
    *tok = s;
    *n = (size_t)(t - s);
    *p = t;
    return 1;
}

static uint32_t put_key(prep_keymap *m, const char *s, size_t n, int *bad, int *range)
{
    *bad = *range = 0;
    if (prep_keymap_kind(m) == PREP_KEY_STR)
        return prep_key_put_str(m, s, n);
    int64_t v;
    int r = prep_parse_i64(s, n, &v);
    if (r == -1) {
        *bad = 1;
        return PREP_NO_ID;
    }
    if (r == -2 || v < 0 || v > PREP_MAX_INT_KEY) {
        *range = 1;
        return PREP_NO_ID;
    }
    return prep_key_put_int(m, v);
}

static const char *line_end(const char *p, const char *end)
{
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    return nl ? nl : end;
}

/* One line (0-based index k); returns 1 to stop. */
static int parse_seq_line(seq_ctx *c, prep_worker *w, uint64_t k)
{
    prep_events *ev = c->ev;
    const prep_opts *o = ev->o;
    uint64_t line_no = k + 1;
    const char *s = c->line_seq[k - c->block_first], *se = line_end(s, c->seq_end);
    const char *t = c->tim ? c->line_tim[k - c->block_first] : NULL, *te = t ? line_end(t, c->tim_end) : NULL;
    size_t slen = (size_t)(se - s), tlen = t ? (size_t)(te - t) : 0;
    const char *tok, *ttok = NULL;
    size_t n, tn = 0;
    const char *sp = s, *tp = t;
    if (!next_token(&sp, se, &tok, &n)) {
        if (t && next_token(&tp, te, &ttok, &tn))
            REJECT(PREP_ERR_SEQUENCE, o->times, line_no, t, tlen, "the time line has tokens but sequence line %llu is empty",
                   (unsigned long long)line_no);
        w->rej.blank++;
        return 0;
    }
    const char *user = tok;
    size_t user_n = n;
    if (t) {
        if (!next_token(&tp, te, &ttok, &tn))
            REJECT(PREP_ERR_SEQUENCE, o->times, line_no, t, tlen, "empty time line for user %.*s", (int)(n > 40 ? 40 : n), user);
        if (tn != n || memcmp(ttok, user, n) != 0)
            REJECT(PREP_ERR_SEQUENCE, o->times, line_no, t, tlen, "the time line is for user \"%.*s\", the sequence line for \"%.*s\"",
                   (int)(tn > 40 ? 40 : tn), ttok, (int)(n > 40 ? 40 : n), user);
    }
    /* Check everything before adding keys: count tokens and times first. */
    uint64_t n_items = 0;
    {
        const char *q = sp;
        const char *x;
        size_t xn;
        while (next_token(&q, se, &x, &xn)) {
            if (prep_keymap_kind(ev->items) == PREP_KEY_INT) {
                int64_t v;
                int r = prep_parse_i64(x, xn, &v);
                if (r == -1)
                    REJECT(PREP_ERR_ID, o->input, line_no, s, slen, "item id \"%.*s\" is not an integer", (int)(xn > 40 ? 40 : xn), x);
                if (r == -2 || v < 0 || v > PREP_MAX_INT_KEY)
                    REJECT(PREP_ERR_ID_RANGE, o->input, line_no, s, slen, "item id %.*s outside 0..2^63-2", (int)(xn > 40 ? 40 : xn), x);
            }
            n_items++;
        }
    }
    if (prep_keymap_kind(ev->users) == PREP_KEY_INT) {
        int64_t v;
        int r = prep_parse_i64(user, user_n, &v);
        if (r == -1)
            REJECT(PREP_ERR_ID, o->input, line_no, s, slen, "user id \"%.*s\" is not an integer", (int)(user_n > 40 ? 40 : user_n), user);
        if (r == -2 || v < 0 || v > PREP_MAX_INT_KEY)
            REJECT(PREP_ERR_ID_RANGE, o->input, line_no, s, slen, "user id %.*s outside 0..2^63-2", (int)(user_n > 40 ? 40 : user_n), user);
    }
    if (t) {
        const char *q = tp, *x;
        size_t xn;
        uint64_t k2 = 0;
        while (next_token(&q, te, &x, &xn)) {
            int64_t v;
            int r = prep_parse_i64(x, xn, &v);
            if (r == -1)
                REJECT(PREP_ERR_TIME, o->times, line_no, t, tlen, "timestamp \"%.*s\" (token %llu) is not an integer",
                       (int)(xn > 40 ? 40 : xn), x, (unsigned long long)k2 + 2);
            if (r == -2)
                REJECT(PREP_ERR_TIME_RANGE, o->times, line_no, t, tlen, "timestamp %.*s (token %llu) does not fit 64 bits",
                       (int)(xn > 40 ? 40 : xn), x, (unsigned long long)k2 + 2);
            k2++;
        }
        if (k2 != n_items)
            REJECT(PREP_ERR_SEQUENCE, o->times, line_no, t, tlen, "%llu timestamps for %llu items on the same line of %s",
                   (unsigned long long)k2, (unsigned long long)n_items, o->input);
    }
    if (n_items == 0) {
        prep_reject(&w->rej, PREP_SKIP, PREP_FILT_SHORT, o->input, line_no, s, slen, "a user without items");
        return 0;
    }
    int bad, range;
    uint32_t uid = put_key(ev->users, user, user_n, &bad, &range);
    if (uid == PREP_NO_ID) {
        w->oom = 1;
        return 1;
    }
    const char *x, *y = NULL;
    size_t xn, yn = 0;
    while (next_token(&sp, se, &x, &xn)) {
        int64_t time = (int64_t)line_no;
        if (t) {
            next_token(&tp, te, &y, &yn);
            prep_parse_i64(y, yn, &time);
        }
        if (time < o->time_min || time > o->time_max) {
            prep_reject(&w->rej, PREP_SKIP, PREP_FILT_TIME, o->input, line_no, s, slen, "timestamp %lld", (long long)time);
            continue;
        }
        uint32_t it = put_key(ev->items, x, xn, &bad, &range);
        if (it == PREP_NO_ID || prep_rows_push(&w->rows, uid, it, PREP_NO_ID, time) != 0) {
            w->oom = 1;
            return 1;
        }
    }
    return 0;
}

/* Attributes: {"item": [attr, ...], ...}; the category key is the first attribute (or all, joined
 * by '|'), as text (numbers written as integers). */
static int parse_attributes(prep_events *ev, gp_err *e)
{
    const prep_opts *o = ev->o;
    char *text = NULL;
    size_t len = 0;
    if (gp_read_file(o->meta, &text, &len, e) != 0)
        return -1;
    json_doc doc;
    if (json_parse(&doc, text, len, o->meta, e) != 0) {
        free(text);
        return -1;
    }
    free(text);
    int rc = 0;
    const json_value *root = doc.root;
    if (!root || root->type != JSON_OBJECT) {
        json_free(&doc);
        return gp_fail(e, "%s: bad JSON: expected one object {\"item\": [attribute, ...], ...}", o->meta);
    }
    if (prep_keymap_reserve(ev->cates, (uint64_t)root->n, e) != 0) {
        json_free(&doc);
        return -1;
    }
    prep_worker *w = &ev->w[0];
    for (int i = 0; i < root->n && rc == 0; i++) {
        const char *key = root->keys[i];
        const json_value *v = &root->items[i];
        uint32_t item;
        if (prep_keymap_kind(ev->items) == PREP_KEY_INT) {
            int64_t k;
            item = prep_parse_i64(key, strlen(key), &k) == 0 ? prep_key_get_int(ev->items, k) : PREP_NO_ID;
        } else {
            item = prep_key_get_str(ev->items, key, strlen(key));
        }
        if (v->type != JSON_ARRAY) {
            if (prep_reject(&w->rej, o->on_error, PREP_ERR_FIELD, o->meta, 0, key, strlen(key),
                            "the attributes of item \"%.40s\" are not a list", key))
                rc = -1;
            continue;
        }
        if (item == PREP_NO_ID)
            continue; /* an item no sequence has */
        char cat[4096];
        size_t cl = 0;
        int bad = 0;
        for (int a = 0; a < v->n && !bad; a++) {
            const json_value *x = &v->items[a];
            char one[64];
            const char *s = NULL;
            size_t sn = 0;
            int64_t iv;
            if (x->type == JSON_NUMBER && json_int(x, &iv) == 0) {
                sn = (size_t)snprintf(one, sizeof one, "%lld", (long long)iv);
                s = one;
            } else if (x->type == JSON_STRING) {
                s = x->string;
                sn = x->string_len;
            } else {
                bad = 1;
                break;
            }
            if (cl + sn + 1 >= sizeof cat) {
                bad = 1;
                break;
            }
            if (cl)
                cat[cl++] = '|';
            memcpy(cat + cl, s, sn);
            cl += sn;
            if (o->genre == PREP_GENRE_FIRST)
                break;
        }
        if (bad) {
            if (prep_reject(&w->rej, o->on_error, PREP_ERR_FIELD, o->meta, 0, key, strlen(key),
                            "an attribute of item \"%.40s\" is not an integer or a string (or the list is too long)", key))
                rc = -1;
            continue;
        }
        uint32_t cate = PREP_META_NONE;
        if (cl && (cate = prep_key_put_str(ev->cates, cat, cl)) == PREP_NO_ID) {
            rc = gp_fail(e, "prep: out of memory for categories");
            break;
        }
        if (item < ev->meta_cate_n && ev->meta_cate[item] != PREP_NO_ID) {
            prep_reject(&w->rej, PREP_SKIP, PREP_FILT_DUP_META, o->meta, 0, key, strlen(key), "item listed twice");
            continue;
        }
        if (prep_events_set_meta(ev, item, cate, e) != 0)
            rc = -1;
    }
    prep_rejects_merge(&ev->rej, &w->rej);
    prep_rejects_clear(&w->rej);
    json_free(&doc);
    if (rc != 0 && ev->rej.failed)
        return gp_fail(e, "%s", ev->rej.error);
    return rc;
}

int prep_parse_seq(prep_events *ev, gp_err *e)
{
    const prep_opts *o = ev->o;
    seq_ctx c;
    memset(&c, 0, sizeof c);
    c.ev = ev;
    char *seq = NULL, *tim = NULL;
    size_t seq_n = 0, tim_n = 0;
    if (gp_read_file(o->input, &seq, &seq_n, e) != 0)
        return -1;
    if (seq_n == 0) {
        free(seq);
        return gp_fail(e, "%s: empty input (no lines)", o->input);
    }
    if (o->times && gp_read_file(o->times, &tim, &tim_n, e) != 0) {
        free(seq);
        return -1;
    }
    c.seq = seq, c.seq_end = seq + seq_n;
    c.tim = tim, c.tim_end = tim ? tim + tim_n : NULL;
    int rc = 0;
    const char *sp = seq, *tp = tim;
    uint64_t k = 0;
    uint64_t max_block_lines = 1 << 16;
    c.line_seq = gp_xmalloc(max_block_lines * sizeof *c.line_seq);
    c.line_tim = gp_xmalloc(max_block_lines * sizeof *c.line_tim);
    while (rc == 0 && sp < c.seq_end) {
        /* A block: up to max_block_lines lines and about block_bytes of text. */
        c.block_first = k;
        c.block_lines = 0;
        const char *block_start = sp;
        while (sp < c.seq_end && c.block_lines < max_block_lines && (size_t)(sp - block_start) < o->block_bytes) {
            if (tim && tp >= c.tim_end) {
                rc = gp_fail(e, "%s:%llu: bad sequence: the time file %s ends before this line (it has %llu lines)", o->input,
                             (unsigned long long)(k + 1), o->times, (unsigned long long)k);
                break;
            }
            c.line_seq[c.block_lines] = sp;
            const char *nl = memchr(sp, '\n', (size_t)(c.seq_end - sp));
            sp = nl ? nl + 1 : c.seq_end;
            if (tim) {
                c.line_tim[c.block_lines] = tp;
                nl = memchr(tp, '\n', (size_t)(c.tim_end - tp));
                tp = nl ? nl + 1 : c.tim_end;
            }
            c.block_lines++;
            k++;
        }
        if (rc != 0)
            break;
        if ((rc = prep_events_block_begin(&c, (uint64_t)(sp - block_start) / 2 + c.block_lines, 0, e)) != 0)
            break;
        int workers = ev->workers;
#pragma omp parallel for num_threads(workers) schedule(static, 1)
        for (int t = 0; t < workers; t++) {
            prep_worker *w = &ev->w[t];
            uint64_t lo = c.block_lines * (uint64_t)t / (uint64_t)workers;
            uint64_t hi = c.block_lines * (uint64_t)(t + 1) / (uint64_t)workers;
            for (uint64_t i = lo; i < hi; i++) {
                w->lines++;
                if (parse_seq_line(&c, w, c.block_first + i))
                    break;
            }
        }
        rc = prep_events_block_end(&c, e);
    }
    if (rc == 0 && tim && tp < c.tim_end) {
        /* Lines left in the time file must be blank. */
        for (const char *q = tp; q < c.tim_end; q++)
            if (!is_space(*q) && *q != '\n') {
                rc = gp_fail(e, "%s: bad sequence: the time file has more lines than %s (%llu)", o->times, o->input,
                             (unsigned long long)k);
                break;
            }
    }
    free(c.line_seq);
    free(c.line_tim);
    free(seq);
    free(tim);
    if (rc == 0 && o->meta)
        rc = parse_attributes(ev, e);
    return rc;
}
