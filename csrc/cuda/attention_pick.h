/* cuda/attention_pick: chooses between the own tensor-core attention kernels (kernels.h) and
 * cuDNN's fused attention (attention_cudnn.h) by timing both on the model's own shape.
 *
 * The probe fills the given buffers with fresh random bf16 inputs for n_seq full-length
 * sequences (every sequence max_len positions, the packed layout of kernels.h; the caller has
 * uploaded the matching seq_off / seq_len / ragged offsets), runs each implementation's forward
 * + backward a few times to warm up, then times `reps` of them with CUDA events and reports the
 * median per call. Each implementation's time includes the rotary embedding as the model applies
 * it: folded into the own kernels where rope_cs is given (k_attention_rope_*), else the two
 * k_rope_qk passes around the attention, as always around cuDNN's. The probe restores the qkv
 * inputs before every run (untimed) from a device copy, since k_rope_qk rotates them in place.
 * It also runs cuDNN's backward twice on the same inputs and compares the gradients bit for bit,
 * since the trainer promises reproducible runs; and it reports the largest difference between
 * the two implementations' outputs relative to the largest output magnitude, so a wrong graph is
 * never picked for speed. Everything runs on stream `s` and synchronises.
 * Returns 0 with r filled, -1 with e set on an error, and 1 (e says why) where the device has no
 * room for the probe's copy of the inputs: the caller then keeps the own kernels, which need no
 * extra memory, rather than fail. */
#ifndef GPSDREC_CUDA_ATTENTION_PICK_H
#define GPSDREC_CUDA_ATTENTION_PICK_H

#include "cuda/attention_cudnn.h"

typedef struct {
    gp_bf16 *qkv, *out, *d_out, *d_qkv; /* [rows][3D], [rows][D], [rows][D], [rows][3D] */
    float *lse;                          /* [rows][H], also cuDNN's [n_seq][H][max_len] statistics */
    const int32_t *seq_off, *seq_len, *ragged_qkv, *ragged_out; /* device */
    const int32_t *tok_pos;  /* device [rows]: each row's position, for k_rope_qk */
    const float *rope_cs;    /* the model's k_rope_table, or NULL: the own kernels rotate separately */
    double rope_theta;
    int n_seq, max_len, n_heads, head_dim, causal;
} attn_probe;

typedef struct {
    double ms_own, ms_cudnn;   /* median forward + backward of one layer */
    int cudnn_deterministic;   /* two backward runs gave the same bits */
    double max_rel_diff_out;   /* |out_cudnn - out_own| max over max |out_own| */
    double max_rel_diff_grad;  /* the same for the q, k, v gradients */
} attn_probe_result;

int attention_probe(cudnn_attn *ca, const attn_probe *p, int reps, cudaStream_t s, attn_probe_result *r, gp_err *e);

#endif
