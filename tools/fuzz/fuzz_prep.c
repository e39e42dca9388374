/* libFuzzer target for the prep parsers: the input becomes the file(s) of one format (split at
 * the first NUL byte into the main file and its companion: metadata, time file, attributes,
 * item2index) and goes through prep_build, so reader, parser, ids, grouping and protocol run.
 * Build and run: tools/fuzz/run_fuzz.sh FORMAT SECONDS. FUZZ_FORMAT selects the format. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prep.h"

#ifndef FUZZ_FORMAT
#define FUZZ_FORMAT PREP_FMT_TAOBAO
#endif

static char dir[64];

static void put(const char *path, const uint8_t *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    if (n)
        fwrite(data, 1, n, f);
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/dev/shm/fuzz_prep_%d", (int)getpid());
        gp_mkdirs(dir, NULL);
    }
    const uint8_t *nul = memchr(data, 0, size);
    size_t a = nul ? (size_t)(nul - data) : size;
    const uint8_t *b = nul ? nul + 1 : data + size;
    size_t bn = size - a - (nul ? 1 : 0);
    char main_path[128], side_path[128];
    prep_opts o = prep_default_opts(FUZZ_FORMAT);
    o.threads = 2;
    o.block_bytes = 4096;
    o.on_error = (size & 1) ? PREP_SKIP : PREP_ABORT;
    o.protocol.min_user_len = 3;
    o.protocol.max_history = 4;
    switch (FUZZ_FORMAT) {
    case PREP_FMT_GPSD:
        snprintf(main_path, sizeof main_path, "%s/ft_train_dataset.txt", dir);
        snprintf(side_path, sizeof side_path, "%s/item2index.txt", dir);
        put(main_path, data, a);
        if (nul)
            put(side_path, b, bn);
        else
            unlink(side_path);
        o.input = dir;
        break;
    default:
        snprintf(main_path, sizeof main_path, "%s/main.txt", dir);
        snprintf(side_path, sizeof side_path, "%s/side.txt", dir);
        put(main_path, data, a);
        put(side_path, b, bn);
        o.input = main_path;
        if (FUZZ_FORMAT == PREP_FMT_AMAZON) {
            o.meta = side_path;
        } else if (FUZZ_FORMAT == PREP_FMT_MOVIELENS) {
            o.meta = nul ? side_path : NULL;
        } else if (FUZZ_FORMAT == PREP_FMT_SEQ) {
            if (nul && bn && b[0] == '{')
                o.meta = side_path;
            else if (nul)
                o.times = side_path;
        } else if (FUZZ_FORMAT == PREP_FMT_CSV) {
            o.header = 1;
            o.col_user = "u", o.col_item = "i", o.col_time = "t", o.col_cate = (size & 2) ? "c" : NULL;
            o.col_behavior = "b";
            o.behaviors = (size & 4) ? "x,y" : NULL;
        }
        break;
    }
    prep_result *r = NULL;
    prep_report rep;
    gp_err e;
    if (prep_build(&o, &r, &rep, &e) == 0) {
        /* the contents must pass the dataset writer's own validation */
        char out[128];
        snprintf(out, sizeof out, "%s/out.gpsd", dir);
        if (dataset_write(out, prep_contents(r), &e) != 0) {
            fprintf(stderr, "prep produced contents the writer rejects: %s\n", e.msg);
            abort();
        }
        prep_result_free(r);
    }
    return 0;
}
