/* gpsdrec eval and gpsdrec score: a saved model applied to a dataset. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "checkpoint.h"
#include "cli.h"
#include "dataset.h"
#include "evaluate.h"
#include "model.h"
#include "safetensors.h"

/* A checkpoint loaded with the settings stored in it (overridable) and its dataset opened. */
typedef struct {
    gp_settings s;
    int stage;
    dataset ds;
    model_layout layout;
    backend *be;
    int split;
} loaded_model;

static void loaded_free(loaded_model *m)
{
    backend_destroy(m->be);
    model_layout_free(&m->layout);
    dataset_close(&m->ds);
}

/* Settings: stage defaults, then the checkpoint's own settings, then the command line's
 * --set / --KEY overrides (l holds those). */
static int load_model(loaded_model *m, const char *ckpt, const cfg_list *l, gp_err *e)
{
    memset(m, 0, sizeof *m);
    st_file f;
    if (st_open(&f, ckpt, e) != 0)
        return -1;
    const char *stored = st_meta(&f, "settings"), *stage_text = st_meta(&f, "stage");
    int rc = 0;
    if (!stored || !stage_text)
        rc = gp_fail(e, "%s: not a gpsdrec checkpoint (no settings in its metadata)", ckpt);
    cfg_list full = {0};
    if (rc == 0)
        rc = cfg_parse_text(&full, settings_stage_defaults, "stage defaults", e);
    if (rc == 0)
        rc = cfg_parse_text(&full, stored, ckpt, e);
    for (int i = 0; rc == 0 && i < l->n; i++)
        if (strcmp(l->items[i].source, "--set") == 0) {
            size_t n = strlen(l->items[i].key) + strlen(l->items[i].value) + 2;
            char *kv = gp_xmalloc(n);
            snprintf(kv, n, "%s=%s", l->items[i].key, l->items[i].value);
            rc = cfg_add_override(&full, kv, e);
            free(kv);
        }
    m->stage = stage_text && strcmp(stage_text, "finetune") == 0 ? STAGE_FINETUNE : STAGE_PRETRAIN;
    st_close(&f);
    if (rc == 0)
        rc = cli_resolve(&full, m->stage, &m->s, NULL, e);
    cfg_list_free(&full);
    ds_open_opts oo = ds_default_open_opts();
    model_config mc;
    if (rc == 0)
        rc = dataset_open(&m->ds, m->s.data, &oo, e);
    if (rc == 0)
        rc = model_config_from_settings(&mc, &m->s, (int64_t)m->ds.hdr->n_items, (int64_t)m->ds.hdr->n_cates, e);
    if (rc == 0)
        rc = model_layout_build(&m->layout, &mc, e);
    if (rc == 0) {
        backend_opts bo = backend_opts_from_settings(&m->s, (int)m->s.eval_batch_size);
        bo.freeze_sparse = 1;
        m->be = backend_create(m->s.device, &m->layout, &bo, e);
        rc = m->be ? 0 : -1;
    }
    float *sparse = NULL, *dense = NULL;
    if (rc == 0) {
        sparse = gp_alloc_or_fail((size_t)m->layout.sparse_numel * sizeof(float), "item embeddings", e);
        dense = gp_alloc_or_fail((size_t)m->layout.dense_numel * sizeof(float), "dense parameters", e);
        rc = sparse && dense ? 0 : -1;
    }
    if (rc == 0)
        rc = checkpoint_load_params(ckpt, &m->layout, sparse, dense, TRANSFER_FULL, NULL, NULL, 0, e);
    if (rc == 0)
        rc = m->be->set_params(m->be, sparse, dense, e);
    gp_free_aligned(sparse);
    gp_free_aligned(dense);
    m->split = m->s.eval_split == EVAL_SPLIT_VALID ? DS_SPLIT_VALID : DS_SPLIT_TEST;
    if (rc != 0)
        loaded_free(m);
    return rc;
}

/* One checkpoint argument plus settings overrides; returns 0, 1 (help shown) or -1. */
static int parse_args(int argc, char **argv, void (*usage)(FILE *), cfg_list *l, const char **ckpt, gp_err *e)
{
    char **rest = NULL;
    int n_rest = 0;
    int rc = cli_collect_settings(argc, argv, NULL, NULL, l, &rest, &n_rest, usage, e);
    if (rc == 0 && n_rest != 1)
        rc = gp_fail(e, "expected one checkpoint file, got %d arguments", n_rest);
    *ckpt = rc == 0 ? rest[0] : NULL;
    free(rest);
    return rc;
}

void cmd_eval_usage(FILE *f)
{
    fprintf(f, "usage: gpsdrec eval CHECKPOINT.safetensors [--data FILE] [--set key=value]...\n\n"
               "Evaluates a gpsdrec checkpoint with the settings stored in it (overridable): a finetuned model\n"
               "by AUC, GAUC and logloss of its CTR predictions, a pretrained one by next-item HR@K, NDCG@K\n"
               "and MRR against the whole catalogue, on eval_split (test or valid).\n");
    cli_print_keys(f);
}

int cmd_eval(int argc, char **argv)
{
    gp_err e = {{0}};
    cfg_list l;
    const char *ckpt;
    int rc = parse_args(argc, argv, cmd_eval_usage, &l, &ckpt, &e);
    if (rc != 0) {
        cfg_list_free(&l);
        return rc > 0 ? 0 : cli_error("eval", &e);
    }
    loaded_model m;
    rc = load_model(&m, ckpt, &l, &e);
    cfg_list_free(&l);
    if (rc != 0)
        return cli_error("eval", &e);
    int64_t n = (int64_t)m.ds.split_count[m.split];
    if (m.s.eval_max_samples > 0 && n > m.s.eval_max_samples)
        n = m.s.eval_max_samples;
    eval_result r;
    if (m.stage == STAGE_FINETUNE) {
        rc = evaluate_ctr(m.be, &m.ds, m.ds.split_begin[m.split], n, (int)m.s.eval_batch_size, (int)m.s.max_history, &r,
                          NULL, &e);
        if (rc == 0)
            printf("%s on %s (%s, %lld samples): auc %.6f  gauc %.6f  logloss %.6f\n", ckpt, m.s.data,
                   ds_split_name(m.split), (long long)r.n, r.auc, r.gauc, r.logloss);
    } else {
        rc = evaluate_next_item(m.be, &m.ds, m.ds.split_begin[m.split], n, (int)m.s.eval_batch_size,
                                (int)m.s.max_history, &r, &e);
        if (rc == 0) {
            printf("%s on %s (%s, %lld users):", ckpt, m.s.data, ds_split_name(m.split), (long long)r.n);
            for (int k = 0; k < EVAL_N_KS; k++)
                printf("  hr@%d %.6f  ndcg@%d %.6f", EVAL_KS[k], r.hr[k], EVAL_KS[k], r.ndcg[k]);
            printf("  mrr %.6f\n", r.mrr);
        }
    }
    loaded_free(&m);
    return rc == 0 ? 0 : cli_error("eval", &e);
}

void cmd_score_usage(FILE *f)
{
    fprintf(f, "usage: gpsdrec score CHECKPOINT.safetensors --out FILE [--split test|train|valid|all] [--data FILE]\n"
               "                     [--set key=value]...\n\n"
               "Writes the rank head's click probability for every CTR sample of a split (default: eval_split)\n"
               "as tab-separated lines `record  user  item  label  probability`, with a header line; record is\n"
               "the sample's index within its split. The file is written atomically.\n");
    cli_print_keys(f);
}

int cmd_score(int argc, char **argv)
{
    gp_err e = {{0}};
    const char *out = NULL, *split_name = NULL;
    char **args = gp_xcalloc((size_t)argc + 1, sizeof *args);
    int n_args = 0;
    for (int i = 0; i < argc; i++) {
        if ((strcmp(argv[i], "--out") == 0 || strcmp(argv[i], "-o") == 0) && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--split") == 0 && i + 1 < argc)
            split_name = argv[++i];
        else
            args[n_args++] = argv[i];
    }
    cfg_list l;
    const char *ckpt;
    int rc = parse_args(n_args, args, cmd_score_usage, &l, &ckpt, &e);
    if (rc == 0 && !out)
        rc = gp_fail(&e, "--out FILE is required");
    if (rc != 0) {
        free(args);
        cfg_list_free(&l);
        return rc > 0 ? 0 : cli_error("score", &e);
    }
    loaded_model m;
    rc = load_model(&m, ckpt, &l, &e);
    cfg_list_free(&l);
    free(args);
    if (rc != 0)
        return cli_error("score", &e);
    int first = m.split, last = m.split;
    if (split_name) {
        if (strcmp(split_name, "all") == 0) {
            first = DS_SPLIT_TRAIN;
            last = DS_SPLIT_VALID;
        } else {
            first = -1;
            for (int sp = DS_SPLIT_TRAIN; sp < DS_N_SPLITS; sp++)
                if (strcmp(split_name, ds_split_name(sp)) == 0)
                    first = last = sp;
            if (first < 0)
                rc = gp_fail(&e, "--split %s: expected test, train, valid or all", split_name);
        }
    }
    gp_atomic_file af;
    if (rc == 0)
        rc = gp_atomic_open(&af, out, &e);
    int opened = rc == 0;
    if (rc == 0)
        rc = fprintf(af.f, "split\trecord\tuser\titem\tlabel\tprobability\n") < 0 ? gp_fail(&e, "%s: write failed", out) : 0;
    int64_t written = 0;
    for (int sp = first; rc == 0 && sp <= last; sp++) {
        int64_t n = (int64_t)m.ds.split_count[sp];
        if (n == 0)
            continue;
        float *probs = gp_alloc_or_fail((size_t)n * sizeof(float), "predictions", &e);
        eval_result r;
        rc = probs ? evaluate_ctr(m.be, &m.ds, m.ds.split_begin[sp], n, (int)m.s.eval_batch_size, (int)m.s.max_history,
                                  &r, probs, &e)
                   : -1;
        for (int64_t i = 0; rc == 0 && i < n; i++) {
            const ds_record *rec = &m.ds.split_begin[sp][i];
            if (fprintf(af.f, "%s\t%lld\t%u\t%u\t%u\t%.9g\n", ds_split_name(sp), (long long)i, rec->user, rec->item,
                        rec->label, probs[i]) < 0)
                rc = gp_fail(&e, "%s: write failed", out);
        }
        written += n;
        if (rc == 0)
            printf("%s: %lld predictions, auc %.6f\n", ds_split_name(sp), (long long)n, r.auc);
        gp_free_aligned(probs);
    }
    if (opened)
        rc = rc == 0 ? gp_atomic_commit(&af, &e) : (gp_atomic_abort(&af), -1);
    loaded_free(&m);
    if (rc != 0)
        return cli_error("score", &e);
    printf("wrote %lld predictions to %s\n", (long long)written, out);
    return 0;
}
