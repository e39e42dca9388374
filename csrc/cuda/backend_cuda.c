/* The CUDA backend: bf16 compute with fp32 master weights, gradients and AdamW state on one GPU.
 *
 * Memory plan (everything allocated once, at creation):
 * - parameter arenas: the item table (fp32 master; gradient and AdamW moments unless frozen) and
 *   the dense arena (fp32 master, bf16 compute copy, fp32 gradient, fp32 moments). The dense
 *   arena uses a device order of its own in which each block's wq|wk|wv and w1|w3 are adjacent,
 *   so the QKV and gate/up projections are single GEMMs; every tensor starts 128-element aligned.
 *   set_params/get_params translate to and from the canonical layout of model.h.
 * - activation arena: every saved activation and backward temporary for the largest micro-batch
 *   (see cuda/model_cuda.c), carved once.
 * - a metadata buffer (pinned on the host, mirrored on the device) carrying each micro-batch's
 *   packed token ids, positions, label rows and negatives in one copy.
 * One compute stream runs everything in order; events time it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda/cuda_util.h"
#include "cuda/model_cuda.h"
#include "kernels.h"

static cuda_model *impl_of(backend *b) { return (cuda_model *)b->impl; }

static int cuda_set_params(backend *b, const float *sparse, const float *dense, gp_err *e)
{
    return cuda_model_set_params(impl_of(b), sparse, dense, e);
}

static int cuda_get_params(backend *b, float *sparse, float *dense, gp_err *e)
{
    return cuda_model_get_params(impl_of(b), sparse, dense, e);
}

static int cuda_get_grads(backend *b, float *sparse, float *dense, gp_err *e)
{
    return cuda_model_get_grads(impl_of(b), sparse, dense, e);
}

static int cuda_zero_grads(backend *b, gp_err *e) { return cuda_model_zero_grads(impl_of(b), e); }

static int cuda_forward_backward(backend *b, const batch *x, float grad_scale, step_losses *out, float *rank_prob,
                                 gp_err *e)
{
    return cuda_model_step(impl_of(b), x, grad_scale, 1, 0, out, rank_prob, e);
}

static int cuda_forward(backend *b, const batch *x, int want_rank, step_losses *out, float *rank_prob, gp_err *e)
{
    return cuda_model_step(impl_of(b), x, 1.0f, 0, want_rank, out, rank_prob, e);
}

static int cuda_rank_targets(backend *b, const batch *x, int64_t *rank, gp_err *e)
{
    return cuda_model_rank_targets(impl_of(b), x, rank, e);
}

static int cuda_optimizer_step(backend *b, const optim_hparams *h, double *grad_norm, gp_err *e)
{
    return cuda_model_optimizer_step(impl_of(b), h, grad_norm, e);
}

static int cuda_sync_grads(backend *b, gp_err *e) { return cuda_model_sync_grads(impl_of(b), e); }

static int cuda_get_optim_state(backend *b, float *m_sparse, float *v_sparse, float *m_dense, float *v_dense, gp_err *e)
{
    return cuda_model_get_optim_state(impl_of(b), m_sparse, v_sparse, m_dense, v_dense, e);
}

static int cuda_set_optim_state(backend *b, const float *m_sparse, const float *v_sparse, const float *m_dense,
                                const float *v_dense, gp_err *e)
{
    return cuda_model_set_optim_state(impl_of(b), m_sparse, v_sparse, m_dense, v_dense, e);
}

static size_t cuda_device_bytes(backend *b) { return cuda_model_device_bytes(impl_of(b)); }

static void cuda_destroy(backend *b)
{
    if (!b)
        return;
    cuda_model_destroy(impl_of(b));
    free(b);
}

backend *backend_cuda_create(const model_layout *layout, const backend_opts *opts, gp_err *e)
{
    cuda_model *m = cuda_model_create(layout, opts, e);
    if (!m)
        return NULL;
    backend *b = gp_xcalloc(1, sizeof *b);
    b->name = "cuda";
    b->layout = layout;
    b->opts = *opts;
    b->impl = m;
    b->set_params = cuda_set_params;
    b->get_params = cuda_get_params;
    b->get_grads = cuda_get_grads;
    b->forward_backward = cuda_forward_backward;
    b->forward = cuda_forward;
    b->rank_targets = cuda_rank_targets;
    b->optimizer_step = cuda_optimizer_step;
    b->sync_grads = cuda_sync_grads;
    b->zero_grads = cuda_zero_grads;
    b->get_optim_state = cuda_get_optim_state;
    b->set_optim_state = cuda_set_optim_state;
    b->device_bytes = cuda_device_bytes;
    b->destroy = cuda_destroy;
    return b;
}
