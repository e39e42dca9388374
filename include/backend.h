/* backend: the interface every compute backend implements (cpu: the fp32 reference; cuda:
 * bf16 on the GPU). The training loop, evaluation and checkpoints are written once against it.
 *
 * Contract
 * - A backend owns the parameters, their gradients and the AdamW state for one model_layout,
 *   in whatever precision and place it likes; set_params/get_params exchange the canonical
 *   fp32 host layout of model.h (sparse arena = item table, dense arena = the rest).
 * - forward_backward runs one micro-batch and ACCUMULATES grad_scale * d(loss)/d(params) into
 *   the gradients; loss = w_item*item + w_cate*cate + w_rank*rank, each part the mean over its
 *   labelled positions / samples of this micro-batch (a part with nothing to average is 0 and
 *   contributes no gradient). Only heads with a non-zero weight are computed.
 * - optimizer_step computes the global gradient norm over every trained parameter, scales the
 *   gradients by min(1, max_grad_norm / (norm + 1e-6)) when max_grad_norm > 0 (PyTorch's
 *   clip_grad_norm_), applies AdamW (PyTorch semantics, decoupled weight decay on every trained
 *   parameter), and zeroes the gradients. A frozen item table is untouched and costs no
 *   gradient or optimizer memory.
 * - rank_prob (if non-NULL, [B]) receives sigmoid of the rank logit of each sequence; it is
 *   only meaningful when the rank head is computed (w_rank > 0 or want_rank in forward).
 * - Results are deterministic for a given backend, inputs and thread count.
 * - Data parallelism (opts.dist with more than one rank): every rank holds the same parameters
 *   and optimizer state. sync_grads, called once per step after the last micro-batch and before
 *   optimizer_step, leaves every rank with the sum over the ranks of the accumulated gradients
 *   (each rank's losses are already divided by the global counts, see batch.h), identical on
 *   every rank. The CUDA backend sums the dense gradients with NCCL while the backward of the
 *   micro-batch marked `sync` runs, and the item table's touched rows (or the whole table, when
 *   that moves fewer bytes) in sync_grads; the CPU backend sums over the group's TCP links.
 */
#ifndef GPSDREC_BACKEND_H
#define GPSDREC_BACKEND_H

#include <stdint.h>

#include "batch.h"
#include "dist.h"
#include "model.h"
#include "util.h"

typedef struct {
    int max_batch;     /* largest micro-batch (sequences) */
    int freeze_sparse; /* item table frozen: no gradient, no optimizer state, no update */
    int threads;       /* CPU threads, 0 = all */
    dist_ctx *dist;    /* the process group of a data-parallel run; NULL = one process */
    int dist_item_grads; /* DIST_ITEM_AUTO / ROWS / DENSE (settings.h) */
    int attention_kernel; /* ATTN_KERNEL_AUTO / OWN / CUDNN (settings.h); CUDA backend only */
    int recompute_blocks; /* keep only block inputs, recompute each block before its backward; CUDA only */
    int recompute_ffn; /* one gate/up product for all blocks, recomputed before each FFN backward; CUDA only */
    int sampled_softmax_kernel; /* SOFTMAX_KERNEL_AUTO / FUSED / GEMM (settings.h); CUDA backend only */
    int gemm_autotune; /* time cuBLASLt's candidates per GEMM shape (gemm_set_autotune); CUDA only */
} backend_opts;

typedef struct {
    double loss;                        /* weighted total */
    double item_loss, cate_loss, rank_loss;
    int64_t item_count, cate_count, rank_count; /* positions / samples averaged over */
} step_losses;

typedef struct {
    double lr, beta1, beta2, eps, weight_decay, max_grad_norm;
    int64_t step; /* 1-based optimizer step, for bias correction */
} optim_hparams;

typedef struct backend backend;
struct backend {
    const char *name;
    const model_layout *layout;
    backend_opts opts;
    void *impl;
    int (*set_params)(backend *b, const float *sparse, const float *dense, gp_err *e);
    int (*get_params)(backend *b, float *sparse, float *dense, gp_err *e);
    /* Copy the accumulated gradients out (sparse may be NULL; it is zero-filled when frozen). */
    int (*get_grads)(backend *b, float *sparse, float *dense, gp_err *e);
    int (*forward_backward)(backend *b, const batch *x, float grad_scale, step_losses *out, float *rank_prob,
                            gp_err *e);
    /* Forward only. want_rank computes the rank head even when w_rank == 0. */
    int (*forward)(backend *b, const batch *x, int want_rank, step_losses *out, float *rank_prob, gp_err *e);
    /* Next-item ranking against the whole catalogue: for each sequence, the 0-based rank of
     * target_item among items 1..n_items-1 by the item head's score at the last history
     * position (the number of items scoring strictly higher). */
    int (*rank_targets)(backend *b, const batch *x, int64_t *rank, gp_err *e);
    int (*optimizer_step)(backend *b, const optim_hparams *h, double *grad_norm, gp_err *e);
    /* Sums the step's gradients over the ranks (a no-op with one process). */
    int (*sync_grads)(backend *b, gp_err *e);
    int (*zero_grads)(backend *b, gp_err *e);
    /* Optimizer state in the canonical layout (m and v for each arena; sparse NULL when frozen). */
    int (*get_optim_state)(backend *b, float *m_sparse, float *v_sparse, float *m_dense, float *v_dense, gp_err *e);
    int (*set_optim_state)(backend *b, const float *m_sparse, const float *v_sparse, const float *m_dense,
                           const float *v_dense, gp_err *e);
    /* Bytes of device memory the backend allocated itself: arenas, workspaces, the cuDNN plans'
     * buffers (0 on the CPU backend). The counterpart of torch.cuda.max_memory_allocated, which
     * also leaves out the CUDA context and the libraries' loaded kernels; a drop in free device
     * memory counts those too. */
    size_t (*device_bytes)(backend *b);
    void (*destroy)(backend *b);
};

/* device: DEVICE_AUTO picks cuda when this build has it and a GPU is visible, else cpu. */
backend *backend_create(int device, const model_layout *layout, const backend_opts *opts, gp_err *e);
/* The options a run's settings give (freeze_sparse, threads, the CUDA kernel choices and the
 * recomputation switches, dist_item_grads); dist is NULL: the caller sets it. */
struct gp_settings_s;
backend_opts backend_opts_from_settings(const struct gp_settings_s *s, int max_batch);
void backend_destroy(backend *b);
/* Whether this build has the CUDA backend, and whether a GPU is visible now. */
int backend_cuda_compiled(void);
int backend_cuda_available(void);
int backend_cuda_device_count(void);

backend *backend_cpu_create(const model_layout *layout, const backend_opts *opts, gp_err *e);
#ifdef GPSDREC_WITH_CUDA
backend *backend_cuda_create(const model_layout *layout, const backend_opts *opts, gp_err *e);
#endif

#endif
