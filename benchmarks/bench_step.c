/* bench_step: time whole training steps (forward + backward + AdamW) of one configuration on
 * synthetic full-length batches, and report ms/step, samples/s, tokens/s and peak device memory.
 *
 * usage: bench_step [--warmup N] [--steps N] [--json FILE] [--label TEXT] [--set key=value]...
 * The model and batch come from the settings keys (dim, n_layers, n_heads, max_history,
 * n_negatives, batch_size, stage, device, freeze_sparse) plus bench-only options --items and
 * --cates (vocabulary sizes). Every sequence is full length (max_history), as in the official
 * benchmark table of DESIGN.md. Timing: warm-up steps first, then each step timed on the host
 * clock after the step's synchronisation (the optimizer step reads the gradient norm back), the
 * median reported.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "batch.h"
#include "config.h"
#include "model.h"
#include "rng.h"
#include "settings.h"

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
    int warmup = 5, steps = 20;
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
    size_t free0 = 0, free_min = 0, total = 0;
    (void)total;
#ifdef GPSDREC_WITH_CUDA
    if (s.device != DEVICE_CPU && backend_cuda_available()) {
        cudaFree(0);
        cudaMemGetInfo(&free0, &total);
        free_min = free0;
    }
#endif
    backend_opts bo = {.max_batch = (int)s.batch_size, .freeze_sparse = s.freeze_sparse, .threads = (int)s.threads};
    backend *be = backend_create(s.device, &ml, &bo, &e);
    if (!be)
        goto fail;
    float *sparse = gp_xmalloc((size_t)ml.sparse_numel * sizeof(float));
    float *dense = gp_xmalloc((size_t)ml.dense_numel * sizeof(float));
    model_init_params(&ml, sparse, dense, 17);
    if (be->set_params(be, sparse, dense, &e) != 0)
        goto fail;
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
        double dt = gp_now() - t0;
        if (i >= warmup)
            times[i - warmup] = dt;
#ifdef GPSDREC_WITH_CUDA
        if (free0) {
            size_t f, t;
            cudaMemGetInfo(&f, &t);
            if (f < free_min)
                free_min = f;
        }
#endif
    }
    qsort(times, (size_t)steps, sizeof *times, cmp_double);
    double med = times[steps / 2], lo = times[0], hi = times[steps - 1];
    double samples = (double)s.batch_size, tokens = (double)s.batch_size * (s.max_history + 1);
    double peak_gib = free0 ? (double)(free0 - free_min) / (1 << 30) : NAN;
    printf("%-40s %-5s L%dH%dA%d %s batch %lld seq %lld items %lld negs %lld: %.2f ms/step (min %.2f max %.2f), "
           "%.0f samples/s, %.3g tokens/s, peak %.2f GiB, loss %.4f\n",
           label, be->name, mc.n_layers, mc.dim, mc.n_heads, settings_stage_name(s.stage), (long long)s.batch_size,
           (long long)s.max_history, (long long)items, (long long)(mc.w_item > 0 ? mc.n_negatives : 0), med * 1e3,
           lo * 1e3, hi * 1e3, samples / med, tokens / med, peak_gib, sl.loss);
    if (json) {
        FILE *f = fopen(json, "a");
        if (f) {
            fprintf(f,
                    "{\"label\":\"%s\",\"backend\":\"%s\",\"stage\":\"%s\",\"L\":%d,\"H\":%d,\"A\":%d,\"batch\":%lld,"
                    "\"seq\":%lld,\"items\":%lld,\"negatives\":%lld,\"freeze_sparse\":%d,\"ms_per_step\":%.4f,"
                    "\"ms_min\":%.4f,\"ms_max\":%.4f,\"samples_per_s\":%.1f,\"tokens_per_s\":%.1f,\"peak_gib\":%.4f,"
                    "\"steps\":%d,\"warmup\":%d}\n",
                    label, be->name, settings_stage_name(s.stage), mc.n_layers, mc.dim, mc.n_heads,
                    (long long)s.batch_size, (long long)s.max_history, (long long)items,
                    (long long)(mc.w_item > 0 ? mc.n_negatives : 0), s.freeze_sparse, med * 1e3, lo * 1e3, hi * 1e3,
                    samples / med, tokens / med, peak_gib, steps, warmup);
            fclose(f);
        }
    }
    backend_destroy(be);
    return 0;
fail:
    fprintf(stderr, "bench_step: error: %s\n", e.msg);
    return 1;
}
