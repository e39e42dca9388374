/* bench_kernels_misc: the loss kernels, the optimizer, the reductions, evaluation ranking and the
 * data-parallel row exchange.
 *
 * - Sampled softmax rows: one logits chunk of the backend (109 sequences x 200 positions against
 *   4096 negatives); full-softmax xent: the same rows against 1000 categories; BCE: a finetuning
 *   batch of 2048 (latency-bound: its figure is the launch time, not a bandwidth).
 * - The item head's logits path as the backend runs it (the batched cuBLASLt logits GEMM with
 *   fp32 output, then the rows kernel reading them back), at E = 64 and 1024, against a modeled
 *   lower bound of the fused alternative (softmax in the GEMM's epilogue: the fp32 logits never
 *   reach memory; the larger of its bytes at the copy ceiling and its FLOPs at the GEMM
 *   ceiling). The sampled rows kernel is also set against a modeled two-pass softmax.
 * - The whole item head of one L4H64A4 pretraining step (512 sequences x 200 positions against
 *   4096 negatives each, E = 64), forward and backward: the fused kernel (k_sampled_softmax_fused)
 *   against the GEMM path as the backend runs it (per chunk of 109 sequences: logits GEMM, rows
 *   kernel, the d_q and d_neg GEMMs). FLOPs are the three logits-sized products the job needs
 *   (the fused kernel does a fourth, its recompute, which is not counted).
 * - AdamW over the dense parameters of L24H1024A16 (~300M, 144 ranges as the backend builds
 *   them, bf16 copies of the linear weights), and the gradient norm's sum of squares over them.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_cases.h"
#include "bench_harness.h"
#include "util.h"

#define MAXSET 16
#define NNEG 4096
#define CHUNK_SEQS 109 /* 512 MB / (200 positions x 4096 x (4 + 2) bytes) */
#define INV_TEMP 20.0f

typedef struct {
    int64_t R;
    int rps, N, E, nseq;
    float *logits[MAXSET], *pos[MAXSET], *loss[MAXSET], *dpos[MAXSET];
    gp_bf16 *dlog[MAXSET], *H16[MAXSET], *N16[MAXSET];
    int32_t *label[MAXSET], *neg[MAXSET];
} loss_ctx;

static void l_sampled(void *p, int i)
{
    loss_ctx *c = p;
    CK(k_sampled_softmax_rows(c->loss[i], c->dlog[i], c->dpos[i], c->logits[i], c->pos[i], c->label[i], c->neg[i], c->R,
                              c->rps, c->N, c->N, INV_TEMP, 0, INV_TEMP / (512.0f * 200.0f), BK.s));
}

static void l_xent(void *p, int i)
{
    loss_ctx *c = p;
    CK(k_softmax_xent_rows(c->loss[i], c->dlog[i], c->logits[i], c->label[i], c->R, c->N, c->N,
                           INV_TEMP / (512.0f * 200.0f), BK.s));
}

static gemm_args logits_gemm(const loss_ctx *c, int i)
{
    const int S = c->rps, N = c->N, E = c->E;
    gemm_args g = {.trans_a = 0, .trans_b = 1, .M = S, .N = N, .K = E, .A = c->H16[i], .lda = E,
                   .stride_a = (int64_t)S * E, .B = c->N16[i], .ldb = E, .stride_b = (int64_t)N * E,
                   .C = c->logits[i], .ldc = N, .stride_c = (int64_t)S * N, .c_type = GEMM_F32, .alpha = INV_TEMP,
                   .beta = 0.0f, .batch = c->nseq};
    return g;
}

static void l_logits_gemm(void *p, int i)
{
    gemm_args g = logits_gemm(p, i);
    bk_gemm(&g);
}

static void l_item_path(void *p, int i)
{
    l_logits_gemm(p, i);
    l_sampled(p, i);
}

static void loss_buffers(loss_ctx *c, int n, int with_ids)
{
    const double RN = (double)c->R * c->N;
    for (int i = 0; i < n; i++) {
        c->logits[i] = bk_rand_f32(c->R * c->N, 3.0f);
        c->pos[i] = bk_rand_f32(c->R, 3.0f);
        c->loss[i] = bk_alloc((size_t)c->R * 4);
        c->dpos[i] = bk_alloc((size_t)c->R * 4);
        c->dlog[i] = bk_alloc((size_t)RN * 2);
        c->label[i] = with_ids ? bk_rand_ids(c->R, 1, 1000000) : bk_rand_ids(c->R, 0, c->N);
        if (with_ids)
            c->neg[i] = bk_rand_ids((int64_t)c->nseq * c->N, 0, 1000000);
    }
}

static void sampled_softmax_cases(void)
{
    loss_ctx c = {.rps = BK_POSITIONS - 1, .N = NNEG, .nseq = CHUNK_SEQS};
    c.R = (int64_t)c.nseq * c.rps;
    const double RN = (double)c.R * c.N;
    char sh[96];
    snprintf(sh, sizeof sh, "%lldx%d (%d seqs)", (long long)c.R, c.N, c.nseq);
    double bytes = RN * 6 + 16.0 * c.R + 4.0 * c.nseq * c.N;
    if (bk_want("sampled_softmax_rows")) {
        int n = bk_sets(bytes);
        loss_buffers(&c, n, 1);
        bk_timing t = bk_time(l_sampled, &c, n);
        bk_meas m = {"sampled_softmax_rows", sh, "ours", "k_sampled_softmax_rows", bytes, 0, 0, bytes,
                     "loss + d_logits(bf16) + d_pos in one pass over the fp32 logits"};
        bk_report(&m, &t, bk_finite_bf16(c.dlog[0], c.R * c.N) && bk_finite_f32(c.loss[0], c.R));
        bk_meas a = {"sampled_softmax_rows", sh, "two passes (max/sum, then gradient)", "(not run)", bytes,
                     RN * 10 + 16.0 * c.R, 0, 0, "the fp32 logits read twice"};
        bk_report_modeled(&a, "bytes at the measured copy ceiling");
        bk_free_all();
    }
    if (bk_want("softmax_xent_rows")) {
        loss_ctx x = c;
        x.N = 1000;
        const double RC = (double)x.R * x.N;
        snprintf(sh, sizeof sh, "%lldx%d", (long long)x.R, x.N);
        double xb = RC * 6 + 12.0 * x.R;
        int n = bk_sets(xb);
        loss_buffers(&x, n, 0);
        bk_timing t = bk_time(l_xent, &x, n);
        bk_meas m = {"softmax_xent_rows", sh, "ours", "k_softmax_xent_rows", xb, 0, 0, xb,
                     "category head: loss + d_logits(bf16)"};
        bk_report(&m, &t, bk_finite_bf16(x.dlog[0], x.R * x.N));
        bk_free_all();
    }
}

/* The item head's logits GEMM and rows kernel, as the backend runs them per chunk. */
static void item_path_case(int E)
{
    if (!bk_want("item_logits"))
        return;
    loss_ctx c = {.rps = BK_POSITIONS - 1, .N = NNEG, .nseq = CHUNK_SEQS, .E = E};
    c.R = (int64_t)c.nseq * c.rps;
    const double RN = (double)c.R * c.N, RE = (double)c.R * E, NE = (double)c.nseq * c.N * E;
    const double flops = 2.0 * RN * E;
    double rows_bytes = RN * 6 + 16.0 * c.R + 4.0 * c.nseq * c.N;
    int n = bk_sets(rows_bytes);
    loss_buffers(&c, n, 1);
    for (int i = 0; i < n; i++) { /* L2-normalised rows in bf16: entries ~ 1/sqrt(E) */
        c.H16[i] = bk_rand_bf16(c.R * E, 1.0f / sqrtf((float)E));
        c.N16[i] = bk_rand_bf16((int64_t)c.nseq * c.N * E, 1.0f / sqrtf((float)E));
    }
    char sh[96];
    snprintf(sh, sizeof sh, "%lldx%dx%d (%d seqs)", (long long)c.R, c.N, E, c.nseq);
    gemm_args g = logits_gemm(&c, 0);
    gp_err e = {{0}};
    double gemm_bytes = 2 * RE + 2 * NE + 4 * RN;
    bk_meas mg = {"item_logits_gemm", sh, "ours", "cuBLASLt batched GEMM, fp32 logits (gemm.c)", gemm_bytes, 0,
                  flops, gemm_bytes, "per sequence: [200 x E] x [E x 4096]"};
    if (bk_gemm_try(&g, &e) != 0) {
        bk_report_skipped(&mg, e.msg);
        bk_free_all();
        return;
    }
    bk_timing t = bk_time(l_logits_gemm, &c, n);
    bk_report(&mg, &t, bk_finite_f32(c.logits[0], c.R * c.N));
    /* the path: fewest bytes = its inputs and the gradient outputs, no fp32 logits in memory */
    double path_min = 2 * RE + 2 * NE + RN * 2 + 16.0 * c.R + 4.0 * c.nseq * c.N;
    t = bk_time(l_item_path, &c, n);
    bk_meas mp = {"item_logits+softmax", sh, "ours", "logits GEMM + k_sampled_softmax_rows", path_min,
                  path_min + 8 * RN, flops, gemm_bytes + rows_bytes, "the fp32 logits are written and read back"};
    bk_report(&mp, &t, bk_finite_bf16(c.dlog[0], c.R * c.N));
    bk_meas ma = {"item_logits+softmax", sh, "softmax in GEMM epilogue (lower bound)", "(not run)", path_min, 0, flops,
                  0, "max(bytes without fp32 logits at copy ceiling, FLOPs at GEMM ceiling)"};
    bk_report_modeled(&ma, "max of bytes at the copy ceiling and FLOPs at the GEMM ceiling");
    bk_free_all();
}

/* The item head, forward and backward, over a whole step's sequences. */
typedef struct {
    int nseq, rps, N, E, chunk;
    gp_bf16 *H16, *N16, *dlog, *dn;
    float *pos, *loss, *dpos, *dq, *logits;
    int32_t *label, *neg;
} head_ctx;

static void l_head_fused(void *p, int i)
{
    (void)i;
    head_ctx *c = p;
    CK(k_sampled_softmax_fused(c->loss, c->dpos, c->dq, c->dn, c->H16, c->N16, c->pos, c->label, c->neg, c->nseq,
                               c->rps, c->N, c->E, INV_TEMP, 1, INV_TEMP / (512.0f * 200.0f), BK.s));
}

static void l_head_gemm(void *p, int i)
{
    (void)i;
    head_ctx *c = p;
    const int S = c->rps, N = c->N, E = c->E;
    for (int b0 = 0; b0 < c->nseq; b0 += c->chunk) {
        const int cb = GP_MIN(c->chunk, c->nseq - b0);
        gemm_args g = {.trans_a = 0, .trans_b = 1, .M = S, .N = N, .K = E, .A = c->H16 + (size_t)b0 * S * E,
                       .lda = E, .stride_a = (int64_t)S * E, .B = c->N16 + (size_t)b0 * N * E, .ldb = E,
                       .stride_b = (int64_t)N * E, .C = c->logits, .ldc = N, .stride_c = (int64_t)S * N,
                       .c_type = GEMM_F32, .alpha = INV_TEMP, .beta = 0.0f, .batch = cb};
        bk_gemm(&g);
        CK(k_sampled_softmax_rows(c->loss + (size_t)b0 * S, c->dlog, c->dpos + (size_t)b0 * S, c->logits,
                                  c->pos + (size_t)b0 * S, c->label + (size_t)b0 * S, c->neg + (size_t)b0 * N,
                                  (int64_t)cb * S, S, N, N, INV_TEMP, 1, INV_TEMP / (512.0f * 200.0f), BK.s));
        gemm_args dh = {.trans_a = 0, .trans_b = 0, .M = S, .N = E, .K = N, .A = c->dlog, .lda = N,
                        .stride_a = (int64_t)S * N, .B = c->N16 + (size_t)b0 * N * E, .ldb = E,
                        .stride_b = (int64_t)N * E, .C = c->dq + (size_t)b0 * S * E, .ldc = E,
                        .stride_c = (int64_t)S * E, .c_type = GEMM_F32, .alpha = 1.0f, .beta = 1.0f, .batch = cb};
        gemm_args dn = {.trans_a = 1, .trans_b = 0, .M = N, .N = E, .K = S, .A = c->dlog, .lda = N,
                        .stride_a = (int64_t)S * N, .B = c->H16 + (size_t)b0 * S * E, .ldb = E,
                        .stride_b = (int64_t)S * E, .C = c->dn + (size_t)b0 * N * E, .ldc = E,
                        .stride_c = (int64_t)N * E, .c_type = GEMM_BF16, .alpha = 1.0f, .beta = 0.0f, .batch = cb};
        bk_gemm(&dh);
        bk_gemm(&dn);
    }
}

static void item_head_case(void)
{
    if (!bk_want("item_head"))
        return;
    head_ctx c = {.nseq = 512, .rps = BK_POSITIONS - 1, .N = NNEG, .E = 64, .chunk = CHUNK_SEQS};
    const int64_t R = (int64_t)c.nseq * c.rps, NR = (int64_t)c.nseq * c.N;
    const double RN = (double)R * c.N, flops = 3 * 2.0 * RN * c.E;
    c.H16 = bk_rand_bf16(R * c.E, 1.0f / sqrtf((float)c.E));
    c.N16 = bk_rand_bf16(NR * c.E, 1.0f / sqrtf((float)c.E));
    c.pos = bk_rand_f32(R, 3.0f);
    c.label = bk_rand_ids(R, 1, 1000000);
    c.neg = bk_rand_ids(NR, 0, 1000000);
    c.loss = bk_alloc((size_t)R * 4);
    c.dpos = bk_alloc((size_t)R * 4);
    c.dq = bk_rand_f32(R * c.E, 0.01f);
    c.dn = bk_alloc((size_t)NR * c.E * 2);
    char sh[96];
    snprintf(sh, sizeof sh, "%lldx%dx%d (%d seqs)", (long long)R, c.N, c.E, c.nseq);
    /* inputs once (bf16 rows, ids, labels, positives), d_q read and written, bf16 d_neg written */
    const double min_bytes = 2.0 * (R + NR) * c.E + 4.0 * (NR + 2 * R) + 8.0 * R * c.E + 2.0 * NR * c.E + 8.0 * R;
    bk_timing t = bk_time(l_head_fused, &c, 1);
    bk_meas m = {"item_head", sh, "ours", "k_sampled_softmax_fused (forward and backward)", min_bytes, 0, flops,
                 min_bytes, "logits tile in registers; 4 products done, 3 counted"};
    bk_report(&m, &t, bk_finite_bf16(c.dn, NR * c.E) && bk_finite_f32(c.loss, R));
    c.logits = bk_alloc((size_t)c.chunk * c.rps * c.N * 4);
    c.dlog = bk_alloc((size_t)c.chunk * c.rps * c.N * 2);
    t = bk_time(l_head_gemm, &c, 1);
    bk_meas a = {"item_head", sh, "GEMM path (sampled_softmax_kernel = gemm)",
                 "per 109 sequences: logits GEMM + k_sampled_softmax_rows + 2 GEMMs", min_bytes,
                 min_bytes + RN * (8 + 4), flops, min_bytes, "fp32 logits written and read, bf16 gradient written and read twice"};
    bk_report(&a, &t, bk_finite_bf16(c.dn, NR * c.E) && bk_finite_f32(c.loss, R));
    bk_free_all();
}

typedef struct {
    int64_t n;
    float *logit[MAXSET], *prob[MAXSET], *loss[MAXSET], *dl[MAXSET], *bias, *dbias;
    int32_t *label[MAXSET];
} bce_ctx;

static void l_bce(void *p, int i)
{
    bce_ctx *c = p;
    CK(k_bce_logits(c->prob[i], c->loss[i], c->dl[i], c->dbias, c->logit[i], c->bias, c->label[i], c->n,
                    1.0f / (float)c->n, BK.s));
}

static void bce_case(int64_t n)
{
    if (!bk_want("bce_logits"))
        return;
    bce_ctx c = {.n = n};
    double bytes = 20.0 * n;
    int k = bk_sets(bytes);
    c.bias = bk_rand_f32(1, 0.1f);
    c.dbias = bk_rand_f32(1, 0.1f);
    for (int i = 0; i < k; i++) {
        c.logit[i] = bk_rand_f32(n, 1.0f);
        c.label[i] = bk_rand_ids(n, 0, 2);
        c.prob[i] = bk_alloc((size_t)n * 4);
        c.loss[i] = bk_alloc((size_t)n * 4);
        c.dl[i] = bk_alloc((size_t)n * 4);
    }
    char sh[32];
    snprintf(sh, sizeof sh, "%lld", (long long)n);
    bk_timing t = bk_time(l_bce, &c, k);
    bk_meas m = {"bce_logits", sh, "ours", "k_bce_logits (+ d_bias)", bytes, 0, 0, bytes,
                 "latency-bound at this size: two small kernels"};
    bk_report(&m, &t, bk_finite_f32(c.dl[0], n) && bk_finite_f32(c.prob[0], n));
    bk_free_all();
}

typedef struct {
    int nr;
    float **p, **g, **m, **v; /* device arrays of device pointers */
    gp_bf16 **b16;
    int64_t *lens;
    double *sumsq, *out, *scratch;
    float *x;
    int64_t nx;
} opt_ctx;

static void l_adamw(void *q, int i)
{
    opt_ctx *c = q;
    CK(k_adamw_ranges(c->p, (const float *const *)c->g, c->m, c->v, c->b16, c->lens, c->nr, c->sumsq, 1.0, 1e-4, 0.9,
                      0.98, 1e-8, 0.1, 10, BK.s));
}

static void l_sumsq(void *q, int i)
{
    opt_ctx *c = q;
    CK(k_sum_squares_ranges(c->out, (const float *const *)c->g, c->lens, c->nr, c->scratch, BK.s));
}

static void l_sum(void *q, int i)
{
    opt_ctx *c = q;
    CK(k_sum(c->out, c->x, c->nx, c->scratch, BK.s));
}

static void optimizer_cases(void)
{
    if (!bk_want("adamw") && !bk_want("sum"))
        return;
    /* L24H1024A16's blocks, as the backend's ranges: wqkv, wo, w1|w3, w2 (bf16 copies), two norms */
    const int L = 24, D = 1024, F = bk_ffn_hidden(D);
    const int64_t per[6] = {3LL * D * D, (int64_t)D * D, 2LL * F * D, (int64_t)F * D, D, D};
    const int nr = 6 * L;
    int64_t *lens = gp_xmalloc((size_t)nr * sizeof *lens), total = 0, total16 = 0;
    for (int r = 0; r < nr; r++) {
        lens[r] = per[r % 6];
        total += lens[r];
        total16 += r % 6 < 4 ? lens[r] : 0;
    }
    float *P = bk_rand_f32(total, 0.02f), *G = bk_rand_f32(total, 1e-3f), *M = bk_rand_f32(total, 1e-3f);
    float *V = bk_rand_f32_pos(total, 1e-8f, 1e-6f);
    gp_bf16 *B16 = bk_alloc((size_t)total * 2);
    void **hp = gp_xmalloc((size_t)nr * 5 * sizeof *hp);
    int64_t o = 0;
    for (int r = 0; r < nr; r++) {
        hp[r] = P + o;
        hp[nr + r] = G + o;
        hp[2 * nr + r] = M + o;
        hp[3 * nr + r] = V + o;
        hp[4 * nr + r] = r % 6 < 4 ? (void *)(B16 + o) : NULL;
        o += lens[r];
    }
    void **dp = bk_upload(hp, (size_t)nr * 5 * sizeof *hp);
    opt_ctx c = {.nr = nr, .p = (float **)dp, .g = (float **)(dp + nr), .m = (float **)(dp + 2 * nr),
                 .v = (float **)(dp + 3 * nr), .b16 = (gp_bf16 **)(dp + 4 * nr)};
    c.lens = bk_upload(lens, (size_t)nr * sizeof *lens);
    double sumsq = 4.0; /* gradient norm 2 > max_norm 1: the clipped path, as in training */
    c.sumsq = bk_upload(&sumsq, sizeof sumsq);
    c.out = bk_alloc(sizeof(double));
    c.scratch = bk_alloc(K_REDUCE_SCRATCH * sizeof(double));
    free(hp);
    free(lens);
    char sh[96];
    snprintf(sh, sizeof sh, "%lld params, %d ranges", (long long)total, nr);
    if (bk_want("adamw")) {
        double bytes = 28.0 * total + 2.0 * total16;
        bk_timing t = bk_time(l_adamw, &c, 1);
        bk_meas m = {"adamw_ranges", sh, "ours", "k_adamw_ranges (clip factor on device)", bytes, 0, 0, bytes,
                     "read p, g, m, v; write p, m, v and the bf16 copies of the linear weights"};
        bk_report(&m, &t, bk_finite_f32(P, total) && bk_finite_bf16(B16, 3LL * D * D));
    }
    if (bk_want("sum")) {
        double bytes = 4.0 * total;
        bk_timing t = bk_time(l_sumsq, &c, 1);
        bk_meas m = {"sum_squares_ranges", sh, "ours", "k_sum_squares_ranges", bytes, 0, 0, bytes,
                     "gradient norm, deterministic double sums"};
        bk_report(&m, &t, 1);
        c.x = G;
        c.nx = 512 * 200;
        t = bk_time(l_sum, &c, 1);
        char s2[32];
        snprintf(s2, sizeof s2, "%lld", (long long)c.nx);
        bk_meas m2 = {"sum", s2, "ours", "k_sum", 4.0 * c.nx, 0, 0, 4.0 * c.nx,
                      "a loss sum (row losses of one batch): latency-bound"};
        bk_report(&m2, &t, 1);
    }
    bk_free_all();
}

typedef struct {
    int64_t rows, cols, n, V;
    int E;
    float *scores, *thr, *table, *buf;
    int32_t *target, *ids, *sorted_ids;
    int64_t *count;
    uint8_t *mask;
    void *scratch;
    size_t scratch_bytes;
} eval_ctx;

static void l_count(void *p, int i)
{
    eval_ctx *c = p;
    CK(k_count_greater(c->count, c->scores, c->cols, c->thr, c->target, c->rows, c->cols, 0, BK.s));
}

static void l_mark(void *p, int i)
{
    eval_ctx *c = p;
    CK(k_mark_rows(c->mask, c->ids, c->n, c->V, BK.s));
}

static void l_mask_ids(void *p, int i)
{
    eval_ctx *c = p;
    CK(k_mask_to_ids(c->sorted_ids, c->count, c->mask, c->V, c->scratch, c->scratch_bytes, BK.s));
}

static void l_gather_pad(void *p, int i)
{
    eval_ctx *c = p;
    CK(k_gather_rows_padded(c->buf, c->table, c->sorted_ids, c->n, c->n + 1024, c->E, BK.s));
}

static void l_add_by_id(void *p, int i)
{
    eval_ctx *c = p;
    CK(k_add_rows_by_id(c->table, c->buf, c->sorted_ids, c->n, c->E, BK.s));
}

static void eval_exchange_cases(void)
{
    if (bk_want("count_greater")) {
        /* next-item ranking of 512 queries against one 256K-item chunk of the catalogue */
        eval_ctx c = {.rows = 512, .cols = 262144};
        c.scores = bk_rand_f32(c.rows * c.cols, 1.0f);
        c.thr = bk_rand_f32(c.rows, 1.0f);
        c.target = bk_rand_ids(c.rows, 1, c.cols);
        c.count = bk_alloc((size_t)c.rows * 8);
        CK(cudaMemsetAsync(c.count, 0, (size_t)c.rows * 8, BK.s));
        char sh[64];
        snprintf(sh, sizeof sh, "%lldx%lld", (long long)c.rows, (long long)c.cols);
        double bytes = 4.0 * c.rows * c.cols;
        bk_timing t = bk_time(l_count, &c, 1);
        bk_meas m = {"count_greater", sh, "ours", "k_count_greater", bytes, 0, 0, bytes, "evaluation ranking"};
        bk_report(&m, &t, 1);
        bk_free_all();
    }
    if (bk_want("row_exchange")) {
        /* data parallelism, L4H64A4 pretraining: the item rows a step touched (2M negative ids
         * over 1M items), compacted, gathered, and the received rows added */
        eval_ctx c = {.n = 512 * 4096, .V = 1000000, .E = 64};
        c.ids = bk_rand_ids(c.n, 0, c.V);
        c.mask = bk_alloc((size_t)c.V);
        CK(cudaMemsetAsync(c.mask, 0, (size_t)c.V, BK.s));
        CK(k_mask_to_ids_scratch(c.V, &c.scratch_bytes));
        c.scratch = bk_alloc(c.scratch_bytes);
        c.sorted_ids = bk_alloc((size_t)c.V * 4);
        c.count = bk_alloc(8);
        char sh[96];
        snprintf(sh, sizeof sh, "%lld ids of %lld", (long long)c.n, (long long)c.V);
        bk_timing t = bk_time(l_mark, &c, 1);
        bk_meas m = {"mark_rows", sh, "ours", "k_mark_rows", 4.0 * c.n + c.V, 0, 0, 4.0 * c.n, "mask[ids] = 1"};
        bk_report(&m, &t, 1);
        l_mask_ids(&c, 0);
        int64_t distinct = 0;
        CK(cudaStreamSynchronize(BK.s));
        CK(cudaMemcpy(&distinct, c.count, 8, cudaMemcpyDeviceToHost));
        t = bk_time(l_mask_ids, &c, 1);
        snprintf(sh, sizeof sh, "mask of %lld, %lld set", (long long)c.V, (long long)distinct);
        bk_meas m2 = {"mask_to_ids", sh, "ours", "k_mask_to_ids (CUB select)", c.V + 4.0 * distinct, 0, 0, c.V,
                      "the marked rows in increasing order"};
        bk_report(&m2, &t, 1);
        c.n = distinct;
        c.table = bk_rand_f32(c.V * c.E, 0.02f);
        c.buf = bk_alloc((size_t)(c.n + 1024) * c.E * 4);
        snprintf(sh, sizeof sh, "%lldx%d of %lld", (long long)c.n, c.E, (long long)c.V);
        double gb = 8.0 * c.n * c.E + 4.0 * c.n;
        t = bk_time(l_gather_pad, &c, 1);
        bk_meas m3 = {"gather_rows_padded", sh, "ours", "k_gather_rows_padded", gb, 0, 0, gb, "send buffer"};
        bk_report(&m3, &t, bk_finite_f32(c.buf, c.n * c.E));
        double ab = 12.0 * c.n * c.E + 4.0 * c.n;
        t = bk_time(l_add_by_id, &c, 1);
        bk_meas m4 = {"add_rows_by_id", sh, "ours", "k_add_rows_by_id", ab, 0, 0, ab, "received rows added"};
        bk_report(&m4, &t, bk_finite_f32(c.table, c.V * c.E));
        bk_free_all();
    }
}

void bk_cases_misc(void)
{
    bk_progress("losses");
    sampled_softmax_cases();
    item_path_case(64);
    item_path_case(1024);
    item_head_case();
    bce_case(2048);
    bk_progress("optimizer and reductions (L24H1024A16 dense parameters)");
    optimizer_cases();
    bk_progress("evaluation and data-parallel row exchange");
    eval_exchange_cases();
}
