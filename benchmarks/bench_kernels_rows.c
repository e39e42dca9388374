/* bench_kernels_rows: the per-token kernels of every block at each paper size: residual +
 * RMSNorm forward and backward, RoPE, SwiGLU forward and backward; and the dtype conversions.
 *
 * Alternatives: the fused residual norms against the unfused sequence of existing kernels (an
 * fp32 k_axpy for the residual, then the plain norm; for the backward, the norm without the
 * residual, k_axpy and k_f32_to_bf16); SwiGLU against separate elementwise passes, which no
 * kernel here implements, so that alternative is modeled (its bytes at the copy ceiling: a
 * lower bound for it, not a measurement). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_cases.h"
#include "bench_harness.h"
#include "util.h"

#define MAXSET 16
#define EPS 1e-5f

const bk_size bk_sizes[] = {
    {"L4H32A4", 32, 4, 512},  {"L4H64A4", 64, 4, 512},    {"L4H128A4", 128, 4, 512},      {"L4H256A4", 256, 4, 512},
    {"L8H512A8", 512, 8, 512}, {"L12H768A12", 768, 12, 512}, {"L24H1024A16", 1024, 16, 128},
};
const int bk_n_sizes = (int)(sizeof bk_sizes / sizeof bk_sizes[0]);

int bk_ffn_hidden(int dim)
{
    int hidden = 2 * (4 * dim) / 3;
    return 32 * ((hidden + 31) / 32);
}

typedef struct {
    int64_t R;
    int D, F, H;
    int n;
    float *x[MAXSET], *x32b[MAXSET], *sum[MAXSET], *rstd[MAXSET], *w, *dw, *part;
    float *dnorm[MAXSET], *dres[MAXSET], *dout[MAXSET];
    gp_bf16 *delta[MAXSET], *norm[MAXSET], *dout16[MAXSET];
    float *delta32[MAXSET];
    gp_bf16 *qkv[MAXSET], *ab[MAXSET], *g[MAXSET], *dg[MAXSET], *dab[MAXSET];
    int32_t *pos;
} rows_ctx;

static void l_rms_fused(void *p, int i)
{
    rows_ctx *c = p;
    CK(k_residual_rmsnorm_fwd(c->sum[i], c->norm[i], c->rstd[i], c->x[i], c->delta[i], c->w, c->R, c->D, EPS, BK.s));
}

static void l_rms_unfused(void *p, int i)
{
    rows_ctx *c = p;
    CK(k_axpy(c->x32b[i], c->delta32[i], 1.0f, c->R * c->D, BK.s));
    CK(k_residual_rmsnorm_fwd(NULL, c->norm[i], c->rstd[i], c->x32b[i], NULL, c->w, c->R, c->D, EPS, BK.s));
}

static void l_rmsb_fused(void *p, int i)
{
    rows_ctx *c = p;
    CK(k_rmsnorm_bwd(c->dout[i], c->dout16[i], NULL, c->dw, c->dnorm[i], c->dres[i], c->x[i], c->w, c->rstd[i], c->R,
                     c->D, c->part, BK.s));
}

static void l_rmsb_regen(void *p, int i)
{
    rows_ctx *c = p;
    CK(k_rmsnorm_bwd(c->dout[i], c->dout16[i], c->norm[i], c->dw, c->dnorm[i], c->dres[i], c->x[i], c->w, c->rstd[i],
                     c->R, c->D, c->part, BK.s));
}

static void l_rmsb_unfused(void *p, int i)
{
    rows_ctx *c = p;
    CK(k_rmsnorm_bwd(c->dout[i], NULL, NULL, c->dw, c->dnorm[i], NULL, c->x[i], c->w, c->rstd[i], c->R, c->D, c->part,
                     BK.s));
    CK(k_axpy(c->dout[i], c->dres[i], 1.0f, c->R * c->D, BK.s));
    CK(k_f32_to_bf16(c->dout16[i], c->dout[i], c->R * c->D, BK.s));
}

static void l_rope(void *p, int i)
{
    rows_ctx *c = p;
    CK(k_rope_qk(c->qkv[i], c->pos, c->R, c->H, c->D / c->H, 10000.0, 0, BK.s));
}

static void l_swiglu_fwd(void *p, int i)
{
    rows_ctx *c = p;
    CK(k_swiglu_fwd(c->g[i], c->ab[i], c->R, c->F, BK.s));
}

static void l_swiglu_bwd(void *p, int i)
{
    rows_ctx *c = p;
    CK(k_swiglu_bwd(c->dab[i], NULL, c->dg[i], c->ab[i], c->R, c->F, BK.s));
}

static void l_swiglu_bwd_g(void *p, int i)
{
    rows_ctx *c = p;
    CK(k_swiglu_bwd(c->dab[i], c->g[i], c->dg[i], c->ab[i], c->R, c->F, BK.s));
}

static void rmsnorm_cases(const bk_size *z, char *shape)
{
    rows_ctx c = {.R = (int64_t)z->seqs * BK_POSITIONS, .D = z->dim};
    const double RD = (double)c.R * c.D;
    if (bk_want("residual_rmsnorm_fwd")) {
        double bytes = RD * (4 + 2 + 4 + 2) + 4.0 * c.R + 4.0 * c.D;
        c.n = bk_sets(bytes);
        c.w = bk_rand_f32_pos(c.D, 0.5f, 1.5f);
        for (int i = 0; i < c.n; i++) {
            c.x[i] = bk_rand_f32(c.R * c.D, 1.0f);
            c.delta[i] = bk_rand_bf16(c.R * c.D, 0.5f);
            c.sum[i] = bk_alloc((size_t)RD * 4);
            c.norm[i] = bk_alloc((size_t)RD * 2);
            c.rstd[i] = bk_alloc((size_t)c.R * 4);
        }
        bk_timing t = bk_time(l_rms_fused, &c, c.n);
        bk_meas m = {"residual_rmsnorm_fwd", shape, "ours", "k_residual_rmsnorm_fwd", bytes, 0, 0, bytes,
                     "sum = x + delta(bf16); norm(bf16), rstd"};
        bk_report(&m, &t, bk_finite_f32(c.sum[0], c.R * c.D) && bk_finite_bf16(c.norm[0], c.R * c.D));
        for (int i = 0; i < c.n; i++) {
            c.x32b[i] = bk_rand_f32(c.R * c.D, 1.0f);
            c.delta32[i] = bk_rand_f32(c.R * c.D, 0.5f);
        }
        t = bk_time(l_rms_unfused, &c, c.n);
        bk_meas a = {"residual_rmsnorm_fwd", shape, "unfused: k_axpy(fp32 delta) + norm", "k_axpy; k_residual_rmsnorm_fwd(delta NULL)",
                     bytes, RD * (12 + 4 + 2) + 4.0 * c.R, 0, RD * 16,
                     "the unfused residual reads an fp32 delta (no bf16 add kernel exists)"};
        bk_report(&a, &t, bk_finite_bf16(c.norm[0], c.R * c.D));
        bk_free_all();
    }
    if (bk_want("rmsnorm_bwd")) {
        double bytes = RD * (4 * 4 + 2) + 4.0 * c.R + 8.0 * c.D;
        c.n = bk_sets(bytes);
        c.w = bk_rand_f32_pos(c.D, 0.5f, 1.5f);
        c.dw = bk_rand_f32(c.D, 0.1f);
        c.part = bk_alloc((size_t)k_rmsnorm_bwd_partial_floats(c.R, c.D) * 4);
        for (int i = 0; i < c.n; i++) {
            c.x[i] = bk_rand_f32(c.R * c.D, 1.0f);
            c.dnorm[i] = bk_rand_f32(c.R * c.D, 0.01f);
            c.dres[i] = bk_rand_f32(c.R * c.D, 0.01f);
            c.rstd[i] = bk_rand_f32_pos(c.R, 0.5f, 2.0f);
            c.dout[i] = bk_alloc((size_t)RD * 4);
            c.dout16[i] = bk_alloc((size_t)RD * 2);
        }
        bk_timing t = bk_time(l_rmsb_fused, &c, c.n);
        bk_meas m = {"rmsnorm_bwd", shape, "ours", "k_rmsnorm_bwd", bytes, 0, 0, bytes,
                     "d_x = d_resid + dnorm/dx (fp32 + bf16), d_w (deterministic)"};
        bk_report(&m, &t, bk_finite_f32(c.dout[0], c.R * c.D) && bk_finite_bf16(c.dout16[0], c.R * c.D));
        t = bk_time(l_rmsb_unfused, &c, c.n);
        bk_meas a = {"rmsnorm_bwd", shape, "unfused: norm bwd + k_axpy + k_f32_to_bf16",
                     "k_rmsnorm_bwd(d_resid NULL); k_axpy; k_f32_to_bf16", bytes, RD * (16 + 12 + 6) + 4.0 * c.R, 0,
                     bytes, NULL};
        bk_report(&a, &t, bk_finite_bf16(c.dout16[0], c.R * c.D));
        /* as the model runs it in the blocks: the norm output regenerated for the weight gradient */
        for (int i = 0; i < c.n; i++)
            c.norm[i] = bk_alloc((size_t)RD * 2);
        double rbytes = bytes + RD * 2;
        bk_timing tr = bk_time(l_rmsb_regen, &c, c.n);
        bk_meas mr = {"rmsnorm_bwd_regen_n", shape, "ours", "k_rmsnorm_bwd(norm_regen)", rbytes, 0, 0, rbytes,
                      "the same plus the forward's bf16 norm output again (the model's call in the blocks)"};
        bk_report(&mr, &tr, bk_finite_bf16(c.norm[0], c.R * c.D));
        bk_free_all();
    }
}

static void block_pointwise_cases(const bk_size *z, char *shape)
{
    rows_ctx c = {.R = (int64_t)z->seqs * BK_POSITIONS, .D = z->dim, .H = z->heads, .F = bk_ffn_hidden(z->dim)};
    const double RD = (double)c.R * c.D, RF = (double)c.R * c.F;
    if (bk_want("rope_qk")) {
        double bytes = RD * 8 + 4.0 * c.R; /* q and k read and written, bf16; v untouched */
        c.n = bk_sets(bytes);
        int32_t *hpos = gp_xmalloc((size_t)c.R * sizeof *hpos);
        for (int64_t r = 0; r < c.R; r++)
            hpos[r] = (int32_t)(r % BK_POSITIONS);
        c.pos = bk_upload(hpos, (size_t)c.R * 4);
        free(hpos);
        for (int i = 0; i < c.n; i++)
            c.qkv[i] = bk_rand_bf16(c.R * 3 * c.D, 1.0f);
        bk_timing t = bk_time(l_rope, &c, c.n);
        char sh[96];
        snprintf(sh, sizeof sh, "%s %dx%d", shape, c.H, c.D / c.H);
        bk_meas m = {"rope_qk", sh, "ours", "k_rope_qk", bytes, 0, 0, bytes, "in place on q and k of packed qkv"};
        bk_report(&m, &t, bk_finite_bf16(c.qkv[0], c.R * 3 * c.D));
        bk_free_all();
    }
    char sh[96];
    snprintf(sh, sizeof sh, "%s %lldx%d", z->name, (long long)c.R, c.F);
    if (bk_want("swiglu_fwd")) {
        double bytes = RF * 6;
        c.n = bk_sets(bytes);
        for (int i = 0; i < c.n; i++) {
            c.ab[i] = bk_rand_bf16(c.R * 2 * c.F, 1.0f);
            c.g[i] = bk_alloc((size_t)RF * 2);
        }
        bk_timing t = bk_time(l_swiglu_fwd, &c, c.n);
        bk_meas m = {"swiglu_fwd", sh, "ours", "k_swiglu_fwd", bytes, 0, 0, bytes, "g = silu(a) * b, bf16"};
        bk_report(&m, &t, bk_finite_bf16(c.g[0], c.R * c.F));
        bk_meas a = {"swiglu_fwd", sh, "unfused passes: silu, then multiply", "(not run)", bytes, RF * 10, 0, 0,
                     "silu reads a, writes s; multiply reads s and b, writes g"};
        bk_report_modeled(&a, "bytes of the two passes at the measured copy ceiling");
        bk_free_all();
    }
    if (bk_want("swiglu_bwd")) {
        double bytes = RF * 10;
        c.n = bk_sets(bytes);
        for (int i = 0; i < c.n; i++) {
            c.ab[i] = bk_rand_bf16(c.R * 2 * c.F, 1.0f);
            c.dg[i] = bk_rand_bf16(c.R * c.F, 0.01f);
            c.dab[i] = bk_alloc((size_t)RF * 4);
        }
        bk_timing t = bk_time(l_swiglu_bwd, &c, c.n);
        bk_meas m = {"swiglu_bwd", sh, "ours", "k_swiglu_bwd", bytes, 0, 0, bytes, "d_ab from d_g and ab, bf16"};
        bk_report(&m, &t, bk_finite_bf16(c.dab[0], c.R * 2 * c.F));
        /* as the model runs it: g regenerated for the W2 weight gradient instead of kept from the forward */
        for (int i = 0; i < c.n; i++)
            c.g[i] = bk_alloc((size_t)RF * 2);
        bk_timing tg = bk_time(l_swiglu_bwd_g, &c, c.n);
        bk_meas mg = {"swiglu_bwd_regen_g", sh, "ours", "k_swiglu_bwd(g)", RF * 12, 0, 0, RF * 12,
                      "d_ab and g from d_g and ab, bf16 (the model's call)"};
        bk_report(&mg, &tg, bk_finite_bf16(c.g[0], c.R * c.F));
        bk_meas a = {"swiglu_bwd", sh, "unfused passes: silu, d_b, d_s, d_a", "(not run)", bytes, RF * 22, 0, 0,
                     "recompute silu(a); d_b = d_g*s; d_s = d_g*b; d_a = d_s*silu'(a)"};
        bk_report_modeled(&a, "bytes of the four passes at the measured copy ceiling");
        bk_free_all();
    }
}

typedef struct {
    int64_t n;
    int k;
    float *f[MAXSET];
    gp_bf16 *h[MAXSET];
} conv_ctx;

static void l_f2b(void *p, int i)
{
    conv_ctx *c = p;
    CK(k_f32_to_bf16(c->h[i], c->f[i], c->n, BK.s));
}

static void l_b2f(void *p, int i)
{
    conv_ctx *c = p;
    CK(k_bf16_to_f32(c->f[i], c->h[i], c->n, BK.s));
}

static void conversion_cases(void)
{
    static const int64_t shapes[][2] = {{512 * BK_POSITIONS, 64}, {128 * BK_POSITIONS, 1024}};
    for (int s = 0; s < 2; s++) {
        conv_ctx c = {.n = shapes[s][0] * shapes[s][1]};
        char sh[64];
        snprintf(sh, sizeof sh, "%lldx%lld", (long long)shapes[s][0], (long long)shapes[s][1]);
        double bytes = 6.0 * (double)c.n;
        int n = bk_sets(bytes);
        if (bk_want("f32_to_bf16")) {
            for (int i = 0; i < n; i++) {
                c.f[i] = bk_rand_f32(c.n, 1.0f);
                c.h[i] = bk_alloc((size_t)c.n * 2);
            }
            bk_timing t = bk_time(l_f2b, &c, n);
            bk_meas m = {"f32_to_bf16", sh, "ours", "k_f32_to_bf16", bytes, 0, 0, bytes, NULL};
            bk_report(&m, &t, bk_finite_bf16(c.h[0], c.n));
            bk_free_all();
        }
        if (bk_want("bf16_to_f32")) {
            for (int i = 0; i < n; i++) {
                c.h[i] = bk_rand_bf16(c.n, 1.0f);
                c.f[i] = bk_alloc((size_t)c.n * 4);
            }
            bk_timing t = bk_time(l_b2f, &c, n);
            bk_meas m = {"bf16_to_f32", sh, "ours", "k_bf16_to_f32", bytes, 0, 0, bytes, NULL};
            bk_report(&m, &t, bk_finite_f32(c.f[0], c.n));
            bk_free_all();
        }
    }
}

void bk_cases_rows(void)
{
    bk_progress("block row kernels at each paper size");
    for (int zi = 0; zi < bk_n_sizes; zi++) {
        const bk_size *z = &bk_sizes[zi];
        char shape[64];
        snprintf(shape, sizeof shape, "%s %dx%d", z->name, z->seqs * BK_POSITIONS, z->dim);
        rmsnorm_cases(z, shape);
        block_pointwise_cases(z, shape);
    }
    conversion_cases();
}
