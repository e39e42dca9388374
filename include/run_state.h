/* run_state: resumable training checkpoints.
 *
 * A checkpoint is a directory out_dir/checkpoints/step_<N> holding
 *   model.safetensors  the parameters with the official names (as checkpoint.h writes them),
 *   optim.safetensors  the AdamW moments of every trained tensor, named "<name>.exp_avg" and
 *                      "<name>.exp_avg_sq" as in PyTorch's optimizer state (a frozen item table
 *                      has none), and the open log interval's training predictions,
 *   state.json         the step, epoch, position in the epoch, micro-step counter, schedule
 *                      length, the log interval's running sums, and the dataset's header CRC.
 * Every random draw of a run is a function of (seed, epoch) or (seed, micro-step), so these
 * counters are the whole random state: a run stopped and resumed on the same backend reproduces
 * the uninterrupted run's losses bit for bit.
 *
 * Writes are atomic: the directory is filled under a temporary name and renamed; then all but
 * the newest `keep` checkpoints are removed. A half-written directory is never picked up.
 */
#ifndef GPSDREC_RUN_STATE_H
#define GPSDREC_RUN_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "model.h"
#include "util.h"

typedef struct {
    int64_t step;        /* optimizer steps done */
    int64_t epoch;       /* current epoch (0-based) */
    int64_t epoch_step;  /* steps done in the current epoch */
    int64_t micro;       /* micro-batches done (the negatives' counter) */
    int64_t total;       /* schedule length the run was started with */
    double acc_loss, acc_item, acc_cate, acc_rank, acc_norm;
    int64_t acc_steps, samples_interval;
    int64_t interval_n;  /* training predictions held for the interval's AUC */
    uint32_t data_crc;   /* header CRC of the dataset */
} run_state;

/* Write checkpoint step_<state->step> under dir (created if needed); keep the newest `keep`.
 * interval_prob/label hold state->interval_n entries. path_out receives the directory. */
int run_state_save(const char *dir, const model_layout *l, backend *b, const run_state *st, const float *interval_prob,
                   const int32_t *interval_label, const char *settings_text, const char *stage, int keep,
                   char *path_out, size_t path_len, gp_err *e);

/* Path of the newest complete checkpoint under dir; returns 1 when found, 0 when none. */
int run_state_latest(const char *dir, char *path, size_t len);

/* Load a checkpoint directory into the backend and state; interval arrays must hold
 * interval_cap entries. */
int run_state_load(const char *path, const model_layout *l, backend *b, run_state *st, float *interval_prob,
                   int32_t *interval_label, int64_t interval_cap, gp_err *e);

#endif
