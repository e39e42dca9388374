/* gpu_check: helpers for the GPU tests (tests/gpu/test_*.c), which compare every CUDA kernel
 * and the whole CUDA backend against the CPU reference on fresh random inputs. */
#ifndef GPSDREC_TESTS_GPU_CHECK_H
#define GPSDREC_TESTS_GPU_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "rng.h"
#include "test.h"

/* Fail the test (and return from it) when a CUDA call does not succeed. */
#define CUDA_REQUIRE(call)                                                                              \
    do {                                                                                                \
        cudaError_t _e = (call);                                                                        \
        if (_e != cudaSuccess) {                                                                        \
            test_failure(__FILE__, __LINE__, "%s failed: %s", #call, cudaGetErrorString(_e));           \
            return;                                                                                     \
        }                                                                                               \
    } while (0)

/* Launch, then synchronise so an asynchronous fault is reported at this line. */
#define KERNEL_REQUIRE(call)                                                                            \
    do {                                                                                                \
        cudaError_t _e = (call);                                                                        \
        if (_e == cudaSuccess)                                                                          \
            _e = cudaDeviceSynchronize();                                                               \
        if (_e != cudaSuccess) {                                                                        \
            test_failure(__FILE__, __LINE__, "%s failed: %s", #call, cudaGetErrorString(_e));           \
            return;                                                                                     \
        }                                                                                               \
    } while (0)

static inline void *gpu_alloc(size_t bytes)
{
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess)
        return NULL;
    /* Poison: 0xFF bytes are NaN in fp32 and bf16, so an element never written shows up. */
    cudaMemset(p, 0xFF, bytes ? bytes : 1);
    return p;
}

static inline void *gpu_upload(const void *host, size_t bytes)
{
    void *p = gpu_alloc(bytes);
    if (p)
        cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
    return p;
}

static inline void gpu_download(void *host, const void *dev, size_t bytes)
{
    cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost);
}

static inline float bf16_to_float(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Round through bf16 (what a bf16 tensor can hold). */
static inline float bf16_round(float f) { return bf16_to_float(float_to_bf16(f)); }

static inline void round_bf16(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = bf16_round(x[i]);
}

/* A bf16 device array's values as floats (malloc'd). */
static inline float *download_bf16(const uint16_t *dev, int64_t n)
{
    const size_t cnt = (size_t)(n > 0 ? n : 1);
    uint16_t *b = malloc(cnt * sizeof(uint16_t));
    float *h = malloc(cnt * sizeof(float));
    gpu_download(b, dev, (size_t)n * sizeof(uint16_t));
    for (int64_t i = 0; i < n; i++)
        h[i] = bf16_to_float(b[i]);
    free(b);
    return h;
}

static inline void fill_normal(float *x, int64_t n, float std, gp_rng *r)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(std * gp_rng_normal(r));
}

/* ||a - b|| / ||b|| over n; NaN anywhere gives +inf. */
static inline double rel_error(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        if (isnan(d))
            return INFINITY;
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Check rel_error(got, want) <= tol with a message naming what. */
#define CHECK_REL(got, want, n, tol, what)                                                               \
    do {                                                                                                 \
        double _r = rel_error((got), (want), (n));                                                       \
        if (!(_r <= (tol)))                                                                              \
            test_failure(__FILE__, __LINE__, "%s: relative error %.3g > %.3g", (what), _r, (double)(tol)); \
    } while (0)

/* True when a CUDA device is usable; GPU tests call REQUIRE(gpu_present()). */
static inline int gpu_present(void)
{
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#endif
