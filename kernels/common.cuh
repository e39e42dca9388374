/* common.cuh: device helpers shared by the basic kernels (the .cu files of kernels/).
 *
 * Everything here is header-only (static / inline / templates): each .cu is compiled on its own
 * without relocatable device code, so no device symbol may be shared between translation units.
 *
 * Conventions used by the kernels that include this file
 * - Rows are processed in "units" of 8 consecutive elements. A unit is loaded with two 16-byte
 *   loads (fp32) or one 16-byte load (bf16) when the launcher has checked that every row start
 *   is 16-byte aligned (dim % 8 == 0 and the base pointers aligned: `vec`), otherwise element by
 *   element with the elements past the end of the row masked. Both paths give every thread the
 *   same elements in the same order, so results never depend on the path.
 * - Reductions are fixed trees: per-thread sums in element order, then xor-shuffle butterflies
 *   (every lane ends with the same bits), then shared-memory partials summed in index order.
 *   Nothing depends on scheduling, so results are bit-identical run to run.
 * - Offsets are int64_t.
 */
#ifndef GPSDREC_KERNELS_COMMON_CUH
#define GPSDREC_KERNELS_COMMON_CUH

#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels.h"

namespace kb
{

constexpr int UNIT = 8;      /* elements per unit */
constexpr int THREADS = 256; /* default block size */

/* ---- host-side launch helpers ------------------------------------------------------------ */

/* Blocks for a grid-stride kernel: enough for `work` items at `per_block` items per block, capped
 * at what the device keeps resident at once for this kernel (multiprocessors x the occupancy
 * of `kernel` at `threads` threads and `smem` dynamic bytes). Large problems then run as one
 * persistent wave: every block strides over the same amount of work and none waits for a
 * second wave. */
template <typename Kernel>
static inline int grid_for(Kernel kernel, int64_t work, int64_t per_block, int threads = THREADS, size_t smem = 0)
{
    int64_t need = (work + per_block - 1) / per_block;
    int dev = 0, sms = 0, per_sm = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0)
        sms = 132;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem) != cudaSuccess || per_sm <= 0)
        per_sm = 1;
    int64_t cap = (int64_t)sms * per_sm;
    if (need > cap)
        need = cap;
    return need < 1 ? 1 : (int)need;
}

__host__ __device__ inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }
__host__ __device__ inline bool aligned8(const void *p) { return ((uintptr_t)p & 7u) == 0; }

/* ---- index helpers ------------------------------------------------------------------------ */

/* q = i / d, r = i % d for i >= 0, d > 0, with 32-bit arithmetic when i fits (the common case:
 * 64-bit division is a long software sequence). */
__device__ __forceinline__ void divmod(int64_t i, int d, int64_t &q, int &r)
{
    if ((uint64_t)i <= 0xffffffffull) {
        uint32_t qq = (uint32_t)i / (uint32_t)d;
        q = qq;
        r = (int)((uint32_t)i - qq * (uint32_t)d);
    } else {
        q = i / d;
        r = (int)(i - q * d);
    }
}

/* ---- bf16 -------------------------------------------------------------------------------- */

__device__ __forceinline__ float bf2f(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

__device__ __forceinline__ uint16_t f2bf(float f)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

/* A packed bf16 pair to two floats (exact): the element at the lower address is the low half. */
__device__ __forceinline__ void bf2f2(uint32_t w, float &lo, float &hi)
{
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
}

/* Two floats to a packed bf16 pair: `a` at the lower address. */
__device__ __forceinline__ uint32_t f2bf2(float a, float b)
{
    return (uint32_t)f2bf(a) | ((uint32_t)f2bf(b) << 16);
}

/* ---- units of 8 elements ------------------------------------------------------------------- */

struct f8 {
    float v[UNIT];
};

__device__ __forceinline__ void zero8(f8 &o)
{
#pragma unroll
    for (int k = 0; k < UNIT; k++)
        o.v[k] = 0.f;
}

/* Load elements p[0..n) of a unit (n <= 8; n == 8 when vec), zero beyond. `Ro`: through the
 * read-only path (only for data no thread writes during the kernel). */
template <bool Ro = true> __device__ __forceinline__ void ld8(f8 &o, const float *p, int n, bool vec)
{
    if (vec) {
        float4 a, b;
        if (Ro) {
            a = __ldg(reinterpret_cast<const float4 *>(p));
            b = __ldg(reinterpret_cast<const float4 *>(p) + 1);
        } else {
            a = *reinterpret_cast<const float4 *>(p);
            b = *(reinterpret_cast<const float4 *>(p) + 1);
        }
        o.v[0] = a.x, o.v[1] = a.y, o.v[2] = a.z, o.v[3] = a.w;
        o.v[4] = b.x, o.v[5] = b.y, o.v[6] = b.z, o.v[7] = b.w;
    } else {
#pragma unroll
        for (int k = 0; k < UNIT; k++)
            o.v[k] = k < n ? (Ro ? __ldg(p + k) : p[k]) : 0.f;
    }
}

template <bool Ro = true> __device__ __forceinline__ void ld8(f8 &o, const uint16_t *p, int n, bool vec)
{
    if (vec) {
        uint4 a = Ro ? __ldg(reinterpret_cast<const uint4 *>(p)) : *reinterpret_cast<const uint4 *>(p);
        uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
        for (int k = 0; k < 4; k++)
            bf2f2(w[k], o.v[2 * k], o.v[2 * k + 1]);
    } else {
#pragma unroll
        for (int k = 0; k < UNIT; k++)
            o.v[k] = k < n ? bf2f(Ro ? __ldg(reinterpret_cast<const unsigned short *>(p) + k) : p[k]) : 0.f;
    }
}

__device__ __forceinline__ void st8(float *p, const f8 &x, int n, bool vec)
{
    if (vec) {
        reinterpret_cast<float4 *>(p)[0] = make_float4(x.v[0], x.v[1], x.v[2], x.v[3]);
        reinterpret_cast<float4 *>(p)[1] = make_float4(x.v[4], x.v[5], x.v[6], x.v[7]);
    } else {
#pragma unroll
        for (int k = 0; k < UNIT; k++)
            if (k < n)
                p[k] = x.v[k];
    }
}

__device__ __forceinline__ void st8(uint16_t *p, const f8 &x, int n, bool vec)
{
    if (vec) {
        uint4 a;
        a.x = f2bf2(x.v[0], x.v[1]);
        a.y = f2bf2(x.v[2], x.v[3]);
        a.z = f2bf2(x.v[4], x.v[5]);
        a.w = f2bf2(x.v[6], x.v[7]);
        *reinterpret_cast<uint4 *>(p) = a;
    } else {
#pragma unroll
        for (int k = 0; k < UNIT; k++)
            if (k < n)
                p[k] = f2bf(x.v[k]);
    }
}

/* Quads of 4 elements, for row copies: a 16-byte fp32 and an 8-byte bf16 access per thread are
 * both contiguous across a warp, so every store writes whole sectors (two 16-byte stores 32 bytes
 * apart, as with units of 8, measured up to 35% slower for store-heavy kernels). */
struct f4 {
    float v[4];
};

template <bool Ro = true>
__device__ __forceinline__ void ld4(f4 &o, const float *p, int n, bool vec)
{
    if (vec) {
        const float4 a = Ro ? __ldg(reinterpret_cast<const float4 *>(p)) : *reinterpret_cast<const float4 *>(p);
        o.v[0] = a.x, o.v[1] = a.y, o.v[2] = a.z, o.v[3] = a.w;
    } else {
#pragma unroll
        for (int k = 0; k < 4; k++)
            o.v[k] = k < n ? (Ro ? __ldg(p + k) : p[k]) : 0.f;
    }
}

template <bool Ro = true>
__device__ __forceinline__ void ld4(f4 &o, const uint16_t *p, int n, bool vec)
{
    if (vec) {
        const uint2 a = Ro ? __ldg(reinterpret_cast<const uint2 *>(p)) : *reinterpret_cast<const uint2 *>(p);
        bf2f2(a.x, o.v[0], o.v[1]);
        bf2f2(a.y, o.v[2], o.v[3]);
    } else {
#pragma unroll
        for (int k = 0; k < 4; k++)
            o.v[k] = k < n ? bf2f(Ro ? __ldg(reinterpret_cast<const unsigned short *>(p) + k) : p[k]) : 0.f;
    }
}

__device__ __forceinline__ void st4(float *p, const f4 &x, int n, bool vec)
{
    if (vec) {
        *reinterpret_cast<float4 *>(p) = make_float4(x.v[0], x.v[1], x.v[2], x.v[3]);
    } else {
#pragma unroll
        for (int k = 0; k < 4; k++)
            if (k < n)
                p[k] = x.v[k];
    }
}

__device__ __forceinline__ void st4(uint16_t *p, const f4 &x, int n, bool vec)
{
    if (vec) {
        *reinterpret_cast<uint2 *>(p) = make_uint2(f2bf2(x.v[0], x.v[1]), f2bf2(x.v[2], x.v[3]));
    } else {
#pragma unroll
        for (int k = 0; k < 4; k++)
            if (k < n)
                p[k] = f2bf(x.v[k]);
    }
}

/* ---- reductions ------------------------------------------------------------------------------ */

/* Sum over aligned groups of G lanes (G a power of two <= 32) with an xor butterfly: every lane of
 * the group gets the same bits. All 32 lanes of the warp must call it. */
template <int G, typename T> __device__ __forceinline__ T group_sum_warp(T v)
{
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over groups of G consecutive threads of a block (G a power of two, up to the block size).
 * For G > 32 the per-warp sums meet in `red` (at least blockDim.x / 32 entries per parity) and are
 * added in warp order. Every thread of the block must call it the same number of times; `parity`
 * alternates between calls so one barrier per call suffices. */
template <int G, typename T> __device__ __forceinline__ T group_sum(T v, T *red, int parity)
{
    v = group_sum_warp<(G < 32 ? G : 32)>(v);
    if constexpr (G > 32) {
        constexpr int WPG = G / 32; /* warps per group */
        const int warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
        T *buf = red + parity * nw;
        if ((threadIdx.x & 31) == 0)
            buf[warp] = v;
        __syncthreads();
        const int first = (warp / WPG) * WPG;
        T s = buf[first];
#pragma unroll
        for (int k = 1; k < WPG; k++)
            s += buf[first + k];
        v = s;
    }
    return v;
}

/* Block-wide sum (any blockDim that is a multiple of 32, at most 1024) in a fixed tree; the result
 * is valid in thread 0. `red` holds 32 entries. */
template <typename T> __device__ __forceinline__ T block_sum(T v, T *red)
{
    v = group_sum_warp<32>(v);
    const int warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if ((threadIdx.x & 31) == 0)
        red[warp] = v;
    __syncthreads();
    T s = 0;
    if (threadIdx.x == 0) {
        for (int k = 0; k < nw; k++)
            s += red[k];
    }
    return s;
}

/* ---- row groups ------------------------------------------------------------------------------ */

/* Row kernels give each row a group of G lanes (G a power of two, 1..256) holding up to UPL units
 * per lane in registers: lane l owns units l, l + G, ... The configuration depends only on dim,
 * so the reduction order of a row does too. */
enum {
    ROWCFG_1,
    ROWCFG_2,
    ROWCFG_4,
    ROWCFG_8,
    ROWCFG_16,
    ROWCFG_32,
    ROWCFG_32x2,
    ROWCFG_32x4,
    ROWCFG_64x4,
    ROWCFG_128x4,
    ROWCFG_256x4,
    ROWCFG_TOO_WIDE
};

constexpr int ROW_MAX_DIM = 256 * 4 * UNIT; /* 8192 */

static inline int row_config(int dim)
{
    int upr = (dim + UNIT - 1) / UNIT;
    if (upr <= 1)
        return ROWCFG_1;
    if (upr <= 2)
        return ROWCFG_2;
    if (upr <= 4)
        return ROWCFG_4;
    if (upr <= 8)
        return ROWCFG_8;
    if (upr <= 16)
        return ROWCFG_16;
    if (upr <= 32)
        return ROWCFG_32;
    if (upr <= 64)
        return ROWCFG_32x2;
    if (upr <= 128)
        return ROWCFG_32x4;
    if (upr <= 256)
        return ROWCFG_64x4;
    if (upr <= 512)
        return ROWCFG_128x4;
    if (upr <= 1024)
        return ROWCFG_256x4;
    return ROWCFG_TOO_WIDE;
}

} /* namespace kb */

/* Expands LAUNCH(G, UPL) for the row configuration of `dim`; sets `err` to
 * cudaErrorInvalidValue when dim is wider than kb::ROW_MAX_DIM. */
/* clang-format off */
#define KB_ROW_DISPATCH(dim, err, LAUNCH)                   \
    switch (kb::row_config(dim)) {                          \
    case kb::ROWCFG_1:      LAUNCH(1, 1);   break;          \
    case kb::ROWCFG_2:      LAUNCH(2, 1);   break;          \
    case kb::ROWCFG_4:      LAUNCH(4, 1);   break;          \
    case kb::ROWCFG_8:      LAUNCH(8, 1);   break;          \
    case kb::ROWCFG_16:     LAUNCH(16, 1);  break;          \
    case kb::ROWCFG_32:     LAUNCH(32, 1);  break;          \
    case kb::ROWCFG_32x2:   LAUNCH(32, 2);  break;          \
    case kb::ROWCFG_32x4:   LAUNCH(32, 4);  break;          \
    case kb::ROWCFG_64x4:   LAUNCH(64, 4);  break;          \
    case kb::ROWCFG_128x4:  LAUNCH(128, 4); break;          \
    case kb::ROWCFG_256x4:  LAUNCH(256, 4); break;          \
    default:                (err) = cudaErrorInvalidValue; break; \
    }
/* clang-format on */

#endif
