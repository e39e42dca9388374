/* attention: packed variable-length multi-head attention, forward and backward, on tensor cores.
 *
 * FlashAttention-2 style with mma.sync.m16n8k16 (bf16 inputs, fp32 accumulation):
 * - a CTA of 4 warps owns 64 rows of one (sequence, head): query rows in the forward and the dQ
 *   pass, key rows in the dK/dV pass; each warp owns 16 of them and keeps its operand fragments
 *   and its accumulators in registers;
 * - the other side (keys/values, or queries/output gradients) streams through shared memory in
 *   tiles of 64 rows, staged as bf16 row-major (for products over head_dim) and transposed (for
 *   products over the tile), so every B fragment is one 32-bit shared load, conflict-free;
 * - scores and softmax statistics are fp32 in the log2 domain (exp2f); probabilities and dS
 *   are rounded to bf16 only as mma inputs.
 * The backward is two kernels, so that every output element has exactly one writer (no atomics,
 * deterministic): dK/dV by key owners streaming the queries, dQ by query owners streaming the
 * keys. Both recompute P from the saved lse and D = <dO, O> from out and d_out.
 * See kernels/README.md for launch configuration, shared memory and occupancy.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "attention_common.cuh"
#include "attention_internal.h"
#include "kernels.h"
#include "mma_sm80.cuh"

namespace {

using attn::dot_bf16;
using attn::store_rows;
using mma80::mma_bf16;
using mma80::pack_bf16x2;
using mma80::quad_max;
using mma80::quad_sum;

constexpr int ATT_WARPS = 4;
constexpr int ATT_THREADS = ATT_WARPS * 32;
constexpr int ATT_ROWS = ATT_WARPS * 16; /* rows owned by one CTA */
constexpr int ATT_TILE = 64;             /* streamed rows per shared-memory tile */
constexpr float ATT_LOG2E = 1.4426950408889634f;
constexpr float ATT_LN2 = 0.6931471805599453f;

/* The CTA's (sequence, head, first row block) from a 1-D grid of n_seq x n_heads x zdim CTAs,
 * the row blocks of a head and the heads of a sequence adjacent: the CTAs reading one
 * sequence's q/k/v rows run together and share their L2 sectors (with the sequence in the
 * slowest grid dimension instead of the fastest, every head of a row was fetched by CTAs
 * thousands apart). */
struct AttnBlock {
    int seq, h, z;
};

__device__ __forceinline__ AttnBlock attn_block(int n_heads, int zdim)
{
    const uint32_t bid = blockIdx.x, t = bid / (uint32_t)zdim;
    AttnBlock b;
    b.z = (int)(bid - t * (uint32_t)zdim);
    b.seq = (int)(t / (uint32_t)n_heads);
    b.h = (int)(t - (uint32_t)b.seq * (uint32_t)n_heads);
    return b;
}

template <int HD>
struct AttnShape {
    static_assert(HD == 8 || HD == 16 || HD == 32 || HD == 64, "head_dim must be 8, 16, 32 or 64");
    /* products over head_dim use k16 steps; head_dim 8 is padded with zero fragments */
    static constexpr int KSTEPS = HD < 16 ? 1 : HD / 16;
    static constexpr bool KHI = HD >= 16; /* the upper k8 half of a k16 step exists */
    static constexpr int DBLK = HD / 8;   /* n8 blocks over head_dim */
    /* Row-major tile stride in bf16: a 32-bit B-fragment load by lane (g, tig) hits word
     * g * stride/2 + tig, conflict-free when stride/2 = 4 (mod 8). */
    static constexpr int RSTR = HD % 16 == 0 ? HD + 8 : HD + 16;
    /* Transposed tile stride: (64 + 8) / 2 = 36 = 4 (mod 8), same argument. */
    static constexpr int TSTR = ATT_TILE + 8;
    static constexpr int TBLK = ATT_TILE / 8;  /* n8 blocks over a tile */
    static constexpr int TSTEPS = ATT_TILE / 16; /* k16 steps over a tile */
    /* CTAs per SM the register budget is held to (__launch_bounds__) */
    /* At head_dim <= 16 the forward fits 80 registers without spilling (6 CTAs, 24 warps a SM)
     * and both backward kernels 128 (4 CTAs); a tighter budget makes them spill. */
    static constexpr int FWD_BLOCKS = HD <= 16 ? 6 : 3;
    static constexpr int DQ_BLOCKS = HD <= 16 ? 4 : 3;
    static constexpr int DKDV_BLOCKS = HD <= 16 ? 4 : 2;
};

__device__ __forceinline__ uint32_t ld_u32(const uint16_t *p)
{
    return *reinterpret_cast<const uint32_t *>(p);
}

/* B fragment (k16 x n8) from a tile stored as [n][k] with k contiguous (stride in bf16):
 * lane (g, tig) holds k = 2 tig, 2 tig + 1 (b0) and k = 8 + 2 tig, 9 + 2 tig (b1) of column n0 + g. */
template <bool HI>
__device__ __forceinline__ void load_b(uint32_t &b0, uint32_t &b1, const uint16_t *tile, int stride, int n0, int k0,
                                       int g, int tig)
{
    const uint16_t *p = tile + (n0 + g) * stride + k0 + 2 * tig;
    b0 = ld_u32(p);
    b1 = HI ? ld_u32(p + 8) : 0u;
}

/* A fragments (16 rows x head_dim) of the two rows a lane touches, read from global memory:
 * lane (g, tig) holds row g (regs 0, 2) and row g + 8 (regs 1, 3), columns 2 tig + {0, 1} and
 * 8 + 2 tig + {0, 1} of each k16 step. A NULL row (outside the sequence) reads as zeros. */
template <int HD>
__device__ __forceinline__ void load_a_rows(uint32_t (&a)[AttnShape<HD>::KSTEPS][4], const uint16_t *row_lo,
                                            const uint16_t *row_hi, int tig)
{
#pragma unroll
    for (int kk = 0; kk < AttnShape<HD>::KSTEPS; kk++) {
        const int c = kk * 16 + 2 * tig;
        a[kk][0] = row_lo ? ld_u32(row_lo + c) : 0u;
        a[kk][1] = row_hi ? ld_u32(row_hi + c) : 0u;
        a[kk][2] = (AttnShape<HD>::KHI && row_lo) ? ld_u32(row_lo + c + 8) : 0u;
        a[kk][3] = (AttnShape<HD>::KHI && row_hi) ? ld_u32(row_hi + c + 8) : 0u;
    }
}

/* Stage rows 0 .. ATT_TILE-1 of one head's column block (HD bf16 starting at src, row stride ld
 * elements) into shared memory: row-major into rm[j * RSTR + d] and/or transposed into
 * tr[d * TSTR + j]. Rows j >= n are zero. 16-byte global loads (src and ld * 2 bytes are
 * multiples of 16 bytes, checked by the launchers). */
template <int HD, bool RM, bool TR>
__device__ __forceinline__ void stage_tile(uint16_t *rm, uint16_t *tr, const uint16_t *__restrict__ src, int64_t ld,
                                           int n)
{
    constexpr int CH = HD / 8;
    for (int idx = threadIdx.x; idx < ATT_TILE * CH; idx += ATT_THREADS) {
        const int j = idx / CH, c = idx - j * CH;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (j < n)
            v = *reinterpret_cast<const uint4 *>(src + (int64_t)j * ld + c * 8);
        if (RM)
            *reinterpret_cast<uint4 *>(rm + j * AttnShape<HD>::RSTR + c * 8) = v;
        if (TR) {
            const uint32_t w[4] = {v.x, v.y, v.z, v.w};
            uint16_t *col = tr + (c * 8) * AttnShape<HD>::TSTR + j;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                col[(2 * e) * AttnShape<HD>::TSTR] = (uint16_t)(w[e] & 0xFFFFu);
                col[(2 * e + 1) * AttnShape<HD>::TSTR] = (uint16_t)(w[e] >> 16);
            }
        }
    }
}

/* ---- forward ---------------------------------------------------------------------------- */
/* grid: attn_grid (1-D, see attn_block); a CTA loops over query blocks z, z + zdim, ... so
 * every row is covered whatever max_len sized the grid. */
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS, AttnShape<HD>::FWD_BLOCKS)
    attn_fwd_kernel(uint16_t *__restrict__ out, float *__restrict__ lse, const uint16_t *__restrict__ qkv,
                    const int32_t *__restrict__ seq_off, const int32_t *__restrict__ seq_len, int n_heads, int causal,
                    int zdim, float scale_log2)
{
    using S = AttnShape<HD>;
    __shared__ __align__(16) uint16_t ks[ATT_TILE * S::RSTR]; /* K tile, [key][d] */
    __shared__ __align__(16) uint16_t vt[HD * S::TSTR];       /* V tile transposed, [d][key] */

    const AttnBlock blk = attn_block(n_heads, zdim);
    const int seq = blk.seq, h = blk.h;
    const int L = seq_len[seq];
    const int64_t row0 = seq_off[seq];
    const int D = n_heads * HD;
    const int64_t ld = 3 * (int64_t)D;
    const uint16_t *q_base = qkv + row0 * ld + (int64_t)h * HD;
    const uint16_t *k_base = q_base + D;
    const uint16_t *v_base = q_base + 2 * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;

    for (int q0 = blk.z * ATT_ROWS; q0 < L; q0 += zdim * ATT_ROWS) {
        const int r0 = q0 + warp * 16; /* this warp's query rows r0 .. r0 + 15 */
        const int t_lo = r0 + g, t_hi = r0 + g + 8;
        const bool active = r0 < L;
        uint32_t qa[S::KSTEPS][4];
        load_a_rows<HD>(qa, t_lo < L ? q_base + t_lo * ld : nullptr, t_hi < L ? q_base + t_hi * ld : nullptr, tig);
        float o[S::DBLK][4];
#pragma unroll
        for (int ob = 0; ob < S::DBLK; ob++)
            o[ob][0] = o[ob][1] = o[ob][2] = o[ob][3] = 0.f;
        float m_lo = -INFINITY, m_hi = -INFINITY; /* running row max (log2 domain) */
        float l_lo = 0.f, l_hi = 0.f;             /* this lane's part of the running row sum */

        const int kend = causal ? min(L, q0 + ATT_ROWS) : L;
        for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
            __syncthreads(); /* the previous tile is consumed */
            const int n = min(ATT_TILE, L - k0);
            stage_tile<HD, true, false>(ks, nullptr, k_base + k0 * ld, ld, n);
            stage_tile<HD, false, true>(nullptr, vt, v_base + k0 * ld, ld, n);
            __syncthreads();
            if (!active || (causal && k0 > r0 + 15))
                continue; /* warp-uniform */

            float s[S::TBLK][4];
#pragma unroll
            for (int nb = 0; nb < S::TBLK; nb++)
                s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < S::KSTEPS; kk++)
#pragma unroll
                for (int nb = 0; nb < S::TBLK; nb++) {
                    uint32_t b0, b1;
                    load_b<S::KHI>(b0, b1, ks, S::RSTR, nb * 8, kk * 16, g, tig);
                    mma_bf16(s[nb], qa[kk], b0, b1);
                }

            float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
            for (int nb = 0; nb < S::TBLK; nb++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = k0 + nb * 8 + 2 * tig + (e & 1);
                    const int row = e < 2 ? t_lo : t_hi;
                    const bool ok = key < L && (!causal || key <= row);
                    const float v = ok ? s[nb][e] * scale_log2 : -INFINITY;
                    s[nb][e] = v;
                    if (e < 2)
                        mx_lo = fmaxf(mx_lo, v);
                    else
                        mx_hi = fmaxf(mx_hi, v);
                }
            mx_lo = quad_max(mx_lo);
            mx_hi = quad_max(mx_hi);
            const float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
            /* a row with no visible key yet keeps max -inf: exponentiate against 0 instead */
            const float base_lo = mn_lo == -INFINITY ? 0.f : mn_lo;
            const float base_hi = mn_hi == -INFINITY ? 0.f : mn_hi;
            const float corr_lo = exp2f(m_lo - base_lo), corr_hi = exp2f(m_hi - base_hi);
            m_lo = mn_lo;
            m_hi = mn_hi;
            float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
            for (int nb = 0; nb < S::TBLK; nb++) {
                s[nb][0] = exp2f(s[nb][0] - base_lo);
                s[nb][1] = exp2f(s[nb][1] - base_lo);
                s[nb][2] = exp2f(s[nb][2] - base_hi);
                s[nb][3] = exp2f(s[nb][3] - base_hi);
                sum_lo += s[nb][0] + s[nb][1];
                sum_hi += s[nb][2] + s[nb][3];
            }
            l_lo = l_lo * corr_lo + sum_lo;
            l_hi = l_hi * corr_hi + sum_hi;
#pragma unroll
            for (int ob = 0; ob < S::DBLK; ob++) {
                o[ob][0] *= corr_lo;
                o[ob][1] *= corr_lo;
                o[ob][2] *= corr_hi;
                o[ob][3] *= corr_hi;
            }
            /* O += P V: the S accumulators of key blocks 2 kt, 2 kt + 1 are the A fragment */
#pragma unroll
            for (int kt = 0; kt < S::TSTEPS; kt++) {
                const uint32_t pa[4] = {pack_bf16x2(s[2 * kt][0], s[2 * kt][1]),
                                        pack_bf16x2(s[2 * kt][2], s[2 * kt][3]),
                                        pack_bf16x2(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                                        pack_bf16x2(s[2 * kt + 1][2], s[2 * kt + 1][3])};
#pragma unroll
                for (int ob = 0; ob < S::DBLK; ob++) {
                    uint32_t b0, b1;
                    load_b<true>(b0, b1, vt, S::TSTR, ob * 8, kt * 16, g, tig);
                    mma_bf16(o[ob], pa, b0, b1);
                }
            }
        }
        if (active) {
            l_lo = quad_sum(l_lo);
            l_hi = quad_sum(l_hi);
            const int64_t D64 = D;
            store_rows<HD>(t_lo < L ? out + (row0 + t_lo) * D64 + (int64_t)h * HD : nullptr,
                           t_hi < L ? out + (row0 + t_hi) * D64 + (int64_t)h * HD : nullptr, o, 1.f / l_lo,
                           1.f / l_hi, tig);
            if (tig == 0) {
                if (t_lo < L)
                    lse[(row0 + t_lo) * n_heads + h] = (m_lo + log2f(l_lo)) * ATT_LN2;
                if (t_hi < L)
                    lse[(row0 + t_hi) * n_heads + h] = (m_hi + log2f(l_hi)) * ATT_LN2;
            }
        }
    }
}

/* ---- backward: dK and dV (key owners) ------------------------------------------------------ */
/* With S^T = K Q^T per warp (16 keys x 64 queries of the tile):
 *   P^T = exp(S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - D),
 *   dV += P^T dO, dK += dS^T Q (times the softmax scale at the end). */
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS, AttnShape<HD>::DKDV_BLOCKS)
    attn_bwd_dkdv_kernel(uint16_t *__restrict__ d_qkv, const uint16_t *__restrict__ d_out,
                         const uint16_t *__restrict__ qkv, const uint16_t *__restrict__ out,
                         const float *__restrict__ lse, const int32_t *__restrict__ seq_off,
                         const int32_t *__restrict__ seq_len, int n_heads, int causal, int zdim, float scale_log2,
                         float scale)
{
    using S = AttnShape<HD>;
    __shared__ __align__(16) uint16_t qs[ATT_TILE * S::RSTR];  /* Q tile [t][d] */
    __shared__ __align__(16) uint16_t dos[ATT_TILE * S::RSTR]; /* dO tile [t][d] */
    __shared__ __align__(16) uint16_t qt[HD * S::TSTR];        /* Q tile transposed [d][t] */
    __shared__ __align__(16) uint16_t dot_t[HD * S::TSTR];     /* dO tile transposed [d][t] */
    __shared__ float lse2s[ATT_TILE];                          /* lse * log2(e) */
    __shared__ float dds[ATT_TILE];                            /* D = <dO, O> */

    const AttnBlock blk = attn_block(n_heads, zdim);
    const int seq = blk.seq, h = blk.h;
    const int L = seq_len[seq];
    const int64_t row0 = seq_off[seq];
    const int D = n_heads * HD;
    const int64_t ld = 3 * (int64_t)D;
    const uint16_t *q_base = qkv + row0 * ld + (int64_t)h * HD;
    const uint16_t *k_base = q_base + D;
    const uint16_t *v_base = q_base + 2 * D;
    const uint16_t *do_base = d_out + row0 * D + (int64_t)h * HD;
    const uint16_t *o_base = out + row0 * D + (int64_t)h * HD;
    uint16_t *dq_base = d_qkv + row0 * ld + (int64_t)h * HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;

    for (int kb0 = blk.z * ATT_ROWS; kb0 < L; kb0 += zdim * ATT_ROWS) {
        const int j0 = kb0 + warp * 16; /* this warp's keys j0 .. j0 + 15 */
        const int j_lo = j0 + g, j_hi = j0 + g + 8;
        const bool active = j0 < L;
        uint32_t ka[S::KSTEPS][4], va[S::KSTEPS][4];
        load_a_rows<HD>(ka, j_lo < L ? k_base + j_lo * ld : nullptr, j_hi < L ? k_base + j_hi * ld : nullptr, tig);
        load_a_rows<HD>(va, j_lo < L ? v_base + j_lo * ld : nullptr, j_hi < L ? v_base + j_hi * ld : nullptr, tig);
        float dk[S::DBLK][4], dv[S::DBLK][4];
#pragma unroll
        for (int ob = 0; ob < S::DBLK; ob++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                dk[ob][e] = dv[ob][e] = 0.f;

        /* causal: queries before the block's first key see none of its keys */
        for (int t0 = causal ? kb0 : 0; t0 < L; t0 += ATT_TILE) {
            __syncthreads();
            const int n = min(ATT_TILE, L - t0);
            stage_tile<HD, true, true>(qs, qt, q_base + t0 * ld, ld, n);
            stage_tile<HD, true, true>(dos, dot_t, do_base + (int64_t)t0 * D, D, n);
            for (int i = threadIdx.x; i < ATT_TILE; i += ATT_THREADS) {
                const int t = t0 + i;
                lse2s[i] = t < L ? lse[(row0 + t) * n_heads + h] * ATT_LOG2E : 0.f;
                dds[i] = t < L ? dot_bf16<HD>(do_base + (int64_t)t * D, o_base + (int64_t)t * D) : 0.f;
            }
            __syncthreads();
            if (!active || (causal && t0 + ATT_TILE - 1 < j0))
                continue; /* warp-uniform */

            float s[S::TBLK][4], dp[S::TBLK][4];
#pragma unroll
            for (int nb = 0; nb < S::TBLK; nb++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    s[nb][e] = dp[nb][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < S::KSTEPS; kk++)
#pragma unroll
                for (int nb = 0; nb < S::TBLK; nb++) {
                    uint32_t b0, b1;
                    load_b<S::KHI>(b0, b1, qs, S::RSTR, nb * 8, kk * 16, g, tig);
                    mma_bf16(s[nb], ka[kk], b0, b1);
                    load_b<S::KHI>(b0, b1, dos, S::RSTR, nb * 8, kk * 16, g, tig);
                    mma_bf16(dp[nb], va[kk], b0, b1);
                }
#pragma unroll
            for (int nb = 0; nb < S::TBLK; nb++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int ti = nb * 8 + 2 * tig + (e & 1);
                    const int t = t0 + ti;
                    const int key = e < 2 ? j_lo : j_hi;
                    const bool ok = t < L && (!causal || t >= key);
                    const float p = ok ? exp2f(s[nb][e] * scale_log2 - lse2s[ti]) : 0.f;
                    s[nb][e] = p;
                    dp[nb][e] = ok ? p * (dp[nb][e] - dds[ti]) : 0.f;
                }
#pragma unroll
            for (int kt = 0; kt < S::TSTEPS; kt++) {
                const uint32_t pa[4] = {pack_bf16x2(s[2 * kt][0], s[2 * kt][1]),
                                        pack_bf16x2(s[2 * kt][2], s[2 * kt][3]),
                                        pack_bf16x2(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                                        pack_bf16x2(s[2 * kt + 1][2], s[2 * kt + 1][3])};
                const uint32_t da[4] = {pack_bf16x2(dp[2 * kt][0], dp[2 * kt][1]),
                                        pack_bf16x2(dp[2 * kt][2], dp[2 * kt][3]),
                                        pack_bf16x2(dp[2 * kt + 1][0], dp[2 * kt + 1][1]),
                                        pack_bf16x2(dp[2 * kt + 1][2], dp[2 * kt + 1][3])};
#pragma unroll
                for (int ob = 0; ob < S::DBLK; ob++) {
                    uint32_t b0, b1;
                    load_b<true>(b0, b1, dot_t, S::TSTR, ob * 8, kt * 16, g, tig);
                    mma_bf16(dv[ob], pa, b0, b1);
                    load_b<true>(b0, b1, qt, S::TSTR, ob * 8, kt * 16, g, tig);
                    mma_bf16(dk[ob], da, b0, b1);
                }
            }
        }
        if (active) {
            uint16_t *lo = j_lo < L ? dq_base + j_lo * ld : nullptr;
            uint16_t *hi = j_hi < L ? dq_base + j_hi * ld : nullptr;
            store_rows<HD>(lo ? lo + D : nullptr, hi ? hi + D : nullptr, dk, scale, scale, tig);
            store_rows<HD>(lo ? lo + 2 * D : nullptr, hi ? hi + 2 * D : nullptr, dv, 1.f, 1.f, tig);
        }
    }
}

/* ---- backward: dQ (query owners) ------------------------------------------------------------ */
/* P = exp(Q K^T - lse), dP = dO V^T, dS = P (dP - D), dQ += dS K (times the scale at the end). */
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS, AttnShape<HD>::DQ_BLOCKS)
    attn_bwd_dq_kernel(uint16_t *__restrict__ d_qkv, const uint16_t *__restrict__ d_out,
                       const uint16_t *__restrict__ qkv, const uint16_t *__restrict__ out,
                       const float *__restrict__ lse, const int32_t *__restrict__ seq_off,
                       const int32_t *__restrict__ seq_len, int n_heads, int causal, int zdim, float scale_log2,
                       float scale)
{
    using S = AttnShape<HD>;
    __shared__ __align__(16) uint16_t ks[ATT_TILE * S::RSTR]; /* K tile [key][d] */
    __shared__ __align__(16) uint16_t vs[ATT_TILE * S::RSTR]; /* V tile [key][d] */
    __shared__ __align__(16) uint16_t kt_[HD * S::TSTR];      /* K tile transposed [d][key] */
    __shared__ float lse2s[ATT_ROWS];
    __shared__ float dds[ATT_ROWS];

    const AttnBlock blk = attn_block(n_heads, zdim);
    const int seq = blk.seq, h = blk.h;
    const int L = seq_len[seq];
    const int64_t row0 = seq_off[seq];
    const int D = n_heads * HD;
    const int64_t ld = 3 * (int64_t)D;
    const uint16_t *q_base = qkv + row0 * ld + (int64_t)h * HD;
    const uint16_t *k_base = q_base + D;
    const uint16_t *v_base = q_base + 2 * D;
    const uint16_t *do_base = d_out + row0 * D + (int64_t)h * HD;
    const uint16_t *o_base = out + row0 * D + (int64_t)h * HD;
    uint16_t *dq_base = d_qkv + row0 * ld + (int64_t)h * HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;

    for (int q0 = blk.z * ATT_ROWS; q0 < L; q0 += zdim * ATT_ROWS) {
        __syncthreads(); /* lse2s / dds of the previous block are read */
        for (int i = threadIdx.x; i < ATT_ROWS; i += ATT_THREADS) {
            const int t = q0 + i;
            lse2s[i] = t < L ? lse[(row0 + t) * n_heads + h] * ATT_LOG2E : 0.f;
            dds[i] = t < L ? dot_bf16<HD>(do_base + (int64_t)t * D, o_base + (int64_t)t * D) : 0.f;
        }
        __syncthreads();
        const int r0 = q0 + warp * 16;
        const int t_lo = r0 + g, t_hi = r0 + g + 8;
        const bool active = r0 < L;
        const float lse_lo = lse2s[warp * 16 + g], lse_hi = lse2s[warp * 16 + g + 8];
        const float dd_lo = dds[warp * 16 + g], dd_hi = dds[warp * 16 + g + 8];
        uint32_t qa[S::KSTEPS][4], doa[S::KSTEPS][4];
        load_a_rows<HD>(qa, t_lo < L ? q_base + t_lo * ld : nullptr, t_hi < L ? q_base + t_hi * ld : nullptr, tig);
        load_a_rows<HD>(doa, t_lo < L ? do_base + (int64_t)t_lo * D : nullptr,
                        t_hi < L ? do_base + (int64_t)t_hi * D : nullptr, tig);
        float dq[S::DBLK][4];
#pragma unroll
        for (int ob = 0; ob < S::DBLK; ob++)
            dq[ob][0] = dq[ob][1] = dq[ob][2] = dq[ob][3] = 0.f;

        const int kend = causal ? min(L, q0 + ATT_ROWS) : L;
        for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
            __syncthreads();
            const int n = min(ATT_TILE, L - k0);
            stage_tile<HD, true, true>(ks, kt_, k_base + k0 * ld, ld, n);
            stage_tile<HD, true, false>(vs, nullptr, v_base + k0 * ld, ld, n);
            __syncthreads();
            if (!active || (causal && k0 > r0 + 15))
                continue; /* warp-uniform */

            float s[S::TBLK][4], dp[S::TBLK][4];
#pragma unroll
            for (int nb = 0; nb < S::TBLK; nb++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    s[nb][e] = dp[nb][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < S::KSTEPS; kk++)
#pragma unroll
                for (int nb = 0; nb < S::TBLK; nb++) {
                    uint32_t b0, b1;
                    load_b<S::KHI>(b0, b1, ks, S::RSTR, nb * 8, kk * 16, g, tig);
                    mma_bf16(s[nb], qa[kk], b0, b1);
                    load_b<S::KHI>(b0, b1, vs, S::RSTR, nb * 8, kk * 16, g, tig);
                    mma_bf16(dp[nb], doa[kk], b0, b1);
                }
#pragma unroll
            for (int nb = 0; nb < S::TBLK; nb++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = k0 + nb * 8 + 2 * tig + (e & 1);
                    const int row = e < 2 ? t_lo : t_hi;
                    const bool ok = key < L && (!causal || key <= row);
                    const float p = ok ? exp2f(s[nb][e] * scale_log2 - (e < 2 ? lse_lo : lse_hi)) : 0.f;
                    s[nb][e] = ok ? p * (dp[nb][e] - (e < 2 ? dd_lo : dd_hi)) : 0.f; /* dS */
                }
#pragma unroll
            for (int kt = 0; kt < S::TSTEPS; kt++) {
                const uint32_t da[4] = {pack_bf16x2(s[2 * kt][0], s[2 * kt][1]),
                                        pack_bf16x2(s[2 * kt][2], s[2 * kt][3]),
                                        pack_bf16x2(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                                        pack_bf16x2(s[2 * kt + 1][2], s[2 * kt + 1][3])};
#pragma unroll
                for (int ob = 0; ob < S::DBLK; ob++) {
                    uint32_t b0, b1;
                    load_b<true>(b0, b1, kt_, S::TSTR, ob * 8, kt * 16, g, tig);
                    mma_bf16(dq[ob], da, b0, b1);
                }
            }
        }
        if (active)
            store_rows<HD>(t_lo < L ? dq_base + t_lo * ld : nullptr, t_hi < L ? dq_base + t_hi * ld : nullptr, dq,
                           scale, scale, tig);
    }
}

/* ---- launchers ---------------------------------------------------------------------------- */
bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* The 1-D grid of attn_block: n_seq x n_heads x zdim CTAs, zdim the row blocks of max_len (fewer
 * when the grid would pass 2^31 - 1 CTAs: a CTA then loops over row blocks z, z + zdim, ...), or
 * an error when a size cannot be launched. */
cudaError_t attn_grid(dim3 *grid, int *zdim, int n_seq, int max_len, int n_heads, int head_dim)
{
    if (head_dim != 8 && head_dim != 16 && head_dim != 32 && head_dim != 64)
        return cudaErrorInvalidValue;
    if ((int64_t)n_heads * head_dim * 3 > INT32_MAX || (int64_t)n_seq * n_heads > INT32_MAX)
        return cudaErrorInvalidValue;
    const int64_t per_head = (int64_t)n_seq * n_heads;
    int64_t blocks = (max_len + ATT_ROWS - 1) / ATT_ROWS;
    if (blocks * per_head > INT32_MAX)
        blocks = INT32_MAX / per_head;
    *zdim = (int)blocks;
    *grid = dim3((unsigned)(blocks * per_head));
    return cudaSuccess;
}

template <int HD>
void launch_fwd(dim3 grid, int zdim, cudaStream_t s, gp_bf16 *out, float *lse, const gp_bf16 *qkv,
                const int32_t *seq_off, const int32_t *seq_len, int n_heads, int causal)
{
    const float scale_log2 = (float)(1.0 / sqrt((double)HD) * 1.4426950408889634);
    attn_fwd_kernel<HD>
        <<<grid, ATT_THREADS, 0, s>>>(out, lse, qkv, seq_off, seq_len, n_heads, causal, zdim, scale_log2);
}

template <int HD>
void launch_bwd(dim3 grid, int zdim, cudaStream_t s, gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv,
                const gp_bf16 *out, const float *lse, const int32_t *seq_off, const int32_t *seq_len, int n_heads,
                int causal)
{
    const float scale = (float)(1.0 / sqrt((double)HD));
    const float scale_log2 = (float)(1.0 / sqrt((double)HD) * 1.4426950408889634);
    attn_bwd_dkdv_kernel<HD><<<grid, ATT_THREADS, 0, s>>>(d_qkv, d_out, qkv, out, lse, seq_off, seq_len, n_heads,
                                                          causal, zdim, scale_log2, scale);
    attn_bwd_dq_kernel<HD><<<grid, ATT_THREADS, 0, s>>>(d_qkv, d_out, qkv, out, lse, seq_off, seq_len, n_heads,
                                                        causal, zdim, scale_log2, scale);
}

} // namespace

/* The checks every attention entry makes; cudaSuccess with *run = 0 when there is nothing to do. */
static cudaError_t attention_args(dim3 *grid, int *zdim, int *run, int n_seq, int max_len, int n_heads, int head_dim,
                                  const void *a, const void *b, const void *c, const void *d)
{
    *run = 0;
    if (n_seq <= 0 || max_len <= 0 || n_heads <= 0)
        return cudaSuccess;
    cudaError_t e = attn_grid(grid, zdim, n_seq, max_len, n_heads, head_dim);
    if (e != cudaSuccess)
        return e;
    if (!aligned16(a) || !aligned16(b) || (c && !aligned16(c)) || (d && !aligned16(d)))
        return cudaErrorInvalidValue;
    *run = 1;
    return cudaSuccess;
}

static cudaError_t tiled_fwd(dim3 grid, int zdim, gp_bf16 *out, float *lse, const gp_bf16 *qkv,
                             const int32_t *seq_off, const int32_t *seq_len, int n_heads, int head_dim, int causal,
                             cudaStream_t s)
{
    switch (head_dim) {
    case 8: launch_fwd<8>(grid, zdim, s, out, lse, qkv, seq_off, seq_len, n_heads, causal); break;
    case 16: launch_fwd<16>(grid, zdim, s, out, lse, qkv, seq_off, seq_len, n_heads, causal); break;
    case 32: launch_fwd<32>(grid, zdim, s, out, lse, qkv, seq_off, seq_len, n_heads, causal); break;
    default: launch_fwd<64>(grid, zdim, s, out, lse, qkv, seq_off, seq_len, n_heads, causal); break;
    }
    return cudaGetLastError();
}

static cudaError_t tiled_bwd(dim3 grid, int zdim, gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv,
                             const gp_bf16 *out, const float *lse, const int32_t *seq_off, const int32_t *seq_len,
                             int n_heads, int head_dim, int causal, cudaStream_t s)
{
    switch (head_dim) {
    case 8: launch_bwd<8>(grid, zdim, s, d_qkv, d_out, qkv, out, lse, seq_off, seq_len, n_heads, causal); break;
    case 16: launch_bwd<16>(grid, zdim, s, d_qkv, d_out, qkv, out, lse, seq_off, seq_len, n_heads, causal); break;
    case 32: launch_bwd<32>(grid, zdim, s, d_qkv, d_out, qkv, out, lse, seq_off, seq_len, n_heads, causal); break;
    default: launch_bwd<64>(grid, zdim, s, d_qkv, d_out, qkv, out, lse, seq_off, seq_len, n_heads, causal); break;
    }
    return cudaGetLastError();
}

extern "C" cudaError_t k_attention_tiled_fwd(gp_bf16 *out, float *lse, const gp_bf16 *qkv, const int32_t *seq_off,
                                             const int32_t *seq_len, int n_seq, int max_len, int n_heads,
                                             int head_dim, int causal, cudaStream_t s)
{
    dim3 grid;
    int zdim = 0, run = 0;
    cudaError_t e = attention_args(&grid, &zdim, &run, n_seq, max_len, n_heads, head_dim, out, qkv, NULL, NULL);
    if (e != cudaSuccess || !run)
        return e;
    return tiled_fwd(grid, zdim, out, lse, qkv, seq_off, seq_len, n_heads, head_dim, causal, s);
}

extern "C" cudaError_t k_attention_tiled_bwd(gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv,
                                             const gp_bf16 *out, const float *lse, const int32_t *seq_off,
                                             const int32_t *seq_len, int n_seq, int max_len, int n_heads,
                                             int head_dim, int causal, cudaStream_t s)
{
    dim3 grid;
    int zdim = 0, run = 0;
    cudaError_t e = attention_args(&grid, &zdim, &run, n_seq, max_len, n_heads, head_dim, d_qkv, d_out, qkv, out);
    if (e != cudaSuccess || !run)
        return e;
    return tiled_bwd(grid, zdim, d_qkv, d_out, qkv, out, lse, seq_off, seq_len, n_heads, head_dim, causal, s);
}

extern "C" cudaError_t k_attention_fwd(gp_bf16 *out, float *lse, const gp_bf16 *qkv, const int32_t *seq_off,
                                       const int32_t *seq_len, int n_seq, int max_len, int n_heads, int head_dim,
                                       int causal, cudaStream_t s)
{
    dim3 grid;
    int zdim = 0, run = 0;
    cudaError_t e = attention_args(&grid, &zdim, &run, n_seq, max_len, n_heads, head_dim, out, qkv, NULL, NULL);
    if (e != cudaSuccess || !run)
        return e;
    if (k_attention_resident_supported(max_len, head_dim))
        return attention_resident_fwd(out, lse, qkv, NULL, seq_off, seq_len, n_seq, max_len, n_heads, head_dim, causal,
                                      s);
    return tiled_fwd(grid, zdim, out, lse, qkv, seq_off, seq_len, n_heads, head_dim, causal, s);
}

extern "C" cudaError_t k_attention_bwd(gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv, const gp_bf16 *out,
                                       const float *lse, const int32_t *seq_off, const int32_t *seq_len, int n_seq,
                                       int max_len, int n_heads, int head_dim, int causal, cudaStream_t s)
{
    dim3 grid;
    int zdim = 0, run = 0;
    cudaError_t e = attention_args(&grid, &zdim, &run, n_seq, max_len, n_heads, head_dim, d_qkv, d_out, qkv, out);
    if (e != cudaSuccess || !run)
        return e;
    if (k_attention_resident_supported(max_len, head_dim))
        return attention_resident_bwd(d_qkv, d_out, qkv, NULL, out, lse, seq_off, seq_len, n_seq, max_len, n_heads,
                                      head_dim, causal, s);
    return tiled_bwd(grid, zdim, d_qkv, d_out, qkv, out, lse, seq_off, seq_len, n_heads, head_dim, causal, s);
}

extern "C" cudaError_t k_attention_rope_fwd(gp_bf16 *out, float *lse, const gp_bf16 *qkv, const float *rope_cs,
                                            const int32_t *seq_off, const int32_t *seq_len, int n_seq, int max_len,
                                            int n_heads, int head_dim, int causal, cudaStream_t s)
{
    dim3 grid;
    int zdim = 0, run = 0;
    cudaError_t e = attention_args(&grid, &zdim, &run, n_seq, max_len, n_heads, head_dim, out, qkv, NULL, NULL);
    if (e != cudaSuccess || !run)
        return e;
    if (!rope_cs || !k_attention_resident_supported(max_len, head_dim))
        return cudaErrorInvalidValue;
    return attention_resident_fwd(out, lse, qkv, rope_cs, seq_off, seq_len, n_seq, max_len, n_heads, head_dim, causal,
                                  s);
}

extern "C" cudaError_t k_attention_rope_bwd(gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv,
                                            const float *rope_cs, const gp_bf16 *out, const float *lse,
                                            const int32_t *seq_off, const int32_t *seq_len, int n_seq, int max_len,
                                            int n_heads, int head_dim, int causal, cudaStream_t s)
{
    dim3 grid;
    int zdim = 0, run = 0;
    cudaError_t e = attention_args(&grid, &zdim, &run, n_seq, max_len, n_heads, head_dim, d_qkv, d_out, qkv, out);
    if (e != cudaSuccess || !run)
        return e;
    if (!rope_cs || !k_attention_resident_supported(max_len, head_dim))
        return cudaErrorInvalidValue;
    return attention_resident_bwd(d_qkv, d_out, qkv, rope_cs, out, lse, seq_off, seq_len, n_seq, max_len, n_heads,
                                  head_dim, causal, s);
}
