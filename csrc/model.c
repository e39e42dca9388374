#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

int model_ffn_hidden(int dim, int multiple_of)
{
    int hidden = (int)(2.0 * (4.0 * dim) / 3.0); /* int(2 * hidden_dim / 3) with hidden_dim = 4*dim */
    return multiple_of * ((hidden + multiple_of - 1) / multiple_of);
}

int model_config_from_settings(model_config *c, const gp_settings *s, int64_t n_items, int64_t n_cates, gp_err *e)
{
    memset(c, 0, sizeof *c);
    if (s->dim % s->n_heads != 0)
        return gp_fail(e, "dim (%lld) must be divisible by n_heads (%lld)", (long long)s->dim, (long long)s->n_heads);
    c->dim = (int)s->dim;
    c->n_layers = (int)s->n_layers;
    c->n_heads = (int)s->n_heads;
    c->head_dim = c->dim / c->n_heads;
    if (c->head_dim % 2 != 0)
        return gp_fail(e, "head_dim %d must be even for RoPE", c->head_dim);
    c->emb_dim = s->embedding_dim > 0 ? (int)s->embedding_dim : c->dim;
    c->projected = c->emb_dim != c->dim;
    c->ffn_hidden = model_ffn_hidden(c->dim, (int)s->multiple_of);
    if (n_items < 2 || n_items > INT32_MAX)
        return gp_fail(e, "item vocabulary of %lld is outside [2, %d]", (long long)n_items, INT32_MAX);
    if (n_cates < 1 || n_cates > INT32_MAX)
        return gp_fail(e, "category vocabulary of %lld is outside [1, %d]", (long long)n_cates, INT32_MAX);
    c->n_items = n_items;
    c->n_cates = n_cates;
    c->n_segments = 2;
    c->max_history = (int)s->max_history;
    c->causal = s->attention == ATTN_CAUSAL;
    c->n_negatives = (int)s->n_negatives;
    c->temperature = (float)s->temperature;
    c->l2_norm = s->l2_norm;
    c->logq = s->logq_correction;
    c->norm_eps = (float)s->norm_eps;
    c->proj_eps = 1e-6f;
    c->l2_eps = 1e-6f;
    c->rope_theta = s->rope_theta;
    c->w_item = (float)s->item_loss_weight;
    c->w_cate = (float)s->cate_loss_weight;
    c->w_rank = (float)s->rank_loss_weight;
    c->init_std = (float)s->init_std;
    return 0;
}

static int64_t add_tensor(model_layout *l, int arena, int kind, int64_t rows, int64_t cols, const char *fmt, int layer)
{
    if (l->n_tensors >= MODEL_MAX_TENSORS)
        return -1;
    tensor_info *t = &l->tensors[l->n_tensors++];
    snprintf(t->name, sizeof t->name, fmt, layer);
    t->ndim = cols > 0 ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols > 0 ? cols : 0;
    t->numel = rows * (cols > 0 ? cols : 1);
    t->arena = arena;
    t->kind = kind;
    int64_t *cursor = arena == ARENA_SPARSE ? &l->sparse_numel : &l->dense_numel;
    /* Keep every tensor 16-float aligned so vectorised backends never straddle two tensors. */
    *cursor = (*cursor + 15) & ~(int64_t)15;
    t->offset = *cursor;
    *cursor += t->numel;
    return t->offset;
}

int model_layout_build(model_layout *l, const model_config *c, gp_err *e)
{
    memset(l, 0, sizeof *l);
    l->cfg = *c;
    if (4 + 4 + 9 * c->n_layers + 5 > MODEL_MAX_TENSORS)
        return gp_fail(e, "%d layers exceed the %d-tensor layout limit", c->n_layers, MODEL_MAX_TENSORS);
    int D = c->dim, E = c->emb_dim, F = c->ffn_hidden;
    l->pre_linear = l->pre_norm = l->post_linear = l->post_norm = -1;
    l->item_emb = add_tensor(l, ARENA_SPARSE, TENSOR_EMBEDDING, c->n_items, E, "item_embeddings.weight", 0);
    l->cate_emb = add_tensor(l, ARENA_DENSE, TENSOR_EMBEDDING, c->n_cates, E, "cate_embeddings.weight", 0);
    l->seg_emb = add_tensor(l, ARENA_DENSE, TENSOR_EMBEDDING, c->n_segments, E, "segment_embeddings.weight", 0);
    if (c->projected) {
        l->pre_linear = add_tensor(l, ARENA_DENSE, TENSOR_LINEAR, D, E, "pre_projector.linear.weight", 0);
        l->pre_norm = add_tensor(l, ARENA_DENSE, TENSOR_NORM, E, 0, "pre_projector.pre_norm.weight", 0);
        l->post_linear = add_tensor(l, ARENA_DENSE, TENSOR_LINEAR, E, D, "post_projector.linear.weight", 0);
        l->post_norm = add_tensor(l, ARENA_DENSE, TENSOR_NORM, E, 0, "post_projector.post_norm.weight", 0);
    }
    l->layers = gp_xcalloc((size_t)(c->n_layers > 0 ? c->n_layers : 1), sizeof *l->layers);
    for (int i = 0; i < c->n_layers; i++) {
        layer_offsets *lo = &l->layers[i];
        lo->wq = add_tensor(l, ARENA_DENSE, TENSOR_LINEAR, D, D, "layers.%d.attention.wq.weight", i);
        lo->wk = add_tensor(l, ARENA_DENSE, TENSOR_LINEAR, D, D, "layers.%d.attention.wk.weight", i);
        lo->wv = add_tensor(l, ARENA_DENSE, TENSOR_LINEAR, D, D, "layers.%d.attention.wv.weight", i);
        lo->wo = add_tensor(l, ARENA_DENSE, TENSOR_LINEAR, D, D, "layers.%d.attention.wo.weight", i);
        lo->w1 = add_tensor(l, ARENA_DENSE, TENSOR_LINEAR, F, D, "layers.%d.feed_forward.w1.weight", i);
        lo->w2 = add_tensor(l, ARENA_DENSE, TENSOR_LINEAR, D, F, "layers.%d.feed_forward.w2.weight", i);
        lo->w3 = add_tensor(l, ARENA_DENSE, TENSOR_LINEAR, F, D, "layers.%d.feed_forward.w3.weight", i);
        lo->attn_norm = add_tensor(l, ARENA_DENSE, TENSOR_NORM, D, 0, "layers.%d.attention_norm.weight", i);
        lo->ffn_norm = add_tensor(l, ARENA_DENSE, TENSOR_NORM, D, 0, "layers.%d.ffn_norm.weight", i);
    }
    l->final_norm = add_tensor(l, ARENA_DENSE, TENSOR_NORM, D, 0, "norm.weight", 0);
    l->rank_w1 = add_tensor(l, ARENA_DENSE, TENSOR_LINEAR, 4 * D, D, "rank_head.w1.weight", 0);
    l->rank_b1 = add_tensor(l, ARENA_DENSE, TENSOR_BIAS, 4 * D, 0, "rank_head.w1.bias", 0);
    l->rank_w2 = add_tensor(l, ARENA_DENSE, TENSOR_LINEAR, 1, 4 * D, "rank_head.w2.weight", 0);
    l->rank_b2 = add_tensor(l, ARENA_DENSE, TENSOR_BIAS, 1, 0, "rank_head.w2.bias", 0);
    l->sparse_numel = (l->sparse_numel + 15) & ~(int64_t)15;
    l->dense_numel = (l->dense_numel + 15) & ~(int64_t)15;
    return 0;
}

void model_layout_free(model_layout *l)
{
    free(l->layers);
    l->layers = NULL;
}

const tensor_info *model_find_tensor(const model_layout *l, const char *name)
{
    for (int i = 0; i < l->n_tensors; i++)
        if (strcmp(l->tensors[i].name, name) == 0)
            return &l->tensors[i];
    return NULL;
}

void model_init_params(const model_layout *l, float *sparse, float *dense, uint64_t seed)
{
    for (int t = 0; t < l->n_tensors; t++) {
        const tensor_info *ti = &l->tensors[t];
        float *p = (ti->arena == ARENA_SPARSE ? sparse : dense) + ti->offset;
        if (ti->kind == TENSOR_NORM) {
            for (int64_t i = 0; i < ti->numel; i++)
                p[i] = 1.0f;
        } else if (ti->kind == TENSOR_BIAS) {
            for (int64_t i = 0; i < ti->numel; i++)
                p[i] = 0.0f;
        } else {
            /* One stream per 64K-element chunk, so large tables initialise in parallel and the
             * values do not depend on how the work is split. */
            const int64_t chunk = 1 << 16;
            int64_t n_chunks = (ti->numel + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
            for (int64_t c = 0; c < n_chunks; c++) {
                gp_rng r = gp_rng_stream(seed, RNG_PURPOSE_INIT, (uint64_t)t, (uint64_t)c);
                int64_t end = GP_MIN(ti->numel, (c + 1) * chunk);
                for (int64_t i = c * chunk; i < end; i++)
                    p[i] = (float)(l->cfg.init_std * gp_rng_normal(&r));
            }
        }
    }
}

int64_t model_dense_params(const model_layout *l)
{
    int64_t n = 0;
    for (int t = 0; t < l->n_tensors; t++)
        if (l->tensors[t].arena == ARENA_DENSE)
            n += l->tensors[t].numel;
    return n;
}

int model_tensor_trained(const model_layout *l, int t, int freeze_sparse)
{
    const tensor_info *ti = &l->tensors[t];
    if (ti->arena == ARENA_SPARSE)
        return !freeze_sparse;
    if (strncmp(ti->name, "rank_head.", 10) == 0)
        return l->cfg.w_rank > 0;
    if (strncmp(ti->name, "post_projector.", 15) == 0)
        return l->cfg.w_item > 0 || l->cfg.w_cate > 0;
    return 1;
}

int64_t model_block_params(const model_layout *l)
{
    int64_t n = 0;
    for (int t = 0; t < l->n_tensors; t++)
        if (strncmp(l->tensors[t].name, "layers.", 7) == 0)
            n += l->tensors[t].numel;
    return n;
}
