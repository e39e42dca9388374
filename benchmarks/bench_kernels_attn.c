/* bench_kernels_attn: k_attention_fwd / k_attention_bwd (tensor cores) at the paper sizes'
 * head dims 8, 16, 32, 64 on full-length packed sequences of 201 positions, and L4H256A4 also at
 * the 51 of its step configuration (where head_dim 64 takes the resident kernels).
 *
 * FLOPs ("useful"): the forward's Q K^T and P V, 4 L^2 hd per (sequence, head), half of it when
 * causal; the backward 2.5x that (dV, dP, dQ, dK and the recomputed scores: five products
 * against the forward's two). Bytes: qkv, out and lse once (and d_out, d_qkv for the backward).
 *
 * Alternatives, labelled as what they are:
 * - the tiled kernels of attention.cu, where the resident ones (attention_resident.cu) run;
 * - there also (groups attention_rope_fwd/bwd), the resident kernels with the rotary embedding
 *   folded in against the separate k_rope_qk passes before the forward and after the backward;
 * - "GEMM-only lower bound of unfused attention": the batched cuBLASLt products an unfused
 *   implementation cannot avoid (forward S = Q K^T and O = P V; backward dV = P^T dO,
 *   dP = dO V^T, dQ = dS K, dK = dS^T Q), over the full L x L (a GEMM cannot skip the masked
 *   half), on contiguous [seq*head][L][hd] operands and bf16 L x L scores (rows padded to 208
 *   for alignment). It leaves out the softmax, the masking and the transposes, so the real
 *   unfused path is slower than this.
 * - the generic CUDA-core kernel of kernels/attention_generic.cu (any head_dim) at head_dim 16
 *   and 64.
 * - cuDNN's fused flash attention (csrc/cuda/attention_cudnn.c, the deterministic backward) on
 *   the same packed buffers: the alternative the backend's attention_kernel = auto times against
 *   the own kernels when it starts. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_cases.h"
#include "bench_harness.h"
#include "cuda/attention_cudnn.h"
#include "util.h"

#define MAXSET 16

typedef struct {
    int nseq, H, hd, causal, n;
    int pos; /* positions per sequence (every sequence full length) */
    int lp;  /* the unfused path's L x L score rows, padded to 16 for alignment (201 -> 208) */
    int64_t R;
    int32_t *off, *len;
    gp_bf16 *qkv[MAXSET], *out[MAXSET], *dout[MAXSET], *dqkv[MAXSET];
    float *lse[MAXSET];
    /* the unfused path's operands */
    gp_bf16 *Q, *K, *V, *S, *dP, *O, *dO, *dQ, *dK, *dV;
    cudnn_attn *cd;
    int32_t *rag_qkv, *rag_out;
    /* rope: the (cos, sin) table of the folded kernels, the row positions of the separate pass */
    float *rope_cs;
    int32_t *tok_pos;
} attn_ctx;

#define BK_ROPE_THETA 10000.0

static void l_cfwd(void *p, int i)
{
    attn_ctx *c = p;
    gp_err e = {{0}};
    if (cudnn_attn_fwd(c->cd, c->out[i], c->lse[i], c->qkv[i], c->len, c->rag_qkv, c->rag_out, c->nseq, &e) != 0)
        bk_die("cudnn_attn_fwd", __FILE__, __LINE__, e.msg);
}

static void l_cbwd(void *p, int i)
{
    attn_ctx *c = p;
    gp_err e = {{0}};
    if (cudnn_attn_bwd(c->cd, c->dqkv[i], c->dout[i], c->qkv[i], c->out[i], c->lse[i], c->len, c->rag_qkv, c->rag_out,
                       c->nseq, &e) != 0)
        bk_die("cudnn_attn_bwd", __FILE__, __LINE__, e.msg);
}

static void l_fwd(void *p, int i)
{
    attn_ctx *c = p;
    CK(k_attention_fwd(c->out[i], c->lse[i], c->qkv[i], c->off, c->len, c->nseq, c->pos, c->H, c->hd, c->causal,
                       BK.s));
}

static void l_bwd(void *p, int i)
{
    attn_ctx *c = p;
    CK(k_attention_bwd(c->dqkv[i], c->dout[i], c->qkv[i], c->out[i], c->lse[i], c->off, c->len, c->nseq, c->pos,
                       c->H, c->hd, c->causal, BK.s));
}

static void l_tfwd(void *p, int i)
{
    attn_ctx *c = p;
    CK(k_attention_tiled_fwd(c->out[i], c->lse[i], c->qkv[i], c->off, c->len, c->nseq, c->pos, c->H, c->hd,
                             c->causal, BK.s));
}

static void l_tbwd(void *p, int i)
{
    attn_ctx *c = p;
    CK(k_attention_tiled_bwd(c->dqkv[i], c->dout[i], c->qkv[i], c->out[i], c->lse[i], c->off, c->len, c->nseq,
                             c->pos, c->H, c->hd, c->causal, BK.s));
}

/* rope folded into the resident kernels, against the model's path without it: a k_rope_qk pass
 * before the forward, and the inverse pass on d_q, d_k after the backward */
static void l_rfwd(void *p, int i)
{
    attn_ctx *c = p;
    CK(k_attention_rope_fwd(c->out[i], c->lse[i], c->qkv[i], c->rope_cs, c->off, c->len, c->nseq, c->pos, c->H, c->hd,
                            c->causal, BK.s));
}

static void l_rbwd(void *p, int i)
{
    attn_ctx *c = p;
    CK(k_attention_rope_bwd(c->dqkv[i], c->dout[i], c->qkv[i], c->rope_cs, c->out[i], c->lse[i], c->off, c->len,
                            c->nseq, c->pos, c->H, c->hd, c->causal, BK.s));
}

static void l_sfwd(void *p, int i)
{
    attn_ctx *c = p;
    CK(k_rope_qk(c->qkv[i], c->tok_pos, c->R, c->H, c->hd, BK_ROPE_THETA, 0, BK.s));
    l_fwd(p, i);
}

static void l_sbwd(void *p, int i)
{
    attn_ctx *c = p;
    l_bwd(p, i);
    CK(k_rope_qk(c->dqkv[i], c->tok_pos, c->R, c->H, c->hd, BK_ROPE_THETA, 1, BK.s));
}

static void l_gfwd(void *p, int i)
{
    attn_ctx *c = p;
    CK(k_attention_generic_fwd(c->out[i], c->lse[i], c->qkv[i], c->off, c->len, c->nseq, c->H, c->hd, c->causal, BK.s));
}

static void l_gbwd(void *p, int i)
{
    attn_ctx *c = p;
    CK(k_attention_generic_bwd(c->dqkv[i], c->dout[i], c->qkv[i], c->out[i], c->lse[i], c->off, c->len, c->nseq, c->H,
                               c->hd, c->causal, BK.s));
}

/* One batched product over every (sequence, head): C[L][n] = op(A) op(B). */
static gemm_args bgemm(const attn_ctx *c, int ta, int tb, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
                       int64_t sa, const void *B, int64_t ldb, int64_t sb, void *C, int64_t ldc, int64_t sc, float alpha)
{
    gemm_args g = {.trans_a = ta, .trans_b = tb, .M = M, .N = N, .K = K, .A = A, .lda = lda, .stride_a = sa, .B = B,
                   .ldb = ldb, .stride_b = sb, .C = C, .ldc = ldc, .stride_c = sc, .c_type = GEMM_BF16,
                   .alpha = alpha, .beta = 0.0f, .batch = c->nseq * c->H};
    return g;
}

static void unfused_fwd_args(const attn_ctx *c, gemm_args g[2])
{
    const int64_t L = c->pos, LP = c->lp, hd = c->hd, sq = L * hd, ss = L * LP;
    g[0] = bgemm(c, 0, 1, L, L, hd, c->Q, hd, sq, c->K, hd, sq, c->S, LP, ss, 1.0f / sqrtf((float)hd));
    g[1] = bgemm(c, 0, 0, L, hd, L, c->S, LP, ss, c->V, hd, sq, c->O, hd, sq, 1.0f);
}

static void unfused_bwd_args(const attn_ctx *c, gemm_args g[4])
{
    const int64_t L = c->pos, LP = c->lp, hd = c->hd, sq = L * hd, ss = L * LP;
    g[0] = bgemm(c, 1, 0, L, hd, L, c->S, LP, ss, c->dO, hd, sq, c->dV, hd, sq, 1.0f);  /* dV = P^T dO */
    g[1] = bgemm(c, 0, 1, L, L, hd, c->dO, hd, sq, c->V, hd, sq, c->dP, LP, ss, 1.0f);  /* dP = dO V^T */
    g[2] = bgemm(c, 0, 0, L, hd, L, c->S, LP, ss, c->K, hd, sq, c->dQ, hd, sq, 1.0f);   /* dQ = dS K */
    g[3] = bgemm(c, 1, 0, L, hd, L, c->S, LP, ss, c->Q, hd, sq, c->dK, hd, sq, 1.0f);   /* dK = dS^T Q */
}

static void l_ufwd(void *p, int i)
{
    gemm_args g[2];
    unfused_fwd_args(p, g);
    bk_gemm(&g[0]);
    bk_gemm(&g[1]);
}

static void l_ubwd(void *p, int i)
{
    gemm_args g[4];
    unfused_bwd_args(p, g);
    for (int k = 0; k < 4; k++)
        bk_gemm(&g[k]);
}

static void attn_case(int nseq, int pos, int H, int hd, int causal, const char *size, int generic)
{
    if (!bk_want("attention"))
        return;
    attn_ctx c = {.nseq = nseq, .H = H, .hd = hd, .causal = causal, .pos = pos, .lp = (pos + 15) / 16 * 16,
                  .R = (int64_t)nseq * pos};
    const int64_t D = (int64_t)H * hd, R = c.R, L = pos, LP = c.lp;
    const double RD = (double)R * D;
    int32_t *h = gp_xmalloc((size_t)nseq * 2 * sizeof *h);
    for (int b = 0; b < nseq; b++) {
        h[b] = b * pos;
        h[nseq + b] = pos;
    }
    c.off = bk_upload(h, (size_t)nseq * 4);
    c.len = bk_upload(h + nseq, (size_t)nseq * 4);
    free(h);
    double fwd_bytes = RD * (6 + 2) + 4.0 * R * H, bwd_bytes = RD * (2 + 6 + 2 + 6) + 4.0 * R * H;
    double fwd_flops = 4.0 * L * L * hd * nseq * H * (causal ? 0.5 : 1.0), bwd_flops = 2.5 * fwd_flops;
    c.n = bk_sets(bwd_bytes);
    for (int i = 0; i < c.n; i++) {
        c.qkv[i] = bk_rand_bf16(R * 3 * D, 1.0f);
        c.out[i] = bk_alloc((size_t)RD * 2);
        c.lse[i] = bk_alloc((size_t)R * H * 4);
        c.dout[i] = bk_rand_bf16(R * D, 0.01f);
        c.dqkv[i] = bk_alloc((size_t)RD * 6);
    }
    char sh[96];
    snprintf(sh, sizeof sh, "%s %dx%d, %dx%d%s", size, nseq, pos, H, hd, causal ? " causal" : " bidir");
    const int resident = k_attention_resident_supported(pos, hd);
    bk_timing t = bk_time(l_fwd, &c, c.n);
    bk_meas m = {"attention_fwd", sh, "ours", resident ? "k_attention_fwd (resident)" : "k_attention_fwd (tiled)",
                 fwd_bytes, 0, fwd_flops, fwd_bytes, "useful FLOPs: 4 L^2 hd per (seq, head), causal half"};
    bk_report(&m, &t, bk_finite_bf16(c.out[0], R * D) && bk_finite_f32(c.lse[0], R * H));
    for (int i = 0; i < c.n; i++) /* every set's out and lse, for the backward */
        l_fwd(&c, i);
    t = bk_time(l_bwd, &c, c.n);
    bk_meas mb = {"attention_bwd", sh, "ours",
                  resident ? "k_attention_bwd (resident, one kernel)" : "k_attention_bwd (tiled: dK/dV + dQ)",
                  bwd_bytes, 0, bwd_flops, bwd_bytes, "useful FLOPs: 2.5x the forward's"};
    bk_report(&mb, &t, bk_finite_bf16(c.dqkv[0], R * 3 * D));
    if (resident) { /* the tiled kernels the resident ones replace at this length */
        t = bk_time(l_tfwd, &c, c.n);
        bk_meas tf = {"attention_fwd", sh, "tiled kernels", "k_attention_tiled_fwd", fwd_bytes, 0, fwd_flops,
                      fwd_bytes, NULL};
        bk_report(&tf, &t, bk_finite_bf16(c.out[0], R * D));
        for (int i = 0; i < c.n; i++)
            l_fwd(&c, i);
        t = bk_time(l_tbwd, &c, c.n);
        bk_meas tb = {"attention_bwd", sh, "tiled kernels", "k_attention_tiled_bwd (dK/dV + dQ)", bwd_bytes, 0,
                      bwd_flops, bwd_bytes, NULL};
        bk_report(&tb, &t, bk_finite_bf16(c.dqkv[0], R * 3 * D));

        /* with the rotary embedding: folded in, against the separate in-place passes (rotation
         * keeps the inputs' norms, so repeated calls stay in range) */
        int32_t *hp = gp_xmalloc((size_t)R * sizeof *hp);
        for (int64_t r = 0; r < R; r++)
            hp[r] = (int32_t)(r % pos);
        c.tok_pos = bk_upload(hp, (size_t)R * 4);
        free(hp);
        c.rope_cs = bk_alloc((size_t)pos * hd * 4);
        CK(k_rope_table(c.rope_cs, pos, hd, BK_ROPE_THETA, BK.s));
        const double rope_bytes = 2.0 * RD * 2 * 2; /* q and k read and written once by a separate pass */
        t = bk_time(l_rfwd, &c, c.n);
        bk_meas rf = {"attention_rope_fwd", sh, "ours", "k_attention_rope_fwd (rope folded in)", fwd_bytes, 0,
                      fwd_flops, fwd_bytes, "rotates q and k as they are staged"};
        bk_report(&rf, &t, bk_finite_bf16(c.out[0], R * D));
        t = bk_time(l_sfwd, &c, c.n);
        bk_meas sf = {"attention_rope_fwd", sh, "separate pass: k_rope_qk + k_attention_fwd", "k_rope_qk, k_attention_fwd",
                      fwd_bytes, fwd_bytes + rope_bytes, fwd_flops, fwd_bytes, NULL};
        bk_report(&sf, &t, bk_finite_bf16(c.out[0], R * D));
        for (int i = 0; i < c.n; i++)
            l_rfwd(&c, i);
        t = bk_time(l_rbwd, &c, c.n);
        bk_meas rb = {"attention_rope_bwd", sh, "ours", "k_attention_rope_bwd (rope folded in)", bwd_bytes, 0, bwd_flops,
                      bwd_bytes, "turns d_q, d_k back before their one bf16 rounding"};
        bk_report(&rb, &t, bk_finite_bf16(c.dqkv[0], R * 3 * D));
        t = bk_time(l_sbwd, &c, c.n);
        bk_meas sb = {"attention_rope_bwd", sh, "separate pass: k_attention_bwd + k_rope_qk inverse",
                      "k_attention_bwd, k_rope_qk(inverse)", bwd_bytes, bwd_bytes + rope_bytes, bwd_flops, bwd_bytes,
                      NULL};
        bk_report(&sb, &t, bk_finite_bf16(c.dqkv[0], R * 3 * D));
    }

    /* cuDNN's fused attention on the same buffers */
    {
        bk_meas cf = {"attention_fwd", sh, "cuDNN fused attention", "cudnn_attn_fwd", fwd_bytes, 0, fwd_flops, fwd_bytes,
                      NULL};
        bk_meas cb = {"attention_bwd", sh, "cuDNN fused attention", "cudnn_attn_bwd (deterministic)", bwd_bytes, 0,
                      bwd_flops, bwd_bytes, NULL};
        cudnn_attn_shape cs = {.n_heads = H, .head_dim = hd, .max_len = pos, .max_seq = nseq, .causal = causal};
        char why[200];
        gp_err ce = {{0}};
        if (!cudnn_attn_supported(&cs, why, sizeof why)) {
            bk_report_skipped(&cf, why);
            bk_report_skipped(&cb, why);
        } else if (!(c.cd = cudnn_attn_create(&cs, BK.s, &ce))) {
            bk_report_skipped(&cf, ce.msg);
            bk_report_skipped(&cb, ce.msg);
        } else {
            int32_t *rq = gp_xmalloc((size_t)(nseq + 1) * 8), *ro = rq + nseq + 1;
            for (int b = 0; b <= nseq; b++) {
                rq[b] = (int32_t)((int64_t)b * pos * 3 * D);
                ro[b] = (int32_t)((int64_t)b * pos * D);
            }
            c.rag_qkv = bk_upload(rq, (size_t)(nseq + 1) * 4);
            c.rag_out = bk_upload(ro, (size_t)(nseq + 1) * 4);
            free(rq);
            t = bk_time(l_cfwd, &c, c.n);
            bk_report(&cf, &t, bk_finite_bf16(c.out[0], R * D));
            for (int i = 0; i < c.n; i++) /* each set's statistics for the backward */
                l_cfwd(&c, i);
            t = bk_time(l_cbwd, &c, c.n);
            bk_report(&cb, &t, bk_finite_bf16(c.dqkv[0], R * 3 * D));
            cudnn_attn_destroy(c.cd);
            c.cd = NULL;
        }
    }

    /* the GEMM-only lower bound of the unfused path */
    const int64_t BH = (int64_t)nseq * H, ops = BH * L * hd;
    c.Q = bk_rand_bf16(ops, 1.0f);
    c.K = bk_rand_bf16(ops, 1.0f);
    c.V = bk_rand_bf16(ops, 1.0f);
    c.dO = bk_rand_bf16(ops, 0.01f);
    c.S = bk_rand_bf16(BH * L * LP, 0.01f);
    c.dP = bk_alloc((size_t)BH * L * LP * 2);
    c.O = bk_alloc((size_t)ops * 2);
    c.dQ = bk_alloc((size_t)ops * 2);
    c.dK = bk_alloc((size_t)ops * 2);
    c.dV = bk_alloc((size_t)ops * 2);
    gemm_args gf[2], gb[4];
    unfused_fwd_args(&c, gf);
    unfused_bwd_args(&c, gb);
    const double sbytes = 2.0 * BH * L * L;
    bk_meas af = {"attention_fwd", sh, "GEMM-only lower bound of unfused (cuBLASLt)", "2 batched cuBLASLt GEMMs",
                  fwd_bytes, 2 * RD * 4 + 2 * sbytes, fwd_flops, 2 * sbytes,
                  "Q K^T and P V over the full L^2, bf16 scores; no softmax, mask or transposes"};
    bk_meas ab = {"attention_bwd", sh, "GEMM-only lower bound of unfused (cuBLASLt)", "4 batched cuBLASLt GEMMs",
                  bwd_bytes, 2 * RD * 8 + 5 * sbytes, bwd_flops, 3 * sbytes,
                  "dV, dP, dQ, dK over the full L^2; no softmax backward, mask or transposes"};
    gp_err e = {{0}};
    if (bk_gemm_try(&gf[0], &e) != 0 || bk_gemm_try(&gf[1], &e) != 0) {
        bk_report_skipped(&af, e.msg);
    } else {
        t = bk_time(l_ufwd, &c, 1);
        bk_report(&af, &t, bk_finite_bf16(c.O, ops));
    }
    int ok = 1;
    for (int k = 0; k < 4 && ok; k++)
        ok = bk_gemm_try(&gb[k], &e) == 0;
    if (!ok) {
        bk_report_skipped(&ab, e.msg);
    } else {
        t = bk_time(l_ubwd, &c, 1);
        bk_report(&ab, &t, bk_finite_bf16(c.dK, ops));
    }
    if (generic) {
        t = bk_time(l_gfwd, &c, c.n);
        bk_meas g = {"attention_fwd", sh, "generic CUDA-core kernel", "k_attention_generic_fwd", fwd_bytes, 0,
                     fwd_flops, fwd_bytes, NULL};
        bk_report(&g, &t, bk_finite_bf16(c.out[0], R * D));
        t = bk_time(l_gbwd, &c, c.n);
        bk_meas gb2 = {"attention_bwd", sh, "generic CUDA-core kernel", "k_attention_generic_bwd", bwd_bytes, 0,
                       bwd_flops, bwd_bytes, NULL};
        bk_report(&gb2, &t, bk_finite_bf16(c.dqkv[0], R * 3 * D));
    }
    bk_free_all();
}

void bk_cases_attn(void)
{
    bk_progress("attention at each paper size (packed sequences of 201 positions; L4H256A4 also at its 51)");
    for (int zi = 0; zi < bk_n_sizes; zi++) {
        const bk_size *z = &bk_sizes[zi];
        int hd = z->dim / z->heads;
        attn_case(z->seqs, BK_POSITIONS, z->heads, hd, 1, z->name, hd == 16 || z->dim == 256);
        if (hd == 16)
            attn_case(z->seqs, BK_POSITIONS, z->heads, hd, 0, z->name, 0);
        if (z->dim == 256) /* the step configuration's 50 history slots + the candidate */
            attn_case(z->seqs, 51, z->heads, hd, 1, z->name, 0);
    }
}
