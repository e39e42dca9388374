/* reduce.cu: deterministic sums in double (k_sum, k_sum_squares_ranges).
 *
 * Two kernels, both with fixed partitions that depend only on the sizes:
 * 1. nb blocks of 256 threads; block b owns the groups of 4 elements [b*n4/nb, (b+1)*n4/nb) of
 *    every input (n4 = ceil(len/4)); thread t adds groups t, t+256, ... of its share (the 4
 *    elements of a group in order, each converted to double first), then a fixed tree gives the
 *    block's sum, stored in scratch[b].
 * 2. One block of 1024 threads adds scratch[0..nb) (thread t: t, t+1024, ...; then a fixed tree).
 * A group is one 16-byte load when its range is 16-byte aligned, else 4 scalar loads: same
 * elements, same order, so the result is bit-identical whatever the alignment or the GPU. */
#include "common.cuh"

namespace
{

constexpr int RT = 256;           /* threads of the partial-sum kernel */
constexpr int RMAX_BLOCKS = 1024; /* <= K_REDUCE_SCRATCH */
static_assert(RMAX_BLOCKS <= K_REDUCE_SCRATCH, "scratch holds one double per block");

/* floor(b * n / nb) without 64-bit overflow */
__device__ __forceinline__ int64_t split_point(int64_t n, int nb, int b)
{
    return (n / nb) * b + ((n % nb) * b) / nb;
}

template <bool Square> __device__ __forceinline__ double group_value(const float *x, int64_t len, int64_t g, bool vec)
{
    const int64_t e = g * 4;
    float v[4];
    if (vec && e + 4 <= len) {
        const float4 q = __ldg(reinterpret_cast<const float4 *>(x + e));
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
#pragma unroll
        for (int k = 0; k < 4; k++)
            v[k] = e + k < len ? __ldg(x + e + k) : 0.f;
    }
    double s = 0.0;
#pragma unroll
    for (int k = 0; k < 4; k++)
        s += Square ? (double)v[k] * (double)v[k] : (double)v[k];
    return s;
}

template <bool Square> __device__ __forceinline__ double share_sum(const float *x, int64_t len, int nb, int b)
{
    const int64_t n4 = (len + 3) / 4;
    const int64_t g0 = split_point(n4, nb, b), g1 = split_point(n4, nb, b + 1);
    const bool vec = kb::aligned16(x);
    double acc = 0.0;
    int64_t g = g0 + threadIdx.x;
    /* two groups per step so two loads are in flight; the adds stay in group order */
    for (; g + RT < g1; g += 2 * RT) {
        const double a = group_value<Square>(x, len, g, vec);
        const double c = group_value<Square>(x, len, g + RT, vec);
        acc += a;
        acc += c;
    }
    if (g < g1)
        acc += group_value<Square>(x, len, g, vec);
    return acc;
}

__global__ void __launch_bounds__(RT) sum_partial_kernel(double *scratch, const float *x, int64_t n, int nb)
{
    __shared__ double red[32];
    double acc = share_sum<false>(x, n, nb, blockIdx.x);
    acc = kb::block_sum(acc, red);
    if (threadIdx.x == 0)
        scratch[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(RT)
    sumsq_partial_kernel(double *scratch, const float *const *ptrs, const int64_t *lens, int n_ranges, int nb)
{
    __shared__ double red[32];
    double acc = 0.0;
    for (int i = 0; i < n_ranges; i++) {
        const int64_t len = lens[i];
        if (len > 0)
            acc += share_sum<true>(ptrs[i], len, nb, blockIdx.x);
    }
    acc = kb::block_sum(acc, red);
    if (threadIdx.x == 0)
        scratch[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(1024) finish_kernel(double *out, const double *scratch, int nb)
{
    __shared__ double red[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < nb; i += blockDim.x)
        acc += scratch[i];
    acc = kb::block_sum(acc, red);
    if (threadIdx.x == 0)
        out[0] = acc;
}

} /* namespace */

extern "C" cudaError_t k_sum(double *out, const float *x, int64_t n, double *scratch, cudaStream_t s)
{
    if (n <= 0) { /* the empty sum: out = 0 */
        cudaError_t e = cudaMemsetAsync(out, 0, sizeof(double), s);
        return e != cudaSuccess ? e : cudaGetLastError();
    }
    /* at least 8 groups per thread before another block is worth it */
    const int64_t n4 = (n + 3) / 4;
    int64_t nb = (n4 + (int64_t)RT * 8 - 1) / ((int64_t)RT * 8);
    if (nb > RMAX_BLOCKS)
        nb = RMAX_BLOCKS;
    sum_partial_kernel<<<(unsigned)nb, RT, 0, s>>>(scratch, x, n, (int)nb);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return e;
    finish_kernel<<<1, 1024, 0, s>>>(out, scratch, (int)nb);
    return cudaGetLastError();
}

extern "C" cudaError_t k_sum_squares_ranges(double *out, const float *const *ptrs, const int64_t *lens, int n_ranges,
                                            double *scratch, cudaStream_t s)
{
    if (n_ranges <= 0) {
        cudaError_t e = cudaMemsetAsync(out, 0, sizeof(double), s);
        return e != cudaSuccess ? e : cudaGetLastError();
    }
    /* The lengths live on the device, so the partition uses a fixed block count. */
    sumsq_partial_kernel<<<RMAX_BLOCKS, RT, 0, s>>>(scratch, ptrs, lens, n_ranges, RMAX_BLOCKS);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return e;
    finish_kernel<<<1, 1024, 0, s>>>(out, scratch, RMAX_BLOCKS);
    return cudaGetLastError();
}
