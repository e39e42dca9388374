// y += a * x: accumulating a gradient that passes through unchanged (e.g. the category table's
// gradient when the heads do not L2-normalise).
#include "kernels.h"

namespace {

__global__ void axpy_kernel(float *y, const float *x, float a, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += a * x[i];
}

} // namespace

extern "C" cudaError_t k_axpy(float *y, const float *x, float a, int64_t n, cudaStream_t s)
{
    if (n == 0)
        return cudaSuccess;
    int64_t blocks = (n + 255) / 256;
    if (blocks > 65535 * 8)
        blocks = 65535 * 8;
    axpy_kernel<<<(unsigned)blocks, 256, 0, s>>>(y, x, a, n);
    return cudaGetLastError();
}
