/* rope.cuh: the rotary embedding's arithmetic, shared by k_rope_qk (rope.cu), its (cos, sin)
 * table (k_rope_table) and the resident attention kernels that rotate q and k as they stage
 * them, so that every path produces the same bits. Operations are spelled with explicit
 * rounding intrinsics: the compiler may not contract them into different fused multiply-adds in
 * different kernels. */
#ifndef GPSDREC_KERNELS_ROPE_CUH
#define GPSDREC_KERNELS_ROPE_CUH

#include <cuda_runtime.h>

namespace rope {

/* freq_i = 1 / theta^(2i / head_dim) in fp32, as the official model builds it. */
__device__ __forceinline__ float freq(int i, int head_dim, float theta)
{
    return 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
}

/* (cos, sign * sin) of the fp32 angle pos * freq. */
__device__ __forceinline__ float2 cos_sin(int pos, float f, float sign)
{
    float sn, cn;
    sincosf(__fmul_rn((float)pos, f), &sn, &cn);
    return make_float2(cn, sign * sn);
}

/* The pair (a, b) rotated by r = (cos, sin): (a cos - b sin, a sin + b cos). */
__device__ __forceinline__ float2 rotate(float a, float b, float2 r)
{
    return make_float2(__fsub_rn(__fmul_rn(a, r.x), __fmul_rn(b, r.y)),
                       __fadd_rn(__fmul_rn(a, r.y), __fmul_rn(b, r.x)));
}

} // namespace rope

#endif
