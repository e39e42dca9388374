/* bench_ceiling: copy and bf16 GEMM ceilings (contract in bench_ceiling.h). */
#include "bench_ceiling.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef GPSDREC_WITH_CUDA
#include <cuda_runtime_api.h>

#include "cuda/cuda_util.h"
#include "cuda/gemm.h"
#include "rng.h"

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Uniform values in [-1, 1) rounded to bf16: random mantissas, so the tensor cores see no
 * zero-skipping or repeated patterns (not that Hopper has either, but the copy must not be of
 * zeros either). */
static void random_bf16(uint16_t *dst, size_t n, uint64_t seed)
{
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < (int64_t)((n + 65535) / 65536); c++) {
        gp_rng r = gp_rng_stream(seed, RNG_PURPOSE_TEST, 0xCE11, (uint64_t)c);
        size_t end = GP_MIN(n, (size_t)(c + 1) * 65536);
        for (size_t i = (size_t)c * 65536; i < end; i++) {
            float f = (float)(2.0 * gp_rng_uniform(&r) - 1.0);
            uint32_t u;
            memcpy(&u, &f, sizeof u);
            u += 0x7fffu + ((u >> 16) & 1u);
            dst[i] = (uint16_t)(u >> 16);
        }
    }
}

/* Times `reps` calls of one enqueued operation (a copy or a GEMM) with events; the median and
 * extremes of the per-call times in ms go into t[0..2]. */
typedef int (*op_fn)(void *ctx, cudaStream_t s, gp_err *e);

static int time_op(op_fn op, void *ctx, int warmup, int reps, cudaStream_t s, double t[3], gp_err *e)
{
    cudaEvent_t a = NULL, b = NULL;
    float *ms = gp_xcalloc((size_t)reps, sizeof *ms);
    int rc = -1;
    CU(cudaEventCreate(&a));
    CU(cudaEventCreate(&b));
    for (int i = 0; i < warmup; i++)
        if (op(ctx, s, e) != 0)
            goto fail;
    for (int i = 0; i < reps; i++) {
        CU(cudaEventRecord(a, s));
        if (op(ctx, s, e) != 0)
            goto fail;
        CU(cudaEventRecord(b, s));
        CU(cudaEventSynchronize(b));
        CU(cudaEventElapsedTime(&ms[i], a, b));
    }
    qsort(ms, (size_t)reps, sizeof *ms, cmp_float);
    t[0] = ms[reps / 2];
    t[1] = ms[0];
    t[2] = ms[reps - 1];
    rc = 0;
fail:
    if (a)
        cudaEventDestroy(a);
    if (b)
        cudaEventDestroy(b);
    free(ms);
    return rc;
}

typedef struct {
    void *dst;
    const void *src;
    size_t bytes;
    enum cudaMemcpyKind kind;
} copy_ctx;

/* The ceiling's figures from time_op's median and extremes: `amount` (bytes or FLOPs) moved or
 * done per call, in units of `scale` per second. */
static void fill_ceiling(bench_ceiling *out, const double t[3], double amount, double scale, int reps)
{
    out->median_ms = t[0];
    out->median = amount / (t[0] * 1e-3) / scale;
    out->min = amount / (t[2] * 1e-3) / scale;
    out->max = amount / (t[1] * 1e-3) / scale;
    out->reps = reps;
}

static int copy_op(void *p, cudaStream_t s, gp_err *e)
{
    copy_ctx *c = p;
    CU(cudaMemcpyAsync(c->dst, c->src, c->bytes, c->kind, s));
    return 0;
fail:
    return -1;
}

int bench_copy_ceiling(size_t bytes, int reps, bench_ceiling *out, gp_err *e)
{
    const size_t block = (size_t)64 << 20; /* a random block repeated over the source */
    void *src = NULL, *dst = NULL;
    uint16_t *host = NULL;
    cudaStream_t s = NULL;
    int rc = -1;
    bytes = (bytes + block - 1) / block * block;
    host = gp_xmalloc(block);
    random_bf16(host, block / 2, 0xC0B1);
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CU(cudaMalloc(&src, bytes));
    CU(cudaMalloc(&dst, bytes));
    for (size_t o = 0; o < bytes; o += block)
        CU(cudaMemcpy((char *)src + o, host, block, cudaMemcpyHostToDevice));
    CU(cudaMemset(dst, 0xFF, bytes));
    /* the legacy-stream copies and memset done before the timed stream s starts */
    CU(cudaDeviceSynchronize());
    copy_ctx c = {dst, src, bytes, cudaMemcpyDeviceToDevice};
    double t[3];
    if (time_op(copy_op, &c, 2, reps, s, t, e) != 0)
        goto fail;
    fill_ceiling(out, t, 2.0 * (double)bytes, 1e9, reps);
    rc = 0;
fail:
    if (src)
        cudaFree(src);
    if (dst)
        cudaFree(dst);
    if (s)
        cudaStreamDestroy(s);
    free(host);
    return rc;
}

int bench_h2d_ceiling(size_t bytes, int reps, bench_ceiling *out, gp_err *e)
{
    void *host = NULL, *dst = NULL;
    cudaStream_t s = NULL;
    int rc = -1;
    CU(cudaMallocHost(&host, bytes));
    random_bf16(host, bytes / 2, 0xC0B2);
    CU(cudaMalloc(&dst, bytes));
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    copy_ctx c = {dst, host, bytes, cudaMemcpyHostToDevice};
    double t[3];
    if (time_op(copy_op, &c, 2, reps, s, t, e) != 0)
        goto fail;
    fill_ceiling(out, t, (double)bytes, 1e9, reps);
    rc = 0;
fail:
    if (dst)
        cudaFree(dst);
    if (host)
        cudaFreeHost(host);
    if (s)
        cudaStreamDestroy(s);
    return rc;
}

typedef struct {
    gemm_ctx *g;
    gemm_args a;
} gemm_op_ctx;

static int gemm_op(void *p, cudaStream_t s, gp_err *e)
{
    gemm_op_ctx *c = p;
    return gemm_run(c->g, &c->a, s, e);
}

int bench_gemm_ceiling(int n, int reps, bench_ceiling *out, gp_err *e)
{
    const size_t elems = (size_t)n * n;
    void *A = NULL, *B = NULL, *C = NULL;
    uint16_t *host = NULL;
    gemm_ctx *g = NULL;
    cudaStream_t s = NULL;
    int rc = -1;
    host = gp_xmalloc(elems * sizeof *host);
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CU(cudaMalloc(&A, elems * 2));
    CU(cudaMalloc(&B, elems * 2));
    CU(cudaMalloc(&C, elems * 2));
    random_bf16(host, elems, 0xA);
    CU(cudaMemcpy(A, host, elems * 2, cudaMemcpyHostToDevice));
    random_bf16(host, elems, 0xB);
    CU(cudaMemcpy(B, host, elems * 2, cudaMemcpyHostToDevice));
    CU(cudaMemset(C, 0xFF, elems * 2));
    CU(cudaDeviceSynchronize());
    g = gemm_create((size_t)32 << 20, e);
    if (!g)
        goto fail;
    gemm_op_ctx c = {g,
                     {.trans_a = 0, .trans_b = 1, .M = n, .N = n, .K = n, .A = A, .lda = n, .B = B, .ldb = n, .C = C,
                      .ldc = n, .c_type = GEMM_BF16, .alpha = 1.0f, .beta = 0.0f, .batch = 1}};
    double t[3];
    /* warm-up long enough for the clocks to settle at their sustained level */
    if (time_op(gemm_op, &c, 5, reps, s, t, e) != 0)
        goto fail;
    double fl = 2.0 * (double)n * n * n;
    fill_ceiling(out, t, fl, 1e12, reps);
    rc = 0;
fail:
    gemm_destroy(g);
    if (A)
        cudaFree(A);
    if (B)
        cudaFree(B);
    if (C)
        cudaFree(C);
    if (s)
        cudaStreamDestroy(s);
    free(host);
    return rc;
}

#else

int bench_copy_ceiling(size_t bytes, int reps, bench_ceiling *out, gp_err *e)
{
    (void)bytes, (void)reps, (void)out;
    return gp_fail(e, "the copy ceiling needs a CUDA build");
}

int bench_h2d_ceiling(size_t bytes, int reps, bench_ceiling *out, gp_err *e)
{
    (void)bytes, (void)reps, (void)out;
    return gp_fail(e, "the host-to-device ceiling needs a CUDA build");
}

int bench_gemm_ceiling(int n, int reps, bench_ceiling *out, gp_err *e)
{
    (void)n, (void)reps, (void)out;
    return gp_fail(e, "the GEMM ceiling needs a CUDA build");
}

#endif
