/* parity_dump: one training micro-batch of gpsdrec, written in the golden-vector format, so an
 * independent PyTorch model (tools/torch_reference.py, tools/parity.py) can check our losses and
 * gradients on real data.
 *
 * usage: parity_dump [CONFIG...] [--set key=value | --KEY VALUE]... --out FILE
 *                    [--checkpoint FILE] [--micro-step K] [--bf16-weights]
 *
 * The settings (config files, --set, --KEY VALUE; as for `gpsdrec train`) give the model, the
 * dataset (`data`), the stage, batch_size, grad_accum, seed, device and threads. The batch is the
 * one the trainer feeds at global micro-step K (default 0): the records of the stage's split in
 * the epoch's shuffled order, filled by batch_fill, with the negatives batch_sample_negatives
 * draws for micro-step K. The parameters are the seed's initialisation, or a gpsdrec checkpoint
 * (every tensor it has; the others keep the initialisation). --bf16-weights rounds the linear
 * weights to bf16 first (and stores the rounded values), so a CUDA dump and an fp32 reference
 * start from identical weights. One forward_backward with grad_scale 1 on the chosen backend
 * gives the losses, rank outputs and gradients.
 *
 * The file is a shared/golden file (see its README): param.<name>, grad.<name>, input.* (int64),
 * expect.* and the same metadata keys, so tests/support/golden.c loads it. Two differences from
 * the trainer's own batch, both invisible to the losses: the negatives are always drawn (a
 * finetune run with no item loss draws none; the golden format carries n_samples of them), and
 * when freeze_sparse is set the item table's gradient is the zero the backend reports, named in
 * the extra metadata key `frozen_params`.
 *
 * The dump logic is a library of static functions; PARITY_DUMP_NO_MAIN leaves main out so
 * tests/test_parity_dump.c can include this file and call them.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "batch.h"
#include "checkpoint.h"
#include "cli.h"
#include "dataset.h"
#include "loader.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"
#include "settings.h"
#include "train.h"

typedef struct {
    const char *out;        /* output file */
    const char *checkpoint; /* NULL: the seed's initialisation */
    int64_t micro_step;     /* global micro-step of the trainer whose batch is dumped */
    int bf16_weights;       /* round linear weights to bf16 before running */
} parity_opts;

/* What a dump computed, for the caller's report. */
typedef struct {
    step_losses losses;
    int B;
    int64_t epoch, first_record; /* the batch: records [first_record, +B) of that epoch's order */
    char backend[16];
    int n_loaded;          /* tensors read from the checkpoint */
    char kept_fresh[1024]; /* tensors the checkpoint lacks (initialised), comma-separated */
} parity_summary;

/* Metadata the golden format has beyond the model config. */
typedef struct {
    const char *stage; /* "pretrain" / "finetune" */
    int multiple_of;
    int freeze_sparse;
    const char *const *extra; /* NULL-terminated key, value pairs appended as is (may be NULL) */
} parity_meta;

static float round_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return f; /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    u &= 0xffff0000u;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Numbers as Python prints floats (integral values as "10000.0", others the shortest decimal that
 * reads back as the same value), so metadata reads like the official golden files'. */
static void fmt_float(char *buf, size_t n, float v)
{
    if (v == floorf(v) && fabsf(v) < 1e15f) {
        snprintf(buf, n, "%.1f", (double)v);
        return;
    }
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, n, "%.*g", p, (double)v);
        if (strtof(buf, NULL) == v)
            break;
    }
}

static void fmt_double(char *buf, size_t n, double v)
{
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, n, "%.1f", v);
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            break;
    }
}

/* Fill x (allocated by the caller with batch_size rows, max_history slots, n_negatives) with the
 * micro-batch the trainer feeds at global micro-step `micro` of a run with settings s. */
static int parity_select_batch(const gp_settings *s, const dataset *ds, int64_t micro, batch *x, parity_summary *sum,
                               gp_err *e)
{
    int split = s->stage == STAGE_PRETRAIN ? DS_SPLIT_PRETRAIN : DS_SPLIT_TRAIN;
    int64_t n = (int64_t)ds->split_count[split];
    int64_t per_step = s->batch_size * s->grad_accum;
    int64_t steps_per_epoch = n / per_step;
    if (steps_per_epoch == 0)
        return gp_fail(e, "%s has %lld %s records, fewer than one step of batch_size x grad_accum = %lld", ds->path,
                       (long long)n, ds_split_name(split), (long long)per_step);
    if (micro < 0)
        return gp_fail(e, "micro-step %lld is negative", (long long)micro);
    int64_t micro_per_epoch = steps_per_epoch * s->grad_accum;
    int64_t epoch = micro / micro_per_epoch, in_epoch = micro % micro_per_epoch;
    const ds_record **order = gp_alloc_or_fail((size_t)n * sizeof *order, "the epoch order", e);
    if (!order)
        return -1;
    loader_epoch_order(order, ds->split_begin[split], n, (uint64_t)s->seed, epoch, s->shuffle);
    batch_fill(x, ds, order + in_epoch * s->batch_size, (int)s->batch_size);
    batch_sample_negatives(x, (uint64_t)s->seed, (uint64_t)micro, (int64_t)ds->hdr->n_items);
    gp_free_aligned(order);
    if (sum) {
        sum->B = x->B;
        sum->epoch = epoch;
        sum->first_record = in_epoch * s->batch_size;
    }
    return 0;
}

static int64_t *widen(const int32_t *src, int64_t n)
{
    int64_t *dst = gp_xmalloc((size_t)(n > 0 ? n : 1) * sizeof *dst);
    for (int64_t i = 0; i < n; i++)
        dst[i] = src[i];
    return dst;
}

/* Run one forward_backward (grad_scale 1, fresh gradients) of backend `be`, which must hold
 * exactly the parameters sparse/dense, on x, and write everything to `path` in the golden
 * format. */
static int parity_run_and_write(backend *be, const model_layout *l, const float *sparse, const float *dense,
                                const batch *x, const parity_meta *m, const char *path, parity_summary *sum, gp_err *e)
{
    const model_config *c = &l->cfg;
    const int B = x->B, S = x->S, N = x->N;
    if (S != c->max_history || N != c->n_negatives)
        return gp_fail(e, "%s: the batch has %d history slots and %d negatives, the model %d and %d", path, S, N,
                       c->max_history, c->n_negatives);
    int rc = -1;
    float *gs = gp_alloc_or_fail((size_t)l->sparse_numel * sizeof(float), "item-table gradient", e);
    float *gd = gp_alloc_or_fail((size_t)l->dense_numel * sizeof(float), "dense gradient", e);
    float *prob = gp_xcalloc((size_t)(B > 0 ? B : 1), sizeof(float));
    int64_t *ins[9] = {0};
    st_out_tensor *ts = gp_xcalloc((size_t)(2 * l->n_tensors + 16), sizeof *ts);
    char (*names)[MODEL_NAME_MAX + 8] = gp_xcalloc((size_t)(2 * l->n_tensors), sizeof *names);
    if (!gs || !gd)
        goto done;
    step_losses out;
    if (be->zero_grads(be, e) != 0 || be->forward_backward(be, x, 1.0f, &out, c->w_rank > 0 ? prob : NULL, e) != 0 ||
        be->get_grads(be, gs, gd, e) != 0)
        goto done;
    if (c->w_rank <= 0)
        memset(prob, 0, (size_t)B * sizeof(float)); /* the official model returns zeros without a rank loss */
    int nt = 0;
    for (int t = 0; t < l->n_tensors; t++) {
        const tensor_info *ti = &l->tensors[t];
        for (int g = 0; g < 2; g++) {
            snprintf(names[2 * t + g], sizeof names[0], "%s.%s", g ? "grad" : "param", ti->name);
            const float *base = g ? (ti->arena == ARENA_SPARSE ? gs : gd) : (ti->arena == ARENA_SPARSE ? sparse : dense);
            st_out_tensor *o = &ts[nt++];
            o->name = names[2 * t + g];
            o->dtype = ST_F32;
            o->ndim = ti->ndim;
            o->shape[0] = ti->shape[0];
            o->shape[1] = ti->shape[1];
            o->data = base + ti->offset;
        }
    }
    static const char *const in_names[9] = {"input.historical_item_ids", "input.historical_cate_ids",
                                            "input.historical_len",      "input.target_item_id",
                                            "input.target_cate_id",      "input.click_label",
                                            "input.item_ar_labels",      "input.cate_ar_labels",
                                            "input.negatives"};
    const int32_t *in_src[9] = {x->hist_item, x->hist_cate,  x->hist_len,   x->target_item, x->target_cate,
                                x->click,     x->item_label, x->cate_label, x->negatives};
    const int in_cols[9] = {S, S, 0, 0, 0, 0, S, S, N};
    for (int i = 0; i < 9; i++) {
        ins[i] = widen(in_src[i], (int64_t)B * (in_cols[i] ? in_cols[i] : 1));
        st_out_tensor *o = &ts[nt++];
        o->name = in_names[i];
        o->dtype = ST_I64;
        o->ndim = in_cols[i] ? 2 : 1;
        o->shape[0] = B;
        o->shape[1] = in_cols[i];
        o->data = ins[i];
    }
    float scalars[4] = {(float)out.loss, (float)out.item_loss, (float)out.cate_loss, (float)out.rank_loss};
    static const char *const sc_names[4] = {"expect.loss", "expect.item_ar_loss", "expect.cate_ar_loss",
                                            "expect.rank_loss"};
    for (int i = 0; i < 4; i++)
        ts[nt++] = (st_out_tensor){.name = sc_names[i], .dtype = ST_F32, .ndim = 1, .shape = {1}, .data = &scalars[i]};
    ts[nt++] = (st_out_tensor){.name = "expect.rank_outputs", .dtype = ST_F32, .ndim = 1, .shape = {B}, .data = prob};

    /* Metadata: the golden files' keys, then our extras. */
    char v[24][64];
    char without[4096] = "";
    for (int t = 0; t < l->n_tensors; t++)
        if (!model_tensor_trained(l, t, 0)) {
            size_t len = strlen(without);
            snprintf(without + len, sizeof without - len, "%s%s", len ? "," : "", l->tensors[t].name);
        }
    snprintf(v[0], 64, "%d", c->dim);
    snprintf(v[1], 64, "%d", c->n_layers);
    snprintf(v[2], 64, "%d", c->n_heads);
    snprintf(v[3], 64, "%d", c->emb_dim);
    snprintf(v[4], 64, "%s", c->causal ? "True" : "False");
    snprintf(v[5], 64, "%lld", (long long)c->n_items);
    snprintf(v[6], 64, "%lld", (long long)c->n_cates);
    snprintf(v[7], 64, "%d", c->max_history);
    snprintf(v[8], 64, "%d", c->n_negatives);
    fmt_float(v[9], 64, c->temperature);
    snprintf(v[10], 64, "%s", c->l2_norm ? "True" : "False");
    fmt_float(v[11], 64, c->norm_eps);
    snprintf(v[12], 64, "%d", m->multiple_of);
    fmt_double(v[13], 64, c->rope_theta);
    fmt_float(v[14], 64, c->w_item);
    fmt_float(v[15], 64, c->w_cate);
    fmt_float(v[16], 64, c->w_rank);
    const char *meta[96] = {"dim", v[0], "n_layers", v[1], "n_heads", v[2], "embedding_dim", v[3], "causal", v[4],
                            "item_vocab_size", v[5], "cate_vocab_size", v[6], "max_history", v[7], "n_samples", v[8],
                            "temperature", v[9], "l2_norm", v[10], "norm_eps", v[11], "multiple_of", v[12],
                            "rope_theta", v[13], "item_ar_loss_weight", v[14], "cate_ar_loss_weight", v[15],
                            "rank_loss_weight", v[16], "stage", m->stage, "dtype", "float32",
                            "params_without_gradient", without, "producer", "gpsdrec parity_dump", "backend",
                            be->name, "frozen_params", m->freeze_sparse ? l->tensors[0].name : ""};
    int nm = 0;
    while (meta[nm])
        nm++;
    for (int i = 0; m->extra && m->extra[i] && m->extra[i + 1] && nm < 94; i += 2) {
        meta[nm++] = m->extra[i];
        meta[nm++] = m->extra[i + 1];
    }
    meta[nm] = NULL;
    if (st_write(path, ts, nt, meta, e) != 0)
        goto done;
    if (sum) {
        sum->losses = out;
        sum->B = B;
        snprintf(sum->backend, sizeof sum->backend, "%s", be->name);
    }
    rc = 0;
done:
    for (int i = 0; i < 9; i++)
        free(ins[i]);
    free(ts);
    free(names);
    free(prob);
    gp_free_aligned(gs);
    gp_free_aligned(gd);
    return rc;
}

/* The whole dump for resolved, validated settings s. */
static int parity_dump(const gp_settings *s, const parity_opts *o, parity_summary *sum, gp_err *e)
{
    if (sum)
        memset(sum, 0, sizeof *sum);
    if (!s->data[0])
        return gp_fail(e, "no dataset: set data = <file> (gpsdrec synth or gpsdrec prep makes one)");
    if (!o->out || !o->out[0])
        return gp_fail(e, "no output file: give --out FILE");
    if (s->logq_correction)
        return gp_fail(e, "logq_correction = true is not covered: the golden format and the reference have no logQ "
                          "correction (the official model has none)");
    dataset ds;
    ds_open_opts oo = ds_default_open_opts();
    if (dataset_open(&ds, s->data, &oo, e) != 0)
        return -1;
    int rc = -1;
    model_layout l;
    memset(&l, 0, sizeof l);
    backend *be = NULL;
    float *sparse = NULL, *dense = NULL;
    batch x;
    memset(&x, 0, sizeof x);
    model_config mc;
    if (model_config_from_settings(&mc, s, (int64_t)ds.hdr->n_items, (int64_t)ds.hdr->n_cates, e) != 0 ||
        model_layout_build(&l, &mc, e) != 0)
        goto done;
    sparse = gp_alloc_or_fail((size_t)l.sparse_numel * sizeof(float), "item embeddings", e);
    dense = gp_alloc_or_fail((size_t)l.dense_numel * sizeof(float), "dense parameters", e);
    if (!sparse || !dense)
        goto done;
    model_init_params(&l, sparse, dense, (uint64_t)s->seed);
    if (o->checkpoint && o->checkpoint[0]) {
        int loaded = 0;
        char missing[1024] = "";
        if (checkpoint_load_params(o->checkpoint, &l, sparse, dense, TRANSFER_FULL, &loaded, missing, sizeof missing,
                                   e) != 0)
            goto done;
        if (sum) {
            sum->n_loaded = loaded;
            snprintf(sum->kept_fresh, sizeof sum->kept_fresh, "%s", missing);
        }
    }
    if (o->bf16_weights)
        for (int t = 0; t < l.n_tensors; t++)
            if (l.tensors[t].kind == TENSOR_LINEAR)
                for (int64_t i = 0; i < l.tensors[t].numel; i++)
                    dense[l.tensors[t].offset + i] = round_bf16(dense[l.tensors[t].offset + i]);
    batch_alloc(&x, (int)s->batch_size, (int)s->max_history, (int)s->n_negatives);
    if (parity_select_batch(s, &ds, o->micro_step, &x, sum, e) != 0)
        goto done;
    backend_opts bo = backend_opts_from_settings(s, (int)s->batch_size);
    be = backend_create(s->device, &l, &bo, e);
    if (!be || be->set_params(be, sparse, dense, e) != 0)
        goto done;
    char micro[32], seed[32];
    snprintf(micro, sizeof micro, "%lld", (long long)o->micro_step);
    snprintf(seed, sizeof seed, "%lld", (long long)s->seed);
    const char *extra[] = {"data", s->data, "micro_step", micro, "seed", seed,
                           "checkpoint", o->checkpoint ? o->checkpoint : "", "bf16_weights",
                           o->bf16_weights ? "True" : "False", NULL};
    parity_meta m = {.stage = settings_stage_name(s->stage), .multiple_of = (int)s->multiple_of,
                     .freeze_sparse = s->freeze_sparse, .extra = extra};
    if (parity_run_and_write(be, &l, sparse, dense, &x, &m, o->out, sum, e) != 0)
        goto done;
    rc = 0;
done:
    backend_destroy(be);
    batch_free(&x);
    gp_free_aligned(sparse);
    gp_free_aligned(dense);
    model_layout_free(&l);
    dataset_close(&ds);
    return rc;
}

#ifndef PARITY_DUMP_NO_MAIN
static void usage(FILE *f)
{
    fprintf(f, "usage: parity_dump [CONFIG...] [--set key=value | --KEY VALUE]... --out FILE\n"
               "                   [--checkpoint FILE] [--micro-step K] [--bf16-weights]\n\n"
               "Writes the trainer's micro-batch K of `data` (stage, batch_size, grad_accum, seed as set), the\n"
               "parameters (the seed's initialisation or a checkpoint), and the losses, rank outputs and gradients\n"
               "of one forward_backward on `device`, in the shared/golden format, for tools/parity.py.\n");
    cli_print_keys(f);
}

int main(int argc, char **argv)
{
    parity_opts o = {0};
    gp_err e = {{0}};
    char **rest = gp_xcalloc((size_t)argc + 1, sizeof *rest);
    int n = 0;
    rest[n++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--out") == 0 || strcmp(a, "--checkpoint") == 0 || strcmp(a, "--micro-step") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "parity_dump: error: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (strcmp(a, "--out") == 0)
                o.out = v;
            else if (strcmp(a, "--checkpoint") == 0)
                o.checkpoint = v;
            else if (gp_parse_i64(v, &o.micro_step) != 0 || o.micro_step < 0) {
                fprintf(stderr, "parity_dump: error: --micro-step %s is not a non-negative integer\n", v);
                return 2;
            }
        } else if (strcmp(a, "--bf16-weights") == 0) {
            o.bf16_weights = 1;
        } else {
            rest[n++] = argv[i];
        }
    }
    cfg_list l = {0};
    gp_settings s;
    int stage = STAGE_PRETRAIN;
    int rc = cli_collect_settings(n, rest, NULL, NULL, &l, NULL, NULL, usage, &e);
    if (rc == 1)
        return 0;
    if (rc != 0 || settings_stage_of(&l, &stage, &e) != 0 || settings_resolve(&l, stage, &s, NULL, &e) != 0 ||
        settings_validate(&s, &e) != 0)
        goto fail;
    parity_summary sum = {0};
    if (parity_dump(&s, &o, &sum, &e) != 0)
        goto fail;
    if (o.checkpoint)
        printf("parity_dump: %d tensor(s) from %s%s%s\n", sum.n_loaded, o.checkpoint,
               sum.kept_fresh[0] ? "; initialised (not in the checkpoint): " : "", sum.kept_fresh);
    printf("parity_dump: %s: %s backend, %s, L%lldH%lldA%lld, batch %d (epoch %lld, records %lld..%lld of the "
           "order), micro-step %lld: loss %.9g (item %.9g, cate %.9g, rank %.9g)\n",
           o.out, sum.backend, settings_stage_name(s.stage), (long long)s.n_layers, (long long)s.dim,
           (long long)s.n_heads, sum.B, (long long)sum.epoch + 1, (long long)sum.first_record,
           (long long)(sum.first_record + sum.B - 1), (long long)o.micro_step, sum.losses.loss, sum.losses.item_loss,
           sum.losses.cate_loss, sum.losses.rank_loss);
    cfg_list_free(&l);
    free(rest);
    return 0;
fail:
    fprintf(stderr, "parity_dump: error: %s\n", e.msg);
    cfg_list_free(&l);
    free(rest);
    return 1;
}
#endif
