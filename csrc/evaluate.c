#include "evaluate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

const int EVAL_KS[EVAL_N_KS] = {1, 10, 50};

/* In a data-parallel run each rank evaluates its contiguous share of the records. */
static void my_share(const backend *b, int64_t n, int64_t *lo, int64_t *hi)
{
    const int W = dist_world(b->opts.dist), R = dist_rank(b->opts.dist);
    *lo = n * R / W;
    *hi = n * (R + 1) / W;
}

/* Replaces *p (this rank's `mine` elements of `elem` bytes) by every rank's, in rank order. */
static int gather_all(dist_ctx *d, void **p, int64_t mine, size_t elem, int64_t n_total, gp_err *e)
{
    void *all = NULL;
    size_t *off = gp_xmalloc((size_t)(dist_world(d) + 1) * sizeof *off);
    int rc = dist_allgather(d, *p, (size_t)mine * elem, &all, off, e);
    if (rc == 0 && off[dist_world(d)] != (size_t)n_total * elem)
        rc = gp_fail(e, "evaluation: the ranks gathered %zu bytes, expected %lld records", off[dist_world(d)],
                     (long long)n_total);
    free(off);
    if (rc != 0) {
        free(all);
        return -1;
    }
    gp_free_aligned(*p);
    void *copy = gp_alloc_or_fail((size_t)(n_total ? n_total : 1) * elem, "gathered evaluation results", e);
    if (!copy) {
        free(all);
        return -1;
    }
    memcpy(copy, all, (size_t)n_total * elem);
    free(all);
    *p = copy;
    return 0;
}

int evaluate_ctr(backend *b, const dataset *ds, const ds_record *all_recs, int64_t n_all, int batch_size,
                 int max_history, eval_result *r, float *probs, gp_err *e)
{
    memset(r, 0, sizeof *r);
    double t0 = gp_now();
    int64_t lo, hi;
    my_share(b, n_all, &lo, &hi);
    const ds_record *recs = all_recs + lo;
    const int64_t n = hi - lo;
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
    if (rc == 0 && dist_world(b->opts.dist) > 1 &&
        (gather_all(b->opts.dist, (void **)&prob, n, sizeof *prob, n_all, e) != 0 ||
         gather_all(b->opts.dist, (void **)&label, n, sizeof *label, n_all, e) != 0 ||
         gather_all(b->opts.dist, (void **)&user, n, sizeof *user, n_all, e) != 0))
        rc = -1;
    if (rc == 0) {
        r->n = n_all;
        r->auc = metrics_auc(prob, label, (size_t)n_all);
        r->gauc = metrics_gauc(prob, label, user, (size_t)n_all);
        r->logloss = metrics_logloss(prob, label, (size_t)n_all);
        if (probs)
            memcpy(probs, prob, (size_t)n_all * sizeof(float));
    }
    r->seconds = gp_now() - t0;
    batch_free(&x);
    free(ptrs);
    gp_free_aligned(prob);
    gp_free_aligned(label);
    gp_free_aligned(user);
    return rc;
}

int evaluate_next_item(backend *b, const dataset *ds, const ds_record *all_recs, int64_t n_all, int batch_size,
                       int max_history, eval_result *r, gp_err *e)
{
    memset(r, 0, sizeof *r);
    double t0 = gp_now();
    int64_t lo, hi;
    my_share(b, n_all, &lo, &hi);
    const ds_record *recs = all_recs + lo;
    const int64_t n = hi - lo;
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
    if (rc == 0 && dist_world(b->opts.dist) > 1) {
        /* the ranks' sums, added in rank order */
        double v[2 * EVAL_N_KS + 2];
        for (int k = 0; k < EVAL_N_KS; k++) {
            v[k] = hits[k];
            v[EVAL_N_KS + k] = dcg[k];
        }
        v[2 * EVAL_N_KS] = rr;
        v[2 * EVAL_N_KS + 1] = (double)counted;
        rc = dist_allreduce_f64(b->opts.dist, v, 2 * EVAL_N_KS + 2, e);
        for (int k = 0; k < EVAL_N_KS; k++) {
            hits[k] = v[k];
            dcg[k] = v[EVAL_N_KS + k];
        }
        rr = v[2 * EVAL_N_KS];
        counted = (int64_t)v[2 * EVAL_N_KS + 1];
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
