/* synth: a synthetic user-behaviour generator with real structure to learn, and a known ceiling.
 *
 * Contract
 * - Deterministic by seed: the same config gives byte-identical output for any thread count.
 * - Any size from a few thousand to hundreds of millions of interactions; multi-threaded,
 *   memory about 12 bytes per interaction plus the records.
 * - Output goes through the official protocol (protocol.h) into the dataset format.
 * - The report gives the best achievable test AUC under the generator's ground truth (the
 *   oracle that knows each user's latent state scores candidates by their true probability of
 *   being the next interaction), and simple baselines (random 0.5, popularity) to judge a model.
 */
#ifndef GPSDREC_SYNTH_H
#define GPSDREC_SYNTH_H

#include <stdint.h>
#include <stdio.h>

#include "dataset.h"
#include "protocol.h"
#include "util.h"

typedef struct {
    uint64_t n_users;
    uint64_t n_items;        /* real items (ids 1..n_items); the vocabulary is n_items + 1 */
    uint32_t n_cates;        /* real categories (ids 1..n_cates) */
    uint32_t n_topics;       /* latent interest states */
    double mean_len;         /* mean interactions per user */
    uint32_t min_len, max_len;
    double zipf_exponent;    /* item popularity power law */
    double stickiness;       /* probability of staying in the current interest state */
    double transition_prob;  /* probability the next item is a fixed successor of the previous one */
    double drift;            /* per-interaction probability that a user's long-term interests change */
    uint64_t seed;
    int threads;             /* 0 = all cores */
    protocol_opts protocol;
} synth_config;

synth_config synth_default_config(void);

typedef struct {
    uint64_t n_interactions;
    protocol_stats protocol;
    double ceiling_auc;      /* oracle AUC on the TEST CTR samples */
    double ceiling_logloss;  /* oracle's calibrated logloss on those samples */
    double popularity_auc;   /* scoring by global item popularity */
    double seconds;
} synth_report;

/* Generates the dataset in memory and writes it to out_path (atomically). */
int synth_generate(const synth_config *cfg, const char *out_path, synth_report *report, gp_err *e);
void synth_print_report(const synth_config *cfg, const synth_report *r, FILE *f);

#endif
