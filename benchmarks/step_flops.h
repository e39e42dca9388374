/* step_flops: the model FLOPs of one training step (forward + backward), for model FLOP
 * utilisation (MFU) = model FLOPs per step / step time / a measured bf16 GEMM ceiling.
 *
 * Convention (written into bench_step's JSON as `flops_convention`):
 * - Only matrix products count, each 2 * M * N * K; the backward of every product costs twice
 *   its forward (the data and the weight gradients), so a step is 3x the forward. Nothing that
 *   an implementation may redo (attention's recomputed scores, activation checkpointing) counts.
 * - Dense blocks: 2 * T * (4 D^2 + 3 D F) per layer, T = B * (S + 1) tokens (wq, wk, wv, wo,
 *   w1, w3, w2); the projectors 2 * T * D * E each when embedding_dim != dim.
 * - Attention: Q K^T and P V, 2 * L^2 * head_dim each per (sequence, head), L = S + 1; causal
 *   attention counts half of the full L^2 (what is needed, up to the diagonal's L/2).
 * - Item head: the sampled-softmax logits over the padded [B][S] grid the backend computes,
 *   2 * (B * S) * N * E (every position, labelled or not, against the sequence's N negatives).
 * - Category head: the full softmax, 2 * (B * S) * C * E. Rank head: 2 * B * (D * 4D + 4D).
 *   A head whose loss weight is zero is not computed and not counted.
 * - Embedding lookups, norms, elementwise ops and the optimizer: zero.
 */
#ifndef GPSDREC_BENCH_STEP_FLOPS_H
#define GPSDREC_BENCH_STEP_FLOPS_H

#include "model.h"

typedef struct {
    /* per step (forward + backward), in FLOPs */
    double blocks, projectors, attention, item_head, cate_head, rank_head;
    double total;
} step_flops;

#define STEP_FLOPS_CONVENTION                                                                          \
    "matmuls only, 2*M*N*K each, step = 3x forward (backward = 2x, no recomputation); "                \
    "blocks 2*T*(4D^2+3DF) per layer, T=B*(S+1); attention QK^T and PV 2*L^2*hd each per seq and head, " \
    "causal counted as half of the full L^2; item head 2*(B*S)*N*E over the padded grid; category head "  \
    "2*(B*S)*C*E; rank head 2*B*(4D^2+4D); embeddings, norms, elementwise and optimizer 0"

/* B sequences of S history slots (full length), for the heads the config's weights enable. */
void step_flops_count(const model_config *c, int64_t B, int64_t S, step_flops *f);

#endif
