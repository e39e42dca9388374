/* Declarations of the CPU reference ops for one precision. Included twice by cpu/ops.h:
 * with REAL = float and OPS_FN(name) = name (the backend), and with REAL = double and
 * OPS_FN(name) = name##_f64 (gradient checks against finite differences run in double).
 * No include guard on purpose. See cpu/ops.h for the conventions. */

/* ---- dense layers ---------------------------------------------------------------------- */
/* out[r][o] = sum_i in[r][i] * w[o][i] (+ bias[o]); w has PyTorch's [out_dim, in_dim] layout. */
void OPS_FN(cpu_linear_fwd)(REAL *out, const REAL *in, const REAL *w, const REAL *bias, int64_t rows, int in_dim,
                            int out_dim);
/* d_in (=, or += when accumulate) = d_out . w; d_w += d_out^T . in; d_bias += sum_r d_out.
 * Any of d_in, d_w, d_bias may be NULL. */
void OPS_FN(cpu_linear_bwd)(REAL *d_in, REAL *d_w, REAL *d_bias, const REAL *d_out, const REAL *in, const REAL *w,
                            int64_t rows, int in_dim, int out_dim, int accumulate);

/* ---- normalisation --------------------------------------------------------------------- */
/* out = in * rstd * w, rstd[r] = 1/sqrt(mean(in[r]^2) + eps). rstd is saved for backward. */
void OPS_FN(cpu_rmsnorm_fwd)(REAL *out, REAL *rstd, const REAL *in, const REAL *w, int64_t rows, int dim, REAL eps);
/* d_in (= or +=) and d_w (+=). */
void OPS_FN(cpu_rmsnorm_bwd)(REAL *d_in, REAL *d_w, const REAL *d_out, const REAL *in, const REAL *w,
                             const REAL *rstd, int64_t rows, int dim, int accumulate);

/* out = in / max(||in||, eps) per row; norm[r] = ||in[r]|| saved for backward. */
void OPS_FN(cpu_l2norm_fwd)(REAL *out, REAL *norm, const REAL *in, int64_t rows, int dim, REAL eps);
/* d_in (= or +=): (d_out - out * <out, d_out>) / norm when norm > eps, else d_out / eps. */
void OPS_FN(cpu_l2norm_bwd)(REAL *d_in, const REAL *d_out, const REAL *out, const REAL *norm, int64_t rows, int dim,
                            REAL eps, int accumulate);

/* ---- rotary position embedding ---------------------------------------------------------- */
/* In place on x[rows][n_heads * head_dim]: for each head, pair (2i, 2i+1) is rotated by angle
 * pos[r] * theta^(-2i/head_dim) (the interleaved convention of the official model). */
void OPS_FN(cpu_rope_fwd)(REAL *x, const int32_t *pos, int64_t rows, int n_heads, int head_dim, double theta);
/* In place: the transpose (inverse) rotation, which is the gradient of the forward. */
void OPS_FN(cpu_rope_bwd)(REAL *dx, const int32_t *pos, int64_t rows, int n_heads, int head_dim, double theta);

/* ---- attention ------------------------------------------------------------------------- */
/* Packed variable-length sequences: sequence s occupies rows seq_off[s] .. seq_off[s]+seq_len[s]-1
 * of q, k, v, out (each [rows][n_heads * head_dim]). Scores are q.k / sqrt(head_dim); with causal
 * a query at position t sees keys 0..t of its sequence, otherwise every key of its sequence.
 * lse[row][head] (log-sum-exp of the scaled scores) is saved for backward. */
void OPS_FN(cpu_attention_fwd)(REAL *out, REAL *lse, const REAL *q, const REAL *k, const REAL *v,
                               const int64_t *seq_off, const int32_t *seq_len, int n_seq, int n_heads, int head_dim,
                               int causal);
/* dq, dk, dv are overwritten. */
void OPS_FN(cpu_attention_bwd)(REAL *dq, REAL *dk, REAL *dv, const REAL *d_out, const REAL *q, const REAL *k,
                               const REAL *v, const REAL *out, const REAL *lse, const int64_t *seq_off,
                               const int32_t *seq_len, int n_seq, int n_heads, int head_dim, int causal);

/* ---- pointwise ------------------------------------------------------------------------- */
/* out = silu(a) * b, silu(a) = a * sigmoid(a). */
void OPS_FN(cpu_swiglu_fwd)(REAL *out, const REAL *a, const REAL *b, int64_t n);
/* da, db overwritten. */
void OPS_FN(cpu_swiglu_bwd)(REAL *da, REAL *db, const REAL *d_out, const REAL *a, const REAL *b, int64_t n);
void OPS_FN(cpu_relu_fwd)(REAL *out, const REAL *in, int64_t n);
/* d_in overwritten; uses the forward output (d_in = d_out where out > 0). */
void OPS_FN(cpu_relu_bwd)(REAL *d_in, const REAL *d_out, const REAL *out, int64_t n);

/* ---- embeddings ------------------------------------------------------------------------ */
/* out[r] (= or +=) table[ids[r]]; row offsets are 64-bit (ids[r] * dim). */
void OPS_FN(cpu_embedding_fwd)(REAL *out, const REAL *table, const int32_t *ids, int64_t rows, int dim,
                               int accumulate);
/* d_table[ids[r]] += d_out[r], deterministically (the same order whatever the thread count).
 * Rows whose id has freeze_mask[id] != 0 are skipped; freeze_mask may be NULL. */
void OPS_FN(cpu_embedding_bwd)(REAL *d_table, const REAL *d_out, const int32_t *ids, int64_t rows, int dim,
                               const uint8_t *freeze_mask);

/* ---- losses ---------------------------------------------------------------------------- */
/* Sampled softmax with in-sequence shared negatives, fused forward and backward.
 * Row p (a labelled position, p < n_rows) belongs to sequence row_seq[p]; its logits are
 *   [ <h[p], pos_emb[p]>, <h[p], neg_emb[row_seq[p]][j]> for j < n_neg ] * inv_temp
 * where a negative whose id equals label[p] is left out (the official model pushes it to -1e6,
 * which is exactly zero probability); with logq, each kept negative's score has
 * log(number of kept negatives) subtracted before the temperature (the official code's
 * commented-out correction). Loss of the row = cross-entropy with the positive in slot 0.
 * *loss_sum = sum of row losses (double). With grad_scale g (d total_loss / d row_loss, the same
 * for every row), accumulates: d_h[p] += ..., d_pos[p] += ..., d_neg[s][j] += ... for the
 * inputs h [n_rows][dim], pos_emb [n_rows][dim], neg_emb [n_seq][n_neg][dim]. Grad pointers
 * may be NULL (forward only). */
void OPS_FN(cpu_sampled_softmax)(double *loss_sum, REAL *d_h, REAL *d_pos, REAL *d_neg, const REAL *h,
                                 const REAL *pos_emb, const REAL *neg_emb, const int32_t *label,
                                 const int32_t *neg_ids, const int32_t *row_seq, int64_t n_rows, int n_seq,
                                 int n_neg, int dim, REAL inv_temp, int logq, REAL grad_scale);
/* Full softmax cross-entropy of h [n_rows][dim] against every class embedding emb [n_classes][dim]
 * (logits = h . emb^T * inv_temp), label[p] in [0, n_classes). Same loss/grad conventions. */
void OPS_FN(cpu_softmax_xent)(double *loss_sum, REAL *d_h, REAL *d_emb, const REAL *h, const REAL *emb,
                              const int32_t *label, int64_t n_rows, int n_classes, int dim, REAL inv_temp,
                              REAL grad_scale);
/* Binary cross-entropy with logits over rows whose label is 0 or 1 (others skipped):
 * *loss_sum += sum of losses, *count += rows counted, prob[r] = sigmoid(logit[r]) for every row,
 * d_logit[r] = grad_scale * (sigmoid - label) for counted rows and 0 otherwise (if non-NULL). */
void OPS_FN(cpu_bce_logits)(double *loss_sum, int64_t *count, REAL *prob, REAL *d_logit, const REAL *logit,
                            const int32_t *label, int64_t n, REAL grad_scale);

/* ---- optimiser ------------------------------------------------------------------------- */
/* PyTorch AdamW (decoupled weight decay, bias-corrected), with g scaled by grad_scale first:
 *   p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). step t >= 1. */
void OPS_FN(cpu_adamw)(REAL *p, const REAL *g, REAL *m, REAL *v, int64_t n, double lr, double beta1, double beta2,
                       double eps, double weight_decay, int64_t step, double grad_scale);
/* Sum of squares in double with a fixed reduction tree (deterministic for any thread count). */
double OPS_FN(cpu_sum_squares)(const REAL *x, int64_t n);
