#include "evaluate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

const int EVAL_KS[EVAL_N_KS] = {1, 10, 50};

int evaluate_ctr(backend *b, const dataset *ds, const ds_record *recs, int64_t n, int batch_size, int max_history,
                 eval_result *r, float *probs, gp_err *e)
{
    memset(r, 0, sizeof *r);
    double t0 = gp_now();
    float *prob = gp_alloc_or_fail((size_t)(n ? n : 1) * sizeof(float), "evaluation predictions", e);
    int32_t *label = gp_alloc_or_fail((size_t)(n ? n : 1) * sizeof(int32_t), "evaluation labels", e);
    uint32_t *user = gp_alloc_or_fail((size_t)(n ? n : 1) * sizeof(uint32_t), "evaluation users", e);
    const ds_record **ptrs = gp_xmalloc((size_t)batch_size * sizeof *ptrs);
    batch x;
    batch_alloc(&x, batch_size, max_history, 0);
    int rc = (prob && label && user) ? 0 : -1;
    for (int64_t start = 0; start < n && rc == 0; start += batch_size) {
        int count = (int)GP_MIN((int64_t)batch_size, n - start);
        for (int i = 0; i < count; i++)
            ptrs[i] = &recs[start + i];
        batch_fill(&x, ds, ptrs, count);
        step_losses out;
        rc = b->forward(b, &x, 1, &out, prob + start, e);
        for (int i = 0; i < count; i++) {
            label[start + i] = recs[start + i].label;
            user[start + i] = recs[start + i].user;
        }
    }
    if (rc == 0) {
        r->n = n;
        r->auc = metrics_auc(prob, label, (size_t)n);
        r->gauc = metrics_gauc(prob, label, user, (size_t)n);
        r->logloss = metrics_logloss(prob, label, (size_t)n);
        if (probs)
            memcpy(probs, prob, (size_t)n * sizeof(float));
    }
    r->seconds = gp_now() - t0;
    batch_free(&x);
    free(ptrs);
    gp_free_aligned(prob);
    gp_free_aligned(label);
    gp_free_aligned(user);
    return rc;
}

int evaluate_next_item(backend *b, const dataset *ds, const ds_record *recs, int64_t n, int batch_size,
                       int max_history, eval_result *r, gp_err *e)
{
    memset(r, 0, sizeof *r);
    double t0 = gp_now();
    const ds_record **ptrs = gp_xmalloc((size_t)batch_size * sizeof *ptrs);
    int64_t *rank = gp_xmalloc((size_t)batch_size * sizeof *rank);
    batch x;
    batch_alloc(&x, batch_size, max_history, 0);
    int rc = 0;
    int64_t counted = 0;
    double hits[EVAL_N_KS] = {0}, dcg[EVAL_N_KS] = {0}, rr = 0;
    int64_t start = 0;
    while (start < n && rc == 0) {
        int count = 0;
        while (start < n && count < batch_size) {
            if (recs[start].label == 1)
                ptrs[count++] = &recs[start];
            start++;
        }
        if (count == 0)
            break;
        batch_fill(&x, ds, ptrs, count);
        rc = b->rank_targets(b, &x, rank, e);
        for (int i = 0; i < count && rc == 0; i++) {
            for (int k = 0; k < EVAL_N_KS; k++) {
                if (rank[i] < EVAL_KS[k]) {
                    hits[k] += 1;
                    dcg[k] += 1.0 / log2((double)rank[i] + 2.0);
                }
            }
            rr += 1.0 / ((double)rank[i] + 1.0);
            counted++;
        }
    }
    if (rc == 0) {
        r->n = counted;
        for (int k = 0; k < EVAL_N_KS; k++) {
            r->hr[k] = counted ? hits[k] / counted : NAN;
            r->ndcg[k] = counted ? dcg[k] / counted : NAN;
        }
        r->mrr = counted ? rr / counted : NAN;
    }
    r->seconds = gp_now() - t0;
    batch_free(&x);
    free(ptrs);
    free(rank);
    return rc;
}
