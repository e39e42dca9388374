#include "checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "settings.h"

int checkpoint_save_model(const char *path, const model_layout *l, const float *sparse, const float *dense,
                          const char *settings_text, const char *stage, int64_t step, gp_err *e)
{
    st_out_tensor *t = gp_xcalloc((size_t)l->n_tensors, sizeof *t);
    for (int i = 0; i < l->n_tensors; i++) {
        const tensor_info *ti = &l->tensors[i];
        t[i].name = ti->name;
        t[i].dtype = ST_F32;
        t[i].ndim = ti->ndim;
        t[i].shape[0] = ti->shape[0];
        t[i].shape[1] = ti->shape[1];
        t[i].data = (ti->arena == ARENA_SPARSE ? sparse : dense) + ti->offset;
    }
    char step_text[32];
    snprintf(step_text, sizeof step_text, "%lld", (long long)step);
    const char *meta[] = {"format", "gpsdrec", "stage", stage, "step", step_text, "settings", settings_text ? settings_text : "",
                          NULL};
    int rc = st_write(path, t, l->n_tensors, meta, e);
    free(t);
    return rc;
}

static float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int copy_tensor(const st_file *f, const st_tensor *st, const tensor_info *ti, float *dst, gp_err *e)
{
    int same = st->ndim == ti->ndim;
    for (int d = 0; same && d < ti->ndim; d++)
        same = st->shape[d] == ti->shape[d];
    if (!same) {
        char have[96] = "", want[96] = "";
        for (int d = 0; d < st->ndim && d < 4; d++)
            snprintf(have + strlen(have), sizeof have - strlen(have), d ? ", %lld" : "%lld", (long long)st->shape[d]);
        for (int d = 0; d < ti->ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), d ? ", %lld" : "%lld", (long long)ti->shape[d]);
        return gp_fail(e, "%s: %s has shape [%s] but this model needs [%s] (check dim, embedding_dim, n_layers and the "
                          "dataset's vocabulary)",
                       f->path, ti->name, have, want);
    }
    if (st->dtype == ST_F32) {
        memcpy(dst, st->data, (size_t)ti->numel * sizeof(float));
    } else if (st->dtype == ST_BF16) {
        const uint16_t *src = st->data;
        for (int64_t i = 0; i < ti->numel; i++)
            dst[i] = bf16_to_f32(src[i]);
    } else {
        return gp_fail(e, "%s: %s is %s; only F32 and BF16 checkpoints can be loaded", f->path, ti->name,
                       st_dtype_name(st->dtype));
    }
    return 0;
}

int checkpoint_load_params(const char *path, const model_layout *l, float *sparse, float *dense, int transfer,
                           int *n_loaded, char *missing, size_t missing_len, gp_err *e)
{
    st_file f;
    if (st_open(&f, path, e) != 0)
        return -1;
    int loaded = 0, rc = 0;
    if (missing && missing_len)
        missing[0] = '\0';
    for (int i = 0; i < l->n_tensors && rc == 0; i++) {
        const tensor_info *ti = &l->tensors[i];
        if (transfer == TRANSFER_SPARSE && ti->arena != ARENA_SPARSE)
            continue;
        const st_tensor *st = st_find(&f, ti->name);
        if (!st) {
            if (ti->arena == ARENA_SPARSE)
                rc = gp_fail(e, "%s: has no %s, nothing to transfer", path, ti->name);
            else if (missing && strlen(missing) + strlen(ti->name) + 3 < missing_len)
                snprintf(missing + strlen(missing), missing_len - strlen(missing), "%s%s", missing[0] ? ", " : "",
                         ti->name);
            continue;
        }
        rc = copy_tensor(&f, st, ti, (ti->arena == ARENA_SPARSE ? sparse : dense) + ti->offset, e);
        loaded += rc == 0;
    }
    st_close(&f);
    if (n_loaded)
        *n_loaded = loaded;
    return rc;
}
