/* rope.cu: rotary position embedding in place on the q and k parts of the packed bf16 qkv
 * buffer (k_rope_qk).
 *
 * A block takes a tile of TR rows at a time. It first computes the tile's TR * head_dim/2
 * (cos, sin) pairs once into shared memory (the angle as the official model builds it in fp32:
 * freq_i = 1 / theta^(2i/head_dim), angle = fp32(pos * freq_i)), since every head of q and k of a
 * row shares them, then rotates the tile's q|k columns: 8 bf16 (4 pairs, 16 bytes) per thread
 * and step when head_dim % 8 == 0 and the buffer is 16-byte aligned, else pair by pair. */
#include "common.cuh"
#include "rope.cuh"

namespace
{

constexpr int T = kb::THREADS;
constexpr int ROPE_CS = 2048; /* (cos, sin) entries per tile: TR * half <= ROPE_CS */

__global__ void __launch_bounds__(T) rope_kernel(uint16_t *qkv, const int32_t *pos, int64_t rows, int n_heads,
                                                 int head_dim, float theta, float sign, int tile_rows, bool vec)
{
    __shared__ float2 cs[ROPE_CS];
    __shared__ float freq[ROPE_CS];
    const int half = head_dim / 2;
    const int64_t D = (int64_t)n_heads * head_dim, stride = 3 * D;
    for (int i = threadIdx.x; i < half; i += blockDim.x)
        freq[i] = rope::freq(i, head_dim, theta);
    /* per row: units of 8 columns (vec) or pairs over the 2 * n_heads heads of q and k */
    const int64_t per_row = vec ? (2 * D) / kb::UNIT : (int64_t)2 * n_heads * half;
    for (int64_t t0 = (int64_t)blockIdx.x * tile_rows; t0 < rows; t0 += (int64_t)gridDim.x * tile_rows) {
        const int tr = rows - t0 < tile_rows ? (int)(rows - t0) : tile_rows;
        __syncthreads(); /* freq is ready; the previous tile is done with cs */
        for (int i = threadIdx.x; i < tr * half; i += blockDim.x) {
            const int rr = i / half, p = i - rr * half;
            cs[i] = rope::cos_sin(__ldg(pos + t0 + rr), freq[p], sign);
        }
        __syncthreads();
        const int64_t work = (int64_t)tr * per_row;
        for (int64_t i = threadIdx.x; i < work; i += blockDim.x) {
            int64_t rr64;
            int c;
            kb::divmod(i, (int)per_row, rr64, c);
            const int rr = (int)rr64;
            uint16_t *row = qkv + (t0 + rr) * stride;
            const float2 *rcs = cs + rr * half;
            if (vec) {
                const int col = c * kb::UNIT;        /* within q|k: [0, 2D) */
                const int p0 = (col % head_dim) / 2; /* first pair of the unit within its head */
                uint4 *ptr = reinterpret_cast<uint4 *>(row + col);
                uint4 q = *ptr;
                uint32_t wv[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    const float a = __uint_as_float(wv[k] << 16), b = __uint_as_float(wv[k] & 0xffff0000u);
                    const float2 o = rope::rotate(a, b, rcs[p0 + k]);
                    wv[k] = kb::f2bf2(o.x, o.y);
                }
                *ptr = make_uint4(wv[0], wv[1], wv[2], wv[3]);
            } else {
                const int h = c / half, p = c - h * half;
                uint16_t *e = row + (int64_t)h * head_dim + 2 * p;
                const float a = kb::bf2f(e[0]), b = kb::bf2f(e[1]);
                const float2 o = rope::rotate(a, b, rcs[p]);
                e[0] = kb::f2bf(o.x);
                e[1] = kb::f2bf(o.y);
            }
        }
    }
}

/* cs[pos * half + i] = (cos, sin) of position pos and pair i. */
__global__ void __launch_bounds__(T) rope_table_kernel(float2 *cs, int n_pos, int head_dim, float theta)
{
    const int half = head_dim / 2;
    const int64_t n = (int64_t)n_pos * half, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int pos = (int)(i / half), p = (int)(i - (int64_t)pos * half);
        cs[i] = rope::cos_sin(pos, rope::freq(p, head_dim, theta), 1.0f);
    }
}

} /* namespace */

extern "C" cudaError_t k_rope_table(float *cs, int n_pos, int head_dim, double theta, cudaStream_t s)
{
    if (n_pos <= 0 || head_dim < 2)
        return cudaSuccess;
    if (head_dim % 2 != 0 || !kb::aligned8(cs))
        return cudaErrorInvalidValue;
    const int64_t n = (int64_t)n_pos * (head_dim / 2);
    rope_table_kernel<<<kb::grid_for(rope_table_kernel, n, T), T, 0, s>>>(reinterpret_cast<float2 *>(cs), n_pos,
                                                                          head_dim, (float)theta);
    return cudaGetLastError();
}

extern "C" cudaError_t k_rope_qk(gp_bf16 *qkv, const int32_t *pos, int64_t rows, int n_heads, int head_dim,
                                 double theta, int inverse, cudaStream_t s)
{
    if (rows <= 0 || n_heads <= 0 || head_dim < 2)
        return cudaSuccess;
    const int half = head_dim / 2;
    if (half > ROPE_CS || (int64_t)n_heads * head_dim > INT32_MAX / 3)
        return cudaErrorInvalidValue;
    int tile_rows = ROPE_CS / half;
    if (tile_rows > 64)
        tile_rows = 64;
    const bool vec = head_dim % kb::UNIT == 0 && kb::aligned16(qkv);
    rope_kernel<<<kb::grid_for(rope_kernel, rows, tile_rows), T, 0, s>>>(
        qkv, pos, rows, n_heads, head_dim, (float)theta, inverse ? -1.0f : 1.0f, tile_rows, vec);
    return cudaGetLastError();
}
