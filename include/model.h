/* model: the GPSD model's shape and its parameter layout, shared by every backend.
 *
 * The model is the official chqiwang/gpsd-rec Transformer (DESIGN.md, shared/golden/README.md):
 * item + category + segment embeddings, optional RMSNorm+Linear projectors when embedding_dim
 * differs from dim, pre-norm LLaMA blocks (RMSNorm, RoPE attention, SwiGLU), a final RMSNorm,
 * and three heads: sampled-softmax next-item (tied to the item table), full-softmax
 * next-category (tied to the category table) and the rank (CTR) MLP on the candidate slot.
 *
 * Parameters live in two fp32 arenas: the sparse arena holds only the item table
 * (`item_embeddings.weight`, which can be frozen and then has no gradient or optimizer state);
 * the dense arena holds everything else, tensor after tensor in the official state_dict order
 * with the official names, so checkpoints map one to one.
 */
#ifndef GPSDREC_MODEL_H
#define GPSDREC_MODEL_H

#include <stdint.h>

#include "settings.h"
#include "util.h"

#define MODEL_MAX_TENSORS 1024
#define MODEL_NAME_MAX 64

typedef struct {
    int dim, n_layers, n_heads, head_dim, emb_dim, ffn_hidden;
    int projected; /* emb_dim != dim: pre/post projectors present */
    int64_t n_items, n_cates;
    int n_segments;    /* 2 */
    int max_history;   /* S: the model sees S history slots plus the candidate slot */
    int causal;
    int n_negatives;
    float temperature;
    int l2_norm, logq;
    float norm_eps;     /* blocks and final norm */
    float proj_eps;     /* projector norms: 1e-6 as in the official ProjectionLayer */
    float l2_eps;       /* clamp of the L2 norm in the heads: 1e-6 */
    double rope_theta;
    float w_item, w_cate, w_rank;
    float init_std;
} model_config;

enum { ARENA_SPARSE = 0, ARENA_DENSE = 1 };

/* Kinds of tensors, for initialisation and for the optimizer. */
enum { TENSOR_EMBEDDING, TENSOR_LINEAR, TENSOR_BIAS, TENSOR_NORM };

typedef struct {
    char name[MODEL_NAME_MAX];
    int ndim;
    int64_t shape[2];
    int64_t numel;
    int64_t offset; /* element offset inside its arena */
    int arena;
    int kind;
} tensor_info;

/* Offsets (into the dense arena, in elements) of one block's tensors. */
typedef struct {
    int64_t wq, wk, wv, wo, w1, w2, w3, attn_norm, ffn_norm;
} layer_offsets;

typedef struct {
    model_config cfg;
    int n_tensors;
    tensor_info tensors[MODEL_MAX_TENSORS];
    int64_t sparse_numel, dense_numel;
    /* Direct offsets for the backends (dense arena unless noted; -1 when absent). */
    int64_t item_emb; /* sparse arena, always 0 */
    int64_t cate_emb, seg_emb;
    int64_t pre_linear, pre_norm, post_linear, post_norm;
    int64_t final_norm;
    int64_t rank_w1, rank_b1, rank_w2, rank_b2;
    layer_offsets *layers; /* n_layers entries */
} model_layout;

/* SwiGLU hidden size of the official FeedForward: multiple_of * ceil(int(2*4*dim/3) / multiple_of). */
int model_ffn_hidden(int dim, int multiple_of);

/* Fill a model_config from settings and the dataset's vocabulary sizes. */
int model_config_from_settings(model_config *c, const gp_settings *s, int64_t n_items, int64_t n_cates, gp_err *e);
int model_layout_build(model_layout *l, const model_config *c, gp_err *e);
void model_layout_free(model_layout *l);
const tensor_info *model_find_tensor(const model_layout *l, const char *name);

/* Initialise parameters as the official model does: N(0, init_std) for embeddings and linear
 * weights, zero biases, ones for norm weights. Deterministic in (seed, tensor, element). */
void model_init_params(const model_layout *l, float *sparse, float *dense, uint64_t seed);

/* Whether tensor t is trained in this stage: it is on a loss path with a non-zero weight
 * (the rank head needs w_rank > 0, the output projector an item or category loss) and is not
 * the frozen item table. Like PyTorch's AdamW, which skips parameters whose .grad is None, the
 * optimizer neither decays nor updates the others, and the gradient norm leaves them out. */
int model_tensor_trained(const model_layout *l, int t, int freeze_sparse);

/* Dense parameters of the transformer blocks alone: the N of the paper's scaling laws
 * (13K for L1H32A4 ... 0.3B for L24H1024A16). */
int64_t model_block_params(const model_layout *l);

/* Parameters of each kind, for reporting (dense excludes the item table, as in the paper). */
int64_t model_dense_params(const model_layout *l);

#endif
