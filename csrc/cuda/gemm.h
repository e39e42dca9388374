/* gemm: bf16 matrix products through cuBLASLt for the CUDA backend.
 *
 * C[M][N] (row-major) = alpha * op(A) . op(B) + beta * C, with A, B in bf16, fp32 accumulation
 * and C in bf16 or fp32; op(X) = X^T when trans_x. Row-major leading dimensions (the row stride
 * of each buffer) and, for batched products, element strides between consecutive matrices.
 * The handle, the workspace and one descriptor set + algorithm per distinct shape are created
 * once and cached (descriptor creation and the heuristic query never run per call after the
 * first). cuBLASLt picks the algorithm by its heuristic for the given alignment, unless
 * autotuning is on (gemm_set_autotune).
 */
#ifndef GPSDREC_CUDA_GEMM_H
#define GPSDREC_CUDA_GEMM_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#include "util.h"

typedef enum { GEMM_BF16 = 0, GEMM_F32 = 1 } gemm_dtype;

typedef struct {
    int trans_a, trans_b;
    int64_t M, N, K;
    const void *A;
    int64_t lda, stride_a;
    const void *B;
    int64_t ldb, stride_b;
    void *C;
    int64_t ldc, stride_c;
    gemm_dtype c_type;
    float alpha, beta;
    int batch; /* 1 for a single product */
} gemm_args;

typedef struct gemm_ctx gemm_ctx;

gemm_ctx *gemm_create(size_t workspace_bytes, gp_err *e);
void gemm_destroy(gemm_ctx *g);
int gemm_run(gemm_ctx *g, const gemm_args *a, cudaStream_t s, gp_err *e);

/* For benchmarks: the cuBLASLt heuristic's first max_algos (<= GEMM_SURVEY_MAX) algorithms for
 * the product `a`, each run 2 + reps times on a's buffers (C is overwritten, or accumulated into
 * where beta != 0) and timed with CUDA events. ms[0] is the heuristic's first, the one gemm_run
 * uses unless autotuning chose another; ms[i] < 0 where algorithm i does not run at the exact size. */
#define GEMM_SURVEY_MAX 16
typedef struct {
    int n;
    double ms[GEMM_SURVEY_MAX]; /* median per run */
} gemm_survey_result;
int gemm_survey(gemm_ctx *g, const gemm_args *a, int max_algos, int reps, gemm_survey_result *r, cudaStream_t s,
                gp_err *e);

/* Autotuning (off by default): with candidates > 1, the first product of each size class times the
 * heuristic's first `candidates` algorithms (at most GEMM_SURVEY_MAX) on a scratch copy of its C,
 * outside any graph capture, and keeps the fastest for the class. Every later product of the
 * class uses it, so a run stays bit-reproducible within itself; two runs may pick differently by
 * timing noise and then differ in the last bits. gemm_autotune_counts: classes tuned so far, and
 * of those, how many did not keep the heuristic's first. */
void gemm_set_autotune(gemm_ctx *g, int candidates);
void gemm_autotune_counts(const gemm_ctx *g, int *tuned, int *changed);

/* Convenience for the three products of a linear layer y = x . W^T (W is [out][in], row-major):
 *   forward: y[rows][out] = x[rows][in] . W^T     (y bf16 or fp32, beta 0)
 *   dgrad:   dx[rows][in] = dy[rows][out] . W     (dx bf16 or fp32, beta 0 or 1)
 *   wgrad:   dW[out][in] += dy^T . x              (dW fp32, accumulating) */
/* The arguments of those three products (A, B: x and W, dy and W, dy and x in that order). */
typedef enum { GEMM_LINEAR_FWD, GEMM_LINEAR_DGRAD, GEMM_LINEAR_WGRAD } gemm_linear_op;
gemm_args gemm_linear_args(gemm_linear_op op, void *c, gemm_dtype c_type, float beta, const void *a, const void *b,
                           int64_t rows, int64_t in, int64_t out);
int gemm_linear_fwd(gemm_ctx *g, void *y, gemm_dtype y_type, const void *x, const void *w, int64_t rows, int64_t in,
                    int64_t out, cudaStream_t s, gp_err *e);
int gemm_linear_dgrad(gemm_ctx *g, void *dx, gemm_dtype dx_type, float beta, const void *dy, const void *w,
                      int64_t rows, int64_t in, int64_t out, cudaStream_t s, gp_err *e);
int gemm_linear_wgrad(gemm_ctx *g, float *dw, const void *dy, const void *x, int64_t rows, int64_t in, int64_t out,
                      cudaStream_t s, gp_err *e);

#endif
