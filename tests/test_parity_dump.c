/* tools/parity_dump: the golden-format dump of one trainer micro-batch. Its files load with the
 * golden loader and hold what a direct backend run computes; its batches and parameters are the
 * trainer's (checked against training runs' logged losses); a dump of a golden file's own
 * parameters and batch reproduces the golden file (metadata, inputs, expectations, gradients). */
#define PARITY_DUMP_NO_MAIN
#include "../tools/parity_dump.c"

#include "support/golden.h"
#include "synth.h"
#include "test.h"
#include "train.h"

static const char *parity_data(void)
{
    static char path[1024];
    if (path[0])
        return path;
    snprintf(path, sizeof path, "%s/parity_tiny.gpsd", test_tmp_dir());
    synth_config c = synth_default_config();
    c.n_users = 400;
    c.n_items = 150;
    c.n_cates = 9;
    c.n_topics = 12;
    c.mean_len = 12;
    c.protocol.max_history = 20;
    synth_report rep;
    gp_err e = {{0}};
    if (synth_generate(&c, path, &rep, &e) != 0) {
        test_failure(__FILE__, __LINE__, "%s", e.msg);
        path[0] = 0;
    }
    return path;
}

/* Settings from the stage defaults plus `text` (config syntax); the stage comes from the text. */
static int parity_settings(gp_settings *s, const char *text, gp_err *e)
{
    cfg_list l = {0};
    int stage = STAGE_PRETRAIN;
    int rc = cfg_parse_text(&l, settings_stage_defaults, "stage defaults", e);
    if (rc == 0)
        rc = cfg_parse_text(&l, text, "test", e);
    if (rc == 0)
        rc = settings_stage_of(&l, &stage, e);
    if (rc == 0)
        rc = settings_resolve(&l, stage, s, NULL, e);
    if (rc == 0)
        rc = settings_validate(s, e);
    cfg_list_free(&l);
    return rc;
}

static void check_tensors_equal(const model_layout *l, const float *gs, const float *gd, const float *ws,
                                const float *wd, double rel_tol, const char *what)
{
    for (int t = 0; t < l->n_tensors; t++) {
        const tensor_info *ti = &l->tensors[t];
        double md, mr;
        golden_max_diff((ti->arena == ARENA_SPARSE ? gs : gd) + ti->offset,
                        (ti->arena == ARENA_SPARSE ? ws : wd) + ti->offset, ti->numel, &md, &mr);
        if (!(md <= rel_tol * mr))
            test_failure(__FILE__, __LINE__, "%s: %s differs by %.3g (largest %.3g)", what, ti->name, md, mr);
    }
}

/* Whether name is one of the comma-separated entries of list. */
static int in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, name, n) == 0)
            return 1;
        p += len + (p[len] == ',');
    }
    return 0;
}

/* A dump of the tiny synthetic set under `config`: the file loads with golden_load_path, its
 * model is the settings' model, its parameters the seed's initialisation, its batch well formed,
 * and its losses and gradients those of a fresh CPU backend run on what the file holds. */
static void dump_and_check(const char *config, const char *name)
{
    const char *data = parity_data();
    REQUIRE(data[0]);
    char text[2048], out[1024];
    snprintf(text, sizeof text, "data = %s\ndevice = cpu\nbatch_size = 12\nmax_history = 16\nn_negatives = 24\n%s", data,
             config);
    snprintf(out, sizeof out, "%s/%s.safetensors", test_tmp_dir(), name);
    gp_settings s;
    gp_err e = {{0}};
    REQUIRE(parity_settings(&s, text, &e) == 0, "%s", e.msg);
    parity_opts o = {.out = out};
    parity_summary sum;
    REQUIRE(parity_dump(&s, &o, &sum, &e) == 0, "%s: %s", name, e.msg);
    golden_case g;
    if (golden_load_path(&g, out, &e) != 0) {
        test_failure(__FILE__, __LINE__, "%s: %s", name, e.msg);
        golden_free(&g);
        return;
    }
    const model_layout *gl = &g.layout;
    const model_config *c = &gl->cfg;

    /* The model the settings describe. */
    dataset ds;
    REQUIRE(dataset_open(&ds, data, NULL, &e) == 0, "%s", e.msg);
    model_config mc;
    model_layout ml;
    REQUIRE(model_config_from_settings(&mc, &s, (int64_t)ds.hdr->n_items, (int64_t)ds.hdr->n_cates, &e) == 0 &&
                model_layout_build(&ml, &mc, &e) == 0,
            "%s", e.msg);
    CHECK(c->dim == mc.dim && c->n_layers == mc.n_layers && c->n_heads == mc.n_heads && c->emb_dim == mc.emb_dim &&
              c->ffn_hidden == mc.ffn_hidden && c->causal == mc.causal && c->n_items == mc.n_items &&
              c->n_cates == mc.n_cates && c->max_history == mc.max_history && c->n_negatives == mc.n_negatives &&
              c->temperature == mc.temperature && c->norm_eps == mc.norm_eps && c->rope_theta == mc.rope_theta &&
              c->w_item == mc.w_item && c->w_cate == mc.w_cate && c->w_rank == mc.w_rank,
          "%s: the file's metadata describes another model", name);
    CHECK(gl->n_tensors == ml.n_tensors && gl->dense_numel == ml.dense_numel, "%s", name);
    const char *stage = st_meta(&g.file, "stage");
    CHECK(stage && strcmp(stage, settings_stage_name(s.stage)) == 0, "%s: stage %s", name, stage ? stage : "(none)");

    /* The seed's initialisation, independently made. */
    float *sp = gp_xcalloc((size_t)ml.sparse_numel, sizeof(float)), *dn = gp_xcalloc((size_t)ml.dense_numel, sizeof(float));
    model_init_params(&ml, sp, dn, (uint64_t)s.seed);
    check_tensors_equal(&ml, g.sparse, g.dense, sp, dn, 0, "parameters vs model_init_params");

    /* A well-formed batch of the stage's records. */
    const batch *x = &g.x;
    CHECK(x->B == 12 && x->S == 16 && x->N == 24, "%s: B %d S %d N %d", name, x->B, x->S, x->N);
    int pre = s.stage == STAGE_PRETRAIN;
    for (int b = 0; b < x->B; b++) {
        int n = x->hist_len[b];
        REQUIRE(n >= 1 && n <= x->S, "%s: row %d length %d", name, b, n);
        CHECK(x->click[b] == (pre ? 2 : x->click[b] & 1), "%s: row %d click %d", name, b, x->click[b]);
        for (int k = 0; k < x->S; k++) {
            int32_t want = !pre || k >= n ? LABEL_IGNORE : k + 1 < n ? x->hist_item[b * x->S + k + 1] : x->target_item[b];
            CHECK(x->item_label[b * x->S + k] == want, "%s: row %d label %d", name, b, k);
            CHECK(k < n ? x->hist_item[b * x->S + k] > 0 : x->hist_item[b * x->S + k] == 0, "%s: row %d slot %d", name,
                  b, k);
        }
        for (int j = 0; j < x->N; j++)
            CHECK(x->negatives[b * x->N + j] >= 0 && x->negatives[b * x->N + j] < c->n_items);
    }

    /* What a fresh CPU backend computes from the file's parameters and batch. */
    backend_opts bo = {.max_batch = x->B, .freeze_sparse = s.freeze_sparse};
    backend *be = backend_cpu_create(gl, &bo, &e);
    REQUIRE(be && be->set_params(be, g.sparse, g.dense, &e) == 0, "%s", e.msg);
    step_losses sl;
    float *prob = gp_xcalloc((size_t)x->B, sizeof(float));
    REQUIRE(be->forward_backward(be, x, 1.0f, &sl, prob, &e) == 0, "%s", e.msg);
    CHECK((float)sl.loss == (float)g.loss && (float)sl.item_loss == (float)g.item_loss &&
              (float)sl.cate_loss == (float)g.cate_loss && (float)sl.rank_loss == (float)g.rank_loss,
          "%s: losses %.9g %.9g %.9g %.9g, file %.9g %.9g %.9g %.9g", name, sl.loss, sl.item_loss, sl.cate_loss,
          sl.rank_loss, g.loss, g.item_loss, g.cate_loss, g.rank_loss);
    CHECK(fabs(sl.loss - sum.losses.loss) <= 1e-12 * fabs(sl.loss), "%s: summary loss %.9g", name, sum.losses.loss);
    CHECK(g.loss > 0 && (pre ? g.item_loss > 0 && g.cate_loss > 0 && g.rank_loss == 0
                             : g.rank_loss > 0 && g.item_loss == 0),
          "%s: losses %.9g %.9g %.9g", name, g.item_loss, g.cate_loss, g.rank_loss);
    for (int b = 0; b < x->B; b++)
        CHECK(g.rank_outputs[b] == (pre ? 0.0f : prob[b]), "%s: rank output %d %.9g vs %.9g", name, b,
              g.rank_outputs[b], prob[b]);
    float *gs = gp_xcalloc((size_t)gl->sparse_numel, sizeof(float)), *gd = gp_xcalloc((size_t)gl->dense_numel, sizeof(float));
    REQUIRE(be->get_grads(be, gs, gd, &e) == 0, "%s", e.msg);
    check_tensors_equal(gl, g.grad_sparse, g.grad_dense, gs, gd, 0, "file gradients vs a direct run");
    /* Off-path tensors are listed and have no gradient; the rest do. */
    const char *without = st_meta(&g.file, "params_without_gradient");
    REQUIRE(without != NULL);
    for (int t = 0; t < gl->n_tensors; t++) {
        const tensor_info *ti = &gl->tensors[t];
        double md, mr;
        const float *grad = (ti->arena == ARENA_SPARSE ? g.grad_sparse : g.grad_dense) + ti->offset;
        golden_max_diff(grad, grad, ti->numel, &md, &mr);
        int listed = in_list(without, ti->name);
        int frozen = ti->arena == ARENA_SPARSE && s.freeze_sparse;
        CHECK(listed == !model_tensor_trained(gl, t, 0), "%s: %s listing", name, ti->name);
        CHECK((mr == 0) == (listed || frozen), "%s: %s gradient max %.3g (listed %d, frozen %d)", name, ti->name, mr,
              listed, frozen);
    }
    const char *fz = st_meta(&g.file, "frozen_params");
    CHECK(fz && (s.freeze_sparse ? strcmp(fz, "item_embeddings.weight") == 0 : fz[0] == 0), "%s: frozen_params", name);
    free(gs);
    free(gd);
    free(prob);
    free(sp);
    free(dn);
    backend_destroy(be);
    model_layout_free(&ml);
    dataset_close(&ds);
    golden_free(&g);
}

TEST(parity_dump_pretrain_matches_direct_run)
{
    dump_and_check("dim = 16\nn_layers = 2\nn_heads = 2\n", "pretrain");
}

TEST(parity_dump_pretrain_projected_bidirectional)
{
    dump_and_check("dim = 16\nn_layers = 1\nn_heads = 4\nembedding_dim = 8\nattention = bidirectional\n",
                   "pretrain_emb8_bidir");
}

TEST(parity_dump_finetune_matches_direct_run)
{
    dump_and_check("stage = finetune\ndim = 16\nn_layers = 2\nn_heads = 2\nembedding_dim = 8\n", "finetune_emb8");
}

TEST(parity_dump_finetune_frozen_table)
{
    dump_and_check("stage = finetune\ndim = 16\nn_layers = 1\nn_heads = 2\nfreeze_sparse = true\n", "finetune_frozen");
}

/* ---- the batch, negatives and parameters are the trainer's ---- */

static double logged_loss(const char *out_dir, int step)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/log.jsonl", out_dir);
    char *text = NULL;
    gp_err e;
    if (gp_read_file(path, &text, NULL, &e) != 0)
        return NAN;
    char key[64];
    snprintf(key, sizeof key, "\"event\":\"train\",\"step\":%d,", step);
    const char *p = strstr(text, key);
    const char *q = p ? strstr(p, "\"loss\":") : NULL;
    double v = q ? strtod(q + 7, NULL) : NAN;
    free(text);
    return v;
}

static int train_steps(const char *base, const char *extra, const char *name, char *out_dir, size_t n, gp_err *e)
{
    snprintf(out_dir, n, "%s/%s", test_tmp_dir(), name);
    char text[4096];
    snprintf(text, sizeof text, "%sout_dir = %s\nlog_every = 1\nwarmup_steps = 10\n%s", base, out_dir, extra);
    gp_settings s;
    train_result r;
    if (parity_settings(&s, text, e) != 0 || train_run(&s, NULL, NULL, &r, e) != 0)
        return -1;
    return 0;
}

static double dump_loss(const char *base, const char *extra, int64_t micro, const char *checkpoint, const char *name,
                        gp_err *e)
{
    char text[4096], out[1024];
    snprintf(text, sizeof text, "%s%s", base, extra);
    snprintf(out, sizeof out, "%s/%s.safetensors", test_tmp_dir(), name);
    gp_settings s;
    parity_opts o = {.out = out, .checkpoint = checkpoint, .micro_step = micro};
    parity_summary sum;
    if (parity_settings(&s, text, e) != 0 || parity_dump(&s, &o, &sum, e) != 0)
        return NAN;
    return sum.losses.loss;
}

/* Micro-step 0 from the seed's initialisation is a one-step run's first logged loss; micro-step 1
 * from that run's saved model is the second logged loss of a two-step run (warm-up learning
 * rates do not depend on the run length); with grad_accum = 2 the first logged loss is the mean
 * of micro-steps 0 and 1. */
TEST(parity_dump_batches_are_the_trainers)
{
    const char *data = parity_data();
    REQUIRE(data[0]);
    char base[2048];
    snprintf(base, sizeof base,
             "data = %s\ndevice = cpu\ndim = 16\nn_layers = 1\nn_heads = 2\nmax_history = 16\nn_negatives = 24\n"
             "batch_size = 16\n",
             data);
    gp_err e = {{0}};
    char one[1024], two[1024], acc[1024], ckpt[1100];
    REQUIRE(train_steps(base, "max_steps = 1\n", "parity_train1", one, sizeof one, &e) == 0, "%s", e.msg);
    REQUIRE(train_steps(base, "max_steps = 2\n", "parity_train2", two, sizeof two, &e) == 0, "%s", e.msg);
    REQUIRE(train_steps(base, "max_steps = 1\ngrad_accum = 2\nbatch_size = 8\n", "parity_accum", acc, sizeof acc, &e) ==
                0,
            "%s", e.msg);
    snprintf(ckpt, sizeof ckpt, "%s/model.safetensors", one);

    double d0 = dump_loss(base, "", 0, NULL, "parity_m0", &e);
    CHECK(isfinite(d0), "%s", e.msg);
    double t1 = logged_loss(one, 1), t2 = logged_loss(two, 2), ta = logged_loss(acc, 1);
    CHECK(fabs(d0 - t1) <= 1e-7 * fabs(t1), "micro-step 0: dump %.9g, trainer %.9g", d0, t1);
    double d1 = dump_loss(base, "", 1, ckpt, "parity_m1", &e);
    CHECK(isfinite(d1), "%s", e.msg);
    CHECK(fabs(d1 - t2) <= 1e-7 * fabs(t2), "micro-step 1 after one step: dump %.9g, trainer %.9g", d1, t2);
    /* Without the checkpoint the dump differs: the check above does see the parameters. */
    double d1_init = dump_loss(base, "", 1, NULL, "parity_m1_init", &e);
    CHECK(fabs(d1_init - t2) > 1e-6 * fabs(t2), "micro-step 1 from the initialisation equals the trained loss");
    double a0 = dump_loss(base, "grad_accum = 2\nbatch_size = 8\n", 0, NULL, "parity_a0", &e);
    double a1 = dump_loss(base, "grad_accum = 2\nbatch_size = 8\n", 1, NULL, "parity_a1", &e);
    CHECK(fabs((a0 + a1) / 2 - ta) <= 1e-7 * fabs(ta), "grad_accum 2: dumps %.9g and %.9g, trainer %.9g", a0, a1, ta);

    /* A micro-step in the second epoch: shuffled with epoch 2's order, so it differs from the
     * first epoch's batch at the same position. */
    dataset ds;
    REQUIRE(dataset_open(&ds, data, NULL, &e) == 0, "%s", e.msg);
    int64_t per_epoch = (int64_t)ds.split_count[DS_SPLIT_PRETRAIN] / 16;
    dataset_close(&ds);
    gp_settings s;
    char text[4096];
    snprintf(text, sizeof text, "%s", base);
    REQUIRE(parity_settings(&s, text, &e) == 0, "%s", e.msg);
    REQUIRE(dataset_open(&ds, data, NULL, &e) == 0, "%s", e.msg);
    batch x0, x1;
    batch_alloc(&x0, 16, 16, 24);
    batch_alloc(&x1, 16, 16, 24);
    parity_summary sum;
    REQUIRE(parity_select_batch(&s, &ds, per_epoch, &x1, &sum, &e) == 0, "%s", e.msg);
    CHECK(sum.epoch == 1 && sum.first_record == 0, "epoch %lld first %lld", (long long)sum.epoch,
          (long long)sum.first_record);
    REQUIRE(parity_select_batch(&s, &ds, 0, &x0, &sum, &e) == 0, "%s", e.msg);
    CHECK(memcmp(x0.hist_item, x1.hist_item, 16 * 16 * sizeof(int32_t)) != 0, "epochs 1 and 2 start alike");
    batch_free(&x0);
    batch_free(&x1);
    dataset_close(&ds);
}

/* ---- the writer's conventions are the golden files' ---- */

static void dump_golden(const char *name)
{
    golden_case g, d;
    gp_err e = {{0}};
    if (golden_load(&g, name, &e) != 0) {
        test_failure(__FILE__, __LINE__, "%s", e.msg);
        golden_free(&g);
        return;
    }
    const model_layout *l = &g.layout;
    backend_opts bo = {.max_batch = g.x.B};
    backend *be = backend_cpu_create(l, &bo, &e);
    REQUIRE(be && be->set_params(be, g.sparse, g.dense, &e) == 0, "%s", e.msg);
    char out[1024];
    snprintf(out, sizeof out, "%s/redump_%s", test_tmp_dir(), name);
    int64_t multiple_of = 0;
    REQUIRE(gp_parse_i64(st_meta(&g.file, "multiple_of"), &multiple_of) == 0);
    parity_meta m = {.stage = st_meta(&g.file, "stage"), .multiple_of = (int)multiple_of};
    REQUIRE(m.stage != NULL);
    REQUIRE(parity_run_and_write(be, l, g.sparse, g.dense, &g.x, &m, out, NULL, &e) == 0, "%s", e.msg);
    backend_destroy(be);
    if (golden_load_path(&d, out, &e) != 0) {
        test_failure(__FILE__, __LINE__, "%s", e.msg);
        golden_free(&d);
        golden_free(&g);
        return;
    }
    /* Every metadata key of the official file, with the same text. */
    const json_value *gm = g.file.metadata;
    REQUIRE(gm && gm->type == JSON_OBJECT);
    for (int i = 0; i < gm->n; i++) {
        const char *key = gm->keys[i];
        const char *want = st_meta(&g.file, key), *got = st_meta(&d.file, key);
        CHECK(got && want && strcmp(got, want) == 0, "%s: metadata %s = %s, official %s", name, key,
              got ? got : "(missing)", want ? want : "?");
    }
    /* Every official tensor, with its dtype and shape. */
    for (int i = 0; i < g.file.n; i++) {
        const st_tensor *gt = &g.file.tensors[i], *dt = st_find(&d.file, gt->name);
        REQUIRE(dt != NULL, "%s: %s missing from the dump", name, gt->name);
        int same = dt->dtype == gt->dtype && dt->ndim == gt->ndim;
        for (int k = 0; same && k < gt->ndim; k++)
            same = dt->shape[k] == gt->shape[k];
        CHECK(same, "%s: %s has another dtype or shape", name, gt->name);
        if (same && (strncmp(gt->name, "param.", 6) == 0 || strncmp(gt->name, "input.", 6) == 0))
            CHECK(memcmp(dt->data, gt->data, gt->nbytes) == 0, "%s: %s differs", name, gt->name);
    }
    /* The golden expectations, within the golden README's tolerances. */
    const double got[4] = {d.loss, d.item_loss, d.cate_loss, d.rank_loss}, want[4] = {g.loss, g.item_loss, g.cate_loss,
                                                                                      g.rank_loss};
    for (int i = 0; i < 4; i++)
        CHECK(fabs(got[i] - want[i]) <= 1e-5 * fabs(want[i]) + 1e-7, "%s: loss %d = %.9g, official %.9g", name, i,
              got[i], want[i]);
    for (int b = 0; b < g.x.B; b++)
        CHECK(fabs(d.rank_outputs[b] - g.rank_outputs[b]) <= 1e-5 * fabs(g.rank_outputs[b]) + 1e-7,
              "%s: rank output %d = %.9g, official %.9g", name, b, d.rank_outputs[b], g.rank_outputs[b]);
    for (int t = 0; t < l->n_tensors; t++) {
        const tensor_info *ti = &l->tensors[t];
        double md, mr;
        golden_max_diff((ti->arena == ARENA_SPARSE ? d.grad_sparse : d.grad_dense) + ti->offset,
                        (ti->arena == ARENA_SPARSE ? g.grad_sparse : g.grad_dense) + ti->offset, ti->numel, &md, &mr);
        CHECK(md <= (mr > 0 ? 1e-4 * mr : 1e-9), "%s: grad of %s differs by %.3g (largest official %.3g)", name,
              ti->name, md, mr);
    }
    golden_free(&d);
    golden_free(&g);
}

TEST(parity_dump_of_golden_reproduces_golden)
{
    for (int i = 0; i < golden_n_files; i++)
        dump_golden(golden_files[i]);
}

/* ---- errors ---- */

TEST(parity_dump_errors_are_clear)
{
    const char *data = parity_data();
    REQUIRE(data[0]);
    gp_err e = {{0}};
    gp_settings s;
    char text[2048], out[1024];
    snprintf(out, sizeof out, "%s/never.safetensors", test_tmp_dir());
    parity_opts o = {.out = out};
    parity_summary sum;
    REQUIRE(parity_settings(&s, "device = cpu\n", &e) == 0, "%s", e.msg);
    CHECK(parity_dump(&s, &o, &sum, &e) != 0 && strstr(e.msg, "no dataset"), "%s", e.msg);
    snprintf(text, sizeof text, "data = %s\ndevice = cpu\nlogq_correction = true\n", data);
    REQUIRE(parity_settings(&s, text, &e) == 0, "%s", e.msg);
    CHECK(parity_dump(&s, &o, &sum, &e) != 0 && strstr(e.msg, "logq"), "%s", e.msg);
    snprintf(text, sizeof text, "data = %s\ndevice = cpu\nbatch_size = 100000\ndim = 16\nn_layers = 1\n", data);
    REQUIRE(parity_settings(&s, text, &e) == 0, "%s", e.msg);
    CHECK(parity_dump(&s, &o, &sum, &e) != 0 && strstr(e.msg, "fewer than one step"), "%s", e.msg);
    snprintf(text, sizeof text, "data = %s\ndevice = cpu\ndim = 16\nn_layers = 1\nbatch_size = 4\n", data);
    REQUIRE(parity_settings(&s, text, &e) == 0, "%s", e.msg);
    o.checkpoint = "/nonexistent/model.safetensors";
    CHECK(parity_dump(&s, &o, &sum, &e) != 0 && strstr(e.msg, "/nonexistent/model.safetensors"), "%s", e.msg);
    o.checkpoint = NULL;
    o.out = NULL;
    CHECK(parity_dump(&s, &o, &sum, &e) != 0 && strstr(e.msg, "--out"), "%s", e.msg);
    FILE *f = fopen(out, "r");
    CHECK(f == NULL, "a failed dump left %s", out);
    if (f)
        fclose(f);
}
