/* GPU tests of cuDNN's fused attention (csrc/cuda/attention_cudnn.c) against the CPU reference on
 * fresh random inputs of mixed lengths, and of the probe that picks between it and the own kernels. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "cuda/attention_cudnn.h"
#include "cuda/attention_pick.h"
#include "gpu_check.h"
#include "kernels.h"
#include "rng.h"

/* single rows, short tails, the paper's 51 and 201 positions */
static const int32_t cd_lens[] = {1, 2, 17, 51, 201, 64, 130};
#define CD_NSEQ ((int)(sizeof cd_lens / sizeof cd_lens[0]))
#define CD_MAX_LEN 201

static float *to_float(const uint16_t *h, int64_t n)
{
    float *f = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        f[i] = bf16_to_float(h[i]);
    return f;
}

static float *columns(const float *x, int64_t rows, int D, int col)
{
    float *out = malloc((size_t)(rows * D) * sizeof(float));
    for (int64_t r = 0; r < rows; r++)
        memcpy(out + r * D, x + r * 3 * D + col, (size_t)D * sizeof(float));
    return out;
}

/* The first n_seq sequences of cd_lens through cuDNN, planned for max_seq of them. */
static void cudnn_case(int hd, int causal, int n_heads, int n_seq, int max_seq)
{
    const int D = n_heads * hd;
    char why[200];
    cudnn_attn_shape sh = {.n_heads = n_heads, .head_dim = hd, .max_len = CD_MAX_LEN, .max_seq = max_seq,
                           .causal = causal};
    REQUIRE(cudnn_attn_supported(&sh, why, sizeof why), "cuDNN attention unsupported here: %s", why);
    int64_t off64[CD_NSEQ];
    int32_t rag_qkv[CD_NSEQ + 1], rag_out[CD_NSEQ + 1];
    int64_t rows = 0;
    for (int b = 0; b < n_seq; b++) {
        off64[b] = rows;
        rag_qkv[b] = (int32_t)(rows * 3 * D);
        rag_out[b] = (int32_t)(rows * D);
        rows += cd_lens[b];
    }
    rag_qkv[n_seq] = (int32_t)(rows * 3 * D);
    rag_out[n_seq] = (int32_t)(rows * D);
    const int64_t n_qkv = rows * 3 * D, n_out = rows * D, n_lse = rows * n_heads;
    gp_rng rng = gp_rng_stream(31, RNG_PURPOSE_TEST, (uint64_t)hd, (uint64_t)(causal * 100 + n_seq));
    uint16_t *qkv_h = malloc((size_t)n_qkv * 2), *dout_h = malloc((size_t)n_out * 2);
    for (int64_t i = 0; i < n_qkv; i++)
        qkv_h[i] = float_to_bf16((float)(1.2 * gp_rng_normal(&rng)));
    for (int64_t i = 0; i < n_out; i++)
        dout_h[i] = float_to_bf16((float)gp_rng_normal(&rng));
    float *qkv_f = to_float(qkv_h, n_qkv), *dout_f = to_float(dout_h, n_out);
    float *q = columns(qkv_f, rows, D, 0), *k = columns(qkv_f, rows, D, D), *v = columns(qkv_f, rows, D, 2 * D);
    float *out_ref = malloc((size_t)n_out * 4), *lse_ref = malloc((size_t)n_lse * 4);
    cpu_attention_fwd(out_ref, lse_ref, q, k, v, off64, cd_lens, n_seq, n_heads, hd, causal);
    float *dq = malloc((size_t)n_out * 4), *dk = malloc((size_t)n_out * 4), *dv = malloc((size_t)n_out * 4);
    cpu_attention_bwd(dq, dk, dv, dout_f, q, k, v, out_ref, lse_ref, off64, cd_lens, n_seq, n_heads, hd, causal);

    gp_err e = {{0}};
    cudnn_attn *ca = cudnn_attn_create(&sh, 0, &e);
    REQUIRE(ca, "%s", e.msg);
    REQUIRE(cudnn_attn_prepare(ca, n_seq, &e) == 1, "%s", e.msg);
    uint16_t *d_qkv = gpu_upload(qkv_h, (size_t)n_qkv * 2), *d_dout = gpu_upload(dout_h, (size_t)n_out * 2);
    int32_t *d_len = gpu_upload(cd_lens, sizeof cd_lens), *d_rq = gpu_upload(rag_qkv, sizeof rag_qkv);
    int32_t *d_ro = gpu_upload(rag_out, sizeof rag_out);
    const int64_t n_stats = (int64_t)max_seq * n_heads * CD_MAX_LEN;
    uint16_t *d_out = gpu_alloc((size_t)n_out * 2), *d_grad = gpu_alloc((size_t)n_qkv * 2);
    uint16_t *d_grad2 = gpu_alloc((size_t)n_qkv * 2);
    float *d_stats = gpu_alloc((size_t)n_stats * 4);
    REQUIRE(d_qkv && d_dout && d_len && d_rq && d_ro && d_out && d_grad && d_grad2 && d_stats);

    char what[160];
    REQUIRE(cudnn_attn_fwd(ca, d_out, d_stats, d_qkv, d_len, d_rq, d_ro, n_seq, &e) == 0, "%s", e.msg);
    CUDA_REQUIRE(cudaDeviceSynchronize());
    uint16_t *out_h = malloc((size_t)n_out * 2);
    float *stats_h = malloc((size_t)n_stats * 4), *stats_rows = malloc((size_t)n_lse * 4);
    gpu_download(out_h, d_out, (size_t)n_out * 2);
    gpu_download(stats_h, d_stats, (size_t)n_stats * 4);
    for (int b = 0; b < n_seq; b++)
        for (int t = 0; t < cd_lens[b]; t++)
            for (int hh = 0; hh < n_heads; hh++)
                stats_rows[(off64[b] + t) * n_heads + hh] = stats_h[((int64_t)b * n_heads + hh) * CD_MAX_LEN + t];
    float *out_g = to_float(out_h, n_out);
    snprintf(what, sizeof what, "cuDNN attention out (head_dim %d, causal %d, %d of %d sequences)", hd, causal, n_seq,
             max_seq);
    CHECK_REL(out_g, out_ref, n_out, 1e-2, what);
    snprintf(what, sizeof what, "cuDNN attention statistics (head_dim %d, causal %d)", hd, causal);
    CHECK_REL(stats_rows, lse_ref, n_lse, 1e-4, what);

    REQUIRE(cudnn_attn_bwd(ca, d_grad, d_dout, d_qkv, d_out, d_stats, d_len, d_rq, d_ro, n_seq, &e) == 0, "%s", e.msg);
    REQUIRE(cudnn_attn_bwd(ca, d_grad2, d_dout, d_qkv, d_out, d_stats, d_len, d_rq, d_ro, n_seq, &e) == 0, "%s", e.msg);
    CUDA_REQUIRE(cudaDeviceSynchronize());
    uint16_t *g_h = malloc((size_t)n_qkv * 2), *g_h2 = malloc((size_t)n_qkv * 2);
    gpu_download(g_h, d_grad, (size_t)n_qkv * 2);
    gpu_download(g_h2, d_grad2, (size_t)n_qkv * 2);
    CHECK(memcmp(g_h, g_h2, (size_t)n_qkv * 2) == 0, "cuDNN attention backward not bit-identical (head_dim %d)", hd);
    float *g_f = to_float(g_h, n_qkv);
    float *dq_g = columns(g_f, rows, D, 0), *dk_g = columns(g_f, rows, D, D), *dv_g = columns(g_f, rows, D, 2 * D);
    snprintf(what, sizeof what, "cuDNN attention dq (head_dim %d, causal %d)", hd, causal);
    CHECK_REL(dq_g, dq, n_out, 1e-2, what);
    snprintf(what, sizeof what, "cuDNN attention dk (head_dim %d, causal %d)", hd, causal);
    CHECK_REL(dk_g, dk, n_out, 1e-2, what);
    snprintf(what, sizeof what, "cuDNN attention dv (head_dim %d, causal %d)", hd, causal);
    CHECK_REL(dv_g, dv, n_out, 1e-2, what);

    cudnn_attn_destroy(ca);
    void *dev[] = {d_qkv, d_dout, d_len, d_rq, d_ro, d_out, d_grad, d_grad2, d_stats};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        cudaFree(dev[i]);
    void *host[] = {qkv_h, dout_h, qkv_f, dout_f, q, k, v, out_ref, lse_ref, dq, dk, dv, out_h, stats_h, stats_rows,
                    out_g, g_h, g_h2, g_f, dq_g, dk_g, dv_g};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        free(host[i]);
}

TEST(cudnn_attn_causal_matches_cpu)
{
    REQUIRE(gpu_present());
    cudnn_case(8, 1, 4, CD_NSEQ, CD_NSEQ);
    cudnn_case(16, 1, 4, CD_NSEQ, CD_NSEQ);
    cudnn_case(32, 1, 2, CD_NSEQ, CD_NSEQ);
    cudnn_case(64, 1, 2, CD_NSEQ, CD_NSEQ);
}

TEST(cudnn_attn_bidirectional_matches_cpu)
{
    REQUIRE(gpu_present());
    cudnn_case(16, 0, 4, CD_NSEQ, CD_NSEQ);
    cudnn_case(64, 0, 2, CD_NSEQ, CD_NSEQ);
}

/* a plan for fewer sequences than the workspace was sized for */
TEST(cudnn_attn_smaller_batch)
{
    REQUIRE(gpu_present());
    cudnn_case(16, 1, 4, 3, CD_NSEQ);
}

TEST(cudnn_attn_rejects_bad_shapes)
{
    REQUIRE(gpu_present());
    char why[200];
    cudnn_attn_shape sh = {.n_heads = 4, .head_dim = 4, .max_len = 201, .max_seq = 8, .causal = 1};
    CHECK(!cudnn_attn_supported(&sh, why, sizeof why), "head_dim 4 accepted");
    CHECK(strstr(why, "head_dim") != NULL, "reason: %s", why);
    sh.head_dim = 16;
    gp_err e = {{0}};
    cudnn_attn *ca = cudnn_attn_create(&sh, 0, &e);
    REQUIRE(ca, "%s", e.msg);
    CHECK(cudnn_attn_prepare(ca, 9, &e) == 0, "9 sequences accepted by a plan for 8");
    CHECK(cudnn_attn_prepare(ca, 0, &e) == 0, "0 sequences accepted");
    cudnn_attn_destroy(ca);
}

/* The probe that picks the implementation: both run, cuDNN is reproducible and agrees, with the
 * rotary embedding as the model applies it: separate k_rope_qk passes around both, then folded
 * into the own kernels (the probe restores the inputs the passes rotate in place, else the two
 * would see differently rotated q and k). */
TEST(cudnn_attn_probe_times_both)
{
    REQUIRE(gpu_present());
    const int B = 64, L = 201, H = 4, hd = 16, D = H * hd;
    cudnn_attn_shape sh = {.n_heads = H, .head_dim = hd, .max_len = L, .max_seq = B, .causal = 1};
    gp_err e = {{0}};
    cudnn_attn *ca = cudnn_attn_create(&sh, 0, &e);
    REQUIRE(ca, "%s", e.msg);
    const size_t rows = (size_t)B * L;
    int32_t *off = malloc((size_t)B * 4), *len = malloc((size_t)B * 4), *pos = malloc(rows * 4);
    int32_t *rq = malloc((size_t)(B + 1) * 4), *ro = malloc((size_t)(B + 1) * 4);
    for (int b = 0; b <= B; b++) {
        if (b < B)
            off[b] = b * L, len[b] = L;
        rq[b] = b * L * 3 * D;
        ro[b] = b * L * D;
    }
    for (size_t t = 0; t < rows; t++)
        pos[t] = (int32_t)(t % L);
    float *cs = gpu_alloc((size_t)L * hd * 4);
    REQUIRE(k_rope_table(cs, L, hd, 10000.0, 0) == cudaSuccess);
    attn_probe p = {.qkv = gpu_alloc(rows * 3 * D * 2), .out = gpu_alloc(rows * D * 2), .d_out = gpu_alloc(rows * D * 2),
                    .d_qkv = gpu_alloc(rows * 3 * D * 2), .lse = gpu_alloc(rows * H * 4),
                    .seq_off = gpu_upload(off, (size_t)B * 4), .seq_len = gpu_upload(len, (size_t)B * 4),
                    .ragged_qkv = gpu_upload(rq, (size_t)(B + 1) * 4), .ragged_out = gpu_upload(ro, (size_t)(B + 1) * 4),
                    .tok_pos = gpu_upload(pos, rows * 4), .rope_theta = 10000.0, .n_seq = B, .max_len = L,
                    .n_heads = H, .head_dim = hd, .causal = 1};
    REQUIRE(cudnn_attn_prepare(ca, B, &e) == 1, "%s", e.msg);
    for (int folded = 0; folded < 2; folded++) {
        p.rope_cs = folded ? cs : NULL;
        attn_probe_result r;
        REQUIRE(attention_probe(ca, &p, 5, 0, &r, &e) == 0, "%s", e.msg);
        printf("    probe (rope %s): own %.3f ms, cuDNN %s %.3f ms, deterministic %d, differences %.2e / %.2e\n",
               folded ? "folded into the own kernels" : "separate", r.ms_own, cudnn_attn_version(), r.ms_cudnn,
               r.cudnn_deterministic, r.max_rel_diff_out, r.max_rel_diff_grad);
        CHECK(r.ms_own > 0 && r.ms_cudnn > 0);
        CHECK(r.cudnn_deterministic, "cuDNN backward not reproducible");
        CHECK(r.max_rel_diff_out < 2e-2 && r.max_rel_diff_grad < 5e-2,
              "rope %d: cuDNN and own kernels disagree: %.3g / %.3g", folded, r.max_rel_diff_out, r.max_rel_diff_grad);
    }
    cudnn_attn_destroy(ca);
    void *dev[] = {p.qkv, p.out, p.d_out, p.d_qkv, p.lse, (void *)p.seq_off, (void *)p.seq_len,
                   (void *)p.ragged_qkv, (void *)p.ragged_out, (void *)p.tok_pos, cs};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        cudaFree(dev[i]);
    free(pos);
    free(off), free(len), free(rq), free(ro);
}
