/* metrics: exact evaluation metrics over a whole set of predictions.
 *
 * Contract
 * - metrics_auc: exact ROC AUC by rank statistics; tied scores get the average rank, so a
 *   constant predictor scores exactly 0.5. Only labels 0 and 1 count; others are skipped.
 *   Returns NAN when either class is absent.
 * - metrics_logloss: mean binary cross-entropy of probabilities clipped to [1e-7, 1-1e-7].
 * - metrics_gauc: per-user AUC weighted by the user's number of samples, over users that have
 *   both a positive and a negative (the usual GAUC); NAN when no user qualifies.
 * - All are deterministic and take O(n log n) time and O(n) extra memory.
 */
#ifndef GPSDREC_METRICS_H
#define GPSDREC_METRICS_H

#include <stddef.h>
#include <stdint.h>

double metrics_auc(const float *score, const int32_t *label, size_t n);
double metrics_logloss(const float *prob, const int32_t *label, size_t n);
double metrics_gauc(const float *score, const int32_t *label, const uint32_t *user, size_t n);

#endif
