// Next-item ranking support: counting catalogue items that outscore each user's true next item.
#include "kernels.h"

namespace {

constexpr int kRankThreads = 256;

// One block per row; threads stride over the columns and the block reduces integer counts.
__global__ void count_greater_kernel(int64_t *count, const float *scores, int64_t ld, const float *threshold,
                                     const int32_t *target, int64_t cols, int64_t col_base)
{
    const int64_t r = blockIdx.x;
    const float thr = threshold[r];
    const int64_t tgt = target[r];
    const float *row = scores + r * ld;
    long long local = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
        int64_t id = col_base + j;
        local += (id != 0 && id != tgt && row[j] > thr) ? 1 : 0;
    }
    __shared__ long long partial[kRankThreads];
    partial[threadIdx.x] = local;
    __syncthreads();
    for (int stride = kRankThreads / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride)
            partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        count[r] += partial[0];
}

} // namespace

extern "C" cudaError_t k_count_greater(int64_t *count, const float *scores, int64_t ld, const float *threshold,
                                       const int32_t *target, int64_t rows, int64_t cols, int64_t col_base,
                                       cudaStream_t s)
{
    if (rows == 0 || cols == 0)
        return cudaSuccess;
    count_greater_kernel<<<(unsigned)rows, kRankThreads, 0, s>>>(count, scores, ld, threshold, target, cols, col_base);
    return cudaGetLastError();
}
