/* GPU tests of the fused sampled softmax (kernels/sampled_softmax_fused.cu) against a direct
 * double-precision reference on fresh random inputs: loss, d_pos, d_q (accumulated) and d_neg,
 * with every tail (rows not a multiple of 16, negatives not a multiple of 64), excluded
 * negatives, unlabelled rows, a row whose every negative is its label, both loss branches and
 * logq on and off. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_check.h"
#include "kernels.h"
#include "rng.h"

typedef struct {
    int E, S, N, n_seq, logq;
} fused_case;

/* Unit-norm rows rounded to bf16 (the model's L2-normalised inputs), as bf16 and as floats. */
static void unit_rows(uint16_t *h, float *f, int64_t rows, int E, gp_rng *rng)
{
    float *v = malloc((size_t)E * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        double n2 = 0;
        for (int e = 0; e < E; e++) {
            v[e] = (float)gp_rng_normal(rng);
            n2 += (double)v[e] * v[e];
        }
        for (int e = 0; e < E; e++) {
            h[r * E + e] = float_to_bf16((float)(v[e] / sqrt(n2)));
            f[r * E + e] = bf16_to_float(h[r * E + e]);
        }
    }
    free(v);
}

static void run_fused_case(const fused_case *fc)
{
    const int E = fc->E, S = fc->S, N = fc->N, logq = fc->logq;
    const int64_t n_seq = fc->n_seq, rows = n_seq * S, nrows = n_seq * N;
    const float inv_temp = 20.0f, scale = 0.37f * inv_temp;
    const int vocab = 50;
    gp_rng rng = gp_rng_stream(41, RNG_PURPOSE_TEST, (uint64_t)(E * 1000 + S), (uint64_t)(N * 2 + logq));

    uint16_t *q_h = malloc((size_t)(rows * E) * 2), *k_h = malloc((size_t)(nrows * E) * 2);
    float *q = malloc((size_t)(rows * E) * 4), *k = malloc((size_t)(nrows * E) * 4);
    unit_rows(q_h, q, rows, E, &rng);
    unit_rows(k_h, k, nrows, E, &rng);
    float *pos = malloc((size_t)rows * 4), *dq0 = malloc((size_t)(rows * E) * 4);
    int32_t *label = malloc((size_t)rows * 4), *ids = malloc((size_t)nrows * 4);
    for (int64_t i = 0; i < nrows; i++)
        ids[i] = (int32_t)gp_rng_below(&rng, vocab);
    for (int64_t r = 0; r < rows; r++) {
        label[r] = (int32_t)gp_rng_below(&rng, vocab);
        pos[r] = (float)(inv_temp * (2 * gp_rng_uniform(&rng) - 1));
    }
    fill_normal(dq0, rows * E, 0.01f, &rng);
    label[0] = -100;                  /* unlabelled */
    if (S > 1) {
        label[1] = ids[0];            /* an accidental hit */
        pos[1] = inv_temp;            /* confident: loss far below 1 */
    }
    if (rows > 2)
        pos[2] = -0.9f * inv_temp;    /* max_j z_j - z0 above 20: the other branch */
    if (n_seq > 1) {
        /* sequence 1: every negative is item 7; its row 0 has label 7 (nothing kept) */
        for (int j = 0; j < N; j++)
            ids[N + j] = 7;
        label[S] = 7;
    }

    /* reference: g_rj rounded to bf16 as the kernel's, the products in double */
    float *loss_ref = calloc((size_t)rows, 4), *dpos_ref = calloc((size_t)rows, 4);
    float *dq_ref = malloc((size_t)(rows * E) * 4), *dn_ref = malloc((size_t)(nrows * E) * 4);
    double *dn_acc = calloc((size_t)(nrows * E), sizeof(double)), *z = malloc((size_t)N * sizeof(double));
    for (int64_t r = 0; r < rows; r++) {
        const int64_t b = r / S;
        const int32_t *idr = ids + b * N;
        double dqa[64] = {0};
        if (label[r] != -100) {
            int kept = 0;
            for (int j = 0; j < N; j++) {
                double d = 0;
                for (int e = 0; e < E; e++)
                    d += (double)q[r * E + e] * k[(b * N + j) * E + e];
                z[j] = (float)d * inv_temp;
                kept += idr[j] != label[r];
            }
            const double shift = logq && kept > 0 ? log((double)kept) * inv_temp : 0.0, z0 = pos[r];
            double rest = 0;
            for (int j = 0; j < N; j++)
                if (idr[j] != label[r])
                    rest += exp(z[j] - shift - z0);
            loss_ref[r] = (float)log1p(rest);
            dpos_ref[r] = (float)(scale * (-rest / (1 + rest)));
            for (int j = 0; j < N; j++) {
                if (idr[j] == label[r])
                    continue;
                const double gj = bf16_round((float)(scale * exp(z[j] - shift - z0) / (1 + rest)));
                for (int e = 0; e < E; e++) {
                    dqa[e] += gj * k[(b * N + j) * E + e];
                    dn_acc[(b * N + j) * E + e] += gj * q[r * E + e];
                }
            }
        }
        for (int e = 0; e < E; e++)
            dq_ref[r * E + e] = (float)(dq0[r * E + e] + dqa[e]);
    }
    for (int64_t i = 0; i < nrows * E; i++)
        dn_ref[i] = (float)dn_acc[i];

    uint16_t *g_q = gpu_upload(q_h, (size_t)(rows * E) * 2), *g_k = gpu_upload(k_h, (size_t)(nrows * E) * 2);
    float *g_pos = gpu_upload(pos, (size_t)rows * 4), *g_dq = gpu_upload(dq0, (size_t)(rows * E) * 4);
    int32_t *g_label = gpu_upload(label, (size_t)rows * 4), *g_ids = gpu_upload(ids, (size_t)nrows * 4);
    float *g_loss = gpu_alloc((size_t)rows * 4), *g_dpos = gpu_alloc((size_t)rows * 4);
    uint16_t *g_dn = gpu_alloc((size_t)(nrows * E) * 2);
    REQUIRE(g_q && g_k && g_pos && g_dq && g_label && g_ids && g_loss && g_dpos && g_dn);
    KERNEL_REQUIRE(k_sampled_softmax_fused(g_loss, g_dpos, g_dq, g_dn, g_q, g_k, g_pos, g_label, g_ids, n_seq, S, N, E,
                                           inv_temp, logq, scale, 0));
    float *loss = malloc((size_t)rows * 4), *dpos = malloc((size_t)rows * 4);
    float *dq = malloc((size_t)(rows * E) * 4), *dn = download_bf16(g_dn, nrows * E);
    gpu_download(loss, g_loss, (size_t)rows * 4);
    gpu_download(dpos, g_dpos, (size_t)rows * 4);
    gpu_download(dq, g_dq, (size_t)(rows * E) * 4);

    char what[160];
    snprintf(what, sizeof what, "E %d, rows %d, negatives %d, logq %d", E, S, N, logq);
    int bad_loss = 0;
    for (int64_t r = 0; r < rows; r++)
        if (!(fabs((double)loss[r] - loss_ref[r]) <= 5e-5 * fabs(loss_ref[r]) + 1e-30) && bad_loss++ < 3)
            test_failure(__FILE__, __LINE__, "%s: row %lld loss %.9g vs %.9g", what, (long long)r, loss[r],
                         loss_ref[r]);
    char w2[200];
    snprintf(w2, sizeof w2, "fused d_pos (%s)", what);
    CHECK_REL(dpos, dpos_ref, rows, 5e-5, w2);
    /* against the products of the bf16-rounded reference gradients: what differs is an entry
     * rounding the other way where the logits differ in their last fp32 bit */
    snprintf(w2, sizeof w2, "fused d_q (%s)", what);
    CHECK_REL(dq, dq_ref, rows * E, 2e-3, w2);
    snprintf(w2, sizeof w2, "fused d_neg (%s)", what);
    round_bf16(dn_ref, nrows * E); /* d_neg is written in bf16 */
    CHECK_REL(dn, dn_ref, nrows * E, 3e-3, w2);
    CHECK(loss[0] == 0 && dpos[0] == 0, "%s: unlabelled row: loss %g d_pos %g", what, loss[0], dpos[0]);
    if (n_seq > 1)
        CHECK(loss[S] == 0 && dpos[S] == 0, "%s: row with every negative excluded: loss %g d_pos %g", what, loss[S],
              dpos[S]);
    int dq_row0 = 1;
    for (int e = 0; e < E; e++)
        dq_row0 &= dq[e] == dq0[e]; /* unlabelled: nothing added, bit for bit */
    CHECK(dq_row0, "%s: d_q of an unlabelled row changed", what);

    /* a second run: the same bits; the forward alone: the same loss and d_pos */
    float *g_dq2 = gpu_upload(dq0, (size_t)(rows * E) * 4);
    uint16_t *g_dn2 = gpu_alloc((size_t)(nrows * E) * 2);
    REQUIRE(g_dq2 && g_dn2);
    KERNEL_REQUIRE(k_sampled_softmax_fused(g_loss, g_dpos, g_dq2, g_dn2, g_q, g_k, g_pos, g_label, g_ids, n_seq, S, N,
                                           E, inv_temp, logq, scale, 0));
    float *dq2 = malloc((size_t)(rows * E) * 4), *dn2 = download_bf16(g_dn2, nrows * E);
    gpu_download(dq2, g_dq2, (size_t)(rows * E) * 4);
    CHECK(memcmp(dq, dq2, (size_t)(rows * E) * 4) == 0 && memcmp(dn, dn2, (size_t)(nrows * E) * 4) == 0,
          "%s: not bit-identical on a second run", what);
    CUDA_REQUIRE(cudaMemset(g_loss, 0xFF, (size_t)rows * 4));
    CUDA_REQUIRE(cudaMemset(g_dpos, 0xFF, (size_t)rows * 4));
    KERNEL_REQUIRE(k_sampled_softmax_fused(g_loss, g_dpos, NULL, NULL, g_q, g_k, g_pos, g_label, g_ids, n_seq, S, N, E,
                                           inv_temp, logq, scale, 0));
    float *loss2 = malloc((size_t)rows * 4), *dpos2 = malloc((size_t)rows * 4);
    gpu_download(loss2, g_loss, (size_t)rows * 4);
    gpu_download(dpos2, g_dpos, (size_t)rows * 4);
    CHECK(memcmp(loss, loss2, (size_t)rows * 4) == 0 && memcmp(dpos, dpos2, (size_t)rows * 4) == 0,
          "%s: the forward alone differs from the forward of the backward call", what);

    cudaFree(g_q);
    cudaFree(g_k);
    cudaFree(g_pos);
    cudaFree(g_dq);
    cudaFree(g_label);
    cudaFree(g_ids);
    cudaFree(g_loss);
    cudaFree(g_dpos);
    cudaFree(g_dn);
    cudaFree(g_dq2);
    cudaFree(g_dn2);
    free(q_h);
    free(k_h);
    free(q);
    free(k);
    free(pos);
    free(dq0);
    free(label);
    free(ids);
    free(loss_ref);
    free(dpos_ref);
    free(dq_ref);
    free(dn_ref);
    free(dn_acc);
    free(z);
    free(loss);
    free(dpos);
    free(dq);
    free(dn);
    free(dq2);
    free(dn2);
    free(loss2);
    free(dpos2);
}

TEST(kloss_sampled_softmax_fused_matches_reference)
{
    REQUIRE(gpu_present());
    /* the paper's shape (200 rows, 4096 negatives) and every tail: one row, 17 and 51 rows,
     * the 256-row maximum; 1, 64, 65 and 100 negatives */
    static const fused_case cases[] = {
        {64, 200, 4096, 2, 1}, {64, 200, 4096, 2, 0}, {64, 17, 100, 4, 0}, {64, 256, 65, 2, 1},
        {32, 51, 64, 3, 1},    {32, 1, 1, 3, 0},      {32, 200, 300, 2, 0}, {64, 33, 1, 2, 1},
    };
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++)
        run_fused_case(&cases[i]);
}

TEST(kloss_sampled_softmax_fused_rejects_unsupported_shapes)
{
    REQUIRE(gpu_present());
    CHECK(k_sampled_softmax_fused_supported(200, 64) && k_sampled_softmax_fused_supported(256, 32));
    CHECK(!k_sampled_softmax_fused_supported(257, 64) && !k_sampled_softmax_fused_supported(200, 128) &&
          !k_sampled_softmax_fused_supported(200, 48) && !k_sampled_softmax_fused_supported(0, 64));
    float *f = gpu_alloc(4096);
    REQUIRE(f);
    CHECK(k_sampled_softmax_fused(f, f, NULL, NULL, (const uint16_t *)f, (const uint16_t *)f, f, (const int32_t *)f,
                                  (const int32_t *)f, 1, 10, 4, 128, 20.0f, 0, 1.0f, 0) == cudaErrorInvalidValue,
          "emb_dim 128 accepted");
    CHECK(k_sampled_softmax_fused(f, f, f, NULL, (const uint16_t *)f, (const uint16_t *)f, f, (const int32_t *)f,
                                  (const int32_t *)f, 1, 10, 4, 64, 20.0f, 0, 1.0f, 0) == cudaErrorInvalidValue,
          "d_q without d_neg accepted");
    CHECK(k_sampled_softmax_fused(f, f, NULL, NULL, (const uint16_t *)f, (const uint16_t *)f, f, (const int32_t *)f,
                                  (const int32_t *)f, 1, 10, 0, 64, 20.0f, 0, 1.0f, 0) == cudaErrorInvalidValue,
          "no negatives accepted");
    cudaGetLastError();
    cudaFree(f);
}
