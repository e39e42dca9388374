#include "batch.h"

#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "util.h"

void batch_alloc(batch *b, int capacity, int S, int N)
{
    memset(b, 0, sizeof *b);
    b->capacity = capacity;
    b->S = S;
    b->N = N;
    size_t bs = (size_t)capacity * (size_t)S;
    b->hist_item = gp_xcalloc(bs, sizeof(int32_t));
    b->hist_cate = gp_xcalloc(bs, sizeof(int32_t));
    b->item_label = gp_xcalloc(bs, sizeof(int32_t));
    b->cate_label = gp_xcalloc(bs, sizeof(int32_t));
    b->hist_len = gp_xcalloc((size_t)capacity, sizeof(int32_t));
    b->target_item = gp_xcalloc((size_t)capacity, sizeof(int32_t));
    b->target_cate = gp_xcalloc((size_t)capacity, sizeof(int32_t));
    b->click = gp_xcalloc((size_t)capacity, sizeof(int32_t));
    b->user = gp_xcalloc((size_t)capacity, sizeof(uint32_t));
    b->negatives = gp_xcalloc((size_t)capacity * (size_t)(N > 0 ? N : 1), sizeof(int32_t));
}

void batch_free(batch *b)
{
    free(b->hist_item);
    free(b->hist_cate);
    free(b->item_label);
    free(b->cate_label);
    free(b->hist_len);
    free(b->target_item);
    free(b->target_cate);
    free(b->click);
    free(b->user);
    free(b->negatives);
    memset(b, 0, sizeof *b);
}

void batch_fill(batch *b, const dataset *ds, const ds_record *const *recs, int count)
{
    const int S = b->S;
    b->B = count;
#pragma omp parallel for schedule(static) if (count >= 256)
    for (int i = 0; i < count; i++) {
        const ds_record *r = recs[i];
        int64_t n = r->hist_len;
        int64_t skip = n > S ? n - S : 0; /* keep the last S, as pad_or_truncate does */
        int len = (int)(n - skip);
        const uint32_t *items = ds->tok_item + r->offset + skip;
        const uint32_t *cates = ds->tok_cate + r->offset + skip;
        int32_t *hi = b->hist_item + (size_t)i * S, *hc = b->hist_cate + (size_t)i * S;
        int32_t *il = b->item_label + (size_t)i * S, *cl = b->cate_label + (size_t)i * S;
        int pretrain = r->label == DS_LABEL_PRETRAIN;
        for (int k = 0; k < len; k++) {
            hi[k] = (int32_t)items[k];
            hc[k] = (int32_t)cates[k];
        }
        for (int k = len; k < S; k++)
            hi[k] = hc[k] = 0;
        for (int k = 0; k < S; k++)
            il[k] = cl[k] = LABEL_IGNORE;
        if (pretrain) {
            for (int k = 0; k + 1 < len; k++) {
                il[k] = (int32_t)items[k + 1];
                cl[k] = (int32_t)cates[k + 1];
            }
            il[len - 1] = (int32_t)r->item;
            cl[len - 1] = (int32_t)r->cate;
        }
        b->hist_len[i] = len;
        b->target_item[i] = (int32_t)r->item;
        b->target_cate[i] = (int32_t)r->cate;
        b->click[i] = r->label;
        b->user[i] = r->user;
    }
}

void batch_sample_negatives(batch *b, uint64_t seed, uint64_t micro_step, int64_t n_items)
{
    if (b->N <= 0)
        return;
#pragma omp parallel for schedule(static) if (b->B >= 64)
    for (int i = 0; i < b->B; i++) {
        gp_rng r = gp_rng_stream(seed, RNG_PURPOSE_NEGATIVES, micro_step, (uint64_t)b->first_seq + (uint64_t)i);
        int32_t *neg = b->negatives + (size_t)i * b->N;
        for (int j = 0; j < b->N; j++)
            neg[j] = (int32_t)gp_rng_below64(&r, (uint64_t)n_items);
    }
}

void batch_label_counts(const batch *b, int64_t *item, int64_t *cate, int64_t *rank)
{
    int64_t ni = 0, nc = 0, nr = 0;
    for (int i = 0; i < b->B; i++) {
        for (int k = 0; k < b->S; k++) {
            ni += b->item_label[(size_t)i * b->S + k] != LABEL_IGNORE;
            nc += b->cate_label[(size_t)i * b->S + k] != LABEL_IGNORE;
        }
        nr += b->click[i] == 0 || b->click[i] == 1;
    }
    *item = ni;
    *cate = nc;
    *rank = nr;
}
