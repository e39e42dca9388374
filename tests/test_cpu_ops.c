/* Tests of cpu/ops: forward values against naive double implementations written here,
 * gradients of the double versions against central finite differences (tests/gradcheck.h),
 * float against double on the same inputs, and bit-identical results for 1, 2 and 3 threads.
 * Sizes are odd on purpose (rows 1, 7, 33, 300; dims that are not multiples of 4 or 8) so
 * that every tail path of the blocked kernels runs. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "gradcheck.h"
#include "rng.h"
#include "test.h"
#include "util.h"

/* ---- helpers ---------------------------------------------------------------------------- */
static uint64_t draw_counter; /* every draw gets its own stream: fresh inputs everywhere */

static double *rnd(int64_t n, double lo, double hi)
{
    double *x = gp_xmalloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    gp_rng r = gp_rng_stream(20240611, RNG_PURPOSE_TEST, 7, ++draw_counter);
    for (int64_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * gp_rng_uniform(&r);
    return x;
}

static int32_t *rnd_ids(int64_t n, int32_t below)
{
    int32_t *x = gp_xmalloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
    gp_rng r = gp_rng_stream(20240611, RNG_PURPOSE_TEST, 8, ++draw_counter);
    for (int64_t i = 0; i < n; i++)
        x[i] = (int32_t)gp_rng_below(&r, (uint32_t)below);
    return x;
}

static double *zeros(int64_t n)
{
    return gp_xcalloc((size_t)(n > 0 ? n : 1), sizeof(double));
}

static double *dup(const double *x, int64_t n)
{
    double *y = gp_xmalloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    memcpy(y, x, (size_t)n * sizeof(double));
    return y;
}

static float *to_f(const double *x, int64_t n)
{
    float *y = gp_xmalloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)x[i];
    return y;
}

/* x rounded to float and back, so float and double versions see the same inputs. */
static void round_f(double *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = (double)(float)x[i];
}

static double *sub(const double *a, const double *b, int64_t n)
{
    double *y = gp_xmalloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] - (b ? b[i] : 0);
    return y;
}

/* max |a - b| / max(max |b|, tiny): error relative to the tensor's scale. */
static double rel_err(const double *a, const double *b, int64_t n)
{
    double m = 0, d = 0;
    for (int64_t i = 0; i < n; i++) {
        m = fmax(m, fabs(b[i]));
        double e = fabs(a[i] - b[i]);
        d = e > d || isnan(e) ? e : d;
    }
    return d / fmax(m, 1e-300);
}

static double rel_err_f(const float *a, const double *b, int64_t n)
{
    double m = 0, d = 0;
    for (int64_t i = 0; i < n; i++) {
        m = fmax(m, fabs(b[i]));
        double e = fabs((double)a[i] - b[i]);
        d = e > d || isnan(e) ? e : d;
    }
    return d / fmax(m, 1e-300);
}

#define FREE(...)                                                     \
    do {                                                              \
        void *_p[] = {__VA_ARGS__};                                   \
        for (size_t _i = 0; _i < sizeof _p / sizeof _p[0]; _i++)     \
            free(_p[_i]);                                             \
    } while (0)

/* ---- naive double references -------------------------------------------------------------- */
static void naive_linear(double *out, const double *x, const double *w, const double *b, int64_t rows, int in,
                         int out_dim)
{
    for (int64_t r = 0; r < rows; r++)
        for (int o = 0; o < out_dim; o++) {
            long double s = b ? b[o] : 0;
            for (int i = 0; i < in; i++)
                s += (long double)x[r * in + i] * w[(int64_t)o * in + i];
            out[r * out_dim + o] = (double)s;
        }
}

/* Attention through the explicit score matrix of all packed rows, masked to the same sequence
 * (and to earlier positions when causal). */
static void naive_attention(double *out, double *lse, const double *q, const double *k, const double *v,
                            const int64_t *off, const int32_t *len, int n_seq, int64_t rows, int H, int hd,
                            int causal)
{
    int64_t stride = (int64_t)H * hd;
    int *seq_of = gp_xmalloc((size_t)rows * sizeof(int));
    int *pos_of = gp_xmalloc((size_t)rows * sizeof(int));
    for (int64_t r = 0; r < rows; r++)
        seq_of[r] = -1;
    for (int s = 0; s < n_seq; s++)
        for (int t = 0; t < len[s]; t++) {
            seq_of[off[s] + t] = s;
            pos_of[off[s] + t] = t;
        }
    double *S = gp_xmalloc((size_t)(rows * rows) * sizeof(double));
    for (int h = 0; h < H; h++) {
        for (int64_t a = 0; a < rows; a++)
            for (int64_t b = 0; b < rows; b++) {
                int visible = seq_of[a] >= 0 && seq_of[a] == seq_of[b] && (!causal || pos_of[b] <= pos_of[a]);
                double s = 0;
                for (int d = 0; d < hd; d++)
                    s += q[a * stride + h * hd + d] * k[b * stride + h * hd + d];
                S[a * rows + b] = visible ? s / sqrt((double)hd) : -INFINITY;
            }
        for (int64_t a = 0; a < rows; a++) {
            if (seq_of[a] < 0)
                continue;
            double mx = -INFINITY, sum = 0;
            for (int64_t b = 0; b < rows; b++)
                mx = fmax(mx, S[a * rows + b]);
            for (int64_t b = 0; b < rows; b++)
                sum += exp(S[a * rows + b] - mx);
            lse[a * H + h] = mx + log(sum);
            for (int d = 0; d < hd; d++) {
                double o = 0;
                for (int64_t b = 0; b < rows; b++)
                    o += exp(S[a * rows + b] - mx) / sum * v[b * stride + h * hd + d];
                out[a * stride + h * hd + d] = o;
            }
        }
    }
    FREE(S, seq_of, pos_of);
}

/* The official sampled softmax spelled out: the logit list with rejected negatives pushed to
 * -1e6 (and the commented-out log-count correction when logq), cross-entropy on slot 0. */
static double naive_sampled_softmax(const double *h, const double *pos, const double *neg, const int32_t *label,
                                    const int32_t *neg_ids, const int32_t *row_seq, int64_t n_rows, int n_neg,
                                    int dim, double inv_temp, int logq)
{
    double total = 0;
    double *z = gp_xmalloc((size_t)(n_neg + 1) * sizeof(double));
    for (int64_t p = 0; p < n_rows; p++) {
        int s = row_seq[p];
        int rejected = 0;
        for (int j = 0; j < n_neg; j++)
            rejected += neg_ids[s * n_neg + j] == label[p];
        double s0 = 0;
        for (int d = 0; d < dim; d++)
            s0 += h[p * dim + d] * pos[p * dim + d];
        z[0] = s0 * inv_temp;
        for (int j = 0; j < n_neg; j++) {
            double sj = 0;
            for (int d = 0; d < dim; d++)
                sj += h[p * dim + d] * neg[((int64_t)s * n_neg + j) * dim + d];
            sj -= 1e6 * (neg_ids[s * n_neg + j] == label[p]);
            if (logq && n_neg - rejected > 0)
                sj -= log((double)(n_neg - rejected));
            z[1 + j] = sj * inv_temp;
        }
        double mx = z[0], sum = 0;
        for (int j = 1; j <= n_neg; j++)
            mx = fmax(mx, z[j]);
        for (int j = 0; j <= n_neg; j++)
            sum += exp(z[j] - mx);
        total += mx + log(sum) - z[0];
    }
    free(z);
    return total;
}

/* ---- linear ------------------------------------------------------------------------------- */
typedef struct {
    double *x, *w, *b, *wts, *out;
    int64_t rows;
    int in, out_dim;
} lin_ctx;

static double lin_loss(void *p)
{
    lin_ctx *c = p;
    cpu_linear_fwd_f64(c->out, c->x, c->w, c->b, c->rows, c->in, c->out_dim);
    return gc_project(c->out, c->wts, c->rows * c->out_dim);
}

TEST(cpu_ops_linear_grad)
{
    const int64_t rows_list[] = {1, 7, 33, 300};
    const int in_list[] = {1, 5, 37};
    const int out_list[] = {3, 13, 35};
    int case_no = 0;
    for (int ri = 0; ri < 4; ri++)
        for (int ii = 0; ii < 3; ii++)
            for (int oi = 0; oi < 3; oi++, case_no++) {
                int64_t rows = rows_list[ri];
                int in = in_list[ii], od = out_list[oi];
                int use_bias = case_no % 2, accumulate = (case_no / 2) % 2;
                lin_ctx c = {rnd(rows * in, -1, 1), rnd((int64_t)od * in, -1, 1), use_bias ? rnd(od, -1, 1) : NULL,
                             rnd(rows * od, -1, 1), zeros(rows * od), rows, in, od};
                double *ref = zeros(rows * od);
                naive_linear(ref, c.x, c.w, c.b, rows, in, od);
                lin_loss(&c);
                double e = rel_err(c.out, ref, rows * od);
                CHECK(e < 1e-13, "linear fwd rows %lld in %d out %d: rel err %g", (long long)rows, in, od, e);

                double *pre_in = rnd(rows * in, -1, 1), *pre_w = rnd((int64_t)od * in, -1, 1), *pre_b = rnd(od, -1, 1);
                double *d_in = dup(pre_in, rows * in), *d_w = dup(pre_w, (int64_t)od * in), *d_b = dup(pre_b, od);
                cpu_linear_bwd_f64(d_in, d_w, use_bias ? d_b : NULL, c.wts, c.x, c.w, rows, in, od, accumulate);
                double *g_in = sub(d_in, accumulate ? pre_in : NULL, rows * in);
                double *g_w = sub(d_w, pre_w, (int64_t)od * in), *g_b = sub(d_b, pre_b, od);
                char what[96];
                snprintf(what, sizeof what, "linear d_in (rows %lld in %d out %d)", (long long)rows, in, od);
                gc_check(what, c.x, rows * in, g_in, lin_loss, &c, 1e-5, 1e-6, 40);
                snprintf(what, sizeof what, "linear d_w (rows %lld in %d out %d)", (long long)rows, in, od);
                gc_check(what, c.w, (int64_t)od * in, g_w, lin_loss, &c, 1e-5, 1e-6, 40);
                if (use_bias) {
                    snprintf(what, sizeof what, "linear d_bias (rows %lld in %d out %d)", (long long)rows, in, od);
                    gc_check(what, c.b, od, g_b, lin_loss, &c, 1e-5, 1e-6, 40);
                } else {
                    CHECK(memcmp(d_b, pre_b, (size_t)od * sizeof(double)) == 0, "d_bias touched without a bias");
                }
                /* any gradient may be NULL; d_in alone gives the same values */
                double *d_in2 = dup(pre_in, rows * in);
                cpu_linear_bwd_f64(d_in2, NULL, NULL, c.wts, c.x, c.w, rows, in, od, accumulate);
                CHECK(memcmp(d_in2, d_in, (size_t)(rows * in) * sizeof(double)) == 0, "d_in alone differs");
                FREE(c.x, c.w, c.b, c.wts, c.out, ref, pre_in, pre_w, pre_b, d_in, d_w, d_b, g_in, g_w, g_b, d_in2);
            }
}

/* Larger shapes than the gradient check can afford, against the naive product. */
TEST(cpu_ops_linear_fwd_large)
{
    const int shapes[][3] = {{513, 70, 90}, {129, 256, 33}, {66, 17, 200}};
    for (int s = 0; s < 3; s++) {
        int64_t rows = shapes[s][0];
        int in = shapes[s][1], od = shapes[s][2];
        double *x = rnd(rows * in, -1, 1), *w = rnd((int64_t)od * in, -1, 1), *b = rnd(od, -1, 1);
        double *out = zeros(rows * od), *ref = zeros(rows * od);
        cpu_linear_fwd_f64(out, x, w, b, rows, in, od);
        naive_linear(ref, x, w, b, rows, in, od);
        double e = rel_err(out, ref, rows * od);
        CHECK(e < 1e-13, "linear fwd %lldx%dx%d: %g", (long long)rows, in, od, e);
        /* d_w and d_bias against naive sums over rows (several reduction chunks) */
        double *dy = rnd(rows * od, -1, 1), *dw = zeros((int64_t)od * in), *db = zeros(od), *dx = zeros(rows * in);
        cpu_linear_bwd_f64(dx, dw, db, dy, x, w, rows, in, od, 0);
        double *rdw = zeros((int64_t)od * in), *rdb = zeros(od), *rdx = zeros(rows * in);
        for (int64_t r = 0; r < rows; r++)
            for (int o = 0; o < od; o++) {
                rdb[o] += dy[r * od + o];
                for (int i = 0; i < in; i++) {
                    rdw[(int64_t)o * in + i] += dy[r * od + o] * x[r * in + i];
                    rdx[r * in + i] += dy[r * od + o] * w[(int64_t)o * in + i];
                }
            }
        CHECK(rel_err(dw, rdw, (int64_t)od * in) < 1e-13, "d_w %g", rel_err(dw, rdw, (int64_t)od * in));
        CHECK(rel_err(db, rdb, od) < 1e-13, "d_bias %g", rel_err(db, rdb, od));
        CHECK(rel_err(dx, rdx, rows * in) < 1e-13, "d_in %g", rel_err(dx, rdx, rows * in));
        FREE(x, w, b, out, ref, dy, dw, db, dx, rdw, rdb, rdx);
    }
}

/* ---- rmsnorm and l2norm ------------------------------------------------------------------- */
typedef struct {
    double *x, *w, *wts, *out, *stat;
    int64_t rows;
    int dim;
    double eps;
} norm_ctx;

static double rms_loss(void *p)
{
    norm_ctx *c = p;
    cpu_rmsnorm_fwd_f64(c->out, c->stat, c->x, c->w, c->rows, c->dim, c->eps);
    return gc_project(c->out, c->wts, c->rows * c->dim);
}

static double l2_loss(void *p)
{
    norm_ctx *c = p;
    cpu_l2norm_fwd_f64(c->out, c->stat, c->x, c->rows, c->dim, c->eps);
    return gc_project(c->out, c->wts, c->rows * c->dim);
}

TEST(cpu_ops_rmsnorm_grad)
{
    const int64_t rows_list[] = {1, 7, 33};
    const int dims[] = {1, 5, 19, 67};
    for (int ri = 0; ri < 3; ri++)
        for (int di = 0; di < 4; di++) {
            int64_t rows = rows_list[ri];
            int dim = dims[di], accumulate = (ri + di) % 2;
            norm_ctx c = {rnd(rows * dim, -1, 1), rnd(dim, 0.5, 1.5), rnd(rows * dim, -1, 1), zeros(rows * dim),
                          zeros(rows), rows, dim, 1e-5};
            rms_loss(&c);
            for (int64_t r = 0; r < rows; r++) {
                double ss = 0;
                for (int i = 0; i < dim; i++)
                    ss += c.x[r * dim + i] * c.x[r * dim + i];
                double rs = 1 / sqrt(ss / dim + 1e-5);
                CHECK_NEAR(c.stat[r], rs, 1e-12 * rs);
                for (int i = 0; i < dim; i++)
                    CHECK_NEAR(c.out[r * dim + i], c.x[r * dim + i] * rs * c.w[i], 1e-12);
            }
            double *pre_in = rnd(rows * dim, -1, 1), *pre_w = rnd(dim, -1, 1);
            double *d_in = dup(pre_in, rows * dim), *d_w = dup(pre_w, dim);
            cpu_rmsnorm_bwd_f64(d_in, d_w, c.wts, c.x, c.w, c.stat, rows, dim, accumulate);
            double *g_in = sub(d_in, accumulate ? pre_in : NULL, rows * dim), *g_w = sub(d_w, pre_w, dim);
            gc_check("rmsnorm d_in", c.x, rows * dim, g_in, rms_loss, &c, 1e-5, 1e-6, 60);
            gc_check("rmsnorm d_w", c.w, dim, g_w, rms_loss, &c, 1e-5, 1e-6, 60);
            FREE(c.x, c.w, c.wts, c.out, c.stat, pre_in, pre_w, d_in, d_w, g_in, g_w);
        }
}

TEST(cpu_ops_l2norm_grad)
{
    const int64_t rows_list[] = {1, 7, 33};
    const int dims[] = {1, 6, 19};
    for (int ri = 0; ri < 3; ri++)
        for (int di = 0; di < 3; di++) {
            int64_t rows = rows_list[ri];
            int dim = dims[di], accumulate = (ri + di) % 2;
            norm_ctx c = {rnd(rows * dim, -1, 1), NULL, rnd(rows * dim, -1, 1), zeros(rows * dim), zeros(rows), rows,
                          dim, 1e-6};
            l2_loss(&c);
            for (int64_t r = 0; r < rows; r++) {
                double n = 0;
                for (int i = 0; i < dim; i++)
                    n += c.x[r * dim + i] * c.x[r * dim + i];
                n = sqrt(n);
                CHECK_NEAR(c.stat[r], n, 1e-13 * n);
                for (int i = 0; i < dim; i++)
                    CHECK_NEAR(c.out[r * dim + i], c.x[r * dim + i] / n, 1e-13);
            }
            double *pre = rnd(rows * dim, -1, 1), *d_in = dup(pre, rows * dim);
            cpu_l2norm_bwd_f64(d_in, c.wts, c.out, c.stat, rows, dim, 1e-6, accumulate);
            double *g = sub(d_in, accumulate ? pre : NULL, rows * dim);
            gc_check("l2norm d_in", c.x, rows * dim, g, l2_loss, &c, 1e-6, 1e-6, 60);
            FREE(c.x, c.wts, c.out, c.stat, pre, d_in, g);
        }
    /* the clamp branch: a zero row and a tiny row, where out = x / eps */
    int dim = 5;
    norm_ctx c = {rnd(2 * dim, -1e-9, 1e-9), NULL, rnd(2 * dim, -1, 1), zeros(2 * dim), zeros(2), 2, dim, 1e-6};
    for (int i = 0; i < dim; i++)
        c.x[i] = 0;
    l2_loss(&c);
    for (int i = 0; i < 2 * dim; i++)
        CHECK_NEAR(c.out[i], c.x[i] / 1e-6, 1e-15);
    CHECK(c.stat[0] == 0, "zero row norm %g", c.stat[0]);
    double *d_in = zeros(2 * dim);
    cpu_l2norm_bwd_f64(d_in, c.wts, c.out, c.stat, 2, dim, 1e-6, 0);
    for (int i = 0; i < 2 * dim; i++)
        CHECK_NEAR(d_in[i], c.wts[i] / 1e-6, 1e-6);
    gc_check("l2norm clamp d_in", c.x, 2 * dim, d_in, l2_loss, &c, 1e-12, 1e-6, 100);
    FREE(c.x, c.wts, c.out, c.stat, d_in);
}

/* ---- rope --------------------------------------------------------------------------------- */
typedef struct {
    double *x, *wts, *out;
    int32_t *pos;
    int64_t rows;
    int heads, hd;
} rope_ctx;

static double rope_loss(void *p)
{
    rope_ctx *c = p;
    int64_t n = c->rows * c->heads * c->hd;
    memcpy(c->out, c->x, (size_t)n * sizeof(double));
    cpu_rope_fwd_f64(c->out, c->pos, c->rows, c->heads, c->hd, 10000.0);
    return gc_project(c->out, c->wts, n);
}

TEST(cpu_ops_rope)
{
    const int hds[] = {2, 4, 8, 16};
    const int64_t rows_list[] = {1, 7, 33};
    for (int hi = 0; hi < 4; hi++)
        for (int ri = 0; ri < 3; ri++) {
            int hd = hds[hi], heads = 1 + (hi + ri) % 3;
            int64_t rows = rows_list[ri], n = rows * heads * hd;
            rope_ctx c = {rnd(n, -1, 1), rnd(n, -1, 1), zeros(n), rnd_ids(rows, 60), rows, heads, hd};
            rope_loss(&c);
            /* interleaved pairs rotated by pos * theta^(-2i/hd), the angle in exact arithmetic
             * (the op rounds it to float as the official model does, hence 1e-5) */
            double worst = 0;
            for (int64_t r = 0; r < rows; r++)
                for (int h = 0; h < heads; h++)
                    for (int i = 0; i < hd / 2; i++) {
                        double ang = c.pos[r] * pow(10000.0, -2.0 * i / hd);
                        int64_t o = (r * heads + h) * hd + 2 * i;
                        double a = c.x[o], b = c.x[o + 1];
                        worst = fmax(worst, fabs(c.out[o] - (a * cos(ang) - b * sin(ang))));
                        worst = fmax(worst, fabs(c.out[o + 1] - (a * sin(ang) + b * cos(ang))));
                    }
            CHECK(worst < 1e-5, "rope hd %d vs exact angles: %g", hd, worst);
            /* the float-built angle of the official model, exactly */
            float *xf = to_f(c.x, n);
            cpu_rope_fwd(xf, c.pos, rows, heads, hd, 10000.0);
            worst = 0;
            for (int64_t r = 0; r < rows; r++)
                for (int h = 0; h < heads; h++)
                    for (int i = 0; i < hd / 2; i++) {
                        float freq = 1.0f / powf(10000.0f, (float)(2 * i) / (float)hd);
                        double ang = (double)((float)c.pos[r] * freq);
                        int64_t o = (r * heads + h) * hd + 2 * i;
                        double a = (float)c.x[o], b = (float)c.x[o + 1];
                        worst = fmax(worst, fabs(xf[o] - (a * cos(ang) - b * sin(ang))));
                        worst = fmax(worst, fabs(xf[o + 1] - (a * sin(ang) + b * cos(ang))));
                    }
            CHECK(worst < 1e-6, "float rope hd %d vs the official float angles: %g", hd, worst);
            /* backward is the inverse rotation */
            double *back = dup(c.out, n);
            cpu_rope_bwd_f64(back, c.pos, rows, heads, hd, 10000.0);
            CHECK(rel_err(back, c.x, n) < 1e-14, "rope_bwd(rope_fwd(x)) != x: %g", rel_err(back, c.x, n));
            cpu_rope_bwd(xf, c.pos, rows, heads, hd, 10000.0);
            CHECK(rel_err_f(xf, c.x, n) < 1e-6, "float rope round trip %g", rel_err_f(xf, c.x, n));
            double *g = dup(c.wts, n);
            cpu_rope_bwd_f64(g, c.pos, rows, heads, hd, 10000.0);
            gc_check("rope dx", c.x, n, g, rope_loss, &c, 1e-5, 1e-6, 60);
            FREE(c.x, c.wts, c.out, c.pos, xf, back, g);
        }
}

/* ---- attention ---------------------------------------------------------------------------- */
typedef struct {
    double *q, *k, *v, *wts, *out, *lse;
    const int64_t *off;
    const int32_t *len;
    int n_seq, heads, hd, causal;
    int64_t rows;
} attn_ctx;

static double attn_loss(void *p)
{
    attn_ctx *c = p;
    cpu_attention_fwd_f64(c->out, c->lse, c->q, c->k, c->v, c->off, c->len, c->n_seq, c->heads, c->hd, c->causal);
    return gc_project(c->out, c->wts, c->rows * c->heads * c->hd);
}

TEST(cpu_ops_attention_grad)
{
    const int32_t len[] = {1, 2, 5, 17};
    const int64_t off[] = {0, 1, 3, 8};
    const int64_t rows = 25;
    const int hds[] = {2, 4, 8, 16};
    for (int hi = 0; hi < 4; hi++)
        for (int causal = 0; causal <= 1; causal++) {
            int hd = hds[hi], heads = 3;
            int64_t n = rows * heads * hd;
            attn_ctx c = {rnd(n, -1, 1), rnd(n, -1, 1), rnd(n, -1, 1), rnd(n, -1, 1), zeros(n), zeros(rows * heads),
                          off, len, 4, heads, hd, causal, rows};
            /* scale q up so the softmax is far from uniform */
            for (int64_t i = 0; i < n; i++)
                c.q[i] *= 2;
            attn_loss(&c);
            double *ref = zeros(n), *ref_lse = zeros(rows * heads);
            naive_attention(ref, ref_lse, c.q, c.k, c.v, off, len, 4, rows, heads, hd, causal);
            CHECK(rel_err(c.out, ref, n) < 1e-13, "attention hd %d causal %d out: %g", hd, causal,
                  rel_err(c.out, ref, n));
            CHECK(rel_err(c.lse, ref_lse, rows * heads) < 1e-13, "attention lse: %g",
                  rel_err(c.lse, ref_lse, rows * heads));
            double *dq = zeros(n), *dk = zeros(n), *dv = zeros(n);
            cpu_attention_bwd_f64(dq, dk, dv, c.wts, c.q, c.k, c.v, c.out, c.lse, off, len, 4, heads, hd, causal);
            char what[64];
            snprintf(what, sizeof what, "attention dq (hd %d causal %d)", hd, causal);
            gc_check(what, c.q, n, dq, attn_loss, &c, 1e-5, 1e-6, 50);
            snprintf(what, sizeof what, "attention dk (hd %d causal %d)", hd, causal);
            gc_check(what, c.k, n, dk, attn_loss, &c, 1e-5, 1e-6, 50);
            snprintf(what, sizeof what, "attention dv (hd %d causal %d)", hd, causal);
            gc_check(what, c.v, n, dv, attn_loss, &c, 1e-5, 1e-6, 50);
            FREE(c.q, c.k, c.v, c.wts, c.out, c.lse, ref, ref_lse, dq, dk, dv);
        }
}

/* ---- pointwise ---------------------------------------------------------------------------- */
typedef struct {
    double *a, *b, *wts, *out;
    int64_t n;
} pw_ctx;

static double swiglu_loss(void *p)
{
    pw_ctx *c = p;
    cpu_swiglu_fwd_f64(c->out, c->a, c->b, c->n);
    return gc_project(c->out, c->wts, c->n);
}

static double relu_loss(void *p)
{
    pw_ctx *c = p;
    cpu_relu_fwd_f64(c->out, c->a, c->n);
    return gc_project(c->out, c->wts, c->n);
}

TEST(cpu_ops_pointwise_grad)
{
    int64_t n = 37;
    pw_ctx c = {rnd(n, -6, 6), rnd(n, -2, 2), rnd(n, -1, 1), zeros(n), n};
    swiglu_loss(&c);
    for (int64_t i = 0; i < n; i++)
        CHECK_NEAR(c.out[i], c.a[i] / (1 + exp(-c.a[i])) * c.b[i], 1e-14);
    double *da = zeros(n), *db = zeros(n);
    cpu_swiglu_bwd_f64(da, db, c.wts, c.a, c.b, n);
    gc_check("swiglu da", c.a, n, da, swiglu_loss, &c, 1e-5, 1e-6, 100);
    gc_check("swiglu db", c.b, n, db, swiglu_loss, &c, 1e-5, 1e-6, 100);
    /* relu away from its kink */
    for (int64_t i = 0; i < n; i++)
        c.a[i] = (i % 3 ? 1 : -1) * (0.1 + fabs(c.a[i]));
    relu_loss(&c);
    for (int64_t i = 0; i < n; i++)
        CHECK(c.out[i] == (c.a[i] > 0 ? c.a[i] : 0), "relu %g -> %g", c.a[i], c.out[i]);
    cpu_relu_bwd_f64(da, c.wts, c.out, n);
    gc_check("relu d_in", c.a, n, da, relu_loss, &c, 1e-6, 1e-6, 100);
    FREE(c.a, c.b, c.wts, c.out, da, db);
}

/* ---- embeddings --------------------------------------------------------------------------- */
typedef struct {
    double *table, *wts, *out;
    int32_t *ids;
    int64_t rows;
    int dim;
} emb_ctx;

static double emb_loss(void *p)
{
    emb_ctx *c = p;
    cpu_embedding_fwd_f64(c->out, c->table, c->ids, c->rows, c->dim, 0);
    return gc_project(c->out, c->wts, c->rows * c->dim);
}

TEST(cpu_ops_embedding)
{
    const int vocab = 11, dim = 5;
    const int64_t rows = 29; /* more rows than ids: repeats are certain */
    emb_ctx c = {rnd((int64_t)vocab * dim, -1, 1), rnd(rows * dim, -1, 1), zeros(rows * dim), rnd_ids(rows, vocab),
                 rows, dim};
    emb_loss(&c);
    for (int64_t r = 0; r < rows; r++)
        CHECK(memcmp(c.out + r * dim, c.table + (int64_t)c.ids[r] * dim, dim * sizeof(double)) == 0, "gather row %lld",
              (long long)r);
    double *acc = rnd(rows * dim, -1, 1), *acc0 = dup(acc, rows * dim);
    cpu_embedding_fwd_f64(acc, c.table, c.ids, rows, dim, 1);
    for (int64_t r = 0; r < rows; r++)
        for (int i = 0; i < dim; i++)
            CHECK(acc[r * dim + i] == acc0[r * dim + i] + c.table[(int64_t)c.ids[r] * dim + i], "accumulate");
    /* scatter-add in row order, frozen ids untouched */
    uint8_t freeze[11] = {0};
    freeze[c.ids[0]] = 1;
    freeze[3] = 1;
    double *pre = rnd((int64_t)vocab * dim, -1, 1), *dt = dup(pre, (int64_t)vocab * dim), *ref = dup(pre, (int64_t)vocab * dim);
    cpu_embedding_bwd_f64(dt, c.wts, c.ids, rows, dim, freeze);
    for (int64_t r = 0; r < rows; r++)
        if (!freeze[c.ids[r]])
            for (int i = 0; i < dim; i++)
                ref[(int64_t)c.ids[r] * dim + i] += c.wts[r * dim + i];
    CHECK(memcmp(dt, ref, (size_t)vocab * dim * sizeof(double)) == 0, "scatter-add differs from the in-order sum");
    CHECK(memcmp(dt + c.ids[0] * dim, pre + c.ids[0] * dim, dim * sizeof(double)) == 0, "frozen row changed");
    /* gradient of the gather without a mask */
    double *g = zeros((int64_t)vocab * dim);
    cpu_embedding_bwd_f64(g, c.wts, c.ids, rows, dim, NULL);
    gc_check("embedding d_table", c.table, (int64_t)vocab * dim, g, emb_loss, &c, 1e-5, 1e-6, 100);
    FREE(c.table, c.wts, c.out, c.ids, acc, acc0, pre, dt, ref, g);
}

/* ---- sampled softmax ---------------------------------------------------------------------- */
typedef struct {
    double *h, *pos, *neg;
    int32_t *label, *neg_ids, *row_seq;
    int64_t n_rows;
    int n_seq, n_neg, dim, logq;
    double inv_temp, g;
} ss_ctx;

static double ss_loss(void *p)
{
    ss_ctx *c = p;
    double loss;
    cpu_sampled_softmax_f64(&loss, NULL, NULL, NULL, c->h, c->pos, c->neg, c->label, c->neg_ids, c->row_seq,
                            c->n_rows, c->n_seq, c->n_neg, c->dim, c->inv_temp, c->logq, c->g);
    return loss * c->g;
}

/* 4 sequences (the last with no rows), rows interleaved between sequences; ids from a vocab of
 * 6 so accidental hits are common; sequence 1's negatives are all id 4 and its first row has
 * label 4 (every negative excluded). */
static ss_ctx ss_make(int logq, int dim, int n_neg)
{
    ss_ctx c = {0};
    c.n_rows = 11;
    c.n_seq = 4;
    c.n_neg = n_neg;
    c.dim = dim;
    c.logq = logq;
    c.inv_temp = 3.0;
    c.g = 0.37;
    static const int32_t seqs[11] = {0, 2, 1, 0, 2, 2, 1, 0, 2, 1, 0};
    c.row_seq = gp_xmalloc(sizeof seqs);
    memcpy(c.row_seq, seqs, sizeof seqs);
    c.label = rnd_ids(c.n_rows, 6);
    c.label[2] = 4;
    c.label[6] = 5;
    c.neg_ids = rnd_ids((int64_t)c.n_seq * n_neg, 6);
    for (int j = 0; j < n_neg; j++)
        c.neg_ids[n_neg + j] = 4;
    c.h = rnd(c.n_rows * dim, -1, 1);
    c.pos = rnd(c.n_rows * dim, -1, 1);
    c.neg = rnd((int64_t)c.n_seq * n_neg * dim, -1, 1);
    return c;
}

static void ss_free(ss_ctx *c)
{
    FREE(c->row_seq, c->label, c->neg_ids, c->h, c->pos, c->neg);
}

TEST(cpu_ops_sampled_softmax_grad)
{
    for (int logq = 0; logq <= 1; logq++)
        for (int variant = 0; variant < 2; variant++) {
            int dim = variant ? 19 : 6, n_neg = variant ? 33 : 7;
            ss_ctx c = ss_make(logq, dim, n_neg);
            int hits = 0;
            for (int64_t p = 0; p < c.n_rows; p++)
                for (int j = 0; j < n_neg; j++)
                    hits += c.neg_ids[c.row_seq[p] * n_neg + j] == c.label[p];
            CHECK(hits > n_neg, "the fixture should contain accidental hits beyond the all-excluded row");
            double loss = -1;
            cpu_sampled_softmax_f64(&loss, NULL, NULL, NULL, c.h, c.pos, c.neg, c.label, c.neg_ids, c.row_seq, c.n_rows,
                                    c.n_seq, n_neg, dim, c.inv_temp, logq, c.g);
            double ref = naive_sampled_softmax(c.h, c.pos, c.neg, c.label, c.neg_ids, c.row_seq, c.n_rows, n_neg, dim,
                                               c.inv_temp, logq);
            CHECK_NEAR(loss, ref, 1e-12 * fabs(ref));
            int64_t nh = c.n_rows * dim, nn = (int64_t)c.n_seq * n_neg * dim;
            double *pre_h = rnd(nh, -1, 1), *pre_p = rnd(nh, -1, 1), *pre_n = rnd(nn, -1, 1);
            double *dh = dup(pre_h, nh), *dp = dup(pre_p, nh), *dn = dup(pre_n, nn);
            double loss2 = -1;
            cpu_sampled_softmax_f64(&loss2, dh, dp, dn, c.h, c.pos, c.neg, c.label, c.neg_ids, c.row_seq, c.n_rows,
                                    c.n_seq, n_neg, dim, c.inv_temp, logq, c.g);
            CHECK(loss2 == loss, "loss with gradients %.17g vs without %.17g", loss2, loss);
            double *gh = sub(dh, pre_h, nh), *gp = sub(dp, pre_p, nh), *gn = sub(dn, pre_n, nn);
            gc_check("sampled softmax d_h", c.h, nh, gh, ss_loss, &c, 1e-5, 1e-6, 300);
            gc_check("sampled softmax d_pos", c.pos, nh, gp, ss_loss, &c, 1e-5, 1e-6, 300);
            gc_check("sampled softmax d_neg", c.neg, nn, gn, ss_loss, &c, 1e-5, 1e-6, 300);
            /* the all-excluded row alone: loss 0, no gradient */
            double l1 = -1;
            double *z = zeros(nn);
            cpu_sampled_softmax_f64(&l1, z, z, z, c.h + 2 * dim, c.pos + 2 * dim, c.neg, c.label + 2, c.neg_ids,
                                    c.row_seq + 2, 1, c.n_seq, n_neg, dim, c.inv_temp, logq, c.g);
            CHECK(l1 == 0, "all negatives excluded: loss %g", l1);
            for (int64_t i = 0; i < nn; i++)
                CHECK(z[i] == 0, "all negatives excluded: gradient %g at %lld", z[i], (long long)i);
            FREE(pre_h, pre_p, pre_n, dh, dp, dn, gh, gp, gn, z);
            ss_free(&c);
        }
}

/* ---- softmax cross-entropy ---------------------------------------------------------------- */
typedef struct {
    double *h, *emb;
    int32_t *label;
    int64_t n_rows;
    int n_classes, dim;
    double inv_temp, g;
} sx_ctx;

static double sx_loss(void *p)
{
    sx_ctx *c = p;
    double loss;
    cpu_softmax_xent_f64(&loss, NULL, NULL, c->h, c->emb, c->label, c->n_rows, c->n_classes, c->dim, c->inv_temp,
                         c->g);
    return loss * c->g;
}

/* Loss and the analytic gradients (g * (softmax - onehot) * inv_temp) spelled out. */
static double naive_xent(double *dh, double *demb, const sx_ctx *c)
{
    double total = 0;
    double *z = zeros(c->n_classes);
    for (int64_t p = 0; p < c->n_rows; p++) {
        double mx = -INFINITY, sum = 0;
        for (int k = 0; k < c->n_classes; k++) {
            double s = 0;
            for (int d = 0; d < c->dim; d++)
                s += c->h[p * c->dim + d] * c->emb[(int64_t)k * c->dim + d];
            z[k] = s * c->inv_temp;
            mx = fmax(mx, z[k]);
        }
        for (int k = 0; k < c->n_classes; k++)
            sum += exp(z[k] - mx);
        double lse = mx + log(sum);
        total += lse - z[c->label[p]];
        for (int k = 0; k < c->n_classes; k++) {
            double gz = c->g * (exp(z[k] - lse) - (k == c->label[p])) * c->inv_temp;
            for (int d = 0; d < c->dim; d++) {
                dh[p * c->dim + d] += gz * c->emb[(int64_t)k * c->dim + d];
                demb[(int64_t)k * c->dim + d] += gz * c->h[p * c->dim + d];
            }
        }
    }
    free(z);
    return total;
}

TEST(cpu_ops_softmax_xent_grad)
{
    const int64_t rows_list[] = {1, 7, 33};
    const int classes[] = {1, 7, 45};
    for (int ri = 0; ri < 3; ri++)
        for (int ci = 0; ci < 3; ci++) {
            sx_ctx c = {NULL, NULL, NULL, rows_list[ri], classes[ci], 5, 3.0, 0.37};
            c.h = rnd(c.n_rows * c.dim, -1, 1);
            c.emb = rnd((int64_t)c.n_classes * c.dim, -1, 1);
            c.label = rnd_ids(c.n_rows, c.n_classes);
            int64_t nh = c.n_rows * c.dim, ne = (int64_t)c.n_classes * c.dim;
            double *rh = zeros(nh), *re = zeros(ne);
            double ref = naive_xent(rh, re, &c);
            double loss = sx_loss(&c) / c.g;
            CHECK_NEAR(loss, ref, 1e-12 * fmax(1, fabs(ref)));
            double *pre_h = rnd(nh, -1, 1), *pre_e = rnd(ne, -1, 1);
            double *dh = dup(pre_h, nh), *de = dup(pre_e, ne);
            cpu_softmax_xent_f64(&loss, dh, de, c.h, c.emb, c.label, c.n_rows, c.n_classes, c.dim, c.inv_temp, c.g);
            double *gh = sub(dh, pre_h, nh), *ge = sub(de, pre_e, ne);
            CHECK(rel_err(gh, rh, nh) < 1e-12 || c.n_classes == 1, "xent d_h vs naive %g", rel_err(gh, rh, nh));
            gc_check("softmax_xent d_h", c.h, nh, gh, sx_loss, &c, 1e-5, 1e-6, 100);
            gc_check("softmax_xent d_emb", c.emb, ne, ge, sx_loss, &c, 1e-5, 1e-6, 100);
            FREE(c.h, c.emb, c.label, rh, re, pre_h, pre_e, dh, de, gh, ge);
        }
    /* many classes: the op works through several chunks of rows */
    sx_ctx c = {NULL, NULL, NULL, 150, 20000, 3, 3.0, 0.37};
    c.h = rnd(c.n_rows * c.dim, -1, 1);
    c.emb = rnd((int64_t)c.n_classes * c.dim, -1, 1);
    c.label = rnd_ids(c.n_rows, c.n_classes);
    int64_t nh = c.n_rows * c.dim, ne = (int64_t)c.n_classes * c.dim;
    double *rh = zeros(nh), *re = zeros(ne), *dh = zeros(nh), *de = zeros(ne), loss;
    double ref = naive_xent(rh, re, &c);
    cpu_softmax_xent_f64(&loss, dh, de, c.h, c.emb, c.label, c.n_rows, c.n_classes, c.dim, c.inv_temp, c.g);
    CHECK_NEAR(loss, ref, 1e-12 * ref);
    CHECK(rel_err(dh, rh, nh) < 1e-12, "chunked xent d_h %g", rel_err(dh, rh, nh));
    CHECK(rel_err(de, re, ne) < 1e-12, "chunked xent d_emb %g", rel_err(de, re, ne));
    FREE(c.h, c.emb, c.label, rh, re, dh, de);
}

/* ---- bce ---------------------------------------------------------------------------------- */
typedef struct {
    double *logit;
    int32_t *label;
    int64_t n;
    double g;
} bce_ctx;

static double bce_loss(void *p)
{
    bce_ctx *c = p;
    double loss = 0;
    int64_t cnt = 0;
    cpu_bce_logits_f64(&loss, &cnt, NULL, NULL, c->logit, c->label, c->n, c->g);
    return loss * c->g;
}

TEST(cpu_ops_bce_grad)
{
    int64_t n = 13;
    bce_ctx c = {rnd(n, -4, 4), rnd_ids(n, 3), n, 0.37};
    c.logit[0] = 30;
    c.label[0] = 0;
    c.logit[1] = -30;
    c.label[1] = 1;
    c.label[2] = 2;
    double loss = 1.5, *prob = zeros(n), *d = rnd(n, 5, 6);
    int64_t cnt = 4;
    cpu_bce_logits_f64(&loss, &cnt, prob, d, c.logit, c.label, n, c.g);
    double ref = 0;
    int64_t rc = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = c.logit[i], s = 1 / (1 + exp(-x));
        CHECK_NEAR(prob[i], s, 1e-15);
        if (c.label[i] > 1) {
            CHECK(d[i] == 0, "skipped label must get zero gradient");
            continue;
        }
        rc++;
        /* -log(sigmoid(x)) or -log(1 - sigmoid(x)), each as a softplus */
        ref += c.label[i] ? log1p(exp(-x)) : x + log1p(exp(-x));
        CHECK_NEAR(d[i], c.g * (s - c.label[i]), 1e-15);
    }
    CHECK_NEAR(loss - 1.5, ref, 1e-12 * ref);
    CHECK(cnt - 4 == rc, "count %lld vs %lld", (long long)(cnt - 4), (long long)rc);
    gc_check("bce d_logit", c.logit, n, d, bce_loss, &c, 1e-5, 1e-6, 100);
    FREE(c.logit, c.label, prob, d);
}

/* ---- adamw and sum of squares --------------------------------------------------------------- */
TEST(cpu_ops_adamw)
{
    enum { N = 5 };
    const double p0[N] = {0.5, -1.25, 3.0, 0.0, 1e-3};
    const double grads[3][N] = {{0.1, -0.2, 0.0, 4.0, -1e-4}, {-0.3, 0.25, 1e-6, 2.0, 0.5}, {0.05, 0.0, -2.0, -1.0, 0.7}};
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1, gs = 0.5;
    double p[N], m[N] = {0}, v[N] = {0}, pd[N], md[N] = {0}, vd[N] = {0};
    float pf[N], mf[N] = {0}, vf[N] = {0};
    for (int i = 0; i < N; i++) {
        p[i] = pd[i] = p0[i];
        pf[i] = (float)p0[i];
    }
    for (int t = 1; t <= 3; t++) {
        for (int i = 0; i < N; i++) { /* the documented update, by hand */
            double g = grads[t - 1][i] * gs;
            p[i] *= 1 - lr * wd;
            m[i] = b1 * m[i] + (1 - b1) * g;
            v[i] = b2 * v[i] + (1 - b2) * g * g;
            p[i] -= lr / (1 - pow(b1, t)) * m[i] / (sqrt(v[i]) / sqrt(1 - pow(b2, t)) + eps);
        }
        float gf[N];
        for (int i = 0; i < N; i++)
            gf[i] = (float)grads[t - 1][i];
        cpu_adamw_f64(pd, grads[t - 1], md, vd, N, lr, b1, b2, eps, wd, t, gs);
        cpu_adamw(pf, gf, mf, vf, N, lr, b1, b2, eps, wd, t, gs);
        for (int i = 0; i < N; i++) {
            CHECK_NEAR(pd[i], p[i], 1e-13 * fmax(1, fabs(p[i])));
            CHECK_NEAR(md[i], m[i], 1e-13 * fmax(1e-3, fabs(m[i])));
            CHECK_NEAR(vd[i], v[i], 1e-13 * fmax(1e-6, fabs(v[i])));
            CHECK_NEAR(pf[i], p[i], 1e-6 * fmax(1, fabs(p[i])));
        }
    }
}

TEST(cpu_ops_sum_squares)
{
    const int64_t sizes[] = {0, 1, 17, 3 * 65536 + 5};
    for (int s = 0; s < 4; s++) {
        int64_t n = sizes[s];
        double *x = rnd(n, -1, 1);
        round_f(x, n);
        float *xf = to_f(x, n);
        long double ref = 0;
        for (int64_t i = 0; i < n; i++)
            ref += (long double)x[i] * x[i];
        double d = cpu_sum_squares_f64(x, n), f = cpu_sum_squares(xf, n);
        CHECK_NEAR(d, (double)ref, 1e-14 * (double)ref);
        CHECK_NEAR(f, (double)ref, 1e-14 * (double)ref);
        FREE(x, xf);
    }
}

/* ---- float against double ----------------------------------------------------------------- */
#define AGREE(fv, dv, n, tol, what)                                                      \
    do {                                                                                 \
        double _e = rel_err_f((fv), (dv), (n));                                          \
        CHECK(_e < (tol), "float vs double %s: rel err %.3g", (what), _e);               \
    } while (0)

TEST(cpu_ops_float_matches_double)
{
    const int64_t rows = 70;
    const int in = 37, od = 45;
    /* linear */
    double *x = rnd(rows * in, -1, 1), *w = rnd((int64_t)od * in, -1, 1), *b = rnd(od, -1, 1), *dy = rnd(rows * od, -1, 1);
    round_f(x, rows * in), round_f(w, (int64_t)od * in), round_f(b, od), round_f(dy, rows * od);
    float *xf = to_f(x, rows * in), *wf = to_f(w, (int64_t)od * in), *bf = to_f(b, od), *dyf = to_f(dy, rows * od);
    double *y = zeros(rows * od), *dx = zeros(rows * in), *dw = zeros((int64_t)od * in), *db = zeros(od);
    float *yf = calloc(rows * od, 4), *dxf = calloc(rows * in, 4), *dwf = calloc((size_t)od * in, 4), *dbf = calloc(od, 4);
    cpu_linear_fwd_f64(y, x, w, b, rows, in, od);
    cpu_linear_fwd(yf, xf, wf, bf, rows, in, od);
    cpu_linear_bwd_f64(dx, dw, db, dy, x, w, rows, in, od, 0);
    cpu_linear_bwd(dxf, dwf, dbf, dyf, xf, wf, rows, in, od, 0);
    AGREE(yf, y, rows * od, 1e-5, "linear out");
    AGREE(dxf, dx, rows * in, 1e-5, "linear d_in");
    AGREE(dwf, dw, (int64_t)od * in, 1e-5, "linear d_w");
    AGREE(dbf, db, od, 1e-5, "linear d_bias");
    /* rmsnorm, l2norm (on x with rows 70 x dim 37), swiglu, relu, rope */
    double *nw = rnd(in, 0.5, 1.5), *dx2 = zeros(rows * in), *dnw = zeros(in), *st = zeros(rows), *o = zeros(rows * in);
    round_f(nw, in);
    float *nwf = to_f(nw, in), *dx2f = calloc(rows * in, 4), *dnwf = calloc(in, 4), *stf = calloc(rows, 4),
          *of = calloc(rows * in, 4);
    double *g = rnd(rows * in, -1, 1);
    round_f(g, rows * in);
    float *gf = to_f(g, rows * in);
    cpu_rmsnorm_fwd_f64(o, st, x, nw, rows, in, 1e-5);
    cpu_rmsnorm_fwd(of, stf, xf, nwf, rows, in, 1e-5f);
    AGREE(of, o, rows * in, 1e-5, "rmsnorm out");
    cpu_rmsnorm_bwd_f64(dx2, dnw, g, x, nw, st, rows, in, 0);
    cpu_rmsnorm_bwd(dx2f, dnwf, gf, xf, nwf, stf, rows, in, 0);
    AGREE(dx2f, dx2, rows * in, 1e-5, "rmsnorm d_in");
    AGREE(dnwf, dnw, in, 1e-5, "rmsnorm d_w");
    cpu_l2norm_fwd_f64(o, st, x, rows, in, 1e-6);
    cpu_l2norm_fwd(of, stf, xf, rows, in, 1e-6f);
    AGREE(of, o, rows * in, 1e-5, "l2norm out");
    cpu_l2norm_bwd_f64(dx2, g, o, st, rows, in, 1e-6, 0);
    cpu_l2norm_bwd(dx2f, gf, of, stf, rows, in, 1e-6f, 0);
    AGREE(dx2f, dx2, rows * in, 1e-5, "l2norm d_in");
    cpu_swiglu_fwd_f64(o, x, g, rows * in);
    cpu_swiglu_fwd(of, xf, gf, rows * in);
    AGREE(of, o, rows * in, 1e-5, "swiglu out");
    cpu_swiglu_bwd_f64(dx2, o, g, x, g, rows * in);
    cpu_swiglu_bwd(dx2f, of, gf, xf, gf, rows * in);
    AGREE(dx2f, dx2, rows * in, 1e-5, "swiglu da");
    AGREE(of, o, rows * in, 1e-5, "swiglu db");
    cpu_relu_fwd_f64(o, x, rows * in);
    cpu_relu_fwd(of, xf, rows * in);
    AGREE(of, o, rows * in, 1e-7, "relu");
    int32_t *pos = rnd_ids(rows, 200);
    memcpy(o, x, rows * in * sizeof(double));
    memcpy(of, xf, rows * in * sizeof(float));
    cpu_rope_fwd_f64(o, pos, rows, 2, 18, 10000.0); /* the first 70 x 36 values as 2 heads x 18 */
    cpu_rope_fwd(of, pos, rows, 2, 18, 10000.0);
    AGREE(of, o, rows * in, 1e-6, "rope");
    /* attention: 5 sequences, 3 heads of 12 (36 columns of x as q, k, v) */
    {
        const int32_t len[] = {1, 2, 5, 17, 40};
        const int64_t off[] = {0, 1, 3, 8, 25};
        int64_t n = 65 * 36;
        double *q = rnd(n, -2, 2), *k = rnd(n, -2, 2), *v = rnd(n, -1, 1), *d = rnd(n, -1, 1);
        round_f(q, n), round_f(k, n), round_f(v, n), round_f(d, n);
        float *qf = to_f(q, n), *kf = to_f(k, n), *vf = to_f(v, n), *df = to_f(d, n);
        double *ao = zeros(n), *al = zeros(65 * 3), *dq = zeros(n), *dk = zeros(n), *dv = zeros(n);
        float *aof = calloc(n, 4), *alf = calloc(65 * 3, 4), *dqf = calloc(n, 4), *dkf = calloc(n, 4), *dvf = calloc(n, 4);
        for (int causal = 0; causal <= 1; causal++) {
            cpu_attention_fwd_f64(ao, al, q, k, v, off, len, 5, 3, 12, causal);
            cpu_attention_fwd(aof, alf, qf, kf, vf, off, len, 5, 3, 12, causal);
            AGREE(aof, ao, n, 1e-5, "attention out");
            AGREE(alf, al, 65 * 3, 1e-5, "attention lse");
            cpu_attention_bwd_f64(dq, dk, dv, d, q, k, v, ao, al, off, len, 5, 3, 12, causal);
            cpu_attention_bwd(dqf, dkf, dvf, df, qf, kf, vf, aof, alf, off, len, 5, 3, 12, causal);
            AGREE(dqf, dq, n, 1e-5, "attention dq");
            AGREE(dkf, dk, n, 1e-5, "attention dk");
            AGREE(dvf, dv, n, 1e-5, "attention dv");
        }
        FREE(q, k, v, d, qf, kf, vf, df, ao, al, dq, dk, dv, aof, alf, dqf, dkf, dvf);
    }
    /* sampled softmax at the official temperature, and softmax cross-entropy */
    {
        ss_ctx c = ss_make(1, 16, 40);
        c.inv_temp = 20;
        int64_t nh = c.n_rows * c.dim, nn = (int64_t)c.n_seq * c.n_neg * c.dim;
        /* unit vectors, as the model feeds it */
        double *nrm = zeros(nn / c.dim);
        cpu_l2norm_fwd_f64(c.h, nrm, c.h, c.n_rows, c.dim, 1e-6);
        cpu_l2norm_fwd_f64(c.pos, nrm, c.pos, c.n_rows, c.dim, 1e-6);
        cpu_l2norm_fwd_f64(c.neg, nrm, c.neg, nn / c.dim, c.dim, 1e-6);
        round_f(c.h, nh), round_f(c.pos, nh), round_f(c.neg, nn);
        float *hf = to_f(c.h, nh), *pf = to_f(c.pos, nh), *nf = to_f(c.neg, nn);
        double *dh = zeros(nh), *dp = zeros(nh), *dn = zeros(nn), ld, lf;
        float *dhf = calloc(nh, 4), *dpf = calloc(nh, 4), *dnf = calloc(nn, 4);
        cpu_sampled_softmax_f64(&ld, dh, dp, dn, c.h, c.pos, c.neg, c.label, c.neg_ids, c.row_seq, c.n_rows, c.n_seq,
                                c.n_neg, c.dim, c.inv_temp, 1, 0.37);
        cpu_sampled_softmax(&lf, dhf, dpf, dnf, hf, pf, nf, c.label, c.neg_ids, c.row_seq, c.n_rows, c.n_seq, c.n_neg,
                            c.dim, 20.0f, 1, 0.37f);
        CHECK_NEAR(lf, ld, 1e-5 * fabs(ld));
        AGREE(dhf, dh, nh, 1e-5, "sampled softmax d_h");
        AGREE(dpf, dp, nh, 1e-5, "sampled softmax d_pos");
        AGREE(dnf, dn, nn, 1e-5, "sampled softmax d_neg");
        double *de = zeros(7 * 16);
        float *def = calloc(7 * 16, 4);
        int32_t *lab = rnd_ids(c.n_rows, 7);
        cpu_softmax_xent_f64(&ld, dh, de, c.h, c.neg, lab, c.n_rows, 7, 16, 20.0, 0.37);
        cpu_softmax_xent(&lf, dhf, def, hf, nf, lab, c.n_rows, 7, 16, 20.0f, 0.37f);
        CHECK_NEAR(lf, ld, 1e-5 * fabs(ld));
        AGREE(dhf, dh, nh, 1e-5, "softmax_xent d_h");
        AGREE(def, de, 7 * 16, 1e-5, "softmax_xent d_emb");
        FREE(hf, pf, nf, dh, dp, dn, dhf, dpf, dnf, de, def, lab, nrm);
        ss_free(&c);
    }
    /* bce on the first 70 x values as logits */
    {
        int32_t *lab = rnd_ids(rows, 3);
        double ld = 0, *pd = zeros(rows), *gd = zeros(rows);
        float *pfl = calloc(rows, 4), *gfl = calloc(rows, 4);
        int64_t cd = 0, cf = 0;
        double lf = 0;
        cpu_bce_logits_f64(&ld, &cd, pd, gd, x, lab, rows, 0.37);
        cpu_bce_logits(&lf, &cf, pfl, gfl, xf, lab, rows, 0.37f);
        CHECK_NEAR(lf, ld, 1e-6 * fabs(ld));
        CHECK(cf == cd, "bce counts %lld vs %lld", (long long)cf, (long long)cd);
        AGREE(pfl, pd, rows, 1e-6, "bce prob");
        AGREE(gfl, gd, rows, 1e-6, "bce d_logit");
        FREE(lab, pd, gd, pfl, gfl);
    }
    FREE(x, w, b, dy, xf, wf, bf, dyf, y, dx, dw, db, yf, dxf, dwf, dbf, nw, dx2, dnw, st, o, nwf, dx2f, dnwf, stf, of,
         g, gf, pos);
}

/* ---- determinism -------------------------------------------------------------------------- */
/* Every op that reduces across rows, run with 1, 2 and 3 threads: the bytes must not change.
 * The sizes are above the ops' thresholds for going parallel (PAR_MIN_WORK, PAR_MIN_ELEMS). */
typedef struct {
    float *lin_out, *lin_dx, *lin_dw, *lin_db;
    float *attn_out, *attn_lse, *dq, *dk, *dv;
    float *ss_dh, *ss_dp, *ss_dn;
    float *emb_dt, *rms_dx, *rms_dw, *xent_dh, *xent_de;
    double ss_loss, xent_loss, sumsq;
} det_out;

enum { DR = 1100, DIN = 70, DOUT = 90, DSEQ = 60, DH = 2, DHD = 16, DNEG = 50, DV = 300, ASEQ = 160 };
enum { WN = DSEQ * DNEG * 16 }; /* w serves as weights (DOUT x DIN) and as negatives (DSEQ x DNEG x 16) */

static void det_run(det_out *r, const float *x, const float *w, const float *dy, const int32_t *len,
                    const int64_t *off, int64_t arows, const int32_t *ids, const int32_t *row_seq,
                    const int32_t *neg_ids)
{
    int64_t an = arows * DH * DHD;
    r->lin_out = calloc(DR * DOUT, 4), r->lin_dx = calloc(DR * DIN, 4), r->lin_dw = calloc(DOUT * DIN, 4);
    r->lin_db = calloc(DOUT, 4);
    cpu_linear_fwd(r->lin_out, x, w, w, DR, DIN, DOUT);
    cpu_linear_bwd(r->lin_dx, r->lin_dw, r->lin_db, dy, x, w, DR, DIN, DOUT, 0);
    r->attn_out = calloc(an, 4), r->attn_lse = calloc(arows * DH, 4);
    r->dq = calloc(an, 4), r->dk = calloc(an, 4), r->dv = calloc(an, 4);
    cpu_attention_fwd(r->attn_out, r->attn_lse, x, x + 1, x + 2, off, len, ASEQ, DH, DHD, 1);
    cpu_attention_bwd(r->dq, r->dk, r->dv, dy, x, x + 1, x + 2, r->attn_out, r->attn_lse, off, len, ASEQ, DH, DHD, 1);
    r->ss_dh = calloc(DR * 16, 4), r->ss_dp = calloc(DR * 16, 4), r->ss_dn = calloc(DSEQ * DNEG * 16, 4);
    cpu_sampled_softmax(&r->ss_loss, r->ss_dh, r->ss_dp, r->ss_dn, x, x + 3, w, ids, neg_ids, row_seq, DR, DSEQ, DNEG,
                        16, 20.0f, 1, 0.5f);
    r->emb_dt = calloc(DV * DIN, 4);
    cpu_embedding_bwd(r->emb_dt, dy, ids, DR, DIN, NULL);
    r->rms_dx = calloc(DR * DIN, 4), r->rms_dw = calloc(DIN, 4);
    float *st = calloc(DR, 4), *o = calloc(DR * DIN, 4);
    cpu_rmsnorm_fwd(o, st, x, w, DR, DIN, 1e-5f);
    cpu_rmsnorm_bwd(r->rms_dx, r->rms_dw, dy, x, w, st, DR, DIN, 0);
    r->xent_dh = calloc(DR * DIN, 4), r->xent_de = calloc(DOUT * DIN, 4);
    cpu_softmax_xent(&r->xent_loss, r->xent_dh, r->xent_de, x, w, ids, DR, DOUT, DIN, 5.0f, 0.5f);
    r->sumsq = cpu_sum_squares(x, (int64_t)DR * DIN * 4);
    FREE(st, o);
}

static void det_free(det_out *r)
{
    FREE(r->lin_out, r->lin_dx, r->lin_dw, r->lin_db, r->attn_out, r->attn_lse, r->dq, r->dk, r->dv, r->ss_dh, r->ss_dp,
         r->ss_dn, r->emb_dt, r->rms_dx, r->rms_dw, r->xent_dh, r->xent_de);
}

#define SAME(field, n) CHECK(memcmp(a->field, b->field, (size_t)(n) * 4) == 0, #field " differs with %d threads", nt)

static void det_compare(const det_out *a, const det_out *b, int64_t an, int64_t arows, int nt)
{
    SAME(lin_out, DR * DOUT);
    SAME(lin_dx, DR * DIN);
    SAME(lin_dw, DOUT * DIN);
    SAME(lin_db, DOUT);
    SAME(attn_out, an);
    SAME(attn_lse, arows * DH);
    SAME(dq, an);
    SAME(dk, an);
    SAME(dv, an);
    SAME(ss_dh, DR * 16);
    SAME(ss_dp, DR * 16);
    SAME(ss_dn, DSEQ * DNEG * 16);
    SAME(emb_dt, DV * DIN);
    SAME(rms_dx, DR * DIN);
    SAME(rms_dw, DIN);
    SAME(xent_dh, DR * DIN);
    SAME(xent_de, DOUT * DIN);
    CHECK(a->ss_loss == b->ss_loss, "sampled softmax loss differs with %d threads", nt);
    CHECK(a->xent_loss == b->xent_loss, "xent loss differs with %d threads", nt);
    CHECK(a->sumsq == b->sumsq, "sum of squares differs with %d threads", nt);
}

TEST(cpu_ops_deterministic_threads)
{
    /* x is big enough for the sum of squares (4 x DR x DIN) and every op's input */
    double *xd = rnd((int64_t)DR * DIN * 4, -1, 1), *wd = rnd(WN, -1, 1), *dyd = rnd(DR * DOUT * 4, -1, 1);
    float *x = to_f(xd, (int64_t)DR * DIN * 4), *w = to_f(wd, WN), *dy = to_f(dyd, DR * DOUT * 4);
    int32_t len[ASEQ];
    int64_t off[ASEQ], arows = 0;
    for (int s = 0; s < ASEQ; s++) {
        len[s] = 1 + (s * 37) % 100; /* attention rows: x viewed as [arows][DH*DHD], inside x */
        off[s] = arows;
        arows += len[s];
    }
    int32_t *ids = rnd_ids(DR, DOUT < DV ? DOUT : DV), *row_seq = rnd_ids(DR, DSEQ), *neg_ids = rnd_ids(DSEQ * DNEG, DOUT);
    int saved = omp_get_max_threads();
    det_out ref;
    omp_set_num_threads(1);
    det_run(&ref, x, w, dy, len, off, arows, ids, row_seq, neg_ids);
    /* which thread takes which sequence is up to the scheduler: try 2 threads twice */
    const int teams[] = {2, 3, 2};
    for (int ti = 0; ti < 3; ti++) {
        int nt = teams[ti];
        det_out r;
        omp_set_num_threads(nt);
        det_run(&r, x, w, dy, len, off, arows, ids, row_seq, neg_ids);
        det_compare(&ref, &r, arows * DH * DHD, arows, nt);
        det_free(&r);
    }
    omp_set_num_threads(saved);
    det_free(&ref);
    FREE(xd, wd, dyd, x, w, dy, ids, row_seq, neg_ids);
}

/* ---- timing (only with GPSDREC_BENCH=1) --------------------------------------------------- */
/* Best of several repetitions: the shared 2-core CI machine is noisy, the minimum is not. */
#define BEST_OF(reps, best, stmt)                                                         \
    do {                                                                                  \
        best = 1e30;                                                                      \
        for (int _r = 0; _r < (reps); _r++) {                                             \
            double _t0 = gp_now();                                                        \
            stmt;                                                                         \
            best = fmin(best, gp_now() - _t0);                                            \
        }                                                                                 \
    } while (0)

static void bench_linear(int64_t rows, int in, int od)
{
    double *xd = rnd(rows * in, -1, 1), *wd = rnd((int64_t)od * in, -1, 1), *dyd = rnd(rows * od, -1, 1);
    float *x = to_f(xd, rows * in), *w = to_f(wd, (int64_t)od * in), *dy = to_f(dyd, rows * od);
    float *y = calloc(rows * od, 4), *dx = calloc(rows * in, 4), *dw = calloc((size_t)od * in, 4);
    double tf, tb;
    BEST_OF(10, tf, cpu_linear_fwd(y, x, w, NULL, rows, in, od));
    BEST_OF(10, tb, cpu_linear_bwd(dx, dw, NULL, dy, x, w, rows, in, od, 0));
    double fl = 2.0 * rows * in * od;
    printf("  linear rows %lld in %d out %d: fwd %.2f ms (%.1f GFLOP/s), bwd d_in+d_w %.2f ms (%.1f GFLOP/s)\n",
           (long long)rows, in, od, tf * 1e3, fl / tf * 1e-9, tb * 1e3, 2 * fl / tb * 1e-9);
    FREE(xd, wd, dyd, x, w, dy, y, dx, dw);
}

TEST(cpu_ops_bench)
{
    const char *on = getenv("GPSDREC_BENCH");
    if (!on || strcmp(on, "1") != 0)
        return;
    printf("  threads %d\n", omp_get_max_threads());
    bench_linear(16384, 64, 64);
    bench_linear(16384, 256, 704);
    bench_linear(16384, 704, 256);
    enum { S = 512, L = 51, H = 4, HD = 16 };
    int64_t rows = (int64_t)S * L, n = rows * H * HD;
    int32_t len[S];
    int64_t off[S];
    for (int s = 0; s < S; s++)
        len[s] = L, off[s] = (int64_t)s * L;
    double *qd = rnd(3 * n, -1, 1);
    float *q = to_f(qd, 3 * n), *o = calloc(n, 4), *lse = calloc(rows * H, 4), *dq = calloc(n, 4), *dk = calloc(n, 4),
          *dv = calloc(n, 4);
    double tf, tb;
    BEST_OF(10, tf, cpu_attention_fwd(o, lse, q, q + n, q + 2 * n, off, len, S, H, HD, 1));
    BEST_OF(10, tb, cpu_attention_bwd(dq, dk, dv, q, q, q + n, q + 2 * n, o, lse, off, len, S, H, HD, 1));
    printf("  attention %d seqs x %d, %d heads x %d, causal: fwd %.2f ms, bwd %.2f ms\n", S, L, H, HD, tf * 1e3,
           tb * 1e3);
    FREE(qd, q, o, lse, dq, dk, dv);
    /* sampled softmax: 128 sequences of 50 labelled rows, 1024 shared negatives, dim 64 */
    enum { SS = 128, SL = 50, SN = 1024, SD = 64 };
    int64_t sr = (int64_t)SS * SL, nn = (int64_t)SS * SN * SD;
    double *hd_ = rnd(sr * SD, -0.2, 0.2), *nd = rnd(nn, -0.2, 0.2);
    float *hf = to_f(hd_, sr * SD), *nf = to_f(nd, nn), *dh = calloc(sr * SD, 4), *dp = calloc(sr * SD, 4),
          *dn = calloc(nn, 4);
    int32_t *lab = rnd_ids(sr, 5000), *nid = rnd_ids((int64_t)SS * SN, 5000), *rs = gp_xmalloc(sr * 4);
    for (int64_t p = 0; p < sr; p++)
        rs[p] = (int32_t)(p / SL);
    double loss, tl, tg;
    BEST_OF(5, tl, cpu_sampled_softmax(&loss, NULL, NULL, NULL, hf, hf, nf, lab, nid, rs, sr, SS, SN, SD, 20.0f, 0, 1.0f));
    BEST_OF(5, tg, cpu_sampled_softmax(&loss, dh, dp, dn, hf, hf, nf, lab, nid, rs, sr, SS, SN, SD, 20.0f, 0, 1.0f));
    double fl = 2.0 * sr * SN * SD;
    printf("  sampled softmax %d x %d rows, %d negatives, dim %d: loss %.2f ms (%.1f GFLOP/s), loss+grads %.2f ms "
           "(%.1f GFLOP/s)\n",
           SS, SL, SN, SD, tl * 1e3, fl / tl * 1e-9, tg * 1e3, 3 * fl / tg * 1e-9);
    FREE(hd_, nd, hf, nf, dh, dp, dn, lab, nid, rs);
}
