/* step_flops: model FLOPs of one training step (contract and convention in step_flops.h). */
#include "step_flops.h"

void step_flops_count(const model_config *c, int64_t B, int64_t S, step_flops *f)
{
    const double D = c->dim, E = c->emb_dim, F = c->ffn_hidden, L = (double)S + 1;
    const double T = (double)B * L, rows = (double)B * (double)S;
    double fwd_blocks = 2.0 * T * (4.0 * D * D + 3.0 * D * F) * c->n_layers;
    double fwd_proj = c->projected ? 2.0 * (2.0 * T * D * E) : 0.0;
    /* per layer: B * heads * 2 products * 2 L^2 hd = 4 B L^2 D, halved when causal */
    double fwd_attn = 4.0 * (double)B * L * L * D * c->n_layers * (c->causal ? 0.5 : 1.0);
    double fwd_item = c->w_item > 0 ? 2.0 * rows * c->n_negatives * E : 0.0;
    double fwd_cate = c->w_cate > 0 ? 2.0 * rows * (double)c->n_cates * E : 0.0;
    double fwd_rank = c->w_rank > 0 ? 2.0 * (double)B * (D * 4.0 * D + 4.0 * D) : 0.0;
    f->blocks = 3.0 * fwd_blocks;
    f->projectors = 3.0 * fwd_proj;
    f->attention = 3.0 * fwd_attn;
    f->item_head = 3.0 * fwd_item;
    f->cate_head = 3.0 * fwd_cate;
    f->rank_head = 3.0 * fwd_rank;
    f->total = f->blocks + f->projectors + f->attention + f->item_head + f->cate_head + f->rank_head;
}
