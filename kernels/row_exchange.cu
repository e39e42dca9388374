/* row_exchange.cu: the item-table side of a data-parallel step (csrc/cuda/grad_sync.c).
 *
 * - k_mark_rows: mask[id] = 1 for every id a micro-batch used (tokens, labels, negatives). Every
 *   writer stores the same value, so no atomics are needed and the result is exact.
 * - k_mask_to_ids: the marked ids in increasing order (cub::DeviceSelect::Flagged over a
 *   counting iterator), their count written to device memory; the ids of the rows this rank
 *   sends, deduplicated on the GPU.
 * - k_gather_rows_padded: the rows of those ids into a send buffer of n_pad rows, rows past n
 *   zero, so every rank sends the same number of rows.
 * - k_add_rows_by_id: table[ids[i]] += rows[i] for ids[i] >= 0; within one rank's block the ids
 *   are distinct, so the caller adds the ranks' blocks one after another in rank order and the
 *   sum is the same, bit for bit, on every rank.
 */
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include "common.cuh"

namespace
{

__global__ void mark_rows_kernel(uint8_t *mask, const int32_t *ids, int64_t n, int64_t n_rows)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        int32_t id = ids[i];
        if (id >= 0 && id < n_rows)
            mask[id] = 1;
    }
}

__global__ void gather_rows_padded_kernel(float *out, const float *table, const int32_t *ids, int64_t n,
                                          int64_t n_pad, int dim)
{
    const int64_t total = n_pad * dim, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t r = i / dim;
        int c = (int)(i - r * dim);
        out[i] = r < n ? table[(int64_t)ids[r] * dim + c] : 0.0f;
    }
}

__global__ void add_rows_by_id_kernel(float *table, const float *rows, const int32_t *ids, int64_t n, int dim)
{
    const int64_t total = n * dim, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t r = i / dim;
        int c = (int)(i - r * dim);
        int32_t id = ids[r];
        if (id >= 0)
            table[(int64_t)id * dim + c] += rows[i];
    }
}

} // namespace

extern "C" cudaError_t k_mark_rows(uint8_t *mask, const int32_t *ids, int64_t n, int64_t n_rows, cudaStream_t s)
{
    if (n <= 0)
        return cudaSuccess;
    mark_rows_kernel<<<kb::grid_for(mark_rows_kernel, n, kb::THREADS), kb::THREADS, 0, s>>>(mask, ids, n, n_rows);
    return cudaGetLastError();
}

extern "C" cudaError_t k_mask_to_ids_scratch(int64_t n_rows, size_t *bytes)
{
    *bytes = 0;
    return cub::DeviceSelect::Flagged(nullptr, *bytes, thrust::counting_iterator<int32_t>(0), (const uint8_t *)nullptr,
                                      (int32_t *)nullptr, (int64_t *)nullptr, (int)n_rows);
}

extern "C" cudaError_t k_mask_to_ids(int32_t *ids, int64_t *count, const uint8_t *mask, int64_t n_rows, void *scratch,
                                     size_t scratch_bytes, cudaStream_t s)
{
    return cub::DeviceSelect::Flagged(scratch, scratch_bytes, thrust::counting_iterator<int32_t>(0), mask, ids, count,
                                      (int)n_rows, s);
}

extern "C" cudaError_t k_gather_rows_padded(float *out, const float *table, const int32_t *ids, int64_t n, int64_t n_pad,
                                            int dim, cudaStream_t s)
{
    if (n_pad <= 0 || dim <= 0)
        return cudaSuccess;
    gather_rows_padded_kernel<<<kb::grid_for(gather_rows_padded_kernel, n_pad * dim, kb::THREADS), kb::THREADS, 0, s>>>(
        out, table, ids, n, n_pad, dim);
    return cudaGetLastError();
}

extern "C" cudaError_t k_add_rows_by_id(float *table, const float *rows, const int32_t *ids, int64_t n, int dim,
                                        cudaStream_t s)
{
    if (n <= 0 || dim <= 0)
        return cudaSuccess;
    add_rows_by_id_kernel<<<kb::grid_for(add_rows_by_id_kernel, n * dim, kb::THREADS), kb::THREADS, 0, s>>>(
        table, rows, ids, n, dim);
    return cudaGetLastError();
}
