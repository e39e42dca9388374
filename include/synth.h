/* synth: a synthetic user-behaviour generator with real structure to learn, and a known ceiling.
 *
 * Contract
 * - Deterministic by seed: the same config gives byte-identical output for any thread count.
 * - Any size from a few thousand to hundreds of millions of interactions; multi-threaded,
 *   memory about 8 bytes per interaction (item and category tokens) plus about 100 bytes per
 *   user (20 kept, the rest while building), 50 bytes per item and the records (32 bytes each):
 *   about 14 bytes per interaction in all at 50 interactions per user.
 * - Output goes through the official protocol (protocol.h) into the dataset format.
 * - The report gives the best achievable test AUC under the generator's ground truth (the
 *   oracle that knows each user's latent state scores candidates by their true probability of
 *   being the next interaction), and baselines to judge a model: random 0.5, popularity, and a
 *   history model that sees only what a trained model sees (items and categories).
 * The generative process itself is described at the top of csrc/synth.c.
 */
#ifndef GPSDREC_SYNTH_H
#define GPSDREC_SYNTH_H

#include <stdint.h>
#include <stdio.h>

#include "dataset.h"
#include "protocol.h"
#include "rng.h"
#include "util.h"

typedef struct {
    uint64_t n_users;
    uint64_t n_items;        /* real items (ids 1..n_items); the vocabulary is n_items + 1 */
    uint32_t n_cates;        /* real categories (ids 1..n_cates) */
    uint32_t n_topics;       /* latent interest states, 1..n_items */
    double mean_len;         /* mean interactions per user, in [min_len, max_len] */
    uint32_t min_len, max_len;
    double zipf_exponent;    /* item popularity power law, in [0, 4] */
    double stickiness;       /* probability of staying in the current interest state */
    double transition_prob;  /* probability the next item is a fixed successor of the previous one */
    double drift;            /* per-interaction probability that a user's long-term interests change */
    uint64_t seed;
    int threads;             /* 0 = all cores */
    protocol_opts protocol;  /* its seed and threads are taken from this config */
} synth_config;

synth_config synth_default_config(void);

/* Checks every field, with a message naming the offending one. */
int synth_validate_config(const synth_config *cfg, gp_err *e);

typedef struct {
    uint64_t n_interactions;
    protocol_stats protocol;
    uint64_t n_test_samples; /* TEST records the AUCs below are computed on */
    double ceiling_auc;      /* oracle AUC on the TEST CTR samples */
    double ceiling_logloss;  /* oracle's calibrated logloss on those samples */
    double inferred_auc;     /* the oracle's formula on a state guessed from the history with the true
                                item -> topic map: how much of the ceiling the history reveals */
    double history_auc;      /* history baseline (interpolated item-transition, recent-category and
                                popularity counts fit on every interaction except the held-out ones) */
    double popularity_auc;   /* scoring by item frequency over the same interactions */
    double seconds;          /* wall time of synth_build: generation, protocol, evaluation */
    double write_seconds;    /* wall time of dataset_write in synth_generate (0 in synth_build) */
} synth_report;

/* A generated dataset in memory. contents views the arrays (ready for dataset_write). */
typedef struct {
    ds_contents contents;
    uint32_t *item_cate;     /* [n_items + 1], item_cate[0] = 0 */
    uint32_t *tok_item, *tok_cate;
    uint64_t *user_offset;
    uint32_t *user_len;
    int64_t *user_last_time;
    ds_record *records;      /* sorted by split then user (protocol_build's order) */
    uint64_t test_begin;     /* TEST records are records[test_begin, test_begin + n_test) */
    uint64_t n_test;
    float *test_oracle;      /* [n_test]: the oracle's probability that each TEST record's candidate
                                is the user's next interaction */
    char description[128];   /* the dataset's description: the generator and its AUC figures, so a
                                trainer can print the ceiling next to its own test AUC */
} synth_output;

/* Generates the dataset in memory. On failure everything is freed and out is zeroed. */
int synth_build(const synth_config *cfg, synth_output *out, synth_report *report, gp_err *e);
void synth_output_free(synth_output *out);

/* Generates the dataset in memory and writes it to out_path (atomically). */
int synth_generate(const synth_config *cfg, const char *out_path, synth_report *report, gp_err *e);
void synth_print_report(const synth_config *cfg, const synth_report *r, FILE *f);

/* ---- The generator's ground truth, for tests and analysis ---- */

#define SYNTH_MAX_INTERESTS 4

/* A user's latent state just before an interaction. */
typedef struct {
    uint32_t n_interests;
    uint32_t interest[SYNTH_MAX_INTERESTS]; /* long-term interest topics (may repeat) */
    double weight[SYNTH_MAX_INTERESTS];     /* their weights, summing to 1 */
    uint32_t topic;                         /* current short-term topic */
    uint32_t prev_item;                     /* previous interaction's item, 0 before the first */
    uint32_t epoch;                         /* popularity epoch of the coming interaction */
} synth_state;

typedef struct synth_model synth_model; /* items, topics, categories, successors: no users */

int synth_model_build(const synth_config *cfg, synth_model **m, gp_err *e);
void synth_model_free(synth_model *m);
uint32_t synth_item_topic(const synth_model *m, uint32_t item);
/* Length of user u's sequence, then the sequence itself (items and times, each array of that
 * length; times may be NULL) and, when before_last is non-NULL, the state just before its last
 * interaction. Pure functions of (config, u). */
uint32_t synth_user_len(const synth_model *m, uint64_t u);
void synth_user_sequence(const synth_model *m, uint64_t u, uint32_t *items, int64_t *times, synth_state *before_last);
/* The true probability that the next interaction from state s is `item`. */
double synth_oracle_prob(const synth_model *m, const synth_state *s, uint32_t item);
/* One draw of the next item from state s (s is not changed), with the generator's own sampler. */
uint32_t synth_sample_next(const synth_model *m, const synth_state *s, gp_rng *r);

#endif
