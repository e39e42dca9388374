/* bench_harness: measuring one kernel launch properly, for bench_kernels.
 *
 * Contract
 * - Every CUDA, cuBLAS and launcher call of a benchmark goes through CK() / bk_gemm(); a failure
 *   prints the call, the error and the source line and exits with status 1 (a benchmark with a
 *   failed call has no result worth keeping).
 * - Inputs are fresh random data: a pool of N(0,1) values drawn once with the project's rng.h
 *   streams; each buffer is filled from the pool at a new offset (so input sets differ) and
 *   transformed as asked; ids are drawn per buffer. Outputs are poisoned with 0xFF bytes (NaN
 *   in fp32 and bf16) when allocated, and a sample of an output can be checked for NaN after
 *   the runs (bk_finite_*: a kernel that skipped an element shows up).
 * - bk_time(fn, arg, n_sets): fn(arg, set) enqueues one call on BK.s using input set `set`.
 *   Warm-up: every set once, then three single timed calls to size a batch of k calls (k such
 *   that a batch takes >= 100 us, k <= 16). Each of BK.reps repeats: a 1 GiB device memset
 *   (evicts L2, and keeps the device busy while the host enqueues the batch, so launch latency
 *   of the host is not in the figure), CUDA event, k calls rotating over the sets, CUDA event;
 *   time per call = batch time / k. The median, min and max over the repeats are reported.
 * - bk_sets(bytes): how many input sets to rotate among so that their data exceed twice the
 *   L2 (at most 16): a memory-bound kernel then streams from DRAM in every call of a batch.
 * - bk_report: one aligned line on stdout and one JSON object per line in BK.json. Bandwidth
 *   is min_bytes / time (the fewest bytes the job must move: each input read once, each output
 *   written once), against the copy ceiling; FLOP rate against the GEMM ceiling. A row whose
 *   variant is not "ours" is an alternative and is also given as a ratio to the latest "ours"
 *   row of the same group and shape.
 * - Device allocations made through bk_alloc/bk_rand_* are freed together by bk_free_all().
 */
#ifndef GPSDREC_BENCH_HARNESS_H
#define GPSDREC_BENCH_HARNESS_H

#include <stdint.h>
#include <stdio.h>

#include <cuda_runtime_api.h>

#include "cuda/gemm.h"
#include "kernels.h"
#include "util.h"

typedef struct {
    cudaStream_t s;
    gemm_ctx *gemm;
    FILE *json;
    size_t l2_bytes;
    int sm_count;
    double copy_gbps, gemm_tflops; /* the ceilings measured in this run */
    int reps;
    const char *only; /* run only groups whose name contains this (NULL: all) */
    double t0;        /* start of the run, for progress lines */
    void *flush;
    size_t flush_bytes;
} bk_state;

extern bk_state BK;

void bk_die(const char *what, const char *file, int line, const char *msg) __attribute__((noreturn));
#define CK(call)                                                                                          \
    do {                                                                                                  \
        cudaError_t _ce = (call);                                                                         \
        if (_ce == cudaSuccess)                                                                           \
            _ce = cudaGetLastError();                                                                     \
        if (_ce != cudaSuccess)                                                                           \
            bk_die(#call, __FILE__, __LINE__, cudaGetErrorString(_ce));                                   \
    } while (0)

/* Sets up BK (stream, cuBLASLt, the pool, the flush buffer); json may be NULL. */
void bk_init(FILE *json, int reps, const char *only);
void bk_shutdown(void);
/* Whether group `g` is selected by --only. */
int bk_want(const char *g);
/* A progress line: "[elapsed s] text". */
void bk_progress(const char *text);

/* ---- buffers ---- */
void *bk_alloc(size_t bytes); /* poisoned */
float *bk_rand_f32(int64_t n, float scale);           /* N(0, scale^2) */
float *bk_rand_f32_pos(int64_t n, float lo, float hi); /* uniform-ish in [lo, hi): |N(0,1)| folded */
gp_bf16 *bk_rand_bf16(int64_t n, float scale);
/* Host ids uniform in [lo, hi) (malloc'd; the caller frees) and their upload. */
int32_t *bk_host_ids(int64_t n, int64_t lo, int64_t hi);
void *bk_upload(const void *host, size_t bytes);
int32_t *bk_rand_ids(int64_t n, int64_t lo, int64_t hi);
/* The number of distinct values among ids in [0, range). */
int64_t bk_distinct(const int32_t *ids, int64_t n, int64_t range);
void bk_free_all(void);
/* 1 when the first min(n, 4M) elements hold no NaN (poison that was never overwritten). */
int bk_finite_f32(const float *dev, int64_t n);
int bk_finite_bf16(const gp_bf16 *dev, int64_t n);

/* ---- timing and reporting ---- */
typedef void (*bk_launch_fn)(void *arg, int set);
typedef struct {
    double med_us, min_us, max_us;
    int reps, per_batch, sets;
} bk_timing;

int bk_sets(double bytes_per_set);
bk_timing bk_time(bk_launch_fn fn, void *arg, int n_sets);

typedef struct {
    const char *group;   /* the job, e.g. "residual_rmsnorm_fwd" */
    const char *shape;   /* e.g. "102912x64" */
    const char *variant; /* "ours" or what the alternative is */
    const char *impl;    /* the launchers or library calls timed */
    double min_bytes;    /* fewest bytes the job must move (0: not a memory-bound figure) */
    double moved_bytes;  /* bytes this implementation must move at least (0: = min_bytes) */
    double flops;        /* useful FLOPs (0: none reported) */
    double set_bytes;    /* device bytes of one input set, for the L2 note */
    const char *note;
} bk_meas;

void bk_report(const bk_meas *m, const bk_timing *t, int finite);
/* An alternative that is not run: its time is modeled as a lower bound, moved_bytes (or
 * min_bytes) at the copy ceiling, or flops at the GEMM ceiling when that is longer. */
void bk_report_modeled(const bk_meas *m, const char *how);
void bk_table_header(void);

/* C = op(A) op(B) through csrc/cuda/gemm.c, dying on failure; bk_gemm_try returns -1 with
 * the message instead (for an alternative that cuBLASLt may not support at that shape: try it
 * once, and skip the alternative rather than end the run). */
void bk_gemm(const gemm_args *a);
int bk_gemm_try(const gemm_args *a, gp_err *e);
/* A row saying an alternative was skipped, and why. */
void bk_report_skipped(const bk_meas *m, const char *why);

#endif
