/* gpsdrec prep: raw logs to a dataset with the official protocol (include/prep.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "prep.h"

void cmd_prep_usage(FILE *f)
{
    fprintf(f,
            "usage: gpsdrec prep --format FORMAT --input FILE [--meta FILE] [--times FILE] --out DIR [options]\n\n"
            "Turns raw interaction logs into the binary dataset (DIR/data.gpsd) with the official GPSD protocol\n"
            "(chqiwang/gpsd-rec dataset/preprocessing_*.py), and writes DIR/item2index.txt, DIR/cate2index.txt\n"
            "(`key,index`, 1-based) and DIR/stats.txt. docs/prep.md has an example of every format.\n\n"
            "formats:\n"
            "  taobao     UserBehavior.csv: user,item,category,behavior,timestamp\n"
            "  amazon     reviews JSON lines (--input) + metadata lines (--meta), 2014 or 2018 release\n"
            "  movielens  u.data or ratings.dat (--input) + u.item or movies.dat (--meta, genres)\n"
            "  csv        CSV/TSV with named columns (--user-col, --item-col, --time-col, ...)\n"
            "  seq        `user item item ...` lines (--input), same-shape time file (--times), item->attributes JSON (--meta)\n"
            "  gpsd       directory with the official text files (--input DIR; item2index.txt/cate2index.txt in it)\n\n"
            "options:\n"
            "  --out DIR              output directory (created)\n"
            "  --on-error abort|skip  abort at the first bad line (default) or skip and count bad lines\n"
            "  --delim SEP            csv field separator (default ',', TAB for .tsv; movielens: TAB, '::' for .dat)\n"
            "  --header               csv: the first line names the columns\n"
            "  --user-col C --item-col C --time-col C [--cate-col C] [--behavior-col C] [--rating-col C]\n"
            "                         csv columns: header names or 1-based numbers\n"
            "  --ids auto|int|str     csv/seq key type (auto: strings, numeric order when all are integers)\n"
            "  --behaviors a,b        keep only these behaviour values (taobao: pv,buy,cart,fav; default all)\n"
            "  --min-rating R         keep rows with rating >= R (movielens, csv with --rating-col)\n"
            "  --time-range MIN:MAX   keep rows with MIN <= timestamp <= MAX (either side may be empty)\n"
            "  --genre first|joined   movielens/seq category: the first genre/attribute, or all joined\n"
            "  --item-map F --cate-map F   gpsd: maps other than DIR/item2index.txt, DIR/cate2index.txt\n"
            "  --sliding-window       also a CTR sample at every position of train users\n"
            "  --min-window-history N shortest history of a sliding-window sample (default 2)\n"
            "  --block-mb N           input block size in MiB (default 32)\n\n"
            "protocol settings (defaults as the official scripts): min_user_len (4; taobao 10), window (200),\n"
            "ctr_negatives (1), split_quantile (0.7), valid_quantile (0 = no validation split), seed, threads.\n");
    cli_print_keys(f);
}

typedef struct {
    const char *name;
    const char **value;
} str_opt;

static int parse_time_range(const char *s, prep_opts *o, gp_err *e)
{
    const char *colon = strchr(s, ':');
    if (!colon)
        return gp_fail(e, "--time-range wants MIN:MAX, got \"%s\"", s);
    char lo[64], hi[64];
    snprintf(lo, sizeof lo, "%.*s", (int)(colon - s), s);
    snprintf(hi, sizeof hi, "%s", colon + 1);
    int64_t v;
    if (lo[0]) {
        if (gp_parse_i64(lo, &v) != 0)
            return gp_fail(e, "--time-range: \"%s\" is not an integer", lo);
        o->time_min = v;
    }
    if (hi[0]) {
        if (gp_parse_i64(hi, &v) != 0)
            return gp_fail(e, "--time-range: \"%s\" is not an integer", hi);
        o->time_max = v;
    }
    return 0;
}

int cmd_prep(int argc, char **argv)
{
    gp_err e = {{0}};
    const char *format = NULL, *input = NULL, *meta = NULL, *times = NULL, *out = NULL, *on_error = "abort";
    const char *delim = NULL, *ucol = NULL, *icol = NULL, *tcol = NULL, *ccol = NULL, *bcol = NULL, *rcol = NULL;
    const char *ids = "auto", *behaviors = NULL, *min_rating = NULL, *time_range = NULL, *genre = "first";
    const char *item_map = NULL, *cate_map = NULL, *min_window = NULL, *block_mb = NULL;
    int header = 0, sliding = 0;
    const str_opt opts[] = {
        {"format", &format},     {"input", &input},         {"meta", &meta},         {"times", &times},
        {"out", &out},           {"on-error", &on_error},   {"delim", &delim},       {"user-col", &ucol},
        {"item-col", &icol},     {"time-col", &tcol},       {"cate-col", &ccol},     {"behavior-col", &bcol},
        {"rating-col", &rcol},   {"ids", &ids},             {"behaviors", &behaviors}, {"min-rating", &min_rating},
        {"time-range", &time_range}, {"genre", &genre},     {"item-map", &item_map}, {"cate-map", &cate_map},
        {"min-window-history", &min_window}, {"block-mb", &block_mb},
    };
    const int n_opts = (int)(sizeof opts / sizeof opts[0]);
    char **args = gp_xcalloc((size_t)argc + 1, sizeof *args);
    int n_args = 0, rc = 0;
    for (int i = 0; i < argc && rc == 0; i++) {
        const char *a = argv[i];
        if (i == 0 || strncmp(a, "--", 2) != 0) {
            args[n_args++] = argv[i];
            continue;
        }
        if (strcmp(a, "--header") == 0) {
            header = 1;
            continue;
        }
        if (strcmp(a, "--sliding-window") == 0) {
            sliding = 1;
            continue;
        }
        int matched = 0;
        for (int k = 0; k < n_opts && !matched; k++) {
            size_t n = strlen(opts[k].name);
            if (strncmp(a + 2, opts[k].name, n) != 0)
                continue;
            if (a[2 + n] == '=') {
                *opts[k].value = a + 3 + n;
                matched = 1;
            } else if (a[2 + n] == 0) {
                if (i + 1 >= argc)
                    rc = gp_fail(&e, "option %s needs a value", a);
                else
                    *opts[k].value = argv[++i];
                matched = 1;
            }
        }
        if (!matched)
            args[n_args++] = argv[i];
    }
    cfg_list l;
    memset(&l, 0, sizeof l);
    char **rest = NULL;
    int n_rest = 0;
    const cfg_assignment *origin[256] = {0};
    gp_settings s;
    if (rc == 0) {
        rc = cli_collect_settings(n_args, args, NULL, NULL, &l, &rest, &n_rest, cmd_prep_usage, &e);
        if (rc == 1) {
            free(rest);
            free(args);
            cfg_list_free(&l);
            return 0;
        }
    }
    if (rc == 0 && n_rest > 0)
        rc = gp_fail(&e, "unexpected argument \"%s\" (the input is given with --input FILE)", rest[0]);
    if (rc == 0)
        rc = cli_resolve(&l, STAGE_PRETRAIN, &s, origin, &e);
    int fmt = -1;
    if (rc == 0 && !format)
        rc = gp_fail(&e, "--format is required (taobao, amazon, movielens, csv, seq, gpsd)");
    if (rc == 0 && (fmt = prep_format_parse(format)) < 0)
        rc = gp_fail(&e, "unknown format \"%s\" (taobao, amazon, movielens, csv, tsv, seq, gpsd)", format);
    if (rc == 0 && !out)
        rc = gp_fail(&e, "--out DIR is required");
    prep_opts o = prep_default_opts(fmt < 0 ? 0 : fmt);
    if (rc == 0) {
        o.input = input;
        o.meta = meta;
        o.times = times;
        o.delim = delim;
        if (strcmp(format, "tsv") == 0 && !delim)
            o.delim = "\t";
        if (o.delim && strcmp(o.delim, "\\t") == 0)
            o.delim = "\t";
        o.header = header;
        o.col_user = ucol, o.col_item = icol, o.col_time = tcol, o.col_cate = ccol, o.col_behavior = bcol,
        o.col_rating = rcol;
        o.behaviors = behaviors;
        o.item_map = item_map;
        o.cate_map = cate_map;
        o.threads = (int)s.threads;
        if (strcmp(on_error, "abort") == 0)
            o.on_error = PREP_ABORT;
        else if (strcmp(on_error, "skip") == 0)
            o.on_error = PREP_SKIP;
        else
            rc = gp_fail(&e, "--on-error must be abort or skip, got \"%s\"", on_error);
        if (strcmp(ids, "auto") == 0)
            o.ids = PREP_IDS_AUTO;
        else if (strcmp(ids, "int") == 0)
            o.ids = PREP_IDS_INT;
        else if (strcmp(ids, "str") == 0)
            o.ids = PREP_IDS_STR;
        else if (rc == 0)
            rc = gp_fail(&e, "--ids must be auto, int or str, got \"%s\"", ids);
        if (strcmp(genre, "first") == 0)
            o.genre = PREP_GENRE_FIRST;
        else if (strcmp(genre, "joined") == 0)
            o.genre = PREP_GENRE_JOINED;
        else if (rc == 0)
            rc = gp_fail(&e, "--genre must be first or joined, got \"%s\"", genre);
        if (rc == 0 && min_rating && gp_parse_f64(min_rating, &o.min_rating) != 0)
            rc = gp_fail(&e, "--min-rating: \"%s\" is not a number", min_rating);
        if (rc == 0 && time_range)
            rc = parse_time_range(time_range, &o, &e);
        int64_t v;
        if (rc == 0 && block_mb) {
            if (gp_parse_i64(block_mb, &v) != 0 || v < 1 || v > 4096)
                rc = gp_fail(&e, "--block-mb must be in 1..4096, got \"%s\"", block_mb);
            else
                o.block_bytes = (size_t)v << 20;
        }
        /* Protocol: the format's official values unless a setting was given explicitly. */
        for (int k = 0; k < settings_n_keys; k++) {
            if (!origin[k])
                continue;
            const char *key = settings_keys[k].key;
            if (strcmp(key, "min_user_len") == 0)
                o.protocol.min_user_len = (uint32_t)s.min_user_len;
            else if (strcmp(key, "window") == 0)
                o.protocol.max_history = (uint32_t)s.window;
        }
        o.protocol.n_negatives = (uint32_t)s.ctr_negatives;
        o.protocol.split_quantile = s.split_quantile;
        o.protocol.valid_quantile = s.valid_quantile;
        o.protocol.seed = (uint64_t)s.seed;
        o.protocol.sliding_window = sliding;
        if (rc == 0 && min_window) {
            if (gp_parse_i64(min_window, &v) != 0 || v < 1 || v > UINT32_MAX)
                rc = gp_fail(&e, "--min-window-history must be >= 1, got \"%s\"", min_window);
            else
                o.protocol.min_window_history = (uint32_t)v;
        }
    }
    if (rc == 0) {
        prep_report rep;
        printf("gpsdrec prep: %s %s -> %s\n", format, input ? input : "(no input)", out);
        rc = prep_run(&o, out, &rep, &e);
        if (rc == 0) {
            prep_print_report(&rep, stdout);
            printf("wrote %s/data.gpsd, item2index.txt, cate2index.txt, stats.txt\n", out);
        }
    }
    free(rest);
    free(args);
    cfg_list_free(&l);
    return rc == 0 ? 0 : cli_error("prep", &e);
}
