#include "cuda/model_cuda.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/attention_cudnn.h"
#include "cuda/attention_pick.h"
#include "cuda/cuda_util.h"
#include "cuda/gemm.h"
#include "cuda/grad_sync.h"
#include "kernels.h"

/* Logits of one chunk of sequences (fp32 logits + bf16 gradient), at most: at 128 MiB the GEMMs
 * of a chunk are still large (at L4H64A4, 110 sequences x 200 rows x 1008 padded categories),
 * and the buffer costs a quarter of what 512 MiB did. */
#define LOGIT_CHUNK_BYTES ((size_t)128 << 20)
#define RANK_CHUNK_BYTES ((size_t)512 << 20) /* ranking scores of one chunk of the catalogue, at most */
#define GEMM_WORKSPACE ((size_t)32 << 20)
#define GEMM_AUTOTUNE_CANDIDATES 8 /* gemm_autotune = true */
#define SYNC_BUCKET_ELEMS ((int64_t)4 << 20) /* blocks are all-reduced in buckets of at least 16 MB */

typedef struct {
    float *x; /* layer input, fp32 residual stream */
    gp_bf16 *n1, *qkv, *att, *n2, *ab, *g; /* n1, n2, g (ab with recompute_ffn): one buffer for all blocks */
    float *rstd1, *lse, *h, *rstd2;
} cu_layer;

typedef struct {
    int64_t wqkv, wo, w13, w2, attn_norm, ffn_norm; /* device dense offsets (elements) */
} cu_layer_off;

/* Per-micro-batch metadata, one pinned host block and its device mirror. */
typedef struct {
    int32_t *tok_item, *tok_cate, *tok_seg, *tok_pos, *seq_off, *seq_len;
    int32_t *src_rows, *dst_rows, *item_lab, *cate_lab, *lab_ids, *neg_raw, *neg_row, *rank_rows, *click;
    int32_t *query_rows, *target_item;
    int32_t *ragged_qkv, *ragged_out; /* cuDNN attention: seq_off * 3D and seq_off * D, B + 1 entries */
} cu_meta;

struct cuda_model {
    const model_layout *l;
    model_config c;
    backend_opts opts;
    int B, S, T, N, D, E, F, H, C, Cpad, L, chunk;
    int B_cur; /* sequences in the current micro-batch */
    /* the item head's sampled softmax in k_sampled_softmax_fused (no logits buffer for it) rather
     * than GEMMs around k_sampled_softmax_rows: backend_opts.sampled_softmax_kernel */
    int item_fused;
    /* attention: cuDNN when attn is non-NULL and attn_cudnn_now (this micro-batch has a plan) */
    cudnn_attn *attn;
    int attn_cudnn_now;
    /* the own attention runs the resident kernels with the rotary embedding folded in
     * (k_attention_rope_*, no k_rope_qk passes), from this (cos, sin) table; set when the shape
     * takes them. The cuDNN and tiled paths keep the separate rotation. */
    float *rope_cs;
    cudaStream_t stream;
    gemm_ctx *gemm;
    size_t device_bytes;
    /* parameters */
    int64_t *dev_off; /* per canonical tensor: element offset in the device dense arena */
    int64_t dense_n;
    float *item, *item_g, *item_m, *item_v;
    float *P, *G, *M, *V;
    gp_bf16 *P16;
    cu_layer_off *lo;
    int64_t cate, seg, pre_lin, pre_norm, post_lin, post_norm, final_norm, r_w1, r_b1, r_w2, r_b2;
    /* optimiser ranges (device arrays), scalars */
    int n_ranges;
    float **r_p, **r_g, **r_m, **r_v;
    gp_bf16 **r_b16;
    int64_t *r_len;
    double *d_sumsq, *d_scratch, *d_sums;
    /* activations */
    void *act;
    float *x0, *pre_rstd, **xs, *rstd_f, *post_lin_out, *post_rstd;
    gp_bf16 *pn16, *o16, *f16, *hf16, *hp16;
    cu_layer *layer;
    /* heads */
    float *Hg, *Hn, *Hnorm, *Le, *Ln, *Lnorm, *pos_logit, *d_pos, *Nnorm, *logits, *row_loss, *row_loss_c;
    gp_bf16 *Hn16, *Nn16, *dlog16, *Cn16, *d_Nn16;
    float *d_Hn, *d_H, *d_Ln, *d_Le, *d_Nn, *Cn, *Cnorm, *d_Cn, *d_Cn_pre;
    float *z1, *z, *prob, *r_loss, *dz, *d_r1, *d_r_in;
    gp_bf16 *r_in16, *r1_16, *dz16, *d_z1_16;
    float *r_in;
    /* backward trunk */
    float *d_hp, *d_post, *d_hf, *d_x, *d_h, *d_pn, *d_x0, *norm_partial;
    gp_bf16 *d_post16, *d_n16, *d_x16, *d_h16, *d_g16, *d_ab16, *d_att16, *d_qkv16;
    /* ranking */
    float *rank_table, *rank_norm, *rank_scores, *rank_target_score, *rank_tmp;
    gp_bf16 *rank_table16, *rank_query16, *rank_target16;
    int64_t *rank_count;
    int64_t rank_chunk;
    /* scatter-add of embedding gradients */
    k_scatter_plan scat;
    void *scat_scratch;
    /* CUDA graph of the last step shape seen twice in a row (see cuda_model_step) */
    int use_graphs, have_graph, have_last;
    cudaGraphExec_t graph;
    struct step_sig {
        int T, P_item, P_cate, rank_count, B, backward, want_rank, sync, attn_cudnn;
        int64_t n_item, n_cate, n_rank;
        float grad_scale;
    } graph_sig, last_sig;
    /* data parallelism: NCCL gradient sums (NULL with one process) */
    grad_sync *gsync;
    int sync_now; /* the step being enqueued all-reduces its gradients */
    /* metadata */
    void *meta_host, *meta_dev;
    size_t meta_bytes;
    cu_meta mh, md;
    /* The metadata copy runs on its own stream, so that in a training loop it overlaps the
     * previous step's AdamW instead of queueing behind it (the step's stream waits for
     * meta_copied); it waits for meta_free, recorded after the last kernel that reads meta_dev,
     * and upload_batch waits for meta_copied before it rewrites the pinned block. */
    cudaStream_t copy_stream;
    cudaEvent_t meta_copied, meta_free;
};

/* ---- memory plan ------------------------------------------------------------------------ */

static void *carve(char *base, size_t *cursor, size_t bytes)
{
    size_t at = (*cursor + 255) & ~(size_t)255;
    *cursor = at + bytes;
    return base ? base + at : NULL;
}

#define F32(n) ((size_t)(n) * sizeof(float))
#define B16(n) ((size_t)(n) * sizeof(gp_bf16))
#define I32(n) ((size_t)(n) * sizeof(int32_t))

/* Whether the item or category head runs (item_cate_heads returns at once otherwise): fixed at
 * creation by the loss weights, as finetuning (rank head only) has them both at 0. */
static int seq_heads_on(const cuda_model *m) { return m->c.w_item > 0 || m->c.w_cate > 0; }

/* The rows after the T real ones in d_hp and d_hf where the heads' padded slots add their zeros. */
static size_t head_scratch_rows(const cuda_model *m) { return seq_heads_on(m) ? (size_t)m->B * m->S : 0; }

/* Columns of the logits buffer: the category head's (padded) classes, and the item head's
 * negatives where it goes through the GEMM path; 0 when neither head uses it. */
static size_t logits_width(const cuda_model *m)
{
    size_t w = m->c.w_cate > 0 ? (size_t)m->Cpad : 0;
    if (m->N > 0 && !m->item_fused)
        w = GP_MAX(w, (size_t)m->N);
    return w;
}

/* Only the gate/up products recomputed (recompute_blocks recomputes everything already). */
static int recompute_ffn(const cuda_model *m) { return m->opts.recompute_ffn && !m->opts.recompute_blocks; }

/* The trunk output the heads read: the post-projector norm's where there are projectors. */
static const gp_bf16 *trunk_out16(const cuda_model *m) { return m->c.projected ? m->hp16 : m->hf16; }

/* The negatives' bf16 gradient goes straight into the L2 scatter; otherwise (no L2
 * normalisation, or a row width it does not take) through an fp32 copy and the per-row path. */
static int neg_scatter_l2(const cuda_model *m) { return m->c.l2_norm && k_scatter_add_rows_l2bwd_supported(m->E); }

/* A buffer only some models use (the heads, the projectors, a recomputation mode): none when
 * off, a NULL pointer, so a stray use faults instead of aliasing the next buffer. */
static void *carve_if(int on, char *base, size_t *cursor, size_t bytes)
{
    return on && bytes ? carve(base, cursor, bytes) : NULL;
}

static size_t plan_activations(cuda_model *m, char *base)
{
    size_t c = 0;
    const size_t T = (size_t)m->T, B = (size_t)m->B, S = (size_t)m->S, D = (size_t)m->D, E = (size_t)m->E;
    const size_t F = (size_t)m->F, H = (size_t)m->H, N = (size_t)m->N, BS = B * S, BN = B * N;
    const size_t C = (size_t)m->C, Cp = (size_t)m->Cpad;
    /* the pre/post projectors' buffers only where emb_dim != dim (none of the paper's sizes):
     * about 34 E bytes a token, 0.8 GiB at L4H64A4 finetuning */
    const int proj = m->c.projected;
    m->x0 = carve_if(proj, base, &c, F32(T * E));
    m->pn16 = carve_if(proj, base, &c, B16(T * E));
    m->pre_rstd = carve_if(proj, base, &c, F32(T));
    for (int l = 0; l <= m->L; l++)
        m->xs[l] = carve(base, &c, F32(T * D));
    /* recompute_blocks: one set of block activations, shared by every block (each recomputed
     * from its input xs[l] before its backward); otherwise one set per block. */
    for (int l = 0; l < m->L; l++) {
        cu_layer *a = &m->layer[l];
        a->x = m->xs[l];
        if (m->opts.recompute_blocks && l > 0) {
            cu_layer *first = &m->layer[0];
            *a = *first;
            a->x = m->xs[l];
            continue;
        }
        a->rstd1 = carve(base, &c, F32(T));
        a->qkv = carve(base, &c, B16(T * 3 * D));
        a->att = carve(base, &c, B16(T * D));
        a->lse = carve(base, &c, F32(T * H));
        a->h = carve(base, &c, F32(T * D));
        a->rstd2 = carve(base, &c, F32(T));
        a->ab = carve_if(!recompute_ffn(m), base, &c, B16(T * 2 * F));
    }
    /* One g = swiglu(ab) for all blocks: the forward leaves each block's there only for its W2
     * product, and the backward regenerates it in k_swiglu_bwd (the same bits) for the W2 weight
     * gradient; the last block's is still the forward's. This keeps (L-1) T F bf16 fewer, 3.1 GiB
     * at L24H1024A16, for one more bf16 write of T F per block in the backward. */
    gp_bf16 *g_shared = carve_if(m->L > 0, base, &c, B16(T * F));
    /* Likewise one buffer for both norm outputs of every block: the forward's n1 and n2 live
     * only until their GEMM has read them, and k_rmsnorm_bwd regenerates each (the same bits)
     * just before its weight-gradient GEMM. 2 L T D bf16 fewer (2.4 GiB at L24H1024A16) for one
     * bf16 write of T D per norm in the backward. */
    gp_bf16 *n_shared = carve_if(m->L > 0, base, &c, B16(T * D));
    /* recompute_ffn: one gate/up product too, the forward's for the last block and recomputed
     * (ffn_recompute) for the others before their backward */
    gp_bf16 *ab_shared = carve_if(m->L > 0 && recompute_ffn(m), base, &c, B16(T * 2 * F));
    for (int l = 0; l < m->L; l++) {
        m->layer[l].g = g_shared;
        m->layer[l].n1 = m->layer[l].n2 = n_shared;
        if (ab_shared)
            m->layer[l].ab = ab_shared;
    }
    m->o16 = carve(base, &c, B16(T * D));
    m->f16 = carve(base, &c, B16(T * D));
    m->hf16 = carve(base, &c, B16(T * D));
    m->rstd_f = carve(base, &c, F32(T));
    m->post_lin_out = carve_if(proj, base, &c, F32(T * E));
    m->post_rstd = carve_if(proj, base, &c, F32(T));
    m->hp16 = carve_if(proj, base, &c, B16(T * E));
    /* heads on the padded [B][S] grid. Finetuning runs neither the item nor the category head:
     * at L4H64A4's batch 2048 their buffers would be 1.4 GiB. Hg, Hn and Hnorm keep B rows for
     * the ranking queries of rank_targets. */
    const int heads = seq_heads_on(m);
    const size_t HR = heads ? BS : B;
    m->Hg = carve(base, &c, F32(HR * E));
    m->Hn = carve(base, &c, F32(HR * E));
    m->Hnorm = carve(base, &c, F32(HR));
    m->Hn16 = carve_if(heads, base, &c, B16(BS * E));
    m->Le = carve_if(heads, base, &c, F32(BS * E));
    m->Ln = carve_if(heads, base, &c, F32(BS * E));
    m->Lnorm = carve_if(heads, base, &c, F32(BS));
    m->pos_logit = carve_if(heads, base, &c, F32(BS));
    m->d_pos = carve_if(heads, base, &c, F32(BS));
    m->Nnorm = carve(base, &c, F32(BN));
    m->Nn16 = carve(base, &c, B16(BN * E));
    const size_t width = logits_width(m);
    m->logits = carve_if(heads, base, &c, F32((size_t)m->chunk * S * width));
    m->dlog16 = carve_if(heads, base, &c, B16((size_t)m->chunk * S * width));
    m->row_loss = carve_if(heads, base, &c, F32(BS));
    m->row_loss_c = carve_if(heads, base, &c, F32(BS));
    m->d_Hn = carve_if(heads, base, &c, F32(BS * E));
    m->d_H = carve_if(heads, base, &c, F32(BS * E));
    m->d_Ln = carve_if(heads, base, &c, F32(BS * E));
    m->d_Le = carve_if(heads, base, &c, F32(BS * E));
    /* The negatives, [B*N][E] (2^21 rows at batch 512 and 4096 negatives), are kept as little as
     * possible: normalised straight from the table into bf16 (the copy the products read), and
     * their gradient in bf16 (the official model's d_neg is a bf16 autocast product too), which
     * the L2 scatter sums per item in fp32. 4 bytes an element where a gathered fp32 copy, an fp32
     * normalised copy and two fp32 gradients took 16 (for L4H256A4, 2 GiB, not 8). */
    m->d_Nn16 = carve(base, &c, B16(BN * E));
    m->d_Nn = carve_if(!neg_scatter_l2(m), base, &c, F32(BN * E));
    m->Cn = carve(base, &c, F32(C * E));
    m->Cnorm = carve(base, &c, F32(C));
    m->Cn16 = carve(base, &c, B16(Cp * E));
    m->d_Cn = carve(base, &c, F32(Cp * E));
    m->d_Cn_pre = carve(base, &c, F32(C * E));
    /* rank head */
    m->r_in = carve(base, &c, F32(B * D));
    m->r_in16 = carve(base, &c, B16(B * D));
    m->z1 = carve(base, &c, F32(B * 4 * D));
    m->r1_16 = carve(base, &c, B16(B * 4 * D));
    m->z = carve(base, &c, F32(B));
    m->prob = carve(base, &c, F32(B));
    m->r_loss = carve(base, &c, F32(B));
    m->dz = carve(base, &c, F32(B));
    m->dz16 = carve(base, &c, B16(B));
    m->d_r1 = carve(base, &c, F32(B * 4 * D));
    m->d_z1_16 = carve(base, &c, B16(B * 4 * D));
    m->d_r_in = carve(base, &c, F32(B * D));
    /* backward trunk; d_hp/d_hf have one scratch row per padded head slot after the T real rows
     * (head_scratch_rows: none without the heads) */
    m->d_hp = carve_if(proj, base, &c, F32((T + head_scratch_rows(m)) * E));
    m->d_post = carve_if(proj, base, &c, F32(T * E));
    m->d_post16 = carve_if(proj, base, &c, B16(T * E));
    m->d_hf = carve(base, &c, F32((T + head_scratch_rows(m)) * D));
    m->d_x = carve(base, &c, F32(T * D));
    m->d_h = carve(base, &c, F32(T * D));
    m->d_n16 = carve(base, &c, B16(T * D)); /* a block norm's output gradient: bf16, as autocast's */
    m->d_pn = carve_if(proj, base, &c, F32(T * E));
    m->d_x0 = carve_if(proj, base, &c, F32(T * E));
    m->d_x16 = carve(base, &c, B16(T * D));
    m->d_h16 = carve(base, &c, B16(T * D));
    /* A block's backward uses d_g16 then d_ab16 (the feed-forward), then d_att16 then d_qkv16
     * (attention); d_ab16 is dead before d_qkv16 is written, d_g16 before d_att16, so each pair
     * shares one buffer. */
    gp_bf16 *ffn_or_qkv = carve(base, &c, B16(T * GP_MAX(2 * F, 3 * D)));
    gp_bf16 *g_or_att = carve(base, &c, B16(T * GP_MAX(F, D)));
    m->d_ab16 = m->d_qkv16 = ffn_or_qkv;
    m->d_g16 = m->d_att16 = g_or_att;
    int64_t partial = k_rmsnorm_bwd_partial_floats((int64_t)T, (int)(D > E ? D : E));
    m->norm_partial = carve(base, &c, F32((size_t)partial));
    return c;
}

/* Device dense arena order: per block wq|wk|wv, wo, w1|w3, w2, then the norms; other tensors
 * in canonical order. Every tensor starts at a multiple of 128 elements (256-byte bf16 rows). */
static void plan_parameters(cuda_model *m)
{
    const model_layout *l = m->l;
    int64_t cursor = 0;
#define PLACE(canon_off, numel) (cursor = (cursor + 127) & ~(int64_t)127, cursor += (numel), cursor - (numel))
    m->dev_off = gp_xcalloc((size_t)l->n_tensors, sizeof *m->dev_off);
    const model_config *c = &m->c;
    const int64_t D = c->dim, F = c->ffn_hidden;
    for (int t = 0; t < l->n_tensors; t++) {
        const tensor_info *ti = &l->tensors[t];
        if (ti->arena == ARENA_SPARSE || strncmp(ti->name, "layers.", 7) == 0)
            continue;
        m->dev_off[t] = PLACE(ti->offset, ti->numel);
    }
    m->lo = gp_xcalloc((size_t)(c->n_layers > 0 ? c->n_layers : 1), sizeof *m->lo);
    for (int li = 0; li < c->n_layers; li++) {
        cu_layer_off *o = &m->lo[li];
        o->wqkv = PLACE(0, 3 * D * D);
        o->wo = PLACE(0, D * D);
        o->w13 = PLACE(0, 2 * F * D);
        o->w2 = PLACE(0, D * F);
        o->attn_norm = PLACE(0, D);
        o->ffn_norm = PLACE(0, D);
    }
#undef PLACE
    m->dense_n = (cursor + 127) & ~(int64_t)127;
    /* Map the canonical block tensors onto those slots. */
    for (int t = 0; t < l->n_tensors; t++) {
        const tensor_info *ti = &l->tensors[t];
        int li;
        char part[64];
        if (sscanf(ti->name, "layers.%d.%63s", &li, part) != 2)
            continue;
        const cu_layer_off *o = &m->lo[li];
        if (strcmp(part, "attention.wq.weight") == 0)
            m->dev_off[t] = o->wqkv;
        else if (strcmp(part, "attention.wk.weight") == 0)
            m->dev_off[t] = o->wqkv + D * D;
        else if (strcmp(part, "attention.wv.weight") == 0)
            m->dev_off[t] = o->wqkv + 2 * D * D;
        else if (strcmp(part, "attention.wo.weight") == 0)
            m->dev_off[t] = o->wo;
        else if (strcmp(part, "feed_forward.w1.weight") == 0)
            m->dev_off[t] = o->w13;
        else if (strcmp(part, "feed_forward.w3.weight") == 0)
            m->dev_off[t] = o->w13 + F * D;
        else if (strcmp(part, "feed_forward.w2.weight") == 0)
            m->dev_off[t] = o->w2;
        else if (strcmp(part, "attention_norm.weight") == 0)
            m->dev_off[t] = o->attn_norm;
        else if (strcmp(part, "ffn_norm.weight") == 0)
            m->dev_off[t] = o->ffn_norm;
    }
    for (int t = 0; t < l->n_tensors; t++) {
        int64_t off = l->tensors[t].offset;
        if (off == l->cate_emb) m->cate = m->dev_off[t];
        if (off == l->seg_emb) m->seg = m->dev_off[t];
        if (off == l->pre_linear) m->pre_lin = m->dev_off[t];
        if (off == l->pre_norm) m->pre_norm = m->dev_off[t];
        if (off == l->post_linear) m->post_lin = m->dev_off[t];
        if (off == l->post_norm) m->post_norm = m->dev_off[t];
        if (off == l->final_norm) m->final_norm = m->dev_off[t];
        if (off == l->rank_w1) m->r_w1 = m->dev_off[t];
        if (off == l->rank_b1) m->r_b1 = m->dev_off[t];
        if (off == l->rank_w2) m->r_w2 = m->dev_off[t];
        if (off == l->rank_b2) m->r_b2 = m->dev_off[t];
    }
}

static size_t plan_meta(cuda_model *m, char *base, cu_meta *mt)
{
    size_t c = 0;
    const size_t T = (size_t)m->T, B = (size_t)m->B, BS = B * (size_t)m->S, BN = B * (size_t)(m->N > 0 ? m->N : 1);
    mt->tok_item = carve(base, &c, I32(T));
    mt->tok_cate = carve(base, &c, I32(T));
    mt->tok_seg = carve(base, &c, I32(T));
    mt->tok_pos = carve(base, &c, I32(T));
    mt->seq_off = carve(base, &c, I32(B));
    mt->seq_len = carve(base, &c, I32(B));
    mt->src_rows = carve(base, &c, I32(BS));
    mt->dst_rows = carve(base, &c, I32(BS));
    mt->item_lab = carve(base, &c, I32(BS));
    mt->cate_lab = carve(base, &c, I32(BS));
    mt->lab_ids = carve(base, &c, I32(BS));
    mt->neg_raw = carve(base, &c, I32(BN));
    mt->neg_row = carve(base, &c, I32(BN));
    mt->rank_rows = carve(base, &c, I32(B));
    mt->click = carve(base, &c, I32(B));
    mt->query_rows = carve(base, &c, I32(B));
    mt->target_item = carve(base, &c, I32(B));
    mt->ragged_qkv = carve(base, &c, I32(B + 1));
    mt->ragged_out = carve(base, &c, I32(B + 1));
    return c;
}

static int build_ranges(cuda_model *m, gp_err *e)
{
    const model_layout *l = m->l;
    int n = 0;
    float **hp = gp_xcalloc((size_t)l->n_tensors, sizeof *hp), **hg = gp_xcalloc((size_t)l->n_tensors, sizeof *hg);
    float **hm = gp_xcalloc((size_t)l->n_tensors, sizeof *hm), **hv = gp_xcalloc((size_t)l->n_tensors, sizeof *hv);
    gp_bf16 **hb = gp_xcalloc((size_t)l->n_tensors, sizeof *hb);
    int64_t *hl = gp_xcalloc((size_t)l->n_tensors, sizeof *hl);
    for (int t = 0; t < l->n_tensors; t++) {
        if (!model_tensor_trained(l, t, m->opts.freeze_sparse))
            continue;
        const tensor_info *ti = &l->tensors[t];
        if (ti->arena == ARENA_SPARSE) {
            hp[n] = m->item;
            hg[n] = m->item_g;
            hm[n] = m->item_m;
            hv[n] = m->item_v;
            hb[n] = NULL;
        } else {
            int64_t o = m->dev_off[t];
            hp[n] = m->P + o;
            hg[n] = m->G + o;
            hm[n] = m->M + o;
            hv[n] = m->V + o;
            hb[n] = m->P16 + o;
        }
        hl[n] = ti->numel;
        n++;
    }
    m->n_ranges = n;
    size_t np = (size_t)(n ? n : 1) * sizeof(void *);
    CU(cudaMalloc((void **)&m->r_p, np));
    CU(cudaMalloc((void **)&m->r_g, np));
    CU(cudaMalloc((void **)&m->r_m, np));
    CU(cudaMalloc((void **)&m->r_v, np));
    CU(cudaMalloc((void **)&m->r_b16, np));
    CU(cudaMalloc((void **)&m->r_len, (size_t)(n ? n : 1) * sizeof(int64_t)));
    CU(cudaMemcpy(m->r_p, hp, (size_t)n * sizeof(void *), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(m->r_g, hg, (size_t)n * sizeof(void *), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(m->r_m, hm, (size_t)n * sizeof(void *), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(m->r_v, hv, (size_t)n * sizeof(void *), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(m->r_b16, hb, (size_t)n * sizeof(void *), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(m->r_len, hl, (size_t)n * sizeof(int64_t), cudaMemcpyHostToDevice));
    free(hp);
    free(hg);
    free(hm);
    free(hv);
    free(hb);
    free(hl);
    return 0;
fail:
    free(hp);
    free(hg);
    free(hm);
    free(hv);
    free(hb);
    free(hl);
    return -1;
}

static int dev_alloc(cuda_model *m, void **p, size_t bytes, const char *what, gp_err *e)
{
    cudaError_t err = cudaMalloc(p, bytes ? bytes : 256);
    if (err != cudaSuccess) {
        char buf[32];
        *p = NULL;
        return gp_fail(e, "cannot allocate %s of GPU memory for %s (%zu already held): %s",
                       gp_fmt_bytes((double)bytes, buf, sizeof buf), what, m->device_bytes, cudaGetErrorString(err));
    }
    m->device_bytes += bytes;
    err = cudaMemset(*p, 0, bytes ? bytes : 256);
    if (err != cudaSuccess)
        return gp_fail(e, "cudaMemset of %s: %s", what, cudaGetErrorString(err));
    return 0;
}

/* The attention implementation (backend_opts.attention_kernel): the own kernels, cuDNN's fused
 * attention, or (auto) whichever runs this model's shape faster, timed now on full-length random
 * sequences in the activation buffers. cuDNN is only taken when its backward is bit-reproducible
 * and its results agree with the own kernels'; every rank of a data-parallel run takes the same. */
#define ATTN_AGREE_OUT 2e-2  /* bf16 rounding of two different summation orders, measured well below */
#define ATTN_AGREE_GRAD 5e-2
static int tensor_core_head(int hd) { return hd == 8 || hd == 16 || hd == 32 || hd == 64; }

static int choose_attention(cuda_model *m, gp_err *e)
{
    const model_config *c = &m->c;
    const int mode = m->opts.attention_kernel, verbose = dist_rank(m->opts.dist) == 0;
    if (mode == ATTN_KERNEL_OWN || m->L == 0)
        return 0;
    cudnn_attn_shape sh = {.n_heads = m->H, .head_dim = c->head_dim, .max_len = m->S + 1, .max_seq = m->B,
                           .causal = c->causal};
    char why[200];
    if (!cudnn_attn_supported(&sh, why, sizeof why))
        return mode == ATTN_KERNEL_CUDNN ? gp_fail(e, "attention_kernel = cudnn: %s", why) : 0;
    gp_err ce = {{0}};
    cudnn_attn *ca = cudnn_attn_create(&sh, m->stream, &ce);
    if (!ca) {
        if (mode == ATTN_KERNEL_CUDNN)
            return gp_fail(e, "attention_kernel = cudnn: %s", ce.msg);
        if (verbose)
            fprintf(stderr, "gpsdrec: attention: the own kernels (cuDNN %s: %s)\n", cudnn_attn_version(), ce.msg);
        return 0;
    }
    if (mode == ATTN_KERNEL_CUDNN) {
        m->attn = ca;
        m->device_bytes += cudnn_attn_device_bytes(ca);
        return 0;
    }
    /* full-length sequences for the probe */
    cu_meta *h = &m->mh;
    const int L1 = m->S + 1;
    for (int b = 0; b <= m->B; b++) {
        if (b < m->B) {
            h->seq_off[b] = b * L1;
            h->seq_len[b] = L1;
        }
        h->ragged_qkv[b] = (int32_t)((int64_t)b * L1 * 3 * m->D);
        h->ragged_out[b] = (int32_t)((int64_t)b * L1 * m->D);
    }
    for (int64_t t = 0; t < (int64_t)m->B * L1; t++)
        h->tok_pos[t] = (int32_t)(t % L1);
    CU(cudaMemcpy(m->meta_dev, m->meta_host, m->meta_bytes, cudaMemcpyHostToDevice));
    attn_probe p = {.qkv = m->layer[0].qkv, .out = m->layer[0].att, .d_out = m->d_att16, .d_qkv = m->d_qkv16,
                    .lse = m->layer[0].lse, .seq_off = m->md.seq_off, .seq_len = m->md.seq_len,
                    .ragged_qkv = m->md.ragged_qkv, .ragged_out = m->md.ragged_out, .tok_pos = m->md.tok_pos,
                    .rope_cs = m->rope_cs, .rope_theta = c->rope_theta, .n_seq = m->B, .max_len = L1,
                    .n_heads = m->H, .head_dim = c->head_dim, .causal = c->causal};
    attn_probe_result r;
    gp_err pe = {{0}};
    const int probed = attention_probe(ca, &p, 9, m->stream, &r, &pe);
    if (probed < 0) {
        cudnn_attn_destroy(ca);
        return gp_fail(e, "%s", pe.msg);
    }
    int agree = probed == 0 && r.max_rel_diff_out <= ATTN_AGREE_OUT && r.max_rel_diff_grad <= ATTN_AGREE_GRAD;
    int64_t vote = probed == 0 && r.cudnn_deterministic && agree && r.ms_cudnn < r.ms_own;
    if (dist_world(m->opts.dist) > 1 && dist_allreduce_i64(m->opts.dist, &vote, 1, e) != 0) {
        cudnn_attn_destroy(ca);
        return -1;
    }
    int use = vote == dist_world(m->opts.dist);
    if (verbose && probed == 1)
        fprintf(stderr, "gpsdrec: attention probe skipped (%s): using the own kernels\n", pe.msg);
    else if (verbose)
        fprintf(stderr,
                "gpsdrec: attention (%d sequences x %d positions, %d heads of %d%s), forward + backward per layer: "
                "own kernels %.3f ms, cuDNN %s %.3f ms (%sdeterministic, differs by %.1e / %.1e): using %s\n",
                m->B, L1, m->H, c->head_dim, c->causal ? ", causal" : "", r.ms_own, cudnn_attn_version(), r.ms_cudnn,
                r.cudnn_deterministic ? "" : "not ", r.max_rel_diff_out, r.max_rel_diff_grad,
                use ? "cuDNN" : "the own kernels");
    if (use) {
        m->attn = ca;
        m->device_bytes += cudnn_attn_device_bytes(ca);
    } else {
        cudnn_attn_destroy(ca);
    }
    return 0;
fail:
    cudnn_attn_destroy(ca);
    return -1;
}

cuda_model *cuda_model_create(const model_layout *l, const backend_opts *opts, gp_err *e)
{
    cuda_model *m = gp_xcalloc(1, sizeof *m);
    m->l = l;
    m->c = l->cfg;
    m->opts = *opts;
    const model_config *c = &m->c;
    if (c->dim % 8 != 0 || c->emb_dim % 8 != 0) {
        gp_fail(e, "the CUDA backend needs dim and embedding_dim to be multiples of 8 (got %d and %d)", c->dim,
                c->emb_dim);
        free(m);
        return NULL;
    }
    if (c->head_dim > 64) {
        gp_fail(e, "the CUDA backend supports head_dim up to 64 (dim / n_heads = %d)", c->head_dim);
        free(m);
        return NULL;
    }
    if (c->max_history + 1 > K_ATTN_MAX_LEN) {
        gp_fail(e, "the CUDA backend supports sequences up to %d positions (max_history = %d)", K_ATTN_MAX_LEN - 1,
                c->max_history);
        free(m);
        return NULL;
    }
    m->B = opts->max_batch;
    m->S = c->max_history;
    m->T = m->B * (m->S + 1);
    m->N = c->w_item > 0 ? c->n_negatives : 0;
    m->D = c->dim;
    m->E = c->emb_dim;
    m->F = c->ffn_hidden;
    m->H = c->n_heads;
    m->C = (int)c->n_cates;
    m->Cpad = (m->C + 7) & ~7;
    m->L = c->n_layers;
    if (m->N > 0) {
        const int fits = k_sampled_softmax_fused_supported(m->S, m->E);
        if (opts->sampled_softmax_kernel == SOFTMAX_KERNEL_FUSED && !fits) {
            gp_fail(e, "sampled_softmax_kernel = fused needs embedding_dim 32 or 64 and max_history <= 256 (this "
                       "model: embedding_dim %d, max_history %d); use auto or gemm",
                    m->E, m->S);
            free(m);
            return NULL;
        }
        m->item_fused = fits && opts->sampled_softmax_kernel != SOFTMAX_KERNEL_GEMM;
    }
    size_t per_seq = (size_t)m->S * logits_width(m) * (sizeof(float) + sizeof(gp_bf16));
    m->chunk = (int)GP_MAX(1, GP_MIN((size_t)m->B, LOGIT_CHUNK_BYTES / (per_seq ? per_seq : 1)));
    m->xs = gp_xcalloc((size_t)m->L + 1, sizeof *m->xs);
    m->layer = gp_xcalloc((size_t)(m->L > 0 ? m->L : 1), sizeof *m->layer);
    plan_parameters(m);

    if (dist_world(opts->dist) > 1) {
        /* One GPU per rank: the local rank picks it among the visible ones. */
        int n_dev = 0;
        CU(cudaGetDeviceCount(&n_dev));
        CU(cudaSetDevice(dist_local_rank(opts->dist) % n_dev));
    }
    CU(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking));
    CU(cudaStreamCreateWithFlags(&m->copy_stream, cudaStreamNonBlocking));
    CU(cudaEventCreateWithFlags(&m->meta_copied, cudaEventDisableTiming));
    CU(cudaEventCreateWithFlags(&m->meta_free, cudaEventDisableTiming));
    m->gemm = gemm_create(GEMM_WORKSPACE, e);
    if (!m->gemm)
        goto fail;
    if (opts->gemm_autotune)
        gemm_set_autotune(m->gemm, GEMM_AUTOTUNE_CANDIDATES);
    m->device_bytes += GEMM_WORKSPACE;
    size_t ns = (size_t)l->sparse_numel, nd = (size_t)m->dense_n;
    if (dev_alloc(m, (void **)&m->item, F32(ns), "the item table", e) ||
        dev_alloc(m, (void **)&m->P, F32(nd), "dense parameters", e) ||
        dev_alloc(m, (void **)&m->P16, B16(nd), "bf16 parameter copies", e) ||
        dev_alloc(m, (void **)&m->G, F32(nd), "dense gradients", e) ||
        dev_alloc(m, (void **)&m->M, F32(nd), "AdamW moments", e) ||
        dev_alloc(m, (void **)&m->V, F32(nd), "AdamW moments", e))
        goto fail;
    if (!opts->freeze_sparse &&
        (dev_alloc(m, (void **)&m->item_g, F32(ns), "item table gradients", e) ||
         dev_alloc(m, (void **)&m->item_m, F32(ns), "item table AdamW moments", e) ||
         dev_alloc(m, (void **)&m->item_v, F32(ns), "item table AdamW moments", e)))
        goto fail;
    if (dev_alloc(m, (void **)&m->d_sumsq, sizeof(double), "the gradient norm", e) ||
        dev_alloc(m, (void **)&m->d_sums, 4 * sizeof(double), "loss sums", e) ||
        dev_alloc(m, (void **)&m->d_scratch, K_REDUCE_SCRATCH * sizeof(double), "reduction scratch", e))
        goto fail;
    size_t act = plan_activations(m, NULL);
    if (dev_alloc(m, &m->act, act, "activations", e))
        goto fail;
    plan_activations(m, m->act);
    m->meta_bytes = plan_meta(m, NULL, &m->mh);
    CU(cudaMallocHost(&m->meta_host, m->meta_bytes));
    if (dev_alloc(m, &m->meta_dev, m->meta_bytes, "batch metadata", e))
        goto fail;
    plan_meta(m, m->meta_host, &m->mh);
    plan_meta(m, m->meta_dev, &m->md);
    /* The largest scatter: the negatives (B*N rows) or the tokens (T rows). */
    int64_t max_rows = GP_MAX((int64_t)m->T, (int64_t)m->B * GP_MAX(m->N, m->S));
    CU(k_scatter_plan_init(&m->scat, max_rows, GP_MAX(c->n_items, c->n_cates), m->E));
    if (dev_alloc(m, &m->scat_scratch, m->scat.scratch_bytes, "scatter-add scratch", e))
        goto fail;
    if (build_ranges(m, e) != 0)
        goto fail;
    if (dist_world(opts->dist) > 1) {
        m->gsync = grad_sync_create(opts->dist, m->item_g ? c->n_items : 0, m->E, opts->dist_item_grads, e);
        if (!m->gsync)
            goto fail;
        m->device_bytes += grad_sync_device_bytes(m->gsync);
    }
    /* before the attention probe, which times the own kernels with it */
    if (m->L > 0 && tensor_core_head(c->head_dim) && k_attention_resident_supported(m->S + 1, c->head_dim)) {
        if (dev_alloc(m, (void **)&m->rope_cs, F32((size_t)(m->S + 1) * c->head_dim), "the rotary table", e))
            goto fail;
        CU(k_rope_table(m->rope_cs, m->S + 1, c->head_dim, c->rope_theta, m->stream));
    }
    if (choose_attention(m, e) != 0)
        goto fail;
    const char *no_graph = getenv("GPSDREC_NO_CUDA_GRAPH");
    m->use_graphs = !(no_graph && *no_graph && strcmp(no_graph, "0") != 0);
    return m;
fail:
    cuda_model_destroy(m);
    return NULL;
}

void cuda_model_destroy(cuda_model *m)
{
    if (!m)
        return;
    void *bufs[] = {m->item, m->item_g, m->item_m, m->item_v, m->P, m->P16, m->G, m->M, m->V, m->d_sumsq, m->d_sums,
                    m->d_scratch, m->act, m->meta_dev, m->scat_scratch, m->r_p, m->r_g, m->r_m, m->r_v, m->r_b16,
                    m->r_len, m->rank_table, m->rank_norm, m->rank_scores, m->rank_target_score, m->rank_table16,
                    m->rank_query16, m->rank_count, m->rank_target16, m->rank_tmp, m->rope_cs};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            cudaFree(bufs[i]);
    if (m->meta_host)
        cudaFreeHost(m->meta_host);
    if (m->have_graph)
        cudaGraphExecDestroy(m->graph);
    grad_sync_destroy(m->gsync);
    cudnn_attn_destroy(m->attn);
    gemm_destroy(m->gemm);
    if (m->stream)
        cudaStreamDestroy(m->stream);
    if (m->copy_stream)
        cudaStreamDestroy(m->copy_stream);
    if (m->meta_copied)
        cudaEventDestroy(m->meta_copied);
    if (m->meta_free)
        cudaEventDestroy(m->meta_free);
    free(m->dev_off);
    free(m->lo);
    free(m->xs);
    free(m->layer);
    free(m);
}

size_t cuda_model_device_bytes(const cuda_model *m) { return m->device_bytes; }

/* ---- parameters and state in the canonical layout -------------------------------------- */

static int copy_dense(cuda_model *m, float *dev, const float *host_canon, float *host_out, gp_err *e)
{
    const model_layout *l = m->l;
    for (int t = 0; t < l->n_tensors; t++) {
        const tensor_info *ti = &l->tensors[t];
        if (ti->arena == ARENA_SPARSE)
            continue;
        if (host_canon)
            CU(cudaMemcpy(dev + m->dev_off[t], host_canon + ti->offset, F32(ti->numel), cudaMemcpyHostToDevice));
        else
            CU(cudaMemcpy(host_out + ti->offset, dev + m->dev_off[t], F32(ti->numel), cudaMemcpyDeviceToHost));
    }
    return 0;
fail:
    return -1;
}

int cuda_model_set_params(cuda_model *m, const float *sparse, const float *dense, gp_err *e)
{
    CU(cudaMemcpy(m->item, sparse, F32(m->l->sparse_numel), cudaMemcpyHostToDevice));
    if (copy_dense(m, m->P, dense, NULL, e) != 0)
        return -1;
    CU(k_f32_to_bf16(m->P16, m->P, m->dense_n, m->stream));
    CU(cudaStreamSynchronize(m->stream));
    return 0;
fail:
    return -1;
}

int cuda_model_get_params(cuda_model *m, float *sparse, float *dense, gp_err *e)
{
    CU(cudaStreamSynchronize(m->stream));
    if (sparse)
        CU(cudaMemcpy(sparse, m->item, F32(m->l->sparse_numel), cudaMemcpyDeviceToHost));
    if (dense && copy_dense(m, m->P, NULL, dense, e) != 0)
        return -1;
    return 0;
fail:
    return -1;
}

int cuda_model_get_grads(cuda_model *m, float *sparse, float *dense, gp_err *e)
{
    CU(cudaStreamSynchronize(m->stream));
    if (sparse) {
        if (m->item_g)
            CU(cudaMemcpy(sparse, m->item_g, F32(m->l->sparse_numel), cudaMemcpyDeviceToHost));
        else
            memset(sparse, 0, F32(m->l->sparse_numel));
    }
    if (dense && copy_dense(m, m->G, NULL, dense, e) != 0)
        return -1;
    return 0;
fail:
    return -1;
}

int cuda_model_zero_grads(cuda_model *m, gp_err *e)
{
    CU(cudaMemsetAsync(m->G, 0, F32(m->dense_n), m->stream));
    if (m->item_g)
        CU(cudaMemsetAsync(m->item_g, 0, F32(m->l->sparse_numel), m->stream));
    return 0;
fail:
    return -1;
}

int cuda_model_get_optim_state(cuda_model *m, float *m_sparse, float *v_sparse, float *m_dense, float *v_dense,
                               gp_err *e)
{
    CU(cudaStreamSynchronize(m->stream));
    size_t ns = F32(m->l->sparse_numel);
    if (m_sparse && m->item_m)
        CU(cudaMemcpy(m_sparse, m->item_m, ns, cudaMemcpyDeviceToHost));
    if (v_sparse && m->item_v)
        CU(cudaMemcpy(v_sparse, m->item_v, ns, cudaMemcpyDeviceToHost));
    if (m_dense && copy_dense(m, m->M, NULL, m_dense, e) != 0)
        return -1;
    if (v_dense && copy_dense(m, m->V, NULL, v_dense, e) != 0)
        return -1;
    return 0;
fail:
    return -1;
}

int cuda_model_set_optim_state(cuda_model *m, const float *m_sparse, const float *v_sparse, const float *m_dense,
                               const float *v_dense, gp_err *e)
{
    size_t ns = F32(m->l->sparse_numel);
    if (m_sparse && m->item_m)
        CU(cudaMemcpy(m->item_m, m_sparse, ns, cudaMemcpyHostToDevice));
    if (v_sparse && m->item_v)
        CU(cudaMemcpy(m->item_v, v_sparse, ns, cudaMemcpyHostToDevice));
    if (m_dense && copy_dense(m, m->M, m_dense, NULL, e) != 0)
        return -1;
    if (v_dense && copy_dense(m, m->V, v_dense, NULL, e) != 0)
        return -1;
    return 0;
fail:
    return -1;
}

/* ---- one micro-batch -------------------------------------------------------------------- */

typedef struct {
    int T, P_item, P_cate, rank_count;
    int64_t n_item, n_cate, n_rank; /* what each loss part is averaged over (global counts in a data-parallel run) */
} batch_shape;

typedef struct {
    int64_t P_item, P_cate, rank_count;
} pack_counts;

/* One sequence's token and label slots of the metadata block, starting at token row T. Writes
 * only that sequence's rows, so sequences pack in parallel; e may be NULL (no message). */
static int pack_sequence(cuda_model *m, const batch *x, int b, int T, pack_counts *cnt, gp_err *e)
{
    const model_config *c = &m->c;
    const int S = m->S, n = x->hist_len[b];
    cu_meta *h = &m->mh;
    h->seq_off[b] = T;
    h->seq_len[b] = n + 1;
    for (int t = 0; t <= n; t++) {
        int32_t item = t < n ? x->hist_item[(size_t)b * S + t] : x->target_item[b];
        int32_t cate = t < n ? x->hist_cate[(size_t)b * S + t] : x->target_cate[b];
        if (item < 0 || item >= c->n_items)
            return gp_fail(e, "sequence %d position %d: item id %d outside [0, %lld)", b, t, item,
                           (long long)c->n_items);
        if (cate < 0 || cate >= c->n_cates)
            return gp_fail(e, "sequence %d position %d: category id %d outside [0, %lld)", b, t, cate,
                           (long long)c->n_cates);
        h->tok_item[T + t] = item;
        h->tok_cate[T + t] = cate;
        h->tok_seg[T + t] = t == n;
        h->tok_pos[T + t] = t;
    }
    for (int k = 0; k < S; k++) {
        size_t r = (size_t)b * S + k;
        int32_t yi = x->item_label[r], yc = x->cate_label[r];
        if ((yi != LABEL_IGNORE || yc != LABEL_IGNORE) && k >= n)
            return gp_fail(e, "sequence %d: label at position %d beyond its history of %d", b, k, n);
        if (yi != LABEL_IGNORE && (yi < 0 || yi >= c->n_items))
            return gp_fail(e, "sequence %d position %d: item label %d outside [0, %lld)", b, k, yi,
                           (long long)c->n_items);
        if (yc != LABEL_IGNORE && (yc < 0 || yc >= c->n_cates))
            return gp_fail(e, "sequence %d position %d: category label %d outside [0, %lld)", b, k, yc,
                           (long long)c->n_cates);
        h->src_rows[r] = T + (k < n ? k : 0);
        /* Padded slots scatter their (zero) gradients into their own scratch rows after the
         * T real rows, so every destination row is distinct. */
        h->dst_rows[r] = k < n ? T + k : m->T + (int32_t)r;
        h->item_lab[r] = yi;
        h->cate_lab[r] = yc;
        h->lab_ids[r] = yi == LABEL_IGNORE ? 0 : yi;
        cnt->P_item += yi != LABEL_IGNORE;
        cnt->P_cate += yc != LABEL_IGNORE;
    }
    h->rank_rows[b] = T + n;
    h->query_rows[b] = T + n - 1;
    h->target_item[b] = x->target_item[b];
    h->click[b] = x->click[b];
    cnt->rank_count += x->click[b] == 0 || x->click[b] == 1;
    return 0;
}

/* Packs the batch's metadata into the pinned host block (validating every id); the step copies
 * it to the device in one transfer. The GPU waits while this runs (the step's input is this
 * block), so sequences and negatives are packed by opts.threads OpenMP threads; a bad id is
 * reported as the serial scan would, for the first bad sequence or negative. */
static int upload_batch(cuda_model *m, const batch *x, int need_item, batch_shape *bs, gp_err *e)
{
    const model_config *c = &m->c;
    const int S = m->S, N = m->N;
    if (x->B > m->B)
        return gp_fail(e, "micro-batch of %d sequences exceeds the planned %d", x->B, m->B);
    if (x->S != S)
        return gp_fail(e, "batch has %d history slots, the model %d", x->S, S);
    if (need_item && x->N != c->n_negatives)
        return gp_fail(e, "batch has %d negatives per sequence, the model %d", x->N, c->n_negatives);
    /* the previous batch's copy out of the pinned block (normally long done) */
    cudaError_t ce = cudaEventSynchronize(m->meta_copied);
    if (ce != cudaSuccess)
        return gp_fail(e, "waiting for the previous batch's metadata copy: %s", cudaGetErrorString(ce));
    cu_meta *h = &m->mh;
    int T = 0;
    for (int b = 0; b < x->B; b++) {
        int n = x->hist_len[b];
        if (n < 1 || n > S)
            return gp_fail(e, "sequence %d: history length %d outside [1, %d]", b, n, S);
        h->seq_off[b] = T;
        T += n + 1;
    }
    const int threads = m->opts.threads > 0 ? m->opts.threads : omp_get_max_threads();
    int64_t P_item = 0, P_cate = 0, rank_count = 0;
    int first_bad = x->B;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : P_item, P_cate, rank_count) \
    reduction(min : first_bad)
    for (int b = 0; b < x->B; b++) {
        pack_counts cnt = {0, 0, 0};
        if (pack_sequence(m, x, b, h->seq_off[b], &cnt, NULL) != 0 && b < first_bad)
            first_bad = b;
        P_item += cnt.P_item;
        P_cate += cnt.P_cate;
        rank_count += cnt.rank_count;
    }
    if (first_bad < x->B) {
        pack_counts cnt = {0, 0, 0};
        return pack_sequence(m, x, first_bad, h->seq_off[first_bad], &cnt, e);
    }
    bs->P_item = (int)P_item;
    bs->P_cate = (int)P_cate;
    bs->rank_count = (int)rank_count;
    for (int b = 0; b <= x->B; b++) {
        int64_t off = b < x->B ? h->seq_off[b] : T;
        h->ragged_qkv[b] = (int32_t)(off * 3 * m->D);
        h->ragged_out[b] = (int32_t)(off * m->D);
    }
    /* Slots of sequences beyond x->B (a short last batch) carry no labels. */
    for (size_t r = (size_t)x->B * S; r < (size_t)m->B * S; r++) {
        h->src_rows[r] = 0;
        h->dst_rows[r] = m->T + (int32_t)r;
        h->item_lab[r] = h->cate_lab[r] = LABEL_IGNORE;
        h->lab_ids[r] = 0;
    }
    if (need_item) {
        const int64_t BN = (int64_t)x->B * N;
        const int32_t n_items = (int32_t)c->n_items;
        int bad = 0;
        /* branch-free, so it vectorises: 2M ids per L4H64A4 step */
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : bad)
        for (int64_t i = 0; i < BN; i++) {
            int32_t id = x->negatives[i];
            bad |= (id < -n_items) | (id >= n_items);
            h->neg_raw[i] = id;
            h->neg_row[i] = id < 0 ? id + n_items : id;
        }
        for (int64_t i = 0; bad && i < BN; i++)
            if (x->negatives[i] < -n_items || x->negatives[i] >= n_items)
                return gp_fail(e, "sequence %lld: negative id %d outside [-%lld, %lld)", (long long)(i / N),
                               x->negatives[i], (long long)c->n_items, (long long)c->n_items);
    }
    bs->T = T;
    bs->n_item = batch_norm_or(x->norm_item, bs->P_item);
    bs->n_cate = batch_norm_or(x->norm_cate, bs->P_cate);
    bs->n_rank = batch_norm_or(x->norm_rank, bs->rank_count);
    m->B_cur = x->B;
    return 0;
}

/* The tensor-core attention kernels take these head sizes; others run on the generic kernel. */

/* Block li forward. again = 0: in the forward pass, x_li = h_{li-1} + f_{li-1} written into
 * xs[li] (fused with the attention norm) and f_li left in f16 for the next block. again = 1:
 * recomputing the block's activations from its stored input xs[li] before its backward, with the
 * same kernels on the same values, so they are the forward's to the bit; f_li is not needed. */
static int block_forward(cuda_model *m, int li, int T, int again, gp_err *e)
{
    const model_config *c = &m->c;
    const int D = m->D, F = m->F, H = m->H, hd = c->head_dim;
    cudaStream_t s = m->stream;
    const cu_meta *md = &m->md;
    cu_layer *a = &m->layer[li];
    const cu_layer_off *o = &m->lo[li];
    if (li == 0 || again)
        CU(k_residual_rmsnorm_fwd(NULL, a->n1, a->rstd1, a->x, NULL, m->P + o->attn_norm, T, D, c->norm_eps, s));
    else
        CU(k_residual_rmsnorm_fwd(a->x, a->n1, a->rstd1, m->layer[li - 1].h, m->f16, m->P + o->attn_norm, T, D,
                                  c->norm_eps, s));
    if (gemm_linear_fwd(m->gemm, a->qkv, GEMM_BF16, a->n1, m->P16 + o->wqkv, T, D, 3 * D, s, e) != 0)
        return -1;
    const int rope_in_attention = m->rope_cs && !m->attn_cudnn_now;
    if (!rope_in_attention)
        CU(k_rope_qk(a->qkv, md->tok_pos, T, H, hd, c->rope_theta, 0, s));
    if (rope_in_attention) {
        CU(k_attention_rope_fwd(a->att, a->lse, a->qkv, m->rope_cs, md->seq_off, md->seq_len, m->B_cur, m->S + 1, H, hd,
                                c->causal, s));
    } else if (m->attn_cudnn_now) {
        if (cudnn_attn_fwd(m->attn, a->att, a->lse, a->qkv, md->seq_len, md->ragged_qkv, md->ragged_out, m->B_cur,
                           e) != 0)
            return -1;
    } else if (tensor_core_head(hd))
        CU(k_attention_fwd(a->att, a->lse, a->qkv, md->seq_off, md->seq_len, m->B_cur, m->S + 1, H, hd, c->causal, s));
    else
        CU(k_attention_generic_fwd(a->att, a->lse, a->qkv, md->seq_off, md->seq_len, m->B_cur, H, hd, c->causal, s));
    if (gemm_linear_fwd(m->gemm, m->o16, GEMM_BF16, a->att, m->P16 + o->wo, T, D, D, s, e) != 0)
        return -1;
    CU(k_residual_rmsnorm_fwd(a->h, a->n2, a->rstd2, a->x, m->o16, m->P + o->ffn_norm, T, D, c->norm_eps, s));
    if (gemm_linear_fwd(m->gemm, a->ab, GEMM_BF16, a->n2, m->P16 + o->w13, T, D, 2 * F, s, e) != 0)
        return -1;
    CU(k_swiglu_fwd(a->g, a->ab, T, F, s));
    if (!again && gemm_linear_fwd(m->gemm, m->f16, GEMM_BF16, a->g, m->P16 + o->w2, T, F, D, s, e) != 0)
        return -1;
    return 0;
fail:
    return -1;
}

/* recompute_ffn: block li's n2 and gate/up product again, into the shared buffers, from its
 * stored post-attention sum h: the norm of h with no residual add is the forward's norm of x + o
 * (the same fp32 values in the same order), and the W1|W3 GEMM has the forward's shape, so both
 * are the forward's bits. */
static int ffn_recompute(cuda_model *m, int li, int T, gp_err *e)
{
    const cu_layer *a = &m->layer[li];
    const cu_layer_off *o = &m->lo[li];
    CU(k_residual_rmsnorm_fwd(NULL, a->n2, NULL, a->h, NULL, m->P + o->ffn_norm, T, m->D, m->c.norm_eps, m->stream));
    return gemm_linear_fwd(m->gemm, a->ab, GEMM_BF16, a->n2, m->P16 + o->w13, T, m->D, 2 * m->F, m->stream, e);
fail:
    return -1;
}

/* Embeddings, blocks, final norm and output projector. */
static int forward_trunk(cuda_model *m, int T, gp_err *e)
{
    const model_config *c = &m->c;
    const int D = m->D, E = m->E;
    cudaStream_t s = m->stream;
    const cu_meta *md = &m->md;
    float *emb_out = c->projected ? m->x0 : m->xs[0];
    CU(k_embed_fwd(emb_out, NULL, m->item, m->P + m->cate, m->P + m->seg, md->tok_item, md->tok_cate, md->tok_seg, T, E,
                   s));
    if (c->projected) {
        CU(k_residual_rmsnorm_fwd(NULL, m->pn16, m->pre_rstd, m->x0, NULL, m->P + m->pre_norm, T, E, c->proj_eps, s));
        if (gemm_linear_fwd(m->gemm, m->xs[0], GEMM_F32, m->pn16, m->P16 + m->pre_lin, T, E, D, s, e) != 0)
            return -1;
    }
    for (int li = 0; li < m->L; li++)
        if (block_forward(m, li, T, 0, e) != 0)
            return -1;
    if (m->L == 0)
        CU(k_residual_rmsnorm_fwd(NULL, m->hf16, m->rstd_f, m->xs[0], NULL, m->P + m->final_norm, T, D, c->norm_eps, s));
    else
        CU(k_residual_rmsnorm_fwd(m->xs[m->L], m->hf16, m->rstd_f, m->layer[m->L - 1].h, m->f16, m->P + m->final_norm,
                                  T, D, c->norm_eps, s));
    if (c->projected) {
        if (gemm_linear_fwd(m->gemm, m->post_lin_out, GEMM_F32, m->hf16, m->P16 + m->post_lin, T, D, E, s, e) != 0)
            return -1;
        CU(k_residual_rmsnorm_fwd(NULL, m->hp16, m->post_rstd, m->post_lin_out, NULL, m->P + m->post_norm, T, E,
                                  c->proj_eps, s));
    }
    return 0;
fail:
    return -1;
}

/* L2 normalisation (or a plain copy when the model has l2_norm off), with optional bf16 copy. */
static int normalise(cuda_model *m, float *out, gp_bf16 *out16, float *norm, const float *in, int64_t rows, gp_err *e)
{
    const model_config *c = &m->c;
    if (c->l2_norm) {
        CU(k_l2norm_fwd(out, out16, norm, in, rows, m->E, c->l2_eps, m->stream));
    } else {
        CU(cudaMemcpyAsync(out, in, F32(rows * m->E), cudaMemcpyDeviceToDevice, m->stream));
        if (out16)
            CU(k_f32_to_bf16(out16, out, rows * m->E, m->stream));
    }
    return 0;
fail:
    return -1;
}

static int normalise_bwd(cuda_model *m, float *d_in, const float *d_out, const float *out, const float *norm,
                         int64_t rows, int accumulate, gp_err *e)
{
    const model_config *c = &m->c;
    if (c->l2_norm) {
        CU(k_l2norm_bwd(d_in, d_out, out, norm, rows, m->E, c->l2_eps, accumulate, m->stream));
    } else if (accumulate) {
        CU(k_axpy(d_in, d_out, 1.0f, rows * m->E, m->stream));
    } else if (d_in != d_out) {
        CU(cudaMemcpyAsync(d_in, d_out, F32(rows * m->E), cudaMemcpyDeviceToDevice, m->stream));
    }
    return 0;
fail:
    return -1;
}

static int read_sums(cuda_model *m, double *h, int n, gp_err *e)
{
    CU(cudaMemcpyAsync(h, m->d_sums, (size_t)n * sizeof(double), cudaMemcpyDeviceToHost, m->stream));
    CU(cudaStreamSynchronize(m->stream));
    return 0;
fail:
    return -1;
}

/* The item head's sampled softmax through cuBLASLt (sampled_softmax_kernel = gemm, or where the
 * fused kernel does not apply), a chunk of sequences at a time through the logits buffer:
 * logits GEMM, the rows kernel (loss, d_pos, bf16 d_logits), then d_Hn += d_logits Nn and
 * d_Nn = d_logits^T Hn (bf16). */
static int item_head_gemm(cuda_model *m, float inv_temp, float scale, int backward, gp_err *e)
{
    const model_config *c = &m->c;
    const cu_meta *md = &m->md;
    cudaStream_t s = m->stream;
    const int S = m->S, E = m->E, N = m->N, Bc = m->B_cur;
    for (int b0 = 0; b0 < Bc; b0 += m->chunk) {
        int cb = GP_MIN(m->chunk, Bc - b0);
        gemm_args g = {.trans_a = 0, .trans_b = 1, .M = S, .N = N, .K = E, .A = m->Hn16 + (size_t)b0 * S * E,
                       .lda = E, .stride_a = (int64_t)S * E, .B = m->Nn16 + (size_t)b0 * N * E, .ldb = E,
                       .stride_b = (int64_t)N * E, .C = m->logits, .ldc = N, .stride_c = (int64_t)S * N,
                       .c_type = GEMM_F32, .alpha = inv_temp, .beta = 0.0f, .batch = cb};
        if (gemm_run(m->gemm, &g, s, e) != 0)
            return -1;
        CU(k_sampled_softmax_rows(m->row_loss + (size_t)b0 * S, m->dlog16, m->d_pos + (size_t)b0 * S, m->logits,
                                  m->pos_logit + (size_t)b0 * S, md->item_lab + (size_t)b0 * S,
                                  md->neg_raw + (size_t)b0 * N, (int64_t)cb * S, S, N, N, inv_temp, c->logq,
                                  scale, s));
        if (!backward)
            continue;
        gemm_args dh = {.trans_a = 0, .trans_b = 0, .M = S, .N = E, .K = N, .A = m->dlog16, .lda = N,
                        .stride_a = (int64_t)S * N, .B = m->Nn16 + (size_t)b0 * N * E, .ldb = E,
                        .stride_b = (int64_t)N * E, .C = m->d_Hn + (size_t)b0 * S * E, .ldc = E,
                        .stride_c = (int64_t)S * E, .c_type = GEMM_F32, .alpha = 1.0f, .beta = 1.0f, .batch = cb};
        gemm_args dn = {.trans_a = 1, .trans_b = 0, .M = N, .N = E, .K = S, .A = m->dlog16, .lda = N,
                        .stride_a = (int64_t)S * N, .B = m->Hn16 + (size_t)b0 * S * E, .ldb = E,
                        .stride_b = (int64_t)S * E, .C = m->d_Nn16 + (size_t)b0 * N * E, .ldc = E,
                        .stride_c = (int64_t)N * E, .c_type = GEMM_BF16, .alpha = 1.0f, .beta = 0.0f, .batch = cb};
        if (gemm_run(m->gemm, &dh, s, e) != 0 || gemm_run(m->gemm, &dn, s, e) != 0)
            return -1;
    }
    return 0;
fail:
    return -1;
}

/* The item and category heads on the padded [B][S] grid, forward and (optionally) backward. */
static int item_cate_heads(cuda_model *m, const batch_shape *bs, float grad_scale, int backward, gp_err *e)
{
    const model_config *c = &m->c;
    const cu_meta *md = &m->md;
    cudaStream_t s = m->stream;
    const int S = m->S, E = m->E, N = m->N, Bc = m->B_cur;
    const int64_t BS = (int64_t)Bc * S, BN = (int64_t)Bc * N;
    const float inv_temp = 1.0f / c->temperature;
    const int item_on = c->w_item > 0 && bs->P_item > 0, cate_on = c->w_cate > 0 && bs->P_cate > 0;
    if (!item_on && !cate_on)
        return 0;
    CU(k_gather_rows_bf16(m->Hg, NULL, trunk_out16(m), md->src_rows, BS, E, s));
    if (normalise(m, m->Hn, m->Hn16, m->Hnorm, m->Hg, BS, e) != 0)
        return -1;
    if (backward)
        CU(cudaMemsetAsync(m->d_Hn, 0, F32(BS * E), s));
    if (item_on) {
        CU(k_gather_rows(m->Le, NULL, m->item, md->lab_ids, BS, E, s));
        if (normalise(m, m->Ln, NULL, m->Lnorm, m->Le, BS, e) != 0)
            return -1;
        CU(k_row_dot(m->pos_logit, m->Hn, m->Ln, BS, E, inv_temp, s));
        if (c->l2_norm)
            CU(k_l2norm_fwd_rows(NULL, m->Nn16, m->Nnorm, m->item, md->neg_row, BN, E, c->l2_eps, s));
        else
            CU(k_gather_rows(NULL, m->Nn16, m->item, md->neg_row, BN, E, s));
        const float scale = grad_scale * c->w_item / (float)bs->n_item * inv_temp;
        if (m->item_fused)
            CU(k_sampled_softmax_fused(m->row_loss, m->d_pos, backward ? m->d_Hn : NULL, backward ? m->d_Nn16 : NULL,
                                       m->Hn16, m->Nn16, m->pos_logit, md->item_lab, md->neg_raw, Bc, S, N, E,
                                       inv_temp, c->logq, scale, s));
        else if (item_head_gemm(m, inv_temp, scale, backward, e) != 0)
            return -1;
        CU(k_sum(m->d_sums + 0, m->row_loss, BS, m->d_scratch, s));
        if (backward) {
            CU(k_row_dot_bwd(m->d_Hn, m->d_Ln, m->d_pos, m->Hn, m->Ln, BS, E, 0, s));
            if (m->item_g) {
                if (normalise_bwd(m, m->d_Le, m->d_Ln, m->Ln, m->Lnorm, BS, 0, e) != 0)
                    return -1;
                CU(k_scatter_add_rows(m->item_g, m->d_Le, md->lab_ids, BS, E, NULL, &m->scat, m->scat_scratch, s));
                /* the negatives' L2 backward once per distinct item, after their rows are summed
                 * (without L2 normalisation d_Nn is the raw rows' gradient already) */
                if (neg_scatter_l2(m))
                    CU(k_scatter_add_rows_l2bwd(m->item_g, m->d_Nn16, md->neg_row, BN, E, m->item, c->l2_eps,
                                                &m->scat, m->scat_scratch, s));
                else {
                    CU(k_bf16_to_f32(m->d_Nn, m->d_Nn16, BN * E, s));
                    if (c->l2_norm)
                        CU(k_l2norm_bwd_bf16(m->d_Nn, m->d_Nn, m->Nn16, m->Nnorm, BN, E, c->l2_eps, 0, s));
                    CU(k_scatter_add_rows(m->item_g, m->d_Nn, md->neg_row, BN, E, NULL, &m->scat, m->scat_scratch,
                                          s));
                }
            }
        }
    }
    if (cate_on) {
        const int C = m->C, Cp = m->Cpad;
        if (normalise(m, m->Cn, m->Cn16, m->Cnorm, m->P + m->cate, C, e) != 0)
            return -1;
        const float scale = grad_scale * c->w_cate / (float)bs->n_cate * inv_temp;
        if (backward)
            CU(cudaMemsetAsync(m->d_Cn, 0, F32((size_t)Cp * E), s));
        const int rows_per_chunk = m->chunk * S;
        for (int64_t r0 = 0; r0 < BS; r0 += rows_per_chunk) {
            int64_t rows = GP_MIN((int64_t)rows_per_chunk, BS - r0);
            gemm_args g = {.trans_a = 0, .trans_b = 1, .M = rows, .N = Cp, .K = E, .A = m->Hn16 + (size_t)r0 * E,
                           .lda = E, .B = m->Cn16, .ldb = E, .C = m->logits, .ldc = Cp, .c_type = GEMM_F32,
                           .alpha = inv_temp, .beta = 0.0f, .batch = 1};
            if (gemm_run(m->gemm, &g, s, e) != 0)
                return -1;
            if (Cp != C) /* the padding columns of d_logits must be zero for the products below */
                CU(cudaMemsetAsync(m->dlog16, 0, B16((size_t)rows * Cp), s));
            CU(k_softmax_xent_rows(m->row_loss_c + r0, m->dlog16, m->logits, md->cate_lab + r0, rows, C, Cp, scale, s));
            if (!backward)
                continue;
            gemm_args dh = {.trans_a = 0, .trans_b = 0, .M = rows, .N = E, .K = Cp, .A = m->dlog16, .lda = Cp,
                            .B = m->Cn16, .ldb = E, .C = m->d_Hn + (size_t)r0 * E, .ldc = E, .c_type = GEMM_F32,
                            .alpha = 1.0f, .beta = 1.0f, .batch = 1};
            gemm_args dc = {.trans_a = 1, .trans_b = 0, .M = Cp, .N = E, .K = rows, .A = m->dlog16, .lda = Cp,
                            .B = m->Hn16 + (size_t)r0 * E, .ldb = E, .C = m->d_Cn, .ldc = E, .c_type = GEMM_F32,
                            .alpha = 1.0f, .beta = 1.0f, .batch = 1};
            if (gemm_run(m->gemm, &dh, s, e) != 0 || gemm_run(m->gemm, &dc, s, e) != 0)
                return -1;
        }
        CU(k_sum(m->d_sums + 1, m->row_loss_c, BS, m->d_scratch, s));
        if (backward && normalise_bwd(m, m->G + m->cate, m->d_Cn, m->Cn, m->Cnorm, C, 1, e) != 0)
            return -1;
    }
    if (backward) {
        float *d_hp = c->projected ? m->d_hp : m->d_hf;
        if (normalise_bwd(m, m->d_H, m->d_Hn, m->Hn, m->Hnorm, BS, 0, e) != 0)
            return -1;
        CU(k_add_rows(d_hp, m->d_H, md->dst_rows, BS, E, s));
    }
    return 0;
fail:
    return -1;
}

/* The rank (CTR) head on the candidate slot; its backward adds into d_hf. */
static int rank_head(cuda_model *m, const batch_shape *bs, float grad_scale, int backward, gp_err *e)
{
    const model_config *c = &m->c;
    const cu_meta *md = &m->md;
    cudaStream_t s = m->stream;
    const int D = m->D, Bc = m->B_cur;
    CU(k_gather_rows_bf16(NULL, m->r_in16, m->hf16, md->rank_rows, Bc, D, s));
    if (gemm_linear_fwd(m->gemm, m->z1, GEMM_F32, m->r_in16, m->P16 + m->r_w1, Bc, D, 4 * D, s, e) != 0)
        return -1;
    CU(k_bias_relu_fwd(m->r1_16, m->z1, m->P + m->r_b1, Bc, 4 * D, s));
    if (gemm_linear_fwd(m->gemm, m->z, GEMM_F32, m->r1_16, m->P16 + m->r_w2, Bc, 4 * D, 1, s, e) != 0)
        return -1;
    const int grad = backward && c->w_rank > 0 && bs->rank_count > 0;
    const float scale = bs->rank_count > 0 ? grad_scale * c->w_rank / (float)bs->n_rank : 0.0f;
    CU(k_bce_logits(m->prob, m->r_loss, grad ? m->dz : NULL, grad ? m->G + m->r_b2 : NULL, m->z, m->P + m->r_b2,
                    md->click, Bc, scale, s));
    CU(k_sum(m->d_sums + 2, m->r_loss, Bc, m->d_scratch, s));
    if (!grad)
        return 0;
    CU(k_f32_to_bf16(m->dz16, m->dz, Bc, s));
    if (gemm_linear_wgrad(m->gemm, m->G + m->r_w2, m->dz16, m->r1_16, Bc, 4 * D, 1, s, e) != 0 ||
        gemm_linear_dgrad(m->gemm, m->d_r1, GEMM_F32, 0.0f, m->dz16, m->P16 + m->r_w2, Bc, 4 * D, 1, s, e) != 0)
        return -1;
    CU(k_relu_bwd(m->d_z1_16, m->G + m->r_b1, m->d_r1, m->r1_16, Bc, 4 * D, s));
    if (gemm_linear_wgrad(m->gemm, m->G + m->r_w1, m->d_z1_16, m->r_in16, Bc, D, 4 * D, s, e) != 0 ||
        gemm_linear_dgrad(m->gemm, m->d_r_in, GEMM_F32, 0.0f, m->d_z1_16, m->P16 + m->r_w1, Bc, D, 4 * D, s, e) != 0)
        return -1;
    CU(k_add_rows(m->d_hf, m->d_r_in, md->rank_rows, Bc, D, s));
    return 0;
fail:
    return -1;
}

/* Backward through the output projector: d_hf from the heads' gradient d_hp. */
static int backward_trunk(cuda_model *m, int T, gp_err *e)
{
    const model_config *c = &m->c;
    cudaStream_t s = m->stream;
    const int D = m->D, E = m->E;
    if (c->projected) {
        CU(k_rmsnorm_bwd(m->d_post, m->d_post16, NULL, m->G + m->post_norm, m->d_hp, NULL, m->post_lin_out,
                         m->P + m->post_norm, m->post_rstd, T, E, m->norm_partial, s));
        if (gemm_linear_wgrad(m->gemm, m->G + m->post_lin, m->d_post16, m->hf16, T, D, E, s, e) != 0 ||
            gemm_linear_dgrad(m->gemm, m->d_hf, GEMM_F32, 0.0f, m->d_post16, m->P16 + m->post_lin, T, D, E, s, e) != 0)
            return -1;
    }
    return 0;
fail:
    return -1;
}

/* Backward through the final norm, the blocks, the input projector and the embeddings. */
static int backward_blocks(cuda_model *m, int T, gp_err *e)
{
    const model_config *c = &m->c;
    const cu_meta *md = &m->md;
    cudaStream_t s = m->stream;
    const int D = m->D, E = m->E, F = m->F, H = m->H, hd = c->head_dim;
    const float *x_last = m->xs[m->L];
    CU(k_rmsnorm_bwd(m->d_x, m->d_x16, NULL, m->G + m->final_norm, m->d_hf, NULL, x_last, m->P + m->final_norm,
                     m->rstd_f, T, D, m->norm_partial, s));
    /* Data parallelism: blocks are contiguous in the dense arena, last block at the end; their
     * gradients are all-reduced in buckets of consecutive blocks as soon as the backward has
     * passed them, while it goes on with the blocks below. */
    int64_t bucket_lo = -1, bucket_hi = -1;
    for (int li = m->L - 1; li >= 0; li--) {
        cu_layer *a = &m->layer[li];
        const cu_layer_off *o = &m->lo[li];
        /* the shared activations hold the last block's from the forward pass; the others are
         * recomputed from their inputs */
        if (m->opts.recompute_blocks && li < m->L - 1 && block_forward(m, li, T, 1, e) != 0)
            return -1;
        /* feed-forward: x_{li+1} = h + W2 swiglu(W1|W3 n2). The shared g and n hold this block's
         * swiglu output and n2 only for the last block, or after recompute_blocks' forward again
         * (n2 also after ffn_recompute); otherwise k_swiglu_bwd and the norm backward write them
         * back before the weight gradients read them. */
        const int g_current = li == m->L - 1 || m->opts.recompute_blocks;
        const int n2_current = g_current || recompute_ffn(m);
        if (!g_current && recompute_ffn(m) && ffn_recompute(m, li, T, e) != 0)
            return -1;
        if (gemm_linear_dgrad(m->gemm, m->d_g16, GEMM_BF16, 0.0f, m->d_x16, m->P16 + o->w2, T, F, D, s, e) != 0)
            return -1;
        CU(k_swiglu_bwd(m->d_ab16, g_current ? NULL : a->g, m->d_g16, a->ab, T, F, s));
        if (gemm_linear_wgrad(m->gemm, m->G + o->w2, m->d_x16, a->g, T, F, D, s, e) != 0)
            return -1;
        if (gemm_linear_dgrad(m->gemm, m->d_n16, GEMM_BF16, 0.0f, m->d_ab16, m->P16 + o->w13, T, D, 2 * F, s, e) != 0)
            return -1;
        CU(k_rmsnorm_bwd_bf16(m->d_h, m->d_h16, n2_current ? NULL : a->n2, m->G + o->ffn_norm, m->d_n16, m->d_x,
                              a->h, m->P + o->ffn_norm, a->rstd2, T, D, m->norm_partial, s));
        if (gemm_linear_wgrad(m->gemm, m->G + o->w13, m->d_ab16, a->n2, T, D, 2 * F, s, e) != 0)
            return -1;
        /* attention: h = x + Wo attn(rope(q), rope(k), v) */
        if (gemm_linear_wgrad(m->gemm, m->G + o->wo, m->d_h16, a->att, T, D, D, s, e) != 0 ||
            gemm_linear_dgrad(m->gemm, m->d_att16, GEMM_BF16, 0.0f, m->d_h16, m->P16 + o->wo, T, D, D, s, e) != 0)
            return -1;
        const int rope_in_attention = m->rope_cs && !m->attn_cudnn_now;
        if (rope_in_attention) {
            CU(k_attention_rope_bwd(m->d_qkv16, m->d_att16, a->qkv, m->rope_cs, a->att, a->lse, md->seq_off,
                                    md->seq_len, m->B_cur, m->S + 1, H, hd, c->causal, s));
        } else if (m->attn_cudnn_now) {
            if (cudnn_attn_bwd(m->attn, m->d_qkv16, m->d_att16, a->qkv, a->att, a->lse, md->seq_len, md->ragged_qkv,
                               md->ragged_out, m->B_cur, e) != 0)
                return -1;
        } else if (tensor_core_head(hd))
            CU(k_attention_bwd(m->d_qkv16, m->d_att16, a->qkv, a->att, a->lse, md->seq_off, md->seq_len, m->B_cur,
                               m->S + 1, H, hd, c->causal, s));
        else
            CU(k_attention_generic_bwd(m->d_qkv16, m->d_att16, a->qkv, a->att, a->lse, md->seq_off, md->seq_len,
                                       m->B_cur, H, hd, c->causal, s));
        if (!rope_in_attention)
            CU(k_rope_qk(m->d_qkv16, md->tok_pos, T, H, hd, c->rope_theta, 1, s));
        if (gemm_linear_dgrad(m->gemm, m->d_n16, GEMM_BF16, 0.0f, m->d_qkv16, m->P16 + o->wqkv, T, D, 3 * D, s, e) !=
            0)
            return -1;
        CU(k_rmsnorm_bwd_bf16(m->d_x, m->d_x16, a->n1, m->G + o->attn_norm, m->d_n16, m->d_h, a->x,
                              m->P + o->attn_norm, a->rstd1, T, D, m->norm_partial, s));
        if (gemm_linear_wgrad(m->gemm, m->G + o->wqkv, m->d_qkv16, a->n1, T, D, 3 * D, s, e) != 0)
            return -1;
        if (m->sync_now) {
            if (bucket_hi < 0)
                bucket_hi = li + 1 < m->L ? m->lo[li + 1].wqkv : m->dense_n;
            bucket_lo = o->wqkv;
            if (bucket_hi - bucket_lo >= SYNC_BUCKET_ELEMS || li == 0) {
                if (grad_sync_dense(m->gsync, m->G + bucket_lo, (size_t)(bucket_hi - bucket_lo), s, e) != 0)
                    return -1;
                bucket_hi = bucket_lo;
            }
        }
    }
    const float *d_emb = m->d_x;
    if (c->projected) {
        if (gemm_linear_wgrad(m->gemm, m->G + m->pre_lin, m->d_x16, m->pn16, T, E, D, s, e) != 0 ||
            gemm_linear_dgrad(m->gemm, m->d_pn, GEMM_F32, 0.0f, m->d_x16, m->P16 + m->pre_lin, T, E, D, s, e) != 0)
            return -1;
        CU(k_rmsnorm_bwd(m->d_x0, NULL, NULL, m->G + m->pre_norm, m->d_pn, NULL, m->x0, m->P + m->pre_norm,
                         m->pre_rstd, T, E, m->norm_partial, s));
        d_emb = m->d_x0;
    }
    if (m->item_g)
        CU(k_scatter_add_rows(m->item_g, d_emb, md->tok_item, T, E, NULL, &m->scat, m->scat_scratch, s));
    CU(k_scatter_add_rows(m->G + m->cate, d_emb, md->tok_cate, T, E, NULL, &m->scat, m->scat_scratch, s));
    CU(k_scatter_add_rows(m->G + m->seg, d_emb, md->tok_seg, T, E, NULL, &m->scat, m->scat_scratch, s));
    if (m->sync_now) {
        /* the tensors outside the blocks (heads, norms, projectors, category and segment tables) */
        int64_t outside = m->L > 0 ? m->lo[0].wqkv : m->dense_n;
        if (grad_sync_dense(m->gsync, m->G, (size_t)outside, s, e) != 0 || grad_sync_join(m->gsync, s, e) != 0)
            return -1;
    }
    return 0;
fail:
    return -1;
}

/* Which attention this micro-batch runs: cuDNN's plans are built here, outside any capture; a
 * batch size cuDNN cannot take runs the own kernels. */
static int attention_for_batch(cuda_model *m, gp_err *e)
{
    m->attn_cudnn_now = 0;
    if (!m->attn)
        return 0;
    gp_err pe = {{0}};
    int ready = cudnn_attn_prepare(m->attn, m->B_cur, &pe);
    if (ready < 0)
        return gp_fail(e, "%s", pe.msg);
    m->attn_cudnn_now = ready;
    return 0;
}

/* The metadata upload_batch packed, enqueued for the kernels that follow. Every path that runs
 * the trunk on a new batch needs it: without it the kernels see the previous batch's tokens,
 * query rows and targets (the ranking path lacked it from 2026-11-28 to 2026-12-07 and ranked
 * the last training batch instead of the evaluation batch). */
static int meta_to_device(cuda_model *m, gp_err *e)
{
    CU(cudaStreamWaitEvent(m->copy_stream, m->meta_free, 0));
    CU(cudaMemcpyAsync(m->meta_dev, m->meta_host, m->meta_bytes, cudaMemcpyHostToDevice, m->copy_stream));
    CU(cudaEventRecord(m->meta_copied, m->copy_stream));
    CU(cudaStreamWaitEvent(m->stream, m->meta_copied, 0));
    return 0;
fail:
    return -1;
}

/* After the last kernel that reads meta_dev for this batch is on the stream: the next batch's
 * copy may overwrite it once they are done. */
static int meta_release(cuda_model *m, gp_err *e)
{
    CU(cudaEventRecord(m->meta_free, m->stream));
    return 0;
fail:
    return -1;
}

/* Everything one micro-batch puts on the stream after its metadata copy (meta_to_device, outside
 * any capture: it runs on the copy stream): the forward, the heads and (optionally) the backward.
 * Host-side only in what it enqueues, so it can be captured. */
static int enqueue_step(cuda_model *m, const batch_shape *bs, float grad_scale, int backward, int want_rank, gp_err *e)
{
    const model_config *c = &m->c;
    const int T = bs->T;
    if (forward_trunk(m, T, e) != 0)
        return -1;
    if (backward) {
        const int E = m->E, D = m->D;
        const size_t rows = (size_t)T + head_scratch_rows(m);
        if (c->projected)
            CU(cudaMemsetAsync(m->d_hp, 0, F32(rows * E), m->stream));
        CU(cudaMemsetAsync(m->d_hf, 0, F32(rows * D), m->stream));
    }
    CU(cudaMemsetAsync(m->d_sums, 0, 4 * sizeof(double), m->stream));
    if (item_cate_heads(m, bs, grad_scale, backward, e) != 0)
        return -1;
    if (backward && backward_trunk(m, T, e) != 0)
        return -1;
    if ((c->w_rank > 0 || want_rank) && rank_head(m, bs, grad_scale, backward, e) != 0)
        return -1;
    if (backward && backward_blocks(m, T, e) != 0)
        return -1;
    if (backward && m->gsync && m->item_g) {
        /* every item row this micro-batch can have given a gradient: inputs, labels, negatives */
        if (grad_sync_mark_rows(m->gsync, m->md.tok_item, T, m->stream, e) != 0 ||
            grad_sync_mark_rows(m->gsync, m->md.lab_ids, (int64_t)m->B_cur * m->S, m->stream, e) != 0 ||
            (m->N > 0 && c->w_item > 0 &&
             grad_sync_mark_rows(m->gsync, m->md.neg_row, (int64_t)m->B_cur * m->N, m->stream, e) != 0))
            return -1;
    }
    return 0;
fail:
    return -1;
}

/* A step's launches depend only on these; equal signatures replay the same graph. */
static int same_sig(const struct step_sig *a, const struct step_sig *b)
{
    return a->T == b->T && a->P_item == b->P_item && a->P_cate == b->P_cate && a->rank_count == b->rank_count &&
           a->n_item == b->n_item && a->n_cate == b->n_cate && a->n_rank == b->n_rank && a->sync == b->sync &&
           a->B == b->B && a->attn_cudnn == b->attn_cudnn && a->backward == b->backward && a->want_rank == b->want_rank && a->grad_scale == b->grad_scale;
}

/* Captures the step into a graph and launches it. */
static int capture_and_launch(cuda_model *m, const batch_shape *bs, float grad_scale, int backward, int want_rank,
                              const struct step_sig *sig, gp_err *e)
{
    cudaGraph_t graph = NULL;
    CU(cudaStreamBeginCapture(m->stream, cudaStreamCaptureModeThreadLocal));
    int rc = enqueue_step(m, bs, grad_scale, backward, want_rank, e);
    cudaError_t ce = cudaStreamEndCapture(m->stream, &graph);
    if (rc != 0) {
        if (graph)
            cudaGraphDestroy(graph);
        return -1;
    }
    CU(ce);
    if (m->have_graph) {
        cudaGraphExecDestroy(m->graph);
        m->have_graph = 0;
    }
    ce = cudaGraphInstantiate(&m->graph, graph, 0);
    cudaGraphDestroy(graph);
    CU(ce);
    m->have_graph = 1;
    m->graph_sig = *sig;
    CU(cudaGraphLaunch(m->graph, m->stream));
    return 0;
fail:
    return -1;
}

int cuda_model_step(cuda_model *m, const batch *x, float grad_scale, int backward, int want_rank, step_losses *out,
                    float *rank_prob, gp_err *e)
{
    const model_config *c = &m->c;
    memset(out, 0, sizeof *out);
    batch_shape bs;
    if (upload_batch(m, x, c->w_item > 0, &bs, e) != 0)
        return -1;
    const int rank_on = c->w_rank > 0 || want_rank;
    /* Shapes that repeat (full-length batches, the benchmarks) run as one CUDA graph: captured
     * the second time a shape is seen in a row, replayed while it stays the same. Changing
     * shapes launch kernel by kernel, since capturing each would cost more than it saves. */
    m->sync_now = backward && m->gsync && x->sync;
    if (attention_for_batch(m, e) != 0)
        return -1;
    if (meta_to_device(m, e) != 0)
        goto fail;
    struct step_sig sig = {bs.T,     bs.P_item, bs.P_cate,   bs.rank_count, m->B_cur, backward, want_rank,
                           m->sync_now, m->attn_cudnn_now, bs.n_item, bs.n_cate, bs.n_rank, grad_scale};
    if (m->use_graphs && m->have_graph && same_sig(&sig, &m->graph_sig)) {
        CU(cudaGraphLaunch(m->graph, m->stream));
    } else if (m->use_graphs && m->have_last && same_sig(&sig, &m->last_sig)) {
        if (capture_and_launch(m, &bs, grad_scale, backward, want_rank, &sig, e) != 0)
            goto fail;
    } else if (enqueue_step(m, &bs, grad_scale, backward, want_rank, e) != 0) {
        goto fail;
    }
    if (meta_release(m, e) != 0)
        goto fail;
    m->last_sig = sig;
    m->have_last = 1;
    double sums[4];
    if (read_sums(m, sums, 4, e) != 0)
        return -1;
    if (c->w_item > 0 && bs.P_item > 0) {
        out->item_loss = sums[0] / (double)bs.n_item;
        out->item_count = bs.P_item;
    }
    if (c->w_cate > 0 && bs.P_cate > 0) {
        out->cate_loss = sums[1] / (double)bs.n_cate;
        out->cate_count = bs.P_cate;
    }
    if (rank_on) {
        out->rank_loss = bs.rank_count ? sums[2] / (double)bs.n_rank : 0.0;
        out->rank_count = bs.rank_count;
        if (rank_prob)
            CU(cudaMemcpy(rank_prob, m->prob, F32(m->B_cur), cudaMemcpyDeviceToHost));
    }
    out->loss = c->w_item * out->item_loss + c->w_cate * out->cate_loss + c->w_rank * out->rank_loss;
    return 0;
fail:
    /* whatever this batch queued may still read meta_dev: the next copy waits for it */
    (void)cudaEventRecord(m->meta_free, m->stream);
    return -1;
}

int cuda_model_optimizer_step(cuda_model *m, const optim_hparams *h, double *grad_norm, gp_err *e)
{
    double sumsq = 0;
    CU(k_sum_squares_ranges(m->d_sumsq, (const float *const *)m->r_g, m->r_len, m->n_ranges, m->d_scratch, m->stream));
    CU(cudaMemcpyAsync(&sumsq, m->d_sumsq, sizeof sumsq, cudaMemcpyDeviceToHost, m->stream));
    CU(cudaStreamSynchronize(m->stream));
    double norm = sqrt(sumsq);
    if (grad_norm)
        *grad_norm = norm;
    if (!isfinite(norm))
        return gp_fail(e, "gradient norm is %g at step %lld: training diverged", norm, (long long)h->step);
    CU(k_adamw_ranges(m->r_p, (const float *const *)m->r_g, m->r_m, m->r_v, m->r_b16, m->r_len, m->n_ranges, m->d_sumsq,
                      h->max_grad_norm, h->lr, h->beta1, h->beta2, h->eps, h->weight_decay, h->step, m->stream));
    return cuda_model_zero_grads(m, e);
fail:
    return -1;
}

int cuda_model_rank_targets(cuda_model *m, const batch *x, int64_t *rank, gp_err *e)
{
    const model_config *c = &m->c;
    cudaStream_t s = m->stream;
    const int64_t V = c->n_items;
    const int E = m->E;
    batch_shape bs;
    if (upload_batch(m, x, 0, &bs, e) != 0 || attention_for_batch(m, e) != 0)
        return -1;
    if (meta_to_device(m, e) != 0 || forward_trunk(m, bs.T, e) != 0)
        goto fail;
    const int Bc = m->B_cur;
    if (!m->rank_table) {
        /* Scores of a chunk of the catalogue for every query, at most RANK_CHUNK_BYTES. */
        m->rank_chunk = GP_MAX((int64_t)1024, (int64_t)(RANK_CHUNK_BYTES / ((size_t)m->B * sizeof(float))));
        m->rank_chunk = GP_MIN(m->rank_chunk, (V + 7) & ~(int64_t)7);
        if (dev_alloc(m, (void **)&m->rank_table, F32((size_t)V * E), "the normalised item table", e) ||
            dev_alloc(m, (void **)&m->rank_norm, F32((size_t)V), "item norms", e) ||
            dev_alloc(m, (void **)&m->rank_table16, B16((size_t)V * E), "the normalised item table", e) ||
            dev_alloc(m, (void **)&m->rank_scores, F32((size_t)m->B * m->rank_chunk), "ranking scores", e) ||
            dev_alloc(m, (void **)&m->rank_target_score, F32((size_t)m->B), "target scores", e) ||
            dev_alloc(m, (void **)&m->rank_query16, B16((size_t)m->B * E), "ranking queries", e) ||
            dev_alloc(m, (void **)&m->rank_target16, B16((size_t)m->B * E), "ranking targets", e) ||
            dev_alloc(m, (void **)&m->rank_tmp, F32((size_t)m->B * E), "ranking scratch", e) ||
            dev_alloc(m, (void **)&m->rank_count, sizeof(int64_t) * (size_t)m->B, "rank counts", e))
            goto fail;
    }
    if (normalise(m, m->rank_table, m->rank_table16, m->rank_norm, m->item, V, e) != 0)
        goto fail;
    CU(k_gather_rows_bf16(m->Hg, NULL, trunk_out16(m), m->md.query_rows, Bc, E, s));
    if (normalise(m, m->Hn, m->rank_query16, m->Hnorm, m->Hg, Bc, e) != 0)
        goto fail;
    /* The target's own score from the same bf16 operands as the catalogue scores. */
    CU(k_gather_rows(NULL, m->rank_target16, m->rank_table, m->md.target_item, Bc, E, s));
    CU(k_bf16_to_f32(m->Hg, m->rank_query16, (int64_t)Bc * E, s));
    CU(k_bf16_to_f32(m->rank_tmp, m->rank_target16, (int64_t)Bc * E, s));
    CU(k_row_dot(m->rank_target_score, m->Hg, m->rank_tmp, Bc, E, 1.0f, s));
    CU(cudaMemsetAsync(m->rank_count, 0, sizeof(int64_t) * (size_t)Bc, s));
    for (int64_t v0 = 0; v0 < V; v0 += m->rank_chunk) {
        int64_t cols = GP_MIN(m->rank_chunk, V - v0);
        gemm_args g = {.trans_a = 0, .trans_b = 1, .M = Bc, .N = cols, .K = E, .A = m->rank_query16, .lda = E,
                       .B = m->rank_table16 + (size_t)v0 * E, .ldb = E, .C = m->rank_scores, .ldc = cols,
                       .c_type = GEMM_F32, .alpha = 1.0f, .beta = 0.0f, .batch = 1};
        if (gemm_run(m->gemm, &g, s, e) != 0)
            goto fail;
        CU(k_count_greater(m->rank_count, m->rank_scores, cols, m->rank_target_score, m->md.target_item, Bc, cols, v0,
                           s));
    }
    if (meta_release(m, e) != 0)
        goto fail;
    CU(cudaMemcpyAsync(rank, m->rank_count, sizeof(int64_t) * (size_t)Bc, cudaMemcpyDeviceToHost, s));
    CU(cudaStreamSynchronize(s));
    return 0;
fail:
    (void)cudaEventRecord(m->meta_free, m->stream); /* as in cuda_model_step */
    return -1;
}

int cuda_model_sync_grads(cuda_model *m, gp_err *e)
{
    if (!m->gsync)
        return 0;
    return grad_sync_items(m->gsync, m->item_g, m->stream, e);
}
