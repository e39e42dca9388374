/* softmax_loss: fused loss and gradient of softmax cross-entropy rows (sampled softmax with
 * shared negatives, and full softmax over classes).
 *
 * A group of 32, 64, 128 or 256 threads (of a 256-thread CTA) owns one row: the smallest group
 * that holds the row at up to 32 entries per thread (a warp up to 1024 entries, the CTA 8192).
 *   1. Each thread loads its entries j = t, t + TPR, ... into registers, takes their max and the
 *      sum of exp(x - max) over the kept ones (one exp per entry, kept in registers); the group
 *      reduces the max, then the sums rescaled to it, with butterflies across each warp and, for
 *      several warps, the warps' partials in a fixed tree: deterministic, the same bits in every
 *      thread.
 *   2. Each thread scales its stored exponentials by one per-thread factor and writes bf16.
 * So the logits are read once. Rows longer than 8192 are streamed by the whole CTA, read twice
 * (the second time mostly from L2), with an online max/sum.
 * Both kernels are one template: the full softmax is the sampled one with "positive" = the label
 * column and the label column as the only excluded entry.
 *
 * Precision: the per-row loss and gradient scale come from softmax_row.cuh (relative to the
 * positive logit, so a confident row keeps its digits).
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels.h"
#include "softmax_row.cuh"

namespace {

using softmax_row::RowResult;
using softmax_row::row_result;

constexpr int LOSS_THREADS = 256;
constexpr int LOSS_WARPS = LOSS_THREADS / 32;
constexpr int LOSS_UNROLL = 4; /* independent loads in flight per thread when streaming */

/* Running (max, sum of exp(x - max)) of one thread's entries (streaming rows). */
__device__ __forceinline__ void online_add(float &m, float &s, float x)
{
    if (x > m) {
        s = s * expf(m - x) + 1.f;
        m = x;
    } else if (m != -INFINITY) { /* (-inf) - (-inf) would be NaN; exp(-inf) adds nothing */
        s += expf(x - m);
    }
}

/* Reduce (m, s, kept) over the TPR threads of a row group, s being a sum of exp(x - m): the
 * max first, then the sums rescaled to it. Butterflies give every lane the same bits (each step
 * combines the same two values commutatively); several warps then merge their partials in
 * warp order, spread over the first lanes. Every thread of the CTA must call it (it holds a CTA
 * barrier when TPR > 32). */
template <int TPR>
__device__ __forceinline__ void group_reduce(float &m, float &s, int &kept)
{
    float mw = m;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
        mw = fmaxf(mw, __shfl_xor_sync(0xffffffffu, mw, off));
    s = m == -INFINITY ? 0.f : s * expf(m - mw); /* m == -inf: an empty thread */
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        s += __shfl_xor_sync(0xffffffffu, s, off);
        kept += __shfl_xor_sync(0xffffffffu, kept, off);
    }
    m = mw;
    if (TPR > 32) {
        constexpr int NW = TPR / 32;
        __shared__ float sh_m[LOSS_WARPS], sh_s[LOSS_WARPS];
        __shared__ int sh_k[LOSS_WARPS];
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        const int first = warp - warp % NW; /* the group's first warp */
        if (lane == 0) {
            sh_m[warp] = m;
            sh_s[warp] = s;
            sh_k[warp] = kept;
        }
        __syncthreads();
        m = sh_m[first];
#pragma unroll
        for (int w = 1; w < NW; w++)
            m = fmaxf(m, sh_m[first + w]);
        /* lane w < NW rescales warp w's sum; the rest add zeros */
        const int w = lane < NW ? lane : 0;
        const float mw2 = sh_m[first + w];
        s = lane < NW && mw2 != -INFINITY ? sh_s[first + w] * expf(mw2 - m) : 0.f;
        kept = lane < NW ? sh_k[first + w] : 0;
#pragma unroll
        for (int off = NW / 2; off > 0; off >>= 1) {
            s += __shfl_xor_sync(0xffffffffu, s, off);
            kept += __shfl_xor_sync(0xffffffffu, kept, off);
        }
        /* lanes 0 .. NW-1 now hold the total; give it to the whole warp */
        s = __shfl_sync(0xffffffffu, s, 0);
        kept = __shfl_sync(0xffffffffu, kept, 0);
    }
}

/* One row per group of TPR threads (32: a warp, 8 rows per CTA, ... 256: the whole CTA).
 * CACHE > 0: the row (n <= TPR * CACHE) is held in registers; CACHE = 0: streamed.
 * XENT = false: sampled softmax, n = n_neg, excluded j: ids[j] == label, z0 = pos_logit[r],
 *   kept entries shifted by -log(kept) * inv_temp with logq; row skipped when label == -100.
 * XENT = true: full softmax, n = n_classes, excluded j: j == label (it is the positive),
 *   z0 = logits[label]; row skipped when label is outside [0, n). */
template <int TPR, int CACHE, bool XENT>
__global__ void __launch_bounds__(LOSS_THREADS, 3)
    softmax_rows_kernel(float *__restrict__ loss, gp_bf16 *__restrict__ d_logits, float *__restrict__ d_pos,
                        const float *__restrict__ logits, const float *__restrict__ pos_logit,
                        const int32_t *__restrict__ label, const int32_t *__restrict__ neg_ids, int64_t rows,
                        int rows_per_seq, int n, int64_t ld, float inv_temp, int logq, float scale)
{
    constexpr int RPB = LOSS_THREADS / TPR;
    const int64_t r = (int64_t)blockIdx.x * RPB + threadIdx.x / TPR;
    const int t = threadIdx.x % TPR;
    /* no thread leaves before group_reduce: its CTA barrier must see them all */
    const bool in_range = r < rows;
    const int32_t y = in_range ? label[r] : -100;
    const float *x = logits + (in_range ? r : 0) * ld;
    gp_bf16 *dx = d_logits && in_range ? d_logits + r * ld : nullptr;
    const int32_t *ids = XENT ? nullptr : neg_ids + ((in_range ? r : 0) / rows_per_seq) * (int64_t)n;
    const bool skip = !in_range || (XENT ? (y < 0 || y >= n) : (y == -100));

    /* pass 1: this thread's statistics over its kept entries (raw logits, before any logq shift) */
    float m = -INFINITY, s = 0.f;
    int kept = 0;
    float v[CACHE > 0 ? CACHE : 1]; /* the logits, then their exponentials exp(x - m_t) */
    uint32_t keep_bits = 0;
    if (skip) {
        /* no entries */
    } else if (CACHE > 0) {
#pragma unroll
        for (int u = 0; u < CACHE; u++) {
            const int j = t + u * TPR;
            const bool in = j < n;
            v[u] = in ? x[j] : 0.f;
            if (in && (XENT ? j != y : ids[j] != y))
                keep_bits |= 1u << u;
        }
#pragma unroll
        for (int u = 0; u < CACHE; u++)
            if (keep_bits >> u & 1u)
                m = fmaxf(m, v[u]);
        const float base = m == -INFINITY ? 0.f : m;
#pragma unroll
        for (int u = 0; u < CACHE; u++) {
            v[u] = (keep_bits >> u & 1u) ? expf(v[u] - base) : 0.f;
            s += v[u];
        }
        kept = __popc(keep_bits);
    } else {
        int j = t;
        for (; j + (LOSS_UNROLL - 1) * TPR < n; j += LOSS_UNROLL * TPR) {
            float w[LOSS_UNROLL];
            bool keep[LOSS_UNROLL];
#pragma unroll
            for (int u = 0; u < LOSS_UNROLL; u++) {
                w[u] = x[j + u * TPR];
                keep[u] = XENT ? j + u * TPR != y : ids[j + u * TPR] != y;
            }
#pragma unroll
            for (int u = 0; u < LOSS_UNROLL; u++)
                if (keep[u]) {
                    online_add(m, s, w[u]);
                    kept++;
                }
        }
        for (; j < n; j += TPR)
            if (XENT ? j != y : ids[j] != y) {
                online_add(m, s, x[j]);
                kept++;
            }
    }
    const float m_t = m; /* this thread's own max, the base of its stored exponentials */
    group_reduce<TPR>(m, s, kept);
    if (!in_range)
        return;
    if (skip) {
        if (dx)
            for (int j = t; j < n; j += TPR)
                dx[j] = 0;
        if (t == 0) {
            if (loss)
                loss[r] = 0.f;
            if (!XENT && d_pos)
                d_pos[r] = 0.f;
        }
        return;
    }

    const float z0 = XENT ? x[y] : pos_logit[r];
    const double shift = (!XENT && logq && kept > 0) ? log((double)kept) * (double)inv_temp : 0.0;
    const RowResult q = row_result(m, s, kept, z0, shift, scale);
    if (t == 0) {
        if (loss)
            loss[r] = q.loss;
        if (!XENT && d_pos)
            d_pos[r] = q.d_pos;
    }
    if (!dx)
        return;

    /* pass 2: gradients; a kept entry's is exp((x_j - m) + off) * g_mul */
    if (CACHE > 0) {
        const float f = m_t == -INFINITY ? 0.f : expf((m_t - m) + q.off) * q.g_mul;
#pragma unroll
        for (int u = 0; u < CACHE; u++) {
            const int j = t + u * TPR;
            if (j >= n)
                break;
            const float gj = (XENT && j == y) ? q.d_pos : v[u] * f; /* v[u] = 0 when excluded */
            dx[j] = __bfloat16_as_ushort(__float2bfloat16_rn(gj));
        }
    } else {
        for (int j = t; j < n; j += TPR) {
            float gj;
            if (XENT && j == y)
                gj = q.d_pos;
            else if ((!XENT && ids[j] == y) || q.g_mul == 0.f)
                gj = 0.f;
            else
                gj = expf((x[j] - m) + q.off) * q.g_mul;
            dx[j] = __bfloat16_as_ushort(__float2bfloat16_rn(gj));
        }
    }
}

template <int TPR, int CACHE, bool XENT>
cudaError_t launch_group(float *loss, gp_bf16 *d_logits, float *d_pos, const float *logits, const float *pos_logit,
                         const int32_t *label, const int32_t *neg_ids, int64_t rows, int rows_per_seq, int n,
                         int64_t ld, float inv_temp, int logq, float scale, cudaStream_t s)
{
    constexpr int64_t rpb = LOSS_THREADS / TPR;
    const int64_t blocks = (rows + rpb - 1) / rpb;
    if (blocks > INT32_MAX)
        return cudaErrorInvalidValue;
    softmax_rows_kernel<TPR, CACHE, XENT><<<(unsigned)blocks, LOSS_THREADS, 0, s>>>(
        loss, d_logits, d_pos, logits, pos_logit, label, neg_ids, rows, rows_per_seq, n, ld, inv_temp, logq, scale);
    return cudaGetLastError();
}

/* The smallest group of threads (a warp, 2, 4 or 8 warps) holding the row in registers at 8, 16
 * or 32 entries per thread; longer rows: the CTA, streaming the row twice. */
template <bool XENT>
cudaError_t launch_rows(float *loss, gp_bf16 *d_logits, float *d_pos, const float *logits, const float *pos_logit,
                        const int32_t *label, const int32_t *neg_ids, int64_t rows, int rows_per_seq, int n,
                        int64_t ld, float inv_temp, int logq, float scale, cudaStream_t s)
{
#define LAUNCH(TPR, CACHE)                                                                                         \
    return launch_group<TPR, CACHE, XENT>(loss, d_logits, d_pos, logits, pos_logit, label, neg_ids, rows,           \
                                          rows_per_seq, n, ld, inv_temp, logq, scale, s)
    if (n <= 32 * 8)
        LAUNCH(32, 8);
    if (n <= 32 * 16)
        LAUNCH(32, 16);
    if (n <= 32 * 32)
        LAUNCH(32, 32);
    if (n <= 64 * 32)
        LAUNCH(64, 32);
    if (n <= 128 * 32)
        LAUNCH(128, 32);
    if (n <= 256 * 32)
        LAUNCH(256, 32);
    LAUNCH(256, 0);
#undef LAUNCH
}

} // namespace

extern "C" cudaError_t k_sampled_softmax_rows(float *loss, gp_bf16 *d_logits, float *d_pos, const float *logits,
                                              const float *pos_logit, const int32_t *label, const int32_t *neg_ids,
                                              int64_t rows, int rows_per_seq, int n_neg, int64_t ld, float inv_temp,
                                              int logq, float scale, cudaStream_t s)
{
    if (rows <= 0)
        return cudaSuccess;
    if (n_neg < 0 || rows_per_seq <= 0 || ld < n_neg)
        return cudaErrorInvalidValue;
    return launch_rows<false>(loss, d_logits, d_pos, logits, pos_logit, label, neg_ids, rows, rows_per_seq, n_neg,
                              ld, inv_temp, logq, scale, s);
}

extern "C" cudaError_t k_softmax_xent_rows(float *loss, gp_bf16 *d_logits, const float *logits, const int32_t *label,
                                           int64_t rows, int n_classes, int64_t ld, float scale, cudaStream_t s)
{
    if (rows <= 0)
        return cudaSuccess;
    if (n_classes <= 0 || ld < n_classes)
        return cudaErrorInvalidValue;
    return launch_rows<true>(loss, d_logits, nullptr, logits, nullptr, label, nullptr, rows, 1, n_classes, ld, 1.f,
                             0, scale, s);
}
