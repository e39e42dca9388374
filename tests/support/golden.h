/* golden: loading the official model's golden vectors (the shared/golden safetensors files) into our
 * model config, parameters and batch; shared by the CPU tests and the GPU tests. */
#ifndef GPSDREC_TESTS_GOLDEN_H
#define GPSDREC_TESTS_GOLDEN_H

#include "batch.h"
#include "model.h"
#include "safetensors.h"

typedef struct {
    st_file file;
    model_layout layout;
    float *sparse, *dense;           /* parameters */
    float *grad_sparse, *grad_dense; /* expected gradients */
    batch x;
    double loss, item_loss, cate_loss, rank_loss;
    float *rank_outputs; /* [B] */
} golden_case;

extern const char *const golden_files[];
extern const int golden_n_files;

/* Loads shared/golden/<name>; returns 0 or -1 with a message. */
int golden_load(golden_case *g, const char *name, gp_err *e);
/* The same for a file in the golden format anywhere (e.g. a tools/parity_dump output). */
int golden_load_path(golden_case *g, const char *path, gp_err *e);
void golden_free(golden_case *g);

/* max |a - b| over n, and max |b| (the scale the golden README's tolerance is relative to). */
void golden_max_diff(const float *a, const float *b, int64_t n, double *max_diff, double *max_ref);

#endif
