/* The one implementation of the CPU reference ops, compiled twice: ops_f32.c defines
 * REAL = float and OPS_FN(n) = n, ops_f64.c defines REAL = double and OPS_FN(n) = n##_f64.
 * Both include cpu/ops.h first (it defines and undefines REAL itself), then this file.
 * Everything here is static or an OPS_FN name, so the two translation units never clash.
 *
 * Determinism: every output element is produced by one thread with a fixed sequence of
 * operations that does not depend on how work is split among threads (reductions over rows
 * use fixed-size chunks; scatter-adds are partitioned by destination). Multiply-adds use an
 * explicit fma() when the target has FMA, so no compiler contraction choice can make two code
 * paths round differently.
 *
 * Speed without -ffast-math: the compiler will not reorder a floating-point reduction, so hot
 * loops are written either as axpy over contiguous memory (vectorises as is) or with several
 * independent accumulator lanes that are combined in a fixed order at the end.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#ifndef REAL
#error "define REAL and OPS_FN before including cpu/ops_impl.h"
#endif

#ifdef __FMA__
#define R_FMA(a, b, c) _Generic((REAL)0, float: fmaf, default: fma)((a), (b), (c))
#else
#define R_FMA(a, b, c) ((a) * (b) + (c))
#endif
#define R_EXP(x) _Generic((REAL)0, float: expf, default: exp)(x)
#define R_SQRT(x) _Generic((REAL)0, float: sqrtf, default: sqrt)(x)

/* Below these sizes an op runs on the calling thread: a parallel region costs microseconds on
 * an idle machine and far more when a core is busy elsewhere. PAR_MIN_WORK counts
 * multiply-adds (matrix products, attention, sampled softmax), PAR_MIN_ELEMS elements touched
 * by the element-wise and row-wise ops. */
#define PAR_MIN_WORK (1 << 19)
#define PAR_MIN_ELEMS (1 << 16)

static void *scratch_alloc(size_t bytes)
{
    void *p = NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0)
        abort(); /* scratch is bounded by the problem size; without it there is nothing to return */
    return p;
}

/* ---- small reductions ------------------------------------------------------------------ */
#define DOT_LANES 16

/* sum_i a[i] * b[i] in REAL, DOT_LANES independent lanes folded in a fixed order. */
static inline REAL dot_r(const REAL *a, const REAL *b, int64_t n)
{
    REAL lane[DOT_LANES] = {0};
    int64_t i = 0;
    for (; i + DOT_LANES <= n; i += DOT_LANES)
        for (int l = 0; l < DOT_LANES; l++)
            lane[l] = R_FMA(a[i + l], b[i + l], lane[l]);
    for (int l = 0; i < n; i++, l++)
        lane[l] = R_FMA(a[i], b[i], lane[l]);
    for (int w = DOT_LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++)
            lane[l] += lane[l + w];
    return lane[0];
}

/* sum_i a[i] * b[i] accumulated in double. */
static inline double dot_d(const REAL *a, const REAL *b, int64_t n)
{
    double lane[DOT_LANES] = {0};
    int64_t i = 0;
    for (; i + DOT_LANES <= n; i += DOT_LANES)
        for (int l = 0; l < DOT_LANES; l++)
            lane[l] += (double)a[i + l] * (double)b[i + l];
    for (int l = 0; i < n; i++, l++)
        lane[l] += (double)a[i] * (double)b[i];
    for (int w = DOT_LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++)
            lane[l] += lane[l + w];
    return lane[0];
}

/* y[i] += a * x[i] */
static inline void axpy_r(REAL *restrict y, REAL a, const REAL *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = R_FMA(a, x[i], y[i]);
}

/* ---- dense layers ---------------------------------------------------------------------- */
/* One micro-kernel serves forward, d_in and d_w: C[m][n] = sum_k A(m, k) * B[k][n] for
 * m < mr (mr = LIN_MR or 1) and a panel of LIN_NB columns, where A(m, k) = a[m*a_m + k*a_k]
 * and B is a packed, zero-padded panel [K][LIN_NB]. Each C element is one fma chain over
 * k = 0..K-1 from zero, whatever mr is, so results never depend on the blocking. */
#define LIN_MR 4
#define LIN_NB (128 / (int)sizeof(REAL)) /* four 256-bit vectors */
#define LIN_ROW_CHUNK 64                  /* rows per parallel work item (forward, d_in) */
#define LIN_RED_CHUNK 256                 /* rows reduced in REAL before adding in double (d_w, d_bias) */

static inline __attribute__((always_inline)) void lin_kernel(REAL c[LIN_MR][LIN_NB], int mr, const REAL *a,
                                                             int64_t a_m, int64_t a_k, const REAL *restrict b,
                                                             int64_t K)
{
    REAL acc[LIN_MR][LIN_NB];
    for (int m = 0; m < mr; m++)
        for (int n = 0; n < LIN_NB; n++)
            acc[m][n] = 0;
    for (int64_t k = 0; k < K; k++) {
        const REAL *bk = b + k * LIN_NB;
        for (int m = 0; m < mr; m++) {
            REAL am = a[m * a_m + k * a_k];
            for (int n = 0; n < LIN_NB; n++)
                acc[m][n] = R_FMA(am, bk[n], acc[m][n]);
        }
    }
    for (int m = 0; m < mr; m++)
        for (int n = 0; n < LIN_NB; n++)
            c[m][n] = acc[m][n];
}

/* Pack B(k, n) = src[k*s_k + n*s_n] for k < K, n < N into panels [ceil(N/NB)][K][NB], zero-padded. */
static REAL *lin_pack(const REAL *src, int64_t s_k, int64_t s_n, int64_t K, int64_t N, REAL *dst)
{
    int64_t n_pan = (N + LIN_NB - 1) / LIN_NB;
    for (int64_t p = 0; p < n_pan; p++) {
        int nv = (int)GP_MIN((int64_t)LIN_NB, N - p * LIN_NB);
        REAL *d = dst + p * K * LIN_NB;
        for (int64_t k = 0; k < K; k++) {
            const REAL *s = src + k * s_k + p * LIN_NB * s_n;
            int n = 0;
            if (s_n == 1)
                for (; n < nv; n++)
                    d[k * LIN_NB + n] = s[n];
            else
                for (; n < nv; n++)
                    d[k * LIN_NB + n] = s[n * s_n];
            for (; n < LIN_NB; n++)
                d[k * LIN_NB + n] = 0;
        }
    }
    return dst;
}

/* C[m][n] (= or +=) sum_k A(m, k) * B(k, n) (+ bias[n]) for m < M, n < N, on the calling
 * thread: A(m, k) = a[m*a_m + k*a_k], B packed by lin_pack, C rows ldc apart. */
static void lin_block(REAL *c, int64_t ldc, const REAL *a, int64_t a_m, int64_t a_k, int64_t M, const REAL *bpack,
                      int64_t K, int64_t N, const REAL *bias, int accumulate)
{
    int64_t n_pan = (N + LIN_NB - 1) / LIN_NB;
    REAL tile[LIN_MR][LIN_NB];
    for (int64_t p = 0; p < n_pan; p++) {
        const REAL *bp = bpack + p * K * LIN_NB;
        int nv = (int)GP_MIN((int64_t)LIN_NB, N - p * LIN_NB);
        for (int64_t m0 = 0; m0 < M;) {
            int mr = m0 + LIN_MR <= M ? LIN_MR : 1;
            if (mr == LIN_MR)
                lin_kernel(tile, LIN_MR, a + m0 * a_m, a_m, a_k, bp, K);
            else
                lin_kernel(tile, 1, a + m0 * a_m, a_m, a_k, bp, K);
            for (int m = 0; m < mr; m++) {
                REAL *cr = c + (m0 + m) * ldc + p * LIN_NB;
                for (int n = 0; n < nv; n++) {
                    REAL v = tile[m][n];
                    if (bias)
                        v += bias[p * LIN_NB + n];
                    cr[n] = accumulate ? cr[n] + v : v;
                }
            }
            m0 += mr;
        }
    }
}

/* C[r][n] (= or +=) sum_k A[r][k] * B(k, n) (+ bias[n]) for rows x N, A row-major [rows][K],
 * B packed by lin_pack. Parallel over row chunks. */
static void lin_rows(REAL *c, const REAL *a, const REAL *bpack, const REAL *bias, int64_t rows, int64_t K, int64_t N,
                     int accumulate)
{
    int64_t n_chunks = (rows + LIN_ROW_CHUNK - 1) / LIN_ROW_CHUNK;
#pragma omp parallel for schedule(static) if (rows * K * N > PAR_MIN_WORK)
    for (int64_t ch = 0; ch < n_chunks; ch++) {
        int64_t r0 = ch * LIN_ROW_CHUNK, nr = GP_MIN((int64_t)LIN_ROW_CHUNK, rows - r0);
        lin_block(c + r0 * N, N, a + r0 * K, K, 1, nr, bpack, K, N, bias, accumulate);
    }
}

void OPS_FN(cpu_linear_fwd)(REAL *out, const REAL *in, const REAL *w, const REAL *bias, int64_t rows, int in_dim,
                            int out_dim)
{
    if (rows <= 0 || out_dim <= 0)
        return;
    if (in_dim <= 0) {
        for (int64_t r = 0; r < rows; r++)
            for (int o = 0; o < out_dim; o++)
                out[r * out_dim + o] = bias ? bias[o] : 0;
        return;
    }
    int64_t n_pan = (out_dim + LIN_NB - 1) / LIN_NB;
    REAL *wp = scratch_alloc((size_t)(n_pan * in_dim * LIN_NB) * sizeof(REAL));
    lin_pack(w, 1, in_dim, in_dim, out_dim, wp); /* B(k=i, n=o) = w[o][i] */
    lin_rows(out, in, wp, bias, rows, in_dim, out_dim, 0);
    free(wp);
}

/* d_w[o][i] += sum_r d_out[r][o] * in[r][i]: the (o-block, i-panel) tiles are split among
 * threads; each thread walks the rows in fixed chunks, reduces a chunk in REAL with the
 * micro-kernel and adds it to a double accumulator, so the sum of every element has the same
 * shape whatever the number of threads. */
static void lin_dw(REAL *d_w, const REAL *d_out, const REAL *in, int64_t rows, int64_t in_dim, int64_t out_dim)
{
    int64_t n_ip = (in_dim + LIN_NB - 1) / LIN_NB;
    int64_t n_ob = (out_dim + LIN_MR - 1) / LIN_MR;
    int64_t n_tiles = n_ob * n_ip;
#pragma omp parallel if (rows * in_dim * out_dim > PAR_MIN_WORK)
    {
        int nt = omp_get_num_threads(), tid = omp_get_thread_num();
        int64_t t0 = n_tiles * tid / nt, t1 = n_tiles * (tid + 1) / nt;
        if (t0 < t1) {
            int64_t ip0 = t0 % n_ip, ip1 = (t1 - 1) % n_ip; /* panels this thread touches */
            if (t1 - t0 >= n_ip || ip1 < ip0) {
                ip0 = 0;
                ip1 = n_ip - 1;
            }
            REAL *bp = scratch_alloc((size_t)(n_ip * LIN_RED_CHUNK * LIN_NB) * sizeof(REAL));
            double *dacc = scratch_alloc((size_t)((t1 - t0) * LIN_MR * LIN_NB) * sizeof(double));
            memset(dacc, 0, (size_t)((t1 - t0) * LIN_MR * LIN_NB) * sizeof(double));
            REAL tile[LIN_MR][LIN_NB];
            for (int64_t c0 = 0; c0 < rows; c0 += LIN_RED_CHUNK) {
                int64_t kc = GP_MIN((int64_t)LIN_RED_CHUNK, rows - c0);
                /* panels [ip0, ip1] of in[c0 .. c0+kc), packed [panel][kc][NB] */
                for (int64_t ip = ip0; ip <= ip1; ip++)
                    lin_pack(in + c0 * in_dim + ip * LIN_NB, in_dim, 1, kc,
                             GP_MIN((int64_t)LIN_NB, in_dim - ip * LIN_NB), bp + ip * kc * LIN_NB);
                for (int64_t t = t0; t < t1; t++) {
                    int64_t ob = t / n_ip, ip = t % n_ip;
                    int64_t o0 = ob * LIN_MR;
                    int mr = (int)GP_MIN((int64_t)LIN_MR, out_dim - o0);
                    const REAL *a = d_out + c0 * out_dim + o0;
                    double *da = dacc + (t - t0) * LIN_MR * LIN_NB;
                    if (mr == LIN_MR) {
                        lin_kernel(tile, LIN_MR, a, 1, out_dim, bp + ip * kc * LIN_NB, kc);
                    } else {
                        for (int m = 0; m < mr; m++)
                            lin_kernel(tile + m, 1, a + m, 1, out_dim, bp + ip * kc * LIN_NB, kc);
                    }
                    for (int m = 0; m < mr; m++)
                        for (int n = 0; n < LIN_NB; n++)
                            da[m * LIN_NB + n] += (double)tile[m][n];
                }
            }
            for (int64_t t = t0; t < t1; t++) {
                int64_t ob = t / n_ip, ip = t % n_ip;
                int64_t o0 = ob * LIN_MR;
                int mr = (int)GP_MIN((int64_t)LIN_MR, out_dim - o0);
                int nv = (int)GP_MIN((int64_t)LIN_NB, in_dim - ip * LIN_NB);
                const double *da = dacc + (t - t0) * LIN_MR * LIN_NB;
                for (int m = 0; m < mr; m++) {
                    REAL *dw = d_w + (o0 + m) * in_dim + ip * LIN_NB;
                    for (int n = 0; n < nv; n++)
                        dw[n] = (REAL)((double)dw[n] + da[m * LIN_NB + n]);
                }
            }
            free(dacc);
            free(bp);
        }
    }
}

/* d_bias[o] += sum_r d_out[r][o], in the same chunked REAL-then-double shape as d_w. */
static void lin_dbias(REAL *d_bias, const REAL *d_out, int64_t rows, int64_t out_dim)
{
    enum { OB = 64 };
    int64_t n_ob = (out_dim + OB - 1) / OB;
#pragma omp parallel for schedule(static) if (rows * out_dim > PAR_MIN_ELEMS)
    for (int64_t ob = 0; ob < n_ob; ob++) {
        int64_t o0 = ob * OB;
        int nv = (int)GP_MIN((int64_t)OB, out_dim - o0);
        double dacc[OB] = {0};
        for (int64_t c0 = 0; c0 < rows; c0 += LIN_RED_CHUNK) {
            int64_t c1 = GP_MIN(rows, c0 + LIN_RED_CHUNK);
            REAL acc[OB] = {0};
            for (int64_t r = c0; r < c1; r++) {
                const REAL *d = d_out + r * out_dim + o0;
                for (int n = 0; n < nv; n++)
                    acc[n] += d[n];
            }
            for (int n = 0; n < nv; n++)
                dacc[n] += acc[n];
        }
        for (int n = 0; n < nv; n++)
            d_bias[o0 + n] = (REAL)((double)d_bias[o0 + n] + dacc[n]);
    }
}

void OPS_FN(cpu_linear_bwd)(REAL *d_in, REAL *d_w, REAL *d_bias, const REAL *d_out, const REAL *in, const REAL *w,
                            int64_t rows, int in_dim, int out_dim, int accumulate)
{
    if (rows <= 0 || in_dim < 0 || out_dim < 0)
        return;
    if (d_in && in_dim > 0) {
        if (out_dim == 0) {
            if (!accumulate)
                memset(d_in, 0, (size_t)(rows * in_dim) * sizeof(REAL));
        } else {
            int64_t n_pan = (in_dim + LIN_NB - 1) / LIN_NB;
            REAL *wp = scratch_alloc((size_t)(n_pan * out_dim * LIN_NB) * sizeof(REAL));
            lin_pack(w, in_dim, 1, out_dim, in_dim, wp); /* B(k=o, n=i) = w[o][i] */
            lin_rows(d_in, d_out, wp, NULL, rows, out_dim, in_dim, accumulate);
            free(wp);
        }
    }
    if (d_w && in_dim > 0 && out_dim > 0)
        lin_dw(d_w, d_out, in, rows, in_dim, out_dim);
    if (d_bias && out_dim > 0)
        lin_dbias(d_bias, d_out, rows, out_dim);
}

/* ---- normalisation --------------------------------------------------------------------- */
#define NORM_RED_CHUNK 512 /* rows per partial sum of rmsnorm's d_w */

void OPS_FN(cpu_rmsnorm_fwd)(REAL *out, REAL *rstd, const REAL *in, const REAL *w, int64_t rows, int dim, REAL eps)
{
    if (rows <= 0 || dim <= 0)
        return;
#pragma omp parallel for schedule(static) if (rows * dim > PAR_MIN_ELEMS)
    for (int64_t r = 0; r < rows; r++) {
        const REAL *x = in + r * dim;
        REAL *y = out + r * dim;
        REAL rs = (REAL)(1.0 / sqrt(dot_d(x, x, dim) / dim + (double)eps));
        rstd[r] = rs;
        for (int i = 0; i < dim; i++)
            y[i] = (x[i] * rs) * w[i]; /* the official order: normalise, then scale */
    }
}

/* y = x r w with r = (mean(x^2) + eps)^-1/2:
 *   dx_i = r w_i dy_i - x_i r^3 / dim * sum_j dy_j w_j x_j,  dw_i += sum_rows dy_i x_i r. */
void OPS_FN(cpu_rmsnorm_bwd)(REAL *d_in, REAL *d_w, const REAL *d_out, const REAL *in, const REAL *w,
                             const REAL *rstd, int64_t rows, int dim, int accumulate)
{
    if (rows <= 0 || dim <= 0)
        return;
    int64_t n_chunks = (rows + NORM_RED_CHUNK - 1) / NORM_RED_CHUNK;
    double *part = d_w ? scratch_alloc((size_t)(n_chunks * dim) * sizeof(double)) : NULL;
#pragma omp parallel if (rows * dim > PAR_MIN_ELEMS)
    {
        REAL *tmp = scratch_alloc((size_t)dim * sizeof(REAL));
#pragma omp for schedule(static)
        for (int64_t ch = 0; ch < n_chunks; ch++) {
            double *pw = part ? part + ch * dim : NULL;
            if (pw)
                memset(pw, 0, (size_t)dim * sizeof(double));
            int64_t r1 = GP_MIN(rows, (ch + 1) * NORM_RED_CHUNK);
            for (int64_t r = ch * NORM_RED_CHUNK; r < r1; r++) {
                const REAL *x = in + r * dim, *dy = d_out + r * dim;
                REAL rs = rstd[r];
                if (pw)
                    for (int i = 0; i < dim; i++)
                        pw[i] += (double)dy[i] * (double)x[i] * (double)rs;
                if (!d_in)
                    continue;
                for (int i = 0; i < dim; i++)
                    tmp[i] = dy[i] * w[i];
                double s = dot_d(tmp, x, dim);
                REAL c = (REAL)((double)rs * rs * rs * s / dim);
                REAL *dx = d_in + r * dim;
                for (int i = 0; i < dim; i++) {
                    REAL g = rs * tmp[i] - x[i] * c;
                    dx[i] = accumulate ? dx[i] + g : g;
                }
            }
        }
        free(tmp);
    }
    if (part) {
#pragma omp parallel for schedule(static) if (n_chunks * dim > PAR_MIN_ELEMS)
        for (int i = 0; i < dim; i++) {
            double s = 0;
            for (int64_t ch = 0; ch < n_chunks; ch++)
                s += part[ch * dim + i];
            d_w[i] = (REAL)((double)d_w[i] + s);
        }
        free(part);
    }
}

void OPS_FN(cpu_l2norm_fwd)(REAL *out, REAL *norm, const REAL *in, int64_t rows, int dim, REAL eps)
{
    if (rows <= 0 || dim <= 0)
        return;
#pragma omp parallel for schedule(static) if (rows * dim > PAR_MIN_ELEMS)
    for (int64_t r = 0; r < rows; r++) {
        const REAL *x = in + r * dim;
        REAL *y = out + r * dim;
        REAL nr = (REAL)sqrt(dot_d(x, x, dim));
        norm[r] = nr;
        REAL den = nr > eps ? nr : eps; /* the official clamp(norm, min=eps), then a division */
        for (int i = 0; i < dim; i++)
            y[i] = x[i] / den;
    }
}

void OPS_FN(cpu_l2norm_bwd)(REAL *d_in, const REAL *d_out, const REAL *out, const REAL *norm, int64_t rows, int dim,
                            REAL eps, int accumulate)
{
    if (rows <= 0 || dim <= 0)
        return;
#pragma omp parallel for schedule(static) if (rows * dim > PAR_MIN_ELEMS)
    for (int64_t r = 0; r < rows; r++) {
        const REAL *y = out + r * dim, *dy = d_out + r * dim;
        REAL *dx = d_in + r * dim;
        REAL nr = norm[r];
        if (nr > eps) {
            REAL s = (REAL)dot_d(y, dy, dim);
            for (int i = 0; i < dim; i++) {
                REAL g = (dy[i] - y[i] * s) / nr;
                dx[i] = accumulate ? dx[i] + g : g;
            }
        } else {
            for (int i = 0; i < dim; i++) {
                REAL g = dy[i] / eps;
                dx[i] = accumulate ? dx[i] + g : g;
            }
        }
    }
}

/* ---- rotary position embedding ---------------------------------------------------------- */
/* The official model builds its angles in float32: freq_i = 1 / theta^(2i/head_dim) and
 * angle = float(pos * freq_i), then takes cos and sin. Both precisions compute the angle that
 * way (so they rotate by the same angle), then cos and sin in double. */
#define ROPE_TABLE_MAX (1 << 22) /* cos/sin table entries; beyond this, compute per row */

static inline void rope_cos_sin(int32_t pos, int i, int head_dim, double theta, REAL *c, REAL *s)
{
    float expo = (float)(2 * i) / (float)head_dim;
    float freq = 1.0f / powf((float)theta, expo);
    float angle = (float)pos * freq;
    *c = (REAL)cos((double)angle);
    *s = (REAL)sin((double)angle);
}

/* sign = +1 rotates forward, -1 applies the inverse (transpose) rotation. */
static void rope_apply(REAL *x, const int32_t *pos, int64_t rows, int n_heads, int head_dim, double theta, int sign)
{
    if (rows <= 0 || n_heads <= 0 || head_dim < 2)
        return;
    int half = head_dim / 2;
    int64_t stride = (int64_t)n_heads * head_dim;
    int32_t pmin = pos[0], pmax = pos[0];
    for (int64_t r = 1; r < rows; r++) {
        pmin = GP_MIN(pmin, pos[r]);
        pmax = GP_MAX(pmax, pos[r]);
    }
    /* a cos/sin table over the range of positions, unless that range is much larger than the
     * number of rows (then computing per row is cheaper) */
    REAL *table = NULL;
    int64_t n_pos = (int64_t)pmax - pmin + 1;
    if (n_pos * half <= ROPE_TABLE_MAX && n_pos <= 2 * rows + 64) {
        table = scratch_alloc((size_t)(n_pos * half * 2) * sizeof(REAL));
#pragma omp parallel for schedule(static) if (n_pos * half > 4096)
        for (int64_t p = 0; p < n_pos; p++)
            for (int i = 0; i < half; i++)
                rope_cos_sin((int32_t)(pmin + p), i, head_dim, theta, &table[(p * half + i) * 2],
                             &table[(p * half + i) * 2 + 1]);
    }
#pragma omp parallel if (rows * stride > PAR_MIN_ELEMS)
    {
        REAL *cs = table ? NULL : scratch_alloc((size_t)half * 2 * sizeof(REAL));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const REAL *rc;
            if (table) {
                rc = table + ((int64_t)pos[r] - pmin) * half * 2;
            } else {
                for (int i = 0; i < half; i++)
                    rope_cos_sin(pos[r], i, head_dim, theta, &cs[2 * i], &cs[2 * i + 1]);
                rc = cs;
            }
            for (int h = 0; h < n_heads; h++) {
                REAL *xh = x + r * stride + (int64_t)h * head_dim;
                for (int i = 0; i < half; i++) {
                    REAL c = rc[2 * i], s = sign > 0 ? rc[2 * i + 1] : -rc[2 * i + 1];
                    REAL a = xh[2 * i], b = xh[2 * i + 1];
                    xh[2 * i] = a * c - b * s;
                    xh[2 * i + 1] = a * s + b * c;
                }
            }
        }
        free(cs);
    }
    free(table);
}

void OPS_FN(cpu_rope_fwd)(REAL *x, const int32_t *pos, int64_t rows, int n_heads, int head_dim, double theta)
{
    rope_apply(x, pos, rows, n_heads, head_dim, theta, 1);
}

void OPS_FN(cpu_rope_bwd)(REAL *dx, const int32_t *pos, int64_t rows, int n_heads, int head_dim, double theta)
{
    rope_apply(dx, pos, rows, n_heads, head_dim, theta, -1);
}

/* ---- attention ------------------------------------------------------------------------- */
/* One work item per (sequence, head), on one thread, with that head's keys and values copied
 * into small per-thread buffers, zero-padded to ATT_VL columns so that every inner loop is a
 * fixed-width block of register accumulators. The backward handles ATT_TQ queries at a time:
 * their probabilities and score gradients sit in a [ATT_TQ][len] scratch, and dk, dv receive
 * one block update per tile rather than one per query. */
#define ATT_VL 16
#define ATT_TQ 32

static inline int64_t att_round(int64_t n)
{
    return (n + ATT_VL - 1) / ATT_VL * ATT_VL;
}

/* out[c] = sum_{r < n_rows} w[r*ws] * m[r*ldm + c] for c < att_round(n_cols); m zero-padded
 * to that width. Each out[c] is one fma chain over r in order. */
static inline void att_vecmat(REAL *restrict out, const REAL *w, int64_t ws, const REAL *restrict m, int64_t ldm,
                              int n_rows, int n_cols)
{
    for (int c0 = 0; c0 < n_cols; c0 += ATT_VL) {
        REAL acc[ATT_VL] = {0};
        for (int r = 0; r < n_rows; r++) {
            REAL wr = w[r * ws];
            const REAL *mr = m + r * ldm + c0;
            for (int l = 0; l < ATT_VL; l++)
                acc[l] = R_FMA(wr, mr[l], acc[l]);
        }
        for (int l = 0; l < ATT_VL; l++)
            out[c0 + l] = acc[l];
    }
}

/* dst[d][j] = src row j, col d (transposed, [hd][ld]) for j < L; zero for L <= j < round(L). */
static void att_pack_t(REAL *dst, int64_t ld, const REAL *src, int64_t stride, int L, int hd)
{
    int64_t Lp = att_round(L);
    for (int d = 0; d < hd; d++)
        for (int64_t j = L; j < Lp; j++)
            dst[d * ld + j] = 0;
    for (int j = 0; j < L; j++)
        for (int d = 0; d < hd; d++)
            dst[(int64_t)d * ld + j] = src[j * stride + d];
}

/* dst[j][d] (rows of width hdp) = src row j, col d, zero for hd <= d < hdp. */
static void att_pack_rows(REAL *dst, int64_t hdp, const REAL *src, int64_t stride, int L, int hd)
{
    for (int j = 0; j < L; j++) {
        int d = 0;
        for (; d < hd; d++)
            dst[j * hdp + d] = src[j * stride + d];
        for (; d < hdp; d++)
            dst[j * hdp + d] = 0;
    }
}

static int32_t attn_max_len(const int32_t *seq_len, int n_seq)
{
    int32_t m = 0;
    for (int s = 0; s < n_seq; s++)
        m = GP_MAX(m, seq_len[s]);
    return m;
}

void OPS_FN(cpu_attention_fwd)(REAL *out, REAL *lse, const REAL *q, const REAL *k, const REAL *v,
                               const int64_t *seq_off, const int32_t *seq_len, int n_seq, int n_heads, int head_dim,
                               int causal)
{
    if (n_seq <= 0 || n_heads <= 0 || head_dim <= 0)
        return;
    int32_t lmax = attn_max_len(seq_len, n_seq);
    if (lmax <= 0)
        return;
    int64_t stride = (int64_t)n_heads * head_dim, lp = att_round(lmax), hdp = att_round(head_dim);
    int64_t n_items = (int64_t)n_seq * n_heads;
    REAL scale = (REAL)(1.0 / sqrt((double)head_dim));
#pragma omp parallel if (n_items * lmax * lmax * head_dim > PAR_MIN_WORK)
    {
        REAL *kt = scratch_alloc((size_t)(head_dim * lp) * sizeof(REAL));
        REAL *vr = scratch_alloc((size_t)(lp * hdp) * sizeof(REAL));
        REAL *sc = scratch_alloc((size_t)lp * sizeof(REAL));
        REAL *o = scratch_alloc((size_t)hdp * sizeof(REAL));
#pragma omp for schedule(dynamic, 4)
        for (int64_t item = 0; item < n_items; item++) {
            int s = (int)(item / n_heads), h = (int)(item % n_heads);
            int L = seq_len[s];
            if (L <= 0)
                continue;
            int64_t base = seq_off[s] * stride + (int64_t)h * head_dim;
            att_pack_t(kt, lp, k + base, stride, L, head_dim);
            att_pack_rows(vr, hdp, v + base, stride, L, head_dim);
            for (int t = 0; t < L; t++) {
                int n = causal ? t + 1 : L;
                att_vecmat(sc, q + base + t * stride, 1, kt, lp, head_dim, n);
                REAL mx = sc[0] * scale;
                for (int j = 0; j < n; j++) {
                    sc[j] *= scale;
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                double sum = 0;
                for (int j = 0; j < n; j++) {
                    sc[j] = R_EXP(sc[j] - mx);
                    sum += sc[j];
                }
                att_vecmat(o, sc, 1, vr, hdp, n, head_dim);
                REAL inv = (REAL)(1.0 / sum);
                REAL *dst = out + base + t * stride;
                for (int d = 0; d < head_dim; d++)
                    dst[d] = o[d] * inv;
                lse[(seq_off[s] + t) * n_heads + h] = (REAL)((double)mx + log(sum));
            }
        }
        free(o);
        free(sc);
        free(vr);
        free(kt);
    }
}

/* With p = softmax(s), s = scale q.k:  dv_j = sum_t p_tj do_t;  dp_tj = do_t.v_j;
 * ds_tj = p_tj (dp_tj - <do_t, o_t>);  dq_t = scale sum_j ds_tj k_j;  dk_j = scale sum_t ds_tj q_t.
 * p is recomputed from the saved lse. */
void OPS_FN(cpu_attention_bwd)(REAL *dq, REAL *dk, REAL *dv, const REAL *d_out, const REAL *q, const REAL *k,
                               const REAL *v, const REAL *out, const REAL *lse, const int64_t *seq_off,
                               const int32_t *seq_len, int n_seq, int n_heads, int head_dim, int causal)
{
    if (n_seq <= 0 || n_heads <= 0 || head_dim <= 0)
        return;
    int32_t lmax = attn_max_len(seq_len, n_seq);
    if (lmax <= 0)
        return;
    int64_t stride = (int64_t)n_heads * head_dim, lp = att_round(lmax), hdp = att_round(head_dim);
    int64_t n_items = (int64_t)n_seq * n_heads;
    REAL scale = (REAL)(1.0 / sqrt((double)head_dim));
#pragma omp parallel if (n_items * lmax * lmax * head_dim > PAR_MIN_WORK)
    {
        size_t tmat = (size_t)(head_dim * lp) * sizeof(REAL), rmat = (size_t)(lp * hdp) * sizeof(REAL);
        size_t tile = (size_t)(ATT_TQ * lp) * sizeof(REAL), trow = (size_t)(ATT_TQ * hdp) * sizeof(REAL);
        REAL *kt = scratch_alloc(tmat), *vt = scratch_alloc(tmat);
        REAL *kr = scratch_alloc(rmat), *dka = scratch_alloc(rmat), *dva = scratch_alloc(rmat);
        REAL *P = scratch_alloc(tile), *DS = scratch_alloc(tile);
        REAL *qr = scratch_alloc(trow), *dor = scratch_alloc(trow);
        REAL *g = scratch_alloc((size_t)hdp * sizeof(REAL));
#pragma omp for schedule(dynamic, 4)
        for (int64_t item = 0; item < n_items; item++) {
            int s = (int)(item / n_heads), h = (int)(item % n_heads);
            int L = seq_len[s];
            if (L <= 0)
                continue;
            int64_t base = seq_off[s] * stride + (int64_t)h * head_dim;
            att_pack_t(kt, lp, k + base, stride, L, head_dim);
            att_pack_t(vt, lp, v + base, stride, L, head_dim);
            att_pack_rows(kr, hdp, k + base, stride, L, head_dim);
            memset(dka, 0, (size_t)(L * hdp) * sizeof(REAL));
            memset(dva, 0, (size_t)(L * hdp) * sizeof(REAL));
            for (int t0 = 0; t0 < L; t0 += ATT_TQ) {
                int tq = GP_MIN(ATT_TQ, L - t0);
                int nmax = causal ? t0 + tq : L;
                att_pack_rows(qr, hdp, q + base + t0 * stride, stride, tq, head_dim);
                att_pack_rows(dor, hdp, d_out + base + t0 * stride, stride, tq, head_dim);
                for (int i = 0; i < tq; i++) {
                    int t = t0 + i, n = causal ? t + 1 : L;
                    REAL *pr = P + i * lp, *dsr = DS + i * lp;
                    const REAL *dot = d_out + base + t * stride;
                    REAL l = lse[(seq_off[s] + t) * n_heads + h];
                    att_vecmat(pr, q + base + t * stride, 1, kt, lp, head_dim, n);
                    att_vecmat(dsr, dot, 1, vt, lp, head_dim, n); /* dp */
                    REAL D = dot_r(dot, out + base + t * stride, head_dim);
                    for (int j = 0; j < n; j++) {
                        pr[j] = R_EXP(pr[j] * scale - l);
                        dsr[j] = pr[j] * (dsr[j] - D) * scale;
                    }
                    for (int j = n; j < nmax; j++)
                        pr[j] = dsr[j] = 0;
                    att_vecmat(g, dsr, 1, kr, hdp, n, head_dim);
                    REAL *dqt = dq + base + t * stride;
                    for (int d = 0; d < head_dim; d++)
                        dqt[d] = g[d];
                }
                for (int j = 0; j < nmax; j++) {
                    att_vecmat(g, DS + j, lp, qr, hdp, tq, head_dim);
                    for (int d = 0; d < hdp; d++)
                        dka[j * hdp + d] += g[d];
                    att_vecmat(g, P + j, lp, dor, hdp, tq, head_dim);
                    for (int d = 0; d < hdp; d++)
                        dva[j * hdp + d] += g[d];
                }
            }
            for (int j = 0; j < L; j++)
                for (int d = 0; d < head_dim; d++) {
                    dk[base + j * stride + d] = dka[j * hdp + d];
                    dv[base + j * stride + d] = dva[j * hdp + d];
                }
        }
        free(g);
        free(dor);
        free(qr);
        free(DS);
        free(P);
        free(dva);
        free(dka);
        free(kr);
        free(vt);
        free(kt);
    }
}

/* ---- pointwise ------------------------------------------------------------------------- */
static inline REAL sigmoid_r(REAL a)
{
    return (REAL)1 / ((REAL)1 + R_EXP(-a));
}

void OPS_FN(cpu_swiglu_fwd)(REAL *out, const REAL *a, const REAL *b, int64_t n)
{
#pragma omp parallel for schedule(static) if (n > PAR_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++)
        out[i] = a[i] * sigmoid_r(a[i]) * b[i];
}

/* d silu(a)/da = sig (1 + a (1 - sig)). */
void OPS_FN(cpu_swiglu_bwd)(REAL *da, REAL *db, const REAL *d_out, const REAL *a, const REAL *b, int64_t n)
{
#pragma omp parallel for schedule(static) if (n > PAR_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) {
        REAL sg = sigmoid_r(a[i]);
        REAL silu = a[i] * sg;
        REAL g = d_out[i];
        da[i] = g * b[i] * (sg * ((REAL)1 + a[i] * ((REAL)1 - sg)));
        db[i] = g * silu;
    }
}

void OPS_FN(cpu_relu_fwd)(REAL *out, const REAL *in, int64_t n)
{
#pragma omp parallel for schedule(static) if (n > PAR_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++)
        out[i] = in[i] > 0 ? in[i] : 0;
}

void OPS_FN(cpu_relu_bwd)(REAL *d_in, const REAL *d_out, const REAL *out, int64_t n)
{
#pragma omp parallel for schedule(static) if (n > PAR_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++)
        d_in[i] = out[i] > 0 ? d_out[i] : 0;
}

/* ---- embeddings ------------------------------------------------------------------------ */
void OPS_FN(cpu_embedding_fwd)(REAL *out, const REAL *table, const int32_t *ids, int64_t rows, int dim,
                               int accumulate)
{
    if (rows <= 0 || dim <= 0)
        return;
#pragma omp parallel for schedule(static) if (rows * dim > PAR_MIN_ELEMS)
    for (int64_t r = 0; r < rows; r++) {
        const REAL *src = table + (int64_t)ids[r] * dim;
        REAL *dst = out + r * dim;
        if (accumulate)
            for (int i = 0; i < dim; i++)
                dst[i] += src[i];
        else
            memcpy(dst, src, (size_t)dim * sizeof(REAL));
    }
}

/* Threads own table rows by id (id mod thread count) and each scans every row in order, so a
 * table row receives its updates in increasing r whatever the number of threads. */
void OPS_FN(cpu_embedding_bwd)(REAL *d_table, const REAL *d_out, const int32_t *ids, int64_t rows, int dim,
                               const uint8_t *freeze_mask)
{
    if (rows <= 0 || dim <= 0)
        return;
#pragma omp parallel if (rows * dim > PAR_MIN_ELEMS)
    {
        uint32_t nt = (uint32_t)omp_get_num_threads(), tid = (uint32_t)omp_get_thread_num();
        for (int64_t r = 0; r < rows; r++) {
            int32_t id = ids[r];
            if ((uint32_t)id % nt != tid || (freeze_mask && freeze_mask[id]))
                continue;
            REAL *dst = d_table + (int64_t)id * dim;
            const REAL *src = d_out + r * dim;
            for (int i = 0; i < dim; i++)
                dst[i] += src[i];
        }
    }
}

/* ---- losses ---------------------------------------------------------------------------- */
/* Parallel over sequences: the rows of a sequence are handled by one thread in increasing row
 * order, so d_neg (shared by all rows of a sequence) is accumulated deterministically without
 * any cross-thread reduction. Within a sequence, rows go in blocks of SS_RB through the linear
 * micro-kernel: logits = H N^T, then d_h = G N and d_neg += G^T H with G the logit gradients. */
static int64_t ss_block_rows(int n_neg)
{
    return GP_MAX((int64_t)LIN_MR, GP_MIN((int64_t)64, ((int64_t)1 << 18) / GP_MAX(n_neg, 1)));
}

void OPS_FN(cpu_sampled_softmax)(double *loss_sum, REAL *d_h, REAL *d_pos, REAL *d_neg, const REAL *h,
                                 const REAL *pos_emb, const REAL *neg_emb, const int32_t *label,
                                 const int32_t *neg_ids, const int32_t *row_seq, int64_t n_rows, int n_seq,
                                 int n_neg, int dim, REAL inv_temp, int logq, REAL grad_scale)
{
    if (loss_sum)
        *loss_sum = 0;
    if (n_rows <= 0 || n_seq <= 0 || dim <= 0)
        return;
    if (n_neg < 0)
        n_neg = 0;
    /* rows of each sequence, in increasing order (counting sort); rows naming no valid
     * sequence take no part */
    int64_t *first = scratch_alloc((size_t)(n_seq + 1) * sizeof(int64_t));
    int64_t *order = scratch_alloc((size_t)n_rows * sizeof(int64_t));
    double *seq_loss = scratch_alloc((size_t)n_seq * sizeof(double));
    memset(first, 0, (size_t)(n_seq + 1) * sizeof(int64_t));
    for (int64_t p = 0; p < n_rows; p++)
        if (row_seq[p] >= 0 && row_seq[p] < n_seq)
            first[row_seq[p] + 1]++;
    for (int s = 0; s < n_seq; s++)
        first[s + 1] += first[s];
    {
        int64_t *fill = scratch_alloc((size_t)n_seq * sizeof(int64_t));
        memcpy(fill, first, (size_t)n_seq * sizeof(int64_t));
        for (int64_t p = 0; p < n_rows; p++)
            if (row_seq[p] >= 0 && row_seq[p] < n_seq)
                order[fill[row_seq[p]]++] = p;
        free(fill);
    }
    int grads = d_h || d_pos || d_neg;
    int64_t rb_max = ss_block_rows(n_neg);
    int64_t neg_pan = (n_neg + LIN_NB - 1) / LIN_NB, dim_pan = (dim + LIN_NB - 1) / LIN_NB;
    int64_t ldz = GP_MAX(neg_pan, (int64_t)1) * LIN_NB;
    int64_t work = n_rows * (int64_t)(n_neg + 1) * dim;
#pragma omp parallel if (work > PAR_MIN_WORK)
    {
        REAL *negp_t = scratch_alloc((size_t)(neg_pan * dim * LIN_NB + 1) * sizeof(REAL)); /* B of H N^T */
        REAL *negp = scratch_alloc((size_t)(dim_pan * n_neg * LIN_NB + 1) * sizeof(REAL)); /* B of G N */
        REAL *hs = scratch_alloc((size_t)(rb_max * dim) * sizeof(REAL));
        REAL *hsp = scratch_alloc((size_t)(dim_pan * rb_max * LIN_NB) * sizeof(REAL)); /* B of G^T H */
        REAL *Z = scratch_alloc((size_t)(rb_max * ldz) * sizeof(REAL));
        REAL *gh = scratch_alloc((size_t)(rb_max * dim) * sizeof(REAL));
        REAL *g0 = scratch_alloc((size_t)rb_max * sizeof(REAL));
#pragma omp for schedule(dynamic, 1)
        for (int s = 0; s < n_seq; s++) {
            seq_loss[s] = 0;
            if (first[s] == first[s + 1])
                continue;
            const REAL *neg = neg_emb + (int64_t)s * n_neg * dim;
            const int32_t *nid = neg_ids + (int64_t)s * n_neg;
            lin_pack(neg, 1, dim, dim, n_neg, negp_t); /* B(k=d, n=j) = neg[j][d] */
            if (d_h)
                lin_pack(neg, dim, 1, n_neg, dim, negp); /* B(k=j, n=d) = neg[j][d] */
            for (int64_t q0 = first[s]; q0 < first[s + 1]; q0 += rb_max) {
                int64_t rb = GP_MIN(rb_max, first[s + 1] - q0);
                for (int64_t i = 0; i < rb; i++)
                    memcpy(hs + i * dim, h + order[q0 + i] * dim, (size_t)dim * sizeof(REAL));
                lin_block(Z, ldz, hs, dim, 1, rb, negp_t, dim, n_neg, NULL, 0);
                for (int64_t i = 0; i < rb; i++) {
                    int64_t p = order[q0 + i];
                    const REAL *hp = hs + i * dim, *pp = pos_emb + p * dim;
                    REAL *z = Z + i * ldz;
                    int32_t y = label[p];
                    int kept = 0;
                    for (int j = 0; j < n_neg; j++)
                        kept += nid[j] != y;
                    REAL corr = logq && kept > 0 ? (REAL)log((double)kept) : 0;
                    REAL z0 = dot_r(hp, pp, dim) * inv_temp, mx = z0;
                    for (int j = 0; j < n_neg; j++)
                        if (nid[j] != y) {
                            z[j] = (z[j] - corr) * inv_temp;
                            mx = z[j] > mx ? z[j] : mx;
                        }
                    double neg_sum = 0;
                    for (int j = 0; j < n_neg; j++) {
                        if (nid[j] != y) {
                            z[j] = R_EXP(z[j] - mx);
                            neg_sum += z[j];
                        } else {
                            z[j] = 0; /* excluded: zero probability and zero gradient */
                        }
                    }
                    double sum = (double)R_EXP(z0 - mx) + neg_sum;
                    seq_loss[s] += (double)mx + log(sum) - (double)z0;
                    if (!grads)
                        continue;
                    /* d loss / d z0 = p0 - 1 = -(sum of negatives' weights) / sum, written so
                     * it does not cancel; d loss / d zj = pj; z = score * inv_temp */
                    double gs = (double)grad_scale * inv_temp, inv_sum = 1.0 / sum;
                    g0[i] = (REAL)(-(neg_sum * inv_sum) * gs);
                    REAL gj = (REAL)(inv_sum * gs);
                    for (int j = 0; j < n_neg; j++)
                        z[j] *= gj;
                    if (d_pos)
                        axpy_r(d_pos + p * dim, g0[i], hp, dim);
                }
                if (!grads || n_neg == 0) {
                    if (d_h)
                        for (int64_t i = 0; i < rb; i++)
                            axpy_r(d_h + order[q0 + i] * dim, g0[i], pos_emb + order[q0 + i] * dim, dim);
                    continue;
                }
                if (d_h) {
                    lin_block(gh, dim, Z, ldz, 1, rb, negp, n_neg, dim, NULL, 0);
                    for (int64_t i = 0; i < rb; i++) {
                        int64_t p = order[q0 + i];
                        const REAL *pp = pos_emb + p * dim;
                        REAL *dst = d_h + p * dim;
                        for (int d = 0; d < dim; d++)
                            dst[d] += R_FMA(g0[i], pp[d], gh[i * dim + d]);
                    }
                }
                if (d_neg) {
                    lin_pack(hs, dim, 1, rb, dim, hsp); /* B(k=row, n=d) = hs[row][d] */
                    lin_block(d_neg + (int64_t)s * n_neg * dim, dim, Z, 1, ldz, n_neg, hsp, rb, dim, NULL, 1);
                }
            }
        }
        free(g0);
        free(gh);
        free(Z);
        free(hsp);
        free(hs);
        free(negp);
        free(negp_t);
    }
    double total = 0;
    for (int s = 0; s < n_seq; s++)
        total += seq_loss[s];
    if (loss_sum)
        *loss_sum = total;
    free(seq_loss);
    free(order);
    free(first);
}

/* In fixed chunks of rows (the size depends only on n_classes): logits with the linear
 * forward, softmax and loss per row, then the gradients with the linear backward. */
void OPS_FN(cpu_softmax_xent)(double *loss_sum, REAL *d_h, REAL *d_emb, const REAL *h, const REAL *emb,
                              const int32_t *label, int64_t n_rows, int n_classes, int dim, REAL inv_temp,
                              REAL grad_scale)
{
    if (loss_sum)
        *loss_sum = 0;
    if (n_rows <= 0 || n_classes <= 0 || dim <= 0)
        return;
    int64_t chunk = GP_MAX((int64_t)64, GP_MIN((int64_t)4096, ((int64_t)1 << 21) / n_classes));
    chunk = GP_MIN(chunk, n_rows);
    REAL *logit = scratch_alloc((size_t)(chunk * n_classes) * sizeof(REAL));
    double *row_loss = scratch_alloc((size_t)chunk * sizeof(double));
    double total = 0;
    for (int64_t c0 = 0; c0 < n_rows; c0 += chunk) {
        int64_t nr = GP_MIN(chunk, n_rows - c0);
        OPS_FN(cpu_linear_fwd)(logit, h + c0 * dim, emb, NULL, nr, dim, n_classes);
#pragma omp parallel for schedule(static) if (nr * n_classes > PAR_MIN_ELEMS)
        for (int64_t r = 0; r < nr; r++) {
            REAL *lg = logit + r * n_classes;
            int32_t y = label[c0 + r];
            if (y < 0 || y >= n_classes) { /* invalid label: no loss, no gradient */
                row_loss[r] = 0;
                for (int c = 0; c < n_classes; c++)
                    lg[c] = 0;
                continue;
            }
            REAL it = inv_temp, mx = lg[0] * it;
            for (int c = 0; c < n_classes; c++) {
                lg[c] *= it;
                mx = lg[c] > mx ? lg[c] : mx;
            }
            REAL zy = lg[y];
            double sum = 0;
            for (int c = 0; c < n_classes; c++) {
                lg[c] = R_EXP(lg[c] - mx);
                sum += lg[c];
            }
            row_loss[r] = (double)mx + log(sum) - (double)zy;
            if (!d_h && !d_emb)
                continue;
            double gs = (double)grad_scale * inv_temp, inv_sum = 1.0 / sum;
            for (int c = 0; c < n_classes; c++)
                lg[c] = (REAL)(((double)lg[c] * inv_sum - (c == y)) * gs);
        }
        for (int64_t r = 0; r < nr; r++)
            total += row_loss[r];
        if (d_h || d_emb)
            OPS_FN(cpu_linear_bwd)(d_h ? d_h + c0 * dim : NULL, d_emb, NULL, logit, h + c0 * dim, emb, nr, dim,
                                   n_classes, 1);
    }
    if (loss_sum)
        *loss_sum = total;
    free(row_loss);
    free(logit);
}

void OPS_FN(cpu_bce_logits)(double *loss_sum, int64_t *count, REAL *prob, REAL *d_logit, const REAL *logit,
                            const int32_t *label, int64_t n, REAL grad_scale)
{
    double total = 0;
    int64_t counted = 0;
    for (int64_t r = 0; r < n; r++) {
        double x = (double)logit[r];
        REAL sg = (REAL)(1.0 / (1.0 + exp(-x)));
        if (prob)
            prob[r] = sg;
        int32_t y = label[r];
        if (y != 0 && y != 1) {
            if (d_logit)
                d_logit[r] = 0;
            continue;
        }
        /* log(1 + e^x) - x y, written to stay finite for large |x| */
        total += GP_MAX(x, 0.0) - x * y + log1p(exp(-fabs(x)));
        counted++;
        if (d_logit)
            d_logit[r] = (REAL)((double)grad_scale * ((double)sg - y));
    }
    if (loss_sum)
        *loss_sum += total;
    if (count)
        *count += counted;
}

/* ---- optimiser ------------------------------------------------------------------------- */
/* PyTorch's single-tensor AdamW step, operation for operation: p.mul_(1 - lr wd);
 * m.lerp_(g, 1 - b1); v.mul_(b2).addcmul_(g, g, 1 - b2); p.addcdiv_(m, sqrt(v)/sqrt(bc2) + eps,
 * -lr/bc1), with the bias corrections in double and each scalar rounded to REAL as a tensor
 * operation with a Python scalar does. */
void OPS_FN(cpu_adamw)(REAL *p, const REAL *g, REAL *m, REAL *v, int64_t n, double lr, double beta1, double beta2,
                       double eps, double weight_decay, int64_t step, double grad_scale)
{
    if (n <= 0)
        return;
    if (step < 1)
        step = 1;
    double bc1 = 1.0 - pow(beta1, (double)step);
    double bc2 = 1.0 - pow(beta2, (double)step);
    const REAL decay = (REAL)(1.0 - lr * weight_decay);
    const REAL wm = (REAL)(1.0 - beta1), b2 = (REAL)beta2, wv = (REAL)(1.0 - beta2);
    const REAL bc2_sqrt = (REAL)sqrt(bc2), step_size = (REAL)(-(lr / bc1)), e = (REAL)eps;
    const REAL gsc = (REAL)grad_scale;
    const int lerp_low = wm < (REAL)0.5;
#pragma omp parallel for schedule(static) if (n > PAR_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) {
        REAL gi = g[i] * gsc;
        REAL pi = p[i] * decay;
        /* torch.lerp: start + w (end - start) when w < 0.5, else end - (end - start)(1 - w) */
        REAL mi = lerp_low ? m[i] + wm * (gi - m[i]) : gi - (gi - m[i]) * ((REAL)1 - wm);
        REAL vi = v[i] * b2 + wv * gi * gi;
        REAL den = R_SQRT(vi) / bc2_sqrt + e;
        p[i] = pi + step_size * (mi / den);
        m[i] = mi;
        v[i] = vi;
    }
}

#define SUMSQ_CHUNK 65536

double OPS_FN(cpu_sum_squares)(const REAL *x, int64_t n)
{
    if (n <= 0)
        return 0;
    int64_t n_chunks = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
    double *part = scratch_alloc((size_t)n_chunks * sizeof(double));
#pragma omp parallel for schedule(static) if (n > 4 * SUMSQ_CHUNK)
    for (int64_t c = 0; c < n_chunks; c++) {
        int64_t c0 = c * SUMSQ_CHUNK;
        part[c] = dot_d(x + c0, x + c0, GP_MIN((int64_t)SUMSQ_CHUNK, n - c0));
    }
    double total = 0;
    for (int64_t c = 0; c < n_chunks; c++)
        total += part[c];
    free(part);
    return total;
}
