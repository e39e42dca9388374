/* train: the training loop, written once against the backend interface.
 *
 * One run = one stage (pretrain or finetune) with resolved settings:
 * - data: pretraining sequences (stage pretrain) or CTR train samples (finetune), reshuffled
 *   each epoch from gp_rng_stream(seed, RNG_PURPOSE_SHUFFLE, epoch); the last incomplete step of
 *   an epoch is dropped, as the official loader's drop_last does. The micro-batches come from
 *   loader.h (built one ahead on a background thread when prefetch is on: the same batches).
 * - optimisation: grad_accum micro-batches per step (gradients averaged), global-norm clipping,
 *   AdamW; the learning rate warms up linearly (peak * (step+1) / warmup_steps) then follows a
 *   cosine from lr to min_lr over the remaining steps, exactly as the official schedule_lr.
 * - transfer: init_from + transfer (none/full/sparse) + freeze_sparse give NT, FT, ST, FT&SF,
 *   ST&SF.
 * - evaluation every eval_every steps and after each epoch: CTR AUC/GAUC/logloss on the eval
 *   split (finetune), next-item HR@K/NDCG@K against the whole catalogue (pretrain); after the
 *   last epoch of a finetune run also on the train split (the train-test gap).
 * - fault injection (tests): GPSDREC_FAULT=RANK:STEP in the environment kills rank RANK with
 *   SIGKILL as it starts optimizer step STEP (0-based).
 * - outputs in out_dir: settings.conf (effective settings), log.jsonl (one JSON object per log
 *   interval and per evaluation), model.safetensors (official parameter names), result.json.
 *   A progress line is drawn on stderr when it is a terminal.
 */
#ifndef GPSDREC_TRAIN_H
#define GPSDREC_TRAIN_H

#include <stdint.h>

#include "config.h"
#include "dataset.h"
#include "dist.h"
#include "evaluate.h"
#include "settings.h"

typedef struct {
    int64_t steps;
    double seconds, samples_per_s;
    int has_eval, has_train_eval;
    int stopped;            /* stop_after_steps ended the run early (a checkpoint was written) */
    eval_result eval;       /* last evaluation on the eval split */
    eval_result train_eval; /* finetune: on the train split, after the last epoch */
    double ceiling_auc;     /* from a synthetic dataset's description, NAN otherwise */
    char checkpoint[CFG_STR_MAX + 32];
} train_result;

/* Learning rate at 0-based optimizer step `step` of `total` (official schedule_lr). */
double train_lr_at(const gp_settings *s, int64_t step, int64_t total);

/* dist: the process group of a data-parallel run (NULL = one process). Each rank trains on its
 * share of every global micro-batch (batch_size sequences over all ranks, split in rank order),
 * gradients are summed over the ranks, every rank evaluates a share of the evaluation records;
 * rank 0 alone writes the outputs. The result is the same as one process with the same settings,
 * up to the order of floating-point sums. */
int train_run(const gp_settings *s, const cfg_assignment **origin, dist_ctx *dist, train_result *res, gp_err *e);

#endif
