/* bench_kernels_gemm: the linear layers' cuBLASLt products at the step configurations of
 * benchmarks/step_configs.txt, with the algorithm gemm_run uses (the heuristic's first) against
 * the fastest of the heuristic's first eight, each timed by gemm_survey on the same buffers.
 * It answers whether timing the heuristic's candidates (autotuning) would buy step time. */
#include <stdio.h>

#include "bench_cases.h"
#include "bench_harness.h"

#define SURVEY_ALGOS 8
#define SURVEY_REPS 9

typedef struct {
    const char *name;
    int64_t tokens;
    int dim;
} gemm_case;

/* tokens = batch x (seq + 1) of each configuration */
static const gemm_case cases[] = {
    {"L4H64A4 pretrain", 512 * 201, 64},
    {"L4H64A4 finetune", 2048 * 201, 64},
    {"L4H256A4", 512 * 51, 256},
    {"L24H1024A16", 128 * 201, 1024},
};

static void survey_one(const char *cfg, const char *layer, gemm_linear_op op, int64_t T, int in, int out, void *a,
                       void *b, void *c)
{
    static const char *op_name[] = {"fwd", "dgrad", "wgrad"};
    const gemm_dtype ct = op == GEMM_LINEAR_WGRAD ? GEMM_F32 : GEMM_BF16;
    gemm_args g = gemm_linear_args(op, c, ct, op == GEMM_LINEAR_WGRAD ? 1.0f : 0.0f, a, b, T, in, out);
    gemm_survey_result r;
    gp_err e = {{0}};
    if (gemm_survey(BK.gemm, &g, SURVEY_ALGOS, SURVEY_REPS, &r, BK.s, &e) != 0)
        bk_die("gemm_survey", __FILE__, __LINE__, e.msg);
    int best = 0;
    for (int i = 1; i < r.n; i++)
        if (r.ms[i] > 0 && (r.ms[best] <= 0 || r.ms[i] < r.ms[best]))
            best = i;
    char sh[96], variant[64];
    snprintf(sh, sizeof sh, "%s %s %s %lldx%dx%d", cfg, layer, op_name[op], (long long)T, in, out);
    const double flops = 2.0 * (double)T * in * out;
    const double bytes = (op == GEMM_LINEAR_FWD    ? 2.0 * T * in + 2.0 * in * out + 2.0 * T * out
                          : op == GEMM_LINEAR_DGRAD ? 2.0 * T * out + 2.0 * in * out + 2.0 * T * in
                                                    : 2.0 * T * out + 2.0 * T * in + 8.0 * in * out);
    bk_meas m = {"gemm_algos", sh, "ours", "gemm_run: cuBLASLt heuristic's first", bytes, 0, flops, 0, NULL};
    bk_timing t = {.med_us = r.ms[0] * 1e3, .min_us = r.ms[0] * 1e3, .max_us = r.ms[0] * 1e3, .reps = SURVEY_REPS,
                   .per_batch = 1, .sets = 1};
    bk_report(&m, &t, 1);
    snprintf(variant, sizeof variant, "fastest of the first %d: #%d", r.n, best);
    bk_meas alt = {"gemm_algos", sh, variant, "gemm_survey", bytes, 0, flops, 0, NULL};
    bk_timing tb = {.med_us = r.ms[best] * 1e3, .min_us = r.ms[best] * 1e3, .max_us = r.ms[best] * 1e3,
                    .reps = SURVEY_REPS, .per_batch = 1, .sets = 1};
    bk_report(&alt, &tb, 1);
}

void bk_cases_gemm(void)
{
    if (!bk_want("gemm_algos"))
        return;
    bk_progress("the linear layers' GEMMs: the heuristic's first algorithm against its first eight");
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const gemm_case *c = &cases[k];
        const int D = c->dim, F = bk_ffn_hidden(D);
        const int64_t T = c->tokens, widest = 2 * F > 3 * D ? 2 * F : 3 * D;
        gp_bf16 *x = bk_rand_bf16(T * widest, 1.0f), *y = bk_rand_bf16(T * widest, 1.0f);
        gp_bf16 *w = bk_rand_bf16((int64_t)widest * (F > D ? F : D), 0.02f);
        float *dw = bk_rand_f32((int64_t)widest * (F > D ? F : D), 0.01f);
        const struct {
            const char *name;
            int in, out;
        } layers[] = {{"qkv", D, 3 * D}, {"o", D, D}, {"w13", D, 2 * F}, {"w2", F, D}};
        for (int l = 0; l < 4; l++) {
            const int in = layers[l].in, out = layers[l].out;
            survey_one(c->name, layers[l].name, GEMM_LINEAR_FWD, T, in, out, x, w, y);
            survey_one(c->name, layers[l].name, GEMM_LINEAR_DGRAD, T, in, out, y, w, x);
            survey_one(c->name, layers[l].name, GEMM_LINEAR_WGRAD, T, in, out, y, x, dw);
        }
        bk_free_all();
    }
}
