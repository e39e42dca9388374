/* The golden-vector loader shared by the CPU and GPU tests. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "settings.h"
#include "support/golden.h"
#include "test.h"

const char *const golden_files[] = {
    "pretrain_l2h16a4.safetensors",      "finetune_l2h16a4.safetensors",       "finetune_l2h16a4_bidirectional.safetensors",
    "pretrain_l1h32a4_emb8.safetensors", "finetune_l2h64a4_long.safetensors", "pretrain_l2h64a4_long.safetensors",
};
const int golden_n_files = (int)(sizeof golden_files / sizeof golden_files[0]);

static int meta_i64(const st_file *f, const char *key, int64_t *out, gp_err *e)
{
    const char *v = st_meta(f, key);
    if (!v || gp_parse_i64(v, out) != 0)
        return gp_fail(e, "%s: metadata %s missing or not an integer", f->path, key);
    return 0;
}

static int meta_f64(const st_file *f, const char *key, double *out, gp_err *e)
{
    const char *v = st_meta(f, key);
    if (!v || gp_parse_f64(v, out) != 0)
        return gp_fail(e, "%s: metadata %s missing or not a number", f->path, key);
    return 0;
}

static int meta_bool(const st_file *f, const char *key, int *out, gp_err *e)
{
    const char *v = st_meta(f, key);
    if (!v || (strcmp(v, "True") != 0 && strcmp(v, "False") != 0))
        return gp_fail(e, "%s: metadata %s missing or not True/False", f->path, key);
    *out = strcmp(v, "True") == 0;
    return 0;
}

static int copy_f32(const st_file *f, const char *name, float *dst, int64_t numel, gp_err *e)
{
    const st_tensor *t = st_find(f, name);
    if (!t)
        return gp_fail(e, "%s: tensor %s missing", f->path, name);
    if (t->dtype != ST_F32 || t->numel != numel)
        return gp_fail(e, "%s: tensor %s is %s with %lld elements, expected F32 with %lld", f->path, name,
                       st_dtype_name(t->dtype), (long long)t->numel, (long long)numel);
    memcpy(dst, t->data, (size_t)numel * sizeof(float));
    return 0;
}

static int copy_i64_to_i32(const st_file *f, const char *name, int32_t *dst, int64_t numel, gp_err *e)
{
    const st_tensor *t = st_find(f, name);
    if (!t || t->dtype != ST_I64 || t->numel != numel)
        return gp_fail(e, "%s: tensor %s missing or not I64[%lld]", f->path, name, (long long)numel);
    const int64_t *src = t->data;
    for (int64_t i = 0; i < numel; i++)
        dst[i] = (int32_t)src[i];
    return 0;
}

static double scalar(const st_file *f, const char *name)
{
    const st_tensor *t = st_find(f, name);
    return t && t->dtype == ST_F32 && t->numel == 1 ? *(const float *)t->data : NAN;
}

int golden_load(golden_case *g, const char *name, gp_err *e)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/%s", test_shared_dir(), name);
    return golden_load_path(g, path, e);
}

int golden_load_path(golden_case *g, const char *path, gp_err *e)
{
    memset(g, 0, sizeof *g);
    if (st_open(&g->file, path, e) != 0)
        return -1;
    const st_file *f = &g->file;
    gp_settings s;
    cfg_list empty = {0};
    if (settings_resolve(&empty, STAGE_PRETRAIN, &s, NULL, e) != 0)
        return -1;
    int64_t items, cates, emb, hist;
    int causal = 1, l2 = 1;
    double wi, wc, wr;
    if (meta_i64(f, "dim", &s.dim, e) || meta_i64(f, "n_layers", &s.n_layers, e) ||
        meta_i64(f, "n_heads", &s.n_heads, e) || meta_i64(f, "embedding_dim", &emb, e) ||
        meta_i64(f, "item_vocab_size", &items, e) || meta_i64(f, "cate_vocab_size", &cates, e) ||
        meta_i64(f, "max_history", &hist, e) || meta_i64(f, "n_samples", &s.n_negatives, e) ||
        meta_i64(f, "multiple_of", &s.multiple_of, e) || meta_f64(f, "temperature", &s.temperature, e) ||
        meta_f64(f, "norm_eps", &s.norm_eps, e) || meta_f64(f, "rope_theta", &s.rope_theta, e) ||
        meta_f64(f, "item_ar_loss_weight", &wi, e) || meta_f64(f, "cate_ar_loss_weight", &wc, e) ||
        meta_f64(f, "rank_loss_weight", &wr, e) || meta_bool(f, "causal", &causal, e) ||
        meta_bool(f, "l2_norm", &l2, e))
        return -1;
    s.embedding_dim = emb;
    s.max_history = hist;
    s.attention = causal ? ATTN_CAUSAL : ATTN_BIDIRECTIONAL;
    s.l2_norm = l2;
    s.item_loss_weight = wi;
    s.cate_loss_weight = wc;
    s.rank_loss_weight = wr;
    model_config c;
    if (model_config_from_settings(&c, &s, items, cates, e) != 0 || model_layout_build(&g->layout, &c, e) != 0)
        return -1;
    const model_layout *l = &g->layout;
    g->sparse = gp_xcalloc((size_t)l->sparse_numel, sizeof(float));
    g->dense = gp_xcalloc((size_t)l->dense_numel, sizeof(float));
    g->grad_sparse = gp_xcalloc((size_t)l->sparse_numel, sizeof(float));
    g->grad_dense = gp_xcalloc((size_t)l->dense_numel, sizeof(float));
    /* Every tensor of our layout is in the file, and every param.* of the file is in our layout. */
    for (int t = 0; t < l->n_tensors; t++) {
        const tensor_info *ti = &l->tensors[t];
        char pname[128], gname[128];
        snprintf(pname, sizeof pname, "param.%s", ti->name);
        snprintf(gname, sizeof gname, "grad.%s", ti->name);
        float *pdst = (ti->arena == ARENA_SPARSE ? g->sparse : g->dense) + ti->offset;
        float *gdst = (ti->arena == ARENA_SPARSE ? g->grad_sparse : g->grad_dense) + ti->offset;
        if (copy_f32(f, pname, pdst, ti->numel, e) || copy_f32(f, gname, gdst, ti->numel, e))
            return -1;
        const st_tensor *st = st_find(f, pname);
        for (int d = 0; d < ti->ndim; d++)
            if (st->ndim != ti->ndim || st->shape[d] != ti->shape[d])
                return gp_fail(e, "%s: %s has a different shape from our layout", path, ti->name);
    }
    for (int i = 0; i < f->n; i++)
        if (strncmp(f->tensors[i].name, "param.", 6) == 0 && !model_find_tensor(l, f->tensors[i].name + 6))
            return gp_fail(e, "%s: %s is not in our layout", path, f->tensors[i].name);
    const st_tensor *hi = st_find(f, "input.historical_item_ids");
    if (!hi || hi->ndim != 2 || hi->shape[1] != hist)
        return gp_fail(e, "%s: input.historical_item_ids missing or not [B, max_history]", path);
    int B = (int)hi->shape[0], S = (int)hist, N = (int)s.n_negatives;
    batch_alloc(&g->x, B, S, N);
    g->x.B = B;
    if (copy_i64_to_i32(f, "input.historical_item_ids", g->x.hist_item, (int64_t)B * S, e) ||
        copy_i64_to_i32(f, "input.historical_cate_ids", g->x.hist_cate, (int64_t)B * S, e) ||
        copy_i64_to_i32(f, "input.historical_len", g->x.hist_len, B, e) ||
        copy_i64_to_i32(f, "input.target_item_id", g->x.target_item, B, e) ||
        copy_i64_to_i32(f, "input.target_cate_id", g->x.target_cate, B, e) ||
        copy_i64_to_i32(f, "input.click_label", g->x.click, B, e) ||
        copy_i64_to_i32(f, "input.item_ar_labels", g->x.item_label, (int64_t)B * S, e) ||
        copy_i64_to_i32(f, "input.cate_ar_labels", g->x.cate_label, (int64_t)B * S, e) ||
        copy_i64_to_i32(f, "input.negatives", g->x.negatives, (int64_t)B * N, e))
        return -1;
    g->loss = scalar(f, "expect.loss");
    g->item_loss = scalar(f, "expect.item_ar_loss");
    g->cate_loss = scalar(f, "expect.cate_ar_loss");
    g->rank_loss = scalar(f, "expect.rank_loss");
    g->rank_outputs = gp_xcalloc((size_t)B, sizeof(float));
    return copy_f32(f, "expect.rank_outputs", g->rank_outputs, B, e);
}

void golden_free(golden_case *g)
{
    free(g->sparse);
    free(g->dense);
    free(g->grad_sparse);
    free(g->grad_dense);
    free(g->rank_outputs);
    batch_free(&g->x);
    model_layout_free(&g->layout);
    st_close(&g->file);
}

void golden_max_diff(const float *a, const float *b, int64_t n, double *max_diff, double *max_ref)
{
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= md))
            md = isnan(d) ? INFINITY : d;
        if (fabs((double)b[i]) > mr)
            mr = fabs((double)b[i]);
    }
    *max_diff = md;
    *max_ref = mr;
}

