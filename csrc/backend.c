#include "backend.h"

#include <stdlib.h>

#include "settings.h"

#ifdef GPSDREC_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

backend_opts backend_opts_from_settings(const gp_settings *s, int max_batch)
{
    backend_opts o = {.max_batch = max_batch,
                      .freeze_sparse = s->freeze_sparse,
                      .threads = (int)s->threads,
                      .dist_item_grads = s->dist_item_grads,
                      .attention_kernel = s->attention_kernel,
                      .recompute_blocks = s->recompute_blocks,
                      .recompute_ffn = s->recompute_ffn,
                      .gemm_autotune = s->gemm_autotune,
                      .sampled_softmax_kernel = s->sampled_softmax_kernel};
    return o;
}

int backend_cuda_compiled(void)
{
#ifdef GPSDREC_WITH_CUDA
    return 1;
#else
    return 0;
#endif
}

int backend_cuda_device_count(void)
{
#ifdef GPSDREC_WITH_CUDA
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n;
#else
    return 0;
#endif
}

int backend_cuda_available(void) { return backend_cuda_device_count() > 0; }

backend *backend_create(int device, const model_layout *layout, const backend_opts *opts, gp_err *e)
{
    if (device == DEVICE_CUDA && !backend_cuda_compiled())
        return gp_fail(e, "device = cuda, but this gpsdrec was built without the CUDA backend (nvcc was not found "
                          "at build time)"),
               NULL;
    if (device == DEVICE_CUDA && !backend_cuda_available())
        return gp_fail(e, "device = cuda, but no CUDA GPU is visible (cudaGetDeviceCount found none)"), NULL;
#ifdef GPSDREC_WITH_CUDA
    if (device == DEVICE_CUDA || (device == DEVICE_AUTO && backend_cuda_available()))
        return backend_cuda_create(layout, opts, e);
#endif
    return backend_cpu_create(layout, opts, e);
}

void backend_destroy(backend *b)
{
    if (b && b->destroy)
        b->destroy(b);
}
