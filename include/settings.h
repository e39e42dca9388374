/* settings: every gpsdrec setting, its default, range and meaning, in one table.
 *
 * Settings come from the embedded defaults (stage defaults such as `pretrain.lr = 5e-3` are
 * part of them), then the config files given on the command line, then `--set key=value`
 * overrides; config.h describes the syntax and precedence. `settings_load` resolves them for
 * one stage. The effective settings are printed at start and saved beside a run's outputs as a
 * loadable config (settings_save).
 */
#ifndef GPSDREC_SETTINGS_H
#define GPSDREC_SETTINGS_H

#include <stdint.h>
#include <stdio.h>

#include "config.h"

enum { STAGE_PRETRAIN = 0, STAGE_FINETUNE = 1 };
enum { ATTN_CAUSAL = 0, ATTN_BIDIRECTIONAL = 1 };
enum { DEVICE_AUTO = 0, DEVICE_CPU = 1, DEVICE_CUDA = 2 };
enum { TRANSFER_NONE = 0, TRANSFER_FULL = 1, TRANSFER_SPARSE = 2 };
enum { EVAL_SPLIT_TEST = 0, EVAL_SPLIT_VALID = 1 };
enum { RESUME_AUTO = 0, RESUME_NEVER = 1 };
enum { DIST_ITEM_AUTO = 0, DIST_ITEM_ROWS = 1, DIST_ITEM_DENSE = 2 };
enum { ATTN_KERNEL_AUTO = 0, ATTN_KERNEL_OWN = 1, ATTN_KERNEL_CUDNN = 2 };
enum { SOFTMAX_KERNEL_AUTO = 0, SOFTMAX_KERNEL_FUSED = 1, SOFTMAX_KERNEL_GEMM = 2 };

typedef struct gp_settings_s {
    /* data */
    char data[CFG_STR_MAX];
    int64_t max_history;
    int eval_split;
    /* model */
    int64_t dim, n_layers, n_heads, embedding_dim, multiple_of;
    double norm_eps, rope_theta, init_std;
    int attention;
    int64_t n_negatives;
    double temperature;
    int l2_norm, logq_correction;
    double item_loss_weight, cate_loss_weight, rank_loss_weight;
    /* training */
    int stage;
    int64_t epochs, max_steps, batch_size, grad_accum;
    double lr, min_lr;
    int64_t warmup_steps;
    double weight_decay, beta1, beta2, adam_eps, max_grad_norm;
    int shuffle;
    int64_t seed;
    int64_t eval_every, eval_batch_size, eval_max_samples, log_every;
    int64_t checkpoint_every, keep_checkpoints, stop_after_steps;
    int resume;
    char out_dir[CFG_STR_MAX];
    int device;
    int attention_kernel;
    int sampled_softmax_kernel;
    int recompute_blocks;
    int recompute_ffn;
    int gemm_autotune;
    int prefetch;
    int64_t threads;
    /* data parallelism */
    int64_t nproc;
    double dist_timeout;
    int dist_item_grads;
    /* transfer */
    char init_from[CFG_STR_MAX];
    int transfer, freeze_sparse;
    /* synthetic data (gpsdrec synth, and the embedded default of gpsd/train without data) */
    int64_t synth_users, synth_items, synth_cates, synth_topics;
    double synth_mean_len;
    int64_t synth_min_len, synth_max_len;
    double synth_zipf, synth_stickiness, synth_transition, synth_drift;
    /* protocol (synth and prep) */
    int64_t min_user_len, window, ctr_negatives;
    double split_quantile, valid_quantile;
} gp_settings;

extern const cfg_key settings_keys[];
extern const int settings_n_keys;

/* Embedded defaults that depend on the stage, in config syntax. */
extern const char settings_stage_defaults[];

/* Resolve `l` (which should start with the stage defaults) for the given stage. The caller
 * runs settings_validate once it has filled anything the command derives (e.g. gpsd's init_from). */
int settings_resolve(const cfg_list *l, int stage, gp_settings *s, const cfg_assignment **origin, gp_err *e);
/* The stage a `train` run is for: the value of the unscoped `stage` key. */
int settings_stage_of(const cfg_list *l, int *stage, gp_err *e);
/* Cross-key checks that a single key's range cannot express (dim divisible by n_heads, ...). */
int settings_validate(const gp_settings *s, gp_err *e);
void settings_print(const gp_settings *s, const cfg_assignment **origin, FILE *f);
/* Write the effective settings as a loadable config file, atomically. */
int settings_save(const gp_settings *s, const cfg_assignment **origin, const char *path, gp_err *e);
const char *settings_stage_name(int stage);

#endif
