/* optim.cu: AdamW over a list of tensors (k_adamw_ranges).
 *
 * One persistent grid walks every range in turn (the lengths are in device memory, so the grid
 * cannot be sized from them): 4 elements per thread and step with 16-byte accesses when the
 * range's p, g, m, v are 16-byte aligned (and its bf16 copy 8-byte aligned), the rest element by
 * element. The gradient-clipping factor is computed on the device from *sumsq.
 *
 * Every operation is the CPU reference's (cpu_adamw, PyTorch's single-tensor AdamW), in the same
 * order and precision, with explicitly rounded intrinsics so the compiler cannot fuse a multiply
 * and an add: the result is bit-identical to cpu_adamw given the same grad_scale. */
#include <math.h>

#include "common.cuh"

namespace
{

constexpr int T = kb::THREADS;

struct adam_consts {
    float decay, wm, one_minus_wm, b2, wv, bc2_sqrt, step_size, eps;
    int lerp_low;
    double max_norm;
};

__device__ __forceinline__ void adam_one(float &p, float g, float &m, float &v, float gsc, const adam_consts &c)
{
    const float gi = __fmul_rn(g, gsc);
    const float pi = __fmul_rn(p, c.decay);
    /* torch.lerp: start + w (end - start) when w < 0.5, else end - (end - start)(1 - w) */
    const float mi = c.lerp_low ? __fadd_rn(m, __fmul_rn(c.wm, __fsub_rn(gi, m)))
                                : __fsub_rn(gi, __fmul_rn(__fsub_rn(gi, m), c.one_minus_wm));
    const float vi = __fadd_rn(__fmul_rn(v, c.b2), __fmul_rn(__fmul_rn(c.wv, gi), gi));
    /* the reference computes sqrt(v) / sqrt(bc2) + eps in double, then rounds to fp32 */
    const float den = (float)__dadd_rn(__ddiv_rn(__dsqrt_rn((double)vi), (double)c.bc2_sqrt), (double)c.eps);
    p = __fadd_rn(pi, __fmul_rn(c.step_size, __fdiv_rn(mi, den)));
    m = mi;
    v = vi;
}

__global__ void __launch_bounds__(T)
    adamw_kernel(float *const *P, const float *const *Gr, float *const *M, float *const *V, gp_bf16 *const *B,
                 const int64_t *lens, int n_ranges, const double *sumsq, adam_consts c)
{
    float gsc = 1.0f;
    if (c.max_norm > 0) { /* the CPU backend's clip: coef = max_norm / (norm + 1e-6), used when < 1 */
        const double coef = c.max_norm / (sqrt(*sumsq) + 1e-6);
        gsc = (float)(coef < 1.0 ? coef : 1.0);
    }
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (int64_t)gridDim.x * blockDim.x;
    for (int i = 0; i < n_ranges; i++) {
        const int64_t len = lens[i];
        float *p = P[i], *m = M[i], *v = V[i];
        const float *g = Gr[i];
        uint16_t *b = B ? B[i] : nullptr;
        const bool vec =
            kb::aligned16(p) && kb::aligned16(g) && kb::aligned16(m) && kb::aligned16(v) && ((uintptr_t)b & 7u) == 0;
        const int64_t n4 = vec ? len / 4 : 0;
        for (int64_t q = tid; q < n4; q += stride) {
            float4 pv = reinterpret_cast<float4 *>(p)[q], mv = reinterpret_cast<float4 *>(m)[q],
                   vv = reinterpret_cast<float4 *>(v)[q];
            const float4 gv = __ldg(reinterpret_cast<const float4 *>(g) + q);
            adam_one(pv.x, gv.x, mv.x, vv.x, gsc, c);
            adam_one(pv.y, gv.y, mv.y, vv.y, gsc, c);
            adam_one(pv.z, gv.z, mv.z, vv.z, gsc, c);
            adam_one(pv.w, gv.w, mv.w, vv.w, gsc, c);
            reinterpret_cast<float4 *>(p)[q] = pv;
            reinterpret_cast<float4 *>(m)[q] = mv;
            reinterpret_cast<float4 *>(v)[q] = vv;
            if (b)
                reinterpret_cast<uint2 *>(b)[q] = make_uint2(kb::f2bf2(pv.x, pv.y), kb::f2bf2(pv.z, pv.w));
        }
        for (int64_t e = n4 * 4 + tid; e < len; e += stride) {
            float pe = p[e], me = m[e], ve = v[e];
            adam_one(pe, __ldg(g + e), me, ve, gsc, c);
            p[e] = pe;
            m[e] = me;
            v[e] = ve;
            if (b)
                b[e] = kb::f2bf(pe);
        }
    }
}

} /* namespace */

extern "C" cudaError_t k_adamw_ranges(float *const *p, const float *const *g, float *const *m, float *const *v,
                                      gp_bf16 *const *bf16_copy, const int64_t *lens, int n_ranges, const double *sumsq,
                                      double max_norm, double lr, double beta1, double beta2, double eps,
                                      double weight_decay, int64_t step, cudaStream_t s)
{
    if (n_ranges <= 0)
        return cudaSuccess;
    if (max_norm > 0 && !sumsq)
        return cudaErrorInvalidValue;
    if (step < 1)
        step = 1;
    /* the scalars exactly as cpu_adamw rounds them */
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    adam_consts c;
    volatile double lr_wd = lr * weight_decay; /* no fused multiply-add: the reference has none */
    c.decay = (float)(1.0 - lr_wd);
    c.wm = (float)(1.0 - beta1);
    c.one_minus_wm = 1.0f - c.wm;
    c.b2 = (float)beta2;
    c.wv = (float)(1.0 - beta2);
    c.bc2_sqrt = (float)sqrt(bc2);
    c.step_size = (float)(-(lr / bc1));
    c.eps = (float)eps;
    c.lerp_low = c.wm < 0.5f;
    c.max_norm = max_norm;
    adamw_kernel<<<kb::grid_for(adamw_kernel, (int64_t)1 << 40, T), T, 0, s>>>(p, g, m, v, bf16_copy, lens, n_ranges,
                                                                               sumsq, c);
    return cudaGetLastError();
}
