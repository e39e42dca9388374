#include "cpu/model_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"

typedef struct {
    float *rstd1, *n1, *q, *k, *v, *lse, *att, *h, *rstd2, *n2, *a, *b, *g;
} layer_acts;

struct cpu_workspace {
    int B, S, T, N, D, E, F, H, C, L;
    void *mem;
    size_t bytes;
    /* packed token metadata */
    int32_t *tok_item, *tok_cate, *tok_seg, *tok_pos, *seq_len;
    int64_t *seq_off;
    /* trunk */
    float *x0, *pre_rstd, *pn;
    float **xs; /* L+1 residual streams: input of layer l, xs[L] the trunk output */
    layer_acts *layer;
    float *rstd_f, *hf, *post_lin, *post_rstd, *hp;
    /* item head */
    int32_t *item_row, *item_lab, *item_seq, *neg_row;
    float *ih, *ih_n, *ih_norm, *lab_e, *lab_n, *lab_norm, *neg_e, *neg_n, *neg_norm;
    float *d_ih_n, *d_lab_n, *d_neg_n, *d_ih, *d_lab, *d_neg;
    /* category head */
    int32_t *cate_row, *cate_lab;
    float *ch, *ch_n, *ch_norm, *ce_n, *ce_norm, *d_ch_n, *d_ch, *d_ce_n;
    /* rank head */
    int32_t *rank_row;
    float *r_in, *z1, *r1, *z, *prob, *dz, *dr1, *dz1, *dr_in;
    /* backward scratch */
    float *d_hp, *d_post, *d_hf, *d_x, *d_h, *d_n, *dq, *dk, *dv, *d_att, *d_g, *d_a, *d_b, *d_pn, *d_x0;
};

/* Carve one 64-byte aligned block out of the arena; with base == NULL only counts. */
static void *carve(char *base, size_t *cursor, size_t bytes)
{
    size_t at = (*cursor + 63) & ~(size_t)63;
    *cursor = at + bytes;
    return base ? base + at : NULL;
}

#define F32(n) ((size_t)(n) * sizeof(float))
#define I32(n) ((size_t)(n) * sizeof(int32_t))

/* Lays out every buffer; returns the total size. Called once to count, once to assign. */
static size_t plan(cpu_workspace *w, char *base)
{
    size_t c = 0;
    const size_t T = (size_t)w->T, B = (size_t)w->B, D = (size_t)w->D, E = (size_t)w->E, F = (size_t)w->F;
    const size_t H = (size_t)w->H, BN = (size_t)w->B * (size_t)w->N, C = (size_t)w->C;
    w->tok_item = carve(base, &c, I32(T));
    w->tok_cate = carve(base, &c, I32(T));
    w->tok_seg = carve(base, &c, I32(T));
    w->tok_pos = carve(base, &c, I32(T));
    w->seq_len = carve(base, &c, I32(B));
    w->seq_off = carve(base, &c, B * sizeof(int64_t));
    w->x0 = carve(base, &c, F32(T * E));
    w->pre_rstd = carve(base, &c, F32(T));
    w->pn = carve(base, &c, F32(T * E));
    for (int l = 0; l <= w->L; l++)
        w->xs[l] = carve(base, &c, F32(T * D));
    for (int l = 0; l < w->L; l++) {
        layer_acts *a = &w->layer[l];
        a->rstd1 = carve(base, &c, F32(T));
        a->n1 = carve(base, &c, F32(T * D));
        a->q = carve(base, &c, F32(T * D));
        a->k = carve(base, &c, F32(T * D));
        a->v = carve(base, &c, F32(T * D));
        a->lse = carve(base, &c, F32(T * H));
        a->att = carve(base, &c, F32(T * D));
        a->h = carve(base, &c, F32(T * D));
        a->rstd2 = carve(base, &c, F32(T));
        a->n2 = carve(base, &c, F32(T * D));
        a->a = carve(base, &c, F32(T * F));
        a->b = carve(base, &c, F32(T * F));
        a->g = carve(base, &c, F32(T * F));
    }
    w->rstd_f = carve(base, &c, F32(T));
    w->hf = carve(base, &c, F32(T * D));
    w->post_lin = carve(base, &c, F32(T * E));
    w->post_rstd = carve(base, &c, F32(T));
    w->hp = carve(base, &c, F32(T * E));
    w->item_row = carve(base, &c, I32(T));
    w->item_lab = carve(base, &c, I32(T));
    w->item_seq = carve(base, &c, I32(T));
    w->neg_row = carve(base, &c, I32(BN));
    w->ih = carve(base, &c, F32(T * E));
    w->ih_n = carve(base, &c, F32(T * E));
    w->ih_norm = carve(base, &c, F32(T));
    w->lab_e = carve(base, &c, F32(T * E));
    w->lab_n = carve(base, &c, F32(T * E));
    w->lab_norm = carve(base, &c, F32(T));
    w->neg_e = carve(base, &c, F32(BN * E));
    w->neg_n = carve(base, &c, F32(BN * E));
    w->neg_norm = carve(base, &c, F32(BN));
    w->d_ih_n = carve(base, &c, F32(T * E));
    w->d_lab_n = carve(base, &c, F32(T * E));
    w->d_neg_n = carve(base, &c, F32(BN * E));
    w->d_ih = carve(base, &c, F32(T * E));
    w->d_lab = carve(base, &c, F32(T * E));
    w->d_neg = carve(base, &c, F32(BN * E));
    w->cate_row = carve(base, &c, I32(T));
    w->cate_lab = carve(base, &c, I32(T));
    w->ch = carve(base, &c, F32(T * E));
    w->ch_n = carve(base, &c, F32(T * E));
    w->ch_norm = carve(base, &c, F32(T));
    w->ce_n = carve(base, &c, F32(C * E));
    w->ce_norm = carve(base, &c, F32(C));
    w->d_ch_n = carve(base, &c, F32(T * E));
    w->d_ch = carve(base, &c, F32(T * E));
    w->d_ce_n = carve(base, &c, F32(C * E));
    w->rank_row = carve(base, &c, I32(B));
    w->r_in = carve(base, &c, F32(B * D));
    w->z1 = carve(base, &c, F32(B * 4 * D));
    w->r1 = carve(base, &c, F32(B * 4 * D));
    w->z = carve(base, &c, F32(B));
    w->prob = carve(base, &c, F32(B));
    w->dz = carve(base, &c, F32(B));
    w->dr1 = carve(base, &c, F32(B * 4 * D));
    w->dz1 = carve(base, &c, F32(B * 4 * D));
    w->dr_in = carve(base, &c, F32(B * D));
    w->d_hp = carve(base, &c, F32(T * E));
    w->d_post = carve(base, &c, F32(T * E));
    w->d_hf = carve(base, &c, F32(T * D));
    w->d_x = carve(base, &c, F32(T * D));
    w->d_h = carve(base, &c, F32(T * D));
    w->d_n = carve(base, &c, F32(T * D));
    w->dq = carve(base, &c, F32(T * D));
    w->dk = carve(base, &c, F32(T * D));
    w->dv = carve(base, &c, F32(T * D));
    w->d_att = carve(base, &c, F32(T * D));
    w->d_g = carve(base, &c, F32(T * F));
    w->d_a = carve(base, &c, F32(T * F));
    w->d_b = carve(base, &c, F32(T * F));
    w->d_pn = carve(base, &c, F32(T * E));
    w->d_x0 = carve(base, &c, F32(T * E));
    return c;
}

cpu_workspace *cpu_workspace_create(const model_layout *l, int max_batch, gp_err *e)
{
    const model_config *c = &l->cfg;
    cpu_workspace *w = gp_xcalloc(1, sizeof *w);
    w->B = max_batch;
    w->S = c->max_history;
    w->T = max_batch * (c->max_history + 1);
    w->N = c->w_item > 0 ? c->n_negatives : 0;
    w->D = c->dim;
    w->E = c->emb_dim;
    w->F = c->ffn_hidden;
    w->H = c->n_heads;
    w->C = (int)c->n_cates;
    w->L = c->n_layers;
    w->xs = gp_xcalloc((size_t)w->L + 1, sizeof *w->xs);
    w->layer = gp_xcalloc((size_t)(w->L > 0 ? w->L : 1), sizeof *w->layer);
    w->bytes = plan(w, NULL);
    w->mem = gp_alloc_or_fail(w->bytes, "the CPU activation workspace", e);
    if (!w->mem) {
        cpu_workspace_free(w);
        return NULL;
    }
    plan(w, w->mem);
    return w;
}

void cpu_workspace_free(cpu_workspace *w)
{
    if (!w)
        return;
    gp_free_aligned(w->mem);
    free(w->xs);
    free(w->layer);
    free(w);
}

size_t cpu_workspace_bytes(const cpu_workspace *w) { return w->bytes; }

/* Packs the batch into token rows and checks every id, so no op ever reads out of bounds. */
static int pack_tokens(cpu_workspace *w, const model_config *c, const batch *x, gp_err *e)
{
    if (x->B > w->B)
        return gp_fail(e, "micro-batch of %d sequences exceeds the workspace's %d", x->B, w->B);
    if (x->S != c->max_history)
        return gp_fail(e, "batch has %d history slots, the model %d", x->S, c->max_history);
    int64_t T = 0;
    for (int b = 0; b < x->B; b++) {
        int n = x->hist_len[b];
        if (n < 1 || n > x->S)
            return gp_fail(e, "sequence %d: history length %d outside [1, %d]", b, n, x->S);
        w->seq_off[b] = T;
        w->seq_len[b] = n + 1;
        for (int t = 0; t <= n; t++) {
            int32_t item = t < n ? x->hist_item[(size_t)b * x->S + t] : x->target_item[b];
            int32_t cate = t < n ? x->hist_cate[(size_t)b * x->S + t] : x->target_cate[b];
            if (item < 0 || item >= c->n_items)
                return gp_fail(e, "sequence %d position %d: item id %d outside [0, %lld)", b, t, item,
                               (long long)c->n_items);
            if (cate < 0 || cate >= c->n_cates)
                return gp_fail(e, "sequence %d position %d: category id %d outside [0, %lld)", b, t, cate,
                               (long long)c->n_cates);
            w->tok_item[T + t] = item;
            w->tok_cate[T + t] = cate;
            w->tok_seg[T + t] = t == n;
            w->tok_pos[T + t] = t;
        }
        T += n + 1;
    }
    return (int)T;
}

/* Collects the labelled positions of one head: rows into the packed tokens and their labels. */
static int collect_labels(const batch *x, const int64_t *seq_off, const int32_t *labels, int64_t n_classes,
                          int32_t *row, int32_t *lab, int32_t *seq, const char *what, gp_err *e)
{
    int P = 0;
    for (int b = 0; b < x->B; b++) {
        for (int k = 0; k < x->S; k++) {
            int32_t y = labels[(size_t)b * x->S + k];
            if (y == LABEL_IGNORE)
                continue;
            if (k >= x->hist_len[b])
                return gp_fail(e, "sequence %d: %s label at position %d beyond its history of %d", b, what, k,
                               x->hist_len[b]);
            if (y < 0 || y >= n_classes)
                return gp_fail(e, "sequence %d position %d: %s label %d outside [0, %lld)", b, k, what, y,
                               (long long)n_classes);
            row[P] = (int32_t)(seq_off[b] + k);
            lab[P] = y;
            if (seq)
                seq[P] = b;
            P++;
        }
    }
    return P;
}

static void gather_rows(float *dst, const float *src, const int32_t *rows, int n, int dim)
{
#pragma omp parallel for schedule(static) if (n >= 1024)
    for (int p = 0; p < n; p++)
        memcpy(dst + (size_t)p * dim, src + (size_t)rows[p] * dim, (size_t)dim * sizeof(float));
}

/* dst[rows[p]] += src[p]; rows are distinct within one call. */
static void scatter_add_rows(float *dst, const float *src, const int32_t *rows, int n, int dim)
{
#pragma omp parallel for schedule(static) if (n >= 1024)
    for (int p = 0; p < n; p++) {
        float *d = dst + (size_t)rows[p] * dim;
        const float *s = src + (size_t)p * dim;
        for (int i = 0; i < dim; i++)
            d[i] += s[i];
    }
}

static void add_inplace(float *dst, const float *src, int64_t n)
{
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++)
        dst[i] += src[i];
}

static void normalise_or_copy(float *out, float *norm, const float *in, int64_t rows, int dim, int l2, float eps)
{
    if (l2)
        cpu_l2norm_fwd(out, norm, in, rows, dim, eps);
    else
        memcpy(out, in, (size_t)rows * dim * sizeof(float));
}

static void normalise_bwd_or_copy(float *d_in, const float *d_out, const float *out, const float *norm, int64_t rows,
                                  int dim, int l2, float eps, int accumulate)
{
    if (l2)
        cpu_l2norm_bwd(d_in, d_out, out, norm, rows, dim, eps, accumulate);
    else if (accumulate)
        add_inplace(d_in, d_out, rows * dim);
    else
        memcpy(d_in, d_out, (size_t)rows * dim * sizeof(float));
}

/* Forward through embeddings, blocks, final norm and output projector. Returns the number of
 * packed tokens, or -1. *heads_in receives the heads' input (hf, or hp with a projector). */
static int forward_trunk(cpu_workspace *w, const model_layout *l, const float *sparse, const float *dense,
                         const batch *x, float **heads_in, gp_err *e)
{
    const model_config *c = &l->cfg;
    const int D = c->dim, E = c->emb_dim, F = c->ffn_hidden, H = c->n_heads, hd = c->head_dim, B = x->B;
    const float *item_emb = sparse + l->item_emb;
    int T = pack_tokens(w, c, x, e);
    if (T < 0)
        return -1;

    /* ---- forward: embeddings and input projection ---- */
    float *emb_out = c->projected ? w->x0 : w->xs[0];
    cpu_embedding_fwd(emb_out, item_emb, w->tok_item, T, E, 0);
    cpu_embedding_fwd(emb_out, dense + l->cate_emb, w->tok_cate, T, E, 1);
    cpu_embedding_fwd(emb_out, dense + l->seg_emb, w->tok_seg, T, E, 1);
    if (c->projected) {
        cpu_rmsnorm_fwd(w->pn, w->pre_rstd, w->x0, dense + l->pre_norm, T, E, c->proj_eps);
        cpu_linear_fwd(w->xs[0], w->pn, dense + l->pre_linear, NULL, T, E, D);
    }

    /* ---- transformer blocks ---- */
    for (int li = 0; li < c->n_layers; li++) {
        const layer_offsets *o = &l->layers[li];
        layer_acts *a = &w->layer[li];
        const float *xin = w->xs[li];
        cpu_rmsnorm_fwd(a->n1, a->rstd1, xin, dense + o->attn_norm, T, D, c->norm_eps);
        cpu_linear_fwd(a->q, a->n1, dense + o->wq, NULL, T, D, D);
        cpu_linear_fwd(a->k, a->n1, dense + o->wk, NULL, T, D, D);
        cpu_linear_fwd(a->v, a->n1, dense + o->wv, NULL, T, D, D);
        cpu_rope_fwd(a->q, w->tok_pos, T, H, hd, c->rope_theta);
        cpu_rope_fwd(a->k, w->tok_pos, T, H, hd, c->rope_theta);
        cpu_attention_fwd(a->att, a->lse, a->q, a->k, a->v, w->seq_off, w->seq_len, B, H, hd, c->causal);
        cpu_linear_fwd(a->h, a->att, dense + o->wo, NULL, T, D, D);
        add_inplace(a->h, xin, (int64_t)T * D);
        cpu_rmsnorm_fwd(a->n2, a->rstd2, a->h, dense + o->ffn_norm, T, D, c->norm_eps);
        cpu_linear_fwd(a->a, a->n2, dense + o->w1, NULL, T, D, F);
        cpu_linear_fwd(a->b, a->n2, dense + o->w3, NULL, T, D, F);
        cpu_swiglu_fwd(a->g, a->a, a->b, (int64_t)T * F);
        cpu_linear_fwd(w->xs[li + 1], a->g, dense + o->w2, NULL, T, F, D);
        add_inplace(w->xs[li + 1], a->h, (int64_t)T * D);
    }
    cpu_rmsnorm_fwd(w->hf, w->rstd_f, w->xs[c->n_layers], dense + l->final_norm, T, D, c->norm_eps);
    float *hp = w->hf;
    if (c->projected) {
        cpu_linear_fwd(w->post_lin, w->hf, dense + l->post_linear, NULL, T, D, E);
        cpu_rmsnorm_fwd(w->hp, w->post_rstd, w->post_lin, dense + l->post_norm, T, E, c->proj_eps);
        hp = w->hp;
    }
    *heads_in = hp;
    return T;
}

int cpu_model_step(cpu_workspace *w, const model_layout *l, const float *sparse, const float *dense,
                   float *d_sparse, float *d_dense, const batch *x, float grad_scale, int want_rank,
                   step_losses *out, float *rank_prob, gp_err *e)
{
    const model_config *c = &l->cfg;
    const int D = c->dim, E = c->emb_dim, F = c->ffn_hidden, H = c->n_heads, hd = c->head_dim, B = x->B;
    const int backward = d_dense != NULL;
    const float *item_emb = sparse + l->item_emb;
    memset(out, 0, sizeof *out);
    if (c->w_item > 0 && x->N != c->n_negatives)
        return gp_fail(e, "batch has %d negatives per sequence, the model %d", x->N, c->n_negatives);

    float *hp;
    int T = forward_trunk(w, l, sparse, dense, x, &hp, e);
    if (T < 0)
        return -1;
    /* Gradient w.r.t. the heads' input; aliases d_hf when there is no projector. */
    float *d_hp = c->projected ? w->d_hp : w->d_hf;
    if (backward)
        memset(d_hp, 0, (size_t)T * E * sizeof(float));

    const float inv_temp = 1.0f / c->temperature;
    /* ---- item head: sampled softmax with in-sequence shared negatives ---- */
    if (c->w_item > 0) {
        int P = collect_labels(x, w->seq_off, x->item_label, c->n_items, w->item_row, w->item_lab, w->item_seq,
                               "item", e);
        if (P < 0)
            return -1;
        const int N = c->n_negatives;
        /* Negative ids index the table as PyTorch does: -n_items..-1 count from the end. The
         * accidental-hit mask still compares the ids as given, like the official model. */
        for (int64_t i = 0; i < (int64_t)B * N; i++) {
            int32_t id = x->negatives[i];
            if (id < -c->n_items || id >= c->n_items)
                return gp_fail(e, "sequence %lld: negative id %d outside [-%lld, %lld)", (long long)(i / N), id,
                               (long long)c->n_items, (long long)c->n_items);
            w->neg_row[i] = id < 0 ? (int32_t)(id + c->n_items) : id;
        }
        if (P > 0) {
            gather_rows(w->ih, hp, w->item_row, P, E);
            normalise_or_copy(w->ih_n, w->ih_norm, w->ih, P, E, c->l2_norm, c->l2_eps);
            cpu_embedding_fwd(w->lab_e, item_emb, w->item_lab, P, E, 0);
            normalise_or_copy(w->lab_n, w->lab_norm, w->lab_e, P, E, c->l2_norm, c->l2_eps);
            cpu_embedding_fwd(w->neg_e, item_emb, w->neg_row, (int64_t)B * N, E, 0);
            normalise_or_copy(w->neg_n, w->neg_norm, w->neg_e, (int64_t)B * N, E, c->l2_norm, c->l2_eps);
            double sum = 0;
            const int64_t norm = batch_norm_or(x->norm_item, P);
            float scale = grad_scale * c->w_item / (float)norm;
            if (backward) {
                memset(w->d_ih_n, 0, (size_t)P * E * sizeof(float));
                memset(w->d_lab_n, 0, (size_t)P * E * sizeof(float));
                memset(w->d_neg_n, 0, (size_t)B * N * E * sizeof(float));
            }
            cpu_sampled_softmax(&sum, backward ? w->d_ih_n : NULL, backward ? w->d_lab_n : NULL,
                                backward ? w->d_neg_n : NULL, w->ih_n, w->lab_n, w->neg_n, w->item_lab, x->negatives,
                                w->item_seq, P, B, N, E, inv_temp, c->logq, scale);
            out->item_loss = sum / norm;
            out->item_count = P;
            if (backward) {
                normalise_bwd_or_copy(w->d_ih, w->d_ih_n, w->ih_n, w->ih_norm, P, E, c->l2_norm, c->l2_eps, 0);
                scatter_add_rows(d_hp, w->d_ih, w->item_row, P, E);
                if (d_sparse) {
                    normalise_bwd_or_copy(w->d_lab, w->d_lab_n, w->lab_n, w->lab_norm, P, E, c->l2_norm, c->l2_eps, 0);
                    cpu_embedding_bwd(d_sparse + l->item_emb, w->d_lab, w->item_lab, P, E, NULL);
                    normalise_bwd_or_copy(w->d_neg, w->d_neg_n, w->neg_n, w->neg_norm, (int64_t)B * N, E, c->l2_norm,
                                          c->l2_eps, 0);
                    cpu_embedding_bwd(d_sparse + l->item_emb, w->d_neg, w->neg_row, (int64_t)B * N, E, NULL);
                }
            }
        }
    }

    /* ---- category head: full softmax over the category table ---- */
    if (c->w_cate > 0) {
        int P = collect_labels(x, w->seq_off, x->cate_label, c->n_cates, w->cate_row, w->cate_lab, NULL, "category",
                               e);
        if (P < 0)
            return -1;
        if (P > 0) {
            const int C = (int)c->n_cates;
            gather_rows(w->ch, hp, w->cate_row, P, E);
            normalise_or_copy(w->ch_n, w->ch_norm, w->ch, P, E, c->l2_norm, c->l2_eps);
            normalise_or_copy(w->ce_n, w->ce_norm, dense + l->cate_emb, C, E, c->l2_norm, c->l2_eps);
            double sum = 0;
            const int64_t norm = batch_norm_or(x->norm_cate, P);
            float scale = grad_scale * c->w_cate / (float)norm;
            if (backward) {
                memset(w->d_ch_n, 0, (size_t)P * E * sizeof(float));
                memset(w->d_ce_n, 0, (size_t)C * E * sizeof(float));
            }
            cpu_softmax_xent(&sum, backward ? w->d_ch_n : NULL, backward ? w->d_ce_n : NULL, w->ch_n, w->ce_n,
                             w->cate_lab, P, C, E, inv_temp, scale);
            out->cate_loss = sum / norm;
            out->cate_count = P;
            if (backward) {
                normalise_bwd_or_copy(w->d_ch, w->d_ch_n, w->ch_n, w->ch_norm, P, E, c->l2_norm, c->l2_eps, 0);
                scatter_add_rows(d_hp, w->d_ch, w->cate_row, P, E);
                normalise_bwd_or_copy(d_dense + l->cate_emb, w->d_ce_n, w->ce_n, w->ce_norm, C, E, c->l2_norm,
                                      c->l2_eps, 1);
            }
        }
    }

    /* Back through the output projector: d_hf = d(heads' input) mapped to the trunk width. */
    if (backward && c->projected) {
        cpu_rmsnorm_bwd(w->d_post, d_dense + l->post_norm, w->d_hp, w->post_lin, dense + l->post_norm, w->post_rstd, T,
                        E, 0);
        cpu_linear_bwd(w->d_hf, d_dense + l->post_linear, NULL, w->d_post, w->hf, dense + l->post_linear, T, D, E, 0);
    }

    /* ---- rank head on the candidate slot (it reads the trunk output, before any projector) ---- */
    int rank_on = c->w_rank > 0 || want_rank;
    if (rank_on) {
        for (int b = 0; b < B; b++)
            w->rank_row[b] = (int32_t)(w->seq_off[b] + x->hist_len[b]);
        gather_rows(w->r_in, w->hf, w->rank_row, B, D);
        cpu_linear_fwd(w->z1, w->r_in, dense + l->rank_w1, dense + l->rank_b1, B, D, 4 * D);
        cpu_relu_fwd(w->r1, w->z1, (int64_t)B * 4 * D);
        cpu_linear_fwd(w->z, w->r1, dense + l->rank_w2, dense + l->rank_b2, B, 4 * D, 1);
        int64_t count = 0;
        for (int b = 0; b < B; b++)
            count += x->click[b] == 0 || x->click[b] == 1;
        double sum = 0;
        int64_t counted = 0;
        int rank_grad = backward && c->w_rank > 0 && count > 0;
        const int64_t norm = batch_norm_or(x->norm_rank, count);
        float scale = count > 0 ? grad_scale * c->w_rank / (float)norm : 0.0f;
        cpu_bce_logits(&sum, &counted, w->prob, rank_grad ? w->dz : NULL, w->z, x->click, B, scale);
        out->rank_loss = counted ? sum / (double)batch_norm_or(x->norm_rank, counted) : 0.0;
        out->rank_count = counted;
        if (rank_prob)
            memcpy(rank_prob, w->prob, (size_t)B * sizeof(float));
        if (rank_grad) {
            cpu_linear_bwd(w->dr1, d_dense + l->rank_w2, d_dense + l->rank_b2, w->dz, w->r1, dense + l->rank_w2, B,
                           4 * D, 1, 0);
            cpu_relu_bwd(w->dz1, w->dr1, w->r1, (int64_t)B * 4 * D);
            cpu_linear_bwd(w->dr_in, d_dense + l->rank_w1, d_dense + l->rank_b1, w->dz1, w->r_in, dense + l->rank_w1,
                           B, D, 4 * D, 0);
            /* d_hf was fully written above: zeroed with d_hp, or by the projector's backward. */
            scatter_add_rows(w->d_hf, w->dr_in, w->rank_row, B, D);
        }
    }
    out->loss = c->w_item * out->item_loss + c->w_cate * out->cate_loss + c->w_rank * out->rank_loss;
    if (!backward)
        return 0;

    /* ---- backward through the trunk ---- */
    cpu_rmsnorm_bwd(w->d_x, d_dense + l->final_norm, w->d_hf, w->xs[c->n_layers], dense + l->final_norm, w->rstd_f, T,
                    D, 0);
    for (int li = c->n_layers - 1; li >= 0; li--) {
        const layer_offsets *o = &l->layers[li];
        layer_acts *a = &w->layer[li];
        const size_t TD = (size_t)T * D;
        /* feed-forward branch: xs[li+1] = h + W2 swiglu(W1 n2, W3 n2) */
        cpu_linear_bwd(w->d_g, d_dense + o->w2, NULL, w->d_x, a->g, dense + o->w2, T, F, D, 0);
        cpu_swiglu_bwd(w->d_a, w->d_b, w->d_g, a->a, a->b, (int64_t)T * F);
        cpu_linear_bwd(w->d_n, d_dense + o->w1, NULL, w->d_a, a->n2, dense + o->w1, T, D, F, 0);
        cpu_linear_bwd(w->d_n, d_dense + o->w3, NULL, w->d_b, a->n2, dense + o->w3, T, D, F, 1);
        memcpy(w->d_h, w->d_x, TD * sizeof(float));
        cpu_rmsnorm_bwd(w->d_h, d_dense + o->ffn_norm, w->d_n, a->h, dense + o->ffn_norm, a->rstd2, T, D, 1);
        /* attention branch: h = x + Wo attn(rope(Wq n1), rope(Wk n1), Wv n1) */
        cpu_linear_bwd(w->d_att, d_dense + o->wo, NULL, w->d_h, a->att, dense + o->wo, T, D, D, 0);
        cpu_attention_bwd(w->dq, w->dk, w->dv, w->d_att, a->q, a->k, a->v, a->att, a->lse, w->seq_off, w->seq_len, B,
                          H, hd, c->causal);
        cpu_rope_bwd(w->dq, w->tok_pos, T, H, hd, c->rope_theta);
        cpu_rope_bwd(w->dk, w->tok_pos, T, H, hd, c->rope_theta);
        cpu_linear_bwd(w->d_n, d_dense + o->wq, NULL, w->dq, a->n1, dense + o->wq, T, D, D, 0);
        cpu_linear_bwd(w->d_n, d_dense + o->wk, NULL, w->dk, a->n1, dense + o->wk, T, D, D, 1);
        cpu_linear_bwd(w->d_n, d_dense + o->wv, NULL, w->dv, a->n1, dense + o->wv, T, D, D, 1);
        memcpy(w->d_x, w->d_h, TD * sizeof(float));
        cpu_rmsnorm_bwd(w->d_x, d_dense + o->attn_norm, w->d_n, w->xs[li], dense + o->attn_norm, a->rstd1, T, D, 1);
    }
    const float *d_emb = w->d_x;
    if (c->projected) {
        cpu_linear_bwd(w->d_pn, d_dense + l->pre_linear, NULL, w->d_x, w->pn, dense + l->pre_linear, T, E, D, 0);
        cpu_rmsnorm_bwd(w->d_x0, d_dense + l->pre_norm, w->d_pn, w->x0, dense + l->pre_norm, w->pre_rstd, T, E, 0);
        d_emb = w->d_x0;
    }
    if (d_sparse)
        cpu_embedding_bwd(d_sparse + l->item_emb, d_emb, w->tok_item, T, E, NULL);
    cpu_embedding_bwd(d_dense + l->cate_emb, d_emb, w->tok_cate, T, E, NULL);
    cpu_embedding_bwd(d_dense + l->seg_emb, d_emb, w->tok_seg, T, E, NULL);
    return 0;
}

int cpu_model_rank_targets(cpu_workspace *w, const model_layout *l, const float *sparse, const float *dense,
                           const batch *x, int64_t *rank, gp_err *e)
{
    const model_config *c = &l->cfg;
    const int E = c->emb_dim, B = x->B;
    const int64_t V = c->n_items;
    float *hp;
    if (forward_trunk(w, l, sparse, dense, x, &hp, e) < 0)
        return -1;
    /* The catalogue's normalised embeddings, once per call (evaluation only). */
    float *table = gp_alloc_or_fail((size_t)V * E * sizeof(float), "the normalised item table", e);
    float *norms = gp_alloc_or_fail((size_t)V * sizeof(float), "item norms", e);
    float *query = gp_alloc_or_fail((size_t)B * E * sizeof(float), "ranking queries", e);
    float *qnorm = gp_alloc_or_fail((size_t)B * sizeof(float), "ranking query norms", e);
    if (!table || !norms || !query || !qnorm) {
        gp_free_aligned(table);
        gp_free_aligned(norms);
        gp_free_aligned(query);
        gp_free_aligned(qnorm);
        return -1;
    }
    normalise_or_copy(table, norms, sparse + l->item_emb, V, E, c->l2_norm, c->l2_eps);
    for (int b = 0; b < B; b++)
        memcpy(query + (size_t)b * E, hp + (size_t)(w->seq_off[b] + x->hist_len[b] - 1) * E, (size_t)E * sizeof(float));
    normalise_or_copy(query, qnorm, query, B, E, c->l2_norm, c->l2_eps);
#pragma omp parallel for schedule(dynamic, 1)
    for (int b = 0; b < B; b++) {
        const float *q = query + (size_t)b * E;
        int64_t target = x->target_item[b];
        double st = 0;
        for (int i = 0; i < E; i++)
            st += (double)q[i] * table[target * E + i];
        int64_t higher = 0;
        for (int64_t v = 1; v < V; v++) {
            if (v == target)
                continue;
            double s = 0;
            const float *t = table + v * E;
            for (int i = 0; i < E; i++)
                s += (double)q[i] * t[i];
            higher += s > st;
        }
        rank[b] = higher;
    }
    gp_free_aligned(table);
    gp_free_aligned(norms);
    gp_free_aligned(query);
    gp_free_aligned(qnorm);
    return 0;
}
