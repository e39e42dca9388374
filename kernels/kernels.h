/* kernels: the hand-written CUDA kernels of the GPU backend, behind a plain C interface.
 *
 * Every launcher is callable from C (host code in csrc/cuda/), enqueues its work on the given
 * stream, never synchronises, and returns the cudaError_t of the launch (cudaGetLastError()
 * right after it). All sizes are validated by the caller; launchers handle any size including
 * tails (a size of 0 launches nothing and returns cudaSuccess). Row offsets are computed in
 * 64-bit (row * dim as int64_t). Results are deterministic: no floating-point atomics; every
 * reduction has a fixed order independent of scheduling.
 *
 * Types: bf16 tensors are passed as `gp_bf16 *` (the storage of __nv_bfloat16). Activations are
 * row-major [rows][dim]. "fp32" means float. Token metadata and ids are int32.
 *
 * Conventions shared with the CPU reference (csrc/cpu/ops.h), whose results these kernels must
 * reproduce: RMSNorm out = x * rsqrt(mean(x^2) + eps) * w computed in fp32; RoPE rotates pairs
 * (2i, 2i+1) by pos * theta^(-2i/head_dim) with the angle computed as the official model does
 * (freq = 1 / theta^(2i/head_dim) in fp32, angle = fp32(pos * freq), cos/sin of it);
 * L2 normalisation divides by max(||x||, eps); SwiGLU = silu(a) * b.
 */
#ifndef GPSDREC_KERNELS_H
#define GPSDREC_KERNELS_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef uint16_t gp_bf16;

/* ---- conversions ---------------------------------------------------------------------- */
/* dst[i] = bf16(src[i]) (round to nearest even), n elements. */
cudaError_t k_f32_to_bf16(gp_bf16 *dst, const float *src, int64_t n, cudaStream_t s);
/* dst[i] = float(src[i]). */
cudaError_t k_bf16_to_f32(float *dst, const gp_bf16 *src, int64_t n, cudaStream_t s);

/* ---- embeddings ----------------------------------------------------------------------- */
/* out[t] = item[tok_item[t]] + cate[tok_cate[t]] + seg[tok_seg[t]] (tables fp32 [*, dim]);
 * written as fp32 (out_f32, may be NULL) and bf16 (out_bf16, may be NULL). */
cudaError_t k_embed_fwd(float *out_f32, gp_bf16 *out_bf16, const float *item, const float *cate, const float *seg,
                        const int32_t *tok_item, const int32_t *tok_cate, const int32_t *tok_seg, int64_t rows,
                        int dim, cudaStream_t s);
/* out[r] = table[ids[r]] (fp32 table) as fp32 (out_f32) and/or bf16 (out_bf16). */
cudaError_t k_gather_rows(float *out_f32, gp_bf16 *out_bf16, const float *table, const int32_t *ids, int64_t rows,
                          int dim, cudaStream_t s);
/* The same from a bf16 table (fp32 out is the exact widening, bf16 out a copy). */
cudaError_t k_gather_rows_bf16(float *out_f32, gp_bf16 *out_bf16, const gp_bf16 *table, const int32_t *ids,
                               int64_t rows, int dim, cudaStream_t s);

/* Deterministic scatter-add of row gradients: table_grad[ids[r]] += src[r] for r < rows, rows
 * whose id is outside [0, n_ids) or has freeze_mask[id] != 0 skipped (freeze_mask may be NULL). The rows of one id are
 * added in increasing r; an id with more than 512 rows is summed in chunks of 512 consecutive
 * rows whose sums are then added in chunk order. The order depends only on the ids, so the result
 * is bit-identical run to run. Needs a plan built once for the largest `rows` and row width
 * (scratch for sorting (id, r) pairs with CUB and the chunk sums); the scratch is device memory
 * owned by the caller. */
typedef struct {
    int64_t max_rows;
    int64_t n_ids;         /* valid ids are in [0, n_ids), n_ids < 2^32 */
    int max_dim;           /* widest row */
    size_t scratch_bytes;  /* device bytes the caller must provide */
} k_scatter_plan;
cudaError_t k_scatter_plan_init(k_scatter_plan *p, int64_t max_rows, int64_t n_ids, int max_dim);
cudaError_t k_scatter_add_rows(float *table_grad, const float *src, const int32_t *ids, int64_t rows, int dim,
                               const uint8_t *freeze_mask, const k_scatter_plan *p, void *scratch, cudaStream_t s);
/* The same for bf16 rows that are gradients with respect to L2-normalised table rows, out =
 * x / max(||x||, eps) of x = table[id]: table_grad[id] += the L2 backward at table[id] of the sum
 * of the id's rows (in the order above), i.e. (g - out <out, g>) / ||x|| when ||x|| > eps, else
 * g / eps; the backward is linear in g, so this is the per-row backward summed, once per distinct
 * id, in fp32. No freeze mask (a frozen table has no gradient); ids outside [0, n_ids) skipped.
 * dim a multiple of 4 up to K_SCATTER_L2BWD_MAX_DIM, 16-byte aligned table and table_grad,
 * 8-byte aligned src. */
#define K_SCATTER_L2BWD_MAX_DIM 1024
int k_scatter_add_rows_l2bwd_supported(int dim);
cudaError_t k_scatter_add_rows_l2bwd(float *table_grad, const gp_bf16 *src, const int32_t *ids, int64_t rows, int dim,
                                     const float *table, float eps, const k_scatter_plan *p, void *scratch,
                                     cudaStream_t s);

/* dst[dst_rows[r]] += src[r] (fp32 [rows][dim]) where the caller guarantees dst_rows are distinct
 * (scattering per-position gradients back into the packed token rows). */
cudaError_t k_add_rows(float *dst, const float *src, const int32_t *dst_rows, int64_t rows, int dim, cudaStream_t s);

/* ---- normalisation -------------------------------------------------------------------- */
/* Residual add + RMSNorm, forward: sum = x + delta (delta bf16, may be NULL: sum = x), written
 * to sum_out (fp32, may alias x, may be NULL when delta is NULL); norm_out = bf16(RMSNorm(sum) * w);
 * rstd[r] saved (fp32). */
cudaError_t k_residual_rmsnorm_fwd(float *sum_out, gp_bf16 *norm_out, float *rstd, const float *x,
                                   const gp_bf16 *delta, const float *w, int64_t rows, int dim, float eps,
                                   cudaStream_t s);
/* RMSNorm backward: d_x = d_resid + dRMSNorm/dx . d_norm (fp32, written to d_out which may alias
 * d_resid; d_resid may be NULL = 0), also as bf16 into d_out_bf16 (may be NULL). norm_regen (may
 * be NULL) gets the forward's norm_out again, bf16(x rstd w) bit for bit from the x and rstd the
 * forward saved, so the model need not keep every norm output for its weight-gradient GEMM.
 * d_w += sum over rows of d_norm * x * rstd, reduced deterministically: per-block partial sums in
 * `partial` (fp32 scratch of k_rmsnorm_bwd_partial_floats(rows, dim) floats), then a fixed-order
 * column sum into d_w. */
int64_t k_rmsnorm_bwd_partial_floats(int64_t rows, int dim);
cudaError_t k_rmsnorm_bwd(float *d_out, gp_bf16 *d_out_bf16, gp_bf16 *norm_regen, float *d_w, const float *d_norm,
                          const float *d_resid, const float *x, const float *w, const float *rstd, int64_t rows,
                          int dim, float *partial, cudaStream_t s);
/* The same with a bf16 d_norm: the gradient of a norm output that only feeds bf16 GEMMs, as the
 * blocks' are (the official model's autocast rounds it to bf16 there too). */
cudaError_t k_rmsnorm_bwd_bf16(float *d_out, gp_bf16 *d_out_bf16, gp_bf16 *norm_regen, float *d_w,
                               const gp_bf16 *d_norm, const float *d_resid, const float *x, const float *w,
                               const float *rstd, int64_t rows, int dim, float *partial, cudaStream_t s);
/* Plain RMSNorm forward on a bf16 or fp32 input is the delta == NULL case above. */

/* L2 normalisation of rows: out = x / max(||x||, eps) (x fp32, out fp32 and/or bf16), norm[r]
 * = ||x[r]||. */
cudaError_t k_l2norm_fwd(float *out_f32, gp_bf16 *out_bf16, float *norm, const float *x, int64_t rows, int dim,
                         float eps, cudaStream_t s);
/* The same of the table rows ids[0..rows) (each in [0, table rows), 64-bit offsets): row r of
 * the outputs normalises table[ids[r]], with no gathered fp32 copy in between. */
cudaError_t k_l2norm_fwd_rows(float *out_f32, gp_bf16 *out_bf16, float *norm, const float *table, const int32_t *ids,
                              int64_t rows, int dim, float eps, cudaStream_t s);
/* d_x = (d_out - out * <out, d_out>) / norm when norm > eps else d_out / eps; written (=) or
 * added (accumulate != 0) into d_x (fp32). out is the fp32 forward output. d_x may be d_out
 * (in place) when accumulate == 0: each row is read whole before any of it is written. */
cudaError_t k_l2norm_bwd(float *d_x, const float *d_out, const float *out, const float *norm, int64_t rows, int dim,
                         float eps, int accumulate, cudaStream_t s);
/* The same with the forward output kept in bf16 only (the copy the logits GEMMs read); in place
 * as above. */
cudaError_t k_l2norm_bwd_bf16(float *d_x, const float *d_out, const gp_bf16 *out, const float *norm, int64_t rows,
                              int dim, float eps, int accumulate, cudaStream_t s);

/* out[r] = <a[r], b[r]> * alpha (fp32 rows of dim), the positive logits of the item head. */
cudaError_t k_row_dot(float *out, const float *a, const float *b, int64_t rows, int dim, float alpha, cudaStream_t s);
/* Backward of out = <a, b>: d_a[r] += d_out[r] * b[r]; d_b[r] (= or += when accumulate) d_out[r] * a[r]. */
cudaError_t k_row_dot_bwd(float *d_a, float *d_b, const float *d_out, const float *a, const float *b, int64_t rows,
                          int dim, int accumulate, cudaStream_t s);

/* ---- rotary embedding ------------------------------------------------------------------ */
/* In place on the q and k parts of a packed qkv buffer (bf16, row stride 3*n_heads*head_dim:
 * q at column 0, k at column n_heads*head_dim, v after): rotate by pos[r]. inverse != 0 applies
 * the transpose rotation (the backward of the forward). */
cudaError_t k_rope_qk(gp_bf16 *qkv, const int32_t *pos, int64_t rows, int n_heads, int head_dim, double theta,
                      int inverse, cudaStream_t s);
/* cs[2 (pos * head_dim/2 + i) + {0, 1}] = (cos, sin) of the angle k_rope_qk uses for position pos
 * and pair i, for pos < n_pos: the table the attention kernels with rope read (8-byte aligned). */
cudaError_t k_rope_table(float *cs, int n_pos, int head_dim, double theta, cudaStream_t s);

/* ---- attention ------------------------------------------------------------------------- */
/* Packed variable-length sequences, as in the CPU reference: sequence b occupies rows
 * seq_off[b] .. seq_off[b] + seq_len[b] - 1. q, k, v are read from the packed qkv buffer (bf16,
 * row stride 3*D, D = n_heads*head_dim), out is bf16 [rows][D], lse fp32 [rows][n_heads].
 * Scores q.k/sqrt(head_dim) in fp32; causal: query t sees keys 0..t; otherwise all keys of its
 * sequence. head_dim in {8, 16, 32, 64}; seq_len <= max_len <= K_ATTN_MAX_LEN.
 * When k_attention_resident_supported(max_len, head_dim) (short sequences: max_len <= 256 at
 * head_dim 16 or 32, <= 160 at 64) the resident kernels run (one CTA per (sequence, head), its
 * rows staged in shared memory once, which is sized by max_len: a longer sequence traps);
 * otherwise the tiled ones, which also cover sequences longer than max_len. */
#define K_ATTN_MAX_LEN 1024
cudaError_t k_attention_fwd(gp_bf16 *out, float *lse, const gp_bf16 *qkv, const int32_t *seq_off,
                            const int32_t *seq_len, int n_seq, int max_len, int n_heads, int head_dim, int causal,
                            cudaStream_t s);
/* d_qkv (bf16, same layout as qkv) is overwritten with the gradients of q, k and v. */
cudaError_t k_attention_bwd(gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv, const gp_bf16 *out,
                            const float *lse, const int32_t *seq_off, const int32_t *seq_len, int n_seq, int max_len,
                            int n_heads, int head_dim, int causal, cudaStream_t s);
int k_attention_resident_supported(int max_len, int head_dim);
/* The same attention with the rotary embedding folded in, on the resident kernels only
 * (cudaErrorInvalidValue where k_attention_resident_supported is false): q and k of qkv are the
 * unrotated ones, rotated at their row index within the sequence (position t = 0 .. len-1) with
 * the table rope_cs of k_rope_table(rope_cs, >= max_len, head_dim, theta) as they are staged. The
 * forward gives the bits of k_rope_qk (pos = t) followed by k_attention_fwd; the backward the
 * gradients of the unrotated q and k (k_attention_bwd then k_rope_qk inverse, with one bf16
 * rounding fewer) and of v. */
cudaError_t k_attention_rope_fwd(gp_bf16 *out, float *lse, const gp_bf16 *qkv, const float *rope_cs,
                                 const int32_t *seq_off, const int32_t *seq_len, int n_seq, int max_len, int n_heads,
                                 int head_dim, int causal, cudaStream_t s);
cudaError_t k_attention_rope_bwd(gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv, const float *rope_cs,
                                 const gp_bf16 *out, const float *lse, const int32_t *seq_off, const int32_t *seq_len,
                                 int n_seq, int max_len, int n_heads, int head_dim, int causal, cudaStream_t s);
/* The tiled kernels whatever the length (the tests and the kernel benchmark compare the two);
 * max_len only sizes the grid: a CTA loops over the row blocks past it. */
cudaError_t k_attention_tiled_fwd(gp_bf16 *out, float *lse, const gp_bf16 *qkv, const int32_t *seq_off,
                                  const int32_t *seq_len, int n_seq, int max_len, int n_heads, int head_dim,
                                  int causal, cudaStream_t s);
cudaError_t k_attention_tiled_bwd(gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv, const gp_bf16 *out,
                                  const float *lse, const int32_t *seq_off, const int32_t *seq_len, int n_seq,
                                  int max_len, int n_heads, int head_dim, int causal, cudaStream_t s);

/* The same attention for any head_dim in 1..64 (the golden vectors' 4, or sizes like 24 or 48)
 * on CUDA cores: one thread per query row (forward, dq) or key row (dk, dv), one block per
 * (sequence, head). Same layouts and results as the two launchers above; slower, for small
 * heads only. */
cudaError_t k_attention_generic_fwd(gp_bf16 *out, float *lse, const gp_bf16 *qkv, const int32_t *seq_off,
                                    const int32_t *seq_len, int n_seq, int n_heads, int head_dim, int causal,
                                    cudaStream_t s);
cudaError_t k_attention_generic_bwd(gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv, const gp_bf16 *out,
                                    const float *lse, const int32_t *seq_off, const int32_t *seq_len, int n_seq,
                                    int n_heads, int head_dim, int causal, cudaStream_t s);

/* ---- pointwise ------------------------------------------------------------------------- */
/* ab is [rows][2F] bf16 with a = columns 0..F-1 and b = columns F..2F-1 (the fused W1|W3 GEMM
 * output); g = silu(a) * b, bf16 [rows][F]. */
cudaError_t k_swiglu_fwd(gp_bf16 *g, const gp_bf16 *ab, int64_t rows, int F, cudaStream_t s);
/* d_ab (bf16 [rows][2F]) from d_g (bf16 [rows][F]) and ab. g (may be NULL): also written with
 * k_swiglu_fwd's output for the same ab, bit for bit (the backward regenerates g instead of the
 * forward keeping it); it must not alias d_g. */
cudaError_t k_swiglu_bwd(gp_bf16 *d_ab, gp_bf16 *g, const gp_bf16 *d_g, const gp_bf16 *ab, int64_t rows, int F,
                         cudaStream_t s);
/* out = bf16(relu(x + bias)) for x fp32 [rows][dim], bias fp32 [dim] (the rank head's hidden
 * layer). Its backward needs only out (relu'(z) = out > 0). */
cudaError_t k_bias_relu_fwd(gp_bf16 *out, const float *x, const float *bias, int64_t rows, int dim, cudaStream_t s);
/* d_x (bf16) = d_out * (out > 0); d_bias += column sums of d_x (fixed order). */
cudaError_t k_relu_bwd(gp_bf16 *d_x, float *d_bias, const float *d_out, const gp_bf16 *out, int64_t rows, int dim,
                       cudaStream_t s);

/* ---- losses (loss and gradient fused) ----------------------------------------------------- */
/* Sampled softmax rows, loss and gradient in one pass. Rows come as [n_seq][rows_per_seq]
 * (row r belongs to sequence r / rows_per_seq). For each row with label[r] != -100:
 *   positive logit z0 = pos_logit[r], negative logits z_j = logits[r*ld + j] for j < n_neg (both fp32
 *   and already multiplied by inv_temp); negative j is excluded (zero probability, zero gradient)
 *   when neg_ids[seq*n_neg + j] == label[r]; with logq, every kept z_j is lowered by
 *   log(kept) * inv_temp (the CPU reference subtracts log(kept) before the temperature);
 *   loss[r] = logsumexp(z0, kept z_j) - z0;
 *   d_pos[r] = scale * (p0 - 1); d_logits[r*ld + j] = bf16(scale * p_j) (0 when excluded).
 * Unlabelled rows get loss 0, d_pos 0 and zero d_logits. `scale` is d(total loss)/d(row loss)
 * times inv_temp, so the gradients are w.r.t. the un-scaled dot products. */
cudaError_t k_sampled_softmax_rows(float *loss, gp_bf16 *d_logits, float *d_pos, const float *logits,
                                   const float *pos_logit, const int32_t *label, const int32_t *neg_ids, int64_t rows,
                                   int rows_per_seq, int n_neg, int64_t ld, float inv_temp, int logq, float scale,
                                   cudaStream_t s);
/* The same sampled softmax fused with its logits and gradient products (sampled_softmax_fused.cu):
 * q [n_seq][rows_per_seq][emb_dim] and neg [n_seq][n_neg][emb_dim] bf16 (16-byte aligned), the
 * negative logits z_j = inv_temp * <q_r, neg_j> in fp32, then as k_sampled_softmax_rows (same
 * pos_logit, label, neg_ids, logq and scale; loss and d_pos written for every row). With d_q and
 * d_neg (both or neither; d_q fp32, 8-byte aligned; d_neg bf16, 4-byte aligned):
 * d_q[r] += sum_j g_rj neg_j and d_neg[j] = bf16(sum_r g_rj q_r) (written), g_rj the bf16-rounded
 * gradient k_sampled_softmax_rows would write to d_logits. Deterministic. Only for the shapes
 * k_sampled_softmax_fused_supported accepts (emb_dim 32 or 64, rows_per_seq <= 256) and n_neg >= 1;
 * otherwise cudaErrorInvalidValue. */
int k_sampled_softmax_fused_supported(int rows_per_seq, int emb_dim);
cudaError_t k_sampled_softmax_fused(float *loss, float *d_pos, float *d_q, gp_bf16 *d_neg, const gp_bf16 *q,
                                    const gp_bf16 *neg, const float *pos_logit, const int32_t *label,
                                    const int32_t *neg_ids, int64_t n_seq, int rows_per_seq, int n_neg, int emb_dim,
                                    float inv_temp, int logq, float scale, cudaStream_t s);
/* Full softmax cross-entropy rows: logits [rows][n_classes] fp32 (row stride ld, already times
 * inv_temp), label[r] in [0, n_classes) or -100 (row skipped: loss 0, zero gradient).
 * loss[r] = logsumexp - z_label; d_logits[r*ld + c] = bf16(scale * (softmax_c - [c == label])),
 * scale as above. */
cudaError_t k_softmax_xent_rows(float *loss, gp_bf16 *d_logits, const float *logits, const int32_t *label,
                                int64_t rows, int n_classes, int64_t ld, float scale, cudaStream_t s);
/* BCE with logits for the rank head's output: z[r] = logit[r] + bias[0]; rows whose label is 0
 * or 1 count, others are skipped. prob[r] = sigmoid(z[r]) for every row; loss[r] = BCE (0 when
 * skipped); d_logit[r] = scale * (sigmoid - label) (0 when skipped; may be NULL); d_bias[0] +=
 * the sum of d_logit in row order (may be NULL). */
cudaError_t k_bce_logits(float *prob, float *loss, float *d_logit, float *d_bias, const float *logit,
                         const float *bias, const int32_t *label, int64_t n, float scale, cudaStream_t s);

/* y[i] += a * x[i] for i < n (fp32). */
cudaError_t k_axpy(float *y, const float *x, float a, int64_t n, cudaStream_t s);

/* ---- evaluation -------------------------------------------------------------------------- */
/* Next-item ranking: for each row r < rows, count[r] += the number of columns j < cols with
 * col_base + j != 0 (padding), col_base + j != target[r], and scores[r*ld + j] > threshold[r].
 * Integer counts, so the result is exact and deterministic. */
cudaError_t k_count_greater(int64_t *count, const float *scores, int64_t ld, const float *threshold,
                            const int32_t *target, int64_t rows, int64_t cols, int64_t col_base, cudaStream_t s);

/* ---- reductions and the optimiser -------------------------------------------------------- */
/* Deterministic sums: every launcher below reduces with a fixed tree (per-block partial sums in
 * a fixed element order, then one block summing the partials in order), accumulating in double.
 * `scratch` is caller-owned device memory of at least K_REDUCE_SCRATCH doubles. */
#define K_REDUCE_SCRATCH 4096
/* out[0] = sum of x[0..n). */
cudaError_t k_sum(double *out, const float *x, int64_t n, double *scratch, cudaStream_t s);
/* out[0] = sum over the n_ranges ranges (ptrs[i], lens[i]) of the squares of their elements.
 * ptrs and lens are device arrays (built once per model: the trained tensors). */
cudaError_t k_sum_squares_ranges(double *out, const float *const *ptrs, const int64_t *lens, int n_ranges,
                                 double *scratch, cudaStream_t s);
/* AdamW (PyTorch semantics, see csrc/cpu/ops.h cpu_adamw) over the ranges i < n_ranges
 * (device arrays of pointers p, g, m, v, bf16_copy and lengths). The gradient is first scaled
 * by min(1, max_norm / (sqrt(*sumsq) + 1e-6)) when max_norm > 0, with *sumsq read from device
 * memory so clipping needs no host round trip. If bf16_copy[i] is non-NULL the updated
 * parameter is also written there as bf16. Elementwise, so deterministic. */
cudaError_t k_adamw_ranges(float *const *p, const float *const *g, float *const *m, float *const *v,
                           gp_bf16 *const *bf16_copy, const int64_t *lens, int n_ranges, const double *sumsq,
                           double max_norm, double lr, double beta1, double beta2, double eps, double weight_decay,
                           int64_t step, cudaStream_t s);


/* ---- data-parallel item-table exchange (row_exchange.cu) --------------------------------- */
/* mask[ids[i]] = 1 for 0 <= ids[i] < n_rows. */
cudaError_t k_mark_rows(uint8_t *mask, const int32_t *ids, int64_t n, int64_t n_rows, cudaStream_t s);
/* Scratch bytes k_mask_to_ids needs for a mask of n_rows. */
cudaError_t k_mask_to_ids_scratch(int64_t n_rows, size_t *bytes);
/* ids[0..*count) = the marked rows in increasing order; *count (device) = how many. */
cudaError_t k_mask_to_ids(int32_t *ids, int64_t *count, const uint8_t *mask, int64_t n_rows, void *scratch,
                          size_t scratch_bytes, cudaStream_t s);
/* out[r] = table[ids[r]] for r < n, zero rows for n <= r < n_pad (fp32 [n_pad][dim]). */
cudaError_t k_gather_rows_padded(float *out, const float *table, const int32_t *ids, int64_t n, int64_t n_pad, int dim,
                                 cudaStream_t s);
/* table[ids[r]] += rows[r] for r < n with ids[r] >= 0; the non-negative ids must be distinct. */
cudaError_t k_add_rows_by_id(float *table, const float *rows, const int32_t *ids, int64_t n, int dim, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
