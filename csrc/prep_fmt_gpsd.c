/* prep_fmt_gpsd: the official gpsd-rec text files, taken as they are (no protocol).
 *
 * A directory with pretrain_dataset.txt (label 2), ft_train_dataset.txt and ft_eval_dataset.txt
 * (labels 0/1), lines `user_id,item_id,cate_id,is_clicked,seq_value,seq_len` where seq_value is
 * `item__item_id:X#item__cate_id:Y;...`, and the maps item2index.txt / cate2index.txt. Ids follow
 * the official loader (src/data.py): keys through the maps (unknown -> 0), unknown history items
 * skipped, records with fewer than 2 known history items dropped; a record whose target item is
 * unknown cannot be stored and is dropped (counted). Without a map the ids are the ranks of the
 * sorted keys, as the preprocessing scripts number them.
 *
 * Records of a user share pool spans: a history that is a prefix of one already stored for the
 * same user (the positive and negative of a sample, the pretraining sequence) points into it. */
#include <omp.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "prep_internal.h"

static const char *const file_names[3] = {"pretrain_dataset.txt", "ft_train_dataset.txt", "ft_eval_dataset.txt"};
static const uint8_t file_split[3] = {DS_SPLIT_PRETRAIN, DS_SPLIT_TRAIN, DS_SPLIT_TEST};

typedef struct {
    uint32_t user, item, cate;
    uint8_t label, split;
    uint64_t tok; /* first history token (in the worker's, then the global token arrays) */
    uint32_t len;
} line_rec;

typedef struct {
    line_rec *rec;
    uint64_t n_rec, cap_rec;
    uint32_t *tok_item, *tok_cate;
    uint64_t n_tok, cap_tok;
    prep_rejects rej;
    int oom;
    uint64_t lines;
} gworker;

typedef struct {
    const prep_opts *o;
    prep_keymap *users, *items, *cates;
    int fixed_items, fixed_cates; /* maps loaded from files: lookups only */
    int split;
    const char *path;
    gworker *w;
    int workers;
    gworker all; /* merged, in input order */
    prep_rejects rej;
    uint64_t lines;
} gctx;

static int push_tok(gworker *w, uint32_t item, uint32_t cate)
{
    if (w->n_tok == w->cap_tok) {
        uint64_t cap = w->cap_tok ? w->cap_tok * 2 : 4096;
        uint32_t *a = realloc(w->tok_item, cap * sizeof *a);
        if (a)
            w->tok_item = a;
        uint32_t *b = realloc(w->tok_cate, cap * sizeof *b);
        if (b)
            w->tok_cate = b;
        if (!a || !b)
            return -1;
        w->cap_tok = cap;
    }
    w->tok_item[w->n_tok] = item;
    w->tok_cate[w->n_tok++] = cate;
    return 0;
}

static int push_rec(gworker *w, const line_rec *r)
{
    if (w->n_rec == w->cap_rec) {
        uint64_t cap = w->cap_rec ? w->cap_rec * 2 : 1024;
        line_rec *a = realloc(w->rec, cap * sizeof *a);
        if (!a)
            return -1;
        w->rec = a;
        w->cap_rec = cap;
    }
    w->rec[w->n_rec++] = *r;
    return 0;
}

static void gworker_free(gworker *w)
{
    free(w->rec);
    free(w->tok_item);
    free(w->tok_cate);
    memset(w, 0, sizeof *w);
}

static uint32_t key_id(prep_keymap *m, int fixed, const char *s, size_t n)
{
    return fixed ? prep_key_get_str(m, s, n) : prep_key_put_str(m, s, n);
}

#define REJECT(reason, ...)                                                                                  \
    do {                                                                                                     \
        w->n_tok = tok0;                                                                                     \
        if (prep_reject(&w->rej, g->o->on_error, reason, p->path, line_no, line, len, __VA_ARGS__))         \
            return 1;                                                                                        \
        return 0;                                                                                            \
    } while (0)

static int parse_line(gctx *g, gworker *w, const prep_piece *p, uint64_t line_no, const char *line, size_t len)
{
    const uint64_t tok0 = w->n_tok;
    const char *f[7];
    size_t fl[7];
    int nf = 0;
    const char *s = line, *end = line + len;
    while (nf < 7) {
        const char *c = memchr(s, ',', (size_t)(end - s));
        f[nf] = s;
        fl[nf++] = (size_t)((c ? c : end) - s);
        if (!c)
            break;
        s = c + 1;
    }
    if (nf != 6)
        REJECT(PREP_ERR_FIELDS, "%s6 fields expected (user_id,item_id,cate_id,is_clicked,seq_value,seq_len)%s",
               nf > 6 ? "more than " : "fewer than ",
               p->last_unterminated ? " (last line, no newline at the end: is the file truncated?)" : "");
    if (fl[0] == 0 || fl[1] == 0)
        REJECT(PREP_ERR_ID, "empty user or item id");
    int64_t label, seq_len;
    if (prep_parse_i64(f[3], fl[3], &label) != 0 || label < 0 || label > 2)
        REJECT(PREP_ERR_LABEL, "is_clicked \"%.*s\" is not 0, 1 or 2", (int)(fl[3] > 20 ? 20 : fl[3]), f[3]);
    if ((label == 2) != (g->split == DS_SPLIT_PRETRAIN))
        REJECT(PREP_ERR_LABEL, "is_clicked %lld in a %s file", (long long)label,
               g->split == DS_SPLIT_PRETRAIN ? "pretraining (label 2)" : "CTR (labels 0/1)");
    if (prep_parse_i64(f[5], fl[5], &seq_len) != 0 || seq_len < 0)
        REJECT(PREP_ERR_SEQUENCE, "seq_len \"%.*s\" is not a count", (int)(fl[5] > 20 ? 20 : fl[5]), f[5]);
    /* History: ';'-separated `item__item_id:X#item__cate_id:Y`. */
    int64_t n_hist = 0;
    const char *q = f[4], *qe = f[4] + fl[4];
    while (q < qe) {
        const char *sc = memchr(q, ';', (size_t)(qe - q));
        const char *ie = sc ? sc : qe;
        const char *it = NULL, *ct = NULL;
        size_t itn = 0, ctn = 0;
        const char *a = q;
        while (a < ie) {
            const char *h = memchr(a, '#', (size_t)(ie - a));
            const char *ke = h ? h : ie;
            if (ke > a) {
                const char *colon = memchr(a, ':', (size_t)(ke - a));
                if (!colon || memchr(colon + 1, ':', (size_t)(ke - colon - 1)))
                    REJECT(PREP_ERR_SEQUENCE, "history entry %lld: \"%.*s\" is not key:value", (long long)n_hist + 1,
                           (int)(ke - a > 40 ? 40 : ke - a), a);
                size_t kn = (size_t)(colon - a);
                if (kn == 13 && memcmp(a, "item__item_id", 13) == 0)
                    it = colon + 1, itn = (size_t)(ke - colon - 1);
                else if (kn == 13 && memcmp(a, "item__cate_id", 13) == 0)
                    ct = colon + 1, ctn = (size_t)(ke - colon - 1);
            }
            a = h ? h + 1 : ie;
        }
        if (!it || !ct)
            REJECT(PREP_ERR_SEQUENCE, "history entry %lld lacks item__item_id or item__cate_id", (long long)n_hist + 1);
        n_hist++;
        uint32_t ii = key_id(g->items, g->fixed_items, it, itn);
        if (!g->fixed_items && ii == PREP_NO_ID) {
            w->oom = 1;
            return 1;
        }
        if (ii != PREP_NO_ID) {
            uint32_t cc = key_id(g->cates, g->fixed_cates, ct, ctn);
            if (!g->fixed_cates && cc == PREP_NO_ID) {
                w->oom = 1;
                return 1;
            }
            if (push_tok(w, ii, cc) != 0) {
                w->oom = 1;
                return 1;
            }
        }
        q = sc ? sc + 1 : qe;
        if (sc && q == qe)
            REJECT(PREP_ERR_SEQUENCE, "seq_value ends with ';'");
    }
    if (n_hist != seq_len)
        REJECT(PREP_ERR_SEQUENCE, "seq_len %lld but seq_value has %lld items", (long long)seq_len, (long long)n_hist);
    uint32_t item = key_id(g->items, g->fixed_items, f[1], fl[1]);
    if (item == PREP_NO_ID) {
        w->n_tok = tok0;
        if (!g->fixed_items) {
            w->oom = 1;
            return 1;
        }
        prep_reject(&w->rej, PREP_SKIP, PREP_FILT_UNKNOWN, p->path, line_no, line, len, "item %.*s",
                    (int)(fl[1] > 40 ? 40 : fl[1]), f[1]);
        return 0;
    }
    if (w->n_tok - tok0 < 2) {
        uint64_t known = w->n_tok - tok0;
        w->n_tok = tok0;
        prep_reject(&w->rej, PREP_SKIP, PREP_FILT_SHORT, p->path, line_no, line, len, "%llu known history items",
                    (unsigned long long)known);
        return 0;
    }
    if (w->n_tok - tok0 > UINT32_MAX)
        REJECT(PREP_ERR_SEQUENCE, "history longer than 2^32-1");
    line_rec r;
    memset(&r, 0, sizeof r);
    r.cate = key_id(g->cates, g->fixed_cates, f[2], fl[2]);
    r.user = prep_key_put_str(g->users, f[0], fl[0]);
    if ((!g->fixed_cates && r.cate == PREP_NO_ID) || r.user == PREP_NO_ID) {
        w->oom = 1;
        return 1;
    }
    r.item = item;
    r.label = (uint8_t)label;
    r.split = (uint8_t)g->split;
    r.tok = tok0;
    r.len = (uint32_t)(w->n_tok - tok0);
    if (push_rec(w, &r) != 0) {
        w->oom = 1;
        return 1;
    }
    return 0;
}

static void parse_piece(void *ctx, int worker, const prep_piece *p)
{
    gctx *g = ctx;
    gworker *w = &g->w[worker];
    const char *cur = p->begin, *line;
    size_t len;
    uint64_t line_no = p->first_line;
    for (; prep_next_line(&cur, p->end, &line, &len); line_no++) {
        w->lines++;
        if (len == 0) {
            w->rej.blank++;
            continue;
        }
        if (parse_line(g, w, p, line_no, line, len))
            break;
    }
}

static int block_begin(void *ctx, uint64_t n_lines, size_t n_bytes, gp_err *e)
{
    gctx *g = ctx;
    if (prep_keymap_reserve(g->users, n_lines, e) != 0 || prep_keymap_reserve(g->items, n_bytes / 2 + 1, e) != 0 ||
        prep_keymap_reserve(g->cates, n_bytes / 2 + 1, e) != 0)
        return -1;
    for (int t = 0; t < g->workers; t++) {
        g->w[t].n_rec = g->w[t].n_tok = 0;
        prep_rejects_clear(&g->w[t].rej);
    }
    return 0;
}

static int block_end(void *ctx, gp_err *e)
{
    gctx *g = ctx;
    for (int t = 0; t < g->workers; t++) {
        gworker *w = &g->w[t];
        if (w->oom && !g->rej.failed)
            return gp_fail(e, "prep: out of memory while parsing %s", g->path);
        uint64_t base = g->all.n_tok;
        for (uint64_t k = 0; k < w->n_tok; k++)
            if (push_tok(&g->all, w->tok_item[k], w->tok_cate[k]) != 0)
                return gp_fail(e, "prep: out of memory for history tokens");
        for (uint64_t k = 0; k < w->n_rec; k++) {
            line_rec r = w->rec[k];
            r.tok += base;
            if (push_rec(&g->all, &r) != 0)
                return gp_fail(e, "prep: out of memory for records");
        }
        prep_rejects_merge(&g->rej, &w->rej);
        g->lines += w->lines;
        w->lines = 0;
        if (g->rej.failed)
            return gp_fail(e, "%s", g->rej.error);
    }
    return 0;
}

/* item2index / cate2index: `key,index` lines, index >= 1, keys and indices unique. */
static int load_map(prep_keymap *m, const char *path, uint64_t *max_id, gp_err *e)
{
    char *text = NULL;
    size_t n = 0;
    if (gp_read_file(path, &text, &n, e) != 0)
        return -1;
    uint64_t lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += text[i] == '\n';
    if (prep_keymap_reserve(m, lines + 1, e) != 0) {
        free(text);
        return -1;
    }
    uint32_t *ids = calloc(lines + 2, sizeof *ids);
    uint8_t *seen = NULL;
    uint64_t seen_cap = 0;
    const char *cur = text, *line;
    size_t len;
    uint64_t line_no = 0;
    int rc = 0;
    *max_id = 0;
    while (rc == 0 && prep_next_line(&cur, text + n, &line, &len)) {
        line_no++;
        if (len == 0)
            continue;
        const char *comma = memchr(line, ',', len);
        int64_t idx;
        char q[200];
        prep_quote_text(q, sizeof q, line, len);
        if (!comma || prep_parse_i64(comma + 1, (size_t)(line + len - comma - 1), &idx) != 0 || idx < 1 ||
            idx > (int64_t)UINT32_MAX - 1) {
            rc = gp_fail(e, "%s:%llu: expected `key,index` with an index in 1..2^32-2 in \"%s\"", path,
                         (unsigned long long)line_no, q);
            break;
        }
        /* The official loader's vocabulary is (number of keys) + 1, so an index must not exceed
         * the number of keys (bounded here by the line count). */
        if ((uint64_t)idx > lines + 1) {
            rc = gp_fail(e, "%s:%llu: index %lld exceeds the number of keys (%llu lines; the official vocabulary "
                            "is keys + 1) in \"%s\"",
                         path, (unsigned long long)line_no, (long long)idx, (unsigned long long)(lines + 1), q);
            break;
        }
        uint64_t before = prep_keymap_size(m);
        uint32_t id = prep_key_put_str(m, line, (size_t)(comma - line));
        if (id == PREP_NO_ID || id < before) {
            rc = id == PREP_NO_ID ? gp_fail(e, "%s: too many keys", path)
                                  : gp_fail(e, "%s:%llu: key listed twice in \"%s\"", path, (unsigned long long)line_no, q);
            break;
        }
        if ((uint64_t)idx >= seen_cap) {
            uint64_t cap = seen_cap ? seen_cap : 1024;
            while (cap <= (uint64_t)idx)
                cap *= 2;
            uint8_t *s2 = realloc(seen, cap);
            if (!s2) {
                rc = gp_fail(e, "%s: out of memory", path);
                break;
            }
            memset(s2 + seen_cap, 0, cap - seen_cap);
            seen = s2;
            seen_cap = cap;
        }
        if (seen[idx]) {
            rc = gp_fail(e, "%s:%llu: index %lld given twice in \"%s\"", path, (unsigned long long)line_no, (long long)idx, q);
            break;
        }
        seen[idx] = 1;
        ids[id] = (uint32_t)idx;
        if ((uint64_t)idx > *max_id)
            *max_id = (uint64_t)idx;
    }
    if (rc == 0 && *max_id > prep_keymap_size(m))
        rc = gp_fail(e, "%s: the largest index %llu exceeds the number of keys %llu (the official vocabulary is keys + 1)",
                     path, (unsigned long long)*max_id, (unsigned long long)prep_keymap_size(m));
    if (rc == 0)
        rc = prep_keymap_set_final(m, ids, *max_id, e);
    free(ids);
    free(seen);
    free(text);
    return rc;
}

static char *join(const char *dir, const char *name) { return gp_path_join(dir, name); }

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* Stores the user's histories: longest first, each pointing into an earlier span of the same user
 * when it is a prefix of it (the last few spans are tried, which covers every official layout). */
#define SHARE_TRIES 8

int prep_build_gpsd(const prep_opts *o, prep_result *res, prep_report *rep, gp_err *e)
{
    gctx g;
    memset(&g, 0, sizeof g);
    g.o = o;
    g.workers = o->threads > 0 ? o->threads : omp_get_max_threads();
    g.w = gp_xcalloc((size_t)g.workers, sizeof *g.w);
    g.users = prep_keymap_new(PREP_KEY_STR, "user");
    g.items = prep_keymap_new(PREP_KEY_STR, "item");
    g.cates = prep_keymap_new(PREP_KEY_STR, "category");
    int rc = -1;
    uint64_t max_item = 0, max_cate = 0;
    uint64_t *start = NULL, *order = NULL, *span = NULL;
    uint32_t *tok_item = NULL, *tok_cate = NULL, *item_cate = NULL, *user_len = NULL;
    ds_record *records = NULL;
    double t0 = gp_now();

    char *im = o->item_map ? gp_xstrdup(o->item_map) : join(o->input, "item2index.txt");
    char *cm = o->cate_map ? gp_xstrdup(o->cate_map) : join(o->input, "cate2index.txt");
    if (o->item_map || exists(im)) {
        if (load_map(g.items, im, &max_item, e) != 0)
            goto out;
        g.fixed_items = 1;
    }
    if (o->cate_map || exists(cm)) {
        if (load_map(g.cates, cm, &max_cate, e) != 0)
            goto out;
        g.fixed_cates = 1;
    }
    int found = 0;
    for (int f = 0; f < 3; f++) {
        char *path = join(o->input, file_names[f]);
        if (!exists(path)) {
            free(path);
            continue;
        }
        found++;
        g.split = file_split[f];
        g.path = path;
        prep_line_handler h = {&g, NULL, block_begin, parse_piece, block_end};
        uint64_t lines;
        int r = prep_read_lines(path, g.workers, o->block_bytes, &h, &lines, e);
        free(path);
        if (r != 0)
            goto out;
    }
    if (!found) {
        gp_fail(e, "%s: none of pretrain_dataset.txt, ft_train_dataset.txt, ft_eval_dataset.txt is there", o->input);
        goto out;
    }
    rep->lines = g.lines;
    prep_stats_rejects(rep, &g.rej);
    rep->seconds_read = gp_now() - t0;
    t0 = gp_now();
    if (g.all.n_rec == 0) {
        gp_fail(e, "%s: no usable records", o->input);
        goto out;
    }
    if (prep_keymap_finalize(g.users, NULL, e) != 0)
        goto out;
    if (!g.fixed_items) {
        if (prep_keymap_finalize(g.items, NULL, e) != 0)
            goto out;
        max_item = prep_keymap_n_final(g.items);
    }
    if (!g.fixed_cates) {
        if (prep_keymap_finalize(g.cates, NULL, e) != 0)
            goto out;
        max_cate = prep_keymap_n_final(g.cates);
    }
    const uint32_t *uf = prep_keymap_final(g.users), *itf = prep_keymap_final(g.items), *cf = prep_keymap_final(g.cates);
#define CATE_OF(prov) ((prov) == PREP_NO_ID ? 0u : cf[prov])
    const uint64_t n_users = prep_keymap_n_final(g.users), n_rec = g.all.n_rec;
    /* Records grouped by user, input order kept. */
    start = gp_xcalloc(n_users + 1, sizeof *start);
    order = gp_xmalloc(n_rec * sizeof *order);
    span = gp_xmalloc(n_rec * sizeof *span);
    for (uint64_t r = 0; r < n_rec; r++)
        start[uf[g.all.rec[r].user]]++; /* final ids are 1-based: start[u + 1] counts user u */
    for (uint64_t u = 0; u < n_users; u++)
        start[u + 1] += start[u];
    {
        uint64_t *pos = gp_xmalloc((n_users + 1) * sizeof *pos);
        memcpy(pos, start, (n_users + 1) * sizeof *pos);
        for (uint64_t r = 0; r < n_rec; r++)
            order[pos[uf[g.all.rec[r].user] - 1]++] = r;
        free(pos);
    }

    tok_item = gp_xmalloc((g.all.n_tok ? g.all.n_tok : 1) * sizeof *tok_item);
    tok_cate = gp_xmalloc((g.all.n_tok ? g.all.n_tok : 1) * sizeof *tok_cate);
    user_len = gp_xcalloc(n_users ? n_users : 1, sizeof *user_len);
    uint64_t n_tok = 0;
    for (uint64_t u = 0; u < n_users; u++) {
        uint64_t a = start[u], b = start[u + 1];
        /* longest history first (stable), so shorter ones can point into it */
        for (uint64_t i = a + 1; i < b; i++) {
            uint64_t x = order[i], j = i;
            while (j > a && g.all.rec[order[j - 1]].len < g.all.rec[x].len) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = x;
        }
        uint64_t first_span = n_tok;
        for (uint64_t i = a; i < b; i++) {
            const line_rec *r = &g.all.rec[order[i]];
            int shared = 0;
            for (uint64_t j = i; j > a && j + SHARE_TRIES > i && !shared; j--) {
                uint64_t off = span[order[j - 1]];
                const line_rec *o2 = &g.all.rec[order[j - 1]];
                if (o2->len < r->len)
                    continue;
                uint32_t k = 0;
                while (k < r->len && tok_item[off + k] == itf[g.all.tok_item[r->tok + k]] &&
                       tok_cate[off + k] == CATE_OF(g.all.tok_cate[r->tok + k]))
                    k++;
                if (k == r->len) {
                    span[order[i]] = off;
                    shared = 1;
                }
            }
            if (shared)
                continue;
            span[order[i]] = n_tok;
            for (uint32_t k = 0; k < r->len; k++) {
                tok_item[n_tok] = itf[g.all.tok_item[r->tok + k]];
                tok_cate[n_tok++] = CATE_OF(g.all.tok_cate[r->tok + k]);
            }
        }
        user_len[u] = (uint32_t)(n_tok - first_span > UINT32_MAX ? UINT32_MAX : n_tok - first_span);
    }
    records = gp_alloc_or_fail(n_rec * sizeof *records, "prep: records", e);
    item_cate = gp_alloc_or_fail((max_item + 1) * sizeof *item_cate, "prep: item categories", e);
    if (!records || !item_cate)
        goto out;
    uint64_t k = 0;
    for (uint64_t u = 0; u < n_users; u++) {
        /* back to input order inside the user */
        uint64_t a = start[u], b = start[u + 1];
        for (uint64_t i = a + 1; i < b; i++) {
            uint64_t x = order[i], j = i;
            while (j > a && order[j - 1] > x) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = x;
        }
        for (uint64_t i = a; i < b; i++) {
            const line_rec *r = &g.all.rec[order[i]];
            ds_record *d = &records[k++];
            memset(d, 0, sizeof *d);
            d->offset = span[order[i]];
            d->hist_len = r->len;
            d->user = (uint32_t)u;
            d->item = itf[r->item];
            d->cate = CATE_OF(r->cate);
            d->label = r->label;
            d->split = r->split;
        }
    }
    /* An item's category: the first record that has it as target, else its first history token. */
    for (uint64_t r = 0; r < n_rec; r++) {
        const line_rec *x = &g.all.rec[r];
        uint32_t it = itf[x->item];
        if (!item_cate[it])
            item_cate[it] = CATE_OF(x->cate);
    }
    for (uint64_t t = 0; t < n_tok; t++)
        if (!item_cate[tok_item[t]])
            item_cate[tok_item[t]] = tok_cate[t];
    item_cate[0] = 0;
#undef CATE_OF
    rep->seconds_group = gp_now() - t0;

    res->item_cate = item_cate;
    res->tok_item = gp_alloc_or_fail((n_tok ? n_tok : 1) * sizeof *res->tok_item, "prep: tokens", e);
    res->tok_cate = gp_alloc_or_fail((n_tok ? n_tok : 1) * sizeof *res->tok_cate, "prep: tokens", e);
    if (!res->tok_item || !res->tok_cate)
        goto out;
    memcpy(res->tok_item, tok_item, n_tok * sizeof *tok_item);
    memcpy(res->tok_cate, tok_cate, n_tok * sizeof *tok_cate);
    res->records = records;
    item_cate = NULL;
    records = NULL;
    ds_contents *c = &res->contents;
    c->n_items = max_item + 1;
    c->n_cates = max_cate + 1;
    c->n_users = n_users;
    c->n_tokens = n_tok;
    c->n_records = n_rec;
    c->item_cate = res->item_cate;
    c->tok_item = res->tok_item;
    c->tok_cate = res->tok_cate;
    c->records = res->records;
    c->max_history = 0;
    for (uint64_t r = 0; r < n_rec; r++)
        if (res->records[r].hist_len > c->max_history)
            c->max_history = res->records[r].hist_len;
    res->items = g.items;
    res->cates = g.cates;
    g.items = g.cates = NULL;
    rep->rows = n_rec;
    rep->users = n_users;
    rep->items = max_item;
    rep->cates = max_cate;
    prep_stats_fill(rep, res, NULL, 0);
    rc = 0;
out:
    free(im);
    free(cm);
    free(start);
    free(order);
    free(span);
    free(tok_item);
    free(tok_cate);
    free(user_len);
    gp_free_aligned(item_cate);
    gp_free_aligned(records);
    for (int t = 0; t < g.workers; t++)
        gworker_free(&g.w[t]);
    free(g.w);
    gworker_free(&g.all);
    prep_keymap_free(g.users);
    prep_keymap_free(g.items);
    prep_keymap_free(g.cates);
    return rc;
}
