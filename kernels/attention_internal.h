/* attention_internal.h: what the attention launchers of kernels/ share (not part of the kernels.h
 * interface): the resident kernels' limits and launchers (attention_resident.cu), which
 * k_attention_fwd / k_attention_bwd (attention.cu) dispatch to. */
#ifndef GPSDREC_KERNELS_ATTENTION_INTERNAL_H
#define GPSDREC_KERNELS_ATTENTION_INTERNAL_H

#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels.h"

/* The resident kernels stage max_len rows (rounded up to 16) of q, k, v and d_out per CTA; they
 * are taken up to this length, when the backward's copy fits ATT_RES_SMEM_MAX bytes (two CTAs an
 * SM at least): head_dim 16 and 32 up to 256 positions, head_dim 64 up to 160. */
#define ATT_RES_MAX_LEN 256
#define ATT_RES_SMEM_MAX (96 * 1024)

/* Same arguments and results as k_attention_fwd / k_attention_bwd (rope_cs NULL) or
 * k_attention_rope_fwd / k_attention_rope_bwd (rope_cs the table); every seq_len <= max_len and
 * k_attention_resident_supported(max_len, head_dim). The other argument checks are the caller's. */
cudaError_t attention_resident_fwd(gp_bf16 *out, float *lse, const gp_bf16 *qkv, const float *rope_cs,
                                   const int32_t *seq_off, const int32_t *seq_len, int n_seq, int max_len, int n_heads,
                                   int head_dim, int causal, cudaStream_t s);
cudaError_t attention_resident_bwd(gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv, const float *rope_cs,
                                   const gp_bf16 *out, const float *lse, const int32_t *seq_off, const int32_t *seq_len,
                                   int n_seq, int max_len, int n_heads, int head_dim, int causal, cudaStream_t s);

#endif
