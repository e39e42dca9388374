/* bench_step: time whole training steps (forward + backward + AdamW) of one configuration on
 * synthetic full-length batches, and report ms/step, samples/s, tokens/s, peak device memory (the
 * drop in free device memory, and what the backend allocated itself: the counterpart of PyTorch's
 * max_memory_allocated) and model FLOP utilisation.
 *
 * usage: bench_step [--warmup N] [--steps N] [--json FILE] [--label TEXT] [--set key=value]...
 *                   [--items N] [--cates N] [--ceiling-tflops X | --ceiling-reps N]
 * The model and batch come from the settings keys (dim, n_layers, n_heads, max_history,
 * n_negatives, batch_size, stage, device, freeze_sparse) plus bench-only options --items and
 * --cates (vocabulary sizes). Every sequence is full length (max_history), as in the official
 * benchmark table of DESIGN.md; ids are fresh random draws every step.
 *
 * Timing: warm-up steps first, then each step timed on the host clock from before
 * forward_backward to a device synchronisation after optimizer_step. That is the step's device
 * time plus its host work (batch packing and upload, launches). The synchronisation matters:
 * optimizer_step reads the gradient norm back and then only enqueues AdamW and the gradient
 * zeroing, so without it their device time (0.7 ms at L4H64A4 pretraining, 3.3 ms at
 * L24H1024A16) ran during the untimed building of the next batch and was left out of the figure
 * (until 2026-12-07). PyTorch's figure (tools/torch_bench.py) has every kernel of its step in its
 * events too. The median is reported, with min and max.
 *
 * MFU: model FLOPs per step as benchmarks/step_flops.h counts them, divided by the median step
 * time and by a bf16 GEMM ceiling, measured in this process before the model is built (8192^3
 * through cuBLASLt, median of --ceiling-reps runs; bench_ceiling.h) unless --ceiling-tflops
 * gives one (e.g. bench_kernels' figure from the same run).
 *
 * Peak memory: the drop in free device memory from before the backend is created to its lowest
 * point after any step (the backend allocates its activations up front, so steps add nothing
 * but cuBLASLt's lazily created state).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bench_ceiling.h"
#include "batch.h"
#include "config.h"
#include "model.h"
#include "rng.h"
#include "settings.h"
#include "step_flops.h"

#ifdef GPSDREC_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void fill_batch(batch *x, int stage, int64_t items, int64_t cates, uint64_t seed, uint64_t step)
{
    gp_rng r = gp_rng_stream(seed, RNG_PURPOSE_TEST, step, 0);
    const int S = x->S;
    x->B = x->capacity;
    for (int b = 0; b < x->B; b++) {
        x->hist_len[b] = S;
        for (int k = 0; k < S; k++) {
            x->hist_item[b * S + k] = 1 + (int32_t)gp_rng_below64(&r, (uint64_t)items - 1);
            x->hist_cate[b * S + k] = 1 + (int32_t)gp_rng_below64(&r, (uint64_t)cates - 1);
        }
        x->target_item[b] = 1 + (int32_t)gp_rng_below64(&r, (uint64_t)items - 1);
        x->target_cate[b] = 1 + (int32_t)gp_rng_below64(&r, (uint64_t)cates - 1);
        x->click[b] = stage == STAGE_PRETRAIN ? 2 : (int32_t)gp_rng_below(&r, 2);
        for (int k = 0; k < S; k++) {
            int pre = stage == STAGE_PRETRAIN;
            x->item_label[b * S + k] = pre ? (k + 1 < S ? x->hist_item[b * S + k + 1] : x->target_item[b]) : LABEL_IGNORE;
            x->cate_label[b * S + k] = pre ? (k + 1 < S ? x->hist_cate[b * S + k + 1] : x->target_cate[b]) : LABEL_IGNORE;
        }
        x->user[b] = (uint32_t)b;
    }
    batch_sample_negatives(x, seed, step, items);
}

int main(int argc, char **argv)
{
    int warmup = 5, steps = 30, ceiling_reps = 10;
    double ceiling_tflops = 0;
    int64_t items = 1000000, cates = 1000;
    const char *json = NULL, *label = "";
    cfg_list l = {0};
    gp_err e = {{0}};
    if (cfg_parse_text(&l, settings_stage_defaults, "stage defaults", &e) != 0)
        goto fail;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc)
            warmup = atoi(argv[++i]);
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--items") == 0 && i + 1 < argc)
            items = atoll(argv[++i]);
        else if (strcmp(argv[i], "--cates") == 0 && i + 1 < argc)
            cates = atoll(argv[++i]);
        else if (strcmp(argv[i], "--ceiling-tflops") == 0 && i + 1 < argc)
            ceiling_tflops = atof(argv[++i]);
        else if (strcmp(argv[i], "--ceiling-reps") == 0 && i + 1 < argc)
            ceiling_reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
            json = argv[++i];
        else if (strcmp(argv[i], "--label") == 0 && i + 1 < argc)
            label = argv[++i];
        else if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
            if (cfg_add_override(&l, argv[++i], &e) != 0)
                goto fail;
        } else {
            fprintf(stderr, "bench_step: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    gp_settings s;
    const cfg_assignment *origin[256];
    int stage = STAGE_PRETRAIN;
    if (settings_stage_of(&l, &stage, &e) != 0 || settings_resolve(&l, stage, &s, origin, &e) != 0 ||
        settings_validate(&s, &e) != 0)
        goto fail;
    model_config mc;
    model_layout ml;
    if (model_config_from_settings(&mc, &s, items, cates, &e) != 0 || model_layout_build(&ml, &mc, &e) != 0)
        goto fail;
    if (steps < 1 || warmup < 0) {
        fprintf(stderr, "bench_step: --steps must be >= 1 and --warmup >= 0\n");
        return 2;
    }
    size_t free0 = 0, free_min = 0, total = 0;
    (void)total;
    const char *ceiling_source = ceiling_tflops > 0 ? "given (--ceiling-tflops)" : "none (CPU backend)";
    char gpu_name[256] = "none";
#ifdef GPSDREC_WITH_CUDA
    if (s.device != DEVICE_CPU && backend_cuda_available()) {
        struct cudaDeviceProp prop;
        if (cudaFree(0) != cudaSuccess || cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
            gp_fail(&e, "cannot initialise the CUDA device");
            goto fail;
        }
        snprintf(gpu_name, sizeof gpu_name, "%s", prop.name);
        if (ceiling_tflops <= 0) {
            /* before the model exists, so its buffers are gone when the peak baseline is taken */
            bench_ceiling gc;
            if (bench_gemm_ceiling(8192, ceiling_reps, &gc, &e) != 0)
                goto fail;
            ceiling_tflops = gc.median;
            ceiling_source = "measured in this process: bf16 8192^3 cuBLASLt GEMM, median";
        }
        if (cudaMemGetInfo(&free0, &total) != cudaSuccess) {
            gp_fail(&e, "cudaMemGetInfo failed");
            goto fail;
        }
        free_min = free0;
    }
#endif
    backend_opts bo = backend_opts_from_settings(&s, (int)s.batch_size);
    backend *be = backend_create(s.device, &ml, &bo, &e);
    if (!be)
        goto fail;
    float *sparse = gp_xmalloc((size_t)ml.sparse_numel * sizeof(float));
    float *dense = gp_xmalloc((size_t)ml.dense_numel * sizeof(float));
    model_init_params(&ml, sparse, dense, 17);
    if (be->set_params(be, sparse, dense, &e) != 0)
        goto fail;
    const int on_cuda = strcmp(be->name, "cuda") == 0;
    (void)on_cuda;
    batch x;
    batch_alloc(&x, (int)s.batch_size, (int)s.max_history, mc.w_item > 0 ? mc.n_negatives : 0);
    double *times = gp_xcalloc((size_t)steps, sizeof(double));
    step_losses sl;
    for (int i = 0; i < warmup + steps; i++) {
        fill_batch(&x, s.stage, items, cates, 1, (uint64_t)i);
        optim_hparams h = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-8, .weight_decay = 0.1,
                           .max_grad_norm = 1.0, .step = i + 1};
        double gn, t0 = gp_now();
        if (be->forward_backward(be, &x, 1.0f, &sl, NULL, &e) != 0 || be->optimizer_step(be, &h, &gn, &e) != 0)
            goto fail;
#ifdef GPSDREC_WITH_CUDA
        if (on_cuda) {
            cudaError_t ce = cudaDeviceSynchronize();
            if (ce != cudaSuccess) {
                gp_fail(&e, "step %d: %s", i + 1, cudaGetErrorString(ce));
                goto fail;
            }
        }
#endif
        double dt = gp_now() - t0;
        if (i >= warmup)
            times[i - warmup] = dt;
#ifdef GPSDREC_WITH_CUDA
        if (free0) {
            size_t f, t;
            if (cudaMemGetInfo(&f, &t) != cudaSuccess) {
                gp_fail(&e, "cudaMemGetInfo failed");
                goto fail;
            }
            if (f < free_min)
                free_min = f;
        }
#endif
    }
    qsort(times, (size_t)steps, sizeof *times, cmp_double);
    double med = 0.5 * (times[(steps - 1) / 2] + times[steps / 2]), lo = times[0], hi = times[steps - 1];
    double samples = (double)s.batch_size, tokens = (double)s.batch_size * (s.max_history + 1);
    double peak_gib = free0 ? (double)(free0 - free_min) / (1 << 30) : NAN;
    /* read after the steps: buffers sized on first use are in it */
    double alloc_gib = free0 ? (double)be->device_bytes(be) / (1 << 30) : NAN;
    step_flops fl;
    step_flops_count(&mc, s.batch_size, s.max_history, &fl);
    double model_tflops = fl.total / med / 1e12;
    double mfu = ceiling_tflops > 0 ? model_tflops / ceiling_tflops : NAN;
    char mfu_txt[64] = "MFU n/a (no GEMM ceiling)";
    if (!isnan(mfu))
        snprintf(mfu_txt, sizeof mfu_txt, "%.1f%% MFU of %.0f", 100 * mfu, ceiling_tflops);
    printf("%-28s %-5s L%dH%dA%d %s batch %lld seq %lld items %lld negs %lld: %.2f ms/step (min %.2f max %.2f), "
           "%.0f samples/s, %.3g tokens/s, peak %.2f GiB (allocated %.2f), %.1f model TFLOP/s = %s, loss %.4f\n",
           label, be->name, mc.n_layers, mc.dim, mc.n_heads, settings_stage_name(s.stage), (long long)s.batch_size,
           (long long)s.max_history, (long long)items, (long long)(mc.w_item > 0 ? mc.n_negatives : 0), med * 1e3,
           lo * 1e3, hi * 1e3, samples / med, tokens / med, peak_gib, alloc_gib, model_tflops, mfu_txt, sl.loss);
    if (json) {
        FILE *f = fopen(json, "a");
        if (!f) {
            gp_fail(&e, "cannot open %s for appending", json);
            goto fail;
        }
        /* NaN is not JSON: absent figures are written as null */
        char peak_s[32], alloc_s[32], mfu_s[32], ceil_s[32];
        snprintf(peak_s, sizeof peak_s, isnan(peak_gib) ? "null" : "%.4f", peak_gib);
        snprintf(alloc_s, sizeof alloc_s, isnan(alloc_gib) ? "null" : "%.4f", alloc_gib);
        snprintf(mfu_s, sizeof mfu_s, isnan(mfu) ? "null" : "%.5f", mfu);
        snprintf(ceil_s, sizeof ceil_s, ceiling_tflops > 0 ? "%.2f" : "null", ceiling_tflops);
        fprintf(f,
                "{\"label\":\"%s\",\"backend\":\"%s\",\"gpu\":\"%s\",\"stage\":\"%s\",\"L\":%d,\"H\":%d,\"A\":%d,"
                "\"batch\":%lld,\"seq\":%lld,\"items\":%lld,\"cates\":%lld,\"negatives\":%lld,\"freeze_sparse\":%d,"
                "\"causal\":%d,\"ms_per_step\":%.4f,\"ms_min\":%.4f,\"ms_max\":%.4f,\"samples_per_s\":%.1f,"
                "\"tokens_per_s\":%.1f,\"peak_gib\":%s,\"allocated_gib\":%s,\"steps\":%d,\"warmup\":%d,\"loss\":%.6f,"
                "\"timing\":\"host clock per step (forward_backward + optimizer_step + a device synchronisation), median\","
                "\"model_flops_per_step\":%.6e,\"flops_blocks\":%.6e,\"flops_projectors\":%.6e,"
                "\"flops_attention\":%.6e,\"flops_item_head\":%.6e,\"flops_cate_head\":%.6e,\"flops_rank_head\":%.6e,"
                "\"model_tflops\":%.3f,\"ceiling_tflops\":%s,\"ceiling_source\":\"%s\",\"mfu\":%s,"
                "\"flops_convention\":\"%s\"}\n",
                label, be->name, gpu_name, settings_stage_name(s.stage), mc.n_layers, mc.dim, mc.n_heads,
                (long long)s.batch_size, (long long)s.max_history, (long long)items, (long long)cates,
                (long long)(mc.w_item > 0 ? mc.n_negatives : 0), s.freeze_sparse, mc.causal, med * 1e3, lo * 1e3,
                hi * 1e3, samples / med, tokens / med, peak_s, alloc_s, steps, warmup, sl.loss, fl.total, fl.blocks,
                fl.projectors, fl.attention, fl.item_head, fl.cate_head, fl.rank_head, model_tflops, ceil_s,
                ceiling_source, mfu_s, STEP_FLOPS_CONVENTION);
        fclose(f);
    }
    backend_destroy(be);
    return 0;
fail:
    fprintf(stderr, "bench_step: error: %s\n", e.msg);
    return 1;
}
