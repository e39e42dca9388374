/* cuda/attention_cudnn: the model's attention through cuDNN's fused flash-attention engines
 * (the backend graph API, plain C), on the same packed variable-length layout as kernels.h's
 * k_attention_fwd/bwd, so the CUDA backend can run either and pick by measurement.
 *
 * Layout (as kernels.h): sequence b occupies rows seq_off[b] .. seq_off[b] + seq_len[b] - 1 of
 * the packed qkv buffer (bf16 [rows][3D]: q at column 0, k at D, v at 2D), out and d_out are bf16
 * [rows][D], d_qkv has qkv's layout. cuDNN sees them as ragged [n_seq, H, max_len, head_dim]
 * tensors: the caller provides the ragged offsets in elements, ragged_qkv[b] = seq_off[b] * 3D and
 * ragged_out[b] = seq_off[b] * D for b <= n_seq (entry n_seq = rows * 3D, rows * D), and the
 * lengths seq_len[b] (int32, device). The graph is the one cudnn-frontend builds for SDPA with a
 * padding mask and, when causal, a top-left causal mask: scores scaled by 1/sqrt(head_dim) in
 * fp32, softmax statistics (max + log sum exp) written per (sequence, head, position) into
 * `stats` as fp32 [n_seq][H][max_len] (rows past a sequence's length are left unspecified).
 * The backward is the deterministic variant (cuDNN's dP-workspace graph: dQ written directly,
 * no atomically accumulated fp32 dQ), and engine configurations cuDNN marks non-deterministic
 * are refused.
 *
 * Plans are built per number of sequences (cudnn_attn_prepare, which must not run during CUDA
 * graph capture) and cached; execution only enqueues on the stream given at creation, so it can
 * be captured. The workspace is allocated once, for the largest batch, at creation; a smaller
 * batch whose plan would need more is refused by prepare (the caller then uses its own kernel).
 */
#ifndef GPSDREC_CUDA_ATTENTION_CUDNN_H
#define GPSDREC_CUDA_ATTENTION_CUDNN_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "kernels.h"
#include "util.h"

typedef struct cudnn_attn cudnn_attn;

typedef struct {
    int n_heads, head_dim;
    int max_len; /* positions of the longest sequence (the padded length cuDNN sees) */
    int max_seq; /* most sequences in one call */
    int causal;
} cudnn_attn_shape;

/* Whether cuDNN's fused attention can take this shape with the cuDNN found at run time (version,
 * GPU architecture, head_dim a multiple of 8 up to 128); when not, `why` says why. */
int cudnn_attn_supported(const cudnn_attn_shape *sh, char *why, size_t why_len);

/* Handle on stream `s`, plans for max_seq sequences, the workspace. NULL (e set) when cuDNN
 * cannot build a plan for this shape. */
cudnn_attn *cudnn_attn_create(const cudnn_attn_shape *sh, cudaStream_t s, gp_err *e);
void cudnn_attn_destroy(cudnn_attn *a);
size_t cudnn_attn_device_bytes(const cudnn_attn *a);
/* The cuDNN version string the plans were built with, e.g. "9.19.0". */
const char *cudnn_attn_version(void);

/* Builds (once) the plans for n_seq sequences. Returns 1 when ready, 0 when this n_seq cannot
 * run on cuDNN (no plan, workspace too large, plan cache full; reason in e), -1 on a hard error. */
int cudnn_attn_prepare(cudnn_attn *a, int n_seq, gp_err *e);

int cudnn_attn_fwd(cudnn_attn *a, gp_bf16 *out, float *stats, const gp_bf16 *qkv, const int32_t *seq_len,
                   const int32_t *ragged_qkv, const int32_t *ragged_out, int n_seq, gp_err *e);
/* d_qkv is overwritten with the gradients of q, k and v. */
int cudnn_attn_bwd(cudnn_attn *a, gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv, const gp_bf16 *out,
                   const float *stats, const int32_t *seq_len, const int32_t *ragged_qkv, const int32_t *ragged_out,
                   int n_seq, gp_err *e);

#endif
