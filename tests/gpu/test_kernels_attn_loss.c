/* GPU tests of the attention and loss kernels (kernels/attention.cu, kernels/softmax_loss.cu)
 * against the CPU reference ops on fresh random inputs. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "gpu_check.h"
#include "kernels.h"
#include "rng.h"

/* ---- attention ---------------------------------------------------------------------------- */
/* One packed batch mixing every length class: single rows, a tail of one query block, the
 * paper's 51 and 201, and lengths needing several key tiles (the tiled kernels). */
static const int32_t attn_lens[] = {1, 2, 17, 51, 201, 300, 1024};
#define ATTN_NSEQ ((int)(sizeof attn_lens / sizeof attn_lens[0]))
#define ATTN_MAX_LEN 1024
/* Short sequences for the resident kernels: block edges (15, 16, 17, 64, 65), the paper's 51 and
 * 201, and the longest they take; more sequences than warps so the work counter is contended. */
static const int32_t res_lens[] = {1, 2, 15, 16, 17, 51, 64, 65, 130, 200, 201, 256, 3, 256, 97};
#define RES_NSEQ ((int)(sizeof res_lens / sizeof res_lens[0]))

/* Which launcher a case runs: the dispatching k_attention_* or the tiled kernels. */
enum attn_path { PATH_DISPATCH, PATH_TILED };

static cudaError_t run_fwd(enum attn_path p, uint16_t *out, float *lse, const uint16_t *qkv, const int32_t *off,
                           const int32_t *len, int n_seq, int max_len, int n_heads, int hd, int causal)
{
    return p == PATH_TILED ? k_attention_tiled_fwd(out, lse, qkv, off, len, n_seq, max_len, n_heads, hd, causal, 0)
                           : k_attention_fwd(out, lse, qkv, off, len, n_seq, max_len, n_heads, hd, causal, 0);
}

static cudaError_t run_bwd(enum attn_path p, uint16_t *d_qkv, const uint16_t *d_out, const uint16_t *qkv,
                           const uint16_t *out, const float *lse, const int32_t *off, const int32_t *len, int n_seq,
                           int max_len, int n_heads, int hd, int causal)
{
    return p == PATH_TILED ? k_attention_tiled_bwd(d_qkv, d_out, qkv, out, lse, off, len, n_seq, max_len, n_heads, hd,
                                                   causal, 0)
                           : k_attention_bwd(d_qkv, d_out, qkv, out, lse, off, len, n_seq, max_len, n_heads, hd,
                                             causal, 0);
}

static float *bf16_array_to_float(const uint16_t *h, int64_t n)
{
    float *f = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        f[i] = bf16_to_float(h[i]);
    return f;
}

/* Columns [col, col + D) of a [rows][3D] array into a [rows][D] one. */
static float *take_columns(const float *x, int64_t rows, int D, int col)
{
    float *out = malloc((size_t)(rows * D) * sizeof(float));
    for (int64_t r = 0; r < rows; r++)
        memcpy(out + r * D, x + r * 3 * D + col, (size_t)D * sizeof(float));
    return out;
}

/* One case: forward and backward against the CPU reference, then a second run, bit-identical.
 * The tiled path's second run at head_dim 16 uses a grid of one row block per (sequence, head),
 * so each CTA loops over the blocks; the resident path's second run hands the work items to
 * warps in another order (the shared counter), so it checks that the order does not matter. */
static void attn_case_on(int hd, int causal, int n_heads, const int32_t *lens, int n_seq, int max_len,
                         enum attn_path path)
{
    const int D = n_heads * hd;
    int64_t off64[32];
    int32_t off32[32];
    int64_t rows = 0;
    REQUIRE(n_seq <= 32);
    for (int b = 0; b < n_seq; b++) {
        off64[b] = rows;
        off32[b] = (int32_t)rows;
        rows += lens[b];
    }
    const char *pname = path == PATH_TILED ? "tiled" : k_attention_resident_supported(max_len, hd) ? "resident" : "dispatch";
    const int64_t n_qkv = rows * 3 * D, n_out = rows * D, n_lse = rows * n_heads;
    gp_rng rng = gp_rng_stream(17, RNG_PURPOSE_TEST, (uint64_t)hd, (uint64_t)causal * 2 + (max_len <= 256));

    uint16_t *qkv_h = malloc((size_t)n_qkv * sizeof(uint16_t));
    uint16_t *dout_h = malloc((size_t)n_out * sizeof(uint16_t));
    for (int64_t i = 0; i < n_qkv; i++)
        qkv_h[i] = float_to_bf16((float)(1.2 * gp_rng_normal(&rng)));
    for (int64_t i = 0; i < n_out; i++)
        dout_h[i] = float_to_bf16((float)gp_rng_normal(&rng));
    float *qkv_f = bf16_array_to_float(qkv_h, n_qkv);
    float *dout_f = bf16_array_to_float(dout_h, n_out);
    float *q = take_columns(qkv_f, rows, D, 0), *k = take_columns(qkv_f, rows, D, D);
    float *v = take_columns(qkv_f, rows, D, 2 * D);

    /* forward */
    float *out_ref = malloc((size_t)n_out * sizeof(float)), *lse_ref = malloc((size_t)n_lse * sizeof(float));
    cpu_attention_fwd(out_ref, lse_ref, q, k, v, off64, lens, n_seq, n_heads, hd, causal);

    uint16_t *d_qkv_in = gpu_upload(qkv_h, (size_t)n_qkv * 2);
    uint16_t *d_dout = gpu_upload(dout_h, (size_t)n_out * 2);
    int32_t *d_off = gpu_upload(off32, (size_t)n_seq * 4), *d_len = gpu_upload(lens, (size_t)n_seq * 4);
    uint16_t *d_out = gpu_alloc((size_t)n_out * 2), *d_out2 = gpu_alloc((size_t)n_out * 2);
    float *d_lse = gpu_alloc((size_t)n_lse * 4), *d_lse2 = gpu_alloc((size_t)n_lse * 4);
    uint16_t *d_grad = gpu_alloc((size_t)n_qkv * 2), *d_grad2 = gpu_alloc((size_t)n_qkv * 2);
    REQUIRE(d_qkv_in && d_dout && d_off && d_len && d_out && d_out2 && d_lse && d_lse2 && d_grad && d_grad2);

    KERNEL_REQUIRE(run_fwd(path, d_out, d_lse, d_qkv_in, d_off, d_len, n_seq, max_len, n_heads, hd, causal));
    uint16_t *out_h = malloc((size_t)n_out * 2), *out_h2 = malloc((size_t)n_out * 2);
    float *lse_g = malloc((size_t)n_lse * 4), *lse_g2 = malloc((size_t)n_lse * 4);
    gpu_download(out_h, d_out, (size_t)n_out * 2);
    gpu_download(lse_g, d_lse, (size_t)n_lse * 4);
    float *out_g = bf16_array_to_float(out_h, n_out);
    char what[128];
    snprintf(what, sizeof what, "%s attention out (head_dim %d, causal %d)", pname, hd, causal);
    CHECK_REL(out_g, out_ref, n_out, 1e-2, what);
    snprintf(what, sizeof what, "%s attention lse (head_dim %d, causal %d)", pname, hd, causal);
    CHECK_REL(lse_g, lse_ref, n_lse, 1e-5, what);

    const int max_len2 = path == PATH_TILED && hd == 16 ? 1 : max_len;
    KERNEL_REQUIRE(run_fwd(path, d_out2, d_lse2, d_qkv_in, d_off, d_len, n_seq, max_len2, n_heads, hd, causal));
    gpu_download(out_h2, d_out2, (size_t)n_out * 2);
    gpu_download(lse_g2, d_lse2, (size_t)n_lse * 4);
    CHECK(memcmp(out_h, out_h2, (size_t)n_out * 2) == 0 && memcmp(lse_g, lse_g2, (size_t)n_lse * 4) == 0,
          "%s attention forward not bit-identical on a second run (head_dim %d, causal %d)", pname, hd, causal);

    /* backward, from the GPU's own out and lse (the forward is checked above) */
    KERNEL_REQUIRE(run_bwd(path, d_grad, d_dout, d_qkv_in, d_out, d_lse, d_off, d_len, n_seq, max_len, n_heads, hd,
                           causal));
    float *dq = malloc((size_t)n_out * 4), *dk = malloc((size_t)n_out * 4), *dv = malloc((size_t)n_out * 4);
    cpu_attention_bwd(dq, dk, dv, dout_f, q, k, v, out_g, lse_g, off64, lens, n_seq, n_heads, hd, causal);
    uint16_t *grad_h = malloc((size_t)n_qkv * 2), *grad_h2 = malloc((size_t)n_qkv * 2);
    gpu_download(grad_h, d_grad, (size_t)n_qkv * 2);
    float *grad_f = bf16_array_to_float(grad_h, n_qkv);
    float *dq_g = take_columns(grad_f, rows, D, 0), *dk_g = take_columns(grad_f, rows, D, D);
    float *dv_g = take_columns(grad_f, rows, D, 2 * D);
    snprintf(what, sizeof what, "%s attention dq (head_dim %d, causal %d)", pname, hd, causal);
    CHECK_REL(dq_g, dq, n_out, 1e-2, what);
    snprintf(what, sizeof what, "%s attention dk (head_dim %d, causal %d)", pname, hd, causal);
    CHECK_REL(dk_g, dk, n_out, 1e-2, what);
    snprintf(what, sizeof what, "%s attention dv (head_dim %d, causal %d)", pname, hd, causal);
    CHECK_REL(dv_g, dv, n_out, 1e-2, what);

    KERNEL_REQUIRE(run_bwd(path, d_grad2, d_dout, d_qkv_in, d_out, d_lse, d_off, d_len, n_seq, max_len2, n_heads, hd,
                           causal));
    gpu_download(grad_h2, d_grad2, (size_t)n_qkv * 2);
    CHECK(memcmp(grad_h, grad_h2, (size_t)n_qkv * 2) == 0,
          "%s attention backward not bit-identical on a second run (head_dim %d, causal %d)", pname, hd, causal);

    cudaFree(d_qkv_in);
    cudaFree(d_dout);
    cudaFree(d_off);
    cudaFree(d_len);
    cudaFree(d_out);
    cudaFree(d_out2);
    cudaFree(d_lse);
    cudaFree(d_lse2);
    cudaFree(d_grad);
    cudaFree(d_grad2);
    free(qkv_h);
    free(dout_h);
    free(qkv_f);
    free(dout_f);
    free(q);
    free(k);
    free(v);
    free(out_ref);
    free(lse_ref);
    free(out_h);
    free(out_h2);
    free(lse_g);
    free(lse_g2);
    free(out_g);
    free(dq);
    free(dk);
    free(dv);
    free(grad_h);
    free(grad_h2);
    free(grad_f);
    free(dq_g);
    free(dk_g);
    free(dv_g);
}

/* The long set on the tiled kernels; the short set through the dispatching launchers, which take
 * the resident kernels there, and on the tiled kernels too (both against the same reference). */
static void attn_case(int hd, int causal, int n_heads)
{
    attn_case_on(hd, causal, n_heads, attn_lens, ATTN_NSEQ, ATTN_MAX_LEN, PATH_TILED);
    if (hd == 8)
        return;
    const int res_max = hd == 64 ? 160 : 256;
    int32_t lens[RES_NSEQ];
    for (int i = 0; i < RES_NSEQ; i++)
        lens[i] = res_lens[i] < res_max ? res_lens[i] : res_max;
    CHECK(k_attention_resident_supported(res_max, hd), "resident kernels at head_dim %d, max_len %d", hd, res_max);
    attn_case_on(hd, causal, n_heads, lens, RES_NSEQ, res_max, PATH_DISPATCH);
    attn_case_on(hd, causal, n_heads, lens, RES_NSEQ, res_max, PATH_TILED);
}

TEST(kattn_causal_matches_cpu)
{
    REQUIRE(gpu_present());
    attn_case(8, 1, 3);
    attn_case(16, 1, 3);
    attn_case(32, 1, 2);
    attn_case(64, 1, 2);
}

TEST(kattn_bidirectional_matches_cpu)
{
    REQUIRE(gpu_present());
    attn_case(8, 0, 3);
    attn_case(16, 0, 3);
    attn_case(32, 0, 2);
    attn_case(64, 0, 2);
}

/* The paper's shapes take the resident kernels; longer sequences, head_dim 8 and a head_dim 64
 * copy past the shared-memory budget take the tiled ones. */
TEST(kattn_resident_choice)
{
    CHECK(k_attention_resident_supported(201, 16) && k_attention_resident_supported(51, 64) &&
              k_attention_resident_supported(256, 32) && k_attention_resident_supported(1, 16),
          "resident kernels where the sequence fits");
    CHECK(!k_attention_resident_supported(257, 16) && !k_attention_resident_supported(201, 64) &&
              !k_attention_resident_supported(200, 8) && !k_attention_resident_supported(0, 16) &&
              !k_attention_resident_supported(100, 24),
          "tiled kernels elsewhere");
}

/* The rotary embedding folded into the resident kernels against the separate passes: forward
 * bit-identical to k_rope_qk (pos = row in sequence) + k_attention_fwd; backward: dv bit-identical
 * and dq, dk within bf16 rounding of k_attention_bwd + inverse k_rope_qk (one rounding fewer). */
static void rope_case(int hd, int causal, int n_heads)
{
    const int max_len = hd == 64 ? 160 : 256;
    int32_t lens[RES_NSEQ], off[RES_NSEQ];
    int64_t rows = 0;
    for (int b = 0; b < RES_NSEQ; b++) {
        lens[b] = res_lens[b] < max_len ? res_lens[b] : max_len;
        off[b] = (int32_t)rows;
        rows += lens[b];
    }
    const int D = n_heads * hd;
    const int64_t n_qkv = rows * 3 * D, n_out = rows * D, n_lse = rows * n_heads;
    int32_t *pos = malloc((size_t)rows * 4);
    for (int b = 0; b < RES_NSEQ; b++)
        for (int t = 0; t < lens[b]; t++)
            pos[off[b] + t] = t;
    gp_rng rng = gp_rng_stream(23, RNG_PURPOSE_TEST, (uint64_t)hd, (uint64_t)causal);
    uint16_t *qkv_h = malloc((size_t)n_qkv * 2), *dout_h = malloc((size_t)n_out * 2);
    for (int64_t i = 0; i < n_qkv; i++)
        qkv_h[i] = float_to_bf16((float)(1.2 * gp_rng_normal(&rng)));
    for (int64_t i = 0; i < n_out; i++)
        dout_h[i] = float_to_bf16((float)gp_rng_normal(&rng));
    const double theta = 10000.0;
    uint16_t *d_qkv = gpu_upload(qkv_h, (size_t)n_qkv * 2), *d_roped = gpu_upload(qkv_h, (size_t)n_qkv * 2);
    uint16_t *d_dout = gpu_upload(dout_h, (size_t)n_out * 2);
    int32_t *d_off = gpu_upload(off, sizeof off), *d_len = gpu_upload(lens, sizeof lens);
    int32_t *d_pos = gpu_upload(pos, (size_t)rows * 4);
    float *d_cs = gpu_alloc((size_t)max_len * hd * 4);
    uint16_t *d_out_a = gpu_alloc((size_t)n_out * 2), *d_out_b = gpu_alloc((size_t)n_out * 2);
    float *d_lse_a = gpu_alloc((size_t)n_lse * 4), *d_lse_b = gpu_alloc((size_t)n_lse * 4);
    uint16_t *d_g_a = gpu_alloc((size_t)n_qkv * 2), *d_g_b = gpu_alloc((size_t)n_qkv * 2);
    REQUIRE(d_qkv && d_roped && d_dout && d_off && d_len && d_pos && d_cs && d_out_a && d_out_b && d_lse_a &&
            d_lse_b && d_g_a && d_g_b);
    KERNEL_REQUIRE(k_rope_qk(d_roped, d_pos, rows, n_heads, hd, theta, 0, 0));
    KERNEL_REQUIRE(k_attention_fwd(d_out_a, d_lse_a, d_roped, d_off, d_len, RES_NSEQ, max_len, n_heads, hd, causal, 0));
    KERNEL_REQUIRE(k_attention_bwd(d_g_a, d_dout, d_roped, d_out_a, d_lse_a, d_off, d_len, RES_NSEQ, max_len, n_heads,
                                   hd, causal, 0));
    KERNEL_REQUIRE(k_rope_qk(d_g_a, d_pos, rows, n_heads, hd, theta, 1, 0));
    KERNEL_REQUIRE(k_rope_table(d_cs, max_len, hd, theta, 0));
    KERNEL_REQUIRE(k_attention_rope_fwd(d_out_b, d_lse_b, d_qkv, d_cs, d_off, d_len, RES_NSEQ, max_len, n_heads, hd,
                                        causal, 0));
    KERNEL_REQUIRE(k_attention_rope_bwd(d_g_b, d_dout, d_qkv, d_cs, d_out_b, d_lse_b, d_off, d_len, RES_NSEQ, max_len,
                                        n_heads, hd, causal, 0));
    uint16_t *oa = malloc((size_t)n_out * 2), *ob = malloc((size_t)n_out * 2);
    float *la = malloc((size_t)n_lse * 4), *lb = malloc((size_t)n_lse * 4);
    uint16_t *ga = malloc((size_t)n_qkv * 2), *gb = malloc((size_t)n_qkv * 2);
    gpu_download(oa, d_out_a, (size_t)n_out * 2);
    gpu_download(ob, d_out_b, (size_t)n_out * 2);
    gpu_download(la, d_lse_a, (size_t)n_lse * 4);
    gpu_download(lb, d_lse_b, (size_t)n_lse * 4);
    gpu_download(ga, d_g_a, (size_t)n_qkv * 2);
    gpu_download(gb, d_g_b, (size_t)n_qkv * 2);
    CHECK(memcmp(oa, ob, (size_t)n_out * 2) == 0 && memcmp(la, lb, (size_t)n_lse * 4) == 0,
          "rope attention forward differs from rope + attention (head_dim %d, causal %d)", hd, causal);
    float *fa = bf16_array_to_float(ga, n_qkv), *fb = bf16_array_to_float(gb, n_qkv);
    int v_same = 1;
    for (int64_t r = 0; r < rows && v_same; r++)
        v_same = memcmp(ga + r * 3 * D + 2 * D, gb + r * 3 * D + 2 * D, (size_t)D * 2) == 0;
    CHECK(v_same, "rope attention dv differs (head_dim %d, causal %d)", hd, causal);
    float *qa = take_columns(fa, rows, D, 0), *qb = take_columns(fb, rows, D, 0);
    float *ka = take_columns(fa, rows, D, D), *kb2 = take_columns(fb, rows, D, D);
    char what[96];
    snprintf(what, sizeof what, "rope attention dq (head_dim %d, causal %d)", hd, causal);
    CHECK_REL(qb, qa, n_out, 1e-2, what);
    snprintf(what, sizeof what, "rope attention dk (head_dim %d, causal %d)", hd, causal);
    CHECK_REL(kb2, ka, n_out, 1e-2, what);
    /* element by element too: each rotated pair within a few bf16 steps of the pair's magnitude
     * (the separate passes round twice), so an error in a few rows cannot hide in the norm */
    int64_t bad = 0, first = -1;
    for (int64_t r = 0; r < rows; r++)
        for (int col = 0; col < 2 * D; col += 2) {
            const int64_t i = r * 3 * D + col;
            const double m = fmax(fmax(fabs(fa[i]), fabs(fa[i + 1])), fmax(fabs(fb[i]), fabs(fb[i + 1])));
            if (fabs(fa[i] - fb[i]) > m / 32 || fabs(fa[i + 1] - fb[i + 1]) > m / 32) {
                if (first < 0)
                    first = i;
                bad++;
            }
        }
    CHECK(bad == 0, "rope attention dq/dk: %lld pairs differ by more than 1/32 of their magnitude (first at element %lld: "
                    "%g vs %g), head_dim %d, causal %d",
          (long long)bad, (long long)first, first >= 0 ? fb[first] : 0.0, first >= 0 ? fa[first] : 0.0, hd, causal);
    CHECK(k_attention_rope_fwd(d_out_b, d_lse_b, d_qkv, d_cs, d_off, d_len, RES_NSEQ, 1024, n_heads, hd, causal, 0) ==
              cudaErrorInvalidValue,
          "rope attention must refuse the tiled shapes");
    free(qa);
    free(qb);
    free(ka);
    free(kb2);
    free(fa);
    free(fb);
    free(oa);
    free(ob);
    free(la);
    free(lb);
    free(ga);
    free(gb);
    free(qkv_h);
    free(dout_h);
    free(pos);
    void *bufs[] = {d_qkv, d_roped, d_dout, d_off, d_len, d_pos, d_cs, d_out_a, d_out_b, d_lse_a, d_lse_b, d_g_a, d_g_b};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        cudaFree(bufs[i]);
}

TEST(kattn_rope_matches_separate_passes)
{
    REQUIRE(gpu_present());
    for (int causal = 0; causal <= 1; causal++) {
        rope_case(16, causal, 3);
        rope_case(32, causal, 2);
        rope_case(64, causal, 2);
    }
}

TEST(kattn_rejects_bad_sizes)
{
    REQUIRE(gpu_present());
    uint16_t *buf = gpu_alloc(4096);
    float *lse = gpu_alloc(4096);
    int32_t *meta = gpu_alloc(64);
    REQUIRE(buf && lse && meta);
    CHECK(k_attention_fwd(buf, lse, buf, meta, meta, 1, 4, 2, 24, 1, 0) == cudaErrorInvalidValue, "head_dim 24");
    CHECK(k_attention_bwd(buf, buf, buf, buf, lse, meta, meta, 1, 4, 2, 128, 0, 0) == cudaErrorInvalidValue,
          "head_dim 128");
    CHECK(k_attention_fwd(buf + 1, lse, buf, meta, meta, 1, 4, 2, 16, 1, 0) == cudaErrorInvalidValue,
          "misaligned out");
    CHECK(k_attention_fwd(buf, lse, buf, meta, meta, 0, 4, 2, 16, 1, 0) == cudaSuccess, "no sequences");
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "device error after rejected launches");
    cudaFree(buf);
    cudaFree(lse);
    cudaFree(meta);
}

/* ---- losses ------------------------------------------------------------------------------- */
/* The checks of one kernel output row set: per-row loss (relative, with the tiny losses of
 * confident rows included), d_pos, and d_logits compared densely. */
static void check_loss_rows(const float *loss, const float *loss_ref, int64_t rows, const char *what)
{
    CHECK_REL(loss, loss_ref, rows, 1e-5, what);
    for (int64_t r = 0; r < rows; r++)
        CHECK(fabs((double)loss[r] - loss_ref[r]) <= 1e-5 * fabs(loss_ref[r]) + 1e-30, "%s: row %lld loss %.9g vs %.9g",
              what, (long long)r, loss[r], loss_ref[r]);
}

/* Sampled softmax: n_seq sequences of rows_per_seq rows; raw dot products in [-1, 1] (the
 * cosines of the model), temperature 0.05. */
static void sampled_case(int n_neg, int logq)
{
    const int n_seq = 4, rps = 5, vocab = 40;
    const int64_t rows = (int64_t)n_seq * rps, ld = n_neg + 3;
    const float inv_temp = 20.0f, grad_scale = 0.37f, scale = grad_scale * inv_temp;
    gp_rng rng = gp_rng_stream(23, RNG_PURPOSE_TEST, (uint64_t)n_neg, (uint64_t)logq);

    float *s_neg = malloc((size_t)(rows * n_neg + 1) * sizeof(float)); /* raw dots [rows][n_neg] */
    float *s_pos = malloc((size_t)rows * sizeof(float));
    float *logits = malloc((size_t)(rows * ld) * sizeof(float)), *pos_logit = malloc((size_t)rows * sizeof(float));
    int32_t *label = malloc((size_t)rows * sizeof(int32_t));
    int32_t *neg_ids = malloc((size_t)(n_seq * n_neg + 1) * sizeof(int32_t));
    for (int64_t i = 0; i < (int64_t)n_seq * n_neg; i++)
        neg_ids[i] = (int32_t)gp_rng_below(&rng, vocab);
    for (int j = 0; j < n_neg; j++)
        neg_ids[2 * n_neg + j] = 7; /* sequence 2: every negative is item 7 */
    for (int64_t r = 0; r < rows; r++) {
        label[r] = (int32_t)gp_rng_below(&rng, vocab);
        s_pos[r] = (float)(2 * gp_rng_uniform(&rng) - 1);
        for (int j = 0; j < n_neg; j++)
            s_neg[r * n_neg + j] = (float)(2 * gp_rng_uniform(&rng) - 1);
    }
    label[0] = -100;          /* unlabelled */
    label[3] = neg_ids[0];    /* at least one accidental hit */
    label[2 * rps + 1] = 7;   /* every negative is the label */
    label[2 * rps + 2] = 8;   /* same sequence, nothing excluded */
    s_pos[4] = 1.0f;          /* a confident row: loss around 1e-9 or less */
    for (int j = 0; j < n_neg; j++)
        s_neg[4 * n_neg + j] = (float)(-0.4 - 0.5 * gp_rng_uniform(&rng));
    for (int64_t r = 0; r < rows; r++) {
        pos_logit[r] = s_pos[r] * inv_temp;
        for (int64_t j = 0; j < ld; j++)
            logits[r * ld + j] = j < n_neg ? s_neg[r * n_neg + j] * inv_temp : NAN;
    }

    /* direct reference in double from the same fp32 logits; the gradients rounded to bf16 as the
     * kernel's are (with logq the negatives' gradients can be fp32 denormals, which bf16 cannot
     * hold: compared unrounded, such a row reads as 100% error on values of 1e-43) */
    float *loss_ref = malloc((size_t)rows * 4), *dpos_ref = malloc((size_t)rows * 4);
    float *dlog_ref = malloc((size_t)(rows * n_neg + 1) * 4);
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *ids = neg_ids + (r / rps) * n_neg;
        float *dr = dlog_ref + r * n_neg;
        loss_ref[r] = dpos_ref[r] = 0;
        for (int j = 0; j < n_neg; j++)
            dr[j] = 0;
        if (label[r] == -100)
            continue;
        int kept = 0;
        for (int j = 0; j < n_neg; j++)
            kept += ids[j] != label[r];
        const double shift = logq && kept > 0 ? log((double)kept) * inv_temp : 0.0, z0 = pos_logit[r];
        double rest = 0;
        for (int j = 0; j < n_neg; j++)
            if (ids[j] != label[r])
                rest += exp((double)logits[r * ld + j] - shift - z0);
        loss_ref[r] = (float)log1p(rest);
        dpos_ref[r] = (float)(scale * (-rest / (1 + rest)));
        for (int j = 0; j < n_neg; j++)
            if (ids[j] != label[r])
                dr[j] = bf16_round((float)(scale * exp((double)logits[r * ld + j] - shift - z0) / (1 + rest)));
    }

    float *g_logits = gpu_upload(logits, (size_t)(rows * ld) * 4), *g_pos = gpu_upload(pos_logit, (size_t)rows * 4);
    int32_t *g_label = gpu_upload(label, (size_t)rows * 4), *g_ids = gpu_upload(neg_ids, (size_t)(n_seq * n_neg) * 4);
    float *g_loss = gpu_alloc((size_t)rows * 4), *g_dpos = gpu_alloc((size_t)rows * 4);
    uint16_t *g_dlog = gpu_alloc((size_t)(rows * ld) * 2), *g_dlog2 = gpu_alloc((size_t)(rows * ld) * 2);
    REQUIRE(g_logits && g_pos && g_label && g_ids && g_loss && g_dpos && g_dlog && g_dlog2);
    KERNEL_REQUIRE(k_sampled_softmax_rows(g_loss, g_dlog, g_dpos, g_logits, g_pos, g_label, g_ids, rows, rps, n_neg, ld,
                                          inv_temp, logq, scale, 0));
    float *loss = malloc((size_t)rows * 4), *dpos = malloc((size_t)rows * 4);
    uint16_t *dlog_h = malloc((size_t)(rows * ld) * 2), *dlog_h2 = malloc((size_t)(rows * ld) * 2);
    gpu_download(loss, g_loss, (size_t)rows * 4);
    gpu_download(dpos, g_dpos, (size_t)rows * 4);
    gpu_download(dlog_h, g_dlog, (size_t)(rows * ld) * 2);
    float *dlog = malloc((size_t)(rows * n_neg + 1) * 4);
    int exact = 1, pad_kept = 1;
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *ids = neg_ids + (r / rps) * n_neg;
        for (int64_t j = 0; j < ld; j++) {
            uint16_t hb = dlog_h[r * ld + j];
            if (j >= n_neg) {
                pad_kept &= hb == 0xFFFF;
                continue;
            }
            dlog[r * n_neg + j] = bf16_to_float(hb);
            if (label[r] == -100 || ids[j] == label[r])
                exact &= hb == 0; /* +0: excluded entries and unlabelled rows */
        }
    }
    char what[128];
    snprintf(what, sizeof what, "sampled softmax loss (n_neg %d, logq %d)", n_neg, logq);
    check_loss_rows(loss, loss_ref, rows, what);
    snprintf(what, sizeof what, "sampled softmax d_pos (n_neg %d, logq %d)", n_neg, logq);
    CHECK_REL(dpos, dpos_ref, rows, 1e-5, what);
    snprintf(what, sizeof what, "sampled softmax d_logits (n_neg %d, logq %d)", n_neg, logq);
    CHECK_REL(dlog, dlog_ref, rows * n_neg, 1e-2, what);
    CHECK(exact, "excluded entries or unlabelled rows not exactly zero (n_neg %d, logq %d)", n_neg, logq);
    CHECK(pad_kept, "columns n_neg .. ld-1 written (n_neg %d)", n_neg);
    CHECK(loss[0] == 0 && dpos[0] == 0, "unlabelled row: loss %g d_pos %g", loss[0], dpos[0]);
    CHECK(loss[2 * rps + 1] == 0 && dpos[2 * rps + 1] == 0, "row with every negative excluded: loss %g d_pos %g",
          loss[2 * rps + 1], dpos[2 * rps + 1]);

    /* The CPU op, made to see these logits through one-hot embeddings (dim = n_neg + 1:
     * neg_j = e_j, pos = e_{n_neg}, h = the raw dot products), so d_h is the gradient with
     * respect to the dot products, slot n_neg the positive's. */
    if (n_neg <= 256) {
        const int dim = n_neg + 1;
        float *onehot_neg = calloc((size_t)n_neg * dim, sizeof(float)), *pos_e = calloc((size_t)dim, sizeof(float));
        float *h = malloc((size_t)dim * 4), *d_h = malloc((size_t)dim * 4);
        float *cl = malloc((size_t)rows * 4), *gl = malloc((size_t)rows * 4), *cd = malloc((size_t)rows * 4);
        float *gd = malloc((size_t)rows * 4), *cg = malloc((size_t)(rows * n_neg) * 4);
        float *gg = malloc((size_t)(rows * n_neg) * 4);
        for (int j = 0; j < n_neg; j++)
            onehot_neg[(int64_t)j * dim + j] = 1;
        pos_e[n_neg] = 1;
        int64_t nl = 0;
        const int32_t seq0 = 0;
        for (int64_t r = 0; r < rows; r++) {
            if (label[r] == -100)
                continue;
            memcpy(h, s_neg + r * n_neg, (size_t)n_neg * 4);
            h[n_neg] = s_pos[r];
            memset(d_h, 0, (size_t)dim * 4);
            double ls = 0;
            cpu_sampled_softmax(&ls, d_h, NULL, NULL, h, pos_e, onehot_neg, &label[r], neg_ids + (r / rps) * n_neg,
                                &seq0, 1, 1, n_neg, dim, inv_temp, logq, grad_scale);
            cl[nl] = (float)ls;
            gl[nl] = loss[r];
            cd[nl] = d_h[n_neg];
            gd[nl] = dpos[r];
            for (int j = 0; j < n_neg; j++)
                cg[nl * n_neg + j] = bf16_round(d_h[j]);
            memcpy(gg + nl * n_neg, dlog + r * n_neg, (size_t)n_neg * 4);
            nl++;
        }
        snprintf(what, sizeof what, "sampled softmax loss vs cpu op (n_neg %d, logq %d)", n_neg, logq);
        CHECK_REL(gl, cl, nl, 1e-5, what);
        snprintf(what, sizeof what, "sampled softmax d_pos vs cpu op (n_neg %d, logq %d)", n_neg, logq);
        CHECK_REL(gd, cd, nl, 1e-5, what);
        snprintf(what, sizeof what, "sampled softmax d_logits vs cpu op (n_neg %d, logq %d)", n_neg, logq);
        CHECK_REL(gg, cg, nl * n_neg, 1e-2, what);
        free(onehot_neg);
        free(pos_e);
        free(h);
        free(d_h);
        free(cl);
        free(gl);
        free(cd);
        free(gd);
        free(cg);
        free(gg);
    }

    KERNEL_REQUIRE(k_sampled_softmax_rows(g_loss, g_dlog2, g_dpos, g_logits, g_pos, g_label, g_ids, rows, rps, n_neg,
                                          ld, inv_temp, logq, scale, 0));
    float *loss2 = malloc((size_t)rows * 4), *dpos2 = malloc((size_t)rows * 4);
    gpu_download(loss2, g_loss, (size_t)rows * 4);
    gpu_download(dpos2, g_dpos, (size_t)rows * 4);
    gpu_download(dlog_h2, g_dlog2, (size_t)(rows * ld) * 2);
    CHECK(memcmp(loss, loss2, (size_t)rows * 4) == 0 && memcmp(dpos, dpos2, (size_t)rows * 4) == 0 &&
              memcmp(dlog_h, dlog_h2, (size_t)(rows * ld) * 2) == 0,
          "sampled softmax not bit-identical on a second run (n_neg %d)", n_neg);

    cudaFree(g_logits);
    cudaFree(g_pos);
    cudaFree(g_label);
    cudaFree(g_ids);
    cudaFree(g_loss);
    cudaFree(g_dpos);
    cudaFree(g_dlog);
    cudaFree(g_dlog2);
    free(s_neg);
    free(s_pos);
    free(logits);
    free(pos_logit);
    free(label);
    free(neg_ids);
    free(loss_ref);
    free(dpos_ref);
    free(dlog_ref);
    free(loss);
    free(dpos);
    free(dlog_h);
    free(dlog_h2);
    free(dlog);
    free(loss2);
    free(dpos2);
}

TEST(kloss_sampled_softmax_matches_reference)
{
    REQUIRE(gpu_present());
    /* every launch shape: a warp holding 8 (1, 7, 256), 16 (300) or 32 (700) entries per lane,
     * 2 (1025), 4 (4096) and 8 warps (5000) at 32 per thread, and the streaming CTA (9000) */
    static const int n_negs[] = {1, 7, 256, 300, 700, 1025, 4096, 5000, 9000};
    for (int i = 0; i < (int)(sizeof n_negs / sizeof n_negs[0]); i++)
        for (int logq = 0; logq <= 1; logq++)
            sampled_case(n_negs[i], logq);
}

static void xent_case(int n_classes)
{
    const int64_t rows = 37, ld = n_classes + 5;
    const float inv_temp = 20.0f, grad_scale = 0.21f, scale = grad_scale * inv_temp;
    gp_rng rng = gp_rng_stream(29, RNG_PURPOSE_TEST, (uint64_t)n_classes, 0);
    float *s = malloc((size_t)(rows * n_classes) * 4), *logits = malloc((size_t)(rows * ld) * 4);
    int32_t *label = malloc((size_t)rows * 4);
    for (int64_t r = 0; r < rows; r++) {
        label[r] = (int32_t)gp_rng_below(&rng, (uint32_t)n_classes);
        for (int c = 0; c < n_classes; c++)
            s[r * n_classes + c] = (float)(2 * gp_rng_uniform(&rng) - 1);
    }
    label[0] = label[5] = -100;
    for (int c = 0; c < n_classes; c++) /* a confident row */
        s[7 * n_classes + c] = c == label[7] ? 1.0f : (float)(-0.4 - 0.5 * gp_rng_uniform(&rng));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < ld; c++)
            logits[r * ld + c] = c < n_classes ? s[r * n_classes + c] * inv_temp : NAN;

    float *loss_ref = malloc((size_t)rows * 4), *dlog_ref = malloc((size_t)(rows * n_classes) * 4);
    for (int64_t r = 0; r < rows; r++) {
        const int y = label[r];
        float *dr = dlog_ref + r * n_classes;
        loss_ref[r] = 0;
        for (int c = 0; c < n_classes; c++)
            dr[c] = 0;
        if (y < 0)
            continue;
        const double zy = logits[r * ld + y];
        double rest = 0;
        for (int c = 0; c < n_classes; c++)
            if (c != y)
                rest += exp((double)logits[r * ld + c] - zy);
        loss_ref[r] = (float)log1p(rest);
        for (int c = 0; c < n_classes; c++)
            dr[c] = bf16_round(
                (float)(c == y ? scale * (-rest / (1 + rest)) : scale * exp((double)logits[r * ld + c] - zy) / (1 + rest)));
    }

    float *g_logits = gpu_upload(logits, (size_t)(rows * ld) * 4);
    int32_t *g_label = gpu_upload(label, (size_t)rows * 4);
    float *g_loss = gpu_alloc((size_t)rows * 4);
    uint16_t *g_dlog = gpu_alloc((size_t)(rows * ld) * 2), *g_dlog2 = gpu_alloc((size_t)(rows * ld) * 2);
    REQUIRE(g_logits && g_label && g_loss && g_dlog && g_dlog2);
    KERNEL_REQUIRE(k_softmax_xent_rows(g_loss, g_dlog, g_logits, g_label, rows, n_classes, ld, scale, 0));
    float *loss = malloc((size_t)rows * 4), *dlog = malloc((size_t)(rows * n_classes) * 4);
    uint16_t *dlog_h = malloc((size_t)(rows * ld) * 2), *dlog_h2 = malloc((size_t)(rows * ld) * 2);
    gpu_download(loss, g_loss, (size_t)rows * 4);
    gpu_download(dlog_h, g_dlog, (size_t)(rows * ld) * 2);
    int exact = 1, pad_kept = 1;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < ld; c++) {
            uint16_t hb = dlog_h[r * ld + c];
            if (c >= n_classes) {
                pad_kept &= hb == 0xFFFF;
                continue;
            }
            dlog[r * n_classes + c] = bf16_to_float(hb);
            if (label[r] < 0)
                exact &= hb == 0;
        }
    char what[128];
    snprintf(what, sizeof what, "softmax xent loss (n_classes %d)", n_classes);
    check_loss_rows(loss, loss_ref, rows, what);
    snprintf(what, sizeof what, "softmax xent d_logits (n_classes %d)", n_classes);
    CHECK_REL(dlog, dlog_ref, rows * n_classes, 1e-2, what);
    CHECK(exact, "unlabelled rows not exactly zero (n_classes %d)", n_classes);
    CHECK(pad_kept, "columns n_classes .. ld-1 written (n_classes %d)", n_classes);

    /* the CPU op with an identity class embedding (dim = n_classes, h = raw scores): d_h is the
     * gradient with respect to the scores */
    if (n_classes <= 256) {
        const int dim = n_classes;
        float *eye = calloc((size_t)dim * dim, sizeof(float)), *d_h = malloc((size_t)dim * 4);
        float *cl = malloc((size_t)rows * 4), *gl = malloc((size_t)rows * 4);
        float *cg = malloc((size_t)(rows * dim) * 4), *gg = malloc((size_t)(rows * dim) * 4);
        for (int c = 0; c < dim; c++)
            eye[(int64_t)c * dim + c] = 1;
        int64_t nl = 0;
        for (int64_t r = 0; r < rows; r++) {
            if (label[r] < 0)
                continue;
            memset(d_h, 0, (size_t)dim * 4);
            double ls = 0;
            cpu_softmax_xent(&ls, d_h, NULL, s + r * n_classes, eye, &label[r], 1, n_classes, dim, inv_temp,
                             grad_scale);
            cl[nl] = (float)ls;
            gl[nl] = loss[r];
            for (int c = 0; c < dim; c++)
                cg[nl * dim + c] = bf16_round(d_h[c]);
            memcpy(gg + nl * dim, dlog + r * n_classes, (size_t)dim * 4);
            nl++;
        }
        snprintf(what, sizeof what, "softmax xent loss vs cpu op (n_classes %d)", n_classes);
        CHECK_REL(gl, cl, nl, 1e-5, what);
        snprintf(what, sizeof what, "softmax xent d_logits vs cpu op (n_classes %d)", n_classes);
        CHECK_REL(gg, cg, nl * dim, 1e-2, what);
        free(eye);
        free(d_h);
        free(cl);
        free(gl);
        free(cg);
        free(gg);
    }

    KERNEL_REQUIRE(k_softmax_xent_rows(g_loss, g_dlog2, g_logits, g_label, rows, n_classes, ld, scale, 0));
    float *loss2 = malloc((size_t)rows * 4);
    gpu_download(loss2, g_loss, (size_t)rows * 4);
    gpu_download(dlog_h2, g_dlog2, (size_t)(rows * ld) * 2);
    CHECK(memcmp(loss, loss2, (size_t)rows * 4) == 0 && memcmp(dlog_h, dlog_h2, (size_t)(rows * ld) * 2) == 0,
          "softmax xent not bit-identical on a second run (n_classes %d)", n_classes);

    cudaFree(g_logits);
    cudaFree(g_label);
    cudaFree(g_loss);
    cudaFree(g_dlog);
    cudaFree(g_dlog2);
    free(s);
    free(logits);
    free(label);
    free(loss_ref);
    free(dlog_ref);
    free(loss);
    free(dlog);
    free(dlog_h);
    free(dlog_h2);
    free(loss2);
}

TEST(kloss_softmax_xent_matches_reference)
{
    REQUIRE(gpu_present());
    static const int n_classes[] = {1, 5, 100, 300, 700, 1500, 3000, 5000, 9000};
    for (int i = 0; i < (int)(sizeof n_classes / sizeof n_classes[0]); i++)
        xent_case(n_classes[i]);
}
