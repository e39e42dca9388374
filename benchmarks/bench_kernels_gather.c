/* bench_kernels_gather: embeddings and the heads' row kernels at the shapes of L4H64A4
 * pretraining (1M items, 512 x 201 tokens, 4096 negatives per sequence) and L24H1024A16 (100K
 * items, 128 x 201 tokens): embedding gather, negative-row gather, the deterministic
 * scatter-add of row gradients, add_rows, L2 norms, row dots, the rank head's bias+ReLU, axpy.
 *
 * Bytes of a gather count each distinct table row read once (the distinct ids are counted on
 * the host), the ids and the rows written. The scatter-add counts its source rows, ids, and
 * each touched table row read and written once; its time includes the radix sort the
 * determinism contract needs. Alternative: the fused three-table embedding against three
 * k_gather_rows and two k_axpy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_cases.h"
#include "bench_harness.h"
#include "util.h"

#define MAXSET 16

typedef struct {
    int64_t R, V;
    int E;
    int n;
    float *item, *cate, *seg;
    int32_t *ti[MAXSET], *tc[MAXSET], *ts[MAXSET];
    float *out[MAXSET], *t1[MAXSET], *t2[MAXSET], *t3[MAXSET];
} embed_ctx;

static void l_embed(void *p, int i)
{
    embed_ctx *c = p;
    CK(k_embed_fwd(c->out[i], NULL, c->item, c->cate, c->seg, c->ti[i], c->tc[i], c->ts[i], c->R, c->E, BK.s));
}

static void l_embed_unfused(void *p, int i)
{
    embed_ctx *c = p;
    CK(k_gather_rows(c->t1[i], NULL, c->item, c->ti[i], c->R, c->E, BK.s));
    CK(k_gather_rows(c->t2[i], NULL, c->cate, c->tc[i], c->R, c->E, BK.s));
    CK(k_gather_rows(c->t3[i], NULL, c->seg, c->ts[i], c->R, c->E, BK.s));
    CK(k_axpy(c->t1[i], c->t2[i], 1.0f, c->R * c->E, BK.s));
    CK(k_axpy(c->t1[i], c->t3[i], 1.0f, c->R * c->E, BK.s));
}

static void embed_case(int seqs, int E, int64_t V)
{
    if (!bk_want("embed_fwd"))
        return;
    embed_ctx c = {.R = (int64_t)seqs * BK_POSITIONS, .V = V, .E = E};
    const double RE = (double)c.R * E;
    c.item = bk_rand_f32(V * E, 0.02f);
    c.cate = bk_rand_f32(1000 * (int64_t)E, 0.02f);
    c.seg = bk_rand_f32(2 * (int64_t)E, 0.02f);
    int32_t *hi = bk_host_ids(c.R, 1, V), *hc = bk_host_ids(c.R, 1, 1000);
    int64_t di = bk_distinct(hi, c.R, V), dc = bk_distinct(hc, c.R, 1000);
    double bytes = 4.0 * E * (double)(di + dc + 2) + 12.0 * c.R + 4 * RE;
    c.n = bk_sets(12.0 * c.R + 4 * RE);
    int32_t *hs = gp_xmalloc((size_t)c.R * sizeof *hs);
    for (int64_t r = 0; r < c.R; r++)
        hs[r] = r % BK_POSITIONS == BK_POSITIONS - 1;
    for (int i = 0; i < c.n; i++) {
        if (i > 0) {
            free(hi);
            free(hc);
            hi = bk_host_ids(c.R, 1, V);
            hc = bk_host_ids(c.R, 1, 1000);
        }
        c.ti[i] = bk_upload(hi, (size_t)c.R * 4);
        c.tc[i] = bk_upload(hc, (size_t)c.R * 4);
        c.ts[i] = bk_upload(hs, (size_t)c.R * 4);
        c.out[i] = bk_alloc((size_t)RE * 4);
    }
    free(hi);
    free(hc);
    free(hs);
    char sh[96];
    snprintf(sh, sizeof sh, "%lldx%d of %lld items", (long long)c.R, E, (long long)V);
    bk_timing t = bk_time(l_embed, &c, c.n);
    bk_meas m = {"embed_fwd", sh, "ours", "k_embed_fwd", bytes, 0, 0, 12.0 * c.R + 4 * RE,
                 "item + cate + segment rows, fp32 out"};
    bk_report(&m, &t, bk_finite_f32(c.out[0], c.R * E));
    for (int i = 0; i < c.n; i++) {
        c.t1[i] = bk_alloc((size_t)RE * 4);
        c.t2[i] = bk_alloc((size_t)RE * 4);
        c.t3[i] = bk_alloc((size_t)RE * 4);
    }
    t = bk_time(l_embed_unfused, &c, c.n);
    bk_meas a = {"embed_fwd", sh, "unfused: 3 x k_gather_rows + 2 x k_axpy", "k_gather_rows x3; k_axpy x2", bytes,
                 48 * RE + 12.0 * c.R, 0, 0, NULL};
    bk_report(&a, &t, bk_finite_f32(c.t1[0], c.R * E));
    bk_free_all();
}

typedef struct {
    int64_t R, V;
    int E;
    float *table, *grad;
    int32_t *ids[MAXSET];
    float *rows[MAXSET], *src[MAXSET], *norm[MAXSET], *normed[MAXSET];
    gp_bf16 *out16[MAXSET], *src16[MAXSET];
    k_scatter_plan plan;
    void *scratch;
} gather_ctx;

static void l_l2_rows(void *p, int i)
{
    gather_ctx *c = p;
    CK(k_l2norm_fwd_rows(NULL, c->out16[i], c->norm[i], c->table, c->ids[i], c->R, c->E, 1e-6f, BK.s));
}

/* what the model did before k_l2norm_fwd_rows: gather fp32 rows, then normalise to fp32 and bf16 */
static void l_l2_rows_unfused(void *p, int i)
{
    gather_ctx *c = p;
    CK(k_gather_rows(c->rows[i], NULL, c->table, c->ids[i], c->R, c->E, BK.s));
    CK(k_l2norm_fwd(c->normed[i], c->out16[i], c->norm[i], c->rows[i], c->R, c->E, 1e-6f, BK.s));
}

static void l_gather(void *p, int i)
{
    gather_ctx *c = p;
    CK(k_gather_rows(c->rows[i], NULL, c->table, c->ids[i], c->R, c->E, BK.s));
}

static void l_scatter(void *p, int i)
{
    gather_ctx *c = p;
    CK(k_scatter_add_rows(c->grad, c->src[i], c->ids[i], c->R, c->E, NULL, &c->plan, c->scratch, BK.s));
}

static void l_scatter_l2(void *p, int i)
{
    gather_ctx *c = p;
    CK(k_scatter_add_rows_l2bwd(c->grad, c->src16[i], c->ids[i], c->R, c->E, c->table, 1e-6f, &c->plan, c->scratch,
                                BK.s));
}

/* what the model did before k_scatter_add_rows_l2bwd: the L2 backward of every fp32 row from
 * the bf16 normalised copy (in place there; into the gathered-rows buffer here, the same
 * traffic), then the scatter */
static void l_scatter_l2_unfused(void *p, int i)
{
    gather_ctx *c = p;
    CK(k_l2norm_bwd_bf16(c->rows[i], c->src[i], c->out16[i], c->norm[i], c->R, c->E, 1e-6f, 0, BK.s));
    CK(k_scatter_add_rows(c->grad, c->rows[i], c->ids[i], c->R, c->E, NULL, &c->plan, c->scratch, BK.s));
}

/* what: "negatives" or "tokens" (labels of the next-item head) */
static void gather_scatter_case(int64_t R, int E, int64_t V, const char *what)
{
    int do_gather = bk_want("gather_rows"), do_scatter = bk_want("scatter_add_rows");
    int do_l2rows = bk_want("l2norm_fwd_rows") && strcmp(what, "negatives") == 0;
    int do_scatter_l2 = bk_want("scatter_add_rows_l2bwd") && strcmp(what, "negatives") == 0;
    if (!do_gather && !do_scatter && !do_l2rows && !do_scatter_l2)
        return;
    gather_ctx c = {.R = R, .V = V, .E = E};
    const double RE = (double)R * E;
    c.table = bk_rand_f32(V * E, 0.02f);
    int n = bk_sets(4 * RE + 4.0 * R + (do_l2rows || do_scatter_l2 ? 12 * RE + 8.0 * R : 0));
    int64_t distinct = 0;
    for (int i = 0; i < n; i++) {
        int32_t *h = bk_host_ids(R, 0, V);
        if (i == 0)
            distinct = bk_distinct(h, R, V);
        c.ids[i] = bk_upload(h, (size_t)R * 4);
        free(h);
        c.rows[i] = bk_alloc((size_t)RE * 4);
    }
    char sh[96];
    snprintf(sh, sizeof sh, "%lldx%d of %lld (%s)", (long long)R, E, (long long)V, what);
    if (do_gather) {
        double bytes = 4.0 * E * (double)distinct + 4.0 * R + 4 * RE;
        bk_timing t = bk_time(l_gather, &c, n);
        bk_meas m = {"gather_rows", sh, "ours", "k_gather_rows", bytes, 0, 0, 4 * RE + 4.0 * R, "fp32 out"};
        bk_report(&m, &t, bk_finite_f32(c.rows[0], c.R * E));
    }
    if (do_l2rows) {
        for (int i = 0; i < n; i++) {
            c.out16[i] = bk_alloc((size_t)RE * 2);
            c.norm[i] = bk_alloc((size_t)R * 4);
            c.normed[i] = bk_alloc((size_t)RE * 4);
        }
        double bytes = 4.0 * E * (double)distinct + 4.0 * R + 2 * RE + 4.0 * R;
        bk_timing t = bk_time(l_l2_rows, &c, n);
        bk_meas m = {"l2norm_fwd_rows", sh, "ours", "k_l2norm_fwd_rows", bytes, 0, 0, bytes,
                     "table rows by id, normalised to bf16 + norms"};
        bk_report(&m, &t, bk_finite_bf16(c.out16[0], c.R * E));
        t = bk_time(l_l2_rows_unfused, &c, n);
        bk_meas u = {"l2norm_fwd_rows", sh, "unfused: k_gather_rows + k_l2norm_fwd (fp32 + bf16)",
                     "k_gather_rows; k_l2norm_fwd", bytes, bytes + 4 * RE * 3, 0, 0, NULL};
        bk_report(&u, &t, bk_finite_bf16(c.out16[0], c.R * E));
    }
    if (do_scatter) {
        for (int i = 0; i < n; i++) /* row gradients (the gathered rows, if any, are not reused) */
            c.src[i] = bk_rand_f32(R * E, 0.01f);
        c.grad = bk_rand_f32(V * E, 0.01f);
        CK(k_scatter_plan_init(&c.plan, R, V, E));
        c.scratch = bk_alloc(c.plan.scratch_bytes);
        double bytes = 4 * RE + 4.0 * R + 8.0 * E * (double)distinct;
        bk_timing t = bk_time(l_scatter, &c, n);
        bk_meas m = {"scatter_add_rows", sh, "ours", "k_scatter_add_rows (CUB sort + ordered sums)", bytes, 0, 0,
                     4 * RE + 4.0 * R, "deterministic; time includes the radix sort"};
        bk_report(&m, &t, bk_finite_f32(c.grad, V * E));
    }
    if (do_scatter_l2) {
        for (int i = 0; i < n; i++) {
            if (!c.src[i])
                c.src[i] = bk_rand_f32(R * E, 0.01f);
            c.src16[i] = bk_rand_bf16(R * E, 0.01f);
            if (!c.out16[i]) {
                c.out16[i] = bk_alloc((size_t)RE * 2);
                c.norm[i] = bk_alloc((size_t)R * 4);
            }
            CK(k_l2norm_fwd_rows(NULL, c.out16[i], c.norm[i], c.table, c.ids[i], R, E, 1e-6f, BK.s));
        }
        if (!c.grad) {
            c.grad = bk_rand_f32(V * E, 0.01f);
            CK(k_scatter_plan_init(&c.plan, R, V, E));
            c.scratch = bk_alloc(c.plan.scratch_bytes);
        }
        /* bf16 row gradients and ids once, then per distinct id its table row read and gradient
         * row read and written */
        double bytes = 2 * RE + 4.0 * R + 12.0 * E * (double)distinct;
        bk_timing t = bk_time(l_scatter_l2, &c, n);
        bk_meas m = {"scatter_add_rows_l2bwd", sh, "ours", "k_scatter_add_rows_l2bwd (sum per id, then L2 backward)",
                     bytes, 0, 0, 2 * RE + 4.0 * R, "bf16 rows; deterministic; time includes the radix sort"};
        bk_report(&m, &t, bk_finite_f32(c.grad, V * E));
        t = bk_time(l_scatter_l2_unfused, &c, n);
        bk_meas u = {"scatter_add_rows_l2bwd", sh, "unfused: k_l2norm_bwd_bf16 per fp32 row + k_scatter_add_rows",
                     "k_l2norm_bwd_bf16; k_scatter_add_rows", bytes, bytes + 12 * RE, 0, 0, NULL};
        bk_report(&u, &t, bk_finite_f32(c.grad, V * E));
    }
    bk_free_all();
}

typedef struct {
    int64_t R;
    int E, acc;
    float *x[MAXSET], *out[MAXSET], *norm[MAXSET], *d_out[MAXSET], *d_x[MAXSET], *b[MAXSET], *dot[MAXSET];
    gp_bf16 *out16[MAXSET];
    int32_t *dst_rows;
} l2_ctx;

static void l_l2f(void *p, int i)
{
    l2_ctx *c = p;
    CK(k_l2norm_fwd(c->out[i], c->out16[i], c->norm[i], c->x[i], c->R, c->E, 1e-6f, BK.s));
}

static void l_l2b(void *p, int i)
{
    l2_ctx *c = p;
    CK(k_l2norm_bwd(c->d_x[i], c->d_out[i], c->out[i], c->norm[i], c->R, c->E, 1e-6f, 0, BK.s));
}

static void l_l2b16(void *p, int i)
{
    l2_ctx *c = p;
    CK(k_l2norm_bwd_bf16(c->d_x[i], c->d_out[i], c->out16[i], c->norm[i], c->R, c->E, 1e-6f, 0, BK.s));
}

static void l_dot(void *p, int i)
{
    l2_ctx *c = p;
    CK(k_row_dot(c->dot[i], c->x[i], c->b[i], c->R, c->E, 20.0f, BK.s));
}

static void l_dotb(void *p, int i)
{
    l2_ctx *c = p;
    CK(k_row_dot_bwd(c->d_x[i], c->d_out[i], c->dot[i], c->x[i], c->b[i], c->R, c->E, 0, BK.s));
}

static void l_add_rows(void *p, int i)
{
    l2_ctx *c = p;
    CK(k_add_rows(c->out[i], c->x[i], c->dst_rows, c->R, c->E, BK.s));
}

/* The heads' row kernels on R rows of width E (R = positions with a label, or negatives). */
static void head_rows_case(int64_t R, int E, const char *what)
{
    l2_ctx c = {.R = R, .E = E};
    const double RE = (double)R * E;
    char sh[96];
    snprintf(sh, sizeof sh, "%lldx%d (%s)", (long long)R, E, what);
    /* the largest of these sets: x, b, out, d_out, d_x, bf16 out */
    int n = bk_sets(4 * RE * 2);
    if (!bk_want("l2norm") && !bk_want("row_dot"))
        return;
    for (int i = 0; i < n; i++) {
        c.x[i] = bk_rand_f32(R * E, 1.0f);
        c.b[i] = bk_rand_f32(R * E, 1.0f);
        c.out[i] = bk_alloc((size_t)RE * 4);
        c.out16[i] = bk_alloc((size_t)RE * 2);
        c.norm[i] = bk_alloc((size_t)R * 4);
        c.d_out[i] = bk_rand_f32(R * E, 0.01f);
        c.d_x[i] = bk_rand_f32(R * E, 0.01f);
        c.dot[i] = bk_rand_f32(R, 0.01f);
    }
    if (bk_want("l2norm_fwd")) {
        double bytes = RE * (4 + 4 + 2) + 4.0 * R;
        bk_timing t = bk_time(l_l2f, &c, n);
        bk_meas m = {"l2norm_fwd", sh, "ours", "k_l2norm_fwd", bytes, 0, 0, bytes, "fp32 + bf16 out, norms"};
        bk_report(&m, &t, bk_finite_f32(c.out[0], R * E) && bk_finite_bf16(c.out16[0], R * E));
    }
    if (bk_want("l2norm_bwd")) {
        for (int i = 0; i < n; i++) /* the norms of real rows, as the backward sees them */
            CK(k_l2norm_fwd(c.out[i], NULL, c.norm[i], c.x[i], R, E, 1e-6f, BK.s));
        double bytes = RE * 12 + 4.0 * R;
        bk_timing t = bk_time(l_l2b, &c, n);
        bk_meas m = {"l2norm_bwd", sh, "ours", "k_l2norm_bwd", bytes, 0, 0, bytes, "d_x written (=)"};
        bk_report(&m, &t, bk_finite_f32(c.d_x[0], R * E));
        for (int i = 0; i < n; i++)
            CK(k_l2norm_fwd(NULL, c.out16[i], c.norm[i], c.x[i], R, E, 1e-6f, BK.s));
        bytes = RE * 10 + 4.0 * R;
        t = bk_time(l_l2b16, &c, n);
        bk_meas m16 = {"l2norm_bwd", sh, "ours, forward output in bf16", "k_l2norm_bwd_bf16", bytes, 0, 0, bytes,
                       "the negatives' backward"};
        bk_report(&m16, &t, bk_finite_f32(c.d_x[0], R * E));
    }
    if (bk_want("row_dot")) {
        double bytes = RE * 8 + 4.0 * R;
        bk_timing t = bk_time(l_dot, &c, n);
        bk_meas m = {"row_dot", sh, "ours", "k_row_dot", bytes, 0, 0, bytes, "positive logits"};
        bk_report(&m, &t, bk_finite_f32(c.dot[0], R));
        bytes = RE * 20 + 4.0 * R;
        t = bk_time(l_dotb, &c, n);
        bk_meas m2 = {"row_dot_bwd", sh, "ours", "k_row_dot_bwd", bytes, 0, 0, bytes, "d_a +=, d_b ="};
        bk_report(&m2, &t, bk_finite_f32(c.d_x[0], R * E));
    }
    bk_free_all();
}

/* k_add_rows: the heads' per-position gradients (B x S rows) back into the B x (S+1) token rows. */
static void add_rows_case(int seqs, int E)
{
    if (!bk_want("add_rows"))
        return;
    const int S = BK_POSITIONS - 1;
    l2_ctx c = {.R = (int64_t)seqs * S, .E = E};
    const double RE = (double)c.R * E;
    int32_t *h = gp_xmalloc((size_t)c.R * sizeof *h);
    for (int64_t r = 0; r < c.R; r++)
        h[r] = (int32_t)(r / S * BK_POSITIONS + r % S);
    c.dst_rows = bk_upload(h, (size_t)c.R * 4);
    free(h);
    int n = bk_sets(12 * RE);
    for (int i = 0; i < n; i++) {
        c.x[i] = bk_rand_f32(c.R * E, 0.01f);
        c.out[i] = bk_rand_f32((int64_t)seqs * BK_POSITIONS * E, 0.01f);
    }
    char sh[96];
    snprintf(sh, sizeof sh, "%lldx%d", (long long)c.R, E);
    double bytes = 12 * RE + 4.0 * c.R;
    bk_timing t = bk_time(l_add_rows, &c, n);
    bk_meas m = {"add_rows", sh, "ours", "k_add_rows", bytes, 0, 0, bytes, "dst[dst_rows[r]] += src[r]"};
    bk_report(&m, &t, bk_finite_f32(c.out[0], (int64_t)seqs * BK_POSITIONS * E));
    bk_free_all();
}

typedef struct {
    int64_t R;
    int W;
    float *x[MAXSET], *bias, *dbias, *dout[MAXSET];
    gp_bf16 *out[MAXSET], *dx[MAXSET];
} relu_ctx;

static void l_bias_relu(void *p, int i)
{
    relu_ctx *c = p;
    CK(k_bias_relu_fwd(c->out[i], c->x[i], c->bias, c->R, c->W, BK.s));
}

static void l_relu_bwd(void *p, int i)
{
    relu_ctx *c = p;
    CK(k_relu_bwd(c->dx[i], c->dbias, c->dout[i], c->out[i], c->R, c->W, BK.s));
}

/* The rank head's hidden layer: B samples x 4D. */
static void rank_relu_case(int64_t B, int W)
{
    if (!bk_want("relu"))
        return;
    relu_ctx c = {.R = B, .W = W};
    const double RW = (double)B * W;
    int n = bk_sets(8 * RW);
    c.bias = bk_rand_f32(W, 0.1f);
    c.dbias = bk_rand_f32(W, 0.1f);
    for (int i = 0; i < n; i++) {
        c.x[i] = bk_rand_f32(B * W, 1.0f);
        c.out[i] = bk_alloc((size_t)RW * 2);
        c.dout[i] = bk_rand_f32(B * W, 0.01f);
        c.dx[i] = bk_alloc((size_t)RW * 2);
    }
    char sh[96];
    snprintf(sh, sizeof sh, "%lldx%d", (long long)B, W);
    bk_timing t = bk_time(l_bias_relu, &c, n);
    bk_meas m = {"bias_relu_fwd", sh, "ours", "k_bias_relu_fwd", 6 * RW, 0, 0, 6 * RW, "rank head hidden layer"};
    bk_report(&m, &t, bk_finite_bf16(c.out[0], B * W));
    t = bk_time(l_relu_bwd, &c, n);
    bk_meas m2 = {"relu_bwd", sh, "ours", "k_relu_bwd (+ d_bias)", 8 * RW, 0, 0, 8 * RW, "d_bias column sums"};
    bk_report(&m2, &t, bk_finite_bf16(c.dx[0], B * W));
    bk_free_all();
}

typedef struct {
    int64_t n;
    float *x[MAXSET], *y[MAXSET];
} axpy_ctx;

static void l_axpy(void *p, int i)
{
    axpy_ctx *c = p;
    CK(k_axpy(c->y[i], c->x[i], 0.5f, c->n, BK.s));
}

static void axpy_case(int64_t n)
{
    if (!bk_want("axpy"))
        return;
    axpy_ctx c = {.n = n};
    int k = bk_sets(12.0 * n);
    for (int i = 0; i < k; i++) {
        c.x[i] = bk_rand_f32(n, 1.0f);
        c.y[i] = bk_rand_f32(n, 1.0f);
    }
    char sh[64];
    snprintf(sh, sizeof sh, "%lld", (long long)n);
    bk_timing t = bk_time(l_axpy, &c, k);
    bk_meas m = {"axpy", sh, "ours", "k_axpy", 12.0 * n, 0, 0, 12.0 * n, NULL};
    bk_report(&m, &t, bk_finite_f32(c.y[0], n));
    bk_free_all();
}

void bk_cases_gather(void)
{
    bk_progress("embeddings and head row kernels (L4H64A4 pretrain and L24H1024A16 shapes)");
    embed_case(512, 64, 1000000);
    embed_case(128, 1024, 100000);
    gather_scatter_case(512 * 4096, 64, 1000000, "negatives");
    gather_scatter_case(512 * (BK_POSITIONS - 1), 64, 1000000, "labels");
    gather_scatter_case(512 * 4096, 256, 100000, "negatives"); /* L4H256A4 */
    gather_scatter_case(128 * 4096, 1024, 100000, "negatives");
    add_rows_case(512, 64);
    add_rows_case(128, 1024);
    head_rows_case(512 * (BK_POSITIONS - 1), 64, "positions");
    head_rows_case(512 * 4096, 64, "negatives");
    head_rows_case(128 * (BK_POSITIONS - 1), 1024, "positions");
    rank_relu_case(2048, 4 * 64);
    rank_relu_case(128, 4 * 1024);
    axpy_case((int64_t)512 * BK_POSITIONS * 64);
}
