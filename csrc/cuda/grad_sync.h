/* cuda/grad_sync: summing a data-parallel step's gradients over the ranks with NCCL.
 *
 * Dense gradients: the backward hands over buckets (a block's parameters, the heads, the
 * embedding-side tensors) as soon as it has finished them; each is all-reduced (fp32 sum, counts
 * in elements) on a communication stream that waits for an event recorded on the compute stream
 * at that point, so communication overlaps the rest of the backward. grad_sync_join makes the
 * compute stream wait for all of it before anything reads the gradients.
 *
 * Item table: micro-batches mark the rows they touch in a byte mask on the GPU. At the end of
 * the step the marked ids are compacted (sorted, unique) on the GPU, every rank's ids and rows
 * are all-gathered (each rank padded to the largest count, learnt through the host links), and
 * every rank rebuilds the gradient as zero plus each rank's rows in rank order: deterministic and
 * identical on every rank. When that would move more bytes than an all-reduce of the whole table
 * (many negatives over a small catalogue), the whole table is all-reduced instead (mode auto;
 * rows or dense force one). A frozen table has no gradient and sends nothing.
 *
 * Every NCCL call is checked; the dist monitor's abort hook aborts the communicator so a dead
 * peer cannot leave this rank hanging in a collective.
 */
#ifndef GPSDREC_CUDA_GRAD_SYNC_H
#define GPSDREC_CUDA_GRAD_SYNC_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "dist.h"
#include "util.h"

typedef struct grad_sync grad_sync;

/* n_items / dim describe the item table (n_items 0: frozen, no row exchange). */
grad_sync *grad_sync_create(dist_ctx *d, int64_t n_items, int dim, int item_mode, gp_err *e);
void grad_sync_destroy(grad_sync *g);

/* Queues the all-reduce of grad[0..count) behind everything the compute stream has queued. */
int grad_sync_dense(grad_sync *g, float *grad, size_t count, cudaStream_t compute, gp_err *e);
/* The compute stream waits for every queued all-reduce. */
int grad_sync_join(grad_sync *g, cudaStream_t compute, gp_err *e);

/* Marks rows ids[0..n) (negative ids ignored) as touched in this step. */
int grad_sync_mark_rows(grad_sync *g, const int32_t *ids, int64_t n, cudaStream_t s, gp_err *e);
/* Sums the item-table gradient item_g [n_items][dim] over the ranks and clears the marks.
 * Synchronises the stream (the row counts travel through the host). */
int grad_sync_items(grad_sync *g, float *item_g, cudaStream_t s, gp_err *e);

/* Bytes of device memory held. */
size_t grad_sync_device_bytes(const grad_sync *g);

#endif
