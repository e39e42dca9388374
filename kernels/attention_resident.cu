/* attention_resident: the tensor-core attention for short sequences, with one (sequence, head)'s
 * rows resident in shared memory for the whole CTA.
 *
 * The tiled kernels of attention.cu stream the other side through 64-row tiles, with two
 * barriers and a synchronous load per tile, and give a CTA 64 rows: at head_dim 16 and 201
 * positions each warp does 8 + 8 MMAs per tile between barriers, and the causal diagonal tile is
 * computed whole (the L4H64A4 backward ran at 2.5% of the tensor-core peak and 11% of the copy
 * ceiling). Here, when the sequence fits (k_attention_resident_supported: max_len <= 256 and the
 * staged rows within ATT_RES_SMEM_MAX bytes):
 * - one CTA of 4 warps per (sequence, head) copies that head's rows of the sequence into shared
 *   memory once, with cp.async (the forward: q, k, v; the backward: q, k, v, d_out, plus the
 *   per-row lse and D = <dO, O>), then one barrier; nothing is staged again;
 * - the warps then take 16-row work items from a shared counter, the dearest first (causal:
 *   a query block's cost grows with its index, a key block's shrinks), so the CTA's warps finish
 *   together; each item has one owner and its result does not depend on which warp took it, so
 *   the output is deterministic;
 * - an item walks the other side in chunks of 64 rows read straight from the resident copy with
 *   ldmatrix (plain for products over head_dim, .trans for products over the chunk: no
 *   transposed copies), the last chunk cut to the 16 rows the causal mask or the sequence end
 *   leaves, and the mask applied only on the chunks that need it;
 * - the backward is one kernel: dK/dV items (key owners) and dQ items (query owners) read the
 *   same resident rows, so every output element still has exactly one writer (no atomics).
 * Numerics are those of the tiled kernels: fp32 scores and statistics in the log2 domain, P and
 * dS rounded to bf16 only as MMA inputs. Launch configuration and measurements: kernels/README.md
 * and docs/attention.md. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "attention_common.cuh"
#include "attention_internal.h"
#include "kernels.h"
#include "mma_sm80.cuh"
#include "rope.cuh"

namespace {

using attn::dot_bf16;
using attn::store_rows;
using mma80::cp_async16;
using mma80::cp_async_commit;
using mma80::cp_async_wait_all;
using mma80::ex2;
using mma80::ldmatrix_x4;
using mma80::ldmatrix_x4_trans;
using mma80::mma_bf16;
using mma80::pack_bf16x2;
using mma80::quad_max;
using mma80::quad_sum;

constexpr int RES_WARPS = 4;
constexpr int RES_THREADS = RES_WARPS * 32;
/* Rows of the other side per inner step: the forward's online softmax rescales once a chunk, so
 * it takes 64; the backward has no running statistics and takes 32, which keeps its two phases'
 * fragments within 128 registers. */
constexpr int RES_CHUNK = 64;
constexpr int RES_BWD_CHUNK = 32;
constexpr float RES_LOG2E = 1.4426950408889634f;
constexpr float RES_LN2 = 0.6931471805599453f;

template <int HD>
struct ResShape {
    static_assert(HD == 16 || HD == 32 || HD == 64, "the resident attention takes head_dim 16, 32 or 64");
    static constexpr int KSTEPS = HD / 16; /* k16 steps over head_dim */
    static constexpr int DBLK = HD / 8;    /* n8 blocks over head_dim */
    static constexpr int CH = HD / 8;      /* 16-byte chunks per row */
    /* Row stride in bf16: (HD + 8) * 2 bytes is 16 (mod 128) away from a multiple of 128 bytes
     * for HD 16, 32, 64, so the 8 row addresses of an ldmatrix phase hit distinct banks. */
    static constexpr int STR = HD + 8;
    /* Register budgets, as CTAs per SM (ptxas, sm_90, CUDA 13.0, no spills): forward 64 / 102 /
     * 122 registers at head_dim 16 / 32 / 64 (72 / 100 / 120 with the rope folded in), backward
     * 114 / 128 / 186 either way. */
    static constexpr int FWD_BLOCKS = HD <= 16 ? 6 : HD == 32 ? 4 : 3;
    static constexpr int BWD_BLOCKS = HD <= 32 ? 4 : 2;
};

/* Rows of shared memory a CTA stages: max_len rounded up to whole 16-row blocks. */
__host__ __device__ inline int res_rows(int max_len) { return (max_len + 15) / 16 * 16; }

template <int HD>
size_t res_fwd_smem(int max_len)
{
    return (size_t)3 * res_rows(max_len) * ResShape<HD>::STR * sizeof(uint16_t);
}

template <int HD>
size_t res_bwd_smem(int max_len)
{
    return (size_t)4 * res_rows(max_len) * ResShape<HD>::STR * sizeof(uint16_t) +
           (size_t)2 * res_rows(max_len) * sizeof(float);
}

/* Copy rows 0 .. lp - 1 of one head's HD columns (src, row stride ld) into dst (row stride STR),
 * rows >= L as zeros: the MMAs read whole 16-row blocks, and a masked probability (0) times
 * uninitialised shared memory could be NaN. */
template <int HD>
__device__ __forceinline__ void stage_rows(uint16_t *dst, const uint16_t *__restrict__ src, int64_t ld, int L, int lp)
{
    using S = ResShape<HD>;
    for (int idx = threadIdx.x; idx < lp * S::CH; idx += RES_THREADS) {
        const int j = idx / S::CH, c = idx - j * S::CH;
        const bool in = j < L;
        cp_async16(dst + j * S::STR + c * 8, src + (int64_t)(in ? j : 0) * ld + c * 8, in);
    }
}

/* The same through registers, each (even, odd) column pair of row j rotated by the rotary
 * embedding of position j (cs: [position][HD/2] (cos, sin)), rounded to bf16 as k_rope_qk does. */
template <int HD>
__device__ __forceinline__ void stage_rows_rope(uint16_t *dst, const uint16_t *__restrict__ src, int64_t ld, int L,
                                                int lp, const float2 *__restrict__ cs)
{
    using S = ResShape<HD>;
    for (int idx = threadIdx.x; idx < lp * S::CH; idx += RES_THREADS) {
        const int j = idx / S::CH, c = idx - j * S::CH;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (j < L) {
            v = __ldg(reinterpret_cast<const uint4 *>(src + (int64_t)j * ld + c * 8));
            uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float lo, hi;
                kb::bf2f2(w[k], lo, hi);
                const float2 o = rope::rotate(lo, hi, __ldg(cs + j * (HD / 2) + c * 4 + k));
                w[k] = pack_bf16x2(o.x, o.y);
            }
            v = make_uint4(w[0], w[1], w[2], w[3]);
        }
        *reinterpret_cast<uint4 *>(dst + j * S::STR + c * 8) = v;
    }
}

/* A fragments (16 rows from r0, all of head_dim) from a resident [row][STR] copy. */
template <int HD>
__device__ __forceinline__ void load_a(uint32_t (&a)[ResShape<HD>::KSTEPS][4], const uint16_t *rows, int r0, int lane)
{
    const int mi = lane >> 3, r = lane & 7;
#pragma unroll
    for (int kk = 0; kk < ResShape<HD>::KSTEPS; kk++)
        ldmatrix_x4(a[kk], rows + (r0 + (mi & 1) * 8 + r) * ResShape<HD>::STR + kk * 16 + (mi >> 1) * 8);
}

/* acc[nb] += A * X^T over head_dim for the chunk's 16-row steps kt < nks: X rows c0 + 16 kt ..
 * are the n side (keys of S = Q K^T, queries of S^T = K Q^T, ...). */
template <int HD, int NB>
__device__ __forceinline__ void product_over_hd(float (&acc)[NB][4],
                                                const uint32_t (&a)[ResShape<HD>::KSTEPS][4], const uint16_t *x,
                                                int c0, int nks, int lane)
{
    const int mi = lane >> 3, r = lane & 7;
#pragma unroll
    for (int kt = 0; kt < NB / 2; kt++) {
        if (kt >= nks)
            break;
#pragma unroll
        for (int kk = 0; kk < ResShape<HD>::KSTEPS; kk++) {
            uint32_t b[4];
            ldmatrix_x4(b, x + (c0 + kt * 16 + (mi >> 1) * 8 + r) * ResShape<HD>::STR + kk * 16 + (mi & 1) * 8);
            mma_bf16(acc[2 * kt], a[kk], b[0], b[1]);
            mma_bf16(acc[2 * kt + 1], a[kk], b[2], b[3]);
        }
    }
}

/* out[ob] += P Y over the chunk for its 16-row steps kt < nks: P the chunk's probabilities (or
 * dS) in C layout, Y rows c0 + 16 kt .. (values for O, d_out for dV, queries for dK, keys for
 * dQ) read transposed. */
template <int HD, int NB>
__device__ __forceinline__ void product_over_chunk(float (&out)[ResShape<HD>::DBLK][4], const float (&p)[NB][4], const uint16_t *y, int c0,
                                                   int nks, int lane)
{
    const int mi = lane >> 3, r = lane & 7;
#pragma unroll
    for (int kt = 0; kt < NB / 2; kt++) {
        if (kt >= nks)
            break;
        const uint32_t pa[4] = {pack_bf16x2(p[2 * kt][0], p[2 * kt][1]), pack_bf16x2(p[2 * kt][2], p[2 * kt][3]),
                                pack_bf16x2(p[2 * kt + 1][0], p[2 * kt + 1][1]),
                                pack_bf16x2(p[2 * kt + 1][2], p[2 * kt + 1][3])};
#pragma unroll
        for (int ob = 0; ob < ResShape<HD>::DBLK; ob += 2) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, y + (c0 + kt * 16 + (mi & 1) * 8 + r) * ResShape<HD>::STR + ob * 8 + (mi >> 1) * 8);
            mma_bf16(out[ob], pa, b[0], b[1]);
            mma_bf16(out[ob + 1], pa, b[2], b[3]);
        }
    }
}

template <int N>
__device__ __forceinline__ void zero(float (&x)[N][4])
{
#pragma unroll
    for (int i = 0; i < N; i++)
        x[i][0] = x[i][1] = x[i][2] = x[i][3] = 0.f;
}

/* The same for gradients with respect to rotated q or k: each pair turned back by the inverse
 * rotation of its row's position (cs_lo / cs_hi: the rows' (cos, sin), read only for rows that
 * are stored), then rounded once. */
template <int HD>
__device__ __forceinline__ void store_block_unrope(uint16_t *lo, uint16_t *hi, const float (&acc)[ResShape<HD>::DBLK][4],
                                                   float mul, const float2 *cs_lo, const float2 *cs_hi, int tig)
{
#pragma unroll
    for (int ob = 0; ob < ResShape<HD>::DBLK; ob++) {
        const int c = ob * 8 + 2 * tig, p = ob * 4 + tig;
        if (lo) {
            const float2 r = __ldg(cs_lo + p);
            const float2 o = rope::rotate(acc[ob][0] * mul, acc[ob][1] * mul, make_float2(r.x, -r.y));
            *reinterpret_cast<uint32_t *>(lo + c) = pack_bf16x2(o.x, o.y);
        }
        if (hi) {
            const float2 r = __ldg(cs_hi + p);
            const float2 o = rope::rotate(acc[ob][2] * mul, acc[ob][3] * mul, make_float2(r.x, -r.y));
            *reinterpret_cast<uint32_t *>(hi + c) = pack_bf16x2(o.x, o.y);
        }
    }
}

/* The next work item of the CTA for this warp (all lanes get the same value). */
__device__ __forceinline__ int next_item(int *counter, int lane)
{
    int it = 0;
    if (lane == 0)
        it = atomicAdd(counter, 1);
    return __shfl_sync(0xffffffffu, it, 0);
}

/* The (sequence, head) a CTA owns and its row geometry. */
struct ResHead {
    int seq, h;
    int L;          /* the sequence's rows */
    int lp, nblk;   /* rows rounded up to 16-row blocks, and their count */
    int cap;        /* rows of each resident copy (max_len rounded up to 16) */
    int D;          /* n_heads * head_dim */
    int64_t row0;   /* the sequence's first packed row */
    int64_t ld;     /* row stride of qkv */
};

/* The CTA's ResHead; false for an empty sequence (the whole CTA returns). Shared memory, and the
 * caller the rope table, are sized by max_len: a longer sequence breaks the contract and traps. */
template <int HD>
__device__ __forceinline__ bool res_head(ResHead &r, const int32_t *__restrict__ seq_off,
                                         const int32_t *__restrict__ seq_len, int n_heads, int max_len)
{
    r.seq = (int)(blockIdx.x / (unsigned)n_heads);
    r.h = (int)(blockIdx.x - (unsigned)r.seq * n_heads);
    r.L = seq_len[r.seq];
    if (r.L <= 0)
        return false;
    if (r.L > max_len)
        __trap();
    r.cap = res_rows(max_len);
    r.lp = res_rows(r.L);
    r.nblk = r.lp / 16;
    r.row0 = seq_off[r.seq];
    r.D = n_heads * HD;
    r.ld = 3 * (int64_t)r.D;
    return true;
}

/* The resident q and k: with cp.async as one committed group, or, with the rope folded in,
 * rotated through registers. Called after the CTA's other copies are committed. */
template <int HD, bool ROPE>
__device__ __forceinline__ void stage_qk(uint16_t *qs, uint16_t *ks, const uint16_t *__restrict__ q_base,
                                         const ResHead &r, const float2 *__restrict__ rope_cs)
{
    if (ROPE) {
        stage_rows_rope<HD>(qs, q_base, r.ld, r.L, r.lp, rope_cs);
        stage_rows_rope<HD>(ks, q_base + r.D, r.ld, r.L, r.lp, rope_cs);
    } else {
        stage_rows<HD>(qs, q_base, r.ld, r.L, r.lp);
        stage_rows<HD>(ks, q_base + r.D, r.ld, r.L, r.lp);
        cp_async_commit();
    }
}

/* ---- forward ---------------------------------------------------------------------------- */
/* grid: n_seq * n_heads CTAs, (sequence, head) = (blockIdx.x / n_heads, blockIdx.x % n_heads).
 * Work items: the query blocks, the last (the most keys, when causal) first. */
template <int HD, bool ROPE>
__global__ void __launch_bounds__(RES_THREADS, ResShape<HD>::FWD_BLOCKS)
    attn_res_fwd_kernel(uint16_t *__restrict__ out, float *__restrict__ lse, const uint16_t *__restrict__ qkv,
                        const float2 *__restrict__ rope_cs, const int32_t *__restrict__ seq_off,
                        const int32_t *__restrict__ seq_len, int n_heads, int causal, int max_len, float scale_log2)
{
    using S = ResShape<HD>;
    extern __shared__ __align__(16) uint16_t res_smem[];
    __shared__ int counter;
    ResHead r;
    if (!res_head<HD>(r, seq_off, seq_len, n_heads, max_len))
        return;
    const int L = r.L, lp = r.lp, nblk = r.nblk, D = r.D, h = r.h;
    const int64_t row0 = r.row0;
    const uint16_t *q_base = qkv + row0 * r.ld + (int64_t)h * HD;
    uint16_t *qs = res_smem, *ks = qs + r.cap * S::STR, *vs = ks + r.cap * S::STR;
    stage_rows<HD>(vs, q_base + 2 * D, r.ld, L, lp);
    cp_async_commit();
    stage_qk<HD, ROPE>(qs, ks, q_base, r, rope_cs);
    if (threadIdx.x == 0)
        counter = 0;
    cp_async_wait_all();
    __syncthreads();

    const int lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
    for (int it = next_item(&counter, lane); it < nblk; it = next_item(&counter, lane)) {
        const int r0 = (causal ? nblk - 1 - it : it) * 16;
        const int t_lo = r0 + g, t_hi = r0 + g + 8;
        uint32_t qa[S::KSTEPS][4];
        load_a<HD>(qa, qs, r0, lane);
        float o[S::DBLK][4];
        zero(o);
        float m_lo = -INFINITY, m_hi = -INFINITY; /* running row max (log2 domain) */
        float l_lo = 0.f, l_hi = 0.f;             /* this lane's part of the running row sum */
        const int kend = causal ? min(lp, r0 + 16) : lp;
        for (int k0 = 0; k0 < kend; k0 += RES_CHUNK) {
            const int nks = min(RES_CHUNK / 16, (kend - k0) / 16);
            const bool edge = k0 + 16 * nks > L || (causal && k0 + 16 * nks > r0);
            float s[RES_CHUNK / 8][4];
            zero(s);
            product_over_hd<HD, RES_CHUNK / 8>(s, qa, ks, k0, nks, lane);
            float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
            for (int nb = 0; nb < RES_CHUNK / 8; nb++) {
                if (nb >= 2 * nks)
                    break;
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float v = s[nb][e] * scale_log2;
                    if (edge) {
                        const int key = k0 + nb * 8 + 2 * tig + (e & 1);
                        const int row = e < 2 ? t_lo : t_hi;
                        v = key < L && (!causal || key <= row) ? v : -INFINITY;
                    }
                    s[nb][e] = v;
                    if (e < 2)
                        mx_lo = fmaxf(mx_lo, v);
                    else
                        mx_hi = fmaxf(mx_hi, v);
                }
            }
            /* key 0 is visible to every row, so after the first chunk the max is finite and
             * exp2(-inf - max) = 0 rescales the empty start */
            const float mn_lo = fmaxf(m_lo, quad_max(mx_lo)), mn_hi = fmaxf(m_hi, quad_max(mx_hi));
            const float corr_lo = ex2(m_lo - mn_lo), corr_hi = ex2(m_hi - mn_hi);
            m_lo = mn_lo;
            m_hi = mn_hi;
            float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
            for (int nb = 0; nb < RES_CHUNK / 8; nb++) {
                if (nb >= 2 * nks)
                    break;
                s[nb][0] = ex2(s[nb][0] - mn_lo);
                s[nb][1] = ex2(s[nb][1] - mn_lo);
                s[nb][2] = ex2(s[nb][2] - mn_hi);
                s[nb][3] = ex2(s[nb][3] - mn_hi);
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
            product_over_chunk<HD, RES_CHUNK / 8>(o, s, vs, k0, nks, lane);
        }
        l_lo = quad_sum(l_lo);
        l_hi = quad_sum(l_hi);
        const int64_t D64 = D;
        store_rows<HD>(t_lo < L ? out + (row0 + t_lo) * D64 + (int64_t)h * HD : nullptr,
                        t_hi < L ? out + (row0 + t_hi) * D64 + (int64_t)h * HD : nullptr, o, 1.f / l_lo, 1.f / l_hi,
                        tig);
        if (tig == 0) {
            if (t_lo < L)
                lse[(row0 + t_lo) * n_heads + h] = (m_lo + log2f(l_lo)) * RES_LN2;
            if (t_hi < L)
                lse[(row0 + t_hi) * n_heads + h] = (m_hi + log2f(l_hi)) * RES_LN2;
        }
    }
}

/* ---- backward ---------------------------------------------------------------------------- */
/* Items 0 .. nblk-1: key block it (dK, dV; causal: the first keys see the most queries);
 * items nblk .. 2 nblk - 1: query block 2 nblk - 1 - it (dQ; causal: the last queries see the
 * most keys). With P = exp(Q K^T - lse), dP = dO V^T, dS = P (dP - D):
 *   dV = P^T dO, dK = dS^T Q, dQ = dS K (dK and dQ times the softmax scale). */
template <int HD, bool ROPE>
__global__ void __launch_bounds__(RES_THREADS, ResShape<HD>::BWD_BLOCKS)
    attn_res_bwd_kernel(uint16_t *__restrict__ d_qkv, const uint16_t *__restrict__ d_out,
                        const uint16_t *__restrict__ qkv, const float2 *__restrict__ rope_cs,
                        const uint16_t *__restrict__ out,
                        const float *__restrict__ lse, const int32_t *__restrict__ seq_off,
                        const int32_t *__restrict__ seq_len, int n_heads, int causal, int max_len, float scale_log2,
                        float scale)
{
    using S = ResShape<HD>;
    extern __shared__ __align__(16) uint16_t res_smem[];
    __shared__ int counter;
    ResHead r;
    if (!res_head<HD>(r, seq_off, seq_len, n_heads, max_len))
        return;
    const int L = r.L, lp = r.lp, nblk = r.nblk, D = r.D, h = r.h, cap = r.cap;
    const int64_t row0 = r.row0, ld = r.ld;
    const uint16_t *q_base = qkv + row0 * ld + (int64_t)h * HD;
    const uint16_t *do_base = d_out + row0 * D + (int64_t)h * HD;
    const uint16_t *o_base = out + row0 * D + (int64_t)h * HD;
    uint16_t *dq_base = d_qkv + row0 * ld + (int64_t)h * HD;
    uint16_t *qs = res_smem, *ks = qs + cap * S::STR, *vs = ks + cap * S::STR, *dos = vs + cap * S::STR;
    float *lse2s = reinterpret_cast<float *>(dos + cap * S::STR); /* lse * log2(e) */
    float *dds = lse2s + cap;                                       /* D = <dO, O> */
    stage_rows<HD>(vs, q_base + 2 * D, ld, L, lp);
    stage_rows<HD>(dos, do_base, D, L, lp);
    cp_async_commit();
    stage_qk<HD, ROPE>(qs, ks, q_base, r, rope_cs);
    /* while the copies fly: the per-row statistics, 0 past the end (those rows are masked) */
    for (int t = threadIdx.x; t < lp; t += RES_THREADS) {
        float dd = 0.f, l2 = 0.f;
        if (t < L) {
            l2 = lse[(row0 + t) * n_heads + h] * RES_LOG2E;
            dd = dot_bf16<HD>(do_base + (int64_t)t * D, o_base + (int64_t)t * D);
        }
        lse2s[t] = l2;
        dds[t] = dd;
    }
    if (threadIdx.x == 0)
        counter = 0;
    cp_async_wait_all();
    __syncthreads();

    const int lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
    for (int it = next_item(&counter, lane); it < 2 * nblk; it = next_item(&counter, lane)) {
        if (it < nblk) {
            /* key owner: keys j0 .. j0 + 15, S^T = K Q^T and dP^T = V dO^T over query chunks */
            const int j0 = it * 16, j_lo = j0 + g, j_hi = j0 + g + 8;
            uint32_t ka[S::KSTEPS][4], va[S::KSTEPS][4];
            load_a<HD>(ka, ks, j0, lane);
            load_a<HD>(va, vs, j0, lane);
            float dk[S::DBLK][4], dv[S::DBLK][4];
            zero(dk);
            zero(dv);
            for (int t0 = causal ? j0 : 0; t0 < lp; t0 += RES_BWD_CHUNK) {
                const int nks = min(RES_BWD_CHUNK / 16, (lp - t0) / 16);
                const bool edge = t0 + 16 * nks > L || (causal && t0 < j0 + 16);
                float s[RES_BWD_CHUNK / 8][4], dp[RES_BWD_CHUNK / 8][4];
                zero(s);
                zero(dp);
                product_over_hd<HD, RES_BWD_CHUNK / 8>(s, ka, qs, t0, nks, lane);
                product_over_hd<HD, RES_BWD_CHUNK / 8>(dp, va, dos, t0, nks, lane);
#pragma unroll
                for (int nb = 0; nb < RES_BWD_CHUNK / 8; nb++) {
                    if (nb >= 2 * nks)
                        break;
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int t = t0 + nb * 8 + 2 * tig + (e & 1);
                        const int key = e < 2 ? j_lo : j_hi;
                        const bool ok = !edge || (t < L && (!causal || t >= key));
                        const float p = ok ? ex2(s[nb][e] * scale_log2 - lse2s[t]) : 0.f;
                        s[nb][e] = p;
                        dp[nb][e] = ok ? p * (dp[nb][e] - dds[t]) : 0.f;
                    }
                }
                product_over_chunk<HD, RES_BWD_CHUNK / 8>(dv, s, dos, t0, nks, lane);
                product_over_chunk<HD, RES_BWD_CHUNK / 8>(dk, dp, qs, t0, nks, lane);
            }
            uint16_t *lo = j_lo < L ? dq_base + j_lo * ld : nullptr;
            uint16_t *hi = j_hi < L ? dq_base + j_hi * ld : nullptr;
            if (ROPE)
                store_block_unrope<HD>(lo ? lo + D : nullptr, hi ? hi + D : nullptr, dk, scale,
                                       rope_cs + j_lo * (HD / 2), rope_cs + j_hi * (HD / 2), tig);
            else
                store_rows<HD>(lo ? lo + D : nullptr, hi ? hi + D : nullptr, dk, scale, scale, tig);
            store_rows<HD>(lo ? lo + 2 * D : nullptr, hi ? hi + 2 * D : nullptr, dv, 1.f, 1.f, tig);
        } else {
            /* query owner: rows r0 .. r0 + 15, S = Q K^T and dP = dO V^T over key chunks */
            const int r0 = (causal ? 2 * nblk - 1 - it : it - nblk) * 16;
            const int t_lo = r0 + g, t_hi = r0 + g + 8;
            const float lse_lo = lse2s[t_lo], lse_hi = lse2s[t_hi];
            const float dd_lo = dds[t_lo], dd_hi = dds[t_hi];
            uint32_t qa[S::KSTEPS][4], doa[S::KSTEPS][4];
            load_a<HD>(qa, qs, r0, lane);
            load_a<HD>(doa, dos, r0, lane);
            float dq[S::DBLK][4];
            zero(dq);
            const int kend = causal ? min(lp, r0 + 16) : lp;
            for (int k0 = 0; k0 < kend; k0 += RES_BWD_CHUNK) {
                const int nks = min(RES_BWD_CHUNK / 16, (kend - k0) / 16);
                const bool edge = k0 + 16 * nks > L || (causal && k0 + 16 * nks > r0);
                float s[RES_BWD_CHUNK / 8][4], dp[RES_BWD_CHUNK / 8][4];
                zero(s);
                zero(dp);
                product_over_hd<HD, RES_BWD_CHUNK / 8>(s, qa, ks, k0, nks, lane);
                product_over_hd<HD, RES_BWD_CHUNK / 8>(dp, doa, vs, k0, nks, lane);
#pragma unroll
                for (int nb = 0; nb < RES_BWD_CHUNK / 8; nb++) {
                    if (nb >= 2 * nks)
                        break;
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int key = k0 + nb * 8 + 2 * tig + (e & 1);
                        const int row = e < 2 ? t_lo : t_hi;
                        const bool ok = !edge || (key < L && (!causal || key <= row));
                        const float p = ok ? ex2(s[nb][e] * scale_log2 - (e < 2 ? lse_lo : lse_hi)) : 0.f;
                        s[nb][e] = ok ? p * (dp[nb][e] - (e < 2 ? dd_lo : dd_hi)) : 0.f; /* dS */
                    }
                }
                product_over_chunk<HD, RES_BWD_CHUNK / 8>(dq, s, ks, k0, nks, lane);
            }
            uint16_t *lo = t_lo < L ? dq_base + t_lo * ld : nullptr, *hi = t_hi < L ? dq_base + t_hi * ld : nullptr;
            if (ROPE)
                store_block_unrope<HD>(lo, hi, dq, scale, rope_cs + t_lo * (HD / 2), rope_cs + t_hi * (HD / 2), tig);
            else
                store_rows<HD>(lo, hi, dq, scale, scale, tig);
        }
    }
}

template <int HD, bool ROPE>
cudaError_t launch_res_fwd(cudaStream_t s, gp_bf16 *out, float *lse, const gp_bf16 *qkv, const float *rope_cs,
                           const int32_t *seq_off, const int32_t *seq_len, int n_seq, int max_len, int n_heads,
                           int causal)
{
    const size_t smem = res_fwd_smem<HD>(max_len);
    cudaError_t e =
        cudaFuncSetAttribute(attn_res_fwd_kernel<HD, ROPE>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess)
        return e;
    const float scale_log2 = (float)(1.0 / sqrt((double)HD) * 1.4426950408889634);
    attn_res_fwd_kernel<HD, ROPE><<<(unsigned)((int64_t)n_seq * n_heads), RES_THREADS, smem, s>>>(
        reinterpret_cast<uint16_t *>(out), lse, reinterpret_cast<const uint16_t *>(qkv),
        reinterpret_cast<const float2 *>(rope_cs), seq_off, seq_len, n_heads, causal, max_len, scale_log2);
    return cudaGetLastError();
}

template <int HD, bool ROPE>
cudaError_t launch_res_bwd(cudaStream_t s, gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv,
                           const float *rope_cs, const gp_bf16 *out, const float *lse, const int32_t *seq_off,
                           const int32_t *seq_len, int n_seq, int max_len, int n_heads, int causal)
{
    const size_t smem = res_bwd_smem<HD>(max_len);
    cudaError_t e =
        cudaFuncSetAttribute(attn_res_bwd_kernel<HD, ROPE>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess)
        return e;
    const float scale = (float)(1.0 / sqrt((double)HD));
    const float scale_log2 = (float)(1.0 / sqrt((double)HD) * 1.4426950408889634);
    attn_res_bwd_kernel<HD, ROPE><<<(unsigned)((int64_t)n_seq * n_heads), RES_THREADS, smem, s>>>(
        reinterpret_cast<uint16_t *>(d_qkv), reinterpret_cast<const uint16_t *>(d_out),
        reinterpret_cast<const uint16_t *>(qkv), reinterpret_cast<const float2 *>(rope_cs),
        reinterpret_cast<const uint16_t *>(out), lse, seq_off, seq_len, n_heads, causal, max_len,
        scale_log2, scale);
    return cudaGetLastError();
}

template <int HD>
cudaError_t res_fwd_hd(cudaStream_t s, gp_bf16 *out, float *lse, const gp_bf16 *qkv, const float *rope_cs,
                       const int32_t *seq_off, const int32_t *seq_len, int n_seq, int max_len, int n_heads, int causal)
{
    return rope_cs ? launch_res_fwd<HD, true>(s, out, lse, qkv, rope_cs, seq_off, seq_len, n_seq, max_len, n_heads,
                                              causal)
                   : launch_res_fwd<HD, false>(s, out, lse, qkv, rope_cs, seq_off, seq_len, n_seq, max_len, n_heads,
                                               causal);
}

template <int HD>
cudaError_t res_bwd_hd(cudaStream_t s, gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv, const float *rope_cs,
                       const gp_bf16 *out, const float *lse, const int32_t *seq_off, const int32_t *seq_len, int n_seq,
                       int max_len, int n_heads, int causal)
{
    return rope_cs ? launch_res_bwd<HD, true>(s, d_qkv, d_out, qkv, rope_cs, out, lse, seq_off, seq_len, n_seq,
                                              max_len, n_heads, causal)
                   : launch_res_bwd<HD, false>(s, d_qkv, d_out, qkv, rope_cs, out, lse, seq_off, seq_len, n_seq,
                                               max_len, n_heads, causal);
}

size_t res_bwd_smem_any(int head_dim, int max_len)
{
    switch (head_dim) {
    case 16: return res_bwd_smem<16>(max_len);
    case 32: return res_bwd_smem<32>(max_len);
    case 64: return res_bwd_smem<64>(max_len);
    default: return 0;
    }
}

} // namespace

extern "C" int k_attention_resident_supported(int max_len, int head_dim)
{
    if (max_len < 1 || max_len > ATT_RES_MAX_LEN)
        return 0;
    const size_t bwd = res_bwd_smem_any(head_dim, max_len); /* the larger of the two kernels' */
    return bwd > 0 && bwd <= ATT_RES_SMEM_MAX;
}

cudaError_t attention_resident_fwd(gp_bf16 *out, float *lse, const gp_bf16 *qkv, const float *rope_cs,
                                   const int32_t *seq_off, const int32_t *seq_len, int n_seq, int max_len, int n_heads,
                                   int head_dim, int causal, cudaStream_t s)
{
    if ((int64_t)n_seq * n_heads > INT32_MAX || (rope_cs && ((uintptr_t)rope_cs & 7u)))
        return cudaErrorInvalidValue;
    switch (head_dim) {
    case 16: return res_fwd_hd<16>(s, out, lse, qkv, rope_cs, seq_off, seq_len, n_seq, max_len, n_heads, causal);
    case 32: return res_fwd_hd<32>(s, out, lse, qkv, rope_cs, seq_off, seq_len, n_seq, max_len, n_heads, causal);
    case 64: return res_fwd_hd<64>(s, out, lse, qkv, rope_cs, seq_off, seq_len, n_seq, max_len, n_heads, causal);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t attention_resident_bwd(gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv, const float *rope_cs,
                                   const gp_bf16 *out, const float *lse, const int32_t *seq_off, const int32_t *seq_len,
                                   int n_seq, int max_len, int n_heads, int head_dim, int causal, cudaStream_t s)
{
    if ((int64_t)n_seq * n_heads > INT32_MAX || (rope_cs && ((uintptr_t)rope_cs & 7u)))
        return cudaErrorInvalidValue;
    switch (head_dim) {
    case 16:
        return res_bwd_hd<16>(s, d_qkv, d_out, qkv, rope_cs, out, lse, seq_off, seq_len, n_seq, max_len, n_heads,
                              causal);
    case 32:
        return res_bwd_hd<32>(s, d_qkv, d_out, qkv, rope_cs, out, lse, seq_off, seq_len, n_seq, max_len, n_heads,
                              causal);
    case 64:
        return res_bwd_hd<64>(s, d_qkv, d_out, qkv, rope_cs, out, lse, seq_off, seq_len, n_seq, max_len, n_heads,
                              causal);
    default: return cudaErrorInvalidValue;
    }
}
