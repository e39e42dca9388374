#include "run_state.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "json.h"
#include "safetensors.h"
#include "settings.h"

#define STEP_PREFIX "step_"

/* rm -r of a checkpoint directory (flat: files only). */
static void remove_dir(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *ent;
        while ((ent = readdir(d))) {
            if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0)
                continue;
            char *p = gp_path_join(path, ent->d_name);
            unlink(p);
            free(p);
        }
        closedir(d);
    }
    rmdir(path);
}

/* Step number of a complete checkpoint directory name, or -1. */
static int64_t step_of(const char *name)
{
    size_t n = strlen(STEP_PREFIX);
    if (strncmp(name, STEP_PREFIX, n) != 0)
        return -1;
    int64_t v;
    return gp_parse_i64(name + n, &v) == 0 && v >= 0 ? v : -1;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Steps of the complete checkpoints under dir, ascending; returns the count. */
static int list_steps(const char *dir, int64_t **steps)
{
    *steps = NULL;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0, cap = 0;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        int64_t s = step_of(ent->d_name);
        if (s < 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            *steps = gp_xrealloc(*steps, (size_t)cap * sizeof **steps);
        }
        (*steps)[n++] = s;
    }
    closedir(d);
    if (n)
        qsort(*steps, (size_t)n, sizeof **steps, cmp_i64);
    return n;
}

int run_state_latest(const char *dir, char *path, size_t len)
{
    int64_t *steps;
    int n = list_steps(dir, &steps);
    if (n == 0)
        return 0;
    snprintf(path, len, "%s/%s%lld", dir, STEP_PREFIX, (long long)steps[n - 1]);
    free(steps);
    return 1;
}

static int write_state_json(const char *path, const run_state *st, gp_err *e)
{
    char buf[2048];
    int n = snprintf(buf, sizeof buf,
                     "{\"format\":\"gpsdrec run state\",\"version\":1,\"step\":%lld,\"epoch\":%lld,\"epoch_step\":%lld,"
                     "\"micro\":%lld,\"total\":%lld,\"acc_loss\":%.17g,\"acc_item\":%.17g,\"acc_cate\":%.17g,"
                     "\"acc_rank\":%.17g,\"acc_norm\":%.17g,\"acc_steps\":%lld,\"samples_interval\":%lld,"
                     "\"interval_n\":%lld,\"data_crc\":%u}\n",
                     (long long)st->step, (long long)st->epoch, (long long)st->epoch_step, (long long)st->micro,
                     (long long)st->total, st->acc_loss, st->acc_item, st->acc_cate, st->acc_rank, st->acc_norm,
                     (long long)st->acc_steps, (long long)st->samples_interval, (long long)st->interval_n,
                     (unsigned)st->data_crc);
    return gp_write_atomic(path, buf, (size_t)n, e);
}

int run_state_save(const char *dir, const model_layout *l, backend *b, const run_state *st, const float *interval_prob,
                   const int32_t *interval_label, const char *settings_text, const char *stage, int keep,
                   char *path_out, size_t path_len, gp_err *e)
{
    int rc = -1;
    char final_path[4096], tmp[4200];
    snprintf(final_path, sizeof final_path, "%s/%s%lld", dir, STEP_PREFIX, (long long)st->step);
    snprintf(tmp, sizeof tmp, "%s.tmp.%lld", final_path, (long long)getpid());
    float *sparse = NULL, *dense = NULL, *ms = NULL, *vs = NULL, *md = NULL, *vd = NULL;
    st_out_tensor *t = NULL;
    char **names = NULL;
    int n_names = 0;
    if (gp_mkdirs(dir, e) != 0)
        return -1;
    remove_dir(tmp);
    if (mkdir(tmp, 0777) != 0)
        return gp_fail(e, "%s: cannot create checkpoint directory: %s", tmp, strerror(errno));
    const size_t ns = (size_t)l->sparse_numel, nd = (size_t)l->dense_numel;
    const int frozen = b->opts.freeze_sparse;
    if (!(sparse = gp_alloc_or_fail(ns * 4, "checkpoint item table", e)) ||
        !(dense = gp_alloc_or_fail(nd * 4, "checkpoint parameters", e)) ||
        !(md = gp_alloc_or_fail(nd * 4, "checkpoint AdamW state", e)) ||
        !(vd = gp_alloc_or_fail(nd * 4, "checkpoint AdamW state", e)) ||
        (!frozen && !(ms = gp_alloc_or_fail(ns * 4, "checkpoint AdamW state", e))) ||
        (!frozen && !(vs = gp_alloc_or_fail(ns * 4, "checkpoint AdamW state", e))))
        goto done;
    if (b->get_params(b, sparse, dense, e) != 0 || b->get_optim_state(b, ms, vs, md, vd, e) != 0)
        goto done;
    char *p = gp_path_join(tmp, "model.safetensors");
    int r = checkpoint_save_model(p, l, sparse, dense, settings_text, stage, st->step, e);
    free(p);
    if (r != 0)
        goto done;
    t = gp_xcalloc((size_t)2 * l->n_tensors + 2, sizeof *t);
    names = gp_xcalloc((size_t)2 * l->n_tensors, sizeof *names);
    int nt = 0;
    for (int i = 0; i < l->n_tensors; i++) {
        if (!model_tensor_trained(l, i, frozen))
            continue;
        const tensor_info *ti = &l->tensors[i];
        int sp = ti->arena == ARENA_SPARSE;
        for (int k = 0; k < 2; k++) {
            size_t len = strlen(ti->name) + 16;
            names[n_names] = gp_xmalloc(len);
            snprintf(names[n_names], len, "%s.%s", ti->name, k ? "exp_avg_sq" : "exp_avg");
            t[nt].name = names[n_names++];
            t[nt].dtype = ST_F32;
            t[nt].ndim = ti->ndim;
            t[nt].shape[0] = ti->shape[0];
            t[nt].shape[1] = ti->shape[1];
            t[nt].data = (k ? (sp ? vs : vd) : (sp ? ms : md)) + ti->offset;
            nt++;
        }
    }
    t[nt++] = (st_out_tensor){.name = "interval.prob", .dtype = ST_F32, .ndim = 1, .shape = {st->interval_n},
                              .data = interval_prob};
    t[nt++] = (st_out_tensor){.name = "interval.label", .dtype = ST_I32, .ndim = 1, .shape = {st->interval_n},
                              .data = interval_label};
    p = gp_path_join(tmp, "optim.safetensors");
    const char *meta[] = {"format", "gpsdrec optimizer state", NULL};
    r = st_write(p, t, nt, meta, e);
    free(p);
    if (r != 0)
        goto done;
    p = gp_path_join(tmp, "state.json");
    r = write_state_json(p, st, e);
    free(p);
    if (r != 0)
        goto done;
    remove_dir(final_path); /* a checkpoint of the same step from an earlier attempt */
    if (rename(tmp, final_path) != 0) {
        gp_fail(e, "%s: cannot rename the checkpoint into place: %s", final_path, strerror(errno));
        goto done;
    }
    int64_t *steps;
    int n = list_steps(dir, &steps);
    for (int i = 0; i + keep < n; i++) {
        char old[4096];
        snprintf(old, sizeof old, "%s/%s%lld", dir, STEP_PREFIX, (long long)steps[i]);
        remove_dir(old);
    }
    free(steps);
    if (path_out)
        snprintf(path_out, path_len, "%s", final_path);
    rc = 0;
done:
    if (rc != 0)
        remove_dir(tmp);
    for (int i = 0; i < n_names; i++)
        free(names[i]);
    free(names);
    free(t);
    gp_free_aligned(sparse);
    gp_free_aligned(dense);
    gp_free_aligned(ms);
    gp_free_aligned(vs);
    gp_free_aligned(md);
    gp_free_aligned(vd);
    return rc;
}

static int json_i64_field(const json_value *root, const char *key, int64_t *out, const char *path, gp_err *e)
{
    if (json_int(json_get(root, key), out) != 0)
        return gp_fail(e, "%s: missing or non-integer \"%s\"", path, key);
    return 0;
}

static int json_f64_field(const json_value *root, const char *key, double *out, const char *path, gp_err *e)
{
    const json_value *v = json_get(root, key);
    if (!v || v->type != JSON_NUMBER)
        return gp_fail(e, "%s: missing or non-numeric \"%s\"", path, key);
    *out = v->number;
    return 0;
}

static int read_state_json(const char *path, run_state *st, gp_err *e)
{
    char *text;
    size_t len;
    if (gp_read_file(path, &text, &len, e) != 0)
        return -1;
    json_doc doc;
    int rc = json_parse(&doc, text, len, path, e);
    free(text);
    if (rc != 0)
        return -1;
    const json_value *r = doc.root;
    int64_t crc = 0;
    memset(st, 0, sizeof *st);
    rc = json_i64_field(r, "step", &st->step, path, e) || json_i64_field(r, "epoch", &st->epoch, path, e) ||
         json_i64_field(r, "epoch_step", &st->epoch_step, path, e) || json_i64_field(r, "micro", &st->micro, path, e) ||
         json_i64_field(r, "total", &st->total, path, e) || json_f64_field(r, "acc_loss", &st->acc_loss, path, e) ||
         json_f64_field(r, "acc_item", &st->acc_item, path, e) || json_f64_field(r, "acc_cate", &st->acc_cate, path, e) ||
         json_f64_field(r, "acc_rank", &st->acc_rank, path, e) || json_f64_field(r, "acc_norm", &st->acc_norm, path, e) ||
         json_i64_field(r, "acc_steps", &st->acc_steps, path, e) ||
         json_i64_field(r, "samples_interval", &st->samples_interval, path, e) ||
         json_i64_field(r, "interval_n", &st->interval_n, path, e) || json_i64_field(r, "data_crc", &crc, path, e)
             ? -1
             : 0;
    st->data_crc = (uint32_t)crc;
    json_free(&doc);
    if (rc == 0 && (st->step < 0 || st->epoch < 0 || st->epoch_step < 0 || st->micro < 0 || st->interval_n < 0))
        rc = gp_fail(e, "%s: negative counters", path);
    return rc;
}

static int copy_state(const st_file *f, const char *name, const tensor_info *ti, float *dst, gp_err *e)
{
    const st_tensor *t = st_find(f, name);
    if (!t)
        return gp_fail(e, "%s: no %s (was this checkpoint written with another freeze setting?)", f->path, name);
    if (t->dtype != ST_F32 || t->numel != ti->numel)
        return gp_fail(e, "%s: %s has %lld %s elements, the model needs %lld F32", f->path, name, (long long)t->numel,
                       st_dtype_name(t->dtype), (long long)ti->numel);
    memcpy(dst, t->data, (size_t)ti->numel * sizeof(float));
    return 0;
}

int run_state_load(const char *path, const model_layout *l, backend *b, run_state *st, float *interval_prob,
                   int32_t *interval_label, int64_t interval_cap, gp_err *e)
{
    int rc = -1;
    char *p = gp_path_join(path, "state.json");
    if (read_state_json(p, st, e) != 0) {
        free(p);
        return -1;
    }
    free(p);
    if (st->interval_n > interval_cap)
        return gp_fail(e, "%s: %lld interval predictions, more than this run's %lld (log_every or batch size changed?)",
                       path, (long long)st->interval_n, (long long)interval_cap);
    const size_t ns = (size_t)l->sparse_numel, nd = (size_t)l->dense_numel;
    const int frozen = b->opts.freeze_sparse;
    float *sparse = NULL, *dense = NULL, *ms = NULL, *vs = NULL, *md = NULL, *vd = NULL;
    st_file f;
    memset(&f, 0, sizeof f);
    if (!(sparse = gp_alloc_or_fail(ns * 4, "checkpoint item table", e)) ||
        !(dense = gp_alloc_or_fail(nd * 4, "checkpoint parameters", e)) ||
        !(md = gp_alloc_or_fail(nd * 4, "checkpoint AdamW state", e)) ||
        !(vd = gp_alloc_or_fail(nd * 4, "checkpoint AdamW state", e)) ||
        (!frozen && !(ms = gp_alloc_or_fail(ns * 4, "checkpoint AdamW state", e))) ||
        (!frozen && !(vs = gp_alloc_or_fail(ns * 4, "checkpoint AdamW state", e))))
        goto done;
    p = gp_path_join(path, "model.safetensors");
    int r = checkpoint_load_params(p, l, sparse, dense, TRANSFER_FULL, NULL, NULL, 0, e);
    free(p);
    if (r != 0)
        goto done;
    p = gp_path_join(path, "optim.safetensors");
    r = st_open(&f, p, e);
    free(p);
    if (r != 0)
        goto done;
    char name[MODEL_NAME_MAX + 16];
    for (int i = 0; i < l->n_tensors; i++) {
        if (!model_tensor_trained(l, i, frozen))
            continue;
        const tensor_info *ti = &l->tensors[i];
        int sp = ti->arena == ARENA_SPARSE;
        snprintf(name, sizeof name, "%s.exp_avg", ti->name);
        if (copy_state(&f, name, ti, (sp ? ms : md) + ti->offset, e) != 0)
            goto done;
        snprintf(name, sizeof name, "%s.exp_avg_sq", ti->name);
        if (copy_state(&f, name, ti, (sp ? vs : vd) + ti->offset, e) != 0)
            goto done;
    }
    const st_tensor *ip = st_find(&f, "interval.prob"), *il = st_find(&f, "interval.label");
    if (!ip || !il || ip->dtype != ST_F32 || il->dtype != ST_I32 || ip->numel != st->interval_n ||
        il->numel != st->interval_n) {
        gp_fail(e, "%s/optim.safetensors: interval predictions missing or inconsistent with state.json", path);
        goto done;
    }
    if (st->interval_n) {
        memcpy(interval_prob, ip->data, (size_t)st->interval_n * sizeof(float));
        memcpy(interval_label, il->data, (size_t)st->interval_n * sizeof(int32_t));
    }
    if (b->set_params(b, sparse, dense, e) != 0 || b->set_optim_state(b, ms, vs, md, vd, e) != 0)
        goto done;
    rc = 0;
done:
    st_close(&f);
    gp_free_aligned(sparse);
    gp_free_aligned(dense);
    gp_free_aligned(ms);
    gp_free_aligned(vs);
    gp_free_aligned(md);
    gp_free_aligned(vd);
    return rc;
}
