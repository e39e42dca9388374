/* softmax_row.cuh: the per-row result of a softmax cross-entropy row from its statistics,
 * shared by the row kernels (softmax_loss.cu) and the fused sampled softmax
 * (sampled_softmax_fused.cu), so both give the same loss and gradient scale from the same
 * (max, sum, kept). Header-only: each .cu is compiled on its own.
 *
 * Precision: the loss is computed relative to the positive logit z0 as
 *   loss = log1p(sum_j exp(z_j - z0))                      when max_j z_j - z0 <= 20,
 *   loss = (M - z0) + log(exp(z0 - M) + sum exp(z_j - M))  otherwise (M = max_j z_j),
 * so a small loss (a confident, correct row) keeps its relative precision instead of being the
 * difference of two large numbers; likewise p0 - 1 = -(sum of the others) / total.
 */
#ifndef GPSDREC_KERNELS_SOFTMAX_ROW_CUH
#define GPSDREC_KERNELS_SOFTMAX_ROW_CUH

#include <cuda_runtime.h>
#include <math.h>

namespace softmax_row
{

/* The per-row results from the group's statistics: M = max of the kept raw logits, S = sum of
 * exp(x_j - M) over them, kept = their number, z0 the positive logit, shift the logq shift.
 * Sets the loss, p0 - 1 (times scale: d_pos), and `off` such that the gradient of a kept
 * entry is exp((x_j - M) + off) * g_mul. */
struct RowResult {
    float loss, d_pos, off, g_mul;
};

static __device__ __forceinline__ RowResult row_result(float M, float S, int kept, float z0, double shift, float scale)
{
    RowResult q = {0.f, 0.f, 0.f, 0.f};
    if (kept == 0 || M == -INFINITY)
        return q;
    /* a = max_j z_j - z0 in double: the logq shift log(kept) * inv_temp reaches ~170, where one
     * fp32 rounding would move a confident row's loss by 1e-5 relative. */
    const double a = ((double)M - shift) - (double)z0;
    if (a <= 20.0) {
        /* rest = sum_j exp(z_j - z0) = exp(a + log S); with l = a + log S split as hi + lo,
         * exp(l) = exp(hi) (1 + lo), all in fp32 while rest is a normal number */
        const double l = a + (double)logf(S);
        if (l >= -80.0) {
            const float hi = (float)l, lo = (float)(l - (double)hi);
            const float e = expf(hi);
            const float rest = fmaf(e, lo, e);
            const float inv = 1.f / (1.f + rest);
            q.loss = log1pf(rest);
            q.d_pos = scale * (-rest * inv);
            q.g_mul = scale * inv;
        } else { /* a loss below 1e-35: fp32 would keep few of its digits */
            const double rest = exp(l);
            q.loss = (float)log1p(rest);
            q.d_pos = (float)((double)scale * (-rest / (1.0 + rest)));
            q.g_mul = (float)((double)scale / (1.0 + rest));
        }
        q.off = (float)a;
    } else {
        const float a_hi = (float)a, a_lo = (float)(a - (double)a_hi);
        const float e = expf(-a_hi);
        const float total = fmaf(e, -a_lo, e) + S; /* relative to the largest z_j */
        q.loss = (a_hi + logf(total)) + a_lo;
        q.d_pos = scale * (-S / total);
        q.g_mul = scale / total;
    }
    return q;
}


} // namespace softmax_row

#endif
