#include "cuda/gemm.h"

#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_util.h"

#define GEMM_CACHE 1024

typedef struct {
    int trans_a, trans_b, c_type, batch;
    int64_t M, N, K, lda, ldb, ldc, stride_a, stride_b, stride_c;
    int align; /* smallest alignment (bytes, up to 256) of the four pointers */
    int beta_zero;
} gemm_key;

typedef struct {
    gemm_key key;  /* M, N, K rounded up to a power of two: one entry per size class */
    int64_t M, N, K; /* the exact sizes the layouts describe now */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    uint64_t last_used;
    int tuned; /* the algorithm was chosen by timing (gemm_set_autotune) */
} gemm_entry;

struct gemm_ctx {
    cublasLtHandle_t handle;
    void *workspace;
    size_t workspace_bytes;
    gemm_entry cache[GEMM_CACHE];
    int n_cached;
    uint64_t clock;
    int tune_candidates; /* 0: the heuristic's first algorithm; else the fastest of this many */
    int n_tuned, n_tuned_changed;
};

/* The number of rows of a micro-batch changes with its sequence lengths, so products are cached
 * per size class (each of M, N, K rounded up to a power of two), not per exact size: the entry's
 * layouts are resized in place (a cheap attribute update) and its algorithm reused. Should
 * cuBLASLt reject the reused algorithm for the new size, the heuristic is asked again. */
static int64_t size_class(int64_t x)
{
    int64_t c = 1;
    while (c < x)
        c <<= 1;
    return c;
}

static void destroy_entry(gemm_entry *en);

const char *gp_cublas_status_name(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
    }
}

gemm_ctx *gemm_create(size_t workspace_bytes, gp_err *e)
{
    gemm_ctx *g = gp_xcalloc(1, sizeof *g);
    g->workspace_bytes = workspace_bytes;
    CUBLAS(cublasLtCreate(&g->handle));
    CU(cudaMalloc(&g->workspace, workspace_bytes));
    return g;
fail:
    gemm_destroy(g);
    return NULL;
}

void gemm_destroy(gemm_ctx *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->n_cached; i++)
        destroy_entry(&g->cache[i]);
    if (g->workspace)
        cudaFree(g->workspace);
    if (g->handle)
        cublasLtDestroy(g->handle);
    free(g);
}

static int alignment_of(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 1 && (a % (uintptr_t)al) != 0)
        al /= 2;
    return al;
}

static int make_layout(cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int batch,
                       int64_t stride, gp_err *e)
{
    CUBLAS(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        CUBLAS(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
        CUBLAS(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    }
    return 0;
fail:
    return -1;
}

/* Builds the descriptors and picks the algorithm for one shape. Row-major C = op(A) op(B) is
 * computed as the column-major C^T = op(B)^T op(A)^T: cuBLAS's "A" is our B and vice versa. */
static void destroy_entry(gemm_entry *en)
{
    if (en->op)
        cublasLtMatmulDescDestroy(en->op);
    if (en->a)
        cublasLtMatrixLayoutDestroy(en->a);
    if (en->b)
        cublasLtMatrixLayoutDestroy(en->b);
    if (en->c)
        cublasLtMatrixLayoutDestroy(en->c);
    memset(en, 0, sizeof *en);
}

/* Sets the layouts' rows and columns for exact sizes M, N, K (see make_layout for the roles). */
static int resize(gemm_entry *en, int64_t M, int64_t N, int64_t K, gp_err *e)
{
    const gemm_key *k = &en->key;
    uint64_t ar = (uint64_t)(k->trans_b ? K : N), ac = (uint64_t)(k->trans_b ? N : K);
    uint64_t br = (uint64_t)(k->trans_a ? M : K), bc = (uint64_t)(k->trans_a ? K : M);
    uint64_t cr = (uint64_t)N, cc = (uint64_t)M;
    CUBLAS(cublasLtMatrixLayoutSetAttribute(en->a, CUBLASLT_MATRIX_LAYOUT_ROWS, &ar, sizeof ar));
    CUBLAS(cublasLtMatrixLayoutSetAttribute(en->a, CUBLASLT_MATRIX_LAYOUT_COLS, &ac, sizeof ac));
    CUBLAS(cublasLtMatrixLayoutSetAttribute(en->b, CUBLASLT_MATRIX_LAYOUT_ROWS, &br, sizeof br));
    CUBLAS(cublasLtMatrixLayoutSetAttribute(en->b, CUBLASLT_MATRIX_LAYOUT_COLS, &bc, sizeof bc));
    CUBLAS(cublasLtMatrixLayoutSetAttribute(en->c, CUBLASLT_MATRIX_LAYOUT_ROWS, &cr, sizeof cr));
    CUBLAS(cublasLtMatrixLayoutSetAttribute(en->c, CUBLASLT_MATRIX_LAYOUT_COLS, &cc, sizeof cc));
    en->M = M;
    en->N = N;
    en->K = K;
    return 0;
fail:
    return -1;
}

/* The heuristic's first `want` algorithms at the entry's current sizes, best first. */
static int heuristic(gemm_ctx *g, gemm_entry *en, int want, cublasLtMatmulHeuristicResult_t *results, int *found,
                     gp_err *e)
{
    cublasLtMatmulPreference_t pref;
    CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    uint32_t al = (uint32_t)en->key.align;
    size_t ws = g->workspace_bytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al);
    *found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g->handle, en->op, en->a, en->b, en->c, en->c, pref, want,
                                                       results, found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || *found == 0)
        return gp_fail(e, "cuBLASLt has no algorithm for C[%lld x %lld] = op(A) op(B), K = %lld, batch %d (%s)",
                       (long long)en->M, (long long)en->N, (long long)en->K, en->key.batch, gp_cublas_status_name(st));
    return 0;
fail:
    return -1;
}

/* Asks the heuristic for the best algorithm at the entry's current sizes. */
static int pick_algorithm(gemm_ctx *g, gemm_entry *en, gp_err *e)
{
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    if (heuristic(g, en, 1, &result, &found, e) != 0)
        return -1;
    en->algo = result.algo;
    return 0;
}

/* Builds the descriptors and picks the algorithm for one size class. Row-major C = op(A) op(B)
 * is computed as the column-major C^T = op(B)^T op(A)^T: cuBLAS's "A" is our B and vice versa. */
static gemm_entry *prepare(gemm_ctx *g, const gemm_key *k, int64_t M, int64_t N, int64_t K, gp_err *e)
{
    gemm_entry *en = NULL;
    for (int i = 0; i < g->n_cached; i++)
        if (memcmp(&g->cache[i].key, k, sizeof *k) == 0) {
            en = &g->cache[i];
            break;
        }
    if (en) {
        en->last_used = ++g->clock;
        if ((en->M != M || en->N != N || en->K != K) && resize(en, M, N, K, e) != 0)
            return NULL;
        return en;
    }
    if (g->n_cached < GEMM_CACHE) {
        en = &g->cache[g->n_cached++];
    } else { /* evict the least recently used class */
        en = &g->cache[0];
        for (int i = 1; i < GEMM_CACHE; i++)
            if (g->cache[i].last_used < en->last_used)
                en = &g->cache[i];
        destroy_entry(en);
    }
    memset(en, 0, sizeof *en);
    en->key = *k;
    en->last_used = ++g->clock;
    cublasOperation_t op_a = k->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N; /* on our B */
    cublasOperation_t op_b = k->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N; /* on our A */
    cudaDataType_t ct = k->c_type == GEMM_F32 ? CUDA_R_32F : CUDA_R_16BF;
    CUBLAS(cublasLtMatmulDescCreate(&en->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS(cublasLtMatmulDescSetAttribute(en->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
    CUBLAS(cublasLtMatmulDescSetAttribute(en->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
    /* cuBLAS A = our B: stored [K][N] row-major (= col-major N x K) or [N][K] when transposed. */
    if (make_layout(&en->a, CUDA_R_16BF, k->trans_b ? K : N, k->trans_b ? N : K, k->ldb, k->batch, k->stride_b, e) != 0)
        goto fail;
    if (make_layout(&en->b, CUDA_R_16BF, k->trans_a ? M : K, k->trans_a ? K : M, k->lda, k->batch, k->stride_a, e) != 0)
        goto fail;
    if (make_layout(&en->c, ct, N, M, k->ldc, k->batch, k->stride_c, e) != 0)
        goto fail;
    en->M = M;
    en->N = N;
    en->K = K;
    if (pick_algorithm(g, en, e) != 0)
        goto fail;
    return en;
fail:
    destroy_entry(en);
    if (en == &g->cache[g->n_cached - 1])
        g->n_cached--;
    return NULL;
}

/* The size class and layout key of the product `a` (the cache's lookup key). */
static void key_of(gemm_key *k, const gemm_args *a)
{
    memset(k, 0, sizeof *k);
    k->trans_a = a->trans_a;
    k->trans_b = a->trans_b;
    k->c_type = a->c_type;
    k->batch = a->batch > 0 ? a->batch : 1;
    k->M = size_class(a->M);
    k->N = size_class(a->N);
    k->K = size_class(a->K);
    k->lda = a->lda;
    k->ldb = a->ldb;
    k->ldc = a->ldc;
    k->stride_a = a->stride_a;
    k->stride_b = a->stride_b;
    k->stride_c = a->stride_c;
    k->beta_zero = a->beta == 0.0f;
    k->align = alignment_of(a->A);
    int al = alignment_of(a->B);
    if (al < k->align)
        k->align = al;
    al = alignment_of(a->C);
    if (al < k->align)
        k->align = al;
}

static int tune_entry(gemm_ctx *g, gemm_entry *en, const gemm_args *a, cudaStream_t s, gp_err *e);

int gemm_run(gemm_ctx *g, const gemm_args *a, cudaStream_t s, gp_err *e)
{
    if (a->M == 0 || a->N == 0)
        return 0;
    gemm_key k;
    key_of(&k, a);
    gemm_entry *en = prepare(g, &k, a->M, a->N, a->K, e);
    if (!en)
        return -1;
    if (g->tune_candidates > 1 && !en->tuned && tune_entry(g, en, a, s, e) != 0)
        return -1;
    cublasStatus_t st = cublasLtMatmul(g->handle, en->op, &a->alpha, a->B, en->a, a->A, en->b, &a->beta, a->C, en->c,
                                       a->C, en->c, &en->algo, g->workspace, g->workspace_bytes, s);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE) {
        /* The class's algorithm does not fit this exact size: pick one for it and retry. */
        if (pick_algorithm(g, en, e) != 0)
            return -1;
        st = cublasLtMatmul(g->handle, en->op, &a->alpha, a->B, en->a, a->A, en->b, &a->beta, a->C, en->c, a->C, en->c,
                            &en->algo, g->workspace, g->workspace_bytes, s);
    }
    if (st != CUBLAS_STATUS_SUCCESS)
        return gp_fail(e, "cublasLtMatmul C[%lld x %lld] K %lld batch %d: %s", (long long)a->M, (long long)a->N,
                       (long long)a->K, k.batch, gp_cublas_status_name(st));
    return 0;
}

static int cmp_double(const void *x, const void *y)
{
    const double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* Median milliseconds of `reps` runs (after 2 untimed) of the entry's product with `algo`,
 * writing C = c; -1 when the algorithm does not run at the exact size. */
static int time_algo(gemm_ctx *g, gemm_entry *en, const gemm_args *a, const cublasLtMatmulAlgo_t *algo, void *c,
                     int reps, cudaStream_t s, double *ms, gp_err *e)
{
    cudaEvent_t ev[2] = {NULL, NULL};
    double *t = calloc((size_t)reps, sizeof *t);
    if (!t)
        return gp_fail(e, "gemm: out of memory");
    *ms = -1;
    CU(cudaEventCreate(&ev[0]));
    CU(cudaEventCreate(&ev[1]));
    for (int rep = -2; rep < reps; rep++) {
        CU(cudaEventRecord(ev[0], s));
        cublasStatus_t st = cublasLtMatmul(g->handle, en->op, &a->alpha, a->B, en->a, a->A, en->b, &a->beta, c, en->c, c,
                                           en->c, algo, g->workspace, g->workspace_bytes, s);
        if (st != CUBLAS_STATUS_SUCCESS)
            break;
        CU(cudaEventRecord(ev[1], s));
        CU(cudaEventSynchronize(ev[1]));
        float f = 0;
        CU(cudaEventElapsedTime(&f, ev[0], ev[1]));
        if (rep >= 0)
            t[rep] = f;
        if (rep == reps - 1) {
            qsort(t, (size_t)reps, sizeof *t, cmp_double);
            *ms = t[reps / 2];
        }
    }
    cudaEventDestroy(ev[0]);
    cudaEventDestroy(ev[1]);
    free(t);
    return 0;
fail:
    if (ev[0])
        cudaEventDestroy(ev[0]);
    if (ev[1])
        cudaEventDestroy(ev[1]);
    free(t);
    return -1;
}

int gemm_survey(gemm_ctx *g, const gemm_args *a, int max_algos, int reps, gemm_survey_result *r, cudaStream_t s,
                gp_err *e)
{
    memset(r, 0, sizeof *r);
    if (max_algos < 1 || max_algos > GEMM_SURVEY_MAX || reps < 1 || a->M == 0 || a->N == 0)
        return gp_fail(e, "gemm_survey: max_algos must be in [1, %d], reps >= 1 and the product non-empty",
                       GEMM_SURVEY_MAX);
    gemm_key k;
    key_of(&k, a);
    gemm_entry *en = prepare(g, &k, a->M, a->N, a->K, e);
    if (!en)
        return -1;
    cublasLtMatmulHeuristicResult_t res[GEMM_SURVEY_MAX];
    int found = 0;
    if (heuristic(g, en, max_algos, res, &found, e) != 0)
        return -1;
    for (int i = 0; i < found; i++)
        if (time_algo(g, en, a, &res[i].algo, a->C, reps, s, &r->ms[i], e) != 0)
            return -1;
    r->n = found;
    return 0;
}

void gemm_set_autotune(gemm_ctx *g, int candidates)
{
    g->tune_candidates = candidates < 0 ? 0 : candidates > GEMM_SURVEY_MAX ? GEMM_SURVEY_MAX : candidates;
}

void gemm_autotune_counts(const gemm_ctx *g, int *tuned, int *changed)
{
    *tuned = g->n_tuned;
    *changed = g->n_tuned_changed;
}

/* Chooses the entry's algorithm by timing the heuristic's first candidates on the product `a`,
 * into a scratch copy of C (the caller's C is neither written nor, for beta != 0, accumulated
 * into). A class first seen while `s` is being captured into a graph, or whose scratch copy does
 * not fit in device memory, keeps the heuristic's first for good: every product of a class uses
 * one algorithm, and the optional tuning never fails a run. */
static int tune_entry(gemm_ctx *g, gemm_entry *en, const gemm_args *a, cudaStream_t s, gp_err *e)
{
    void *scratch = NULL;
    en->tuned = 1;
    enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    CU(cudaStreamIsCapturing(s, &cap));
    if (cap != cudaStreamCaptureStatusNone)
        return 0;
    cublasLtMatmulHeuristicResult_t res[GEMM_SURVEY_MAX];
    int found = 0;
    if (heuristic(g, en, g->tune_candidates, res, &found, e) != 0)
        return -1;
    if (found < 2)
        return 0;
    const size_t el = a->c_type == GEMM_F32 ? 4 : 2;
    const int batch = a->batch > 0 ? a->batch : 1;
    const size_t c_bytes = ((size_t)(batch - 1) * (size_t)a->stride_c + (size_t)(a->M - 1) * (size_t)a->ldc +
                            (size_t)a->N) * el;
    if (cudaMalloc(&scratch, c_bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    if (a->beta != 0.0f)
        CU(cudaMemcpyAsync(scratch, a->C, c_bytes, cudaMemcpyDeviceToDevice, s));
    int best = -1;
    double best_ms = 0;
    for (int i = 0; i < found; i++) {
        double ms = -1;
        if (time_algo(g, en, a, &res[i].algo, scratch, 5, s, &ms, e) != 0)
            goto fail;
        if (ms > 0 && (best < 0 || ms < best_ms))
            best = i, best_ms = ms;
    }
    cudaError_t fe = cudaFree(scratch);
    scratch = NULL;
    CU(fe);
    if (best >= 0) {
        en->algo = res[best].algo;
        g->n_tuned++;
        g->n_tuned_changed += best != 0;
    }
    return 0;
fail:
    if (scratch)
        cudaFree(scratch);
    return -1;
}

gemm_args gemm_linear_args(gemm_linear_op op, void *c, gemm_dtype c_type, float beta, const void *a, const void *b,
                           int64_t rows, int64_t in, int64_t out)
{
    gemm_args g = {.c_type = c_type, .alpha = 1.0f, .beta = beta, .batch = 1, .A = a, .B = b, .C = c};
    switch (op) {
    case GEMM_LINEAR_FWD: /* y[rows][out] = x[rows][in] . W^T */
        g.trans_b = 1, g.M = rows, g.N = out, g.K = in, g.lda = in, g.ldb = in, g.ldc = out;
        break;
    case GEMM_LINEAR_DGRAD: /* dx[rows][in] = dy[rows][out] . W */
        g.M = rows, g.N = in, g.K = out, g.lda = out, g.ldb = in, g.ldc = in;
        break;
    case GEMM_LINEAR_WGRAD: /* dW[out][in] (+)= dy^T . x */
        g.trans_a = 1, g.M = out, g.N = in, g.K = rows, g.lda = out, g.ldb = in, g.ldc = in;
        break;
    }
    return g;
}

int gemm_linear_fwd(gemm_ctx *g, void *y, gemm_dtype y_type, const void *x, const void *w, int64_t rows, int64_t in,
                    int64_t out, cudaStream_t s, gp_err *e)
{
    gemm_args a = gemm_linear_args(GEMM_LINEAR_FWD, y, y_type, 0.0f, x, w, rows, in, out);
    return gemm_run(g, &a, s, e);
}

int gemm_linear_dgrad(gemm_ctx *g, void *dx, gemm_dtype dx_type, float beta, const void *dy, const void *w,
                      int64_t rows, int64_t in, int64_t out, cudaStream_t s, gp_err *e)
{
    gemm_args a = gemm_linear_args(GEMM_LINEAR_DGRAD, dx, dx_type, beta, dy, w, rows, in, out);
    return gemm_run(g, &a, s, e);
}

int gemm_linear_wgrad(gemm_ctx *g, float *dw, const void *dy, const void *x, int64_t rows, int64_t in, int64_t out,
                      cudaStream_t s, gp_err *e)
{
    gemm_args a = gemm_linear_args(GEMM_LINEAR_WGRAD, dw, GEMM_F32, 1.0f, dy, x, rows, in, out);
    return gemm_run(g, &a, s, e);
}
