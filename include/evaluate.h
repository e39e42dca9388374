/* evaluate: metrics of a model (through its backend) over a set of dataset records.
 *
 * - evaluate_ctr: the rank head's click probability for every record (CTR samples): exact AUC,
 *   GAUC (per-user AUC weighted by samples) and logloss over all of them.
 * - evaluate_next_item: for records whose candidate is the user's true next item (CTR
 *   positives), the rank of that item among the whole catalogue by the item head's score at the
 *   last history position: HR@K and NDCG@K for K in EVAL_KS, and the mean reciprocal rank.
 * Records are processed in order in batches of batch_size; results do not depend on it.
 * In a data-parallel run (the backend's opts.dist) every rank evaluates a contiguous share of
 * the records in batches of batch_size, and the predictions (CTR) or the metric sums (next
 * item) are gathered, so every rank returns the metrics over all n records.
 */
#ifndef GPSDREC_EVALUATE_H
#define GPSDREC_EVALUATE_H

#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "dataset.h"

#define EVAL_N_KS 3
extern const int EVAL_KS[EVAL_N_KS]; /* 1, 10, 50 */

typedef struct {
    int64_t n;
    double auc, gauc, logloss;
    double hr[EVAL_N_KS], ndcg[EVAL_N_KS], mrr;
    double seconds;
} eval_result;

/* probs, if non-NULL, receives the n predictions in record order. */
int evaluate_ctr(backend *b, const dataset *ds, const ds_record *recs, int64_t n, int batch_size, int max_history,
                 eval_result *r, float *probs, gp_err *e);
int evaluate_next_item(backend *b, const dataset *ds, const ds_record *recs, int64_t n, int batch_size,
                       int max_history, eval_result *r, gp_err *e);

#endif
