/* attention_common.cuh: the device helpers both tensor-core attention implementations use
 * (attention.cu, the tiled kernels; attention_resident.cu, the resident ones): the store of a
 * warp's accumulator block as bf16 rows and the per-row D = <dO, O> of the backward. */
#ifndef GPSDREC_KERNELS_ATTENTION_COMMON_CUH
#define GPSDREC_KERNELS_ATTENTION_COMMON_CUH

#include <stdint.h>

#include "common.cuh"
#include "mma_sm80.cuh"

namespace attn {

/* <a, b> over HD bf16 values (16-byte aligned rows), fp32, in a fixed order. */
template <int HD>
__device__ __forceinline__ float dot_bf16(const uint16_t *__restrict__ a, const uint16_t *__restrict__ b)
{
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < HD / 8; c++) {
        const uint4 x = *reinterpret_cast<const uint4 *>(a + c * 8);
        const uint4 y = *reinterpret_cast<const uint4 *>(b + c * 8);
        const uint32_t xw[4] = {x.x, x.y, x.z, x.w}, yw[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float x_lo, x_hi, y_lo, y_hi;
            kb::bf2f2(xw[e], x_lo, x_hi);
            kb::bf2f2(yw[e], y_lo, y_hi);
            s = fmaf(x_lo, y_lo, s);
            s = fmaf(x_hi, y_hi, s);
        }
    }
    return s;
}

/* Store the 16 x HD accumulator block of a warp (C fragments of HD / 8 n8 blocks), row g times
 * mul_lo and row g + 8 times mul_hi, as bf16 into rows row_lo and row_hi (NULL: outside the
 * sequence, skipped); columns ob * 8 + 2 tig + {0, 1}. */
template <int HD>
__device__ __forceinline__ void store_rows(uint16_t *row_lo, uint16_t *row_hi, const float (&acc)[HD / 8][4],
                                           float mul_lo, float mul_hi, int tig)
{
#pragma unroll
    for (int ob = 0; ob < HD / 8; ob++) {
        const int c = ob * 8 + 2 * tig;
        if (row_lo)
            *reinterpret_cast<uint32_t *>(row_lo + c) =
                mma80::pack_bf16x2(acc[ob][0] * mul_lo, acc[ob][1] * mul_lo);
        if (row_hi)
            *reinterpret_cast<uint32_t *>(row_hi + c) =
                mma80::pack_bf16x2(acc[ob][2] * mul_hi, acc[ob][3] * mul_hi);
    }
}

} // namespace attn

#endif
