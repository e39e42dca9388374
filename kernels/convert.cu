/* convert.cu: fp32 <-> bf16 conversions (k_f32_to_bf16, k_bf16_to_f32).
 *
 * Persistent grid-stride loops. fp32 -> bf16: 8 elements per thread and step (two 16-byte fp32
 * loads, one 16-byte bf16 store); bf16 -> fp32: 4 elements (an 8-byte load, a 16-byte store), so
 * every store instruction writes whole sectors. Unaligned pointers and the tail go element by
 * element. */
#include "common.cuh"

namespace
{

__global__ void __launch_bounds__(kb::THREADS) f32_to_bf16_kernel(uint16_t *dst, const float *src, int64_t n, bool vec)
{
    const int64_t n_units = (n + kb::UNIT - 1) / kb::UNIT;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; u < n_units; u += stride) {
        int64_t e = u * kb::UNIT;
        int cnt = n - e < kb::UNIT ? (int)(n - e) : kb::UNIT;
        bool v = vec && cnt == kb::UNIT;
        kb::f8 x;
        kb::ld8(x, src + e, cnt, v);
        kb::st8(dst + e, x, cnt, v);
    }
}

/* 4 elements per thread and step: an 8-byte bf16 load and a 16-byte fp32 store, both contiguous
 * across the warp (with 8 elements per thread the two 16-byte stores of a thread would each
 * cover only half of every 32-byte sector, which measured about 35% slower on an H200). */
__global__ void __launch_bounds__(kb::THREADS) bf16_to_f32_kernel(float *dst, const uint16_t *src, int64_t n, bool vec)
{
    const int64_t n_quads = (n + 3) / 4;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t q = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; q < n_quads; q += stride) {
        const int64_t e = q * 4;
        if (vec && e + 4 <= n) {
            const uint2 b = __ldg(reinterpret_cast<const uint2 *>(src + e));
            reinterpret_cast<float4 *>(dst + e)[0] =
                make_float4(__uint_as_float(b.x << 16), __uint_as_float(b.x & 0xffff0000u),
                            __uint_as_float(b.y << 16), __uint_as_float(b.y & 0xffff0000u));
        } else {
            for (int64_t k = e; k < n && k < e + 4; k++)
                dst[k] = kb::bf2f(src[k]);
        }
    }
}

} /* namespace */

extern "C" cudaError_t k_f32_to_bf16(gp_bf16 *dst, const float *src, int64_t n, cudaStream_t s)
{
    if (n <= 0)
        return cudaSuccess;
    bool vec = kb::aligned16(dst) && kb::aligned16(src);
    int64_t n_units = (n + kb::UNIT - 1) / kb::UNIT;
    f32_to_bf16_kernel<<<kb::grid_for(f32_to_bf16_kernel, n_units, kb::THREADS), kb::THREADS, 0, s>>>(dst, src, n, vec);
    return cudaGetLastError();
}

extern "C" cudaError_t k_bf16_to_f32(float *dst, const gp_bf16 *src, int64_t n, cudaStream_t s)
{
    if (n <= 0)
        return cudaSuccess;
    bool vec = kb::aligned16(dst) && ((uintptr_t)src & 7u) == 0;
    bf16_to_f32_kernel<<<kb::grid_for(bf16_to_f32_kernel, (n + 3) / 4, kb::THREADS), kb::THREADS, 0, s>>>(dst, src, n,
                                                                                                       vec);
    return cudaGetLastError();
}
