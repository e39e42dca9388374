#include "train.h"

#include <inttypes.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "batch.h"
#include "checkpoint.h"
#include "dist.h"
#include "dataset.h"
#include "loader.h"
#include "metrics.h"
#include "model.h"
#include "rng.h"
#include "run_state.h"

double train_lr_at(const gp_settings *s, int64_t step, int64_t total)
{
    double peak = s->lr, floor_lr = s->min_lr;
    if (s->warmup_steps > 0 && step < s->warmup_steps)
        return peak * (double)(step + 1) / (double)s->warmup_steps;
    int64_t span = total - s->warmup_steps;
    if (span <= 0)
        return floor_lr;
    int64_t cur = GP_MIN(step + 1 - s->warmup_steps, total);
    return floor_lr + (peak - floor_lr) * (1.0 + cos(M_PI * (double)cur / (double)span)) / 2.0;
}

/* The run's state that the helpers below share. */
typedef struct {
    const gp_settings *s;
    dataset ds;
    model_layout layout;
    backend *be;
    FILE *log;
    int tty;
    const ds_record *train_recs, *eval_recs;
    int64_t n_train, n_eval;
    int eval_split;
    int micro_batch; /* this rank's training micro-batch: the largest batch the backend takes */
} run_ctx;

static void json_num(FILE *f, const char *key, double v)
{
    if (isfinite(v))
        fprintf(f, ",\"%s\":%.9g", key, v);
    else
        fprintf(f, ",\"%s\":null", key);
}

static int do_eval(run_ctx *r, const ds_record *recs, int64_t n, const char *split_name, int64_t step, int epoch,
                   eval_result *out, gp_err *e)
{
    const gp_settings *s = r->s;
    if (s->eval_max_samples > 0 && n > s->eval_max_samples)
        n = s->eval_max_samples;
    if (n == 0)
        return 0;
    /* the backend's activations are planned for the training micro-batch (see train_run) */
    int bs = (int)GP_MIN(s->eval_batch_size, r->micro_batch);
    int rc;
    if (s->stage == STAGE_FINETUNE)
        rc = evaluate_ctr(r->be, &r->ds, recs, n, bs, (int)s->max_history, out, NULL, e);
    else
        rc = evaluate_next_item(r->be, &r->ds, recs, n, bs, (int)s->max_history, out, e);
    if (rc != 0)
        return -1;
    if (r->tty)
        fprintf(stderr, "\r\033[K");
    if (s->stage == STAGE_FINETUNE)
        printf("[%s] eval %-5s step %lld epoch %d: auc %.4f  gauc %.4f  logloss %.4f  (%lld samples, %.1fs)\n",
               settings_stage_name(s->stage), split_name, (long long)step, epoch, out->auc, out->gauc, out->logloss,
               (long long)out->n, out->seconds);
    else
        printf("[%s] eval %-5s step %lld epoch %d: next-item hr@10 %.4f  ndcg@10 %.4f  hr@50 %.4f  mrr %.4f  (%lld "
               "users, %.1fs)\n",
               settings_stage_name(s->stage), split_name, (long long)step, epoch, out->hr[1], out->ndcg[1], out->hr[2],
               out->mrr, (long long)out->n, out->seconds);
    fflush(stdout);
    fprintf(r->log, "{\"event\":\"eval\",\"split\":\"%s\",\"step\":%lld,\"epoch\":%d,\"n\":%lld", split_name,
            (long long)step, epoch, (long long)out->n);
    if (s->stage == STAGE_FINETUNE) {
        json_num(r->log, "auc", out->auc);
        json_num(r->log, "gauc", out->gauc);
        json_num(r->log, "logloss", out->logloss);
    } else {
        char key[32];
        for (int k = 0; k < EVAL_N_KS; k++) {
            snprintf(key, sizeof key, "hr@%d", EVAL_KS[k]);
            json_num(r->log, key, out->hr[k]);
            snprintf(key, sizeof key, "ndcg@%d", EVAL_KS[k]);
            json_num(r->log, key, out->ndcg[k]);
        }
        json_num(r->log, "mrr", out->mrr);
    }
    json_num(r->log, "seconds", out->seconds);
    fprintf(r->log, "}\n");
    fflush(r->log);
    return 0;
}

static double ceiling_from_description(const dataset *ds)
{
    const char *p = strstr(ds->hdr->description, "ceiling_auc=");
    double v;
    if (!p)
        return NAN;
    char buf[32];
    snprintf(buf, sizeof buf, "%.*s", (int)strcspn(p + 12, " ;,"), p + 12);
    return gp_parse_f64(buf, &v) == 0 ? v : NAN;
}

static void fmt_duration(double s, char *buf, size_t n)
{
    if (s < 0 || !isfinite(s))
        snprintf(buf, n, "?");
    else if (s < 60)
        snprintf(buf, n, "%.0fs", s);
    else if (s < 3600)
        snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else
        snprintf(buf, n, "%dh%02dm", (int)(s / 3600), ((int)s % 3600) / 60);
}

static char *settings_text_of(const gp_settings *s)
{
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    settings_print(s, NULL, mem);
    fclose(mem);
    return text;
}

static int init_parameters(run_ctx *r, float **sparse_out, float **dense_out, gp_err *e)
{
    const gp_settings *s = r->s;
    const model_layout *l = &r->layout;
    float *sparse = gp_alloc_or_fail((size_t)l->sparse_numel * sizeof(float), "initial item embeddings", e);
    float *dense = gp_alloc_or_fail((size_t)l->dense_numel * sizeof(float), "initial dense parameters", e);
    if (!sparse || !dense) {
        gp_free_aligned(sparse);
        gp_free_aligned(dense);
        return -1;
    }
    model_init_params(l, sparse, dense, (uint64_t)s->seed);
    if (s->transfer != TRANSFER_NONE) {
        int loaded = 0;
        char missing[1024];
        if (checkpoint_load_params(s->init_from, l, sparse, dense, s->transfer, &loaded, missing, sizeof missing, e) !=
            0) {
            gp_free_aligned(sparse);
            gp_free_aligned(dense);
            return gp_wrap(e, "init_from");
        }
        printf("[%s] initialised %d tensor(s) from %s (transfer = %s)%s%s\n", settings_stage_name(s->stage), loaded,
               s->init_from, s->transfer == TRANSFER_FULL ? "full" : "sparse", missing[0] ? "; kept fresh: " : "",
               missing);
    }
    *sparse_out = sparse;
    *dense_out = dense;
    return 0;
}

int train_run(const gp_settings *s, const cfg_assignment **origin, dist_ctx *dist, train_result *res, gp_err *e)
{
    memset(res, 0, sizeof *res);
    run_ctx r;
    memset(&r, 0, sizeof r);
    r.s = s;
    const int W = dist_world(dist), R = dist_rank(dist), root = R == 0;
    r.tty = root && isatty(STDERR_FILENO);
    int rc = -1;
    float *sparse = NULL, *dense = NULL, *probs = NULL;
    loader *ld = NULL;
    char *path = NULL, *ckpt_dir = NULL, *settings_text = NULL;
    float *int_prob = NULL, *all_probs = NULL;
    int32_t *int_label = NULL;

    if (!s->data[0])
        return gp_fail(e, "no dataset: set data = <file> (make one with gpsdrec synth or gpsdrec prep)");
    ds_open_opts oo = ds_default_open_opts();
    if (dataset_open(&r.ds, s->data, &oo, e) != 0)
        return -1;
    res->ceiling_auc = ceiling_from_description(&r.ds);
    int train_split = s->stage == STAGE_PRETRAIN ? DS_SPLIT_PRETRAIN : DS_SPLIT_TRAIN;
    r.eval_split = s->eval_split == EVAL_SPLIT_VALID ? DS_SPLIT_VALID : DS_SPLIT_TEST;
    r.train_recs = r.ds.split_begin[train_split];
    r.n_train = (int64_t)r.ds.split_count[train_split];
    r.eval_recs = r.ds.split_begin[r.eval_split];
    r.n_eval = (int64_t)r.ds.split_count[r.eval_split];
    const int64_t per_step = s->batch_size * s->grad_accum;
    if (s->batch_size < W) {
        gp_fail(e, "batch_size = %lld is smaller than the %d ranks: each rank needs at least one sequence "
                   "(batch_size counts the sequences of a micro-batch over all ranks)",
                (long long)s->batch_size, W);
        goto done;
    }
    /* This rank's share of every global micro-batch: sequences [lo, hi) of it. */
    const int my_lo = (int)(s->batch_size * R / W), my_hi = (int)(s->batch_size * (R + 1) / W);
    const int my_B = my_hi - my_lo;
    const int64_t steps_per_epoch = r.n_train / per_step;
    if (steps_per_epoch == 0) {
        gp_fail(e, "%s has %lld %s records, fewer than one step of batch_size x grad_accum = %lld", s->data,
                (long long)r.n_train, ds_split_name(train_split), (long long)per_step);
        goto done;
    }
    int64_t total = steps_per_epoch * s->epochs;
    if (s->max_steps > 0 && s->max_steps < total)
        total = s->max_steps;

    model_config mc;
    if (model_config_from_settings(&mc, s, (int64_t)r.ds.hdr->n_items, (int64_t)r.ds.hdr->n_cates, e) != 0 ||
        model_layout_build(&r.layout, &mc, e) != 0)
        goto done;
    /* Activations are planned for the training micro-batch only: planning for a larger evaluation
     * batch asked 151 GiB for L12H768A12 at eval_batch_size 2048 (about 10x its training need). */
    int max_batch = my_B;
    r.micro_batch = my_B;
    backend_opts bo = backend_opts_from_settings(s, max_batch);
    bo.dist = dist;
    r.be = backend_create(s->device, &r.layout, &bo, e);
    if (!r.be)
        goto done;
    if (init_parameters(&r, &sparse, &dense, e) != 0 || r.be->set_params(r.be, sparse, dense, e) != 0)
        goto done;

    /* Training AUC of the rank head over each log interval, as the official loop reports. */
    const int64_t int_cap = s->log_every * per_step;
    int_prob = gp_xmalloc((size_t)int_cap * sizeof *int_prob);
    int_label = gp_xmalloc((size_t)int_cap * sizeof *int_label);
    run_state st;
    memset(&st, 0, sizeof st);
    st.total = total;
    st.data_crc = r.ds.hdr->header_crc;
    ckpt_dir = gp_path_join(s->out_dir, "checkpoints");
    char resume_from[4096];
    int resuming = s->resume == RESUME_AUTO && run_state_latest(ckpt_dir, resume_from, sizeof resume_from);
    if (W > 1) {
        /* Every rank resumes from the checkpoint rank 0 picked (out_dir must be shared across nodes). */
        int32_t flag = resuming;
        if (dist_bcast(dist, &flag, sizeof flag, e) != 0 || dist_bcast(dist, resume_from, sizeof resume_from, e) != 0)
            goto done;
        resuming = flag;
    }
    if (resuming) {
        if (run_state_load(resume_from, &r.layout, r.be, &st, int_prob, int_label, int_cap, e) != 0) {
            gp_wrap(e, "resuming from %s", resume_from);
            goto done;
        }
        if (st.data_crc != r.ds.hdr->header_crc) {
            gp_fail(e, "%s was written for another dataset than %s (header CRC %08x, now %08x); use another out_dir "
                       "or resume = never",
                    resume_from, s->data, st.data_crc, r.ds.hdr->header_crc);
            goto done;
        }
        if (st.total != total)
            printf("[%s] note: the schedule now has %lld steps, the checkpoint's run had %lld\n",
                   settings_stage_name(s->stage), (long long)total, (long long)st.total);
        st.total = total;
        printf("[%s] resuming from %s (step %lld, epoch %lld)\n", settings_stage_name(s->stage), resume_from,
               (long long)st.step, (long long)st.epoch + 1);
    }

    /* Only rank 0 writes files; the others log into nothing. */
    if (root && gp_mkdirs(s->out_dir, e) != 0)
        goto done;
    path = gp_path_join(s->out_dir, "settings.conf");
    if (root && settings_save(s, origin, path, e) != 0)
        goto done;
    free(path);
    path = root ? gp_path_join(s->out_dir, "log.jsonl") : strdup("/dev/null");
    r.log = fopen(path, resuming ? "a" : "w");
    if (!r.log) {
        gp_fail(e, "%s: cannot create the log file", path);
        goto done;
    }
    free(path);
    path = NULL;

    char buf[64];
    printf("[%s] data %s: %lld %s records, %lld %s records; %lld items, %lld categories\n", settings_stage_name(s->stage),
           s->data, (long long)r.n_train, ds_split_name(train_split), (long long)r.n_eval, ds_split_name(r.eval_split),
           (long long)r.ds.hdr->n_items, (long long)r.ds.hdr->n_cates);
    printf("[%s] model L%dH%dA%d (emb %d, ffn %d, history %d): %lld block params, %lld dense, %lld sparse; backend %s%s\n",
           settings_stage_name(s->stage), mc.n_layers, mc.dim, mc.n_heads, mc.emb_dim, mc.ffn_hidden, mc.max_history,
           (long long)model_block_params(&r.layout), (long long)model_dense_params(&r.layout),
           (long long)r.layout.sparse_numel, r.be->name, s->freeze_sparse ? ", item table frozen" : "");
    printf("[%s] %lld steps (%lld per epoch x %lld epochs%s), batch %lld x %lld accum, lr %g -> %g, warmup %lld\n",
           settings_stage_name(s->stage), (long long)total, (long long)steps_per_epoch, (long long)s->epochs,
           total < steps_per_epoch * s->epochs ? ", capped by max_steps" : "", (long long)s->batch_size,
           (long long)s->grad_accum, s->lr, s->min_lr, (long long)s->warmup_steps);
    if (W > 1)
        printf("[%s] data parallel over %d ranks: %d-%d sequences of each micro-batch per rank\n",
               settings_stage_name(s->stage), W, (int)(s->batch_size / W), (int)((s->batch_size + W - 1) / W));
    fflush(stdout);

    probs = gp_xmalloc((size_t)s->batch_size * sizeof *probs);
    int64_t int_n = st.interval_n;
    double t_start = gp_now(), t_interval = t_start;
    int64_t step = st.step, micro = st.micro, samples_interval = st.samples_interval;
    double acc_loss = st.acc_loss, acc_item = st.acc_item, acc_cate = st.acc_cate, acc_rank = st.acc_rank,
           acc_norm = st.acc_norm;
    int64_t acc_steps = st.acc_steps;
    const int64_t first_step = step;
    int64_t epoch = st.epoch, es0 = st.epoch_step;
    settings_text = settings_text_of(s);
    /* Writes a resumable checkpoint of the state after `step` (epoch_step steps into `ep`). */
#define SAVE_CHECKPOINT(ep, epoch_step_done)                                                                           \
    do {                                                                                                               \
        run_state cs = {.step = step, .epoch = (ep), .epoch_step = (epoch_step_done), .micro = micro, .total = total,   \
                        .acc_loss = acc_loss, .acc_item = acc_item, .acc_cate = acc_cate, .acc_rank = acc_rank,         \
                        .acc_norm = acc_norm, .acc_steps = acc_steps, .samples_interval = samples_interval,            \
                        .interval_n = int_n, .data_crc = r.ds.hdr->header_crc};                                         \
        if (root && run_state_save(ckpt_dir, &r.layout, r.be, &cs, int_prob, int_label, settings_text,                 \
                                   settings_stage_name(s->stage), (int)s->keep_checkpoints, NULL, 0, e) != 0)          \
            goto done_loop;                                                                                            \
    } while (0)
    /* Fault injection for the tests of a rank's death: GPSDREC_FAULT=RANK:STEP kills rank RANK
     * as it starts step STEP. */
    int fault_rank = -1;
    int64_t fault_step = -1;
    if (getenv("GPSDREC_FAULT") && sscanf(getenv("GPSDREC_FAULT"), "%d:%" SCNd64, &fault_rank, &fault_step) != 2)
        fault_rank = -1;
    loader_spec lsp = {.ds = &r.ds, .recs = r.train_recs, .n_recs = r.n_train, .seed = (uint64_t)s->seed,
                       .shuffle = s->shuffle, .batch_size = s->batch_size, .grad_accum = s->grad_accum, .lo = my_lo,
                       .B = my_B, .S = (int)s->max_history, .N = mc.w_item > 0 ? mc.n_negatives : 0,
                       .n_items = (int64_t)r.ds.hdr->n_items, .steps_per_epoch = steps_per_epoch,
                       .total_steps = total, .epoch = epoch, .epoch_step = es0, .step = step, .micro = micro,
                       .prefetch = s->prefetch,
                       /* A quarter of the cores: enough to build a batch well within a step (the
                        * 2.1M negatives of L4H64A4 take about 1 ms on 4 cores against an 8 ms step),
                        * while a full team's idle spinning would compete with the backend's own
                        * OpenMP loops: 35% slower CPU steps measured with the whole team
                        * (benchmarks/results/2026-12-07_cpu_loader). */
                       .threads = GP_MAX(1, omp_get_max_threads() / 4)};
    if (loader_start(&ld, &lsp, e) != 0)
        goto done_loop;
    double wait_mark = 0; /* loader_wait_seconds at the start of the log interval */
    int64_t wait_steps = 0; /* steps of this process in the log interval */
    for (; step < total; epoch++, es0 = 0) {
        for (int64_t es = es0; es < steps_per_epoch && step < total; es++) {
            if (fault_rank == R && step == fault_step)
                raise(SIGKILL);
            step_losses sl_sum = {0};
            for (int a = 0; a < s->grad_accum; a++) {
                batch *x = loader_next(ld, e);
                if (!x)
                    goto done_loop;
                if (W > 1) {
                    /* Each loss part is averaged over the labelled positions of the whole global
                     * micro-batch, so the summed gradient equals one GPU's on the same batch. */
                    int64_t cnt[3];
                    batch_label_counts(x, &cnt[0], &cnt[1], &cnt[2]);
                    if (dist_allreduce_i64(dist, cnt, 3, e) != 0)
                        goto done_loop;
                    x->norm_item = cnt[0];
                    x->norm_cate = cnt[1];
                    x->norm_rank = cnt[2];
                    x->sync = a == s->grad_accum - 1;
                }
                step_losses sl;
                if (r.be->forward_backward(r.be, x, 1.0f / (float)s->grad_accum, &sl,
                                           mc.w_rank > 0 ? probs : NULL, e) != 0) {
                    gp_wrap(e, "step %lld", (long long)step + 1);
                    goto done_loop;
                }
                micro++;
                sl_sum.loss += sl.loss / s->grad_accum;
                sl_sum.item_loss += sl.item_loss / s->grad_accum;
                sl_sum.cate_loss += sl.cate_loss / s->grad_accum;
                sl_sum.rank_loss += sl.rank_loss / s->grad_accum;
                if (mc.w_rank > 0) {
                    /* the interval's training AUC sees every rank's predictions, in global order */
                    const float *p = probs;
                    const int32_t *lab = x->click;
                    void *gathered = NULL;
                    int n_here = x->B;
                    if (W > 1) {
                        size_t bytes = (size_t)x->B * (sizeof(float) + sizeof(int32_t));
                        char *mine = gp_xmalloc(bytes);
                        for (int i = 0; i < x->B; i++) {
                            memcpy(mine + (size_t)i * 8, &probs[i], 4);
                            memcpy(mine + (size_t)i * 8 + 4, &x->click[i], 4);
                        }
                        int grc = dist_allgather(dist, mine, bytes, &gathered, NULL, e);
                        free(mine);
                        if (grc != 0)
                            goto done_loop;
                        n_here = (int)s->batch_size;
                        all_probs = all_probs ? all_probs : gp_xmalloc((size_t)s->batch_size * sizeof *all_probs);
                        for (int i = 0; i < n_here; i++)
                            memcpy(&all_probs[i], (char *)gathered + (size_t)i * 8, 4);
                        p = all_probs;
                        lab = NULL;
                    }
                    for (int i = 0; i < n_here; i++) {
                        int_prob[int_n] = p[i];
                        if (lab)
                            int_label[int_n] = lab[i];
                        else
                            memcpy(&int_label[int_n], (char *)gathered + (size_t)i * 8 + 4, 4);
                        int_n++;
                    }
                    free(gathered);
                }
            }
            if (W > 1) {
                /* each rank's parts are its share of the global means */
                double v[4] = {sl_sum.loss, sl_sum.item_loss, sl_sum.cate_loss, sl_sum.rank_loss};
                if (dist_allreduce_f64(dist, v, 4, e) != 0 || r.be->sync_grads(r.be, e) != 0)
                    goto done_loop;
                sl_sum.loss = v[0];
                sl_sum.item_loss = v[1];
                sl_sum.cate_loss = v[2];
                sl_sum.rank_loss = v[3];
            }
            optim_hparams h = {.lr = train_lr_at(s, step, total), .beta1 = s->beta1, .beta2 = s->beta2,
                               .eps = s->adam_eps, .weight_decay = s->weight_decay,
                               .max_grad_norm = s->max_grad_norm, .step = step + 1};
            double gnorm = 0;
            if (r.be->optimizer_step(r.be, &h, &gnorm, e) != 0)
                goto done_loop;
            step++;
            wait_steps++;
            samples_interval += per_step;
            acc_loss += sl_sum.loss;
            acc_item += sl_sum.item_loss;
            acc_cate += sl_sum.cate_loss;
            acc_rank += sl_sum.rank_loss;
            acc_norm += gnorm;
            acc_steps++;
            if (!isfinite(sl_sum.loss)) {
                gp_fail(e, "loss is %g at step %lld: training diverged (lower lr?)", sl_sum.loss, (long long)step);
                goto done_loop;
            }
            if (step % s->log_every == 0 || step == total) {
                double now = gp_now(), sps = samples_interval / (now - t_interval);
                double train_auc = int_n ? metrics_auc(int_prob, int_label, (size_t)int_n) : NAN;
                fprintf(r.log, "{\"event\":\"train\",\"step\":%lld,\"epoch\":%lld", (long long)step, (long long)epoch + 1);
                json_num(r.log, "loss", acc_loss / acc_steps);
                json_num(r.log, "item_loss", acc_item / acc_steps);
                json_num(r.log, "cate_loss", acc_cate / acc_steps);
                json_num(r.log, "rank_loss", acc_rank / acc_steps);
                json_num(r.log, "train_auc", train_auc);
                json_num(r.log, "lr", h.lr);
                json_num(r.log, "grad_norm", acc_norm / acc_steps);
                json_num(r.log, "samples_per_s", sps);
                /* time a step waited for its batches: near 0 while the loader keeps ahead */
                const double wait_now = loader_wait_seconds(ld);
                json_num(r.log, "data_wait_ms", wait_steps ? 1e3 * (wait_now - wait_mark) / (double)wait_steps : NAN);
                wait_mark = wait_now;
                wait_steps = 0;
                json_num(r.log, "elapsed_s", now - t_start);
                fprintf(r.log, "}\n");
                fflush(r.log);
                if (r.tty) {
                    char eta[32];
                    fmt_duration((now - t_start) / (double)(step - first_step) * (double)(total - step), eta, sizeof eta);
                    fprintf(stderr, "\r\033[K[%s] epoch %lld/%lld step %lld/%lld loss %.4f lr %.2e |g| %.3f %.0f samples/s ETA %s",
                            settings_stage_name(s->stage), (long long)epoch + 1, (long long)s->epochs, (long long)step,
                            (long long)total, acc_loss / acc_steps, h.lr, acc_norm / acc_steps, sps, eta);
                    fflush(stderr);
                }
                acc_loss = acc_item = acc_cate = acc_rank = acc_norm = 0;
                acc_steps = 0;
                samples_interval = 0;
                int_n = 0;
                t_interval = now;
            }
            int end_of_epoch = es + 1 == steps_per_epoch || step == total;
            if ((s->eval_every > 0 && step % s->eval_every == 0) || end_of_epoch) {
                if (do_eval(&r, r.eval_recs, r.n_eval, ds_split_name(r.eval_split), step, (int)epoch + 1, &res->eval,
                            e) != 0)
                    goto done_loop;
                res->has_eval = r.n_eval > 0;
            }
            int stop_now = s->stop_after_steps > 0 && step - first_step >= s->stop_after_steps && step < total;
            if (end_of_epoch && es + 1 == steps_per_epoch)
                SAVE_CHECKPOINT(epoch + 1, 0);
            else if ((s->checkpoint_every > 0 && step % s->checkpoint_every == 0) || stop_now)
                SAVE_CHECKPOINT(epoch, es + 1);
            if (stop_now) {
                if (r.tty)
                    fprintf(stderr, "\r\033[K");
                printf("[%s] stopped after %lld steps at step %lld of %lld (stop_after_steps); run the same command "
                       "to continue\n",
                       settings_stage_name(s->stage), (long long)(step - first_step), (long long)step, (long long)total);
                res->steps = step;
                res->stopped = 1;
                rc = 0;
                goto done_loop;
            }
        }
    }
#undef SAVE_CHECKPOINT
    res->steps = step;
    res->seconds = gp_now() - t_start;
    res->samples_per_s = (double)(step - first_step) * per_step / res->seconds;
    /* A resumed run that was already complete trained nothing now: evaluate it once anyway. */
    if (!res->has_eval && r.n_eval > 0) {
        if (do_eval(&r, r.eval_recs, r.n_eval, ds_split_name(r.eval_split), step, (int)epoch, &res->eval, e) != 0)
            goto done_loop;
        res->has_eval = 1;
    }
    if (s->stage == STAGE_FINETUNE) {
        if (do_eval(&r, r.train_recs, r.n_train, "train", step, (int)epoch, &res->train_eval, e) != 0)
            goto done_loop;
        res->has_train_eval = 1;
    }
    rc = 0;
done_loop:
    if (r.tty)
        fprintf(stderr, "\r\033[K");
    if (rc != 0 || res->stopped)
        goto done;
    rc = -1;
    if (!root) {
        /* rank 0 writes the model and the result; the others report what they evaluated */
        res->steps = step;
        rc = 0;
        goto done;
    }
    if (r.be->get_params(r.be, sparse, dense, e) != 0)
        goto done;
    snprintf(res->checkpoint, sizeof res->checkpoint, "%s/model.safetensors", s->out_dir);
    if (checkpoint_save_model(res->checkpoint, &r.layout, sparse, dense, settings_text, settings_stage_name(s->stage),
                              step, e) != 0)
        goto done;
    path = gp_path_join(s->out_dir, "result.json");
    {
        char *json = NULL;
        size_t len = 0;
        FILE *m = open_memstream(&json, &len);
        fprintf(m, "{\"stage\":\"%s\",\"steps\":%lld", settings_stage_name(s->stage), (long long)res->steps);
        json_num(m, "seconds", res->seconds);
        json_num(m, "samples_per_s", res->samples_per_s);
        if (res->has_eval && s->stage == STAGE_FINETUNE) {
            json_num(m, "test_auc", res->eval.auc);
            json_num(m, "test_gauc", res->eval.gauc);
            json_num(m, "test_logloss", res->eval.logloss);
        }
        if (res->has_eval && s->stage == STAGE_PRETRAIN) {
            json_num(m, "hr@10", res->eval.hr[1]);
            json_num(m, "ndcg@10", res->eval.ndcg[1]);
        }
        if (res->has_train_eval) {
            json_num(m, "train_auc", res->train_eval.auc);
            json_num(m, "train_logloss", res->train_eval.logloss);
        }
        json_num(m, "ceiling_auc", res->ceiling_auc);
        fprintf(m, ",\"checkpoint\":\"%s\"}\n", res->checkpoint);
        fclose(m);
        int wrc = gp_write_atomic(path, json, len, e);
        free(json);
        if (wrc != 0)
            goto done;
    }
    printf("[%s] done: %lld steps in %s (%.0f samples/s); model saved to %s\n", settings_stage_name(s->stage),
           (long long)res->steps, (fmt_duration(res->seconds, buf, sizeof buf), buf), res->samples_per_s,
           res->checkpoint);
    rc = 0;
done:
    free(path);
    free(ckpt_dir);
    free(settings_text);
    free(int_prob);
    free(int_label);
    free(probs);
    free(all_probs);
    loader_stop(ld);
    gp_free_aligned(sparse);
    gp_free_aligned(dense);
    if (r.log)
        fclose(r.log);
    backend_destroy(r.be);
    model_layout_free(&r.layout);
    dataset_close(&r.ds);
    return rc;
}
