/* embedding.cu: row gathers (k_embed_fwd, k_gather_rows, k_gather_rows_bf16), the deterministic
 * scatter-add of row gradients (k_scatter_plan_init, k_scatter_add_rows, k_scatter_add_rows_l2bwd)
 * and k_add_rows.
 *
 * Gathers: a persistent grid-stride loop over (row, quad of 4 elements) pairs, so consecutive
 * threads read and write consecutive 16-byte pieces (8 bytes for bf16) and small rows still fill
 * whole warps.
 *
 * Scatter-add: the (id, row) pairs are sorted by id with CUB's stable LSD radix sort (only the
 * bits that ids < n_ids can have), so the rows of one id end up contiguous and in increasing row
 * order; cub::DeviceSelect::UniqueByKey then yields the first sorted position of every distinct
 * id. One group of lanes per distinct id (a warp for rows of 128+ floats, fewer lanes for
 * narrower rows) sums that id's rows in increasing row order, each lane owning fixed columns,
 * and adds the sum into table_grad once. A run longer than SCATTER_CHUNK rows (the segment
 * table's two ids take every token of a batch) is instead cut into chunks of SCATTER_CHUNK
 * consecutive sorted rows: each chunk is summed by its own group into a partial, then the
 * partials are added in chunk order. Either way the order of additions depends only on the
 * ids, never on scheduling: no atomics, bit-identical run to run. */
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include "common.cuh"

namespace
{

/* ---- gathers ------------------------------------------------------------------------------ */

__global__ void __launch_bounds__(kb::THREADS)
    embed_fwd_kernel(float *out_f32, uint16_t *out_bf16, const float *item, const float *cate, const float *seg,
                     const int32_t *tok_item, const int32_t *tok_cate, const int32_t *tok_seg, int64_t rows, int dim,
                     bool vec)
{
    const int qpr = (dim + 3) / 4;
    const int64_t total = rows * qpr, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t r;
        int q;
        kb::divmod(i, qpr, r, q);
        const int e = q * 4, cnt = min(4, dim - e);
        kb::f4 a, b, c;
        kb::ld4(a, item + (int64_t)__ldg(tok_item + r) * dim + e, cnt, vec);
        kb::ld4(b, cate + (int64_t)__ldg(tok_cate + r) * dim + e, cnt, vec);
        kb::ld4(c, seg + (int64_t)__ldg(tok_seg + r) * dim + e, cnt, vec);
#pragma unroll
        for (int k = 0; k < 4; k++)
            a.v[k] = (a.v[k] + b.v[k]) + c.v[k]; /* the CPU model's order: item, += cate, += seg */
        const int64_t o = r * dim + e;
        if (out_f32)
            kb::st4(out_f32 + o, a, cnt, vec);
        if (out_bf16)
            kb::st4(out_bf16 + o, a, cnt, vec);
    }
}

template <typename Tab>
__global__ void __launch_bounds__(kb::THREADS)
    gather_rows_kernel(float *out_f32, uint16_t *out_bf16, const Tab *table, const int32_t *ids, int64_t rows,
                       int dim, bool vec)
{
    const int qpr = (dim + 3) / 4;
    const int64_t total = rows * qpr, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t r;
        int q;
        kb::divmod(i, qpr, r, q);
        const int e = q * 4, cnt = min(4, dim - e);
        kb::f4 a;
        kb::ld4(a, table + (int64_t)__ldg(ids + r) * dim + e, cnt, vec);
        const int64_t o = r * dim + e;
        if (out_f32)
            kb::st4(out_f32 + o, a, cnt, vec);
        if (out_bf16)
            kb::st4(out_bf16 + o, a, cnt, vec);
    }
}

/* dst[dst_rows[r]] += src[r]; dst rows are distinct, so every element has one writer. */
__global__ void __launch_bounds__(kb::THREADS)
    add_rows_kernel(float *dst, const float *src, const int32_t *dst_rows, int64_t rows, int dim, bool vec)
{
    const int qpr = (dim + 3) / 4;
    const int64_t total = rows * qpr, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t r;
        int q;
        kb::divmod(i, qpr, r, q);
        const int e = q * 4, cnt = min(4, dim - e);
        float *d = dst + (int64_t)__ldg(dst_rows + r) * dim + e;
        kb::f4 a, b;
        kb::ld4<false>(a, d, cnt, vec);
        kb::ld4(b, src + r * dim + e, cnt, vec);
#pragma unroll
        for (int k = 0; k < 4; k++)
            a.v[k] += b.v[k];
        kb::st4(d, a, cnt, vec);
    }
}

/* ---- scatter-add ------------------------------------------------------------------------------ */

/* keys[i] = ids[i], vals[i] = i: the input of the stable sort. An id outside [0, n_ids) gets the
 * key n_ids, so that such rows form one run of their own that the final kernels skip: the sort
 * looks only at the bits of keys <= n_ids, and a raw out-of-range id would alias a valid id's low
 * bits, land inside its rows and split its run in two (two groups updating one row). */
__global__ void __launch_bounds__(kb::THREADS)
    scatter_prep_kernel(uint32_t *keys, int32_t *vals, const int32_t *ids, int64_t rows, int64_t n_ids)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < rows; i += stride) {
        const int32_t id = __ldg(ids + i);
        keys[i] = id >= 0 && (int64_t)id < n_ids ? (uint32_t)id : (uint32_t)n_ids;
        vals[i] = (int32_t)i;
    }
}

/* Rows of each sorted id added in sorted (= increasing row) order. Groups of G lanes, one
 * distinct id at a time (grid-stride over the distinct ids); lane l owns the columns of
 * units l, l + G, ... (units of 4 floats when vec, else single floats). */
constexpr int SCATTER_PREFETCH = 16; /* rows whose loads are in flight before their adds */
constexpr int64_t SCATTER_CHUNK = 512; /* longer runs are summed in chunks of this many rows */

/* Source rows are fp32 or bf16 (uint16_t); a unit is 4 consecutive elements (one 16- or 8-byte
 * load, kb::ld4), widened to fp32 exactly. */
template <typename Src> __device__ __forceinline__ float4 ld_unit(const Src *p)
{
    kb::f4 a;
    kb::ld4(a, p, 4, true);
    return make_float4(a.v[0], a.v[1], a.v[2], a.v[3]);
}

__device__ __forceinline__ float ld_one(const float *p)
{
    return __ldg(p);
}

__device__ __forceinline__ float ld_one(const uint16_t *p)
{
    return kb::bf2f(__ldg(p));
}

/* Sum of sorted rows [begin, end) at columns of unit u (4 elements when vec), in row order. */
template <typename Src>
__device__ __forceinline__ float4 sum_rows(const Src *src, const int32_t *sorted_rows, int64_t begin, int64_t end,
                                           int dim, int64_t col, bool vec)
{
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int64_t j = begin; j < end; j++) {
        const Src *row = src + (int64_t)sorted_rows[j] * dim + col;
        if (vec) {
            float4 t = ld_unit(row);
            acc.x += t.x;
            acc.y += t.y;
            acc.z += t.z;
            acc.w += t.w;
        } else {
            acc.x += ld_one(row);
        }
    }
    return acc;
}

/* The same for vector units, SCATTER_PREFETCH row loads in flight before their adds (the same
 * adds in the same order). */
template <typename Src>
__device__ __forceinline__ float4 sum_rows_vec(const Src *src, const int32_t *sorted_rows, int64_t begin,
                                               int64_t end, int dim, int64_t col)
{
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    int64_t j = begin;
    for (; j + SCATTER_PREFETCH <= end; j += SCATTER_PREFETCH) {
        float4 t[SCATTER_PREFETCH];
#pragma unroll
        for (int q = 0; q < SCATTER_PREFETCH; q++)
            t[q] = ld_unit(src + (int64_t)sorted_rows[j + q] * dim + col);
#pragma unroll
        for (int q = 0; q < SCATTER_PREFETCH; q++) {
            acc.x += t[q].x;
            acc.y += t[q].y;
            acc.z += t[q].z;
            acc.w += t[q].w;
        }
    }
    for (; j < end; j++) {
        const float4 t = ld_unit(src + (int64_t)sorted_rows[j] * dim + col);
        acc.x += t.x;
        acc.y += t.y;
        acc.z += t.z;
        acc.w += t.w;
    }
    return acc;
}

/* sub[r] = number of chunks of run r when it is longer than SCATTER_CHUNK, else 0; entries from
 * n_runs to rows are 0 so a scan over `rows` entries needs no host-side count. */
__global__ void __launch_bounds__(kb::THREADS)
    count_chunks_kernel(int32_t *sub, const int32_t *run_start, const int32_t *n_runs_dev, int64_t rows)
{
    const int64_t n_runs = *n_runs_dev;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride) {
        int32_t c = 0;
        if (r < n_runs) {
            const int64_t len = (r + 1 < n_runs ? (int64_t)run_start[r + 1] : rows) - run_start[r];
            if (len > SCATTER_CHUNK)
                c = (int32_t)((len + SCATTER_CHUNK - 1) / SCATTER_CHUNK);
        }
        sub[r] = c;
    }
}

/* Chunk s of the long runs: find its run by binary search over the chunk offsets, sum its rows
 * into partial[s]. */
template <int G, typename Src>
__global__ void __launch_bounds__(kb::THREADS)
    chunk_sums_kernel(float *partial, const Src *src, const int32_t *sorted_rows, const int32_t *run_start,
                      const int32_t *sub, const int32_t *sub_off, const int32_t *n_runs_dev, int64_t rows, int dim,
                      int64_t max_chunks, bool vec)
{
    const int64_t n_runs = *n_runs_dev;
    if (n_runs == 0)
        return;
    const int64_t total = (int64_t)sub_off[n_runs - 1] + sub[n_runs - 1];
    const int lane = threadIdx.x % G;
    const int width = vec ? 4 : 1;
    const int n_units = (dim + width - 1) / width;
    const int64_t groups = (int64_t)gridDim.x * (blockDim.x / G);
    for (int64_t c = (int64_t)blockIdx.x * (blockDim.x / G) + threadIdx.x / G; c < total && c < max_chunks;
         c += groups) {
        int64_t lo = 0, hi = n_runs - 1; /* last run with sub_off <= c and a chunk */
        while (lo < hi) {
            int64_t mid = (lo + hi + 1) / 2;
            if ((int64_t)sub_off[mid] <= c)
                lo = mid;
            else
                hi = mid - 1;
        }
        while (lo > 0 && sub[lo] == 0)
            lo--;
        const int64_t k = c - sub_off[lo];
        const int64_t run_end = lo + 1 < n_runs ? (int64_t)run_start[lo + 1] : rows;
        const int64_t begin = run_start[lo] + k * SCATTER_CHUNK;
        const int64_t end = begin + SCATTER_CHUNK < run_end ? begin + SCATTER_CHUNK : run_end;
        for (int u = lane; u < n_units; u += G) {
            const int64_t col = (int64_t)u * width;
            float4 acc = sum_rows(src, sorted_rows, begin, end, dim, col, vec);
            float *dst = partial + c * dim + col;
            if (vec)
                *reinterpret_cast<float4 *>(dst) = acc;
            else
                *dst = acc.x;
        }
    }
}

/* For each long run: table_grad[id] += its chunk partials, added in chunk order. */
template <int G>
__global__ void __launch_bounds__(kb::THREADS)
    combine_chunks_kernel(float *table_grad, const float *partial, const uint32_t *sorted_ids,
                          const int32_t *run_start, const int32_t *sub, const int32_t *sub_off,
                          const int32_t *n_runs_dev, int dim, int64_t n_ids, const uint8_t *freeze_mask, bool vec)
{
    const int64_t n_runs = *n_runs_dev;
    const int lane = threadIdx.x % G;
    const int width = vec ? 4 : 1;
    const int n_units = (dim + width - 1) / width;
    const int64_t groups = (int64_t)gridDim.x * (blockDim.x / G);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / G) + threadIdx.x / G; r < n_runs; r += groups) {
        const int32_t n_chunks = sub[r];
        if (n_chunks == 0)
            continue;
        const uint32_t id = sorted_ids[run_start[r]];
        if ((int64_t)id >= n_ids || (freeze_mask && freeze_mask[id]))
            continue;
        for (int u = lane; u < n_units; u += G) {
            const int64_t col = (int64_t)u * width;
            float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
            for (int32_t k = 0; k < n_chunks; k++) {
                const float *p = partial + ((int64_t)sub_off[r] + k) * dim + col;
                if (vec) {
                    float4 t = *reinterpret_cast<const float4 *>(p);
                    acc.x += t.x;
                    acc.y += t.y;
                    acc.z += t.z;
                    acc.w += t.w;
                } else {
                    acc.x += *p;
                }
            }
            float *d = table_grad + (int64_t)id * dim + col;
            if (vec) {
                float4 o = *reinterpret_cast<float4 *>(d);
                o.x += acc.x;
                o.y += acc.y;
                o.z += acc.z;
                o.w += acc.w;
                *reinterpret_cast<float4 *>(d) = o;
            } else {
                *d += acc.x;
            }
        }
    }
}

template <int G>
__global__ void __launch_bounds__(kb::THREADS)
    scatter_runs_kernel(float *table_grad, const float *src, const uint32_t *sorted_ids, const int32_t *sorted_rows,
                        const int32_t *run_start, const int32_t *n_runs_dev, int64_t rows, int dim, int64_t n_ids,
                        const uint8_t *freeze_mask, bool vec)
{
    const int lane = threadIdx.x % G;
    const int64_t n_runs = *n_runs_dev;
    const int64_t groups = (int64_t)gridDim.x * (blockDim.x / G);
    const int width = vec ? 4 : 1;
    const int n_units = (dim + width - 1) / width;
    for (int64_t run = (int64_t)blockIdx.x * (blockDim.x / G) + threadIdx.x / G; run < n_runs; run += groups) {
        const int64_t begin = run_start[run];
        const int64_t end = run + 1 < n_runs ? (int64_t)run_start[run + 1] : rows;
        const uint32_t id = sorted_ids[begin];
        if ((int64_t)id >= n_ids || (freeze_mask && freeze_mask[id]) || end - begin > SCATTER_CHUNK)
            continue;
        float *dst = table_grad + (int64_t)id * dim;
        for (int u = lane; u < n_units; u += G) {
            const int64_t col = (int64_t)u * width;
            if (vec) {
                const float4 acc = sum_rows_vec(src, sorted_rows, begin, end, dim, col);
                float4 *d = reinterpret_cast<float4 *>(dst + col);
                float4 o = *d;
                o.x += acc.x;
                o.y += acc.y;
                o.z += acc.z;
                o.w += acc.w;
                *d = o;
            } else {
                float acc = 0.f;
                int64_t j = begin;
                for (; j + SCATTER_PREFETCH <= end; j += SCATTER_PREFETCH) {
                    float t[SCATTER_PREFETCH];
#pragma unroll
                    for (int q = 0; q < SCATTER_PREFETCH; q++)
                        t[q] = __ldg(src + (int64_t)sorted_rows[j + q] * dim + col);
#pragma unroll
                    for (int q = 0; q < SCATTER_PREFETCH; q++)
                        acc += t[q];
                }
                for (; j < end; j++)
                    acc += __ldg(src + (int64_t)sorted_rows[j] * dim + col);
                dst[col] += acc;
            }
        }
    }
}

/* ---- scatter-add through the L2 normalisation's backward ---------------------------------- */
/* For rows that are gradients with respect to L2-normalised table rows (the sampled softmax's
 * negatives): table_grad[id] += J(table[id])^T (sum of the id's rows), J the Jacobian of
 * x / max(||x||, eps). The backward is linear in the gradient, so summing the rows of an id first
 * and applying it once per distinct id gives the same result as applying it per row (up to
 * rounding), at a fraction of the traffic: the per-row pass read and wrote every fp32 gradient
 * row and read its normalised copy, 2.1M rows a step at L4H64A4 and L4H256A4.
 * A group of G lanes owns a run and holds its sum in registers, UPL float4 units a lane (lane l:
 * units l, l + G, ...); the loop is warp-uniform so the group reductions see whole warps. */

/* The epilogue of one run: ok is false for a lane group with no run this round (it still joins
 * the shuffles). g holds the run's summed gradient. */
template <int G, int UPL>
__device__ __forceinline__ void l2_bwd_add_row(float *table_grad, const float *table, uint32_t id,
                                               const float4 (&g)[UPL], bool ok, int lane, int n_units, int dim,
                                               float eps)
{
    float4 x[UPL];
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < UPL; k++) {
        const int u = lane + k * G;
        x[k] = ok && u < n_units ? __ldg(reinterpret_cast<const float4 *>(table + (int64_t)id * dim) + u)
                                 : make_float4(0.f, 0.f, 0.f, 0.f);
        ss = fmaf(x[k].x, x[k].x, ss);
        ss = fmaf(x[k].y, x[k].y, ss);
        ss = fmaf(x[k].z, x[k].z, ss);
        ss = fmaf(x[k].w, x[k].w, ss);
    }
    ss = kb::group_sum_warp<G>(ss);
    const float nr = sqrtf(ss), den = nr > eps ? nr : eps; /* as k_l2norm_fwd */
    float sdot = 0.f;
#pragma unroll
    for (int k = 0; k < UPL; k++) { /* x becomes the forward's output, x / den */
        x[k] = make_float4(x[k].x / den, x[k].y / den, x[k].z / den, x[k].w / den);
        sdot = fmaf(x[k].x, g[k].x, sdot);
        sdot = fmaf(x[k].y, g[k].y, sdot);
        sdot = fmaf(x[k].z, g[k].z, sdot);
        sdot = fmaf(x[k].w, g[k].w, sdot);
    }
    sdot = kb::group_sum_warp<G>(sdot);
    if (!ok)
        return;
    const bool big = nr > eps;
#pragma unroll
    for (int k = 0; k < UPL; k++) {
        const int u = lane + k * G;
        if (u >= n_units)
            continue;
        float4 *d = reinterpret_cast<float4 *>(table_grad + (int64_t)id * dim) + u;
        float4 o = *d;
        o.x += big ? (g[k].x - x[k].x * sdot) / nr : g[k].x / eps;
        o.y += big ? (g[k].y - x[k].y * sdot) / nr : g[k].y / eps;
        o.z += big ? (g[k].z - x[k].z * sdot) / nr : g[k].z / eps;
        o.w += big ? (g[k].w - x[k].w * sdot) / nr : g[k].w / eps;
        *d = o;
    }
}

/* Runs of at most SCATTER_CHUNK rows (the longer ones: combine_chunks_l2_kernel). */
template <int G, int UPL>
__global__ void __launch_bounds__(kb::THREADS)
    scatter_runs_l2_kernel(float *table_grad, const uint16_t *src, const float *table, const uint32_t *sorted_ids,
                           const int32_t *sorted_rows, const int32_t *run_start, const int32_t *n_runs_dev,
                           int64_t rows, int dim, int64_t n_ids, float eps)
{
    const int lane = threadIdx.x % G;
    const int64_t n_runs = *n_runs_dev;
    const int64_t groups = (int64_t)gridDim.x * (blockDim.x / G);
    const int n_units = dim / 4;
    const int64_t mine = (int64_t)blockIdx.x * (blockDim.x / G) + threadIdx.x / G;
    const int64_t warp_first = mine - (int64_t)((threadIdx.x % 32) / G);
    for (int64_t w = warp_first; w < n_runs; w += groups) { /* warp-uniform */
        const int64_t run = w + (mine - warp_first);
        bool ok = run < n_runs;
        int64_t begin = 0, end = 0;
        uint32_t id = 0;
        if (ok) {
            begin = run_start[run];
            end = run + 1 < n_runs ? (int64_t)run_start[run + 1] : rows;
            id = sorted_ids[begin];
            ok = (int64_t)id < n_ids && end - begin <= SCATTER_CHUNK;
        }
        float4 acc[UPL];
#pragma unroll
        for (int k = 0; k < UPL; k++) {
            const int u = lane + k * G;
            acc[k] = ok && u < n_units ? sum_rows_vec(src, sorted_rows, begin, end, dim, (int64_t)u * 4)
                                       : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        l2_bwd_add_row<G, UPL>(table_grad, table, id, acc, ok, lane, n_units, dim, eps);
    }
}

/* Runs longer than SCATTER_CHUNK rows: their chunk partials added in chunk order, then the same
 * epilogue. */
template <int G, int UPL>
__global__ void __launch_bounds__(kb::THREADS)
    combine_chunks_l2_kernel(float *table_grad, const float *partial, const float *table, const uint32_t *sorted_ids,
                             const int32_t *run_start, const int32_t *sub, const int32_t *sub_off,
                             const int32_t *n_runs_dev, int dim, int64_t n_ids, float eps)
{
    const int lane = threadIdx.x % G;
    const int64_t n_runs = *n_runs_dev;
    const int64_t groups = (int64_t)gridDim.x * (blockDim.x / G);
    const int n_units = dim / 4;
    const int64_t mine = (int64_t)blockIdx.x * (blockDim.x / G) + threadIdx.x / G;
    const int64_t warp_first = mine - (int64_t)((threadIdx.x % 32) / G);
    for (int64_t w = warp_first; w < n_runs; w += groups) {
        const int64_t r = w + (mine - warp_first);
        int32_t n_chunks = 0;
        uint32_t id = 0;
        if (r < n_runs) {
            n_chunks = sub[r];
            id = sorted_ids[run_start[r]];
        }
        const bool ok = n_chunks > 0 && (int64_t)id < n_ids;
        float4 acc[UPL];
#pragma unroll
        for (int k = 0; k < UPL; k++) {
            const int u = lane + k * G;
            acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (!ok || u >= n_units)
                continue;
            for (int32_t c = 0; c < n_chunks; c++) {
                const float4 t = *(reinterpret_cast<const float4 *>(partial + ((int64_t)sub_off[r] + c) * dim) + u);
                acc[k].x += t.x;
                acc[k].y += t.y;
                acc[k].z += t.z;
                acc[k].w += t.w;
            }
        }
        l2_bwd_add_row<G, UPL>(table_grad, table, id, acc, ok, lane, n_units, dim, eps);
    }
}

/* Scratch layout of a plan: five int32 arrays of max_rows entries (256-byte aligned), the run
 * count, then CUB's temporary storage. */
struct scatter_layout {
    size_t keys0, keys1, vals0, vals1, starts, n_runs, sub, sub_off, partial, partial_chunks, temp, temp_bytes, total;
};

/* Upper bound on the chunks of long runs: each has more than SCATTER_CHUNK rows. */
inline int64_t max_chunks_for(int64_t max_rows)
{
    return 2 * (max_rows / SCATTER_CHUNK) + 1;
}

inline size_t align256(size_t x)
{
    return (x + 255) & ~(size_t)255;
}

int end_bit_for(int64_t n_ids)
{
    int bits = 1;
    while (bits < 32 && ((uint64_t)(n_ids - 1) >> bits) != 0)
        bits++;
    return bits;
}

/* CUB temporary bytes for `rows` items: the larger of the sort's and the unique-by-key's. */
cudaError_t cub_temp_bytes(int64_t rows, int64_t n_ids, size_t *bytes)
{
    size_t sort_bytes = 0, uniq_bytes = 0;
    cub::DoubleBuffer<uint32_t> k(nullptr, nullptr);
    cub::DoubleBuffer<int32_t> v(nullptr, nullptr);
    cudaError_t e = cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, k, v, (int)rows, 0, end_bit_for(n_ids + 1));
    if (e != cudaSuccess)
        return e;
    e = cub::DeviceSelect::UniqueByKey(nullptr, uniq_bytes, (const uint32_t *)nullptr,
                                       thrust::counting_iterator<int32_t>(0), (uint32_t *)nullptr, (int32_t *)nullptr,
                                       (int32_t *)nullptr, (int)rows);
    if (e != cudaSuccess)
        return e;
    size_t scan_bytes = 0;
    e = cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, (const int32_t *)nullptr, (int32_t *)nullptr, (int)rows);
    if (e != cudaSuccess)
        return e;
    *bytes = sort_bytes > uniq_bytes ? sort_bytes : uniq_bytes;
    if (scan_bytes > *bytes)
        *bytes = scan_bytes;
    return cudaSuccess;
}

cudaError_t layout_of(int64_t max_rows, int64_t n_ids, int max_dim, scatter_layout *L)
{
    size_t arr = align256((size_t)max_rows * sizeof(int32_t));
    L->keys0 = 0;
    L->keys1 = L->keys0 + arr;
    L->vals0 = L->keys1 + arr;
    L->vals1 = L->vals0 + arr;
    L->starts = L->vals1 + arr;
    L->sub = L->starts + arr;
    L->sub_off = L->sub + arr;
    L->partial_chunks = (size_t)max_chunks_for(max_rows);
    L->partial = L->sub_off + arr;
    L->n_runs = L->partial + align256(L->partial_chunks * (size_t)max_dim * sizeof(float));
    L->temp = L->n_runs + 256;
    cudaError_t e = cub_temp_bytes(max_rows, n_ids, &L->temp_bytes);
    if (e != cudaSuccess)
        return e;
    L->total = L->temp + align256(L->temp_bytes);
    return cudaSuccess;
}

} /* namespace */

/* ---- launchers --------------------------------------------------------------------------------- */

extern "C" cudaError_t k_embed_fwd(float *out_f32, gp_bf16 *out_bf16, const float *item, const float *cate,
                                   const float *seg, const int32_t *tok_item, const int32_t *tok_cate,
                                   const int32_t *tok_seg, int64_t rows, int dim, cudaStream_t s)
{
    if (rows <= 0 || dim <= 0 || (!out_f32 && !out_bf16))
        return cudaSuccess;
    bool vec = dim % 4 == 0 && kb::aligned16(item) && kb::aligned16(cate) && kb::aligned16(seg) &&
               kb::aligned16(out_f32) && kb::aligned8(out_bf16);
    int64_t work = rows * ((dim + 3) / 4);
    embed_fwd_kernel<<<kb::grid_for(embed_fwd_kernel, work, kb::THREADS), kb::THREADS, 0, s>>>(
        out_f32, out_bf16, item, cate, seg, tok_item, tok_cate, tok_seg, rows, dim, vec);
    return cudaGetLastError();
}

/* A quad of table elements is one 16-byte (fp32) or 8-byte (bf16) load: the vector path needs
 * the table aligned to that. */
template <typename Tab>
static cudaError_t gather_rows(float *out_f32, uint16_t *out_bf16, const Tab *table, const int32_t *ids, int64_t rows,
                               int dim, cudaStream_t s)
{
    if (rows <= 0 || dim <= 0 || (!out_f32 && !out_bf16))
        return cudaSuccess;
    const bool table_vec = sizeof(Tab) == 4 ? kb::aligned16(table) : kb::aligned8(table);
    bool vec = dim % 4 == 0 && table_vec && kb::aligned16(out_f32) && kb::aligned8(out_bf16);
    int64_t work = rows * ((dim + 3) / 4);
    gather_rows_kernel<Tab><<<kb::grid_for(gather_rows_kernel<Tab>, work, kb::THREADS), kb::THREADS, 0, s>>>(
        out_f32, out_bf16, table, ids, rows, dim, vec);
    return cudaGetLastError();
}

extern "C" cudaError_t k_gather_rows(float *out_f32, gp_bf16 *out_bf16, const float *table, const int32_t *ids,
                                     int64_t rows, int dim, cudaStream_t s)
{
    return gather_rows(out_f32, out_bf16, table, ids, rows, dim, s);
}

extern "C" cudaError_t k_gather_rows_bf16(float *out_f32, gp_bf16 *out_bf16, const gp_bf16 *table, const int32_t *ids,
                                          int64_t rows, int dim, cudaStream_t s)
{
    return gather_rows(out_f32, out_bf16, table, ids, rows, dim, s);
}

extern "C" cudaError_t k_add_rows(float *dst, const float *src, const int32_t *dst_rows, int64_t rows, int dim,
                                  cudaStream_t s)
{
    if (rows <= 0 || dim <= 0)
        return cudaSuccess;
    bool vec = dim % 4 == 0 && kb::aligned16(dst) && kb::aligned16(src);
    int64_t work = rows * ((dim + 3) / 4);
    add_rows_kernel<<<kb::grid_for(add_rows_kernel, work, kb::THREADS), kb::THREADS, 0, s>>>(dst, src, dst_rows, rows,
                                                                                             dim, vec);
    return cudaGetLastError();
}

extern "C" cudaError_t k_scatter_plan_init(k_scatter_plan *p, int64_t max_rows, int64_t n_ids, int max_dim)
{
    if (!p || max_rows < 0 || max_rows > INT32_MAX || n_ids < 0 || n_ids >= ((int64_t)1 << 32) || max_dim < 0)
        return cudaErrorInvalidValue;
    p->max_rows = max_rows;
    p->n_ids = n_ids;
    p->max_dim = max_dim;
    p->scratch_bytes = 0;
    if (max_rows == 0 || n_ids == 0)
        return cudaSuccess;
    scatter_layout L;
    cudaError_t e = layout_of(max_rows, n_ids, max_dim, &L);
    if (e != cudaSuccess)
        return e;
    p->scratch_bytes = L.total;
    return cudaSuccess;
}

/* The sorted runs of one scatter: the pointers into the plan's scratch the final kernels read. */
struct scatter_runs {
    const uint32_t *sorted_ids;
    const int32_t *sorted_rows, *starts, *n_runs, *sub, *sub_off;
    float *partial;
    int64_t max_chunks;
};

/* Sort (id, row) pairs, find the runs of equal ids and, for the runs longer than SCATTER_CHUNK,
 * their chunk offsets: everything but the sums. */
static cudaError_t scatter_prepare(scatter_runs *out, const int32_t *ids, int64_t rows, int dim,
                                   const k_scatter_plan *p, void *scratch, cudaStream_t s)
{
    if (!p || rows > p->max_rows || p->n_ids <= 0 || !scratch || dim > p->max_dim)
        return cudaErrorInvalidValue;
    scatter_layout L;
    cudaError_t e = layout_of(p->max_rows, p->n_ids, p->max_dim, &L);
    if (e != cudaSuccess)
        return e;
    size_t need = 0;
    if ((e = cub_temp_bytes(rows, p->n_ids, &need)) != cudaSuccess)
        return e;
    if (L.total > p->scratch_bytes || need > L.temp_bytes)
        return cudaErrorInvalidValue;
    char *base = static_cast<char *>(scratch);
    uint32_t *keys0 = reinterpret_cast<uint32_t *>(base + L.keys0),
             *keys1 = reinterpret_cast<uint32_t *>(base + L.keys1);
    int32_t *vals0 = reinterpret_cast<int32_t *>(base + L.vals0), *vals1 = reinterpret_cast<int32_t *>(base + L.vals1);
    int32_t *starts = reinterpret_cast<int32_t *>(base + L.starts);
    int32_t *n_runs = reinterpret_cast<int32_t *>(base + L.n_runs);
    int32_t *sub = reinterpret_cast<int32_t *>(base + L.sub), *sub_off = reinterpret_cast<int32_t *>(base + L.sub_off);
    void *temp = base + L.temp;

    scatter_prep_kernel<<<kb::grid_for(scatter_prep_kernel, rows, kb::THREADS), kb::THREADS, 0, s>>>(keys0, vals0, ids,
                                                                                                     rows, p->n_ids);
    if ((e = cudaGetLastError()) != cudaSuccess)
        return e;
    cub::DoubleBuffer<uint32_t> keys(keys0, keys1);
    cub::DoubleBuffer<int32_t> vals(vals0, vals1);
    size_t temp_bytes = L.temp_bytes;
    /* keys are in [0, n_ids]: n_ids is the out-of-range rows' key */
    e = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, vals, (int)rows, 0, end_bit_for(p->n_ids + 1), s);
    if (e != cudaSuccess)
        return e;
    /* The unique ids themselves go to the idle key buffer; only the run starts are used. */
    uint32_t *uniq = keys.Current() == keys0 ? keys1 : keys0;
    temp_bytes = L.temp_bytes;
    e = cub::DeviceSelect::UniqueByKey(temp, temp_bytes, (const uint32_t *)keys.Current(),
                                       thrust::counting_iterator<int32_t>(0), uniq, starts, n_runs, (int)rows, s);
    if (e != cudaSuccess)
        return e;
    /* Long runs: count their chunks, scan the counts into offsets. */
    count_chunks_kernel<<<kb::grid_for(count_chunks_kernel, rows, kb::THREADS), kb::THREADS, 0, s>>>(sub, starts,
                                                                                                      n_runs, rows);
    if ((e = cudaGetLastError()) != cudaSuccess)
        return e;
    temp_bytes = L.temp_bytes;
    e = cub::DeviceScan::ExclusiveSum(temp, temp_bytes, sub, sub_off, (int)rows, s);
    if (e != cudaSuccess)
        return e;
    out->sorted_ids = keys.Current();
    out->sorted_rows = vals.Current();
    out->starts = starts;
    out->n_runs = n_runs;
    out->sub = sub;
    out->sub_off = sub_off;
    out->partial = reinterpret_cast<float *>(base + L.partial);
    out->max_chunks = (int64_t)L.partial_chunks;
    return cudaSuccess;
}

extern "C" cudaError_t k_scatter_add_rows(float *table_grad, const float *src, const int32_t *ids, int64_t rows,
                                          int dim, const uint8_t *freeze_mask, const k_scatter_plan *p, void *scratch,
                                          cudaStream_t s)
{
    if (rows <= 0 || dim <= 0)
        return cudaSuccess;
    scatter_runs R;
    cudaError_t e = scatter_prepare(&R, ids, rows, dim, p, scratch, s);
    if (e != cudaSuccess)
        return e;
    const bool vec = dim % 4 == 0 && kb::aligned16(table_grad) && kb::aligned16(src);
    const int n_units = vec ? dim / 4 : dim;
    const int64_t runs_max = rows, max_chunks = R.max_chunks;
#define SCATTER_LAUNCH(G)                                                                                              \
    do {                                                                                                               \
        chunk_sums_kernel<G, float>                                                                                    \
            <<<kb::grid_for(chunk_sums_kernel<G, float>, max_chunks, kb::THREADS / (G)), kb::THREADS, 0, s>>>(         \
                R.partial, src, R.sorted_rows, R.starts, R.sub, R.sub_off, R.n_runs, rows, dim, max_chunks, vec);     \
        combine_chunks_kernel<G><<<kb::grid_for(combine_chunks_kernel<G>, runs_max, kb::THREADS / (G)), kb::THREADS,   \
                                   0, s>>>(table_grad, R.partial, R.sorted_ids, R.starts, R.sub, R.sub_off, R.n_runs, \
                                           dim, p->n_ids, freeze_mask, vec);                                           \
        scatter_runs_kernel<G><<<kb::grid_for(scatter_runs_kernel<G>, runs_max, kb::THREADS / (G)), kb::THREADS, 0,    \
                                 s>>>(table_grad, src, R.sorted_ids, R.sorted_rows, R.starts, R.n_runs, rows, dim,      \
                                      p->n_ids, freeze_mask, vec);                                                      \
    } while (0)
    if (n_units <= 1)
        SCATTER_LAUNCH(1);
    else if (n_units <= 2)
        SCATTER_LAUNCH(2);
    else if (n_units <= 4)
        SCATTER_LAUNCH(4);
    else if (n_units <= 8)
        SCATTER_LAUNCH(8);
    else if (n_units <= 16)
        SCATTER_LAUNCH(16);
    else
        SCATTER_LAUNCH(32);
#undef SCATTER_LAUNCH
    return cudaGetLastError();
}

extern "C" int k_scatter_add_rows_l2bwd_supported(int dim)
{
    return dim >= 4 && dim % 4 == 0 && dim <= K_SCATTER_L2BWD_MAX_DIM;
}

extern "C" cudaError_t k_scatter_add_rows_l2bwd(float *table_grad, const gp_bf16 *src, const int32_t *ids,
                                                int64_t rows, int dim, const float *table, float eps,
                                                const k_scatter_plan *p, void *scratch, cudaStream_t s)
{
    if (rows <= 0)
        return cudaSuccess;
    if (!k_scatter_add_rows_l2bwd_supported(dim) || !kb::aligned16(table_grad) || !kb::aligned8(src) ||
        !kb::aligned16(table))
        return cudaErrorInvalidValue;
    scatter_runs R;
    cudaError_t e = scatter_prepare(&R, ids, rows, dim, p, scratch, s);
    if (e != cudaSuccess)
        return e;
    const int n_units = dim / 4;
    const int64_t runs_max = rows, max_chunks = R.max_chunks;
#define SCATTER_L2_LAUNCH(G, UPL)                                                                                      \
    do {                                                                                                               \
        chunk_sums_kernel<G, uint16_t>                                                                                 \
            <<<kb::grid_for(chunk_sums_kernel<G, uint16_t>, max_chunks, kb::THREADS / (G)), kb::THREADS, 0, s>>>(      \
                R.partial, src, R.sorted_rows, R.starts, R.sub, R.sub_off, R.n_runs, rows, dim, max_chunks, true);    \
        combine_chunks_l2_kernel<G, UPL>                                                                               \
            <<<kb::grid_for(combine_chunks_l2_kernel<G, UPL>, runs_max, kb::THREADS / (G)), kb::THREADS, 0, s>>>(      \
                table_grad, R.partial, table, R.sorted_ids, R.starts, R.sub, R.sub_off, R.n_runs, dim, p->n_ids, eps); \
        scatter_runs_l2_kernel<G, UPL>                                                                                 \
            <<<kb::grid_for(scatter_runs_l2_kernel<G, UPL>, runs_max, kb::THREADS / (G)), kb::THREADS, 0, s>>>(        \
                table_grad, src, table, R.sorted_ids, R.sorted_rows, R.starts, R.n_runs, rows, dim, p->n_ids, eps);    \
    } while (0)
    if (n_units <= 1)
        SCATTER_L2_LAUNCH(1, 1);
    else if (n_units <= 2)
        SCATTER_L2_LAUNCH(2, 1);
    else if (n_units <= 4)
        SCATTER_L2_LAUNCH(4, 1);
    else if (n_units <= 8)
        SCATTER_L2_LAUNCH(8, 1);
    else if (n_units <= 16)
        SCATTER_L2_LAUNCH(16, 1);
    else if (n_units <= 32)
        SCATTER_L2_LAUNCH(32, 1);
    else if (n_units <= 64)
        SCATTER_L2_LAUNCH(32, 2);
    else if (n_units <= 128)
        SCATTER_L2_LAUNCH(32, 4);
    else
        SCATTER_L2_LAUNCH(32, 8);
#undef SCATTER_L2_LAUNCH
    return cudaGetLastError();
}
