/* gpsdrec info: describe a dataset or a checkpoint. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dataset.h"
#include "safetensors.h"

void cmd_info_usage(FILE *f)
{
    fprintf(f, "usage: gpsdrec info FILE...\n\n"
               "Describes each FILE: a dataset written by gpsdrec synth/prep (counts, vocabularies, splits,\n"
               "label balance, history lengths, sections; fully validated) or a safetensors checkpoint\n"
               "(tensors, shapes, parameter counts, the stage, step and settings it was trained with).\n");
}

static int describe_checkpoint(const char *path, gp_err *e)
{
    st_file f;
    if (st_open(&f, path, e) != 0)
        return -1;
    int64_t sparse = 0, dense = 0, blocks = 0;
    printf("%s: safetensors checkpoint, %d tensors\n", path, f.n);
    const char *fmt = st_meta(&f, "format"), *stage = st_meta(&f, "stage"), *step = st_meta(&f, "step");
    if (fmt)
        printf("  format %s, stage %s, step %s\n", fmt, stage ? stage : "?", step ? step : "?");
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        printf("  %-40s %-5s [", t->name, st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            printf(d ? ", %lld" : "%lld", (long long)t->shape[d]);
        printf("]\n");
        if (strcmp(t->name, "item_embeddings.weight") == 0)
            sparse += t->numel;
        else
            dense += t->numel;
        if (strncmp(t->name, "layers.", 7) == 0)
            blocks += t->numel;
    }
    printf("  parameters: %lld sparse (item table), %lld dense, of which %lld in transformer blocks\n",
           (long long)sparse, (long long)dense, (long long)blocks);
    const char *settings = st_meta(&f, "settings");
    if (settings)
        printf("  settings:\n    %.*s", (int)strlen(settings), settings);
    st_close(&f);
    return 0;
}

int cmd_info(int argc, char **argv)
{
    if (argc < 2) {
        cmd_info_usage(stderr);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            cmd_info_usage(stdout);
            return 0;
        }
    }
    int status = 0;
    for (int i = 1; i < argc; i++) {
        gp_err e = {{0}};
        FILE *fp = fopen(argv[i], "rb");
        if (!fp) {
            gp_fail(&e, "%s: cannot open", argv[i]);
            status = cli_error("info", &e);
            continue;
        }
        char magic[8] = {0};
        size_t got = fread(magic, 1, sizeof magic, fp);
        fclose(fp);
        int rc;
        if (got == 8 && memcmp(magic, DS_MAGIC, 8) == 0) {
            dataset ds;
            ds_open_opts oo = ds_default_open_opts();
            rc = dataset_open(&ds, argv[i], &oo, &e);
            if (rc == 0) {
                dataset_describe(&ds, stdout);
                dataset_close(&ds);
            }
        } else {
            rc = describe_checkpoint(argv[i], &e);
            if (rc != 0)
                gp_wrap(&e, "%s is neither a gpsdrec dataset nor a readable safetensors file", argv[i]);
        }
        if (rc != 0)
            status = cli_error("info", &e);
    }
    return status;
}
