/* cuda_util: checked CUDA / cuBLAS calls for the host code of the CUDA backend.
 *
 * CU(call) and CUBLAS(call) evaluate a call; on failure they write a message naming the call,
 * the error string and the source line into the gp_err `e` in scope and `goto fail`, so every
 * function has exactly one cleanup path. */
#ifndef GPSDREC_CUDA_UTIL_H
#define GPSDREC_CUDA_UTIL_H

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "util.h"

const char *gp_cublas_status_name(cublasStatus_t s);

#define CU(call)                                                                                          \
    do {                                                                                                  \
        cudaError_t _ce = (call);                                                                         \
        if (_ce != cudaSuccess) {                                                                         \
            gp_fail(e, "%s (%s:%d): %s", #call, __FILE__, __LINE__, cudaGetErrorString(_ce));             \
            goto fail;                                                                                    \
        }                                                                                                 \
    } while (0)

#define CUBLAS(call)                                                                                      \
    do {                                                                                                  \
        cublasStatus_t _bs = (call);                                                                      \
        if (_bs != CUBLAS_STATUS_SUCCESS) {                                                               \
            gp_fail(e, "%s (%s:%d): %s", #call, __FILE__, __LINE__, gp_cublas_status_name(_bs));          \
            goto fail;                                                                                    \
        }                                                                                                 \
    } while (0)

#endif
