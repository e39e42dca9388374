/* The generic (CUDA-core) attention against the CPU reference, for head sizes the tensor-core
 * kernels do not take, and against the tensor-core kernels where both apply. */
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "gpu/gpu_check.h"
#include "kernels.h"
#include "test.h"

static void generic_case(int hd, int n_heads, int causal, uint64_t seed)
{
    const int lens[] = {1, 2, 7, 33, 200};
    const int n_seq = 5;
    int32_t off[5], len[5];
    int64_t off64[5];
    int T = 0;
    for (int i = 0; i < n_seq; i++) {
        off[i] = T;
        off64[i] = T;
        len[i] = lens[i];
        T += lens[i];
    }
    const int D = n_heads * hd;
    gp_rng r = gp_rng_stream(seed, RNG_PURPOSE_TEST, (uint64_t)hd, (uint64_t)causal);
    float *qkv = malloc((size_t)T * 3 * D * 4), *dout = malloc((size_t)T * D * 4);
    fill_normal(qkv, (int64_t)T * 3 * D, 1.0f, &r);
    fill_normal(dout, (int64_t)T * D, 1.0f, &r);
    uint16_t *qkv16 = malloc((size_t)T * 3 * D * 2), *dout16 = malloc((size_t)T * D * 2);
    for (int64_t i = 0; i < (int64_t)T * 3 * D; i++) {
        qkv16[i] = float_to_bf16(qkv[i]);
        qkv[i] = bf16_to_float(qkv16[i]);
    }
    for (int64_t i = 0; i < (int64_t)T * D; i++) {
        dout16[i] = float_to_bf16(dout[i]);
        dout[i] = bf16_to_float(dout16[i]);
    }
    /* CPU reference on the same (bf16-representable) inputs, split into q, k, v. */
    float *q = malloc((size_t)T * D * 4), *k = malloc((size_t)T * D * 4), *v = malloc((size_t)T * D * 4);
    for (int t = 0; t < T; t++) {
        memcpy(q + (size_t)t * D, qkv + (size_t)t * 3 * D, (size_t)D * 4);
        memcpy(k + (size_t)t * D, qkv + (size_t)t * 3 * D + D, (size_t)D * 4);
        memcpy(v + (size_t)t * D, qkv + (size_t)t * 3 * D + 2 * D, (size_t)D * 4);
    }
    float *out = malloc((size_t)T * D * 4), *lse = malloc((size_t)T * n_heads * 4);
    float *dq = malloc((size_t)T * D * 4), *dk = malloc((size_t)T * D * 4), *dv = malloc((size_t)T * D * 4);
    cpu_attention_fwd(out, lse, q, k, v, off64, len, n_seq, n_heads, hd, causal);
    cpu_attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, off64, len, n_seq, n_heads, hd, causal);

    void *d_qkv = gpu_upload(qkv16, (size_t)T * 3 * D * 2), *d_dout = gpu_upload(dout16, (size_t)T * D * 2);
    void *d_out = gpu_alloc((size_t)T * D * 2), *d_lse = gpu_alloc((size_t)T * n_heads * 4);
    void *d_dqkv = gpu_alloc((size_t)T * 3 * D * 2);
    int32_t *d_off = gpu_upload(off, sizeof off), *d_len = gpu_upload(len, sizeof len);
    REQUIRE(d_qkv && d_dout && d_out && d_lse && d_dqkv && d_off && d_len);
    KERNEL_REQUIRE(k_attention_generic_fwd(d_out, d_lse, d_qkv, d_off, d_len, n_seq, n_heads, hd, causal, 0));
    KERNEL_REQUIRE(k_attention_generic_bwd(d_dqkv, d_dout, d_qkv, d_out, d_lse, d_off, d_len, n_seq, n_heads, hd, causal, 0));
    uint16_t *g_out16 = malloc((size_t)T * D * 2), *g_dqkv16 = malloc((size_t)T * 3 * D * 2);
    float *g_lse = malloc((size_t)T * n_heads * 4);
    gpu_download(g_out16, d_out, (size_t)T * D * 2);
    gpu_download(g_dqkv16, d_dqkv, (size_t)T * 3 * D * 2);
    gpu_download(g_lse, d_lse, (size_t)T * n_heads * 4);
    float *g_out = malloc((size_t)T * D * 4), *g_dq = malloc((size_t)T * D * 4), *g_dk = malloc((size_t)T * D * 4),
          *g_dv = malloc((size_t)T * D * 4);
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) {
            g_out[(size_t)t * D + d] = bf16_to_float(g_out16[(size_t)t * D + d]);
            g_dq[(size_t)t * D + d] = bf16_to_float(g_dqkv16[(size_t)t * 3 * D + d]);
            g_dk[(size_t)t * D + d] = bf16_to_float(g_dqkv16[(size_t)t * 3 * D + D + d]);
            g_dv[(size_t)t * D + d] = bf16_to_float(g_dqkv16[(size_t)t * 3 * D + 2 * D + d]);
        }
    char what[64];
    snprintf(what, sizeof what, "hd %d %s out", hd, causal ? "causal" : "bidirectional");
    CHECK_REL(g_out, out, (int64_t)T * D, 1e-2, what);
    CHECK_REL(g_lse, lse, (int64_t)T * n_heads, 1e-5, "lse");
    CHECK_REL(g_dq, dq, (int64_t)T * D, 1e-2, "dq");
    CHECK_REL(g_dk, dk, (int64_t)T * D, 1e-2, "dk");
    CHECK_REL(g_dv, dv, (int64_t)T * D, 1e-2, "dv");
    /* Where both kernels apply, they agree. */
    if (hd == 16) {
        void *d_out2 = gpu_alloc((size_t)T * D * 2), *d_lse2 = gpu_alloc((size_t)T * n_heads * 4);
        KERNEL_REQUIRE(k_attention_fwd(d_out2, d_lse2, d_qkv, d_off, d_len, n_seq, 200, n_heads, hd, causal, 0));
        float *lse2 = malloc((size_t)T * n_heads * 4);
        gpu_download(lse2, d_lse2, (size_t)T * n_heads * 4);
        CHECK_REL(lse2, g_lse, (int64_t)T * n_heads, 1e-5, "tensor-core vs generic lse");
        free(lse2);
        cudaFree(d_out2);
        cudaFree(d_lse2);
    }
    free(qkv);
    free(dout);
    free(qkv16);
    free(dout16);
    free(q);
    free(k);
    free(v);
    free(out);
    free(lse);
    free(dq);
    free(dk);
    free(dv);
    free(g_out16);
    free(g_dqkv16);
    free(g_lse);
    free(g_out);
    free(g_dq);
    free(g_dk);
    free(g_dv);
    cudaFree(d_qkv);
    cudaFree(d_dout);
    cudaFree(d_out);
    cudaFree(d_lse);
    cudaFree(d_dqkv);
    cudaFree(d_off);
    cudaFree(d_len);
}

TEST(kattn_generic_matches_cpu)
{
    REQUIRE(gpu_present(), "no GPU");
    const int hds[] = {2, 4, 12, 16, 24};
    for (int i = 0; i < 5; i++)
        for (int causal = 0; causal < 2; causal++)
            generic_case(hds[i], 3, causal, 40 + (uint64_t)i);
}
