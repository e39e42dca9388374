/* cuda/attention_pick: see attention_pick.h. */
#include "cuda/attention_pick.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_util.h"
#include "rng.h"

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u); /* round to nearest even; the inputs are finite */
    return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* max |a - b| / max |b| over n bf16 values */
static double rel_diff(const uint16_t *a, const uint16_t *b, size_t n)
{
    double dmax = 0, bmax = 0;
    for (size_t i = 0; i < n; i++) {
        double x = from_bf16(a[i]), y = from_bf16(b[i]);
        if (!isfinite(x))
            return INFINITY;
        dmax = fmax(dmax, fabs(x - y));
        bmax = fmax(bmax, fabs(y));
    }
    return bmax > 0 ? dmax / bmax : dmax;
}

static int run_own(const attn_probe *p, cudaStream_t s, gp_err *e)
{
    const int64_t rows = (int64_t)p->n_seq * p->max_len;
    if (p->rope_cs) {
        CU(k_attention_rope_fwd(p->out, p->lse, p->qkv, p->rope_cs, p->seq_off, p->seq_len, p->n_seq, p->max_len,
                                p->n_heads, p->head_dim, p->causal, s));
        CU(k_attention_rope_bwd(p->d_qkv, p->d_out, p->qkv, p->rope_cs, p->out, p->lse, p->seq_off, p->seq_len,
                                p->n_seq, p->max_len, p->n_heads, p->head_dim, p->causal, s));
        return 0;
    }
    CU(k_rope_qk(p->qkv, p->tok_pos, rows, p->n_heads, p->head_dim, p->rope_theta, 0, s));
    CU(k_attention_fwd(p->out, p->lse, p->qkv, p->seq_off, p->seq_len, p->n_seq, p->max_len, p->n_heads, p->head_dim,
                       p->causal, s));
    CU(k_attention_bwd(p->d_qkv, p->d_out, p->qkv, p->out, p->lse, p->seq_off, p->seq_len, p->n_seq, p->max_len,
                       p->n_heads, p->head_dim, p->causal, s));
    CU(k_rope_qk(p->d_qkv, p->tok_pos, rows, p->n_heads, p->head_dim, p->rope_theta, 1, s));
    return 0;
fail:
    return -1;
}

static int run_cudnn(cudnn_attn *ca, const attn_probe *p, cudaStream_t s, gp_err *e)
{
    const int64_t rows = (int64_t)p->n_seq * p->max_len;
    CU(k_rope_qk(p->qkv, p->tok_pos, rows, p->n_heads, p->head_dim, p->rope_theta, 0, s));
    if (cudnn_attn_fwd(ca, p->out, p->lse, p->qkv, p->seq_len, p->ragged_qkv, p->ragged_out, p->n_seq, e) != 0 ||
        cudnn_attn_bwd(ca, p->d_qkv, p->d_out, p->qkv, p->out, p->lse, p->seq_len, p->ragged_qkv, p->ragged_out,
                       p->n_seq, e) != 0)
        return -1;
    CU(k_rope_qk(p->d_qkv, p->tok_pos, rows, p->n_heads, p->head_dim, p->rope_theta, 1, s));
    return 0;
fail:
    return -1;
}

/* The probe's qkv inputs again, from `pristine`, outside the timed region. */
static int restore_qkv(const attn_probe *p, const gp_bf16 *pristine, cudaStream_t s, gp_err *e)
{
    CU(cudaMemcpyAsync(p->qkv, pristine, (size_t)p->n_seq * p->max_len * 3 * p->n_heads * p->head_dim * 2,
                       cudaMemcpyDeviceToDevice, s));
    return 0;
fail:
    return -1;
}

/* Median milliseconds of one forward + backward. */
static int time_impl(cudnn_attn *ca, const attn_probe *p, const gp_bf16 *pristine, int reps, cudaStream_t s, double *ms,
                     gp_err *e)
{
    cudaEvent_t ev[2] = {NULL, NULL};
    double *t = calloc((size_t)reps, sizeof *t);
    if (!t)
        return gp_fail(e, "out of memory");
    CU(cudaEventCreate(&ev[0]));
    CU(cudaEventCreate(&ev[1]));
    for (int i = -3; i < reps; i++) {
        if (restore_qkv(p, pristine, s, e) != 0)
            goto fail;
        CU(cudaEventRecord(ev[0], s));
        if ((ca ? run_cudnn(ca, p, s, e) : run_own(p, s, e)) != 0)
            goto fail;
        CU(cudaEventRecord(ev[1], s));
        CU(cudaEventSynchronize(ev[1]));
        float f = 0;
        CU(cudaEventElapsedTime(&f, ev[0], ev[1]));
        if (i >= 0)
            t[i] = f;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    *ms = t[reps / 2];
    cudaEventDestroy(ev[0]);
    cudaEventDestroy(ev[1]);
    free(t);
    return 0;
fail:
    if (ev[0])
        cudaEventDestroy(ev[0]);
    if (ev[1])
        cudaEventDestroy(ev[1]);
    free(t);
    return -1;
}

int attention_probe(cudnn_attn *ca, const attn_probe *p, int reps, cudaStream_t s, attn_probe_result *r, gp_err *e)
{
    const size_t D = (size_t)p->n_heads * p->head_dim, rows = (size_t)p->n_seq * p->max_len;
    const size_t n_qkv = rows * 3 * D, n_out = rows * D;
    uint16_t *h = malloc(n_qkv * sizeof *h), *own_out = malloc(n_out * 2), *own_g = malloc(n_qkv * 2);
    uint16_t *cd_out = malloc(n_out * 2), *cd_g = malloc(n_qkv * 2), *cd_g2 = malloc(n_qkv * 2);
    gp_bf16 *pristine = NULL;
    memset(r, 0, sizeof *r);
    if (!h || !own_out || !own_g || !cd_out || !cd_g || !cd_g2) {
        gp_fail(e, "attention probe: out of memory");
        goto fail;
    }
    gp_rng rng = gp_rng_stream(1, RNG_PURPOSE_TEST, 0xA77E, 0);
    for (size_t i = 0; i < n_qkv; i++)
        h[i] = to_bf16((float)gp_rng_normal(&rng));
    if (cudaMalloc((void **)&pristine, n_qkv * 2) != cudaSuccess) {
        (void)cudaGetLastError();
        pristine = NULL;
        gp_fail(e, "no device memory for the probe's %.0f MiB copy of its inputs", (double)n_qkv * 2 / (1 << 20));
        free(h), free(own_out), free(own_g), free(cd_out), free(cd_g), free(cd_g2);
        return 1;
    }
    CU(cudaMemcpyAsync(pristine, h, n_qkv * 2, cudaMemcpyHostToDevice, s));
    for (size_t i = 0; i < n_out; i++)
        h[i] = to_bf16((float)gp_rng_normal(&rng));
    CU(cudaMemcpyAsync(p->d_out, h, n_out * 2, cudaMemcpyHostToDevice, s));
    CU(cudaStreamSynchronize(s));

    if (time_impl(NULL, p, pristine, reps, s, &r->ms_own, e) != 0)
        goto fail;
    CU(cudaMemcpy(own_out, p->out, n_out * 2, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(own_g, p->d_qkv, n_qkv * 2, cudaMemcpyDeviceToHost));
    if (time_impl(ca, p, pristine, reps, s, &r->ms_cudnn, e) != 0)
        goto fail;
    CU(cudaMemcpy(cd_out, p->out, n_out * 2, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(cd_g, p->d_qkv, n_qkv * 2, cudaMemcpyDeviceToHost));
    if (restore_qkv(p, pristine, s, e) != 0 || run_cudnn(ca, p, s, e) != 0)
        goto fail;
    CU(cudaStreamSynchronize(s));
    CU(cudaMemcpy(cd_g2, p->d_qkv, n_qkv * 2, cudaMemcpyDeviceToHost));
    r->cudnn_deterministic = memcmp(cd_g, cd_g2, n_qkv * 2) == 0;
    r->max_rel_diff_out = rel_diff(cd_out, own_out, n_out);
    r->max_rel_diff_grad = rel_diff(cd_g, own_g, n_qkv);
    free(h), free(own_out), free(own_g), free(cd_out), free(cd_g), free(cd_g2);
    cudaFree(pristine);
    return 0;
fail:
    free(h), free(own_out), free(own_g), free(cd_out), free(cd_g), free(cd_g2);
    if (pristine)
        cudaFree(pristine);
    return -1;
}
