/* The CUDA backend against the CPU reference: the official golden vectors, random models and
 * batches (losses and every gradient), one optimizer step, next-item ranking, and a 50-step
 * training run whose loss curve must follow the CPU's. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda/attention_cudnn.h"
#include "dataset.h"
#include "gpu/gpu_check.h"
#include "kernels.h"
#include "model.h"
#include "settings.h"
#include "support/golden.h"
#include "test.h"
#include "train.h"

/* bf16 compute against the fp32 reference. */
#define LOSS_TOL 1e-2
#define GRAD_TOL 3e-2
/* The CTR loss of a freshly initialised model is a sum of per-sample terms of both signs that
 * mostly cancel, which makes its gradient sensitive to rounding anywhere in the network: on the
 * CPU alone, rounding the weights to bf16 moves these gradients by about 5% (L2H256, 200
 * positions; see benchmarks/results/2026-11-28_h200_cuda_backend.md). bf16 activations on top of
 * that give 3-12% on the GPU (12% on the official model's finetune golden vectors, 4 samples),
 * so the finetune cases are held to 15%. */
#define GRAD_TOL_FINETUNE 1.5e-1

static void compare_tensors(const model_layout *l, const float *gs, const float *gd, const float *ws, const float *wd,
                            double tol, const char *what)
{
    for (int t = 0; t < l->n_tensors; t++) {
        const tensor_info *ti = &l->tensors[t];
        const float *got = (ti->arena == ARENA_SPARSE ? gs : gd) + ti->offset;
        const float *want = (ti->arena == ARENA_SPARSE ? ws : wd) + ti->offset;
        double norm = 0;
        for (int64_t i = 0; i < ti->numel; i++)
            norm += (double)want[i] * want[i];
        if (norm == 0) {
            double mx = 0;
            for (int64_t i = 0; i < ti->numel; i++)
                mx = fmax(mx, fabs(got[i]));
            if (!(mx <= 1e-6))
                test_failure(__FILE__, __LINE__, "%s: %s should be zero, max |got| %.3g", what, ti->name, mx);
            continue;
        }
        double r = rel_error(got, want, ti->numel);
        if (!(r <= tol))
            test_failure(__FILE__, __LINE__, "%s: %s relative error %.3g > %.3g", what, ti->name, r, tol);
    }
}

static void check_rel(double got, double want, double tol, const char *what)
{
    if (!(fabs(got - want) <= tol * fabs(want) + 1e-6))
        test_failure(__FILE__, __LINE__, "%s: %.7g vs reference %.7g", what, got, want);
}

static void run_golden_on_gpu(const char *name)
{
    REQUIRE(gpu_present(), "no GPU");
    golden_case g;
    gp_err e = {{0}};
    if (golden_load(&g, name, &e) != 0) {
        test_failure(__FILE__, __LINE__, "%s", e.msg);
        golden_free(&g);
        return;
    }
    const model_layout *l = &g.layout;
    backend_opts opts = {.max_batch = g.x.B};
    backend *b = backend_cuda_create(l, &opts, &e);
    REQUIRE(b, "%s", e.msg);
    REQUIRE(b->set_params(b, g.sparse, g.dense, &e) == 0, "%s", e.msg);
    step_losses out;
    float prob[64];
    REQUIRE(b->forward_backward(b, &g.x, 1.0f, &out, prob, &e) == 0, "%s", e.msg);
    check_rel(out.loss, g.loss, LOSS_TOL, "loss");
    check_rel(out.item_loss, g.item_loss, LOSS_TOL, "item loss");
    check_rel(out.cate_loss, g.cate_loss, LOSS_TOL, "cate loss");
    check_rel(out.rank_loss, g.rank_loss, LOSS_TOL, "rank loss");
    if (l->cfg.w_rank > 0)
        for (int i = 0; i < g.x.B; i++)
            check_rel(prob[i], g.rank_outputs[i], LOSS_TOL, "rank output");
    float *gs = gp_xcalloc((size_t)l->sparse_numel, sizeof(float)), *gd = gp_xcalloc((size_t)l->dense_numel, sizeof(float));
    REQUIRE(b->get_grads(b, gs, gd, &e) == 0, "%s", e.msg);
    compare_tensors(l, gs, gd, g.grad_sparse, g.grad_dense, l->cfg.w_rank > 0 ? GRAD_TOL_FINETUNE : GRAD_TOL, name);
    free(gs);
    free(gd);
    backend_destroy(b);
    golden_free(&g);
}

TEST(gpu_golden_pretrain_l2h16a4) { run_golden_on_gpu("pretrain_l2h16a4.safetensors"); }
TEST(gpu_golden_finetune_l2h16a4) { run_golden_on_gpu("finetune_l2h16a4.safetensors"); }
TEST(gpu_golden_finetune_bidirectional) { run_golden_on_gpu("finetune_l2h16a4_bidirectional.safetensors"); }
TEST(gpu_golden_pretrain_emb8) { run_golden_on_gpu("pretrain_l1h32a4_emb8.safetensors"); }
TEST(gpu_golden_finetune_l2h64a4_long) { run_golden_on_gpu("finetune_l2h64a4_long.safetensors"); }
TEST(gpu_golden_pretrain_l2h64a4_long) { run_golden_on_gpu("pretrain_l2h64a4_long.safetensors"); }

/* A random model and batch of the given shape; both backends run it. */
typedef struct {
    int dim, layers, heads, emb, S, B, N, causal, stage;
    int64_t items, cates;
    int no_l2, logq; /* both 0 by default: the heads L2-normalise, no logQ correction */
} rand_case;

static void random_batch(batch *x, const rand_case *rc, gp_rng *r)
{
    batch_alloc(x, rc->B, rc->S, rc->N);
    x->B = rc->B;
    for (int b = 0; b < rc->B; b++) {
        int n = 1 + (int)gp_rng_below(r, (uint32_t)rc->S);
        if (b == 0)
            n = rc->S; /* one full-length sequence */
        x->hist_len[b] = n;
        for (int k = 0; k < rc->S; k++) {
            int real = k < n;
            x->hist_item[b * rc->S + k] = real ? 1 + (int32_t)gp_rng_below(r, (uint32_t)rc->items - 1) : 0;
            x->hist_cate[b * rc->S + k] = real ? 1 + (int32_t)gp_rng_below(r, (uint32_t)rc->cates - 1) : 0;
            x->item_label[b * rc->S + k] = LABEL_IGNORE;
            x->cate_label[b * rc->S + k] = LABEL_IGNORE;
        }
        x->target_item[b] = 1 + (int32_t)gp_rng_below(r, (uint32_t)rc->items - 1);
        x->target_cate[b] = 1 + (int32_t)gp_rng_below(r, (uint32_t)rc->cates - 1);
        if (rc->stage == STAGE_PRETRAIN) {
            x->click[b] = 2;
            for (int k = 0; k < n; k++) {
                x->item_label[b * rc->S + k] = k + 1 < n ? x->hist_item[b * rc->S + k + 1] : x->target_item[b];
                x->cate_label[b * rc->S + k] = k + 1 < n ? x->hist_cate[b * rc->S + k + 1] : x->target_cate[b];
            }
        } else {
            x->click[b] = (int32_t)gp_rng_below(r, 2);
        }
        x->user[b] = (uint32_t)b;
    }
    for (int64_t i = 0; i < (int64_t)rc->B * rc->N; i++)
        x->negatives[i] = (int32_t)gp_rng_below(r, (uint32_t)rc->items);
    /* Plant accidental hits: a negative equal to a label of its sequence. */
    if (rc->N > 2 && rc->stage == STAGE_PRETRAIN)
        x->negatives[1] = x->item_label[0];
}

static int make_layout(model_layout *l, const rand_case *rc, gp_err *e)
{
    gp_settings s;
    cfg_list cl = {0};
    if (cfg_parse_text(&cl, settings_stage_defaults, "stage defaults", e) != 0 ||
        settings_resolve(&cl, rc->stage, &s, NULL, e) != 0)
        return -1;
    cfg_list_free(&cl);
    s.dim = rc->dim;
    s.n_layers = rc->layers;
    s.n_heads = rc->heads;
    s.embedding_dim = rc->emb;
    s.max_history = rc->S;
    s.n_negatives = rc->N;
    s.attention = rc->causal ? ATTN_CAUSAL : ATTN_BIDIRECTIONAL;
    s.l2_norm = !rc->no_l2;
    s.logq_correction = rc->logq;
    model_config c;
    if (model_config_from_settings(&c, &s, rc->items, rc->cates, e) != 0)
        return -1;
    return model_layout_build(l, &c, e);
}

static void run_random_case_with(const rand_case *rc, uint64_t seed, int attention_kernel, int softmax_kernel)
{
    REQUIRE(gpu_present(), "no GPU");
    gp_err e = {{0}};
    model_layout l;
    REQUIRE(make_layout(&l, rc, &e) == 0, "%s", e.msg);
    float *sparse = gp_xcalloc((size_t)l.sparse_numel, sizeof(float)), *dense = gp_xcalloc((size_t)l.dense_numel, sizeof(float));
    model_init_params(&l, sparse, dense, seed);
    /* Both backends compute with the same weights: the GPU's GEMMs read bf16 copies, so the CPU
     * gets the linear weights rounded to bf16 too. Without this, rounding the weights alone moves
     * the CPU's own gradients by several percent (measured: 5% at the 0.02 init, over 100% at 5x
     * that scale, where attention becomes sharp and the gradient ill-conditioned). */
    for (int t = 0; t < l.n_tensors; t++)
        if (l.tensors[t].kind == TENSOR_LINEAR)
            for (int64_t i = 0; i < l.tensors[t].numel; i++)
                dense[l.tensors[t].offset + i] = bf16_round(dense[l.tensors[t].offset + i]);
    batch x;
    gp_rng r = gp_rng_stream(seed, RNG_PURPOSE_TEST, 77, 0);
    random_batch(&x, rc, &r);
    backend_opts opts = {.max_batch = rc->B, .attention_kernel = attention_kernel,
                         .sampled_softmax_kernel = softmax_kernel};
    backend *cpu = backend_cpu_create(&l, &opts, &e), *gpu = backend_cuda_create(&l, &opts, &e);
    REQUIRE(cpu && gpu, "%s", e.msg);
    REQUIRE(cpu->set_params(cpu, sparse, dense, &e) == 0 && gpu->set_params(gpu, sparse, dense, &e) == 0, "%s", e.msg);
    step_losses lc, lg;
    float *pc = gp_xcalloc((size_t)rc->B, sizeof(float)), *pg = gp_xcalloc((size_t)rc->B, sizeof(float));
    REQUIRE(cpu->forward_backward(cpu, &x, 0.5f, &lc, pc, &e) == 0, "%s", e.msg);
    REQUIRE(gpu->forward_backward(gpu, &x, 0.5f, &lg, pg, &e) == 0, "%s", e.msg);
    check_rel(lg.loss, lc.loss, LOSS_TOL, "loss");
    check_rel(lg.item_loss, lc.item_loss, LOSS_TOL, "item loss");
    check_rel(lg.cate_loss, lc.cate_loss, LOSS_TOL, "cate loss");
    check_rel(lg.rank_loss, lc.rank_loss, LOSS_TOL, "rank loss");
    CHECK(lg.item_count == lc.item_count && lg.cate_count == lc.cate_count && lg.rank_count == lc.rank_count);
    if (l.cfg.w_rank > 0)
        CHECK_REL(pg, pc, rc->B, LOSS_TOL, "rank probabilities");
    float *gcs = gp_xcalloc((size_t)l.sparse_numel, 4), *gcd = gp_xcalloc((size_t)l.dense_numel, 4);
    float *ggs = gp_xcalloc((size_t)l.sparse_numel, 4), *ggd = gp_xcalloc((size_t)l.dense_numel, 4);
    REQUIRE(cpu->get_grads(cpu, gcs, gcd, &e) == 0 && gpu->get_grads(gpu, ggs, ggd, &e) == 0, "%s", e.msg);
    compare_tensors(&l, ggs, ggd, gcs, gcd, rc->stage == STAGE_FINETUNE ? GRAD_TOL_FINETUNE : GRAD_TOL,
                    "random model gradients");
    /* One optimizer step from these gradients: parameters stay within bf16 tolerance. */
    optim_hparams h = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-8, .weight_decay = 0.1, .max_grad_norm = 1.0,
                       .step = 1};
    double nc, ng;
    REQUIRE(cpu->optimizer_step(cpu, &h, &nc, &e) == 0 && gpu->optimizer_step(gpu, &h, &ng, &e) == 0, "%s", e.msg);
    check_rel(ng, nc, GRAD_TOL, "gradient norm");
    float *pcs = gp_xcalloc((size_t)l.sparse_numel, 4), *pcd = gp_xcalloc((size_t)l.dense_numel, 4);
    float *pgs = gp_xcalloc((size_t)l.sparse_numel, 4), *pgd = gp_xcalloc((size_t)l.dense_numel, 4);
    REQUIRE(cpu->get_params(cpu, pcs, pcd, &e) == 0 && gpu->get_params(gpu, pgs, pgd, &e) == 0, "%s", e.msg);
    /* Adam's first step moves each weight by about lr * sign(g), so an element whose gradient
     * sign bf16 noise flips moves 2 lr the other way; only the pretraining cases, whose gradients
     * agree to 3%, are compared after the step (the AdamW kernel itself is checked against
     * cpu_adamw to 1e-5 in test_kernels_basic.c). */
    if (rc->stage == STAGE_PRETRAIN)
        compare_tensors(&l, pgs, pgd, pcs, pcd, 1e-2, "parameters after one step");
    /* The frozen-table variant's gradients were not taken above; ranking against the catalogue: */
    if (rc->stage == STAGE_PRETRAIN) {
        int64_t *rk_c = gp_xcalloc((size_t)rc->B, sizeof(int64_t)), *rk_g = gp_xcalloc((size_t)rc->B, sizeof(int64_t));
        REQUIRE(cpu->rank_targets(cpu, &x, rk_c, &e) == 0 && gpu->rank_targets(gpu, &x, rk_g, &e) == 0, "%s", e.msg);
        for (int b = 0; b < rc->B; b++)
            CHECK(llabs(rk_c[b] - rk_g[b]) <= 2 + rc->items / 100, "rank of sequence %d: cpu %lld gpu %lld", b,
                  (long long)rk_c[b], (long long)rk_g[b]);
        /* Evaluation ranks batches the model never stepped on, a short one last: the GPU must
         * rank these, not the metadata the step left on the device. */
        for (int round = 0; round < 2; round++) {
            batch y;
            random_batch(&y, rc, &r);
            if (round == 1)
                y.B = GP_MAX(1, rc->B - 3);
            REQUIRE(cpu->rank_targets(cpu, &y, rk_c, &e) == 0 && gpu->rank_targets(gpu, &y, rk_g, &e) == 0, "%s",
                    e.msg);
            for (int b = 0; b < y.B; b++)
                CHECK(llabs(rk_c[b] - rk_g[b]) <= 2 + rc->items / 100,
                      "evaluation batch %d, rank of sequence %d: cpu %lld gpu %lld", round, b, (long long)rk_c[b],
                      (long long)rk_g[b]);
            batch_free(&y);
        }
        free(rk_c);
        free(rk_g);
    }
    free(pc);
    free(pg);
    free(gcs);
    free(gcd);
    free(ggs);
    free(ggd);
    free(pcs);
    free(pcd);
    free(pgs);
    free(pgd);
    free(sparse);
    free(dense);
    batch_free(&x);
    backend_destroy(cpu);
    backend_destroy(gpu);
    model_layout_free(&l);
}

/* Each random case runs with the own attention kernels and, where cuDNN takes the shape, with
 * cuDNN's fused attention; a pretraining case whose item head takes the fused sampled softmax
 * (the default there) runs once more with the GEMM path. */
static void run_random_case(const rand_case *rc, uint64_t seed)
{
    run_random_case_with(rc, seed, ATTN_KERNEL_OWN, SOFTMAX_KERNEL_AUTO);
    if (rc->N > 0 && k_sampled_softmax_fused_supported(rc->S, rc->emb ? rc->emb : rc->dim)) {
        printf("    (item head through the GEMM path)\n");
        run_random_case_with(rc, seed, ATTN_KERNEL_OWN, SOFTMAX_KERNEL_GEMM);
    }
    int hd = rc->dim / rc->heads;
    char why[200];
    cudnn_attn_shape sh = {.n_heads = rc->heads, .head_dim = hd, .max_len = rc->S + 1, .max_seq = rc->B,
                           .causal = rc->causal};
    if (cudnn_attn_supported(&sh, why, sizeof why))
        run_random_case_with(rc, seed, ATTN_KERNEL_CUDNN, SOFTMAX_KERNEL_AUTO);
    else
        printf("    (cuDNN attention skipped: %s)\n", why);
}

TEST(gpu_random_pretrain_h64)
{
    rand_case rc = {.dim = 64, .layers = 2, .heads = 4, .emb = 0, .S = 30, .B = 48, .N = 128, .causal = 1,
                    .stage = STAGE_PRETRAIN, .items = 700, .cates = 23};
    run_random_case(&rc, 11);
}

TEST(gpu_random_pretrain_projected_hd8)
{
    rand_case rc = {.dim = 32, .layers = 1, .heads = 4, .emb = 16, .S = 50, .B = 9, .N = 64, .causal = 1,
                    .stage = STAGE_PRETRAIN, .items = 300, .cates = 7};
    run_random_case(&rc, 12);
}

/* Without L2 normalisation the negatives' gradient takes the other path (bf16 rows to fp32, the
 * plain scatter) and the heads copy instead of normalising; logQ correction on, through the fused
 * item head and the GEMM path. */
TEST(gpu_random_pretrain_no_l2_logq)
{
    rand_case rc = {.dim = 64, .layers = 2, .heads = 4, .emb = 0, .S = 30, .B = 40, .N = 96, .causal = 1,
                    .stage = STAGE_PRETRAIN, .items = 600, .cates = 19, .no_l2 = 1, .logq = 1};
    run_random_case(&rc, 15);
}

/* logQ correction with L2 normalisation, through a projected head (emb 32 of dim 64) */
TEST(gpu_random_pretrain_logq_projected)
{
    rand_case rc = {.dim = 64, .layers = 1, .heads = 2, .emb = 32, .S = 24, .B = 16, .N = 80, .causal = 1,
                    .stage = STAGE_PRETRAIN, .items = 400, .cates = 9, .logq = 1};
    run_random_case(&rc, 16);
}

TEST(gpu_random_finetune_hd32_bidirectional)
{
    rand_case rc = {.dim = 128, .layers = 2, .heads = 4, .emb = 0, .S = 40, .B = 64, .N = 0, .causal = 0,
                    .stage = STAGE_FINETUNE, .items = 500, .cates = 12};
    run_random_case(&rc, 13);
}

TEST(gpu_random_finetune_hd64_long)
{
    rand_case rc = {.dim = 256, .layers = 2, .heads = 4, .emb = 0, .S = 200, .B = 32, .N = 0, .causal = 1,
                    .stage = STAGE_FINETUNE, .items = 1000, .cates = 40};
    run_random_case(&rc, 14);
}

/* ---- a 50-step training run on both backends ---- */

static int write_random_dataset(const char *path, gp_err *e)
{
    const int users = 600, per_user = 30;
    const uint64_t n_items = 400, n_cates = 17;
    uint32_t *item_cate = gp_xcalloc(n_items, 4);
    for (uint64_t i = 1; i < n_items; i++)
        item_cate[i] = 1 + (uint32_t)(i % (n_cates - 1));
    uint32_t *ti = gp_xcalloc((size_t)users * per_user, 4), *tc = gp_xcalloc((size_t)users * per_user, 4);
    ds_record *recs = gp_xcalloc((size_t)users * 3, sizeof *recs);
    gp_rng r = gp_rng_stream(5, RNG_PURPOSE_TEST, 0, 0);
    uint64_t nr = 0;
    for (int u = 0; u < users; u++) {
        /* Users walk through items in runs so there is structure to learn. */
        uint32_t item = 1 + gp_rng_below(&r, (uint32_t)n_items - 1);
        for (int k = 0; k < per_user; k++) {
            if (gp_rng_below(&r, 4) == 0)
                item = 1 + gp_rng_below(&r, (uint32_t)n_items - 1);
            else
                item = 1 + (item % ((uint32_t)n_items - 1));
            ti[(size_t)u * per_user + k] = item;
            tc[(size_t)u * per_user + k] = item_cate[item];
        }
        uint64_t off = (uint64_t)u * per_user;
        uint32_t last = ti[off + per_user - 1];
        recs[nr++] = (ds_record){.offset = off, .hist_len = per_user - 2, .user = (uint32_t)u,
                                 .item = ti[off + per_user - 2], .cate = item_cate[ti[off + per_user - 2]], .label = 2,
                                 .split = DS_SPLIT_PRETRAIN};
        int split = u % 5 == 0 ? DS_SPLIT_TEST : DS_SPLIT_TRAIN;
        uint32_t neg = 1 + gp_rng_below(&r, (uint32_t)n_items - 1);
        if (neg == last)
            neg = 1 + (neg % ((uint32_t)n_items - 1));
        recs[nr++] = (ds_record){.offset = off, .hist_len = per_user - 1, .user = (uint32_t)u, .item = last,
                                 .cate = item_cate[last], .label = 1, .split = (uint8_t)split};
        recs[nr++] = (ds_record){.offset = off, .hist_len = per_user - 1, .user = (uint32_t)u, .item = neg,
                                 .cate = item_cate[neg], .label = 0, .split = (uint8_t)split};
    }
    ds_contents c = {.n_items = n_items, .n_cates = n_cates, .n_users = users, .n_tokens = (uint64_t)users * per_user,
                     .n_records = nr, .item_cate = item_cate, .tok_item = ti, .tok_cate = tc, .records = recs,
                     .max_history = per_user, .seed = 5, .producer = "gpu test", .description = "random walks"};
    int rc = dataset_write(path, &c, e);
    free(item_cate);
    free(ti);
    free(tc);
    free(recs);
    return rc;
}

/* Reads the "loss" of every train line of a log.jsonl. */
static int read_losses(const char *log, double *out, int max)
{
    char *text;
    size_t len;
    gp_err e;
    if (gp_read_file(log, &text, &len, &e) != 0)
        return -1;
    int n = 0;
    for (char *p = text; (p = strstr(p, "\"event\":\"train\"")) && n < max; p++) {
        char *q = strstr(p, "\"loss\":");
        if (q)
            out[n++] = strtod(q + 7, NULL);
    }
    free(text);
    return n;
}

TEST(gpu_training_run_follows_cpu)
{
    REQUIRE(gpu_present(), "no GPU");
    char *data = gp_path_join(test_tmp_dir(), "walks.gpsd");
    gp_err e = {{0}};
    REQUIRE(write_random_dataset(data, &e) == 0, "%s", e.msg);
    /* runs: the CPU, the GPU, the GPU with the loader's thread off */
    double curves[3][64];
    for (int dev = 0; dev < 3; dev++) {
        cfg_list l = {0};
        REQUIRE(cfg_parse_text(&l, settings_stage_defaults, "stage defaults", &e) == 0, "%s", e.msg);
        char text[1024];
        snprintf(text, sizeof text,
                 "data = %s\ndim = 32\nn_layers = 2\nn_heads = 2\nmax_history = 30\nn_negatives = 64\n"
                 "batch_size = 32\nmax_steps = 50\nwarmup_steps = 5\nlog_every = 1\neval_max_samples = 64\n"
                 "out_dir = %s/run_%d\ndevice = %s\nprefetch = %s\n"
                 /* not auto: the start-up probe's timing could pick differently in the two GPU runs */
                 "attention_kernel = own\n",
                 data, test_tmp_dir(), dev, dev ? "cuda" : "cpu", dev == 2 ? "false" : "true");
        REQUIRE(cfg_parse_text(&l, text, "test", &e) == 0, "%s", e.msg);
        gp_settings s;
        REQUIRE(settings_resolve(&l, STAGE_PRETRAIN, &s, NULL, &e) == 0, "%s", e.msg);
        train_result res;
        REQUIRE(train_run(&s, NULL, NULL, &res, &e) == 0, "%s", e.msg);
        char log[1200];
        snprintf(log, sizeof log, "%s/log.jsonl", s.out_dir);
        REQUIRE(read_losses(log, curves[dev], 64) == 50, "log %s", log);
        cfg_list_free(&l);
    }
    /* The loss must fall, and the GPU curve follow the CPU's within bf16 tolerance. */
    CHECK(curves[0][49] < curves[0][0] - 0.5, "CPU loss %.4f -> %.4f", curves[0][0], curves[0][49]);
    for (int i = 0; i < 50; i++)
        CHECK(fabs(curves[1][i] - curves[0][i]) <= 0.02 * fabs(curves[0][i]) + 0.02, "step %d: gpu %.4f cpu %.4f", i + 1,
              curves[1][i], curves[0][i]);
    /* the loader's thread changes when batches are built, not what the deterministic backend computes */
    for (int i = 0; i < 50; i++)
        CHECK(curves[2][i] == curves[1][i], "step %d: gpu %.9g with prefetch, %.9g without", i + 1, curves[1][i],
              curves[2][i]);
    free(data);
}

/* The same full-length batch three times: launched kernel by kernel, then captured into a CUDA
 * graph, then replayed. All three must give the same loss, and the accumulated gradients three
 * times the first. */
static void graph_case(int attention_kernel)
{
    REQUIRE(gpu_present(), "no GPU");
    rand_case rc = {.dim = 64, .layers = 2, .heads = 4, .emb = 0, .S = 20, .B = 16, .N = 64, .causal = 1,
                    .stage = STAGE_PRETRAIN, .items = 300, .cates = 9};
    gp_err e = {{0}};
    model_layout l;
    REQUIRE(make_layout(&l, &rc, &e) == 0, "%s", e.msg);
    float *sparse = gp_xcalloc((size_t)l.sparse_numel, 4), *dense = gp_xcalloc((size_t)l.dense_numel, 4);
    model_init_params(&l, sparse, dense, 21);
    batch x;
    gp_rng r = gp_rng_stream(3, RNG_PURPOSE_TEST, 0, 0);
    random_batch(&x, &rc, &r);
    for (int b = 0; b < x.B; b++) /* full length, so every call has the same shape */
        x.hist_len[b] = rc.S;
    for (int b = 0; b < x.B; b++)
        for (int k = 0; k < rc.S; k++) {
            x.hist_item[b * rc.S + k] = 1 + (b * 7 + k) % 299;
            x.hist_cate[b * rc.S + k] = 1 + k % 8;
            x.item_label[b * rc.S + k] = k + 1 < rc.S ? x.hist_item[b * rc.S + k + 1] : x.target_item[b];
            x.cate_label[b * rc.S + k] = k + 1 < rc.S ? x.hist_cate[b * rc.S + k + 1] : x.target_cate[b];
        }
    backend_opts opts = {.max_batch = rc.B, .attention_kernel = attention_kernel};
    backend *g = backend_cuda_create(&l, &opts, &e);
    REQUIRE(g && g->set_params(g, sparse, dense, &e) == 0, "%s", e.msg);
    step_losses s1, s2, s3;
    float *g1 = gp_xcalloc((size_t)l.dense_numel, 4), *g3 = gp_xcalloc((size_t)l.dense_numel, 4);
    REQUIRE(g->forward_backward(g, &x, 1.0f, &s1, NULL, &e) == 0, "%s", e.msg);
    REQUIRE(g->get_grads(g, NULL, g1, &e) == 0, "%s", e.msg);
    REQUIRE(g->forward_backward(g, &x, 1.0f, &s2, NULL, &e) == 0, "%s", e.msg);
    REQUIRE(g->forward_backward(g, &x, 1.0f, &s3, NULL, &e) == 0, "%s", e.msg);
    REQUIRE(g->get_grads(g, NULL, g3, &e) == 0, "%s", e.msg);
    CHECK(s1.loss == s2.loss && s2.loss == s3.loss, "losses %.9g %.9g %.9g", s1.loss, s2.loss, s3.loss);
    for (int64_t i = 0; i < l.dense_numel; i++)
        g1[i] *= 3.0f;
    CHECK_REL(g3, g1, l.dense_numel, 1e-6, "three accumulated steps");
    /* a short batch after the captured shape: another attention plan, launched directly */
    x.B = 5;
    step_losses s4;
    REQUIRE(g->forward_backward(g, &x, 1.0f, &s4, NULL, &e) == 0, "%s", e.msg);
    CHECK(isfinite(s4.loss) && s4.loss > 0, "short batch loss %g", s4.loss);
    x.B = rc.B;
    free(g1);
    free(g3);
    free(sparse);
    free(dense);
    batch_free(&x);
    backend_destroy(g);
    model_layout_free(&l);
}

TEST(gpu_graph_capture_and_replay_match_direct) { graph_case(ATTN_KERNEL_OWN); }
TEST(gpu_graph_capture_and_replay_match_direct_cudnn) { graph_case(ATTN_KERNEL_CUDNN); }

/* recompute_blocks = true recomputes every block but the last from its stored input before its
 * backward, recompute_ffn = true (ffn_only) the gate/up products: the same kernels on the same
 * values, so losses, rank outputs and every gradient must equal those of the stored activations
 * to the bit: the full batch launched directly, captured into a CUDA graph (its second time in a
 * row) and replayed (its third), then a smaller batch. */
static void recompute_case(const rand_case *rc, uint64_t seed, int attention_kernel, int ffn_only)
{
    REQUIRE(gpu_present(), "no GPU");
    gp_err e = {{0}};
    model_layout l;
    REQUIRE(make_layout(&l, rc, &e) == 0, "%s", e.msg);
    float *sparse = gp_xcalloc((size_t)l.sparse_numel, 4), *dense = gp_xcalloc((size_t)l.dense_numel, 4);
    model_init_params(&l, sparse, dense, seed);
    batch x;
    gp_rng r = gp_rng_stream(seed, RNG_PURPOSE_TEST, 91, 0);
    random_batch(&x, rc, &r);
    backend_opts stored = {.max_batch = rc->B, .attention_kernel = attention_kernel};
    backend_opts again = stored;
    again.recompute_blocks = !ffn_only;
    again.recompute_ffn = ffn_only;
    backend *g0 = backend_cuda_create(&l, &stored, &e), *g1 = backend_cuda_create(&l, &again, &e);
    REQUIRE(g0 && g1, "%s", e.msg);
    REQUIRE(g0->set_params(g0, sparse, dense, &e) == 0 && g1->set_params(g1, sparse, dense, &e) == 0, "%s", e.msg);
    float *s0 = gp_xcalloc((size_t)l.sparse_numel, 4), *d0 = gp_xcalloc((size_t)l.dense_numel, 4);
    float *s1 = gp_xcalloc((size_t)l.sparse_numel, 4), *d1 = gp_xcalloc((size_t)l.dense_numel, 4);
    float *p0 = gp_xcalloc((size_t)rc->B, 4), *p1 = gp_xcalloc((size_t)rc->B, 4);
    const int full = x.B;
    for (int pass = 0; pass < 4; pass++) {
        x.B = pass < 3 ? full : (full + 1) / 2;
        step_losses l0, l1;
        REQUIRE(g0->forward_backward(g0, &x, 0.5f, &l0, p0, &e) == 0, "%s", e.msg);
        REQUIRE(g1->forward_backward(g1, &x, 0.5f, &l1, p1, &e) == 0, "%s", e.msg);
        CHECK(l0.loss == l1.loss && l0.item_loss == l1.item_loss && l0.cate_loss == l1.cate_loss &&
                  l0.rank_loss == l1.rank_loss,
              "batch %d: loss %.9g recomputed %.9g", x.B, l0.loss, l1.loss);
        CHECK(memcmp(p0, p1, (size_t)x.B * 4) == 0, "batch %d: rank outputs differ", x.B);
        /* gradients accumulate over the two passes in both backends */
        REQUIRE(g0->get_grads(g0, s0, d0, &e) == 0 && g1->get_grads(g1, s1, d1, &e) == 0, "%s", e.msg);
        for (int t = 0; t < l.n_tensors; t++) {
            const tensor_info *ti = &l.tensors[t];
            const float *a = (ti->arena == ARENA_SPARSE ? s0 : d0) + ti->offset;
            const float *b = (ti->arena == ARENA_SPARSE ? s1 : d1) + ti->offset;
            CHECK(memcmp(a, b, (size_t)ti->numel * 4) == 0, "batch %d: gradient of %s differs when recomputed", x.B,
                  ti->name);
        }
    }
    x.B = full;
    free(p0);
    free(p1);
    free(s0);
    free(d0);
    free(s1);
    free(d1);
    free(sparse);
    free(dense);
    batch_free(&x);
    backend_destroy(g0);
    backend_destroy(g1);
    model_layout_free(&l);
}

/* The two recomputation tests' models: pretraining, and projected bidirectional finetuning. */
static const rand_case RECOMPUTE_PRE = {.dim = 64, .layers = 3, .heads = 4, .emb = 0, .S = 30, .B = 24, .N = 64,
                                        .causal = 1, .stage = STAGE_PRETRAIN, .items = 500, .cates = 11};
static const rand_case RECOMPUTE_FIN = {.dim = 64, .layers = 3, .heads = 2, .emb = 32, .S = 40, .B = 20, .N = 0,
                                        .causal = 0, .stage = STAGE_FINETUNE, .items = 400, .cates = 9};

TEST(gpu_recompute_blocks_matches_stored)
{
    const rand_case pre = RECOMPUTE_PRE, fin = RECOMPUTE_FIN;
    recompute_case(&pre, 31, ATTN_KERNEL_OWN, 0);
    recompute_case(&fin, 32, ATTN_KERNEL_OWN, 0);
    char why[200];
    cudnn_attn_shape sh = {.n_heads = 4, .head_dim = 16, .max_len = pre.S + 1, .max_seq = pre.B, .causal = 1};
    if (cudnn_attn_supported(&sh, why, sizeof why))
        recompute_case(&pre, 33, ATTN_KERNEL_CUDNN, 0);
    else
        printf("    (cuDNN attention skipped: %s)\n", why);
}

TEST(gpu_recompute_ffn_matches_stored)
{
    recompute_case(&RECOMPUTE_PRE, 34, ATTN_KERNEL_OWN, 1);
    recompute_case(&RECOMPUTE_FIN, 35, ATTN_KERNEL_OWN, 1);
}

/* The batch metadata is packed by several host threads: one thread and seven (not a divisor of
 * the batch) must give the same losses and gradients to the bit, a bad id must be reported for
 * the first bad sequence with its value whatever the thread count, and a good batch after a
 * refused one must train as if nothing had happened. */
TEST(gpu_batch_packing_threads_and_bad_ids)
{
    REQUIRE(gpu_present(), "no GPU");
    rand_case rc = {.dim = 32, .layers = 1, .heads = 2, .emb = 0, .S = 12, .B = 37, .N = 40, .causal = 1,
                    .stage = STAGE_PRETRAIN, .items = 200, .cates = 7};
    gp_err e = {{0}};
    model_layout l;
    REQUIRE(make_layout(&l, &rc, &e) == 0, "%s", e.msg);
    float *sparse = gp_xcalloc((size_t)l.sparse_numel, 4), *dense = gp_xcalloc((size_t)l.dense_numel, 4);
    model_init_params(&l, sparse, dense, 5);
    batch x;
    gp_rng r = gp_rng_stream(5, RNG_PURPOSE_TEST, 93, 0);
    random_batch(&x, &rc, &r);
    backend_opts one = {.max_batch = rc.B, .attention_kernel = ATTN_KERNEL_OWN, .threads = 1};
    backend_opts seven = one;
    seven.threads = 7;
    backend *g1 = backend_cuda_create(&l, &one, &e), *g7 = backend_cuda_create(&l, &seven, &e);
    REQUIRE(g1 && g7, "%s", e.msg);
    REQUIRE(g1->set_params(g1, sparse, dense, &e) == 0 && g7->set_params(g7, sparse, dense, &e) == 0, "%s", e.msg);
    step_losses l1, l7;
    REQUIRE(g1->forward_backward(g1, &x, 1.0f, &l1, NULL, &e) == 0, "%s", e.msg);
    REQUIRE(g7->forward_backward(g7, &x, 1.0f, &l7, NULL, &e) == 0, "%s", e.msg);
    CHECK(l1.loss == l7.loss && l1.item_count == l7.item_count && l1.cate_count == l7.cate_count,
          "loss %.9g with one thread, %.9g with seven", l1.loss, l7.loss);
    float *a = gp_xcalloc((size_t)l.dense_numel, 4), *b = gp_xcalloc((size_t)l.dense_numel, 4);
    REQUIRE(g1->get_grads(g1, NULL, a, &e) == 0 && g7->get_grads(g7, NULL, b, &e) == 0, "%s", e.msg);
    CHECK(memcmp(a, b, (size_t)l.dense_numel * 4) == 0, "gradients differ between one and seven packing threads");

    struct {
        int32_t *slot, bad;
        const char *want;
    } cases[] = {
        {&x.hist_item[5 * rc.S + 0], 200, "sequence 5 position 0: item id 200 outside"},
        {&x.hist_cate[9 * rc.S + 0], -1, "sequence 9 position 0: category id -1 outside"},
        {&x.item_label[11 * rc.S + 0], 999, "sequence 11 position 0: item label 999 outside"},
        {&x.negatives[30 * rc.N + 3], 200, "sequence 30: negative id 200 outside"},
    };
    int32_t *later = &x.hist_item[33 * rc.S]; /* a second bad id further on: the first is named */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int32_t keep = *cases[i].slot, keep_later = *later;
        *cases[i].slot = cases[i].bad;
        *later = -5;
        for (int t = 0; t < 2; t++) {
            backend *g = t ? g7 : g1;
            gp_err be = {{0}};
            step_losses ls;
            int rc_step = g->forward_backward(g, &x, 1.0f, &ls, NULL, &be);
            int sequence_30_case = i == 3; /* negatives are checked after every sequence */
            CHECK(rc_step != 0, "bad id %d accepted", cases[i].bad);
            if (sequence_30_case)
                CHECK(strstr(be.msg, "sequence 33 position 0: item id -5") != NULL, "message: %s", be.msg);
            else
                CHECK(strstr(be.msg, cases[i].want) != NULL, "message '%s', expected '%s'", be.msg, cases[i].want);
        }
        *later = keep_later;
        if (i == 3) { /* alone, the bad negative is named */
            gp_err be = {{0}};
            step_losses ls;
            CHECK(g7->forward_backward(g7, &x, 1.0f, &ls, NULL, &be) != 0 && strstr(be.msg, cases[i].want) != NULL,
                  "message '%s', expected '%s'", be.msg, cases[i].want);
        }
        *cases[i].slot = keep;
    }
    /* the refused batches left nothing behind: gradients reset, the good batch gives the same */
    REQUIRE(g7->zero_grads(g7, &e) == 0, "%s", e.msg);
    REQUIRE(g7->forward_backward(g7, &x, 1.0f, &l7, NULL, &e) == 0, "%s", e.msg);
    REQUIRE(g7->get_grads(g7, NULL, b, &e) == 0, "%s", e.msg);
    CHECK(l7.loss == l1.loss, "loss after refused batches %.9g, before %.9g", l7.loss, l1.loss);
    CHECK(memcmp(a, b, (size_t)l.dense_numel * 4) == 0, "gradients after refused batches differ");
    free(a);
    free(b);
    free(sparse);
    free(dense);
    batch_free(&x);
    backend_destroy(g1);
    backend_destroy(g7);
    model_layout_free(&l);
}

/* sampled_softmax_kernel = fused on a shape the fused kernel does not take (embedding_dim 128) is
 * refused with the reason; auto takes the GEMM path there and builds. */
TEST(gpu_sampled_softmax_kernel_setting)
{
    REQUIRE(gpu_present(), "no GPU");
    rand_case rc = {.dim = 128, .layers = 1, .heads = 4, .emb = 0, .S = 20, .B = 4, .N = 16, .causal = 1,
                    .stage = STAGE_PRETRAIN, .items = 100, .cates = 5};
    gp_err e = {{0}};
    model_layout l;
    REQUIRE(make_layout(&l, &rc, &e) == 0, "%s", e.msg);
    backend_opts fused = {.max_batch = rc.B, .sampled_softmax_kernel = SOFTMAX_KERNEL_FUSED};
    backend *b = backend_cuda_create(&l, &fused, &e);
    CHECK(b == NULL && strstr(e.msg, "sampled_softmax_kernel = fused") && strstr(e.msg, "embedding_dim 128"),
          "fused on embedding_dim 128: %s", b ? "accepted" : e.msg);
    if (b)
        backend_destroy(b);
    gp_err e2 = {{0}};
    backend_opts autopick = {.max_batch = rc.B, .sampled_softmax_kernel = SOFTMAX_KERNEL_AUTO};
    b = backend_cuda_create(&l, &autopick, &e2);
    CHECK(b != NULL, "auto on embedding_dim 128: %s", e2.msg);
    if (b)
        backend_destroy(b);
    model_layout_free(&l);
}
