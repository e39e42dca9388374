/* GPU tests of csrc/cuda/gemm.c: the three linear-layer products against plain loops in double,
 * at sizes that are not multiples of the tiles, and gemm_survey (every algorithm it times gives
 * the product, and the first is the one gemm_run uses). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include <cuda_runtime_api.h>

#include "cuda/gemm.h"
#include "gpu/gpu_check.h"
#include "test.h"

static uint16_t bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float bf16_value(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t *random_bf16(size_t n, gp_rng *r)
{
    uint16_t *h = malloc(n * 2);
    for (size_t i = 0; i < n; i++)
        h[i] = bf16_bits((float)gp_rng_normal(r));
    return h;
}

/* max |got - want| / max |want| */
static double rel_err(const double *want, const float *got, size_t n)
{
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]))
            return INFINITY;
        d = fmax(d, fabs(got[i] - want[i]));
        m = fmax(m, fabs(want[i]));
    }
    return m > 0 ? d / m : d;
}

/* want = the op's product of the bf16 host operands a, b (linear layer x W^T, dy W, dy^T x) */
static void reference(gemm_linear_op op, const uint16_t *a, const uint16_t *b, int64_t T, int in, int out, double *want)
{
    const int64_t M = op == GEMM_LINEAR_WGRAD ? out : T, N = op == GEMM_LINEAR_FWD ? out : in;
    const int64_t K = op == GEMM_LINEAR_FWD ? in : op == GEMM_LINEAR_DGRAD ? out : T;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) {
                float x, y;
                if (op == GEMM_LINEAR_FWD)
                    x = bf16_value(a[i * in + k]), y = bf16_value(b[j * in + k]);
                else if (op == GEMM_LINEAR_DGRAD)
                    x = bf16_value(a[i * out + k]), y = bf16_value(b[k * in + j]);
                else
                    x = bf16_value(a[k * out + i]), y = bf16_value(b[k * in + j]);
                s += (double)x * y;
            }
            want[i * N + j] = s;
        }
}

TEST(gpu_gemm_linear_products_and_survey)
{
    REQUIRE(gpu_present(), "no GPU");
    gp_err e = {{0}};
    gemm_ctx *g = gemm_create(32u << 20, &e);
    REQUIRE(g, "%s", e.msg);
    const int64_t T = 333;
    const int in = 72, out = 200;
    gp_rng r = gp_rng_stream(5, RNG_PURPOSE_TEST, 0x6E33, 0);
    uint16_t *x = random_bf16((size_t)T * in, &r), *w = random_bf16((size_t)out * in, &r);
    uint16_t *dy = random_bf16((size_t)T * out, &r);
    void *dx_ = gpu_upload(x, (size_t)T * in * 2), *dw_ = gpu_upload(w, (size_t)out * in * 2);
    void *ddy = gpu_upload(dy, (size_t)T * out * 2);
    const size_t most = (size_t)T * (in > out ? in : out);
    float *dc = gpu_alloc(most * 4), *got = malloc(most * 4);
    double *want = malloc(most * 8);
    static const char *names[] = {"forward", "dgrad", "wgrad"};
    for (int op = GEMM_LINEAR_FWD; op <= GEMM_LINEAR_WGRAD; op++) {
        const void *a = op == GEMM_LINEAR_FWD ? dx_ : ddy, *b = op == GEMM_LINEAR_WGRAD ? dx_ : dw_;
        const uint16_t *ha = op == GEMM_LINEAR_FWD ? x : dy, *hb = op == GEMM_LINEAR_WGRAD ? x : w;
        const size_t n = op == GEMM_LINEAR_FWD ? (size_t)T * out : op == GEMM_LINEAR_DGRAD ? (size_t)T * in
                                                                                              : (size_t)out * in;
        reference(op, ha, hb, T, in, out, want);
        /* beta 0 so that every run of the survey leaves the product itself */
        gemm_args args = gemm_linear_args(op, dc, GEMM_F32, 0.0f, a, b, T, in, out);
        CUDA_REQUIRE(cudaMemset(dc, 0xFF, most * 4));
        REQUIRE(gemm_run(g, &args, 0, &e) == 0, "%s", e.msg);
        CUDA_REQUIRE(cudaDeviceSynchronize());
        gpu_download(got, dc, n * 4);
        double err = rel_err(want, got, n);
        CHECK(err < 1e-5, "%s: gemm_run relative error %.3g", names[op], err);
        gemm_survey_result sr;
        REQUIRE(gemm_survey(g, &args, 4, 3, &sr, 0, &e) == 0, "%s", e.msg);
        CHECK(sr.n >= 1 && sr.n <= 4 && sr.ms[0] > 0, "%s: survey of %d algorithms, first %.4f ms", names[op], sr.n,
              sr.ms[0]);
        /* every algorithm the survey runs gives the product: a survey of the first i leaves
         * algorithm i - 1's result in C */
        for (int i = 1; i <= sr.n; i++) {
            gemm_survey_result one;
            CUDA_REQUIRE(cudaMemset(dc, 0xFF, most * 4));
            REQUIRE(gemm_survey(g, &args, i, 1, &one, 0, &e) == 0, "%s", e.msg);
            if (one.n < i || one.ms[i - 1] < 0)
                continue; /* does not run at this exact size: C untouched by it */
            gpu_download(got, dc, n * 4);
            err = rel_err(want, got, n);
            CHECK(err < 1e-5, "%s: algorithm %d of the survey, relative error %.3g", names[op], i - 1, err);
        }
        gemm_survey_result bad;
        CHECK(gemm_survey(g, &args, GEMM_SURVEY_MAX + 1, 3, &bad, 0, &e) != 0, "too many algorithms accepted");
    }
    free(x), free(w), free(dy), free(got), free(want);
    cudaFree(dx_), cudaFree(dw_), cudaFree(ddy), cudaFree(dc);
    gemm_destroy(g);
}

/* Autotuning times the candidates on a scratch copy of C: an accumulating product (the weight
 * gradient, beta 1) still adds the product exactly once, and every later call of the class uses
 * the chosen algorithm. */
TEST(gpu_gemm_autotune_accumulates_once)
{
    REQUIRE(gpu_present(), "no GPU");
    gp_err e = {{0}};
    gemm_ctx *g = gemm_create(32u << 20, &e);
    REQUIRE(g, "%s", e.msg);
    gemm_set_autotune(g, 8);
    const int64_t T = 1000;
    const int in = 96, out = 160;
    gp_rng r = gp_rng_stream(6, RNG_PURPOSE_TEST, 0x6E34, 0);
    uint16_t *x = random_bf16((size_t)T * in, &r), *dy = random_bf16((size_t)T * out, &r);
    const size_t n = (size_t)out * in;
    float *c0 = malloc(n * 4), *got = malloc(n * 4);
    double *want = malloc(n * 8);
    for (size_t i = 0; i < n; i++)
        c0[i] = (float)gp_rng_normal(&r);
    void *dx_ = gpu_upload(x, (size_t)T * in * 2), *ddy = gpu_upload(dy, (size_t)T * out * 2);
    float *dc = gpu_upload(c0, n * 4);
    reference(GEMM_LINEAR_WGRAD, dy, x, T, in, out, want);
    for (int call = 1; call <= 2; call++) {
        REQUIRE(gemm_linear_wgrad(g, dc, ddy, dx_, T, in, out, 0, &e) == 0, "%s", e.msg);
        CUDA_REQUIRE(cudaDeviceSynchronize());
        gpu_download(got, dc, n * 4);
        double d = 0, m = 0;
        for (size_t i = 0; i < n; i++) {
            const double w = c0[i] + call * want[i];
            d = fmax(d, isfinite(got[i]) ? fabs(got[i] - w) : INFINITY);
            m = fmax(m, fabs(w));
        }
        CHECK(d / m < 1e-5, "after %d accumulating calls: relative error %.3g", call, d / m);
    }
    int tuned = 0, changed = 0;
    gemm_autotune_counts(g, &tuned, &changed);
    /* one class, tuned once: otherwise the scratch-copy path above was never exercised */
    CHECK(tuned == 1 && changed <= tuned, "classes tuned %d (changed %d)", tuned, changed);
    printf("    wgrad %lldx%dx%d: the heuristic's first %s\n", (long long)T, in, out, changed ? "replaced" : "kept");
    free(x), free(dy), free(c0), free(got), free(want);
    cudaFree(dx_), cudaFree(ddy), cudaFree(dc);
    gemm_destroy(g);
}
