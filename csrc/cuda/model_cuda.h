/* cuda/model_cuda: the GPSD model's forward and backward on the GPU (bf16 GEMMs through
 * cuBLASLt with fp32 accumulation, the hand-written kernels of kernels/, fp32 residual stream,
 * fp32 master weights and AdamW state), mirroring csrc/cpu/model_cpu.c step for step so every
 * intermediate can be compared with the CPU reference.
 *
 * Head computation: the item and category heads work on the padded [B][S] grid of positions
 * (unlabelled slots carry label -100 and contribute nothing) so the per-sequence negatives are
 * one strided-batched GEMM; logits are produced chunk by chunk of sequences, never all at once.
 */
#ifndef GPSDREC_CUDA_MODEL_CUDA_H
#define GPSDREC_CUDA_MODEL_CUDA_H

#include "backend.h"
#include "batch.h"
#include "model.h"

typedef struct cuda_model cuda_model;

cuda_model *cuda_model_create(const model_layout *l, const backend_opts *opts, gp_err *e);
void cuda_model_destroy(cuda_model *m);

int cuda_model_set_params(cuda_model *m, const float *sparse, const float *dense, gp_err *e);
int cuda_model_get_params(cuda_model *m, float *sparse, float *dense, gp_err *e);
int cuda_model_get_grads(cuda_model *m, float *sparse, float *dense, gp_err *e);
int cuda_model_zero_grads(cuda_model *m, gp_err *e);
int cuda_model_get_optim_state(cuda_model *m, float *m_sparse, float *v_sparse, float *m_dense, float *v_dense,
                               gp_err *e);
int cuda_model_set_optim_state(cuda_model *m, const float *m_sparse, const float *v_sparse, const float *m_dense,
                               const float *v_dense, gp_err *e);

/* Forward, and backward when backward != 0 (see backend.h forward_backward / forward). */
int cuda_model_step(cuda_model *m, const batch *x, float grad_scale, int backward, int want_rank, step_losses *out,
                    float *rank_prob, gp_err *e);
int cuda_model_rank_targets(cuda_model *m, const batch *x, int64_t *rank, gp_err *e);
/* Data parallelism: the item-table part of backend.h's sync_grads (the dense part runs during
 * the backward of the micro-batch marked sync). */
int cuda_model_sync_grads(cuda_model *m, gp_err *e);
int cuda_model_optimizer_step(cuda_model *m, const optim_hparams *h, double *grad_norm, gp_err *e);

/* Bytes of device memory the model holds (parameters, state, activations, workspaces). */
size_t cuda_model_device_bytes(const cuda_model *m);

#endif
