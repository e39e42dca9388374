/* The CPU model as a whole (finite-difference gradients, freezing, transfer) and the training
 * loop (determinism, gradient accumulation, outputs). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "checkpoint.h"
#include "dataset.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"
#include "settings.h"
#include "synth.h"
#include "test.h"
#include "train.h"

static int small_layout(model_layout *l, int stage, int emb, int causal, gp_err *e)
{
    gp_settings s;
    cfg_list cl = {0};
    if (cfg_parse_text(&cl, settings_stage_defaults, "stage defaults", e) != 0 ||
        settings_resolve(&cl, stage, &s, NULL, e) != 0)
        return -1;
    cfg_list_free(&cl);
    s.dim = 16;
    s.n_layers = 2;
    s.n_heads = 2;
    s.embedding_dim = emb;
    s.max_history = 6;
    s.n_negatives = 5;
    s.attention = causal ? ATTN_CAUSAL : ATTN_BIDIRECTIONAL;
    if (stage == STAGE_FINETUNE) {
        /* every head at once, so one check covers them all */
        s.item_loss_weight = 0.7;
        s.cate_loss_weight = 0.4;
    }
    model_config c;
    if (model_config_from_settings(&c, &s, 30, 6, e) != 0)
        return -1;
    return model_layout_build(l, &c, e);
}

static void small_batch(batch *x, int B, int S, int N, int ctr, gp_rng *r)
{
    batch_alloc(x, B, S, N);
    x->B = B;
    for (int b = 0; b < B; b++) {
        int n = 1 + (int)gp_rng_below(r, (uint32_t)S);
        x->hist_len[b] = n;
        for (int k = 0; k < S; k++) {
            x->hist_item[b * S + k] = k < n ? 1 + (int32_t)gp_rng_below(r, 29) : 0;
            x->hist_cate[b * S + k] = k < n ? 1 + (int32_t)gp_rng_below(r, 5) : 0;
            x->item_label[b * S + k] = k < n ? 1 + (int32_t)gp_rng_below(r, 29) : LABEL_IGNORE;
            x->cate_label[b * S + k] = k < n ? 1 + (int32_t)gp_rng_below(r, 5) : LABEL_IGNORE;
        }
        x->target_item[b] = 1 + (int32_t)gp_rng_below(r, 29);
        x->target_cate[b] = 1 + (int32_t)gp_rng_below(r, 5);
        x->click[b] = ctr ? (int32_t)gp_rng_below(r, 2) : 2;
    }
    for (int i = 0; i < B * N; i++)
        x->negatives[i] = (int32_t)gp_rng_below(r, 30);
}

/* Whole-model gradients against central finite differences of the loss, for a sample of
 * elements of every tensor. fp32 forward, so the tolerance is loose; a wiring mistake shows as
 * an O(1) error. */
static void fd_check(int stage, int emb, int causal)
{
    gp_err e = {{0}};
    model_layout l;
    REQUIRE(small_layout(&l, stage, emb, causal, &e) == 0, "%s", e.msg);
    float *sp = gp_xcalloc((size_t)l.sparse_numel, 4), *dn = gp_xcalloc((size_t)l.dense_numel, 4);
    model_init_params(&l, sp, dn, 3);
    for (int64_t i = 0; i < l.dense_numel; i++)
        dn[i] *= 10.0f; /* far from the 0.02 init so every path carries gradient */
    for (int64_t i = 0; i < l.sparse_numel; i++)
        sp[i] *= 10.0f;
    for (int t = 0; t < l.n_tensors; t++)
        if (l.tensors[t].kind == TENSOR_NORM || l.tensors[t].kind == TENSOR_BIAS)
            for (int64_t i = 0; i < l.tensors[t].numel; i++)
                dn[l.tensors[t].offset + i] = 1.0f + 0.3f * sinf((float)i);
    gp_rng r = gp_rng_stream(9, RNG_PURPOSE_TEST, (uint64_t)stage, (uint64_t)emb);
    batch x;
    small_batch(&x, 4, 6, 5, stage == STAGE_FINETUNE, &r);
    backend_opts o = {.max_batch = 4};
    backend *b = backend_cpu_create(&l, &o, &e);
    REQUIRE(b, "%s", e.msg);
    step_losses out;
    REQUIRE(b->set_params(b, sp, dn, &e) == 0 && b->forward_backward(b, &x, 1.0f, &out, NULL, &e) == 0, "%s", e.msg);
    float *gs = gp_xcalloc((size_t)l.sparse_numel, 4), *gd = gp_xcalloc((size_t)l.dense_numel, 4);
    REQUIRE(b->get_grads(b, gs, gd, &e) == 0, "%s", e.msg);
    int checked = 0;
    for (int t = 0; t < l.n_tensors; t++) {
        const tensor_info *ti = &l.tensors[t];
        float *p = (ti->arena == ARENA_SPARSE ? sp : dn) + ti->offset;
        const float *g = (ti->arena == ARENA_SPARSE ? gs : gd) + ti->offset;
        double gmax = 0;
        for (int64_t i = 0; i < ti->numel; i++)
            gmax = fmax(gmax, fabs(g[i]));
        for (int k = 0; k < 4; k++) {
            int64_t i = (int64_t)gp_rng_below64(&r, (uint64_t)ti->numel);
            float keep = p[i];
            double h = 1e-2 * fmax(1.0, fabs(keep));
            step_losses lp, lm;
            p[i] = keep + (float)h;
            b->set_params(b, sp, dn, &e);
            b->forward(b, &x, 0, &lp, NULL, &e);
            p[i] = keep - (float)h;
            b->set_params(b, sp, dn, &e);
            b->forward(b, &x, 0, &lm, NULL, &e);
            p[i] = keep;
            double fd = (lp.loss - lm.loss) / (2 * h);
            double tol = 2e-2 * fmax(gmax, 1e-3) + 2e-3;
            if (!(fabs(fd - g[i]) <= tol))
                test_failure(__FILE__, __LINE__, "%s[%lld]: backward %.6g, finite difference %.6g (tensor max %.3g)",
                             ti->name, (long long)i, g[i], fd, gmax);
            checked++;
        }
    }
    CHECK(checked == 4 * l.n_tensors);
    free(sp);
    free(dn);
    free(gs);
    free(gd);
    batch_free(&x);
    backend_destroy(b);
    model_layout_free(&l);
}

TEST(train_model_gradients_fd_pretrain) { fd_check(STAGE_PRETRAIN, 0, 1); }
TEST(train_model_gradients_fd_projected) { fd_check(STAGE_PRETRAIN, 8, 1); }
TEST(train_model_gradients_fd_all_heads_bidirectional) { fd_check(STAGE_FINETUNE, 0, 0); }

/* A frozen item table gets no gradient and no update; the rest trains. */
TEST(train_frozen_table_never_changes)
{
    gp_err e = {{0}};
    model_layout l;
    REQUIRE(small_layout(&l, STAGE_FINETUNE, 0, 1, &e) == 0, "%s", e.msg);
    float *sp = gp_xcalloc((size_t)l.sparse_numel, 4), *dn = gp_xcalloc((size_t)l.dense_numel, 4);
    model_init_params(&l, sp, dn, 4);
    gp_rng r = gp_rng_stream(2, RNG_PURPOSE_TEST, 0, 0);
    batch x;
    small_batch(&x, 4, 6, 5, 1, &r);
    backend_opts o = {.max_batch = 4, .freeze_sparse = 1};
    backend *b = backend_cpu_create(&l, &o, &e);
    REQUIRE(b && b->set_params(b, sp, dn, &e) == 0, "%s", e.msg);
    step_losses out;
    optim_hparams h = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-8, .weight_decay = 0.1, .max_grad_norm = 1};
    for (int s = 1; s <= 3; s++) {
        h.step = s;
        double gn;
        REQUIRE(b->forward_backward(b, &x, 1.0f, &out, NULL, &e) == 0 && b->optimizer_step(b, &h, &gn, &e) == 0, "%s",
                e.msg);
    }
    float *sp2 = gp_xcalloc((size_t)l.sparse_numel, 4), *dn2 = gp_xcalloc((size_t)l.dense_numel, 4);
    REQUIRE(b->get_params(b, sp2, dn2, &e) == 0, "%s", e.msg);
    CHECK(memcmp(sp, sp2, (size_t)l.sparse_numel * 4) == 0, "frozen item table changed");
    CHECK(memcmp(dn, dn2, (size_t)l.dense_numel * 4) != 0, "dense parameters did not train");
    free(sp);
    free(dn);
    free(sp2);
    free(dn2);
    batch_free(&x);
    backend_destroy(b);
    model_layout_free(&l);
}

/* ---- the loop ---- */

static char *synth_small(const char *name)
{
    char *path = gp_path_join(test_tmp_dir(), name);
    synth_config c = synth_default_config();
    c.n_users = 600;
    c.n_items = 200;
    c.n_cates = 10;
    c.n_topics = 20;
    c.mean_len = 12;
    c.protocol.max_history = 20;
    synth_report rep;
    gp_err e = {{0}};
    if (synth_generate(&c, path, &rep, &e) != 0)
        test_failure(__FILE__, __LINE__, "%s", e.msg);
    return path;
}

static int run_train(const char *data, const char *extra, const char *out_name, train_result *res, gp_err *e)
{
    cfg_list l = {0};
    char text[4096];
    snprintf(text, sizeof text,
             "data = %s\ndim = 16\nn_layers = 1\nn_heads = 2\nmax_history = 20\nn_negatives = 16\nbatch_size = 32\n"
             "warmup_steps = 3\nlog_every = 1\ndevice = cpu\nout_dir = %s/%s\n%s",
             data, test_tmp_dir(), out_name, extra);
    int rc = cfg_parse_text(&l, settings_stage_defaults, "stage defaults", e);
    if (rc == 0)
        rc = cfg_parse_text(&l, text, "test", e);
    gp_settings s;
    if (rc == 0)
    {
        int stage = STAGE_PRETRAIN;
        rc = settings_stage_of(&l, &stage, e);
        if (rc == 0)
            rc = settings_resolve(&l, stage, &s, NULL, e);
    }
    if (rc == 0)
        rc = settings_validate(&s, e);
    if (rc == 0)
        rc = train_run(&s, NULL, NULL, res, e);
    cfg_list_free(&l);
    return rc;
}

static char *read_out(const char *dir, const char *file)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/%s", test_tmp_dir(), dir, file);
    char *text = NULL;
    gp_err e;
    if (gp_read_file(path, &text, NULL, &e) != 0)
        return gp_xstrdup("");
    return text;
}

/* The log's "loss" values without the timing fields, for comparing runs. */
static void losses_of(const char *log, double *out, int max, int *n)
{
    *n = 0;
    for (const char *p = log; (p = strstr(p, "\"event\":\"train\"")) && *n < max; p++) {
        const char *q = strstr(p, "\"loss\":");
        out[(*n)++] = q ? strtod(q + 7, NULL) : NAN;
    }
}

/* Every tensor of checkpoint b equals a's, byte for byte; `what` names the difference. */
static void check_same_checkpoint(const char *a, const char *b, const char *what)
{
    gp_err e = {{0}};
    st_file fa, fb;
    REQUIRE(st_open(&fa, a, &e) == 0, "%s", e.msg);
    if (st_open(&fb, b, &e) != 0) {
        st_close(&fa);
        REQUIRE(0, "%s", e.msg);
    }
    CHECK(fa.n == fb.n && fa.n > 0, "%d and %d tensors", fa.n, fb.n);
    for (int i = 0; i < fa.n; i++) {
        const st_tensor *tb = st_find(&fb, fa.tensors[i].name);
        CHECK(tb && tb->nbytes == fa.tensors[i].nbytes && memcmp(tb->data, fa.tensors[i].data, tb->nbytes) == 0,
              "%s differs %s", fa.tensors[i].name, what);
    }
    st_close(&fa);
    st_close(&fb);
}

TEST(train_is_deterministic_and_writes_outputs)
{
    char *data = synth_small("det.gpsd");
    train_result r1, r2;
    gp_err e = {{0}};
    REQUIRE(run_train(data, "epochs = 2\n", "det1", &r1, &e) == 0, "%s", e.msg);
    REQUIRE(run_train(data, "epochs = 2\nthreads = 1\n", "det2", &r2, &e) == 0, "%s", e.msg);
    char *l1 = read_out("det1", "log.jsonl"), *l2 = read_out("det2", "log.jsonl");
    double a[256], b[256];
    int na, nb;
    losses_of(l1, a, 256, &na);
    losses_of(l2, b, 256, &nb);
    CHECK(na > 5 && na == nb, "%d vs %d log lines", na, nb);
    for (int i = 0; i < na && i < nb; i++)
        CHECK(a[i] == b[i], "step %d: %.9g vs %.9g with another thread count", i + 1, a[i], b[i]);
    CHECK(strstr(l1, "\"event\":\"eval\"") && strstr(l1, "hr@10") && strstr(l1, "grad_norm") && strstr(l1, "\"lr\""),
          "%s", l1);
    char *res = read_out("det1", "result.json"), *conf = read_out("det1", "settings.conf");
    CHECK(strstr(res, "\"steps\":") && strstr(res, "hr@10"), "%s", res);
    CHECK(strstr(conf, "dim                  = 16"), "%s", conf);
    CHECK(r1.steps == 2 * (600 / 32), "steps %lld", (long long)r1.steps);
    free(l1);
    free(l2);
    free(res);
    free(conf);
    free(data);
}

/* The loader's thread changes when a batch is built, not what it holds: the same model to the
 * bit, with gradient accumulation across an epoch boundary. */
TEST(train_prefetch_changes_nothing_but_timing)
{
    char *data = synth_small("prefetch.gpsd");
    train_result r1, r2;
    gp_err e = {{0}};
    REQUIRE(run_train(data, "epochs = 2\nbatch_size = 16\ngrad_accum = 2\n", "pf_on", &r1, &e) == 0, "%s", e.msg);
    REQUIRE(run_train(data, "epochs = 2\nbatch_size = 16\ngrad_accum = 2\nprefetch = false\n", "pf_off", &r2, &e) == 0,
            "%s", e.msg);
    CHECK(r1.steps == r2.steps && r1.steps == 2 * (600 / 32), "steps %lld and %lld", (long long)r1.steps,
          (long long)r2.steps);
    check_same_checkpoint(r1.checkpoint, r2.checkpoint, "with prefetch on");
    char *log = read_out("pf_on", "log.jsonl");
    const char *w = strstr(log, "\"data_wait_ms\":");
    CHECK(w && strtod(w + 15, NULL) >= 0, "no data_wait_ms in %s", log);
    free(log);
    free(data);
}

/* A run resumed from a checkpoint beyond a schedule since shortened trains nothing more, and still
 * evaluates and saves the model (as before the loader, which once refused the empty schedule). */
TEST(train_resume_past_a_shortened_schedule)
{
    char *data = synth_small("shorter.gpsd");
    train_result r1, r2;
    gp_err e = {{0}};
    REQUIRE(run_train(data, "max_steps = 6\nstop_after_steps = 4\n", "shorter", &r1, &e) == 0, "%s", e.msg);
    CHECK(r1.stopped && r1.steps == 4, "stopped %d at %lld", r1.stopped, (long long)r1.steps);
    REQUIRE(run_train(data, "max_steps = 3\n", "shorter", &r2, &e) == 0, "%s", e.msg);
    CHECK(!r2.stopped && r2.steps == 4 && r2.has_eval && test_file_exists(r2.checkpoint), "steps %lld, eval %d, %s",
          (long long)r2.steps, r2.has_eval, r2.checkpoint);
    free(data);
}

/* Two micro-batches of 16 accumulate to (almost) the gradient of one batch of 32: the same
 * first-step loss and a near-identical loss curve. */
TEST(train_grad_accumulation_matches_big_batch)
{
    char *data = synth_small("accum.gpsd");
    train_result r1, r2;
    gp_err e = {{0}};
    REQUIRE(run_train(data, "max_steps = 8\nshuffle = false\nn_negatives = 200\n", "big", &r1, &e) == 0, "%s", e.msg);
    REQUIRE(run_train(data, "max_steps = 8\nshuffle = false\nn_negatives = 200\nbatch_size = 16\ngrad_accum = 2\n",
                      "accum", &r2, &e) == 0,
            "%s", e.msg);
    char *l1 = read_out("big", "log.jsonl"), *l2 = read_out("accum", "log.jsonl");
    double a[16], b[16];
    int na, nb;
    losses_of(l1, a, 16, &na);
    losses_of(l2, b, 16, &nb);
    REQUIRE(na == 8 && nb == 8, "%d %d", na, nb);
    /* The micro-batches draw their own negatives, so the losses agree closely, not exactly. */
    for (int i = 0; i < 8; i++)
        CHECK(fabs(a[i] - b[i]) < 0.05 * fabs(a[i]), "step %d: batch 32 %.5f, 2 x 16 %.5f", i + 1, a[i], b[i]);
    free(l1);
    free(l2);
    free(data);
}

TEST(train_transfer_and_shape_mismatch)
{
    char *data = synth_small("xfer.gpsd");
    train_result pre, fin;
    gp_err e = {{0}};
    REQUIRE(run_train(data, "max_steps = 5\n", "pre", &pre, &e) == 0, "%s", e.msg);
    char extra[2048];
    snprintf(extra, sizeof extra, "stage = finetune\nmax_steps = 5\ninit_from = %s\ntransfer = sparse\nfreeze_sparse = true\n",
             pre.checkpoint);
    REQUIRE(run_train(data, extra, "fin", &fin, &e) == 0, "%s", e.msg);
    CHECK(fin.has_eval && fin.eval.auc > 0 && fin.eval.auc < 1);
    /* The finetuned model's item table is the pretrained one, bit for bit. */
    st_file a, b;
    REQUIRE(st_open(&a, pre.checkpoint, &e) == 0 && st_open(&b, fin.checkpoint, &e) == 0, "%s", e.msg);
    const st_tensor *ta = st_find(&a, "item_embeddings.weight"), *tb = st_find(&b, "item_embeddings.weight");
    REQUIRE(ta && tb && ta->nbytes == tb->nbytes);
    CHECK(memcmp(ta->data, tb->data, ta->nbytes) == 0, "frozen transferred table differs");
    st_close(&a);
    st_close(&b);
    /* A model of another width cannot take that table: a clear error naming both shapes. */
    snprintf(extra, sizeof extra, "stage = finetune\nmax_steps = 5\ninit_from = %s\ntransfer = full\ndim = 32\n",
             pre.checkpoint);
    CHECK(run_train(data, extra, "bad", &fin, &e) != 0);
    CHECK(strstr(e.msg, "item_embeddings.weight") && strstr(e.msg, "[201, 16]") && strstr(e.msg, "[201, 32]"), "%s",
          e.msg);
    free(data);
}

/* A run stopped part-way (stop_after_steps, mid-epoch and mid log interval) and resumed gives
 * the uninterrupted run's losses and final parameters bit for bit, on the same backend. */
static void resume_case(const char *stage_extra, const char *tag)
{
    char *data = synth_small("resume.gpsd");
    train_result a, b;
    gp_err e = {{0}};
    char extra[1024], name_a[64], name_b[64];
    snprintf(name_a, sizeof name_a, "resume_a_%s", tag);
    snprintf(name_b, sizeof name_b, "resume_b_%s", tag);
    snprintf(extra, sizeof extra, "epochs = 2\nlog_every = 4\n%s", stage_extra);
    REQUIRE(run_train(data, extra, name_a, &a, &e) == 0, "%s", e.msg);
    snprintf(extra, sizeof extra, "epochs = 2\nlog_every = 4\nstop_after_steps = 7\n%s", stage_extra);
    /* Legs of 7 steps, each resuming from the last one's checkpoint, until the run completes. */
    int legs = 0;
    do {
        REQUIRE(run_train(data, extra, name_b, &b, &e) == 0, "%s", e.msg);
        legs++;
        if (b.stopped)
            CHECK(b.steps == 7 * legs, "leg %d stopped at %lld", legs, (long long)b.steps);
    } while (b.stopped && legs < 20);
    CHECK(!b.stopped && b.steps == a.steps, "final %lld of %lld", (long long)b.steps, (long long)a.steps);
    CHECK(legs == (int)((a.steps + 6) / 7), "%d legs for %lld steps", legs, (long long)a.steps);
    char *la = read_out(name_a, "log.jsonl"), *lb = read_out(name_b, "log.jsonl");
    double xa[64], xb[64];
    int na, nb;
    losses_of(la, xa, 64, &na);
    losses_of(lb, xb, 64, &nb);
    CHECK(na == nb && na > 4, "%d vs %d train lines", na, nb);
    for (int i = 0; i < na && i < nb; i++)
        CHECK(xa[i] == xb[i], "log line %d: %.17g uninterrupted, %.17g resumed", i, xa[i], xb[i]);
    check_same_checkpoint(a.checkpoint, b.checkpoint, "after resuming");
    /* keep_checkpoints (2) newest checkpoints and no temporary directories are left. */
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s/checkpoints", test_tmp_dir(), name_b);
    char cmd[1200], *out;
    snprintf(cmd, sizeof cmd, "ls %s", dir);
    test_run_capture(cmd, &out);
    int n = 0;
    for (char *p = out; (p = strstr(p, "step_")); p++)
        n++;
    CHECK(n == 2 && !strstr(out, ".tmp"), "checkpoints left: %s", out);
    free(out);
    free(la);
    free(lb);
    free(data);
}

TEST(train_resume_is_bit_exact_pretrain) { resume_case("", "pre"); }
TEST(train_resume_is_bit_exact_finetune_frozen)
{
    resume_case("stage = finetune\nfreeze_sparse = true\n", "fin");
}

TEST(train_resume_refuses_another_dataset)
{
    char *d1 = synth_small("r1.gpsd");
    char *d2 = gp_path_join(test_tmp_dir(), "r2.gpsd");
    synth_config c = synth_default_config();
    c.n_users = 600;
    c.n_items = 200;
    c.n_cates = 10;
    c.n_topics = 20;
    c.mean_len = 12;
    c.seed = 99;
    c.protocol.max_history = 20;
    synth_report rep;
    gp_err e = {{0}};
    REQUIRE(synth_generate(&c, d2, &rep, &e) == 0, "%s", e.msg);
    train_result r;
    REQUIRE(run_train(d1, "max_steps = 4\nstop_after_steps = 2\n", "refuse", &r, &e) == 0, "%s", e.msg);
    CHECK(run_train(d2, "max_steps = 4\n", "refuse", &r, &e) != 0);
    CHECK(strstr(e.msg, "another dataset") && strstr(e.msg, "resume = never"), "%s", e.msg);
    CHECK(run_train(d2, "max_steps = 4\nresume = never\n", "refuse", &r, &e) == 0, "%s", e.msg);
    free(d1);
    free(d2);
}
