#include "metrics.h"

#include <math.h>
#include <stdlib.h>

#include "util.h"

typedef struct {
    float score;
    int32_t label;
    uint32_t group;
    uint32_t index; /* keeps the sort total, so the result never depends on qsort's stability */
} scored;

static int by_score(const void *pa, const void *pb)
{
    const scored *a = pa, *b = pb;
    if (a->score < b->score)
        return -1;
    if (a->score > b->score)
        return 1;
    return a->index < b->index ? -1 : (a->index > b->index);
}

static int by_group_score(const void *pa, const void *pb)
{
    const scored *a = pa, *b = pb;
    if (a->group != b->group)
        return a->group < b->group ? -1 : 1;
    return by_score(pa, pb);
}

/* AUC of an ascending-sorted run: Mann-Whitney U with average ranks for ties. */
static double auc_sorted(const scored *s, size_t n, double *n_pos_out, double *n_neg_out)
{
    double n_pos = 0, n_neg = 0, rank_sum_pos = 0;
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j + 1 < n && s[j + 1].score == s[i].score)
            j++;
        double avg_rank = 0.5 * ((double)i + (double)j) + 1.0;
        for (size_t k = i; k <= j; k++) {
            if (s[k].label == 1) {
                n_pos += 1;
                rank_sum_pos += avg_rank;
            } else {
                n_neg += 1;
            }
        }
        i = j + 1;
    }
    *n_pos_out = n_pos;
    *n_neg_out = n_neg;
    if (n_pos == 0 || n_neg == 0)
        return NAN;
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg);
}

static scored *collect(const float *score, const int32_t *label, const uint32_t *group, size_t n, size_t *m)
{
    scored *s = gp_xmalloc((n ? n : 1) * sizeof *s);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (label[i] != 0 && label[i] != 1)
            continue;
        s[k].score = isnan(score[i]) ? -INFINITY : score[i];
        s[k].label = label[i];
        s[k].group = group ? group[i] : 0;
        s[k].index = (uint32_t)i;
        k++;
    }
    *m = k;
    return s;
}

double metrics_auc(const float *score, const int32_t *label, size_t n)
{
    size_t m;
    scored *s = collect(score, label, NULL, n, &m);
    qsort(s, m, sizeof *s, by_score);
    double np, nn;
    double auc = auc_sorted(s, m, &np, &nn);
    free(s);
    return auc;
}

double metrics_gauc(const float *score, const int32_t *label, const uint32_t *user, size_t n)
{
    size_t m;
    scored *s = collect(score, label, user, n, &m);
    qsort(s, m, sizeof *s, by_group_score);
    double weighted = 0, weight = 0;
    size_t i = 0;
    while (i < m) {
        size_t j = i;
        while (j < m && s[j].group == s[i].group)
            j++;
        double np, nn;
        double auc = auc_sorted(s + i, j - i, &np, &nn);
        if (!isnan(auc)) {
            weighted += auc * (double)(j - i);
            weight += (double)(j - i);
        }
        i = j;
    }
    free(s);
    return weight > 0 ? weighted / weight : NAN;
}

double metrics_logloss(const float *prob, const int32_t *label, size_t n)
{
    double sum = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (label[i] != 0 && label[i] != 1)
            continue;
        double p = prob[i];
        if (!(p >= 1e-7))
            p = 1e-7;
        if (p > 1 - 1e-7)
            p = 1 - 1e-7;
        sum += label[i] ? -log(p) : -log(1 - p);
        k++;
    }
    return k ? sum / (double)k : NAN;
}
