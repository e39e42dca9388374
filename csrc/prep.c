/* prep: the pipeline from raw logs to the dataset (see include/prep.h).
 *
 * Event formats: parse (prep_fmt_*.c, every block on every worker) -> rows with provisional ids
 * -> final ids (ranks of sorted raw keys) -> item categories (metadata, or first seen) -> users'
 * time-ordered sequences (prep_group.c) -> protocol_build -> dataset contents. The gpsd text
 * format carries its own records (prep_fmt_gpsd.c). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "prep_internal.h"

static const char *const format_names[PREP_N_FORMATS] = {"taobao", "amazon", "movielens", "csv", "seq", "gpsd"};

const char *prep_format_name(int f) { return f >= 0 && f < PREP_N_FORMATS ? format_names[f] : "?"; }

int prep_format_parse(const char *name)
{
    for (int f = 0; f < PREP_N_FORMATS; f++)
        if (strcmp(name, format_names[f]) == 0)
            return f;
    if (strcmp(name, "tsv") == 0)
        return PREP_FMT_CSV;
    return -1;
}

prep_opts prep_default_opts(int format)
{
    prep_opts o;
    memset(&o, 0, sizeof o);
    o.format = format;
    o.protocol = protocol_default_opts();
    o.protocol.max_history = 200; /* MAX_LEN_ITEM of every official script */
    o.protocol.min_user_len = format == PREP_FMT_TAOBAO ? 10 : 4;
    o.min_rating = NAN;
    o.time_min = INT64_MIN;
    o.time_max = INT64_MAX;
    o.on_error = PREP_ABORT;
    o.block_bytes = (size_t)32 << 20;
    return o;
}

int prep_validate_opts(const prep_opts *o, gp_err *e)
{
    if (o->format < 0 || o->format >= PREP_N_FORMATS)
        return gp_fail(e, "prep: unknown format %d", o->format);
    if (!o->input || !o->input[0])
        return gp_fail(e, "prep: no input given (--input FILE)");
    if (o->format == PREP_FMT_AMAZON && (!o->meta || !o->meta[0]))
        return gp_fail(e, "prep: the amazon format needs the metadata file (--meta meta_*.json): the official item and "
                          "category vocabularies come from it");
    if (o->format == PREP_FMT_CSV && (!o->col_user || !o->col_item || !o->col_time))
        return gp_fail(e, "prep: the csv format needs the user, item and time columns (--user-col, --item-col, --time-col)");
    if (o->delim && (strlen(o->delim) < 1 || strlen(o->delim) > 2))
        return gp_fail(e, "prep: the field separator must be 1 or 2 characters, got \"%s\"", o->delim);
    if (o->delim && (strchr(o->delim, '\n') || strchr(o->delim, '"')))
        return gp_fail(e, "prep: the field separator may not contain a newline or a quote");
    if (o->time_min > o->time_max)
        return gp_fail(e, "prep: time range is empty (min %lld > max %lld)", (long long)o->time_min, (long long)o->time_max);
    if (o->on_error != PREP_ABORT && o->on_error != PREP_SKIP)
        return gp_fail(e, "prep: on_error must be abort or skip");
    if (o->threads < 0)
        return gp_fail(e, "prep: threads must be >= 0");
    if (o->format == PREP_FMT_GPSD) {
        struct stat st;
        if (stat(o->input, &st) != 0 || !S_ISDIR(st.st_mode))
            return gp_fail(e, "prep: the gpsd format reads a directory of the official files; %s is not a directory",
                           o->input);
        return 0;
    }
    return protocol_validate_opts(&o->protocol, e);
}

/* ---------------------------------------------------------------- block callbacks */

int prep_events_block_begin(void *ctx, uint64_t n_lines, size_t n_bytes, gp_err *e)
{
    prep_events *ev = *(prep_events **)ctx;
    (void)n_bytes;
    uint64_t extra = ev->key_reserve ? ev->key_reserve : n_lines;
    ev->key_reserve = 0;
    if (prep_keymap_reserve(ev->users, extra, e) != 0 || prep_keymap_reserve(ev->items, extra, e) != 0 ||
        prep_keymap_reserve(ev->cates, extra, e) != 0)
        return -1;
    for (int t = 0; t < ev->workers; t++) {
        ev->w[t].rows.n = 0;
        prep_rejects_clear(&ev->w[t].rej);
        ev->w[t].oom = 0;
        ev->w[t].lines = 0;
    }
    return 0;
}

int prep_events_block_end(void *ctx, gp_err *e)
{
    prep_events *ev = *(prep_events **)ctx;
    for (int t = 0; t < ev->workers; t++) {
        prep_worker *w = &ev->w[t];
        if (w->oom && !ev->rej.failed)
            return gp_fail(e, "prep: out of memory (or more than 2^32 distinct keys) while parsing %s", ev->o->input);
        if (prep_rows_append(&ev->rows, &w->rows, e) != 0)
            return -1;
        prep_rejects_merge(&ev->rej, &w->rej);
        ev->lines += w->lines;
        if (ev->rej.failed)
            break;
    }
    return prep_events_check(ev, e);
}

int prep_events_check(prep_events *ev, gp_err *e)
{
    if (ev->rej.failed)
        return gp_fail(e, "%s", ev->rej.error);
    return 0;
}

int prep_events_set_meta(prep_events *ev, uint32_t item, uint32_t cate, gp_err *e)
{
    if (item >= ev->meta_cate_cap) {
        uint64_t cap = ev->meta_cate_cap ? ev->meta_cate_cap : 1024;
        while (cap <= item)
            cap *= 2;
        uint32_t *m = realloc(ev->meta_cate, cap * sizeof *m);
        if (!m)
            return gp_fail(e, "prep: out of memory for item categories");
        for (uint64_t i = ev->meta_cate_cap; i < cap; i++)
            m[i] = PREP_NO_ID;
        ev->meta_cate = m;
        ev->meta_cate_cap = cap;
    }
    ev->meta_cate[item] = cate;
    if (item >= ev->meta_cate_n)
        ev->meta_cate_n = (uint64_t)item + 1;
    return 0;
}

/* ---------------------------------------------------------------- event pipeline */

static void events_free(prep_events *ev)
{
    for (int t = 0; ev->w && t < ev->workers; t++)
        prep_rows_free(&ev->w[t].rows);
    free(ev->w);
    prep_rows_free(&ev->rows);
    free(ev->meta_cate);
    prep_keymap_free(ev->users);
    if (ev->items)
        prep_keymap_free(ev->items);
    if (ev->cates)
        prep_keymap_free(ev->cates);
}

static int key_kind(const prep_opts *o, int int_default)
{
    if (o->ids == PREP_IDS_INT)
        return PREP_KEY_INT;
    if (o->ids == PREP_IDS_STR)
        return PREP_KEY_STR;
    return int_default ? PREP_KEY_INT : PREP_KEY_STR;
}

static int parse_events(prep_events *ev, gp_err *e)
{
    const prep_opts *o = ev->o;
    switch (o->format) {
    case PREP_FMT_TAOBAO:
        return prep_parse_delimited(ev, e);
    case PREP_FMT_MOVIELENS:
        if (o->meta && prep_parse_movielens_items(ev, e) != 0)
            return -1;
        return prep_parse_delimited(ev, e);
    case PREP_FMT_CSV:
        if (!o->col_cate && o->meta && prep_parse_item_cate_csv(ev, e) != 0)
            return -1;
        return prep_parse_delimited(ev, e);
    case PREP_FMT_AMAZON:
        return prep_parse_amazon(ev, e);
    case PREP_FMT_SEQ:
        return prep_parse_seq(ev, e);
    }
    return gp_fail(e, "prep: format %s has no event parser", prep_format_name(o->format));
}

static int build_events(const prep_opts *o, int workers, prep_result *res, prep_report *rep, gp_err *e)
{
    prep_events ev;
    memset(&ev, 0, sizeof ev);
    ev.o = o;
    ev.workers = workers;
    ev.w = gp_xcalloc((size_t)workers, sizeof *ev.w);
    int f = o->format;
    int ints = f == PREP_FMT_TAOBAO || f == PREP_FMT_MOVIELENS;
    ev.users = prep_keymap_new(f == PREP_FMT_AMAZON ? PREP_KEY_STR : key_kind(o, ints), "user");
    ev.items = prep_keymap_new(f == PREP_FMT_AMAZON ? PREP_KEY_STR : key_kind(o, ints), "item");
    ev.cates = prep_keymap_new(f == PREP_FMT_TAOBAO ? PREP_KEY_INT : (f == PREP_FMT_CSV ? key_kind(o, 0) : PREP_KEY_STR),
                               "category");
    ev.row_cates = f == PREP_FMT_TAOBAO || (f == PREP_FMT_CSV && o->col_cate);
    int rc = -1;
    uint8_t *used_item = NULL, *used_cate = NULL;
    uint32_t *item_cate = NULL;
    prep_pool pool;
    memset(&pool, 0, sizeof pool);

    double t0 = gp_now();
    int parsed = parse_events(&ev, e);
    rep->lines = ev.lines;
    prep_stats_rejects(rep, &ev.rej);
    if (parsed != 0)
        goto out;
    rep->seconds_read = gp_now() - t0;
    rep->rows = ev.rows.n;
    if (ev.rows.n == 0) {
        gp_fail(e, "%s: no usable interactions in %llu lines (see the rejected-row counts with --on-error skip)", o->input,
                (unsigned long long)ev.lines);
        goto out;
    }

    /* Final ids: users and items are those with a row; categories those of used items or rows. */
    t0 = gp_now();
    uint64_t n_item_prov = prep_keymap_size(ev.items), n_cate_prov = prep_keymap_size(ev.cates);
    used_item = gp_xcalloc(n_item_prov ? n_item_prov : 1, 1);
    used_cate = gp_xcalloc(n_cate_prov ? n_cate_prov : 1, 1);
    for (uint64_t r = 0; r < ev.rows.n; r++)
        used_item[ev.rows.item[r]] = 1;
    if (ev.row_cates) {
        for (uint64_t r = 0; r < ev.rows.n; r++)
            used_cate[ev.rows.cate[r]] = 1;
    } else {
        for (uint64_t i = 0; i < ev.meta_cate_n && i < n_item_prov; i++)
            if (used_item[i] && ev.meta_cate[i] < PREP_META_NONE)
                used_cate[ev.meta_cate[i]] = 1;
    }
    if (prep_keymap_finalize(ev.users, NULL, e) != 0 || prep_keymap_finalize(ev.items, used_item, e) != 0 ||
        prep_keymap_finalize(ev.cates, used_cate, e) != 0)
        goto out;
    const uint32_t *item_final = prep_keymap_final(ev.items), *cate_final = prep_keymap_final(ev.cates);
    uint64_t n_items = prep_keymap_n_final(ev.items) + 1, n_cates = prep_keymap_n_final(ev.cates) + 1;
    if (n_items - 1 > UINT32_MAX - 1 || n_cates - 1 > UINT32_MAX - 1) {
        gp_fail(e, "prep: more than 2^32-2 items or categories");
        goto out;
    }
    item_cate = gp_alloc_or_fail(n_items * sizeof *item_cate, "prep: item categories", e);
    if (!item_cate)
        goto out;
    if (ev.row_cates) {
        if (prep_first_seen_cates(&ev.rows, item_final, cate_final, n_items, workers, item_cate, e) != 0)
            goto out;
    } else {
        for (uint64_t i = 0; i < n_item_prov; i++)
            if (item_final[i] && i < ev.meta_cate_n && ev.meta_cate[i] < PREP_META_NONE)
                item_cate[item_final[i]] = cate_final[ev.meta_cate[i]];
    }
    free(used_item);
    free(used_cate);
    used_item = used_cate = NULL;

    uint64_t n_users = prep_keymap_n_final(ev.users);
    if (prep_group(&ev.rows, prep_keymap_final(ev.users), n_users, item_final, cate_final, ev.row_cates, item_cate,
                   workers, &pool, e) != 0)
        goto out;
    prep_rows_free(&ev.rows);
    for (int t = 0; t < workers; t++)
        prep_rows_free(&ev.w[t].rows);
    rep->seconds_group = gp_now() - t0;
    rep->users = n_users;
    rep->items = n_items - 1;
    rep->cates = n_cates - 1;
    rep->time_first = pool.time_first;
    rep->time_last = pool.time_last;

    t0 = gp_now();
    protocol_input in = {pool.n_tokens, pool.tok_item, pool.tok_cate, n_users, pool.user_offset,
                         pool.user_len, pool.user_last, n_items, item_cate};
    protocol_opts po = o->protocol;
    po.threads = workers;
    ds_record *records = NULL;
    uint64_t n_records = 0;
    if (protocol_build(&in, &po, &records, &n_records, &rep->protocol, e) != 0) {
        gp_wrap(e, "prep %s", o->input);
        goto out;
    }
    rep->seconds_protocol = gp_now() - t0;

    res->item_cate = item_cate;
    res->tok_item = pool.tok_item;
    res->tok_cate = pool.tok_cate;
    res->records = records;
    item_cate = NULL;
    pool.tok_item = pool.tok_cate = NULL;
    ds_contents *c = &res->contents;
    c->n_items = n_items;
    c->n_cates = n_cates;
    c->n_users = n_users;
    c->n_tokens = pool.n_tokens;
    c->n_records = n_records;
    c->item_cate = res->item_cate;
    c->tok_item = res->tok_item;
    c->tok_cate = res->tok_cate;
    c->records = res->records;
    c->max_history = o->protocol.max_history;
    c->seed = o->protocol.seed;
    res->items = ev.items;
    res->cates = ev.cates;
    ev.items = ev.cates = NULL;
    prep_stats_fill(rep, res, pool.user_len, n_users);
    rc = 0;
out:
    free(used_item);
    free(used_cate);
    gp_free_aligned(item_cate);
    prep_pool_free(&pool);
    events_free(&ev);
    return rc;
}

/* ---------------------------------------------------------------- public entry points */

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

int prep_build(const prep_opts *o, prep_result **out, prep_report *rep, gp_err *e)
{
    *out = NULL;
    prep_report local;
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof *rep);
    if (prep_validate_opts(o, e) != 0)
        return -1;
    int workers = o->threads > 0 ? o->threads : omp_get_max_threads();
    if (workers < 1)
        workers = 1;
    rep->format = o->format;
    rep->threads = workers;
    double t0 = gp_now();
    prep_result *res = gp_xcalloc(1, sizeof *res);
    snprintf(res->producer, sizeof res->producer, "gpsdrec prep %s", prep_format_name(o->format));
    snprintf(res->description, sizeof res->description, "%s", base_name(o->input));
    int rc = o->format == PREP_FMT_GPSD ? prep_build_gpsd(o, res, rep, e) : build_events(o, workers, res, rep, e);
    if (rc != 0) {
        prep_result_free(res);
        return -1;
    }
    res->contents.producer = res->producer;
    res->contents.description = res->description;
    rep->seconds_total = gp_now() - t0;
    *out = res;
    return 0;
}

const ds_contents *prep_contents(const prep_result *r) { return &r->contents; }

const char *prep_item_key(const prep_result *r, uint32_t id, char *buf, size_t n)
{
    return r->items ? prep_keymap_key_text(r->items, id, buf, n) : NULL;
}

const char *prep_cate_key(const prep_result *r, uint32_t id, char *buf, size_t n)
{
    return r->cates ? prep_keymap_key_text(r->cates, id, buf, n) : NULL;
}

void prep_result_free(prep_result *r)
{
    if (!r)
        return;
    gp_free_aligned(r->item_cate);
    gp_free_aligned(r->tok_item);
    gp_free_aligned(r->tok_cate);
    gp_free_aligned(r->records);
    prep_keymap_free(r->items);
    prep_keymap_free(r->cates);
    free(r);
}

int prep_write(const prep_result *r, const prep_report *rep, const char *dir, gp_err *e)
{
    if (gp_mkdirs(dir, e) != 0)
        return -1;
    char *p = gp_path_join(dir, "item2index.txt");
    int rc = r->items ? prep_keymap_write(r->items, p, e) : 0;
    free(p);
    if (rc == 0 && r->cates) {
        p = gp_path_join(dir, "cate2index.txt");
        rc = prep_keymap_write(r->cates, p, e);
        free(p);
    }
    if (rc == 0 && rep) {
        p = gp_path_join(dir, "stats.txt");
        rc = prep_report_write(rep, p, e);
        free(p);
    }
    if (rc == 0) {
        p = gp_path_join(dir, "data.gpsd");
        rc = dataset_write(p, &r->contents, e);
        free(p);
    }
    return rc;
}

int prep_run(const prep_opts *o, const char *out_dir, prep_report *rep, gp_err *e)
{
    prep_result *r = NULL;
    prep_report local;
    if (!rep)
        rep = &local;
    if (prep_build(o, &r, rep, e) != 0)
        return -1;
    double t0 = gp_now();
    int rc = prep_write(r, rep, out_dir, e);
    rep->seconds_write = gp_now() - t0;
    rep->seconds_total += rep->seconds_write;
    prep_result_free(r);
    return rc;
}
