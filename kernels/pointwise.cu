/* pointwise.cu: k_swiglu_fwd/bwd, k_bias_relu_fwd, k_relu_bwd and k_bce_logits.
 *
 * Elementwise kernels run a persistent grid-stride loop over (row, unit of 8 elements): 16-byte
 * bf16 and 2 x 16-byte fp32 accesses when the row length is a multiple of 8 and the pointers are
 * aligned, element by element otherwise.
 *
 * k_relu_bwd also sums d_bias over rows without scratch memory: a block owns 32 columns and all
 * rows, its 32 warps take rows w, w + 32, ... (a lane per column, so every row access is one
 * coalesced 128-byte fp32 read), accumulate in double, and the 32 warp sums are added in warp
 * order. Its parallelism is dim / 32 blocks, plenty for the rank head (dim = 4 * model dim,
 * thousands of rows); without d_bias it is the plain elementwise kernel.
 *
 * k_bce_logits: an elementwise kernel for prob / loss / d_logit (sigmoid and loss in double, as
 * the CPU reference does), then, for d_bias, one block that recomputes the same d_logit values
 * and adds them in a fixed order (thread t takes rows t, t + 1024, ...; then a fixed tree). */
#include "common.cuh"

namespace
{

constexpr int T = kb::THREADS;

__device__ __forceinline__ float sigmoidf_acc(float a)
{
    return 1.0f / (1.0f + expf(-a));
}

/* ---- SwiGLU -------------------------------------------------------------------------------------- */

__global__ void __launch_bounds__(T) swiglu_fwd_kernel(uint16_t *g, const uint16_t *ab, int64_t rows, int F, bool vec)
{
    const int upr = (F + kb::UNIT - 1) / kb::UNIT;
    const int64_t total = rows * upr, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t r;
        int u;
        kb::divmod(i, upr, r, u);
        const int e = u * kb::UNIT, cnt = min(kb::UNIT, F - e);
        const uint16_t *ar = ab + r * 2 * F;
        kb::f8 a, b;
        kb::ld8(a, ar + e, cnt, vec);
        kb::ld8(b, ar + F + e, cnt, vec);
#pragma unroll
        for (int k = 0; k < kb::UNIT; k++)
            a.v[k] = (a.v[k] * sigmoidf_acc(a.v[k])) * b.v[k];
        kb::st8(g + r * F + e, a, cnt, vec);
    }
}

/* d silu(a)/da = sig (1 + a (1 - sig)). With g, also g = silu(a) * b, by the forward's arithmetic
 * (the same bits), so the model need not keep every block's g until the backward. */
__global__ void __launch_bounds__(T) swiglu_bwd_kernel(uint16_t *d_ab, uint16_t *g, const uint16_t *d_g,
                                                       const uint16_t *ab, int64_t rows, int F, bool vec)
{
    const int upr = (F + kb::UNIT - 1) / kb::UNIT;
    const int64_t total = rows * upr, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t r;
        int u;
        kb::divmod(i, upr, r, u);
        const int e = u * kb::UNIT, cnt = min(kb::UNIT, F - e);
        const int64_t o = r * 2 * F + e;
        kb::f8 a, b, dg, gv;
        kb::ld8(a, ab + o, cnt, vec);
        kb::ld8(b, ab + o + F, cnt, vec);
        kb::ld8(dg, d_g + r * F + e, cnt, vec);
#pragma unroll
        for (int k = 0; k < kb::UNIT; k++) {
            const float sg = sigmoidf_acc(a.v[k]);
            const float silu = a.v[k] * sg;
            const float da = (dg.v[k] * b.v[k]) * (sg * (1.0f + a.v[k] * (1.0f - sg)));
            gv.v[k] = silu * b.v[k];
            b.v[k] = dg.v[k] * silu; /* d b */
            a.v[k] = da;
        }
        kb::st8(d_ab + o, a, cnt, vec);
        kb::st8(d_ab + o + F, b, cnt, vec);
        if (g)
            kb::st8(g + r * F + e, gv, cnt, vec);
    }
}

/* ---- bias + ReLU ----------------------------------------------------------------------------------- */

__global__ void __launch_bounds__(T)
    bias_relu_kernel(uint16_t *out, const float *x, const float *bias, int64_t rows, int dim, bool vec)
{
    const int upr = (dim + kb::UNIT - 1) / kb::UNIT;
    const int64_t total = rows * upr, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t r;
        int u;
        kb::divmod(i, upr, r, u);
        const int e = u * kb::UNIT, cnt = min(kb::UNIT, dim - e);
        kb::f8 v, bv;
        kb::ld8(v, x + r * dim + e, cnt, vec);
        if (bias)
            kb::ld8(bv, bias + e, cnt, vec);
        else
            kb::zero8(bv);
#pragma unroll
        for (int k = 0; k < kb::UNIT; k++) {
            const float z = v.v[k] + bv.v[k];
            v.v[k] = z > 0.f ? z : 0.f;
        }
        kb::st8(out + r * dim + e, v, cnt, vec);
    }
}

/* d_x = d_out where out > 0, else 0 (elementwise; no d_bias). */
__global__ void __launch_bounds__(T)
    relu_bwd_kernel(uint16_t *d_x, const float *d_out, const uint16_t *out, int64_t rows, int dim, bool vec)
{
    const int upr = (dim + kb::UNIT - 1) / kb::UNIT;
    const int64_t total = rows * upr, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t r;
        int u;
        kb::divmod(i, upr, r, u);
        const int e = u * kb::UNIT, cnt = min(kb::UNIT, dim - e);
        const int64_t o = r * dim + e;
        kb::f8 d, ov;
        kb::ld8(d, d_out + o, cnt, vec);
        kb::ld8(ov, out + o, cnt, vec);
#pragma unroll
        for (int k = 0; k < kb::UNIT; k++)
            d.v[k] = ov.v[k] > 0.f ? d.v[k] : 0.f;
        kb::st8(d_x + o, d, cnt, vec);
    }
}

/* The same d_x, plus d_bias[c] += sum over rows of the fp32 d_x values (before bf16 rounding).
 * blockDim (32, 32): lane x owns column blockIdx.x * 32 + x, warp y rows y, y + 32, ... */
constexpr int RB_WARPS = 32;
constexpr int RB_BATCH = 8; /* rows whose loads are in flight together */

__global__ void __launch_bounds__(32 * RB_WARPS)
    relu_bwd_bias_kernel(uint16_t *__restrict__ d_x, float *d_bias, const float *__restrict__ d_out,
                         const uint16_t *__restrict__ out, int64_t rows, int dim)
{
    __shared__ double sm[RB_WARPS][33];
    const int col = blockIdx.x * 32 + threadIdx.x;
    double acc = 0.0;
    if (col < dim) {
        int64_t r = threadIdx.y;
        for (; r + (int64_t)(RB_BATCH - 1) * RB_WARPS < rows; r += (int64_t)RB_BATCH * RB_WARPS) {
            float d[RB_BATCH];
            uint16_t o[RB_BATCH];
#pragma unroll
            for (int q = 0; q < RB_BATCH; q++) {
                const int64_t off = (r + (int64_t)q * RB_WARPS) * dim + col;
                d[q] = __ldg(d_out + off);
                o[q] = __ldg(reinterpret_cast<const unsigned short *>(out) + off);
            }
#pragma unroll
            for (int q = 0; q < RB_BATCH; q++) {
                const float v = kb::bf2f(o[q]) > 0.f ? d[q] : 0.f;
                d_x[(r + (int64_t)q * RB_WARPS) * dim + col] = kb::f2bf(v);
                acc += (double)v;
            }
        }
        for (; r < rows; r += RB_WARPS) {
            const int64_t off = r * dim + col;
            const float v = kb::bf2f(out[off]) > 0.f ? d_out[off] : 0.f;
            d_x[off] = kb::f2bf(v);
            acc += (double)v;
        }
    }
    sm[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < dim) {
        double t = 0.0;
        for (int y = 0; y < RB_WARPS; y++)
            t += sm[y][threadIdx.x];
        d_bias[col] = (float)((double)d_bias[col] + t);
    }
}

/* ---- BCE with logits --------------------------------------------------------------------------------- */

struct bce_row {
    float prob, d;
    double loss;
    bool counted;
};

/* One row, as the CPU reference computes it: sigmoid in double rounded to fp32, the loss in
 * double, d = scale * (fp32 sigmoid - label) in double. Used by both kernels, so the d_bias sum
 * adds exactly the d_logit values written. */
__device__ __forceinline__ bce_row bce_eval(const float *logit, const float *bias, const int32_t *label, int64_t r,
                                            float scale)
{
    bce_row o;
    const float z = __ldg(logit + r) + (bias ? __ldg(bias) : 0.f);
    const double x = (double)z;
    o.prob = (float)(1.0 / (1.0 + exp(-x)));
    const int32_t y = __ldg(label + r);
    o.counted = y == 0 || y == 1;
    if (o.counted) {
        o.loss = fmax(x, 0.0) - x * (double)y + log1p(exp(-fabs(x)));
        o.d = (float)((double)scale * ((double)o.prob - (double)y));
    } else {
        o.loss = 0.0;
        o.d = 0.f;
    }
    return o;
}

__global__ void __launch_bounds__(T) bce_kernel(float *prob, float *loss, float *d_logit, const float *logit,
                                                const float *bias, const int32_t *label, int64_t n, float scale)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < n; r += stride) {
        const bce_row o = bce_eval(logit, bias, label, r, scale);
        if (prob)
            prob[r] = o.prob;
        if (loss)
            loss[r] = (float)o.loss;
        if (d_logit)
            d_logit[r] = o.d;
    }
}

__global__ void __launch_bounds__(1024)
    bce_bias_kernel(float *d_bias, const float *logit, const float *bias, const int32_t *label, int64_t n, float scale)
{
    __shared__ double red[32];
    double acc = 0.0;
    for (int64_t r = threadIdx.x; r < n; r += blockDim.x)
        acc += (double)bce_eval(logit, bias, label, r, scale).d;
    acc = kb::block_sum(acc, red);
    if (threadIdx.x == 0)
        d_bias[0] = (float)((double)d_bias[0] + acc);
}

} /* namespace */

/* ---- launchers ---------------------------------------------------------------------------------------- */

extern "C" cudaError_t k_swiglu_fwd(gp_bf16 *g, const gp_bf16 *ab, int64_t rows, int F, cudaStream_t s)
{
    if (rows <= 0 || F <= 0)
        return cudaSuccess;
    const bool vec = F % kb::UNIT == 0 && kb::aligned16(g) && kb::aligned16(ab);
    const int64_t work = rows * ((F + kb::UNIT - 1) / kb::UNIT);
    swiglu_fwd_kernel<<<kb::grid_for(swiglu_fwd_kernel, work, T), T, 0, s>>>(g, ab, rows, F, vec);
    return cudaGetLastError();
}

extern "C" cudaError_t k_swiglu_bwd(gp_bf16 *d_ab, gp_bf16 *g, const gp_bf16 *d_g, const gp_bf16 *ab, int64_t rows,
                                    int F, cudaStream_t s)
{
    if (rows <= 0 || F <= 0)
        return cudaSuccess;
    const bool vec = F % kb::UNIT == 0 && kb::aligned16(d_ab) && kb::aligned16(d_g) && kb::aligned16(ab) &&
                     (!g || kb::aligned16(g));
    const int64_t work = rows * ((F + kb::UNIT - 1) / kb::UNIT);
    swiglu_bwd_kernel<<<kb::grid_for(swiglu_bwd_kernel, work, T), T, 0, s>>>(d_ab, g, d_g, ab, rows, F, vec);
    return cudaGetLastError();
}

extern "C" cudaError_t k_bias_relu_fwd(gp_bf16 *out, const float *x, const float *bias, int64_t rows, int dim,
                                       cudaStream_t s)
{
    if (rows <= 0 || dim <= 0)
        return cudaSuccess;
    const bool vec = dim % kb::UNIT == 0 && kb::aligned16(out) && kb::aligned16(x) && kb::aligned16(bias);
    const int64_t work = rows * ((dim + kb::UNIT - 1) / kb::UNIT);
    bias_relu_kernel<<<kb::grid_for(bias_relu_kernel, work, T), T, 0, s>>>(out, x, bias, rows, dim, vec);
    return cudaGetLastError();
}

extern "C" cudaError_t k_relu_bwd(gp_bf16 *d_x, float *d_bias, const float *d_out, const gp_bf16 *out, int64_t rows,
                                  int dim, cudaStream_t s)
{
    if (rows <= 0 || dim <= 0)
        return cudaSuccess;
    if (d_bias) {
        relu_bwd_bias_kernel<<<(unsigned)((dim + 31) / 32), dim3(32, RB_WARPS), 0, s>>>(d_x, d_bias, d_out, out, rows,
                                                                                        dim);
    } else {
        const bool vec = dim % kb::UNIT == 0 && kb::aligned16(d_x) && kb::aligned16(d_out) && kb::aligned16(out);
        const int64_t work = rows * ((dim + kb::UNIT - 1) / kb::UNIT);
        relu_bwd_kernel<<<kb::grid_for(relu_bwd_kernel, work, T), T, 0, s>>>(d_x, d_out, out, rows, dim, vec);
    }
    return cudaGetLastError();
}

extern "C" cudaError_t k_bce_logits(float *prob, float *loss, float *d_logit, float *d_bias, const float *logit,
                                    const float *bias, const int32_t *label, int64_t n, float scale, cudaStream_t s)
{
    if (n <= 0)
        return cudaSuccess;
    if (prob || loss || d_logit) {
        bce_kernel<<<kb::grid_for(bce_kernel, n, T), T, 0, s>>>(prob, loss, d_logit, logit, bias, label, n, scale);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
    }
    if (d_bias)
        bce_bias_kernel<<<1, 1024, 0, s>>>(d_bias, logit, bias, label, n, scale);
    return cudaGetLastError();
}
