/* sampled_softmax_fused: the pretraining item head's sampled softmax with shared negatives,
 * logits, loss and both gradient products in one kernel, flash-style, so the [rows][n_neg]
 * logits and their gradient never reach memory.
 *
 * One CTA of 16 warps owns one sequence: its rows (queries, at most 256) and its n_neg
 * negatives. Warp w owns query rows 16w .. 16w+15 for the whole kernel. The negatives stream
 * through shared memory in tiles of 64 rows (cp.async, double-buffered), twice:
 *   pass 1: logits tile = Q K^T on tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate),
 *           times inv_temp log2(e) (the log2 domain: each exponential is one ex2); per row an
 *           online (max, sum of 2^x, kept count) over the kept negatives; at the end the row's
 *           loss, d_pos and gradient scale from softmax_row.cuh, the formulas of the unfused
 *           k_sampled_softmax_rows;
 *   pass 2: the same logits recomputed (the same mma sequence: the same bits), each kept
 *           entry's gradient rounded to bf16 as the unfused path's d_logits is; d_q += P K in
 *           registers (the owner's rows: one writer), and P staged in shared memory, from which
 *           the CTA computes d_neg of the tile = P^T Q (each negative row of the sequence has
 *           one writer: no atomics, deterministic), rounded once to bf16: the official model's
 *           d_neg is a bf16 autocast product too, and the scatter that sums it reads half.
 * So the step reads each negative twice (the second time partly from L2) and writes its bf16
 * gradient once, where the GEMM path wrote the fp32 logits, read them, wrote bf16 gradients and
 * read those twice (about 6 GB a step at L4H64A4).
 * The work is 4 logits-sized products instead of 3 (the recompute): the kernel trades FLOPs for
 * bytes, and pays where the embedding is narrow (E = 32 or 64) and the tile products cheap.
 * Wider embeddings and longer sequences take the GEMM path (k_sampled_softmax_fused_supported).
 * One barrier per tile: the gradient tile is double-buffered, and d_neg of a tile is computed
 * in the next iteration while the owners fill the other buffer; pass 2 skips the id test on the
 * tiles where pass 1 found nothing to mask.
 * At L4H64A4 (512 x 200 rows, 4096 negatives, E = 64) it takes 1.39 ms on an H100 against 2.97
 * for the GEMM path (bench_kernels item_head). It is latency-bound: registers allow one CTA of
 * 16 warps per SM (ncu: 0.7 eligible warps per scheduler, 1.5 instructions issued per cycle).
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels.h"
#include "mma_sm80.cuh"
#include "softmax_row.cuh"

namespace {

constexpr int SSF_WARPS = 16;
constexpr int SSF_THREADS = SSF_WARPS * 32;
constexpr int SSF_MAX_ROWS = SSF_WARPS * 16; /* one 16-row block per warp */
constexpr int SSF_TILE = 64;                 /* negatives per shared-memory tile */
constexpr int SSF_TBLK = SSF_TILE / 8;       /* n8 blocks over a tile */
/* Row strides in bf16, 8 more than the width: consecutive rows start 16 bytes apart modulo 128,
 * so the 8 row addresses of an ldmatrix phase hit distinct banks. */
constexpr int SSF_PSTR = SSF_TILE + 8;

template <int E>
struct SsfShape {
    static_assert(E == 32 || E == 64, "the fused sampled softmax takes emb_dim 32 or 64");
    static constexpr int KSTEPS = E / 16;            /* k16 steps over E */
    static constexpr int EBLK = E / 8;               /* n8 blocks over E */
    static constexpr int STR = E + 8;                /* Q and K tile row stride */
    static constexpr int CHUNKS = E / 8;             /* 16-byte chunks per row */
    static constexpr int DN_UNITS = 4 * (E / 16);    /* 16 negatives x 16 columns blocks of a tile's d_neg */
    static_assert(DN_UNITS <= SSF_WARPS, "one d_neg block per warp");
};

template <int E>
static size_t ssf_smem_bytes(int rows_per_seq)
{
    const size_t rows_pad = (size_t)((rows_per_seq + 15) / 16) * 16;
    return (rows_pad * SsfShape<E>::STR + 2 * SSF_TILE * SsfShape<E>::STR + 2 * rows_pad * SSF_PSTR) * sizeof(uint16_t) +
           2 * SSF_TILE * sizeof(int32_t);
}

using mma80::cp_async16;
using mma80::cp_async4;
using mma80::cp_async_commit;
using mma80::cp_async_wait_all;
using mma80::ex2;
using mma80::ldmatrix_x4;
using mma80::ldmatrix_x4_trans;
using mma80::mma_bf16;
using mma80::pack_bf16x2;

constexpr float SSF_LOG2E = 1.4426950408889634f;
constexpr float SSF_LN2 = 0.6931471805599453f;

/* Running (max, sum of 2^(x - max)) of one thread's kept entries of a row over tiles, x the
 * logit times log2(e). */
struct RowStat {
    float m, s;
    int kept;
};

/* Merge lane's statistics with lane ^ 1 and lane ^ 2 (the quad sharing a row): commutative
 * steps, so all four lanes end with the same bits. */
__device__ __forceinline__ void quad_reduce(RowStat &st)
{
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
        const float mo = __shfl_xor_sync(0xffffffffu, st.m, off);
        const float so = __shfl_xor_sync(0xffffffffu, st.s, off);
        const int ko = __shfl_xor_sync(0xffffffffu, st.kept, off);
        const float M = fmaxf(st.m, mo);
        const float a = st.m == -INFINITY ? 0.f : st.s * ex2(st.m - M);
        const float b = mo == -INFINITY ? 0.f : so * ex2(mo - M);
        st.s = a + b;
        st.m = M;
        st.kept += ko;
    }
}

/* The per-row constants of pass 2: a kept entry's gradient is 2^(x - c) * g_mul, x the logit
 * times log2(e) and c = M log2(e) - off log2(e) from softmax_row's exp((z - M) + off) * g_mul;
 * c = +inf when the row has no gradient (so no entry can overflow to inf * 0). */
struct RowGrad {
    float c, g_mul;
};

/* Set this thread's entries of the tile that are excluded (negative id == the row's label) or
 * past the end (column >= valid) to -inf, and count the kept ones of each row. Most tiles have
 * neither: one pass over the ids says so (the return value: true) and the entries are left
 * alone. */
__device__ __forceinline__ bool mask_tile(float (&acc)[SSF_TBLK][4], const int32_t *idt, int tig, int32_t y_lo,
                                          int32_t y_hi, int valid, int &kept_lo, int &kept_hi)
{
    int2 id[SSF_TBLK];
    bool clean = valid >= SSF_TILE;
#pragma unroll
    for (int nt = 0; nt < SSF_TBLK; nt++) {
        id[nt] = *reinterpret_cast<const int2 *>(idt + nt * 8 + 2 * tig);
        clean &= (id[nt].x != y_lo) & (id[nt].y != y_lo) & (id[nt].x != y_hi) & (id[nt].y != y_hi);
    }
    if (clean) {
        kept_lo += 2 * SSF_TBLK;
        kept_hi += 2 * SSF_TBLK;
        return true;
    }
#pragma unroll
    for (int nt = 0; nt < SSF_TBLK; nt++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int jl = nt * 8 + 2 * tig + (c & 1);
            const int32_t idj = (c & 1) ? id[nt].y : id[nt].x;
            const bool keep = jl < valid && idj != (c < 2 ? y_lo : y_hi);
            if (!keep)
                acc[nt][c] = -INFINITY;
            else if (c < 2)
                kept_lo++;
            else
                kept_hi++;
        }
    return false;
}

/* d_neg of one tile (64 negatives x E) = sum over the sequence's rows of P^T Q, by 4 E/16 warps
 * each owning 16 negatives x 16 columns: A = P^T from the gradient tile P[r][j] and B = Q from
 * Q[r][e], both transposed on load. One writer per element. */
template <int E>
__device__ __forceinline__ void dneg_tile(uint16_t *__restrict__ d_neg, const uint16_t *ps, const uint16_t *qs, int nb,
                                          int64_t seq, int tile, int n_neg, int warp, int lane)
{
    using Sh = SsfShape<E>;
    const int g = lane >> 2, tig = lane & 3;
    const int mb = warp & 3, cg = warp >> 2;
    float dn[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    const int arow = (lane & 7) + ((lane >> 4) << 3), acol = ((lane >> 3) & 1) << 3;
    const int brow = (lane & 7) + (((lane >> 3) & 1) << 3), bcol = (lane >> 4) << 3;
    for (int rb = 0; rb < nb; rb++) {
        uint32_t a[4], bq[4];
        ldmatrix_x4_trans(a, ps + (rb * 16 + arow) * SSF_PSTR + mb * 16 + acol);
        ldmatrix_x4_trans(bq, qs + (rb * 16 + brow) * Sh::STR + cg * 16 + bcol);
        mma_bf16(dn[0], a, bq[0], bq[1]);
        mma_bf16(dn[1], a, bq[2], bq[3]);
    }
    const int j_lo = tile * SSF_TILE + mb * 16 + g, j_hi = j_lo + 8;
#pragma unroll
    for (int n = 0; n < 2; n++) {
        const int e = cg * 16 + n * 8 + 2 * tig;
        if (j_lo < n_neg)
            *reinterpret_cast<uint32_t *>(d_neg + (seq * n_neg + j_lo) * E + e) = pack_bf16x2(dn[n][0], dn[n][1]);
        if (j_hi < n_neg)
            *reinterpret_cast<uint32_t *>(d_neg + (seq * n_neg + j_hi) * E + e) = pack_bf16x2(dn[n][2], dn[n][3]);
    }
}

template <int E>
__device__ __forceinline__ void stage_negatives(uint16_t *ks, int32_t *ids, const uint16_t *__restrict__ neg,
                                                const int32_t *__restrict__ neg_ids, int tile, int n_neg)
{
    using Sh = SsfShape<E>;
    for (int idx = threadIdx.x; idx < SSF_TILE * Sh::CHUNKS; idx += SSF_THREADS) {
        const int j = idx / Sh::CHUNKS, c = idx - j * Sh::CHUNKS;
        const int jg = tile * SSF_TILE + j;
        const bool in = jg < n_neg;
        cp_async16(ks + j * Sh::STR + c * 8, in ? neg + (int64_t)jg * E + c * 8 : neg, in);
    }
    if (threadIdx.x < SSF_TILE) {
        const int jg = tile * SSF_TILE + threadIdx.x;
        cp_async4(ids + threadIdx.x, jg < n_neg ? neg_ids + jg : neg_ids, jg < n_neg);
    }
}

/* logits tile (16 rows x 64 negatives) of warp-owned rows: acc = Q_rows K_tile^T. */
template <int E>
__device__ __forceinline__ void logits_tile(float (&acc)[SSF_TBLK][4], const uint32_t (&qa)[SsfShape<E>::KSTEPS][4],
                                            const uint16_t *ks, int lane)
{
    using Sh = SsfShape<E>;
#pragma unroll
    for (int nt = 0; nt < SSF_TBLK; nt++)
        acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
    /* x4 non-transposed: matrices (rows 16p + 0..7 | 8..15) x (k 0..7 | 8..15) of K[j][e]: the
     * b0, b1 fragments of n8 blocks 2p and 2p + 1 */
    const int row = (lane & 7) + ((lane >> 4) << 3), col = ((lane >> 3) & 1) << 3;
#pragma unroll
    for (int kk = 0; kk < Sh::KSTEPS; kk++)
#pragma unroll
        for (int p = 0; p < SSF_TBLK / 2; p++) {
            uint32_t b[4];
            ldmatrix_x4(b, ks + (p * 16 + row) * Sh::STR + kk * 16 + col);
            mma_bf16(acc[2 * p], qa[kk], b[0], b[1]);
            mma_bf16(acc[2 * p + 1], qa[kk], b[2], b[3]);
        }
}

template <int E>
__global__ void __launch_bounds__(SSF_THREADS, 1)
    sampled_softmax_fused_kernel(float *__restrict__ loss, float *__restrict__ d_pos, float *__restrict__ d_q,
                                 uint16_t *__restrict__ d_neg, const uint16_t *__restrict__ q,
                                 const uint16_t *__restrict__ neg, const float *__restrict__ pos_logit,
                                 const int32_t *__restrict__ label, const int32_t *__restrict__ neg_ids, int S,
                                 int n_neg, float inv_temp, int logq, float scale)
{
    using Sh = SsfShape<E>;
    extern __shared__ __align__(16) unsigned char ssf_smem[];
    const int nb = (S + 15) / 16, rows_pad = nb * 16;
    uint16_t *qs = reinterpret_cast<uint16_t *>(ssf_smem);
    uint16_t *ks = qs + rows_pad * Sh::STR;             /* two tiles */
    uint16_t *ps = ks + 2 * SSF_TILE * Sh::STR;         /* two [rows_pad][SSF_PSTR] gradient tiles */
    int32_t *ids_s = reinterpret_cast<int32_t *>(ps + 2 * rows_pad * SSF_PSTR); /* two tiles */

    const int64_t b = blockIdx.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
    const bool backward = d_neg != nullptr;
    const int n_tiles = (n_neg + SSF_TILE - 1) / SSF_TILE;
    const uint16_t *qb = q + b * S * E;
    const uint16_t *negb = neg + b * (int64_t)n_neg * E;
    const int32_t *idb = neg_ids + b * (int64_t)n_neg;

    for (int idx = threadIdx.x; idx < rows_pad * Sh::CHUNKS; idx += SSF_THREADS) {
        const int r = idx / Sh::CHUNKS, c = idx - r * Sh::CHUNKS;
        cp_async16(qs + r * Sh::STR + c * 8, r < S ? qb + (int64_t)r * E + c * 8 : qb, r < S);
    }
    stage_negatives<E>(ks, ids_s, negb, idb, 0, n_neg);
    cp_async_commit();

    const bool owner = warp < nb;
    const int r_lo = warp * 16 + g, r_hi = r_lo + 8;
    const int64_t gr_lo = b * S + r_lo, gr_hi = b * S + r_hi;
    const int32_t y_lo = owner && r_lo < S ? label[gr_lo] : -100;
    const int32_t y_hi = owner && r_hi < S ? label[gr_hi] : -100;
    RowStat st_lo = {-INFINITY, 0.f, 0}, st_hi = {-INFINITY, 0.f, 0};
    RowGrad rg_lo = {INFINITY, 0.f}, rg_hi = {INFINITY, 0.f};
    const float x_scale = inv_temp * SSF_LOG2E;
    uint32_t qa[Sh::KSTEPS][4];
    float dq[Sh::EBLK][4];
#pragma unroll
    for (int n = 0; n < Sh::EBLK; n++)
        dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;

    /* tiles of pass 1 (< 64) in which this thread had nothing to mask: pass 2 skips the ids */
    uint64_t clean_tiles = 0;
    const int total = backward ? 2 * n_tiles : n_tiles;
    /* One barrier per tile: after it, tile `it` has landed, every warp is done with the previous
     * iteration (so the other K buffer and the older gradient tile may be refilled), and the
     * gradient tile of iteration it - 1 is complete. d_neg of a pass-2 tile is computed one
     * iteration later, from its own gradient buffer, while the owners fill the other. */
    for (int it = 0; it < total; it++) {
        const int tile = it < n_tiles ? it : it - n_tiles, buf = it & 1;
        const bool pass2 = it >= n_tiles;
        cp_async_wait_all();
        __syncthreads();
        if (it + 1 < total)
            stage_negatives<E>(ks + (buf ^ 1) * SSF_TILE * Sh::STR, ids_s + (buf ^ 1) * SSF_TILE, negb, idb,
                               it + 1 < n_tiles ? it + 1 : it + 1 - n_tiles, n_neg);
        cp_async_commit();
        uint16_t *pt = ps + (tile & 1) * rows_pad * SSF_PSTR; /* this pass-2 tile's gradient buffer */
        const uint16_t *kt = ks + buf * SSF_TILE * Sh::STR;
        const int32_t *idt = ids_s + buf * SSF_TILE;
        if (owner) {
            if (it == 0) {
#pragma unroll
                for (int kk = 0; kk < Sh::KSTEPS; kk++)
                    ldmatrix_x4(qa[kk], qs + (warp * 16 + (lane & 15)) * Sh::STR + kk * 16 + ((lane >> 4) << 3));
            }
            float acc[SSF_TBLK][4];
            logits_tile<E>(acc, qa, kt, lane);
            const int valid = n_neg - tile * SSF_TILE;
#pragma unroll
            for (int nt = 0; nt < SSF_TBLK; nt++)
#pragma unroll
                for (int c = 0; c < 4; c++)
                    acc[nt][c] *= x_scale;
            if (!pass2) {
                if (mask_tile(acc, idt, tig, y_lo, y_hi, valid, st_lo.kept, st_hi.kept) && tile < 64)
                    clean_tiles |= 1ull << tile;
                float tm_lo = st_lo.m, tm_hi = st_hi.m;
#pragma unroll
                for (int nt = 0; nt < SSF_TBLK; nt++) {
                    tm_lo = fmaxf(tm_lo, fmaxf(acc[nt][0], acc[nt][1]));
                    tm_hi = fmaxf(tm_hi, fmaxf(acc[nt][2], acc[nt][3]));
                }
                /* rescale the running sums to the new maxima, then add this tile's terms (an
                 * excluded entry adds 2^-inf = 0) */
                if (tm_lo != -INFINITY) {
                    st_lo.s = st_lo.m == -INFINITY ? 0.f : st_lo.s * ex2(st_lo.m - tm_lo);
                    st_lo.m = tm_lo;
#pragma unroll
                    for (int nt = 0; nt < SSF_TBLK; nt++)
                        st_lo.s += ex2(acc[nt][0] - tm_lo) + ex2(acc[nt][1] - tm_lo);
                }
                if (tm_hi != -INFINITY) {
                    st_hi.s = st_hi.m == -INFINITY ? 0.f : st_hi.s * ex2(st_hi.m - tm_hi);
                    st_hi.m = tm_hi;
#pragma unroll
                    for (int nt = 0; nt < SSF_TBLK; nt++)
                        st_hi.s += ex2(acc[nt][2] - tm_hi) + ex2(acc[nt][3] - tm_hi);
                }
            } else {
                /* gradient tile: to registers as the A fragments of P K, and to shared memory */
                int unused_lo = 0, unused_hi = 0;
                if (tile >= 64 || !(clean_tiles >> tile & 1))
                    mask_tile(acc, idt, tig, y_lo, y_hi, valid, unused_lo, unused_hi);
                uint32_t pa[SSF_TILE / 16][4];
#pragma unroll
                for (int nt = 0; nt < SSF_TBLK; nt++) {
                    const uint32_t lo = pack_bf16x2(ex2(acc[nt][0] - rg_lo.c) * rg_lo.g_mul,
                                                    ex2(acc[nt][1] - rg_lo.c) * rg_lo.g_mul);
                    const uint32_t hi = pack_bf16x2(ex2(acc[nt][2] - rg_hi.c) * rg_hi.g_mul,
                                                    ex2(acc[nt][3] - rg_hi.c) * rg_hi.g_mul);
                    pa[nt >> 1][(nt & 1) * 2 + 0] = lo;
                    pa[nt >> 1][(nt & 1) * 2 + 1] = hi;
                    *reinterpret_cast<uint32_t *>(pt + r_lo * SSF_PSTR + nt * 8 + 2 * tig) = lo;
                    *reinterpret_cast<uint32_t *>(pt + r_hi * SSF_PSTR + nt * 8 + 2 * tig) = hi;
                }
                /* d_q += P K: B fragments (k = negative, n = e) from K[j][e], transposed:
                 * matrices (j 0..7 | 8..15) x (e 0..7 | 8..15) give b0, b1 of e-blocks 2q, 2q + 1 */
                const int row = (lane & 7) + (((lane >> 3) & 1) << 3), col = (lane >> 4) << 3;
#pragma unroll
                for (int kc = 0; kc < SSF_TILE / 16; kc++)
#pragma unroll
                    for (int qq = 0; qq < Sh::EBLK / 2; qq++) {
                        uint32_t bk[4];
                        ldmatrix_x4_trans(bk, kt + (kc * 16 + row) * Sh::STR + qq * 16 + col);
                        mma_bf16(dq[2 * qq], pa[kc], bk[0], bk[1]);
                        mma_bf16(dq[2 * qq + 1], pa[kc], bk[2], bk[3]);
                    }
            }
            if (it == n_tiles - 1) {
                quad_reduce(st_lo);
                quad_reduce(st_hi);
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const RowStat &st = h ? st_hi : st_lo;
                    const int r = h ? r_hi : r_lo;
                    const int32_t y = h ? y_hi : y_lo;
                    const int64_t gr = h ? gr_hi : gr_lo;
                    softmax_row::RowResult res = {0.f, 0.f, 0.f, 0.f};
                    if (r < S && y != -100) {
                        const double shift = logq && st.kept > 0 ? log((double)st.kept) * (double)inv_temp : 0.0;
                        res = softmax_row::row_result(st.m * SSF_LN2, st.s, st.kept, pos_logit[gr], shift, scale);
                    }
                    if (tig == 0 && r < S) {
                        if (loss)
                            loss[gr] = res.loss;
                        if (d_pos)
                            d_pos[gr] = res.d_pos;
                    }
                    RowGrad &rg = h ? rg_hi : rg_lo;
                    rg.g_mul = res.g_mul;
                    rg.c = res.g_mul != 0.f && st.m != -INFINITY ? st.m - res.off * SSF_LOG2E : INFINITY;
                }
            }
        }
        if (it > n_tiles && warp < Sh::DN_UNITS) /* d_neg of the previous pass-2 tile */
            dneg_tile<E>(d_neg, ps + ((tile - 1) & 1) * rows_pad * SSF_PSTR, qs, nb, b, tile - 1, n_neg, warp, lane);
    }
    if (backward) {
        __syncthreads(); /* the last gradient tile is complete */
        if (warp < Sh::DN_UNITS)
            dneg_tile<E>(d_neg, ps + ((n_tiles - 1) & 1) * rows_pad * SSF_PSTR, qs, nb, b, n_tiles - 1, n_neg, warp,
                         lane);
    }

    if (backward && owner) {
#pragma unroll
        for (int n = 0; n < Sh::EBLK; n++) {
            const int e = n * 8 + 2 * tig;
            if (r_lo < S) {
                float2 *p = reinterpret_cast<float2 *>(d_q + gr_lo * E + e);
                const float2 v = *p;
                *p = make_float2(v.x + dq[n][0], v.y + dq[n][1]);
            }
            if (r_hi < S) {
                float2 *p = reinterpret_cast<float2 *>(d_q + gr_hi * E + e);
                const float2 v = *p;
                *p = make_float2(v.x + dq[n][2], v.y + dq[n][3]);
            }
        }
    }
}

template <int E>
cudaError_t launch_fused(float *loss, float *d_pos, float *d_q, gp_bf16 *d_neg, const gp_bf16 *q, const gp_bf16 *neg,
                         const float *pos_logit, const int32_t *label, const int32_t *neg_ids, int64_t n_seq, int S,
                         int n_neg, float inv_temp, int logq, float scale, cudaStream_t s)
{
    const size_t smem = ssf_smem_bytes<E>(S);
    cudaError_t err = cudaFuncSetAttribute(sampled_softmax_fused_kernel<E>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess)
        return err;
    sampled_softmax_fused_kernel<E><<<(unsigned)n_seq, SSF_THREADS, smem, s>>>(
        loss, d_pos, d_q, d_neg, q, neg, pos_logit, label, neg_ids, S, n_neg, inv_temp, logq, scale);
    return cudaGetLastError();
}

} // namespace

extern "C" int k_sampled_softmax_fused_supported(int rows_per_seq, int emb_dim)
{
    return (emb_dim == 32 || emb_dim == 64) && rows_per_seq >= 1 && rows_per_seq <= SSF_MAX_ROWS;
}

extern "C" cudaError_t k_sampled_softmax_fused(float *loss, float *d_pos, float *d_q, gp_bf16 *d_neg,
                                               const gp_bf16 *q, const gp_bf16 *neg, const float *pos_logit,
                                               const int32_t *label, const int32_t *neg_ids, int64_t n_seq,
                                               int rows_per_seq, int n_neg, int emb_dim, float inv_temp, int logq,
                                               float scale, cudaStream_t s)
{
    if (n_seq <= 0)
        return cudaSuccess;
    if (!k_sampled_softmax_fused_supported(rows_per_seq, emb_dim) || n_neg < 1 || n_seq > INT32_MAX ||
        (d_q == nullptr) != (d_neg == nullptr))
        return cudaErrorInvalidValue;
    /* 16-byte rows for cp.async, the float2 d_q and bf16-pair d_neg stores */
    if (((uintptr_t)q | (uintptr_t)neg) & 15u || (uintptr_t)d_q & 7u || (uintptr_t)d_neg & 3u)
        return cudaErrorMisalignedAddress;
    if (emb_dim == 32)
        return launch_fused<32>(loss, d_pos, d_q, d_neg, q, neg, pos_logit, label, neg_ids, n_seq, rows_per_seq,
                                n_neg, inv_temp, logq, scale, s);
    return launch_fused<64>(loss, d_pos, d_q, d_neg, q, neg, pos_logit, label, neg_ids, n_seq, rows_per_seq, n_neg,
                            inv_temp, logq, scale, s);
}
