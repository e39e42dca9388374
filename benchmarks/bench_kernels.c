/* bench_kernels: a microbenchmark of every hand-written kernel of kernels/kernels.h at the shapes
 * of the paper's model sizes, against ceilings measured first in the same run, and against the
 * simplest alternative where one exists (cuBLASLt, or an unfused sequence of existing kernels;
 * alternatives that nothing here implements are modeled as lower bounds and marked so).
 *
 * usage: bench_kernels [--json FILE] [--reps N] [--only SUBSTRING] [--copy-gib N]
 *   --json   append one JSON object per line: the two ceilings ("kind":"ceiling"), then one
 *            per measurement ("kind":"kernel"; fields in bench_harness.c emit())
 *   --reps   timed repeats per measurement (default 25, at least 20 recommended)
 *   --only   run only the groups whose name contains SUBSTRING (e.g. attention, rmsnorm)
 * A short aligned table goes to stdout with progress lines ("[elapsed s] ...").
 *
 * Ceilings: a device-to-device cudaMemcpyAsync of --copy-gib GiB (default 2; read + write
 * counted), and a bf16 8192 x 8192 x 8192 GEMM through csrc/cuda/gemm.c (cuBLASLt, fp32
 * accumulation), both on random data, median of their repeats (bench_ceiling.h). Timing of a
 * kernel: bench_harness.h (CUDA events, L2 flushed before each batch, input sets rotated so
 * their data exceed twice the L2, median of the repeats). Takes about 30-60 s on an H200.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_cases.h"
#include "bench_ceiling.h"
#include "bench_harness.h"

static void ceiling_json(FILE *f, const char *name, const char *unit, const bench_ceiling *c, const char *how,
                         double size)
{
    if (!f)
        return;
    fprintf(f,
            "{\"kind\":\"ceiling\",\"name\":\"%s\",\"unit\":\"%s\",\"median\":%.2f,\"min\":%.2f,\"max\":%.2f,"
            "\"median_ms\":%.4f,\"reps\":%d,\"size\":%.0f,\"how\":\"%s\"}\n",
            name, unit, c->median, c->min, c->max, c->median_ms, c->reps, size, how);
    fflush(f);
}

int main(int argc, char **argv)
{
    const char *json_path = NULL, *only = NULL;
    int reps = 25;
    double copy_gib = 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
            json_path = argv[++i];
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            only = argv[++i];
        else if (strcmp(argv[i], "--copy-gib") == 0 && i + 1 < argc)
            copy_gib = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_kernels [--json FILE] [--reps N] [--only SUBSTRING] [--copy-gib N]\n");
            return 2;
        }
    }
    if (reps < 3 || copy_gib <= 0) {
        fprintf(stderr, "bench_kernels: --reps must be >= 3 and --copy-gib > 0\n");
        return 2;
    }
    FILE *json = NULL;
    if (json_path && !(json = fopen(json_path, "a"))) {
        fprintf(stderr, "bench_kernels: cannot open %s\n", json_path);
        return 1;
    }
    bk_init(json, reps, only);
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("bench_kernels on %s: %d SMs, L2 %.0f MB, %.1f GB of memory; %d timed repeats per measurement\n", prop.name,
           prop.multiProcessorCount, prop.l2CacheSize / 1e6, prop.totalGlobalMem / 1e9, reps);
    bk_progress("ceilings");
    gp_err e = {{0}};
    bench_ceiling copy, gemm, h2d;
    size_t copy_bytes = (size_t)(copy_gib * (double)(1ull << 30));
    /* 20 MiB: the size of the L4H64A4 pretraining step's metadata copy */
    const size_t h2d_bytes = (size_t)20 << 20;
    if (bench_copy_ceiling(copy_bytes, 20, &copy, &e) != 0 || bench_gemm_ceiling(8192, 20, &gemm, &e) != 0 ||
        bench_h2d_ceiling(h2d_bytes, 20, &h2d, &e) != 0) {
        fprintf(stderr, "bench_kernels: %s\n", e.msg);
        return 1;
    }
    BK.copy_gbps = copy.median;
    BK.gemm_tflops = gemm.median;
    printf("copy ceiling: %.0f GB/s (device-to-device cudaMemcpyAsync of %.1f GiB, read + write counted; "
           "min %.0f max %.0f)\n",
           copy.median, copy_gib, copy.min, copy.max);
    printf("GEMM ceiling: %.1f TFLOP/s (bf16 8192^3 through cuBLASLt, fp32 accumulation; min %.1f max %.1f)\n",
           gemm.median, gemm.min, gemm.max);
    printf("host-to-device: %.1f GB/s (pinned cudaMemcpyAsync of %.0f MiB: %.3f ms; min %.1f max %.1f)\n", h2d.median,
           (double)h2d_bytes / (1 << 20), h2d.median_ms, h2d.min, h2d.max);
    ceiling_json(json, "h2d_pinned", "GB/s", &h2d, "cudaMemcpyAsync pinned host to device, bytes / time",
                 (double)h2d_bytes);
    ceiling_json(json, "copy", "GB/s", &copy, "cudaMemcpyAsync device to device, 2 x bytes / time", (double)copy_bytes);
    ceiling_json(json, "gemm_bf16", "TFLOP/s", &gemm, "cuBLASLt via csrc/cuda/gemm.c, bf16 in/out, fp32 accumulate, 2n^3 / time",
                 8192);
    bk_table_header();
    bk_cases_rows();
    bk_cases_gather();
    bk_cases_attn();
    bk_cases_misc();
    bk_cases_gemm();
    bk_shutdown();
    bk_progress("done");
    if (json)
        fclose(json);
    return 0;
}
