// Attention for head sizes the tensor-core kernels (attention.cu: 8, 16, 32, 64) do not take:
// plain fp32 arithmetic on CUDA cores, one thread per query row (forward, dQ) or per key row
// (dK, dV), one block per (sequence, head). Same packed layout, masks and results as
// k_attention_fwd/bwd; meant for small models (the golden vectors' head_dim 4), where its O(L^2)
// loops per thread are cheap.
#include <math.h>

#include "kernels.h"

namespace {

constexpr int kGenericThreads = 128;
constexpr int kMaxHeadDim = 64;

__device__ __forceinline__ float bf(const gp_bf16 *p, int64_t i)
{
    return __uint_as_float((uint32_t)p[i] << 16);
}

__device__ __forceinline__ gp_bf16 to_bf(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (gp_bf16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (gp_bf16)(u >> 16);
}

// Scaled score of query row t against key row j of one (sequence, head).
__device__ __forceinline__ float score(const gp_bf16 *q, const gp_bf16 *k, int hd, float scale)
{
    float s = 0.f;
    for (int d = 0; d < hd; d++)
        s += bf(q, d) * bf(k, d);
    return s * scale;
}

__global__ void __launch_bounds__(kGenericThreads)
    attention_generic_fwd_kernel(gp_bf16 *out, float *lse, const gp_bf16 *qkv, const int32_t *seq_off,
                                 const int32_t *seq_len, int n_heads, int hd, int causal)
{
    const int b = blockIdx.x, h = blockIdx.y;
    const int64_t row0 = seq_off[b];
    const int L = seq_len[b];
    const int64_t D = (int64_t)n_heads * hd, ld = 3 * D;
    const float scale = rsqrtf((float)hd);
    for (int t = threadIdx.x; t < L; t += blockDim.x) {
        const gp_bf16 *q = qkv + (row0 + t) * ld + (int64_t)h * hd;
        const int keys = causal ? t + 1 : L;
        float m = -INFINITY;
        for (int j = 0; j < keys; j++)
            m = fmaxf(m, score(q, qkv + (row0 + j) * ld + D + (int64_t)h * hd, hd, scale));
        float acc[kMaxHeadDim];
        for (int d = 0; d < hd; d++)
            acc[d] = 0.f;
        float sum = 0.f;
        for (int j = 0; j < keys; j++) {
            const float p = __expf(score(q, qkv + (row0 + j) * ld + D + (int64_t)h * hd, hd, scale) - m);
            sum += p;
            const gp_bf16 *v = qkv + (row0 + j) * ld + 2 * D + (int64_t)h * hd;
            for (int d = 0; d < hd; d++)
                acc[d] += p * bf(v, d);
        }
        gp_bf16 *o = out + (row0 + t) * D + (int64_t)h * hd;
        for (int d = 0; d < hd; d++)
            o[d] = to_bf(acc[d] / sum);
        lse[(row0 + t) * n_heads + h] = m + logf(sum);
    }
}

// dQ (and nothing else) of each query row.
__global__ void __launch_bounds__(kGenericThreads)
    attention_generic_dq_kernel(gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv, const gp_bf16 *out,
                                const float *lse, const int32_t *seq_off, const int32_t *seq_len, int n_heads, int hd,
                                int causal)
{
    const int b = blockIdx.x, h = blockIdx.y;
    const int64_t row0 = seq_off[b];
    const int L = seq_len[b];
    const int64_t D = (int64_t)n_heads * hd, ld = 3 * D;
    const float scale = rsqrtf((float)hd);
    for (int t = threadIdx.x; t < L; t += blockDim.x) {
        const gp_bf16 *q = qkv + (row0 + t) * ld + (int64_t)h * hd;
        const gp_bf16 *dout = d_out + (row0 + t) * D + (int64_t)h * hd;
        const gp_bf16 *o = out + (row0 + t) * D + (int64_t)h * hd;
        float delta = 0.f;
        for (int d = 0; d < hd; d++)
            delta += bf(dout, d) * bf(o, d);
        const float l = lse[(row0 + t) * n_heads + h];
        const int keys = causal ? t + 1 : L;
        float acc[kMaxHeadDim];
        for (int d = 0; d < hd; d++)
            acc[d] = 0.f;
        for (int j = 0; j < keys; j++) {
            const gp_bf16 *k = qkv + (row0 + j) * ld + D + (int64_t)h * hd;
            const gp_bf16 *v = qkv + (row0 + j) * ld + 2 * D + (int64_t)h * hd;
            const float p = __expf(score(q, k, hd, scale) - l);
            float dp = 0.f;
            for (int d = 0; d < hd; d++)
                dp += bf(dout, d) * bf(v, d);
            const float ds = p * (dp - delta) * scale;
            for (int d = 0; d < hd; d++)
                acc[d] += ds * bf(k, d);
        }
        gp_bf16 *dq = d_qkv + (row0 + t) * ld + (int64_t)h * hd;
        for (int d = 0; d < hd; d++)
            dq[d] = to_bf(acc[d]);
    }
}

// dK and dV of each key row: loops over the queries that see it.
__global__ void __launch_bounds__(kGenericThreads)
    attention_generic_dkv_kernel(gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv, const gp_bf16 *out,
                                 const float *lse, const int32_t *seq_off, const int32_t *seq_len, int n_heads, int hd,
                                 int causal)
{
    const int b = blockIdx.x, h = blockIdx.y;
    const int64_t row0 = seq_off[b];
    const int L = seq_len[b];
    const int64_t D = (int64_t)n_heads * hd, ld = 3 * D;
    const float scale = rsqrtf((float)hd);
    for (int j = threadIdx.x; j < L; j += blockDim.x) {
        const gp_bf16 *k = qkv + (row0 + j) * ld + D + (int64_t)h * hd;
        const gp_bf16 *v = qkv + (row0 + j) * ld + 2 * D + (int64_t)h * hd;
        float dk[kMaxHeadDim], dv[kMaxHeadDim];
        for (int d = 0; d < hd; d++)
            dk[d] = dv[d] = 0.f;
        for (int t = causal ? j : 0; t < L; t++) {
            const gp_bf16 *q = qkv + (row0 + t) * ld + (int64_t)h * hd;
            const gp_bf16 *dout = d_out + (row0 + t) * D + (int64_t)h * hd;
            const gp_bf16 *o = out + (row0 + t) * D + (int64_t)h * hd;
            const float p = __expf(score(q, k, hd, scale) - lse[(row0 + t) * n_heads + h]);
            float dp = 0.f, delta = 0.f;
            for (int d = 0; d < hd; d++) {
                dp += bf(dout, d) * bf(v, d);
                delta += bf(dout, d) * bf(o, d);
            }
            const float ds = p * (dp - delta) * scale;
            for (int d = 0; d < hd; d++) {
                dv[d] += p * bf(dout, d);
                dk[d] += ds * bf(q, d);
            }
        }
        gp_bf16 *dkp = d_qkv + (row0 + j) * ld + D + (int64_t)h * hd;
        gp_bf16 *dvp = d_qkv + (row0 + j) * ld + 2 * D + (int64_t)h * hd;
        for (int d = 0; d < hd; d++) {
            dkp[d] = to_bf(dk[d]);
            dvp[d] = to_bf(dv[d]);
        }
    }
}

} // namespace

extern "C" cudaError_t k_attention_generic_fwd(gp_bf16 *out, float *lse, const gp_bf16 *qkv, const int32_t *seq_off,
                                               const int32_t *seq_len, int n_seq, int n_heads, int head_dim,
                                               int causal, cudaStream_t s)
{
    if (n_seq == 0 || n_heads == 0)
        return cudaSuccess;
    if (head_dim < 1 || head_dim > kMaxHeadDim)
        return cudaErrorInvalidValue;
    attention_generic_fwd_kernel<<<dim3((unsigned)n_seq, (unsigned)n_heads), kGenericThreads, 0, s>>>(
        out, lse, qkv, seq_off, seq_len, n_heads, head_dim, causal);
    return cudaGetLastError();
}

extern "C" cudaError_t k_attention_generic_bwd(gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv,
                                               const gp_bf16 *out, const float *lse, const int32_t *seq_off,
                                               const int32_t *seq_len, int n_seq, int n_heads, int head_dim,
                                               int causal, cudaStream_t s)
{
    if (n_seq == 0 || n_heads == 0)
        return cudaSuccess;
    if (head_dim < 1 || head_dim > kMaxHeadDim)
        return cudaErrorInvalidValue;
    dim3 grid((unsigned)n_seq, (unsigned)n_heads);
    attention_generic_dq_kernel<<<grid, kGenericThreads, 0, s>>>(d_qkv, d_out, qkv, out, lse, seq_off, seq_len,
                                                                 n_heads, head_dim, causal);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return e;
    attention_generic_dkv_kernel<<<grid, kGenericThreads, 0, s>>>(d_qkv, d_out, qkv, out, lse, seq_off, seq_len,
                                                                  n_heads, head_dim, causal);
    return cudaGetLastError();
}
