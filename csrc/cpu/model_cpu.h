/* cpu/model_cpu: the whole GPSD model's forward and backward on the CPU, composed from the
 * reference ops of cpu/ops.h, in fp32.
 *
 * Sequences are packed: sequence b contributes its n_b history tokens plus the candidate slot
 * (n_b + 1 rows); the official model's padding positions after the candidate never influence a
 * loss (causal: nothing before them sees them; bidirectional: keys stop at the candidate), so
 * leaving them out is exact and saves their compute.
 *
 * All activations live in one workspace sized once for the largest micro-batch
 * (cpu_workspace_bytes / cpu_workspace_init); nothing is allocated per step.
 */
#ifndef GPSDREC_CPU_MODEL_CPU_H
#define GPSDREC_CPU_MODEL_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "batch.h"
#include "model.h"

typedef struct cpu_workspace cpu_workspace;

/* Workspace for micro-batches of up to max_batch sequences. */
cpu_workspace *cpu_workspace_create(const model_layout *l, int max_batch, gp_err *e);
void cpu_workspace_free(cpu_workspace *ws);
size_t cpu_workspace_bytes(const cpu_workspace *ws);

/* Forward, and backward when d_dense is non-NULL: accumulates grad_scale * d(loss)/d(params)
 * into d_sparse (NULL when the item table is frozen) and d_dense. want_rank computes the rank
 * head even when its loss weight is 0 (evaluation). rank_prob [B] may be NULL. */
int cpu_model_step(cpu_workspace *ws, const model_layout *l, const float *sparse, const float *dense,
                   float *d_sparse, float *d_dense, const batch *x, float grad_scale, int want_rank,
                   step_losses *out, float *rank_prob, gp_err *e);

/* For each sequence, the rank of target_item among items 1..n_items-1 by the item head's score
 * at the last history position (see backend.h rank_targets). */
int cpu_model_rank_targets(cpu_workspace *ws, const model_layout *l, const float *sparse, const float *dense,
                           const batch *x, int64_t *rank, gp_err *e);

#endif
