#include "cuda/grad_sync.h"

#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_util.h"
#include "kernels.h"
#include "settings.h"

#define NCCL(call)                                                                                        \
    do {                                                                                                  \
        ncclResult_t _nr = (call);                                                                        \
        if (_nr != ncclSuccess) {                                                                         \
            gp_fail(e, "%s (%s:%d): %s (%s)", #call, __FILE__, __LINE__, ncclGetErrorString(_nr),         \
                    ncclGetLastError(NULL));                                                              \
            goto fail;                                                                                    \
        }                                                                                                 \
    } while (0)

struct grad_sync {
    dist_ctx *dist;
    int rank, world, item_mode;
    ncclComm_t comm;
    int have_comm;
    cudaStream_t comm_stream;
    cudaEvent_t ready, done;
    int pending; /* all-reduces queued since the last join */
    /* item table */
    int64_t n_items;
    int dim;
    uint8_t *mask;
    int32_t *ids;      /* this rank's compacted ids [n_items] */
    int64_t *count;    /* device: how many */
    void *scratch;
    size_t scratch_bytes;
    int32_t *send_ids, *recv_ids; /* [cap] and [world * cap] */
    float *send_rows, *recv_rows;
    int64_t cap; /* rows per rank the exchange buffers hold */
    size_t device_bytes;
};

static void abort_comm(void *arg)
{
    grad_sync *g = arg;
    if (g->have_comm)
        ncclCommAbort(g->comm);
    g->have_comm = 0;
}

static int dev_alloc(grad_sync *g, void **p, size_t bytes, const char *what, gp_err *e)
{
    cudaError_t ce = cudaMalloc(p, bytes ? bytes : 1);
    if (ce != cudaSuccess)
        return gp_fail(e, "cannot allocate %.1f MiB of device memory for %s: %s", (double)bytes / (1 << 20), what,
                       cudaGetErrorString(ce));
    g->device_bytes += bytes;
    return 0;
}

grad_sync *grad_sync_create(dist_ctx *d, int64_t n_items, int dim, int item_mode, gp_err *e)
{
    grad_sync *g = calloc(1, sizeof *g);
    if (!g) {
        gp_fail(e, "out of memory");
        return NULL;
    }
    g->dist = d;
    g->rank = dist_rank(d);
    g->world = dist_world(d);
    g->item_mode = item_mode;
    g->n_items = n_items;
    g->dim = dim;
    ncclUniqueId id;
    if (g->rank == 0)
        NCCL(ncclGetUniqueId(&id));
    if (dist_bcast(d, &id, sizeof id, e) != 0)
        goto fail;
    NCCL(ncclCommInitRank(&g->comm, g->world, id, g->rank));
    g->have_comm = 1;
    dist_set_abort_hook(d, abort_comm, g);
    CU(cudaStreamCreateWithFlags(&g->comm_stream, cudaStreamNonBlocking));
    CU(cudaEventCreateWithFlags(&g->ready, cudaEventDisableTiming));
    CU(cudaEventCreateWithFlags(&g->done, cudaEventDisableTiming));
    if (n_items > 0) {
        if (dev_alloc(g, (void **)&g->mask, (size_t)n_items, "the touched-row mask", e) ||
            dev_alloc(g, (void **)&g->ids, (size_t)n_items * sizeof(int32_t), "touched row ids", e) ||
            dev_alloc(g, (void **)&g->count, sizeof(int64_t), "the touched row count", e))
            goto fail;
        CU(k_mask_to_ids_scratch(n_items, &g->scratch_bytes));
        if (dev_alloc(g, &g->scratch, g->scratch_bytes, "row compaction scratch", e))
            goto fail;
        CU(cudaMemset(g->mask, 0, (size_t)n_items));
    }
    return g;
fail:
    grad_sync_destroy(g);
    return NULL;
}

void grad_sync_destroy(grad_sync *g)
{
    if (!g)
        return;
    dist_set_abort_hook(g->dist, NULL, NULL);
    if (g->have_comm)
        ncclCommDestroy(g->comm);
    if (g->comm_stream)
        cudaStreamDestroy(g->comm_stream);
    if (g->ready)
        cudaEventDestroy(g->ready);
    if (g->done)
        cudaEventDestroy(g->done);
    cudaFree(g->mask);
    cudaFree(g->ids);
    cudaFree(g->count);
    cudaFree(g->scratch);
    cudaFree(g->send_ids);
    cudaFree(g->recv_ids);
    cudaFree(g->send_rows);
    cudaFree(g->recv_rows);
    free(g);
}

size_t grad_sync_device_bytes(const grad_sync *g) { return g ? g->device_bytes : 0; }

int grad_sync_dense(grad_sync *g, float *grad, size_t count, cudaStream_t compute, gp_err *e)
{
    if (count == 0)
        return 0;
    CU(cudaEventRecord(g->ready, compute));
    CU(cudaStreamWaitEvent(g->comm_stream, g->ready, 0));
    NCCL(ncclAllReduce(grad, grad, count, ncclFloat32, ncclSum, g->comm, g->comm_stream));
    g->pending = 1;
    return 0;
fail:
    return -1;
}

int grad_sync_join(grad_sync *g, cudaStream_t compute, gp_err *e)
{
    if (!g->pending)
        return 0;
    CU(cudaEventRecord(g->done, g->comm_stream));
    CU(cudaStreamWaitEvent(compute, g->done, 0));
    g->pending = 0;
    return 0;
fail:
    return -1;
}

int grad_sync_mark_rows(grad_sync *g, const int32_t *ids, int64_t n, cudaStream_t s, gp_err *e)
{
    if (!g->mask)
        return 0;
    CU(k_mark_rows(g->mask, ids, n, g->n_items, s));
    return 0;
fail:
    return -1;
}

/* Grows the exchange buffers to hold `rows` rows per rank. */
static int reserve_exchange(grad_sync *g, int64_t rows, gp_err *e)
{
    if (rows <= g->cap)
        return 0;
    int64_t cap = GP_MIN(g->n_items, GP_MAX(rows + rows / 4, (int64_t)1024));
    cudaFree(g->send_ids);
    cudaFree(g->recv_ids);
    cudaFree(g->send_rows);
    cudaFree(g->recv_rows);
    g->send_ids = g->recv_ids = NULL;
    g->send_rows = g->recv_rows = NULL;
    const size_t W = (size_t)g->world, E = (size_t)g->dim;
    if (dev_alloc(g, (void **)&g->send_ids, (size_t)cap * sizeof(int32_t), "the row exchange", e) ||
        dev_alloc(g, (void **)&g->recv_ids, W * (size_t)cap * sizeof(int32_t), "the row exchange", e) ||
        dev_alloc(g, (void **)&g->send_rows, (size_t)cap * E * sizeof(float), "the row exchange", e) ||
        dev_alloc(g, (void **)&g->recv_rows, W * (size_t)cap * E * sizeof(float), "the row exchange", e))
        return -1;
    g->cap = cap;
    return 0;
}

int grad_sync_items(grad_sync *g, float *item_g, cudaStream_t s, gp_err *e)
{
    int64_t *counts = NULL;
    if (!g->mask || !item_g)
        return 0;
    const int W = g->world;
    const int64_t E = g->dim;
    int64_t u = 0;
    CU(k_mask_to_ids(g->ids, g->count, g->mask, g->n_items, g->scratch, g->scratch_bytes, s));
    CU(cudaMemcpyAsync(&u, g->count, sizeof u, cudaMemcpyDeviceToHost, s));
    CU(cudaStreamSynchronize(s));
    counts = calloc((size_t)W, sizeof *counts);
    if (!counts)
        return gp_fail(e, "out of memory");
    counts[g->rank] = u;
    if (dist_allreduce_i64(g->dist, counts, (size_t)W, e) != 0)
        goto fail;
    int64_t umax = 0;
    for (int r = 0; r < W; r++)
        umax = GP_MAX(umax, counts[r]);
    int mode = g->item_mode;
    /* rows: W * umax * (E floats + 1 id) gathered; dense: a ring all-reduce moves about 2 x the table */
    if (mode == DIST_ITEM_AUTO)
        mode = (double)W * (double)umax * (double)(E + 1) < 2.0 * (double)g->n_items * (double)E ? DIST_ITEM_ROWS
                                                                                                 : DIST_ITEM_DENSE;
    if (mode == DIST_ITEM_DENSE) {
        NCCL(ncclAllReduce(item_g, item_g, (size_t)(g->n_items * E), ncclFloat32, ncclSum, g->comm, s));
    } else if (umax > 0) {
        if (reserve_exchange(g, umax, e) != 0)
            goto fail;
        /* ids past this rank's count are -1: the receivers skip them */
        CU(cudaMemsetAsync(g->send_ids, 0xff, (size_t)umax * sizeof(int32_t), s));
        CU(cudaMemcpyAsync(g->send_ids, g->ids, (size_t)u * sizeof(int32_t), cudaMemcpyDeviceToDevice, s));
        CU(k_gather_rows_padded(g->send_rows, item_g, g->ids, u, umax, (int)E, s));
        NCCL(ncclGroupStart());
        NCCL(ncclAllGather(g->send_ids, g->recv_ids, (size_t)umax, ncclInt32, g->comm, s));
        NCCL(ncclAllGather(g->send_rows, g->recv_rows, (size_t)(umax * E), ncclFloat32, g->comm, s));
        NCCL(ncclGroupEnd());
        CU(cudaMemsetAsync(item_g, 0, (size_t)(g->n_items * E) * sizeof(float), s));
        for (int r = 0; r < W; r++)
            CU(k_add_rows_by_id(item_g, g->recv_rows + (size_t)r * (size_t)(umax * E), g->recv_ids + (size_t)r * umax,
                                counts[r], (int)E, s));
    }
    CU(cudaMemsetAsync(g->mask, 0, (size_t)g->n_items, s));
    free(counts);
    return 0;
fail:
    free(counts);
    return -1;
}
