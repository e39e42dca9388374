/* loader: the training loop's micro-batches in schedule order, built one ahead on a background
 * thread so that reading the records and drawing the negatives (about 4 ms of one core for the
 * 2.1M negatives of an L4H64A4 pretraining step) run while the backend computes the previous
 * micro-batch instead of between steps.
 *
 * Contract
 * - The schedule: from (epoch, epoch_step) on, for each epoch the record order
 *   loader_epoch_order gives, steps epoch_step .. steps_per_epoch - 1, each of
 *   grad_accum micro-batches, until total_steps optimizer steps have been counted from `step`
 *   (none when step >= total_steps: a run resumed past a shortened schedule).
 *   Micro-batch a of epoch step es holds this rank's share [lo, lo + B) of the global micro-batch
 *   of records order[(es * grad_accum + a) * batch_size ...], first_seq = lo, and the negatives of
 *   micro-step `micro` (counted on from spec.micro), as batch_fill and batch_sample_negatives
 *   build them. norm_* and sync are left 0 for the caller.
 * - loader_next returns the next micro-batch of the schedule; it stays the caller's (and may be
 *   modified) until the next loader_next or loader_stop. Past the end of the schedule it fails.
 * - prefetch = 1: a thread builds micro-batch k + 1 while the caller holds k (two batches in
 *   memory). prefetch = 0: loader_next builds each batch on the caller's thread. Both give the
 *   same batches, bit for bit: every part of a batch is a pure function of the spec and its
 *   position in the schedule.
 * - The thread runs at a lower scheduling priority (nice + 10, inherited by its OpenMP team), so
 *   that on a busy host it takes the cores the backend leaves idle rather than the ones the
 *   backend's own host work (the CUDA backend's batch packing) needs.
 * - loader_wait_seconds: the time loader_next has spent waiting for a batch (prefetch) or
 *   building it (no prefetch) since the start: how long the step waited for data.
 * - loader_stop may be called at any point (an early exit) and joins the thread.
 */
#ifndef GPSDREC_LOADER_H
#define GPSDREC_LOADER_H

#include <stdint.h>

#include "batch.h"
#include "dataset.h"
#include "util.h"

typedef struct {
    const dataset *ds;
    const ds_record *recs; /* the training records, n_recs of them */
    int64_t n_recs;
    uint64_t seed;
    int shuffle;
    int64_t batch_size; /* sequences of a global micro-batch */
    int64_t grad_accum;
    int lo, B;           /* this rank's sequences [lo, lo + B) of each global micro-batch */
    int S, N;            /* history slots; negatives per sequence (0 = none) */
    int64_t n_items;     /* negatives are drawn in [0, n_items) */
    int64_t steps_per_epoch, total_steps;
    int64_t epoch, epoch_step, step, micro; /* where the schedule starts */
    int prefetch;
    int threads;         /* OpenMP threads of the batch thread's team (0 = the OpenMP default) */
} loader_spec;

/* The order in which epoch `epoch` visits the n training records: a Fisher-Yates shuffle driven
 * by gp_rng_stream(seed, RNG_PURPOSE_SHUFFLE, epoch), or the file order when shuffle is 0. */
void loader_epoch_order(const ds_record **order, const ds_record *recs, int64_t n, uint64_t seed, int64_t epoch,
                        int shuffle);

typedef struct loader loader;

int loader_start(loader **out, const loader_spec *spec, gp_err *e);
batch *loader_next(loader *L, gp_err *e);
double loader_wait_seconds(const loader *L);
void loader_stop(loader *L);

#endif
