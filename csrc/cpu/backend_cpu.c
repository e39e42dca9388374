/* The CPU backend: fp32 parameters, gradients and AdamW state in host arenas, the model from
 * cpu/model_cpu.c. It is the reference every other backend is compared with. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/model_cpu.h"
#include "cpu/ops.h"

typedef struct {
    float *sparse, *dense;     /* parameters */
    float *g_sparse, *g_dense; /* gradients (g_sparse NULL when the item table is frozen) */
    float *m_sparse, *v_sparse, *m_dense, *v_dense;
    cpu_workspace *ws;
} cpu_impl;

static cpu_impl *impl_of(backend *b) { return (cpu_impl *)b->impl; }

static void set_threads(const backend *b)
{
    if (b->opts.threads > 0)
        omp_set_num_threads(b->opts.threads);
}

static int cpu_set_params(backend *b, const float *sparse, const float *dense, gp_err *e)
{
    cpu_impl *c = impl_of(b);
    memcpy(c->sparse, sparse, (size_t)b->layout->sparse_numel * sizeof(float));
    memcpy(c->dense, dense, (size_t)b->layout->dense_numel * sizeof(float));
    return 0;
}

static int cpu_get_params(backend *b, float *sparse, float *dense, gp_err *e)
{
    cpu_impl *c = impl_of(b);
    if (sparse)
        memcpy(sparse, c->sparse, (size_t)b->layout->sparse_numel * sizeof(float));
    if (dense)
        memcpy(dense, c->dense, (size_t)b->layout->dense_numel * sizeof(float));
    return 0;
}

static int cpu_get_grads(backend *b, float *sparse, float *dense, gp_err *e)
{
    cpu_impl *c = impl_of(b);
    size_t ns = (size_t)b->layout->sparse_numel;
    if (sparse) {
        if (c->g_sparse)
            memcpy(sparse, c->g_sparse, ns * sizeof(float));
        else
            memset(sparse, 0, ns * sizeof(float));
    }
    if (dense)
        memcpy(dense, c->g_dense, (size_t)b->layout->dense_numel * sizeof(float));
    return 0;
}

/* Sums the gradients over the ranks through the group's host links. The item table goes as its
 * non-zero rows (every row a step can have touched with a non-zero gradient) unless the whole
 * table is smaller: the same choice and the same rank-order sum as the CUDA backend. */
static int cpu_sync_grads(backend *b, gp_err *e)
{
    cpu_impl *c = impl_of(b);
    dist_ctx *d = b->opts.dist;
    const int W = dist_world(d);
    if (W == 1)
        return 0;
    if (dist_allreduce_f32(d, c->g_dense, (size_t)b->layout->dense_numel, e) != 0)
        return gp_wrap(e, "summing the dense gradients over %d ranks", W);
    if (!c->g_sparse)
        return 0;
    const int64_t rows = b->layout->cfg.n_items, E = b->layout->cfg.emb_dim;
    int32_t *ids = gp_xmalloc((size_t)rows * sizeof *ids);
    int64_t u = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *g = c->g_sparse + r * E;
        int64_t k = 0;
        while (k < E && g[k] == 0.0f)
            k++;
        if (k < E)
            ids[u++] = (int32_t)r;
    }
    int64_t *counts = gp_xcalloc((size_t)W, sizeof *counts);
    counts[dist_rank(d)] = u;
    int rc = dist_allreduce_i64(d, counts, (size_t)W, e);
    int64_t umax = 0;
    for (int r = 0; r < W && rc == 0; r++)
        umax = GP_MAX(umax, counts[r]);
    int mode = b->opts.dist_item_grads;
    if (mode == DIST_ITEM_AUTO)
        mode = (double)W * (double)umax * (double)(E + 1) < 2.0 * (double)rows * (double)E ? DIST_ITEM_ROWS
                                                                                               : DIST_ITEM_DENSE;
    if (rc == 0 && mode == DIST_ITEM_DENSE) {
        rc = dist_allreduce_f32(d, c->g_sparse, (size_t)(rows * E), e);
    } else if (rc == 0) {
        /* one block per rank: u ids, then u rows */
        size_t bytes = (size_t)u * sizeof(int32_t) + (size_t)u * (size_t)E * sizeof(float);
        char *mine = gp_xmalloc(bytes ? bytes : 1);
        memcpy(mine, ids, (size_t)u * sizeof(int32_t));
        float *mr = (float *)(mine + (size_t)u * sizeof(int32_t));
        for (int64_t i = 0; i < u; i++)
            memcpy(mr + i * E, c->g_sparse + (int64_t)ids[i] * E, (size_t)E * sizeof(float));
        void *all = NULL;
        size_t *off = gp_xmalloc((size_t)(W + 1) * sizeof *off);
        rc = dist_allgather(d, mine, bytes, &all, off, e);
        if (rc == 0) {
            memset(c->g_sparse, 0, (size_t)(rows * E) * sizeof(float));
            for (int r = 0; r < W; r++) {
                const int64_t n = counts[r];
                const int32_t *rid = (const int32_t *)((char *)all + off[r]);
                const float *rrow = (const float *)((char *)all + off[r] + (size_t)n * sizeof(int32_t));
                for (int64_t i = 0; i < n; i++) {
                    float *dst = c->g_sparse + (int64_t)rid[i] * E;
                    for (int64_t k = 0; k < E; k++)
                        dst[k] += rrow[i * E + k];
                }
            }
        }
        free(all);
        free(off);
        free(mine);
    }
    free(counts);
    free(ids);
    return rc == 0 ? 0 : gp_wrap(e, "summing the item-table gradients over %d ranks", W);
}

static int cpu_zero_grads(backend *b, gp_err *e)
{
    cpu_impl *c = impl_of(b);
    if (c->g_sparse)
        memset(c->g_sparse, 0, (size_t)b->layout->sparse_numel * sizeof(float));
    memset(c->g_dense, 0, (size_t)b->layout->dense_numel * sizeof(float));
    return 0;
}

static int cpu_forward_backward(backend *b, const batch *x, float grad_scale, step_losses *out, float *rank_prob,
                                gp_err *e)
{
    cpu_impl *c = impl_of(b);
    set_threads(b);
    return cpu_model_step(c->ws, b->layout, c->sparse, c->dense, c->g_sparse, c->g_dense, x, grad_scale, 0, out,
                          rank_prob, e);
}

static int cpu_forward(backend *b, const batch *x, int want_rank, step_losses *out, float *rank_prob, gp_err *e)
{
    cpu_impl *c = impl_of(b);
    set_threads(b);
    return cpu_model_step(c->ws, b->layout, c->sparse, c->dense, NULL, NULL, x, 1.0f, want_rank, out, rank_prob, e);
}

static int cpu_rank_targets(backend *b, const batch *x, int64_t *rank, gp_err *e)
{
    cpu_impl *c = impl_of(b);
    set_threads(b);
    return cpu_model_rank_targets(c->ws, b->layout, c->sparse, c->dense, x, rank, e);
}

/* Pointers of tensor t's parameter, gradient and moments. */
static void tensor_slices(backend *b, int t, float **p, float **g, float **m, float **v)
{
    cpu_impl *c = impl_of(b);
    const tensor_info *ti = &b->layout->tensors[t];
    int sp = ti->arena == ARENA_SPARSE;
    *p = (sp ? c->sparse : c->dense) + ti->offset;
    *g = (sp ? c->g_sparse : c->g_dense) + ti->offset;
    *m = (sp ? c->m_sparse : c->m_dense) + ti->offset;
    *v = (sp ? c->v_sparse : c->v_dense) + ti->offset;
}

static int cpu_optimizer_step(backend *b, const optim_hparams *h, double *grad_norm, gp_err *e)
{
    const model_layout *l = b->layout;
    set_threads(b);
    double sumsq = 0;
    for (int t = 0; t < l->n_tensors; t++) {
        if (!model_tensor_trained(l, t, b->opts.freeze_sparse))
            continue;
        float *p, *g, *m, *v;
        tensor_slices(b, t, &p, &g, &m, &v);
        sumsq += cpu_sum_squares(g, l->tensors[t].numel);
    }
    double norm = sqrt(sumsq);
    if (grad_norm)
        *grad_norm = norm;
    if (!isfinite(norm))
        return gp_fail(e, "gradient norm is %g at step %lld: training diverged", norm, (long long)h->step);
    double scale = 1.0;
    if (h->max_grad_norm > 0) {
        double coef = h->max_grad_norm / (norm + 1e-6);
        if (coef < 1.0)
            scale = coef;
    }
    for (int t = 0; t < l->n_tensors; t++) {
        if (!model_tensor_trained(l, t, b->opts.freeze_sparse))
            continue;
        float *p, *g, *m, *v;
        tensor_slices(b, t, &p, &g, &m, &v);
        cpu_adamw(p, g, m, v, l->tensors[t].numel, h->lr, h->beta1, h->beta2, h->eps, h->weight_decay, h->step, scale);
    }
    return cpu_zero_grads(b, e);
}

static int cpu_get_optim_state(backend *b, float *m_sparse, float *v_sparse, float *m_dense, float *v_dense, gp_err *e)
{
    cpu_impl *c = impl_of(b);
    size_t ns = (size_t)b->layout->sparse_numel, nd = (size_t)b->layout->dense_numel;
    if (m_sparse && c->m_sparse)
        memcpy(m_sparse, c->m_sparse, ns * sizeof(float));
    if (v_sparse && c->v_sparse)
        memcpy(v_sparse, c->v_sparse, ns * sizeof(float));
    if (m_dense)
        memcpy(m_dense, c->m_dense, nd * sizeof(float));
    if (v_dense)
        memcpy(v_dense, c->v_dense, nd * sizeof(float));
    return 0;
}

static int cpu_set_optim_state(backend *b, const float *m_sparse, const float *v_sparse, const float *m_dense,
                               const float *v_dense, gp_err *e)
{
    cpu_impl *c = impl_of(b);
    size_t ns = (size_t)b->layout->sparse_numel, nd = (size_t)b->layout->dense_numel;
    if (c->m_sparse && m_sparse)
        memcpy(c->m_sparse, m_sparse, ns * sizeof(float));
    if (c->v_sparse && v_sparse)
        memcpy(c->v_sparse, v_sparse, ns * sizeof(float));
    if (m_dense)
        memcpy(c->m_dense, m_dense, nd * sizeof(float));
    if (v_dense)
        memcpy(c->v_dense, v_dense, nd * sizeof(float));
    return 0;
}

static size_t cpu_device_bytes(backend *b)
{
    (void)b;
    return 0;
}

static void cpu_destroy(backend *b)
{
    if (!b)
        return;
    cpu_impl *c = impl_of(b);
    if (c) {
        gp_free_aligned(c->sparse);
        gp_free_aligned(c->dense);
        gp_free_aligned(c->g_sparse);
        gp_free_aligned(c->g_dense);
        gp_free_aligned(c->m_sparse);
        gp_free_aligned(c->v_sparse);
        gp_free_aligned(c->m_dense);
        gp_free_aligned(c->v_dense);
        cpu_workspace_free(c->ws);
        free(c);
    }
    free(b);
}

backend *backend_cpu_create(const model_layout *layout, const backend_opts *opts, gp_err *e)
{
    backend *b = gp_xcalloc(1, sizeof *b);
    cpu_impl *c = gp_xcalloc(1, sizeof *c);
    b->name = "cpu";
    b->layout = layout;
    b->opts = *opts;
    b->impl = c;
    size_t ns = (size_t)layout->sparse_numel * sizeof(float), nd = (size_t)layout->dense_numel * sizeof(float);
    int frozen = opts->freeze_sparse;
    /* The memory plan: parameters, gradients and moments per arena; a frozen item table has
     * parameters only. */
    if (!(c->sparse = gp_alloc_or_fail(ns, "item embeddings", e)) ||
        !(c->dense = gp_alloc_or_fail(nd, "dense parameters", e)) ||
        !(c->g_dense = gp_alloc_or_fail(nd, "dense gradients", e)) ||
        !(c->m_dense = gp_alloc_or_fail(nd, "dense AdamW state", e)) ||
        !(c->v_dense = gp_alloc_or_fail(nd, "dense AdamW state", e)) ||
        (!frozen && !(c->g_sparse = gp_alloc_or_fail(ns, "item embedding gradients", e))) ||
        (!frozen && !(c->m_sparse = gp_alloc_or_fail(ns, "item embedding AdamW state", e))) ||
        (!frozen && !(c->v_sparse = gp_alloc_or_fail(ns, "item embedding AdamW state", e)))) {
        cpu_destroy(b);
        return NULL;
    }
    set_threads(b);
    c->ws = cpu_workspace_create(layout, opts->max_batch, e);
    if (!c->ws) {
        cpu_destroy(b);
        return NULL;
    }
    b->set_params = cpu_set_params;
    b->get_params = cpu_get_params;
    b->get_grads = cpu_get_grads;
    b->forward_backward = cpu_forward_backward;
    b->forward = cpu_forward;
    b->rank_targets = cpu_rank_targets;
    b->optimizer_step = cpu_optimizer_step;
    b->sync_grads = cpu_sync_grads;
    b->zero_grads = cpu_zero_grads;
    b->get_optim_state = cpu_get_optim_state;
    b->set_optim_state = cpu_set_optim_state;
    b->device_bytes = cpu_device_bytes;
    b->destroy = cpu_destroy;
    return b;
}
