/* cuda/attention_cudnn: see attention_cudnn.h. The operation graphs are the ones cudnn-frontend
 * lowers its SDPA forward and backward nodes to (composite implementation, padding mask, top-left
 * causal mask, deterministic backward), written out against the backend API so the binary needs
 * nothing beyond libcudnn. */
#include "cuda/attention_cudnn.h"

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cudnn.h>

/* The handle attributes of operation graphs and plans are deprecated in newer cuDNN 9 releases in
 * favour of device-property descriptors, which older 9.x releases lack; the handle works in all. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#define MAX_DESC 192
#define MAX_OPS 64
#define MAX_PLANS 16

/* Non-virtual tensors, by unique id. */
enum {
    UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_SEQ_Q, UID_SEQ_KV, UID_SCALE, UID_LOWEST, UID_DO, UID_DQ,
    UID_DK, UID_DV, UID_SOFTMAX_SUM, UID_ONE,
    UID_RAG_Q = 20, UID_RAG_K, UID_RAG_V, UID_RAG_O, UID_RAG_DO, UID_RAG_DQ, UID_RAG_DK, UID_RAG_DV,
    UID_VIRTUAL = 100
};

typedef cudnnBackendDescriptor_t desc;

/* One operation graph under construction: every descriptor it created (destroyed with it) and the
 * first failure, so the builders below can be chained and checked once. */
typedef struct {
    desc all[MAX_DESC];
    int n_all;
    desc ops[MAX_OPS];
    int n_ops;
    int64_t next_uid;
    cudnnStatus_t st;
    char where[160];
} graph_build;

typedef struct {
    int n_seq;
    desc plan_fwd, plan_bwd;
    graph_build *gf, *gb; /* kept alive with their plans */
    int64_t ws_fwd, ws_bwd;
} plan_entry;

struct cudnn_attn {
    cudnn_attn_shape sh;
    cudnnHandle_t handle;
    cudaStream_t stream;
    plan_entry plans[MAX_PLANS];
    int n_plans;
    void *workspace;
    size_t ws_bytes;
    float *softmax_sum; /* [max_seq][H][max_len], the backward's sum(dO * O) per row */
    /* by-value scalars, read by cuDNN at execution */
    float scale, lowest, one;
};

static char version_text[32];

const char *cudnn_attn_version(void)
{
    size_t v = cudnnGetVersion();
    snprintf(version_text, sizeof version_text, "%zu.%zu.%zu", v / 10000, (v / 100) % 100, v % 100);
    return version_text;
}

/* ---- graph building ------------------------------------------------------------------------ */

static void note_fail(graph_build *g, cudnnStatus_t st, const char *what)
{
    if (g->st == CUDNN_STATUS_SUCCESS) {
        g->st = st;
        char last[256] = "";
        cudnnGetLastErrorString(last, sizeof last);
        snprintf(g->where, sizeof g->where, "%s: %s%s%s", what, cudnnGetErrorString(st), last[0] ? ": " : "", last);
    }
}

#define G_CALL(g, call, what)                                                                          \
    do {                                                                                               \
        if ((g)->st == CUDNN_STATUS_SUCCESS) {                                                         \
            cudnnStatus_t _st = (call);                                                                \
            if (_st != CUDNN_STATUS_SUCCESS)                                                           \
                note_fail((g), _st, (what));                                                           \
        }                                                                                              \
    } while (0)

static desc g_new(graph_build *g, cudnnBackendDescriptorType_t type, const char *what)
{
    desc d = NULL;
    if (g->st != CUDNN_STATUS_SUCCESS)
        return NULL;
    if (g->n_all == MAX_DESC) {
        note_fail(g, CUDNN_STATUS_ALLOC_FAILED, "descriptor pool full");
        return NULL;
    }
    G_CALL(g, cudnnBackendCreateDescriptor(type, &d), what);
    if (g->st == CUDNN_STATUS_SUCCESS)
        g->all[g->n_all++] = d;
    return d;
}

static void g_set(graph_build *g, desc d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                  int64_t count, const void *val, const char *what)
{
    G_CALL(g, cudnnBackendSetAttribute(d, name, type, count, val), what);
}

static void g_fin(graph_build *g, desc d, const char *what) { G_CALL(g, cudnnBackendFinalize(d), what); }

static void g_destroy(graph_build *g)
{
    if (!g)
        return;
    for (int i = g->n_all - 1; i >= 0; i--)
        cudnnBackendDestroyDescriptor(g->all[i]);
    free(g);
}

/* A tensor; uid < 0 gives a virtual one with a fresh id. */
static desc g_tensor(graph_build *g, int64_t uid, cudnnDataType_t dt, const int64_t dims[4], const int64_t strides[4],
                     int by_value, desc ragged)
{
    desc t = g_new(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor");
    bool is_virtual = uid < 0, is_by_value = by_value != 0;
    int64_t id = uid < 0 ? g->next_uid++ : uid, align = 16;
    g_set(g, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, "tensor data type");
    g_set(g, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims, "tensor dimensions");
    g_set(g, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides, "tensor strides");
    g_set(g, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &id, "tensor id");
    g_set(g, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "tensor alignment");
    g_set(g, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual, "tensor virtual flag");
    if (is_by_value)
        g_set(g, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &is_by_value, "tensor by-value flag");
    if (ragged)
        g_set(g, t, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ragged,
              "tensor ragged offsets");
    g_fin(g, t, "tensor");
    return t;
}

static desc g_virtual(graph_build *g, cudnnDataType_t dt, const int64_t dims[4], const int64_t strides[4])
{
    return g_tensor(g, -1, dt, dims, strides, 0, NULL);
}

static desc g_scalar(graph_build *g, int64_t uid, cudnnDataType_t dt)
{
    static const int64_t one[4] = {1, 1, 1, 1};
    return g_tensor(g, uid, dt, one, one, 1, NULL);
}

static void g_add_op(graph_build *g, desc op)
{
    if (g->st != CUDNN_STATUS_SUCCESS)
        return;
    if (g->n_ops == MAX_OPS) {
        note_fail(g, CUDNN_STATUS_ALLOC_FAILED, "operation list full");
        return;
    }
    g->ops[g->n_ops++] = op;
}

/* y = mode(x, b, t); b and t may be NULL; axis >= 0 for GEN_INDEX. */
static void g_pointwise(graph_build *g, cudnnPointwiseMode_t mode, cudnnDataType_t prec, desc x, desc b, desc t,
                        desc y, int64_t axis)
{
    desc pw = g_new(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise descriptor");
    g_set(g, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    g_set(g, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, "pointwise precision");
    if (axis >= 0)
        g_set(g, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
    g_fin(g, pw, "pointwise descriptor");
    desc op = g_new(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise operation");
    g_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw,
          "pointwise op descriptor");
    g_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "pointwise x");
    if (b)
        g_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, "pointwise b");
    if (t)
        g_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t, "pointwise t");
    g_set(g, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "pointwise y");
    g_fin(g, op, "pointwise operation");
    g_add_op(g, op);
}

/* c = a @ b over the last two dims, with the GEMM m/n/k sizes overridden per batch entry by
 * sequence-length tensors (NULL: no override). */
static void g_matmul(graph_build *g, desc a, desc b, desc c, desc m_ov, desc n_ov, desc k_ov)
{
    cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    desc md = g_new(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul descriptor");
    g_set(g, md, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, "matmul compute type");
    g_fin(g, md, "matmul descriptor");
    desc op = g_new(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul operation");
    g_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a, "matmul a");
    g_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, "matmul b");
    g_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c, "matmul c");
    g_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &md, "matmul op descriptor");
    if (m_ov)
        g_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m_ov,
              "matmul m override");
    if (n_ov)
        g_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n_ov,
              "matmul n override");
    if (k_ov)
        g_set(g, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k_ov,
              "matmul k override");
    g_fin(g, op, "matmul operation");
    g_add_op(g, op);
}

static void g_reduce(graph_build *g, cudnnReduceTensorOp_t red, desc x, desc y)
{
    cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    desc rd = g_new(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction descriptor");
    g_set(g, rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &red, "reduction operator");
    g_set(g, rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, "reduction compute type");
    g_fin(g, rd, "reduction descriptor");
    desc op = g_new(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction operation");
    g_set(g, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "reduction x");
    g_set(g, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "reduction y");
    g_set(g, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd, "reduction op descriptor");
    g_fin(g, op, "reduction operation");
    g_add_op(g, op);
}

static void g_reshape(graph_build *g, desc x, desc y)
{
    desc op = g_new(g, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, "reshape operation");
    g_set(g, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "reshape x");
    g_set(g, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "reshape y");
    g_fin(g, op, "reshape operation");
    g_add_op(g, op);
}

/* ---- the tensors both graphs share ------------------------------------------------------ */

typedef struct {
    int64_t b, h, s, d;
    int64_t sc[4], sc_st[4]; /* the [b, h, s, s] score grid */
    int64_t row[4], row_st[4]; /* per-row statistics [b, h, s, 1] */
    desc q, kt, seq_q, seq_kv, scale, lowest, rag_k;
} common_tensors;

static desc ragged_tensor(graph_build *g, int64_t uid, int64_t n_seq)
{
    const int64_t dims[4] = {n_seq + 1, 1, 1, 1}, st[4] = {1, 1, 1, 1};
    return g_tensor(g, uid, CUDNN_DATA_INT32, dims, st, 0, NULL);
}

/* q, k (transposed, as the backend's first GEMM wants it) and v read from the packed qkv buffer. */
static void common_init(graph_build *g, const cudnn_attn_shape *sh, int n_seq, common_tensors *c)
{
    const int64_t b = n_seq, h = sh->n_heads, s = sh->max_len, d = sh->head_dim, D = h * d;
    c->b = b, c->h = h, c->s = s, c->d = d;
    const int64_t sc[4] = {b, h, s, s}, sc_st[4] = {h * s * s, s * s, s, 1};
    const int64_t row[4] = {b, h, s, 1}, row_st[4] = {h * s, s, 1, 1};
    memcpy(c->sc, sc, sizeof sc), memcpy(c->sc_st, sc_st, sizeof sc_st);
    memcpy(c->row, row, sizeof row), memcpy(c->row_st, row_st, sizeof row_st);
    const int64_t qd[4] = {b, h, s, d}, qs[4] = {s * 3 * D, d, 3 * D, 1};
    const int64_t ktd[4] = {b, h, d, s}, kts[4] = {s * 3 * D, d, 1, 3 * D};
    c->q = g_tensor(g, UID_Q, CUDNN_DATA_BFLOAT16, qd, qs, 0, ragged_tensor(g, UID_RAG_Q, b));
    c->rag_k = ragged_tensor(g, UID_RAG_K, b);
    c->kt = g_tensor(g, UID_K, CUDNN_DATA_BFLOAT16, ktd, kts, 0, c->rag_k);
    const int64_t ld[4] = {b, 1, 1, 1}, ls[4] = {1, 1, 1, 1};
    c->seq_q = g_tensor(g, UID_SEQ_Q, CUDNN_DATA_INT32, ld, ls, 0, NULL);
    c->seq_kv = g_tensor(g, UID_SEQ_KV, CUDNN_DATA_INT32, ld, ls, 0, NULL);
    c->scale = g_scalar(g, UID_SCALE, CUDNN_DATA_FLOAT);
    c->lowest = g_scalar(g, UID_LOWEST, CUDNN_DATA_FLOAT);
}

/* Scores outside a sequence's length (padding), then above the diagonal (causal), set to the
 * lowest float, as cudnn-frontend's padding_mask and sliding_window_mask(right bound 0) do. */
static desc masks(graph_build *g, const common_tensors *c, desc score, int causal)
{
    desc ri = g_virtual(g, CUDNN_DATA_INT32, c->sc, c->sc_st), ci = g_virtual(g, CUDNN_DATA_INT32, c->sc, c->sc_st);
    g_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, score, NULL, NULL, ri, 2);
    g_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, score, NULL, NULL, ci, 3);
    desc rm = g_virtual(g, CUDNN_DATA_BOOLEAN, c->sc, c->sc_st), cm = g_virtual(g, CUDNN_DATA_BOOLEAN, c->sc, c->sc_st);
    g_pointwise(g, CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, ri, c->seq_q, NULL, rm, -1);
    g_pointwise(g, CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, ci, c->seq_kv, NULL, cm, -1);
    desc pm = g_virtual(g, CUDNN_DATA_BOOLEAN, c->sc, c->sc_st);
    g_pointwise(g, CUDNN_POINTWISE_LOGICAL_AND, CUDNN_DATA_BOOLEAN, rm, cm, NULL, pm, -1);
    desc padded = g_virtual(g, CUDNN_DATA_FLOAT, c->sc, c->sc_st);
    g_pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, score, c->lowest, pm, padded, -1);
    if (!causal)
        return padded;
    desc r2 = g_virtual(g, CUDNN_DATA_INT32, c->sc, c->sc_st), c2 = g_virtual(g, CUDNN_DATA_INT32, c->sc, c->sc_st);
    g_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, padded, NULL, NULL, r2, 2);
    g_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, padded, NULL, NULL, c2, 3);
    desc lower = g_virtual(g, CUDNN_DATA_BOOLEAN, c->sc, c->sc_st);
    g_pointwise(g, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, r2, c2, NULL, lower, -1);
    desc out = g_virtual(g, CUDNN_DATA_FLOAT, c->sc, c->sc_st);
    g_pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, padded, c->lowest, lower, out, -1);
    return out;
}

/* ---- the forward and backward graphs ------------------------------------------------------- */

static graph_build *graph_new(void)
{
    graph_build *g = calloc(1, sizeof *g);
    if (g)
        g->next_uid = UID_VIRTUAL;
    return g;
}

static void build_forward(graph_build *g, const cudnn_attn_shape *sh, int n_seq)
{
    common_tensors c;
    common_init(g, sh, n_seq, &c);
    const int64_t D = c.h * c.d;
    const int64_t vd[4] = {c.b, c.h, c.s, c.d}, vs[4] = {c.s * 3 * D, c.d, 3 * D, 1};
    const int64_t os[4] = {c.s * D, c.d, D, 1};
    desc v = g_tensor(g, UID_V, CUDNN_DATA_BFLOAT16, vd, vs, 0, ragged_tensor(g, UID_RAG_V, c.b));
    desc o = g_tensor(g, UID_O, CUDNN_DATA_BFLOAT16, vd, os, 0, ragged_tensor(g, UID_RAG_O, c.b));
    desc stats = g_tensor(g, UID_STATS, CUDNN_DATA_FLOAT, c.row, c.row_st, 0, NULL);

    desc s1 = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st), s2 = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st);
    g_matmul(g, c.q, c.kt, s1, c.seq_q, c.seq_kv, NULL);
    g_pointwise(g, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, s1, c.scale, NULL, s2, -1);
    desc s = masks(g, &c, s2, sh->causal);
    /* softmax with its statistics: max, exp(s - max), sum, stats = max + log(sum), p = exp / sum */
    desc mx = g_virtual(g, CUDNN_DATA_FLOAT, c.row, c.row_st);
    g_reduce(g, CUDNN_REDUCE_TENSOR_MAX, s, mx);
    desc sub = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st), ex = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st);
    g_pointwise(g, CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, s, mx, NULL, sub, -1);
    g_pointwise(g, CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, sub, NULL, NULL, ex, -1);
    desc sum = g_virtual(g, CUDNN_DATA_FLOAT, c.row, c.row_st), lg = g_virtual(g, CUDNN_DATA_FLOAT, c.row, c.row_st);
    g_reduce(g, CUDNN_REDUCE_TENSOR_ADD, ex, sum);
    g_pointwise(g, CUDNN_POINTWISE_LOG, CUDNN_DATA_FLOAT, sum, NULL, NULL, lg, -1);
    g_pointwise(g, CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, mx, lg, NULL, stats, -1);
    /* the second GEMM takes the probabilities in the input type */
    desc p = g_virtual(g, CUDNN_DATA_BFLOAT16, c.sc, c.sc_st);
    g_pointwise(g, CUDNN_POINTWISE_DIV, CUDNN_DATA_FLOAT, ex, sum, NULL, p, -1);
    g_matmul(g, p, v, o, c.seq_q, NULL, c.seq_kv);
}

static void build_backward(graph_build *g, const cudnn_attn_shape *sh, int n_seq)
{
    common_tensors c;
    common_init(g, sh, n_seq, &c);
    const int64_t b = c.b, h = c.h, s = c.s, d = c.d, D = h * d;
    const int64_t xd[4] = {b, h, s, d}, qkv_st[4] = {s * 3 * D, d, 3 * D, 1}, o_st[4] = {s * D, d, D, 1};
    const int64_t vtd[4] = {b, h, d, s}, vt_st[4] = {s * 3 * D, d, 1, 3 * D};
    desc vt = g_tensor(g, UID_V, CUDNN_DATA_BFLOAT16, vtd, vt_st, 0, ragged_tensor(g, UID_RAG_V, b));
    desc o = g_tensor(g, UID_O, CUDNN_DATA_BFLOAT16, xd, o_st, 0, ragged_tensor(g, UID_RAG_O, b));
    desc d_o = g_tensor(g, UID_DO, CUDNN_DATA_BFLOAT16, xd, o_st, 0, ragged_tensor(g, UID_RAG_DO, b));
    desc stats = g_tensor(g, UID_STATS, CUDNN_DATA_FLOAT, c.row, c.row_st, 0, NULL);
    desc dq = g_tensor(g, UID_DQ, CUDNN_DATA_BFLOAT16, xd, qkv_st, 0, ragged_tensor(g, UID_RAG_DQ, b));
    desc dk = g_tensor(g, UID_DK, CUDNN_DATA_BFLOAT16, xd, qkv_st, 0, ragged_tensor(g, UID_RAG_DK, b));
    desc dv = g_tensor(g, UID_DV, CUDNN_DATA_BFLOAT16, xd, qkv_st, 0, ragged_tensor(g, UID_RAG_DV, b));
    desc one = g_scalar(g, UID_ONE, CUDNN_DATA_FLOAT);

    /* softmax_sum = rowsum(dO * O), kept in memory for the dS term */
    const int64_t pd_st[4] = {h * s * d, s * d, h * d, 1};
    desc prod = g_virtual(g, CUDNN_DATA_FLOAT, xd, pd_st), red = g_virtual(g, CUDNN_DATA_FLOAT, c.row, c.row_st);
    g_pointwise(g, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, d_o, o, NULL, prod, -1);
    g_reduce(g, CUDNN_REDUCE_TENSOR_ADD, prod, red);
    desc ssum = g_tensor(g, UID_SOFTMAX_SUM, CUDNN_DATA_FLOAT, c.row, c.row_st, 0, NULL);
    g_pointwise(g, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, red, one, NULL, ssum, -1);

    /* recompute p = exp(scale * q k^T - stats) under the masks */
    desc s1 = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st), s2 = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st);
    g_matmul(g, c.q, c.kt, s1, c.seq_q, c.seq_kv, NULL);
    g_pointwise(g, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, s1, c.scale, NULL, s2, -1);
    desc s3 = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st);
    g_pointwise(g, CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, s2, stats, NULL, s3, -1);
    size_t ver = cudnnGetVersion();
    desc sm = masks(g, &c, s3, 0);
    if (ver >= 90000 && ver < 91000) /* these releases need the padding value put back after the stats */
        sm = masks(g, &c, sm, 0);
    if (sh->causal) {
        /* the causal part of masks() on an already padded grid */
        desc r2 = g_virtual(g, CUDNN_DATA_INT32, c.sc, c.sc_st), c2 = g_virtual(g, CUDNN_DATA_INT32, c.sc, c.sc_st);
        g_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, sm, NULL, NULL, r2, 2);
        g_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, sm, NULL, NULL, c2, 3);
        desc lower = g_virtual(g, CUDNN_DATA_BOOLEAN, c.sc, c.sc_st);
        g_pointwise(g, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, r2, c2, NULL, lower, -1);
        desc out = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st);
        g_pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, sm, c.lowest, lower, out, -1);
        sm = out;
    }
    desc p = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st);
    g_pointwise(g, CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, sm, NULL, NULL, p, -1);

    /* dV = p^T dO */
    const int64_t tr_st[4] = {h * s * s, s * s, 1, s};
    desc pt = g_virtual(g, CUDNN_DATA_BFLOAT16, c.sc, tr_st);
    g_reshape(g, p, pt);
    g_matmul(g, pt, d_o, dv, c.seq_kv, NULL, c.seq_q);

    /* dS = p * (dO v^T - softmax_sum) * scale */
    desc dp = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st);
    g_matmul(g, d_o, vt, dp, c.seq_q, c.seq_kv, NULL);
    desc t1 = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st), t2 = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st);
    g_pointwise(g, CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, dp, ssum, NULL, t1, -1);
    g_pointwise(g, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, t1, p, NULL, t2, -1);
    desc ds = g_virtual(g, CUDNN_DATA_FLOAT, c.sc, c.sc_st);
    g_pointwise(g, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, t2, c.scale, NULL, ds, -1);

    /* dK = dS^T q */
    desc dst = g_virtual(g, CUDNN_DATA_BFLOAT16, c.sc, tr_st);
    g_reshape(g, ds, dst);
    g_matmul(g, dst, c.q, dk, c.seq_kv, NULL, c.seq_q);

    /* dQ = dS k, k being k^T reshaped back; written directly (deterministic: no fp32 dQ accumulator) */
    desc k = g_tensor(g, -1, CUDNN_DATA_FLOAT, xd, qkv_st, 0, c.rag_k);
    g_reshape(g, c.kt, k);
    g_matmul(g, ds, k, dq, c.seq_q, NULL, c.seq_kv);
}

/* Operation graph, heuristics, and the first engine configuration that finalizes (skipping those
 * cuDNN marks non-deterministic). */
static desc make_plan(graph_build *g, cudnnHandle_t handle, int64_t *ws, char *detail, size_t detail_len)
{
    desc graph = g_new(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    g_set(g, graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "graph handle");
    g_set(g, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->n_ops, g->ops, "graph ops");
    g_fin(g, graph, "operation graph");
    desc heur = g_new(g, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
    cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    g_set(g, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph, "heuristics graph");
    g_set(g, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
    g_fin(g, heur, "heuristics");
    if (g->st != CUDNN_STATUS_SUCCESS)
        return NULL;
    int64_t n_cfg = 0;
    G_CALL(g, cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n_cfg,
                                       NULL),
           "heuristics result count");
    if (g->st != CUDNN_STATUS_SUCCESS)
        return NULL;
    if (n_cfg <= 0) {
        note_fail(g, CUDNN_STATUS_NOT_SUPPORTED, "no engine configuration for the graph");
        return NULL;
    }
    if (n_cfg > 16)
        n_cfg = 16;
    desc cfg[16];
    for (int64_t i = 0; i < n_cfg; i++)
        cfg[i] = g_new(g, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine configuration");
    int64_t got = 0;
    G_CALL(g, cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_cfg, &got,
                                       cfg),
           "heuristics results");
    if (g->st != CUDNN_STATUS_SUCCESS)
        return NULL;
    size_t used = 0;
    detail[0] = 0;
    for (int64_t i = 0; i < got; i++) {
        /* engine notes: skip what is non-deterministic */
        desc engine = NULL;
        if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &engine) != CUDNN_STATUS_SUCCESS)
            continue;
        int64_t n_eng = 0, n_notes = 0, index = -1;
        cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
        int nondeterministic = 0;
        if (cudnnBackendGetAttribute(cfg[i], CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n_eng,
                                     &engine) == CUDNN_STATUS_SUCCESS) {
            cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n_eng, &index);
            if (cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                         CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n_notes, notes) == CUDNN_STATUS_SUCCESS)
                for (int64_t k = 0; k < n_notes; k++)
                    nondeterministic |= notes[k] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC;
        }
        cudnnBackendDestroyDescriptor(engine);
        if (nondeterministic) {
            used += (size_t)snprintf(detail + used, used < detail_len ? detail_len - used : 0,
                                     "%sengine %lld non-deterministic", used ? "; " : "", (long long)index);
            continue;
        }
        desc plan = NULL;
        if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan) != CUDNN_STATUS_SUCCESS)
            continue;
        cudnnStatus_t st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1,
                                                    &handle);
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                          1, &cfg[i]);
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendFinalize(plan);
        int64_t n_ws = 0;
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n_ws,
                                          ws);
        if (st == CUDNN_STATUS_SUCCESS) {
            used += (size_t)snprintf(detail + used, used < detail_len ? detail_len - used : 0,
                                     "%sengine %lld, workspace %lld bytes", used ? "; " : "", (long long)index,
                                     (long long)*ws);
            return plan;
        }
        used += (size_t)snprintf(detail + used, used < detail_len ? detail_len - used : 0, "%sengine %lld: %s",
                                 used ? "; " : "", (long long)index, cudnnGetErrorString(st));
        cudnnBackendDestroyDescriptor(plan);
    }
    note_fail(g, CUDNN_STATUS_NOT_SUPPORTED, "no engine configuration finalized");
    return NULL;
}

/* ---- public ------------------------------------------------------------------------------- */

int cudnn_attn_supported(const cudnn_attn_shape *sh, char *why, size_t why_len)
{
    size_t v = cudnnGetVersion();
    int dev = 0, major = 0;
    if (v < 90000 || v == 91000 || v == 91001) {
        snprintf(why, why_len, "cuDNN %s (9.0 or newer, but not 9.10.0/9.10.1, is needed)", cudnn_attn_version());
        return 0;
    }
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) !=
                                                   cudaSuccess) {
        snprintf(why, why_len, "no CUDA device");
        return 0;
    }
    if (major < 9) {
        snprintf(why, why_len, "compute capability %d.x (ragged attention needs Hopper or newer)", major);
        return 0;
    }
    if (sh->head_dim % 8 != 0 || sh->head_dim > 128) {
        snprintf(why, why_len, "head_dim %d (cuDNN needs a multiple of 8 up to 128)", sh->head_dim);
        return 0;
    }
    int64_t elems = (int64_t)sh->max_seq * sh->max_len * 3 * sh->n_heads * sh->head_dim;
    if (elems >= ((int64_t)1 << 31)) {
        snprintf(why, why_len, "%lld elements of q, k and v exceed int32 ragged offsets", (long long)elems);
        return 0;
    }
    return 1;
}

static plan_entry *find_plan(cudnn_attn *a, int n_seq)
{
    for (int i = 0; i < a->n_plans; i++)
        if (a->plans[i].n_seq == n_seq)
            return &a->plans[i];
    return NULL;
}

/* Builds the two plans for n_seq; 1 ready, 0 not possible (e set), -1 hard error. */
static int build_plans(cudnn_attn *a, int n_seq, int allow_grow, gp_err *e)
{
    if (a->n_plans == MAX_PLANS)
        return gp_fail(e, "cuDNN attention: plan cache full (%d batch sizes)", MAX_PLANS), 0;
    plan_entry pe = {.n_seq = n_seq};
    char detail_f[512] = "", detail_b[512] = "";
    pe.gf = graph_new();
    pe.gb = graph_new();
    if (!pe.gf || !pe.gb) {
        g_destroy(pe.gf);
        g_destroy(pe.gb);
        return gp_fail(e, "cuDNN attention: out of memory");
    }
    build_forward(pe.gf, &a->sh, n_seq);
    pe.plan_fwd = pe.gf->st == CUDNN_STATUS_SUCCESS ? make_plan(pe.gf, a->handle, &pe.ws_fwd, detail_f, sizeof detail_f)
                                                    : NULL;
    if (!pe.plan_fwd) {
        gp_fail(e, "cuDNN attention forward (%d sequences, %d heads of %d, length %d%s): %s%s%s%s", n_seq,
                a->sh.n_heads, a->sh.head_dim, a->sh.max_len, a->sh.causal ? ", causal" : "", pe.gf->where,
                detail_f[0] ? " (" : "", detail_f, detail_f[0] ? ")" : "");
        goto no;
    }
    build_backward(pe.gb, &a->sh, n_seq);
    pe.plan_bwd = pe.gb->st == CUDNN_STATUS_SUCCESS ? make_plan(pe.gb, a->handle, &pe.ws_bwd, detail_b, sizeof detail_b)
                                                    : NULL;
    if (!pe.plan_bwd) {
        gp_fail(e, "cuDNN attention backward (%d sequences, %d heads of %d, length %d%s): %s%s%s%s", n_seq,
                a->sh.n_heads, a->sh.head_dim, a->sh.max_len, a->sh.causal ? ", causal" : "", pe.gb->where,
                detail_b[0] ? " (" : "", detail_b, detail_b[0] ? ")" : "");
        goto no;
    }
    size_t need = (size_t)(pe.ws_fwd > pe.ws_bwd ? pe.ws_fwd : pe.ws_bwd);
    if (need > a->ws_bytes) {
        if (!allow_grow) {
            gp_fail(e, "cuDNN attention for %d sequences needs %zu workspace bytes, %zu were planned", n_seq, need,
                    a->ws_bytes);
            goto no;
        }
        if (a->workspace)
            cudaFree(a->workspace);
        a->workspace = NULL;
        a->ws_bytes = 0;
        cudaError_t ce = cudaMalloc(&a->workspace, need ? need : 256);
        if (ce != cudaSuccess) {
            gp_fail(e, "cuDNN attention workspace of %zu bytes: %s", need, cudaGetErrorString(ce));
            goto hard;
        }
        a->ws_bytes = need;
    }
    a->plans[a->n_plans++] = pe;
    return 1;
no:
    if (pe.plan_fwd)
        cudnnBackendDestroyDescriptor(pe.plan_fwd);
    if (pe.plan_bwd)
        cudnnBackendDestroyDescriptor(pe.plan_bwd);
    g_destroy(pe.gf);
    g_destroy(pe.gb);
    return 0;
hard:
    cudnnBackendDestroyDescriptor(pe.plan_fwd);
    cudnnBackendDestroyDescriptor(pe.plan_bwd);
    g_destroy(pe.gf);
    g_destroy(pe.gb);
    return -1;
}

cudnn_attn *cudnn_attn_create(const cudnn_attn_shape *sh, cudaStream_t s, gp_err *e)
{
    char why[160];
    if (!cudnn_attn_supported(sh, why, sizeof why)) {
        gp_fail(e, "cuDNN attention is not available: %s", why);
        return NULL;
    }
    cudnn_attn *a = calloc(1, sizeof *a);
    if (!a) {
        gp_fail(e, "cuDNN attention: out of memory");
        return NULL;
    }
    a->sh = *sh;
    a->stream = s;
    a->scale = (float)(1.0 / sqrt((double)sh->head_dim));
    a->lowest = -FLT_MAX;
    a->one = 1.0f;
    cudnnStatus_t st = cudnnCreate(&a->handle);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnSetStream(a->handle, s);
    if (st != CUDNN_STATUS_SUCCESS) {
        gp_fail(e, "cudnnCreate/cudnnSetStream: %s", cudnnGetErrorString(st));
        goto fail;
    }
    size_t rows = (size_t)sh->max_seq * sh->n_heads * sh->max_len;
    cudaError_t ce = cudaMalloc((void **)&a->softmax_sum, rows * sizeof(float));
    if (ce != cudaSuccess) {
        gp_fail(e, "cuDNN attention row sums (%zu bytes): %s", rows * sizeof(float), cudaGetErrorString(ce));
        goto fail;
    }
    if (build_plans(a, sh->max_seq, 1, e) != 1)
        goto fail;
    return a;
fail:
    cudnn_attn_destroy(a);
    return NULL;
}

void cudnn_attn_destroy(cudnn_attn *a)
{
    if (!a)
        return;
    for (int i = 0; i < a->n_plans; i++) {
        cudnnBackendDestroyDescriptor(a->plans[i].plan_fwd);
        cudnnBackendDestroyDescriptor(a->plans[i].plan_bwd);
        g_destroy(a->plans[i].gf);
        g_destroy(a->plans[i].gb);
    }
    if (a->workspace)
        cudaFree(a->workspace);
    if (a->softmax_sum)
        cudaFree(a->softmax_sum);
    if (a->handle)
        cudnnDestroy(a->handle);
    free(a);
}

size_t cudnn_attn_device_bytes(const cudnn_attn *a)
{
    return a->ws_bytes + (size_t)a->sh.max_seq * a->sh.n_heads * a->sh.max_len * sizeof(float);
}

int cudnn_attn_prepare(cudnn_attn *a, int n_seq, gp_err *e)
{
    if (n_seq < 1 || n_seq > a->sh.max_seq)
        return gp_fail(e, "cuDNN attention: %d sequences outside [1, %d]", n_seq, a->sh.max_seq), 0;
    if (find_plan(a, n_seq))
        return 1;
    return build_plans(a, n_seq, 0, e);
}

static int execute(cudnn_attn *a, desc plan, int n, const int64_t *uids, void **ptrs, gp_err *e)
{
    desc vp = NULL;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &a->workspace);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendFinalize(vp);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendExecute(a->handle, plan, vp);
    if (vp)
        cudnnBackendDestroyDescriptor(vp);
    if (st != CUDNN_STATUS_SUCCESS) {
        char last[256] = "";
        cudnnGetLastErrorString(last, sizeof last);
        return gp_fail(e, "cuDNN attention execution: %s%s%s", cudnnGetErrorString(st), last[0] ? ": " : "", last);
    }
    cudaError_t ce = cudaGetLastError();
    if (ce != cudaSuccess)
        return gp_fail(e, "cuDNN attention execution: %s", cudaGetErrorString(ce));
    return 0;
}

int cudnn_attn_fwd(cudnn_attn *a, gp_bf16 *out, float *stats, const gp_bf16 *qkv, const int32_t *seq_len,
                   const int32_t *ragged_qkv, const int32_t *ragged_out, int n_seq, gp_err *e)
{
    plan_entry *p = find_plan(a, n_seq);
    if (!p)
        return gp_fail(e, "cuDNN attention: no plan for %d sequences (cudnn_attn_prepare first)", n_seq);
    const size_t D = (size_t)a->sh.n_heads * a->sh.head_dim;
    gp_bf16 *q = (gp_bf16 *)qkv;
    const int64_t uids[] = {UID_Q,     UID_K,      UID_V,     UID_O,      UID_STATS, UID_SEQ_Q,
                            UID_SEQ_KV, UID_SCALE, UID_LOWEST, UID_RAG_Q, UID_RAG_K, UID_RAG_V, UID_RAG_O};
    void *ptrs[] = {q,           q + D,     q + 2 * D,         out,      stats,
                    (void *)seq_len, (void *)seq_len, &a->scale, &a->lowest, (void *)ragged_qkv,
                    (void *)ragged_qkv, (void *)ragged_qkv, (void *)ragged_out};
    return execute(a, p->plan_fwd, (int)(sizeof uids / sizeof uids[0]), uids, ptrs, e);
}

int cudnn_attn_bwd(cudnn_attn *a, gp_bf16 *d_qkv, const gp_bf16 *d_out, const gp_bf16 *qkv, const gp_bf16 *out,
                   const float *stats, const int32_t *seq_len, const int32_t *ragged_qkv, const int32_t *ragged_out,
                   int n_seq, gp_err *e)
{
    plan_entry *p = find_plan(a, n_seq);
    if (!p)
        return gp_fail(e, "cuDNN attention: no plan for %d sequences (cudnn_attn_prepare first)", n_seq);
    const size_t D = (size_t)a->sh.n_heads * a->sh.head_dim;
    gp_bf16 *q = (gp_bf16 *)qkv, *dq = d_qkv;
    void *rq = (void *)ragged_qkv, *ro = (void *)ragged_out;
    const int64_t uids[] = {UID_Q,      UID_K,      UID_V,      UID_O,      UID_DO,     UID_STATS,  UID_DQ,
                            UID_DK,     UID_DV,     UID_SEQ_Q,  UID_SEQ_KV, UID_SCALE,  UID_LOWEST, UID_ONE,
                            UID_SOFTMAX_SUM, UID_RAG_Q, UID_RAG_K, UID_RAG_V, UID_RAG_O, UID_RAG_DO, UID_RAG_DQ,
                            UID_RAG_DK, UID_RAG_DV};
    void *ptrs[] = {q,         q + D,      q + 2 * D, (void *)out,     (void *)d_out,   (void *)stats,
                    dq,        dq + D,     dq + 2 * D, (void *)seq_len, (void *)seq_len, &a->scale,
                    &a->lowest, &a->one,   a->softmax_sum, rq,          rq,              rq,
                    ro,        ro,         rq,         rq,              rq};
    return execute(a, p->plan_bwd, (int)(sizeof uids / sizeof uids[0]), uids, ptrs, e);
}
