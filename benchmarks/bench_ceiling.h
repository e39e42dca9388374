/* bench_ceiling: the ceilings every benchmark of this directory is judged against, measured
 * on the device in the same process.
 *
 * - Copy: cudaMemcpyAsync device to device of `bytes` (>= 2 GiB in bench_kernels), bandwidth
 *   counted as read + write (2 * bytes / time). The source holds random data.
 * - GEMM: C = A . B^T through csrc/cuda/gemm.c (cuBLASLt, the heuristic's first algorithm, the
 *   path the CUDA backend itself uses), n x n x n, bf16 A, B and C, fp32 accumulation, random
 *   A and B; TFLOP/s = 2 n^3 / time.
 * - Host to device: cudaMemcpyAsync of `bytes` from pinned host memory (random data), GB/s =
 *   bytes / time: the link the CUDA backend's per-step metadata copy (batch ids, labels and
 *   negatives: about 20 MB at L4H64A4 pretraining) crosses while the GPU waits for it.
 * All: warm-up runs first, then `reps` runs each timed with CUDA events, the median reported
 * (min and max too). Buffers are allocated and freed inside the call. In a build without CUDA
 * both return -1 with a message. */
#ifndef GPSDREC_BENCH_CEILING_H
#define GPSDREC_BENCH_CEILING_H

#include <stddef.h>

#include "util.h"

typedef struct {
    double median, min, max; /* GB/s or TFLOP/s */
    double median_ms;
    int reps;
} bench_ceiling;

int bench_copy_ceiling(size_t bytes, int reps, bench_ceiling *out, gp_err *e);
int bench_h2d_ceiling(size_t bytes, int reps, bench_ceiling *out, gp_err *e);
int bench_gemm_ceiling(int n, int reps, bench_ceiling *out, gp_err *e);

#endif
