/* norm.cu: row normalisations and row dot products: k_residual_rmsnorm_fwd, k_rmsnorm_bwd
 * (+ k_rmsnorm_bwd_partial_floats), k_l2norm_fwd/bwd, k_row_dot, k_row_dot_bwd.
 *
 * Row kernels (see common.cuh): blocks of 256 threads cut into groups of G lanes, one row per
 * group, each lane holding up to UPL units of 8 elements in registers, so a row is read once;
 * the row sum is a butterfly inside the group (plus one shared-memory step when G > 32, rows
 * wider than 1024). G and UPL follow from dim alone (dim 8: 1 lane per row, 32 rows per warp;
 * dim 64: 8 lanes; dim 256: a warp; dim 1024: a warp with 4 units per lane; dim 4096: 128
 * lanes), which keeps narrow rows from wasting lanes and wide rows in registers. The grid is
 * persistent (grid-stride over rows).
 *
 * RMSNorm backward also reduces d_w over rows without atomics: block b owns a fixed chunk of
 * rows (the chunking depends on rows only), each thread accumulates its columns over its rows,
 * the block sums its row slots in order into partial[b][:], and a second kernel adds the chunk
 * partials in chunk order (in double) into d_w. */
#include "common.cuh"

namespace
{

constexpr int T = kb::THREADS;

/* ---- RMSNorm forward --------------------------------------------------------------------------- */

template <int G, int UPL>
__global__ void __launch_bounds__(T)
    rms_fwd_kernel(float *sum_out, uint16_t *norm_out, float *rstd, const float *x, const uint16_t *delta,
                   const float *w, int64_t rows, int dim, float eps, bool vec)
{
    constexpr int R = T / G;
    __shared__ float red[2 * T / 32];
    const int lane = threadIdx.x % G, slot = threadIdx.x / G;
    const int upr = (dim + kb::UNIT - 1) / kb::UNIT;
    int parity = 0;
    for (int64_t base = (int64_t)blockIdx.x * R; base < rows; base += (int64_t)gridDim.x * R, parity ^= 1) {
        const int64_t row = base + slot;
        const bool ok = row < rows;
        kb::f8 v[UPL];
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < UPL; k++) {
            const int u = lane + k * G, e = u * kb::UNIT;
            if (ok && u < upr) {
                const int cnt = min(kb::UNIT, dim - e);
                kb::ld8<false>(v[k], x + row * dim + e, cnt, vec); /* x may alias sum_out */
                if (delta) {
                    kb::f8 d;
                    kb::ld8(d, delta + row * dim + e, cnt, vec);
#pragma unroll
                    for (int j = 0; j < kb::UNIT; j++)
                        v[k].v[j] += d.v[j];
                }
#pragma unroll
                for (int j = 0; j < kb::UNIT; j++)
                    ss = fmaf(v[k].v[j], v[k].v[j], ss);
            } else {
                kb::zero8(v[k]);
            }
        }
        ss = kb::group_sum<G>(ss, red, parity);
        const float rs = 1.0f / sqrtf(ss / (float)dim + eps);
        if (!ok)
            continue;
        if (rstd && lane == 0)
            rstd[row] = rs;
#pragma unroll
        for (int k = 0; k < UPL; k++) {
            const int u = lane + k * G, e = u * kb::UNIT;
            if (u < upr) {
                const int cnt = min(kb::UNIT, dim - e);
                if (sum_out)
                    kb::st8(sum_out + row * dim + e, v[k], cnt, vec);
                if (norm_out) {
                    kb::f8 wv;
                    kb::ld8(wv, w + e, cnt, vec);
#pragma unroll
                    for (int j = 0; j < kb::UNIT; j++)
                        wv.v[j] = (v[k].v[j] * rs) * wv.v[j]; /* the official order: normalise, then scale */
                    kb::st8(norm_out + row * dim + e, wv, cnt, vec);
                }
            }
        }
    }
}

/* ---- RMSNorm backward -------------------------------------------------------------------------- */

/* Rows per d_w chunk: at least 32, at most 1024 chunks. A function of rows only, shared with
 * k_rmsnorm_bwd_partial_floats. */
int64_t rms_chunk_rows(int64_t rows)
{
    int64_t per = (rows + 1023) / 1024;
    return per < 32 ? 32 : per;
}

int64_t rms_chunks(int64_t rows)
{
    if (rows <= 0)
        return 0;
    int64_t per = rms_chunk_rows(rows);
    return (rows + per - 1) / per;
}

/* y = x r w, r = rstd: dx_i = r w_i dy_i - x_i r^3/dim sum_j dy_j w_j x_j; dw_i += dy_i x_i r. */
template <int G, int UPL, typename DY>
__global__ void __launch_bounds__(T, 2)
    rms_bwd_kernel(float *d_out, uint16_t *d_out_bf16, uint16_t *norm_regen, const DY *d_norm, const float *d_resid,
                   const float *x, const float *w, const float *rstd, int64_t rows, int dim, int64_t chunk_rows,
                   float *partial, bool vec)
{
    constexpr int R = T / G;
    __shared__ float red[2 * T / 32];
    __shared__ float dws[T * UPL * kb::UNIT]; /* [R][upr * UNIT]: each row slot's d_w partials */
    const int lane = threadIdx.x % G, slot = threadIdx.x / G;
    const int upr = (dim + kb::UNIT - 1) / kb::UNIT;
    const int64_t c0 = (int64_t)blockIdx.x * chunk_rows;
    const int64_t c1 = rows - c0 < chunk_rows ? rows : c0 + chunk_rows;
    kb::f8 dw[UPL];
#pragma unroll
    for (int k = 0; k < UPL; k++)
        kb::zero8(dw[k]);
    int parity = 0;
    for (int64_t base = c0; base < c1; base += R, parity ^= 1) {
        const int64_t row = base + slot;
        const bool ok = row < c1;
        const float rs = ok ? __ldg(rstd + row) : 0.f;
        kb::f8 t[UPL], xv[UPL];
        float sdot = 0.f;
#pragma unroll
        for (int k = 0; k < UPL; k++) {
            const int u = lane + k * G, e = u * kb::UNIT;
            if (ok && u < upr) {
                const int cnt = min(kb::UNIT, dim - e);
                kb::f8 dy, wv;
                kb::ld8(xv[k], x + row * dim + e, cnt, vec);
                kb::ld8<false>(dy, d_norm + row * dim + e, cnt, vec);
                kb::ld8(wv, w + e, cnt, vec);
#pragma unroll
                for (int j = 0; j < kb::UNIT; j++) {
                    t[k].v[j] = dy.v[j] * wv.v[j];
                    sdot = fmaf(t[k].v[j], xv[k].v[j], sdot);
                    dw[k].v[j] = fmaf(dy.v[j] * xv[k].v[j], rs, dw[k].v[j]);
                }
            } else {
                kb::zero8(t[k]);
                kb::zero8(xv[k]);
            }
        }
        sdot = kb::group_sum<G>(sdot, red, parity);
        if (!ok)
            continue;
        const float c = (float)((double)rs * rs * rs * (double)sdot / dim);
#pragma unroll
        for (int k = 0; k < UPL; k++) {
            const int u = lane + k * G, e = u * kb::UNIT;
            if (u < upr) {
                const int cnt = min(kb::UNIT, dim - e);
                kb::f8 g;
                if (d_resid)
                    kb::ld8<false>(g, d_resid + row * dim + e, cnt, vec); /* may alias d_out */
                else
                    kb::zero8(g);
#pragma unroll
                for (int j = 0; j < kb::UNIT; j++)
                    g.v[j] += rs * t[k].v[j] - xv[k].v[j] * c;
                if (d_out)
                    kb::st8(d_out + row * dim + e, g, cnt, vec);
                if (d_out_bf16)
                    kb::st8(d_out_bf16 + row * dim + e, g, cnt, vec);
                if (norm_regen) {
                    kb::f8 wv;
                    kb::ld8(wv, w + e, cnt, vec);
#pragma unroll
                    for (int j = 0; j < kb::UNIT; j++)
                        wv.v[j] = (xv[k].v[j] * rs) * wv.v[j]; /* rms_fwd_kernel's expression: the same bits */
                    kb::st8(norm_regen + row * dim + e, wv, cnt, vec);
                }
            }
        }
    }
    if (!partial)
        return;
#pragma unroll
    for (int k = 0; k < UPL; k++) {
        const int u = lane + k * G;
        if (u < upr) {
#pragma unroll
            for (int j = 0; j < kb::UNIT; j++)
                dws[slot * (upr * kb::UNIT) + u * kb::UNIT + j] = dw[k].v[j];
        }
    }
    __syncthreads();
    for (int col = threadIdx.x; col < dim; col += blockDim.x) {
        float s = 0.f;
        for (int sl = 0; sl < R; sl++)
            s += dws[sl * (upr * kb::UNIT) + col];
        partial[(int64_t)blockIdx.x * dim + col] = s;
    }
}

/* d_w[c] += sum over chunks of partial[chunk][c]: 32 columns per block, warp y adds chunks
 * y, y + 32, ... in double, then the 32 warp sums are added in order. */
__global__ void __launch_bounds__(1024) chunk_colsum_kernel(float *d_w, const float *partial, int64_t n_chunks, int dim)
{
    __shared__ double sm[32][33];
    const int col = blockIdx.x * 32 + threadIdx.x;
    double acc = 0.0;
    if (col < dim)
        for (int64_t k = threadIdx.y; k < n_chunks; k += 32)
            acc += (double)partial[k * dim + col];
    sm[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < dim) {
        double t = 0.0;
        for (int y = 0; y < 32; y++)
            t += sm[y][threadIdx.x];
        d_w[col] = (float)((double)d_w[col] + t);
    }
}

/* ---- L2 normalisation --------------------------------------------------------------------------- */

template <int G, int UPL>
__global__ void __launch_bounds__(T) l2_fwd_kernel(float *out_f32, uint16_t *out_bf16, float *norm, const float *x,
                                                   const int32_t *ids, int64_t rows, int dim, float eps, bool vec)
{
    constexpr int R = T / G;
    __shared__ float red[2 * T / 32];
    const int lane = threadIdx.x % G, slot = threadIdx.x / G;
    const int upr = (dim + kb::UNIT - 1) / kb::UNIT;
    int parity = 0;
    for (int64_t base = (int64_t)blockIdx.x * R; base < rows; base += (int64_t)gridDim.x * R, parity ^= 1) {
        const int64_t row = base + slot;
        const bool ok = row < rows;
        const int64_t src = ok && ids ? (int64_t)__ldg(ids + row) : row; /* 64-bit: tables beyond 2^31 floats */
        kb::f8 v[UPL];
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < UPL; k++) {
            const int u = lane + k * G, e = u * kb::UNIT;
            if (ok && u < upr) {
                kb::ld8<false>(v[k], x + src * dim + e, min(kb::UNIT, dim - e), vec);
#pragma unroll
                for (int j = 0; j < kb::UNIT; j++)
                    ss = fmaf(v[k].v[j], v[k].v[j], ss);
            } else {
                kb::zero8(v[k]);
            }
        }
        ss = kb::group_sum<G>(ss, red, parity);
        if (!ok)
            continue;
        const float nr = sqrtf(ss);
        const float den = nr > eps ? nr : eps; /* the official clamp(norm, min=eps), then a division */
        if (norm && lane == 0)
            norm[row] = nr;
#pragma unroll
        for (int k = 0; k < UPL; k++) {
            const int u = lane + k * G, e = u * kb::UNIT;
            if (u < upr) {
                const int cnt = min(kb::UNIT, dim - e);
#pragma unroll
                for (int j = 0; j < kb::UNIT; j++)
                    v[k].v[j] = v[k].v[j] / den;
                if (out_f32)
                    kb::st8(out_f32 + row * dim + e, v[k], cnt, vec);
                if (out_bf16)
                    kb::st8(out_bf16 + row * dim + e, v[k], cnt, vec);
            }
        }
    }
}

template <int G, int UPL, typename Y>
__global__ void __launch_bounds__(T) l2_bwd_kernel(float *d_x, const float *d_out, const Y *out, const float *norm,
                                                   int64_t rows, int dim, float eps, bool accumulate, bool vec)
{
    constexpr int R = T / G;
    __shared__ float red[2 * T / 32];
    const int lane = threadIdx.x % G, slot = threadIdx.x / G;
    const int upr = (dim + kb::UNIT - 1) / kb::UNIT;
    int parity = 0;
    for (int64_t base = (int64_t)blockIdx.x * R; base < rows; base += (int64_t)gridDim.x * R, parity ^= 1) {
        const int64_t row = base + slot;
        const bool ok = row < rows;
        kb::f8 y[UPL], dy[UPL];
        float sdot = 0.f;
#pragma unroll
        for (int k = 0; k < UPL; k++) {
            const int u = lane + k * G, e = u * kb::UNIT;
            if (ok && u < upr) {
                const int cnt = min(kb::UNIT, dim - e);
                kb::ld8<false>(y[k], out + row * dim + e, cnt, vec);
                kb::ld8<false>(dy[k], d_out + row * dim + e, cnt, vec);
#pragma unroll
                for (int j = 0; j < kb::UNIT; j++)
                    sdot = fmaf(y[k].v[j], dy[k].v[j], sdot);
            } else {
                kb::zero8(y[k]);
                kb::zero8(dy[k]);
            }
        }
        sdot = kb::group_sum<G>(sdot, red, parity);
        if (!ok)
            continue;
        const float nr = __ldg(norm + row);
        const bool big = nr > eps;
#pragma unroll
        for (int k = 0; k < UPL; k++) {
            const int u = lane + k * G, e = u * kb::UNIT;
            if (u < upr) {
                const int cnt = min(kb::UNIT, dim - e);
                kb::f8 g;
                if (accumulate)
                    kb::ld8<false>(g, d_x + row * dim + e, cnt, vec);
                else
                    kb::zero8(g);
#pragma unroll
                for (int j = 0; j < kb::UNIT; j++) {
                    const float gj = big ? (dy[k].v[j] - y[k].v[j] * sdot) / nr : dy[k].v[j] / eps;
                    g.v[j] = accumulate ? g.v[j] + gj : gj;
                }
                kb::st8(d_x + row * dim + e, g, cnt, vec);
            }
        }
    }
}

/* ---- row dot products --------------------------------------------------------------------------- */

template <int G, int UPL>
__global__ void __launch_bounds__(T)
    row_dot_kernel(float *out, const float *a, const float *b, int64_t rows, int dim, float alpha, bool vec)
{
    constexpr int R = T / G;
    __shared__ float red[2 * T / 32];
    const int lane = threadIdx.x % G, slot = threadIdx.x / G;
    const int upr = (dim + kb::UNIT - 1) / kb::UNIT;
    int parity = 0;
    for (int64_t base = (int64_t)blockIdx.x * R; base < rows; base += (int64_t)gridDim.x * R, parity ^= 1) {
        const int64_t row = base + slot;
        const bool ok = row < rows;
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < UPL; k++) {
            const int u = lane + k * G, e = u * kb::UNIT;
            if (ok && u < upr) {
                const int cnt = min(kb::UNIT, dim - e);
                kb::f8 av, bv;
                kb::ld8(av, a + row * dim + e, cnt, vec);
                kb::ld8(bv, b + row * dim + e, cnt, vec);
#pragma unroll
                for (int j = 0; j < kb::UNIT; j++)
                    s = fmaf(av.v[j], bv.v[j], s);
            }
        }
        s = kb::group_sum<G>(s, red, parity);
        if (ok && lane == 0)
            out[row] = s * alpha;
    }
}

/* d_a[r] += d_out[r] b[r]; d_b[r] (= or +=) d_out[r] a[r]: elementwise over (row, unit). */
__global__ void __launch_bounds__(T)
    row_dot_bwd_kernel(float *d_a, float *d_b, const float *d_out, const float *a, const float *b, int64_t rows,
                       int dim, bool accumulate, bool vec)
{
    const int upr = (dim + kb::UNIT - 1) / kb::UNIT;
    const int64_t total = rows * upr, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t r;
        int u;
        kb::divmod(i, upr, r, u);
        const int e = u * kb::UNIT, cnt = min(kb::UNIT, dim - e);
        const int64_t o = r * dim + e;
        const float g = __ldg(d_out + r);
        if (d_a) {
            kb::f8 acc, bv;
            kb::ld8<false>(acc, d_a + o, cnt, vec);
            kb::ld8<false>(bv, b + o, cnt, vec);
#pragma unroll
            for (int j = 0; j < kb::UNIT; j++)
                acc.v[j] += g * bv.v[j];
            kb::st8(d_a + o, acc, cnt, vec);
        }
        if (d_b) {
            kb::f8 acc, av;
            if (accumulate)
                kb::ld8<false>(acc, d_b + o, cnt, vec);
            else
                kb::zero8(acc);
            kb::ld8<false>(av, a + o, cnt, vec);
#pragma unroll
            for (int j = 0; j < kb::UNIT; j++)
                acc.v[j] = accumulate ? acc.v[j] + g * av.v[j] : g * av.v[j];
            kb::st8(d_b + o, acc, cnt, vec);
        }
    }
}

} /* namespace */

/* ---- launchers ---------------------------------------------------------------------------------- */

extern "C" cudaError_t k_residual_rmsnorm_fwd(float *sum_out, gp_bf16 *norm_out, float *rstd, const float *x,
                                              const gp_bf16 *delta, const float *w, int64_t rows, int dim, float eps,
                                              cudaStream_t s)
{
    if (rows <= 0 || dim <= 0)
        return cudaSuccess;
    const bool vec = dim % kb::UNIT == 0 && kb::aligned16(sum_out) && kb::aligned16(norm_out) && kb::aligned16(x) &&
                     kb::aligned16(delta) && kb::aligned16(w);
    cudaError_t err = cudaSuccess;
#define LAUNCH(G, UPL)                                                                                                 \
    rms_fwd_kernel<G, UPL><<<kb::grid_for(rms_fwd_kernel<G, UPL>, rows, T / (G)), T, 0, s>>>(                          \
        sum_out, norm_out, rstd, x, delta, w, rows, dim, eps, vec)
    KB_ROW_DISPATCH(dim, err, LAUNCH);
#undef LAUNCH
    return err != cudaSuccess ? err : cudaGetLastError();
}

extern "C" int64_t k_rmsnorm_bwd_partial_floats(int64_t rows, int dim)
{
    if (rows <= 0 || dim <= 0)
        return 0;
    return rms_chunks(rows) * dim;
}

template <typename DY>
static cudaError_t rmsnorm_bwd(float *d_out, gp_bf16 *d_out_bf16, gp_bf16 *norm_regen, float *d_w, const DY *d_norm,
                               const float *d_resid, const float *x, const float *w, const float *rstd, int64_t rows,
                               int dim, float *partial, cudaStream_t s)
{
    if (rows <= 0 || dim <= 0)
        return cudaSuccess;
    if (d_w && !partial)
        return cudaErrorInvalidValue;
    const bool vec = dim % kb::UNIT == 0 && kb::aligned16(d_out) && kb::aligned16(d_out_bf16) &&
                     kb::aligned16(norm_regen) && kb::aligned16(d_norm) && kb::aligned16(d_resid) &&
                     kb::aligned16(x) && kb::aligned16(w);
    const int64_t chunk_rows = rms_chunk_rows(rows), n_chunks = rms_chunks(rows);
    float *part = d_w ? partial : nullptr;
    cudaError_t err = cudaSuccess;
#define LAUNCH(G, UPL)                                                                                                 \
    rms_bwd_kernel<G, UPL, DY><<<(unsigned)n_chunks, T, 0, s>>>(d_out, d_out_bf16, norm_regen, d_norm, d_resid, x, w,\
                                                                rstd, rows, dim, chunk_rows, part, vec)
    KB_ROW_DISPATCH(dim, err, LAUNCH);
#undef LAUNCH
    if (err != cudaSuccess)
        return err;
    if (!d_w)
        return cudaGetLastError();
    if ((err = cudaGetLastError()) != cudaSuccess)
        return err;
    chunk_colsum_kernel<<<(unsigned)((dim + 31) / 32), dim3(32, 32), 0, s>>>(d_w, partial, n_chunks, dim);
    return cudaGetLastError();
}

extern "C" cudaError_t k_rmsnorm_bwd(float *d_out, gp_bf16 *d_out_bf16, gp_bf16 *norm_regen, float *d_w,
                                     const float *d_norm, const float *d_resid, const float *x, const float *w,
                                     const float *rstd, int64_t rows, int dim, float *partial, cudaStream_t s)
{
    return rmsnorm_bwd(d_out, d_out_bf16, norm_regen, d_w, d_norm, d_resid, x, w, rstd, rows, dim, partial, s);
}

extern "C" cudaError_t k_rmsnorm_bwd_bf16(float *d_out, gp_bf16 *d_out_bf16, gp_bf16 *norm_regen, float *d_w,
                                          const gp_bf16 *d_norm, const float *d_resid, const float *x,
                                          const float *w, const float *rstd, int64_t rows, int dim, float *partial,
                                          cudaStream_t s)
{
    return rmsnorm_bwd(d_out, d_out_bf16, norm_regen, d_w, d_norm, d_resid, x, w, rstd, rows, dim, partial, s);
}

static cudaError_t l2norm_fwd(float *out_f32, gp_bf16 *out_bf16, float *norm, const float *x, const int32_t *ids,
                              int64_t rows, int dim, float eps, cudaStream_t s)
{
    if (rows <= 0 || dim <= 0)
        return cudaSuccess;
    const bool vec = dim % kb::UNIT == 0 && kb::aligned16(out_f32) && kb::aligned16(out_bf16) && kb::aligned16(x);
    cudaError_t err = cudaSuccess;
#define LAUNCH(G, UPL)                                                                                                 \
    l2_fwd_kernel<G, UPL><<<kb::grid_for(l2_fwd_kernel<G, UPL>, rows, T / (G)), T, 0, s>>>(out_f32, out_bf16, norm, x, \
                                                                                           ids, rows, dim, eps, vec)
    KB_ROW_DISPATCH(dim, err, LAUNCH);
#undef LAUNCH
    return err != cudaSuccess ? err : cudaGetLastError();
}

extern "C" cudaError_t k_l2norm_fwd(float *out_f32, gp_bf16 *out_bf16, float *norm, const float *x, int64_t rows,
                                    int dim, float eps, cudaStream_t s)
{
    return l2norm_fwd(out_f32, out_bf16, norm, x, NULL, rows, dim, eps, s);
}

extern "C" cudaError_t k_l2norm_fwd_rows(float *out_f32, gp_bf16 *out_bf16, float *norm, const float *table,
                                         const int32_t *ids, int64_t rows, int dim, float eps, cudaStream_t s)
{
    if (rows > 0 && !ids)
        return cudaErrorInvalidValue;
    return l2norm_fwd(out_f32, out_bf16, norm, table, ids, rows, dim, eps, s);
}

template <typename Y>
static cudaError_t l2norm_bwd(float *d_x, const float *d_out, const Y *out, const float *norm, int64_t rows, int dim,
                              float eps, int accumulate, cudaStream_t s)
{
    if (rows <= 0 || dim <= 0)
        return cudaSuccess;
    const bool vec = dim % kb::UNIT == 0 && kb::aligned16(d_x) && kb::aligned16(d_out) && kb::aligned16(out);
    cudaError_t err = cudaSuccess;
#define LAUNCH(G, UPL)                                                                                                 \
    l2_bwd_kernel<G, UPL, Y><<<kb::grid_for(l2_bwd_kernel<G, UPL, Y>, rows, T / (G)), T, 0, s>>>(                      \
        d_x, d_out, out, norm, rows, dim, eps, accumulate != 0, vec)
    KB_ROW_DISPATCH(dim, err, LAUNCH);
#undef LAUNCH
    return err != cudaSuccess ? err : cudaGetLastError();
}

extern "C" cudaError_t k_l2norm_bwd(float *d_x, const float *d_out, const float *out, const float *norm, int64_t rows,
                                    int dim, float eps, int accumulate, cudaStream_t s)
{
    return l2norm_bwd<float>(d_x, d_out, out, norm, rows, dim, eps, accumulate, s);
}

extern "C" cudaError_t k_l2norm_bwd_bf16(float *d_x, const float *d_out, const gp_bf16 *out, const float *norm,
                                         int64_t rows, int dim, float eps, int accumulate, cudaStream_t s)
{
    return l2norm_bwd<uint16_t>(d_x, d_out, out, norm, rows, dim, eps, accumulate, s);
}

extern "C" cudaError_t k_row_dot(float *out, const float *a, const float *b, int64_t rows, int dim, float alpha,
                                 cudaStream_t s)
{
    if (rows <= 0)
        return cudaSuccess;
    if (dim <= 0) { /* empty dot products */
        cudaError_t e = cudaMemsetAsync(out, 0, (size_t)rows * sizeof(float), s);
        return e != cudaSuccess ? e : cudaGetLastError();
    }
    const bool vec = dim % kb::UNIT == 0 && kb::aligned16(a) && kb::aligned16(b);
    cudaError_t err = cudaSuccess;
#define LAUNCH(G, UPL)                                                                                                 \
    row_dot_kernel<G, UPL>                                                                                             \
        <<<kb::grid_for(row_dot_kernel<G, UPL>, rows, T / (G)), T, 0, s>>>(out, a, b, rows, dim, alpha, vec)
    KB_ROW_DISPATCH(dim, err, LAUNCH);
#undef LAUNCH
    return err != cudaSuccess ? err : cudaGetLastError();
}

extern "C" cudaError_t k_row_dot_bwd(float *d_a, float *d_b, const float *d_out, const float *a, const float *b,
                                     int64_t rows, int dim, int accumulate, cudaStream_t s)
{
    if (rows <= 0 || dim <= 0 || (!d_a && !d_b))
        return cudaSuccess;
    const bool vec =
        dim % kb::UNIT == 0 && kb::aligned16(d_a) && kb::aligned16(d_b) && kb::aligned16(a) && kb::aligned16(b);
    const int64_t work = rows * ((dim + kb::UNIT - 1) / kb::UNIT);
    row_dot_bwd_kernel<<<kb::grid_for(row_dot_bwd_kernel, work, T), T, 0, s>>>(d_a, d_b, d_out, a, b, rows, dim,
                                                                               accumulate != 0, vec);
    return cudaGetLastError();
}
