/* mma_sm80.cuh: the warp-level tensor-core and async-copy primitives shared by the flash-style
 * kernels (attention_resident.cu, sampled_softmax_fused.cu).
 *
 * Fragment layouts are those of mma.sync.m16n8k16 with bf16 inputs and fp32 accumulators; lane
 * (g, tig) = (lane / 4, lane % 4):
 *   A (16 x 16, row-major): a0 = (row g, k 2tig..2tig+1), a1 = (row g + 8, same k),
 *                           a2 = (row g, k 8 + 2tig..), a3 = (row g + 8, k 8 + 2tig..);
 *   B (16 x 8, "col"):      b0 = (k 2tig..2tig+1, col g), b1 = (k 8 + 2tig.., col g);
 *   C (16 x 8):             c0, c1 = (row g, cols 2tig, 2tig + 1), c2, c3 = (row g + 8, same cols).
 * So the C fragments of two adjacent n8 blocks, packed to bf16 pairs, are the A fragment of the
 * k16 step they span (the P V and dS K products reuse score accumulators this way).
 * Every function is sm_80+ (cp.async, ldmatrix, bf16 mma); the build targets sm_90. */
#ifndef GPSDREC_KERNELS_MMA_SM80_CUH
#define GPSDREC_KERNELS_MMA_SM80_CUH

#include <cuda_bf16.h>
#include <stdint.h>

namespace mma80 {

__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared, zero-filled when !pred (src is then not read). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool pred)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(pred ? 16 : 0));
}

__device__ __forceinline__ void cp_async4(void *dst, const void *src, bool pred)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(pred ? 4 : 0));
}

__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}

__device__ __forceinline__ void cp_async_wait_all()
{
    asm volatile("cp.async.wait_group 0;\n" ::);
}

/* Four 8x8 bf16 matrices from shared memory; lanes 8i .. 8i+7 give the 8 row addresses (16 bytes
 * each, 16-byte aligned) of matrix i, and every lane receives (row g, cols 2tig, 2tig + 1) of
 * each. volatile: they read shared memory written before a barrier, so they must not move. */
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

/* The same, each matrix transposed: every lane receives (rows 2tig, 2tig + 1, col g). */
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

/* c += a * b, a 16x16 (row), b 16x8 (col), bf16 in, fp32 accumulate. */
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats to a bf16 pair (round to nearest even), `lo` in the low half: one cvt.rn.bf16x2. */
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi)
{
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&v);
}

/* 2^x on the SFU (one instruction, 2 ulp): scores are kept in the log2 domain so an exponential
 * costs no multiply. ex2(-inf) = 0. */
__device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float quad_max(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

} // namespace mma80

#endif
