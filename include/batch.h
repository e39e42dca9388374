/* batch: one micro-batch of model inputs on the host, in the official model's input layout,
 * and the loader that builds it from dataset records.
 *
 * Layout (B sequences, S = max_history history slots; the model adds the candidate slot):
 *   hist_item, hist_cate   [B][S]  right-padded with 0
 *   hist_len               [B]     n in [1, S]; the candidate/target goes to position n
 *   target_item/cate       [B]     CTR candidate, or the next item for pretraining
 *   click                  [B]     0/1 CTR label, 2 for pretraining sequences
 *   item_label, cate_label [B][S]  position k's label is the item at k+1, position n-1's label
 *                                  is the target; -100 = no label (padding, and CTR samples)
 *   negatives              [B][N]  sampled-softmax negatives of each sequence, uniform in [0, n_items)
 *                                  (a backend also accepts -n_items..-1, which index from the end as in
 *                                  PyTorch; the accidental-hit mask compares the ids as given)
 *   user                   [B]     user index (for GAUC)
 *
 * Loading follows the official SeqRecDataset: the history is truncated to its last S items
 * (labels likewise), pretraining records supervise every next item and the target, CTR
 * records have no next-item labels. Negatives of sequence b in micro-step m are drawn from
 * gp_rng_stream(seed, RNG_PURPOSE_NEGATIVES, m, b): a pure function of the run's seed and
 * position, so every backend and every resume sees the same negatives.
 *
 * Data parallelism: a rank holds its share of a global micro-batch; first_seq is the global index
 * of its sequence 0 (negatives are drawn by global index, so a run's negatives do not depend on
 * the number of ranks), norm_* are the loss denominators over all ranks (the backends average
 * each loss part over norm_* instead of this batch's own count when it is non-zero), and sync
 * marks the last micro-batch of an optimizer step (the backend starts summing gradients over the
 * ranks while its backward runs). batch_alloc sets all of them to 0.
 */
#ifndef GPSDREC_BATCH_H
#define GPSDREC_BATCH_H

#include <stdint.h>

#include "dataset.h"

#define LABEL_IGNORE (-100)

typedef struct {
    int B, capacity, S, N;
    int32_t *hist_item, *hist_cate, *hist_len;
    int32_t *target_item, *target_cate, *click;
    int32_t *item_label, *cate_label;
    int32_t *negatives;
    uint32_t *user;
    int first_seq;
    int64_t norm_item, norm_cate, norm_rank;
    int sync;
} batch;

/* capacity sequences, S history slots, N negatives per sequence (0 = none). */
void batch_alloc(batch *b, int capacity, int S, int N);
void batch_free(batch *b);

/* Fill b with the records recs[0..count) (count <= capacity) of dataset ds. */
void batch_fill(batch *b, const dataset *ds, const ds_record *const *recs, int count);

/* Draw the negatives of every sequence of b for micro-step `micro_step` (sequence i uses the
 * stream of global index first_seq + i). */
void batch_sample_negatives(batch *b, uint64_t seed, uint64_t micro_step, int64_t n_items);

/* The labelled positions / samples each loss part averages over: item labels, category labels,
 * clicks in {0, 1} (the same predicates as the backends). */
void batch_label_counts(const batch *b, int64_t *item, int64_t *cate, int64_t *rank);

/* The denominator a backend averages a loss part over: the batch's override when set. */
static inline int64_t batch_norm_or(int64_t norm, int64_t own) { return norm > 0 ? norm : own; }

#endif
